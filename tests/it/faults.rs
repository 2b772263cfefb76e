//! Upstream faults and client aborts, with the scripted upstream from `hardening.rs`: what the
//! client sees, and which upstream connections may be pooled afterwards.

use std::io::{BufReader, Read, Write};
use std::time::{Duration, Instant};

use crate::hardening::*;
use crate::support::*;

/// Answers the first request on the first connection with `bytes` and then serves further
/// requests on it normally (so reuse would show); later connections are served normally.
fn first_answer(bytes: &'static [u8]) -> impl Fn(&mut FakeConn) + Send + Sync + 'static {
    move |c: &mut FakeConn| {
        if c.index == 0 {
            if c.request().is_none() {
                return;
            }
            c.send(bytes);
        }
        c.serve_ok();
    }
}

/// The first client gets `status`; a second client is served over a new upstream connection.
fn bad_response_is_502_and_not_reused(bytes: &'static [u8]) {
    let fake = Fake::start(first_answer(bytes));
    let running = fake.front("");
    let mut tls = client(running.addr);
    let resp = exchange(&mut tls, &get("/bad")).unwrap();
    assert_eq!(resp.status, 502, "{}", resp.head);
    assert!(read_rest(&mut tls).unwrap().is_empty());

    let resp = exchange(&mut client(running.addr), &get("/next")).unwrap();
    assert_eq!((resp.status, resp.text().as_str()), (200, "ok"));
    let heads = fake.log.heads();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert_eq!(heads[1].0, 1, "the broken connection was reused: {heads:?}");
}

#[test]
fn invalid_status_line_gives_502_and_a_fresh_upstream_connection_next() {
    bad_response_is_502_and_not_reused(b"HTTP/1.1 abc Nope\r\nContent-Length: 0\r\n\r\n");
}

#[test]
fn non_http_response_gives_502() {
    bad_response_is_502_and_not_reused(b"SSH-2.0-OpenSSH_9.6\r\n\r\n");
}

#[test]
fn response_with_content_length_and_transfer_encoding_gives_502() {
    bad_response_is_502_and_not_reused(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
}

#[test]
fn response_with_conflicting_content_lengths_gives_502() {
    bad_response_is_502_and_not_reused(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    );
}

#[test]
fn response_with_bare_lf_gives_502() {
    bad_response_is_502_and_not_reused(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok");
}

#[test]
fn upstream_closing_mid_response_truncates_the_client_connection() {
    let fake = Fake::start(|c: &mut FakeConn| {
        if c.request().is_some() {
            c.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789");
            // Dropping the connection closes it mid-body.
        }
    });
    let running = fake.front("");
    let mut tls = client(running.addr);
    tls.write_all(&get("/partial")).unwrap();
    tls.flush().unwrap();
    let mut got = Vec::new();
    let end = tls.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    // Never a clean end: no close_notify after a partial response (rustls reports the bare
    // TCP EOF as an error), and never all 1000 bytes.
    assert!(
        end.is_err(),
        "clean close after a truncated response: {text}"
    );
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("Content-Length: 1000\r\n"), "{text}");
    let body = &got[text.find("\r\n\r\n").unwrap() + 4..];
    assert_eq!(body, b"0123456789");
}

#[test]
fn response_bytes_reach_the_client_while_the_upstream_stalls() {
    let fake = Fake::start(|c: &mut FakeConn| {
        if c.request().is_some() {
            c.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n");
            std::thread::sleep(Duration::from_millis(1500));
            c.send(b"4\r\nlast\r\n0\r\n\r\n");
        }
    });
    let running = fake.front("");
    let mut tls = client(running.addr);
    tls.write_all(&get("/stream")).unwrap();
    tls.flush().unwrap();
    let started = Instant::now();
    tls.sock
        .set_read_timeout(Some(Duration::from_millis(800)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("5\r\nfirst\r\n") {
        match tls.read(&mut buf) {
            Ok(0) => panic!("closed early"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "nothing relayed while the upstream stalls ({e}; {:?} in)",
                started.elapsed()
            ),
        }
    }
    tls.sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    while !String::from_utf8_lossy(&rest).ends_with("0\r\n\r\n") {
        let n = tls.read(&mut buf).unwrap();
        assert!(n > 0);
        rest.extend_from_slice(&buf[..n]);
    }
    assert_eq!(rest, b"4\r\nlast\r\n0\r\n\r\n");
}

/// Serves one request per connection, then closes it while certgate holds it idle in the pool.
fn one_request_per_connection(c: &mut FakeConn) {
    if c.request().is_some() {
        c.send(OK);
    }
}

#[test]
fn stale_pooled_connection_is_retried_for_a_get() {
    let fake = Fake::start(one_request_per_connection);
    let running = fake.front("");
    let mut tls = client(running.addr);
    assert_eq!(exchange(&mut tls, &get("/one")).unwrap().status, 200);
    std::thread::sleep(Duration::from_millis(100));
    let resp = exchange(&mut tls, &get("/two")).unwrap();
    assert_eq!((resp.status, resp.text().as_str()), (200, "ok"));
    assert_eq!(fake.log.connections(), 2);
    assert_eq!(fake.log.heads().len(), 2, "{:?}", fake.log.heads());
}

#[test]
fn stale_pooled_connection_never_sends_a_body_twice() {
    let fake = Fake::start(one_request_per_connection);
    let running = fake.front("");
    let mut tls = client(running.addr);
    assert_eq!(exchange(&mut tls, &get("/one")).unwrap().status, 200);
    std::thread::sleep(Duration::from_millis(100));
    let post = b"POST /charge HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    let resp = exchange(&mut tls, post).unwrap();
    assert!(matches!(resp.status, 200 | 502), "{}", resp.head);
    let posts = fake
        .log
        .bodies()
        .iter()
        .filter(|b| b.as_slice() == b"hello")
        .count();
    assert!(posts <= 1, "the body was sent {posts} times");
    if resp.status == 200 {
        assert_eq!(posts, 1);
    }
}

#[test]
fn non_idempotent_request_is_not_retried_after_the_app_took_it() {
    // The app reads the second request on its connection and closes without answering (a
    // crash, or a keep-alive close racing the request). A bodyless POST must not run twice.
    let fake = Fake::start(|c: &mut FakeConn| {
        if c.index == 0 {
            if c.request().is_none() {
                return;
            }
            c.send(OK);
            let _ = c.request();
            return;
        }
        c.serve_ok();
    });
    let running = fake.front("");
    let mut tls = client(running.addr);
    assert_eq!(exchange(&mut tls, &get("/one")).unwrap().status, 200);
    let resp = exchange(&mut tls, b"POST /launch HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(resp.status, 502, "{}", resp.head);
    let launches = fake
        .log
        .heads()
        .iter()
        .filter(|(_, h)| h.starts_with("POST /launch "))
        .count();
    assert_eq!(launches, 1, "{:?}", fake.log.heads());
}

#[test]
fn get_is_not_retried_once_the_app_answered_part_of_it() {
    // On a pooled connection the app sends 103 and dies: it took the request, so the GET is
    // not replayed (and certgate never sends the relayed 1xx head upstream as a "request").
    let fake = Fake::start(|c: &mut FakeConn| {
        if c.index == 0 {
            if c.request().is_none() {
                return;
            }
            c.send(OK);
            if c.request().is_some() {
                c.send(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n");
            }
            return;
        }
        c.serve_ok();
    });
    let running = fake.front("");
    let mut tls = client(running.addr);
    assert_eq!(exchange(&mut tls, &get("/one")).unwrap().status, 200);
    tls.write_all(&get("/two")).unwrap();
    tls.flush().unwrap();
    let mut reader = BufReader::new(&mut tls);
    assert_eq!(read_response(&mut reader, false).unwrap().status, 103);
    assert_eq!(read_response(&mut reader, false).unwrap().status, 502);
    let heads = fake.log.heads();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(
        !fake.log.raw().contains("HTTP/1.1 103"),
        "{}",
        fake.log.raw()
    );
}

#[test]
fn early_hints_are_relayed_before_the_final_response() {
    let fake = Fake::start(|c: &mut FakeConn| {
        while c.request().is_some() {
            c.send(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n");
            std::thread::sleep(Duration::from_millis(50));
            c.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal");
        }
    });
    let running = fake.front("");
    let mut tls = client(running.addr);
    tls.write_all(&get("/hints")).unwrap();
    tls.write_all(&get("/again")).unwrap();
    tls.flush().unwrap();
    let mut reader = BufReader::new(&mut tls);
    for _ in 0..2 {
        let hints = read_response(&mut reader, false).unwrap();
        assert_eq!(hints.status, 103, "{}", hints.head);
        assert_eq!(
            header_values(&hints.head, "link"),
            vec!["</style.css>; rel=preload"]
        );
        let resp = read_response(&mut reader, false).unwrap();
        assert_eq!((resp.status, resp.text().as_str()), (200, "final"));
    }
}

#[test]
fn bodyless_statuses_and_head_keep_the_pipeline_in_step() {
    let fake = Fake::start(|c: &mut FakeConn| {
        while let Some((head, _)) = c.request() {
            let path = head.split(' ').nth(1).unwrap_or("").to_owned();
            match path.as_str() {
                "/204" => c.send(b"HTTP/1.1 204 No Content\r\n\r\n"),
                "/304" => c.send(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\n\r\n"),
                "/head" => c.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"),
                _ => c.send(OK),
            }
        }
    });
    let running = fake.front("");
    let mut tls = client(running.addr);
    let mut raw = get("/204");
    raw.extend_from_slice(&get("/304"));
    raw.extend_from_slice(b"HEAD /head HTTP/1.1\r\nHost: a\r\n\r\n");
    raw.extend_from_slice(&get("/last"));
    tls.write_all(&raw).unwrap();
    tls.flush().unwrap();
    let mut reader = BufReader::new(&mut tls);
    let r = read_response(&mut reader, false).unwrap();
    assert_eq!(r.status, 204, "{}", r.head);
    assert!(header_values(&r.head, "content-length").is_empty());
    let r = read_response(&mut reader, false).unwrap();
    assert_eq!(r.status, 304, "{}", r.head);
    let r = read_response(&mut reader, true).unwrap();
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(header_values(&r.head, "content-length"), vec!["1234"]);
    let r = read_response(&mut reader, false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    // All four went over one upstream connection: each response ended where it should.
    assert_eq!(fake.log.connections(), 1);
}

#[test]
fn client_abort_mid_body_discards_the_upstream_connection() {
    let fake = Fake::start(FakeConn::serve_ok);
    let running = fake.front("");
    let mut tls = client(running.addr);
    tls.write_all(b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n0123456789")
        .unwrap();
    tls.flush().unwrap();
    eventually("the head reached the app", || fake.log.heads().len() == 1);
    drop(tls);
    eventually("the app's connection is closed", || fake.log.eofs() == 1);

    let resp = exchange(&mut client(running.addr), &get("/next")).unwrap();
    assert_eq!((resp.status, resp.text().as_str()), (200, "ok"));
    let heads = fake.log.heads();
    assert_eq!(
        heads[1].0, 1,
        "the aborted body's connection was reused: {heads:?}"
    );
    assert!(fake.log.bodies().iter().all(Vec::is_empty));
}

#[test]
fn upstream_stalling_mid_body_closes_the_client() {
    let fake = Fake::start(|c: &mut FakeConn| {
        if c.request().is_some() {
            c.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc");
            c.wait_eof();
        }
    });
    let running = fake.front("[timeouts]\nupstream_response = \"300ms\"\n");
    let mut tls = client(running.addr);
    tls.write_all(&get("/stall")).unwrap();
    tls.flush().unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    assert!(
        tls.read_to_end(&mut got).is_err(),
        "clean end after a stall"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(String::from_utf8_lossy(&got).ends_with("\r\n\r\nabc"));
    eventually("the stalled upstream connection is closed", || {
        fake.log.eofs() == 1
    });
}

#[test]
fn upstream_that_stops_reading_the_body_ends_the_exchange() {
    // The app takes the head, then reads nothing more: certgate's writes to it block. They must
    // give up after `upstream_response` instead of holding both connections forever.
    let fake = Fake::start(|c: &mut FakeConn| {
        if c.read_head().is_some() {
            std::thread::sleep(Duration::from_secs(4));
        }
    });
    let running = fake.front("[timeouts]\nupstream_response = \"300ms\"\n");
    let addr = running.addr;
    let started = Instant::now();
    let client = std::thread::spawn(move || {
        let mut tls = client(addr);
        tls.sock
            .set_write_timeout(Some(Duration::from_secs(8)))
            .unwrap();
        let body_len = 64 * 1024 * 1024;
        let head = format!("POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: {body_len}\r\n\r\n");
        tls.write_all(head.as_bytes()).unwrap();
        let block = vec![b'b'; 256 * 1024];
        let mut sent = 0;
        while sent < body_len {
            if tls.write_all(&block).and_then(|()| tls.flush()).is_err() {
                return false; // certgate closed the connection: the exchange ended
            }
            sent += block.len();
        }
        true
    });
    let sent_everything = client.join().unwrap();
    assert!(
        !sent_everything,
        "a 64 MiB body went into an app that reads nothing"
    );
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(4), "{waited:?}");
}
