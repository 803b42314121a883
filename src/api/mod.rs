//! The daemon's API: HTTP/1.1 + JSON over a local Unix socket, under `/v1` — the convention of
//! Firecracker, Docker and Podman, so `curl --unix-socket` and Python's `httpx` just work.
//!
//! - [`wire`]: the wire contract — every request, answer and NDJSON output line, and the
//!   [`wire::ErrorCode`] enum with each code's HTTP status. The only types the API encodes or
//!   decodes; the pool's, sandbox's, cgroup's and session's types convert into them. Shared
//!   with the typed client ([`crate::client`]) and the CLI.
//! - [`routes`]: the axum router; every handler decodes, calls the pool with the caller and
//!   converts the answer into its wire type. Each handler carries its OpenAPI operation
//!   (utoipa), and routes are mounted only from those annotations (`utoipa_axum::routes!`):
//!   the document served at `/v1/openapi.json` ([`routes::openapi`]) is generated with the
//!   router, from the same list, never written by hand.
//! - [`error`]: a failed request as an answer: every pool error mapped to one
//!   [`wire::ErrorCode`] (an exhaustive match), the JSON body [`wire::ErrorBody`].
//! - [`edge`]: the same JSON body for the errors hyper answers by itself (400, 414, 431).
//! - [`listen`]: bind the socket (mode, group, stale-socket handling), accept with
//!   `SO_PEERCRED`, serve connections with hyper, bound and drain them.
//!
//! [`run_daemon`] is the whole daemon: pool start (with restart recovery), socket, signals
//! (SIGTERM/SIGINT: shutdown; SIGHUP: policy reload), and the shutdown sequence — stop
//! accepting, end every cell, drain connections, remove the socket (unless systemd passed it:
//! socket activation, see [`crate::systemd`]).

pub mod edge;
pub mod error;
pub mod listen;
pub mod routes;
pub mod wire;

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::pool::{Pool, PoolError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("socket {path}: {source}")]
    Socket { path: PathBuf, source: std::io::Error },
    #[error("another daemon is listening on {path}")]
    AlreadyRunning { path: PathBuf },
    #[error("{path} exists and is not a socket; not replacing it")]
    NotASocket { path: PathBuf },
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
}

/// How long connections get to finish after every cell has ended.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Run the daemon until SIGTERM/SIGINT or `POST /v1/shutdown`; `Ok` after a clean shutdown.
///
/// `activated` is the listening socket systemd passed (socket activation): it is served as is
/// (its mode and group are the socket unit's) and left in place at shutdown. Without it the
/// daemon binds `config.socket` itself and removes it at shutdown. The service manager hears
/// `READY=1` once the policies are loaded and the socket listens, `STOPPING=1` when shutdown
/// begins, and `RELOADING=1` … `READY=1` around a SIGHUP reload.
pub async fn run_daemon(config: Config, activated: Option<std::os::unix::net::UnixListener>) -> Result<(), ApiError> {
    // The socket first: a second daemon started by mistake stops at "another daemon is
    // listening" before its pool starts (which would take the live daemon's cells for
    // orphans; the cgroup root's lock stops one on another socket).
    let (listener, owned) = match activated {
        Some(l) => listen::adopt(l)?,
        None => (listen::bind(&config)?, Some(config.socket.clone())),
    };
    let pool = match Pool::start(config.clone()).await {
        Ok(p) => p,
        Err(e) => {
            if let Some(path) = &owned {
                listen::unlink(path);
            }
            return Err(e.into());
        }
    };
    let stop = CancellationToken::new();
    let signals = match watch_signals(pool.clone(), stop.clone()) {
        Ok(t) => t,
        Err(e) => {
            pool.shutdown().await;
            if let Some(path) = &owned {
                listen::unlink(path);
            }
            return Err(e);
        }
    };
    let router = routes::router(routes::AppState { pool: pool.clone(), shutdown: stop.clone() });
    let shown = listen::display_addr(&listener);
    tracing::info!(socket = %shown, activated = owned.is_none(), "listening");
    crate::systemd::notify_ready(&ready_status(&shown, &pool));
    let connections = listen::serve(listener, router, pool.clone(), config.max_connections, stop).await;
    tracing::info!("shutting down: no new connections");
    crate::systemd::notify_stopping();
    // shutdown_timeout_secs bounds the whole shutdown: the cells' end, then what is left of
    // it (at most DRAIN_TIMEOUT) for connections to finish.
    let began = std::time::Instant::now();
    let ended = pool.shutdown().await;
    let left = config.shutdown_timeout.saturating_sub(began.elapsed());
    connections.drain(left.min(DRAIN_TIMEOUT)).await;
    // A socket systemd passed belongs to the socket unit: it stays for the next activation.
    if let Some(path) = &owned {
        listen::unlink(path);
    }
    signals.abort();
    tracing::info!(cells_ended = ended.count, "shutdown complete");
    Ok(())
}

/// SIGTERM/SIGINT cancel `stop`; SIGHUP reloads the policies (a broken set is rejected with
/// its errors logged and the old set kept).
fn watch_signals(pool: Pool, stop: CancellationToken) -> Result<tokio::task::JoinHandle<()>, ApiError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(ApiError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ApiError::Signal)?;
    let mut hup = signal(SignalKind::hangup()).map_err(ApiError::Signal)?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM"); stop.cancel(); }
                _ = int.recv() => { tracing::info!("SIGINT"); stop.cancel(); }
                _ = hup.recv() => {
                    let _ = reload_policies(&pool, "SIGHUP").await;
                }
            }
        }
    }))
}

/// Reload the policies (SIGHUP or `POST /v1/reload`), telling the service manager: `RELOADING=1`
/// (with `MONOTONIC_USEC`, as `Type=notify-reload` wants), then `READY=1` with a `STATUS=` that
/// gives the verdict — either way the daemon keeps serving a valid set. A rejected reload is
/// logged by the pool (each file once) and returned as the error the API answers with. An
/// applied one has the served policies' paths checked again (`Pool::path_notes`).
/// `trigger` names what asked (`SIGHUP`, an API caller) at the start of the verdict's log line.
pub async fn reload_policies(pool: &Pool, trigger: &str) -> Result<crate::pool::Reloaded, PoolError> {
    crate::systemd::notify_reloading();
    let p = pool.clone();
    let result = tokio::task::spawn_blocking(move || p.reload())
        .await
        .unwrap_or_else(|e| Err(PoolError::Internal(format!("reload task: {e}"))));
    match &result {
        Ok(r) => {
            tracing::info!(providers = r.providers.len(), "{trigger}: policies reloaded");
            let mut status = format!("policies reloaded: {} providers", r.providers.len());
            if !r.notes.is_empty() {
                status.push_str(&format!("; {}", read_only_status(r.notes.len())));
            }
            crate::systemd::notify_ready(&status);
        }
        Err(e) => {
            // Logged once: the error names each file with its first problem; the rest follow.
            tracing::error!("{trigger}: {e}");
            let rejected = pool.rejected_policies();
            for r in rejected.iter() {
                for p in r.problems.iter().skip(1) {
                    tracing::error!("policy {}: {p}", r.name);
                }
            }
            let names: Vec<&str> = rejected.iter().map(|r| r.name.as_str()).collect();
            crate::systemd::notify_ready(&format!(
                "reload rejected ({} policies cannot load: {}); serving the previous set",
                names.len(),
                names.join(", ")
            ));
        }
    }
    result
}

/// The `STATUS=` line sent with `READY=1` at start: where it listens, what it serves, the
/// policies it left out and how many policy paths are read-only (so `systemctl status` shows
/// them).
fn ready_status(shown: &str, pool: &Pool) -> String {
    let read_only = pool.path_notes().len();
    let mut status = format!("listening on {shown}");
    let rejected = pool.rejected_policies();
    if !rejected.is_empty() {
        let names: Vec<&str> = rejected.iter().map(|r| r.name.as_str()).collect();
        status.push_str(&format!(
            "; {} policies rejected, not served: {} (see journalctl -u cellkeep or cellkeep health)",
            names.len(),
            names.join(", ")
        ));
    }
    if read_only > 0 {
        status.push_str(&format!("; {}", read_only_status(read_only)));
    }
    status
}

fn read_only_status(n: usize) -> String {
    format!("{n} policy write path(s) on a read-only mount (see cellkeep health)")
}
