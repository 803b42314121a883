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
use std::os::fd::AsFd;

/// Listen on `127.0.0.1:port` in the network namespace of `pid` (the cell's pid 1, whose `lo`
/// is up). Blocking: call it from the blocking pool.
pub fn listen_in(pid: u32, port: u16) -> std::io::Result<TcpListener> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let worker = std::thread::Builder::new().name("ck-netns".into()).spawn(move || {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
        TcpListener::bind((Ipv4Addr::LOCALHOST, port))
    })?;
    worker.join().map_err(|_| std::io::Error::other("the thread that opens the listener panicked"))?
}
