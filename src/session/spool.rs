//! The per-cell output spool: the last `cap` bytes of a cell's stdout and stderr, in the order
//! they were read, with live fan-out to any number of readers.
//!
//! Offsets number every byte the cell ever wrote (both streams share one sequence), so a reader
//! that reconnects asks for `from = last offset + length` and gets exactly what it missed, as
//! long as the spool still holds it. Writers never wait for readers: when the spool is full the
//! oldest bytes go, and a reader positioned before the first kept byte gets one
//! `Lagged { dropped }` event and continues from the oldest kept byte. Memory is bounded by
//! `cap` plus the chunk a reader is holding.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputEvent {
    Data { stream: Stream, offset: u64, data: Bytes },
    /// `dropped` bytes were no longer in the spool when this reader got to them.
    Lagged { dropped: u64 },
    /// The cell's output is complete.
    End,
}

struct Chunk {
    offset: u64,
    stream: Stream,
    data: Bytes,
}

impl Chunk {
    fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }
}

#[derive(Default)]
struct State {
    chunks: VecDeque<Chunk>,
    /// Offset of the first kept byte.
    first: u64,
    /// Offset one past the last byte ever pushed.
    end: u64,
    /// Some bytes of this stream were dropped (stdout, stderr).
    dropped: [bool; 2],
    closed: bool,
}

struct Shared {
    cap: usize,
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
    pub fn new(cap: usize) -> Spool {
        Spool { shared: Arc::new(Shared { cap, state: Mutex::new(State::default()), changed: Notify::new() }) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Append output; drops the oldest bytes beyond the cap. Never waits. Returns the offset
    /// of the chunk's first byte.
    pub fn push(&self, stream: Stream, data: &[u8]) -> u64 {
        let cap = self.shared.cap as u64;
        let offset;
        {
            let mut st = self.state();
            offset = st.end;
            if data.is_empty() {
                return offset;
            }
            st.end += data.len() as u64;
            // Keep only the tail that fits.
            let keep = (data.len() as u64).min(cap) as usize;
            if keep > 0 {
                let start = data.len() - keep;
                st.chunks.push_back(Chunk { offset: offset + start as u64, stream, data: Bytes::copy_from_slice(&data[start..]) });
            }
            if keep < data.len() {
                st.dropped[index(stream)] = true;
            }
            let new_first = st.end.saturating_sub(cap);
            while let Some(front) = st.chunks.front_mut() {
                if front.end() <= new_first {
                    let s = front.stream;
                    st.dropped[index(s)] = true;
                    st.chunks.pop_front();
                } else {
                    if front.offset < new_first {
                        let cut = (new_first - front.offset) as usize;
                        front.data = front.data.slice(cut..);
                        front.offset = new_first;
                        let s = front.stream;
                        st.dropped[index(s)] = true;
                    }
                    break;
                }
            }
            st.first = st.first.max(new_first);
        }
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

    /// Everything still kept of one stream, and whether some of it was dropped.
    pub fn snapshot(&self, stream: Stream) -> (Vec<u8>, bool) {
        let st = self.state();
        let mut out = Vec::new();
        for c in st.chunks.iter().filter(|c| c.stream == stream) {
            out.extend_from_slice(&c.data);
        }
        (out, st.dropped[index(stream)])
    }

    /// A reader starting at `from` (default: the oldest kept byte).
    pub fn subscribe(&self, from: Option<u64>) -> Subscription {
        let pos = from.unwrap_or_else(|| self.state().first);
        Subscription { spool: self.clone(), pos, ended: false }
    }
}

/// Largest data event a reader gets when several chunks are waiting.
const COALESCE: usize = 256 * 1024;

/// One reader's position in a spool.
pub struct Subscription {
    spool: Spool,
    pos: u64,
    ended: bool,
}

impl Subscription {
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
        if self.ended {
            return None;
        }
        let st = self.spool.state();
        if self.pos < st.first {
            let dropped = st.first - self.pos;
            self.pos = st.first;
            return Some(OutputEvent::Lagged { dropped });
        }
        if self.pos < st.end {
            // The chunk holding `pos`: chunks are contiguous from `first` to `end`.
            let i = st.chunks.partition_point(|c| c.end() <= self.pos);
            if let Some(c) = st.chunks.get(i) {
                let first = c.data.slice((self.pos - c.offset) as usize..);
                // A reader that is behind gets the following chunks of the same stream in the
                // same event (up to COALESCE bytes): fewer, larger events when output is fast.
                let more = st.chunks.range(i + 1..).take_while(|n| n.stream == c.stream);
                let mut end = c.end();
                let mut data = first.clone();
                let mut merged: Option<bytes::BytesMut> = None;
                for n in more {
                    if (end - self.pos) as usize + n.data.len() > COALESCE {
                        break;
                    }
                    merged.get_or_insert_with(|| bytes::BytesMut::from(&first[..])).extend_from_slice(&n.data);
                    end = n.end();
                }
                if let Some(m) = merged {
                    data = m.freeze();
                }
                let ev = OutputEvent::Data { stream: c.stream, offset: self.pos, data };
                self.pos = end;
                return Some(ev);
            }
        }
        if st.closed {
            self.ended = true;
            return Some(OutputEvent::End);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

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
}
