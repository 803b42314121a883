//! The `cellkeep` command line (clap). `anyhow` is allowed here, at the edge, and nowhere else.
//!
//! - `cellkeep run --policy FILE [--cwd DIR] [--json] -- ARGS…`: one process in a cell, in the
//!   foreground, stdio connected; exits with the child's status (124 timeout, 125 setup
//!   failure, 128+N signal). `--json` prints the outcome (reason, usage, events) as one JSON
//!   line on stdout after the command's own output.
//! - `cellkeep policy check [FILES|DIRS…]`: every problem as `file:line:col: key: message`;
//!   exit 1 on any.
//! - `cellkeep policy show NAME|FILE`: the effective policy after inheritance.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand};

use crate::cgroup::CgroupRoot;
use crate::policy;
use crate::sandbox::{HostCaps, LaunchRequest, Launcher, StdioMode};

#[derive(Debug, Parser)]
#[command(name = "cellkeep", version, about = "Linux sandbox supervisor: run CLI processes in cgroup cells")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run one command in a cell in the foreground and exit with its status.
    Run(RunArgs),
    /// Validate and inspect provider policies.
    #[command(subcommand)]
    Policy(PolicyCmd),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The provider policy file (TOML).
    #[arg(long)]
    policy: PathBuf,
    /// Working directory of the command (must be inside the policy's workdir roots).
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// Print the outcome as one JSON line on stdout at the end.
    #[arg(long)]
    json: bool,
    /// Name of cellkeep's cgroup root beneath this process's own cgroup.
    #[arg(long, env = "CELLKEEP_CGROUP_ROOT", default_value = "cellkeep")]
    cgroup_root: String,
    /// The command: appended to the policy's command, or the whole argv if it has none.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// Check policy files or directories (default: ./policies).
    Check { paths: Vec<PathBuf> },
    /// Print the effective policy (after `extends`) of NAME in --dir, or of a file.
    Show {
        name: String,
        #[arg(long, default_value = "policies")]
        dir: PathBuf,
    },
}

/// Parse the command line, run, return the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.cmd {
        Cmd::Run(args) => run(args),
        Cmd::Policy(PolicyCmd::Check { paths }) => {
            let paths = if paths.is_empty() { vec![PathBuf::from("policies")] } else { paths };
            Ok(policy_check(&paths))
        }
        Cmd::Policy(PolicyCmd::Show { name, dir }) => policy_show(&name, &dir),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cellkeep: error: {e:#}");
            125
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CELLKEEP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn policy_check(paths: &[PathBuf]) -> i32 {
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

fn policy_show(name: &str, dir: &std::path::Path) -> anyhow::Result<i32> {
    let path = if name.ends_with(".toml") || name.contains('/') {
        PathBuf::from(name)
    } else {
        dir.join(format!("{name}.toml"))
    };
    let p = policy::load_file(&path)?;
    print!("{}", policy::show(&p));
    Ok(0)
}

fn run(args: RunArgs) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: RunArgs) -> anyhow::Result<i32> {
    let policy = policy::load_launchable(&args.policy)?;
    let root = CgroupRoot::open(&args.cgroup_root)?;
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
            if args.json {
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
    if args.json {
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
