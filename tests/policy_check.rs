//! `policy check` against broken fixtures (exact `file:line:col: key: message` lines), the
//! shipped `policies/` (no diagnostics), `extends` behaviour and `policy show` round-trips;
//! issue 17: the dangerous fixtures in `lint/` (exact warnings), `--strict`, `--json`, the
//! admin floor (`tests/fixtures/floor/`), the exposure score and `policy diff`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: failing loudly is the point

mod common;
mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cellkeep::policy::check::check_paths;
use cellkeep::policy::diff::{self, Direction};
use cellkeep::policy::floor::Floor;
use cellkeep::policy::{self, score, Mode, Policy, PolicyError, RunAs, SessionPolicy};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> PathBuf {
    root().join("tests/fixtures/policies")
}

fn rendered(paths: &[PathBuf]) -> Vec<String> {
    policy::check(paths).iter().map(ToString::to_string).collect()
}

/// Expected diagnostics of each broken fixture in `broken/`, as `line:col: key: message`
/// in the file they are reported in (the file itself, except for the cycle: checking
/// `cycle_a` reports the `extends` of `cycle_b` that closes it, and the other way round).
fn expected_broken() -> Vec<(&'static str, Vec<String>)> {
    let own = |s: &str| s.to_owned();
    vec![
        ("bad_duration.toml", vec![own(
            "6:13: limits.wall_time: \"10 minutes\" is not a duration; write seconds or a number with ms, s, m or h (e.g. \"10m\")",
        )]),
        ("bad_size.toml", vec![own(
            "6:14: limits.memory_max: \"512Q\" is not a size; write bytes or a number with K, M, G or T (e.g. \"512M\")",
        )]),
        ("cycle_a.toml", vec![own("1:11: extends: extends cycle: cycle_a -> cycle_b -> cycle_a")]),
        ("cycle_b.toml", vec![own("1:11: extends: extends cycle: cycle_b -> cycle_a -> cycle_b")]),
        ("limits_out_of_range.toml", vec![
            own("5:14: limits.memory_max: 512 bytes is less than any program needs to start (at least \"1M\"); a number without a unit is bytes: write e.g. \"512M\""),
            own("6:15: limits.memory_high: 102400 bytes is less than any program needs to start (at least \"1M\"); a number without a unit is bytes: write e.g. \"512M\""),
            own("6:15: limits.memory_high: must not be greater than limits.memory_max"),
            own("7:7: limits.cpu: 0.0001 is below the kernel's minimum of 0.01 CPU (1 ms per 100 ms)"),
            own("8:8: limits.pids: 10000000000 is more than the kernel can ever run (pid_max is at most 4194304)"),
            own("9:14: limits.open_files: 1099511627776 is above this host's fs.nr_open (1048576), the most any process may open: every launch would fail; write at most 1048576"),
        ]),
        ("seccomp_allow_deny.toml", vec![
            own("6:9: seccomp.deny: \"mkdir\" is in seccomp.allow too: a call is allowed or denied, not both; remove it from one list"),
        ]),
        ("session_framing_values.toml", vec![
            own("7:11: session.pattern: \"([\" is not a regular expression: unclosed character class"),
        ]),
        ("session_sentinel_newline.toml", vec![
            own("7:12: session.sentinel: must be one line without its newline: the sentinel is compared with each whole line of output, so a newline in it never matches"),
        ]),
        ("env_placeholder.toml", vec![
            own("5:8: environment.set.HOME: \"{TMP}\" is not a placeholder and would be passed on as written (the placeholders are {cwd} and {tmp}); did you mean \"{tmp}\"?"),
            own("6:5: environment.set.X: \"{home}\" is not a placeholder and would be passed on as written (the placeholders are {cwd} and {tmp})"),
        ]),
        ("egress_entries.toml", vec![
            own("8:5: network.egress: \"https://api.openai.com/v1\" is a URL: write the host name only (\"api.openai.com\"), with :port unless the port is 443 (https:// and any path are not part of an entry: the proxy sees only the host and port)"),
            own("9:5: network.egress: \"*.bad.*.com\" is not a host name (letters, digits, '-', '.', not ending in a number such as 0x7f, which the resolver reads as an address), \"*.\" + a name, or an IP address, with an optional :port"),
        ]),
        ("many.toml", vec![
            own("3:8: provider.name: \"not_many\" must equal the file name \"many\""),
            own("4:12: provider.command: \"bin/true\" must be an absolute path"),
            own("5:8: provider.mode: \"daemon\" is not one of \"oneshot\", \"session\""),
            own("8:7: limits.cpu: 0 must be a number of CPUs greater than 0 (e.g. 0.5)"),
            own("10:15: limits.memory_high: must not be greater than limits.memory_max"),
            own("11:8: limits.pids: -1 must be at least 1"),
            own("15:7: namespaces.net: must be true: no cell shares the host's network (see network.mode)"),
            own("18:10: filesystem.write: {tmp} needs a mount namespace, but namespaces.mount = false"),
            own("21:10: identity.run_as: 0 is host root (uid 0); a sandbox never runs as host root"),
            own("22:14: identity.uid_range: start 0 must be between 1 and 4294967295 (the range must not contain uid 0)"),
            own("25:11: access.groups: unknown group \"no_such_group_xyz\" (not in /etc/group)"),
        ]),
        ("missing_parent.toml", vec![own(
            "1:11: extends: no policy named \"no_such_base\" in this directory (no no_such_base.toml)",
        )]),
        ("relative_path.toml", vec![own(
            "6:17: filesystem.read: \"etc\" is a relative path; paths must be absolute or start with {cwd} or {tmp}",
        )]),
        ("root_run_as.toml", vec![own(
            "6:10: identity.run_as: \"root\" is host root (uid 0); a sandbox never runs as host root",
        )]),
        ("unknown_key.toml", vec![own(
            "6:1: limits.memroy_max: unknown key \"memroy_max\" in [limits]; did you mean \"memory_max\"?",
        )]),
        ("unknown_syscall.toml", vec![own(
            "6:18: seccomp.deny: unknown syscall \"opnat\" (not an x86_64 syscall name); did you mean \"openat\"?",
        )]),
        ("wrong_type.toml", vec![own(
            "3:11: provider.command: expected a list in square brackets, e.g. command = [\"/bin/true\"] (found the text \"/bin/true\")",
        )]),
        // Issue 17: no serde jargon, one error per mistake, the key named, did you mean.
        ("base.toml", vec![]),
        ("pids_string.toml", vec![own(
            "6:8: limits.pids: expected a whole number, e.g. pids = 256 (found the text \"256\")",
        )]),
        ("duplicate_key.toml", vec![own(
            "4:1: duplicate key \"name\": it is already set on line 2; keep one of the two",
        )]),
        ("duplicate_table.toml", vec![own(
            "8:2: duplicate section [limits]: it is already opened on line 5; put its keys under one [limits]",
        )]),
        ("extends_typo.toml", vec![own(
            "1:11: extends: no policy named \"bsae\" in this directory (no bsae.toml); did you mean \"base\"?",
        )]),
        ("syscall_typo.toml", vec![own(
            "6:9: seccomp.deny: unknown syscall \"opne\" (not an x86_64 syscall name); did you mean \"open\"?",
        )]),
        ("bool_string.toml", vec![own(
            "4:7: provider.tty: expected true or false, e.g. tty = true (found the text \"yes\")",
        )]),
        ("unknown_section.toml", vec![own("5:2: limit: unknown section or key \"limit\"; did you mean \"limits\"?")]),
        ("unclosed_string.toml", vec![own("3:23: TOML syntax: unclosed array, expected `]`")]),
        ("negative_uid.toml", vec![own(
            "6:9: access.uids: expected a whole number, e.g. uids = [1000] (found the number -1)",
        )]),
        // A misspelt word is one error: the keys depending on it are not also reported.
        ("network_mode_typo.toml", vec![own(
            "6:8: network.mode: \"proxi\" is not one of \"none\", \"loopback\", \"proxy\"; did you mean \"proxy\"?",
        )]),
        ("framing_typo.toml", vec![own(
            "7:11: session.framing: \"sentinal\" is not one of \"line\", \"sentinel\", \"regex\", \"json_field\"; did you mean \"sentinel\"?",
        )]),
        ("run_as_typo.toml", vec![own(
            "6:10: identity.run_as: unknown user \"rnage\" (not in /etc/passwd); did you mean \"range\"?",
        )]),
        ("provider_not_table.toml", vec![own(
            "2:12: provider: expected a section: write [provider] on a line of its own, its keys below it (found the number 5)",
        )]),
        ("mode_typo.toml", vec![own(
            "4:8: provider.mode: \"sesion\" is not one of \"oneshot\", \"session\"; did you mean \"session\"?",
        )]),
    ]
}

fn located_in(file: &str) -> PathBuf {
    let other = match file {
        "cycle_a.toml" => "cycle_b.toml",
        "cycle_b.toml" => "cycle_a.toml",
        _ => file,
    };
    fixtures().join("broken").join(other)
}

#[test]
fn each_broken_fixture_reports_exactly_its_problems() {
    for (file, lines) in expected_broken() {
        let path = fixtures().join("broken").join(file);
        let want: Vec<String> = lines.iter().map(|l| format!("{}:{l}", located_in(file).display())).collect();
        assert_eq!(rendered(std::slice::from_ref(&path)), want, "{file}");
    }
}

#[test]
fn checking_the_directory_reports_every_file() {
    let got = rendered(&[fixtures().join("broken")]);
    let mut want: Vec<String> = Vec::new();
    for (file, lines) in expected_broken() {
        want.extend(lines.iter().map(|l| format!("{}:{l}", located_in(file).display())));
    }
    let (mut got_sorted, mut want_sorted) = (got.clone(), want.clone());
    got_sorted.sort();
    want_sorted.sort();
    assert_eq!(got_sorted, want_sorted);
}

#[test]
fn an_inherited_problem_points_into_the_parent() {
    let dir = fixtures().join("inherit");
    let got = rendered(&[dir.join("child.toml")]);
    let want = format!(
        "{}:6:15: limits.memory_high: must not be greater than limits.memory_max",
        dir.join("parent.toml").display()
    );
    assert_eq!(got, vec![want]);
    // The parent alone is valid (abstract, no command, no memory_max).
    assert_eq!(rendered(&[dir.join("parent.toml")]), Vec::<String>::new());
}

#[test]
fn load_file_error_names_file_and_key() {
    let path = fixtures().join("broken/bad_size.toml");
    let err = policy::load_file(&path).err().unwrap_or_else(|| panic!("bad_size.toml loaded"));
    assert!(matches!(err, PolicyError::Invalid(ref d) if d.len() == 1));
    let text = err.to_string();
    assert!(text.contains("bad_size.toml:6:14: limits.memory_max:"), "{text}");
    let missing = policy::load_file(Path::new("/nonexistent/x.toml"));
    assert!(matches!(missing, Err(PolicyError::Io { .. })));
}

#[test]
fn shipped_policies_are_valid() {
    let dir = root().join("policies");
    assert_eq!(rendered(std::slice::from_ref(&dir)), Vec::<String>::new());
    let (policies, diags) = policy::load_dir(&dir);
    assert!(diags.is_empty(), "{diags:?}");
    for name in ["base", "sandbox", "echo", "cat"] {
        assert!(policies.contains_key(name), "{name} missing");
    }
    let base = &policies["base"];
    assert!(!base.is_launchable());
    assert!(matches!(policy::load_launchable(&dir.join("base.toml")), Err(PolicyError::NotLaunchable { .. })));

    let sandbox = &policies["sandbox"];
    assert!(sandbox.is_launchable() && sandbox.command.is_empty());
    let echo = &policies["echo"];
    assert_eq!((echo.command.as_slice(), echo.mode), (&["/bin/echo".to_owned()][..], Mode::Oneshot));
    let cat = &policies["cat"];
    assert_eq!((cat.command.as_slice(), cat.mode), (&["/bin/cat".to_owned()][..], Mode::Session));
    assert_eq!(cat.session, SessionPolicy::Line);
    // Inherited from base.
    assert_eq!(echo.limits.memory_max, Some(512 << 20));
    assert_eq!(echo.identity.run_as, RunAs::Caller);
    assert_eq!(echo.identity.root_maps_to, None, "root callers get a host uid of the cell's own");
    assert_eq!(echo.identity.workspace_idmap, cellkeep::policy::WorkspaceIdmap::FallbackOwner);
    assert_eq!(echo.env.set.get("HOME").map(String::as_str), Some("{tmp}"));
    // Roots every stock host has (issue 15, finding 1: /work was not, and the daemon died).
    for root in &echo.workdir.roots {
        assert!(["/home", "/srv", "/tmp", "/var/tmp"].contains(&root.to_str().unwrap_or("")), "{}", root.display());
    }
    // The cellkeep group may use the shipped providers (finding 4: root only).
    let cellkeep = nix::unistd::Group::from_name("cellkeep").ok().flatten().map(|g| g.gid.as_raw());
    assert!(cellkeep.is_some_and(|g| echo.access.gids.contains(&g)), "{:?}", echo.access);
    assert_eq!(echo.seccomp.compiled.filters.len(), 7); // guard, deny, clone3, families, protocols, TCP_ULP, host
}

#[test]
fn show_output_loads_back_to_the_same_policy() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (policies, _) = policy::load_dir(&root().join("policies"));
    for (name, p) in &policies {
        let shown = policy::show(p);
        let copy = tmp.path().join(format!("{name}.toml"));
        std::fs::write(&copy, &shown).unwrap_or_else(|e| panic!("{e}"));
        let again = policy::load_file(&copy).unwrap_or_else(|e| panic!("{name}: {e}\n{shown}"));
        let body = |s: &str| s.lines().skip(1).collect::<Vec<_>>().join("\n");
        assert_eq!(body(&policy::show(&again)), body(&shown), "{name}");
        assert_eq!(again.seccomp.compiled, p.seccomp.compiled, "{name}");
        assert!(!shown.contains("extends"), "{shown}");
    }
}

#[test]
fn cli_policy_check_and_show() {
    let exe = env!("CARGO_BIN_EXE_cellkeep");
    let out = Command::new(exe)
        .args(["policy", "check"])
        .arg(fixtures().join("broken/bad_size.toml"))
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("bad_size.toml:6:14: limits.memory_max: \"512Q\" is not a size"), "{stdout}");

    let out = Command::new(exe)
        .args(["policy", "check"])
        .arg(root().join("policies"))
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().any(|l| l.starts_with("11 policies OK, 0 warnings")), "{stdout}");

    let out = Command::new(exe)
        .args(["policy", "show", "echo", "--dir"])
        .arg(root().join("policies"))
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("name = \"echo\""));
}

// ---------------------------------------------------------------------------------------------
// Issue 17: warnings, --strict, --json, the admin floor, the exposure score and the diff.

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cellkeep"))
        .current_dir(root())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// Every finding (errors, warnings, notes) of `path`, rendered.
fn findings(path: &Path, floor: Option<&Floor>) -> Vec<String> {
    check_paths(&[path.to_path_buf()], floor).findings.iter().map(ToString::to_string).collect()
}

/// The dangerous fixtures in `lint/`: each valid, each with exactly these warnings and notes
/// (`line:col: severity: key: message`). `base.toml` and `clean.toml` have none.
fn expected_lint() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("base.toml", vec![]),
        ("clean.toml", vec![]),
        ("command_missing.toml", vec![
            "5:12: warning: provider.command: \"/usr/bin/does-not-exist\" does not exist on this host: every launch would fail with \"no such file\"; install it or fix the path",
        ]),
        ("command_not_executable.toml", vec![
            "5:12: warning: provider.command: \"/etc/passwd\" is not an executable file; point command at the program itself",
        ]),
        ("command_outside_exec.toml", vec![
            "5:12: warning: provider.command: \"/usr/sbin/nologin\" is outside every filesystem.exec path, so the cell may not run it; add \"/usr/sbin\" to filesystem.exec",
        ]),
        ("command_under_tmp.toml", vec![
            "5:12: warning: provider.command: \"/tmp/agents/bin/claude\" is under /tmp, which the cell mounts privately: every launch fails with \"no such file\"; install the program outside /tmp (e.g. under /opt)",
        ]),
        ("exec_hidden_tmp.toml", vec![
            "7:21: warning: filesystem.exec: \"/tmp/tools\" is hidden inside the cell: it mounts a private /tmp over the host's; use \"{tmp}\" for scratch space, or install outside /tmp (e.g. under /opt)",
        ]),
        ("exec_proc.toml", vec![
            "7:21: warning: filesystem.exec: \"/proc\" lets the cell run programs from the kernel's process and tuning files; grant \"{cwd}\" and \"{tmp}\", or the one directory it needs",
        ]),
        ("exec_root.toml", vec![
            "7:9: warning: filesystem.exec: \"/\" lets the cell run programs from the whole host; grant \"{cwd}\" and \"{tmp}\", or the one directory it needs",
        ]),
        ("missing_path.toml", vec![
            "7:17: warning: filesystem.read: \"/opt/does-not-exist\" does not exist on this host: the cell skips this rule, so it grants nothing; check the spelling or remove it",
        ]),
        ("note_command_not_installed.toml", vec![
            "5:12: note: provider.command: \"/opt/cellkeep/agents/bin/not-installed\" is not installed on this host yet (scripts/install-agents.sh creates /opt/cellkeep); check again after installing",
        ]),
        ("note_distro.toml", vec![
            "7:17: note: filesystem.read: \"/etc/pki/not-on-this-distro\" does not exist on this host (kept for other distributions; the cell skips it here)",
        ]),
        ("note_install_prefix.toml", vec![
            "7:17: note: filesystem.read: \"/opt/cellkeep/not-installed\" is not installed on this host yet (scripts/install-agents.sh creates /opt/cellkeep); check again after installing",
        ]),
        ("read_home.toml", vec![
            "7:17: warning: filesystem.read: \"/home\" lets the cell read every file in it (other users' keys and shell history); list only what it needs (e.g. \"/usr\", \"/etc/ssl/certs\", \"{cwd}\")",
        ]),
        ("read_root.toml", vec![
            "7:9: warning: filesystem.read: \"/\" lets the cell read the whole host (other users' files, keys under /etc and /root); list only what it needs (e.g. \"/usr\", \"/etc/ssl/certs\", \"{cwd}\")",
        ]),
        ("seccomp_allowlist.toml", vec![
            "8:41: warning: seccomp.allow: \"io_uring_setup\" allows a call the default preset denies (io_uring does I/O that seccomp cannot see; every cell gets ENOSYS from io_uring_setup anyway); remove it unless the provider cannot work without it",
        ]),
        ("seccomp_none.toml", vec![
            "7:10: warning: seccomp.preset: \"none\" removes the default deny list (ptrace, bpf, mount, …); use preset = \"default\" and re-allow only the calls the provider needs in seccomp.allow",
        ]),
        ("seccomp_reallow.toml", vec![
            "7:10: warning: seccomp.allow: \"ptrace\" re-allows a call the default preset denies (it reads and controls other processes); remove it unless the provider cannot work without it",
            "7:20: warning: seccomp.allow: \"bpf\" re-allows a call the default preset denies (it loads programs into or probes the kernel); remove it unless the provider cannot work without it",
            "7:27: warning: seccomp.allow: \"mount\" re-allows a call the default preset denies (it changes the mount view the sandbox relies on); remove it unless the provider cannot work without it",
        ]),
        ("env_pass_loader.toml", vec![
            "7:17: warning: environment.pass: \"LD_PRELOAD\" lets the caller make the dynamic linker load code of its choosing into the program; remove it unless the provider needs it from callers",
            "7:31: warning: environment.pass: \"NODE_OPTIONS\" lets the caller make Node load code of its choosing (--require, --import) or change its flags; remove it unless the provider needs it from callers",
            "7:47: warning: environment.pass: \"PATH\" lets the caller choose which program a bare name runs; set it in [environment.set] instead",
            "7:55: warning: environment.pass: \"BASH_ENV\" lets the caller make every non-interactive shell run a file of its choosing; remove it unless the provider needs it from callers",
            "7:67: note: environment.pass: \"HTTPS_PROXY\" is never the caller's: a proxy cell gets the egress proxy's address, any other cell no network; remove it",
            "7:82: warning: environment.pass: \"GIT_CONFIG_PARAMETERS\" lets the caller set any git option (core.sshCommand, core.fsmonitor: programs git runs); remove it unless the provider needs it from callers",
        ]),
        ("proxy_public_suffix.toml", vec![
            "8:11: warning: network.egress: \"*.github.io\" matches names anyone can register (the public suffix list has \"github.io\"): a cell could reach a host of anyone's choosing; list the exact names it needs",
            "8:26: warning: network.egress: \"*.amazonaws.com\" matches names anyone can register (the public suffix list has \"*.compute.amazonaws.com\"): a cell could reach a host of anyone's choosing; list the exact names it needs",
            "8:45: warning: network.egress: \"*.nyc3.digitaloceanspaces.com\" matches names anyone can register (the public suffix list has \"*.digitaloceanspaces.com\"): a cell could reach a host of anyone's choosing; list the exact names it needs",
        ]),
        ("proxy_learn.toml", vec![
            "8:10: warning: network.egress: \"learn\" lets the cell reach every name through the proxy; run it once, then write the names it reported (cell events, the log) as egress = [...]",
        ]),
        ("proxy_empty.toml", vec![
            "8:10: warning: network.egress: an empty list allows nothing through the proxy; use mode = \"none\" instead",
        ]),
        ("workdir_root.toml", vec![
            "7:10: warning: workdir.roots: \"/\" lets a caller start a cell anywhere under it and write there through \"{cwd}\"; list the directories where work happens (e.g. \"/srv\", \"/home\")",
        ]),
        ("write_etc.toml", vec![
            "7:19: warning: filesystem.write: \"/etc\" lets the cell write to host configuration such as passwd, sudoers and cron; grant \"{cwd}\" and \"{tmp}\", or the one directory it needs",
        ]),
        ("write_home_root.toml", vec![
            "7:10: warning: filesystem.write: \"/home\" lets the cell write to every user's home directory; grant \"{cwd}\" and \"{tmp}\", or the one directory it needs",
        ]),
        ("write_inside_etc.toml", vec![
            "7:19: warning: filesystem.write: \"/etc/sudoers\" lets the cell write to a path inside /etc (host configuration such as passwd, sudoers and cron); grant \"{cwd}\" and \"{tmp}\", or the one directory it needs",
        ]),
        ("write_root.toml", vec![
            "7:10: warning: filesystem.write: \"/\" lets the cell write to the whole host; grant \"{cwd}\" and \"{tmp}\", or the one directory it needs",
        ]),
        ("write_socket_dir.toml", vec![
            "7:10: warning: filesystem.write: \"/run\" lets the cell write to /run/cellkeep (the cellkeep daemon's socket directory); grant \"{cwd}\" and \"{tmp}\", or the one directory it needs",
        ]),
        ("write_sys.toml", vec![
            "7:10: warning: filesystem.write: \"/sys\" lets the cell write to the kernel's device and tuning files; grant \"{cwd}\" and \"{tmp}\", or the one directory it needs",
        ]),
        ("write_user_home.toml", vec![
            "7:10: warning: filesystem.write: \"/home/alice\" lets the cell write to a user's whole home (ssh keys, shell start-up files); grant \"{cwd}\" and \"{tmp}\", or the one directory it needs",
        ]),
        ("write_symlink.toml", vec![
            "7:10: warning: filesystem.write: \"/bin\" (a symlink to /usr/bin) lets the cell write to a path inside /usr (the host's programs and libraries); grant \"{cwd}\" and \"{tmp}\", or the one directory it needs",
        ]),
        ("read_run.toml", vec![
            "7:17: warning: filesystem.read: \"/run\" lets the cell connect to the host's UNIX sockets under it (D-Bus, journald, container runtimes: Landlock does not govern connecting to a socket file); list only what it needs (e.g. \"/usr\", \"/etc/ssl/certs\", \"{cwd}\")",
            "7:25: warning: filesystem.read: \"/var/run\" (a symlink to /run) lets the cell connect to the host's UNIX sockets under it (D-Bus, journald, container runtimes: Landlock does not govern connecting to a socket file); list only what it needs (e.g. \"/usr\", \"/etc/ssl/certs\", \"{cwd}\")",
        ]),
        ("proxy_address_literal.toml", vec![
            "8:11: warning: network.egress: \"127.0.0.1:18080\" is an address the proxy refuses for every name (loopback, link-local, cloud metadata, reserved), yet listed as an address it is reached: the host's own service or its metadata on that port; remove it unless the cell must reach exactly that",
            "8:30: warning: network.egress: \"169.254.169.254:80\" is an address the proxy refuses for every name (loopback, link-local, cloud metadata, reserved), yet listed as an address it is reached: the host's own service or its metadata on that port; remove it unless the cell must reach exactly that",
            "8:52: warning: network.egress: \"0.0.0.0:22\" is an address the proxy refuses for every name (loopback, link-local, cloud metadata, reserved), yet listed as an address it is reached: the host's own service or its metadata on that port; remove it unless the cell must reach exactly that",
        ]),
        ("namespaces_off.toml", vec![
            "10:8: warning: namespaces.user: false: the cell runs directly under its host ids, with no user namespace between it and the kernel's checks; keep it true unless the provider cannot work otherwise",
            "11:7: warning: namespaces.pid: false: the cell sees every host process and its command line, and can signal those of its uid; keep it true unless the provider cannot work otherwise",
            "12:9: warning: namespaces.mount: false: the cell sees the host's whole mount tree (only Landlock stands between it and every file) and has no private /tmp; keep it true unless the provider cannot work otherwise",
            "13:7: warning: namespaces.ipc: false: the cell shares the host's System V IPC objects and POSIX message queues; keep it true unless the provider cannot work otherwise",
            "14:7: note: namespaces.uts: false: the cell shares the host's hostname; keep it true unless the provider cannot work otherwise",
            "15:10: note: namespaces.cgroup: false: the cell sees the host's cgroup paths; keep it true unless the provider cannot work otherwise",
            "17:8: warning: enforcement.mode: \"best_effort\" launches the cell even where this kernel lacks a mechanism the policy relies on (Landlock, a seccomp feature, a cgroup controller), with less confinement than this file says; use \"required\"",
        ]),
        ("seccomp_log.toml", vec![
            "7:18: warning: seccomp.default_action: \"log\" lets every call through: calls outside seccomp.allow are only logged by the kernel (audit mode, for finding the allow list); use \"errno\" once the list is complete",
        ]),
        ("size_bare.toml", vec![
            "7:13: warning: limits.file_size: 100 is 100 bytes (a number without a unit is bytes); write it with a unit if more was meant (e.g. \"100K\" or \"100M\")",
            "8:16: warning: limits.output_bytes: 4096 is 4096 bytes (a number without a unit is bytes); write it with a unit if more was meant (e.g. \"4096K\" or \"4096M\")",
            "9:12: warning: limits.tmp_size: 64 is 64 bytes (a number without a unit is bytes); write it with a unit if more was meant (e.g. \"64K\" or \"64M\")",
        ]),
        ("write_usr.toml", vec![
            "7:10: warning: filesystem.write: \"/usr\" lets the cell write to the host's programs and libraries; grant \"{cwd}\" and \"{tmp}\", or the one directory it needs",
        ]),
    ]
}

#[test]
fn each_dangerous_fixture_warns_exactly_once_per_grant() {
    let dir = fixtures().join("lint");
    let mut seen = 0;
    for (file, lines) in expected_lint() {
        let path = dir.join(file);
        let want: Vec<String> = lines.iter().map(|l| format!("{}:{l}", path.display())).collect();
        assert_eq!(findings(&path, None), want, "{file}");
        seen += 1;
    }
    // Every fixture in the directory is in the table.
    let files = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{e}")).count();
    assert_eq!(seen, files, "a lint fixture has no expected findings");
    let report = check_paths(&[dir], None);
    assert_eq!(report.errors().count(), 0);
    assert_eq!((report.files, report.valid), (files, files));
}

/// An abstract parent may leave `egress` empty for its children to fill in (as
/// `policies/agent.toml` does): no warning there, nor in a child that sets its own list; a
/// launchable child that keeps the empty list is warned, at the parent's line.
#[test]
fn an_empty_egress_list_warns_only_where_it_is_launched() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let write = |name: &str, text: &str| write_file(dir.path(), name, text);
    let parent = write(
        "parent.toml",
        "[provider]\nname = \"parent\"\nabstract = true\n[filesystem]\nexec = [\"/usr/bin\", \"/bin\"]\n\
         [network]\nmode = \"proxy\"\negress = []\n",
    );
    let child = "extends = \"parent\"\n[provider]\nname = \"NAME\"\ncommand = [\"/bin/true\"]\n";
    let filled = write(
        "filled.toml",
        &format!("{}[network]\negress = [\"api.example.com\"]\n", child.replace("NAME", "filled")),
    );
    let kept = write("kept.toml", &child.replace("NAME", "kept"));
    assert_eq!(findings(&parent, None), Vec::<String>::new());
    assert_eq!(findings(&filled, None), Vec::<String>::new());
    let want = format!(
        "{}:8:10: warning: network.egress: an empty list allows nothing through the proxy; use mode = \"none\" instead",
        parent.display()
    );
    assert_eq!(findings(&kept, None), vec![want]);
}

#[test]
fn warnings_fail_only_under_strict() {
    let file = "tests/fixtures/policies/lint/write_root.toml";
    let (code, stdout, _) = cli(&["policy", "check", file]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("write_root.toml:7:10: warning: filesystem.write: \"/\" lets the cell write to the whole host"),
        "{stdout}"
    );
    assert!(stdout.ends_with("1 policy OK, 1 warning\n"), "{stdout}");
    let (code, _, stderr) = cli(&["policy", "check", "--strict", file]);
    assert_eq!(code, 1);
    assert!(stderr.contains("1 policy OK, 1 warning (--strict: warnings fail the check)"), "{stderr}");
    // Notes never fail, even under --strict.
    let (code, stdout, _) = cli(&["policy", "check", "--strict", "tests/fixtures/policies/lint/note_distro.toml"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.ends_with("1 policy OK, 0 warnings, 1 note\n"), "{stdout}");
}

#[test]
fn every_shipped_policy_passes_strict() {
    let report = check_paths(&[root().join("policies")], None);
    let warnings: Vec<String> = report.warnings().map(ToString::to_string).collect();
    assert_eq!(warnings, Vec::<String>::new());
    assert!(report.passed(true));
    let (code, stdout, stderr) = cli(&["policy", "check", "--strict", "policies"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.lines().any(|l| l.starts_with("11 policies OK, 0 warnings")), "{stdout}");
}

#[test]
fn check_json_is_machine_readable() {
    let (code, stdout, _) = cli(&["--json", "policy", "check", "tests/fixtures/policies/lint/proxy_learn.toml"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!((v["ok"].as_bool(), v["files"].as_u64(), v["warnings"].as_u64()), (Some(true), Some(1), Some(1)));
    let f = &v["findings"][0];
    assert_eq!(f["severity"], "warning");
    assert_eq!((f["line"].as_u64(), f["col"].as_u64()), (Some(8), Some(10)));
    assert_eq!(f["key"], "network.egress");
    assert!(f["file"].as_str().is_some_and(|s| s.ends_with("lint/proxy_learn.toml")), "{f}");
    assert!(f["message"].as_str().is_some_and(|m| m.starts_with("\"learn\" lets the cell reach every name")), "{f}");

    let (code, stdout, _) =
        cli(&["--json", "policy", "check", "--strict", "tests/fixtures/policies/broken/pids_string.toml"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!((v["ok"].as_bool(), v["errors"].as_u64(), v["valid"].as_u64()), (Some(false), Some(1), Some(0)));
    assert_eq!(v["findings"][0]["severity"], "error");
}

#[test]
fn show_json_carries_the_policy_and_its_findings() {
    let (code, stdout, _) = cli(&["--json", "policy", "show", "read_root", "--dir", "tests/fixtures/policies/lint"]);
    assert_eq!(code, 0, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(v["policy"]["name"], "read_root");
    assert_eq!(v["policy"]["filesystem"]["read"][0]["path"], "/");
    assert_eq!(v["findings"][0]["key"], "filesystem.read");
    assert_eq!(v["findings"][0]["line"], 7);
    // Without --dir: the daemon's directory (/etc/cellkeep/policies when installed, else ./policies).
    let (code, stdout, stderr) = cli(&["policy", "show", "echo"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("name = \"echo\""), "{stdout}");
}

#[test]
fn every_policy_failure_exits_1() {
    for args in [
        &["policy", "check", "tests/fixtures/policies/broken/duplicate_key.toml"][..],
        &["policy", "show", "no_such_policy", "--dir", "policies"],
        &["policy", "score", "no_such_policy", "--dir", "policies"],
        &["policy", "diff", "echo", "no_such_policy", "--dir", "policies"],
        &["policy", "check", "--floor", "/nonexistent/floor.toml", "policies"],
        &["policy", "score", "many", "--dir", "tests/fixtures/policies/broken"],
    ] {
        let (code, stdout, stderr) = cli(args);
        assert_eq!(code, 1, "{args:?}: {stdout}{stderr}");
    }
    let (_, _, stderr) = cli(&["policy", "show", "no_such_policy", "--dir", "policies"]);
    assert_eq!(stderr, "cellkeep: error: no policy named \"no_such_policy\" in policies\n");
}

#[test]
fn a_duplicate_key_is_one_error_naming_it() {
    // No false "provider.name: missing" / "provider.command: missing" before it.
    let path = fixtures().join("broken/duplicate_key.toml");
    let got = findings(&path, None);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(got[0]
        .ends_with("duplicate_key.toml:4:1: duplicate key \"name\": it is already set on line 2; keep one of the two"));
}

fn floor_fixture() -> (PathBuf, Floor) {
    let path = root().join("tests/fixtures/floor/floor.toml");
    let floor = Floor::load(&path).unwrap_or_else(|e| panic!("{e}"));
    (path, floor)
}

/// The floor fixtures: the policy's line, then the floor line it breaks (`FLOOR` = the floor
/// file). `within.toml` respects every minimum.
fn expected_floor() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("within.toml", vec![]),
        ("best_effort.toml", vec![
            "6:8: enforcement.mode: \"best_effort\" is below the admin floor: \"required\" (floor FLOOR:18:8)",
        ]),
        ("big_memory.toml", vec![
            "6:14: limits.memory_max: \"8G\" is above the admin floor: at most \"4G\" (floor FLOOR:5:14)",
        ]),
        ("forbidden_allow.toml", vec![
            "6:18: seccomp.allow: \"ptrace\" may not be allowed: the admin floor forbids it (floor FLOOR:10:16)",
        ]),
        ("long_wall.toml", vec![
            "6:13: limits.wall_time: \"24h\" is above the admin floor: at most \"4h\" (floor FLOOR:7:13)",
        ]),
        ("no_limits.toml", vec![
            "1:1: limits.memory_max: not set (unlimited), but the admin floor requires at most \"4G\" (floor FLOOR:5:14)",
            "1:1: limits.pids: not set (unlimited), but the admin floor requires at most 1024 (floor FLOOR:6:8)",
            "1:1: limits.wall_time: not set (unlimited), but the admin floor requires at most \"4h\" (floor FLOOR:7:13)",
        ]),
        ("ns_off.toml", vec![
            "6:7: namespaces.pid: false, but the admin floor requires this namespace (floor FLOOR:16:21)",
        ]),
        ("pids_over.toml", vec![
            "6:8: limits.pids: 2048 is above the admin floor: at most 1024 (floor FLOOR:6:8)",
        ]),
        ("root_maps.toml", vec![
            "6:16: identity.root_maps_to: the admin floor maps root callers to \"nobody\" only (floor FLOOR:14:16)",
        ]),
        ("seccomp_none.toml", vec![
            "6:10: seccomp.preset: \"none\" is below the admin floor: preset \"default\" (floor FLOOR:9:10)",
        ]),
        ("wide_net.toml", vec![
            "6:8: network.mode: \"proxy\" is wider than the admin floor allows: at most \"loopback\" (floor FLOOR:3:8)",
        ]),
        ("write_outside.toml", vec![
            "6:19: filesystem.write: \"/var/lib\" is outside the workdir roots; the admin floor allows writes only to {cwd}, {tmp} and beneath a workdir root (floor FLOOR:12:25)",
        ]),
    ]
}

#[test]
fn the_floor_refuses_each_loosening_naming_both_lines() {
    let (floor_path, floor) = floor_fixture();
    let dir = root().join("tests/fixtures/floor/policies");
    for (file, lines) in expected_floor() {
        let path = dir.join(file);
        let want: Vec<String> = lines
            .iter()
            .map(|l| format!("{}:{}", path.display(), l.replace("FLOOR", &floor_path.display().to_string())))
            .collect();
        let got: Vec<String> =
            check_paths(std::slice::from_ref(&path), Some(&floor)).errors().map(ToString::to_string).collect();
        assert_eq!(got, want, "{file}");
        // The daemon's per-policy step agrees.
        let loaded = policy::load_file_within(&path, Some(&floor));
        assert_eq!(loaded.is_ok(), lines.is_empty(), "{file}");
    }
    // A set: the floor-breakers are left out and reported, the rest load.
    let (set, diags) = policy::load_dir_within(&dir, Some(&floor));
    let names: Vec<&str> = set.keys().map(String::as_str).collect();
    assert_eq!(names, vec!["base", "within"]);
    assert_eq!(diags.len(), expected_floor().iter().map(|(_, l)| l.len()).sum::<usize>());
}

#[test]
fn shipped_policies_and_the_floor() {
    // The CI floor: every shipped policy within it, with no warning.
    let ci = Floor::load(&root().join("tests/fixtures/floor/shipped-floor.toml")).unwrap_or_else(|e| panic!("{e}"));
    let report = check_paths(&[root().join("policies")], Some(&ci));
    assert!(report.passed(true), "{:#?}", report.findings);
    // A floor allowing at most loopback refuses the agents, at the line that grants the proxy.
    let (floor_path, floor) = floor_fixture();
    let report = check_paths(&[root().join("policies")], Some(&floor));
    let errors: Vec<String> = report.errors().map(ToString::to_string).collect();
    let agent = root().join("policies/agent.toml");
    let text = std::fs::read_to_string(&agent).unwrap_or_else(|e| panic!("{e}"));
    let line =
        1 + text.lines().position(|l| l.starts_with("mode = \"proxy\"")).unwrap_or_else(|| panic!("no proxy mode"));
    let want = format!(
        "{}:{line}:8: network.mode: \"proxy\" is wider than the admin floor allows: at most \"loopback\" (floor {}:3:8)",
        agent.display(),
        floor_path.display()
    );
    assert_eq!(errors, vec![want]);
    assert_eq!((report.files, report.valid), (11, 5));
    let (code, _, stderr) = cli(&["policy", "check", "--floor", "tests/fixtures/floor/floor.toml", "policies"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("6 of 11 policies invalid: 1 error, 0 warnings"), "{stderr}");
    // The same floor named by the daemon config's `floor` key.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("cellkeep.toml");
    std::fs::write(&config, format!("floor = \"{}\"\n", floor_path.display())).unwrap_or_else(|e| panic!("{e}"));
    let config = config.display().to_string();
    let (code, stdout, _) = cli(&["policy", "check", "--config", &config, "policies"]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains(&format!("agent.toml:{line}:8: network.mode: \"proxy\" is wider than the admin floor")),
        "{stdout}"
    );
}

#[test]
fn a_broken_floor_is_reported_at_its_line() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let write = |name: &str, text: &str| write_file(dir.path(), name, text);
    let cases = [
        ("[network]\nmode = \"tcp\"\n", "2:8: \"tcp\" is not one of \"none\", \"loopback\", \"proxy\""),
        (
            "[limits]\nmemory_max = \"4Q\"\n",
            "2:14: \"4Q\" is not a size; write bytes or a number with K, M, G or T (e.g. \"512M\")",
        ),
        ("[limits]\nmemroy_max = \"4G\"\n", "2:1: unknown section or key \"memroy_max\"; did you mean \"memory_max\"?"),
        (
            "[namespaces]\nrequired = [\"usr\"]\n",
            "2:13: \"usr\" is not a namespace (user, pid, mount, net, ipc, uts, cgroup)",
        ),
    ];
    for (text, want) in cases {
        let p = write("floor.toml", text);
        let err = Floor::load(&p).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(err, format!("{}:{want}", p.display()), "{text}");
        // The daemon's set loading refuses everything rather than run without the floor.
        let (set, diags) = policy::load_dir_floored(&root().join("policies"), &p);
        assert!(set.is_empty() && diags.len() == 1, "{diags:?}");
    }
    // No floor file: no floor.
    let (set, diags) = policy::load_dir_floored(&root().join("policies"), &dir.path().join("absent.toml"));
    assert_eq!((set.len(), diags.len()), (11, 0));
}

fn shipped(name: &str) -> Policy {
    policy::load_file(&root().join(format!("policies/{name}.toml"))).unwrap_or_else(|e| panic!("{e}"))
}

fn lint_fixture(name: &str) -> Policy {
    policy::load_file(&fixtures().join(format!("lint/{name}.toml"))).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn shipped_scores_match_the_readme() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap_or_else(|e| panic!("{e}"));
    for (name, want, level) in [
        ("echo", 0.3, "OK"),
        ("cat", 0.3, "OK"),
        ("sandbox", 1.3, "OK"),
        ("claude", 2.1, "MEDIUM"),
        ("claude-session", 2.1, "MEDIUM"),
        ("codex", 1.9, "OK"),
        ("codex-session", 1.9, "OK"),
        ("gemini", 1.9, "OK"),
        ("gemini-session", 1.9, "OK"),
    ] {
        let s = score::score(&shipped(name));
        assert_eq!((s.score, s.level), (want, level), "{name}: {:#?}", s.findings);
        let sum: f64 = s.findings.iter().map(|f| f.weight).sum();
        assert!((sum - s.score).abs() < 0.05, "{name}: the lines add up to the score");
        let row = format!("| `{name}` | {want:.1} {level} |");
        assert!(readme.contains(&row), "README lacks {row}");
    }
    let claude = score::score(&shipped("claude"));
    let keys: Vec<(&str, f64)> = claude.findings.iter().map(|f| (f.key.as_str(), f.weight)).collect();
    assert_eq!(keys, vec![("network.egress", 1.0), ("filesystem.exec", 0.5), ("environment.pass", 0.6)]);
}

#[test]
fn dangerous_fixtures_score_higher() {
    let clean = score::score(&lint_fixture("clean")).score;
    for (name, key, weight) in [
        ("write_root", "filesystem.write", 2.5),
        ("read_root", "filesystem.read", 2.0),
        ("read_home", "filesystem.read", 1.0),
        ("exec_root", "filesystem.exec", 1.5),
        ("seccomp_none", "seccomp.preset", 2.0),
        ("proxy_learn", "network.egress", 2.5),
    ] {
        let s = score::score(&lint_fixture(name));
        let f =
            s.findings.iter().find(|f| f.key == key).unwrap_or_else(|| panic!("{name}: no {key}: {:#?}", s.findings));
        assert_eq!(f.weight, weight, "{name}");
        assert!(s.score >= clean + weight - 0.05, "{name}: {} vs clean {clean}", s.score);
    }
    let realloc = score::score(&lint_fixture("seccomp_reallow"));
    assert_eq!(realloc.findings[0].finding, "re-allows denied calls: ptrace, bpf, mount");
    assert_eq!(realloc.findings[0].weight, 1.5);
    assert_eq!(score::level(9.0), "UNSAFE");
}

#[test]
fn score_cli_prints_a_line_per_finding_and_json() {
    let (code, stdout, _) = cli(&["policy", "score", "claude", "--dir", "policies"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("claude  ("), "{stdout}");
    assert_eq!(lines[1], "  WEIGHT  KEY               FINDING");
    assert_eq!(lines[2], "    +1.0  network.egress    HTTPS egress through the proxy to [api.anthropic.com]");
    assert_eq!(lines[5], "  → exposure 2.1/10 MEDIUM");
    let (code, stdout, _) = cli(&["--json", "policy", "score", "--dir", "policies"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let names: Vec<&str> =
        v.as_array().map(|a| a.iter().filter_map(|p| p["name"].as_str()).collect()).unwrap_or_default();
    assert_eq!(names.len(), 9, "every launchable shipped policy: {names:?}");
    assert_eq!(v[0]["name"], "cat");
    assert_eq!(v[0]["score"], 0.3);
    assert_eq!(v[0]["findings"][0]["key"], "filesystem.read");
}

#[test]
fn diff_of_shipped_policies() {
    let d = diff::diff(&shipped("claude"), &shipped("claude-session"));
    let got: Vec<(String, Direction)> = d.changes.iter().map(|c| (c.key.clone(), c.direction)).collect();
    let want = [
        ("limits.wall_time", Direction::Loosened),
        ("provider.command", Direction::Changed),
        ("provider.description", Direction::Changed),
        ("provider.mode", Direction::Changed),
        ("session.equals", Direction::Changed),
        ("session.field", Direction::Changed),
        ("session.framing", Direction::Changed),
    ];
    let want: Vec<(String, Direction)> = want.iter().map(|(k, d)| ((*k).to_owned(), *d)).collect();
    assert_eq!(got, want);
    assert_eq!((d.score_before, d.score_after), (2.1, 2.1));
    let wall = &d.changes[0];
    assert_eq!((wall.old.as_deref(), wall.new.as_deref()), (Some("\"30m\""), Some("\"4h\"")));
    // Reversed, the same key tightens.
    let back = diff::diff(&shipped("claude-session"), &shipped("claude"));
    assert_eq!(back.changes[0].direction, Direction::Tightened);
    // Identical policies: nothing.
    assert!(diff::diff(&shipped("echo"), &shipped("echo")).changes.is_empty());
}

#[test]
fn diff_shows_grants_added_and_removed_and_the_score() {
    let d = diff::diff(&lint_fixture("clean"), &lint_fixture("write_root"));
    assert_eq!(d.changes.len(), 2, "{:#?}", d.changes);
    let (added, removed) = (&d.changes[0], &d.changes[1]);
    assert_eq!((added.key.as_str(), added.direction), ("filesystem.write", Direction::Loosened));
    assert_eq!(added.added, vec!["\"/\"".to_owned()]);
    assert_eq!(
        (removed.direction, removed.removed.clone()),
        (Direction::Tightened, vec!["\"{tmp}\"".to_owned(), "\"/dev/null\"".to_owned()])
    );
    assert!(d.score_after > d.score_before + 2.0, "{d:?}");

    let d = diff::diff(&lint_fixture("clean"), &lint_fixture("proxy_learn"));
    let dirs: Vec<(&str, Direction)> = d.changes.iter().map(|c| (c.key.as_str(), c.direction)).collect();
    assert_eq!(dirs, vec![("network.egress", Direction::Loosened), ("network.mode", Direction::Loosened)]);
    assert!(d.score_after >= d.score_before + 2.5, "{d:?}");
    // A list of names, then "learn": wider; and back.
    let d = diff::diff(&lint_fixture("proxy_empty"), &lint_fixture("proxy_learn"));
    let dirs: Vec<(&str, Direction)> = d.changes.iter().map(|c| (c.key.as_str(), c.direction)).collect();
    assert_eq!(dirs, vec![("network.egress", Direction::Loosened)]);
    let d = diff::diff(&lint_fixture("proxy_learn"), &lint_fixture("proxy_empty"));
    assert_eq!((d.changes[0].key.as_str(), d.changes[0].direction), ("network.egress", Direction::Tightened));
    let d = diff::diff(&lint_fixture("clean"), &lint_fixture("seccomp_none"));
    assert_eq!((d.changes[0].key.as_str(), d.changes[0].direction), ("seccomp.preset", Direction::Loosened));
}

#[test]
fn diff_cli_text_and_json() {
    let dir = "tests/fixtures/policies/lint";
    let (code, stdout, _) = cli(&["policy", "diff", "clean", "write_root", "--dir", dir]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("policy diff tests/fixtures/policies/lint/clean.toml → "), "{stdout}");
    assert_eq!(lines[1], "  loosened   filesystem.write  +\"/\"");
    assert_eq!(lines[2], "  tightened  filesystem.write  -\"{tmp}\" -\"/dev/null\"");
    assert_eq!(lines[3], "  exposure 0.8 → 3.3 (+2.5)");
    let (code, stdout, _) = cli(&["--json", "policy", "diff", "clean", "write_root", "--dir", dir]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(v["changes"][0]["direction"], "loosened");
    assert_eq!(v["changes"][0]["added"][0], "\"/\"");
    assert_eq!((v["score_before"].as_f64(), v["score_after"].as_f64()), (Some(0.8), Some(3.3)));
}

/// The daemon holds every policy to the admin floor: a SIGHUP reload with a floor-breaking
/// policy is rejected (both lines logged) and the old set kept; the fixed set then reloads.
#[test]
fn reload_with_a_floor_breaking_policy_keeps_the_old_set() {
    if !common::privileged("reload_with_a_floor_breaking_policy_keeps_the_old_set") {
        return;
    }
    let floor_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let floor = floor_dir.path().join("floor.toml");
    std::fs::write(&floor, "# test floor\n[limits]\nmemory_max = \"1G\"\n").unwrap_or_else(|e| panic!("{e}"));
    let d = harness::Daemon::builder()
        .provider("cat", "[\"/bin/cat\"]", "session", "")
        .config(&format!("floor = \"{}\"", floor.display()))
        .start();
    let big = d.policy_dir().join("big.toml");
    let text =
        "extends = \"base\"\n[provider]\nname = \"big\"\ncommand = [\"/bin/cat\"]\n[limits]\nmemory_max = \"8G\"\n";
    std::fs::write(&big, text).unwrap_or_else(|e| panic!("{e}"));
    let hup = || {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.pid() as i32), nix::sys::signal::Signal::SIGHUP)
            .unwrap_or_else(|e| panic!("SIGHUP: {e}"))
    };
    hup();
    d.wait_log(&["SIGHUP", "reload rejected"], Duration::from_secs(5));
    let want = format!(
        "{}:6:14: limits.memory_max: \"8G\" is above the admin floor: at most \"1G\" (floor {}:3:14)",
        big.display(),
        floor.display()
    );
    assert!(d.log().contains(&want), "the log does not name both lines ({want}):\n{}", d.log());
    // The old set: cat still serves, big was never loaded.
    let id = harness::id_of(&d.spawn("cat"));
    assert_eq!(d.send(&id, "old set", 10_000).json()["stdout"], "old set");
    let body = serde_json::json!({"provider": "big", "cwd": d.cwd()});
    let r = common::http::call(&d.socket, "POST", "/v1/cells", Some(&body));
    assert_eq!(r.json()["code"], "unknown_provider", "{}", r.text());
    // Within the floor, the same file reloads.
    std::fs::write(&big, text.replace("8G", "1G")).unwrap_or_else(|e| panic!("{e}"));
    hup();
    d.wait_log(&["SIGHUP: policies reloaded"], Duration::from_secs(5));
    let r = common::http::call(&d.socket, "POST", "/v1/cells", Some(&body));
    assert_eq!(r.status, 201, "{}", r.text());
}

/// Values a reviewer found accepted that must not be (a policy review of this stop): (uid_t) -1
/// as the account (setresuid(2) reads it as "no change": the program would stay host root), a
/// uid range that wraps past the top of the uid space or holds the overflow ids, and durations
/// whose deadline (`now + d`) would overflow the daemon's clock.
#[test]
fn values_that_would_break_the_sandbox_or_the_daemon_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("uid_minus_one", "[identity]\nrun_as = 4294967295\n", "identity.run_as", "(uid_t) -1"),
        (
            "range_wraps",
            "[identity]\nrun_as = \"range\"\nuid_range = [2, 9223372036854775807]\n",
            "identity.uid_range",
            "count",
        ),
        (
            "range_overflow_ids",
            "[identity]\nrun_as = \"range\"\nuid_range = [60000, 10000]\n",
            "identity.uid_range",
            "65534",
        ),
        (
            "huge_wall_time",
            "[limits]\nwall_time = \"18446744073709551615s\"\n",
            "limits.wall_time",
            "longer than a year",
        ),
        ("huge_idle", "[limits]\nidle_timeout = \"5124095576030431h\"\n", "limits.idle_timeout", "longer than a year"),
    ];
    for (name, body, key, why) in cases {
        let path = dir.path().join(format!("{name}.toml"));
        let text = format!("[provider]\nname = \"{name}\"\ncommand = [\"/bin/true\"]\nmode = \"oneshot\"\n{body}");
        std::fs::write(&path, text).expect("write");
        let got = rendered(&[path]);
        assert!(
            got.iter().any(|d| d.contains(key) && d.contains(why)),
            "{name}: expected a diagnostic on {key} saying {why:?}, got {got:?}"
        );
    }
}

/// The admin floor cannot be switched off by its own typos or a NaN, nor escaped by preset
/// "none"; an `extends` chain and a policy file have a size limit (a policy review of this
/// stop: a 151-file chain of 20 KB files took 6 minutes to check).
#[test]
fn the_floor_and_the_loader_hold_against_odd_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let floor_at = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write floor");
        Floor::load(&path)
    };
    let typo = floor_at("typo.toml", "[seccomp]\nnever_allow = [\"ptrac\"]\n").expect_err("a misspelt syscall");
    assert!(typo.to_string().contains("\"ptrac\" is not a syscall name"), "{typo}");
    let nan = floor_at("nan.toml", "[limits]\ncpu = nan\n").expect_err("a NaN cpu floor");
    assert!(nan.to_string().contains("greater than 0"), "{nan}");
    let floor = floor_at("floor.toml", "[seccomp]\nnever_allow = [\"ptrace\"]\n").expect("floor");
    let pol = dir.path().join("pols");
    std::fs::create_dir(&pol).expect("dir");
    let head = |name: &str| format!("[provider]\nname = \"{name}\"\ncommand = [\"/bin/true\"]\nmode = \"oneshot\"\n");
    std::fs::write(pol.join("open.toml"), head("open") + "[seccomp]\npreset = \"none\"\n").expect("write");
    let got: Vec<String> =
        check_paths(&[pol.join("open.toml")], Some(&floor)).errors().map(ToString::to_string).collect();
    assert!(got.iter().any(|d| d.contains("seccomp.preset") && d.contains("ptrace")), "{got:?}");
    // A chain of 20 files: refused at the 16th, quickly.
    for i in 0..20 {
        let parent = if i < 19 { format!("extends = \"c{}\"\n", i + 1) } else { String::new() };
        let body = if i == 0 { head("c0") } else { String::new() };
        std::fs::write(pol.join(format!("c{i}.toml")), parent + &body).expect("write");
    }
    let got = rendered(&[pol.join("c0.toml")]);
    assert!(got.iter().any(|d| d.contains("extends chain longer than 16 files")), "{got:?}");
    std::fs::write(pol.join("big.toml"), head("big") + &"# padding\n".repeat(30_000)).expect("write");
    let err = policy::load_file(&pol.join("big.toml")).expect_err("a 300 KB policy");
    assert!(err.to_string().contains("more than a policy may hold"), "{err}");
}

/// From the fifth policy review: a write rule through a symlink under a workdir root passed
/// the floor's `write_outside_workdir = false` (the rule's text is under the root) while the
/// cell's bind followed the link into a home; and lint judged the text, not the target. A
/// rule is judged where it leads.
#[test]
fn a_symlink_cannot_carry_a_grant_past_the_floor_or_lint() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = dir.path();
    for sub in ["srv/real", "home/alice"] {
        std::fs::create_dir_all(d.join(sub)).unwrap_or_else(|e| panic!("{e}"));
    }
    std::os::unix::fs::symlink(d.join("home/alice"), d.join("srv/homelink")).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink("/etc", d.join("srv/etclink")).unwrap_or_else(|e| panic!("{e}"));
    let floor_path = d.join("floor.toml");
    std::fs::write(&floor_path, "[filesystem]\nwrite_outside_workdir = false\n").unwrap_or_else(|e| panic!("{e}"));
    let floor = Floor::load(&floor_path).unwrap_or_else(|e| panic!("{e}"));
    let policy_path = d.join("p.toml");
    let text = format!(
        "[provider]\nname = \"p\"\ncommand = [\"/bin/true\"]\n[workdir]\nroots = [\"{srv}\"]\n[filesystem]\n\
         write = [\"{{cwd}}\", \"{srv}/real\", \"{srv}/homelink\", \"{srv}/etclink\"]\n",
        srv = d.join("srv").display()
    );
    std::fs::write(&policy_path, text).unwrap_or_else(|e| panic!("{e}"));
    let checked = policy::load_checked(&policy_path).unwrap_or_else(|e| panic!("{e}"));
    let refused: Vec<String> = floor.check(&checked).iter().map(|d| d.message.clone()).collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused[0].contains("homelink") && refused[1].contains("etclink"), "{refused:?}");
    // Lint names the target of the link into /etc.
    let found = findings(&policy_path, None);
    assert!(
        found.iter().any(|f| f.contains("etclink\" (a symlink to /etc) lets the cell write to host configuration")),
        "{found:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// A policy author's review: narrowing through `extends`, mode-bound keys, the cpu limit, and
// `command = []` made visible.

/// A directory holding copies of the shipped policies (so a test child can extend them)
/// and the extra files given.
fn with_shipped(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for entry in std::fs::read_dir(root().join("policies")).unwrap_or_else(|e| panic!("{e}")) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.extension().is_some_and(|x| x == "toml") {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap_or_default()))
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    for (name, text) in extra {
        std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("{e}"));
    }
    dir
}

/// Finding A: `[access]` is one rule (who may use the provider). A child that writes an
/// `[access]` table replaces the parent's whole: `uids` alone leaves no inherited group.
#[test]
fn a_child_access_table_replaces_the_parents() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let write = |name: &str, text: &str| write_file(dir.path(), name, text);
    let parent = write(
        "parent.toml",
        "[provider]\nname = \"parent\"\ncommand = [\"/bin/true\"]\n[access]\nuids = [0]\ngroups = [4242]\n",
    );
    let narrow = write("narrow.toml", "extends = \"parent\"\n[provider]\nname = \"narrow\"\n[access]\nuids = [1000]\n");
    let kept = write("kept.toml", "extends = \"parent\"\n[provider]\nname = \"kept\"\n");
    let [parent, narrow, kept] =
        [parent, narrow, kept].map(|p| policy::load_file(&p).unwrap_or_else(|e| panic!("{e}")));
    assert_eq!((narrow.access.uids.as_slice(), narrow.access.gids.as_slice()), (&[1000][..], &[][..]));
    assert_eq!((kept.access.uids.as_slice(), kept.access.gids.as_slice()), (&[0][..], &[4242][..]));
    assert!(policy::show(&narrow).contains("[access]\nuids = [1000]\ngroups = []\n"), "{}", policy::show(&narrow));
    // The review sees the group go.
    let d = diff::diff(&parent, &narrow);
    let groups = d.changes.iter().find(|c| c.key == "access.groups").unwrap_or_else(|| panic!("{:#?}", d.changes));
    assert_eq!((groups.direction, groups.removed.clone()), (Direction::Tightened, vec!["4242".to_owned()]));
}

/// Finding B: a child may make its parent stricter by switching a mode; the parent's keys that
/// only that mode used are then left behind, not reported against the parent's file. A key the
/// child sets itself against its own mode is still an error, in the child's file.
#[test]
fn a_child_may_leave_the_mode_its_parent_chose() {
    let dir = with_shipped(&[
        ("offline.toml", "extends = \"claude\"\n[provider]\nname = \"offline\"\n[network]\nmode = \"none\"\n"),
        (
            "contradiction.toml",
            "extends = \"claude\"\n[provider]\nname = \"contradiction\"\n[network]\nmode = \"none\"\negress = [\"api.example.com\"]\n",
        ),
        (
            "framed.toml",
            "extends = \"claude-session\"\n[provider]\nname = \"framed\"\n[session]\nframing = \"sentinel\"\nsentinel = \"END\"\n",
        ),
        (
            "ranged.toml",
            "extends = \"base\"\n[provider]\nname = \"ranged\"\nabstract = true\n[identity]\nrun_as = \"range\"\nuid_range = [1800000000, 65536]\n",
        ),
        ("unranged.toml", "extends = \"ranged\"\n[provider]\nname = \"unranged\"\ncommand = []\n[identity]\nrun_as = \"caller\"\n"),
        ("anycodex.toml", "extends = \"codex\"\n[provider]\nname = \"anycodex\"\ncommand = []\n"),
        ("anyclaude.toml", "extends = \"claude\"\n[provider]\nname = \"anyclaude\"\ncommand = []\n"),
    ]);
    let load = |name: &str| policy::load_file(&dir.path().join(format!("{name}.toml")));
    let offline = load("offline").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(offline.network, cellkeep::policy::Network::None);
    let framed = load("framed").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(framed.session, SessionPolicy::Sentinel { line: "END".into() });
    let unranged = load("unranged").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(unranged.identity.run_as, RunAs::Caller);
    let anycodex = load("anycodex").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((anycodex.command.len(), anycodex.command_after.clone()), (0, None));
    let anyclaude = load("anyclaude").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(anyclaude.command_via, cellkeep::policy::CommandVia::Argv);
    // The child's own contradiction: reported at its own line.
    let got = rendered(&[dir.path().join("contradiction.toml")]);
    let want = format!(
        "{}:6:10: network.egress: only used with network.mode = \"proxy\"",
        dir.path().join("contradiction.toml").display()
    );
    assert_eq!(got, vec![want]);
}

/// (second review) Merged from the child up, a key a middle file dropped by changing its mode
/// came back from a grandparent: claude (proxy, its egress list) → offline (`mode = "none"`)
/// → reproxied (`mode = "proxy"` again) had claude's egress list, which offline, its own
/// parent, does not have. Each file is merged over what its parent resolved to.
#[test]
fn a_key_a_middle_policy_dropped_stays_dropped() {
    let dir = with_shipped(&[
        ("offline.toml", "extends = \"claude\"\n[provider]\nname = \"offline\"\n[network]\nmode = \"none\"\n"),
        ("reproxied.toml", "extends = \"offline\"\n[provider]\nname = \"reproxied\"\n[network]\nmode = \"proxy\"\n"),
    ]);
    let shown = policy::load_file(&dir.path().join("reproxied.toml"))
        .map(|p| format!("{:?}", p.network))
        .unwrap_or_else(|e| e.to_string());
    assert!(!shown.contains("anthropic"), "reproxied inherited claude's egress past offline: {shown}");
}

/// Finding C: `limits.cpu` is a count of CPUs with the kernel's quota as its ceiling (beyond it
/// every launch failed), and more CPUs than the host has is a warning (100 meant as a percent).
#[test]
fn the_cpu_limit_has_a_ceiling_and_is_not_a_percent() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let write = |name: &str, cpu: &str| {
        let p = dir.path().join(format!("{name}.toml"));
        let text = format!(
            "[provider]\nname = \"{name}\"\ncommand = [\"/bin/true\"]\n[filesystem]\nexec = [\"/bin\", \"/usr/bin\"]\n[limits]\ncpu = {cpu}\n"
        );
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("{e}"));
        p
    };
    let huge = write("huge", "50000");
    let max = cellkeep::cgroup::MAX_CPU_QUOTA_US / cellkeep::cgroup::CPU_PERIOD_US;
    assert_eq!(
        rendered(std::slice::from_ref(&huge)),
        vec![format!(
            "{}:7:7: limits.cpu: 50000 is more than the kernel's CPU quota can hold (at most {max} CPUs); \
             limits.cpu is a number of CPUs (2 = two CPUs), not a percent",
            huge.display()
        )]
    );
    let host = std::thread::available_parallelism().map_or(1, |n| n.get());
    let percent = write("percent", &(host + 1).to_string());
    assert_eq!(
        findings(&percent, None),
        vec![format!(
            "{}:7:7: warning: limits.cpu: {n} is more CPUs than this host has ({host}): limits.cpu is a number of \
             CPUs (0.5 = half a CPU, 2 = two CPUs), not a percent",
            percent.display(),
            n = host + 1
        )]
    );
    let fine = write("fine", &host.to_string());
    assert_eq!(findings(&fine, None), Vec::<String>::new());
}

/// Finding D: `command = []` lets the caller run any program: a note from lint (the shipped
/// generic sandbox means it), weight in the score, and a loosening in the diff.
#[test]
fn an_empty_command_is_visible_to_review() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let write = |name: &str, command: &str| {
        let p = dir.path().join(format!("{name}.toml"));
        let text = format!(
            "[provider]\nname = \"{name}\"\ncommand = {command}\n[filesystem]\nexec = [\"/bin\", \"/usr/bin\"]\n"
        );
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("{e}"));
        p
    };
    let (fixed, any) = (write("fixed", "[\"/bin/true\", \"check\"]"), write("any", "[]"));
    assert_eq!(findings(&fixed, None), Vec::<String>::new());
    assert_eq!(
        findings(&any, None),
        vec![format!(
            "{}:3:11: note: provider.command: [] lets the caller run any program under the filesystem.exec \
             paths, with any arguments (the whole argv is the caller's); give the binary and its fixed arguments \
             to confine callers to one program",
            any.display()
        )]
    );
    let (fixed, any) = (policy::load_file(&fixed).unwrap(), policy::load_file(&any).unwrap());
    let d = diff::diff(&fixed, &any);
    let dirs: Vec<(&str, Direction)> = d.changes.iter().map(|c| (c.key.as_str(), c.direction)).collect();
    assert_eq!(dirs, vec![("provider.command", Direction::Loosened)]);
    let back = diff::diff(&any, &fixed);
    assert_eq!(back.changes[0].direction, Direction::Tightened);
    let f = score::score(&any).findings.into_iter().find(|f| f.key == "provider.command");
    assert_eq!(f.map(|f| f.weight), Some(1.0));
    assert!(d.score_after >= d.score_before + 1.0, "{d:?}");
    // The shipped generic sandbox says so without failing --strict.
    let report = check_paths(&[root().join("policies/sandbox.toml")], None);
    assert!(report.passed(true));
    assert!(report.findings.iter().any(|f| f.diag.key == "provider.command"), "{:?}", report.findings);
}

/// Write `text` to `dir/name`; its path.
fn write_file(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("{e}"));
    p
}
