//! The exposure score of a policy: 0 (nothing exposed) to 10, the sum of weighted findings
//! (capped at 10), in the manner of `systemd-analyze security`. Each finding names the key
//! responsible, what it exposes, and its weight, so a reviewer sees at a glance what a policy
//! opens and what a change does to it (`policy diff` prints the score before and after).
//!
//! The weights are a reviewer's rule of thumb, not a measurement: the host network and a
//! missing seccomp preset weigh most (whole kernel or network surfaces), broad filesystem
//! grants and `command = []` (the caller picks the program) next, missing resource limits and
//! credentials passed in least.

use std::fmt::Write as _;

use serde::Serialize;

use super::egress::Egress;
use super::lint::socket_dir;
use super::model::{Enforcement, Inside, Network, PathRule, Policy};
use super::seccomp::DEFAULT_DENY;

/// One weighted finding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Exposure {
    pub key: String,
    pub weight: f64,
    pub finding: String,
}

/// A policy's score and the findings behind it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Score {
    pub name: String,
    pub score: f64,
    pub level: &'static str,
    pub findings: Vec<Exposure>,
}

/// `OK` below 2, `MEDIUM` below 5, `EXPOSED` below 7.5, else `UNSAFE`.
pub fn level(score: f64) -> &'static str {
    match score {
        s if s < 2.0 => "OK",
        s if s < 5.0 => "MEDIUM",
        s if s < 7.5 => "EXPOSED",
        _ => "UNSAFE",
    }
}

/// Score one policy.
pub fn score(p: &Policy) -> Score {
    let mut f = Vec::new();
    let mut add = |key: &str, weight: f64, finding: String| f.push(Exposure { key: key.to_owned(), weight, finding });
    if p.command.is_empty() && p.is_launchable() {
        add("provider.command", 1.0, "command = []: the caller runs any program under the exec paths".to_owned());
    }
    match &p.network {
        Network::Proxy { egress: Egress::Learn } => {
            add("network.egress", 2.5, "egress to any name through the proxy (learn mode)".to_owned())
        }
        Network::Proxy { egress: Egress::Allow(rules) } => {
            let names: Vec<String> = rules.iter().map(ToString::to_string).collect();
            let wild = rules.iter().any(|r| r.wildcard);
            let what = format!("HTTPS egress through the proxy to [{}]", names.join(", "));
            add("network.egress", if wild { 1.2 } else { 1.0 }, what);
        }
        Network::Loopback => add("network.mode", 0.2, "loopback only (no way out of the cell)".to_owned()),
        Network::None => {}
    }
    let ns = &p.namespaces;
    for (on, name, weight, what) in [
        (ns.user, "user", 0.5, "no user namespace: the payload's ids are the host's"),
        (ns.pid, "pid", 0.7, "no pid namespace: sees and may signal host processes of its uid"),
        (ns.mount, "mount", 1.0, "no mount namespace: no private /tmp, the host's mounts as they are"),
        (ns.ipc, "ipc", 0.4, "no ipc namespace: shares System V IPC and POSIX queues with the host"),
        (ns.uts, "uts", 0.1, "no uts namespace: may read the host name"),
        (ns.cgroup, "cgroup", 0.2, "no cgroup namespace: sees the host's cgroup tree"),
    ] {
        if !on {
            add(&format!("namespaces.{name}"), weight, what.to_owned());
        }
    }
    if p.seccomp.preset == "none" {
        add("seccomp.preset", 2.0, "no default deny list: ptrace, bpf, mount, io_uring … reachable".to_owned());
    }
    let reallowed: Vec<&str> =
        p.seccomp.allow.iter().map(String::as_str).filter(|n| DEFAULT_DENY.contains(n)).collect();
    if !reallowed.is_empty() {
        let weight = (0.5 * reallowed.len() as f64).min(2.0);
        add("seccomp.allow", weight, format!("re-allows denied calls: {}", reallowed.join(", ")));
    }
    filesystem(p, &mut add);
    let limits = &p.limits;
    for (missing, key, weight, what) in [
        (limits.memory_max.is_none(), "limits.memory_max", 0.7, "no memory limit"),
        (limits.pids.is_none(), "limits.pids", 0.7, "no process limit (fork bombs)"),
        (limits.cpu.is_none(), "limits.cpu", 0.3, "no CPU limit"),
        (limits.wall_time.is_none(), "limits.wall_time", 0.3, "no wall-time limit"),
        (limits.file_size.is_none(), "limits.file_size", 0.2, "no file-size limit (one file can fill the disk)"),
    ] {
        if missing {
            add(key, weight, what.to_owned());
        }
    }
    let secrets: Vec<&str> = p.env.pass.iter().map(String::as_str).filter(|n| is_credential(n)).collect();
    if !secrets.is_empty() {
        let weight = (0.2 * secrets.len() as f64).min(0.6);
        add("environment.pass", weight, format!("credentials passed into the cell: {}", secrets.join(", ")));
    }
    if p.identity.inside == Inside::Root {
        add("identity.inside", 0.2, "appears as root inside its user namespace".to_owned());
    }
    if p.enforcement == Enforcement::BestEffort {
        add(
            "enforcement.mode",
            1.0,
            "best_effort: runs with weaker isolation where the kernel lacks a mechanism".to_owned(),
        );
    }
    let total: f64 = f.iter().map(|e| e.weight).sum();
    let score = (total.min(10.0) * 10.0).round() / 10.0;
    Score { name: p.name.clone(), score, level: level(score), findings: f }
}

fn filesystem(p: &Policy, add: &mut impl FnMut(&str, f64, String)) {
    let abs = |rules: &[PathRule]| -> Vec<std::path::PathBuf> {
        rules.iter().filter_map(|r| if let PathRule::Absolute(a) = r { Some(a.clone()) } else { None }).collect()
    };
    let system = ["/", "/etc", "/usr", "/home", "/root", "/proc", "/sys", "/boot", "/dev"];
    for path in abs(&p.filesystem.read) {
        let weight = match path.to_str() {
            Some("/") => 2.0,
            Some("/home" | "/root") => 1.0,
            Some("/etc") => 0.3,
            _ => continue,
        };
        add("filesystem.read", weight, format!("reads {}", path.display()));
    }
    let socket = socket_dir();
    for path in abs(&p.filesystem.write) {
        let broad = system.iter().any(|s| std::path::Path::new(s).starts_with(&path)) || socket.starts_with(&path);
        let device = path.starts_with("/dev/") && !broad;
        if broad {
            add("filesystem.write", 2.5, format!("writes {} (a host system directory)", path.display()));
        } else if !device {
            add("filesystem.write", 0.5, format!("writes {} outside the cell's own directories", path.display()));
        }
    }
    for path in abs(&p.filesystem.exec) {
        if ["/", "/home", "/root", "/etc", "/proc", "/sys"].iter().any(|s| std::path::Path::new(s).starts_with(&path)) {
            add("filesystem.exec", 1.5, format!("executes anything under {}", path.display()));
        }
    }
    let writable_exec = p.filesystem.exec.iter().any(|e| matches!(e, PathRule::Cwd(_) | PathRule::Tmp(_)))
        && p.filesystem.write.iter().any(|w| matches!(w, PathRule::Cwd(_) | PathRule::Tmp(_)));
    if writable_exec {
        add(
            "filesystem.exec",
            0.5,
            "may run programs it wrote itself ({cwd} or {tmp} is writable and executable)".to_owned(),
        );
    }
}

/// An environment variable name that usually carries a secret.
fn is_credential(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    ["KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL"].iter().any(|w| n.contains(w))
}

/// The human report: a line per finding with its weight, then the total.
pub fn render(s: &Score, source: &std::path::Path) -> String {
    let mut out = format!("{}  ({})\n", s.name, source.display());
    let width = s.findings.iter().map(|f| f.key.len()).max().unwrap_or(0).max(3);
    if s.findings.is_empty() {
        out.push_str("  nothing exposed\n");
    } else {
        let _ = writeln!(out, "  {:>6}  {:<width$}  FINDING", "WEIGHT", "KEY");
    }
    for f in &s.findings {
        let _ = writeln!(out, "  {:>+6.1}  {:<width$}  {}", f.weight, f.key, f.finding);
    }
    let _ = writeln!(out, "  → exposure {:.1}/10 {}", s.score, s.level);
    out
}
