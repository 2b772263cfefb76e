//! Operations end to end, the admin listener: `/metrics` moving with the traffic that should
//! move it, reloads counted, `/healthz` and `/readyz` (503 from SIGTERM on, while the drain
//! still finishes what is in flight). Each test runs the certgate binary on its own config.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use certgate::demo::echo::EchoApp;

use crate::hardening::{Fake, OK};
use crate::support::*;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A raw TCP connection to a TLS port that sends `bytes` (maybe none), then waits for the
/// server to close it. Returns how long that took.
fn raw_until_closed(addr: SocketAddr, bytes: &[u8]) -> Duration {
    let started = Instant::now();
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    if !bytes.is_empty() {
        tcp.write_all(bytes).unwrap();
        tcp.shutdown(Shutdown::Write).unwrap();
    }
    let mut sink = Vec::new();
    // A reset is a close too.
    let _ = tcp.read_to_end(&mut sink);
    started.elapsed()
}

/// The serving certificate's notAfter, read with x509-parser (not certgate's code path).
fn not_after(der: &[u8]) -> f64 {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.validity().not_after.timestamp() as f64
}

// ---------------------------------------------------------------------------------------------
// /metrics
// ---------------------------------------------------------------------------------------------

/// Three listeners: `mtls` (require, client_ca, echo app), `dead` (nothing listens upstream)
/// and `slow` (an app that never answers), with short handshake and response timeouts.
struct MetricsRig {
    proc: Proc,
    admin: SocketAddr,
    mtls: SocketAddr,
    dead: SocketAddr,
    slow: SocketAddr,
    _echo: EchoApp,
    _silent: Fake,
}

fn metrics_rig(tag: &str) -> MetricsRig {
    let echo = echo_app();
    let silent = Fake::start(|c| {
        let _ = c.read_head();
        c.wait_eof();
    });
    let dir = temp_dir(tag);
    write_pki(&dir);
    let [mtls, dead, slow, admin] = free_ports::<4>();
    let text = server_toml(
        1,
        &format!(
            "\n[timeouts]\nhandshake = \"2s\"\nupstream_response = \"1s\"\n{}",
            admin_toml(admin)
        ),
    ) + &listener_toml("mtls", mtls, "require", Some("ca.pem"), echo.addr)
        + &listener_toml("dead", dead, "ignore", None, dead_addr())
        + &listener_toml("slow", slow, "ignore", None, silent.addr);
    let mut proc = Proc::spawn(&dir, &text, |_| {});
    // Readiness through the admin port: no TLS listener sees a probe connection.
    proc.wait_ready(local(admin));
    MetricsRig {
        proc,
        admin: local(admin),
        mtls: local(mtls),
        dead: local(dead),
        slow: local(slow),
        _echo: echo,
        _silent: silent,
    }
}

/// Waits until no connection is open on any listener (refused handshakes linger a little).
fn wait_idle(admin: SocketAddr) -> Scrape {
    let mut last = None;
    wait_for("connections_active to drop to 0", 10, || {
        let s = scrape(admin);
        let idle = s
            .samples
            .iter()
            .filter(|x| x.name == "certgate_connections_active")
            .all(|x| x.value == 0.0);
        last = Some(s);
        idle
    });
    last.unwrap()
}

#[test]
fn every_metric_family_moves_with_the_traffic_that_should_move_it() {
    let started = unix_now();
    let rig = metrics_rig("ops-metrics");
    let before = scrape(rig.admin);
    let p = pki();

    // mtls: a full handshake (cache miss), a returning client (cache hit), a resumed session,
    // and a request certgate answers itself (400).
    let resumable = client_config(ClientCert::Valid, false);
    let (r, resumed) = request_with(rig.mtls, resumable.clone(), &get("/ok")).unwrap();
    assert_eq!((r.status, resumed), (200, false));
    let (r, resumed) = request_with(
        rig.mtls,
        client_config(ClientCert::Valid, false),
        &get("/back"),
    )
    .unwrap();
    assert_eq!((r.status, resumed), (200, false));
    let (r, resumed) = request_with(rig.mtls, resumable, &get("/resumed")).unwrap();
    assert_eq!((r.status, resumed), (200, true));
    let r = request(rig.mtls, ClientCert::Valid, b"BAD\r\n\r\n").unwrap();
    assert_eq!(r.status, 400);

    // mtls: refused handshakes, one per reason a client can cause.
    assert!(request(rig.mtls, ClientCert::None, &get("/")).is_err());
    assert!(request(rig.mtls, ClientCert::Expired, &get("/")).is_err());
    assert!(request(rig.mtls, ClientCert::Foreign, &get("/")).is_err());
    // A client that does not trust certgate's certificate aborts with an alert.
    let mut stranger_roots = rustls::RootCertStore::empty();
    let stranger = certgate::pki::Ca::root("stranger root").unwrap();
    stranger_roots
        .add(stranger.issued().cert_der.clone())
        .unwrap();
    let doubting = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(stranger_roots)
        .with_no_client_auth();
    assert!(request_with(rig.mtls, Arc::new(doubting), &get("/")).is_err());
    raw_until_closed(rig.mtls, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"); // not TLS: protocol
    drop(TcpStream::connect(rig.mtls).unwrap()); // gone mid-handshake: closed
    let waited = raw_until_closed(rig.mtls, b""); // says nothing: timeout
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");

    // dead: the app is not there (502); slow: the app never answers (504 after 1 s).
    assert_eq!(
        request(rig.dead, ClientCert::None, &get("/"))
            .unwrap()
            .status,
        502
    );
    assert_eq!(
        request(rig.slow, ClientCert::None, &get("/"))
            .unwrap()
            .status,
        504
    );

    let after = wait_idle(rig.admin);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };

    // Connections: every TCP connection counts, refused or not; none is left open.
    for (l, n) in [("mtls", 11.0), ("dead", 1.0), ("slow", 1.0)] {
        let listener = [("listener", l)];
        assert_eq!(delta("certgate_connections_total", &listener), n, "{l}");
        assert_eq!(
            after.get("certgate_connections_active", &listener),
            Some(0.0)
        );
    }

    // Handshakes, by resumption and client certificate.
    let hs = |l: &str, resumed: &str, cert: &str| {
        delta(
            "certgate_handshakes_total",
            &[("listener", l), ("resumed", resumed), ("client_cert", cert)],
        )
    };
    assert_eq!(hs("mtls", "false", "true"), 3.0);
    assert_eq!(hs("mtls", "true", "true"), 1.0);
    assert_eq!(
        hs("mtls", "false", "false") + hs("mtls", "true", "false"),
        0.0
    );
    assert_eq!(hs("dead", "false", "false"), 1.0);
    assert_eq!(hs("slow", "false", "false"), 1.0);

    // Failures, by reason.
    let failed = |l: &str, reason: &str| {
        delta(
            "certgate_handshake_failures_total",
            &[("listener", l), ("reason", reason)],
        )
    };
    for (reason, n) in [
        ("no_certificate", 1.0),
        ("expired", 1.0),
        ("untrusted", 1.0),
        ("client_alert", 1.0),
        ("protocol", 1.0),
        ("closed", 1.0),
        ("timeout", 1.0),
        ("bad_signature", 0.0),
        ("revoked", 0.0),
        ("other", 0.0),
    ] {
        assert_eq!(failed("mtls", reason), n, "reason {reason}");
        assert!(after
            .get(
                "certgate_handshake_failures_total",
                &[("listener", "dead"), ("reason", reason)]
            )
            .is_some());
    }

    // Handshake and request duration histograms: one observation per finished handshake and
    // per response, the +Inf bucket equal to the count.
    for (family, l, n) in [
        ("certgate_handshake_duration_seconds", "mtls", 4.0),
        ("certgate_handshake_duration_seconds", "dead", 1.0),
        ("certgate_request_duration_seconds", "mtls", 4.0),
        ("certgate_request_duration_seconds", "slow", 1.0),
    ] {
        let listener = [("listener", l)];
        assert_eq!(
            delta(&format!("{family}_count"), &listener),
            n,
            "{family} {l}"
        );
        let inf = [("listener", l), ("le", "+Inf")];
        assert_eq!(delta(&format!("{family}_bucket"), &inf), n, "{family} {l}");
        assert!(
            delta(&format!("{family}_sum"), &listener) > 0.0,
            "{family} {l}"
        );
    }
    // The 504 waited the whole upstream_response (1 s) for its answer.
    let slow = [("listener", "slow")];
    assert!(delta("certgate_request_duration_seconds_sum", &slow) >= 1.0);
    assert_eq!(
        delta(
            "certgate_request_duration_seconds_bucket",
            &[("listener", "slow"), ("le", "0.5")]
        ),
        0.0
    );

    // Requests by the status the client got, certgate's own 400/502/504 included; no other
    // code appeared.
    let mut codes: Vec<(String, String, f64)> = after
        .samples
        .iter()
        .filter(|s| s.name == "certgate_requests_total")
        .map(|s| {
            (
                s.labels["listener"].clone(),
                s.labels["code"].clone(),
                s.value,
            )
        })
        .collect();
    codes.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let want: Vec<(String, String, f64)> = [
        ("dead", "502", 1.0),
        ("mtls", "200", 3.0),
        ("mtls", "400", 1.0),
        ("slow", "504", 1.0),
    ]
    .iter()
    .map(|(l, c, n)| ((*l).to_owned(), (*c).to_owned(), *n))
    .collect();
    assert_eq!(codes, want);

    // Upstream errors by kind.
    let upstream = |l: &str, kind: &str| {
        delta(
            "certgate_upstream_errors_total",
            &[("listener", l), ("kind", kind)],
        )
    };
    assert_eq!(upstream("dead", "connect"), 1.0);
    assert_eq!(upstream("slow", "timeout"), 1.0);
    for kind in ["connect", "timeout", "invalid", "closed"] {
        assert_eq!(upstream("mtls", kind), 0.0, "{kind}");
    }
    assert_eq!(
        upstream("dead", "timeout") + upstream("slow", "connect"),
        0.0
    );

    // Verified-chain cache: the first full handshake missed, the returning client and the
    // 400's connection (same chain) hit; the resumed session did not consult it.
    assert_eq!(delta("certgate_cert_cache_hits_total", &[]), 2.0);
    // Refused chains are lookups too, but see `refused_chains_count_as_cache_misses`.
    assert!(delta("certgate_cert_cache_misses_total", &[]) >= 1.0);

    // Process values.
    let cert_expiry = not_after(p.server.cert_der.as_ref());
    for l in ["mtls", "dead", "slow"] {
        assert_eq!(
            after.get("certgate_server_cert_not_after_seconds", &[("listener", l)]),
            Some(cert_expiry),
            "{l}"
        );
    }
    assert_eq!(
        after.get("certgate_reloads_total", &[("result", "success")]),
        Some(0.0)
    );
    assert_eq!(
        after.get("certgate_reloads_total", &[("result", "failure")]),
        Some(0.0)
    );
    let loaded = after
        .get("certgate_config_last_reload_success_timestamp_seconds", &[])
        .unwrap();
    assert!(
        loaded >= started.floor() && loaded <= unix_now(),
        "{loaded}"
    );
    let drivers: Vec<&Sample> = after
        .samples
        .iter()
        .filter(|s| s.name == "certgate_io_driver")
        .collect();
    assert_eq!(drivers.len(), 1, "{drivers:?}");
    assert_eq!(drivers[0].value, 1.0);
    let fell_back = rig.proc.stderr.text().contains("epoll");
    let driver = if fell_back { "epoll" } else { "io_uring" };
    assert_eq!(drivers[0].labels["driver"], driver);

    // A reload: counted, timestamped, and the counters of the old generation are kept and
    // summed with the new one's.
    let mut proc = rig.proc;
    let hup = unix_now();
    assert!(proc.reload(1).contains("reloaded "));
    let reloaded = scrape(rig.admin);
    assert_eq!(
        reloaded.get("certgate_reloads_total", &[("result", "success")]),
        Some(1.0)
    );
    let at = reloaded
        .get("certgate_config_last_reload_success_timestamp_seconds", &[])
        .unwrap();
    assert!(at >= hup.floor(), "{at} < {hup}");
    let mtls = [("listener", "mtls")];
    let ok = [("listener", "mtls"), ("code", "200")];
    assert_eq!(
        reloaded.get("certgate_connections_total", &mtls),
        after.get("certgate_connections_total", &mtls)
    );
    assert_eq!(
        request(rig.mtls, ClientCert::Valid, &get("/next"))
            .unwrap()
            .status,
        200
    );
    let next = wait_idle(rig.admin);
    assert_eq!(
        next.value("certgate_connections_total", &mtls),
        after.value("certgate_connections_total", &mtls) + 1.0
    );
    assert_eq!(
        next.value("certgate_requests_total", &ok),
        after.value("certgate_requests_total", &ok) + 1.0
    );

    // The admin port serves only its three paths, and only GET/HEAD.
    assert_eq!(http_get(rig.admin, "/healthz").unwrap().status, 200);
    assert_eq!(http_get(rig.admin, "/").unwrap().status, 404);
    assert_eq!(http_get(rig.admin, "/metricsx").unwrap().status, 404);
    let post = http_exchange(
        rig.admin,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(post.status, 405);
    proc.assert_plain_stderr();
    assert!(proc.terminate().success());
}

/// A chain looked up in the verified-chain cache and not found is a miss whether it then
/// verifies or not (the worker's own closing log line counts it so); /metrics must agree.
#[test]
fn refused_chains_count_as_cache_misses() {
    let rig = metrics_rig("ops-cache-miss");
    let before = scrape(rig.admin);
    assert!(request(rig.mtls, ClientCert::Foreign, &get("/")).is_err());
    assert!(request(rig.mtls, ClientCert::Expired, &get("/")).is_err());
    assert_eq!(
        request(rig.mtls, ClientCert::Valid, &get("/"))
            .unwrap()
            .status,
        200
    );
    let after = wait_idle(rig.admin);
    let misses = after.value("certgate_cert_cache_misses_total", &[])
        - before.value("certgate_cert_cache_misses_total", &[]);
    let mut proc = rig.proc;
    assert!(proc.terminate().success());
    let stopped = proc.stderr.lines_with("worker stopped");
    assert!(stopped[0].contains("misses=3"), "{stopped:?}");
    assert_eq!(misses, 3.0, "the worker counted 3 misses: {stopped:?}");
}

// ---------------------------------------------------------------------------------------------
// /readyz during a drain
// ---------------------------------------------------------------------------------------------

#[test]
fn readyz_turns_503_at_sigterm_while_the_in_flight_request_still_completes() {
    // The app takes 1.5 s to answer, so the drain takes at least that long.
    let app = Fake::start(|c| {
        if c.request().is_some() {
            std::thread::sleep(Duration::from_millis(1500));
            c.send(OK);
        }
        c.serve_ok();
    });
    let dir = temp_dir("ops-readyz");
    write_pki(&dir);
    let [port, admin] = free_ports::<2>();
    let text =
        server_toml(1, &admin_toml(admin)) + &listener_toml("tls", port, "ignore", None, app.addr);
    let mut proc = Proc::spawn(&dir, &text, |_| {});
    let admin = local(admin);
    proc.wait_ready(admin);
    let ready = http_get(admin, "/readyz").unwrap();
    assert_eq!((ready.status, ready.text().as_str()), (200, "ready\n"));

    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    let addr = local(port);
    let slow = std::thread::spawn(move || {
        let resp = request(addr, ClientCert::None, &get("/slow"));
        flag.store(true, Ordering::SeqCst);
        resp
    });
    wait_for("the slow request to reach the app", 10, || {
        !app.log.heads().is_empty()
    });
    proc.signal(libc::SIGTERM);
    let mut draining = None;
    wait_for("/readyz to say 503", 5, || {
        let r = http_get(admin, "/readyz").expect("the admin listener answers while draining");
        let in_flight = !done.load(Ordering::SeqCst);
        let d = r.status == 503;
        if d {
            draining = Some((r, in_flight));
        }
        d
    });
    let (readyz, in_flight) = draining.unwrap();
    assert_eq!(readyz.text(), "draining\n");
    assert!(
        in_flight,
        "/readyz said 503 only after the in-flight request ended"
    );
    // Alive, though not ready.
    assert_eq!(http_get(admin, "/healthz").unwrap().status, 200);
    assert!(
        !done.load(Ordering::SeqCst),
        "the drain did not wait for the request"
    );

    let resp = slow
        .join()
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"ok");
    assert!(proc.wait_exit().success());
    proc.assert_plain_stderr();
}
