//! The only file with `unsafe`: thin wrappers over syscalls that nix, caps and landlock do not
//! cover (or cover in a way we cannot use). Each block states the syscall contract it relies on.
//!
//! Everything here is called from the single-threaded cell helper (and its children), except
//! [`async_fd`], which the daemon uses. Nothing here runs between fork and exec in the daemon:
//! the launcher spawns the helper without `pre_exec` (see `launch.rs`).
//! The pty calls [`open_pty_peer`] and [`set_window_size`] run in the launcher before the
//! spawn (ordinary async-side code, not between fork and exec). [`with_fs_identity`] runs a
//! closure on a fresh thread of the daemon whose filesystem credentials are a caller's.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sched::CloneFlags;
use nix::unistd::Pid;

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

/// Start `child` in new namespaces with `clone(2)`, on a freshly allocated stack.
///
/// Only called from the single-threaded helper, so the child may allocate: there is no other
/// thread whose locks could have been copied in a held state.
pub fn clone_into_namespaces(
    flags: CloneFlags,
    child: Box<dyn FnMut() -> isize + '_>,
) -> nix::Result<Pid> {
    // 1 MiB is far more than the init recipe needs (no recursion, small frames).
    let mut stack = vec![0u8; 1 << 20];
    // SAFETY: nix::sched::clone requires that the child does not overflow `stack` (it runs
    // the bounded init recipe) and that the process is single-threaded or the child only
    // makes async-signal-safe calls (the helper is single-threaded). SIGCHLD makes the child
    // waitable with waitpid(2) like a forked one. The stack outlives the call in the parent;
    // the child gets its own copy of the address space (no CLONE_VM).
    unsafe { nix::sched::clone(child, &mut stack, flags, Some(libc::SIGCHLD)) }
}

/// Fork the current (single-threaded) process. Returns `Some(pid)` in the parent, `None` in
/// the child.
pub fn fork_single_threaded() -> nix::Result<Option<Pid>> {
    // SAFETY: fork(2) is sound to follow with arbitrary code only in a single-threaded
    // process; callers are the helper and its pid 1, which never start threads.
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
    let rc = unsafe {
        libc::syscall(libc::SYS_close_range, from, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_uint)
    };
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
    if v < 0 { 0 } else { v as i32 }
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
    let prog: Vec<seccompiler::sock_filter> = program
        .iter()
        .map(|i| seccompiler::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k })
        .collect();
    seccompiler::apply_filter(&prog).map_err(|e| match e {
        seccompiler::Error::Seccomp(io) => io,
        other => io::Error::other(other.to_string()),
    })
}

/// In the helper: take ownership of the control socket the launcher left open at `fd` (its
/// number is the helper's second argument) and mark it close-on-exec so it never reaches the
/// payload.
pub fn take_helper_fd(fd: RawFd) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    if fd <= 2 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("control fd {fd} is a stdio fd")));
    }
    // SAFETY: fcntl(F_GETFD) only inspects the fd table; it tells us `fd` is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is open (checked above) and, by the launcher's contract, nothing else in
    // this fresh process owns it.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: FD_CLOEXEC on an fd we now own.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned)
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
