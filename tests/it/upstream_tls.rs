//! TLS to the upstream (`upstream = "https://…"`) and PROXY headers on HTTP listeners, end to
//! end against a real TLS server (Python's `ssl`, i.e. OpenSSL: tests/tools/up_app.py):
//! requests and large bodies both ways, certgate's own client certificate, keep-alive reuse
//! and session resumption across reconnects, a wrong CA and an expired certificate (502 and
//! one log line), a `tcp` listener over TLS with its PROXY header sent before the handshake,
//! and an HTTP listener whose clients each get their own upstream connection and header.

use std::io::Write;
use std::path::Path;

use certgate::pki::{Ca, Issued};

use crate::support::*;

/// The upstream app (tests/tools/up_app.py): one JSON line per connection.
type App = PyPeer;

/// The app's side of the PKI: its own CA (not the one clients are checked against), its
/// server certificates, and the client certificate certgate shows it.
struct AppPki {
    ca: Ca,
    server: Issued,
    expired: Issued,
    other_ca: Ca,
    proxy_client: Issued,
}

fn app_pki() -> &'static AppPki {
    static PKI: std::sync::OnceLock<AppPki> = std::sync::OnceLock::new();
    PKI.get_or_init(|| {
        let ca = Ca::root("app ca").unwrap();
        AppPki {
            server: ca.server_cert(&["app.internal", "127.0.0.1"]).unwrap(),
            expired: ca.expired_server_cert(&["app.internal"]).unwrap(),
            proxy_client: ca.client_cert("certgate-proxy").unwrap(),
            other_ca: Ca::root("some other ca").unwrap(),
            ca,
        }
    })
}

/// Writes the app's files into `dir`: app.pem/app.key, expired.pem/expired.key, app-ca.pem,
/// other-ca.pem, proxy.pem/proxy.key.
fn write_app_pki(dir: &Path) {
    let p = app_pki();
    let files = [
        ("app.pem", &p.server.cert_pem),
        ("app.key", &p.server.key_pem),
        ("expired.pem", &p.expired.cert_pem),
        ("expired.key", &p.expired.key_pem),
        ("app-ca.pem", &p.ca.issued().cert_pem),
        ("other-ca.pem", &p.other_ca.issued().cert_pem),
        ("proxy.pem", &p.proxy_client.cert_pem),
        ("proxy.key", &p.proxy_client.key_pem),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

fn tls_app(dir: &Path, cert: &str, extra: &[&str]) -> App {
    let cert_path = dir.join(format!("{cert}.pem"));
    let key_path = dir.join(format!("{cert}.key"));
    let mut args = vec![
        "--tls",
        cert_path.to_str().unwrap(),
        key_path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    PyPeer::start("up_app.py", &args)
}

/// certgate in this process with one listener; `listener` is appended to its section.
fn front(dir: &Path, protocol: &str, listener: &str) -> Running {
    let text = format!(
        "[server]\nworkers = 1\npin_workers = false\n\
         [[listener]]\nname = \"up\"\nbind = \"127.0.0.1:0\"\nprotocol = \"{protocol}\"\n\
         cert = \"server.pem\"\nkey = \"server.key\"\nclient_certificate_mode = \"accept\"\n\
         {listener}\n"
    );
    start_toml(dir.to_path_buf(), &text, None)
}

fn dir_with_pki(tag: &str) -> std::path::PathBuf {
    let dir = temp_dir(tag);
    write_pki(&dir);
    write_app_pki(&dir);
    dir
}

fn https(port: u16) -> String {
    format!("upstream = \"https://127.0.0.1:{port}\"\nupstream_ca = \"app-ca.pem\"\nupstream_server_name = \"app.internal\"\n")
}

fn json(r: &Response) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

#[test]
fn https_upstream_carries_requests_and_large_bodies_both_ways_on_one_connection() {
    let dir = dir_with_pki("up-tls");
    let mut app = tls_app(&dir, "app", &["--http"]);
    let running = front(&dir, "http", &https(app.port));
    let mut tls = connect(running.addr, client_config(ClientCert::Valid, false));

    let r = exchange(&mut tls, &get("/hello")).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let first = json(&r);
    assert_eq!(first["target"], "/hello");
    // The client's certificate reaches the app as usual, inside the TLS connection to it.
    assert!(first["headers"]["x-forwarded-client-cert"][0]
        .as_str()
        .unwrap()
        .starts_with("Hash="));
    let conn = app.next();
    assert_eq!(conn["resumed"], false, "{conn}");
    assert!(conn.get("client_cn").is_none(), "no upstream_cert: {conn}");

    // 4 MiB down, then 3 MiB up: more than rustls buffers at once, in both directions.
    let r = exchange(&mut tls, &get(&format!("/bytes/{}", 4 << 20))).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 4 << 20);
    assert!(r
        .body
        .chunks(16)
        .all(|c| b"0123456789abcdef".starts_with(c)));
    let body: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let mut req = format!(
        "POST /sha256 HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let r = exchange(&mut tls, &req).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let digest = ring::digest::digest(&ring::digest::SHA256, &body);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(json(&r)["sha256"], hex);
    assert_eq!(json(&r)["len"], body.len());

    // Every exchange went over the one pooled TLS connection.
    let r = exchange(&mut tls, &get("/again")).unwrap();
    assert_eq!(json(&r)["conn"], first["conn"]);
    assert_eq!(json(&r)["request"], 4);
}

#[test]
fn https_upstream_sessions_resume_across_reconnects() {
    let dir = dir_with_pki("up-resume");
    let mut app = tls_app(&dir, "app", &["--http"]);
    let running = front(&dir, "http", &https(app.port));
    let mut tls = connect(running.addr, client_config(ClientCert::None, false));
    for i in 0..3 {
        // The app closes after each answer, so every request needs a new TLS connection.
        let r = exchange(&mut tls, &get("/close")).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let conn = app.next();
        assert_eq!(conn["resumed"], i > 0, "connection {i}: {conn}");
    }
}

#[test]
fn https_upstream_sees_certgates_client_certificate_when_configured() {
    let dir = dir_with_pki("up-mtls");
    let ca = dir.join("app-ca.pem");
    let mut app = tls_app(
        &dir,
        "app",
        &["--http", "--client-ca", ca.to_str().unwrap()],
    );
    let with_cert = format!(
        "{}upstream_cert = \"proxy.pem\"\nupstream_key = \"proxy.key\"\n",
        https(app.port)
    );
    let running = front(&dir, "http", &with_cert);
    let r = request(running.addr, ClientCert::None, &get("/")).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(app.next()["client_cn"], "certgate-proxy");

    // Without upstream_cert the app refuses the handshake: 502, the app never ran a request.
    let running = front(&dir, "http", &https(app.port));
    let r = request(running.addr, ClientCert::None, &get("/")).unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(app.next().get("error").is_some());
}

/// certgate (the binary) in front of an app it must not trust; returns the status and the
/// log line about it.
fn refused_upstream(app_cert: &str, upstream: &str) -> (u16, String) {
    let dir = dir_with_pki("up-refused");
    let _app_guard;
    let port = {
        let app = tls_app(&dir, app_cert, &["--http"]);
        let port = app.port;
        _app_guard = app;
        port
    };
    let listen = dead_addr().port();
    let config = format!(
        "[server]\nworkers = 1\npin_workers = false\n\
         [[listener]]\nbind = \"127.0.0.1:{listen}\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
         {}",
        upstream.replace("PORT", &port.to_string())
    );
    let mut proc = Proc::spawn(&dir, &config, |_| {});
    let addr = proc.wait_tcp(listen);
    let r = request(addr, ClientCert::None, &get("/")).unwrap();
    let line = (0..100)
        .find_map(|_| {
            let lines = proc
                .stderr
                .lines_with("TLS handshake with the upstream failed");
            if lines.is_empty() {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            lines.into_iter().next()
        })
        .unwrap_or_else(|| panic!("no log line: {}", proc.stderr.text()));
    (r.status, line)
}

#[test]
fn https_upstream_with_a_certificate_from_another_ca_is_a_502_with_the_reason_logged() {
    let (status, line) = refused_upstream(
        "app",
        "upstream = \"https://127.0.0.1:PORT\"\nupstream_ca = \"other-ca.pem\"\n\
         upstream_server_name = \"app.internal\"\n",
    );
    assert_eq!(status, 502);
    assert!(line.contains("UnknownIssuer"), "{line}");
}

#[test]
fn https_upstream_with_an_expired_certificate_is_a_502_with_the_reason_logged() {
    let (status, line) = refused_upstream(
        "expired",
        "upstream = \"https://127.0.0.1:PORT\"\nupstream_ca = \"app-ca.pem\"\n\
         upstream_server_name = \"app.internal\"\n",
    );
    assert_eq!(status, 502);
    assert!(line.contains("certificate expired"), "{line}");
}

#[test]
fn https_upstream_with_the_wrong_server_name_is_a_502() {
    let (status, line) = refused_upstream(
        "app",
        "upstream = \"https://127.0.0.1:PORT\"\nupstream_ca = \"app-ca.pem\"\n\
         upstream_server_name = \"db.internal\"\n",
    );
    assert_eq!(status, 502);
    assert!(line.contains("not valid for name"), "{line}");
}

#[test]
fn tcp_listener_over_tls_to_the_app_sends_the_proxy_header_before_the_handshake() {
    let dir = dir_with_pki("up-tcp");
    let mut app = tls_app(&dir, "app", &["--proxy"]);
    let listener = format!("{}upstream_proxy_protocol = \"v2\"\n", https(app.port));
    let running = front(&dir, "tcp", &listener);
    let mut tls = connect(running.addr, client_config(ClientCert::Valid, false));
    tls.write_all(b"over tls\n").unwrap();
    tls.flush().unwrap();
    assert_eq!(read_line(&mut tls), "echo:over tls\n");
    // Half-close travels as close_notify + FIN to the app, whose last words still arrive.
    tls.conn.send_close_notify();
    tls.flush().unwrap();
    assert_eq!(read_line(&mut tls), "bye\n");
    let conn = app.next();
    assert_eq!(conn["proxy"]["version"], 2, "{conn}");
    assert_eq!(
        conn["proxy"]["sport"],
        tls.sock.local_addr().unwrap().port()
    );
    assert_eq!(conn["proxy"]["ssl_cn"], "client-a");
}

#[test]
fn http_listener_with_proxy_protocol_gives_each_client_its_own_upstream_connection() {
    let dir = dir_with_pki("up-pp-http");
    let mut app = PyPeer::start("up_app.py", &["--proxy", "--http"]);
    let listener = format!(
        "upstream = \"127.0.0.1:{}\"\nupstream_proxy_protocol = \"v1\"\n",
        app.port
    );
    let running = front(&dir, "http", &listener);
    let mut clients = [
        connect(running.addr, client_config(ClientCert::None, false)),
        connect(running.addr, client_config(ClientCert::None, false)),
    ];
    let mut seen = Vec::new();
    for i in [0, 1, 0, 1] {
        let tls = &mut clients[i];
        let r = exchange(tls, &get("/who")).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let body = json(&r);
        let port = tls.sock.local_addr().unwrap().port();
        assert_eq!(body["proxy"]["sport"], port, "the header names this client");
        seen.push((port, body["conn"].clone(), body["request"].clone()));
    }
    // Two connections, one per client, each kept alive for that client's second request.
    assert_eq!(seen[0].1, seen[2].1);
    assert_eq!(seen[1].1, seen[3].1);
    assert_ne!(seen[0].1, seen[1].1);
    assert_eq!(seen[2].2, 2);
    assert_eq!(seen[3].2, 2);
    let first = app.next();
    assert_eq!(first["proxy"]["version"], 1, "{first}");
}

#[test]
fn upstream_tls_keys_are_checked() {
    let base = "[[listener]]\nbind = \"127.0.0.1:0\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n";
    let cases = [
        (
            "upstream = \"https://127.0.0.1:1\"\n",
            "listener[0].upstream_ca",
            "required",
        ),
        (
            "upstream = \"127.0.0.1:1\"\nupstream_ca = \"ca.pem\"\n",
            "listener[0].upstream_ca",
            "https://",
        ),
        (
            "upstream = \"https://127.0.0.1:1\"\nupstream_ca = \"ca.pem\"\nupstream_cert = \"c.pem\"\n",
            "listener[0].upstream_key",
            "required",
        ),
        (
            "upstream = \"ftp://127.0.0.1:1\"\n",
            "listener[0].upstream",
            "scheme",
        ),
        (
            "upstream = \"https://127.0.0.1:1/app\"\nupstream_ca = \"ca.pem\"\n",
            "listener[0].upstream",
            "no path",
        ),
        (
            "upstream = \"https://127.0.0.1:1\"\nupstream_ca = \"ca.pem\"\nupstream_server_name = \"bad name!\"\n",
            "listener[0].upstream_server_name",
            "not a DNS name",
        ),
    ];
    for (text, key, says) in cases {
        let e = certgate::config::Config::from_toml(&format!("{base}{text}"), Path::new("/tmp"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key) && e.contains(says), "{text}: {e}");
    }
    // A missing CA file is named by `check` (prepare reads every file).
    let dir = temp_dir("up-check");
    write_pki(&dir);
    let text =
        format!("{base}upstream = \"https://127.0.0.1:1\"\nupstream_ca = \"missing-ca.pem\"\n")
            .replace("c.pem", "server.pem")
            .replace("k.pem", "server.key");
    let config = certgate::config::Config::from_toml(&text, &dir).unwrap();
    let e = certgate::app::prepare(config)
        .err()
        .expect("error")
        .to_string();
    assert!(e.contains("missing-ca.pem"), "{e}");
}
