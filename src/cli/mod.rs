//! The `cellkeep` command line (clap). `anyhow` is allowed here, at the edge, and nowhere else.
//!
//! - `local`: what works without a daemon — `run` (one process in a cell, in the
//!   foreground; exits with the child's status: 124 timeout, 125 setup failure, 128+N signal).
//! - `policy`: `policy check | show | score | diff`, what a reviewer runs on policy files
//!   (no daemon needed; exit 1 on any failure).
//! - `daemon`: the supervisor itself ([`crate::api::run_daemon`]); under systemd it takes the
//!   socket-activated listener, notifies readiness and logs to journald ([`crate::systemd`]).
//! - `doctor`: what this host supports and whether each policy can be enforced here.
//! - `remote`: every pool operation through the socket with the typed [`crate::client`]:
//!   `spawn`, `session`, `send`, `exec`, `ps`, `get`, `kill`, `health`, `logs`, `cleanup`,
//!   `shutdown`. Human output by default, `--json` for scripts; an error is printed as
//!   `cellkeep: error: CODE: MESSAGE` (with `--json`: the daemon's `{code, message}` body on
//!   stderr) and exits 1.
//! - `exec`: `cellkeep exec` as a remote shell (live stdout/stderr, stdin, signals, the
//!   command's exit status) over the API's streamed one-shot.
//!
//! Exit status: every error of cellkeep itself exits 1, clap's usage errors included; `run` and
//! `exec` exit with the command's status (and `run` uses 125 for its own failures).

mod doctor;
mod exec;
mod local;
mod policy;
mod remote;
mod term;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cellkeep", version, about = "Linux sandbox supervisor: run CLI processes in cgroup cells")]
#[command(after_help = "Exit status: a command's own status for `run` and `exec` (124 timeout, 128+N signal N, \
125 when the cell could not be set up); 0 for success otherwise; 1 for every error of cellkeep itself \
(bad usage, daemon unreachable, an error answer), printed as `cellkeep: error: CODE: MESSAGE`.")]
struct Cli {
    /// The daemon's socket, for the commands that talk to the daemon (also accepted after the
    /// subcommand; default: $CELLKEEP_SOCKET, else /run/cellkeep/cellkeep.sock).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Machine-readable output, for the commands that have it (also accepted after the
    /// subcommand).
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

/// How a client command reaches the daemon and prints.
#[derive(Debug, Clone, clap::Args)]
struct Conn {
    /// The daemon's socket (default: $CELLKEEP_SOCKET, else /run/cellkeep/cellkeep.sock).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Machine-readable output: the API's JSON on stdout, `{code, message}` errors on stderr.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run one command in a cell in the foreground and exit with its status (no daemon).
    Run(RunArgs),
    /// Validate and inspect provider policies.
    Policy(PolicyArgs),
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
        /// The session cell's id (from `spawn`, `session` or `ps`).
        id: String,
        /// The command: one line, written to the session's stdin.
        command: String,
        /// Seconds to wait for the reply (default: the policy's wall time, else 300).
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<f64>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Run one command in a fresh one-shot cell, like a remote shell: stdout and stderr live,
    /// stdin forwarded when it is not a terminal, Ctrl-C terminates the cell; exits with the
    /// command's status (124 timeout, 128+N signal N, 125 setup failure). With --json: one
    /// buffered result instead (output up to the policy's output_bytes; cut output exits 1,
    /// output_truncated).
    Exec {
        /// The one-shot provider (a policy name) to run the command with.
        provider: String,
        /// The command, passed to the provider's command as one final argument (no shell), or,
        /// for a provider with `command_via = "stdin"`, written to its stdin ahead of ours.
        command: String,
        /// Working directory (default: the current directory).
        #[arg(long, value_name = "DIR")]
        cwd: Option<PathBuf>,
        /// Seconds the command may run before it is ended as timed out (exit 124; default:
        /// the policy's wall time, else 300).
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<f64>,
        /// Forward stdin even when it is a terminal.
        #[arg(long, short, conflicts_with = "no_stdin")]
        interactive: bool,
        /// Never forward stdin (the command gets none, as `ssh -n`): for a loop that reads
        /// its own stdin, or a job whose stdin never closes.
        #[arg(long = "no-stdin", short = 'n')]
        no_stdin: bool,
        #[command(flatten)]
        env: EnvArgs,
        /// Over the cap, wait up to this many seconds for a free slot.
        #[arg(long, value_name = "SECONDS")]
        wait: Option<f64>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List cells.
    Ps {
        /// Only the cells of this provider (a policy name).
        #[arg(long, value_name = "PROVIDER")]
        provider: Option<String>,
        /// Include exited cells (kept for a while with their exit reasons).
        #[arg(long, short)]
        all: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show one cell.
    Get {
        /// The cell's id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Terminate a cell: SIGTERM, a grace period, then kill its whole cgroup.
    Kill {
        /// The cell's id.
        id: String,
        /// Kill at once.
        #[arg(long, short)]
        force: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Daemon health, or one cell's state and live resource usage (its last usage once ended).
    Health {
        /// A cell's id (default: the daemon's health, scoped to what you may see).
        id: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print a cell's output (stdout to stdout, stderr to stderr).
    Logs {
        /// The cell's id.
        id: String,
        /// Keep following until the cell ends.
        #[arg(long, short)]
        follow: bool,
        /// Start at this output offset, in bytes of the cell's output (stdout and stderr
        /// counted together; default: the oldest byte kept).
        #[arg(long, value_name = "BYTES")]
        from: Option<u64>,
        /// Only the bytes, stdout and stderr in the order written, all to stdout (the daemon's
        /// `format=raw` stream: no per-chunk JSON). A reader that falls behind what the daemon
        /// retains fails (exit 1) instead of printing a gap.
        #[arg(long)]
        raw: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// End every cell of a provider; prints how many.
    Cleanup {
        /// The provider (a policy name).
        provider: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// End every cell and stop the daemon (root or an admin group).
    Shutdown {
        /// Seconds cells get to end before they are killed (default and at most: the daemon's
        /// shutdown_timeout_secs).
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<f64>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Reload the daemon's policies and wait for the verdict (root or an admin group): exit 0
    /// when the new set serves, 1 when any file cannot load (each is named; the previous set
    /// keeps serving). The unit's ExecReload=, so `systemctl reload cellkeep` fails the same way.
    Reload {
        #[command(flatten)]
        conn: Conn,
    },
}

impl Cmd {
    /// The connection options of a client command.
    fn conn(&self) -> Option<&Conn> {
        match self {
            Cmd::Spawn(a) => Some(&a.conn),
            Cmd::Session(a) => Some(&a.conn),
            Cmd::Send { conn, .. }
            | Cmd::Exec { conn, .. }
            | Cmd::Ps { conn, .. }
            | Cmd::Get { conn, .. }
            | Cmd::Kill { conn, .. }
            | Cmd::Health { conn, .. }
            | Cmd::Logs { conn, .. }
            | Cmd::Cleanup { conn, .. }
            | Cmd::Shutdown { conn, .. }
            | Cmd::Reload { conn } => Some(conn),
            Cmd::Run(_) | Cmd::Policy(_) | Cmd::Daemon(_) | Cmd::Doctor(_) => None,
        }
    }
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The provider policy file (TOML).
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// Working directory of the command (must be inside the policy's workdir roots).
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// Name of cellkeep's cgroup root beneath this process's own cgroup (created if missing,
    /// and then removed again when the run ends). Not the daemon's `cellkeep`: a daemon
    /// started from the same cgroup would take this run's cell for an orphan of its own.
    #[arg(long, env = "CELLKEEP_CGROUP_ROOT", default_value = "cellkeep-run", value_name = "NAME")]
    cgroup_root: String,
    /// After the command's own output, print how it ended, its usage and events as one JSON line.
    #[arg(long)]
    json: bool,
    /// The command: appended to the policy's command, or the whole argv if it has none.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct PolicyArgs {
    /// Machine-readable output (after `policy` or after its subcommand).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: PolicyCmd,
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// Check policy files or directories (default: the daemon's policy directory): errors,
    /// warnings and the admin floor, then a summary line. Exit 1 on any error.
    Check {
        paths: Vec<PathBuf>,
        /// Warnings fail the check too (CI runs the shipped policies this way).
        #[arg(long)]
        strict: bool,
        /// Admin floor to check against (default: the daemon config's `floor`, when it exists).
        #[arg(long)]
        floor: Option<PathBuf>,
        /// Daemon settings to take the floor from (default: /etc/cellkeep/cellkeep.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the effective policy (after `extends`) of NAME in --dir, or of a file.
    Show {
        name: String,
        /// Policy directory (default: the daemon's, /etc/cellkeep/policies when it exists).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Exposure score, 0 (nothing exposed) to 10, with a line per finding and its weight
    /// (every launchable policy of --dir when no NAME is given).
    Score {
        names: Vec<String>,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// What NEW loosens or tightens compared with OLD (effective policies, key by key), and
    /// the exposure score before and after. OLD and NEW: names in --dir or files.
    Diff {
        old: String,
        new: String,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct DoctorArgs {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
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
    /// The socket to listen on (default: the config's `socket`, else $CELLKEEP_SOCKET, else
    /// /run/cellkeep/cellkeep.sock; a socket systemd passes wins).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Daemon settings (TOML); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory of provider policies.
    #[arg(long, value_name = "DIR")]
    policies: Option<PathBuf>,
    /// Most cells alive at once (a count).
    #[arg(long, value_name = "N")]
    max_cells: Option<usize>,
    /// Name of cellkeep's cgroup root.
    #[arg(long, env = "CELLKEEP_CGROUP_ROOT", value_name = "NAME")]
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
    /// The provider (a policy name).
    provider: String,
    /// Working directory (default: the current directory).
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// Start a long-lived session fed on stdin (default: the provider's mode).
    #[arg(long)]
    session: bool,
    #[command(flatten)]
    env: EnvArgs,
    /// Over the cap, wait up to this many seconds for a free slot.
    #[arg(long, value_name = "SECONDS")]
    wait: Option<f64>,
    /// Extra arguments for the provider's command.
    #[arg(last = true)]
    args: Vec<String>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, clap::Args)]
struct SessionArgs {
    /// The session provider (a policy name).
    provider: String,
    /// Working directory of a new session (default: the current directory).
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    #[command(flatten)]
    env: EnvArgs,
    /// Over the cap, wait up to this many seconds for a free slot.
    #[arg(long, value_name = "SECONDS")]
    wait: Option<f64>,
    #[command(flatten)]
    conn: Conn,
}

/// Parse the command line, run, return the process exit code: 1 for every error of cellkeep
/// itself (clap's usage errors included), the command's own status for `run` and `exec`.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors.
            return if e.use_stderr() { 1 } else { 0 };
        }
    };
    init_logging(matches!(cli.cmd, Cmd::Daemon(_)));
    // The top-level --socket / --json apply only where the command has them.
    let offered = |what: &str, ok: bool| -> Result<(), String> {
        if ok {
            Ok(())
        } else {
            Err(format!("{what} is not an option of this command"))
        }
    };
    let client = cli.cmd.conn().is_some();
    let checked = offered("--socket", cli.socket.is_none() || client || matches!(cli.cmd, Cmd::Daemon(_))).and(
        offered("--json", !cli.json || client || matches!(cli.cmd, Cmd::Run(_) | Cmd::Doctor(_) | Cmd::Policy(_))),
    );
    if let Err(m) = checked {
        eprintln!("cellkeep: error: bad_request: {m}");
        return 1;
    }
    if !matches!(cli.cmd, Cmd::Daemon(_) | Cmd::Run(_)) {
        crate::sandbox::sys::default_sigpipe();
    }
    if let Some(conn) = cli.cmd.conn().cloned() {
        let socket = conn.socket.or(cli.socket).unwrap_or_else(default_socket);
        return remote::main(cli.cmd, &socket, conn.json || cli.json);
    }
    let is_run = matches!(cli.cmd, Cmd::Run(_));
    if is_run || matches!(cli.cmd, Cmd::Daemon(_)) {
        own_cgroup(if is_run { "run" } else { "daemon" });
    }
    let result = match cli.cmd {
        Cmd::Run(args) => {
            let json = args.json || cli.json;
            local::run(args, json)
        }
        Cmd::Policy(p) => return policy_main(p.cmd, p.json || cli.json),
        Cmd::Daemon(mut args) => {
            args.socket = args.socket.or(cli.socket);
            daemon(args)
        }
        Cmd::Doctor(args) => doctor::run(args.policies, args.config, args.json || cli.json),
        _ => Ok(1),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cellkeep: error: {e:#}");
            // `run` exits with its command's status, which 1 could be: its own failures are
            // 125, as a cell that could not be set up.
            if is_run {
                125
            } else {
                1
            }
        }
    }
}

/// Before anything else of `run` or `daemon` (no thread, no zygote yet): where this process's
/// cgroup also holds processes that are not cellkeep's (a login session's scope: cgroup v2
/// cannot delegate from it) and systemd is PID 1, move into a transient scope of its own
/// ([`crate::systemd::exec_in_own_scope`]). Elsewhere, or if that fails, start as is:
/// opening the cgroup root then says what is wrong ([`crate::cgroup::CgroupError::Shared`]).
fn own_cgroup(what: &str) {
    if std::env::var_os(crate::systemd::OWN_SCOPE_VAR).is_some() || !nix::unistd::geteuid().is_root() {
        return;
    }
    let Some((cgroup, pids)) = crate::cgroup::shared_own_cgroup() else { return };
    if !crate::systemd::booted() {
        return;
    }
    tracing::debug!(cgroup = %cgroup.display(), ?pids, "cgroup shared with other processes: into a scope of its own");
    // The slice the shared cgroup sits in (a login session's `user-0.slice`): the new scope
    // goes there too, under the same limits.
    let slice = cgroup.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()).filter(|n| n.ends_with(".slice"));
    let e = crate::systemd::exec_in_own_scope(what, slice);
    tracing::warn!("cannot start `systemd-run --scope` for a cgroup of cellkeep's own: {e}");
}

/// `policy …`: one error exit code (1) for every failure.
fn policy_main(cmd: PolicyCmd, json: bool) -> i32 {
    let result = match cmd {
        PolicyCmd::Check { paths, strict, floor, config } => policy::check(paths, strict, floor, config, json),
        PolicyCmd::Show { name, dir } => policy::show(&name, dir, json),
        PolicyCmd::Score { names, dir } => policy::score(names, dir, json),
        PolicyCmd::Diff { old, new, dir } => policy::diff(&old, &new, dir, json),
    };
    result.unwrap_or_else(|e| {
        if json {
            eprintln!("{}", serde_json::json!({ "error": format!("{e:#}") }));
        } else {
            eprintln!("cellkeep: error: {e:#}");
        }
        1
    })
}

/// $CELLKEEP_SOCKET, else the daemon's default socket.
fn default_socket() -> PathBuf {
    std::env::var_os("CELLKEEP_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(crate::client::DEFAULT_SOCKET))
}

/// The daemon's runtime workers: one per CPU up to [`MAX_WORKERS`]. The daemon waits on pipes,
/// sockets and the kernel; past a few workers more threads only add stacks and allocator
/// arenas to its memory at rest (a big host would otherwise get a worker per core).
const MAX_WORKERS: usize = 4;

fn worker_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, MAX_WORKERS)
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

fn daemon(args: DaemonArgs) -> anyhow::Result<i32> {
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
    if let Some(socket) = args.socket.or_else(|| std::env::var_os("CELLKEEP_SOCKET").map(PathBuf::from)) {
        config.socket = socket;
    } else if args.config.is_none() {
        config.socket = PathBuf::from(crate::client::DEFAULT_SOCKET);
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
    // Before the runtime's threads: cell helpers are forked from it, not spawned.
    if let Err(e) = crate::sandbox::zygote::start() {
        tracing::warn!("no zygote ({e}): cell helpers are spawned");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads())
        .enable_all()
        .thread_name("cellkeep")
        .build()?;
    let ended = rt.block_on(crate::api::run_daemon(config, activated));
    crate::sandbox::zygote::stop();
    match ended {
        Ok(()) => Ok(0),
        // Logged once, through the one log sink (journald under systemd, else stderr).
        Err(e) => {
            tracing::error!("cannot start: {e}");
            Ok(1)
        }
    }
}
