//! HTTP/2 → HTTP/1.1 translation: `http::h2::request_head` on an arbitrary header list.
//!
//! The input is length-prefixed segments (one length byte each): flags, method, path,
//! authority, then name/value pairs. Properties checked (beyond "does not panic"):
//! * a translated head is exactly one head: parsing it never stops early (`Partial`) nor
//!   completes before its end, so no byte a client sends over HTTP/2 can end the HTTP/1.1
//!   request early or start a second one (h2 → h1 smuggling);
//! * every line ends in CRLF and no other CR or LF is in the head;
//! * when it parses, the method and target are the ones given, the Host is the authority
//!   (when given), and each regular field given (but `cookie`, joined into one, and `host`,
//!   folded into the authority) is a line of its own, in order;
//! * after the proxy's rewrite (`write_upstream`) the head still parses as one head.
#![no_main]

mod common;

use certgate::http::h2::{request_head, Body, Request};
use certgate::http::request::{parse_request, Inject, Limits};
use certgate::http::Parse;
use libfuzzer_sys::fuzz_target;

fn segments(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((&len, rest)) = data.split_first() {
        let n = (len as usize).min(rest.len());
        out.push(&rest[..n]);
        data = &rest[n..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let segs = segments(data);
    if segs.len() < 3 {
        return;
    }
    let flags = segs[0].first().copied().unwrap_or(0);
    let method = segs[1];
    let path = segs[2];
    let authority = (flags & 1 == 1).then(|| segs.get(3).copied().unwrap_or(b""));
    let body = if flags & 2 == 2 { Body::Streamed } else { Body::None };
    let pairs: Vec<(&[u8], &[u8])> = segs[4.min(segs.len())..]
        .chunks(2)
        .map(|c| (c[0], c.get(1).copied().unwrap_or(b"")))
        .collect();
    let mut out = Vec::new();
    let req = Request {
        method,
        path,
        authority,
        fields: pairs.iter().copied(),
        body,
    };
    if request_head(req, &mut out).is_err() {
        return;
    }
    // CRLF only: each LF follows a CR, each CR precedes an LF.
    for (i, &b) in out.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && out[i - 1] == b'\r', "bare LF: {out:?}");
        }
        if b == b'\r' {
            assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR: {out:?}");
        }
    }
    let limits = Limits::default();
    let head = match parse_request(&out, &limits) {
        Ok(Parse::Complete(head)) => head,
        Ok(Parse::Partial) => panic!("a translated head is incomplete: {out:?}"),
        // Refused by the HTTP/1.1 rules (a missing Host, too many fields...): fine.
        Err(_) => return,
    };
    assert_eq!(head.head_len(), out.len(), "head ends early: {out:?}");
    assert_eq!(head.method(&out), method);
    if !path.is_empty() {
        assert_eq!(head.target(&out), path);
    }
    if let Some(a) = authority {
        assert_eq!(head.host(&out), Some(a));
    }
    let lines = common::header_lines(&out);
    let mut expected = pairs
        .iter()
        .filter(|(n, _)| *n != b"cookie" && !(authority.is_some() && *n == b"host"));
    for line in lines
        .iter()
        .filter(|l| !l.starts_with(b"host: ") || authority.is_none())
        .filter(|l| !l.starts_with(b"cookie: ") && !l.starts_with(b"transfer-encoding: "))
    {
        let (n, v) = expected.next().expect("more lines than fields");
        let mut want = n.to_vec();
        want.extend_from_slice(b": ");
        want.extend_from_slice(v);
        assert_eq!(*line, &want[..]);
    }
    let inject = Inject {
        client_addr: b"192.0.2.1",
        forwarded: b"for=192.0.2.1;proto=https",
        xfcc_line: Some(b"X-Forwarded-Client-Cert: Hash=00\r\n"),
        upstream_host: b"app",
        upgrade: false,
        target: None,
    };
    let mut up = Vec::new();
    head.write_upstream(&out, &inject, &mut up);
    match parse_request(&up, &limits) {
        Ok(Parse::Complete(h)) => assert_eq!(h.head_len(), up.len()),
        other => panic!("rewritten head does not parse: {other:?} {up:?}"),
    }
});
