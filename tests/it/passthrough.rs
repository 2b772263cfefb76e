//! SNI passthrough: a ClientHello for a passthrough name reaches the upstream's own TLS server
//! untouched (the client sees the upstream's certificate), other names on the same port are
//! terminated as usual, and the relayed bytes never enter certgate's user space (splice): a
//! bulk transfer through the passthrough route costs certgate under a tenth of the user CPU
//! the same transfer costs through a terminated route.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use certgate::pki::Ca;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, StreamOwned};

use crate::support::*;

/// A TLS server of its own (rustls) for `legacy.example.com`: answers each line with
/// "legacy:<line>", or, for "bulk N", with N bytes; one thread per connection.
struct LegacyTls {
    addr: SocketAddr,
    root: Ca,
}

impl LegacyTls {
    fn start() -> LegacyTls {
        let root = Ca::root("legacy root").unwrap();
        let cert = root
            .server_cert(&["legacy.example.com", "a.legacy.test"])
            .unwrap();
        let config = Arc::new(
            ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.cert_der.clone()], cert.key_der.clone_key())
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let config = config.clone();
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = StreamOwned::new(conn, tcp);
                    let mut reader = BufReader::new(&mut tls);
                    let mut line = String::new();
                    while reader.read_line(&mut line).unwrap_or(0) > 0 {
                        let reply = match line.trim().strip_prefix("bulk ") {
                            Some(n) => vec![b'x'; n.parse().unwrap()],
                            None => format!("legacy:{line}").into_bytes(),
                        };
                        let inner = reader.get_mut();
                        if inner
                            .write_all(&reply)
                            .and_then(|()| inner.flush())
                            .is_err()
                        {
                            return;
                        }
                        line.clear();
                    }
                });
            }
        });
        LegacyTls { addr, root }
    }

    fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.root.issued().cert_der.clone()).unwrap();
        Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

fn config_text(legacy: SocketAddr, app: SocketAddr, port: u16) -> String {
    format!(
        "[server]\nworkers = 1\npin_workers = false\n\
         [[listener]]\nname = \"edge\"\nbind = \"127.0.0.1:{port}\"\ncert = \"server.pem\"\n\
         key = \"server.key\"\nupstream = \"{app}\"\n\
         [[listener.passthrough]]\nserver_names = [\"legacy.example.com\", \"*.legacy.test\"]\n\
         upstream = \"{legacy}\"\n"
    )
}

fn connect_as(addr: SocketAddr, name: &str, config: Arc<ClientConfig>) -> Tls {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    StreamOwned::new(ClientConnection::new(config, name).unwrap(), tcp)
}

#[test]
fn passthrough_names_reach_their_own_tls_server_and_others_are_terminated() {
    let legacy = LegacyTls::start();
    let echo = certgate::demo::echo::EchoApp::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let dir = temp_dir("passthrough");
    write_pki(&dir);
    let text = config_text(legacy.addr, echo.addr, 0);
    let config = certgate::config::Config::from_toml(&text, &dir).unwrap();
    let server = certgate::app::start(certgate::app::prepare(config).unwrap()).unwrap();
    let addr = server.local_addrs()[0];

    // The passthrough name: the handshake is the legacy server's (its CA verifies it, ours
    // would not), and the bytes are its answers.
    for name in ["legacy.example.com", "LEGACY.example.com", "a.legacy.test"] {
        let mut tls = connect_as(addr, name, legacy.client_config());
        tls.write_all(b"hi\n").unwrap();
        tls.flush().unwrap();
        let mut reply = String::new();
        BufReader::new(&mut tls).read_line(&mut reply).unwrap();
        assert_eq!(reply, "legacy:hi\n", "{name}");
        let peer = tls.conn.peer_certificates().unwrap()[0].clone();
        assert_ne!(
            peer,
            pki().server.cert_der,
            "{name}: certgate's certificate"
        );
    }

    // Any other name on the same port is certgate's: its certificate, HTTP, the echo app.
    let mut tls = connect(addr, client_config(ClientCert::None, false));
    let resp = exchange(&mut tls, &get("/terminated")).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(
        tls.conn.peer_certificates().unwrap()[0],
        pki().server.cert_der
    );
    // A wildcard covers one label only.
    let mut tls = connect_as(
        addr,
        "b.a.legacy.test",
        client_config(ClientCert::None, false),
    );
    let _ = tls.write_all(b"x");
    let r = tls.flush().and_then(|()| tls.read(&mut [0u8; 1]));
    assert!(
        r.is_err(),
        "terminated by certgate: our cert does not name b.a.legacy.test"
    );

    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_byte_stream_that_is_not_a_client_hello_is_refused_with_an_alert() {
    let legacy = LegacyTls::start();
    let dir = temp_dir("passthrough-bad");
    write_pki(&dir);
    let text = config_text(legacy.addr, dead_addr(), 0);
    let config = certgate::config::Config::from_toml(&text, &dir).unwrap();
    let server = certgate::app::start(certgate::app::prepare(config).unwrap()).unwrap();
    let mut tcp = TcpStream::connect(server.local_addrs()[0]).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let _ = tcp.read_to_end(&mut got);
    assert_eq!(got.first(), Some(&0x15), "an alert record: {got:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn user_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse().unwrap()
}

/// Reads `n` bytes from `r` (whatever they are) and returns how long it took.
fn drain(r: &mut impl Read, n: usize) -> Duration {
    let start = Instant::now();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = n;
    while left > 0 {
        let want = left.min(buf.len());
        let got = r.read(&mut buf[..want]).unwrap();
        assert!(got > 0, "stream ended with {left} bytes to go");
        left -= got;
    }
    start.elapsed()
}

#[test]
fn passthrough_bytes_are_spliced_not_copied_through_user_space() {
    const BYTES: usize = 256 << 20;
    let legacy = LegacyTls::start();
    let echo = certgate::demo::echo::EchoApp::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let dir = temp_dir("splice");
    write_pki(&dir);
    let port = dead_addr().port();
    std::fs::write(
        dir.join("certgate.toml"),
        config_text(legacy.addr, echo.addr, port),
    )
    .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_certgate"))
        .arg("--config")
        .arg(dir.join("certgate.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child = Reaped(child);
    let pid = child.0.id();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < until, "certgate did not start");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Through the passthrough route: the legacy server sends BYTES over its own TLS.
    let mut tls = connect_as(addr, "legacy.example.com", legacy.client_config());
    tls.write_all(b"hi\n").unwrap();
    tls.flush().unwrap();
    drain(&mut tls, b"legacy:hi\n".len());
    let before = user_ticks(pid);
    tls.write_all(format!("bulk {BYTES}\n").as_bytes()).unwrap();
    tls.flush().unwrap();
    drain(&mut tls, BYTES);
    let spliced = user_ticks(pid) - before;

    // Through the terminated route: the same bytes, decrypted and encrypted by certgate.
    let mut tls = connect(addr, client_config(ClientCert::None, false));
    let resp = exchange(&mut tls, &get("/bytes/1")).unwrap();
    assert_eq!(resp.status, 200);
    let before = user_ticks(pid);
    tls.write_all(&get(&format!("/bytes/{BYTES}"))).unwrap();
    tls.flush().unwrap();
    let mut reader = BufReader::new(&mut tls);
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    drain(&mut reader, BYTES);
    let terminated = user_ticks(pid) - before;

    eprintln!("certgate user CPU for {BYTES} bytes: spliced {spliced} ticks, terminated {terminated} ticks");
    assert!(terminated > 0, "the terminated route must cost user CPU");
    assert!(
        spliced * 10 < terminated,
        "passthrough cost {spliced} ticks of user CPU, terminated {terminated}: not spliced?"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
