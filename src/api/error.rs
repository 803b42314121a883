//! Errors as HTTP answers: a status and the JSON body `{code, message}` with a stable code.

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::pool::PoolError;

use super::wire::ErrorBody;

/// One failed request.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The command's result that comes with the error, if any (see [`ErrorBody::result`]).
    pub result: Option<serde_json::Value>,
    /// Already logged where it happened (a rejected reload): not logged again as an answer.
    pub logged: bool,
}

impl HttpError {
    pub fn bad_request(message: impl Into<String>) -> HttpError {
        HttpError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
            result: None,
            logged: false,
        }
    }

    pub fn not_found(message: impl Into<String>) -> HttpError {
        HttpError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
            result: None,
            logged: false,
        }
    }
}

/// The HTTP status of each wire code.
pub fn status_of(code: &str) -> StatusCode {
    match code {
        "process_limit" => StatusCode::TOO_MANY_REQUESTS,
        "timeout" => StatusCode::GATEWAY_TIMEOUT,
        "resource_limit" | "exited" | "already_ended" => StatusCode::CONFLICT,
        "not_found" | "unknown_provider" => StatusCode::NOT_FOUND,
        "forbidden" => StatusCode::FORBIDDEN,
        "bad_request" => StatusCode::BAD_REQUEST,
        "policy" | "setup_failed" => StatusCode::UNPROCESSABLE_ENTITY,
        "shutting_down" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<PoolError> for HttpError {
    fn from(e: PoolError) -> Self {
        let code = e.code();
        let message = e.to_string();
        let logged = matches!(e, PoolError::ReloadRejected { .. });
        let result = match e {
            PoolError::WithResult { result, .. } => serde_json::to_value(result).ok(),
            _ => None,
        };
        HttpError { status: status_of(code), code, message, result, logged }
    }
}

impl From<BytesRejection> for HttpError {
    fn from(e: BytesRejection) -> Self {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            HttpError {
                status,
                code: "bad_request",
                message: format!("request body too large: {}", e.body_text()),
                result: None,
                logged: false,
            }
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
        match self.code {
            _ if self.logged => {}
            "internal" => tracing::error!(code = self.code, status, "{}", self.message),
            "resource_limit" | "process_limit" | "setup_failed" | "forbidden" | "shutting_down" => {
                tracing::warn!(code = self.code, status, "{}", self.message)
            }
            _ => tracing::info!(code = self.code, status, "{}", self.message),
        }
        let body = ErrorBody { code: self.code.to_owned(), message: self.message, result: self.result };
        (self.status, Json(body)).into_response()
    }
}
