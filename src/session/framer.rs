//! Reply framing for session cells: bytes from stdout in, complete replies out.
//!
//! Every rule works on whole lines (`\n`-terminated; a trailing `\r` is kept as written):
//! - `line`: each line is one reply; the body is the line without its newline.
//! - `sentinel`: lines accumulate until one equals the sentinel; the body is the lines before
//!   it, each with its newline (the sentinel is not part of the reply).
//! - `regex`: lines accumulate until one matches; the matching line is included.
//! - `json_field`: lines accumulate until one is a JSON object whose dotted `field` equals
//!   `equals` (a string compares as its value, anything else as its JSON text); included.

use regex::Regex;

use crate::policy::SessionPolicy;

use super::SessionError;

/// What a reply in progress may hold while no command waits for it (see [`Framer::push`]).
pub const IDLE_KEEP: usize = 64 * 1024;

/// One complete reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub body: Vec<u8>,
}

enum Rule {
    Line,
    Sentinel(Vec<u8>),
    Regex(Regex),
    JsonField { path: Vec<String>, equals: String },
}

/// Incremental framer: push bytes as they arrive, get the replies they complete.
pub struct Framer {
    rule: Rule,
    max_reply: usize,
    /// The current, incomplete line.
    line: Vec<u8>,
    /// Complete lines of the reply in progress (multi-line rules).
    body: Vec<u8>,
    /// Dropping the rest of an oversized reply until its end marker.
    discarding: bool,
    /// The skipping began while no command waited (see [`Framer::command_written`]).
    discarding_unrequested: bool,
    /// While discarding: the current line outgrew [`Self::line_cap`], so it cannot be the end marker.
    line_too_long: bool,
    /// What an unrequested reply may hold (`IDLE_KEEP`; smaller in tests and fuzzing).
    idle_keep: usize,
}

impl Framer {
    pub fn new(policy: &SessionPolicy, max_reply: usize) -> Result<Framer, SessionError> {
        let rule = match policy {
            SessionPolicy::Line => Rule::Line,
            SessionPolicy::Sentinel { line } => Rule::Sentinel(line.as_bytes().to_vec()),
            SessionPolicy::Regex { pattern } => Rule::Regex(
                Regex::new(pattern)
                    .map_err(|e| SessionError::BadPattern { pattern: pattern.clone(), message: e.to_string() })?,
            ),
            SessionPolicy::JsonField { field, equals } => {
                Rule::JsonField { path: field.split('.').map(str::to_owned).collect(), equals: equals.clone() }
            }
        };
        Ok(Framer {
            rule,
            max_reply,
            line: Vec::new(),
            body: Vec::new(),
            discarding: false,
            discarding_unrequested: false,
            line_too_long: false,
            idle_keep: IDLE_KEEP,
        })
    }

    /// Hold at most `bytes` of a reply nobody waits for (default `IDLE_KEEP`).
    pub fn with_idle_keep(mut self, bytes: usize) -> Framer {
        self.idle_keep = bytes;
        self
    }

    /// Forget any partial reply (after an error, or when a session is reset).
    pub fn reset(&mut self) {
        self.line.clear();
        self.body.clear();
        self.discarding = false;
        self.discarding_unrequested = false;
        self.line_too_long = false;
    }

    /// A command was written to the session. Output nobody asked for that is being skipped
    /// (past `IDLE_KEEP`) is skipped no further: its end marker may never come (a background
    /// job's output, a banner), and skipping "to its end" would then skip the command's own
    /// reply. What arrives from here on is the command's reply; output still in the pipe
    /// from before joins its start, as a short prompt does. (The skip of a requested reply
    /// that was too large goes on: its end marker is on its way, before the next reply.)
    pub fn command_written(&mut self) {
        if self.discarding_unrequested {
            self.reset();
        }
    }

    /// Feed bytes; the replies they complete, in order. An oversized reply yields one error
    /// (in its place in the sequence) and is skipped up to its end marker.
    ///
    /// `wanted`: whether a command is waiting for a reply. While nobody waits, the reply in
    /// progress is kept only up to `IDLE_KEEP` bytes (enough for a prompt printed before
    /// the command that the answer then completes); past that it is skipped up to its end
    /// marker without an error, so a session printing unrequested output costs the daemon
    /// neither memory nor copies.
    pub fn push(&mut self, mut bytes: &[u8], wanted: bool) -> Vec<Result<Reply, SessionError>> {
        let limit = if wanted { self.max_reply } else { self.max_reply.min(self.idle_keep) };
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (chunk, rest, complete) = match memchr::memchr(b'\n', bytes) {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            if !self.discarding {
                self.line.extend_from_slice(chunk);
                if self.over_limit(limit, complete) {
                    self.discarding = true;
                    self.discarding_unrequested = !wanted;
                    self.body.clear();
                    // The line so far stays for the end-marker check below, if it can be one.
                    if self.line.len() > self.line_cap() {
                        self.line_too_long = true;
                        self.line.clear();
                    }
                    if wanted {
                        out.push(Err(SessionError::ReplyTooLarge { limit: self.max_reply }));
                    }
                }
            } else if !self.line_too_long {
                // Keep collecting the current line (bounded) so that the end marker is
                // recognised however the process's output was split into reads.
                if self.line.len() + chunk.len() <= self.line_cap() {
                    self.line.extend_from_slice(chunk);
                } else {
                    self.line_too_long = true;
                    self.line.clear();
                }
            }
            if complete {
                let line = std::mem::take(&mut self.line);
                let too_long = std::mem::take(&mut self.line_too_long);
                if let Some(reply) = self.end_line(line, too_long) {
                    out.push(Ok(reply));
                }
            }
        }
        out
    }

    /// Whether the reply in progress, with the current line (`complete`: it has ended), is
    /// over `limit` as delivered: the newline that joins a line to a multi-line body counts, a
    /// sentinel line (or a partial line that may still become one) does not.
    fn over_limit(&self, limit: usize, complete: bool) -> bool {
        let grown = match &self.rule {
            Rule::Line => self.line.len(),
            Rule::Sentinel(s) if complete && self.line == *s => return false,
            Rule::Sentinel(s) if !complete && s.starts_with(&self.line) => return false,
            _ => self.body.len() + self.line.len() + usize::from(complete),
        };
        grown > limit
    }

    /// The longest line worth keeping while discarding: one that may still be the end marker
    /// (with line framing any newline is; a sentinel is only a line of its own length).
    fn line_cap(&self) -> usize {
        match &self.rule {
            Rule::Line => 0,
            Rule::Sentinel(s) => s.len(),
            _ => self.max_reply,
        }
    }

    /// A complete line arrived (while discarding, `too_long` says it outgrew `max_reply`).
    fn end_line(&mut self, line: Vec<u8>, too_long: bool) -> Option<Reply> {
        if self.discarding {
            // Only the end marker matters now; a marker line longer than the limit is not seen.
            // (With line framing every newline ends a reply, however long the line was.)
            if matches!(self.rule, Rule::Line) || (!too_long && self.is_end(&line)) {
                self.discarding = false;
                self.discarding_unrequested = false;
                self.body.clear();
            }
            return None;
        }
        match &self.rule {
            Rule::Line => Some(Reply { body: line }),
            Rule::Sentinel(s) if line == *s => Some(Reply { body: std::mem::take(&mut self.body) }),
            Rule::Sentinel(_) => {
                self.push_body_line(&line);
                None
            }
            _ => {
                let end = self.is_end(&line);
                self.push_body_line(&line);
                end.then(|| Reply { body: std::mem::take(&mut self.body) })
            }
        }
    }

    fn push_body_line(&mut self, line: &[u8]) {
        self.body.extend_from_slice(line);
        self.body.push(b'\n');
    }

    fn is_end(&self, line: &[u8]) -> bool {
        match &self.rule {
            Rule::Line => true,
            Rule::Sentinel(s) => line == s.as_slice(),
            Rule::Regex(re) => std::str::from_utf8(line).is_ok_and(|l| re.is_match(l)),
            Rule::JsonField { path, equals } => json_field_equals(line, path, equals),
        }
    }
}

fn json_field_equals(line: &[u8], path: &[String], equals: &str) -> bool {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) else { return false };
    let mut v = &value;
    for key in path {
        match v.get(key) {
            Some(next) => v = next,
            None => return false,
        }
    }
    match v {
        serde_json::Value::String(s) => s == equals,
        // Not `*other == equals`: a non-string value compares as its JSON text (`true`, `3`).
        #[allow(clippy::cmp_owned)]
        other => other.to_string() == equals,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bodies(f: &mut Framer, input: &[&[u8]]) -> Vec<String> {
        input
            .iter()
            .flat_map(|b| f.push(b, true))
            .map(|r| match r {
                Ok(r) => String::from_utf8(r.body).unwrap(),
                Err(e) => format!("ERR {e}"),
            })
            .collect()
    }

    #[test]
    fn line_framing_splits_across_chunks() {
        let mut f = Framer::new(&SessionPolicy::Line, 1024).unwrap();
        assert_eq!(bodies(&mut f, &[b"hel", b"lo\nwor", b"ld\n\n", b"tail"]), ["hello", "world", ""]);
        assert_eq!(bodies(&mut f, &[b"\n"]), ["tail"]);
    }

    #[test]
    fn sentinel_excludes_the_marker() {
        let mut f = Framer::new(&SessionPolicy::Sentinel { line: "__END__".into() }, 1024).unwrap();
        assert_eq!(bodies(&mut f, &[b"a\nb\n__EN", b"D__\nc\n__END__\n"]), ["a\nb\n", "c\n"]);
    }

    #[test]
    fn regex_includes_the_matching_line() {
        let mut f = Framer::new(&SessionPolicy::Regex { pattern: "^DONE".into() }, 1024).unwrap();
        assert_eq!(bodies(&mut f, &[b"x\nDONE 1\ny\n", b"DONE 2\n"]), ["x\nDONE 1\n", "y\nDONE 2\n"]);
    }

    #[test]
    fn json_field_matches_dotted_paths_and_ignores_other_lines() {
        let p = SessionPolicy::JsonField { field: "msg.type".into(), equals: "result".into() };
        let mut f = Framer::new(&p, 1024).unwrap();
        let input: &[&[u8]] =
            &[b"{\"msg\":{\"type\":\"delta\"}}\nnot json\n", b"{\"msg\":{\"type\":\"result\"},\"n\":1}\n"];
        assert_eq!(
            bodies(&mut f, input),
            ["{\"msg\":{\"type\":\"delta\"}}\nnot json\n{\"msg\":{\"type\":\"result\"},\"n\":1}\n"]
        );
        let p = SessionPolicy::JsonField { field: "done".into(), equals: "true".into() };
        let mut f = Framer::new(&p, 1024).unwrap();
        assert_eq!(bodies(&mut f, &[b"{\"done\":false}\n{\"done\":true}\n"]).len(), 1);
    }

    #[test]
    fn oversized_reply_is_one_error_then_framing_resumes() {
        let mut f = Framer::new(&SessionPolicy::Sentinel { line: "END".into() }, 8).unwrap();
        let out = bodies(&mut f, &[b"0123456789\nmore\nEND\nok\nEND\n"]);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].starts_with("ERR"), "{out:?}");
        assert_eq!(out[1], "ok\n");
        let mut f = Framer::new(&SessionPolicy::Line, 4).unwrap();
        let out = bodies(&mut f, &[b"toolong", b"line\nok\n"]);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[1], "ok");
    }

    /// Found by the framer fuzz target: while discarding, the end marker was compared with the
    /// last read's piece of the line only, so the result depended on how reads split the output.
    #[test]
    fn discarding_sees_the_marker_however_reads_split_it() {
        let input = b"xxxxx\nE\nok\nE\n";
        let whole = bodies(&mut Framer::new(&SessionPolicy::Sentinel { line: "E".into() }, 4).unwrap(), &[input]);
        let mut f = Framer::new(&SessionPolicy::Sentinel { line: "E".into() }, 4).unwrap();
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(bodies(&mut f, &bytes), whole);
        assert_eq!(whole.len(), 2, "{whole:?}");
        assert_eq!(whole[1], "ok\n");
        // A long line whose last piece equals the marker is not the marker.
        let mut f = Framer::new(&SessionPolicy::Sentinel { line: "END".into() }, 8).unwrap();
        let out = bodies(&mut f, &[b"0123456789\n", b"aaaaaaaaaa", b"END\n", b"END\nok\nEND\n"]);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[1], "ok\n");
    }

    /// The newline that joins each line to a multi-line reply counts against `max_reply`; a
    /// sentinel line does not (it is not part of the reply).
    #[test]
    fn max_reply_counts_the_joining_newlines() {
        let p = SessionPolicy::Regex { pattern: "^D$".into() };
        // "abcd\nD\n" is 7 bytes.
        let out = bodies(&mut Framer::new(&p, 6).unwrap(), &[b"abcd\nD\nok\nD\n"]);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].starts_with("ERR"), "{out:?}");
        assert_eq!(out[1], "ok\nD\n");
        assert_eq!(bodies(&mut Framer::new(&p, 7).unwrap(), &[b"abcd\nD\n"]), ["abcd\nD\n"]);
        // Sentinel: "ab\n" fits in 3 however long the marker is, split or not.
        let p = SessionPolicy::Sentinel { line: "__END__".into() };
        assert_eq!(bodies(&mut Framer::new(&p, 3).unwrap(), &[b"ab\n__E", b"ND__\n"]), ["ab\n"]);
        let out = bodies(&mut Framer::new(&p, 3).unwrap(), &[b"abc\n__END__\nx\n__END__\n"]);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[1], "x\n");
        // Line framing: the newline is not part of the reply.
        assert_eq!(bodies(&mut Framer::new(&SessionPolicy::Line, 3).unwrap(), &[b"abc\n"]), ["abc"]);
    }

    /// While no command waits, a reply is kept only up to IDLE_KEEP bytes and then skipped to
    /// its end without an error; a short prompt printed before the command still joins the
    /// answer that completes its line.
    #[test]
    fn unrequested_output_is_not_kept() {
        let mut f = Framer::new(&SessionPolicy::Line, 1 << 20).unwrap();
        let flood = vec![b'x'; 3 * IDLE_KEEP];
        assert!(f.push(&flood, false).is_empty());
        assert!(f.line.is_empty() && f.discarding, "an unrequested line is not held");
        assert!(f.push(&flood, false).is_empty());
        let out: Vec<_> = f.push(b"\nok\n", true).into_iter().map(|r| r.unwrap().body).collect();
        assert_eq!(out, [b"ok".to_vec()]);
        // A prompt, then the command's answer completing the line.
        assert!(f.push(b">>> ", false).is_empty());
        let out: Vec<_> = f.push(b"42\n", true).into_iter().map(|r| r.unwrap().body).collect();
        assert_eq!(out, [b">>> 42".to_vec()]);
        // Multi-line: an unrequested reply past IDLE_KEEP is skipped to its marker.
        let mut f = Framer::new(&SessionPolicy::Sentinel { line: "END".into() }, 1 << 20).unwrap();
        let mut big = vec![b'y'; 100];
        big.push(b'\n');
        for _ in 0..(2 * IDLE_KEEP / big.len()) {
            assert!(f.push(&big, false).is_empty());
        }
        assert!(f.body.is_empty());
        let out: Vec<_> = f.push(b"END\nask\nEND\n", true).into_iter().map(|r| r.unwrap().body).collect();
        assert_eq!(out, [b"ask\n".to_vec()]);
    }

    /// An unrequested skip with no end marker in sight ends when a command is written (its
    /// reply is not skipped as the skipped output's end); a too-large requested reply's skip
    /// goes on to its own marker.
    #[test]
    fn a_command_written_ends_only_an_unrequested_skip() {
        let p = SessionPolicy::Sentinel { line: "END".into() };
        let mut f = Framer::new(&p, 1 << 20).unwrap().with_idle_keep(8);
        assert!(f.push(b"background job output\nmore\n", false).is_empty());
        assert!(f.discarding);
        f.command_written();
        let out: Vec<_> = f.push(b"mine\nEND\n", true).into_iter().map(|r| r.unwrap().body).collect();
        assert_eq!(out, [b"mine\n".to_vec()]);
        let mut f = Framer::new(&p, 5).unwrap();
        assert!(f.push(b"too large\n", true)[0].is_err());
        f.command_written();
        let out: Vec<_> = f.push(b"rest\nEND\nnext\nEND\n", true).into_iter().map(|r| r.unwrap().body).collect();
        assert_eq!(out, [b"next\n".to_vec()]);
    }

    #[test]
    fn bad_regex_is_a_named_error() {
        let e = Framer::new(&SessionPolicy::Regex { pattern: "(".into() }, 8).err().unwrap();
        assert!(e.to_string().contains("\"(\""), "{e}");
    }
}
