//! Client request heads: `parse_request` on arbitrary bytes, then `write_upstream`.
//!
//! Properties checked (beyond "does not panic"):
//! * a Complete head never claims more bytes than the buffer holds;
//! * parsing is prefix-consistent: `buf[..head_len]` alone parses to the same head, and a
//!   strictly shorter prefix is `Partial` (a caller reading in pieces sees the same outcome);
//! * the upstream head re-parses as a Complete request covering all of it, ends with
//!   CRLF CRLF, keeps method, target and body framing, carries exactly one
//!   `X-Forwarded-Client-Cert` (ours, verbatim) and no client header that normalizes
//!   (lowercase, `_` → `-`) to a name the proxy manages.
#![no_main]

use certgate::http::{parse_request, Inject, Limits, Parse};
use libfuzzer_sys::fuzz_target;

mod common;

const CLIENT_ADDR: &[u8] = b"203.0.113.7";
const FORWARDED: &[u8] = b"for=203.0.113.7;proto=https";
const XFCC_LINE: &[u8] = b"X-Forwarded-Client-Cert: Hash=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef;Cert=\"-----BEGIN%20CERTIFICATE-----%0AMIIB%2Fz%3D%3D%0A-----END%20CERTIFICATE-----%0A\";Chain=\"-----BEGIN%20CERTIFICATE-----%0AMIIB%2Fz%3D%3D%0A-----END%20CERTIFICATE-----%0A\"\r\n";

/// Names the proxy interprets or manages (lowercase, dash spelling): no client copy spelled
/// with `_` may reach the upstream, and the proxy-owned ones only as the proxy writes them.
const MANAGED: [&[u8]; 18] = [
    b"host",
    b"content-length",
    b"transfer-encoding",
    b"connection",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-client-cert",
    b"client-cert",
    b"client-cert-chain",
    b"x-arr-clientcert",
    b"forwarded",
    b"x-real-ip",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"upgrade",
];

fn normalized(name: &[u8]) -> Vec<u8> {
    name.iter()
        .map(|b| {
            if *b == b'_' {
                b'-'
            } else {
                b.to_ascii_lowercase()
            }
        })
        .collect()
}

/// `(name, whole line)` for each header line of a well-formed head.
fn named_lines(head: &[u8]) -> Vec<(&[u8], &[u8])> {
    common::header_lines(head)
        .into_iter()
        .map(|line| {
            let colon = line
                .iter()
                .position(|b| *b == b':')
                .expect("header line without colon");
            (&line[..colon], line)
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let head = match parse_request(data, &limits) {
        Ok(Parse::Complete(h)) => h,
        _ => return,
    };
    let n = head.head_len();
    assert!(n <= data.len(), "head_len {n} > buffer {}", data.len());
    assert!(data[..n].ends_with(b"\r\n\r\n"));

    // Prefix consistency.
    match parse_request(&data[..n], &limits) {
        Ok(Parse::Complete(h2)) => assert_eq!(h2, head, "head differs when parsed alone"),
        other => panic!("head alone parsed as {other:?}"),
    }
    for cut in [n - 1, n / 2, 0] {
        match parse_request(&data[..cut], &limits) {
            Ok(Parse::Partial) => {}
            other => panic!("prefix of {cut}/{n} bytes parsed as {other:?}"),
        }
    }

    // A rewritten head may carry a few more fields and bytes than the client's.
    let relaxed = Limits {
        max_head_bytes: usize::MAX,
        max_headers: usize::MAX,
    };
    for xfcc in [Some(XFCC_LINE), None] {
        let inject = Inject {
            client_addr: CLIENT_ADDR,
            forwarded: FORWARDED,
            xfcc_line: xfcc,
            upstream_host: b"app.internal:8080",
            upgrade: false,
            target: None,
        };
        let mut out = Vec::new();
        head.write_upstream(data, &inject, &mut out);
        assert!(
            out.ends_with(b"\r\n\r\n"),
            "upstream head not CRLF CRLF terminated"
        );

        match parse_request(&out, &relaxed) {
            Ok(Parse::Complete(up)) => {
                assert_eq!(
                    up.head_len(),
                    out.len(),
                    "trailing bytes after the upstream head"
                );
                assert_eq!(up.method(&out), head.method(data));
                assert_eq!(up.target(&out), head.target(data));
                assert_eq!(up.body(), head.body(), "body framing changed");
                assert!(!up.is_http10());
                if head.host(data).is_some() {
                    assert_eq!(up.host(&out), head.host(data));
                }
            }
            other => panic!(
                "upstream head does not re-parse: {other:?}\n{}",
                String::from_utf8_lossy(&out)
            ),
        }

        let lines = named_lines(&out);
        let mut xfcc_seen = 0;
        let mut xff_seen = 0;
        let mut proto_seen = 0;
        let mut forwarded_seen = 0;
        for (name, line) in &lines {
            let norm = normalized(name);
            if MANAGED.contains(&norm.as_slice()) {
                assert!(
                    !name.contains(&b'_'),
                    "underscore spelling of a managed name forwarded: {:?}",
                    String::from_utf8_lossy(line)
                );
            }
            match norm.as_slice() {
                b"x-forwarded-client-cert" => {
                    xfcc_seen += 1;
                    let with_crlf = [*line, &b"\r\n"[..]].concat();
                    assert_eq!(
                        Some(&with_crlf[..]),
                        xfcc,
                        "X-Forwarded-Client-Cert not ours"
                    );
                }
                b"x-forwarded-for" => {
                    xff_seen += 1;
                    assert!(
                        line.ends_with(CLIENT_ADDR),
                        "XFF does not end in the client address"
                    );
                }
                b"forwarded" => {
                    forwarded_seen += 1;
                    assert!(
                        line.ends_with(FORWARDED),
                        "Forwarded does not end in our element"
                    );
                }
                // The harness injects only XFCC: any other identity header is a client's.
                b"client-cert" | b"client-cert-chain" | b"x-arr-clientcert" => panic!(
                    "client copy of an identity header forwarded: {:?}",
                    String::from_utf8_lossy(line)
                ),
                b"x-real-ip" => panic!(
                    "client X-Real-IP forwarded: {:?}",
                    String::from_utf8_lossy(line)
                ),
                b"x-forwarded-proto" => {
                    proto_seen += 1;
                    assert_eq!(*line, b"X-Forwarded-Proto: https");
                }
                b"connection" | b"keep-alive" | b"proxy-connection" | b"te" | b"trailer"
                | b"upgrade" | b"expect" => panic!(
                    "hop-by-hop field forwarded: {:?}",
                    String::from_utf8_lossy(line)
                ),
                _ => {}
            }
        }
        assert_eq!(
            xfcc_seen,
            usize::from(xfcc.is_some()),
            "X-Forwarded-Client-Cert count"
        );
        assert_eq!(xff_seen, 1, "X-Forwarded-For count");
        assert_eq!(proto_seen, 1, "X-Forwarded-Proto count");
        assert_eq!(forwarded_seen, 1, "Forwarded count");
    }
});
