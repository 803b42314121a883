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
//! One inotify instance serves every cell ([`WatchHub`]): `fs.inotify.max_user_instances`
//! (often 128) bounds instances per user, so an instance per cell would stop watching past it.
//! The hub's single reader task wakes the cell whose watch descriptor fired. v1 OOM eventfds
//! stay one per cell (they are not limited that way) and all wait in tokio's one epoll.
//!
//! A wake-up says "something changed": the caller re-reads the counters ([`super::Events`]).

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

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

/// Watch descriptor → (subscriber id, what to wake).
type Subscribers = HashMap<WatchDescriptor, Vec<(u64, Arc<Notify>)>>;

struct HubInner {
    inotify: AsyncFd<crate::sandbox::sys::InotifyFd>,
    subs: Mutex<Subscribers>,
    next_id: AtomicU64,
}

impl HubInner {
    fn subs(&self) -> std::sync::MutexGuard<'_, Subscribers> {
        self.subs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The daemon's one inotify instance for every cell's limit files. Cheap to clone. Needs a
/// tokio runtime (its reader task runs there for the runtime's life).
#[derive(Clone)]
pub struct WatchHub {
    inner: Arc<HubInner>,
}

impl WatchHub {
    pub fn new() -> Result<WatchHub, CgroupError> {
        let here = PathBuf::from("inotify");
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(|e| watch_err(&here, e))?;
        let inotify = crate::sandbox::sys::async_inotify(inotify).map_err(|e| watch_err(&here, e))?;
        let inner = Arc::new(HubInner { inotify, subs: Mutex::new(HashMap::new()), next_id: AtomicU64::new(0) });
        tokio::spawn(read_events(inner.clone()));
        Ok(WatchHub { inner })
    }

    /// Watch `paths` (modified) for one subscriber.
    fn watch(&self, paths: &[&PathBuf]) -> Result<HubWatch, CgroupError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        let mut watch = HubWatch { hub: self.inner.clone(), id, wds: Vec::new(), notify: notify.clone() };
        for path in paths {
            let wd = self
                .inner
                .inotify
                .get_ref()
                .0
                .add_watch(path.as_path(), AddWatchFlags::IN_MODIFY)
                .map_err(|e| watch_err(path, e))?;
            self.inner.subs().entry(wd).or_default().push((id, notify.clone()));
            watch.wds.push(wd);
        }
        Ok(watch)
    }

    /// Files currently watched (for tests and health).
    pub fn watched(&self) -> usize {
        self.inner.subs().len()
    }
}

/// Read events, wake the subscribers of each descriptor.
async fn read_events(hub: Arc<HubInner>) {
    loop {
        let Ok(mut guard) = hub.inotify.readable().await else { return };
        match guard.get_inner().0.read_events() {
            Ok(events) => {
                let mut subs = hub.subs();
                for ev in events {
                    if let Some(list) = subs.get(&ev.wd) {
                        list.iter().for_each(|(_, n)| n.notify_one());
                    }
                    // The file is gone (its cgroup removed): the kernel dropped the watch.
                    if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                        subs.remove(&ev.wd);
                    }
                }
            }
            Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
            Err(e) => {
                tracing::error!("limit event watch: reading inotify: {e}");
                return;
            }
        }
    }
}

/// One cell's share of the hub.
struct HubWatch {
    hub: Arc<HubInner>,
    id: u64,
    wds: Vec<WatchDescriptor>,
    notify: Arc<Notify>,
}

impl Drop for HubWatch {
    fn drop(&mut self) {
        let mut subs = self.hub.subs();
        for wd in &self.wds {
            let Some(list) = subs.get_mut(wd) else { continue };
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                subs.remove(wd);
                // Already gone with its cgroup is fine.
                let _ = self.hub.inotify.get_ref().0.rm_watch(*wd);
            }
        }
    }
}

/// An armed watch on one cell. Needs a tokio runtime (the fds are registered with its reactor).
pub struct EventWatch {
    modified: Option<HubWatch>,
    oom: Option<AsyncFd<OwnedFd>>,
}

fn watch_err(path: &std::path::Path, e: impl Into<std::io::Error>) -> CgroupError {
    CgroupError::Watch { path: path.to_owned(), source: e.into() }
}

impl EventWatch {
    /// Arm the watch: the modified files on `hub`'s inotify instance, the v1 OOM eventfd.
    pub fn new(src: &EventSources, hub: &WatchHub) -> Result<EventWatch, CgroupError> {
        let existing: Vec<&PathBuf> = src.modified.iter().filter(|p| p.exists()).collect();
        let modified = if existing.is_empty() { None } else { Some(hub.watch(&existing)?) };
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
        Ok(EventWatch { modified, oom })
    }

    /// Wait until the kernel reports a change (pending forever if there is nothing to watch).
    pub async fn changed(&mut self) -> std::io::Result<()> {
        let modified = async {
            match &self.modified {
                Some(w) => w.notify.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = modified => Ok(()),
            r = wait_readable(self.oom.as_ref()) => r,
        }
    }
}

/// Wait until `fd` is readable and drain it (the content does not matter: the eventfd counter
/// only says "re-read the counters").
async fn wait_readable(fd: Option<&AsyncFd<OwnedFd>>) -> std::io::Result<()> {
    let Some(fd) = fd else { return std::future::pending().await };
    let mut buf = [0u8; 8];
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|f| nix::unistd::read(f.get_ref(), &mut buf).map_err(std::io::Error::from)) {
            Ok(r) => return r.map(drop),
            Err(_would_block) => continue,
        }
    }
}
