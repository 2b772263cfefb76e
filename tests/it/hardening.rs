//! Hardening end to end: framing and smuggling rules, request trailers, timeouts, graceful
//! shutdown (in-process and SIGTERM on the binary) and the per-worker connection limit.
//!
//! Also home of [`Fake`], a scripted upstream the fault tests (`faults.rs`) share: a blocking
//! listener whose per-connection script decides what the "app" does, and a log of everything
//! it received.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use certgate::http::chunked::ChunkedDecoder;

// ---------------------------------------------------------------------------------------------
// The scripted fake upstream.
// ---------------------------------------------------------------------------------------------

/// Everything the fake upstream saw, over all its connections.
#[derive(Default)]
pub struct Log {
    pub connections: AtomicUsize,
    /// Request heads, with the index of the connection each arrived on.
    pub heads: Mutex<Vec<(usize, String)>>,
    /// Complete request bodies (only bodies whose framing ended are recorded).
    pub bodies: Mutex<Vec<Vec<u8>>>,
    /// Every byte received, all connections concatenated.
    pub raw: Mutex<Vec<u8>>,
    /// Connections on which the fake saw EOF (or a reset) from certgate.
    pub eofs: AtomicUsize,
}

impl Log {
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
    pub fn heads(&self) -> Vec<(usize, String)> {
        self.heads.lock().unwrap().clone()
    }
    pub fn bodies(&self) -> Vec<Vec<u8>> {
        self.bodies.lock().unwrap().clone()
    }
    pub fn raw(&self) -> String {
        String::from_utf8_lossy(&self.raw.lock().unwrap()).into_owned()
    }
    pub fn eofs(&self) -> usize {
        self.eofs.load(Ordering::SeqCst)
    }
}

/// A reader that copies what it reads into the log.
struct Recording {
    stream: TcpStream,
    log: Arc<Log>,
}

impl Read for Recording {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.stream.read(buf)?;
        self.log.raw.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// One upstream connection as the script sees it.
pub struct FakeConn {
    /// 0 for the first connection certgate opened, 1 for the second, ...
    pub index: usize,
    reader: BufReader<Recording>,
    writer: TcpStream,
    log: Arc<Log>,
}

impl FakeConn {
    /// Reads one request head (through CRLFCRLF). `None` at EOF or on an error.
    pub fn read_head(&mut self) -> Option<String> {
        let mut head = Vec::new();
        loop {
            let before = head.len();
            match self.reader.read_until(b'\n', &mut head) {
                Ok(0) | Err(_) => {
                    self.log.eofs.fetch_add(1, Ordering::SeqCst);
                    return None;
                }
                Ok(_) => {}
            }
            if &head[before..] == b"\r\n" {
                break;
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        self.log
            .heads
            .lock()
            .unwrap()
            .push((self.index, head.clone()));
        Some(head)
    }

    /// Reads the body `head` announces (Content-Length or chunked). `None` when the
    /// connection ended (or the framing broke) before the body did.
    pub fn read_body(&mut self, head: &str) -> Option<Vec<u8>> {
        let mut body = Vec::new();
        if !header_values(head, "transfer-encoding").is_empty() {
            let mut decoder = ChunkedDecoder::new(64 * 1024);
            loop {
                let input = match self.reader.fill_buf() {
                    Ok(i) if !i.is_empty() => i,
                    _ => {
                        self.log.eofs.fetch_add(1, Ordering::SeqCst);
                        return None;
                    }
                };
                let step = decoder.decode(input).ok()?;
                if let Some(d) = step.data.clone() {
                    body.extend_from_slice(&input[d]);
                }
                let consumed = step.consumed;
                self.reader.consume(consumed);
                if step.done {
                    break;
                }
            }
        } else if let Some(n) = header_values(head, "content-length").first() {
            body.resize(n.parse().unwrap(), 0);
            if self.reader.read_exact(&mut body).is_err() {
                self.log.eofs.fetch_add(1, Ordering::SeqCst);
                return None;
            }
        }
        self.log.bodies.lock().unwrap().push(body.clone());
        Some(body)
    }

    /// A whole request: head and body.
    pub fn request(&mut self) -> Option<(String, Vec<u8>)> {
        let head = self.read_head()?;
        let body = self.read_body(&head)?;
        Some((head, body))
    }

    pub fn send(&mut self, bytes: &[u8]) {
        let _ = self.writer.write_all(bytes);
    }

    /// Like `send`, but reports a failed write (certgate closed the connection) as an EOF.
    pub fn try_send(&mut self, bytes: &[u8]) -> bool {
        let sent = self.writer.write_all(bytes).is_ok();
        if !sent {
            self.log.eofs.fetch_add(1, Ordering::SeqCst);
        }
        sent
    }

    /// Waits (at most 10 s) for certgate to close this connection; true on EOF or reset.
    pub fn wait_eof(&mut self) -> bool {
        let _ = self
            .reader
            .get_ref()
            .stream
            .set_read_timeout(Some(Duration::from_secs(10)));
        let mut sink = [0u8; 4096];
        loop {
            match self.reader.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(_) => return false,
            }
        }
        self.log.eofs.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// Answers every request on this connection with a small 200 until EOF.
    pub fn serve_ok(&mut self) {
        while self.request().is_some() {
            self.send(OK);
        }
    }
}

pub const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// A scripted upstream on 127.0.0.1: `script` runs on its own thread for each connection.
pub struct Fake {
    pub addr: SocketAddr,
    pub log: Arc<Log>,
}

impl Fake {
    pub fn start(script: impl Fn(&mut FakeConn) + Send + Sync + 'static) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Log::default());
        let script = Arc::new(script);
        let accept_log = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let index = accept_log.connections.fetch_add(1, Ordering::SeqCst);
                let log = accept_log.clone();
                let script = script.clone();
                std::thread::spawn(move || {
                    let writer = stream.try_clone().unwrap();
                    let mut conn = FakeConn {
                        index,
                        reader: BufReader::new(Recording {
                            stream,
                            log: log.clone(),
                        }),
                        writer,
                        log,
                    };
                    script(&mut conn);
                });
            }
        });
        Fake { addr, log }
    }

    /// A certgate in front of this fake, with `extra` config text.
    pub fn front(&self, extra: &str) -> Running {
        let mut setup = Setup::new("accept");
        setup.upstream = Some(self.addr);
        setup.extra = extra.to_owned();
        start(setup)
    }
}

/// A TLS client connection with a short read timeout (tests must fail fast, not hang).
pub fn client(addr: SocketAddr) -> Tls {
    let tls = connect(addr, client_config(ClientCert::None, false));
    tls.sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    tls
}

/// Reads what is left on the connection: `Ok(n)` when it ended with close_notify after `n`
/// more bytes, `Err` when it ended without one (truncation), reset, or timed out.
pub fn read_rest(tls: &mut Tls) -> std::io::Result<Vec<u8>> {
    let mut rest = Vec::new();
    tls.read_to_end(&mut rest)?;
    Ok(rest)
}

/// Whether the server sent anything (or closed) on this socket yet, without consuming it.
pub fn server_spoke(sock: &TcpStream) -> bool {
    sock.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let peeked = sock.peek(&mut byte);
    sock.set_nonblocking(false).unwrap();
    !matches!(peeked, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Polls `cond` for up to 5 s.
pub fn eventually(what: &str, cond: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------
// Framing and smuggling.
// ---------------------------------------------------------------------------------------------

/// Raw request → status certgate must answer with, before any byte reaches the app.
const REJECTED: &[(&str, &[u8], u16)] = &[
    (
        "CL + TE",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "TE + CL",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "two different CLs",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    ),
    (
        "CL list with different values",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!",
        400,
    ),
    ("CL +5", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", 400),
    ("CL -1", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
    ("CL 0x5", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello", 400),
    ("CL empty", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", 400),
    (
        "CL overflow",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n",
        400,
    ),
    (
        "TE gzip, chunked",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    (
        "TE chunked, gzip",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "TE identity",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\nhello",
        400,
    ),
    (
        "TE chunked twice",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "TE with a parameter",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "TE in HTTP/1.0",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("bare CR in a value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", 400),
    ("bare LF line endings", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("one bare LF", b"GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400),
    ("space before colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    ("control char in a value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n", 400),
    ("NUL in a value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n", 400),
    ("empty name", b"GET / HTTP/1.1\r\nHost: a\r\n: x\r\n\r\n", 400),
    ("HTTP/1.1 without Host", b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
    ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("request line with two spaces", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("request line without version", b"GET /\r\nHost: a\r\n\r\n", 400),
    ("HTTP/2.0", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400),
    ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 400),
    ("Expect: foo", b"GET / HTTP/1.1\r\nHost: a\r\nExpect: foo\r\n\r\n", 417),
    ("CONNECT", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 501),
];

#[test]
fn smuggling_and_framing_violations_are_rejected_before_the_app_sees_a_byte() {
    let fake = Fake::start(FakeConn::serve_ok);
    let running = fake.front("");
    for (name, raw, status) in REJECTED {
        let mut tls = client(running.addr);
        let resp = exchange(&mut tls, raw).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(resp.status, *status, "{name}: {}", resp.head);
        assert_eq!(
            header_values(&resp.head, "connection"),
            vec!["close".to_string()],
            "{name}"
        );
        // The rejection ends the connection cleanly (close_notify), with nothing after it.
        let rest = read_rest(&mut tls).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(rest.is_empty(), "{name}: {rest:?}");
    }
    assert_eq!(fake.log.connections(), 0, "{:?}", fake.log.heads());
    assert_eq!(fake.log.raw(), "");
}

#[test]
fn after_a_rejected_request_the_pipelined_one_behind_it_is_not_forwarded() {
    let fake = Fake::start(FakeConn::serve_ok);
    let running = fake.front("");
    let mut tls = client(running.addr);
    let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec();
    raw.extend_from_slice(&get("/second"));
    let resp = exchange(&mut tls, &raw).unwrap();
    assert_eq!(resp.status, 400);
    assert!(read_rest(&mut tls).unwrap().is_empty());
    assert_eq!(fake.log.connections(), 0);
}

/// A chunked body broken after the head went out: the client gets 400, the app never sees a
/// complete request and its connection is closed (not pooled), the pipelined request behind it
/// is not forwarded, and the next client gets a fresh upstream connection.
fn broken_chunked_body(body: &[u8]) {
    broken_chunked_body_after(b"", body);
}

/// Sends a chunked POST whose body goes wrong at `bad`, after `good` (sent first, in its own
/// write, with a pause so certgate has forwarded the head by then when `good` is not empty).
fn broken_chunked_body_after(good: &[u8], bad: &[u8]) {
    let fake = Fake::start(FakeConn::serve_ok);
    let running = fake.front("");
    let mut tls = client(running.addr);
    let mut raw = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    raw.extend_from_slice(good);
    if !good.is_empty() {
        tls.write_all(&raw).unwrap();
        tls.flush().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        raw.clear();
    }
    raw.extend_from_slice(bad);
    raw.extend_from_slice(&get("/smuggled"));
    let resp = exchange(&mut tls, &raw).unwrap();
    assert_eq!(resp.status, 400, "{}", resp.head);
    assert!(read_rest(&mut tls).unwrap().is_empty());

    // Either the app never saw the request (the bad bytes came with the head), or the
    // connection that carried its start is closed; no request after it reaches the app.
    eventually("every app connection is closed", || {
        fake.log.eofs() == fake.log.connections()
    });
    let seen = fake.log.connections();
    assert_eq!(seen, usize::from(!good.is_empty()), "app connections");
    assert!(fake.log.bodies().is_empty(), "{:?}", fake.log.bodies());
    let paths: Vec<String> = fake.log.heads().into_iter().map(|(_, h)| h).collect();
    assert!(paths.iter().all(|h| !h.contains("/smuggled")), "{paths:?}");

    let resp = exchange(&mut client(running.addr), &get("/next")).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(
        fake.log.connections(),
        seen + 1,
        "the broken connection was reused"
    );
}

#[test]
fn bad_chunk_after_the_head_went_out_drops_the_app_connection() {
    broken_chunked_body_after(b"5\r\nhello\r\n", b"zz\r\n0\r\n\r\n");
}

#[test]
fn bad_chunk_size_gets_400_and_the_app_connection_is_dropped() {
    broken_chunked_body(b"zz\r\nhello\r\n0\r\n\r\n");
}

#[test]
fn missing_crlf_after_chunk_data_gets_400_and_the_app_connection_is_dropped() {
    broken_chunked_body(b"5\r\nhelloXX0\r\n\r\n");
}

#[test]
fn chunk_size_line_with_bare_lf_gets_400() {
    broken_chunked_body(b"5\nhello\r\n0\r\n\r\n");
}

#[test]
fn trailers_of_a_chunked_request_never_reach_the_app() {
    let fake = Fake::start(FakeConn::serve_ok);
    let running = fake.front("");
    let mut tls = client(running.addr);
    let mut raw =
        b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: X-Evil\r\n\r\n\
                    5\r\nhello\r\n0\r\nX-Evil: 1\r\nContent-Length: 99\r\nHost: evil\r\n\r\n"
            .to_vec();
    raw.extend_from_slice(&get("/after"));
    tls.write_all(&raw).unwrap();
    let mut reader = BufReader::new(&mut tls);
    assert_eq!(read_response(&mut reader, false).unwrap().status, 200);
    assert_eq!(read_response(&mut reader, false).unwrap().status, 200);

    let raw = fake.log.raw();
    for needle in ["X-Evil", "evil", "Content-Length: 99", "Trailer"] {
        assert!(!raw.contains(needle), "{needle} reached the app: {raw}");
    }
    assert_eq!(fake.log.bodies()[0], b"hello");
    let heads = fake.log.heads();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(
        heads[1].1.starts_with("GET /after HTTP/1.1\r\n"),
        "{heads:?}"
    );
    // The re-encoded body ends with an empty trailer section, right before the next head.
    assert!(raw.contains("0\r\n\r\nGET /after "), "{raw}");
}

// ---------------------------------------------------------------------------------------------
// Timeouts.
// ---------------------------------------------------------------------------------------------

#[test]
fn slowloris_head_gets_408_at_the_absolute_deadline() {
    let fake = Fake::start(FakeConn::serve_ok);
    let running = fake.front("[timeouts]\nrequest_header = \"300ms\"\nkeep_alive = \"5s\"\n");
    let mut tls = client(running.addr);
    // A first request takes the handshake's session tickets off the wire (and shows the
    // deadline is per request head, not per connection).
    assert_eq!(exchange(&mut tls, &get("/first")).unwrap().status, 200);
    // A byte every 40 ms: never idle long enough for a per-read timeout, and the head never
    // completes. Drip until certgate answers (or well past the deadline).
    let drip =
        b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let started = Instant::now();
    for b in drip.iter() {
        if server_spoke(&tls.sock) || started.elapsed() > Duration::from_secs(2) {
            break;
        }
        tls.write_all(&[*b]).unwrap();
        tls.flush().unwrap();
        std::thread::sleep(Duration::from_millis(40));
    }
    let answered = started.elapsed();
    assert!(
        answered >= Duration::from_millis(250) && answered < Duration::from_millis(900),
        "certgate answered after {answered:?}"
    );
    let mut reader = BufReader::new(&mut tls);
    let resp = read_response(&mut reader, false).unwrap();
    assert_eq!(resp.status, 408);
    drop(reader);
    assert!(read_rest(&mut tls).unwrap().is_empty());
    assert_eq!(fake.log.heads().len(), 1);
}

#[test]
fn idle_keep_alive_connection_is_closed_after_keep_alive() {
    let fake = Fake::start(FakeConn::serve_ok);
    let running = fake.front("[timeouts]\nkeep_alive = \"300ms\"\n");
    let mut tls = client(running.addr);
    assert_eq!(exchange(&mut tls, &get("/")).unwrap().status, 200);
    let idle = Instant::now();
    let rest = read_rest(&mut tls).expect("a clean close_notify");
    assert!(rest.is_empty());
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[test]
fn silent_tcp_client_is_dropped_after_the_handshake_timeout() {
    let fake = Fake::start(FakeConn::serve_ok);
    let running = fake.front("[timeouts]\nhandshake = \"300ms\"\n");
    let mut tcp = TcpStream::connect(running.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = tcp.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "{:?}", &buf[..n]);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[test]
fn upstream_that_never_answers_gives_504_within_upstream_response() {
    let fake = Fake::start(|c: &mut FakeConn| {
        if c.read_head().is_some() {
            // Hold the request unanswered until certgate gives up on it.
            c.wait_eof();
        }
    });
    let running = fake.front("[timeouts]\nupstream_response = \"300ms\"\n");
    let mut tls = client(running.addr);
    let started = Instant::now();
    let resp = exchange(&mut tls, &get("/slow")).unwrap();
    assert_eq!(resp.status, 504);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert!(read_rest(&mut tls).unwrap().is_empty());
    eventually("the stuck upstream connection is closed", || {
        fake.log.eofs() == 1
    });
}

#[test]
fn client_that_stops_reading_is_dropped_after_keep_alive() {
    // Slow read: the client asks for a large response and never reads it. certgate must not
    // hold the connection (and its upstream connection) forever on a blocked write.
    let fake = Fake::start(|c: &mut FakeConn| {
        if c.request().is_some() {
            c.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n");
            let chunk = vec![b'x'; 64 * 1024];
            while c.try_send(&chunk) {}
        }
    });
    let running = fake.front("[timeouts]\nkeep_alive = \"300ms\"\n");
    let mut tls = client(running.addr);
    tls.write_all(&get("/huge")).unwrap();
    tls.flush().unwrap();
    eventually("the upstream connection is closed", || fake.log.eofs() == 1);
    // The client connection is gone too: reading now ends (with an error, as the response
    // was cut short) instead of waiting.
    let mut sink = vec![0u8; 1 << 20];
    let ended = loop {
        match tls.read(&mut sink) {
            Ok(0) => break true,
            Ok(_) => {}
            Err(e) => break e.kind() != std::io::ErrorKind::WouldBlock,
        }
    };
    assert!(ended);
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown.
// ---------------------------------------------------------------------------------------------

/// Answers every request after `delay`, until EOF.
fn slow_ok(delay: Duration) -> impl Fn(&mut FakeConn) + Send + Sync + 'static {
    move |c: &mut FakeConn| {
        while c.request().is_some() {
            std::thread::sleep(delay);
            c.send(OK);
        }
    }
}

#[test]
fn shutdown_finishes_in_flight_requests_refuses_new_ones_and_closes_idle_ones() {
    let fake = Fake::start(slow_ok(Duration::from_millis(500)));
    let mut running = fake.front("");
    let addr = running.addr;

    let mut idle = client(addr);
    assert_eq!(exchange(&mut idle, &get("/warm")).unwrap().status, 200);

    let mut busy = client(addr);
    busy.write_all(&get("/in-flight")).unwrap();
    busy.flush().unwrap();
    eventually("the in-flight request reached the app", || {
        fake.log.heads().len() == 2
    });

    let server = running.server.take().unwrap();
    let stopper = std::thread::spawn(move || server.shutdown());

    // New connections are refused while the in-flight request is still running.
    eventually("new connections are refused", || {
        TcpStream::connect(addr).is_err()
    });
    // The idle keep-alive connection is closed right away (cleanly).
    let closed = Instant::now();
    assert!(read_rest(&mut idle).unwrap().is_empty());
    assert!(closed.elapsed() < Duration::from_millis(400));

    // The in-flight response still arrives complete, and then the connection closes.
    let mut reader = BufReader::new(&mut busy);
    let resp = read_response(&mut reader, false).unwrap();
    assert_eq!((resp.status, resp.text().as_str()), (200, "ok"));
    assert_eq!(header_values(&resp.head, "connection"), vec!["close"]);
    drop(reader);
    assert!(read_rest(&mut busy).unwrap().is_empty());
    stopper.join().unwrap();
}

#[test]
fn sigterm_drains_the_in_flight_request_and_exits_zero() {
    let fake = Fake::start(slow_ok(Duration::from_millis(500)));
    let mut bin = Binary::spawn(&Setup::new("accept"), fake.addr, |_| {});
    let addr = bin.addr;

    let mut busy = client(addr);
    busy.write_all(&get("/in-flight")).unwrap();
    busy.flush().unwrap();
    eventually("the request reached the app", || {
        fake.log.heads().len() == 1
    });
    // SIGTERM while the request is in flight: it completes, then certgate exits 0.
    let stopper = std::thread::spawn(move || bin.terminate());

    let mut reader = BufReader::new(&mut busy);
    let resp = read_response(&mut reader, false).unwrap();
    assert_eq!(resp.status, 200);
    let status = stopper.join().unwrap();
    assert!(status.success(), "{status:?}");
}

// ---------------------------------------------------------------------------------------------
// Connection limit.
// ---------------------------------------------------------------------------------------------

#[test]
fn third_connection_waits_for_a_free_slot() {
    let fake = Fake::start(FakeConn::serve_ok);
    let running = fake.front("[limits]\nmax_connections_per_worker = 2\n");
    let mut a = client(running.addr);
    let mut b = client(running.addr);
    assert_eq!(exchange(&mut a, &get("/a")).unwrap().status, 200);
    assert_eq!(exchange(&mut b, &get("/b")).unwrap().status, 200);

    // The third connects (backlog) but its handshake gets no answer while both slots are held.
    let mut c = client(running.addr);
    c.sock
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let stalled = c.conn.complete_io(&mut c.sock);
    assert!(stalled.is_err(), "handshake finished beyond the limit");
    assert!(c.conn.is_handshaking());

    drop(a);
    c.sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let resp = exchange(&mut c, &get("/c")).unwrap();
    assert_eq!(resp.status, 200);
    // The held slot still works.
    assert_eq!(exchange(&mut b, &get("/b2")).unwrap().status, 200);
}
