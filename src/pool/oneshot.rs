//! One-shot commands: a fresh cell runs `command + args + [the command as one argv element]`
//! (never through a shell; under `command_via = "stdin"` the command is instead the first
//! bytes of its stdin) and its end is the answer — buffered (output kept up to the policy's
//! `output_bytes`, then the result) or streamed (every byte, in order, with back-pressure,
//! then the result), with optional stdin written by the caller (after the command, there).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::policy::Mode;
use crate::sandbox::ExitReason;
use crate::session::{OutputEvent, Stream};

use super::cell::CellEntry;
use super::ops::{is_resource_limit, Busy, Launch};
use super::{Caller, CommandResult, Count, OneshotRequest, Pool, PoolError};

/// Output chunks (up to 64 KiB each) buffered between a streamed cell and its reader.
const STREAM_QUEUE: usize = 16;

/// A one-shot command being streamed: its output events, then its result.
pub struct StreamedRun {
    pub cell: String,
    output: mpsc::Receiver<OutputEvent>,
    entry: Arc<CellEntry>,
    timeout: Duration,
    started: Instant,
}

impl StreamedRun {
    /// The next chunk of output (`Data` events only); `None` once both pipes are closed.
    pub async fn next(&mut self) -> Option<OutputEvent> {
        self.output.recv().await
    }

    /// Wait for the cell's end: the result without output (it was streamed), with the exit
    /// reason, usage and events. A timeout or limit hit is in `exit`, not an error.
    pub async fn finish(self) -> CommandResult {
        let mut result = CommandResult::new(&self.entry.id, b"", b"");
        let _ = Pool::complete(&self.entry, &mut result, self.timeout, self.started).await;
        result
    }
}

impl Pool {
    /// Launch the cell of a one-shot command.
    async fn start_oneshot(
        &self,
        caller: &Caller,
        provider: &str,
        req: OneshotRequest,
        tap: Option<super::cell::Tap>,
    ) -> Result<(Arc<CellEntry>, Duration), PoolError> {
        let policy = self.provider(caller, provider)?;
        let begun = self.begin_launch();
        if policy.mode != Mode::Oneshot {
            return Err(PoolError::BadRequest(format!("provider {provider} is a session provider; use a session")));
        }
        // The limit that applies: the one asked for, capped by the policy's wall time (the
        // timeout error names this one, not the one asked for).
        let timeout = Self::command_timeout(&policy, req.timeout_ms)?;
        let timeout = policy.limits.wall_time.map_or(timeout, |w| w.min(timeout));
        let l = Launch {
            caller: caller.clone(),
            cwd: req.cwd,
            env: req.env,
            args: vec![req.command],
            session: false,
            wait_for_slot: req.wait_for_slot_ms.map(Duration::from_millis),
            timeout: Some(timeout),
            stdin: req.stdin,
            tap,
        };
        Ok((self.launch(policy, l, begun).await?, timeout))
    }

    /// Run one command and answer with its kept output and how it ended. A timeout or a limit
    /// hit is an error (`timeout`, `resource_limit`) that still carries the result.
    pub async fn oneshot(
        &self,
        caller: &Caller,
        provider: &str,
        req: OneshotRequest,
    ) -> Result<CommandResult, PoolError> {
        if req.stdin {
            // The answer comes at the cell's end, so the caller would never learn the cell to
            // write to (and a program reading its stdin to the end would wait its timeout).
            return Err(PoolError::BadRequest(
                "\"stdin\": true needs \"stream\": true (the stream's first line names the cell to write to)".into(),
            ));
        }
        let (entry, timeout) = self.start_oneshot(caller, provider, req, None).await?;
        // The command's duration runs from its cell's start, as its timeout does: a wait for a
        // slot (`wait_for_slot_ms`) is not the command's time.
        let started = Instant::now();
        let _busy = Busy::new(&entry);
        entry.ended().await;
        entry.output_drained().await;
        let (stdout, t1) = entry.spool.snapshot(Stream::Stdout);
        let (stderr, t2) = entry.spool.snapshot(Stream::Stderr);
        let mut result = CommandResult::new(&entry.id, &stdout, &stderr);
        result.truncated = t1 || t2;
        let error = Self::complete(&entry, &mut result, timeout, started).await.or_else(|| {
            // Ended from outside before it finished: by the daemon's shutdown, `shutting_down`
            // (503, with the result), on which the old manager's callers retry elsewhere; by a
            // terminate or a cleanup, `exited` (409, with what it printed so far), as a
            // session's command ended so answers — not 200, which a client takes for the
            // command's whole answer.
            let shut = self.inner.shutting_down.load(std::sync::atomic::Ordering::SeqCst);
            (result.exit == Some(ExitReason::Terminated)).then(|| {
                if shut {
                    PoolError::ShuttingDown
                } else {
                    PoolError::Ended { cell: entry.id.clone(), reason: ExitReason::Terminated }
                }
            })
        });
        match error {
            None => Ok(result),
            Some(error) => Err(PoolError::WithResult { error: Box::new(error), result: Box::new(result) }),
        }
    }

    /// Start one command whose output is streamed whole (no cap: the process waits for the
    /// reader).
    pub async fn oneshot_stream(
        &self,
        caller: &Caller,
        provider: &str,
        req: OneshotRequest,
    ) -> Result<StreamedRun, PoolError> {
        let (tap, output) = mpsc::channel(STREAM_QUEUE);
        let (entry, timeout) = self.start_oneshot(caller, provider, req, Some(tap)).await?;
        let started = Instant::now();
        Ok(StreamedRun { cell: entry.id.clone(), output, entry, timeout, started })
    }

    /// Wait for the end; fill in the exit reason, duration, usage and events; the error a
    /// buffered answer reports, if any.
    async fn complete(
        entry: &CellEntry,
        result: &mut CommandResult,
        timeout: Duration,
        started: Instant,
    ) -> Option<PoolError> {
        let reason = entry.ended().await;
        result.exit = Some(reason.clone());
        result.duration_ms = started.elapsed().as_millis() as u64;
        result.usage = entry.final_usage();
        result.events = entry.events_now();
        if reason == ExitReason::TimedOut {
            // The limit that applied: the policy's wall time (the command's timeout was not
            // below it), or the command's own.
            Some(match entry.policy.limits.wall_time {
                Some(wall) if wall == timeout => PoolError::WallTime {
                    cell: entry.id.clone(),
                    provider: entry.policy.name.clone(),
                    wall_ms: wall.as_millis() as u64,
                },
                _ => PoolError::Timeout { cell: entry.id.clone(), timeout_ms: timeout.as_millis() as u64 },
            })
        } else if is_resource_limit(&reason) {
            Some(PoolError::ResourceLimit { cell: entry.id.clone(), reason })
        } else {
            None
        }
    }

    /// Write to the stdin of a one-shot started with `stdin: true`; `eof` closes it after.
    pub async fn write_stdin(&self, caller: &Caller, id: &str, data: &[u8], eof: bool) -> Result<Count, PoolError> {
        let entry = self.cell(caller, id)?;
        if let Some(reason) = entry.exit_reason() {
            return Err(PoolError::AlreadyEnded { cell: id.to_owned(), reason });
        }
        let no_stdin = || {
            PoolError::BadRequest(format!(
                "cell {id} takes no input: start a one-shot with \"stdin\": true (and write before closing it)"
            ))
        };
        if entry.session {
            return Err(PoolError::BadRequest(format!("cell {id} is a session: send it commands instead")));
        }
        let mut stdin = entry.stdin.lock().await;
        if stdin.is_none() && entry.stdin_closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(PoolError::BadRequest(format!(
                "cell {id}: its stdin is already closed (an earlier write had eof=true); nothing more can be written"
            )));
        }
        let pipe = stdin.as_mut().ok_or_else(no_stdin)?;
        // The process closing its stdin (or ending) is its business, not an error of the
        // writer: what it did not read is dropped, and the count says how much was written.
        let mut written = 0;
        while written < data.len() {
            match pipe.write(&data[written..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n,
            }
        }
        let _ = pipe.flush().await;
        if eof {
            if let Some(mut pipe) = stdin.take() {
                entry.stdin_closed.store(true, std::sync::atomic::Ordering::SeqCst);
                let _ = pipe.shutdown().await;
            }
        }
        Ok(Count { count: written })
    }
}
