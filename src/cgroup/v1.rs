//! cgroup v1 backend (hybrid and legacy hosts): a cell is one directory in each of the memory,
//! cpu, cpuacct, pids and freezer hierarchies (cpu and cpuacct may be one co-mounted hierarchy).
//! Hierarchies are found by the super-options of `cgroup` mounts in `/proc/self/mountinfo`, and
//! this process's place in each by `/proc/self/cgroup`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::fs::{self, file};
use super::{merge_pids, parse, sigkill_all, CellLimits, CgroupError, Events, Usage, KILL_TIMEOUT};

/// One directory per controller; entries may coincide when controllers are co-mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dirs {
    memory: PathBuf,
    cpu: PathBuf,
    cpuacct: PathBuf,
    pids: PathBuf,
    freezer: PathBuf,
}

impl Dirs {
    /// Distinct directories, in a stable order (memory first, freezer last).
    fn unique(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::with_capacity(5);
        for d in [&self.memory, &self.cpu, &self.cpuacct, &self.pids, &self.freezer] {
            if !out.contains(d) {
                out.push(d.clone());
            }
        }
        out
    }

    fn join(&self, name: &str) -> Dirs {
        Dirs {
            memory: self.memory.join(name),
            cpu: self.cpu.join(name),
            cpuacct: self.cpuacct.join(name),
            pids: self.pids.join(name),
            freezer: self.freezer.join(name),
        }
    }
}

/// The directory of this process's cgroup in the hierarchy carrying `controller`.
fn own_dir(entries: &[parse::ProcCgroup], mounts: &[parse::Mount], controller: &str) -> Result<PathBuf, CgroupError> {
    let missing = || CgroupError::NoController { controller: controller.to_string() };
    let own = parse::v1_own_path(entries, controller).ok_or_else(missing)?;
    let mount = parse::v1_mount(mounts, controller, own).ok_or_else(missing)?;
    parse::cgroup_dir(mount, own).ok_or_else(missing)
}

/// cellkeep's root: `<own cgroup>/<name>` in every hierarchy.
#[derive(Debug, Clone)]
pub struct Root {
    dirs: Dirs,
    /// The root's path in the pids hierarchy as `/proc/<pid>/cgroup` shows it (`/a/b/cellkeep`).
    pids_rel: String,
    /// The directories `open` created (it found the others).
    created: Vec<PathBuf>,
}

impl Root {
    /// Reads `/proc/self/cgroup` and `/proc/self/mountinfo`, then `mkdir`s `<own>/<name>` in each
    /// hierarchy (existing directories are reused; on failure the new ones are removed).
    pub fn open(name: &str) -> Result<Root, CgroupError> {
        let entries = super::read_proc_cgroup()?;
        let mounts = super::read_mountinfo()?;
        let own = |c| own_dir(&entries, &mounts, c);
        let dirs = Dirs {
            memory: own("memory")?,
            cpu: own("cpu")?,
            cpuacct: own("cpuacct")?,
            pids: own("pids")?,
            freezer: own("freezer")?,
        }
        .join(name);
        let pids_rel = parse::join_rel(parse::v1_own_path(&entries, "pids").unwrap_or("/"), name);
        let mut created = Vec::new();
        for dir in dirs.unique() {
            match fs::mkdir(&dir) {
                Ok(true) => created.push(dir),
                Ok(false) => {}
                Err(e) => {
                    rmdir_all(&created);
                    return Err(e);
                }
            }
        }
        Ok(Root { dirs, pids_rel, created })
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        self.dirs.unique()
    }

    /// The root's directories that `open` created.
    pub fn created(&self) -> &[PathBuf] {
        &self.created
    }

    /// Whether the process whose `/proc/<pid>/cgroup` is `entries` sits beneath this root (in
    /// the pids hierarchy, which every cell has).
    pub fn holds(&self, entries: &[parse::ProcCgroup]) -> bool {
        parse::v1_own_path(entries, "pids").is_some_and(|p| parse::below(p, &self.pids_rel))
    }

    /// `mkdir <root>/<id>` in each hierarchy, then writes the limits; undoes the mkdirs on error.
    pub fn create_cell(&self, id: &str, limits: &CellLimits) -> Result<Cell, CgroupError> {
        let cell = Cell { dirs: self.dirs.join(id) };
        let mut created = Vec::new();
        let result = (|| {
            for dir in cell.dirs.unique() {
                fs::mkdir_new(&dir)?;
                created.push(dir);
            }
            cell.apply_limits(limits)
        })();
        match result {
            Ok(()) => Ok(cell),
            Err(e) => {
                rmdir_all(&created);
                Err(e)
            }
        }
    }

    /// Union of the sub-directory names of the root in every hierarchy.
    pub fn list_cells(&self) -> Result<Vec<String>, CgroupError> {
        let mut names = Vec::new();
        for dir in self.dirs.unique() {
            names.extend(fs::list_dirs(&dir)?);
        }
        Ok(names)
    }

    pub fn open_cell(&self, id: &str) -> Cell {
        Cell { dirs: self.dirs.join(id) }
    }

    /// `rmdir` of the root in every hierarchy; the first failure (e.g. `Busy`) is returned.
    pub fn remove_if_empty(&self) -> Result<(), CgroupError> {
        let mut first_err = None;
        for dir in self.dirs.unique() {
            if let Err(e) = fs::rmdir_if_empty(&dir) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Best-effort `rmdir` in reverse creation order (cleanup after a failed create).
fn rmdir_all(dirs: &[PathBuf]) {
    for dir in dirs.iter().rev() {
        if let Err(e) = fs::rmdir(dir) {
            tracing::warn!(error = %e, "cleanup of a half-created cgroup failed");
        }
    }
}

/// One cell: `<root>/<id>` in every hierarchy.
#[derive(Debug)]
pub struct Cell {
    dirs: Dirs,
}

impl Cell {
    pub fn paths(&self) -> Vec<PathBuf> {
        self.dirs.unique()
    }

    fn apply_limits(&self, limits: &CellLimits) -> Result<(), CgroupError> {
        if let Some(max) = limits.memory_max {
            self.set_memory_limit(max)?;
            self.set_tcp_limit(max)?;
        }
        match (limits.memory_swap, limits.memory_max) {
            (Some(swap), Some(max)) => self.set_memsw_limit(max, swap)?,
            (Some(swap), None) => {
                return Err(CgroupError::InvalidLimit {
                    what: "memory_swap",
                    value: swap.to_string(),
                    reason: "cgroup v1 limits memory+swap together, so memory_max must be set too",
                })
            }
            (None, _) => {}
        }
        if let Some(high) = limits.memory_high {
            self.set_memory_soft_limit(high)?;
        }
        if let Some(quota) = limits.cpu_quota_us()? {
            self.set_cpu_quota(quota)?;
        }
        if let Some(pids) = limits.pids {
            self.set_pids_max(pids)?;
        }
        Ok(())
    }

    /// Writes `memory.limit_in_bytes` (before memsw, which must stay >= it).
    fn set_memory_limit(&self, max: u64) -> Result<(), CgroupError> {
        fs::write(&file(&self.dirs.memory, "memory.limit_in_bytes"), &max.to_string())
    }

    /// Writes `memory.kmem.tcp.limit_in_bytes` = `max`. On v1 the kernel charges TCP socket
    /// buffers to a memcg only once this limit is set (`memcg1_update_tcp_max` turns on
    /// `tcpmem_active`); uncharged, a cell's buffers draw on the host-wide `tcp_mem` budget,
    /// whose hard limit fails TCP allocations for every socket on the host. The buffers are
    /// counted apart from `memory.usage_in_bytes`, so a cell may hold up to `max` in each.
    /// (v2 charges socket memory to `memory.max` without being asked.) A kernel without the
    /// file (built without kmem accounting) is left as it is.
    fn set_tcp_limit(&self, max: u64) -> Result<(), CgroupError> {
        let path = file(&self.dirs.memory, "memory.kmem.tcp.limit_in_bytes");
        if !path.exists() {
            tracing::debug!(path = %path.display(), "no kmem.tcp accounting; TCP buffers are not charged");
            return Ok(());
        }
        fs::write(&path, &max.to_string())
    }

    /// Writes `memory.memsw.limit_in_bytes` = max + swap, if the kernel accounts swap (the file
    /// exists); without swap accounting the limit is not applicable and is skipped.
    fn set_memsw_limit(&self, max: u64, swap: u64) -> Result<(), CgroupError> {
        let path = file(&self.dirs.memory, "memory.memsw.limit_in_bytes");
        if !path.exists() {
            tracing::debug!(path = %path.display(), "no swap accounting; memory_swap not applied");
            return Ok(());
        }
        let total = max.checked_add(swap).ok_or_else(|| CgroupError::InvalidLimit {
            what: "memory_swap",
            value: swap.to_string(),
            reason: "memory_max + memory_swap overflows",
        })?;
        fs::write(&path, &total.to_string())
    }

    /// Writes `memory.soft_limit_in_bytes` (v1's closest match to `memory.high`).
    fn set_memory_soft_limit(&self, high: u64) -> Result<(), CgroupError> {
        fs::write(&file(&self.dirs.memory, "memory.soft_limit_in_bytes"), &high.to_string())
    }

    /// Writes `cpu.cfs_period_us` (100 ms), then `cpu.cfs_quota_us`.
    fn set_cpu_quota(&self, quota_us: u64) -> Result<(), CgroupError> {
        fs::write(&file(&self.dirs.cpu, "cpu.cfs_period_us"), &super::CPU_PERIOD_US.to_string())?;
        fs::write(&file(&self.dirs.cpu, "cpu.cfs_quota_us"), &quota_us.to_string())
    }

    /// Writes `pids.max`.
    fn set_pids_max(&self, max: u64) -> Result<(), CgroupError> {
        fs::write(&file(&self.dirs.pids, "pids.max"), &max.to_string())
    }

    /// Writes `pid` to `cgroup.procs` in every hierarchy.
    pub fn attach(&self, pid: u32) -> Result<(), CgroupError> {
        for dir in self.dirs.unique() {
            fs::write(&file(&dir, "cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The `tasks` file of every hierarchy: where a single-threaded process moves *itself* by
    /// writing `0` (see [`super::CellCgroup::self_join_files`]).
    pub fn tasks_files(&self) -> Vec<PathBuf> {
        self.dirs.unique().iter().map(|d| file(d, "tasks")).collect()
    }

    /// Union of `cgroup.procs` over the hierarchies; hierarchies whose directory is gone count
    /// as empty.
    pub fn procs(&self) -> Result<Vec<u32>, CgroupError> {
        let mut pids = Vec::new();
        for dir in self.dirs.unique() {
            // Removed between the check and the read (ENOENT, or ENODEV): no processes there.
            match fs::read_pids(&file(&dir, "cgroup.procs")) {
                Ok(found) => pids.extend(found),
                Err(CgroupError::Read { source, .. }) if fs::gone(&source) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(merge_pids(pids))
    }

    /// Reads `memory.usage_in_bytes`, `memory.max_usage_in_bytes`, `cpuacct.usage`,
    /// `pids.current` and `cpu.stat` (`throttled_time`).
    pub fn usage(&self) -> Result<Usage, CgroupError> {
        let (mem, cpu, acct, pids) = (&self.dirs.memory, &self.dirs.cpu, &self.dirs.cpuacct, &self.dirs.pids);
        let throttled_ns =
            fs::read_optional(&file(cpu, "cpu.stat"))?.and_then(|s| parse::flat_keyed(&s, "throttled_time"));
        Ok(Usage {
            memory_current: fs::read_u64(&file(mem, "memory.usage_in_bytes"))?,
            memory_peak: fs::read_u64_optional(&file(mem, "memory.max_usage_in_bytes"))?,
            cpu_usage_usec: fs::read_u64(&file(acct, "cpuacct.usage"))? / 1000,
            pids_current: fs::read_u64(&file(pids, "pids.current"))?,
            cpu_throttled_usec: throttled_ns.map(|ns| ns / 1000),
        })
    }

    /// Reads `memory.oom_control` (`oom_kill`, 4.13+), `memory.failcnt`,
    /// `memory.memsw.failcnt` and `pids.events` (`max`).
    ///
    /// A failed charge is counted by the first counter it fails on, and with memsw = memory
    /// (no swap allowed) that is memsw — whose failcnt recent kernels (seen on 6.18) do not
    /// track at all. So `memory_max_hits` is the sum of both failcnts, but never less than
    /// `oom_kills`: a cell OOM kill means its limit was hit.
    pub fn events(&self) -> Result<Events, CgroupError> {
        let mem = &self.dirs.memory;
        let oom_kills = fs::read_key_or_zero(&file(mem, "memory.oom_control"), "oom_kill")?;
        let failcnt = fs::read_u64(&file(mem, "memory.failcnt"))?;
        let memsw_failcnt = fs::read_u64_optional(&file(mem, "memory.memsw.failcnt"))?.unwrap_or(0);
        Ok(Events {
            oom_kills,
            memory_max_hits: (failcnt + memsw_failcnt).max(oom_kills),
            pids_max_hits: fs::read_key_or_zero(&file(&self.dirs.pids, "pids.events"), "max")?,
        })
    }

    /// Freeze (`freezer.state` FROZEN) → SIGKILL every pid in `cgroup.procs` → THAWED, until
    /// the cell is empty or [`KILL_TIMEOUT`] passes. Freezing stops forks racing the kill.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            let pids = self.procs()?;
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::KillTimeout { path: self.dirs.freezer.clone(), pids, timeout: KILL_TIMEOUT });
            }
            let frozen = self.freeze()?;
            let result = self.procs().and_then(|pids| sigkill_all(&pids));
            if frozen {
                self.thaw()?;
            }
            result?;
            // Give the killed tasks a moment to exit before the next round.
            fs::poll_until(Duration::from_millis(200), || Ok(self.procs()?.is_empty()))?;
        }
    }

    /// Writes FROZEN to `freezer.state` and waits (≤ 1 s) until it reads FROZEN. Returns false
    /// (nothing written) when the freezer directory is gone; a task stuck in FREEZING is
    /// killed anyway.
    fn freeze(&self) -> Result<bool, CgroupError> {
        let state = file(&self.dirs.freezer, "freezer.state");
        if !self.dirs.freezer.is_dir() {
            return Ok(false);
        }
        fs::write(&state, "FROZEN")?;
        fs::poll_until(Duration::from_secs(1), || Ok(fs::read(&state)?.trim() == "FROZEN"))?;
        Ok(true)
    }

    /// Writes THAWED to `freezer.state` so the pending SIGKILLs are delivered.
    fn thaw(&self) -> Result<(), CgroupError> {
        fs::write(&file(&self.dirs.freezer, "freezer.state"), "THAWED")
    }

    /// `rmdir` of the cell in every hierarchy (retrying on EBUSY); missing directories are Ok.
    pub fn rmdir(&self) -> Result<(), CgroupError> {
        let mut first_err = None;
        for dir in self.dirs.unique().iter().rev() {
            if let Err(e) = fs::rmdir(dir) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// `memory.oom_control` (an eventfd registered in `cgroup.event_control`: v1 memory files
    /// do not notify inotify) and `pids.events` (modified like on v2).
    pub fn event_sources(&self) -> super::watch::EventSources {
        super::watch::EventSources {
            modified: vec![file(&self.dirs.pids, "pids.events")],
            oom_eventfd: Some(super::watch::OomControl {
                oom_control: file(&self.dirs.memory, "memory.oom_control"),
                event_control: file(&self.dirs.memory, "cgroup.event_control"),
            }),
        }
    }
}
