//! Real third-party clients: curl (with a PKCS#12 client certificate) and openssl s_client.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::*;

fn write_client_files(dir: &std::path::Path) {
    let p = pki();
    let leaf = &p.client_via_intermediate;
    let p12 = certgate::pki::pkcs12(leaf, &[p.intermediate.issued()], "s3cret").unwrap();
    std::fs::write(dir.join("client.p12"), p12).unwrap();
    std::fs::write(
        dir.join("client.pem"),
        format!("{}{}", leaf.cert_pem, p.intermediate.issued().cert_pem),
    )
    .unwrap();
    std::fs::write(dir.join("client.key"), &leaf.key_pem).unwrap();
    std::fs::write(dir.join("client-leaf.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(
        dir.join("intermediate.pem"),
        &p.intermediate.issued().cert_pem,
    )
    .unwrap();
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl must be installed for the tests (.ci/run installs it)")
}

#[test]
fn curl_with_pkcs12_client_certificate_against_require_listener() {
    let running = start(Setup::new("require").with_ca());
    write_client_files(&running.dir);
    let d = running.dir.display().to_string();
    let url = format!("https://localhost:{}/curl", running.addr.port());
    let out = curl(&[
        "--cacert",
        &format!("{d}/ca.pem"),
        "--cert-type",
        "P12",
        "--cert",
        &format!("{d}/client.p12:s3cret"),
        &url,
    ]);
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = expected_xfcc(&ClientCert::Valid.chain());
    assert_eq!(
        header_values(&body, "x-forwarded-client-cert"),
        vec![expected],
        "{body}"
    );

    // Without a certificate the require listener refuses the handshake.
    let before = running.echo().heads().len();
    let out = curl(&["--cacert", &format!("{d}/ca.pem"), &url]);
    assert!(
        !out.status.success(),
        "curl without a certificate was served"
    );
    assert_eq!(running.echo().heads().len(), before);
}

#[test]
fn curl_over_tls12_and_tls13_with_pem_client_certificate() {
    let running = start(Setup::new("accept"));
    write_client_files(&running.dir);
    let d = running.dir.display().to_string();
    let url = format!("https://localhost:{}/v", running.addr.port());
    for version in [
        ["--tlsv1.2", "--tls-max", "1.2"],
        ["--tlsv1.3", "--tls-max", "1.3"],
    ] {
        let out = curl(&[
            version[0],
            version[1],
            version[2],
            "--cacert",
            &format!("{d}/ca.pem"),
            "--cert",
            &format!("{d}/client.pem"),
            "--key",
            &format!("{d}/client.key"),
            &url,
            &url,
        ]);
        assert!(
            out.status.success(),
            "{version:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let body = String::from_utf8_lossy(&out.stdout);
        // Two URLs: curl reuses the connection, both requests carry the header.
        assert_eq!(
            header_values(&body, "x-forwarded-client-cert").len(),
            2,
            "{body}"
        );
    }
}

#[test]
fn openssl_s_client_with_client_certificate() {
    let running = start(Setup::new("require").with_ca());
    write_client_files(&running.dir);
    let d = running.dir.display().to_string();
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &running.addr.to_string(),
            "-servername",
            "localhost",
            "-CAfile",
            &format!("{d}/ca.pem"),
            "-cert",
            &format!("{d}/client-leaf.pem"),
            "-cert_chain",
            &format!("{d}/intermediate.pem"),
            "-key",
            &format!("{d}/client.key"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET /s_client HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = expected_xfcc(&ClientCert::Valid.chain());
    assert_eq!(
        header_values(&text, "x-forwarded-client-cert"),
        vec![expected]
    );
}
