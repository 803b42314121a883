//! A daemon of our own for tests/faults.rs and tests/load.rs (the pattern of tests/daemon.rs):
//! temp socket, policy dir (base.toml + tiny providers), workspace, cgroup root, and the daemon's
//! stderr log captured in a file so the tests can assert what it said.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::http::{call, raw, Response};
use crate::common::{BIN, NOBODY};
use serde_json::{json, Value};

pub struct Daemon {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub ws: tempfile::TempDir,
    pub socket: PathBuf,
    pub cgroup_root: String,
    pub max_cells: usize,
    pub log_path: PathBuf,
}

impl Daemon {
    /// `providers`: (name, command as a TOML array, mode, extra TOML).
    pub fn start(max_cells: usize, extra_config: &str, providers: &[(&str, &str, &str, &str)]) -> Daemon {
        let dir = tempfile::Builder::new().prefix("ck-daemon-").tempdir().expect("tempdir");
        let ws = tempfile::Builder::new().prefix("ck-ws-").tempdir().expect("workspace");
        std::os::unix::fs::chown(ws.path(), Some(NOBODY), Some(NOBODY)).expect("chown");
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        let pol = dir.path().join("policies");
        std::fs::create_dir(&pol).expect("policy dir");
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/base.toml");
        std::fs::copy(base, pol.join("base.toml")).expect("base");
        for (name, cmd, mode, extra) in providers {
            let text = format!(
                "extends = \"base\"\n[provider]\nname = \"{name}\"\ncommand = {cmd}\nmode = \"{mode}\"\n{extra}\n"
            );
            std::fs::write(pol.join(format!("{name}.toml")), text).expect("policy");
        }
        let config = dir.path().join("cellkeep.toml");
        std::fs::write(
            &config,
            format!("socket_mode = \"0666\"\ngrace_secs = 1.0\nshutdown_timeout_secs = 5.0\n{extra_config}\n"),
        )
        .expect("config");
        let socket = dir.path().join("cellkeep.sock");
        let log_path = dir.path().join("daemon.log");
        let cgroup_root = format!("ck-test-{}", uuid::Uuid::now_v7().simple());
        let mut d = Daemon { child: None, dir, ws, socket, cgroup_root, max_cells, log_path };
        d.launch();
        d
    }

    pub fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    /// Start (or restart) the daemon process; its stderr is appended to the log file.
    pub fn launch(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).expect("log file");
        let child = Command::new(BIN)
            .args(["daemon", "--config"])
            .arg(self.dir.path().join("cellkeep.toml"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--policies")
            .arg(self.policy_dir())
            .args(["--cgroup-root", &self.cgroup_root, "--max-cells", &self.max_cells.to_string()])
            .env("CELLKEEP_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start the daemon");
        self.child = Some(child);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(15) {
            if raw(&self.socket, "GET", "/v1/health", b"").map(|r| r.status == 200).unwrap_or(false) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon did not answer on {} within 15 s\n{}", self.socket.display(), self.log());
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("daemon running").id() as i32
    }

    /// The daemon's log so far, ANSI escapes removed.
    pub fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log_path).unwrap_or_default())
    }

    /// Wait (up to `within`) until the log has a line containing every one of `parts`; that line.
    pub fn wait_log(&self, parts: &[&str], within: Duration) -> String {
        let t = Instant::now();
        loop {
            if let Some(l) = self.log().lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return l.to_owned();
            }
            if t.elapsed() > within {
                panic!("no log line with {parts:?} within {within:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Open fds of the daemon process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map(|d| d.count()).unwrap_or(0)
    }

    /// Wait until the daemon's fd count is at most `target` (up to `within`); the last count.
    pub fn settle_fds(&self, target: usize, within: Duration) -> usize {
        let t = Instant::now();
        loop {
            let n = self.fd_count();
            if n <= target || t.elapsed() > within {
                return n;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn cwd(&self) -> String {
        self.ws.path().display().to_string()
    }

    pub fn spawn(&self, provider: &str) -> Value {
        let r = call(&self.socket, "POST", "/v1/cells", Some(&json!({"provider": provider, "cwd": self.cwd()})));
        assert_eq!(r.status, 201, "spawn {provider}: {}", r.text());
        r.json()
    }

    pub fn send(&self, id: &str, command: &str, timeout_ms: u64) -> Response {
        call(
            &self.socket,
            "POST",
            &format!("/v1/cells/{id}/commands"),
            Some(&json!({"command": command, "timeout_ms": timeout_ms})),
        )
    }

    pub fn health(&self) -> Value {
        let r = call(&self.socket, "GET", "/v1/health", None);
        assert_eq!(r.status, 200, "health: {}", r.text());
        r.json()
    }

    pub fn root(&self) -> cellkeep::cgroup::CgroupRoot {
        cellkeep::cgroup::CgroupRoot::open(&self.cgroup_root).expect("cgroup root")
    }

    pub fn cells_on_disk(&self) -> Vec<String> {
        self.root().list_cells().unwrap_or_default()
    }

    /// Every cgroup directory of every cell under our root, in every hierarchy.
    pub fn cell_dirs(&self) -> Vec<PathBuf> {
        let root = self.root();
        let mut dirs = Vec::new();
        for id in root.list_cells().unwrap_or_default() {
            if let Ok(c) = root.open_cell(&id) {
                dirs.extend(c.paths().into_iter().filter(|p| p.exists()));
            }
        }
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// SIGKILL the daemon and reap it.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("daemon");
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }

    /// SIGTERM and wait for exit; the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        crate::common::stop_daemon(self.child.take()?, Duration::from_secs(20))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        crate::common::remove_cgroup_root(&self.cgroup_root);
    }
}

pub fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap_or_else(|| panic!("no id in {v}")).to_owned()
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A live (not zombie) process.
pub fn alive(pid: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    pid > 0 && !matches!(state, Some('Z') | Some('X') | None)
}
