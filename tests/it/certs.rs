//! The listener's own certificates: PKCS#12 files made by OpenSSL (AES and legacy 3DES
//! encryption), a wrong password and a file without a key refused by `certgate check`, and an
//! ECDSA and an RSA certificate served side by side, chosen by what the client offers
//! (checked with `openssl s_client -sigalgs`).

use std::path::Path;
use std::process::Command;

use crate::support::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `server.p12` (AES, OpenSSL 3's default) and `server-3des.p12` from the test PKI's server
/// certificate and key, both with the password in `pw.txt`; `nokey.p12` holds no key.
fn write_p12s(dir: &Path) {
    write_pki(dir);
    std::fs::write(dir.join("pw.txt"), "s3cret\n").unwrap();
    let base = [
        "pkcs12",
        "-export",
        "-in",
        "server.pem",
        "-inkey",
        "server.key",
        "-certfile",
        "ca.pem",
        "-passout",
        "pass:s3cret",
    ];
    openssl(dir, &[&base[..], &["-out", "server.p12"]].concat());
    openssl(
        dir,
        &[
            &base[..],
            &[
                "-out",
                "server-3des.p12",
                "-keypbe",
                "PBE-SHA1-3DES",
                "-certpbe",
                "PBE-SHA1-3DES",
                "-macalg",
                "sha1",
            ],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            "pkcs12",
            "-export",
            "-nokeys",
            "-in",
            "server.pem",
            "-passout",
            "pass:s3cret",
            "-out",
            "nokey.p12",
        ],
    );
}

fn config(listener_keys: &str) -> String {
    format!(
        "[server]\nworkers = 1\npin_workers = false\n[[listener]]\nbind = \"127.0.0.1:0\"\n\
         upstream = \"{}\"\n{listener_keys}\n",
        dead_addr()
    )
}

fn check(dir: &Path, text: &str) -> (bool, String) {
    std::fs::write(dir.join("certgate.toml"), text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_certgate"))
        .args(["check", "--config"])
        .arg(dir.join("certgate.toml"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The leaf certificate a rustls client is served by `server`.
fn served_leaf(server: &certgate::worker::Server) -> Vec<u8> {
    let mut tls = connect(
        server.local_addrs()[0],
        client_config(ClientCert::None, false),
    );
    let _ = exchange(&mut tls, &get("/"));
    tls.conn.peer_certificates().expect("a chain")[0].to_vec()
}

#[test]
fn pkcs12_files_from_openssl_serve_their_chain() {
    let dir = temp_dir("p12");
    write_p12s(&dir);
    for file in ["server.p12", "server-3des.p12"] {
        let text = config(&format!(
            "cert = \"{file}\"\ncert_password_file = \"pw.txt\""
        ));
        let (ok, out) = check(&dir, &text);
        assert!(ok, "{file}: {out}");
        let c = certgate::config::Config::from_toml(&text, &dir).unwrap();
        let server = certgate::app::start(certgate::app::prepare(c).unwrap()).unwrap();
        assert_eq!(
            served_leaf(&server),
            pki().server.cert_der.to_vec(),
            "{file}"
        );
        server.shutdown();
    }
}

#[test]
fn a_wrong_password_or_a_keyless_pkcs12_is_a_check_error_naming_the_file() {
    let dir = temp_dir("p12-bad");
    write_p12s(&dir);
    std::fs::write(dir.join("wrong.txt"), "nope\n").unwrap();
    for (keys, says) in [
        (
            "cert = \"server.p12\"\ncert_password_file = \"wrong.txt\"",
            "server.p12: cannot open PKCS#12",
        ),
        (
            "cert = \"nokey.p12\"\ncert_password_file = \"pw.txt\"",
            "nokey.p12: the PKCS#12 file holds no private key",
        ),
        (
            "cert = \"server.p12\"\ncert_password_file = \"missing.txt\"",
            "missing.txt",
        ),
        (
            "cert = \"server.p12\"\nkey = \"server.key\"",
            "leave `key` out",
        ),
        ("cert = \"server.pem\"", "listener[0].key"),
        (
            "cert = \"server.pem\"\nkey = \"server.key\"\ncert_password_file = \"pw.txt\"",
            "only applies to a PKCS#12",
        ),
        (
            "cert = \"server.pem\"\nkey = \"server.key\"\ncertificates = [{ cert = \"server.p12\" }]",
            "use one or the other",
        ),
        ("certificates = []", "at least one"),
    ] {
        let (ok, out) = check(&dir, &config(keys));
        assert!(!ok && out.contains(says), "{keys}: {out}");
    }
}

/// The size of the server's public key as `openssl s_client` reports it, offering `sigalgs`.
fn served_key_bits(addr: std::net::SocketAddr, sigalgs: Option<&str>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &addr.to_string(),
        "-servername",
        "localhost",
    ]);
    if let Some(algs) = sigalgs {
        cmd.args(["-sigalgs", algs]);
    }
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("Server public key is "))
        .unwrap_or_else(|| panic!("no key size in: {text}"))
        .to_owned()
}

#[test]
fn ecdsa_and_rsa_side_by_side_each_client_gets_what_it_can_verify() {
    let dir = temp_dir("dual");
    write_pki(&dir);
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "rsa.key",
            "-out",
            "rsa.pem",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ],
    );
    let text = config(
        "certificates = [{ cert = \"rsa.pem\", key = \"rsa.key\" }, \
         { cert = \"server.pem\", key = \"server.key\" }]",
    );
    let (ok, out) = check(&dir, &text);
    assert!(ok, "{out}");
    let c = certgate::config::Config::from_toml(&text, &dir).unwrap();
    let server = certgate::app::start(certgate::app::prepare(c).unwrap()).unwrap();
    let addr = server.local_addrs()[0];
    // ECDSA first whatever the config order; an RSA-only client still gets in.
    assert_eq!(served_key_bits(addr, None), "256 bit");
    assert_eq!(served_key_bits(addr, Some("ECDSA+SHA256")), "256 bit");
    assert_eq!(served_key_bits(addr, Some("RSA-PSS+SHA256")), "2048 bit");
    assert_eq!(
        served_key_bits(addr, Some("RSA+SHA256:RSA-PSS+SHA256")),
        "2048 bit"
    );
    // A key that does not fit its certificate is named by `check`.
    let swapped = config("certificates = [{ cert = \"rsa.pem\", key = \"server.key\" }]");
    let (ok, out) = check(&dir, &swapped);
    assert!(
        !ok && out.contains("rsa.pem") && out.contains("do not fit"),
        "{out}"
    );
    server.shutdown();
}
