//! The access log: one line per request on stdout, as text (`key=value` pairs) or JSON.
//!
//! Formatting is pure ([`write_text`], [`write_json`] append one line to a buffer) so every
//! escaping rule has a unit test. A request target is logged as received, but every string is
//! escaped so that nothing a client sends can end the line or forge a second one: control
//! characters (C0, DEL, C1), U+2028/U+2029 and bytes that are not UTF-8 never reach the log
//! raw. In JSON they become `\u00XX` (invalid bytes become the six characters `\xNN`, since a
//! JSON string cannot hold them); in text they become `\xNN` (or `\u{XXXX}` above U+00FF).
//!
//! [`AccessLog`] is a worker's buffer: lines are appended in memory and written with one
//! write(2) per flush (at [`FLUSH_AT`] bytes, or when the worker calls [`AccessLog::flush`] on
//! a timer or when idle). Workers never interleave partial lines because each write holds whole
//! lines only. To a regular file (stdout redirected with `>` or `>>`) Linux applies each
//! write(2) whole at the file's end, so the whole buffer goes in one write. To a pipe or a
//! socket (journald, a log shipper) only writes of at most `PIPE_BUF` (4096) bytes are atomic,
//! so the buffer goes out in chunks of whole lines of at most 4096 bytes each; a single line
//! longer than that (a huge request target) is written alone and may interleave on a pipe.
//!
//! Writes block the worker (like nginx's access log): cheap to a file or a healthy journald,
//! but a stalled reader on the other end of a pipe stalls the worker too.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, SystemTime};

use crate::config::AccessLogFormat;

/// A worker's buffer is written out once it holds this many bytes.
pub const FLUSH_AT: usize = 16 * 1024;
/// Linux's `PIPE_BUF`: writes up to this size to a pipe are never interleaved with others.
const PIPE_BUF: usize = 4096;

/// Everything one access-log line says about one request.
#[derive(Debug, Clone, Copy)]
pub struct AccessRecord<'a> {
    /// When the response ended.
    pub ts: SystemTime,
    pub listener: &'a str,
    /// The client's address (ip:port).
    pub client: SocketAddr,
    /// `"TLSv1.3"` or `"TLSv1.2"` ([`tls_version`]).
    pub tls_version: &'a str,
    pub resumed: bool,
    /// Lowercase hex SHA-256 of the client certificate's DER, when one was presented.
    pub client_cert_sha256: Option<&'a str>,
    /// The client certificate's subject (RFC 4514 string), when one was presented.
    pub client_cert_subject: Option<&'a str>,
    /// Method and target as the client sent them (bytes: they are not trusted to be UTF-8).
    pub method: &'a [u8],
    pub path: &'a [u8],
    /// The status sent to the client (the app's or certgate's own).
    pub status: u16,
    /// Request bytes received (head and body) and response bytes sent, plaintext.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Request head received → response ended.
    pub duration: Duration,
    /// Request sent to the app → response head received; `None` when the app was not asked.
    pub upstream: Option<Duration>,
}

/// The `tls_version` field for a negotiated protocol version.
pub fn tls_version(v: Option<rustls::ProtocolVersion>) -> &'static str {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        Some(_) => "other",
        None => "none",
    }
}

/// Appends one line in `format` (nothing when it is `Off`).
pub fn write_line(format: AccessLogFormat, rec: &AccessRecord<'_>, out: &mut Vec<u8>) {
    match format {
        AccessLogFormat::Off => {}
        AccessLogFormat::Text => write_text(rec, out),
        AccessLogFormat::Json => write_json(rec, out),
    }
}

/// Appends one JSON object and a newline.
pub fn write_json(rec: &AccessRecord<'_>, out: &mut Vec<u8>) {
    write_record(Style::Json, rec, out);
}

/// Appends one line of `key=value` pairs (logfmt) and a newline. A missing value is `-`.
pub fn write_text(rec: &AccessRecord<'_>, out: &mut Vec<u8>) {
    write_record(Style::Text, rec, out);
}

/// The two formats differ only in how a key, a string and a missing value are written; the
/// fields and their order are one list (`write_record`).
#[derive(Debug, Clone, Copy)]
enum Style {
    Json,
    Text,
}

impl Style {
    fn key(self, s: &mut String, name: &str) {
        let first = s.is_empty();
        match self {
            Style::Json => {
                s.push_str(if first { "{\"" } else { ",\"" });
                s.push_str(name);
                s.push_str("\":");
            }
            Style::Text => {
                if !first {
                    s.push(' ');
                }
                s.push_str(name);
                s.push('=');
            }
        }
    }

    /// A string from the request or the certificate: escaped.
    fn string(self, s: &mut String, bytes: &[u8]) {
        match self {
            Style::Json => json_str(s, bytes),
            Style::Text => text_value(s, bytes),
        }
    }

    /// A string certgate formatted itself (a time, an address): nothing to escape.
    fn own(self, s: &mut String, value: impl std::fmt::Display) {
        let _ = match self {
            Style::Json => write!(s, "\"{value}\""),
            Style::Text => write!(s, "{value}"),
        };
    }

    fn none(self, s: &mut String) {
        s.push_str(match self {
            Style::Json => "null",
            Style::Text => "-",
        });
    }

    fn opt_string(self, s: &mut String, v: Option<&str>) {
        match v {
            Some(v) => self.string(s, v.as_bytes()),
            None => self.none(s),
        }
    }

    fn end(self, s: &mut String) {
        s.push_str(match self {
            Style::Json => "}\n",
            Style::Text => "\n",
        });
    }
}

fn write_record(style: Style, rec: &AccessRecord<'_>, out: &mut Vec<u8>) {
    let mut s = String::with_capacity(320);
    // Writing into a String cannot fail.
    style.key(&mut s, "ts");
    style.own(&mut s, humantime::format_rfc3339_millis(rec.ts));
    style.key(&mut s, "listener");
    style.string(&mut s, rec.listener.as_bytes());
    style.key(&mut s, "client");
    style.own(&mut s, rec.client);
    style.key(&mut s, "tls_version");
    style.string(&mut s, rec.tls_version.as_bytes());
    style.key(&mut s, "resumed");
    let _ = write!(s, "{}", rec.resumed);
    style.key(&mut s, "client_cert_sha256");
    style.opt_string(&mut s, rec.client_cert_sha256);
    style.key(&mut s, "client_cert_subject");
    style.opt_string(&mut s, rec.client_cert_subject);
    style.key(&mut s, "method");
    style.string(&mut s, rec.method);
    style.key(&mut s, "path");
    style.string(&mut s, rec.path);
    for (name, n) in [
        ("status", u64::from(rec.status)),
        ("bytes_in", rec.bytes_in),
        ("bytes_out", rec.bytes_out),
    ] {
        style.key(&mut s, name);
        let _ = write!(s, "{n}");
    }
    style.key(&mut s, "duration_ms");
    let _ = write!(s, "{:.3}", millis(rec.duration));
    style.key(&mut s, "upstream_ms");
    match rec.upstream {
        Some(d) => {
            let _ = write!(s, "{:.3}", millis(d));
        }
        None => style.none(&mut s),
    }
    style.end(&mut s);
    out.extend_from_slice(s.as_bytes());
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Characters that could end or fake a line in some viewer: C0, DEL, C1, and the Unicode
/// line and paragraph separators.
fn is_dangerous(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// A JSON string literal of `bytes`, quotes included.
fn json_str(s: &mut String, bytes: &[u8]) {
    s.push('"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => s.push_str("\\\""),
                '\\' => s.push_str("\\\\"),
                c if is_dangerous(c) => {
                    let _ = write!(s, "\\u{:04x}", u32::from(c));
                }
                c => s.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(s, "\\\\x{b:02x}");
        }
    }
    s.push('"');
}

/// A logfmt value: bare when it is plain printable ASCII without `"`, `=`, `\` or space,
/// else quoted. Quoted too when it is empty or a literal `-` (which means "none").
fn text_value(s: &mut String, bytes: &[u8]) {
    let plain = !bytes.is_empty()
        && bytes != b"-"
        && bytes
            .iter()
            .all(|&b| b.is_ascii_graphic() && !matches!(b, b'"' | b'=' | b'\\'));
    if plain {
        // All ASCII, checked just above.
        s.extend(bytes.iter().map(|&b| char::from(b)));
        return;
    }
    s.push('"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => s.push_str("\\\""),
                '\\' => s.push_str("\\\\"),
                c if is_dangerous(c) && u32::from(c) <= 0xff => {
                    let _ = write!(s, "\\x{:02x}", u32::from(c));
                }
                c if is_dangerous(c) => {
                    let _ = write!(s, "\\u{{{:04x}}}", u32::from(c));
                }
                c => s.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(s, "\\x{b:02x}");
        }
    }
    s.push('"');
}

/// One worker's access-log buffer in front of stdout (or any file descriptor).
///
/// Single-threaded (`RefCell`): each worker has its own, so no lock is taken per request.
pub struct AccessLog {
    format: AccessLogFormat,
    buf: RefCell<Vec<u8>>,
    out: File,
    /// `None`: one write per flush (regular file); `Some(n)`: chunks of at most `n` bytes.
    chunk: Option<usize>,
    /// Lines dropped because a write failed (disk full, reader gone).
    dropped: Cell<u64>,
}

impl AccessLog {
    /// A buffer in front of this process's stdout (a duplicate of fd 1, so each worker holds
    /// its own handle and none of them takes std's stdout lock).
    pub fn stdout(format: AccessLogFormat) -> io::Result<AccessLog> {
        AccessLog::new(format, io::stdout().as_fd().try_clone_to_owned()?)
    }

    /// A buffer in front of `out`.
    pub fn new(format: AccessLogFormat, out: OwnedFd) -> io::Result<AccessLog> {
        let out = File::from(out);
        let chunk = if out.metadata()?.file_type().is_file() {
            None
        } else {
            Some(PIPE_BUF)
        };
        Ok(AccessLog {
            format,
            buf: RefCell::new(Vec::with_capacity(FLUSH_AT + 1024)),
            out,
            chunk,
            dropped: Cell::new(0),
        })
    }

    pub fn format(&self) -> AccessLogFormat {
        self.format
    }

    /// Buffers one line; writes the buffer out once it reaches [`FLUSH_AT`]. An error means
    /// that write failed and its lines were dropped (see [`AccessLog::dropped`]).
    pub fn log(&self, rec: &AccessRecord<'_>) -> io::Result<()> {
        let full = {
            let mut buf = self.buf.borrow_mut();
            write_line(self.format, rec, &mut buf);
            buf.len() >= FLUSH_AT
        };
        if full {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// Bytes waiting in the buffer.
    pub fn pending(&self) -> usize {
        self.buf.borrow().len()
    }

    /// Lines dropped so far because a write failed.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Writes every buffered line out. On error the buffer is dropped all the same: a log
    /// that cannot be written must not grow the worker's memory without bound.
    pub fn flush(&self) -> io::Result<()> {
        let mut buf = self.buf.borrow_mut();
        if buf.is_empty() {
            return Ok(());
        }
        let mut rest: &[u8] = &buf;
        let mut result = Ok(());
        while !rest.is_empty() {
            let n = self.chunk.map_or(rest.len(), |max| chunk_len(rest, max));
            if let Err(e) = (&self.out).write_all(&rest[..n]) {
                let lost = memchr::memchr_iter(b'\n', rest).count() as u64;
                self.dropped.set(self.dropped.get() + lost);
                result = Err(e);
                break;
            }
            rest = &rest[n..];
        }
        buf.clear();
        result
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// How much of `data` (whole lines) goes into the next write of at most `max` bytes; a single
/// line longer than `max` goes alone.
fn chunk_len(data: &[u8], max: usize) -> usize {
    if data.len() <= max {
        return data.len();
    }
    match memchr::memrchr(b'\n', &data[..max]) {
        Some(i) => i + 1,
        None => memchr::memchr(b'\n', data).map_or(data.len(), |i| i + 1),
    }
}

#[cfg(test)]
#[path = "access_log_tests.rs"]
mod tests;
