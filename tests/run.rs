//! Acceptance tests of `cellkeep run`: the real binary, as root, on the real kernel (the host's
//! v1 cgroups here; the same binaries run on cgroup v2 inside the VM, scripts/vm-test.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: failing loudly is the point

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::gate;
use common::{check_backend, World, NOBODY};

const PY: &str = "/usr/bin/python3";

#[test]
fn echo_runs_and_reports_usage() {
    gate!("echo_runs_and_reports_usage");
    let w = World::new();
    let p = w.policy("t", "", "");
    let r = w.run(&p, &["/bin/echo", "hello from the cell"]);
    assert_eq!(r.code, 0, "{}", r.describe());
    assert_eq!(r.output(), "hello from the cell");
    assert_eq!(r.reason(), "exited", "{}", r.describe());
    assert_eq!(r.outcome["code"], 0);
    check_backend(&r.outcome);
    w.assert_no_cells();
}

// 1. A memory hog over its memory limit is killed; reason oom_killed.
#[test]
fn memory_hog_is_oom_killed() {
    gate!("memory_hog_is_oom_killed");
    let w = World::new();
    let p = w.policy("t", "", "[limits]\nmemory_max = \"64M\"\nmemory_swap = \"0\"\n");
    let r = w.run(&p, &["/bin/sh", "-c", "head -c 400000000 /dev/zero | tail -n 1 > /dev/null; echo survived"]);
    assert_eq!(r.reason(), "oom_killed", "{}", r.describe());
    assert!(r.outcome["events"]["oom_kills"].as_u64().unwrap_or(0) >= 1, "{}", r.describe());
    assert!(!r.stdout.contains("survived") || r.reason() == "oom_killed");
    check_backend(&r.outcome);
    w.assert_no_cells();
}

// 2. A fork bomb stops at the pids limit; the host stays responsive; the event is reported.
#[test]
fn fork_bomb_stops_at_pids_limit() {
    gate!("fork_bomb_stops_at_pids_limit");
    let w = World::new();
    let p = w.policy("t", "", "[limits]\npids = 16\nwall_time = \"20s\"\n");
    let started = Instant::now();
    // Exponential: every process keeps forking (2^10 wanted); the first one reports.
    let bomb = "import os,time\nroot=os.getpid()\nfor i in range(10):\n  try: os.fork()\n  except OSError: pass\n\
                time.sleep(0.5)\nif os.getpid()==root: print('running:', sum(p.isdigit() for p in os.listdir('/proc')), flush=True)\n";
    let r = w.run(&p, &[PY, "-c", bomb]);
    assert_eq!(r.reason(), "pids_limited", "{}", r.describe());
    assert!(r.outcome["events"]["pids_max_hits"].as_u64().unwrap_or(0) >= 1, "{}", r.describe());
    let running: u64 = r
        .output()
        .trim()
        .strip_prefix("running: ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", r.describe()));
    // The limit counts the payload's processes; the cell's pid 1 is visible on top of them
    // (cellkeep adds its two supervisors, helper and pid 1, to pids.max).
    assert!(running <= 16 + 1, "{running} processes visible in a cell limited to 16");
    // The whole run (including 200 failed forks) ends promptly: the sleepers died with pid 1.
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    // The host is responsive: a host process starts and ends normally.
    let t = Instant::now();
    assert!(std::process::Command::new("/bin/true").status().expect("host true").success());
    eprintln!("host /bin/true after the bomb: {:?}", t.elapsed());
    w.assert_no_cells();
}

// 3. A CPU spinner limited to 0.5 CPU uses 0.5 ± 0.1 CPU (from the cell's own CPU counter).
#[test]
fn cpu_limit_half_a_cpu() {
    gate!("cpu_limit_half_a_cpu", measures_cpu);
    let w = World::new();
    let p = w.policy("t", "", "[limits]\ncpu = 0.5\n");
    let r = w.run(&p, &["/usr/bin/timeout", "3", "/bin/sh", "-c", "while :; do :; done"]);
    assert_eq!(r.outcome["code"], 124, "{}", r.describe());
    // The cell's own CPU counter over the cell's own lifetime (setup included: the quota
    // covers the whole cgroup from the first instruction).
    let cpu_usec = r.outcome["usage"]["cpu_usage_usec"].as_f64().unwrap_or(0.0);
    let lifetime_usec = r.outcome["duration_ms"].as_f64().unwrap_or(1.0) * 1000.0;
    let ratio = cpu_usec / lifetime_usec;
    eprintln!("cpu used: {cpu_usec} µs over {lifetime_usec} µs = {ratio:.3} CPU");
    assert!((0.4..=0.6).contains(&ratio), "cpu ratio {ratio:.3} not within 0.5 ± 0.1");
    check_backend(&r.outcome);
}

// 4. Landlock: reading outside the readable paths fails with EACCES; writing outside the
//    writable paths fails; writing in the cwd and the private tmp works.
#[test]
fn filesystem_rules_hold() {
    gate!("filesystem_rules_hold");
    let w = World::new();
    let secret_dir = tempfile::Builder::new().prefix("ck-secret-").tempdir_in("/var/tmp").expect("secret dir");
    let secret = secret_dir.path().join("secret.txt");
    std::fs::write(&secret, "top secret\n").expect("write secret");
    // World-readable: only Landlock stands between the cell and the file.
    std::process::Command::new("chmod").args(["-R", "a+rwX"]).arg(secret_dir.path()).status().expect("chmod");
    let p = w.policy("t", "", "");
    let script = format!(
        "cat {s} 2>&1; echo \"read=$?\"; echo x > {d}/new 2>&1; echo \"write_out=$?\"; \
         echo inside > ./made-in-cell; echo \"write_cwd=$?\"; echo t > /tmp/t; echo \"write_tmp=$?\"; \
         ls /tmp",
        s = secret.display(),
        d = secret_dir.path().display()
    );
    let r = w.run(&p, &["/bin/sh", "-c", &script]);
    let out = r.output();
    // /var/tmp is not in the cell's mount view (issue 13): the path does not exist inside.
    assert!(out.contains("No such file or directory"), "{}", r.describe());
    assert!(out.contains("read=1"), "{}", r.describe());
    assert!(!out.contains("top secret"), "secret leaked: {}", r.describe());
    assert!(out.contains("write_out=") && !out.contains("write_out=0"), "{}", r.describe());
    assert!(!secret_dir.path().join("new").exists());
    assert!(out.contains("write_cwd=0"), "{}", r.describe());
    assert!(out.contains("write_tmp=0"), "{}", r.describe());
    // The file written in the workspace belongs to the unprivileged id on the host.
    let meta = std::fs::metadata(w.ws.path().join("made-in-cell")).expect("file made in the cell");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), NOBODY);
    // The private tmp is private: nothing reached the host's /tmp.
    assert!(!std::path::Path::new("/tmp/t").exists() || std::fs::read_to_string("/tmp/t").unwrap_or_default() != "t\n");
    w.assert_no_cells();
}

fn connect_script(port: u16) -> String {
    format!(
        "import socket,sys\n\
         s=socket.socket(); s.settimeout(2)\n\
         try:\n  s.connect(('127.0.0.1',{port})); print('host: connected')\n\
         except OSError as e: print('host:', type(e).__name__, e.errno)\n\
         try:\n  l=socket.socket(); l.bind(('127.0.0.1',0)); l.listen(1)\n  c=socket.socket(); c.connect(l.getsockname()); print('own: connected')\n\
         except OSError as e: print('own:', type(e).__name__, e.errno)\n"
    )
}

// 5. Network none: the host's 127.0.0.1 listener is unreachable; loopback: only the cell's own.
#[test]
fn network_none_and_loopback() {
    gate!("network_none_and_loopback");
    let w = World::new();
    let listener = TcpListener::bind("127.0.0.1:0").expect("host listener");
    let port = listener.local_addr().expect("addr").port();
    let none = w.policy("none", "", "[network]\nmode = \"none\"\n");
    let r = w.run(&none, &[PY, "-c", &connect_script(port)]);
    let out = r.output();
    assert!(!out.contains("host: connected"), "{}", r.describe());
    assert!(!out.contains("own: connected"), "loopback is down under none: {}", r.describe());
    let lo = w.policy("lo", "", "[network]\nmode = \"loopback\"\n");
    let r = w.run(&lo, &[PY, "-c", &connect_script(port)]);
    let out = r.output();
    assert!(!out.contains("host: connected"), "{}", r.describe());
    assert!(out.contains("own: connected"), "{}", r.describe());
    w.assert_no_cells();
}

// 6. ptrace, mount, keyctl and unshare fail as the preset says (EPERM).
#[test]
fn seccomp_preset_denies_escape_routes() {
    gate!("seccomp_preset_denies_escape_routes");
    let w = World::new();
    let p = w.policy("t", "", "");
    let script = "import ctypes,os\n\
        libc=ctypes.CDLL(None,use_errno=True)\n\
        for name,nr,args in [('ptrace',101,(16,1,0,0)),('mount',165,(b'none',b'/tmp',b'tmpfs',0,0)),('keyctl',250,(0,0,0,0)),('unshare',272,(0x10000000,)),('bpf',321,(0,0,0))]:\n\
        \x20 r=libc.syscall(nr,*args); print(name, r, ctypes.get_errno())\n";
    let r = w.run(&p, &[PY, "-c", script]);
    let out = r.output();
    for name in ["ptrace", "mount", "keyctl", "unshare", "bpf"] {
        let line =
            out.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{}", r.describe()));
        assert_eq!(line, format!("{name} -1 {}", libc::EPERM), "{}", r.describe());
    }
    // A deny action of `kill` ends the process with the reason named.
    let k = w.policy("k", "", "[seccomp]\ndeny = [\"getppid\"]\ndeny_action = \"kill\"\n");
    let r = w.run(&k, &[PY, "-c", "import os; os.getppid(); print('alive')"]);
    assert_eq!(r.reason(), "seccomp_violation", "{}", r.describe());
    assert_eq!(r.outcome["syscall"], "getppid", "{}", r.describe());
    assert!(!r.output().contains("alive"));
    w.assert_no_cells();
}

// 7. CapEff 0, NoNewPrivs 1, a non-root uid from the host; the pid namespace shows only the
//    cell; orphans are reaped; pid 1's exe and memory cannot be opened for writing.
#[test]
fn identity_pidns_and_pid1_hardening() {
    gate!("identity_pidns_and_pid1_hardening");
    let w = World::new();
    let p = w.policy("t", "", "");
    let script = "grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs|Uid)' /proc/self/status; \
        echo \"pids: $(ls -d /proc/[0-9]* | sed 's#/proc/##' | sort -n | tr '\\n' ' ')\"; \
        (sleep 0.2 &) ; sleep 0.6; \
        echo \"zombies: $(cat /proc/[0-9]*/stat 2>/dev/null | awk '$3==\"Z\"' | wc -l)\"; \
        (echo x >> /proc/1/exe) 2>/dev/null && echo exe-writable || echo exe-denied; \
        (echo x >> /proc/1/mem) 2>/dev/null && echo mem-writable || echo mem-denied; \
        (cat /proc/1/environ) >/dev/null 2>&1 && echo environ-readable || echo environ-denied; \
        stat -c 'owner=%u' .";
    let r = w.run(&p, &["/bin/sh", "-c", script]);
    let out = r.output();
    assert!(out.contains("CapEff:\t0000000000000000"), "{}", r.describe());
    assert!(out.contains("CapPrm:\t0000000000000000"), "{}", r.describe());
    assert!(out.contains("CapBnd:\t0000000000000000"), "{}", r.describe());
    assert!(out.contains("NoNewPrivs:\t1"), "{}", r.describe());
    let pids = out.lines().find_map(|l| l.strip_prefix("pids: ")).unwrap_or_else(|| panic!("{}", r.describe()));
    let pids: Vec<u32> = pids.split_whitespace().filter_map(|p| p.parse().ok()).collect();
    // Only the cell's own processes (pid 1, the shell, the pipeline), numbered from 1.
    assert!(pids.contains(&1) && pids.len() <= 10 && pids.iter().all(|p| *p < 50), "pids seen: {pids:?}");
    assert!(out.contains("zombies: 0"), "{}", r.describe());
    assert!(
        out.contains("exe-denied") && out.contains("mem-denied") && out.contains("environ-denied"),
        "{}",
        r.describe()
    );
    // The payload's uid as the host sees it: the file it owns in the workspace.
    std::fs::write(w.ws.path().join("probe"), "").ok();
    let r2 = w.run(&p, &["/bin/sh", "-c", "touch ./by-cell"]);
    assert_eq!(r2.code, 0, "{}", r2.describe());
    let meta = std::fs::metadata(w.ws.path().join("by-cell")).expect("by-cell");
    assert_ne!(std::os::unix::fs::MetadataExt::uid(&meta), 0, "payload ran as host root");
    w.assert_no_cells();
}

// 8. Only passed variables reach the cell.
#[test]
fn environment_is_filtered() {
    gate!("environment_is_filtered");
    let w = World::new();
    let p = w.policy("t", "", "[environment]\npass = [\"CK_PASSED\"]\n");
    let r = w.run_in(&p, w.ws.path(), &["/usr/bin/env"], &[("CK_PASSED", "yes"), ("CK_SECRET", "no")]);
    let out = r.output();
    assert!(out.lines().any(|l| l == "CK_PASSED=yes"), "{}", r.describe());
    assert!(!out.contains("CK_SECRET"), "{}", r.describe());
    w.assert_no_cells();
}

fn host_has_process(needle: &str) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(needle))
}

// 9. A double-forked, setsid grandchild is gone when the cell ends; the cgroup is removed.
#[test]
fn double_fork_setsid_grandchild_is_gone() {
    gate!("double_fork_setsid_grandchild_is_gone");
    let w = World::new();
    // Also without a pid namespace: then the cgroup alone must catch it.
    for (name, ns) in [("withpidns", ""), ("nopidns", "[namespaces]\npid = false\n")] {
        let marker = format!("4242{}", if ns.is_empty() { 1 } else { 2 });
        let p = w.policy(name, "", ns);
        let script = format!("(setsid /bin/sleep {marker} < /dev/null > /dev/null 2>&1 &) ; sleep 0.3; echo spawned");
        let r = w.run(&p, &["/bin/sh", "-c", &script]);
        assert!(r.output().contains("spawned"), "{}", r.describe());
        std::thread::sleep(Duration::from_millis(200));
        assert!(!host_has_process(&format!("sleep {marker}")), "{name}: grandchild survived the cell");
    }
    w.assert_no_cells();
}

// 10. Wall-clock limit → timed_out; open-files limit holds.
#[test]
fn wall_clock_and_open_files() {
    gate!("wall_clock_and_open_files");
    let w = World::new();
    let p = w.policy("t", "", "[limits]\nwall_time = \"1s\"\nopen_files = 64\n");
    let t = Instant::now();
    let r = w.run(&p, &["/bin/sleep", "10"]);
    assert_eq!(r.reason(), "timed_out", "{}", r.describe());
    assert_eq!(r.code, 124);
    assert!(t.elapsed() < Duration::from_secs(4), "took {:?}", t.elapsed());
    let script = "import os\nfds=[]\ntry:\n  [fds.append(os.open('/dev/null',0)) for _ in range(200)]\nexcept OSError as e: print('errno', e.errno, len(fds))\n";
    // Its own policy without the 1 s wall time: Python's start-up alone can take that long on a
    // loaded machine (or under emulation), and this half is about the fd limit only.
    let p = w.policy("f", "", "[limits]\nopen_files = 64\n");
    let r = w.run(&p, &[PY, "-c", script]);
    let out = r.output();
    assert!(out.starts_with(&format!("errno {}", libc::EMFILE)), "{}", r.describe());
    let opened: usize = out.split_whitespace().last().and_then(|n| n.parse().ok()).unwrap_or(999);
    assert!(opened < 64, "opened {opened} fds under a limit of 64");
    w.assert_no_cells();
}

// 11. Missing binary, cwd outside the roots, or an escaping symlink → a clear error naming the
//     path and stage, non-zero exit, nothing left behind.
#[test]
fn bad_launch_inputs_are_named_errors() {
    gate!("bad_launch_inputs_are_named_errors");
    let w = World::new();
    let p = w.policy("t", "", "");
    let r = w.run(&p, &["/nonexistent/binary-xyz"]);
    assert_ne!(r.code, 0);
    assert_eq!(r.outcome["stage"], "resolve", "{}", r.describe());
    assert!(r.stderr.contains("/nonexistent/binary-xyz"), "{}", r.describe());

    let r = w.run_in(&p, std::path::Path::new("/etc"), &["/bin/true"], &[]);
    assert_ne!(r.code, 0);
    assert_eq!(r.outcome["stage"], "cwd", "{}", r.describe());
    assert!(r.stderr.contains("/etc") && r.stderr.contains("outside the allowed roots"), "{}", r.describe());

    let link = w.ws.path().join("escape");
    std::os::unix::fs::symlink("/etc", &link).expect("symlink");
    let r = w.run_in(&p, &link, &["/bin/true"], &[]);
    assert_ne!(r.code, 0);
    assert_eq!(r.outcome["stage"], "cwd", "{}", r.describe());
    assert!(r.stderr.contains("escape"), "{}", r.describe());

    let dotdot = w.ws.path().join("../../etc");
    let r = w.run_in(&p, &dotdot, &["/bin/true"], &[]);
    assert_eq!(r.outcome["stage"], "cwd", "{}", r.describe());
    w.assert_no_cells();
}

// Issue 14: the host-network mode (`network.mode = "tcp"`, Landlock TCP port rules) is gone:
// such a policy is refused, naming the replacement, and no cell starts.
#[test]
fn host_network_mode_is_refused() {
    gate!("host_network_mode_is_refused");
    let w = World::new();
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("addr").port();
    let policy =
        w.policy("req", "", &format!("[network]\nmode = \"tcp\"\nconnect = [{port}]\n[namespaces]\nnet = false\n"));
    let r = w.run(&policy, &[PY, "-c", "print('ran')"]);
    assert_ne!(r.code, 0, "{}", r.describe());
    assert!(!r.stdout.contains("ran"), "{}", r.describe());
    assert!(r.stderr.contains("was removed") && r.stderr.contains("proxy"), "{}", r.describe());
    w.assert_no_cells();
}
