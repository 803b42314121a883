//! systemd integration, all of it optional: readiness notifications (`sd_notify(3)`), socket
//! activation (`sd_listen_fds(3)`) and the choice of journald for logs. Outside systemd every
//! function here is a no-op or answers "no".
//!
//! - [`notify_ready`], [`notify_stopping`], [`notify_reloading`]: `READY=1`, `STOPPING=1`,
//!   `RELOADING=1` (+ `MONOTONIC_USEC`, which `Type=notify-reload` needs on systemd ≥ 253) with a
//!   `STATUS=` line, sent to `$NOTIFY_SOCKET` with the `sd-notify` crate. A failed notification
//!   is logged, never fatal: the daemon works the same without a service manager.
//! - [`take_activated_listener`]: the listening socket systemd passed as fd 3 (`LISTEN_PID` =
//!   our pid, `LISTEN_FDS` = 1). `sd-notify`'s `listen_fds` marks it close-on-exec and
//!   `sandbox::sys::take_activated_listener` claims it once as a `UnixListener` (checking it
//!   is an `AF_UNIX` stream socket), so no `unsafe` is needed here; we add the `LISTEN_PID`
//!   check the protocol requires and check that the socket is listening (`SO_ACCEPTCONN`).
//! - [`journald_stderr`]: stderr is connected to the journal (`$JOURNAL_STREAM` names the
//!   device and inode of our stderr, see `systemd.exec(5)`), so logs should go to journald
//!   natively (priorities and fields) instead of as plain text.
//! - [`exec_in_own_scope`]: `cellkeep run` / `daemon` started from a cgroup it shares (a login
//!   session's scope) re-executes itself through `systemd-run --scope -p Delegate=yes`, which
//!   moves the same process (same pid, stdio and terminal) into a transient scope of its own
//!   before exec: the supported way to get a delegated cgroup from systemd (its cgroup
//!   delegation rules: one writer per subtree), where writing into the session's scope is not.

use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;

use sd_notify::NotifyState;

/// Errors of socket activation (notifications never fail the daemon).
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("socket activation: LISTEN_FDS={value:?} is not a number")]
    BadListenFds { value: String },
    #[error("socket activation passed {count} sockets; cellkeep.socket must have exactly one ListenStream=")]
    TooManySockets { count: usize },
    #[error("socket activation: fd 3 is not a Unix stream socket: {source}")]
    NotUnixStream { source: std::io::Error },
    #[error("socket activation: fd 3 is a Unix stream socket that is not listening")]
    NotListening,
    #[error("socket activation: checking fd 3: {source}")]
    Check { source: nix::Error },
}

/// Set in the environment of a `cellkeep` re-executed by [`exec_in_own_scope`], so it never
/// tries twice.
pub const OWN_SCOPE_VAR: &str = "CELLKEEP_OWN_SCOPE";

/// Whether systemd is the service manager of this host (`sd_booted(3)`: `/run/systemd/system`
/// is a directory).
pub fn booted() -> bool {
    std::path::Path::new("/run/systemd/system").is_dir()
}

/// Replaces this process with `systemd-run --scope --quiet --collect -p Delegate=yes
/// --unit=cellkeep-<what>-<pid> [--slice=<slice>] -- <this binary> <its arguments>`
/// ([`OWN_SCOPE_VAR`] set), in `slice` (the caller's: a login session's user slice keeps its
/// limits) where given. systemd-run asks the manager for the scope with its own pid in it,
/// then execs the command in place: the caller's shell still waits on the same pid, signals
/// and exit status included. First the manager is asked for its version
/// (`systemctl show -p Version`): one that cannot be reached (a chroot or container that
/// sees the host's `/run`) would leave systemd-run failing after the exec, where nothing can
/// fall back. Returns only when either step fails.
pub fn exec_in_own_scope(what: &str, slice: Option<&str>) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return e,
    };
    let reachable = std::process::Command::new("systemctl")
        .args(["show", "--property=Version", "--value"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    match reachable {
        Ok(s) if s.success() => {}
        Ok(s) => return std::io::Error::other(format!("the service manager does not answer (systemctl show: {s})")),
        Err(e) => return e,
    }
    std::process::Command::new("systemd-run")
        .args(["--scope", "--quiet", "--collect", "-p", "Delegate=yes"])
        .args(slice.map(|s| format!("--slice={s}")))
        .arg(format!("--unit=cellkeep-{what}-{}", std::process::id()))
        .arg(format!("--description=cellkeep {what} (a cgroup of its own to delegate to its cells)"))
        .arg("--")
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(OWN_SCOPE_VAR, "1")
        .exec()
}

const LISTEN_VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// The socket passed by the service manager, if this process was socket-activated.
///
/// Reads and then removes `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` from the environment
/// (so nothing started later inherits them). Variables meant for another process (a
/// `LISTEN_PID` that is not ours, or none) are removed and ignored. Must be called before any
/// other thread exists (environment mutation): the CLI calls it before starting the runtime.
pub fn take_activated_listener() -> Result<Option<UnixListener>, SystemdError> {
    let ours = std::env::var("LISTEN_PID").ok().and_then(|p| p.trim().parse::<u32>().ok()) == Some(std::process::id());
    let fds = std::env::var("LISTEN_FDS").ok();
    let result = match (ours, fds) {
        (true, Some(value)) => take_fd3(&value),
        _ => Ok(None),
    };
    for var in LISTEN_VARS {
        std::env::remove_var(var);
    }
    result
}

fn take_fd3(value: &str) -> Result<Option<UnixListener>, SystemdError> {
    let count: usize = value.trim().parse().map_err(|_| SystemdError::BadListenFds { value: value.to_owned() })?;
    match count {
        0 => return Ok(None),
        1 => {}
        _ => return Err(SystemdError::TooManySockets { count }),
    }
    // sd-notify re-reads LISTEN_FDS (LISTEN_PID was checked above) and starts at fd 3.
    let listener =
        crate::sandbox::sys::take_activated_listener().map_err(|source| SystemdError::NotUnixStream { source })?;
    let Some(listener) = listener else {
        return Ok(None);
    };
    let listening = nix::sys::socket::getsockopt(&listener.as_fd(), nix::sys::socket::sockopt::AcceptConn)
        .map_err(|source| SystemdError::Check { source })?;
    if !listening {
        return Err(SystemdError::NotListening);
    }
    Ok(Some(listener))
}

/// True when stderr is the journal stream systemd set up for this service.
pub fn journald_stderr() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr().as_fd()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// The service is up: the socket is listening and the policies are loaded.
pub fn notify_ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Shutdown has begun (sent before the cells are ended).
pub fn notify_stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down: ending cells")]);
}

/// A policy reload has begun; [`notify_ready`] ends it (whether the reload succeeded or was
/// rejected: either way the daemon keeps serving a valid policy set).
pub fn notify_reloading() {
    let mut states = vec![NotifyState::Reloading, NotifyState::Status("reloading policies")];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("sd_notify: {e}");
    }
}
