//! Limit-event notification: the kernel wakes the pool when a cell hits its memory or pids
//! limit, so OOM kills and fork failures are noticed when they happen, not at the next read.
//! A watch holds one or two file descriptors per cell and costs nothing while nothing happens.
//!
//! Kernel contracts relied on:
//! - v2 `memory.events`, `pids.events` (and v1 `pids.events`) are kernfs files the kernel marks
//!   modified whenever a counter in them changes (`cgroup_file_notify` → `kernfs_notify`), which
//!   raises inotify `IN_MODIFY` on them.
//! - v1 memory files do not notify. Instead (cgroup-v1/memory.rst, "OOM Control"): open
//!   `memory.oom_control`, create an eventfd, write `"<eventfd> <oom_control fd>"` to the same
//!   cgroup's `cgroup.event_control`; the kernel then adds 1 to the eventfd's counter on every
//!   OOM in the cgroup. The registration holds no reference to `memory.oom_control` (it may be
//!   closed at once) and is dropped by the kernel when the eventfd is closed or the cgroup removed.
//!
//! A wake-up says "something changed": the caller re-reads the counters ([`super::Events`]).

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;

use super::CgroupError;

/// v1: where to register an OOM eventfd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomControl {
    pub oom_control: PathBuf,
    pub event_control: PathBuf,
}

/// The kernel files that signal a cell's limit events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSources {
    /// Files watched with inotify `IN_MODIFY` (those that do not exist are skipped: e.g. a v1
    /// kernel without `pids.events`).
    pub modified: Vec<PathBuf>,
    /// v1 memory OOM notification.
    pub oom_eventfd: Option<OomControl>,
}

/// An armed watch on one cell. Needs a tokio runtime (the fds are registered with its reactor).
pub struct EventWatch {
    inotify: Option<AsyncFd<OwnedFd>>,
    oom: Option<AsyncFd<OwnedFd>>,
}

fn watch_err(path: &std::path::Path, e: impl Into<std::io::Error>) -> CgroupError {
    CgroupError::Watch { path: path.to_owned(), source: e.into() }
}

impl EventWatch {
    pub fn new(src: &EventSources) -> Result<EventWatch, CgroupError> {
        let mut inotify = None;
        let existing: Vec<&PathBuf> = src.modified.iter().filter(|p| p.exists()).collect();
        if let Some(first) = existing.first() {
            let fd = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(|e| watch_err(first, e))?;
            for path in &existing {
                fd.add_watch(path.as_path(), AddWatchFlags::IN_MODIFY).map_err(|e| watch_err(path, e))?;
            }
            inotify = Some(crate::sandbox::sys::async_fd(fd.into()).map_err(|e| watch_err(first, e))?);
        }
        let mut oom = None;
        if let Some(c) = &src.oom_eventfd {
            let efd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .map_err(|e| watch_err(&c.event_control, e))?;
            let control = std::fs::File::open(&c.oom_control).map_err(|e| watch_err(&c.oom_control, e))?;
            let line = format!("{} {}", efd.as_raw_fd(), control.as_raw_fd());
            std::fs::OpenOptions::new()
                .write(true)
                .open(&c.event_control)
                .and_then(|mut f| f.write_all(line.as_bytes()))
                .map_err(|source| CgroupError::Write { path: c.event_control.clone(), value: line, source })?;
            oom = Some(crate::sandbox::sys::async_fd(efd.into()).map_err(|e| watch_err(&c.event_control, e))?);
        }
        Ok(EventWatch { inotify, oom })
    }

    /// Wait until the kernel reports a change (pending forever if there is nothing to watch).
    pub async fn changed(&mut self) -> std::io::Result<()> {
        tokio::select! {
            r = wait_readable(self.inotify.as_ref()) => r,
            r = wait_readable(self.oom.as_ref()) => r,
        }
    }
}

/// Wait until `fd` is readable and drain it (the content does not matter: inotify events or
/// the eventfd counter only say "re-read the counters").
async fn wait_readable(fd: Option<&AsyncFd<OwnedFd>>) -> std::io::Result<()> {
    let Some(fd) = fd else { return std::future::pending().await };
    let mut buf = [0u8; 4096];
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|f| nix::unistd::read(f.get_ref(), &mut buf).map_err(std::io::Error::from)) {
            Ok(r) => return r.map(drop),
            Err(_would_block) => continue,
        }
    }
}
