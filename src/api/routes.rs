//! The `/v1` routes: decode (a bad request touches no state), call the pool with the peer's
//! credentials, encode. Every handler is a few lines; the pool authorises.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::pool::{Caller, CellHealth, CellInfo, CommandResult, Count, DaemonHealth, ListFilter, Pool, Reloaded};
use crate::pool::{OneshotRequest, SendRequest, SessionRequest, SpawnRequest};
use crate::session::{OutputEvent, Subscription};

use super::error::HttpError;
use super::wire::OutputLine;

/// The OpenAPI document served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    /// Cancelled to stop the daemon (`POST /v1/shutdown`, SIGTERM).
    pub shutdown: CancellationToken,
}

type ApiResult<T> = Result<T, HttpError>;

pub fn router(state: AppState) -> Router {
    let body_limit = state.pool.config().max_body_bytes;
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/cells", post(spawn).get(list))
        .route("/v1/cells/{id}", get(get_cell).delete(terminate))
        .route("/v1/cells/{id}/commands", post(send))
        .route("/v1/cells/{id}/health", get(cell_health))
        .route("/v1/cells/{id}/output", get(output))
        .route("/v1/cells/{id}/stdin", post(stdin))
        .route("/v1/providers/{name}/commands", post(oneshot))
        .route("/v1/providers/{name}/session", post(session))
        .route("/v1/providers/{name}/cells", axum::routing::delete(cleanup))
        .route("/v1/shutdown", post(shutdown))
        .route("/v1/reload", post(reload))
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(refuse_cells))
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
}

/// A JSON request body: buffered within the body limit, then decoded strictly (unknown fields
/// are errors). The content type is not required: orchestrators differ in what they send.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, HttpError> {
        let bytes = Bytes::from_request(req, state).await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| HttpError::bad_request(format!("invalid JSON body: {e}")))
    }
}

fn path(p: Result<Path<String>, PathRejection>) -> ApiResult<String> {
    Ok(p?.0)
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    Ok(q?.0)
}

async fn health(State(s): State<AppState>, Extension(caller): Extension<Caller>) -> Json<DaemonHealth> {
    Json(s.pool.health(&caller).await)
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn spawn(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<SpawnRequest>,
) -> ApiResult<(StatusCode, Json<CellInfo>)> {
    Ok((StatusCode::CREATED, Json(s.pool.spawn(&caller, req).await?)))
}

async fn list(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<ListFilter>, QueryRejection>,
) -> ApiResult<Json<Vec<CellInfo>>> {
    Ok(Json(s.pool.list(&caller, &query(q)?)))
}

async fn get_cell(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<CellInfo>> {
    Ok(Json(s.pool.get(&caller, &path(id)?)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TerminateQuery {
    #[serde(default)]
    force: bool,
}

async fn terminate(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<TerminateQuery>, QueryRejection>,
) -> ApiResult<Json<CellInfo>> {
    let force = query(q)?.force;
    Ok(Json(s.pool.terminate(&caller, &path(id)?, force).await?))
}

async fn send(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<SendRequest>,
) -> ApiResult<Json<CommandResult>> {
    Ok(Json(s.pool.send(&caller, &path(id)?, req).await?))
}

async fn cell_health(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<CellHealth>> {
    Ok(Json(s.pool.cell_health(&caller, &path(id)?).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputQuery {
    /// Offset to start from (default: the oldest byte the spool holds).
    from: Option<u64>,
    /// Keep the stream open for new output until the cell ends.
    #[serde(default)]
    follow: bool,
    /// `ndjson` (default) or `raw`.
    #[serde(default)]
    format: OutputFormat,
    /// `format=raw` only: just this stream's bytes (default: both, in order).
    stream: Option<crate::session::Stream>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum OutputFormat {
    /// [`OutputLine`]s, one per line.
    #[default]
    Ndjson,
    /// Only the bytes (stdout and stderr in the order they were read). The offset of the first
    /// byte is the `x-cellkeep-offset` header; a gap (`lagged`) ends the body with an error, so
    /// a cut stream is never taken for a complete one.
    Raw,
}

/// A raw output stream ended at a gap: the reader fell behind the retained window.
#[derive(Debug, thiserror::Error)]
#[error("{dropped} bytes of output were dropped before this reader got them (at offset {at})")]
struct Lagged {
    dropped: u64,
    at: u64,
}

/// The cell's output as NDJSON [`OutputLine`]s: what the spool holds from `from`, then (with
/// `follow`) live output until the cell ends. A reader that hangs up changes nothing for the
/// cell; one that falls behind gets a `lagged` line instead of holding the cell back.
async fn output(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<OutputQuery>, QueryRejection>,
    uri: Uri,
) -> ApiResult<Response> {
    let q = query(q)?;
    let sub = s.pool.output(&caller, &path(id)?, q.from)?;
    if q.format == OutputFormat::Raw {
        return Ok(raw_output(sub, q.follow, q.stream, hang_up(&caller, &uri)));
    }
    let guard = hang_up(&caller, &uri);
    let lines = futures_util::stream::unfold((sub, q.follow, guard), |(mut sub, follow, mut guard)| async move {
        if guard.what.is_empty() {
            return None;
        }
        let Some(ev) = next_event(&mut sub, follow).await else {
            guard.disarm();
            return None;
        };
        if matches!(ev, OutputEvent::End) {
            guard.disarm();
        }
        let mut line = serde_json::to_vec(&OutputLine::from(ev)).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, Infallible>(Bytes::from(line)), (sub, follow, guard)))
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response())
}

/// Disarmed when an output stream ends (the cell's end, or the last held byte without
/// `follow`); dropped armed when the reader hangs up first.
fn hang_up(caller: &Caller, uri: &Uri) -> HangUp {
    HangUp {
        method: Method::GET,
        path: uri.path().to_owned(),
        uid: Some(caller.uid),
        started: std::time::Instant::now(),
        what: "mid-stream; the cell goes on",
    }
}

/// `format=raw`: the data bytes only; a gap ends the body with an error.
fn raw_output(sub: Subscription, follow: bool, only: Option<crate::session::Stream>, guard: HangUp) -> Response {
    let offset = sub.position();
    let chunks = futures_util::stream::unfold((sub, follow, guard), move |(mut sub, follow, mut guard)| async move {
        loop {
            if guard.what.is_empty() {
                return None;
            }
            match next_event(&mut sub, follow).await {
                Some(OutputEvent::Data { stream, data, .. }) => {
                    if only.is_none_or(|s| s == stream) {
                        return Some((Ok(data), (sub, follow, guard)));
                    }
                }
                Some(OutputEvent::Lagged { dropped }) => {
                    guard.disarm();
                    let at = sub.position() - dropped;
                    tracing::info!(dropped, at, "raw output reader fell behind the spool; ending its stream");
                    return Some((Err(Lagged { dropped, at }), (sub, follow, guard)));
                }
                Some(OutputEvent::End) | None => {
                    guard.disarm();
                    return None;
                }
            }
        }
    });
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::HeaderName::from_static("x-cellkeep-offset"), offset.to_string()),
        ],
        Body::from_stream(chunks),
    )
        .into_response()
}

async fn next_event(sub: &mut Subscription, follow: bool) -> Option<OutputEvent> {
    if follow {
        sub.next().await
    } else {
        sub.try_next()
    }
}

/// A one-shot command: one JSON result, or with `"stream": true` an NDJSON stream — a
/// `started` line, every byte of output as `data` lines (the cell waits for this reader; no
/// cap), then an `exit` line with the result. A reader that hangs up changes nothing for the
/// cell (it runs to its end or its timeout; `DELETE /v1/cells/{id}` ends it).
async fn oneshot(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<OneshotRequest>,
) -> ApiResult<Response> {
    let name = path(name)?;
    if !req.stream {
        return Ok(Json(s.pool.oneshot(&caller, &name, req).await?).into_response());
    }
    let run = s.pool.oneshot_stream(&caller, &name, req).await?;
    let first = OutputLine::Started { cell: run.cell.clone() };
    let lines = futures_util::stream::unfold(Some((run, Some(first))), |state| async move {
        let (mut run, pending) = state?;
        let (line, next) = match pending {
            Some(line) => (line, Some((run, None))),
            None => match run.next().await {
                Some(ev) => (OutputLine::from(ev), Some((run, None))),
                None => (OutputLine::Exit { result: Box::new(run.finish().await) }, None),
            },
        };
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        Some((Ok::<_, Infallible>(Bytes::from(bytes)), next))
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StdinQuery {
    /// Close the cell's stdin after writing the body.
    #[serde(default)]
    eof: bool,
}

/// Raw bytes (any content type) for the stdin of a one-shot started with `"stdin": true`.
async fn stdin(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<StdinQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Count>> {
    let (id, eof) = (path(id)?, query(q)?.eof);
    Ok(Json(s.pool.write_stdin(&caller, &id, &body?, eof).await?))
}

async fn session(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<SessionRequest>,
) -> ApiResult<Json<CellInfo>> {
    Ok(Json(s.pool.session(&caller, &path(name)?, req).await?))
}

async fn cleanup(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Count>> {
    Ok(Json(s.pool.cleanup_provider(&caller, &path(name)?).await?))
}

/// Root or an admin group only: end every cell, then stop the daemon.
async fn shutdown(State(s): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<Json<Count>> {
    if !s.pool.is_admin(&caller) {
        return Err(crate::pool::PoolError::Forbidden { uid: caller.uid, action: "shut the daemon down".into() }.into());
    }
    tracing::warn!(uid = caller.uid, pid = caller.pid, "shutdown requested over the API");
    let count = s.pool.shutdown().await;
    s.shutdown.cancel();
    Ok(Json(count))
}

/// Root or an admin group only: reload the policy directory and answer with the verdict —
/// 200 and the providers now served, or 422 `policy` naming every file that cannot load (the
/// previous set keeps serving). `cellkeep reload` (the unit's `ExecReload=`) calls this, so
/// `systemctl reload` fails when the reload is rejected.
async fn reload(State(s): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<Json<Reloaded>> {
    if !s.pool.is_admin(&caller) {
        return Err(crate::pool::PoolError::Forbidden { uid: caller.uid, action: "reload the policies".into() }.into());
    }
    let trigger = format!("reload requested over the API by uid {}", caller.uid);
    Ok(Json(super::reload_policies(&s.pool, &trigger).await?))
}

async fn no_route(method: Method, uri: Uri) -> HttpError {
    HttpError::not_found(format!("no route {method} {}", uri.path()))
}

async fn no_method(method: Method, uri: Uri) -> HttpError {
    HttpError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "bad_request",
        message: format!("{} does not accept {method}", uri.path()),
        result: None,
        logged: false,
    }
}

/// Requests from a process inside a cell are refused, all of them (see `listen::serve`).
async fn refuse_cells(req: Request, next: Next) -> Response {
    match req.extensions().get::<Caller>() {
        Some(c) if c.in_cell => HttpError {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message: format!("pid {} runs inside a cellkeep cell: cells may not use the daemon", c.pid.unwrap_or(0)),
            result: None,
            logged: false,
        }
        .into_response(),
        _ => next.run(req).await,
    }
}

async fn log_request(req: Request, next: Next) -> Response {
    let mut guard = HangUp {
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        uid: req.extensions().get::<Caller>().map(|c| c.uid),
        started: std::time::Instant::now(),
        what: "before the reply; request abandoned",
    };
    let resp = next.run(req).await;
    tracing::debug!(method = %guard.method, path = %guard.path, uid = guard.uid, status = resp.status().as_u16(),
        ms = guard.started.elapsed().as_millis() as u64, "request");
    guard.disarm();
    resp
}

/// Logs a client that hangs up while its request is still being answered: hyper drops the
/// handler's future (or the streaming body) when the connection closes, so the guard's `Drop`
/// is the one place that sees it. What the request started is not undone: a one-shot cell
/// runs to its end and is removed, a session command's reply is discarded by the next one.
struct HangUp {
    method: Method,
    path: String,
    uid: Option<u32>,
    started: std::time::Instant,
    /// How the hang-up is logged (a request, or an output stream); empty once answered.
    what: &'static str,
}

impl HangUp {
    fn disarm(&mut self) {
        self.what = "";
    }
}

impl Drop for HangUp {
    fn drop(&mut self) {
        if !self.what.is_empty() {
            tracing::info!(method = %self.method, path = %self.path, uid = self.uid,
                ms = self.started.elapsed().as_millis() as u64, "client hung up {}", self.what);
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every route the router serves is documented, and the document is valid JSON.
    #[test]
    fn openapi_documents_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let src = include_str!("routes.rs");
        let routes: Vec<&str> = src
            .lines()
            .filter_map(|l| l.trim().strip_prefix(".route(\""))
            .filter_map(|l| l.split('"').next())
            .collect();
        assert!(routes.len() >= 11, "{routes:?}");
        for r in routes {
            assert!(doc["paths"][r].is_object(), "{r} is not in openapi.json");
        }
    }
}
