//! The forwarded-certificate header: exact bytes, and no way for a client to forge it.

use crate::support::*;

#[test]
fn header_bytes_match_an_independent_encoding_for_a_chain_with_an_intermediate() {
    let running = start(Setup::new("require").with_ca());
    let resp = request(running.addr, ClientCert::Valid, &get("/exact")).unwrap();
    let head = resp.upstream_head();
    let expected = format!(
        "X-Forwarded-Client-Cert: {}\r\n",
        expected_xfcc(&ClientCert::Valid.chain())
    );
    assert!(
        head.contains(&expected),
        "upstream head:\n{head}\nexpected line:\n{expected}"
    );
    assert_eq!(head.matches("X-Forwarded-Client-Cert").count(), 1);
}

/// Every way a client might smuggle its own certificate header (or knock out ours).
const SPOOFS: &[&str] = &[
    "X-Forwarded-Client-Cert: Hash=forged",
    "x-forwarded-client-cert: Hash=forged",
    "X-FORWARDED-CLIENT-CERT: Hash=forged",
    "X_Forwarded_Client_Cert: Hash=forged",
    "x-forwarded-client_cert: Hash=forged",
    "X-Forwarded-Proto: forged",
    "X_Forwarded_Proto: forged",
    "X_Forwarded_For: forged",
];

fn spoofed_request(connection: &str) -> Vec<u8> {
    let mut req = String::from("GET /spoof HTTP/1.1\r\nHost: localhost\r\n");
    for s in SPOOFS {
        req.push_str(s);
        req.push_str("\r\n");
    }
    // Two more copies, to be sure "several" is handled.
    req.push_str(
        "X-Forwarded-Client-Cert: Hash=forged2\r\nX-Forwarded-Client-Cert: Hash=forged3\r\n",
    );
    req.push_str(connection);
    req.push_str("\r\n");
    req.into_bytes()
}

fn assert_clean(head: &str, cert: ClientCert) {
    assert!(
        !head.contains("forged"),
        "a client-written value reached the app:\n{head}"
    );
    assert!(
        !head.contains('_'),
        "an underscore variant reached the app:\n{head}"
    );
    let xfcc = header_values(head, "x-forwarded-client-cert");
    if cert == ClientCert::None {
        assert!(xfcc.is_empty(), "{head}");
    } else {
        assert_eq!(xfcc, vec![expected_xfcc(&cert.chain())], "{head}");
    }
    assert_eq!(
        header_values(head, "x-forwarded-proto"),
        vec!["https".to_string()],
        "{head}"
    );
    assert_eq!(
        header_values(head, "x-forwarded-for"),
        vec!["127.0.0.1".to_string()],
        "{head}"
    );
}

#[test]
fn spoofed_headers_never_reach_the_app_in_any_mode() {
    for (mode, cert) in [
        ("ignore", ClientCert::None),
        ("accept", ClientCert::None),
        ("accept", ClientCert::Valid),
        ("require", ClientCert::Valid),
    ] {
        let running = start(Setup::new(mode));
        let resp = request(running.addr, cert, &spoofed_request("")).unwrap();
        assert_eq!(resp.status, 200);
        assert_clean(&resp.upstream_head(), cert);
    }
}

#[test]
fn connection_header_cannot_remove_the_proxy_headers_or_framing() {
    let running = start(Setup::new("accept"));
    let conn = "Connection: keep-alive, X-Forwarded-Client-Cert, x-forwarded-proto, X-Forwarded-For, Host, Content-Length\r\n";
    let resp = request(running.addr, ClientCert::Valid, &spoofed_request(conn)).unwrap();
    let head = resp.upstream_head();
    assert_clean(&head, ClientCert::Valid);
    assert_eq!(header_values(&head, "host"), vec!["localhost".to_string()]);
}

#[test]
fn connection_listed_client_headers_are_removed() {
    let running = start(Setup::new("accept"));
    let req = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nUpgrade: h2c\r\nConnection: X-Secret, Upgrade\r\n\r\n";
    let resp = request(running.addr, ClientCert::None, req).unwrap();
    let head = resp.upstream_head().to_ascii_lowercase();
    for gone in ["x-secret", "keep-alive", "te:", "upgrade", "connection"] {
        assert!(!head.contains(gone), "{gone} reached the app:\n{head}");
    }
}

#[test]
fn client_x_forwarded_for_is_kept_and_the_address_appended() {
    let running = start(Setup::new("ignore"));
    let req = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n";
    let resp = request(running.addr, ClientCert::None, req).unwrap();
    assert_eq!(
        header_values(&resp.upstream_head(), "x-forwarded-for"),
        vec!["203.0.113.9, 127.0.0.1".to_string()]
    );
}

#[test]
fn spoofed_header_on_a_keep_alive_connection_with_pipelining_is_removed_each_time() {
    let running = start(Setup::new("accept"));
    let mut tls = connect(running.addr, client_config(ClientCert::Valid, false));
    let mut both = spoofed_request("");
    both.extend_from_slice(&spoofed_request(""));
    use std::io::Write;
    tls.write_all(&both).unwrap();
    let mut reader = std::io::BufReader::new(&mut tls);
    for _ in 0..2 {
        let resp = read_response(&mut reader, false).unwrap();
        assert_clean(&resp.upstream_head(), ClientCert::Valid);
    }
}
