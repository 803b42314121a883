//! Sandboxed launch: a policy + a request → one process running in its own cell.
//!
//! Process model (see `lib.rs`, "Layout"):
//!
//! ```text
//! zygote (the daemon's, forked before its runtime)         zygote.rs
//!   │ clone3(CLONE_PARENT | CLONE_PIDFD) per cell: the helper is the daemon's child
//!   ▼
//! launcher (async, in the daemon or `cellkeep run`)        launch.rs
//!   │ starts the helper with fd 3 = control socket (from the zygote; `cellkeep run` spawns
//!   │ `/proc/self/exe __cell-helper`); meanwhile creates + limits the cgroup, leases the
//!   │ cell's host id (ids.rs), builds the plan; v2: the zygote forks the helper into the
//!   │ cgroup (CLONE_INTO_CGROUP; the cgroup made first), a spawned one is attached; sends the plan
//!   ▼
//! helper (single-threaded, host namespaces)                  helper.rs
//!   │ v1: moves itself into the cell's cgroup; the cell's user namespace holder started with
//!   │ the cell's host uid as effective uid; idmapped workspace (open_tree + mount_setattr);
//!   │ the cell's namespace mapped, joined; clone(NEWPID|NEWNS|NEWNET|NEWIPC|NEWUTS|NEWCGROUP)
//!   ▼
//! pid 1 of the cell: mounts, lo, hostname; reaps; forwards  init.rs
//!   (proxy cells: waits while the launcher opens the proxy listener in its netns)  netns.rs
//!   ▼ fork
//! payload: rlimits → caps → ids → no_new_privs → landlock → seccomp → execve
//! ```
//!
//! No Rust code runs between fork and exec in the multi-threaded launcher: the daemon's helpers
//! are forked by its zygote, a copy made before any thread existed, which receives their stdio
//! and control socket over a socket pair ([`zygote`]); otherwise the launcher spawns the helper
//! without `pre_exec`, and the helper inherits its control socket because the launcher clears
//! that fd's close-on-exec flag for one spawn. Only the launcher spawns, under `SPAWN_LOCK`,
//! with CLOEXEC cleared (see [`launch`]). The helper is single-threaded either way, so its
//! recipe is ordinary Rust. The launch plan is resolved and checked ([`plan::build`]) while the helper starts and the
//! cgroup is made; a request it refuses ends both (the helper killed, the cgroup removed);
//! seccomp BPF was compiled when the policy was loaded. With `[provider] tty = true` the
//! launcher opens a pseudo-terminal first ([`pty`]) and the payload makes its slave the
//! controlling terminal right after `setsid`. Setup failures come back as
//! `{stage, errno}` reports ([`proto`]); the cgroup, not a parent-death signal, guarantees that
//! nothing outlives the cell.
//!
//! A cell can also be built before its request (`[pool] prewarm`, [`warm`]): the same recipe,
//! cut where the request is needed — the helper stays outside the cell's user namespace until
//! then (pid 1 is cloned by an intermediate with `CLONE_PARENT`) to make the cwd's binds as
//! detached mounts; pid 1 builds and pivots into the rest of its view and waits
//! ([`init::pid1_warm`]).
//!
//! Every cell has its own network namespace. For `network.mode = "proxy"` pid 1 reports
//! `NetnsReady` once `lo` is up and waits; the launcher opens the egress proxy's listener inside
//! that namespace ([`netns`]), hands it to the daemon's proxy (`crate::egress`) and releases
//! pid 1, so the payload finds the proxy on its first connection.
//!
//! `sys.rs` is the only file with `unsafe`.

pub mod audit;
pub mod helper;
pub mod ids;
pub mod init;
pub mod landlock_rules;
pub mod launch;
pub mod netns;
pub mod plan;
pub mod proto;
pub mod pty;
pub(crate) mod sys;
pub mod view;
pub mod warm;
pub mod zygote;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use ids::{IdAllocator, IdRange};
pub use launch::{Cell, CellErrOutput, CellInput, CellIo, CellOutput, Launcher, Outcome, StdioMode, Stop};
pub use plan::{Degradation, HostCaps, LaunchRequest};
pub use proto::Stage;
pub use pty::TermSpec;
pub use warm::{Activation, WarmCell};

/// Why a cell ended: exactly one per run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum ExitReason {
    Exited {
        code: i32,
    },
    Signaled {
        signal: i32,
    },
    /// The kernel's OOM killer ended it at the memory limit.
    OomKilled,
    /// The pids limit was hit (forks failed) during the run.
    PidsLimited,
    /// A write went past the policy's `file_size` (`RLIMIT_FSIZE`): the kernel's SIGXFSZ
    /// ended the payload.
    FileSizeLimited,
    /// The wall-clock limit passed; the cell was killed.
    TimedOut,
    /// A syscall the seccomp policy kills on.
    SeccompViolation {
        syscall: Option<String>,
    },
    /// A setup step failed; the command never ran.
    SetupFailed {
        stage: String,
        errno: i32,
        detail: String,
    },
    /// Ended on request (terminate / shutdown).
    Terminated,
    /// Reaped after its idle timeout.
    Idle,
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Exited { code } => write!(f, "exited({code})"),
            ExitReason::Signaled { signal } => write!(f, "signaled({signal})"),
            ExitReason::OomKilled => f.write_str("oom_killed"),
            ExitReason::PidsLimited => f.write_str("pids_limited"),
            ExitReason::FileSizeLimited => f.write_str("file_size_limited"),
            ExitReason::TimedOut => f.write_str("timed_out"),
            ExitReason::SeccompViolation { syscall } => {
                write!(f, "seccomp_violation({})", syscall.as_deref().unwrap_or("unknown"))
            }
            ExitReason::SetupFailed { stage, .. } => write!(f, "setup_failed({stage})"),
            ExitReason::Terminated => f.write_str("terminated"),
            ExitReason::Idle => f.write_str("idle"),
        }
    }
}

impl ExitReason {
    /// Conventional exit code for `cellkeep run`: the child's own, 128+signal, 124 for a
    /// timeout (as timeout(1)), 125 for a setup failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::Exited { code } => *code,
            ExitReason::Signaled { signal } => 128 + signal,
            ExitReason::OomKilled => 128 + libc::SIGKILL,
            ExitReason::PidsLimited => 1,
            ExitReason::FileSizeLimited => 128 + libc::SIGXFSZ,
            ExitReason::TimedOut => 124,
            ExitReason::SeccompViolation { .. } => 128 + libc::SIGSYS,
            ExitReason::SetupFailed { .. } => 125,
            ExitReason::Terminated | ExitReason::Idle => 128 + libc::SIGTERM,
        }
    }
}

/// Launch errors. Each names the provider and the path, mechanism or stage involved.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("provider {provider}: cwd {path}: {reason}")]
    Cwd { provider: String, path: PathBuf, reason: String },
    #[error("provider {provider}: binary {path} not found or not executable")]
    Binary { provider: String, path: PathBuf },
    #[error("provider {provider}: no command: the policy has none and none was given")]
    NoCommand { provider: String },
    #[error(
        "provider {provider}: the argument {arg:?} starts with '-' and this provider's binary cannot tell it from \
         an option (its policy sets no [provider] command_after or command_format); refused"
    )]
    OptionArgument { provider: String, arg: String },
    #[error(
        "provider {provider}: takes no arguments from the caller (its policy sets command_via = \"stdin\": the \
         command is written to the program's stdin, never to its argv){hint}"
    )]
    StdinOnly { provider: String, hint: &'static str },
    #[error("provider {provider}: {what} contains a NUL byte, which no argument or environment value can hold")]
    NulByte { provider: String, what: String },
    #[error("provider {provider}: refusing to run as host root (uid/gid 0)")]
    HostRoot { provider: String },
    #[error("provider {provider}: {mechanism} is required but unavailable: {detail}")]
    Unsupported { provider: String, mechanism: String, detail: String },
    #[error("provider {provider}: policy is abstract (a base for others) and cannot be launched")]
    Abstract { provider: String },
    #[error("cell {cell}: {source}")]
    Cgroup { cell: String, source: crate::cgroup::CgroupError },
    #[error("cell {cell}: starting the cell helper {exe}: {source}")]
    Spawn { cell: String, exe: PathBuf, source: std::io::Error },
    #[error("cell {cell}: setup failed at stage {stage} (errno {errno}): {detail}")]
    Setup { cell: String, stage: Stage, errno: i32, detail: String },
    #[error("cell {cell}: the cell helper ended before the command started ({detail})")]
    HelperDied { cell: String, detail: String },
    #[error("provider {provider}: leasing a host id for the cell: {source}")]
    Ids { provider: String, source: ids::IdError },
    #[error("provider {provider}, cell {cell}: opening a pseudo-terminal (/dev/ptmx): {source}")]
    Pty { provider: String, cell: String, source: std::io::Error },
}

impl SandboxError {
    /// The setup stage this error belongs to (for `setup_failed(stage)`).
    pub fn stage(&self) -> String {
        match self {
            SandboxError::Cwd { .. } => "cwd".into(),
            SandboxError::Binary { .. }
            | SandboxError::NoCommand { .. }
            | SandboxError::Abstract { .. }
            | SandboxError::OptionArgument { .. }
            | SandboxError::StdinOnly { .. }
            | SandboxError::NulByte { .. } => "resolve".into(),
            SandboxError::HostRoot { .. } | SandboxError::Ids { .. } => "identity".into(),
            SandboxError::Unsupported { mechanism, .. } => mechanism.clone(),
            SandboxError::Cgroup { .. } => "cgroup".into(),
            SandboxError::Spawn { .. } | SandboxError::HelperDied { .. } => "helper".into(),
            SandboxError::Pty { .. } => Stage::Tty.to_string(),
            SandboxError::Setup { stage, .. } => stage.to_string(),
        }
    }

    /// As an exit reason (the command never ran).
    pub fn as_reason(&self) -> ExitReason {
        let errno = match self {
            SandboxError::Setup { errno, .. } => *errno,
            _ => 0,
        };
        ExitReason::SetupFailed { stage: self.stage(), errno, detail: self.to_string() }
    }
}
