//! The per-cell output spool: the last `cap` bytes of a cell's stdout and stderr, in the order
//! they were read, with live fan-out to any number of readers.
//!
//! Offsets number every byte the cell ever wrote (both streams share one sequence), so a reader
//! that reconnects asks for `from = last offset + length` and gets exactly what it missed, as
//! long as the spool still holds it. The bytes live in a ring ([`super::store`]): by default a
//! file per cell on disk, so a large retained window costs disk, not daemon memory; in memory
//! only the stream boundaries are kept. Writers never wait for readers: when the ring is full
//! the oldest bytes go, and only a reader positioned before the first kept byte gets one
//! `Lagged { dropped }` event and continues from the oldest kept byte — a reader that keeps up
//! within the retained window loses nothing.
//!
//! Readers copy bytes out of the ring without holding the spool's lock; a writer announces the
//! bytes it is about to overwrite (it moves `first`) before writing, and a reader checks `first`
//! again after its copy, so a copy that raced an overwrite is discarded, never delivered.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::store::{Ring, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputEvent {
    Data {
        stream: Stream,
        offset: u64,
        data: Bytes,
    },
    /// `dropped` bytes were no longer in the spool when this reader got to them.
    Lagged {
        dropped: u64,
    },
    /// The cell's output is complete.
    End,
}

#[derive(Default)]
struct State {
    /// (offset where a run of one stream starts, the stream), oldest first; the first run may
    /// start before `first` (its older bytes are gone).
    runs: VecDeque<(u64, Stream)>,
    /// Offset of the first kept byte.
    first: u64,
    /// Offset one past the last byte ever pushed.
    end: u64,
    /// Some bytes of this stream were dropped (stdout, stderr).
    dropped: [bool; 2],
    closed: bool,
    /// The ring could not be written (e.g. the disk is full): reported once.
    write_failed: bool,
}

impl State {
    /// The run holding `pos` (`first <= pos < end`): its stream and where it ends.
    fn run_at(&self, pos: u64) -> Option<(Stream, u64)> {
        let i = self.runs.partition_point(|&(start, _)| start <= pos).checked_sub(1)?;
        let end = self.runs.get(i + 1).map_or(self.end, |&(start, _)| start);
        Some((self.runs[i].1, end))
    }

    /// Forget everything before `new_first`, marking the streams that lost bytes.
    fn drop_before(&mut self, new_first: u64) {
        if new_first <= self.first {
            return;
        }
        while self.runs.len() >= 2 && self.runs[1].0 <= new_first {
            if let Some((_, s)) = self.runs.pop_front() {
                self.dropped[index(s)] = true;
            }
        }
        if let Some(front) = self.runs.front_mut() {
            if front.0 < new_first {
                self.dropped[index(front.1)] = true;
                if new_first >= self.end {
                    self.runs.clear();
                } else {
                    front.0 = new_first;
                }
            }
        }
        self.first = new_first;
    }
}

struct Shared {
    cap: u64,
    ring: Ring,
    state: Mutex<State>,
    changed: Notify,
}

/// Cheap to clone: every clone is the same spool.
#[derive(Clone)]
pub struct Spool {
    shared: Arc<Shared>,
}

fn index(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

impl Spool {
    /// A spool whose bytes are kept in memory.
    pub fn new(cap: usize) -> Spool {
        Spool::with_ring(cap, Ring::memory())
    }

    /// A spool kept in the file `<dir>/<name>` (removed when the last clone is dropped).
    pub fn on_disk(cap: usize, dir: &Path, name: &str) -> Result<Spool, StoreError> {
        Ok(Spool::with_ring(cap, Ring::file(dir, name)?))
    }

    fn with_ring(cap: usize, ring: Ring) -> Spool {
        Spool {
            shared: Arc::new(Shared {
                cap: cap as u64,
                ring,
                state: Mutex::new(State::default()),
                changed: Notify::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Write `data` (at most `cap` bytes) for offsets from `offset` into the ring.
    fn write_ring(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let cap = self.shared.cap;
        let pos = offset % cap;
        let first_part = ((cap - pos) as usize).min(data.len());
        self.shared.ring.write_at(pos, &data[..first_part])?;
        if first_part < data.len() {
            self.shared.ring.write_at(0, &data[first_part..])?;
        }
        Ok(())
    }

    /// Append output; drops the oldest bytes beyond the cap. Never waits for readers. Returns
    /// the offset of the chunk's first byte.
    pub fn push(&self, stream: Stream, data: &[u8]) -> u64 {
        let cap = self.shared.cap;
        let mut st = self.state();
        let offset = st.end;
        if data.is_empty() {
            return offset;
        }
        let new_end = offset + data.len() as u64;
        // Keep only the tail that fits.
        let keep = (data.len() as u64).min(cap) as usize;
        let kept_from = new_end - keep as u64;
        if keep < data.len() {
            st.dropped[index(stream)] = true;
        }
        // Announce what is about to be overwritten before writing it (readers re-check).
        st.drop_before(new_end.saturating_sub(cap));
        if keep > 0 {
            if st.runs.back().is_none_or(|&(_, s)| s != stream) {
                st.runs.push_back((kept_from, stream));
            }
            if let Err(e) = self.write_ring(kept_from, &data[data.len() - keep..]) {
                if !st.write_failed {
                    let path = self.shared.ring.path().map(|p| p.display().to_string()).unwrap_or_default();
                    tracing::error!(spool = %path, "cannot write cell output to its spool; output is being dropped: {e}");
                }
                st.write_failed = true;
                st.end = new_end;
                st.drop_before(new_end);
                drop(st);
                self.shared.changed.notify_waiters();
                return offset;
            }
        }
        st.end = new_end;
        if st.first > st.end {
            st.first = st.end;
        }
        drop(st);
        self.shared.changed.notify_waiters();
        offset
    }

    /// No more output will come (both pipes closed): readers get `End` after the kept bytes.
    pub fn close(&self) {
        self.state().closed = true;
        self.shared.changed.notify_waiters();
    }

    /// (offset of the first kept byte, offset one past the last byte).
    pub fn kept(&self) -> (u64, u64) {
        let st = self.state();
        (st.first, st.end)
    }

    /// Total bytes the cell ever wrote to both streams.
    pub fn total_bytes(&self) -> u64 {
        self.state().end
    }

    /// Whether writing to the spool failed (e.g. a full disk): output was dropped.
    pub fn write_failed(&self) -> bool {
        self.state().write_failed
    }

    /// Everything still kept of one stream, and whether some of it was dropped.
    pub fn snapshot(&self, stream: Stream) -> (Vec<u8>, bool) {
        let mut sub = self.subscribe(None);
        let mut out = Vec::new();
        let mut lost = false;
        while let Some(ev) = sub.try_next() {
            match ev {
                OutputEvent::Data { stream: s, data, .. } if s == stream => out.extend_from_slice(&data),
                OutputEvent::Lagged { .. } => lost = true,
                OutputEvent::Data { .. } => {}
                OutputEvent::End => break,
            }
            if sub.pos >= sub.until {
                break;
            }
        }
        (out, lost || self.state().dropped[index(stream)])
    }

    /// A reader starting at `from` (default: the oldest kept byte).
    pub fn subscribe(&self, from: Option<u64>) -> Subscription {
        let (first, end) = self.kept();
        Subscription { spool: self.clone(), pos: from.unwrap_or(first), ended: false, until: end }
    }
}

/// Largest data event a reader gets at once.
const COALESCE: usize = 256 * 1024;

/// One reader's position in a spool.
pub struct Subscription {
    spool: Spool,
    pos: u64,
    ended: bool,
    /// The end of the spool when subscribed (what [`Spool::snapshot`] reads up to).
    until: u64,
}

impl Subscription {
    /// The oldest byte still kept, when this reader starts before it (what lies between was
    /// dropped: the spool keeps only the last `cap` bytes).
    pub fn gap(&self) -> Option<u64> {
        let (first, _) = self.spool.kept();
        (self.pos < first).then_some(first)
    }

    /// The next event: data at or after this reader's position, a lag notice, or the end.
    /// Waits for new output while the cell runs; `None` after `End`.
    pub async fn next(&mut self) -> Option<OutputEvent> {
        loop {
            if self.ended {
                return None;
            }
            let shared = self.spool.shared.clone();
            let changed = shared.changed.notified();
            tokio::pin!(changed);
            // Register before looking, so a push between the look and the wait is not missed.
            changed.as_mut().enable();
            if let Some(ev) = self.try_next() {
                return Some(ev);
            }
            changed.await;
        }
    }

    /// The offset of the next byte this reader will get.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The next event if one is ready now, without waiting.
    pub fn try_next(&mut self) -> Option<OutputEvent> {
        loop {
            if self.ended {
                return None;
            }
            let (stream, len, more_coming) = {
                let st = self.spool.state();
                if self.pos < st.first {
                    let dropped = st.first - self.pos;
                    self.pos = st.first;
                    return Some(OutputEvent::Lagged { dropped });
                }
                if self.pos >= st.end {
                    if st.closed {
                        self.ended = true;
                        return Some(OutputEvent::End);
                    }
                    return None;
                }
                // A reader that is behind gets up to COALESCE bytes of one run at once.
                let (stream, run_end) = st.run_at(self.pos)?;
                let len = ((run_end - self.pos) as usize).min(COALESCE);
                // Whether the bytes after this chunk are in the spool already, continuing its
                // run: it was cut short here. (The pumps push whole characters, or a cut one
                // as it is once nothing more came: see `pool::cell`.)
                let more_coming = self.pos + (len as u64) < run_end;
                (stream, len, more_coming)
            };
            let mut buf = vec![0u8; len];
            let cap = self.spool.shared.cap;
            let pos = self.pos % cap;
            let first_part = ((cap - pos) as usize).min(len);
            let read = self.spool.shared.ring.read_at(pos, &mut buf[..first_part]).and_then(|()| {
                if first_part < len {
                    self.spool.shared.ring.read_at(0, &mut buf[first_part..])
                } else {
                    Ok(())
                }
            });
            // Overwritten while copied (or unreadable): what is gone is reported as lagged.
            if read.is_err() || self.spool.state().first > self.pos {
                if read.is_err() {
                    let mut st = self.spool.state();
                    let end = st.end;
                    st.drop_before(end);
                }
                continue;
            }
            // A character cut at the chunk's end goes with the next chunk, which starts with
            // it, when its other bytes are there: a chunk is never split inside a UTF-8
            // character it could have held whole (the API would send both halves as base64,
            // `data_b64`, and a reader of `data` lose them).
            let whole = if more_coming { len - utf8_cut_tail(&buf) } else { len };
            buf.truncate(whole);
            let ev = OutputEvent::Data { stream, offset: self.pos, data: Bytes::from(buf) };
            self.pos += whole as u64;
            return Some(ev);
        }
    }
}

/// How many bytes at the end of `buf` are the start of a UTF-8 character whose other bytes
/// are not in `buf` (0 to 3): a lead byte followed by fewer continuation bytes than it
/// announces. 0 for anything else, valid or not. The output pumps hold such bytes back
/// until the next read brings the rest, and readers of the spool do not end a chunk there
/// while the rest is coming: a chunk cut inside a character goes out as base64 (`data_b64`).
pub fn utf8_cut_tail(buf: &[u8]) -> usize {
    for back in 1..=buf.len().min(3) {
        let b = buf[buf.len() - back];
        if b & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back for its lead
        }
        let needs = match b {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return 0,
        };
        return if back < needs { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn a_utf8_character_cut_at_the_end_is_found() {
        let e = "é".as_bytes(); // C3 A9
        let euro = "€".as_bytes(); // E2 82 AC
        assert_eq!(utf8_cut_tail(b"abc"), 0);
        assert_eq!(utf8_cut_tail(&[b'a', e[0]]), 1);
        assert_eq!(utf8_cut_tail(e), 0);
        assert_eq!(utf8_cut_tail(&[b'a', euro[0], euro[1]]), 2);
        assert_eq!(utf8_cut_tail(euro), 0);
        assert_eq!(utf8_cut_tail(&[0xF0, 0x9F, 0x98]), 3);
        assert_eq!(utf8_cut_tail(&[0xFF]), 0);
        assert_eq!(utf8_cut_tail(&[]), 0);
    }

    #[test]
    fn a_reader_never_cuts_a_character_it_has_whole() {
        // More than one chunk's worth, at an odd offset: the chunk limit falls inside a
        // character, whose bytes go with the next chunk.
        let text = format!("a{}", "é".repeat(COALESCE));
        let s = Spool::new(8 * COALESCE);
        s.push(Stream::Stdout, text.as_bytes());
        // A character cut where nothing follows (the program wrote half of one) goes as it is.
        s.push(Stream::Stdout, &"é".as_bytes()[..1]);
        let mut r = s.subscribe(None);
        let evs = ready(&mut r);
        let chunks: Vec<&[u8]> = evs.iter().map(|ev| data(ev).2).collect();
        assert!(chunks.len() > 1, "{} chunk(s)", chunks.len());
        let (last, whole) = chunks.split_last().expect("chunks");
        for c in whole {
            assert!(std::str::from_utf8(c).is_ok(), "a chunk of {} bytes ends inside a character", c.len());
        }
        assert_eq!(last.last(), Some(&"é".as_bytes()[0]), "the trailing half was held back");
        assert_eq!(chunks.concat().len(), text.len() + 1);
    }

    fn ready(sub: &mut Subscription) -> Vec<OutputEvent> {
        let mut out = Vec::new();
        while let Some(Some(ev)) = sub.next().now_or_never() {
            out.push(ev);
        }
        out
    }

    fn data(ev: &OutputEvent) -> (Stream, u64, &[u8]) {
        match ev {
            OutputEvent::Data { stream, offset, data } => (*stream, *offset, &data[..]),
            other => panic!("not data: {other:?}"),
        }
    }

    #[test]
    fn readers_get_everything_in_order_then_end() {
        let s = Spool::new(1024);
        s.push(Stream::Stdout, b"hello ");
        s.push(Stream::Stderr, b"oops");
        s.push(Stream::Stdout, b"world");
        let mut a = s.subscribe(None);
        let evs = ready(&mut a);
        assert_eq!(evs.len(), 3);
        assert_eq!(data(&evs[1]), (Stream::Stderr, 6, &b"oops"[..]));
        assert_eq!(s.snapshot(Stream::Stdout), (b"hello world".to_vec(), false));
        s.close();
        assert_eq!(ready(&mut a), vec![OutputEvent::End]);
        let mut late = s.subscribe(Some(8));
        let evs = ready(&mut late);
        assert_eq!(data(&evs[0]), (Stream::Stderr, 8, &b"ps"[..]));
        assert_eq!(evs.last(), Some(&OutputEvent::End));
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_a_slow_reader_is_told() {
        let s = Spool::new(10);
        let mut slow = s.subscribe(None);
        s.push(Stream::Stdout, b"0123456789");
        s.push(Stream::Stdout, b"abcd");
        assert_eq!(s.kept(), (4, 14));
        let evs = ready(&mut slow);
        assert_eq!(evs[0], OutputEvent::Lagged { dropped: 4 });
        assert_eq!(data(&evs[1]), (Stream::Stdout, 4, &b"456789abcd"[..]));
        assert_eq!(s.snapshot(Stream::Stdout), (b"456789abcd".to_vec(), true));
        assert_eq!(s.snapshot(Stream::Stderr), (Vec::new(), false));
        // One push larger than the cap keeps its tail.
        s.push(Stream::Stderr, b"ABCDEFGHIJKLMNOP");
        assert_eq!(s.snapshot(Stream::Stderr), (b"GHIJKLMNOP".to_vec(), true));
        assert_eq!(s.total_bytes(), 30);
    }

    #[test]
    fn a_reader_behind_gets_chunks_of_one_stream_coalesced() {
        let s = Spool::new(4 * COALESCE);
        for _ in 0..3 {
            s.push(Stream::Stdout, b"abc");
        }
        s.push(Stream::Stderr, b"E");
        s.push(Stream::Stdout, &vec![b'x'; COALESCE]);
        let mut sub = s.subscribe(Some(1));
        let evs = ready(&mut sub);
        assert_eq!(data(&evs[0]), (Stream::Stdout, 1, &b"bcabcabc"[..]));
        assert_eq!(data(&evs[1]), (Stream::Stderr, 9, &b"E"[..]));
        assert_eq!(data(&evs[2]).2.len(), COALESCE);
        assert_eq!(evs.len(), 3);
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_on_push_and_close() {
        let s = Spool::new(64);
        let mut sub = s.subscribe(None);
        let writer = s.clone();
        let t = tokio::spawn(async move {
            tokio::task::yield_now().await;
            writer.push(Stream::Stdout, b"x");
            writer.close();
        });
        assert!(matches!(sub.next().await, Some(OutputEvent::Data { .. })));
        assert_eq!(sub.next().await, Some(OutputEvent::End));
        assert_eq!(sub.next().await, None);
        t.await.unwrap();
    }

    /// On disk the ring wraps: a reader that keeps within the window gets every byte in order;
    /// one that falls behind gets exactly the missing count as `lagged`.
    #[test]
    fn an_on_disk_ring_wraps_without_losing_a_keeping_up_reader() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::on_disk(8, dir.path(), "cell").unwrap();
        let mut quick = s.subscribe(None);
        let mut slow = s.subscribe(None);
        let mut got = Vec::new();
        let all: Vec<u8> = (0..100u8).collect();
        for chunk in all.chunks(3) {
            s.push(Stream::Stdout, chunk);
            for ev in ready(&mut quick) {
                got.extend_from_slice(data(&ev).2);
            }
        }
        assert_eq!(got, all);
        let evs = ready(&mut slow);
        assert_eq!(evs[0], OutputEvent::Lagged { dropped: 92 });
        assert_eq!(data(&evs[1]), (Stream::Stdout, 92, &all[92..]));
        assert_eq!(s.snapshot(Stream::Stdout), (all[92..].to_vec(), true));
        drop((s, quick, slow));
        assert!(!dir.path().join("cell").exists());
    }
}
