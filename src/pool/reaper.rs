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

/// Stop idle cells, forget exited ones past retention (by age, then by count); return the
/// next deadline.
fn sweep(inner: &Inner) -> Option<Instant> {
    let now = Instant::now();
    let mut next: Option<Instant> = None;
    let mut soonest = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
    let mut st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
    let retention = inner.config.exited_retention;
    // Past the count bound, the oldest exited cells go first, whatever their age.
    let mut exited: Vec<Instant> = st.cells.values().filter_map(|e| e.exited_at()).collect();
    let max = inner.config.exited_retention_max;
    let oldest_kept = (exited.len() > max).then(|| {
        exited.sort_unstable();
        exited[exited.len() - max.max(1)]
    });
    st.cells.retain(|_, e| match e.exited_at() {
        Some(at) if now.duration_since(at) >= retention => false,
        Some(at) if max == 0 || oldest_kept.is_some_and(|keep| at < keep) => false,
        Some(at) => {
            soonest(at + retention);
            true
        }
        None => true,
    });
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
        if e.is_busy() {
            // A command is running; look again one idle period after it last touched the cell.
            soonest(now + idle_timeout.max(Duration::from_millis(1)));
            continue;
        }
        let idle = e.idle_for();
        if idle >= idle_timeout {
            tracing::info!(cell = %e.id, provider = %e.provider, ?idle, "reaping idle cell");
            e.request_stop(Stop::Graceful { grace: inner.config.grace, reason: ExitReason::Idle });
        } else {
            soonest(now + (idle_timeout - idle) + Duration::from_millis(1));
        }
    }
    next
}
