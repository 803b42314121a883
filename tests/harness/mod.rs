//! The one daemon harness of the integration tests (`mod harness;` beside `mod common;`): a real
//! `cellkeep daemon` of the test's own, with a state dir (config, `policies/` with a copy of the
//! shipped base.toml or of every shipped policy, plus the test's providers, the socket, and the
//! daemon's stderr log captured in a file so tests can assert what it said), a workspace owned
//! by the cell's uid, and a cgroup root of its own, all removed on drop.
//!
//! ```ignore
//! let d = Daemon::builder()
//!     .max_cells(20)
//!     .provider("cat", "[\"/bin/cat\"]", "session", "")
//!     .provider("sh", "[\"/bin/sh\", \"-c\"]", "oneshot", "[limits]\ntmp_size = \"1M\"\n")
//!     .config("max_connections = 64")
//!     .start();
//! ```
//!
//! Defaults: state in a temp dir, socket `cellkeep.sock` in it, config `socket_mode = "0666"`,
//! `grace_secs = 1.0`, `shutdown_timeout_secs = 5.0`; `--max-cells` left to the daemon;
//! `CELLKEEP_LOG=info`; up within 15 s. `Daemon::start(max_cells, extra_config, providers)` is
//! the short form. Each test file keeps what is its own (providers, scripts, helpers; an
//! `impl Daemon` block of its own works, the harness is part of the same crate). On a failing
//! test, drop prints the tail of the daemon's log.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::http::{call, raw, Response};
use crate::common::{BIN, NOBODY};
use serde_json::{json, Value};

/// How a [`Daemon`] is made; from [`Daemon::builder`], ended by [`Builder::start`].
pub struct Builder {
    max_cells: Option<usize>,
    socket_mode: Option<String>,
    grace_secs: f64,
    shutdown_timeout_secs: f64,
    config: String,
    shipped_policies: bool,
    policies: Vec<(String, String)>,
    state_parent: PathBuf,
    prefix: String,
    socket: PathBuf,
    env: Vec<(String, String)>,
    log_level: String,
    ready_within: Duration,
    marker: String,
    wrapper: Vec<String>,
    bin: String,
}

impl Builder {
    /// `--max-cells N` (unset: the daemon's default).
    pub fn max_cells(mut self, n: usize) -> Builder {
        self.max_cells = Some(n);
        self
    }

    /// `socket_mode` in the config; `None` leaves it out (the shipped default, 0660).
    pub fn socket_mode(mut self, mode: Option<&str>) -> Builder {
        self.socket_mode = mode.map(str::to_owned);
        self
    }

    pub fn grace_secs(mut self, secs: f64) -> Builder {
        self.grace_secs = secs;
        self
    }

    pub fn shutdown_timeout_secs(mut self, secs: f64) -> Builder {
        self.shutdown_timeout_secs = secs;
        self
    }

    /// More TOML for the config file (after the settings above).
    pub fn config(mut self, extra_toml: &str) -> Builder {
        self.config.push_str(extra_toml);
        self.config.push('\n');
        self
    }

    /// Copy every shipped policy (`policies/*.toml`), not just base.toml.
    pub fn shipped_policies(mut self) -> Builder {
        self.shipped_policies = true;
        self
    }

    /// `policies/<name>.toml` = `extends = "base"`, `[provider]` with `name`, `command` (a TOML
    /// array), `mode`, then `extra` (more `[provider]` keys, then any tables).
    pub fn provider(self, name: &str, command: &str, mode: &str, extra: &str) -> Builder {
        let text = format!(
            "extends = \"base\"\n[provider]\nname = \"{name}\"\ncommand = {command}\nmode = \"{mode}\"\n{extra}\n"
        );
        self.policy(name, &text)
    }

    /// `policies/<name>.toml` with exactly `text`.
    pub fn policy(mut self, name: &str, text: &str) -> Builder {
        self.policies.push((format!("{name}.toml"), text.to_owned()));
        self
    }

    /// The state dir's name: `prefix` + random (default `ck-daemon-`).
    pub fn prefix(mut self, prefix: &str) -> Builder {
        self.prefix = prefix.to_owned();
        self
    }

    /// Where the state dir is made (default: the temp dir).
    pub fn state_in(mut self, parent: &str) -> Builder {
        self.state_parent = PathBuf::from(parent);
        self
    }

    /// The socket's path inside the state dir (default `cellkeep.sock`).
    pub fn socket(mut self, relative: &str) -> Builder {
        self.socket = PathBuf::from(relative);
        self
    }

    /// A variable in the daemon's environment (kept in [`Daemon::env`]).
    pub fn env(mut self, key: &str, value: &str) -> Builder {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// `CELLKEEP_LOG` (default `info`).
    pub fn log_level(mut self, level: &str) -> Builder {
        self.log_level = level.to_owned();
        self
    }

    /// How long to wait for the first answer to `GET /v1/health` (default 15 s).
    pub fn ready_within(mut self, within: Duration) -> Builder {
        self.ready_within = within;
        self
    }

    /// Run the debug build of the daemon, whose test hooks (`#[cfg(debug_assertions)]`, e.g.
    /// `CELLKEEP_TEST_ACTIVATION_GATE`) the test relies on, even where the suite runs the
    /// release build (`scripts/vm-test.sh --release` keeps the debug one at CELLKEEP_DEBUG_BIN).
    pub fn debug_build(mut self) -> Builder {
        self.bin = std::env::var("CELLKEEP_DEBUG_BIN").unwrap_or_else(|_| BIN.to_owned());
        assert!(
            std::env::var_os("VMTEST_GUEST").is_none() || std::env::var_os("CELLKEEP_DEBUG_BIN").is_some(),
            "in the VM this test needs CELLKEEP_DEBUG_BIN (scripts/vm-test.sh sets it): the release build has no test hooks"
        );
        self
    }

    /// Start the daemon through `wrapper` (a program and its arguments that ends by exec'ing
    /// the rest of its command line, e.g. `tests/fixtures/bin/no-openat2`).
    pub fn wrapper(mut self, argv: &[&str]) -> Builder {
        self.wrapper = argv.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// A string the test puts in its payloads' command lines, kept as [`Daemon::marker`] to
    /// look for processes left on the host ([`host_has_process`]).
    pub fn marker(mut self, marker: &str) -> Builder {
        self.marker = marker.to_owned();
        self
    }

    /// Write the state dir and start the daemon; returns once it answers.
    pub fn start(self) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix(&self.prefix)
            .tempdir_in(&self.state_parent)
            .unwrap_or_else(|e| panic!("state dir under {}: {e}", self.state_parent.display()));
        let ws = tempfile::Builder::new().prefix("ck-ws-").tempdir().expect("workspace");
        std::os::unix::fs::chown(ws.path(), Some(NOBODY), Some(NOBODY)).expect("chown workspace");
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        let pol = dir.path().join("policies");
        std::fs::create_dir(&pol).expect("policy dir");
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        if self.shipped_policies {
            for e in std::fs::read_dir(&shipped).expect("read policies/") {
                let p = e.expect("dir entry").path();
                if p.extension().is_some_and(|x| x == "toml") {
                    std::fs::copy(&p, pol.join(p.file_name().expect("file name"))).expect("copy policy");
                }
            }
        } else {
            std::fs::copy(shipped.join("base.toml"), pol.join("base.toml")).expect("copy base.toml");
        }
        for (file, text) in &self.policies {
            std::fs::write(pol.join(file), text).unwrap_or_else(|e| panic!("policy {file}: {e}"));
        }
        let mut config = String::new();
        if let Some(mode) = &self.socket_mode {
            config.push_str(&format!("socket_mode = \"{mode}\"\n"));
        }
        // Output spool files in the state dir (removed with it), unless the test says where.
        if !self.config.contains("spool_dir") {
            config.push_str(&format!("spool_dir = {:?}\n", dir.path().join("spool").display().to_string()));
        }
        config.push_str(&format!(
            "grace_secs = {:?}\nshutdown_timeout_secs = {:?}\n{}",
            self.grace_secs, self.shutdown_timeout_secs, self.config
        ));
        std::fs::write(dir.path().join("cellkeep.toml"), config).expect("config");
        let socket = dir.path().join(&self.socket);
        let log_path = dir.path().join("daemon.log");
        let cgroup_root = format!("ck-test-{}", uuid::Uuid::now_v7().simple());
        let mut d = Daemon {
            child: None,
            dir,
            ws,
            socket,
            cgroup_root,
            max_cells: self.max_cells,
            log_path,
            marker: self.marker,
            env: self.env,
            log_level: self.log_level,
            ready_within: self.ready_within,
            wrapper: self.wrapper,
            bin: self.bin,
        };
        d.launch();
        d
    }
}

pub struct Daemon {
    pub child: Option<Child>,
    /// The state dir: `cellkeep.toml`, `policies/`, the socket (by default), `daemon.log`.
    pub dir: tempfile::TempDir,
    pub ws: tempfile::TempDir,
    pub socket: PathBuf,
    pub cgroup_root: String,
    pub max_cells: Option<usize>,
    pub log_path: PathBuf,
    /// See [`Builder::marker`] (empty unless set).
    pub marker: String,
    /// The extra variables in the daemon's environment ([`Builder::env`]).
    pub env: Vec<(String, String)>,
    log_level: String,
    ready_within: Duration,
    wrapper: Vec<String>,
    bin: String,
}

impl Daemon {
    pub fn builder() -> Builder {
        Builder {
            max_cells: None,
            socket_mode: Some("0666".to_owned()),
            grace_secs: 1.0,
            shutdown_timeout_secs: 5.0,
            config: String::new(),
            shipped_policies: false,
            policies: Vec::new(),
            state_parent: std::env::temp_dir(),
            prefix: "ck-daemon-".to_owned(),
            socket: PathBuf::from("cellkeep.sock"),
            env: Vec::new(),
            log_level: "info".to_owned(),
            ready_within: Duration::from_secs(15),
            marker: String::new(),
            wrapper: Vec::new(),
            bin: BIN.to_owned(),
        }
    }

    /// The short form: `providers` are (name, command as a TOML array, mode, extra TOML).
    pub fn start(max_cells: usize, extra_config: &str, providers: &[(&str, &str, &str, &str)]) -> Daemon {
        let mut b = Daemon::builder().max_cells(max_cells).config(extra_config);
        for (name, cmd, mode, extra) in providers {
            b = b.provider(name, cmd, mode, extra);
        }
        b.start()
    }

    pub fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    /// Start (or restart) the daemon process; its stderr is appended to the log file.
    pub fn launch(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).expect("log file");
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.args(["daemon", "--config"])
            .arg(self.dir.path().join("cellkeep.toml"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--policies")
            .arg(self.policy_dir())
            .args(["--cgroup-root", &self.cgroup_root]);
        if let Some(n) = self.max_cells {
            cmd.args(["--max-cells", &n.to_string()]);
        }
        let child = cmd
            .env("CELLKEEP_LOG", &self.log_level)
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start the daemon");
        self.child = Some(child);
        let t = Instant::now();
        while t.elapsed() < self.ready_within {
            if raw(&self.socket, "GET", "/v1/health", b"").map(|r| r.status == 200).unwrap_or(false) {
                eprintln!("daemon up in {:?}", t.elapsed());
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon did not answer on {} within {:?}\n{}", self.socket.display(), self.ready_within, self.log());
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
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
        self.fd_targets().iter().filter(|t| !is_spool(t)).count()
    }

    /// The daemon's open retained-output spool files: held by design, one per listed cell
    /// (ended cells included, until they are forgotten), so [`Daemon::fd_count`] leaves them out.
    pub fn spool_fds(&self) -> usize {
        self.fd_targets().iter().filter(|t| is_spool(t)).count()
    }

    fn fd_targets(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fd", self.pid())) else { return Vec::new() };
        dir.filter_map(|e| e.ok())
            .map(|e| std::fs::read_link(e.path()).map(|t| t.display().to_string()).unwrap_or_default())
            .collect()
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

    /// Start a cell of `provider` in the workspace (must answer 201); its info.
    pub fn spawn(&self, provider: &str) -> Value {
        self.spawn_request(provider, json!({"provider": provider, "cwd": self.cwd()}))
    }

    /// The same with extra `args`.
    pub fn spawn_with(&self, provider: &str, args: &[&str]) -> Value {
        self.spawn_request(provider, json!({"provider": provider, "cwd": self.cwd(), "args": args}))
    }

    fn spawn_request(&self, provider: &str, body: Value) -> Value {
        let r = call(&self.socket, "POST", "/v1/cells", Some(&body));
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
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(200)..].join("\n");
            let shown = lines.len().min(200);
            eprintln!("--- the daemon's log ({}), last {shown} lines:\n{tail}", self.log_path.display());
        }
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

/// Some process on the host (other than this test) has `needle` in its command line.
pub fn host_has_process(needle: &str) -> bool {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy() != me)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|c| String::from_utf8_lossy(&c).contains(needle))
}

/// A spool file of the daemon's (under a `spool` directory).
fn is_spool(target: &str) -> bool {
    target.contains("/spool/")
}
