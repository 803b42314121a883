//! systemd integration of `cellkeep daemon`, with the real binary and no systemd running:
//! - socket activation through `systemd-socket-activate -l PATH` (systemd's own test launcher:
//!   it binds the socket and execs the daemon with `LISTEN_FDS=1`, `LISTEN_PID`);
//! - readiness notifications to a `NOTIFY_SOCKET` datagram socket bound by the test, as the
//!   service manager would receive them (`READY=1`, `RELOADING=1`, `STOPPING=1`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: failing loudly is the point

mod common;

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::gate;
use common::http::{call, raw};
use common::BIN;

const ACTIVATE: &str = "/usr/bin/systemd-socket-activate";

/// A temp dir with a policy dir (base + one provider), a config, a notify socket and a cgroup
/// root of its own (removed on drop).
struct Setup {
    dir: tempfile::TempDir,
    cgroup_root: String,
    notify: UnixDatagram,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::Builder::new().prefix("ck-systemd-").tempdir().expect("tempdir");
        let pol = dir.path().join("policies");
        std::fs::create_dir(&pol).expect("policy dir");
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/base.toml");
        std::fs::copy(base, pol.join("base.toml")).expect("base");
        std::fs::write(
            pol.join("echo.toml"),
            "extends = \"base\"\n[provider]\nname = \"echo\"\ncommand = [\"/bin/echo\"]\n",
        )
        .expect("echo policy");
        std::fs::write(dir.path().join("cellkeep.toml"), "shutdown_timeout_secs = 5.0\n").expect("config");
        let notify = UnixDatagram::bind(dir.path().join("notify")).expect("bind NOTIFY_SOCKET");
        notify.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        let cgroup_root = format!("ck-test-{}", uuid::Uuid::now_v7().simple());
        Setup { dir, cgroup_root, notify }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `cellkeep daemon` arguments (the socket comes from the caller).
    fn daemon_args(&self) -> Vec<String> {
        let s = |p: PathBuf| p.display().to_string();
        vec![
            "daemon".into(),
            "--config".into(),
            s(self.path("cellkeep.toml")),
            "--policies".into(),
            s(self.path("policies")),
            "--cgroup-root".into(),
            self.cgroup_root.clone(),
        ]
    }

    /// The next notification (one datagram: newline-separated `KEY=VALUE` lines).
    fn next_notification(&self) -> String {
        let mut buf = vec![0u8; 4096];
        let n = self.notify.recv(&mut buf).expect("a notification within 20 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Ok(root) = cellkeep::cgroup::CgroupRoot::open(&self.cgroup_root) {
            let _ = root.remove_if_empty();
        }
    }
}

/// Kills the process if a test fails before it ended (so nothing outlives the test).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn has_line(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

fn sigterm_and_wait(child: &mut Child) -> ExitStatus {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if t.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the daemon did not exit within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[test]
fn socket_activation_serves_the_inherited_socket_and_leaves_it_in_place() {
    gate!("socket_activation_serves_the_inherited_socket_and_leaves_it_in_place");
    if !Path::new(ACTIVATE).exists() {
        assert!(std::env::var_os("CI").is_none(), "{ACTIVATE} missing (package systemd)");
        eprintln!("SKIP: {ACTIVATE} missing (package systemd)");
        return;
    }
    let setup = Setup::new();
    let socket = setup.path("activated.sock");
    // The launcher binds the socket and, at the first connection, execs the daemon in its own
    // process (LISTEN_PID is that pid) with only the variables given by -E — lazily, as
    // systemd does with cellkeep.socket.
    let mut child = Guard(
        Command::new(ACTIVATE)
            .arg("-l")
            .arg(&socket)
            .arg("-E")
            .arg(format!("NOTIFY_SOCKET={}", setup.path("notify").display()))
            .args(["-E", "CELLKEEP_LOG=info", BIN])
            .args(setup.daemon_args())
            // A socket the daemon must NOT use: socket activation wins over --socket.
            .arg("--socket")
            .arg(setup.path("not-used.sock"))
            .stdout(Stdio::null())
            .spawn()
            .expect("start systemd-socket-activate"),
    );
    let t = Instant::now();
    while !is_socket(&socket) {
        assert!(t.elapsed() < Duration::from_secs(10), "systemd-socket-activate did not bind {}", socket.display());
        std::thread::sleep(Duration::from_millis(10));
    }

    // This connection waits in the socket's backlog while the daemon starts, then is served.
    let r = call(&socket, "GET", "/v1/health", None);
    assert_eq!(r.status, 200, "health over the activated socket: {}", r.text());
    assert_eq!(r.json()["status"], "ok", "{}", r.text());
    let ready = setup.next_notification();
    assert!(has_line(&ready, "READY=1"), "first notification: {ready:?}");
    assert!(ready.contains(&format!("STATUS=listening on {}", socket.display())), "{ready:?}");
    assert!(!setup.path("not-used.sock").exists(), "the daemon bound --socket despite socket activation");

    let status = sigterm_and_wait(&mut child.0);
    let stopping = setup.next_notification();
    assert!(has_line(&stopping, "STOPPING=1"), "after SIGTERM: {stopping:?}");
    assert_eq!(status.code(), Some(0), "daemon exit status {status:?}");
    // The socket belongs to whoever passed it (the socket unit): still there, not unlinked.
    assert!(is_socket(&socket), "the daemon removed the socket it was given");
}

#[test]
fn ready_only_once_listening_then_reloading_and_stopping() {
    gate!("ready_only_once_listening_then_reloading_and_stopping");
    let setup = Setup::new();
    let socket = setup.path("own.sock");
    let mut child = Guard(
        Command::new(BIN)
            .args(setup.daemon_args())
            .arg("--socket")
            .arg(&socket)
            .env("NOTIFY_SOCKET", setup.path("notify"))
            // Meant for another process: must be ignored (and the daemon binds its own socket).
            .env("LISTEN_FDS", "1")
            .env("LISTEN_PID", "1")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the daemon"),
    );

    let ready = setup.next_notification();
    // Connectable the moment READY=1 arrives: no retry here.
    let connected = UnixStream::connect(&socket);
    assert!(has_line(&ready, "READY=1"), "first notification: {ready:?}");
    assert!(connected.is_ok(), "READY=1 came before {} accepted connections: {connected:?}", socket.display());
    drop(connected);
    let r = call(&socket, "GET", "/v1/health", None);
    assert_eq!(r.status, 200, "{}", r.text());

    // SIGHUP: RELOADING=1 (with MONOTONIC_USEC), then READY=1 again.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.0.id() as i32), nix::sys::signal::Signal::SIGHUP)
        .expect("SIGHUP");
    let reloading = setup.next_notification();
    assert!(has_line(&reloading, "RELOADING=1"), "after SIGHUP: {reloading:?}");
    assert!(reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")), "{reloading:?}");
    let reloaded = setup.next_notification();
    assert!(has_line(&reloaded, "READY=1"), "after the reload: {reloaded:?}");
    // (Launchable providers: base.toml is abstract and not counted.)
    assert!(reloaded.contains("STATUS=policies reloaded: 1 providers"), "{reloaded:?}");

    let status = sigterm_and_wait(&mut child.0);
    let stopping = setup.next_notification();
    assert!(has_line(&stopping, "STOPPING=1"), "after SIGTERM: {stopping:?}");
    assert_eq!(status.code(), Some(0), "daemon exit status {status:?}");
    // It bound this socket itself, so it removed it.
    assert!(!socket.exists(), "the daemon left its own socket behind");
    assert!(raw(&socket, "GET", "/v1/health", b"").is_err());
}

#[test]
fn without_notify_socket_nothing_is_sent_and_the_daemon_runs() {
    gate!("without_notify_socket_nothing_is_sent_and_the_daemon_runs");
    let setup = Setup::new();
    let socket = setup.path("plain.sock");
    let mut child = Guard(
        Command::new(BIN)
            .args(setup.daemon_args())
            .arg("--socket")
            .arg(&socket)
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the daemon"),
    );
    let t = Instant::now();
    while !raw(&socket, "GET", "/v1/health", b"").is_ok_and(|r| r.status == 200) {
        assert!(t.elapsed() < Duration::from_secs(15), "the daemon did not answer within 15 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(sigterm_and_wait(&mut child.0).code(), Some(0));
    setup.notify.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 64];
    assert!(setup.notify.recv(&mut buf).is_err(), "a notification arrived without NOTIFY_SOCKET");
}

#[test]
fn socket_activation_rejects_what_is_not_one_listening_unix_stream_socket() {
    gate!("socket_activation_rejects_what_is_not_one_listening_unix_stream_socket");
    let setup = Setup::new();
    let args = setup.daemon_args().join(" ");
    // `exec` keeps the shell's pid, so LISTEN_PID=$$ names the daemon.
    for (fds, redirects, expect) in
        [("1", "3</dev/null", "fd 3 is not a Unix stream socket"), ("2", "3</dev/null 4</dev/null", "passed 2 sockets")]
    {
        let script = format!(
            "LISTEN_PID=$$ LISTEN_FDS={fds} exec {BIN} {args} --socket {} {redirects}",
            setup.path("x.sock").display()
        );
        let out = Command::new("/bin/sh").args(["-c", &script]).output().expect("run the daemon");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "LISTEN_FDS={fds}: the daemon started: {stderr}");
        assert!(stderr.contains(expect), "LISTEN_FDS={fds}: {stderr}");
        assert!(!setup.path("x.sock").exists(), "LISTEN_FDS={fds}: fell back to binding its own socket");
    }
}
