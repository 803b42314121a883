//! Resource abuse while the daemon serves (issue 7, item 2): a fork bomb, a memory balloon, a
//! CPU spin on every core, fd exhaustion, an output flood, a process that ignores SIGTERM and
//! a process that double-forks and reparents — each started through the real daemon under a
//! base-derived policy. While the abuse runs:
//!
//! - an ordinary `cat` session keeps answering commands correctly, and
//! - `GET /v1/health` is probed every 20 ms; every probe must answer 200. The worst latency is
//!   measured and printed (`ABUSE-HEALTH <case> worst=<ms>`), never asserted: a timed assertion
//!   flakes on a loaded CI host. The figure goes in the closing note.
//!
//! Then each case asserts its exit reason and that no process and no cgroup of any cell is
//! left. The flood's size is `ABUSE_FLOOD_BYTES` (default 2 GiB); the issue's 10 GiB run is
//! `ABUSE_FLOOD_BYTES=10737418240 CI=1 cargo test --test abuse flood -- --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: failing loudly is the point

mod common;
mod harness;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::gate;
use common::http::{call, raw};
use harness::{host_has_process, id_of, Daemon};
use serde_json::{json, Value};

const PY: &str = "/usr/bin/python3";
const GRACE_SECS: f64 = 1.0;
/// Timeout of a command to a session.
const COMMAND_MS: u64 = 10_000;
const MIB: u64 = 1 << 20;

/// A fork bomb: every process forks as fast as it can for 3 s (children join in), counting
/// refused forks; then every process exits and the payload exits 0.
const BOMB: &str = r#"
import os, time
end = time.time() + 3
while time.time() < end:
    try:
        os.fork()
    except OSError:
        pass
os._exit(0)
"#;

/// A memory balloon: for 3 s two children at a time allocate (and touch) 1 MiB blocks without
/// end and are replaced when the OOM killer takes them; then the payload balloons itself.
const BALLOON: &str = r#"
import os, time
def balloon():
    keep = []
    while True:
        keep.append(b'\x01' * (1 << 20))
end = time.time() + 3
kids = set()
while time.time() < end:
    while len(kids) < 2:
        pid = os.fork()
        if pid == 0:
            balloon()
        kids.add(pid)
    pid, _ = os.wait()
    kids.discard(pid)
balloon()
"#;

/// A busy loop on every core, twice over; never ends on its own.
const SPIN: &str = r#"
import os
n = 2 * (os.cpu_count() or 2)
for _ in range(n - 1):
    if os.fork() == 0:
        break
while True:
    pass
"#;

/// A session: `open` opens /dev/null until it fails (and keeps the fds), `close` closes them,
/// anything else answers `pong N` (N = fds held).
const FDS: &str = r#"
import os, sys, errno
fds = []
for line in sys.stdin:
    w = line.split()
    if w and w[0] == 'open':
        err = ''
        while True:
            try:
                fds.append(os.open('/dev/null', os.O_RDONLY))
            except OSError as e:
                err = errno.errorcode.get(e.errno, str(e.errno))
                break
        print('opened', len(fds), err, flush=True)
    elif w and w[0] == 'close':
        for fd in fds:
            os.close(fd)
        fds = []
        print('closed', flush=True)
    else:
        print('pong', len(fds), flush=True)
"#;

/// Writes argv[1] bytes of printable lines to stdout as fast as the pipe takes them.
const FLOOD: &str = r#"
import os, sys
n = int(sys.argv[1])
line = (b'flood-0123456789abcdefghijklmnopqrstuvwxyz-' * 32)[:1023] + b'\n'
block = memoryview(line * 1024)
while n > 0:
    k = min(n, len(block))
    n -= os.write(1, block[:k])
"#;

/// A session that, before any command, writes 70 lines of 15 MiB each (each a complete reply
/// under the 16 MiB reply limit, none asked for), then answers `ok` to every command.
const SFLOOD: &str = r#"
import os, sys
line = memoryview(b'y' * (15 << 20) + b'\n')
for _ in range(70):
    v = line
    while len(v):
        v = v[os.write(1, v):]
sys.stdout.write('ready\n')
for cmd in sys.stdin:
    print('ok', flush=True)
"#;

/// Ignores SIGTERM (and INT, HUP), in itself and a child; says `ready`, then sleeps forever.
const NOTERM: &str = r#"
import os, signal, time
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
if os.fork() == 0:
    while True:
        time.sleep(1)
print('ready', flush=True)
while True:
    time.sleep(1)
"#;

/// Double-forks a daemonised grandchild (setsid, stdio on /dev/null, SIGTERM ignored, lives
/// forever, reparented away from the payload; it leaves `grandchild.alive` in the cwd holding
/// its new parent's pid), says `detached`, then exits (`exit`) or stays.
const DFORK: &str = r#"
import os, signal, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        fd = os.open('/dev/null', os.O_RDWR)
        for i in (0, 1, 2):
            os.dup2(fd, i)
        open('grandchild.alive', 'w').write(str(os.getppid()))
        while True:
            time.sleep(1)
    os._exit(0)
os.wait()
end = time.time() + 5
while not os.path.exists('grandchild.alive') and time.time() < end:
    time.sleep(0.01)
time.sleep(0.05)
print('detached', os.getpid(), 'grandchild parent', open('grandchild.alive').read(), flush=True)
if sys.argv[1] == 'stay':
    while True:
        time.sleep(1)
"#;

/// A session that echoes each line (the "ordinary" cell).
const CAT: &str = "/bin/cat";

/// VmRSS of a process in bytes.
fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn open_fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// A daemon of our own (tests/harness) with one provider per abuse case, each
/// `extends = "base"`. Its marker is in every abusive script's command line: it finds any of
/// their processes on the host.
fn daemon() -> Daemon {
    let marker = format!("ck-abuse-{}", uuid::Uuid::now_v7().simple());
    let q = |s: &str| serde_json::to_string(s).expect("json string");
    let py = |body: &str| format!("[{}, \"-u\", \"-c\", {}]", q(PY), q(&format!("# {marker}\n{body}")));
    Daemon::builder()
        .prefix("ck-abuse-")
        .max_cells(20)
        .grace_secs(GRACE_SECS)
        .log_level("warn")
        .marker(&marker)
        .provider("cat", &format!("[{}]", q(CAT)), "session", "")
        .provider("bomb", &py(BOMB), "oneshot", "[limits]\npids = 32\nwall_time = \"30s\"\n")
        .provider(
            "balloon",
            &py(BALLOON),
            "oneshot",
            "[limits]\nmemory_max = \"64M\"\nmemory_swap = \"0\"\nwall_time = \"30s\"\n",
        )
        // Every core: the policy lets the cell have both CPUs (base: 1), the harder case.
        .provider("spin", &py(SPIN), "oneshot", "[limits]\ncpu = 2.0\npids = 32\nwall_time = \"3s\"\n")
        .provider("fds", &py(FDS), "session", "[limits]\nopen_files = 64\n")
        .provider("flood", &py(FLOOD), "oneshot", "[limits]\noutput_bytes = \"1M\"\nwall_time = \"10m\"\n")
        .provider("sflood", &py(SFLOOD), "session", "[limits]\noutput_bytes = \"1M\"\n")
        .provider("noterm", &py(NOTERM), "oneshot", "[limits]\nwall_time = \"60s\"\n")
        .provider("dfork", &py(DFORK), "oneshot", "[limits]\nwall_time = \"60s\"\n")
        // The same without a pid namespace: the grandchild reparents to a host process, and
        // only the cgroup holds it.
        .provider("dfork-nopidns", &py(DFORK), "oneshot", "[limits]\nwall_time = \"60s\"\n[namespaces]\npid = false\n")
        .start()
}

impl Daemon {
    fn info(&self, id: &str) -> Value {
        call(&self.socket, "GET", &format!("/v1/cells/{id}"), None).json()
    }

    /// Poll until the cell has exited; its info.
    fn wait_exited(&self, id: &str, within: Duration) -> Value {
        let t = Instant::now();
        loop {
            let info = self.info(id);
            if info["state"] == "exited" {
                return info;
            }
            assert!(t.elapsed() < within, "cell {id} still running after {within:?}: {info}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Poll the (non-follow) output until it contains `needle`.
    /// Polls the cell's output for `needle`. Each poll asks only for what is new since the
    /// last one (less the needle's length, for a needle split between polls): re-reading the
    /// whole spool every 20 ms would itself load the daemon the abuse tests measure.
    fn wait_output(&self, id: &str, needle: &str, within: Duration) -> String {
        let t = Instant::now();
        let mut from = 0u64;
        loop {
            let (events, text) = self.output(id, from);
            if text.contains(needle) {
                return text;
            }
            assert!(t.elapsed() < within, "cell {id}: no {needle:?} in its output after {within:?}: {text}");
            let end = events
                .iter()
                .filter(|e| e["type"] == "data")
                .filter_map(|e| Some(e["offset"].as_u64()? + e["data"].as_str()?.len() as u64))
                .max();
            if let Some(end) = end {
                from = from.max(end.saturating_sub(needle.len() as u64));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the spool holds from `from`: (events, the data concatenated).
    fn output(&self, id: &str, from: u64) -> (Vec<Value>, String) {
        let r = call(&self.socket, "GET", &format!("/v1/cells/{id}/output?from={from}&follow=false"), None);
        assert_eq!(r.status, 200, "output of {id}: {}", r.text());
        let events: Vec<Value> = r.text().lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let data = events.iter().filter(|e| e["type"] == "data").map(|e| e["data"].as_str().unwrap_or("")).collect();
        (events, data)
    }

    /// Terminate the ordinary cell (it must still be running), then: no cell cgroup and no
    /// abusive process is left on the host.
    #[track_caller]
    fn assert_clean_after(&self, cat: &str) {
        let r = call(&self.socket, "DELETE", &format!("/v1/cells/{cat}"), None);
        assert_eq!(r.status, 200, "terminate the cat session: {}", r.text());
        assert_eq!(r.json()["exit"]["reason"], "terminated", "{}", r.text());
        let running = call(&self.socket, "GET", "/v1/cells", None).json();
        assert_eq!(running.as_array().map(Vec::len), Some(0), "cells still running: {running}");
        let t = Instant::now();
        while (!self.cells_on_disk().is_empty() || host_has_process(&self.marker))
            && t.elapsed() < Duration::from_secs(3)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(self.cells_on_disk().is_empty(), "cell cgroups left: {:?}", self.cells_on_disk());
        assert!(!host_has_process(&self.marker), "a process of an abusive cell ({}) is still on the host", self.marker);
    }
}

/// One `GET /v1/health` on a fresh connection, with a 10 s read timeout: the status, or why not.
fn health_once(socket: &Path) -> Result<(), String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: cellkeep\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&resp);
    let status = text.split_whitespace().nth(1).unwrap_or("");
    if status != "200" || !text.contains("\"status\"") {
        return Err(format!("answer: {text}"));
    }
    Ok(())
}

#[derive(Default)]
struct Seen {
    health_n: u64,
    health_worst: Duration,
    health_total: Duration,
    health_failures: Vec<String>,
    cat_n: u64,
    cat_worst: Duration,
    cat_failures: Vec<String>,
    rss_peak: u64,
}

/// While an abuse case runs: health probed every 20 ms, the cat session asked every 20 ms,
/// the daemon's RSS sampled.
struct Watch {
    case: &'static str,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    started: Instant,
}

impl Watch {
    fn start(d: &Daemon, case: &'static str, cat: &str) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut threads = Vec::new();
        {
            let (stop, seen, socket, pid) = (stop.clone(), seen.clone(), d.socket.clone(), d.pid());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let t = Instant::now();
                    let r = health_once(&socket);
                    let took = t.elapsed();
                    let rss = rss_of(pid);
                    {
                        let mut s = seen.lock().unwrap();
                        s.health_n += 1;
                        s.health_total += took;
                        s.health_worst = s.health_worst.max(took);
                        s.rss_peak = s.rss_peak.max(rss);
                        if let Err(e) = r {
                            s.health_failures.push(e);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }));
        }
        {
            let (stop, seen, socket, cat) = (stop.clone(), seen.clone(), d.socket.clone(), cat.to_owned());
            threads.push(std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let line = format!("{case} command {i} {}", "x".repeat((i % 40) as usize));
                    let t = Instant::now();
                    let r = raw(
                        &socket,
                        "POST",
                        &format!("/v1/cells/{cat}/commands"),
                        &serde_json::to_vec(&json!({"command": line, "timeout_ms": 10_000})).expect("json"),
                    );
                    let took = t.elapsed();
                    let mut s = seen.lock().unwrap();
                    s.cat_n += 1;
                    s.cat_worst = s.cat_worst.max(took);
                    match r {
                        Ok(r) if r.status == 200 && r.json()["stdout"] == line.as_str() => {}
                        Ok(r) => s.cat_failures.push(format!("command {i}: {} {}", r.status, r.text())),
                        Err(e) => s.cat_failures.push(format!("command {i}: {e}")),
                    }
                    drop(s);
                    i += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }));
        }
        Watch { case, stop, seen, threads, started: Instant::now() }
    }

    /// Stop the probes, print the figures, assert every probe and command was answered.
    #[track_caller]
    fn finish(self, rss_before: u64) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().expect("probe thread");
        }
        let s = std::mem::take(&mut *self.seen.lock().unwrap());
        let mean = if s.health_n > 0 { s.health_total.as_secs_f64() * 1000.0 / s.health_n as f64 } else { 0.0 };
        eprintln!(
            "ABUSE-HEALTH {} worst={:.1}ms mean={:.1}ms probes={} failures={} over={:.1}s",
            self.case,
            s.health_worst.as_secs_f64() * 1000.0,
            mean,
            s.health_n,
            s.health_failures.len(),
            self.started.elapsed().as_secs_f64()
        );
        eprintln!(
            "ABUSE-CAT {} commands={} worst={:.1}ms failures={}",
            self.case,
            s.cat_n,
            s.cat_worst.as_secs_f64() * 1000.0,
            s.cat_failures.len()
        );
        eprintln!(
            "ABUSE-RSS {} daemon_before={:.1}MiB peak={:.1}MiB",
            self.case,
            rss_before as f64 / MIB as f64,
            s.rss_peak as f64 / MIB as f64
        );
        assert!(s.health_n >= 3, "{}: only {} health probes ran", self.case, s.health_n);
        assert!(s.health_failures.is_empty(), "{}: health did not answer: {:?}", self.case, s.health_failures);
        assert!(s.cat_n >= 2, "{}: only {} cat commands ran", self.case, s.cat_n);
        assert!(s.cat_failures.is_empty(), "{}: the ordinary cell failed: {:?}", self.case, s.cat_failures);
        s
    }
}

/// Start the daemon and the ordinary cell, and begin watching.
fn setup(case: &'static str) -> (Daemon, String, Watch, u64) {
    let d = daemon();
    let cat = id_of(&d.spawn("cat"));
    let r = d.send(&cat, "warm up", COMMAND_MS);
    assert_eq!(r.json()["stdout"], "warm up", "{}", r.text());
    let rss_before = rss_of(d.pid());
    let w = Watch::start(&d, case, &cat);
    (d, cat, w, rss_before)
}

fn reason(info: &Value) -> &str {
    info["exit"]["reason"].as_str().unwrap_or("<none>")
}

// 1. Fork bomb at pids = 32: forks are refused at the limit, the bomb ends by itself after 3 s,
//    and the cell's reason is pids_limited with the hits recorded.
#[test]
fn fork_bomb() {
    gate!("fork_bomb");
    let (d, cat, w, rss) = setup("fork_bomb");
    let id = id_of(&d.spawn("bomb"));
    let info = d.wait_exited(&id, Duration::from_secs(20));
    w.finish(rss);
    eprintln!("ABUSE-REASON fork_bomb {} events={}", info["exit"], info["events"]);
    assert_eq!(reason(&info), "pids_limited", "{info}");
    assert!(info["events"]["pids_max_hits"].as_u64().unwrap_or(0) >= 1, "{info}");
    d.assert_clean_after(&cat);
}

// 2. Memory balloon at memory_max = 64M (no swap): children and then the payload are
//    OOM-killed; the reason is oom_killed.
#[test]
fn memory_balloon() {
    gate!("memory_balloon");
    let (d, cat, w, rss) = setup("memory_balloon");
    let id = id_of(&d.spawn("balloon"));
    let info = d.wait_exited(&id, Duration::from_secs(25));
    w.finish(rss);
    eprintln!("ABUSE-REASON memory_balloon {} events={}", info["exit"], info["events"]);
    assert_eq!(reason(&info), "oom_killed", "{info}");
    assert!(info["events"]["oom_kills"].as_u64().unwrap_or(0) >= 1, "{info}");
    d.assert_clean_after(&cat);
}

// 3. A busy loop on every core (twice over, allowed 2 CPUs) for its whole wall_time of 3 s:
//    the reason is timed_out.
#[test]
fn cpu_spin_every_core() {
    gate!("cpu_spin_every_core");
    let (d, cat, w, rss) = setup("cpu_spin_every_core");
    let t = Instant::now();
    let id = id_of(&d.spawn("spin"));
    let info = d.wait_exited(&id, Duration::from_secs(15));
    let took = t.elapsed();
    w.finish(rss);
    eprintln!("ABUSE-REASON cpu_spin_every_core {} after {took:?}", info["exit"]);
    assert_eq!(reason(&info), "timed_out", "{info}");
    assert!(took >= Duration::from_millis(2900), "ended before its wall time: {took:?}");
    d.assert_clean_after(&cat);
}

// 4. fd exhaustion at open_files = 64: the process gets EMFILE at the limit, keeps the fds,
//    and the cell otherwise works (answers, closes them, opens again); the daemon's own fds do
//    not grow. Terminate → terminated.
#[test]
fn fd_exhaustion() {
    gate!("fd_exhaustion");
    let (d, cat, w, rss) = setup("fd_exhaustion");
    let fds_before = open_fds_of(d.pid());
    let id = id_of(&d.spawn("fds"));
    let r = d.send(&id, "open", COMMAND_MS);
    let reply = r.json()["stdout"].as_str().unwrap_or("").to_owned();
    eprintln!("ABUSE-FDS reply {reply:?}");
    let n: u64 = reply.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(reply.starts_with("opened ") && reply.ends_with(" EMFILE"), "{}", r.text());
    assert!((55..64).contains(&n), "opened {n} fds under open_files = 64: {reply}");
    // Held at the limit for a while: the cell still answers.
    for _ in 0..20 {
        let r = d.send(&id, "ping", COMMAND_MS);
        assert_eq!(r.json()["stdout"], format!("pong {n}"), "{}", r.text());
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(d.send(&id, "close", COMMAND_MS).json()["stdout"], "closed");
    let again = d.send(&id, "open", COMMAND_MS).json()["stdout"].as_str().unwrap_or("").to_owned();
    assert_eq!(again, reply, "after closing, the same number opens again");
    let fds_during = open_fds_of(d.pid());
    let r = call(&d.socket, "DELETE", &format!("/v1/cells/{id}"), None);
    w.finish(rss);
    assert_eq!(r.status, 200, "{}", r.text());
    eprintln!("ABUSE-REASON fd_exhaustion {} daemon_fds before={fds_before} during={fds_during}", r.json()["exit"]);
    assert_eq!(reason(&r.json()), "terminated", "{}", r.text());
    assert!(fds_during <= fds_before + 16, "daemon fds grew from {fds_before} to {fds_during}");
    d.assert_clean_after(&cat);
}

/// A follower that reads the live output slowly (4 KiB every 50 ms) until it sees `lagged`;
/// (saw lagged, bytes read).
fn slow_follower(socket: PathBuf, id: String) -> std::thread::JoinHandle<(bool, u64)> {
    std::thread::spawn(move || {
        let mut s = UnixStream::connect(&socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        write!(s, "GET /v1/cells/{id}/output?from=0&follow=true HTTP/1.1\r\nHost: cellkeep\r\n\r\n").expect("request");
        let (mut total, mut tail) = (0u64, Vec::<u8>::new());
        let mut buf = [0u8; 4096];
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(60) {
            let n = match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            total += n as u64;
            tail.extend_from_slice(&buf[..n]);
            if tail.windows(15).any(|w| w == b"\"type\":\"lagged\"") {
                return (true, total);
            }
            let keep = tail.len().saturating_sub(32);
            tail.drain(..keep);
            std::thread::sleep(Duration::from_millis(50));
        }
        (false, total)
    })
}

// 5. Output flood of ABUSE_FLOOD_BYTES (default 2 GiB) at output_bytes = 1M: the daemon's RSS
//    stays bounded, the spool keeps exactly output_bytes, a slow reader gets `lagged`, and a
//    reader from 0 afterwards gets `lagged` for everything dropped, then the last 1 MiB.
#[test]
fn output_flood() {
    gate!("output_flood");
    let bytes: u64 = std::env::var("ABUSE_FLOOD_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(2 << 30);
    let (d, cat, w, rss_before) = setup("output_flood");
    let t = Instant::now();
    let id = id_of(&d.spawn_with("flood", &[&bytes.to_string()]));
    let follower = slow_follower(d.socket.clone(), id.clone());
    let info = d.wait_exited(&id, Duration::from_secs(600));
    let took = t.elapsed();
    let rss_after = rss_of(d.pid());
    let seen = w.finish(rss_before);
    let (lagged, read) = follower.join().expect("follower");
    let mib = |b: u64| b as f64 / MIB as f64;
    eprintln!(
        "ABUSE-FLOOD bytes={bytes} took={:.1}s rate={:.0}MiB/s rss_before={:.1}MiB rss_after={:.1}MiB rss_peak={:.1}MiB growth={:.1}MiB peak_growth={:.1}MiB slow_reader_lagged={lagged} slow_reader_read={read}",
        took.as_secs_f64(),
        mib(bytes) / took.as_secs_f64(),
        mib(rss_before),
        mib(rss_after),
        mib(seen.rss_peak),
        mib(rss_after.saturating_sub(rss_before)),
        mib(seen.rss_peak.saturating_sub(rss_before))
    );
    eprintln!("ABUSE-REASON output_flood {}", info["exit"]);
    assert_eq!(reason(&info), "exited", "{info}");
    assert_eq!(info["exit"]["code"], 0, "{info}");
    assert!(rss_before > 0 && rss_after > 0, "no VmRSS read");
    assert!(rss_after < rss_before + 64 * MIB, "daemon RSS grew by {:.1} MiB", mib(rss_after - rss_before));
    assert!(seen.rss_peak < rss_before + 64 * MIB, "daemon RSS peaked {:.1} MiB up", mib(seen.rss_peak - rss_before));
    assert!(lagged, "the slow reader never got `lagged` (read {read} bytes)");
    // What the spool holds: everything but the last output_bytes was dropped.
    let (events, data) = d.output(&id, 0);
    let kept = bytes.min(MIB);
    assert_eq!(events.first().map(|e| e["type"].clone()), Some(json!("lagged")), "{:?}", events.first());
    assert_eq!(events[0]["dropped"], bytes - kept, "{}", events[0]);
    assert_eq!(data.len() as u64, kept, "the spool keeps output_bytes");
    assert_eq!(events[1]["offset"], bytes - kept, "{}", events[1]);
    assert_eq!(events.last().map(|e| e["type"].clone()), Some(json!("end")));
    assert!(
        data.ends_with('\n') && data.contains("flood-0123456789abcdefghijklmnopqrstuvwxyz-"),
        "not the flood's tail"
    );
    d.assert_clean_after(&cat);
}

// 6. A process (and its child) that ignores SIGTERM: terminate still ends it, after the grace
//    (SIGKILL of the whole cgroup); the reason is terminated.
#[test]
fn ignores_sigterm() {
    gate!("ignores_sigterm");
    let (d, cat, w, rss) = setup("ignores_sigterm");
    let id = id_of(&d.spawn("noterm"));
    d.wait_output(&id, "ready", Duration::from_secs(10));
    let t = Instant::now();
    let r = call(&d.socket, "DELETE", &format!("/v1/cells/{id}"), None);
    let took = t.elapsed();
    w.finish(rss);
    assert_eq!(r.status, 200, "{}", r.text());
    eprintln!("ABUSE-REASON ignores_sigterm {} terminate took {took:?} (grace {GRACE_SECS} s)", r.json()["exit"]);
    assert_eq!(reason(&r.json()), "terminated", "{}", r.text());
    assert!(took >= Duration::from_secs_f64(GRACE_SECS * 0.9), "ended before the grace: {took:?}");
    assert!(took < Duration::from_secs_f64(GRACE_SECS + 5.0), "terminate took {took:?}");
    d.assert_clean_after(&cat);
}

// 7. Double fork + setsid, the grandchild reparented away from the payload and ignoring
//    SIGTERM; the payload stays; terminate → terminated, and the grandchild is gone too.
#[test]
fn double_fork_then_terminate() {
    gate!("double_fork_then_terminate");
    let (d, cat, w, rss) = setup("double_fork_then_terminate");
    let id = id_of(&d.spawn_with("dfork", &["stay"]));
    d.wait_output(&id, "detached", Duration::from_secs(10));
    assert!(host_has_process(&d.marker), "the cell's processes are not visible on the host");
    assert!(d.ws.path().join("grandchild.alive").exists(), "the grandchild never ran");
    // Let it live detached for a while, with the watch running.
    std::thread::sleep(Duration::from_secs(1));
    let r = call(&d.socket, "DELETE", &format!("/v1/cells/{id}"), None);
    w.finish(rss);
    assert_eq!(r.status, 200, "{}", r.text());
    eprintln!("ABUSE-REASON double_fork_then_terminate {}", r.json()["exit"]);
    assert_eq!(reason(&r.json()), "terminated", "{}", r.text());
    d.assert_clean_after(&cat);
}

// 8. Double fork without a pid namespace: the payload exits 0 at once, leaving a daemonised
//    grandchild reparented to a host process; the cell ends `exited` 0 and the cgroup kill
//    takes the grandchild with it.
#[test]
fn double_fork_then_exit_without_pid_namespace() {
    gate!("double_fork_then_exit_without_pid_namespace");
    let (d, cat, w, rss) = setup("double_fork_then_exit_without_pid_namespace");
    let id = id_of(&d.spawn_with("dfork-nopidns", &["exit"]));
    let info = d.wait_exited(&id, Duration::from_secs(20));
    w.finish(rss);
    let out = d.output(&id, 0).1;
    eprintln!("ABUSE-REASON double_fork_then_exit_without_pid_namespace {} output {out:?}", info["exit"]);
    assert!(out.contains("detached"), "the payload did not run to its end: {out:?} {info}");
    assert!(d.ws.path().join("grandchild.alive").exists(), "the grandchild never ran");
    assert_eq!(reason(&info), "exited", "{info}");
    assert_eq!(info["exit"]["code"], 0, "{info}");
    d.assert_clean_after(&cat);
}

// 9. Output flood into a session: 70 lines of 15 MiB written before any command (each a whole
//    reply under the 16 MiB reply cap, none asked for). The daemon must not hold them: its RSS
//    stays bounded while the session idles, and the next command gets its own reply. (Found
//    here: the pump once queued unrequested replies, up to 64 x 16 MiB per session; then the
//    framer still built each 15 MiB reply before dropping it, which cost the health probe up
//    to 94 ms. Now a reply nobody waits for is kept only up to the framer's IDLE_KEEP.)
#[test]
fn session_reply_flood() {
    gate!("session_reply_flood");
    let (d, cat, w, rss_before) = setup("session_reply_flood");
    let id = id_of(&d.spawn("sflood"));
    d.wait_output(&id, "ready", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    let rss_idle = rss_of(d.pid());
    let r = d.send(&id, "hello", COMMAND_MS);
    let rss_after = rss_of(d.pid());
    let seen = w.finish(rss_before);
    let mib = |b: u64| b as f64 / MIB as f64;
    eprintln!(
        "ABUSE-SFLOOD rss_before={:.1}MiB rss_idle={:.1}MiB rss_after_command={:.1}MiB peak={:.1}MiB reply={}",
        mib(rss_before),
        mib(rss_idle),
        mib(rss_after),
        mib(seen.rss_peak),
        r.text().chars().take(200).collect::<String>()
    );
    assert_eq!(r.json()["stdout"], "ok", "{}", r.text().chars().take(300).collect::<String>());
    // Bounded by design: an unrequested reply is held at most IDLE_KEEP (64 KiB), plus the
    // spool and the read buffers (seen: +3–5 MiB here); the bugs this guards against held
    // ~1 GiB (queued replies), then +50 MiB (each 15 MiB reply built, then dropped).
    assert!(
        seen.rss_peak.max(rss_idle) < rss_before + 32 * MIB,
        "daemon RSS grew {:.1} MiB holding replies nobody asked for",
        mib(seen.rss_peak.max(rss_idle) - rss_before)
    );
    let r = call(&d.socket, "DELETE", &format!("/v1/cells/{id}"), None);
    assert_eq!(reason(&r.json()), "terminated", "{}", r.text());
    d.assert_clean_after(&cat);
}
