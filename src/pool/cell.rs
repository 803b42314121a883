//! One cell in the pool: its entry (what `get`/`health` read), the pumps that carry its
//! stdout/stderr into the spool (and, for sessions, through the reply framer), and the task that
//! supervises it to its end.
//!
//! Ownership: the supervising task owns the running [`Cell`]; everything else reaches the cell
//! through the shared [`CellEntry`]: the stop request (a `watch`), the session's stdin and reply
//! queue (behind a FIFO `tokio::sync::Mutex`, so commands run one at a time and in order), and
//! the exit reason (a `watch` that waiters await). Pumps never block on readers: the spool is
//! bounded (a file per cell on disk) and drops the oldest output.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

use crate::cgroup::{CellCgroup, Events, Usage};
use crate::policy::Policy;
use crate::sandbox::{Cell, CellErrOutput, CellInput, CellIo, CellOutput, Degradation, ExitReason, Outcome, Stop};
use crate::session::{Framer, OutputEvent, Reply, SessionError, Spool, Stream};

use super::types::{CellInfo, CellState};

/// A pump's first read buffer, and the most it grows to.
const PUMP_MIN: usize = 4 * 1024;
const PUMP_MAX: usize = 64 * 1024;
/// How long a pump holds the start of a UTF-8 character its read cut off, waiting for the
/// rest: past it the bytes go as they are (a program may stop after a byte that is no UTF-8
/// at all, a Latin-1 prompt or a binary frame, and its reader must not wait for more).
const HOLD_CUT: Duration = Duration::from_millis(10);

/// Replies kept for the command in flight (each up to `MAX_REPLY_BYTES`).
const REPLY_QUEUE: usize = 4;

/// The session side of a cell: where commands go and replies come from.
pub struct SessionIo {
    /// The payload's stdin pipe, or the pty master of a `tty` cell.
    pub stdin: CellInput,
    pub replies: mpsc::Receiver<Result<Reply, SessionError>>,
}

/// A lossless copy of a cell's output for the one reader that started it (a streamed one-shot):
/// the pumps wait for it, so the process is slowed to the reader's pace instead of losing
/// bytes. When the reader goes away the pumps stop feeding it and carry on.
pub type Tap = mpsc::Sender<OutputEvent>;

/// A cell's stderr pipe, read by its pump and, when a session reply completes, by the command
/// that waited for it ([`CellEntry::catch_up_stderr`]). Both read under one lock, and a chunk
/// is in the spool before the lock is released: after a catch-up, every byte the program wrote
/// to stderr before its reply is in the spool, so it is credited to that command, not the next.
pub struct StderrPipe {
    pipe: CellErrOutput,
    /// The read buffer (grown from PUMP_MIN to PUMP_MAX while reads fill it) and how many bytes
    /// at its front are held back (a character cut by the last read); its lock is the
    /// one both readers take.
    buf: Mutex<(Vec<u8>, usize)>,
}

impl StderrPipe {
    /// Read what the pipe holds now into the spool, at most `max` bytes (a program writing
    /// without pause would otherwise keep the reader here). Returns the chunks read (for a
    /// tap) and whether the pipe reached its end.
    ///
    /// `direct`: read(2) the pipe itself (the catch-up), not through tokio's `try_read`, which
    /// answers WouldBlock without reading while the reactor has not yet seen the pipe become
    /// readable — bytes already written would then be missed. The pump, woken by the reactor,
    /// reads through tokio, so a WouldBlock there clears the readiness it waits on.
    /// Whether the last read cut a character whose start is held back.
    fn holds(&self) -> bool {
        self.buf.lock().unwrap_or_else(|e| e.into_inner()).1 > 0
    }

    /// Push the held start of a cut character as it is (nothing more came): its chunk.
    fn flush_held(&self, spool: &Spool) -> Vec<OutputEvent> {
        let mut guard = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let (buf, held) = &mut *guard;
        let mut chunks = Vec::new();
        push_stderr(spool, &buf[..*held], &mut chunks);
        *held = 0;
        chunks
    }

    fn read_ready(&self, spool: &Spool, max: usize, direct: bool) -> (Vec<OutputEvent>, bool) {
        use std::os::fd::AsFd;
        let mut guard = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        // `held`: the start of a character the last read cut off, at the front of `buf`,
        // pushed with the rest of it (as the stdout pump does: `pump`).
        let (buf, held) = &mut *guard;
        let mut chunks = Vec::new();
        let mut taken = 0;
        while taken < max {
            let read = if direct {
                nix::unistd::read(self.pipe.as_fd(), &mut buf[*held..]).map_err(std::io::Error::from)
            } else {
                self.pipe.try_read(&mut buf[*held..])
            };
            match read {
                Ok(n) if n > 0 => {
                    taken += n;
                    let filled = *held + n;
                    let whole = filled - crate::session::utf8_cut_tail(&buf[..filled]);
                    push_stderr(spool, &buf[..whole], &mut chunks);
                    buf.copy_within(whole..filled, 0);
                    *held = filled - whole;
                    if filled == buf.len() && buf.len() < PUMP_MAX {
                        let grown = buf.len() * 2;
                        buf.resize(grown, 0);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // A catch-up takes all the program wrote before its reply, a cut
                    // character too: it is that command's stderr, not the next one's.
                    if direct {
                        push_stderr(spool, &buf[..*held], &mut chunks);
                        *held = 0;
                    }
                    return (chunks, false);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // The end (or a pipe that cannot be read): what was held goes as it is.
                _ => {
                    push_stderr(spool, &buf[..*held], &mut chunks);
                    *held = 0;
                    return (chunks, true);
                }
            }
        }
        (chunks, false)
    }
}

/// Push `bytes` (if any) into the spool as stderr, and their event onto `chunks` (for a tap).
fn push_stderr(spool: &Spool, bytes: &[u8], chunks: &mut Vec<OutputEvent>) {
    if !bytes.is_empty() {
        let offset = spool.push(Stream::Stderr, bytes);
        let data = bytes::Bytes::copy_from_slice(bytes);
        chunks.push(OutputEvent::Data { stream: Stream::Stderr, offset, data });
    }
}

/// The most a pipe can hold (`/proc/sys/fs/pipe-max-size`'s default, the most an unprivileged
/// program can raise its pipe to): a catch-up reads at most this, which is all a program can
/// have written before its reply and still be unread.
const PIPE_MAX: usize = 1024 * 1024;

/// How a launched cell is wired besides its policy.
pub struct Wiring {
    /// The session's reply framer (sessions only).
    pub framer: Option<Framer>,
    /// When the cell is ended as `timed_out`: the policy's wall time, or sooner for a
    /// one-shot command with a timeout.
    pub deadline: Option<Instant>,
    pub tap: Option<Tap>,
    /// One-shot: keep its stdin for the caller to write (`stdin: true`); otherwise it is
    /// closed at once.
    pub keep_stdin: bool,
    /// Where the cell's output spool file goes (in memory if it cannot be made there).
    pub spool_dir: std::path::PathBuf,
    /// The daemon's one inotify instance for limit files (`None`: it could not be made).
    pub limit_hub: Option<crate::cgroup::watch::WatchHub>,
}

/// Shared state of one cell.
pub struct CellEntry {
    pub id: String,
    pub provider: String,
    pub owner_uid: u32,
    pub session: bool,
    pub policy: Arc<Policy>,
    pub created: SystemTime,
    pub started: Instant,
    pub cgroup: Arc<CellCgroup>,
    /// The cell's limit events that answered session commands lived through (see
    /// [`crate::sandbox::Cell::events_seen`]; updated by [`CellEntry::account_events`]).
    events_seen: Arc<Mutex<crate::cgroup::Events>>,
    pub payload_pid: Option<u32>,
    pub degraded: Vec<Degradation>,
    pub spool: Spool,
    /// The stderr pipe (none for a tty cell, whose stderr is the terminal), until its pump
    /// reaches the end (an ended cell stays listed a while and must not hold the pipe).
    pub stderr: Mutex<Option<Arc<StderrPipe>>>,
    pub io: tokio::sync::Mutex<Option<SessionIo>>,
    /// A one-shot's stdin, when it was started to take input (`stdin: true`); `None` once
    /// closed.
    pub stdin: Arc<tokio::sync::Mutex<Option<CellInput>>>,
    /// Set when a write closed that stdin (`eof`): a later write is told so, not that the cell
    /// never took input.
    pub stdin_closed: std::sync::atomic::AtomicBool,
    /// When the last command was handed out, started or answered: the idle clock. Output
    /// does not count (a session whose background job prints is still idle: "idle" is "no
    /// command for `idle_timeout`", as the policies promise).
    pub last_activity: Mutex<Instant>,
    /// Held by an output pump from its push into the spool until its tap has the event: the
    /// stdout and stderr pumps would otherwise interleave, and a streamed one-shot's reader
    /// would get offset 3 before offset 0.
    pub tap_order: tokio::sync::Mutex<()>,
    /// Commands in flight (a busy cell is never idle).
    pub busy: std::sync::atomic::AtomicUsize,
    /// Commands written to this session's stdin so far (see `Framer::command_written`).
    pub commands_written: std::sync::atomic::AtomicU64,
    pub stop: watch::Sender<Option<Stop>>,
    pub exit: watch::Sender<Option<(ExitReason, Instant)>>,
    /// Last (time, cpu µs) health sample, for CPU %.
    pub cpu_sample: Mutex<Option<(Instant, u64)>>,
    /// Set when both output pipes are closed and drained into the spool.
    pub output_done: watch::Sender<bool>,
    /// Limit events seen so far (kernel notification, health reads, the final outcome).
    pub events: Mutex<Events>,
    /// The cell's usage read at its end (what `health` reports once it has ended).
    pub final_usage: Mutex<Option<Usage>>,
    /// Its cgroup was removed behind the daemon's back (then the daemon ended it).
    pub cgroup_lost: std::sync::atomic::AtomicBool,
    /// The egress proxy of a `proxy` cell (its decisions; the launcher stops it at the end).
    pub egress: Option<Arc<crate::egress::CellEgress>>,
}

impl CellEntry {
    pub fn touch(&self) {
        *self.last_activity.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// The cell's limit events read from its cgroup now (off the runtime's threads), merged
    /// into what [`CellEntry::events_now`] shows; the last known ones if the read fails.
    pub async fn read_events(&self) -> Events {
        let cg = self.cgroup.clone();
        if let Ok(Ok(now)) = tokio::task::spawn_blocking(move || cg.events()).await {
            self.record_events(now);
        }
        self.events_now()
    }

    /// A session command was answered: the limit events so far are its, not a reason for the
    /// cell's later end.
    pub fn account_events(&self, now: crate::cgroup::Events) {
        *self.events_seen.lock().unwrap_or_else(|e| e.into_inner()) = now;
    }

    /// A command begins: the cell is busy and its idle clock restarts, both under
    /// `last_activity`'s lock, under which [`CellEntry::stop_if_idle`] decides: the reaper sees
    /// either this command or, before it, its own stop (which the command then finds: it is
    /// not written to a session on its way out). Undone by `end_command`.
    pub fn begin_command(&self) {
        let mut last = self.last_activity.lock().unwrap_or_else(|e| e.into_inner());
        self.busy.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        *last = Instant::now();
    }

    /// A command ended: its clock reset and the cell no longer busy in one step under the
    /// idle clock's lock (apart, a sweep between them saw a session idle since its long
    /// command began, and reaped it just after its reply).
    pub fn end_command(&self) {
        let mut last = self.last_activity.lock().unwrap_or_else(|e| e.into_inner());
        *last = Instant::now();
        self.busy.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// The reaper's check of a session, atomic with [`CellEntry::begin_command`]: not busy and
    /// untouched for `idle_timeout` → `stop` is requested (`Ok`, how long it was idle);
    /// otherwise `Err(when to look again)`. (Read and stopped apart, a command that began in
    /// between was written, then its session stopped as idle under it.)
    pub fn stop_if_idle(&self, idle_timeout: Duration, stop: impl FnOnce() -> Stop) -> Result<Duration, Duration> {
        let last = self.last_activity.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_busy() {
            // Look again one idle period from now.
            return Err(idle_timeout);
        }
        let idle = last.elapsed();
        if idle < idle_timeout {
            return Err(idle_timeout - idle);
        }
        self.request_stop(stop());
        Ok(idle)
    }

    pub fn idle_for(&self) -> Duration {
        self.last_activity.lock().unwrap_or_else(|e| e.into_inner()).elapsed()
    }

    /// Move what the cell's stderr pipe holds right now into the spool (a session command, once
    /// its reply is complete: stderr the program wrote before replying is then the command's).
    pub fn catch_up_stderr(&self) {
        let pipe = self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(pipe) = pipe {
            pipe.read_ready(&self.spool, PIPE_MAX, true);
        }
    }

    pub fn is_busy(&self) -> bool {
        self.busy.load(std::sync::atomic::Ordering::SeqCst) > 0
    }

    /// Take a fresh reading of the cell's limit counters; log what increased. Counters only
    /// grow, so an older reading never replaces a newer one.
    pub fn record_events(&self, now: Events) {
        let mut seen = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let before = *seen;
        let merged = Events {
            oom_kills: before.oom_kills.max(now.oom_kills),
            memory_max_hits: before.memory_max_hits.max(now.memory_max_hits),
            pids_max_hits: before.pids_max_hits.max(now.pids_max_hits),
        };
        *seen = merged;
        drop(seen);
        if merged.oom_kills > before.oom_kills {
            tracing::warn!(cell = %self.id, provider = %self.provider, oom_kills = merged.oom_kills, "OOM kill at the cell's memory limit");
        }
        if merged.pids_max_hits > before.pids_max_hits {
            tracing::warn!(cell = %self.id, provider = %self.provider, hits = merged.pids_max_hits, "fork refused at the cell's pids limit");
        }
    }

    pub fn events_now(&self) -> Events {
        *self.events.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn final_usage(&self) -> Option<Usage> {
        *self.final_usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cell's usage now (read from its cgroup), or at its end once it has ended.
    pub async fn usage_now(&self) -> Option<Usage> {
        if self.exit_reason().is_some() {
            return self.final_usage();
        }
        let cg = self.cgroup.clone();
        tokio::task::spawn_blocking(move || cg.usage().ok()).await.ok().flatten()
    }

    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.exit.borrow().as_ref().map(|(r, _)| r.clone())
    }

    pub fn exited_at(&self) -> Option<Instant> {
        self.exit.borrow().as_ref().map(|(_, t)| *t)
    }

    /// Ask the supervisor to end the cell (the first request wins).
    /// Whether this was the cell's first stop request (a forced one after a graceful one is
    /// not).
    pub fn request_stop(&self, stop: Stop) -> bool {
        // The first request wins, except that a kill overrides a graceful stop still in its
        // grace period (`DELETE`, then `DELETE ?force=true`: the second does not wait).
        let mut first = false;
        self.stop.send_if_modified(|cur| match (cur.as_ref(), &stop) {
            (None, _) => {
                first = true;
                *cur = Some(stop);
                true
            }
            (Some(Stop::Graceful { .. }), Stop::Kill { .. }) => {
                *cur = Some(stop);
                true
            }
            _ => false,
        });
        first
    }

    /// Wait until the cell has ended; its reason.
    pub async fn ended(&self) -> ExitReason {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some((r, _)) = rx.borrow_and_update().as_ref() {
                return r.clone();
            }
            if rx.changed().await.is_err() {
                return ExitReason::Terminated;
            }
        }
    }

    /// Wait until all output is in the spool.
    pub async fn output_drained(&self) {
        let mut rx = self.output_done.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    pub fn info(&self) -> CellInfo {
        self.info_with(true)
    }

    /// The cell's info, with or without its egress decisions (a list leaves them out: up to
    /// 2000 per cell, copied for every cell on every list).
    pub fn info_with(&self, egress: bool) -> CellInfo {
        let exit = self.exit_reason();
        CellInfo {
            id: self.id.clone(),
            provider: self.provider.clone(),
            owner_uid: self.owner_uid,
            session: self.session,
            state: if exit.is_some() { CellState::Exited } else { CellState::Running },
            created_ms: self.created.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
            idle_ms: self.idle_for().as_millis() as u64,
            pid: if exit.is_some() { None } else { self.payload_pid },
            exit,
            degraded: self.degraded.clone(),
            events: *self.events.lock().unwrap_or_else(|e| e.into_inner()),
            egress: self.egress.as_ref().filter(|_| egress).map(|e| e.events()).unwrap_or_default(),
        }
    }
}

/// Wire a freshly launched cell into an entry and start its pumps and supervisor. `on_end`
/// runs once the cell has ended and its cgroup is gone (the pool frees the slot there).
pub fn start(
    mut cell: Cell,
    owner_uid: u32,
    session: bool,
    policy: Arc<Policy>,
    wiring: Wiring,
    on_end: impl FnOnce(&Arc<CellEntry>, &Outcome) + Send + 'static,
) -> Arc<CellEntry> {
    let Wiring { framer, deadline, tap, keep_stdin, spool_dir, limit_hub } = wiring;
    let cap = policy.limits.output_bytes as usize;
    let spool = Spool::on_disk(cap, &spool_dir, &cell.id).unwrap_or_else(|e| {
        tracing::warn!(cell = %cell.id, "output kept in memory: {e}");
        Spool::new(cap)
    });
    // A command expects one reply; the few slots only absorb replies that race a command.
    let (reply_tx, reply_rx) = mpsc::channel(REPLY_QUEUE);
    // A tty cell: stdin and stdout are the pty master, and there is no separate stderr.
    let CellIo { stdin, stdout, stderr } = cell.take_io();
    let (io, oneshot_stdin) = match (session, stdin) {
        (true, Some(stdin)) => (Some(SessionIo { stdin, replies: reply_rx }), None),
        (false, stdin) => (None, stdin.filter(|_| keep_stdin)),
        (true, None) => (None, None),
    };
    let entry = Arc::new(CellEntry {
        id: cell.id.clone(),
        provider: cell.provider.clone(),
        owner_uid,
        session,
        policy: policy.clone(),
        created: SystemTime::now(),
        started: cell.started,
        cgroup: cell.cgroup.clone(),
        events_seen: cell.events_seen(),
        payload_pid: cell.payload_pid,
        degraded: cell.degraded.clone(),
        spool,
        stderr: Mutex::new(stderr.map(|pipe| Arc::new(StderrPipe { pipe, buf: Mutex::new((vec![0u8; PUMP_MIN], 0)) }))),
        io: tokio::sync::Mutex::new(io),
        stdin: Arc::new(tokio::sync::Mutex::new(oneshot_stdin)),
        stdin_closed: Default::default(),
        last_activity: Mutex::new(Instant::now()),
        tap_order: Default::default(),
        busy: Default::default(),
        commands_written: Default::default(),
        stop: watch::channel(None).0,
        exit: watch::channel(None).0,
        cpu_sample: Mutex::new(None),
        output_done: watch::channel(false).0,
        events: Mutex::new(Events::default()),
        final_usage: Mutex::new(None),
        cgroup_lost: std::sync::atomic::AtomicBool::new(false),
        egress: cell.egress.clone(),
    });
    let watch = limit_hub.as_ref().map(|hub| entry.cgroup.watch_events(hub));
    match watch {
        Some(Ok(w)) => {
            tokio::spawn(watch_limits(entry.clone(), w));
        }
        Some(Err(e)) => tracing::warn!(cell = %entry.id, "limit events will only be seen when read: {e}"),
        None => {}
    }

    let out_pump =
        tokio::spawn(pump(entry.clone(), stdout, Stream::Stdout, framer.map(|f| (f, reply_tx)), tap.clone()));
    let err_pump = tokio::spawn(pump_stderr(entry.clone(), tap));
    let drained = entry.clone();
    tokio::spawn(async move {
        let _ = out_pump.await;
        let _ = err_pump.await;
        drained.spool.close();
        drained.output_done.send_replace(true);
    });

    let supervised = entry.clone();
    tokio::spawn(async move {
        let mut stop_rx = supervised.stop.subscribe();
        let mut kill_rx = supervised.stop.subscribe();
        let stop = async move {
            let requested = stop_rx.wait_for(|s| s.is_some()).await.map(|s| s.clone());
            match requested {
                Ok(s) => s.unwrap_or(Stop::Kill { reason: ExitReason::Terminated }),
                Err(_) => std::future::pending().await,
            }
        };
        let kill = async move {
            match kill_rx.wait_for(|s| matches!(s, Some(Stop::Kill { .. }))).await.map(|s| s.clone()) {
                Ok(Some(Stop::Kill { reason })) => reason,
                _ => std::future::pending().await,
            }
        };
        let outcome = cell.run_to_end(deadline, stop, kill).await;
        supervised.record_events(outcome.events);
        *supervised.final_usage.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome.usage);
        tracing::info!(cell = %outcome.cell, provider = %outcome.provider, reason = %outcome.reason, "cell ended");
        // The pool's part first (the slot released, the session forgotten), then the end is
        // announced: whoever waited for it (a `DELETE`, a one-shot's answer) may launch again
        // at once and find the slot free.
        on_end(&supervised, &outcome);
        supervised.exit.send_replace(Some((outcome.reason.clone(), Instant::now())));
        // An ended cell's stdin (a one-shot's, or a session's with its reply queue) is of no
        // use, and the entry stays listed for a while: close them now, not when it is forgotten.
        // (A session command still holding the FIFO lock finishes first; later ones see None.)
        let closing = supervised.clone();
        tokio::spawn(async move {
            drop(closing.stdin.lock().await.take());
            drop(closing.io.lock().await.take());
        });
    });
    entry
}

/// The cell's cgroup is gone or empty: the cell is ending (its processes exit, then the daemon
/// removes the cgroup), or its processes were moved out or its cgroup removed behind the
/// daemon's back while it runs — then say so and end it.
/// Returns whether the watch should stop.
async fn vanished_cgroup(entry: &Arc<CellEntry>) -> bool {
    let cg = entry.cgroup.clone();
    let intact = tokio::task::spawn_blocking(move || {
        cg.paths().iter().all(|p| p.exists()) && cg.procs().is_ok_and(|p| !p.is_empty())
    })
    .await
    .unwrap_or(true);
    if intact {
        return false;
    }
    // A cell that ends normally records its exit right after the daemon removed its cgroup.
    let mut exit = entry.exit.subscribe();
    if tokio::time::timeout(Duration::from_secs(2), exit.wait_for(|e| e.is_some())).await.is_ok() {
        return true;
    }
    tracing::error!(cell = %entry.id, provider = %entry.provider, "the cell's cgroup was removed behind the daemon's back; ending the cell");
    entry.cgroup_lost.store(true, std::sync::atomic::Ordering::SeqCst);
    entry.request_stop(Stop::Kill { reason: ExitReason::Terminated });
    true
}

/// Until the cell ends: wake on the kernel's limit-event notification and record the counters.
/// On v1 the OOM eventfd fires just before the OOM killer runs, so a wake-up with no visible
/// change is re-read a few times shortly after.
async fn watch_limits(entry: Arc<CellEntry>, mut watch: crate::cgroup::watch::EventWatch) {
    let mut exit = entry.exit.subscribe();
    loop {
        tokio::select! {
            _ = exit.wait_for(|e| e.is_some()) => return,
            r = watch.changed() => if let Err(e) = r {
                tracing::warn!(cell = %entry.id, "limit event watch failed: {e}");
                return;
            },
        }
        let before = *entry.events.lock().unwrap_or_else(|e| e.into_inner());
        for attempt in 0..5u64 {
            // A few small reads of cgroupfs files: cheap enough for the event loop.
            match entry.cgroup.events() {
                Ok(now) if now != before => {
                    entry.record_events(now);
                    break;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(10 * (attempt + 1))).await,
                Err(_) => break,
            }
        }
        // No counter moved, or the files are gone: maybe the cgroup itself went away.
        if vanished_cgroup(&entry).await {
            return;
        }
    }
}

/// Carry one output pipe into the spool until EOF; stdout of a session also goes through the
/// reply framer (`framing`). Never blocks on readers: the spool is bounded.
/// The stderr pump: reads the pipe whenever it is readable (sharing its reads with
/// [`CellEntry::catch_up_stderr`]), then hands the chunks to the tap, if any, outside the lock.
async fn pump_stderr(entry: Arc<CellEntry>, mut tap: Option<Tap>) {
    let Some(pipe) = entry.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone() else { return };
    loop {
        // Readable, or (holding a cut character) nothing more within HOLD_CUT: then the held
        // bytes go as they are.
        let held_out = if pipe.holds() {
            match tokio::time::timeout(HOLD_CUT, pipe.pipe.readable()).await {
                Ok(Err(_)) => break,
                Ok(Ok(())) => false,
                Err(_) => true,
            }
        } else if pipe.pipe.readable().await.is_err() {
            break;
        } else {
            false
        };
        // One read per wake-up, then the tap (which may make us wait for its reader); with a
        // tap, both under the tap's order lock (see `CellEntry::tap_order`).
        let _order = match &tap {
            Some(_) => Some(entry.tap_order.lock().await),
            None => None,
        };
        let (chunks, end) =
            if held_out { (pipe.flush_held(&entry.spool), false) } else { pipe.read_ready(&entry.spool, 1, false) };
        for ev in chunks {
            if let Some(t) = &tap {
                if t.send(ev).await.is_err() {
                    tap = None;
                }
            }
        }
        if end {
            break;
        }
    }
    entry.stderr.lock().unwrap_or_else(|e| e.into_inner()).take();
}

async fn pump(
    entry: Arc<CellEntry>,
    pipe: Option<CellOutput>,
    stream: Stream,
    mut framing: Option<(Framer, mpsc::Sender<Result<Reply, SessionError>>)>,
    mut tap: Option<Tap>,
) {
    let Some(mut pipe) = pipe else { return };
    // Small while the cell is quiet (most idle cells print a prompt at most); doubled up to
    // PUMP_MAX each time a read fills it, so a flood is still read in large chunks.
    let mut buf = vec![0u8; PUMP_MIN];
    let mut commands_seen = 0;
    // The start of a UTF-8 character a read cut off (at most 3 bytes, at the front of `buf`):
    // delivered with the rest of it, after the next read (see `session::utf8_cut_tail`).
    let mut held = 0;
    loop {
        let read = if held > 0 {
            match tokio::time::timeout(HOLD_CUT, pipe.read(&mut buf[held..])).await {
                Ok(read) => read,
                Err(_) => {
                    let rest = buf[..held].to_vec();
                    deliver(&entry, stream, &rest, &mut tap, &mut framing, &mut commands_seen).await;
                    held = 0;
                    continue;
                }
            }
        } else {
            pipe.read(&mut buf).await
        };
        match read {
            Ok(0) | Err(_) => {
                let rest = buf[..held].to_vec();
                deliver(&entry, stream, &rest, &mut tap, &mut framing, &mut commands_seen).await;
                break;
            }
            Ok(n) => {
                let filled = held + n;
                if filled == buf.len() && buf.len() < PUMP_MAX {
                    let grown = buf.len() * 2;
                    // Appends: the bytes just read stay where they are.
                    buf.resize(grown, 0);
                }
                let whole = filled - crate::session::utf8_cut_tail(&buf[..filled]);
                if whole > 0 {
                    deliver(&entry, stream, &buf[..whole], &mut tap, &mut framing, &mut commands_seen).await;
                    buf.copy_within(whole..filled, 0);
                }
                held = filled - whole;
            }
        }
    }
}

/// One chunk of a pump's pipe: into the spool, to the tap (a streamed one-shot's reader), and
/// through the session's framer.
async fn deliver(
    entry: &CellEntry,
    stream: Stream,
    chunk: &[u8],
    tap: &mut Option<Tap>,
    framing: &mut Option<(Framer, mpsc::Sender<Result<Reply, SessionError>>)>,
    commands_seen: &mut u64,
) {
    if chunk.is_empty() {
        return;
    }
    if let Some(t) = tap.as_ref() {
        let _order = entry.tap_order.lock().await;
        let offset = entry.spool.push(stream, chunk);
        let data = bytes::Bytes::copy_from_slice(chunk);
        if t.send(OutputEvent::Data { stream, offset, data }).await.is_err() {
            *tap = None;
        }
    } else {
        entry.spool.push(stream, chunk);
    }
    if let Some((framer, replies)) = framing.as_mut() {
        // Only while a command is in flight is a reply kept whole and queued: one
        // nobody asked for is held at most IDLE_KEEP bytes by the framer and
        // dropped here, so a session printing unrequested output cannot make the
        // daemon hold or copy it. A full queue drops too rather than block the
        // pump; `send` discards stale replies before writing its command.
        let wanted = entry.is_busy();
        // A command written since the last read: these bytes may be its reply
        // (`exchange` counts the command before writing it, so a read holding
        // its output always sees the count).
        let written = entry.commands_written.load(std::sync::atomic::Ordering::SeqCst);
        if written != *commands_seen {
            *commands_seen = written;
            framer.command_written();
        }
        for reply in framer.push(chunk, wanted) {
            if wanted {
                let _ = replies.try_send(reply);
            }
        }
    }
}
