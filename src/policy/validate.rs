//! Raw mirror → typed [`Policy`]: every rule of the format, every problem a [`Diagnostic`].
//!
//! Validation never stops at the first problem: each section is checked on its own, a bad
//! value is reported and replaced by its default so the checks after it still run, and the
//! caller gets either a `Policy` or the complete list of diagnostics for the file.

use std::path::{Component, Path, PathBuf};

use nix::unistd::{Group, User};
use toml::Spanned;

use super::load::{Loaded, Sources};
use super::model::*;
use super::raw::{Opt, OptList, RawFile, Scalar};
use super::seccomp::{self, SeccompSpec};
use super::units::{parse_duration, parse_size};
use super::Diagnostic;

/// Default spool size per process (`limits.output_bytes`).
pub const DEFAULT_OUTPUT_BYTES: u64 = 8 << 20;
/// Default size of the private tmp (`limits.tmp_size`).
pub const DEFAULT_TMP_SIZE: u64 = 64 << 20;
/// Used when `nobody` is missing from /etc/passwd.
const NOBODY: UserId = UserId { uid: 65534, gid: 65534 };

/// Validate a loaded (merged) policy.
pub fn validate(loaded: Loaded) -> Result<Policy, Vec<Diagnostic>> {
    let Loaded { raw, sources, diagnostics, stem, path } = loaded;
    let mut c = Checker { src: &sources, diags: diagnostics };
    let policy = c.policy(raw, &stem, &path);
    let mut diagnostics = c.diags;
    if diagnostics.is_empty() {
        return Ok(policy);
    }
    diagnostics.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
    Err(diagnostics)
}

struct Checker<'a> {
    src: &'a Sources,
    diags: Vec<Diagnostic>,
}

fn list<T: Clone>(v: &OptList<T>) -> Vec<Spanned<T>> {
    v.as_ref().map(|l| l.get_ref().clone()).unwrap_or_default()
}

fn inner<T: Clone>(v: &Opt<T>) -> Option<T> {
    v.as_ref().map(|s| s.get_ref().clone())
}

impl Checker<'_> {
    fn at<T>(&mut self, v: &Spanned<T>, key: &str, msg: impl Into<String>) {
        self.diags.push(self.src.diag(&v.span(), key, msg));
    }

    /// A required key is absent (not reported when the key was present but unreadable).
    fn missing(&mut self, key: &str, msg: impl Into<String>) {
        if self.diags.iter().any(|d| d.key == key) {
            return;
        }
        self.diags.push(self.src.diag_at_file(0, key, msg));
    }

    /// One of a fixed set of words; a bad value is reported and `options[0]` is used.
    fn choose(&mut self, v: &Opt<String>, key: &str, options: &[&'static str]) -> &'static str {
        let Some(v) = v else { return options[0] };
        if let Some(found) = options.iter().find(|o| **o == v.get_ref()) {
            return found;
        }
        let expected: Vec<String> = options.iter().map(|o| format!("\"{o}\"")).collect();
        self.at(v, key, format!("\"{}\" is not one of {}", v.get_ref(), expected.join(", ")));
        options[0]
    }

    fn policy(&mut self, raw: RawFile, stem: &str, path: &Path) -> Policy {
        let is_abstract = inner(&raw.provider.is_abstract).unwrap_or(false);
        let name = self.name(&raw, stem);
        let command = self.command(&raw, is_abstract);
        let mode = match self.choose(&raw.provider.mode, "provider.mode", &["oneshot", "session"]) {
            "session" => Mode::Session,
            _ => Mode::Oneshot,
        };
        let namespaces = self.namespaces(&raw);
        let policy = Policy {
            name,
            source: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
            description: inner(&raw.provider.description).unwrap_or_default(),
            command,
            mode,
            is_abstract,
            access: self.access(&raw),
            identity: self.identity(&raw, &namespaces),
            env: self.env(&raw, &namespaces),
            workdir: self.workdir(&raw),
            limits: self.limits(&raw),
            filesystem: self.filesystem(&raw, &namespaces),
            network: self.network(&raw, &namespaces),
            seccomp: self.seccomp(&raw),
            enforcement: match self.choose(&raw.enforcement.mode, "enforcement.mode", &["required", "best_effort"]) {
                "best_effort" => Enforcement::BestEffort,
                _ => Enforcement::Required,
            },
            session: self.session(&raw),
            namespaces,
        };
        policy
    }

    fn name(&mut self, raw: &RawFile, stem: &str) -> String {
        match &raw.provider.name {
            None => {
                self.missing("provider.name", format!("missing; set name = \"{stem}\" (the file name)"));
                stem.to_owned()
            }
            Some(n) if n.get_ref() != stem => {
                let msg = format!("\"{}\" must equal the file name \"{stem}\"", n.get_ref());
                self.at(n, "provider.name", msg);
                stem.to_owned()
            }
            Some(n) => n.get_ref().clone(),
        }
    }

    fn command(&mut self, raw: &RawFile, is_abstract: bool) -> Vec<String> {
        if raw.provider.command.is_none() && !is_abstract {
            self.missing(
                "provider.command",
                "missing; give the binary and fixed arguments, or [] for a generic sandbox, or set abstract = true",
            );
        }
        let command = list(&raw.provider.command);
        if let Some(first) = command.first() {
            if !first.get_ref().starts_with('/') {
                self.at(first, "provider.command", format!("\"{}\" must be an absolute path", first.get_ref()));
            }
        }
        command.into_iter().map(Spanned::into_inner).collect()
    }

    fn access(&mut self, raw: &RawFile) -> Access {
        let uids = list(&raw.access.uids).into_iter().map(Spanned::into_inner).collect();
        let mut gids = Vec::new();
        for g in list(&raw.access.groups) {
            match resolve_group(g.get_ref()) {
                Ok(gid) => gids.push(gid),
                Err(msg) => self.at(&g, "access.groups", msg),
            }
        }
        Access { uids, gids }
    }

    fn identity(&mut self, raw: &RawFile, ns: &Namespaces) -> Identity {
        let id = &raw.identity;
        let range = self.uid_range(&id.uid_range);
        let run_as = match &id.run_as {
            None => RunAs::Caller,
            Some(v) => match v.get_ref() {
                Scalar::Str(s) if s == "caller" => RunAs::Caller,
                Scalar::Str(s) if s == "range" => match range {
                    Some((start, count)) => RunAs::Range { start, count },
                    None => {
                        if id.uid_range.is_none() {
                            self.at(v, "identity.run_as", "\"range\" needs identity.uid_range = [start, count]");
                        }
                        RunAs::Caller
                    }
                },
                other => match resolve_user(other) {
                    Ok(u) => RunAs::User(u),
                    Err(msg) => {
                        self.at(v, "identity.run_as", msg);
                        RunAs::Caller
                    }
                },
            },
        };
        if let (Some(r), false) = (&id.uid_range, matches!(run_as, RunAs::Range { .. })) {
            if range.is_some() {
                self.at(r, "identity.uid_range", "only used with run_as = \"range\"");
            }
        }
        let root_maps_to = match &id.root_maps_to {
            None => resolve_user(&Scalar::Str("nobody".into())).unwrap_or(NOBODY),
            Some(v) => resolve_user(v.get_ref()).unwrap_or_else(|msg| {
                self.at(v, "identity.root_maps_to", msg);
                NOBODY
            }),
        };
        let inside = match self.choose(&id.inside, "identity.inside", &["same", "root"]) {
            "root" => Inside::Root,
            _ => Inside::Same,
        };
        if let (Inside::Root, false, Some(v)) = (inside, ns.user, &id.inside) {
            self.at(v, "identity.inside", "\"root\" needs a user namespace (namespaces.user = false)");
        }
        Identity { run_as, root_maps_to, inside }
    }

    fn uid_range(&mut self, v: &OptList<i64>) -> Option<(u32, u32)> {
        let v = v.as_ref()?;
        let key = "identity.uid_range";
        let [start, count] = v.get_ref().as_slice() else {
            self.at(v, key, "must be [start, count]");
            return None;
        };
        let (s, c) = (*start.get_ref(), *count.get_ref());
        if s <= 0 || s > i64::from(u32::MAX) {
            self.at(start, key, format!("start {s} must be between 1 and {} (the range must not contain uid 0)", u32::MAX));
            return None;
        }
        if c <= 0 || s + c - 1 > i64::from(u32::MAX) - 1 {
            self.at(count, key, format!("count {c} must be at least 1 and keep the range below uid {}", u32::MAX));
            return None;
        }
        Some((s as u32, c as u32))
    }

    fn env(&mut self, raw: &RawFile, ns: &Namespaces) -> EnvPolicy {
        let mut env = EnvPolicy::default();
        for p in list(&raw.environment.pass) {
            if valid_env_name(p.get_ref()) {
                env.pass.push(p.into_inner());
            } else {
                self.at(&p, "environment.pass", format!("\"{}\" is not a variable name", p.get_ref()));
            }
        }
        for (name, value) in raw.environment.set.clone().unwrap_or_default() {
            let key = format!("environment.set.{name}");
            if !valid_env_name(&name) {
                self.at(&value, &key, format!("\"{name}\" is not a variable name"));
            } else if value.get_ref().contains("{tmp}") && !ns.mount {
                self.at(&value, &key, "{tmp} needs a mount namespace, but namespaces.mount = false");
            }
            env.set.insert(name, value.into_inner());
        }
        env
    }

    fn workdir(&mut self, raw: &RawFile) -> Workdir {
        let mut roots = Vec::new();
        for r in list(&raw.workdir.roots) {
            let text = r.get_ref();
            if !text.starts_with('/') {
                self.at(&r, "workdir.roots", format!("\"{text}\" must be an absolute path (no placeholders)"));
                continue;
            }
            match std::fs::canonicalize(text) {
                Ok(p) => roots.push(p),
                Err(e) => self.at(&r, "workdir.roots", format!("\"{text}\" cannot be resolved: {e}")),
            }
        }
        Workdir { roots }
    }

    fn size(&mut self, v: &Opt<Scalar>, key: &str, zero_ok: bool) -> Option<u64> {
        let v = v.as_ref()?;
        match parse_size(v.get_ref()) {
            Ok(0) if !zero_ok => self.at(v, key, "must be greater than 0"),
            Ok(n) => return Some(n),
            Err(msg) => self.at(v, key, msg),
        }
        None
    }

    fn duration(&mut self, v: &Opt<Scalar>, key: &str) -> Option<std::time::Duration> {
        let v = v.as_ref()?;
        match parse_duration(v.get_ref()) {
            Ok(d) if d.is_zero() => self.at(v, key, "must be greater than 0"),
            Ok(d) => return Some(d),
            Err(msg) => self.at(v, key, msg),
        }
        None
    }

    fn count(&mut self, v: &Opt<i64>, key: &str) -> Option<u64> {
        let v = v.as_ref()?;
        match u64::try_from(*v.get_ref()) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                self.at(v, key, format!("{} must be at least 1", v.get_ref()));
                None
            }
        }
    }

    fn limits(&mut self, raw: &RawFile) -> Limits {
        let l = &raw.limits;
        let cpu = l.cpu.as_ref().and_then(|v| {
            let x = match v.get_ref() {
                Scalar::Int(n) => *n as f64,
                Scalar::Float(x) => *x,
                Scalar::Str(_) => f64::NAN,
            };
            if x.is_finite() && x > 0.0 {
                Some(x)
            } else {
                self.at(v, "limits.cpu", format!("{} must be a number of CPUs greater than 0 (e.g. 0.5)", v.get_ref()));
                None
            }
        });
        let limits = Limits {
            memory_max: self.size(&l.memory_max, "limits.memory_max", false),
            memory_high: self.size(&l.memory_high, "limits.memory_high", false),
            memory_swap: self.size(&l.memory_swap, "limits.memory_swap", true),
            cpu,
            pids: self.count(&l.pids, "limits.pids"),
            open_files: self.count(&l.open_files, "limits.open_files"),
            wall_time: self.duration(&l.wall_time, "limits.wall_time"),
            idle_timeout: self.duration(&l.idle_timeout, "limits.idle_timeout"),
            output_bytes: self.size(&l.output_bytes, "limits.output_bytes", false).unwrap_or(DEFAULT_OUTPUT_BYTES),
            tmp_size: self.size(&l.tmp_size, "limits.tmp_size", false).unwrap_or(DEFAULT_TMP_SIZE),
        };
        if let (Some(high), Some(max), Some(at)) = (limits.memory_high, limits.memory_max, &l.memory_high) {
            if high > max {
                self.at(at, "limits.memory_high", "must not be greater than limits.memory_max");
            }
        }
        limits
    }

    fn namespaces(&mut self, raw: &RawFile) -> Namespaces {
        let n = &raw.namespaces;
        let on = |v: &Opt<bool>| inner(v).unwrap_or(true);
        Namespaces {
            user: on(&n.user),
            pid: on(&n.pid),
            mount: on(&n.mount),
            net: on(&n.net),
            ipc: on(&n.ipc),
            uts: on(&n.uts),
            cgroup: on(&n.cgroup),
        }
    }

    fn filesystem(&mut self, raw: &RawFile, ns: &Namespaces) -> Filesystem {
        let mut rules = |v: &OptList<String>, key: &str| -> Vec<PathRule> {
            let mut out = Vec::new();
            for p in list(v) {
                match parse_path_rule(p.get_ref()) {
                    Ok(PathRule::Tmp(_)) if !ns.mount => {
                        self.at(&p, key, "{tmp} needs a mount namespace, but namespaces.mount = false")
                    }
                    Ok(rule) => out.push(rule),
                    Err(msg) => self.at(&p, key, msg),
                }
            }
            out
        };
        let fs = &raw.filesystem;
        Filesystem {
            read: rules(&fs.read, "filesystem.read"),
            write: rules(&fs.write, "filesystem.write"),
            exec: rules(&fs.exec, "filesystem.exec"),
        }
    }

    fn ports(&mut self, v: &OptList<i64>, key: &str, tcp: bool) -> Vec<u16> {
        if let (Some(v), false) = (v, tcp) {
            if !v.get_ref().is_empty() {
                self.at(v, key, "only used with network.mode = \"tcp\"");
            }
        }
        let mut out = Vec::new();
        for p in list(v) {
            match u16::try_from(*p.get_ref()) {
                Ok(port) if port > 0 => out.push(port),
                _ => self.at(&p, key, format!("{} is not a port (1-65535)", p.get_ref())),
            }
        }
        out
    }

    fn network(&mut self, raw: &RawFile, ns: &Namespaces) -> Network {
        let mode = self.choose(&raw.network.mode, "network.mode", &["none", "loopback", "tcp"]);
        let tcp = mode == "tcp";
        let connect = self.ports(&raw.network.connect, "network.connect", tcp);
        let bind = self.ports(&raw.network.bind, "network.bind", tcp);
        if let (false, false, Some(net)) = (tcp, ns.net, &raw.namespaces.net) {
            let msg = format!("false is only allowed with network.mode = \"tcp\"; mode \"{mode}\" needs a network namespace");
            self.at(net, "namespaces.net", msg);
        }
        match mode {
            "loopback" => Network::Loopback,
            "tcp" => Network::Tcp { connect, bind },
            _ => Network::None,
        }
    }

    fn seccomp(&mut self, raw: &RawFile) -> SeccompPolicy {
        let s = &raw.seccomp;
        let preset = self.choose(&s.preset, "seccomp.preset", &["default", "none"]);
        let default_action =
            action(self.choose(&s.default_action, "seccomp.default_action", &["allow", "errno", "enosys", "kill", "log"]));
        let deny_action = action(self.choose(&s.deny_action, "seccomp.deny_action", &["errno", "kill"]));
        let mut names = |v: &OptList<String>, key: &str| -> Vec<String> {
            let mut out = Vec::new();
            for n in list(v) {
                if seccomp::syscall_nr(n.get_ref()).is_some() {
                    out.push(n.into_inner());
                } else {
                    self.at(&n, key, format!("unknown syscall \"{}\" (not an x86_64 syscall name)", n.get_ref()));
                }
            }
            out
        };
        let allow = names(&s.allow, "seccomp.allow");
        let deny = names(&s.deny, "seccomp.deny");
        if default_action != SeccompAction::Allow && allow.is_empty() {
            match &s.default_action {
                Some(v) => self.at(v, "seccomp.default_action", "allowlist mode needs a non-empty seccomp.allow"),
                None => self.missing("seccomp.allow", "allowlist mode needs a non-empty seccomp.allow"),
            }
        }
        let spec = SeccompSpec { default_preset: preset == "default", default_action, deny_action, allow: &allow, deny: &deny };
        let compiled = seccomp::compile(&spec).unwrap_or_else(|e| {
            self.missing("seccomp", e.to_string());
            Default::default()
        });
        SeccompPolicy { preset: preset.to_owned(), default_action, deny_action, allow, deny, compiled }
    }

    fn session(&mut self, raw: &RawFile) -> SessionPolicy {
        let s = &raw.session;
        let framing = self.choose(&s.framing, "session.framing", &["line", "sentinel", "regex", "json_field"]);
        let keys: [(&str, &Opt<String>, &[&str]); 4] = [
            ("sentinel", &s.sentinel, &["sentinel"]),
            ("pattern", &s.pattern, &["regex"]),
            ("field", &s.field, &["json_field"]),
            ("equals", &s.equals, &["json_field"]),
        ];
        let mut value = |name: &str, v: &Opt<String>, used_by: &[&str]| -> String {
            let key = format!("session.{name}");
            match v {
                Some(v) if !used_by.contains(&framing) => {
                    self.at(v, &key, format!("only used with framing = \"{}\"", used_by.join("\" or \"")));
                    String::new()
                }
                Some(v) if v.get_ref().is_empty() => {
                    self.at(v, &key, "must not be empty");
                    String::new()
                }
                Some(v) => v.get_ref().clone(),
                None if used_by.contains(&framing) => {
                    self.missing(&key, format!("missing; framing = \"{framing}\" needs it"));
                    String::new()
                }
                None => String::new(),
            }
        };
        let [sentinel, pattern, field, equals] = keys.map(|(name, v, used_by)| value(name, v, used_by));
        match framing {
            "sentinel" => SessionPolicy::Sentinel { line: sentinel },
            "regex" => SessionPolicy::Regex { pattern },
            "json_field" => SessionPolicy::JsonField { field, equals },
            _ => SessionPolicy::Line,
        }
    }
}

fn action(word: &str) -> SeccompAction {
    match word {
        "errno" => SeccompAction::Errno,
        "enosys" => SeccompAction::Enosys,
        "kill" => SeccompAction::Kill,
        "log" => SeccompAction::Log,
        _ => SeccompAction::Allow,
    }
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0'])
}

/// `/abs/path`, `{cwd}`, `{cwd}/sub`, `{tmp}`, `{tmp}/sub`; never `..`.
pub fn parse_path_rule(text: &str) -> Result<PathRule, String> {
    let (make, rest): (fn(PathBuf) -> PathRule, &str) = if let Some(rest) = text.strip_prefix("{cwd}") {
        (PathRule::Cwd, rest)
    } else if let Some(rest) = text.strip_prefix("{tmp}") {
        (PathRule::Tmp, rest)
    } else if text.starts_with('/') {
        (PathRule::Absolute, text)
    } else {
        return Err(format!("\"{text}\" is a relative path; paths must be absolute or start with {{cwd}} or {{tmp}}"));
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return Err(format!("\"{text}\": a placeholder must be followed by nothing or /"));
    }
    let path = Path::new(rest);
    if path.components().any(|c| c == Component::ParentDir) || text.contains('\0') {
        return Err(format!("\"{text}\" must not contain \"..\""));
    }
    if matches!(make(PathBuf::new()), PathRule::Absolute(_)) {
        return Ok(PathRule::Absolute(path.to_path_buf()));
    }
    Ok(make(path.strip_prefix("/").unwrap_or(path).to_path_buf()))
}

/// A user name or uid → uid and primary gid. Uid 0 (host root) is always refused.
pub fn resolve_user(v: &Scalar) -> Result<UserId, String> {
    let user = match v {
        Scalar::Str(name) => User::from_name(name)
            .map_err(|e| format!("cannot look up user \"{name}\": {e}"))?
            .map(|u| UserId { uid: u.uid.as_raw(), gid: u.gid.as_raw() })
            .ok_or_else(|| format!("unknown user \"{name}\" (not in /etc/passwd)"))?,
        Scalar::Int(n) => {
            let uid = u32::try_from(*n).map_err(|_| format!("{n} is not a uid"))?;
            let gid = User::from_uid(uid.into()).ok().flatten().map_or(uid, |u| u.gid.as_raw());
            UserId { uid, gid }
        }
        Scalar::Float(x) => return Err(format!("{x} is not a user name or uid")),
    };
    if user.uid == 0 {
        return Err(format!("{v} is host root (uid 0); a sandbox never runs as host root"));
    }
    Ok(user)
}

/// A group name (looked up in /etc/group) or a numeric gid.
pub fn resolve_group(v: &Scalar) -> Result<u32, String> {
    match v {
        Scalar::Str(name) => Group::from_name(name)
            .map_err(|e| format!("cannot look up group \"{name}\": {e}"))?
            .map(|g| g.gid.as_raw())
            .ok_or_else(|| format!("unknown group \"{name}\" (not in /etc/group)")),
        Scalar::Int(n) => u32::try_from(*n).map_err(|_| format!("{n} is not a gid")),
        Scalar::Float(x) => Err(format!("{x} is not a group name or gid")),
    }
}
