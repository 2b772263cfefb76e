//! Upstream response heads: `parse_response` on arbitrary bytes, then `write_client`.
//!
//! Input: byte 0 bit 0 = the request was HEAD; the rest is the upstream's bytes.
//!
//! Properties: head_len within the buffer; prefix-consistent (the head alone parses to the same
//! head, strictly shorter prefixes are Partial); for every client (HTTP/1.1 or 1.0, keep-alive
//! or not) the client head ends in CRLF CRLF, re-parses as a Complete response covering all of
//! it, with the same status, the same body framing (a chunked body de-chunked for an HTTP/1.0
//! client becomes read-until-close), no hop-by-hop field except our own `Connection`, and at
//! most one `Content-Length`.
#![no_main]

use certgate::http::{parse_response, Limits, Parse, ResponseBody};
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, buf)) = data.split_first() else {
        return;
    };
    let was_head = sel & 1 == 1;
    let limits = Limits::default();
    let head = match parse_response(buf, was_head, &limits) {
        Ok(Parse::Complete(h)) => h,
        _ => return,
    };
    let n = head.head_len();
    assert!(n <= buf.len());
    assert!(buf[..n].ends_with(b"\r\n\r\n"));
    match parse_response(&buf[..n], was_head, &limits) {
        Ok(Parse::Complete(h2)) => assert_eq!(h2, head, "head differs when parsed alone"),
        other => panic!("head alone parsed as {other:?}"),
    }
    for cut in [n - 1, n / 2, 0] {
        match parse_response(&buf[..cut], was_head, &limits) {
            Ok(Parse::Partial) => {}
            other => panic!("prefix of {cut}/{n} bytes parsed as {other:?}"),
        }
    }

    let relaxed = Limits {
        max_head_bytes: usize::MAX,
        max_headers: usize::MAX,
    };
    for (client_keep_alive, client_http10) in
        [(true, false), (false, false), (true, true), (false, true)]
    {
        let mut out = Vec::new();
        head.write_client(buf, client_keep_alive, client_http10, &mut out);
        assert!(out.ends_with(b"\r\n\r\n"));
        let again = match parse_response(&out, was_head, &relaxed) {
            Ok(Parse::Complete(h)) => h,
            other => panic!(
                "client head does not re-parse: {other:?}\n{}",
                String::from_utf8_lossy(&out)
            ),
        };
        assert_eq!(again.head_len(), out.len());
        assert_eq!(again.status(), head.status());
        let expected_body = match (head.body(), client_http10) {
            (ResponseBody::Chunked, true) => &ResponseBody::UntilClose,
            (b, _) => b,
        };
        assert_eq!(
            again.body(),
            expected_body,
            "body framing changed (http10 client: {client_http10})"
        );

        let mut lengths = 0;
        let mut connections = 0;
        for line in common::header_lines(&out) {
            let colon = line.iter().position(|b| *b == b':').expect("no colon");
            let name = line[..colon].to_ascii_lowercase();
            match name.as_slice() {
                b"content-length" => lengths += 1,
                b"connection" => {
                    connections += 1;
                    assert!(
                        line == b"Connection: close" || line == b"Connection: keep-alive",
                        "client Connection forwarded: {:?}",
                        String::from_utf8_lossy(line)
                    );
                }
                b"keep-alive" | b"proxy-connection" | b"te" | b"trailer" | b"upgrade" => panic!(
                    "hop-by-hop field forwarded: {:?}",
                    String::from_utf8_lossy(line)
                ),
                b"transfer-encoding" => assert!(!client_http10, "TE sent to an HTTP/1.0 client"),
                _ => {}
            }
        }
        assert!(lengths <= 1, "{lengths} Content-Length fields");
        assert!(connections <= 1, "{connections} Connection fields");
    }
});
