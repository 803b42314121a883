//! Errors the HTTP layer answers by itself. hyper rejects a request it cannot parse (400), a
//! header section over its buffer (431) or a URI too long (414) before any handler runs, with
//! an empty body. [`JsonErrors`] wraps a connection's stream and gives those answers the API's
//! `{code, message}` JSON body, so every error a client sees has the same shape.
//!
//! Recognised by their form: an error status with `content-length: 0`. No handler produces
//! one (every handler error is JSON), so nothing else is touched. hyper writes a response head
//! as one buffer when the stream does not claim vectored writes, which this wrapper does not.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::wire::{ErrorBody, ErrorCode};

/// A connection stream whose empty HTTP error answers are rewritten with a JSON body.
pub struct JsonErrors<S> {
    inner: S,
    /// A rewritten answer still being written, and how much of hyper's buffer it stands for.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<S> JsonErrors<S> {
    pub fn new(inner: S) -> JsonErrors<S> {
        JsonErrors { inner, pending: None }
    }
}

/// The JSON answer for an empty error response head, if `head` is one.
fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let (status_line, rest) = text.strip_prefix("HTTP/1.1 ")?.split_once("\r\n")?;
    let status: u16 = status_line.get(..3)?.parse().ok()?;
    if status < 400 || !rest.ends_with("\r\n\r\n") {
        return None;
    }
    let headers: Vec<&str> = rest.trim_end_matches("\r\n").split("\r\n").collect();
    if !headers.iter().any(|h| h.eq_ignore_ascii_case("content-length: 0")) {
        return None;
    }
    let message = match status {
        400 => "malformed HTTP request: the request line or a header could not be parsed".to_owned(),
        413 => "request body too large".to_owned(),
        414 => "request URI too long".to_owned(),
        431 => "request header section too large".to_owned(),
        s => format!("the HTTP request was refused ({status_line}; status {s})"),
    };
    let code = if status < 500 { ErrorCode::BadRequest } else { ErrorCode::Internal };
    let body = serde_json::to_vec(&ErrorBody { code, message, result: None }).ok()?;
    let mut out = format!("HTTP/1.1 {status_line}\r\n").into_bytes();
    for h in headers.iter().filter(|h| !h.eq_ignore_ascii_case("content-length: 0")) {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!("content-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes(),
    );
    out.extend_from_slice(&body);
    Some(out)
}

/// A whole answer with the API's JSON error body, for a connection closed before hyper serves
/// it (over the connection limit): the status of `code`, then `connection: close`.
pub fn closing_answer(code: ErrorCode, message: String) -> Vec<u8> {
    let status = code.status();
    let body = serde_json::to_vec(&ErrorBody { code, message, result: None }).unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\nconnection: close\r\nretry-after: 1\r\n\
         content-length: {}\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

impl<S: AsyncWrite + Unpin> JsonErrors<S> {
    /// Write what is pending; the size of hyper's buffer it replaced, once all is written.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<usize>>> {
        while let Some((bytes, done, stands_for)) = &mut self.pending {
            if *done == bytes.len() {
                let n = *stands_for;
                self.pending = None;
                return Poll::Ready(Ok(Some(n)));
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        Poll::Ready(Ok(None))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonErrors<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonErrors<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pending.is_none() {
            match rewrite(buf) {
                Some(answer) => this.pending = Some((answer, 0, buf.len())),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        match ready!(this.poll_pending(cx))? {
            Some(n) => Poll::Ready(Ok(n)),
            None => Pin::new(&mut this.inner).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::rewrite;

    #[test]
    fn empty_errors_get_a_json_body() {
        let out =
            rewrite(b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
                .expect("rewritten");
        let text = String::from_utf8(out).expect("utf8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head");
        assert!(head.starts_with("HTTP/1.1 431 "));
        assert!(head.contains("connection: close") && head.contains("content-type: application/json"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["code"], "bad_request");
    }

    #[test]
    fn other_answers_are_untouched() {
        assert!(rewrite(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(rewrite(b"HTTP/1.1 404 Not Found\r\ncontent-length: 40\r\n\r\n").is_none());
        assert!(rewrite(b"{\"code\":\"x\"}").is_none());
    }
}
