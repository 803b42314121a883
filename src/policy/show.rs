//! The effective policy (after `extends`) rendered back as policy TOML, for `policy show`.
//!
//! The output is a complete, self-contained policy in the same format a security team
//! writes: every key explicit (defaults included), no `extends`, users and groups as numeric
//! ids. Loading it back yields the same policy.

use std::fmt::Write as _;
use std::time::Duration;

use toml::Value;

use super::model::*;
use super::units::{format_duration, format_size};

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

fn strings<'a>(items: impl IntoIterator<Item = &'a String>) -> Value {
    Value::Array(items.into_iter().map(|i| s(i)).collect())
}

fn ints<T: Copy + Into<i64>>(items: &[T]) -> Value {
    Value::Array(items.iter().map(|i| Value::Integer((*i).into())).collect())
}

fn duration(d: Duration) -> Value {
    if d.subsec_nanos().is_multiple_of(1_000_000) {
        s(&format_duration(d))
    } else {
        Value::Float(d.as_secs_f64())
    }
}

fn path_rule(rule: &PathRule) -> String {
    let (prefix, p) = match rule {
        PathRule::Absolute(p) => return p.display().to_string(),
        PathRule::Cwd(p) => ("{cwd}", p),
        PathRule::Tmp(p) => ("{tmp}", p),
    };
    if p.as_os_str().is_empty() {
        prefix.to_owned()
    } else {
        format!("{prefix}/{}", p.display())
    }
}

fn action(a: SeccompAction) -> Value {
    s(match a {
        SeccompAction::Allow => "allow",
        SeccompAction::Errno => "errno",
        SeccompAction::Enosys => "enosys",
        SeccompAction::Kill => "kill",
        SeccompAction::Log => "log",
    })
}

/// A TOML key, quoted unless it is a bare key.
fn key(k: &str) -> String {
    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        k.to_owned()
    } else {
        s(k).to_string()
    }
}

/// Sections in order, each a list of `(key, value)`.
fn sections(p: &Policy) -> Vec<(&'static str, Vec<(String, Value)>)> {
    let kv = |k: &str, v: Value| (k.to_owned(), v);
    let mut provider = vec![kv("name", s(&p.name)), kv("description", s(&p.description))];
    if p.is_abstract {
        provider.push(kv("abstract", Value::Boolean(true)));
    }
    if !(p.is_abstract && p.command.is_empty()) {
        provider.push(kv("command", strings(&p.command)));
    }
    if let Some(after) = &p.command_after {
        provider.push(kv("command_after", s(after)));
    }
    if let Some(format) = &p.command_format {
        provider.push(kv("command_format", s(format)));
    }
    if p.command_via == CommandVia::Stdin {
        provider.push(kv("command_via", s("stdin")));
    }
    provider.push(kv("mode", s(if p.mode == Mode::Session { "session" } else { "oneshot" })));
    provider.push(kv("tty", Value::Boolean(p.tty)));

    let access = vec![kv("uids", ints(&p.access.uids)), kv("groups", ints(&p.access.gids))];

    let mut identity = match &p.identity.run_as {
        RunAs::Caller => vec![kv("run_as", s("caller"))],
        RunAs::User(u) => vec![kv("run_as", Value::Integer(u.uid.into()))],
        RunAs::Range { start, count } => {
            vec![kv("run_as", s("range")), kv("uid_range", ints(&[*start, *count]))]
        }
    };
    identity.push(kv(
        "root_maps_to",
        match p.identity.root_maps_to {
            None => s("cell"),
            Some(u) => Value::Integer(u.uid.into()),
        },
    ));
    identity.push(kv("workspace_idmap", s(p.identity.workspace_idmap.name())));
    identity.push(kv("inside", s(if p.identity.inside == Inside::Root { "root" } else { "same" })));

    let env_set = p.env.set.iter().map(|(k, v)| (key(k), s(v))).collect();
    let roots: Vec<String> = p.workdir.roots.iter().map(|r| r.display().to_string()).collect();

    let l = &p.limits;
    let mut limits = Vec::new();
    let sizes = [("memory_max", l.memory_max), ("memory_high", l.memory_high), ("memory_swap", l.memory_swap)];
    limits.extend(sizes.iter().filter_map(|(k, v)| v.map(|b| kv(k, s(&format_size(b))))));
    limits.extend(l.cpu.map(|c| kv("cpu", Value::Float(c))));
    for (k, v) in [("pids", l.pids), ("open_files", l.open_files)] {
        limits.extend(v.and_then(|n| i64::try_from(n).ok()).map(|n| kv(k, Value::Integer(n))));
    }
    limits.extend(l.file_size.map(|b| kv("file_size", s(&format_size(b)))));
    limits.extend(l.wall_time.map(|d| kv("wall_time", duration(d))));
    limits.extend(l.idle_timeout.map(|d| kv("idle_timeout", duration(d))));
    limits.push(kv("output_bytes", s(&format_size(l.output_bytes))));
    limits.push(kv("tmp_size", s(&format_size(l.tmp_size))));

    let n = &p.namespaces;
    let namespaces = [
        ("user", n.user),
        ("pid", n.pid),
        ("mount", n.mount),
        ("net", n.net),
        ("ipc", n.ipc),
        ("uts", n.uts),
        ("cgroup", n.cgroup),
    ]
    .iter()
    .map(|(k, b)| kv(k, Value::Boolean(*b)))
    .collect();

    let rules = |r: &[PathRule]| Value::Array(r.iter().map(|r| s(&path_rule(r))).collect());
    let filesystem = vec![
        kv("read", rules(&p.filesystem.read)),
        kv("write", rules(&p.filesystem.write)),
        kv("exec", rules(&p.filesystem.exec)),
    ];

    let network = match &p.network {
        Network::None => vec![kv("mode", s("none"))],
        Network::Loopback => vec![kv("mode", s("loopback"))],
        Network::Proxy { egress: crate::policy::egress::Egress::Learn } => {
            vec![kv("mode", s("proxy")), kv("egress", s("learn"))]
        }
        Network::Proxy { egress: crate::policy::egress::Egress::Allow(rules) } => {
            let names: Vec<String> = rules.iter().map(ToString::to_string).collect();
            vec![kv("mode", s("proxy")), kv("egress", strings(&names))]
        }
    };

    let sc = &p.seccomp;
    let seccomp = vec![
        kv("preset", s(&sc.preset)),
        kv("default_action", action(sc.default_action)),
        kv("deny", strings(&sc.deny)),
        kv("deny_action", action(sc.deny_action)),
        kv("allow", strings(&sc.allow)),
    ];

    let session = match &p.session {
        SessionPolicy::Line => vec![kv("framing", s("line"))],
        SessionPolicy::Sentinel { line } => vec![kv("framing", s("sentinel")), kv("sentinel", s(line))],
        SessionPolicy::Regex { pattern } => vec![kv("framing", s("regex")), kv("pattern", s(pattern))],
        SessionPolicy::JsonField { field, equals } => {
            vec![kv("framing", s("json_field")), kv("field", s(field)), kv("equals", s(equals))]
        }
    };
    let enforcement =
        vec![kv("mode", s(if p.enforcement == Enforcement::BestEffort { "best_effort" } else { "required" }))];

    vec![
        ("provider", provider),
        ("access", access),
        ("identity", identity),
        ("environment", vec![kv("pass", strings(&p.env.pass))]),
        ("environment.set", env_set),
        ("workdir", vec![kv("roots", strings(&roots))]),
        ("limits", limits),
        ("namespaces", namespaces),
        ("filesystem", filesystem),
        ("network", network),
        ("seccomp", seccomp),
        ("session", session),
        ("enforcement", enforcement),
        ("pool", vec![kv("prewarm", Value::Integer(p.prewarm.into()))]),
    ]
}

/// Render the effective policy as TOML.
pub fn show(policy: &Policy) -> String {
    let mut out = format!(
        "# Effective policy \"{}\" from {} (inheritance resolved, defaults explicit).\n",
        policy.name,
        policy.source.display()
    );
    for (name, entries) in sections(policy) {
        let _ = writeln!(out, "\n[{name}]");
        for (k, v) in entries {
            let _ = writeln!(out, "{k} = {v}");
        }
    }
    out
}
