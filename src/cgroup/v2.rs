//! cgroup v2 backend (unified hosts): a cell is one directory `<own>/<root name>/<id>` in the
//! cgroup2 mount, with memory, cpu and pids enabled through `cgroup.subtree_control` of the
//! own cgroup and of cellkeep's root.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::fs::{self, file};
use super::{parse, sigkill_all, CellLimits, CgroupError, Events, Usage, CGROUP_MOUNT, KILL_TIMEOUT};

/// Controllers every cell needs.
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// Leaf this process moves itself into when its own cgroup must delegate controllers
/// (no-internal-process rule).
const SUPERVISOR_LEAF: &str = "supervisor";

/// cellkeep's root: `<own cgroup>/<name>`.
#[derive(Debug, Clone)]
pub struct Root {
    dir: PathBuf,
    /// The root's path as `/proc/<pid>/cgroup` (`0::…`) shows it.
    rel: String,
    /// `open` created the directory (rather than finding it).
    created: bool,
}

impl Root {
    /// Finds this process's cgroup P (`/proc/self/cgroup` `0::/P`, in the cgroup2 mount found in
    /// `/proc/self/mountinfo`), enables the controllers in P, creates `P/<name>` and enables them
    /// there too. If this process already sits in `P/supervisor` (moved there by an earlier
    /// `open`), P is that leaf's parent.
    pub fn open(name: &str) -> Result<Root, CgroupError> {
        let (own, own_dir) = own_cgroup()?;
        let own = own.as_str();
        check_controllers(&own_dir)?;
        enable_controllers_in_own(&own_dir, own == "/")?;
        let dir = own_dir.join(name);
        let created = fs::mkdir(&dir)?;
        check_controllers(&dir)?;
        enable_controllers(&dir)?;
        Ok(Root { dir, rel: parse::join_rel(own, name), created })
    }

    /// Whether the process whose `/proc/<pid>/cgroup` is `entries` sits beneath this root.
    pub fn holds(&self, entries: &[parse::ProcCgroup]) -> bool {
        parse::v2_own_path(entries).is_some_and(|p| parse::below(p, &self.rel))
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }

    /// `mkdir <root>/<id>`, then writes the limits; removes the directory on error.
    pub fn create_cell(&self, id: &str, limits: &CellLimits) -> Result<Cell, CgroupError> {
        let cell = Cell { dir: self.dir.join(id) };
        fs::mkdir_new(&cell.dir)?;
        if let Err(e) = cell.apply_limits(limits) {
            if let Err(cleanup) = fs::rmdir(&cell.dir) {
                tracing::warn!(error = %cleanup, "cleanup of a half-created cgroup failed");
            }
            return Err(e);
        }
        Ok(cell)
    }

    pub fn list_cells(&self) -> Result<Vec<String>, CgroupError> {
        fs::list_dirs(&self.dir)
    }

    /// The root's directory, if `open` created it.
    pub fn created(&self) -> Vec<PathBuf> {
        if self.created {
            vec![self.dir.clone()]
        } else {
            Vec::new()
        }
    }

    pub fn open_cell(&self, id: &str) -> Cell {
        Cell { dir: self.dir.join(id) }
    }

    pub fn remove_if_empty(&self) -> Result<(), CgroupError> {
        fs::rmdir_if_empty(&self.dir)
    }
}

/// This process's cgroup P (`/proc/self/cgroup` `0::/P`) and its directory in the cgroup2 mount
/// found in `/proc/self/mountinfo`. If this process already sits in `P/supervisor` (moved
/// there by an earlier [`Root::open`]), P is that leaf's parent.
fn own_cgroup() -> Result<(String, PathBuf), CgroupError> {
    let entries = super::read_proc_cgroup()?;
    let own = parse::v2_own_path(&entries).ok_or_else(|| CgroupError::Unsupported {
        reason: "no cgroup2 entry (0::) in /proc/self/cgroup".to_string(),
    })?;
    let own = match own.rsplit_once('/') {
        Some(("", SUPERVISOR_LEAF)) => "/",
        Some((parent, SUPERVISOR_LEAF)) => parent,
        _ => own,
    };
    let mounts = super::read_mountinfo()?;
    let own_dir =
        parse::v2_mount(&mounts, own, Path::new(CGROUP_MOUNT)).and_then(|m| parse::cgroup_dir(m, own)).ok_or_else(
            || CgroupError::Unsupported { reason: format!("no cgroup2 mount shows this process's cgroup {own}") },
        )?;
    Ok((own.to_owned(), own_dir))
}

/// The processes of this process's cgroup P (`P/cgroup.procs`) that are neither this process
/// nor one of its children, when P is not the root cgroup: a login session's scope holding
/// the shell and `sudo` that started cellkeep. Such a P cannot hand controllers to cells (the
/// kernel's no-internal-process rule makes `cgroup.subtree_control` EBUSY while P holds
/// processes) and is not cellkeep's to rearrange. Empty when P is cellkeep's alone (a
/// service with `Delegate=yes`, a scope of its own) or the root.
pub fn strangers() -> Result<(PathBuf, Vec<u32>), CgroupError> {
    let (own, own_dir) = own_cgroup()?;
    if own == "/" {
        return Ok((own_dir, Vec::new()));
    }
    Ok((own_dir.clone(), strangers_in(&own_dir)?))
}

fn strangers_in(dir: &Path) -> Result<Vec<u32>, CgroupError> {
    let ours: Vec<u32> = own_children().into_iter().chain([std::process::id()]).collect();
    let procs = fs::read(&file(dir, "cgroup.procs"))?;
    Ok(procs.split_whitespace().filter_map(|p| p.parse().ok()).filter(|p| !ours.contains(p)).collect())
}

/// Reads `cgroup.controllers` of `dir`; NoController names the first needed one missing.
fn check_controllers(dir: &Path) -> Result<(), CgroupError> {
    let available = fs::read(&file(dir, "cgroup.controllers"))?;
    let missing = CONTROLLERS.iter().find(|c| !available.split_whitespace().any(|a| a == **c));
    match missing {
        Some(c) => Err(CgroupError::NoController { controller: c.to_string() }),
        None => Ok(()),
    }
}

/// Writes `+memory +cpu +pids` (only the missing ones) to `dir/cgroup.subtree_control`.
fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let path = file(dir, "cgroup.subtree_control");
    let enabled = fs::read(&path)?;
    let missing: Vec<String> =
        CONTROLLERS.iter().filter(|c| !enabled.split_whitespace().any(|e| e == **c)).map(|c| format!("+{c}")).collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs::write(&path, &missing.join(" "))
}

/// Enables the controllers in this process's own cgroup. A non-root cgroup holding processes
/// cannot delegate (EBUSY); when they are all cellkeep's, this process and its children (the daemon's zygote, forked
/// before this runs; found by the systemd lane: with the zygote left behind in the unit's
/// cgroup the retry failed with EBUSY again) move into the leaf `own/supervisor`
/// (`cgroup.procs` there) and it retries once. When the cgroup holds processes that are not
/// ours ([`strangers`]), nothing is touched: [`CgroupError::Shared`] says how to start cellkeep
/// in a cgroup of its own (the CLI does that by itself under systemd: `crate::systemd`).
fn enable_controllers_in_own(own_dir: &Path, is_root: bool) -> Result<(), CgroupError> {
    match enable_controllers(own_dir) {
        Err(CgroupError::Write { source, .. }) if !is_root && source.raw_os_error() == Some(libc::EBUSY) => {
            // Someone else's processes share the cgroup: nothing here is cellkeep's to move,
            // and no leaf of ours would make the retry succeed.
            let pids = strangers_in(own_dir)?;
            if !pids.is_empty() {
                return Err(CgroupError::Shared { path: own_dir.to_path_buf(), pids });
            }
            let leaf = own_dir.join(SUPERVISOR_LEAF);
            fs::mkdir(&leaf)?;
            let procs = file(&leaf, "cgroup.procs");
            fs::write(&procs, &std::process::id().to_string())?;
            for child in own_children() {
                // A child that exited meanwhile (ESRCH) is fine; the retry below tells.
                let _ = fs::write(&procs, &child.to_string());
            }
            enable_controllers(own_dir)
        }
        other => other,
    }
}

/// This process's children (`/proc/self/task/*/children`).
fn own_children() -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| c.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect()
}

/// One cell: `<root>/<id>`.
#[derive(Debug)]
pub struct Cell {
    dir: PathBuf,
}

impl Cell {
    pub fn paths(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }

    fn apply_limits(&self, limits: &CellLimits) -> Result<(), CgroupError> {
        // An OOM kill takes the whole cell, not one process of it.
        fs::write(&file(&self.dir, "memory.oom.group"), "1")?;
        if let Some(max) = limits.memory_max {
            fs::write(&file(&self.dir, "memory.max"), &max.to_string())?;
        }
        if let Some(high) = limits.memory_high {
            fs::write(&file(&self.dir, "memory.high"), &high.to_string())?;
        }
        if let Some(swap) = limits.memory_swap {
            self.set_swap_max(swap)?;
        }
        if let Some(quota) = limits.cpu_quota_us()? {
            // cpu.max: "<quota> <period>" in microseconds.
            fs::write(&file(&self.dir, "cpu.max"), &format!("{quota} {}", super::CPU_PERIOD_US))?;
        }
        if let Some(pids) = limits.pids {
            fs::write(&file(&self.dir, "pids.max"), &pids.to_string())?;
        }
        Ok(())
    }

    /// Writes `memory.swap.max`; skipped when the kernel has no swap accounting (no file).
    fn set_swap_max(&self, swap: u64) -> Result<(), CgroupError> {
        let path = file(&self.dir, "memory.swap.max");
        if !path.exists() {
            tracing::debug!(path = %path.display(), "no swap accounting; memory_swap not applied");
            return Ok(());
        }
        fs::write(&path, &swap.to_string())
    }

    /// Writes `pid` to `cgroup.procs`.
    pub fn attach(&self, pid: u32) -> Result<(), CgroupError> {
        fs::write(&file(&self.dir, "cgroup.procs"), &pid.to_string())
    }

    /// Reads `cgroup.procs`; a removed cell has none.
    pub fn procs(&self) -> Result<Vec<u32>, CgroupError> {
        if !self.dir.is_dir() {
            return Ok(Vec::new());
        }
        // Removed between the check and the read (ENOENT, or ENODEV once the kernel let go
        // of an open directory): no processes.
        let mut pids = match fs::read_pids(&file(&self.dir, "cgroup.procs")) {
            Err(CgroupError::Read { source, .. }) if fs::gone(&source) => Vec::new(),
            other => other?,
        };
        pids.sort_unstable();
        Ok(pids)
    }

    /// Reads `memory.current`, `memory.peak` (5.19+), `cpu.stat` and `pids.current`.
    pub fn usage(&self) -> Result<Usage, CgroupError> {
        let cpu_stat_path = file(&self.dir, "cpu.stat");
        let cpu_stat = fs::read(&cpu_stat_path)?;
        let usage_usec = parse::flat_keyed(&cpu_stat, "usage_usec")
            .ok_or_else(|| fs::parse_error(&cpu_stat_path, &cpu_stat, "no usage_usec"))?;
        Ok(Usage {
            memory_current: fs::read_u64(&file(&self.dir, "memory.current"))?,
            memory_peak: fs::read_u64_optional(&file(&self.dir, "memory.peak"))?,
            cpu_usage_usec: usage_usec,
            pids_current: fs::read_u64(&file(&self.dir, "pids.current"))?,
            cpu_throttled_usec: parse::flat_keyed(&cpu_stat, "throttled_usec"),
        })
    }

    /// Reads `memory.events` (`oom_kill`, `max`) and `pids.events` (`max`).
    pub fn events(&self) -> Result<Events, CgroupError> {
        let memory_events = fs::read(&file(&self.dir, "memory.events"))?;
        Ok(Events {
            oom_kills: parse::flat_keyed(&memory_events, "oom_kill").unwrap_or(0),
            memory_max_hits: parse::flat_keyed(&memory_events, "max").unwrap_or(0),
            pids_max_hits: fs::read_key_or_zero(&file(&self.dir, "pids.events"), "max")?,
        })
    }

    /// Writes `cgroup.kill` (5.14+) and waits until `cgroup.procs` is empty; on older kernels
    /// loops freeze (`cgroup.freeze`) → SIGKILL each pid → thaw.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        if self.procs()?.is_empty() {
            return Ok(());
        }
        let kill_file = file(&self.dir, "cgroup.kill");
        if kill_file.exists() {
            fs::write(&kill_file, "1")?;
            if fs::poll_until(KILL_TIMEOUT, || Ok(self.procs()?.is_empty()))? {
                return Ok(());
            }
            return Err(self.timeout());
        }
        self.kill_by_freezing()
    }

    /// The pre-5.14 fallback: `cgroup.freeze` 1, wait for `cgroup.events` `frozen 1`,
    /// SIGKILL every pid, `cgroup.freeze` 0, repeat until empty.
    fn kill_by_freezing(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + KILL_TIMEOUT;
        let freeze = file(&self.dir, "cgroup.freeze");
        let events = file(&self.dir, "cgroup.events");
        while Instant::now() < deadline {
            let pids = self.procs()?;
            if pids.is_empty() {
                return Ok(());
            }
            fs::write(&freeze, "1")?;
            // Once frozen, thawed whatever happens in between: a cell left frozen by an error
            // here would hold its processes (and slot) until someone noticed.
            let killed = fs::poll_until(Duration::from_secs(1), || {
                Ok(parse::flat_keyed(&fs::read(&events)?, "frozen") == Some(1))
            })
            .and_then(|_frozen| self.procs())
            .and_then(|pids| sigkill_all(&pids));
            let thawed = fs::write(&freeze, "0");
            killed?;
            thawed?;
            fs::poll_until(Duration::from_millis(200), || Ok(self.procs()?.is_empty()))?;
        }
        if self.procs()?.is_empty() {
            Ok(())
        } else {
            Err(self.timeout())
        }
    }

    fn timeout(&self) -> CgroupError {
        CgroupError::KillTimeout {
            path: self.dir.clone(),
            pids: self.procs().unwrap_or_default(),
            timeout: KILL_TIMEOUT,
        }
    }

    /// `rmdir` of the cell (retrying on EBUSY); a missing directory is Ok.
    pub fn rmdir(&self) -> Result<(), CgroupError> {
        fs::rmdir(&self.dir)
    }

    /// `memory.events` and `pids.events`: the kernel marks them modified (inotify `IN_MODIFY`)
    /// whenever a counter in them changes.
    pub fn event_sources(&self) -> super::watch::EventSources {
        super::watch::EventSources {
            // cgroup.events: `populated` flips to 0 when the last process leaves.
            modified: vec![
                file(&self.dir, "memory.events"),
                file(&self.dir, "pids.events"),
                file(&self.dir, "cgroup.events"),
            ],
            oom_eventfd: None,
        }
    }
}
