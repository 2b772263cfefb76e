//! HTTP/2 from clients, end to end (issue 9): curl and `tests/tools/h2_peer.py` (the `h2`
//! library, and hyperframe + hpack for what h2 will not send) against certgate in front of the
//! echo app (HTTP/1.1 upstream): the identity header in each client-certificate mode, forged
//! copies dropped, large bodies both ways, concurrent streams, resumption, ALPN choices.
//! gRPC through an h2c upstream, malformed requests and connection-level abuse live in the
//! submodules.

use std::process::Command;

use crate::support::*;

mod abuse;
mod closing;
mod grpc;
mod malformed;

const H2_PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/h2_peer.py");

/// certgate (one worker) with one HTTP listener in front of `upstream` (the echo app when
/// `None`): `listener` adds keys to the listener, `sections` process-wide sections such as
/// `[limits]`. The folder holds the PKI and client.pem (leaf + intermediate) / client.key.
fn front_to(
    mode: &str,
    upstream: Option<std::net::SocketAddr>,
    listener: &str,
    sections: &str,
) -> Running {
    let dir = temp_dir("h2");
    write_pki(&dir);
    write_client_files(&dir);
    let (echo, upstream) = match upstream {
        Some(addr) => (None, addr),
        None => {
            let echo = echo_app();
            let addr = echo.addr;
            (Some(echo), addr)
        }
    };
    let ca = if mode == "ignore" {
        ""
    } else {
        "client_ca = \"ca.pem\"\n"
    };
    let text = format!(
        "{}[[listener]]\nname = \"h2\"\nbind = \"127.0.0.1:0\"\ncert = \"server.pem\"\n\
         key = \"server.key\"\nclient_certificate_mode = \"{mode}\"\n{ca}upstream = \"{upstream}\"\n\
         {listener}\n",
        server_toml(1, sections)
    );
    start_toml(dir, &text, echo)
}

/// [`front_to`] the echo app.
fn front(mode: &str, listener: &str, sections: &str) -> Running {
    front_to(mode, None, listener, sections)
}

fn write_client_files(dir: &std::path::Path) {
    let p = pki();
    let leaf = &p.client_via_intermediate;
    std::fs::write(
        dir.join("client.pem"),
        format!("{}{}", leaf.cert_pem, p.intermediate.issued().cert_pem),
    )
    .unwrap();
    std::fs::write(dir.join("client.key"), &leaf.key_pem).unwrap();
}

fn path_in(running: &Running, file: &str) -> String {
    running.dir.join(file).display().to_string()
}

/// The client certificate arguments for h2_peer.py (leaf + intermediate, ClientCert::Valid).
fn cert_args(running: &Running) -> Vec<String> {
    vec![
        "--cert".into(),
        path_in(running, "client.pem"),
        "--key".into(),
        path_in(running, "client.key"),
    ]
}

/// Runs `h2_peer.py cmd` against `running` (trusting the test root) and returns its JSON.
fn h2_peer<S: AsRef<std::ffi::OsStr>>(
    running: &Running,
    cmd: &str,
    args: &[S],
) -> serde_json::Value {
    h2_peer_at(running.addr.port(), &path_in(running, "ca.pem"), cmd, args)
}

fn h2_peer_at<S: AsRef<std::ffi::OsStr>>(
    port: u16,
    ca: &str,
    cmd: &str,
    args: &[S],
) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(H2_PEER)
        .arg(cmd)
        .args(["--port", &port.to_string(), "--ca", ca])
        .args(args)
        .output()
        .expect("python3 with `h2` is needed (.ci/run installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "h2_peer.py {cmd} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {stdout:?}"))
}

/// The request head the echo app returned in a stream's body (`--show-body`).
fn echoed_head(stream: &serde_json::Value) -> String {
    let body = stream["body"].as_str().expect("--show-body");
    body.split("body-bytes:").next().unwrap().to_owned()
}

/// `curl --http2` against `running`; (exit ok, HTTP version curl used, body).
fn curl_h2(running: &Running, path: &str, with_cert: bool) -> (bool, String, String) {
    let url = format!("https://localhost:{}{path}", running.addr.port());
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "--http2", "--cacert"])
        .arg(path_in(running, "ca.pem"))
        .args(["-w", "\n%{http_version}"]);
    if with_cert {
        cmd.arg("--cert")
            .arg(path_in(running, "client.pem"))
            .arg("--key")
            .arg(path_in(running, "client.key"));
    }
    let out = cmd
        .arg(&url)
        .output()
        .expect("curl must be installed for the tests (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, version) = text.rsplit_once('\n').unwrap_or(("", &text));
    (out.status.success(), version.to_owned(), body.to_owned())
}

fn xfcc_of(head: &str) -> Vec<String> {
    header_values(head, "x-forwarded-client-cert")
}

fn expected() -> String {
    expected_xfcc(&ClientCert::Valid.chain())
}

/// The SHA-256 (hex) of the echo app's pattern of `n` bytes.
fn pattern_sha(n: usize) -> String {
    sha256_hex(&certgate::demo::echo::pattern(n))
}

#[test]
fn curl_http2_on_a_require_listener_carries_the_exact_identity() {
    let running = front("require", "", "");
    let (ok, version, body) = curl_h2(&running, "/who", true);
    assert!(ok, "{body}");
    assert_eq!(version, "2", "curl did not get HTTP/2: {body}");
    let head = body.split("body-bytes:").next().unwrap();
    assert!(head.starts_with("GET /who HTTP/1.1\r\n"), "{head}");
    assert_eq!(xfcc_of(head), vec![expected()], "{head}");
    assert_eq!(
        header_values(head, "x-forwarded-proto"),
        vec!["https"],
        "{head}"
    );

    let (ok, _, body) = curl_h2(&running, "/anonymous", false);
    assert!(
        !ok,
        "require admitted a client without a certificate: {body}"
    );
    let heads = running.echo().heads();
    assert_eq!(
        heads.len(),
        1,
        "only the request with a certificate reached the app"
    );
}

#[test]
fn curl_http2_on_an_accept_listener_carries_the_identity_only_with_a_certificate() {
    let running = front("accept", "", "");
    let (ok, version, body) = curl_h2(&running, "/with", true);
    assert!(ok && version == "2", "{version} {body}");
    assert_eq!(xfcc_of(&body), vec![expected()], "{body}");

    let (ok, version, body) = curl_h2(&running, "/without", false);
    assert!(ok && version == "2", "{version} {body}");
    assert!(body.starts_with("GET /without HTTP/1.1\r\n"), "{body}");
    assert!(xfcc_of(&body).is_empty(), "{body}");
}

#[test]
fn curl_http2_on_an_ignore_listener_carries_no_identity() {
    let running = front("ignore", "", "");
    for with_cert in [true, false] {
        let (ok, version, body) = curl_h2(&running, "/ignored", with_cert);
        assert!(ok && version == "2", "{version} {body}");
        assert!(body.starts_with("GET /ignored HTTP/1.1\r\n"), "{body}");
        assert!(xfcc_of(&body).is_empty(), "{body}");
    }
}

/// Forged identity headers over HTTP/2 (lowercase, the only legal spelling; the uppercase
/// ones are malformed: see malformed.rs) never reach the app; certgate's own does.
#[test]
fn forged_identity_headers_on_h2_requests_are_dropped() {
    let running = front("accept", "", "");
    let forged = [
        "x-forwarded-client-cert: Hash=forged",
        "x_forwarded_client_cert: Hash=forged",
        "x-forwarded-client_cert: Hash=forged",
        "x-forwarded-proto: forged",
        "x_forwarded_proto: forged",
        "x_forwarded_for: forged",
    ];
    for with_cert in [true, false] {
        let mut args: Vec<String> = vec!["--path".into(), "/spoof".into(), "--show-body".into()];
        for f in forged {
            args.push("--header".into());
            args.push(f.into());
        }
        if with_cert {
            args.extend(cert_args(&running));
        }
        let seen = h2_peer(&running, "get", &args);
        let stream = &seen["streams"][0];
        assert_eq!(stream["status"], 200, "{seen}");
        let head = echoed_head(stream);
        assert!(
            !head.contains("forged"),
            "a client-written value reached the app:\n{head}"
        );
        assert!(
            !head.contains('_'),
            "an underscore variant reached the app:\n{head}"
        );
        let want = if with_cert { vec![expected()] } else { vec![] };
        assert_eq!(xfcc_of(&head), want, "{head}");
        assert_eq!(header_values(&head, "x-forwarded-proto"), vec!["https"]);
    }
}

#[test]
fn eight_mib_download_over_h2() {
    let running = front("ignore", "", "");
    let n = 8 << 20;
    let seen = h2_peer(&running, "get", &["--path", &format!("/bytes/{n}")]);
    let s = &seen["streams"][0];
    assert_eq!(s["status"], 200, "{seen}");
    assert_eq!(s["body_len"], n, "{seen}");
    assert_eq!(s["sha256"], pattern_sha(n), "{seen}");
    assert_eq!(seen["goaway"], serde_json::Value::Null);
}

#[test]
fn eight_mib_upload_over_h2_with_and_without_content_length() {
    let running = front("ignore", "", "");
    let n = 8 << 20;
    let want = format!("body-bytes: {n}\nbody-sha256: {}\n", pattern_sha(n));
    for framing in [None, Some("--no-content-length")] {
        let mut args = vec!["--path", "/upload", "--size", "8388608", "--show-body"];
        args.extend(framing);
        let seen = h2_peer(&running, "post", &args);
        let s = &seen["streams"][0];
        assert_eq!(s["status"], 200, "{framing:?}: {seen}");
        let body = s["body"].as_str().unwrap();
        assert!(body.ends_with(&want), "{framing:?}: the app saw {body:?}");
        let head = echoed_head(s);
        if framing.is_some() {
            // No content-length from the client: an HTTP/1.1 upstream gets a chunked body.
            assert_eq!(
                header_values(&head, "transfer-encoding"),
                vec!["chunked"],
                "{head}"
            );
        } else {
            assert_eq!(
                header_values(&head, "content-length"),
                vec![n.to_string()],
                "{head}"
            );
        }
    }
}

#[test]
fn fifty_concurrent_streams_land_on_their_own_paths() {
    let running = front("accept", "", "");
    let mut args: Vec<String> = ["--path", "/s/{i}", "--streams", "50", "--show-body"]
        .map(String::from)
        .to_vec();
    args.extend(cert_args(&running));
    let seen = h2_peer(&running, "get", &args);
    let streams = seen["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 50, "{seen}");
    assert_eq!(seen["unsent"], 0, "{seen}");
    for (i, s) in streams.iter().enumerate() {
        assert_eq!(s["status"], 200, "stream {i}: {s}");
        let head = echoed_head(s);
        assert!(
            head.starts_with(&format!("GET /s/{i} HTTP/1.1\r\n")),
            "stream {i} got another request's answer:\n{head}"
        );
        assert_eq!(xfcc_of(&head), vec![expected()], "stream {i}");
    }
    assert_eq!(running.echo().heads().len(), 50);
}

#[test]
fn a_resumed_h2_connection_keeps_the_identity_header() {
    let running = front("require", "", "");
    let mut args: Vec<String> = ["--path", "/resume", "--show-body", "--resume"]
        .map(String::from)
        .to_vec();
    args.extend(cert_args(&running));
    let seen = h2_peer(&running, "get", &args);
    assert_eq!(seen["first"]["resumed"], false, "{seen}");
    assert_eq!(
        seen["second"]["resumed"], true,
        "the second connection did not resume"
    );
    assert_eq!(seen["second"]["alpn"], "h2");
    for which in ["first", "second"] {
        let s = &seen[which]["streams"][0];
        assert_eq!(s["status"], 200, "{which}: {seen}");
        assert_eq!(xfcc_of(&echoed_head(s)), vec![expected()], "{which}");
    }
}

#[test]
fn an_http11_only_alpn_list_offers_no_h2() {
    let running = front("ignore", "alpn = [\"http/1.1\"]", "");
    let seen = h2_peer(&running, "get", &["--alpn", "h2,http/1.1", "--path", "/h1"]);
    assert_eq!(seen["alpn"], "http/1.1", "{seen}");
    assert_eq!(seen["http"], "1.1");
    assert_eq!(seen["status"], 200, "{seen}");
    // A client that offers only h2 gets no protocol it asked for.
    let seen = h2_peer(&running, "get", &["--alpn", "h2", "--path", "/h2-only"]);
    assert_ne!(seen["alpn"], "h2", "{seen}");
    let (ok, version, body) = curl_h2(&running, "/curl", false);
    assert!(ok, "{body}");
    assert_eq!(version, "1.1");
}

#[test]
fn the_default_alpn_list_prefers_h2_and_keeps_http11() {
    let running = front("ignore", "", "");
    let seen = h2_peer(&running, "get", &["--alpn", "http/1.1,h2", "--path", "/x"]);
    assert_eq!(seen["alpn"], "h2", "the server's order decides: {seen}");
    let seen = h2_peer(&running, "get", &["--alpn", "http/1.1", "--path", "/x"]);
    assert_eq!(seen["alpn"], "http/1.1", "{seen}");
    assert_eq!(seen["status"], 200, "{seen}");
}

#[test]
fn a_client_without_alpn_gets_http11() {
    let running = front("ignore", "", "");
    let seen = h2_peer(&running, "get", &["--alpn", "none", "--path", "/no-alpn"]);
    assert_eq!(seen["alpn"], serde_json::Value::Null, "{seen}");
    assert_eq!(seen["status_line"], "HTTP/1.1 200 OK", "{seen}");
    let heads = running.echo().heads();
    assert_eq!(heads.len(), 1);
    assert!(heads[0].starts_with(b"GET /no-alpn HTTP/1.1\r\n"));
}
