//! The admin listener: plain HTTP/1.1 for probes and scrapes, on its own threads with blocking
//! `std::net` I/O, away from the workers' event loops (it is not the data path).
//!
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 while [`Readiness`] says serving; 503 while starting and draining, so
//!   a load balancer stops sending before the listeners close.
//! - `GET /metrics`: the Prometheus text exposition ([`Metrics::encode`]).
//! - any other path: 404; another method on a known path: 405. It never proxies.
//!
//! Kept small and hard to wedge: one request per connection (`Connection: close`), a request
//! head of at most [`MAX_HEAD`] bytes that must arrive within [`HEAD_DEADLINE`], write
//! timeouts, and at most [`MAX_CONNECTIONS`] connections served at once (each on a short-lived
//! thread, so a stalled client cannot block a health probe behind it).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::debug;

use super::metrics::{Metrics, CONTENT_TYPE as METRICS_CONTENT_TYPE};

/// Largest request head accepted (request line and headers); larger is answered 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// The whole request head must arrive within this, however slowly it trickles in.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 32;
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the process is in its life, as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyState {
    /// Listeners not all bound and serving yet.
    Starting,
    Serving,
    /// SIGTERM received: finishing in-flight requests; take no new traffic.
    Draining,
}

/// The shared readiness flag: set by startup and shutdown, read by `/readyz`.
#[derive(Debug)]
pub struct Readiness(AtomicU8);

impl Default for Readiness {
    fn default() -> Self {
        Readiness(AtomicU8::new(ReadyState::Starting as u8))
    }
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every listener is bound and its workers run.
    pub fn set_serving(&self) {
        // Draining is final: a late `set_serving` must not make a draining process ready.
        let _ = self.0.compare_exchange(
            ReadyState::Starting as u8,
            ReadyState::Serving as u8,
            Ordering::Release,
            Ordering::Relaxed,
        );
    }

    pub fn set_draining(&self) {
        self.0.store(ReadyState::Draining as u8, Ordering::Release);
    }

    pub fn state(&self) -> ReadyState {
        match self.0.load(Ordering::Acquire) {
            s if s == ReadyState::Serving as u8 => ReadyState::Serving,
            s if s == ReadyState::Draining as u8 => ReadyState::Draining,
            _ => ReadyState::Starting,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.state() == ReadyState::Serving
    }
}

/// What the admin endpoints read.
#[derive(Default)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
}

/// How often the accept thread looks at the stop flag while no connection arrives.
const STOP_POLL: Duration = Duration::from_millis(100);

/// A running admin listener.
pub struct AdminServer {
    addr: SocketAddr,
    /// A second handle on the listening socket, to hand it over (`certgate --upgrade`).
    socket: TcpListener,
    stopping: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl AdminServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// This process's own descriptor for the listening socket (for a handover).
    pub fn socket(&self) -> io::Result<TcpListener> {
        self.socket.try_clone()
    }

    /// Stops accepting and waits for the accept thread (at most [`STOP_POLL`]). Connections
    /// being answered finish on their own (their timeouts bound them). The socket itself is
    /// never shut down: after a handover the new process accepts on it.
    pub fn stop(self) {
        self.stopping.store(true, Ordering::Release);
        let _ = self.thread.join();
    }
}

/// Binds the admin address (do it at startup, before workers start, so a bad or taken
/// address fails startup like a listener's would).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Serves the admin endpoints on `listener` from a new thread until [`AdminServer::stop`].
pub fn spawn(listener: TcpListener, state: Arc<AdminState>) -> io::Result<AdminServer> {
    // Non-blocking: the accept thread waits in poll() with a timeout and sees the stop flag.
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let socket = listener.try_clone()?;
    let stopping = Arc::new(AtomicBool::new(false));
    let flag = stopping.clone();
    let thread = std::thread::Builder::new()
        .name("certgate-admin".into())
        .spawn(move || accept_loop(listener, state, flag))?;
    Ok(AdminServer {
        addr,
        socket,
        stopping,
        thread,
    })
}

/// Decrements the count of connections being served when a connection thread ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn accept_loop(listener: TcpListener, state: Arc<AdminState>, stopping: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        if stopping.load(Ordering::Acquire) {
            return;
        }
        if !readable(&listener, STOP_POLL) {
            continue;
        }
        let stream = match listener.accept() {
            // A blocking connection: the per-connection timeouts rely on it.
            Ok((stream, _)) => match stream.set_nonblocking(false) {
                Ok(()) => stream,
                Err(_) => continue,
            },
            // Another process (or worker) took it first.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; the next accept may work.
                debug!("admin listener: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            continue; // Dropping the stream closes it.
        }
        let slot = Slot(active.clone());
        let state = state.clone();
        let spawned = std::thread::Builder::new()
            .name("certgate-admin-conn".into())
            .spawn(move || {
                let _slot = slot;
                if let Err(e) = serve(stream, &state) {
                    debug!("admin connection: {e}");
                }
            });
        if let Err(e) = spawned {
            debug!("admin listener: cannot start a connection thread: {e}");
        }
    }
}

/// Waits up to `timeout` for a connection to accept; false on timeout or interruption.
fn readable(listener: &TcpListener, timeout: Duration) -> bool {
    use std::os::fd::AsRawFd as _;
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut fd, 1, ms) > 0 }
}

/// A response: status, content type, body.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Reply {
    fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
        }
    }
}

/// The outcome of reading a request head.
enum Head {
    Complete { method: String, path: String },
    TooLarge,
    Malformed,
}

fn serve(mut stream: TcpStream, state: &AdminState) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let Some(head) = read_head(&mut stream)? else {
        return Ok(()); // Closed or timed out before a complete head: nothing to answer.
    };
    let (reply, head_only) = match head {
        Head::Complete { method, path } => (route(&method, &path, state), method == "HEAD"),
        Head::TooLarge => (Reply::text(431, "request head too large\n"), false),
        Head::Malformed => (Reply::text(400, "bad request\n"), false),
    };
    write_reply(&mut stream, &reply, head_only)?;
    // Let the client read the response before the close: a close with unread request bytes
    // (a body we never read) would send a reset that can destroy the response in flight.
    let _ = stream.shutdown(Shutdown::Write);
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    let _ = io::copy(&mut (&mut stream).take(64 * 1024), &mut io::sink());
    Ok(())
}

/// Reads until a complete head, a limit, EOF or the deadline. `None`: nothing to answer.
fn read_head(stream: &mut TcpStream) -> io::Result<Option<Head>> {
    let deadline = Instant::now() + HEAD_DEADLINE;
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        stream.set_read_timeout(Some(left))?;
        let n = match stream.read(&mut buf[len..]) {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                let method = req.method.unwrap_or_default().to_owned();
                let target = req.path.unwrap_or_default();
                let path = target.split('?').next().unwrap_or_default().to_owned();
                return Ok(Some(Head::Complete { method, path }));
            }
            Ok(httparse::Status::Partial) if len == buf.len() => return Ok(Some(Head::TooLarge)),
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Ok(Some(Head::TooLarge)),
            Err(_) => return Ok(Some(Head::Malformed)),
        }
    }
}

/// What each path answers. Pure, apart from reading the shared state.
fn route(method: &str, path: &str, state: &AdminState) -> Reply {
    let known = matches!(path, "/healthz" | "/readyz" | "/metrics");
    if !known {
        return Reply::text(404, "not found\n");
    }
    if method != "GET" && method != "HEAD" {
        return Reply::text(405, "method not allowed\n");
    }
    match path {
        "/healthz" => Reply::text(200, "ok\n"),
        "/readyz" => match state.readiness.state() {
            ReadyState::Serving => Reply::text(200, "ready\n"),
            ReadyState::Starting => Reply::text(503, "starting\n"),
            ReadyState::Draining => Reply::text(503, "draining\n"),
        },
        _ => Reply {
            status: 200,
            content_type: METRICS_CONTENT_TYPE,
            body: state.metrics.encode().into_bytes(),
        },
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn write_reply(stream: &mut TcpStream, reply: &Reply, head_only: bool) -> io::Result<()> {
    let allow = if reply.status == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        reply.status,
        reason(reply.status),
        reply.content_type,
        reply.body.len(),
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(&reply.body);
    }
    stream.write_all(&out)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::metrics::ListenerInfo;

    fn start() -> (AdminServer, Arc<AdminState>) {
        let state = Arc::new(AdminState::default());
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        (spawn(listener, state.clone()).unwrap(), state)
    }

    /// Sends raw bytes, returns (status, headers, body) of the response.
    fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").expect("a response head");
        let status = head[9..12].parse().unwrap();
        (status, head.to_owned(), body.to_owned())
    }

    fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        exchange(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
    }

    #[test]
    fn healthz_readyz_and_metrics() {
        let (server, state) = start();
        let addr = server.local_addr();
        let (status, head, body) = get(addr, "/healthz");
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        assert!(head.contains("Connection: close"), "{head}");
        assert_eq!(get(addr, "/readyz").0, 503, "starting");
        state.readiness.set_serving();
        assert_eq!(get(addr, "/readyz?verbose=1").0, 200);
        state.readiness.set_draining();
        let (status, _, body) = get(addr, "/readyz");
        assert_eq!((status, body.as_str()), (503, "draining\n"));
        state.readiness.set_serving();
        assert_eq!(get(addr, "/readyz").0, 503, "draining is final");
        assert_eq!(get(addr, "/healthz").0, 200, "alive while draining");

        let w = state.metrics.generation(
            &[ListenerInfo {
                name: "public".into(),
                cert_not_after: None,
            }],
            1,
        );
        w[0].connection_opened(0);
        let (status, head, body) = get(addr, "/metrics");
        assert_eq!(status, 200);
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
            "{head}"
        );
        assert!(
            body.contains("certgate_connections_total{listener=\"public\"} 1\n"),
            "{body}"
        );
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        server.stop();
    }

    #[test]
    fn other_paths_and_methods_are_refused() {
        let (server, _state) = start();
        let addr = server.local_addr();
        assert_eq!(get(addr, "/").0, 404);
        assert_eq!(get(addr, "/metrics/../admin").0, 404);
        assert_eq!(get(addr, "http://upstream/healthz").0, 404, "never proxies");
        let (status, head, _) = exchange(
            addr,
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
        );
        assert_eq!(status, 405);
        assert!(head.contains("Allow: GET, HEAD"), "{head}");
        let (status, head, body) = exchange(addr, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, 200);
        assert!(head.contains("Content-Length: 3"), "{head}");
        assert!(body.is_empty(), "HEAD has no body");
        assert_eq!(exchange(addr, b"GET /healthz HTTP/1.0\r\n\r\n").0, 200);
        assert_eq!(exchange(addr, b"\x16\x03\x01\x02\x00\x01\r\n\r\n").0, 400);
        server.stop();
    }

    #[test]
    fn oversized_heads_are_refused() {
        let (server, _state) = start();
        let addr = server.local_addr();
        let big = format!(
            "GET /healthz HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        assert_eq!(exchange(addr, big.as_bytes()).0, 431);
        let many: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
        let req = format!("GET /healthz HTTP/1.1\r\n{many}\r\n");
        assert_eq!(exchange(addr, req.as_bytes()).0, 431);
        server.stop();
    }

    #[test]
    fn a_stalled_client_does_not_block_a_probe() {
        let (server, _state) = start();
        let addr = server.local_addr();
        let mut stalled = TcpStream::connect(addr).unwrap();
        stalled.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
        let started = Instant::now();
        assert_eq!(get(addr, "/healthz").0, 200);
        assert!(started.elapsed() < Duration::from_secs(2));
        server.stop();
    }

    #[test]
    fn stop_returns_promptly_and_closes_the_port() {
        let (server, _state) = start();
        let addr = server.local_addr();
        assert_eq!(get(addr, "/healthz").0, 200);
        let started = Instant::now();
        server.stop();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            TcpStream::connect(addr).is_err(),
            "nothing listens any more"
        );
    }

    #[test]
    fn readiness_moves_forward_only_to_draining() {
        let r = Readiness::new();
        assert_eq!(r.state(), ReadyState::Starting);
        assert!(!r.is_ready());
        r.set_serving();
        assert!(r.is_ready());
        r.set_draining();
        r.set_serving();
        assert_eq!(r.state(), ReadyState::Draining);
    }
}
