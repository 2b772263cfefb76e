//! Identity header formats end to end (`forward`, `xfcc_fields`): what the app receives is read
//! back with independent tools (tests/tools/identity_check.py: `openssl x509 -outform DER`,
//! Python's base64 as ASP.NET decodes `X-ARR-ClientCert`, the `http_sfv` structured-field
//! parser for RFC 9440, OpenSSL's RFC 2253 subject), and forged copies of every format's
//! headers are dropped on every listener, whatever it forwards.

use std::process::Command;

use crate::support::*;

const CHECK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/identity_check.py");

/// certgate with the echo app, `listener` appended to the listener's keys.
fn start_with(mode: &'static str, listener: &str) -> Running {
    let dir = temp_dir("identity");
    write_pki(&dir);
    let echo = certgate::demo::echo::EchoApp::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let text = format!(
        "{}{listener}\n",
        config_text(&Setup::new(mode).with_ca(), echo.addr)
    );
    start_toml(dir, &text, Some(echo))
}

/// Runs identity_check.py on the head the app received, for the Valid client's chain.
fn check(head: &str) -> serde_json::Value {
    let dir = temp_dir("identity-check");
    let p = pki();
    let head_path = dir.join("head.txt");
    std::fs::write(&head_path, head).unwrap();
    std::fs::write(dir.join("leaf.pem"), &p.client_via_intermediate.cert_pem).unwrap();
    std::fs::write(dir.join("int.pem"), &p.intermediate.issued().cert_pem).unwrap();
    let out = Command::new("python3")
        .arg(CHECK)
        .arg(&head_path)
        .arg(dir.join("leaf.pem"))
        .arg(dir.join("int.pem"))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "identity_check.py failed (is http_sfv installed? `pip install http-sfv`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const FORGED: &str = "Client-Cert: :AAAA:\r\nclient-cert-chain: :AAAA:\r\nClient_Cert: :AAAA:\r\n\
                      X-ARR-ClientCert: Zm9yZ2Vk\r\nx_arr_clientcert: Zm9yZ2Vk\r\n\
                      X-Forwarded-Client-Cert: Hash=forged\r\n";

/// A request with forged copies of every format; `connection` adds their names to a
/// `Connection` field too (a proxy that strips what Connection lists must still add its own).
fn forged_get(connection: bool) -> Vec<u8> {
    let listed = if connection {
        "Connection: X-ARR-ClientCert, Client-Cert, Client-Cert-Chain\r\n"
    } else {
        ""
    };
    format!("GET /id HTTP/1.1\r\nHost: localhost\r\n{FORGED}{listed}\r\n").into_bytes()
}

#[test]
fn every_format_reads_back_with_independent_parsers_and_forged_copies_are_dropped() {
    let running = start_with(
        "require",
        "forward = [\"xfcc\", \"client-cert\", \"arr\"]\n\
         xfcc_fields = [\"hash\", \"cert\", \"chain\", \"subject\", \"uri\", \"dns\"]",
    );
    for connection in [false, true] {
        let r = request(running.addr, ClientCert::Valid, &forged_get(connection)).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let head = r.upstream_head();
        let got = check(&head);
        for name in ["client-cert", "client-cert-chain", "x-arr-clientcert"] {
            assert_eq!(got["counts"][name], 1, "exactly ours: {name}\n{head}");
        }
    }
    let r = request(running.addr, ClientCert::Valid, &forged_get(false)).unwrap();
    let head = r.upstream_head();
    let got = check(&head);
    assert_eq!(got["client_cert"], true, "{got}\n{head}");
    assert_eq!(got["client_cert_chain"], true, "{got}\n{head}");
    assert_eq!(got["arr"], true, "{got}\n{head}");
    for name in [
        "client-cert",
        "client-cert-chain",
        "x-arr-clientcert",
        "x-forwarded-client-cert",
    ] {
        assert_eq!(got["counts"][name], 1, "exactly ours: {name}\n{head}");
    }
    assert!(got["counts"].get("client_cert").is_none(), "{head}");
    assert!(got["counts"].get("x_arr_clientcert").is_none(), "{head}");

    // XFCC with Envoy's order; Subject as OpenSSL prints RFC 2253; no URI SAN: `URI=`.
    let xfcc = header_values(&head, "x-forwarded-client-cert").remove(0);
    let subject = got["openssl_subject"].as_str().unwrap();
    let p = pki();
    let expected_start = expected_xfcc(&[&p.client_via_intermediate, p.intermediate.issued()]);
    assert!(
        xfcc.starts_with(&expected_start),
        "{xfcc}\nexpected start: {expected_start}"
    );
    assert!(
        xfcc.ends_with(&format!(";Subject=\"{subject}\";URI=")),
        "{xfcc}\nsubject: {subject}"
    );
}

#[test]
fn forged_identity_headers_are_dropped_where_nothing_is_forwarded() {
    // No certificate in accept mode, and a listener that forwards no identity header at all:
    // either way no client-sent copy of any format reaches the app.
    for (mode, listener, cert) in [
        (
            "accept",
            "forward = [\"client-cert\", \"arr\"]",
            ClientCert::None,
        ),
        ("require", "forward = []", ClientCert::Valid),
    ] {
        let running = start_with(mode, listener);
        let r = request(running.addr, cert, &forged_get(false)).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let head = r.upstream_head().to_ascii_lowercase();
        for name in [
            "client-cert",
            "client_cert",
            "x-arr-clientcert",
            "x_arr_clientcert",
            "x-forwarded-client-cert",
        ] {
            assert!(
                !head.contains(&format!("\n{name}:")),
                "{listener}: {name} in\n{head}"
            );
        }
        assert!(
            !head.contains("forged") && !head.contains(":aaaa:"),
            "{head}"
        );
    }
}

#[test]
fn client_cert_chain_is_absent_when_the_client_sent_only_its_leaf() {
    let running = start_with("require", "forward = [\"client-cert\"]");
    let r = request(running.addr, ClientCert::ByRoot, &get("/")).unwrap();
    let head = r.upstream_head();
    assert_eq!(header_values(&head, "client-cert").len(), 1, "{head}");
    assert!(
        header_values(&head, "client-cert-chain").is_empty(),
        "{head}"
    );
    assert!(
        header_values(&head, "x-forwarded-client-cert").is_empty(),
        "{head}"
    );
}

#[test]
fn header_format_keys_are_checked() {
    let base = "[[listener]]\nbind = \"127.0.0.1:0\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n\
                upstream = \"127.0.0.1:1\"\n";
    for (text, says) in [
        ("forward = [\"pem\"]", "not a header format"),
        ("forward = [\"arr\", \"arr\"]", "listed twice"),
        (
            "forward = [\"arr\"]\nxfcc_fields = [\"hash\"]",
            "only applies",
        ),
        ("xfcc_fields = []", "at least one"),
        ("xfcc_fields = [\"Hash\"]", "not a field"),
    ] {
        let e = certgate::config::Config::from_toml(
            &format!("{base}{text}\n"),
            std::path::Path::new("/tmp"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(says), "{text}: {e}");
    }
}
