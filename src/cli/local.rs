//! `run`: one process in a cell, in the foreground, without the daemon (on a terminal, through
//! a pseudo-terminal of the cell's own: [`term`]).

use std::collections::BTreeMap;
use std::time::Instant;

use crate::cgroup::CgroupRoot;
use crate::policy;
use crate::sandbox::{HostCaps, LaunchRequest, Launcher, StdioMode};

use super::{term, RunArgs};

/// One cell, so no zygote: the helper is spawned, and its exec and start-up overlap the
/// launcher's own work on the cell (its id, cgroup and plan); a zygote would add a fork at
/// start and a reap at exit to this path and save nothing on it.
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
        caller_groups: nix::unistd::getgroups().unwrap_or_default().into_iter().map(|g| g.as_raw()).collect(),
        caller_env: std::env::vars().collect::<BTreeMap<_, _>>(),
        range_uid: None,
    };
    let cell_id = req.cell_id.clone();
    // Signals are caught from here on, so none ends `run` while the caller's terminal is raw.
    let (pid_tx, pid_rx) = tokio::sync::oneshot::channel();
    let forward = tokio::spawn(forward_signals(pid_rx));
    let terminal = term::caller_terminal();
    let stdio = match &terminal {
        Some((_, spec)) => StdioMode::Terminal(*spec),
        None => StdioMode::Inherit,
    };
    let mut cell = match launcher.launch(&policy, req, stdio).await {
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
    let _ = pid_tx.send(cell.helper_pid());
    let relay = match (terminal, cell.pty.as_ref().map(|m| m.handle())) {
        (Some((caller, spec)), Some(master)) => {
            let raw = term::RawGuard::stdin();
            Some((term::Relay::start(cell.take_io(), master, caller, spec.eof_char()), raw))
        }
        _ => None,
    };
    let deadline = policy.limits.wall_time.map(|d| Instant::now() + d);
    let outcome = cell.wait(deadline).await;
    if let Some((relay, raw)) = relay {
        relay.finish().await;
        drop(raw);
    }
    forward.abort();
    if json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else if !matches!(outcome.reason, crate::sandbox::ExitReason::Exited { .. }) {
        eprintln!("cellkeep: {}: {}", outcome.provider, outcome.reason);
    }
    Ok(outcome.reason.exit_code())
}

/// Pass SIGINT/SIGTERM/SIGHUP on to the helper, which forwards them into the cell. The
/// handlers are installed at once; signals that arrive before the helper's pid is known wait
/// for it (and go nowhere if the launch fails).
async fn forward_signals(helper: tokio::sync::oneshot::Receiver<Option<u32>>) {
    use tokio::signal::unix::{signal, SignalKind};
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
    let Ok(Some(pid)) = helper.await else { return };
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    while let Some(sig) = rx.recv().await {
        let _ = nix::sys::signal::kill(pid, sig);
    }
}
