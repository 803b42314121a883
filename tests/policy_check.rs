//! `policy check` against broken fixtures (exact `file:line:col: key: message` lines), the
//! shipped `policies/` (no diagnostics), `extends` behaviour and `policy show` round-trips.

use std::path::{Path, PathBuf};
use std::process::Command;

use cellkeep::policy::{self, Mode, PolicyError, RunAs, SessionPolicy};

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
        ("many.toml", vec![
            own("3:8: provider.name: \"not_many\" must equal the file name \"many\""),
            own("4:12: provider.command: \"bin/true\" must be an absolute path"),
            own("5:8: provider.mode: \"daemon\" is not one of \"oneshot\", \"session\""),
            own("8:7: limits.cpu: 0 must be a number of CPUs greater than 0 (e.g. 0.5)"),
            own("10:15: limits.memory_high: must not be greater than limits.memory_max"),
            own("11:8: limits.pids: -1 must be at least 1"),
            own("15:7: namespaces.net: false is only allowed with network.mode = \"tcp\"; mode \"none\" needs a network namespace"),
            own("18:10: filesystem.write: {tmp} needs a mount namespace, but namespaces.mount = false"),
            own("21:10: identity.run_as: 0 is host root (uid 0); a sandbox never runs as host root"),
            own("22:14: identity.uid_range: start 0 must be between 1 and 4294967295 (the range must not contain uid 0)"),
            own("25:11: access.groups: unknown group \"no_such_group_xyz\" (not in /etc/group)"),
        ]),
        ("missing_parent.toml", vec![format!(
            "1:11: extends: parent policy \"no_such_base\" cannot be read ({}): No such file or directory (os error 2)",
            fixtures().join("broken/no_such_base.toml").display()
        )]),
        ("relative_path.toml", vec![own(
            "6:17: filesystem.read: \"etc\" is a relative path; paths must be absolute or start with {cwd} or {tmp}",
        )]),
        ("root_run_as.toml", vec![own(
            "6:10: identity.run_as: \"root\" is host root (uid 0); a sandbox never runs as host root",
        )]),
        ("unknown_key.toml", vec![own(
            "6:1: limits.memroy_max: unknown field `memroy_max`, expected one of `memory_max`, `memory_high`, `memory_swap`, `cpu`, `pids`, `open_files`, `wall_time`, `idle_timeout`, `output_bytes`, `tmp_size`",
        )]),
        ("unknown_syscall.toml", vec![own("6:18: seccomp.deny: unknown syscall \"opnat\" (not an x86_64 syscall name)")]),
        ("wrong_type.toml", vec![own(
            "3:11: provider.command: invalid type: string \"/bin/true\", expected a sequence",
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
    assert_eq!(echo.identity.root_maps_to.uid, 65534);
    assert_eq!(echo.env.set.get("HOME").map(String::as_str), Some("{tmp}"));
    // Roots every stock host has (issue 15, finding 1: /work was not, and the daemon died).
    for root in &echo.workdir.roots {
        assert!(["/home", "/srv", "/tmp", "/var/tmp"].contains(&root.to_str().unwrap_or("")), "{}", root.display());
    }
    // The cellkeep group may use the shipped providers (finding 4: root only).
    let cellkeep = nix::unistd::Group::from_name("cellkeep").ok().flatten().map(|g| g.gid.as_raw());
    assert!(cellkeep.is_some_and(|g| echo.access.gids.contains(&g)), "{:?}", echo.access);
    assert_eq!(echo.seccomp.compiled.filters.len(), 3);
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

    let out = Command::new(exe)
        .args(["policy", "show", "echo", "--dir"])
        .arg(root().join("policies"))
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("name = \"echo\""));
}
