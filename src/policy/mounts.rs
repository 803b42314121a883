//! Policy paths the daemon's own mount namespace makes read-only.
//!
//! Cells inherit the daemon's mounts (each bind keeps the read-only flag of the mount beneath
//! it, see `sandbox::view`), so a `filesystem.write` path or a `workdir.roots` entry on a mount
//! that is read-only *for the daemon* is read-only in every cell, whatever the policy grants:
//! the payload gets `EROFS`. Under the shipped unit that is everything outside its
//! `ReadWritePaths=` (`ProtectSystem=strict`). [`read_only_paths`] finds them in one policy,
//! given a probe of the path (the daemon's is [`statvfs_read_only`]); the daemon logs each one
//! with the fix at every load and reload and shows them in health and in the reload's answer
//! (`Pool::path_notes` in `crate::pool`). Placeholders (`{cwd}`, `{tmp}`) are not concrete paths and are not checked
//! (a `{cwd}` lies beneath a workdir root, which is).

use std::fmt;
use std::path::{Path, PathBuf};

use super::model::PathRule;
use super::Policy;

/// A concrete policy path the payload may write by policy but cannot, its mount being
/// read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOnlyPath {
    pub provider: String,
    /// The policy key that names it: `filesystem.write` or `workdir.roots`.
    pub key: &'static str,
    pub path: PathBuf,
}

impl fmt::Display for ReadOnlyPath {
    /// The note an operator reads: provider, key, path, what it means and the fix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display().to_string();
        let what = match self.key {
            "workdir.roots" => "workspaces beneath it are read-only in its cells",
            _ => "its cells cannot write there",
        };
        // systemd splits ReadWritePaths= at whitespace; a quoted path is one entry.
        let entry = if path.chars().any(char::is_whitespace) { format!("\"{path}\"") } else { path.clone() };
        write!(
            f,
            "provider \"{}\": {} \"{path}\" is on a read-only mount in the daemon's mount namespace, which \
             cells inherit: {what} (EROFS). Under systemd (ProtectSystem=strict) let the service write it: \
             `systemctl edit cellkeep` → [Service] ReadWritePaths={entry}, then `systemctl restart cellkeep`",
            self.provider, self.key
        )
    }
}

/// The concrete write paths and workdir roots of `policy` that `read_only` says are on a
/// read-only mount, in policy order, each once. `read_only(path)`: `Some(true)` read-only,
/// `Some(false)` writable, `None` not to report (missing, a device node, cannot tell). An
/// abstract policy (a base for `extends`) launches nothing and is not checked: the policies
/// that extend it are.
pub fn read_only_paths(policy: &Policy, mut read_only: impl FnMut(&Path) -> Option<bool>) -> Vec<ReadOnlyPath> {
    if !policy.is_launchable() {
        return Vec::new();
    }
    let writes = policy.filesystem.write.iter().filter_map(|r| match r {
        PathRule::Absolute(p) => Some(("filesystem.write", p)),
        PathRule::Cwd(_) | PathRule::Tmp(_) => None,
    });
    let roots = policy.workdir.roots.iter().map(|p| ("workdir.roots", p));
    let mut found: Vec<ReadOnlyPath> = Vec::new();
    for (key, path) in writes.chain(roots) {
        if found.iter().any(|f| f.key == key && &f.path == path) {
            continue;
        }
        if read_only(path) == Some(true) {
            found.push(ReadOnlyPath { provider: policy.name.clone(), key, path: path.clone() });
        }
    }
    found
}

/// Whether `path` is on a read-only mount of this process's mount namespace (`statvfs`,
/// `ST_RDONLY`). `None` for a path that does not exist (landlock skips its rule: nothing is
/// granted there) and for device nodes, FIFOs and sockets (writing one does not write its
/// filesystem: `/dev/null` works on a read-only `/dev`).
pub fn statvfs_read_only(path: &Path) -> Option<bool> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path).ok()?;
    let t = meta.file_type();
    if t.is_char_device() || t.is_block_device() || t.is_fifo() || t.is_socket() {
        return None;
    }
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    Some(st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("p.toml");
        std::fs::write(&file, format!("[provider]\nname = \"p\"\ncommand = [\"/bin/cat\"]\n{text}")).expect("write");
        super::super::load_file(&file).unwrap_or_else(|e| panic!("policy: {e:?}"))
    }

    #[test]
    fn read_only_write_paths_and_roots_are_found() {
        let p = policy(
            "[workdir]\nroots = [\"/tmp\", \"/\"]\n[filesystem]\nwrite = [\"{cwd}\", \"{tmp}/x\", \"/var/cache/x\", \"/dev/null\", \"/srv/ok\", \"/var/cache/x\"]\n",
        );
        let mut asked = Vec::new();
        let found = read_only_paths(&p, |path| {
            asked.push(path.to_path_buf());
            match path.to_str() {
                Some("/var/cache/x") | Some("/") => Some(true),
                Some("/dev/null") => None,
                _ => Some(false),
            }
        });
        let got: Vec<(&str, &str)> = found.iter().map(|f| (f.key, f.path.to_str().unwrap_or(""))).collect();
        assert_eq!(got, [("filesystem.write", "/var/cache/x"), ("workdir.roots", "/")]);
        // Placeholders are never probed; a path listed twice is reported once.
        assert!(asked.iter().all(|a| a.is_absolute() && !a.to_string_lossy().contains('{')), "{asked:?}");
        let note = found[0].to_string();
        for part in [
            "provider \"p\"",
            "filesystem.write",
            "\"/var/cache/x\"",
            "systemctl edit cellkeep",
            "ReadWritePaths=/var/cache/x",
        ] {
            assert!(note.contains(part), "{part} in {note}");
        }
        assert!(found[1].to_string().contains("workspaces beneath it"), "{}", found[1]);
    }

    #[test]
    fn nothing_read_only_nothing_found() {
        let p = policy("[filesystem]\nwrite = [\"/var/cache/x\"]\n");
        assert!(read_only_paths(&p, |_| Some(false)).is_empty());
        assert!(read_only_paths(&p, |_| None).is_empty());
        let mut abstract_base = p.clone();
        abstract_base.is_abstract = true;
        assert!(read_only_paths(&abstract_base, |_| Some(true)).is_empty());
    }

    #[test]
    fn a_path_with_spaces_is_quoted_for_systemd() {
        let f = ReadOnlyPath { provider: "p".into(), key: "filesystem.write", path: "/data/my dir".into() };
        assert!(f.to_string().contains("ReadWritePaths=\"/data/my dir\""), "{f}");
    }

    #[test]
    fn the_probe_reads_this_namespace() {
        // /proc/sys is read-only for an unprivileged container and writable for root on a host:
        // assert only what holds everywhere.
        assert_eq!(statvfs_read_only(Path::new("/dev/null")), None, "a device node is not its filesystem");
        assert_eq!(statvfs_read_only(Path::new("/no/such/path/here")), None);
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(statvfs_read_only(dir.path()), Some(false), "the temp dir is writable");
    }
}
