//! The cell helper: a fresh, single-threaded process — forked from the zygote
//! ([`super::zygote`]), or where there is none a re-exec of the cellkeep binary
//! (`cellkeep __cell-helper`) — that the launcher places in the cell's cgroup (v2) or that
//! moves itself in (v1).
//!
//! Why a helper process instead of a `pre_exec` closure in the daemon: after `fork` in a
//! multi-threaded process only async-signal-safe calls are allowed, and the setup (namespaces,
//! id maps, mounts, Landlock) needs allocation, files and error values. A fresh process that
//! never starts a thread may fork and run ordinary Rust, so the whole recipe is plain, testable
//! code; it costs one fork from the zygote (or one extra `execve` without it).
//!
//! Sequence: read the [`LaunchPlan`] from fd 3 → on v1, move itself into the cell's cgroup
//! (`0` into each hierarchy's `tasks`: the one cgroup move that needs no RCU grace period; see
//! `CellCgroup::self_join_files`) → `setsid` (terminal signals reach only the
//! launcher, which forwards them) → the idmapped workspace, when the plan has one
//! (`idmapped_workspace`: a detached clone of the cwd's mount, `open_tree`, idmapped with a
//! user namespace mapping the workspace's owner to the cell's host ids, `mount_setattr`; pid 1
//! attaches it, `move_mount`; where it cannot be made, the policy's fallback, reported) → the
//! cell's user namespace (`make_userns`): a holder child cloned with `CLONE_NEWUSER` while
//! the helper's *effective* uid/gid are the cell's host ids (`setresuid(-1, C, -1)`; real and
//! saved ids stay root, so euid 0 is taken back right after), so the namespace is owned by the
//! cell's uid and the kernel charges its budgets (pending signals, inotify instances, user
//! namespaces: ucounts) to that uid, never to root; its uid/gid maps written from here as root
//! (the only side allowed to map an arbitrary unprivileged id), its owner checked with
//! `NS_GET_OWNER_UID` → `setns` into it → `clone` pid 1 into the other new namespaces (owned
//! by the cell's user namespace) → release it → forward signals until it exits, then exit with
//! its status. Every step that fails ends the launch with its stage (fail closed).
//!
//! pid 1's own credentials stay those the helper had (host uid 0, unmapped inside, with every
//! capability of the cell's namespace and none outside it), as before: `/proc/sys` files such
//! as `vm.memfd_noexec` check for the global root euid. Its privilege drop then makes the
//! payload's and its own real, effective, saved and filesystem ids the cell's.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use nix::sched::CloneFlags;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::init;
use super::plan::{IdmapFallback, IdmapPlan, LaunchPlan};
use super::proto::{Report, Stage};
use super::sys;
use super::view::StepKind;

/// Signals the helper passes on to the cell (SIGKILL cannot be caught: the launcher kills the
/// whole cgroup for that).
pub const FORWARDED: [Signal; 6] =
    [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGUSR1, Signal::SIGUSR2];

/// Entry point of `cellkeep __cell-helper`; never returns.
pub fn main() -> ! {
    let fd = std::env::args().nth(2).and_then(|a| a.parse::<std::os::fd::RawFd>().ok());
    // The helper's second argument: the control socket the launcher left open (CLOEXEC
    // cleared) for this fresh process, claimed before the helper opens anything.
    let ctl = match fd.map(sys::claim_helper_ctl) {
        Some(Ok(fd)) => fd,
        None => {
            eprintln!("cellkeep: internal helper started without its control fd argument");
            std::process::exit(125);
        }
        Some(Err(e)) => {
            eprintln!("cellkeep: internal helper started without its control fd: {e}");
            std::process::exit(125);
        }
    };
    run_with_ctl(ctl)
}

/// The helper with its control socket: from `main` (a spawned helper) or from the zygote (a
/// forked one, see [`super::zygote`]); never returns.
pub fn run_with_ctl(ctl: OwnedFd) -> ! {
    let code = match read_plan(&ctl) {
        Ok(mut plan) => match join_cgroup(&plan) {
            Ok(()) => run(&mut plan, &ctl),
            Err((errno, detail)) => {
                Report::SetupFailed { stage: Stage::Cgroup, errno, detail }.send(&ctl);
                125
            }
        },
        Err((errno, detail)) => {
            Report::SetupFailed { stage: Stage::Plan, errno, detail }.send(&ctl);
            125
        }
    };
    std::process::exit(code)
}

/// An I/O error as a setup failure's (errno, detail); errno 0 when it carries none (a
/// malformed plan).
fn io_fail(what: &str, e: &std::io::Error) -> (i32, String) {
    (e.raw_os_error().unwrap_or(0), format!("{what}: {e}"))
}

/// v1: move this (single-threaded) process into the cell by writing `0` to each hierarchy's
/// `tasks` file, before it forks anything (see `CellCgroup::self_join_files` for why the
/// launcher does not move it). Fails closed: a cell outside its cgroup never starts.
fn join_cgroup(plan: &LaunchPlan) -> Result<(), (i32, String)> {
    if plan.join_cgroup.is_empty() {
        return Ok(());
    }
    sys::ensure_single_threaded().map_err(|e| (e as i32, format!("joining the cell's cgroup: {e}")))?;
    for tasks in &plan.join_cgroup {
        std::fs::write(tasks, b"0")
            .map_err(|e| io_fail(&format!("joining the cell's cgroup ({})", tasks.display()), &e))?;
    }
    Ok(())
}

fn read_plan(ctl: &OwnedFd) -> Result<LaunchPlan, (i32, String)> {
    let file = std::fs::File::from(ctl.try_clone().map_err(|e| io_fail("the control socket", &e))?);
    let mut line = String::new();
    // The plan is one line; a bound keeps a confused launcher from making us read forever.
    BufReader::new(file).take(16 << 20).read_line(&mut line).map_err(|e| io_fail("reading the launch plan", &e))?;
    serde_json::from_str(&line).map_err(|e| (0, format!("malformed launch plan: {e}")))
}

/// pid 1's namespaces (its user namespace is made first and joined: see [`make_userns`]).
fn clone_flags(plan: &LaunchPlan) -> CloneFlags {
    let ns = &plan.ns;
    let mut flags = CloneFlags::empty();
    for (on, flag) in [
        (ns.pid, CloneFlags::CLONE_NEWPID),
        (ns.mount, CloneFlags::CLONE_NEWNS),
        (ns.net, CloneFlags::CLONE_NEWNET),
        (ns.ipc, CloneFlags::CLONE_NEWIPC),
        (ns.uts, CloneFlags::CLONE_NEWUTS),
        (ns.cgroup, CloneFlags::CLONE_NEWCGROUP),
    ] {
        if on {
            flags |= flag;
        }
    }
    flags
}

/// The helper's recipe; returns its exit code (pid 1's, or 125 for a setup failure here).
fn run(plan: &mut LaunchPlan, ctl: &OwnedFd) -> i32 {
    // Not a process-group leader (spawned by the launcher), so setsid cannot fail; if it does
    // the only cost is that terminal signals also reach us directly.
    let _ = nix::unistd::setsid();

    let mut mask = SigSet::empty();
    FORWARDED.iter().for_each(|s| mask.add(*s));
    mask.add(Signal::SIGCHLD);
    let fail = |stage, err: nix::Error, what: &str| {
        Report::SetupFailed { stage, errno: err as i32, detail: format!("{what}: {err}") }.send(ctl);
        125
    };
    if let Err(e) = mask.thread_block() {
        return fail(Stage::Init, e, "blocking signals in the helper");
    }
    let sigfd = match SignalFd::new(&mask) {
        Ok(fd) => fd,
        Err(e) => return fail(Stage::Init, e, "signalfd in the helper"),
    };
    let (sync_r, sync_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return fail(Stage::Init, e, "sync pipe"),
    };
    if plan.warm {
        return match run_warm(plan, ctl, sync_r, sync_w) {
            Ok(pid1) => forward_until_exit(pid1, &sigfd),
            Err((stage, errno, detail)) => {
                Report::SetupFailed { stage, errno, detail }.send(ctl);
                125
            }
        };
    }
    // The cell's user namespace, made by a holder process running with the owner's effective
    // ids (a host id leased for the cell: it owns the namespace and is charged for it, and no
    // account — the caller's included — can enter it), started before the idmapped workspace
    // and mapped after it; then the helper joins it, and pid 1 is cloned into the other
    // namespaces from inside.
    let holder = match plan.ns.user.then(|| Holder::start(plan.ids.owner_uid, plan.ids.owner_gid)) {
        None => None,
        Some(Ok(h)) => Some(h),
        Some(Err((stage, errno, detail))) => {
            Report::SetupFailed { stage, errno, detail }.send(ctl);
            return 125;
        }
    };
    let workspace = match idmapped_workspace(plan, ctl) {
        Ok(w) => w,
        Err((stage, errno, detail)) => {
            if let Some(h) = holder {
                h.abandon();
            }
            Report::SetupFailed { stage, errno, detail }.send(ctl);
            return 125;
        }
    };
    let plan = &*plan;
    if let Some(holder) = holder {
        let ids = &plan.ids;
        let maps = (
            format!("{} {} 1\n", ids.inside_uid, ids.outside_uid),
            format!("{} {} 1\n", ids.inside_gid, ids.outside_gid),
        );
        // (The idmap's `fallback_owner` may have made the cell's host ids the workspace
        // owner's since; the namespace stays the leased owner's.)
        let holder = if holder.creator == (ids.owner_uid, ids.owner_gid) {
            Ok(holder)
        } else {
            holder.abandon();
            Holder::start(ids.owner_uid, ids.owner_gid)
        };
        let joined = holder.and_then(|h| h.finish(&maps)).and_then(|ns| {
            check_userns_owner(&ns, ids.owner_uid)?;
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWUSER)
                .map_err(|e| (Stage::Namespaces, e as i32, format!("joining the cell's user namespace: {e}")))
        });
        if let Err((stage, errno, detail)) = joined {
            Report::SetupFailed { stage, errno, detail }.send(ctl);
            return 125;
        }
    }

    let mut sync_w = Some(sync_w);
    let child = {
        let sync_w_in_child = &mut sync_w;
        let sync_r = &sync_r;
        let workspace = workspace.as_slice();
        sys::clone_into_namespaces(
            clone_flags(plan),
            Box::new(move || {
                // In pid 1: close our copy of the write end so a dead helper reads as EOF.
                sync_w_in_child.take();
                init::pid1(plan, sync_r, ctl, workspace) as isize
            }),
        )
    };
    drop(workspace);
    let pid1 = match child {
        Ok(pid) => pid,
        Err(e) => return fail(Stage::Namespaces, e, "clone into new namespaces"),
    };
    drop(sync_r);
    // Release pid 1: its user namespace is mapped.
    if let Some(w) = sync_w.take() {
        let _ = nix::unistd::write(&w, &[1u8]);
    }
    forward_until_exit(pid1, &sigfd)
}

/// A cell built before its request (`plan.warm`, `[pool] prewarm`), up to the request; then
/// the request; returns pid 1 running it (the helper then forwards signals as for any cell).
///
/// The helper stays outside the cell's user namespace until the request, because the cwd's
/// binds must be made there (root in the initial namespace, which still sees the host's tree:
/// `open_tree`, `mount_setattr` with an idmap), and only the request names the cwd. So pid 1 is cloned by a
/// short-lived intermediate that joins the user namespace, with `CLONE_PARENT` (pid 1 is the
/// helper's child, as in a cell started cold), and the helper joins the namespace itself once
/// the request is handed over. Order on the control socket: pid 1 reads the proxy byte, then
/// tells the helper (one byte on `hand`) it is built; only then does the helper report
/// [`Report::Warm`] and read the request, so they never read it at the same time.
fn run_warm(plan: &LaunchPlan, ctl: &OwnedFd, sync_r: OwnedFd, sync_w: OwnedFd) -> Result<Pid, (Stage, i32, String)> {
    use std::io::Write;
    let init_err = |what: &str, e: nix::Error| (Stage::Init, e as i32, format!("{what}: {e}"));
    let (hand, hand_pid1) = stream_pair().map_err(|e| init_err("socketpair", e))?;
    let userns = match plan.ns.user {
        false => None,
        true => {
            let ids = &plan.ids;
            let maps = (
                format!("{} {} 1\n", ids.inside_uid, ids.outside_uid),
                format!("{} {} 1\n", ids.inside_gid, ids.outside_gid),
            );
            let ns = make_userns(ids.owner_uid, ids.owner_gid, &maps)?;
            check_userns_owner(&ns, ids.owner_uid)?;
            Some(ns)
        }
    };
    let (pid_r, pid_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| init_err("pipe", e))?;
    let intermediate = match sys::fork_single_threaded() {
        Err(e) => return Err(init_err("fork", e)),
        Ok(None) => {
            drop((hand, pid_r, sync_w));
            let joined = userns.map_or(Ok(()), |ns| nix::sched::setns(&ns, CloneFlags::CLONE_NEWUSER));
            let cloned = joined.and_then(|()| {
                let (sync_r, hand_pid1) = (&sync_r, &hand_pid1);
                sys::clone_into_namespaces(
                    clone_flags(plan) | CloneFlags::CLONE_PARENT,
                    Box::new(move || init::pid1_warm(plan, sync_r, ctl, hand_pid1) as isize),
                )
            });
            let code = match cloned {
                Ok(pid1) => nix::unistd::write(&pid_w, &pid1.as_raw().to_ne_bytes()).map_or(1, |_| 0),
                Err(e) => nix::unistd::write(&pid_w, &(-(e as i32)).to_ne_bytes()).map_or(1, |_| 1),
            };
            std::process::exit(code);
        }
        Ok(Some(pid)) => pid,
    };
    drop((pid_w, sync_r, hand_pid1));
    let mut word = [0u8; 4];
    let got = nix::unistd::read(&pid_r, &mut word);
    let _ = waitpid(intermediate, None);
    let pid1 = match (got, i32::from_ne_bytes(word)) {
        (Ok(4), n) if n > 0 => Pid::from_raw(n),
        (Ok(4), n) => {
            let e = nix::Error::from_raw(-n);
            return Err((Stage::Namespaces, -n, format!("clone into new namespaces: {e}")));
        }
        _ => return Err((Stage::Namespaces, 0, "the process cloning pid 1 ended without a word".into())),
    };
    let kill_pid1 = |err: (Stage, i32, String)| {
        let _ = kill(pid1, Signal::SIGKILL);
        let _ = waitpid(pid1, None);
        err
    };
    // Release pid 1 (its user namespace is mapped) and wait until it is built (or ended: it
    // reported why itself).
    let _ = nix::unistd::write(&sync_w, &[1u8]);
    drop(sync_w);
    let mut byte = [0u8; 1];
    if !matches!(nix::unistd::read(&hand, &mut byte), Ok(1)) {
        let _ = waitpid(pid1, None);
        return Err((Stage::Init, 0, "pid 1 of the pre-built cell ended before it was built".into()));
    }
    Report::Warm.send(ctl);
    let mut req = read_plan(ctl).map_err(|(errno, detail)| kill_pid1((Stage::Plan, errno, detail)))?;
    if req.ids != plan.ids || req.warm {
        return Err(kill_pid1((Stage::Plan, 0, "the request does not fit the pre-built cell".into())));
    }
    let workspace = request_binds(plan, &mut req, ctl).map_err(kill_pid1)?;
    use std::os::fd::AsRawFd;
    let fds: Vec<_> = workspace.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    let handoff = init::Handoff { plan: req, workspace: workspace.iter().map(|(p, _)| p.clone()).collect() };
    serde_json::to_vec(&handoff)
        .map_err(std::io::Error::other)
        .and_then(|mut line| {
            line.push(b'\n');
            sys::send_fds(&hand, b"r", &fds)?;
            std::fs::File::from(hand.try_clone()?).write_all(&line)
        })
        .map_err(|e| {
            kill_pid1((Stage::Plan, e.raw_os_error().unwrap_or(0), format!("handing over the request: {e}")))
        })?;
    drop((workspace, hand));
    // From here on as a cell started cold: the helper inside the cell's user namespace.
    if let Some(ns) = userns {
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWUSER)
            .map_err(|e| kill_pid1((Stage::Namespaces, e as i32, format!("joining the cell's user namespace: {e}"))))?;
    }
    Ok(pid1)
}

/// The binds a pre-built cell's request adds to its view (the cwd and its `{cwd}/…` rules),
/// as detached mounts made here, outside the cell, for pid 1 to attach: the workspace
/// idmapped where the plan says so ([`idmapped_workspace`]), any other bind a plain clone
/// with its flags. pid 1 cannot bind them from host paths itself: it pivoted into its view
/// before the request, and the host's tree is gone from its mount namespace.
fn request_binds(
    warm: &LaunchPlan,
    req: &mut LaunchPlan,
    ctl: &OwnedFd,
) -> Result<Vec<(PathBuf, OwnedFd)>, (Stage, i32, String)> {
    let mut mounts = idmapped_workspace(req, ctl)?;
    if req.ids != warm.ids {
        let detail = "the workspace cannot be idmapped, and a pre-built cell cannot take on its owner's ids".into();
        return Err((Stage::Mounts, 0, detail));
    }
    let (Some(base), Some(full)) = (&warm.view, &req.view) else { return Ok(mounts) };
    for step in super::view::added_steps(base, full) {
        let StepKind::Bind { source, dir, writable, exec, no_follow } = &step.kind else { continue };
        if mounts.iter().any(|(p, _)| p == &step.path) {
            continue;
        }
        let shown = source.display();
        let err = |what: &str, e: std::io::Error| {
            (Stage::Mounts, e.raw_os_error().unwrap_or(0), format!("{what} {shown}: {e}"))
        };
        let fd = if *no_follow {
            sys::open_no_symlinks(source, *dir).map_err(|e| err("opening (no symlinks followed)", e.into()))?
        } else {
            nix::fcntl::open(
                source.as_path(),
                nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| err("opening", e.into()))?
        };
        let mnt = sys::open_tree_clone(&fd).map_err(|e| err("open_tree(OPEN_TREE_CLONE) of", e))?;
        sys::set_mount_attrs(&mnt, None, !writable, !exec).map_err(|e| err("mount_setattr of", e))?;
        mounts.push((step.path.clone(), mnt));
    }
    if mounts.len() > init::MAX_HANDOFF_FDS {
        let detail =
            format!("{} binds under the cwd; a pre-built cell takes at most {}", mounts.len(), init::MAX_HANDOFF_FDS);
        return Err((Stage::Mounts, libc::E2BIG, detail));
    }
    Ok(mounts)
}

fn stream_pair() -> nix::Result<(OwnedFd, OwnedFd)> {
    nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
}

/// The kernel's word that a user namespace belongs to the cell's uid (so its budgets are
/// charged there): `NS_GET_OWNER_UID`.
fn check_userns_owner(ns: &OwnedFd, uid: u32) -> Result<(), (Stage, i32, String)> {
    let owner = sys::userns_owner_uid(ns).map_err(|e| {
        (
            Stage::Namespaces,
            e.raw_os_error().unwrap_or(0),
            format!("NS_GET_OWNER_UID of the cell's user namespace: {e}"),
        )
    })?;
    if owner != uid {
        let detail = format!("the cell's user namespace belongs to uid {owner}, not the cell's {uid}");
        return Err((Stage::Namespaces, libc::EPERM, detail));
    }
    Ok(())
}

/// A new user namespace with the uid/gid map lines `maps`, created with `creator_uid` and
/// `creator_gid` as the effective ids (its owner, charged for it), returned as an `ns/user`
/// fd. A short-lived holder child is cloned into it (`CLONE_NEWUSER`), its maps written from
/// here as root (CAP_SETUID/CAP_SETGID in the parent namespace: any unprivileged id may be
/// mapped, and `setgroups` stays allowed inside), its namespace opened; then it exits.
fn make_userns(creator_uid: u32, creator_gid: u32, maps: &(String, String)) -> Result<OwnedFd, (Stage, i32, String)> {
    Holder::start(creator_uid, creator_gid)?.finish(maps)
}

/// A holder cloned into a new user namespace, not mapped yet: [`make_userns`] in two halves,
/// so the helper can start the cell's holder before it makes the idmapped workspace (with a
/// holder of its own) and map it after — the two clones overlap instead of queueing.
struct Holder {
    pid: nix::unistd::Pid,
    ours: OwnedFd,
    creator: (u32, u32),
}

impl Holder {
    fn start(creator_uid: u32, creator_gid: u32) -> Result<Holder, (Stage, i32, String)> {
        use std::os::fd::AsRawFd;
        // A socket pair, not a pipe: the holder sends its own `ns/user` fd back (SCM_RIGHTS). The
        // helper cannot open /proc/<holder>/ns/user itself without CAP_SYS_PTRACE — the holder's
        // effective uid is the cell's, not ours — and systemd's unit does not grant that
        // capability (found by the systemd lane: every launch failed at stage id_map, EACCES).
        let (ours, theirs) = stream_pair().map_err(|e| (Stage::Namespaces, e as i32, format!("socketpair: {e}")))?;
        let mut ours = Some(ours);
        let cloned = {
            let ours_in_child = &mut ours;
            let theirs = &theirs;
            sys::with_effective_ids(creator_uid, creator_gid, move || {
                sys::clone_into_namespaces(
                    CloneFlags::CLONE_NEWUSER,
                    Box::new(move || {
                        // The holder: send its user namespace, wait for the helper's end to
                        // close, then exit.
                        ours_in_child.take();
                        let Ok(ns) = std::fs::File::open("/proc/self/ns/user") else { return 1 };
                        let fds = [ns.as_raw_fd()];
                        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
                        let iov = [std::io::IoSlice::new(b"n")];
                        if nix::sys::socket::sendmsg::<()>(
                            theirs.as_raw_fd(),
                            &iov,
                            &cmsg,
                            nix::sys::socket::MsgFlags::empty(),
                            None,
                        )
                        .is_err()
                        {
                            return 1;
                        }
                        let mut byte = [0u8; 1];
                        let _ = nix::unistd::read(theirs, &mut byte);
                        0
                    }),
                )
            })
        };
        drop(theirs);
        let holder = match cloned {
            Ok(Ok(pid)) => pid,
            Ok(Err(e)) => {
                return Err((Stage::Namespaces, e as i32, format!("clone(CLONE_NEWUSER) as uid {creator_uid}: {e}")))
            }
            // Fail closed: the helper gives up (a holder cloned before a failed restore reads EOF
            // when the helper exits).
            Err(e) => return Err((Stage::Namespaces, e.errno as i32, format!("creating a user namespace: {e}"))),
        };
        let Some(ours) = ours else {
            return Err((Stage::Namespaces, 0, "the helper's end of the holder's socket is gone".into()));
        };
        Ok(Holder { pid: holder, ours, creator: (creator_uid, creator_gid) })
    }

    /// Write the holder's maps, take its namespace, let it exit and reap it.
    fn finish(self, maps: &(String, String)) -> Result<OwnedFd, (Stage, i32, String)> {
        let Holder { pid: holder, ours, .. } = self;
        let made = (|| {
            std::fs::write(format!("/proc/{holder}/uid_map"), &maps.0).map_err(|e| format!("writing uid_map: {e}"))?;
            std::fs::write(format!("/proc/{holder}/gid_map"), &maps.1).map_err(|e| format!("writing gid_map: {e}"))?;
            sys::receive_fd(&ours).map_err(|e| format!("receiving its ns/user: {e}"))
        })();
        drop(ours);
        let _ = waitpid(holder, None);
        made.map_err(|e| {
            let detail =
                format!("mapping the user namespace of holder {holder} ({} / {}): {e}", maps.0.trim(), maps.1.trim());
            (Stage::IdMap, 0, detail)
        })
    }

    /// Let an unused holder go: it reads end of file and exits; reaped here.
    fn abandon(self) {
        let Holder { pid, ours, .. } = self;
        drop(ours);
        let _ = waitpid(pid, None);
    }
}

/// The plan's workspace as detached mounts (by path inside) for pid 1 to attach: idmapped
/// where the plan says so, else (no idmap planned, or the policy's fallback taken: reported
/// as the degradation `workspace_idmap`, and with `fallback_owner` the plan's ids become the
/// owner's) plain clones. `Err`: the launch fails.
///
/// Always clones made here, in the host's mount namespace, never binds pid 1 makes: a clone
/// (`open_tree(OPEN_TREE_CLONE)`, not recursive) carries the workspace's own mount only. pid 1's
/// mount namespace belongs to the cell's user namespace, where every mount copied from the
/// host is locked, so its non-recursive bind of a workspace holding mounts (a chroot's `proc`
/// and `dev`) fails and only a recursive one works — which brought the host's procfs, its
/// `/dev/shm` and device nodes into the view with the host's flags.
fn idmapped_workspace(plan: &mut LaunchPlan, ctl: &OwnedFd) -> Result<Vec<(PathBuf, OwnedFd)>, (Stage, i32, String)> {
    // (A kernel without the new mount API, before 5.12, has pid 1 bind the workspace as
    // before: ENOSYS is no reason to fail a launch that needs no idmap.)
    let plain = |plan: &LaunchPlan| match clone_workspace(plan, None) {
        Err((errno, _)) if errno == libc::ENOSYS => Ok(Vec::new()),
        other => other.map_err(|(errno, detail)| (Stage::Mounts, errno, detail)),
    };
    let Some(idm) = plan.idmap.clone() else { return plain(plan) };
    let (errno, why) = match try_idmap(plan, &idm) {
        Ok(mounts) => return Ok(mounts),
        Err(e) => e,
    };
    let cwd = plan.cwd.display().to_string();
    plan.idmap = None;
    match idm.fallback {
        IdmapFallback::Required => Err((Stage::Mounts, errno, format!("idmapping the workspace {cwd}: {why}"))),
        IdmapFallback::Owner => {
            let ids = &mut plan.ids;
            let detail = format!(
                "the workspace {cwd} cannot be idmapped ({why}): the cell runs as its owner {}:{} instead of its own \
                 host id {}",
                idm.owner_uid, idm.owner_gid, ids.outside_uid
            );
            if ids.inside_uid == ids.outside_uid {
                (ids.inside_uid, ids.inside_gid) = (idm.owner_uid, idm.owner_gid);
            }
            (ids.outside_uid, ids.outside_gid) = (idm.owner_uid, idm.owner_gid);
            Report::Degraded { mechanism: "workspace_idmap".into(), detail }.send(ctl);
            plain(plan)
        }
        IdmapFallback::Caller => {
            // The identity `run_as = "caller"` names (inside, the cell already is the caller).
            (plan.ids.outside_uid, plan.ids.outside_gid) = (idm.owner_uid, idm.owner_gid);
            plain(plan)
        }
        IdmapFallback::Cell => {
            let detail = format!(
                "the workspace {cwd} cannot be idmapped ({why}): bound as it is; the cell writes as its own host \
                 uid {}",
                plan.ids.outside_uid
            );
            Report::Degraded { mechanism: "workspace_idmap".into(), detail }.send(ctl);
            plain(plan)
        }
    }
}

/// The workspace's binds (the view's steps under the cwd: the cwd itself and any `{cwd}/…`
/// rule), each cloned detached from its source (opened through no symlink) and idmapped with
/// one user namespace mapping `owner_uid` ↔ the cell's host uid (and the gids alike), with the
/// step's flags: `nosuid,nodev`, read-only and `noexec` unless the policy grants them.
fn try_idmap(plan: &LaunchPlan, idm: &IdmapPlan) -> Result<Vec<(PathBuf, OwnedFd)>, (i32, String)> {
    if workspace_steps(plan).is_empty() {
        return Ok(Vec::new());
    }
    let ids = &plan.ids;
    let maps =
        (format!("{} {} 1\n", idm.owner_uid, ids.outside_uid), format!("{} {} 1\n", idm.owner_gid, ids.outside_gid));
    let userns = make_userns(ids.outside_uid, ids.outside_gid, &maps).map_err(|(_, errno, detail)| (errno, detail))?;
    clone_workspace(plan, Some(userns.as_fd()))
}

/// The view's binds of the workspace (the cwd and its `{cwd}/…` rules: opened through no
/// symlink): (path inside, source, is a directory, writable, exec).
fn workspace_steps(plan: &LaunchPlan) -> Vec<(&PathBuf, &PathBuf, bool, bool, bool)> {
    plan.view
        .iter()
        .flat_map(|v| &v.steps)
        .filter_map(|s| match &s.kind {
            StepKind::Bind { source, dir, writable, exec, no_follow: true } => {
                Some((&s.path, source, *dir, *writable, *exec))
            }
            _ => None,
        })
        .collect()
}

/// Each workspace bind cloned detached from its source (opened through no symlink; the clone
/// is of that one mount, none beneath it), idmapped through `userns` where given, with the
/// step's flags: `nosuid,nodev`, read-only and `noexec` unless the policy grants them.
fn clone_workspace(
    plan: &LaunchPlan,
    userns: Option<BorrowedFd<'_>>,
) -> Result<Vec<(PathBuf, OwnedFd)>, (i32, String)> {
    let io = |what: String, e: std::io::Error| (e.raw_os_error().unwrap_or(0), format!("{what}: {e}"));
    let steps = workspace_steps(plan);
    let mut mounts = Vec::with_capacity(steps.len());
    for (path, source, dir, writable, exec) in steps {
        let shown = source.display();
        let fd = sys::open_no_symlinks(source, dir).map_err(|e| (e as i32, format!("opening {shown}: {e}")))?;
        let mnt = sys::open_tree_clone(&fd).map_err(|e| io(format!("open_tree(OPEN_TREE_CLONE) of {shown}"), e))?;
        let what = if userns.is_some() { "mount_setattr(MOUNT_ATTR_IDMAP) of" } else { "mount_setattr of" };
        sys::set_mount_attrs(&mnt, userns, !writable, !exec).map_err(|e| io(format!("{what} {shown}"), e))?;
        mounts.push((path.clone(), mnt));
    }
    Ok(mounts)
}

/// Forward signals to pid 1 until it exits; return its exit code (128 + signal if killed).
fn forward_until_exit(pid1: Pid, sigfd: &SignalFd) -> i32 {
    // pid 1 has its copies of the cell's stdio: the helper's would only keep the cell's stdout
    // open after the program closed its own (see init's `supervise`). Best effort.
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        let _ = sys::stdio_to(&null);
    }
    loop {
        match sigfd.read_signal() {
            Ok(Some(info)) => {
                let signo = info.ssi_signo as i32;
                if signo != libc::SIGCHLD {
                    if let Ok(sig) = Signal::try_from(signo) {
                        let _ = kill(pid1, sig);
                    }
                    continue;
                }
            }
            Ok(None) | Err(nix::Error::EINTR) => {}
            Err(_) => {
                // Cannot read signals any more: just wait for pid 1.
                return status_code(waitpid(pid1, None));
            }
        }
        match waitpid(pid1, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => continue,
            other => return status_code(other),
        }
    }
}

fn status_code(status: nix::Result<WaitStatus>) -> i32 {
    match status {
        Ok(WaitStatus::Exited(_, code)) => code,
        Ok(WaitStatus::Signaled(_, sig, _)) => 128 + sig as i32,
        _ => 125,
    }
}
