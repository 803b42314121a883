//! Naming the syscall behind a seccomp kill. With `SECCOMP_RET_KILL_PROCESS` the wait status
//! only says SIGSYS; the kernel's audit record (`type=1326 … pid=P … syscall=N`, logged because
//! `kill_process` is in `/proc/sys/kernel/seccomp/actions_logged` by default) names it. We read
//! `/dev/kmsg` once, only after a SIGSYS death, and match the payload's host pid. Unreadable
//! kmsg (restricted, or the record rotated out) yields `None`: the reason is still
//! `seccomp_violation`, just without the name.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

/// Host pids of the children of `pid` (`/proc/PID/task/PID/children`, 3.5+ with
/// CONFIG_PROC_CHILDREN, which every distribution kernel has).
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// How long to wait for the audit record after the death. The record is written by the
/// `kauditd` kernel thread, asynchronously: on a loaded host it can land after the reaper's
/// first read (seen in CI as a kill without its name).
const RECORD_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// The syscall name in the most recent seccomp audit record for `pid`, waiting up to
/// half a second for the record to appear.
pub fn seccomp_kill_syscall(pid: u32) -> Option<String> {
    seccomp_kill_syscall_within(pid, RECORD_WAIT)
}

fn seccomp_kill_syscall_within(pid: u32, wait: std::time::Duration) -> Option<String> {
    use std::os::fd::AsFd;
    // Each read(2) of /dev/kmsg returns one record; O_NONBLOCK ends a pass with EAGAIN, and
    // poll(2) on the same fd wakes when a newer record is appended (kmsg's poll contract).
    let mut kmsg = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open("/dev/kmsg").ok()?;
    let needle = format!(" pid={pid} ");
    let deadline = std::time::Instant::now() + wait;
    let mut buf = vec![0u8; 8192];
    loop {
        let mut found = None;
        loop {
            match kmsg.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    if rec.contains("type=1326") && rec.contains(&needle) {
                        found = syscall_of(&rec).or(found);
                    }
                }
                // EPIPE: a record was overwritten while we read; keep going.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if found.is_some() || left.is_zero() {
            return found;
        }
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [nix::poll::PollFd::new(kmsg.as_fd(), nix::poll::PollFlags::POLLIN)];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)).is_err() {
            return None;
        }
    }
}

fn syscall_of(record: &str) -> Option<String> {
    let nr: usize = record.split_whitespace().find_map(|f| f.strip_prefix("syscall="))?.parse().ok()?;
    Some(syscalls::Sysno::new(nr).map(|s| s.name().to_owned()).unwrap_or_else(|| format!("#{nr}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_audit_record() {
        let rec = "6,1234,10171543026,-;audit: type=1326 audit(1795519456.717:5): auid=4294967295 uid=65534 \
                   gid=65534 ses=4294967295 pid=27656 comm=\"python3\" exe=\"/usr/bin/python3.11\" sig=31 \
                   arch=c000003e syscall=110 compat=0 ip=0x7f9212a2c4f7 code=0x80000000";
        assert_eq!(super::syscall_of(rec).as_deref(), Some("getppid"));
    }

    /// The record can land after the reaper first looks (kauditd writes it asynchronously):
    /// the lookup waits for it. Writes a stand-in record to /dev/kmsg, which needs root.
    #[test]
    fn a_record_that_lands_late_is_still_found() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP a_record_that_lands_late_is_still_found: writing /dev/kmsg needs root");
            return;
        }
        // A pid above any pid_max, so no real record can match.
        let pid = 4_194_304 + std::process::id();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(150));
            let rec = format!(
                "cellkeep unit test: audit: type=1326 audit(0.0:0): auid=4294967295 pid={pid} comm=\"t\" \
                 sig=31 arch=c000003e syscall=110 compat=0 code=0x80000000\n"
            );
            std::fs::write("/dev/kmsg", rec)
        });
        let name = super::seccomp_kill_syscall(pid);
        assert!(writer.join().is_ok_and(|w| w.is_ok()), "writing the stand-in record failed");
        assert_eq!(name.as_deref(), Some("getppid"));
        // And a pid with no record at all costs the wait, then yields None.
        assert_eq!(super::seccomp_kill_syscall_within(pid + 1, std::time::Duration::from_millis(50)), None);
    }
}
