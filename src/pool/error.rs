//! Pool errors, each mapped to a stable wire code (`code()`) and naming the cell, provider,
//! path or limit involved.

use crate::sandbox::{ExitReason, SandboxError};

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("process limit reached: {running} of {limit} cells running")]
    ProcessLimit { limit: usize, running: usize },
    #[error("cell {cell}: command timed out after {timeout_ms} ms; the command's process was ended")]
    Timeout { cell: String, timeout_ms: u64 },
    #[error("cell {cell}: {reason} while the command ran")]
    ResourceLimit { cell: String, reason: ExitReason },
    #[error("cell {cell} ended ({reason}) before the reply was complete")]
    Ended { cell: String, reason: ExitReason },
    #[error("no cell {id}")]
    NotFound { id: String },
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
    #[error("internal error: {0}")]
    Internal(String),
}

impl PoolError {
    /// The stable wire code.
    pub fn code(&self) -> &'static str {
        match self {
            PoolError::ProcessLimit { .. } => "process_limit",
            PoolError::Timeout { .. } => "timeout",
            PoolError::ResourceLimit { .. } => "resource_limit",
            PoolError::Ended { .. } => "exited",
            PoolError::NotFound { .. } => "not_found",
            PoolError::Forbidden { .. } => "forbidden",
            PoolError::UnknownProvider { .. } => "unknown_provider",
            PoolError::BadRequest(_) | PoolError::NotSession { .. } => "bad_request",
            PoolError::Sandbox(e) => match e {
                SandboxError::Cwd { .. } | SandboxError::Binary { .. } | SandboxError::NoCommand { .. } => "bad_request",
                SandboxError::Unsupported { .. } | SandboxError::HostRoot { .. } | SandboxError::Abstract { .. } => {
                    "policy"
                }
                // The request could not be carried out in the cell (e.g. the payload's
                // identity cannot enter the cwd, or exec of the binary failed there).
                SandboxError::Setup { .. } => "setup_failed",
                _ => "internal",
            },
            PoolError::Session(crate::session::SessionError::BadPattern { .. }) => "policy",
            PoolError::Session(crate::session::SessionError::ReplyTooLarge { .. }) => "resource_limit",
            PoolError::ReloadRejected { .. } => "policy",
            PoolError::ShuttingDown => "shutting_down",
            PoolError::Internal(_) => "internal",
        }
    }
}
