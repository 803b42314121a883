//! One client connection of the egress proxy: read the request head, decide, resolve, connect,
//! answer, tunnel, record. Only `CONNECT host:port` is served.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::hello::{self, Hello};
use super::{now_ms, CellEgress, EgressConfig, EgressEvent};
use crate::policy::egress::{embedded_v4, is_dns_name, is_ip_literal, may_reach, normalize, Egress};

/// Longest request head accepted (request line + headers).
const MAX_HEAD: usize = 16 << 10;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long resolving and connecting to the destination may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Buffer per direction of a tunnel (large: bulk downloads are the common case).
const TUNNEL_BUFFER: usize = 64 << 10;

/// Why a request was not tunnelled: the status line and the body sent back.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("{0}")]
    NotConnect(String),
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Upstream(String),
}

impl Refusal {
    fn status(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "400 Bad Request",
            Refusal::NotConnect(_) => "405 Method Not Allowed",
            Refusal::Denied(_) => "403 Forbidden",
            Refusal::Upstream(_) => "502 Bad Gateway",
        }
    }
}

/// Serve one client connection to its end.
pub async fn handle(mut client: TcpStream, state: &CellEgress, config: &EgressConfig) {
    let _ = client.set_nodelay(true);
    // A request that names no destination is a refusal like any other: logged (on the
    // refusals' budget) and kept in the cell's events.
    let unnamed = |detail: String| EgressEvent {
        at_ms: now_ms(),
        name: String::new(),
        port: 0,
        allowed: false,
        detail: Some(detail),
        bytes_up: 0,
        bytes_down: 0,
    };
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client)).await {
        Ok(Ok(h)) => h,
        Ok(Err(refusal)) => {
            state.record(unnamed(refusal.to_string()));
            return refuse(&mut client, &refusal).await;
        }
        Err(_) => {
            state.record(unnamed(format!("bad request: no request head within {HEAD_TIMEOUT:?}")));
            return;
        }
    };
    let (host, port, rest) = match parse_connect(&head) {
        Ok(t) => t,
        Err(refusal) => {
            state.record(unnamed(refusal.to_string()));
            return refuse(&mut client, &refusal).await;
        }
    };
    let mut event = EgressEvent {
        at_ms: now_ms(),
        name: host.clone(),
        port,
        allowed: false,
        detail: None,
        bytes_up: 0,
        bytes_down: 0,
    };
    let upstream = match open(state, config, &host, port).await {
        Ok(u) => u,
        Err(refusal) => {
            event.detail = Some(refusal.to_string());
            state.record(event);
            return refuse(&mut client, &refusal).await;
        }
    };
    event.allowed = true;
    // The tunnel's byte counters, live: the cell's end-of-record summary reads them if it is
    // still open then.
    let moved = std::sync::Arc::new(super::splice::Moved::default());
    let id = state.opened(&host, port, moved.clone());
    if state.may_log(super::Kind::Tunnel) {
        tracing::info!(cell = %state.cell, provider = %state.provider, name = %host, port, "egress tunnel open");
    }
    // Recorded when the tunnel ends, or, if the cell ends first and this task is dropped,
    // then, with the reason and the bytes moved so far (a tunnel held open to the end still
    // appears in the events, with its bytes).
    let mut pending = Pending { state, id, event: Some(event), moved: &moved };
    let mut upstream = upstream;
    let _ = upstream.set_nodelay(true);
    bound_buffers(&client);
    bound_buffers(&upstream);
    if let Err(e) = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await {
        pending.finish(|event| event.detail = Some(format!("client gone: {e}")));
        return;
    }
    // What the client sends first (with the request head, or after the answer) is checked
    // before it goes upstream: a TLS handshake may ask only for names the policy allows here.
    let may_ask = |name: &str| server_name_allowed(&state.egress, &state.provider, &host, name, port);
    let phase = tokio::sync::watch::Sender::new(Phase::ClientFirst);
    let first = check_first_bytes(&client, &upstream, rest, may_ask, &moved.up, &phase);
    let hold = hold_upstream(&upstream, &phase);
    let copied = match super::splice::relay(&client, &upstream, &moved, first, hold).await {
        // No splice here (it fails before moving a byte): copy through user space instead
        // (counted at its end only).
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, TUNNEL_BUFFER, TUNNEL_BUFFER)
                .await
                .map(|(up, down)| {
                    moved.up.fetch_add(up, std::sync::atomic::Ordering::Relaxed);
                    moved.down.fetch_add(down, std::sync::atomic::Ordering::Relaxed);
                })
        }
        other => other,
    };
    pending.finish(|event| match copied {
        Ok(()) => {}
        Err(e) => match e.get_ref().and_then(|inner| inner.downcast_ref::<HelloRefused>()) {
            Some(refused) => {
                event.allowed = false;
                event.detail = Some(refused.0.clone());
            }
            None => event.detail = Some(format!("tunnel ended: {e}")),
        },
    });
}

/// Why a tunnel was cut at the client's first bytes (carried in an `io::Error` through the
/// relay): recorded as a refusal.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct HelloRefused(String);

fn hello_refused(why: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, HelloRefused(why))
}

/// Whether a tunnel opened to `host:port` may ask the server there for `name` in its TLS
/// handshake: a DNS name the policy allows on that port (any, in learn mode). Clients send
/// the name they connected to; another allowed name is harmless (the cell may reach it anyway).
fn server_name_allowed(egress: &Egress, provider: &str, host: &str, name: &str, port: u16) -> Result<(), String> {
    let shown = clip(name);
    if !is_dns_name(&normalize(name)) {
        return Err(format!(
            "cellkeep egress proxy: the TLS handshake through the tunnel to {host}:{port} asks for \"{shown}\", which is not a DNS name"
        ));
    }
    if !egress.allows(name, port) {
        return Err(format!(
            "cellkeep egress proxy: the TLS handshake through the tunnel to {host}:{port} asks for \"{shown}\", \
             which is not allowed for provider {provider} (a server name must be one the policy's network.egress allows)"
        ));
    }
    Ok(())
}

/// Where a tunnel's look at the TLS handshake is: the upstream's side is relayed once it is
/// `Open` ([`hold_upstream`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No ClientHello has gone upstream: a server that speaks first opens the tunnel.
    ClientFirst,
    /// A ClientHello went upstream: the client's side peeks at the server's first record
    /// before anything of it is relayed, to see whether it asks for a second hello.
    HelloSent,
    Open,
}

/// Sets the phase `Open` when dropped: however the client's side ends, the upstream's is
/// never left waiting.
struct OpenOnDrop<'a>(&'a tokio::sync::watch::Sender<Phase>);

impl Drop for OpenOnDrop<'_> {
    fn drop(&mut self) {
        self.0.send_replace(Phase::Open);
    }
}

/// The upstream's side of a tunnel, before its relay: held while the client's side looks at
/// the server's answer to a ClientHello ([`Phase::HelloSent`]); let go when that is done, or
/// when the server speaks before any hello went up.
async fn hold_upstream(upstream: &TcpStream, phase: &tokio::sync::watch::Sender<Phase>) -> std::io::Result<()> {
    let mut seen = phase.subscribe();
    loop {
        let now = *seen.borrow_and_update();
        match now {
            Phase::Open => return Ok(()),
            Phase::HelloSent => {
                if seen.changed().await.is_err() {
                    return Ok(());
                }
            }
            Phase::ClientFirst => tokio::select! {
                changed = seen.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                readable = upstream.readable() => {
                    readable?;
                    // The server spoke first (unless a hello went up just now).
                    phase.send_if_modified(|p| {
                        let first = *p == Phase::ClientFirst;
                        if first {
                            *p = Phase::Open;
                        }
                        first
                    });
                }
            },
        }
    }
}

/// Whether the server's first record is a HelloRetryRequest ([`hello::is_retry_request`]),
/// peeked at (`MSG_PEEK`: the relay still sends it on). A server that says less, ends, or
/// says nothing within [`HEAD_TIMEOUT`] asks for nothing.
async fn asks_for_another_hello(upstream: &TcpStream) -> std::io::Result<bool> {
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    let mut head = [0u8; hello::SERVER_HELLO_HEAD];
    loop {
        let Ok(n) = tokio::time::timeout_at(deadline, upstream.peek(&mut head)).await else { return Ok(false) };
        let n = n?;
        let other = n == 0 || head[0] != 22 || (n > 5 && head[5] != 2);
        if other || n == head.len() {
            return Ok(!other && hello::is_retry_request(&head));
        }
        // Part of it so far (peeking does not wait for more): look again shortly.
        if tokio::time::timeout_at(deadline, tokio::time::sleep(Duration::from_millis(1))).await.is_err() {
            return Ok(false);
        }
    }
}

/// The client's side of a tunnel, up to where it is known not to be a TLS ClientHello or is a
/// whole one ([`hello::read`]; `buf`: the bytes sent with the request head): every server name
/// of a hello must pass `may_ask`, then the bytes go upstream, counted in `up`. Nothing of a
/// hello that fails, cannot be read, is longer than [`hello::MAX_HELLO`], is not whole within
/// [`HEAD_TIMEOUT`] of its first byte, or is cut short by the client's end reaches the upstream.
/// Before the client's first byte there is no deadline but the tunnel's idle one. Where the
/// server answers the hello with a HelloRetryRequest, the client's second hello is checked
/// the same way ([`hello::read_second`]).
async fn check_first_bytes(
    client: &TcpStream,
    upstream: &TcpStream,
    buf: Vec<u8>,
    may_ask: impl Fn(&str) -> Result<(), String>,
    up: &std::sync::atomic::AtomicU64,
    phase: &tokio::sync::watch::Sender<Phase>,
) -> std::io::Result<()> {
    let (buf, first) = read_hello(client, buf, hello::read).await?;
    let Hello::Names(names) = first else {
        write_all(upstream, &buf).await?;
        up.fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
        return Ok(());
    };
    for name in names {
        may_ask(&name).map_err(hello_refused)?;
    }
    // Marked before the hello goes up, so that nothing of the server's answer is relayed
    // before it was looked at (unless the server already spoke: then it was not TLS's).
    let marked = phase.send_if_modified(|p| {
        let first = *p == Phase::ClientFirst;
        if first {
            *p = Phase::HelloSent;
        }
        first
    });
    let _open = OpenOnDrop(phase);
    write_all(upstream, &buf).await?;
    up.fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
    if !marked || !asks_for_another_hello(upstream).await? {
        return Ok(());
    }
    phase.send_replace(Phase::Open);
    let (buf, second) = read_hello(client, Vec::new(), hello::read_second).await?;
    if let Hello::Names(names) = second {
        for name in names {
            may_ask(&name).map_err(hello_refused)?;
        }
    }
    write_all(upstream, &buf).await?;
    up.fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Read from the client onto `buf` until `read` can tell what it is ([`check_first_bytes`]
/// has the bounds): the bytes and what they are.
async fn read_hello(
    client: &TcpStream,
    mut buf: Vec<u8>,
    read: impl Fn(&[u8]) -> Result<Hello, String>,
) -> std::io::Result<(Vec<u8>, Hello)> {
    let mut deadline = None;
    let first = loop {
        match read(&buf) {
            Ok(Hello::Partial) => {}
            Ok(done) => break done,
            Err(e) => return Err(hello_refused(format!("cellkeep egress proxy: the tunnel starts with {e}"))),
        }
        if buf.len() >= hello::MAX_HELLO {
            return Err(hello_refused(format!(
                "cellkeep egress proxy: a TLS ClientHello longer than {} bytes",
                hello::MAX_HELLO
            )));
        }
        if !buf.is_empty() && deadline.is_none() {
            deadline = Some(tokio::time::Instant::now() + HEAD_TIMEOUT);
        }
        let read = read_some(client, &mut buf);
        let n = match deadline {
            None => read.await?,
            Some(at) => tokio::time::timeout_at(at, read).await.map_err(|_| {
                hello_refused(format!("cellkeep egress proxy: no whole TLS ClientHello within {HEAD_TIMEOUT:?}"))
            })??,
        };
        if n == 0 {
            if buf.is_empty() {
                return Ok((buf, Hello::NotTls));
            }
            return Err(hello_refused("cellkeep egress proxy: the client ended inside its TLS ClientHello".into()));
        }
    };
    Ok((buf, first))
}

/// One read from `s` (shared: the relay holds the other direction) appended to `buf`.
async fn read_some(s: &TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 4096];
    loop {
        s.readable().await?;
        match s.try_read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// All of `bytes` written to `s` (shared).
async fn write_all(s: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        s.writable().await?;
        match s.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What the daemon's two sockets of a tunnel may buffer, each way (`SO_RCVBUFFORCE`/
/// `SO_SNDBUFFORCE`, which the kernel doubles; the plain options would be capped at
/// `net.core.rmem_max`, often 208 KiB). Left to autotuning, an upstream that sends while the
/// cell does not read grew each socket to `tcp_rmem`'s maximum (6-32 MiB): 64 such tunnels
/// pinned ~400 MiB of kernel memory charged to no cell. Fixed, a tunnel holds at most ~2 MiB,
/// and a 512 KiB window still carries 5 MB/s per connection at 100 ms round trip.
const TUNNEL_SOCKET_BUFFER: usize = 256 << 10;

fn bound_buffers(s: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(s, sockopt::RcvBufForce, &TUNNEL_SOCKET_BUFFER).is_err() {
        let _ = setsockopt(s, sockopt::RcvBuf, &TUNNEL_SOCKET_BUFFER);
    }
    if setsockopt(s, sockopt::SndBufForce, &TUNNEL_SOCKET_BUFFER).is_err() {
        let _ = setsockopt(s, sockopt::SndBuf, &TUNNEL_SOCKET_BUFFER);
    }
}

/// An allowed tunnel's event, recorded exactly once: by [`Pending::finish`], or on drop; with
/// the bytes moved either way (those sent ahead with the request head among them).
struct Pending<'a> {
    state: &'a CellEgress,
    /// The tunnel's id from [`CellEgress::opened`].
    id: u64,
    event: Option<EgressEvent>,
    moved: &'a super::splice::Moved,
}

impl Pending<'_> {
    fn finish(&mut self, complete: impl FnOnce(&mut EgressEvent)) {
        if let Some(mut event) = self.event.take() {
            (event.bytes_up, event.bytes_down) = self.moved.total();
            complete(&mut event);
            self.state.closed(self.id, event);
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.finish(|event| event.detail = Some("tunnel cut: the cell ended".into()));
    }
}

/// Client-supplied text for the log, the cell's events and refusal bodies: escaped (control
/// and non-ASCII characters as `\u{…}`), then at most 200 bytes (escaping can make one
/// character 10 bytes: clipped first, 200 characters kept 2 KB per field).
pub(super) fn clip(text: &str) -> String {
    const MAX: usize = 200;
    let mut out = String::new();
    for c in text.chars() {
        let escaped: String = c.escape_default().collect();
        if out.len() + escaped.len() > MAX {
            out.push('…');
            return out;
        }
        out.push_str(&escaped);
    }
    out
}

/// Read until the blank line that ends the head; the head and any bytes after it.
async fn read_head(client: &mut TcpStream) -> Result<Vec<u8>, Refusal> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = client.read(&mut chunk).await.map_err(|e| Refusal::BadRequest(e.to_string()))?;
        if n == 0 {
            return Err(Refusal::BadRequest("connection closed before the request head ended".into()));
        }
        // Only the new bytes (and the 3 before them) can complete the blank line.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if buf[from..].windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(buf);
        }
        if buf.len() > MAX_HEAD {
            return Err(Refusal::BadRequest(format!("request head longer than {MAX_HEAD} bytes")));
        }
    }
}

/// `CONNECT host:port HTTP/1.x` → (normalised host, port, bytes after the head).
fn parse_connect(buf: &[u8]) -> Result<(String, u16, Vec<u8>), Refusal> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4).unwrap_or(buf.len());
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| Refusal::BadRequest("request head is not UTF-8".into()))?;
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let (Some(method), Some(target), Some(version)) = (method, target, version) else {
        return Err(Refusal::BadRequest(format!("malformed request line \"{}\"", clip(line))));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Refusal::BadRequest(format!("unsupported protocol \"{}\"", clip(version))));
    }
    if method != "CONNECT" {
        return Err(Refusal::NotConnect(format!(
            "cellkeep egress proxy: only CONNECT (HTTPS) is served, not {} {}; use an https:// URL",
            clip(method),
            clip(target)
        )));
    }
    let (host, port) = split_host_port(target).ok_or_else(|| {
        Refusal::BadRequest(format!(
            "CONNECT target {:?} is not host:port (a DNS name or an IP address, and a port 1-65535)",
            clip(target)
        ))
    })?;
    Ok((host, port, buf[end..].to_vec()))
}

/// `name:port`, `1.2.3.4:port` or `[v6]:port`.
fn split_host_port(target: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = target.strip_prefix('[') {
        let (h, p) = rest.split_once("]:")?;
        (h, p)
    } else {
        target.rsplit_once(':')?
    };
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let host = normalize(host);
    is_host(&host).then_some((host, port))
}

/// An IP address, or a DNS name ([`is_dns_name`]: not one the C resolver would read as an
/// address, such as `2130706433` or `0x7f000001`).
fn is_host(host: &str) -> bool {
    is_ip_literal(host) || is_dns_name(host)
}

/// Decide, resolve and connect.
async fn open(state: &CellEgress, config: &EgressConfig, host: &str, port: u16) -> Result<TcpStream, Refusal> {
    let provider = &state.provider;
    if !state.egress.allows(host, port) {
        let why = if is_ip_literal(host) {
            "IP addresses are refused unless the policy lists that address"
        } else {
            "the name is not in the policy's network.egress"
        };
        return Err(Refusal::Denied(format!(
            "cellkeep egress proxy: {host}:{port} is not allowed for provider {provider} ({why})"
        )));
    }
    let mapped = config.hosts.get(host).copied();
    let Judgement { trusted, strict } = judgement(&state.egress, mapped.is_some(), host, port);
    let addrs: Vec<SocketAddr> = match (mapped, host.parse::<IpAddr>()) {
        (Some(ip), _) => vec![SocketAddr::new(ip, port)],
        (None, Ok(ip)) => vec![SocketAddr::new(ip, port)],
        (None, Err(_)) => tokio::time::timeout(CONNECT_TIMEOUT, resolve(state, host, port))
            .await
            .map_err(|_| Refusal::Upstream(format!("cellkeep egress proxy: resolving {host} timed out")))?
            .map_err(|e| Refusal::Upstream(format!("cellkeep egress proxy: resolving {host}: {e}")))?,
    };
    // The host's own services and cloud metadata stay out of reach, whatever a name resolves
    // to (and in learn mode, whatever address is asked for): loopback, link-local and the
    // addresses of the host's own interfaces. Only an address the policy lists literally, or
    // an `egress_hosts` mapping of a name the policy lists exactly on this port, may point
    // there (see `judgement`).
    let own = if trusted { Vec::new() } else { host_addresses() };
    let usable: Vec<SocketAddr> = addrs
        .into_iter()
        .filter(|a| trusted || (may_reach(a.ip(), strict) && !own.contains(&canonical(a.ip()))))
        .collect();
    if usable.is_empty() {
        return Err(Refusal::Denied(format!(
            "cellkeep egress proxy: {host} resolves only to addresses cells may not reach (loopback, \
             link-local, cloud metadata, reserved, this host's own{}){}",
            if strict { ", or a private network for a name not listed exactly" } else { "" },
            if mapped.is_some() {
                "; a name of the daemon's egress_hosts reaches any address it maps to only where the policy \
                 lists that name exactly on that port"
            } else {
                ""
            }
        )));
    }
    let mut last = None;
    for addr in usable {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            // A connection whose two ends share an address stayed on this host (an address added
            // since the list above was read): refused like the rest.
            Ok(Ok(s)) if !trusted && is_local_connection(&s) => {
                return Err(Refusal::Denied(format!(
                    "cellkeep egress proxy: {host} ({}) is an address of this host, which cells may not reach",
                    addr.ip()
                )))
            }
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = Some(format!("{addr}: {e}")),
            Err(_) => last = Some(format!("{addr}: timed out")),
        }
    }
    Err(Refusal::Upstream(format!("cellkeep egress proxy: connecting to {host}:{port}: {}", last.unwrap_or_default())))
}

/// How the addresses of an allowed `host:port` are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Judgement {
    /// Connected to as given, without [`may_reach`] or the checks for this host's own
    /// addresses.
    trusted: bool,
    /// [`may_reach`]'s `strict`: no private network either.
    strict: bool,
}

/// How `host:port` (allowed by `egress`; `mapped`: in the daemon's `egress_hosts`) is judged.
/// Only what the operator wrote is trusted: an address the policy lists as such, or the
/// mapping of a name it lists exactly on that port (an internal mirror, a test's loopback
/// server). A mapped name that learn mode or a wildcard let through, or that a wildcard
/// matched on a port its exact entry does not name, is judged like any name: its address
/// could be any of the host's own services. Only a name listed exactly may resolve into a
/// private network: one a wildcard matched, the cell chose.
fn judgement(egress: &Egress, mapped: bool, host: &str, port: u16) -> Judgement {
    // Allowed, an address matched only by the same address in the list.
    let listed_literal = matches!(egress, Egress::Allow(_)) && is_ip_literal(host);
    let listed = egress.lists_exactly(host, port);
    Judgement { trusted: listed_literal || (mapped && listed), strict: !(listed || listed_literal) }
}

/// Name lookups of one cell running at once (the rest of its requests wait their turn).
/// `getaddrinfo` blocks a thread and cannot be cancelled: a lookup holds its permit until its
/// thread is done, so a cell asking for names whose servers never answer occupies at most
/// this many threads; the daemon's bound is this times the cap on cells (`EgressService`).
pub const MAX_LOOKUPS_PER_CELL: usize = 4;

/// The name handed to the system resolver. A name the cell chose — matched by a wildcard rule,
/// or any name in learn mode — is looked up as absolute (`name.`): otherwise, where it does not
/// exist, the resolver tries it again under each domain of resolv.conf's search list
/// (`nothing.openai.com.corp.internal`), and a rule written for a vendor would lead into the
/// operator's own network. A name the policy lists exactly is looked up as written (a short
/// intranet name may rely on the search list, and /etc/hosts matches only undotted names).
fn lookup_name(egress: &Egress, host: &str, port: u16) -> String {
    if egress.lists_exactly(host, port) {
        host.to_owned()
    } else {
        format!("{host}.")
    }
}

/// Resolve `host` with the system resolver, within the daemon's and the cell's lookup limits.
async fn resolve(state: &CellEgress, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    let held = state.lookup_permits().await?;
    let host = lookup_name(&state.egress, host, port);
    tokio::task::spawn_blocking(move || {
        let _held = held;
        std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port)).map(Iterator::collect)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Every address on the host's interfaces (the daemon's network namespace), read at each
/// decision so an address added at run time counts; empty if they cannot be read (the
/// post-connect check in [`open`] still applies).
fn host_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| canonical(IpAddr::V6(v6.ip())))
            }
        })
        .collect()
}

/// An IPv6 address that carries an IPv4 one (mapped, compatible, NAT64, SIIT, 6to4: see
/// [`embedded_v4`]) as that IPv4 address: one form to compare with this host's own.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether a connection's two ends share an address: the kernel routed it to this host.
fn is_local_connection(s: &TcpStream) -> bool {
    match (s.local_addr(), s.peer_addr()) {
        (Ok(l), Ok(p)) => canonical(l.ip()) == canonical(p.ip()),
        _ => false,
    }
}

/// Answer a refusal and close.
async fn refuse(client: &mut TcpStream, refusal: &Refusal) {
    let body = format!("{refusal}\n");
    let reply = format!(
        "HTTP/1.1 {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        refusal.status(),
        body.len()
    );
    let _ = client.write_all(reply.as_bytes()).await;
    let _ = client.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name the cell chose is looked up as absolute, never under resolv.conf's search list;
    /// one the policy lists exactly is looked up as written.
    #[test]
    fn names_the_cell_chose_are_looked_up_absolute() {
        let rules = ["api.example.com", "*.vendor.com", "gitlab:8443"]
            .iter()
            .map(|r| crate::policy::egress::parse_rule(r).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let listed = Egress::Allow(rules);
        assert_eq!(lookup_name(&listed, "api.example.com", 443), "api.example.com");
        assert_eq!(lookup_name(&listed, "gitlab", 8443), "gitlab");
        assert_eq!(lookup_name(&listed, "nothing.vendor.com", 443), "nothing.vendor.com.");
        assert_eq!(lookup_name(&Egress::Learn, "api.example.com", 443), "api.example.com.");
    }

    /// Every cell of a full pool can look up as many names at once as one cell may: a few
    /// cells whose lookups hang cannot take them all (32 in the daemon and 8 per cell let 4
    /// cells do that).
    #[test]
    fn lookups_in_the_daemon_cover_every_cell() {
        for max_cells in [1, 20, 64] {
            let service = super::super::EgressService::new(EgressConfig { hosts: Default::default(), max_cells });
            assert_eq!(service.lookup_capacity(), MAX_LOOKUPS_PER_CELL * max_cells);
        }
        // Never more than half of tokio's blocking pool (512 threads).
        let service = super::super::EgressService::new(EgressConfig { hosts: Default::default(), max_cells: 1000 });
        assert_eq!(service.lookup_capacity(), 256);
    }

    #[test]
    fn connect_targets() {
        let ok = |t: &str| split_host_port(t);
        assert_eq!(ok("api.example.com:443"), Some(("api.example.com".into(), 443)));
        assert_eq!(ok("API.example.com.:8443"), Some(("api.example.com".into(), 8443)));
        assert_eq!(ok("[::1]:443"), Some(("::1".into(), 443)));
        assert_eq!(ok("10.0.0.1:22"), Some(("10.0.0.1".into(), 22)));
        assert_eq!(ok("example.com"), None);
        assert_eq!(ok("example.com:0"), None);
        let head = b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n\x16\x03\x01";
        let (h, p, rest) = parse_connect(head).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((h.as_str(), p, rest.as_slice()), ("a.test", 443, &b"\x16\x03\x01"[..]));
        assert!(matches!(parse_connect(b"GET http://a.test/ HTTP/1.1\r\n\r\n"), Err(Refusal::NotConnect(_))));
        assert!(matches!(parse_connect(b"CONNECT a.test HTTP/1.1\r\n\r\n"), Err(Refusal::BadRequest(_))));
    }

    #[test]
    fn special_addresses() {
        let ip = |t: &str| t.parse::<IpAddr>().unwrap_or_else(|e| panic!("{t}: {e}"));
        for t in [
            "127.0.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "169.254.169.254",
            "100.100.100.200",
            "168.63.129.16",
            "240.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fec0::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::a9fe:a9fe",
            "::ffff:0:a9fe:a9fe",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "192.0.0.170",
            // NAT64 and SIIT forms of 0.0.0.0 and 0.0.0.1 (judged as global IPv6 once: the
            // `::`/`::1` exception applied to every prefix), and the IPv4-mapped ones.
            "64:ff9b::",
            "64:ff9b::1",
            "::ffff:0:0:0",
            "::ffff:0:0:1",
            "::ffff:0:0",
            "::ffff:0:1",
            // Cloud metadata inside fc00::/7, which a listed name may otherwise reach: GCP, EKS
            // Pod Identity, Scaleway (and AWS IMDS, above).
            "fd20:ce::254",
            "fd00:ec2::23",
            "fd00:42::42",
        ] {
            assert!(!may_reach(ip(t), false), "{t} (list)");
            assert!(!may_reach(ip(t), true), "{t} (learn)");
        }
        // From the seventh egress review: the documentation ranges were judged public, and on
        // a host whose network uses one (this project's CI: 192.0.2.0/24), learn mode and
        // wildcard names reached that network.
        for t in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "198.18.0.1",
            "fd12::1",
            "::ffff:10.0.0.1",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "2001:db8::1",
            "3fff::1",
            "64:ff9b::c000:201",
        ] {
            assert!(may_reach(ip(t), false), "{t}: a listed name may resolve into the operator's network");
            assert!(!may_reach(ip(t), true), "{t}: not while learning");
        }
        for t in ["93.184.216.34", "2606:4700::1111", "64:ff9b::5db8:d822", "::ffff:93.184.216.34"] {
            assert!(may_reach(ip(t), true), "{t}");
        }
    }

    /// From the sixth egress review: an `egress_hosts` address is trusted (no address check
    /// at all) only where the policy lists that name exactly on that port; a mapped name that
    /// learn mode or a wildcard let through was trusted too (`CONNECT learn.test:6379` reached
    /// any port of the host's loopback). And only a name the policy lists exactly may resolve
    /// into a private network: one a wildcard matched, which the cell chose, is judged as
    /// strictly as in learn mode.
    #[test]
    fn only_names_listed_exactly_are_trusted_or_reach_private_networks() {
        let rules = ["*.vendor.com", "mirror.internal:8443", "10.0.0.7", "api.example.com"]
            .iter()
            .map(|r| crate::policy::egress::parse_rule(r).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let listed = Egress::Allow(rules);
        let judged = |egress: &Egress, mapped: bool, host: &str, port: u16| {
            let j = judgement(egress, mapped, host, port);
            (j.trusted, j.strict)
        };
        // (trusted, strict)
        assert_eq!(judged(&listed, true, "mirror.internal", 8443), (true, false), "mapped, listed exactly");
        assert_eq!(judged(&listed, false, "mirror.internal", 8443), (false, false), "listed exactly");
        assert_eq!(judged(&listed, false, "api.example.com", 443), (false, false), "listed exactly");
        assert_eq!(judged(&listed, false, "10.0.0.7", 443), (true, false), "an address listed as such");
        assert_eq!(judged(&listed, true, "mirror.vendor.com", 443), (false, true), "mapped, matched by a wildcard");
        assert_eq!(judged(&listed, false, "x.vendor.com", 443), (false, true), "matched by a wildcard");
        assert_eq!(judged(&Egress::Learn, true, "learn.test", 6379), (false, true), "mapped, learning");
        assert_eq!(judged(&Egress::Learn, false, "api.example.com", 443), (false, true), "learning");
        assert_eq!(judged(&Egress::Learn, false, "10.0.0.7", 443), (false, true), "an address, learning");
    }

    /// From the fifth egress review: this host's own IPv4 address wrapped in NAT64, SIIT,
    /// IPv4-compatible or 6to4 form passed the own-address check (only `::ffff:` was
    /// unwrapped), though `may_reach` judges those forms as the address they carry.
    #[test]
    fn a_wrapped_own_address_is_the_address() {
        let ip = |t: &str| t.parse::<IpAddr>().unwrap_or_else(|e| panic!("{t}: {e}"));
        let own = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));
        for t in ["::ffff:192.0.2.2", "64:ff9b::c000:202", "::ffff:0:c000:202", "::c000:202", "2002:c000:202::1"] {
            assert_eq!(canonical(ip(t)), own, "{t}");
        }
        assert_eq!(canonical(ip("::1")), ip("::1"));
        assert_eq!(canonical(ip("2001:db8::1")), ip("2001:db8::1"));
    }

    #[test]
    fn targets_are_names_or_addresses() {
        for bad in [
            "2130706433:443",
            "0x7f.1:443",
            "127.1:443",
            "0x7f000001:443",
            "1.0x7f:443",
            "0x5db8d822:443",
            "127.0.0.0x1:443",
            "a..b:443",
            "a\rb:443",
            "x y:443",
            "1.2.3.4.5:443",
        ] {
            assert_eq!(split_host_port(bad), None, "{bad:?}");
        }
        assert_eq!(split_host_port("api.example.com:443"), Some(("api.example.com".into(), 443)));
        assert_eq!(split_host_port("1.2.3.4:443"), Some(("1.2.3.4".into(), 443)));
        let long = "a".repeat(5000);
        assert!(clip(&long).chars().count() <= 201);
        // Escaping first, then the bound, in bytes: 201 × U+10FFFF kept ~2 KB before.
        assert!(clip(&"\u{10FFFF}".repeat(201)).len() <= 203);
        assert_eq!(clip("a\r\nb"), "a\\r\\nb");
    }
}
