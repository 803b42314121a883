//! `policy diff OLD NEW`: what a change does once inheritance is resolved. Both effective
//! policies (as `policy show` prints them) are compared key by key; list entries added and
//! removed are reported one by one; each change is classed as loosening, tightening or
//! neither; and the exposure score ([`super::score`]) is given before and after. This is the
//! text a reviewer pastes into a pull request.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use toml::Value;

use super::model::Policy;
use super::raw::Scalar;
use super::score::score;
use super::units::{parse_duration, parse_size};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Grants more (or limits less) than before.
    Loosened,
    /// Grants less (or limits more) than before.
    Tightened,
    /// Different, neither wider nor narrower (a description, one command for another, framing).
    Changed,
}

/// One key that differs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub key: String,
    pub direction: Direction,
    /// The value before (`None`: not set, i.e. the default or unlimited).
    pub old: Option<String>,
    pub new: Option<String>,
    /// List entries added and removed (lists only).
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// Every change between two effective policies, and the score before and after.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyDiff {
    pub changes: Vec<Change>,
    pub score_before: f64,
    pub score_after: f64,
}

/// Lists where an added entry grants more (for `seccomp.deny`, it grants less).
const GRANT_LISTS: &[&str] = &[
    "filesystem.read",
    "filesystem.write",
    "filesystem.exec",
    "network.egress",
    "environment.pass",
    "access.uids",
    "access.groups",
    "seccomp.allow",
    "workdir.roots",
];

/// Compare the effective policies `old` and `new`.
pub fn diff(old: &Policy, new: &Policy) -> PolicyDiff {
    let (a, b) = (flatten(old), flatten(new));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut changes = Vec::new();
    for key in keys {
        if key == "provider.name" {
            continue;
        }
        let empty = Value::Array(Vec::new());
        let (mut x, mut y) = (a.get(key), b.get(key));
        // A list left out (e.g. egress when the mode is not "proxy") is an empty list.
        if matches!((x, y), (None, Some(Value::Array(_)))) {
            x = Some(&empty);
        } else if matches!((x, y), (Some(Value::Array(_)), None)) {
            y = Some(&empty);
        }
        if x == y {
            continue;
        }
        changes.extend(change(key, x, y));
    }
    PolicyDiff { changes, score_before: score(old).score, score_after: score(new).score }
}

/// The change of one key; a list that gains and loses entries gives two (what was added,
/// then what was removed), so loosening is never hidden behind a tightening.
fn change(key: &str, x: Option<&Value>, y: Option<&Value>) -> Vec<Change> {
    let shown = |v: Option<&Value>| v.map(display);
    let base = Change {
        key: key.to_owned(),
        direction: Direction::Changed,
        old: shown(x),
        new: shown(y),
        added: vec![],
        removed: vec![],
    };
    if let (Some(Value::Array(xs)), Some(Value::Array(ys)), false) = (x, y, key == "provider.command") {
        let added: Vec<String> = ys.iter().filter(|v| !xs.contains(v)).map(display).collect();
        let removed: Vec<String> = xs.iter().filter(|v| !ys.contains(v)).map(display).collect();
        let (grow, shrink) = match key {
            "seccomp.deny" => (Direction::Tightened, Direction::Loosened),
            k if GRANT_LISTS.contains(&k) => (Direction::Loosened, Direction::Tightened),
            _ => (Direction::Changed, Direction::Changed),
        };
        let mut out = Vec::new();
        if !added.is_empty() {
            out.push(Change { direction: grow, added, ..base.clone() });
        }
        if !removed.is_empty() {
            out.push(Change { direction: shrink, removed, ..base.clone() });
        }
        if out.is_empty() {
            out.push(base); // the same entries in another order
        }
        return out;
    }
    vec![Change { direction: direction(key, x, y), ..base }]
}

/// Whether a scalar change loosens or tightens.
fn direction(key: &str, x: Option<&Value>, y: Option<&Value>) -> Direction {
    use Direction::*;
    let word = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_owned();
    let (wx, wy) = (word(x), word(y));
    let rank = |order: &[&str], w: &str| order.iter().position(|o| *o == w);
    let by_rank = |order: &[&str]| match (rank(order, &wx), rank(order, &wy)) {
        (Some(i), Some(j)) if j > i => Loosened,
        (Some(i), Some(j)) if j < i => Tightened,
        _ => Changed,
    };
    match key {
        k if k.starts_with("limits.") => match (limit(k, x), limit(k, y)) {
            (a, b) if b > a => Loosened,
            (a, b) if b < a => Tightened,
            _ => Changed,
        },
        k if k.starts_with("namespaces.") => match y.and_then(Value::as_bool) {
            Some(false) => Loosened,
            _ => Tightened,
        },
        "network.mode" => by_rank(&["none", "loopback", "proxy"]),
        // "learn" (every name) is wider than any list of names.
        "network.egress" => match (wx.as_str(), wy.as_str()) {
            (x, "learn") if x != "learn" => Loosened,
            ("learn", y) if y != "learn" => Tightened,
            _ => Changed,
        },
        "seccomp.preset" => by_rank(&["default", "none"]),
        "seccomp.default_action" => match (wx.as_str(), wy.as_str()) {
            (_, "allow") | (_, "log") => Loosened,
            ("allow", _) | ("log", _) => Tightened,
            _ => Changed,
        },
        "seccomp.deny_action" => by_rank(&["kill", "errno"]),
        "enforcement.mode" => by_rank(&["required", "best_effort"]),
        "identity.inside" => by_rank(&["same", "root"]),
        // `[]`: the caller runs any program; a fixed command confines it to one.
        "provider.command" => {
            let any = |v: Option<&Value>| v.and_then(Value::as_array).is_some_and(Vec::is_empty);
            match (any(x), any(y)) {
                (false, true) => Loosened,
                (true, false) => Tightened,
                _ => Changed,
            }
        }
        _ => Changed,
    }
}

/// A limit as a number for comparison; absent = unlimited.
fn limit(key: &str, v: Option<&Value>) -> f64 {
    let Some(v) = v else { return f64::INFINITY };
    let scalar = match v {
        Value::String(s) => Scalar::Str(s.clone()),
        Value::Integer(n) => Scalar::Int(*n),
        Value::Float(x) => Scalar::Float(*x),
        _ => return f64::NAN,
    };
    let parsed = if key.ends_with("_time") || key.ends_with("_timeout") {
        parse_duration(&scalar).map(|d| d.as_secs_f64()).ok()
    } else if matches!(scalar, Scalar::Str(_)) {
        parse_size(&scalar).map(|n| n as f64).ok()
    } else {
        v.as_float().or_else(|| v.as_integer().map(|n| n as f64))
    };
    parsed.unwrap_or(f64::NAN)
}

fn display(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}

/// The effective policy as dotted key → value (tables flattened, `environment.set.NAME`).
fn flatten(p: &Policy) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    if let Ok(table) = toml::from_str::<toml::Table>(&super::show(p)) {
        walk("", &table, &mut out);
    }
    out
}

fn walk(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, Value>) {
    for (k, v) in table {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            Value::Table(t) => walk(&key, t, out),
            other => {
                out.insert(key, other.clone());
            }
        }
    }
}

/// The human report.
pub fn render(d: &PolicyDiff, old: &std::path::Path, new: &std::path::Path) -> String {
    let mut out = format!("policy diff {} → {} (effective policies, after extends)\n", old.display(), new.display());
    let width = d.changes.iter().map(|c| c.key.len()).max().unwrap_or(0);
    if d.changes.is_empty() {
        out.push_str("  no difference\n");
    }
    for c in &d.changes {
        let dir = match c.direction {
            Direction::Loosened => "loosened",
            Direction::Tightened => "tightened",
            Direction::Changed => "changed",
        };
        let mut what = String::new();
        for a in &c.added {
            let _ = write!(what, "+{a} ");
        }
        for r in &c.removed {
            let _ = write!(what, "-{r} ");
        }
        if what.is_empty() {
            let unset = |v: &Option<String>| v.clone().unwrap_or_else(|| "(not set)".to_owned());
            what = format!("{} → {}", unset(&c.old), unset(&c.new));
        }
        let _ = writeln!(out, "  {dir:<9}  {:<width$}  {}", c.key, what.trim_end());
    }
    let delta = d.score_after - d.score_before;
    let _ = writeln!(out, "  exposure {:.1} → {:.1} ({delta:+.1})", d.score_before, d.score_after);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_compare_by_value_and_unset_is_unlimited() {
        let s = |t: &str| Value::String(t.to_owned());
        assert!(limit("limits.memory_max", Some(&s("512M"))) < limit("limits.memory_max", Some(&s("2G"))));
        assert!(limit("limits.wall_time", Some(&s("30m"))) < limit("limits.wall_time", Some(&s("4h"))));
        assert!(limit("limits.pids", Some(&Value::Integer(512))) < limit("limits.pids", None));
        assert_eq!(limit("limits.cpu", Some(&Value::Float(0.5))), 0.5);
    }

    #[test]
    fn scalar_directions() {
        let s = |t: &str| Value::String(t.to_owned());
        assert_eq!(direction("network.mode", Some(&s("none")), Some(&s("loopback"))), Direction::Loosened);
        assert_eq!(direction("network.mode", Some(&s("proxy")), Some(&s("none"))), Direction::Tightened);
        assert_eq!(direction("network.mode", Some(&s("loopback")), Some(&s("proxy"))), Direction::Loosened);
        let names = Value::Array(vec![s("api.openai.com")]);
        assert_eq!(direction("network.egress", Some(&names), Some(&s("learn"))), Direction::Loosened);
        assert_eq!(direction("network.egress", None, Some(&s("learn"))), Direction::Loosened);
        assert_eq!(direction("network.egress", Some(&s("learn")), Some(&names)), Direction::Tightened);
        assert_eq!(direction("seccomp.default_action", Some(&s("allow")), Some(&s("kill"))), Direction::Tightened);
        assert_eq!(direction("seccomp.deny_action", Some(&s("kill")), Some(&s("errno"))), Direction::Loosened);
        assert_eq!(direction("enforcement.mode", Some(&s("required")), Some(&s("best_effort"))), Direction::Loosened);
        assert_eq!(
            direction("namespaces.pid", Some(&Value::Boolean(true)), Some(&Value::Boolean(false))),
            Direction::Loosened
        );
        assert_eq!(direction("limits.memory_max", Some(&s("1G")), None), Direction::Loosened);
        assert_eq!(direction("provider.mode", Some(&s("oneshot")), Some(&s("session"))), Direction::Changed);
        let (fixed, other, any) =
            (Value::Array(vec![s("/bin/true")]), Value::Array(vec![s("/bin/false")]), Value::Array(vec![]));
        assert_eq!(direction("provider.command", Some(&fixed), Some(&any)), Direction::Loosened);
        assert_eq!(direction("provider.command", Some(&any), Some(&fixed)), Direction::Tightened);
        assert_eq!(direction("provider.command", Some(&fixed), Some(&other)), Direction::Changed);
    }

    #[test]
    fn seccomp_deny_grows_tighter() {
        let list = |v: &[&str]| Value::Array(v.iter().map(|s| Value::String((*s).to_owned())).collect());
        let c = change("seccomp.deny", Some(&list(&[])), Some(&list(&["mkdir"])));
        assert_eq!(
            (c.len(), c[0].direction, c[0].added.clone()),
            (1, Direction::Tightened, vec!["\"mkdir\"".to_owned()])
        );
        let c = change("seccomp.deny", Some(&list(&["mkdir"])), Some(&list(&[])));
        assert_eq!(c[0].direction, Direction::Loosened);
    }
}
