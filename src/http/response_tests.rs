//! Unit tests for upstream response parsing, framing and the client rewrite.

use super::*;

fn parse_as(bytes: &[u8], head: bool) -> Result<Parse<ResponseHead>, HttpError> {
    parse_response(bytes, head, &Limits::default())
}

fn ok(bytes: &[u8]) -> ResponseHead {
    ok_as(bytes, false)
}

fn ok_as(bytes: &[u8], head: bool) -> ResponseHead {
    match parse_as(bytes, head) {
        Ok(Parse::Complete(h)) => h,
        other => panic!("expected complete, got {other:?}"),
    }
}

fn err(bytes: &[u8]) -> HttpError {
    match parse_as(bytes, false) {
        Err(e) => e,
        other => panic!("expected error, got {other:?}"),
    }
}

fn client(bytes: &[u8], keep_alive: bool, http10: bool) -> String {
    let h = ok(bytes);
    let mut out = Vec::new();
    h.write_client(bytes, keep_alive, http10, &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn parses_simple_response() {
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
    let h = ok(resp);
    assert_eq!(h.status(), 200);
    assert_eq!(h.head_len(), resp.len() - 2);
    assert_eq!(*h.body(), ResponseBody::Length(2));
    assert!(h.upstream_keep_alive());
    assert!(!h.is_informational());
}

#[test]
fn partial_response_needs_more() {
    assert_eq!(
        parse_as(b"HTTP/1.1 200 OK\r\n", false).unwrap(),
        Parse::Partial
    );
}

#[test]
fn rejects_response_head_over_limit_with_502() {
    let limits = Limits {
        max_head_bytes: 16,
        max_headers: 100,
    };
    let e = parse_response(b"HTTP/1.1 200 OK\r\nX-Long: aaaaaaaaaaa", false, &limits).unwrap_err();
    assert_eq!(e, HttpError::UpstreamHeadTooLarge);
    assert_eq!(e.status(), 502);
}

#[test]
fn rejects_too_many_response_headers_with_502() {
    let limits = Limits {
        max_head_bytes: 4096,
        max_headers: 1,
    };
    let e = parse_response(b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n", false, &limits).unwrap_err();
    assert_eq!(e.status(), 502);
}

#[test]
fn rejects_malformed_status_line_with_502() {
    for resp in [
        &b"HTTP/1.1 2000 OK\r\n\r\n"[..],
        b"HTTP/1.1 OK\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTX/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 099 Low\r\n\r\n",
        b"HTTP/1.1 600 High\r\n\r\n",
    ] {
        let e = err(resp);
        assert_eq!(e.status(), 502, "{resp:?}: {e:?}");
    }
}

#[test]
fn rejects_bare_lf_in_response_head() {
    assert_eq!(
        err(b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n"),
        HttpError::UpstreamMalformed
    );
    assert_eq!(
        err(b"HTTP/1.1 200 OK\r\nA: b\n\r\n"),
        HttpError::UpstreamMalformed
    );
}

#[test]
fn rejects_obs_fold_in_response() {
    assert_eq!(err(b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n").status(), 502);
}

#[test]
fn rejects_switching_protocols() {
    let e = err(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
    assert_eq!(e, HttpError::UpstreamSwitchingProtocols);
    assert_eq!(e.status(), 502);
}

#[test]
fn informational_has_no_body() {
    let h = ok(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n");
    assert!(h.is_informational());
    assert_eq!(*h.body(), ResponseBody::None);
}

#[test]
fn head_response_has_no_body_despite_length() {
    let h = ok_as(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", true);
    assert_eq!(*h.body(), ResponseBody::None);
    assert!(h.upstream_keep_alive());
}

#[test]
fn head_response_keeps_content_length_for_client() {
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
    let h = ok_as(resp, true);
    let mut out = Vec::new();
    h.write_client(resp, true, false, &mut out);
    assert_eq!(out, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
}

#[test]
fn no_content_and_not_modified_have_no_body() {
    assert_eq!(
        *ok(b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n").body(),
        ResponseBody::None
    );
    assert_eq!(
        *ok(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n").body(),
        ResponseBody::None
    );
}

#[test]
fn chunked_response() {
    let h = ok(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(*h.body(), ResponseBody::Chunked);
    assert!(h.upstream_keep_alive());
}

#[test]
fn codings_then_chunked_response_is_chunked() {
    assert_eq!(
        *ok(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").body(),
        ResponseBody::Chunked
    );
}

#[test]
fn transfer_encoding_not_chunked_final_reads_until_close() {
    let h = ok(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
    assert_eq!(*h.body(), ResponseBody::UntilClose);
    assert!(!h.upstream_keep_alive());
}

#[test]
fn rejects_chunked_twice_in_response() {
    assert_eq!(
        err(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
        HttpError::UpstreamBadFraming
    );
}

#[test]
fn rejects_response_with_length_and_transfer_encoding() {
    let e = err(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(e, HttpError::UpstreamBadFraming);
    assert_eq!(e.status(), 502);
}

#[test]
fn rejects_conflicting_response_lengths() {
    assert_eq!(
        err(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
        HttpError::UpstreamBadFraming
    );
    assert_eq!(
        err(b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n"),
        HttpError::UpstreamBadFraming
    );
}

#[test]
fn rejects_invalid_response_length() {
    assert_eq!(
        err(b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n"),
        HttpError::UpstreamBadFraming
    );
    assert_eq!(
        err(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n"),
        HttpError::UpstreamBadFraming
    );
}

#[test]
fn collapses_identical_response_lengths() {
    let out = client(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
        true,
        false,
    );
    assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n");
}

#[test]
fn unframed_response_reads_until_close() {
    let h = ok(b"HTTP/1.1 200 OK\r\n\r\n");
    assert_eq!(*h.body(), ResponseBody::UntilClose);
    assert!(!h.upstream_keep_alive());
    assert!(!h.client_can_keep_alive(true, false));
}

#[test]
fn upstream_close_prevents_reuse() {
    assert!(
        !ok(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            .upstream_keep_alive()
    );
}

#[test]
fn http10_upstream_is_not_reused() {
    assert!(!ok(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").upstream_keep_alive());
}

#[test]
fn writes_status_line_as_http11() {
    let out = client(
        b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        true,
        false,
    );
    assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"), "{out}");
}

#[test]
fn keeps_empty_reason() {
    let out = client(b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", true, false);
    assert!(out.starts_with("HTTP/1.1 200 \r\n"), "{out}");
}

#[test]
fn strips_hop_by_hop_from_response() {
    let out = client(
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Internal\r\nKeep-Alive: timeout=5\r\nUpgrade: h2c\r\nTrailer: X\r\nProxy-Connection: x\r\nTE: trailers\r\nX-Internal: secret\r\nContent-Length: 0\r\nServer: s\r\n\r\n",
        true,
        false,
    );
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nServer: s\r\n\r\n"
    );
}

#[test]
fn response_connection_cannot_remove_content_length() {
    let out = client(
        b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\n",
        true,
        false,
    );
    assert!(out.contains("Content-Length: 2\r\n"), "{out}");
}

#[test]
fn adds_connection_close_when_client_closes() {
    let out = client(
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        false,
        false,
    );
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

#[test]
fn adds_keep_alive_for_persistent_http10_client() {
    let out = client(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true, true);
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
    );
}

#[test]
fn forwards_chunked_to_http11_client() {
    let out = client(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        true,
        false,
    );
    assert_eq!(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
}

#[test]
fn dechunks_for_http10_client_and_closes() {
    let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    let h = ok(resp);
    assert!(!h.client_can_keep_alive(true, true));
    let out = client(resp, true, true);
    assert_eq!(out, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
}

#[test]
fn until_close_response_closes_client() {
    let out = client(b"HTTP/1.1 200 OK\r\n\r\n", true, false);
    assert_eq!(out, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
}

#[test]
fn informational_gets_no_connection_header() {
    let out = client(b"HTTP/1.1 100 Continue\r\n\r\n", false, false);
    assert_eq!(out, "HTTP/1.1 100 Continue\r\n\r\n");
}

#[test]
fn no_content_drops_content_length() {
    let out = client(
        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
        true,
        false,
    );
    assert_eq!(out, "HTTP/1.1 204 No Content\r\n\r\n");
}

#[test]
fn client_rewrite_reparses_cleanly() {
    let out = client(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: y\r\n\r\n",
        false,
        false,
    );
    let h = ok(out.as_bytes());
    assert_eq!(*h.body(), ResponseBody::Length(2));
    assert_eq!(h.head_len(), out.len());
}

#[test]
fn switching_protocols_to_an_upgrade_request_becomes_a_tunnel() {
    let resp = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\nframe";
    let h = match parse_upgrade_response(resp, &Limits::default()) {
        Ok(Parse::Complete(h)) => h,
        other => panic!("{other:?}"),
    };
    assert!(h.is_switching());
    assert!(!h.is_informational());
    assert!(!h.upstream_keep_alive());
    assert_eq!(h.head_len(), resp.len() - 5);
    let mut out = Vec::new();
    h.write_client(resp, true, false, &mut out);
    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        out,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nConnection: upgrade\r\n\r\n"
    );
}

#[test]
fn switching_without_exactly_one_upgrade_field_is_refused() {
    for resp in [
        &b"HTTP/1.1 101 Switching Protocols\r\n\r\n"[..],
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: a\r\nUpgrade: b\r\n\r\n",
    ] {
        assert_eq!(
            parse_upgrade_response(resp, &Limits::default()).unwrap_err(),
            HttpError::UpstreamSwitchingProtocols
        );
    }
}

#[test]
fn an_ordinary_answer_to_an_upgrade_request_stays_http() {
    let resp = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nUpgrade: websocket\r\n\r\n";
    let h = match parse_upgrade_response(resp, &Limits::default()) {
        Ok(Parse::Complete(h)) => h,
        other => panic!("{other:?}"),
    };
    assert!(!h.is_switching());
    let mut out = Vec::new();
    h.write_client(resp, true, false, &mut out);
    assert!(!String::from_utf8(out).unwrap().contains("Upgrade"));
}
