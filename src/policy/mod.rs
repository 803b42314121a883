//! Provider policies: TOML files under `policies/` → validated [`Policy`] values.
//!
//! Pipeline: [`load`] reads a file and the files it `extends` into the serde mirror in
//! [`raw`] (unknown keys and wrong types are reported, every one of them) and merges them;
//! [`validate`] turns the merged mirror into a typed [`Policy`], compiling seccomp through
//! [`seccomp`] so `policy check` reports exactly what a launch would; [`show()`] prints the
//! effective policy back as TOML; [`set`] loads a directory as a set that leaves out (and
//! reports) the files that do not load, the admin floor applied. Every problem is a
//! [`Diagnostic`] rendered `file:line:col: key: message` (the key part is left out for TOML
//! syntax errors), worded by [`friendly`] (no serde jargon, "did you mean").
//!
//! Review tools on a valid policy ([`load_checked`] keeps the source positions): [`lint`]
//! (warnings and notes: broad grants, missing or hidden paths, …), [`floor`] (the admin floor
//! no policy may loosen; the daemon loads through [`set::load_set`]), [`score`] (exposure,
//! 0–10), [`diff`] (what a change loosens or tightens); [`check()`] runs them for `policy check`.
//! [`mounts`]: the write paths a host's mounts make read-only for the daemon and so for its
//! cells (checked by the daemon, in its own mount namespace, not by `policy check`).
//!
//! # Format reference
//!
//! One file per provider, `policies/<name>.toml`. `policies/base.toml` is the commented
//! example of every key. All keys are optional unless marked *required*.
//!
//! | key | value | default |
//! |---|---|---|
//! | `extends` (top level) | name of a policy in the same directory | none |
//! | `provider.name` *required* | equal to the file stem | — |
//! | `provider.description` | text | `""` |
//! | `provider.abstract` | `true`: a base for `extends`, not launchable | `false` |
//! | `provider.command` *required unless abstract* | `["/abs/binary", "fixed", "args"]`, or `[]` (caller supplies argv) | — |
//! | `provider.mode` | `"oneshot"` \| `"session"` | `"oneshot"` |
//! | `provider.tty` | `true`: stdin/stdout/stderr are one pseudo-terminal (raw mode; stdout and stderr merge) | `false` |
//! | `access.uids` | uids allowed to use the provider (a child's `[access]` replaces the parent's whole) | `[]` (root only) |
//! | `access.groups` | group names (from /etc/group) or gids | `[]` |
//! | `identity.run_as` | `"caller"` \| `"range"` \| user name \| uid (never 0) | `"caller"` |
//! | `identity.root_maps_to` | when the caller is root: `"cell"` (a host uid/gid of the cell's own from the daemon's `cell_id_range`), or a user name or uid (never 0) | `"cell"` |
//! | `identity.uid_range` | `[start, count]`, for `run_as = "range"`; must not contain 0 | none |
//! | `identity.inside` | `"same"` \| `"root"` (root inside the user namespace only) | `"same"` |
//! | `identity.workspace_idmap` | a cell with an id of its own sees its workspace idmapped (owner ↔ cell); where that cannot be done: `"fallback_owner"` (run as the owner) \| `"fallback_cell"` (keep the id, bind as it is) \| `"required"` (fail) | `"fallback_owner"` |
//! | `environment.pass` | variable names copied from the caller | `[]` |
//! | `environment.set` | table `NAME = "value"`; `{cwd}`, `{tmp}` expanded | `{}` |
//! | `workdir.roots` | absolute existing directories; the caller's cwd must be beneath one | `[]` |
//! | `limits.memory_max`, `memory_high`, `memory_swap` | size | unlimited |
//! | `limits.cpu` | a count of CPUs (not a percent), 0.01 to the kernel's quota (`crate::cgroup::MAX_CPU_QUOTA_US`, about 42949): `0.5`, `2` | unlimited |
//! | `limits.pids`, `limits.open_files` | integer ≥ 1 | unlimited |
//! | `limits.file_size` | size > 0: largest file a process may write (`RLIMIT_FSIZE`) | unlimited |
//! | `limits.wall_time`, `limits.idle_timeout` | duration | unlimited |
//! | `limits.output_bytes` | size | `"8M"` |
//! | `limits.tmp_size` | size | `"64M"` |
//! | `namespaces.{user,pid,mount,net,ipc,uts,cgroup}` | bool | `true` |
//! | `filesystem.{read,write,exec}` | paths: absolute, or `{cwd}[/sub]`, `{tmp}[/sub]`; no `..` | `[]` |
//! | `network.mode` | `"none"` \| `"loopback"` \| `"proxy"` | `"none"` |
//! | `network.egress` | names reachable through the egress proxy, or `"learn"`; only with `mode = "proxy"` ([`egress`]) | `[]` |
//! | `seccomp.preset` | `"default"` \| `"none"` | `"default"` |
//! | `seccomp.default_action` | `"allow"` \| `"errno"` \| `"enosys"` \| `"kill"` \| `"log"`; `errno`/`enosys`/`kill` = allowlist mode (`log`: every call passes, those outside `allow` logged) | `"allow"` |
//! | `seccomp.deny` | extra syscall names (x86_64) | `[]` |
//! | `seccomp.deny_action` | `"errno"` \| `"kill"` | `"errno"` |
//! | `seccomp.allow` | names removed from the preset; in allowlist mode, the allowlist | `[]` |
//! | `session.framing` | `"line"` \| `"sentinel"` \| `"regex"` \| `"json_field"` | `"line"` |
//! | `session.sentinel` / `pattern` / `field` + `equals` | for framing sentinel / regex / json_field | — |
//! | `enforcement.mode` | `"required"` \| `"best_effort"` | `"required"` |
//! | `pool.prewarm` | cells the daemon keeps built and waiting (0–64; counted against the cap) | `0` |
//!
//! Sizes: bytes as an integer, or digits with `K`, `M`, `G`, `T` (binary): `"512M"`.
//! Durations: seconds as a number, or digits with `ms`, `s`, `m`, `h`: `"10m"`.
//!
//! Cross-key rules: `memory_high <= memory_max`; `{tmp}` needs `namespaces.mount`;
//! `network.mode` `none`/`loopback` needs `namespaces.net`; `inside = "root"` needs
//! `namespaces.user`; allowlist seccomp needs a non-empty `allow`.
//!
//! **Inheritance** (`extends = "base"` loads `base.toml` from the same directory, which may
//! itself extend another): tables merge key by key; a key set in the child replaces the
//! parent's value wholesale — arrays are replaced, not appended. `environment.set` is a table
//! and so merges name by name. `[access]` is one rule (who may use the provider): a child's
//! `[access]` table replaces the parent's whole, so `uids` alone narrows access to those uids.
//! `extends`, `provider.name` and `provider.abstract` belong to each file and are never
//! inherited. A key that only means something under a setting the child changes is not
//! inherited unless the child sets it: `network.egress` when the child's `network.mode` is not
//! `"proxy"`, `session.sentinel`/`pattern`/`field`/`equals` when its `framing` does not use
//! them, `identity.uid_range` when its `run_as` is not `"range"`, and `command_after`,
//! `command_format`, `command_via` when it sets `command = []`. Cycles and missing parents are
//! reported at the `extends` key; a problem in an inherited key is reported in the file that
//! set it.

pub mod check;
pub mod diff;
pub mod egress;
pub mod floor;
pub mod friendly;
pub mod ids;
pub mod lint;
pub mod load;
pub mod model;
pub mod mounts;
pub mod raw;
pub mod score;
pub mod seccomp;
pub mod set;
pub mod show;
pub mod units;
pub mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use model::*;

/// One problem in a policy file, with its position (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    /// Dotted TOML key, e.g. `limits.memory_max`; empty for TOML syntax errors.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.col)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Every problem found in the file and the files it extends.
    #[error("invalid policy:\n{}", render(.0))]
    Invalid(Vec<Diagnostic>),
    #[error("cannot read policy {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no policy named \"{name}\" in {}", dir.display())]
    NotFound { name: String, dir: PathBuf },
    #[error("policy \"{name}\" ({}) is abstract: it can only be extended, not launched", path.display())]
    NotLaunchable { name: String, path: PathBuf },
}

fn render(diags: &[Diagnostic]) -> String {
    diags.iter().map(|d| format!("  {d}")).collect::<Vec<_>>().join("\n")
}

/// A valid policy together with the merged source it came from, so that later checks
/// (warnings, the admin floor) can point at the `file:line:col` that set each key.
#[derive(Debug, Clone)]
pub struct Checked {
    pub policy: Policy,
    /// The merged raw policy (each value spanned into `sources`).
    pub raw: raw::RawFile,
    pub sources: load::Sources,
}

/// Load, merge and validate one policy file, keeping its source positions.
pub fn load_checked(path: &Path) -> Result<Checked, PolicyError> {
    let loaded = load::load_chain(path)?;
    let (raw, sources) = (loaded.raw.clone(), loaded.sources.clone());
    let policy = validate::validate(loaded).map_err(|d| PolicyError::Invalid(dedup(d)))?;
    Ok(Checked { policy, raw, sources })
}

/// Load, merge and validate one policy file (abstract policies included).
pub fn load_file(path: &Path) -> Result<Policy, PolicyError> {
    load_checked(path).map(|c| c.policy)
}

/// Like [`load_file`], and the policy must also respect the admin `floor` (when one is
/// set): the per-policy step the daemon's load and reload run on each file.
pub fn load_file_within(path: &Path, floor: Option<&floor::Floor>) -> Result<Policy, PolicyError> {
    let checked = load_checked(path)?;
    match floor.map(|f| f.check(&checked)).unwrap_or_default() {
        broken if broken.is_empty() => Ok(checked.policy),
        broken => Err(PolicyError::Invalid(broken)),
    }
}

/// Like [`load_file`], but an abstract policy is an error.
pub fn load_launchable(path: &Path) -> Result<Policy, PolicyError> {
    let policy = load_file(path)?;
    if policy.is_launchable() {
        Ok(policy)
    } else {
        Err(PolicyError::NotLaunchable { name: policy.name, path: path.to_path_buf() })
    }
}

/// Every `*.toml` in `dir`, by file stem, and every problem found (each reported once).
pub fn load_dir(dir: &Path) -> (BTreeMap<String, Policy>, Vec<Diagnostic>) {
    load_dir_within(dir, None)
}

/// What the daemon loads at start and on SIGHUP: [`load_dir_within`] with the admin floor
/// read from `floor_file` (no file there = no floor; an unreadable or invalid floor is one
/// diagnostic and no policy, so a broken floor never lets the policies through unchecked).
pub fn load_dir_floored(dir: &Path, floor_file: &Path) -> (BTreeMap<String, Policy>, Vec<Diagnostic>) {
    match floor::Floor::load_optional(floor_file) {
        Ok(f) => load_dir_within(dir, f.as_ref()),
        Err(e) => (BTreeMap::new(), vec![e.diagnostic()]),
    }
}

/// [`load_dir`] with the admin floor applied to each policy ([`load_file_within`]).
pub fn load_dir_within(dir: &Path, floor: Option<&floor::Floor>) -> (BTreeMap<String, Policy>, Vec<Diagnostic>) {
    let mut policies = BTreeMap::new();
    let mut diags = Vec::new();
    let files = match toml_files(dir) {
        Ok(f) => f,
        Err(d) => return (policies, vec![d]),
    };
    for file in files {
        match load_file_within(&file, floor) {
            Ok(p) => {
                policies.insert(p.name.clone(), p);
            }
            Err(e) => diags.extend(error_diagnostics(&file, e)),
        }
    }
    (policies, dedup(diags))
}

/// Check policy files and directories (every `*.toml` in them): the errors only (see
/// [`check::check_paths`] for warnings and the floor).
pub fn check(paths: &[PathBuf]) -> Vec<Diagnostic> {
    check::check_paths(paths, None).errors().cloned().collect()
}

/// `cellkeep policy show`: the effective policy `name`, looked up in a directory, or the
/// policy file itself when `dir_or_file` is a file.
pub fn run_show(dir_or_file: &Path, name: &str) -> Result<String, PolicyError> {
    let path = if dir_or_file.is_dir() {
        let direct = Path::new(name);
        if name.ends_with(".toml") && direct.is_file() {
            direct.to_path_buf()
        } else {
            dir_or_file.join(format!("{name}.toml"))
        }
    } else {
        dir_or_file.to_path_buf()
    };
    if !path.is_file() {
        return Err(PolicyError::NotFound { name: name.to_owned(), dir: dir_or_file.to_path_buf() });
    }
    load_file(&path).map(|p| show(&p))
}

/// The effective policy after inheritance, as policy TOML that loads back to the same policy.
pub fn show(policy: &Policy) -> String {
    show::show(policy)
}

pub(crate) fn toml_files(dir: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
    let io_diag = |e: std::io::Error| Diagnostic {
        file: dir.to_path_buf(),
        line: 1,
        col: 1,
        key: String::new(),
        message: format!("cannot read directory: {e}"),
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_diag)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

pub(crate) fn error_diagnostics(path: &Path, e: PolicyError) -> Vec<Diagnostic> {
    match e {
        PolicyError::Invalid(d) => d,
        other => vec![Diagnostic {
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            key: String::new(),
            message: other.to_string(),
        }],
    }
}

/// Drop repeated diagnostics (a base's problem shows up once per file extending it).
pub(crate) fn dedup(diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut seen = std::collections::HashSet::new();
    diags.into_iter().filter(|d| seen.insert(d.clone())).collect()
}
