//! gRPC through certgate to an h2c upstream (`upstream_protocol = "h2c"`), end to end with
//! grpcio on both sides (tests/tools/grpc_peer.py): unary calls carrying the client's
//! identity, bidi streaming, status codes and details in trailers, deadlines, cancellation
//! reaching the app, messages above gRPC's 4 MiB default; and an HTTP/1.1 client in front of
//! the same h2c upstream.

use super::*;

const GRPC_PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/grpc_peer.py");

/// The gRPC server, and certgate (require mode) in front of it over h2c.
fn grpc_front() -> (PyPeer, Running) {
    let app = PyPeer::start("grpc_peer.py", &["server"]);
    let upstream = format!("127.0.0.1:{}", app.port).parse().unwrap();
    let running = front_to("require", Some(upstream), "upstream_protocol = \"h2c\"", "");
    (app, running)
}

/// Runs grpc_peer.py's client through certgate with the valid client certificate.
fn grpc_client(running: &Running, args: &[&str]) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(GRPC_PEER)
        .arg("client")
        .arg(format!("127.0.0.1:{}", running.addr.port()))
        .args(["--ca", &path_in(running, "ca.pem")])
        .args(["--cert", &path_in(running, "client.pem")])
        .args(["--key", &path_in(running, "client.key")])
        .args(args)
        .output()
        .expect("python3 with `grpcio` is needed (.ci/run installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "grpc_peer.py client {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout:?}"))
}

#[test]
fn grpc_unary_call_carries_the_client_identity_to_the_app() {
    let (_app, running) = grpc_front();
    let seen = grpc_client(&running, &["--scenario", "unary", "--scenario", "spoof"]);
    let unary = &seen["unary"];
    assert_eq!(unary["ok"], true, "{seen}");
    assert_eq!(unary["code"], "OK");
    assert_eq!(unary["xfcc"], expected(), "the app saw another identity");
    // Forged copies in the call's metadata are dropped; other metadata passes.
    let md = &seen["spoof"]["metadata"];
    assert_eq!(
        md["x-forwarded-client-cert"],
        serde_json::json!([expected()]),
        "{md}"
    );
    assert!(md.get("x_forwarded_client_cert").is_none(), "{md}");
    assert_eq!(
        md["x-forwarded-proto"],
        serde_json::json!(["https"]),
        "{md}"
    );
    assert_eq!(md["x-other"], serde_json::json!(["kept"]), "{md}");
}

#[test]
fn grpc_bidi_stream_carries_every_message_both_ways_in_order() {
    let (_app, running) = grpc_front();
    let seen = grpc_client(&running, &["--scenario", "bidi", "--messages", "500"]);
    let bidi = &seen["bidi"];
    assert_eq!(bidi["sent"], 500, "{seen}");
    assert_eq!(bidi["received"], 500, "{seen}");
    assert_eq!(bidi["in_order"], true, "{seen}");
    assert_eq!(bidi["server"]["received"], 500, "{seen}");
    assert_eq!(bidi["server"]["completed"], true, "{seen}");
}

#[test]
fn grpc_status_code_and_details_arrive_intact_in_trailers() {
    let (_app, running) = grpc_front();
    let seen = grpc_client(&running, &["--scenario", "status"]);
    let status = &seen["status"];
    assert_eq!(status["error"], "NOT_FOUND", "{seen}");
    assert_eq!(status["details_intact"], true, "{seen}");
    let trailers = status["trailers"].as_array().unwrap();
    assert!(
        trailers.contains(&serde_json::json!(["x-why", "because"])),
        "the app's trailing metadata was lost: {seen}"
    );
}

#[test]
fn grpc_deadline_is_exceeded_on_time_and_the_app_sees_the_call_end() {
    let (_app, running) = grpc_front();
    let seen = grpc_client(&running, &["--scenario", "deadline"]);
    let d = &seen["deadline"];
    assert_eq!(d["error"], "DEADLINE_EXCEEDED", "{seen}");
    let ms = d["ms"].as_u64().unwrap();
    assert!((400..2500).contains(&ms), "a 500 ms deadline took {ms} ms");
    assert_eq!(d["server"]["cancelled"], true, "{seen}");
}

/// The client cancels a bidi call mid-stream (RST_STREAM CANCEL): certgate must pass the
/// cancellation on, so the app's handler learns the call is over (not a clean end of input).
#[test]
fn grpc_cancellation_mid_stream_reaches_the_app() {
    let (_app, running) = grpc_front();
    let seen = grpc_client(&running, &["--scenario", "cancel"]);
    let c = &seen["cancel"];
    assert_eq!(c["received_before"], 3, "{seen}");
    assert_eq!(c["after_cancel"], "CANCELLED", "{seen}");
    assert_eq!(
        c["server"]["cancelled"], true,
        "the app never learned: {seen}"
    );
    assert_eq!(c["server"]["completed"], false, "{seen}");
}

#[test]
fn grpc_messages_above_four_mib_pass_both_ways() {
    let (_app, running) = grpc_front();
    let seen = grpc_client(
        &running,
        &["--scenario", "large", "--large", &(12 << 20).to_string()],
    );
    assert_eq!(seen["large"]["ok"], true, "{seen}");
    assert_eq!(seen["large"]["size"], 12 << 20);
}

/// An HTTP/1.1 client in front of an h2c upstream: certgate speaks HTTP/2 to the app for it.
/// A gRPC request framed by hand (5-byte prefix + message) gets the app's framed answer.
#[test]
fn an_http11_client_reaches_an_h2c_upstream() {
    let (_app, running) = grpc_front();
    let mut raw = b"POST /certgate.test.Probe/Echo HTTP/1.1\r\nHost: localhost\r\n\
        Content-Type: application/grpc\r\nTE: trailers\r\nContent-Length: 10\r\n\r\n"
        .to_vec();
    let frame = [&[0u8, 0, 0, 0, 5][..], b"hello"].concat();
    raw.extend_from_slice(&frame);
    let resp = request(running.addr, ClientCert::Valid, &raw).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.head);
    assert_eq!(resp.body, frame, "{}", resp.head);
    assert_eq!(
        header_values(&resp.head, "content-type"),
        vec!["application/grpc"],
        "{}",
        resp.head
    );
}

#[test]
fn an_unreachable_h2c_upstream_is_a_502() {
    let running = front_to(
        "ignore",
        Some(dead_addr()),
        "upstream_protocol = \"h2c\"",
        "",
    );
    let seen = h2_peer(&running, "get", &["--path", "/down"]);
    assert_eq!(seen["streams"][0]["status"], 502, "{seen}");
    let resp = request(running.addr, ClientCert::None, &get("/down")).unwrap();
    assert_eq!(resp.status, 502, "{}", resp.head);
}
