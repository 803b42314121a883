//! The validated, typed policy: what every other module consumes.
//!
//! Nothing here parses or checks input; `validate` builds these values from the raw TOML
//! mirror and guarantees the invariants documented on each field. Types are plain data
//! (serde) so `policy show` can print the effective policy and the launch plan can carry
//! the parts it needs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::seccomp::CompiledSeccomp;

/// A provider policy after `extends` inheritance and validation.
#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    /// Provider name (`[provider] name`, equal to the file stem).
    pub name: String,
    /// The file it was loaded from (absolute).
    pub source: PathBuf,
    pub description: String,
    /// Binary (absolute path) followed by fixed arguments. Empty only for generic sandbox
    /// policies, where the caller supplies the whole argv (`cellkeep run -- ARGS`).
    pub command: Vec<String>,
    /// `[provider] command_after`: the token (e.g. `--`) put between the fixed command and
    /// the caller's arguments, so that a caller's `--flag` reaches the binary as an operand.
    /// `None`: the binary cannot separate them, and caller arguments starting with `-` are
    /// refused (see `sandbox::plan::caller_argv`).
    pub command_after: Option<String>,
    /// `[provider] command_format`, e.g. `"--prompt={}"`: each caller argument becomes ONE
    /// argv element with `{}` replaced by it, for a binary whose option value cannot be
    /// separated by `--` (the value after `=` is never parsed as an option).
    pub command_format: Option<String>,
    /// `[provider] command_via`: how the caller's command reaches the program.
    pub command_via: CommandVia,
    pub mode: Mode,
    /// `[provider] tty = true`: the payload's stdin/stdout/stderr are one pseudo-terminal in raw
    /// mode (its controlling terminal) instead of pipes; stdout and stderr merge into one stream.
    pub tty: bool,
    /// `[provider] abstract = true`: a base for `extends`, valid but not launchable.
    pub is_abstract: bool,
    pub access: Access,
    pub identity: Identity,
    pub env: EnvPolicy,
    pub workdir: Workdir,
    pub limits: Limits,
    pub namespaces: Namespaces,
    pub filesystem: Filesystem,
    pub network: Network,
    pub seccomp: SeccompPolicy,
    pub enforcement: Enforcement,
    /// Session framing (used by the daemon for `mode = "session"`).
    pub session: SessionPolicy,
    /// Cells the daemon keeps built and waiting for this provider (`[pool] prewarm`).
    pub prewarm: u32,
}

impl Policy {
    /// Whether cells may be launched from this policy (it is not an abstract base).
    pub fn is_launchable(&self) -> bool {
        !self.is_abstract
    }
}

/// `[provider] command_via`: where the caller's command goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandVia {
    /// Appended to the program's argv (after `command_after`, or inside `command_format`).
    #[default]
    Argv,
    /// Written to the program's stdin, which is then closed; no caller text reaches its argv
    /// (for a CLI that scans its whole argv for flags, even after `--`). A one-shot takes its
    /// command as one argument; any other caller argument is refused.
    Stdin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Each command is a fresh process: command + args + [the command as one argv element].
    Oneshot,
    /// One long-lived process fed on stdin.
    Session,
}

/// Who may use the provider (enforced by the daemon). Empty lists = root only.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Access {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

/// Who the payload runs as, seen from the host. Never host root.
#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    pub run_as: RunAs,
    /// When `run_as = caller` and the caller is root: `None` (`"cell"`, the default) = a host
    /// uid/gid of the cell's own from the daemon's id range; `Some` = this fixed account.
    pub root_maps_to: Option<UserId>,
    /// How the payload sees itself inside a user namespace.
    pub inside: Inside,
    /// How the workspace appears inside when the cell runs under an id of its own.
    pub workspace_idmap: WorkspaceIdmap,
}

/// The workspace of a cell with an id of its own (a root caller's, or `run_as = "range"`) is
/// bound through an idmapped mount: its owner's files appear as the cell's, and what the cell
/// creates belongs to the owner on the host. Where the kernel or the filesystem cannot idmap
/// (Linux < 5.12; tmpfs < 6.3; 9p, overlayfs, NFS, …), or the owner is root, this decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkspaceIdmap {
    /// No idmap, no launch (stage `mounts`).
    Required,
    /// The cell runs as the workspace's owner instead of an id of its own (reported as the
    /// degradation `workspace_idmap`); refused when the owner is root, or not the caller
    /// (a non-root caller never takes on another user's identity).
    FallbackOwner,
    /// The cell keeps its own id and the workspace is bound as it is (reported as the
    /// degradation `workspace_idmap`): it writes only where its id may, and what it creates
    /// belongs to its id on the host.
    FallbackCell,
}

impl WorkspaceIdmap {
    pub const NAMES: [&'static str; 3] = ["fallback_owner", "required", "fallback_cell"];

    pub fn name(self) -> &'static str {
        match self {
            WorkspaceIdmap::Required => "required",
            WorkspaceIdmap::FallbackOwner => "fallback_owner",
            WorkspaceIdmap::FallbackCell => "fallback_cell",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UserId {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RunAs {
    /// The caller's uid/gid (files written in the workspace belong to the caller).
    Caller,
    /// A fixed unprivileged account.
    User(UserId),
    /// One uid per cell from `[start, start + count)`; gid = uid.
    Range { start: u32, count: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Inside {
    /// The same uid/gid inside as outside.
    Same,
    /// uid/gid 0 inside, mapped to the unprivileged id outside (no capabilities either way).
    Root,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct EnvPolicy {
    /// Names copied from the caller's environment when present.
    pub pass: Vec<String>,
    /// Fixed values (may use `{cwd}` and `{tmp}`); applied after `pass`.
    pub set: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Workdir {
    /// Canonical absolute roots; a caller's cwd must be strictly beneath one.
    pub roots: Vec<PathBuf>,
}

/// Resource limits. `None` = not limited by this policy.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Limits {
    pub memory_max: Option<u64>,
    pub memory_high: Option<u64>,
    /// Swap allowed on top of `memory_max` (0 = none).
    pub memory_swap: Option<u64>,
    /// Fraction of one CPU (0.5 = half a CPU, 2.0 = two CPUs).
    pub cpu: Option<f64>,
    pub pids: Option<u64>,
    pub open_files: Option<u64>,
    /// Largest file a process may write (`RLIMIT_FSIZE`, bytes).
    pub file_size: Option<u64>,
    #[serde(with = "opt_secs")]
    pub wall_time: Option<Duration>,
    #[serde(with = "opt_secs")]
    pub idle_timeout: Option<Duration>,
    /// Bytes of output kept per process (the spool size).
    pub output_bytes: u64,
    /// Size cap of the private tmp.
    pub tmp_size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespaces {
    pub user: bool,
    pub pid: bool,
    pub mount: bool,
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
    pub cgroup: bool,
}

impl Default for Namespaces {
    fn default() -> Self {
        Namespaces { user: true, pid: true, mount: true, net: true, ipc: true, uts: true, cgroup: true }
    }
}

/// A path in a filesystem rule: absolute, or starting with a placeholder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "path")]
pub enum PathRule {
    Absolute(PathBuf),
    /// `{cwd}` or `{cwd}/sub`: the caller's working directory (the suffix is relative).
    Cwd(PathBuf),
    /// `{tmp}` or `{tmp}/sub`: the cell's private tmp.
    Tmp(PathBuf),
}

/// Landlock filesystem rules: everything not listed is denied.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Filesystem {
    pub read: Vec<PathRule>,
    pub write: Vec<PathRule>,
    pub exec: Vec<PathRule>,
}

/// The cell's network. Every cell has its own network namespace: none shares the host's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Network {
    /// An empty network namespace: no interface is up.
    None,
    /// A network namespace with only `lo` up.
    Loopback,
    /// `lo` only, plus cellkeep's egress proxy listening on `127.0.0.1:`[`PROXY_PORT`] inside
    /// the cell (the payload gets `HTTPS_PROXY`/`HTTP_PROXY`): the only way out, allowing by name.
    Proxy { egress: super::egress::Egress },
}

/// The port of the egress proxy inside every `proxy` cell (each cell has its own loopback).
pub const PROXY_PORT: u16 = 3128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompAction {
    Allow,
    /// Fail with EPERM.
    Errno,
    /// Fail with ENOSYS (what unknown syscalls should get in allowlist mode).
    Enosys,
    /// Kill the whole process (exit reason `seccomp_violation`).
    Kill,
    /// Allow and log.
    Log,
}

/// The seccomp part of the policy, kept in source form (for `policy show`) and compiled.
#[derive(Debug, Clone, Serialize)]
pub struct SeccompPolicy {
    pub preset: String,
    pub default_action: SeccompAction,
    pub deny_action: SeccompAction,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    /// BPF programs compiled at load time, installed in order.
    #[serde(skip)]
    pub compiled: CompiledSeccomp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    /// A mechanism the kernel lacks makes the launch fail with a named error.
    Required,
    /// The launch goes on and the degradation is reported.
    BestEffort,
}

/// How a session reply is framed (daemon issue). Defaults to one line per reply.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum SessionPolicy {
    Line,
    Sentinel { line: String },
    Regex { pattern: String },
    JsonField { field: String, equals: String },
}

mod opt_secs {
    use serde::Serializer;
    use std::time::Duration;
    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}
