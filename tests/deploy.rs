//! Deployed the way users deploy it (issue 15): the daemon and `cellkeep run` as a build host
//! runs them — policies that cannot load, a service manager whose seccomp filter refuses
//! `openat2`, `systemctl reload` / stop semantics, and non-root members of the `cellkeep` group.
//! Each test names the finding of the issue it covers; each fails on the code before the fix
//! (noted per test). The README's quick tour itself is `tests/tour.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: failing loudly is the point

mod common;
mod harness;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::gate;
use common::http::call;
use common::{World, BIN};
use harness::{id_of, Daemon};
use serde_json::json;

/// The seccomp wrapper that makes `openat2` fail with ENOSYS (as `RestrictSUIDSGID=yes` does).
const NO_OPENAT2: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bin/no-openat2");
/// A uid in the cellkeep group and one outside it (no passwd entry needed: the daemon reads
/// uid, gid and groups from SO_PEERCRED and /proc).
const MEMBER: u32 = 61234;
const OUTSIDER: u32 = 61235;

fn cellkeep_gid() -> u32 {
    nix::unistd::Group::from_name("cellkeep")
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
        .expect("group cellkeep (scripts/install.sh and scripts/test.sh create it)")
}

/// `cellkeep ARGS` as `uid` (primary gid = uid), with `groups` as its supplementary groups.
fn cellkeep_as(uid: u32, groups: &[u32], socket: &Path, args: &[&str]) -> Output {
    let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
    let groups = if groups.is_empty() {
        vec!["--clear-groups".to_owned()]
    } else {
        vec!["--groups".to_owned(), groups.join(",")]
    };
    Command::new("setpriv")
        .args(["--reuid", &uid.to_string(), "--regid", &uid.to_string()])
        .args(&groups)
        .args(["--", BIN])
        .args(args)
        .env("CELLKEEP_SOCKET", socket)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .expect("setpriv cellkeep")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A directory under /tmp owned by `uid`, mode 0700: a workspace as a user makes one.
fn own_workspace(uid: u32) -> tempfile::TempDir {
    let ws = tempfile::Builder::new().prefix("ck-own-ws-").tempdir().expect("workspace");
    std::os::unix::fs::chown(ws.path(), Some(uid), Some(uid)).expect("chown workspace");
    ws
}

/// A valid policy a reload adds.
const CAT2: &str = "extends = \"base\"\n[provider]\nname = \"cat2\"\ncommand = [\"/bin/cat\"]\nmode = \"session\"\n";

const BAD_ROOT: &str = "extends = \"base\"\n[provider]\nname = \"gone\"\ncommand = [\"/bin/cat\"]\n\
                        [workdir]\nroots = [\"/no/such/root\"]\n";

// Finding 1: a policy naming a workdir root this host lacks, and a file that is not TOML, are
// left out and reported (log once, health for admins only, sd_notify STATUS=, doctor); the
// other providers serve. Before: the daemon exited 1 at start-up ("did not answer").
#[test]
fn a_policy_that_cannot_load_is_left_out_and_reported() {
    gate!("a_policy_that_cannot_load_is_left_out_and_reported");
    let notify_dir = tempfile::tempdir().expect("tempdir");
    let notify_path = notify_dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("bind NOTIFY_SOCKET");
    notify.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let d = Daemon::builder()
        .provider("cat", "[\"/bin/cat\"]", "session", "")
        .policy("gone", BAD_ROOT)
        .policy("broken", "[provider\nname = \"broken\"\n")
        .env("NOTIFY_SOCKET", &notify_path.display().to_string())
        .start();
    let h = d.health();
    assert_eq!(h["providers"], json!(["cat"]), "{h}");
    assert_eq!(h["policies_rejected"], 2, "{h}");
    let rejected = h["rejected_policies"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = rejected.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, vec!["broken", "gone"], "{h}");
    assert!(rejected[1]["problems"][0].as_str().unwrap_or("").contains("\"/no/such/root\" cannot be resolved"), "{h}");
    // The others serve.
    let id = id_of(&d.spawn("cat"));
    assert_eq!(d.send(&id, "still serving", 10_000).json()["stdout"], "still serving");
    // Logged once per file.
    let log = d.log();
    for name in ["gone", "broken"] {
        let n = log.lines().filter(|l| l.contains(&format!("policy rejected, not served: {name} ("))).count();
        assert_eq!(n, 1, "{name} logged {n} times:\n{log}");
    }
    // READY=1 with a STATUS= naming them (what `systemctl status` shows).
    let mut buf = vec![0u8; 4096];
    let t = Instant::now();
    let ready = loop {
        let n = notify.recv(&mut buf).expect("a notification within 5 s");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.contains("READY=1") {
            break msg;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "no READY=1");
    };
    assert!(ready.contains("2 policies rejected, not served: broken, gone"), "{ready}");
    // A caller that is not an admin sees the count, not the files and their contents.
    let o = cellkeep_as(MEMBER, &[], &d.socket, &["health", "--json"]);
    let theirs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    assert_eq!(theirs["policies_rejected"], 2, "{theirs}");
    assert!(theirs.get("rejected_policies").is_none(), "{theirs}");
    // doctor names them too.
    let o = Command::new(BIN).args(["doctor", "--json", "--policies"]).arg(d.policy_dir()).output().expect("doctor");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    let invalid = r["invalid"].to_string();
    assert!(invalid.contains("gone (not served by the daemon)") && invalid.contains("broken"), "{r}");
}

// Finding 3 (reload): `cellkeep reload` — the unit's ExecReload=, so what `systemctl reload`
// returns — exits 1 naming the file when a policy cannot load, and the previous set keeps
// serving; once fixed, it exits 0 and the new provider serves. Before: no verdict at all
// (ExecReload= was `kill -HUP`, always 0; there was no `reload` command).
#[test]
fn reload_with_a_bad_policy_fails_and_keeps_the_previous_set() {
    gate!("reload_with_a_bad_policy_fails_and_keeps_the_previous_set");
    let d = Daemon::builder().provider("cat", "[\"/bin/cat\"]", "session", "").start();
    let live = id_of(&d.spawn("cat"));
    std::fs::write(d.policy_dir().join("gone.toml"), BAD_ROOT).expect("write");
    std::fs::write(d.policy_dir().join("cat2.toml"), CAT2).expect("write");
    let reload = || Command::new(BIN).arg("reload").env("CELLKEEP_SOCKET", &d.socket).output().expect("reload");
    let o = reload();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("policy") && err.contains("gone") && err.contains("/no/such/root"), "{}", text(&o));
    // All or nothing: cat2 (valid) is not served either; the old set is.
    let h = d.health();
    assert_eq!(h["providers"], json!(["cat"]), "{h}");
    assert_eq!(h["rejected_policies"][0]["name"], "gone", "{h}");
    let r = call(&d.socket, "POST", "/v1/cells", Some(&json!({"provider": "cat2", "cwd": d.cwd()})));
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(d.send(&live, "survives", 10_000).json()["stdout"], "survives");
    // The rejection is in the daemon's log once.
    let log = d.log();
    let n = log.lines().filter(|l| l.contains("/no/such/root")).count();
    assert_eq!(n, 1, "logged {n} times:\n{log}");
    // Only admins may reload.
    let o = cellkeep_as(MEMBER, &[], &d.socket, &["reload"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("forbidden"), "{}", text(&o));
    // Fixed: 0, cat2 serves, nothing rejected, the session lives on.
    std::fs::remove_file(d.policy_dir().join("gone.toml")).expect("rm");
    let o = reload();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("cat2"), "{}", text(&o));
    let h = d.health();
    assert_eq!(h["providers"], json!(["cat", "cat2"]), "{h}");
    assert_eq!(h["policies_rejected"], 0, "{h}");
    id_of(&d.spawn("cat2"));
    assert_eq!(d.send(&live, "still", 10_000).json()["stdout"], "still");
}

// From the fifth policy review: a file the daemon left out at start (broken then, broken
// still) made every later reload fail, tightenings of other policies included, while a
// restart would have loaded the same files. A file already left out, unchanged, no longer
// blocks a reload (it stays reported); a file newly broken still refuses it as a whole.
#[test]
fn a_file_already_left_out_does_not_block_reloads() {
    gate!("a_file_already_left_out_does_not_block_reloads");
    let d = Daemon::builder()
        .provider("cat", "[\"/bin/cat\"]", "session", "")
        .policy("broken", "[provider\nname = \"broken\"\n")
        .start();
    std::fs::write(d.policy_dir().join("cat2.toml"), CAT2).expect("write");
    let reload = || Command::new(BIN).arg("reload").env("CELLKEEP_SOCKET", &d.socket).output().expect("reload");
    let o = reload();
    assert_eq!(o.status.code(), Some(0), "a file broken since start blocked the reload: {}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("broken"), "the file still left out is not named: {}", text(&o));
    let h = d.health();
    assert_eq!(h["providers"], json!(["cat", "cat2"]), "{h}");
    assert_eq!(h["rejected_policies"][0]["name"], "broken", "{h}");
    // A file that breaks now still refuses the reload as a whole, and again on the next try.
    std::fs::write(d.policy_dir().join("cat2.toml"), "[provider\n").expect("write");
    for _ in 0..2 {
        let o = reload();
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert_eq!(d.health()["providers"], json!(["cat", "cat2"]), "a served provider was dropped");
    }
}

// Finding 2: with openat2 refused (ENOSYS, as under systemd's RestrictSUIDSGID=yes), cells
// still start — `cellkeep run` and the daemon, cwd under /tmp and elsewhere. Before: every
// launch failed at stage mounts/cwd with ENOSYS.
#[test]
fn cells_start_when_openat2_is_refused() {
    gate!("cells_start_when_openat2_is_refused");
    let w = World::new();
    let p = w.policy("t", "", "");
    let out = Command::new(NO_OPENAT2)
        .args([BIN, "run", "--json", "--policy"])
        .arg(&p)
        .arg("--cwd")
        .arg(w.ws.path())
        .args(["--", "/bin/pwd"])
        .env("CELLKEEP_CGROUP_ROOT", &w.cgroup_root)
        .output()
        .expect("no-openat2 cellkeep run");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(&format!("{}\n", w.ws.path().display())),
        "{}",
        text(&out)
    );

    let d = Daemon::builder().provider("cat", "[\"/bin/cat\"]", "session", "").wrapper(&[NO_OPENAT2]).start();
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).expect("status");
    assert!(status.lines().any(|l| l == "Seccomp:\t2"), "the daemon is not under the filter:\n{status}");
    let id = id_of(&d.spawn("cat"));
    assert_eq!(d.send(&id, "no openat2", 10_000).json()["stdout"], "no openat2");
}

/// `setpriv` keeping only the capabilities of the shipped unit's `CapabilityBoundingSet=` (read
/// from systemd/cellkeep.service), as systemd starts the daemon: no CAP_SYS_PTRACE among them.
fn unit_bounding_set() -> Vec<String> {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/cellkeep.service")).unwrap();
    let line = unit.lines().find_map(|l| l.strip_prefix("CapabilityBoundingSet=")).expect("CapabilityBoundingSet=");
    let keep: Vec<String> =
        line.split_whitespace().map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())).collect();
    assert!(!keep.iter().any(|c| c == "+sys_ptrace"), "the unit grants CAP_SYS_PTRACE: {line}");
    vec!["setpriv".into(), format!("--bounding-set=-all,{}", keep.join(",")), "--".into()]
}

// Cells start under the unit's capability bounding set (found by the systemd lane: the helper
// switches its effective uid to the cell's to create the user namespace, which made it — and
// the namespace holder it cloned — non-dumpable, so writing the holder's uid_map needed
// CAP_SYS_PTRACE: every launch failed at stage id_map, EACCES). Root's cells (an id of their
// own, idmapped workspace) and a member's (as the member) through the daemon; `cellkeep run`.
#[test]
fn cells_start_under_the_units_capability_bounding_set() {
    gate!("cells_start_under_the_units_capability_bounding_set");
    let wrap = unit_bounding_set();
    let w = World::new();
    let p = w.policy("t", "", "");
    let out = Command::new(&wrap[0])
        .args(&wrap[1..])
        .args([BIN, "run", "--json", "--policy"])
        .arg(&p)
        .arg("--cwd")
        .arg(w.ws.path())
        .args(["--", "/bin/echo", "bounded"])
        .env("CELLKEEP_CGROUP_ROOT", &w.cgroup_root)
        .output()
        .expect("setpriv cellkeep run");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("bounded\n"), "{}", text(&out));

    let wrapper: Vec<&str> = wrap.iter().map(String::as_str).collect();
    let d = Daemon::builder().shipped_policies().wrapper(&wrapper).start();
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).expect("status");
    let bnd = status.lines().find_map(|l| l.strip_prefix("CapBnd:\t")).expect("CapBnd");
    let bnd = u64::from_str_radix(bnd, 16).expect("CapBnd hex");
    assert_eq!(
        bnd & (1 << 19),
        0, // CAP_SYS_PTRACE
        "the daemon still has CAP_SYS_PTRACE in its bounding set"
    );
    let ws = own_workspace(MEMBER);
    let cwd = ws.path().display().to_string();
    let o = cellkeep_as(0, &[], &d.socket, &["exec", "echo", "as root", "--cwd", &cwd]);
    assert_eq!(o.status.code(), Some(0), "root's cell under the unit's bounding set: {}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "as root", "{}", text(&o));
    let o = cellkeep_as(MEMBER, &[cellkeep_gid()], &d.socket, &["exec", "echo", "as a member", "--cwd", &cwd]);
    assert_eq!(o.status.code(), Some(0), "a member's cell under the unit's bounding set: {}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "as a member", "{}", text(&o));
}

// Finding 3 (exit): a cell that ignores SIGTERM costs the grace at shutdown (then SIGKILL), not
// the shutdown timeout. Before: the grace was the shutdown timeout (here 20 s).
#[test]
fn shutdown_kills_a_cell_ignoring_sigterm_after_the_grace() {
    gate!("shutdown_kills_a_cell_ignoring_sigterm_after_the_grace");
    let mut d = Daemon::builder()
        .grace_secs(1.0)
        .shutdown_timeout_secs(20.0)
        .provider(
            "stubborn",
            "[\"/bin/sh\", \"-c\", \"trap '' TERM; echo up; while :; do sleep 0.2; done\"]",
            "session",
            "",
        )
        .start();
    let id = id_of(&d.spawn("stubborn"));
    // Running (spawn answers once the payload is exec'd); let the trap be set.
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let status = d.stop().expect("daemon exit status");
    let took = t.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(8), "shutdown took {took:?} with grace 1 s (timeout 20 s)");
    assert!(d.log().contains(&id), "the cell is not in the log");
}

// Finding 3 (logging): a start-up error is logged once, not as a structured line and again as
// plain text. Before: both.
#[test]
fn a_start_up_error_is_logged_once() {
    gate!("a_start_up_error_is_logged_once");
    let dir = tempfile::tempdir().expect("tempdir");
    let not_a_socket = dir.path().join("plain-file");
    std::fs::write(&not_a_socket, "x").expect("write");
    std::fs::create_dir(dir.path().join("policies")).expect("mkdir");
    let out = Command::new(BIN)
        .args(["daemon", "--socket"])
        .arg(&not_a_socket)
        .arg("--policies")
        .arg(dir.path().join("policies"))
        .args(["--cgroup-root", &format!("ck-test-{}", uuid::Uuid::now_v7().simple())])
        .env("NO_COLOR", "1")
        .output()
        .expect("daemon");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let n = err.matches("exists and is not a socket").count();
    assert_eq!(n, 1, "logged {n} times:\n{err}");
}

// Finding 4: a member of the cellkeep group uses the shipped providers, in a workspace it owns
// (mode 0700: no chmod for anyone else), and its cells run as it; a user outside the group is
// refused. Before: the shipped policies admitted uid 0 only (forbidden).
#[test]
fn a_member_of_the_cellkeep_group_uses_the_shipped_providers() {
    gate!("a_member_of_the_cellkeep_group_uses_the_shipped_providers");
    let d = Daemon::builder().shipped_policies().start();
    let gid = cellkeep_gid();
    let ws = own_workspace(MEMBER);
    let cwd = ws.path().display().to_string();
    let o = cellkeep_as(MEMBER, &[gid], &d.socket, &["exec", "echo", "hello member", "--cwd", &cwd]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "hello member", "{}", text(&o));
    // The cell runs as the caller and writes its workspace.
    let o = cellkeep_as(
        MEMBER,
        &[gid],
        &d.socket,
        &["spawn", "sandbox", "--cwd", &cwd, "--", "/bin/sh", "-c", "id -u > who; id -g >> who"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let who = ws.path().join("who");
    let t = Instant::now();
    while std::fs::read_to_string(&who).map_or(true, |s| s.lines().count() < 2) && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read_to_string(&who).unwrap_or_default(), format!("{MEMBER}\n{MEMBER}\n"));
    let meta = std::fs::metadata(&who).expect("stat");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), MEMBER);
    // Outside the group: forbidden.
    let o = cellkeep_as(OUTSIDER, &[], &d.socket, &["exec", "echo", "hi", "--cwd", &cwd]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("forbidden"), "{}", text(&o));
}

// Finding 1 (the other side): only a broken daemon config stops start-up, with EX_CONFIG (78),
// which the unit's RestartPreventExitStatus= names, so systemd does not restart it in a loop
// (before: exit 1 and Restart=on-failure every 2 s, forever), logged once.
#[test]
fn a_broken_config_stops_start_up_with_ex_config() {
    gate!("a_broken_config_stops_start_up_with_ex_config");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("cellkeep.toml");
    std::fs::write(&config, "max_cels = 3\n").expect("write");
    let out = Command::new(BIN)
        .args(["daemon", "--config"])
        .arg(&config)
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .env("NO_COLOR", "1")
        .output()
        .expect("daemon");
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("unknown field `max_cels`").count(), 1, "{err}");
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/cellkeep.service")).expect("unit");
    assert!(unit.lines().any(|l| l == "RestartPreventExitStatus=78"), "the unit restarts on a broken config");
}
