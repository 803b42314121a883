//! The pool: the single owner of the daemon's cells — the cap, authorisation, provider
//! sessions, commands (session: `ops.rs`; one-shot, buffered or streamed: `oneshot.rs`),
//! termination, health, idle reaping, restart recovery and shutdown; pre-built cells
//! (`[pool] prewarm`: `warm.rs`).
//!
//! State lives in one `std::sync::Mutex<State>` held only for map updates (never across an
//! await); each cell is driven by its own tasks (`cell.rs`); one reaper task (`reaper.rs`)
//! owns every idle deadline and the retention of exited cells, sleeping until the next one —
//! there is no polling loop. Slots are reserved before a launch and released when the cell's
//! cgroup is gone, so the cap counts exactly the cells that hold kernel resources.

mod cell;
pub mod error;
mod oneshot;
mod ops;
mod reaper;
pub mod types;
mod warm;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::cgroup::CgroupRoot;
use crate::config::Config;
use crate::policy::set::Rejected;
use crate::policy::Policy;
use crate::sandbox::{HostCaps, Launcher};

pub use error::PoolError;
pub use oneshot::StreamedRun;
pub use types::*;

use cell::CellEntry;

/// Default per-command timeout when neither the request nor the policy sets one.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest session reply kept in memory.
pub const MAX_REPLY_BYTES: usize = 16 << 20;
/// How long a launch that finds the cap full, with a cell being pre-built in a slot, waits
/// for that build to be done (to take its slot) when it asked for no wait of its own, or a
/// shorter one. A build takes milliseconds; this bounds only a build that hangs.
const WARM_BUILD_WAIT: Duration = Duration::from_secs(10);

/// The pool handle (cheap to clone).
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    /// This daemon's hold on its cgroup root, for its whole life.
    _root_lock: crate::cgroup::RootLock,
    launcher: Launcher,
    /// The one inotify instance every cell's limit files are watched on.
    limit_hub: Option<crate::cgroup::watch::WatchHub>,
    policies: RwLock<Arc<BTreeMap<String, Arc<Policy>>>>,
    /// Policies the last load (start or reload) could not take, with why.
    rejected: RwLock<Arc<Vec<Rejected>>>,
    /// The served policies' write paths on a read-only mount (see [`Pool::path_notes`]).
    path_notes: RwLock<Arc<Vec<String>>>,
    /// What the last load that was applied (start, or a reload that succeeded) left out: a
    /// reload finding these same files broken the same way is not refused for them.
    tolerated: Mutex<Vec<Rejected>>,
    /// One reload at a time (SIGHUP and `POST /v1/reload`).
    reload_gate: Mutex<()>,
    state: Mutex<State>,
    /// A slot was freed (spawns waiting for one re-check).
    slot_freed: Notify,
    /// Deadlines changed (the reaper re-plans).
    reaper_wake: Arc<Notify>,
    /// Serialise "get or start" of a session, one gate per key (made on first use).
    session_gates: std::sync::Mutex<HashMap<SessionKey, Arc<tokio::sync::Mutex<()>>>>,
    shutting_down: AtomicBool,
    /// Cells ended by shutdowns so far (`POST /v1/shutdown`, then the daemon's own at exit).
    ended_at_shutdown: std::sync::atomic::AtomicUsize,
    /// Launch requests under way (from their arrival until registered or failed: see
    /// `ops::Begun`): shutdown waits for them, so none registers a cell after it looked.
    launching: tokio::sync::watch::Sender<usize>,
    started: Instant,
    /// Launches served by a pre-built cell.
    warm_served: std::sync::atomic::AtomicU64,
    /// Launches waiting now for a slot or for their uid's share (`wait_for_slot_ms`).
    launches_waiting: std::sync::atomic::AtomicUsize,
}

/// What a session is reused for: the same provider, caller, working directory (as asked) and
/// environment. A request for another cwd or env starts a session of its own — a command must
/// never run in a workspace other than the one its caller named.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SessionKey {
    provider: String,
    uid: u32,
    cwd: std::path::PathBuf,
    env: std::collections::BTreeMap<String, String>,
}

#[derive(Default)]
struct State {
    cells: HashMap<String, Arc<CellEntry>>,
    /// Slots held by running cells and launches in progress.
    used_slots: usize,
    /// Per non-admin uid: its cells running or being launched (`max_cells_per_uid`).
    uid_cells: HashMap<u32, usize>,
    /// (provider, uid, cwd, env) → the live session cell.
    sessions: HashMap<SessionKey, String>,
    /// Pre-built cells waiting for a request (each holds a slot).
    warm: Vec<warm::Warm>,
    /// Pre-built cells being built, by provider (each holds a slot).
    warming: HashMap<String, usize>,
    /// Launches that found every slot taken and want one now: no pre-built cell is started
    /// while there are any (a request takes precedence over pre-building).
    slots_wanted: usize,
    /// Cleanups so far (a sequence number; a launch notes it as it begins), and, by provider
    /// and by whose cells each ended (a uid, or `None`: everyone's, an admin's cleanup), the
    /// number of the latest: a launch that began before a cleanup that covers it is ended as
    /// it is registered (see `ops::launch_whole`). One number per (provider, uid) pair, not a
    /// window of recent cleanups: no number of cleanups, of other providers or by other
    /// callers, can make a launch look covered (a window that overflowed into "covered" let
    /// anyone end everyone's launches).
    cleanup_seq: u64,
    cleanups: HashMap<String, HashMap<Option<u32>, u64>>,
}

impl State {
    /// Whether a cleanup after number `since` covers a cell of `provider` owned by `uid`.
    fn cleaned_since(&self, since: u64, provider: &str, uid: u32) -> bool {
        self.cleanups
            .get(provider)
            .is_some_and(|by| [None, Some(uid)].iter().any(|who| by.get(who).is_some_and(|n| *n > since)))
    }

    /// Record a cleanup of `provider` (of `uid`'s cells; `None`: everyone's). With no launch
    /// under way (`idle`) the older records are dropped: every later launch notes a number
    /// after them (it counts itself under way before it notes it, and this runs under the
    /// lock it notes it under), so they can cover none. So the record holds only the pairs
    /// cleaned up while launches were under way (and a pair is recorded only by a caller who
    /// may clean it up: see `ops::cleanup_provider`).
    fn record_cleanup(&mut self, provider: &str, uid: Option<u32>, idle: bool) {
        self.cleanup_seq += 1;
        if idle {
            self.cleanups.clear();
        }
        self.cleanups.entry(provider.to_owned()).or_default().insert(uid, self.cleanup_seq);
    }
}

/// The notes of [`Pool::path_notes`] for `policies`, each logged as a warning. Blocking
/// (`statvfs` of each path).
fn read_only_notes<'a>(policies: impl Iterator<Item = &'a Policy>) -> Vec<String> {
    let notes: Vec<String> = policies
        .flat_map(|p| crate::policy::mounts::read_only_paths(p, crate::policy::mounts::statvfs_read_only))
        .map(|found| found.to_string())
        .collect();
    for note in &notes {
        tracing::warn!("{note}");
    }
    notes
}

impl Pool {
    /// Load the policies, open the cgroup root, kill and remove cells left by a daemon that
    /// died, and start the reaper.
    pub async fn start(config: Config) -> Result<Pool, PoolError> {
        // A policy that cannot load is left out and reported (once, here; health, doctor and
        // the service status show it too); the others serve.
        let set = crate::policy::set::load_set(&config.policy_dir, &config.floor);
        for line in set.rejected_summary() {
            tracing::error!("policy rejected, not served: {line}");
        }
        for r in &set.rejected {
            for p in r.problems.iter().skip(1) {
                tracing::error!("policy {}: {p}", r.name);
            }
        }
        let notes = read_only_notes(set.policies.values());
        raise_nofile();
        let name = config.cgroup_root.clone();
        let root = tokio::task::spawn_blocking(move || CgroupRoot::open(&name))
            .await
            .map_err(|e| PoolError::Internal(e.to_string()))?
            .map_err(|e| PoolError::Internal(format!("cgroup root: {e}")))?;
        // Before anything is killed as an orphan: cells under a root another daemon holds are
        // that daemon's, alive.
        let root_lock = root.lock().map_err(|e| PoolError::Internal(format!("cgroup root: {e}")))?;
        let recovered = recover_orphans(&root).await;
        if recovered > 0 {
            tracing::warn!(count = recovered, "cleaned up cells left by a previous daemon");
        }
        let spool_dir = config.spool_dir.clone();
        match tokio::task::spawn_blocking(move || crate::session::sweep_spool_dir(&spool_dir)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::warn!(count = n, "removed output spool files left by a previous daemon"),
            Ok(Err(e)) => tracing::error!("cell output will be kept in memory: {e}"),
            Err(e) => tracing::error!("sweeping the spool dir: {e}"),
        }
        let limit_hub = crate::cgroup::watch::WatchHub::new()
            .inspect_err(|e| tracing::error!("limit events will only be seen when read (no inotify instance): {e}"))
            .ok();
        let egress = crate::egress::EgressConfig { hosts: config.egress_hosts.clone(), max_cells: config.max_cells };
        let ids = crate::sandbox::IdAllocator::new(config.cell_id_range, crate::sandbox::ids::ID_LOCK_DIR.into());
        let launcher =
            Launcher::new(root, HostCaps::probe()).with_egress(crate::egress::EgressService::new(egress)).with_ids(ids);
        let pool = Pool {
            inner: Arc::new(Inner {
                config,
                _root_lock: root_lock,
                launcher,
                limit_hub,
                policies: RwLock::new(Arc::new(set.policies.into_iter().map(|(k, v)| (k, Arc::new(v))).collect())),
                tolerated: Mutex::new(set.rejected.clone()),
                rejected: RwLock::new(Arc::new(set.rejected)),
                path_notes: RwLock::new(Arc::new(notes)),
                reload_gate: Mutex::new(()),
                state: Mutex::new(State::default()),
                slot_freed: Notify::new(),
                reaper_wake: Arc::new(Notify::new()),
                session_gates: Default::default(),
                shutting_down: AtomicBool::new(false),
                ended_at_shutdown: Default::default(),
                launching: tokio::sync::watch::Sender::new(0),
                started: Instant::now(),
                warm_served: Default::default(),
                launches_waiting: Default::default(),
            }),
        };
        for p in pool.policies().values().filter(|p| p.is_launchable()) {
            if let Some(note) = crate::sandbox::plan::file_table_note(p, pool.inner.config.max_cells) {
                tracing::warn!(provider = %p.name, "{note}");
            }
        }
        pool.refill_all();
        tokio::spawn(reaper::run(Arc::downgrade(&pool.inner), pool.inner.reaper_wake.clone()));
        tracing::info!(
            providers = pool.policies().len(),
            backend = pool.inner.launcher.backend_name(),
            max_cells = pool.inner.config.max_cells,
            "pool ready"
        );
        Ok(pool)
    }

    /// Whether the process with `pid` is inside one of the cells (`None`: its cgroup file is
    /// unreadable). `api::listen` treats a caller inside a cell, or one it cannot place, as a
    /// cell: such callers get no API at all.
    pub fn cell_holds_pid(&self, pid: i32) -> Option<bool> {
        // Read at accept time (cheap: one small /proc file). The caller (`api::listen`) pins
        // the process with a pidfd around this read and refuses a peer that already exited:
        // a child it left behind could still use the connection.
        self.inner.launcher.cgroups().holds_pid(pid)
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    fn policies(&self) -> Arc<BTreeMap<String, Arc<Policy>>> {
        self.inner.policies.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Root and members of an admin group see and manage every cell.
    pub fn is_admin(&self, caller: &Caller) -> bool {
        caller.uid == 0 || self.inner.config.admin_gids.iter().any(|g| *g == caller.gid || caller.groups.contains(g))
    }

    /// The provider's policy, if `caller` may use it.
    fn provider(&self, caller: &Caller, name: &str) -> Result<Arc<Policy>, PoolError> {
        let policy = self
            .policies()
            .get(name)
            .filter(|p| p.is_launchable())
            .cloned()
            .ok_or_else(|| PoolError::UnknownProvider { name: name.to_owned() })?;
        let access = &policy.access;
        let allowed = self.is_admin(caller)
            || access.uids.contains(&caller.uid)
            || access.gids.iter().any(|g| *g == caller.gid || caller.groups.contains(g));
        if allowed {
            Ok(policy)
        } else {
            Err(PoolError::Forbidden { uid: caller.uid, action: format!("use provider {name}") })
        }
    }

    /// The cell, if `caller` may see it (its owner, root or an admin).
    fn cell(&self, caller: &Caller, id: &str) -> Result<Arc<CellEntry>, PoolError> {
        let entry = self.state().cells.get(id).cloned().ok_or_else(|| PoolError::NotFound { id: id.to_owned() })?;
        if entry.owner_uid == caller.uid || self.is_admin(caller) {
            Ok(entry)
        } else {
            // Not found rather than forbidden: another uid's cells are not even listed.
            Err(PoolError::NotFound { id: id.to_owned() })
        }
    }

    /// Whether every slot is taken (by cells, launches or pre-built cells).
    fn is_full(&self) -> bool {
        self.state().used_slots >= self.inner.config.max_cells
    }

    /// Reserve a slot, waiting up to `wait` for one to free up.
    ///
    /// A pre-built cell gives up its slot to a launch that needs one, and so does one being
    /// built: the launch waits for the build to be done (`fill` wakes it; with no wait of its
    /// own, up to [`WARM_BUILD_WAIT`]) and takes its slot. While a launch wants a slot no
    /// pre-built cell is started (see `warm::fill`), so none takes the slot it waits for.
    ///
    /// Waiting ends early when `left` is cancelled (the client that asked has gone: a command
    /// nobody waits for must not take the slot when one frees up).
    async fn reserve_slot(
        &self,
        wait: Option<Duration>,
        left: &tokio_util::sync::CancellationToken,
    ) -> Result<SlotGuard, PoolError> {
        let until = wait.map(|w| Instant::now() + w);
        // Builds under way count as room coming until then.
        let builds_until = until.map_or(Instant::now() + WARM_BUILD_WAIT, |t| t.max(Instant::now() + WARM_BUILD_WAIT));
        let mut wanting: Option<SlotWanted> = None;
        loop {
            if self.inner.shutting_down.load(Ordering::SeqCst) {
                return Err(PoolError::ShuttingDown);
            }
            let freed = self.inner.slot_freed.notified();
            let waiting_until = {
                let mut st = self.state();
                let limit = self.inner.config.max_cells;
                if st.used_slots < limit {
                    st.used_slots += 1;
                    return Ok(SlotGuard { pool: Some(self.clone()) });
                }
                if wanting.is_none() {
                    st.slots_wanted += 1;
                    wanting = Some(SlotWanted(self));
                }
                let running = st.used_slots;
                let now = Instant::now();
                let building = st.warming.values().any(|n| *n > 0);
                match until {
                    _ if !st.warm.is_empty() => None,
                    _ if building && now < builds_until => Some(builds_until),
                    Some(t) if now < t => Some(t),
                    _ => return Err(PoolError::ProcessLimit { limit, running }),
                }
            };
            match waiting_until {
                None => {
                    self.make_room().await;
                }
                Some(t) => self.wait_for_a_freed_slot(freed, t, left).await?,
            }
        }
    }

    /// `max_cells_per_uid` for `caller` (admins and a daemon without the setting: none).
    fn uid_limit(&self, caller: &Caller) -> Option<usize> {
        self.inner.config.max_cells_per_uid.filter(|_| !self.is_admin(caller))
    }

    /// Whether `caller` holds all of its share of the cells now.
    fn uid_share_full(&self, caller: &Caller) -> bool {
        self.uid_limit(caller)
            .is_some_and(|limit| self.state().uid_cells.get(&caller.uid).copied().unwrap_or(0) >= limit)
    }

    /// A place in `caller`'s share of the cells (`max_cells_per_uid`; admins and a daemon
    /// without the setting have no share to keep), waiting up to `wait` for one of its cells
    /// to end, as [`Pool::reserve_slot`] waits for a slot. Held by the cell until it ends.
    async fn claim_uid_share(
        &self,
        caller: &Caller,
        until: Option<Instant>,
        left: &tokio_util::sync::CancellationToken,
    ) -> Result<Option<UidShare>, PoolError> {
        let Some(limit) = self.uid_limit(caller) else {
            return Ok(None);
        };
        loop {
            if self.inner.shutting_down.load(Ordering::SeqCst) {
                return Err(PoolError::ShuttingDown);
            }
            let freed = self.inner.slot_freed.notified();
            {
                let mut st = self.state();
                let mine = st.uid_cells.entry(caller.uid).or_default();
                if *mine < limit {
                    *mine += 1;
                    return Ok(Some(UidShare { pool: self.clone(), uid: caller.uid }));
                }
                let running = *mine;
                if until.is_none_or(|t| Instant::now() >= t) {
                    return Err(PoolError::UidLimit { uid: caller.uid, limit, running });
                }
            }
            let Some(t) = until else { continue };
            self.wait_for_a_freed_slot(freed, t, left).await?;
        }
    }

    /// Waits (counted in `launches_waiting`) until a slot or share is freed, `until` passes
    /// or the client leaves.
    async fn wait_for_a_freed_slot(
        &self,
        freed: tokio::sync::futures::Notified<'_>,
        until: Instant,
        left: &tokio_util::sync::CancellationToken,
    ) -> Result<(), PoolError> {
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.inner.launches_waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.inner.launches_waiting);
        tokio::select! {
            _ = tokio::time::timeout_at(until.into(), freed) => Ok(()),
            _ = left.cancelled() => Err(PoolError::ClientGone),
        }
    }

    fn release_slot(&self) {
        let mut st = self.state();
        st.used_slots = st.used_slots.saturating_sub(1);
        drop(st);
        self.inner.slot_freed.notify_waiters();
    }

    /// The served policies' concrete write paths and workdir roots that are on a read-only
    /// mount of the daemon's own mount namespace, which cells inherit (under the shipped unit:
    /// outside its `ReadWritePaths=`): one note each, with the fix ([`crate::policy::mounts`]).
    /// Checked at start and at each applied reload, logged as warnings then, shown by health.
    pub fn path_notes(&self) -> Arc<Vec<String>> {
        self.inner.path_notes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Policies the last load (start, or a rejected reload) left out, with why.
    pub fn rejected_policies(&self) -> Arc<Vec<Rejected>> {
        self.inner.rejected.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reload the policy directory (SIGHUP, `POST /v1/reload`, `systemctl reload`).
    ///
    /// All or nothing: a set in which every file loads replaces the served one (`Ok` = the
    /// providers); a set with a file newly rejected is refused as a whole (`Err`, each
    /// rejected file named in it) and the previous set keeps serving, so a reload never drops a
    /// provider by accident. A file the last applied load already left out, broken the same
    /// way, does not refuse it (it served nothing, and would otherwise block every reload
    /// until fixed, tightenings of other policies included): the rest is applied and the file
    /// stays left out, named in the answer. The rejections stay visible in health.
    /// Blocking (reads files): call from a blocking context or accept a short stall.
    pub fn reload(&self) -> Result<Reloaded, PoolError> {
        let _one = self.inner.reload_gate.lock().unwrap_or_else(|e| e.into_inner());
        let set = crate::policy::set::load_set(&self.inner.config.policy_dir, &self.inner.config.floor);
        *self.inner.rejected.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set.rejected.clone());
        let mut tolerated = self.inner.tolerated.lock().unwrap_or_else(|e| e.into_inner());
        if set.rejected.iter().any(|r| !tolerated.contains(r)) {
            let dir = self.inner.config.policy_dir.display().to_string();
            return Err(PoolError::ReloadRejected { dir, rejected: set.rejected });
        }
        tolerated.clone_from(&set.rejected);
        drop(tolerated);
        let left_out = set.rejected.clone();
        let providers = set.providers().into_iter().map(str::to_owned).collect();
        let notes = read_only_notes(set.policies.values());
        *self.inner.path_notes.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(notes.clone());
        // A policy the reload left as it was keeps its `Arc`: sessions (and pre-built cells) of
        // an unchanged policy stay the ones handed out (see `ops::live_session`).
        let old = self.policies();
        let same = |a: &Policy, b: &Policy| matches!((serde_json::to_value(a), serde_json::to_value(b)), (Ok(x), Ok(y)) if x == y);
        let reloaded = set
            .policies
            .into_iter()
            .map(|(k, v)| {
                let kept = old.get(&k).filter(|o| same(o, &v)).cloned();
                (k, kept.unwrap_or_else(|| Arc::new(v)))
            })
            .collect();
        *self.inner.policies.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(reloaded);
        // Pre-built cells were built for the old policies: retire them all, build anew.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let pool = self.clone();
            rt.spawn(async move {
                pool.retire_warm(|_| true).await;
                pool.refill_all();
            });
        }
        Ok(Reloaded { providers, left_out, notes })
    }
}

/// The idle timeout in force for a policy's sessions, and where it comes from: the policy's
/// `limits.idle_timeout` (after `extends`) wins; without one, the daemon's `idle_timeout_secs`.
pub fn idle_timeout_of(policy: &Policy, config: &Config) -> (Duration, IdleSource) {
    match policy.limits.idle_timeout {
        Some(d) => (d, IdleSource::Policy),
        None => (config.idle_timeout, IdleSource::Daemon),
    }
}

/// A launch counted in `State::slots_wanted` (see [`Pool::reserve_slot`]) until dropped.
struct SlotWanted<'a>(&'a Pool);

impl Drop for SlotWanted<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state();
        st.slots_wanted = st.slots_wanted.saturating_sub(1);
    }
}

/// A reserved slot; released on drop unless handed to a running cell.
struct SlotGuard {
    pool: Option<Pool>,
}

impl SlotGuard {
    /// The cell now holds the slot; its end releases it.
    fn commit(mut self) {
        self.pool = None;
    }
}

/// One cell's place in its uid's share (see [`Pool::claim_uid_share`]); given back on drop.
struct UidShare {
    pool: Pool,
    uid: u32,
}

impl Drop for UidShare {
    fn drop(&mut self) {
        let mut st = self.pool.state();
        if let Some(n) = st.uid_cells.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.uid_cells.remove(&self.uid);
            }
        }
        drop(st);
        self.pool.inner.slot_freed.notify_waiters();
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.release_slot();
        }
    }
}

/// Kill and remove every cell cgroup under the root (left by a daemon that was killed).
async fn recover_orphans(root: &CgroupRoot) -> usize {
    let root = root.clone();
    tokio::task::spawn_blocking(move || {
        let mut n = 0;
        for id in root.list_cells().unwrap_or_default() {
            // Processes still in it are the payloads of a daemon that was killed; cells whose
            // processes died with their supervisor leave only empty directories.
            let left = root.open_cell(&id).map(|c| (c.procs().map_or(0, |p| p.len()), c));
            match left.and_then(|(procs, c)| c.remove().map(|()| procs)) {
                Ok(0) => {
                    tracing::warn!(cell = %id, "removed the empty cgroup of an orphaned cell");
                    n += 1;
                }
                Ok(procs) => {
                    tracing::warn!(cell = %id, procs, "killed the processes of an orphaned cell and removed its cgroup");
                    n += 1;
                }
                Err(e) => tracing::error!(cell = %id, "cannot remove orphaned cell: {e}"),
            }
        }
        n
    })
    .await
    .unwrap_or(0)
}

/// Each cell holds a handful of the daemon's fds (stdio pipes, control socket, event watch), so
/// a pool of a thousand cells needs more than the usual soft limit of 1024: raise the soft
/// limit to the hard one. Cells do not inherit it: every shipped policy sets `open_files`.
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised RLIMIT_NOFILE"),
            Err(e) => tracing::warn!("cannot raise RLIMIT_NOFILE from {soft} to {hard}: {e}"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!("reading RLIMIT_NOFILE: {e}"),
    }
}
