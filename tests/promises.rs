//! Issue 16, "the pool keeps its promises": binary-safe one-shot output, results that carry
//! usage and events, ended cells that keep their usage and answer with the right codes, idle
//! reaping that leaves running one-shots alone with one visible precedence, health scoped to
//! the caller, and errors logged by who is at fault. (The reply-crossing stress test is in
//! `tests/load.rs`; `cellkeep exec` as a remote shell is in `tests/exec.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: failing loudly is the point

mod common;
mod harness;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use common::gate;
use common::http::call;
use common::BIN;
use harness::{id_of, Builder, Daemon};
use serde_json::{json, Value};

fn daemon() -> Builder {
    Daemon::builder()
        .max_cells(10)
        .provider("sh", "[\"/bin/sh\", \"-c\"]", "oneshot", "")
        .provider("cat", "[\"/bin/cat\"]", "session", "")
        .provider("quiet", "[\"/bin/sleep\"]", "oneshot", "[limits]\nidle_timeout = \"200ms\"\n")
        .provider("open", "[\"/bin/cat\"]", "session", "[access]\nuids = [0, 65534]\n")
}

fn sh(d: &Daemon, script: &str, timeout_ms: u64) -> common::http::Response {
    call(
        &d.socket,
        "POST",
        "/v1/providers/sh/commands",
        Some(&json!({"command": script, "cwd": d.cwd(), "timeout_ms": timeout_ms})),
    )
}

/// Send `command` to session `id` from a thread of its own (a client whose answer comes
/// later); join it for the answer.
fn send_in_background(
    d: &Daemon,
    id: &str,
    command: &str,
    timeout_ms: u64,
) -> std::thread::JoinHandle<common::http::Response> {
    let (sock, path) = (d.socket.clone(), format!("/v1/cells/{id}/commands"));
    let body = json!({"command": command, "timeout_ms": timeout_ms});
    std::thread::spawn(move || call(&sock, "POST", &path, Some(&body)))
}

/// POST `body` to `path` and hang up `linger` later, before the answer: a client that left.
fn post_and_leave(d: &Daemon, path: &str, body: &Value, linger: Duration) {
    use std::io::Write;
    let body = body.to_string();
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).expect("connect");
    write!(s, "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len()).expect("request");
    std::thread::sleep(linger);
}

fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or("")).expect("base64")
}

// Finding 2: bytes that are not UTF-8 come back exact as stdout_b64/stderr_b64 (they came back
// as U+FFFD before), and `cellkeep exec --json`-less output writes the exact bytes.
#[test]
fn oneshot_output_is_binary_safe() {
    gate!("oneshot_output_is_binary_safe");
    let d = daemon().start();
    let r = sh(&d, r"printf '\377\376\0abc'; printf '\200x' >&2", 10_000);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(b64(&v["stdout_b64"]), b"\xff\xfe\0abc", "{v}");
    assert_eq!(b64(&v["stderr_b64"]), b"\x80x", "{v}");
    assert_eq!(v["stdout"], "", "{v}");
    // UTF-8 output stays plain text.
    let v = sh(&d, "printf 'h\\303\\251'", 10_000).json();
    assert_eq!(v["stdout"], "hé", "{v}");
    assert!(v.get("stdout_b64").is_none(), "{v}");
    // The CLI writes the bytes as they were.
    let out = Command::new(BIN)
        .args(["exec", "sh", r"printf '\377\376\0abc'", "--cwd", &d.cwd(), "--socket"])
        .arg(&d.socket)
        .output()
        .expect("cellkeep exec");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"\xff\xfe\0abc");
}

// Finding 4: one-shot and session answers carry usage and events; a timed-out one-shot still
// reports what it printed and how it ended.
#[test]
fn results_carry_usage_and_events() {
    gate!("results_carry_usage_and_events");
    let d = daemon().start();
    let v = sh(&d, "echo hi; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done", 30_000).json();
    assert_eq!(v["stdout"], "hi\n", "{v}");
    assert!(v["usage"]["cpu_usage_usec"].as_u64().unwrap_or(0) > 0, "no CPU usage: {v}");
    assert!(v["events"].is_object(), "{v}");
    let r = sh(&d, "echo before; sleep 10", 1000);
    assert_eq!(r.code(), "timeout", "{}", r.text());
    let res = &r.json()["result"];
    assert_eq!(res["stdout"], "before\n", "{}", r.text());
    assert_eq!(res["exit"]["reason"], "timed_out", "{}", r.text());
    assert!(res["usage"].is_object(), "{}", r.text());
    let id = id_of(&d.spawn("cat"));
    let v = d.send(&id, "hello", 10_000).json();
    assert_eq!(v["stdout"], "hello", "{v}");
    assert!(v["usage"]["pids_current"].as_u64().unwrap_or(0) > 0, "{v}");
}

// Finding 4: an ended cell that is still listed keeps its last usage in health, and killing it
// again says it already ended (409), not that it does not exist.
#[test]
fn ended_cells_keep_usage_and_answer_already_ended() {
    gate!("ended_cells_keep_usage_and_answer_already_ended");
    let d = daemon().start();
    let id = id_of(&d.spawn("cat"));
    assert_eq!(d.send(&id, "x", 10_000).status, 200);
    let r = call(&d.socket, "DELETE", &format!("/v1/cells/{id}"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let h = call(&d.socket, "GET", &format!("/v1/cells/{id}/health"), None).json();
    assert_eq!(h["state"], "exited", "{h}");
    assert!(h["usage"]["cpu_usage_usec"].as_u64().unwrap_or(0) > 0, "ended cell shows zeros: {h}");
    let r = call(&d.socket, "DELETE", &format!("/v1/cells/{id}"), None);
    assert_eq!((r.status, r.code().as_str()), (409, "already_ended"), "{}", r.text());
    assert!(r.json()["message"].as_str().unwrap_or("").contains("terminated"), "{}", r.text());
}

// Finding 5: a quiet one-shot (no output) started with POST /v1/cells runs past its policy's
// idle timeout: running is working.
#[test]
fn quiet_oneshot_is_not_reaped_as_idle() {
    gate!("quiet_oneshot_is_not_reaped_as_idle");
    let d = daemon().start();
    let id = id_of(&d.spawn_with("quiet", &["1.5"]));
    let t = Instant::now();
    loop {
        let info = call(&d.socket, "GET", &format!("/v1/cells/{id}"), None).json();
        if info["state"] == "exited" {
            assert_eq!(info["exit"]["reason"], "exited", "{info}");
            assert_eq!(info["exit"]["code"], 0, "{info}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "never ended: {info}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

// Finding 5: the daemon's idle_timeout_secs applies to providers on the shipped base (which no
// longer sets one); a policy's own idle_timeout wins; health shows the value and its source.
#[test]
fn idle_timeout_precedence_is_visible() {
    gate!("idle_timeout_precedence_is_visible");
    let d = daemon()
        .config("idle_timeout_secs = 0.4\n")
        .provider("idle", "[\"/bin/cat\"]", "session", "[limits]\nidle_timeout = \"30s\"\n")
        .start();
    let cat = id_of(&d.spawn("cat"));
    let idle = id_of(&d.spawn("idle"));
    let h = call(&d.socket, "GET", &format!("/v1/cells/{cat}/health"), None).json();
    assert_eq!(h["limits"]["idle_timeout_ms"], 400, "{h}");
    assert_eq!(h["limits"]["idle_timeout_source"], "daemon", "{h}");
    let h = call(&d.socket, "GET", &format!("/v1/cells/{idle}/health"), None).json();
    assert_eq!(h["limits"]["idle_timeout_ms"], 30_000, "{h}");
    assert_eq!(h["limits"]["idle_timeout_source"], "policy", "{h}");
    let t = Instant::now();
    loop {
        let info = call(&d.socket, "GET", &format!("/v1/cells/{cat}"), None).json();
        if info["state"] == "exited" {
            assert_eq!(info["exit"]["reason"], "idle", "{info}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "the daemon's idle timeout had no effect: {info}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(call(&d.socket, "GET", &format!("/v1/cells/{idle}"), None).json()["state"], "running");
}

// Finding 6: a non-admin caller's /v1/health counts only its own cells and lists only the
// providers it may use.
#[test]
fn health_is_scoped_to_the_caller() {
    gate!("health_is_scoped_to_the_caller");
    let d = daemon().start();
    d.spawn("cat");
    d.spawn("cat");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN, "--socket"])
        .arg(&d.socket)
        .args(["--json", "health"])
        .output()
        .expect("setpriv");
    assert!(out.status.success(), "{out:?}");
    let h: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(h["cells_running"], 0, "{h}");
    assert_eq!(h["providers"], json!(["open"]), "{h}");
    let all = d.health();
    assert_eq!(all["cells_running"], 2, "{all}");
    assert!(all["providers"].as_array().map_or(0, Vec::len) >= 4, "{all}");
}

// Finding 6: errors the client asked for (a timeout it set, an unknown cell) are not logged
// at ERROR.
#[test]
fn client_caused_errors_are_not_logged_as_errors() {
    gate!("client_caused_errors_are_not_logged_as_errors");
    let d = daemon().start();
    assert_eq!(sh(&d, "sleep 5", 300).code(), "timeout");
    assert_eq!(call(&d.socket, "GET", "/v1/cells/nope", None).code(), "not_found");
    d.wait_log(&["timed out"], Duration::from_secs(5));
    let log = d.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "logged at ERROR: {errors:?}");
}

/// Send raw bytes on a fresh connection; the whole answer (the daemon closes after an error).
fn raw_exchange(d: &Daemon, bytes: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

// Finding 6: errors the HTTP layer produces (a malformed request, a body over the limit, a
// header section too large) come as `{code, message}` JSON like every other error.
#[test]
fn http_layer_errors_are_json() {
    gate!("http_layer_errors_are_json");
    let d = daemon().config("max_body_bytes = 1024\n").start();
    let big_header = format!("GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(1 << 20));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("malformed request line", b"GARBAGE\r\n\r\n".to_vec(), "400"),
        ("bad header", b"GET /v1/health HTTP/1.1\r\nHost x\r\n\r\n".to_vec(), "400"),
        (
            "body over the limit",
            format!(
                "POST /v1/cells HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n{}",
                " ".repeat(5000)
            )
            .into_bytes(),
            "413",
        ),
        ("header too large", big_header.into_bytes(), "431"),
    ];
    for (what, bytes, status) in cases {
        let answer = raw_exchange(&d, &bytes);
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{what}: {answer:?}");
        assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{what}: {head}");
        let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: body {body:?}: {e}"));
        assert_eq!(v["code"], "bad_request", "{what}: {v}");
        assert!(!v["message"].as_str().unwrap_or("").is_empty(), "{what}: {v}");
    }
    assert_eq!(d.health()["status"], "ok");
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).env_remove("CELLKEEP_SOCKET").output().expect("cellkeep")
}

// From the seventh API review: `cellkeep send --timeout 0` (seconds) got the daemon's
// "timeout_ms must be at least 1", in the wire's unit; the CLI says it in its own.
#[test]
fn a_zero_timeout_is_refused_in_seconds() {
    for args in [&["send", "c0ffee", "x", "--timeout", "0"][..], &["exec", "sh", "x", "--timeout", "0.0001"][..]] {
        let out = Command::new(BIN)
            .args(args)
            .env("CELLKEEP_SOCKET", "/nonexistent/cellkeep.sock")
            .output()
            .expect("cellkeep");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("--timeout") && err.contains("0.001 seconds") && !err.contains("timeout_ms"),
            "{args:?}: {err}"
        );
    }
}

// Finding 7: every argument of every command (but `policy`, reworked elsewhere) has help, with
// units for durations; --socket and --json appear only where they work; one exit status (1)
// for every CLI error, clap's usage errors included.
#[test]
fn cli_help_options_and_exit_status() {
    let commands = [
        "run", "daemon", "doctor", "spawn", "session", "send", "exec", "ps", "get", "kill", "health", "logs",
        "cleanup", "shutdown",
    ];
    for c in commands {
        let help = String::from_utf8(cli(&[c, "--help"]).stdout).expect("utf8");
        let mut section = false;
        for line in help.lines() {
            if line == "Arguments:" || line == "Options:" {
                section = true;
                continue;
            }
            if line.is_empty() {
                section = false;
                continue;
            }
            if section {
                let parts: Vec<&str> = line.trim().splitn(2, "  ").filter(|p| !p.trim().is_empty()).collect();
                assert_eq!(parts.len(), 2, "{c}: no help for {line:?}\n{help}");
            }
        }
        for unit in ["--timeout <SECONDS>", "--wait <SECONDS>", "--from <BYTES>"] {
            let flag = unit.split(' ').next().unwrap_or("");
            if help.contains(&format!("{flag} ")) {
                assert!(help.contains(unit), "{c}: {flag} without its unit\n{help}");
            }
        }
        let uses_socket = !["run", "doctor"].contains(&c);
        assert_eq!(help.contains("--socket"), uses_socket, "{c}: --socket offered wrongly\n{help}");
        assert_eq!(help.contains("--json"), c != "daemon", "{c}: --json offered wrongly\n{help}");
    }
    for bad in [&["bogus"][..], &["ps", "--bogus"], &["kill"], &["--json", "daemon"], &["--socket", "/x", "doctor"]] {
        let out = cli(bad);
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {out:?}");
    }
    assert_eq!(cli(&["--help"]).status.code(), Some(0));
    let out = cli(&["ps", "--socket", "/nonexistent/ck.sock"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cellkeep: error: unavailable"), "{out:?}");
}

// From the new-user review: the policy commands take --json after the subcommand too (as the
// README and --help say), and a client command whose stdout is closed (`… | head`) ends
// quietly, as Unix filters do, instead of panicking with a backtrace.
#[test]
fn cli_json_after_policy_subcommands_and_a_closed_stdout() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    for args in [
        &["policy", "check", "--json", dir][..],
        &["policy", "--json", "show", "base", "--dir", dir],
        &["policy", "score", "agent", "--dir", dir, "--json"],
        &["policy", "diff", "base", "agent", "--dir", dir, "--json"],
    ] {
        let out = cli(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(serde_json::from_slice::<Value>(&out.stdout).is_ok(), "{args:?}: not JSON");
    }
    // stdout: a pipe whose reading end is already closed.
    let (reader, writer) = nix::unistd::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(BIN)
        .args(["policy", "show", "base", "--dir", dir])
        .stdout(std::process::Stdio::from(writer))
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("cellkeep");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "a closed stdout made the CLI panic: {err}");
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&out.status), Some(libc::SIGPIPE), "{out:?}");
}

// Finding 7: `cellkeep run --cgroup-root X` removes the root X it created, in every hierarchy
// (v1: memory, cpu, cpuacct, pids, freezer), and keeps a root it found.
#[test]
fn run_removes_the_cgroup_root_it_created() {
    gate!("run_removes_the_cgroup_root_it_created");
    let w = common::World::new();
    let policy = w.policy("t", "", "");
    let name = format!("ck-h16-{}", std::process::id());
    let run = || {
        Command::new(BIN)
            .args(["run", "--cgroup-root", &name, "--policy"])
            .arg(&policy)
            .arg("--cwd")
            .arg(w.ws.path())
            .args(["--", "/bin/true"])
            .output()
            .expect("cellkeep run")
    };
    let out = run();
    assert!(out.status.success(), "{out:?}");
    let left = Command::new("find").args(["/sys/fs/cgroup", "-name", &name, "-type", "d"]).output().expect("find");
    let left = String::from_utf8_lossy(&left.stdout).into_owned();
    assert!(left.trim().is_empty(), "cgroup root left behind:\n{left}");
    // One that existed before the run stays.
    let root = cellkeep::cgroup::CgroupRoot::open(&name).expect("open root");
    let out = run();
    assert!(out.status.success(), "{out:?}");
    assert!(root.paths().iter().all(|p| p.exists()), "a root the run did not create was removed");
    root.remove_if_empty().expect("remove root");
}

// Finding 1, step by step: a client sends a command and leaves before the reply; the reply (held
// back until the test creates a file) is logged and kept in the output stream, and the next
// command gets its own reply, not the abandoned one.
#[test]
fn abandoned_reply_is_logged_and_kept() {
    gate!("abandoned_reply_is_logged_and_kept");
    let gated =
        "[\"/bin/sh\", \"-c\", \"while read -r l; do while [ ! -e go ]; do sleep 0.02; done; echo \\\"$l\\\"; done\"]";
    let d = daemon().provider("gated", gated, "session", "").start();
    let id = id_of(&d.spawn("gated"));
    // Room for the daemon to route the request; the reply cannot come before `go` exists.
    let path = format!("/v1/cells/{id}/commands");
    post_and_leave(&d, &path, &json!({"command": "first", "timeout_ms": 30000}), Duration::from_millis(500));
    std::fs::write(d.ws.path().join("go"), b"").expect("go");
    let r = d.send(&id, "second", 30_000);
    assert_eq!(r.json()["stdout"], "second", "{}", r.text());
    d.wait_log(&["reply to a command whose client left", &id], Duration::from_secs(10));
    let out = call(&d.socket, "GET", &format!("/v1/cells/{id}/output?from=0"), None).text();
    assert!(out.contains("\"first\\n") || out.contains("first\\nsecond"), "{out}");
}

// A session whose program closes its stdout (and lives on) can never answer again: the command
// is answered at once with the session's end (409), not at its own timeout, and the session is
// not reused. (From the pool review: the cell's pid 1 and helper kept copies of the pipe, so
// the daemon saw no end of file and the command waited out its whole timeout.)
#[test]
fn a_session_that_closes_stdout_is_ended_at_once() {
    gate!("a_session_that_closes_stdout_is_ended_at_once");
    let closer =
        "[\"/bin/sh\", \"-c\", \"while read -r l; do [ \\\"$l\\\" = close ] && exec >&-; echo \\\"$l\\\"; done\"]";
    let d = daemon().provider("closer", closer, "session", "[limits]\nwall_time = \"30s\"\n").start();
    let id = id_of(&d.spawn("closer"));
    assert_eq!(d.send(&id, "hi", 10_000).json()["stdout"], "hi");
    let t = Instant::now();
    let r = d.send(&id, "close", 10_000);
    let took = t.elapsed();
    // It can never answer: ended (a moment to exit by itself, then killed), not waited out.
    // (Only the program holds the cell's stdout: pid 1 and the helper drop their copies.)
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(took < Duration::from_secs(4), "answered after {took:?}: it waited for the command's 10 s timeout");
    let next = d.send(&id, "again", 1000);
    assert_eq!(next.status, 409, "the broken session must not take commands: {}", next.text());
}

// A command that timed out takes its session with it before the next command is written: its
// late output can never be framed as the next command's reply (the reply is echoed 0–25 ms
// after the timeout, while the kill is under way; 25 rounds).
#[test]
fn a_timed_out_commands_reply_never_reaches_the_next() {
    gate!("a_timed_out_commands_reply_never_reaches_the_next");
    let late = "[\"/bin/sh\", \"-c\", \"while read -r l; do sleep 0.3; echo \\\"$l\\\"; done\"]";
    let d = daemon().provider("late", late, "session", "").start();
    for round in 0..25u64 {
        let id = id_of(&d.spawn("late"));
        let (sock, first) = (d.socket.clone(), id.clone());
        let a = std::thread::spawn(move || {
            call(
                &sock,
                "POST",
                &format!("/v1/cells/{first}/commands"),
                Some(&json!({"command": "A", "timeout_ms": 275 + round})),
            )
        });
        std::thread::sleep(Duration::from_millis(100));
        let b = d.send(&id, "B", 5000);
        let a = a.join().expect("thread");
        assert_eq!(a.status, 504, "round {round}: {}", a.text());
        assert_ne!(
            b.json()["stdout"],
            "A",
            "round {round}: the timed-out command's reply reached the next: {}",
            b.text()
        );
        assert_eq!(b.status, 409, "round {round}: {}", b.text());
    }
}

// `DELETE ?force=true` while a graceful stop waits out its grace period kills at once.
#[test]
fn force_cuts_a_graceful_stop_short() {
    gate!("force_cuts_a_graceful_stop_short");
    let stubborn = "[\"/bin/sh\", \"-c\", \"trap '' TERM; while :; do sleep 0.05; done\"]";
    let d = daemon().grace_secs(20.0).provider("stubborn", stubborn, "session", "").start();
    let id = id_of(&d.spawn("stubborn"));
    let (sock, cell) = (d.socket.clone(), id.clone());
    let t = Instant::now();
    let graceful = std::thread::spawn(move || call(&sock, "DELETE", &format!("/v1/cells/{cell}"), None));
    std::thread::sleep(Duration::from_millis(500));
    let forced = call(&d.socket, "DELETE", &format!("/v1/cells/{id}?force=true"), None);
    let graceful = graceful.join().expect("thread");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(8), "the forced stop waited for the 20 s grace: {took:?}");
    assert!(forced.status == 200 || forced.status == 409, "{}", forced.text());
    assert_eq!(graceful.status, 200, "{}", graceful.text());
}

// A zero timeout is a client error, not a command (and a session) ended before it started.
#[test]
fn zero_timeout_is_refused() {
    gate!("zero_timeout_is_refused");
    let d = daemon().start();
    let r = sh(&d, "echo hi", 0);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("timeout_ms"), "{}", r.text());
    let id = id_of(&d.spawn("cat"));
    let r = d.send(&id, "hi", 0);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(d.send(&id, "hi", 5000).json()["stdout"], "hi", "the session survives a refused command");
}

// Launches under way when shutdown begins are waited for and stopped with the rest: the
// daemon exits with no cell's cgroup (and so no process) left (10 rounds of 8 launches with
// the shutdown right behind them).
#[test]
fn shutdown_stops_launches_under_way() {
    gate!("shutdown_stops_launches_under_way");
    for round in 0..10 {
        let mut d = daemon().start();
        let launches: Vec<_> = (0..8)
            .map(|_| {
                let (sock, cwd) = (d.socket.clone(), d.cwd());
                std::thread::spawn(move || {
                    common::http::raw(
                        &sock,
                        "POST",
                        "/v1/cells",
                        json!({"provider": "cat", "cwd": cwd}).to_string().as_bytes(),
                    )
                    .map(|r| r.status)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(2 + round));
        let _ = common::http::raw(&d.socket, "POST", "/v1/shutdown", b"");
        for l in launches {
            let _ = l.join();
        }
        d.stop();
        assert_eq!(d.cell_dirs(), Vec::<std::path::PathBuf>::new(), "round {round}: cells left after shutdown");
    }
}

// A client that leaves while its session is being started leaves one session, which the next
// request gets: not a second one holding another slot.
#[test]
fn a_session_start_abandoned_mid_launch_is_kept_once() {
    gate!("a_session_start_abandoned_mid_launch_is_kept_once");
    let d = daemon().start();
    for _ in 0..5 {
        post_and_leave(&d, "/v1/providers/cat/session", &json!({"cwd": d.cwd()}), Duration::ZERO);
    }
    let r = call(&d.socket, "POST", "/v1/providers/cat/session", Some(&json!({"cwd": d.cwd()})));
    assert!(r.status == 200 || r.status == 201, "{}", r.text());
    let id = id_of(&r.json());
    std::thread::sleep(Duration::from_millis(500));
    let live: Vec<Value> = call(&d.socket, "GET", "/v1/cells", None)
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["provider"] == "cat")
        .collect();
    assert_eq!(live.len(), 1, "one session, not one per abandoned start: {live:?}");
    assert_eq!(live[0]["id"], id.as_str(), "{live:?}");
}

// Health polled while a cell ends answers 200 (running, then its final usage) or the ended
// cell's code, never a 500 in the moment between the cgroup's removal and the recorded end
// (20 rounds, health polled in a loop across a DELETE).
#[test]
fn health_during_a_cells_end_is_never_an_error() {
    gate!("health_during_a_cells_end_is_never_an_error");
    let d = daemon().start();
    for round in 0..20 {
        let id = id_of(&d.spawn("cat"));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let poller = {
            let (sock, id, stop) = (d.socket.clone(), id.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut bad = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let r = call(&sock, "GET", &format!("/v1/cells/{id}/health"), None);
                    if r.status >= 500 {
                        bad.push(r.text());
                    }
                }
                bad
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        let del = call(&d.socket, "DELETE", &format!("/v1/cells/{id}?force=true"), None);
        assert_eq!(del.status, 200, "{}", del.text());
        std::thread::sleep(Duration::from_millis(20));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let bad = poller.join().expect("poller");
        assert!(bad.is_empty(), "round {round}: health answered a server error while the cell ended: {bad:?}");
    }
}

// A one-shot waiting for a slot (`wait_for_slot_ms`) whose client leaves is not run when the
// slot frees up: it neither takes the slot nor runs a command nobody reads.
#[test]
fn a_command_whose_client_left_while_waiting_for_a_slot_is_not_run() {
    gate!("a_command_whose_client_left_while_waiting_for_a_slot_is_not_run");
    let d = daemon().max_cells(1).start();
    let held = id_of(&d.spawn("cat"));
    let body = json!({"command": "touch ran", "cwd": d.cwd(), "wait_for_slot_ms": 30000});
    post_and_leave(&d, "/v1/providers/sh/commands", &body, Duration::from_millis(300));
    std::thread::sleep(Duration::from_millis(300));
    let del = call(&d.socket, "DELETE", &format!("/v1/cells/{held}"), None);
    assert_eq!(del.status, 200, "{}", del.text());
    std::thread::sleep(Duration::from_millis(1000));
    assert!(!d.ws.path().join("ran").exists(), "the abandoned command ran once a slot freed up");
    let r = sh(&d, "echo mine", 10_000);
    assert_eq!(r.status, 200, "the slot must be free for the next caller: {}", r.text());
}

// A request refused on its own merits (a cwd that does not exist) gets the same answer when
// the pool is full as when it is not: why it is refused, not 429 — nor after waiting.
#[test]
fn a_bad_request_at_the_cap_is_refused_for_what_it_is() {
    gate!("a_bad_request_at_the_cap_is_refused_for_what_it_is");
    let d = daemon().max_cells(1).start();
    let bad = |wait: Option<u64>| {
        let mut body = json!({"command": "true", "cwd": "/nonexistent/cellkeep-test"});
        if let Some(ms) = wait {
            body["wait_for_slot_ms"] = json!(ms);
        }
        call(&d.socket, "POST", "/v1/providers/sh/commands", Some(&body))
    };
    let free = bad(None);
    assert!((400..500).contains(&free.status) && free.status != 429, "{}", free.text());
    let _held = id_of(&d.spawn("cat"));
    let full = bad(None);
    assert_eq!(
        (full.status, full.json()["code"].clone()),
        (free.status, free.json()["code"].clone()),
        "{}",
        full.text()
    );
    let t = Instant::now();
    let waited = bad(Some(5000));
    assert_eq!(waited.status, free.status, "{}", waited.text());
    assert!(t.elapsed() < Duration::from_secs(3), "refused only after waiting for a slot: {:?}", t.elapsed());
}

// The old manager's `shutdown(timeout)`: `POST /v1/shutdown?timeout_ms=N` bounds the wait for
// cells that ignore SIGTERM (the daemon's own timeout is 20 s here; the answer comes in ~0.3 s)
// and still leaves nothing behind.
#[test]
fn shutdown_takes_a_timeout() {
    gate!("shutdown_takes_a_timeout");
    let stubborn = "[\"/bin/sh\", \"-c\", \"trap '' TERM; while :; do sleep 0.05; done\"]";
    let mut d =
        daemon().grace_secs(20.0).shutdown_timeout_secs(20.0).provider("stubborn", stubborn, "session", "").start();
    let _ = (id_of(&d.spawn("stubborn")), id_of(&d.spawn("cat")));
    let t = Instant::now();
    let r = call(&d.socket, "POST", "/v1/shutdown?timeout_ms=0", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(t.elapsed() < Duration::from_secs(5), "shutdown took {:?} with timeout_ms=0", t.elapsed());
    assert_eq!(r.json()["count"], 2, "{}", r.text());
    d.stop();
    assert_eq!(d.cell_dirs(), Vec::<std::path::PathBuf>::new(), "cells left after shutdown");
    // A cell still dying after the API's shutdown is not counted again by the daemon's own
    // (pool review, round 4: the log said cells_ended=3 for 2).
    assert!(d.log().contains("cells_ended=2"), "{}", d.log());
    // The daemon's last word counts the cells an API shutdown ended (it said 0).
    let mut d = daemon().start();
    let _ = (id_of(&d.spawn("cat")), id_of(&d.spawn("cat")));
    let r = call(&d.socket, "POST", "/v1/shutdown", None);
    assert_eq!(r.json()["count"], 2, "{}", r.text());
    d.stop();
    assert!(d.log().contains("cells_ended=2"), "{}", d.log());
    let bad = daemon().start();
    let r = call(&bad.socket, "POST", "/v1/shutdown?timeout_ms=soon", None);
    assert_eq!(r.status, 400, "{}", r.text());
}

// A one-shot ended by the policy's wall time, shorter than the timeout asked for, says which
// limit ended it: the wall time's 1000 ms, not the 60000 asked for.
#[test]
fn a_timeout_names_the_limit_that_applied() {
    gate!("a_timeout_names_the_limit_that_applied");
    let d = daemon().provider("short", "[\"/bin/sh\", \"-c\"]", "oneshot", "[limits]\nwall_time = \"1s\"\n").start();
    let r = call(
        &d.socket,
        "POST",
        "/v1/providers/short/commands",
        Some(&json!({"command": "sleep 5", "cwd": d.cwd(), "timeout_ms": 60000})),
    );
    assert_eq!(r.status, 504, "{}", r.text());
    let msg = r.json()["message"].as_str().unwrap_or_default().to_owned();
    assert!(msg.contains("1000 ms") && !msg.contains("60000"), "{msg}");
    // From the seventh API review: it said "command timed out after 1000 ms", as if the
    // command's own timeout had been 1 s; it is the cell's wall time that ran out.
    assert!(msg.contains("wall time") && !msg.contains("command timed out after"), "{msg}");
}

// A session command's stderr is what the program wrote to stderr before its reply: each of
// many quick commands gets its own stderr line, never the previous command's and never none.
#[test]
fn a_session_commands_stderr_is_its_own() {
    gate!("a_session_commands_stderr_is_its_own");
    let prog = "[\"/bin/sh\", \"-c\", \"while read -r l; do echo \\\"err-$l\\\" >&2; echo \\\"out-$l\\\"; done\"]";
    let d = daemon()
        .provider("noisy", prog, "session", "")
        .provider("shs", "[\"/bin/sh\"]", "session", "[session]\nframing = \"sentinel\"\nsentinel = \"__END__\"\n")
        .start();
    let id = id_of(&d.spawn("noisy"));
    for n in 0..300 {
        let r = d.send(&id, &n.to_string(), 5000);
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["stdout"], format!("out-{n}"), "command {n}: {}", r.text());
        assert_eq!(v["stderr"], format!("err-{n}\n"), "command {n}: stderr misattributed: {}", r.text());
    }
    // The same with commands queued by three clients at once, on a shell framed by a sentinel
    // line, stderr written between two stdout lines (the round-3 review saw 1-2.5 % of such
    // replies lose their stderr to the next one: the catch-up read through tokio's cached
    // readiness, which had not yet seen the bytes).
    let id = id_of(&d.spawn("shs"));
    let clients: Vec<_> = (0..3)
        .map(|c| {
            let (sock, id) = (d.socket.clone(), id.clone());
            std::thread::spawn(move || {
                for n in 0..200 {
                    let tag = format!("{c}-{n}");
                    let command = format!("echo out-{tag}; echo err-{tag} >&2; echo __END__");
                    let body = json!({"command": command, "timeout_ms": 10_000});
                    let r = call(&sock, "POST", &format!("/v1/cells/{id}/commands"), Some(&body));
                    assert_eq!(r.status, 200, "{}", r.text());
                    let v = r.json();
                    assert_eq!(v["stdout"], format!("out-{tag}\n"), "{}", r.text());
                    assert_eq!(v["stderr"], format!("err-{tag}\n"), "queued command {tag}: {}", r.text());
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client's replies were wrong");
    }
}

// From the pool review: a session command's timeout covers its wait behind earlier commands;
// one that runs out while queued is not sent and leaves the session as it is.
#[test]
fn a_queued_commands_timeout_covers_its_wait() {
    gate!("a_queued_commands_timeout_covers_its_wait");
    let slow = "[\"/bin/sh\", \"-c\", \"while read -r l; do sleep 2; echo \\\"$l\\\"; done\"]";
    let d = daemon().provider("slow", slow, "session", "").start();
    let id = id_of(&d.spawn("slow"));
    let first = send_in_background(&d, &id, "A", 10_000);
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let queued = d.send(&id, "B", 500);
    let took = t.elapsed();
    assert_eq!(queued.status, 504, "{}", queued.text());
    assert!(took < Duration::from_millis(1500), "a 500 ms command waited {took:?} behind the first");
    assert!(queued.text().contains("not sent"), "{}", queued.text());
    let first = first.join().expect("thread");
    assert_eq!(first.json()["stdout"], "A", "{}", first.text());
    assert_eq!(d.send(&id, "C", 10_000).json()["stdout"], "C", "the session carries on");
}

// From the pool review: a session's wall time running out under a command is a timeout, as for
// a one-shot, naming the limit.
#[test]
fn a_sessions_wall_time_under_a_command_is_a_timeout() {
    gate!("a_sessions_wall_time_under_a_command_is_a_timeout");
    let d = daemon()
        .provider(
            "mute",
            "[\"/bin/sh\", \"-c\", \"while read -r l; do sleep 60; done\"]",
            "session",
            "[limits]\nwall_time = \"1s\"\n",
        )
        .start();
    let id = id_of(&d.spawn("mute"));
    let r = d.send(&id, "x", 20_000);
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("1000 ms"), "the message names the wall time: {}", r.text());
    // From the seventh API review: "command timed out after 1000 ms" sent the caller to raise a
    // timeout that was not the limit; the session ended with its wall time and must be replaced.
    assert!(r.text().contains("wall time") && r.text().contains("has ended"), "{}", r.text());
}

// From the seventh API review: a session command that got no reply — its program exited, or
// its timeout ended it — answered with the error alone; what it printed (a crash's stderr) was
// only in the cell's output, a second request racing the exited cell's retention. The error
// now carries it in `result`, as a one-shot's does.
#[test]
fn a_session_commands_error_carries_what_it_printed() {
    gate!("a_session_commands_error_carries_what_it_printed");
    let d = daemon()
        .provider("shs", "[\"/bin/sh\"]", "session", "[session]\nframing = \"sentinel\"\nsentinel = \"__END__\"\n")
        .start();
    let id = id_of(&d.spawn("shs"));
    assert_eq!(d.send(&id, "echo before; echo __END__", 5000).status, 200);
    let r = d.send(&id, "echo partial; echo perr >&2; exit 5", 5000);
    assert_eq!((r.status, r.code().as_str()), (409, "exited"), "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["result"]["stdout"].as_str(), v["result"]["stderr"].as_str()),
        (Some("partial\n"), Some("perr\n")),
        "{v}"
    );
    assert_eq!(v["result"]["exit"]["reason"], "exited", "{v}");
    let id = id_of(&d.spawn("shs"));
    let r = d.send(&id, "echo partial2; echo perr2 >&2; sleep 30", 1000);
    assert_eq!((r.status, r.code().as_str()), (504, "timeout"), "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["result"]["stdout"].as_str(), v["result"]["stderr"].as_str()),
        (Some("partial2\n"), Some("perr2\n")),
        "{v}"
    );
}

// From the pool review: a session is reused only for the same cwd (and env): a command never
// runs in a workspace other than the one its caller named.
#[test]
fn a_session_is_reused_only_for_its_own_cwd() {
    gate!("a_session_is_reused_only_for_its_own_cwd");
    let d = daemon().start();
    let other = workspace_dir(&d, "other");
    let a = session_of(&d, "cat", &d.cwd(), json!({}));
    let b = session_of(&d, "cat", &other, json!({}));
    assert_ne!(a, b, "a session in {} was handed out for {other}", d.cwd());
    assert_eq!(session_of(&d, "cat", &d.cwd(), json!({})), a, "the session of the same cwd is reused");
}

// From the pool review: NUL bytes in a command or a passed environment value are a bad request
// (they were a setup failure, after a cell was built for them).
#[test]
fn nul_bytes_are_a_bad_request() {
    gate!("nul_bytes_are_a_bad_request");
    let d = daemon().provider("env", "[\"/usr/bin/env\"]", "oneshot", "[environment]\npass = [\"X\"]\n").start();
    let r = sh(&d, "echo a\u{0}b", 5000);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("NUL"), "{}", r.text());
    let r = call(
        &d.socket,
        "POST",
        "/v1/providers/env/commands",
        Some(&json!({"command": "-0", "cwd": d.cwd(), "env": {"X": "a\u{0}b"}})),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("environment variable X"), "{}", r.text());
}

// From the pool review: cleanup of a provider a reload removed still ends its running cells.
#[test]
fn cleanup_reaches_a_provider_removed_by_a_reload() {
    gate!("cleanup_reaches_a_provider_removed_by_a_reload");
    let d = daemon().start();
    let id = id_of(&d.spawn("open"));
    std::fs::remove_file(d.policy_dir().join("open.toml")).expect("remove open.toml");
    let r = call(&d.socket, "POST", "/v1/reload", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(&d.socket, "DELETE", "/v1/providers/open/cells", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let cell = call(&d.socket, "GET", &format!("/v1/cells/{id}"), None).json();
    assert!(!cell["exit"].is_null(), "the removed provider's cell still runs: {cell}");
}

// From the pool review: an output offset past the end so far is refused (with follow it skipped
// the bytes up to it, unannounced); the end itself is a valid place to start following.
#[test]
fn an_output_offset_past_the_end_is_refused() {
    gate!("an_output_offset_past_the_end_is_refused");
    let d = daemon().start();
    let id = id_of(&d.spawn("cat"));
    assert_eq!(d.send(&id, "hello", 5000).status, 200);
    let r = call(&d.socket, "GET", &format!("/v1/cells/{id}/output?from=1000000&follow=true"), None);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("past the end"), "{}", r.text());
    let r = call(&d.socket, "GET", &format!("/v1/cells/{id}/output?from=6&follow=false"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    // Before the oldest byte kept (pool review, round 4): raw bytes cannot say that the start
    // is gone, so it is a 400 naming the oldest offset — it used to be a connection closed
    // without any answer. NDJSON says it in a `lagged` line.
    let d = daemon().provider("small", "[\"/bin/cat\"]", "session", "[limits]\noutput_bytes = \"4K\"\n").start();
    let id = id_of(&d.spawn("small"));
    assert_eq!(d.send(&id, &"x".repeat(8000), 5000).status, 200);
    let r = call(&d.socket, "GET", &format!("/v1/cells/{id}/output?format=raw&from=0"), None);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("oldest byte still kept"), "{}", r.text());
    let r = call(&d.socket, "GET", &format!("/v1/cells/{id}/output?from=0"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"lagged\""), "{}", r.text());
    let r = call(&d.socket, "GET", &format!("/v1/cells/{id}/output?format=raw"), None);
    assert_eq!(r.status, 200, "{}", r.text());
}

// From the pool review: a command sent to a session that had already ended (here: reaped idle)
// is answered with that end, `already_ended` and its reason — not as if the session had died
// under the command ("ended (idle) before the reply was complete").
#[test]
fn a_command_to_an_ended_session_gets_its_end() {
    gate!("a_command_to_an_ended_session_gets_its_end");
    let d = daemon().provider("brief", "[\"/bin/cat\"]", "session", "[limits]\nidle_timeout = \"200ms\"\n").start();
    let id = id_of(&d.spawn("brief"));
    let t = Instant::now();
    while call(&d.socket, "GET", &format!("/v1/cells/{id}"), None).json()["exit"].is_null() {
        assert!(t.elapsed() < Duration::from_secs(10), "the idle session was not reaped");
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = d.send(&id, "hello", 5000);
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["code"], "already_ended", "{}", r.text());
    assert!(r.text().contains("already ended (idle)"), "{}", r.text());
}

// From the pool review (round 4): a session's idle clock is the time since its last command.
// Output used to restart it, so a session whose background job printed a line every 0.3 s was
// never reaped and held its slot until its wall time.
#[test]
fn a_session_that_prints_is_still_reaped_idle() {
    gate!("a_session_that_prints_is_still_reaped_idle");
    let d = daemon()
        .provider(
            "chatty",
            "[\"/bin/sh\"]",
            "session",
            "[limits]\nidle_timeout = \"1s\"\n[session]\nframing = \"sentinel\"\nsentinel = \"__END__\"\n",
        )
        .start();
    let id = id_of(&d.spawn("chatty"));
    let r = d.send(&id, "(while :; do echo tick >&2; echo tock; sleep 0.3; done) & echo __END__", 5000);
    assert_eq!(r.status, 200, "{}", r.text());
    let t = Instant::now();
    loop {
        let info = call(&d.socket, "GET", &format!("/v1/cells/{id}"), None).json();
        if !info["exit"].is_null() {
            assert_eq!(info["exit"]["reason"], "idle", "{info}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(8), "a session printing without commands was never reaped: {info}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

// From the pool review (round 4): an error message that quotes the caller (here a cwd with a
// newline and a forged log line in it) is logged on one line, its control characters escaped;
// it used to add a line of the caller's choosing to the daemon's log.
#[test]
fn a_callers_text_cannot_forge_log_lines() {
    gate!("a_callers_text_cannot_forge_log_lines");
    let d = daemon().start();
    let cwd = "/nope\n2026-12-01T11:05:00.000000Z ERROR cellkeep::pool: FORGED-LINE cell=deadbeef";
    let r = call(&d.socket, "POST", "/v1/cells", Some(&json!({"provider": "cat", "cwd": cwd})));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("FORGED-LINE"), "{}", r.text());
    let line = d.wait_log(&["FORGED-LINE"], Duration::from_secs(5));
    assert!(line.contains("/nope\\n2026"), "the cwd was not escaped in: {line}");
    assert!(!d.log().lines().any(|l| l.starts_with("2026-12-01T11:05:00")), "a forged line:\n{}", d.log());
}

// From the pool review (round 4): a session's end is classified by what happened after its
// last answered command. A limit hit that a command lived through (its answer was 200: here a
// fork refused at the pids limit; an OOM kill on cgroup v1) made a later clean `exit 0` end as
// `pids_limited`/`oom_killed`, and the command in flight got resource_limit. (On cgroup v2 an
// OOM kill takes the whole cell, `memory.oom.group`, so a pids hit is what both can show.)
#[test]
fn a_limit_hit_a_command_survived_is_not_the_sessions_end() {
    gate!("a_limit_hit_a_command_survived_is_not_the_sessions_end");
    let d = daemon()
        .provider(
            "shsmall",
            "[\"/bin/sh\"]",
            "session",
            "[limits]\npids = 8\n[session]\nframing = \"sentinel\"\nsentinel = \"__END__\"\n",
        )
        .start();
    let id = id_of(&d.spawn("shsmall"));
    // An inner shell forks until the pids limit refuses it (and may give up); the session's
    // own shell carries on.
    let r =
        d.send(&id, "sh -c 'for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 1 & done' 2>/dev/null; echo __END__", 20000);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["events"]["pids_max_hits"].as_u64().unwrap_or(0) >= 1, "no fork was refused: {}", r.text());
    assert_eq!(d.send(&id, "echo alive; echo __END__", 5000).status, 200);
    let r = d.send(&id, "exit 0", 5000);
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["code"], "exited", "{}", r.text());
    let info = call(&d.socket, "GET", &format!("/v1/cells/{id}"), None).json();
    assert_eq!(info["exit"]["reason"], "exited", "{info}");
    assert!(
        info["events"]["pids_max_hits"].as_u64().unwrap_or(0) >= 1,
        "the cell's events still count the hit: {info}"
    );
}

// From the attacker review (round 5): exited cells past `exited_retention_max` are forgotten
// oldest first *of the uid that holds the most*. It was oldest first of all: one user's three
// one-shots pushed root's result out within seconds.
#[test]
fn one_users_results_do_not_push_out_anothers() {
    gate!("one_users_results_do_not_push_out_anothers");
    let d = daemon()
        .config("exited_retention_max = 3")
        .socket_mode(Some("0666"))
        .provider("say", "[\"/bin/echo\"]", "oneshot", "[access]\nuids = [0, 65534]\n")
        .start();
    let r = call(&d.socket, "POST", "/v1/providers/say/commands", Some(&json!({"command": "root's", "cwd": d.cwd()})));
    assert_eq!(r.status, 200, "{}", r.text());
    let mine = r.json()["cell"].as_str().unwrap_or_default().to_owned();
    for i in 0..4 {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN, "--socket"])
            .arg(&d.socket)
            .args(["exec", "say", &format!("nobody's {i}"), "--cwd", &d.cwd()])
            .output()
            .expect("setpriv");
        assert!(out.status.success(), "{out:?}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let r = call(&d.socket, "GET", &format!("/v1/cells/{mine}"), None);
    assert_eq!(r.status, 200, "root's exited cell was pushed out by another uid's: {}", r.text());
    let all = call(&d.socket, "GET", "/v1/cells?all=true", None).json();
    let listed = all.as_array().map_or(0, Vec::len);
    assert_eq!(listed, 3, "retention kept {listed} exited cells with exited_retention_max = 3: {all}");
}

// From the attacker review (round 5): one non-root member of the group took every cell slot
// (20 `spawn cat`), and root's next command got process_limit. With `max_cells_per_uid` a
// non-admin uid holds at most that many cells; root and admins are not bound by it.
#[test]
fn one_uid_cannot_take_every_slot() {
    gate!("one_uid_cannot_take_every_slot");
    let d = daemon()
        .max_cells(4)
        .config("max_cells_per_uid = 2")
        .socket_mode(Some("0666"))
        .provider("mycat", "[\"/bin/cat\"]", "session", "[access]\nuids = [0, 65534]\n")
        .start();
    let spawn_as_nobody = || {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN, "--socket"])
            .arg(&d.socket)
            .args(["--json", "spawn", "mycat", "--cwd", &d.cwd()])
            .output()
            .expect("setpriv")
    };
    for _ in 0..2 {
        let out = spawn_as_nobody();
        assert!(out.status.success(), "{out:?}");
    }
    let out = spawn_as_nobody();
    assert!(!out.status.success(), "a third cell for uid 65534 with max_cells_per_uid = 2: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("process_limit") && text.contains("uid 65534"), "{text}");
    for _ in 0..2 {
        let r = call(&d.socket, "POST", "/v1/cells", Some(&json!({"provider": "mycat", "cwd": d.cwd()})));
        assert_eq!(r.status, 201, "root was locked out: {}", r.text());
    }
    // A request waiting for its uid's share does not hold up a shutdown (it is answered
    // shutting_down at once; it used to keep the shutdown waiting its whole timeout).
    let body = json!({"provider": "mycat", "cwd": d.cwd(), "wait_for_slot_ms": 60000}).to_string();
    let waiter = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["--unix-socket", d.socket.to_str().unwrap_or_default(), "-d", &body, "http://cellkeep/v1/cells"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv curl");
    // Until the daemon reports it waiting (a fixed sleep was too short for curl's start in
    // the VM: it connected after the shutdown and got no answer at all).
    let seen = Instant::now() + Duration::from_secs(30);
    while d.health()["launches_waiting"].as_u64() != Some(1) {
        assert!(Instant::now() < seen, "the waiting launch never showed in health: {}", d.health());
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = Instant::now();
    let r = call(&d.socket, "POST", "/v1/shutdown", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "the shutdown waited {:?} for a request waiting for its share",
        t.elapsed()
    );
    let out = waiter.wait_with_output().expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "503", "{out:?}");
}

/// `POST /v1/providers/{provider}/session` for `cwd` (and `extra` body fields): the cell id.
fn session_of(d: &Daemon, provider: &str, cwd: &str, extra: Value) -> String {
    let mut body = json!({"cwd": cwd});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let r = call(&d.socket, "POST", &format!("/v1/providers/{provider}/session"), Some(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    id_of(&r.json())
}

/// A directory in the test's workspace the cells (nobody, or their own id mapped to it) own.
fn workspace_dir(d: &Daemon, name: &str) -> String {
    let p = d.ws.path().join(name);
    std::fs::create_dir(&p).expect("mkdir");
    std::os::unix::fs::chown(&p, Some(common::NOBODY), Some(common::NOBODY)).expect("chown");
    p.to_str().expect("utf8").to_owned()
}

// From the pool review (round 3): a session handed out is one the caller can use — its idle
// clock restarts (it was reaped under the caller about to use it), one being stopped is not
// handed out, and a symlinked cwd names the directory it points to now.
#[test]
fn a_session_handed_out_is_one_to_use() {
    gate!("a_session_handed_out_is_one_to_use");
    let stubborn = "[\"/bin/sh\", \"-c\", \"trap '' TERM; while read -r l; do echo \\\"$l\\\"; done\"]";
    let d = daemon()
        .grace_secs(20.0)
        .provider("brief", "[\"/bin/cat\"]", "session", "[limits]\nidle_timeout = \"1s\"\n")
        .provider("stubborn", stubborn, "session", "")
        .start();
    let cwd = d.cwd();
    let first = session_of(&d, "brief", &cwd, json!({}));
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(session_of(&d, "brief", &cwd, json!({})), first);
    std::thread::sleep(Duration::from_millis(600));
    let r = d.send(&first, "still mine", 5000);
    assert_eq!(r.status, 200, "the session handed out 0.6 s ago was reaped idle: {}", r.text());
    // Being stopped: a graceful stop waits out its grace; the session is not handed out again.
    let s = session_of(&d, "stubborn", &cwd, json!({}));
    let (sock, cell) = (d.socket.clone(), s.clone());
    let stopping = std::thread::spawn(move || call(&sock, "DELETE", &format!("/v1/cells/{cell}"), None));
    std::thread::sleep(Duration::from_millis(300));
    let again = session_of(&d, "stubborn", &cwd, json!({}));
    assert_ne!(again, s, "a session being stopped was handed out");
    call(&d.socket, "DELETE", &format!("/v1/cells/{s}?force=true"), None);
    let _ = stopping.join();
    // A symlink re-pointed: the session of the directory it names now.
    let (a, b) = (workspace_dir(&d, "a"), workspace_dir(&d, "b"));
    let link = d.ws.path().join("lnk");
    std::os::unix::fs::symlink(&a, &link).expect("symlink");
    let via_a = session_of(&d, "cat", link.to_str().expect("utf8"), json!({}));
    std::fs::remove_file(&link).expect("rm link");
    std::os::unix::fs::symlink(&b, &link).expect("symlink");
    let via_b = session_of(&d, "cat", link.to_str().expect("utf8"), json!({}));
    assert_ne!(via_a, via_b, "a link re-pointed to {b} still named the session in {a}");
    assert_eq!(session_of(&d, "cat", &b, json!({})), via_b, "the same directory, named directly");
    // A variable the policy does not pass does not make another session.
    assert_eq!(session_of(&d, "cat", &b, json!({"env": {"NOT_PASSED": "1"}})), via_b);
}

// From the pool review (round 3): a session start waiting for a slot holds up no other key's
// start (one global gate made another caller's start wait the whole slot wait).
#[test]
fn a_session_start_waiting_for_a_slot_holds_up_no_other() {
    gate!("a_session_start_waiting_for_a_slot_holds_up_no_other");
    let d = daemon().max_cells(2).start();
    let (x, y, z) = (workspace_dir(&d, "x"), workspace_dir(&d, "y"), workspace_dir(&d, "z"));
    session_of(&d, "cat", &x, json!({}));
    session_of(&d, "cat", &y, json!({}));
    let (sock, waiting_cwd) = (d.socket.clone(), d.cwd());
    let waiter = std::thread::spawn(move || {
        call(&sock, "POST", "/v1/providers/cat/session", Some(&json!({"cwd": waiting_cwd, "wait_for_slot_ms": 4000})))
    });
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let r = call(&d.socket, "POST", "/v1/providers/cat/session", Some(&json!({"cwd": z})));
    let took = t.elapsed();
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(took < Duration::from_secs(2), "another key's session start waited {took:?} behind a slot wait");
    assert_eq!(waiter.join().expect("thread").status, 429);
}

// From the pool review (round 3): after a reload, a session is handed out only if it runs
// under the provider's current policy, and a caller taken off the provider's access list
// sends nothing more to its sessions.
#[test]
fn a_reload_is_seen_by_session_reuse_and_access() {
    gate!("a_reload_is_seen_by_session_reuse_and_access");
    let d = daemon().socket_mode(Some("0666")).start();
    let cwd = d.cwd();
    let old = session_of(&d, "cat", &cwd, json!({}));
    // A reload that changes nothing keeps the session (a new Arc per policy orphaned them all).
    assert_eq!(call(&d.socket, "POST", "/v1/reload", None).status, 200);
    assert_eq!(session_of(&d, "cat", &cwd, json!({})), old, "a no-op reload orphaned the session");
    let cat = d.policy_dir().join("cat.toml");
    let text = std::fs::read_to_string(&cat).expect("cat.toml");
    std::fs::write(&cat, format!("{text}\n[limits]\nmemory_max = \"256M\"\n")).expect("write");
    assert_eq!(call(&d.socket, "POST", "/v1/reload", None).status, 200);
    assert_ne!(session_of(&d, "cat", &cwd, json!({})), old, "a session of the old policy was handed out");
    // As uid 65534 (on `open`'s access list), then taken off it.
    let client = "import json, socket, sys\n\
        def call(method, path, body=None):\n\
        \x20   s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n\
        \x20   data = json.dumps(body).encode() if body is not None else b''\n\
        \x20   s.sendall(f'{method} {path} HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: {len(data)}\\r\\nConnection: close\\r\\n\\r\\n'.encode() + data)\n\
        \x20   out = b''\n\
        \x20   while chunk := s.recv(65536): out += chunk\n\
        \x20   head, _, body = out.partition(b'\\r\\n\\r\\n')\n\
        \x20   return int(head.split()[1]), body.decode()\n\
        if sys.argv[2] == 'start':\n\
        \x20   print(json.loads(call('POST', '/v1/providers/open/session', {'cwd': sys.argv[3]})[1])['id'])\n\
        else:\n\
        \x20   print(call('POST', f'/v1/cells/{sys.argv[3]}/commands', {'command': 'hi', 'timeout_ms': 5000})[0])\n";
    let as_nobody = |what: &str, arg: &str| {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", client])
            .args([d.socket.to_str().expect("utf8"), what, arg])
            .output()
            .expect("setpriv");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let mine = as_nobody("start", &cwd);
    assert_eq!(as_nobody("send", &mine), "200");
    let open = d.policy_dir().join("open.toml");
    let text = std::fs::read_to_string(&open).expect("open.toml").replace("uids = [0, 65534]", "uids = [0]");
    std::fs::write(&open, text).expect("write");
    assert_eq!(call(&d.socket, "POST", "/v1/reload", None).status, 200);
    assert_eq!(as_nobody("send", &mine), "403", "a caller taken off the access list still sent commands");
}

// From the pool review (round 3): a command in flight when the daemon shuts down is answered
// `shutting_down` (503), not as if its session had died on its own (`exited`). From a client
// review: so are a command still queued behind it (it was 409 `already_ended`) and a running
// one-shot (it was 200 with `exit: terminated`), which an old-manager client retries
// elsewhere only on 503.
#[test]
fn a_command_in_flight_at_shutdown_says_so() {
    gate!("a_command_in_flight_at_shutdown_says_so");
    let slow = "[\"/bin/sh\", \"-c\", \"while read -r l; do sleep 30; echo \\\"$l\\\"; done\"]";
    let mut d = daemon().provider("slow", slow, "session", "").start();
    let id = id_of(&d.spawn("slow"));
    let in_flight = send_in_background(&d, &id, "x", 60_000);
    std::thread::sleep(Duration::from_millis(200));
    let queued = send_in_background(&d, &id, "y", 60_000);
    let (sock, cwd) = (d.socket.clone(), d.cwd());
    let oneshot = std::thread::spawn(move || {
        let body = json!({"command": "sleep 30", "cwd": cwd, "timeout_ms": 60_000});
        call(&sock, "POST", "/v1/providers/sh/commands", Some(&body))
    });
    std::thread::sleep(Duration::from_millis(500));
    let r = call(&d.socket, "POST", "/v1/shutdown", None);
    assert_eq!(r.status, 200, "{}", r.text());
    for (what, answer) in [("in flight", in_flight), ("queued", queued), ("one-shot", oneshot)] {
        let answer = answer.join().expect("thread");
        assert_eq!(answer.status, 503, "{what}: {}", answer.text());
        assert_eq!(answer.json()["code"], "shutting_down", "{what}: {}", answer.text());
    }
    d.stop();
}

// From an old-manager client review (stop 29): a buffered one-shot ended by a cleanup (or a
// terminate) answered 200 with what it had printed so far and `truncated: false`, which a
// client takes for the command's whole answer. It is 409 `exited`, as a session's command
// ended so, with the partial result alongside.
#[test]
fn a_oneshot_ended_from_outside_is_not_a_success() {
    gate!("a_oneshot_ended_from_outside_is_not_a_success");
    let d = daemon().start();
    let (sock, cwd) = (d.socket.clone(), d.cwd());
    let oneshot = std::thread::spawn(move || {
        let body = json!({"command": "echo first; sleep 30; echo second", "cwd": cwd, "timeout_ms": 60_000});
        call(&sock, "POST", "/v1/providers/sh/commands", Some(&body))
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.health()["cells_running"] != 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let r = call(&d.socket, "DELETE", "/v1/providers/sh/cells", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = oneshot.join().expect("thread");
    assert_eq!(answer.status, 409, "a one-shot cut short answered as if complete: {}", answer.text());
    let v = answer.json();
    assert_eq!(v["code"], "exited", "{v}");
    assert_eq!(v["result"]["stdout"], "first\n", "the partial output is not alongside: {v}");
}

// From an old-manager client review (stop 29): listing by a provider that does not exist (a
// typo, or `provider=` from a client's None) answered `[]`, "no cells", where cleanup of the
// same name says `unknown_provider`.
#[test]
fn listing_names_a_provider_that_is_not_there() {
    gate!("listing_names_a_provider_that_is_not_there");
    let d = daemon().start();
    let r = call(&d.socket, "GET", "/v1/cells?provider=nosuch", None);
    assert_eq!((r.status, r.json()["code"].clone()), (404, json!("unknown_provider")), "{}", r.text());
    let r = call(&d.socket, "GET", "/v1/cells?provider=", None);
    assert_eq!((r.status, r.json()["code"].clone()), (400, json!("bad_request")), "{}", r.text());
    let r = call(&d.socket, "GET", "/v1/cells?provider=sh", None);
    assert_eq!((r.status, r.json()), (200, json!([])), "{}", r.text());
}

// From the review of this stop: a command let through the queue with little of its timeout
// left has its whole timeout once written (it timed out and took a healthy session with it),
// and a command to a session being stopped is answered at once (it waited out the grace).
#[test]
fn queued_and_stopping_sessions_answer_fairly() {
    gate!("queued_and_stopping_sessions_answer_fairly");
    let slow = "[\"/bin/sh\", \"-c\", \"trap '' TERM; while read -r l; do sleep 1; echo \\\"$l\\\"; done\"]";
    let d = daemon().grace_secs(20.0).provider("slow", slow, "session", "").start();
    let id = id_of(&d.spawn("slow"));
    let first = send_in_background(&d, &id, "A", 10_000);
    std::thread::sleep(Duration::from_millis(100));
    let late = d.send(&id, "B", 1500);
    assert_eq!(first.join().expect("thread").json()["stdout"], "A");
    assert_eq!(late.status, 200, "the late command lost its session: {}", late.text());
    assert_eq!(late.json()["stdout"], "B");
    assert_eq!(d.send(&id, "C", 5000).status, 200, "the session carries on");
    let (sock, cell) = (d.socket.clone(), id.clone());
    let stopping = std::thread::spawn(move || call(&sock, "DELETE", &format!("/v1/cells/{cell}"), None));
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let r = d.send(&id, "D", 30_000);
    assert!(t.elapsed() < Duration::from_secs(3), "a command to a stopping session waited {:?}", t.elapsed());
    assert_eq!(r.json()["code"], "already_ended", "{}", r.text());
    call(&d.socket, "DELETE", &format!("/v1/cells/{id}?force=true"), None);
    let _ = stopping.join();
}

// From the review of this stop: `cellkeep run` and the daemon default to different cgroup
// roots, so a daemon started from the same cgroup as a running `run` leaves its cell alone (it
// took it for an orphan of its own and killed it).
#[test]
fn a_daemon_leaves_a_running_cellkeep_run_alone() {
    gate!("a_daemon_leaves_a_running_cellkeep_run_alone");
    let w = common::World::new();
    let policy = w.policy("t", "", "");
    let run = Command::new(BIN)
        .env_remove("CELLKEEP_CGROUP_ROOT")
        .args(["run", "--policy"])
        .arg(&policy)
        .arg("--cwd")
        .arg(w.ws.path())
        .args(["--", "/bin/sleep", "2"])
        .spawn()
        .expect("cellkeep run");
    std::thread::sleep(Duration::from_millis(500));
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("d.sock");
    let mut daemon = Command::new(BIN)
        .args(["daemon", "--cgroup-root", "cellkeep", "--socket"])
        .arg(&socket)
        .arg("--policies")
        .arg(policy.parent().expect("policy dir"))
        .env("CELLKEEP_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("daemon");
    let t = Instant::now();
    while !socket.exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = run.wait_with_output().expect("run");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = daemon.wait();
    assert!(out.status.success(), "the run's cell was killed by a daemon started beside it: {out:?}");
}

// A review of issue 14 found: a generic provider (`command = []`) resolved the caller's argv[0]
// with the daemon's (root's) rights, so a caller learned whether a file exists, and is
// executable, in a directory it cannot search: a path it can see no part of was "not found"
// (400), an existing one launched a cell and failed later. The binary is looked up with the
// caller's rights, as its cwd is: both paths get the same answer.
#[test]
fn a_callers_argv0_is_looked_up_with_its_own_rights() {
    gate!("a_callers_argv0_is_looked_up_with_its_own_rights");
    let d =
        daemon().socket_mode(Some("0666")).provider("any", "[]", "oneshot", "[access]\nuids = [0, 65534]\n").start();
    let hidden = tempfile::Builder::new().prefix("ck-hidden-").tempdir_in("/tmp").expect("tempdir");
    std::fs::set_permissions(hidden.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod");
    std::fs::copy("/bin/true", hidden.path().join("present")).expect("copy /bin/true");
    let as_nobody = |path: &Path| {
        let body = json!({"command": path, "cwd": d.cwd(), "timeout_ms": 10000}).to_string();
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "curl", "-s", "-w", "\n%{http_code}"])
            .args(["--unix-socket", d.socket.to_str().unwrap_or_default(), "-d", &body])
            .arg("http://cellkeep/v1/providers/any/commands")
            .output()
            .expect("setpriv curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (answer, status) = text.rsplit_once('\n').unwrap_or((&text, ""));
        let v: Value = serde_json::from_str(answer).unwrap_or(Value::Null);
        (status.to_owned(), v["code"].clone(), v["message"].as_str().unwrap_or(answer).to_owned())
    };
    let (present, absent) = (hidden.path().join("present"), hidden.path().join("absent"));
    let (s1, c1, m1) = as_nobody(&present);
    let (s2, c2, m2) = as_nobody(&absent);
    assert_eq!((s1.as_str(), &c1), ("400", &json!("bad_request")), "an existing hidden binary: {m1}");
    assert_eq!((s2.as_str(), &c2), ("400", &json!("bad_request")), "a missing hidden binary: {m2}");
    let p = |m: &str, path: &Path| m.replace(&path.display().to_string(), "PATH");
    assert_eq!(p(&m1, &present), p(&m2, &absent), "the answers tell the two apart");
    // Root's own request still finds it (root can search the directory).
    let r = call(
        &d.socket,
        "POST",
        "/v1/providers/any/commands",
        Some(&json!({"command": present, "cwd": d.cwd(), "timeout_ms": 10000})),
    );
    assert_ne!(r.json()["code"], "bad_request", "{}", r.text());
}

// From a client review: a session command still waiting for its turn when its client hung up
// was sent anyway, later, to nobody: five such commands made the next caller's command wait
// 10 s behind them (and a user could queue them without bound, each holding its text in the
// daemon). A command whose client left before its turn is dropped, unsent.
#[test]
fn a_queued_command_whose_client_left_is_not_sent() {
    gate!("a_queued_command_whose_client_left_is_not_sent");
    let slow = "[\"/bin/sh\", \"-c\", \"while read -r l; do sleep 2; echo \\\"$l\\\"; done\"]";
    let d = daemon().provider("slow", slow, "session", "").start();
    let id = id_of(&d.spawn("slow"));
    let first = send_in_background(&d, &id, "A", 10_000);
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..5 {
        let body = json!({"command": format!("B{i}"), "timeout_ms": 60_000});
        post_and_leave(&d, &format!("/v1/cells/{id}/commands"), &body, Duration::from_millis(100));
    }
    let first = first.join().expect("thread");
    assert_eq!(first.json()["stdout"], "A", "{}", first.text());
    let c = d.send(&id, "C", 6_000);
    assert_eq!(c.json()["stdout"], "C", "commands whose clients left were sent ahead of this one: {}", c.text());
}

// From a client review: a session reply's stderr shares the cell's output spool with its
// stdout; a reply larger than the spool pushed the command's earlier stderr out, and the
// answer said `stderr: ""` with `truncated: false`. It says `truncated: true` now.
#[test]
fn a_session_replys_lost_stderr_is_reported_truncated() {
    gate!("a_session_replys_lost_stderr_is_reported_truncated");
    let big = "[\"/bin/sh\", \"-c\", \"while read -r l; do echo warning >&2; head -c 300000 /dev/zero | tr '\\\\\\\\0' x; echo; done\"]";
    let d = daemon().provider("big", big, "session", "[limits]\noutput_bytes = \"64K\"\n").start();
    let id = id_of(&d.spawn("big"));
    let r = d.send(&id, "go", 20_000);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["stdout"].as_str().map(str::len), Some(300_000), "the reply itself is whole");
    assert!(
        v["stderr"] == "warning\n" || v["truncated"] == true,
        "stderr lost without a word: stderr {:?}, truncated {}",
        v["stderr"],
        v["truncated"]
    );
}

// From a client review: a buffered one-shot with "stdin": true answered only at the cell's end,
// so its caller never learned the cell to write to, and a command reading its stdin waited
// its whole timeout. It is a bad request: stdin needs the stream, whose first line names the
// cell.
#[test]
fn a_buffered_one_shot_cannot_ask_for_stdin() {
    gate!("a_buffered_one_shot_cannot_ask_for_stdin");
    let d = daemon().start();
    let body = json!({"command": "cat", "cwd": d.cwd(), "stdin": true, "timeout_ms": 3000});
    let r = call(&d.socket, "POST", "/v1/providers/sh/commands", Some(&body));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("stream"), "{}", r.text());
    assert!(d.cells_on_disk().is_empty(), "a cell was built for a refused request");
}

// From a client review: cleanup missed a launch of the provider already under way. With the
// pool full of the provider's cells, a one-shot of it waiting for a slot took the slot the
// cleanup freed and ran after the cleanup had answered. A launch that began before a cleanup
// covering it is ended as soon as it is registered (409 already_ended, terminated).
#[test]
fn cleanup_reaches_launches_under_way() {
    gate!("cleanup_reaches_launches_under_way");
    let d = daemon().max_cells(2).start();
    for _ in 0..2 {
        let r = call(
            &d.socket,
            "POST",
            "/v1/cells",
            Some(&json!({"provider": "sh", "cwd": d.cwd(), "args": ["sleep 60"]})),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let (sock, cwd) = (d.socket.clone(), d.cwd());
    let waiting = std::thread::spawn(move || {
        let body = json!({"command": "sleep 30", "cwd": cwd, "timeout_ms": 60_000, "wait_for_slot_ms": 30_000});
        call(&sock, "POST", "/v1/providers/sh/commands", Some(&body))
    });
    let seen = Instant::now() + Duration::from_secs(30);
    while d.health()["launches_waiting"].as_u64() != Some(1) {
        assert!(Instant::now() < seen, "the one-shot never waited for a slot");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = call(&d.socket, "DELETE", "/v1/providers/sh/cells", None);
    assert_eq!(r.json()["count"], 2, "{}", r.text());
    let answer = waiting.join().expect("thread");
    assert_eq!(answer.status, 409, "a launch under way outlived the cleanup: {}", answer.text());
    let running = call(&d.socket, "GET", "/v1/cells", None).json();
    let left: Vec<_> = running.as_array().into_iter().flatten().filter(|c| c["state"] == "running").collect();
    assert!(left.is_empty(), "cells of the provider still run after its cleanup: {left:?}");
}

// From the fifth pool review: output a session printed while no command waited, past the
// 64 KiB kept for a prompt and with no end marker (a background job, a start-up banner), was
// skipped "to its end marker", which was the next command's own: its reply was thrown away,
// it timed out and took a healthy session with it. A command written ends that skipping.
#[test]
fn unrequested_output_past_the_prompt_room_never_eats_the_next_reply() {
    gate!("unrequested_output_past_the_prompt_room_never_eats_the_next_reply");
    let framed = "[session]\nframing = \"sentinel\"\nsentinel = \"__END__\"\n";
    let banner = "[\"/bin/sh\", \"-c\", \"head -c 70000 /dev/zero | tr '\\\\0' =; echo; exec /bin/sh\"]";
    let d = daemon()
        .provider("shs", "[\"/bin/sh\"]", "session", framed)
        .provider("banner", banner, "session", framed)
        .start();
    let id = id_of(&d.spawn("shs"));
    let r = d.send(&id, "(sleep 0.3; head -c 100000 /dev/zero | tr '\\0' b; echo) & echo __END__", 5000);
    assert_eq!(r.status, 200, "{}", r.text());
    std::thread::sleep(Duration::from_millis(1500));
    let r = d.send(&id, "echo X2; echo __END__", 5000);
    assert_eq!(r.status, 200, "the background job's output ate the reply: {}", r.text());
    assert!(r.json()["stdout"].as_str().is_some_and(|s| s.ends_with("X2\n")), "{}", r.text());
    // The next one is its own alone.
    let r = d.send(&id, "echo X3; echo __END__", 5000);
    assert_eq!(r.json()["stdout"], "X3\n", "{}", r.text());
    // A banner past the prompt room.
    let id = id_of(&d.spawn("banner"));
    std::thread::sleep(Duration::from_millis(500));
    let r = d.send(&id, "echo reply0; echo __END__", 5000);
    assert_eq!(r.status, 200, "the banner ate the first reply: {}", r.text());
    assert!(r.json()["stdout"].as_str().is_some_and(|s| s.ends_with("reply0\n")), "{}", r.text());
}

/// A streamed one-shot of `sh` running `script` with its stdin open: the `curl` reading the
/// stream (kill it when done) and the cell's id from the stream's first line.
fn streamed_with_stdin(d: &Daemon, script: &str) -> (std::process::Child, String) {
    use std::process::{Command, Stdio};
    let body = json!({"command": script, "cwd": d.cwd(), "stream": true, "stdin": true, "timeout_ms": 20_000});
    let mut stream = Command::new("curl")
        .args(["-sN", "--unix-socket"])
        .arg(&d.socket)
        .args(["-d", &body.to_string(), "http://cellkeep/v1/providers/sh/commands"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stream.stdout.take().expect("stdout")));
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    let v: Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{e}: {first}"));
    let id = v["cell"].as_str().or(v["id"].as_str()).unwrap_or_else(|| panic!("no cell id: {first}")).to_owned();
    (stream, id)
}

// From the fifth pool review: a write to a one-shot's stdin that the process took only part
// of (it stopped reading) answered `count: 0`; the count is the bytes written.
#[test]
fn a_partial_stdin_write_counts_what_was_written() {
    gate!("a_partial_stdin_write_counts_what_was_written");
    let d = daemon().start();
    let script = "head -c 1000 > /dev/null; echo took; sleep 2";
    let (mut stream, id) = streamed_with_stdin(&d, script);
    let data = vec![b'x'; 900_000];
    let r = common::http::raw(&d.socket, "POST", &format!("/v1/cells/{id}/stdin"), &data).expect("stdin");
    let _ = stream.kill();
    let _ = stream.wait();
    assert_eq!(r.status, 200, "{}", r.text());
    let count = r.json()["count"].as_u64().unwrap_or(0);
    assert!((1000..900_000).contains(&count), "count {count} for a write the process took part of: {}", r.text());
}

// From the seventh API review: a one-shot's `duration_ms` counted its wait for a slot
// (`wait_for_slot_ms`): `true` after a 1 s wait said ~1000 ms. It runs from the cell's start,
// as the command's timeout does.
#[test]
fn a_oneshots_duration_leaves_out_its_wait_for_a_slot() {
    gate!("a_oneshots_duration_leaves_out_its_wait_for_a_slot");
    let d = daemon().max_cells(1).start();
    let id = id_of(&d.spawn("cat"));
    let (sock, path) = (d.socket.clone(), format!("/v1/cells/{id}?force=true"));
    let freer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1000));
        call(&sock, "DELETE", &path, None)
    });
    let t = Instant::now();
    let r = call(
        &d.socket,
        "POST",
        "/v1/providers/sh/commands",
        Some(&json!({"command": "true", "cwd": d.cwd(), "timeout_ms": 10_000, "wait_for_slot_ms": 20_000})),
    );
    let waited = t.elapsed();
    assert_eq!(freer.join().expect("thread").status, 200);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(waited >= Duration::from_millis(900), "it did not wait for the slot: {waited:?}");
    let ms = r.json()["duration_ms"].as_u64().unwrap_or(u64::MAX);
    assert!(ms < 700, "duration_ms {ms} counts the {waited:?} wait: {}", r.text());
}

// From the seventh API review: a write after the stdin was closed (`eof=true`) said the cell
// was never started with stdin, pointing the caller at the wrong bug.
#[test]
fn a_write_after_eof_says_the_stdin_is_closed() {
    gate!("a_write_after_eof_says_the_stdin_is_closed");
    let d = daemon().start();
    let script = "cat > /dev/null; sleep 2";
    let (mut stream, id) = streamed_with_stdin(&d, script);
    let write =
        |q: &str| common::http::raw(&d.socket, "POST", &format!("/v1/cells/{id}/stdin{q}"), b"x").expect("stdin");
    assert_eq!(write("?eof=true").status, 200);
    let r = write("");
    let _ = stream.kill();
    let _ = stream.wait();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("already closed") && !r.text().contains("start a one-shot"), "{}", r.text());
}

/// `method path` on the daemon's socket as uid 65534, `times` times in one shell loop (one
/// `setpriv`, one `curl` per request): each answer's status and body.
fn as_nobody_repeat(d: &Daemon, method: &str, path: &str, times: usize) -> Vec<(u16, Value)> {
    let script = "for i in $(seq \"$4\"); do curl -s -X \"$1\" --unix-socket \"$2\" -w '\\n%{http_code}\\n' \
                  \"http://cellkeep$3\"; done";
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/bin/sh", "-c", script, "sh", method])
        .arg(&d.socket)
        .args([path, &times.to_string()])
        .output()
        .expect("setpriv");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let answers: Vec<(u16, Value)> = lines
        .chunks(2)
        .map(|pair| {
            let status = pair.get(1).and_then(|s| s.trim().parse().ok()).unwrap_or(0);
            (status, serde_json::from_str(pair[0]).unwrap_or(Value::Null))
        })
        .collect();
    assert_eq!(answers.len(), times, "{text}");
    answers
}

// From the independent review: any user could end every other user's launches under way. A
// launch was taken for cleaned up once more than 256 cleanups (of any provider, by anyone) had
// come since it began: uid 65534 ran 300 cleanups of `open` (the provider it may use; nothing
// of its to end) while root's one-shot of `sh` waited for a slot, and root's one-shot was
// ended as it started (409 already_ended). A cleanup ends only launches of its provider that
// it would have ended as cells (root's and admins': anyone's; others': their own).
#[test]
fn a_cleanup_never_ends_another_callers_launch() {
    gate!("a_cleanup_never_ends_another_callers_launch");
    let d = daemon().max_cells(2).start();
    let held: Vec<String> = (0..2)
        .map(|_| {
            let body = json!({"provider": "sh", "cwd": d.cwd(), "args": ["sleep 60"]});
            let r = call(&d.socket, "POST", "/v1/cells", Some(&body));
            assert_eq!(r.status, 201, "{}", r.text());
            id_of(&r.json())
        })
        .collect();
    let (sock, cwd) = (d.socket.clone(), d.cwd());
    let waiting = std::thread::spawn(move || {
        // A wait long enough for 300 cleanups by another process each (minutes in the VM).
        let body = json!({"command": "echo ran", "cwd": cwd, "timeout_ms": 60_000, "wait_for_slot_ms": 600_000});
        call(&sock, "POST", "/v1/providers/sh/commands", Some(&body))
    });
    let seen = Instant::now() + Duration::from_secs(30);
    while d.health()["launches_waiting"].as_u64() != Some(1) {
        assert!(Instant::now() < seen, "the one-shot never waited for a slot");
        std::thread::sleep(Duration::from_millis(20));
    }
    for (status, body) in as_nobody_repeat(&d, "DELETE", "/v1/providers/open/cells", 300) {
        assert_eq!((status, &body["count"]), (200, &json!(0)), "{body}");
    }
    // Root's cleanup of another provider does not reach it either.
    let r = call(&d.socket, "DELETE", "/v1/providers/open/cells", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(&d.socket, "DELETE", &format!("/v1/cells/{}", held[0]), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = waiting.join().expect("thread");
    assert_eq!(answer.status, 200, "another caller's cleanups ended root's launch: {}", answer.text());
    assert_eq!(answer.json()["stdout"], "ran\n", "{}", answer.text());
}

// From the independent review: a cleanup by a caller who may not use the provider was run
// (and recorded) and answered 200 `count: 0`, where a provider that does not exist is 404
// `unknown_provider`: the answers told apart the providers health hides from it. Now such a
// caller gets the answer of an unknown provider; a provider it was taken off (or that a
// reload removed) still answers for its own cells there, which it knows of anyway.
#[test]
fn cleanup_of_a_provider_one_may_not_use_is_unknown() {
    gate!("cleanup_of_a_provider_one_may_not_use_is_unknown");
    let d = daemon().start();
    let root_sh = id_of(&d.spawn_with("sh", &["sleep 60"]));
    let root_cat = id_of(&d.spawn("cat"));
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN, "--socket"])
        .arg(&d.socket)
        .args(["--json", "spawn", "open", "--cwd", &d.cwd()])
        .output()
        .expect("setpriv");
    assert!(out.status.success(), "{out:?}");
    let hidden = as_nobody_repeat(&d, "DELETE", "/v1/providers/sh/cells", 1).remove(0);
    let unknown = as_nobody_repeat(&d, "DELETE", "/v1/providers/nosuch/cells", 1).remove(0);
    assert_eq!((unknown.0, unknown.1["code"].as_str()), (404, Some("unknown_provider")), "{}", unknown.1);
    assert_eq!(hidden.0, unknown.0, "a provider it may not use answers unlike an unknown one: {}", hidden.1);
    assert_eq!(
        hidden.1.to_string().replace("\\\"sh\\\"", "\\\"nosuch\\\""),
        unknown.1.to_string(),
        "a provider it may not use answers unlike an unknown one"
    );
    // Taken off `open`, with a cell of it; `cat` (root's cells) removed.
    let open = d.policy_dir().join("open.toml");
    let text = std::fs::read_to_string(&open).expect("open.toml").replace("uids = [0, 65534]", "uids = [0]");
    std::fs::write(&open, text).expect("write");
    std::fs::remove_file(d.policy_dir().join("cat.toml")).expect("remove cat.toml");
    let r = call(&d.socket, "POST", "/v1/reload", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let removed = as_nobody_repeat(&d, "DELETE", "/v1/providers/cat/cells", 1).remove(0);
    assert_eq!((removed.0, removed.1["code"].as_str()), (404, Some("unknown_provider")), "{}", removed.1);
    let own = as_nobody_repeat(&d, "DELETE", "/v1/providers/open/cells", 1).remove(0);
    assert_eq!((own.0, &own.1["count"]), (200, &json!(1)), "its own cell of a provider it was taken off: {}", own.1);
    for id in [root_sh, root_cat] {
        let cell = call(&d.socket, "GET", &format!("/v1/cells/{id}"), None).json();
        assert_eq!(cell["state"], "running", "another caller's cleanup ended root's cell: {cell}");
    }
}

// From the independent review: a session start waiting for its key's gate escaped a cleanup.
// It noted the cleanups so far only once the gate opened: with the pool full, one start of a
// session waiting for a slot (holding the gate) and a second for the same key waiting for the
// gate, a cleanup of the provider ended the first (409) while the second started a fresh
// session after the cleanup had answered. A launch notes the cleanups as it arrives.
#[test]
fn a_session_start_waiting_for_its_gate_is_reached_by_cleanup() {
    gate!("a_session_start_waiting_for_its_gate_is_reached_by_cleanup");
    let d = daemon().max_cells(1).start();
    let x = workspace_dir(&d, "x");
    session_of(&d, "cat", &x, json!({}));
    let start = || {
        let (sock, cwd) = (d.socket.clone(), d.cwd());
        std::thread::spawn(move || {
            call(&sock, "POST", "/v1/providers/cat/session", Some(&json!({"cwd": cwd, "wait_for_slot_ms": 20_000})))
        })
    };
    let first = start();
    let seen = Instant::now() + Duration::from_secs(30);
    while d.health()["launches_waiting"].as_u64() != Some(1) {
        assert!(Instant::now() < seen, "the first start never waited for a slot");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = start();
    // (it waits for the gate the first holds: nothing to see from outside)
    std::thread::sleep(Duration::from_millis(500));
    let r = call(&d.socket, "DELETE", "/v1/providers/cat/cells", None);
    assert_eq!(r.json()["count"], 1, "{}", r.text());
    let (first, second) = (first.join().expect("thread"), second.join().expect("thread"));
    assert_eq!(first.status, 409, "the start waiting for a slot outlived the cleanup: {}", first.text());
    assert_eq!(second.status, 409, "the start waiting for the gate outlived the cleanup: {}", second.text());
    let running = call(&d.socket, "GET", "/v1/cells", None).json();
    let left: Vec<_> = running.as_array().into_iter().flatten().filter(|c| c["state"] == "running").collect();
    assert!(left.is_empty(), "cells of the provider still run after its cleanup: {left:?}");
}
