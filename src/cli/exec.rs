//! `cellkeep exec` as a remote shell: the command's stdout and stderr arrive live and
//! separately (the API's streamed one-shot, every byte exact, no cap), stdin is forwarded when
//! it is not a terminal (or with `-i`; never with `-n`), SIGINT/SIGTERM/SIGHUP terminate the cell (a second one
//! kills it at once), and the exit status is the command's: its own code, 124 for a timeout,
//! 128+N for signal N, 125 when the cell could not be set up — as `cellkeep run`.

use std::io::{Read, Write};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::api::wire::{ErrorCode, ExitReason, OneshotRequest, OutputLine, Stream};
use crate::client::{Client, ClientError};

/// Bytes read from our stdin per `POST /v1/cells/{id}/stdin` (well under the body limit).
const STDIN_CHUNK: usize = 256 * 1024;

/// Run `req` streamed; the exit status.
pub(super) async fn run(c: &Client, provider: &str, mut req: OneshotRequest, stdin: bool) -> Result<i32, ClientError> {
    req.stdin = stdin;
    let mut stream = c.exec_stream(provider, &req).await?;
    let sig = |k| signal(k).ok();
    let (mut int, mut term, mut hup) =
        (sig(SignalKind::interrupt()), sig(SignalKind::terminate()), sig(SignalKind::hangup()));
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr());
    let mut cell: Option<String> = None;
    let mut stops = 0u32;
    let mut stdout_gone = false;
    loop {
        let line = tokio::select! {
            line = stream.next() => line?,
            Some(()) = recv(&mut int) => { stops += 1; stop(c, cell.as_deref(), stops); continue }
            Some(()) = recv(&mut term) => { stops += 1; stop(c, cell.as_deref(), stops); continue }
            Some(()) = recv(&mut hup) => { stops += 1; stop(c, cell.as_deref(), stops); continue }
        };
        match line {
            Some(OutputLine::Started { cell: id }) => {
                if req.stdin {
                    forward_stdin(c.clone(), id.clone());
                }
                cell = Some(id);
            }
            Some(line @ OutputLine::Data { .. }) => {
                let OutputLine::Data { stream: s, .. } = &line else { continue };
                let bytes = line.bytes().unwrap_or_default();
                if *s == Stream::Stderr {
                    let _ = err.write_all(&bytes);
                } else if !stdout_gone && out.write_all(&bytes).and_then(|()| out.flush()).is_err() {
                    // Our reader went away (e.g. `| head`): end the command, as a pipe would.
                    stdout_gone = true;
                    stops += 1;
                    stop(c, cell.as_deref(), stops);
                }
            }
            Some(OutputLine::Exit { result }) => {
                let reason = result.exit.unwrap_or(ExitReason::Terminated);
                if !matches!(reason, ExitReason::Exited { .. }) {
                    eprintln!("cellkeep: {}: {reason}", result.cell);
                }
                return Ok(reason.exit_code());
            }
            Some(OutputLine::Lagged { dropped }) => eprintln!("cellkeep: [{dropped} bytes of output dropped]"),
            Some(OutputLine::End) => {}
            None => {
                return Err(ClientError::Protocol {
                    what: format!("exec {provider}"),
                    status: 200,
                    detail: "the stream ended before the command did".into(),
                })
            }
        }
    }
}

async fn recv(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Terminate the cell (the first request: SIGTERM and the grace period; later ones: at once).
/// The stream then ends with the command's end, which sets the exit status. The same client:
/// its calls do not wait for each other (a second signal's kill does not queue behind the
/// first request's grace period).
fn stop(c: &Client, cell: Option<&str>, nth: u32) {
    let Some(id) = cell else { return };
    let (c, id) = (c.clone(), id.to_owned());
    tokio::spawn(async move {
        match c.terminate(&id, nth > 1).await {
            Ok(_) | Err(ClientError::Api { code: ErrorCode::AlreadyEnded, .. }) => {}
            Err(e) => eprintln!("cellkeep: terminating cell {id}: {e}"),
        }
    });
}

/// Copy our stdin to the cell's, then close it. A plain thread reads (stdin may block for
/// ever; the process exits without waiting for it); a task posts the chunks in order.
fn forward_stdin(client: Client, id: String) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut buf = vec![0u8; STDIN_CHUNK];
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(buf).is_err() {
                        return;
                    }
                }
            }
        }
    });
    tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            if client.write_stdin(&id, &chunk, false).await.is_err() {
                return;
            }
        }
        let _ = client.write_stdin(&id, &[], true).await;
    });
}
