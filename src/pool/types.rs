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
}

/// The answer to a command (session reply, or a one-shot run's output).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandResult {
    pub cell: String,
    /// Session: the framed reply. One-shot: everything the process wrote to stdout (kept part).
    pub stdout: String,
    pub stderr: String,
    /// One-shot: how it ended. Session: absent (the session lives on).
    pub exit: Option<ExitReason>,
    /// Output was cut to the policy's `output_bytes`.
    pub truncated: bool,
    pub duration_ms: u64,
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

/// The answer to a reload that succeeded: the providers now served.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reloaded {
    pub providers: Vec<String>,
}

/// Daemon-wide health.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonHealth {
    pub status: String,
    pub version: String,
    pub uptime_s: u64,
    pub cells_running: usize,
    pub cells_exited: usize,
    pub max_cells: usize,
    pub cgroup_layout: String,
    pub cgroup_backend: String,
    pub landlock_abi: i32,
    pub providers: Vec<String>,
    /// How many policy files the last load (start or reload) left out.
    #[serde(default)]
    pub policies_rejected: usize,
    /// Those files with every problem — shown to root and admin groups only (`None` to
    /// others: the paths and contents of policies are the administrators' business).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_policies: Option<Vec<crate::policy::set::Rejected>>,
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
    pub idle_timeout_ms: Option<u64>,
    pub output_bytes: u64,
}

/// Answer of cleanup / shutdown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Count {
    pub count: usize,
}
