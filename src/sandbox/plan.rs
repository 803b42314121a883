//! The launch plan: everything the cell helper needs, resolved and checked on the launcher's
//! side before anything is created or forked (style rule 1: parse, then validate into types).
//!
//! [`build`] turns a validated [`Policy`] plus one request (argv tail, cwd, caller, caller's
//! environment) into a plain-data [`LaunchPlan`]: the cwd canonicalised and checked against
//! the policy's roots, the binary resolved to an absolute path, the environment assembled from
//! an empty one, placeholders expanded, the ids chosen (never host root), and every mechanism
//! the policy asks for checked against what the kernel offers — a missing one is an error
//! under `required` and a reported [`Degradation`] under `best_effort`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use super::sys::FsIdentity;

use serde::{Deserialize, Serialize};

use crate::policy::seccomp::CompiledSeccomp;
use crate::policy::{
    CommandVia, Enforcement, Inside, Mode, Network, PathRule, Policy, RunAs, WorkspaceIdmap, PROXY_PORT,
};

use super::SandboxError;

/// Where the private tmp appears inside the cell.
pub const CELL_TMP: &str = "/tmp";
/// The per-pid-namespace switch that refuses executable memfds (Linux >= 6.3).
pub const MEMFD_NOEXEC_SYSCTL: &str = "/proc/sys/vm/memfd_noexec";
/// Landlock ABI that added abstract-socket and signal scoping.
const LANDLOCK_SCOPE_ABI: i32 = 6;
/// Landlock ABI that added truncate control.
const LANDLOCK_TRUNCATE_ABI: i32 = 3;

/// What the host kernel offers, probed once per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HostCaps {
    /// 0 = Landlock unavailable.
    pub landlock_abi: i32,
    /// Highest capability number (`/proc/sys/kernel/cap_last_cap`).
    pub cap_last_cap: u32,
    /// The kernel has `vm.memfd_noexec` (Linux >= 6.3).
    pub memfd_noexec: bool,
    /// A cell's memory cgroup charges its UDP buffers: cgroup v2, unless the kernel was booted
    /// with `cgroup.memory=nosocket` (then no socket memory is charged at all). v1 charges only
    /// TCP's (`memory.kmem.tcp.*`), so there cells get no UDP sockets (see `udp_plan`).
    pub udp_charged: bool,
    /// cgroup v2 with `cgroup.memory=nosocket`: TCP buffers are not charged to a cell either
    /// (`cellkeep doctor` says so; there is no per-cell bound to set instead, as v1's
    /// `memory.kmem.tcp.limit_in_bytes`).
    pub tcp_uncharged: bool,
}

impl HostCaps {
    pub fn probe() -> HostCaps {
        let cap_last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(63);
        let memfd_noexec = Path::new(MEMFD_NOEXEC_SYSCTL).exists();
        let unified = matches!(crate::cgroup::detect_layout(), Ok(crate::cgroup::Layout::Unified));
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let nosocket = socket_accounting_off(&cmdline);
        HostCaps {
            landlock_abi: super::sys::landlock_abi(),
            cap_last_cap,
            memfd_noexec,
            udp_charged: unified && !nosocket,
            tcp_uncharged: unified && nosocket,
        }
    }
}

/// Whether the kernel command line turns socket memory accounting off:
/// `cgroup.memory=nosocket`, possibly among other comma-separated options (each
/// `cgroup.memory=` is applied in turn, so any `nosocket` counts).
pub fn socket_accounting_off(cmdline: &str) -> bool {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|p| p.strip_prefix("cgroup.memory="))
        .any(|opts| opts.split(',').any(|o| o == "nosocket"))
}

/// One launch, as asked for by a caller.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    pub cell_id: String,
    /// Appended to the policy's command (the whole argv for a policy with no command).
    pub args: Vec<String>,
    /// The caller's working directory, as given (canonicalised here).
    pub cwd: PathBuf,
    pub caller_uid: u32,
    pub caller_gid: u32,
    /// The caller's supplementary groups (its cwd is opened with its uid, gid and these).
    pub caller_groups: Vec<u32>,
    /// The caller's environment; only names on the policy's pass-list are used.
    pub caller_env: BTreeMap<String, String>,
    /// The cell's own host uid (= gid), leased by the launcher ([`super::ids`]) for a root
    /// caller's cell (`root_maps_to = "cell"`) and for `run_as = "range"`.
    pub range_uid: Option<u32>,
}

/// A mechanism that runs weaker than the policy asked, under `best_effort`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Degradation {
    pub mechanism: String,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ids {
    pub outside_uid: u32,
    pub outside_gid: u32,
    pub inside_uid: u32,
    pub inside_gid: u32,
    /// The owner of the cell's user namespace (the ids its holder creates it with): a host id
    /// leased for the cell, never an account's — not even the caller's or the fixed account
    /// the cell runs as. The owner holds every capability in the namespace from outside
    /// (setns(2)) and is charged the cell's per-user kernel budgets (inotify, signals,
    /// mqueues); the cell itself runs, and writes files, as `outside_*`, mapped to `inside_*`.
    pub owner_uid: u32,
    pub owner_gid: u32,
}

/// The namespaces a cell gets: the policy's, with `net` resolved (see [`namespaces`]).
pub type NsPlan = crate::policy::Namespaces;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RlimitKind {
    Nofile,
    /// Largest file size a process may write (past it: SIGXFSZ, or EFBIG when ignored).
    Fsize,
    Core,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub kind: RlimitKind,
    pub limit: u64,
}

/// Landlock rules as paths seen from inside the cell (opened by the payload after mounts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockPlan {
    /// The ABI to build the ruleset for (every right of that ABI is handled).
    pub abi: i32,
    pub read: Vec<PathBuf>,
    pub write: Vec<PathBuf>,
    pub exec: Vec<PathBuf>,
    /// Abstract UNIX sockets and signals scoped to the cell (ABI 6).
    pub scope: bool,
    /// The cell's cwd: rule paths beneath it are opened without following symlinks (their
    /// owner, unlike the policy's author, may have planted one).
    pub cwd: PathBuf,
}

/// Everything the helper needs; plain data, sent as one JSON line over the control socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchPlan {
    pub cell_id: String,
    pub provider: String,
    /// Absolute path of the binary to exec.
    pub exe: PathBuf,
    pub argv: Vec<String>,
    /// `NAME=value` entries: the payload's whole environment.
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub ids: Ids,
    pub ns: NsPlan,
    /// Bring `lo` up in the new network namespace.
    pub loopback: bool,
    /// `network.mode = "proxy"`: the port of the egress proxy on the cell's 127.0.0.1. pid 1
    /// reports [`super::proto::Report::NetnsReady`] once `lo` is up and waits for the launcher
    /// to open the listener in the cell's namespace before it starts the payload.
    pub proxy_port: Option<u16>,
    pub hostname: String,
    /// The cell's mount view (with its private tmp at [`CELL_TMP`]); `None` = no mount
    /// namespace, the host's view.
    pub view: Option<super::view::ViewPlan>,
    /// Write 2 to the pid namespace's `vm.memfd_noexec` (the kernel has it, Linux >= 6.3).
    pub memfd_noexec: bool,
    pub rlimits: Vec<Rlimit>,
    pub landlock: Option<LandlockPlan>,
    pub seccomp: CompiledSeccomp,
    pub cap_last_cap: u32,
    /// The workspace (cwd) bound through an idmapped mount (a cell with an id of its own).
    pub idmap: Option<IdmapPlan>,
    /// v1: the cell's `tasks` files; the helper writes `0` to each before anything else, moving
    /// itself into the cell (see `CellCgroup::self_join_files`). Empty: the launcher has
    /// attached it (v2). Set by the launcher once the cgroup exists.
    #[serde(default)]
    pub join_cgroup: Vec<PathBuf>,
    /// stdin/stdout/stderr are a pty slave: the payload makes it its controlling terminal.
    /// From the policy's `tty`; the launcher clears it when it passes its own stdio through.
    pub tty: bool,
    /// A cell built before its request ([`build_warm`]): the helper and pid 1 build it up to
    /// the request, report [`super::proto::Report::Warm`] and wait for the request's plan.
    #[serde(default)]
    pub warm: bool,
}

/// The idmapped workspace: the helper clones the mounts of the view's binds under the cwd
/// (`open_tree`), idmaps them with a user namespace mapping the owner to the cell's host ids
/// (`owner_uid cell_uid 1`), and pid 1 moves them into place (see [`super::helper`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdmapPlan {
    /// The workspace's owner on the host (its files appear as the cell's; what the cell
    /// creates belongs to it).
    pub owner_uid: u32,
    pub owner_gid: u32,
    /// What to do when the mount cannot be idmapped.
    pub fallback: IdmapFallback,
}

/// The policy's `workspace_idmap`, resolved for this launch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum IdmapFallback {
    /// Fail the launch.
    Required,
    /// Run as the owner (checked here: not root, and the caller is root or the owner).
    Owner,
    /// Keep the cell's id; bind the workspace as it is.
    Cell,
    /// A non-root caller's cell (see `caller_gets_own_id`): run as the caller, as the
    /// policy's `run_as = "caller"` says, without reporting a degradation.
    Caller,
}

/// Resolve a request against a policy. Touches the filesystem only to canonicalise the cwd
/// and look up the binary.
pub fn build(
    policy: &Policy,
    req: &LaunchRequest,
    host: &HostCaps,
) -> Result<(LaunchPlan, Vec<Degradation>), SandboxError> {
    let provider = policy.name.clone();
    refuse_nul_bytes(policy, req)?;
    let mut degraded = Vec::new();
    let who = FsIdentity { uid: req.caller_uid, gid: req.caller_gid, groups: req.caller_groups.clone() };
    let cwd = resolve_cwd(policy, &req.cwd, &who)?;
    let own_for_caller = caller_gets_own_id(policy, req, &cwd);
    let ids = choose_ids(policy, req, own_for_caller)?;
    let idmap = if own_for_caller {
        Some(IdmapPlan { owner_uid: req.caller_uid, owner_gid: req.caller_gid, fallback: IdmapFallback::Caller })
    } else {
        idmap_plan(policy, req, &cwd, &ids, &mut degraded)?
    };
    let env = build_env(policy, req, &cwd);

    let mut argv = caller_argv(policy, &req.args)?;
    if argv.is_empty() {
        return Err(SandboxError::NoCommand { provider });
    }
    // The caller's own argv[0] (a generic provider) is looked up with the caller's rights, as
    // its cwd is: with root's, whether a file exists in a directory the caller cannot search
    // would show in the answer. The policy's own binary is the policy's business.
    let exe = if policy.command.is_empty() && who.uid != 0 {
        super::sys::with_fs_identity(&who, || resolve_binary(&provider, &argv[0], &env)).map_err(|e| {
            SandboxError::Cwd {
                provider: provider.clone(),
                path: cwd.clone(),
                reason: format!("cannot take on the caller's rights to look up the binary: {e}"),
            }
        })??
    } else {
        resolve_binary(&provider, &argv[0], &env)?
    };
    argv[0] = exe.to_string_lossy().into_owned();

    let landlock = landlock_plan(policy, &cwd, host, &mut degraded)?;
    // RLIMIT_CORE 1, not 0: for a pipe core_pattern (apport, systemd-coredump) the kernel
    // ignores 0 and runs the host's handler as root for every crash in the cell; at exactly 1
    // it aborts the pipe dump, and a core file under a page is never written (soft and hard
    // are set alike: the cell cannot raise it).
    let mut rlimits = vec![Rlimit { kind: RlimitKind::Core, limit: 1 }];
    if let Some(n) = policy.limits.open_files {
        rlimits.push(Rlimit { kind: RlimitKind::Nofile, limit: n });
    }
    if let Some(n) = policy.limits.file_size {
        rlimits.push(Rlimit { kind: RlimitKind::Fsize, limit: n });
    }
    let mut plan = cell_part(policy, &req.cell_id, ids, host, Some(&cwd), &mut degraded)?;
    plan.exe = exe;
    plan.argv = argv;
    plan.env = env;
    plan.cwd = cwd;
    plan.rlimits = rlimits;
    plan.landlock = landlock;
    plan.idmap = idmap;
    Ok((plan, degraded))
}

/// The part of a plan that does not depend on the request (the cell: ids, namespaces, the
/// view of `cwd`, or without one its host part, seccomp); the request's fields empty.
fn cell_part(
    policy: &Policy,
    cell_id: &str,
    ids: Ids,
    host: &HostCaps,
    cwd: Option<&Path>,
    degraded: &mut Vec<Degradation>,
) -> Result<LaunchPlan, SandboxError> {
    let ns = namespaces(policy);
    let mut seccomp = policy.seccomp.compiled.clone();
    let memfd_noexec = memfd_plan(policy, ns, host, &mut seccomp, degraded)?;
    udp_plan(policy, host, &mut seccomp)?;
    Ok(LaunchPlan {
        cell_id: cell_id.to_owned(),
        provider: policy.name.clone(),
        exe: PathBuf::new(),
        argv: Vec::new(),
        env: Vec::new(),
        cwd: cwd.map_or_else(|| PathBuf::from("/"), Path::to_owned),
        ids,
        ns,
        loopback: matches!(policy.network, Network::Loopback | Network::Proxy { .. }),
        proxy_port: matches!(policy.network, Network::Proxy { .. }).then_some(PROXY_PORT),
        hostname: "cellkeep".to_owned(),
        view: ns.mount.then(|| super::view::plan_view(policy, cwd, ns.pid, policy.limits.tmp_size)),
        memfd_noexec,
        rlimits: Vec::new(),
        landlock: None,
        seccomp,
        cap_last_cap: host.cap_last_cap,
        idmap: None,
        join_cgroup: Vec::new(),
        tty: policy.tty,
        warm: cwd.is_none(),
    })
}

/// The plan of a cell built before its request (`[pool] prewarm`): the cell's part only, for
/// a root caller (a request from a caller who would get other ids does not fit it). The
/// request's own plan ([`build`], with the same `range_uid`) follows at the request and must
/// [`fits`] this one.
pub fn build_warm(
    policy: &Policy,
    cell_id: &str,
    range_uid: Option<u32>,
    host: &HostCaps,
) -> Result<LaunchPlan, SandboxError> {
    let req = LaunchRequest {
        cell_id: cell_id.to_owned(),
        args: Vec::new(),
        cwd: PathBuf::from("/"),
        caller_uid: 0,
        caller_gid: 0,
        caller_groups: Vec::new(),
        caller_env: BTreeMap::new(),
        range_uid,
    };
    let ids = choose_ids(policy, &req, false)?;
    cell_part(policy, cell_id, ids, host, None, &mut Vec::new())
}

/// Can the cell built from `warm` run the request planned as `req`? Everything the cell made
/// before the request must be what the request would have made. `Err`: what differs.
pub fn fits(warm: &LaunchPlan, req: &LaunchPlan) -> Result<(), String> {
    let same = [
        (warm.ids == req.ids, "identity"),
        (warm.ns == req.ns, "namespaces"),
        (warm.loopback == req.loopback && warm.proxy_port == req.proxy_port, "network"),
        (warm.hostname == req.hostname, "hostname"),
        (warm.memfd_noexec == req.memfd_noexec, "memfd_noexec"),
        (warm.cap_last_cap == req.cap_last_cap, "capabilities"),
        (warm.tty == req.tty, "terminal"),
    ];
    if let Some((_, what)) = same.iter().find(|(ok, _)| !ok) {
        return Err(format!("the request's {what} differs from the pre-built cell's"));
    }
    match (&warm.view, &req.view) {
        (None, None) => Ok(()),
        (Some(base), Some(full)) => super::view::fits(base, full),
        _ => Err("the request's mount view differs from the pre-built cell's".into()),
    }
}

/// The payload's argv: the policy's fixed command, then its `command_after` token (if any),
/// then the caller's arguments (or, with `command_format`, each caller argument inside one
/// element such as `--prompt=ARG`). A caller argument starting with `-` would reach a binary
/// that cannot tell it from an option (`--version`, `--dangerously-skip-permissions`): without
/// either setting it is refused. A policy without a command takes the caller's whole argv.
/// Under `command_via = "stdin"` the argv is the fixed command alone and any caller argument
/// is refused: the pool has already moved a one-shot's command to its stdin.
pub fn caller_argv(policy: &Policy, args: &[String]) -> Result<Vec<String>, SandboxError> {
    if policy.command.is_empty() {
        return Ok(args.to_vec());
    }
    if policy.command_via == CommandVia::Stdin {
        if !args.is_empty() {
            let hint = if policy.mode == Mode::Session {
                "; a session takes its commands on stdin"
            } else {
                "; give the command as the one-shot's command (or the one argument of a spawn), or, with \
                 `cellkeep run`, on its stdin"
            };
            return Err(SandboxError::StdinOnly { provider: policy.name.clone(), hint });
        }
        return Ok(policy.command.clone());
    }
    let mut argv = policy.command.clone();
    if let Some(format) = &policy.command_format {
        argv.extend(args.iter().map(|a| format.replacen("{}", a, 1)));
        return Ok(argv);
    }
    match &policy.command_after {
        Some(after) if !args.is_empty() => argv.push(after.clone()),
        Some(_) => {}
        None => {
            if let Some(arg) = args.iter().find(|a| a.starts_with('-')) {
                return Err(SandboxError::OptionArgument { provider: policy.name.clone(), arg: arg.clone() });
            }
        }
    }
    argv.extend(args.iter().cloned());
    Ok(argv)
}

/// The namespaces a cell of `policy` gets.
pub fn namespaces(policy: &Policy) -> NsPlan {
    // Every cell has its own network namespace (validation refuses `namespaces.net = false`;
    // this holds even for a policy built by hand).
    NsPlan { net: true, ..policy.namespaces }
}

/// The kernel-mechanism check of [`build`] alone, without a request (for `cellkeep doctor`):
/// what `host` lacks for `policy` — an error under `required`, degradations otherwise.
pub fn check_mechanisms(policy: &Policy, host: &HostCaps) -> Result<Vec<Degradation>, SandboxError> {
    let mut degraded = Vec::new();
    // The cwd only places `{cwd}` rules, which do not matter for the check.
    landlock_plan(policy, Path::new("/"), host, &mut degraded)?;
    let mut seccomp = CompiledSeccomp::default();
    memfd_plan(policy, namespaces(policy), host, &mut seccomp, &mut degraded)?;
    Ok(degraded)
}

/// Executable memfds: `vm.memfd_noexec = 2` in the cell's pid namespace where the kernel has
/// it (true returned), else seccomp refuses `memfd_create` and a `memfd_noexec` degradation
/// is reported (the fallback holds, but memfds are gone for the payload).
fn memfd_plan(
    policy: &Policy,
    ns: NsPlan,
    host: &HostCaps,
    seccomp: &mut CompiledSeccomp,
    degraded: &mut Vec<Degradation>,
) -> Result<bool, SandboxError> {
    if ns.pid && host.memfd_noexec {
        return Ok(true);
    }
    let filter = crate::policy::seccomp::memfd_create_filter().map_err(|e| SandboxError::Unsupported {
        provider: policy.name.clone(),
        mechanism: "seccomp".into(),
        detail: format!("the memfd_create filter: {e}"),
    })?;
    seccomp.filters.push(filter);
    let why = if ns.pid { "the kernel has no vm.memfd_noexec (Linux < 6.3)" } else { "no pid namespace" };
    degraded.push(Degradation {
        mechanism: "memfd_noexec".into(),
        detail: format!("{why}: memfd_create is refused by seccomp (ENOSYS) instead"),
    });
    Ok(false)
}

/// UDP where the cell's cgroup cannot charge its buffers (cgroup v1): a cell whose `lo` is up
/// (`loopback`, `proxy`) could otherwise queue datagrams to its own sockets past
/// `memory_max`, into the host-wide `udp_mem` budget, until UDP (DNS) fails for the whole
/// host. There seccomp refuses datagram INET sockets (EACCES): isolation is whole, a
/// function is missing (`cellkeep doctor` notes it). A `none` cell has no interface up and
/// nothing to send to, so it keeps its filter as is.
fn udp_plan(policy: &Policy, host: &HostCaps, seccomp: &mut CompiledSeccomp) -> Result<(), SandboxError> {
    if !udp_refused(policy, host) {
        return Ok(());
    }
    let filter = crate::policy::seccomp::udp_filter().map_err(|e| SandboxError::Unsupported {
        provider: policy.name.clone(),
        mechanism: "seccomp".into(),
        detail: format!("the UDP filter: {e}"),
    })?;
    seccomp.filters.push(filter);
    Ok(())
}

/// Whether `max_cells` cells of `policy` can fill this host's open-file table (`fs.file-max`),
/// and if so a sentence saying so. Each of a cell's processes (its `pids` limit, else the
/// kernel's `pid_max`) may open `open_files` files (else this process's hard `RLIMIT_NOFILE`,
/// which cells inherit); no kernel limit bounds a cgroup's open files but its memory (each
/// `struct file` is charged to it). systemd as PID 1 raises `fs.file-max` to its maximum at
/// boot, so there memory is the bound; on other hosts the table is shared by every user.
pub fn file_table_note(policy: &Policy, max_cells: usize) -> Option<String> {
    let read = |path: &str| std::fs::read_to_string(path).ok()?.trim().parse::<u64>().ok();
    let file_max = read("/proc/sys/fs/file-max")?;
    let pids = policy.limits.pids.or_else(|| read("/proc/sys/kernel/pid_max"))?;
    let nofile = match policy.limits.open_files {
        Some(n) => n,
        None => nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok()?.1,
    };
    let per_cell = pids.saturating_mul(nofile);
    let all = per_cell.saturating_mul(max_cells as u64);
    (all > file_max).then(|| {
        format!(
            "its cells can fill this host's open-file table: one may hold {per_cell} open files ({pids} processes \
             × open_files {nofile}), {max_cells} of them {all}, and fs.file-max is {file_max}; at that limit no \
             process of any user opens a file. systemd as PID 1 raises fs.file-max to its maximum at boot (open \
             files are then bounded by each cell's memory_max, which they are charged to); elsewhere set \
             fs.file-max = 9223372036854775807 in /etc/sysctl.d/, or lower pids or open_files"
        )
    })
}

/// Whether cells of `policy` get no UDP sockets on `host` (see `udp_plan`).
pub fn udp_refused(policy: &Policy, host: &HostCaps) -> bool {
    !host.udp_charged && !matches!(policy.network, Network::None)
}

/// The caller's arguments and the environment it passes become C strings in the cell: a NUL
/// byte is a bad request here, not a setup failure after a cell was built for it.
fn refuse_nul_bytes(policy: &Policy, req: &LaunchRequest) -> Result<(), SandboxError> {
    let nul = |what: String| SandboxError::NulByte { provider: policy.name.clone(), what };
    if let Some(i) = req.args.iter().position(|a| a.contains('\0')) {
        return Err(nul(if policy.command.is_empty() { format!("argv[{i}]") } else { "the command".to_owned() }));
    }
    for name in &policy.env.pass {
        if req.caller_env.get(name).is_some_and(|v| v.contains('\0')) {
            return Err(nul(format!("environment variable {name}")));
        }
    }
    Ok(())
}

/// Why a cwd the caller cannot use is refused: one message whether it is missing, not a
/// directory or not the caller's to enter, so the answer says nothing about paths the caller
/// could not see itself.
pub const CWD_UNUSABLE: &str = "does not exist, is not a directory, or you may not enter it";

/// Canonicalise the caller's cwd (resolving `..` and symlinks) with the caller's own rights
/// (uid, gid, groups: `sys::with_fs_identity`), and require it to be an absolute path to a
/// directory the caller can enter and read, strictly beneath one of the policy's roots. A
/// symlink that points outside is caught because the check runs on the resolved path.
pub fn resolve_cwd(policy: &Policy, cwd: &Path, who: &FsIdentity) -> Result<PathBuf, SandboxError> {
    let refuse = |reason: String| SandboxError::Cwd { provider: policy.name.clone(), path: cwd.to_owned(), reason };
    if !cwd.is_absolute() {
        return Err(refuse("is a relative path; give an absolute one".to_owned()));
    }
    let lookup = || {
        use std::os::unix::fs::OpenOptionsExt;
        let canonical = std::fs::canonicalize(cwd).ok()?;
        // Opening it for reading also checks search (x) on every component and read on it.
        // O_DIRECTORY: open(2) fails with ENOTDIR on anything else before opening it, so a
        // FIFO (whose read open waits for a writer) or a device never holds this thread.
        let dir = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(&canonical).ok()?;
        dir.metadata().ok()?.is_dir().then_some(canonical)
    };
    // Root's own rights are the daemon's: no thread needed.
    let looked_up = if who.uid == 0 {
        lookup()
    } else {
        super::sys::with_fs_identity(who, lookup)
            .map_err(|e| refuse(format!("cannot take on the caller's rights to look it up: {e}")))?
    };
    let Some(canonical) = looked_up else {
        return Err(refuse(CWD_UNUSABLE.to_owned()));
    };
    if policy.workdir.roots.contains(&canonical) {
        // A root is a shared parent (/home, /tmp): granting it whole would hand the cell every
        // workspace beneath it. A cell works in one directory below a root.
        return Err(SandboxError::Cwd {
            provider: policy.name.clone(),
            path: cwd.to_owned(),
            reason: format!("is the workdir root {} itself; use a directory beneath it", canonical.display()),
        });
    }
    if policy.workdir.roots.iter().any(|root| canonical.starts_with(root)) {
        Ok(canonical)
    } else {
        let roots: Vec<String> = policy.workdir.roots.iter().map(|r| r.display().to_string()).collect();
        Err(SandboxError::Cwd {
            provider: policy.name.clone(),
            path: cwd.to_owned(),
            reason: format!(
                "resolves to {} which is outside the allowed roots [{}]",
                canonical.display(),
                roots.join(", ")
            ),
        })
    }
}

/// Whether a non-root caller's cell (`run_as = "caller"`) runs under a host id of its own,
/// seen inside as the caller: its workspace belongs to the caller (uid and gid) and the cell
/// has a user and a mount namespace to idmap it with (the caller's ids on disk appear as the
/// cell's on the cell's mount, and the cell's as the caller's inside: files it writes are the
/// caller's). The kernel keys some budgets by a process's host uid itself — epoll watches,
/// pipe pages, fds in flight over UNIX sockets — so as the caller's own uid a cell spent
/// those of its caller's processes and other cells. Where the workspace cannot be idmapped
/// (overlayfs, 9p, NFS) the cell runs as the caller, as before ([`IdmapFallback::Caller`]);
/// a workspace of someone else's (a group's directory) keeps the caller's identity too.
fn caller_gets_own_id(policy: &Policy, req: &LaunchRequest, cwd: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    req.caller_uid != 0
        && req.caller_gid != 0
        && req.range_uid.is_some()
        && matches!(policy.identity.run_as, RunAs::Caller)
        && policy.namespaces.user
        && policy.namespaces.mount
        && std::fs::metadata(cwd).is_ok_and(|m| m.uid() == req.caller_uid && m.gid() == req.caller_gid)
}

fn choose_ids(policy: &Policy, req: &LaunchRequest, own_for_caller: bool) -> Result<Ids, SandboxError> {
    let own = || {
        req.range_uid.ok_or_else(|| SandboxError::Unsupported {
            provider: policy.name.clone(),
            mechanism: "identity".into(),
            detail: "no host id was leased for the cell (internal: the launcher leases one)".into(),
        })
    };
    let (uid, gid) = match &policy.identity.run_as {
        RunAs::Caller if req.caller_uid == 0 => match policy.identity.root_maps_to {
            Some(u) => (u.uid, u.gid),
            None => {
                let uid = own()?;
                (uid, uid)
            }
        },
        RunAs::Caller if own_for_caller => {
            let uid = own()?;
            (uid, uid)
        }
        RunAs::Caller => (req.caller_uid, req.caller_gid),
        RunAs::User(u) => (u.uid, u.gid),
        RunAs::Range { .. } => {
            let uid = own()?;
            (uid, uid)
        }
    };
    // (uid_t) -1 is "no change" to setresuid/setresgid: the payload would keep the helper's
    // host root. Refused like root itself.
    if uid == 0 || gid == 0 || uid == u32::MAX || gid == u32::MAX {
        return Err(SandboxError::HostRoot { provider: policy.name.clone() });
    }
    let (inside_uid, inside_gid) = match (policy.namespaces.user, policy.identity.inside) {
        (true, Inside::Root) => (0, 0),
        _ if own_for_caller => (req.caller_uid, req.caller_gid),
        _ => (uid, gid),
    };
    let (owner_uid, owner_gid) = match req.range_uid {
        Some(leased) if policy.namespaces.user => (leased, leased),
        _ => (uid, gid),
    };
    Ok(Ids { outside_uid: uid, outside_gid: gid, inside_uid, inside_gid, owner_uid, owner_gid })
}

/// `(major, minor)` of the running kernel (`(0, 0)` when unreadable).
pub fn kernel_release() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Can the kernel idmap a mount of the filesystem holding `path`? A prediction from the
/// filesystem's type and the kernel release, for `cellkeep doctor`; a launch finds out by
/// trying (and takes the policy's fallback, reported, when it cannot).
pub fn idmap_prediction(path: &Path) -> Result<(), String> {
    let st = nix::sys::statfs::statfs(path).map_err(|e| format!("statfs: {e}"))?;
    let kind = st.filesystem_type().0 as i64;
    let (name, since) = match kind {
        0xEF53 => ("ext4", (5, 12)),
        0x5846_5342 => ("xfs", (5, 12)),
        0x9123_683E => ("btrfs", (5, 15)),
        0x0102_1994 => ("tmpfs", (6, 3)),
        0x794C_7630 => return Err("overlayfs cannot be idmapped".into()),
        0x0102_1997 => return Err("9p cannot be idmapped".into()),
        0x6969 => return Err("NFS cannot be idmapped".into()),
        0x8584_58F6 => return Err("ramfs cannot be idmapped".into()),
        other => return Err(format!("filesystem type {other:#x}: not known to support idmapped mounts")),
    };
    let kernel = kernel_release();
    if kernel < since {
        return Err(format!(
            "{name} is idmappable from Linux {}.{}; this is {}.{}",
            since.0, since.1, kernel.0, kernel.1
        ));
    }
    Ok(())
}

/// Does this launch lease a host id (and from which range)? Every cell with a user namespace
/// does: the namespace's owner (see [`Ids::owner_uid`]); and a cell that runs under an id of
/// its own ([`needs_own_id`]) runs as that one too.
pub fn lease_needed(policy: &Policy, caller_uid: u32) -> Option<Option<(u32, u32)>> {
    needs_own_id(policy, caller_uid).or(policy.namespaces.user.then_some(None))
}

/// Does this launch run under a host id of the cell's own (leased by the launcher)?
pub fn needs_own_id(policy: &Policy, caller_uid: u32) -> Option<Option<(u32, u32)>> {
    match policy.identity.run_as {
        RunAs::Caller if caller_uid == 0 && policy.identity.root_maps_to.is_none() => Some(None),
        RunAs::Range { start, count } => Some(Some((start, count))),
        _ => None,
    }
}

/// The idmapped workspace of a cell running under an id of its own (never for a caller's own
/// or a fixed account's id: those are the identity the workspace is used with). The owner's
/// ids appear as the cell's; an owner of 0 (uid or gid) is never mapped (the cell would create
/// root's files on the host): that workspace counts as one that cannot be idmapped.
fn idmap_plan(
    policy: &Policy,
    req: &LaunchRequest,
    cwd: &Path,
    ids: &Ids,
    degraded: &mut Vec<Degradation>,
) -> Result<Option<IdmapPlan>, SandboxError> {
    use std::os::unix::fs::MetadataExt;
    if needs_own_id(policy, req.caller_uid).is_none() || !policy.namespaces.mount || !policy.namespaces.user {
        return Ok(None);
    }
    let meta = std::fs::metadata(cwd).map_err(|e| SandboxError::Cwd {
        provider: policy.name.clone(),
        path: cwd.to_owned(),
        reason: format!("cannot read its owner: {e}"),
    })?;
    let (owner_uid, owner_gid) = (meta.uid(), meta.gid());
    // Only a root caller may have the cell act as another user's files' owner.
    let owner_allowed = owner_uid != 0 && owner_gid != 0 && (req.caller_uid == 0 || req.caller_uid == owner_uid);
    let fallback = match policy.identity.workspace_idmap {
        WorkspaceIdmap::Required => IdmapFallback::Required,
        WorkspaceIdmap::FallbackOwner if owner_allowed => IdmapFallback::Owner,
        WorkspaceIdmap::FallbackOwner => IdmapFallback::Required,
        WorkspaceIdmap::FallbackCell => IdmapFallback::Cell,
    };
    if !owner_allowed {
        let why = format!(
            "the workspace {} belongs to {owner_uid}:{owner_gid}, which a cell of this caller may not take on",
            cwd.display()
        );
        // Not the owner's identity, then, but still the cell's own: `fallback_owner` degrades
        // to binding the workspace as it is (a root-owned workspace stays root's: the cell can
        // read it and write only what its mode lets anyone write), reported; only `required`
        // refuses. Refusing here would turn away the plainest use — root running a cell in a
        // directory of root's — that ran before per-cell ids, as nobody.
        return match policy.identity.workspace_idmap {
            WorkspaceIdmap::FallbackCell | WorkspaceIdmap::FallbackOwner => {
                degraded.push(Degradation {
                    mechanism: "workspace_idmap".into(),
                    detail: format!("{why}: bound as it is; the cell writes as host uid {}", ids.outside_uid),
                });
                Ok(None)
            }
            _ => Err(SandboxError::Unsupported {
                provider: policy.name.clone(),
                mechanism: "workspace_idmap".into(),
                detail: why,
            }),
        };
    }
    Ok(Some(IdmapPlan { owner_uid, owner_gid, fallback }))
}

fn expand(value: &str, cwd: &Path) -> String {
    value.replace("{cwd}", &cwd.to_string_lossy()).replace("{tmp}", CELL_TMP)
}

fn build_env(policy: &Policy, req: &LaunchRequest, cwd: &Path) -> Vec<String> {
    let mut env: BTreeMap<&str, String> = BTreeMap::new();
    for name in &policy.env.pass {
        if let Some(v) = req.caller_env.get(name) {
            env.insert(name, v.clone());
        }
    }
    for (name, value) in &policy.env.set {
        env.insert(name, expand(value, cwd));
    }
    if let Network::Proxy { .. } = policy.network {
        // Set last: the proxy is the only way out, whatever the caller or the policy says.
        for (name, value) in proxy_env(PROXY_PORT) {
            env.insert(name, value);
        }
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The variables that point HTTP clients at the egress proxy (upper and lower case: curl reads
/// only `http_proxy` in lower case, most others either). `NO_PROXY`: the cell's own loopback
/// stays direct (a test server the payload starts itself). `NODE_USE_ENV_PROXY`: Node's
/// built-in `fetch` honours the variables only with it.
pub fn proxy_env(port: u16) -> Vec<(&'static str, String)> {
    let url = format!("http://127.0.0.1:{port}");
    let no_proxy = "localhost,127.0.0.1,::1".to_owned();
    vec![
        ("HTTPS_PROXY", url.clone()),
        ("https_proxy", url.clone()),
        ("HTTP_PROXY", url.clone()),
        ("http_proxy", url.clone()),
        ("ALL_PROXY", url.clone()),
        ("all_proxy", url),
        ("NO_PROXY", no_proxy.clone()),
        ("no_proxy", no_proxy),
        ("NODE_USE_ENV_PROXY", "1".to_owned()),
    ]
}

/// An argv[0] with a `/` is taken as a path; a bare name is looked up in the cell's PATH.
fn resolve_binary(provider: &str, name: &str, env: &[String]) -> Result<PathBuf, SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec =
        |p: &Path| std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false);
    let found = if name.contains('/') {
        let p = PathBuf::from(name);
        (p.is_absolute() && is_exec(&p)).then_some(p)
    } else {
        let path = env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or("/usr/bin:/bin");
        path.split(':').map(|dir| Path::new(dir).join(name)).find(|p| p.is_absolute() && is_exec(p))
    };
    found.ok_or_else(|| SandboxError::Binary { provider: provider.to_owned(), path: PathBuf::from(name) })
}

fn rule_path(rule: &PathRule, cwd: &Path) -> PathBuf {
    match rule {
        PathRule::Absolute(p) => p.clone(),
        PathRule::Cwd(rest) => cwd.join(rest),
        PathRule::Tmp(rest) => Path::new(CELL_TMP).join(rest),
    }
}

/// Check the kernel's Landlock ABI against what the policy needs: filesystem rules (ABI 1).
/// (The network is confined by the cell's own network namespace, not by Landlock.) Refinements the kernel lacks (truncate
/// control, scoping) are applied where available and reported when not.
fn landlock_plan(
    policy: &Policy,
    cwd: &Path,
    host: &HostCaps,
    degraded: &mut Vec<Degradation>,
) -> Result<Option<LandlockPlan>, SandboxError> {
    let best_effort = policy.enforcement == Enforcement::BestEffort;
    let mut lack = |mechanism: &str, detail: String| -> Result<(), SandboxError> {
        if best_effort {
            degraded.push(Degradation { mechanism: mechanism.to_owned(), detail });
            Ok(())
        } else {
            Err(SandboxError::Unsupported { provider: policy.name.clone(), mechanism: mechanism.to_owned(), detail })
        }
    };
    let abi = host.landlock_abi;
    if abi < 1 {
        lack("landlock", "the kernel has no Landlock (ABI 0): filesystem rules cannot be enforced".into())?;
        return Ok(None);
    }
    if abi < LANDLOCK_TRUNCATE_ABI {
        degraded.push(Degradation {
            mechanism: "landlock_truncate".into(),
            detail: format!("Landlock ABI {abi} < {LANDLOCK_TRUNCATE_ABI}: truncate(2) is not mediated"),
        });
    }
    if abi < LANDLOCK_SCOPE_ABI {
        degraded.push(Degradation {
            mechanism: "landlock_scope".into(),
            detail: format!(
                "Landlock ABI {abi} < {LANDLOCK_SCOPE_ABI}: abstract UNIX sockets and signals are not scoped"
            ),
        });
    }
    let paths = |rules: &[PathRule]| rules.iter().map(|r| rule_path(r, cwd)).collect::<Vec<_>>();
    Ok(Some(LandlockPlan {
        abi,
        read: paths(&policy.filesystem.read),
        write: paths(&policy.filesystem.write),
        exec: paths(&policy.filesystem.exec),
        scope: abi >= LANDLOCK_SCOPE_ABI,
        cwd: cwd.to_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(provider_extra: &str, rest: &str) -> Policy {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/base.toml");
        std::fs::copy(base, dir.path().join("base.toml")).unwrap_or_else(|e| panic!("{e}"));
        let text = format!(
            "extends = \"base\"\n[provider]\nname = \"p\"\ncommand = [\"/bin/echo\", \"-n\"]\n{provider_extra}\n{rest}"
        );
        std::fs::write(dir.path().join("p.toml"), text).unwrap_or_else(|e| panic!("{e}"));
        crate::policy::load_file(&dir.path().join("p.toml")).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    /// `cgroup.memory=nosocket` on a v2 host: no socket memory is charged, so UDP is refused
    /// there as on v1 (it was taken as charged by the layout alone).
    #[test]
    fn nosocket_on_the_command_line_means_uncharged_sockets() {
        assert!(socket_accounting_off("ro quiet cgroup.memory=nosocket"));
        assert!(socket_accounting_off("cgroup.memory=nokmem,nosocket root=/dev/vda"));
        assert!(!socket_accounting_off("cgroup.memory=nokmem quiet"));
        assert!(!socket_accounting_off("xcgroup.memory=nosocket nosocket"));
        assert!(!socket_accounting_off(""));
    }

    #[test]
    fn caller_arguments_never_become_options() {
        let plain = policy("", "");
        assert_eq!(caller_argv(&plain, &args(&["hi"])).ok(), Some(args(&["/bin/echo", "-n", "hi"])));
        assert!(matches!(caller_argv(&plain, &args(&["--version"])), Err(SandboxError::OptionArgument { .. })));
        assert!(matches!(caller_argv(&plain, &args(&["ok", "-x"])), Err(SandboxError::OptionArgument { .. })));
        let after = policy("command_after = \"--\"", "");
        assert_eq!(
            caller_argv(&after, &args(&["--version"])).ok(),
            Some(args(&["/bin/echo", "-n", "--", "--version"]))
        );
        assert_eq!(caller_argv(&after, &[]).ok(), Some(args(&["/bin/echo", "-n"])));
        let format = policy("command_format = \"--prompt={}\"", "");
        assert_eq!(caller_argv(&format, &args(&["-v {}"])).ok(), Some(args(&["/bin/echo", "-n", "--prompt=-v {}"])));
        // command_via = "stdin": the argv is the fixed command; caller arguments are refused.
        let stdin = policy("command_via = \"stdin\"", "");
        assert_eq!(caller_argv(&stdin, &[]).ok(), Some(args(&["/bin/echo", "-n"])));
        assert!(matches!(caller_argv(&stdin, &args(&["hi"])), Err(SandboxError::StdinOnly { .. })));
    }

    #[test]
    fn proxy_cells_get_the_proxy_variables_last() {
        let p = policy(
            "",
            "[environment]\npass = [\"HTTPS_PROXY\"]\n[network]\nmode = \"proxy\"\negress = [\"a.example\"]\n",
        );
        let req = LaunchRequest {
            cell_id: "c".into(),
            args: Vec::new(),
            cwd: PathBuf::from("/tmp"),
            caller_uid: 1000,
            caller_gid: 1000,
            caller_groups: Vec::new(),
            caller_env: [("HTTPS_PROXY".to_owned(), "http://evil:1".to_owned())].into(),
            range_uid: None,
        };
        let env = build_env(&p, &req, Path::new("/tmp"));
        assert!(env.contains(&format!("HTTPS_PROXY=http://127.0.0.1:{PROXY_PORT}")), "{env:?}");
        assert!(env.contains(&"no_proxy=localhost,127.0.0.1,::1".to_owned()), "{env:?}");
        assert!(!env.iter().any(|e| e.contains("evil")), "{env:?}");
        assert!(namespaces(&p).net);
    }

    fn request(uid: u32, gid: u32) -> LaunchRequest {
        LaunchRequest {
            cell_id: "c".into(),
            args: Vec::new(),
            cwd: PathBuf::from("/tmp"),
            caller_uid: uid,
            caller_gid: gid,
            caller_groups: Vec::new(),
            caller_env: [
                ("TERM".to_owned(), "xterm".to_owned()),
                ("PATH".to_owned(), "/evil".to_owned()),
                ("SECRET".to_owned(), "s3cret".to_owned()),
            ]
            .into(),
            range_uid: None,
        }
    }

    fn root() -> FsIdentity {
        FsIdentity { uid: 0, gid: 0, groups: Vec::new() }
    }

    /// The cwd must be absolute, exist, and lie strictly beneath a root; symlinks and `..` are
    /// resolved first, so a link out of the roots is caught; a root itself is refused.
    #[test]
    fn resolve_cwd_accepts_only_directories_strictly_beneath_a_root() {
        let p = policy("", "[workdir]\nroots = [\"/tmp\"]\n");
        let ws = tempfile::Builder::new().prefix("ck-cwd-").tempdir_in("/tmp").unwrap();
        let canonical = std::fs::canonicalize(ws.path()).unwrap();
        std::fs::create_dir(ws.path().join("sub")).unwrap();
        std::fs::write(ws.path().join("file"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", ws.path().join("out")).unwrap();
        assert_eq!(resolve_cwd(&p, ws.path(), &root()).unwrap(), canonical);
        assert_eq!(resolve_cwd(&p, &ws.path().join("sub/../sub"), &root()).unwrap(), canonical.join("sub"));
        let refused = |cwd: &Path| match resolve_cwd(&p, cwd, &root()) {
            Err(SandboxError::Cwd { reason, .. }) => reason,
            other => panic!("{}: {other:?}", cwd.display()),
        };
        assert!(refused(Path::new("tmp/x")).contains("relative"));
        assert_eq!(refused(&ws.path().join("none")), CWD_UNUSABLE);
        assert_eq!(refused(&ws.path().join("file")), CWD_UNUSABLE);
        assert!(refused(&ws.path().join("out")).contains("outside the allowed roots"));
        assert!(refused(Path::new("/tmp")).contains("workdir root"));
        assert!(refused(Path::new("/etc")).contains("outside the allowed roots"));
    }

    /// Host root is never the identity: a root caller gets the cell's own leased id (or a
    /// fixed `root_maps_to` account), `run_as` a user or a range picks that, `inside = "root"`
    /// only changes the uid inside the namespace; without a lease nothing runs.
    #[test]
    fn choose_ids_never_runs_as_host_root() {
        let caller = policy("", "");
        let ids = choose_ids(&caller, &request(1000, 1001), false).unwrap();
        assert_eq!((ids.outside_uid, ids.outside_gid, ids.inside_uid, ids.inside_gid), (1000, 1001, 1000, 1001));
        // In a workspace of its own: the leased id outside, the caller inside.
        let mut own = request(1000, 1001);
        own.range_uid = Some(1_900_000_009);
        let ids = choose_ids(&caller, &own, true).unwrap();
        assert_eq!(
            (ids.outside_uid, ids.outside_gid, ids.inside_uid, ids.inside_gid),
            (1_900_000_009, 1_900_000_009, 1000, 1001)
        );
        let mut root = request(0, 0);
        assert!(choose_ids(&caller, &root, false).is_err(), "a root caller without a leased id must not run");
        root.range_uid = Some(1_900_000_007);
        let ids = choose_ids(&caller, &root, false).unwrap();
        assert_eq!((ids.outside_uid, ids.outside_gid), (1_900_000_007, 1_900_000_007), "a root caller's own id");
        assert_eq!(needs_own_id(&caller, 0), Some(None));
        assert_eq!(needs_own_id(&caller, 1000), None);
        let legacy = policy("", "[identity]\nroot_maps_to = \"nobody\"\n");
        let ids = choose_ids(&legacy, &request(0, 0), false).unwrap();
        assert_eq!((ids.outside_uid, ids.outside_gid), (65534, 65534), "a fixed root_maps_to account");
        assert_eq!(needs_own_id(&legacy, 0), None);
        let fixed = policy("", "[identity]\nrun_as = 4242\n");
        let ids = choose_ids(&fixed, &request(1000, 1000), false).unwrap();
        assert_eq!(ids.outside_uid, 4242);
        let range = policy("", "[identity]\nrun_as = \"range\"\nuid_range = [1800000000, 10]\n");
        let mut req = request(1000, 1000);
        req.range_uid = Some(200003);
        let ids = choose_ids(&range, &req, false).unwrap();
        assert_eq!((ids.outside_uid, ids.outside_gid), (200003, 200003));
        assert_eq!(needs_own_id(&range, 1000), Some(Some((1_800_000_000, 10))));
        req.range_uid = None;
        assert!(choose_ids(&range, &req, false).is_err(), "no id derived from the pid any more");
        let inside_root = policy("", "[identity]\ninside = \"root\"\n");
        let ids = choose_ids(&inside_root, &request(1000, 1000), false).unwrap();
        assert_eq!((ids.outside_uid, ids.inside_uid, ids.inside_gid), (1000, 0, 0));
    }

    /// The environment starts empty: only `pass` variables come from the caller, `set` wins
    /// over them and expands `{cwd}` and `{tmp}`; nothing else leaks.
    #[test]
    fn build_env_passes_only_listed_variables_and_expands_set() {
        let p =
            policy("", "[environment]\npass = [\"TERM\", \"PATH\", \"LANG\"]\n[environment.set]\nWS = \"{cwd}/x\"\n");
        let env = build_env(&p, &request(1000, 1000), Path::new("/home/u/ws"));
        assert!(env.contains(&"TERM=xterm".to_owned()), "{env:?}");
        assert!(env.contains(&"PATH=/usr/local/bin:/usr/bin:/bin".to_owned()), "set wins over pass: {env:?}");
        assert!(env.contains(&"WS=/home/u/ws/x".to_owned()), "{env:?}");
        assert!(env.contains(&format!("HOME={CELL_TMP}")), "{env:?}");
        assert!(!env.iter().any(|e| e.starts_with("SECRET=") || e.starts_with("LANG=")), "{env:?}");
        assert!(!env.iter().any(|e| e.contains("PROXY")), "no proxy variables without the proxy: {env:?}");
    }
}
