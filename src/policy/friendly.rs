//! Messages in a policy author's words: serde and TOML parser errors rewritten without type
//! jargon, and "did you mean" suggestions for keys, policy names and syscall names.
//!
//! Nothing here decides whether a policy is valid; [`super::load`] and [`super::validate`]
//! decide, and call these helpers to word what they found.

/// The closest of `candidates` to `word`, when it is close enough to be a likely typo.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    // No name is this long: do not spend time comparing garbage.
    if word.len() > 64 {
        return None;
    }
    let word_lc = word.to_ascii_lowercase();
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(&word_lc, &c.to_ascii_lowercase());
        let close = strsim::damerau_levenshtein(&word_lc, &c.to_ascii_lowercase()) <= 2;
        if (score >= 0.85 || close) && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}

/// `; did you mean "x"?` or nothing.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    suggest(word, candidates).map(|s| format!("; did you mean \"{s}\"?")).unwrap_or_default()
}

/// The stems of the `*.toml` files in `dir` (the policy names `extends` may use).
pub fn policy_names(dir: &std::path::Path) -> Vec<String> {
    let dir = if dir.as_os_str().is_empty() { std::path::Path::new(".") } else { dir };
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names
}

/// Rewrite one serde message about `key` (dotted) in the author's words.
pub fn rewrite(key: &str, message: &str) -> String {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    if let Some(rest) = message.strip_prefix("unknown field `") {
        return unknown_field(key, rest);
    }
    let rest = message.strip_prefix("invalid type: ").or_else(|| message.strip_prefix("invalid value: "));
    let Some(rest) = rest else { return message.to_owned() };
    let Some((found, expected)) = rest.split_once(", expected ") else { return message.to_owned() };
    let (want, example) = expectation(leaf, expected, found);
    if want == "a section" {
        return format!(
            "expected a section: write [{leaf}] on a line of its own, its keys below it (found {})",
            found_words(found)
        );
    }
    format!("expected {want}, e.g. {leaf} = {example} (found {})", found_words(found))
}

fn unknown_field(key: &str, rest: &str) -> String {
    let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
    let options: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let section = key.rsplit_once('.').map(|(s, _)| s);
    let what = match section {
        Some(s) => format!("unknown key \"{name}\" in [{s}]"),
        None => format!("unknown section or key \"{name}\""),
    };
    match suggest(name, options.iter().copied()) {
        Some(s) => format!("{what}; did you mean \"{s}\"?"),
        None if options.is_empty() => what,
        None => format!("{what}; expected one of: {}", options.join(", ")),
    }
}

/// What was expected, in words, and an example value.
fn expectation(leaf: &str, expected: &str, found: &str) -> (&'static str, String) {
    let inner = found.split_once('"').map(|(_, s)| s.trim_end_matches('"')).unwrap_or("");
    match expected {
        "i64" | "u64" | "u32" | "u16" | "i32" | "usize" | "an integer" => {
            let n = inner.trim().parse::<i64>().map(|n| n.abs()).ok().filter(|n| *n > 0);
            ("a whole number", n.map_or_else(|| example_number(leaf).to_owned(), |n| n.to_string()))
        }
        "a boolean" => ("true or false", "true".to_owned()),
        "a sequence" => {
            let item = if inner.is_empty() { "\"...\"".to_owned() } else { format!("\"{inner}\"") };
            ("a list in square brackets", format!("[{item}]"))
        }
        "a string" => ("text in double quotes", format!("\"{}\"", if inner.is_empty() { "..." } else { inner })),
        "a string or a number" => ("text in quotes or a number", format!("\"{}\"", example_number(leaf))),
        e if e.starts_with("struct ") || e == "a map" => ("a section", String::new()),
        _ => ("another kind of value", "\"...\"".to_owned()),
    }
}

fn example_number(leaf: &str) -> &'static str {
    match leaf {
        "pids" => "256",
        "open_files" => "1024",
        "uids" => "[1000]",
        "connect" | "bind" => "[443]",
        _ => "1",
    }
}

fn found_words(found: &str) -> String {
    if let Some(s) = found.strip_prefix("string ") {
        return format!("the text {s}");
    }
    if let Some(s) = found.strip_prefix("integer ") {
        return format!("the number {}", s.trim_matches('`'));
    }
    match found {
        "sequence" => "a list".to_owned(),
        "map" => "a table".to_owned(),
        "boolean `true`" | "boolean `false`" => found.trim_start_matches("boolean ").trim_matches('`').to_owned(),
        other => other.replace('`', ""),
    }
}

/// A TOML syntax error in the author's words: a duplicate key is named, with the line that
/// first set it. `text` is the whole (padded) source; `at` the error's offset; `line_of`
/// turns an offset into a line number.
pub fn syntax(message: &str, text: &str, at: usize, line_of: impl Fn(usize) -> usize) -> String {
    let message = message.trim();
    if message != "duplicate key" {
        return format!("TOML syntax: {message}");
    }
    let key: String = text
        .get(at..)
        .unwrap_or("")
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"'))
        .collect();
    let key = key.trim_matches('"');
    let line_start = text.get(..at).and_then(|b| b.rfind('\n')).map_or(0, |i| i + 1);
    let is_header = text.get(line_start..at).is_some_and(|l| l.trim_start().starts_with('['));
    match (first_definition(text, at, key), is_header) {
        (Some(offset), true) => format!(
            "duplicate section [{key}]: it is already opened on line {}; put its keys under one [{key}]",
            line_of(offset)
        ),
        (Some(offset), false) => {
            format!("duplicate key \"{key}\": it is already set on line {}; keep one of the two", line_of(offset))
        }
        (None, _) => format!("duplicate key \"{key}\": it is set twice; keep one"),
    }
}

/// The offset of the line where `key` was first set in the table that holds `at`, or where
/// the table `[key]` was first opened.
fn first_definition(text: &str, at: usize, key: &str) -> Option<usize> {
    let before = text.get(..at)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let is_header = before.get(line_start..).is_some_and(|l| l.trim_start().starts_with('['));
    // A duplicate table: search the whole file; a duplicate key: its own table only.
    let from = if is_header {
        0
    } else {
        let mut from = 0;
        let mut offset = 0;
        for line in before.split_inclusive('\n') {
            if line.trim_start().starts_with('[') {
                from = offset;
            }
            offset += line.len();
        }
        from
    };
    let mut offset = from;
    for line in before.get(from..)?.split_inclusive('\n') {
        let l = line.trim_start();
        let is_key = l.strip_prefix(key).is_some_and(|r| r.trim_start().starts_with('='));
        let is_table = l.trim_start_matches('[').strip_prefix(key).is_some_and(|r| r.starts_with(']'));
        if (is_key && !is_header) || (is_table && is_header) {
            return Some(offset + line.len() - l.len());
        }
        offset += line.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_errors_read_plainly() {
        assert_eq!(
            rewrite("limits.pids", "invalid type: string \"256\", expected i64"),
            "expected a whole number, e.g. pids = 256 (found the text \"256\")"
        );
        assert_eq!(
            rewrite("provider.command", "invalid type: string \"/bin/true\", expected a sequence"),
            "expected a list in square brackets, e.g. command = [\"/bin/true\"] (found the text \"/bin/true\")"
        );
        assert_eq!(
            rewrite("provider.tty", "invalid type: string \"yes\", expected a boolean"),
            "expected true or false, e.g. tty = true (found the text \"yes\")"
        );
    }

    #[test]
    fn unknown_keys_get_a_suggestion() {
        assert_eq!(
            rewrite("limits.memroy_max", "unknown field `memroy_max`, expected one of `memory_max`, `pids`"),
            "unknown key \"memroy_max\" in [limits]; did you mean \"memory_max\"?"
        );
        assert_eq!(
            rewrite("bogus", "unknown field `bogus`, expected one of `provider`, `limits`"),
            "unknown section or key \"bogus\"; expected one of: provider, limits"
        );
    }

    #[test]
    fn suggestions_only_when_close() {
        assert_eq!(suggest("bsae", ["base", "agent"]), Some("base"));
        assert_eq!(suggest("opne", ["open", "openat", "read"]), Some("open"));
        assert_eq!(suggest("zzzz", ["base", "agent"]), None);
    }

    #[test]
    fn duplicate_key_is_named_with_its_first_line() {
        let text = "[provider]\nname = \"a\"\n[limits]\npids = 1\nname = 2\npids = 3\n";
        let line_of = |at: usize| text[..at].matches('\n').count() + 1;
        let at = text.rfind("pids").unwrap_or(0);
        assert_eq!(
            syntax("duplicate key", text, at, line_of),
            "duplicate key \"pids\": it is already set on line 4; keep one of the two"
        );
    }
}
