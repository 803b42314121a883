//! The pool's request and answer types (serde): the API sends and receives exactly these.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cgroup::{Events, Usage};
use crate::sandbox::{Degradation, ExitReason};

/// Who is asking (from SO_PEERCRED at accept; supplementary groups from /proc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    /// Supplementary groups of the peer process (read at accept; empty if unknown).
    pub groups: Vec<u32>,
    /// The peer runs inside one of the cells (or could not be placed): it gets no API at all.
    pub in_cell: bool,
}

impl Caller {
    pub fn root() -> Caller {
        Caller { uid: 0, gid: 0, pid: None, groups: Vec::new(), in_cell: false }
    }
}

/// Start a cell.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnRequest {
    pub provider: String,
    /// Working directory (must resolve inside the policy's workdir roots).
    pub cwd: PathBuf,
    /// `true`: a long-lived session fed on stdin; default: the provider's mode.
    #[serde(default)]
    pub session: Option<bool>,
    /// Caller-supplied environment; only names on the policy's pass-list reach the cell.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Extra arguments appended to the provider's command.
    #[serde(default)]
    pub args: Vec<String>,
    /// Over the cap: wait up to this long for a free slot instead of failing at once.
    #[serde(default)]
    pub wait_for_slot_ms: Option<u64>,
}

/// "The live session of provider P for my uid, or start one".
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    pub cwd: PathBuf,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub wait_for_slot_ms: Option<u64>,
}

/// Send a command to a session cell.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    pub command: String,
    /// Per-command timeout; default: the policy's wall time, else 300 s.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Run one command in a fresh one-shot cell: command + args + [command as one argv element].
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OneshotRequest {
    pub command: String,
    pub cwd: PathBuf,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub wait_for_slot_ms: Option<u64>,
    /// Answer as an NDJSON stream (`started`, every byte of output as `data` lines, then
    /// `exit` with the result) instead of one JSON result; streamed output has no cap.
    #[serde(default)]
    pub stream: bool,
    /// Give the command a stdin pipe, written with `POST /v1/cells/{id}/stdin` (default:
    /// /dev/null).
    #[serde(default)]
    pub stdin: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CellState {
    Running,
    Exited,
}

/// What `get` / `list` return.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellInfo {
    pub id: String,
    pub provider: String,
    pub owner_uid: u32,
    pub session: bool,
    pub state: CellState,
    /// Unix time in milliseconds.
    pub created_ms: u64,
    pub idle_ms: u64,
    /// Host pid of the payload while it runs.
    pub pid: Option<u32>,
    /// Set once the cell ended.
    pub exit: Option<ExitReason>,
    pub degraded: Vec<Degradation>,
    /// Limit events the kernel reported for this cell (OOM kills, memory and pids limit hits),
    /// updated as they happen and kept after the cell ended.
    pub events: Events,
    /// Decisions of the egress proxy (`network.mode = "proxy"`): name, port, allowed, bytes.
    /// Only in a cell's own answer (`GET /v1/cells/{id}`), not in lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<crate::egress::EgressEvent>,
}

/// The answer to a command (session reply, or a one-shot run's output).
///
/// Output is bytes: valid UTF-8 travels as `stdout` / `stderr`; anything else leaves that field
/// empty and carries the exact bytes as `stdout_b64` / `stderr_b64` (standard base64).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub cell: String,
    /// Session: the framed reply. One-shot: everything the process wrote to stdout (kept part).
    #[serde(default)]
    pub stdout: String,
    /// The stdout bytes when they are not valid UTF-8 (`stdout` is then empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_b64: Option<String>,
    #[serde(default)]
    pub stderr: String,
    /// The stderr bytes when they are not valid UTF-8 (`stderr` is then empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_b64: Option<String>,
    /// One-shot: how it ended. Session: absent (the session lives on).
    pub exit: Option<ExitReason>,
    /// Output was cut to the policy's `output_bytes` (a session reply: some of the command's
    /// stderr was pushed out of the output spool by later output).
    pub truncated: bool,
    pub duration_ms: u64,
    /// The cell's CPU, memory and pids usage when the command ended (as `run --json` prints).
    #[serde(default)]
    pub usage: Option<Usage>,
    /// Limit events of the cell so far (OOM kills, memory and pids limit hits).
    #[serde(default)]
    pub events: Events,
}

impl CommandResult {
    /// A result with `stdout`/`stderr` filled from bytes (base64 where not UTF-8).
    pub fn new(cell: &str, stdout: &[u8], stderr: &[u8]) -> CommandResult {
        let (stdout, stdout_b64) = text_or_b64(stdout);
        let (stderr, stderr_b64) = text_or_b64(stderr);
        CommandResult {
            cell: cell.to_owned(),
            stdout,
            stdout_b64,
            stderr,
            stderr_b64,
            exit: None,
            truncated: false,
            duration_ms: 0,
            usage: None,
            events: Events::default(),
        }
    }

    /// The exact stdout bytes.
    pub fn stdout_bytes(&self) -> Vec<u8> {
        bytes_of(&self.stdout, self.stdout_b64.as_deref())
    }

    /// The exact stderr bytes.
    pub fn stderr_bytes(&self) -> Vec<u8> {
        bytes_of(&self.stderr, self.stderr_b64.as_deref())
    }
}

fn text_or_b64(bytes: &[u8]) -> (String, Option<String>) {
    use base64::Engine;
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_owned(), None),
        Err(_) => (String::new(), Some(base64::engine::general_purpose::STANDARD.encode(bytes))),
    }
}

fn bytes_of(text: &str, b64: Option<&str>) -> Vec<u8> {
    use base64::Engine;
    match b64 {
        Some(b) => base64::engine::general_purpose::STANDARD.decode(b).unwrap_or_default(),
        None => text.as_bytes().to_vec(),
    }
}

/// Filter for `list`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListFilter {
    pub provider: Option<String>,
    /// Include exited cells (kept for the retention period).
    #[serde(default)]
    pub all: bool,
}

/// The answer to a reload that succeeded: the providers now served, and the files still left
/// out as the last applied load left them (see `Pool::reload`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reloaded {
    pub providers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<crate::policy::set::Rejected>,
    /// The served policies' write paths on a read-only mount (see `Pool::path_notes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Daemon-wide health.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonHealth {
    pub status: String,
    pub version: String,
    pub uptime_s: u64,
    /// Cells the caller may see (every cell for root and admins, else the caller's own).
    pub cells_running: usize,
    pub cells_exited: usize,
    pub max_cells: usize,
    pub cgroup_layout: String,
    pub cgroup_backend: String,
    pub landlock_abi: i32,
    /// Providers the caller may use.
    pub providers: Vec<String>,
    /// Pre-built cells waiting for a request (`[pool] prewarm`; they count against the cap).
    #[serde(default)]
    pub cells_warm: usize,
    /// Launches served by a pre-built cell since the daemon started.
    #[serde(default)]
    pub warm_served: u64,
    /// Launches waiting now for a slot or for their uid's share (`wait_for_slot_ms`), every
    /// caller's: how long the queue is that a new launch joins.
    #[serde(default)]
    pub launches_waiting: usize,
    /// How many policy files the last load (start or reload) left out.
    #[serde(default)]
    pub policies_rejected: usize,
    /// Those files with every problem — shown to root and admin groups only (`None` to
    /// others: the paths and contents of policies are the administrators' business).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_policies: Option<Vec<crate::policy::set::Rejected>>,
    /// The served policies' write paths on a read-only mount, to root and admins only (as
    /// `rejected_policies`; empty for others).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub host_memory_total: u64,
    pub host_memory_available: u64,
}

/// Per-cell health, read on demand from the cgroup and /proc.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellHealth {
    #[serde(flatten)]
    pub info: CellInfo,
    pub usage: Usage,
    /// CPU use over the last interval between two health reads (or the cell's lifetime).
    pub cpu_percent: f64,
    pub open_fds: u64,
    pub limits: LimitsView,
}

/// The limits that apply to a cell, as numbers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LimitsView {
    pub memory_max: Option<u64>,
    pub cpu: Option<f64>,
    pub pids: Option<u64>,
    pub open_files: Option<u64>,
    pub wall_time_ms: Option<u64>,
    /// The idle timeout in force (sessions only reap on it) and where it came from.
    pub idle_timeout_ms: Option<u64>,
    #[serde(default)]
    pub idle_timeout_source: Option<IdleSource>,
    pub output_bytes: u64,
}

/// Where a cell's idle timeout comes from: its policy's `limits.idle_timeout`, or (when the
/// policy sets none) the daemon's `idle_timeout_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdleSource {
    Policy,
    Daemon,
}

/// Answer of cleanup / shutdown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Count {
    pub count: usize,
}
