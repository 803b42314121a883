//! Raw mirror → typed [`Policy`]: every rule of the format, every problem a [`Diagnostic`].
//!
//! Validation never stops at the first problem: each section is checked on its own, a bad
//! value is reported and replaced by its default so the checks after it still run, and the
//! caller gets either a `Policy` or the complete list of diagnostics for the file.

use std::path::{Component, Path, PathBuf};

use toml::Spanned;

use super::egress::Egress;
use super::ids::{resolve_group, resolve_user};
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
/// Most cells a policy may keep pre-built (`[pool] prewarm`); the daemon's cap bounds them too.
pub const MAX_PREWARM: u32 = 64;
/// The message for the keys of the removed host-network mode.
const REMOVED_TCP: &str = "mode \"tcp\" (the host's network, TCP ports filtered by Landlock) was removed: every cell \
    has its own network namespace; to reach the outside use mode = \"proxy\" with egress = [names…]";
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
        // Not after a syntax error (key ""): the file was not read, so nothing is "missing".
        let broken = |d: &Diagnostic| d.key.is_empty() || d.key == key || key.starts_with(&format!("{}.", d.key));
        if self.diags.iter().any(broken) {
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
        let hint = super::friendly::did_you_mean(v.get_ref(), options.iter().copied());
        self.at(v, key, format!("\"{}\" is not one of {}{hint}", v.get_ref(), expected.join(", ")));
        options[0]
    }

    fn policy(&mut self, raw: RawFile, stem: &str, path: &Path) -> Policy {
        let is_abstract = inner(&raw.provider.is_abstract).unwrap_or(false);
        let name = self.name(&raw, stem);
        let command = self.command(&raw, is_abstract);
        let command_after = self.command_after(&raw, &command);
        let command_format = self.command_format(&raw, &command_after);
        let mode = match self.choose(&raw.provider.mode, "provider.mode", &["oneshot", "session"]) {
            "session" => Mode::Session,
            _ => Mode::Oneshot,
        };
        let command_via = self.command_via(&raw, &command, &command_after, &command_format);
        let namespaces = self.namespaces(&raw);
        Policy {
            name,
            source: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
            description: inner(&raw.provider.description).unwrap_or_default(),
            command,
            command_after,
            command_format,
            command_via,
            mode,
            tty: inner(&raw.provider.tty).unwrap_or(false),
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
            prewarm: self.prewarm(&raw),
            namespaces,
        }
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
        let access = raw.access.clone().unwrap_or_default();
        let uids = list(&access.uids).into_iter().map(Spanned::into_inner).collect();
        let mut gids = Vec::new();
        for g in list(&access.groups) {
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
                        let word = if let Scalar::Str(s) = other { s.as_str() } else { "" };
                        let hint = super::friendly::did_you_mean(word, ["caller", "range"]);
                        self.at(v, "identity.run_as", format!("{msg}{hint}"));
                        // Not also "uid_range: only used with run_as = \"range\"" for the same typo.
                        return Identity { run_as: RunAs::Caller, ..self.identity_rest(raw, ns) };
                    }
                },
            },
        };
        if let (Some(r), false) = (&id.uid_range, matches!(run_as, RunAs::Range { .. })) {
            if range.is_some() {
                self.at(r, "identity.uid_range", "only used with run_as = \"range\"");
            }
        }
        Identity { run_as, ..self.identity_rest(raw, ns) }
    }

    /// `root_maps_to` and `inside` (`run_as` is the caller's to set).
    fn identity_rest(&mut self, raw: &RawFile, ns: &Namespaces) -> Identity {
        let id = &raw.identity;
        let root_maps_to = match &id.root_maps_to {
            None => None,
            Some(v) if matches!(v.get_ref(), Scalar::Str(s) if s == "cell") => None,
            Some(v) => Some(resolve_user(v.get_ref()).unwrap_or_else(|msg| {
                self.at(v, "identity.root_maps_to", msg);
                NOBODY
            })),
        };
        let workspace_idmap = match self.choose(&id.workspace_idmap, "identity.workspace_idmap", &WorkspaceIdmap::NAMES)
        {
            "required" => WorkspaceIdmap::Required,
            "fallback_cell" => WorkspaceIdmap::FallbackCell,
            _ => WorkspaceIdmap::FallbackOwner,
        };
        let inside = match self.choose(&id.inside, "identity.inside", &["same", "root"]) {
            "root" => Inside::Root,
            _ => Inside::Same,
        };
        if let (Inside::Root, false, Some(v)) = (inside, ns.user, &id.inside) {
            self.at(v, "identity.inside", "\"root\" needs a user namespace (namespaces.user = false)");
        }
        Identity { run_as: RunAs::Caller, root_maps_to, inside, workspace_idmap }
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
            self.at(
                start,
                key,
                format!("start {s} must be between 1 and {} (the range must not contain uid 0)", u32::MAX),
            );
            return None;
        }
        let last = s.checked_add(c).map(|end| end - 1);
        if c <= 0 || last.is_none_or(|l| l > i64::from(u32::MAX) - 1) {
            self.at(count, key, format!("count {c} must be at least 1 and keep the range below uid {}", u32::MAX));
            return None;
        }
        // The same rules as the daemon's own cell_id_range: no overflow ids, no systemd
        // DynamicUser ids, no subordinate range of /etc/subuid or /etc/subgid.
        let range = crate::sandbox::ids::IdRange { start: s as u32, count: c as u32 };
        if let Err(e) = range.validate() {
            self.at(start, key, e.to_string());
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
            } else if let Some(unknown) = unknown_placeholder(value.get_ref()) {
                let hint = super::friendly::did_you_mean(&unknown, ["{cwd}", "{tmp}"]);
                let msg = format!(
                    "\"{unknown}\" is not a placeholder and would be passed on as written (the placeholders are \
                     {{cwd}} and {{tmp}}){hint}"
                );
                self.at(&value, &key, msg);
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

    /// `[pool] prewarm`: 0 (the default) to [`MAX_PREWARM`].
    fn prewarm(&mut self, raw: &RawFile) -> u32 {
        let Some(v) = raw.pool.prewarm.as_ref() else { return 0 };
        match u32::try_from(*v.get_ref()) {
            Ok(n) if n <= MAX_PREWARM => n,
            _ => {
                self.at(v, "pool.prewarm", format!("{} must be from 0 to {MAX_PREWARM}", v.get_ref()));
                0
            }
        }
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
            let quota = (x * crate::cgroup::CPU_PERIOD_US as f64).round();
            if x.is_finite() && x > 0.0 && quota < 1000.0 {
                self.at(
                    v,
                    "limits.cpu",
                    format!("{} is below the kernel's minimum of 0.01 CPU (1 ms per 100 ms)", v.get_ref()),
                );
                None
            } else if x.is_finite() && quota > crate::cgroup::MAX_CPU_QUOTA_US as f64 {
                let max = crate::cgroup::MAX_CPU_QUOTA_US / crate::cgroup::CPU_PERIOD_US;
                let msg = format!(
                    "{} is more than the kernel's CPU quota can hold (at most {max} CPUs); limits.cpu is a \
                     number of CPUs (2 = two CPUs), not a percent",
                    v.get_ref()
                );
                self.at(v, "limits.cpu", msg);
                None
            } else if x.is_finite() && x > 0.0 {
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
            file_size: self.size(&l.file_size, "limits.file_size", false),
            wall_time: self.duration(&l.wall_time, "limits.wall_time"),
            idle_timeout: self.duration(&l.idle_timeout, "limits.idle_timeout"),
            output_bytes: self.size(&l.output_bytes, "limits.output_bytes", false).unwrap_or(DEFAULT_OUTPUT_BYTES),
            tmp_size: self.size(&l.tmp_size, "limits.tmp_size", false).unwrap_or(DEFAULT_TMP_SIZE),
        };
        for (n, v, key) in [
            (limits.memory_max, &l.memory_max, "limits.memory_max"),
            (limits.memory_high, &l.memory_high, "limits.memory_high"),
        ] {
            if let (Some(n), Some(v)) = (n, v) {
                if n < MIN_MEMORY {
                    let msg = format!(
                        "{n} bytes is less than any program needs to start (at least \"1M\"); a number \
                         without a unit is bytes: write e.g. \"512M\""
                    );
                    self.at(v, key, msg);
                }
            }
        }
        if let (Some(n), Some(v)) = (limits.pids, &l.pids) {
            if n > MAX_PIDS {
                self.at(
                    v,
                    "limits.pids",
                    format!("{n} is more than the kernel can ever run (pid_max is at most {MAX_PIDS})"),
                );
            }
        }
        if let (Some(n), Some(v), Some(max)) = (limits.open_files, &l.open_files, nr_open()) {
            if n > max {
                let msg = format!(
                    "{n} is above this host's fs.nr_open ({max}), the most any process may open: every launch \
                     would fail; write at most {max}"
                );
                self.at(v, "limits.open_files", msg);
            }
        }
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

    /// `[provider] command_after`: one non-empty token, only with a fixed command.
    fn command_after(&mut self, raw: &RawFile, command: &[String]) -> Option<String> {
        let v = raw.provider.command_after.as_ref()?;
        if v.get_ref().is_empty() || v.get_ref().chars().any(char::is_whitespace) {
            self.at(v, "provider.command_after", "must be one non-empty argument such as \"--\"");
            return None;
        }
        if command.is_empty() && raw.provider.command.is_some() {
            self.at(v, "provider.command_after", "only used with a fixed command (command = [] takes the whole argv)");
        }
        Some(v.get_ref().clone())
    }

    /// `[provider] command_format`: one `{}`, not at the start (or the caller's `-x` would
    /// still begin the argument), and not together with `command_after`.
    fn command_format(&mut self, raw: &RawFile, after: &Option<String>) -> Option<String> {
        let v = raw.provider.command_format.as_ref()?;
        let f = v.get_ref();
        if f.matches("{}").count() != 1 || f.starts_with("{}") {
            self.at(
                v,
                "provider.command_format",
                "must contain \"{}\" once, after a fixed prefix such as \"--prompt={}\"",
            );
            return None;
        }
        if after.is_some() {
            self.at(v, "provider.command_format", "set command_after or command_format, not both");
        }
        Some(f.clone())
    }

    /// `[provider] command_via`: "argv" (the default) or "stdin", which puts no caller text in
    /// the argv: so it needs a fixed command, and neither `command_after` nor `command_format`
    /// (which would have nothing to place), nor a terminal (closing the input would hang it up).
    fn command_via(
        &mut self,
        raw: &RawFile,
        command: &[String],
        after: &Option<String>,
        format: &Option<String>,
    ) -> CommandVia {
        let key = "provider.command_via";
        if self.choose(&raw.provider.command_via, key, &["argv", "stdin"]) != "stdin" {
            return CommandVia::Argv;
        }
        let Some(v) = raw.provider.command_via.as_ref() else { return CommandVia::Argv };
        if command.is_empty() && raw.provider.command.is_some() {
            self.at(v, key, "\"stdin\" needs a fixed command (command = [] takes the caller's whole argv)");
        }
        for (set, name) in [(after.is_some(), "command_after"), (format.is_some(), "command_format")] {
            if set {
                self.at(
                    v,
                    key,
                    format!(
                        "with \"stdin\" no caller text goes to the argv, so {name} has nothing to place; remove it"
                    ),
                );
            }
        }
        if inner(&raw.provider.tty) == Some(true) {
            self.at(v, key, "\"stdin\" closes the input after the command, which would hang up a tty; set tty = false");
        }
        CommandVia::Stdin
    }

    /// `[network]`: every cell has its own network namespace; `proxy` adds the egress proxy.
    fn network(&mut self, raw: &RawFile, ns: &Namespaces) -> Network {
        let n = &raw.network;
        if let Some(m) = n.mode.as_ref().filter(|m| m.get_ref() == "tcp") {
            self.at(m, "network.mode", REMOVED_TCP);
        }
        for (v, key) in [(&n.connect, "network.connect"), (&n.bind, "network.bind")] {
            if let Some(v) = v {
                self.at(v, key, REMOVED_TCP);
            }
        }
        if let (false, Some(net)) = (ns.net, &raw.namespaces.net) {
            self.at(net, "namespaces.net", "must be true: no cell shares the host's network (see network.mode)");
        }
        const MODES: [&str; 3] = ["none", "loopback", "proxy"];
        let mode = match n.mode.as_ref().map(|m| m.get_ref().as_str()) {
            Some("tcp") => "none",
            _ => self.choose(&n.mode, "network.mode", &MODES),
        };
        // A misspelt mode is one mistake: the keys that depend on it are not also reported.
        let known = n.mode.as_ref().is_none_or(|m| MODES.contains(&m.get_ref().as_str()));
        let egress = n.egress.as_ref().map(|e| self.egress(e));
        match (mode, egress) {
            ("proxy", Some(egress)) => Network::Proxy { egress },
            ("proxy", None) => {
                self.missing("network.egress", "missing; mode = \"proxy\" needs egress = [names…] or \"learn\"");
                Network::Proxy { egress: Egress::Allow(Vec::new()) }
            }
            (_, Some(_)) => {
                if let (true, Some(e)) = (known, &n.egress) {
                    self.at(e, "network.egress", "only used with network.mode = \"proxy\"");
                }
                Network::None
            }
            ("loopback", None) => Network::Loopback,
            _ => Network::None,
        }
    }

    /// `network.egress`: a list of names (see [`super::egress`]) or the word `"learn"`.
    fn egress(&mut self, v: &Spanned<toml::Value>) -> Egress {
        match v.get_ref() {
            toml::Value::String(w) if w == "learn" => Egress::Learn,
            toml::Value::Array(items) => {
                let mut rules = Vec::new();
                for item in items {
                    match item.as_str().map(|t| (t, super::egress::parse_rule(t))) {
                        Some((_, Ok(rule))) => rules.push(rule),
                        Some((text, Err(msg))) => {
                            let span = self.src.item_span(&v.span(), text);
                            self.diags.push(self.src.diag(&span, "network.egress", msg));
                        }
                        None => self.at(v, "network.egress", format!("{item} is not a string")),
                    }
                }
                Egress::Allow(rules)
            }
            other => {
                self.at(v, "network.egress", format!("{other} is neither a list of names nor \"learn\""));
                Egress::Allow(Vec::new())
            }
        }
    }

    fn seccomp(&mut self, raw: &RawFile) -> SeccompPolicy {
        let s = &raw.seccomp;
        let preset = self.choose(&s.preset, "seccomp.preset", &["default", "none"]);
        let default_action = action(self.choose(
            &s.default_action,
            "seccomp.default_action",
            &["allow", "errno", "enosys", "kill", "log"],
        ));
        let deny_action = action(self.choose(&s.deny_action, "seccomp.deny_action", &["errno", "kill"]));
        let mut names = |v: &OptList<String>, key: &str| -> Vec<String> {
            let mut out = Vec::new();
            for n in list(v) {
                if seccomp::syscall_nr(n.get_ref()).is_some() {
                    out.push(n.into_inner());
                } else {
                    let hint = super::friendly::did_you_mean(n.get_ref(), seccomp::syscall_names());
                    self.at(&n, key, format!("unknown syscall \"{}\" (not an x86_64 syscall name){hint}", n.get_ref()));
                }
            }
            out
        };
        let allow = names(&s.allow, "seccomp.allow");
        let deny = names(&s.deny, "seccomp.deny");
        for n in list(&s.deny).iter().filter(|n| allow.contains(n.get_ref())) {
            let msg = format!(
                "\"{}\" is in seccomp.allow too: a call is allowed or denied, not both; remove it from one list",
                n.get_ref()
            );
            self.at(n, "seccomp.deny", msg);
        }
        if default_action != SeccompAction::Allow && allow.is_empty() {
            match &s.default_action {
                Some(v) => self.at(v, "seccomp.default_action", "allowlist mode needs a non-empty seccomp.allow"),
                None => self.missing("seccomp.allow", "allowlist mode needs a non-empty seccomp.allow"),
            }
        }
        let spec = SeccompSpec {
            default_preset: preset == "default",
            default_action,
            deny_action,
            allow: &allow,
            deny: &deny,
        };
        let compiled = seccomp::compile(&spec).unwrap_or_else(|e| {
            self.missing("seccomp", e.to_string());
            Default::default()
        });
        SeccompPolicy { preset: preset.to_owned(), default_action, deny_action, allow, deny, compiled }
    }

    fn session(&mut self, raw: &RawFile) -> SessionPolicy {
        let s = &raw.session;
        const FRAMINGS: [&str; 4] = ["line", "sentinel", "regex", "json_field"];
        let framing = self.choose(&s.framing, "session.framing", &FRAMINGS);
        // A misspelt framing is one mistake: its keys are not also "only used with …".
        let known = s.framing.as_ref().is_none_or(|f| FRAMINGS.contains(&f.get_ref().as_str()));
        let keys: [(&str, &Opt<String>, &[&str]); 4] = [
            ("sentinel", &s.sentinel, &["sentinel"]),
            ("pattern", &s.pattern, &["regex"]),
            ("field", &s.field, &["json_field"]),
            ("equals", &s.equals, &["json_field"]),
        ];
        let mut value = |name: &str, v: &Opt<String>, used_by: &[&str]| -> String {
            let key = format!("session.{name}");
            match v {
                Some(v) if !used_by.contains(&framing) && known => {
                    self.at(v, &key, format!("only used with framing = \"{}\"", used_by.join("\" or \"")));
                    String::new()
                }
                Some(v) if !used_by.contains(&framing) => String::new(),
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
        if let (Some(v), "sentinel") = (&s.sentinel, framing) {
            if sentinel.contains(['\n', '\r']) {
                let msg = "must be one line without its newline: the sentinel is compared with each whole line of \
                           output, so a newline in it never matches";
                self.at(v, "session.sentinel", msg);
            }
        }
        if let (Some(v), "regex") = (&s.pattern, framing) {
            if let Err(e) = regex::Regex::new(&pattern) {
                let first =
                    e.to_string().lines().last().unwrap_or_default().trim().trim_start_matches("error: ").to_owned();
                self.at(v, "session.pattern", format!("\"{pattern}\" is not a regular expression: {first}"));
            }
        }
        match framing {
            "sentinel" => SessionPolicy::Sentinel { line: sentinel },
            "regex" => SessionPolicy::Regex { pattern },
            "json_field" => SessionPolicy::JsonField { field, equals },
            _ => SessionPolicy::Line,
        }
    }
}

/// The smallest `memory_max`/`memory_high`: below it no program starts (the cell's helper
/// alone needs more), and a bare number is then almost always megabytes meant as bytes.
const MIN_MEMORY: u64 = 1 << 20;

/// The kernel's largest `pid_max` (`PID_MAX_LIMIT` on 64-bit): a `pids` limit above it means
/// nothing the kernel can hold (and past `u32`, the cgroup file refuses it).
const MAX_PIDS: u64 = 4 * 1024 * 1024;

/// This host's `fs.nr_open`: the highest `RLIMIT_NOFILE` the kernel accepts (`None` if it
/// cannot be read, e.g. on a host without /proc).
fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open").ok()?.trim().parse().ok()
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

/// The first `{word}` in an `environment.set` value that is not `{cwd}` or `{tmp}` (a word:
/// letters, digits, `_`; other braces, such as JSON's, are left alone).
fn unknown_placeholder(value: &str) -> Option<String> {
    let mut rest = value;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        let word = &after[..close];
        if !word.is_empty()
            && word.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && word != "cwd"
            && word != "tmp"
        {
            return Some(format!("{{{word}}}"));
        }
        rest = after;
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Validate `text` as `<tmp>/t.toml`; returns the policy or `line:col: key: message` lines.
    fn check(text: &str) -> Result<Policy, Vec<String>> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("t.toml");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        let loaded = super::super::load::load_chain(&path).unwrap_or_else(|e| panic!("{e}"));
        let prefix = format!("{}:", path.display());
        validate(loaded).map_err(|d| d.iter().map(|d| d.to_string().replace(&prefix, "")).collect())
    }

    const HEAD: &str = "[provider]\nname = \"t\"\ncommand = [\"/bin/true\"]\n";

    #[test]
    fn command_via_stdin_places_no_caller_text() {
        let p = check("[provider]\nname = \"t\"\ncommand = [\"/bin/cat\"]\ncommand_via = \"stdin\"\n");
        assert_eq!(p.map(|p| p.command_via).ok(), Some(CommandVia::Stdin));
        let errors = |extra: &str| {
            let text = format!("[provider]\nname = \"t\"\ncommand = [\"/bin/cat\"]\ncommand_via = \"stdin\"\n{extra}");
            check(&text).err().unwrap_or_default().join("\n")
        };
        assert!(errors("command_after = \"--\"\n").contains("command_after has nothing to place"));
        assert!(errors("command_format = \"--p={}\"\n").contains("command_format has nothing to place"));
        assert!(errors("tty = true\n").contains("hang up a tty"));
        let bad = check("[provider]\nname = \"t\"\ncommand = [\"/bin/cat\"]\ncommand_via = \"pipe\"\n");
        assert!(bad.err().unwrap_or_default().join("").contains("\"pipe\" is not one of \"argv\", \"stdin\""));
    }

    #[test]
    fn minimal_policy_gets_the_documented_defaults() {
        let p = check(HEAD).unwrap_or_else(|d| panic!("{d:?}"));
        assert_eq!(p.mode, Mode::Oneshot);
        assert_eq!(p.network, Network::None);
        assert_eq!(p.namespaces, Namespaces::default());
        assert_eq!(p.identity.run_as, RunAs::Caller);
        assert_eq!(p.identity.inside, Inside::Same);
        assert_eq!(p.enforcement, Enforcement::Required);
        assert_eq!(p.session, SessionPolicy::Line);
        assert_eq!((p.limits.output_bytes, p.limits.tmp_size), (DEFAULT_OUTPUT_BYTES, DEFAULT_TMP_SIZE));
        assert_eq!(p.limits.memory_max, None);
        assert_eq!((p.seccomp.default_action, p.seccomp.deny_action), (SeccompAction::Allow, SeccompAction::Errno));
        assert!(p.is_launchable());
    }

    #[test]
    fn missing_name_and_command() {
        assert_eq!(
            check("[provider]\nmode = \"session\"\n").err(),
            Some(vec![
                "1:1: provider.name: missing; set name = \"t\" (the file name)".to_owned(),
                "1:1: provider.command: missing; give the binary and fixed arguments, or [] for a generic sandbox, or set abstract = true".to_owned(),
            ])
        );
        assert!(check("[provider]\nname = \"t\"\nabstract = true\n").is_ok());
    }

    #[test]
    fn proxy_network_and_egress() {
        let p = check(&format!(
            "{HEAD}[network]\nmode = \"proxy\"\negress = [\"api.anthropic.com\", \"*.openai.com:8443\"]\n"
        ));
        let p = p.unwrap_or_else(|d| panic!("{d:?}"));
        let Network::Proxy { egress: Egress::Allow(rules) } = &p.network else { panic!("{:?}", p.network) };
        let shown: Vec<String> = rules.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["api.anthropic.com", "*.openai.com:8443"]);
        let p = check(&format!("{HEAD}[network]\nmode = \"proxy\"\negress = \"learn\"\n"));
        assert_eq!(p.map(|p| p.network).ok(), Some(Network::Proxy { egress: Egress::Learn }));
        let bad = check(&format!("{HEAD}[network]\nmode = \"tcp\"\nconnect = [443]\n[namespaces]\nnet = false\n"));
        let bad = bad.err().unwrap_or_default();
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(bad[0].starts_with("5:8: network.mode: mode \"tcp\""), "{bad:?}");
        assert!(bad[1].starts_with("6:11: network.connect: mode \"tcp\""), "{bad:?}");
        assert!(bad[2].starts_with("8:7: namespaces.net: must be true"), "{bad:?}");
        let bad = check(&format!("{HEAD}[network]\nmode = \"loopback\"\negress = [\"*.com\"]\n"));
        assert_eq!(
            bad.err(),
            Some(vec![
                "6:10: network.egress: only used with network.mode = \"proxy\"".to_owned(),
                "6:11: network.egress: \"*.com\" would match a whole top-level domain".to_owned(),
            ])
        );
        // A misspelt mode is one error: egress, which depends on it, is not also reported.
        let bad = check(&format!("{HEAD}[network]\nmode = \"proxi\"\negress = [\"api.example.com\"]\n"));
        assert_eq!(
            bad.err(),
            Some(vec![
                "5:8: network.mode: \"proxi\" is not one of \"none\", \"loopback\", \"proxy\"; did you mean \"proxy\"?"
                    .to_owned()
            ])
        );
    }

    #[test]
    fn tty_is_a_bool_off_by_default() {
        assert_eq!(check(HEAD).map(|p| p.tty).ok(), Some(false));
        assert_eq!(check(&format!("{HEAD}tty = true\n")).map(|p| p.tty).ok(), Some(true));
        let shown = check(&format!("{HEAD}tty = true\n")).map(|p| crate::policy::show(&p)).unwrap_or_default();
        assert!(shown.contains("\ntty = true\n"), "{shown}");
        let bad = check(&format!("{HEAD}tty = \"yes\"\nttys = 1\n")).err().unwrap_or_default();
        assert_eq!(bad.len(), 2, "{bad:#?}");
        assert_eq!(bad[0], "4:7: provider.tty: expected true or false, e.g. tty = true (found the text \"yes\")");
        assert_eq!(bad[1], "5:1: provider.ttys: unknown key \"ttys\" in [provider]; did you mean \"tty\"?");
    }

    #[test]
    fn session_framing_needs_its_keys() {
        let p = check(&format!("{HEAD}[session]\nframing = \"json_field\"\nfield = \"type\"\nequals = \"result\"\n"));
        assert_eq!(
            p.map(|p| p.session).ok(),
            Some(SessionPolicy::JsonField { field: "type".into(), equals: "result".into() })
        );
        let bad = check(&format!("{HEAD}[session]\nframing = \"sentinel\"\npattern = \"^x\"\n"));
        assert_eq!(
            bad.err(),
            Some(vec![
                "1:1: session.sentinel: missing; framing = \"sentinel\" needs it".to_owned(),
                "6:11: session.pattern: only used with framing = \"regex\"".to_owned(),
            ])
        );
    }

    #[test]
    fn seccomp_modes() {
        let bad = check(&format!("{HEAD}[seccomp]\ndefault_action = \"kill\"\ndeny_action = \"log\"\n"));
        assert_eq!(
            bad.err(),
            Some(vec![
                "5:18: seccomp.default_action: allowlist mode needs a non-empty seccomp.allow".to_owned(),
                "6:15: seccomp.deny_action: \"log\" is not one of \"errno\", \"kill\"".to_owned(),
            ])
        );
        let p = check(&format!(
            "{HEAD}[seccomp]\ndefault_action = \"enosys\"\nallow = [\"read\", \"write\", \"exit_group\"]\n"
        ));
        assert_eq!(p.map(|p| p.seccomp.compiled.filters.len()).ok(), Some(8));
    }

    #[test]
    fn identity_forms() {
        let p = check(&format!(
            "{HEAD}[identity]\nrun_as = \"range\"\nuid_range = [1800000000, 65536]\ninside = \"root\"\n"
        ));
        assert_eq!(p.map(|p| p.identity.run_as).ok(), Some(RunAs::Range { start: 1_800_000_000, count: 65536 }));
        let p = check(&format!("{HEAD}[identity]\nrun_as = \"nobody\"\nroot_maps_to = 65534\n"));
        assert_eq!(p.map(|p| p.identity.run_as).ok(), Some(RunAs::User(UserId { uid: 65534, gid: 65534 })));
        let bad =
            check(&format!("{HEAD}[identity]\nrun_as = \"range\"\ninside = \"root\"\n[namespaces]\nuser = false\n"));
        assert_eq!(
            bad.err(),
            Some(vec![
                "5:10: identity.run_as: \"range\" needs identity.uid_range = [start, count]".to_owned(),
                "6:10: identity.inside: \"root\" needs a user namespace (namespaces.user = false)".to_owned(),
            ])
        );
        let bad =
            check(&format!("{HEAD}[identity]\nroot_maps_to = \"no_such_user_xyz\"\nuid_range = [1, 4294967295]\n"));
        assert_eq!(
            bad.err(),
            Some(vec![
                "5:16: identity.root_maps_to: unknown user \"no_such_user_xyz\" (not in /etc/passwd)".to_owned(),
                "6:17: identity.uid_range: count 4294967295 must be at least 1 and keep the range below uid 4294967295"
                    .to_owned(),
            ])
        );
    }

    #[test]
    fn paths_and_env() {
        assert_eq!(parse_path_rule("{cwd}"), Ok(PathRule::Cwd(PathBuf::new())));
        assert_eq!(parse_path_rule("{tmp}/a/b"), Ok(PathRule::Tmp(PathBuf::from("a/b"))));
        assert_eq!(parse_path_rule("/usr"), Ok(PathRule::Absolute(PathBuf::from("/usr"))));
        for bad in ["usr", "./x", "{cwd}x", "/usr/../etc", "{tmp}/../x", "{home}", ""] {
            assert!(parse_path_rule(bad).is_err(), "{bad:?}");
        }
        let bad = check(&format!(
            "{HEAD}[environment]\npass = [\"A=B\"]\n[environment.set]\nHOME = \"{{tmp}}\"\n[namespaces]\nmount = false\n[workdir]\nroots = [\"/no/such/dir\", \"rel\"]\n"
        ));
        let got = bad.err().unwrap_or_default();
        assert_eq!(got.len(), 4, "{got:#?}");
        assert_eq!(got[0], "5:9: environment.pass: \"A=B\" is not a variable name");
        assert_eq!(got[1], "7:8: environment.set.HOME: {tmp} needs a mount namespace, but namespaces.mount = false");
        assert!(got[2].starts_with("11:10: workdir.roots: \"/no/such/dir\" cannot be resolved"), "{}", got[2]);
        assert_eq!(got[3], "11:26: workdir.roots: \"rel\" must be an absolute path (no placeholders)");
    }

    #[test]
    fn limits_rules() {
        let p =
            check(&format!("{HEAD}[limits]\nmemory_max = 1048576\ncpu = 2\nwall_time = 1.5\nmemory_swap = \"0\"\n"));
        let p = p.unwrap_or_else(|d| panic!("{d:?}"));
        assert_eq!((p.limits.memory_max, p.limits.cpu, p.limits.memory_swap), (Some(1 << 20), Some(2.0), Some(0)));
        assert_eq!(p.limits.wall_time, Some(std::time::Duration::from_millis(1500)));
        let bad = check(&format!("{HEAD}[limits]\nmemory_max = \"0\"\nidle_timeout = \"0s\"\ncpu = \"fast\"\n"));
        assert_eq!(
            bad.err(),
            Some(vec![
                "5:14: limits.memory_max: must be greater than 0".to_owned(),
                "6:16: limits.idle_timeout: must be greater than 0".to_owned(),
                "7:7: limits.cpu: \"fast\" must be a number of CPUs greater than 0 (e.g. 0.5)".to_owned(),
            ])
        );
    }
}
