//! The only file with `unsafe`: thin wrappers over syscalls that nix, caps and landlock do not
//! cover (or cover in a way we cannot use). Each block states the syscall contract it relies on.
//!
//! Everything here is called from the single-threaded cell helper (and its children), except
//! [`async_fd`], which the daemon uses, the peer checks ([`peer_groups`], [`peer_pidfd`],
//! [`pidfd_open`], [`pidfd_alive`]) behind the API's authorisation, and
//! [`take_activated_listener`] (socket activation, before the runtime starts), and
//! [`default_sigpipe`] (the CLI's client commands, at start). Functions whose
//! soundness depends on the caller are either `unsafe fn` with a `# Safety` section
//! ([`take_helper_fd`]) or check their precondition at runtime ([`fork_single_threaded`] and
//! [`clone_into_namespaces`] refuse unless the process is single-threaded).
//!
//! Nothing here runs between fork and exec in the daemon: the launcher spawns the helper
//! without `pre_exec` (see `launch.rs`). The pty calls [`open_pty_peer`] and
//! [`set_window_size`] run in the launcher before the spawn (ordinary async-side code, not
//! between fork and exec). [`with_fs_identity`] runs a closure on a fresh thread of the daemon
//! whose filesystem credentials are a caller's.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use nix::sched::CloneFlags;
use nix::unistd::Pid;

/// Restore SIGPIPE's default action (terminate), which Rust's runtime sets to ignored: for the
/// CLI's client commands, so `cellkeep ps | head -3` ends quietly when `head` exits, as every
/// Unix filter does, instead of panicking on EPIPE from `println!`. Not for the daemon or
/// `run`, which must outlive a closed stdout to clean up their cells.
pub fn default_sigpipe() {
    // SAFETY: signal(2) only sets the disposition of SIGPIPE, which no other code of this
    // process installs a handler for; SIG_DFL carries no function pointer.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Every signal's disposition back to SIG_DFL (SIGKILL and SIGSTOP cannot change), for the
/// payload just before exec. execve(2) resets handlers but keeps *ignored* signals ignored,
/// and every cellkeep process starts with SIGPIPE ignored (Rust's runtime), plus whatever its
/// own parent ignored (SIGINT and SIGQUIT under a shell's background job, SIGHUP under
/// `nohup`): without this a cell's `yes | head -1` wrote "Broken pipe" until its wall time.
/// The raw system call, not glibc's `sigaction`, which refuses the two real-time signals it
/// keeps for itself (32 and 33) and would leave them ignored. Errors (EINVAL for SIGKILL,
/// SIGSTOP) are ignored: there is nothing to reset.
pub fn default_signal_dispositions() {
    // The kernel's `struct sigaction` on x86_64 and arm64: handler, flags, restorer, mask
    // (a 64-bit sigset). All zero: SIG_DFL, no flags, an empty mask.
    let act = [0u64; 4];
    for sig in 1..=64 {
        // SAFETY: rt_sigaction(2) reads `act` (32 bytes, valid for the call) as the new
        // action, with sigsetsize 8; no old action is written (NULL). The handler is SIG_DFL,
        // so no code of ours is ever called. The caller is single-threaded (the payload
        // between fork and exec).
        unsafe {
            libc::syscall(libc::SYS_rt_sigaction, sig, act.as_ptr(), std::ptr::null_mut::<u64>(), 8usize);
        }
    }
}

/// The object at `path` reached through no symbolic link (nor /proc magic link) in any
/// component, as an `O_PATH | O_CLOEXEC [| O_DIRECTORY]` fd; ELOOP when a component is a link.
/// Used for paths a cell's owner can change (the cwd and rules beneath it): the daemon checked
/// them canonical (symlink-free) inside the workdir roots, and a symlink planted or swapped in
/// since then must not redirect a chdir or a Landlock grant.
///
/// First `openat2(AT_FDCWD, path, how = {flags, RESOLVE_NO_SYMLINKS})` (Linux >= 5.6, in one
/// syscall). When that syscall is unavailable — ENOSYS from an old kernel or, more often, from
/// a seccomp filter that cannot inspect `struct open_how` and refuses `openat2` wholesale
/// (systemd's `RestrictSUIDSGID=`, container runtimes) — or EPERM from such a filter, the
/// same guarantee comes from [`open_no_symlinks_walk`]. (Safe code: nix wraps both syscalls.)
pub fn open_no_symlinks(path: &std::path::Path, directory: bool) -> nix::Result<OwnedFd> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    let mut flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
    if directory {
        flags |= OFlag::O_DIRECTORY;
    }
    let how = OpenHow::new().flags(flags).resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
    match nix::fcntl::openat2(nix::fcntl::AT_FDCWD, path, how) {
        Err(nix::errno::Errno::ENOSYS | nix::errno::Errno::EPERM) => open_no_symlinks_walk(path, directory),
        other => other,
    }
}

/// The fallback of [`open_no_symlinks`] without `openat2`: a component-by-component walk with
/// `openat(dir_fd, component, O_PATH | O_NOFOLLOW | O_CLOEXEC)`, starting at `/` (or the cwd for
/// a relative path). `O_PATH | O_NOFOLLOW` opens a symlink itself instead of following it, so
/// each fd is `fstat`ed: a link (plain or /proc magic) fails with ELOOP, a non-directory before
/// the last component with ENOTDIR. Each step is relative to the fd of the directory already
/// reached, so swapping a component for a link after it was checked redirects nothing. `..`
/// components are refused (EXDEV: the callers' paths are canonical, so one means tampering)
/// and `.` and empty components are skipped.
pub fn open_no_symlinks_walk(path: &std::path::Path, directory: bool) -> nix::Result<OwnedFd> {
    use nix::errno::Errno;
    use nix::fcntl::OFlag;
    use nix::sys::stat::{fstat, Mode, SFlag};
    use std::path::Component;
    let step = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let start = if path.is_absolute() { "/" } else { "." };
    let mut fd = nix::fcntl::open(start, step | OFlag::O_DIRECTORY, Mode::empty())?;
    let names: Vec<&std::ffi::OsStr> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(Ok(n)),
            Component::ParentDir => Some(Err(Errno::EXDEV)),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect::<Result<_, _>>()?;
    for (i, name) in names.iter().enumerate() {
        let next = nix::fcntl::openat(&fd, *name, step, Mode::empty())?;
        let kind = SFlag::from_bits_truncate(fstat(&next)?.st_mode) & SFlag::S_IFMT;
        let last = i + 1 == names.len();
        if kind == SFlag::S_IFLNK {
            return Err(Errno::ELOOP);
        }
        if kind != SFlag::S_IFDIR && (!last || directory) {
            return Err(Errno::ENOTDIR);
        }
        fd = next;
    }
    Ok(fd)
}

/// The number of threads of the calling process: the entries of `/proc/self/task`.
fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// The runtime half of the single-threaded contract of [`clone_into_namespaces`] and
/// [`fork_single_threaded`]: `Ok` only when this process has exactly one thread (the caller).
/// No other thread exists that could start one between the check and the syscall, so the
/// answer still holds when the syscall runs. EDEADLK ("resource deadlock would occur": a lock
/// held by another thread would be copied held into the child) otherwise, and when
/// `/proc/self/task` cannot be read (fail closed).
pub fn ensure_single_threaded() -> nix::Result<()> {
    match thread_count() {
        Ok(1) => Ok(()),
        _ => Err(nix::errno::Errno::EDEADLK),
    }
}

/// Start `child` in new namespaces with `clone(2)`, on a freshly allocated stack.
///
/// Sound to call from anywhere: it refuses (EDEADLK) unless the calling process is
/// single-threaded (checked at runtime, [`ensure_single_threaded`]), which is what lets the
/// child allocate — no other thread's locks can have been copied in a held state. Callers are
/// the helper, a fresh single-threaded process; in the tokio daemon it always fails.
pub(crate) fn clone_into_namespaces(flags: CloneFlags, child: Box<dyn FnMut() -> isize + '_>) -> nix::Result<Pid> {
    ensure_single_threaded()?;
    // 1 MiB is far more than the init recipe needs (no recursion, small frames). A fresh
    // anonymous mapping, not a zeroed heap buffer: its pages exist only once touched (a few
    // KiB), where `vec![0; 1 MiB]` from a reused heap was memset and faulted in whole — 5 %
    // of the CPU of a busy daemon, for the three clones of every cell.
    const STACK: usize = 1 << 20;
    let len = std::num::NonZeroUsize::new(STACK).ok_or(nix::errno::Errno::EINVAL)?;
    use nix::sys::mman::{MapFlags, ProtFlags};
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing: it
    // aliases nothing of ours.
    let map = unsafe {
        nix::sys::mman::mmap_anonymous(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_PRIVATE | MapFlags::MAP_STACK | MapFlags::MAP_NORESERVE,
        )
    }?;
    // SAFETY: the mapping is STACK bytes, readable and writable, zero-filled by the kernel
    // (so valid u8s), ours alone until the munmap below, and the slice does not outlive it.
    let stack = unsafe { std::slice::from_raw_parts_mut(map.as_ptr().cast::<u8>(), STACK) };
    // SAFETY: nix::sched::clone requires that the child does not overflow `stack` (it runs
    // the bounded init recipe) and that the process is single-threaded or the child only
    // makes async-signal-safe calls (single-threaded: checked just above, and no other thread
    // exists that could start one since). SIGCHLD makes the child waitable with waitpid(2)
    // like a forked one. The child gets its own copy of the address space (no CLONE_VM), so
    // the parent may unmap its stack as soon as clone returns.
    let cloned = unsafe { nix::sched::clone(child, stack, flags, Some(libc::SIGCHLD)) };
    // SAFETY: the mapping made above, no longer referenced (`stack` is not used again).
    let _ = unsafe { nix::sys::mman::munmap(map, STACK) };
    cloned
}

/// Which step of [`with_effective_ids`] failed, and how.
#[derive(Debug, thiserror::Error)]
#[error("{step} (uid {uid}, gid {gid}): {errno}")]
pub struct EffectiveIdsError {
    pub step: &'static str,
    pub uid: u32,
    pub gid: u32,
    pub errno: nix::Error,
}

fn set_res(nr: libc::c_long, effective: u32) -> nix::Result<()> {
    let keep = u32::MAX; // (uid_t) -1: leave the real and saved ids as they are
                         // SAFETY: setresuid(2)/setresgid(2) take three ids by value and touch no memory of ours;
                         // the raw syscall changes the calling thread's credentials only, which is the whole
                         // process here (the caller checked it is single-threaded).
    let rc = unsafe { libc::syscall(nr, keep, effective, keep) };
    nix::errno::Errno::result(rc).map(drop)
}

/// Run `f` with the effective (and with it the filesystem) uid and gid set to `uid`/`gid`,
/// the real and saved ids left root, then take back euid/egid 0 (allowed: the saved uid is
/// 0). A user namespace created inside `f` is owned by `uid` and the kernel charges its
/// budgets (pending signals, inotify instances, user namespaces: ucounts) to `uid`, not root.
/// Effective capabilities are cleared while the euid is not 0 and restored from the
/// permitted set after.
///
/// Sound and correct only in a single-threaded process (the raw syscalls change one
/// thread's credentials): refuses with EDEADLK otherwise. An error from the restore means the
/// caller is left with the cell's effective ids and must give up (the helper does).
pub(crate) fn with_effective_ids<T>(uid: u32, gid: u32, f: impl FnOnce() -> T) -> Result<T, EffectiveIdsError> {
    let err = |step, errno| EffectiveIdsError { step, uid, gid, errno };
    ensure_single_threaded().map_err(|e| err("checking the process is single-threaded", e))?;
    set_res(libc::SYS_setresgid, gid).map_err(|e| err("setresgid(-1, gid, -1)", e))?;
    if let Err(e) = set_res(libc::SYS_setresuid, uid) {
        let _ = set_res(libc::SYS_setresgid, 0);
        return Err(err("setresuid(-1, uid, -1)", e));
    }
    if nix::unistd::geteuid().as_raw() != uid || nix::unistd::getegid().as_raw() != gid {
        return Err(err("checking the effective ids", nix::Error::EPERM));
    }
    let out = f();
    set_res(libc::SYS_setresuid, 0).map_err(|e| err("restoring euid 0", e))?;
    set_res(libc::SYS_setresgid, 0).map_err(|e| err("restoring egid 0", e))?;
    if !nix::unistd::geteuid().is_root() || nix::unistd::getegid().as_raw() != 0 {
        return Err(err("checking euid/egid 0 are back", nix::Error::EPERM));
    }
    // A change of the effective uid made the process non-dumpable (fs.suid_dumpable): back as
    // it was, so its /proc files stay readable to its root parent without CAP_SYS_PTRACE
    // (which systemd's unit does not grant). Children cloned inside `f` stay non-dumpable:
    // their /proc files belong to root, not to the cell's uid.
    nix::sys::prctl::set_dumpable(true).map_err(|e| err("prctl(PR_SET_DUMPABLE, 1) as root again", e))?;
    Ok(out)
}

/// One fd sent over `sock` with SCM_RIGHTS (and one byte of data).
pub(crate) fn receive_fd(sock: &OwnedFd) -> std::io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let (_, mut fds) = receive_fds::<1>(sock, &mut byte)?;
    fds.pop().ok_or_else(|| std::io::Error::other("no fd arrived (the holder ended first)"))
}

/// One message of at most `buf.len()` bytes and `N` fds (SCM_RIGHTS, installed close-on-exec)
/// from `sock`: the byte count (0 = end of stream) and the fds, owned.
pub(crate) fn receive_fds<const N: usize>(sock: &impl AsFd, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; N]);
    let msg = nix::sys::socket::recvmsg::<()>(
        sock.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut owned = Vec::with_capacity(N);
    for cmsg in msg.cmsgs()? {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: SCM_RIGHTS installed these fds in our table just now (close-on-exec);
            // nothing else knows their numbers, so this is their only owner.
            owned.extend(fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    Ok((msg.bytes, owned))
}

/// Send `data` and `fds` (SCM_RIGHTS) as one message on `sock`.
pub(crate) fn send_fds(sock: &impl AsFd, data: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let iov = [std::io::IoSlice::new(data)];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(fds)];
    let cmsgs: &[nix::sys::socket::ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    nix::sys::socket::sendmsg::<()>(
        sock.as_fd().as_raw_fd(),
        &iov,
        cmsgs,
        nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// The zygote's fork: `clone3(CLONE_PARENT | CLONE_PIDFD)`, so the new process is a child of
/// the zygote's *parent* (the launcher, which reaps it and gets its status as with a spawned
/// one) and the zygote gets a pidfd for it. `Some((pid, pidfd))` in the zygote, `None` in the
/// child. The child's exit signal is the zygote's own (SIGCHLD: it was forked); clone3
/// requires `exit_signal = 0` with CLONE_PARENT.
///
/// Sound to call from anywhere: refuses (EDEADLK) unless the process is single-threaded, so
/// the child — a copy of the address space, like a fork's — may run arbitrary code. (As
/// after the helper's `clone`s, libc's fork handlers do not run; the zygote holds no lock.)
///
/// `cgroup`: a cgroup v2 directory fd; the child then starts in that cgroup
/// (`CLONE_INTO_CGROUP`, Linux 5.7): no move afterwards, so none of the global lock a move of
/// another process takes (see `CellCgroup::self_join_files`).
pub(crate) fn clone_parent_pidfd(cgroup: Option<&OwnedFd>) -> nix::Result<Option<(Pid, OwnedFd)>> {
    ensure_single_threaded()?;
    let mut pidfd: libc::c_int = -1;
    // struct clone_args (linux/sched.h), CLONE_ARGS_SIZE_VER2 = 88 bytes: flags, pidfd (a
    // pointer to an int the kernel fills), child_tid, parent_tid, exit_signal, stack,
    // stack_size, tls, set_tid, set_tid_size, cgroup.
    let mut args = [0u64; 11];
    args[0] = (libc::CLONE_PARENT | libc::CLONE_PIDFD) as u64;
    args[1] = std::ptr::addr_of_mut!(pidfd) as u64;
    if let Some(dir) = cgroup {
        args[0] |= CLONE_INTO_CGROUP;
        args[10] = u64::try_from(dir.as_raw_fd()).map_err(|_| nix::errno::Errno::EBADF)?;
    }
    // SAFETY: clone3(args, size) reads `size` bytes of `args` (ours, 88, alive for the call)
    // and writes the pidfd to `pidfd` (ours); the cgroup fd, when given, is borrowed (open).
    // No CLONE_VM and stack = 0: the child runs on a copy of this address space from the
    // syscall's return, as after fork(2); sound because the process is single-threaded
    // (checked above, no other thread can have started since).
    let rc = unsafe { libc::syscall(libc::SYS_clone3, args.as_mut_ptr(), std::mem::size_of_val(&args)) };
    match nix::errno::Errno::result(rc)? {
        0 => Ok(None),
        pid => {
            let pid = i32::try_from(pid).map_err(|_| nix::errno::Errno::EOVERFLOW)?;
            // SAFETY: CLONE_PIDFD installed this fd (close-on-exec) in our table for the new
            // process; nothing else owns it.
            Ok(Some((Pid::from_raw(pid), unsafe { OwnedFd::from_raw_fd(pidfd) })))
        }
    }
}

/// `CLONE_INTO_CGROUP` (linux/sched.h; not in every libc crate version).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Make `fds` this process's fds 0, 1, 2, … (in order, without close-on-exec) and close every
/// other fd (`close_range(len, ~0)`). For a process forked from the zygote, whose fd table
/// is the zygote's plus what it received.
pub(crate) fn install_fds(fds: Vec<OwnedFd>) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg};
    // First above every target, so a dup2 onto 0..len never closes a source still needed.
    let high: Vec<OwnedFd> = fds
        .iter()
        .map(|fd| {
            fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(fds.len() as RawFd + 3)).map(|raw| {
                // SAFETY: F_DUPFD_CLOEXEC returned a new fd; this is its only owner.
                unsafe { OwnedFd::from_raw_fd(raw) }
            })
        })
        .collect::<nix::Result<_>>()?;
    drop(fds);
    for (target, fd) in high.iter().enumerate() {
        // SAFETY: dup2(old, new) only changes the fd table: `new` (0..len) now refers to the
        // file of `old`, without FD_CLOEXEC; whatever `new` named before is closed, and no
        // OwnedFd of ours names a number below len (the sources were moved above it).
        if unsafe { libc::dup2(fd.as_raw_fd(), target as RawFd) } < 0 {
            return Err(nix::errno::Errno::last());
        }
    }
    let keep = high.len() as libc::c_uint;
    // The copies above `len` are closed by close_range below; forget them first so their
    // OwnedFds do not close the numbers again later.
    high.into_iter().for_each(|fd| {
        let _ = fd.into_raw_fd();
    });
    // SAFETY: close_range(first, last, flags = 0) closes fds of our table only; no OwnedFd of
    // this process names one of them any more (the callers own nothing else at this point).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, keep, libc::c_uint::MAX, 0) };
    nix::errno::Errno::result(rc).map(drop)
}

/// The helper's start: claim the control socket its argument names. Once per process (a second
/// call is EBUSY), and only from the helper's `main` before it opens anything, so no other
/// owner can hold that number: [`take_helper_fd`]'s contract, kept here.
pub(crate) fn claim_helper_ctl(fd: RawFd) -> io::Result<OwnedFd> {
    static CLAIMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if CLAIMED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    // SAFETY: the first claim in this process, made by the helper's main before it opened
    // anything; `take_helper_fd` also refuses an fd this process opened itself.
    unsafe { take_helper_fd(fd) }
}

/// Point this process's stdin, stdout and stderr at `fd` (`/dev/null`), dropping whatever they
/// named: pid 1 and the helper, once the payload runs, so only the payload holds the cell's
/// stdio.
pub(crate) fn stdio_to(fd: impl AsFd + Copy) -> nix::Result<()> {
    nix::unistd::dup2_stdin(fd)?;
    nix::unistd::dup2_stdout(fd)?;
    nix::unistd::dup2_stderr(fd)
}

/// Own fd `n`, a socket that [`install_fds`] just placed there (so nothing else owns it),
/// close-on-exec again.
pub(crate) fn own_installed_fd(n: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: take_helper_fd's contract: nothing else in this process owns `n` — install_fds
    // put it there by dup2 and no OwnedFd names it.
    unsafe { take_helper_fd(n) }
}

/// `pidfd_send_signal(pidfd, SIGKILL)`; ESRCH (already reaped) is fine.
pub(crate) fn pidfd_kill(pidfd: &impl AsFd) -> io::Result<()> {
    // SAFETY: pidfd_send_signal(fd, SIGKILL, info = NULL, flags = 0) reads no user memory;
    // the fd is borrowed, so open.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_fd().as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(err);
        }
    }
    Ok(())
}

/// The uid owning a user namespace (`ioctl(NS_GET_OWNER_UID)` on an `ns/user` fd): the
/// creator's effective uid, as seen from the caller's user namespace.
pub fn userns_owner_uid(ns: &impl AsFd) -> io::Result<u32> {
    let mut uid: libc::uid_t = 0;
    // SAFETY: NS_GET_OWNER_UID writes one uid_t through the pointer, which points to a live
    // local of that type; the fd is borrowed for the call.
    if unsafe { libc::ioctl(ns.as_fd().as_raw_fd(), libc::NS_GET_OWNER_UID, &mut uid) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(uid)
}

/// `struct mount_attr` of `mount_setattr(2)` (`MOUNT_ATTR_SIZE_VER0`).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const MOUNT_ATTR_IDMAP: u64 = 0x10_0000;

/// A detached copy of the mount at `dir` (an fd of the directory, `O_PATH` is enough):
/// `open_tree(dir, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH)`, not recursive
/// (nothing mounted beneath comes along). Linux >= 5.2.
pub fn open_tree_clone(dir: &impl AsFd) -> io::Result<OwnedFd> {
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint;
    // SAFETY: open_tree(2) reads the NUL-terminated path (a static empty C string) and
    // returns a new fd or -1; the dir fd is borrowed for the call.
    let raw = unsafe { libc::syscall(libc::SYS_open_tree, dir.as_fd().as_raw_fd(), c"".as_ptr(), flags) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a non-negative return is a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as RawFd) })
}

/// Set `nosuid,nodev` (+ `ro`, `noexec` when asked) on a detached mount (from
/// [`open_tree_clone`]), and idmap it with the mapping of `idmap` (an `ns/user` fd) if given:
/// `mount_setattr(fd, "", AT_EMPTY_PATH, {[MOUNT_ATTR_IDMAP |] …, userns_fd})`. Idmapping needs
/// Linux >= 5.12 and a filesystem that supports it (ext4, xfs, btrfs, tmpfs >= 6.3, …):
/// EINVAL otherwise.
pub fn set_mount_attrs(
    mnt: &impl AsFd,
    idmap: Option<BorrowedFd<'_>>,
    read_only: bool,
    no_exec: bool,
) -> io::Result<()> {
    let mut set = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    if idmap.is_some() {
        set |= MOUNT_ATTR_IDMAP;
    }
    if read_only {
        set |= MOUNT_ATTR_RDONLY;
    }
    if no_exec {
        set |= MOUNT_ATTR_NOEXEC;
    }
    let userns_fd = idmap.map_or(0, |fd| fd.as_raw_fd() as u64);
    let attr = MountAttr { attr_set: set, attr_clr: 0, propagation: 0, userns_fd };
    // SAFETY: mount_setattr(2) reads `size` bytes of `struct mount_attr` through the pointer
    // (a live local of exactly that layout and size) and the empty C path; fds are borrowed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mnt.as_fd().as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Attach a detached mount at `target` (in the caller's mount namespace):
/// `move_mount(fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`.
pub fn move_mount_to(mnt: &impl AsFd, target: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let target = std::ffi::CString::new(target.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: move_mount(2) reads the two NUL-terminated paths (an empty static one and
    // `target`, alive for the call); the fd is borrowed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_fd().as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Fork the current process. Returns `Some(pid)` in the parent, `None` in the child.
///
/// Sound to call from anywhere: it refuses (EDEADLK) unless the calling process is
/// single-threaded (checked at runtime, [`ensure_single_threaded`]), so the child may run
/// arbitrary code. Callers are pid 1 of a cell, which never starts threads.
pub(crate) fn fork_single_threaded() -> nix::Result<Option<Pid>> {
    ensure_single_threaded()?;
    // SAFETY: fork(2) is sound to follow with arbitrary code only in a single-threaded
    // process; checked just above, and no other thread exists that could start one since.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Some(child)),
        nix::unistd::ForkResult::Child => Ok(None),
    }
}

/// Drop every capability from the bounding set: `prctl(PR_CAPBSET_DROP, cap)` for
/// `0..=cap_last_cap` (read from /proc), so capabilities newer than the `caps` crate's table
/// are dropped too. Needs CAP_SETPCAP in the current user namespace.
pub fn drop_bounding_set(cap_last_cap: u32) -> io::Result<()> {
    for cap in 0..=cap_last_cap {
        // SAFETY: PR_CAPBSET_DROP takes a capability number and touches no user memory.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            // EINVAL: a number the kernel does not know (cap_last_cap read races are harmless).
            if err.raw_os_error() != Some(libc::EINVAL) {
                return Err(err);
            }
        }
    }
    Ok(())
}

/// Mark every fd >= `from` close-on-exec (`close_range(2)` with CLOSE_RANGE_CLOEXEC, 5.11+),
/// so nothing the helper inherited by accident reaches the payload.
pub fn cloexec_from(from: u32) -> io::Result<()> {
    // SAFETY: close_range(first, last, flags) only changes this process's fd table.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_uint) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The peer (slave) of a pty master, opened through the master itself:
/// `ioctl(master, TIOCGPTPEER, flags)` (Linux 4.13+). No path lookup in /dev/pts, so it cannot
/// be raced or pointed at another devpts instance. Called by the launcher before the spawn.
pub fn open_pty_peer(master: &impl AsFd, flags: nix::fcntl::OFlag) -> io::Result<OwnedFd> {
    // SAFETY: TIOCGPTPEER takes the open flags as an integer argument, reads no user memory
    // and returns a new fd (or -1); `master` is borrowed, so it is open for the call.
    let raw = unsafe { libc::ioctl(master.as_fd().as_raw_fd(), libc::TIOCGPTPEER, flags.bits()) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is the fresh fd the kernel just returned; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Set a terminal's window size: `ioctl(fd, TIOCSWINSZ, &winsize)`.
pub fn set_window_size(tty: &impl AsFd, rows: u16, cols: u16) -> io::Result<()> {
    let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one `struct winsize` from the pointer, which points at `size`,
    // alive for the duration of the call; the fd is borrowed, so it is open.
    if unsafe { libc::ioctl(tty.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Read a terminal's window size: `ioctl(fd, TIOCGWINSZ, &mut winsize)` → `(rows, cols)`.
pub fn window_size(tty: &impl AsFd) -> io::Result<(u16, u16)> {
    let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` through the pointer, which points at
    // `size`, alive and writable for the duration of the call; the fd is borrowed, so open.
    if unsafe { libc::ioctl(tty.as_fd().as_raw_fd(), libc::TIOCGWINSZ, &mut size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((size.ws_row, size.ws_col))
}

/// In the payload, right after `setsid`: make the terminal on `fd` the session's controlling
/// terminal, `ioctl(fd, TIOCSCTTY, 0)`. The caller must be a session leader without one, the
/// terminal must not be another session's (arg 0: never steal) and `fd` must be open for
/// reading. A plain integer fd (the payload passes 0), so nothing is allocated.
pub fn set_controlling_tty(fd: RawFd) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0 = do not steal) and touches no user
    // memory; a closed or non-terminal fd is an error return (EBADF / ENOTTY), not UB.
    if unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The Landlock ABI version the kernel supports: `landlock_create_ruleset(NULL, 0,
/// LANDLOCK_CREATE_RULESET_VERSION)`; 0 when Landlock is missing or disabled. (The landlock
/// crate keeps its own probe private.)
pub fn landlock_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_ulong = 1;
    // SAFETY: with a NULL attribute pointer and size 0 the kernel reads no user memory and
    // returns the ABI version or -1 (ENOSYS / EOPNOTSUPP).
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if v < 0 {
        0
    } else {
        v as i32
    }
}

/// Bring the loopback interface up in the current network namespace:
/// `ioctl(SIOCGIFFLAGS)` then `ioctl(SIOCSIFFLAGS)` with IFF_UP on an AF_INET datagram socket.
/// Needs CAP_NET_ADMIN over the namespace.
pub fn loopback_up() -> io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: socket(2) with constant arguments; the returned fd is owned below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh, valid fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads ifr_name and writes ifr_ifru.ifru_flags of the ifreq we pass,
    // which lives for the duration of the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the union member ifru_flags is the one SIOCGIFFLAGS just filled in.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the same ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Install one classic-BPF seccomp program with `seccomp(SECCOMP_SET_MODE_FILTER)` through
/// seccompiler (which needs no_new_privs set beforehand and does not allocate).
pub fn install_seccomp(program: &[crate::policy::seccomp::BpfInsn]) -> io::Result<()> {
    let prog: Vec<seccompiler::sock_filter> =
        program.iter().map(|i| seccompiler::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k }).collect();
    seccompiler::apply_filter(&prog).map_err(|e| match e {
        seccompiler::Error::Seccomp(io) => io,
        other => io::Error::other(other.to_string()),
    })
}

/// In the helper: take ownership of the control socket the launcher left open at `fd` (its
/// number is the helper's second argument) and mark it close-on-exec so it never reaches the
/// payload.
///
/// # Safety
///
/// `fd` must be an inherited descriptor that nothing else in this process owns or will close:
/// the launcher's control socket, claimed once, before anything else in the helper could have
/// been given that number. An `OwnedFd` closes its fd on drop, so a second owner would close
/// (or act on) whatever file later reuses the number.
///
/// Defence in depth on top of the contract (checked, not relied on): `fd` is not a stdio fd,
/// it is open, it is a socket, and its close-on-exec flag is clear — every fd this process
/// opens itself (std, nix, tokio) is created close-on-exec, so a clear flag means inherited
/// across the helper's exec (the launcher cleared it for this one fd). The flag is set once
/// claimed, so claiming the same fd twice fails with EBUSY.
pub(crate) unsafe fn take_helper_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd <= 2 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("control fd {fd} is a stdio fd")));
    }
    // SAFETY: fcntl(F_GETFD) only inspects the fd table; -1 (EBADF) when `fd` is not open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::FD_CLOEXEC != 0 {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    // SAFETY: `fd` is open (checked above) and, by this function's contract, nothing else in
    // this process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    if !nix::sys::stat::fstat(&owned).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK) {
        // Not ours after all: give the number back without closing it.
        let _ = owned.into_raw_fd();
        return Err(io::Error::from_raw_os_error(libc::ENOTSOCK));
    }
    // SAFETY: FD_CLOEXEC on an fd we now own; fcntl(F_SETFD) only changes the fd table.
    if unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned)
}

/// The peer's supplementary groups of a connected Unix socket: `getsockopt(SO_PEERGROUPS)`
/// (Linux 4.13+). Like `SO_PEERCRED` they are the credentials the peer had at `connect(2)`,
/// fixed in the socket, so a pid recycled since cannot change them (unlike
/// `/proc/<pid>/status`). The kernel answers ERANGE with the needed length when the buffer is
/// too small; the loop grows it.
pub fn peer_groups(sock: &impl AsFd) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: getsockopt(SO_PEERGROUPS) writes at most `len` bytes through the pointer,
        // which points at the vector's live, writable buffer of exactly `len` bytes, and stores
        // the length written (or needed, with ERANGE) in `len`; the fd is borrowed, so open.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) || n <= groups.len() {
            return Err(err);
        }
        groups.resize(n, 0);
    }
}

/// A pidfd for the peer of a connected Unix socket: `getsockopt(SO_PEERPIDFD)` (Linux 6.5+).
/// It names the process that called `connect(2)` — not whatever process has its pid now.
/// `Ok(None)` when the kernel lacks the option (ENOPROTOOPT); an error (ESRCH) when the peer
/// has already been reaped.
pub fn peer_pidfd(sock: &impl AsFd) -> io::Result<Option<OwnedFd>> {
    let mut raw: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt(SO_PEERPIDFD) writes one int (a new fd) through the pointer, which
    // points at `raw`, alive and writable for the call, with `len` its size; the socket fd is
    // borrowed, so open.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERPIDFD,
            (&mut raw as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::ENOPROTOOPT) { Ok(None) } else { Err(err) };
    }
    if raw < 0 {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: `raw` is the fresh pidfd the kernel just installed in our fd table (O_CLOEXEC);
    // nothing else owns it.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(raw) }))
}

/// A pidfd for the process that has `pid` now: `pidfd_open(pid, 0)` (Linux 5.3+). The
/// fallback of [`peer_pidfd`]: it pins whichever process holds the pid at this call.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(pid, flags) takes two integers, reads no user memory and returns a
    // new fd (O_CLOEXEC) or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    let raw = RawFd::try_from(raw).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: `raw` is the fresh pidfd the kernel just returned; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Whether the process a pidfd names still holds its pid: `pidfd_send_signal(pidfd, 0, NULL, 0)`
/// succeeds until the process has been reaped (a zombie still holds its pid) and fails with
/// ESRCH after. While it holds the pid, the pid cannot have been given to another process, so
/// what was read under `/proc/<pid>` before this call returned `true` was about it.
pub fn pidfd_alive(pidfd: &impl AsFd) -> io::Result<bool> {
    // SAFETY: pidfd_send_signal(fd, sig = 0, info = NULL, flags = 0) reads no user memory
    // (NULL info) and sends nothing (signal 0: permission and existence check only); the fd is
    // borrowed, so open.
    let rc = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_fd().as_raw_fd(), 0, std::ptr::null::<libc::siginfo_t>(), 0)
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// The first socket systemd passed this process (socket activation), as a listening
/// `AF_UNIX` stream socket: `sd_notify::listen_fds` checks `LISTEN_PID` is ours, reads
/// `LISTEN_FDS` and marks the fds close-on-exec; the first is fd 3 (`SD_LISTEN_FDS_START`).
/// `Ok(None)` without activation. Claimed at most once per process (EBUSY after), so at most
/// one owner ever exists; the caller checks `LISTEN_FDS` is exactly 1.
pub(crate) fn take_activated_listener() -> io::Result<Option<std::os::unix::net::UnixListener>> {
    use nix::sys::socket::{getsockname, getsockopt, sockopt, SockType, UnixAddr};
    static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if TAKEN.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    let Some(raw) = sd_notify::listen_fds()?.next() else { return Ok(None) };
    if fcntl_ok(raw).is_err() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: by the socket-activation protocol (sd_listen_fds(3)), fds from 3 on were passed
    // by the service manager to this pid (LISTEN_PID, checked by listen_fds) and are not
    // opened by the process itself; the fd is open (checked above); the once-flag above makes
    // this the only claim in the process, so nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
    let stream = getsockopt(&owned, sockopt::SockType).map_err(io::Error::from)?;
    getsockname::<UnixAddr>(owned.as_raw_fd()).map_err(io::Error::from)?;
    if stream != SockType::Stream {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a stream socket"));
    }
    Ok(Some(std::os::unix::net::UnixListener::from(owned)))
}

/// Whether `fd` is open: `fcntl(F_GETFD)`.
fn fcntl_ok(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl(F_GETFD) only inspects the fd table; -1 (EBADF) when `fd` is not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Register an owned fd with tokio's reactor (for fds tokio has no type for: inotify, eventfd,
/// a pty master).
///
/// Contract of `AsyncFd::register`: the raw fd must stay open and name the same file for the
/// AsyncFd's whole life. An `OwnedFd` closes its fd only when dropped, and the AsyncFd owns it,
/// deregistering before the drop; nothing else can close it.
pub fn async_fd(fd: std::os::fd::OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: see the contract above; `fd` is moved in, so no other owner exists.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into())
}

/// An inotify instance as tokio's reactor sees it: its one fd (no duplicate), owned by the
/// `Inotify` inside.
pub struct InotifyFd(pub nix::sys::inotify::Inotify);

impl std::os::fd::AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsFd::as_fd(&self.0).as_raw_fd()
    }
}

/// Register an inotify instance with tokio's reactor. The contract of [`async_fd`] holds: the
/// `Inotify` owns its fd, closes it only when dropped, and the AsyncFd owns the `Inotify`.
pub fn async_inotify(i: nix::sys::inotify::Inotify) -> io::Result<tokio::io::unix::AsyncFd<InotifyFd>> {
    // SAFETY: see above; `i` is moved in, so no other owner exists.
    unsafe { tokio::io::unix::AsyncFd::register(InotifyFd(i)) }.map_err(|e| e.into())
}

/// Whose rights a filesystem lookup uses: a caller's uid, gid and supplementary groups.
#[derive(Debug, Clone)]
pub struct FsIdentity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Run `f` on a fresh thread whose filesystem credentials are `who`'s: what `f` opens, stats
/// or resolves is checked as if `who` did it (the daemon's root rights play no part), and the
/// thread ends with `f`, so no other code ever runs with those credentials.
///
/// Credentials are per thread in the kernel. `setfsuid`/`setfsgid` are plain syscalls in glibc
/// (this thread only), and changing the fsuid from 0 to another id clears the filesystem
/// capabilities (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, …) from the thread's
/// effective set (capabilities(7), "Effect of user ID changes on capabilities"). The groups are
/// set with the raw `setgroups` syscall: glibc's `setgroups()` would apply them to every thread
/// of the daemon.
pub fn with_fs_identity<T: Send>(who: &FsIdentity, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| -> io::Result<T> {
            // SAFETY: setgroups(2) reads `len` gids from the pointer, which points at the
            // vector's live buffer of exactly that many u32 (gid_t) values. The raw syscall
            // changes this thread's credentials only.
            let rc = unsafe { libc::syscall(libc::SYS_setgroups, who.groups.len(), who.groups.as_ptr()) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            // setfsgid/setfsuid return the previous id and never fail visibly; read back.
            nix::unistd::setfsgid(nix::unistd::Gid::from_raw(who.gid));
            nix::unistd::setfsuid(nix::unistd::Uid::from_raw(who.uid));
            let now = (
                nix::unistd::setfsgid(nix::unistd::Gid::from_raw(u32::MAX)).as_raw(),
                nix::unistd::setfsuid(nix::unistd::Uid::from_raw(u32::MAX)).as_raw(),
            );
            if now != (who.gid, who.uid) {
                return Err(io::Error::other(format!(
                    "setfsuid/setfsgid to {}:{} left {}:{}",
                    who.uid, who.gid, now.1, now.0
                )));
            }
            Ok(f())
        });
        worker.join().map_err(|_| io::Error::other("the lookup thread panicked"))?
    })
}

#[cfg(test)]
mod tests {
    /// The test harness runs tests on threads of a multi-threaded process: fork and clone
    /// refuse there instead of leaving a child with other threads' locks held.
    #[test]
    fn fork_and_clone_refuse_in_a_multi_threaded_process() {
        let _second = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_secs(1)));
        assert!(super::thread_count().unwrap() >= 2);
        assert_eq!(super::fork_single_threaded().err(), Some(nix::errno::Errno::EDEADLK));
        let flags = nix::sched::CloneFlags::empty();
        assert_eq!(super::clone_into_namespaces(flags, Box::new(|| 0)).err(), Some(nix::errno::Errno::EDEADLK));
    }

    /// Only an inherited fd (close-on-exec clear) is claimed, once: an fd this process opened
    /// (close-on-exec) and a second claim are refused with EBUSY, a non-socket with ENOTSOCK.
    #[test]
    fn take_helper_fd_claims_only_an_inherited_socket_once() {
        use std::os::fd::{AsRawFd, IntoRawFd};
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let raw = a.as_raw_fd();
        // SAFETY: (test) `a` still owns the fd; the claim must fail without taking it.
        let err = unsafe { super::take_helper_fd(raw) }.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBUSY));
        nix::fcntl::fcntl(&a, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();
        let raw = a.into_raw_fd();
        // SAFETY: (test) ownership was released with into_raw_fd; this is the only claim.
        let owned = unsafe { super::take_helper_fd(raw) }.unwrap();
        // SAFETY: (test) `owned` holds the fd; the second claim must fail without taking it.
        let again = unsafe { super::take_helper_fd(owned.as_raw_fd()) }.unwrap_err();
        assert_eq!(again.raw_os_error(), Some(libc::EBUSY));
        let file = std::fs::File::open("/dev/null").unwrap();
        nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();
        let raw = file.into_raw_fd();
        // SAFETY: (test) ownership released; the claim must refuse a non-socket and give it back.
        let err = unsafe { super::take_helper_fd(raw) }.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTSOCK));
        // SAFETY: (test) the refused claim gave the number back; close it here.
        drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) });
    }

    /// A symlink anywhere in the path (the last component or one before it) is refused with
    /// ELOOP; the same object reached without one opens.
    #[test]
    fn open_no_symlinks_refuses_any_symlink_component() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir_all(real.join("sub")).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        assert!(super::open_no_symlinks(&real.join("sub"), true).is_ok());
        for p in [dir.path().join("link"), dir.path().join("link/sub")] {
            assert_eq!(super::open_no_symlinks(&p, true).err(), Some(nix::errno::Errno::ELOOP), "{}", p.display());
        }
        assert_eq!(super::open_no_symlinks(&dir.path().join("none"), false).err(), Some(nix::errno::Errno::ENOENT));
    }

    /// The same answers, path by path, from the walk without `openat2` — called directly, and
    /// through [`super::open_no_symlinks`] on a thread whose seccomp filter answers `openat2`
    /// with ENOSYS, as systemd's `RestrictSUIDSGID=yes` does (issue 15, finding 2: on the
    /// original code the cwd of every cell failed to open there).
    #[test]
    fn without_openat2_the_walk_gives_the_same_answers() {
        use nix::errno::Errno;
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir_all(real.join("sub")).unwrap();
        std::fs::write(real.join("file"), b"x").unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink("/proc/self/root", real.join("magic")).unwrap();
        let cases: Vec<(std::path::PathBuf, bool, Option<Errno>)> = vec![
            (real.join("sub"), true, None),
            (real.join("file"), false, None),
            (real.join("file"), true, Some(Errno::ENOTDIR)),
            (real.join("file/x"), false, Some(Errno::ENOTDIR)),
            (dir.path().join("link"), true, Some(Errno::ELOOP)),
            (dir.path().join("link/sub"), true, Some(Errno::ELOOP)),
            (real.join("magic"), false, Some(Errno::ELOOP)),
            (real.join("magic/etc"), true, Some(Errno::ELOOP)),
            (dir.path().join("none"), false, Some(Errno::ENOENT)),
            (real.join("sub/../sub"), true, Some(Errno::EXDEV)),
        ];
        let check = |via: &str, open: &dyn Fn(&std::path::Path, bool) -> nix::Result<std::os::fd::OwnedFd>| {
            for (path, directory, want) in &cases {
                let got = open(path, *directory);
                assert_eq!(got.as_ref().err().copied(), *want, "{via}: {}", path.display());
                if let Ok(fd) = got {
                    let (a, b) = (nix::sys::stat::fstat(&fd).unwrap(), nix::sys::stat::stat(path).unwrap());
                    assert_eq!((a.st_dev, a.st_ino), (b.st_dev, b.st_ino), "{via}: {}", path.display());
                }
            }
        };
        check("walk", &super::open_no_symlinks_walk);
        // A thread of its own: no_new_privs and seccomp filters are per thread, so the rest of
        // the test process keeps openat2.
        std::thread::scope(|s| {
            s.spawn(|| {
                deny_openat2_with_enosys();
                let how = nix::fcntl::OpenHow::new().flags(nix::fcntl::OFlag::O_PATH);
                let direct = nix::fcntl::openat2(nix::fcntl::AT_FDCWD, "/", how);
                assert_eq!(direct.err(), Some(Errno::ENOSYS), "the filter refuses openat2");
                check("open_no_symlinks under the filter", &super::open_no_symlinks);
            });
        });
    }

    /// This thread only: `openat2` fails with ENOSYS, everything else is allowed.
    fn deny_openat2_with_enosys() {
        use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
        let rules = [(libc::SYS_openat2, vec![])].into_iter().collect();
        let arch = TargetArch::try_from(std::env::consts::ARCH).unwrap();
        let filter =
            SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::ENOSYS as u32), arch).unwrap();
        let program: BpfProgram = filter.try_into().unwrap();
        nix::sys::prctl::set_no_new_privs().unwrap();
        seccompiler::apply_filter(&program).unwrap();
    }
}
