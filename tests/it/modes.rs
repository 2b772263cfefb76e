//! Every client-certificate mode × presented certificate × trust store: the TLS outcome and
//! what the upstream received.

use crate::support::*;
use rustls::AlertDescription;

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Outcome {
    /// Served, and the upstream got exactly this chain's header (or none).
    Served { xfcc: bool },
    /// The handshake failed with this alert; nothing reached the upstream.
    Refused(AlertDescription),
}

fn expect(mode: &str, ca: bool, cert: ClientCert) -> Outcome {
    use ClientCert::*;
    use Outcome::*;
    match (mode, ca, cert) {
        ("ignore", _, _) => Served { xfcc: false },
        (_, _, None) if mode == "require" => Refused(AlertDescription::CertificateRequired),
        (_, _, None) => Served { xfcc: false },
        (_, false, _) => Served { xfcc: true },
        (_, true, Valid | ValidB | ByRoot) => Served { xfcc: true },
        (_, true, Expired) => Refused(AlertDescription::CertificateExpired),
        (_, true, SelfSigned | Foreign) => Refused(AlertDescription::UnknownCA),
    }
}

fn run_matrix(mode: &'static str, ca: bool) {
    let setup = if ca {
        Setup::new(mode).with_ca()
    } else {
        Setup::new(mode)
    };
    let running = start(setup);
    for cert in [
        ClientCert::None,
        ClientCert::Valid,
        ClientCert::SelfSigned,
        ClientCert::Foreign,
        ClientCert::Expired,
    ] {
        let want = expect(mode, ca, cert);
        let before = running.echo().heads().len();
        let got = request(running.addr, cert, &get("/matrix"));
        let case = format!("mode={mode} client_ca={ca} cert={cert:?}");
        match want {
            Outcome::Served { xfcc } => {
                let resp = got.unwrap_or_else(|e| panic!("{case}: expected a response, got {e}"));
                assert_eq!(resp.status, 200, "{case}");
                let head = resp.upstream_head();
                let values = header_values(&head, "x-forwarded-client-cert");
                if xfcc {
                    assert_eq!(values, vec![expected_xfcc(&cert.chain())], "{case}");
                } else {
                    assert!(values.is_empty(), "{case}: unexpected header {values:?}");
                }
            }
            Outcome::Refused(alert) => {
                let err = got.expect_err(&format!("{case}: expected the handshake to fail"));
                let alert_name = format!("{alert:?}");
                assert!(
                    err.contains(&alert_name),
                    "{case}: expected alert {alert_name}, got {err}"
                );
                assert_eq!(
                    running.echo().heads().len(),
                    before,
                    "{case}: upstream was reached"
                );
            }
        }
    }
}

#[test]
fn ignore_mode_never_asks_and_never_forwards() {
    run_matrix("ignore", false);
}

#[test]
fn ignore_mode_with_client_ca_still_never_asks() {
    run_matrix("ignore", true);
}

#[test]
fn accept_mode_without_trust_store_forwards_any_certificate() {
    run_matrix("accept", false);
}

#[test]
fn accept_mode_with_trust_store_rejects_untrusted_and_expired() {
    run_matrix("accept", true);
}

#[test]
fn require_mode_without_trust_store_demands_a_certificate() {
    run_matrix("require", false);
}

#[test]
fn require_mode_with_trust_store_demands_a_trusted_certificate() {
    run_matrix("require", true);
}

#[test]
fn client_signed_directly_by_the_root_is_trusted() {
    let running = start(Setup::new("require").with_ca());
    let resp = request(running.addr, ClientCert::ByRoot, &get("/")).unwrap();
    let values = header_values(&resp.upstream_head(), "x-forwarded-client-cert");
    assert_eq!(values, vec![expected_xfcc(&ClientCert::ByRoot.chain())]);
}

#[test]
fn tls12_client_gets_the_same_header() {
    let running = start(Setup::new("accept"));
    let mut tls = connect(running.addr, client_config(ClientCert::Valid, true));
    let resp = exchange(&mut tls, &get("/")).unwrap();
    assert_eq!(
        tls.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let values = header_values(&resp.upstream_head(), "x-forwarded-client-cert");
    assert_eq!(values, vec![expected_xfcc(&ClientCert::Valid.chain())]);
}

#[test]
fn chain_longer_than_the_limit_fails_the_handshake() {
    let mut setup = Setup::new("accept");
    setup.extra = "[limits]\nmax_client_cert_chain = 1\n".into();
    let running = start(setup);
    // Leaf + intermediate = 2 certificates > 1.
    let err = request(running.addr, ClientCert::Valid, &get("/")).unwrap_err();
    assert!(err.contains("alert"), "{err}");
    assert!(running.echo().heads().is_empty());
    // A lone self-signed certificate is within the limit.
    assert!(request(running.addr, ClientCert::SelfSigned, &get("/")).is_ok());
}

/// A client that signs its CertificateVerify with a key other than its certificate's must fail:
/// without a trust store, proof of possession is the only thing that stands between a stolen
/// certificate and the app.
#[test]
fn forged_certificate_verify_fails_the_handshake() {
    let running = start(Setup::new("accept"));
    let p = pki();
    // The self-signed client's certificate with the foreign client's private key.
    let config = forger_config(vec![p.self_signed.cert_der.clone()], &p.foreign.key_der);
    let mut tls = connect(running.addr, config);
    let err = exchange(&mut tls, &get("/")).unwrap_err();
    assert!(
        err.contains("DecryptError") || err.contains("alert"),
        "{err}"
    );
    assert!(running.echo().heads().is_empty());
}

/// A client presenting `chain` but signing with `key`: its CertificateVerify cannot be valid.
fn forger_config(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: &rustls::pki_types::PrivateKeyDer<'static>,
) -> std::sync::Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct Fixed(std::sync::Arc<rustls::sign::CertifiedKey>);
    impl rustls::client::ResolvesClientCert for Fixed {
        fn resolve(
            &self,
            _: &[&[u8]],
            _: &[rustls::SignatureScheme],
        ) -> Option<std::sync::Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
        fn has_certs(&self) -> bool {
            true
        }
    }
    let signer = provider()
        .key_provider
        .load_private_key(key.clone_key())
        .unwrap();
    let certified = rustls::sign::CertifiedKey::new(chain, signer);
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots())
        .with_client_cert_resolver(std::sync::Arc::new(Fixed(std::sync::Arc::new(certified))));
    std::sync::Arc::new(config)
}

#[test]
fn cached_chain_skips_verification_but_never_proof_of_possession() {
    let mut setup = Setup::new("require").with_ca();
    setup.resumption = false; // every connection is a full handshake
    let running = start(setup);
    let legit = client_config(ClientCert::Valid, false);
    for _ in 0..3 {
        let resp = exchange(&mut connect(running.addr, legit.clone()), &get("/")).unwrap();
        assert_eq!(resp.status, 200);
    }
    // The same (now cached) chain, signed with somebody else's key.
    let p = pki();
    let chain = vec![
        p.client_via_intermediate.cert_der.clone(),
        p.intermediate.issued().cert_der.clone(),
    ];
    let before = running.echo().heads().len();
    let mut forged = connect(running.addr, forger_config(chain, &p.foreign.key_der));
    let err = exchange(&mut forged, &get("/forged")).unwrap_err();
    assert!(err.contains("alert"), "{err}");
    assert_eq!(running.echo().heads().len(), before);
    let stats = running.stop();
    let hits: u64 = stats.iter().map(|s| s.hits).sum();
    let misses: u64 = stats.iter().map(|s| s.misses).sum();
    // First handshake verifies (miss), the next two and the forger's chain are hits.
    assert_eq!((hits, misses), (3, 1), "{stats:?}");
}

#[test]
fn resumption_works_across_workers() {
    let mut setup = Setup::new("accept");
    setup.workers = 2;
    let running = start(setup);
    let config = client_config(ClientCert::Valid, false);
    let expected = vec![expected_xfcc(&ClientCert::Valid.chain())];
    for i in 0..8 {
        let mut tls = connect(running.addr, config.clone());
        let resp = exchange(&mut tls, &get("/w")).unwrap();
        assert_eq!(
            header_values(&resp.upstream_head(), "x-forwarded-client-cert"),
            expected
        );
        let want = if i == 0 {
            rustls::HandshakeKind::Full
        } else {
            rustls::HandshakeKind::Resumed
        };
        assert_eq!(tls.conn.handshake_kind(), Some(want), "connection {i}");
    }
}
