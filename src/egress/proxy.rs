//! One client connection of the egress proxy: read the request head, decide, resolve, connect,
//! answer, tunnel, record. Only `CONNECT host:port` is served.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{now_ms, CellEgress, EgressConfig, EgressEvent};
use crate::policy::egress::{is_ip_literal, normalize, Egress};

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
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client)).await {
        Ok(Ok(h)) => h,
        Ok(Err(refusal)) => return refuse(&mut client, &refusal).await,
        Err(_) => return,
    };
    let (host, port, rest) = match parse_connect(&head) {
        Ok(t) => t,
        Err(refusal) => {
            if let Refusal::NotConnect(_) = refusal {
                let event = |detail: String| EgressEvent {
                    at_ms: now_ms(),
                    name: String::new(),
                    port: 0,
                    allowed: false,
                    detail: Some(detail),
                    bytes_up: 0,
                    bytes_down: 0,
                };
                state.record(event(refusal.to_string()));
            }
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
    let mut upstream = upstream;
    let _ = upstream.set_nodelay(true);
    let established = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
    let forwarded = match (established, rest.is_empty()) {
        (Err(e), _) => Err(e),
        (Ok(()), true) => Ok(()),
        (Ok(()), false) => upstream.write_all(&rest).await,
    };
    if let Err(e) = forwarded {
        event.detail = Some(format!("client gone: {e}"));
        state.record(event);
        return;
    }
    let copied = match super::splice::relay(&client, &upstream).await {
        // No splice here (it fails before moving a byte): copy through user space instead.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, TUNNEL_BUFFER, TUNNEL_BUFFER).await
        }
        other => other,
    };
    match copied {
        Ok((up, down)) => {
            event.bytes_up = up + rest.len() as u64;
            event.bytes_down = down;
        }
        Err(e) => event.detail = Some(format!("tunnel ended: {e}")),
    }
    state.record(event);
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
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
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
        return Err(Refusal::BadRequest(format!("malformed request line {line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Refusal::BadRequest(format!("unsupported protocol {version:?}")));
    }
    if method != "CONNECT" {
        return Err(Refusal::NotConnect(format!(
            "cellkeep egress proxy: only CONNECT (HTTPS) is served, not {method} {target}; use an https:// URL"
        )));
    }
    let (host, port) = split_host_port(target)
        .ok_or_else(|| Refusal::BadRequest(format!("CONNECT target {target:?} is not host:port")))?;
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
    (!host.is_empty()).then_some((host, port))
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
    let listed_literal = matches!(state.egress, Egress::Allow(_)) && is_ip_literal(host);
    let addrs: Vec<SocketAddr> = match (mapped, host.parse::<IpAddr>()) {
        (Some(ip), _) => vec![SocketAddr::new(ip, port)],
        (None, Ok(ip)) => vec![SocketAddr::new(ip, port)],
        (None, Err(_)) => tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| Refusal::Upstream(format!("cellkeep egress proxy: resolving {host} timed out")))?
            .map_err(|e| Refusal::Upstream(format!("cellkeep egress proxy: resolving {host}: {e}")))?
            .collect(),
    };
    // The host's own services and cloud metadata stay out of reach, whatever a name resolves
    // to (and in learn mode, whatever address is asked for): loopback, link-local and the
    // addresses of the host's own interfaces. Only a test mapping or an address the policy
    // lists literally may point there.
    let trusted = mapped.is_some() || listed_literal;
    let own = if trusted { Vec::new() } else { host_addresses() };
    let usable: Vec<SocketAddr> =
        addrs.into_iter().filter(|a| trusted || (is_public(a.ip()) && !own.contains(&canonical(a.ip())))).collect();
    if usable.is_empty() {
        return Err(Refusal::Denied(format!(
            "cellkeep egress proxy: {host} resolves only to loopback, link-local, unspecified or multicast \
             addresses or to this host's own addresses, which cells may not reach"
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

/// Not loopback, unspecified, link-local (169.254/16, fe80::/10: cloud metadata) or multicast.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_unspecified() || v4.is_link_local() || v4.is_multicast() || v4.is_broadcast())
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            !(v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
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

/// An IPv4-mapped IPv6 address as the IPv4 address it is (one form to compare).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
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
        for ip in ["127.0.0.1", "0.0.0.0", "169.254.169.254", "::1", "fe80::1", "::ffff:127.0.0.1", "224.0.0.1"] {
            assert!(!is_public(ip.parse().unwrap_or_else(|e| panic!("{e}"))), "{ip}");
        }
        for ip in ["93.184.216.34", "10.1.2.3", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap_or_else(|e| panic!("{e}"))), "{ip}");
        }
    }
}
