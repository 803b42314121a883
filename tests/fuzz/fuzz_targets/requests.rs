//! Request decoding: the first byte picks a decoder, the rest is the untrusted body/query.
//! JSON bodies are decoded exactly as `api::routes::JsonBody` does (`serde_json::from_slice`);
//! `ListFilter` also as a query string (axum's `Query` uses serde_urlencoded). The NDJSON
//! `OutputLine` is decoded as the typed client does, and its `bytes()` helper exercised.
//!
//! Invariants: no panic; whatever decodes re-encodes and decodes again to the same encoding.
#![no_main]

use cellkeep::api::wire::OutputLine;
use cellkeep::api::wire::{ListFilter, OneshotRequest, SendRequest, SessionRequest, SpawnRequest};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round_trip<T: DeserializeOwned + Serialize>(body: &[u8]) -> Option<T> {
    let v: T = serde_json::from_slice(body).ok()?;
    let enc = serde_json::to_vec(&v).expect("re-encode");
    let again: T = serde_json::from_slice(&enc).unwrap_or_else(|e| {
        panic!("re-encoded value does not decode: {e}: {}", String::from_utf8_lossy(&enc))
    });
    assert_eq!(enc, serde_json::to_vec(&again).expect("re-encode 2"), "encoding not stable");
    Some(v)
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else { return };
    match sel % 8 {
        0 => {
            round_trip::<SpawnRequest>(body);
        }
        1 => {
            round_trip::<SessionRequest>(body);
        }
        2 => {
            round_trip::<SendRequest>(body);
        }
        3 => {
            round_trip::<OneshotRequest>(body);
        }
        4 => {
            round_trip::<ListFilter>(body);
        }
        5 => {
            if let Ok(f) = serde_urlencoded::from_bytes::<ListFilter>(body) {
                let q = serde_urlencoded::to_string(&f).expect("query re-encode");
                let again: ListFilter = serde_urlencoded::from_str(&q).expect("query decode again");
                assert_eq!((f.provider, f.all), (again.provider, again.all));
            }
        }
        6 => {
            // One NDJSON stream: every line decoded on its own.
            for line in body.split(|b| *b == b'\n') {
                if let Some(l) = round_trip::<OutputLine>(line) {
                    let _ = l.bytes();
                }
            }
        }
        _ => {
            if let Ok(l) = serde_json::from_slice::<OutputLine>(body) {
                let _ = l.bytes();
                let back: OutputLine = serde_json::from_slice(&serde_json::to_vec(&l).unwrap()).unwrap();
                assert_eq!(l, back);
            }
        }
    }
});
