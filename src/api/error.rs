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

/// One failed request. Built only here, so its status is its code's ([`ErrorCode::status`]),
/// except for the two HTTP-level answers under `bad_request`: 405 (a method the path does not
/// take, [`HttpError::method_not_allowed`]) and 413 (a body over the limit).
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    /// The command's result that comes with the error, if any (see [`ErrorBody::result`]).
    result: Option<Box<CommandResult>>,
    /// Already logged where it happened (a rejected reload): not logged again as an answer.
    logged: bool,
}

impl HttpError {
    /// An answer with `code` and its status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> HttpError {
        HttpError { status: code.status(), code, message: message.into(), result: None, logged: false }
    }

    /// 405 `bad_request`: the path exists but does not take this method.
    pub fn method_not_allowed(message: impl Into<String>) -> HttpError {
        HttpError { status: StatusCode::METHOD_NOT_ALLOWED, ..HttpError::bad_request(message) }
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
        PoolError::ProcessLimit { .. } | PoolError::UidLimit { .. } => ErrorCode::ProcessLimit,
        PoolError::Timeout { .. } | PoolError::QueueTimeout { .. } | PoolError::WallTime { .. } => ErrorCode::Timeout,
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
            | SandboxError::OptionArgument { .. }
            | SandboxError::StdinOnly { .. }
            | SandboxError::NulByte { .. } => ErrorCode::BadRequest,
            SandboxError::Unsupported { .. } | SandboxError::HostRoot { .. } | SandboxError::Abstract { .. } => {
                ErrorCode::Policy
            }
            // The request could not be carried out in the cell (e.g. the payload's identity
            // cannot enter the cwd, or exec of the binary failed there).
            SandboxError::Setup { .. } => ErrorCode::SetupFailed,
            // Every id of the cell id range is an account's or a live cell's: a capacity limit,
            // like a full pool (the range is a daemon setting, validated at start).
            SandboxError::Ids { source: crate::sandbox::ids::IdError::Exhausted { .. }, .. } => ErrorCode::ProcessLimit,
            SandboxError::Ids { .. }
            | SandboxError::Cgroup { .. }
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
        // Nobody reads it: the client is gone.
        PoolError::ClientGone => ErrorCode::BadRequest,
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
            // The message may quote the caller (a cwd, a command): one log line stays one line.
            let message = crate::pool::error::escape_controls(&self.message);
            match self.code {
                ErrorCode::Internal => tracing::error!(code, status, "{message}"),
                ErrorCode::ResourceLimit
                | ErrorCode::ProcessLimit
                | ErrorCode::SetupFailed
                | ErrorCode::Forbidden
                | ErrorCode::ShuttingDown
                | ErrorCode::ConnectionLimit => tracing::warn!(code, status, "{message}"),
                ErrorCode::Timeout
                | ErrorCode::Exited
                | ErrorCode::AlreadyEnded
                | ErrorCode::NotFound
                | ErrorCode::UnknownProvider
                | ErrorCode::BadRequest
                | ErrorCode::Policy => tracing::info!(code, status, "{message}"),
            }
        }
        let body = ErrorBody { code: self.code, message: self.message, result: self.result };
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(e: HttpError) -> (u16, serde_json::Value) {
        let resp = e.into_response();
        let status = resp.status().as_u16();
        let body =
            futures_util::FutureExt::now_or_never(axum::body::to_bytes(resp.into_body(), 1 << 20)).unwrap().unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    /// Pool errors answer with their code's status and body; a one-shot's timeout carries its
    /// result under the inner error's code.
    #[test]
    fn pool_errors_answer_with_their_code() {
        let cases: Vec<(PoolError, u16, &str)> = vec![
            (PoolError::ProcessLimit { limit: 2, running: 2 }, 429, "process_limit"),
            (PoolError::NotFound { id: "x".into() }, 404, "not_found"),
            (PoolError::NotSession { cell: "c".into(), provider: "p".into() }, 400, "bad_request"),
            (PoolError::ReloadRejected { dir: "/p".into(), rejected: Vec::new() }, 422, "policy"),
            (PoolError::Session(SessionError::ReplyTooLarge { limit: 1 }), 409, "resource_limit"),
            (PoolError::ShuttingDown, 503, "shutting_down"),
            (PoolError::Internal("boom".into()), 500, "internal"),
        ];
        for (e, status, code) in cases {
            let (s, body) = answer(e.into());
            assert_eq!((s, body["code"].as_str().unwrap()), (status, code), "{body}");
            assert!(body.get("result").is_none());
        }
        let timeout = PoolError::WithResult {
            error: Box::new(PoolError::Timeout { cell: "c".into(), timeout_ms: 5 }),
            result: Box::new(crate::pool::CommandResult::new("c", b"part", b"")),
        };
        let (s, body) = answer(timeout.into());
        assert_eq!((s, body["code"].as_str().unwrap()), (504, "timeout"));
        assert_eq!(body["result"]["stdout"], "part");
        let (s, body) = answer(HttpError::method_not_allowed("no"));
        assert_eq!((s, body["code"].as_str().unwrap()), (405, "bad_request"));
    }
}
