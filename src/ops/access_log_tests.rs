//! Unit tests of `ops::access_log`: fields, escaping (log injection), and the buffered writer.
use super::*;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::UNIX_EPOCH;

fn record<'a>(path: &'a [u8]) -> AccessRecord<'a> {
    AccessRecord {
        // 2023-11-14T22:13:20.123Z
        ts: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        listener: "public",
        client: "192.0.2.7:51234".parse().unwrap(),
        tls_version: tls_version(Some(rustls::ProtocolVersion::TLSv1_3)),
        resumed: true,
        client_cert_sha256: Some("ab12"),
        client_cert_subject: Some("CN=client one,O=Example"),
        method: b"GET",
        path,
        status: 200,
        bytes_in: 77,
        bytes_out: 1234,
        duration: Duration::from_micros(1500),
        upstream: Some(Duration::from_micros(1250)),
    }
}

fn json(rec: &AccessRecord<'_>) -> (String, serde_json::Value) {
    let mut out = Vec::new();
    write_json(rec, &mut out);
    let line = String::from_utf8(out).unwrap();
    let value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    (line, value)
}

fn text(rec: &AccessRecord<'_>) -> String {
    let mut out = Vec::new();
    write_text(rec, &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn json_line_has_every_field() {
    let (line, v) = json(&record(b"/api/v1?x=1"));
    assert!(
        line.ends_with("}\n") && line.matches('\n').count() == 1,
        "{line}"
    );
    let expect = serde_json::json!({
        "ts": "2023-11-14T22:13:20.123Z",
        "listener": "public",
        "client": "192.0.2.7:51234",
        "tls_version": "TLSv1.3",
        "resumed": true,
        "client_cert_sha256": "ab12",
        "client_cert_subject": "CN=client one,O=Example",
        "method": "GET",
        "path": "/api/v1?x=1",
        "status": 200,
        "bytes_in": 77,
        "bytes_out": 1234,
        "duration_ms": 1.5,
        "upstream_ms": 1.25,
    });
    assert_eq!(v, expect);
    // Fields keep a fixed order, so lines also read well with grep.
    assert!(line.starts_with("{\"ts\":\"2023-11-14T22:13:20.123Z\",\"listener\":\"public\""));
}

#[test]
fn json_absent_values_are_null() {
    let mut rec = record(b"/");
    rec.client_cert_sha256 = None;
    rec.client_cert_subject = None;
    rec.upstream = None;
    rec.resumed = false;
    rec.client = "[2001:db8::1]:443".parse().unwrap();
    rec.tls_version = tls_version(Some(rustls::ProtocolVersion::TLSv1_2));
    let (_, v) = json(&rec);
    assert_eq!(v["client_cert_sha256"], serde_json::Value::Null);
    assert_eq!(v["client_cert_subject"], serde_json::Value::Null);
    assert_eq!(v["upstream_ms"], serde_json::Value::Null);
    assert_eq!(v["resumed"], false);
    assert_eq!(v["client"], "[2001:db8::1]:443");
    assert_eq!(v["tls_version"], "TLSv1.2");
}

/// Targets a client could send to forge or hide log lines.
const HOSTILE: &[&[u8]] = &[
    b"/a\r\n{\"ts\":\"forged\"}",
    b"/a\nts=forged listener=x",
    b"/\x1b[2J\x1b[31mred",
    b"/nul\x00byte\x7fdel\tTab",
    "/sep\u{2028}line\u{2029}para\u{85}nel".as_bytes(),
    b"/quote\"back\\slash",
    b"/bad\xff\xfeutf8\xc3",
];

#[test]
fn json_escapes_what_could_forge_a_line() {
    for &path in HOSTILE {
        let (line, v) = json(&record(path));
        assert_eq!(line.matches('\n').count(), 1, "{line:?}");
        assert!(
            !line[..line.len() - 1]
                .chars()
                .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}'),
            "{line:?}"
        );
        // Valid UTF-8 comes back exactly as received.
        if let Ok(s) = std::str::from_utf8(path) {
            assert_eq!(v["path"], s, "{line}");
        }
    }
    let (line, v) = json(&record(b"/a\r\nb\x1b"));
    assert!(line.contains(r#""path":"/a\u000d\u000ab\u001b""#), "{line}");
    assert_eq!(v["path"], "/a\r\nb\x1b");
    // Bytes that are not UTF-8 can't be in a JSON string: they read `\xNN`.
    let (_, v) = json(&record(b"/bad\xff"));
    assert_eq!(v["path"], "/bad\\xff");
}

#[test]
fn text_line_has_every_field() {
    let line = text(&record(b"/api/v1?x=1"));
    assert_eq!(
        line,
        "ts=2023-11-14T22:13:20.123Z listener=public client=192.0.2.7:51234 \
         tls_version=TLSv1.3 resumed=true client_cert_sha256=ab12 \
         client_cert_subject=\"CN=client one,O=Example\" method=GET path=\"/api/v1?x=1\" \
         status=200 bytes_in=77 bytes_out=1234 duration_ms=1.500 upstream_ms=1.250\n"
    );
    let mut rec = record(b"/plain");
    rec.client_cert_sha256 = None;
    rec.client_cert_subject = Some("-");
    rec.upstream = None;
    let line = text(&rec);
    assert!(line.contains(" client_cert_sha256=- "), "{line}");
    assert!(
        line.contains(" client_cert_subject=\"-\" "),
        "a literal - is quoted: {line}"
    );
    assert!(line.contains(" path=/plain "), "{line}");
    assert!(line.ends_with(" upstream_ms=-\n"), "{line}");
    rec.path = b"";
    assert!(text(&rec).contains(" path=\"\" "));
}

#[test]
fn text_escapes_what_could_forge_a_line() {
    for &path in HOSTILE {
        let line = text(&record(path));
        assert_eq!(line.matches('\n').count(), 1, "{line:?}");
        assert!(
            !line[..line.len() - 1]
                .chars()
                .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}'),
            "{line:?}"
        );
        // The value stays one quoted token: the only unescaped quotes are its own.
        let value = line.split(" path=").nth(1).unwrap();
        let value = value.split(" status=").next().unwrap();
        assert!(value.starts_with('"') && value.ends_with('"'), "{value}");
        assert!(!value[1..value.len() - 1]
            .replace("\\\\", "")
            .replace("\\\"", "")
            .contains('"'));
    }
    let line = text(&record(b"/a\r\nts=x\x1b\xff\"\\"));
    assert!(
        line.contains(r#"path="/a\x0d\x0ats=x\x1b\xff\"\\""#),
        "{line}"
    );
    let line = text(&record("/\u{2028}\u{85}".as_bytes()));
    assert!(line.contains(r#"path="/\u{2028}\x85""#), "{line}");
}

fn read_all(mut r: UnixStream) -> String {
    let mut s = String::new();
    r.read_to_string(&mut s).unwrap();
    s
}

#[test]
fn buffer_is_written_at_16_kib_and_on_flush_in_whole_lines() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let log = AccessLog::new(AccessLogFormat::Json, OwnedFd::from(ours)).unwrap();
    assert_eq!(
        log.chunk,
        Some(PIPE_BUF),
        "a socket gets PIPE_BUF-sized writes"
    );
    let rec = record(b"/x");
    log.log(&rec).unwrap();
    assert!(log.pending() > 0);
    let line_len = log.pending();
    let mut lines = 1;
    while log.pending() > 0 {
        log.log(&rec).unwrap();
        lines += 1;
        assert!(log.pending() < FLUSH_AT, "flushed when full");
    }
    assert_eq!(lines, FLUSH_AT.div_ceil(line_len));
    log.log(&rec).unwrap();
    log.flush().unwrap();
    assert_eq!(log.pending(), 0);
    drop(log);
    let got = read_all(theirs);
    assert_eq!(got.lines().count(), lines + 1);
    for l in got.lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap();
    }
}

#[test]
fn chunks_end_at_line_boundaries() {
    let data = b"aaaa\nbbbb\ncccc\n";
    assert_eq!(chunk_len(data, 100), data.len());
    assert_eq!(chunk_len(data, 12), 10);
    assert_eq!(chunk_len(data, 10), 10);
    assert_eq!(chunk_len(data, 9), 5);
    assert_eq!(
        chunk_len(b"a-very-long-line\nx\n", 4),
        17,
        "a long line goes alone"
    );
    assert_eq!(chunk_len(b"no-newline-at-all", 4), 17);
}

#[test]
fn workers_writing_one_file_never_mix_lines() {
    let path = std::env::temp_dir().join(format!("certgate-access-{}.log", std::process::id()));
    // Like `certgate > file`: one open file description shared by every worker's handle.
    let file = File::create(&path).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let fd = file.as_fd().try_clone_to_owned().unwrap();
            std::thread::spawn(move || {
                let log = AccessLog::new(AccessLogFormat::Text, fd).unwrap();
                assert_eq!(log.chunk, None, "a regular file gets one write per flush");
                let target = format!("/worker/{t}/{}", "x".repeat(40 * t));
                for _ in 0..2000 {
                    log.log(&record(target.as_bytes())).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(text.lines().count(), 8000);
    for line in text.lines() {
        assert!(
            line.starts_with("ts=") && line.ends_with(" upstream_ms=1.250"),
            "{line}"
        );
    }
}

#[test]
fn a_failed_write_drops_the_lines_and_says_so() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    drop(theirs);
    let log = AccessLog::new(AccessLogFormat::Text, OwnedFd::from(ours)).unwrap();
    log.log(&record(b"/a")).unwrap();
    log.log(&record(b"/b")).unwrap();
    assert!(log.flush().is_err(), "the reader is gone (EPIPE)");
    assert_eq!(log.dropped(), 2);
    assert_eq!(log.pending(), 0, "the buffer does not grow without bound");
    let mut out = Vec::new();
    write_line(AccessLogFormat::Off, &record(b"/"), &mut out);
    assert!(out.is_empty());
}
