//! `cellkeep policy check | show | score | diff`: the reviewer's commands. They need no daemon
//! and read the same defaults it does (policy directory and admin floor from the daemon
//! config). Exit status: 0 on success, 1 for any failure (an invalid policy, a floor broken,
//! warnings under `--strict`, a name not found); `--json` prints machine-readable results.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::policy::check::{self, Finding, Severity};
use crate::policy::floor::Floor;
use crate::policy::{self, diff, lint, score, PolicyError};

use super::doctor::daemon_config;

/// The admin floor for `check`: `--floor FILE` (must exist), else the config's (if present).
fn floor(explicit: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<Option<Floor>> {
    match explicit {
        Some(path) => Ok(Some(Floor::load(&path)?)),
        None => Ok(Floor::load_optional(&daemon_config(config)?.floor)?),
    }
}

/// The policy directory: `--dir`, else the daemon's.
fn dir(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(match explicit {
        Some(d) => d,
        None => daemon_config(None)?.policy_dir,
    })
}

/// A NAME in `dir`, or a path to a file when NAME ends in `.toml` or contains `/`.
fn resolve(dir: &Path, name: &str) -> Result<PathBuf, PolicyError> {
    let path = if name.ends_with(".toml") || name.contains('/') {
        PathBuf::from(name)
    } else {
        dir.join(format!("{name}.toml"))
    };
    if path.is_file() {
        return Ok(path);
    }
    Err(PolicyError::NotFound { name: name.to_owned(), dir: dir.to_path_buf() })
}

/// `policy check [PATHS] [--strict] [--floor FILE] [--config FILE]`.
pub(super) fn check(
    paths: Vec<PathBuf>,
    strict: bool,
    floor_file: Option<PathBuf>,
    config: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<i32> {
    let paths = if paths.is_empty() { vec![dir(None)?] } else { paths };
    let floor = floor(floor_file, config)?;
    let report = check::check_paths(&paths, floor.as_ref());
    if json {
        println!("{}", serde_json::to_string_pretty(&check::to_json(&report, strict))?);
    } else {
        for f in &report.findings {
            println!("{f}");
        }
        let line = report.summary(strict);
        if report.passed(strict) {
            println!("{line}");
        } else {
            eprintln!("cellkeep: {line}");
        }
    }
    Ok(if report.passed(strict) { 0 } else { 1 })
}

/// `policy show NAME [--dir DIR]`: the effective policy as TOML, or with `--json` the policy
/// and its warnings.
pub(super) fn show(name: &str, dir_arg: Option<PathBuf>, json: bool) -> anyhow::Result<i32> {
    let path = resolve(&dir(dir_arg)?, name)?;
    let checked = policy::load_checked(&path)?;
    if json {
        let findings: Vec<Finding> = lint::lint(&checked);
        let view = checked.policy.namespaces.mount.then(|| cellkeep_view(&checked.policy));
        let out = serde_json::json!({ "policy": checked.policy, "findings": findings, "view": view });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", policy::show(&checked.policy));
        if checked.policy.namespaces.mount {
            println!("\n# The cell's mount view (nothing else of the host exists inside):");
            for line in cellkeep_view(&checked.policy) {
                println!("#   {line}");
            }
        }
        for f in lint::lint(&checked).iter().filter(|f| f.severity == Severity::Warning) {
            eprintln!("{f}");
        }
    }
    Ok(0)
}

/// `policy score [NAME…] [--dir DIR]`: every launchable policy of the directory by default.
pub(super) fn score(names: Vec<String>, dir_arg: Option<PathBuf>, json: bool) -> anyhow::Result<i32> {
    let dir = dir(dir_arg)?;
    let mut policies = Vec::new();
    if names.is_empty() {
        let (all, diags) = policy::load_dir(&dir);
        if let Some(d) = diags.first() {
            anyhow::bail!("{} problem(s) in {} (first: {d}); run `cellkeep policy check`", diags.len(), dir.display());
        }
        policies.extend(all.into_values().filter(|p| p.is_launchable()));
    } else {
        for name in &names {
            let path = resolve(&dir, name)?;
            policies.push(policy::load_file(&path).with_context(|| format!("policy {name}"))?);
        }
    }
    let scores: Vec<(score::Score, PathBuf)> = policies.iter().map(|p| (score::score(p), p.source.clone())).collect();
    if json {
        let out: Vec<serde_json::Value> = scores
            .iter()
            .map(|(s, src)| {
                let mut v = serde_json::to_value(s).unwrap_or_default();
                v["source"] = src.display().to_string().into();
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let texts: Vec<String> = scores.iter().map(|(s, src)| score::render(s, src)).collect();
        print!("{}", texts.join("\n"));
    }
    Ok(0)
}

/// `policy diff OLD NEW`: files, or names in `--dir`.
pub(super) fn diff(old: &str, new: &str, dir_arg: Option<PathBuf>, json: bool) -> anyhow::Result<i32> {
    let dir = dir(dir_arg)?;
    let (old_path, new_path) = (resolve(&dir, old)?, resolve(&dir, new)?);
    let a = policy::load_file(&old_path).with_context(|| format!("old policy {old}"))?;
    let b = policy::load_file(&new_path).with_context(|| format!("new policy {new}"))?;
    let d = diff::diff(&a, &b);
    if json {
        let mut v = serde_json::to_value(&d)?;
        v["old"] = old_path.display().to_string().into();
        v["new"] = new_path.display().to_string().into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", diff::render(&d, &old_path, &new_path));
    }
    Ok(0)
}

fn cellkeep_view(p: &policy::Policy) -> Vec<String> {
    crate::sandbox::view::describe_policy(p)
}
