//! `[provider] tty = true`: the payload's stdin/stdout/stderr are one pseudo-terminal in raw
//! mode, its controlling terminal. Proved end to end through a daemon of our own (temp socket,
//! policies and cgroup root: tests/harness): a one-shot sees a terminal on 0, 1 and 2 (its
//! slave path visible under /dev/pts inside the cell), a session over `cat` answers in order
//! with exact bytes (no echo, no `\r\n`), and nothing is left once the cells end.
//! `cellkeep run` ignores `tty`: it passes its stdio through, or, on a terminal, gives the cell
//! a terminal of its own (tests/escape.rs, attempts 25 and 41).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: failing loudly is the point

mod common;
mod harness;

use std::path::Path;

use common::gate;
use common::http::call;
use harness::Daemon;
use serde_json::{json, Value};

/// Prints what the payload sees of its terminal. The one-shot command (the last argv element)
/// lands in `sys.argv[1]` and is ignored.
const PROBE: &str = r#"import os, sys
print(os.isatty(0), os.isatty(1), os.isatty(2), os.ttyname(1).startswith('/dev/pts/'))
print(os.tcgetpgrp(0) == os.getpgrp(), tuple(os.get_terminal_size(1)))
os.close(os.open('/dev/tty', os.O_RDONLY))
print('via stderr', file=sys.stderr, flush=True)
"#;

/// A daemon of our own (tests/harness) with the tty providers, at the shipped socket mode.
fn daemon() -> Daemon {
    let probe = serde_json::to_string(PROBE).expect("json string");
    Daemon::builder()
        .prefix("ck-tty-")
        .socket_mode(None)
        .max_cells(4)
        .provider("ttyprobe", &format!("[\"/usr/bin/python3\", \"-c\", {probe}]"), "oneshot", "tty = true")
        .provider("ttycat", "[\"/bin/cat\"]", "session", "tty = true")
        .start()
}

// 1. A one-shot tty cell: 0, 1 and 2 are the terminal (a /dev/pts slave, visible inside the
//    cell), it is the controlling terminal (foreground group, /dev/tty opens) of size 80x24, and
//    stderr arrives merged into stdout with plain "\n" line ends.
#[test]
fn oneshot_sees_a_controlling_terminal() {
    gate!("oneshot_sees_a_controlling_terminal");
    let d = daemon();
    let r = call(
        &d.socket,
        "POST",
        "/v1/providers/ttyprobe/commands",
        Some(&json!({"command": "ignored", "cwd": d.cwd(), "timeout_ms": 30000})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["exit"]["reason"], "exited", "{v}");
    assert_eq!(v["exit"]["code"], 0, "{v}");
    assert_eq!(v["stdout"], "True True True True\nTrue (80, 24)\nvia stderr\n", "{v}");
    assert_eq!(v["stderr"], "", "{v}");
    assert!(d.cells_on_disk().is_empty(), "cgroups left: {:?}", d.cells_on_disk());
}

// 2. A tty session over cat: several commands, each answered by exactly its own line, in order
//    (raw mode: nothing echoed, no "\r\n"); the stream holds exactly what cat wrote. Then
//    terminate: the payload is gone and so is the cgroup.
#[test]
fn session_replies_are_exact_and_nothing_is_left() {
    gate!("session_replies_are_exact_and_nothing_is_left");
    let d = daemon();
    let r = call(&d.socket, "POST", "/v1/cells", Some(&json!({"provider": "ttycat", "cwd": d.cwd()})));
    assert_eq!(r.status, 201, "{}", r.text());
    let info = r.json();
    let id = info["id"].as_str().unwrap_or_else(|| panic!("no id in {info}")).to_owned();
    let pid = info["pid"].as_u64().unwrap_or(0);
    assert!(pid > 0, "{info}");
    let stdin = std::fs::read_link(format!("/proc/{pid}/fd/0")).expect("payload's fd 0");
    assert!(stdin.starts_with("/dev/pts/"), "cat's stdin is {}, not a pty slave", stdin.display());
    // The last line is far longer than the terminal's input buffer (4 KiB): writes to the
    // master wait for cat to drain it.
    let mut lines: Vec<String> =
        (0..50).map(|i| format!("command {i}\twith  tabs, ^C \u{3} and {}", "x".repeat(i * 7))).collect();
    lines.push("y".repeat(200_000));
    for line in &lines {
        let r = call(
            &d.socket,
            "POST",
            &format!("/v1/cells/{id}/commands"),
            Some(&json!({"command": line, "timeout_ms": 10000})),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["stdout"], line.as_str(), "{}", r.text());
        assert_eq!(r.json()["stderr"], "", "{}", r.text());
    }
    let out = call(&d.socket, "GET", &format!("/v1/cells/{id}/output?from=0&follow=false"), None);
    let events: Vec<Value> = out.text().lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let data: String = events
        .iter()
        .filter(|e| e["type"] == "data")
        .inspect(|e| assert_eq!(e["stream"], "stdout", "a tty cell has one stream: {e}"))
        .map(|e| e["data"].as_str().unwrap_or("").to_owned())
        .collect();
    let expected: String = lines.iter().map(|l| format!("{l}\n")).collect();
    assert_eq!(data, expected, "the terminal added or echoed bytes");

    let r = call(&d.socket, "DELETE", &format!("/v1/cells/{id}"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["exit"]["reason"], "terminated", "{}", r.text());
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "payload {pid} still alive");
    assert!(d.cells_on_disk().is_empty(), "cgroups left: {:?}", d.cells_on_disk());
}

// 3. `cellkeep run` with a tty policy keeps run's own stdio (here: pipes), so it works as before.
#[test]
fn run_ignores_tty() {
    gate!("run_ignores_tty");
    let w = common::World::new();
    let policy = w.policy("ttyrun", "tty = true", "");
    let r = w.run(&policy, &["/usr/bin/python3", "-c", "import os; print(os.isatty(0), os.isatty(1))"]);
    assert_eq!(r.code, 0, "{}", r.describe());
    assert_eq!(r.output(), "False False", "{}", r.describe());
    w.assert_no_cells();
}
