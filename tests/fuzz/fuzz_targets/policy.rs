//! Policy parser + validator: arbitrary text as `fuzz.toml` (and, after the first NUL byte,
//! as `base.toml` beside it, so `extends = "base"` chains, cycles and inherited-key
//! diagnostics are reached too), loaded through `cellkeep::policy::load_file`, the same entry
//! point `policy check` and the daemon use.
//!
//! Invariants: no panic; every diagnostic points at one of the two files with line, col >= 1;
//! a policy that loads renders (`show`) to TOML that loads back to the same rendering (the
//! documented round trip of `policy show`).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use cellkeep::policy::{load_file, show, PolicyError};
use libfuzzer_sys::fuzz_target;

struct Dirs {
    leaf: PathBuf,
    parent: PathBuf,
    round_trip: PathBuf,
}

fn dirs() -> &'static Dirs {
    static D: OnceLock<Dirs> = OnceLock::new();
    D.get_or_init(|| {
        // tmpfs when there is one: one write per execution.
        let root = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let base = root.join(format!("cellkeep-fuzz-policy-{}", std::process::id()));
        let rt = base.join("rt");
        std::fs::create_dir_all(&rt).expect("fuzz dir");
        Dirs { leaf: base.join("fuzz.toml"), parent: base.join("base.toml"), round_trip: rt.join("fuzz.toml") }
    })
}

fuzz_target!(|data: &[u8]| {
    let d = dirs();
    let (leaf, parent) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    std::fs::write(&d.leaf, leaf).expect("write leaf");
    match parent {
        Some(p) => std::fs::write(&d.parent, p).expect("write parent"),
        None => {
            let _ = std::fs::remove_file(&d.parent);
        }
    }
    match load_file(&d.leaf) {
        Ok(policy) => {
            // The first line of `show` is a comment naming the source file: not policy.
            let body = |t: &str| t.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n");
            let text = show(&policy);
            std::fs::write(&d.round_trip, &text).expect("write round trip");
            let again = match load_file(&d.round_trip) {
                Ok(p) => p,
                Err(e) => panic!("show() output does not load back: {e}\n--- show output ---\n{text}"),
            };
            let text2 = show(&again);
            assert_eq!(body(&text), body(&text2), "show -> load -> show changed the policy");
        }
        Err(PolicyError::Invalid(diags)) => {
            assert!(!diags.is_empty(), "Invalid with no diagnostics");
            for diag in &diags {
                assert!(diag.file == d.leaf || diag.file == d.parent, "diagnostic names a foreign file: {diag}");
                assert!(diag.line >= 1 && diag.col >= 1, "bad position: {diag}");
                let _ = diag.to_string();
            }
        }
        // Non-UTF-8 text is an I/O error ("stream did not contain valid UTF-8").
        Err(PolicyError::Io { .. }) => assert!(std::str::from_utf8(leaf).is_err(), "readable file gave Io error"),
        Err(e) => panic!("unexpected error kind from load_file: {e}"),
    }
});
