//! The egress proxy: the only way out of a cell whose policy says `network.mode = "proxy"`.
//!
//! Every cell has its own network namespace with only `lo`. For a `proxy` cell the launcher
//! opens a listening socket on `127.0.0.1:`[`crate::policy::PROXY_PORT`] *inside the cell's
//! namespace* (see `sandbox::launch`) and hands it to [`EgressService::serve`], which runs in
//! the daemon (host namespace) on tokio. The payload gets `HTTPS_PROXY`/`HTTP_PROXY` pointing
//! at it. A program that ignores the variables has no route anywhere; one that uses them can
//! reach exactly the names of the policy's `network.egress` (`"learn"`: any name, reported).
//!
//! The proxy speaks HTTP `CONNECT` (HTTPS and any TLS protocol tunnelled the same way; plain
//! `http://` forwarding is refused with 405). It resolves names itself (the cell has no DNS),
//! refuses IP literals unless the policy lists that address, never connects to loopback,
//! link-local, cloud metadata, reserved or multicast addresses nor to the host's own addresses
//! (and, for a name not listed exactly, to private networks: see
//! `crate::policy::egress::may_reach`), answers a refusal with `403` and a
//! body that names the rule, reads a TLS ClientHello sent through a tunnel before it goes on
//! and cuts the tunnel when it asks the server for a name the policy does not allow (domain
//! fronting), and records every decision — cell, provider, name, port, bytes
//! each way, allowed or denied — in the daemon's log and in the cell's `egress` events.
//!
//! Tests map names to addresses in the proxy's own resolver ([`EgressConfig::hosts`], the
//! daemon setting `egress_hosts`); the host's resolver files are never touched. A mapped
//! address is trusted (loopback for the tests' local servers, an internal mirror) only where the
//! cell's policy lists that name exactly on that port; elsewhere it is checked like any other.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the service, per-cell state and its events |
//! | [`proxy`] | one client connection: request head, decision, resolve, tunnel |
//! | [`hello`] | the server names of a TLS ClientHello sent through a tunnel |
//! | [`splice`] | the tunnel's zero-copy byte pump (`splice(2)` through a pipe) |
//!
//! Bounds, so that one cell cannot wear the daemon down: at most 32 connections per cell at
//! once, a request head of 16 KiB read in 30 s, names that are DNS names or IP addresses (the
//! C resolver's numeric forms such as `2130706433` are refused), client text clipped to 200
//! characters in the log and events, 1000 tunnel and 1000 refusal events (the newest 250 of
//! each once the cell has ended) and 1000 destinations kept per cell, name lookups (blocking `getaddrinfo`) at most 4 per cell at
//! once, at most half the daemon's per caller (a lookup outlives its cell: cells started and
//! ended over and over cannot hold every lookup), and 4 per cell of the pool in the daemon,
//! up to 256, so no few cells and no one caller can take every lookup.
//!
//! The record cannot be blurred by the cell it records: tunnels and refusals are logged on
//! budgets of their own (100 lines each per cell and 1000 for all cells, per 10 s; the rest
//! counted), so a flood of refused requests never hides a tunnel; and at the cell's end one
//! summary gives every destination it reached — tunnels, bytes each way — whatever the log
//! budget left out or the event rings dropped (tunnels still open then included).

pub mod hello;
pub mod proxy;
pub mod splice;

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::policy::egress::Egress;

/// Events kept per cell (the oldest are dropped beyond this; the log has them all).
const MAX_EVENTS: usize = 1000;
/// Events of each kind an ended cell keeps (the newest): it stays listed a while (up to
/// `exited_retention_max` cells), and 2000 events of ~500 bytes each pinned ~1 MB of the
/// daemon's memory per cell. The log had them, and the summary at the end has every
/// destination.
const EVENTS_AFTER_END: usize = 250;
/// Client connections served at once per cell; more wait for a free slot. Each holds two
/// sockets (their buffers bounded: see `proxy::TUNNEL_SOCKET_BUFFER`) and two pipes in the
/// daemon, outside the cell's limits: 32 is ample for an agent or an npm install (15 at a
/// time; the load test runs 10 per cell) and bounds what one cell can pin (~64 MiB).
const MAX_CONNECTIONS_PER_CELL: usize = 32;
/// Name lookups running at once in the daemon, at most (see [`EgressService`]).
const MAX_LOOKUPS: usize = 256;
/// Distinct destinations kept for the learned draft list (each at most 253 + 6 bytes).
const MAX_LEARNED: usize = 1000;

/// Daemon-wide settings of the proxy.
#[derive(Debug, Clone, Default)]
pub struct EgressConfig {
    /// Names the proxy resolves to these addresses instead of asking DNS (tests, an internal
    /// mirror). The address is trusted (loopback included) only where the cell's policy lists
    /// the name exactly on that port (`proxy::judgement`).
    pub hosts: BTreeMap<String, IpAddr>,
    /// The pool's cap on cells: name lookups in the daemon are bounded by it (see
    /// [`proxy::MAX_LOOKUPS_PER_CELL`]).
    pub max_cells: usize,
}

/// The daemon's egress proxy: cheap to clone.
#[derive(Debug, Clone)]
pub struct EgressService {
    config: Arc<EgressConfig>,
    /// Name lookups running at once in the daemon (each blocks a thread of the runtime's
    /// blocking pool, shared with the daemon's own work, until `getaddrinfo` returns, which no
    /// timeout can cut short): the per-cell share times the cap on cells, so that every cell
    /// can always look up as many names as one cell may (a few cells asking for names whose
    /// servers never answer cannot hold every lookup), but at most [`MAX_LOOKUPS`], half the
    /// blocking pool's 512 threads, which the daemon's own blocking work needs too.
    lookups: Arc<tokio::sync::Semaphore>,
    /// Each caller's share of `lookups` (see [`EgressService::caller_share`]), by uid.
    per_caller: Arc<Mutex<BTreeMap<Option<u32>, Arc<tokio::sync::Semaphore>>>>,
}

impl Default for EgressService {
    fn default() -> Self {
        EgressService::new(EgressConfig::default())
    }
}

/// One decision of the proxy, as kept in the cell's events and logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressEvent {
    /// Unix time in milliseconds of the request.
    pub at_ms: u64,
    /// The name (or address) the cell asked for, as the proxy compared it.
    pub name: String,
    pub port: u16,
    pub allowed: bool,
    /// Why it was denied or failed (`None` for a tunnel that ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Bytes from the cell to the destination and back (0 when denied).
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// The proxy's state for one cell; shared by the accept loop and the pool's view of the cell.
#[derive(Debug)]
pub struct CellEgress {
    pub cell: String,
    pub provider: String,
    pub egress: Egress,
    /// Tunnels (allowed) and refusals (denied), each ring bounded on its own: a flood of
    /// cheap refused requests cannot push the record of a tunnel out.
    events: Mutex<Rings>,
    /// Lines logged in the current window, and those left out, per [`Kind`].
    log_windows: Mutex<[LogWindow; 2]>,
    /// Every destination reached (a `network.egress` entry, in learn mode and list mode
    /// alike), with its totals; counted when its tunnel opens.
    destinations: Mutex<Destinations>,
    /// Name lookups of this cell running at once (see `proxy::resolve`).
    lookups: Arc<tokio::sync::Semaphore>,
    /// Its caller's (see [`EgressService::caller_share`]); a cell built ahead gets its
    /// caller's when it is activated ([`CellEgress::assign_caller`]).
    caller_lookups: Mutex<Arc<tokio::sync::Semaphore>>,
    /// The service it is served by (for its callers' shares).
    service: EgressService,
    /// The daemon's (see [`EgressService`]).
    daemon_lookups: Arc<tokio::sync::Semaphore>,
    stop: CancellationToken,
}

/// The right to run one name lookup: the cell's, its caller's and the daemon's permits, held
/// by the lookup's thread until `getaddrinfo` returns.
pub(crate) type LookupPermits =
    (tokio::sync::OwnedSemaphorePermit, tokio::sync::OwnedSemaphorePermit, tokio::sync::OwnedSemaphorePermit);

impl CellEgress {
    /// From now on the cell's name lookups are `uid`'s: they draw on that caller's share (a
    /// cell built ahead is served for nobody until its request comes; see
    /// `Launcher::activate`). Lookups already running keep the permit they hold.
    pub fn assign_caller(&self, uid: u32) {
        let share = self.service.caller_lookups(Some(uid));
        *self.caller_lookups.lock().unwrap_or_else(|e| e.into_inner()) = share;
    }

    /// Wait for the right to run a name lookup (in the order cell, caller, daemon).
    pub(crate) async fn lookup_permits(&self) -> std::io::Result<LookupPermits> {
        let closed = |_| std::io::Error::other("the proxy is shutting down");
        let cell = self.lookups.clone().acquire_owned().await.map_err(closed)?;
        let callers = self.caller_lookups.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let caller = callers.acquire_owned().await.map_err(closed)?;
        let daemon = self.daemon_lookups.clone().acquire_owned().await.map_err(closed)?;
        Ok((cell, caller, daemon))
    }
}

impl EgressService {
    pub fn new(config: EgressConfig) -> EgressService {
        let lookups = (proxy::MAX_LOOKUPS_PER_CELL * config.max_cells.max(1)).min(MAX_LOOKUPS);
        EgressService {
            config: Arc::new(config),
            lookups: Arc::new(tokio::sync::Semaphore::new(lookups)),
            per_caller: Default::default(),
        }
    }

    /// How many of the daemon's name lookups one caller's cells may run at once: half of
    /// them (at least one cell's worth). A lookup holds its thread until `getaddrinfo`
    /// returns, after its cell has ended too: without this bound, one caller starting cells
    /// that ask for names whose servers never answer, over and over, held every lookup of
    /// the daemon, and every other cell's proxy answered 502.
    pub fn caller_share(&self) -> usize {
        let total = (proxy::MAX_LOOKUPS_PER_CELL * self.config.max_cells.max(1)).min(MAX_LOOKUPS);
        (total / 2).max(proxy::MAX_LOOKUPS_PER_CELL)
    }

    /// The lookup bound of `caller`'s cells (`None`: cells built ahead, until they are
    /// activated: see [`CellEgress::assign_caller`]), made on first use;
    /// those no cell and no running lookup holds any more are dropped as it is.
    fn caller_lookups(&self, caller: Option<u32>) -> Arc<tokio::sync::Semaphore> {
        let share = self.caller_share();
        let mut map = self.per_caller.lock().unwrap_or_else(|e| e.into_inner());
        // Held by a cell's proxy or by a running lookup's permit (each holds the `Arc`).
        map.retain(|_, s| Arc::strong_count(s) > 1);
        map.entry(caller).or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(share))).clone()
    }

    /// How many name lookups may run at once in the daemon.
    pub fn lookup_capacity(&self) -> usize {
        self.lookups.available_permits()
    }

    pub fn config(&self) -> &EgressConfig {
        &self.config
    }

    /// Serve `listener` (already bound in the cell's network namespace) for one cell until
    /// [`CellEgress::stop`]. Must be called inside a tokio runtime.
    pub fn serve(
        &self,
        listener: tokio::net::TcpListener,
        cell: &str,
        provider: &str,
        egress: Egress,
        caller: Option<u32>,
    ) -> Arc<CellEgress> {
        let state = Arc::new(CellEgress {
            cell: cell.to_owned(),
            provider: provider.to_owned(),
            egress,
            events: Mutex::new(Rings::default()),
            log_windows: Mutex::new(Default::default()),
            destinations: Mutex::new(Destinations::default()),
            lookups: Arc::new(tokio::sync::Semaphore::new(proxy::MAX_LOOKUPS_PER_CELL)),
            caller_lookups: Mutex::new(self.caller_lookups(caller)),
            service: self.clone(),
            daemon_lookups: self.lookups.clone(),
            stop: CancellationToken::new(),
        });
        tokio::spawn(accept_loop(listener, state.clone(), self.config.clone()));
        state
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, state: Arc<CellEgress>, config: Arc<EgressConfig>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS_PER_CELL));
    loop {
        let permit = tokio::select! {
            _ = state.stop.cancelled() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let conn = tokio::select! {
            _ = state.stop.cancelled() => break,
            c = listener.accept() => c,
        };
        match conn {
            Ok((stream, _)) => {
                let (state, config) = (state.clone(), config.clone());
                tokio::spawn(async move {
                    let stop = state.stop.clone();
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = proxy::handle(stream, &state, &config) => {}
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(cell = %state.cell, "egress proxy accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    // The listener (and with it the last reference to the cell's network namespace held by
    // the daemon) is dropped here.
}

impl CellEgress {
    /// Stop accepting and end every tunnel of the cell (at the end of the cell).
    pub fn stop(&self) {
        self.stop.cancel();
        {
            let mut rings = self.events.lock().unwrap_or_else(|e| e.into_inner());
            let Rings { allowed, denied } = &mut *rings;
            for ring in [allowed, denied] {
                let extra = ring.len().saturating_sub(EVENTS_AFTER_END);
                ring.drain(..extra);
                ring.shrink_to_fit();
            }
        }
        let suppressed: u32 =
            self.log_windows.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|w| w.suppressed).sum();
        if suppressed > 0 {
            tracing::warn!(cell = %self.cell, provider = %self.provider, suppressed,
                "egress: {suppressed} decisions of this cell were not logged (more than {LOGGED_PER_CELL} tunnel or refusal lines in {LOG_WINDOW:?}); the destinations below and its events keep them");
        }
        self.log_destinations();
        if let Egress::Learn = self.egress {
            let names = self.learned();
            tracing::info!(
                cell = %self.cell, provider = %self.provider, names = names.len(),
                "egress learned for provider {}: egress = {:?}", self.provider, names
            );
        }
    }

    /// The decisions so far, oldest first (at most the last 1000 tunnels and 1000 refusals; 250 each once the cell has ended).
    pub fn events(&self) -> Vec<EgressEvent> {
        let rings = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<EgressEvent> = rings.allowed.iter().chain(rings.denied.iter()).cloned().collect();
        all.sort_by_key(|e| e.at_ms);
        all
    }

    /// The allowed destinations contacted so far, as `network.egress` entries (a draft list).
    pub fn learned(&self) -> Vec<String> {
        self.destinations.lock().unwrap_or_else(|e| e.into_inner()).each.keys().cloned().collect()
    }

    /// A tunnel to `name:port` is open: its destination is learned and counted now (not when
    /// it closes: the cell may end first), and its live byte counters are kept until
    /// [`CellEgress::closed`], so a summary taken while it is open has its bytes so far.
    pub(crate) fn opened(&self, name: &str, port: u16, moved: Arc<splice::Moved>) -> u64 {
        let entry = destination(name, port);
        let mut d = self.destinations.lock().unwrap_or_else(|e| e.into_inner());
        let listed = d.each.len() < MAX_LEARNED || d.each.contains_key(&entry);
        if listed {
            d.each.entry(entry.clone()).or_default().tunnels += 1;
        } else {
            d.beyond.tunnels += 1;
            if d.beyond.tunnels == 1 {
                tracing::warn!(cell = %self.cell, provider = %self.provider,
                    "egress: more than {MAX_LEARNED} distinct destinations; {entry} and any further new ones are counted together, not listed");
            }
        }
        d.next_tunnel += 1;
        let id = d.next_tunnel;
        d.open.insert(id, (listed.then_some(entry), moved));
        id
    }

    /// Tunnel `id` (from [`CellEgress::opened`]) ended: its bytes go to its destination's
    /// totals, and its event is recorded.
    pub(crate) fn closed(&self, id: u64, event: EgressEvent) {
        {
            let mut guard = self.destinations.lock().unwrap_or_else(|e| e.into_inner());
            let d = &mut *guard;
            if let Some((entry, _)) = d.open.remove(&id) {
                let totals = match entry.as_ref().and_then(|e| d.each.get_mut(e)) {
                    Some(t) => t,
                    None => &mut d.beyond,
                };
                totals.bytes_up += event.bytes_up;
                totals.bytes_down += event.bytes_down;
            }
        }
        self.record(event);
    }

    /// Log one decision and keep it in the cell's events.
    pub(crate) fn record(&self, event: EgressEvent) {
        if self.may_log(if event.allowed { Kind::Tunnel } else { Kind::Refusal }) {
            self.log(&event);
        }
        self.keep(event);
    }

    /// Every destination of the cell with its totals, 50 to a line (at most 21 lines: 1000
    /// destinations and those beyond), whatever the log budget let through; a tunnel still
    /// open counts with the bytes it moved so far.
    fn log_destinations(&self) {
        let d = self.destinations.lock().unwrap_or_else(|e| e.into_inner());
        let mut each = d.each.clone();
        let mut beyond = d.beyond;
        for (entry, moved) in d.open.values() {
            let (up, down) = moved.total();
            let totals = match entry.as_ref().and_then(|e| each.get_mut(e)) {
                Some(t) => t,
                None => &mut beyond,
            };
            totals.bytes_up += up;
            totals.bytes_down += down;
        }
        drop(d);
        let mut items: Vec<String> = each.iter().map(|(name, t)| format!("{name} {t}")).collect();
        if beyond.tunnels > 0 {
            items.push(format!("(more destinations, not listed) {beyond}"));
        }
        let parts = items.len().div_ceil(50);
        for (i, chunk) in items.chunks(50).enumerate() {
            tracing::info!(cell = %self.cell, provider = %self.provider,
                "egress destinations ({}/{parts}): {}", i + 1, chunk.join(", "));
        }
    }

    fn log(&self, event: &EgressEvent) {
        tracing::info!(
            cell = %self.cell,
            provider = %self.provider,
            name = %event.name,
            port = event.port,
            allowed = event.allowed,
            bytes_up = event.bytes_up,
            bytes_down = event.bytes_down,
            detail = event.detail.as_deref().unwrap_or(""),
            "egress {}",
            if event.allowed { "allowed" } else { "denied" }
        );
    }

    fn keep(&self, event: EgressEvent) {
        let mut rings = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let ring = if event.allowed { &mut rings.allowed } else { &mut rings.denied };
        if ring.len() >= MAX_EVENTS {
            ring.pop_front();
        }
        ring.push_back(event);
    }

    /// Whether a line about this cell's egress goes to the log: at most [`LOGGED_PER_CELL`]
    /// per cell and [`LOGGED_PER_DAEMON`] for all cells in each [`LOG_WINDOW`], on separate
    /// budgets for tunnels (opened and closed) and refusals (one cell opened 10,000 tunnels in
    /// 5 s; a flood of refused requests must not silence the tunnel that follows it). The rest
    /// are counted, and the count logged when the next window opens (the destinations logged
    /// at the cell's end and its events keep them).
    pub(crate) fn may_log(&self, kind: Kind) -> bool {
        let what = kind.lines();
        let cell = self.log_windows.lock().unwrap_or_else(|e| e.into_inner())[kind as usize].admit(LOGGED_PER_CELL);
        if let Some(n) = cell.suppressed {
            tracing::warn!(cell = %self.cell, provider = %self.provider, suppressed = n,
                "egress: {n} {what} of this cell were not logged (more than {LOGGED_PER_CELL} in {LOG_WINDOW:?}); its events keep the last {MAX_EVENTS}");
        }
        if !cell.admitted {
            // Over its own budget: a flooding cell does not use up the other cells' share.
            return false;
        }
        let daemon =
            DAEMON_LOG_WINDOWS.lock().unwrap_or_else(|e| e.into_inner())[kind as usize].admit(LOGGED_PER_DAEMON);
        if let Some(n) = daemon.suppressed {
            tracing::warn!(suppressed = n,
                "egress: {n} {what} of all cells were not logged (more than {LOGGED_PER_DAEMON} in {LOG_WINDOW:?}); each cell's events keep them");
        }
        daemon.admitted
    }
}

/// Which log budget an egress line draws on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Tunnel = 0,
    Refusal = 1,
}

impl Kind {
    fn lines(self) -> &'static str {
        match self {
            Kind::Tunnel => "tunnel lines",
            Kind::Refusal => "refusals",
        }
    }
}

/// `name:port` as a `network.egress` entry (the port left out when it is 443, an IPv6
/// address in brackets when a port follows).
fn destination(name: &str, port: u16) -> String {
    crate::policy::egress::EgressRule { host: name.to_owned(), wildcard: false, port }.to_string()
}

/// What a cell moved to one destination.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    tunnels: u64,
    bytes_up: u64,
    bytes_down: u64,
}

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tunnels={} bytes_up={} bytes_down={}", self.tunnels, self.bytes_up, self.bytes_down)
    }
}

/// A cell's destinations: the first [`MAX_LEARNED`] by name, the rest counted together; and
/// its open tunnels (their destination, `None` if counted beyond, and their live counters).
#[derive(Debug, Default)]
struct Destinations {
    each: BTreeMap<String, Totals>,
    beyond: Totals,
    open: BTreeMap<u64, (Option<String>, Arc<splice::Moved>)>,
    next_tunnel: u64,
}

/// A cell's kept decisions.
#[derive(Debug, Default)]
struct Rings {
    allowed: VecDeque<EgressEvent>,
    denied: VecDeque<EgressEvent>,
}

/// Egress lines logged per cell, and for the whole daemon, per window (a flood of tunnels or
/// refused requests must not flood the journal, whose rate limit is per unit: other cells'
/// lines, "cell ended" among them, would be lost with them).
const LOGGED_PER_CELL: u32 = 100;
const LOGGED_PER_DAEMON: u32 = 1000;
const LOG_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);
static DAEMON_LOG_WINDOWS: Mutex<[LogWindow; 2]> = Mutex::new([LogWindow::NEW, LogWindow::NEW]);

#[derive(Debug, Default)]
struct LogWindow {
    started: Option<std::time::Instant>,
    logged: u32,
    suppressed: u32,
}

/// One decision of a [`LogWindow`]: log this line?, and the count of lines left out in the
/// window that just closed, to report.
struct Admission {
    admitted: bool,
    suppressed: Option<u32>,
}

impl LogWindow {
    const NEW: LogWindow = LogWindow { started: None, logged: 0, suppressed: 0 };

    fn admit(&mut self, limit: u32) -> Admission {
        let now = std::time::Instant::now();
        let mut reported = None;
        if self.started.is_none_or(|t| now.duration_since(t) >= LOG_WINDOW) {
            reported = (self.suppressed > 0).then_some(self.suppressed);
            *self = LogWindow { started: Some(now), logged: 0, suppressed: 0 };
        }
        let admitted = self.logged < limit;
        if admitted {
            self.logged += 1;
        } else {
            self.suppressed += 1;
        }
        Admission { admitted, suppressed: reported }
    }
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From the seventh egress review: an ended cell stays listed a while with its events,
    /// and 1000 tunnel and 1000 refusal events of ~500 bytes each were kept for every one
    /// (~0.6 MB of the daemon per flooding cell, for up to `exited_retention_max` cells). At
    /// its end a cell keeps the newest 250 of each.
    #[tokio::test]
    async fn an_ended_cell_keeps_fewer_events() {
        let service = EgressService::new(EgressConfig { max_cells: 4, ..Default::default() });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let cell = service.serve(l, "c", "p", Egress::Learn, None);
        let event = |i: usize, allowed: bool| EgressEvent {
            at_ms: i as u64,
            name: format!("n{i}.test"),
            port: 443,
            allowed,
            detail: Some("x".repeat(300)),
            bytes_up: 0,
            bytes_down: 0,
        };
        for i in 0..1500 {
            cell.keep(event(i, i % 2 == 0));
        }
        assert_eq!(cell.events().len(), 1500);
        cell.stop();
        let kept = cell.events();
        assert_eq!(kept.len(), 2 * EVENTS_AFTER_END);
        assert_eq!(kept.last().map(|e| e.name.as_str()), Some("n1499.test"), "the newest are kept");
    }

    /// From the fifth egress review: a lookup outlives its cell (its thread waits for
    /// `getaddrinfo`), so one caller starting cells that ask for names whose servers never
    /// answer, over and over, held every lookup of the daemon and other callers' cells got
    /// 502. One caller's cells now hold at most half of them.
    #[tokio::test]
    async fn one_callers_lookups_leave_room_for_anothers() {
        let service = EgressService::new(EgressConfig { max_cells: 4, ..Default::default() });
        let total = service.lookup_capacity();
        assert_eq!((total, service.caller_share()), (16, 8));
        let cell = |caller| {
            let service = service.clone();
            async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
                service.serve(l, "c", "p", Egress::Learn, Some(caller))
            }
        };
        // Caller 1000's cells (each 4 lookups at most), started and ended one after another,
        // their lookups still running.
        let mut held = Vec::new();
        for _ in 0..4 {
            let c = cell(1000).await;
            for _ in 0..proxy::MAX_LOOKUPS_PER_CELL {
                let wait = tokio::time::timeout(std::time::Duration::from_millis(100), c.lookup_permits());
                if let Ok(Ok(p)) = wait.await {
                    held.push(p);
                }
            }
            c.stop();
        }
        assert_eq!(held.len(), service.caller_share(), "one caller took more than its share");
        // Another caller's cell looks names up at once.
        let other = cell(1001).await;
        let wait = tokio::time::timeout(std::time::Duration::from_millis(100), other.lookup_permits());
        assert!(matches!(wait.await, Ok(Ok(_))), "another caller's lookup waited for the first caller's");
        other.stop();
    }

    /// From the independent review: a pre-built cell's proxy is started before its caller is
    /// known (for nobody, `None`), and activation never moved it to the caller: every pre-built
    /// cell, of every caller, drew on the one share of `None` for life. Assigned to its caller
    /// as it is activated, it draws on that caller's share, and on nobody else's.
    #[tokio::test]
    async fn a_prebuilt_cells_lookups_are_its_callers_once_assigned() {
        let service = EgressService::new(EgressConfig { max_cells: 4, ..Default::default() });
        let cell = |caller| {
            let service = service.clone();
            async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
                service.serve(l, "c", "p", Egress::Learn, caller)
            }
        };
        let quick = std::time::Duration::from_millis(100);
        // Caller 1000's own cells hold all of its share.
        let mut held = Vec::new();
        while held.len() < service.caller_share() {
            let c = cell(Some(1000)).await;
            for _ in 0..proxy::MAX_LOOKUPS_PER_CELL {
                held.push(c.lookup_permits().await.unwrap_or_else(|e| panic!("{e}")));
            }
            c.stop();
        }
        // A pre-built cell it takes is bound by that share too.
        let taken = cell(None).await;
        taken.assign_caller(1000);
        let wait = tokio::time::timeout(quick, taken.lookup_permits()).await;
        assert!(wait.is_err(), "a pre-built cell of caller 1000 looked a name up past its share");
        drop(held);
        // Pre-built cells taken by caller 1002 hold all of its share; one taken by caller 1001
        // still looks names up at once (they share no bucket).
        let mut others = Vec::new();
        while others.len() < service.caller_share() {
            let c = cell(None).await;
            c.assign_caller(1002);
            for _ in 0..proxy::MAX_LOOKUPS_PER_CELL {
                let wait = tokio::time::timeout(quick, c.lookup_permits()).await;
                others.push(wait.unwrap_or_else(|_| panic!("caller 1002 waited within its share")));
            }
        }
        let mine = cell(None).await;
        mine.assign_caller(1001);
        let wait = tokio::time::timeout(quick, mine.lookup_permits()).await;
        assert!(matches!(wait, Ok(Ok(_))), "caller 1001's pre-built cell waited for caller 1002's lookups");
    }

    /// Learned entries are `network.egress` entries a policy accepts as written: the port
    /// left out at 443, an IPv6 address in brackets before a port.
    #[test]
    fn destinations_are_policy_entries() {
        assert_eq!(super::destination("api.example.com", 443), "api.example.com");
        assert_eq!(super::destination("api.example.com", 8443), "api.example.com:8443");
        assert_eq!(super::destination("2001:db8::1", 8443), "[2001:db8::1]:8443");
        assert_eq!(super::destination("2001:db8::1", 443), "2001:db8::1");
        for entry in ["[2001:db8::1]:8443", "api.example.com:8443"] {
            assert_eq!(crate::policy::egress::parse_rule(entry).map(|r| r.to_string()), Ok(entry.to_owned()));
        }
    }
}
