//! Sockets in a cell's network namespace, opened by the launcher (host side).
//!
//! The egress proxy must listen on `127.0.0.1` *inside* the cell, but be served by the daemon.
//! A socket belongs to the network namespace of the thread that created it, for its whole
//! life, so a short-lived thread enters the cell's namespace (`setns` on `/proc/PID/ns/net`),
//! binds and listens, and exits: the namespace switch dies with the thread and never touches
//! the daemon's other threads (a pooled thread would carry it into unrelated work). The
//! launcher runs as root in the parent user namespace, so it holds CAP_SYS_ADMIN over the
//! cell's namespaces, which `setns` needs.

use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;

use crate::egress::{CellEgress, EgressService};
use crate::policy::egress::Egress;

use super::proto::Stage;
use super::SandboxError;

/// What a `proxy` cell's egress needs once its pid 1 has `lo` up.
#[derive(Debug)]
pub struct EgressPlan {
    pub service: EgressService,
    pub egress: Egress,
    /// The proxy's port on the cell's 127.0.0.1.
    pub port: u16,
    /// The uid whose request the cell serves (`None`: built ahead), whose share of the
    /// daemon's name lookups its proxy spends.
    pub caller: Option<u32>,
}

/// A failure to set up the cell's proxy, as a setup failure at stage `network`.
pub fn setup_error(cell: &str, e: std::io::Error) -> SandboxError {
    SandboxError::Setup {
        cell: cell.to_owned(),
        stage: Stage::Network,
        errno: e.raw_os_error().unwrap_or(0),
        detail: format!("opening the egress proxy's listener in the cell's network namespace: {e}"),
    }
}

/// Open the proxy's listener in the network namespace of the cell whose helper is
/// `helper_pid` (its only child is the cell's pid 1, waiting with `lo` up) and serve it.
pub async fn start_egress(
    cell: &str,
    provider: &str,
    helper_pid: Option<u32>,
    plan: Option<EgressPlan>,
) -> Result<Arc<CellEgress>, SandboxError> {
    let fail = |e: std::io::Error| setup_error(cell, e);
    let plan = plan.ok_or_else(|| fail(std::io::Error::other("pid 1 asked for a proxy the plan does not have")))?;
    // helper → pid 1: before the payload exists, the helper has exactly one child.
    let pid1 = helper_pid.map(super::audit::children).and_then(|c| c.first().copied());
    let pid1 = pid1.ok_or_else(|| fail(std::io::Error::other("the cell's pid 1 is gone")))?;
    let port = plan.port;
    let listener = tokio::task::spawn_blocking(move || listen_in(pid1, port))
        .await
        .map_err(|e| fail(std::io::Error::other(e.to_string())))?
        .and_then(|l| {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)
        })
        .map_err(fail)?;
    Ok(plan.service.serve(listener, cell, provider, plan.egress, plan.caller))
}

/// Connections a cell may have waiting to be accepted by its proxy. A connection is charged
/// to a memory cgroup only once accepted (to the daemon's, as the accepting side), so what a
/// waiting one holds — the request bytes the cell already sent, up to the default receive
/// buffer — is charged to no cell: std's backlog of 128 let a cell park ~16 MiB that way. The
/// proxy serves 32 connections of a cell at once; as many more may wait.
const PROXY_BACKLOG: i32 = 32;

/// Listen on `127.0.0.1:port` in the network namespace of `pid` (the cell's pid 1, whose `lo`
/// is up), with a backlog of `PROXY_BACKLOG`. Blocking: call it from the blocking pool.
pub fn listen_in(pid: u32, port: u16) -> std::io::Result<TcpListener> {
    use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn};
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let worker = std::thread::Builder::new().name("ck-netns".into()).spawn(move || {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
        // The socket belongs to the namespace it is created in: this thread's, now the cell's.
        let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        bind(fd.as_raw_fd(), &SockaddrIn::from(std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)))?;
        listen(&fd, Backlog::new(PROXY_BACKLOG)?)?;
        Ok(TcpListener::from(fd))
    })?;
    worker.join().map_err(|_| std::io::Error::other("the thread that opens the listener panicked"))?
}
