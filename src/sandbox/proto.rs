//! The helper → launcher report channel: one JSON object per line on the helper's fd 3.
//!
//! Writers are the helper, the cell's pid 1 and the payload before it execs; they never write
//! at the same time (each step waits for the previous one), and every message is a single
//! `write(2)` of a short line, so lines never interleave. End of file means every writer is
//! gone: the payload exec'd (close-on-exec) and pid 1 and the helper exited.

use std::os::fd::AsFd;

use serde::{Deserialize, Serialize};

/// A named step of the setup recipe; a failure names the step that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Plan,
    /// The helper moving itself into the cell's cgroup (v1).
    Cgroup,
    Namespaces,
    IdMap,
    Mounts,
    Network,
    Hostname,
    Cwd,
    Rlimits,
    Capabilities,
    Identity,
    NoNewPrivs,
    Landlock,
    Seccomp,
    Exec,
    Init,
    /// Making the pseudo-terminal the payload's controlling terminal (`tty = true`).
    Tty,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_owned));
        f.write_str(s.as_deref().unwrap_or("unknown"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Report {
    /// A mechanism ran weaker than asked (only under `enforcement = "best_effort"`).
    Degraded { mechanism: String, detail: String },
    /// A setup step failed; the payload never ran.
    SetupFailed { stage: Stage, errno: i32, detail: String },
    /// pid 1 set up the cell's network (`lo` up) and waits, blocked on a read of the control
    /// socket, for the launcher to open the egress proxy's listener in that namespace and
    /// write one byte (`proxy` policies only).
    NetnsReady,
    /// A cell built before its request (`warm` plan) is ready: its helper waits for the
    /// request's plan on the control socket.
    Warm,
    /// The payload exec'd: the command is running.
    Exec,
    /// The payload ended (as seen by the cell's pid 1).
    PayloadExit { code: Option<i32>, signal: Option<i32> },
}

impl Report {
    /// Serialise as one line and write it with a single `write(2)` (short lines are written
    /// whole; a failure to report is not recoverable by the writer, so it is ignored).
    pub fn send(&self, fd: impl AsFd) {
        if let Ok(mut line) = serde_json::to_vec(self) {
            line.push(b'\n');
            let mut rest = &line[..];
            while !rest.is_empty() {
                match nix::unistd::write(fd.as_fd(), rest) {
                    Ok(0) => break,
                    Ok(n) => rest = &rest[n..],
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => break,
                }
            }
        }
    }

    /// Parse one line; `None` for a line that is not a report (never trusted further).
    pub fn parse(line: &[u8]) -> Option<Report> {
        serde_json::from_slice(line).ok()
    }
}
