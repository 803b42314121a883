//! The `cellkeep` command line (clap). `anyhow` is allowed here, at the edge, and nowhere else.
//!
//! - [`local`]: what works without a daemon — `run` (one process in a cell, in the
//!   foreground; exits with the child's status: 124 timeout, 125 setup failure, 128+N signal)
//!   and `policy check` / `policy show`.
//! - `daemon`: the supervisor itself ([`crate::api::run_daemon`]); under systemd it takes the
//!   socket-activated listener, notifies readiness and logs to journald ([`crate::systemd`]).
//! - [`doctor`]: what this host supports and whether each policy can be enforced here.
//! - [`remote`]: every pool operation through the socket with the typed [`crate::client`]:
//!   `spawn`, `session`, `send`, `exec`, `ps`, `get`, `kill`, `health`, `logs`, `cleanup`,
//!   `shutdown`. Human output by default, `--json` for scripts; an error is printed as
//!   `cellkeep: error: CODE: MESSAGE` (with `--json`: the daemon's `{code, message}` body on
//!   stderr) and exits 1.

mod doctor;
mod local;
mod remote;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cellkeep", version, about = "Linux sandbox supervisor: run CLI processes in cgroup cells")]
struct Cli {
    /// The daemon's socket.
    #[arg(long, global = true, env = "CELLKEEP_SOCKET", default_value = crate::client::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Machine-readable output: JSON on stdout, JSON errors on stderr.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run one command in a cell in the foreground and exit with its status (no daemon).
    Run(RunArgs),
    /// Validate and inspect provider policies.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Run the supervisor daemon on --socket (or on the socket systemd passed).
    Daemon(DaemonArgs),
    /// Report what this host supports and whether each policy can be enforced fully here.
    /// Exit status: 0 when every policy can launch (fully, or degraded as its enforcement
    /// mode allows), 1 when any would fail or is invalid.
    Doctor(DoctorArgs),
    /// Start a cell for a provider; prints its id.
    Spawn(SpawnArgs),
    /// Your live session of a provider, or a new one; prints its id.
    Session(SessionArgs),
    /// Send a command to a session cell and print the framed reply.
    Send {
        id: String,
        command: String,
        /// Seconds to wait for the reply (default: the policy's wall time, else 300).
        #[arg(long)]
        timeout: Option<f64>,
    },
    /// Run one command in a fresh one-shot cell; exits with the command's status.
    Exec {
        provider: String,
        command: String,
        /// Working directory (default: the current directory).
        #[arg(long)]
        cwd: Option<PathBuf>,
        #[arg(long)]
        timeout: Option<f64>,
        #[command(flatten)]
        env: EnvArgs,
        /// Over the cap, wait up to this many seconds for a free slot.
        #[arg(long)]
        wait: Option<f64>,
    },
    /// List cells.
    Ps {
        #[arg(long)]
        provider: Option<String>,
        /// Include exited cells (kept for a while with their exit reasons).
        #[arg(long, short)]
        all: bool,
    },
    /// Show one cell.
    Get { id: String },
    /// Terminate a cell: SIGTERM, a grace period, then kill its whole cgroup.
    Kill {
        id: String,
        /// Kill at once.
        #[arg(long, short)]
        force: bool,
    },
    /// Daemon health, or one cell's state and live resource usage.
    Health { id: Option<String> },
    /// Print a cell's output (stdout to stdout, stderr to stderr).
    Logs {
        id: String,
        /// Keep following until the cell ends.
        #[arg(long, short)]
        follow: bool,
        /// Start at this output offset (default: the oldest byte kept).
        #[arg(long)]
        from: Option<u64>,
    },
    /// End every cell of a provider; prints how many.
    Cleanup { provider: String },
    /// End every cell and stop the daemon (root or an admin group).
    Shutdown,
    /// Reload the daemon's policies and wait for the verdict (root or an admin group): exit 0
    /// when the new set serves, 1 when any file cannot load (each is named; the previous set
    /// keeps serving). The unit's ExecReload=, so `systemctl reload cellkeep` fails the same way.
    Reload,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The provider policy file (TOML).
    #[arg(long)]
    policy: PathBuf,
    /// Working directory of the command (must be inside the policy's workdir roots).
    #[arg(long)]
    cwd: Option<PathBuf>,
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

#[derive(Debug, clap::Args)]
struct DoctorArgs {
    /// Directory of provider policies (default: the config's policy_dir, else the daemon's
    /// default: /etc/cellkeep/policies when it exists, else ./policies).
    #[arg(long)]
    policies: Option<PathBuf>,
    /// Daemon settings to take policy_dir from when --policies is not given (default:
    /// /etc/cellkeep/cellkeep.toml when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct DaemonArgs {
    /// Daemon settings (TOML); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory of provider policies.
    #[arg(long)]
    policies: Option<PathBuf>,
    /// Most cells alive at once.
    #[arg(long)]
    max_cells: Option<usize>,
    /// Name of cellkeep's cgroup root.
    #[arg(long, env = "CELLKEEP_CGROUP_ROOT")]
    cgroup_root: Option<String>,
}

/// Environment sent with a request. The CLI sends its own environment plus `--env`; the
/// daemon keeps only the names on the provider's pass-list.
#[derive(Debug, clap::Args)]
struct EnvArgs {
    /// Set NAME=VALUE for the cell (still subject to the policy's pass-list).
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE")]
    set: Vec<String>,
    /// Send only the --env values, not this shell's environment.
    #[arg(long)]
    clean_env: bool,
}

#[derive(Debug, clap::Args)]
struct SpawnArgs {
    provider: String,
    /// Working directory (default: the current directory).
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// Start a long-lived session fed on stdin (default: the provider's mode).
    #[arg(long)]
    session: bool,
    #[command(flatten)]
    env: EnvArgs,
    /// Over the cap, wait up to this many seconds for a free slot.
    #[arg(long)]
    wait: Option<f64>,
    /// Extra arguments for the provider's command.
    #[arg(last = true)]
    args: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct SessionArgs {
    provider: String,
    #[arg(long)]
    cwd: Option<PathBuf>,
    #[command(flatten)]
    env: EnvArgs,
    #[arg(long)]
    wait: Option<f64>,
}

/// Parse the command line, run, return the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_logging(matches!(cli.cmd, Cmd::Daemon(_)));
    let result = match cli.cmd {
        Cmd::Run(args) => local::run(args, cli.json),
        Cmd::Policy(PolicyCmd::Check { paths }) => {
            let paths = if paths.is_empty() { vec![PathBuf::from("policies")] } else { paths };
            Ok(local::policy_check(&paths))
        }
        Cmd::Policy(PolicyCmd::Show { name, dir }) => local::policy_show(&name, &dir),
        Cmd::Daemon(args) => daemon(args, cli.socket),
        Cmd::Doctor(args) => doctor::run(args.policies, args.config, cli.json),
        cmd => return remote::main(cmd, &cli.socket, cli.json),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cellkeep: error: {e:#}");
            125
        }
    }
}

/// The daemon logs at `info` unless `CELLKEEP_LOG` says otherwise; client commands at `warn`.
/// When stderr is the journal (run by systemd), logs go to journald natively, with their
/// priority and fields; otherwise as text on stderr.
fn init_logging(daemon: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let default = if daemon { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CELLKEEP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    if crate::systemd::journald_stderr() {
        match tracing_journald::layer() {
            Ok(journal) => {
                let journal = journal.with_syslog_identifier("cellkeep".to_owned());
                let _ = tracing_subscriber::registry().with(filter).with(journal).try_init();
                return;
            }
            Err(e) => eprintln!("cellkeep: cannot reach journald ({e}); logging to stderr"),
        }
    }
    // Colours only on a terminal: logs redirected to a file stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

/// Exit status of `cellkeep daemon` when its config file is broken: `EX_CONFIG` (sysexits.h).
/// The unit's `RestartPreventExitStatus=` names it: restarting cannot fix a config file.
pub const EXIT_CONFIG: i32 = 78;

fn daemon(args: DaemonArgs, socket: PathBuf) -> anyhow::Result<i32> {
    let mut config = match &args.config {
        Some(path) => match crate::config::Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                // The one thing that stops start-up (a policy that cannot load does not).
                tracing::error!("cannot start: {e}");
                return Ok(EXIT_CONFIG);
            }
        },
        None => crate::config::Config::default(),
    };
    // An explicit --socket (or CELLKEEP_SOCKET) wins over the file; the built-in default
    // does not override a socket set in the file.
    if socket.as_os_str() != crate::client::DEFAULT_SOCKET || args.config.is_none() {
        config.socket = socket;
    }
    if let Some(p) = args.policies {
        config.policy_dir = p;
    }
    if let Some(n) = args.max_cells {
        config.max_cells = n;
    }
    if let Some(r) = args.cgroup_root {
        config.cgroup_root = r;
    }
    // Before the runtime starts: this reads and clears LISTEN_* from the environment.
    let activated = crate::systemd::take_activated_listener()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("cellkeep").build()?;
    match rt.block_on(crate::api::run_daemon(config, activated)) {
        Ok(()) => Ok(0),
        // Logged once, through the one log sink (journald under systemd, else stderr).
        Err(e) => {
            tracing::error!("cannot start: {e}");
            Ok(1)
        }
    }
}
