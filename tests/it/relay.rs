//! Five relay bugs, end to end (each of these tests failed on 9aad853):
//!
//! 1. an app that resets an idle keep-alive connection turns the next request into a 502 (same
//!    client connection) or a 504 (new client connection) instead of a retry;
//! 2. an app's early answer during an upload (413, 403) is replaced by a 502 or a 504;
//! 3. `Forwarded` and `X-Real-IP` from the client reach the app untouched;
//! 4. a refused TLS 1.2 handshake loses its alert when the client writes its second flight
//!    record by record (as Java does): the later writes meet a reset;
//! 5. entries after the leaf of a client's Certificate message that are not certificates (empty,
//!    junk) reach the app as certificates in `X-Forwarded-Client-Cert`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ClientConnection, SignatureScheme};

use crate::hardening::*;
use crate::support::*;

// ---------------------------------------------------------------------------------------------
// 1. An upstream that resets its idle keep-alive connection.
// ---------------------------------------------------------------------------------------------

/// Reads one request head (through CRLFCRLF); `None` at EOF or on an error.
fn read_raw_head(reader: &mut BufReader<TcpStream>) -> Option<String> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        match reader.read_until(b'\n', &mut head) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        if &head[before..] == b"\r\n" {
            return Some(String::from_utf8_lossy(&head).into_owned());
        }
    }
}

/// An app that resets idle keep-alive connections, as apps routinely do. Its first connection
/// answers one request keep-alive (`ok`), then, when the test calls [`ResettingApp::reset`],
/// closes with `SO_LINGER 0`: a reset, not a FIN. Every later connection answers each request
/// with `fresh`.
struct ResettingApp {
    addr: SocketAddr,
    /// Complete request heads, with the index of the connection each arrived on.
    heads: Arc<Mutex<Vec<(usize, String)>>>,
    go: mpsc::Sender<()>,
    done: mpsc::Receiver<()>,
}

const FRESH: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh";

impl ResettingApp {
    fn start() -> ResettingApp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (go, go_rx) = mpsc::channel::<()>();
        let (done_tx, done) = mpsc::channel::<()>();
        let accept_heads = heads.clone();
        std::thread::spawn(move || {
            let mut first = Some((go_rx, done_tx));
            for (index, stream) in listener.incoming().flatten().enumerate() {
                let heads = accept_heads.clone();
                let first = first.take();
                std::thread::spawn(move || {
                    let mut writer = stream.try_clone().unwrap();
                    let mut reader = BufReader::new(stream);
                    match first {
                        Some((go_rx, done_tx)) => {
                            if let Some(head) = read_raw_head(&mut reader) {
                                heads.lock().unwrap().push((index, head));
                                writer.write_all(OK).unwrap();
                            }
                            // Idle in certgate's pool until the test says: reset it now.
                            let _ = go_rx.recv();
                            socket2::SockRef::from(&writer)
                                .set_linger(Some(Duration::ZERO))
                                .unwrap();
                            // Both descriptors closed: the kernel sends RST, not FIN.
                            drop(reader);
                            drop(writer);
                            let _ = done_tx.send(());
                        }
                        None => {
                            while let Some(head) = read_raw_head(&mut reader) {
                                heads.lock().unwrap().push((index, head));
                                if writer.write_all(FRESH).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        ResettingApp {
            addr,
            heads,
            go,
            done,
        }
    }

    /// Resets the first connection (idle in certgate's pool by now) and waits until it is gone.
    fn reset(&self) {
        self.go.send(()).unwrap();
        self.done
            .recv_timeout(Duration::from_secs(5))
            .expect("the app reset its connection");
        // On loopback the RST is delivered within close(); this pause only makes sure certgate's
        // socket has taken it before the next request (it does not decide the outcome after the
        // fix: a request that met the old connection before the reset must be retried as well).
        std::thread::sleep(Duration::from_millis(50));
    }

    fn heads(&self) -> Vec<(usize, String)> {
        self.heads.lock().unwrap().clone()
    }
}

/// A certgate in front of a resetting app, with a short `upstream_response` so a 504 is quick;
/// the first request (`/one`) is answered and its upstream connection pooled, then reset.
fn reset_after_first_exchange() -> (ResettingApp, Running, Tls) {
    let app = ResettingApp::start();
    let mut setup = Setup::new("accept");
    setup.upstream = Some(app.addr);
    setup.extra = "[timeouts]\nupstream_response = \"2s\"\nshutdown_grace = \"1s\"\n".into();
    let running = start(setup);
    let mut tls = client(running.addr);
    let resp = exchange(&mut tls, &get("/one")).unwrap();
    assert_eq!((resp.status, resp.text().as_str()), (200, "ok"));
    // Well within the pool's 1 s before it probes an idle connection: the reset connection is
    // handed out again, which is the window the bug lives in.
    app.reset();
    (app, running, tls)
}

/// The retried request arrived whole on the app's second connection.
fn assert_retried_on_a_new_connection(app: &ResettingApp) {
    let heads = app.heads();
    let two: Vec<&(usize, String)> = heads
        .iter()
        .filter(|(_, h)| h.starts_with("GET /two HTTP/1.1\r\n"))
        .collect();
    assert_eq!(two.len(), 1, "{heads:?}");
    assert_eq!(two[0].0, 1, "not on the fresh connection: {heads:?}");
    assert_eq!(
        header_values(&two[0].1, "host"),
        vec!["localhost".to_string()],
        "{heads:?}"
    );
}

#[test]
fn upstream_reset_of_a_pooled_connection_is_retried_on_the_same_client_connection() {
    let (app, _running, mut tls) = reset_after_first_exchange();
    let started = Instant::now();
    let resp = exchange(&mut tls, &get("/two")).unwrap();
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (200, "fresh"),
        "after {:?}: {}",
        started.elapsed(),
        resp.head
    );
    assert_retried_on_a_new_connection(&app);
}

#[test]
fn upstream_reset_of_a_pooled_connection_is_retried_for_a_new_client_connection() {
    let (app, running, _first) = reset_after_first_exchange();
    let started = Instant::now();
    let resp = exchange(&mut client(running.addr), &get("/two")).unwrap();
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (200, "fresh"),
        "after {:?}: {}",
        started.elapsed(),
        resp.head
    );
    assert_retried_on_a_new_connection(&app);
}

// ---------------------------------------------------------------------------------------------
// 2. An early answer from the app during an upload (RFC 9112 §9.6).
// ---------------------------------------------------------------------------------------------

/// A TLS client that writes and reads at once, like curl uploading: the uploading thread and
/// the reading one share the rustls connection under a lock (held only to encrypt or decrypt)
/// and each uses the socket directly, so a blocked write never keeps the response unread.
#[derive(Clone)]
struct Duplex {
    conn: Arc<Mutex<ClientConnection>>,
    sock: Arc<TcpStream>,
}

impl Duplex {
    fn connect(addr: SocketAddr) -> Duplex {
        let mut sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        sock.set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut conn = ClientConnection::new(client_config(ClientCert::None, false), name).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).unwrap();
        }
        Duplex {
            conn: Arc::new(Mutex::new(conn)),
            sock: Arc::new(sock),
        }
    }

    fn send(&self, data: &[u8]) -> std::io::Result<()> {
        for piece in data.chunks(16 * 1024) {
            let records = {
                let mut conn = self.conn.lock().unwrap();
                conn.writer().write_all(piece)?;
                let mut records = Vec::new();
                while conn.wants_write() {
                    conn.write_tls(&mut records)?;
                }
                records
            };
            (&*self.sock).write_all(&records)?;
        }
        Ok(())
    }

    /// Sends `head` and then `body_len` body bytes on a thread of its own. A failed write (once
    /// certgate has answered and closed) just ends the upload: the point is what the client
    /// reads meanwhile.
    fn upload(&self, head: String, body_len: usize) {
        let up = self.clone();
        std::thread::spawn(move || {
            if up.send(head.as_bytes()).is_err() {
                return;
            }
            let block = vec![b'b'; 64 * 1024];
            let mut sent = 0;
            while sent < body_len {
                let n = block.len().min(body_len - sent);
                if up.send(&block[..n]).is_err() {
                    return;
                }
                sent += n;
            }
        });
    }
}

impl Read for Duplex {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.conn.lock().unwrap().reader().read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                done => return done,
            }
            let mut cipher = vec![0u8; 32 * 1024];
            let n = (&*self.sock).read(&mut cipher)?;
            let mut conn = self.conn.lock().unwrap();
            let mut rest = &cipher[..n];
            loop {
                // An empty slice tells rustls about the EOF.
                conn.read_tls(&mut rest)?;
                conn.process_new_packets().map_err(std::io::Error::other)?;
                if rest.is_empty() {
                    break;
                }
            }
        }
    }
}

/// After the early response the connection ends (its request framing is unfinished, so nothing
/// more from it can be read as a request): EOF or a reset, never more bytes or a wait.
fn assert_closed_after_the_response(reader: &mut BufReader<Duplex>) {
    assert!(
        reader.buffer().is_empty(),
        "bytes after the response: {:?}",
        String::from_utf8_lossy(reader.buffer())
    );
    reader
        .get_ref()
        .sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = Instant::now();
    let mut sink = [0u8; 4096];
    match reader.get_mut().read(&mut sink) {
        Ok(0) => {}
        Ok(n) => panic!(
            "bytes after the response: {:?}",
            String::from_utf8_lossy(&sink[..n])
        ),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the client connection is still open {:?} after the early response",
            started.elapsed()
        ),
    }
}

#[test]
fn early_413_from_an_app_that_closes_mid_upload_reaches_the_client() {
    // The app reads the head only, refuses the body and closes with the body unread: the kernel
    // resets the connection. Its answer was sent first and must reach the client.
    let fake = Fake::start(|c: &mut FakeConn| {
        if c.read_head().is_some() {
            c.send(
                b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 5\r\nconnection: close\r\n\r\nlarge",
            );
        }
    });
    let running = fake.front("[timeouts]\nupstream_response = \"5s\"\nshutdown_grace = \"1s\"\n");
    let duplex = Duplex::connect(running.addr);
    let body_len = 16 * 1024 * 1024;
    let started = Instant::now();
    duplex.upload(
        format!("POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {body_len}\r\n\r\n"),
        body_len,
    );
    let mut reader = BufReader::new(duplex.clone());
    let resp = read_response(&mut reader, false).unwrap_or_else(|e| {
        panic!(
            "no response ({e}) after {:?}; app saw {:?}",
            started.elapsed(),
            fake.log.heads()
        )
    });
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (413, "large"),
        "after {:?}: {}",
        started.elapsed(),
        resp.head
    );
    assert_closed_after_the_response(&mut reader);
    assert_eq!(fake.log.heads().len(), 1);
}

#[test]
fn early_403_from_an_app_that_stops_reading_reaches_the_client_promptly() {
    // The app answers after the head and keeps its connection open without reading the body.
    // Its answer must reach the client now, not a 504 once `upstream_response` ran out.
    let fake = Fake::start(|c: &mut FakeConn| {
        if c.read_head().is_some() {
            c.send(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 6\r\n\r\ndenied");
            std::thread::sleep(Duration::from_secs(8));
        }
    });
    let running = fake.front("[timeouts]\nupstream_response = \"5s\"\nshutdown_grace = \"1s\"\n");
    let duplex = Duplex::connect(running.addr);
    // More than every socket buffer between the client and the app can hold.
    let body_len = 64 * 1024 * 1024;
    let started = Instant::now();
    duplex.upload(
        format!("PUT /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {body_len}\r\n\r\n"),
        body_len,
    );
    let mut reader = BufReader::new(duplex.clone());
    let resp = read_response(&mut reader, false).unwrap_or_else(|e| {
        panic!(
            "no response ({e}) after {:?}; app saw {:?}",
            started.elapsed(),
            fake.log.heads()
        )
    });
    let waited = started.elapsed();
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (403, "denied"),
        "after {waited:?}: {}",
        resp.head
    );
    assert!(
        waited < Duration::from_secs(3),
        "the early 403 took {waited:?}"
    );
    assert_closed_after_the_response(&mut reader);
}

// ---------------------------------------------------------------------------------------------
// 3. `Forwarded` and `X-Real-IP` from the client.
// ---------------------------------------------------------------------------------------------

/// What the echo app received for `raw`, sent by a client without a certificate.
fn upstream_head_for(addr: SocketAddr, raw: &[u8]) -> String {
    let resp = request(addr, ClientCert::None, raw).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.head);
    resp.upstream_head()
}

#[test]
fn client_forwarded_values_are_merged_and_the_peer_element_appended() {
    let running = start(Setup::new("ignore"));
    let raw = b"GET /fwd HTTP/1.1\r\nHost: localhost\r\n\
        Forwarded: for=192.0.2.60;proto=http;by=203.0.113.43\r\n\
        X-Other: 1\r\n\
        forwarded: for=\"[2001:db8:cafe::17]:4711\", for=198.51.100.17\r\n\r\n";
    let head = upstream_head_for(running.addr, raw);
    assert_eq!(
        header_values(&head, "forwarded"),
        vec![
            "for=192.0.2.60;proto=http;by=203.0.113.43, for=\"[2001:db8:cafe::17]:4711\", \
             for=198.51.100.17, for=127.0.0.1;proto=https"
                .to_string()
        ],
        "upstream head:\n{head}"
    );
}

#[test]
fn forwarded_is_added_when_the_client_sent_none() {
    let running = start(Setup::new("ignore"));
    let head = upstream_head_for(running.addr, &get("/fwd"));
    assert_eq!(
        header_values(&head, "forwarded"),
        vec!["for=127.0.0.1;proto=https".to_string()],
        "upstream head:\n{head}"
    );
}

/// `start`, with the listener bound to `bind` instead of 127.0.0.1.
fn start_bound_to(setup: Setup, bind: &str) -> Running {
    let dir = temp_dir("bind");
    write_pki(&dir);
    let echo = certgate::demo::echo::EchoApp::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let text = config_text(&setup, echo.addr)
        .replace("bind = \"127.0.0.1:0\"", &format!("bind = \"{bind}\""));
    let config = certgate::config::Config::from_toml(&text, &dir).expect("test config");
    let server = certgate::app::start(certgate::app::prepare(config).unwrap()).unwrap();
    Running {
        addr: server.local_addrs()[0],
        echo: Some(echo),
        server: Some(server),
        dir,
    }
}

#[test]
fn forwarded_for_an_ipv6_peer_is_quoted_with_brackets() {
    if TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback on this machine");
        return;
    }
    let running = start_bound_to(Setup::new("ignore"), "[::1]:0");
    assert!(running.addr.is_ipv6());
    let head = upstream_head_for(running.addr, &get("/fwd6"));
    // RFC 7239 §6: an IPv6 address is bracketed, and then the value must be a quoted-string.
    assert_eq!(
        header_values(&head, "forwarded"),
        vec!["for=\"[::1]\";proto=https".to_string()],
        "upstream head:\n{head}"
    );
}

#[test]
fn client_x_real_ip_never_reaches_the_app() {
    let running = start(Setup::new("ignore"));
    let raw = b"GET /real HTTP/1.1\r\nHost: localhost\r\n\
        X-Real-IP: 6.6.6.1\r\nx-real-ip: 6.6.6.2\r\nX-REAL-IP: 6.6.6.3\r\n\
        X_Real_IP: 6.6.6.4\r\nx_real_ip: 6.6.6.5\r\n\r\n";
    let head = upstream_head_for(running.addr, raw);
    let lower = head.to_ascii_lowercase();
    assert!(
        !lower.contains("x-real-ip") && !lower.contains("x_real_ip") && !head.contains("6.6.6."),
        "a client X-Real-IP reached the app:\n{head}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. A refused TLS 1.2 handshake and a client that writes record by record.
// ---------------------------------------------------------------------------------------------

/// Splits a byte stream into whole TLS records (5-byte header, length in bytes 3..5).
fn tls_records(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut records = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 5, "partial record header: {bytes:?}");
        let len = u16::from_be_bytes([bytes[3], bytes[4]]) as usize;
        let (record, rest) = bytes.split_at(5 + len);
        records.push(record);
        bytes = rest;
    }
    records
}

/// Names the records of a TLS 1.2 client flight (for messages; the first must be Certificate).
fn describe(records: &[&[u8]]) -> Vec<String> {
    let mut encrypted = false;
    records
        .iter()
        .map(|r| {
            let name = match (r[0], r.get(5)) {
                (20, _) => "ChangeCipherSpec".to_string(),
                (22, _) if encrypted => "Finished (encrypted)".to_string(),
                (22, Some(11)) => "Certificate".to_string(),
                (22, Some(16)) => "ClientKeyExchange".to_string(),
                (22, Some(15)) => "CertificateVerify".to_string(),
                (t, _) => format!("content type {t}"),
            };
            encrypted |= r[0] == 20;
            name
        })
        .collect()
}

/// Drives a TLS 1.2 handshake by hand against a `require` listener with `client_ca`, writing
/// the client's second flight one record at a time with pauses, as Java's TLS 1.2 client does.
/// Like Java, any write error fails the test: the client must be able to finish its flight and
/// then read certgate's alert. Returns the alert's description byte.
fn refused_tls12_alert(cert: ClientCert) -> u8 {
    let running = start(Setup::new("require").with_ca());
    let mut tcp = TcpStream::connect(running.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = ClientConnection::new(client_config(cert, true), name).unwrap();

    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    tcp.write_all(&hello).unwrap();
    // ServerHello .. ServerHelloDone; then the client's second flight is ready.
    while !conn.wants_write() {
        let n = conn.read_tls(&mut tcp).expect("server's first flight");
        assert!(n > 0, "certgate closed before ServerHelloDone");
        conn.process_new_packets().expect("server's first flight");
    }
    let mut flight = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut flight).unwrap();
    }
    let records = tls_records(&flight);
    let names = describe(&records);
    eprintln!("{cert:?}: second flight {names:?}");
    assert!(records.len() >= 4, "{names:?}");
    assert_eq!(names[0], "Certificate");

    for (i, record) in records.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Err(e) = tcp.write_all(record) {
            panic!(
                "{cert:?}: writing record {} of {} ({}) failed: {e}; a Java client reports \
                 this instead of certgate's alert",
                i + 1,
                records.len(),
                names[i]
            );
        }
    }

    // The alert went out when certgate refused the Certificate; it must still be readable.
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while got.len() < 7 {
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("{cert:?}: reading the alert failed after {got:?}: {e}"),
        }
    }
    assert!(
        got.len() >= 7,
        "{cert:?}: no alert, only {got:?} before EOF"
    );
    assert_eq!(
        got[0], 21,
        "{cert:?}: expected an alert record, got {got:?}"
    );
    assert_eq!(got[5], 2, "{cert:?}: not a fatal alert: {got:?}");
    eprintln!("{cert:?}: alert description {}", got[6]);
    got[6]
}

#[test]
fn tls12_client_writing_record_by_record_reads_the_certificate_expired_alert() {
    // certificate_expired(45), what rustls sends for CertificateError::Expired.
    assert_eq!(refused_tls12_alert(ClientCert::Expired), 45);
}

#[test]
fn tls12_client_writing_record_by_record_reads_the_certificate_required_alert() {
    // certificate_required(116): rustls' answer to an empty Certificate when it is mandatory.
    assert_eq!(refused_tls12_alert(ClientCert::None), 116);
}

// ---------------------------------------------------------------------------------------------
// 5. Entries after the leaf that are not certificates.
// ---------------------------------------------------------------------------------------------

/// Presents one fixed chain, whatever the server asks for.
#[derive(Debug)]
struct FixedChain(Arc<CertifiedKey>);

impl ResolvesClientCert for FixedChain {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client that sends the root-issued leaf (valid with or without `client_ca`) followed by
/// `extra` as a second Certificate entry.
fn config_with_extra_entry(extra: &[u8], tls12: bool) -> Arc<ClientConfig> {
    let leaf = &pki().client_by_root;
    let key = provider()
        .key_provider
        .load_private_key(leaf.key_der.clone_key())
        .unwrap();
    let chain = vec![leaf.cert_der.clone(), CertificateDer::from(extra.to_vec())];
    let resolver = FixedChain(Arc::new(CertifiedKey::new(chain, key)));
    let version = if tls12 {
        &rustls::version::TLS12
    } else {
        &rustls::version::TLS13
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots())
        .with_client_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// In every mode that asks for a certificate, a chain with `extra` after the leaf fails the
/// handshake with an alert, and nothing reaches the app.
fn extra_entry_is_refused_in_every_mode(extra: &[u8]) {
    let mut leaks = Vec::new();
    for (mode, ca) in [
        ("accept", false),
        ("accept", true),
        ("require", false),
        ("require", true),
    ] {
        for tls12 in [false, true] {
            let case = format!(
                "{mode}{} over TLS 1.{}",
                if ca { " with client_ca" } else { "" },
                if tls12 { 2 } else { 3 }
            );
            let mut setup = Setup::new(mode);
            setup.client_ca = ca;
            let running = start(setup);
            let mut tls = connect(running.addr, config_with_extra_entry(extra, tls12));
            tls.sock
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            match exchange(&mut tls, &get("/extra")) {
                Ok(resp) => {
                    let xfcc = header_values(&resp.upstream_head(), "x-forwarded-client-cert");
                    let chain = xfcc
                        .first()
                        .and_then(|v| v.split_once("Chain=\""))
                        .map(|(_, c)| c.to_owned())
                        .unwrap_or_default();
                    let tail = &chain[chain.len().saturating_sub(160)..];
                    leaks.push(format!(
                        "{case}: served ({}), XFCC Chain ends ...{tail}",
                        resp.status
                    ));
                }
                Err(e) if !e.contains("alert") => {
                    leaks.push(format!("{case}: failed without an alert: {e}"))
                }
                Err(e) => eprintln!("{case}: refused: {e}"),
            }
            let heads = running.echo().heads();
            if !heads.is_empty() {
                leaks.push(format!(
                    "{case}: {} request(s) reached the app",
                    heads.len()
                ));
            }
        }
    }
    assert!(leaks.is_empty(), "\n{}", leaks.join("\n"));
}

#[test]
fn empty_certificate_entry_after_the_leaf_fails_the_handshake_in_every_mode() {
    extra_entry_is_refused_in_every_mode(b"");
}

#[test]
fn junk_certificate_entry_after_the_leaf_fails_the_handshake_in_every_mode() {
    extra_entry_is_refused_in_every_mode(b"junk junk");
}
