//! WebSocket through certgate, end to end: the `websockets` library (PyPI) as client and as
//! echo server, with a client certificate, over certgate's TLS (tests/tools/ws_peer.py).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use crate::support::*;

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/ws_peer.py");

/// The echo server, killed when the test ends.
struct WsServer {
    child: Child,
    port: u16,
}

impl WsServer {
    fn start() -> WsServer {
        let mut child = Command::new("python3")
            .args([PEER, "server"])
            .stdout(Stdio::piped())
            // The library logs every connection certgate closed on purpose (idle tunnels).
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with `websockets` is needed (.ci/run installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("server port");
        let port = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("ws_peer.py server did not start (is `websockets` installed?): {line:?}")
        });
        WsServer { child, port }
    }

    fn addr(&self) -> std::net::SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }
}

impl Drop for WsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn peer(args: &[&str]) -> serde_json::Value {
    peer_with(args, false)
}

fn peer_with(args: &[&str], spoof: bool) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(PEER)
        .args(args)
        .env("WS_SPOOF", if spoof { "1" } else { "0" })
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ws_peer.py {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout:?}"))
}

fn write_client_files(dir: &std::path::Path) {
    let p = pki();
    let leaf = &p.client_via_intermediate;
    std::fs::write(
        dir.join("client.pem"),
        format!("{}{}", leaf.cert_pem, p.intermediate.issued().cert_pem),
    )
    .unwrap();
    std::fs::write(dir.join("client.key"), &leaf.key_pem).unwrap();
}

#[test]
fn websocket_with_a_client_certificate_relays_every_kind_of_message() {
    let app = WsServer::start();
    let mut setup = Setup::new("require").with_ca();
    setup.upstream = Some(app.addr());
    let running = start(setup);
    write_client_files(&running.dir);
    let d = running.dir.display().to_string();
    let url = format!("wss://localhost:{}/chat", running.addr.port());
    let seen = peer_with(
        &[
            "client",
            &url,
            &format!("{d}/ca.pem"),
            &format!("{d}/client.pem"),
            &format!("{d}/client.key"),
        ],
        true,
    );
    assert_eq!(seen["echo_text"], "hello");
    assert_eq!(seen["echo_big_ok"], true, "3 MiB binary message");
    assert_eq!(seen["echo_fragmented"], "frag-mented-message");
    assert_eq!(seen["pong"], true);
    assert_eq!(seen["client_close_code"], 1000);
    assert_eq!(
        seen["server_close_code"], 4001,
        "the app's close reaches the client"
    );
    // The identity header reached the app on the upgrade request, byte for byte, and the
    // forged copies the client sent with it did not.
    let expected = expected_xfcc(&ClientCert::Valid.chain());
    let header = expected
        .strip_prefix("X-Forwarded-Client-Cert: ")
        .unwrap_or(&expected)
        .trim_end();
    assert_eq!(seen["xfcc"], header);
}

#[test]
fn a_spoofed_identity_header_on_the_upgrade_request_is_replaced() {
    let app = WsServer::start();
    let mut setup = Setup::new("accept");
    setup.upstream = Some(app.addr());
    let running = start(setup);
    let d = running.dir.display().to_string();
    let url = format!("wss://localhost:{}/chat", running.addr.port());
    // No client certificate and forged headers: the app must see no identity at all.
    let seen = peer_with(&["client", &url, &format!("{d}/ca.pem")], true);
    assert_eq!(seen["xfcc"], "-");
    assert_eq!(seen["echo_text"], "hello");
}

#[test]
fn an_idle_tunnel_is_closed_after_tunnel_idle() {
    let app = WsServer::start();
    let mut setup = Setup::new("ignore");
    setup.upstream = Some(app.addr());
    setup.extra = "[timeouts]\ntunnel_idle = \"1s\"\n".into();
    let running = start(setup);
    let d = running.dir.display().to_string();
    let url = format!("wss://localhost:{}/chat", running.addr.port());
    let seen = peer(&["idle", &url, &format!("{d}/ca.pem"), "2.5"]);
    assert_eq!(seen["closed"], true);
}

#[test]
fn upgrades_the_listener_does_not_allow_are_stripped() {
    let running = start(Setup::new("ignore"));
    let resp = request(
        running.addr,
        ClientCert::None,
        b"GET /h2c HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    )
    .unwrap();
    assert_eq!(resp.status, 200);
    let head = resp.upstream_head().to_ascii_lowercase();
    assert!(!head.contains("upgrade"), "{head}");
    assert!(!head.contains("http2-settings"), "{head}");
}

#[test]
fn an_app_that_refuses_the_upgrade_answers_over_plain_http() {
    let app = WsServer::start();
    let mut setup = Setup::new("ignore");
    setup.upstream = Some(app.addr());
    let running = start(setup);
    let resp = request(
        running.addr,
        ClientCert::None,
        b"GET /forbidden HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    assert_eq!(resp.status, 403, "{}", resp.head);
    assert!(
        !resp.head.to_ascii_lowercase().contains("upgrade"),
        "{}",
        resp.head
    );
}
