//! Fault survival (issue 7, item 3), short CI versions: the daemon killed with live cells, a
//! client killed mid-request, a full disk under a cell, the policy dir vanishing during a
//! reload, and a cell's cgroup removed behind the daemon's back. Each case: nothing leaks,
//! the daemon keeps serving, and its log says what happened.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: failing loudly is the point

mod common;
mod harness;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::gate;
use common::http::call;
use common::NOBODY;
use harness::{alive, id_of, Daemon};
use serde_json::json;

fn providers() -> Vec<(&'static str, &'static str, &'static str, &'static str)> {
    vec![
        ("cat", "[\"/bin/cat\"]", "session", ""),
        ("sleep", "[\"/bin/sleep\"]", "oneshot", ""),
        ("sh", "[\"/bin/sh\", \"-c\"]", "oneshot", "[limits]\ntmp_size = \"1M\"\n"),
    ]
}

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

// 1. kill -9 with 20 live cells, then a restart: every payload process and every cgroup dir of
//    every cell is gone, the restarted daemon logged each recovery, and it serves.
#[test]
fn kill9_with_20_cells_then_restart_leaks_nothing() {
    gate!("kill9_with_20_cells_then_restart_leaks_nothing");
    let mut d = Daemon::start(20, "", &providers());
    let ids: Vec<String> = (0..20).map(|_| id_of(&d.spawn("cat"))).collect();
    let root = d.root();
    let mut pids = Vec::new();
    for id in &ids {
        pids.extend(root.open_cell(id).expect("cell").procs().expect("procs").into_iter().map(u64::from));
    }
    let dirs = d.cell_dirs();
    eprintln!("kill9: {} cells, {} processes, {} cgroup dirs", ids.len(), pids.len(), dirs.len());
    assert!(pids.len() >= 40, "expected helper + pid 1 + payload per cell: {pids:?}");
    d.kill9();
    assert_eq!(d.cells_on_disk().len(), 20, "cells outlive a killed daemon until the restart");
    // The cells' processes die with the daemon (the helper's parent-death signal); their
    // cgroups stay behind for the restart to find.
    let survivors = pids.iter().filter(|p| alive(**p)).count();
    eprintln!("kill9: {survivors} of {} cell processes outlived the daemon", pids.len());
    d.launch();
    let left: Vec<u64> = pids.iter().copied().filter(|p| alive(*p)).collect();
    let dirs_left: Vec<_> = dirs.iter().filter(|p| p.exists()).collect();
    eprintln!("kill9: after restart {} processes, {} cgroup dirs left", left.len(), dirs_left.len());
    assert!(left.is_empty(), "processes leaked: {left:?}");
    assert!(dirs_left.is_empty(), "cgroup dirs leaked: {dirs_left:?}");
    assert!(d.cells_on_disk().is_empty(), "{:?}", d.cells_on_disk());
    let line = d.wait_log(&["cleaned up cells left by a previous daemon"], Duration::from_secs(2));
    assert!(line.contains("count=20"), "{line}");
    let log = d.log();
    for id in &ids {
        assert!(
            log.lines().any(|l| l.contains("of an orphaned cell") && l.contains(id.as_str())),
            "no recovery line for {id}:\n{log}"
        );
    }
    assert_eq!(d.health()["cells_running"], 0);
    let id = id_of(&d.spawn("cat"));
    assert_eq!(d.send(&id, "after restart", 10_000).json()["stdout"], "after restart");
}

/// Cells on disk and all their processes.
fn cells_and_procs(d: &Daemon) -> (Vec<String>, Vec<u64>) {
    let root = d.root();
    let cells = d.cells_on_disk();
    let pids = cells.iter().filter_map(|id| root.open_cell(id).ok()?.procs().ok()).flatten().map(u64::from).collect();
    (cells, pids)
}

// 2. Clients killed mid-request: a process asking for a one-shot `sleep 2` is SIGKILLed while
//    it waits, and followers of /output hang up mid-stream. The daemon keeps serving, the
//    one-shot cell is ended and removed, the session goes on, and the daemon's fds come back.
#[test]
fn client_killed_mid_request() {
    gate!("client_killed_mid_request");
    let d = Daemon::start(20, "", &providers());
    assert_eq!(d.health()["cells_running"], 0);
    let fds_before = d.fd_count();
    // a) a one-shot requested by a child process that is SIGKILLed mid-request.
    let body = json!({"command": "2", "cwd": d.cwd()}).to_string();
    let script = "import socket,sys,time\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\nb=sys.argv[2].encode()\ns.sendall(b'POST /v1/providers/sleep/commands HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: application/json\\r\\nContent-Length: %d\\r\\n\\r\\n' % len(b) + b)\nprint('sent', flush=True)\ntime.sleep(60)\n";
    let mut client = Command::new("python3")
        .args(["-c", script])
        .arg(&d.socket)
        .arg(&body)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 client");
    let mut line = String::new();
    BufReader::new(client.stdout.take().expect("stdout")).read_line(&mut line).expect("client output");
    assert_eq!(line.trim(), "sent");
    wait_until("the one-shot cell to start", Duration::from_secs(5), || !d.cells_on_disk().is_empty());
    std::thread::sleep(Duration::from_millis(300));
    let (cells, pids) = cells_and_procs(&d);
    eprintln!("mid-request: cell {cells:?} with pids {pids:?}; SIGKILL the client");
    client.kill().expect("kill the client");
    client.wait().expect("reap the client");
    let t = Instant::now();
    assert!(d.health()["cells_running"].as_u64().unwrap_or(99) <= 1);
    wait_until("the orphaned one-shot cell to go", Duration::from_secs(6), || {
        d.cells_on_disk().is_empty() && pids.iter().all(|p| !alive(*p))
    });
    eprintln!("mid-request: cell gone {:?} after the client died", t.elapsed());
    let l = d.wait_log(
        &["client hung up before the reply; request abandoned", "/v1/providers/sleep/commands"],
        Duration::from_secs(2),
    );
    eprintln!("mid-request log: {l}");
    for id in &cells {
        let l = d.wait_log(&["cell ended", id.as_str()], Duration::from_secs(2));
        eprintln!("mid-request log: {l}");
    }
    // b) followers of a session's output that hang up mid-stream, 30 times.
    let id = id_of(&d.spawn("cat"));
    for i in 0..3 {
        d.send(&id, &format!("before {i}"), 10_000);
    }
    for _ in 0..30 {
        let mut s = std::os::unix::net::UnixStream::connect(&d.socket).expect("connect");
        write!(s, "GET /v1/cells/{id}/output?from=0&follow=true HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
        let mut buf = [0u8; 64];
        assert!(s.read(&mut buf).expect("read") > 0);
        drop(s);
    }
    let l = d.wait_log(
        &["client hung up mid-stream; the cell goes on", &format!("/v1/cells/{id}/output")],
        Duration::from_secs(2),
    );
    eprintln!("mid-stream log: {l}");
    for i in 0..3 {
        let r = d.send(&id, &format!("after {i}"), 10_000);
        assert_eq!(r.json()["stdout"], format!("after {i}"), "session broken: {}", r.text());
    }
    let r = call(&d.socket, "DELETE", &format!("/v1/cells/{id}"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until("the session's cgroup to go", Duration::from_secs(5), || d.cells_on_disk().is_empty());
    let fds_after = d.settle_fds(fds_before + 2, Duration::from_secs(5));
    eprintln!("mid-request: daemon fds before {fds_before}, after {fds_after}");
    assert!(fds_after <= fds_before + 2, "fd leak: {fds_before} → {fds_after}");
    // The retained output of the two ended cells (still listed) is held open, nothing more.
    let listed = call(&d.socket, "GET", "/v1/cells?all=true", None).json().as_array().map_or(0, Vec::len);
    assert!(d.spool_fds() <= listed, "spool fds {} for {listed} listed cells", d.spool_fds());
    assert_eq!(d.health()["cells_running"], 0);
}

// 2b. Clients that hang up while their one-shot is still being launched (cgroup made, helper
//     starting): the launch is not cancelled halfway. Each request that reached the daemon
//     ends as a complete cell (it runs, ends and is removed) — no cgroup dir, process or slot
//     is left owned by nobody. Hang-ups are spread over the launch's duration, 0 to 40 ms
//     after the request (on a slow machine the later ones simply land after the launch).
//     Then 40 sessions started and ended: an ended session, still listed, holds no pipe.
#[test]
fn client_gone_mid_launch_leaks_nothing() {
    gate!("client_gone_mid_launch_leaks_nothing");
    let d = Daemon::start(40, "", &providers());
    let fds_before = d.fd_count();
    let body = json!({"command": "0", "cwd": d.cwd()}).to_string();
    for delay_ms in 0..40u64 {
        let mut s = std::os::unix::net::UnixStream::connect(&d.socket).expect("connect");
        write!(
            s,
            "POST /v1/providers/sleep/commands HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("request");
        std::thread::sleep(Duration::from_millis(delay_ms));
        drop(s);
    }
    wait_until("every launched cell to end and its cgroup to go", Duration::from_secs(60), || {
        d.cells_on_disk().is_empty() && d.health()["cells_running"] == 0
    });
    // Every hang-up the daemon saw is a request abandoned, and each of their cells ended.
    let cells = call(&d.socket, "GET", "/v1/cells?all=true", None).json();
    let cells = cells.as_array().expect("cell list");
    eprintln!("mid-launch: {} cells were launched for 40 abandoned requests, all ended", cells.len());
    for c in cells {
        assert!(!c["exit"].is_null(), "a cell of an abandoned request never ended: {c}");
    }
    let fds_mid = d.settle_fds(fds_before + 2, Duration::from_secs(5));
    assert!(fds_mid <= fds_before + 2, "fd leak after the abandoned launches: {fds_before} → {fds_mid}");
    // The slots came back: the cap (40) admits 40 live sessions again.
    let ids: Vec<String> = (0..40).map(|_| id_of(&d.spawn("cat"))).collect();
    for id in &ids {
        assert_eq!(call(&d.socket, "DELETE", &format!("/v1/cells/{id}"), None).status, 200);
    }
    wait_until("the sessions' cgroups to go", Duration::from_secs(20), || d.cells_on_disk().is_empty());
    let listed = call(&d.socket, "GET", "/v1/cells?all=true", None).json().as_array().map_or(0, Vec::len);
    let fds_after = d.settle_fds(fds_before + 2, Duration::from_secs(5));
    assert!(fds_after <= fds_before + 2, "fd leak after 40 ended sessions: {fds_before} → {fds_after}");
    assert!(d.spool_fds() <= listed, "spool fds {} for {listed} listed cells", d.spool_fds());
}

/// A small tmpfs mounted for the test (lazily unmounted on drop).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new().prefix("ck-full-").tempdir().expect("mount point");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(st.success(), "mount tmpfs");
        std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).expect("chown");
        Tmpfs(dir)
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

// 3. A full disk under a cell: its workspace is a 1 MiB tmpfs filled to the last byte, and its
//    private tmp (1 MiB here) is filled from inside. The writes fail with ENOSPC, the answer
//    carries the error and the exit status, the daemon keeps serving.
#[test]
fn full_disk_under_a_cell() {
    gate!("full_disk_under_a_cell");
    let d = Daemon::start(20, "", &providers());
    let fs = Tmpfs::new("1m");
    let ws = fs.path().join("proj");
    std::fs::create_dir(&ws).expect("proj");
    std::os::unix::fs::chown(&ws, Some(NOBODY), Some(NOBODY)).expect("chown");
    // Fill it as root.
    let mut f = std::fs::File::create(fs.path().join("filler")).expect("filler");
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    drop(f);
    let cwd = ws.display().to_string();
    let oneshot = |cmd: &str, cwd: &str| {
        call(&d.socket, "POST", "/v1/providers/sh/commands", Some(&json!({"command": cmd, "cwd": cwd})))
    };
    let r = oneshot("head -c 4096 /dev/zero > out.txt", &cwd);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    eprintln!("full workspace: {v}");
    assert!(v["stderr"].as_str().unwrap_or("").contains("No space left on device"), "{v}");
    assert_eq!(v["exit"]["reason"], "exited", "{v}");
    assert_ne!(v["exit"]["code"], 0, "{v}");
    // The private tmp has a size cap: filling it fails with ENOSPC too.
    let r = oneshot("head -c 8M /dev/zero > \"$TMPDIR/big\"; echo rc=$?", &d.cwd());
    let v = r.json();
    eprintln!("full private tmp: {v}");
    assert!(v["stderr"].as_str().unwrap_or("").contains("No space left on device"), "{v}");
    assert!(v["stdout"].as_str().unwrap_or("").contains("rc=1"), "{v}");
    // A session whose workspace is full still works, and the daemon serves.
    let r = call(&d.socket, "POST", "/v1/cells", Some(&json!({"provider": "cat", "cwd": cwd})));
    assert_eq!(r.status, 201, "{}", r.text());
    let id = id_of(&r.json());
    assert_eq!(d.send(&id, "still here", 10_000).json()["stdout"], "still here");
    assert_eq!(d.health()["cells_running"], 1);
    let l = d.wait_log(&["cell ended", "provider=sh"], Duration::from_secs(2));
    eprintln!("full disk log: {l}");
}

// 3b. A full disk under the output spool: the daemon's spool_dir is a 1 MiB tmpfs and a cell
//     prints 3 MiB. Writing the spool fails with ENOSPC: that is logged once, the answer says its
//     output was cut, the cell ends as it would, and the daemon keeps serving.
#[test]
fn full_disk_under_the_spool() {
    gate!("full_disk_under_the_spool");
    let fs = Tmpfs::new("1m");
    let d = Daemon::start(20, &format!("spool_dir = {:?}", fs.path().display().to_string()), &providers());
    let r = call(
        &d.socket,
        "POST",
        "/v1/providers/sh/commands",
        Some(&json!({"command": "head -c 3M /dev/zero | tr '\\0' x; echo done >&2", "cwd": d.cwd()})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["exit"]["reason"], "exited", "{v}");
    assert_eq!(v["exit"]["code"], 0, "{v}");
    assert_eq!(v["truncated"], true, "{v}");
    d.wait_log(&["cannot write cell output to its spool"], Duration::from_secs(5));
    let r = call(&d.socket, "POST", "/v1/cells", Some(&json!({"provider": "cat", "cwd": d.cwd()})));
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(d.health()["cells_running"].as_u64() >= Some(1));
}

// 4. The policy dir disappears (renamed away; chmod 000 does not stop root) and SIGHUP asks for
//    a reload: it is rejected with the reason logged, the old set is kept and spawns work. Put
//    back, the next SIGHUP reloads.
#[test]
fn policy_dir_gone_during_reload() {
    gate!("policy_dir_gone_during_reload");
    let d = Daemon::start(20, "", &providers());
    let dir = d.policy_dir();
    let away = d.dir.path().join("policies.away");
    std::fs::rename(&dir, &away).expect("rename the policy dir away");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.pid() as i32), nix::sys::signal::Signal::SIGHUP)
        .expect("SIGHUP");
    let line = d.wait_log(&["SIGHUP"], Duration::from_secs(5));
    eprintln!("reload with the dir gone: {line}");
    let log = d.log();
    eprintln!("log:\n{log}");
    assert!(line.contains("reload rejected"), "a missing policy dir was accepted: {line}");
    assert!(log.contains(&dir.display().to_string()), "the log does not name the policy dir");
    let id = id_of(&d.spawn("cat"));
    assert_eq!(d.send(&id, "old policies", 10_000).json()["stdout"], "old policies");
    let r = call(&d.socket, "POST", "/v1/providers/sleep/commands", Some(&json!({"command": "0", "cwd": d.cwd()})));
    assert_eq!(r.json()["exit"]["code"], 0, "{}", r.text());
    // An empty dir (no policies at all) is not a valid set either … put the real one back.
    std::fs::rename(&away, &dir).expect("rename back");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.pid() as i32), nix::sys::signal::Signal::SIGHUP)
        .expect("SIGHUP");
    let line = d.wait_log(&["SIGHUP: policies reloaded"], Duration::from_secs(5));
    eprintln!("reload after restore: {line}");
    d.spawn("cat");
}

// 5. A cell's cgroup removed behind the daemon's back: its processes SIGKILLed and its cgroup
//    dirs rmdir'ed by the test. The daemon ends the cell with a reason, frees its slot (cap 2),
//    keeps serving the other cell, removes nothing twice, and logs the end.
#[test]
fn cgroup_removed_behind_the_daemons_back() {
    gate!("cgroup_removed_behind_the_daemons_back");
    let d = Daemon::start(2, "", &providers());
    let victim = id_of(&d.spawn("cat"));
    let other = id_of(&d.spawn("cat"));
    let root = d.root();
    let cg = root.open_cell(&victim).expect("victim cgroup");
    let dirs: Vec<_> = cg.paths().into_iter().filter(|p| p.exists()).collect();
    let pids = cg.procs().expect("procs");
    eprintln!("victim {victim}: pids {pids:?}, dirs {dirs:?}");
    // Move its processes out (into the test's cgroup root) so its dirs can go while they live,
    // rmdir every dir, then SIGKILL the processes: the daemon finds its cgroup already gone.
    for dir in &dirs {
        let parent = dir.parent().expect("parent").join("cgroup.procs");
        for p in &pids {
            // v2: a parent with controllers enabled takes no processes (EBUSY, the
            // no-internal-process rule); the root cgroup always does.
            let moved = std::fs::write(&parent, p.to_string())
                .or_else(|_| std::fs::write("/sys/fs/cgroup/cgroup.procs", p.to_string()));
            moved.unwrap_or_else(|e| panic!("move {p} out of {}: {e}", dir.display()));
        }
    }
    let (mut ours, mut theirs) = (0, 0);
    for dir in dirs.iter().rev() {
        match std::fs::remove_dir(dir) {
            Ok(()) => ours += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => theirs += 1,
            Err(e) => panic!("rmdir {}: {e}", dir.display()),
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let before_kill = call(&d.socket, "GET", &format!("/v1/cells/{victim}"), None).json();
    eprintln!("victim with its cgroup gone, processes alive: state {}", before_kill["state"]);
    let h = call(&d.socket, "GET", &format!("/v1/cells/{victim}/health"), None);
    eprintln!("its health read: {} {}", h.status, h.text());
    // Health of a running cell without a cgroup is an error that says so, not zeros.
    assert_eq!(h.status, 500, "{}", h.text());
    assert!(h.text().contains("removed behind the daemon's back"), "{}", h.text());
    eprintln!("cgroup dirs removed by the test: {ours}, already gone: {theirs}");
    // The daemon notices by itself (its event watch loses the files), ends the cell — killing
    // the processes it knows by pid, since the cgroup can no longer — and logs why.
    let t = Instant::now();
    let info = loop {
        let info = call(&d.socket, "GET", &format!("/v1/cells/{victim}"), None).json();
        if info["state"] == "exited" || t.elapsed() > Duration::from_secs(8) {
            break info;
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    eprintln!("victim after removal: {info}");
    assert_eq!(info["state"], "exited", "the daemon did not notice: {info}");
    assert!(!info["exit"]["reason"].is_null(), "{info}");
    let l = d.wait_log(&["removed behind the daemon's back; ending the cell", victim.as_str()], Duration::from_secs(2));
    eprintln!("log: {l}");
    let l = d.wait_log(&["cell ended", victim.as_str()], Duration::from_secs(2));
    eprintln!("log: {l}");
    wait_until("the victim's processes to be gone", Duration::from_secs(2), || {
        pids.iter().all(|p| !alive(u64::from(*p)))
    });
    // Its slot is free (cap 2, no waiting), the other cell is untouched, the daemon serves.
    let third = id_of(&d.spawn("cat"));
    assert_eq!(d.send(&other, "other ok", 10_000).json()["stdout"], "other ok");
    assert_eq!(d.send(&third, "third ok", 10_000).json()["stdout"], "third ok");
    assert_eq!(d.health()["cells_running"], 2);
    let log = d.log();
    assert!(!log.contains("panicked"), "{log}");
    eprintln!("log lines about {victim}:");
    for l in log.lines().filter(|l| l.contains(victim.as_str())) {
        eprintln!("  {l}");
    }
}

// From the pool review: a second daemon started by mistake — on the same socket, or on another
// socket with the same cgroup root — exits with a clear error and touches nothing of the live
// one. (It killed every live cell as an "orphan", then removed the cgroup root, so the live
// daemon could launch nothing more.)
#[test]
fn a_second_daemon_leaves_the_first_alone() {
    gate!("a_second_daemon_leaves_the_first_alone");
    let d = Daemon::start(5, "", &providers());
    let id = id_of(&d.spawn("cat"));
    let second = |socket: &Path| {
        Command::new(common::BIN)
            .args(["daemon", "--config"])
            .arg(d.dir.path().join("cellkeep.toml"))
            .arg("--socket")
            .arg(socket)
            .arg("--policies")
            .arg(d.policy_dir())
            .args(["--cgroup-root", &d.cgroup_root])
            .env("NO_COLOR", "1")
            .output()
            .expect("second daemon")
    };
    for (socket, says) in [
        (d.socket.clone(), "another daemon is listening"),
        (d.dir.path().join("other.sock"), "in use by another cellkeep daemon"),
    ] {
        let out = second(&socket);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "second daemon on {}: {out:?}", socket.display());
        let r = d.send(&id, "still here", 5000);
        assert_eq!(r.status, 200, "the live session after a second daemon on {}: {}", socket.display(), r.text());
        assert_eq!(r.json()["stdout"], "still here");
        let fresh = d.spawn("cat");
        assert!(fresh["id"].is_string(), "the live daemon cannot launch after a second daemon: {fresh}");
        call(&d.socket, "DELETE", &format!("/v1/cells/{}?force=true", id_of(&fresh)), None);
    }
    assert!(!d.dir.path().join("other.sock").exists(), "the refused daemon left its socket");
}
