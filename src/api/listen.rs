//! The Unix socket: bind it safely (or adopt the one systemd passed), accept with the peer's
//! credentials, serve each connection with hyper, bound the number of connections, and drain
//! them at shutdown.
//!
//! Who the peer is comes from the socket, never from a pid looked up later (a pid can be
//! recycled between `connect(2)` and our read):
//! - `SO_PEERCRED` (via `UnixStream::peer_cred`) gives the uid, gid and pid, and
//!   `SO_PEERGROUPS` the supplementary groups, of the process that called `connect(2)`, fixed
//!   at connect time — not forgeable by the peer, and unchanged by a pid recycled since.
//! - Whether the peer runs inside a cell needs `/proc/<pid>/cgroup`, so the process is pinned
//!   with a pidfd first: `SO_PEERPIDFD` (Linux 6.5+) names the process that connected. After
//!   the `/proc` read, the pidfd must still hold its pid (not reaped: `sys::pidfd_alive`);
//!   then the pid was never recycled during the read, so the read was about the peer. A peer
//!   that is gone, cannot be pinned, or has no pid in our namespace counts as inside a cell:
//!   every request is refused (`peer_in_cell`).
//! - Fallback on kernels without `SO_PEERPIDFD` (ENOPROTOOPT): `pidfd_open(pid)` at accept,
//!   then the same re-check. That closes the window between the `/proc` read and the decision;
//!   the window between `connect(2)` and `pidfd_open` (the peer exits and its pid is recycled
//!   before we accept) stays open there — only for the cell check, the groups are race-free.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::pool::{Caller, Pool};
use crate::sandbox::sys;

use super::ApiError;

/// A client must send its request head within this time (slowloris guard; also closes
/// keep-alive connections idle this long).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Bind the socket at `config.socket`: create its directory, replace a stale socket (nobody
/// answering), refuse to replace a live one or anything that is not a socket, then set its
/// mode and group.
pub fn bind(config: &Config) -> Result<UnixListener, ApiError> {
    let path = &config.socket;
    let io = |source| ApiError::Socket { path: path.clone(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ApiError::AlreadyRunning { path: path.clone() });
            }
            tracing::warn!(socket = %path.display(), "removing a stale socket");
            std::fs::remove_file(path).map_err(io)?;
        }
        Ok(_) => return Err(ApiError::NotASocket { path: path.clone() }),
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.socket_mode)).map_err(io)?;
    if let Some(gid) = config.socket_group {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(io)?;
        // The socket's group still needs to search every directory above it.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o011 == 0) {
                tracing::warn!(
                    dir = %dir.display(),
                    "the socket's directory is closed to its group and others (mode 0700?): \
                     members of the socket's group cannot connect; make it 0755"
                );
            }
        }
    }
    Ok(listener)
}

/// Serve a listening socket systemd passed (socket activation). Its mode and group are the
/// socket unit's business; the returned path is `None` because the daemon does not own it.
pub fn adopt(listener: std::os::unix::net::UnixListener) -> Result<(UnixListener, Option<PathBuf>), ApiError> {
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("<inherited fd 3>"));
    let io = |source| ApiError::Socket { path: path.clone(), source };
    listener.set_nonblocking(true).map_err(io)?;
    let listener = UnixListener::from_std(listener).map_err(io)?;
    Ok((listener, None))
}

/// The socket's path for logs (`<unnamed>` for an abstract or unnamed socket).
pub fn display_addr(listener: &UnixListener) -> String {
    listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
        .unwrap_or_else(|| "<unnamed>".to_owned())
}

/// The peer of an accepted connection: its credentials from `SO_PEERCRED` and
/// `SO_PEERGROUPS`, and a pidfd pinning its process (see the module doc), with `in_cell` still
/// unset.
fn caller_of(stream: &impl AsFd) -> std::io::Result<(Caller, Option<OwnedFd>)> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)?;
    let pid = Some(cred.pid()).filter(|p| *p > 0);
    let groups = sys::peer_groups(stream)?;
    let pidfd = pid.and_then(|pid| match sys::peer_pidfd(stream) {
        Ok(Some(fd)) => Some(fd),
        Ok(None) => sys::pidfd_open(pid).ok(),
        Err(_) => None,
    });
    Ok((Caller { uid: cred.uid(), gid: cred.gid(), pid, groups, in_cell: false }, pidfd))
}

/// Whether a peer counts as inside a cell. `holds(pid)` reads `/proc/<pid>/cgroup`
/// (`Some(true)`: in a cell, `Some(false)`: a host process, `None`: unreadable). Its answer is
/// used only if the peer's pidfd shows the peer still held its pid after the read; a peer
/// without a pid or a pidfd, one already reaped, or an unreadable cgroup file counts as inside
/// a cell (refused), so a recycled pid can never pass a cell off as a host process.
fn peer_in_cell(pid: Option<i32>, pidfd: Option<&OwnedFd>, holds: impl FnOnce(i32) -> Option<bool>) -> bool {
    let (Some(pid), Some(pidfd)) = (pid, pidfd) else { return true };
    let answer = holds(pid).unwrap_or(true);
    match sys::pidfd_alive(pidfd) {
        Ok(true) => answer,
        Ok(false) | Err(_) => true,
    }
}

/// Connections still being served after the listener stopped.
pub struct Connections {
    tasks: JoinSet<()>,
    closing: watch::Sender<bool>,
}

impl Connections {
    /// Ask every connection to finish its in-flight request and close; abort what is left
    /// after `timeout`.
    pub async fn drain(mut self, timeout: Duration) {
        self.closing.send_replace(true);
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(timeout, all).await.is_err() {
            tracing::warn!(left = self.tasks.len(), "closing connections that did not finish in time");
            self.tasks.abort_all();
        }
    }
}

/// Accept and serve until `stop` is cancelled; the connections still open then.
pub async fn serve(
    listener: UnixListener,
    router: Router,
    pool: Pool,
    max_connections: usize,
    stop: CancellationToken,
) -> Connections {
    let slots = Arc::new(Semaphore::new(max_connections));
    let shares = Shares::new(max_connections);
    let (mut refused, mut last_refusal_log) = (0u64, None);
    let (closing, closing_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let caller = match caller_of(&stream) {
            Ok((mut c, pidfd)) => {
                // A process inside a cell must never drive the supervisor, whatever the socket's
                // permissions let its uid do (Landlock has no right for connect(2) to a socket).
                c.in_cell = peer_in_cell(c.pid, pidfd.as_ref(), |pid| pool.cell_holds_pid(pid));
                if c.in_cell {
                    tracing::warn!(
                        pid = c.pid,
                        uid = c.uid,
                        "connection from inside a cell; every request will be refused"
                    );
                }
                c
            }
            Err(e) => {
                tracing::warn!("cannot read the peer's credentials ({e}); connection refused");
                continue;
            }
        };
        let slot = match shares.admit(&slots, caller.uid, pool.is_admin(&caller)) {
            Ok(slot) => slot,
            Err(why) => {
                refuse(&stream, why, caller.uid, max_connections);
                // At most one line a second (a client reconnecting in a loop must not flood
                // the journal), with the count refused since the last one.
                refused += 1;
                if last_refusal_log.is_none_or(|t: std::time::Instant| t.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(
                        max_connections,
                        uid = caller.uid,
                        refused,
                        "connection limit reached; refusing connections"
                    );
                    last_refusal_log = Some(std::time::Instant::now());
                    refused = 0;
                }
                continue;
            }
        };
        let (router, closing) = (router.clone(), closing_rx.clone());
        tasks.spawn(async move {
            serve_connection(stream, caller, router, closing).await;
            drop(slot);
        });
    }
    Connections { tasks, closing }
}

/// Answer a connection over the limit before closing it, so the client learns why: one
/// non-blocking send(2) of a few hundred bytes into the fresh socket's empty buffer (nothing
/// waits on it; a failed send is a client already gone). Straight on the fd: tokio's
/// `try_write` answers WouldBlock without writing until its reactor has seen the socket
/// writable, which on a just-accepted socket it has not.
fn refuse(stream: &UnixStream, why: Refused, uid: u32, max_connections: usize) {
    let message = match why {
        Refused::Share { held } => format!(
            "connection limit: uid {uid} already holds {held} connections, its share of \
             max_connections = {max_connections}; close idle ones or retry"
        ),
        Refused::Full => format!(
            "connection limit: the daemon serves max_connections = {max_connections} connections \
             (some kept for root and admins); retry shortly"
        ),
    };
    let answer = super::edge::closing_answer(super::wire::ErrorCode::ConnectionLimit, message);
    use nix::sys::socket::MsgFlags;
    let _ = nix::sys::socket::send(
        std::os::fd::AsRawFd::as_raw_fd(stream),
        &answer,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    );
}

/// How the connection slots are shared, so one user's connections (256 `follow` streams, say)
/// cannot lock everyone else out: a non-admin uid holds at most a quarter of them, and
/// non-admin connections together leave an eighth free for root and admins.
struct Shares {
    per_uid: usize,
    reserve: usize,
    open: Arc<std::sync::Mutex<std::collections::HashMap<u32, usize>>>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy)]
enum Refused {
    /// Its uid holds its share already.
    Share { held: usize },
    /// Every slot is taken (for a non-admin: every slot but the reserve).
    Full,
}

/// One admitted connection: its global slot and its place in its uid's share.
struct Admitted {
    _slot: tokio::sync::OwnedSemaphorePermit,
    uid: Option<u32>,
    open: Arc<std::sync::Mutex<std::collections::HashMap<u32, usize>>>,
}

impl Shares {
    fn new(max: usize) -> Shares {
        Shares { per_uid: (max / 4).max(1), reserve: max / 8, open: Default::default() }
    }

    fn admit(&self, slots: &Arc<Semaphore>, uid: u32, admin: bool) -> Result<Admitted, Refused> {
        if admin {
            let slot = slots.clone().try_acquire_owned().map_err(|_| Refused::Full)?;
            return Ok(Admitted { _slot: slot, uid: None, open: self.open.clone() });
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let mine = open.entry(uid).or_default();
        if *mine >= self.per_uid {
            return Err(Refused::Share { held: *mine });
        }
        if slots.available_permits() <= self.reserve {
            return Err(Refused::Full);
        }
        let slot = slots.clone().try_acquire_owned().map_err(|_| Refused::Full)?;
        *mine += 1;
        Ok(Admitted { _slot: slot, uid: Some(uid), open: self.open.clone() })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(uid) = self.uid {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = open.get_mut(&uid) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&uid);
                }
            }
        }
    }
}

async fn serve_connection(stream: UnixStream, caller: Caller, router: Router, mut closing: watch::Receiver<bool>) {
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(caller.clone());
        let mut router = router.clone();
        async move { tower_service::Service::call(&mut router, req).await }
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(super::edge::JsonErrors::new(stream)), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = async { let _ = closing.wait_for(|c| *c).await; } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!("connection: {e}");
    }
}

/// Remove the socket file if it is (still) a socket.
pub fn unlink(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(socket = %path.display(), "cannot remove the socket: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::{UnixListener, UnixStream};

    const CHILD_SOCKET: &str = "CELLKEEP_TEST_PEER_SOCKET";

    /// Not a test on its own: the peer process of [`a_peer_gone_before_accept_gets_nothing`]
    /// (the test binary re-executed): take supplementary group 4242, connect, exit.
    #[test]
    fn peer_child() {
        let Some(path) = std::env::var_os(CHILD_SOCKET) else { return };
        nix::unistd::setgroups(&[nix::unistd::Gid::from_raw(4242)]).unwrap();
        let _stream = UnixStream::connect(path).unwrap();
    }

    /// The pid-reuse race, made deterministic: the peer connects and is reaped before the
    /// daemon looks at it (its pid is free for reuse). Its groups still come from the socket
    /// (exactly the ones it connected with, not those of whatever holds the pid now or an
    /// empty list), and although the `/proc` read answers "a host process" — what a recycled
    /// pid of a host process would answer — the peer counts as inside a cell: refused.
    #[test]
    fn a_peer_gone_before_accept_gets_nothing() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: setgroups in the peer needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "api::listen::tests::peer_child", "--test-threads=1"])
            .env(CHILD_SOCKET, &path)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        // The child is reaped (status() waited): its pid names no process now, or another one.
        let (stream, _) = listener.accept().unwrap();
        let (caller, pidfd) = super::caller_of(&stream).unwrap();
        let pid = caller.pid.unwrap();
        assert_eq!(caller.groups, vec![4242], "groups from SO_PEERGROUPS, as at connect");
        let mut read = None;
        let in_cell = super::peer_in_cell(caller.pid, pidfd.as_ref(), |p| {
            read = Some(p);
            Some(false)
        });
        assert!(in_cell, "a peer reaped before the check must be refused (pid {pid})");
        // And through the fallback: pidfd_open(pid) of a reaped pid fails or pins another
        // process; either way the peer is refused unless that process is alive — the
        // documented residual window of the fallback — so only check the no-pidfd case.
        assert!(super::peer_in_cell(caller.pid, None, |_| Some(false)));
    }

    /// The check is not "refuse everything": a live peer that the `/proc` read places on the
    /// host is a host process; one it places in a cell, or cannot place, is refused.
    #[test]
    fn a_live_peer_is_placed_by_its_cgroup() {
        let (a, _b) = UnixStream::pair().unwrap();
        let (caller, pidfd) = super::caller_of(&a).unwrap();
        assert_eq!(caller.pid, Some(std::process::id() as i32));
        assert!(pidfd.is_some(), "SO_PEERPIDFD or pidfd_open pins a live peer");
        assert!(!super::peer_in_cell(caller.pid, pidfd.as_ref(), |_| Some(false)));
        assert!(super::peer_in_cell(caller.pid, pidfd.as_ref(), |_| Some(true)));
        assert!(super::peer_in_cell(caller.pid, pidfd.as_ref(), |_| None));
        assert!(super::peer_in_cell(None, pidfd.as_ref(), |_| Some(false)));
        let own: Vec<u32> = nix::unistd::getgroups().unwrap().iter().map(|g| g.as_raw()).collect();
        let mut got = caller.groups.clone();
        got.sort_unstable();
        let mut want = own;
        want.sort_unstable();
        want.dedup();
        got.dedup();
        assert_eq!(got, want, "SO_PEERGROUPS gives our own groups for our own socket");
    }
}
