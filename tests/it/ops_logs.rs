//! Operations end to end, what certgate writes down: the access log (one exact line per
//! request, JSON or text, that no request target can break), refused handshakes on stderr
//! (rate-limited), and the systemd notify messages around start, reload and stop. Each test runs
//! the certgate binary on its own config.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use certgate::demo::echo::EchoApp;

use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Access log
// ---------------------------------------------------------------------------------------------

/// One request as the client made it, and what its access-log line must say.
struct Sent {
    client: SocketAddr,
    raw: Vec<u8>,
    resp: Response,
    tls_version: &'static str,
    resumed: bool,
    cert: Option<&'static certgate::pki::Issued>,
    method: &'static str,
    path: String,
}

/// Requests on one connection; each gives a [`Sent`].
fn send_all(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    cert: ClientCert,
    tls12: bool,
    requests: &[(&'static str, String, &[u8])],
) -> Vec<Sent> {
    let mut tls = connect(addr, config);
    tls.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let client = tls.sock.local_addr().unwrap();
    let mut out = Vec::new();
    for (method, path, body) in requests {
        let mut raw = format!("{method} ").into_bytes();
        raw.extend_from_slice(path.as_bytes());
        raw.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\n");
        if !body.is_empty() {
            raw.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        raw.extend_from_slice(body);
        let resp = exchange(&mut tls, &raw).unwrap();
        out.push(Sent {
            client,
            raw,
            resp,
            tls_version: if tls12 { "TLSv1.2" } else { "TLSv1.3" },
            resumed: tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            cert: cert.chain().first().copied(),
            method,
            path: path.clone(),
        });
    }
    out
}

/// Targets a client can send (the request line admits them) that try to break a log line:
/// quotes and backslashes that would end a JSON string, percent-encoded CR LF, C1 controls
/// (U+0085 NEL, U+009B CSI) and the Unicode line and paragraph separators, sent as UTF-8.
fn hostile_targets() -> Vec<String> {
    vec![
        "/a%0d%0a{\"status\":200,\"path\":\"/forged\"}".to_owned(),
        "/q?x=\"},\"status\":999,\"path\":\"/forged".to_owned(),
        "/back\\slash\\\"end".to_owned(),
        "/c1\u{85}nel\u{9b}31mcsi\u{2028}ls\u{2029}ps/end".to_owned(),
        "/caf\u{e9}/\u{1f600}".to_owned(),
    ]
}

fn access_log_rig(tag: &str, format: &str) -> (Proc, SocketAddr, EchoApp) {
    let echo = echo_app();
    let dir = temp_dir(tag);
    write_pki(&dir);
    let [port] = free_ports::<1>();
    let text = server_toml(1, &format!("\n[log]\naccess = \"{format}\"\n"))
        + &listener_toml("api", port, "accept", Some("ca.pem"), echo.addr);
    let mut proc = Proc::spawn(&dir, &text, |_| {});
    let addr = proc.wait_tcp(port);
    (proc, addr, echo)
}

/// The traffic both access-log tests send: TLS 1.3 with a certificate (keep-alive, a body,
/// the hostile targets), TLS 1.2 without one, and a resumed session.
fn access_log_traffic(addr: SocketAddr) -> Vec<Sent> {
    let mut requests: Vec<(&'static str, String, &[u8])> = vec![
        ("GET", "/hello?x=1".to_owned(), b""),
        ("POST", "/submit".to_owned(), b"a body of 21 bytes..."),
    ];
    requests.extend(hostile_targets().into_iter().map(|t| ("GET", t, &b""[..])));
    let mut sent = send_all(
        addr,
        client_config(ClientCert::Valid, false),
        ClientCert::Valid,
        false,
        &requests,
    );
    sent.extend(send_all(
        addr,
        client_config(ClientCert::None, true),
        ClientCert::None,
        true,
        &[("GET", "/anonymous".to_owned(), b"")],
    ));
    let resumable = client_config(ClientCert::ByRoot, false);
    for path in ["/first", "/resumed"] {
        sent.extend(send_all(
            addr,
            resumable.clone(),
            ClientCert::ByRoot,
            false,
            &[("HEAD", path.to_owned(), b"")],
        ));
    }
    assert!(sent.last().unwrap().resumed, "the last connection resumed");
    sent
}

#[test]
fn json_access_log_has_one_exact_line_per_request_that_no_target_can_forge() {
    let started = SystemTime::now();
    let (mut proc, addr, _echo) = access_log_rig("ops-access-json", "json");
    let sent = access_log_traffic(addr);
    // Flushed within a second or so, while certgate keeps running.
    wait_for("an access-log line per request", 10, || {
        proc.stdout.text().lines().count() >= sent.len()
    });
    // A request certgate refuses itself (an ESC byte in the target) is logged too.
    let refused_raw = b"GET /esc\x1b[2J HTTP/1.1\r\nHost: x\r\n\r\n";
    let refused = request(addr, ClientCert::Valid, refused_raw).unwrap();
    assert_eq!(refused.status, 400);
    // The last line is written out at shutdown at the latest.
    let last = send_all(
        addr,
        client_config(ClientCert::Valid, false),
        ClientCert::Valid,
        false,
        &[("DELETE", "/last".to_owned(), b"")],
    );
    assert!(proc.terminate().success());
    let out = proc.stdout.text();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), sent.len() + 2, "{out}");
    assert!(out.ends_with('\n'));

    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let ordered = sent.iter().chain(last.iter());
    let logged = parsed[..sent.len()].iter().chain(&parsed[sent.len() + 1..]);
    for (s, v) in ordered.zip(logged) {
        let what = format!("{} {}: {v}", s.method, s.path);
        assert_eq!(v["listener"], "api", "{what}");
        assert_eq!(v["client"], s.client.to_string(), "{what}");
        assert_eq!(v["tls_version"], s.tls_version, "{what}");
        assert_eq!(v["resumed"], s.resumed, "{what}");
        match s.cert {
            Some(cert) => {
                assert_eq!(
                    v["client_cert_sha256"],
                    sha256_hex(cert.cert_der.as_ref()),
                    "{what}"
                );
                let subject = v["client_cert_subject"].as_str().unwrap();
                let cn = if std::ptr::eq(cert, &pki().client_by_root) {
                    "client-root"
                } else {
                    "client-a"
                };
                assert!(subject.contains(&format!("CN={cn}")), "{what}");
            }
            None => {
                assert!(v["client_cert_sha256"].is_null(), "{what}");
                assert!(v["client_cert_subject"].is_null(), "{what}");
            }
        }
        assert_eq!(v["method"], s.method, "{what}");
        assert_eq!(v["path"], s.path.as_str(), "{what}");
        assert_eq!(v["status"], s.resp.status, "{what}");
        assert_eq!(v["bytes_in"], s.raw.len(), "{what}");
        assert_eq!(
            v["bytes_out"],
            s.resp.head.len() + s.resp.body.len(),
            "{what}"
        );
        assert!(v["duration_ms"].as_f64().unwrap() >= 0.0, "{what}");
        assert!(v["upstream_ms"].as_f64().unwrap() >= 0.0, "{what}");
        let ts = humantime::parse_rfc3339(v["ts"].as_str().unwrap()).unwrap();
        assert!(ts >= started - Duration::from_secs(1), "{what}");
        assert!(ts <= SystemTime::now(), "{what}");
        assert_eq!(v.as_object().unwrap().len(), 14, "{what}");
    }
    // The refused request: its own line, status 400, no upstream time, and the head as
    // received: its method, its target (the ESC escaped by the log) and its bytes.
    let refused = &parsed[sent.len()];
    assert_eq!(refused["status"], 400, "{refused}");
    assert!(refused["upstream_ms"].is_null(), "{refused}");
    assert_eq!(refused["method"], "GET", "{refused}");
    assert_eq!(refused["path"], "/esc\u{1b}[2J", "{refused}");
    assert_eq!(refused["bytes_in"], refused_raw.len(), "{refused}");
    assert!(
        lines[sent.len()].contains("\\u001b"),
        "escaped: {}",
        lines[sent.len()]
    );
    assert_eq!(
        refused["client_cert_sha256"],
        sha256_hex(pki().client_via_intermediate.cert_der.as_ref())
    );
    // Nothing raw that a viewer could take for a line end.
    for c in ['\r', '\u{85}', '\u{9b}', '\u{2028}', '\u{2029}', '\u{1b}'] {
        assert!(!out.contains(c), "raw {c:?} in the log");
    }
    proc.assert_plain_stderr();
}

#[test]
fn text_access_log_has_one_line_per_request() {
    let (mut proc, addr, _echo) = access_log_rig("ops-access-text", "text");
    let sent = access_log_traffic(addr);
    wait_for("an access-log line per request", 10, || {
        proc.stdout.text().lines().count() >= sent.len()
    });
    assert!(proc.terminate().success());
    let out = proc.stdout.text();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), sent.len(), "{out}");
    for (s, line) in sent.iter().zip(&lines) {
        assert!(line.starts_with("ts="), "{line}");
        assert!(line.contains(" listener=api "), "{line}");
        assert!(line.contains(&format!(" client={} ", s.client)), "{line}");
        assert!(line.contains(&format!(" method={} ", s.method)), "{line}");
        assert!(
            line.contains(&format!(" status={} ", s.resp.status)),
            "{line}"
        );
        assert!(
            line.contains(&format!(" bytes_in={} ", s.raw.len())),
            "{line}"
        );
        assert!(
            line.contains(&format!(" tls_version={} ", s.tls_version)),
            "{line}"
        );
        let sha = s
            .cert
            .map_or("-".to_owned(), |c| sha256_hex(c.cert_der.as_ref()));
        assert!(
            line.contains(&format!(" client_cert_sha256={sha} ")),
            "{line}"
        );
    }
    assert!(lines[0].contains(r#" path="/hello?x=1" "#), "{}", lines[0]);
    // Every hostile target stayed inside its own line, quoted, its controls escaped.
    for c in ['\r', '\u{85}', '\u{9b}', '\u{2028}', '\u{2029}', '\u{1b}'] {
        assert!(!out.contains(c), "raw {c:?} in the log");
    }
    assert!(
        lines[5].contains(r"\x85nel\x9b31mcsi\u{2028}ls\u{2029}ps/end"),
        "{}",
        lines[5]
    );
    proc.assert_plain_stderr();
}

// ---------------------------------------------------------------------------------------------
// Refused handshakes on stderr
// ---------------------------------------------------------------------------------------------

#[test]
fn refused_handshakes_are_logged_with_reason_client_and_hash_and_rate_limited() {
    let dir = temp_dir("ops-refusals");
    write_pki(&dir);
    let [port, admin] = free_ports::<2>();
    let text = server_toml(1, &admin_toml(admin))
        + &listener_toml("strict", port, "require", Some("ca.pem"), dead_addr());
    let mut proc = Proc::spawn(&dir, &text, |_| {});
    proc.wait_ready(local(admin));
    let addr = local(port);

    // One refusal of each kind, with the certificate's hash when one was presented.
    let mut tls = connect(addr, client_config(ClientCert::Foreign, false));
    let foreign_port = tls.sock.local_addr().unwrap().port();
    assert!(exchange(&mut tls, &get("/")).is_err());
    let mut tls = connect(addr, client_config(ClientCert::None, false));
    let none_port = tls.sock.local_addr().unwrap().port();
    assert!(exchange(&mut tls, &get("/")).is_err());
    wait_for("two refusal lines", 10, || {
        proc.stderr.lines_with("TLS handshake refused").len() == 2
    });
    let lines = proc.stderr.lines_with("TLS handshake refused");
    let foreign = sha256_hex(pki().foreign.cert_der.as_ref());
    assert!(lines[0].contains(" INFO "), "{}", lines[0]);
    assert!(lines[0].contains("reason=\"untrusted\""), "{}", lines[0]);
    assert!(
        lines[0].contains(&format!("client=127.0.0.1:{foreign_port}")),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains(&format!("client_cert_sha256=\"{foreign}\"")),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("listener=strict"), "{}", lines[0]);
    assert!(
        lines[1].contains("reason=\"no_certificate\""),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].contains(&format!("client=127.0.0.1:{none_port}")),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].contains("client_cert_sha256=\"-\""),
        "{}",
        lines[1]
    );

    // A flood: at most 20 lines a second (one worker), the rest counted in a summary line
    // written when the next refusal comes after the window.
    std::thread::sleep(Duration::from_millis(1100)); // a fresh window
    let flood = 45;
    let started = Instant::now();
    for _ in 0..flood {
        drop(TcpStream::connect(addr).unwrap());
    }
    wait_for("the flood's refusals to be counted", 10, || {
        let s = scrape(local(admin));
        s.value(
            "certgate_handshake_failures_total",
            &[("listener", "strict"), ("reason", "closed")],
        ) == flood as f64
    });
    let within_a_second = started.elapsed() < Duration::from_millis(900);
    std::thread::sleep(Duration::from_millis(1100));
    drop(TcpStream::connect(addr).unwrap());
    // Every refusal is either a line of its own or counted in a summary line.
    wait_for("the refusal after the flood", 10, || {
        proc.stderr.lines_with("TLS handshake refused").len() + suppressed(&proc.stderr) as usize
            == 2 + flood + 1
    });
    let logged = proc.stderr.lines_with("TLS handshake refused").len() - 2;
    let held_back = suppressed(&proc.stderr) as usize;
    assert_eq!(logged + held_back, flood + 1);
    if within_a_second {
        assert_eq!(logged, 21, "20 in the flood's second, then the late one");
        assert_eq!(held_back, flood - 20);
    }
    assert!(held_back > 0 || !within_a_second);
    assert!(proc.terminate().success());
    proc.assert_plain_stderr();
}

/// The sum of the counts in "N more handshake failures suppressed" lines.
fn suppressed(stderr: &Captured) -> u64 {
    stderr
        .lines_with("more handshake failures suppressed")
        .iter()
        .map(|l| {
            let at = l.find(" more handshake failures suppressed").unwrap();
            let n = l[..at].rsplit(' ').next().unwrap();
            n.parse::<u64>().unwrap_or_else(|_| panic!("{l}"))
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// systemd notify
// ---------------------------------------------------------------------------------------------

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid, writable timespec that outlives the call.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) },
        0
    );
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

#[test]
fn notify_socket_gets_ready_reloading_ready_and_stopping_in_order() {
    let echo = echo_app();
    let dir = temp_dir("ops-notify");
    write_pki(&dir);
    let socket_path = dir.join("notify.sock");
    let systemd = UnixDatagram::bind(&socket_path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let recv = || {
        let mut buf = [0u8; 512];
        let n = systemd
            .recv(&mut buf)
            .expect("a notify message within 10 s");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    };
    let [port] = free_ports::<1>();
    let text = server_toml(1, "") + &listener_toml("tls", port, "ignore", None, echo.addr);
    let mut proc = Proc::spawn(&dir, &text, |cmd| {
        cmd.env("NOTIFY_SOCKET", &socket_path);
    });

    // READY=1 once it serves: a request right after it needs no retry.
    assert_eq!(recv(), "READY=1");
    let addr = local(port);
    assert_eq!(
        request(addr, ClientCert::None, &get("/")).unwrap().status,
        200
    );

    // A reload, then a failed reload: each wrapped in RELOADING=1 (with the time it began on
    // CLOCK_MONOTONIC) and READY=1.
    for (n, break_it) in [(1, false), (2, true)] {
        if break_it {
            std::fs::write(dir.join("server.pem"), "not a certificate").unwrap();
        }
        let before = monotonic_usec();
        proc.signal(libc::SIGHUP);
        let reloading = recv();
        let usec: u64 = reloading
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("{reloading:?}"))
            .parse()
            .unwrap();
        assert!(
            usec >= before && usec <= monotonic_usec(),
            "{usec} vs {before}"
        );
        assert_eq!(recv(), "READY=1");
        let outcome = proc.wait_reloads(n);
        assert_eq!(outcome.contains("reload failed"), break_it, "{outcome}");
    }

    proc.signal(libc::SIGTERM);
    assert_eq!(recv(), "STOPPING=1");
    assert!(proc.wait_exit().success());
    systemd.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    assert!(systemd.recv(&mut buf).is_err(), "nothing after STOPPING=1");
    proc.assert_plain_stderr();
}
