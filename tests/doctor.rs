//! `cellkeep doctor` against the real host: the report's shape, the layout it names, and the
//! verdict on the shipped policies. On a kernel with Landlock ABI ≥ 6 (this host: hybrid
//! cgroups, ABI 7; the v2 VM's 6.12 kernel) every shipped policy must be enforceable in full.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: failing loudly is the point

mod common;

use std::process::Command;

use common::{privileged, BIN};
use serde_json::Value;

fn doctor(args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(BIN)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("doctor")
        .args(args)
        .output()
        .expect("run cellkeep doctor");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    let text = format!("{stdout}\n--- stderr\n{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), json, text)
}

#[test]
fn doctor_reports_the_host_and_every_shipped_policy() {
    if !privileged("doctor_reports_the_host_and_every_shipped_policy") {
        return;
    }
    let (code, r, text) = doctor(&["--json", "--policies", "policies"]);
    assert!(r.is_object(), "not JSON: {text}");

    // Host: the layout detect_layout() sees, controllers, landlock, seccomp, namespaces.
    let host = &r["host"];
    let layout = cellkeep::cgroup::detect_layout().expect("layout");
    let want = serde_json::to_value(layout).expect("layout json");
    assert_eq!(host["cgroup"]["layout"], want, "{text}");
    let backend = if layout == cellkeep::cgroup::Layout::Unified { "v2" } else { "v1" };
    assert_eq!(host["cgroup"]["backend"], backend, "{text}");
    if let Ok(expect) = std::env::var("CELLKEEP_EXPECT_CGROUP") {
        assert_eq!(host["cgroup"]["backend"], expect.as_str());
    }
    let controllers = host["cgroup"]["controllers"].as_array().expect("controllers");
    for name in ["memory", "cpu", "pids"] {
        let c = controllers.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no {name}: {text}"));
        assert_eq!(c["available"], true, "{name}: {text}");
    }
    assert_eq!(host["cgroup"]["root"]["available"], true, "{text}");
    let abi = cellkeep::sandbox::HostCaps::probe().landlock_abi;
    assert_eq!(host["landlock_abi"], abi, "{text}");
    assert_eq!(host["seccomp"]["available"], true, "{text}");
    for ns in ["user", "pid", "mount", "net", "ipc", "uts", "cgroup"] {
        assert_eq!(host["namespaces"][ns]["available"], true, "{ns}: {text}");
    }

    // Policies: every launchable shipped policy is listed with a status, the abstract ones
    // (bases for `extends`) apart.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let (shipped, diags) = cellkeep::policy::load_dir(&dir);
    assert!(diags.is_empty(), "shipped policies do not load: {diags:?}");
    let (launchable, bases): (Vec<_>, Vec<_>) = shipped.values().partition(|p| p.is_launchable());
    let names = |v: Vec<&cellkeep::policy::Policy>| v.into_iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    let policies = r["policies"].as_array().expect("policies");
    let listed: Vec<String> = policies.iter().map(|p| p["name"].as_str().unwrap_or("").to_owned()).collect();
    assert_eq!(listed, names(launchable), "{text}");
    assert!(bases.iter().any(|p| p.name == "base"));
    assert_eq!(r["abstract_policies"], serde_json::json!(names(bases)), "{text}");
    assert_eq!(r["invalid"], serde_json::json!([]), "{text}");
    for p in policies {
        let status = p["status"].as_str().unwrap_or("");
        assert!(["full", "degraded", "fail"].contains(&status), "{p}");
        assert!(p["missing"].is_array() && p["degraded"].is_array() && p["notes"].is_array(), "{p}");
        assert_eq!(status == "fail", !p["missing"].as_array().is_some_and(|m| m.is_empty()), "{p}");
        if abi >= 6 {
            // In full, but for workdir roots on a filesystem that cannot be idmapped (the test
            // VM's are overlayfs on 9p): those are told as such, with the fallback taken.
            let other: Vec<_> = p["degraded"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| {
                    d["mechanism"] != "workspace_idmap"
                        || !d["detail"].as_str().unwrap_or("").contains("cannot be idmapped")
                })
                .collect();
            assert!(
                other.is_empty() && status != "fail",
                "on Landlock ABI {abi} every shipped policy is enforceable in full: {p}"
            );
        }
    }
    let all_launch = policies.iter().all(|p| p["status"] != "fail");
    assert_eq!(r["ok"], all_launch, "{text}");
    assert_eq!(code, if all_launch { 0 } else { 1 }, "exit status: {text}");
}

#[test]
fn doctor_human_output_names_the_layout_and_each_policy() {
    if !privileged("doctor_human_output_names_the_layout_and_each_policy") {
        return;
    }
    let (_, _, text) = doctor(&["--policies", "policies"]);
    let layout = serde_json::to_value(cellkeep::cgroup::detect_layout().expect("layout")).expect("json");
    assert!(text.contains(&format!("{} layout", layout.as_str().unwrap_or("?"))), "{text}");
    assert!(text.contains("landlock"), "{text}");
    assert!(text.contains("sandbox"), "{text}");
}

#[test]
fn doctor_fails_on_a_broken_policy_dir() {
    if !privileged("doctor_fails_on_a_broken_policy_dir") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("bad.toml"), "[provider]\nname = \"bad\"\nnonsense = 1\n").expect("write");
    let path = dir.path().display().to_string();
    let (code, r, text) = doctor(&["--json", "--policies", &path]);
    assert_eq!(code, 1, "{text}");
    assert_eq!(r["ok"], false, "{text}");
    assert!(r["invalid"].as_array().is_some_and(|i| !i.is_empty()), "{text}");
    let (code, _, text) = doctor(&["--json", "--policies", "/nonexistent/cellkeep-policies"]);
    assert_eq!(code, 1, "{text}");
}

/// A long policy name widens the name column instead of pushing its status out of line; a
/// command under the cell's private /tmp carries `check`'s warning and fails (issue 17).
#[test]
fn doctor_columns_fit_long_names_and_show_warnings() {
    if !privileged("doctor_columns_fit_long_names_and_show_warnings") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/base.toml");
    std::fs::copy(base, dir.path().join("base.toml")).expect("copy base");
    let long = "a-provider-with-a-really-quite-long-name";
    for (name, cmd) in [(long, "/bin/true"), ("echo", "/bin/echo"), ("tmpagent", "/tmp/agents/bin/agent")] {
        let text = format!("extends = \"base\"\n[provider]\nname = \"{name}\"\ncommand = [\"{cmd}\"]\n");
        std::fs::write(dir.path().join(format!("{name}.toml")), text).expect("write");
    }
    let path = dir.path().display().to_string();
    let (_, _, text) = doctor(&["--policies", &path]);
    let column = |name: &str| {
        let line =
            text.lines().find(|l| l.starts_with(&format!("  {name} "))).unwrap_or_else(|| panic!("{name}: {text}"));
        line.len() - line[2 + name.len()..].trim_start().len()
    };
    assert_eq!(column(long), column("echo"), "{text}");
    assert_eq!(column("echo"), column("tmpagent"), "{text}");
    assert!(
        text.contains("tmpagent.toml:4:12: warning: provider.command: \"/tmp/agents/bin/agent\" is under /tmp"),
        "{text}"
    );
    // And it cannot launch here: every cell hides the host's /tmp.
    let (code, r, text) = doctor(&["--json", "--policies", &path]);
    assert_eq!(code, 1, "{text}");
    let tmpagent = r["policies"].as_array().and_then(|p| p.iter().find(|p| p["name"] == "tmpagent")).cloned();
    let tmpagent = tmpagent.unwrap_or_else(|| panic!("{text}"));
    assert_eq!(tmpagent["status"], "fail", "{text}");
    assert_eq!(tmpagent["missing"][0]["mechanism"], "command", "{text}");
}

/// From the fifth isolation review: one caller's cells filled this host's open-file table
/// (fs.file-max 2.4 M: one agent cell may hold 512 processes × 4096 files), after which no
/// process of any user could open a file. Nothing in the kernel bounds a cgroup's open files
/// but its memory, so the doctor names the exposure where fs.file-max is below what the
/// pool's cells may hold (systemd as PID 1 raises it to its maximum at boot).
#[test]
fn doctor_names_a_file_table_cells_can_fill() {
    if !privileged("doctor_names_a_file_table_cells_can_fill") {
        return;
    }
    let file_max: u64 = std::fs::read_to_string("/proc/sys/fs/file-max").unwrap().trim().parse().unwrap();
    let (_, r, text) = doctor(&["--json", "--policies", "policies"]);
    let claude = r["policies"].as_array().unwrap().iter().find(|p| p["name"] == "claude").unwrap().clone();
    let named = claude["notes"].to_string().contains("fs.file-max");
    // The shipped agent policies: 512 × 4096 files per cell, 20 cells (the default cap).
    assert_eq!(named, file_max < 20 * 512 * 4096, "fs.file-max {file_max}: {text}");
}
