//! The pool's operations, one per API call. Each authorises first, touches shared state only
//! in short critical sections, and leaves every slow step (launch, wait, cgroup I/O) to tasks
//! or the blocking pool.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::policy::{CommandVia, Mode, Policy};
use crate::sandbox::{ExitReason, LaunchRequest, StdioMode, Stop};
use crate::session::{Framer, OutputEvent, Stream, Subscription};

use super::cell::{self, CellEntry};
use super::{
    Caller, CellHealth, CellInfo, CommandResult, Count, DaemonHealth, LimitsView, ListFilter, Pool, PoolError,
};
use super::{SendRequest, SessionRequest, SpawnRequest, DEFAULT_COMMAND_TIMEOUT, MAX_REPLY_BYTES};

/// How long after a one-shot served by a pre-built cell ended its replacement is started
/// (the answer goes out first).
const REFILL_AFTER_END: Duration = Duration::from_millis(5);

/// What a launch needs besides the policy (owned: the launch runs in a task of its own).
pub(super) struct Launch {
    pub caller: Caller,
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    pub args: Vec<String>,
    pub session: bool,
    pub wait_for_slot: Option<Duration>,
    /// One-shot: a command timeout (ends it as `timed_out`, like the wall time).
    pub timeout: Option<Duration>,
    /// One-shot: give it a stdin pipe (written with `write_stdin`) instead of /dev/null.
    pub stdin: bool,
    pub tap: Option<cell::Tap>,
}

/// The part of a caller's environment the policy passes to the cell: what a session is
/// keyed by (a variable the cell never sees does not make another session).
fn passed_env(policy: &Policy, mut env: BTreeMap<String, String>) -> BTreeMap<String, String> {
    env.retain(|name, _| policy.env.pass.iter().any(|p| p == name));
    env
}

/// `command_via = "stdin"`: a one-shot's command (its one argument) is taken out of the argv
/// and returned, to be written to the program's stdin. Anything else is left for
/// `caller_argv`, which refuses caller arguments under this setting.
fn stdin_command(policy: &Policy, l: &mut Launch) -> Option<Vec<u8>> {
    if policy.command_via != CommandVia::Stdin || l.session || l.args.len() != 1 {
        return None;
    }
    l.args.pop().map(String::into_bytes)
}

/// Write a one-shot's command to its stdin; then close it, or, for a one-shot started with
/// `stdin: true`, leave it to the caller, whose input follows the command. The stdin lock is
/// taken before the cell is registered and held until the command is written, so no
/// caller's `write_stdin` can come first. A program that exits or closes its stdin without
/// reading it all ends the write (EPIPE), as does the cell's end.
fn feed_stdin(entry: &Arc<CellEntry>, input: Vec<u8>, keep: bool) {
    let Ok(mut stdin) = entry.stdin.clone().try_lock_owned() else {
        tracing::warn!(cell = %entry.id, "the stdin pipe is in use; the command was not written");
        return;
    };
    tokio::spawn(async move {
        let written = match stdin.as_mut() {
            Some(pipe) => pipe.write_all(&input).await.and(pipe.flush().await).is_ok(),
            None => false,
        };
        if !(keep && written) {
            if let Some(mut pipe) = stdin.take() {
                let _ = pipe.shutdown().await;
            }
        }
    });
}

/// How long a session whose stdin or stdout closed gets to exit by itself before it is ended.
const CLOSED_SESSION_EXIT: Duration = Duration::from_millis(500);

/// How long a session command's error waits for its cell's end and last output (a kill at the
/// command's timeout takes milliseconds) before it answers with what is in the spool.
const PARTIAL_OUTPUT_WAIT: Duration = Duration::from_millis(500);

impl Launch {
    /// The session this launch starts is found again by (see [`super::SessionKey`]).
    fn session_key(&self, provider: &str) -> super::SessionKey {
        super::SessionKey {
            provider: provider.to_owned(),
            uid: self.caller.uid,
            cwd: self.cwd.components().collect(),
            env: self.env.clone(),
        }
    }
}

pub(super) fn is_resource_limit(reason: &ExitReason) -> bool {
    matches!(reason, ExitReason::OomKilled | ExitReason::PidsLimited | ExitReason::FileSizeLimited)
}

/// One launch request under way, from its arrival (before it waits for anything: a session's
/// gate, its caller's share, a slot) until its cell is registered or it failed: counted in
/// `Inner::launching` for as long as it lives, with the number of the cleanups so far when it
/// arrived. A cleanup after that number that covers it ends its cell as it is registered (see
/// `Pool::launch_whole`).
pub(super) struct Begun {
    pool: Pool,
    cleanups_before: u64,
}

impl Pool {
    /// A launch request arrived: count it under way, then note the cleanups so far.
    pub(super) fn begin_launch(&self) -> Begun {
        // Counted under way before it notes the number: a cleanup that finds no launch under
        // way forgets the older ones (see `State::record_cleanup`).
        self.inner.launching.send_modify(|n| *n += 1);
        let cleanups_before = self.state().cleanup_seq;
        Begun { pool: self.clone(), cleanups_before }
    }
}

impl Drop for Begun {
    fn drop(&mut self) {
        self.pool.inner.launching.send_modify(|n| *n -= 1);
    }
}

/// How long a health request waits for a cell whose cgroup is gone to record its end (longer
/// than the cell's own watch waits before it calls the cgroup lost: `cell::vanished_cgroup`).
const CGROUP_GONE_GRACE: Duration = Duration::from_secs(3);

impl Pool {
    /// Reserve a slot, launch, register; the slot is released when the cell's cgroup is gone.
    ///
    /// Not cancelled with its caller: a client that hangs up mid-request drops the request's
    /// future, and a launch dropped halfway would leave what it had made so far (a cgroup, a
    /// helper, an id lease) owned by nobody. So the launch runs in a task of its own and always
    /// ends in one of its two complete states: registered (the cell runs and ends like any
    /// other; a one-shot keeps its output for `get`/`logs`) or failed and torn down.
    ///
    /// Only the wait for a slot (`wait_for_slot_ms`) ends with the caller: a command whose
    /// client left before it got a slot is not run.
    ///
    /// `begun`: made as the request arrived ([`Pool::begin_launch`]).
    pub(super) async fn launch(
        &self,
        policy: Arc<Policy>,
        l: Launch,
        begun: Begun,
    ) -> Result<Arc<CellEntry>, PoolError> {
        self.detached(move |pool, left| async move { pool.launch_whole(policy, l, begun, &left).await }).await
    }

    /// Run `work` in a task of its own, which the caller's future only awaits: dropping that
    /// future (a client that hung up) does not stop it, but cancels the token it is given.
    async fn detached<T, F>(
        &self,
        work: impl FnOnce(Pool, tokio_util::sync::CancellationToken) -> F,
    ) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, PoolError>> + Send + 'static,
    {
        let left = tokio_util::sync::CancellationToken::new();
        let _caller = left.clone().drop_guard();
        tokio::spawn(work(self.clone(), left))
            .await
            .map_err(|e| PoolError::Internal(format!("the launch task failed: {e}")))?
    }

    async fn launch_whole(
        &self,
        policy: Arc<Policy>,
        mut l: Launch,
        begun: Begun,
        left: &tokio_util::sync::CancellationToken,
    ) -> Result<Arc<CellEntry>, PoolError> {
        let cleanups_before = begun.cleanups_before;
        let input = stdin_command(&policy, &mut l);
        let framer = if l.session { Some(Framer::new(&policy.session, MAX_REPLY_BYTES)?) } else { None };
        let session_key = l.session.then(|| l.session_key(&policy.name));
        let req = LaunchRequest {
            cell_id: uuid::Uuid::now_v7().simple().to_string(),
            args: l.args,
            cwd: l.cwd,
            caller_uid: l.caller.uid,
            caller_gid: l.caller.gid,
            caller_groups: l.caller.groups.clone(),
            caller_env: l.env,
            range_uid: None,
        };
        let stdin = l.session || l.stdin || input.is_some();
        let limit = [policy.limits.wall_time, l.timeout].into_iter().flatten().min();
        // A request refused anyway hears why (400), not "no room" (429) — nor after waiting
        // for room: checked first when the caller's share or the pool is full.
        if self.uid_share_full(&l.caller) {
            self.inner.launcher.check(&policy, &req)?;
        }
        // The caller's share first (a uid at its bound waits for one of its own cells), then
        // a slot of the pool, both within the one wait asked for; the cell holds both until
        // it ends.
        let until = l.wait_for_slot.map(|w| Instant::now() + w);
        let share = self.claim_uid_share(&l.caller, until, left).await?;
        let (cell, slot, warm) = match self.launch_warm(&policy, &req, stdin).await? {
            Some((cell, slot)) => (cell, slot, true),
            None => {
                if self.is_full() {
                    self.inner.launcher.check(&policy, &req)?;
                }
                let wait = until.map(|t| t.saturating_duration_since(Instant::now()));
                let slot = self.reserve_slot(wait, left).await?;
                let stdio = if stdin { StdioMode::Piped } else { StdioMode::NullInPiped };
                (self.inner.launcher.launch(&policy, req, stdio).await?, slot, false)
            }
        };
        let provider = policy.name.clone();
        let pool = self.clone();
        let registered = session_key.clone();
        let on_end = move |entry: &Arc<CellEntry>, _: &crate::sandbox::Outcome| {
            // The slot this cell frees may bring back pre-built cells: the one a one-shot was
            // served by, or ones given up at the cap for it. Once the cell is gone and its
            // answer on its way, so the build (forks, namespaces, mounts: a few ms of CPU) does
            // not compete with the command it was built for (measured on 2 cores: 6.7–7.1 ms a
            // one-shot with the refill started at once, 5.4–5.9 ms started after); a request
            // waiting for a slot is woken at once and takes it first.
            {
                let pool = pool.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(REFILL_AFTER_END).await;
                    pool.refill_all();
                });
            }
            if let Some(key) = &registered {
                let mut st = pool.state();
                if st.sessions.get(key) == Some(&entry.id) {
                    st.sessions.remove(key);
                }
            }
            pool.release_slot();
            drop(share);
            // The reaper plans the retention of the exited cell once its end is recorded
            // (just after this returns).
            let (wake, ended) = (pool.inner.reaper_wake.clone(), entry.clone());
            tokio::spawn(async move {
                ended.ended().await;
                wake.notify_one();
            });
        };
        // The clock starts at launch, as the wall time always did.
        let wiring = cell::Wiring {
            framer,
            deadline: limit.map(|d| Instant::now() + d),
            tap: l.tap,
            keep_stdin: l.stdin || input.is_some(),
            spool_dir: self.inner.config.spool_dir.clone(),
            limit_hub: self.inner.limit_hub.clone(),
        };
        let entry = cell::start(cell, l.caller.uid, l.session, policy, wiring, on_end);
        if let Some(input) = input {
            feed_stdin(&entry, input, l.stdin);
        }
        slot.commit();
        let cleaned = {
            // Registered with its session in one step: a client that left mid-launch leaves a
            // session the next request finds, not a second one. Under the same lock as a
            // cleanup's look at the cells: either the cleanup saw this cell, or this sees the
            // cleanup.
            let mut st = self.state();
            st.cells.insert(entry.id.clone(), entry.clone());
            let cleaned = st.cleaned_since(cleanups_before, &provider, l.caller.uid);
            if let (Some(key), false) = (session_key, cleaned) {
                st.sessions.insert(key, entry.id.clone());
            }
            cleaned
        };
        if cleaned {
            // A cleanup of this provider came while the launch was under way (waiting for a
            // slot it may have freed): the cell ends at once, as the cleanup's others did.
            entry.request_stop(Stop::Kill { reason: ExitReason::Terminated });
            self.inner.reaper_wake.notify_one();
            let reason = entry.ended().await;
            return Err(PoolError::AlreadyEnded { cell: entry.id.clone(), reason });
        }
        self.inner.reaper_wake.notify_one();
        if warm && l.session {
            // A session lives on: replace the pre-built cell it took now.
            self.refill(&provider);
        }
        Ok(entry)
    }

    /// The launch by a pre-built cell, if the provider keeps them and one fits (with the slot
    /// it held); `None`: launch cold. A request the policy refuses is refused here as a cold
    /// launch would refuse it.
    async fn launch_warm(
        &self,
        policy: &Arc<Policy>,
        req: &LaunchRequest,
        stdin: bool,
    ) -> Result<Option<(crate::sandbox::Cell, super::SlotGuard)>, PoolError> {
        use crate::sandbox::Activation;
        if policy.prewarm == 0 {
            return Ok(None);
        }
        let Some(warm) = self.take_warm(policy, stdin) else {
            tracing::info!(provider = %policy.name, stdin, "no pre-built cell waiting, launching cold");
            self.refill(&policy.name);
            return Ok(None);
        };
        let super::warm::Warm { policy: built_for, cell } = warm;
        let activated = self.inner.launcher.activate(cell, policy, req.clone()).await;
        match activated {
            Ok(cell) => {
                self.inner.warm_served.fetch_add(1, Ordering::Relaxed);
                Ok(Some((cell, super::SlotGuard { pool: Some(self.clone()) })))
            }
            Err(Activation::Refused(e, cell)) => {
                self.put_back(super::warm::Warm { policy: built_for, cell }).await;
                Err(e.into())
            }
            Err(Activation::Unfit(why, cell)) => {
                let why = super::error::escape_controls(&why.to_string()).into_owned();
                tracing::info!(provider = %policy.name, "a pre-built cell does not fit this request, launching cold: {why}");
                self.put_back(super::warm::Warm { policy: built_for, cell }).await;
                Ok(None)
            }
            Err(Activation::Failed(e)) => {
                let e = super::error::escape_controls(&e.to_string()).into_owned();
                tracing::warn!(provider = %policy.name, "a pre-built cell failed its request, launching cold: {e}");
                self.release_slot();
                self.refill(&policy.name);
                Ok(None)
            }
        }
    }

    pub async fn spawn(&self, caller: &Caller, req: SpawnRequest) -> Result<CellInfo, PoolError> {
        let policy = self.provider(caller, &req.provider)?;
        let begun = self.begin_launch();
        let is_session = policy.mode == Mode::Session;
        if let Some(want) = req.session {
            if want != is_session {
                return Err(PoolError::BadRequest(format!(
                    "provider {} is {}; session = {want} does not match its policy",
                    req.provider,
                    if is_session { "a session provider" } else { "one-shot" }
                )));
            }
        }
        // A session is registered under the cwd and env it runs with (see `session`).
        let (cwd, env) = if is_session {
            (self.resolved_cwd(&policy, caller, req.cwd).await?, passed_env(&policy, req.env))
        } else {
            (req.cwd, req.env)
        };
        let l = Launch {
            caller: caller.clone(),
            cwd,
            env,
            args: req.args,
            session: is_session,
            wait_for_slot: req.wait_for_slot_ms.map(Duration::from_millis),
            timeout: None,
            stdin: false,
            tap: None,
        };
        Ok(self.launch(policy, l, begun).await?.info())
    }

    /// The caller's live session of `provider`, started if there is none. A dead session is
    /// replaced, never handed out.
    pub async fn session(&self, caller: &Caller, provider: &str, req: SessionRequest) -> Result<CellInfo, PoolError> {
        let policy = self.provider(caller, provider)?;
        if policy.mode != Mode::Session {
            return Err(PoolError::BadRequest(format!("provider {provider} is one-shot, not a session provider")));
        }
        // Begun as it arrives, before it waits for the key's gate (behind another start of the
        // same session that may wait for a slot): a cleanup from now on reaches it too.
        let begun = self.begin_launch();
        let l = Launch {
            caller: caller.clone(),
            cwd: self.resolved_cwd(&policy, caller, req.cwd).await?,
            env: passed_env(&policy, req.env),
            args: Vec::new(),
            session: true,
            wait_for_slot: req.wait_for_slot_ms.map(Duration::from_millis),
            timeout: None,
            stdin: false,
            tap: None,
        };
        let key = l.session_key(provider);
        // A live session is handed out without waiting behind another caller's launch.
        if let Some(entry) = self.live_session(&key, &policy) {
            return Ok(entry.info());
        }
        // Get-or-start runs in a task of its own, holding the key's gate until the new session
        // is registered (by the launch itself, see `launch_whole`): a caller that leaves
        // mid-launch neither lets a second session start nor leaves the first unregistered.
        // One gate per key: a start waiting for a slot holds up no other key's start.
        self.detached(move |pool, left| async move {
            let gate = pool.session_gate(&key);
            let held = gate.lock().await;
            let result = match pool.live_session(&key, &policy) {
                Some(entry) => Ok(entry.info()),
                None => pool.launch_whole(policy, l, begun, &left).await.map(|e| e.info()),
            };
            drop(held);
            pool.release_session_gate(&key, gate);
            result
        })
        .await
    }

    /// The gate of one session key (made on first use; see [`Pool::release_session_gate`]).
    fn session_gate(&self, key: &super::SessionKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.inner.session_gates.lock().unwrap_or_else(|e| e.into_inner());
        gates.entry(key.clone()).or_default().clone()
    }

    /// Forget a key's gate once no start holds or waits for it.
    fn release_session_gate(&self, key: &super::SessionKey, gate: Arc<tokio::sync::Mutex<()>>) {
        let mut gates = self.inner.session_gates.lock().unwrap_or_else(|e| e.into_inner());
        // The map's reference and ours: nobody else is using it.
        if Arc::strong_count(&gate) == 2 {
            gates.remove(key);
        }
    }

    /// The live session of this key to hand out, if any: not one being stopped, and one started
    /// under the provider's current policy (after a reload that changed it, a new session
    /// starts; the old one keeps running until it ends). Handing it out is activity: its idle
    /// clock restarts, so it is not reaped under the caller about to use it.
    fn live_session(&self, key: &super::SessionKey, policy: &Arc<Policy>) -> Option<Arc<CellEntry>> {
        let st = self.state();
        let entry = st
            .sessions
            .get(key)
            .and_then(|id| st.cells.get(id))
            .filter(|e| e.exit_reason().is_none() && e.stop.borrow().is_none() && Arc::ptr_eq(&e.policy, policy))
            .cloned()?;
        entry.touch();
        Some(entry)
    }

    /// The caller's cwd as the cell will see it (symlinks resolved, with the caller's own
    /// rights): sessions are found by it, so a link re-pointed elsewhere names another session.
    async fn resolved_cwd(&self, policy: &Arc<Policy>, caller: &Caller, cwd: PathBuf) -> Result<PathBuf, PoolError> {
        let (policy, who) = (
            policy.clone(),
            crate::sandbox::sys::FsIdentity { uid: caller.uid, gid: caller.gid, groups: caller.groups.clone() },
        );
        tokio::task::spawn_blocking(move || crate::sandbox::plan::resolve_cwd(&policy, &cwd, &who))
            .await
            .map_err(|e| PoolError::Internal(format!("resolving the cwd: {e}")))?
            .map_err(PoolError::from)
    }

    /// A command's timeout: the one asked for, else the policy's wall time, else the default.
    /// Zero is refused (it would end the command, and a session with it, before it started).
    pub(super) fn command_timeout(policy: &Policy, asked: Option<u64>) -> Result<Duration, PoolError> {
        if asked == Some(0) {
            return Err(PoolError::BadRequest(
                "timeout_ms must be at least 1 (leave it out for the policy's wall time or the default)".into(),
            ));
        }
        Ok(asked.map(Duration::from_millis).or(policy.limits.wall_time).unwrap_or(DEFAULT_COMMAND_TIMEOUT))
    }

    /// Send one command to a session: written to stdin as one line, answered by exactly one
    /// framed reply. Commands to the same session queue in order.
    ///
    /// The exchange runs in a task of its own, not in the caller's request: a client that
    /// leaves once its command was written does not end the exchange. The command keeps its
    /// place until its reply arrives (logged, and in the cell's output stream like all
    /// output) or its timeout ends the cell, so the next command is written only after it and
    /// is answered only by its own reply. A client that leaves while its command still waits
    /// for its turn takes the command with it: it is never sent (nobody would read its reply,
    /// and the commands behind it would wait for it).
    pub async fn send(&self, caller: &Caller, id: &str, req: SendRequest) -> Result<CommandResult, PoolError> {
        let entry = self.cell(caller, id)?;
        if !entry.session {
            return Err(PoolError::NotSession { cell: id.to_owned(), provider: entry.provider.clone() });
        }
        // Access is checked again with the policy in force: a caller a reload took off the
        // provider's access list sends nothing more to its sessions. (A provider a reload removed
        // leaves its live cells running, as documented.)
        if let Err(e @ PoolError::Forbidden { .. }) = self.provider(caller, &entry.provider) {
            return Err(e);
        }
        if req.command.contains('\n') {
            return Err(PoolError::BadRequest("a session command is one line: it must not contain a newline".into()));
        }
        let timeout = Self::command_timeout(&entry.policy, req.timeout_ms)?;
        let (answer, answered) = tokio::sync::oneshot::channel();
        let pool = self.clone();
        let left = tokio_util::sync::CancellationToken::new();
        let _caller = left.clone().drop_guard();
        tokio::spawn(async move {
            let result = pool.exchange(&entry, req.command, timeout, &left).await;
            if let Err(unclaimed) = answer.send(result) {
                match unclaimed {
                    Ok(r) => tracing::info!(cell = %r.cell, provider = %entry.provider, bytes = r.stdout.len(),
                        "reply to a command whose client left (kept in the cell's output stream)"),
                    Err(e) => tracing::info!(cell = %entry.id, provider = %entry.provider,
                        "command whose client left ended without a reply: {e}"),
                }
            }
        });
        answered.await.unwrap_or_else(|_| {
            Err(PoolError::Internal(format!("cell {id}: the command's task ended without an answer")))
        })
    }

    /// One command's turn on a session: wait for the session (earlier commands finish first),
    /// drop replies nobody asked for, write the line, wait for its reply.
    async fn exchange(
        &self,
        entry: &Arc<CellEntry>,
        command: String,
        timeout: Duration,
        left: &tokio_util::sync::CancellationToken,
    ) -> Result<CommandResult, PoolError> {
        let id = entry.id.as_str();
        let started = Instant::now();
        let _busy = Busy::new(entry);
        // The timeout covers the wait behind earlier commands too: a command queued behind a
        // hung one gives up at its own timeout, unsent, and leaves the session as it is.
        let turn = tokio::select! {
            turn = tokio::time::timeout(timeout, entry.io.lock()) => turn,
            () = left.cancelled() => {
                return Err(PoolError::Internal(format!(
                    "cell {id}: the client left while the command waited for its turn; it was not sent"
                )));
            }
        };
        let Ok(mut session) = turn else {
            return Err(PoolError::QueueTimeout { cell: id.to_owned(), timeout_ms: timeout.as_millis() as u64 });
        };
        // A session that ended before this command was written: the command never ran, so
        // the answer is the cell's end (`already_ended`, with its reason), not an error of this
        // command ("oom_killed while the command ran" about a cell that died idle).
        // The daemon's shutdown ended it: say so (`shutting_down`, on which the old manager's
        // callers retry elsewhere).
        let unsent = |reason: ExitReason| {
            if reason == ExitReason::Terminated && self.inner.shutting_down.load(Ordering::SeqCst) {
                PoolError::ShuttingDown
            } else {
                PoolError::AlreadyEnded { cell: id.to_owned(), reason }
            }
        };
        let Some(io) = session.as_mut() else {
            return Err(unsent(entry.ended().await));
        };
        // Being stopped (reaped idle, killed, shut down) between the caller's look and now:
        // the command is not written to a session on its way out.
        // Answered at once, with the reason the stop gives (a graceful stop may take its whole
        // grace period: not waited for here, with the session's lock held).
        let stopping = entry.stop.borrow().as_ref().map(|stop| match stop {
            Stop::Graceful { reason, .. } | Stop::Kill { reason } => reason.clone(),
        });
        if let Some(reason) = stopping.or_else(|| entry.exit_reason()) {
            return Err(unsent(reason));
        }
        // Replies that arrived while no command was waiting (a banner) belong to nobody:
        // discard them so they cannot be taken as ours.
        while io.replies.try_recv().is_ok() {}
        // Likewise stderr written before this command (still in the pipe) is not its own.
        entry.catch_up_stderr();
        // Where this command's output starts in the spool (both streams).
        let (_, from) = entry.spool.kept();
        let mut line = command.into_bytes();
        line.push(b'\n');
        entry.commands_written.fetch_add(1, Ordering::SeqCst);
        let exchange = async {
            io.stdin.write_all(&line).await.map_err(|_| None)?;
            io.stdin.flush().await.map_err(|_| None)?;
            match io.replies.recv().await {
                Some(Ok(reply)) => Ok(reply),
                Some(Err(e)) => Err(Some(PoolError::Session(e))),
                None => Err(None),
            }
        };
        let timed_out = || PoolError::Timeout { cell: id.to_owned(), timeout_ms: timeout.as_millis() as u64 };
        // Written: the command has its whole timeout from now (a command let through the
        // queue with little time left would otherwise time out and take a healthy session
        // with it).
        let deadline = tokio::time::Instant::now() + timeout;
        let reply = match tokio::time::timeout_at(deadline, exchange).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(Some(e))) => return Err(e),
            Ok(Err(None)) => {
                // stdin or stdout closed: this session can never answer again. Nobody may
                // write to it any more (the next command gets its end, not a stray reply).
                // A program that is exiting gets a moment to do so (its own exit reason is
                // the answer); one that lingers without its stdout is ended at once.
                *session = None;
                let moment = deadline.saturating_duration_since(tokio::time::Instant::now()).min(CLOSED_SESSION_EXIT);
                let ended = match tokio::time::timeout(moment, self.ended_error(entry)).await {
                    Ok(e) => e,
                    Err(_) => {
                        entry.request_stop(Stop::Kill { reason: ExitReason::Terminated });
                        self.ended_error(entry).await
                    }
                };
                // The session's wall time ran out under the command: a timeout, as for a
                // one-shot, saying it was the cell's wall time (not the command's timeout).
                let error = match ended {
                    PoolError::Ended { cell, reason: ExitReason::TimedOut } => match entry.policy.limits.wall_time {
                        Some(wall) => PoolError::WallTime {
                            cell,
                            provider: entry.policy.name.clone(),
                            wall_ms: wall.as_millis() as u64,
                        },
                        None => PoolError::Timeout { cell, timeout_ms: timeout.as_millis() as u64 },
                    },
                    // Ended by the daemon's shutdown: say so (the old manager's callers retry
                    // elsewhere on it), not that the session died.
                    PoolError::Ended { reason: ExitReason::Terminated, .. }
                        if self.inner.shutting_down.load(Ordering::SeqCst) =>
                    {
                        PoolError::ShuttingDown
                    }
                    other => other,
                };
                return Err(Self::with_partial(entry, error, from, started).await);
            }
            Err(_) => {
                // The session is taken away before the lock is released: output the dying
                // process still writes cannot be framed as the next command's reply.
                *session = None;
                entry.request_stop(Stop::Kill { reason: ExitReason::TimedOut });
                return Err(Self::with_partial(entry, timed_out(), from, started).await);
            }
        };
        entry.touch();
        // The limit events the command lived through, read as its reply arrived (not from the
        // watch, which may not have seen a kill of this command yet): its, not a reason for
        // the session's later end. A kill landing after this read still counts as one.
        let events = entry.read_events().await;
        entry.account_events(events);
        // What the program wrote to stderr before its reply may still sit in the pipe.
        entry.catch_up_stderr();
        let (stderr, lagged) = drain_ready(entry.spool.subscribe(Some(from)), Stream::Stderr);
        let mut result = CommandResult::new(id, &reply.body, &stderr);
        // Output past the spool's size (`output_bytes`) pushed some of the command's stderr out.
        result.truncated = lagged;
        result.duration_ms = started.elapsed().as_millis() as u64;
        result.usage = entry.usage_now().await;
        result.events = events;
        Ok(result)
    }

    /// `error` of a session command that got no reply, with what the command printed so far
    /// (both streams from `from`, where its output began), as a one-shot's error carries its
    /// result: the stderr of a crash comes with the answer, not from a later read of the
    /// cell's output. Waits briefly for the end of a cell being killed (its last output).
    async fn with_partial(entry: &CellEntry, error: PoolError, from: u64, started: Instant) -> PoolError {
        let _ = tokio::time::timeout(PARTIAL_OUTPUT_WAIT, async {
            entry.ended().await;
            entry.output_drained().await;
        })
        .await;
        entry.catch_up_stderr();
        let (stdout, lost_out) = drain_ready(entry.spool.subscribe(Some(from)), Stream::Stdout);
        let (stderr, lost_err) = drain_ready(entry.spool.subscribe(Some(from)), Stream::Stderr);
        let mut result = CommandResult::new(&entry.id, &stdout, &stderr);
        result.truncated = lost_out || lost_err;
        result.exit = entry.exit_reason();
        result.duration_ms = started.elapsed().as_millis() as u64;
        result.usage = entry.usage_now().await;
        result.events = entry.events_now();
        PoolError::WithResult { error: Box::new(error), result: Box::new(result) }
    }

    /// The error for a command whose session ended under it.
    async fn ended_error(&self, entry: &CellEntry) -> PoolError {
        let reason = entry.ended().await;
        if is_resource_limit(&reason) {
            PoolError::ResourceLimit { cell: entry.id.clone(), reason }
        } else {
            PoolError::Ended { cell: entry.id.clone(), reason }
        }
    }

    /// End a running cell (gracefully, or at once with `force`) and wait until it is gone.
    /// A cell that already ended but is still listed is `already_ended` (409) with its reason.
    pub async fn terminate(&self, caller: &Caller, id: &str, force: bool) -> Result<CellInfo, PoolError> {
        let entry = self.cell(caller, id)?;
        if let Some(reason) = entry.exit_reason() {
            return Err(PoolError::AlreadyEnded { cell: id.to_owned(), reason });
        }
        entry.request_stop(if force {
            Stop::Kill { reason: ExitReason::Terminated }
        } else {
            Stop::Graceful { grace: self.inner.config.grace, reason: ExitReason::Terminated }
        });
        entry.ended().await;
        Ok(entry.info())
    }

    pub fn get(&self, caller: &Caller, id: &str) -> Result<CellInfo, PoolError> {
        Ok(self.cell(caller, id)?.info())
    }

    /// Whether `provider` is served to `caller`: any provider served, to root and admins; one
    /// it may use, to anyone else (what health shows it). A provider not served to a caller
    /// that has no cells of it is `unknown_provider` to `list` and `cleanup_provider`, as one
    /// that does not exist.
    fn serves(&self, caller: &Caller, admin: bool, provider: &str) -> bool {
        if admin {
            self.policies().contains_key(provider)
        } else {
            self.provider(caller, provider).is_ok()
        }
    }

    /// The cells the caller may see (every cell for root and admins), running or, with `all`,
    /// ended too.
    ///
    /// A `provider` filter must name a provider: `""` is `bad_request`, and one the caller
    /// neither may use nor has cells of is `unknown_provider`, as for cleanup (an empty list
    /// would say "no cells" of a typo).
    pub fn list(&self, caller: &Caller, filter: &ListFilter) -> Result<Vec<CellInfo>, PoolError> {
        let admin = self.is_admin(caller);
        if let Some(p) = filter.provider.as_deref() {
            if p.is_empty() {
                return Err(PoolError::BadRequest(
                    "provider = \"\" names no provider: leave it out to list every provider".into(),
                ));
            }
            let served = self.serves(caller, admin, p);
            let has_cells =
                self.state().cells.values().any(|e| e.provider == p && (admin || e.owner_uid == caller.uid));
            if !served && !has_cells {
                return Err(PoolError::UnknownProvider { name: p.to_owned() });
            }
        }
        let mut cells: Vec<CellInfo> = self
            .state()
            .cells
            .values()
            .filter(|e| admin || e.owner_uid == caller.uid)
            .filter(|e| filter.provider.as_deref().is_none_or(|p| p == e.provider))
            .filter(|e| filter.all || e.exit_reason().is_none())
            .map(|e| e.info_with(false))
            .collect();
        cells.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(cells)
    }

    /// A reader of the cell's output from `from` (default: the oldest byte kept). An offset past
    /// the end so far is refused: the bytes up to it would be skipped, unannounced.
    pub fn output(&self, caller: &Caller, id: &str, from: Option<u64>) -> Result<Subscription, PoolError> {
        let entry = self.cell(caller, id)?;
        let (_, end) = entry.spool.kept();
        if let Some(from) = from.filter(|f| *f > end) {
            return Err(PoolError::BadRequest(format!(
                "cell {id}: from = {from} is past the end of its output so far ({end} bytes); ask for at most {end}"
            )));
        }
        Ok(entry.spool.subscribe(from))
    }

    /// End every running cell of a provider (the caller's own unless admin), and every launch
    /// of it under way that it would end as a cell (see `launch_whole`); the count.
    ///
    /// Root and admins clean up any provider served, or one a reload removed that still has
    /// cells. Anyone else cleans up a provider they may use, or one they have cells of (taken
    /// off its access list, or removed, by a reload: they know of it, and may end their own
    /// cells); any other provider is `unknown_provider`, as one that does not exist — health
    /// hides the providers a caller may not use, so this must not tell them apart — and
    /// nothing is recorded.
    pub async fn cleanup_provider(&self, caller: &Caller, provider: &str) -> Result<Count, PoolError> {
        let admin = self.is_admin(caller);
        let served = self.serves(caller, admin, provider);
        let victims: Vec<Arc<CellEntry>> = {
            // Recorded under the lock it reads the cells with: a launch under way that is not
            // among these ends itself when it registers (see `launch_whole`).
            let mut st = self.state();
            let mine = |e: &&Arc<CellEntry>| e.provider == provider && (admin || e.owner_uid == caller.uid);
            if !served && !st.cells.values().any(|e| mine(&e)) {
                return Err(PoolError::UnknownProvider { name: provider.to_owned() });
            }
            let idle = *self.inner.launching.borrow() == 0;
            st.record_cleanup(provider, (!admin).then_some(caller.uid), idle);
            st.cells.values().filter(mine).filter(|e| e.exit_reason().is_none()).cloned().collect()
        };
        let grace = self.inner.config.grace;
        for e in &victims {
            e.request_stop(Stop::Graceful { grace, reason: ExitReason::Terminated });
        }
        futures_util::future::join_all(victims.iter().map(|e| e.ended())).await;
        Ok(Count { count: victims.len() })
    }

    /// Read on demand: the cgroup's counters and /proc for each of the cell's processes.
    pub async fn cell_health(&self, caller: &Caller, id: &str) -> Result<CellHealth, PoolError> {
        let entry = self.cell(caller, id)?;
        let cg = entry.cgroup.clone();
        let mut running = entry.exit_reason().is_none();
        if running && !cg.paths().iter().all(|p| p.exists()) {
            // A cell's own end removes its cgroup just before the end is recorded: answer from
            // the end. A cgroup removed behind the daemon's back (the daemon then ends the
            // cell, after the same wait) is an error that says so.
            let ended = tokio::time::timeout(CGROUP_GONE_GRACE, entry.ended()).await.is_ok();
            if !ended || entry.cgroup_lost.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(PoolError::Internal(format!(
                    "cell {id}: its cgroup is gone (removed behind the daemon's back); the cell is being ended"
                )));
            }
            running = false;
        }
        let last = entry.final_usage().unwrap_or_default();
        let (usage, events, open_fds) = tokio::task::spawn_blocking(move || {
            if !running {
                return (last, None, 0);
            }
            let fds = cg
                .procs()
                .unwrap_or_default()
                .iter()
                .map(|pid| std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0))
                .sum();
            (cg.usage().unwrap_or_default(), cg.events().ok(), fds)
        })
        .await
        .map_err(|e| PoolError::Internal(e.to_string()))?;
        if let Some(events) = events {
            entry.record_events(events);
        }
        let cpu_percent = if let Some(ended) = entry.exited_at().filter(|_| !running) {
            // Over the cell's whole life.
            let wall = ended.duration_since(entry.started).as_micros().max(1) as f64;
            usage.cpu_usage_usec as f64 * 100.0 / wall
        } else {
            let mut sample = entry.cpu_sample.lock().unwrap_or_else(|e| e.into_inner());
            let (since, base) = sample.unwrap_or((entry.started, 0));
            let wall = since.elapsed().as_micros().max(1) as f64;
            *sample = Some((Instant::now(), usage.cpu_usage_usec));
            (usage.cpu_usage_usec.saturating_sub(base) as f64) * 100.0 / wall
        };
        let l = &entry.policy.limits;
        let (idle, idle_source) = super::idle_timeout_of(&entry.policy, &self.inner.config);
        Ok(CellHealth {
            info: entry.info(),
            usage,
            cpu_percent,
            open_fds,
            limits: LimitsView {
                memory_max: l.memory_max,
                cpu: l.cpu,
                pids: l.pids,
                open_files: l.open_files,
                wall_time_ms: l.wall_time.map(|d| d.as_millis() as u64),
                idle_timeout_ms: Some(idle.as_millis() as u64),
                idle_timeout_source: Some(idle_source),
                output_bytes: l.output_bytes,
            },
        })
    }

    /// Daemon health as `caller` may see it: root and admins count every cell, see every
    /// provider and the rejected policies; anyone else counts only their own cells and sees only
    /// the providers their uid or groups may use.
    pub async fn health(&self, caller: &Caller) -> DaemonHealth {
        let admin = self.is_admin(caller);
        let (running, exited) = {
            let st = self.state();
            let mine: Vec<_> = st.cells.values().filter(|e| admin || e.owner_uid == caller.uid).collect();
            let running = mine.iter().filter(|e| e.exit_reason().is_none()).count();
            (running, mine.len() - running)
        };
        let (total, available) = tokio::task::spawn_blocking(|| match sysinfo::System::new() {
            Ok(mut sys) => {
                sys.refresh_memory();
                (sys.total_memory(), sys.available_memory())
            }
            Err(_) => (0, 0),
        })
        .await
        .unwrap_or((0, 0));
        let root = self.inner.launcher.cgroups();
        DaemonHealth {
            status: if self.inner.shutting_down.load(Ordering::SeqCst) { "shutting_down" } else { "ok" }.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: self.inner.started.elapsed().as_secs(),
            cells_running: running,
            cells_exited: exited,
            max_cells: self.inner.config.max_cells,
            cgroup_layout: format!("{:?}", root.layout()).to_lowercase(),
            cgroup_backend: root.backend_name().to_owned(),
            landlock_abi: self.inner.launcher.host().landlock_abi,
            providers: self
                .policies()
                .values()
                .filter(|p| p.is_launchable() && self.provider(caller, &p.name).is_ok())
                .map(|p| p.name.clone())
                .collect(),
            cells_warm: self.warm_count(),
            warm_served: self.inner.warm_served.load(Ordering::Relaxed),
            launches_waiting: self.inner.launches_waiting.load(Ordering::Relaxed),
            policies_rejected: self.rejected_policies().len(),
            rejected_policies: admin.then(|| self.rejected_policies().as_ref().clone()),
            notes: if admin { self.path_notes().as_ref().clone() } else { Vec::new() },
            host_memory_total: total,
            host_memory_available: available,
        }
    }

    /// Stop accepting work and end every cell: SIGTERM, then SIGKILL for whatever is left at
    /// the shutdown timeout; every cgroup removed. Returns how many cells it stopped (over every call: see `ended_at_shutdown`).
    pub async fn shutdown(&self) -> Count {
        self.shutdown_within(None).await
    }

    /// [`Pool::shutdown`] with a shorter wait for the cells to end (capped by the daemon's
    /// `shutdown_timeout`).
    pub async fn shutdown_within(&self, timeout: Option<Duration>) -> Count {
        let timeout = timeout.map_or(self.inner.config.shutdown_timeout, |t| t.min(self.inner.config.shutdown_timeout));
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.inner.slot_freed.notify_waiters();
        self.retire_all_warm(timeout).await;
        // Launches under way register (or fail) first, so their cells are stopped below too.
        let mut launching = self.inner.launching.subscribe();
        if tokio::time::timeout(timeout, launching.wait_for(|n| *n == 0)).await.is_err() {
            tracing::warn!("launches still under way at the shutdown timeout");
        }
        let live: Vec<Arc<CellEntry>> =
            self.state().cells.values().filter(|e| e.exit_reason().is_none()).cloned().collect();
        // As documented: SIGTERM, the cells' grace period, then SIGKILL of the whole cgroup —
        // the same termination as `kill`, with the grace capped by the shutdown timeout, which
        // bounds the whole wait (a cell ignoring SIGTERM costs the grace, not the timeout).
        let grace = self.inner.config.grace.min(timeout);
        // Counted: the cells this call is the first to stop (one an earlier or concurrent
        // shutdown or a `kill` is already ending is waited for, not counted again).
        let stopped_here =
            live.iter().filter(|e| e.request_stop(Stop::Graceful { grace, reason: ExitReason::Terminated })).count();
        let all = futures_util::future::join_all(live.iter().map(|e| e.ended()));
        if tokio::time::timeout(timeout, all).await.is_err() {
            tracing::warn!(
                timeout_s = timeout.as_secs_f64(),
                "cells still alive at the shutdown timeout: removing their cgroups"
            );
            for e in &live {
                let cg = e.cgroup.clone();
                let _ = tokio::task::spawn_blocking(move || cg.remove()).await;
            }
        }
        let root = self.inner.launcher.cgroups().clone();
        let _ = tokio::task::spawn_blocking(move || root.remove_if_empty()).await;
        // Cumulative: the daemon's own shutdown after `POST /v1/shutdown` finds none left, and
        // its log line reports the cells that shutdown ended.
        Count { count: self.inner.ended_at_shutdown.fetch_add(stopped_here, Ordering::SeqCst) + stopped_here }
    }
}

/// Marks a cell busy (not idle) while a command runs.
pub(super) struct Busy<'a>(&'a CellEntry);

impl<'a> Busy<'a> {
    pub(super) fn new(entry: &'a CellEntry) -> Busy<'a> {
        entry.begin_command();
        Busy(entry)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.end_command();
    }
}

/// The bytes of `stream` a subscription can deliver right now (without waiting), and whether
/// some of what it should have delivered was already gone from the spool.
fn drain_ready(mut sub: Subscription, stream: Stream) -> (Vec<u8>, bool) {
    use futures_util::FutureExt;
    let (mut out, mut lagged) = (Vec::new(), false);
    while let Some(Some(ev)) = sub.next().now_or_never() {
        match ev {
            OutputEvent::Data { stream: s, data, .. } if s == stream => out.extend_from_slice(&data),
            OutputEvent::Lagged { .. } => lagged = true,
            _ => {}
        }
    }
    (out, lagged)
}
