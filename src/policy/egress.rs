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
