//! Trust policy end to end: CRLs (a revoked leaf, a revoked intermediate, unknown status
//! allowed or denied, a stale list still used and warned about, a revoked client shut out
//! after a reload although it returns with a cached chain and a session ticket), allowlists of
//! every kind, matching and not, in `accept` and `require` mode, and `client_ca_hints`.

use std::path::Path;
use std::sync::Arc;

use certgate::pki::Issued;
use rustls::ClientConfig;

use crate::support::*;

/// The CRL files of the test PKI, written into `dir`.
fn write_crls(dir: &Path) {
    let p = pki();
    let files = [
        ("root-empty.crl", p.root.crl(&[], false).unwrap()),
        (
            "root-revokes-int.crl",
            p.root.crl(&[p.intermediate.issued()], false).unwrap(),
        ),
        ("int-empty.crl", p.intermediate.crl(&[], false).unwrap()),
        (
            "int-revokes-a.crl",
            p.intermediate
                .crl(&[&p.client_via_intermediate], false)
                .unwrap(),
        ),
        (
            "int-revokes-a-stale.crl",
            p.intermediate
                .crl(&[&p.client_via_intermediate], true)
                .unwrap(),
        ),
    ];
    for (name, (der, pem)) in files {
        // PEM and DER alike: half of them as DER.
        if name.contains("int-") {
            std::fs::write(dir.join(name), der).unwrap();
        } else {
            std::fs::write(dir.join(name), pem).unwrap();
        }
    }
}

/// certgate in this process: `listener` is appended to the listener's keys (with client_ca).
fn start_policy(mode: &'static str, listener: &str) -> Running {
    let dir = temp_dir("policy");
    write_pki(&dir);
    write_crls(&dir);
    let echo = certgate::demo::echo::EchoApp::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let text = format!(
        "{}{listener}\n",
        config_text(&Setup::new(mode).with_ca(), echo.addr)
    );
    start_toml(dir, &text, Some(echo))
}

/// The outcome of one request: the status, or the error (with the alert's name).
fn outcome(addr: std::net::SocketAddr, cert: ClientCert) -> Result<u16, String> {
    request(addr, cert, &get("/")).map(|r| r.status)
}

fn refused(addr: std::net::SocketAddr, cert: ClientCert, alert: &str) {
    match outcome(addr, cert) {
        Err(e) => assert!(e.contains(alert), "{cert:?}: expected {alert}, got {e}"),
        Ok(status) => panic!("{cert:?}: expected {alert}, got status {status}"),
    }
}

#[test]
fn a_revoked_leaf_is_refused_and_its_siblings_are_served() {
    let running = start_policy(
        "require",
        "client_crl = [\"root-empty.crl\", \"int-revokes-a.crl\"]",
    );
    refused(running.addr, ClientCert::Valid, "CertificateRevoked");
    assert_eq!(outcome(running.addr, ClientCert::ValidB), Ok(200));
    assert_eq!(outcome(running.addr, ClientCert::ByRoot), Ok(200));
}

#[test]
fn a_revoked_intermediate_refuses_every_leaf_under_it() {
    let running = start_policy(
        "accept",
        "client_crl = [\"root-revokes-int.crl\", \"int-empty.crl\"]",
    );
    refused(running.addr, ClientCert::Valid, "CertificateRevoked");
    refused(running.addr, ClientCert::ValidB, "CertificateRevoked");
    assert_eq!(outcome(running.addr, ClientCert::ByRoot), Ok(200));
    assert_eq!(
        outcome(running.addr, ClientCert::None),
        Ok(200),
        "accept mode"
    );
}

#[test]
fn unknown_revocation_status_is_allowed_by_default_and_denied_on_request() {
    // Only the root's list: the intermediate's leaves have no CRL to be checked against.
    let running = start_policy("require", "client_crl = [\"root-empty.crl\"]");
    assert_eq!(outcome(running.addr, ClientCert::Valid), Ok(200));
    let running = start_policy(
        "require",
        "client_crl = [\"root-empty.crl\"]\ncrl_unknown_status = \"deny\"",
    );
    assert!(outcome(running.addr, ClientCert::Valid).is_err());
    assert_eq!(outcome(running.addr, ClientCert::ByRoot), Ok(200));
}

#[test]
fn a_stale_crl_is_still_used_and_check_says_so() {
    let listener = "client_crl = [\"root-empty.crl\", \"int-revokes-a-stale.crl\"]";
    let running = start_policy("require", listener);
    refused(running.addr, ClientCert::Valid, "CertificateRevoked");
    assert_eq!(outcome(running.addr, ClientCert::ValidB), Ok(200));

    let dir = temp_dir("policy-check");
    write_pki(&dir);
    write_crls(&dir);
    let text = format!(
        "{}{listener}\n",
        config_text(&Setup::new("require").with_ca(), dead_addr())
    );
    std::fs::write(dir.join("certgate.toml"), text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_certgate"))
        .args(["check", "--config"])
        .arg(dir.join("certgate.toml"))
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("int-revokes-a-stale.crl") && all.contains("past its nextUpdate"),
        "{all}"
    );
}

#[test]
fn revoking_with_a_reload_shuts_out_a_cached_chain_and_a_session_ticket() {
    let dir = temp_dir("policy-reload");
    write_pki(&dir);
    write_crls(&dir);
    std::fs::copy(dir.join("int-empty.crl"), dir.join("current.crl")).unwrap();
    let port = dead_addr().port();
    let echo = certgate::demo::echo::EchoApp::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let config = format!(
        "{}client_crl = [\"current.crl\"]\n",
        config_text(&Setup::new("require").with_ca(), echo.addr)
    )
    .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let mut proc = Proc::spawn(&dir, &config, |_| {});
    let addr = proc.wait_tcp(port);

    // One client config: its session cache keeps the ticket for the next connection.
    let client = client_config(ClientCert::Valid, false);
    let mut tls = connect(addr, client.clone());
    assert_eq!(exchange(&mut tls, &get("/")).unwrap().status, 200);
    drop(tls);
    let mut tls = connect(addr, client.clone());
    assert_eq!(exchange(&mut tls, &get("/")).unwrap().status, 200);
    assert_eq!(
        tls.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "the ticket works before the revocation"
    );
    drop(tls);

    std::fs::copy(dir.join("int-revokes-a.crl"), dir.join("current.crl")).unwrap();
    let line = proc.reload(1);
    assert!(line.contains("reloaded"), "{line}");
    // The ticket from before is offered and must not resume; the full handshake refuses.
    let mut tls = connect(addr, client);
    let e = exchange(&mut tls, &get("/")).unwrap_err();
    assert!(e.contains("CertificateRevoked"), "{e}");
    // A fresh client with the same (cached) chain is refused too; its sibling is served.
    refused(addr, ClientCert::Valid, "CertificateRevoked");
    assert_eq!(outcome(addr, ClientCert::ValidB), Ok(200));
}

fn sha256_hex(cert: &Issued) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, &cert.cert_der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[test]
fn allowlists_admit_only_what_they_name() {
    let p = pki();
    // client-a (issued by the intermediate) against each kind; client-b must be refused by
    // every list (it matches none), client-a admitted by every one.
    let lists = [
        format!("allow = {{ sha256 = [\"{}\"] }}", sha256_hex(&p.client_via_intermediate)),
        "allow = { subject_cn = [\"client-a\"] }".to_owned(),
        "allow = { subject_cn = [\"nobody\"], dns = [\"*.example.com\"], uri = [\"spiffe://x/*\"], email = [\"a@example.com\"] }".to_owned(),
    ];
    for (i, list) in lists.iter().enumerate() {
        for mode in ["require", "accept"] {
            let running = start_policy(mode, list);
            if i < 2 {
                assert_eq!(
                    outcome(running.addr, ClientCert::Valid),
                    Ok(200),
                    "{mode} {list}"
                );
            } else {
                refused(running.addr, ClientCert::Valid, "AccessDenied");
            }
            refused(running.addr, ClientCert::ValidB, "AccessDenied");
            if mode == "accept" {
                assert_eq!(outcome(running.addr, ClientCert::None), Ok(200), "{list}");
            }
        }
    }
}

#[test]
fn allowlist_names_match_sans() {
    // The test PKI's client certificates carry no SANs; make one that does.
    let p = pki();
    let leaf = {
        use rcgen::{CertificateParams, DnType, SanType};
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "svc");
        params.subject_alt_names = vec![
            SanType::DnsName("billing.svc.example.com".try_into().unwrap()),
            SanType::URI(
                "spiffe://example.com/ns/prod/sa/billing"
                    .try_into()
                    .unwrap(),
            ),
            SanType::Rfc822Name("ops@example.com".try_into().unwrap()),
        ];
        params
            .extended_key_usages
            .push(rcgen::ExtendedKeyUsagePurpose::ClientAuth);
        p.root.sign_params(params).unwrap()
    };
    let config = |leaf: &Issued| {
        let mut c = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots())
            .with_client_auth_cert(vec![leaf.cert_der.clone()], leaf.key_der.clone_key())
            .unwrap();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(c)
    };
    for (list, admitted) in [
        ("allow = { dns = [\"*.svc.example.com\"] }", true),
        ("allow = { dns = [\"*.example.com\"] }", false),
        (
            "allow = { uri = [\"spiffe://example.com/ns/prod/*\"] }",
            true,
        ),
        (
            "allow = { uri = [\"spiffe://example.com/ns/dev/*\"] }",
            false,
        ),
        ("allow = { email = [\"ops@example.com\"] }", true),
        ("allow = { email = [\"dev@example.com\"] }", false),
    ] {
        let running = start_policy("require", list);
        let mut tls = connect(running.addr, config(&leaf));
        let got = exchange(&mut tls, &get("/"));
        match (admitted, got) {
            (true, Ok(r)) => assert_eq!(r.status, 200, "{list}"),
            (false, Err(e)) => assert!(e.contains("AccessDenied"), "{list}: {e}"),
            (want, got) => panic!("{list}: admitted={want}, got {got:?}"),
        }
    }
}

#[test]
fn client_ca_hints_can_be_turned_off() {
    use std::sync::Mutex;
    /// Records the CA names the server's CertificateRequest listed.
    #[derive(Debug)]
    struct Recorder(Mutex<Option<usize>>, Arc<rustls::sign::CertifiedKey>);
    impl rustls::client::ResolvesClientCert for Recorder {
        fn resolve(
            &self,
            root_hint_subjects: &[&[u8]],
            _: &[rustls::SignatureScheme],
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            *self.0.lock().unwrap() = Some(root_hint_subjects.len());
            Some(self.1.clone())
        }
        fn has_certs(&self) -> bool {
            true
        }
    }
    let p = pki();
    for (listener, hints) in [("", 1), ("client_ca_hints = false", 0)] {
        let running = start_policy("require", listener);
        let key = provider()
            .key_provider
            .load_private_key(p.client_by_root.key_der.clone_key())
            .unwrap();
        let certified = Arc::new(rustls::sign::CertifiedKey::new(
            vec![p.client_by_root.cert_der.clone()],
            key,
        ));
        let recorder = Arc::new(Recorder(Mutex::new(None), certified));
        let mut c = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots())
            .with_client_cert_resolver(recorder.clone());
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut tls = connect(running.addr, Arc::new(c));
        assert_eq!(exchange(&mut tls, &get("/")).unwrap().status, 200);
        assert_eq!(*recorder.0.lock().unwrap(), Some(hints), "{listener:?}");
    }
}

#[test]
fn policy_keys_are_checked() {
    let base = "[[listener]]\nbind = \"127.0.0.1:0\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n\
                upstream = \"127.0.0.1:1\"\nclient_certificate_mode = \"accept\"\n";
    for (text, key, says) in [
        ("client_crl = [\"a.crl\"]", "client_crl", "needs client_ca"),
        (
            "client_ca = \"ca.pem\"\nclient_crl = []",
            "client_crl",
            "at least one",
        ),
        (
            "client_ca = \"ca.pem\"\ncrl_unknown_status = \"deny\"",
            "crl_unknown_status",
            "only applies",
        ),
        (
            "client_ca = \"ca.pem\"\nclient_crl = [\"a.crl\"]\ncrl_unknown_status = \"maybe\"",
            "line 9",
            "expected `allow` or `deny`",
        ),
        (
            "allow = { subject_cn = [\"x\"] }",
            "allow",
            "need client_ca",
        ),
        (
            "allow = { sha256 = [\"12\"] }",
            "allow.sha256",
            "not a SHA-256",
        ),
        ("allow = {}", "allow", "lists no entry"),
        (
            "client_ca = \"ca.pem\"\nallow = { dns = [\"a.*.com\"] }",
            "allow.dns",
            "leading",
        ),
        ("allow = { cn = [\"x\"] }", "cn", "unknown field"),
    ] {
        let e = certgate::config::Config::from_toml(&format!("{base}{text}\n"), Path::new("/tmp"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key) && e.contains(says), "{text}: {e}");
    }
    // sha256 pins need no client_ca.
    let pin = format!("allow = {{ sha256 = [\"{}\"] }}", "ab".repeat(32));
    assert!(
        certgate::config::Config::from_toml(&format!("{base}{pin}\n"), Path::new("/tmp")).is_ok()
    );
}
