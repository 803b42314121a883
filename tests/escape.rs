//! Escape battery (issue 7, item 1): hostile code inside a cell tries to get out. Every attempt
//! runs in a real cell under the SHIPPED base policy (`policies/base.toml`, copied into a temp
//! policy dir; each provider is `extends = "base"` plus only its command; every security
//! setting is base's). Each test asserts that the attempt fails with the specific
//! denial expected, says exactly what leaked when it does not, and checks that the cell stayed
//! contained: its cgroup is gone afterwards and no process of it is left on the host.
//!
//! Cells are started the two ways cellkeep starts them: `cellkeep run` (the [`World`] of
//! `tests/common`), or through a daemon of the test's own ([`Daemon`], on a socket under `/run`,
//! the production location, so the cell sees the same mount view as in production — a socket
//! under the host's `/tmp` would be hidden by the cell's private `/tmp` and prove nothing).
//!
//! # The attempts (test name → what stops it)
//!
//! Since issue 13 the first layer for most filesystem attempts is the cell's mount view (only
//! the policy's grants exist inside): paths outside it answer ENOENT, read-only binds EROFS
//! (or DAC's EACCES first). Landlock still holds the same rules behind it.
//!
//! | # | attempt | stopped by |
//! |---|---|---|
//! | 1 | `read_etc_shadow` | DAC: the payload runs as a host uid of its own, without capabilities (EACCES) |
//! | 2 | `read_another_users_home` (a 0644 file in `/home/ck-victim-*`) | mount view: `/home` does not exist inside (ENOENT); Landlock behind it |
//! | 3 | `write_usr` (also into a 0777 dir under `/usr/local`) | read-only bind (EROFS) or DAC (EACCES); Landlock: `/usr` is read+exec only |
//! | 4 | `write_etc` (`/etc/ld.so.preload`, a 0777 dir under `/etc`) | read-only bind (EROFS) or DAC (EACCES); Landlock: `/etc` is read only |
//! | 5 | `write_daemon_state_dir` (policy dir and config made 0777/0666) | mount view: `/run` does not exist inside (ENOENT); Landlock |
//! | 6 | `write_daemon_socket_dir` (unlink/replace the socket; dir made 0777) | mount view (ENOENT); Landlock |
//! | 7 | `connect_daemon_socket` (shipped socket mode 0660) | mount view (ENOENT); DAC on the socket file behind it |
//! | 8 | `connect_world_connectable_daemon_socket` (socket mode 0666) | mount view (ENOENT); behind it the daemon: a peer whose cgroup is under the cell root gets 403 |
//! | 9 | `tcp_connect_with_network_none` | network namespace without interfaces (ENETUNREACH) |
//! | 10 | `abstract_unix_socket_of_the_host` | network namespace (ECONNREFUSED) / Landlock scope (EPERM) |
//! | 11 | `ptrace_a_host_pid` | pid namespace (not visible) + seccomp (EPERM) |
//! | 12 | `process_vm_readv_a_host_pid` | seccomp (EPERM) |
//! | 13 | `see_another_cells_processes` | pid namespace (only the cell's own pids) |
//! | 14 | `signal_another_cell` (kill, kill(-1), pidfd_open) | pid namespace (ESRCH) |
//! | 15 | `signal_the_daemon` (and the cell's own pid 1) | pid namespace (ESRCH); Landlock signal scope for pid 1 (EPERM) |
//! | 16 | `mount_filesystems` (mount, umount2 /proc, new mount API, setuid mount(8)) | seccomp (EPERM) + no_new_privs |
//! | 17 | `pivot_root_and_chroot` | seccomp (EPERM) / no CAP_SYS_CHROOT (EPERM) |
//! | 18 | `unshare_namespaces` (unshare, clone(CLONE_NEW*), clone3, unshare(1)) | seccomp (EPERM; clone3 ENOSYS) |
//! | 19 | `setns_to_host_namespaces` (/proc/1/ns, a host pid's ns) | pid 1 not dumpable (EACCES), pid ns (ENOENT), seccomp (EPERM) |
//! | 20 | `keyctl_keyrings` (keyctl, add_key, request_key) | seccomp (EPERM) |
//! | 21 | `bpf_programs` | seccomp (EPERM) |
//! | 22 | `perf_event_open_counters` | seccomp (EPERM) |
//! | 23 | `io_uring_rings` | seccomp (EPERM) |
//! | 24 | `userfaultfd_handles` | seccomp (EPERM) + Landlock on /dev/userfaultfd |
//! | 25 | `tiocsti_on_the_callers_terminal` (`cellkeep run` on a pty) | the payload gets a pty of its own, never the caller's; seccomp (EPERM) |
//! | 26 | `tiocsti_on_the_cells_own_tty` (`tty = true` provider) | seccomp (EPERM), the request compared as 32 bits, as the kernel reads it |
//! | 27 | `run_a_setuid_binary` (a setuid-root copy of id, passwd) | no_new_privs (euid stays the cell's own) |
//! | 28 | `chmod_setuid_a_file_it_wrote` ({cwd} and {tmp}) | Landlock: no exec outside the exec list (EACCES); nosuid {tmp}; owner is nobody |
//! | 29 | `load_a_kernel_module` (init_module, finit_module, delete_module, /proc/sys/kernel/modprobe) | seccomp (EPERM); Landlock (EACCES) where modprobe exists |
//! | 30 | `write_proc_sys` (hostname, drop_caches, core_pattern) | Landlock: /proc is read only (EACCES) |
//! | 31 | `raise_own_cgroup_limits` (memory/pids/cpu files of its own cgroup) | mount view: /sys does not exist inside (ENOENT); Landlock |
//! | 32 | `move_out_of_own_cgroup` (cgroup.procs of the parent and the top) | mount view (ENOENT); Landlock |
//! | 33 | `cwd_dotdot_through_the_api` | cwd check on the canonical path: 400 bad_request naming the path |
//! | 34 | `cwd_symlink_through_the_api` | same |
//! | 35 | `symlink_in_a_writable_path` ({cwd}/{tmp} links to /etc/shadow and a 0644 secret) | the secret's home is not in the view (ENOENT); /etc/shadow: DAC (EACCES); Landlock |
//! | 36 | `exhaust_disk_in_private_tmp` | tmpfs `size=` (ENOSPC at 64 MiB) |
//! | 37 | `exhaust_inodes_in_private_tmp` | the private tmpfs's inode cap (`nr_inodes`, one per 4 KiB of `tmp_size`): ENOSPC |
//! | 38 | `read_the_daemons_environment` | pid namespace (ENOENT) + pid 1 not dumpable (EACCES) + filtered env |
//! | 39 | `open_by_handle_at_shocker` | seccomp (EPERM) |
//! | 40 | `symlink_planted_under_a_cwd_rule` (`{cwd}/out` → a 0777 dir outside) | rules under the cwd opened with RESOLVE_NO_SYMLINKS: the launch fails at stage landlock |
//! | 41 | `callers_terminal_left_as_it_was`, `callers_terminal_restored_after_a_signal` (raw, no echo, 3x7, TIOCEXCL on its terminal) | `cellkeep run` relays through a pty of the cell's own; the caller's modes are restored on every exit path |
//! | 42 | `file_larger_than_the_policy_allows` (a 1 GiB file in the workspace) | `limits.file_size` (RLIMIT_FSIZE, base 512M): EFBIG, or `file_size_limited` |
//! | 43 | `pid1_fails_closed_when_a_privilege_drop_fails` (PR_SET_DUMPABLE made to fail) | pid 1's privilege drop is checked step by step; the payload waits for it: setup_failed(init) |
//! | 44 | `cwd_is_looked_up_with_the_callers_rights` (links into a root-only dir; a relative cwd) | the cwd is resolved on a thread with the caller's fsuid/fsgid/groups; one answer for missing / not a directory / not permitted; relative refused |
//! | 45 | `option_injection_through_the_command` (`--version` as a one-shot command) | `command_after = "--"`, or 400 bad_request without it (and for Claude Code, which scans its whole argv, `command_via = "stdin"`: `agents::claude_gets_no_caller_text_in_its_argv`) |
//! | 46–47 | `vsock_and_mptcp_sockets` (also with seccomp preset `none`; also a TCP ULP such as kTLS, with and without high bits in the int arguments) | seccomp in every cell: EAFNOSUPPORT / EPROTONOSUPPORT / ENOPROTOOPT |
//! | 48 | `host_network_from_an_agent_cell` (port 443 on the host, MSG_FASTOPEN, UDP, autobound listener) | the cell's own network namespace (ECONNREFUSED / ENETUNREACH; nothing arrives) |
//! | 49 | `abstract_socket_squatting_from_an_agent_cell` | the cell's own network namespace (its abstract names are its own) |
//! | 50 | `host_unix_socket_files` (`network = none`; a root 0666 socket under /run, a 0600 socket in a 0700 dir of the cell's uid) | mount view: not inside (ENOENT) |
//! | 51 | `another_cells_workspace_socket` (cell A connects to a socket in cell B's workspace) | mount view: other workspaces are not inside (ENOENT) |
//! | 52 | `names_and_metadata_outside_every_grant` (stat, lstat, readlink, getxattr, listxattr, access, chdir, O_PATH, inotify; fanotify_init) | mount view (ENOENT); seccomp for fanotify_init (EPERM) |
//! | 53 | `exec_past_noexec_mounts` (`ld.so ./bin`, mmap PROT_EXEC, memfd_create + fexecve) | `noexec` {cwd}/{tmp} (EPERM); `vm.memfd_noexec = 2` (EACCES), or seccomp `memfd_create` → ENOSYS + degradation `memfd_noexec` before Linux 6.3 |
//! | 54 | `pending_signals_are_not_charged_to_root` (300 queued in a cell; root queues 100 under RLIMIT_SIGPENDING 250) | the cell's user namespace is created by its own host uid: ucounts charged there, not to root |
//! | 55 | `inotify_instances_are_not_charged_to_root` (20 instances held in a cell) | same: root's free instances do not fall |
//! | 56 | `concurrent_daemon_cells_never_share_a_host_uid` | a host uid per cell, leased from the daemon's `cell_id_range` (flock under /run/cellkeep/ids) |
//! | 57 | `concurrent_runs_never_share_a_host_uid` (two `cellkeep run`s) | same lease, across processes |
//! | 58 | `nobody_cannot_kill_a_cell` (`setpriv --reuid 65534 kill -KILL`, read its environ) | the payload's uid is its own (EPERM); the payload's and pid 1's real/effective/saved/fs ids are all the cell's |
//! | 59 | `files_a_cell_creates_belong_to_the_workspaces_owner` (a workspace of 4321) | idmapped workspace (owner ↔ cell); else `fallback_owner`, reported |
//! | 60 | `workspace_idmap_fallback_is_reported` (ramfs; tmpfs before 6.3) | `workspace_idmap`: `fallback_owner`, `fallback_cell` (degradation `workspace_idmap`), `required` (setup_failed at mounts) |
//! | 61 | `a_crash_never_runs_the_hosts_core_handler` (SIGSEGV under a pipe `core_pattern`) | RLIMIT_CORE = 1 (0 is ignored for a pipe: the host's handler ran as root, per crash) |
//! | 62 | `a_caller_cannot_enter_its_cells_user_namespace` (a non-root caller's setns into its cell's userns) | the namespace's owner is a host id leased for the cell (EACCES/EPERM) |
//! | 63 | `a_cells_budgets_are_not_its_callers` (20 inotify instances in a cell of nobody's) | same: charged to the leased owner, not the caller |
//! | 64 | `a_callers_uid_keyed_budgets_are_not_its_cells` (a cell of nobody's takes every pipe page it can) | a host uid of its own, the caller's inside; the workspace idmapped (what it writes stays the caller's) |
//! | 65 | `socket_ioctls_load_no_module` (SIOCGIFBR, SIOCBRADDBR, SIOCGIFVLAN, SIOCADDDLCI on any socket) | seccomp in every cell (EPERM): no root modprobe on the host |
//! | 66 | `tiocsetd_on_the_cells_own_tty` (line discipline 29, n_hdlc) | same (EPERM) |
//! | 67 | `a_cell_cannot_grow_the_pipes_root_made` (F_SETPIPE_SZ on its stdio) | seccomp in every cell (EPERM): root's pipe-page budget is not the cell's |
//! | 68 | `pid1_stays_undumpable_whatever_suid_dumpable` (`fs.suid_dumpable = 1`; a host process of the cell's uid reads pid 1's environ) | pid 1 non-dumpable again after its change of ids, checked |
//! | 69 | `mounts_inside_a_workspace_stay_outside_the_view` (a root-owned workspace holding a `proc` and an rbound `dev`) | the workspace is a clone of its own mount only (`open_tree`, made outside the cell): ENOENT / empty |
//!
//! The battery found four weaknesses, fixed since: #8 (a cell could drive a world-connectable
//! daemon socket), #26 (ioctl request 0x1_0000_5412 slipped past the 64-bit TIOCSTI rule),
//! #37 (no inode cap on the private tmp: a file flood ended in an OOM kill, not ENOSPC) and
//! #40 (a `{cwd}/…` rule followed a symlink planted in the workspace to its target).
//! Issue 14 (an attacker's review of the agent policy) added #45–49: option injection,
//! vsock and MPTCP sockets, and the host network the agent cells used to share.
//! Issue 13 (cells that share nothing) added #50–53: host and other cells' UNIX sockets, names
//! and metadata outside every grant, and exec past the exec rules.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: failing loudly is the point

mod common;
mod harness;

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::gate;
use common::http::{call, raw};
use common::{Run, World, BIN, NOBODY};
use harness::{host_has_process, Builder, Daemon};
use serde_json::{json, Value};

const PY: &str = "/usr/bin/python3";

/// Shared by every attempt script. `sc(label, nr, ...)` makes a raw x86_64 syscall and
/// `op(label, fn)` a Python call; both print `label OK …` or `label ERRNO_NAME`.
const PRELUDE: &str = r#"
import ctypes, errno, os, sys, socket, json
libc = ctypes.CDLL(None, use_errno=True)
def ename(e): return errno.errorcode.get(e, str(e))
def sc(label, nr, *args):
    a = [ctypes.c_long(x) if isinstance(x, int) else x for x in args]
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *a)
    print(label, 'OK' if r != -1 else ename(ctypes.get_errno()), r, flush=True)
    return r
def op(label, f):
    try:
        v = f()
    except OSError as e:
        print(label, ename(e.errno), flush=True)
        return None
    print(label, 'OK', repr(v)[:300].replace('\n', ' '), flush=True)
    return v
def write(path, data, mode='w'):
    with open(path, mode) as f:
        f.write(data)
    return len(data)
def read(path):
    with open(path, 'rb') as f:
        return f.read(4096)
"#;

// ------------------------------------------------------------------------------------------
// Support
// ------------------------------------------------------------------------------------------

fn uid() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// `# marker` + prelude + body: the marker lands in the payload's command line, so a payload
/// left running on the host can be found by it.
fn script(marker: &str, body: &str) -> String {
    format!("# {marker}\n{PRELUDE}\n{body}\nprint('done', flush=True)\n")
}

/// The result word after `label` (`OK`, `EACCES`, …) on the line starting with `label `.
fn result_of(out: &str, label: &str) -> String {
    line_of(out, label).split_whitespace().next().unwrap_or("<empty>").to_owned()
}

/// The rest of the line starting with `label `, or `<no result line>`.
fn line_of(out: &str, label: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(label).and_then(|r| r.strip_prefix(' ')))
        .map(str::to_owned)
        .unwrap_or_else(|| "<no result line>".to_owned())
}

/// Assert the attempt `label` failed with one of `want`; on failure say what leaked.
#[track_caller]
fn denied(out: &str, ctx: &str, label: &str, want: &[&str], leak: &str) {
    let got = result_of(out, label);
    assert!(
        want.contains(&got.as_str()),
        "ESCAPE: {leak}\n  attempt `{label}` returned {got} (expected {}): {}\n{ctx}",
        want.join(" or "),
        line_of(out, label)
    );
}

/// The script ran to its end (it was not killed or crashed half-way).
#[track_caller]
fn finished(out: &str, ctx: &str) {
    assert!(out.lines().any(|l| l == "done"), "the attempt script did not run to its end\n{ctx}");
}

/// After a `cellkeep run` attempt: no cell cgroup left and no payload process on the host.
#[track_caller]
fn contained(w: &World, marker: &str) {
    w.assert_no_cells();
    assert!(!host_has_process(marker), "a process of the cell ({marker}) is still running on the host");
}

/// One attempt under `cellkeep run` with the base policy: python3 -c SCRIPT ARGS….
struct Attempt {
    w: World,
    marker: String,
}

impl Attempt {
    fn new() -> Attempt {
        Attempt { w: World::new(), marker: format!("ck-escape-{}", uid()) }
    }

    fn policy(&self, body: &str) -> PathBuf {
        self.w.policy("t", "", body)
    }

    fn run(&self, body: &str, args: &[&str]) -> Run {
        self.run_with(&self.policy(""), body, args)
    }

    fn run_with(&self, policy: &Path, body: &str, args: &[&str]) -> Run {
        let s = script(&self.marker, body);
        let mut argv = vec![PY, "-c", s.as_str()];
        argv.extend_from_slice(args);
        let r = self.w.run(policy, &argv);
        eprintln!("cell output:\n{}", r.output());
        r
    }

    #[track_caller]
    fn contained(&self) {
        contained(&self.w, &self.marker);
    }
}

/// A file or directory the test plants on the host, removed on drop.
struct Planted(PathBuf);

impl Drop for Planted {
    fn drop(&mut self) {
        if self.0.is_dir() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// `/home/ck-victim-*/secret`: another user's home, world-readable (mode 0644 in a 0755 dir),
/// so only Landlock stands between a cell and the file.
fn plant_victim_home() -> (Planted, PathBuf, String) {
    let home = PathBuf::from(format!("/home/ck-victim-{}", &uid()[20..]));
    std::fs::create_dir(&home).expect("create the victim's home");
    let planted = Planted(home.clone());
    let secret = home.join("secret");
    let content = format!("victim-secret-{}", uid());
    std::fs::write(&secret, &content).expect("write the victim's secret");
    std::fs::set_permissions(&home, PermissionsExt::from_mode(0o755)).expect("chmod home");
    std::fs::set_permissions(&secret, PermissionsExt::from_mode(0o644)).expect("chmod secret");
    std::os::unix::fs::chown(&home, Some(4242), Some(4242)).expect("chown home");
    std::os::unix::fs::chown(&secret, Some(4242), Some(4242)).expect("chown secret");
    (planted, secret, content)
}

/// A world-writable directory (0777) planted under `parent`: DAC would let anyone write there,
/// so a denial proves Landlock.
fn plant_open_dir(parent: &str) -> Planted {
    let dir = PathBuf::from(format!("{parent}/ck-escape-{}", &uid()[20..]));
    std::fs::create_dir(&dir).expect("create a 0777 dir");
    std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o777)).expect("chmod 0777");
    Planted(dir)
}

// ------------------------------------------------------------------------------------------
// A daemon of the test's own
// ------------------------------------------------------------------------------------------

/// The session loop of provider `pysh`: each command is a JSON string of Python source; the
/// reply is one line, the JSON string of what the source printed.
const SESSION_LOOP: &str = r#"
import io, contextlib
for line in sys.stdin:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            exec(json.loads(line), dict(globals()))
        except Exception as e:
            print('EXCEPTION', type(e).__name__, e)
    print(json.dumps(buf.getvalue()), flush=True)
"#;

/// A daemon (tests/harness) with its state under `/run/ck-esc-*` (config, `policies/`,
/// `sock/cellkeep.sock`), the shipped socket mode (0660), a workspace under /tmp and a cgroup
/// root of its own. Providers: `py` (one-shot `python3 -c COMMAND`), `pytty` (the same with
/// `tty = true`), `pysh` (a Python session, [`SESSION_LOOP`]) and `open` (like `py`, also
/// usable by uid 65534). Each test adds what it changes, then `start()`s it.
fn daemon() -> Builder {
    let marker = format!("ck-escape-{}", uid());
    let q = |s: &str| serde_json::to_string(s).expect("json string");
    let py = format!("[{}, \"-c\"]", q(PY));
    let session = script(&marker, SESSION_LOOP);
    Daemon::builder()
        .state_in("/run")
        .prefix("ck-esc-")
        .socket("sock/cellkeep.sock")
        .socket_mode(None)
        .log_level("warn")
        .marker(&marker)
        .provider("py", &py, "oneshot", "")
        .provider("pytty", &py, "oneshot", "tty = true")
        .provider("pysh", &format!("[{}, \"-u\", \"-c\", {}]", q(PY), q(&session)), "session", "")
        .provider("open", &py, "oneshot", "[access]\nuids = [0, 65534]")
}

impl Daemon {
    /// The host's Landlock ABI, as the daemon reports it.
    fn landlock_abi(&self) -> i64 {
        call(&self.socket, "GET", "/v1/health", None).json()["landlock_abi"].as_i64().unwrap_or(0)
    }

    /// The degradations reported for the cell that answered `reply`.
    fn degraded(&self, reply: &Value) -> Vec<String> {
        let id = reply["cell"].as_str().unwrap_or("");
        let info = call(&self.socket, "GET", &format!("/v1/cells/{id}"), None).json();
        info["degraded"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["mechanism"].as_str())
            .map(str::to_owned)
            .collect()
    }

    /// A one-shot cell of `provider` running `body`; the reply (`stdout`, `stderr`, `exit`).
    fn oneshot(&self, provider: &str, body: &str) -> Value {
        let r = call(
            &self.socket,
            "POST",
            &format!("/v1/providers/{provider}/commands"),
            Some(&json!({"command": script(&self.marker, body), "cwd": self.cwd(), "timeout_ms": 10000})),
        );
        assert_eq!(r.status, 200, "one-shot {provider}: {}", r.text());
        let v = r.json();
        eprintln!("cell output:\n{}", v["stdout"].as_str().unwrap_or(""));
        v
    }

    /// Start a `pysh` session; (id, host pid of the payload).
    fn session(&self) -> (String, u32) {
        let r = call(&self.socket, "POST", "/v1/cells", Some(&json!({"provider": "pysh", "cwd": self.cwd()})));
        assert_eq!(r.status, 201, "spawn pysh: {}", r.text());
        let v = r.json();
        let id = v["id"].as_str().unwrap_or_else(|| panic!("no id: {v}")).to_owned();
        let pid = v["pid"].as_u64().unwrap_or_else(|| panic!("no pid: {v}")) as u32;
        (id, pid)
    }

    /// Run Python `body` in session `id`; what it printed.
    fn exec(&self, id: &str, body: &str) -> String {
        let command = serde_json::to_string(body).expect("json");
        let r = call(
            &self.socket,
            "POST",
            &format!("/v1/cells/{id}/commands"),
            Some(&json!({"command": command, "timeout_ms": 10000})),
        );
        assert_eq!(r.status, 200, "command in {id}: {}", r.text());
        let reply = r.json()["stdout"].as_str().unwrap_or("").to_owned();
        let out: String = serde_json::from_str(&reply).unwrap_or_else(|_| panic!("session reply: {}", r.text()));
        eprintln!("cell output:\n{out}");
        out
    }

    fn cell_cgroup(&self, id: &str) -> cellkeep::cgroup::CellCgroup {
        cellkeep::cgroup::CgroupRoot::open(&self.cgroup_root)
            .and_then(|r| r.open_cell(id))
            .unwrap_or_else(|e| panic!("cgroup of cell {id}: {e}"))
    }

    #[track_caller]
    fn assert_healthy(&self) {
        let r = call(&self.socket, "GET", "/v1/health", None);
        assert_eq!(r.status, 200, "the daemon stopped answering: {}", r.text());
    }

    /// End every cell, then: every cell cgroup is gone and no payload is left on the host.
    #[track_caller]
    fn assert_contained(&self) {
        let cells = call(&self.socket, "GET", "/v1/cells", None).json();
        for c in cells.as_array().into_iter().flatten() {
            if let Some(id) = c["id"].as_str() {
                call(&self.socket, "DELETE", &format!("/v1/cells/{id}?force=true"), None);
            }
        }
        let t = Instant::now();
        while !self.cells_on_disk().is_empty() && t.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(self.cells_on_disk().is_empty(), "cell cgroups left behind: {:?}", self.cells_on_disk());
        assert!(!host_has_process(&self.marker), "a cell process ({}) is still running on the host", self.marker);
    }
}

/// `(stdout, context)` of a daemon one-shot reply.
fn reply(v: &Value) -> (String, String) {
    (v["stdout"].as_str().unwrap_or("").to_owned(), format!("reply: {v}"))
}

// ------------------------------------------------------------------------------------------
// 1–4: reading secrets, writing the system
// ------------------------------------------------------------------------------------------

// 1. /etc is readable (base lists it) but /etc/shadow is 0640 root:shadow: the payload is
//    nobody with no capabilities, so DAC refuses it.
#[test]
fn read_etc_shadow() {
    gate!("read_etc_shadow");
    let a = Attempt::new();
    let r = a.run(
        "op('read /etc/shadow', lambda: read('/etc/shadow'))\nop('read /etc/gshadow', lambda: read('/etc/gshadow'))",
        &[],
    );
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    denied(&out, &ctx, "read /etc/shadow", &["EACCES"], "the cell read /etc/shadow (password hashes)");
    denied(&out, &ctx, "read /etc/gshadow", &["EACCES", "ENOENT"], "the cell read /etc/gshadow");
    a.contained();
}

// 2. Another user's world-readable file under /home: DAC allows it, Landlock must not
//    (/home is a workdir root but not in base's read list).
#[test]
fn read_another_users_home() {
    gate!("read_another_users_home");
    let (_home, secret, content) = plant_victim_home();
    let a = Attempt::new();
    let body = "p = sys.argv[1]\nop('read secret', lambda: read(p))\nop('list home', lambda: os.listdir(os.path.dirname(p)))\nop('list /home', lambda: os.listdir('/home'))\nop('stat secret', lambda: os.stat(p).st_size)";
    let r = a.run(body, &[secret.to_str().expect("utf-8")]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    assert!(!out.contains(&content), "ESCAPE: the cell read {} ({content})\n{ctx}", secret.display());
    denied(&out, &ctx, "read secret", &["ENOENT"], &format!("the cell read another user's file {}", secret.display()));
    denied(&out, &ctx, "list home", &["ENOENT"], "the cell listed another user's home");
    denied(&out, &ctx, "list /home", &["ENOENT"], "the cell listed /home");
    a.contained();
}

// 3. /usr: read+exec only. A 0777 dir planted under /usr/local shows Landlock alone holds.
#[test]
fn write_usr() {
    gate!("write_usr");
    let open = plant_open_dir("/usr/local");
    let a = Attempt::new();
    let body = "d = sys.argv[1]\n\
        op('create in 0777 dir', lambda: write(d + '/pwned', 'x'))\n\
        op('mkdir in 0777 dir', lambda: os.mkdir(d + '/sub'))\n\
        op('create /usr/bin/pwned', lambda: write('/usr/bin/ck-pwned', 'x'))\n\
        op('overwrite /usr/bin/true', lambda: write('/usr/bin/true', 'x', 'r+'))\n\
        op('unlink /usr/bin/true', lambda: os.unlink('/usr/bin/true'))\n\
        op('rename /usr/bin/true', lambda: os.rename('/usr/bin/true', '/usr/bin/ck-true'))";
    let true_before = std::fs::read("/usr/bin/true").expect("/usr/bin/true");
    let r = a.run(body, &[open.0.to_str().expect("utf-8")]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    for label in ["create in 0777 dir", "mkdir in 0777 dir", "create /usr/bin/pwned", "overwrite /usr/bin/true"] {
        denied(&out, &ctx, label, &["EACCES", "EROFS"], &format!("the cell wrote under /usr ({label})"));
    }
    for label in ["unlink /usr/bin/true", "rename /usr/bin/true"] {
        denied(&out, &ctx, label, &["EACCES", "EROFS"], &format!("the cell changed /usr ({label})"));
    }
    assert_eq!(
        std::fs::read_dir(&open.0).expect("planted dir").count(),
        0,
        "the cell created files in {}",
        open.0.display()
    );
    assert!(!Path::new("/usr/bin/ck-pwned").exists(), "the cell created /usr/bin/ck-pwned");
    assert_eq!(std::fs::read("/usr/bin/true").expect("/usr/bin/true"), true_before, "/usr/bin/true was modified");
    a.contained();
}

// 4. /etc: read only. /etc/ld.so.preload would own every later process on the host.
#[test]
fn write_etc() {
    gate!("write_etc");
    let open = plant_open_dir("/etc");
    let preload_before = std::fs::read("/etc/ld.so.preload").ok();
    let passwd_before = std::fs::read("/etc/passwd").expect("/etc/passwd");
    let a = Attempt::new();
    let body = "d = sys.argv[1]\n\
        op('create in 0777 dir', lambda: write(d + '/pwned', 'x'))\n\
        op('create /etc/ld.so.preload', lambda: write('/etc/ld.so.preload', '/tmp/evil.so\\n', 'a'))\n\
        op('append /etc/passwd', lambda: write('/etc/passwd', 'evil::0:0::/:/bin/sh\\n', 'a'))\n\
        op('create /etc/cron.d/evil', lambda: write('/etc/cron.d/ck-evil', '* * * * * root id\\n'))\n\
        op('symlink in /etc', lambda: os.symlink('/tmp', '/etc/ck-evil-link'))";
    let r = a.run(body, &[open.0.to_str().expect("utf-8")]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    denied(&out, &ctx, "create in 0777 dir", &["EACCES", "EROFS"], "the cell wrote into a 0777 dir under /etc");
    denied(&out, &ctx, "create /etc/ld.so.preload", &["EACCES", "EROFS"], "the cell wrote /etc/ld.so.preload");
    denied(&out, &ctx, "append /etc/passwd", &["EACCES", "EROFS"], "the cell appended to /etc/passwd");
    denied(&out, &ctx, "create /etc/cron.d/evil", &["EROFS", "ENOENT"], "the cell created a cron job");
    denied(&out, &ctx, "symlink in /etc", &["EACCES", "EROFS"], "the cell created a symlink in /etc");
    assert_eq!(std::fs::read("/etc/ld.so.preload").ok(), preload_before, "/etc/ld.so.preload changed");
    assert_eq!(std::fs::read("/etc/passwd").expect("/etc/passwd"), passwd_before, "/etc/passwd changed");
    assert!(!Path::new("/etc/cron.d/ck-evil").exists() && !Path::new("/etc/ck-evil-link").exists());
    assert_eq!(
        std::fs::read_dir(&open.0).expect("planted dir").count(),
        0,
        "the cell created files in {}",
        open.0.display()
    );
    a.contained();
}

// ------------------------------------------------------------------------------------------
// 5–8: the daemon's files and socket
// ------------------------------------------------------------------------------------------

// 5. The daemon's state (policy dir, config), opened up to 0777/0666 so DAC would allow the
//    writes: Landlock must refuse them (/run is not listed in base).
#[test]
fn write_daemon_state_dir() {
    gate!("write_daemon_state_dir");
    let d = daemon().start();
    let state = d.dir.path();
    let pol = state.join("policies");
    std::fs::set_permissions(&pol, PermissionsExt::from_mode(0o777)).expect("chmod policies");
    for f in ["py.toml", "base.toml"] {
        std::fs::set_permissions(pol.join(f), PermissionsExt::from_mode(0o666)).expect("chmod policy");
    }
    std::fs::set_permissions(state.join("cellkeep.toml"), PermissionsExt::from_mode(0o666)).expect("chmod config");
    let snapshot = |p: &Path| std::fs::read(p).unwrap_or_default();
    let before: Vec<Vec<u8>> =
        ["policies/py.toml", "policies/base.toml", "cellkeep.toml"].iter().map(|f| snapshot(&state.join(f))).collect();
    let body = format!(
        "d = {dir:?}\n\
         op('create policy', lambda: write(d + '/policies/evil.toml', 'extends = \"base\"\\n'))\n\
         op('append policy', lambda: write(d + '/policies/py.toml', '[seccomp]\\npreset = \"none\"\\n', 'a'))\n\
         op('truncate base', lambda: os.truncate(d + '/policies/base.toml', 0))\n\
         op('unlink policy', lambda: os.unlink(d + '/policies/py.toml'))\n\
         op('write config', lambda: write(d + '/cellkeep.toml', 'socket_mode = \"0666\"\\n', 'a'))\n\
         op('list state dir', lambda: os.listdir(d))",
        dir = state.display().to_string()
    );
    let v = d.oneshot("py", &body);
    let (out, ctx) = reply(&v);
    finished(&out, &ctx);
    // truncate(2) is mediated from Landlock ABI 3 on; below it, only file permissions (which
    // this test opened to 0666 on purpose) stand in its way, and the launch must say so.
    let truncate_mediated = d.landlock_abi() >= 3;
    for label in ["create policy", "append policy", "truncate base", "unlink policy", "write config"] {
        if label == "truncate base" && !truncate_mediated {
            let degraded = d.degraded(&v);
            assert!(
                degraded.iter().any(|m| m == "landlock_truncate"),
                "Landlock ABI < 3 and no landlock_truncate degradation reported: {degraded:?}\n{ctx}"
            );
            continue;
        }
        denied(&out, &ctx, label, &["ENOENT"], &format!("the cell changed the daemon's state ({label})"));
    }
    denied(&out, &ctx, "list state dir", &["ENOENT"], "the cell listed the daemon's state dir");
    let files: &[&str] = if truncate_mediated {
        &["policies/py.toml", "policies/base.toml", "cellkeep.toml"]
    } else {
        &["policies/py.toml", "cellkeep.toml"]
    };
    let after: Vec<Vec<u8>> = files.iter().map(|f| snapshot(&state.join(f))).collect();
    let before: Vec<Vec<u8>> = before
        .into_iter()
        .zip(["policies/py.toml", "policies/base.toml", "cellkeep.toml"])
        .filter(|(_, f)| files.contains(f))
        .map(|(b, _)| b)
        .collect();
    assert_eq!(before, after, "the daemon's policy or config files changed");
    assert!(!pol.join("evil.toml").exists(), "the cell planted a policy");
    d.assert_healthy();
    d.assert_contained();
}

// 6. The socket's directory, opened up to 0777: unlinking or replacing the socket (a fake
//    daemon for the next client) must fail.
#[test]
fn write_daemon_socket_dir() {
    gate!("write_daemon_socket_dir");
    let d = daemon().start();
    let sock_dir = d.socket.parent().expect("socket dir").to_owned();
    std::fs::set_permissions(&sock_dir, PermissionsExt::from_mode(0o777)).expect("chmod socket dir");
    let body = format!(
        "s = {sock:?}\n\
         op('unlink socket', lambda: os.unlink(s))\n\
         op('rename socket', lambda: os.rename(s, s + '.old'))\n\
         op('create file', lambda: write(s + '.evil', 'x'))\n\
         def bind():\n    u = socket.socket(socket.AF_UNIX); u.bind(s + '.fake'); return 'bound'\n\
         op('bind fake socket', bind)\n\
         op('chmod socket', lambda: os.chmod(s, 0o777))",
        sock = d.socket.display().to_string()
    );
    let v = d.oneshot("py", &body);
    let (out, ctx) = reply(&v);
    finished(&out, &ctx);
    for label in ["unlink socket", "rename socket", "create file", "bind fake socket"] {
        denied(&out, &ctx, label, &["ENOENT"], &format!("the cell changed the daemon's socket dir ({label})"));
    }
    denied(&out, &ctx, "chmod socket", &["ENOENT"], "the cell changed the socket's mode");
    let names: Vec<String> = std::fs::read_dir(&sock_dir)
        .expect("socket dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["cellkeep.sock".to_owned()], "the socket dir changed");
    d.assert_healthy();
    d.assert_contained();
}

/// Connect to the daemon's socket, ask for health, then ask for a new cell of provider `open`.
fn connect_body(socket: &Path, cwd: &str) -> String {
    format!(
        "s = {sock:?}\n\
         def ask(method, path, body=b''):\n    u = socket.socket(socket.AF_UNIX); u.settimeout(5); u.connect(s)\n    \
         u.sendall(('%s %s HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: application/json\\r\\nConnection: close\\r\\nContent-Length: %d\\r\\n\\r\\n' % (method, path, len(body))).encode() + body)\n    \
         data = b''\n    while True:\n        chunk = u.recv(65536)\n        if not chunk: break\n        data += chunk\n    \
         return data.decode(errors='replace').split('\\r\\n')[0] + ' | ' + data.decode(errors='replace').split('\\r\\n\\r\\n')[-1][:300]\n\
         op('connect', lambda: ask('GET', '/v1/health'))\n\
         op('spawn through the daemon', lambda: ask('POST', '/v1/providers/open/commands', json.dumps({{'command': 'import os; print(os.getuid())', 'cwd': {cwd:?}}}).encode()))",
        sock = socket.display().to_string(),
    )
}

// 7. The daemon's socket at the shipped default mode (0660, root's group): the payload is
//    nobody (or the caller without supplementary groups), so connect(2) gets EACCES.
#[test]
fn connect_daemon_socket() {
    gate!("connect_daemon_socket");
    let d = daemon().start();
    let mode = std::fs::metadata(&d.socket).expect("socket").mode() & 0o777;
    assert_eq!(mode, 0o660, "the shipped default socket mode changed");
    let v = d.oneshot("py", &connect_body(&d.socket, &d.cwd()));
    let (out, ctx) = reply(&v);
    finished(&out, &ctx);
    denied(
        &out,
        &ctx,
        "connect",
        &["ENOENT"],
        &format!("the cell connected to the daemon's socket {}", d.socket.display()),
    );
    denied(&out, &ctx, "spawn through the daemon", &["ENOENT"], "the cell drove the daemon from inside");
    d.assert_healthy();
    d.assert_contained();
}

// 8. The same socket made world-connectable (socket_mode = "0666", a documented setting; access
//    is then decided by the peer's uid and each policy's [access] lists). Nothing in the cell
//    stops connect(2) to a pathname UNIX socket it can see: Landlock (ABI ≤ 7) has no right for
//    it, seccomp cannot look at the path, and the socket's directory is in the cell's mount
//    view. A cell then talks to the daemon as its run-as uid — for `run_as = "caller"` that is
//    the caller — and could start new cells under any provider that uid may use. The daemon
//    therefore refuses peers that live in one of its cells (SO_PEERCRED pid → /proc/PID/cgroup
//    under the cgroup root): every request gets 403.
#[test]
fn connect_world_connectable_daemon_socket() {
    gate!("connect_world_connectable_daemon_socket");
    let d = daemon().socket_mode(Some("0666")).start();
    let v = d.oneshot("py", &connect_body(&d.socket, &d.cwd()));
    let (out, ctx) = reply(&v);
    finished(&out, &ctx);
    // The socket's directory is not in the cell's mount view (ENOENT). Behind that, for a
    // policy that would show it: Landlock has no right for connect(2) to a socket file, and the
    // daemon sees from the peer's cgroup that it sits inside a cell and refuses every request.
    for op in ["connect", "spawn through the daemon"] {
        let line = line_of(&out, op);
        assert!(
            result_of(&out, op) == "ENOENT" || (line.contains("403") && line.contains("forbidden")),
            "ESCAPE: a request from inside a cell to {} (mode 0666) was served ({op}): {line}\n{ctx}",
            d.socket.display()
        );
    }
    let all = call(&d.socket, "GET", "/v1/cells?all=true", None).json();
    let opened: Vec<_> = all.as_array().into_iter().flatten().filter(|c| c["provider"] == "open").collect();
    assert!(opened.is_empty(), "ESCAPE: the cell had the daemon start cells of provider `open`: {opened:?}\n{ctx}");
    d.assert_healthy();
    d.assert_contained();
}

// ------------------------------------------------------------------------------------------
// 9–10: network
// ------------------------------------------------------------------------------------------

// 9. base: network = "none" → a network namespace whose only interface, lo, is down.
#[test]
fn tcp_connect_with_network_none() {
    gate!("tcp_connect_with_network_none");
    let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("host listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port().to_string();
    // The host's own address on its default route (no packet is sent by a UDP connect).
    let host_ip = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|u| u.connect("1.1.1.1:53").and_then(|()| u.local_addr()))
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "10.0.0.1".to_owned());
    let a = Attempt::new();
    let body = "port = int(sys.argv[1]); host_ip = sys.argv[2]\n\
        def tcp(addr, fam=socket.AF_INET):\n    s = socket.socket(fam); s.settimeout(2); s.connect(addr); return 'connected'\n\
        op('tcp 127.0.0.1', lambda: tcp(('127.0.0.1', port)))\n\
        op('tcp host ip', lambda: tcp((host_ip, port)))\n\
        op('tcp internet', lambda: tcp(('1.1.1.1', 80)))\n\
        op('tcp6 ::1', lambda: tcp(('::1', port), socket.AF_INET6))\n\
        def udp():\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); return s.sendto(b'x', ('8.8.8.8', 53))\n\
        op('udp internet', udp)\n\
        print('interfaces', ','.join(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]))";
    let r = a.run(body, &[&port, &host_ip]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    for label in ["tcp 127.0.0.1", "tcp host ip", "tcp internet", "udp internet"] {
        denied(
            &out,
            &ctx,
            label,
            &["ENETUNREACH"],
            &format!("network = none, yet the cell reached the network ({label})"),
        );
    }
    denied(&out, &ctx, "tcp6 ::1", &["ENETUNREACH", "EADDRNOTAVAIL", "EAFNOSUPPORT"], "the cell reached ::1");
    assert_eq!(line_of(&out, "interfaces"), "lo", "the cell sees interfaces other than lo\n{ctx}");
    assert!(listener.accept().is_err(), "ESCAPE: the host listener on port {port} accepted a connection from the cell");
    a.contained();
}

// 10. An abstract UNIX socket of the host (abstract names are per network namespace; Landlock
//     ABI 6 also scopes them to the cell's domain).
#[test]
fn abstract_unix_socket_of_the_host() {
    gate!("abstract_unix_socket_of_the_host");
    use std::os::linux::net::SocketAddrExt;
    let name = format!("ck-escape-{}", uid());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract addr");
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr).expect("host abstract listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let a = Attempt::new();
    let body = "def c():\n    u = socket.socket(socket.AF_UNIX); u.connect('\\0' + sys.argv[1]); return 'connected'\nop('connect abstract', c)";
    let r = a.run(body, &[&name]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    denied(
        &out,
        &ctx,
        "connect abstract",
        &["ECONNREFUSED", "EPERM"],
        &format!("the cell reached the host's abstract socket @{name}"),
    );
    assert!(listener.accept().is_err(), "ESCAPE: the host's abstract socket accepted a connection from the cell");
    a.contained();
}

// ------------------------------------------------------------------------------------------
// 11–15: other processes
// ------------------------------------------------------------------------------------------

// 11. ptrace the test process (a host pid): not even visible in the cell's pid namespace, and
//     ptrace is denied outright by the seccomp preset.
#[test]
fn ptrace_a_host_pid() {
    gate!("ptrace_a_host_pid");
    let host = std::process::id().to_string();
    let a = Attempt::new();
    let body = "hp = int(sys.argv[1])\n\
        print('visible', os.path.exists('/proc/%d' % hp))\n\
        op('kill 0 host pid', lambda: os.kill(hp, 0))\n\
        sc('ptrace attach host pid', 101, 16, hp, 0, 0)\n\
        sc('ptrace seize host pid', 101, 0x4206, hp, 0, 0)\n\
        sc('ptrace attach pid 1', 101, 16, 1, 0, 0)\n\
        sc('ptrace traceme', 101, 0, 0, 0, 0)";
    let r = a.run(body, &[&host]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    assert_eq!(line_of(&out, "visible"), "False", "the test process (host pid {host}) is visible in the cell\n{ctx}");
    denied(&out, &ctx, "kill 0 host pid", &["ESRCH"], &format!("the cell can signal host pid {host}"));
    for label in ["ptrace attach host pid", "ptrace seize host pid", "ptrace attach pid 1", "ptrace traceme"] {
        denied(&out, &ctx, label, &["EPERM"], &format!("ptrace was allowed ({label})"));
    }
    a.contained();
}

// 12. process_vm_readv/writev of a host pid and of the cell's pid 1: seccomp.
#[test]
fn process_vm_readv_a_host_pid() {
    gate!("process_vm_readv_a_host_pid");
    let host = std::process::id().to_string();
    let a = Attempt::new();
    let body = "hp = int(sys.argv[1])\n\
        class iov(ctypes.Structure): _fields_ = [('b', ctypes.c_void_p), ('l', ctypes.c_size_t)]\n\
        buf = ctypes.create_string_buffer(64)\n\
        local = iov(ctypes.cast(buf, ctypes.c_void_p), 64); remote = iov(0x400000, 64)\n\
        sc('readv host pid', 310, hp, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)\n\
        sc('readv pid 1', 310, 1, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)\n\
        sc('writev host pid', 311, hp, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)\n\
        op('open /proc/1/mem', lambda: read('/proc/1/mem'))";
    let r = a.run(body, &[&host]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    for label in ["readv host pid", "readv pid 1", "writev host pid"] {
        denied(&out, &ctx, label, &["EPERM"], &format!("process_vm_* was allowed ({label})"));
    }
    denied(&out, &ctx, "open /proc/1/mem", &["EACCES", "EPERM"], "the cell read pid 1's memory");
    a.contained();
}

// 13. Two cells of one daemon: the second lists /proc and looks for the first.
#[test]
fn see_another_cells_processes() {
    gate!("see_another_cells_processes");
    let d = daemon().start();
    let (first, first_pid) = d.session();
    let body = format!(
        "other = {first_pid}\n\
         needle = 'for line in ' + 'sys.stdin'\n\
         pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n\
         print('pids', ' '.join(map(str, pids)))\n\
         print('other visible', os.path.exists('/proc/%d' % other))\n\
         seen = []\n\
         for p in pids:\n    try:\n        c = read('/proc/%d/cmdline' % p)\n    except OSError:\n        continue\n    \
         if needle.encode() in c: seen.append(p)\n\
         print('sessions seen', seen)"
    );
    let v = d.oneshot("py", &body);
    let (out, ctx) = reply(&v);
    finished(&out, &ctx);
    assert_eq!(
        line_of(&out, "other visible"),
        "False",
        "ESCAPE: the other cell's payload (host pid {first_pid}) is visible\n{ctx}"
    );
    assert_eq!(line_of(&out, "sessions seen"), "[]", "ESCAPE: the cell sees the other cell's session process\n{ctx}");
    let pids: Vec<u32> = line_of(&out, "pids").split_whitespace().filter_map(|p| p.parse().ok()).collect();
    assert!(
        pids.contains(&1) && pids.len() <= 3 && pids.iter().all(|p| *p < 10),
        "ESCAPE: the cell sees pids {pids:?} beyond its own\n{ctx}"
    );
    // The first cell is still there, untouched.
    assert_eq!(d.exec(&first, "print('alive')"), "alive\n");
    d.assert_contained();
}

// 14. The second cell signals the first: by its host pid, by kill(-1), through a pidfd.
#[test]
fn signal_another_cell() {
    gate!("signal_another_cell");
    let d = daemon().start();
    let (first, first_pid) = d.session();
    let body = format!(
        "other = {first_pid}\n\
         op('kill other', lambda: os.kill(other, 9))\n\
         op('kill process group', lambda: os.killpg(other, 9))\n\
         sc('pidfd_open other', 434, other, 0)\n\
         op('kill -1', lambda: os.kill(-1, 9))"
    );
    let v = d.oneshot("py", &body);
    let (out, ctx) = reply(&v);
    finished(&out, &ctx);
    denied(
        &out,
        &ctx,
        "kill other",
        &["ESRCH"],
        &format!("the cell signalled another cell's payload (host pid {first_pid})"),
    );
    denied(&out, &ctx, "kill process group", &["ESRCH"], "the cell signalled another cell's process group");
    denied(&out, &ctx, "pidfd_open other", &["ESRCH"], "the cell opened a pidfd on another cell");
    denied(&out, &ctx, "kill -1", &["ESRCH"], "kill(-1) reached processes outside the cell's own tree");
    assert!(Path::new(&format!("/proc/{first_pid}")).exists(), "the first cell's payload {first_pid} is gone");
    assert_eq!(d.exec(&first, "print('alive')"), "alive\n", "the first cell was hurt");
    d.assert_contained();
}

// 15. Signal the daemon itself (its host pid): not in the cell's pid namespace.
#[test]
fn signal_the_daemon() {
    gate!("signal_the_daemon");
    let d = daemon().start();
    let body = format!(
        "dp = {pid}\n\
         print('visible', os.path.exists('/proc/%d' % dp))\n\
         op('sigterm daemon', lambda: os.kill(dp, 15))\n\
         op('sigkill daemon', lambda: os.kill(dp, 9))\n\
         op('sigstop daemon', lambda: os.kill(dp, 19))\n\
         op('kill parent', lambda: os.kill(os.getppid(), 9))",
        pid = d.pid()
    );
    let v = d.oneshot("py", &body);
    let (out, ctx) = reply(&v);
    finished(&out, &ctx);
    assert_eq!(line_of(&out, "visible"), "False", "the daemon (host pid {}) is visible in the cell\n{ctx}", d.pid());
    for label in ["sigterm daemon", "sigkill daemon", "sigstop daemon"] {
        denied(&out, &ctx, label, &["ESRCH"], &format!("the cell signalled the daemon ({label})"));
    }
    // The payload's parent is the cell's pid 1, outside the payload's Landlock domain: signal
    // scoping (ABI 6) refuses it. Below ABI 6 the kill succeeds — it can only end the cell
    // itself — and the launch reports the missing scope.
    if d.landlock_abi() >= 6 {
        denied(
            &out,
            &ctx,
            "kill parent",
            &["EPERM"],
            "the payload signalled the cell's pid 1 (Landlock signal scope not applied)",
        );
    } else {
        let degraded = d.degraded(&v);
        assert!(degraded.iter().any(|m| m == "landlock_scope"), "no landlock_scope degradation: {degraded:?}\n{ctx}");
    }
    d.assert_healthy();
    d.assert_contained();
}

// ------------------------------------------------------------------------------------------
// 16–24: kernel attack surface (raw syscalls, x86_64 numbers)
// ------------------------------------------------------------------------------------------

// 16. mount(2), umount2 of /proc (it hides the host's /proc), the new mount API, and the
//     setuid mount(8).
#[test]
fn mount_filesystems() {
    gate!("mount_filesystems");
    let a = Attempt::new();
    let body = "os.makedirs('/tmp/m', exist_ok=True)\n\
        sc('mount tmpfs', 165, b'none', b'/tmp/m', b'tmpfs', 0, 0)\n\
        sc('mount bind /', 165, b'/', b'/tmp/m', 0, 0x1000, 0)\n\
        sc('mount proc', 165, b'proc', b'/tmp/m', b'proc', 0, 0)\n\
        sc('umount2 /proc', 166, b'/proc', 2)\n\
        sc('fsopen', 430, b'tmpfs', 0)\n\
        sc('open_tree', 428, -100, b'/', 1)\n\
        sc('move_mount', 429, -100, b'/tmp', -100, b'/tmp/m', 0)\n\
        sc('fspick', 433, -100, b'/', 0)\n\
        sc('mount_setattr', 442, -100, b'/tmp', 0, 0, 0)\n\
        import subprocess\n\
        p = subprocess.run(['/usr/bin/mount', '-t', 'tmpfs', 'none', '/tmp/m'], capture_output=True, text=True)\n\
        print('mount(8)', 'OK' if p.returncode == 0 else 'denied', p.returncode, p.stderr.strip()[:200])\n\
        print('mounted', any(' /tmp/m ' in l for l in open('/proc/self/mountinfo')))";
    let r = a.run(body, &[]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    for label in [
        "mount tmpfs",
        "mount bind /",
        "mount proc",
        "umount2 /proc",
        "fsopen",
        "open_tree",
        "move_mount",
        "fspick",
        "mount_setattr",
    ] {
        denied(&out, &ctx, label, &["EPERM"], &format!("a mount call was allowed ({label})"));
    }
    denied(&out, &ctx, "mount(8)", &["denied"], "the setuid mount(8) mounted a filesystem");
    assert_eq!(line_of(&out, "mounted"), "False", "ESCAPE: something got mounted on /tmp/m\n{ctx}");
    a.contained();
}

// 17. pivot_root (seccomp) and chroot (no CAP_SYS_CHROOT).
#[test]
fn pivot_root_and_chroot() {
    gate!("pivot_root_and_chroot");
    let a = Attempt::new();
    let body = "os.makedirs('/tmp/old', exist_ok=True)\n\
        sc('pivot_root', 155, b'/tmp', b'/tmp/old')\n\
        sc('chroot', 161, b'/tmp')\n\
        print('root', os.stat('/').st_ino == os.stat('/usr/..').st_ino)";
    let r = a.run(body, &[]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    denied(&out, &ctx, "pivot_root", &["EPERM"], "pivot_root was allowed");
    denied(&out, &ctx, "chroot", &["EPERM"], "chroot was allowed");
    a.contained();
}

// 18. New namespaces: unshare(2), clone(2) with CLONE_NEW*, clone3 (ENOSYS so that glibc falls
//     back to clone, whose flags the filter can read), unshare(1).
#[test]
fn unshare_namespaces() {
    gate!("unshare_namespaces");
    let a = Attempt::new();
    let body = "for name, flag in [('user', 0x10000000), ('mnt', 0x20000), ('net', 0x40000000), ('pid', 0x20000000), ('cgroup', 0x02000000), ('time', 0x80)]:\n    \
        sc('unshare ' + name, 272, flag)\n\
        def clone(label, flags):\n    \
        r = libc.syscall(ctypes.c_long(56), ctypes.c_long(flags | 17), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0))\n    \
        if r == 0: os._exit(0)\n    \
        print(label, 'OK' if r > 0 else ename(ctypes.get_errno()), r, flush=True)\n    \
        if r > 0: os.waitpid(r, 0)\n\
        clone('clone newuser', 0x10000000)\n\
        clone('clone newns', 0x20000)\n\
        args = (ctypes.c_uint64 * 11)(0x10000000, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0)\n\
        sc('clone3 newuser', 435, ctypes.byref(args), 88)\n\
        import subprocess\n\
        p = subprocess.run(['/usr/bin/unshare', '-Ur', 'id', '-u'], capture_output=True, text=True)\n\
        print('unshare(1)', 'OK' if p.returncode == 0 else 'denied', p.returncode, p.stdout.strip(), p.stderr.strip()[:200])\n\
        print('userns', os.readlink('/proc/self/ns/user'))";
    let r = a.run(body, &[]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    for ns in ["user", "mnt", "net", "pid", "cgroup", "time"] {
        denied(&out, &ctx, &format!("unshare {ns}"), &["EPERM"], &format!("unshare of a {ns} namespace was allowed"));
    }
    denied(&out, &ctx, "clone newuser", &["EPERM"], "clone(CLONE_NEWUSER) was allowed");
    denied(&out, &ctx, "clone newns", &["EPERM"], "clone(CLONE_NEWNS) was allowed");
    denied(&out, &ctx, "clone3 newuser", &["ENOSYS"], "clone3(CLONE_NEWUSER) was allowed");
    denied(&out, &ctx, "unshare(1)", &["denied"], "unshare(1) created a user namespace and became root in it");
    a.contained();
}

// 19. setns into the host's namespaces: /proc/1 is the cell's own pid 1 (not dumpable, so its
//     ns files are closed), a host pid's /proc entry does not exist, and setns is denied anyway.
#[test]
fn setns_to_host_namespaces() {
    gate!("setns_to_host_namespaces");
    let host = std::process::id().to_string();
    let a = Attempt::new();
    let body = "hp = int(sys.argv[1])\n\
        for ns in ['mnt', 'user', 'net', 'pid', 'cgroup']:\n    \
        op('open /proc/1/ns/' + ns, lambda: os.open('/proc/1/ns/' + ns, os.O_RDONLY))\n    \
        op('open host ns/' + ns, lambda: os.open('/proc/%d/ns/%s' % (hp, ns), os.O_RDONLY))\n\
        fd = os.open('/proc/self/ns/mnt', os.O_RDONLY)\n\
        sc('setns own mnt', 308, fd, 0)\n\
        sc('setns invalid fd', 308, 999, 0)\n\
        op('open /proc/1/root', lambda: os.listdir('/proc/1/root/'))";
    let r = a.run(body, &[&host]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    for ns in ["mnt", "user", "net", "pid", "cgroup"] {
        denied(
            &out,
            &ctx,
            &format!("open /proc/1/ns/{ns}"),
            &["EACCES"],
            &format!("the cell opened pid 1's {ns} namespace"),
        );
        denied(
            &out,
            &ctx,
            &format!("open host ns/{ns}"),
            &["ENOENT"],
            &format!("the cell opened host pid {host}'s {ns} namespace"),
        );
    }
    denied(&out, &ctx, "setns own mnt", &["EPERM"], "setns was allowed");
    denied(&out, &ctx, "setns invalid fd", &["EPERM"], "setns reached the kernel (the filter let it through)");
    denied(&out, &ctx, "open /proc/1/root", &["EACCES"], "the cell walked pid 1's root");
    a.contained();
}

// 20. Kernel keyrings (shared across containers: the classic keyctl leak).
#[test]
fn keyctl_keyrings() {
    gate!("keyctl_keyrings");
    let a = Attempt::new();
    let body = "sc('keyctl get session keyring', 250, 0, -3, 0, 0)\n\
        sc('keyctl join session', 250, 1, b'ck', 0, 0)\n\
        sc('add_key', 248, b'user', b'ck', b'x', 1, -4)\n\
        sc('request_key', 249, b'user', b'ck', 0, -4)";
    let r = a.run(body, &[]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    for label in ["keyctl get session keyring", "keyctl join session", "add_key", "request_key"] {
        denied(&out, &ctx, label, &["EPERM"], &format!("the keyring API was reachable ({label})"));
    }
    a.contained();
}

// 21. bpf(2): map creation and program load.
#[test]
fn bpf_programs() {
    gate!("bpf_programs");
    let a = Attempt::new();
    let body = "attr = (ctypes.c_uint32 * 32)(2, 4, 4, 1)\n\
        sc('bpf map create', 321, 0, ctypes.byref(attr), 128)\n\
        sc('bpf prog load', 321, 5, ctypes.byref((ctypes.c_uint32 * 32)()), 128)";
    let r = a.run(body, &[]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    denied(&out, &ctx, "bpf map create", &["EPERM"], "bpf(BPF_MAP_CREATE) was allowed");
    denied(&out, &ctx, "bpf prog load", &["EPERM"], "bpf(BPF_PROG_LOAD) was allowed");
    a.contained();
}

// 22. perf_event_open: a software counter on itself and a CPU-wide one.
#[test]
fn perf_event_open_counters() {
    gate!("perf_event_open_counters");
    let a = Attempt::new();
    let body = "attr = (ctypes.c_uint32 * 32)(1, 128)\n\
        sc('perf self', 298, ctypes.byref(attr), 0, -1, -1, 0)\n\
        sc('perf cpu-wide', 298, ctypes.byref(attr), -1, 0, -1, 0)";
    let r = a.run(body, &[]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    denied(&out, &ctx, "perf self", &["EPERM"], "perf_event_open was allowed");
    denied(&out, &ctx, "perf cpu-wide", &["EPERM"], "a CPU-wide perf counter was allowed");
    a.contained();
}

// 23. io_uring (its own syscall path bypasses seccomp for the operations it carries).
#[test]
fn io_uring_rings() {
    gate!("io_uring_rings");
    let a = Attempt::new();
    let body = "params = ctypes.create_string_buffer(120)\n\
        sc('io_uring_setup', 425, 8, params)\n\
        sc('io_uring_enter', 426, 0, 1, 0, 0, 0, 0)\n\
        sc('io_uring_register', 427, 0, 0, 0, 0)";
    let r = a.run(body, &[]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    for label in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        denied(&out, &ctx, label, &["EPERM"], &format!("{label} was allowed"));
    }
    a.contained();
}

// 23b. Linux AIO: io_setup's events come from one host-wide budget (fs.aio-max-nr), so one cell
//      holding it all would leave every AIO user on the host with EAGAIN. Refused with ENOSYS
//      (a kernel without AIO), on which libaio users fall back.
#[test]
fn host_wide_aio_budget() {
    gate!("host_wide_aio_budget");
    let a = Attempt::new();
    let body = "ctx = ctypes.c_ulong(0)\n\
        sc('io_setup', 206, 4096, ctypes.byref(ctx))";
    let r = a.run(body, &[]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    denied(&out, &ctx, "io_setup", &["ENOSYS"], "io_setup took events from the host-wide AIO budget");
    a.contained();
}

// 23c. Socket buffers are the cell's memory: TCP pairs on the cell's own loopback, filled and
//      never read, may not hold more than the cell's memory_max (on cgroup v1 the kernel
//      charges TCP buffers to a memcg only once its kmem.tcp limit is set; uncharged, they
//      draw on the host-wide tcp_mem budget, whose hard limit fails TCP for every socket on
//      the host). The cell may also be OOM-killed for it (v2 charges them as memory).
#[test]
fn tcp_buffers_are_charged_to_the_cell() {
    gate!("tcp_buffers_are_charged_to_the_cell");
    let a = Attempt::new();
    let p = a.policy("[limits]\nmemory_max = \"64M\"\n[network]\nmode = \"loopback\"\n");
    let body = "l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(128)\n\
        held, total, chunk = [], 0, b'x' * (1 << 20)\n\
        for i in range(64):\n\
        \x20   c = socket.create_connection(l.getsockname()); c.setblocking(False)\n\
        \x20   held += [c, l.accept()[0]]\n\
        \x20   while total < (256 << 20):\n\
        \x20       try: total += c.send(chunk)\n\
        \x20       except OSError: break\n\
        \x20   print('queued', total >> 20, flush=True)\n\
        print('total', total >> 20, flush=True)";
    let r = a.run_with(&p, body, &[]);
    let out = r.output();
    assert!(
        out.lines().any(|l| l.starts_with("total ")) || r.reason() == "oom_killed",
        "the attempt neither finished nor was OOM-killed\n{}",
        r.describe()
    );
    let most = out
        .lines()
        .filter_map(|l| l.strip_prefix("queued ").or_else(|| l.strip_prefix("total ")))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    assert!(most < 96, "ESCAPE: the cell held {most} MiB in TCP buffers with memory_max = 64M\n{}", r.describe());
    a.contained();
}

// 23c. UDP buffers. cgroup v2 charges them to the cell; cgroup v1 cannot (it charges only TCP's),
//      so there a `loopback` cell queued datagrams to its own sockets past `memory_max`, into
//      the host-wide `udp_mem` budget (512 MiB from a 64M cell; enough cells fill it and UDP,
//      DNS included, fails host-wide). On v1 UDP sockets are now refused; on v2 the queue stays
//      within the cell's memory.
#[test]
fn udp_buffers_stay_within_the_cell() {
    gate!("udp_buffers_stay_within_the_cell");
    let a = Attempt::new();
    let p = a.policy("[limits]\nmemory_max = \"64M\"\n[network]\nmode = \"loopback\"\n");
    // SO_MEMINFO (55): the first u32 is the socket's receive-queue memory.
    let body = "import struct\n\
        held, total = [], 0\n\
        try:\n\
        \x20   for i in range(400):\n\
        \x20       r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); r.bind(('127.0.0.1', 0))\n\
        \x20       r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)\n\
        \x20       s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setblocking(False)\n\
        \x20       held += [r, s]\n\
        \x20       for _ in range(200):\n\
        \x20           try: s.sendto(b'x' * 60000, r.getsockname())\n\
        \x20           except OSError: break\n\
        \x20       total += struct.unpack('9I', r.getsockopt(socket.SOL_SOCKET, 55, 36))[0]\n\
        \x20       print('queued', total >> 20, flush=True)\n\
        \x20       if total >= (256 << 20): break\n\
        except OSError as e:\n\
        \x20   print('refused', errno.errorcode.get(e.errno), flush=True)\n\
        print('total', total >> 20, flush=True)";
    let r = a.run_with(&p, body, &[]);
    let out = r.output();
    assert!(
        out.lines().any(|l| l.starts_with("total ")) || r.reason() == "oom_killed",
        "the attempt neither finished nor was OOM-killed\n{}",
        r.describe()
    );
    if cellkeep::sandbox::HostCaps::probe().udp_charged {
        assert!(!out.contains("refused"), "UDP refused where the cgroup charges it\n{}", r.describe());
    } else {
        assert!(out.contains("refused EACCES"), "ESCAPE: UDP sockets on cgroup v1, uncharged\n{}", r.describe());
    }
    let most = out
        .lines()
        .filter_map(|l| l.strip_prefix("queued ").or_else(|| l.strip_prefix("total ")))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    assert!(most < 96, "ESCAPE: the cell held {most} MiB in UDP buffers with memory_max = 64M\n{}", r.describe());
    a.contained();
}

// 23d. Netlink replies. The kernel queues a NETLINK_ROUTE reply on the asking socket without
//      charging any cgroup: a cell asking without reading pinned 2 GB of host kernel memory from
//      memory_max = 512M (twice rmem_max per socket, times every fd). Route and sock_diag
//      netlink are refused in every cell now.
#[test]
fn netlink_replies_stay_within_the_cell() {
    gate!("netlink_replies_stay_within_the_cell");
    let a = Attempt::new();
    let p = a.policy("[limits]\nmemory_max = \"64M\"\n");
    // RTM_GETLINK (18) for ifindex 1, NLM_F_REQUEST, not a dump: one reply each, never read.
    let body = "import struct\n\
        msg = struct.pack('IHHII', 32, 18, 1, 1, 0) + struct.pack('BxHiII', 0, 0, 1, 0, 0)\n\
        held, total = [], 0\n\
        try:\n\
        \x20   for i in range(250):\n\
        \x20       s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)\n\
        \x20       s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 30); s.bind((0, 0)); held.append(s)\n\
        \x20       last = -1\n\
        \x20       while True:\n\
        \x20           for _ in range(256): s.send(msg)\n\
        \x20           q = struct.unpack('9I', s.getsockopt(socket.SOL_SOCKET, 55, 36))[0]\n\
        \x20           if q == last: break\n\
        \x20           last = q\n\
        \x20       total += last\n\
        \x20       print('queued', total >> 20, flush=True)\n\
        \x20       if total >= (256 << 20): break\n\
        except OSError as e:\n\
        \x20   print('refused', errno.errorcode.get(e.errno), flush=True)\n\
        print('total', total >> 20, flush=True)";
    let r = a.run_with(&p, body, &[]);
    let out = r.output();
    assert!(out.lines().any(|l| l.starts_with("total ")), "the attempt did not finish\n{}", r.describe());
    let most = out
        .lines()
        .filter_map(|l| l.strip_prefix("queued ").or_else(|| l.strip_prefix("total ")))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    assert!(most < 96, "ESCAPE: the cell pinned {most} MiB of netlink replies with memory_max = 64M\n{}", r.describe());
    assert!(out.contains("refused EPROTONOSUPPORT"), "NETLINK_ROUTE was not refused\n{}", r.describe());
    a.contained();
}

// 24. userfaultfd (the syscall and the /dev node): the race-widening tool of kernel exploits.
#[test]
fn userfaultfd_handles() {
    gate!("userfaultfd_handles");
    let a = Attempt::new();
    let body = "sc('userfaultfd', 323, 0)\n\
        sc('userfaultfd user-only', 323, 1)\n\
        op('open /dev/userfaultfd', lambda: os.open('/dev/userfaultfd', os.O_RDWR))";
    let r = a.run(body, &[]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    denied(&out, &ctx, "userfaultfd", &["EPERM"], "userfaultfd was allowed");
    denied(&out, &ctx, "userfaultfd user-only", &["EPERM"], "userfaultfd(UFFD_USER_MODE_ONLY) was allowed");
    denied(&out, &ctx, "open /dev/userfaultfd", &["EACCES", "ENOENT"], "the cell opened /dev/userfaultfd");
    a.contained();
}

// ------------------------------------------------------------------------------------------
// 25–26: terminals
// ------------------------------------------------------------------------------------------

/// TIOCSTI on fd 0, as the plain request number and with bits above 32 set (the kernel takes
/// the request as an `unsigned int`, so 0x1_0000_5412 *is* TIOCSTI to it); then /dev/tty.
const TIOCSTI_BODY: &str = "c = ctypes.c_char(b'Z')\n\
    print('isatty', os.isatty(0))\n\
    sc('tiocsti', 16, 0, 0x5412, ctypes.byref(c))\n\
    sc('tiocsti 64-bit', 16, 0, 0x100005412, ctypes.byref(c))\n\
    sc('tioclinux 64-bit', 16, 0, 0x10000541C, ctypes.byref(c))\n\
    def devtty():\n    fd = os.open('/dev/tty', os.O_RDONLY); return libc.ioctl(fd, 0x5412, ctypes.byref(c))\n\
    op('open /dev/tty', devtty)\n\
    import select\n\
    r, _, _ = select.select([0], [], [], 0.1)\n\
    print('own input', repr(os.read(0, 16)) if r else 'empty', flush=True)";

// 25. `cellkeep run` from a terminal (here a pty the test opens, as stdin): the payload gets a
//     pseudo-terminal of its own, never the caller's (finding 8 of the isolation issue). TIOCSTI
//     on its terminal is denied by seccomp; /dev/tty is its own terminal; nothing reaches the
//     caller's input queue.
#[test]
fn tiocsti_on_the_callers_terminal() {
    gate!("tiocsti_on_the_callers_terminal");
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let mut tio = nix::sys::termios::tcgetattr(&pty.slave).expect("tcgetattr");
    nix::sys::termios::cfmakeraw(&mut tio);
    nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &tio).expect("raw mode");
    let callers = nix::unistd::ttyname(&pty.slave).expect("ttyname");
    let a = Attempt::new();
    let p = a.policy("");
    let s = script(&a.marker, &format!("{TIOCSTI_BODY}\nprint('ttyname', os.ttyname(0), flush=True)"));
    let stdin = pty.slave.try_clone().expect("dup slave");
    let out = Command::new(BIN)
        .args(["run", "--json", "--policy"])
        .arg(&p)
        .arg("--cwd")
        .arg(a.w.ws.path())
        .args(["--", PY, "-c", &s])
        .env("CELLKEEP_CGROUP_ROOT", &a.w.cgroup_root)
        .stdin(Stdio::from(stdin))
        .output()
        .expect("cellkeep run");
    let r = Run::from(out);
    let (out, ctx) = (r.output(), r.describe());
    eprintln!("cell output:\n{out}");
    finished(&out, &ctx);
    assert_eq!(line_of(&out, "isatty"), "True", "the payload has no terminal\n{ctx}");
    let theirs = line_of(&out, "ttyname");
    assert!(theirs.starts_with("/dev/pts/"), "the payload's terminal is not a pty: {theirs}\n{ctx}");
    assert_ne!(Path::new(&theirs), callers, "ESCAPE: the payload was handed the caller's terminal\n{ctx}");
    denied(&out, &ctx, "tiocsti", &["EPERM"], "TIOCSTI on the payload's terminal was allowed");
    denied(&out, &ctx, "tiocsti 64-bit", &["EPERM"], "TIOCSTI (64-bit encoding) was allowed");
    denied(&out, &ctx, "tioclinux 64-bit", &["EPERM", "EINVAL", "ENOTTY"], "TIOCLINUX was allowed");
    // Nothing was pushed into the caller's input queue.
    nix::fcntl::fcntl(&pty.slave, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).expect("nonblock");
    let mut buf = [0u8; 16];
    let got = std::fs::File::from(pty.slave).read(&mut buf);
    assert!(got.is_err(), "ESCAPE: the cell injected {:?} into the caller's terminal", got.map(|n| &buf[..n]));
    a.contained();
}

/// `cellkeep run --policy P --cwd WS -- python3 -c SCRIPT` with the terminal `tty` on 0, 1 and
/// 2, as an interactive shell starts it.
fn run_on_terminal(a: &Attempt, p: &Path, script: &str, tty: &std::os::fd::OwnedFd) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--policy"])
        .arg(p)
        .arg("--cwd")
        .arg(a.w.ws.path())
        .args(["--", PY, "-c", script])
        .env("CELLKEEP_CGROUP_ROOT", &a.w.cgroup_root)
        .stdin(Stdio::from(tty.try_clone().expect("dup")))
        .stdout(Stdio::from(tty.try_clone().expect("dup")))
        .stderr(Stdio::from(tty.try_clone().expect("dup")));
    cmd
}

/// The caller's terminal as `cellkeep run` found it: modes, window size, exclusive mode.
fn terminal_state(fd: &std::os::fd::OwnedFd) -> (nix::sys::termios::Termios, (u16, u16), i32) {
    use std::os::fd::AsRawFd;
    let tio = nix::sys::termios::tcgetattr(fd).expect("tcgetattr");
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    let mut excl: libc::c_int = 0;
    // SAFETY: TIOCGWINSZ/TIOCGEXCL write one winsize / one int through valid pointers.
    unsafe {
        assert_eq!(libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws), 0, "TIOCGWINSZ");
        assert_eq!(libc::ioctl(fd.as_raw_fd(), libc::TIOCGEXCL, &mut excl), 0, "TIOCGEXCL");
    }
    (tio, (ws.ws_row, ws.ws_col), excl)
}

// 41. (isolation issue, finding 8) `cellkeep run` on a terminal: the payload sets its terminal
//     raw, no echo, 3x7 and exclusive (TIOCEXCL). All of that lands on the cell's own pty; the
//     caller's terminal is exactly as before, and the payload's output still arrives.
#[test]
fn callers_terminal_left_as_it_was() {
    gate!("callers_terminal_left_as_it_was");
    let size = nix::pty::Winsize { ws_row: 31, ws_col: 101, ws_xpixel: 0, ws_ypixel: 0 };
    let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
    let before = terminal_state(&pty.slave);
    let a = Attempt::new();
    let p = a.policy("");
    let body = "import fcntl, termios, struct, tty\n\
    print('size', struct.unpack('HHHH', fcntl.ioctl(0, termios.TIOCGWINSZ, bytes(8)))[:2], flush=True)\n\
    tty.setraw(0)\n\
    a = termios.tcgetattr(0); a[3] &= ~termios.ECHO; termios.tcsetattr(0, termios.TCSANOW, a)\n\
    op('winsize', lambda: fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack('HHHH', 3, 7, 0, 0)))\n\
    op('tiocexcl', lambda: fcntl.ioctl(0, termios.TIOCEXCL))";
    let s = script(&a.marker, body);
    // The caller's terminal on 0, 1 and 2, as an interactive shell has it; the test reads the
    // master side so output never blocks.
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    let status = run_on_terminal(&a, &p, &s, &pty.slave).status().expect("cellkeep run");
    let after = terminal_state(&pty.slave);
    drop(pty.slave);
    let out = reader.join().expect("reader");
    eprintln!("terminal output:\n{out}");
    assert!(status.success(), "cellkeep run: {status}\n{out}");
    assert!(out.contains("size (31, 101)"), "the cell's terminal did not start at the caller's size\n{out}");
    assert!(out.contains("tiocexcl OK"), "the payload could not set its own terminal exclusive\n{out}");
    assert!(out.contains("done"), "the payload's last output was lost\n{out}");
    assert_eq!(after.1, before.1, "ESCAPE: the cell resized the caller's terminal");
    assert_eq!(after.2, 0, "ESCAPE: the cell left the caller's terminal in exclusive mode (TIOCEXCL)");
    assert_eq!(after.0, before.0, "ESCAPE: the cell changed the caller's terminal modes (echo/canonical)");
    a.contained();
}

// 41b. The same when the run ends by a signal: SIGTERM to `cellkeep run` while the payload
//      holds its terminal raw and sleeps. The signal goes into the cell, the run ends through
//      its normal path, and the caller's terminal modes are restored.
#[test]
fn callers_terminal_restored_after_a_signal() {
    gate!("callers_terminal_restored_after_a_signal");
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let before = terminal_state(&pty.slave);
    let a = Attempt::new();
    let p = a.policy("");
    let body = "import tty, time\ntty.setraw(0)\nprint('ready', flush=True)\ntime.sleep(60)";
    let s = script(&a.marker, body);
    let mut child = run_on_terminal(&a, &p, &s, &pty.slave).spawn().expect("cellkeep run");
    // Wait for the payload's "ready" on the terminal, then signal the run.
    let mut master = std::fs::File::from(pty.master);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("ready") {
        let n = master.read(&mut buf).expect("read the terminal");
        assert!(n > 0, "the terminal closed before the payload was ready");
        seen.extend_from_slice(&buf[..n]);
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = child.wait().expect("wait");
    let after = terminal_state(&pty.slave);
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "the run did not end by the forwarded SIGTERM");
    assert_eq!(after.0, before.0, "the caller's terminal modes were not restored after SIGTERM");
    a.contained();
}

// 43. (isolation issue, finding 7) pid 1 fails closed. `cellkeep run` under a seccomp filter
//     (inherited by the helper, pid 1 and the payload) that makes prctl(PR_SET_DUMPABLE, 0)
//     fail with EPERM: pid 1 could not make itself undumpable, so the launch must fail at that
//     step, naming it, and the payload must not have run anything of its own (it waits for
//     pid 1's word before its Landlock/seccomp steps and exec).
#[test]
fn pid1_fails_closed_when_a_privilege_drop_fails() {
    use std::os::unix::process::CommandExt;
    gate!("pid1_fails_closed_when_a_privilege_drop_fails");
    use seccompiler::{SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule};
    let cond = |i, v| SeccompCondition::new(i, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, v).expect("condition");
    let rule = SeccompRule::new(vec![cond(0, libc::PR_SET_DUMPABLE as u64), cond(1, 0)]).expect("rule");
    let filter = SeccompFilter::new(
        [(libc::SYS_prctl, vec![rule])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        std::env::consts::ARCH.try_into().expect("arch"),
    )
    .expect("filter");
    let bpf: seccompiler::BpfProgram = filter.try_into().expect("bpf");
    let a = Attempt::new();
    let p = a.policy("");
    let s = script(&a.marker, "open('ran', 'w').write('payload ran')");
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--json", "--policy"])
        .arg(&p)
        .arg("--cwd")
        .arg(a.w.ws.path())
        .args(["--", PY, "-c", &s])
        .env("CELLKEEP_CGROUP_ROOT", &a.w.cgroup_root);
    // SAFETY: between fork and exec only prctl(NO_NEW_PRIVS) and seccomp(2) run, on a BPF
    // program compiled before the fork (apply_filter allocates nothing).
    unsafe {
        cmd.pre_exec(move || seccompiler::apply_filter(&bpf).map_err(std::io::Error::other));
    }
    let r = Run::from(cmd.output().expect("cellkeep run"));
    let ctx = r.describe();
    assert!(!a.w.ws.path().join("ran").exists(), "FAIL-OPEN: the payload ran although pid 1 stayed dumpable\n{ctx}");
    assert_eq!(r.outcome["reason"], "setup_failed", "FAIL-OPEN: the launch did not fail\n{ctx}");
    assert_eq!(r.outcome["stage"], "init", "{ctx}");
    assert!(
        r.outcome["detail"].as_str().unwrap_or("").contains("PR_SET_DUMPABLE"),
        "the failure does not name the step\n{ctx}"
    );
    a.contained();
}

// 26. A `tty = true` provider: fd 0 is the cell's own pty slave, its controlling terminal.
//     The seccomp preset denies ioctl(TIOCSTI), comparing the request as 32 bits like the
//     kernel does: 0x1_0000_5412 (which the kernel reads as TIOCSTI) is denied too.
#[test]
fn tiocsti_on_the_cells_own_tty() {
    gate!("tiocsti_on_the_cells_own_tty");
    let d = daemon().start();
    let v = d.oneshot("pytty", TIOCSTI_BODY);
    let (out, ctx) = reply(&v);
    finished(&out, &ctx);
    assert_eq!(line_of(&out, "isatty"), "True", "the tty provider has no terminal\n{ctx}");
    denied(&out, &ctx, "tiocsti", &["EPERM"], "TIOCSTI on the cell's terminal passed the filter");
    // Contained in the ordinary sense (checked first, as the denial below fails today).
    d.assert_contained();
    denied(
        &out,
        &ctx,
        "tiocsti 64-bit",
        &["EPERM"],
        &format!(
            "ioctl(0, 0x1_0000_5412 = TIOCSTI with high bits) passed the seccomp filter and injected input \
             into the cell's terminal (read back: {})",
            line_of(&out, "own input")
        ),
    );
}

// ------------------------------------------------------------------------------------------
// 27–29: privileges
// ------------------------------------------------------------------------------------------

// 27. Setuid-root binaries: a setuid+setgid root copy of id(1) planted in /usr/local/bin
//     (exec-allowed), and passwd(1). no_new_privs: exec must not raise the euid.
#[test]
fn run_a_setuid_binary() {
    gate!("run_a_setuid_binary");
    let suid = Planted(PathBuf::from(format!("/usr/local/bin/ck-suid-id-{}", &uid()[20..])));
    std::fs::copy("/usr/bin/id", &suid.0).expect("copy id");
    std::fs::set_permissions(&suid.0, PermissionsExt::from_mode(0o6755)).expect("chmod 6755");
    let a = Attempt::new();
    let body = "import subprocess\n\
        p = subprocess.run([sys.argv[1]], capture_output=True, text=True)\n\
        print('suid id', p.stdout.strip())\n\
        p = subprocess.run([sys.argv[1], '-u'], capture_output=True, text=True)\n\
        print('suid euid', p.stdout.strip())\n\
        p = subprocess.run(['/usr/bin/passwd', '-S', 'root'], capture_output=True, text=True)\n\
        print('self uid', os.getuid())\n\
        print('passwd', 'OK' if p.returncode == 0 else 'denied', p.returncode, (p.stdout + p.stderr).strip()[:200])\n\
        print('nnp', [l.split()[1] for l in open('/proc/self/status') if l.startswith('NoNewPrivs')][0])";
    let r = a.run(body, &[suid.0.to_str().expect("utf-8")]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    let id = line_of(&out, "suid id");
    let own = line_of(&out, "self uid");
    assert!(id.starts_with(&format!("uid={own}")), "the setuid binary did not run as expected: {id}\n{ctx}");
    assert!(
        !id.contains("euid=") && !id.contains("egid="),
        "ESCAPE: the setuid-root binary raised privileges: {id}\n{ctx}"
    );
    assert_eq!(line_of(&out, "suid euid"), own, "ESCAPE: euid after exec of a setuid-root binary\n{ctx}");
    denied(&out, &ctx, "passwd", &["denied"], "passwd -S root worked (it ran with root's privileges)");
    assert_eq!(line_of(&out, "nnp"), "1", "no_new_privs is not set\n{ctx}");
    a.contained();
}

// 28. `chmod u+s` a file the cell wrote, in {cwd} and in {tmp}: the bit may stick (the owner
//     may set it), but the file belongs to nobody, {tmp} is nosuid, and neither place is in the
//     exec list, so running it fails (EACCES) and can never raise the euid.
#[test]
fn chmod_setuid_a_file_it_wrote() {
    gate!("chmod_setuid_a_file_it_wrote");
    let a = Attempt::new();
    let body = "import shutil, subprocess\n\
        for where, path in [('cwd', os.getcwd() + '/mine'), ('tmp', '/tmp/mine')]:\n    \
        shutil.copyfile('/usr/bin/id', path)\n    \
        op('chmod ' + where, lambda: os.chmod(path, 0o6755))\n    \
        print('mode ' + where, oct(os.stat(path).st_mode & 0o7777), flush=True)\n    \
        op('exec ' + where, lambda: subprocess.run([path, '-u'], capture_output=True, text=True).stdout.strip())";
    let r = a.run(body, &[]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    for w in ["cwd", "tmp"] {
        denied(
            &out,
            &ctx,
            &format!("exec {w}"),
            &["EACCES"],
            &format!(
                "the cell executed the setuid file it wrote in {{{w}}} (printed euid: {})",
                line_of(&out, &format!("exec {w}"))
            ),
        );
    }
    // The copy left in the workspace belongs to the cell's host uid, never to root.
    let meta = std::fs::metadata(a.w.ws.path().join("mine")).expect("file written in the cell");
    assert_eq!(meta.uid(), NOBODY, "the file the cell wrote belongs to uid {}", meta.uid());
    a.contained();
}

// 29. Load a kernel module: init_module, finit_module, delete_module; the modprobe path.
#[test]
fn load_a_kernel_module() {
    gate!("load_a_kernel_module");
    let modprobe_before = std::fs::read_to_string("/proc/sys/kernel/modprobe").unwrap_or_default();
    let a = Attempt::new();
    let body = "image = ctypes.create_string_buffer(b'\\x7fELF' + b'\\0' * 60)\n\
        sc('init_module', 175, image, 64, b'')\n\
        fd = os.open('/usr/bin/true', os.O_RDONLY)\n\
        sc('finit_module', 313, fd, b'', 0)\n\
        sc('delete_module', 176, b'ext4', 0)\n\
        op('write /proc/sys/kernel/modprobe', lambda: write('/proc/sys/kernel/modprobe', '/tmp/evil'))";
    let r = a.run(body, &[]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    for label in ["init_module", "finit_module", "delete_module"] {
        denied(&out, &ctx, label, &["EPERM"], &format!("{label} was allowed"));
    }
    // Without CONFIG_MODULES (this host's kernel) the file does not exist at all.
    let want: &[&str] = if Path::new("/proc/sys/kernel/modprobe").exists() { &["EACCES"] } else { &["ENOENT"] };
    denied(&out, &ctx, "write /proc/sys/kernel/modprobe", want, "the cell rewrote the modprobe path");
    assert_eq!(std::fs::read_to_string("/proc/sys/kernel/modprobe").unwrap_or_default(), modprobe_before);
    a.contained();
}

// ------------------------------------------------------------------------------------------
// 30–32: /proc/sys and the cgroup
// ------------------------------------------------------------------------------------------

// 30. /proc/sys: hostname, drop_caches, core_pattern (a pipe there runs as root on the host).
#[test]
fn write_proc_sys() {
    gate!("write_proc_sys");
    let core_before = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    let host_before = nix::unistd::gethostname().expect("hostname");
    let a = Attempt::new();
    let body = "op('hostname', lambda: write('/proc/sys/kernel/hostname', 'pwned'))\n\
        op('drop_caches', lambda: write('/proc/sys/vm/drop_caches', '3'))\n\
        op('core_pattern', lambda: write('/proc/sys/kernel/core_pattern', '|/tmp/evil'))\n\
        op('sysrq', lambda: write('/proc/sysrq-trigger', 'h'))\n\
        op('sethostname', lambda: socket.sethostname('pwned'))";
    let r = a.run(body, &[]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    for label in ["hostname", "drop_caches", "core_pattern"] {
        denied(&out, &ctx, label, &["EACCES"], &format!("the cell wrote /proc/sys ({label})"));
    }
    // /proc/sysrq-trigger is not even present in a procfs mounted from the cell's user namespace.
    denied(&out, &ctx, "sysrq", &["EACCES", "ENOENT"], "the cell wrote /proc/sysrq-trigger");
    denied(&out, &ctx, "sethostname", &["EPERM"], "the cell changed its hostname");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default(),
        core_before,
        "core_pattern changed"
    );
    assert_eq!(nix::unistd::gethostname().expect("hostname"), host_before, "the host's hostname changed");
    a.contained();
}

/// The limit files of a cell's cgroup that exist on this host (v1 or v2 names).
fn limit_files(cell: &cellkeep::cgroup::CellCgroup) -> Vec<PathBuf> {
    let names = [
        "memory.limit_in_bytes",
        "memory.memsw.limit_in_bytes",
        "memory.max",
        "memory.swap.max",
        "pids.max",
        "cpu.cfs_quota_us",
        "cpu.max",
    ];
    cell.paths().iter().flat_map(|d| names.iter().map(move |n| d.join(n))).filter(|p| p.exists()).collect()
}

// 31. Raise its own limits through cgroupfs: the test hands the cell the exact paths of its
//     own cgroup (the cell cannot even find them: /proc/self/cgroup shows "/" in its cgroup
//     namespace, and /sys is not readable).
#[test]
fn raise_own_cgroup_limits() {
    gate!("raise_own_cgroup_limits");
    let d = daemon().start();
    let (id, _pid) = d.session();
    let cell = d.cell_cgroup(&id);
    let files = limit_files(&cell);
    assert!(files.len() >= 3, "expected memory, pids and cpu limit files, found {files:?}");
    let before: Vec<String> = files.iter().map(|f| std::fs::read_to_string(f).unwrap_or_default()).collect();
    let list: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let body = format!(
        "print('own cgroup', open('/proc/self/cgroup').read().split()[0])\n\
         for f in {list:?}:\n    op('write ' + f, lambda: write(f, 'max' if f.endswith('.max') else '-1'))\n\
         op('list cgroupfs', lambda: os.listdir('/sys/fs/cgroup'))"
    );
    let out = d.exec(&id, &body);
    let ctx = format!("session output:\n{out}");
    for f in &list {
        denied(&out, &ctx, &format!("write {f}"), &["ENOENT"], &format!("the cell wrote its own limit {f}"));
    }
    denied(&out, &ctx, "list cgroupfs", &["ENOENT"], "the cell listed /sys/fs/cgroup");
    assert!(line_of(&out, "own cgroup").ends_with(":/"), "the cell sees its host cgroup path\n{ctx}");
    let after: Vec<String> = files.iter().map(|f| std::fs::read_to_string(f).unwrap_or_default()).collect();
    assert_eq!(before, after, "ESCAPE: the cell's limits changed");
    d.assert_contained();
}

// 32. Leave its cgroup (and so its limits and the daemon's kill): write itself into
//     cgroup.procs of the parent (the daemon's root) and of the top of every hierarchy.
#[test]
fn move_out_of_own_cgroup() {
    gate!("move_out_of_own_cgroup");
    let d = daemon().start();
    let (id, pid) = d.session();
    let cell = d.cell_cgroup(&id);
    // The parent (the daemon's cgroup root) and the top of each hierarchy (its mount point).
    let mut targets: Vec<PathBuf> = Vec::new();
    for dir in cell.paths() {
        targets.push(dir.parent().expect("parent").join("cgroup.procs"));
        if let Some(top) = dir.ancestors().find(|a| a.parent() == Some(Path::new("/sys/fs/cgroup"))) {
            targets.push(top.join("cgroup.procs"));
        }
    }
    targets.push(PathBuf::from("/sys/fs/cgroup/unified/cgroup.procs"));
    targets.push(PathBuf::from("/sys/fs/cgroup/cgroup.procs"));
    targets.retain(|t| t.exists());
    targets.sort();
    targets.dedup();
    let list: Vec<String> = targets.iter().map(|f| f.display().to_string()).collect();
    let body = format!("for f in {list:?}:\n    op('move to ' + f, lambda: write(f, '0'))");
    let out = d.exec(&id, &body);
    let ctx = format!("session output:\n{out}");
    for f in &list {
        denied(&out, &ctx, &format!("move to {f}"), &["ENOENT"], &format!("the cell moved itself to {f}"));
    }
    let procs = cell.procs().expect("cell procs");
    assert!(procs.contains(&pid), "ESCAPE: the payload {pid} left its cgroup (members now: {procs:?})");
    d.assert_contained();
}

// ------------------------------------------------------------------------------------------
// 33–35: `..` and symlinks
// ------------------------------------------------------------------------------------------

/// POST /v1/cells with `cwd`; assert a 4xx bad_request whose message names the path.
#[track_caller]
fn refused_cwd(d: &Daemon, cwd: &str, names: &str) {
    let r = raw(&d.socket, "POST", "/v1/cells", json!({"provider": "pysh", "cwd": cwd}).to_string().as_bytes())
        .expect("request");
    assert!((400..500).contains(&r.status), "ESCAPE: cwd {cwd:?} was accepted: status {} {}", r.status, r.text());
    assert_eq!(r.code(), "bad_request", "cwd {cwd:?}: {}", r.text());
    let message = r.json()["message"].as_str().unwrap_or("").to_owned();
    assert!(message.contains(names), "cwd {cwd:?}: the message does not name {names:?}: {message}");
}

// 33. A cwd that climbs out of an allowed root with `..`.
#[test]
fn cwd_dotdot_through_the_api() {
    gate!("cwd_dotdot_through_the_api");
    let d = daemon().start();
    let ws = d.cwd();
    refused_cwd(&d, &format!("{ws}/../../etc"), "/etc");
    refused_cwd(&d, &format!("{ws}/../../etc"), "../../etc");
    refused_cwd(&d, "/tmp/../etc", "/tmp/../etc");
    refused_cwd(&d, "/home/../root", "/root");
    refused_cwd(&d, "/tmp/../../../../..", "/tmp/../../../../..");
    assert!(d.cells_on_disk().is_empty(), "a cell was created: {:?}", d.cells_on_disk());
    d.assert_healthy();
    d.assert_contained();
}

// 34. A cwd that is (or passes through) a symlink inside an allowed root pointing outside.
#[test]
fn cwd_symlink_through_the_api() {
    gate!("cwd_symlink_through_the_api");
    let d = daemon().start();
    let ws = d.ws.path();
    std::os::unix::fs::symlink("/etc", ws.join("to-etc")).expect("symlink");
    std::os::unix::fs::symlink("/", ws.join("to-root")).expect("symlink");
    std::fs::create_dir(ws.join("real")).expect("dir");
    std::os::unix::fs::symlink("../to-etc", ws.join("real/chain")).expect("symlink");
    refused_cwd(&d, &ws.join("to-etc").display().to_string(), "to-etc");
    refused_cwd(&d, &ws.join("to-etc/ssl").display().to_string(), "/etc/ssl");
    refused_cwd(&d, &ws.join("to-root").display().to_string(), "to-root");
    refused_cwd(&d, &ws.join("real/chain").display().to_string(), "chain");
    assert!(d.cells_on_disk().is_empty(), "a cell was created: {:?}", d.cells_on_disk());
    d.assert_healthy();
    d.assert_contained();
}

// 44. (isolation issue, finding 9) The cwd is looked up with the caller's rights, not root's.
//     uid 65534 plants, in its own workspace, links into a 0700 root-only directory: to a
//     directory there, to a file there and to a missing name. Looked up as root, each answer
//     differed ("resolves to /root/…", "not a directory", "cannot resolve"): an oracle for
//     root-only paths. Now all three get one identical answer that names only the path as
//     given; a relative cwd is refused instead of being resolved against the daemon's own.
#[test]
fn cwd_is_looked_up_with_the_callers_rights() {
    gate!("cwd_is_looked_up_with_the_callers_rights");
    let d = daemon().socket_mode(Some("0666")).start();
    let secret = Planted(PathBuf::from(format!("/root/ck-oracle-{}", &uid()[20..])));
    std::fs::create_dir_all(secret.0.join("sub")).expect("secret dir");
    std::fs::write(secret.0.join("file"), "x").expect("secret file");
    std::fs::set_permissions(&secret.0, std::fs::Permissions::from_mode(0o700)).expect("chmod 0700");
    let ws = d.ws.path();
    let mut answers = Vec::new();
    for (link, target) in [("to-dir", "sub"), ("to-file", "file"), ("to-missing", "missing")] {
        std::os::unix::fs::symlink(secret.0.join(target), ws.join(link)).expect("symlink");
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN, "--socket"])
            .arg(&d.socket)
            .args(["spawn", "open", "--cwd"])
            .arg(ws.join(link))
            .output()
            .expect("setpriv");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("{link}: {err}");
        assert!(!out.status.success(), "ESCAPE: a cwd through {link} was accepted: {out:?}");
        assert!(err.contains("bad_request"), "not refused by the cwd check: {err}");
        assert!(!err.contains(&*secret.0.to_string_lossy()), "ORACLE: the answer names the root-only target: {err}");
        answers.push(err.replace(link, "LINK"));
    }
    assert!(
        answers.iter().all(|a| a == &answers[0]),
        "ORACLE: the answers differ by what lies behind the link in a root-only directory:\n{answers:#?}"
    );
    let r =
        raw(&d.socket, "POST", "/v1/cells", json!({"provider": "open", "cwd": "relative/dir"}).to_string().as_bytes())
            .expect("request");
    assert_eq!(r.code(), "bad_request", "a relative cwd was not refused: {}", r.text());
    assert!(r.json()["message"].as_str().unwrap_or("").contains("relative"), "{}", r.text());
    assert!(d.cells_on_disk().is_empty(), "a cell was created: {:?}", d.cells_on_disk());
    d.assert_contained();
}

// 35. Symlinks (and a hard link) the cell makes in its writable {cwd} and {tmp}, pointing at
//     /etc/shadow and at another user's world-readable file: Landlock checks the target.
#[test]
fn symlink_in_a_writable_path() {
    gate!("symlink_in_a_writable_path");
    let (_home, secret, content) = plant_victim_home();
    let a = Attempt::new();
    let body = "secret = sys.argv[1]\n\
        for where, d in [('cwd', os.getcwd()), ('tmp', '/tmp')]:\n    \
        os.symlink('/etc/shadow', d + '/shadow-link'); os.symlink(secret, d + '/secret-link'); os.symlink('/home', d + '/home-link')\n    \
        op('shadow via ' + where, lambda: read(d + '/shadow-link'))\n    \
        op('secret via ' + where, lambda: read(d + '/secret-link'))\n    \
        op('home via ' + where, lambda: os.listdir(d + '/home-link'))\n\
        op('hardlink secret', lambda: os.link(secret, os.getcwd() + '/secret-hard'))\n\
        op('hardlink shadow', lambda: os.link('/etc/shadow', '/tmp/shadow-hard'))";
    let r = a.run(body, &[secret.to_str().expect("utf-8")]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    assert!(!out.contains(&content), "ESCAPE: the cell read {} through a link\n{ctx}", secret.display());
    for w in ["cwd", "tmp"] {
        denied(
            &out,
            &ctx,
            &format!("shadow via {w}"),
            &["EACCES"],
            &format!("the cell read /etc/shadow through a symlink in {{{w}}}"),
        );
        denied(
            &out,
            &ctx,
            &format!("secret via {w}"),
            &["ENOENT"],
            &format!("the cell read {} through a symlink in {{{w}}}", secret.display()),
        );
        denied(
            &out,
            &ctx,
            &format!("home via {w}"),
            &["ENOENT"],
            &format!("the cell listed /home through a symlink in {{{w}}}"),
        );
    }
    denied(&out, &ctx, "hardlink secret", &["ENOENT"], "the cell hard-linked another user's file into its cwd");
    denied(&out, &ctx, "hardlink shadow", &["EXDEV", "EACCES", "EPERM"], "the cell hard-linked /etc/shadow");
    a.contained();
}

// ------------------------------------------------------------------------------------------
// 36–37: exhaustion of the private tmp
// ------------------------------------------------------------------------------------------

// 36. Fill the private /tmp: writes stop with ENOSPC at base's tmp_size (64M); the host's
//     /tmp never sees the fill.
#[test]
fn exhaust_disk_in_private_tmp() {
    gate!("exhaust_disk_in_private_tmp");
    let a = Attempt::new();
    // A name no other process uses: had the write reached the host's /tmp, the file would be
    // there after the cell is gone.
    let fill = format!("/tmp/ck-escape-fill-{}", std::process::id());
    let _ = std::fs::remove_file(&fill);
    let body = &format!(
        "n = 0; buf = b'x' * (1 << 20)\n\
        fd = os.open({fill:?}, os.O_CREAT | os.O_WRONLY, 0o600)\n\
        try:\n    while n < (1 << 30):\n        n += os.write(fd, buf)\n    print('fill OK', n)\n\
        except OSError as e:\n    print('fill', ename(e.errno), n)\n\
        st = os.statvfs('/tmp'); print('size', st.f_blocks * st.f_frsize)"
    );
    let r = a.run(body, &[]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    denied(&out, &ctx, "fill", &["ENOSPC"], "the private /tmp took 1 GiB without running out of space");
    let written: u64 = line_of(&out, "fill").split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(u64::MAX);
    assert!(written <= 64 << 20, "ESCAPE: {written} bytes written to a 64 MiB tmp\n{ctx}");
    assert!(written >= 60 << 20, "the tmp filled up early ({written} bytes)\n{ctx}");
    assert_eq!(line_of(&out, "size"), (64u64 << 20).to_string(), "the private /tmp is not 64 MiB\n{ctx}");
    // The host's /tmp is shared with whatever else runs on the machine, so its free space is no
    // measure (it drifted by 45 MiB during one CI run); the fill file is: it must not be there.
    assert!(!Path::new(&fill).exists(), "ESCAPE: the cell's fill file {fill} is on the host's /tmp\n{ctx}");
    a.contained();
}

// 42. (isolation issue, finding 10) Fill the disk through the workspace: one file past base's
//     `file_size` (512M). A write at an offset past the limit (sparse, so the test costs no
//     disk) is refused by RLIMIT_FSIZE: with SIGXFSZ ignored the write fails with EFBIG; with
//     the default action the kernel's SIGXFSZ ends the payload and the cell ends as
//     `file_size_limited`. Below the limit the same write works.
#[test]
fn file_larger_than_the_policy_allows() {
    gate!("file_larger_than_the_policy_allows");
    let a = Attempt::new();
    let body = "import signal\n\
    fd = os.open('big', os.O_CREAT | os.O_WRONLY, 0o600)\n\
    op('below limit', lambda: os.pwrite(fd, b'x', (512 << 20) - 1))\n\
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n\
    op('past limit', lambda: os.pwrite(fd, b'x' * 4096, 1 << 30))\n\
    print('size', os.fstat(fd).st_size, flush=True)";
    let r = a.run(body, &[]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    assert_eq!(result_of(&out, "below limit"), "OK", "a write inside the limit failed\n{ctx}");
    denied(&out, &ctx, "past limit", &["EFBIG"], "a 1 GiB file was written under a 512 MiB file_size");
    assert_eq!(line_of(&out, "size"), (512u64 << 20).to_string(), "the file grew past the limit\n{ctx}");
    // The default action: the kernel's SIGXFSZ ends the cell, reported as its own reason.
    // (Python ignores SIGXFSZ at start-up; most programs keep the default.)
    let r = a.run(
        "import signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_DFL)\n\
         fd = os.open('big2', os.O_CREAT | os.O_WRONLY, 0o600)\nos.pwrite(fd, b'x', 1 << 30)",
        &[],
    );
    assert_eq!(r.outcome["reason"], "file_size_limited", "{}", r.describe());
    a.contained();
}

// 37. Flood the private /tmp with empty files. The tmpfs is mounted with `size=` only, so its
//     inode count is the kernel default (half the host's RAM pages), far above what a cell
//     should hold; what bounds it is the memory cgroup, because tmpfs inodes and dentries are
//     kernel memory charged to the cell: the flood ends in an OOM kill at memory_max, the host
//     unaffected. (The one policy change of the battery: memory_max = "64M" instead of base's
//     512M, so that the flood takes < 1 s instead of ~7 s.)
#[test]
fn exhaust_inodes_in_private_tmp() {
    gate!("exhaust_inodes_in_private_tmp");
    let a = Attempt::new();
    let p = a.policy("");
    let body = "st = os.statvfs('/tmp'); print('inodes', st.f_files, flush=True)\n\
        os.mkdir('/tmp/d'); n = 0\n\
        try:\n    while n < 5000000:\n        os.close(os.open('/tmp/d/%d' % n, os.O_CREAT | os.O_WRONLY, 0o600)); n += 1\n        \
        if n % 20000 == 0: print('created', n, flush=True)\n    print('flood OK', n)\n\
        except OSError as e:\n    print('flood', ename(e.errno), n)";
    let r = a.run_with(&p, body, &[]);
    let (out, ctx) = (r.output(), r.describe());
    let inodes: u64 = line_of(&out, "inodes").parse().unwrap_or(0);
    let created: u64 =
        out.lines().filter_map(|l| l.strip_prefix("created ")).filter_map(|n| n.parse().ok()).max().unwrap_or(0);
    let peak = r.outcome["usage"]["memory_peak"].as_u64().unwrap_or(0);
    eprintln!("tmpfs inode cap {inodes}; created ≥ {created} files; reason {}; memory peak {peak}", r.reason());
    // The private tmpfs has an inode cap (one per 4 KiB of tmp_size: 16384 for base's 64M), so
    // the flood ends cleanly with ENOSPC instead of running the cell into its memory limit.
    assert!(inodes > 0 && inodes <= (64 << 20) / 4096, "the private /tmp has {inodes} inodes: no cap\n{ctx}");
    assert_ne!(r.reason(), "oom_killed", "the inode flood ran the cell out of memory (peak {peak})\n{ctx}");
    finished(&out, &ctx);
    denied(&out, &ctx, "flood", &["ENOSPC"], "the private /tmp took 5 million inodes");
    let _ = created;
    a.contained();
}

// ------------------------------------------------------------------------------------------
// 38–39
// ------------------------------------------------------------------------------------------

// 38. The daemon's environment (a secret in it): its /proc entry is not in the cell's pid
//     namespace; /proc/1 is the cell's own pid 1 (not dumpable); no environ in the cell's /proc
//     holds the secret, and the cell's own environment was built from the policy.
#[test]
fn read_the_daemons_environment() {
    gate!("read_the_daemons_environment");
    let secret = format!("s3cr3t-{}", uid());
    let d = daemon().env("CK_ESCAPE_SECRET", &secret).start();
    let body = format!(
        "dp = {pid}\n\
         name = 'CK_ESCAPE_' + 'SECRET'\n\
         op('daemon environ', lambda: read('/proc/%d/environ' % dp))\n\
         op('pid 1 environ', lambda: read('/proc/1/environ'))\n\
         hits = []\n\
         for p in os.listdir('/proc'):\n    if not p.isdigit() and p != 'self': continue\n    \
         for f in ['/proc/%s/environ' % p] + ['/proc/%s/task/%s/environ' % (p, t) for t in (os.listdir('/proc/%s/task' % p) if os.path.isdir('/proc/%s/task' % p) else [])]:\n        \
         try:\n            if name.encode() in read(f): hits.append(f)\n        except OSError:\n            pass\n\
         print('hits', hits)\n\
         print('own env', name in os.environ)",
        pid = d.pid()
    );
    let v = d.oneshot("py", &body);
    let (out, ctx) = reply(&v);
    finished(&out, &ctx);
    assert!(!v.to_string().contains(&secret), "ESCAPE: the daemon's secret reached the cell: {v}");
    denied(
        &out,
        &ctx,
        "daemon environ",
        &["ENOENT"],
        &format!("the cell read the daemon's environment (/proc/{}/environ)", d.pid()),
    );
    denied(&out, &ctx, "pid 1 environ", &["EACCES"], "the cell read its pid 1's environment");
    assert_eq!(line_of(&out, "hits"), "[]", "ESCAPE: the daemon's secret is in these environ files\n{ctx}");
    assert_eq!(line_of(&out, "own env"), "False", "ESCAPE: the daemon's environment was passed to the cell\n{ctx}");
    d.assert_contained();
}

// 39. "Shocker": open_by_handle_at with a guessed handle opens any inode on the filesystem,
//     bypassing paths (and so Landlock); name_to_handle_at produces the handles.
#[test]
fn open_by_handle_at_shocker() {
    gate!("open_by_handle_at_shocker");
    let a = Attempt::new();
    let body = "h = (ctypes.c_uint32 * 34)(8, 1, 2, 0)\n\
        sc('open_by_handle_at', 304, -100, ctypes.byref(h), 0)\n\
        mount_id = ctypes.c_int(0)\n\
        sc('name_to_handle_at', 303, -100, b'/etc/shadow', ctypes.byref(h), ctypes.byref(mount_id), 0)";
    let r = a.run(body, &[]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    denied(&out, &ctx, "open_by_handle_at", &["EPERM"], "open_by_handle_at was allowed");
    denied(&out, &ctx, "name_to_handle_at", &["EPERM"], "name_to_handle_at was allowed");
    a.contained();
}

// 40. A symlink planted in the workspace (by an earlier cell, which may write there) under a
//     path a policy grants by `{cwd}/…`: the next cell's Landlock rule must not be carried
//     through it to the link's target. The rule is opened with RESOLVE_NO_SYMLINKS, so the
//     launch fails at stage landlock naming the path (ELOOP); the target stays untouched.
//     (The cwd itself is opened the same way before the fchdir, against a swap after the
//     daemon's check.)
#[test]
fn symlink_planted_under_a_cwd_rule() {
    gate!("symlink_planted_under_a_cwd_rule");
    let target = plant_open_dir("/var/tmp");
    let a = Attempt::new();
    let out_link = a.w.ws.path().join("out");
    std::os::unix::fs::symlink(&target.0, &out_link).expect("plant the symlink");
    // The cwd is read-only for this provider; only {cwd}/out is writable.
    let policy = a.policy("[filesystem]\nwrite = [\"{cwd}/out\", \"{tmp}\", \"/dev/null\"]\n");
    let body = "op('write through out', lambda: open(os.getcwd() + '/out/pwned', 'w').write('x'))";
    let r = a.run_with(&policy, body, &[]);
    let ctx = r.describe();
    assert!(!target.0.join("pwned").exists(), "ESCAPE: the cell wrote through the planted symlink\n{ctx}");
    assert_eq!(r.outcome["stage"], "landlock", "the launch should fail at the rule\n{ctx}");
    assert!(
        r.stderr.contains(&out_link.display().to_string()) && r.stderr.contains("symlink"),
        "the error does not name the path and the symlink\n{ctx}"
    );
    // Without the link the same policy runs, and the write lands in {cwd}/out.
    std::fs::remove_file(&out_link).expect("remove the link");
    std::fs::create_dir(&out_link).expect("a real out dir");
    std::os::unix::fs::chown(&out_link, Some(common::NOBODY), Some(common::NOBODY)).expect("chown out");
    let r = a.run_with(&policy, body, &[]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    assert!(out_link.join("pwned").exists(), "a real {{cwd}}/out rule must still grant writing\n{ctx}");
    a.contained();
}

// ------------------------------------------------------------------------------------------
// Issue 14: egress and argument findings
// ------------------------------------------------------------------------------------------

// 45. (issue 14, finding 5) Option injection: a one-shot command starting with "-" used to be
//     appended to the provider's command as is, so it reached the binary as an OPTION
//     (`--version`, `--dangerously-skip-permissions`). A provider that declares
//     `command_after = "--"` gets the command after that token (an operand), one with
//     `command_format = "--prompt={}"` gets it inside one argument; one with neither has such a
//     command refused with 400 bad_request, naming the setting.
#[test]
fn option_injection_through_the_command() {
    gate!("option_injection_through_the_command");
    let q = |s: &str| serde_json::to_string(s).expect("json string");
    let argv = format!("[{}, \"-c\", {}]", q(PY), q("import sys; print('argv', sys.argv[1:])"));
    let d = daemon()
        .provider("argv", &argv, "oneshot", "command_after = \"--\"")
        .provider("argvf", &argv, "oneshot", "command_format = \"--prompt={}\"")
        .start();
    for command in ["--version", "-c", "-"] {
        let body = json!({"command": command, "cwd": d.cwd(), "timeout_ms": 10000});
        let r = call(&d.socket, "POST", "/v1/providers/py/commands", Some(&body));
        assert_eq!(r.status, 400, "ESCAPE: {command:?} reached python3 -c as an option: {}", r.text());
        assert_eq!(r.code(), "bad_request", "{}", r.text());
        assert!(r.text().contains("command_after"), "the refusal does not name the setting: {}", r.text());

        let r = call(&d.socket, "POST", "/v1/providers/argv/commands", Some(&body));
        assert_eq!(r.status, 200, "{}", r.text());
        let out = r.json()["stdout"].as_str().unwrap_or_default().to_owned();
        assert_eq!(out.trim(), format!("argv ['--', {}]", q(command).replace('"', "'")), "{}", r.text());

        let r = call(&d.socket, "POST", "/v1/providers/argvf/commands", Some(&body));
        assert_eq!(r.status, 200, "{}", r.text());
        let out = r.json()["stdout"].as_str().unwrap_or_default().to_owned();
        assert_eq!(out.trim(), format!("argv ['--prompt={command}']"), "{}", r.text());
    }
    // An ordinary command still runs on a provider without command_after.
    let v = d.oneshot("py", "print('plain')");
    assert!(v["stdout"].as_str().unwrap_or_default().contains("plain"), "{v}");
}

/// Socket attempts of findings 1 and 3 (issue 14), each printing `label RESULT`.
const SOCKET_FAMILIES: &str = "def mk(domain, proto, bind=None):\n    s = socket.socket(domain, socket.SOCK_STREAM, proto)\n    if bind is not None:\n        s.bind(bind); s.listen(1)\n    return s.getsockname()\n\
op('vsock socket', lambda: mk(40, 0))\n\
op('vsock listen', lambda: mk(40, 0, (0xFFFFFFFF, 40000 + os.getpid() % 20000)))\n\
op('mptcp socket v4', lambda: mk(socket.AF_INET, 262))\n\
op('mptcp socket v6', lambda: mk(socket.AF_INET6, 262))\n\
op('tcp socket', lambda: mk(socket.AF_INET, 0))\n\
op('alg socket', lambda: socket.socket(38, socket.SOCK_SEQPACKET, 0))\n\
op('sctp socket', lambda: mk(socket.AF_INET, 132))\n\
op('crypto netlink', lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 21))\n\
op('route netlink', lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0))\n\
op('uevent netlink', lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 15))\n\
op('seqpacket inet', lambda: socket.socket(socket.AF_INET, socket.SOCK_SEQPACKET, 0))\n\
op('tcp ulp', lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).setsockopt(6, 31, b'tls'))\n\
sc('tcp ulp high bits', 208 if os.uname().machine == 'aarch64' else 54, socket.socket(socket.AF_INET, socket.SOCK_STREAM).detach(), 6 | (1 << 32), 31 | (1 << 32), ctypes.c_char_p(b'tls'), 4)\n\
params = ctypes.create_string_buffer(120)\n\
sc('io_uring_setup', 425, 1, params)";

// 46. (issue 14, finding 3) AF_VSOCK is not namespaced: a cell could bind and listen on a vsock
//     port host-wide (the host then got EADDRINUSE). seccomp refuses socket(AF_VSOCK) in every
//     cell, whatever the policy's seccomp preset, with EAFNOSUPPORT.
// 47. (issue 14, finding 1, MPTCP part) an IPPROTO_MPTCP socket slipped past Landlock's TCP
//     rules; seccomp refuses it everywhere with EPROTONOSUPPORT (plain TCP still works). So are
//     the socket families and protocols no agent needs (AF_ALG, SCTP, crypto_user netlink:
//     kernel modules loaded on demand, found by a review): socket(2) takes an allow list.
#[test]
fn vsock_and_mptcp_sockets() {
    gate!("vsock_and_mptcp_sockets");
    let a = Attempt::new();
    for (what, policy) in [("base", a.policy("")), ("preset none", a.policy("[seccomp]\npreset = \"none\"\n"))] {
        let r = a.run_with(&policy, SOCKET_FAMILIES, &[]);
        let (out, ctx) = (r.output(), format!("policy: {what}\n{}", r.describe()));
        finished(&out, &ctx);
        denied(&out, &ctx, "vsock socket", &["EAFNOSUPPORT"], "a cell opened an AF_VSOCK socket");
        denied(&out, &ctx, "vsock listen", &["EAFNOSUPPORT"], "a cell listened on a host-wide vsock port");
        denied(&out, &ctx, "mptcp socket v4", &["EPROTONOSUPPORT"], "a cell opened an MPTCP socket");
        denied(&out, &ctx, "mptcp socket v6", &["EPROTONOSUPPORT"], "a cell opened an MPTCP socket");
        assert_eq!(result_of(&out, "tcp socket"), "OK", "plain TCP sockets must still work\n{ctx}");
        // The rest of the kernel's socket surface no agent needs (modules loaded on demand):
        // refused with the errnos of a kernel without them. Route netlink too, since its
        // replies are uncharged kernel memory (`netlink_replies_stay_within_the_cell`).
        denied(&out, &ctx, "alg socket", &["EAFNOSUPPORT"], "a cell opened an AF_ALG socket");
        denied(&out, &ctx, "sctp socket", &["EPROTONOSUPPORT"], "a cell opened an SCTP socket");
        denied(&out, &ctx, "seqpacket inet", &["EPROTONOSUPPORT"], "a cell opened an INET SOCK_SEQPACKET socket");
        denied(&out, &ctx, "crypto netlink", &["EPROTONOSUPPORT"], "a cell opened a crypto_user netlink socket");
        denied(&out, &ctx, "route netlink", &["EPROTONOSUPPORT"], "a cell opened a route netlink socket");
        // A TCP upper-layer protocol (kTLS, espintcp: in-kernel record layers, a long CVE
        // history) is kernel surface no agent needs: setsockopt(SOL_TCP, TCP_ULP) is refused
        // as by a kernel without them, whatever the upper 32 bits of the (int) arguments say.
        denied(&out, &ctx, "tcp ulp", &["ENOPROTOOPT"], "a cell attached a TCP upper-layer protocol");
        denied(&out, &ctx, "tcp ulp high bits", &["ENOPROTOOPT"], "a cell attached a TCP ULP with high bits set");
        assert_eq!(result_of(&out, "uevent netlink"), "OK", "uevent netlink must still work\n{ctx}");
        // io_uring's IORING_OP_SOCKET would make sockets past all of the above: io_uring_setup
        // is refused under every preset (the default denies it; under "none" it gets ENOSYS).
        denied(&out, &ctx, "io_uring_setup", &["EPERM", "ENOSYS"], "a cell set up an io_uring");
    }
    a.contained();
}

/// A daemon with the SHIPPED agent policy (`policies/agent.toml`) and `agentsh`: a Python
/// session that extends it, changing only the command (so it runs under the agents' network).
fn agent_daemon() -> Daemon {
    let marker = format!("ck-escape-{}", uid());
    let q = |s: &str| serde_json::to_string(s).expect("json string");
    let session = script(&marker, SESSION_LOOP);
    let agent = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/agent.toml"))
        .expect("policies/agent.toml");
    let sh = format!(
        "extends = \"agent\"\n[provider]\nname = \"agentsh\"\ncommand = [{}, \"-u\", \"-c\", {}]\nmode = \"session\"\n",
        q(PY),
        q(&session)
    );
    daemon().marker(&marker).policy("agent", &agent).policy("agentsh", &sh).start()
}

impl Daemon {
    fn agent_session(&self) -> String {
        let r = call(&self.socket, "POST", "/v1/cells", Some(&json!({"provider": "agentsh", "cwd": self.cwd()})));
        assert_eq!(r.status, 201, "spawn agentsh: {}", r.text());
        r.json()["id"].as_str().unwrap_or_else(|| panic!("no id: {}", r.text())).to_owned()
    }
}

// 48. (issue 14, findings 1 and 2) Under the agent policy the cell used to share the host's
//     network, filtered by Landlock TCP rules only: sendto(MSG_FASTOPEN) connected to any
//     port, listen() on an unbound socket autobound to 0.0.0.0 and accepted host clients, UDP
//     went anywhere, and any host service on port 443 was reachable. Now the cell has its own
//     network namespace: nothing on the host is reachable, and nothing it listens on is
//     reachable from the host.
#[test]
fn host_network_from_an_agent_cell() {
    gate!("host_network_from_an_agent_cell");
    let d = agent_daemon();
    // A host service on port 443 (if free) and one on an ephemeral port, on every address.
    let https = std::net::TcpListener::bind("0.0.0.0:443").ok();
    let svc = std::net::TcpListener::bind("0.0.0.0:0").expect("listener");
    let port = svc.local_addr().expect("addr").port();
    svc.set_nonblocking(true).expect("nonblocking");
    if let Some(l) = &https {
        l.set_nonblocking(true).expect("nonblocking");
    }
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let uport = udp.local_addr().expect("addr").port();
    udp.set_nonblocking(true).expect("nonblocking");
    let id = d.agent_session();
    let out = d.exec(
        &id,
        &format!(
            "def tcp(p):\n    s = socket.socket(); s.settimeout(3); s.connect(('127.0.0.1', p)); return 'connected'\n\
             op('connect 443', lambda: tcp(443))\n\
             op('connect port', lambda: tcp({port}))\n\
             op('fastopen', lambda: socket.socket().sendto(b'x', 0x20000000, ('127.0.0.1', {port})))\n\
             op('udp outside', lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('192.0.2.1', 53)))\n\
             op('udp host port', lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {uport})))\n\
             import builtins\n\
             builtins.L = socket.socket(); builtins.L.listen(8); builtins.L.setblocking(False)\n\
             print('autobound', builtins.L.getsockname()[1])\n\
             print('done')"
        ),
    );
    let ctx = format!("session output:\n{out}");
    finished(&out, &ctx);
    denied(&out, &ctx, "connect 443", &["ECONNREFUSED"], "the cell reached a host service on port 443");
    denied(&out, &ctx, "connect port", &["ECONNREFUSED"], "the cell reached a host service");
    denied(&out, &ctx, "fastopen", &["ECONNREFUSED"], "MSG_FASTOPEN reached a host service");
    // EACCES: on cgroup v1 a `proxy` cell gets no UDP socket at all (udp_plan).
    denied(&out, &ctx, "udp outside", &["ENETUNREACH", "EACCES"], "a UDP datagram left the cell");
    assert!(svc.accept().is_err(), "ESCAPE: a TCP connection from the cell reached the host\n{ctx}");
    if let Some(l) = &https {
        assert!(l.accept().is_err(), "ESCAPE: the cell reached the host's port 443\n{ctx}");
    }
    assert!(udp.recv_from(&mut [0u8; 8]).is_err(), "ESCAPE: a UDP datagram reached the host\n{ctx}");
    // The autobound listener lives in the cell's namespace: a host client cannot reach it.
    let bound: u16 = line_of(&out, "autobound").trim().parse().unwrap_or_else(|_| panic!("no port\n{ctx}"));
    let _ = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], bound).into(), Duration::from_secs(1));
    let out = d.exec(&id, "import builtins\nop('accept', lambda: builtins.L.accept())\nprint('done')");
    let ctx = format!("session output:\n{out}");
    denied(&out, &ctx, "accept", &["EAGAIN"], "a host client reached a listener the cell autobound");
    d.assert_contained();
}

// 49. (issue 14, finding 4) Abstract UNIX sockets: Landlock scoping stops a cell from
//     connecting OUT to a host's abstract socket, but under the agent policy (host network
//     namespace, where abstract names live) a cell could bind a name first and receive a host
//     client's connection (squatting). Now each cell has its own namespace of abstract names:
//     the host does not see the cell's name, and can bind the same name itself.
#[test]
fn abstract_socket_squatting_from_an_agent_cell() {
    gate!("abstract_socket_squatting_from_an_agent_cell");
    use std::os::linux::net::SocketAddrExt;
    let d = agent_daemon();
    let name = format!("ck-squat-{}", uid());
    let id = d.agent_session();
    let out = d.exec(
        &id,
        &format!(
            "import builtins\n\
             def squat():\n    builtins.U = socket.socket(socket.AF_UNIX); builtins.U.bind('\\0{name}'); builtins.U.listen(1); builtins.U.setblocking(False); return 'bound'\n\
             op('bind abstract', squat)\nprint('done')"
        ),
    );
    let ctx = format!("session output:\n{out}");
    finished(&out, &ctx);
    assert_eq!(result_of(&out, "bind abstract"), "OK", "the cell may use abstract names of its own\n{ctx}");
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract addr");
    let client = std::os::unix::net::UnixStream::connect_addr(&addr);
    assert!(client.is_err(), "ESCAPE: a host client connected to the name the cell bound (@{name})\n{ctx}");
    let host = std::os::unix::net::UnixListener::bind_addr(&addr);
    assert!(host.is_ok(), "ESCAPE: the cell's name is taken on the host (@{name}): {host:?}\n{ctx}");
    let out = d.exec(&id, "import builtins\nop('accept', lambda: builtins.U.accept())\nprint('done')");
    let ctx = format!("session output:\n{out}");
    denied(&out, &ctx, "accept", &["EAGAIN"], "a host client reached the cell's abstract socket");
    d.assert_contained();
}

// ------------------------------------------------------------------------------------------
// 50–53: the mount view (issue 13: cells that share nothing)
// ------------------------------------------------------------------------------------------

/// A listening UNIX socket at `path` with `mode`, owned by `owner`.
fn listen_at(path: &Path, mode: u32, owner: u32) -> std::os::unix::net::UnixListener {
    let l = std::os::unix::net::UnixListener::bind(path).expect("bind a host socket");
    l.set_nonblocking(true).expect("nonblocking");
    std::fs::set_permissions(path, PermissionsExt::from_mode(mode)).expect("chmod socket");
    std::os::unix::fs::chown(path, Some(owner), Some(owner)).expect("chown socket");
    l
}

const UNIX_CONNECT: &str = "def uc(p):\n    s = socket.socket(socket.AF_UNIX); s.settimeout(3); s.connect(p)\n    \
    s.sendall(b'hello')\n    try:\n        return 'connected, read ' + s.recv(64).decode()\n    except OSError:\n        return 'connected'\n";

// 50. Host UNIX socket files from a `network = none` cell (finding 1): a root-owned 0666 socket
//     under /run, and a 0600 socket in a 0700 dir owned by nobody, the uid cells shared (a session bus,
//     ssh-agent or gpg-agent). Landlock below ABI 9 does not mediate connect(2); the mount view
//     does: neither path exists inside (ENOENT).
#[test]
fn host_unix_socket_files() {
    gate!("host_unix_socket_files");
    let dir = plant_open_dir("/run");
    std::fs::set_permissions(&dir.0, PermissionsExt::from_mode(0o755)).expect("chmod 0755");
    let open_sock = dir.0.join("open.sock");
    let l_open = listen_at(&open_sock, 0o666, 0);
    let own = dir.0.join("agent");
    std::fs::create_dir(&own).expect("create the 0700 dir");
    std::fs::set_permissions(&own, PermissionsExt::from_mode(0o700)).expect("chmod 0700");
    std::os::unix::fs::chown(&own, Some(NOBODY), Some(NOBODY)).expect("chown the 0700 dir");
    let own_sock = own.join("agent.sock");
    let l_own = listen_at(&own_sock, 0o600, NOBODY);
    let a = Attempt::new();
    let body = format!("{UNIX_CONNECT}op('connect 0666', lambda: uc(sys.argv[1]))\nop('connect own 0600', lambda: uc(sys.argv[2]))\nop('stat 0666', lambda: os.stat(sys.argv[1]).st_mode)");
    let r = a.run(&body, &[open_sock.to_str().expect("utf-8"), own_sock.to_str().expect("utf-8")]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    denied(&out, &ctx, "connect 0666", &["ENOENT"], "the cell connected to a root-owned 0666 host socket");
    denied(&out, &ctx, "connect own 0600", &["ENOENT"], "the cell connected to a 0600 host socket of its own uid");
    denied(&out, &ctx, "stat 0666", &["ENOENT"], "the cell saw a host socket file");
    for (l, name) in [(&l_open, "0666"), (&l_own, "own 0600")] {
        assert!(l.accept().is_err(), "ESCAPE: the host socket ({name}) received a connection from the cell\n{ctx}");
    }
    a.contained();
}

// 51. Cell to cell (finding 2): cell B listens on a socket in its workspace; cell A (same host
//     uid, another workspace) tries to connect and read B's reply. B's workspace does not exist
//     in A's view (ENOENT).
#[test]
fn another_cells_workspace_socket() {
    gate!("another_cells_workspace_socket");
    // Workspaces under /var/tmp (a workdir root of base): under /tmp each cell's private tmp
    // would hide the other's anyway.
    let workspace = |name: &str| {
        let dir = PathBuf::from(format!("/var/tmp/ck-ws-{name}-{}", &uid()[20..]));
        std::fs::create_dir(&dir).expect("create a workspace");
        std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o700)).expect("chmod 0700");
        std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).expect("chown workspace");
        Planted(dir)
    };
    let (ws_a, ws_b) = (workspace("a"), workspace("b"));
    let b = Attempt::new();
    let secret = format!("b-secret-{}", uid());
    let b_body = format!(
        "s = socket.socket(socket.AF_UNIX); s.bind('b.sock'); s.listen(1); s.settimeout(15)\n\
         try:\n    c, _ = s.accept(); print('b served', flush=True); c.recv(64); c.sendall(b'{secret}'); c.close()\n\
         except OSError as e:\n    print('b', e, flush=True)"
    );
    let b_sock = ws_b.0.join("b.sock");
    let run_in = |at: &Attempt, ws: &Path, body: &str, args: &[&str]| {
        let s = script(&at.marker, body);
        let mut argv = vec![PY, "-c", s.as_str()];
        argv.extend_from_slice(args);
        let r = at.w.run_in(&at.policy(""), ws, &argv, &[]);
        eprintln!("cell output:\n{}", r.output());
        r
    };
    let cell_b = std::thread::scope(|s| {
        let cell_b = s.spawn(|| run_in(&b, &ws_b.0, &b_body, &[]));
        let deadline = Instant::now() + Duration::from_secs(15);
        while !b_sock.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(b_sock.exists(), "cell B did not create its socket");
        let a = Attempt::new();
        let body = format!("{UNIX_CONNECT}op('connect to cell B', lambda: uc(sys.argv[1]))\nop('list B workspace', lambda: os.listdir(os.path.dirname(sys.argv[1])))");
        let r = run_in(&a, &ws_a.0, &body, &[b_sock.to_str().expect("utf-8")]);
        let (out, ctx) = (r.output(), r.describe());
        // Let B end now (the host can still reach it).
        if let Ok(mut c) = std::os::unix::net::UnixStream::connect(&b_sock) {
            let _ = std::io::Write::write_all(&mut c, b"x");
        }
        let cell_b = cell_b.join().expect("cell B");
        finished(&out, &ctx);
        assert!(!out.contains(&secret), "ESCAPE: cell A got cell B's secret over B's socket\n{ctx}");
        denied(&out, &ctx, "connect to cell B", &["ENOENT"], "cell A connected to a socket in cell B's workspace");
        denied(&out, &ctx, "list B workspace", &["ENOENT"], "cell A saw cell B's workspace");
        a.contained();
        cell_b
    });
    assert!(cell_b.output().contains("b served"), "cell B was not reached by the host: {}", cell_b.describe());
    b.contained();
}

// 52. Names and metadata outside every grant (finding 3): stat, lstat, readlink, getxattr,
//     access, chdir and O_PATH on another user's home and files in it, and an inotify watch on
//     it. Landlock does not mediate these; outside the mount view they meet ENOENT. fanotify:
//     unprivileged fanotify_init is allowed by the kernel (FAN_REPORT_FID) and its inode marks
//     work on any visible path (host activity under /usr, /etc): seccomp refuses it (EPERM).
#[test]
fn names_and_metadata_outside_every_grant() {
    gate!("names_and_metadata_outside_every_grant");
    let (_home, secret, _) = plant_victim_home();
    let link = secret.with_file_name("link");
    std::os::unix::fs::symlink("/etc/hostname", &link).expect("plant a symlink");
    let set = Command::new(PY)
        .args(["-c", "import os, sys; os.setxattr(sys.argv[1], 'user.ck', b'xattr-value')"])
        .arg(&secret)
        .status()
        .expect("setxattr");
    let a = Attempt::new();
    let body = "p = sys.argv[1]; l = sys.argv[2]; d = os.path.dirname(p)\n\
        op('stat', lambda: os.stat(p).st_size)\n\
        op('lstat link', lambda: os.lstat(l).st_mode)\n\
        op('readlink', lambda: os.readlink(l))\n\
        op('getxattr', lambda: os.getxattr(p, 'user.ck'))\n\
        op('listxattr', lambda: os.listxattr(p))\n\
        sc('access', 21, p.encode(), 0)\n\
        op('chdir', lambda: os.chdir(d))\n\
        op('O_PATH', lambda: os.open(p, os.O_PATH))\n\
        op('stat /run', lambda: os.stat('/run').st_mode)\n\
        ifd = libc.inotify_init1(0)\n\
        sc('inotify watch', 254, ifd, d.encode(), 0x100)\n\
        sc('fanotify_init', 300, 0x200, 0)";
    let r = a.run(body, &[secret.to_str().expect("utf-8"), link.to_str().expect("utf-8")]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    let mut labels = vec!["stat", "lstat link", "readlink", "access", "chdir", "O_PATH", "stat /run", "inotify watch"];
    if set.success() {
        labels.extend(["getxattr", "listxattr"]);
    }
    for label in labels {
        denied(&out, &ctx, label, &["ENOENT"], &format!("the cell learned about a path outside its grants ({label})"));
    }
    assert!(!out.contains("xattr-value"), "ESCAPE: the cell read an xattr of another user's file\n{ctx}");
    denied(&out, &ctx, "fanotify_init", &["EPERM"], "the cell created a fanotify group");
    a.contained();
}

// 53. Exec rules bypassed (finding 6): with {cwd} and {tmp} not executable (base), a binary
//     the cell wrote is run through the dynamic loader (which maps it PROT_EXEC), or from a
//     memfd with fexecve. {cwd} and {tmp} are `noexec` mounts: mmap(PROT_EXEC) fails with EPERM
//     and the loader with it. memfds: `vm.memfd_noexec = 2` in the cell's pid namespace (MFD_EXEC
//     refused with EACCES, other memfds sealed non-executable); on a kernel without it
//     (< 6.3), seccomp refuses memfd_create (ENOSYS) and the launch reports `memfd_noexec`.
#[test]
fn exec_past_noexec_mounts() {
    gate!("exec_past_noexec_mounts");
    let a = Attempt::new();
    let body = "import shutil, subprocess, mmap\n\
        for where in ('cwd', 'tmp'):\n\
        \x20   path = os.path.join(os.getcwd() if where == 'cwd' else '/tmp', 'mybin')\n\
        \x20   shutil.copy('/usr/bin/true', path); os.chmod(path, 0o755)\n\
        \x20   op('exec ' + where, lambda: subprocess.run([path]).returncode)\n\
        \x20   fd = os.open(path, os.O_RDONLY)\n\
        \x20   op('mmap exec ' + where, lambda: mmap.mmap(fd, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC) and 'mapped')\n\
        \x20   rc = subprocess.run(['/lib64/ld-linux-x86-64.so.2', path], capture_output=True)\n\
        \x20   print('loader ' + where, 'OK' if rc.returncode == 0 else 'REFUSED', rc.returncode, rc.stderr.decode()[-120:].replace('\\n', ' '), flush=True)\n\
        elf = open('/usr/bin/true', 'rb').read()\n\
        sc('memfd MFD_EXEC', 319, b'x', 0x10)\n\
        m = sc('memfd plain', 319, b'x', 0)\n\
        if m >= 0:\n\
        \x20   os.write(m, elf)\n\
        \x20   op('fchmod memfd +x', lambda: os.fchmod(m, 0o755))\n\
        \x20   pid = os.fork()\n\
        \x20   if pid == 0:\n\
        \x20       try:\n\
        \x20           os.execve(m, ['true'], {})\n\
        \x20       except OSError as e:\n\
        \x20           os._exit(e.errno)\n\
        \x20   code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])\n\
        \x20   print('memfd fexecve', 'OK' if code == 0 else ename(code), flush=True)";
    let r = a.run(body, &[]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    for where_ in ["cwd", "tmp"] {
        denied(
            &out,
            &ctx,
            &format!("exec {where_}"),
            &["EACCES"],
            &format!("the cell ran a binary it wrote in {{{where_}}}"),
        );
        denied(
            &out,
            &ctx,
            &format!("mmap exec {where_}"),
            &["EPERM"],
            &format!("PROT_EXEC mapping of a file in {{{where_}}}"),
        );
        denied(
            &out,
            &ctx,
            &format!("loader {where_}"),
            &["REFUSED"],
            &format!("the loader ran a binary from {{{where_}}}"),
        );
    }
    if Path::new("/proc/sys/vm/memfd_noexec").exists() {
        denied(&out, &ctx, "memfd MFD_EXEC", &["EACCES"], "an executable memfd was created");
        denied(&out, &ctx, "memfd fexecve", &["EACCES"], "a memfd was executed");
    } else {
        denied(&out, &ctx, "memfd plain", &["ENOSYS"], "memfd_create worked on a kernel without memfd_noexec");
        let degraded = r.outcome["degraded"].to_string();
        assert!(degraded.contains("memfd_noexec"), "no memfd_noexec degradation reported: {degraded}\n{ctx}");
    }
    a.contained();
}

// ------------------------------------------------------------------------------------------
// 54–60: a host identity per cell (issue 13, findings 4 and 5; acceptance 3)
// ------------------------------------------------------------------------------------------

/// The payload's host uid, as its `/proc/self/uid_map` says (`inside outside count`).
const HOST_UID: &str = "op('host uid', lambda: int(open('/proc/self/uid_map').read().split()[1]))\n";

/// The `host uid` a cell printed.
fn host_uid_of(out: &str, ctx: &str) -> u32 {
    let line = line_of(out, "host uid");
    line.strip_prefix("OK ").and_then(|v| v.trim().parse().ok()).unwrap_or_else(|| panic!("no host uid: {line}\n{ctx}"))
}

/// A payload that holds a kernel budget: it runs `body`, writes `ready` (what `body` left in
/// `n`) into its workspace, and waits (up to 60 s) for the host to create `done` there.
fn holding(body: &str) -> String {
    format!(
        "import time\n{body}\nwrite('ready', str(n))\nt = time.time()\n\
         while not os.path.exists('done') and time.time() - t < 60:\n    time.sleep(0.05)\nprint('held', n, flush=True)"
    )
}

/// Run `body` ([`holding`]) in a `cellkeep run` cell; once it is ready, call `during` with what
/// it held, then let it end. `(run, held, during's answer)`.
fn while_a_cell_holds<T: Send>(a: &Attempt, body: &str, during: impl FnOnce() -> T + Send) -> (Run, i64, T) {
    let ws = a.w.ws.path().to_owned();
    let script = holding(body);
    std::thread::scope(|s| {
        let cell = s.spawn(|| a.run(&script, &[]));
        let ready = ws.join("ready");
        let t = Instant::now();
        while std::fs::read_to_string(&ready).map_or(true, |s| s.is_empty()) && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let held: i64 = std::fs::read_to_string(&ready).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(-1);
        let answer = during();
        std::fs::write(ws.join("done"), b"").expect("tell the cell to end");
        (cell.join().expect("the cell's thread"), held, answer)
    })
}

/// A Python script run as host root (the test process's own identity), its stdout.
fn as_host_root(script: &str) -> String {
    let out = Command::new(PY).args(["-c", script]).output().expect("python3 as root");
    assert!(out.status.success(), "host script failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

// 54. Pending signals charged to host root (finding 4): the cell blocks SIGRTMIN and queues
//     300 to itself. Pending signals count against the receiver's user in every user namespace
//     up to the host (ucounts): with the cell's user namespace created by root, host root
//     queued 0 of 100 under an RLIMIT_SIGPENDING of 250. The cell's namespace is created by its
//     own host uid now: root's budget is untouched.
#[test]
fn pending_signals_are_not_charged_to_root() {
    gate!("pending_signals_are_not_charged_to_root");
    let a = Attempt::new();
    let body = "import signal\nsig = signal.SIGRTMIN\nsignal.pthread_sigmask(signal.SIG_BLOCK, [sig])\n\
        n = 0\nfor i in range(300):\n    if libc.sigqueue(os.getpid(), sig, ctypes.c_void_p(i)) != 0:\n        break\n    n += 1";
    let root_queues = "import ctypes, os, resource, signal\nlibc = ctypes.CDLL(None, use_errno=True)\n\
        resource.setrlimit(resource.RLIMIT_SIGPENDING, (250, 250))\nsignal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGRTMIN])\n\
        print(sum(1 for i in range(100) if libc.sigqueue(os.getpid(), signal.SIGRTMIN, ctypes.c_void_p(i)) == 0))";
    let (r, held, queued) = while_a_cell_holds(&a, body, || as_host_root(root_queues));
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    assert_eq!(held, 300, "the cell could not queue its 300 signals\n{ctx}");
    assert_eq!(queued, "100", "ESCAPE: host root queued {queued} of 100 signals while a cell held 300 pending\n{ctx}");
    a.contained();
}

// 55. inotify instances charged to host root (finding 4): a cell holding 20 inotify instances
//     took 20 of host root's 128 (max_user_instances). Root's free instances are counted by
//     trying (opened and closed at once), before and while the cell holds its 20.
#[test]
fn inotify_instances_are_not_charged_to_root() {
    gate!("inotify_instances_are_not_charged_to_root");
    let count = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nfds = []\n\
        while len(fds) < 100000:\n    fd = libc.inotify_init1(0)\n    if fd < 0:\n        break\n    fds.append(fd)\n\
        [os.close(fd) for fd in fds]\nprint(len(fds))";
    let before: i64 = as_host_root(count).parse().expect("a count");
    let a = Attempt::new();
    let body = "fds = [libc.inotify_init1(0) for _ in range(20)]\nn = sum(1 for fd in fds if fd >= 0)";
    let (r, held, during) = while_a_cell_holds(&a, body, || as_host_root(count));
    let during: i64 = during.parse().expect("a count");
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    assert_eq!(held, 20, "the cell could not create its 20 inotify instances\n{ctx}");
    assert!(
        before - during < 10,
        "ESCAPE: host root's free inotify instances fell from {before} to {during} while a cell held 20\n{ctx}"
    );
    a.contained();
}

/// The policy text of a cell that keeps its own host id even where its workspace cannot be
/// idmapped (so the identity tests hold on every kernel and filesystem).
const OWN_ID: &str = "[identity]\nworkspace_idmap = \"fallback_cell\"";

/// Let the cell's own uid search and read its workspace without an idmap (`fallback_cell`).
fn open_up(dir: &Path) {
    std::fs::set_permissions(dir, PermissionsExt::from_mode(0o755)).expect("chmod 0755 workspace");
}

// 56. Shared identity through the daemon (finding 5): every root-called cell ran as host uid
//     65534. Two concurrent cells get two host uids of their own, neither an account's.
#[test]
fn concurrent_daemon_cells_never_share_a_host_uid() {
    gate!("concurrent_daemon_cells_never_share_a_host_uid");
    let d = own_daemon();
    let start = || {
        let r = call(&d.socket, "POST", "/v1/cells", Some(&json!({"provider": "own", "cwd": d.cwd()})));
        assert_eq!(r.status, 201, "spawn own: {}", r.text());
        r.json()["id"].as_str().expect("an id").to_owned()
    };
    let (a, b) = (start(), start());
    let (out_a, out_b) = (d.exec(&a, HOST_UID), d.exec(&b, HOST_UID));
    let (ua, ub) = (host_uid_of(&out_a, &out_a), host_uid_of(&out_b, &out_b));
    assert_ne!(ua, ub, "ESCAPE: two concurrent cells share host uid {ua}");
    for u in [ua, ub] {
        assert!(u != 0 && u != NOBODY, "a cell runs as host uid {u}");
        assert!(nix::unistd::User::from_uid(u.into()).ok().flatten().is_none(), "a cell runs as an account's uid {u}");
    }
    d.assert_contained();
}

// 57. Shared identity between concurrent one-shot `cellkeep run`s (finding 5): their id used
//     to be derived from the process id (collisions); now each leases one under
//     /run/cellkeep/ids.
#[test]
fn concurrent_runs_never_share_a_host_uid() {
    gate!("concurrent_runs_never_share_a_host_uid");
    let (a, b) = (Attempt::new(), Attempt::new());
    open_up(a.w.ws.path());
    open_up(b.w.ws.path());
    let body = format!("{HOST_UID}import time\ntime.sleep(1.5)");
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| a.run_with(&a.w.policy("t", "", OWN_ID), &body, &[]));
        let tb = s.spawn(|| b.run_with(&b.w.policy("t", "", OWN_ID), &body, &[]));
        (ta.join().expect("run a"), tb.join().expect("run b"))
    });
    let (ua, ub) = (host_uid_of(&ra.output(), &ra.describe()), host_uid_of(&rb.output(), &rb.describe()));
    assert_ne!(ua, ub, "ESCAPE: two concurrent `cellkeep run` cells share host uid {ua}");
    for u in [ua, ub] {
        assert!(u != 0 && u != NOBODY, "a cell runs as host uid {u}");
    }
    a.contained();
    b.contained();
}

// 58. A host process running as nobody kills a cell (finding 5): `kill -KILL` of the payload
//     by `setpriv --reuid 65534` ended the cell `signaled 9`. The payload's uid is its own now:
//     EPERM, and the cell lives on.
#[test]
fn nobody_cannot_kill_a_cell() {
    gate!("nobody_cannot_kill_a_cell");
    let d = own_daemon();
    let (id, pid) = spawn_own(&d);
    // The payload and its pid 1 (its parent, seen from the host) run with the cell's host ids
    // as real, effective, saved and filesystem ids alike.
    let out = d.exec(&id, HOST_UID);
    let host_uid = host_uid_of(&out, &out);
    let status = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |text: &str, name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    let payload = status(&pid.to_string());
    let pid1 = field(&payload, "PPid:").expect("PPid");
    let all = vec![host_uid.to_string(); 4].join(" ");
    for (who, text) in [("payload", payload.clone()), ("pid 1", status(&pid1))] {
        assert_eq!(field(&text, "Uid:"), Some(all.clone()), "{who}'s uids are not all the cell's {host_uid}");
        assert_eq!(field(&text, "Gid:"), Some(all.clone()), "{who}'s gids are not all the cell's {host_uid}");
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "kill", "-KILL", &pid.to_string()])
        .output()
        .expect("setpriv kill");
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "ESCAPE: a host process running as nobody killed the cell's payload {pid}");
    assert!(said.contains("not permitted"), "kill as nobody failed otherwise: {said}");
    assert_eq!(d.exec(&id, "print('alive')"), "alive\n", "the cell was hurt");
    let cmdline = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat", &format!("/proc/{pid}/environ")])
        .output()
        .expect("setpriv cat");
    assert!(!cmdline.status.success(), "ESCAPE: nobody read the cell payload's environment");
    d.assert_contained();
}

/// A daemon whose provider `own` is a session of the attempt loop with an id of its own
/// (`OWN_ID`), its workspace open to everyone.
fn own_daemon() -> Daemon {
    let q = |s: &str| serde_json::to_string(s).expect("json string");
    let session = script(&format!("ck-escape-{}", uid()), SESSION_LOOP);
    let d =
        daemon().provider("own", &format!("[{}, \"-u\", \"-c\", {}]", q(PY), q(&session)), "session", OWN_ID).start();
    open_up(Path::new(&d.cwd()));
    d
}

/// Spawn an `own` session in `d`: its id and its payload's host pid.
fn spawn_own(d: &Daemon) -> (String, u64) {
    let r = call(&d.socket, "POST", "/v1/cells", Some(&json!({"provider": "own", "cwd": d.cwd()})));
    assert_eq!(r.status, 201, "spawn own: {}", r.text());
    let v = r.json();
    (v["id"].as_str().expect("an id").to_owned(), v["pid"].as_u64().expect("a pid"))
}

/// Does the kernel idmap mounts of the filesystem holding `path`? (ext4, xfs, btrfs from
/// Linux 5.12/5.15; tmpfs from 6.3; not ramfs, overlayfs, 9p.)
fn idmap_expected(path: &Path) -> bool {
    let kind = nix::sys::statfs::statfs(path).expect("statfs").filesystem_type().0 as i64;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("kernel release");
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    match kind {
        0xEF53 | 0x5846_5342 => version >= (5, 12),
        0x9123_683E => version >= (5, 15),
        0x0102_1994 => version >= (6, 3),
        _ => false,
    }
}

/// A directory `ws` owned by 4321:4321 (mode 0700) under a fresh mount of `fstype` (or plain
/// under /var/tmp for `None`), removed on drop.
struct Workspace {
    top: PathBuf,
    ws: PathBuf,
    mounted: bool,
}

const OWNER: u32 = 4321;

impl Workspace {
    fn new(fstype: Option<&str>) -> Workspace {
        let top = PathBuf::from(format!("/var/tmp/ck-idmap-{}", &uid()[20..]));
        std::fs::create_dir(&top).expect("create the workspace's parent");
        let mounted = fstype.is_some();
        if let Some(t) = fstype {
            nix::mount::mount(Some(t), &top, Some(t), nix::mount::MsFlags::empty(), Some("mode=0755"))
                .unwrap_or_else(|e| panic!("mount {t}: {e}"));
        }
        let ws = top.join("ws");
        std::fs::create_dir(&ws).expect("create the workspace");
        std::fs::set_permissions(&ws, PermissionsExt::from_mode(0o700)).expect("chmod 0700");
        std::os::unix::fs::chown(&ws, Some(OWNER), Some(OWNER)).expect("chown the workspace");
        Workspace { top, ws, mounted }
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if self.mounted {
            let _ = nix::mount::umount2(&self.top, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.top);
    }
}

/// What a cell writing into its workspace reports, and where it ran.
const WRITE_IN_WS: &str =
    "op('write', lambda: write('made-by-cell', 'x'))\nop('mkdir', lambda: os.mkdir('dir-by-cell'))\n\
    op('owner inside', lambda: os.stat('.').st_uid)\n";

fn run_in_ws(a: &Attempt, policy: &Path, ws: &Path, body: &str) -> Run {
    let s = script(&a.marker, &format!("{HOST_UID}{body}"));
    let r = a.w.run_in(policy, ws, &[PY, "-c", &s], &[]);
    eprintln!("cell output:\n{}", r.output());
    r
}

fn degraded_by_idmap(r: &Run) -> bool {
    r.outcome["degraded"].as_array().into_iter().flatten().any(|d| d["mechanism"] == "workspace_idmap")
}

// 59. Acceptance 3: what a cell creates in its workspace belongs on the host to the
//     workspace's owner (4321), while the cell runs under a host uid of its own: the workspace
//     is an idmapped mount (owner ↔ cell). Where the filesystem cannot idmap, base's
//     `fallback_owner` runs the cell as the owner and reports `workspace_idmap`.
#[test]
fn files_a_cell_creates_belong_to_the_workspaces_owner() {
    gate!("files_a_cell_creates_belong_to_the_workspaces_owner");
    let w = Workspace::new(None);
    let a = Attempt::new();
    let r = run_in_ws(&a, &a.policy(""), &w.ws, WRITE_IN_WS);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    denied(&out, &ctx, "write", &["OK"], "(the cell could not write its workspace)");
    for name in ["made-by-cell", "dir-by-cell"] {
        let meta = std::fs::metadata(w.ws.join(name)).expect("the cell's file");
        assert_eq!((meta.uid(), meta.gid()), (OWNER, OWNER), "{name} belongs to {}:{}\n{ctx}", meta.uid(), meta.gid());
    }
    let host_uid = host_uid_of(&out, &ctx);
    if idmap_expected(&w.ws) {
        assert!(!degraded_by_idmap(&r), "idmap degraded on a filesystem that has it\n{ctx}");
        assert_ne!(host_uid, OWNER, "ESCAPE: the cell ran as the workspace's owner, not an id of its own\n{ctx}");
        assert_eq!(line_of(&out, "owner inside"), format!("OK {host_uid}"), "the owner appears as the cell\n{ctx}");
    } else {
        assert!(degraded_by_idmap(&r), "no workspace_idmap degradation reported\n{ctx}");
        assert_eq!(host_uid, OWNER, "fallback_owner: the cell runs as the owner\n{ctx}");
    }
    a.contained();
}

// 60. Where the workspace cannot be idmapped (ramfs never; tmpfs before Linux 6.3), the
//     policy's `workspace_idmap` decides and the launch says so: `fallback_owner` (base) runs
//     the cell as the owner, `fallback_cell` keeps the cell's id (the 0700 workspace is then
//     closed to it), `required` fails the launch at stage mounts — each reported.
#[test]
fn workspace_idmap_fallback_is_reported() {
    gate!("workspace_idmap_fallback_is_reported");
    for fstype in ["ramfs", "tmpfs"] {
        let w = Workspace::new(Some(fstype));
        let a = Attempt::new();
        let r = run_in_ws(&a, &a.policy(""), &w.ws, WRITE_IN_WS);
        let (out, ctx) = (r.output(), r.describe());
        finished(&out, &ctx);
        let meta = std::fs::metadata(w.ws.join("made-by-cell")).expect("the cell's file");
        assert_eq!(meta.uid(), OWNER, "{fstype}: the file belongs to {}\n{ctx}", meta.uid());
        let host_uid = host_uid_of(&out, &ctx);
        if idmap_expected(&w.ws) {
            assert!(!degraded_by_idmap(&r), "{fstype}: idmap degraded where the kernel has it\n{ctx}");
            assert_ne!(host_uid, OWNER, "{fstype}: the cell ran as the owner\n{ctx}");
            continue;
        }
        assert!(degraded_by_idmap(&r), "{fstype}: no workspace_idmap degradation reported\n{ctx}");
        assert_eq!(host_uid, OWNER, "{fstype}: fallback_owner runs the cell as the owner\n{ctx}");

        let cell = a.w.policy("cell", "", "[identity]\nworkspace_idmap = \"fallback_cell\"");
        open_up(&w.ws);
        let r = a.w.run_in(&cell, &w.ws, &[PY, "-c", &script(&a.marker, HOST_UID)], &[]);
        let (out, ctx) = (r.output(), r.describe());
        assert!(degraded_by_idmap(&r), "{fstype}: fallback_cell: no workspace_idmap degradation\n{ctx}");
        let own = host_uid_of(&out, &ctx);
        assert!(own != OWNER && own != NOBODY && own != 0, "{fstype}: fallback_cell ran as {own}\n{ctx}");

        let required = a.w.policy("req", "", "[identity]\nworkspace_idmap = \"required\"");
        let r = a.w.run_in(&required, &w.ws, &[PY, "-c", "print('ran')"], &[]);
        let ctx = r.describe();
        assert_eq!(r.reason(), "setup_failed", "{fstype}: required: the cell ran without its idmap\n{ctx}");
        assert_eq!(r.outcome["stage"], "mounts", "{fstype}: required: stage\n{ctx}");
        assert!(!r.stdout.contains("ran\n"), "{fstype}: required: the payload ran\n{ctx}");
        a.contained();
    }
}

/// The host's `kernel.core_pattern`, set for a test and put back on drop (also when it fails).
struct CorePattern(String);

impl CorePattern {
    const PATH: &'static str = "/proc/sys/kernel/core_pattern";

    fn set(pattern: &str) -> CorePattern {
        let old = std::fs::read_to_string(Self::PATH).expect("read core_pattern");
        std::fs::write(Self::PATH, pattern).expect("write core_pattern");
        CorePattern(old.trim_end().to_owned())
    }
}

impl Drop for CorePattern {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

// 61. (attacker review) A crash in a cell ran the host's core handler: the cell's RLIMIT_CORE
//     was 0, which the kernel ignores for a pipe `core_pattern` (apport, systemd-coredump:
//     the distributions' default), so every SIGSEGV in a cell started a root process on the
//     host, in no cell's cgroup, one per crash without bound. RLIMIT_CORE is 1 (soft and hard,
//     which the cell cannot raise): the kernel aborts a pipe dump at exactly 1, and writes no
//     core file under a page.
#[test]
fn a_crash_never_runs_the_hosts_core_handler() {
    gate!("a_crash_never_runs_the_hosts_core_handler");
    let a = Attempt::new();
    let dir = tempfile::Builder::new().prefix("ck-core-").tempdir_in("/tmp").expect("tempdir");
    let (handler, log) = (dir.path().join("handler.sh"), dir.path().join("crashes"));
    std::fs::write(&handler, format!("#!/bin/sh\necho \"$1\" >> {}\ncat > /dev/null\n", log.display()))
        .expect("handler");
    std::fs::set_permissions(&handler, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let name = format!("ckcrash{}", std::process::id() % 100_000);
    let body = format!(
        "op('core limit', lambda: open('/proc/self/limits').read().split('Max core file size')[1].split()[:2])\n\
         libc.prctl(15, b'{name}', 0, 0, 0)\n\
         os.kill(os.getpid(), 11)"
    );
    let r = {
        let _pattern = CorePattern::set(&format!("|{} %e", handler.display()));
        let r = a.run_with(&a.policy(""), &body, &[]);
        // The handler runs asynchronously to the crash; give it a moment.
        std::thread::sleep(Duration::from_millis(500));
        r
    };
    let ctx = r.describe();
    let limit = line_of(&r.output(), "core limit");
    let crashes = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!("core limit in the cell: {limit}; crashes seen by the handler: {crashes:?}");
    assert!(limit.contains("'1', '1'"), "the cell's RLIMIT_CORE is {limit}:\n{ctx}");
    assert!(
        !crashes.lines().any(|l| l == name),
        "ESCAPE: a crash in the cell ran the host's core handler (as root, outside the cell):\n{ctx}"
    );
    a.contained();
}

// 62. (attacker review) A non-root caller owned its own cells' user namespace: the holder
//     that made it ran as the caller, so the caller could setns(2) into it from the host and
//     hold every capability there — CAP_NET_ADMIN in the cell's network namespace included
//     (nf_tables and the rest of the netns-admin kernel surface, on a host that forbids
//     unprivileged user namespaces), and the cell's per-user kernel budgets (inotify
//     instances, pending signals, mqueues) were the caller's own. The namespace belongs to a
//     host id leased for the cell; the cell still acts, and writes files, as the caller.
#[test]
fn a_caller_cannot_enter_its_cells_user_namespace() {
    gate!("a_caller_cannot_enter_its_cells_user_namespace");
    let d = daemon()
        .socket_mode(Some("0666"))
        .provider("opensleep", "[\"/bin/sleep\", \"60\"]", "session", "[access]\nuids = [0, 65534]")
        .start();
    let body = json!({"provider": "opensleep", "cwd": d.cwd()}).to_string();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "curl", "-s", "--unix-socket"])
        .arg(&d.socket)
        .args(["-d", &body, "http://cellkeep/v1/cells"])
        .output()
        .expect("setpriv curl");
    let cell: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let pid = cell["pid"].as_u64().unwrap_or_else(|| panic!("spawn as nobody: {cell}"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    // (On the host it runs as nobody, or — its workspace nobody's — under a leased uid, seen
    // inside as nobody: escape #64.)
    assert!(status.lines().any(|l| l.starts_with("Uid:")), "the cell's process is gone: {cell}");
    let enter = format!(
        "import os, ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n\
         try:\n    fd = os.open('/proc/{pid}/ns/user', os.O_RDONLY)\n\
         except OSError as e:\n    print('refused open', e.errno); raise SystemExit\n\
         if libc.setns(fd, 0x10000000) == 0:\n    print('entered')\n\
         else:\n    print('refused setns', ctypes.get_errno())"
    );
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", PY, "-c", &enter])
        .output()
        .expect("setpriv python3");
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        said.starts_with("refused"),
        "ESCAPE: the caller entered its cell's user namespace (all capabilities there): {said}"
    );
    let id = cell["id"].as_str().unwrap_or_default();
    call(&d.socket, "DELETE", &format!("/v1/cells/{id}?force=true"), None);
    d.assert_contained();
}

// 63. (attacker review) The same for the caller's per-user kernel budgets: a cell of a
//     non-root caller charged its inotify instances (and pending signals, mqueues) to the
//     caller, so a prompt-injected agent could take all 128 of its caller's instances and
//     break the caller's editor and systemd --user. They are charged to the cell's leased
//     namespace owner.
#[test]
fn a_cells_budgets_are_not_its_callers() {
    gate!("a_cells_budgets_are_not_its_callers");
    let d = daemon().socket_mode(Some("0666")).start();
    // While a cell of nobody's holds 20 inotify instances, nobody's own free instances on
    // the host do not fall.
    let count = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nfds = []\n\
        while len(fds) < 100000:\n    fd = libc.inotify_init1(0)\n    if fd < 0:\n        break\n    fds.append(fd)\n\
        [os.close(fd) for fd in fds]\nprint(len(fds))";
    let as_nobody = |script: &str| {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", PY, "-c", script])
            .output()
            .expect("setpriv python3");
        String::from_utf8_lossy(&out.stdout).trim().parse::<i64>().unwrap_or(-1)
    };
    let before = as_nobody(count);
    let hold = "import ctypes, time\nlibc = ctypes.CDLL(None, use_errno=True)\n\
        fds = [libc.inotify_init1(0) for _ in range(20)]\nprint(sum(1 for fd in fds if fd >= 0), flush=True)\ntime.sleep(30)";
    let body = json!({"command": hold, "cwd": d.cwd(), "stream": true, "timeout_ms": 60_000}).to_string();
    let (mut holder, mut lines) = stream_as_nobody(&d, "open", &body);
    let held = lines.by_ref().map_while(Result::ok).find(|l| l.contains("\"data\""));
    let during = as_nobody(count);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(held.is_some(), "the cell of nobody's did not start");
    assert!(
        before - during < 10,
        "ESCAPE: nobody's free inotify instances fell from {before} to {during} while its cell held 20"
    );
    d.assert_contained();
}

// 64. (isolation review 5) The kernel keys some budgets by a process's host uid itself, not by
//     namespace: epoll watches, pipe pages, fds in flight. A non-root caller's cell ran as the
//     caller's own uid, so it spent those of the caller's processes and other cells (one cell
//     took all of nobody's pipe pages: nobody's own F_SETPIPE_SZ then failed with EPERM). A
//     cell in a workspace of the caller's runs under a host uid of its own, seen inside as
//     the caller, its workspace idmapped: what it writes is still the caller's.
#[test]
fn a_callers_uid_keyed_budgets_are_not_its_cells() {
    gate!("a_callers_uid_keyed_budgets_are_not_its_cells");
    let d = daemon().socket_mode(Some("0666")).start();
    // A tmpfs, idmappable from Linux 6.3 (the harness's workspace may sit on a filesystem
    // that is not: the test VM's 9p/overlayfs); below that the cell takes the documented
    // fallback, the caller's own identity, and only that is checked.
    struct Mounted(PathBuf);
    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let ws = Path::new(&d.cwd()).join("nobodys");
    std::fs::create_dir(&ws).expect("mkdir");
    nix::mount::mount(Some("tmpfs"), &ws, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("mode=0755"))
        .expect("mount tmpfs");
    let _mounted = Mounted(ws.clone());
    nix::unistd::chown(&ws, Some(NOBODY.into()), Some(NOBODY.into())).expect("chown");
    let own_id = idmap_expected(&ws);
    let grow = "import fcntl, os\nr, w = os.pipe()\ntry:\n    fcntl.fcntl(w, 1031, 1 << 20); print('grown')\n\
        except OSError as e:\n    print('refused', e.errno)";
    let as_nobody = |script: &str| {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", PY, "-c", script])
            .output()
            .expect("setpriv python3");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(as_nobody(grow), "grown", "nobody cannot grow a pipe to begin with");
    // Pipes of the default size (16 pages; a cell may not grow them, #67), 4 processes of
    // ~500 each: past the 16 384 pages of `fs.pipe-user-pages-soft` of whichever uid they
    // are charged to.
    let hold = r#"
import os, time
print('uid', os.getuid(), os.getgid())
open('mine', 'w').write('x')
def grab():
    pipes = []
    try:
        while len(pipes) < 500:
            pipes.append(os.pipe())
    except OSError:
        pass
    return pipes
for _ in range(3):
    if os.fork() == 0:
        p = grab(); time.sleep(30); os._exit(0)
pipes = grab()
time.sleep(1)
print('pipes', len(pipes), flush=True)
time.sleep(30)
"#;
    let body = json!({"command": hold, "cwd": ws, "stream": true, "timeout_ms": 60_000}).to_string();
    let (mut holder, mut lines) = stream_as_nobody(&d, "open", &body);
    let mut said = String::new();
    for line in lines.by_ref().map_while(Result::ok) {
        if let Some(text) =
            serde_json::from_str::<Value>(&line).ok().and_then(|v| v["data"].as_str().map(str::to_owned))
        {
            said += &text;
        }
        if said.contains("pipes") {
            break;
        }
        if line.contains("\"end\"") || line.contains("\"exit\"") {
            break;
        }
    }
    let during = as_nobody(grow);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(said.contains("pipes"), "the cell of nobody's did not run: {said}");
    assert!(said.contains(&format!("uid {NOBODY} {NOBODY}")), "inside, the cell is not its caller: {said}");
    let meta = std::fs::metadata(ws.join("mine")).expect("the cell's file");
    assert_eq!((meta.uid(), meta.gid()), (NOBODY, NOBODY), "the file the cell wrote is not its caller's");
    if own_id {
        assert_eq!(
            during, "grown",
            "ESCAPE: the cell spent its caller's pipe pages ({said}): nobody's own pipe: {during}"
        );
    } else {
        eprintln!(
            "tmpfs cannot be idmapped on this kernel: the cell ran as its caller (the fallback), sharing its budgets"
        );
    }
    d.assert_contained();
}

/// A sysctl file set for a test and put back on drop (also when the test fails).
struct Sysctl(&'static str, String);

impl Sysctl {
    fn set(path: &'static str, value: &str) -> Sysctl {
        let old = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        std::fs::write(path, value).unwrap_or_else(|e| panic!("write {path}: {e}"));
        Sysctl(path, old.trim_end().to_owned())
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0, &self.1);
    }
}

/// Where the kernel has modules (`/proc/sys/kernel/modprobe`), the modprobe it runs is a script
/// that logs its arguments (put back on drop); `None` without CONFIG_MODULES, where no
/// request can load anything.
fn logging_modprobe(dir: &Path) -> Option<(Sysctl, PathBuf)> {
    const PATH: &str = "/proc/sys/kernel/modprobe";
    if !Path::new(PATH).exists() {
        eprintln!("no {PATH} (a kernel without modules): only the errnos are checked");
        return None;
    }
    let (script, log) = (dir.join("modprobe.sh"), dir.join("requests"));
    std::fs::write(&script, format!("#!/bin/sh\necho \"$*\" >> {}\n", log.display())).expect("modprobe script");
    std::fs::set_permissions(&script, PermissionsExt::from_mode(0o755)).expect("chmod");
    Some((Sysctl::set(PATH, &script.display().to_string()), log))
}

// 65. (isolation review) Two socket ioctls made the host load kernel modules as root: the
//     kernel calls request_module("bridge") for SIOCGIFBR and request_module("8021q") for
//     SIOCGIFVLAN, on any socket, before any capability check, outside every cell's cgroup
//     (`ProtectKernelModules=` does not stop automatic loading). Seccomp refuses the module-
//     loading ioctls in every cell (EPERM), compared as 32 bits, as the kernel reads them.
#[test]
fn socket_ioctls_load_no_module() {
    gate!("socket_ioctls_load_no_module");
    let a = Attempt::new();
    let dir = tempfile::Builder::new().prefix("ck-modprobe-").tempdir_in("/tmp").expect("tempdir");
    let body = "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
        buf = ctypes.create_string_buffer(64)\n\
        sc('SIOCGIFBR', 16, s.fileno(), 0x8940, buf)\n\
        sc('SIOCBRADDBR', 16, s.fileno(), 0x89a0, buf)\n\
        sc('SIOCGIFVLAN', 16, s.fileno(), 0x8982, buf)\n\
        sc('SIOCGIFVLAN 64-bit', 16, s.fileno(), 0x100008982, buf)\n\
        sc('SIOCADDDLCI', 16, s.fileno(), 0x8980, buf)";
    let (r, requests) = {
        let modprobe = logging_modprobe(dir.path());
        let r = a.run(body, &[]);
        // A request the kernel made runs modprobe asynchronously to the ioctl; give it a moment.
        std::thread::sleep(Duration::from_millis(300));
        (r, modprobe.map(|(_, log)| std::fs::read_to_string(log).unwrap_or_default()))
    };
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    for label in ["SIOCGIFBR", "SIOCBRADDBR", "SIOCGIFVLAN", "SIOCGIFVLAN 64-bit", "SIOCADDDLCI"] {
        denied(&out, &ctx, label, &["EPERM"], &format!("{label} reached the kernel (which loads a module for it)"));
    }
    if let Some(requests) = requests {
        assert!(requests.is_empty(), "ESCAPE: the cell made the host run modprobe as root: {requests:?}\n{ctx}");
    }
    a.contained();
}

// 66. (isolation review) TIOCSETD on the cell's own terminal loaded a line discipline by
//     number (request_module("tty-ldisc-N"): one root modprobe per call where none exists;
//     n_hdlc, attached to the cell's pty, has a history of privilege escalations). Refused in
//     every cell (EPERM), also with high bits in the request.
#[test]
fn tiocsetd_on_the_cells_own_tty() {
    gate!("tiocsetd_on_the_cells_own_tty");
    let dir = tempfile::Builder::new().prefix("ck-modprobe-").tempdir_in("/tmp").expect("tempdir");
    let d = daemon().start();
    let body = "print('isatty', os.isatty(0))\n\
        n = ctypes.c_int(29)\n\
        sc('TIOCSETD 29', 16, 0, 0x5423, ctypes.byref(n))\n\
        hdlc = ctypes.c_int(13)\n\
        sc('TIOCSETD n_hdlc', 16, 0, 0x5423, ctypes.byref(hdlc))\n\
        sc('TIOCSETD 64-bit', 16, 0, 0x100005423, ctypes.byref(n))";
    let (v, requests) = {
        let modprobe = logging_modprobe(dir.path());
        let v = d.oneshot("pytty", body);
        std::thread::sleep(Duration::from_millis(300));
        (v, modprobe.map(|(_, log)| std::fs::read_to_string(log).unwrap_or_default()))
    };
    let (out, ctx) = reply(&v);
    finished(&out, &ctx);
    assert_eq!(line_of(&out, "isatty"), "True", "the tty provider has no terminal\n{ctx}");
    for label in ["TIOCSETD 29", "TIOCSETD n_hdlc", "TIOCSETD 64-bit"] {
        denied(&out, &ctx, label, &["EPERM"], &format!("{label} reached the kernel"));
    }
    if let Some(requests) = requests {
        assert!(requests.is_empty(), "ESCAPE: the cell made the host run modprobe as root: {requests:?}\n{ctx}");
    }
    d.assert_contained();
}

// 67. (isolation review) The payload's stdio pipes are made by the daemon (or the caller of
//     `cellkeep run`): the kernel charges their pages to root's pipe-page budget, which a cell
//     grew by F_SETPIPE_SZ to 1 MiB a pipe (20 cells: some 15 000 of the 16 384 pages every
//     root process without CAP_SYS_RESOURCE shares). F_SETPIPE_SZ is refused in every cell.
#[test]
fn a_cell_cannot_grow_the_pipes_root_made() {
    gate!("a_cell_cannot_grow_the_pipes_root_made");
    let a = Attempt::new();
    let body = "import stat\n\
        print('stdout is a pipe', stat.S_ISFIFO(os.fstat(1).st_mode), flush=True)\n\
        sc('F_SETPIPE_SZ stdout', 72, 1, 1031, 1 << 20)\n\
        sc('F_SETPIPE_SZ stderr', 72, 2, 1031, 1 << 20)\n\
        sc('F_SETPIPE_SZ 64-bit', 72, 1, 0x100000407, 1 << 20)";
    let r = a.run(body, &[]);
    let (out, ctx) = (r.output(), r.describe());
    finished(&out, &ctx);
    assert_eq!(line_of(&out, "stdout is a pipe"), "True", "{ctx}");
    for label in ["F_SETPIPE_SZ stdout", "F_SETPIPE_SZ stderr", "F_SETPIPE_SZ 64-bit"] {
        denied(&out, &ctx, label, &["EPERM"], &format!("{label}: the cell grew a pipe charged to root"));
    }
    a.contained();
}

// 68. (isolation review) pid 1 turned non-dumpable before it changed its ids, and the change
//     reset the flag to `fs.suid_dumpable`: with that sysctl at 1, pid 1 ran dumpable under
//     the cell's host uid, so anything else running under that uid on the host (the
//     workspace's owner, where the cell runs as them: `fallback_owner`) could read pid 1's
//     environment (the daemon's, through the zygote) and memory. (The payload itself is kept
//     out by Landlock's ptrace rule.) pid 1 is made non-dumpable again after, and checked.
#[test]
fn pid1_stays_undumpable_whatever_suid_dumpable() {
    gate!("pid1_stays_undumpable_whatever_suid_dumpable");
    let d = own_daemon();
    let _dumpable = Sysctl::set("/proc/sys/fs/suid_dumpable", "1");
    let (id, pid) = spawn_own(&d);
    let out = d.exec(&id, HOST_UID);
    let host_uid = host_uid_of(&out, &out).to_string();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let pid1 = status.lines().find_map(|l| l.strip_prefix("PPid:")).expect("PPid").trim().to_owned();
    let ids = [format!("--reuid={host_uid}"), format!("--regid={host_uid}"), "--clear-groups".to_owned()];
    let read =
        Command::new("setpriv").args(&ids).args(["cat", &format!("/proc/{pid1}/environ")]).output().expect("setpriv");
    assert!(
        !read.status.success(),
        "ESCAPE: a host process of the cell's uid {host_uid} read its pid 1's environment ({} bytes)",
        read.stdout.len()
    );
    d.assert_contained();
}

// 69. (isolation review, stop 29) Mounts inside a workspace came into the view with the host's
//     flags: pid 1's mount namespace belongs to the cell's user namespace, where every mount
//     copied from the host is locked, so its bind of a workspace holding mounts (a chroot's
//     `proc` and `dev`, as sbuild or mock leave them) fell back to a recursive one. A root
//     caller's cell in a root-owned workspace (no idmap) then listed the host's processes in
//     `proc` and wrote the host's `/dev/shm`. The workspace is a clone of its own mount only,
//     made outside the cell, idmapped or not.
#[test]
fn mounts_inside_a_workspace_stay_outside_the_view() {
    gate!("mounts_inside_a_workspace_stay_outside_the_view");
    let a = Attempt::new();
    let ws = a.w.ws.path().join("chroot");
    for sub in ["", "proc", "dev"] {
        std::fs::create_dir(ws.join(sub)).expect("mkdir");
    }
    std::fs::set_permissions(a.w.ws.path(), PermissionsExt::from_mode(0o755)).expect("chmod");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-R").arg(&self.0).status();
        }
    }
    let _proc = Unmount(ws.join("proc"));
    let _dev = Unmount(ws.join("dev"));
    nix::mount::mount(Some("proc"), &ws.join("proc"), Some("proc"), nix::mount::MsFlags::empty(), None::<&str>)
        .expect("mount proc");
    nix::mount::mount(
        Some("/dev"),
        &ws.join("dev"),
        None::<&str>,
        nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
        None::<&str>,
    )
    .expect("rbind /dev");
    let probe = format!("ck-probe-{}", &uid()[20..]);
    let body = format!(
        "op('list proc', lambda: len(os.listdir('proc')))\n\
         op('write dev/shm', lambda: write('dev/shm/{probe}', 'x'))\n\
         op('open dev/null', lambda: os.open('dev/null', os.O_WRONLY))"
    );
    let s = script(&a.marker, &body);
    let r = a.w.run_in(&a.policy(""), &ws, &[PY, "-c", &s], &[]);
    let (out, ctx) = (r.output(), r.describe());
    eprintln!("cell output:\n{out}");
    let leaked = Path::new("/dev/shm").join(&probe);
    let wrote = leaked.exists();
    let _ = std::fs::remove_file(&leaked);
    finished(&out, &ctx);
    assert_eq!(line_of(&out, "list proc"), "OK 0", "ESCAPE: the host's procfs is inside the view\n{ctx}");
    assert!(!wrote, "ESCAPE: the cell wrote the host's /dev/shm through its workspace\n{ctx}");
    denied(&out, &ctx, "write dev/shm", &["ENOENT"], "the workspace's dev mount is inside the view");
    denied(&out, &ctx, "open dev/null", &["ENOENT"], "the workspace's dev mount is inside the view");
    a.contained();
}

/// POST a streamed one-shot `body` to `provider` as nobody (curl under setpriv): the client
/// process (kill it to leave) and the stream's lines.
fn stream_as_nobody(
    d: &Daemon,
    provider: &str,
    body: &str,
) -> (std::process::Child, std::io::Lines<std::io::BufReader<std::process::ChildStdout>>) {
    let mut client = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "curl", "-sN", "--unix-socket"])
        .arg(&d.socket)
        .args(["-d", body, &format!("http://cellkeep/v1/providers/{provider}/commands")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("setpriv curl");
    let lines = std::io::BufRead::lines(std::io::BufReader::new(client.stdout.take().expect("stdout")));
    (client, lines)
}
