//! Unit tests for request head parsing and the upstream rewrite, all through `parse_request`.

use super::*;

fn parse(bytes: &[u8]) -> Result<Parse<RequestHead>, HttpError> {
    parse_request(bytes, &Limits::default())
}

fn ok(bytes: &[u8]) -> RequestHead {
    match parse(bytes) {
        Ok(Parse::Complete(h)) => h,
        other => panic!("expected complete, got {other:?}"),
    }
}

fn err(bytes: &[u8]) -> HttpError {
    match parse(bytes) {
        Err(e) => e,
        other => panic!("expected error, got {other:?}"),
    }
}

fn upstream(bytes: &[u8]) -> String {
    upstream_with(bytes, None)
}

fn upstream_with(bytes: &[u8], xfcc: Option<&[u8]>) -> String {
    let head = ok(bytes);
    let mut out = Vec::new();
    head.write_upstream(
        bytes,
        &Inject {
            client_addr: b"203.0.113.7",
            forwarded: b"for=203.0.113.7;proto=https",
            xfcc_line: xfcc,
            upstream_host: b"app.internal:8080",
            upgrade: false,
            target: None,
        },
        &mut out,
    );
    String::from_utf8(out).unwrap()
}

// ----- basics ---------------------------------------------------------------------------------

#[test]
fn parses_simple_get() {
    let req = b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\n\r\n";
    let h = ok(req);
    assert_eq!(h.head_len(), req.len());
    assert_eq!(h.method(req), b"GET");
    assert_eq!(h.target(req), b"/a?b=c");
    assert_eq!(h.host(req), Some(&b"example.com"[..]));
    assert_eq!(*h.body(), RequestBody::None);
    assert!(h.keep_alive());
    assert!(!h.is_http10());
    assert!(!h.is_head());
    assert!(!h.expect_continue());
}

#[test]
fn head_len_excludes_following_body() {
    let req = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
    let h = ok(req);
    assert_eq!(h.head_len(), req.len() - 3);
    assert_eq!(*h.body(), RequestBody::Length(3));
}

#[test]
fn partial_head_needs_more() {
    assert_eq!(
        parse(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap(),
        Parse::Partial
    );
    assert_eq!(parse(b"").unwrap(), Parse::Partial);
    assert_eq!(parse(b"GE").unwrap(), Parse::Partial);
}

#[test]
fn detects_head_method() {
    assert!(ok(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n").is_head());
}

#[test]
fn accepts_any_token_method() {
    let req = b"PURGE-IT /x HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(ok(req).method(req), b"PURGE-IT");
}

#[test]
fn rejects_connect_with_501() {
    let e = err(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
    assert_eq!(e, HttpError::ConnectNotSupported);
    assert_eq!(e.status(), 501);
}

// ----- limits ---------------------------------------------------------------------------------

#[test]
fn rejects_incomplete_head_over_limit_with_431() {
    let limits = Limits {
        max_head_bytes: 32,
        max_headers: 100,
    };
    let mut req = b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: ".to_vec();
    req.extend_from_slice(&[b'a'; 64]);
    let e = parse_request(&req, &limits).unwrap_err();
    assert_eq!(e, HttpError::HeadTooLarge);
    assert_eq!(e.status(), 431);
}

#[test]
fn rejects_complete_head_over_limit_with_431() {
    let limits = Limits {
        max_head_bytes: 30,
        max_headers: 100,
    };
    let req = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: bbbbbbbbbb\r\n\r\n";
    assert_eq!(
        parse_request(req, &limits).unwrap_err(),
        HttpError::HeadTooLarge
    );
}

#[test]
fn accepts_head_exactly_at_limit() {
    let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let limits = Limits {
        max_head_bytes: req.len(),
        max_headers: 100,
    };
    assert!(matches!(
        parse_request(req, &limits),
        Ok(Parse::Complete(_))
    ));
}

#[test]
fn partial_head_under_limit_is_partial() {
    let limits = Limits {
        max_head_bytes: 64,
        max_headers: 100,
    };
    assert_eq!(
        parse_request(b"GET / HTTP/1.1\r\n", &limits).unwrap(),
        Parse::Partial
    );
}

#[test]
fn rejects_too_many_headers_with_431() {
    let limits = Limits {
        max_head_bytes: 65536,
        max_headers: 3,
    };
    let req = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    let e = parse_request(req, &limits).unwrap_err();
    assert_eq!(e, HttpError::TooManyHeaders);
    assert_eq!(e.status(), 431);
}

#[test]
fn clamps_max_headers_to_table_size() {
    let limits = Limits {
        max_head_bytes: 1 << 20,
        max_headers: 10_000,
    };
    let mut req = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for _ in 0..MAX_HEADERS {
        req.extend_from_slice(b"X: y\r\n");
    }
    req.extend_from_slice(b"\r\n");
    assert_eq!(
        parse_request(&req, &limits).unwrap_err(),
        HttpError::TooManyHeaders
    );
}

// ----- request line ---------------------------------------------------------------------------

#[test]
fn rejects_malformed_request_line() {
    for req in [
        &b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"GET /\r\nHost: a\r\n\r\n",
        b"G(ET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        assert_eq!(err(req).status(), 400, "{req:?}");
    }
}

#[test]
fn rejects_http2_version() {
    assert_eq!(
        err(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
        HttpError::BadVersion
    );
}

#[test]
fn rejects_http09_version() {
    assert_eq!(
        err(b"GET / HTTP/0.9\r\nHost: a\r\n\r\n"),
        HttpError::BadVersion
    );
}

#[test]
fn rejects_lowercase_version() {
    assert_eq!(err(b"GET / http/1.1\r\nHost: a\r\n\r\n").status(), 400);
}

// ----- line endings, names, values ------------------------------------------------------------

#[test]
fn rejects_bare_lf_line_terminator() {
    assert_eq!(
        err(b"GET / HTTP/1.1\nHost: a\r\n\r\n"),
        HttpError::BadLineEnding
    );
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n"),
        HttpError::BadLineEnding
    );
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nHost: a\n\n"),
        HttpError::BadLineEnding
    );
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nHost: a\r\n\n"),
        HttpError::BadLineEnding
    );
}

#[test]
fn rejects_bare_cr_in_head() {
    assert_eq!(err(b"GET / HTTP/1.1\rHost: a\r\n\r\n").status(), 400);
    assert_eq!(err(b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n").status(), 400);
    assert_eq!(err(b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n").status(), 400);
}

#[test]
fn rejects_obsolete_line_folding() {
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n").status(),
        400
    );
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\tc\r\n\r\n").status(),
        400
    );
}

#[test]
fn rejects_whitespace_before_colon() {
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
        HttpError::BadHeaderName
    );
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nHost: a\r\nX\t: b\r\n\r\n"),
        HttpError::BadHeaderName
    );
}

#[test]
fn rejects_empty_header_name() {
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n"),
        HttpError::BadHeaderName
    );
}

#[test]
fn rejects_control_chars_in_name() {
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nHost: a\r\nX\x01Y: b\r\n\r\n"),
        HttpError::BadHeaderName
    );
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nHost: a\r\nX\x7fY: b\r\n\r\n"),
        HttpError::BadHeaderName
    );
}

#[test]
fn rejects_control_chars_in_value() {
    for ctl in [0x00u8, 0x01, 0x0b, 0x1f, 0x7f] {
        let mut req = b"GET / HTTP/1.1\r\nHost: a\r\nX: b".to_vec();
        req.push(ctl);
        req.extend_from_slice(b"c\r\n\r\n");
        assert_eq!(err(&req), HttpError::BadHeaderValue, "ctl {ctl:#x}");
    }
}

#[test]
fn accepts_htab_and_obs_text_in_value() {
    let req = b"GET / HTTP/1.1\r\nHost: a\r\nX: b\tc\xe9\r\n\r\n";
    let head = ok(req);
    let mut out = Vec::new();
    let inject = Inject {
        client_addr: b"1.2.3.4",
        forwarded: b"for=1.2.3.4;proto=https",
        xfcc_line: None,
        upstream_host: b"app.internal:8080",
        upgrade: false,
        target: None,
    };
    head.write_upstream(req, &inject, &mut out);
    assert!(out.windows(8).any(|w| w == b"X: b\tc\xe9\r"));
}

// ----- Content-Length / Transfer-Encoding -----------------------------------------------------

#[test]
fn rejects_content_length_with_transfer_encoding() {
    let e = err(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert_eq!(e, HttpError::ContentLengthWithTransferEncoding);
    assert_eq!(e.status(), 400);
}

#[test]
fn rejects_differing_content_lengths() {
    assert_eq!(
        err(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
        HttpError::ConflictingContentLength
    );
}

#[test]
fn rejects_differing_content_lengths_in_one_field() {
    assert_eq!(
        err(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n"),
        HttpError::ConflictingContentLength
    );
}

#[test]
fn collapses_identical_content_lengths() {
    let req = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5, 5\r\n\r\n";
    assert_eq!(*ok(req).body(), RequestBody::Length(5));
    let up = upstream(req);
    assert_eq!(up.matches("ontent-").count(), 1, "{up}");
    assert!(up.contains("Content-Length: 5\r\n"));
}

#[test]
fn canonicalizes_content_length_digits() {
    let up = upstream(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n");
    assert!(up.contains("Content-Length: 7\r\n"), "{up}");
}

#[test]
fn rejects_non_digit_content_length() {
    for v in [
        &b"+5"[..],
        b"-1",
        b"5a",
        b"0x5",
        b"5 5",
        b"",
        b"5,",
        b",5",
        b"1.0",
    ] {
        let mut req = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: ".to_vec();
        req.extend_from_slice(v);
        req.extend_from_slice(b"\r\n\r\n");
        assert_eq!(err(&req), HttpError::InvalidContentLength, "{v:?}");
    }
}

#[test]
fn rejects_overflowing_content_length() {
    assert_eq!(
        err(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n"),
        HttpError::InvalidContentLength
    );
}

#[test]
fn accepts_max_u64_content_length() {
    let req = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n";
    assert_eq!(*ok(req).body(), RequestBody::Length(u64::MAX));
}

#[test]
fn accepts_chunked_transfer_encoding_any_case() {
    for te in ["chunked", "Chunked", "CHUNKED", " chunked "] {
        let req = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:{te}\r\n\r\n");
        assert_eq!(*ok(req.as_bytes()).body(), RequestBody::Chunked, "{te}");
    }
}

#[test]
fn rejects_unknown_coding_before_chunked_with_501() {
    let e = err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
    assert_eq!(e, HttpError::UnsupportedTransferCoding);
    assert_eq!(e.status(), 501);
}

#[test]
fn rejects_codings_split_over_fields_before_chunked_with_501() {
    let e = err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(e.status(), 501);
}

#[test]
fn rejects_chunked_not_final() {
    assert_eq!(
        err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
        HttpError::InvalidTransferEncoding
    );
}

#[test]
fn rejects_chunked_twice() {
    assert_eq!(
        err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
        HttpError::InvalidTransferEncoding
    );
    assert_eq!(
        err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
        HttpError::InvalidTransferEncoding
    );
}

#[test]
fn rejects_identity_transfer_encoding() {
    assert_eq!(
        err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n"),
        HttpError::InvalidTransferEncoding
    );
}

#[test]
fn rejects_empty_transfer_encoding() {
    assert_eq!(
        err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n"),
        HttpError::InvalidTransferEncoding
    );
    assert_eq!(
        err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n"),
        HttpError::InvalidTransferEncoding
    );
}

#[test]
fn rejects_transfer_encoding_with_garbage() {
    assert_eq!(
        err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n"),
        HttpError::InvalidTransferEncoding
    );
    assert_eq!(
        err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n"),
        HttpError::InvalidTransferEncoding
    );
}

#[test]
fn rejects_transfer_encoding_in_http10() {
    assert_eq!(
        err(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
        HttpError::TransferEncodingInHttp10
    );
}

#[test]
fn underscore_framing_headers_do_not_frame_and_are_dropped() {
    let req = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\nContent_Length: 9\r\nContent-Length: 3\r\n\r\n";
    assert_eq!(*ok(req).body(), RequestBody::Length(3));
    let up = upstream(req);
    assert!(!up.contains("Transfer_Encoding"), "{up}");
    assert!(!up.contains("Content_Length"), "{up}");
    assert!(!up.contains("Transfer-Encoding"), "{up}");
}

// ----- Host -----------------------------------------------------------------------------------

#[test]
fn rejects_http11_without_host() {
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nX: y\r\n\r\n"),
        HttpError::MissingHost
    );
}

#[test]
fn rejects_two_host_headers() {
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"),
        HttpError::MultipleHost
    );
    assert_eq!(
        err(b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n"),
        HttpError::MultipleHost
    );
}

#[test]
fn underscore_host_is_not_a_host() {
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nHo_st: a\r\n\r\n"),
        HttpError::MissingHost
    );
}

#[test]
fn accepts_http10_without_host() {
    let h = ok(b"GET / HTTP/1.0\r\n\r\n");
    assert!(h.is_http10());
    assert!(!h.keep_alive());
}

// ----- Expect ---------------------------------------------------------------------------------

#[test]
fn detects_expect_continue_any_case() {
    assert!(
        ok(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n")
            .expect_continue()
    );
}

#[test]
fn rejects_other_expectation_with_417() {
    let e = err(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n");
    assert_eq!(e, HttpError::ExpectationFailed);
    assert_eq!(e.status(), 417);
}

#[test]
fn ignores_expect_continue_from_http10() {
    assert!(!ok(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue());
}

#[test]
fn does_not_forward_expect() {
    let up = upstream(
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
    );
    assert!(!up.to_ascii_lowercase().contains("expect"), "{up}");
}

// ----- keep-alive -----------------------------------------------------------------------------

#[test]
fn http11_keep_alive_unless_close() {
    assert!(ok(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").keep_alive());
    assert!(!ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n").keep_alive());
    assert!(!ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-foo , close\r\n\r\n").keep_alive());
}

#[test]
fn http10_keep_alive_only_when_asked() {
    assert!(!ok(b"GET / HTTP/1.0\r\n\r\n").keep_alive());
    assert!(ok(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive());
    assert!(!ok(b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n").keep_alive());
}

// ----- upstream rewrite -----------------------------------------------------------------------

#[test]
fn writes_minimal_upstream_head() {
    assert_eq!(
        upstream(b"GET /p HTTP/1.1\r\nHost: example.com\r\n\r\n"),
        "GET /p HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-For: 203.0.113.7\r\nForwarded: for=203.0.113.7;proto=https\r\nX-Forwarded-Proto: https\r\n\r\n"
    );
}

#[test]
fn upgrades_http10_request_line_to_http11_with_the_host_it_requires() {
    let up = upstream(b"GET / HTTP/1.0\r\n\r\n");
    assert!(
        up.starts_with("GET / HTTP/1.1\r\nHost: app.internal:8080\r\n"),
        "{up}"
    );
    // The rewritten request is itself a valid HTTP/1.1 request.
    assert!(matches!(
        parse_request(up.as_bytes(), &Limits::default()),
        Ok(Parse::Complete(_))
    ));
    // A client's own Host is kept, never doubled.
    let up = upstream(b"GET / HTTP/1.0\r\nHost: mine\r\n\r\n");
    assert_eq!(up.matches("Host:").count(), 1, "{up}");
    assert!(up.contains("Host: mine\r\n"), "{up}");
}

#[test]
fn skips_leading_empty_lines() {
    let up = upstream(b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(up.starts_with("GET / HTTP/1.1\r\nHost: a\r\n"), "{up}");
}

#[test]
fn keeps_other_headers_verbatim_with_trimmed_values() {
    let up =
        upstream(b"GET / HTTP/1.1\r\nHost: a\r\nX-CaSe:   spaced value \t\r\nCookie: a=b\r\n\r\n");
    assert!(
        up.contains("X-CaSe: spaced value\r\nCookie: a=b\r\n"),
        "{up}"
    );
}

#[test]
fn appends_xfcc_line_last() {
    let up = upstream_with(
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        Some(b"X-Forwarded-Client-Cert: Hash=ab\r\n"),
    );
    assert!(
        up.ends_with("X-Forwarded-Proto: https\r\nX-Forwarded-Client-Cert: Hash=ab\r\n\r\n"),
        "{up}"
    );
}

#[test]
fn drops_client_xfcc_any_spelling() {
    let up = upstream_with(
        b"GET / HTTP/1.1\r\nHost: a\r\nx-forwarded-client-cert: evil\r\nX_Forwarded_Client_Cert: evil\r\nX-FORWARDED-CLIENT-CERT: evil\r\n\r\n",
        Some(b"X-Forwarded-Client-Cert: Hash=ab\r\n"),
    );
    assert!(!up.contains("evil"), "{up}");
    assert_eq!(up.matches("Client-Cert").count(), 1);
}

#[test]
fn drops_every_identity_format_any_spelling() {
    let up = upstream_with(
        b"GET / HTTP/1.1\r\nHost: a\r\nClient-Cert: :ZXZpbA==:\r\nclient_cert: evil\r\n\
          CLIENT-CERT-CHAIN: :ZXZpbA==:\r\nX-ARR-ClientCert: evil\r\nx_arr_clientcert: evil\r\n\r\n",
        Some(b"Client-Cert: :AA==:\r\n"),
    );
    assert!(!up.contains("evil") && !up.contains("ZXZpbA"), "{up}");
    assert_eq!(up.matches("Client-Cert").count(), 1, "{up}");
}

#[test]
fn drops_client_x_forwarded_proto() {
    let up = upstream(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: http\r\nx_forwarded_proto: http\r\n\r\n",
    );
    assert!(!up.contains(": http\r\n"), "{up}");
    assert_eq!(
        up.to_ascii_lowercase().matches("x-forwarded-proto").count(),
        1
    );
}

#[test]
fn appends_client_addr_to_x_forwarded_for() {
    let up = upstream(b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nx-forwarded-for: 2.2.2.2, 3.3.3.3\r\n\r\n");
    assert!(
        up.contains("X-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 203.0.113.7\r\n"),
        "{up}"
    );
    assert_eq!(
        up.to_ascii_lowercase().matches("x-forwarded-for").count(),
        1
    );
}

#[test]
fn drops_underscore_x_forwarded_for() {
    let up = upstream(b"GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 6.6.6.6\r\n\r\n");
    assert!(!up.contains("6.6.6.6") && !up.contains("7.7.7.7"), "{up}");
    assert!(up.contains("X-Forwarded-For: 203.0.113.7\r\n"));
}

#[test]
fn skips_empty_client_x_forwarded_for() {
    let up = upstream(b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For:\r\n\r\n");
    assert!(up.contains("X-Forwarded-For: 203.0.113.7\r\n"), "{up}");
}

#[test]
fn drops_hop_by_hop_headers() {
    let up = upstream(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nProxy-Connection: x\r\nTE: trailers\r\nTrailer: X\r\nUpgrade: websocket\r\nStay: 1\r\n\r\n");
    assert_eq!(
        up,
        "GET / HTTP/1.1\r\nHost: a\r\nStay: 1\r\nX-Forwarded-For: 203.0.113.7\r\nForwarded: for=203.0.113.7;proto=https\r\nX-Forwarded-Proto: https\r\n\r\n"
    );
}

#[test]
fn drops_headers_named_in_connection() {
    let up = upstream(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Foo ,\tx-bar\r\nConnection: Cookie\r\nx-foo: 1\r\nX-BAR: 2\r\nCookie: c\r\nX-Baz: 3\r\n\r\n");
    assert!(!up.contains("x-foo"), "{up}");
    assert!(!up.contains("X-BAR"), "{up}");
    assert!(!up.contains("Cookie"), "{up}");
    assert!(up.contains("X-Baz: 3\r\n"), "{up}");
}

#[test]
fn connection_cannot_remove_protected_headers() {
    let up = upstream(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nX-Forwarded-For: 1.1.1.1\r\nConnection: host, content-length, x-forwarded-for, x-forwarded-proto, x-forwarded-client-cert\r\n\r\n");
    assert!(up.contains("Host: a\r\n"), "{up}");
    assert!(up.contains("Content-Length: 2\r\n"), "{up}");
    assert!(
        up.contains("X-Forwarded-For: 1.1.1.1, 203.0.113.7\r\n"),
        "{up}"
    );
    assert!(up.contains("X-Forwarded-Proto: https\r\n"), "{up}");
}

#[test]
fn adds_transfer_encoding_for_chunked_body() {
    let up = upstream(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n");
    assert!(up.contains("Transfer-Encoding: chunked\r\n"), "{up}");
    assert!(!up.contains("Chunked"), "{up}");
}

#[test]
fn upstream_head_order_is_fixed() {
    let up = upstream_with(
        b"POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nA: 1\r\n\r\n",
        Some(b"X-Forwarded-Client-Cert: By=x\r\n"),
    );
    assert_eq!(
        up,
        "POST /u HTTP/1.1\r\nHost: h\r\nA: 1\r\nTransfer-Encoding: chunked\r\nX-Forwarded-For: 203.0.113.7\r\nForwarded: for=203.0.113.7;proto=https\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Client-Cert: By=x\r\n\r\n"
    );
}

#[test]
fn write_upstream_appends_without_clearing() {
    let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let head = ok(req);
    let mut out = b"prefix".to_vec();
    let inject = Inject {
        client_addr: b"::1",
        forwarded: b"for=\"[::1]\";proto=https",
        xfcc_line: None,
        upstream_host: b"app.internal:8080",
        upgrade: false,
        target: None,
    };
    head.write_upstream(req, &inject, &mut out);
    assert!(out.starts_with(b"prefixGET / HTTP/1.1\r\n"));
    assert!(out.ends_with(b"X-Forwarded-For: ::1\r\nForwarded: for=\"[::1]\";proto=https\r\nX-Forwarded-Proto: https\r\n\r\n"));
}

#[test]
fn upstream_head_reparses_cleanly() {
    let req =
        b"POST /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\nContent-Length: 4\r\n\r\n";
    let up = upstream(req);
    let h = ok(up.as_bytes());
    assert_eq!(*h.body(), RequestBody::Length(4));
    assert_eq!(h.head_len(), up.len());
}

// ----- Forwarded / X-Real-IP ----------------------------------------------------------------

#[test]
fn client_forwarded_is_merged_and_ours_appended() {
    let req = b"GET / HTTP/1.1\r\nHost: a\r\nForwarded: for=1.1.1.1\r\nforwarded: for=2.2.2.2;by=x\r\n\r\n";
    let up = upstream(req);
    assert_eq!(
        header_count(&up, "forwarded"),
        1,
        "exactly one Forwarded line: {up}"
    );
    assert!(
        up.contains(
            "\r\nForwarded: for=1.1.1.1, for=2.2.2.2;by=x, for=203.0.113.7;proto=https\r\n"
        ),
        "{up}"
    );
}

#[test]
fn x_real_ip_is_dropped_in_every_spelling() {
    let req = b"GET / HTTP/1.1\r\nHost: a\r\nX-Real-IP: 6.6.6.6\r\nx_real_ip: 6.6.6.6\r\nX-REAL-IP: 7.7.7.7\r\n\r\n";
    let up = upstream(req);
    assert!(!up.to_ascii_lowercase().contains("real"), "{up}");
    assert!(!up.contains("6.6.6.6") && !up.contains("7.7.7.7"), "{up}");
    assert!(
        up.contains("\r\nForwarded: for=203.0.113.7;proto=https\r\n"),
        "{up}"
    );
}

#[test]
fn forwarded_element_quotes_ipv6() {
    assert_eq!(
        forwarded_element("203.0.113.7".parse().unwrap()),
        b"for=203.0.113.7;proto=https"
    );
    assert_eq!(
        forwarded_element("2001:db8::1".parse().unwrap()),
        b"for=\"[2001:db8::1]\";proto=https"
    );
    // An IPv4 client on a dual-stack socket is written as IPv4.
    assert_eq!(
        forwarded_element("::ffff:10.0.0.1".parse().unwrap()),
        b"for=10.0.0.1;proto=https"
    );
}

fn header_count(head: &str, name: &str) -> usize {
    head.split("\r\n")
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
        })
        .count()
}

// ----- Upgrade ------------------------------------------------------------------------------

fn upstream_upgrading(bytes: &[u8]) -> String {
    let head = ok(bytes);
    let mut out = Vec::new();
    head.write_upstream(
        bytes,
        &Inject {
            client_addr: b"203.0.113.7",
            forwarded: b"for=203.0.113.7;proto=https",
            xfcc_line: None,
            upstream_host: b"app.internal:8080",
            upgrade: head.upgrade(bytes).is_some(),
            target: None,
        },
        &mut out,
    );
    String::from_utf8(out).unwrap()
}

const WS: &[u8] = b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

#[test]
fn websocket_upgrade_is_recognised_and_forwarded_when_allowed() {
    let head = ok(WS);
    assert_eq!(head.upgrade(WS), Some(&b"websocket"[..]));
    let up = upstream_upgrading(WS);
    assert!(
        up.contains("\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"),
        "{up}"
    );
    assert!(
        up.contains("\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"),
        "{up}"
    );
    assert_eq!(up.matches("onnection:").count(), 1, "{up}");
}

#[test]
fn upgrade_is_stripped_when_not_allowed() {
    let up = upstream(WS);
    assert!(!up.to_ascii_lowercase().contains("upgrade"), "{up}");
}

#[test]
fn upgrade_needs_connection_upgrade_one_field_http11_and_no_body() {
    for req in [
        &b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n\r\n",
        b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 1\r\n\r\nx",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade_: websocket\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUp_grade: websocket\r\n\r\n",
    ] {
        let head = ok(req);
        assert_eq!(head.upgrade(req), None, "{}", String::from_utf8_lossy(req));
        let up = upstream_upgrading(req);
        assert!(!up.contains("Upgrade:"), "{up}");
    }
}

#[test]
fn upgrade_permitted_checks_every_offered_protocol() {
    let allowed = vec!["websocket".to_owned()];
    assert!(upgrade_permitted(b"websocket", &allowed));
    assert!(upgrade_permitted(b"WebSocket/13", &allowed));
    assert!(!upgrade_permitted(b"websocket, h2c", &allowed));
    assert!(!upgrade_permitted(b"h2c", &allowed));
    assert!(!upgrade_permitted(b"", &allowed));
    assert!(!upgrade_permitted(b"websocket", &[]));
}

#[test]
fn host_name_comes_from_host_or_an_absolute_target_without_the_port() {
    let name = |raw: &[u8]| {
        let head = ok(raw);
        String::from_utf8(head.host_name(raw).to_vec()).unwrap()
    };
    assert_eq!(
        name(b"GET / HTTP/1.1\r\nHost: api.example.com:8443\r\n\r\n"),
        "api.example.com"
    );
    assert_eq!(
        name(b"GET / HTTP/1.1\r\nHost: API.example.com\r\n\r\n"),
        "API.example.com"
    );
    assert_eq!(name(b"GET / HTTP/1.1\r\nHost: [::1]:443\r\n\r\n"), "[::1]");
    assert_eq!(
        name(b"GET https://b.example.com:8443/x?y HTTP/1.1\r\nHost: a.example.com\r\n\r\n"),
        "b.example.com",
        "an absolute-form target overrides Host"
    );
    assert_eq!(name(b"GET / HTTP/1.0\r\n\r\n"), "");
}
