//! A policy directory loaded as a *set* that degrades: every `*.toml` that loads is served, and
//! every one that cannot (a syntax error, a bad key, a workdir root or group missing on this
//! host, a broken parent it `extends`) is left out and reported as a [`Rejected`] entry naming
//! its file and each problem. One bad file never takes the other providers down; only a
//! broken daemon config stops start-up (see `crate::config`).
//!
//! Used by the daemon at start and at reload (`crate::pool`), and by `cellkeep doctor`. A
//! policy directory that cannot be read at all is one rejection (name `*`) with no policies.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{load_file_within, toml_files, Policy};

/// A policy file left out of the set, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// The file stem (`*` when the directory itself could not be read).
    pub name: String,
    pub file: PathBuf,
    /// Each problem as `file:line:col: key: message`.
    pub problems: Vec<String>,
}

/// The result of loading a policy directory.
#[derive(Debug, Default)]
pub struct PolicySet {
    /// Every policy that loaded (abstract ones included: they are `extends` targets), by name.
    pub policies: BTreeMap<String, Policy>,
    /// Every file that did not, in file order.
    pub rejected: Vec<Rejected>,
}

impl PolicySet {
    /// The names of the launchable policies (the providers this set serves).
    pub fn providers(&self) -> Vec<&str> {
        self.policies.values().filter(|p| p.is_launchable()).map(|p| p.name.as_str()).collect()
    }

    /// One line per rejected file: `NAME (FILE): FIRST PROBLEM [+ N more]`.
    pub fn rejected_summary(&self) -> Vec<String> {
        summary(&self.rejected)
    }
}

/// One line per rejected file: `NAME (FILE): FIRST PROBLEM [+ N more]`.
pub fn summary(rejected: &[Rejected]) -> Vec<String> {
    rejected
        .iter()
        .map(|r| {
            let first = r.problems.first().map_or("", String::as_str);
            let more = r.problems.len().saturating_sub(1);
            let more = if more > 0 { format!(" (+{more} more)") } else { String::new() };
            format!("{} ({}): {first}{more}", r.name, r.file.display())
        })
        .collect()
}

/// Load every `*.toml` in `dir` under the admin floor read from `floor_file` (no file there =
/// no floor): what loads and respects the floor goes in, what does not is rejected with
/// reasons. A floor that cannot be read or is invalid rejects everything (name `*`): a broken
/// floor never lets the policies through unchecked.
pub fn load_set(dir: &Path, floor_file: &Path) -> PolicySet {
    let mut set = PolicySet::default();
    let floor = match super::floor::Floor::load_optional(floor_file) {
        Ok(f) => f,
        Err(e) => {
            let problems = vec![e.diagnostic().to_string()];
            set.rejected.push(Rejected { name: "*".to_owned(), file: floor_file.to_path_buf(), problems });
            return set;
        }
    };
    let files = match toml_files(dir) {
        Ok(f) => f,
        Err(d) => {
            set.rejected.push(Rejected {
                name: "*".to_owned(),
                file: dir.to_path_buf(),
                problems: vec![d.to_string()],
            });
            return set;
        }
    };
    for file in files {
        let name = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        match load_file_within(&file, floor.as_ref()) {
            Ok(p) => {
                set.policies.insert(p.name.clone(), p);
            }
            Err(e) => {
                let problems = super::error_diagnostics(&file, e).iter().map(ToString::to_string).collect();
                set.rejected.push(Rejected { name, file, problems });
            }
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Issue 15, finding 1: one policy naming a workdir root this host lacks, and one broken
    /// file, leave the others loaded (on the original code the whole set was refused and the
    /// daemon exited).
    #[test]
    fn a_bad_policy_is_rejected_and_the_others_load() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ok = "[provider]\nname = \"ok\"\ncommand = [\"/bin/true\"]\n[workdir]\nroots = [\"/tmp\"]\n";
        write(dir.path(), "ok.toml", ok);
        let missing =
            "[provider]\nname = \"gone\"\ncommand = [\"/bin/true\"]\n[workdir]\nroots = [\"/no/such/root\"]\n";
        write(dir.path(), "gone.toml", missing);
        write(dir.path(), "broken.toml", "[provider\n");
        let set = load_set(dir.path(), Path::new("/no/floor"));
        assert_eq!(set.providers(), vec!["ok"]);
        let names: Vec<&str> = set.rejected.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["broken", "gone"]);
        assert!(
            set.rejected[1].problems[0].contains("workdir.roots: \"/no/such/root\" cannot be resolved"),
            "{:?}",
            set.rejected
        );
        let lines = set.rejected_summary();
        assert!(lines[0].starts_with("broken ("), "{lines:?}");
    }

    #[test]
    fn an_unreadable_directory_is_one_rejection() {
        let set = load_set(Path::new("/no/such/policy/dir"), Path::new("/no/floor"));
        assert!(set.policies.is_empty());
        assert_eq!(set.rejected.len(), 1);
        assert_eq!(set.rejected[0].name, "*");
    }
}
