//! The wire contract: every request, response and output-stream line of the `/v1` API, and
//! the [`ErrorCode`] enum with the HTTP status of each code.
//!
//! These are the only types the API serialises or parses. The daemon's internal types (pool
//! answers, sandbox exit reasons, cgroup usage and events, session streams, policy rejections)
//! convert into them (`From`); requests convert into the pool's request types. The client
//! ([`crate::client`]) and the CLI speak these same types. The OpenAPI document served at
//! `/v1/openapi.json` is generated from them ([`super::routes::openapi`]), so the schema, the
//! server and the client cannot drift apart. The JSON is byte-for-byte what the internal types
//! serialised to before this module owned it (the unit tests below hold it to that).

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::session::OutputEvent;

/// Every error code the daemon answers with. Its HTTP status is [`ErrorCode::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The cap on running cells is reached (and no slot freed within `wait_for_slot_ms`).
    ProcessLimit,
    /// The command ran past its timeout.
    Timeout,
    /// The cell hit a resource limit (memory, pids, file size, reply size).
    ResourceLimit,
    /// The cell ended before the reply was complete.
    Exited,
    /// The cell has already ended.
    AlreadyEnded,
    /// No such cell, or no such route.
    NotFound,
    /// No such provider (policy).
    UnknownProvider,
    /// The caller may not do this.
    Forbidden,
    /// The request is malformed or names something invalid.
    BadRequest,
    /// A policy forbids or cannot serve the request (or a reload was rejected).
    Policy,
    /// The cell could not be set up for the request.
    SetupFailed,
    /// The daemon is shutting down.
    ShuttingDown,
    /// The daemon serves as many connections as it may (`max_connections`, or this uid's
    /// share of them); the connection is closed after this answer.
    ConnectionLimit,
    /// The daemon failed.
    Internal,
}

impl ErrorCode {
    /// The HTTP status every answer with this code carries (the one place it is decided;
    /// routing answers 405 and 413 under `bad_request`, see [`super::error::HttpError`]).
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::ProcessLimit => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::ResourceLimit | ErrorCode::Exited | ErrorCode::AlreadyEnded => StatusCode::CONFLICT,
            ErrorCode::NotFound | ErrorCode::UnknownProvider => StatusCode::NOT_FOUND,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Policy | ErrorCode::SetupFailed => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::ShuttingDown | ErrorCode::ConnectionLimit => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ProcessLimit => "process_limit",
            ErrorCode::ConnectionLimit => "connection_limit",
            ErrorCode::Timeout => "timeout",
            ErrorCode::ResourceLimit => "resource_limit",
            ErrorCode::Exited => "exited",
            ErrorCode::AlreadyEnded => "already_ended",
            ErrorCode::NotFound => "not_found",
            ErrorCode::UnknownProvider => "unknown_provider",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Policy => "policy",
            ErrorCode::SetupFailed => "setup_failed",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every error answer: a stable machine code and a message naming what was involved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// With an answer to a command that ended without its whole result — `timeout`,
    /// `resource_limit`, `exited` (a session that ended mid-reply, a one-shot ended by `kill`
    /// or `cleanup`) and `shutting_down`, one-shot or session: what it printed so far, exit
    /// reason, usage and events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<CommandResult>>,
}

// ---- requests ----

/// `POST /v1/cells`: start a cell.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpawnRequest {
    pub provider: String,
    /// Working directory (must resolve inside the policy's workdir roots).
    pub cwd: String,
    /// `true`: a long-lived session fed on stdin; default: the provider's mode.
    #[serde(default)]
    pub session: Option<bool>,
    /// Caller-supplied environment; only names on the policy's pass-list reach the cell.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Extra arguments appended to the provider's command.
    #[serde(default)]
    pub args: Vec<String>,
    /// Over the cap: wait up to this long for a free slot instead of failing at once. (A cap
    /// reached only because a cell is being pre-built does not fail at once either: the
    /// request waits for that build, a few milliseconds, at most 10 s, and takes its slot.)
    #[serde(default)]
    pub wait_for_slot_ms: Option<u64>,
}

/// `POST /v1/providers/{name}/session`: the caller's live session of a provider, or a new one.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    pub cwd: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub wait_for_slot_ms: Option<u64>,
}

/// `POST /v1/cells/{id}/commands`: a command for a session cell.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    pub command: String,
    /// Per-command timeout; default: the policy's wall time, else 300 s.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// `POST /v1/providers/{name}/commands`: one command in a fresh one-shot cell (command + args
/// + [command as one argv element]).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OneshotRequest {
    pub command: String,
    pub cwd: String,
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

/// `GET /v1/cells` query: which cells.
#[derive(Debug, Clone, Default, Deserialize, Serialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListFilter {
    /// Only this provider's cells.
    pub provider: Option<String>,
    /// Include exited cells (kept for the retention period).
    #[serde(default)]
    pub all: bool,
}

/// `DELETE /v1/cells/{id}` query.
#[derive(Debug, Clone, Default, Deserialize, Serialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TerminateQuery {
    /// SIGKILL at once instead of SIGTERM and a grace period.
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/shutdown` query.
#[derive(Debug, Clone, Default, Deserialize, Serialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ShutdownQuery {
    /// How long cells get to end before their cgroups are killed and removed (default: the
    /// daemon's `shutdown_timeout_secs`; at most that).
    pub timeout_ms: Option<u64>,
}

/// `GET /v1/cells/{id}/output` query.
#[derive(Debug, Clone, Default, Deserialize, Serialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OutputQuery {
    /// Offset to start from (default: the oldest byte the spool holds).
    pub from: Option<u64>,
    /// Keep the stream open for new output until the cell ends.
    #[serde(default)]
    pub follow: bool,
    /// `ndjson` (default) or `raw`.
    #[serde(default)]
    pub format: OutputFormat,
    /// `format=raw` only: just this stream's bytes (default: both, in order).
    pub stream: Option<Stream>,
}

/// How `GET /v1/cells/{id}/output` answers.
#[derive(Debug, Deserialize, Serialize, Default, Clone, Copy, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// [`OutputLine`]s, one per line.
    #[default]
    Ndjson,
    /// Only the bytes (stdout and stderr in the order they were read). The offset of the first
    /// byte is the `x-cellkeep-offset` header; a gap (`lagged`) ends the body with an error, so
    /// a cut stream is never taken for a complete one.
    Raw,
}

/// `POST /v1/cells/{id}/stdin` query.
#[derive(Debug, Clone, Default, Deserialize, Serialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StdinQuery {
    /// Close the cell's stdin after writing the body.
    #[serde(default)]
    pub eof: bool,
}

// ---- answers ----

/// One of a cell's two output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Whether a cell still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CellState {
    Running,
    Exited,
}

/// Why a cell ended: exactly one per run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum ExitReason {
    Exited {
        code: i32,
    },
    Signaled {
        signal: i32,
    },
    /// The kernel's OOM killer ended it at the memory limit.
    OomKilled,
    /// The pids limit was hit (forks failed) during the run.
    PidsLimited,
    /// A write went past the policy's `file_size`: the kernel's SIGXFSZ ended the payload.
    FileSizeLimited,
    /// The wall-clock limit passed; the cell was killed.
    TimedOut,
    /// A syscall the seccomp policy kills on.
    SeccompViolation {
        syscall: Option<String>,
    },
    /// A setup step failed; the command never ran.
    SetupFailed {
        stage: String,
        errno: i32,
        detail: String,
    },
    /// Ended on request (terminate / shutdown).
    Terminated,
    /// Reaped after its idle timeout.
    Idle,
}

impl ExitReason {
    /// The sandbox's own reason (whose display and exit code conventions this shares).
    fn internal(&self) -> crate::sandbox::ExitReason {
        use crate::sandbox::ExitReason as R;
        match self.clone() {
            ExitReason::Exited { code } => R::Exited { code },
            ExitReason::Signaled { signal } => R::Signaled { signal },
            ExitReason::OomKilled => R::OomKilled,
            ExitReason::PidsLimited => R::PidsLimited,
            ExitReason::FileSizeLimited => R::FileSizeLimited,
            ExitReason::TimedOut => R::TimedOut,
            ExitReason::SeccompViolation { syscall } => R::SeccompViolation { syscall },
            ExitReason::SetupFailed { stage, errno, detail } => R::SetupFailed { stage, errno, detail },
            ExitReason::Terminated => R::Terminated,
            ExitReason::Idle => R::Idle,
        }
    }

    /// Conventional exit code for `cellkeep run`/`exec` (see the sandbox's `ExitReason`).
    pub fn exit_code(&self) -> i32 {
        self.internal().exit_code()
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.internal().fmt(f)
    }
}

impl From<crate::sandbox::ExitReason> for ExitReason {
    fn from(r: crate::sandbox::ExitReason) -> Self {
        use crate::sandbox::ExitReason as R;
        match r {
            R::Exited { code } => ExitReason::Exited { code },
            R::Signaled { signal } => ExitReason::Signaled { signal },
            R::OomKilled => ExitReason::OomKilled,
            R::PidsLimited => ExitReason::PidsLimited,
            R::FileSizeLimited => ExitReason::FileSizeLimited,
            R::TimedOut => ExitReason::TimedOut,
            R::SeccompViolation { syscall } => ExitReason::SeccompViolation { syscall },
            R::SetupFailed { stage, errno, detail } => ExitReason::SetupFailed { stage, errno, detail },
            R::Terminated => ExitReason::Terminated,
            R::Idle => ExitReason::Idle,
        }
    }
}

/// A protection the policy asked for `best_effort` that this host could not give.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Degradation {
    pub mechanism: String,
    pub detail: String,
}

/// Limit events counted by the kernel for a cell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Events {
    /// OOM kills.
    pub oom_kills: u64,
    /// Times the memory limit was hit.
    pub memory_max_hits: u64,
    /// Times the pids limit was hit.
    pub pids_max_hits: u64,
}

/// Resource usage of a cell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub memory_current: u64,
    /// Peak memory; `null` if the kernel lacks it.
    pub memory_peak: Option<u64>,
    pub cpu_usage_usec: u64,
    pub pids_current: u64,
    pub cpu_throttled_usec: Option<u64>,
}

/// One decision of the egress proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EgressEvent {
    /// Unix time in milliseconds of the request.
    pub at_ms: u64,
    /// The name (or address) the cell asked for, as the proxy compared it.
    pub name: String,
    pub port: u16,
    pub allowed: bool,
    /// Why it was denied or failed (absent for a tunnel that ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Bytes from the cell to the destination and back (0 when denied).
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// What `GET /v1/cells`, `GET /v1/cells/{id}` and the spawn calls answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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
    /// Limit events the kernel reported for this cell, kept after the cell ended.
    pub events: Events,
    /// Decisions of the egress proxy (`network.mode = "proxy"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressEvent>,
}

/// The answer to a command (session reply, or a one-shot run's output).
///
/// Output is bytes: valid UTF-8 travels as `stdout` / `stderr`; anything else leaves that field
/// empty and carries the exact bytes as `stdout_b64` / `stderr_b64` (standard base64).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
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
    /// One-shot: how it ended. Session: `null` (the session lives on), or in an error's
    /// `result`, how the session ended under the command.
    pub exit: Option<ExitReason>,
    /// Output was cut to the policy's `output_bytes`.
    pub truncated: bool,
    /// One-shot: from its cell's start to its end (a wait for a slot not counted, as its
    /// timeout does not count it). Session: from the request to the reply (a wait behind the
    /// session's earlier commands counted, as its timeout counts it).
    pub duration_ms: u64,
    /// The cell's CPU, memory and pids usage when the command ended.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// Limit events of the cell so far.
    #[serde(default)]
    pub events: Events,
}

impl CommandResult {
    /// The exact stdout bytes.
    pub fn stdout_bytes(&self) -> Vec<u8> {
        bytes_of(&self.stdout, self.stdout_b64.as_deref())
    }

    /// The exact stderr bytes.
    pub fn stderr_bytes(&self) -> Vec<u8> {
        bytes_of(&self.stderr, self.stderr_b64.as_deref())
    }
}

fn bytes_of(text: &str, b64: Option<&str>) -> Vec<u8> {
    use base64::Engine;
    match b64 {
        Some(b) => base64::engine::general_purpose::STANDARD.decode(b).unwrap_or_default(),
        None => text.as_bytes().to_vec(),
    }
}

/// `POST /v1/reload` succeeded: the providers now served, and the files still left out as
/// they were before (broken the same way since the last applied load: they serve nothing and
/// do not refuse the reload; a file newly broken refuses it, `422 policy`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Reloaded {
    pub providers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<Rejected>,
    /// What the operator should fix in the policies now served, served as they are: each
    /// write path or workdir root on a read-only mount of the daemon (cells inherit its
    /// mounts), with the fix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A policy file left out of the set, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Rejected {
    /// The file stem (`*` when the directory itself could not be read).
    pub name: String,
    pub file: String,
    /// Each problem as `file:line:col: key: message`.
    pub problems: Vec<String>,
}

/// `GET /v1/health`: daemon-wide health.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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
    /// Those files with every problem — shown to root and admin groups only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_policies: Option<Vec<Rejected>>,
    /// What the operator should fix in the served policies (root and admin groups only): each
    /// write path or workdir root on a read-only mount of the daemon (cells inherit its
    /// mounts), with the fix. Checked at start and at each reload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub host_memory_total: u64,
    pub host_memory_available: u64,
}

/// `GET /v1/cells/{id}/health`: the cell's info with usage read on demand.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
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

/// Where a cell's idle timeout comes from: its policy, or the daemon's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IdleSource {
    Policy,
    Daemon,
}

/// How many cells an operation ended (cleanup, shutdown) or bytes it wrote (stdin).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Count {
    pub count: usize,
}

/// One line of `GET /v1/cells/{id}/output` and of a streamed one-shot (newline-delimited JSON).
///
/// `offset` is the position of the chunk's first byte in the cell's output (stdout and stderr
/// share one sequence), so a reader that reconnects asks `?from=<offset + len>` and misses
/// nothing the spool still holds. Valid UTF-8 travels as `data`; anything else as `data_b64`
/// (standard base64), so no byte is ever altered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputLine {
    Data {
        stream: Stream,
        offset: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data_b64: Option<String>,
    },
    /// The reader fell behind (or asked for output the spool no longer holds): `dropped`
    /// bytes were skipped.
    Lagged { dropped: u64 },
    /// The cell's output is complete (both pipes closed).
    End,
    /// A streamed one-shot command (`"stream": true`): its cell, first of all.
    Started { cell: String },
    /// A streamed one-shot command ended: how (in `result.exit`), with usage and events; its
    /// output was the `data` lines before. Always the last line.
    Exit { result: Box<CommandResult> },
}

impl OutputLine {
    /// The raw bytes of a `Data` line (decoding `data_b64`); `None` for other lines.
    pub fn bytes(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        match self {
            OutputLine::Data { data: Some(s), .. } => Some(s.clone().into_bytes()),
            OutputLine::Data { data_b64: Some(b), .. } => base64::engine::general_purpose::STANDARD.decode(b).ok(),
            _ => None,
        }
    }
}

// ---- internal → wire ----

impl From<crate::session::Stream> for Stream {
    fn from(s: crate::session::Stream) -> Self {
        match s {
            crate::session::Stream::Stdout => Stream::Stdout,
            crate::session::Stream::Stderr => Stream::Stderr,
        }
    }
}

impl From<Stream> for crate::session::Stream {
    fn from(s: Stream) -> Self {
        match s {
            Stream::Stdout => crate::session::Stream::Stdout,
            Stream::Stderr => crate::session::Stream::Stderr,
        }
    }
}

impl From<OutputEvent> for OutputLine {
    fn from(ev: OutputEvent) -> Self {
        use base64::Engine;
        match ev {
            OutputEvent::Data { stream, offset, data } => {
                let stream = stream.into();
                match std::str::from_utf8(&data) {
                    Ok(s) => OutputLine::Data { stream, offset, data: Some(s.to_owned()), data_b64: None },
                    Err(_) => OutputLine::Data {
                        stream,
                        offset,
                        data: None,
                        data_b64: Some(base64::engine::general_purpose::STANDARD.encode(&data)),
                    },
                }
            }
            OutputEvent::Lagged { dropped } => OutputLine::Lagged { dropped },
            OutputEvent::End => OutputLine::End,
        }
    }
}

impl From<crate::pool::CellState> for CellState {
    fn from(s: crate::pool::CellState) -> Self {
        match s {
            crate::pool::CellState::Running => CellState::Running,
            crate::pool::CellState::Exited => CellState::Exited,
        }
    }
}

impl From<crate::sandbox::Degradation> for Degradation {
    fn from(d: crate::sandbox::Degradation) -> Self {
        Degradation { mechanism: d.mechanism, detail: d.detail }
    }
}

impl From<crate::cgroup::Events> for Events {
    fn from(e: crate::cgroup::Events) -> Self {
        Events { oom_kills: e.oom_kills, memory_max_hits: e.memory_max_hits, pids_max_hits: e.pids_max_hits }
    }
}

impl From<crate::cgroup::Usage> for Usage {
    fn from(u: crate::cgroup::Usage) -> Self {
        Usage {
            memory_current: u.memory_current,
            memory_peak: u.memory_peak,
            cpu_usage_usec: u.cpu_usage_usec,
            pids_current: u.pids_current,
            cpu_throttled_usec: u.cpu_throttled_usec,
        }
    }
}

impl From<crate::egress::EgressEvent> for EgressEvent {
    fn from(e: crate::egress::EgressEvent) -> Self {
        EgressEvent {
            at_ms: e.at_ms,
            name: e.name,
            port: e.port,
            allowed: e.allowed,
            detail: e.detail,
            bytes_up: e.bytes_up,
            bytes_down: e.bytes_down,
        }
    }
}

impl From<crate::pool::CellInfo> for CellInfo {
    fn from(i: crate::pool::CellInfo) -> Self {
        CellInfo {
            id: i.id,
            provider: i.provider,
            owner_uid: i.owner_uid,
            session: i.session,
            state: i.state.into(),
            created_ms: i.created_ms,
            idle_ms: i.idle_ms,
            pid: i.pid,
            exit: i.exit.map(Into::into),
            degraded: i.degraded.into_iter().map(Into::into).collect(),
            events: i.events.into(),
            egress: i.egress.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<crate::pool::CommandResult> for CommandResult {
    fn from(r: crate::pool::CommandResult) -> Self {
        CommandResult {
            cell: r.cell,
            stdout: r.stdout,
            stdout_b64: r.stdout_b64,
            stderr: r.stderr,
            stderr_b64: r.stderr_b64,
            exit: r.exit.map(Into::into),
            truncated: r.truncated,
            duration_ms: r.duration_ms,
            usage: r.usage.map(Into::into),
            events: r.events.into(),
        }
    }
}

impl From<crate::pool::Reloaded> for Reloaded {
    fn from(r: crate::pool::Reloaded) -> Self {
        Reloaded { providers: r.providers, left_out: r.left_out.into_iter().map(Into::into).collect(), notes: r.notes }
    }
}

impl From<crate::policy::set::Rejected> for Rejected {
    fn from(r: crate::policy::set::Rejected) -> Self {
        Rejected { name: r.name, file: r.file.to_string_lossy().into_owned(), problems: r.problems }
    }
}

impl From<crate::pool::DaemonHealth> for DaemonHealth {
    fn from(h: crate::pool::DaemonHealth) -> Self {
        DaemonHealth {
            status: h.status,
            version: h.version,
            uptime_s: h.uptime_s,
            cells_running: h.cells_running,
            cells_exited: h.cells_exited,
            max_cells: h.max_cells,
            cgroup_layout: h.cgroup_layout,
            cgroup_backend: h.cgroup_backend,
            landlock_abi: h.landlock_abi,
            providers: h.providers,
            cells_warm: h.cells_warm,
            warm_served: h.warm_served,
            launches_waiting: h.launches_waiting,
            policies_rejected: h.policies_rejected,
            notes: h.notes,
            rejected_policies: h.rejected_policies.map(|v| v.into_iter().map(Into::into).collect()),
            host_memory_total: h.host_memory_total,
            host_memory_available: h.host_memory_available,
        }
    }
}

impl From<crate::pool::IdleSource> for IdleSource {
    fn from(s: crate::pool::IdleSource) -> Self {
        match s {
            crate::pool::IdleSource::Policy => IdleSource::Policy,
            crate::pool::IdleSource::Daemon => IdleSource::Daemon,
        }
    }
}

impl From<crate::pool::LimitsView> for LimitsView {
    fn from(l: crate::pool::LimitsView) -> Self {
        LimitsView {
            memory_max: l.memory_max,
            cpu: l.cpu,
            pids: l.pids,
            open_files: l.open_files,
            wall_time_ms: l.wall_time_ms,
            idle_timeout_ms: l.idle_timeout_ms,
            idle_timeout_source: l.idle_timeout_source.map(Into::into),
            output_bytes: l.output_bytes,
        }
    }
}

impl From<crate::pool::CellHealth> for CellHealth {
    fn from(h: crate::pool::CellHealth) -> Self {
        CellHealth {
            info: h.info.into(),
            usage: h.usage.into(),
            cpu_percent: h.cpu_percent,
            open_fds: h.open_fds,
            limits: h.limits.into(),
        }
    }
}

impl From<crate::pool::Count> for Count {
    fn from(c: crate::pool::Count) -> Self {
        Count { count: c.count }
    }
}

// ---- wire → internal (requests) ----

impl From<SpawnRequest> for crate::pool::SpawnRequest {
    fn from(r: SpawnRequest) -> Self {
        crate::pool::SpawnRequest {
            provider: r.provider,
            cwd: r.cwd.into(),
            session: r.session,
            env: r.env,
            args: r.args,
            wait_for_slot_ms: r.wait_for_slot_ms,
        }
    }
}

impl From<SessionRequest> for crate::pool::SessionRequest {
    fn from(r: SessionRequest) -> Self {
        crate::pool::SessionRequest { cwd: r.cwd.into(), env: r.env, wait_for_slot_ms: r.wait_for_slot_ms }
    }
}

impl From<SendRequest> for crate::pool::SendRequest {
    fn from(r: SendRequest) -> Self {
        crate::pool::SendRequest { command: r.command, timeout_ms: r.timeout_ms }
    }
}

impl From<OneshotRequest> for crate::pool::OneshotRequest {
    fn from(r: OneshotRequest) -> Self {
        crate::pool::OneshotRequest {
            command: r.command,
            cwd: r.cwd.into(),
            env: r.env,
            timeout_ms: r.timeout_ms,
            wait_for_slot_ms: r.wait_for_slot_ms,
            stream: r.stream,
            stdin: r.stdin,
        }
    }
}

impl From<ListFilter> for crate::pool::ListFilter {
    fn from(f: ListFilter) -> Self {
        crate::pool::ListFilter { provider: f.provider, all: f.all }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::ExitReason as R;

    /// The wire form of `internal` is byte-for-byte its serde output (the JSON the API sent
    /// before the wire types existed).
    fn same_bytes<I: Serialize + Clone, W: Serialize + From<I>>(internal: I) {
        let before = serde_json::to_string(&internal).unwrap();
        let after = serde_json::to_string(&W::from(internal)).unwrap();
        assert_eq!(before, after);
    }

    fn reasons() -> Vec<R> {
        vec![
            R::Exited { code: 3 },
            R::Signaled { signal: 9 },
            R::OomKilled,
            R::PidsLimited,
            R::FileSizeLimited,
            R::TimedOut,
            R::SeccompViolation { syscall: Some("ptrace".into()) },
            R::SeccompViolation { syscall: None },
            R::SetupFailed { stage: "landlock".into(), errno: 1, detail: "no".into() },
            R::Terminated,
            R::Idle,
        ]
    }

    fn cell_info(exit: Option<R>, egress: bool) -> crate::pool::CellInfo {
        crate::pool::CellInfo {
            id: "c1".into(),
            provider: "p".into(),
            owner_uid: 1000,
            session: true,
            state: crate::pool::CellState::Exited,
            created_ms: 1,
            idle_ms: 2,
            pid: Some(42),
            exit,
            degraded: vec![crate::sandbox::Degradation { mechanism: "landlock".into(), detail: "abi 1".into() }],
            events: crate::cgroup::Events { oom_kills: 1, memory_max_hits: 2, pids_max_hits: 3 },
            egress: if egress {
                vec![crate::egress::EgressEvent {
                    at_ms: 5,
                    name: "example.org".into(),
                    port: 443,
                    allowed: false,
                    detail: Some("not listed".into()),
                    bytes_up: 0,
                    bytes_down: 0,
                }]
            } else {
                Vec::new()
            },
        }
    }

    fn result() -> crate::pool::CommandResult {
        let mut r = crate::pool::CommandResult::new("c1", b"out\n", &[0xff, 0xfe]);
        r.exit = Some(R::Exited { code: 0 });
        r.truncated = true;
        r.duration_ms = 7;
        r.usage = Some(crate::cgroup::Usage {
            memory_current: 1,
            memory_peak: None,
            cpu_usage_usec: 2,
            pids_current: 3,
            cpu_throttled_usec: Some(4),
        });
        r
    }

    #[test]
    fn answers_are_byte_compatible() {
        for r in reasons() {
            same_bytes::<_, ExitReason>(r.clone());
            assert_eq!(ExitReason::from(r.clone()).to_string(), r.to_string());
            assert_eq!(ExitReason::from(r.clone()).exit_code(), r.exit_code());
            same_bytes::<_, CellInfo>(cell_info(Some(r), true));
        }
        same_bytes::<_, CellInfo>(cell_info(None, false));
        same_bytes::<_, CommandResult>(result());
        same_bytes::<_, CommandResult>(crate::pool::CommandResult::new("c2", b"", b""));
        same_bytes::<_, Reloaded>(crate::pool::Reloaded {
            providers: vec!["a".into()],
            left_out: Vec::new(),
            notes: vec!["n".into()],
        });
        let left =
            crate::policy::set::Rejected { name: "b".into(), file: "/p/b.toml".into(), problems: vec!["x".into()] };
        same_bytes::<_, Reloaded>(crate::pool::Reloaded {
            providers: vec!["a".into()],
            left_out: vec![left],
            notes: Vec::new(),
        });
        same_bytes::<_, Count>(crate::pool::Count { count: 4 });
        let health = |rejected, notes| crate::pool::DaemonHealth {
            status: "ok".into(),
            version: "0.1.0".into(),
            uptime_s: 1,
            cells_running: 2,
            cells_exited: 3,
            max_cells: 4,
            cgroup_layout: "unified".into(),
            cgroup_backend: "v2".into(),
            landlock_abi: 6,
            providers: vec!["p".into()],
            cells_warm: 7,
            warm_served: 8,
            launches_waiting: 9,
            policies_rejected: 1,
            rejected_policies: rejected,
            notes,
            host_memory_total: 5,
            host_memory_available: 6,
        };
        same_bytes::<_, DaemonHealth>(health(None, Vec::new()));
        same_bytes::<_, DaemonHealth>(health(
            Some(vec![crate::policy::set::Rejected {
                name: "bad".into(),
                file: "/etc/cellkeep/policies/bad.toml".into(),
                problems: vec!["bad.toml:1:1: x: y".into()],
            }]),
            vec!["a note".into()],
        ));
        for source in [None, Some(crate::pool::IdleSource::Policy), Some(crate::pool::IdleSource::Daemon)] {
            same_bytes::<_, CellHealth>(crate::pool::CellHealth {
                info: cell_info(None, true),
                usage: crate::cgroup::Usage::default(),
                cpu_percent: 12.5,
                open_fds: 4,
                limits: crate::pool::LimitsView {
                    memory_max: Some(1 << 20),
                    cpu: Some(0.5),
                    pids: None,
                    open_files: Some(64),
                    wall_time_ms: None,
                    idle_timeout_ms: Some(1000),
                    idle_timeout_source: source,
                    output_bytes: 1024,
                },
            });
        }
    }

    #[test]
    fn output_lines_keep_their_bytes() {
        use crate::session::OutputEvent as E;
        let text = OutputLine::from(E::Data { stream: crate::session::Stream::Stderr, offset: 3, data: "hé".into() });
        assert_eq!(
            serde_json::to_string(&text).unwrap(),
            r#"{"type":"data","stream":"stderr","offset":3,"data":"hé"}"#
        );
        let raw =
            OutputLine::from(E::Data { stream: crate::session::Stream::Stdout, offset: 0, data: vec![0xff].into() });
        assert_eq!(
            serde_json::to_string(&raw).unwrap(),
            r#"{"type":"data","stream":"stdout","offset":0,"data_b64":"/w=="}"#
        );
        assert_eq!(raw.bytes(), Some(vec![0xff]));
        assert_eq!(serde_json::to_string(&OutputLine::from(E::End)).unwrap(), r#"{"type":"end"}"#);
        let exit = OutputLine::Exit { result: Box::new(result().into()) };
        let back: OutputLine = serde_json::from_str(&serde_json::to_string(&exit).unwrap()).unwrap();
        assert_eq!(back, exit);
    }

    /// Every code serialises as its `as_str`, and each has the status the API always gave it.
    #[test]
    fn error_codes_and_statuses() {
        use ErrorCode as C;
        let table = [
            (C::ProcessLimit, 429),
            (C::Timeout, 504),
            (C::ResourceLimit, 409),
            (C::Exited, 409),
            (C::AlreadyEnded, 409),
            (C::NotFound, 404),
            (C::UnknownProvider, 404),
            (C::Forbidden, 403),
            (C::BadRequest, 400),
            (C::Policy, 422),
            (C::SetupFailed, 422),
            (C::ShuttingDown, 503),
            (C::Internal, 500),
        ];
        for (code, status) in table {
            assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{}\"", code.as_str()));
            assert_eq!(code.status().as_u16(), status, "{code}");
        }
        let body = ErrorBody { code: C::NotFound, message: "no cell x".into(), result: None };
        assert_eq!(serde_json::to_string(&body).unwrap(), r#"{"code":"not_found","message":"no cell x"}"#);
    }

    /// Requests decode as the pool's request types did: same fields, defaults and refusals.
    #[test]
    fn requests_decode_as_before() {
        fn both<W: serde::de::DeserializeOwned + Into<I>, I: serde::de::DeserializeOwned + Serialize>(json: &str) {
            let old = serde_json::from_str::<I>(json).map(|v| serde_json::to_string(&v).unwrap());
            let new = serde_json::from_str::<W>(json).map(|v| serde_json::to_string(&v.into()).unwrap());
            match (old, new) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{json}"),
                (Err(_), Err(_)) => {}
                (a, b) => panic!("{json}: {a:?} vs {b:?}"),
            }
        }
        use crate::pool as p;
        for j in [
            r#"{"provider":"p","cwd":"/w"}"#,
            r#"{"provider":"p","cwd":"/w","session":true,"env":{"A":"b"},"args":["x"],"wait_for_slot_ms":5}"#,
            r#"{"provider":"p","cwd":"/w","nope":1}"#,
            r#"{"cwd":"/w"}"#,
        ] {
            both::<SpawnRequest, p::SpawnRequest>(j);
        }
        for j in [r#"{"cwd":"/w"}"#, r#"{"cwd":"/w","extra":true}"#] {
            both::<SessionRequest, p::SessionRequest>(j);
        }
        for j in [r#"{"command":"ls"}"#, r#"{"command":"ls","timeout_ms":1}"#, r#"{}"#] {
            both::<SendRequest, p::SendRequest>(j);
        }
        for j in [r#"{"command":"ls","cwd":"/w","stream":true,"stdin":true}"#, r#"{"command":"ls"}"#] {
            both::<OneshotRequest, p::OneshotRequest>(j);
        }
    }
}
