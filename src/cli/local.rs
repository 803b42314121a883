//! Subcommands that work without the daemon: `run` (one process in a cell, in the foreground)
//! and `policy check` / `policy show`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use crate::cgroup::CgroupRoot;
use crate::policy;
use crate::sandbox::{HostCaps, LaunchRequest, Launcher, StdioMode};

use super::RunArgs;

pub(super) fn policy_check(paths: &[PathBuf]) -> i32 {
    let diags = policy::check(paths);
    for d in &diags {
        println!("{d}");
    }
    if diags.is_empty() {
        0
    } else {
        eprintln!("cellkeep: {} problem(s) found", diags.len());
        1
    }
}

pub(super) fn policy_show(name: &str, dir: &std::path::Path) -> anyhow::Result<i32> {
    let path = if name.ends_with(".toml") || name.contains('/') {
        PathBuf::from(name)
    } else {
        dir.join(format!("{name}.toml"))
    };
    let p = policy::load_file(&path)?;
    print!("{}", policy::show(&p));
    Ok(0)
}

pub(super) fn run(args: RunArgs, json: bool) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let policy = policy::load_launchable(&args.policy)?;
    let root = CgroupRoot::open(&args.cgroup_root)?;
    let result = rt.block_on(run_async(args, json, policy, root.clone()));
    // A root this run created goes with it (in every v1 hierarchy); one it found stays.
    if let Err(e) = root.remove_created() {
        tracing::warn!("cannot remove the cgroup root this run created: {e}");
    }
    result
}

async fn run_async(args: RunArgs, json: bool, policy: policy::Policy, root: CgroupRoot) -> anyhow::Result<i32> {
    let launcher = Launcher::new(root, HostCaps::probe());
    let cwd = match args.cwd {
        Some(c) => c,
        None => std::env::current_dir()?,
    };
    let req = LaunchRequest {
        cell_id: uuid::Uuid::now_v7().simple().to_string(),
        args: args.args,
        cwd,
        caller_uid: nix::unistd::getuid().as_raw(),
        caller_gid: nix::unistd::getgid().as_raw(),
        caller_env: std::env::vars().collect::<BTreeMap<_, _>>(),
        range_uid: None,
    };
    let cell_id = req.cell_id.clone();
    let cell = match launcher.launch(&policy, req, StdioMode::Inherit).await {
        Ok(cell) => cell,
        Err(e) => {
            eprintln!("cellkeep: {e}");
            if json {
                let mut v = serde_json::to_value(e.as_reason())?;
                v["cell"] = cell_id.into();
                v["provider"] = policy.name.clone().into();
                println!("{v}");
            }
            return Ok(e.as_reason().exit_code());
        }
    };
    for d in &cell.degraded {
        eprintln!("cellkeep: warning: {} degraded: {}", d.mechanism, d.detail);
    }
    let forward = tokio::spawn(forward_signals(cell.helper_pid()));
    let deadline = policy.limits.wall_time.map(|d| Instant::now() + d);
    let outcome = cell.wait(deadline).await;
    forward.abort();
    if json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else if !matches!(outcome.reason, crate::sandbox::ExitReason::Exited { .. }) {
        eprintln!("cellkeep: {}: {}", outcome.provider, outcome.reason);
    }
    Ok(outcome.reason.exit_code())
}

/// Pass SIGINT/SIGTERM/SIGHUP on to the helper, which forwards them into the cell.
async fn forward_signals(helper: Option<u32>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Some(pid) = helper else { return };
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    let kinds = [
        (SignalKind::interrupt(), nix::sys::signal::Signal::SIGINT),
        (SignalKind::terminate(), nix::sys::signal::Signal::SIGTERM),
        (SignalKind::hangup(), nix::sys::signal::Signal::SIGHUP),
    ];
    let mut streams = Vec::new();
    for (kind, sig) in kinds {
        if let Ok(s) = signal(kind) {
            streams.push((s, sig));
        }
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    for (mut s, sig) in streams {
        let tx = tx.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                if tx.send(sig).await.is_err() {
                    break;
                }
            }
        });
    }
    while let Some(sig) = rx.recv().await {
        let _ = nix::sys::signal::kill(pid, sig);
    }
}
