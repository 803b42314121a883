//! The admin floor: `/etc/cellkeep/floor.toml` (the daemon config's `floor`) states minimums
//! that no launchable provider policy may loosen. `policy check`, the daemon's start and its
//! SIGHUP reload refuse a policy that breaks it; each refusal names the policy's line and the
//! floor's line.
//!
//! ```toml
//! [network]
//! mode = "loopback"          # the widest network.mode allowed: "none" < "loopback" < "proxy"
//! [limits]
//! memory_max = "4G"          # every policy must set these, at most this high
//! pids = 1024
//! cpu = 4
//! wall_time = "4h"
//! [seccomp]
//! preset = "default"         # policies may not use preset = "none"
//! never_allow = ["ptrace", "bpf", "mount"]   # names no seccomp.allow may contain
//! [filesystem]
//! write_outside_workdir = false  # write only to {cwd}, {tmp}, /dev/{null,zero,full,tty} or under a workdir root
//! [identity]
//! root_maps_to = "nobody"    # the only account a root caller may be mapped to
//! [namespaces]
//! required = ["user", "pid", "mount", "ipc"]
//! [enforcement]
//! mode = "required"          # no best_effort policies
//! ```
//!
//! Every key is optional; an absent key sets no minimum. Abstract policies are not checked
//! (what they set is checked, at their lines, in every policy extending them).

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::model::{Enforcement, Network, PathRule, Policy};
use super::raw::{Opt, OptList, Scalar};
use super::units::{parse_duration, parse_size};
use super::{Checked, Diagnostic};

#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    #[error("cannot read floor {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}:{line}:{col}: {message}", path.display())]
    Invalid { path: PathBuf, line: usize, col: usize, message: String },
}

impl FloorError {
    /// The error as a diagnostic in the floor file.
    pub fn diagnostic(&self) -> Diagnostic {
        match self {
            FloorError::Read { path, .. } => {
                Diagnostic { file: path.clone(), line: 1, col: 1, key: String::new(), message: self.to_string() }
            }
            FloorError::Invalid { path, line, col, message } => Diagnostic {
                file: path.clone(),
                line: *line,
                col: *col,
                key: String::new(),
                message: format!("admin floor: {message}"),
            },
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFloor {
    #[serde(default)]
    network: FloorNetwork,
    #[serde(default)]
    limits: FloorLimits,
    #[serde(default)]
    seccomp: FloorSeccomp,
    #[serde(default)]
    filesystem: FloorFilesystem,
    #[serde(default)]
    identity: FloorIdentity,
    #[serde(default)]
    namespaces: FloorNamespaces,
    #[serde(default)]
    enforcement: FloorEnforcement,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FloorNetwork {
    mode: Opt<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FloorLimits {
    memory_max: Opt<Scalar>,
    pids: Opt<i64>,
    cpu: Opt<Scalar>,
    wall_time: Opt<Scalar>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FloorSeccomp {
    preset: Opt<String>,
    never_allow: OptList<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FloorFilesystem {
    write_outside_workdir: Opt<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FloorIdentity {
    root_maps_to: Opt<Scalar>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FloorNamespaces {
    required: OptList<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FloorEnforcement {
    mode: Opt<String>,
}

const NET_ORDER: &[&str] = &["none", "loopback", "proxy"];
const NAMESPACES: &[&str] = &["user", "pid", "mount", "net", "ipc", "uts", "cgroup"];
/// Write targets allowed outside the workdir roots when `write_outside_workdir = false`.
const WRITABLE_DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/tty"];

/// A parsed, checked floor file.
#[derive(Debug, Clone)]
pub struct Floor {
    path: PathBuf,
    text: String,
    raw: RawFloor,
    memory_max: Option<u64>,
    cpu: Option<f64>,
    wall_time: Option<std::time::Duration>,
    /// `Some(None)`: the floor says `"cell"`.
    root_maps_to: Option<Option<u32>>,
}

/// A numeric limit of the floor: its value and where the floor sets it.
struct Limit<'a, T> {
    floor: T,
    shown: String,
    at: &'a Range<usize>,
}

impl Floor {
    /// Read a floor file; `Ok(None)` when it does not exist (no floor).
    pub fn load_optional(path: &Path) -> Result<Option<Floor>, FloorError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Floor::parse(path, text).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(FloorError::Read { path: path.to_path_buf(), source }),
        }
    }

    /// Read a floor file that must exist.
    pub fn load(path: &Path) -> Result<Floor, FloorError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| FloorError::Read { path: path.to_path_buf(), source })?;
        Floor::parse(path, text)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn parse(path: &Path, text: String) -> Result<Floor, FloorError> {
        let invalid = |span: Range<usize>, message: String| {
            let (line, col) = line_col(&text, span.start);
            FloorError::Invalid { path: path.to_path_buf(), line, col, message }
        };
        let raw: RawFloor = toml::from_str(&text).map_err(|e| {
            let msg = super::friendly::rewrite("floor", e.message());
            invalid(e.span().unwrap_or(0..0), msg)
        })?;
        let size = |v: &Opt<Scalar>| -> Result<Option<u64>, FloorError> {
            v.as_ref().map(|v| parse_size(v.get_ref()).map_err(|m| invalid(v.span(), m))).transpose()
        };
        let memory_max = size(&raw.limits.memory_max)?;
        let wall_time = raw
            .limits
            .wall_time
            .as_ref()
            .map(|v| parse_duration(v.get_ref()).map_err(|m| invalid(v.span(), m)))
            .transpose()?;
        let cpu = match raw.limits.cpu.as_ref().map(|v| (v.get_ref(), v.span())) {
            None => None,
            Some((Scalar::Int(n), _)) => Some(*n as f64),
            Some((Scalar::Float(x), _)) => Some(*x),
            Some((other, span)) => return Err(invalid(span, format!("{other} is not a number of CPUs"))),
        };
        // NaN compares false with everything: a NaN floor would let any cpu through.
        if let (Some(c), Some(v)) = (cpu, &raw.limits.cpu) {
            if !(c.is_finite() && c > 0.0) {
                return Err(invalid(v.span(), format!("{c} must be a number of CPUs greater than 0 (e.g. 2)")));
            }
        }
        // A misspelt name would forbid nothing.
        for n in raw.seccomp.never_allow.iter().flat_map(|l| l.get_ref()) {
            if super::seccomp::syscall_nr(n.get_ref()).is_none() {
                return Err(invalid(n.span(), format!("\"{}\" is not a syscall name", n.get_ref())));
            }
        }
        if let Some(m) = &raw.network.mode {
            if !NET_ORDER.contains(&m.get_ref().as_str()) {
                let modes: Vec<String> = NET_ORDER.iter().map(|m| format!("\"{m}\"")).collect();
                return Err(invalid(m.span(), format!("\"{}\" is not one of {}", m.get_ref(), modes.join(", "))));
            }
        }
        if let Some(p) = &raw.seccomp.preset {
            if !["default", "none"].contains(&p.get_ref().as_str()) {
                return Err(invalid(p.span(), format!("\"{}\" is not one of \"default\", \"none\"", p.get_ref())));
            }
        }
        for n in raw.namespaces.required.iter().flat_map(|l| l.get_ref()) {
            if !NAMESPACES.contains(&n.get_ref().as_str()) {
                return Err(invalid(
                    n.span(),
                    format!("\"{}\" is not a namespace ({})", n.get_ref(), NAMESPACES.join(", ")),
                ));
            }
        }
        let root_maps_to = match &raw.identity.root_maps_to {
            None => None,
            Some(v) if matches!(v.get_ref(), Scalar::Str(s) if s == "cell") => Some(None),
            Some(v) => Some(Some(super::ids::resolve_user(v.get_ref()).map_err(|m| invalid(v.span(), m))?.uid)),
        };
        Ok(Floor { path: path.to_path_buf(), text, raw, memory_max, cpu, wall_time, root_maps_to })
    }

    /// `(floor FILE:LINE:COL)` for a floor key.
    fn cite(&self, span: &Range<usize>) -> String {
        let (line, col) = line_col(&self.text, span.start);
        format!("(floor {}:{line}:{col})", self.path.display())
    }

    /// Every way `checked` loosens the floor (empty when it respects it, or is abstract).
    pub fn check(&self, checked: &Checked) -> Vec<Diagnostic> {
        let p = &checked.policy;
        if !p.is_launchable() {
            return Vec::new();
        }
        let mut out = Vec::new();
        let src = &checked.sources;
        // At the key when the policy (or a parent) set it, else at the top of the policy file.
        let at = |span: Option<Range<usize>>, key: &str, msg: String| match span {
            Some(s) => src.diag(&s, key, msg),
            None => src.diag_at_file(0, key, msg),
        };
        let raw = &checked.raw;

        if let Some(m) = &self.raw.network.mode {
            let rank = |w: &str| NET_ORDER.iter().position(|x| *x == w).unwrap_or(0);
            let mode = match &p.network {
                Network::None => "none",
                Network::Loopback => "loopback",
                Network::Proxy { .. } => "proxy",
            };
            if rank(mode) > rank(m.get_ref()) {
                let msg = format!(
                    "\"{mode}\" is wider than the admin floor allows: at most \"{}\" {}",
                    m.get_ref(),
                    self.cite(&m.span())
                );
                out.push(at(raw.network.mode.as_ref().map(Spanned::span), "network.mode", msg));
            }
        }

        let span_of = |v: &Opt<Scalar>| v.as_ref().map(|v| (v.span(), v.get_ref().to_string()));
        let memory = self.raw.limits.memory_max.as_ref().zip(self.memory_max);
        if let Some((f, floor)) = memory {
            let l = Limit { floor, shown: f.get_ref().to_string(), at: &f.span() };
            self.limit(&mut out, &at, "limits.memory_max", p.limits.memory_max, span_of(&raw.limits.memory_max), l);
        }
        if let Some(f) = &self.raw.limits.pids {
            let floor = u64::try_from(*f.get_ref()).unwrap_or(0);
            let l = Limit { floor, shown: f.get_ref().to_string(), at: &f.span() };
            let set = raw.limits.pids.as_ref().map(|v| (v.span(), v.get_ref().to_string()));
            self.limit(&mut out, &at, "limits.pids", p.limits.pids, set, l);
        }
        if let Some((f, floor)) = self.raw.limits.cpu.as_ref().zip(self.cpu) {
            let l = Limit { floor, shown: f.get_ref().to_string(), at: &f.span() };
            self.limit(&mut out, &at, "limits.cpu", p.limits.cpu, span_of(&raw.limits.cpu), l);
        }
        if let Some((f, floor)) = self.raw.limits.wall_time.as_ref().zip(self.wall_time) {
            let l = Limit { floor, shown: f.get_ref().to_string(), at: &f.span() };
            self.limit(&mut out, &at, "limits.wall_time", p.limits.wall_time, span_of(&raw.limits.wall_time), l);
        }
        self.check_seccomp(checked, &mut out);
        self.check_rest(checked, &mut out);
        out
    }

    /// A limit the floor caps: unset is above any cap. `set` is where the policy set it, and
    /// the value as written.
    fn limit<T: PartialOrd + Copy>(
        &self,
        out: &mut Vec<Diagnostic>,
        at: &impl Fn(Option<Range<usize>>, &str, String) -> Diagnostic,
        key: &str,
        value: Option<T>,
        set: Option<(Range<usize>, String)>,
        l: Limit<'_, T>,
    ) {
        let cite = self.cite(l.at);
        match (value, set) {
            (Some(v), Some((span, written))) if v > l.floor => {
                let msg = format!("{written} is above the admin floor: at most {} {cite}", l.shown);
                out.push(at(Some(span), key, msg));
            }
            (None, _) => {
                let msg = format!("not set (unlimited), but the admin floor requires at most {} {cite}", l.shown);
                out.push(at(None, key, msg));
            }
            _ => {}
        }
    }

    fn check_seccomp(&self, checked: &Checked, out: &mut Vec<Diagnostic>) {
        let (p, raw, src) = (&checked.policy, &checked.raw, &checked.sources);
        let mut preset_refused = false;
        if let Some(f) = &self.raw.seccomp.preset {
            if f.get_ref() == "default" && p.seccomp.preset == "none" {
                preset_refused = true;
                let msg = format!("\"none\" is below the admin floor: preset \"default\" {}", self.cite(&f.span()));
                let span = raw.seccomp.preset.as_ref().map_or(0..0, Spanned::span);
                out.push(src.diag(&span, "seccomp.preset", msg));
            }
        }
        let Some(never) = &self.raw.seccomp.never_allow else { return };
        // Preset "none" denies nothing: every never_allow name is reachable without naming it.
        if p.seccomp.preset == "none" && !preset_refused && !never.get_ref().is_empty() {
            let names: Vec<&str> = never.get_ref().iter().map(|n| n.get_ref().as_str()).collect();
            let msg = format!(
                "\"none\" allows every syscall, including {} that the admin floor forbids {}",
                names.join(", "),
                self.cite(&never.span())
            );
            let span = raw.seccomp.preset.as_ref().map_or(0..0, Spanned::span);
            out.push(src.diag(&span, "seccomp.preset", msg));
        }
        for name in raw.seccomp.allow.iter().flat_map(|l| l.get_ref()) {
            if let Some(f) = never.get_ref().iter().find(|n| n.get_ref() == name.get_ref()) {
                let msg = format!(
                    "\"{}\" may not be allowed: the admin floor forbids it {}",
                    name.get_ref(),
                    self.cite(&f.span())
                );
                out.push(src.diag(&name.span(), "seccomp.allow", msg));
            }
        }
    }

    fn check_rest(&self, checked: &Checked, out: &mut Vec<Diagnostic>) {
        let (p, raw, src) = (&checked.policy, &checked.raw, &checked.sources);
        if let Some(f) = self.raw.filesystem.write_outside_workdir.as_ref().filter(|f| !*f.get_ref()) {
            for w in raw.filesystem.write.iter().flat_map(|l| l.get_ref()) {
                if !write_inside_workdir(p, w.get_ref()) {
                    let msg = format!(
                        "\"{}\" is outside the workdir roots; the admin floor allows writes only to {{cwd}}, {{tmp}} \
                         and beneath a workdir root {}",
                        w.get_ref(),
                        self.cite(&f.span())
                    );
                    out.push(src.diag(&w.span(), "filesystem.write", msg));
                }
            }
        }
        if let (Some(f), Some(uid)) = (&self.raw.identity.root_maps_to, self.root_maps_to) {
            // A cell id of its own (`"cell"`) meets any floor: it is shared with nothing.
            let meets = match (p.identity.root_maps_to, uid) {
                (None, _) => true,
                (Some(u), Some(want)) => u.uid == want,
                (Some(_), None) => false,
            };
            if !meets {
                let msg = format!("the admin floor maps root callers to {} only {}", f.get_ref(), self.cite(&f.span()));
                let span = raw.identity.root_maps_to.as_ref().map(Spanned::span);
                out.push(match span {
                    Some(s) => src.diag(&s, "identity.root_maps_to", msg),
                    None => src.diag_at_file(0, "identity.root_maps_to", msg),
                });
            }
        }
        for n in self.raw.namespaces.required.iter().flat_map(|l| l.get_ref()) {
            let ns = &p.namespaces;
            let on = [ns.user, ns.pid, ns.mount, ns.net, ns.ipc, ns.uts, ns.cgroup];
            let i = NAMESPACES.iter().position(|x| *x == n.get_ref()).unwrap_or(0);
            if !on[i] {
                let key = format!("namespaces.{}", n.get_ref());
                let msg = format!("false, but the admin floor requires this namespace {}", self.cite(&n.span()));
                let span = namespace_span(checked, i);
                out.push(src.diag(&span, &key, msg));
            }
        }
        if let Some(f) = self.raw.enforcement.mode.as_ref().filter(|f| f.get_ref() == "required") {
            if p.enforcement == Enforcement::BestEffort {
                let msg = format!("\"best_effort\" is below the admin floor: \"required\" {}", self.cite(&f.span()));
                let span = raw.enforcement.mode.as_ref().map_or(0..0, Spanned::span);
                out.push(src.diag(&span, "enforcement.mode", msg));
            }
        }
    }
}

fn namespace_span(checked: &Checked, i: usize) -> Range<usize> {
    let n = &checked.raw.namespaces;
    let all = [&n.user, &n.pid, &n.mount, &n.net, &n.ipc, &n.uts, &n.cgroup];
    all.get(i).and_then(|v| v.as_ref()).map_or(0..0, Spanned::span)
}

/// A write rule the floor's `write_outside_workdir = false` accepts.
fn write_inside_workdir(p: &Policy, text: &str) -> bool {
    match super::validate::parse_path_rule(text) {
        Ok(PathRule::Cwd(_) | PathRule::Tmp(_)) => true,
        Ok(PathRule::Absolute(path)) => {
            // The cell's bind follows symlinks: judge where the rule leads (the roots are
            // resolved already), so a link under a root cannot point the grant outside it.
            let real = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            WRITABLE_DEVICES.iter().any(|d| path == Path::new(d) && real == path)
                || p.workdir.roots.iter().any(|r| real.starts_with(r) && real != *r)
        }
        Err(_) => false,
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before.get(start..).map_or(0, |s| s.chars().count()) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_in_characters() {
        let text = "[limits]\nmemory_max = \"4G\"\n# é\nx = 1\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, text.find("\"4G\"").unwrap_or(0)), (2, 14));
        assert_eq!(line_col(text, text.find("\nx =").map_or(0, |i| i + 1)), (4, 1));
        assert_eq!(line_col(text, 10_000), (5, 1));
    }

    #[test]
    fn an_absent_floor_is_no_floor_and_an_empty_one_sets_nothing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(Floor::load_optional(&dir.path().join("none.toml")), Ok(None)));
        let path = dir.path().join("floor.toml");
        std::fs::write(&path, "# nothing yet\n").unwrap_or_else(|e| panic!("{e}"));
        let floor = Floor::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let policy = dir.path().join("p.toml");
        std::fs::write(&policy, "[provider]\nname = \"p\"\ncommand = [\"/bin/true\"]\n[seccomp]\npreset = \"none\"\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let checked = super::super::load_checked(&policy).unwrap_or_else(|e| panic!("{e}"));
        assert!(floor.check(&checked).is_empty());
    }
}
