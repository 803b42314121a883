//! `cellkeep doctor`: what this host offers cellkeep, and whether each policy in a directory
//! can be enforced here — fully, degraded (what its `best_effort` mode accepts, or a Landlock
//! refinement the kernel lacks), or not at all (the missing mechanism named).
//!
//! It reuses the real code instead of re-deriving it: [`crate::cgroup::detect_layout`] and the
//! `cgroup::parse` helpers for where each controller lives, a trial [`CgroupRoot::open`] +
//! [`CgroupRoot::remove_if_empty`] on v1 hosts (on v2 opening a root may move this process
//! and change its cgroup's `subtree_control`, so there the check only reads), [`HostCaps::probe`]
//! for Landlock, and [`plan::check_mechanisms`] — the launch plan's own Landlock check — for
//! each policy. Namespaces and seccomp are read from `/proc` (`/proc/self/ns/*`,
//! `/proc/sys/user/max_*_namespaces`, `/proc/sys/kernel/seccomp/actions_avail`); the
//! launcher needs every namespace a policy enables and seccomp for any filter, whatever the
//! policy's enforcement mode.
//!
//! Exit status: 0 when every policy can launch (fully or degraded), 1 when one would fail, a
//! policy file is invalid, or there is none.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cgroup::{self, parse, CgroupRoot, Layout};
use crate::config::Config;
use crate::policy::check::Severity;
use crate::policy::{Enforcement, Policy};
use crate::sandbox::{plan, Degradation, HostCaps, SandboxError};

/// Controllers the v1 backend uses (a cell has a directory in each).
const V1_CONTROLLERS: [&str; 5] = ["memory", "cpu", "cpuacct", "pids", "freezer"];
/// Controllers the v2 backend enables for cells.
const V2_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// Namespaces a policy can ask for: (policy key, `/proc/self/ns` entry, `max_*_namespaces` name).
const NAMESPACES: [(&str, &str, &str); 7] = [
    ("user", "user", "user"),
    ("pid", "pid", "pid"),
    ("mount", "mnt", "mnt"),
    ("net", "net", "net"),
    ("ipc", "ipc", "ipc"),
    ("uts", "uts", "uts"),
    ("cgroup", "cgroup", "cgroup"),
];
const DEFAULT_CONFIG: &str = "/etc/cellkeep/cellkeep.toml";

#[derive(Debug, Serialize)]
struct Report {
    host: Host,
    policy_dir: PathBuf,
    policies: Vec<PolicyReport>,
    /// Abstract policies (bases for `extends`), not launchable and not assessed.
    abstract_policies: Vec<String>,
    /// Problems that keep policy files from loading (`file:line:col: key: message`).
    invalid: Vec<String>,
    /// Every policy can launch here (the exit status is 0).
    ok: bool,
}

#[derive(Debug, Serialize)]
struct Host {
    kernel: String,
    cgroup: CgroupReport,
    landlock_abi: i32,
    seccomp: Check,
    namespaces: BTreeMap<&'static str, Check>,
    cap_last_cap: u32,
    /// The daemon's `cell_id_range` (root callers' cells each lease one id of it).
    cell_ids: Check,
    /// Idmapped mounts (`mount_setattr(MOUNT_ATTR_IDMAP)`, Linux >= 5.12) for the workspace.
    idmap: Check,
}

#[derive(Debug, Clone, Serialize)]
struct Check {
    available: bool,
    detail: String,
}

#[derive(Debug, Serialize)]
struct CgroupReport {
    /// `None`: no usable cgroup hierarchy at all.
    layout: Option<Layout>,
    /// `"v1"` or `"v2"`: the backend the daemon uses on this layout.
    backend: Option<&'static str>,
    controllers: Vec<Controller>,
    /// Whether cellkeep's root can be created (v1: tried) or delegated (v2: read only).
    root: Check,
}

#[derive(Debug, Serialize)]
struct Controller {
    name: &'static str,
    available: bool,
    /// This process's cgroup directory in the hierarchy carrying it.
    path: Option<PathBuf>,
    detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Full,
    Degraded,
    Fail,
}

#[derive(Debug, Serialize)]
struct PolicyReport {
    name: String,
    file: PathBuf,
    enforcement: Enforcement,
    status: Status,
    /// Mechanisms the policy needs that this host lacks: a launch fails, naming the first.
    missing: Vec<Degradation>,
    /// Mechanisms that run weaker than asked (reported with every launch).
    degraded: Vec<Degradation>,
    /// Not about enforcement, but worth knowing (e.g. the command's binary is not installed).
    notes: Vec<String>,
    /// What exists inside its cells (the mount view); empty without a mount namespace.
    view: Vec<String>,
}

/// `cellkeep doctor [--policies DIR] [--config FILE] [--json]`.
pub(super) fn run(policies: Option<PathBuf>, config: Option<PathBuf>, json: bool) -> anyhow::Result<i32> {
    let daemon = daemon_config(config)?;
    let policy_dir = policies.unwrap_or(daemon.policy_dir);
    let policy_dir = std::fs::canonicalize(&policy_dir).unwrap_or(policy_dir);
    let report = diagnose(policy_dir, &daemon.floor, daemon.cell_id_range, daemon.max_cells);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report);
    }
    Ok(if report.ok { 0 } else { 1 })
}

/// The daemon's settings: from `config`, else the installed config file, else the defaults.
pub(super) fn daemon_config(config: Option<PathBuf>) -> anyhow::Result<Config> {
    Ok(match config {
        Some(path) => Config::load(&path)?,
        None if Path::new(DEFAULT_CONFIG).is_file() => Config::load(Path::new(DEFAULT_CONFIG))?,
        None => Config::default(),
    })
}

fn diagnose(policy_dir: PathBuf, floor: &Path, ids: crate::sandbox::IdRange, max_cells: usize) -> Report {
    let caps = HostCaps::probe();
    let cell_ids = match ids.validate() {
        Ok(()) => Check {
            available: true,
            detail: format!(
                "{}–{} ({} ids; leased under {})",
                ids.start,
                ids.end(),
                ids.count,
                crate::sandbox::ids::ID_LOCK_DIR
            ),
        },
        Err(e) => Check { available: false, detail: e.to_string() },
    };
    let idmap = match plan::kernel_release() {
        v if v >= (5, 12) => Check {
            available: true,
            detail: "Linux >= 5.12 (ext4, xfs; btrfs >= 5.15; tmpfs >= 6.3; not overlayfs, 9p, NFS)".into(),
        },
        _ => Check { available: false, detail: "Linux < 5.12: workspaces take the policy's fallback".into() },
    };
    let host = Host {
        kernel: read_trim("/proc/sys/kernel/osrelease").unwrap_or_default(),
        cgroup: probe_cgroup(),
        landlock_abi: caps.landlock_abi,
        seccomp: probe_seccomp(),
        namespaces: NAMESPACES.iter().map(|(key, ns, max)| (*key, probe_namespace(ns, max))).collect(),
        cap_last_cap: caps.cap_last_cap,
        cell_ids,
        idmap,
    };
    // The same set the daemon would serve: files that cannot load are left out, by name.
    let set = crate::policy::set::load_set(&policy_dir, floor);
    let loaded = &set.policies;
    let mut policies = Vec::new();
    let mut abstract_policies = Vec::new();
    for policy in loaded.values() {
        if policy.is_launchable() {
            let mut report = assess(policy, &host, &caps);
            report.notes.extend(plan::file_table_note(policy, max_cells));
            policies.push(report);
        } else {
            abstract_policies.push(policy.name.clone());
        }
    }
    let invalid: Vec<String> = set
        .rejected
        .iter()
        .flat_map(|r| r.problems.iter().map(move |p| format!("{} (not served by the daemon): {p}", r.name)))
        .collect();
    let ok = invalid.is_empty() && !policies.is_empty() && policies.iter().all(|p| p.status != Status::Fail);
    Report { host, policy_dir, policies, abstract_policies, invalid, ok }
}

/// One policy against the host: the plan's Landlock check, then the mechanisms the launcher
/// always needs (cgroup controllers, the policy's namespaces, seccomp for its filter).
fn assess(policy: &Policy, host: &Host, caps: &HostCaps) -> PolicyReport {
    let mut missing = Vec::new();
    let mut degraded = Vec::new();
    match plan::check_mechanisms(policy, caps) {
        Ok(d) => degraded = d,
        Err(SandboxError::Unsupported { mechanism, detail, .. }) => missing.push(Degradation { mechanism, detail }),
        Err(e) => missing.push(Degradation { mechanism: e.stage(), detail: e.to_string() }),
    }
    if let Some(c) = host.cgroup.controllers.iter().find(|c| !c.available) {
        missing.push(lack(&format!("cgroup_{}", c.name), &c.detail));
    } else if host.cgroup.layout.is_none() || !host.cgroup.root.available {
        missing.push(lack("cgroup", &host.cgroup.root.detail));
    }
    let ns = plan::namespaces(policy);
    let wanted = [ns.user, ns.pid, ns.mount, ns.net, ns.ipc, ns.uts, ns.cgroup];
    for ((key, _, _), want) in NAMESPACES.iter().zip(wanted) {
        match host.namespaces.get(key) {
            Some(check) if want && !check.available => missing.push(lack(&format!("{key}_namespace"), &check.detail)),
            _ => {}
        }
    }
    if !policy.seccomp.compiled.filters.is_empty() && !host.seccomp.available {
        missing.push(lack("seccomp", &host.seccomp.detail));
    }
    let mut notes = Vec::new();
    workspace_idmap(policy, &mut degraded, &mut notes);
    if plan::udp_refused(policy, caps) {
        notes.push(
            "no UDP in its cells: cgroup v1 (or v2 with cgroup.memory=nosocket on the kernel command line) cannot \
             charge UDP buffers to a cell, so socket(AF_INET*, SOCK_DGRAM) fails with EACCES"
                .to_owned(),
        );
    }
    if caps.tcp_uncharged && !matches!(policy.network, crate::policy::Network::None) {
        notes.push(
            "TCP buffers are not charged to its cells: the kernel was booted with cgroup.memory=nosocket, so a cell \
             with lo up can fill the host-wide tcp_mem budget; remove that option to bound them by memory_max"
                .to_owned(),
        );
    }
    let hidden = policy.command.first().and_then(|b| crate::policy::lint::hidden_by_cell_mounts(policy, Path::new(b)));
    if let (Some(bin), Some(mount)) = (policy.command.first(), hidden) {
        let detail =
            format!("command {bin} is under {mount}, which every cell mounts privately: launches fail with ENOENT");
        missing.push(lack("command", &detail));
    } else if let Some(bin) = policy.command.first() {
        if !is_executable(Path::new(bin)) {
            notes.push(format!("command binary {bin} is not installed here: launches fail until it is"));
        }
    }
    // What `policy check` warns about (a command under the cell's private /tmp, …).
    if let Ok(checked) = crate::policy::load_checked(&policy.source) {
        let warnings = crate::policy::lint::lint(&checked);
        notes.extend(warnings.iter().filter(|f| f.severity == Severity::Warning).map(ToString::to_string));
    }
    let status = if !missing.is_empty() {
        Status::Fail
    } else if !degraded.is_empty() {
        Status::Degraded
    } else {
        Status::Full
    };
    PolicyReport {
        name: policy.name.clone(),
        file: policy.source.clone(),
        enforcement: policy.enforcement,
        status,
        missing,
        degraded,
        notes,
        view: if policy.namespaces.mount { crate::sandbox::view::describe_policy(policy) } else { Vec::new() },
    }
}

/// A policy whose root callers' cells run under an id of their own sees its workspace through
/// an idmapped mount: for each workdir root whose filesystem (as predicted from its type and
/// the kernel) cannot be idmapped, the policy's fallback is a degradation, `required` a note
/// (launches in workspaces there fail; elsewhere they work).
fn workspace_idmap(policy: &Policy, degraded: &mut Vec<Degradation>, notes: &mut Vec<String>) {
    use crate::policy::WorkspaceIdmap;
    let ns = plan::namespaces(policy);
    if plan::needs_own_id(policy, 0).is_none() || !ns.user || !ns.mount {
        return;
    }
    for root in &policy.workdir.roots {
        let Err(why) = plan::idmap_prediction(root) else { continue };
        let at = format!("workspaces under {}: {why}", root.display());
        match policy.identity.workspace_idmap {
            WorkspaceIdmap::Required => {
                notes.push(format!("{at}; workspace_idmap = \"required\": launches there fail"))
            }
            WorkspaceIdmap::FallbackOwner => degraded.push(lack(
                "workspace_idmap",
                &format!("{at}: cells there run as the workspace's owner (fallback_owner)"),
            )),
            WorkspaceIdmap::FallbackCell => degraded.push(lack(
                "workspace_idmap",
                &format!("{at}: the workspace is bound as it is, cells write as their own id (fallback_cell)"),
            )),
        }
    }
}

fn lack(mechanism: &str, detail: &str) -> Degradation {
    Degradation { mechanism: mechanism.to_owned(), detail: detail.to_owned() }
}

fn probe_cgroup() -> CgroupReport {
    let layout = match cgroup::detect_layout() {
        Ok(l) => l,
        Err(e) => {
            return CgroupReport {
                layout: None,
                backend: None,
                controllers: Vec::new(),
                root: Check { available: false, detail: e.to_string() },
            }
        }
    };
    let entries = parse::proc_cgroup(&read_trim("/proc/self/cgroup").unwrap_or_default());
    let mounts = parse::mountinfo(&read_trim("/proc/self/mountinfo").unwrap_or_default());
    match layout {
        Layout::Unified => probe_v2(&entries, &mounts),
        Layout::Hybrid | Layout::Legacy => probe_v1(layout, &entries, &mounts),
    }
}

/// v1: each controller's hierarchy and our directory in it, then a real trial of the root:
/// create a probe root beneath this process's cgroups and remove it again.
fn probe_v1(layout: Layout, entries: &[parse::ProcCgroup], mounts: &[parse::Mount]) -> CgroupReport {
    let controllers = V1_CONTROLLERS
        .iter()
        .map(|&name| {
            let dir = parse::v1_own_path(entries, name)
                .and_then(|own| parse::v1_mount(mounts, name, own).and_then(|m| parse::cgroup_dir(m, own)));
            let (available, detail) = match &dir {
                Some(d) if !d.is_dir() => (false, format!("{} is not a directory", d.display())),
                Some(d) if !writable(d) => (false, format!("{} is not writable by this process", d.display())),
                Some(_) => (true, "cgroup v1 hierarchy".to_owned()),
                None => (false, format!("no cgroup v1 hierarchy carries the {name} controller")),
            };
            Controller { name, available, path: dir, detail }
        })
        .collect();
    let probe = format!("cellkeep-doctor-{}", std::process::id());
    let root = match CgroupRoot::open(&probe) {
        Ok(r) => {
            let paths = r.paths();
            let detail = match r.remove_if_empty() {
                Ok(()) => format!("created and removed a probe root in {} hierarchies", paths.len()),
                Err(e) => format!("created a probe root, but removing it failed: {e}"),
            };
            Check { available: true, detail }
        }
        Err(e) => {
            Check { available: false, detail: format!("cannot create a root beneath this process's cgroups: {e}") }
        }
    };
    CgroupReport { layout: Some(layout), backend: Some("v1"), controllers, root }
}

/// v2: the controllers available to this process's cgroup and whether it can delegate them
/// (read only; the daemon enables them in its own cgroup's `cgroup.subtree_control`).
fn probe_v2(entries: &[parse::ProcCgroup], mounts: &[parse::Mount]) -> CgroupReport {
    let own = parse::v2_own_path(entries).unwrap_or("/");
    // The daemon moves itself into `<own>/supervisor`; its parent is the cgroup it delegates.
    let own = match own.rsplit_once('/') {
        Some(("", "supervisor")) => "/",
        Some((parent, "supervisor")) => parent,
        _ => own,
    };
    let dir = parse::v2_mount(mounts, own, Path::new(cgroup::CGROUP_MOUNT)).and_then(|m| parse::cgroup_dir(m, own));
    let Some(dir) = dir else {
        let detail = format!("no cgroup2 mount shows this process's cgroup {own}");
        return CgroupReport {
            layout: Some(Layout::Unified),
            backend: Some("v2"),
            controllers: Vec::new(),
            root: Check { available: false, detail },
        };
    };
    let available = read_trim(dir.join("cgroup.controllers")).unwrap_or_default();
    let enabled = read_trim(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let controllers = V2_CONTROLLERS
        .iter()
        .map(|&name| {
            let has = |list: &str| list.split_whitespace().any(|c| c == name);
            let (ok, detail) = if has(&enabled) {
                (true, "enabled in cgroup.subtree_control".to_owned())
            } else if has(&available) {
                (true, "available; the daemon enables it in cgroup.subtree_control".to_owned())
            } else {
                (false, format!("not in {}/cgroup.controllers: the parent cgroup does not delegate it", dir.display()))
            };
            Controller { name, available: ok, path: Some(dir.clone()), detail }
        })
        .collect();
    let subtree = dir.join("cgroup.subtree_control");
    let root = if !writable(&subtree) {
        Check {
            available: false,
            detail: format!("{} is not writable: run as root, or under systemd with Delegate=yes", subtree.display()),
        }
    } else {
        let busy = own != "/" && !read_trim(dir.join("cgroup.procs")).unwrap_or_default().is_empty();
        match cgroup::shared_own_cgroup() {
            Some((_, pids)) if crate::systemd::booted() => Check {
                available: true,
                detail: format!(
                    "{own} also holds processes that are not cellkeep's (pids {pids:?}): `cellkeep run` and \
                     `cellkeep daemon` move into a transient systemd scope of their own (systemd-run --scope -p Delegate=yes)"
                ),
            },
            Some((path, pids)) => {
                Check { available: false, detail: cgroup::CgroupError::Shared { path, pids }.to_string() }
            }
            None if busy => Check {
                available: true,
                detail: format!(
                    "{own} can be delegated; the daemon moves itself into {own}/supervisor (no-internal-process rule)"
                ),
            },
            None => Check { available: true, detail: format!("{own} can be delegated") },
        }
    };
    CgroupReport { layout: Some(Layout::Unified), backend: Some("v2"), controllers, root }
}

fn probe_seccomp() -> Check {
    match read_trim("/proc/sys/kernel/seccomp/actions_avail") {
        Some(actions) => {
            let has = |a: &str| actions.split_whitespace().any(|x| x == a);
            let available = has("errno") && has("kill_process");
            Check { available, detail: format!("filter actions: {actions}") }
        }
        None => {
            Check { available: false, detail: "no /proc/sys/kernel/seccomp: the kernel lacks seccomp filters".into() }
        }
    }
}

fn probe_namespace(ns: &str, max: &str) -> Check {
    if !Path::new("/proc/self/ns").join(ns).exists() {
        return Check { available: false, detail: format!("no /proc/self/ns/{ns}: the kernel lacks them") };
    }
    let limit = read_trim(format!("/proc/sys/user/max_{max}_namespaces")).and_then(|v| v.parse::<u64>().ok());
    let mut detail = match limit {
        Some(n) => format!("max_{max}_namespaces={n}"),
        None => "supported".to_owned(),
    };
    let mut refused = false;
    if ns == "user" {
        // Debian's switch gates user namespaces made without CAP_SYS_ADMIN, and a cell's is
        // made by a holder running as the cell's leased id (so that id owns it), whose
        // effective capabilities are gone: at 0 every launch fails at stage namespaces.
        if let Some(v) = read_trim("/proc/sys/kernel/unprivileged_userns_clone") {
            refused = v == "0";
            let why = if refused {
                "cells' user namespaces are made by an unprivileged id of their own: set it to 1"
            } else {
                "needed: cells' user namespaces are made by an unprivileged id of their own"
            };
            detail.push_str(&format!("; unprivileged_userns_clone={v} ({why})"));
        }
    }
    Check { available: limit != Some(0) && !refused, detail }
}

fn read_trim(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

fn writable(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).is_ok()
}

fn is_executable(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_ok() && path.is_file()
}

fn print_human(r: &Report) {
    let mark = |ok: bool| if ok { "ok  " } else { "MISSING" };
    let h = &r.host;
    println!("host");
    println!("  kernel        {}", h.kernel);
    match (h.cgroup.layout, h.cgroup.backend) {
        (Some(layout), Some(backend)) => {
            let layout = serde_json::to_value(layout).ok().and_then(|v| v.as_str().map(str::to_owned));
            println!("  cgroups       {} layout, {backend} backend", layout.unwrap_or_default());
        }
        _ => println!("  cgroups       unusable"),
    }
    for c in &h.cgroup.controllers {
        let path = c.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        println!("    {:<10}  {} {path} ({})", c.name, mark(c.available), c.detail);
    }
    println!("  cgroup root   {} {}", mark(h.cgroup.root.available), h.cgroup.root.detail);
    let abi = if h.landlock_abi > 0 { format!("ABI {}", h.landlock_abi) } else { "unavailable".to_owned() };
    println!("  landlock      {abi}");
    println!("  seccomp       {} {}", mark(h.seccomp.available), h.seccomp.detail);
    for (name, c) in &h.namespaces {
        println!("  {:<12}  {} {}", format!("{name} ns"), mark(c.available), c.detail);
    }
    println!("  cell ids      {} {}", mark(h.cell_ids.available), h.cell_ids.detail);
    println!("  idmap mounts  {} {}", mark(h.idmap.available), h.idmap.detail);
    println!("\npolicies in {}", r.policy_dir.display());
    let width = r.policies.iter().map(|p| p.name.chars().count()).max().unwrap_or(0).max(16);
    for p in &r.policies {
        let status = match p.status {
            Status::Full => "full",
            Status::Degraded => "degraded",
            Status::Fail => "FAIL",
        };
        println!("  {:<width$} {status}", p.name);
        for m in &p.missing {
            println!("      missing  {}: {}", m.mechanism, m.detail);
        }
        for d in &p.degraded {
            println!("      degraded {}: {}", d.mechanism, d.detail);
        }
        for n in &p.notes {
            println!("      note     {n}");
        }
        if !p.view.is_empty() {
            // One line: the paths; `--json` and `policy show` give each one's mount options.
            let paths: Vec<&str> = p.view.iter().filter_map(|v| v.split("  ").next()).collect();
            println!("      view     only {}", paths.join(" "));
        }
    }
    if !r.abstract_policies.is_empty() {
        println!("  (abstract, not assessed: {})", r.abstract_policies.join(", "));
    }
    for d in &r.invalid {
        println!("  INVALID  {d}");
    }
    if r.policies.is_empty() && r.invalid.is_empty() {
        println!("  no launchable policy found");
    }
    let verdict = if r.ok { "every policy can launch here" } else { "some policies cannot launch here" };
    println!("\n{verdict}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(landlock_abi: i32, user_ns: bool) -> (Host, HostCaps) {
        let yes = || Check { available: true, detail: String::new() };
        let mut namespaces: BTreeMap<&'static str, Check> = NAMESPACES.iter().map(|(k, _, _)| (*k, yes())).collect();
        namespaces.insert("user", Check { available: user_ns, detail: "max_user_namespaces=0".into() });
        let host = Host {
            kernel: "test".into(),
            cgroup: CgroupReport {
                layout: Some(Layout::Hybrid),
                backend: Some("v1"),
                controllers: Vec::new(),
                root: yes(),
            },
            landlock_abi,
            seccomp: yes(),
            namespaces,
            cap_last_cap: 40,
            cell_ids: yes(),
            idmap: yes(),
        };
        (host, HostCaps { landlock_abi, cap_last_cap: 40, memfd_noexec: true, udp_charged: true, tcp_uncharged: false })
    }

    /// A policy of `base` (with a fixed account for root callers: no idmapped workspace, so
    /// the verdicts do not depend on the filesystems of this machine's workdir roots).
    fn policy(enforcement: &str, network: &str) -> Policy {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/base.toml");
        std::fs::copy(base, dir.path().join("base.toml")).expect("copy base");
        let text = format!(
            "extends = \"base\"\n[provider]\nname = \"p\"\ncommand = []\n[network]\n{network}\n[enforcement]\nmode = \"{enforcement}\"\n\
             [identity]\nroot_maps_to = \"nobody\"\n"
        );
        std::fs::write(dir.path().join("p.toml"), text).expect("write");
        crate::policy::load_file(&dir.path().join("p.toml")).expect("valid policy")
    }

    #[test]
    fn full_degraded_and_failing_policies_are_told_apart() {
        let proxy = "mode = \"proxy\"\negress = [\"api.example.com\"]";
        let (h, caps) = host(7, true);
        assert_eq!(assess(&policy("required", proxy), &h, &caps).status, Status::Full);

        // No Landlock: required → fail naming landlock; best_effort → degraded.
        let (h, caps) = host(0, true);
        let r = assess(&policy("required", proxy), &h, &caps);
        assert_eq!(r.status, Status::Fail);
        assert_eq!(r.missing[0].mechanism, "landlock");
        let r = assess(&policy("best_effort", proxy), &h, &caps);
        assert_eq!(r.status, Status::Degraded);
        assert!(r.degraded.iter().any(|d| d.mechanism == "landlock"), "{:?}", r.degraded);

        // No user namespaces: every policy that asks for one fails, whatever its enforcement.
        let (h, caps) = host(7, false);
        let r = assess(&policy("best_effort", proxy), &h, &caps);
        assert_eq!(r.status, Status::Fail);
        assert_eq!(r.missing[0].mechanism, "user_namespace");
    }
}
