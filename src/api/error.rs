//! Errors as HTTP answers: a status and the JSON body [`ErrorBody`] with a stable
//! [`ErrorCode`]. Every pool error maps to exactly one code here ([`code_of`], an exhaustive
//! match); the code decides the status ([`ErrorCode::status`]).

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::pool::PoolError;
use crate::sandbox::SandboxError;
use crate::session::SessionError;

use super::wire::{CommandResult, ErrorBody, ErrorCode};

/// One failed request.
#[derive(Debug)]
pub struct HttpError {
    /// The code's own status, except for the two routing answers under `bad_request` (405 a
    /// method the path does not take, 413 a body over the limit).
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// The command's result that comes with the error, if any (see [`ErrorBody::result`]).
    pub result: Option<Box<CommandResult>>,
    /// Already logged where it happened (a rejected reload): not logged again as an answer.
    pub logged: bool,
}

impl HttpError {
    /// An answer with `code` and its status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> HttpError {
        HttpError { status: code.status(), code, message: message.into(), result: None, logged: false }
    }

    pub fn bad_request(message: impl Into<String>) -> HttpError {
        HttpError::new(ErrorCode::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> HttpError {
        HttpError::new(ErrorCode::NotFound, message)
    }
}

/// The wire code of a pool error.
pub fn code_of(e: &PoolError) -> ErrorCode {
    match e {
        PoolError::ProcessLimit { .. } => ErrorCode::ProcessLimit,
        PoolError::Timeout { .. } => ErrorCode::Timeout,
        PoolError::ResourceLimit { .. } => ErrorCode::ResourceLimit,
        PoolError::Ended { .. } => ErrorCode::Exited,
        PoolError::NotFound { .. } => ErrorCode::NotFound,
        PoolError::AlreadyEnded { .. } => ErrorCode::AlreadyEnded,
        PoolError::WithResult { error, .. } => code_of(error),
        PoolError::Forbidden { .. } => ErrorCode::Forbidden,
        PoolError::UnknownProvider { .. } => ErrorCode::UnknownProvider,
        PoolError::BadRequest(_) | PoolError::NotSession { .. } => ErrorCode::BadRequest,
        PoolError::Sandbox(e) => match e {
            SandboxError::Cwd { .. }
            | SandboxError::Binary { .. }
            | SandboxError::NoCommand { .. }
            | SandboxError::OptionArgument { .. } => ErrorCode::BadRequest,
            SandboxError::Unsupported { .. } | SandboxError::HostRoot { .. } | SandboxError::Abstract { .. } => {
                ErrorCode::Policy
            }
            // The request could not be carried out in the cell (e.g. the payload's identity
            // cannot enter the cwd, or exec of the binary failed there).
            SandboxError::Setup { .. } => ErrorCode::SetupFailed,
            SandboxError::Cgroup { .. }
            | SandboxError::Spawn { .. }
            | SandboxError::HelperDied { .. }
            | SandboxError::Pty { .. } => ErrorCode::Internal,
        },
        PoolError::Session(e) => match e {
            SessionError::BadPattern { .. } => ErrorCode::Policy,
            SessionError::ReplyTooLarge { .. } => ErrorCode::ResourceLimit,
        },
        PoolError::ReloadRejected { .. } => ErrorCode::Policy,
        PoolError::ShuttingDown => ErrorCode::ShuttingDown,
        PoolError::Internal(_) => ErrorCode::Internal,
    }
}

impl From<PoolError> for HttpError {
    fn from(e: PoolError) -> Self {
        let code = code_of(&e);
        let message = e.to_string();
        let logged = matches!(e, PoolError::ReloadRejected { .. });
        let result = match e {
            PoolError::WithResult { result, .. } => Some(Box::new(CommandResult::from(*result))),
            _ => None,
        };
        HttpError { status: code.status(), code, message, result, logged }
    }
}

impl From<BytesRejection> for HttpError {
    fn from(e: BytesRejection) -> Self {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            HttpError { status, ..HttpError::bad_request(format!("request body too large: {}", e.body_text())) }
        } else {
            HttpError::bad_request(e.body_text())
        }
    }
}

impl From<QueryRejection> for HttpError {
    fn from(e: QueryRejection) -> Self {
        HttpError::bad_request(format!("bad query string: {}", e.body_text()))
    }
}

impl From<PathRejection> for HttpError {
    fn from(e: PathRejection) -> Self {
        HttpError::bad_request(format!("bad path: {}", e.body_text()))
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        // Logged by who is at fault: the daemon's own failures (internal) at ERROR; a limit,
        // a setup failure, a refusal or a shutdown at WARN (worth an operator's look); what
        // the client asked for or got wrong (its timeout, a bad request, an unknown cell) at
        // INFO.
        let status = self.status.as_u16();
        let code = self.code.as_str();
        if !self.logged {
            match self.code {
                ErrorCode::Internal => tracing::error!(code, status, "{}", self.message),
                ErrorCode::ResourceLimit
                | ErrorCode::ProcessLimit
                | ErrorCode::SetupFailed
                | ErrorCode::Forbidden
                | ErrorCode::ShuttingDown => tracing::warn!(code, status, "{}", self.message),
                ErrorCode::Timeout
                | ErrorCode::Exited
                | ErrorCode::AlreadyEnded
                | ErrorCode::NotFound
                | ErrorCode::UnknownProvider
                | ErrorCode::BadRequest
                | ErrorCode::Policy => tracing::info!(code, status, "{}", self.message),
            }
        }
        let body = ErrorBody { code: self.code, message: self.message, result: self.result };
        (self.status, Json(body)).into_response()
    }
}
