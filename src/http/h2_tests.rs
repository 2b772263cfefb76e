use super::*;
use crate::http::request::{parse_request, Inject, Limits};
use crate::http::{Parse, RequestBody};

fn head(
    method: &str,
    path: &str,
    authority: Option<&str>,
    fields: &[(&str, &str)],
    body: Body,
) -> Result<Vec<u8>, Malformed> {
    let mut out = Vec::new();
    let fields = fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()));
    request_head(
        Request {
            method: method.as_bytes(),
            path: path.as_bytes(),
            authority: authority.map(str::as_bytes),
            fields,
            body,
        },
        &mut out,
    )?;
    Ok(out)
}

/// The written head is exactly one complete head of its own length.
fn parses_whole(bytes: &[u8]) -> crate::http::RequestHead {
    match parse_request(bytes, &Limits::default()) {
        Ok(Parse::Complete(h)) => {
            assert_eq!(
                h.head_len(),
                bytes.len(),
                "{}",
                String::from_utf8_lossy(bytes)
            );
            h
        }
        other => panic!("{other:?}: {}", String::from_utf8_lossy(bytes)),
    }
}

#[test]
fn get_becomes_an_http11_head_with_host_from_authority() {
    let out = head(
        "GET",
        "/a?b=c",
        Some("example.com"),
        &[("accept", "*/*"), ("cookie", "a=1"), ("cookie", "b=2")],
        Body::None,
    )
    .unwrap();
    assert_eq!(
        out,
        b"GET /a?b=c HTTP/1.1\r\nhost: example.com\r\naccept: */*\r\ncookie: a=1; b=2\r\n\r\n"
    );
    let h = parses_whole(&out);
    assert_eq!(h.body(), &RequestBody::None);
}

#[test]
fn streamed_body_without_length_is_chunked_and_with_length_keeps_it() {
    let out = head("POST", "/", Some("h"), &[], Body::Streamed).unwrap();
    assert_eq!(parses_whole(&out).body(), &RequestBody::Chunked);
    let out = head(
        "POST",
        "/",
        Some("h"),
        &[("content-length", "5")],
        Body::Streamed,
    )
    .unwrap();
    assert_eq!(parses_whole(&out).body(), &RequestBody::Length(5));
}

#[test]
fn length_on_a_request_without_data_is_malformed_unless_zero() {
    let e = head(
        "POST",
        "/",
        Some("h"),
        &[("content-length", "5")],
        Body::None,
    );
    assert_eq!(e, Err(Malformed::LengthWithoutBody));
    let out = head(
        "POST",
        "/",
        Some("h"),
        &[("content-length", "0")],
        Body::None,
    )
    .unwrap();
    assert_eq!(parses_whole(&out).body(), &RequestBody::Length(0));
}

#[test]
fn host_and_authority_must_agree() {
    let e = head(
        "GET",
        "/",
        Some("a.example"),
        &[("host", "b.example")],
        Body::None,
    );
    assert_eq!(e, Err(Malformed::AuthorityMismatch));
    let out = head(
        "GET",
        "/",
        Some("a.example"),
        &[("host", "A.example")],
        Body::None,
    )
    .unwrap();
    // One host line, not two.
    assert_eq!(String::from_utf8_lossy(&out).matches("host:").count(), 1);
    parses_whole(&out);
    // Host alone (no :authority) is allowed and forwarded.
    let out = head("GET", "/", None, &[("host", "b.example")], Body::None).unwrap();
    assert_eq!(parses_whole(&out).host(&out), Some(&b"b.example"[..]));
}

#[test]
fn malformed_fields_are_refused() {
    for (name, value, want) in [
        ("X-Upper", "v", Malformed::Name),
        ("", "v", Malformed::Name),
        ("a b", "v", Malformed::Name),
        ("x", "a\r\nb", Malformed::Value),
        ("x", "a\nGET /smuggled HTTP/1.1", Malformed::Value),
        ("x", "a\0b", Malformed::Value),
        ("x", " padded", Malformed::Value),
        ("connection", "close", Malformed::ConnectionSpecific),
        ("keep-alive", "5", Malformed::ConnectionSpecific),
        ("proxy-connection", "x", Malformed::ConnectionSpecific),
        (
            "transfer-encoding",
            "chunked",
            Malformed::ConnectionSpecific,
        ),
        ("upgrade", "websocket", Malformed::ConnectionSpecific),
        ("te", "gzip", Malformed::ConnectionSpecific),
    ] {
        let got = head("GET", "/", Some("h"), &[(name, value)], Body::None);
        assert_eq!(got, Err(want), "{name:?}: {value:?}");
    }
    // te: trailers is fine (and dropped toward HTTP/1.1 by the shared rules).
    let out = head("GET", "/", Some("h"), &[("te", "trailers")], Body::None).unwrap();
    let h = parses_whole(&out);
    let mut up = Vec::new();
    h.write_upstream(&out, &inject(), &mut up);
    assert!(!String::from_utf8_lossy(&up)
        .to_ascii_lowercase()
        .contains("\r\nte:"));
}

#[test]
fn method_and_path_cannot_break_the_request_line() {
    for (method, path) in [
        ("GET", "/a b"),
        ("GET", "/a\r\nx: y"),
        ("GET /x HTTP/1.1\r\n\r\nGET", "/"),
        ("G ET", "/"),
        ("", "/"),
    ] {
        assert_eq!(
            head(method, path, Some("h"), &[], Body::None),
            Err(Malformed::RequestLine),
            "{method:?} {path:?}"
        );
    }
    assert_eq!(
        head("GET", "/", Some("h\r\nx: y"), &[], Body::None),
        Err(Malformed::Value)
    );
}

fn inject() -> Inject<'static> {
    Inject {
        client_addr: b"192.0.2.1",
        forwarded: b"for=192.0.2.1;proto=https",
        xfcc_line: Some(b"X-Forwarded-Client-Cert: Hash=ab\r\n"),
        upstream_host: b"app",
        upgrade: false,
        target: None,
    }
}

#[test]
fn identity_fields_from_the_client_never_reach_the_upstream() {
    let out = head(
        "GET",
        "/",
        Some("h"),
        &[
            ("x-forwarded-client-cert", "Hash=forged"),
            ("x_forwarded_client_cert", "Hash=forged"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-for", "10.0.0.1"),
        ],
        Body::None,
    )
    .unwrap();
    let h = parses_whole(&out);
    let mut up = Vec::new();
    h.write_upstream(&out, &inject(), &mut up);
    let text = String::from_utf8(up).unwrap();
    assert!(!text.contains("forged"), "{text}");
    assert!(
        text.contains("X-Forwarded-Client-Cert: Hash=ab\r\n"),
        "{text}"
    );
    assert!(
        text.contains("X-Forwarded-For: 10.0.0.1, 192.0.2.1\r\n"),
        "{text}"
    );
    assert!(!text.contains("proto: http\r\n"), "{text}");
}

fn h2c(
    authority: Option<&str>,
    fields: &[(&str, &str)],
) -> Result<Vec<(String, String)>, Malformed> {
    let mut got = Vec::new();
    let mut scratch = Vec::new();
    upstream_fields(
        authority.map(str::as_bytes),
        fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
        &Forwarding {
            client_addr: b"192.0.2.1",
            forwarded: b"for=192.0.2.1;proto=https",
        },
        &mut scratch,
        |n, v| {
            got.push((
                String::from_utf8(n.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            ))
        },
    )?;
    Ok(got)
}

#[test]
fn h2c_fields_follow_the_same_rules() {
    let got = h2c(
        Some("h"),
        &[
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("host", "h"),
            ("x-forwarded-client-cert", "forged"),
            ("client-cert", ":Zm9yZ2Vk:"),
            ("x_forwarded_for", "10.9.9.9"),
            ("x-forwarded-for", "10.0.0.1"),
            ("forwarded", "for=10.0.0.1"),
            ("x-real-ip", "10.0.0.2"),
        ],
    )
    .unwrap();
    let want: Vec<(String, String)> = [
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("x-forwarded-for", "10.0.0.1, 192.0.2.1"),
        ("forwarded", "for=10.0.0.1, for=192.0.2.1;proto=https"),
        ("x-forwarded-proto", "https"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    assert_eq!(got, want);
    assert_eq!(
        h2c(Some("a"), &[("host", "b")]),
        Err(Malformed::AuthorityMismatch)
    );
    assert_eq!(
        h2c(None, &[("te", "gzip")]),
        Err(Malformed::ConnectionSpecific)
    );
}

#[test]
fn response_fields_drop_connection_specific_ones() {
    let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: x-hop, close\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n";
    let head = match crate::http::parse_response(raw, false, &Limits::default()) {
        Ok(Parse::Complete(h)) => h,
        other => panic!("{other:?}"),
    };
    let fields: Vec<_> = head
        .end_to_end(raw)
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect();
    assert_eq!(
        fields,
        vec![
            (b"Content-Type".to_vec(), b"text/plain".to_vec()),
            (b"Set-Cookie".to_vec(), b"a=1".to_vec()),
            (b"Set-Cookie".to_vec(), b"b=2".to_vec()),
        ]
    );
    assert_eq!(head.content_length(), None);
    let raw = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n";
    let Ok(Parse::Complete(head)) = crate::http::parse_response(raw, false, &Limits::default())
    else {
        panic!()
    };
    assert_eq!(head.content_length(), None);
}
