//! Unit tests of `ops::metrics`: sums over workers, reload generations, the exposition text.
use super::*;
use std::io;

fn info(name: &str) -> ListenerInfo {
    ListenerInfo {
        name: name.to_owned(),
        cert_not_after: None,
    }
}

/// The value of the one sample line that starts with `series` (name and labels exactly).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

const MS: Duration = Duration::from_millis(1);

#[test]
fn counts_of_every_worker_are_summed_by_listener() {
    let m = Metrics::new();
    let w = m.generation(&[info("public"), info("internal")], 2);
    w[0].connection_opened(0);
    w[1].connection_opened(0);
    w[1].connection_opened(1);
    w[1].connection_closed(0);
    w[0].handshake_done(0, false, true, MS);
    w[1].handshake_done(0, true, true, MS);
    w[1].handshake_done(0, true, true, MS);
    w[0].handshake_failed(1, FailReason::NoCertificate);
    w[0].upstream_error(0, UpstreamErrorKind::Timeout);
    w[0].cert_cache(true);
    w[1].cert_cache(false);
    w[1].cert_cache(true);
    let t = m.encode();
    assert_eq!(
        value(&t, r#"certgate_connections_total{listener="public"}"#),
        2.0
    );
    assert_eq!(
        value(&t, r#"certgate_connections_total{listener="internal"}"#),
        1.0
    );
    assert_eq!(
        value(&t, r#"certgate_connections_active{listener="public"}"#),
        1.0
    );
    assert_eq!(
        value(
            &t,
            r#"certgate_handshakes_total{listener="public",resumed="true",client_cert="true"}"#
        ),
        2.0
    );
    assert_eq!(
        value(
            &t,
            r#"certgate_handshakes_total{listener="public",resumed="false",client_cert="false"}"#
        ),
        0.0,
        "known label sets start at zero, so rate() sees the first one"
    );
    assert_eq!(
        value(
            &t,
            r#"certgate_handshake_failures_total{listener="internal",reason="no_certificate"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &t,
            r#"certgate_handshake_failures_total{listener="public",reason="timeout"}"#
        ),
        0.0
    );
    assert_eq!(
        value(
            &t,
            r#"certgate_upstream_errors_total{listener="public",kind="timeout"}"#
        ),
        1.0
    );
    assert_eq!(value(&t, "certgate_cert_cache_hits_total"), 2.0);
    assert_eq!(value(&t, "certgate_cert_cache_misses_total"), 1.0);
}

#[test]
fn only_status_codes_that_occurred_are_listed() {
    let m = Metrics::new();
    let w = m.generation(&[info("l")], 1);
    for status in [200, 200, 404, 502, 100, 599] {
        w[0].request_done(0, status, MS);
    }
    w[0].request_done(0, 42, MS);
    let t = m.encode();
    assert_eq!(
        value(&t, r#"certgate_requests_total{listener="l",code="200"}"#),
        2.0
    );
    for code in ["100", "404", "502", "599", "other"] {
        let series = format!(r#"certgate_requests_total{{listener="l",code="{code}"}}"#);
        assert_eq!(value(&t, &series), 1.0, "{code}");
    }
    assert_eq!(t.matches("certgate_requests_total{").count(), 6, "{t}");
    assert!(sample(&t, r#"certgate_requests_total{listener="l",code="201"}"#).is_none());
}

#[test]
fn histograms_are_cumulative_and_in_seconds() {
    let m = Metrics::new();
    let w = m.generation(&[info("l")], 2);
    w[0].request_done(0, 200, Duration::from_micros(400)); // <= 0.0005
    w[1].request_done(0, 200, Duration::from_millis(1)); // == 0.001 (le is inclusive)
    w[1].request_done(0, 200, Duration::from_secs(30)); // beyond the last bound
    w[0].handshake_done(0, false, false, Duration::from_micros(50));
    let t = m.encode();
    let bucket = |le: &str| {
        value(
            &t,
            &format!(r#"certgate_request_duration_seconds_bucket{{listener="l",le="{le}"}}"#),
        )
    };
    assert_eq!(bucket("0.0005"), 1.0);
    assert_eq!(bucket("0.001"), 2.0);
    assert_eq!(bucket("10"), 2.0);
    assert_eq!(bucket("+Inf"), 3.0);
    assert_eq!(
        value(
            &t,
            r#"certgate_request_duration_seconds_count{listener="l"}"#
        ),
        3.0
    );
    let sum = value(&t, r#"certgate_request_duration_seconds_sum{listener="l"}"#);
    assert!((sum - 30.0014).abs() < 1e-9, "{sum}");
    assert_eq!(
        value(
            &t,
            r#"certgate_handshake_duration_seconds_bucket{listener="l",le="0.0001"}"#
        ),
        1.0
    );
    assert!(t.contains("# TYPE certgate_request_duration_seconds histogram"));
}

#[test]
fn a_surviving_listener_keeps_counting_across_reloads() {
    let m = Metrics::new();
    let old = m.generation(&[info("a"), info("b")], 2);
    for w in &old {
        w.connection_opened(0);
        w.connection_opened(1);
        w.request_done(1, 200, MS);
    }
    old[0].connection_closed(0);
    // Reload: `a` removed, `b` kept (now index 0), `c` added.
    let new = m.generation(&[info("b"), info("c")], 2);
    new[0].connection_opened(0);
    new[0].request_done(0, 200, MS);
    new[1].connection_opened(1);
    // A connection of the old generation is still draining and counting.
    old[1].request_done(1, 200, MS);
    let t = m.encode();
    assert_eq!(
        value(&t, r#"certgate_connections_total{listener="b"}"#),
        3.0
    );
    assert_eq!(
        value(&t, r#"certgate_requests_total{listener="b",code="200"}"#),
        4.0
    );
    assert_eq!(
        value(&t, r#"certgate_connections_total{listener="c"}"#),
        1.0
    );
    assert_eq!(
        value(&t, r#"certgate_connections_total{listener="a"}"#),
        2.0
    );
    assert_eq!(
        value(&t, r#"certgate_connections_active{listener="a"}"#),
        1.0
    );
    // Current listeners come first, in config order.
    let b = t.find(r#"{listener="b"}"#).unwrap();
    let c = t.find(r#"{listener="c"}"#).unwrap();
    let a = t.find(r#"{listener="a"}"#).unwrap();
    assert!(b < c && c < a, "{t}");

    // The old generation's last connection closes; the worker drops its handles.
    old[1].connection_closed(0);
    drop(old);
    let t2 = m.encode();
    assert_eq!(
        m.lock().live.len(),
        2,
        "blocks nobody holds are folded into the retired totals"
    );
    for series in [
        r#"certgate_connections_total{listener="a"}"#,
        r#"certgate_connections_total{listener="b"}"#,
        r#"certgate_requests_total{listener="b",code="200"}"#,
    ] {
        assert_eq!(value(&t2, series), value(&t, series), "{series}");
    }
    assert_eq!(
        value(&t2, r#"certgate_connections_active{listener="a"}"#),
        0.0
    );
    // A third generation brings `a` back: it continues from its old total.
    drop(new);
    let third = m.generation(&[info("a")], 1);
    assert_eq!(m.lock().live.len(), 1, "a reload retires unheld blocks too");
    third[0].connection_opened(0);
    assert_eq!(
        value(&m.encode(), r#"certgate_connections_total{listener="a"}"#),
        3.0
    );
}

#[test]
fn a_scrape_reads_what_worker_threads_write() {
    let m = Arc::new(Metrics::new());
    let handles = m.generation(&[info("l")], 4);
    let threads: Vec<_> = handles
        .into_iter()
        .map(|w| {
            std::thread::spawn(move || {
                for _ in 0..10_000 {
                    w.connection_opened(0);
                    w.request_done(0, 204, MS);
                    w.connection_closed(0);
                }
            })
        })
        .collect();
    let mut last = 0.0;
    while !threads.iter().all(|t| t.is_finished()) {
        let now = value(&m.encode(), r#"certgate_connections_total{listener="l"}"#);
        assert!(now >= last, "a counter went backwards: {last} -> {now}");
        last = now;
    }
    for t in threads {
        t.join().unwrap();
    }
    let t = m.encode();
    assert_eq!(
        value(&t, r#"certgate_connections_total{listener="l"}"#),
        40_000.0
    );
    assert_eq!(
        value(&t, r#"certgate_requests_total{listener="l",code="204"}"#),
        40_000.0
    );
    assert_eq!(
        value(&t, r#"certgate_connections_active{listener="l"}"#),
        0.0
    );
    assert!(
        m.lock().live.is_empty(),
        "the threads dropped their handles"
    );
}

#[test]
fn process_values_and_certificate_expiry() {
    let m = Metrics::new();
    let root = crate::pki::Ca::root("metrics root").unwrap();
    let leaf = root.server_cert(&["localhost"]).unwrap();
    let not_after = cert_not_after(&leaf.cert_der);
    assert_eq!(not_after, Some(4_070_908_800), "2099-01-01T00:00:00Z");
    assert_eq!(cert_not_after(b"not a certificate"), None);
    let _w = m.generation(
        &[
            ListenerInfo {
                name: "tls".into(),
                cert_not_after: not_after,
            },
            info("unknown"),
        ],
        1,
    );
    let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    m.process().config_loaded(at);
    m.process().reload_failed();
    m.process().reload_succeeded(at + Duration::from_secs(5));
    m.process().reload_succeeded(at + Duration::from_secs(9));
    m.process().io_driver(IoDriver::IoUring);
    let t = m.encode();
    assert_eq!(
        value(
            &t,
            r#"certgate_server_cert_not_after_seconds{listener="tls"}"#
        ),
        4_070_908_800.0
    );
    assert!(!t.contains(r#"certgate_server_cert_not_after_seconds{listener="unknown"}"#));
    assert_eq!(
        value(&t, r#"certgate_reloads_total{result="success"}"#),
        2.0
    );
    assert_eq!(
        value(&t, r#"certgate_reloads_total{result="failure"}"#),
        1.0
    );
    assert_eq!(
        value(&t, "certgate_config_last_reload_success_timestamp_seconds"),
        1_700_000_009.0
    );
    assert_eq!(value(&t, r#"certgate_io_driver{driver="io_uring"}"#), 1.0);
    assert!(!t.contains(r#"driver="epoll""#), "{t}");
}

#[test]
fn exposition_has_every_family_with_help_and_type() {
    let m = Metrics::new();
    let w = m.generation(&[info("a \"quoted\"\nname")], 1);
    w[0].request_done(0, 200, MS);
    let t = m.encode();
    for (name, kind) in [
        ("certgate_connections_total", "counter"),
        ("certgate_connections_active", "gauge"),
        ("certgate_handshakes_total", "counter"),
        ("certgate_handshake_failures_total", "counter"),
        ("certgate_handshake_duration_seconds", "histogram"),
        ("certgate_requests_total", "counter"),
        ("certgate_request_duration_seconds", "histogram"),
        ("certgate_upstream_errors_total", "counter"),
        ("certgate_cert_cache_hits_total", "counter"),
        ("certgate_cert_cache_misses_total", "counter"),
        ("certgate_server_cert_not_after_seconds", "gauge"),
        ("certgate_reloads_total", "counter"),
        (
            "certgate_config_last_reload_success_timestamp_seconds",
            "gauge",
        ),
        ("certgate_io_driver", "gauge"),
    ] {
        assert!(
            t.contains(&format!("# TYPE {name} {kind}\n")),
            "{name}:\n{t}"
        );
        assert!(t.contains(&format!("# HELP {name} ")), "{name}");
    }
    // Label values are escaped: a hostile name can't break the line structure.
    assert!(
        t.contains(r#"certgate_connections_total{listener="a \"quoted\"\nname"} 0"#),
        "{t}"
    );
    for line in t.lines().filter(|l| !l.starts_with('#')) {
        let (_, v) = line.rsplit_once(' ').unwrap();
        assert!(v == "+Inf" || v.parse::<f64>().is_ok(), "{line}");
    }
    assert!(t.ends_with('\n'));
    assert_eq!(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
}

#[test]
fn an_index_from_elsewhere_counts_nothing_and_does_not_panic() {
    let m = Metrics::new();
    let w = m.generation(&[info("l")], 1);
    w[0].connection_opened(7);
    w[0].request_done(7, 200, MS);
    w[0].handshake_failed(7, FailReason::Other);
    assert_eq!(
        value(&m.encode(), r#"certgate_connections_total{listener="l"}"#),
        0.0
    );
}

#[test]
fn handshake_failures_map_to_reasons() {
    use rustls::{AlertDescription, CertificateError as C, Error as E};
    let cases = [
        (E::NoCertificatesPresented, FailReason::NoCertificate),
        (
            E::InvalidCertificate(C::UnknownIssuer),
            FailReason::Untrusted,
        ),
        (E::InvalidCertificate(C::BadEncoding), FailReason::Untrusted),
        (
            E::InvalidCertificate(C::InvalidPurpose),
            FailReason::Untrusted,
        ),
        (E::InvalidCertificate(C::Expired), FailReason::Expired),
        (E::InvalidCertificate(C::NotValidYet), FailReason::Expired),
        (
            E::InvalidCertificate(C::BadSignature),
            FailReason::BadSignature,
        ),
        (E::InvalidCertificate(C::Revoked), FailReason::Revoked),
        (
            E::InvalidCertificate(C::ApplicationVerificationFailure),
            FailReason::Denied,
        ),
        (
            E::PeerIncompatible(rustls::PeerIncompatible::NoCipherSuitesInCommon),
            FailReason::Protocol,
        ),
        (E::DecryptError, FailReason::Protocol),
        (
            E::AlertReceived(AlertDescription::UnknownCA),
            FailReason::ClientAlert,
        ),
        (E::General("x".into()), FailReason::Other),
    ];
    for (e, want) in cases {
        assert_eq!(FailReason::of_tls(&e), want, "{e:?}");
        // As the TLS stream reports it: wrapped in io::Error.
        let io = io::Error::new(io::ErrorKind::InvalidData, e);
        assert_eq!(FailReason::of_io(&io), want, "{io:?}");
    }
    let kind = |k: io::ErrorKind| FailReason::of_io(&io::Error::from(k));
    assert_eq!(kind(io::ErrorKind::TimedOut), FailReason::Timeout);
    assert_eq!(kind(io::ErrorKind::UnexpectedEof), FailReason::Closed);
    assert_eq!(kind(io::ErrorKind::ConnectionReset), FailReason::Closed);
    assert_eq!(kind(io::ErrorKind::InvalidData), FailReason::Protocol);
    assert_eq!(kind(io::ErrorKind::OutOfMemory), FailReason::Other);
    let names: Vec<&str> = FailReason::ALL.iter().map(|r| r.as_str()).collect();
    for required in [
        "no_certificate",
        "untrusted",
        "expired",
        "bad_signature",
        "protocol",
        "timeout",
        "proxy_header",
    ] {
        assert!(names.contains(&required), "{required}");
    }
    for (i, r) in FailReason::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i, "ALL is in discriminant order");
    }
    for (i, k) in UpstreamErrorKind::ALL.iter().enumerate() {
        assert_eq!(*k as usize, i, "ALL is in discriminant order");
    }
}
