//! The zygote: a single-threaded copy of `cellkeep daemon`, forked before its runtime (or any
//! thread) exists, from which cell helpers are forked instead of spawned: no `execve`, no
//! loader, no relocations of a large binary and no Rust start-up per cell (~1–1.5 ms of CPU
//! a launch on this host; issue 18). `cellkeep run` starts one cell and has none: there the
//! helper's exec overlaps the launcher's own work, and a zygote would only add a fork.
//!
//! Protocol, over a `SOCK_SEQPACKET` socket pair: the launcher sends one message per helper,
//! one byte and four fds (SCM_RIGHTS): the helper's stdin, stdout, stderr and its control
//! socket, and on cgroup v2 a fifth, the cell's cgroup directory, which the helper is
//! started in (`CLONE_INTO_CGROUP`: no attach by pid afterwards, whose global lock waits for
//! an RCU grace period). The zygote forks with `clone3(CLONE_PARENT | CLONE_PIDFD)` — the helper is the
//! *launcher's* child, so the launcher reaps it and reads its status as it would a spawned
//! one — and answers with the helper's pid (4 bytes) and its pidfd. In the helper the four
//! fds become 0–3 and every other fd is closed; the environment is empty (the zygote cleared
//! its own), the signal mask is empty; dispositions are the launcher's (SIGPIPE ignored, as
//! in every Rust program), which the payload resets to the defaults right before its exec
//! (`sys::default_signal_dispositions`); then [`helper::run_with_ctl`].
//!
//! The zygote holds nothing of the launcher's but the memory image of its first moments (the
//! command line): its other fds are closed at once, it dies with the launcher
//! (`PR_SET_PDEATHSIG`, and end of file on its socket). If it is gone, or a request fails,
//! the launcher spawns the helper as before ([`super::launch`]).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::ExitStatus;
use std::sync::{Mutex, OnceLock};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use tokio::io::unix::AsyncFd;

use super::{helper, sys};

/// The launcher's end of this process's zygote, if one was started ([`start`]).
static ZYGOTE: OnceLock<Zygote> = OnceLock::new();

/// The launcher's end: requests are one message each way, one at a time.
#[derive(Debug)]
pub struct Zygote {
    sock: Mutex<OwnedFd>,
    pid: nix::unistd::Pid,
    /// Set at the first failure: the zygote is killed and reaped, and never asked again.
    gone: std::sync::atomic::AtomicBool,
}

/// Fork this process's zygote. Call before any thread exists (it refuses otherwise); a
/// failure only means helpers are spawned, and is returned for the log.
pub fn start() -> Result<(), String> {
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| format!("socketpair: {e}"))?;
    match sys::fork_single_threaded().map_err(|e| format!("fork: {e}"))? {
        Some(pid) => {
            drop(theirs);
            // A zygote that stops answering (stopped, wedged) costs a launch 5 s, once: the
            // error marks it gone and helpers are spawned from then on.
            let _ = nix::sys::socket::setsockopt(
                &ours,
                nix::sys::socket::sockopt::ReceiveTimeout,
                &nix::sys::time::TimeVal::new(5, 0),
            );
            let _ = ZYGOTE.set(Zygote { sock: Mutex::new(ours), pid, gone: false.into() });
            Ok(())
        }
        None => {
            drop(ours);
            serve(theirs)
        }
    }
}

/// Request byte: the fifth fd is the cgroup v2 directory to start the helper in.
const INTO_CGROUP: u8 = 2;

/// This process's zygote, if [`start`] made one.
pub fn get() -> Option<&'static Zygote> {
    ZYGOTE.get()
}

/// End this process's zygote, if any, and reap it: the launcher calls this before it exits,
/// so the zygote (which the kernel would kill moments later: `PR_SET_PDEATHSIG`) never
/// outlives it. Helpers forked since are not affected.
pub fn stop() {
    let Some(z) = ZYGOTE.get() else { return };
    if z.gone.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    if let Ok(sock) = z.sock.lock() {
        // End of stream for the zygote's recvmsg: it exits.
        let _ = nix::sys::socket::shutdown(sock.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
    let _ = nix::sys::wait::waitpid(z.pid, None);
}

/// The zygote's loop; never returns.
fn serve(sock: OwnedFd) -> ! {
    let parent = nix::unistd::getppid();
    // Die with the launcher; if it is already gone, stop now.
    if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).is_err() || nix::unistd::getppid() != parent {
        std::process::exit(0);
    }
    let _ = nix::sys::prctl::set_name(c"cellkeep-zygote");
    // Out of the launcher's session: a terminal's SIGINT or SIGHUP (`cellkeep run`, a daemon
    // in the foreground) is not the zygote's, and its signal dispositions stay the defaults
    // the helpers inherit.
    let _ = nix::unistd::setsid();
    for (key, _) in std::env::vars_os() {
        std::env::remove_var(key);
    }
    // Keep stdio (for a panic's message) and the socket, as fds 0–3; close everything else
    // the launcher had open at the fork (a socket-activated listener, the log).
    let kept = [stdio_or_null(0), stdio_or_null(1), stdio_or_null(2)].into_iter().collect::<Option<Vec<_>>>();
    let Some(mut kept) = kept else { std::process::exit(1) };
    kept.push(sock);
    let Ok(sock) = sys::install_fds(kept).and_then(|()| sys::own_installed_fd(3).map_err(|_| nix::errno::Errno::EBADF))
    else {
        std::process::exit(1)
    };
    loop {
        let mut byte = [0u8; 1];
        let mut fds = match sys::receive_fds::<5>(&sock, &mut byte) {
            Ok((0, _)) => std::process::exit(0),
            Ok((_, fds)) if fds.len() == 4 + usize::from(byte[0] == INTO_CGROUP) => fds,
            Ok(_) => {
                // A malformed request (or fds lost to our fd limit: MSG_CTRUNC): its fds are
                // closed here, and the launcher gets an error, not silence.
                let _ = sys::send_fds(&sock, &(-libc::EINVAL).to_ne_bytes(), &[]);
                continue;
            }
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(_) => std::process::exit(1),
        };
        let cgroup = if byte[0] == INTO_CGROUP { fds.pop() } else { None };
        let cloned = sys::clone_parent_pidfd(cgroup.as_ref());
        drop(cgroup);
        match cloned {
            Ok(None) => {
                drop(sock);
                if sys::install_fds(fds).is_err() {
                    std::process::exit(125);
                }
                let _ = nix::sys::prctl::set_name(c"cellkeep-helper");
                match sys::own_installed_fd(3) {
                    Ok(ctl) => helper::run_with_ctl(ctl),
                    Err(_) => std::process::exit(125),
                }
            }
            Ok(Some((pid, pidfd))) => {
                drop(fds);
                let _ = sys::send_fds(&sock, &pid.as_raw().to_ne_bytes(), &[pidfd.as_raw_fd()]);
            }
            Err(e) => {
                drop(fds);
                let _ = sys::send_fds(&sock, &(-(e as i32)).to_ne_bytes(), &[]);
            }
        }
    }
}

/// The zygote's fd `n` of stdio: its stderr is the launcher's (for a panic's message, the
/// journal under systemd), or /dev/null where that is closed; stdin and stdout are /dev/null
/// (the zygote holds none of the caller's pipes open).
fn stdio_or_null(n: std::os::fd::RawFd) -> Option<OwnedFd> {
    let null = || std::fs::OpenOptions::new().read(true).write(true).open("/dev/null").map(OwnedFd::from);
    match n {
        2 => std::io::stderr().as_fd().try_clone_to_owned().or_else(|_| null()).ok(),
        _ => null().ok(),
    }
}

/// A helper process: forked by the zygote, or spawned.
pub struct Forked {
    pid: u32,
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
    /// Started in the cell's cgroup (`CLONE_INTO_CGROUP`): nothing to attach.
    in_cgroup: bool,
}

impl std::fmt::Debug for Forked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forked").field("pid", &self.pid).field("status", &self.status).finish()
    }
}

impl Zygote {
    /// A helper forked with `stdio` as its fds 0–2 and `ctl` as 3, started in the cgroup v2
    /// directory `cgroup` when given (`CLONE_INTO_CGROUP`). Blocks for the fork (~0.2 ms);
    /// `Err`: the zygote is gone (from now on for good), spawn instead.
    pub fn fork_helper(
        &self,
        stdio: [&OwnedFd; 3],
        ctl: &OwnedFd,
        cgroup: Option<&OwnedFd>,
    ) -> std::io::Result<Forked> {
        use std::sync::atomic::Ordering;
        if self.gone.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("the zygote is gone"));
        }
        let forked = self.request(stdio, ctl, cgroup);
        if forked.is_err() && !self.gone.swap(true, Ordering::Relaxed) {
            // Dead (or confused): make sure it is gone, and reap it (it is our child).
            let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(self.pid, None);
        }
        forked
    }

    fn request(&self, stdio: [&OwnedFd; 3], ctl: &OwnedFd, cgroup: Option<&OwnedFd>) -> std::io::Result<Forked> {
        let sock = self.sock.lock().map_err(|_| std::io::Error::other("zygote lock poisoned"))?;
        let mut fds = vec![stdio[0].as_raw_fd(), stdio[1].as_raw_fd(), stdio[2].as_raw_fd(), ctl.as_raw_fd()];
        fds.extend(cgroup.map(|c| c.as_raw_fd()));
        sys::send_fds(&*sock, &[if cgroup.is_some() { INTO_CGROUP } else { 1 }], &fds)?;
        let mut pid = [0u8; 4];
        let (n, mut got) = sys::receive_fds::<1>(&*sock, &mut pid)?;
        drop(sock);
        let pid = i32::from_ne_bytes(pid);
        match (n, got.pop()) {
            (4, Some(pidfd)) if pid > 0 => {
                let in_cgroup = cgroup.is_some();
                Ok(Forked { pid: pid as u32, pidfd: Some(sys::async_fd(pidfd)?), status: None, in_cgroup })
            }
            (4, _) if pid < 0 => Err(std::io::Error::from_raw_os_error(-pid)),
            _ => Err(std::io::Error::other("the zygote is gone")),
        }
    }
}

impl Forked {
    /// The helper's pid until it is reaped.
    pub fn id(&self) -> Option<u32> {
        self.status.is_none().then_some(self.pid)
    }

    /// Wait for the helper to exit and reap it (its pidfd turns readable when it exits).
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let Some(pidfd) = &self.pidfd else { return Err(std::io::Error::other("helper already reaped")) };
        loop {
            let mut ready = pidfd.readable().await?;
            match reap(pidfd.get_ref(), false)? {
                Some(status) => {
                    self.status = Some(status);
                    self.pidfd = None;
                    return Ok(status);
                }
                None => ready.clear_ready(),
            }
        }
    }

    /// Whether it was started in its cell's cgroup (`CLONE_INTO_CGROUP`).
    pub fn in_cgroup(&self) -> bool {
        self.in_cgroup
    }

    /// SIGKILL (no-op once reaped).
    pub fn start_kill(&mut self) -> std::io::Result<()> {
        match &self.pidfd {
            Some(pidfd) if self.status.is_none() => sys::pidfd_kill(pidfd.get_ref()),
            _ => Ok(()),
        }
    }
}

/// `waitid(P_PIDFD, WEXITED [| WNOHANG])` as an [`ExitStatus`]; `None`: still running.
fn reap(pidfd: &OwnedFd, block: bool) -> std::io::Result<Option<ExitStatus>> {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    use std::os::unix::process::ExitStatusExt;
    let mut flags = WaitPidFlag::WEXITED;
    if !block {
        flags |= WaitPidFlag::WNOHANG;
    }
    loop {
        return match waitid(Id::PIDFd(pidfd.as_fd()), flags) {
            Ok(WaitStatus::Exited(_, code)) => Ok(Some(ExitStatus::from_raw((code & 0xff) << 8))),
            Ok(WaitStatus::Signaled(_, sig, core)) => {
                Ok(Some(ExitStatus::from_raw(sig as i32 | if core { 0x80 } else { 0 })))
            }
            Ok(_) => Ok(None),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => Err(e.into()),
        };
    }
}

impl Drop for Forked {
    /// Like tokio's `kill_on_drop`: a helper dropped unreaped is killed and reaped (in the
    /// background where a runtime exists).
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        let Some(pidfd) = self.pidfd.take() else { return };
        let _ = sys::pidfd_kill(pidfd.get_ref());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    loop {
                        let Ok(mut ready) = pidfd.readable().await else { return };
                        match reap(pidfd.get_ref(), false) {
                            Ok(None) => ready.clear_ready(),
                            _ => return,
                        }
                    }
                });
            }
            Err(_) => {
                let _ = reap(pidfd.get_ref(), true);
            }
        }
    }
}
