//! End-to-end tests of `cellkeep daemon`: the real binary on a temp socket with its own policy
//! dir and cgroup root, real cells, spoken to over HTTP/1.1 on the Unix socket.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: failing loudly is the point

mod common;
mod harness;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::gate;
use common::http::{call, raw};
use common::BIN;
use harness::{id_of, Builder, Daemon};
use serde_json::{json, Value};

/// A session that forks N sleeping children per command, reports how many it got, and reaps them.
const FORKY: &str = "import os,sys,time\nfor line in sys.stdin:\n  n=int(line.split()[1]); kids=[]; err=''\n  for i in range(n):\n    try: pid=os.fork()\n    except OSError as e: err=type(e).__name__; break\n    if pid==0: time.sleep(30); os._exit(0)\n    kids.append(pid)\n  for k in kids: os.kill(k,9); os.waitpid(k,0)\n  print('forked',len(kids),err,flush=True)\n";

const HOG: &str = "import sys\nkeep=[]\nfor line in sys.stdin:\n  w=line.split()\n  if w and w[0]=='alloc': keep.append(bytearray(int(w[1])*1024*1024))\n  print('ok', len(keep), flush=True)\n";

/// A daemon of our own (tests/harness) with this file's providers, `--max-cells 20`.
fn daemon() -> Builder {
    let py = |script: &str| {
        format!("[\"/usr/bin/python3\", \"-u\", \"-c\", {}]", serde_json::to_string(script).expect("json string"))
    };
    Daemon::builder()
        .max_cells(20)
        .provider("echo", "[\"/bin/echo\"]", "oneshot", "")
        .provider("sleep", "[\"/bin/sleep\"]", "oneshot", "")
        .provider("cat", "[\"/bin/cat\"]", "session", "")
        .provider("idle", "[\"/bin/cat\"]", "session", "[limits]\nidle_timeout = \"200ms\"\n")
        .provider("open", "[\"/bin/cat\"]", "session", "[access]\nuids = [0, 65534]\n")
        .provider("hog", &py(HOG), "session", "[limits]\nmemory_max = \"64M\"\nmemory_swap = \"0\"\n")
        .provider("forky", &py(FORKY), "session", "[limits]\npids = 16\n")
}

// 1. cap 5: five spawns succeed, the sixth gets process_limit with the limit in the message.
#[test]
fn process_cap() {
    gate!("process_cap");
    let d = daemon().max_cells(5).start();
    for _ in 0..5 {
        d.spawn("cat");
    }
    let r = call(&d.socket, "POST", "/v1/cells", Some(&json!({"provider": "cat", "cwd": d.cwd()})));
    assert_eq!(r.code(), "process_limit", "{}", r.text());
    assert!(r.json()["message"].as_str().unwrap_or("").contains('5'), "{}", r.text());
    // Waiting for a slot: a slot freed within the wait is taken.
    let first = id_of(&call(&d.socket, "GET", "/v1/cells", None).json()[0]);
    let (sock, victim) = (d.socket.clone(), first.clone());
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        call(&sock, "DELETE", &format!("/v1/cells/{victim}?force=true"), None)
    });
    let t = Instant::now();
    let r = call(
        &d.socket,
        "POST",
        "/v1/cells",
        Some(&json!({"provider": "cat", "cwd": d.cwd(), "wait_for_slot_ms": 10000})),
    );
    let waited = t.elapsed();
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(killer.join().expect("killer").status, 200);
    // It waited for the freed slot (not admitted past the cap at once) and took that slot.
    assert!(waited >= Duration::from_millis(250), "admitted after {waited:?}, before any slot was freed");
    let cells = call(&d.socket, "GET", "/v1/cells", None).json();
    let ids: Vec<String> = cells.as_array().expect("cell list").iter().map(id_of).collect();
    assert_eq!(ids.len(), 5, "{cells}");
    assert!(!ids.contains(&first), "{cells}");
    // With no slot freed, a wait ends in process_limit after the wait, not before.
    let t = Instant::now();
    let r = call(
        &d.socket,
        "POST",
        "/v1/cells",
        Some(&json!({"provider": "cat", "cwd": d.cwd(), "wait_for_slot_ms": 300})),
    );
    assert_eq!(r.code(), "process_limit", "{}", r.text());
    assert!(t.elapsed() >= Duration::from_millis(250), "gave up after {:?} of a 300 ms wait", t.elapsed());
}

// 2. One-shot echo: stdout has it, stderr empty, exit 0; a shell metacharacter command arrives
//    as one literal argv element.
#[test]
fn oneshot_echo_is_literal() {
    gate!("oneshot_echo_is_literal");
    let d = daemon().start();
    let run = |cmd: &str| {
        call(&d.socket, "POST", "/v1/providers/echo/commands", Some(&json!({"command": cmd, "cwd": d.cwd()})))
    };
    let r = run("Hello World");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["stdout"], "Hello World\n");
    assert_eq!(v["stderr"], "");
    assert_eq!(v["exit"]["reason"], "exited");
    assert_eq!(v["exit"]["code"], 0);
    let evil = "x; rm -rf / && echo pwned";
    let v = run(evil).json();
    assert_eq!(v["stdout"], format!("{evil}\n"), "{v}");
}

// Exited cells stay listed for `exited_retention_secs`, and at most `exited_retention_max`
// of them (each holds its output spool, a file and an fd): a busy daemon's retention is
// bounded by count, the oldest going first. Before the bound, 300 s of one-shots at a few
// hundred a second kept tens of thousands of records and spool fds.
#[test]
fn exited_cells_are_retained_up_to_a_count() {
    gate!("exited_cells_are_retained_up_to_a_count");
    let d = daemon().config("exited_retention_max = 3").start();
    let mut ids = Vec::new();
    for i in 0..8 {
        let body = json!({"command": format!("run {i}"), "cwd": d.cwd()});
        let r = call(&d.socket, "POST", "/v1/providers/echo/commands", Some(&body));
        assert_eq!(r.status, 200, "{}", r.text());
        ids.push(r.json()["cell"].as_str().unwrap().to_owned());
    }
    let listed = || -> Vec<String> {
        let v = call(&d.socket, "GET", "/v1/cells?all=true", None).json();
        v.as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect()
    };
    let until = Instant::now() + Duration::from_secs(10);
    while listed().len() > 3 || d.spool_fds() > 3 {
        assert!(Instant::now() < until, "listed {:?}, {} spool fds", listed(), d.spool_fds());
        std::thread::sleep(Duration::from_millis(50));
    }
    let kept = listed();
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert!(ids[5..].iter().all(|id| kept.contains(id)), "the newest stay: {kept:?} of {ids:?}");
    let r = call(&d.socket, "GET", &format!("/v1/cells/{}", ids[0]), None);
    assert_eq!(r.status, 404, "the oldest is forgotten: {}", r.text());
}

// The cap counts cells that hold kernel resources: once `DELETE` (or a one-shot's answer) has
// returned, the cell's slot is free for the caller's next launch. Before, the end was
// announced before the slot was released, and a client at the cap could get process_limit.
#[test]
fn a_slot_is_free_when_the_end_is_answered() {
    gate!("a_slot_is_free_when_the_end_is_answered");
    let d = daemon().max_cells(1).start();
    for i in 0..40 {
        let id = id_of(&d.spawn("cat"));
        let r = call(&d.socket, "DELETE", &format!("/v1/cells/{id}?force=true"), None);
        assert_eq!(r.status, 200, "round {i}: {}", r.text());
        let body = json!({"command": format!("run {i}"), "cwd": d.cwd()});
        let r = call(&d.socket, "POST", "/v1/providers/echo/commands", Some(&body));
        assert_eq!(r.status, 200, "round {i}: the slot of the deleted cell: {}", r.text());
    }
}

/// How many commands the command-count tests send: `n`, or a share of it under
/// `CELLKEEP_COMMAND_SHARE` (a fraction; the VM suite sends a quarter — what it proves there
/// is the cgroup v2 backend, while ordering and framing are the daemon's and run in full on
/// the host).
fn commands(n: usize) -> usize {
    let share: f64 = std::env::var("CELLKEEP_COMMAND_SHARE").ok().and_then(|v| v.parse().ok()).unwrap_or(1.0);
    ((n as f64 * share).round() as usize).clamp(1, n)
}

// 3. Session over cat: 1000 commands in a row, each reply exactly its own line, in order.
#[test]
fn session_thousand_commands_in_order() {
    gate!("session_thousand_commands_in_order");
    let d = daemon().start();
    let id = id_of(&d.spawn("cat"));
    for i in 0..commands(1000) {
        let line = format!("command {i} with some payload {}", "x".repeat(i % 50));
        let r = d.send(&id, &line, 10_000);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["stdout"], line);
    }
}

// 4. sleep 10 with a 1 s timeout → timeout within ~1 s and no process left.
#[test]
fn oneshot_timeout() {
    gate!("oneshot_timeout");
    let d = daemon().start();
    let t = Instant::now();
    let r = call(
        &d.socket,
        "POST",
        "/v1/providers/sleep/commands",
        Some(&json!({"command": "10", "cwd": d.cwd(), "timeout_ms": 1000})),
    );
    let took = t.elapsed();
    assert_eq!(r.code(), "timeout", "{}", r.text());
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert!(d.cells_on_disk().is_empty(), "cgroups left: {:?}", d.cells_on_disk());
}

// 5. A session killed by its memory limit: the waiting command and health say oom_killed.
#[test]
fn session_oom_is_reported() {
    gate!("session_oom_is_reported");
    let d = daemon().start();
    let id = id_of(&d.spawn("hog"));
    let r = d.send(&id, "alloc 1", 10_000);
    assert_eq!(r.json()["stdout"], "ok 1", "{}", r.text());
    let r = d.send(&id, "alloc 200", 30_000);
    assert_eq!(r.code(), "resource_limit", "{}", r.text());
    assert!(r.text().contains("oom_killed"), "{}", r.text());
    let info = call(&d.socket, "GET", &format!("/v1/cells/{id}"), None).json();
    assert_eq!(info["exit"]["reason"], "oom_killed", "{info}");
    let health = call(&d.socket, "GET", &format!("/v1/cells/{id}/health"), None).json();
    assert_eq!(health["exit"]["reason"], "oom_killed", "{health}");
}

// 5b. Limit events are noticed when the kernel reports them (inotify / eventfd on the cgroup),
//     not when someone reads health: `GET /v1/cells/{id}` never reads the cgroup, yet it shows
//     the pids-limit hit of a session that survives it.
#[test]
fn limit_events_are_noticed_as_they_happen() {
    gate!("limit_events_are_noticed_as_they_happen");
    let d = daemon().start();
    let id = id_of(&d.spawn("forky"));
    let r = d.send(&id, "fork 64", 20_000);
    let reply = r.json()["stdout"].as_str().unwrap_or("").to_owned();
    assert!(reply.starts_with("forked ") && reply.ends_with("BlockingIOError"), "{}", r.text());
    // v1 `pids.events` raises no notification (the kernel notifies it on the unified hierarchy
    // only), so on v1 the hit is seen at the next health read or at exit; v2 sees it at once.
    let backend = call(&d.socket, "GET", "/v1/health", None).json()["cgroup_backend"].as_str().unwrap_or("").to_owned();
    if backend != "v2" {
        eprintln!("limit_events: backend {backend}: pids.events is not notified; reading health instead");
        call(&d.socket, "GET", &format!("/v1/cells/{id}/health"), None);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let info = loop {
        let info = call(&d.socket, "GET", &format!("/v1/cells/{id}"), None).json();
        if info["events"]["pids_max_hits"].as_u64().unwrap_or(0) >= 1 || Instant::now() > deadline {
            break info;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(info["events"]["pids_max_hits"].as_u64().unwrap_or(0) >= 1, "{info}");
    assert_eq!(info["state"], "running", "the session survives the pids limit: {info}");
}

// 6. Idle timeout 0.2 s → the cell is reaped with reason idle.
#[test]
fn idle_cells_are_reaped() {
    gate!("idle_cells_are_reaped");
    let d = daemon().start();
    let id = id_of(&d.spawn("idle"));
    let t = Instant::now();
    loop {
        let info = call(&d.socket, "GET", &format!("/v1/cells/{id}"), None).json();
        if info["state"] == "exited" {
            assert_eq!(info["exit"]["reason"], "idle", "{info}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "not reaped: {info}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(d.cells_on_disk().is_empty());
}

// 7. Terminate → ok; again → already_ended (409: still listed, with its reason); no process or
//    cgroup left.
#[test]
fn terminate_twice() {
    gate!("terminate_twice");
    let d = daemon().start();
    let info = d.spawn("cat");
    let (id, pid) = (id_of(&info), info["pid"].as_u64().unwrap_or(0));
    let r = call(&d.socket, "DELETE", &format!("/v1/cells/{id}"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["exit"]["reason"], "terminated");
    let r = call(&d.socket, "DELETE", &format!("/v1/cells/{id}"), None);
    assert_eq!(r.code(), "already_ended", "{}", r.text());
    assert!(pid > 0 && !Path::new(&format!("/proc/{pid}")).exists(), "payload {pid} still alive");
    assert!(d.cells_on_disk().is_empty());
}

// 8. Health has the fields for a live cell, with non-zero memory and pids.
#[test]
fn health_of_a_live_cell() {
    gate!("health_of_a_live_cell");
    let d = daemon().start();
    let id = id_of(&d.spawn("cat"));
    let h = call(&d.socket, "GET", &format!("/v1/cells/{id}/health"), None).json();
    for key in ["state", "provider", "session", "idle_ms", "cpu_percent", "open_fds", "limits", "usage", "events"] {
        assert!(!h[key].is_null(), "missing {key} in {h}");
    }
    assert!(h["usage"]["memory_current"].as_u64().unwrap_or(0) > 0, "{h}");
    assert!(h["usage"]["pids_current"].as_u64().unwrap_or(0) > 0, "{h}");
    let g = call(&d.socket, "GET", "/v1/health", None).json();
    for key in ["cells_running", "cells_exited", "max_cells", "uptime_s", "cgroup_layout", "landlock_abi"] {
        assert!(!g[key].is_null(), "missing {key} in {g}");
    }
    assert_eq!(g["cells_running"], 1);
}

/// `Name:` and `PPid:` of a process (`/proc/<pid>/status`).
fn name_and_parent(pid: u32) -> (String, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field =
        |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_owned()).unwrap_or_default();
    (field("Name:"), field("PPid:").parse().unwrap_or(0))
}

/// The cell's helper: the payload's parent (pid 1) is the helper's child.
fn helper_of(d: &Daemon, id: &str) -> u32 {
    let info = call(&d.socket, "GET", &format!("/v1/cells/{id}"), None).json();
    let payload = info["pid"].as_u64().unwrap_or_else(|| panic!("no payload pid in {info}")) as u32;
    let pid1 = name_and_parent(payload).1;
    name_and_parent(pid1).1
}

// Cell helpers are forked from the daemon's zygote (no exec of the daemon's binary per cell)
// and are the daemon's own children; the zygote keeps nothing of the daemon's but stdio and
// its socket; without it (killed), helpers are spawned again and cells still start.
#[test]
fn helpers_are_forked_from_the_zygote() {
    gate!("helpers_are_forked_from_the_zygote");
    let d = daemon().start();
    let id = id_of(&d.spawn("cat"));
    let helper = helper_of(&d, &id);
    assert_eq!(name_and_parent(helper), ("cellkeep-helper".to_owned(), d.pid()), "helper {helper}");
    assert_eq!(d.send(&id, "hello", 10_000).json()["stdout"], "hello");
    let children = std::fs::read_to_string(format!("/proc/{}/task/{}/children", d.pid(), d.pid())).unwrap_or_default();
    let zygote = children
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|p| name_and_parent(*p).0 == "cellkeep-zygote")
        .unwrap_or_else(|| panic!("no zygote among the daemon's children {children}"));
    let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{zygote}/fd"))
        .expect("zygote fds")
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    fds.sort();
    assert_eq!(fds, vec![0, 1, 2, 3], "the zygote holds stdio and its socket only");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(zygote as i32), nix::sys::signal::Signal::SIGKILL)
        .expect("kill the zygote");
    let id = id_of(&d.spawn("cat"));
    assert_eq!(d.send(&id, "again", 10_000).json()["stdout"], "again");
    let helper = helper_of(&d, &id);
    assert_eq!(name_and_parent(helper).1, d.pid(), "a spawned helper is the daemon's child too");
    assert!(!Path::new(&format!("/proc/{zygote}")).exists(), "the dead zygote was reaped");
}

/// The daemon's zygote (its child named `cellkeep-zygote`).
fn zygote_of(d: &Daemon) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{}/task/{}/children", d.pid(), d.pid())).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|p| name_and_parent(*p).0 == "cellkeep-zygote")
        .unwrap_or_else(|| panic!("no zygote among the daemon's children {children}"))
}

// A zygote that stops answering (here: stopped) costs one launch its 5 s timeout, then it is
// killed and reaped, and helpers are spawned: the launch still succeeds, and later ones do not
// ask it again.
#[test]
fn a_wedged_zygote_is_replaced_by_spawning() {
    gate!("a_wedged_zygote_is_replaced_by_spawning");
    let d = daemon().start();
    let zygote = zygote_of(&d);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(zygote as i32), nix::sys::signal::Signal::SIGSTOP)
        .expect("stop the zygote");
    let t = Instant::now();
    let id = id_of(&d.spawn("cat"));
    assert_eq!(d.send(&id, "late", 10_000).json()["stdout"], "late");
    assert!(t.elapsed() >= Duration::from_secs(4), "the first launch waited for the zygote's answer");
    assert!(!Path::new(&format!("/proc/{zygote}")).exists(), "the wedged zygote was killed and reaped");
    let id = id_of(&d.spawn("cat"));
    assert_eq!(d.send(&id, "prompt", 10_000).json()["stdout"], "prompt");
    let helper = helper_of(&d, &id);
    assert_ne!(name_and_parent(helper).0, "cellkeep-helper", "later helpers are spawned, not forked");
}

// 9. A reader disconnects mid-stream; the cell goes on; a new reader gets the missed output.
#[test]
fn stream_survives_a_disconnect() {
    gate!("stream_survives_a_disconnect");
    use std::io::{Read, Write};
    let d = daemon().start();
    let id = id_of(&d.spawn("cat"));
    for i in 0..5 {
        d.send(&id, &format!("before {i}"), 10_000);
    }
    // Follow the stream, read a little, hang up in the middle.
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).expect("connect");
    write!(s, "GET /v1/cells/{id}/output?from=0&follow=true HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).expect("read");
    assert!(n > 0);
    drop(s);
    for i in 0..5 {
        let r = d.send(&id, &format!("after {i}"), 10_000);
        assert_eq!(r.json()["stdout"], format!("after {i}"), "cell broken after the disconnect");
    }
    let r = call(&d.socket, "GET", &format!("/v1/cells/{id}/output?from=0&follow=false"), None);
    let text: String = r
        .text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["type"] == "data")
        .map(|e| e["data"].as_str().unwrap_or("").to_owned())
        .collect();
    for i in 0..5 {
        assert!(text.contains(&format!("before {i}\n")) && text.contains(&format!("after {i}\n")), "{text}");
    }
}

fn as_nobody(d: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN, "--socket"])
        .arg(&d.socket)
        .args(args)
        .output()
        .expect("setpriv")
}

// 10. A uid not in the provider's access list is refused; it cannot see or terminate another
//     uid's cell.
#[test]
fn other_uids_are_refused() {
    gate!("other_uids_are_refused");
    let d = daemon().start();
    let root_cell = id_of(&d.spawn("cat"));
    let out = as_nobody(&d, &["--json", "spawn", "cat", "--cwd", &d.cwd()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"), "{out:?}");
    let out = as_nobody(&d, &["--json", "ps", "--all"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&root_cell), "nobody sees root's cell: {out:?}");
    let out = as_nobody(&d, &["kill", &root_cell, "--force"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_found"), "{out:?}");
    let info = call(&d.socket, "GET", &format!("/v1/cells/{root_cell}"), None).json();
    assert_eq!(info["state"], "running", "{info}");
    // A provider that lists the uid works for it, and its cell is its own.
    let out = as_nobody(&d, &["spawn", "open", "--cwd", &d.cwd()]);
    assert!(out.status.success(), "{out:?}");
}

// 11. Bad requests: each a 4xx with a specific code; the daemon keeps serving.
#[test]
fn bad_requests_get_specific_errors() {
    gate!("bad_requests_get_specific_errors");
    let d = daemon().start();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("malformed json", b"{not json".to_vec(), "bad_request"),
        ("unknown field", br#"{"provider":"cat","cwd":"/tmp","bogus":1}"#.to_vec(), "bad_request"),
        ("10 MB body", vec![b' '; 10 << 20], "bad_request"),
        ("unknown provider", format!(r#"{{"provider":"nope","cwd":"{}"}}"#, d.cwd()).into_bytes(), "unknown_provider"),
        ("cwd outside roots", br#"{"provider":"cat","cwd":"/etc"}"#.to_vec(), "bad_request"),
        (
            "cwd escaping by ..",
            format!(r#"{{"provider":"cat","cwd":"{}/../../etc"}}"#, d.cwd()).into_bytes(),
            "bad_request",
        ),
        ("cwd is a workdir root", br#"{"provider":"cat","cwd":"/tmp"}"#.to_vec(), "bad_request"),
    ];
    for (what, body, code) in cases {
        let r = raw(&d.socket, "POST", "/v1/cells", &body).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!((400..500).contains(&r.status), "{what}: status {} {}", r.status, r.text());
        assert_eq!(r.code(), code, "{what}: {}", r.text());
        assert!(!r.json()["message"].as_str().unwrap_or("").is_empty(), "{what}: no message");
    }
    let r = raw(&d.socket, "POST", "/v1/cells", br#"{"provider":"cat","cwd":"/etc"}"#).expect("cwd");
    assert!(r.text().contains("/etc"), "the message names the path: {}", r.text());
    assert_eq!(call(&d.socket, "GET", "/v1/health", None).status, 200, "daemon stopped serving");
    assert!(d.cells_on_disk().is_empty());
}

// From the seventh isolation review: a FIFO as the cwd (one a caller made, or a cell planted
// in its workspace for the caller's next request) blocked the daemon thread that opened it to
// check it, until a writer came; two such requests held every worker of the daemon (2 CPUs),
// and health, ps and every launch hung. Each is now refused at once, and the daemon serves.
#[test]
fn a_fifo_as_cwd_never_blocks_the_daemon() {
    gate!("a_fifo_as_cwd_never_blocks_the_daemon");
    let d = daemon().start();
    let fifo = format!("{}/fifo", d.cwd());
    nix::unistd::mkfifo(fifo.as_str(), nix::sys::stat::Mode::from_bits_truncate(0o666)).expect("mkfifo");
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..6 {
        let (socket, tx, fifo) = (d.socket.clone(), tx.clone(), fifo.clone());
        std::thread::spawn(move || {
            let (path, body) = if i % 2 == 0 {
                ("/v1/cells", json!({"provider": "cat", "cwd": fifo}))
            } else {
                ("/v1/providers/echo/commands", json!({"command": "x", "cwd": fifo}))
            };
            let _ = tx.send(raw(&socket, "POST", path, body.to_string().as_bytes()).map(|r| (r.status, r.code())));
        });
    }
    let answers: Vec<_> = (0..6).map(|_| rx.recv_timeout(Duration::from_secs(20))).collect();
    // Whatever happened, let any blocked open go before asserting (the daemon must stop).
    let _ = std::os::unix::fs::OpenOptionsExt::custom_flags(std::fs::OpenOptions::new().write(true), libc::O_NONBLOCK)
        .open(&fifo);
    for a in answers {
        let (status, code) = a.expect("an answer within 20 s").expect("request");
        assert_eq!((status, code.as_str()), (400, "bad_request"));
    }
    assert_eq!(call(&d.socket, "GET", "/v1/health", None).status, 200);
    assert!(d.cells_on_disk().is_empty());
}

// 12. SIGTERM with 3 live cells → all gone, cgroups removed, socket removed, exit 0.
#[test]
fn sigterm_shuts_down_cleanly() {
    gate!("sigterm_shuts_down_cleanly");
    let mut d = daemon().start();
    let pids: Vec<u64> = (0..3).map(|_| d.spawn("cat")["pid"].as_u64().unwrap_or(0)).collect();
    assert_eq!(d.cells_on_disk().len(), 3);
    let status = d.stop().expect("daemon status");
    assert!(status.success(), "exit {status:?}");
    for pid in pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "cell process {pid} survived");
    }
    assert!(d.cells_on_disk().is_empty(), "{:?}", d.cells_on_disk());
    assert!(!d.socket.exists(), "socket left behind");
}

// 13. kill -9 of the daemon with live cells, then a restart → orphans killed, cgroups removed.
#[test]
fn restart_recovers_orphans() {
    gate!("restart_recovers_orphans");
    let mut d = daemon().start();
    let pids: Vec<u64> = (0..2).map(|_| d.spawn("cat")["pid"].as_u64().unwrap_or(0)).collect();
    d.kill9();
    assert_eq!(d.cells_on_disk().len(), 2, "cells should outlive a killed daemon until the restart");
    d.launch();
    assert!(d.cells_on_disk().is_empty(), "orphans left: {:?}", d.cells_on_disk());
    for pid in pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "orphan {pid} survived the restart");
    }
}

// 14. 20 concurrent sessions × 200 commands from parallel clients: no lost, duplicated or
//     crossed replies.
#[test]
fn concurrent_sessions_no_crossed_replies() {
    gate!("concurrent_sessions_no_crossed_replies");
    let d = daemon().start();
    let ids: Vec<String> = (0..20).map(|_| id_of(&d.spawn("cat"))).collect();
    let socket = d.socket.clone();
    let per_session = commands(200);
    let threads: Vec<_> = ids
        .into_iter()
        .enumerate()
        .map(|(n, id)| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                for i in 0..per_session {
                    let line = format!("session {n} command {i}");
                    let r = call(
                        &socket,
                        "POST",
                        &format!("/v1/cells/{id}/commands"),
                        Some(&json!({"command": line, "timeout_ms": 30000})),
                    );
                    assert_eq!(r.json()["stdout"], line, "{}", r.text());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
}

/// Bytes of the lossless-follow test (`CELLKEEP_FOLLOW_BYTES`; `scripts/soak.sh` runs 1 GiB).
fn follow_bytes() -> u64 {
    std::env::var("CELLKEEP_FOLLOW_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(1 << 30)
}

/// The deterministic stream the follow test's cell writes (and the test computes itself).
const FOLLOW_SH: &str = "seq 1 2000000000 2>/dev/null | head -c \"$0\"";

// A follower reading at half its natural speed gets every byte of a large stream (retained on
// disk, not in the daemon's memory) through `cellkeep logs --raw -f`, while the cell runs at
// full speed to its end; then the spool file goes with the cell.
#[test]
fn a_slow_follower_loses_nothing() {
    gate!("a_slow_follower_loses_nothing");
    let n = follow_bytes();
    let retained = format!("[limits]\noutput_bytes = \"{}M\"\n", n.div_ceil(1 << 20) + 1);
    let gen = format!("[\"/bin/sh\", \"-c\", {}]", serde_json::to_string(FOLLOW_SH).expect("json"));
    // Exited cells are listed for a second only: the spool file must outlive the listing while
    // its follower still reads, and go once both are done.
    let d = daemon().config("exited_retention_secs = 1.0").provider("gen", &gen, "oneshot", &retained).start();
    let id = id_of(&d.spawn_with("gen", &[&n.to_string()]));
    let spool = d.dir.path().join("spool").join(&id);
    assert!(spool.exists(), "the cell's spool file {}", spool.display());
    let mut logs = Command::new(BIN)
        .arg("--socket")
        .arg(&d.socket)
        .args(["logs", "--raw", "-f", &id])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("cellkeep logs");
    let mut sha = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    let mut out = logs.stdout.take().expect("stdout");
    let mut hash_in = sha.stdin.take().expect("stdin");
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        let t = Instant::now();
        let k = std::io::Read::read(&mut out, &mut buf).expect("read logs");
        if k == 0 {
            break;
        }
        std::io::Write::write_all(&mut hash_in, &buf[..k]).expect("hash");
        got += k as u64;
        // Half speed: as long again as the read and the hashing took.
        std::thread::sleep(t.elapsed());
    }
    drop(hash_in);
    assert!(logs.wait().expect("logs").success(), "cellkeep logs --raw -f failed (lagged?)");
    let hash = String::from_utf8(sha.wait_with_output().expect("sha256sum").stdout).expect("utf8");
    let want = Command::new("/bin/sh")
        .args(["-c", &format!("{FOLLOW_SH} | sha256sum"), &n.to_string()])
        .output()
        .expect("expected stream");
    assert_eq!(got, n, "bytes");
    assert_eq!(
        hash.split_whitespace().next(),
        String::from_utf8_lossy(&want.stdout).split_whitespace().next(),
        "checksum"
    );
    // The spool file goes with the cell.
    let deadline = Instant::now() + Duration::from_secs(10);
    while spool.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!spool.exists(), "spool file left after cleanup");
}

/// Live cells of the many-cells limit-event test (`CELLKEEP_LIVE_CELLS`; default 1000, far more
/// than the usual `fs.inotify.max_user_instances` of 128).
fn live_cells() -> usize {
    std::env::var("CELLKEEP_LIVE_CELLS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

/// inotify instances the process holds.
fn inotify_instances(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == "anon_inode:inotify"))
                .count()
        })
        .unwrap_or(0)
}

// Limit events with many live cells: the daemon watches every cell's limit files on ONE inotify
// instance (an instance per cell stops at fs.inotify.max_user_instances), and a pids-limit hit
// and an OOM kill are still recorded with all those cells alive.
#[test]
fn limit_events_arrive_with_many_live_cells() {
    gate!("limit_events_arrive_with_many_live_cells");
    let n = live_cells();
    let d = daemon().max_cells(n + 5).start();
    let ids: Vec<String> = (0..n).map(|_| id_of(&d.spawn_with("sleep", &["600"]))).collect();
    assert_eq!(inotify_instances(d.pid()), 1, "one inotify instance for {n} cells");
    // A pids-limit hit (v1 does not notify pids.events: there a health read records it).
    let forky = id_of(&d.spawn("forky"));
    let r = d.send(&forky, "fork 64", 20_000);
    assert!(r.json()["stdout"].as_str().unwrap_or("").ends_with("BlockingIOError"), "{}", r.text());
    call(&d.socket, "GET", &format!("/v1/cells/{forky}/health"), None);
    let info = call(&d.socket, "GET", &format!("/v1/cells/{forky}"), None).json();
    assert!(info["events"]["pids_max_hits"].as_u64().unwrap_or(0) >= 1, "{info}");
    // An OOM kill.
    let hog = id_of(&d.spawn("hog"));
    let r = d.send(&hog, "alloc 200", 30_000);
    assert!(r.text().contains("oom_killed"), "{}", r.text());
    let info = call(&d.socket, "GET", &format!("/v1/cells/{hog}"), None).json();
    assert!(info["events"]["oom_kills"].as_u64().unwrap_or(0) >= 1, "{info}");
    assert_eq!(inotify_instances(d.pid()), 1);
    // Every sleeper is still alive.
    let list = call(&d.socket, "GET", "/v1/cells", None).json();
    let running =
        list.as_array().map_or(0, |a| a.iter().filter(|c| c["state"] == "running" && ids.contains(&id_of(c))).count());
    assert_eq!(running, n, "{list}");
}

/// `value` has every property `schema` (a component of the generated document, `allOf`
/// parts merged) requires, and no property it does not name.
fn conforms(doc: &Value, schema: &str, value: &Value) {
    fn collect(doc: &Value, s: &Value, props: &mut Vec<String>, required: &mut Vec<String>) {
        if let Some(r) = s["$ref"].as_str() {
            let name = r.rsplit('/').next().unwrap();
            return collect(doc, &doc["components"]["schemas"][name], props, required);
        }
        for part in s["allOf"].as_array().into_iter().flatten() {
            collect(doc, part, props, required);
        }
        props.extend(s["properties"].as_object().into_iter().flatten().map(|(k, _)| k.clone()));
        required.extend(s["required"].as_array().into_iter().flatten().map(|r| r.as_str().unwrap().to_owned()));
    }
    let (mut props, mut required) = (Vec::new(), Vec::new());
    collect(doc, &json!({ "$ref": format!("#/components/schemas/{schema}") }), &mut props, &mut required);
    assert!(!props.is_empty(), "{schema}: no properties in the document");
    let obj = value.as_object().unwrap_or_else(|| panic!("{schema}: not an object: {value}"));
    for r in &required {
        assert!(obj.contains_key(r), "{schema}: required {r} missing from the live answer {value}");
    }
    for k in obj.keys() {
        assert!(props.contains(k), "{schema}: the live answer has {k}, which the document does not name");
    }
}

// The generated OpenAPI document and the router agree: every documented method and path is
// answered by its handler (not the router's fallbacks), every other method on a documented
// path is 405, and live answers have exactly the documented schemas' properties.
#[test]
fn openapi_matches_the_router() {
    gate!("openapi_matches_the_router");
    let d = daemon().start();
    let r = call(&d.socket, "GET", "/v1/openapi.json", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 12, "{paths:?}");
    let fallback = |r: &common::http::Response| {
        r.status == 405 || (r.status == 404 && r.json()["message"].as_str().unwrap_or("").starts_with("no route"))
    };
    let mut operations = 0;
    for (path, item) in paths {
        let concrete = path.replace("{id}", "no-such-cell").replace("{name}", "no-such-provider");
        let documented: Vec<String> = item.as_object().unwrap().keys().map(|m| m.to_uppercase()).collect();
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            // Shutdown stops the daemon: it is called last, below.
            if path == "/v1/shutdown" && method == "POST" {
                continue;
            }
            let r = raw(&d.socket, method, &concrete, b"{}").unwrap();
            if documented.iter().any(|m| m == method) {
                operations += 1;
                assert!(!fallback(&r), "{method} {path} is documented but not routed: {} {}", r.status, r.text());
            } else {
                assert_eq!(r.status, 405, "{method} {path} is not documented but answered: {}", r.text());
            }
            assert!(r.status < 500, "{method} {concrete}: {} {}", r.status, r.text());
        }
    }
    assert!(operations >= 13, "{operations}");
    let r = call(&d.socket, "GET", "/v1/no/such/route", None);
    assert!(fallback(&r), "{}", r.text());
    conforms(&doc, "ErrorBody", &r.json());

    // Live answers against their schemas.
    conforms(&doc, "DaemonHealth", &call(&d.socket, "GET", "/v1/health", None).json());
    let cell = d.spawn("cat");
    conforms(&doc, "CellInfo", &cell);
    let id = id_of(&cell);
    conforms(&doc, "CellInfo", &call(&d.socket, "GET", &format!("/v1/cells/{id}"), None).json());
    conforms(&doc, "CellHealth", &call(&d.socket, "GET", &format!("/v1/cells/{id}/health"), None).json());
    let reply = call(&d.socket, "POST", &format!("/v1/cells/{id}/commands"), Some(&json!({"command": "hi"})));
    assert_eq!(reply.status, 200, "{}", reply.text());
    conforms(&doc, "CommandResult", &reply.json());
    for c in call(&d.socket, "GET", "/v1/cells?all=true", None).json().as_array().unwrap() {
        conforms(&doc, "CellInfo", c);
    }
    let run = call(&d.socket, "POST", "/v1/providers/echo/commands", Some(&json!({"command": "x", "cwd": d.cwd()})));
    conforms(&doc, "CommandResult", &run.json());
    conforms(&doc, "CellInfo", &call(&d.socket, "DELETE", &format!("/v1/cells/{id}"), None).json());
    conforms(&doc, "Reloaded", &call(&d.socket, "POST", "/v1/reload", None).json());
    let r = call(&d.socket, "POST", "/v1/shutdown", None);
    assert_eq!(r.status, 200, "{}", r.text());
    conforms(&doc, "Count", &r.json());
}

// From the independent review: a client that hung up on `POST /v1/shutdown` dropped the
// handler (hyper drops a request's future when its connection closes) after the pool was
// marked shutting down but before the daemon was told to stop: it stayed up answering 503
// `shutting_down` forever (and one dropped before the cells were stopped left them running).
// The shutdown runs to its end whoever waits for it: the daemon exits, no cell left.
#[test]
fn a_shutdown_whose_client_hung_up_still_completes() {
    gate!("a_shutdown_whose_client_hung_up_still_completes");
    use std::io::Write;
    let stubborn = "[\"/bin/sh\", \"-c\", \"trap '' TERM; while :; do sleep 0.05; done\"]";
    let grace = 3.0;
    let mut d =
        daemon().grace_secs(grace).shutdown_timeout_secs(20.0).provider("stubborn", stubborn, "session", "").start();
    let pid = d.spawn("stubborn")["pid"].as_u64().unwrap_or(0);
    {
        let mut s = std::os::unix::net::UnixStream::connect(&d.socket).expect("connect");
        write!(s, "POST /v1/shutdown HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").expect("request");
        // Within the cell's grace: the shutdown is waiting for it to end.
        std::thread::sleep(Duration::from_millis(200));
    }
    let child = d.child.as_mut().expect("daemon");
    let until = Instant::now() + Duration::from_secs_f64(grace + 10.0);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > until {
            let h = call(&d.socket, "GET", "/v1/health", None);
            panic!("the daemon did not exit after a shutdown whose client hung up; health: {} {}", h.status, h.text());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    d.child = None;
    assert!(status.success(), "exit {status:?}\n{}", d.log());
    assert!(!harness::alive(pid), "the cell's process {pid} outlived the shutdown");
    assert_eq!(d.cell_dirs(), Vec::<std::path::PathBuf>::new(), "cells left after the shutdown");
}

// One typed `Client` shared by tasks: a call does not wait behind another's reply. Before,
// `Client::send` held the connection's lock until the whole reply had arrived, so a
// `terminate` (or `health`) waited behind a session command the payload never answers — for
// up to that command's timeout (300 s by default) — and `cellkeep exec` made a new client per
// call to get around it.
#[test]
fn one_client_calls_do_not_wait_for_each_other() {
    gate!("one_client_calls_do_not_wait_for_each_other");
    use cellkeep::api::wire::SendRequest;
    use cellkeep::client::Client;
    use std::sync::Arc;
    // A session that never answers: it does not read its stdin.
    let d = daemon().provider("mute", "[\"/bin/sleep\", \"1000\"]", "session", "").start();
    let id = id_of(&d.spawn("mute"));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let c = Arc::new(Client::new(&d.socket));
        c.health().await.expect("health");
        let (c2, id2) = (c.clone(), id.clone());
        let hung = tokio::spawn(async move {
            let req = SendRequest { command: "hello".into(), timeout_ms: Some(20_000) };
            c2.send_command(&id2, &req).await
        });
        // The command is in flight: the daemon is waiting for the payload's reply.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!hung.is_finished(), "the command was answered: {:?}", hung.await);
        let t = Instant::now();
        let h = tokio::time::timeout(Duration::from_secs(2), c.health()).await;
        assert!(matches!(h, Ok(Ok(_))), "health on the shared client: {h:?} after {:?}", t.elapsed());
        let ended = tokio::time::timeout(Duration::from_secs(2), c.terminate(&id, true)).await;
        let info = match ended {
            Ok(Ok(info)) => info,
            other => panic!("terminate on the shared client: {other:?} after {:?}", t.elapsed()),
        };
        assert!(info.exit.is_some(), "{info:?}");
        // The hung command ends with its cell, well before its own timeout.
        let r = tokio::time::timeout(Duration::from_secs(5), hung).await.expect("the command outlived its cell");
        assert!(r.expect("task").is_err(), "a command to a killed cell has no reply");
        // The client still works afterwards (its connections are reused or replaced).
        for _ in 0..3 {
            c.health().await.expect("health after");
        }
    });
}

// Cells inherit the daemon's mount namespace: a policy write path (or workdir root) that is
// read-only there — under the shipped unit, anything outside its ReadWritePaths= — gives the
// payload EROFS whatever the policy grants. The daemon says so when it loads the policies and
// at each reload, naming the provider, the path and the fix, in its log, in health (to root
// and admins) and in the reload's answer. Before, nothing warned.
#[test]
fn read_only_policy_paths_are_reported() {
    gate!("read_only_policy_paths_are_reported");
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }
    let ro = tempfile::Builder::new().prefix("ck-ro-").tempdir().expect("mount point");
    mount(Some("tmpfs"), ro.path(), Some("tmpfs"), MsFlags::MS_RDONLY, Some("size=1m"))
        .expect("mount a read-only tmpfs");
    let _unmount = Unmount(ro.path().to_path_buf());
    let path = ro.path().display().to_string();
    let writes = format!("[filesystem]\nwrite = [\"{{cwd}}\", \"{{tmp}}\", \"/dev/null\", \"{path}\"]\n");
    let roots = format!("[workdir]\nroots = [\"{path}\"]\n");
    let d = daemon()
        .provider("rofs", "[\"/bin/cat\"]", "session", &writes)
        .provider("rowork", "[\"/bin/cat\"]", "session", &roots)
        .start();
    // The log: one warning per provider and path, with the fix.
    for (provider, key) in [("rofs", "filesystem.write"), ("rowork", "workdir.roots")] {
        let line = d.wait_log(
            &["WARN", provider, key, &path, "systemctl edit cellkeep", "ReadWritePaths="],
            Duration::from_secs(5),
        );
        assert!(line.contains(&format!("ReadWritePaths={path}")), "{line}");
    }
    let notes = |v: &Value| -> Vec<String> {
        v["notes"].as_array().unwrap_or(&Vec::new()).iter().map(|n| n.as_str().unwrap_or("").to_owned()).collect()
    };
    let mentions = |notes: &[String], provider: &str| {
        notes.iter().any(|n| n.contains(provider) && n.contains(&path) && n.contains("ReadWritePaths="))
    };
    // Health, to root.
    let h = d.health();
    let n = notes(&h);
    assert!(mentions(&n, "rofs") && mentions(&n, "rowork"), "{h}");
    assert_eq!(n.len(), 2, "nothing else on this host is read-only: {n:?}");
    // Not to a caller who cannot see the policies.
    let out = as_nobody(&d, &["health", "--json"]);
    let theirs: Value = serde_json::from_slice(&out.stdout).expect("health --json");
    assert!(notes(&theirs).is_empty(), "{theirs}");
    // The reload's answer, and its log.
    let r = call(&d.socket, "POST", "/v1/reload", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let n = notes(&r.json());
    assert!(mentions(&n, "rofs") && mentions(&n, "rowork"), "{}", r.text());
    let warned = d.log().lines().filter(|l| l.contains("WARN") && l.contains("rofs") && l.contains(&path)).count();
    assert_eq!(warned, 2, "warned at start and at the reload:\n{}", d.log());
    // `cellkeep health` shows them.
    let out = Command::new(BIN).arg("--socket").arg(&d.socket).arg("health").output().expect("cellkeep health");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rofs") && text.contains(&path), "{text}");
}
