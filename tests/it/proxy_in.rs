//! PROXY protocol in, end to end: HAProxy (`send-proxy`, `send-proxy-v2`, the real encoders) in
//! front of the certgate binary, a client connecting to HAProxy from 127.0.0.2 so that the
//! address the app sees can only have come from the header (certgate's own peer is HAProxy on
//! 127.0.0.1). Hand-made headers for what HAProxy never sends: bad ones (each closed without an
//! answer and counted in `/metrics`), v2 `LOCAL`, a header with the ClientHello in the same
//! segment, and sources outside `proxy_protocol_from`.
//!
//! HAProxy must be installed (`apt-get install haproxy`); `CERTGATE_SKIP_HAPROXY=1` skips the
//! tests that need it instead of failing them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, StreamOwned};

use crate::support::*;

const REASON: &str = "proxy_header";

/// Whether HAProxy can be run; false (with a note) only when it is missing and
/// `CERTGATE_SKIP_HAPROXY` is set; a missing HAProxy otherwise fails the test, saying so.
fn haproxy_available() -> bool {
    match Command::new("haproxy").arg("-v").output() {
        Ok(out) if out.status.success() => true,
        _ if std::env::var_os("CERTGATE_SKIP_HAPROXY").is_some() => {
            eprintln!("skipped: haproxy is not installed and CERTGATE_SKIP_HAPROXY is set");
            false
        }
        _ => panic!(
            "haproxy must be installed for the PROXY protocol tests (apt-get install haproxy); \
             set CERTGATE_SKIP_HAPROXY=1 to skip them"
        ),
    }
}

/// HAProxy in TCP mode: one frontend per `(frontend port, certgate port, server options)`.
struct Haproxy {
    child: Reaped,
    log: std::path::PathBuf,
}

impl Haproxy {
    fn start(dir: &std::path::Path, routes: &[(u16, u16, &str)]) -> Haproxy {
        let mut cfg = String::from(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
             timeout client 30s\n  timeout server 30s\n",
        );
        for (i, (front, back, options)) in routes.iter().enumerate() {
            cfg.push_str(&format!(
                "frontend fe{i}\n  bind 127.0.0.1:{front}\n  default_backend be{i}\n\
                 backend be{i}\n  server cg 127.0.0.1:{back} {options}\n"
            ));
        }
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let log = dir.join("haproxy.log");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("haproxy");
        let mut h = Haproxy {
            child: Reaped(child),
            log,
        };
        for (front, _, _) in routes {
            h.wait_listening(*front);
        }
        h
    }

    /// Polls /proc/net/tcp for the listening socket: a probe connection would go through to
    /// certgate and show up in its counters.
    fn wait_listening(&mut self, port: u16) {
        let needle = format!("0100007F:{port:04X} 00000000:0000 0A");
        wait_for("haproxy listening", 10, || {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                panic!("haproxy exited ({status}): {}", self.log_text());
            }
            std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| t.contains(&needle))
        });
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A TCP connection to `to` from `from_ip` (any port), bound before connecting.
fn connect_from(from_ip: &str, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{from_ip}:0").parse().unwrap();
    socket.bind(&from.into()).expect("bind the client address");
    socket.connect(&to.into()).expect("connect");
    let tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    tcp
}

/// A TLS client on `tcp` that first writes `header`, in the same segment as its ClientHello.
fn tls_after(tcp: TcpStream, header: &[u8]) -> Tls {
    tls_to(
        tcp,
        header,
        client_config(ClientCert::None, false),
        "localhost",
    )
}

fn tls_to(mut tcp: TcpStream, header: &[u8], config: Arc<ClientConfig>, name: &str) -> Tls {
    let mut conn =
        ClientConnection::new(config, ServerName::try_from(name.to_owned()).unwrap()).unwrap();
    let mut first = header.to_vec();
    conn.write_tls(&mut first).unwrap();
    assert!(
        first.len() > header.len(),
        "the ClientHello follows the header"
    );
    tcp.write_all(&first).unwrap();
    StreamOwned::new(conn, tcp)
}

fn get_on(mut tls: Tls) -> Response {
    exchange(&mut tls, &get("/pp")).expect("a response")
}

/// The one X-Forwarded-For the echo app received.
fn xff(resp: &Response) -> String {
    let values = header_values(&resp.upstream_head(), "x-forwarded-for");
    assert_eq!(values.len(), 1, "{}", resp.upstream_head());
    values[0].clone()
}

fn v2_header(source: &str, destination: &str) -> Vec<u8> {
    let (s, d): (SocketAddr, SocketAddr) = (source.parse().unwrap(), destination.parse().unwrap());
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (s, d),
    )
    .build()
    .unwrap()
}

fn v2_local() -> Vec<u8> {
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Local,
        ppp::v2::Protocol::Unspecified,
        ppp::v2::Addresses::Unspecified,
    )
    .build()
    .unwrap()
}

/// certgate (binary, one worker) with the JSON access log and an admin port; `listeners` are
/// `(name, extra keys)`, each on its own port, in front of one echo app.
struct Rig {
    proc: Proc,
    admin: SocketAddr,
    ports: Vec<u16>,
    _echo: certgate::demo::echo::EchoApp,
}

fn rig(tag: &str, timeouts: &str, listeners: &[(&str, &str)]) -> Rig {
    let echo = echo_app();
    let dir = temp_dir(tag);
    write_pki(&dir);
    let [admin] = free_ports::<1>();
    let mut text = server_toml(
        1,
        &format!(
            "\n[log]\naccess = \"json\"\n{timeouts}{}",
            admin_toml(admin)
        ),
    );
    let mut ports = Vec::new();
    for (name, extra) in listeners {
        let [port] = free_ports::<1>();
        text += &listener_toml(name, port, "ignore", None, echo.addr);
        text += extra;
        text += "\n";
        ports.push(port);
    }
    let mut proc = Proc::spawn(&dir, &text, |_| {});
    let admin = local(admin);
    proc.wait_ready(admin);
    Rig {
        proc,
        admin,
        ports,
        _echo: echo,
    }
}

impl Rig {
    fn addr(&self, i: usize) -> SocketAddr {
        local(self.ports[i])
    }

    /// The JSON access-log line of the request whose client port is `port`.
    fn access_line(&self, port: u16) -> serde_json::Value {
        let mut found = None;
        wait_for("the access-log line", 10, || {
            found = self
                .proc
                .stdout
                .lines_with("\"client\"")
                .into_iter()
                .map(|l| serde_json::from_str::<serde_json::Value>(&l).unwrap())
                .find(|v| {
                    v["client"]
                        .as_str()
                        .is_some_and(|c| c.ends_with(&format!(":{port}")))
                });
            found.is_some()
        });
        found.unwrap()
    }

    fn failures(&self, listener: &str, reason: &str) -> f64 {
        scrape(self.admin).value(
            "certgate_handshake_failures_total",
            &[("listener", listener), ("reason", reason)],
        )
    }

    fn handshakes(&self, listener: &str) -> f64 {
        scrape(self.admin)
            .samples
            .iter()
            .filter(|s| {
                s.name == "certgate_handshakes_total"
                    && s.labels.get("listener").map(String::as_str) == Some(listener)
            })
            .map(|s| s.value)
            .sum()
    }
}

#[test]
fn haproxy_send_proxy_v1_and_v2_carry_the_client_address_to_the_app() {
    if !haproxy_available() {
        return;
    }
    let rig = rig(
        "pp-haproxy",
        "",
        &[
            (
                "pp1",
                "proxy_protocol = \"v1\"\nproxy_protocol_from = [\"127.0.0.1\"]",
            ),
            ("pp2", "proxy_protocol = \"v2\""),
            ("ppany", "proxy_protocol = \"any\""),
        ],
    );
    let [f1, f2, f3] = free_ports::<3>();
    let haproxy = Haproxy::start(
        &rig.proc.dir,
        &[
            (f1, rig.ports[0], "send-proxy"),
            (f2, rig.ports[1], "send-proxy-v2"),
            (f3, rig.ports[2], "send-proxy-v2"),
        ],
    );
    for (front, name) in [(f1, "pp1"), (f2, "pp2"), (f3, "ppany")] {
        let tcp = connect_from("127.0.0.2", local(front));
        let client = tcp.local_addr().unwrap();
        assert_eq!(client.ip().to_string(), "127.0.0.2");
        let resp = get_on(tls_after(tcp, b""));
        assert_eq!(resp.status, 200, "{name}: {}", haproxy.log_text());
        assert_eq!(xff(&resp), "127.0.0.2", "{name}");
        assert_eq!(
            header_values(&resp.upstream_head(), "forwarded"),
            vec!["for=127.0.0.2;proto=https".to_owned()],
            "{name}"
        );
        let line = rig.access_line(client.port());
        assert_eq!(line["client"], client.to_string(), "{name}");
        assert_eq!(line["listener"], name);
        assert_eq!(rig.failures(name, REASON), 0.0, "{name}");
    }
}

#[test]
fn haproxy_health_checks_with_v2_local_are_served() {
    if !haproxy_available() {
        return;
    }
    let rig = rig("pp-local", "", &[("pp2", "proxy_protocol = \"v2\"")]);
    let [front] = free_ports::<1>();
    // HAProxy's TLS health checks on a send-proxy-v2 server open with a v2 LOCAL header.
    let _haproxy = Haproxy::start(
        &rig.proc.dir,
        &[(
            front,
            rig.ports[0],
            "send-proxy-v2 check check-ssl verify none inter 100ms",
        )],
    );
    // A check ends with a reset as soon as HAProxy has its side of the handshake: whether
    // certgate read the client's Finished before the reset arrived (a finished handshake) or
    // not (`closed`) is a race. What matters here is that the LOCAL header was taken: three
    // checks got past it, and none was refused for it.
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while rig.handshakes("pp2") + rig.failures("pp2", "closed") < 3.0 {
        assert!(
            std::time::Instant::now() < until,
            "no three health checks past the PROXY header in 20 s; certgate: {}",
            rig.proc.stderr.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(rig.failures("pp2", REASON), 0.0);
    // A hand-made LOCAL keeps the socket's own address.
    let tcp = connect_from("127.0.0.1", rig.addr(0));
    let resp = get_on(tls_after(tcp, &v2_local()));
    assert_eq!(xff(&resp), "127.0.0.1");
}

#[test]
fn tcp_listener_passes_the_proxy_source_on_in_its_own_header() {
    if !haproxy_available() {
        return;
    }
    let app = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/tools/pp_peer.py"
        ))
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut app = Reaped(app);
    let mut out = BufReader::new(app.0.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let app_port: u16 = first.trim().parse().expect("pp_peer.py port");
    let dir = temp_dir("pp-tcp");
    write_pki(&dir);
    let [port, front] = free_ports::<2>();
    let text = server_toml(1, "")
        + &listener_toml("db", port, "ignore", None, local(app_port))
        + "protocol = \"tcp\"\nupstream_proxy_protocol = \"v1\"\nproxy_protocol = \"v2\"\n";
    let mut proc = Proc::spawn(&dir, &text, |_| {});
    let _haproxy = Haproxy::start(&dir, &[(front, port, "send-proxy-v2")]);
    // Listening, seen without a probe connection.
    wait_for("certgate listening", 10, || {
        proc.assert_running();
        std::fs::read_to_string("/proc/net/tcp")
            .is_ok_and(|t| t.contains(&format!("0100007F:{port:04X} 00000000:0000 0A")))
    });
    let tcp = connect_from("127.0.0.2", local(front));
    let client = tcp.local_addr().unwrap();
    let mut tls = tls_after(tcp, b"");
    tls.write_all(b"ping\n").unwrap();
    tls.flush().unwrap();
    let mut reply = String::new();
    BufReader::new(&mut tls).read_line(&mut reply).unwrap();
    assert_eq!(reply, "echo:ping\n");
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let h: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(h["version"], 1, "{h}");
    assert_eq!(h["src"], "127.0.0.2", "{h}");
    assert_eq!(h["sport"], client.port(), "{h}");
    // The destination HAProxy's header named: its own frontend.
    assert_eq!(h["dport"], front, "{h}");
}

#[test]
fn bad_headers_are_closed_without_an_answer_and_counted() {
    let rig = rig(
        "pp-bad",
        "\n[timeouts]\nhandshake = \"1s\"\n",
        &[
            ("pp", "proxy_protocol = \"any\""),
            ("pp1", "proxy_protocol = \"v1\""),
        ],
    );
    let good = v2_header("203.0.113.7:40000", "127.0.0.1:443");
    let with = |at: usize, byte: u8| {
        let mut h = good.clone();
        h[at] = byte;
        h
    };
    let mut huge = good[..16].to_vec();
    huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    let mut long_v1 = b"PROXY TCP4 ".to_vec();
    long_v1.resize(300, b'1');
    let mut hello = Vec::new();
    ClientConnection::new(
        client_config(ClientCert::None, false),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap()
    .write_tls(&mut hello)
    .unwrap();
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("garbage", b"hello there\r\n".to_vec(), false),
        (
            "v1 with a bad address",
            b"PROXY TCP4 1.2.3 4.5.6.7 1 2\r\n".to_vec(),
            false,
        ),
        ("v1 longer than 107 bytes", long_v1, false),
        ("v2 with a bad signature", with(5, b'X'), false),
        ("v2 of version 1", with(12, 0x11), false),
        ("v2 announcing 65535 bytes", huge, false),
        ("a plain ClientHello", hello, false),
        // Truncated, then silence: only the handshake deadline ends it.
        ("half a v2 header", good[..10].to_vec(), true),
        (
            "v1 without its CRLF",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2".to_vec(),
            true,
        ),
    ];
    for (i, (what, bytes, waits)) in cases.iter().enumerate() {
        let mut tcp = connect_from("127.0.0.1", rig.addr(0));
        tcp.write_all(bytes).unwrap();
        let started = Instant::now();
        let mut answer = Vec::new();
        // Our side stays open: certgate must close, not wait for us. A reset is a close too.
        let _ = tcp.read_to_end(&mut answer);
        let took = started.elapsed();
        assert!(answer.is_empty(), "{what}: answered {answer:?}");
        if *waits {
            assert!(
                took >= Duration::from_millis(800),
                "{what}: closed after {took:?}"
            );
        }
        assert!(
            took < Duration::from_secs(5),
            "{what}: closed after {took:?}"
        );
        wait_for("the failure counted", 5, || {
            rig.failures("pp", REASON) == (i + 1) as f64
        });
    }
    // A v2 header on a v1-only listener is no header at all.
    let mut tcp = connect_from("127.0.0.1", rig.addr(1));
    tcp.write_all(&good).unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    assert!(answer.is_empty());
    wait_for("the failure counted", 5, || {
        rig.failures("pp1", REASON) == 1.0
    });
    // A connection closed before its first byte is a port scan, not a bad header.
    let tcp = connect_from("127.0.0.1", rig.addr(0));
    tcp.shutdown(Shutdown::Both).unwrap();
    wait_for("the close counted", 5, || {
        rig.failures("pp", "closed") == 1.0
    });
    assert_eq!(rig.failures("pp", REASON), cases.len() as f64);
    // Each refusal is logged with the socket's address and why.
    let refused = rig.proc.stderr.lines_with("reason=\"proxy_header\"");
    assert!(!refused.is_empty(), "{}", rig.proc.stderr.text());
    assert!(
        refused
            .iter()
            .any(|l| l.contains("PROXY header longer than 107 bytes")),
        "{refused:?}"
    );
    // The listener still serves a good header afterwards.
    let resp = get_on(tls_after(connect_from("127.0.0.1", rig.addr(0)), &good));
    assert_eq!(xff(&resp), "203.0.113.7");
}

#[test]
fn sources_outside_proxy_protocol_from_are_served_without_a_header() {
    let rig = rig(
        "pp-from",
        "",
        &[(
            "pp",
            "proxy_protocol = \"v2\"\nproxy_protocol_from = [\"127.0.0.2/32\"]",
        )],
    );
    // 127.0.0.1 is not listed: plain TLS, its own address.
    let resp = get_on(tls_after(connect_from("127.0.0.1", rig.addr(0)), b""));
    assert_eq!(xff(&resp), "127.0.0.1");
    // 127.0.0.2 is listed: its header's source is the client, IPv6 included; the ClientHello
    // arrives in the same segment as the header and is not lost.
    let header = v2_header("[2001:db8::7]:40000", "[2001:db8::1]:443");
    let resp = get_on(tls_after(connect_from("127.0.0.2", rig.addr(0)), &header));
    assert_eq!(xff(&resp), "2001:db8::7");
    assert_eq!(rig.access_line(40000)["client"], "[2001:db8::7]:40000");
    // ... and without one it is refused.
    let mut tcp = connect_from("127.0.0.2", rig.addr(0));
    let mut tls = tls_after(tcp.try_clone().unwrap(), b"");
    assert!(exchange(&mut tls, &get("/")).is_err());
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest);
    assert_eq!(rig.failures("pp", REASON), 1.0);
}

/// A TLS server of its own for `legacy.example.com` that answers one line with "legacy:<line>";
/// returns its address and a client config that trusts it.
fn legacy_tls() -> (SocketAddr, Arc<ClientConfig>) {
    let root = certgate::pki::Ca::root("legacy root").unwrap();
    let cert = root.server_cert(&["legacy.example.com"]).unwrap();
    let config = Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert_der.clone()], cert.key_der.clone_key())
            .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = StreamOwned::new(conn, tcp);
            let mut line = String::new();
            if BufReader::new(&mut tls).read_line(&mut line).is_ok() {
                let _ = tls.write_all(format!("legacy:{line}").as_bytes());
                let _ = tls.flush();
            }
        }
    });
    let mut roots = RootCertStore::empty();
    roots.add(root.issued().cert_der.clone()).unwrap();
    let client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (addr, Arc::new(client))
}

#[test]
fn the_header_comes_off_before_the_passthrough_peek() {
    let (legacy, legacy_client) = legacy_tls();
    let rig = rig(
        "pp-passthrough",
        "",
        &[(
            "pp",
            &format!(
                "proxy_protocol = \"v1\"\n[[listener.passthrough]]\n\
                 server_names = [\"legacy.example.com\"]\nupstream = \"{legacy}\""
            ),
        )],
    );
    let header = b"PROXY TCP4 198.51.100.9 127.0.0.1 5555 443\r\n";
    // Relayed: the upstream's own TLS server answers, the header is not part of the stream.
    let tcp = connect_from("127.0.0.1", rig.addr(0));
    let mut tls = tls_to(tcp, header, legacy_client, "legacy.example.com");
    tls.write_all(b"hi\n").unwrap();
    tls.flush().unwrap();
    let mut reply = String::new();
    BufReader::new(&mut tls).read_line(&mut reply).unwrap();
    assert_eq!(reply, "legacy:hi\n");
    // Terminated: the header's source is the client.
    let resp = get_on(tls_after(connect_from("127.0.0.1", rig.addr(0)), header));
    assert_eq!(xff(&resp), "198.51.100.9");
    assert_eq!(rig.access_line(5555)["client"], "198.51.100.9:5555");
}

#[test]
fn check_rejects_bad_proxy_protocol_settings_naming_the_key() {
    let dir = temp_dir("pp-check");
    write_pki(&dir);
    let base = listener_toml("pp", 1, "ignore", None, local(2));
    for (extra, needle) in [
        (
            "proxy_protocol = \"v3\"\n",
            "expected one of `off`, `v1`, `v2`, `any`",
        ),
        (
            "proxy_protocol_from = [\"10.0.0.0/8\"]\n",
            "listener[0].proxy_protocol_from",
        ),
        (
            "proxy_protocol = \"any\"\nproxy_protocol_from = [\"10.0.0.1/8\"]\n",
            "listener[0].proxy_protocol_from",
        ),
        (
            "proxy_protocol = \"v1\"\nproxy_protocol_from = [\"not-a-net\"]\n",
            "not-a-net",
        ),
    ] {
        let path = dir.join("certgate.toml");
        std::fs::write(&path, format!("{base}{extra}")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_certgate"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{extra}: {stderr}");
        assert!(stderr.contains(needle), "{extra}: {stderr}");
    }
    std::fs::write(
        dir.join("certgate.toml"),
        format!("{base}proxy_protocol = \"v2\"\nproxy_protocol_from = [\"10.0.0.0/8\", \"::1\"]\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_certgate"))
        .args(["check", "--config"])
        .arg(dir.join("certgate.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("proxy_protocol=v2 from 10.0.0.0/8, ::1/128"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
