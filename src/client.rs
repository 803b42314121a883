//! Typed async client for the daemon's API over its Unix socket, shared by the CLI and tests.
//!
//! HTTP/1.1 over a `tokio::net::UnixStream` (hyper's client connection; no connection pool
//! crate is needed for one socket). A [`Client`] is cheap to clone and every clone shares a
//! small set of idle keep-alive connections: an ordinary call takes an idle one (or opens a new
//! one when none is idle) and gives it back once the whole answer has arrived, so calls on one
//! client run side by side — a `terminate` or `health` never waits behind a session command the
//! payload is slow to answer. An output stream takes a connection of its own, because it holds
//! it until the stream ends. Every API error arrives as
//! [`ClientError::Api`] with the daemon's stable `code`. Requests and answers are the API's
//! own wire types ([`crate::api::wire`]), the ones the daemon serialises and documents.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::wire::Stream;
use crate::api::wire::{CellHealth, CellInfo, CommandResult, Count, DaemonHealth, ErrorBody, ErrorCode, ListFilter};
use crate::api::wire::{
    OneshotRequest, OutputLine, Reloaded, SendRequest as SendCommand, SessionRequest, SpawnRequest,
};

/// The daemon's default socket.
pub const DEFAULT_SOCKET: &str = "/run/cellkeep/cellkeep.sock";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the cellkeep daemon at {path}: {source}")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("connection to the daemon at {path} failed: {source}")]
    Transport { path: PathBuf, source: hyper::Error },
    /// The daemon answered with an error.
    #[error("{message}")]
    Api { status: u16, code: ErrorCode, message: String, result: Option<Box<CommandResult>> },
    #[error("unexpected answer to {what} (HTTP {status}): {detail}")]
    Protocol { what: String, status: u16, detail: String },
}

impl ClientError {
    /// A stable machine code: the daemon's for API errors, `unavailable` when the daemon cannot
    /// be reached, `protocol` for an answer the client cannot read.
    pub fn code(&self) -> &'static str {
        match self {
            ClientError::Api { code, .. } => code.as_str(),
            ClientError::Connect { .. } | ClientError::Transport { .. } => "unavailable",
            ClientError::Protocol { .. } => "protocol",
        }
    }
}

type Result<T> = std::result::Result<T, ClientError>;

/// Idle keep-alive connections a client keeps for its next calls; a connection given back
/// when this many are idle is closed (calls in flight are not bounded by it).
const MAX_IDLE: usize = 4;

/// A client for one daemon socket. Clones share its idle connections; concurrent calls (from
/// clones, or from tasks sharing one client) each use a connection of their own.
#[derive(Clone)]
pub struct Client {
    socket: PathBuf,
    idle: Arc<Mutex<Vec<SendRequest<Full<Bytes>>>>>,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client { socket: socket.into(), idle: Arc::default() }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect { path: self.socket.clone(), source })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ClientError::Transport { path: self.socket.clone(), source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("client connection ended: {e}");
            }
        });
        Ok(sender)
    }

    fn build(method: Method, path: &str, body: Option<Vec<u8>>) -> Request<Full<Bytes>> {
        let mut b = Request::builder().method(method).uri(path).header(hyper::header::HOST, "cellkeep");
        if body.is_some() {
            b = b.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let body = Full::new(body.map(Bytes::from).unwrap_or_default());
        // Method, a path we built and constant headers: building cannot fail.
        b.body(body).unwrap_or_else(|_| Request::new(Full::default()))
    }

    /// An idle connection the daemon has not closed, if any (the closed ones are dropped).
    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    /// Give a connection whose answer was read in full back for the next call.
    fn put_idle(&self, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(sender);
        }
    }

    /// Send on an idle keep-alive connection, or a new one when none is idle; the connection
    /// is the call's own until the whole answer has arrived, then goes back to the idle set.
    /// A reused connection the daemon closed meanwhile (before it took the request) is
    /// dropped and the request sent again; a new connection's failure is the call's.
    async fn send(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<(StatusCode, Bytes)> {
        loop {
            let (mut sender, reused) = match self.take_idle() {
                Some(s) => (s, true),
                None => (self.connect().await?, false),
            };
            if let Err(source) = sender.ready().await {
                if reused {
                    continue;
                }
                return Err(ClientError::Transport { path: self.socket.clone(), source });
            }
            match sender.send_request(Self::build(method.clone(), path, body.clone())).await {
                Ok(resp) => {
                    let status = resp.status();
                    let bytes = self.body_of(resp).await?;
                    self.put_idle(sender);
                    return Ok((status, bytes));
                }
                // The request never went out on a connection the daemon had closed: retry.
                Err(e) if reused && e.is_canceled() => continue,
                Err(source) => return Err(ClientError::Transport { path: self.socket.clone(), source }),
            }
        }
    }

    /// A whole (non-streaming) response body.
    async fn body_of(&self, resp: Response<Incoming>) -> Result<Bytes> {
        Ok(resp
            .into_body()
            .collect()
            .await
            .map_err(|source| ClientError::Transport { path: self.socket.clone(), source })?
            .to_bytes())
    }

    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<&impl Serialize>) -> Result<T> {
        let what = format!("{method} {path}");
        let body = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| ClientError::Protocol {
                what: what.clone(),
                status: 0,
                detail: format!("encoding the request: {e}"),
            })?),
            None => None,
        };
        let (status, bytes) = self.send(method, path, body).await?;
        decode(&what, status, &bytes)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None::<&()>).await
    }

    pub async fn health(&self) -> Result<DaemonHealth> {
        self.get("/v1/health").await
    }

    pub async fn spawn(&self, req: &SpawnRequest) -> Result<CellInfo> {
        self.call(Method::POST, "/v1/cells", Some(req)).await
    }

    /// The caller's live session of `provider`, or a new one.
    pub async fn session(&self, provider: &str, req: &SessionRequest) -> Result<CellInfo> {
        self.call(Method::POST, &format!("/v1/providers/{}/session", seg(provider)), Some(req)).await
    }

    /// Send a command to a session cell; the framed reply.
    pub async fn send_command(&self, id: &str, req: &SendCommand) -> Result<CommandResult> {
        self.call(Method::POST, &format!("/v1/cells/{}/commands", seg(id)), Some(req)).await
    }

    /// Run one command in a fresh one-shot cell of `provider`.
    pub async fn exec(&self, provider: &str, req: &OneshotRequest) -> Result<CommandResult> {
        self.call(Method::POST, &format!("/v1/providers/{}/commands", seg(provider)), Some(req)).await
    }

    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<CellInfo>> {
        let mut path = format!("/v1/cells?all={}", filter.all);
        if let Some(p) = &filter.provider {
            path.push_str(&format!("&provider={}", seg(p)));
        }
        self.get(&path).await
    }

    pub async fn get_cell(&self, id: &str) -> Result<CellInfo> {
        self.get(&format!("/v1/cells/{}", seg(id))).await
    }

    pub async fn terminate(&self, id: &str, force: bool) -> Result<CellInfo> {
        self.call(Method::DELETE, &format!("/v1/cells/{}?force={force}", seg(id)), None::<&()>).await
    }

    pub async fn cell_health(&self, id: &str) -> Result<CellHealth> {
        self.get(&format!("/v1/cells/{}/health", seg(id))).await
    }

    /// End every cell of `provider` the caller may manage; how many.
    pub async fn cleanup(&self, provider: &str) -> Result<Count> {
        self.call(Method::DELETE, &format!("/v1/providers/{}/cells", seg(provider)), None::<&()>).await
    }

    /// End every cell and stop the daemon (root or an admin group).
    pub async fn shutdown(&self, timeout_ms: Option<u64>) -> Result<Count> {
        let path = match timeout_ms {
            Some(ms) => format!("/v1/shutdown?timeout_ms={ms}"),
            None => "/v1/shutdown".to_owned(),
        };
        self.call(Method::POST, &path, None::<&()>).await
    }

    /// Reload the daemon's policies and wait for the verdict (root or an admin group): the
    /// providers now served, or a `policy` error naming every file that cannot load.
    pub async fn reload(&self) -> Result<Reloaded> {
        self.call(Method::POST, "/v1/reload", None::<&()>).await
    }

    /// A cell's output from `from` (default: the oldest byte kept); with `follow`, live until
    /// the cell ends. Uses a connection of its own.
    pub async fn output(&self, id: &str, from: Option<u64>, follow: bool) -> Result<OutputStream> {
        let mut path = format!("/v1/cells/{}/output?follow={follow}", seg(id));
        if let Some(f) = from {
            path.push_str(&format!("&from={f}"));
        }
        self.stream(Method::GET, &path, None).await
    }

    /// A cell's output as raw bytes (`format=raw`; stdout and stderr in order, or only
    /// `stream`); with `follow`, live until the cell ends. A reader that fell behind the
    /// retained window gets an error, never a silently cut stream.
    pub async fn output_raw(
        &self,
        id: &str,
        from: Option<u64>,
        follow: bool,
        stream: Option<Stream>,
    ) -> Result<RawStream> {
        let mut path = format!("/v1/cells/{}/output?follow={follow}&format=raw", seg(id));
        if let Some(f) = from {
            path.push_str(&format!("&from={f}"));
        }
        match stream {
            Some(Stream::Stdout) => path.push_str("&stream=stdout"),
            Some(Stream::Stderr) => path.push_str("&stream=stderr"),
            None => {}
        }
        let body = self.open(Method::GET, &path, None).await?;
        Ok(RawStream { body, socket: self.socket.clone() })
    }

    /// Run one command in a fresh one-shot cell of `provider`, streamed: a `Started` line,
    /// every byte of output as `Data` lines, then `Exit` with the result. Sets
    /// `req.stream`. Uses a connection of its own.
    pub async fn exec_stream(&self, provider: &str, req: &OneshotRequest) -> Result<OutputStream> {
        let path = format!("/v1/providers/{}/commands", seg(provider));
        let mut req = req.clone();
        req.stream = true;
        let body = serde_json::to_vec(&req).map_err(|e| ClientError::Protocol {
            what: format!("POST {path}"),
            status: 0,
            detail: format!("encoding the request: {e}"),
        })?;
        self.stream(Method::POST, &path, Some(body)).await
    }

    /// Write bytes to the stdin of a one-shot started with `stdin: true`; `eof` closes it.
    pub async fn write_stdin(&self, id: &str, data: &[u8], eof: bool) -> Result<Count> {
        let path = format!("/v1/cells/{}/stdin?eof={eof}", seg(id));
        let (status, bytes) = self.send(Method::POST, &path, Some(data.to_vec())).await?;
        decode(&format!("POST {path}"), status, &bytes)
    }

    /// An NDJSON answer, on a connection of its own (it is held until the stream ends).
    async fn stream(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<OutputStream> {
        let body = self.open(method, path, body).await?;
        Ok(OutputStream { body, buf: BytesMut::new(), scanned: 0, socket: self.socket.clone(), done: false })
    }

    /// A streamed answer's body, on a connection of its own; an error status is decoded.
    async fn open(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Incoming> {
        let what = format!("{method} {path}");
        let mut sender = self.connect().await?;
        let resp: Response<Incoming> = sender
            .send_request(Self::build(method, path, body))
            .await
            .map_err(|source| ClientError::Transport { path: self.socket.clone(), source })?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = self.body_of(resp).await?;
            return Err(decode::<()>(&what, status, &bytes).err().unwrap_or_else(|| ClientError::Protocol {
                what: what.clone(),
                status: status.as_u16(),
                detail: "empty error".into(),
            }));
        }
        Ok(resp.into_body())
    }
}

/// The bytes of a raw output stream.
pub struct RawStream {
    body: Incoming,
    socket: PathBuf,
}

impl RawStream {
    /// The next bytes; `None` at the end. A gap (the reader fell behind what the daemon
    /// retains) ends the stream with an error.
    pub async fn next(&mut self) -> Result<Option<Bytes>> {
        loop {
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            return Ok(Some(data));
                        }
                    }
                }
                Some(Err(source)) => return Err(ClientError::Transport { path: self.socket.clone(), source }),
                None => return Ok(None),
            }
        }
    }
}

/// Decode a JSON answer, or the daemon's error body.
fn decode<T: DeserializeOwned>(what: &str, status: StatusCode, bytes: &[u8]) -> Result<T> {
    if status.is_success() {
        return serde_json::from_slice(bytes).map_err(|e| ClientError::Protocol {
            what: what.to_owned(),
            status: status.as_u16(),
            detail: e.to_string(),
        });
    }
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(e) => Err(ClientError::Api { status: status.as_u16(), code: e.code, message: e.message, result: e.result }),
        Err(_) => Err(ClientError::Protocol {
            what: what.to_owned(),
            status: status.as_u16(),
            detail: String::from_utf8_lossy(bytes).chars().take(200).collect(),
        }),
    }
}

/// Percent-encode one path segment or query value (ids and provider names are plain, but a
/// user can type anything).
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The NDJSON lines of an output stream, however the daemon's frames split them.
pub struct OutputStream {
    body: Incoming,
    buf: BytesMut,
    /// `buf[..scanned]` holds no newline.
    scanned: usize,
    socket: PathBuf,
    done: bool,
}

impl OutputStream {
    /// The next line; `None` once the stream ended (after an `End` line, or when the daemon
    /// closed it without one — e.g. a non-follow read of what is kept so far).
    pub async fn next(&mut self) -> Result<Option<OutputLine>> {
        loop {
            // Search only the bytes not searched before: a long line arrives in many frames.
            if let Some(found) = memchr::memchr(b'\n', &self.buf[self.scanned..]) {
                let pos = self.scanned + found;
                self.scanned = 0;
                let line = self.buf.split_to(pos + 1);
                let text = &line[..pos];
                if text.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(text).map(Some).map_err(|e| ClientError::Protocol {
                    what: "output stream".into(),
                    status: 200,
                    detail: e.to_string(),
                });
            }
            self.scanned = self.buf.len();
            if self.done {
                return Ok(None);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buf.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
                Some(Err(source)) => return Err(ClientError::Transport { path: self.socket.clone(), source }),
                None => self.done = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn segments_are_escaped() {
        assert_eq!(super::seg("claude"), "claude");
        assert_eq!(super::seg("../x y"), "..%2Fx%20y");
    }
}
