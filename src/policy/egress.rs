//! `[network] egress`: the names a cell may reach through cellkeep's egress proxy, as written
//! in a policy (`"api.anthropic.com"`, `"*.openai.com"`, `"name:8443"`, an IP literal) or the
//! word `"learn"`, parsed into [`Egress`] and matched by the proxy with [`Egress::allows`].
//!
//! Names are compared in lower case without a trailing dot. `*.example.com` matches every name
//! strictly beneath `example.com` (not `example.com` itself). The port is 443 unless the rule
//! says `:port`. An IP literal is matched only by the same literal in the list, never by a
//! wildcard, so a cell cannot name a destination by address unless the policy does.

use std::net::IpAddr;

use serde::Serialize;

/// The port a rule without `:port` allows (HTTPS).
pub const DEFAULT_PORT: u16 = 443;

/// What the proxy lets through for one policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "rules")]
pub enum Egress {
    /// Only these names (ports).
    Allow(Vec<EgressRule>),
    /// Everything, each name reported, so an operator can write the list (`egress = "learn"`).
    Learn,
}

/// One allowed destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressRule {
    /// The name as written, lower case, without `*.` (for a wildcard) or `:port`.
    pub host: String,
    /// `*.host`: names strictly beneath `host`.
    pub wildcard: bool,
    pub port: u16,
}

impl std::fmt::Display for EgressRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let star = if self.wildcard { "*." } else { "" };
        if self.port == DEFAULT_PORT {
            write!(f, "{star}{}", self.host)
        } else if self.host.contains(':') {
            write!(f, "[{star}{}]:{}", self.host, self.port)
        } else {
            write!(f, "{star}{}:{}", self.host, self.port)
        }
    }
}

/// Lower case, no trailing dot, IPv6 brackets removed.
pub fn normalize(host: &str) -> String {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h.strip_prefix('[').and_then(|x| x.strip_suffix(']')).map(str::to_owned).unwrap_or(h)
}

/// Whether `host` is written as an IP address (v4, or v6 with or without brackets).
pub fn is_ip_literal(host: &str) -> bool {
    normalize(host).parse::<IpAddr>().is_ok()
}

/// A DNS name: dot-separated labels of letters, digits, `-` and `_`, 1-63 bytes each, at most
/// 253 bytes in all, whose last label is not a number. The C resolver (`inet_aton`) reads
/// `2130706433`, `0x7f000001`, `0x7f.1` or `1.0x7f` as IPv4 addresses, which no name rule or
/// address check would see as such; no top-level domain is a number.
pub fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        && host.rsplit('.').next().is_some_and(|last| !is_number_label(last))
}

/// A label `inet_aton` reads as a number: decimal or octal digits, or `0x` and hex digits.
fn is_number_label(label: &str) -> bool {
    let hex = label.strip_prefix("0x").or_else(|| label.strip_prefix("0X"));
    match hex {
        Some(h) => h.bytes().all(|b| b.is_ascii_hexdigit()),
        None => label.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// Parse one rule as written in a policy; `Err` says what is wrong.
pub fn parse_rule(text: &str) -> Result<EgressRule, String> {
    let text = text.trim();
    if let Some((scheme, rest)) = text.split_once("://") {
        let host = rest.split(['/', '?', '#']).next().unwrap_or(rest);
        return Err(format!(
            "\"{text}\" is a URL: write the host name only (\"{host}\"), with :port unless the port is 443 \
             ({scheme}:// and any path are not part of an entry: the proxy sees only the host and port)"
        ));
    }
    // [v6]:port, v6 (no port), name:port, name.
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (h, tail) = rest.split_once(']').ok_or("an IPv6 address in brackets needs its closing ']'")?;
        match tail {
            "" => (h, None),
            t => (h, Some(t.strip_prefix(':').ok_or("expected :port after ']'")?)),
        }
    } else if text.parse::<IpAddr>().is_ok() {
        (text, None)
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("\"{p}\" is not a port (1-65535)")),
        },
    };
    let (wildcard, host) = match host.strip_prefix("*.") {
        Some(h) => (true, h),
        None => (false, host),
    };
    let host = normalize(host);
    if host.parse::<IpAddr>().is_ok() {
        if wildcard {
            return Err("a wildcard cannot apply to an IP address".to_owned());
        }
    } else if !is_dns_name(&host) {
        return Err(format!(
            "\"{text}\" is not a host name (letters, digits, '-', '.', not ending in a number such as 0x7f, \
             which the resolver reads as an address), \"*.\" + a name, or an IP address, with an optional :port"
        ));
    } else if wildcard && !host.contains('.') {
        return Err(format!("\"*.{host}\" would match a whole top-level domain"));
    }
    Ok(EgressRule { host, wildcard, port })
}

impl Egress {
    /// Whether a rule names `host:port` exactly (no wildcard; not learn mode): the policy, not
    /// the cell, chose that name.
    pub fn lists_exactly(&self, host: &str, port: u16) -> bool {
        let Egress::Allow(rules) = self else { return false };
        let host = normalize(host);
        rules.iter().any(|r| !r.wildcard && r.port == port && r.host == host)
    }

    /// Whether a CONNECT to `host:port` is allowed (`host` as the cell sent it).
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let rules = match self {
            Egress::Learn => return true,
            Egress::Allow(rules) => rules,
        };
        let host = normalize(host);
        let literal = host.parse::<IpAddr>().is_ok();
        rules.iter().any(|r| {
            r.port == port
                && if r.wildcard {
                    !literal && host.len() > r.host.len() + 1 && host.ends_with(&format!(".{}", r.host))
                } else {
                    // IP literals compare as addresses (`::1` and `0:0::1` are one address).
                    match (host.parse::<IpAddr>(), r.host.parse::<IpAddr>()) {
                        (Ok(a), Ok(b)) => a == b,
                        _ => r.host == host,
                    }
                }
        })
    }
}

/// The IPv4 address an IPv6 one carries where this check can read it: IPv4-mapped
/// `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d` (not `::` or `::1`, which are IPv6's own
/// unspecified and loopback addresses), NAT64 `64:ff9b::/96`, SIIT's IPv4-translated
/// `::ffff:0:a.b.c.d`, 6to4 `2002::/16`. Each reaches that IPv4 host where a translator is on
/// the path, so it is judged (and compared with this host's own addresses) as that address:
/// `64:ff9b::1` as 0.0.0.1.
pub fn embedded_v4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let seg = v6.segments();
    let o = v6.octets();
    let tail = std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if let Some(v4) = v6.to_ipv4_mapped() {
        Some(v4)
    } else if seg[..6] == [0; 6] {
        (seg[6] != 0 || seg[7] > 1).then_some(tail)
    } else if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || seg[..6] == [0, 0, 0, 0, 0xffff, 0] {
        Some(tail)
    } else if seg[0] == 0x2002 {
        Some(std::net::Ipv4Addr::new(o[2], o[3], o[4], o[5]))
    } else {
        None
    }
}

/// Cloud metadata and platform addresses, never reachable whatever a name resolves to (those
/// in link-local 169.254/16 and fe80::/10 are refused with it; listed here where they are
/// known): AWS IMDS, ECS task metadata, EKS Pod Identity, GCP, Alibaba Cloud, Azure's
/// WireServer, Scaleway.
const METADATA: [IpAddr; 9] = [
    IpAddr::V4(std::net::Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V4(std::net::Ipv4Addr::new(169, 254, 170, 2)),
    IpAddr::V4(std::net::Ipv4Addr::new(169, 254, 170, 23)),
    IpAddr::V4(std::net::Ipv4Addr::new(100, 100, 100, 200)),
    IpAddr::V4(std::net::Ipv4Addr::new(168, 63, 129, 16)),
    IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)),
    IpAddr::V6(std::net::Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0x42, 0, 0, 0, 0, 0, 0x42)),
];

/// Whether a cell may be connected to `ip` (an address a name resolved to, or one asked for
/// in learn mode). Never: loopback, unspecified, link-local (169.254/16, fe80::/10),
/// multicast, broadcast, 0/8, 240/4, 192.0.0/24, site-local fec0::/10, the cloud metadata and
/// platform addresses (`METADATA`: 100.100.100.200, 168.63.129.16, and in fc00::/7
/// fd00:ec2::254, fd00:ec2::23, fd20:ce::254, fd00:42::42); an IPv4 address inside an IPv6
/// one (mapped, compatible, NAT64 64:ff9b::/96, SIIT, 6to4 2002::/16) is judged as that IPv4
/// address. `strict` (a name the policy does not list exactly: any name in learn mode, or
/// one a wildcard matched, which the cell chose) also never a private network (10/8,
/// 172.16/12, 192.168/16, 100.64/10, 198.18/15, fc00::/7, and the documentation ranges
/// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20): a name the operator wrote may
/// resolve into the operator's own network (an internal API gateway); a name the cell picked
/// may not.
pub fn may_reach(ip: IpAddr, strict: bool) -> bool {
    if METADATA.contains(&ip) {
        return false;
    }
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, _, _] = v4.octets();
            let never = v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || a == 0
                || a >= 240
                // IETF protocol assignments (192.0.0.170/171: NAT64 discovery, among others).
                || (a == 192 && b == 0 && v4.octets()[2] == 0);
            // Documentation (TEST-NET-1..3) counts as private: not globally reachable, and where
            // a host does use it (a test network, this project's CI), it is a local network.
            let private = v4.is_private()
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b & 0xfe) == 18)
                || v4.is_documentation();
            !(never || (strict && private))
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            if let Some(v4) = embedded_v4(v6) {
                return may_reach(IpAddr::V4(v4), strict);
            }
            // Translators that carry IPv4 where this check cannot read it: local-use NAT64
            // (64:ff9b:1::/48, the IPv4 address at a prefix-dependent place) and Teredo
            // (2001::/32).
            let translated = seg[..3] == [0x64, 0xff9b, 1] || seg[..2] == [0x2001, 0];
            let never = translated
                || v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xffc0) == 0xfe80
                || (seg[0] & 0xffc0) == 0xfec0;
            // Unique local, and documentation (2001:db8::/32, 3fff::/20).
            let private = (seg[0] & 0xfe00) == 0xfc00 || seg[..2] == [0x2001, 0xdb8] || (seg[0] & 0xfff0) == 0x3ff0;
            !(never || (strict && private))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(rules: &[&str]) -> Egress {
        Egress::Allow(rules.iter().map(|r| parse_rule(r).unwrap_or_else(|e| panic!("{r}: {e}"))).collect())
    }

    #[test]
    fn rules_parse_and_print() {
        for (text, shown) in [
            ("api.anthropic.com", "api.anthropic.com"),
            ("API.Anthropic.com.", "api.anthropic.com"),
            ("*.openai.com", "*.openai.com"),
            ("git.example.org:8443", "git.example.org:8443"),
            ("10.0.0.7", "10.0.0.7"),
            ("[::1]:8080", "[::1]:8080"),
            ("::1", "::1"),
        ] {
            assert_eq!(parse_rule(text).map(|r| r.to_string()), Ok(shown.to_owned()), "{text}");
        }
        // A name the C resolver reads as an address (learn mode once drafted `0x5db8d822`).
        for bad in [
            "",
            "*.com",
            "a b",
            "x:0",
            "x:99999",
            "*.10.0.0.1",
            "http://x.com",
            "[::1",
            "a..b",
            "0x5db8d822",
            "1.0x7f",
            "2130706433",
        ] {
            assert!(parse_rule(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn matching() {
        let e = allow(&["api.anthropic.com", "*.openai.com", "fake.test:8443", "127.0.0.1"]);
        assert!(e.allows("api.anthropic.com", 443));
        assert!(e.allows("API.anthropic.com.", 443));
        assert!(!e.allows("api.anthropic.com", 80));
        assert!(!e.allows("anthropic.com", 443));
        assert!(!e.allows("evil-api.anthropic.com.attacker.net", 443));
        assert!(e.allows("chatgpt.api.openai.com", 443));
        assert!(!e.allows("openai.com", 443));
        assert!(!e.allows("xopenai.com", 443));
        assert!(e.allows("fake.test", 8443));
        assert!(!e.allows("fake.test", 443));
        assert!(e.allows("127.0.0.1", 443));
        assert!(!e.allows("127.0.0.2", 443));
        assert!(!e.allows("::1", 443));
        assert!(Egress::Learn.allows("anything.example", 22));
    }
}
