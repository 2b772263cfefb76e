//! A small blocking HTTP/1.1 echo app: the upstream of `certgate demo` and of the test suite.
//!
//! It answers every request with the exact head bytes it received followed by the length and
//! SHA-256 of the body, so a client sees precisely what certgate forwarded. A few paths make it
//! produce large or differently framed responses: `/bytes/N` (Content-Length), `/chunked/N`
//! (chunked), `/close/N` (delimited by closing the connection). [`request`] is a client's side
//! of one `/bytes/N` exchange, for the tests and benches that drive certgate in front of it.
//! Plain threads and blocking sockets: this is test and demo equipment, not part of the data
//! path.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::http::chunked::{ChunkedDecoder, LAST_CHUNK};

/// What the echo app has seen, for tests that assert what reached the upstream.
#[derive(Default)]
pub struct Seen {
    pub connections: AtomicUsize,
    pub heads: Mutex<Vec<Vec<u8>>>,
}

pub struct EchoApp {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
}

impl EchoApp {
    /// Starts the app on `addr` (port 0 for any) in background threads.
    pub fn start(addr: SocketAddr) -> io::Result<EchoApp> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Seen::default());
        let seen2 = seen.clone();
        std::thread::Builder::new()
            .name("echo-accept".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    seen2.connections.fetch_add(1, Ordering::SeqCst);
                    // The head and the body go out in two writes: with Nagle the body waits
                    // for certgate's delayed ACK of the head, 40 ms on every response.
                    let _ = stream.set_nodelay(true);
                    let seen = seen2.clone();
                    let _ = std::thread::Builder::new()
                        .name("echo-conn".into())
                        .spawn(move || {
                            let _ = serve(stream, &seen);
                        });
                }
            })?;
        Ok(EchoApp { addr, seen })
    }

    /// Upstream connections accepted so far.
    pub fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }

    /// Request heads received so far, in arrival order.
    pub fn heads(&self) -> Vec<Vec<u8>> {
        self.seen
            .heads
            .lock()
            .map(|h| h.clone())
            .unwrap_or_default()
    }
}

fn serve(stream: TcpStream, seen: &Seen) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(64 * 1024, stream.try_clone()?);
    let mut writer = stream;
    loop {
        // Read the head line by line up to the blank line.
        let mut head = Vec::new();
        loop {
            let before = head.len();
            if reader.read_until(b'\n', &mut head)? == 0 {
                return Ok(());
            }
            if head.len() > 1 << 20 {
                return Ok(());
            }
            if &head[before..] == b"\r\n" || &head[before..] == b"\n" {
                break;
            }
        }
        if let Ok(mut h) = seen.heads.lock() {
            h.push(head.clone());
        }
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(req.parse(&head), Ok(httparse::Status::Complete(_))) {
            writer.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")?;
            return Ok(());
        }
        let path = req.path.unwrap_or("/").to_owned();
        let is_head = req.method == Some("HEAD");
        let mut length = None;
        let mut chunked = false;
        let mut close = false;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = h.value.eq_ignore_ascii_case(b"chunked");
            } else if h.name.eq_ignore_ascii_case("connection") {
                close = h.value.eq_ignore_ascii_case(b"close");
            }
        }
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let body_len = if chunked {
            read_chunked(&mut reader, &mut digest)?
        } else {
            let n = length.unwrap_or(0);
            let mut limited = (&mut reader).take(n);
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            loop {
                let k = limited.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                digest.update(&buf[..k]);
                total += k as u64;
            }
            if total != n {
                return Ok(());
            }
            total
        };
        let hash = digest.finish();
        let mut body = head.clone();
        body.extend_from_slice(format!("body-bytes: {body_len}\nbody-sha256: ").as_bytes());
        for b in hash.as_ref() {
            body.extend_from_slice(format!("{b:02x}").as_bytes());
        }
        body.push(b'\n');
        respond(&mut writer, &path, &body, is_head)?;
        if close || path.starts_with("/close/") {
            return Ok(());
        }
    }
}

fn read_chunked(
    reader: &mut BufReader<TcpStream>,
    digest: &mut ring::digest::Context,
) -> io::Result<u64> {
    let mut decoder = ChunkedDecoder::new(64 * 1024);
    let mut total = 0u64;
    loop {
        let input = reader.fill_buf()?;
        if input.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let step = decoder
            .decode(input)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        if let Some(data) = step.data.clone() {
            digest.update(&input[data.clone()]);
            total += data.len() as u64;
        }
        let consumed = step.consumed;
        reader.consume(consumed);
        if step.done {
            return Ok(total);
        }
    }
}

/// Fills `n` bytes with a repeating pattern the tests can recompute.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn respond(w: &mut TcpStream, path: &str, echo: &[u8], is_head: bool) -> io::Result<()> {
    let size = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|n| n.parse::<usize>().ok())
    };
    if let Some(n) = size("/bytes/") {
        w.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").as_bytes())?;
        if !is_head {
            write_pattern(w, n, false)?;
        }
    } else if let Some(n) = size("/chunked/") {
        w.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")?;
        write_pattern(w, n, true)?;
        w.write_all(LAST_CHUNK)?;
    } else if let Some(n) = size("/close/") {
        w.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
        write_pattern(w, n, false)?;
    } else {
        w.write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                echo.len()
            )
            .as_bytes(),
        )?;
        if !is_head {
            w.write_all(echo)?;
        }
    }
    w.flush()
}

fn write_pattern(w: &mut TcpStream, n: usize, chunked: bool) -> io::Result<()> {
    let block = pattern(251 * 64);
    let mut sent = 0;
    while sent < n {
        // Start each block at a multiple of 251 so the pattern continues seamlessly.
        let k = (n - sent).min(block.len());
        if chunked {
            w.write_all(format!("{k:x}\r\n").as_bytes())?;
        }
        w.write_all(&block[..k])?;
        if chunked {
            w.write_all(b"\r\n")?;
        }
        sent += k;
    }
    Ok(())
}

/// One keep-alive request to the app's `/bytes/{down}` over `stream` (a TLS client stream to
/// certgate, in the tests and benches): a GET, or a POST of `up` bytes when `up > 0`. Reads the
/// whole answer and fails unless it is a 200 with exactly `down` body bytes.
pub fn request<S: Read + Write>(stream: &mut S, up: usize, down: usize) -> io::Result<()> {
    let head = if up == 0 {
        format!("GET /bytes/{down} HTTP/1.1\r\nHost: localhost\r\n\r\n")
    } else {
        format!("POST /bytes/{down} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {up}\r\n\r\n")
    };
    stream.write_all(head.as_bytes())?;
    let block = [b'x'; 16 * 1024];
    let mut left = up;
    while left > 0 {
        let n = left.min(block.len());
        stream.write_all(&block[..n])?;
        left -= n;
    }
    stream.flush()?;
    let broken = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let body_start = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(broken("closed before the response head".into()));
        }
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..body_start]);
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse::<usize>().ok());
    if !head.starts_with("HTTP/1.1 200") || length != Some(down) {
        return Err(broken(format!("unexpected answer: {head}")));
    }
    let mut have = got.len() - body_start;
    while have < down {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(broken(format!("closed after {have} of {down} body bytes")));
        }
        have += n;
    }
    if have != down {
        return Err(broken(format!("{have} body bytes, {down} expected")));
    }
    Ok(())
}
