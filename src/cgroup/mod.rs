//! Cell cgroups: cellkeep's own cgroup root and one cgroup per cell — create, limit, attach, read
//! usage and events, kill everything, remove. A thin cgroupfs layer (no cgroup crate: each
//! backend writes the kernel's files directly):
//! [`detect_layout`] picks the backend, `v1` (hybrid and legacy hosts: one directory per
//! hierarchy — memory, cpu, cpuacct, pids, freezer) or `v2` (unified: one directory). Both
//! backends name, in each function, the kernel file they read or write. Everything is
//! synchronous `std::fs`; the daemon calls it from `spawn_blocking`.
//!
//! Where things live: beneath this process's own cgroup in each hierarchy, a root of our own
//! (`<own>/<name>`, e.g. `.../cellkeep`) and under it one directory per cell (`<root>/<cell-id>`).
//! Nothing outside that root is created, removed or written, except enabling controllers in our
//! own cgroup's `cgroup.subtree_control` on v2 (see [`CgroupRoot::open`]).

mod fs;
pub mod parse;
mod v1;
mod v2;
pub mod watch;

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Where cgroupfs is mounted on every supported host.
pub const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
/// How long [`CellCgroup::kill_all`] waits for a cell to become empty.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the cgroup layer; every variant names the file, value or controller involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("writing {value:?} to {path}: {source}")]
    Write { path: PathBuf, value: String, source: std::io::Error },
    #[error("creating cgroup {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("removing cgroup {path}: {source}")]
    Remove { path: PathBuf, source: std::io::Error },
    #[error("watching {path} for limit events: {source}")]
    Watch { path: PathBuf, source: std::io::Error },
    #[error("cgroup {path} is still busy")]
    Busy { path: PathBuf },
    #[error("cgroup root {path} is in use by another cellkeep daemon (give this one another --cgroup-root)")]
    InUse { path: PathBuf },
    #[error("cannot parse {path} ({reason}): {content:?}")]
    Parse { path: PathBuf, content: String, reason: &'static str },
    #[error("statfs {path}: {source}")]
    Statfs { path: PathBuf, source: Errno },
    #[error(
        "cgroup {path} also holds processes that are not cellkeep's (pids {pids:?}: a login session's shell, sudo, …), \
         so it cannot hand cgroup controllers to cells (the kernel's no-internal-process rule) and is not \
         cellkeep's to rearrange: start cellkeep in a cgroup of its own, e.g. \
         `systemd-run --scope -p Delegate=yes cellkeep …` (cellkeep does this by itself where systemd is PID 1), \
         or as a systemd service (scripts/install.sh)"
    )]
    Shared { path: PathBuf, pids: Vec<u32> },
    #[error("cgroup controller {controller:?} is not available to this process")]
    NoController { controller: String },
    #[error("unsupported cgroup setup: {reason}")]
    Unsupported { reason: String },
    #[error("invalid cell id {id:?}: expected 1-64 characters of [A-Za-z0-9_-]")]
    InvalidId { id: String },
    #[error("invalid limit {what} = {value}: {reason}")]
    InvalidLimit { what: &'static str, value: String, reason: &'static str },
    #[error("no cell cgroup {id:?} under {root}")]
    NotFound { id: String, root: PathBuf },
    #[error("sending SIGKILL to pid {pid}: {source}")]
    Kill { pid: u32, source: Errno },
    #[error("cell cgroup {path} still has processes {pids:?} after {timeout:?}")]
    KillTimeout { path: PathBuf, pids: Vec<u32>, timeout: Duration },
}

/// How cgroups are mounted on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// `/sys/fs/cgroup` is cgroup2: the v2 backend.
    Unified,
    /// v1 controller hierarchies plus a (controller-less) cgroup2 mount: the v1 backend.
    Hybrid,
    /// v1 hierarchies only: the v1 backend.
    Legacy,
}

/// Tells the layouts apart: `statfs(2)` magic of `/sys/fs/cgroup`, then `/proc/self/mountinfo`.
pub fn detect_layout() -> Result<Layout, CgroupError> {
    // statfs(2) on /sys/fs/cgroup: CGROUP2_SUPER_MAGIC means a pure unified hierarchy.
    let stat = nix::sys::statfs::statfs(CGROUP_MOUNT)
        .map_err(|source| CgroupError::Statfs { path: PathBuf::from(CGROUP_MOUNT), source })?;
    if stat.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        return Ok(Layout::Unified);
    }
    let mounts = read_mountinfo()?;
    let under_root = |m: &&parse::Mount| m.mount_point.starts_with(CGROUP_MOUNT);
    let has_v1 = mounts.iter().filter(under_root).any(|m| m.fs_type == "cgroup");
    let has_v2 = mounts.iter().filter(under_root).any(|m| m.fs_type == "cgroup2");
    match (has_v1, has_v2) {
        (true, true) => Ok(Layout::Hybrid),
        (true, false) => Ok(Layout::Legacy),
        (false, _) => Err(CgroupError::Unsupported {
            reason: format!("{CGROUP_MOUNT} is neither cgroup2 nor holds cgroup v1 mounts"),
        }),
    }
}

/// On a unified (v2) host, this process's cgroup and the processes in it that are not
/// cellkeep's (`v2::strangers`: a login session's shell and `sudo`); `None` on v1 layouts
/// (cellkeep's roots there need no delegation) and when it cannot tell (then
/// [`CgroupRoot::open`] reports what is wrong).
pub fn shared_own_cgroup() -> Option<(PathBuf, Vec<u32>)> {
    match detect_layout() {
        Ok(Layout::Unified) => v2::strangers().ok().filter(|(_, pids)| !pids.is_empty()),
        _ => None,
    }
}

/// Reads and parses `/proc/self/mountinfo`.
fn read_mountinfo() -> Result<Vec<parse::Mount>, CgroupError> {
    Ok(parse::mountinfo(&fs::read(Path::new("/proc/self/mountinfo"))?))
}

/// Reads and parses `/proc/self/cgroup`.
fn read_proc_cgroup() -> Result<Vec<parse::ProcCgroup>, CgroupError> {
    Ok(parse::proc_cgroup(&fs::read(Path::new("/proc/self/cgroup"))?))
}

/// Resource limits of one cell. `None` leaves the kernel default (unlimited).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CellLimits {
    /// Hard memory limit in bytes (v2 `memory.max`, v1 `memory.limit_in_bytes`).
    pub memory_max: Option<u64>,
    /// Reclaim threshold in bytes (v2 `memory.high`, v1 `memory.soft_limit_in_bytes`).
    pub memory_high: Option<u64>,
    /// Swap allowed ON TOP of `memory_max` (v2 `memory.swap.max`; v1 memsw = max + swap).
    pub memory_swap: Option<u64>,
    /// Fraction of one CPU per 100 ms period (0.5 = half a CPU, 2.0 = two CPUs).
    pub cpu: Option<f64>,
    /// Maximum number of tasks (`pids.max`).
    pub pids: Option<u64>,
}

/// CFS period used for every cpu limit, in microseconds (100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The largest CFS quota a cpu limit may ask for, in microseconds per [`CPU_PERIOD_US`]
/// (about 42949 CPUs): past it [`CellLimits`] refuses the limit as too large.
pub const MAX_CPU_QUOTA_US: u64 = u32::MAX as u64;

impl CellLimits {
    /// The cpu fraction as a CFS quota per [`CPU_PERIOD_US`]; errors on non-positive or
    /// non-finite fractions and on quotas below the kernel's 1 ms minimum.
    fn cpu_quota_us(&self) -> Result<Option<u64>, CgroupError> {
        let Some(cpu) = self.cpu else { return Ok(None) };
        let invalid = |reason| CgroupError::InvalidLimit { what: "cpu", value: cpu.to_string(), reason };
        if !cpu.is_finite() || cpu <= 0.0 {
            return Err(invalid("must be a positive number of CPUs"));
        }
        let quota = (cpu * CPU_PERIOD_US as f64).round();
        if quota < 1000.0 {
            return Err(invalid("below the kernel minimum of 0.01 CPU (1 ms per 100 ms)"));
        }
        if quota > MAX_CPU_QUOTA_US as f64 {
            return Err(invalid("too large"));
        }
        Ok(Some(quota as u64))
    }
}

/// Resource usage of a cell.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub memory_current: u64,
    /// v2 `memory.peak` (5.19+) or v1 `memory.max_usage_in_bytes`; `None` if the kernel lacks it.
    pub memory_peak: Option<u64>,
    /// v2 `cpu.stat` `usage_usec`; v1 `cpuacct.usage` (ns) / 1000.
    pub cpu_usage_usec: u64,
    pub pids_current: u64,
    /// v2 `cpu.stat` `throttled_usec`; v1 `cpu.stat` `throttled_time` (ns) / 1000.
    pub cpu_throttled_usec: Option<u64>,
}

/// Limit events counted by the kernel for a cell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Events {
    /// v2 `memory.events` `oom_kill`; v1 `memory.oom_control` `oom_kill`.
    pub oom_kills: u64,
    /// v2 `memory.events` `max`; v1 `memory.failcnt` + `memory.memsw.failcnt`, at least `oom_kills`.
    pub memory_max_hits: u64,
    /// `pids.events` `max` (both backends).
    pub pids_max_hits: u64,
}

impl Events {
    /// The events counted since `earlier` (a reading of the same cgroup).
    pub fn since(&self, earlier: &Events) -> Events {
        Events {
            oom_kills: self.oom_kills.saturating_sub(earlier.oom_kills),
            memory_max_hits: self.memory_max_hits.saturating_sub(earlier.memory_max_hits),
            pids_max_hits: self.pids_max_hits.saturating_sub(earlier.pids_max_hits),
        }
    }
}

/// Checks that a cell id is safe as a directory name: `[A-Za-z0-9_-]{1,64}`.
pub fn validate_id(id: &str) -> Result<(), CgroupError> {
    let ok = (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CgroupError::InvalidId { id: id.to_string() })
    }
}

/// cellkeep's own cgroup root (one directory per hierarchy on v1).
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    layout: Layout,
    backend: RootBackend,
}

#[derive(Debug, Clone)]
enum RootBackend {
    V1(v1::Root),
    V2(v2::Root),
}

/// A daemon's hold on its cgroup root ([`CgroupRoot::lock`]); released on drop.
#[derive(Debug)]
pub struct RootLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl CgroupRoot {
    /// Finds or creates cellkeep's root named `name` beneath this process's own cgroup in every
    /// needed hierarchy. v2: enables `+memory +cpu +pids` in the own cgroup's
    /// `cgroup.subtree_control` (moving this process into `<own>/supervisor` on `EBUSY`, the
    /// no-internal-process rule) and in the root's, never above the own cgroup.
    /// Returns [`CgroupError::NoController`] if memory, cpu or pids (v1: also cpuacct and
    /// freezer) are unavailable.
    pub fn open(name: &str) -> Result<CgroupRoot, CgroupError> {
        validate_id(name)?;
        let layout = detect_layout()?;
        let backend = match layout {
            Layout::Unified => RootBackend::V2(v2::Root::open(name)?),
            Layout::Hybrid | Layout::Legacy => RootBackend::V1(v1::Root::open(name)?),
        };
        Ok(CgroupRoot { layout, backend })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// `"v1"` or `"v2"`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            RootBackend::V1(_) => "v1",
            RootBackend::V2(_) => "v2",
        }
    }

    /// The root's directories (one per hierarchy on v1, one on v2).
    pub fn paths(&self) -> Vec<PathBuf> {
        match &self.backend {
            RootBackend::V1(r) => r.paths(),
            RootBackend::V2(r) => r.paths(),
        }
    }

    /// Creates the cell's cgroup(s) and writes the limits; on any failure removes what it created.
    pub fn create_cell(&self, id: &str, limits: &CellLimits) -> Result<CellCgroup, CgroupError> {
        validate_id(id)?;
        let backend = match &self.backend {
            RootBackend::V1(r) => CellBackend::V1(r.create_cell(id, limits)?),
            RootBackend::V2(r) => CellBackend::V2(r.create_cell(id, limits)?),
        };
        Ok(CellCgroup { id: id.to_string(), layout: self.layout, backend })
    }

    /// Whether process `pid` lives in one of cellkeep's cells (beneath this root). The daemon
    /// refuses API requests from such processes: a cell must never drive the supervisor, even
    /// when the socket's permissions would let its uid connect. `None` when the process is
    /// gone or its cgroup cannot be read (the caller decides what that means).
    pub fn holds_pid(&self, pid: i32) -> Option<bool> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let entries = parse::proc_cgroup(&text);
        Some(match &self.backend {
            RootBackend::V1(r) => r.holds(&entries),
            RootBackend::V2(r) => r.holds(&entries),
        })
    }

    /// Names of cell cgroups under the root (restart recovery), sorted.
    pub fn list_cells(&self) -> Result<Vec<String>, CgroupError> {
        let mut names = match &self.backend {
            RootBackend::V1(r) => r.list_cells()?,
            RootBackend::V2(r) => r.list_cells()?,
        };
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Re-opens an existing cell cgroup by id; [`CgroupError::NotFound`] if it has no directory.
    pub fn open_cell(&self, id: &str) -> Result<CellCgroup, CgroupError> {
        validate_id(id)?;
        let backend = match &self.backend {
            RootBackend::V1(r) => CellBackend::V1(r.open_cell(id)),
            RootBackend::V2(r) => CellBackend::V2(r.open_cell(id)),
        };
        let cell = CellCgroup { id: id.to_string(), layout: self.layout, backend };
        if cell.paths().iter().any(|p| p.is_dir()) {
            Ok(cell)
        } else {
            let root = self.paths().into_iter().next().unwrap_or_default();
            Err(CgroupError::NotFound { id: id.to_string(), root })
        }
    }

    /// Hold the root for one daemon: an exclusive `flock(2)` on its first directory (flock
    /// works on any open file, cgroupfs directories included, and is released when the
    /// process ends, however it ends). A second daemon on the same root would otherwise take
    /// the first one's live cells for orphans and kill them. [`CgroupError::InUse`] when
    /// another process holds it.
    pub fn lock(&self) -> Result<RootLock, CgroupError> {
        let path = self
            .paths()
            .into_iter()
            .next()
            .ok_or_else(|| CgroupError::Unsupported { reason: "a cgroup root with no directory".into() })?;
        let dir = std::fs::File::open(&path).map_err(|source| CgroupError::Read { path: path.clone(), source })?;
        match nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(RootLock { _lock: lock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(CgroupError::InUse { path }),
            Err((_, e)) => Err(CgroupError::Read { path, source: e.into() }),
        }
    }

    /// Removes the root itself if it has no cells; [`CgroupError::Busy`] if it still has some.
    pub fn remove_if_empty(&self) -> Result<(), CgroupError> {
        match &self.backend {
            RootBackend::V1(r) => r.remove_if_empty(),
            RootBackend::V2(r) => r.remove_if_empty(),
        }
    }

    /// `rmdir` of the root's directories that [`CgroupRoot::open`] created (in every hierarchy
    /// on v1), if empty; ones it found stay. For a one-off user such as `cellkeep run`.
    pub fn remove_created(&self) -> Result<(), CgroupError> {
        let created = match &self.backend {
            RootBackend::V1(r) => r.created().to_vec(),
            RootBackend::V2(r) => r.created(),
        };
        let mut first_err = None;
        for dir in created {
            if let Err(e) = fs::rmdir_if_empty(&dir) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// The cgroup(s) of one cell.
#[derive(Debug)]
pub struct CellCgroup {
    id: String,
    layout: Layout,
    backend: CellBackend,
}

#[derive(Debug)]
enum CellBackend {
    V1(v1::Cell),
    V2(v2::Cell),
}

macro_rules! dispatch {
    ($self:ident, $c:ident => $e:expr) => {
        match &$self.backend {
            CellBackend::V1($c) => $e,
            CellBackend::V2($c) => $e,
        }
    };
}

impl CellCgroup {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Layout of the host the cell lives on (tells which [`Self::event_sources`] apply).
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Directories of this cell (one per hierarchy on v1, one on v2).
    pub fn paths(&self) -> Vec<PathBuf> {
        dispatch!(self, c => c.paths())
    }

    /// Moves `pid` into the cell (`cgroup.procs`, in every hierarchy on v1).
    pub fn attach(&self, pid: u32) -> Result<(), CgroupError> {
        // `cgroup.procs` reads 0 as "the writing process": it would move the daemon in.
        if pid == 0 {
            return Err(CgroupError::Unsupported { reason: "attaching pid 0 (the daemon itself) to a cell".into() });
        }
        dispatch!(self, c => c.attach(pid))
    }

    /// Files through which the cell's first process moves itself in, instead of being moved by
    /// [`Self::attach`] (v1 only; `None` on v2, where the launcher attaches it).
    ///
    /// Why: moving another process (`cgroup.procs` with its pid) takes the global
    /// `cgroup_threadgroup_rwsem` for writing, and on a host without `favordynmods` that waits
    /// for an RCU grace period (`percpu_down_write` → `rcu_sync_enter` → `synchronize_rcu`):
    /// 9 ms of a 22 ms launch on this host, the largest single cost in the profile. The kernel
    /// skips that lock when a thread moves itself through v1's `tasks` file (pid `0`, not a
    /// thread-group move: `cgroup_procs_write_start`); for a single-threaded process that moves
    /// the whole process, and everything it forks afterwards starts inside.
    pub fn self_join_files(&self) -> Option<Vec<PathBuf>> {
        match &self.backend {
            CellBackend::V1(c) => Some(c.tasks_files()),
            CellBackend::V2(_) => None,
        }
    }

    /// v2: the cell's directory opened (`O_RDONLY | O_DIRECTORY`), for starting a process
    /// inside it (`clone3(CLONE_INTO_CGROUP)`); `None` on v1, which has no such clone.
    pub fn open_dir_v2(&self) -> Option<std::io::Result<std::os::fd::OwnedFd>> {
        match &self.backend {
            CellBackend::V1(_) => None,
            CellBackend::V2(c) => c.paths().first().map(|dir| {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
                    .open(dir)
                    .map(std::os::fd::OwnedFd::from)
            }),
        }
    }

    /// Pids in the cell (`cgroup.procs`), sorted; empty once the cell is removed.
    pub fn procs(&self) -> Result<Vec<u32>, CgroupError> {
        dispatch!(self, c => c.procs())
    }

    pub fn usage(&self) -> Result<Usage, CgroupError> {
        dispatch!(self, c => c.usage())
    }

    pub fn events(&self) -> Result<Events, CgroupError> {
        dispatch!(self, c => c.events())
    }

    /// Kills every process in the cell and waits (up to [`KILL_TIMEOUT`]) until it is empty.
    /// Killing an empty cell is `Ok`.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        dispatch!(self, c => c.kill_all())
    }

    /// [`Self::kill_all`], then `rmdir` (retried briefly on `EBUSY`). A missing directory is `Ok`.
    pub fn remove(&self) -> Result<(), CgroupError> {
        // The usual case first: the cell's processes have exited and been reaped, so `rmdir`
        // alone removes it (the kernel refuses, EBUSY, while any task is attached: nothing is
        // removed under a live process). Listing `cgroup.procs` first would build a v1
        // pidlist per hierarchy that a kernel worker must tear down after the rmdir.
        if self.rmdir_if_empty()? {
            return Ok(());
        }
        self.kill_all()?;
        dispatch!(self, c => c.rmdir())
    }

    /// One `rmdir` of each directory (last created first), no retries: true once all are
    /// gone (or were), false at the first still in use (EBUSY).
    fn rmdir_if_empty(&self) -> Result<bool, CgroupError> {
        for dir in self.paths().iter().rev() {
            match fs::rmdir_if_empty(dir) {
                Ok(()) => {}
                Err(CgroupError::Busy { .. }) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// The kernel files that signal limit events of this cell (see [`watch`]).
    pub fn event_sources(&self) -> watch::EventSources {
        dispatch!(self, c => c.event_sources())
    }

    /// Start watching this cell's limit events; [`watch::EventWatch::changed`] wakes when the
    /// kernel reports one.
    pub fn watch_events(&self, hub: &watch::WatchHub) -> Result<watch::EventWatch, CgroupError> {
        watch::EventWatch::new(&self.event_sources(), hub)
    }
}

/// Sends SIGKILL to every pid; a pid that already exited (`ESRCH`) is fine.
fn sigkill_all(pids: &[u32]) -> Result<(), CgroupError> {
    for &pid in pids {
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        match kill(Pid::from_raw(raw), Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(source) => return Err(CgroupError::Kill { pid, source }),
        }
    }
    Ok(())
}

/// Sorted, de-duplicated union of pid lists (v1 cells span several hierarchies).
fn merge_pids(mut pids: Vec<u32>) -> Vec<u32> {
    pids.sort_unstable();
    pids.dedup();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        for ok in ["a", "cell-1", "A_b-9", &"x".repeat(64)] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "..", ".", "a/b", "a b", "é", &"x".repeat(65), "a.b"] {
            assert!(matches!(validate_id(bad), Err(CgroupError::InvalidId { .. })), "{bad:?}");
        }
    }

    #[test]
    fn cpu_quota_rounds_and_rejects_nonsense() {
        let q = |cpu| CellLimits { cpu: Some(cpu), ..Default::default() }.cpu_quota_us();
        assert_eq!(q(0.5).unwrap(), Some(50_000));
        assert_eq!(q(2.0).unwrap(), Some(200_000));
        assert_eq!(q(0.333333).unwrap(), Some(33_333));
        assert_eq!(CellLimits::default().cpu_quota_us().unwrap(), None);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 0.001] {
            assert!(matches!(q(bad), Err(CgroupError::InvalidLimit { what: "cpu", .. })), "{bad}");
        }
    }

    #[test]
    fn handles_are_shareable_across_threads() {
        fn root<T: Clone + Send + Sync + std::fmt::Debug>() {}
        fn cell<T: Send + Sync + std::fmt::Debug>() {}
        root::<CgroupRoot>();
        cell::<CellCgroup>();
    }

    #[test]
    fn merge_pids_sorts_and_dedups() {
        assert_eq!(merge_pids(vec![3, 1, 3, 2]), vec![1, 2, 3]);
    }
}
