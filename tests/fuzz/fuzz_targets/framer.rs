//! `session::Framer::push`: it frames replies out of untrusted process output, so the input is
//! the process's stdout, cut into random chunks, under every framing rule.
//!
//! Invariants: no panic; the replies (and errors) do not depend on how the output was cut
//! into reads; a delivered reply is at most `max_reply` bytes (newlines included); with `line`
//! framing and no oversized reply, the replies plus one terminator each are exactly the input
//! up to its last newline; a sentinel reply never contains the sentinel line; after `reset`
//! nothing is pending. A second run pushes some pieces as unrequested output (`wanted` false,
//! a small idle_keep) and checks the same bounds.
//! `seeds/framer/discard-split-sentinel` is the input that once broke read-boundary
//! independence on the discard path (fixed; see `Framer`'s unit tests).
#![no_main]

use cellkeep::policy::SessionPolicy;
use cellkeep::session::Framer;
use libfuzzer_sys::fuzz_target;

const PATTERNS: &[&str] = &["^DONE", "END$", r"^\$ $", r"^\{.*\}$", "x", r"(?i)^ok\b", r"^$"];

/// Input layout (hand-rolled so a case can be written by hand, see seeds/framer):
/// byte 0 rule (mod 4: line, sentinel, regex, json_field), byte 1 max_reply (0 = 1 MiB),
/// byte 2 n, then n bytes of rule text (sentinel; regex pick; json `field=equals`),
/// then byte k, then k cut lengths (one byte each), then the process output (the rest).
struct Input<'a> {
    rule: u8,
    text: String,
    max_reply: u8,
    cuts: &'a [u8],
    output: &'a [u8],
}

fn parse(data: &[u8]) -> Option<Input<'_>> {
    let (&rule, rest) = data.split_first()?;
    let (&max_reply, rest) = rest.split_first()?;
    let (&n, rest) = rest.split_first()?;
    let (text, rest) = rest.split_at_checked(n as usize)?;
    let (&k, rest) = rest.split_first()?;
    let (cuts, output) = rest.split_at_checked(k as usize)?;
    Some(Input { rule, text: String::from_utf8_lossy(text).into_owned(), max_reply, cuts, output })
}

type Out = Vec<Result<Vec<u8>, String>>;

fn run(policy: &SessionPolicy, max: usize, pieces: &[&[u8]]) -> Out {
    let mut f = Framer::new(policy, max).expect("fixed patterns compile");
    let mut out = Vec::new();
    for p in pieces {
        out.extend(f.push(p, true).into_iter().map(|r| r.map(|r| r.body).map_err(|e| e.to_string())));
    }
    f.reset();
    assert!(f.push(b"", true).is_empty(), "push(empty) after reset yielded something");
    out
}

/// Pieces pushed with `wanted` = the cut byte's high bit clear (the last piece always
/// wanted), idle_keep = `keep`: the unrequested-output path. Checks what holds whatever the
/// mix: no panic, no reply over max_reply, no sentinel line inside a reply.
fn run_mixed(policy: &SessionPolicy, max: usize, keep: usize, pieces: &[&[u8]], cuts: &[u8]) -> Out {
    let mut f = Framer::new(policy, max).expect("fixed patterns compile").with_idle_keep(keep);
    let mut out = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        let wanted = cuts.get(i).is_none_or(|c| c & 0x80 == 0);
        out.extend(f.push(p, wanted).into_iter().map(|r| r.map(|r| r.body).map_err(|e| e.to_string())));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some(inp) = parse(data) else { return };
    let policy = match inp.rule % 4 {
        0 => SessionPolicy::Line,
        1 => SessionPolicy::Sentinel { line: inp.text.clone() },
        2 => SessionPolicy::Regex { pattern: PATTERNS[inp.text.len() % PATTERNS.len()].to_owned() },
        _ => {
            let (field, equals) = inp.text.split_once('=').unwrap_or((&inp.text, ""));
            SessionPolicy::JsonField { field: field.to_owned(), equals: equals.to_owned() }
        }
    };
    // Small limits so the oversized-reply path is reached; 0 means "large".
    let max = if inp.max_reply == 0 { 1 << 20 } else { inp.max_reply as usize };
    let data = inp.output;

    let whole = run(&policy, max, &[data]);

    // Random read boundaries.
    let mut pieces = Vec::new();
    let mut rest = data;
    for c in inp.cuts {
        if rest.is_empty() {
            break;
        }
        let n = (*c as usize) % (rest.len() + 1);
        let (a, b) = rest.split_at(n);
        pieces.push(a);
        rest = b;
    }
    pieces.push(rest);
    let chunked = run(&policy, max, &pieces);
    // And one byte per read.
    // (Bounded: a push per byte is slow, and long inputs get random cuts anyway.)
    let single = if data.len() <= 512 { run(&policy, max, &data.chunks(1).collect::<Vec<_>>()) } else { whole.clone() };

    let overflowed = whole.iter().any(|r| r.is_err());
    assert_eq!(whole, chunked, "replies depend on read boundaries (cuts {:?})", pieces.iter().map(|p| p.len()).collect::<Vec<_>>());
    assert_eq!(whole, single, "replies differ when output arrives one byte per read");

    let keep = inp.cuts.first().map_or(1, |c| usize::from(*c & 0x3f) + 1);
    let mixed = run_mixed(&policy, max, keep, &pieces, inp.cuts);
    for r in whole.iter().chain(mixed.iter()).flatten() {
        assert!(r.len() <= max, "reply of {} bytes over max_reply {max}", r.len());
    }
    if let SessionPolicy::Sentinel { line } = &policy {
        for r in mixed.iter().flatten() {
            let lines = r.strip_suffix(b"\n").map(|b| b.split(|c| *c == b'\n').collect::<Vec<_>>()).unwrap_or_default();
            assert!(lines.iter().all(|l| *l != line.as_bytes()), "sentinel inside a reply (mixed)");
        }
    }
    match &policy {
        SessionPolicy::Line if !overflowed => {
            let mut joined = Vec::new();
            for r in whole.iter().flatten() {
                joined.extend_from_slice(r);
                joined.push(b'\n');
            }
            let end = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            assert_eq!(joined, &data[..end], "line framing lost or added bytes");
        }
        SessionPolicy::Sentinel { line } if !overflowed => {
            for r in whole.iter().flatten() {
                // The body is whole lines, each with its newline.
                let lines = r.strip_suffix(b"\n").map(|b| b.split(|c| *c == b'\n').collect::<Vec<_>>()).unwrap_or_default();
                assert!(lines.iter().all(|l| *l != line.as_bytes()), "sentinel inside a reply");
            }
        }
        _ => {}
    }
});
