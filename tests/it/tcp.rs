//! `protocol = "tcp"` listeners end to end: mutual TLS in front of a line protocol, the stream
//! relayed both ways with half-close, and the PROXY header (v1, v2 with TLVs) read back by an
//! independent parser (tests/tools/pp_peer.py).

use std::io::{Read, Write};

use crate::support::*;

/// The line-echo app behind a PROXY header (tests/tools/pp_peer.py).
type App = PyPeer;

fn app() -> App {
    PyPeer::start("pp_peer.py", &[])
}

/// certgate with one `tcp` listener in front of `app`.
fn front(app: &App, mode: &str, ca: bool, proxy: &str) -> Running {
    let dir = temp_dir("tcp");
    write_pki(&dir);
    let ca = if ca { "client_ca = \"ca.pem\"\n" } else { "" };
    let text = format!(
        "[server]\nworkers = 1\npin_workers = false\n\
         [[listener]]\nname = \"db\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\n\
         cert = \"server.pem\"\nkey = \"server.key\"\nclient_certificate_mode = \"{mode}\"\n{ca}\
         upstream = \"127.0.0.1:{port}\"\nupstream_proxy_protocol = \"{proxy}\"\n",
        port = app.port
    );
    let config = certgate::config::Config::from_toml(&text, &dir).expect("config");
    let server =
        certgate::app::start(certgate::app::prepare(config).expect("prepare")).expect("start");
    Running {
        addr: server.local_addrs()[0],
        echo: None,
        server: Some(server),
        dir,
    }
}

#[test]
fn tcp_listener_relays_a_line_protocol_with_half_close_and_proxy_v2() {
    let mut app = app();
    let running = front(&app, "require", true, "v2");
    let mut tls = connect(running.addr, client_config(ClientCert::Valid, false));
    tls.write_all(b"hello\nworld\n").unwrap();
    tls.flush().unwrap();
    assert_eq!(read_line(&mut tls), "echo:hello\n");
    assert_eq!(read_line(&mut tls), "echo:world\n");
    // Half-close: our close_notify becomes the app's EOF, and its last words still arrive.
    tls.conn.send_close_notify();
    tls.flush().unwrap();
    assert_eq!(read_line(&mut tls), "bye\n");
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");

    let h = app.next();
    let leaf = &pki().client_via_intermediate;
    assert_eq!(h["version"], 2);
    assert_eq!(h["command"], 1, "PROXY, not LOCAL");
    assert_eq!(h["src"], "127.0.0.1");
    assert_eq!(h["dst"], "127.0.0.1");
    assert_eq!(h["dport"], running.addr.port());
    let sport = tls.sock.local_addr().unwrap().port();
    assert_eq!(h["sport"], sport);
    assert_eq!(h["authority"], "localhost");
    assert_eq!(
        h["ssl_client"], 0x07,
        "SSL, cert on this connection and session"
    );
    assert_eq!(h["ssl_verify"], 0, "verified against client_ca");
    assert_eq!(h["ssl_version"], "TLSv1.3");
    assert!(
        h["ssl_cipher"].as_str().unwrap().starts_with("TLS13_"),
        "{h}"
    );
    assert_eq!(h["ssl_cn"], "client-a");
    let der: String = leaf
        .cert_der
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(h["cert_der_hex"], der);
}

#[test]
fn tcp_listener_sends_proxy_v1_with_the_client_address() {
    let mut app = app();
    let running = front(&app, "ignore", false, "v1");
    let mut tls = connect(running.addr, client_config(ClientCert::None, true));
    tls.write_all(b"ping\n").unwrap();
    tls.flush().unwrap();
    assert_eq!(read_line(&mut tls), "echo:ping\n");
    let h = app.next();
    assert_eq!(h["version"], 1);
    assert_eq!(h["proto"], "TCP4");
    assert_eq!(h["src"], "127.0.0.1");
    assert_eq!(h["sport"], tls.sock.local_addr().unwrap().port());
    assert_eq!(h["dport"], running.addr.port());
}

#[test]
fn tcp_listener_without_a_certificate_in_accept_mode_says_so_in_v2() {
    let mut app = app();
    let running = front(&app, "accept", false, "v2");
    let mut tls = connect(running.addr, client_config(ClientCert::None, false));
    tls.write_all(b"x\n").unwrap();
    tls.flush().unwrap();
    assert_eq!(read_line(&mut tls), "echo:x\n");
    let h = app.next();
    assert_eq!(h["ssl_client"], 0x01, "TLS, no certificate");
    assert_eq!(h["ssl_verify"], 1);
    assert!(h.get("cert_der_hex").is_none(), "{h}");
    assert!(h.get("ssl_cn").is_none(), "{h}");
}

#[test]
fn tcp_listener_refuses_a_client_without_a_certificate_in_require_mode() {
    let app = app();
    let running = front(&app, "require", true, "v2");
    let mut tls = connect(running.addr, client_config(ClientCert::None, false));
    let _ = tls.write_all(b"x\n");
    let _ = tls.flush();
    let mut buf = [0u8; 16];
    let r = tls.read(&mut buf);
    assert!(r.is_err(), "expected an alert, got {r:?}");
}
