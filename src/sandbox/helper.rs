//! The cell helper: a fresh, single-threaded re-exec of the cellkeep binary
//! (`cellkeep __cell-helper`), already placed in the cell's cgroup by the launcher.
//!
//! Why a helper process instead of a `pre_exec` closure in the daemon: after `fork` in a
//! multi-threaded process only async-signal-safe calls are allowed, and the setup (namespaces,
//! id maps, mounts, Landlock) needs allocation, files and error values. A fresh process that
//! never starts a thread may fork and run ordinary Rust, so the whole recipe is plain, testable
//! code; it costs one extra `execve`.
//!
//! Sequence: read the [`LaunchPlan`] from fd 3 → `setsid` (terminal signals reach only the
//! launcher, which forwards them) → `clone` pid 1 of the cell into the new namespaces → write
//! its uid/gid maps from here, the parent user namespace (the only side allowed to map an
//! arbitrary unprivileged id) → release it → forward signals until it exits, then exit with
//! its status.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::OwnedFd;

use nix::sched::CloneFlags;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::init;
use super::plan::LaunchPlan;
use super::proto::{Report, Stage};
use super::sys;

/// Signals the helper passes on to the cell (SIGKILL cannot be caught: the launcher kills the
/// whole cgroup for that).
pub const FORWARDED: [Signal; 6] =
    [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGUSR1, Signal::SIGUSR2];

/// Entry point of `cellkeep __cell-helper`; never returns.
pub fn main() -> ! {
    let fd = std::env::args().nth(2).and_then(|a| a.parse::<std::os::fd::RawFd>().ok());
    // SAFETY: the number is the helper's second argument, the control socket the launcher left
    // open (CLOEXEC cleared) for this fresh process; this is its only claim, made before the
    // helper opens anything, so nothing else in this process owns the fd.
    #[allow(unsafe_code)]
    let ctl = match fd.map(|fd| unsafe { sys::take_helper_fd(fd) }) {
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
    let code = match read_plan(&ctl) {
        Ok(plan) => run(&plan, &ctl),
        Err(detail) => {
            Report::SetupFailed { stage: Stage::Plan, errno: 0, detail }.send(&ctl);
            125
        }
    };
    std::process::exit(code)
}

fn read_plan(ctl: &OwnedFd) -> Result<LaunchPlan, String> {
    let file = std::fs::File::from(ctl.try_clone().map_err(|e| e.to_string())?);
    let mut line = String::new();
    // The plan is one line; a bound keeps a confused launcher from making us read forever.
    BufReader::new(file).take(16 << 20).read_line(&mut line).map_err(|e| e.to_string())?;
    serde_json::from_str(&line).map_err(|e| format!("malformed launch plan: {e}"))
}

fn clone_flags(plan: &LaunchPlan) -> CloneFlags {
    let ns = &plan.ns;
    let mut flags = CloneFlags::empty();
    for (on, flag) in [
        (ns.user, CloneFlags::CLONE_NEWUSER),
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
fn run(plan: &LaunchPlan, ctl: &OwnedFd) -> i32 {
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

    let mut sync_w = Some(sync_w);
    let child = {
        let sync_w_in_child = &mut sync_w;
        let sync_r = &sync_r;
        sys::clone_into_namespaces(
            clone_flags(plan),
            Box::new(move || {
                // In pid 1: close our copy of the write end so a dead helper reads as EOF.
                sync_w_in_child.take();
                init::pid1(plan, sync_r, ctl) as isize
            }),
        )
    };
    let pid1 = match child {
        Ok(pid) => pid,
        Err(e) => return fail(Stage::Namespaces, e, "clone into new namespaces"),
    };
    drop(sync_r);

    if plan.ns.user {
        if let Err(e) = write_id_maps(pid1, plan) {
            let _ = kill(pid1, Signal::SIGKILL);
            let _ = waitpid(pid1, None);
            Report::SetupFailed {
                stage: Stage::IdMap,
                errno: e.raw_os_error().unwrap_or(0),
                detail: format!("writing uid/gid maps of pid {pid1}: {e}"),
            }
            .send(ctl);
            return 125;
        }
    }
    // Release pid 1: the maps are in place.
    if let Some(w) = sync_w.take() {
        let _ = nix::unistd::write(&w, &[1u8]);
    }
    forward_until_exit(pid1, &sigfd)
}

/// `/proc/PID/uid_map` and `gid_map`: one line each, `inside outside 1`. Written by the
/// helper, which holds CAP_SETUID/CAP_SETGID in the parent user namespace, so the child's
/// `setgroups` stays allowed (it needs it to drop supplementary groups).
fn write_id_maps(pid: Pid, plan: &LaunchPlan) -> std::io::Result<()> {
    let ids = &plan.ids;
    std::fs::write(format!("/proc/{pid}/uid_map"), format!("{} {} 1\n", ids.inside_uid, ids.outside_uid))?;
    std::fs::write(format!("/proc/{pid}/gid_map"), format!("{} {} 1\n", ids.inside_gid, ids.outside_gid))?;
    Ok(())
}

/// Forward signals to pid 1 until it exits; return its exit code (128 + signal if killed).
fn forward_until_exit(pid1: Pid, sigfd: &SignalFd) -> i32 {
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
