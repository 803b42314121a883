//! `policy check`: every policy file under the given paths → errors, warnings ([`super::lint`])
//! and floor violations ([`super::floor`]) as [`Finding`]s, and their rendering (one line each,
//! a summary line, or JSON).
//!
//! Errors make a policy unusable (the daemon leaves it out); warnings are loaded but worth a
//! reviewer's look, and `--strict` fails on them; notes are information only (a path that an
//! install step creates, a path kept for another distribution) and never fail a check.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::floor::Floor;
use super::{error_diagnostics, lint, load_checked, toml_files, Diagnostic};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
    Note,
}

/// One diagnostic with its severity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    #[serde(flatten)]
    pub diag: Diagnostic,
}

impl Finding {
    pub fn error(diag: Diagnostic) -> Finding {
        Finding { severity: Severity::Error, diag }
    }
    pub fn warning(diag: Diagnostic) -> Finding {
        Finding { severity: Severity::Warning, diag }
    }
    pub fn note(diag: Diagnostic) -> Finding {
        Finding { severity: Severity::Note, diag }
    }
}

/// Errors print exactly as a [`Diagnostic`]; warnings and notes say so after the position:
/// `file:line:col: warning: key: message`.
impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.diag;
        let label = match self.severity {
            Severity::Error => return write!(f, "{d}"),
            Severity::Warning => "warning",
            Severity::Note => "note",
        };
        write!(f, "{}:{}:{}: {label}: ", d.file.display(), d.line, d.col)?;
        if !d.key.is_empty() {
            write!(f, "{}: ", d.key)?;
        }
        f.write_str(&d.message)
    }
}

/// What `policy check` found.
#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    /// Policy files looked at.
    pub files: usize,
    /// Files without errors.
    pub valid: usize,
    pub findings: Vec<Finding>,
}

impl CheckReport {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.of(Severity::Error)
    }
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.of(Severity::Warning)
    }
    fn of(&self, severity: Severity) -> impl Iterator<Item = &Diagnostic> {
        self.findings.iter().filter(move |f| f.severity == severity).map(|f| &f.diag)
    }
    fn count(&self, severity: Severity) -> usize {
        self.of(severity).count()
    }

    /// Whether the check passes (with `strict`, warnings fail it too).
    pub fn passed(&self, strict: bool) -> bool {
        self.count(Severity::Error) == 0 && !(strict && self.count(Severity::Warning) > 0)
    }

    /// `11 policies OK, 2 warnings` or `1 of 11 policies invalid: 3 errors, 0 warnings`.
    pub fn summary(&self, strict: bool) -> String {
        let (errors, warnings) = (self.count(Severity::Error), self.count(Severity::Warning));
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        let policies = if self.files == 1 { "1 policy".to_owned() } else { format!("{} policies", self.files) };
        let notes = match self.count(Severity::Note) {
            0 => String::new(),
            n => format!(", {}", plural(n, "note")),
        };
        let invalid = self.files - self.valid;
        let mut line = if invalid == 0 {
            format!("{policies} OK, {}{notes}", plural(warnings, "warning"))
        } else {
            format!(
                "{invalid} of {policies} invalid: {}, {}{notes}",
                plural(errors, "error"),
                plural(warnings, "warning")
            )
        };
        if strict && warnings > 0 && errors == 0 {
            line.push_str(" (--strict: warnings fail the check)");
        }
        line
    }
}

/// Check every file (directories: every `*.toml` in them) against the format, the
/// warnings and, when given, the admin floor.
pub fn check_paths(paths: &[PathBuf], floor: Option<&Floor>) -> CheckReport {
    let mut report = CheckReport::default();
    for path in paths {
        if path.is_dir() {
            match toml_files(path) {
                Ok(files) => files.iter().for_each(|f| check_file(f, floor, &mut report)),
                Err(d) => report.findings.push(Finding::error(d)),
            }
        } else {
            check_file(path, floor, &mut report);
        }
    }
    // A parent's problem shows up once per file extending it: keep the first.
    let mut seen = std::collections::HashSet::new();
    report.findings.retain(|f| seen.insert(f.clone().diag));
    report
}

fn check_file(path: &Path, floor: Option<&Floor>, report: &mut CheckReport) {
    report.files += 1;
    match load_checked(path) {
        Ok(checked) => {
            let mut found = lint::lint(&checked);
            let broken = floor.map(|f| f.check(&checked)).unwrap_or_default();
            if broken.is_empty() {
                report.valid += 1;
            }
            found.extend(broken.into_iter().map(Finding::error));
            // In file order, an error before a warning at the same place.
            found.sort_by(|a, b| {
                let at = |f: &Finding| (f.diag.file.clone(), f.diag.line, f.diag.col, f.severity);
                at(a).cmp(&at(b))
            });
            report.findings.extend(found);
        }
        Err(e) => report.findings.extend(error_diagnostics(path, e).into_iter().map(Finding::error)),
    }
}

/// The report as JSON: `{"ok", "files", "valid", "errors", "warnings", "notes", "findings"}`.
pub fn to_json(report: &CheckReport, strict: bool) -> serde_json::Value {
    serde_json::json!({
        "ok": report.passed(strict),
        "strict": strict,
        "files": report.files,
        "valid": report.valid,
        "errors": report.count(Severity::Error),
        "warnings": report.count(Severity::Warning),
        "notes": report.count(Severity::Note),
        "findings": report.findings,
        "summary": report.summary(strict),
    })
}
