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

/// The syscall name in the most recent seccomp audit record for `pid`.
pub fn seccomp_kill_syscall(pid: u32) -> Option<String> {
    // Each read(2) of /dev/kmsg returns one record; O_NONBLOCK ends the scan with EAGAIN.
    let mut kmsg = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open("/dev/kmsg").ok()?;
    let needle = format!(" pid={pid} ");
    let mut found = None;
    let mut buf = vec![0u8; 8192];
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
    found
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
}
