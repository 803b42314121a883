//! Shared support for the privileged integration tests: the root/kernel gate (skip with a
//! reason on a developer's laptop, fail when `CI` is set), a scratch workspace, and a runner
//! for the real `cellkeep` binary with a per-test cgroup root.
#![allow(dead_code)]

pub mod http;

/// The one gate of the privileged tests: `gate!("name");` skips (or, under CI, fails) a test
/// that cannot run here, and otherwise holds the suite's CPU lock for the rest of the test —
/// shared, so privileged tests run in parallel; `gate!("name", measures_cpu)` holds it
/// exclusively, for the tests that measure a CPU share (they must run alone on a shared
/// machine: any other test's load would lower the share they measure).
#[allow(unused_macros)]
macro_rules! gate {
    ($name:expr) => {
        let Some(_cpu_lock) = $crate::common::gate_lock($name, false) else { return };
    };
    ($name:expr, measures_cpu) => {
        let Some(_cpu_lock) = $crate::common::gate_lock($name, true) else { return };
    };
}
#[allow(unused_imports)]
pub(crate) use gate;

/// The suite-wide lock file (every test binary, every thread: `flock` locks belong to open
/// file descriptions, so two opens in one process conflict like two processes do).
const CPU_LOCK: &str = "/run/cellkeep-test-cpu.lock";

/// [`privileged`], then the CPU lock (see `gate!`): `None` when the test must be skipped.
pub fn gate_lock(test: &str, exclusive: bool) -> Option<nix::fcntl::Flock<std::fs::File>> {
    if !privileged(test) {
        return None;
    }
    Some(cpu_lock(exclusive))
}

/// Take the suite's CPU lock: exclusive for a test that measures a CPU share, shared for the
/// others. Released when the guard drops (or the process ends).
pub fn cpu_lock(exclusive: bool) -> nix::fcntl::Flock<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(CPU_LOCK)
        .unwrap_or_else(|e| panic!("{CPU_LOCK}: {e}"));
    let arg = if exclusive { nix::fcntl::FlockArg::LockExclusive } else { nix::fcntl::FlockArg::LockShared };
    nix::fcntl::Flock::lock(file, arg).unwrap_or_else(|(_, e)| panic!("flock {CPU_LOCK}: {e}"))
}

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_cellkeep");
pub const NOBODY: u32 = 65534;

/// True when the privileged tests can run. When they cannot: print why and return false on a
/// developer's machine; panic under CI (`CI` set), so a CI run never passes by skipping.
pub fn privileged(test: &str) -> bool {
    let why = if !nix::unistd::geteuid().is_root() {
        Some("needs root".to_owned())
    } else if cellkeep::cgroup::detect_layout().is_err() {
        Some("no usable cgroup hierarchy".to_owned())
    } else {
        None
    };
    match why {
        None => true,
        Some(why) if std::env::var_os("CI").is_some() => panic!("{test}: cannot run under CI: {why}"),
        Some(why) => {
            eprintln!("SKIP {test}: {why} (set CI=1 to make this a failure)");
            false
        }
    }
}

/// A test's world: a workspace dir under /tmp owned by nobody (the cell, running under a host
/// uid of its own, sees it as its own through an idmapped mount; where the filesystem cannot be
/// idmapped, base's `fallback_owner` runs it as nobody), a policy dir holding a
/// copy of the shipped base policy, and a cgroup root of its own (removed on drop).
pub struct World {
    pub ws: tempfile::TempDir,
    pub policies: tempfile::TempDir,
    pub cgroup_root: String,
}

impl World {
    pub fn new() -> World {
        let ws = tempfile::Builder::new().prefix("ck-ws-").tempdir().expect("workspace");
        std::os::unix::fs::chown(ws.path(), Some(NOBODY), Some(NOBODY)).expect("chown workspace");
        let policies = tempfile::Builder::new().prefix("ck-pol-").tempdir().expect("policy dir");
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/base.toml");
        std::fs::copy(&base, policies.path().join("base.toml")).expect("copy base.toml");
        let cgroup_root = format!("ck-test-{}", uuid::Uuid::now_v7().simple());
        World { ws, policies, cgroup_root }
    }

    /// Write `policies/<name>.toml` = `extends = "base"` + `[provider]` + `body`.
    pub fn policy(&self, name: &str, provider_extra: &str, body: &str) -> PathBuf {
        let text =
            format!("extends = \"base\"\n\n[provider]\nname = \"{name}\"\ncommand = []\n{provider_extra}\n\n{body}\n");
        let path = self.policies.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("write policy");
        path
    }

    /// `cellkeep run --json --policy P --cwd WS -- args…`
    pub fn run(&self, policy: &Path, args: &[&str]) -> Run {
        self.run_in(policy, self.ws.path(), args, &[])
    }

    pub fn run_in(&self, policy: &Path, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(BIN);
        cmd.arg("run").arg("--json").arg("--policy").arg(policy).arg("--cwd").arg(cwd).arg("--");
        cmd.args(args).env("CELLKEEP_CGROUP_ROOT", &self.cgroup_root);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("spawn cellkeep");
        Run::from(out)
    }

    pub fn cgroup_root(&self) -> cellkeep::cgroup::CgroupRoot {
        cellkeep::cgroup::CgroupRoot::open(&self.cgroup_root).expect("open test cgroup root")
    }

    /// No cell cgroup is left under this test's root.
    pub fn assert_no_cells(&self) {
        let cells = self.cgroup_root().list_cells().expect("list cells");
        assert!(cells.is_empty(), "cell cgroups left behind: {cells:?}");
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Ok(root) = cellkeep::cgroup::CgroupRoot::open(&self.cgroup_root) {
            for id in root.list_cells().unwrap_or_default() {
                if let Ok(c) = root.open_cell(&id) {
                    let _ = c.remove();
                }
            }
            let _ = root.remove_if_empty();
        }
    }
}

/// One finished `cellkeep run --json`.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// The final JSON line (the outcome).
    pub outcome: Value,
}

impl From<Output> for Run {
    fn from(out: Output) -> Run {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let last = stdout.lines().last().unwrap_or("");
        let outcome = serde_json::from_str(last).unwrap_or(Value::Null);
        Run { code: out.status.code().unwrap_or(-1), stdout, stderr, outcome }
    }
}

impl Run {
    pub fn reason(&self) -> &str {
        self.outcome["reason"].as_str().unwrap_or("<none>")
    }

    /// The command's own stdout (everything but the outcome line).
    pub fn output(&self) -> String {
        let mut lines: Vec<&str> = self.stdout.lines().collect();
        lines.pop();
        lines.join("\n")
    }

    pub fn describe(&self) -> String {
        format!("exit {}\n--- stdout\n{}\n--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Which backend the tests expect (the VM sets `CELLKEEP_EXPECT_CGROUP=v2`).
pub fn check_backend(outcome: &Value) {
    let backend = outcome["cgroup_backend"].as_str().unwrap_or("?");
    eprintln!("cgroup backend: {backend}");
    if let Ok(want) = std::env::var("CELLKEEP_EXPECT_CGROUP") {
        assert_eq!(backend, want, "expected the {want} cgroup backend");
    }
}

/// SIGTERM a daemon the test started, wait up to `within` for it to exit, SIGKILL it after.
pub fn stop_daemon(mut child: std::process::Child, within: std::time::Duration) -> Option<std::process::ExitStatus> {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let t = std::time::Instant::now();
    while t.elapsed() < within {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok()
}

/// Remove every cell left under the cgroup root `name`, then the root (after a test's daemon).
pub fn remove_cgroup_root(name: &str) {
    if let Ok(root) = cellkeep::cgroup::CgroupRoot::open(name) {
        for id in root.list_cells().unwrap_or_default() {
            if let Ok(c) = root.open_cell(&id) {
                let _ = c.remove();
            }
        }
        let _ = root.remove_if_empty();
    }
}
