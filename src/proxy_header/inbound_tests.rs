//! Unit tests of `proxy_header::inbound`: headers from the send side's encoder and from ppp's
//! builder parse back; every prefix of a header is incomplete; bad and oversized headers are
//! refused; the bytes after a header are left alone.
use super::*;
use crate::proxy_header::{encode, ClientFacts, ProxyVersion};
use ppp::v2::{Builder, Command, Protocol, Type, Version};

const CLIENT_HELLO_START: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn sent(version: ProxyVersion, client: &str, local: &str) -> Vec<u8> {
    let facts = ClientFacts {
        client: Some(sa(client)),
        local: Some(sa(local)),
        tls_version: "TLSv1.3",
        cipher: "TLS13_AES_128_GCM_SHA256",
        alpn: Some(b"h2"),
        sni: Some("example.com"),
        ..ClientFacts::default()
    };
    encode(version, &facts).unwrap()
}

/// Every strict prefix is incomplete; the whole header followed by TLS bytes is complete with
/// exactly the header's length.
fn assert_parses(accept: ProxyAccept, header: &[u8], expected: Received) {
    for n in 0..header.len() {
        assert_eq!(
            parse(accept, &header[..n]),
            Parsed::Incomplete,
            "{accept:?}, prefix of {n} bytes of {header:?}"
        );
    }
    assert_eq!(
        parse(accept, header),
        Parsed::Complete(expected, header.len())
    );
    let mut more = header.to_vec();
    more.extend_from_slice(CLIENT_HELLO_START);
    assert_eq!(
        parse(accept, &more),
        Parsed::Complete(expected, header.len())
    );
}

fn proxied(source: &str, destination: &str) -> Received {
    Received::Proxied {
        source: sa(source),
        destination: sa(destination),
    }
}

#[test]
fn v1_headers_parse_to_their_addresses() {
    let h = sent(ProxyVersion::V1, "203.0.113.7:50000", "10.0.0.1:8443");
    let want = proxied("203.0.113.7:50000", "10.0.0.1:8443");
    assert_parses(ProxyAccept::V1, &h, want);
    assert_parses(ProxyAccept::Any, &h, want);
    let h = sent(ProxyVersion::V1, "[2001:db8::7]:1", "[2001:db8::1]:443");
    assert_parses(
        ProxyAccept::V1,
        &h,
        proxied("[2001:db8::7]:1", "[2001:db8::1]:443"),
    );
    assert_parses(ProxyAccept::V1, b"PROXY UNKNOWN\r\n", Received::Unknown);
    assert_parses(
        ProxyAccept::Any,
        b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n",
        Received::Unknown,
    );
}

#[test]
fn v2_headers_parse_to_their_addresses_and_ignore_tlvs() {
    let h = sent(ProxyVersion::V2, "203.0.113.7:50000", "10.0.0.1:8443");
    let want = proxied("203.0.113.7:50000", "10.0.0.1:8443");
    assert_parses(ProxyAccept::V2, &h, want);
    assert_parses(ProxyAccept::Any, &h, want);
    let h = sent(ProxyVersion::V2, "[2001:db8::7]:1", "[2001:db8::1]:443");
    assert_parses(
        ProxyAccept::V2,
        &h,
        proxied("[2001:db8::7]:1", "[2001:db8::1]:443"),
    );
}

#[test]
fn v2_local_and_foreign_families_keep_the_socket_addresses() {
    let local = Builder::with_addresses(
        Version::Two | Command::Local,
        Protocol::Unspecified,
        v2::Addresses::Unspecified,
    )
    .build()
    .unwrap();
    assert_eq!(local.len(), 16);
    assert_parses(ProxyAccept::V2, &local, Received::Local);
    // HAProxy's health checks send LOCAL with the addresses filled in; still LOCAL.
    let local = Builder::with_addresses(
        Version::Two | Command::Local,
        Protocol::Stream,
        (sa("10.0.0.9:1"), sa("10.0.0.1:2")),
    )
    .build()
    .unwrap();
    assert_parses(ProxyAccept::Any, &local, Received::Local);
    let unspec = Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Unspecified,
        v2::Addresses::Unspecified,
    )
    .write_tlv(Type::NoOp, b"pad".as_slice())
    .unwrap()
    .build()
    .unwrap();
    assert_parses(ProxyAccept::V2, &unspec, Received::Unknown);
    let udp = Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Datagram,
        (sa("10.0.0.9:1"), sa("10.0.0.1:2")),
    )
    .build()
    .unwrap();
    assert_parses(ProxyAccept::V2, &udp, Received::Unknown);
}

#[test]
fn the_wrong_version_or_no_header_is_missing() {
    let v1 = sent(ProxyVersion::V1, "203.0.113.7:50000", "10.0.0.1:8443");
    let v2 = sent(ProxyVersion::V2, "203.0.113.7:50000", "10.0.0.1:8443");
    let missing = |a| Parsed::Invalid(BadHeader::Missing(a));
    assert_eq!(parse(ProxyAccept::V2, &v1), missing(ProxyAccept::V2));
    assert_eq!(parse(ProxyAccept::V1, &v2), missing(ProxyAccept::V1));
    for accept in [ProxyAccept::V1, ProxyAccept::V2, ProxyAccept::Any] {
        assert_eq!(parse(accept, CLIENT_HELLO_START), missing(accept));
        assert_eq!(parse(accept, b"GET / HTTP/1.1\r\n"), missing(accept));
        // Decided on the first byte: no waiting for a header that cannot come.
        assert_eq!(parse(accept, b"\x16"), missing(accept));
    }
    assert_eq!(
        BadHeader::Missing(ProxyAccept::Any).to_string(),
        "the connection does not start with a PROXY header (v1 or v2 expected)"
    );
}

#[test]
fn malformed_v1_lines_are_refused() {
    for bad in [
        &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"[..],
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
        b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
        b"PROXY TCP4 \xff.2.3.4 5.6.7.8 1 2\r\n",
    ] {
        assert!(
            matches!(
                parse(ProxyAccept::V1, bad),
                Parsed::Invalid(BadHeader::V1(_))
            ),
            "{:?}: {:?}",
            String::from_utf8_lossy(bad),
            parse(ProxyAccept::V1, bad)
        );
    }
    // Lines that do not start with "PROXY " are refused from the first byte that differs.
    for bad in [
        &b"PROXY\r\n"[..],
        b"PROXYTCP4 1.2.3.4",
        b"PRONTO",
        b"PROX\r",
    ] {
        assert_eq!(
            parse(ProxyAccept::Any, bad),
            Parsed::Invalid(BadHeader::Missing(ProxyAccept::V1)),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn v1_lines_longer_than_107_bytes_are_refused() {
    let mut long = b"PROXY UNKNOWN ".to_vec();
    long.resize(MAX_V1, b'x');
    assert_eq!(
        parse(ProxyAccept::V1, &long),
        Parsed::Invalid(BadHeader::TooLong(MAX_V1))
    );
    long.truncate(MAX_V1 - 1);
    assert_eq!(parse(ProxyAccept::V1, &long), Parsed::Incomplete);
    // The longest TCP6 line is exactly the limit and parses.
    let longest = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    assert_eq!(longest.len(), MAX_V1 - 3);
    assert!(matches!(
        parse(ProxyAccept::Any, longest),
        Parsed::Complete(Received::Proxied { .. }, n) if n == longest.len()
    ));
    // A CR at byte 107 would need a 108th for its LF.
    let mut cr_last = b"PROXY UNKNOWN ".to_vec();
    cr_last.resize(MAX_V1 - 1, b'x');
    cr_last.push(b'\r');
    assert_eq!(
        parse(ProxyAccept::V1, &cr_last),
        Parsed::Invalid(BadHeader::TooLong(MAX_V1))
    );
}

#[test]
fn bad_v2_fixed_parts_are_refused() {
    let good = sent(ProxyVersion::V2, "203.0.113.7:50000", "10.0.0.1:8443");
    let with = |at: usize, byte: u8| {
        let mut h = good.clone();
        h[at] = byte;
        h
    };
    // Signature, version (high nibble of byte 12), command, family, transport.
    for (at, byte) in [
        (3, b'X'),
        (11, b'\0'),
        (12, 0x11),
        (12, 0x31),
        (12, 0x22),
        (13, 0x41),
        (13, 0x13),
    ] {
        let bad = with(at, byte);
        assert!(
            matches!(
                parse(ProxyAccept::V2, &bad),
                Parsed::Invalid(BadHeader::V2(_))
            ),
            "byte {at} = {byte:#x}: {:?}",
            parse(ProxyAccept::V2, &bad)
        );
    }
    // Too short for the IPv4 addresses it announces.
    let mut short = good[..16].to_vec();
    short[14..16].copy_from_slice(&4u16.to_be_bytes());
    short.extend_from_slice(&[1, 2, 3, 4]);
    assert!(matches!(
        parse(ProxyAccept::Any, &short),
        Parsed::Invalid(BadHeader::V2(v2::ParseError::InvalidAddresses(4, 12)))
    ));
}

#[test]
fn v2_lengths_past_the_limit_are_refused_from_the_fixed_part() {
    let good = sent(ProxyVersion::V2, "203.0.113.7:50000", "10.0.0.1:8443");
    let mut huge = good[..16].to_vec();
    huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    assert_eq!(
        parse(ProxyAccept::V2, &huge),
        Parsed::Invalid(BadHeader::TooLong(MAX_V2))
    );
    // The limit itself is taken.
    let body = MAX_V2 - 16;
    let mut max = good[..16].to_vec();
    max[14..16].copy_from_slice(&(body as u16).to_be_bytes());
    max.extend_from_slice(&good[16..28]);
    // One NOOP TLV fills the rest.
    let pad = body - 12 - 3;
    max.push(0x04);
    max.extend_from_slice(&(pad as u16).to_be_bytes());
    max.resize(MAX_V2, 0);
    assert_eq!(
        parse(ProxyAccept::V2, &max),
        Parsed::Complete(proxied("203.0.113.7:50000", "10.0.0.1:8443"), MAX_V2)
    );
    max[15] += 1;
    assert_eq!(
        parse(ProxyAccept::V2, &max[..16]),
        Parsed::Invalid(BadHeader::TooLong(MAX_V2))
    );
}

#[test]
fn sources_must_send_a_header_only_when_listed() {
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let off = ProxyIn::default();
    assert!(!off.expected_from(ip("10.0.0.1")));
    let all = ProxyIn {
        accept: ProxyAccept::V2,
        from: Vec::new(),
    };
    assert!(all.expected_from(ip("203.0.113.9")));
    let listed = ProxyIn {
        accept: ProxyAccept::Any,
        from: vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ],
    };
    assert!(listed.expected_from(ip("10.9.9.9")));
    assert!(listed.expected_from(ip("::ffff:10.9.9.9")));
    assert!(listed.expected_from(ip("2001:db8::5")));
    assert!(!listed.expected_from(ip("192.168.0.1")));
}
