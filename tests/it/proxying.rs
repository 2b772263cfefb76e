//! HTTP/1.1 proxying: keep-alive, pipelining, the upstream pool, bodies, errors, resumption,
//! and application data that arrives in the same flight as the client's Finished.

use std::io::{BufReader, Read, Write};

use crate::support::*;
use certgate::demo::echo::pattern;

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let running = start(Setup::new("accept"));
    let mut tls = connect(running.addr, client_config(ClientCert::Valid, false));
    for i in 0..5 {
        let resp = exchange(&mut tls, &get(&format!("/ka/{i}"))).unwrap();
        assert_eq!(resp.status, 200);
        assert!(resp
            .upstream_head()
            .starts_with(&format!("GET /ka/{i} HTTP/1.1")));
    }
    assert_eq!(running.echo().connections(), 1);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let running = start(Setup::new("accept"));
    let mut tls = connect(running.addr, client_config(ClientCert::None, false));
    let mut all = Vec::new();
    for i in 0..4 {
        all.extend_from_slice(&get(&format!("/pipe/{i}")));
    }
    tls.write_all(&all).unwrap();
    let mut reader = BufReader::new(&mut tls);
    for i in 0..4 {
        let resp = read_response(&mut reader, false).unwrap();
        assert!(
            resp.upstream_head().starts_with(&format!("GET /pipe/{i} ")),
            "{}",
            resp.text()
        );
    }
}

#[test]
fn two_clients_interleaved_through_one_pooled_upstream_connection_keep_their_own_headers() {
    let running = start(Setup::new("accept"));
    let mut a = connect(running.addr, client_config(ClientCert::Valid, false));
    let mut b = connect(running.addr, client_config(ClientCert::ValidB, false));
    let mut n = connect(running.addr, client_config(ClientCert::None, false));
    for round in 0..3 {
        for (tls, cert) in [
            (&mut a, ClientCert::Valid),
            (&mut b, ClientCert::ValidB),
            (&mut n, ClientCert::None),
        ] {
            let req =
                format!("GET /{round} HTTP/1.1\r\nHost: localhost\r\nX-Who: {cert:?}\r\n\r\n");
            let resp = exchange(tls, req.as_bytes()).unwrap();
            let head = resp.upstream_head();
            let xfcc = header_values(&head, "x-forwarded-client-cert");
            if cert == ClientCert::None {
                assert!(xfcc.is_empty(), "{head}");
            } else {
                assert_eq!(xfcc, vec![expected_xfcc(&cert.chain())]);
            }
            assert_eq!(header_values(&head, "x-who"), vec![format!("{cert:?}")]);
        }
    }
    // One worker, strictly sequential exchanges: a single upstream connection served all nine.
    assert_eq!(running.echo().connections(), 1);
}

#[test]
fn content_length_body_is_forwarded_intact() {
    let running = start(Setup::new("accept"));
    let body = pattern(100_000);
    let mut req = format!(
        "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let resp = request(running.addr, ClientCert::Valid, &req).unwrap();
    let text = resp.text();
    assert!(
        text.contains(&format!("body-bytes: {}\n", body.len())),
        "{text}"
    );
    assert!(
        text.contains(&format!("body-sha256: {}", sha256_hex(&body))),
        "{text}"
    );
}

#[test]
fn chunked_body_is_reencoded_and_trailers_dropped() {
    let running = start(Setup::new("accept"));
    let req = b"POST /chunks HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: evil\r\n\r\n";
    let resp = request(running.addr, ClientCert::None, req).unwrap();
    let text = resp.text();
    assert!(text.contains("body-bytes: 11\n"), "{text}");
    assert!(text.contains(&sha256_hex(b"hello world")), "{text}");
    assert!(!text.contains("evil"));
    assert_eq!(
        header_values(&resp.upstream_head(), "transfer-encoding"),
        vec!["chunked".to_string()]
    );
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

const TWENTY_MB: usize = 20 * 1024 * 1024;

#[test]
fn twenty_megabyte_bodies_stream_both_ways_with_flat_memory() {
    let running = start(Setup::new("accept"));
    let block = pattern(251 * 256);
    let expected_hash = {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut left = TWENTY_MB;
        while left > 0 {
            let k = left.min(block.len());
            ctx.update(&block[..k]);
            left -= k;
        }
        ctx.finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let before = rss_kib();

    // Upload: streamed from a small block, never held whole by the client either.
    let mut tls = connect(running.addr, client_config(ClientCert::Valid, false));
    let head =
        format!("POST /big HTTP/1.1\r\nHost: localhost\r\nContent-Length: {TWENTY_MB}\r\n\r\n");
    tls.write_all(head.as_bytes()).unwrap();
    let mut left = TWENTY_MB;
    while left > 0 {
        let k = left.min(block.len());
        tls.write_all(&block[..k]).unwrap();
        left -= k;
    }
    let mut reader = BufReader::new(&mut tls);
    let resp = read_response(&mut reader, false).unwrap();
    assert!(
        resp.text()
            .contains(&format!("body-sha256: {expected_hash}")),
        "{}",
        resp.text()
    );
    drop(reader);

    // Downloads with Content-Length and chunked framing: hashed as they arrive.
    for path in ["/bytes/", "/chunked/"] {
        tls.write_all(&get(&format!("{path}{TWENTY_MB}"))).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tls.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let chunked = String::from_utf8_lossy(&head)
            .to_ascii_lowercase()
            .contains("chunked");
        let mut reader = BufReader::with_capacity(64 * 1024, &mut tls);
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut got = 0usize;
        if chunked {
            let mut decoder = certgate::http::chunked::ChunkedDecoder::new(1024);
            use std::io::BufRead;
            loop {
                let input = reader.fill_buf().unwrap();
                let step = decoder.decode(input).unwrap();
                if let Some(d) = step.data.clone() {
                    ctx.update(&input[d.clone()]);
                    got += d.len();
                }
                let c = step.consumed;
                reader.consume(c);
                if step.done {
                    break;
                }
            }
        } else {
            let mut buf = vec![0u8; 64 * 1024];
            while got < TWENTY_MB {
                let k = reader
                    .read(&mut buf[..(TWENTY_MB - got).min(64 * 1024)])
                    .unwrap();
                assert!(k > 0);
                ctx.update(&buf[..k]);
                got += k;
            }
        }
        assert_eq!(got, TWENTY_MB, "{path}");
        let hash: String = ctx
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hash, expected_hash, "{path}");
    }
    let growth = rss_kib().saturating_sub(before);
    // 60 MB moved through this process (proxy + clients + echo app); a proxy that buffered
    // a whole body would grow by at least 20 MB.
    assert!(growth < 12 * 1024, "RSS grew by {growth} KiB");
}

#[test]
fn close_delimited_response_is_relayed_and_the_connection_closed() {
    let running = start(Setup::new("accept"));
    let mut tls = connect(running.addr, client_config(ClientCert::None, false));
    tls.write_all(&get("/close/5000")).unwrap();
    let mut reader = BufReader::new(&mut tls);
    let resp = read_response(&mut reader, false).unwrap();
    assert_eq!(resp.body, pattern(5000));
    assert!(
        resp.head.to_ascii_lowercase().contains("connection: close"),
        "{}",
        resp.head
    );
}

#[test]
fn head_request_gets_no_body() {
    let running = start(Setup::new("accept"));
    let mut tls = connect(running.addr, client_config(ClientCert::None, false));
    let resp = exchange(
        &mut tls,
        b"HEAD /bytes/100 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.body.is_empty());
    // The connection is still in sync for the next request.
    let resp = exchange(&mut tls, &get("/after-head")).unwrap();
    assert!(resp.upstream_head().starts_with("GET /after-head "));
}

#[test]
fn http10_request_is_answered_and_closed() {
    let running = start(Setup::new("accept"));
    let mut tls = connect(running.addr, client_config(ClientCert::None, false));
    tls.write_all(b"GET /old HTTP/1.0\r\n\r\n").unwrap();
    let mut all = Vec::new();
    let _ = tls.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("GET /old HTTP/1.1"), "{text}");
    // HTTP/1.1 requires Host: the configured upstream stands in for the one 1.0 omitted.
    let echo_host = format!("Host: {}\r\n", running.echo().addr);
    assert!(text.contains(&echo_host), "{text}");
}

#[test]
fn http10_chunked_response_is_dechunked_for_the_client() {
    let running = start(Setup::new("accept"));
    let mut tls = connect(running.addr, client_config(ClientCert::None, false));
    tls.write_all(b"GET /chunked/3000 HTTP/1.0\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    let _ = tls.read_to_end(&mut all);
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&all[..split]).to_ascii_lowercase();
    assert!(!head.contains("chunked"), "{head}");
    assert_eq!(&all[split..], &pattern(3000)[..]);
}

#[test]
fn http10_keep_alive_is_honoured() {
    let running = start(Setup::new("accept"));
    let mut tls = connect(running.addr, client_config(ClientCert::None, false));
    for _ in 0..2 {
        let resp = exchange(
            &mut tls,
            b"GET /ka10 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        )
        .unwrap();
        assert_eq!(resp.status, 200);
        assert!(
            resp.head
                .to_ascii_lowercase()
                .contains("connection: keep-alive"),
            "{}",
            resp.head
        );
    }
}

#[test]
fn upstream_down_gives_502() {
    let mut setup = Setup::new("accept");
    setup.upstream = Some(dead_addr());
    let running = start(setup);
    let resp = request(running.addr, ClientCert::Valid, &get("/")).unwrap();
    assert_eq!(resp.status, 502);
    assert!(resp.head.to_ascii_lowercase().contains("content-length"));
}

#[test]
fn malformed_request_gets_400_and_nothing_reaches_the_app() {
    let running = start(Setup::new("accept"));
    let resp = request(
        running.addr,
        ClientCert::None,
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
    )
    .unwrap();
    assert_eq!(resp.status, 400);
    assert!(running.echo().heads().is_empty());
}

#[test]
fn oversized_request_head_gets_431() {
    let running = start(Setup::new("accept"));
    let mut req = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..800 {
        req.extend_from_slice(format!("X-Fill-{i}: {}\r\n", "a".repeat(90)).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    let resp = request(running.addr, ClientCert::None, &req).unwrap();
    assert_eq!(resp.status, 431);
    assert!(running.echo().heads().is_empty());
}

fn resumption_keeps_header(tls12: bool) {
    let running = start(Setup::new("accept"));
    let config = client_config(ClientCert::Valid, tls12);
    let expected = vec![expected_xfcc(&ClientCert::Valid.chain())];
    let mut first = connect(running.addr, config.clone());
    let resp = exchange(&mut first, &get("/first")).unwrap();
    assert_eq!(
        header_values(&resp.upstream_head(), "x-forwarded-client-cert"),
        expected
    );
    assert_eq!(
        first.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    drop(first);
    let mut second = connect(running.addr, config);
    let resp = exchange(&mut second, &get("/second")).unwrap();
    assert_eq!(
        second.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    assert_eq!(
        header_values(&resp.upstream_head(), "x-forwarded-client-cert"),
        expected
    );
}

#[test]
fn tls13_resumption_keeps_the_client_certificate_header() {
    resumption_keeps_header(false);
}

#[test]
fn tls12_resumption_keeps_the_client_certificate_header() {
    resumption_keeps_header(true);
}

#[test]
fn resumption_off_means_every_handshake_is_full() {
    let mut setup = Setup::new("accept");
    setup.resumption = false;
    let running = start(setup);
    let config = client_config(ClientCert::Valid, false);
    for _ in 0..2 {
        let mut tls = connect(running.addr, config.clone());
        exchange(&mut tls, &get("/")).unwrap();
        assert_eq!(tls.conn.handshake_kind(), Some(rustls::HandshakeKind::Full));
    }
}

/// The client's first request is written before the handshake and leaves in the same write as
/// its Finished message: certgate must neither lose it nor the certificate.
#[test]
fn request_in_the_same_flight_as_finished_is_not_lost() {
    let running = start(Setup::new("require"));
    let config = client_config(ClientCert::Valid, false);
    let mut conn = rustls::ClientConnection::new(
        config,
        rustls::pki_types::ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    // Queued before any I/O: rustls sends it right after Finished.
    conn.writer().write_all(&get("/same-flight")).unwrap();
    let mut tcp = std::net::TcpStream::connect(running.addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut writes_with_finished = 0;
    while conn.is_handshaking() {
        if conn.wants_write() {
            conn.write_tls(&mut tcp).unwrap();
        }
        if conn.is_handshaking() && conn.wants_read() {
            conn.read_tls(&mut tcp).unwrap();
            conn.process_new_packets().unwrap();
            if !conn.is_handshaking() {
                // Finished and the queued request go out together, in one write_tls.
                let mut flight = Vec::new();
                while conn.wants_write() {
                    conn.write_tls(&mut flight).unwrap();
                }
                tcp.write_all(&flight).unwrap();
                writes_with_finished += 1;
            }
        }
    }
    assert_eq!(writes_with_finished, 1);
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    let mut reader = BufReader::new(&mut stream);
    let resp = read_response(&mut reader, false).unwrap();
    assert!(resp.upstream_head().starts_with("GET /same-flight "));
    assert_eq!(
        header_values(&resp.upstream_head(), "x-forwarded-client-cert"),
        vec![expected_xfcc(&ClientCert::Valid.chain())]
    );
}

#[test]
fn large_first_flight_beyond_the_plaintext_buffer_is_not_lost() {
    // 100 KB of pipelined requests queued before the handshake: more than rustls' 16 KiB
    // received-plaintext limit, so certgate must drain plaintext before feeding more.
    let running = start(Setup::new("accept"));
    let mut conn = rustls::ClientConnection::new(
        client_config(ClientCert::Valid, false),
        rustls::pki_types::ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut all = Vec::new();
    for i in 0..400 {
        all.extend_from_slice(
            format!(
                "GET /burst/{i} HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\n\r\n",
                "p".repeat(200)
            )
            .as_bytes(),
        );
    }
    conn.set_buffer_limit(None);
    conn.writer().write_all(&all).unwrap();
    let tcp = std::net::TcpStream::connect(running.addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    let mut reader = BufReader::new(&mut stream);
    for i in 0..400 {
        let resp = read_response(&mut reader, false).unwrap();
        assert!(resp
            .upstream_head()
            .starts_with(&format!("GET /burst/{i} ")));
    }
}

#[test]
fn expect_100_continue_is_answered_by_the_proxy() {
    let running = start(Setup::new("accept"));
    let mut tls = connect(running.addr, client_config(ClientCert::None, false));
    tls.write_all(
        b"POST /expect HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut reader = BufReader::new(&mut tls);
    let interim = read_response(&mut reader, false).unwrap();
    assert_eq!(interim.status, 100);
    drop(reader);
    tls.write_all(b"body").unwrap();
    let mut reader = BufReader::new(&mut tls);
    let resp = read_response(&mut reader, false).unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.text().contains("body-bytes: 4"));
    assert!(header_values(&resp.upstream_head(), "expect").is_empty());
}

/// A client still sending when its request is refused must be able to read the refusal:
/// certgate drains its input before closing instead of resetting the connection.
#[test]
fn refused_client_still_sending_reads_the_error_response() {
    use std::os::fd::AsRawFd;
    let running = start(Setup::new("accept"));
    let mut req = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    while req.len() < 900 * 1024 {
        req.extend_from_slice(format!("X-Fill-{}: {}\r\n", req.len(), "a".repeat(90)).as_bytes());
    }
    let mut tls = connect(running.addr, client_config(ClientCert::None, false));
    // A small send buffer keeps most of the request in the client while certgate decides,
    // so the client is still writing when the 431 goes out.
    let small: libc::c_int = 4096;
    // SAFETY: setsockopt on a socket this test owns, with a correctly sized int.
    let rc = unsafe {
        libc::setsockopt(
            tls.sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&small as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    let resp = exchange(&mut tls, &req).unwrap();
    assert_eq!(resp.status, 431);
    assert!(running.echo().heads().is_empty());
}
