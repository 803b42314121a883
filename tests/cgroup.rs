//! Privileged tests of the cgroup layer against the real kernel (v1 on hybrid/legacy hosts, v2 on
//! unified ones — the same tests run in the cgroup-v2 VM). Each test makes its own uniquely
//! named root beneath this process's cgroup and removes it at the end.
//!
//! A test that cannot run (not root, no cgroupfs, missing controller) prints why and returns;
//! with `CI` set it panics instead, so CI cannot pass by skipping.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: failing loudly is the point

mod common;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cellkeep::cgroup::{CellCgroup, CellLimits, CgroupError, CgroupRoot, Layout};

const MIB: u64 = 1024 * 1024;

/// Opens a fresh root for one test, or explains why the test cannot run (panicking under `CI`).
fn privileged_root(test: &str) -> Option<TestRoot> {
    let skip = |why: String| {
        if std::env::var_os("CI").is_some() {
            panic!("{test}: cannot run privileged cgroup test under CI: {why}");
        }
        eprintln!("{test}: SKIPPED: {why}");
        None
    };
    if !nix::unistd::geteuid().is_root() {
        return skip("needs root".to_string());
    }
    let name = format!("cellkeep-test-{}", uuid::Uuid::now_v7().simple());
    match CgroupRoot::open(&name) {
        Ok(root) => {
            eprintln!("{test}: cgroup backend: {} ({:?})", root.backend_name(), root.layout());
            Some(TestRoot(root))
        }
        Err(e @ (CgroupError::NoController { .. } | CgroupError::Unsupported { .. } | CgroupError::Statfs { .. })) => {
            skip(format!("cgroups not usable here: {e}"))
        }
        Err(e) => panic!("{test}: CgroupRoot::open failed: {e}"),
    }
}

/// Removes every cell left under the root, then the root, when the test ends (also on panic).
struct TestRoot(CgroupRoot);

impl std::ops::Deref for TestRoot {
    type Target = CgroupRoot;
    fn deref(&self) -> &CgroupRoot {
        &self.0
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        for id in self.0.list_cells().unwrap_or_default() {
            if let Ok(cell) = self.0.open_cell(&id) {
                let _ = cell.remove();
            }
        }
        let result = self.0.remove_if_empty();
        if !std::thread::panicking() {
            result.expect("remove the test root");
            for p in self.0.paths() {
                assert!(!p.exists(), "root {} still exists", p.display());
            }
        }
    }
}

/// Spawns `sh -c 'read _; <script>'`, attaches it to `cell`, then lets it go on: so everything
/// `script` does runs inside the cell.
fn spawn_in(cell: &CellCgroup, script: &str) -> Child {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("read _ ; {script}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn sh");
    cell.attach(child.id()).expect("attach");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("release child");
    child
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())).trim().to_string()
}

/// The directory of the cell that holds `file` (v1: the one of that hierarchy; v2: the only one).
fn file_of(cell: &CellCgroup, name: &str) -> PathBuf {
    cell.paths()
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no {name} in any of {:?}", cell.paths()))
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

fn assert_gone(paths: &[PathBuf]) {
    for p in paths {
        assert!(!Path::new(p).exists(), "{} still exists", p.display());
    }
}

#[test]
fn limits_are_written_and_remove_deletes_every_dir() {
    let Some(root) = privileged_root("limits") else {
        return;
    };
    let limits = CellLimits {
        memory_max: Some(64 * MIB),
        memory_high: Some(48 * MIB),
        memory_swap: Some(16 * MIB),
        cpu: Some(0.25),
        pids: Some(17),
    };
    let cell = root.create_cell("limits", &limits).expect("create_cell");
    assert_eq!(cell.id(), "limits");
    let paths = cell.paths();
    assert!(paths.iter().all(|p| p.is_dir()), "{paths:?}");
    assert_eq!(read(file_of(&cell, "pids.max")), "17");
    match root.layout() {
        Layout::Unified => {
            assert_eq!(paths.len(), 1);
            assert_eq!(read(file_of(&cell, "memory.max")), (64 * MIB).to_string());
            assert_eq!(read(file_of(&cell, "memory.high")), (48 * MIB).to_string());
            if cell.paths()[0].join("memory.swap.max").exists() {
                assert_eq!(read(file_of(&cell, "memory.swap.max")), (16 * MIB).to_string());
            }
            assert_eq!(read(file_of(&cell, "memory.oom.group")), "1");
            assert_eq!(read(file_of(&cell, "cpu.max")), "25000 100000");
            let src = cell.event_sources();
            assert_eq!(src.modified[0].file_name().unwrap(), "memory.events");
            assert!(src.oom_eventfd.is_none());
        }
        Layout::Hybrid | Layout::Legacy => {
            assert!(paths.len() >= 4, "one dir per hierarchy: {paths:?}");
            assert_eq!(read(file_of(&cell, "memory.limit_in_bytes")), (64 * MIB).to_string());
            assert_eq!(read(file_of(&cell, "memory.soft_limit_in_bytes")), (48 * MIB).to_string());
            if paths.iter().any(|p| p.join("memory.memsw.limit_in_bytes").exists()) {
                assert_eq!(read(file_of(&cell, "memory.memsw.limit_in_bytes")), (80 * MIB).to_string());
            }
            assert_eq!(read(file_of(&cell, "cpu.cfs_period_us")), "100000");
            assert_eq!(read(file_of(&cell, "cpu.cfs_quota_us")), "25000");
            let src = cell.event_sources();
            let oom = src.oom_eventfd.expect("v1 watches OOM with an eventfd");
            assert_eq!(oom.oom_control.file_name().unwrap(), "memory.oom_control");
        }
    }
    // A second cell with the same id is refused; bad ids never reach the filesystem.
    assert!(matches!(root.create_cell("limits", &limits), Err(CgroupError::Create { .. })));
    for bad in ["../escape", "a/b", "", ".."] {
        assert!(matches!(root.create_cell(bad, &limits), Err(CgroupError::InvalidId { .. })), "{bad}");
    }
    // An invalid limit fails after mkdir: nothing may be left behind.
    let bad = CellLimits { cpu: Some(-1.0), ..Default::default() };
    assert!(matches!(root.create_cell("badcpu", &bad), Err(CgroupError::InvalidLimit { .. })));
    assert_eq!(root.list_cells().unwrap(), vec!["limits".to_string()]);

    cell.remove().expect("remove");
    assert_gone(&paths);
}

#[test]
fn memory_limit_oom_kills_and_is_counted() {
    let Some(root) = privileged_root("memory") else {
        return;
    };
    let limits = CellLimits { memory_max: Some(32 * MIB), memory_swap: Some(0), ..Default::default() };
    let cell = root.create_cell("mem", &limits).expect("create_cell");
    // awk doubles a string until the cell's OOM killer fires.
    let mut child = spawn_in(&cell, r#"exec awk 'BEGIN{s="xxxxxxxxxxxxxxxx"; while (1) s = s s}'"#);
    let status = child.wait().expect("wait");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "status {status:?}");
    let events = cell.events().expect("events");
    eprintln!("memory events: {events:?}, usage: {:?}", cell.usage().unwrap());
    assert!(events.oom_kills >= 1, "{events:?}");
    assert!(events.memory_max_hits >= 1, "{events:?}");
    let paths = cell.paths();
    cell.remove().expect("remove");
    assert_gone(&paths);
}

#[test]
fn pids_limit_stops_forks_and_is_counted() {
    let Some(root) = privileged_root("pids") else {
        return;
    };
    let limits = CellLimits { pids: Some(5), ..Default::default() };
    let cell = root.create_cell("pids", &limits).expect("create_cell");
    let mut child = spawn_in(&cell, "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 5 & done 2>/dev/null; wait");
    assert!(
        wait_until(Duration::from_secs(10), || cell.events().unwrap().pids_max_hits >= 1),
        "pids.events max never counted: {:?}",
        cell.events()
    );
    let procs = cell.procs().expect("procs");
    assert!(!procs.is_empty() && procs.len() <= 5, "{procs:?}");
    assert!(cell.usage().unwrap().pids_current <= 5);
    cell.kill_all().expect("kill_all");
    assert_eq!(cell.procs().unwrap(), Vec::<u32>::new());
    // dash exits on a failed fork, so the shell may have ended before kill_all.
    let status = child.wait().expect("wait");
    assert!(!status.success(), "{status:?}");
    let paths = cell.paths();
    cell.remove().expect("remove");
    assert_gone(&paths);
}

#[test]
fn cpu_limit_holds_a_busy_loop_to_half_a_cpu() {
    let Some(root) = privileged_root("cpu") else {
        return;
    };
    // Measures a CPU share: alone, whatever else the suite runs (tests/common, `gate!`).
    let _alone = common::cpu_lock(true);
    let limits = CellLimits { cpu: Some(0.5), ..Default::default() };
    let cell = root.create_cell("cpu", &limits).expect("create_cell");
    let mut child = spawn_in(&cell, "while :; do :; done");
    let before = cell.usage().expect("usage").cpu_usage_usec;
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let usage = cell.usage().expect("usage");
    let wall = start.elapsed();
    let used = (usage.cpu_usage_usec - before) as f64 / wall.as_micros() as f64;
    eprintln!("cpu: {used:.3} of a CPU over {wall:?}; {usage:?}");
    assert!((0.4..=0.6).contains(&used), "expected 0.5 ± 0.1 CPU, got {used:.3}");
    if let Some(throttled) = usage.cpu_throttled_usec {
        assert!(throttled > 0, "a 50% quota on a busy loop must throttle");
    }
    cell.remove().expect("remove");
    assert_eq!(child.wait().expect("wait").signal(), Some(libc::SIGKILL));
    assert_gone(&cell.paths());
}

#[test]
fn kill_all_reaches_a_setsid_grandchild() {
    let Some(root) = privileged_root("kill_all") else {
        return;
    };
    let cell = root.create_cell("killall", &CellLimits::default()).expect("create_cell");
    // The subshell forks `setsid sleep` into its own session and exits: the grandchild is
    // re-parented away from us, but stays in the cell.
    let mut child = spawn_in(&cell, "(setsid sleep 300 &) ; sleep 300");
    // Proof the grandchild started: a `sleep` in the cell that leads its own session (the
    // shell and its plain `sleep` share the shell's session), not just "two processes".
    let grandchild = || {
        cell.procs().unwrap().into_iter().find(|&pid| {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            comm.trim() == "sleep" && nix::unistd::getsid(Some(pid)) == Ok(pid)
        })
    };
    assert!(wait_until(Duration::from_secs(10), || grandchild().is_some()), "no setsid grandchild: {:?}", cell.procs());
    let pids = cell.procs().unwrap();
    cell.kill_all().expect("kill_all");
    assert_eq!(cell.procs().unwrap(), Vec::<u32>::new());
    assert_eq!(child.wait().expect("wait").signal(), Some(libc::SIGKILL));
    for pid in pids {
        // Gone, or a zombie waiting for its (new) parent to reap it.
        let alive =
            std::fs::read_to_string(format!("/proc/{pid}/status")).map(|s| !s.contains("State:\tZ")).unwrap_or(false);
        assert!(!alive, "pid {pid} survived kill_all");
    }
    cell.kill_all().expect("kill_all on an empty cell");
    let paths = cell.paths();
    cell.remove().expect("remove");
    assert_gone(&paths);
}

#[test]
fn list_open_and_repeat_remove() {
    let Some(root) = privileged_root("list") else {
        return;
    };
    assert_eq!(root.list_cells().unwrap(), Vec::<String>::new());
    let a = root.create_cell("cell-a", &CellLimits::default()).expect("create a");
    let b = root.create_cell("cell_b", &CellLimits { pids: Some(3), ..Default::default() }).expect("create b");
    assert_eq!(root.list_cells().unwrap(), vec!["cell-a".to_string(), "cell_b".to_string()]);

    // Restart recovery: re-open by id, kill, remove.
    let mut child = spawn_in(&b, "sleep 300");
    let reopened = root.open_cell("cell_b").expect("open_cell");
    assert_eq!(reopened.paths(), b.paths());
    assert!(reopened.procs().unwrap().contains(&child.id()), "{:?}", reopened.procs());
    reopened.remove().expect("remove reopened");
    assert_eq!(child.wait().expect("wait").signal(), Some(libc::SIGKILL));
    assert_gone(&b.paths());
    b.remove().expect("remove of an already removed cell is Ok");
    assert!(matches!(root.open_cell("cell_b"), Err(CgroupError::NotFound { .. })));
    assert!(matches!(root.open_cell("../x"), Err(CgroupError::InvalidId { .. })));
    assert_eq!(root.list_cells().unwrap(), vec!["cell-a".to_string()]);

    // The root is busy while a cell exists.
    assert!(root.remove_if_empty().is_err());
    a.remove().expect("remove a");
    a.remove().expect("second remove is Ok");
    assert_eq!(root.list_cells().unwrap(), Vec::<String>::new());
}

#[test]
fn usage_of_a_live_child() {
    let Some(root) = privileged_root("usage") else {
        return;
    };
    let cell = root.create_cell("usage", &CellLimits::default()).expect("create_cell");
    let mut child = spawn_in(&cell, "x=$(seq 1 20000); exec sleep 300");
    assert!(wait_until(Duration::from_secs(10), || {
        let u = cell.usage().unwrap();
        u.memory_current > 0 && u.pids_current >= 1 && u.cpu_usage_usec > 0
    }));
    let usage = cell.usage().unwrap();
    eprintln!("usage: {usage:?}");
    assert!(usage.memory_current > 0 && usage.pids_current >= 1, "{usage:?}");
    if let Some(peak) = usage.memory_peak {
        assert!(peak >= usage.memory_current, "{usage:?}");
    }
    assert_eq!(cell.events().unwrap(), Default::default());
    cell.remove().expect("remove");
    assert_eq!(child.wait().expect("wait").signal(), Some(libc::SIGKILL));
    assert_gone(&cell.paths());
}
