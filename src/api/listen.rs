//! The Unix socket: bind it safely (or adopt the one systemd passed), accept with the peer's
//! credentials, serve each connection with hyper, bound the number of connections, and drain
//! them at shutdown.
//!
//! Kernel contract: `SO_PEERCRED` (via `UnixStream::peer_cred`) gives the uid, gid and pid of
//! the process that called `connect(2)`, fixed at connect time — not forgeable by the peer.
//! Supplementary groups are read from `/proc/<pid>/status` at accept (empty when unreadable,
//! e.g. a peer in another pid namespace reports pid 0).

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

/// The peer of an accepted connection.
fn caller_of(stream: &UnixStream) -> std::io::Result<Caller> {
    let cred = stream.peer_cred()?;
    let pid = cred.pid().filter(|p| *p > 0);
    let groups = pid.map(supplementary_groups).unwrap_or_default();
    Ok(Caller { uid: cred.uid(), gid: cred.gid(), pid, groups, in_cell: false })
}

fn supplementary_groups(pid: i32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return Vec::new() };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default()
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(max_connections, "connection limit reached; refusing a connection");
            continue;
        };
        let caller = match caller_of(&stream) {
            Ok(mut c) => {
                // A process inside a cell must never drive the supervisor, whatever the socket's
                // permissions let its uid do (Landlock has no right for connect(2) to a socket).
                c.in_cell = pool.caller_is_cell(&c);
                if c.in_cell {
                    tracing::warn!(pid = c.pid, uid = c.uid, "connection from inside a cell; every request will be refused");
                }
                c
            }
            Err(e) => {
                tracing::warn!("cannot read the peer's credentials ({e}); connection refused");
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
