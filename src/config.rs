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

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: unknown group {group:?}")]
    Group { path: PathBuf, group: String },
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

fn gid_of(path: &Path, group: &str) -> Result<u32, ConfigError> {
    if let Ok(n) = group.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(ConfigError::Group { path: path.to_owned(), group: group.to_owned() }),
    }
}

fn secs(path: &Path, key: &str, v: f64) -> Result<Duration, ConfigError> {
    let d = Duration::try_from_secs_f64(v)
        .map_err(|_| ConfigError::Parse { path: path.to_owned(), message: format!("{key}: not a duration: {v}") })?;
    // A deadline is `now + d`: keep it far from the end of the clock.
    if d > crate::policy::units::MAX_DURATION {
        return Err(ConfigError::Parse {
            path: path.to_owned(),
            message: format!("{key}: {v} s is longer than a year (31536000 s)"),
        });
    }
    Ok(d)
}

impl Config {
    /// Defaults, overridden by the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let f: FileConfig = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.message().to_owned() })?;
        let mut c = Config::default();
        if let Some(v) = f.socket {
            c.socket = v;
        }
        if let Some(v) = f.socket_mode {
            c.socket_mode = u32::from_str_radix(v.trim_start_matches("0o"), 8).map_err(|_| ConfigError::Parse {
                path: path.to_owned(),
                message: format!("socket_mode: not an octal mode: {v:?}"),
            })?;
        }
        if let Some(g) = f.socket_group {
            c.socket_group = Some(gid_of(path, &g)?);
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
                return Err(ConfigError::Parse {
                    path: path.to_owned(),
                    message: "max_cells_per_uid: must be at least 1 (leave it out for no per-uid bound)".into(),
                });
            }
            c.max_cells_per_uid = Some(v);
        }
        if let Some(v) = f.idle_timeout_secs {
            c.idle_timeout = secs(path, "idle_timeout_secs", v)?;
        }
        if let Some(v) = f.grace_secs {
            c.grace = secs(path, "grace_secs", v)?;
        }
        if let Some(v) = f.shutdown_timeout_secs {
            c.shutdown_timeout = secs(path, "shutdown_timeout_secs", v)?;
        }
        if let Some(v) = f.exited_retention_secs {
            c.exited_retention = secs(path, "exited_retention_secs", v)?;
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
                .map_err(|m| ConfigError::Parse {
                    path: path.to_owned(),
                    message: format!("exited_output_max: {m}"),
                })?;
        }
        if let Some(groups) = f.admin_groups {
            c.admin_gids = groups.iter().map(|g| gid_of(path, g)).collect::<Result<_, _>>()?;
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
            range
                .validate()
                .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: format!("cell_id_range: {e}") })?;
            c.cell_id_range = range;
        }
        for (name, addr) in f.egress_hosts.unwrap_or_default() {
            let ip = addr.parse().map_err(|_| ConfigError::Parse {
                path: path.to_owned(),
                message: format!("egress_hosts: {name} = {addr:?} is not an IP address"),
            })?;
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
}
