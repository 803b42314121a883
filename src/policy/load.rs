//! Reading policy files: TOML parsing with error recovery, `extends` resolution and the merge.
//!
//! Positions: every file of an `extends` chain is parsed as if it sat at its own offset in
//! one shared address space (the text is preceded by as many newlines as the files before it
//! took), so a [`toml::Spanned`] value says by its offset alone which file set it. [`Sources`]
//! turns such an offset back into `file:line:col`. That keeps diagnostics for inherited keys
//! pointing into the file that set them, with no per-field bookkeeping in the merge.
//!
//! Error recovery: `deny_unknown_fields` stops serde at the first problem. To report every
//! problem of a file, the offending entry is located by its span, recorded, removed from the
//! parsed tree, and deserialisation is retried.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::raw::{Opt, RawFile, Scalar};
use super::{Diagnostic, PolicyError};

/// The texts of the files of one `extends` chain, placed end to end.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    files: Vec<SourceFile>,
}

#[derive(Debug, Clone)]
struct SourceFile {
    path: PathBuf,
    text: String,
    base: usize,
}

impl Sources {
    /// Register a file; returns its index and the padded text to parse.
    fn add(&mut self, path: &Path, text: String) -> (usize, String) {
        let base = self.files.last().map_or(0, |f| f.base + f.text.len() + 1);
        let padded = "\n".repeat(base) + &text;
        self.files.push(SourceFile { path: path.to_path_buf(), text, base });
        (self.files.len() - 1, padded)
    }

    /// The span of the string `item` as written inside the list spanning `list` (the TOML
    /// parser keeps spans of a list, not of its items): its first `"item"` or `'item'`, or
    /// the whole list where it is not found (an escaped spelling).
    pub fn item_span(&self, list: &Range<usize>, item: &str) -> Range<usize> {
        let Some(file) = self.files.iter().rev().find(|f| f.base <= list.start) else { return list.clone() };
        let (start, end) = (list.start - file.base, list.end.saturating_sub(file.base));
        let Some(text) = file.text.get(start..end.min(file.text.len())) else { return list.clone() };
        [format!("\"{item}\""), format!("'{item}'")]
            .iter()
            .find_map(|quoted| text.find(quoted.as_str()).map(|i| list.start + i..list.start + i + quoted.len()))
            .unwrap_or_else(|| list.clone())
    }

    /// The file, 1-based line and 1-based column (in characters) of a global offset.
    pub fn locate(&self, offset: usize) -> (PathBuf, usize, usize) {
        let Some(file) = self.files.iter().rev().find(|f| f.base <= offset) else {
            return (PathBuf::new(), 1, 1);
        };
        let (line, col) = line_col(&file.text, offset.saturating_sub(file.base));
        (file.path.clone(), line, col)
    }

    /// A diagnostic at the start of `span`.
    pub fn diag(&self, span: &Range<usize>, key: &str, message: impl Into<String>) -> Diagnostic {
        let (file, line, col) = self.locate(span.start);
        Diagnostic { file, line, col, key: key.to_owned(), message: message.into() }
    }

    /// A diagnostic at the very start of file `index` (for keys that are missing altogether).
    pub fn diag_at_file(&self, index: usize, key: &str, message: impl Into<String>) -> Diagnostic {
        let base = self.files.get(index).map_or(0, |f| f.base);
        self.diag(&(base..base), key, message)
    }
}

/// The 1-based line and 1-based column (in characters) of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, col)
}

/// One policy with its whole `extends` chain merged, plus every problem found on the way.
#[derive(Debug)]
pub struct Loaded {
    /// The merged raw policy (child keys over parent keys).
    pub raw: RawFile,
    pub sources: Sources,
    pub diagnostics: Vec<Diagnostic>,
    /// The file stem of the leaf file (must equal `provider.name`).
    pub stem: String,
    pub path: PathBuf,
}

/// Read `path` and every file it `extends`, and merge them.
///
/// Only an unreadable leaf file is an `Err`; everything else becomes a diagnostic.
/// The longest `extends` chain (files, the leaf included) and the largest policy file: far
/// beyond any real policy (the shipped ones: 2 files, ~10 KiB each), and small enough that
/// placing a chain's files end to end (see [`Sources`]) stays cheap.
pub const MAX_CHAIN: usize = 16;
pub const MAX_POLICY_BYTES: u64 = 256 << 10;

/// Read a policy file, refusing one larger than [`MAX_POLICY_BYTES`].
fn read_policy(path: &Path) -> std::io::Result<String> {
    let len = std::fs::metadata(path)?.len();
    if len > MAX_POLICY_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{len} bytes, more than a policy may hold ({} KiB)", MAX_POLICY_BYTES >> 10),
        ));
    }
    std::fs::read_to_string(path)
}

pub fn load_chain(path: &Path) -> Result<Loaded, PolicyError> {
    let text = read_policy(path).map_err(|source| PolicyError::Io { path: path.to_path_buf(), source })?;
    let mut sources = Sources::default();
    let mut diagnostics = Vec::new();
    let (raw, mut parent_ref) = parse_into(&mut sources, path, text, &mut diagnostics);
    // The files from the child up to the topmost parent, merged from the top down once read:
    // each file over what its own parent resolved to. (Merged from the child up, a key a
    // middle file left out by changing its mode came back from a grandparent: `drop_unused`
    // saw only the accumulated child.)
    let mut files = vec![raw];
    let mut chain = vec![identity(path)];
    let mut names = vec![stem_of(path)];
    let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();

    while let Some(ext) = parent_ref {
        let name = ext.get_ref().as_str();
        if name.is_empty() || name.contains('/') || name.ends_with(".toml") {
            diagnostics.push(sources.diag(
                &ext.span(),
                "extends",
                format!("\"{name}\" must be the bare name of a policy in the same directory (e.g. \"base\")"),
            ));
            break;
        }
        let parent_path = dir.join(format!("{name}.toml"));
        if chain.len() >= MAX_CHAIN {
            let msg = format!("extends chain longer than {MAX_CHAIN} files: {} -> {name} …", names.join(" -> "));
            diagnostics.push(sources.diag(&ext.span(), "extends", msg));
            break;
        }
        if chain.contains(&identity(&parent_path)) {
            names.push(name.to_owned());
            let msg = format!("extends cycle: {}", names.join(" -> "));
            diagnostics.push(sources.diag(&ext.span(), "extends", msg));
            break;
        }
        let text = match read_policy(&parent_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let siblings = super::friendly::policy_names(&dir);
                let hint = super::friendly::did_you_mean(name, siblings.iter().map(String::as_str));
                let msg = format!("no policy named \"{name}\" in this directory (no {name}.toml){hint}");
                diagnostics.push(sources.diag(&ext.span(), "extends", msg));
                break;
            }
            Err(e) => {
                let msg = format!("parent policy \"{name}\" cannot be read ({}): {e}", parent_path.display());
                diagnostics.push(sources.diag(&ext.span(), "extends", msg));
                break;
            }
        };
        let (parent, next) = parse_into(&mut sources, &parent_path, text, &mut diagnostics);
        files.push(parent);
        chain.push(identity(&parent_path));
        names.push(name.to_owned());
        parent_ref = next;
    }
    let mut files = files.into_iter().rev();
    let top = files.next().unwrap_or_default();
    let raw = files.fold(top, |resolved, child| merge(child, resolved));
    Ok(Loaded { raw, sources, diagnostics, stem: stem_of(path), path: path.to_path_buf() })
}

fn identity(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

fn stem_of(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Parse one file into the raw mirror, recording every syntax, unknown-key and type problem.
/// Returns the raw file and its `extends` value.
fn parse_into(
    sources: &mut Sources,
    path: &Path,
    text: String,
    diagnostics: &mut Vec<Diagnostic>,
) -> (RawFile, Option<toml::Spanned<String>>) {
    let (_, padded) = sources.add(path, text);
    let raw = parse_recovering(&padded, sources, diagnostics);
    let ext = raw.extends.clone();
    (raw, ext)
}

fn parse_recovering(padded: &str, sources: &Sources, diagnostics: &mut Vec<Diagnostic>) -> RawFile {
    let mut table = match DeTable::parse(padded) {
        Ok(t) => t,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let msg = super::friendly::syntax(e.message(), padded, span.start, |at| sources.locate(at).1);
            diagnostics.push(sources.diag(&span, "", msg));
            return RawFile::default();
        }
    };
    loop {
        let de = toml::de::Deserializer::from(table.clone());
        match RawFile::deserialize(de) {
            Ok(raw) => return raw,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                let path = find_path(table.get_ref(), span.start);
                let key = path.as_deref().map(|p| p.join(".")).unwrap_or_default();
                diagnostics.push(sources.diag(&span, &key, super::friendly::rewrite(&key, e.message().trim())));
                match path {
                    Some(p) if remove_path(table.get_mut(), &p) => continue,
                    _ => return RawFile::default(),
                }
            }
        }
    }
}

/// The dotted path of the deepest table entry whose key or value covers `offset` (also used
/// for the daemon's config file, so its errors name their key as a policy's do).
pub(crate) fn find_path(table: &DeTable<'_>, offset: usize) -> Option<Vec<String>> {
    for (k, v) in table.iter() {
        if let DeValue::Table(sub) = v.get_ref() {
            if let Some(mut p) = find_path(sub, offset) {
                p.insert(0, k.get_ref().to_string());
                return Some(p);
            }
        }
    }
    table
        .iter()
        .find(|(k, v)| k.span().contains(&offset) || v.span().contains(&offset))
        .map(|(k, _)| vec![k.get_ref().to_string()])
}

fn remove_path(table: &mut DeTable<'_>, path: &[String]) -> bool {
    match path {
        [] => false,
        [last] => table.remove(last.as_str()).is_some(),
        [first, rest @ ..] => match table.get_mut(first.as_str()).map(|v| v.get_mut()) {
            Some(DeValue::Table(sub)) => remove_path(sub, rest),
            _ => false,
        },
    }
}

/// Copy each of the listed fields from `$parent` unless `$child` sets it.
macro_rules! inherit {
    ($child:expr, $parent:expr; $($field:ident),+ $(,)?) => {
        $( if $child.$field.is_none() { $child.$field = $parent.$field; } )+
    };
}

/// The merge rule: tables merge key by key; a key set in the child replaces the parent's
/// value wholesale (arrays are replaced, not appended). `environment.set` is a table, so it
/// merges name by name. `[access]` is one rule (who may use the provider): a child's
/// `[access]` table replaces the parent's whole. `extends`, `provider.name` and
/// `provider.abstract` are never inherited. A key that only means something under one
/// setting of another key is not inherited when the child changes that setting without
/// setting the key itself (see `drop_unused`).
pub fn merge(mut child: RawFile, mut parent: RawFile) -> RawFile {
    drop_unused(&child, &mut parent);
    inherit!(child.provider, parent.provider; description, command, command_after, command_format, command_via, mode, tty);
    if child.access.is_none() {
        child.access = parent.access;
    }
    inherit!(child.identity, parent.identity; run_as, root_maps_to, uid_range, inside, workspace_idmap);
    inherit!(child.environment, parent.environment; pass);
    if let Some(parent_set) = parent.environment.set {
        let set = child.environment.set.get_or_insert_with(Default::default);
        for (name, value) in parent_set {
            set.entry(name).or_insert(value);
        }
    }
    inherit!(child.workdir, parent.workdir; roots);
    inherit!(child.limits, parent.limits; memory_max, memory_high, memory_swap, cpu, pids,
        open_files, file_size, wall_time, idle_timeout, output_bytes, tmp_size);
    inherit!(child.namespaces, parent.namespaces; user, pid, mount, net, ipc, uts, cgroup);
    inherit!(child.filesystem, parent.filesystem; read, write, exec);
    inherit!(child.network, parent.network; mode, egress, connect, bind);
    inherit!(child.seccomp, parent.seccomp; preset, default_action, deny, deny_action, allow);
    inherit!(child.session, parent.session; framing, sentinel, pattern, field, equals);
    inherit!(child.enforcement, parent.enforcement; mode);
    inherit!(child.pool, parent.pool; prewarm);
    child
}

/// Leave out of `parent` the keys that only mean something under a setting `child` changes:
/// `network.egress` (only with `network.mode = "proxy"`), `session.sentinel`, `pattern`,
/// `field` and `equals` (each only with its `session.framing`), `identity.uid_range` (only
/// with `run_as = "range"`), and `command_after`, `command_format` and `command_via` (only
/// with a fixed command, when the child sets `command = []`). A child that sets such a key
/// itself keeps it, and a contradiction of its own is still reported, in its own file.
fn drop_unused(child: &RawFile, parent: &mut RawFile) {
    let leaves = |setting: &Opt<String>, used_by: &str| setting.as_ref().is_some_and(|v| v.get_ref() != used_by);
    if leaves(&child.network.mode, "proxy") {
        parent.network.egress = None;
    }
    let (framing, session) = (&child.session.framing, &mut parent.session);
    for (key, used_by) in [
        (&mut session.sentinel, "sentinel"),
        (&mut session.pattern, "regex"),
        (&mut session.field, "json_field"),
        (&mut session.equals, "json_field"),
    ] {
        if leaves(framing, used_by) {
            *key = None;
        }
    }
    let range = |v: &Spanned<Scalar>| matches!(v.get_ref(), Scalar::Str(s) if s == "range");
    if child.identity.run_as.as_ref().is_some_and(|v| !range(v)) {
        parent.identity.uid_range = None;
    }
    if child.provider.command.as_ref().is_some_and(|c| c.get_ref().is_empty()) {
        let p = &mut parent.provider;
        (p.command_after, p.command_format, p.command_via) = (None, None, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (RawFile, Vec<Diagnostic>) {
        let mut sources = Sources::default();
        let mut diags = Vec::new();
        let (raw, _) = parse_into(&mut sources, Path::new("t.toml"), text.to_owned(), &mut diags);
        (raw, diags)
    }

    fn rendered(diags: &[Diagnostic]) -> Vec<String> {
        diags.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn every_unknown_key_and_type_error_is_reported() {
        let text = "[limits]\nmemroy_max = \"1G\"\npids = \"many\"\ncpu = 2\n[bogus]\nx = 1\n";
        let (raw, diags) = parse(text);
        let got = rendered(&diags);
        assert_eq!(got.len(), 3, "{got:#?}");
        assert!(got.iter().any(|d| d.starts_with("t.toml:2:1: limits.memroy_max: unknown key")), "{got:#?}");
        assert!(got.iter().any(|d| d.starts_with("t.toml:3:8: limits.pids: expected a whole number")), "{got:#?}");
        assert!(got.iter().any(|d| d.starts_with("t.toml:5:2: bogus: unknown section")), "{got:#?}");
        // The valid key survives.
        assert!(raw.limits.cpu.is_some());
    }

    #[test]
    fn syntax_error_has_position() {
        let (_, diags) = parse("[limits]\ncpu = = 1\n");
        assert_eq!(diags.len(), 1);
        assert_eq!((diags[0].line, diags[0].col), (2, 7), "{}", diags[0]);
    }

    #[test]
    fn offsets_map_back_to_their_file() {
        let mut sources = Sources::default();
        let mut diags = Vec::new();
        let (a, _) = parse_into(&mut sources, Path::new("a.toml"), "[limits]\npids = 1\n".into(), &mut diags);
        let (b, _) = parse_into(&mut sources, Path::new("b.toml"), "\n\n[limits]\npids = 2\n".into(), &mut diags);
        let span_a = a.limits.pids.map(|p| p.span()).unwrap_or_default();
        let span_b = b.limits.pids.map(|p| p.span()).unwrap_or_default();
        assert_eq!(sources.diag(&span_a, "k", "m").to_string(), "a.toml:2:8: k: m");
        assert_eq!(sources.diag(&span_b, "k", "m").to_string(), "b.toml:4:8: k: m");
    }

    #[test]
    fn child_replaces_arrays_and_merges_env_set() {
        let (parent, _) = parse(
            "[filesystem]\nread = [\"/usr\", \"/etc\"]\n[limits]\npids = 5\n[environment.set]\nA = \"1\"\nB = \"2\"\n",
        );
        let (child, _) = parse("[filesystem]\nread = [\"/opt\"]\n[environment.set]\nB = \"3\"\n");
        let merged = merge(child, parent);
        let read: Vec<String> = merged
            .filesystem
            .read
            .map(|r| r.into_inner().into_iter().map(|s| s.into_inner()).collect())
            .unwrap_or_default();
        assert_eq!(read, vec!["/opt"]);
        assert_eq!(merged.limits.pids.map(|p| p.into_inner()), Some(5));
        let set = merged.environment.set.unwrap_or_default();
        let set: Vec<(String, String)> = set.into_iter().map(|(k, v)| (k, v.into_inner())).collect();
        assert_eq!(set, vec![("A".into(), "1".into()), ("B".into(), "3".into())]);
    }

    #[test]
    fn cycles_and_missing_parents_are_reported_at_extends() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let write =
            |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("{e}"));
        write("a.toml", "extends = \"b\"\n");
        write("b.toml", "# b\nextends = \"a\"\n");
        write("c.toml", "extends = \"nope\"\n");
        let a = load_chain(&dir.path().join("a.toml")).unwrap_or_else(|e| panic!("{e}"));
        let got = rendered(&a.diagnostics);
        assert_eq!(
            got,
            vec![format!("{}:2:11: extends: extends cycle: a -> b -> a", dir.path().join("b.toml").display())]
        );
        let c = load_chain(&dir.path().join("c.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.diagnostics.len(), 1);
        assert!(c.diagnostics[0]
            .to_string()
            .contains("c.toml:1:11: extends: no policy named \"nope\" in this directory"));
    }
}
