//! The launcher side (async): create the cell's cgroup, start the helper in it, hand it the
//! plan, follow its reports, enforce the wall clock, and turn the end of the run into exactly
//! one [`ExitReason`] with the cell's usage — then remove the cgroup, always.
//!
//! No Rust code runs between fork and exec in this (multi-threaded) process: the helper is
//! spawned without `pre_exec` (so std uses `posix_spawn`), inheriting its control socket
//! because `spawn_inheriting` clears that one fd's `FD_CLOEXEC` for the one spawn. The
//! invariant that makes this safe: only the launcher spawns, under `SPAWN_LOCK`, with
//! CLOEXEC cleared on that fd only while the lock is held — so no other spawn can inherit it
//! (enforced by `spawn_inheriting` being the only spawn path in the library, checked by the
//! test `only_the_launcher_spawns`; the other `Command`s are `systemd::exec_in_own_scope`'s,
//! a `systemctl` query and an exec in place, both before any thread or cell exists).
//! For a `tty` policy the pseudo-terminal is opened here, before the spawn; its slave is
//! passed as the helper's stdio like any other fd and the launcher keeps the master.
//! Cgroup creation and removal are filesystem work of a few hundred microseconds to
//! milliseconds, so they run on the blocking pool.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader, Lines};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

use crate::cgroup::{CellCgroup, CellLimits, CgroupRoot, Events, Usage};
use crate::egress::{CellEgress, EgressService};
use crate::policy::{Network, Policy};

use super::plan::{self, Degradation, HostCaps, LaunchRequest};
use super::proto::Report;
use super::pty::{self, PtyMaster, TermSpec};
use super::{ExitReason, SandboxError};

/// Processes cellkeep itself keeps in every cell (the helper and the cell's pid 1); added to
/// the policy's pids limit so the limit counts the payload's processes only.
pub const SUPERVISOR_PIDS: u64 = 2;

/// How the payload's stdio is connected. With a `tty` policy, `Piped` and `NullInPiped` both
/// become one pseudo-terminal (stdin, stdout and stderr on its slave; the launcher keeps the
/// master, [`Cell::take_io`]); `Inherit` and `Terminal` ignore the policy's `tty`.
#[derive(Debug, Clone, Copy)]
pub enum StdioMode {
    /// The launcher's own stdin/stdout/stderr (`cellkeep run` when none of them is a terminal:
    /// a terminal is never handed to a cell).
    Inherit,
    /// A pseudo-terminal of the cell's own, started as a copy of the caller's terminal; the
    /// launcher keeps the master and relays (`cellkeep run` on a terminal, as `ssh -t`).
    Terminal(TermSpec),
    /// Pipes the launcher reads and writes (the daemon).
    Piped,
    /// stdin from /dev/null, stdout/stderr piped (one-shot commands).
    NullInPiped,
}

/// Where the launcher writes the payload's input: its stdin pipe or the pty master.
pub type CellInput = Box<dyn AsyncWrite + Send + Unpin>;
/// Where the launcher reads the payload's output: a pipe or the pty master.
pub type CellOutput = Box<dyn AsyncRead + Send + Unpin>;
/// A cell's stderr: always a pipe, so the pool can read what is buffered in it right now
/// (`try_read`) when a session reply completes, not only when its pump next runs.
pub type CellErrOutput = tokio::net::unix::pipe::Receiver;

/// The launcher's ends of a cell's stdio. A tty cell has one output stream (`stdout`, the
/// pty master) and no `stderr`.
pub struct CellIo {
    pub stdin: Option<CellInput>,
    pub stdout: Option<CellOutput>,
    pub stderr: Option<CellErrOutput>,
}

impl std::fmt::Debug for CellIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CellIo")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .finish()
    }
}

/// Starts cells. Cheap to share (`Arc` inside).
#[derive(Debug, Clone)]
pub struct Launcher {
    root: CgroupRoot,
    host: HostCaps,
    helper_exe: PathBuf,
    /// Serves the egress proxy of `proxy` cells.
    egress: EgressService,
    /// Leases cells' own host ids.
    ids: super::ids::IdAllocator,
}

/// A request to end a cell before it ends by itself.
#[derive(Debug, Clone)]
pub enum Stop {
    /// SIGTERM, then SIGKILL to the whole cgroup after `grace`.
    Graceful { grace: Duration, reason: ExitReason },
    /// SIGKILL to the whole cgroup now.
    Kill { reason: ExitReason },
}

/// What a launch builds: a cell for a request, or one that waits for its request (built ahead).
pub(super) enum Want {
    Request(LaunchRequest),
    Warm { cell_id: String },
}

impl Want {
    fn cell_id(&self) -> &str {
        match self {
            Want::Request(req) => &req.cell_id,
            Want::Warm { cell_id } => cell_id,
        }
    }
}

/// The end of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub cell: String,
    pub provider: String,
    #[serde(flatten)]
    pub reason: ExitReason,
    pub usage: Usage,
    pub events: Events,
    pub degraded: Vec<Degradation>,
    pub duration_ms: u64,
    pub cgroup_backend: &'static str,
}

/// A running cell.
#[derive(Debug)]
pub struct Cell {
    pub id: String,
    pub provider: String,
    pub cgroup: Arc<CellCgroup>,
    child: HelperProc,
    /// The launcher's ends of the helper's stdio (pipes), until [`Cell::take_io`] (in a mutex
    /// only so that `&Cell` is `Send`: the boxed streams are not `Sync`).
    io: std::sync::Mutex<CellIo>,
    pub degraded: Vec<Degradation>,
    pub started: Instant,
    /// The payload's pid as the host sees it (known once it exec'd).
    pub payload_pid: Option<u32>,
    /// The master of the cell's terminal (`tty` policies), until [`Cell::take_io`].
    pub pty: Option<PtyMaster>,
    /// The egress proxy serving this cell (`proxy` policies); stopped when the cell ends.
    pub egress: Option<Arc<CellEgress>>,
    /// What the proxy will need once pid 1 reports [`Report::NetnsReady`].
    egress_plan: Option<super::netns::EgressPlan>,
    pub(super) reports: Lines<BufReader<UnixStream>>,
    backend: &'static str,
    /// The cell's host uid (the helper may report the workspace owner's instead: see
    /// [`plan::IdmapFallback::Owner`]).
    pub host_uid: u32,
    /// The lease on the cell's own host id; dropped only after the cgroup is removed.
    pub(super) id_lease: Option<super::ids::IdLease>,
    /// Limit events already accounted for (a session's answered commands): the end is
    /// classified by what came after them ([`Cell::events_seen`]).
    events_seen: Arc<std::sync::Mutex<crate::cgroup::Events>>,
}

fn limits_of(policy: &Policy) -> CellLimits {
    let l = &policy.limits;
    CellLimits {
        memory_max: l.memory_max,
        memory_high: l.memory_high,
        memory_swap: l.memory_swap,
        cpu: l.cpu,
        pids: l.pids.map(|p| p + SUPERVISOR_PIDS),
    }
}

impl Launcher {
    pub fn new(root: CgroupRoot, host: HostCaps) -> Launcher {
        Launcher {
            root,
            host,
            helper_exe: PathBuf::from("/proc/self/exe"),
            egress: EgressService::default(),
            ids: super::ids::IdAllocator::default(),
        }
    }

    /// Lease cells' own host ids from this allocator (the daemon's `cell_id_range`).
    pub fn with_ids(mut self, ids: super::ids::IdAllocator) -> Launcher {
        self.ids = ids;
        self
    }

    /// Use this egress proxy service (its settings: the daemon's `egress_hosts`).
    pub fn with_egress(mut self, egress: EgressService) -> Launcher {
        self.egress = egress;
        self
    }

    pub fn backend_name(&self) -> &'static str {
        self.root.backend_name()
    }

    pub fn host(&self) -> &HostCaps {
        &self.host
    }

    pub fn cgroups(&self) -> &CgroupRoot {
        &self.root
    }

    /// Launch one cell and return once the command exec'd (or the setup failed, in which case
    /// everything created is already removed).
    ///
    /// The helper is spawned first and waits for its plan; meanwhile the cell's cgroup and its
    /// own host id (NSS account lookups, ~1 ms) are made on two blocking threads and the plan
    /// is built, so the helper's exec and start-up (~1.5 ms for a large binary) overlap them.
    /// Whether `req` would be refused before anything is built (its cwd, identity, the
    /// policy's checks): the same planning a launch starts with, nothing made. For a caller
    /// who must hear "bad request" rather than "no room" when the pool is full.
    pub fn check(&self, policy: &Policy, req: &LaunchRequest) -> Result<(), SandboxError> {
        let mut req = req.clone();
        if let Some(range) = plan::lease_needed(policy, req.caller_uid) {
            // A stand-in for the id a launch would lease (none is leased for a check).
            req.range_uid = Some(range.map_or(4_000_000_000, |(start, _)| start));
        }
        plan::build(policy, &req, &self.host).map(drop)
    }

    pub async fn launch(&self, policy: &Policy, req: LaunchRequest, stdio: StdioMode) -> Result<Cell, SandboxError> {
        if policy.command.is_empty() && req.args.is_empty() {
            return Err(SandboxError::NoCommand { provider: policy.name.clone() });
        }
        let (mut started, _) = self.start(policy, Want::Request(req), stdio).await?;
        match started.await_stage(false).await {
            Ok(()) => Ok(started),
            Err(e) => {
                started.discard().await;
                Err(e)
            }
        }
    }

    /// Everything of a launch up to the plan sent: the pty, the cgroup, the id lease, the
    /// helper started and released. Returns the cell (its helper now building it) and, for a
    /// cell built ahead, its plan. On an error everything made is removed.
    pub(super) async fn start(
        &self,
        policy: &Policy,
        want: Want,
        stdio: StdioMode,
    ) -> Result<(Cell, Option<plan::LaunchPlan>), SandboxError> {
        let cell = want.cell_id().to_owned();
        let like = match &stdio {
            StdioMode::Terminal(spec) => Some(spec),
            _ => None,
        };
        let tty = like.is_some() || (policy.tty && !matches!(stdio, StdioMode::Inherit));
        let (pty, slave) = if tty {
            let (master, slave) = pty::open(like).map_err(|source| SandboxError::Pty {
                provider: policy.name.clone(),
                cell: cell.clone(),
                source,
            })?;
            (Some(master), Some(slave))
        } else {
            (None, None)
        };
        let root = self.root.clone();
        let (id, limits) = (cell.clone(), limits_of(policy));
        let make_cgroup = move || root.create_cell(&id, &limits);
        let made = |joined: Result<Result<CellCgroup, crate::cgroup::CgroupError>, tokio::task::JoinError>| {
            joined
                .map_err(|e| SandboxError::HelperDied { cell: cell.clone(), detail: e.to_string() })
                .and_then(|made| made.map_err(|source| SandboxError::Cgroup { cell: cell.clone(), source }))
        };
        // v2 with a zygote: the helper is forked straight into the cell's cgroup
        // (CLONE_INTO_CGROUP; no attach afterwards, whose global lock waits for an RCU grace
        // period), so the cgroup comes first. Otherwise the helper starts first and the
        // cgroup is made while it does.
        let mut making = None;
        let early = if self.root.layout() == crate::cgroup::Layout::Unified && super::zygote::get().is_some() {
            Some(Arc::new(made(tokio::task::spawn_blocking(make_cgroup).await)?))
        } else {
            making = Some(make_cgroup);
            None
        };
        let into = early.as_ref().and_then(|cg| cg.open_dir_v2()).and_then(Result::ok);
        // From here on, an error drops `child`, which kills it (`kill_on_drop`).
        let (mut child, io, ours) = match self.spawn_helper(&cell, stdio, slave, into.as_ref()) {
            Ok(spawned) => spawned,
            Err(e) => {
                if let Some(cg) = early {
                    remove_cgroup(cg).await;
                }
                return Err(e);
            }
        };
        drop(into);
        let making = making.map(tokio::task::spawn_blocking);
        // Whose name lookups the cell's proxy spends (a cell built ahead: nobody's yet).
        let lookup_owner = match &want {
            Want::Request(req) => Some(req.caller_uid),
            Want::Warm { .. } => None,
        };
        let prepared = self.prepare(policy, want, tty).await;
        let cgroup = match (early, making) {
            (Some(cg), _) => Ok(cg),
            (None, Some(task)) => made(task.await).map(Arc::new),
            (None, None) => Err(SandboxError::HelperDied { cell: cell.clone(), detail: "no cgroup made".into() }),
        };
        let (cgroup, (mut plan, degraded, lease)) = match (cgroup, prepared) {
            (Ok(cgroup), Ok(prepared)) => (cgroup, prepared),
            (Ok(cgroup), Err(e)) => {
                drop(child);
                remove_cgroup(cgroup).await;
                return Err(e);
            }
            (Err(e), _) => return Err(e),
        };
        let host_uid = plan.ids.outside_uid;
        let plan_proxy_port = plan.proxy_port;
        plan.join_cgroup = cgroup.self_join_files().unwrap_or_default();
        let warm_plan = plan.warm.then(|| plan.clone());
        let released = match serde_json::to_vec(&plan) {
            Ok(line) => self.release_helper(&cell, &mut child, &cgroup, ours, line).await,
            Err(e) => {
                Err(SandboxError::HelperDied { cell: cell.clone(), detail: format!("encoding the launch plan: {e}") })
            }
        };
        let reports = match released {
            Ok(reports) => reports,
            Err(e) => {
                drop(child);
                remove_cgroup(cgroup).await;
                return Err(e);
            }
        };
        let started = Cell {
            id: cell,
            provider: policy.name.clone(),
            cgroup,
            child,
            io: std::sync::Mutex::new(io),
            degraded,
            started: Instant::now(),
            payload_pid: None,
            pty,
            egress: None,
            egress_plan: match (&policy.network, plan_proxy_port) {
                (Network::Proxy { egress }, Some(port)) => Some(super::netns::EgressPlan {
                    service: self.egress.clone(),
                    egress: egress.clone(),
                    port,
                    caller: lookup_owner,
                }),
                _ => None,
            },
            reports,
            backend: self.root.backend_name(),
            host_uid,
            id_lease: lease,
            events_seen: Default::default(),
        };
        Ok((started, warm_plan))
    }

    /// The cell's own host id, held (flock) until its cgroup is gone (`Cell::finish` and
    /// `Cell::discard` drop it after removing the cgroup, `launch`'s error paths after theirs),
    /// and the plan.
    async fn prepare(
        &self,
        policy: &Policy,
        want: Want,
        tty: bool,
    ) -> Result<(plan::LaunchPlan, Vec<Degradation>, Option<super::ids::IdLease>), SandboxError> {
        let caller_uid = match &want {
            Want::Request(req) => req.caller_uid,
            Want::Warm { .. } => 0,
        };
        let lease = match plan::lease_needed(policy, caller_uid) {
            None => None,
            Some(range) => {
                let range = range.map(|(start, count)| super::ids::IdRange { start, count });
                let ids = self.ids.clone();
                let lease = tokio::task::spawn_blocking(move || ids.allocate(range))
                    .await
                    .map_err(|e| SandboxError::HelperDied { cell: want.cell_id().to_owned(), detail: e.to_string() })?
                    .map_err(|source| SandboxError::Ids { provider: policy.name.clone(), source })?;
                Some(lease)
            }
        };
        let range_uid = lease.as_ref().map(|l| l.uid());
        let (mut plan, degraded) = match want {
            Want::Request(mut req) => {
                req.range_uid = range_uid;
                plan::build(policy, &req, &self.host)?
            }
            Want::Warm { cell_id } => (plan::build_warm(policy, &cell_id, range_uid, &self.host)?, Vec::new()),
        };
        plan.tty = tty;
        Ok((plan, degraded, lease))
    }

    /// Start the helper with fd 3 = our control socket's peer (and stdin/stdout/stderr = the
    /// pty slave when there is one): forked by the zygote where this process has one, else
    /// spawned. It does nothing until [`Self::release_helper`] sends it the plan.
    fn spawn_helper(
        &self,
        cell: &str,
        stdio: StdioMode,
        pty_slave: Option<OwnedFd>,
        into_cgroup: Option<&OwnedFd>,
    ) -> Result<(HelperProc, CellIo, std::os::unix::net::UnixStream), SandboxError> {
        use std::os::fd::AsRawFd;
        let spawn_err = |source| SandboxError::Spawn { cell: cell.to_owned(), exe: self.helper_exe.clone(), source };
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(spawn_err)?;
        if let Some(zygote) = super::zygote::get() {
            let ctl = OwnedFd::from(theirs.try_clone().map_err(spawn_err)?);
            match fork_helper(zygote, &stdio, pty_slave.as_ref(), &ctl, into_cgroup) {
                Ok((forked, io)) => return Ok((HelperProc::Forked(forked), io, ours)),
                Err(e) => tracing::warn!(cell, error = %e, "the zygote could not fork a helper; spawning it"),
            }
        }
        let their_fd = theirs.as_raw_fd();
        let mut cmd = Command::new(&self.helper_exe);
        cmd.arg(crate::HELPER_ARG).arg(their_fd.to_string()).env_clear().kill_on_drop(true);
        match (pty_slave, stdio) {
            // The spawn dup2s the slave onto 0, 1 and 2 in the child; our copies (close-on-exec)
            // are closed when `cmd` is dropped at the end of this function, so only the cell
            // holds the slave and its exit ends the master's output.
            (Some(slave), _) => {
                let (input, output) = (slave.try_clone().map_err(spawn_err)?, slave.try_clone().map_err(spawn_err)?);
                cmd.stdin(Stdio::from(input)).stdout(Stdio::from(output)).stderr(Stdio::from(slave));
            }
            (None, StdioMode::Inherit | StdioMode::Terminal(_)) => {}
            (None, StdioMode::Piped) => {
                cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
            }
            (None, StdioMode::NullInPiped) => {
                cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
            }
        }
        let mut child = spawn_inheriting(&mut cmd, theirs).map_err(spawn_err)?;
        let io = CellIo {
            stdin: child.stdin.take().map(|s| Box::new(s) as CellInput),
            stdout: child.stdout.take().map(|s| Box::new(s) as CellOutput),
            stderr: child
                .stderr
                .take()
                .map(|s| s.into_owned_fd().and_then(CellErrOutput::from_owned_fd))
                .transpose()
                .map_err(spawn_err)?,
        };
        Ok((HelperProc::Spawned(child), io, ours))
    }

    /// Put the helper into the cell's cgroup (a spawned helper on v2; on v1 the plan's
    /// `join_cgroup` has it move itself in before it forks anything, and a helper the zygote
    /// forked on v2 started inside), then release it by sending the plan.
    async fn release_helper(
        &self,
        cell: &str,
        child: &mut HelperProc,
        cgroup: &CellCgroup,
        ours: std::os::unix::net::UnixStream,
        mut plan_line: Vec<u8>,
    ) -> Result<Lines<BufReader<UnixStream>>, SandboxError> {
        let spawn_err = |source| SandboxError::Spawn { cell: cell.to_owned(), exe: self.helper_exe.clone(), source };
        let inside = matches!(child, HelperProc::Forked(f) if f.in_cgroup());
        if cgroup.self_join_files().is_none() && !inside {
            // No pid: the helper was already reaped. Never write 0, which cgroup.procs reads as
            // "the writer", moving the daemon itself into the cell.
            let pid = child
                .id()
                .ok_or_else(|| spawn_err(std::io::Error::other("the helper exited before it joined the cgroup")))?;
            cgroup.attach(pid).map_err(|source| SandboxError::Cgroup { cell: cell.to_owned(), source })?;
        }
        ours.set_nonblocking(true).map_err(spawn_err)?;
        let ours = UnixStream::from_std(ours).map_err(spawn_err)?;
        plan_line.push(b'\n');
        let (read_half, write_half) = ours.into_split();
        let written = async {
            let mut rest = &plan_line[..];
            while !rest.is_empty() {
                write_half.writable().await?;
                match write_half.try_write(rest) {
                    Ok(n) => rest = &rest[n..],
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
            Ok::<(), std::io::Error>(())
        }
        .await;
        written.map_err(spawn_err)?;
        let stream = read_half.reunite(write_half).map_err(|e| spawn_err(std::io::Error::other(e.to_string())))?;
        Ok(BufReader::new(stream).lines())
    }
}

/// The helper process: forked by the zygote, or spawned (no zygote, or it failed). Dropped
/// before it was reaped, it is killed (and reaped in the background).
#[derive(Debug)]
enum HelperProc {
    Spawned(Child),
    Forked(super::zygote::Forked),
}

impl HelperProc {
    /// Its pid, until it is reaped.
    fn id(&self) -> Option<u32> {
        match self {
            HelperProc::Spawned(c) => c.id(),
            HelperProc::Forked(f) => f.id(),
        }
    }

    /// Wait for it to exit, and reap it.
    async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match self {
            HelperProc::Spawned(c) => c.wait().await,
            HelperProc::Forked(f) => f.wait().await,
        }
    }
}

/// Ask the zygote for a helper with `ctl` as its fd 3 and stdio as `stdio` asks: the pty
/// slave, the launcher's own stdio, or pipes whose other ends are returned.
fn fork_helper(
    zygote: &super::zygote::Zygote,
    stdio: &StdioMode,
    slave: Option<&OwnedFd>,
    ctl: &OwnedFd,
    into_cgroup: Option<&OwnedFd>,
) -> std::io::Result<(super::zygote::Forked, CellIo)> {
    use std::os::fd::AsFd;
    let pipe = || -> std::io::Result<(OwnedFd, OwnedFd)> { Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?) };
    let reader = |fd: OwnedFd| -> std::io::Result<CellOutput> {
        Ok(Box::new(tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?))
    };
    let mut io = CellIo { stdin: None, stdout: None, stderr: None };
    let theirs: [OwnedFd; 3] = match (slave, stdio) {
        (Some(slave), _) => [slave.try_clone()?, slave.try_clone()?, slave.try_clone()?],
        (None, StdioMode::Inherit | StdioMode::Terminal(_)) => [
            std::io::stdin().as_fd().try_clone_to_owned()?,
            std::io::stdout().as_fd().try_clone_to_owned()?,
            std::io::stderr().as_fd().try_clone_to_owned()?,
        ],
        (None, StdioMode::Piped | StdioMode::NullInPiped) => {
            let stdin = if matches!(stdio, StdioMode::Piped) {
                let (r, w) = pipe()?;
                io.stdin = Some(Box::new(tokio::net::unix::pipe::Sender::from_owned_fd(w)?));
                r
            } else {
                OwnedFd::from(std::fs::File::open("/dev/null")?)
            };
            let ((out_r, out_w), (err_r, err_w)) = (pipe()?, pipe()?);
            io.stdout = Some(reader(out_r)?);
            io.stderr = Some(CellErrOutput::from_owned_fd(err_r)?);
            [stdin, out_w, err_w]
        }
    };
    // Our copies of the helper's ends close here: only the helper holds them from now on.
    let forked = zygote.fork_helper([&theirs[0], &theirs[1], &theirs[2]], ctl, into_cgroup)?;
    Ok((forked, io))
}

async fn remove_cgroup(cgroup: Arc<CellCgroup>) -> Option<crate::cgroup::CgroupError> {
    tokio::task::spawn_blocking(move || cgroup.remove().err()).await.ok().flatten()
}

/// A cell whose cgroup could not be removed may still have processes running under its host
/// id: its lease is then never released by this launcher (the lock stays held until the
/// process exits), so the id is not handed to another cell. Otherwise the lease drops here.
fn keep_lease_if(cgroup_kept: bool, cell: &str, lease: Option<super::ids::IdLease>) {
    match lease {
        Some(lease) if cgroup_kept => {
            tracing::warn!(cell, uid = lease.uid(), "the cell's cgroup was not removed; its host id stays leased");
            std::mem::forget(lease);
        }
        _ => {}
    }
}

impl Cell {
    /// Read reports until the payload exec'd (`warm`: until the cell built ahead is ready for
    /// its request) or a setup step failed.
    pub(super) async fn await_stage(&mut self, warm: bool) -> Result<(), SandboxError> {
        loop {
            match self.next_report().await {
                Some(Report::Warm) if warm => return Ok(()),
                Some(Report::Warm) => continue,
                Some(Report::Exec) => {
                    // helper → pid 1 → payload: right after exec, pid 1 has exactly one child.
                    let pid1 = self.child.id().map(super::audit::children).and_then(|c| c.first().copied());
                    self.payload_pid = pid1.map(super::audit::children).and_then(|c| c.first().copied());
                    return Ok(());
                }
                Some(Report::Degraded { mechanism, detail }) => self.degraded.push(Degradation { mechanism, detail }),
                Some(Report::SetupFailed { stage, errno, detail }) => {
                    return Err(SandboxError::Setup { cell: self.id.clone(), stage, errno, detail })
                }
                Some(Report::NetnsReady) => self.start_egress().await?,
                Some(Report::PayloadExit { .. }) => continue,
                None => {
                    let status = self.child.wait().await;
                    return Err(SandboxError::HelperDied {
                        cell: self.id.clone(),
                        detail: format!("helper status {status:?}"),
                    });
                }
            }
        }
    }

    /// pid 1 waits with `lo` up: open the proxy's listener in its network namespace, serve it,
    /// and release pid 1 (one byte on the control socket).
    async fn start_egress(&mut self) -> Result<(), SandboxError> {
        use tokio::io::AsyncWriteExt;
        let plan = self.egress_plan.take();
        let egress = super::netns::start_egress(&self.id, &self.provider, self.child.id(), plan).await?;
        self.egress = Some(egress);
        let ctl = self.reports.get_mut().get_mut();
        ctl.write_all(&[1]).await.map_err(|e| super::netns::setup_error(&self.id, e))
    }

    async fn next_report(&mut self) -> Option<Report> {
        loop {
            match self.reports.next_line().await {
                Ok(Some(line)) => {
                    if let Some(r) = Report::parse(line.as_bytes()) {
                        return Some(r);
                    }
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Kill everything and remove the cgroup (a launch that failed half-way).
    pub(super) async fn discard(self) {
        let Cell { id, cgroup, mut child, egress, id_lease, .. } = self;
        if let Some(e) = egress {
            e.stop();
        }
        let kept = remove_cgroup(cgroup).await;
        keep_lease_if(kept.is_some(), &id, id_lease);
        let _ = child.wait().await;
    }

    /// Take the launcher's ends of the cell's stdio (once): the pty master for a tty cell
    /// (`stdin` and `stdout` are its two halves), else the helper's pipes.
    pub fn take_io(&mut self) -> CellIo {
        match self.pty.take() {
            Some(master) => {
                let (reader, writer) = master.split();
                CellIo { stdin: Some(Box::new(writer)), stdout: Some(Box::new(reader)), stderr: None }
            }
            None => {
                let io = self.io.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
                CellIo { stdin: io.stdin.take(), stdout: io.stdout.take(), stderr: io.stderr.take() }
            }
        }
    }

    /// Where the owner records the limit events it has accounted for (a reading of the
    /// cgroup's [`crate::cgroup::Events`] once a session command was answered): the end of the
    /// cell is classified by the events after that, so a clean `exit 0` an hour after an OOM
    /// kill that a command survived ends as `exited(0)`, not `oom_killed`.
    pub fn events_seen(&self) -> Arc<std::sync::Mutex<crate::cgroup::Events>> {
        self.events_seen.clone()
    }

    /// The helper's pid (signals sent to it are forwarded into the cell).
    pub fn helper_pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Wait for the cell to end (killing it at `deadline`), classify the end, read its usage
    /// and remove its cgroup.
    pub async fn wait(self, deadline: Option<Instant>) -> Outcome {
        self.run_to_end(deadline, std::future::pending(), std::future::pending()).await
    }

    /// Like [`Cell::wait`], but `stop` may end the cell early: gracefully (SIGTERM through the
    /// helper, then the whole cgroup killed after the grace period) or at once. `kill` cuts a
    /// grace period short (a forced stop asked for while a graceful one waits), with its reason.
    pub async fn run_to_end(
        mut self,
        deadline: Option<Instant>,
        stop: impl std::future::Future<Output = Stop>,
        kill: impl std::future::Future<Output = ExitReason>,
    ) -> Outcome {
        let deadline = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let forced = tokio::select! {
            _ = self.child.wait() => None,
            _ = deadline => {
                self.kill_all().await;
                Some(ExitReason::TimedOut)
            }
            stop = stop => match stop {
                Stop::Kill { reason } => {
                    self.kill_all().await;
                    Some(reason)
                }
                Stop::Graceful { grace, reason } => {
                    if let Some(pid) = self.helper_pid() {
                        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
                    }
                    tokio::select! {
                        _ = self.child.wait() => Some(reason),
                        _ = tokio::time::sleep(grace) => {
                            self.kill_all().await;
                            Some(reason)
                        }
                        forced = kill => {
                            self.kill_all().await;
                            Some(forced)
                        }
                    }
                }
            },
        };
        self.finish(forced).await
    }

    /// SIGKILL every process of the cell (cgroup.kill on v2, freeze/kill/thaw on v1). If the
    /// cgroup is gone (removed behind our back) or would not empty, the processes we know by pid
    /// are killed directly: the payload (its pid 1 then exits, and the kernel kills the rest of
    /// the pid namespace with it) and the helper.
    pub async fn kill_all(&self) {
        let cg = self.cgroup.clone();
        let killed =
            tokio::task::spawn_blocking(move || cg.kill_all().map(|()| cg.paths().iter().all(|p| p.exists()))).await;
        if !matches!(killed, Ok(Ok(true))) {
            tracing::warn!(cell = %self.id, "the cell's cgroup is gone or would not empty; killing its processes by pid");
            for pid in [self.payload_pid, self.helper_pid()].into_iter().flatten() {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }

    /// Collect the remaining reports and the helper's status, classify, clean up.
    pub async fn finish(mut self, forced: Option<ExitReason>) -> Outcome {
        let status = self.child.wait().await.ok();
        if let Some(e) = &self.egress {
            // The payload is gone: end its tunnels and drop the listener (the daemon's last
            // hold on the cell's network namespace).
            e.stop();
        }
        let mut payload_exit = None;
        // Every writer of the report channel is gone once the helper has exited; the bound
        // only guards against a descendant that inherited it by a bug.
        let drain = async {
            while let Some(r) = self.next_report().await {
                match r {
                    Report::PayloadExit { code, signal } => payload_exit = Some((code, signal)),
                    Report::Degraded { mechanism, detail } => self.degraded.push(Degradation { mechanism, detail }),
                    _ => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        let cg = self.cgroup.clone();
        let (usage, events) =
            tokio::task::spawn_blocking(move || (cg.usage().unwrap_or_default(), cg.events().unwrap_or_default()))
                .await
                .unwrap_or_default();
        let kept = remove_cgroup(self.cgroup.clone()).await;
        keep_lease_if(kept.is_some(), &self.id, self.id_lease.take());

        let (code, signal) = payload_exit.unwrap_or_else(|| helper_status(status));
        // A limit hit that an answered session command already lived through is not why the
        // cell ended later (its `events` still count everything).
        let seen = *self.events_seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut reason = forced.unwrap_or_else(|| classify(code, signal, &events.since(&seen)));
        if let (ExitReason::SeccompViolation { syscall }, Some(pid)) = (&mut reason, self.payload_pid) {
            *syscall =
                tokio::task::spawn_blocking(move || super::audit::seccomp_kill_syscall(pid)).await.ok().flatten();
        }
        Outcome {
            cell: self.id,
            provider: self.provider,
            reason,
            usage,
            events,
            degraded: self.degraded,
            duration_ms: self.started.elapsed().as_millis() as u64,
            cgroup_backend: self.backend,
        }
    }
}

/// The helper exits with pid 1's status; pid 1 with the payload's (128 + signal if killed).
fn helper_status(status: Option<std::process::ExitStatus>) -> (Option<i32>, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) if s.signal().is_some() => (None, s.signal()),
        Some(s) => match s.code() {
            Some(c) if c > 128 && c < 128 + 65 => (None, Some(c - 128)),
            c => (c, None),
        },
        None => (None, Some(libc::SIGKILL)),
    }
}

/// One reason per run, most specific first: the cgroup's OOM kill, a seccomp kill, a pids
/// limit hit, then the plain status.
pub fn classify(code: Option<i32>, signal: Option<i32>, events: &Events) -> ExitReason {
    if events.oom_kills > 0 {
        return ExitReason::OomKilled;
    }
    if signal == Some(libc::SIGSYS) {
        return ExitReason::SeccompViolation { syscall: None };
    }
    if events.pids_max_hits > 0 {
        return ExitReason::PidsLimited;
    }
    if signal == Some(libc::SIGXFSZ) {
        return ExitReason::FileSizeLimited;
    }
    match (code, signal) {
        (_, Some(sig)) => ExitReason::Signaled { signal: sig },
        (Some(code), None) => ExitReason::Exited { code },
        (None, None) => ExitReason::Signaled { signal: libc::SIGKILL },
    }
}

/// Held while a helper is spawned with an inheritable control fd (see [`spawn_inheriting`]).
static SPAWN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Spawn `cmd` so that it inherits `fd` (at the same number) and nothing else of ours.
///
/// Why not `pre_exec` + `dup2` onto a fixed number: any `pre_exec` makes std fall back from
/// `posix_spawn` (`clone(CLONE_VM|CLONE_VFORK)`) to a full `fork` of the daemon, copying the
/// page tables of a large multi-threaded process on every spawn — the biggest single cost of a
/// launch in the profile. Instead `fd` loses `FD_CLOEXEC` for the duration of one spawn, under
/// a process-wide lock so that no other launch can spawn (and inherit it) meanwhile; std's
/// spawn returns only after the child's `execve` succeeded, and our copy is closed right after.
/// The launcher is the only code in the daemon that spawns processes.
fn spawn_inheriting(cmd: &mut Command, fd: std::os::unix::net::UnixStream) -> std::io::Result<Child> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let _guard = SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // Every fd we create is close-on-exec; this one loses the flag only here, under the lock.
    debug_assert!(
        fcntl(&fd, FcntlArg::F_GETFD).is_ok_and(|f| FdFlag::from_bits_truncate(f).contains(FdFlag::FD_CLOEXEC)),
        "the control fd must arrive close-on-exec"
    );
    fcntl(&fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
    let child = cmd.spawn();
    drop(fd);
    child
}

#[cfg(test)]
mod tests {
    use super::{classify, ExitReason};
    use crate::cgroup::Events;

    /// One reason per run, most specific first: OOM kill, then seccomp (SIGSYS), then a pids
    /// limit hit, then SIGXFSZ, then the plain signal or code.
    #[test]
    fn classify_prefers_the_most_specific_reason() {
        let none = Events::default();
        let oom = Events { oom_kills: 1, ..Events::default() };
        let pids = Events { pids_max_hits: 2, ..Events::default() };
        let kill = Some(libc::SIGKILL);
        assert_eq!(classify(Some(0), None, &none), ExitReason::Exited { code: 0 });
        assert_eq!(classify(Some(3), None, &pids), ExitReason::PidsLimited);
        assert_eq!(classify(None, kill, &none), ExitReason::Signaled { signal: libc::SIGKILL });
        assert_eq!(classify(None, kill, &oom), ExitReason::OomKilled);
        assert_eq!(classify(None, Some(libc::SIGSYS), &oom), ExitReason::OomKilled);
        assert_eq!(classify(None, Some(libc::SIGSYS), &pids), ExitReason::SeccompViolation { syscall: None });
        assert_eq!(classify(None, kill, &pids), ExitReason::PidsLimited);
        assert_eq!(classify(None, Some(libc::SIGXFSZ), &none), ExitReason::FileSizeLimited);
        assert_eq!(classify(Some(1), Some(libc::SIGTERM), &none), ExitReason::Signaled { signal: libc::SIGTERM });
    }

    /// The invariant behind [`super::spawn_inheriting`]: no other code of the library or the
    /// daemon binary spawns a process (a concurrent spawn could inherit the control fd while
    /// its close-on-exec flag is clear). A source scan, cheap and exact enough: any
    /// `Command::new` (std or tokio) outside this file and outside test modules is a new
    /// spawn path that must go through the launcher (or take `SPAWN_LOCK`).
    #[test]
    fn only_the_launcher_spawns() {
        fn scan(dir: &std::path::Path, found: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    // src/bin: separate binaries (the bench), not the daemon.
                    if path.file_name().is_some_and(|n| n != "bin") {
                        scan(&path, found);
                    }
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                // systemd.rs: `exec_in_own_scope` (a `systemctl` query, then an exec in place)
                // runs before any thread or cell exists.
                let allowed = path.ends_with("sandbox/launch.rs") || path.ends_with("src/systemd.rs");
                for (i, line) in code.lines().enumerate() {
                    let line = line.trim_start();
                    if line.starts_with("//") {
                        continue;
                    }
                    if line.contains("Command::new(") && !allowed {
                        found.push(format!("{}:{}: {line}", path.display(), i + 1));
                    }
                }
            }
        }
        let mut found = Vec::new();
        scan(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut found);
        assert!(found.is_empty(), "processes spawned outside the launcher:\n{}", found.join("\n"));
    }
}
