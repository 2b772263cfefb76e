//! SNI sites (`[[listener.site]]`) end to end: each server name gets its site's certificate,
//! client policy and upstream; wildcards; no SNI and unknown names get the default site (or,
//! with `strict_sni`, `unrecognized_name`); a request whose Host belongs to another site gets
//! 421 on every request of a keep-alive connection, on a resumed session and without SNI; and
//! a session ticket from one site never resumes on another.

use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use certgate::demo::echo::EchoApp;
use certgate::pki::Issued;
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, HandshakeKind, StreamOwned};

use crate::support::*;

struct SiteCerts {
    api: Issued,
    other: Issued,
}

fn site_certs() -> &'static SiteCerts {
    static CERTS: OnceLock<SiteCerts> = OnceLock::new();
    CERTS.get_or_init(|| SiteCerts {
        api: pki()
            .root
            .server_cert(&["api.example.com", "*.internal.example.com"])
            .unwrap(),
        other: pki().root.server_cert(&["other.example.com"]).unwrap(),
    })
}

/// The listener's own policy (default site: `localhost`, no client certificate, upstream
/// `plain`); site 0: `api.example.com` and `*.internal.example.com`, client certificates
/// required against `ca.pem`, upstream `secure`; site 1: `other.example.com`, `accept` mode,
/// upstream `plain`.
struct Sites {
    running: Running,
    plain: EchoApp,
    secure: EchoApp,
}

fn start_sites(extra: &str) -> Sites {
    let dir = temp_dir("sites");
    write_pki(&dir);
    let c = site_certs();
    for (name, cert) in [("api", &c.api), ("other", &c.other)] {
        std::fs::write(dir.join(format!("{name}.pem")), &cert.cert_pem).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), &cert.key_pem).unwrap();
    }
    let plain = EchoApp::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let secure = EchoApp::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let text = format!(
        "[server]\nworkers = 1\npin_workers = false\n\
         [[listener]]\nname = \"edge\"\nbind = \"127.0.0.1:0\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
         upstream = \"{plain}\"\n{extra}\n\
         [[listener.site]]\nserver_names = [\"api.example.com\", \"*.internal.example.com\"]\n\
         cert = \"api.pem\"\nkey = \"api.key\"\nclient_certificate_mode = \"require\"\n\
         client_ca = \"ca.pem\"\nupstream = \"{secure}\"\n\
         [[listener.site]]\nserver_names = [\"other.example.com\"]\n\
         cert = \"other.pem\"\nkey = \"other.key\"\nclient_certificate_mode = \"accept\"\n",
        plain = plain.addr,
        secure = secure.addr,
    );
    Sites {
        running: start_toml(dir, &text, None),
        plain,
        secure,
    }
}

/// A TLS client connection with `sni` as its server name (an IP address sends no SNI).
fn connect_as(addr: SocketAddr, config: Arc<ClientConfig>, sni: &str) -> Tls {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    StreamOwned::new(ClientConnection::new(config, name).unwrap(), tcp)
}

fn get_host(host: &str) -> Vec<u8> {
    format!("GET /site HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

/// The leaf a handshake with `sni` is served, and whether it succeeded.
fn served(addr: SocketAddr, sni: &str, cert: ClientCert) -> Result<Vec<u8>, String> {
    let mut tls = connect_as(addr, client_config(cert, false), sni);
    exchange(&mut tls, &get_host(sni)).map_err(|e| e.to_string())?;
    Ok(tls.conn.peer_certificates().unwrap()[0].to_vec())
}

#[test]
fn each_server_name_gets_its_sites_certificate_policy_and_upstream() {
    let s = start_sites("");
    let addr = s.running.addr;
    let c = site_certs();
    assert_eq!(
        served(addr, "api.example.com", ClientCert::Valid).unwrap(),
        c.api.cert_der.to_vec()
    );
    assert_eq!(
        served(addr, "x.internal.example.com", ClientCert::Valid).unwrap(),
        c.api.cert_der.to_vec(),
        "wildcard"
    );
    let e = served(addr, "api.example.com", ClientCert::None).unwrap_err();
    assert!(e.contains("CertificateRequired"), "site policy: {e}");
    assert_eq!(
        served(addr, "other.example.com", ClientCert::None).unwrap(),
        c.other.cert_der.to_vec()
    );
    assert_eq!(
        served(addr, "localhost", ClientCert::None).unwrap(),
        pki().server.cert_der.to_vec(),
        "the listener's own policy is the default site"
    );
    // The api site's requests went to its upstream, with the client's certificate; the
    // others' to the listener's upstream.
    let secure: Vec<String> = s
        .secure
        .heads()
        .iter()
        .map(|h| String::from_utf8_lossy(h).into_owned())
        .collect();
    assert_eq!(secure.len(), 2, "{secure:?}");
    assert!(secure
        .iter()
        .all(|h| h.contains("X-Forwarded-Client-Cert: Hash=")));
    assert_eq!(s.plain.heads().len(), 2);
}

/// Accepts any server certificate: for looking at which one a name is served, not at whether
/// it fits the name.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[test]
fn unknown_names_and_no_sni_get_the_default_site() {
    let s = start_sites("");
    let addr = s.running.addr;
    let mut config = (*client_config(ClientCert::None, false)).clone();
    config
        .dangerous()
        .set_certificate_verifier(Arc::new(AnyCert(provider())));
    // a.b.internal.example.com is two labels below the wildcard: no site claims it.
    let mut tls = connect_as(addr, Arc::new(config), "a.b.internal.example.com");
    let r = exchange(&mut tls, &get_host("a.b.internal.example.com")).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        tls.conn.peer_certificates().unwrap()[0].to_vec(),
        pki().server.cert_der.to_vec()
    );
    // No SNI (an IP address as the server name): the default site, for names no site claims.
    let mut tls = connect_as(addr, client_config(ClientCert::None, false), "127.0.0.1");
    let r = exchange(&mut tls, &get_host("127.0.0.1")).unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn host_must_belong_to_the_site_the_handshake_chose_on_every_request() {
    let s = start_sites("");
    let addr = s.running.addr;
    let valid = || client_config(ClientCert::Valid, false);
    // A keep-alive connection to the api site: same-site names pass, another site's is 421.
    let mut tls = connect_as(addr, valid(), "api.example.com");
    assert_eq!(
        exchange(&mut tls, &get_host("api.example.com"))
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        exchange(&mut tls, &get_host("y.internal.example.com:8443"))
            .unwrap()
            .status,
        200,
        "the same site by its wildcard, with a port"
    );
    let r = exchange(&mut tls, &get_host("other.example.com")).unwrap();
    assert_eq!(r.status, 421, "second request on a keep-alive connection");
    // An absolute-form target overrides Host, and is checked as such.
    let mut tls = connect_as(addr, valid(), "api.example.com");
    let raw = b"GET http://other.example.com/ HTTP/1.1\r\nHost: api.example.com\r\n\r\n";
    assert_eq!(exchange(&mut tls, raw).unwrap().status, 421);
    // The default site answers only names no site claims: not the api site's, with or without
    // SNI.
    for sni in ["localhost", "127.0.0.1"] {
        let mut tls = connect_as(addr, client_config(ClientCert::None, false), sni);
        let r = exchange(&mut tls, &get_host("api.example.com")).unwrap();
        assert_eq!(r.status, 421, "SNI {sni}");
    }
    // A site does not answer for the default site's names either.
    let mut tls = connect_as(
        addr,
        client_config(ClientCert::None, false),
        "other.example.com",
    );
    assert_eq!(
        exchange(&mut tls, &get_host("localhost")).unwrap().status,
        421
    );
    // Nothing misdirected reached an app.
    let misdirected = |heads: Vec<Vec<u8>>| {
        heads
            .iter()
            .filter(|h| {
                let h = String::from_utf8_lossy(h);
                h.contains("other.example.com") || h.contains("Host: localhost")
            })
            .count()
    };
    assert_eq!(misdirected(s.secure.heads()), 0);
    assert_eq!(misdirected(s.plain.heads()), 0);
}

/// A client session store that ignores the server name: it offers whatever ticket it got
/// last to any server, the way an attacker replaying a ticket would.
#[derive(Debug)]
struct AnyName(ClientSessionMemoryCache);

impl AnyName {
    fn one() -> ServerName<'static> {
        ServerName::try_from("any.invalid").unwrap()
    }
}

impl ClientSessionStore for AnyName {
    fn set_kx_hint(&self, _: ServerName<'static>, g: rustls::NamedGroup) {
        self.0.set_kx_hint(Self::one(), g)
    }
    fn kx_hint(&self, _: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.0.kx_hint(&Self::one())
    }
    fn set_tls12_session(
        &self,
        _: ServerName<'static>,
        v: rustls::client::Tls12ClientSessionValue,
    ) {
        self.0.set_tls12_session(Self::one(), v)
    }
    fn tls12_session(&self, _: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.0.tls12_session(&Self::one())
    }
    fn remove_tls12_session(&self, _: &ServerName<'static>) {
        self.0.remove_tls12_session(&Self::one())
    }
    fn insert_tls13_ticket(
        &self,
        _: ServerName<'static>,
        v: rustls::client::Tls13ClientSessionValue,
    ) {
        self.0.insert_tls13_ticket(Self::one(), v)
    }
    fn take_tls13_ticket(
        &self,
        _: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.0.take_tls13_ticket(&Self::one())
    }
}

#[test]
fn sessions_resume_within_a_site_never_across_and_421_holds_after_resumption() {
    let s = start_sites("");
    let addr = s.running.addr;
    for tls12 in [false, true] {
        let mut config = (*client_config(ClientCert::Valid, tls12)).clone();
        config.resumption =
            rustls::client::Resumption::store(Arc::new(AnyName(ClientSessionMemoryCache::new(8))));
        let config = Arc::new(config);
        let mut tls = connect_as(addr, config.clone(), "api.example.com");
        assert_eq!(
            exchange(&mut tls, &get_host("api.example.com"))
                .unwrap()
                .status,
            200
        );
        drop(tls);
        // Same site and name (rustls resumes only for the SNI the session began with): resumed,
        // and Host is still checked on the resumed connection.
        let mut tls = connect_as(addr, config.clone(), "api.example.com");
        assert_eq!(
            exchange(&mut tls, &get_host("x.internal.example.com"))
                .unwrap()
                .status,
            200
        );
        assert_eq!(
            tls.conn.handshake_kind(),
            Some(HandshakeKind::Resumed),
            "tls12={tls12}"
        );
        assert_eq!(
            exchange(&mut tls, &get_host("other.example.com"))
                .unwrap()
                .status,
            421
        );
        drop(tls);
        // The api site's ticket offered to the other site: a full handshake.
        let mut tls = connect_as(addr, config.clone(), "other.example.com");
        assert_eq!(
            exchange(&mut tls, &get_host("other.example.com"))
                .unwrap()
                .status,
            200
        );
        assert_eq!(
            tls.conn.handshake_kind(),
            Some(HandshakeKind::Full),
            "tls12={tls12}"
        );
    }
}

#[test]
fn strict_sni_refuses_unknown_names_and_no_sni_with_unrecognized_name() {
    let s = start_sites("strict_sni = true");
    let addr = s.running.addr;
    for sni in ["127.0.0.1", "unknown.example.com", "localhost"] {
        let e = served(addr, sni, ClientCert::None).unwrap_err();
        assert!(e.contains("UnrecognisedName"), "{sni}: {e}");
    }
    assert!(served(addr, "other.example.com", ClientCert::None).is_ok());
}

#[test]
fn site_keys_are_checked() {
    let base = "[[listener]]\nbind = \"127.0.0.1:0\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n\
                upstream = \"127.0.0.1:1\"\n";
    for (text, key, says) in [
        (
            "[[listener.site]]\nserver_names = [\"a.example.com\"]\n\
             [[listener.site]]\nserver_names = [\"A.example.com\"]\n",
            "listener[0].site[1].server_names",
            "already claimed by listener[0].site[0]",
        ),
        (
            "[[listener.site]]\nserver_names = []\n",
            "listener[0].site[0].server_names",
            "must not be empty",
        ),
        (
            "[[listener.site]]\nserver_names = [\"a.example.com\"]\nbind = \"127.0.0.1:1\"\n",
            "bind",
            "unknown field",
        ),
        (
            "[[listener.site]]\nserver_names = [\"a.example.com\"]\nclient_crl = [\"x.crl\"]\n",
            "listener[0].site[0].client_crl",
            "needs client_ca",
        ),
        (
            "[[listener.passthrough]]\nserver_names = [\"a.example.com\"]\nupstream = \"127.0.0.1:2\"\n\
             [[listener.site]]\nserver_names = [\"a.example.com\"]\n",
            "listener[0].site[0].server_names",
            "passthrough",
        ),
        ("strict_sni = true\n", "listener[0].strict_sni", "needs"),
    ] {
        let e = certgate::config::Config::from_toml(
            &format!("{base}{text}"),
            std::path::Path::new("/tmp"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(key) && e.contains(says), "{text}: {e}");
    }
}
