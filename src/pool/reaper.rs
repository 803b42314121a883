//! The pool's one timer: idle reaping and the retention of exited cells. It sleeps until the
//! earliest deadline (or until woken because deadlines changed), acts, and re-plans — no
//! periodic polling.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::sandbox::{ExitReason, Stop};

use super::Inner;

pub(super) async fn run(pool: Weak<Inner>, wake_on: Arc<tokio::sync::Notify>) {
    loop {
        let wake = wake_on.notified();
        let Some(inner) = pool.upgrade() else { return };
        let warm_next = super::Pool { inner: inner.clone() }.expire_warm(Instant::now());
        let next = [sweep(&inner), warm_next].into_iter().flatten().min();
        drop(inner);
        match next {
            Some(at) => {
                let _ = tokio::time::timeout_at(at.into(), wake).await;
            }
            None => wake.await,
        }
    }
}

/// Stop idle cells, forget exited ones past retention (by age, then by count and output
/// bytes); return the next deadline.
fn sweep(inner: &Inner) -> Option<Instant> {
    let now = Instant::now();
    let mut next: Option<Instant> = None;
    let mut soonest = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
    let mut st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
    let retention = inner.config.exited_retention;
    st.cells.retain(|_, e| e.exited_at().is_none_or(|at| now.duration_since(at) < retention));
    let exited = st.cells.values().filter_map(|e| {
        let (first, end) = e.spool.kept();
        e.exited_at().map(|at| Exited { owner: e.owner_uid, at, bytes: end - first, id: e.id.clone() })
    });
    for id in over_bounds(exited.collect(), inner.config.exited_retention_max, inner.config.exited_output_max) {
        st.cells.remove(&id);
    }
    for at in st.cells.values().filter_map(|e| e.exited_at()) {
        soonest(at + retention);
    }
    for e in st.cells.values() {
        if e.exit_reason().is_some() {
            continue;
        }
        let (idle_timeout, _) = super::idle_timeout_of(&e.policy, &inner.config);
        if !e.session {
            // A one-shot cell is its command: running is working, quiet or not. Its wall-time
            // limit (or the command's timeout) bounds it, not the idle clock.
            continue;
        }
        // Busy (a command running) or not idle long enough: look again when it could be.
        match e.stop_if_idle(idle_timeout, || Stop::Graceful { grace: inner.config.grace, reason: ExitReason::Idle }) {
            Ok(idle) => tracing::info!(cell = %e.id, provider = %e.provider, ?idle, "reaped idle cell"),
            Err(after) => soonest(now + after.max(Duration::from_millis(1)) + Duration::from_millis(1)),
        }
    }
    next
}

/// An exited cell, as retention weighs it.
struct Exited {
    owner: u32,
    at: Instant,
    bytes: u64,
    id: String,
}

/// The exited cells to forget so that at most `max` stay, holding at most `max_bytes` of
/// output: each time the oldest of the owner that holds the most (cells past the count
/// bound, bytes past the byte bound), so one user's flood of one-shots pushes out its own
/// results, not everyone's.
fn over_bounds(exited: Vec<Exited>, max: usize, max_bytes: u64) -> Vec<String> {
    let (mut count, mut bytes) = (exited.len(), exited.iter().map(|e| e.bytes).sum::<u64>());
    let mut by_owner: std::collections::HashMap<u32, Vec<Exited>> = Default::default();
    for e in exited {
        by_owner.entry(e.owner).or_default().push(e);
    }
    for cells in by_owner.values_mut() {
        // Newest first, so the oldest is popped from the end.
        cells.sort_unstable_by_key(|e| std::cmp::Reverse(e.at));
    }
    let mut gone = Vec::new();
    while count > max || bytes > max_bytes {
        let by_bytes = count <= max;
        let weight =
            |cells: &Vec<Exited>| if by_bytes { cells.iter().map(|e| e.bytes).sum() } else { cells.len() as u64 };
        // Ties go to the owner whose oldest cell is older (HashMap order is random).
        let oldest = |cells: &Vec<Exited>| std::cmp::Reverse(cells.last().map(|e| e.at));
        let Some(cells) = by_owner.values_mut().filter(|c| !c.is_empty()).max_by_key(|c| (weight(c), oldest(c))) else {
            break;
        };
        let Some(e) = cells.pop() else { break };
        count -= 1;
        bytes -= e.bytes;
        gone.push(e.id);
    }
    gone
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(owner: u32, age_s: u64, bytes: u64, id: &str) -> Exited {
        Exited { owner, at: Instant::now() - Duration::from_secs(age_s), bytes, id: id.to_owned() }
    }

    #[test]
    fn the_owner_holding_the_most_gives_up_its_oldest() {
        // Root's one result, older than all of the flood: kept.
        let cells = vec![cell(0, 100, 10, "root"), cell(7, 3, 10, "a"), cell(7, 2, 10, "b"), cell(7, 1, 10, "c")];
        assert_eq!(over_bounds(cells, 3, u64::MAX), vec!["a".to_owned()]);
        // By bytes: the owner whose output is largest, oldest first.
        let cells = vec![cell(0, 100, 100, "root"), cell(7, 3, 400, "a"), cell(7, 2, 400, "b")];
        assert_eq!(over_bounds(cells, 10, 600), vec!["a".to_owned()]);
        // Nothing kept at all with max 0.
        // A tie goes to the owner whose oldest cell is older, whatever the map's order.
        for _ in 0..20 {
            let cells = vec![cell(0, 5, 1, "root"), cell(7, 9, 1, "older")];
            assert_eq!(over_bounds(cells, 1, u64::MAX), vec!["older".to_owned()]);
        }
        let cells = vec![cell(0, 1, 0, "x"), cell(1, 1, 0, "y")];
        assert_eq!(over_bounds(cells, 0, u64::MAX).len(), 2);
        assert!(over_bounds(vec![cell(0, 1, 5, "x")], 1, 5).is_empty());
    }
}
