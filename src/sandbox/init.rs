//! Inside the cell: pid 1 and the payload's setup recipe.
//!
//! pid 1 (like bubblewrap's init) waits for the helper to write its id maps, builds the mount,
//! network and hostname view, forks the payload, relays the payload's setup result, then
//! forwards signals and reaps orphans until the payload exits. When pid 1 of a pid namespace
//! exits, the kernel kills everything left in it; the cgroup catches the rest.
//!
//! The payload applies, in this order (seccomp last, so the recipe itself is not filtered):
//! signal mask reset → new session (with `tty`: the pty slave on fd 0 becomes its controlling
//! terminal) → cwd → rlimits → bounding set dropped (needs CAP_SETPCAP, so before the id
//! change) → groups/gid/uid → remaining capabilities cleared → no_new_privs →
//! Landlock (after the mounts: rules bind to inodes of the final view) → seccomp → execve.
//! A failing step writes `{stage, errno}` to the exec pipe and exits 127; end of file on the
//! pipe (close-on-exec) tells pid 1 the exec succeeded.
//!
//! Fail closed: pid 1 drops its own privileges (not dumpable, the payload's ids, no
//! capabilities) while the payload sets itself up, and the payload waits for pid 1's word (the
//! go pipe) before its Landlock and seccomp steps; any failed step on either side ends the
//! launch with its stage, and nothing of the payload's own has run.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::Path;

use caps::CapSet;
use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{Gid, Pid, Uid};

use super::helper::FORWARDED;
use super::landlock_rules;
use super::plan::{LaunchPlan, RlimitKind, MEMFD_NOEXEC_SYSCTL};
use super::proto::{Report, Stage};
use super::sys;
use super::view;

/// A failed step: the stage, the errno and a human detail.
struct StepError(Stage, i32, String);

/// Run one step: a failure becomes a [`StepError`] naming the stage, the errno and `what`.
fn step<T, E: std::fmt::Display + ErrnoOf>(stage: Stage, what: &str, r: Result<T, E>) -> Result<T, StepError> {
    r.map_err(|e| StepError(stage, e.errno(), format!("{what}: {e}")))
}

/// The errno behind an error from nix, std or caps (0 when there is none).
trait ErrnoOf {
    fn errno(&self) -> i32;
}
impl ErrnoOf for Errno {
    fn errno(&self) -> i32 {
        *self as i32
    }
}
impl ErrnoOf for std::io::Error {
    fn errno(&self) -> i32 {
        self.raw_os_error().unwrap_or(0)
    }
}
impl ErrnoOf for caps::errors::CapsError {
    fn errno(&self) -> i32 {
        libc::EPERM
    }
}

/// pid 1 of the cell. Returns the exit code of pid 1 (the helper passes it on).
pub fn pid1(plan: &LaunchPlan, sync_r: &OwnedFd, ctl: &OwnedFd, workspace: &[(std::path::PathBuf, OwnedFd)]) -> i32 {
    // Wait until the helper has written the id maps (1 byte), or died (EOF).
    let mut byte = [0u8; 1];
    if !matches!(nix::unistd::read(sync_r, &mut byte), Ok(1)) {
        return 125;
    }
    match prepare_view(plan, workspace).and_then(|()| await_proxy_listener(plan, ctl)) {
        Ok(()) => supervise(plan, ctl),
        Err(StepError(stage, errno, detail)) => {
            Report::SetupFailed { stage, errno, detail }.send(ctl);
            125
        }
    }
}

/// Mounts, loopback and hostname, done by pid 1 with the capabilities it holds over the new
/// namespaces.
fn prepare_view(plan: &LaunchPlan, workspace: &[(std::path::PathBuf, OwnedFd)]) -> Result<(), StepError> {
    set_fs_ids(plan);
    if plan.ns.mount {
        mount_view(plan, workspace)?;
    }
    network_and_name(plan)
}

/// Files pid 1 creates (mount points in the private tmp) must belong to a mapped id;
/// setfsuid/setfsgid change only the filesystem ids and keep CAP_SYS_ADMIN.
fn set_fs_ids(plan: &LaunchPlan) {
    if plan.ns.user {
        nix::unistd::setfsgid(Gid::from_raw(plan.ids.inside_gid));
        nix::unistd::setfsuid(Uid::from_raw(plan.ids.inside_uid));
    }
}

fn network_and_name(plan: &LaunchPlan) -> Result<(), StepError> {
    if plan.loopback {
        step(Stage::Network, "bringing lo up", sys::loopback_up())?;
    }
    if plan.ns.uts {
        step(Stage::Hostname, "sethostname", nix::unistd::sethostname(&plan.hostname))?;
    }
    Ok(())
}

/// pid 1 of a cell built before its request (`[pool] prewarm`): the same recipe as [`pid1`],
/// cut where the request is needed. Before it: the namespaces, `lo`, the hostname, the proxy
/// listener and the host part of the view, pivoted into (`/` a slave while it is built, so
/// none of our mounts leaves; made private at the request).
/// Then one byte on `hand` tells the helper it is ready, and the helper hands over the
/// request: its plan and the cwd's binds as detached mounts (fds; idmapped where planned),
/// which the helper makes outside the cell. pid 1 attaches them, seals the root, and starts
/// the payload as in a cell started cold. A cell takes exactly one request: there is no loop
/// here.
pub fn pid1_warm(warm: &LaunchPlan, sync_r: &OwnedFd, ctl: &OwnedFd, hand: &OwnedFd) -> i32 {
    let mut byte = [0u8; 1];
    if !matches!(nix::unistd::read(sync_r, &mut byte), Ok(1)) {
        return 125;
    }
    let built = prepare_base(warm)
        .and_then(|()| await_proxy_listener(warm, ctl))
        .and_then(|()| step(Stage::Init, "telling the helper the cell is built", nix::unistd::write(hand, &[1u8])))
        .and_then(|_| receive_request(hand))
        .and_then(|(plan, workspace)| {
            if plan.ns.mount {
                make_root_private()?;
                if let (Some(full), Some(base)) = (&plan.view, &warm.view) {
                    view::finish(full, base, plan.ids.inside_uid, plan.ids.inside_gid, &workspace)
                        .map_err(|e| StepError(Stage::Mounts, e.errno, e.what))?;
                }
                memfd_noexec(&plan)?;
            }
            Ok(plan)
        });
    match built {
        Ok(plan) => supervise(&plan, ctl),
        Err(StepError(stage, errno, detail)) => {
            Report::SetupFailed { stage, errno, detail }.send(ctl);
            125
        }
    }
}

/// The part of [`prepare_view`] a pre-built cell does before its request.
fn prepare_base(warm: &LaunchPlan) -> Result<(), StepError> {
    set_fs_ids(warm);
    if warm.ns.mount {
        let none: Option<&str> = None;
        let slave = mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_SLAVE, none);
        step(Stage::Mounts, "making / a slave (MS_REC|MS_SLAVE)", slave)?;
        if let Some(base) = &warm.view {
            view::build_base(base, warm.ids.inside_uid, warm.ids.inside_gid)
                .map_err(|e| StepError(Stage::Mounts, e.errno, e.what))?;
        }
    }
    network_and_name(warm)
}

/// The request, as the helper hands it over: one byte carrying the workspace's mounts
/// (SCM_RIGHTS), then one JSON line ([`Handoff`]).
fn receive_request(hand: &OwnedFd) -> Result<(LaunchPlan, Vec<(std::path::PathBuf, OwnedFd)>), StepError> {
    use std::io::{BufRead, Read};
    let mut byte = [0u8; 1];
    let (n, fds) = step(Stage::Plan, "receiving the request", sys::receive_fds::<MAX_HANDOFF_FDS>(hand, &mut byte))?;
    if n == 0 {
        return Err(StepError(Stage::Plan, 0, "the helper closed the hand-off socket".into()));
    }
    let file = std::fs::File::from(step(Stage::Plan, "dup", hand.try_clone())?);
    let mut line = String::new();
    step(Stage::Plan, "reading the request", std::io::BufReader::new(file).take(16 << 20).read_line(&mut line))?;
    let handoff: Handoff = serde_json::from_str(&line)
        .map_err(|e| StepError(Stage::Plan, 0, format!("malformed request hand-off: {e}")))?;
    if handoff.workspace.len() != fds.len() {
        let detail = format!("{} workspace mounts named, {} received", handoff.workspace.len(), fds.len());
        return Err(StepError(Stage::Plan, 0, detail));
    }
    Ok((handoff.plan, handoff.workspace.into_iter().zip(fds).collect()))
}

/// Most workspace mounts one hand-off carries (the cwd and its `{cwd}/…` rules).
pub const MAX_HANDOFF_FDS: usize = 64;

/// The request of a pre-built cell, from its helper to its pid 1.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Handoff {
    pub plan: LaunchPlan,
    /// Where each fd sent with the hand-off goes (in order).
    pub workspace: Vec<std::path::PathBuf>,
}

/// `proxy` policies: tell the launcher that `lo` is up, and wait until it has opened the egress
/// proxy's listener in this namespace (one byte on the control socket), so the payload's first
/// connection finds it. End of file: the launcher gave up on the cell.
fn await_proxy_listener(plan: &LaunchPlan, ctl: &OwnedFd) -> Result<(), StepError> {
    if plan.proxy_port.is_none() {
        return Ok(());
    }
    Report::NetnsReady.send(ctl);
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(ctl, &mut byte) {
            Ok(1) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Ok(_) => return Err(StepError(Stage::Network, 0, "the launcher closed the control socket".into())),
            Err(e) => return Err(StepError(Stage::Network, e as i32, format!("waiting for the proxy listener: {e}"))),
        }
    }
}

/// Mount recipe: stop propagation to the host → the cell's own view ([`view::build`]: only
/// what the policy grants, pivoted into) → `vm.memfd_noexec = 2` in the cell's pid namespace.
fn mount_view(plan: &LaunchPlan, workspace: &[(std::path::PathBuf, OwnedFd)]) -> Result<(), StepError> {
    make_root_private()?;
    if let Some(v) = &plan.view {
        view::build(v, plan.ids.inside_uid, plan.ids.inside_gid, workspace)
            .map_err(|e| StepError(Stage::Mounts, e.errno, e.what))?;
    }
    memfd_noexec(plan)
}

/// Stop propagation to and from the host, before the view is built.
fn make_root_private() -> Result<(), StepError> {
    let none: Option<&str> = None;
    let private = mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none);
    step(Stage::Mounts, "making / private (MS_REC|MS_PRIVATE)", private)
}

fn memfd_noexec(plan: &LaunchPlan) -> Result<(), StepError> {
    if plan.memfd_noexec {
        // Per pid namespace, and never lowered by a child namespace: no memfd of this cell can
        // be made executable (memfd_create + fexecve bypasses every noexec mount).
        step(Stage::Mounts, "vm.memfd_noexec = 2", std::fs::write(MEMFD_NOEXEC_SYSCTL, b"2"))?;
    }
    Ok(())
}

/// Fork the payload, relay its setup result, then forward signals and reap until it exits.
fn supervise(plan: &LaunchPlan, ctl: &OwnedFd) -> i32 {
    let mut mask = SigSet::empty();
    FORWARDED.iter().for_each(|s| mask.add(*s));
    mask.add(Signal::SIGCHLD);
    // Blocked signals are queued even for a namespace's init (which otherwise drops signals
    // it has no handler for), so signalfd sees what the helper forwards.
    let prepared = mask.thread_block().and_then(|()| SignalFd::new(&mask));
    let sigfd = match prepared {
        Ok(fd) => fd,
        Err(e) => {
            Report::SetupFailed { stage: Stage::Init, errno: e as i32, detail: format!("signals in pid 1: {e}") }
                .send(ctl);
            return 125;
        }
    };
    if !plan.ns.pid {
        // Not a real init: become the reaper of the payload's orphans anyway.
        let _ = nix::sys::prctl::set_child_subreaper(true);
    }
    // For giving up our copies of the cell's stdio once the payload runs (close-on-exec: the
    // payload does not inherit it). Best effort: without it pid 1 keeps them.
    let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null").ok();
    // exec pipe: the payload's setup result (EOF on exec); go pipe: pid 1's word that it has
    // dropped its own privileges, which the payload waits for before it restricts itself.
    let pipes = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .and_then(|exec| nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map(|go| (exec, go)));
    let ((exec_r, exec_w), (go_r, go_w)) = match pipes {
        Ok(p) => p,
        Err(e) => {
            Report::SetupFailed { stage: Stage::Init, errno: e as i32, detail: format!("pipes: {e}") }.send(ctl);
            return 125;
        }
    };
    let payload = match sys::fork_single_threaded() {
        Ok(Some(pid)) => pid,
        Ok(None) => {
            drop((exec_r, go_w));
            let StepError(stage, errno, detail) = payload(plan, &go_r).unwrap_err();
            Report::SetupFailed { stage, errno, detail }.send(&exec_w);
            std::process::exit(127);
        }
        Err(e) => {
            Report::SetupFailed { stage: Stage::Init, errno: e as i32, detail: format!("fork: {e}") }.send(ctl);
            return 125;
        }
    };
    drop((exec_w, go_r));
    // pid 1 keeps no way into the host: not dumpable (so /proc/1/{mem,exe,environ,fd} and
    // ptrace are closed to the payload), the payload's ids, no capabilities. Fail closed, as
    // nsjail and bubblewrap do: if any step fails, the payload (waiting on the go pipe, so it
    // has run nothing of its own) is killed and the launch fails with the stage.
    let dropped = drop_privileges(plan).and_then(|()| {
        step(Stage::Init, "releasing the payload (go pipe)", nix::unistd::write(&go_w, &[1u8]).map(drop))
    });
    if let Err(StepError(stage, errno, detail)) = dropped {
        let _ = kill(payload, Signal::SIGKILL);
        let _ = waitpid(payload, None);
        Report::SetupFailed { stage, errno, detail: format!("pid 1: {detail}") }.send(ctl);
        return 125;
    }
    drop(go_w);
    if !relay_exec_result(&exec_r, ctl) {
        let _ = waitpid(payload, None);
        return 125;
    }
    // The payload has its stdio; pid 1 needs none. Holding copies would keep the cell's
    // stdout open after the program closed its own (a session that can no longer answer would
    // look alive to the daemon until its command timed out), and stdin open after it ended.
    if let Some(null) = null {
        let _ = sys::stdio_to(&null);
    }
    reap_until_payload_exits(payload, &sigfd, ctl)
}

/// Copy the payload's reports to the launcher; true if it exec'd (EOF without a failure).
fn relay_exec_result(exec_r: &OwnedFd, ctl: &OwnedFd) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match nix::unistd::read(exec_r, &mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    let mut ok = true;
    for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        if let Some(report) = Report::parse(line) {
            ok &= !matches!(report, Report::SetupFailed { .. });
            report.send(ctl);
        }
    }
    if ok {
        Report::Exec.send(ctl);
    }
    ok
}

/// pid 1 gives up its privileges once the payload is forked: from then on it only waits,
/// signals and reports. Every step must succeed.
///
/// Not dumpable both before and after the change of ids: the kernel resets the flag to
/// `fs.suid_dumpable` when the effective ids change (`commit_creds`), so where that sysctl is
/// 1 pid 1 came out of `setresuid` dumpable under the payload's own uid (its `/proc/1/environ`
/// and `mem` readable, its control socket open to `pidfd_getfd`, to the payload). Checked
/// after, with `PR_GET_DUMPABLE`.
fn drop_privileges(plan: &LaunchPlan) -> Result<(), StepError> {
    step(Stage::Init, "prctl(PR_SET_DUMPABLE, 0)", nix::sys::prctl::set_dumpable(false))?;
    become_inside_ids(plan)?;
    step(Stage::Init, "prctl(PR_SET_DUMPABLE, 0) after setresuid", nix::sys::prctl::set_dumpable(false))?;
    match nix::sys::prctl::get_dumpable() {
        Ok(false) => Ok(()),
        Ok(true) => step(Stage::Init, "prctl(PR_GET_DUMPABLE) after setresuid", Err(Errno::EPERM)),
        Err(e) => step(Stage::Init, "prctl(PR_GET_DUMPABLE) after setresuid", Err(e)),
    }
}

/// The cell's inside uid and gid, no supplementary groups, then no capabilities left in any
/// set: what pid 1 and the payload both end up with.
fn become_inside_ids(plan: &LaunchPlan) -> Result<(), StepError> {
    let (uid, gid) = (Uid::from_raw(plan.ids.inside_uid), Gid::from_raw(plan.ids.inside_gid));
    step(Stage::Identity, "setgroups []", nix::unistd::setgroups(&[]))?;
    step(Stage::Identity, &format!("setresgid {gid}"), nix::unistd::setresgid(gid, gid, gid))?;
    step(Stage::Identity, &format!("setresuid {uid}"), nix::unistd::setresuid(uid, uid, uid))?;
    for set in [CapSet::Ambient, CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        step(Stage::Capabilities, &format!("clearing {set:?}"), caps::clear(None, set))?;
    }
    Ok(())
}

fn reap_until_payload_exits(payload: Pid, sigfd: &SignalFd, ctl: &OwnedFd) -> i32 {
    loop {
        if let Ok(Some(info)) = sigfd.read_signal() {
            let signo = info.ssi_signo as i32;
            if signo != libc::SIGCHLD {
                if let Ok(sig) = Signal::try_from(signo) {
                    let _ = kill(payload, sig);
                }
                continue;
            }
        }
        // Reap everything that exited (orphans are re-parented to us).
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == payload => {
                    Report::PayloadExit { code: Some(code), signal: None }.send(ctl);
                    return code;
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == payload => {
                    Report::PayloadExit { code: None, signal: Some(sig as i32) }.send(ctl);
                    return 128 + sig as i32;
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(_) => return 125,
            }
        }
    }
}

/// The payload's recipe. Returns only on failure (success ends in execve). `go` delivers one
/// byte once pid 1 has dropped its privileges (end of file: pid 1 failed and will kill us).
fn payload(plan: &LaunchPlan, go: &OwnedFd) -> Result<std::convert::Infallible, StepError> {
    // Everything exec needs, allocated before the first restriction.
    let cstr = |s: &str, what: &str| {
        CString::new(s).map_err(|_| StepError(Stage::Exec, libc::EINVAL, format!("{what} contains a NUL byte")))
    };
    let exe = cstr(&plan.exe.to_string_lossy(), "binary path")?;
    let argv = plan.argv.iter().map(|a| cstr(a, "argument")).collect::<Result<Vec<_>, _>>()?;
    let env = plan.env.iter().map(|e| cstr(e, "environment entry")).collect::<Result<Vec<_>, _>>()?;

    // Dispositions first (an ignored signal stays ignored across exec), then the mask.
    sys::default_signal_dispositions();
    step(Stage::Init, "unblocking signals", SigSet::all().thread_unblock())?;
    // A new session: no controlling terminal, so TIOCSTI and terminal signals cannot reach
    // outside the cell.
    step(Stage::Init, "setsid", nix::unistd::setsid())?;
    if plan.tty {
        // `tty = true`: stdin is the cell's own pty slave (opened by the launcher, nobody's
        // controlling terminal yet); make it this new session's, as a login would. It leads
        // nowhere outside the cell: the master is held by the launcher only.
        step(Stage::Tty, "TIOCSCTTY on stdin (the pty slave)", sys::set_controlling_tty(libc::STDIN_FILENO))?;
    }
    // By fd, through no symlink: the cwd was checked symlink-free inside the workdir roots, and
    // whoever can write there (another cell) must not redirect it since.
    let cwd = plan.cwd.display();
    let dir =
        step(Stage::Cwd, &format!("opening {cwd} (no symlinks followed)"), sys::open_no_symlinks(&plan.cwd, true))?;
    step(Stage::Cwd, &format!("fchdir to {cwd}"), nix::unistd::fchdir(&dir))?;
    drop(dir);
    for r in &plan.rlimits {
        let res = match r.kind {
            RlimitKind::Nofile => Resource::RLIMIT_NOFILE,
            RlimitKind::Core => Resource::RLIMIT_CORE,
            RlimitKind::Fsize => Resource::RLIMIT_FSIZE,
        };
        step(Stage::Rlimits, &format!("setrlimit {:?} {}", r.kind, r.limit), setrlimit(res, r.limit, r.limit))?;
    }
    step(Stage::Capabilities, "dropping the bounding set", sys::drop_bounding_set(plan.cap_last_cap))?;
    become_inside_ids(plan)?;
    step(Stage::NoNewPrivs, "prctl(PR_SET_NO_NEW_PRIVS)", nix::sys::prctl::set_no_new_privs())?;
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(go, &mut byte) {
            Ok(1) => break,
            Err(Errno::EINTR) => continue,
            Ok(_) => return Err(StepError(Stage::Init, 0, "pid 1 did not drop its privileges".into())),
            Err(e) => return Err(StepError(Stage::Init, e as i32, format!("waiting for pid 1: {e}"))),
        }
    }
    step(Stage::Init, "close_range(3.., CLOEXEC)", sys::cloexec_from(3))?;
    if let Some(ll) = &plan.landlock {
        landlock_rules::restrict_self(ll).map_err(|e| StepError(Stage::Landlock, e.errno(), e.to_string()))?;
    }
    for (i, filter) in plan.seccomp.filters.iter().enumerate() {
        step(Stage::Seccomp, &format!("installing seccomp filter {i}"), sys::install_seccomp(filter))?;
    }
    let err = nix::unistd::execve(&exe, &argv, &env).unwrap_err();
    Err(StepError(Stage::Exec, err as i32, format!("execve {}: {err}", Path::new(&plan.exe).display())))
}
