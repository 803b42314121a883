//! `cellkeep exec` as a remote shell (issue 16, finding 3): live and separate stdout/stderr,
//! stdin forwarded, exact bytes with no cap, the command's exit status, Ctrl-C terminating
//! the cell, and a buffered (`--json`) result that never passes cut output off as whole.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: failing loudly is the point

mod common;
mod harness;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::gate;
use common::http::call;
use common::BIN;
use harness::{Builder, Daemon};

fn daemon() -> Builder {
    Daemon::builder().max_cells(10).provider("sh", "[\"/bin/sh\", \"-c\"]", "oneshot", "").provider(
        "small",
        "[\"/bin/sh\", \"-c\"]",
        "oneshot",
        "[limits]\noutput_bytes = \"4K\"\n",
    )
}

fn exec(d: &Daemon, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--socket").arg(&d.socket).arg("exec").args(args).args(["--cwd", &d.cwd()]);
    c
}

fn sha256(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_owned()
}

// The first line reaches the terminal before the command ends: the command cannot end until
// the test, having read that line, creates the file it waits for (ordering by events).
#[test]
fn exec_streams_output_live() {
    gate!("exec_streams_output_live");
    let d = daemon().start();
    let go = d.ws.path().join("go");
    let mut child =
        exec(&d, &["sh", "echo first; echo err-line >&2; while [ ! -e go ]; do sleep 0.05; done; echo late"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cellkeep exec");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    // A bound so that a buffering exec fails instead of hanging (not a speed threshold).
    let first = rx.recv_timeout(Duration::from_secs(60)).expect("no output while the command runs");
    assert_eq!(first, "first");
    std::fs::write(&go, b"").expect("create go");
    let rest = rx.recv_timeout(Duration::from_secs(60)).expect("the rest");
    assert_eq!(rest, "late");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err-line\n", "stderr kept apart");
}

// 100 MiB of random bytes through exec's stdin and back on its stdout, byte for byte (the
// policy keeps only 8 MiB of output: a stream has no cap).
#[test]
fn exec_carries_100_mib_exactly() {
    gate!("exec_carries_100_mib_exactly");
    let d = daemon().start();
    let dir = tempfile::tempdir().expect("tmp");
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src).expect("src"));
        let mut x = 0x243F6A8885A308D3u64;
        for _ in 0..(100 << 20) / 8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            f.write_all(&x.to_le_bytes()).expect("write");
        }
    }
    let t = Instant::now();
    let out = exec(&d, &["sh", "cat"])
        .stdin(std::fs::File::open(&src).expect("open src"))
        .stdout(std::fs::File::create(&dst).expect("dst"))
        .output()
        .expect("cellkeep exec");
    eprintln!("exec: 100 MiB through stdin and stdout in {:.1?}", t.elapsed());
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::metadata(&dst).expect("dst").len(), 100 << 20);
    assert_eq!(sha256(&src), sha256(&dst));
}

// stdin is forwarded when it is not a terminal; the exit status is the command's; a timeout
// is 124.
#[test]
fn exec_forwards_stdin_and_exit_status() {
    gate!("exec_forwards_stdin_and_exit_status");
    let d = daemon().start();
    let mut child =
        exec(&d, &["sh", "cat; exit 3"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("exec");
    child.stdin.take().expect("stdin").write_all(b"x\n").expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.stdout, b"x\n");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let out = exec(&d, &["sh", "sleep 30", "--timeout", "0.5"]).stdin(Stdio::null()).output().expect("exec");
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    // -n (as `ssh -n`): stdin is not forwarded, so a command reading it ends at once even
    // though ours is a pipe that stays open (a `while read` loop over cellkeep exec, a CI job's
    // stdin): without -n it took the loop's input, or waited for an EOF that never came.
    let mut child = exec(&d, &["-n", "sh", "cat; echo done", "--timeout", "20"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("exec -n");
    let _open = child.stdin.take();
    let out = child.wait_with_output().expect("wait");
    assert_eq!((out.stdout.as_slice(), out.status.code()), (&b"done\n"[..], Some(0)), "{out:?}");
}

// A cell's program starts with every signal at its default. Ignored signals survive exec, and
// every cellkeep process ignores SIGPIPE (Rust's runtime): a cell's `yes | head -n1` wrote
// "Broken pipe" until its wall time instead of ending at once. The daemon here is started with
// SIGINT, SIGQUIT and SIGHUP ignored too, as under a shell's background job or `nohup`.
#[test]
fn a_cells_signals_start_at_their_defaults() {
    gate!("a_cells_signals_start_at_their_defaults");
    let d = daemon().wrapper(&["/bin/sh", "-c", "trap '' INT QUIT HUP; exec \"$0\" \"$@\""]).start();
    let out = exec(&d, &["sh", "yes | head -n1; grep SigIgn /proc/self/status", "--timeout", "20"])
        .stdin(Stdio::null())
        .output()
        .expect("exec");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(stdout, "y\nSigIgn:\t0000000000000000\n", "stderr: {:.300}", stderr);
    assert!(!stderr.contains("Broken pipe"), "{:.300}", stderr);
}

/// A streamed one-shot of `script` on provider `sh`: its NDJSON lines, each with its value.
fn streamed(d: &Daemon, script: &str) -> Vec<(String, serde_json::Value)> {
    let body = serde_json::json!({"command": script, "cwd": d.cwd(), "stream": true, "timeout_ms": 60000});
    let r = call(&d.socket, "POST", "/v1/providers/sh/commands", Some(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    r.text().lines().map(|l| (l.to_owned(), serde_json::from_str(l).expect("an NDJSON line"))).collect()
}

// A streamed one-shot's `data` lines come in offset order across both streams (pool review,
// round 4: stdout at offset 3 arrived before stderr at offset 0, so a client resuming from the
// last offset it saw would skip bytes). Offsets are contiguous: each line starts where the one
// before ended.
#[test]
fn streamed_output_arrives_in_offset_order() {
    gate!("streamed_output_arrives_in_offset_order");
    let d = daemon().start();
    let mut next = 0u64;
    let mut lines = 0;
    for (line, v) in streamed(&d, "for i in $(seq 1500); do echo o$i; echo e$i >&2; done") {
        if v["type"] != "data" {
            continue;
        }
        let offset = v["offset"].as_u64().expect("offset");
        let len = v["data"].as_str().map_or(0, str::len) as u64;
        assert_eq!(offset, next, "data line {lines} out of order: {line}");
        next = offset + len;
        lines += 1;
    }
    assert!(next > 10_000, "too little output: {next} bytes");
}

// From an old-manager client review (stop 29): a streamed chunk cut inside a UTF-8 character
// (pipe reads and the reader's coalescing cut at any byte) made both halves `data_b64`, so a
// client reading `data` lost whole chunks of plain text. A character coming whole waits for
// its other bytes: text arrives as `data`, every byte of it.
#[test]
fn streamed_text_is_never_cut_inside_a_character() {
    gate!("streamed_text_is_never_cut_inside_a_character");
    let d = daemon().start();
    // An odd offset first, then two-byte characters: every even-sized read ends inside one.
    let script = "text() { printf a; i=0; while [ $i -lt 4000 ]; do printf 'éééééééééééééééééééééééééééééééééééééééééééééééééé'; i=$((i+1)); done; }; text; text >&2";
    let (mut text, mut b64) = (String::new(), 0);
    for (_, v) in streamed(&d, script) {
        if v["type"] == "data" {
            text += v["data"].as_str().unwrap_or_default();
            b64 += usize::from(v.get("data_b64").is_some());
        }
    }
    assert_eq!(b64, 0, "text came as base64 in {b64} chunk(s)");
    assert_eq!(text.len(), 2 * (1 + 4000 * 100), "bytes of text lost (stdout and stderr)");
}

// SIGINT (Ctrl-C) to exec terminates the command's cell; exec exits 128+SIGTERM.
#[test]
fn exec_ctrl_c_terminates_the_cell() {
    gate!("exec_ctrl_c_terminates_the_cell");
    let d = daemon().start();
    let mut child =
        exec(&d, &["sh", "echo up; sleep 60"]).stdin(Stdio::null()).stdout(Stdio::piped()).spawn().expect("exec");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
    assert_eq!(line, "up\n");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT)
        .expect("kill");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(143), "{status:?}");
    let cells = call(&d.socket, "GET", "/v1/cells?all=true", None).json();
    assert_eq!(cells[0]["exit"]["reason"], "terminated", "{cells}");
    assert!(d.cells_on_disk().is_empty(), "cgroups left: {:?}", d.cells_on_disk());
}

// A buffered result (`--json`) cut at output_bytes says so: non-zero status, output_truncated.
// Streamed, the same command's output arrives whole.
#[test]
fn exec_never_truncates_silently() {
    gate!("exec_never_truncates_silently");
    let d = daemon().start();
    let out = exec(&d, &["small", "head -c 10000 /dev/zero", "--json"]).output().expect("exec");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("output_truncated"), "{out:?}");
    let out = exec(&d, &["small", "head -c 100000 /dev/zero"]).stdin(Stdio::null()).output().expect("exec");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.len(), 100_000);
}
