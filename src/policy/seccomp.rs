//! Seccomp: policy rules → BPF programs (compiled once, at policy load).
//!
//! seccompiler gives one match action per filter, so a policy compiles to a short stack of
//! filters, installed in this order (the kernel returns the strictest verdict of all; among
//! equal `ERRNO` verdicts the most recently installed filter's errno wins):
//!
//! 1. **x32 guard** (hand-written): kill on a foreign `AUDIT_ARCH` and on any syscall number
//!    with the x32 bit (`0x40000000`) set. Without it a deny list is bypassable through the
//!    x32 ABI, which shares `AUDIT_ARCH_X86_64`.
//! 2. **allow list** (only when `default_action` is not `allow`): the `allow` names (plus
//!    `execve`, which the sandbox needs to start the command) pass; everything else gets
//!    `default_action`.
//! 3. **deny list**: the preset's names minus `allow`, plus `deny`, plus `clone` with any
//!    `CLONE_NEW*` flag, `ioctl(TIOCSTI | TIOCLINUX)` and a mode with the setuid or setgid
//!    bit in `chmod`, `open`, `mkdir`, `mknod` and their relatives, get `deny_action`.
//! 4. **clone3, openat2, io_setup → ENOSYS** (preset `default`): the first two pass their
//!    flags and mode in memory where BPF cannot read them, so they are refused with ENOSYS,
//!    the errno on which glibc and programs fall back to `clone` and `openat` (which filter 3
//!    can inspect); `io_setup` draws on a host-wide budget (see `ENOSYS_IN_DEFAULT`).
//! 5. **io_uring_setup → ENOSYS** where the policy lets it through (preset `none`, or
//!    `allow`): io_uring's `IORING_OP_SOCKET` would make sockets past filter 6.
//! 6. **socket families** (every policy, whatever its preset): an allow list. `socket(2)` in
//!    a domain other than AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK (`socketpair(2)`: other
//!    than AF_UNIX) fails with EAFNOSUPPORT
//!    (AF_VSOCK is not namespaced: a cell could bind host-wide vsock ports; the rare families
//!    are modules the kernel would load on demand), and a protocol other than the domain's
//!    default, TCP, UDP, ICMP (INET) or uevent (NETLINK: route and sock_diag queue their
//!    replies in kernel memory no cgroup charges; generic netlink's families load modules by
//!    name) fails with
//!    EPROTONOSUPPORT (MPTCP sockets slip past Landlock's TCP rules; SCTP, DCCP, UDP-Lite or
//!    crypto_user are kernel surface no agent needs; so is an INET type other than stream or
//!    datagram, whose protocol 0 means SCTP or DCCP). Those are the errnos of a kernel
//!    without the feature, so programs that try MPTCP first fall back to TCP. So is
//!    `setsockopt(SOL_TCP, TCP_ULP)` (ENOPROTOOPT): the in-kernel TLS and espintcp record
//!    layers a TCP socket could be switched to are kernel surface with a long CVE history,
//!    and userspace TLS (every agent's) never asks for them. Installed last so these errnos
//!    win.
//! 7. **the host's budgets and modules** (every policy, whatever its preset), EPERM:
//!    `ioctl` requests on which the kernel loads a module as root on the host, outside every
//!    cell's cgroup, for anyone who asks (`SIOCGIFBR`/`SIOCSIFBR`/`SIOCBRADDBR`/`SIOCBRDELBR`:
//!    `bridge`; `SIOCGIFVLAN`/`SIOCSIFVLAN`: `8021q`; `SIOCADDDLCI`/`SIOCDELDLCI`: `dlci`;
//!    `TIOCSETD` on the cell's own terminal: `tty-ldisc-N`, one modprobe per call where none
//!    exists, and line disciplines such as n_hdlc with a history of privilege escalations),
//!    and `fcntl(F_SETPIPE_SZ)`: the payload's stdio pipes are the daemon's, charged to root's
//!    pipe-page budget (`fs.pipe-user-pages-soft`), which cells enlarging them to 1 MiB each
//!    would spend for every root process without CAP_SYS_RESOURCE (a program that asks is
//!    told no, as one over its budget is, and keeps the default size).
//!
//! The filters are built for the architecture cellkeep is compiled for (x86_64 or aarch64:
//! syscall numbers from `syscalls::Sysno`, the native table; `AUDIT_ARCH` to match); the x32
//! number check exists on x86_64 only.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction as Action, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};
use serde::{Deserialize, Serialize};
use syscalls::Sysno;

use super::model::SeccompAction;

/// One classic-BPF instruction (`struct sock_filter`), as plain data for the launch plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BpfInsn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// Filters to install in order (the kernel applies the strictest verdict of all).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompiledSeccomp {
    pub filters: Vec<Vec<BpfInsn>>,
}

/// The syscalls the `default` preset denies: the usual container escape and host-tampering
/// routes. `clone` with namespace flags and two `ioctl`s are denied by argument on top.
pub const DEFAULT_DENY: &[&str] = &[
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kexec_load",
    "kexec_file_load",
    "bpf",
    "keyctl",
    "add_key",
    "request_key",
    "mount",
    "umount2",
    "pivot_root",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "mount_setattr",
    "unshare",
    "setns",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "perf_event_open",
    "userfaultfd",
    "init_module",
    "finit_module",
    "delete_module",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "settimeofday",
    "clock_settime",
    "adjtimex",
    "clock_adjtime",
    "quotactl",
    "lookup_dcookie",
    "name_to_handle_at",
    "open_by_handle_at",
    "iopl",
    "ioperm",
    "vhangup",
    "syslog",
    "uselib",
    "nfsservctl",
    // Unprivileged fanotify (FAN_REPORT_FID) puts inode marks on any visible path: a cell
    // would see host activity under the bound /usr or /etc.
    "fanotify_init",
];

/// Filter 4 of the module doc: what the `default` preset refuses with ENOSYS, the errno of a
/// kernel without the call, on which programs fall back:
/// - `clone3` and `openat2` pass their flags and mode in memory BPF cannot read; glibc and
///   programs fall back to `clone` and `openat`, which filter 3 inspects;
/// - `io_setup` (Linux AIO) takes its events from one host-wide budget (`fs.aio-max-nr`, 65536
///   by default): one cell could hold all of it and every AIO user on the host (databases,
///   qemu) would get EAGAIN; libaio users fall back to threads on ENOSYS. Without a context
///   the other `io_*` calls do nothing.
const ENOSYS_IN_DEFAULT: &[&str] = &["clone3", "openat2", "io_setup"];

/// Every `CLONE_NEW*` flag: `clone` with any of them set is denied by the default preset.
const CLONE_NEW_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];
// CLONE_NEWTIME is absent on purpose: its bit is part of CSIGNAL for clone(2) and only
// unshare(2) and clone3(2) honour it; both are covered by name.

/// Syscalls that set a file's mode, with the index of their mode argument: the default preset
/// refuses a mode with the setuid or setgid bit (as systemd's `RestrictSUIDSGID=`). A cell's
/// files stay on the host after it ends — a setuid file in a workspace would run as the
/// cell's uid for anyone who can reach it. Names the architecture lacks are skipped.
const MODE_SETTERS: &[(&str, u8)] = &[
    ("chmod", 1),
    ("fchmod", 1),
    ("fchmodat", 2),
    ("fchmodat2", 2),
    ("creat", 1),
    ("open", 2),
    ("openat", 3),
    ("mknod", 1),
    ("mknodat", 2),
    ("mkdir", 1),
    ("mkdirat", 2),
];
/// S_ISUID, S_ISGID.
const SUID_SGID: &[u64] = &[0o4000, 0o2000];

/// `ioctl` requests that inject input into or reprogram the controlling terminal.
const DENIED_IOCTLS: &[u64] = &[0x5412 /* TIOCSTI */, 0x541C /* TIOCLINUX */];

/// `ioctl` requests on which the kernel loads a module (filter 7 of the module doc): the
/// bridge, VLAN and DLCI socket ioctls (any socket; the kernel calls `request_module` before
/// any capability check) and `TIOCSETD` (a line discipline by number: `tty-ldisc-N`).
const MODULE_LOADING_IOCTLS: &[u64] = &[
    0x8940, // SIOCGIFBR
    0x8941, // SIOCSIFBR
    0x89a0, // SIOCBRADDBR
    0x89a1, // SIOCBRDELBR
    0x8982, // SIOCGIFVLAN
    0x8983, // SIOCSIFVLAN
    0x8980, // SIOCADDDLCI
    0x8981, // SIOCDELDLCI
    0x5423, // TIOCSETD
];
/// `fcntl(2)` `F_SETPIPE_SZ` (`F_LINUX_SPECIFIC_BASE + 7`; not in every libc release).
const F_SETPIPE_SZ: u64 = 1031;

/// `socket(2)` domains a cell may use (argument 0); every other fails with EAFNOSUPPORT:
/// AF_VSOCK (not namespaced), and the rarely used families whose modules the kernel would
/// load on demand (AF_ALG, AF_TIPC, AF_RDS, AF_KEY, …: kernel attack surface no agent needs).
const ALLOWED_SOCKET_DOMAINS: &[u64] =
    &[libc::AF_UNIX as u64, libc::AF_INET as u64, libc::AF_INET6 as u64, libc::AF_NETLINK as u64];
/// `IPPROTO_MPTCP` (262) is not in every libc release, so it is spelled out.
#[cfg(test)]
const IPPROTO_MPTCP: u64 = 262;
/// Per domain, the `socket(2)` protocols (argument 2) a cell may ask for; any other fails
/// with EPROTONOSUPPORT: MPTCP (it slips past Landlock's TCP rules), SCTP, DCCP, UDP-Lite,
/// L2TP, crypto_user netlink, … (a protocol number is what names the module the kernel would
/// load). 0 is the INET domains' default (TCP, UDP). Netlink: only uevent (receive-only; a
/// cell's netns gets no broadcasts). NETLINK_ROUTE (0) and NETLINK_SOCK_DIAG are refused:
/// the kernel queues their replies on the cell's socket without charging any cgroup, so a
/// cell asking for replies it never reads pinned 2 GB of host kernel memory from
/// `memory_max = 512M` (up to twice `net.core.rmem_max` per socket, times every fd of every
/// process). What a cell loses: `getifaddrs(3)` (`ip addr`, Node's `os.networkInterfaces()`
/// throws) in a network namespace that has at most `lo`; glibc's `AI_ADDRCONFIG` falls back
/// to assuming both address families.
const ALLOWED_SOCKET_PROTOCOLS: &[(u64, &[u64])] = &[
    (libc::AF_INET as u64, &[0, libc::IPPROTO_TCP as u64, libc::IPPROTO_UDP as u64, libc::IPPROTO_ICMP as u64]),
    (libc::AF_INET6 as u64, &[0, libc::IPPROTO_TCP as u64, libc::IPPROTO_UDP as u64, libc::IPPROTO_ICMPV6 as u64]),
    (libc::AF_NETLINK as u64, &[libc::NETLINK_KOBJECT_UEVENT as u64]),
];
/// `socket(2)` types (argument 1, below its `SOCK_NONBLOCK | SOCK_CLOEXEC` flags) refused in
/// AF_INET and AF_INET6, with the protocols' EPROTONOSUPPORT: a protocol check alone misses
/// them, because protocol 0 picks the type's default protocol (SOCK_SEQPACKET → SCTP,
/// SOCK_DCCP → DCCP, where the host has loaded their modules). Raw and packet sockets need a
/// capability the cell does not have anyway. Only SOCK_STREAM (TCP) and SOCK_DGRAM (UDP,
/// ICMP) remain.
/// (Every type the kernel knows, 0 to SOCK_MAX − 1, but those two; it refuses the rest with
/// EINVAL itself.)
const REFUSED_INET_SOCKET_TYPES: &[u64] = &[
    0,
    libc::SOCK_RAW as u64,
    libc::SOCK_RDM as u64,
    libc::SOCK_SEQPACKET as u64,
    6, // SOCK_DCCP
    7,
    8,
    9,
    10, // SOCK_PACKET
];
/// The kernel reads `socket(2)`'s type as `type & SOCK_TYPE_MASK`.
const SOCK_TYPE_MASK: u64 = 0xf;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64
#[cfg(target_arch = "x86_64")]
const TARGET_ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const TARGET_ARCH: TargetArch = TargetArch::aarch64;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JGE_K: u16 = 0x05 | 0x30; // BPF_JMP | BPF_JGE | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

/// Why a seccomp section cannot be compiled. Names were checked by `validate` already, so
/// these are internal inconsistencies reported as diagnostics rather than panics.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("unknown syscall \"{name}\" (not a syscall name of {})", std::env::consts::ARCH)]
    UnknownSyscall { name: String },
    #[error("seccompiler rejected the {filter} filter: {source}")]
    Compile { filter: &'static str, source: seccompiler::BackendError },
}

/// The seccomp section in source form, as `validate` hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompSpec<'a> {
    /// `true` for preset `default`, `false` for `none`.
    pub default_preset: bool,
    pub default_action: SeccompAction,
    pub deny_action: SeccompAction,
    pub allow: &'a [String],
    pub deny: &'a [String],
}

/// Look up a syscall number by name, for the architecture cellkeep is built for.
pub fn syscall_nr(name: &str) -> Option<i64> {
    name.parse::<Sysno>().ok().map(|s| i64::from(s.id()))
}

/// Every x86_64 syscall name (for "did you mean" suggestions).
pub fn syscall_names() -> impl Iterator<Item = &'static str> {
    Sysno::iter().map(|s| s.name())
}

/// The preset's deny list minus `allow`, plus `deny`: the names that get `deny_action`.
pub fn denied_names(spec: &SeccompSpec<'_>) -> Vec<String> {
    let preset = if spec.default_preset { DEFAULT_DENY } else { &[] };
    let mut names: Vec<String> =
        preset.iter().filter(|n| !spec.allow.iter().any(|a| a == *n)).map(|n| (*n).to_owned()).collect();
    for extra in spec.deny {
        if !names.contains(extra) {
            names.push(extra.clone());
        }
    }
    names
}

/// Compile a seccomp section into the filter stack described in the module doc.
pub fn compile(spec: &SeccompSpec<'_>) -> Result<CompiledSeccomp, SeccompError> {
    let mut filters = Vec::new();
    if spec.default_action != SeccompAction::Allow {
        let mut names: Vec<String> = spec.allow.to_vec();
        names.push("execve".to_owned());
        let rules = unconditional(&names)?;
        filters.push(build("allow", rules, action(spec.default_action), Action::Allow)?);
    }

    let mut deny = unconditional(&denied_names(spec))?;
    if spec.default_preset {
        // These argument rules hold whatever `allow` says: an allow list names `clone`, `ioctl`
        // or `open` to let the calls run at all, not to let them create namespaces, inject
        // terminal input or make setuid files (that takes preset "none").
        add_arg_rules(&mut deny, "clone", 0, CLONE_NEW_FLAGS, true, ArgLen::Qword)?;
        // ioctl's request is an `unsigned int` to the kernel: compare only the low 32 bits, or
        // `0x1_0000_5412` would pass the filter and still be TIOCSTI.
        add_arg_rules(&mut deny, "ioctl", 1, DENIED_IOCTLS, false, ArgLen::Dword)?;
        for (name, arg) in MODE_SETTERS {
            if syscall_nr(name).is_some() {
                add_arg_rules(&mut deny, name, *arg, SUID_SGID, true, ArgLen::Dword)?;
            }
        }
    }
    if !deny.is_empty() {
        filters.push(build("deny", deny, Action::Allow, action(spec.deny_action))?);
    }

    let enosys: Vec<String> =
        ENOSYS_IN_DEFAULT.iter().filter(|n| !spec.allow.iter().any(|a| a == *n)).map(|n| (*n).to_owned()).collect();
    if spec.default_preset && !enosys.is_empty() {
        let rules = unconditional(&enosys)?;
        filters.push(build("clone3", rules, Action::Allow, Action::Errno(libc::ENOSYS as u32))?);
    }

    // io_uring's IORING_OP_SOCKET makes sockets without socket(2), past the socket rules
    // below (and past the host-protecting refusals of UDP and route netlink). Where the policy
    // lets io_uring_setup through (preset none, or `allow`), it gets ENOSYS here, the errno
    // on which programs fall back to plain syscalls: the socket rules hold for every policy.
    if !spec.default_preset || spec.allow.iter().any(|a| a == "io_uring_setup") {
        let rules = unconditional(&["io_uring_setup".to_owned()])?;
        filters.push(build("io_uring", rules, Action::Allow, Action::Errno(libc::ENOSYS as u32))?);
    }
    filters.extend(socket_filters()?);
    filters.push(host_budget_filter()?);
    filters.insert(0, x32_guard());
    Ok(CompiledSeccomp { filters })
}

/// Filter 6 of the module doc: vsock sockets, MPTCP and TCP ULPs, refused in every cell. All
/// are `int` arguments to the kernel, so only their low 32 bits are compared.
fn socket_filters() -> Result<Vec<Vec<BpfInsn>>, SeccompError> {
    let compile_err = |source| SeccompError::Compile { filter: "socket", source };
    let cond = |arg, op, v| SeccompCondition::new(arg, ArgLen::Dword, op, v).map_err(compile_err);
    let nr = syscall_nr("socket").ok_or_else(|| SeccompError::UnknownSyscall { name: "socket".to_owned() })?;
    // A domain that is none of the allowed ones (one rule: domain ≠ a ∧ domain ≠ b ∧ …).
    let other_domain =
        ALLOWED_SOCKET_DOMAINS.iter().map(|&d| cond(0, SeccompCmpOp::Ne, d)).collect::<Result<Vec<_>, _>>()?;
    let mut domains = BTreeMap::from([(nr, vec![SeccompRule::new(other_domain).map_err(compile_err)?])]);
    // socketpair(2) loads a family's module the same way: AF_UNIX only.
    let pair =
        syscall_nr("socketpair").ok_or_else(|| SeccompError::UnknownSyscall { name: "socketpair".to_owned() })?;
    let not_unix = SeccompRule::new(vec![cond(0, SeccompCmpOp::Ne, libc::AF_UNIX as u64)?]).map_err(compile_err)?;
    domains.insert(pair, vec![not_unix]);
    // An allowed domain with a protocol not allowed for it (one rule per domain).
    let mut protocol_rules = Vec::new();
    for (domain, protocols) in ALLOWED_SOCKET_PROTOCOLS {
        let mut conds = vec![cond(0, SeccompCmpOp::Eq, *domain)?];
        for &p in *protocols {
            conds.push(cond(2, SeccompCmpOp::Ne, p)?);
        }
        protocol_rules.push(SeccompRule::new(conds).map_err(compile_err)?);
    }
    // An INET type whose default protocol is one of those (one rule per domain and type).
    protocol_rules.extend(inet_type_rules(REFUSED_INET_SOCKET_TYPES)?);
    let protocols = BTreeMap::from([(nr, protocol_rules)]);
    // setsockopt(fd, SOL_TCP, TCP_ULP, name): a TCP upper-layer protocol (kTLS, espintcp).
    let setsockopt =
        syscall_nr("setsockopt").ok_or_else(|| SeccompError::UnknownSyscall { name: "setsockopt".to_owned() })?;
    let ulp = SeccompRule::new(vec![
        cond(1, SeccompCmpOp::Eq, libc::SOL_TCP as u64)?,
        cond(2, SeccompCmpOp::Eq, libc::TCP_ULP as u64)?,
    ])
    .map_err(compile_err)?;
    let options = BTreeMap::from([(setsockopt, vec![ulp])]);
    Ok(vec![
        build("socket", domains, Action::Allow, Action::Errno(libc::EAFNOSUPPORT as u32))?,
        build("socket", protocols, Action::Allow, Action::Errno(libc::EPROTONOSUPPORT as u32))?,
        build("socket", options, Action::Allow, Action::Errno(libc::ENOPROTOOPT as u32))?,
    ])
}

/// Filter 7 of the module doc: module-loading ioctls and `F_SETPIPE_SZ`, EPERM in every cell.
/// Both requests are `unsigned int` to the kernel: only their low 32 bits are compared (as
/// for TIOCSTI: `0x1_0000_5423` is TIOCSETD to the kernel).
fn host_budget_filter() -> Result<Vec<BpfInsn>, SeccompError> {
    let mut rules = BTreeMap::new();
    add_arg_rules(&mut rules, "ioctl", 1, MODULE_LOADING_IOCTLS, false, ArgLen::Dword)?;
    add_arg_rules(&mut rules, "fcntl", 1, &[F_SETPIPE_SZ], false, ArgLen::Dword)?;
    build("host", rules, Action::Allow, Action::Errno(libc::EPERM as u32))
}

/// One rule per INET domain and type: `socket(AF_INET or AF_INET6, type | flags, …)`.
fn inet_type_rules(types: &[u64]) -> Result<Vec<SeccompRule>, SeccompError> {
    let compile_err = |source| SeccompError::Compile { filter: "socket", source };
    let cond = |arg, op, v| SeccompCondition::new(arg, ArgLen::Dword, op, v).map_err(compile_err);
    let mut rules = Vec::new();
    for domain in [libc::AF_INET as u64, libc::AF_INET6 as u64] {
        for &t in types {
            let conds = vec![cond(0, SeccompCmpOp::Eq, domain)?, cond(1, SeccompCmpOp::MaskedEq(SOCK_TYPE_MASK), t)?];
            rules.push(SeccompRule::new(conds).map_err(compile_err)?);
        }
    }
    Ok(rules)
}

/// For hosts whose cgroups cannot charge UDP buffers to a cell (cgroup v1 charges only TCP's,
/// through `memory.kmem.tcp.limit_in_bytes`): `socket(AF_INET or AF_INET6, SOCK_DGRAM, …)`
/// fails with EACCES. Uncharged, a cell with `lo` up could queue datagrams to its own sockets
/// until the host-wide `udp_mem` budget is spent, and UDP (DNS) then fails for the whole
/// host. Installed after the policy's filters.
pub fn udp_filter() -> Result<Vec<BpfInsn>, SeccompError> {
    let nr = syscall_nr("socket").ok_or_else(|| SeccompError::UnknownSyscall { name: "socket".to_owned() })?;
    let rules = BTreeMap::from([(nr, inet_type_rules(&[libc::SOCK_DGRAM as u64])?)]);
    build("udp", rules, Action::Allow, Action::Errno(libc::EACCES as u32))
}

/// The fallback for kernels without `vm.memfd_noexec` (< 6.3), where every memfd can be made
/// executable and `fexecve` runs it past every `noexec` mount: `memfd_create` fails with
/// ENOSYS (the errno of a kernel without it, on which programs fall back to a file in the
/// `noexec` tmp). Installed after the policy's filters.
pub fn memfd_create_filter() -> Result<Vec<BpfInsn>, SeccompError> {
    let rules = unconditional(&["memfd_create".to_owned()])?;
    build("memfd", rules, Action::Allow, Action::Errno(libc::ENOSYS as u32))
}

fn action(a: SeccompAction) -> Action {
    match a {
        SeccompAction::Allow => Action::Allow,
        SeccompAction::Errno => Action::Errno(libc::EPERM as u32),
        SeccompAction::Enosys => Action::Errno(libc::ENOSYS as u32),
        SeccompAction::Kill => Action::KillProcess,
        SeccompAction::Log => Action::Log,
    }
}

fn unconditional(names: &[String]) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    names
        .iter()
        .map(|n| {
            syscall_nr(n).map(|nr| (nr, Vec::new())).ok_or_else(|| SeccompError::UnknownSyscall { name: n.clone() })
        })
        .collect()
}

/// Add one rule per value for `syscall`'s argument `arg`: a masked match (`arg & v == v`)
/// when `masked`, an equality otherwise. Several rules for one syscall are OR-ed. Skipped when
/// the syscall is allowed outright or already denied unconditionally.
/// How many bits of a syscall argument a rule compares.
type ArgLen = SeccompCmpArgLen;

fn add_arg_rules(
    rules: &mut BTreeMap<i64, Vec<SeccompRule>>,
    syscall: &str,
    arg: u8,
    values: &[u64],
    masked: bool,
    len: ArgLen,
) -> Result<(), SeccompError> {
    let nr = syscall_nr(syscall).ok_or_else(|| SeccompError::UnknownSyscall { name: syscall.to_owned() })?;
    // Denied outright already: a conditional rule would only narrow that.
    if rules.get(&nr).is_some_and(Vec::is_empty) {
        return Ok(());
    }
    let compile_err = |source| SeccompError::Compile { filter: "deny", source };
    let entry = rules.entry(nr).or_default();
    for &v in values {
        let op = if masked { SeccompCmpOp::MaskedEq(v) } else { SeccompCmpOp::Eq };
        let cond = SeccompCondition::new(arg, len.clone(), op, v).map_err(compile_err)?;
        entry.push(SeccompRule::new(vec![cond]).map_err(compile_err)?);
    }
    Ok(())
}

fn build(
    filter: &'static str,
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: Action,
    matched: Action,
) -> Result<Vec<BpfInsn>, SeccompError> {
    let err = |source| SeccompError::Compile { filter, source };
    let f = SeccompFilter::new(rules, mismatch, matched, TARGET_ARCH).map_err(err)?;
    let program: BpfProgram = f.try_into().map_err(err)?;
    Ok(program.iter().map(|i| BpfInsn { code: i.code, jt: i.jt, jf: i.jf, k: i.k }).collect())
}

/// Kill on a foreign architecture and (x86_64) on x32 syscall numbers; allow everything else.
fn x32_guard() -> Vec<BpfInsn> {
    let insn = |code, jt, jf, k| BpfInsn { code, jt, jf, k };
    let mut prog = vec![
        insn(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_ARCH),
        insn(BPF_JEQ_K, 1, 0, AUDIT_ARCH),
        insn(BPF_RET_K, 0, 0, RET_KILL_PROCESS),
    ];
    if cfg!(target_arch = "x86_64") {
        prog.extend([
            insn(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_NR),
            insn(BPF_JGE_K, 0, 1, X32_SYSCALL_BIT),
            insn(BPF_RET_K, 0, 0, RET_KILL_PROCESS),
        ]);
    }
    prog.push(insn(BPF_RET_K, 0, 0, RET_ALLOW));
    prog
}

/// Convert back to seccompiler's form, e.g. for `seccompiler::apply_filter`.
pub fn to_bpf_program(filter: &[BpfInsn]) -> BpfProgram {
    filter.iter().map(|i| seccompiler::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(allow: &'a [String], deny: &'a [String]) -> SeccompSpec<'a> {
        SeccompSpec {
            default_preset: true,
            default_action: SeccompAction::Allow,
            deny_action: SeccompAction::Errno,
            allow,
            deny,
        }
    }

    #[test]
    fn preset_names_are_known_syscalls() {
        for name in DEFAULT_DENY {
            assert!(syscall_nr(name).is_some(), "{name}");
        }
        #[cfg(target_arch = "x86_64")]
        assert_eq!(syscall_nr("openat"), Some(257));
        #[cfg(target_arch = "aarch64")]
        assert_eq!(syscall_nr("openat"), Some(56));
        assert_eq!(syscall_nr("opnat"), None);
    }

    #[test]
    fn default_preset_compiles_to_seven_filters() {
        let compiled = compile(&spec(&[], &[])).unwrap_or_else(|e| panic!("{e}"));
        // guard, deny, clone3/openat2, socket domains, socket protocols, TCP_ULP, host budgets
        assert_eq!(compiled.filters.len(), 7);
        assert_eq!(compiled.filters[0], x32_guard());
        assert!(compiled.filters.iter().all(|f| !f.is_empty() && f.len() < 4096));
    }

    #[test]
    fn allowing_a_call_keeps_its_argument_rules() {
        // An allow list must name clone, ioctl, chmod, open to run at all; that must not turn
        // off the namespace, TIOCSTI and setuid rules (it did: a policy review of this stop).
        let plain = compile(&spec(&[], &[])).unwrap_or_else(|e| panic!("{e}"));
        let allow: Vec<String> = ["clone", "ioctl", "chmod", "open", "openat"].map(str::to_owned).to_vec();
        let allowed = compile(&spec(&allow, &[])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plain.filters, allowed.filters);
    }

    #[test]
    fn allow_removes_from_the_preset_and_allowlist_adds_a_filter() {
        let allow: Vec<String> = ["unshare", "clone3", "openat2", "io_setup"].map(str::to_owned).to_vec();
        let s = spec(&allow, &[]);
        assert!(!denied_names(&s).contains(&"unshare".to_owned()));
        assert_eq!(compile(&s).map(|c| c.filters.len()).ok(), Some(6));
        let allow = vec!["read".to_owned(), "write".to_owned(), "exit_group".to_owned()];
        let s = SeccompSpec { default_action: SeccompAction::Enosys, ..spec(&allow, &[]) };
        assert_eq!(compile(&s).map(|c| c.filters.len()).ok(), Some(8));
    }

    #[test]
    fn preset_none_still_refuses_vsock_and_mptcp() {
        let s = SeccompSpec { default_preset: false, ..spec(&[], &[]) };
        // guard, io_uring, socket domains, socket protocols, TCP_ULP, host budgets
        assert_eq!(compile(&s).map(|c| c.filters.len()).ok(), Some(6));
        let deny = vec!["mkdir".to_owned()];
        let s = SeccompSpec { default_preset: false, deny_action: SeccompAction::Kill, ..spec(&[], &deny) };
        assert_eq!(compile(&s).map(|c| c.filters.len()).ok(), Some(7));
    }

    #[test]
    fn unknown_names_are_errors() {
        let deny = vec!["opnat".to_owned()];
        assert!(matches!(compile(&spec(&[], &deny)), Err(SeccompError::UnknownSyscall { .. })));
    }

    /// Installs the default filters in a child process (this test binary re-run with an env
    /// var) and checks what the payload would see.
    #[test]
    fn installed_filters_behave() {
        let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
        let out = std::process::Command::new(exe)
            .args(["--exact", "policy::seccomp::tests::child_probe", "--nocapture", "--test-threads=1"])
            .env("CELLKEEP_SECCOMP_PROBE", "1")
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("probe ok"), "{stdout}");
    }

    #[test]
    #[allow(unsafe_code)]
    fn child_probe() {
        if std::env::var_os("CELLKEEP_SECCOMP_PROBE").is_none() {
            return;
        }
        let compiled = compile(&spec(&[], &[])).unwrap_or_else(|e| panic!("{e}"));
        for f in &compiled.filters {
            seccompiler::apply_filter(&to_bpf_program(f)).unwrap_or_else(|e| panic!("install: {e}"));
        }
        // Denied outright: EPERM.
        let unshare = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS);
        assert_eq!(unshare, Err(nix::errno::Errno::EPERM));
        // Spawning still works: glibc's clone3 gets ENOSYS and falls back to clone.
        let status = std::process::Command::new("/bin/true").status().unwrap_or_else(|e| panic!("spawn: {e}"));
        assert!(status.success());
        // Threads too.
        std::thread::spawn(|| ()).join().unwrap_or_else(|_| panic!("thread"));
        // vsock and MPTCP sockets: the errnos of a kernel without them; TCP and UNIX still work.
        let typed = |domain, kind, protocol| {
            // SAFETY: (test) socket(2) with integer arguments; a returned fd is closed at once.
            let fd = unsafe { libc::socket(domain, kind, protocol) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            if fd >= 0 {
                // SAFETY: (test) `fd` is the fresh fd socket(2) just returned, owned by nothing.
                unsafe { libc::close(fd) };
                return None;
            }
            errno
        };
        let sock = |domain, protocol| {
            typed(domain, if domain == libc::AF_NETLINK { libc::SOCK_RAW } else { libc::SOCK_STREAM }, protocol)
        };
        assert_eq!(sock(libc::AF_VSOCK, 0), Some(libc::EAFNOSUPPORT));
        assert_eq!(sock(libc::AF_INET, IPPROTO_MPTCP as i32), Some(libc::EPROTONOSUPPORT));
        assert_eq!(sock(libc::AF_INET6, IPPROTO_MPTCP as i32), Some(libc::EPROTONOSUPPORT));
        assert_eq!(sock(libc::AF_INET, 0), None);
        assert_eq!(sock(libc::AF_INET6, libc::IPPROTO_TCP), None);
        assert_eq!(sock(libc::AF_UNIX, 0), None);
        assert_eq!(sock(libc::AF_NETLINK, libc::NETLINK_KOBJECT_UEVENT), None);
        assert_eq!(sock(libc::AF_NETLINK, libc::NETLINK_ROUTE), Some(libc::EPROTONOSUPPORT));
        assert_eq!(sock(libc::AF_NETLINK, libc::NETLINK_SOCK_DIAG), Some(libc::EPROTONOSUPPORT));
        assert_eq!(sock(libc::AF_ALG, 0), Some(libc::EAFNOSUPPORT));
        assert_eq!(sock(libc::AF_PACKET, 0), Some(libc::EAFNOSUPPORT));
        assert_eq!(sock(libc::AF_INET, libc::IPPROTO_SCTP), Some(libc::EPROTONOSUPPORT));
        // An INET type whose protocol 0 is SCTP or DCCP; flags on the type change nothing.
        for kind in [libc::SOCK_SEQPACKET, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 6, libc::SOCK_RAW] {
            assert_eq!(typed(libc::AF_INET, kind, 0), Some(libc::EPROTONOSUPPORT), "AF_INET type {kind:#x}");
            assert_eq!(typed(libc::AF_INET6, kind, 0), Some(libc::EPROTONOSUPPORT), "AF_INET6 type {kind:#x}");
        }
        assert_eq!(typed(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK, 0), None);
        assert_eq!(typed(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0), None);
        assert_eq!(sock(libc::AF_NETLINK, 21 /* NETLINK_CRYPTO */), Some(libc::EPROTONOSUPPORT));
        assert_eq!(sock(libc::AF_NETLINK, libc::NETLINK_GENERIC), Some(libc::EPROTONOSUPPORT));
        // socketpair: AF_UNIX only (the kernel's own answer for AF_INET is EOPNOTSUPP).
        let pair = |domain| {
            let mut sv = [0i32; 2];
            // SAFETY: (test) socketpair(2) writing two fds into `sv`; both closed at once.
            let rc = unsafe { libc::socketpair(domain, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            if rc == 0 {
                // SAFETY: (test) the two fresh fds socketpair(2) just returned, owned by nothing.
                unsafe {
                    libc::close(sv[0]);
                    libc::close(sv[1]);
                }
                return None;
            }
            errno
        };
        assert_eq!(pair(libc::AF_UNIX), None);
        assert_eq!(pair(libc::AF_INET), Some(libc::EAFNOSUPPORT));
        // setuid / setgid modes: EPERM (the deny action); a plain mode still works.
        let dir = std::env::temp_dir().join(format!("ck-suid-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let file = dir.join("f");
        std::fs::write(&file, b"").unwrap_or_else(|e| panic!("{e}"));
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let set = |mode| {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).err().and_then(|e| e.raw_os_error())
        };
        assert_eq!(set(0o4755), Some(libc::EPERM));
        assert_eq!(set(0o2755), Some(libc::EPERM));
        assert_eq!(set(0o755), None);
        let created =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o4755).open(dir.join("g"));
        assert_eq!(created.err().and_then(|e| e.raw_os_error()), Some(libc::EPERM));
        let _ = std::fs::remove_dir_all(&dir);
        // The filter of hosts that cannot charge UDP buffers: datagram INET sockets only.
        let udp = udp_filter().unwrap_or_else(|e| panic!("{e}"));
        seccompiler::apply_filter(&to_bpf_program(&udp)).unwrap_or_else(|e| panic!("install: {e}"));
        for kind in [libc::SOCK_DGRAM, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC] {
            assert_eq!(typed(libc::AF_INET, kind, 0), Some(libc::EACCES));
            assert_eq!(typed(libc::AF_INET6, kind, libc::IPPROTO_UDP), Some(libc::EACCES));
            assert_eq!(typed(libc::AF_INET, kind, libc::IPPROTO_ICMP), Some(libc::EACCES));
        }
        assert_eq!(typed(libc::AF_INET, libc::SOCK_STREAM, 0), None);
        assert_eq!(typed(libc::AF_UNIX, libc::SOCK_DGRAM, 0), None);
        println!("probe ok");
    }
}
