//! Pure parsers for cgroupfs and procfs text: flat-keyed files (`memory.events`, `pids.events`,
//! `cpu.stat`, `memory.oom_control`), `"max"`-or-number values, `/proc/self/cgroup` and
//! `/proc/self/mountinfo` lines. Nothing here touches the kernel; callers pass file contents in.

use std::path::{Path, PathBuf};

/// Value of `key` in a flat-keyed file ("key value" per line), e.g. `oom_kill` in `memory.events`.
/// `None` when the key is absent or its value is not a number (old kernels lack some keys).
pub fn flat_keyed(content: &str, key: &str) -> Option<u64> {
    content.lines().find_map(|line| {
        let mut it = line.split_whitespace();
        match (it.next(), it.next()) {
            (Some(k), Some(v)) if k == key => v.parse().ok(),
            _ => None,
        }
    })
}

/// A limit value: `"max"` → `Some(None)` (unlimited), a number → `Some(Some(n))`, else `None`.
pub fn max_or_number(content: &str) -> Option<Option<u64>> {
    match content.trim() {
        "max" => Some(None),
        s => s.parse().ok().map(Some),
    }
}

/// A single unsigned number such as `memory.current`; `None` if malformed.
pub fn number(content: &str) -> Option<u64> {
    content.trim().parse().ok()
}

/// Pids listed one per line (`cgroup.procs`); blank lines skipped, malformed lines are `Err(line)`.
pub fn pids(content: &str) -> Result<Vec<u32>, String> {
    content.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| l.parse().map_err(|_| l.to_string())).collect()
}

/// One line of `/proc/self/cgroup`: `hierarchy-id:controller-list:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcCgroup {
    pub hierarchy_id: u32,
    /// Empty for the cgroup2 line (`0::/path`); `name=systemd` kept as written.
    pub controllers: Vec<String>,
    pub path: String,
}

/// Parses `/proc/self/cgroup`; malformed lines are skipped.
pub fn proc_cgroup(content: &str) -> Vec<ProcCgroup> {
    content
        .lines()
        .filter_map(|line| {
            let mut it = line.splitn(3, ':');
            let hierarchy_id = it.next()?.parse().ok()?;
            let controllers = it.next()?.split(',').filter(|c| !c.is_empty()).map(str::to_string).collect();
            let path = it.next()?.to_string();
            Some(ProcCgroup { hierarchy_id, controllers, path })
        })
        .collect()
}

/// The cgroup path of this process in the v1 hierarchy that carries `controller`.
pub fn v1_own_path<'a>(entries: &'a [ProcCgroup], controller: &str) -> Option<&'a str> {
    entries
        .iter()
        .find(|e| e.hierarchy_id != 0 && e.controllers.iter().any(|c| c == controller))
        .map(|e| e.path.as_str())
}

/// The cgroup2 path of this process (the `0::/path` line).
pub fn v2_own_path(entries: &[ProcCgroup]) -> Option<&str> {
    entries.iter().find(|e| e.hierarchy_id == 0 && e.controllers.is_empty()).map(|e| e.path.as_str())
}

/// The fields of a `/proc/self/mountinfo` line that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Path inside the filesystem that is mounted (`/` unless a sub-tree was bind-mounted).
    pub root: String,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub super_options: Vec<String>,
}

/// Parses one mountinfo line (`id parent maj:min root mount-point opts [optional…] - type source super-opts`).
pub fn mountinfo_line(line: &str) -> Option<Mount> {
    let (left, right) = line.split_once(" - ")?;
    let left: Vec<&str> = left.split(' ').collect();
    let mut right = right.split(' ');
    let fs_type = right.next()?.to_string();
    let _source = right.next()?;
    let super_options = right.next().unwrap_or("").split(',').map(str::to_string).collect();
    Some(Mount {
        root: unescape_octal(left.get(3)?),
        mount_point: PathBuf::from(unescape_octal(left.get(4)?)),
        fs_type,
        super_options,
    })
}

/// Parses all of `/proc/self/mountinfo`; malformed lines are skipped.
pub fn mountinfo(content: &str) -> Vec<Mount> {
    content.lines().filter_map(mountinfo_line).collect()
}

/// The v1 mount (`cgroup` type) whose super-options name `controller`, e.g. `memory` or
/// `cpuacct` (also when co-mounted as `cpu,cpuacct`). When several mounts show the same
/// hierarchy, the one whose root contains `own_path` and is shortest wins.
pub fn v1_mount<'a>(mounts: &'a [Mount], controller: &str, own_path: &str) -> Option<&'a Mount> {
    mounts
        .iter()
        .filter(|m| m.fs_type == "cgroup" && m.super_options.iter().any(|o| o == controller))
        .filter(|m| relative_to_root(&m.root, own_path).is_some())
        .min_by_key(|m| m.root.len())
}

/// The cgroup2 mount that contains `own_path`, preferring `prefer` (e.g. `/sys/fs/cgroup`).
pub fn v2_mount<'a>(mounts: &'a [Mount], own_path: &str, prefer: &Path) -> Option<&'a Mount> {
    let mut candidates =
        mounts.iter().filter(|m| m.fs_type == "cgroup2" && relative_to_root(&m.root, own_path).is_some());
    let first = candidates.clone().next();
    candidates.find(|m| m.mount_point == prefer).or(first)
}

/// `own_path` relative to a mount's `root` (`/a/b` under root `/a` → `b`); `None` if outside.
pub fn relative_to_root<'a>(root: &str, own_path: &'a str) -> Option<&'a str> {
    let root = root.trim_end_matches('/');
    let rest = own_path.strip_prefix(root)?;
    if !rest.is_empty() && !rest.starts_with('/') {
        return None;
    }
    Some(rest.trim_start_matches('/'))
}

/// Directory of the cgroup at `own_path` given the mount showing its hierarchy.
pub fn cgroup_dir(mount: &Mount, own_path: &str) -> Option<PathBuf> {
    let rel = relative_to_root(&mount.root, own_path)?;
    Some(if rel.is_empty() { mount.mount_point.clone() } else { mount.mount_point.join(rel) })
}

/// Undoes mountinfo's `\ooo` escapes (space, tab, newline, backslash).
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let oct = bytes.get(i + 1..i + 4).filter(|o| o.iter().all(|b| (b'0'..=b'7').contains(b)));
        match oct {
            Some(o) if bytes[i] == b'\\' => {
                let v = o.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `own` + `/` + `name`, for cgroup paths as `/proc/<pid>/cgroup` writes them (both backends).
pub(super) fn join_rel(own: &str, name: &str) -> String {
    format!("{}/{name}", own.trim_end_matches('/'))
}

/// Whether cgroup path `path` is strictly beneath `root` (both as in `/proc/<pid>/cgroup`).
pub(super) fn below(path: &str, root: &str) -> bool {
    path.strip_prefix(root).is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO_HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";

    const MOUNTINFO_COMOUNT: &str = "\
25 18 0:22 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:12 - cgroup cgroup rw,cpu,cpuacct
31 25 0:28 /docker/abc /sys/fs/cgroup/memory rw,nosuid master:1 - cgroup cgroup rw,memory
99 25 0:28 / /mnt/mem\\040dir rw - cgroup cgroup rw,memory";

    #[test]
    fn flat_keyed_reads_memory_events_and_oom_control() {
        let events = "low 0\nhigh 3\nmax 17\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(flat_keyed(events, "oom_kill"), Some(1));
        assert_eq!(flat_keyed(events, "max"), Some(17));
        assert_eq!(flat_keyed(events, "missing"), None);
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n";
        assert_eq!(flat_keyed(oom_control, "oom_kill"), Some(4));
        let cpu_stat = "usage_usec 123\nuser_usec 100\nsystem_usec 23\nthrottled_usec 9\n";
        assert_eq!(flat_keyed(cpu_stat, "usage_usec"), Some(123));
        assert_eq!(flat_keyed(cpu_stat, "throttled_usec"), Some(9));
        // `max` must not match `max.imposed` (pids.events on newer kernels).
        assert_eq!(flat_keyed("max.imposed 5\nmax 2\n", "max"), Some(2));
    }

    #[test]
    fn max_or_number_values() {
        assert_eq!(max_or_number("max\n"), Some(None));
        assert_eq!(max_or_number("33554432\n"), Some(Some(33554432)));
        assert_eq!(max_or_number("-1"), None);
        assert_eq!(number(" 42\n"), Some(42));
        assert_eq!(number(""), None);
    }

    #[test]
    fn pids_lines() {
        assert_eq!(pids("1\n23\n\n"), Ok(vec![1, 23]));
        assert_eq!(pids(""), Ok(vec![]));
        assert_eq!(pids("1\nx\n"), Err("x".to_string()));
    }

    #[test]
    fn proc_cgroup_hybrid_and_unified() {
        let text = "9:name=systemd:/\n4:memory:/process_api/031ab\n2:cpu,cpuacct:/x\n0::/\n";
        let e = proc_cgroup(text);
        assert_eq!(e.len(), 4);
        assert_eq!(v1_own_path(&e, "memory"), Some("/process_api/031ab"));
        assert_eq!(v1_own_path(&e, "cpuacct"), Some("/x"));
        assert_eq!(v1_own_path(&e, "pids"), None);
        assert_eq!(v2_own_path(&e), Some("/"));
        let unified = proc_cgroup("0::/user.slice/session-1.scope\n");
        assert_eq!(v2_own_path(&unified), Some("/user.slice/session-1.scope"));
        assert_eq!(v1_own_path(&unified, "memory"), None);
    }

    #[test]
    fn mountinfo_finds_v1_controllers_and_cgroup2() {
        let m = mountinfo(MOUNTINFO_HYBRID);
        assert_eq!(m.len(), 8);
        let mem = v1_mount(&m, "memory", "/process_api/031ab").unwrap();
        assert_eq!(mem.mount_point, PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(
            cgroup_dir(mem, "/process_api/031ab").unwrap(),
            PathBuf::from("/sys/fs/cgroup/memory/process_api/031ab")
        );
        assert_eq!(v1_mount(&m, "cpu", "/").unwrap().mount_point, PathBuf::from("/sys/fs/cgroup/cpu"));
        assert_eq!(v1_mount(&m, "cpuacct", "/").unwrap().mount_point, PathBuf::from("/sys/fs/cgroup/cpuacct"));
        assert!(v1_mount(&m, "systemd", "/").is_none());
        let v2 = v2_mount(&m, "/", Path::new("/sys/fs/cgroup")).unwrap();
        assert_eq!(v2.mount_point, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(cgroup_dir(v2, "/").unwrap(), PathBuf::from("/sys/fs/cgroup/unified"));
    }

    #[test]
    fn mountinfo_comounted_and_bind_rooted() {
        let m = mountinfo(MOUNTINFO_COMOUNT);
        let cpu = v1_mount(&m, "cpu", "/").unwrap();
        let acct = v1_mount(&m, "cpuacct", "/").unwrap();
        assert_eq!(cpu, acct);
        assert_eq!(cpu.mount_point, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        // Root `/` wins over the bind-mounted `/docker/abc` sub-tree; escapes are undone.
        let mem = v1_mount(&m, "memory", "/docker/abc/x").unwrap();
        assert_eq!(mem.mount_point, PathBuf::from("/mnt/mem dir"));
        // A path outside a sub-tree root is not matched by that mount.
        let only_sub: Vec<Mount> = m.iter().filter(|x| x.root != "/").cloned().collect();
        assert!(v1_mount(&only_sub, "memory", "/other").is_none());
        let sub = v1_mount(&only_sub, "memory", "/docker/abc/x").unwrap();
        assert_eq!(cgroup_dir(sub, "/docker/abc/x").unwrap(), PathBuf::from("/sys/fs/cgroup/memory/x"));
    }

    #[test]
    fn relative_paths() {
        assert_eq!(relative_to_root("/", "/a/b"), Some("a/b"));
        assert_eq!(relative_to_root("/a", "/a/b"), Some("b"));
        assert_eq!(relative_to_root("/a", "/a"), Some(""));
        assert_eq!(relative_to_root("/a", "/ab"), None);
        assert_eq!(relative_to_root("/", "/"), Some(""));
    }

    #[test]
    fn unescape() {
        assert_eq!(unescape_octal("/a\\040b"), "/a b");
        assert_eq!(unescape_octal("/a\\\\b"), "/a\\\\b");
        assert_eq!(unescape_octal("/end\\04"), "/end\\04");
    }
}
