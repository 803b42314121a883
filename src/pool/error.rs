//! Pool errors, each naming the cell, provider, path or limit involved (the API maps each to
//! its wire code: `api::error::code_of`).

use crate::sandbox::{ExitReason, SandboxError};

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("process limit reached: {running} of {limit} cells running")]
    ProcessLimit { limit: usize, running: usize },
    #[error("process limit: uid {uid} runs {running} of its {limit} cells (max_cells_per_uid)")]
    UidLimit { uid: u32, limit: usize, running: usize },
    #[error("cell {cell}: command timed out after {timeout_ms} ms; the command's process was ended")]
    Timeout { cell: String, timeout_ms: u64 },
    /// The cell's wall time (`limits.wall_time`) ran out before the command's own timeout:
    /// the cell has ended (a session must be replaced, not given a longer timeout).
    #[error("cell {cell}: the cell's wall time ({wall_ms} ms, limits.wall_time of provider {provider}) ran out while the command ran; the cell has ended")]
    WallTime { cell: String, provider: String, wall_ms: u64 },
    /// The command's timeout ran out while earlier commands of the session still ran: it was
    /// never written, and the session carries on.
    #[error("cell {cell}: command timed out after {timeout_ms} ms waiting behind the session's earlier commands; it was not sent")]
    QueueTimeout { cell: String, timeout_ms: u64 },
    #[error("cell {cell}: {reason} while the command ran")]
    ResourceLimit { cell: String, reason: ExitReason },
    #[error("cell {cell} ended ({reason}) before the reply was complete")]
    Ended { cell: String, reason: ExitReason },
    #[error("no cell {id}")]
    NotFound { id: String },
    /// The cell is still listed (with its exit reason) but has already ended.
    #[error("cell {cell} has already ended ({reason})")]
    AlreadyEnded { cell: String, reason: ExitReason },
    /// An error that still has the command's output and usage to report (a one-shot that
    /// timed out or hit a resource limit): the error's code, and the result alongside.
    #[error("{error}")]
    WithResult { error: Box<PoolError>, result: Box<super::CommandResult> },
    #[error("uid {uid} may not {action}")]
    Forbidden { uid: u32, action: String },
    #[error("unknown provider {name:?}")]
    UnknownProvider { name: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("cell {cell} is not a session (provider {provider} is one-shot)")]
    NotSession { cell: String, provider: String },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Session(#[from] crate::session::SessionError),
    #[error("reload rejected: {} of the policies under {dir} cannot load; the previous set keeps serving:\n{}", .rejected.len(), crate::policy::set::summary(.rejected).join("\n"))]
    ReloadRejected { dir: String, rejected: Vec<crate::policy::set::Rejected> },
    #[error("the daemon is shutting down")]
    ShuttingDown,
    /// The client left while its launch waited for a slot (`wait_for_slot_ms`); not launched.
    #[error("the client left while waiting for a slot; nothing was launched")]
    ClientGone,
    #[error("internal error: {0}")]
    Internal(String),
}

/// `text` with its control characters (newlines, escape sequences, NUL) escaped as `\n`,
/// `\u{1b}`, …; everything else, non-ASCII included, as it is. For log lines that quote a
/// caller (a cwd, a command, an error that names them): one log line stays one line.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    text.chars()
        .map(|c| if c.is_control() { c.escape_default().collect() } else { c.to_string() })
        .collect::<String>()
        .into()
}
