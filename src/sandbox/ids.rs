//! Host identities for cells: one uid/gid of its own per cell, from a configured range.
//!
//! Like systemd's `DynamicUser` and podman's subordinate ids, a cell that would otherwise share
//! a host identity with other cells (a root caller's cell, a `run_as = "range"` cell) gets an id
//! that no account and no other live cell uses:
//!
//! * an id is skipped when an account or a group has it (`getpwuid`/`getgrgid`);
//! * an id is taken by an exclusive `flock` on `/run/cellkeep/ids/<uid>` ([`ID_LOCK_DIR`]),
//!   held by the launcher (the daemon or a `cellkeep run`) for the cell's whole life and
//!   released once its cgroup is gone ([`IdLease`] is dropped after the cgroup's removal). The
//!   lock is the kernel's, so it holds across processes (the daemon and concurrent `cellkeep
//!   run`s) and is released by the kernel if the launcher dies.
//!
//! * an id a lease of the same allocator released is offered first to its next launch, its
//!   account check trusted for a minute ([`ACCOUNT_CHECK_TTL`]); its previous cell is gone
//!   by then (the lease outlives the cgroup).
//!
//! The gid is the uid (no group of that number exists: checked above).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

/// Where the per-id lock files live.
pub const ID_LOCK_DIR: &str = "/run/cellkeep/ids";
/// The default range of cell ids: above systemd's container range (524288–1879048191) and
/// below its foreign range (2147352576–), clear of `/etc/subuid` ranges as `useradd` allocates
/// them (100000 upward, 65536 per user) and of systemd's `DynamicUser` range (61184–65519).
pub const DEFAULT_ID_RANGE: IdRange = IdRange { start: 1_900_000_000, count: 65536 };

/// systemd's `DynamicUser` ids; never used for cells.
const SYSTEMD_DYNAMIC: (u32, u32) = (61184, 65519);

/// `count` ids from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub start: u32,
    pub count: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum IdError {
    #[error("cell id range [{start}, {count}]: {reason}")]
    Range { start: u32, count: u32, reason: String },
    #[error("cell id lock directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("cell id lock {path}: {source}")]
    Lock { path: PathBuf, source: std::io::Error },
    #[error("no free cell id in [{start}, {count}]: every id is an account's or a live cell's")]
    Exhausted { start: u32, count: u32 },
}

impl IdRange {
    /// The last id of the range.
    pub fn end(&self) -> u32 {
        self.start.saturating_add(self.count.saturating_sub(1))
    }

    /// Refuse a range that is empty, wraps, holds 0, the overflow ids (65534, 65535), -1, or
    /// overlaps systemd's `DynamicUser` range or a subordinate range of `/etc/subuid` or
    /// `/etc/subgid`.
    pub fn validate(&self) -> Result<(), IdError> {
        self.validate_against(&subordinate_ranges())
    }

    fn validate_against(&self, subordinate: &[(String, u32, u32)]) -> Result<(), IdError> {
        let refuse = |reason: String| Err(IdError::Range { start: self.start, count: self.count, reason });
        if self.count == 0 {
            return refuse("the range is empty".into());
        }
        let Some(last) = self.start.checked_add(self.count - 1) else {
            return refuse("the range runs past the largest uid".into());
        };
        if last == u32::MAX {
            return refuse("the range holds uid 4294967295 ((uid_t) -1)".into());
        }
        let overlaps = |a: u32, b: u32| self.start <= b && a <= last;
        if self.start == 0 {
            return refuse("the range holds uid 0 (root)".into());
        }
        if overlaps(65534, 65535) {
            return refuse("the range holds the overflow ids 65534/65535 (nobody)".into());
        }
        if overlaps(SYSTEMD_DYNAMIC.0, SYSTEMD_DYNAMIC.1) {
            return refuse(format!(
                "the range overlaps systemd's DynamicUser ids {}–{}",
                SYSTEMD_DYNAMIC.0, SYSTEMD_DYNAMIC.1
            ));
        }
        for (file, start, count) in subordinate {
            if *count > 0 && overlaps(*start, start.saturating_add(count - 1)) {
                return refuse(format!("the range overlaps the subordinate range {start}:{count} of {file}"));
            }
        }
        Ok(())
    }
}

/// `(file, start, count)` of every line of `/etc/subuid` and `/etc/subgid`.
fn subordinate_ranges() -> Vec<(String, u32, u32)> {
    let mut out = Vec::new();
    for file in ["/etc/subuid", "/etc/subgid"] {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        for line in text.lines() {
            let mut f = line.trim().split(':').skip(1);
            if let (Some(Ok(start)), Some(Ok(count))) = (f.next().map(str::parse), f.next().map(str::parse)) {
                out.push((file.to_owned(), start, count));
            }
        }
    }
    out
}

/// One cell's host id, held until dropped (the lock file's `flock`). Dropped, it is offered
/// first to the next launch of the same allocator (see [`IdAllocator`]).
#[derive(Debug)]
pub struct IdLease {
    uid: u32,
    lock: Option<Flock<File>>,
    /// When NSS last said no account or group has this id.
    checked: Instant,
    recent: Option<Arc<Recent>>,
}

impl IdLease {
    /// The cell's host uid (and gid).
    pub fn uid(&self) -> u32 {
        self.uid
    }
}

impl Drop for IdLease {
    fn drop(&mut self) {
        // Unlock first, then offer the id for reuse.
        drop(self.lock.take());
        if let Some(recent) = &self.recent {
            recent.push(self.uid, self.checked);
        }
    }
}

/// Ids this allocator's leases released, newest last, with the time of their account check.
#[derive(Debug, Default)]
struct Recent {
    ids: Mutex<Vec<(u32, Instant)>>,
    /// Account checks made (NSS lookups), for tests.
    checks: std::sync::atomic::AtomicUsize,
}

/// How many released ids are remembered for reuse.
const RECENT_MAX: usize = 256;

impl Recent {
    fn push(&self, uid: u32, checked: Instant) {
        let mut ids = self.ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if ids.len() >= RECENT_MAX {
            ids.remove(0);
        }
        ids.push((uid, checked));
    }

    fn pop(&self) -> Option<(u32, Instant)> {
        self.ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop()
    }
}

/// Where leases are taken: a range and a lock directory.
///
/// A released id is offered first to the next launch (newest first), its account check
/// trusted for [`ACCOUNT_CHECK_TTL`] from when it was made: in the daemon, most launches then
/// take an id without asking NSS (~1 ms with nss-systemd's userdb probes), and the lock
/// still decides who holds it. Past that age, or for a fresh id, NSS is asked again.
#[derive(Debug, Clone)]
pub struct IdAllocator {
    pub range: IdRange,
    pub dir: PathBuf,
    recent: Arc<Recent>,
}

/// How long a "no account has this id" answer is trusted for an id released and reused.
pub const ACCOUNT_CHECK_TTL: Duration = Duration::from_secs(60);

impl Default for IdAllocator {
    fn default() -> Self {
        IdAllocator::new(DEFAULT_ID_RANGE, PathBuf::from(ID_LOCK_DIR))
    }
}

fn is_account(uid: u32) -> bool {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid));
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(uid));
    // A lookup that fails (not "not found") counts as taken: fail closed.
    !matches!((user, group), (Ok(None), Ok(None)))
}

impl IdAllocator {
    pub fn new(range: IdRange, dir: PathBuf) -> IdAllocator {
        IdAllocator { range, dir, recent: Arc::default() }
    }

    /// Take a free id of `range` (the allocator's own range when `None`): a recently released
    /// one whose account check is younger than [`ACCOUNT_CHECK_TTL`] if its lock is free, else
    /// a scan that starts at an offset derived from the process id and the clock, so
    /// concurrent launchers rarely contend for the same first id; a held lock
    /// (`EWOULDBLOCK`) moves on to the next.
    pub fn allocate(&self, range: Option<IdRange>) -> Result<IdLease, IdError> {
        let range = range.unwrap_or(self.range);
        if range.count == 0 {
            return Err(IdError::Exhausted { start: range.start, count: 0 });
        }
        ensure_dir(&self.dir)?;
        while let Some((uid, checked)) = self.recent.pop() {
            let fresh = checked.elapsed() < ACCOUNT_CHECK_TTL;
            if !fresh || uid < range.start || uid > range.end() {
                continue; // forgotten: a later scan may find it again, checked anew
            }
            if let Some(lease) = self.try_take(uid, checked)? {
                return Ok(lease);
            }
        }
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos());
        let seed = std::process::id().wrapping_mul(2654435761).wrapping_add(nanos.unwrap_or(0));
        let first = seed % range.count;
        for i in 0..range.count {
            let uid = range.start + (first + i) % range.count;
            if uid == 0 || self.is_account(uid) {
                continue;
            }
            if let Some(lease) = self.try_take(uid, Instant::now())? {
                return Ok(lease);
            }
        }
        Err(IdError::Exhausted { start: range.start, count: range.count })
    }

    fn is_account(&self, uid: u32) -> bool {
        self.recent.checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        is_account(uid)
    }

    fn try_take(&self, uid: u32, checked: Instant) -> Result<Option<IdLease>, IdError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.join(uid.to_string());
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| IdError::Lock { path: path.clone(), source })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(IdLease { uid, lock: Some(lock), checked, recent: Some(self.recent.clone()) })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(IdError::Lock { path, source: e.into() }),
        }
    }
}

/// The lock directory: created 0700 (root's), and refused unless it is a real directory owned
/// by us and closed to others (another user could otherwise hold every id's lock). Missing
/// parents are made 0755: the default parent, /run/cellkeep, also holds the API socket, which
/// the `cellkeep` group must be able to reach (a 0700 parent locked its members out).
fn ensure_dir(dir: &Path) -> Result<(), IdError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let fail = |source| IdError::Dir { path: dir.to_owned(), source };
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        match std::fs::DirBuilder::new().recursive(true).mode(0o755).create(parent) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(IdError::Dir { path: parent.to_owned(), source: e }),
        }
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fail(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(fail)?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o022 != 0 {
        return Err(fail(std::io::Error::other("not a directory of ours closed to others")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lock dir is closed (0700), but a parent it creates is not: the default parent,
    /// /run/cellkeep, also holds the API socket its group must reach.
    #[test]
    fn the_lock_dir_is_closed_and_its_new_parent_open() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (parent, ids) = (dir.path().join("run-cellkeep"), dir.path().join("run-cellkeep/ids"));
        ensure_dir(&ids).unwrap_or_else(|e| panic!("{e}"));
        let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0);
        assert_eq!((mode(&parent), mode(&ids)), (0o755, 0o700));
        ensure_dir(&ids).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn ranges_clear_of_root_overflow_systemd_and_subordinate_ids() {
        let ok = |start, count| IdRange { start, count }.validate_against(&[("/etc/subuid".into(), 100000, 65536)]);
        assert!(ok(DEFAULT_ID_RANGE.start, DEFAULT_ID_RANGE.count).is_ok());
        assert!(ok(200_000, 1000).is_ok());
        for (start, count) in
            [(0, 10), (1, 0), (65000, 1000), (61000, 200), (150000, 10), (u32::MAX - 5, 6), (u32::MAX, 2)]
        {
            assert!(ok(start, count).is_err(), "[{start}, {count}] accepted");
        }
    }

    #[test]
    fn a_held_id_is_never_handed_out_twice() {
        if !nix::unistd::geteuid().is_root() {
            return; // account lookups and a lock dir of our own work as anyone, but keep it simple
        }
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let a = IdAllocator::new(IdRange { start: 1_900_100_000, count: 3 }, dir.path().join("ids"));
        let leases: Vec<IdLease> = (0..3).map(|_| a.allocate(None).unwrap_or_else(|e| panic!("{e}"))).collect();
        let mut uids: Vec<u32> = leases.iter().map(IdLease::uid).collect();
        uids.sort();
        assert_eq!(uids, vec![1_900_100_000, 1_900_100_001, 1_900_100_002]);
        assert!(matches!(a.allocate(None), Err(IdError::Exhausted { .. })));
        drop(leases);
        assert!(a.allocate(None).is_ok(), "a released id is free again");
    }

    #[test]
    fn a_released_id_is_reused_without_asking_nss_again() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let a = IdAllocator::new(IdRange { start: 1_900_200_000, count: 1000 }, dir.path().join("ids"));
        let checks = || a.recent.checks.load(std::sync::atomic::Ordering::Relaxed);
        let first = a.allocate(None).unwrap_or_else(|e| panic!("{e}"));
        let (uid, after_first) = (first.uid(), checks());
        assert!(after_first >= 1);
        drop(first);
        let again = a.allocate(None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((again.uid(), checks()), (uid, after_first), "the released id, no new NSS lookup");
        // Held elsewhere (another launcher's lock): the next free one, checked.
        let held = again;
        let other = a.allocate(None).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(other.uid(), held.uid());
        assert!(checks() > after_first);
        // A check older than the TTL is not trusted: the id is forgotten, a fresh one checked.
        drop(other);
        let stale = Instant::now().checked_sub(ACCOUNT_CHECK_TTL + Duration::from_secs(1));
        if let Some(stale) = stale {
            a.recent.ids.lock().unwrap_or_else(|e| panic!("{e}")).iter_mut().for_each(|e| e.1 = stale);
            let before = checks();
            let _fresh = a.allocate(None).unwrap_or_else(|e| panic!("{e}"));
            assert!(checks() > before, "a stale verdict is checked again");
        }
    }
}
