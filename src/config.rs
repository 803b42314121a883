//! Daemon settings: documented embedded defaults, an optional TOML file, then flags.
//!
//! `cellkeep daemon` runs with no config file at all. Defaults: socket
//! `/run/cellkeep/cellkeep.sock` (mode 0660), policies from `/etc/cellkeep/policies` when it
//! exists, else `./policies`; the admin floor from `/etc/cellkeep/floor.toml` when it exists
//! (key `floor`); at most 20 cells; idle timeout 300 s; termination grace 5 s;
//! shutdown timeout 30 s; exited cells listed for 300 s; request bodies up to 1 MiB; output
//! spool files in `/var/lib/cellkeep/spool`; cells' own host ids from `cell_id_range`
//! (default `[1900000000, 65536]`, see `crate::sandbox::ids`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// A wrong key or value, reported as a policy's are: `file:line:col: key: message` (the
    /// key left out for a TOML syntax error).
    #[error("config {}:{line}:{col}: {}{message}", path.display(), if key.is_empty() { String::new() } else { format!("{key}: ") })]
    Invalid { path: PathBuf, line: usize, col: usize, key: String, message: String },
}

/// The parsed file, to report a problem at the key that caused it.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
    table: toml::Spanned<DeTable<'a>>,
}

impl Source<'_> {
    /// An error at byte `offset` about `key`.
    fn at(&self, offset: usize, key: &str, message: impl Into<String>) -> ConfigError {
        let (line, col) = crate::policy::load::line_col(self.text, offset);
        ConfigError::Invalid { path: self.path.to_owned(), line, col, key: key.to_owned(), message: message.into() }
    }

    /// An error about the value of `key`, at that value.
    fn value(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.nested(&[key], message)
    }

    /// An error about the value at `path` (`["egress_hosts", NAME]`), at that value.
    fn nested(&self, path: &[&str], message: impl Into<String>) -> ConfigError {
        let mut table = self.table.get_ref();
        let mut offset = 0;
        for part in path {
            let Some(v) = table.get(*part) else { break };
            offset = v.span().start;
            match v.get_ref() {
                DeValue::Table(sub) => table = sub,
                _ => break,
            }
        }
        self.at(offset, &path.join("."), message)
    }
}

/// Where the admin floor is read from unless the config says otherwise.
pub const DEFAULT_FLOOR: &str = "/etc/cellkeep/floor.toml";

/// Where cells' output spool files live unless the config says otherwise.
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/cellkeep/spool";

/// Effective daemon settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    /// Octal permission bits of the socket file.
    pub socket_mode: u32,
    /// Group owning the socket (its members may connect).
    pub socket_group: Option<u32>,
    pub policy_dir: PathBuf,
    /// The admin floor every provider policy must respect (no file there = no floor).
    pub floor: PathBuf,
    pub max_cells: usize,
    /// `max_cells_per_uid`: the most cells (running or being launched) one non-admin uid may
    /// hold, so one user cannot take every slot on a shared host. `None`: no per-uid bound.
    pub max_cells_per_uid: Option<usize>,
    /// Default idle timeout (a policy's `limits.idle_timeout` overrides it per provider).
    pub idle_timeout: Duration,
    /// SIGTERM → SIGKILL grace when terminating a cell.
    pub grace: Duration,
    pub shutdown_timeout: Duration,
    /// How long exited cells stay listed with their exit reason.
    pub exited_retention: Duration,
    /// How many exited cells stay listed at most: each holds its output spool (a file and an
    /// fd) and its record, so a busy daemon's retention is bounded by count as well as by
    /// time. Past it, the oldest exited cell of the uid that holds the most goes first (one
    /// user's one-shots do not push out another's results).
    pub exited_retention_max: usize,
    /// The most output the exited cells' spools may hold together (`exited_output_max`,
    /// default 1G): past it, the oldest exited cell of the uid whose cells hold the most goes.
    pub exited_output_max: u64,
    /// Groups whose members may see and manage every cell, and shut the daemon down.
    pub admin_gids: Vec<u32>,
    pub cgroup_root: String,
    /// Where each cell's output spool file lives (`spool_dir`; default
    /// `/var/lib/cellkeep/spool`). Files no live daemon holds are removed at start-up.
    pub spool_dir: PathBuf,
    pub max_body_bytes: usize,
    /// Connections served at once; more are refused.
    pub max_connections: usize,
    /// `egress_hosts = {"fake.test" = "127.0.0.1"}`: names the egress proxy resolves to these
    /// addresses itself, for tests (may be loopback; the host's resolver files are never edited).
    pub egress_hosts: std::collections::BTreeMap<String, std::net::IpAddr>,
    /// `cell_id_range = [start, count]`: the host uids/gids cells of root callers (and of no
    /// other range) get one each of. Validated: no 0, no overflow ids, clear of systemd's
    /// DynamicUser range and of `/etc/subuid`/`/etc/subgid`.
    pub cell_id_range: crate::sandbox::IdRange,
}

impl Default for Config {
    fn default() -> Self {
        let installed = Path::new("/etc/cellkeep/policies");
        Config {
            socket: PathBuf::from("/run/cellkeep/cellkeep.sock"),
            socket_mode: 0o660,
            socket_group: None,
            policy_dir: if installed.is_dir() { installed.to_owned() } else { PathBuf::from("policies") },
            floor: PathBuf::from(DEFAULT_FLOOR),
            max_cells: 20,
            max_cells_per_uid: None,
            idle_timeout: Duration::from_secs(300),
            grace: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(30),
            exited_retention: Duration::from_secs(300),
            exited_retention_max: 1000,
            exited_output_max: 1 << 30,
            admin_gids: Vec::new(),
            cgroup_root: "cellkeep".to_owned(),
            spool_dir: PathBuf::from(DEFAULT_SPOOL_DIR),
            max_body_bytes: 1 << 20,
            max_connections: 256,
            egress_hosts: Default::default(),
            cell_id_range: crate::sandbox::ids::DEFAULT_ID_RANGE,
        }
    }
}

/// The TOML file: every key optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    socket: Option<PathBuf>,
    socket_mode: Option<String>,
    socket_group: Option<String>,
    policy_dir: Option<PathBuf>,
    floor: Option<PathBuf>,
    max_cells: Option<usize>,
    max_cells_per_uid: Option<usize>,
    idle_timeout_secs: Option<f64>,
    grace_secs: Option<f64>,
    shutdown_timeout_secs: Option<f64>,
    exited_retention_secs: Option<f64>,
    exited_retention_max: Option<usize>,
    exited_output_max: Option<toml::Value>,
    admin_groups: Option<Vec<String>>,
    cgroup_root: Option<String>,
    spool_dir: Option<PathBuf>,
    max_body_bytes: Option<usize>,
    max_connections: Option<usize>,
    egress_hosts: Option<std::collections::BTreeMap<String, String>>,
    cell_id_range: Option<[u32; 2]>,
}

fn gid_of(src: &Source<'_>, key: &str, group: &str) -> Result<u32, ConfigError> {
    if let Ok(n) = group.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(src.value(key, format!("unknown group \"{group}\" (not in /etc/group)"))),
    }
}

fn secs(src: &Source<'_>, key: &str, v: f64) -> Result<Duration, ConfigError> {
    let d = Duration::try_from_secs_f64(v).map_err(|_| src.value(key, format!("not a duration: {v}")))?;
    // A deadline is `now + d`: keep it far from the end of the clock.
    if d > crate::policy::units::MAX_DURATION {
        return Err(src.value(key, format!("{v} s is longer than a year (31536000 s)")));
    }
    Ok(d)
}

impl Config {
    /// Defaults, overridden by the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let table = DeTable::parse(&text).map_err(|e| {
            let at = e.span().unwrap_or(0..0).start;
            let line_of = |offset| crate::policy::load::line_col(&text, offset).0;
            let message = crate::policy::friendly::syntax(e.message(), &text, at, line_of);
            let (line, col) = crate::policy::load::line_col(&text, at);
            ConfigError::Invalid { path: path.to_owned(), line, col, key: String::new(), message }
        })?;
        let src = Source { path, text: &text, table };
        let f = FileConfig::deserialize(toml::de::Deserializer::from(src.table.clone())).map_err(|e| {
            let at = e.span().unwrap_or(0..0).start;
            let key = crate::policy::load::find_path(src.table.get_ref(), at).map(|p| p.join(".")).unwrap_or_default();
            // serde's own words for an unknown key (it names the key and lists the valid ones;
            // tests/deploy.rs matches them); a wrong type in a policy author's words.
            let message = e.message().trim();
            let message = if message.starts_with("unknown field") {
                message.to_owned()
            } else {
                crate::policy::friendly::rewrite(&key, message)
            };
            src.at(at, &key, message)
        })?;
        let mut c = Config::default();
        if let Some(v) = f.socket {
            c.socket = v;
        }
        if let Some(v) = f.socket_mode {
            c.socket_mode = u32::from_str_radix(v.trim_start_matches("0o"), 8)
                .map_err(|_| src.value("socket_mode", format!("not an octal mode: {v:?}")))?;
        }
        if let Some(g) = f.socket_group {
            c.socket_group = Some(gid_of(&src, "socket_group", &g)?);
        }
        if let Some(v) = f.policy_dir {
            c.policy_dir = v;
        }
        if let Some(v) = f.floor {
            c.floor = v;
        }
        if let Some(v) = f.max_cells {
            c.max_cells = v;
        }
        if let Some(v) = f.max_cells_per_uid {
            if v == 0 {
                return Err(src.value("max_cells_per_uid", "must be at least 1 (leave it out for no per-uid bound)"));
            }
            c.max_cells_per_uid = Some(v);
        }
        if let Some(v) = f.idle_timeout_secs {
            c.idle_timeout = secs(&src, "idle_timeout_secs", v)?;
        }
        if let Some(v) = f.grace_secs {
            c.grace = secs(&src, "grace_secs", v)?;
        }
        if let Some(v) = f.shutdown_timeout_secs {
            c.shutdown_timeout = secs(&src, "shutdown_timeout_secs", v)?;
        }
        if let Some(v) = f.exited_retention_secs {
            c.exited_retention = secs(&src, "exited_retention_secs", v)?;
        }
        if let Some(v) = f.exited_retention_max {
            c.exited_retention_max = v;
        }
        if let Some(v) = f.exited_output_max {
            let scalar = match v {
                toml::Value::Integer(n) => Some(crate::policy::raw::Scalar::Int(n)),
                toml::Value::String(s) => Some(crate::policy::raw::Scalar::Str(s)),
                _ => None,
            };
            c.exited_output_max = scalar
                .ok_or_else(|| "a size in bytes, or e.g. \"512M\"".to_owned())
                .and_then(|s| crate::policy::units::parse_size(&s))
                .map_err(|m| src.value("exited_output_max", m))?;
        }
        if let Some(groups) = f.admin_groups {
            c.admin_gids = groups.iter().map(|g| gid_of(&src, "admin_groups", g)).collect::<Result<_, _>>()?;
        }
        if let Some(v) = f.cgroup_root {
            c.cgroup_root = v;
        }
        if let Some(v) = f.spool_dir {
            c.spool_dir = v;
        }
        if let Some(v) = f.max_body_bytes {
            c.max_body_bytes = v;
        }
        if let Some(v) = f.max_connections {
            c.max_connections = v;
        }
        if let Some([start, count]) = f.cell_id_range {
            let range = crate::sandbox::IdRange { start, count };
            range.validate().map_err(|e| src.value("cell_id_range", e.to_string()))?;
            c.cell_id_range = range;
        }
        for (name, addr) in f.egress_hosts.unwrap_or_default() {
            let ip = addr
                .parse()
                .map_err(|_| src.nested(&["egress_hosts", &name], format!("{addr:?} is not an IP address")))?;
            c.egress_hosts.insert(crate::policy::egress::normalize(&name), ip);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cell_id_range` is read and validated: a range holding root or overlapping systemd's
    /// DynamicUser ids is refused, naming the key.
    #[test]
    fn cell_id_range_is_validated() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("c.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
            Config::load(&path)
        };
        let c = load("cell_id_range = [1800000000, 1000]\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.cell_id_range, crate::sandbox::IdRange { start: 1_800_000_000, count: 1000 });
        assert_eq!(Config::default().cell_id_range, crate::sandbox::ids::DEFAULT_ID_RANGE);
        for bad in ["[0, 10]", "[61000, 1000]", "[65530, 10]", "[1, 0]"] {
            let e = load(&format!("cell_id_range = {bad}\n")).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("cell_id_range"), "{bad}: {e}");
        }
    }

    /// A wrong value is reported as a policy's are: `file:line:col: key: message`.
    #[test]
    fn errors_name_the_line_and_the_key() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("cellkeep.toml");
        std::fs::write(&path, "# cellkeep\nsocket_mode = \"0660\"\nmax_cells = \"20\"\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let e = Config::load(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains(&format!("{}:3:13: max_cells: ", path.display())), "{e}");
        assert!(e.contains("expected a whole number, e.g. max_cells = 20"), "{e}");
        for (text, want) in [
            ("\n\nmax_cels = 20\n", ":3:1: max_cels: unknown field `max_cels`, expected one of `socket`,"),
            ("\nsocket_mode = \"0999\"\n", ":2:15: socket_mode: not an octal mode: \"0999\""),
            ("[egress_hosts]\n\"fake.test\" = \"x\"\n", ":2:15: egress_hosts.fake.test: \"x\" is not an IP address"),
            ("grace_secs = 1e12\n", ":1:14: grace_secs: 1000000000000 s is longer than a year"),
            ("max_cells = = 1\n", ":1:13: TOML syntax: "),
        ] {
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
            let e = Config::load(&path).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.starts_with(&format!("config {}{want}", path.display())), "{text}: {e}");
        }
    }
}
