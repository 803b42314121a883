//! Pre-built cells (`[pool] prewarm = N` in a provider's policy): the pool keeps up to N cells
//! of that provider built and waiting, and a launch takes one instead of building a cell
//! (`sandbox::warm` builds and activates them).
//!
//! Rules: a pre-built cell holds a slot like any cell (the cap counts it), and a launch that
//! finds the cap full retires one to make room — one still being built too, once it is built
//! (the launch waits for it), and no build starts while a launch waits for a slot: a request
//! takes precedence over pre-building; it is built for the provider's policy of the
//! moment (a reload retires every pre-built cell and builds new ones); it lives at most the
//! provider's idle timeout (the reaper retires it, and a fresh one is built); it takes
//! exactly one request (taken out of the pool before it is activated); shutdown retires them
//! all. Refills happen in the background after a cell is taken, at start, after a reload and
//! when the reaper retires one; a failed build is logged and not retried until the next of
//! those (no hot loop against a broken policy).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::policy::{CommandVia, Mode, Policy};
use crate::sandbox::WarmCell;

use super::Pool;

/// A pre-built cell in the pool.
pub(super) struct Warm {
    pub policy: Arc<Policy>,
    pub cell: WarmCell,
}

impl Pool {
    /// Bring every provider's pre-built cells up to its `prewarm` (in the background).
    pub(super) fn refill_all(&self) {
        for p in self.policies().values().filter(|p| p.prewarm > 0 && p.is_launchable()) {
            self.refill(&p.name);
        }
    }

    /// Bring `provider`'s pre-built cells up to its `prewarm` (in the background).
    pub(super) fn refill(&self, provider: &str) {
        let pool = self.clone();
        let provider = provider.to_owned();
        tokio::spawn(async move { pool.fill(&provider).await });
    }

    async fn fill(&self, provider: &str) {
        loop {
            let Some(policy) = self.policies().get(provider).cloned() else { return };
            {
                let mut st = self.state();
                let have = st.warm.iter().filter(|w| Arc::ptr_eq(&w.policy, &policy)).count()
                    + st.warming.get(provider).copied().unwrap_or(0);
                // A launch waiting for a slot takes the one freed first: pre-building waits.
                let full = st.used_slots >= self.inner.config.max_cells || st.slots_wanted > 0;
                if have >= policy.prewarm as usize || full || self.inner.shutting_down.load(Ordering::SeqCst) {
                    return;
                }
                st.used_slots += 1;
                *st.warming.entry(provider.to_owned()).or_default() += 1;
            }
            let id = uuid::Uuid::now_v7().simple().to_string();
            // A session's commands, or a one-shot's under command_via = "stdin", go to a pipe.
            let stdin = policy.mode == Mode::Session || policy.command_via == CommandVia::Stdin;
            let built = self.inner.launcher.prewarm(&policy, id, stdin).await;
            let current = self.policies().get(provider).is_some_and(|p| Arc::ptr_eq(p, &policy));
            // Kept only if its policy still serves and the pool is not shutting down, checked
            // under the state lock (shutdown sets its flag before it takes the lock to retire
            // the pre-built cells, so a cell is either seen by it or never added). A cell not
            // kept is retired before it stops counting as being built: shutdown waits for that
            // count, so nothing of it is left when the daemon exits.
            let keep = {
                let mut st = self.state();
                match built {
                    Ok(cell) if current && !self.inner.shutting_down.load(Ordering::SeqCst) => {
                        tracing::debug!(cell = cell.id(), provider, "pre-built a cell");
                        st.warm.push(Warm { policy: policy.clone(), cell });
                        Self::built_one(&mut st, provider);
                        None
                    }
                    Ok(cell) => Some(Ok(cell)),
                    Err(e) => Some(Err(e)),
                }
            };
            match keep {
                None => {
                    self.inner.reaper_wake.notify_one();
                    // A launch that found the cap full while this was built waits for it, to
                    // take its slot (see `Pool::reserve_slot`).
                    self.inner.slot_freed.notify_waiters();
                }
                Some(Ok(stale)) => {
                    stale.retire().await;
                    Self::built_one(&mut self.state(), provider);
                    self.release_slot();
                    return;
                }
                Some(Err(e)) => {
                    tracing::warn!(provider, "could not pre-build a cell: {e}");
                    Self::built_one(&mut self.state(), provider);
                    self.release_slot();
                    return;
                }
            }
        }
    }

    /// One build of `provider` is over (kept, retired or failed).
    fn built_one(st: &mut super::State, provider: &str) {
        if let Some(n) = st.warming.get_mut(provider) {
            *n = n.saturating_sub(1);
        }
    }

    /// A pre-built cell for `policy` (the one served now) with the stdin it needs; it keeps
    /// its slot, which passes to the launch.
    pub(super) fn take_warm(&self, policy: &Arc<Policy>, stdin: bool) -> Option<Warm> {
        let mut st = self.state();
        let at = st.warm.iter().position(|w| Arc::ptr_eq(&w.policy, policy) && w.cell.stdin == stdin)?;
        Some(st.warm.swap_remove(at))
    }

    /// Put back a pre-built cell a launch did not use; once shutdown has begun, or when a
    /// reload replaced the policy it was built for, retire it instead (shutdown, or the
    /// reload, may have retired the pre-built cells already, while this one was out: put back,
    /// it would outlive the daemon, or hold a slot no request can use until its idle time).
    /// Checked under the state lock, as `fill` does: shutdown sets its flag, and a reload
    /// swaps the policies, before either takes the lock to retire them.
    pub(super) async fn put_back(&self, warm: Warm) {
        let stale = {
            let mut st = self.state();
            let served = self.policies().get(&warm.policy.name).is_some_and(|p| Arc::ptr_eq(p, &warm.policy));
            if self.inner.shutting_down.load(Ordering::SeqCst) || !served {
                warm
            } else {
                st.warm.push(warm);
                return;
            }
        };
        tracing::debug!(cell = stale.cell.id(), provider = %stale.policy.name, "retiring a pre-built cell given back at shutdown or after a reload");
        stale.cell.retire().await;
        self.release_slot();
    }

    /// Retire the pre-built cells `which` selects, releasing their slots.
    pub(super) async fn retire_warm(&self, which: impl Fn(&Warm) -> bool) -> usize {
        let gone: Vec<Warm> = {
            let mut st = self.state();
            let (gone, kept) = std::mem::take(&mut st.warm).into_iter().partition(|w| which(w));
            st.warm = kept;
            gone
        };
        let n = gone.len();
        for w in gone {
            tracing::debug!(cell = w.cell.id(), provider = %w.policy.name, "retiring a pre-built cell");
            w.cell.retire().await;
            self.release_slot();
        }
        n
    }

    /// The cap is full: retire the oldest pre-built cell, if there is one, so a launch can
    /// have its slot. True if one was retired.
    pub(super) async fn make_room(&self) -> bool {
        let oldest = self.state().warm.iter().map(|w| w.cell.built).min();
        match oldest {
            Some(at) => self.retire_warm(|w| w.cell.built == at).await > 0,
            None => false,
        }
    }

    /// The reaper's part: pre-built cells older than their provider's idle timeout, retired
    /// and replaced by fresh ones. Returns when the next one is due.
    pub(super) fn expire_warm(&self, now: Instant) -> Option<Instant> {
        let (expired, next) = {
            let st = self.state();
            let expired = st.warm.iter().any(|w| self.warm_due(w) <= now);
            (expired, st.warm.iter().map(|w| self.warm_due(w)).filter(|t| *t > now).min())
        };
        if expired {
            let pool = self.clone();
            tokio::spawn(async move {
                let providers: Vec<String> = {
                    let st = pool.state();
                    st.warm.iter().filter(|w| pool.warm_due(w) <= now).map(|w| w.policy.name.clone()).collect()
                };
                pool.retire_warm(|w| pool.warm_due(w) <= now).await;
                for p in providers {
                    pool.refill(&p);
                }
            });
        }
        next
    }

    /// When a pre-built cell is retired: its provider's idle timeout after it was built.
    fn warm_due(&self, w: &Warm) -> Instant {
        w.cell.built + super::idle_timeout_of(&w.policy, &self.inner.config).0
    }

    /// Shutdown: retire every pre-built cell, and wait (up to `within`) for those being built,
    /// which retire themselves once built (they see the pool shutting down).
    pub(super) async fn retire_all_warm(&self, within: std::time::Duration) {
        self.retire_warm(|_| true).await;
        let until = Instant::now() + within;
        while self.state().warming.values().any(|n| *n > 0) && Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Pre-built cells ready now.
    pub(super) fn warm_count(&self) -> usize {
        self.state().warm.len()
    }
}
