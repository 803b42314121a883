//! The first bytes a client sends through a tunnel, when they are a TLS ClientHello: the
//! server names it asks for (SNI), read before any of it reaches the upstream, so a tunnel
//! opened to an allowed name cannot ask the server at that address for another one (domain
//! fronting: `CONNECT api.vendor.com:443`, then a handshake for a site of the attacker's on
//! the same CDN edge).
//!
//! A server may answer the first hello with a HelloRetryRequest (TLS 1.3), on which the client
//! sends a second ClientHello: its names are checked the same way (the server's first record
//! is peeked at before it is relayed, to tell).
//!
//! Records and the handshake message are parsed by `tls-parser`; the extension block is split
//! here by its plain type-length framing, so that an extension `tls-parser` reads differently
//! from the server cannot hide a `server_name` after it. Whatever starts as a TLS handshake
//! record (of any type: a server may skip an alert sent before the hello) and cannot be read
//! as a whole ClientHello in the first records is refused: a server might read it. Anything
//! else (no TLS, or a server that speaks first) passes as it is: the destination was decided
//! by the CONNECT.

use tls_parser::{
    parse_tls_extension_sni_content, parse_tls_message_handshake, parse_tls_raw_record, SNIType, TlsExtension,
    TlsMessage, TlsMessageHandshake, TlsRecordType,
};

/// Most bytes of handshake records read for one ClientHello (a post-quantum key share makes
/// one ~2 KiB; the record limit is 16 KiB, and a hello may span records).
pub const MAX_HELLO: usize = 64 << 10;

/// The `server_name` extension's type.
const SERVER_NAME: u16 = 0;

/// What the bytes a client sent first say.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// Not a TLS handshake record: nothing to check.
    NotTls,
    /// More bytes are needed to read the whole ClientHello.
    Partial,
    /// A whole ClientHello, and the host names of its `server_name` extension (none: the
    /// client asked for no name).
    Names(Vec<String>),
}

/// Read `buf`, the first bytes of the client's side of a tunnel.
pub fn read(buf: &[u8]) -> Result<Hello, String> {
    match buf.first() {
        None => return Ok(Hello::Partial),
        // Any TLS record (change_cipher_spec 20, alert 21, handshake 22, application_data 23,
        // heartbeat 24) is read as TLS: Go's and Java's TLS servers, and BoringSSL's, drop
        // warning alerts sent before the ClientHello, so a hello behind one would pass
        // unread. The first record must be the hello's.
        Some(b) if !(TlsRecordType::ChangeCipherSpec.0..=TlsRecordType::Heartbeat.0).contains(b) => {
            return Ok(Hello::NotTls)
        }
        Some(_) => {}
    }
    // The handshake message may be split over several records: join their payloads until the
    // message's own length (its 4-byte header: type, 24-bit length) is reached.
    let mut message = Vec::new();
    let mut rest = buf;
    loop {
        if let Some(whole) = message_len(&message) {
            if message.len() >= whole {
                break;
            }
        }
        if rest.is_empty() {
            return Ok(Hello::Partial);
        }
        let record = match parse_tls_raw_record(rest) {
            Ok((after, record)) => {
                rest = after;
                record
            }
            Err(tls_parser::Err::Incomplete(_)) => return Ok(Hello::Partial),
            Err(e) => return Err(format!("a TLS record that cannot be read ({e:?})")),
        };
        if record.hdr.record_type != TlsRecordType::Handshake {
            let at = if message.is_empty() { "before" } else { "inside" };
            return Err(format!("a TLS {:?} record {at} the ClientHello", record.hdr.record_type));
        }
        if record.data.is_empty() {
            return Err("an empty handshake record".into());
        }
        message.extend_from_slice(record.data);
    }
    let msg = match parse_tls_message_handshake(&message) {
        Ok(([], msg)) => msg,
        Ok(_) => return Err("bytes after the ClientHello in its records".into()),
        Err(e) => return Err(format!("a ClientHello that cannot be read ({e:?})")),
    };
    let TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)) = msg else {
        return Err("a handshake message other than ClientHello first".into());
    };
    server_names(hello.ext.unwrap_or_default()).map(Hello::Names)
}

/// Read `buf`, what the client sent after the server asked for a second ClientHello (a
/// HelloRetryRequest, [`is_retry_request`]): change_cipher_spec records (TLS 1.3's middlebox
/// compatibility) may come first, then the second hello, whose names count as the first's.
/// Anything else is refused.
pub fn read_second(mut buf: &[u8]) -> Result<Hello, String> {
    while buf.first() == Some(&TlsRecordType::ChangeCipherSpec.0) {
        match buf.get(..6) {
            None => return Ok(Hello::Partial),
            Some([_, _, _, 0, 1, 1]) => buf = &buf[6..],
            Some(_) => return Err("a change_cipher_spec record that is not TLS 1.3's one byte".into()),
        }
    }
    match read(buf)? {
        Hello::NotTls => Err("no second ClientHello where the server asked for one".into()),
        other => Ok(other),
    }
}

/// The random of a HelloRetryRequest (RFC 8446, 4.1.3): SHA-256 of "HelloRetryRequest".
const RETRY_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91, 0xc2, 0xa2, 0x11,
    0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// Bytes of a server's first record that tell a HelloRetryRequest: the record header (5), the
/// handshake header (4), the legacy version (2) and the random (32).
pub const SERVER_HELLO_HEAD: usize = 43;

/// Whether `head`, the first [`SERVER_HELLO_HEAD`] bytes the server sent, is a
/// HelloRetryRequest: a ServerHello (handshake type 2) with RFC 8446's fixed random.
pub fn is_retry_request(head: &[u8]) -> bool {
    head.len() >= SERVER_HELLO_HEAD
        && head[0] == TlsRecordType::Handshake.0
        && head[5] == 2
        && head[11..SERVER_HELLO_HEAD] == RETRY_RANDOM
}

/// The length of the handshake message whose start is `message` (header included), once its
/// header is there.
fn message_len(message: &[u8]) -> Option<usize> {
    let h = message.get(..4)?;
    Some(4 + (usize::from(h[1]) << 16 | usize::from(h[2]) << 8 | usize::from(h[3])))
}

/// Every host name of every `server_name` extension in a ClientHello's extension block,
/// which must split exactly into (type, length, data) entries.
fn server_names(mut block: &[u8]) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    while !block.is_empty() {
        let Some((&[t0, t1, l0, l1], after)) = block.split_first_chunk::<4>() else {
            return Err("a ClientHello extension block cut short".into());
        };
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        let Some((data, after)) = after.split_at_checked(len) else {
            return Err("a ClientHello extension longer than its block".into());
        };
        block = after;
        if u16::from_be_bytes([t0, t1]) != SERVER_NAME {
            continue;
        }
        let list = match parse_tls_extension_sni_content(data) {
            Ok(([], TlsExtension::SNI(list))) => list,
            _ => return Err("a server_name extension that cannot be read".into()),
        };
        // The list's own length must cover exactly the entries read.
        let read: usize = list.iter().map(|(_, name)| 3 + name.len()).sum();
        if data.len() != 2 + read {
            return Err("a server_name extension that cannot be read".into());
        }
        for (kind, name) in list {
            if kind != SNIType::HostName {
                return Err(format!("a server name of unknown type {}", kind.0));
            }
            let name = std::str::from_utf8(name).map_err(|_| "a server name that is not ASCII".to_owned())?;
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello (TLS 1.2 layout) with the given extensions, as one handshake message.
    fn message(extensions: &[u8]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend([7u8; 32]); // random
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one cipher suite
        body.extend([1, 0]); // compression: null
        body.extend((extensions.len() as u16).to_be_bytes());
        body.extend(extensions);
        let mut m = vec![1];
        m.extend(&(body.len() as u32).to_be_bytes()[1..]);
        m.extend(body);
        m
    }

    fn sni(names: &[&str]) -> Vec<u8> {
        let mut list = Vec::new();
        for n in names {
            list.push(0);
            list.extend((n.len() as u16).to_be_bytes());
            list.extend(n.as_bytes());
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend(list);
        extension(SERVER_NAME, &data)
    }

    fn extension(t: u16, data: &[u8]) -> Vec<u8> {
        let mut e = t.to_be_bytes().to_vec();
        e.extend((data.len() as u16).to_be_bytes());
        e.extend(data);
        e
    }

    /// `message` in records of at most `size` bytes each.
    fn records(message: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for part in message.chunks(size) {
            out.extend([22, 3, 1]);
            out.extend((part.len() as u16).to_be_bytes());
            out.extend(part);
        }
        out
    }

    #[test]
    fn names_are_read_from_whole_hellos_only() {
        let hello = records(&message(&sni(&["api.example.com"])), 16384);
        assert_eq!(read(&hello), Ok(Hello::Names(vec!["api.example.com".into()])));
        for cut in [1, 5, 20, hello.len() - 1] {
            assert_eq!(read(&hello[..cut]), Ok(Hello::Partial), "cut at {cut}");
        }
        // Split over records of 7 bytes: read as one message.
        let split = records(&message(&sni(&["api.example.com"])), 7);
        assert_eq!(read(&split), Ok(Hello::Names(vec!["api.example.com".into()])));
        assert_eq!(read(&split[..split.len() - 3]), Ok(Hello::Partial));
        // No server_name: no names.
        assert_eq!(read(&records(&message(&extension(10, &[0, 2, 0, 29])), 16384)), Ok(Hello::Names(vec![])));
        assert_eq!(read(b"GET / HTTP/1.1\r\n"), Ok(Hello::NotTls));
        assert_eq!(read(b"SSH-2.0-x\r\n"), Ok(Hello::NotTls));
        assert_eq!(read(b""), Ok(Hello::Partial));
    }

    /// Every name counts, wherever it is: after an extension `tls-parser` would read as
    /// malformed, in a second `server_name` extension, or second in one list.
    #[test]
    fn no_name_hides() {
        let mut exts = extension(51, &[0xff, 0xff, 1]); // a key_share tls-parser cannot read
        exts.extend(sni(&["a.example"]));
        exts.extend(sni(&["b.example"]));
        assert_eq!(
            read(&records(&message(&exts), 16384)),
            Ok(Hello::Names(vec!["a.example".into(), "b.example".into()]))
        );
        let two = sni(&["a.example", "evil.example"]);
        assert_eq!(
            read(&records(&message(&two), 16384)),
            Ok(Hello::Names(vec!["a.example".into(), "evil.example".into()]))
        );
    }

    proptest::proptest! {
        /// Whatever a cell sends, reading it never panics, and bytes after a whole hello do
        /// not change what it says.
        #[test]
        fn any_bytes_are_read_safely(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600), cut in 0usize..600) {
            let _ = read(&bytes);
            let mut hello = records(&message(&sni(&["a.example"])), 1 + cut % 90);
            let whole = read(&hello);
            hello.extend(&bytes);
            proptest::prop_assert_eq!(read(&hello), whole);
        }
    }

    #[test]
    fn a_second_hello_is_read_behind_its_change_cipher_spec() {
        let hello = records(&message(&sni(&["b.example"])), 16384);
        assert_eq!(read_second(&hello), Ok(Hello::Names(vec!["b.example".into()])));
        let mut behind = vec![20, 3, 3, 0, 1, 1];
        behind.extend(&hello);
        assert_eq!(read_second(&behind), Ok(Hello::Names(vec!["b.example".into()])));
        assert_eq!(read_second(&behind[..4]), Ok(Hello::Partial));
        assert_eq!(read_second(&behind[..20]), Ok(Hello::Partial));
        assert!(read_second(b"GET / HTTP/1.1\r\n").is_err());
        assert!(read_second(&[20, 3, 3, 0, 2, 1, 1]).is_err());
        assert!(read_second(&[21, 3, 3, 0, 2, 1, 0]).is_err());
        let mut retry = vec![22, 3, 3, 0, 90, 2, 0, 0, 86, 3, 3];
        retry.extend(RETRY_RANDOM);
        assert!(is_retry_request(&retry));
        retry[20] ^= 1;
        assert!(!is_retry_request(&retry));
        assert!(!is_retry_request(&retry[..30]));
    }

    #[test]
    fn what_cannot_be_read_is_refused() {
        let good = message(&sni(&["a.example"]));
        // An extension longer than the block; a block that ends inside an extension's header.
        assert!(read(&records(&message(&[0, 10, 0, 50, 1, 2]), 16384)).is_err());
        assert!(read(&records(&message(&[0, 10, 0]), 16384)).is_err());
        // Another record type in the middle of the hello.
        let mut mixed = records(&good[..10], 16384);
        mixed.extend([21, 3, 3, 0, 2, 1, 0]);
        mixed.extend(records(&good[10..], 16384));
        assert!(read(&mixed).is_err());
        // Another handshake message first.
        let mut server = good.clone();
        server[0] = 2;
        assert!(read(&records(&server, 16384)).is_err());
        // A name of another type; a name list whose length disagrees with its entries.
        let mut other = sni(&["a.example"]);
        other[6] = 1;
        assert!(read(&records(&message(&other), 16384)).is_err());
        let mut short = sni(&["a.example"]);
        short[5] -= 1;
        assert!(read(&records(&message(&short), 16384)).is_err());
        // Trailing bytes after the message in its records.
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(read(&records(&trailing, 16384)).is_err());
        assert!(read(&[22, 3, 1, 0, 0]).is_err(), "an empty record");
        // From the seventh egress review: a warning alert (Go, Java and BoringSSL servers
        // drop it) or any other record before the hello passed it as not TLS, unread.
        for first in [[21u8, 3, 1, 0, 2, 1, 90], [20, 3, 1, 0, 1, 1, 0], [23, 3, 3, 0, 1, 0, 0], [24, 3, 1, 0, 1, 1, 0]]
        {
            let len = 5 + usize::from(first[4]);
            let mut prefixed = first[..len].to_vec();
            prefixed.extend(records(&good, 16384));
            assert!(read(&prefixed).is_err(), "{first:?}");
            assert!(matches!(read(&prefixed[..3]), Ok(Hello::Partial)), "{first:?}");
        }
    }
}
