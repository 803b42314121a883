//! The cell's mount view: only what the policy grants exists (the bubblewrap/nsjail model;
//! Landlock stays as the second layer on the same paths).
//!
//! Planned on the launcher's side ([`plan_view`], host paths resolved there) and built by the
//! cell's pid 1 ([`build`]) in its own mount namespace:
//!
//! 1. `hold_sources`: every bind source is opened as an `O_PATH` fd first (paths under the cwd
//!    through no symlink, like the cwd itself), before anything hides them;
//! 2. `new_root`: a fresh tmpfs (mode 0755) on the host's `/tmp` of this namespace;
//! 3. `place`: the steps in path order, each under the new root: read paths read-only binds,
//!    write paths writable binds, exec paths the only mounts without `noexec`, every bind
//!    `nosuid,nodev`; the private tmp (a tmpfs, `noexec` unless `{tmp}` is executable); a
//!    minimal `/dev` (a directory of the root with the host's null, zero, full, random, urandom and tty nodes
//!    bound in, the cell's own terminal under `/dev/pts` and no other, no `/dev/ptmx`,
//!    `/dev/shm` → `/tmp`); a `/proc`
//!    of the cell's pid namespace;
//! 4. `pivot`: `pivot_root(".", ".")` into the new root and the old root detached;
//! 5. `seal_root`: the root tmpfs remounted read-only.
//!
//! Nothing else of the host (its `/run`, other workspaces, home directories) exists inside:
//! stat, connect, inotify and friends meet ENOENT. A failed step fails the launch (stage
//! `mounts`, with the errno), never a weaker view.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

use crate::policy::{PathRule, Policy};

/// Where the new root is assembled before the pivot.
const NEW_ROOT: &str = "/tmp";
/// Device nodes every cell gets (Landlock still decides which it may open).
const DEVICES: [&str; 6] = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"];

/// One mount point (or link) of the view, at `path` as seen inside the cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewStep {
    pub path: PathBuf,
    pub kind: StepKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum StepKind {
    /// A bind of the host's `source` (a directory or a file).
    Bind {
        source: PathBuf,
        dir: bool,
        writable: bool,
        exec: bool,
        no_follow: bool,
    },
    /// A host device node bound in (without `nodev`).
    Device {
        source: PathBuf,
    },
    Symlink {
        target: PathBuf,
    },
    /// The private tmp.
    Tmp {
        size: u64,
        exec: bool,
    },
    /// `/dev`: a directory of the (read-only) root, with `/dev/pts` holding only the cell's own
    /// terminal (if any).
    Dev,
    /// `/proc` of the cell's pid namespace (`own`), or the host's bound (no pid namespace).
    Proc {
        own: bool,
    },
}

/// The whole view, in mount order (parents before what lies beneath them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewPlan {
    pub steps: Vec<ViewStep>,
}

fn expanded(rule: &PathRule, cwd: &Path) -> Option<PathBuf> {
    match rule {
        PathRule::Absolute(p) => Some(p.clone()),
        PathRule::Cwd(rest) => Some(cwd.join(rest)),
        PathRule::Tmp(_) => None,
    }
}

/// The view `policy` grants a cell working in `cwd` (canonical). Host paths that do not exist
/// are left out (as Landlock skips them). `None`: the part that does not depend on the cwd,
/// for a cell built before its request (`{cwd}` rules and the cwd itself left out).
pub fn plan_view(policy: &Policy, cwd: Option<&Path>, own_pid_ns: bool, tmp_size: u64) -> ViewPlan {
    let fs = &policy.filesystem;
    let list = |rules: &[PathRule]| {
        rules
            .iter()
            .filter_map(|r| match (r, cwd) {
                (_, Some(c)) => expanded(r, c),
                (PathRule::Absolute(p), None) => Some(p.clone()),
                (_, None) => None,
            })
            .collect::<Vec<_>>()
    };
    let (read, write, exec) = (list(&fs.read), list(&fs.write), list(&fs.exec));
    let covered = |set: &[PathBuf], p: &Path| set.iter().any(|a| p.starts_with(a));
    let tmp_exec = fs.exec.iter().any(|r| matches!(r, PathRule::Tmp(rest) if rest.as_os_str().is_empty()));
    let mut steps = vec![
        ViewStep { path: NEW_ROOT.into(), kind: StepKind::Tmp { size: tmp_size, exec: tmp_exec } },
        ViewStep { path: "/proc".into(), kind: StepKind::Proc { own: own_pid_ns } },
        ViewStep { path: "/dev".into(), kind: StepKind::Dev },
    ];
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/shm", "/tmp"),
    ] {
        steps.push(ViewStep { path: link.into(), kind: StepKind::Symlink { target: target.into() } });
    }
    let mut candidates: Vec<PathBuf> = read.iter().chain(&write).chain(&exec).cloned().collect();
    candidates.extend(cwd.map(Path::to_owned));
    candidates.sort();
    candidates.dedup();
    let special = ["/dev/pts", "/dev/shm", "/dev/ptmx", "/dev/fd"];
    let mut devices: Vec<PathBuf> = DEVICES.iter().map(PathBuf::from).collect();
    let mut placed: Vec<(PathBuf, bool, bool)> = Vec::new();
    for p in &candidates {
        if p.starts_with("/proc") || p == Path::new("/dev") || special.iter().any(|s| p.starts_with(s)) {
            continue;
        }
        if p.starts_with("/dev") {
            devices.push(p.clone());
            continue;
        }
        let under_cwd = cwd.is_some_and(|c| p.starts_with(c));
        if p.starts_with(NEW_ROOT) && !under_cwd {
            continue; // hidden by the private tmp
        }
        let (w, x) = (covered(&write, p), covered(&exec, p));
        // Already visible with the same rights through a bind of a parent.
        if placed.iter().any(|(a, aw, ax)| p.starts_with(a) && (*aw, *ax) == (w, x)) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(p) else { continue };
        let kind = if under_cwd {
            if meta.file_type().is_symlink() {
                continue; // never followed; Landlock refuses it by name
            }
            StepKind::Bind { source: p.clone(), dir: meta.is_dir(), writable: w, exec: x, no_follow: true }
        } else if meta.file_type().is_symlink() {
            let (Ok(canonical), Ok(target)) = (std::fs::canonicalize(p), std::fs::read_link(p)) else { continue };
            if candidates.iter().any(|c| c != p && canonical.starts_with(c)) {
                StepKind::Symlink { target }
            } else {
                let dir = canonical.is_dir();
                StepKind::Bind { source: canonical, dir, writable: w, exec: x, no_follow: false }
            }
        } else {
            StepKind::Bind { source: p.clone(), dir: meta.is_dir(), writable: w, exec: x, no_follow: false }
        };
        if matches!(kind, StepKind::Bind { .. }) {
            placed.push((p.clone(), w, x));
        }
        steps.push(ViewStep { path: p.clone(), kind });
    }
    devices.sort();
    devices.dedup();
    for d in devices {
        if std::fs::canonicalize(&d).is_ok() {
            steps.push(ViewStep { path: d.clone(), kind: StepKind::Device { source: d } });
        }
    }
    steps.sort_by(|a, b| a.path.cmp(&b.path));
    ViewPlan { steps }
}

impl ViewPlan {
    /// One line per step, for `policy show` and `doctor`.
    pub fn describe(&self) -> Vec<String> {
        self.steps
            .iter()
            .map(|s| {
                let p = s.path.display();
                match &s.kind {
                    StepKind::Bind { source, writable, exec, .. } => {
                        let mode = if *writable { "rw" } else { "ro" };
                        let x = if *exec { "exec" } else { "noexec" };
                        if source == &s.path {
                            format!("{p}  bind {mode},{x},nosuid,nodev")
                        } else {
                            format!("{p}  bind of {} {mode},{x},nosuid,nodev", source.display())
                        }
                    }
                    StepKind::Device { .. } => format!("{p}  host device node"),
                    StepKind::Symlink { target } => format!("{p}  -> {}", target.display()),
                    StepKind::Tmp { size, exec } => {
                        format!("{p}  private tmpfs {size} bytes, {}", if *exec { "exec" } else { "noexec" })
                    }
                    StepKind::Dev => {
                        format!("{p}  read-only, the device nodes below; /dev/pts: the cell's own terminal only")
                    }
                    StepKind::Proc { own: true } => format!("{p}  proc of the cell's pid namespace"),
                    StepKind::Proc { own: false } => format!("{p}  the host's proc (no pid namespace)"),
                }
            })
            .collect()
    }
}

/// The view of `policy` as `policy show` and `doctor` print it: the host part as planned here,
/// the `{cwd}` paths by their rules (they depend on the caller's workspace).
pub fn describe_policy(policy: &Policy) -> Vec<String> {
    let placeholder = Path::new("/{cwd}");
    let ns = super::plan::namespaces(policy);
    let mut lines = plan_view(policy, Some(placeholder), ns.pid, policy.limits.tmp_size).describe();
    let fs = &policy.filesystem;
    let list = |rules: &[PathRule]| rules.iter().filter_map(|r| expanded(r, placeholder)).collect::<Vec<_>>();
    let (read, write, exec) = (list(&fs.read), list(&fs.write), list(&fs.exec));
    let mut cwd_paths: Vec<&PathBuf> =
        read.iter().chain(&write).chain(&exec).filter(|p| p.starts_with(placeholder)).collect();
    cwd_paths.sort();
    cwd_paths.dedup();
    for p in cwd_paths {
        let w = write.iter().any(|a| p.starts_with(a));
        let x = exec.iter().any(|a| p.starts_with(a));
        let shown = p.to_string_lossy().trim_start_matches('/').trim_end_matches('/').to_owned();
        lines.push(format!(
            "{shown}  bind {},{},nosuid,nodev (no symlinks followed)",
            if w { "rw" } else { "ro" },
            if x { "exec" } else { "noexec" }
        ));
    }
    if !lines.iter().any(|l| l.starts_with("{cwd}  ")) {
        lines.push("{cwd}  bind ro,noexec,nosuid,nodev (the cell's cwd, always present)".into());
    }
    lines
}

/// A failed step of [`build`]: what, and the errno.
#[derive(Debug)]
pub struct ViewError {
    pub what: String,
    pub errno: i32,
}

fn fail<T>(what: impl Into<String>, r: Result<T, Errno>) -> Result<T, ViewError> {
    r.map_err(|e| ViewError { what: format!("{}: {e}", what.into()), errno: e as i32 })
}

fn io_fail<T>(what: impl Into<String>, r: std::io::Result<T>) -> Result<T, ViewError> {
    r.map_err(|e| ViewError { what: format!("{}: {e}", what.into()), errno: e.raw_os_error().unwrap_or(0) })
}

/// Inodes of the private tmpfs: one per 4 KiB of its size (at least 1024). Without a cap the
/// kernel default (about one per page of RAM) lets a file flood run the cell into its memory
/// limit (an OOM kill) instead of failing cleanly with ENOSPC.
fn tmp_inodes(size: u64) -> u64 {
    (size / 4096).max(1024)
}

/// Build the view in the calling process's (pid 1's) mount namespace and pivot into it.
/// `uid`/`gid`: the cell's ids inside, owners of the private tmp. `idmapped`: the workspace's
/// binds (the cwd and the rules beneath it) as idmapped detached mounts made by the helper with
/// their flags set, by path: attached with `move_mount` in place of those plain binds.
pub fn build(view: &ViewPlan, uid: u32, gid: u32, idmapped: &[(PathBuf, OwnedFd)]) -> Result<(), ViewError> {
    assemble(&view.steps, uid, gid, idmapped)?;
    seal_root()
}

/// A cell built before its request: the new root with the steps of `base` (the view without
/// the cwd, [`plan_view`] with `None`), pivoted into — the host's tree is detached here, off
/// the request's path (its unmount waits for an RCU grace period) — and left writable;
/// [`finish`] adds the rest and seals it.
pub fn build_base(base: &ViewPlan, uid: u32, gid: u32) -> Result<(), ViewError> {
    assemble(&base.steps, uid, gid, &[])
}

/// The sources held, a new root with `steps` placed in it, pivoted into (not sealed).
fn assemble(steps: &[ViewStep], uid: u32, gid: u32, idmapped: &[(PathBuf, OwnedFd)]) -> Result<(), ViewError> {
    let sources = hold_sources(steps, idmapped)?;
    new_root(uid, gid)?;
    place_all(steps, &sources, uid, gid, idmapped, Path::new(NEW_ROOT))?;
    pivot()
}

/// At the request, in the pivoted root: the steps of `full` that `base` lacks (the cwd and
/// what depends on it), then the seal, as [`build`] ends. [`fits`] said they can go on top.
/// Their binds come as detached mounts (`mounts`, by path) made by the helper outside the
/// cell: the host's paths are out of pid 1's reach by now.
pub fn finish(
    full: &ViewPlan,
    base: &ViewPlan,
    uid: u32,
    gid: u32,
    mounts: &[(PathBuf, OwnedFd)],
) -> Result<(), ViewError> {
    let extra = added_steps(base, full);
    if let Some(s) = extra.iter().find(|s| {
        matches!(s.kind, StepKind::Bind { .. } | StepKind::Device { .. }) && !mounts.iter().any(|(p, _)| p == &s.path)
    }) {
        return Err(ViewError { what: format!("no mount handed over for {}", s.path.display()), errno: libc::ENOENT });
    }
    let sources: Vec<Option<OwnedFd>> = extra.iter().map(|_| None).collect();
    place_all(&extra, &sources, uid, gid, mounts, Path::new("/"))?;
    seal_root()
}

/// Can a cell whose view was built from `base` take a request whose view is `full`? Every
/// step of `base` must be in `full`, and none of the rest may lie above one of them (it would
/// be mounted over it, out of order). `Err`: why not (the request is launched cold).
pub fn fits(base: &ViewPlan, full: &ViewPlan) -> Result<(), String> {
    if let Some(s) = base.steps.iter().find(|s| !full.steps.contains(s)) {
        return Err(format!("{} is mounted differently for this cwd", s.path.display()));
    }
    for e in added_steps(base, full) {
        if let Some(b) = base.steps.iter().find(|b| b.path.starts_with(&e.path)) {
            return Err(format!("{} would cover {}", e.path.display(), b.path.display()));
        }
    }
    Ok(())
}

/// The steps of `full` a cell built with `base` has not made.
pub fn added_steps(base: &ViewPlan, full: &ViewPlan) -> Vec<ViewStep> {
    full.steps.iter().filter(|s| !base.steps.contains(s)).cloned().collect()
}

/// Place `steps` under `root` (the new root before the pivot, `/` after it).
fn place_all(
    steps: &[ViewStep],
    sources: &[Option<OwnedFd>],
    uid: u32,
    gid: u32,
    idmapped: &[(PathBuf, OwnedFd)],
    root: &Path,
) -> Result<(), ViewError> {
    for (step, fd) in steps.iter().zip(sources) {
        let mnt = idmapped.iter().find(|(p, _)| p == &step.path).map(|(_, m)| m);
        match (mnt, &step.kind) {
            (Some(mnt), StepKind::Bind { dir, .. }) => {
                let target = under(root, &step.path);
                make_point(&target, *dir)?;
                io_fail(
                    format!("attaching the idmapped workspace at {}", step.path.display()),
                    super::sys::move_mount_to(mnt, &target),
                )?;
            }
            _ => place(step, fd.as_ref(), uid, gid, root)?,
        }
    }
    Ok(())
}

/// An `O_PATH` fd of each step's source (none for steps without one, or with a detached mount
/// in `mounted`).
fn hold_sources(steps: &[ViewStep], mounted: &[(PathBuf, OwnedFd)]) -> Result<Vec<Option<OwnedFd>>, ViewError> {
    use nix::fcntl::OFlag;
    steps
        .iter()
        .map(|s| match &s.kind {
            _ if mounted.iter().any(|(p, _)| p == &s.path) => Ok(None),
            StepKind::Bind { source, dir, no_follow: true, .. } => fail(
                format!("opening {} (no symlinks followed)", source.display()),
                super::sys::open_no_symlinks(source, *dir),
            )
            .map(Some),
            StepKind::Bind { source, .. } | StepKind::Device { source } => fail(
                format!("opening {}", source.display()),
                nix::fcntl::open(source.as_path(), OFlag::O_PATH | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty()),
            )
            .map(Some),
            _ => Ok(None),
        })
        .collect()
}

fn new_root(uid: u32, gid: u32) -> Result<(), ViewError> {
    let opts = format!("mode=0755,size=1m,nr_inodes=4096,uid={uid},gid={gid}");
    fail(
        "mounting the new root (tmpfs)",
        mount(Some("cellroot"), NEW_ROOT, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(opts.as_str())),
    )
}

/// `path` of the cell's view, under `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn make_point(target: &Path, dir: bool) -> Result<(), ViewError> {
    if std::fs::symlink_metadata(target).is_ok() {
        return Ok(());
    }
    if dir {
        return io_fail(format!("creating {}", target.display()), std::fs::create_dir_all(target));
    }
    if let Some(parent) = target.parent() {
        io_fail(format!("creating {}", parent.display()), std::fs::create_dir_all(parent))?;
    }
    io_fail(format!("creating {}", target.display()), std::fs::File::create(target).map(drop))
}

/// The flags a bind must keep from its source mount (the kernel refuses to clear flags locked
/// by a less privileged mount namespace's owner).
fn kept_flags(target: &Path) -> MsFlags {
    use nix::sys::statvfs::FsFlags;
    let Ok(st) = nix::sys::statvfs::statvfs(target) else { return MsFlags::empty() };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (st_flag, ms) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(st_flag) {
            out |= ms;
        }
    }
    out
}

/// `whole`: a source with locked mounts beneath it may be bound with them (a system
/// directory); otherwise (the workspace) such a source is refused: the mounts beneath a
/// workspace (a chroot's `proc` and `dev`) are the host's, with the host's flags.
fn bind(fd: &OwnedFd, target: &Path, flags: MsFlags, whole: bool) -> Result<(), ViewError> {
    let none: Option<&str> = None;
    let src = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let what = format!("binding {}", target.display());
    // Not recursive where the kernel allows it (nothing mounted beneath comes along); a source
    // with locked mounts beneath it can only be bound whole.
    match mount(Some(src.as_str()), target, none, MsFlags::MS_BIND, none) {
        Err(Errno::EINVAL) if whole => {
            fail(&what, mount(Some(src.as_str()), target, none, MsFlags::MS_BIND | MsFlags::MS_REC, none))?
        }
        Err(Errno::EINVAL) => {
            return Err(ViewError {
                what: format!(
                    "{what}: the workspace holds mounts of its own, which a cell does not take in (on this kernel, \
                     before the mount API of Linux 5.12, the workspace can only be bound with them)"
                ),
                errno: Errno::EINVAL as i32,
            })
        }
        other => fail(&what, other)?,
    }
    let flags = flags | kept_flags(target) | MsFlags::MS_REMOUNT | MsFlags::MS_BIND;
    fail(format!("remounting {} ({flags:?})", target.display()), mount(none, target, none, flags, none))
}

fn place(step: &ViewStep, fd: Option<&OwnedFd>, uid: u32, gid: u32, root: &Path) -> Result<(), ViewError> {
    let none: Option<&str> = None;
    let target = under(root, &step.path);
    let held = || fd.ok_or_else(|| ViewError { what: format!("no source held for {}", step.path.display()), errno: 0 });
    match &step.kind {
        StepKind::Bind { dir, writable, exec, no_follow, .. } => {
            make_point(&target, *dir)?;
            let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            if !writable {
                flags |= MsFlags::MS_RDONLY;
            }
            if !exec {
                flags |= MsFlags::MS_NOEXEC;
            }
            // The workspace (opened through no symlink) is never bound whole.
            bind(held()?, &target, flags, !no_follow)
        }
        StepKind::Device { .. } => {
            make_point(&target, false)?;
            // No remount: a device node can be neither executed nor setuid, so the bind's
            // flags do not matter (and `nodev` must stay off).
            let src = format!("/proc/self/fd/{}", held()?.as_raw_fd());
            fail(
                format!("binding {}", target.display()),
                mount(Some(src.as_str()), &target, none, MsFlags::MS_BIND, none),
            )
        }
        StepKind::Symlink { target: to } => {
            if let Some(parent) = target.parent() {
                io_fail(format!("creating {}", parent.display()), std::fs::create_dir_all(parent))?;
            }
            io_fail(format!("linking {}", step.path.display()), std::os::unix::fs::symlink(to, &target))
        }
        StepKind::Tmp { size, exec } => {
            make_point(&target, true)?;
            let opts = format!("size={size},nr_inodes={},mode=0700,uid={uid},gid={gid}", tmp_inodes(*size));
            let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            if !exec {
                flags |= MsFlags::MS_NOEXEC;
            }
            fail("mounting the private tmpfs", mount(Some("tmpfs"), &target, Some("tmpfs"), flags, Some(opts.as_str())))
        }
        StepKind::Dev => {
            // A directory of the root tmpfs (read-only once sealed): no superblock of its own.
            make_point(&target, true)?;
            make_point(&target.join("pts"), true)?;
            // The cell's terminal (the pty slave on stdin, from the launcher's devpts), at the
            // name it has on the host, so ttyname(3) finds it. No other pty, no ptmx.
            let Ok(name) = nix::unistd::ttyname(std::io::stdin()) else { return Ok(()) };
            if !name.starts_with("/dev/pts/") || name.components().count() != 4 {
                return Ok(());
            }
            let point = under(root, &name);
            make_point(&point, false)?;
            // By its name in this namespace's copy of the host's /dev (an fd opened in another
            // mount namespace cannot be bound), checked to be the very same terminal.
            use nix::fcntl::OFlag;
            let node = nix::fcntl::open(
                name.as_path(),
                OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
                nix::sys::stat::Mode::empty(),
            );
            let node = fail(format!("opening {}", name.display()), node)?;
            let (ours, theirs) = (nix::sys::stat::fstat(std::io::stdin()), nix::sys::stat::fstat(&node));
            let same = matches!((ours, theirs), (Ok(a), Ok(b)) if a.st_rdev == b.st_rdev && a.st_dev == b.st_dev && a.st_ino == b.st_ino);
            if !same {
                return Err(ViewError {
                    what: format!("{} is not the cell's terminal", name.display()),
                    errno: libc::EXDEV,
                });
            }
            bind(&node, &point, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, true)
        }
        StepKind::Proc { own: true } => {
            make_point(&target, true)?;
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            fail("mounting /proc for the cell's pid namespace", mount(Some("proc"), &target, Some("proc"), flags, none))
        }
        StepKind::Proc { own: false } => {
            make_point(&target, true)?;
            let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
            fail("binding the host's /proc", mount(Some("/proc"), &target, none, flags, none))
        }
    }
}

fn pivot() -> Result<(), ViewError> {
    fail("chdir to the new root", nix::unistd::chdir(NEW_ROOT))?;
    fail("pivot_root(\".\", \".\")", nix::unistd::pivot_root(".", "."))?;
    fail("detaching the old root", umount2(".", MntFlags::MNT_DETACH))?;
    fail("chdir /", nix::unistd::chdir("/"))
}

fn seal_root() -> Result<(), ViewError> {
    let none: Option<&str> = None;
    let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    fail("remounting the root read-only", mount(none, "/", none, flags, none))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base_policy() -> Policy {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/base.toml");
        std::fs::copy(base, dir.path().join("base.toml")).unwrap_or_else(|e| panic!("{e}"));
        let text = "extends = \"base\"\n[provider]\nname = \"p\"\ncommand = [\"/bin/true\"]\n";
        std::fs::write(dir.path().join("p.toml"), text).unwrap_or_else(|e| panic!("{e}"));
        crate::policy::load_file(&dir.path().join("p.toml")).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn base_view_holds_only_its_grants() {
        let ws = tempfile::tempdir_in("/var/tmp").unwrap_or_else(|e| panic!("{e}"));
        let view = plan_view(&base_policy(), Some(ws.path()), true, 1 << 20);
        let at = |p: &str| view.steps.iter().find(|s| s.path == Path::new(p)).map(|s| s.kind.clone());
        assert!(matches!(at("/tmp"), Some(StepKind::Tmp { exec: false, .. })), "{view:?}");
        assert!(matches!(at("/usr"), Some(StepKind::Bind { writable: false, exec: true, .. })), "{view:?}");
        assert!(matches!(at("/etc"), Some(StepKind::Bind { writable: false, exec: false, .. })), "{view:?}");
        let cwd = ws.path().to_str().unwrap_or_default();
        assert!(
            matches!(at(cwd), Some(StepKind::Bind { writable: true, exec: false, no_follow: true, .. })),
            "{view:?}"
        );
        assert!(matches!(at("/dev/null"), Some(StepKind::Device { .. })), "{view:?}");
        for hidden in ["/home", "/run", "/var", "/root", "/sys", "/srv"] {
            assert!(
                !view.steps.iter().any(|s| s.path.starts_with(hidden) && !s.path.starts_with(ws.path())),
                "{hidden}: {view:?}"
            );
        }
        // Parents come before what lies beneath them.
        let paths: Vec<&PathBuf> = view.steps.iter().map(|s| &s.path).collect();
        assert!(paths.windows(2).all(|w| w[0] <= w[1]), "{paths:?}");
    }

    // A pre-built cell's view (no cwd) takes a workspace's binds on top; a cwd that would be
    // mounted over one of its binds, or that changes how one is bound, does not fit.
    #[test]
    fn a_prebuilt_view_fits_a_workspace_only_on_top_of_it() {
        let policy = base_policy();
        let base = plan_view(&policy, None, true, 1 << 20);
        assert!(!base.steps.is_empty());
        let ws = tempfile::tempdir_in("/var/tmp").unwrap_or_else(|e| panic!("{e}"));
        let full = plan_view(&policy, Some(ws.path()), true, 1 << 20);
        assert_eq!(fits(&base, &full), Ok(()));
        let added = added_steps(&base, &full);
        assert!(added.iter().all(|s| s.path.starts_with(ws.path())), "{added:?}");
        // The cwd /usr would cover the view's /usr bind (and binds beneath it).
        let over = plan_view(&policy, Some(Path::new("/usr")), true, 1 << 20);
        assert!(fits(&base, &over).is_err(), "{over:?}");
    }
}
