//! The `/v1` routes: decode (a bad request touches no state), call the pool with the peer's
//! credentials, encode. Every handler is a few lines; the pool authorises.
//!
//! Each handler carries its OpenAPI operation (`#[utoipa::path]`) and is mounted only through
//! `utoipa_axum::routes!`, which takes the method and path from that annotation: the router
//! ([`router`]) and the document ([`openapi`], served at `/v1/openapi.json`) are built by the
//! same function ([`api_routes`]), so a route without a document or a document without a
//! route cannot be written.

use std::convert::Infallible;
use std::sync::OnceLock;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::pool::{Caller, Pool};
use crate::session::{OutputEvent, Subscription};

use super::error::HttpError;
use super::wire::{
    CellHealth, CellInfo, CommandResult, Count, DaemonHealth, ErrorBody, ErrorCode, ListFilter, OneshotRequest,
    OutputFormat, OutputLine, OutputQuery, Reloaded, SendRequest, SessionRequest, ShutdownQuery, SpawnRequest,
    StdinQuery, Stream, TerminateQuery,
};

#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    /// Cancelled to stop the daemon (`POST /v1/shutdown`, SIGTERM).
    pub shutdown: CancellationToken,
}

type ApiResult<T> = Result<T, HttpError>;

/// The document's frame: what every operation shares.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "cellkeep",
        version = "1",
        description = "The cellkeep daemon API: HTTP/1.1 + JSON over a Unix socket (default /run/cellkeep/cellkeep.sock). The caller's uid/gid come from SO_PEERCRED: a caller uses the providers whose policy lists its uid or group, and sees and manages its own cells (root and admin groups: all). Every error is an ErrorBody whose code decides the status.",
        license(name = "Apache-2.0")
    ),
    components(schemas(ErrorCode, OutputFormat, OutputLine, Stream))
)]
struct ApiDoc;

/// Raw bytes (a request body of `POST /v1/cells/{id}/stdin`, a `format=raw` output stream).
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // a schema only: the handlers take and give `Bytes`
struct RawBytes(Vec<u8>);

/// Every documented route, with its document.
pub fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(openapi_json))
        .routes(routes!(spawn, list))
        .routes(routes!(get_cell, terminate))
        .routes(routes!(send))
        .routes(routes!(cell_health))
        .routes(routes!(output))
        .routes(routes!(stdin))
        .routes(routes!(oneshot))
        .routes(routes!(session))
        .routes(routes!(cleanup))
        .routes(routes!(shutdown))
        .routes(routes!(reload))
}

/// The OpenAPI document of [`api_routes`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_routes().split_for_parts().1
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.pool.config().max_body_bytes;
    let (routes, _) = api_routes().split_for_parts();
    routes
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

/// Daemon health.
#[utoipa::path(get, path = "/v1/health", tag = "daemon",
    responses((status = 200, description = "Daemon health", body = DaemonHealth),
              (status = "default", description = "An error", body = ErrorBody)))]
async fn health(State(s): State<AppState>, Extension(caller): Extension<Caller>) -> Json<DaemonHealth> {
    Json(s.pool.health(&caller).await.into())
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "daemon",
    responses((status = 200, description = "The OpenAPI document", body = Object),
              (status = "default", description = "An error", body = ErrorBody)))]
async fn openapi_json() -> impl IntoResponse {
    static DOC: OnceLock<String> = OnceLock::new();
    let doc = DOC.get_or_init(|| openapi().to_json().unwrap_or_default());
    ([(header::CONTENT_TYPE, "application/json")], doc.as_str())
}

/// Start a cell for a provider.
#[utoipa::path(post, path = "/v1/cells", tag = "cells", request_body = SpawnRequest,
    responses((status = 201, description = "The new cell", body = CellInfo),
              (status = "default", description = "An error", body = ErrorBody)))]
async fn spawn(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<SpawnRequest>,
) -> ApiResult<(StatusCode, Json<CellInfo>)> {
    Ok((StatusCode::CREATED, Json(s.pool.spawn(&caller, req.into()).await?.into())))
}

/// List cells.
#[utoipa::path(get, path = "/v1/cells", tag = "cells", params(ListFilter),
    responses((status = 200, description = "The cells the caller may see", body = Vec<CellInfo>),
              (status = "default", description = "An error", body = ErrorBody)))]
async fn list(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<ListFilter>, QueryRejection>,
) -> ApiResult<Json<Vec<CellInfo>>> {
    let cells = s.pool.list(&caller, &query(q)?.into())?;
    Ok(Json(cells.into_iter().map(Into::into).collect()))
}

/// One cell.
#[utoipa::path(get, path = "/v1/cells/{id}", tag = "cells", params(("id" = String, Path, description = "Cell id")),
    responses((status = 200, description = "The cell", body = CellInfo),
              (status = "default", description = "An error", body = ErrorBody)))]
async fn get_cell(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<CellInfo>> {
    Ok(Json(s.pool.get(&caller, &path(id)?)?.into()))
}

/// Terminate: SIGTERM, grace, then kill the cgroup (force: at once). A cell that has already
/// ended: already_ended (409) while it is still listed, not_found once forgotten.
#[utoipa::path(delete, path = "/v1/cells/{id}", tag = "cells",
    params(("id" = String, Path, description = "Cell id"), TerminateQuery),
    responses((status = 200, description = "The cell as it ended", body = CellInfo),
              (status = "default", description = "An error", body = ErrorBody)))]
async fn terminate(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<TerminateQuery>, QueryRejection>,
) -> ApiResult<Json<CellInfo>> {
    let force = query(q)?.force;
    Ok(Json(s.pool.terminate(&caller, &path(id)?, force).await?.into()))
}

/// Send one command (one line) to a session cell; the reply is framed by the policy.
#[utoipa::path(post, path = "/v1/cells/{id}/commands", tag = "cells",
    params(("id" = String, Path, description = "Cell id")), request_body = SendRequest,
    responses((status = 200, description = "The framed reply", body = CommandResult),
              (status = "default", description = "An error", body = ErrorBody)))]
async fn send(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<SendRequest>,
) -> ApiResult<Json<CommandResult>> {
    Ok(Json(s.pool.send(&caller, &path(id)?, req.into()).await?.into()))
}

/// Cell health, read on demand from the cgroup and /proc.
#[utoipa::path(get, path = "/v1/cells/{id}/health", tag = "cells",
    params(("id" = String, Path, description = "Cell id")),
    responses((status = 200, description = "The cell's health", body = CellHealth),
              (status = "default", description = "An error", body = ErrorBody)))]
async fn cell_health(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<CellHealth>> {
    Ok(Json(s.pool.cell_health(&caller, &path(id)?).await?.into()))
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
#[utoipa::path(get, path = "/v1/cells/{id}/output", tag = "cells",
    params(("id" = String, Path, description = "Cell id"), OutputQuery),
    responses((status = 200, description = "NDJSON OutputLine events, or (format=raw) only the bytes, the first one's offset in x-cellkeep-offset",
                content((OutputLine = "application/x-ndjson"), (RawBytes = "application/octet-stream")),
                headers(("x-cellkeep-offset" = u64, description = "format=raw: the offset of the first byte"))),
              (status = "default", description = "An error", body = ErrorBody)))]
async fn output(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<OutputQuery>, QueryRejection>,
    uri: Uri,
) -> ApiResult<Response> {
    let q = query(q)?;
    let id = path(id)?;
    let sub = s.pool.output(&caller, &id, q.from)?;
    if q.format == OutputFormat::Raw {
        // Raw bytes cannot say that their start is gone (NDJSON does, in a `lagged` line).
        if let Some(first) = sub.gap() {
            return Err(crate::pool::PoolError::BadRequest(format!(
                "cell {id}: from = {} is before the oldest byte still kept ({first}; the cell keeps the last \
                 output_bytes of its output): ask for at least {first}, or leave `from` out",
                sub.position()
            ))
            .into());
        }
        let only = q.stream.map(crate::session::Stream::from);
        return Ok(raw_output(sub, q.follow, only, hang_up(&caller, &uri)));
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
#[utoipa::path(post, path = "/v1/providers/{name}/commands", tag = "providers",
    params(("name" = String, Path, description = "Provider (policy) name")), request_body = OneshotRequest,
    responses((status = 200, description = "The command's result, or with stream=true an NDJSON stream of OutputLine (started, data, exit)",
                content((CommandResult = "application/json"), (OutputLine = "application/x-ndjson"))),
              (status = "default", description = "An error (timeout and resource_limit carry the result)", body = ErrorBody)))]
async fn oneshot(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<OneshotRequest>,
) -> ApiResult<Response> {
    let name = path(name)?;
    if !req.stream {
        let result = CommandResult::from(s.pool.oneshot(&caller, &name, req.into()).await?);
        return Ok(Json(result).into_response());
    }
    let run = s.pool.oneshot_stream(&caller, &name, req.into()).await?;
    let first = OutputLine::Started { cell: run.cell.clone() };
    let lines = futures_util::stream::unfold(Some((run, Some(first))), |state| async move {
        let (mut run, pending) = state?;
        let (line, next) = match pending {
            Some(line) => (line, Some((run, None))),
            None => match run.next().await {
                Some(ev) => (OutputLine::from(ev), Some((run, None))),
                None => (OutputLine::Exit { result: Box::new(run.finish().await.into()) }, None),
            },
        };
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        Some((Ok::<_, Infallible>(Bytes::from(bytes)), next))
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response())
}

/// Write to the stdin of a one-shot cell started with stdin=true (the body's bytes as they
/// are, any content type); eof=true closes it after.
#[utoipa::path(post, path = "/v1/cells/{id}/stdin", tag = "cells",
    params(("id" = String, Path, description = "Cell id"), StdinQuery),
    request_body(content = RawBytes, content_type = "application/octet-stream"),
    responses((status = 200, description = "How many bytes were written", body = Count),
              (status = "default", description = "An error", body = ErrorBody)))]
async fn stdin(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<StdinQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Count>> {
    let (id, eof) = (path(id)?, query(q)?.eof);
    Ok(Json(s.pool.write_stdin(&caller, &id, &body?, eof).await?.into()))
}

/// The caller's live session of the provider, started if there is none.
#[utoipa::path(post, path = "/v1/providers/{name}/session", tag = "providers",
    params(("name" = String, Path, description = "Provider (policy) name")), request_body = SessionRequest,
    responses((status = 200, description = "The session cell", body = CellInfo),
              (status = "default", description = "An error", body = ErrorBody)))]
async fn session(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<SessionRequest>,
) -> ApiResult<Json<CellInfo>> {
    Ok(Json(s.pool.session(&caller, &path(name)?, req.into()).await?.into()))
}

/// End every running cell of the provider (the caller's own unless admin).
#[utoipa::path(delete, path = "/v1/providers/{name}/cells", tag = "providers",
    params(("name" = String, Path, description = "Provider (policy) name")),
    responses((status = 200, description = "How many cells were ended", body = Count),
              (status = "default", description = "An error", body = ErrorBody)))]
async fn cleanup(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Count>> {
    Ok(Json(s.pool.cleanup_provider(&caller, &path(name)?).await?.into()))
}

/// Root or an admin group only: end every cell, remove the cgroups and the socket, exit.
/// `?timeout_ms=N` shortens the wait for cells to end (the old manager's `shutdown(timeout)`).
#[utoipa::path(post, path = "/v1/shutdown", tag = "daemon", params(ShutdownQuery),
    responses((status = 200, description = "How many cells were ended", body = Count),
              (status = "default", description = "An error", body = ErrorBody)))]
async fn shutdown(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<ShutdownQuery>, QueryRejection>,
) -> ApiResult<Json<Count>> {
    let timeout = query(q)?.timeout_ms.map(std::time::Duration::from_millis);
    if !s.pool.is_admin(&caller) {
        return Err(crate::pool::PoolError::Forbidden { uid: caller.uid, action: "shut the daemon down".into() }.into());
    }
    tracing::warn!(uid = caller.uid, pid = caller.pid, "shutdown requested over the API");
    // In a task of its own, which this handler only awaits: hyper drops the handler's future
    // when the client hangs up, and a shutdown dropped halfway left the pool refusing all work
    // (`shutting_down`) with the daemon never told to stop — or, dropped before the cells were
    // stopped, the cells running. The daemon is told to stop however the task ends (the guard
    // cancels on drop, a panic included).
    let (pool, stop) = (s.pool.clone(), s.shutdown.clone());
    let count = tokio::spawn(async move {
        let _stop = stop.drop_guard();
        pool.shutdown_within(timeout).await
    })
    .await
    .map_err(|e| crate::pool::PoolError::Internal(format!("the shutdown task failed: {e}")))?;
    Ok(Json(count.into()))
}

/// Root or an admin group only: reload the policy directory and answer with the verdict —
/// 200 and the providers now served, or 422 `policy` naming every file that cannot load (the
/// previous set keeps serving). `cellkeep reload` (the unit's `ExecReload=`) calls this, so
/// `systemctl reload` fails when the reload is rejected.
#[utoipa::path(post, path = "/v1/reload", tag = "daemon",
    responses((status = 200, description = "The providers now served", body = Reloaded),
              (status = "default", description = "An error (422 policy: the reload was rejected)", body = ErrorBody)))]
async fn reload(State(s): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<Json<Reloaded>> {
    if !s.pool.is_admin(&caller) {
        return Err(crate::pool::PoolError::Forbidden { uid: caller.uid, action: "reload the policies".into() }.into());
    }
    let trigger = format!("reload requested over the API by uid {}", caller.uid);
    // In a task of its own, as the shutdown: a client that hangs up mid-reload must not leave
    // the service manager told `RELOADING=1` with no `READY=1` after it.
    let pool = s.pool.clone();
    let reloaded = tokio::spawn(async move { super::reload_policies(&pool, &trigger).await })
        .await
        .map_err(|e| crate::pool::PoolError::Internal(format!("the reload task failed: {e}")))?;
    Ok(Json(reloaded?.into()))
}

async fn no_route(method: Method, uri: Uri) -> HttpError {
    HttpError::not_found(format!("no route {method} {}", uri.path()))
}

async fn no_method(method: Method, uri: Uri) -> HttpError {
    HttpError::method_not_allowed(format!("{} does not accept {method}", uri.path()))
}

/// Requests from a process inside a cell are refused, all of them (see `listen::serve`).
async fn refuse_cells(req: Request, next: Next) -> Response {
    match req.extensions().get::<Caller>() {
        Some(c) if c.in_cell => HttpError::new(
            ErrorCode::Forbidden,
            format!("pid {} runs inside a cellkeep cell: cells may not use the daemon", c.pid.unwrap_or(0)),
        )
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
    use std::collections::BTreeSet;

    /// Every operation of the generated document names only schemas it defines, and every
    /// path parameter it declares appears in its path.
    #[test]
    fn openapi_is_self_consistent() {
        let doc = serde_json::to_value(super::openapi()).unwrap();
        let schemas: BTreeSet<String> = doc["components"]["schemas"].as_object().unwrap().keys().cloned().collect();
        let text = doc.to_string();
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap();
            assert!(schemas.contains(name), "{name} is referenced but not defined");
        }
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for p in op["parameters"].as_array().into_iter().flatten() {
                    if p["in"] == "path" {
                        let name = p["name"].as_str().unwrap();
                        assert!(path.contains(&format!("{{{name}}}")), "{method} {path}: {name}");
                    }
                }
                assert!(op["responses"]["default"]["content"]["application/json"].is_object(), "{method} {path}");
            }
        }
        for s in ["ErrorBody", "ErrorCode", "CellInfo", "CommandResult", "OutputLine", "DaemonHealth", "CellHealth"] {
            assert!(schemas.contains(s), "{s} missing");
        }
    }

    /// Routes are mounted only through `routes!` (which documents them): no bare `.route(`
    /// in this file outside this test.
    #[test]
    fn every_route_goes_through_the_document() {
        let src = include_str!("routes.rs");
        let code = &src[..src.find("#[cfg(test)]").unwrap()];
        let bare = concat!(".", "route(");
        assert!(!code.contains(bare), "a route added outside utoipa_axum::routes! has no document");
    }
}
