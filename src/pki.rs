//! Certificate generation (rcgen) for `certgate demo` and the test suite: CAs, server and
//! client certificates, PKCS#12 bundles, and a ready-made demo set on disk.
//!
//! All keys are ECDSA P-256. Validity runs 2020-01-01 .. 2099-01-01 so that tests never break
//! on a date; only `expired_client_cert` is deliberately in the past.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The password of `client.p12` in the demo set.
pub const DEMO_P12_PASSWORD: &str = "certgate";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("PKCS#12 encoding failed: {0}")]
    Pkcs12(String),
    #[error("certificate does not parse: {0}")]
    Parse(String),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A certificate and its private key, in the forms callers need (DER for rustls, PEM for files).
pub struct Issued {
    pub cert_der: CertificateDer<'static>,
    /// `-----BEGIN CERTIFICATE-----` … with `\n` line endings.
    pub cert_pem: String,
    /// PKCS#8 (`-----BEGIN PRIVATE KEY-----`).
    pub key_pem: String,
    pub key_der: PrivateKeyDer<'static>,
}

// PrivateKeyDer is deliberately not Clone (copies of secrets should be visible); here a copy
// is the point, e.g. for a CA's chain.
impl Clone for Issued {
    fn clone(&self) -> Self {
        Issued {
            cert_der: self.cert_der.clone(),
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
            key_der: self.key_der.clone_key(),
        }
    }
}

// The key is secret: Debug shows only the certificate's size.
impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("cert_der_len", &self.cert_der.len())
            .finish_non_exhaustive()
    }
}

/// A certificate authority that can issue certificates.
pub struct Ca {
    issued: Issued,
    signer: Issuer<'static, KeyPair>,
    /// The certificates a peer must send after a leaf this CA issued: this CA (unless it is the
    /// root) and its non-root ancestors, nearest first.
    chain: Vec<Issued>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("issued", &self.issued)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A self-signed root CA.
    pub fn root(common_name: &str) -> Result<Ca, PkiError> {
        let params = ca_params(common_name);
        let key = new_key()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            issued: issued(cert.der().clone(), &key),
            signer: Issuer::new(params, key),
            chain: Vec::new(),
        })
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, common_name: &str) -> Result<Ca, PkiError> {
        let params = ca_params(common_name);
        let key = new_key()?;
        let cert = params.signed_by(&key, &self.signer)?;
        let issued = issued(cert.der().clone(), &key);
        let mut chain = Vec::with_capacity(self.chain.len() + 1);
        chain.push(issued.clone());
        chain.extend(self.chain.iter().cloned());
        Ok(Ca {
            issued,
            signer: Issuer::new(params, key),
            chain,
        })
    }

    /// The CA's own certificate and key.
    pub fn issued(&self) -> &Issued {
        &self.issued
    }

    /// A rustls client configuration that trusts this CA and, when given, presents `identity`
    /// (the unit tests' TLS clients).
    #[cfg(test)]
    pub fn client_config(&self, identity: Option<&Issued>) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issued.cert_der.clone()).expect("root");
        let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        match identity {
            Some(id) => builder
                .with_client_auth_cert(vec![id.cert_der.clone()], id.key_der.clone_key())
                .expect("client certificate"),
            None => builder.with_no_client_auth(),
        }
    }

    /// Intermediates to send after a leaf issued by this CA, nearest first; empty for a root.
    pub fn chain(&self) -> &[Issued] {
        &self.chain
    }

    /// A server certificate. Each name becomes a SAN: an IP address SAN when it parses as one
    /// ("127.0.0.1", "::1"), a DNS name otherwise. The first name is also the CN.
    pub fn server_cert(&self, names: &[&str]) -> Result<Issued, PkiError> {
        let mut params = leaf_params(names.first().copied().unwrap_or("certgate server"));
        for name in names {
            params.subject_alt_names.push(san(name)?);
        }
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
        self.sign(params)
    }

    /// A server certificate valid only 2000-01-01 .. 2001-01-01, for expiry tests.
    pub fn expired_server_cert(&self, names: &[&str]) -> Result<Issued, PkiError> {
        let mut params = leaf_params(names.first().copied().unwrap_or("certgate server"));
        for name in names {
            params.subject_alt_names.push(san(name)?);
        }
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        self.sign(params)
    }

    /// A client certificate with the clientAuth EKU.
    pub fn client_cert(&self, common_name: &str) -> Result<Issued, PkiError> {
        self.sign(client_params(common_name))
    }

    /// A client certificate valid only 2000-01-01 .. 2001-01-01, for expiry tests.
    pub fn expired_client_cert(&self, common_name: &str) -> Result<Issued, PkiError> {
        let mut params = client_params(common_name);
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        self.sign(params)
    }

    /// A CRL from this CA that revokes `revoked` (certificates it issued), as (DER, PEM). An
    /// `expired` one has a nextUpdate in the past (2021), else far ahead (2099).
    pub fn crl(&self, revoked: &[&Issued], expired: bool) -> Result<(Vec<u8>, String), PkiError> {
        let mut revoked_certs = Vec::with_capacity(revoked.len());
        for cert in revoked {
            let (_, parsed) = x509_parser::parse_x509_certificate(&cert.cert_der)
                .map_err(|e| PkiError::Parse(e.to_string()))?;
            revoked_certs.push(rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(parsed.raw_serial()),
                revocation_time: rcgen::date_time_ymd(2020, 1, 2),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: if expired {
                rcgen::date_time_ymd(2021, 1, 1)
            } else {
                rcgen::date_time_ymd(2099, 1, 1)
            },
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.signer)?;
        Ok((crl.der().to_vec(), crl.pem()?))
    }

    /// A certificate from params the caller made (names, SANs, extensions of its choosing),
    /// with a fresh key, signed by this CA.
    pub fn sign_params(&self, params: CertificateParams) -> Result<Issued, PkiError> {
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<Issued, PkiError> {
        let key = new_key()?;
        let cert = params.signed_by(&key, &self.signer)?;
        Ok(issued(cert.der().clone(), &key))
    }
}

/// A self-signed client certificate (issuer == subject), as Azure Container Apps accepts.
pub fn self_signed_client(common_name: &str) -> Result<Issued, PkiError> {
    let key = new_key()?;
    let cert = client_params(common_name).self_signed(&key)?;
    Ok(issued(cert.der().clone(), &key))
}

/// PKCS#12 bundle of the key, cert and chain, readable by OpenSSL 3 / curl `--cert-type P12`
/// (PBES2 with AES-256-CBC + PBKDF2-HMAC-SHA256 and an HMAC-SHA256 MAC — the modern defaults,
/// no legacy provider needed). `chain` is the intermediates, nearest first.
pub fn pkcs12(leaf: &Issued, chain: &[&Issued], password: &str) -> Result<Vec<u8>, PkiError> {
    use p12_keystore::{
        Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKey,
        PrivateKeyChain,
    };
    let p12 = |e: p12_keystore::error::Error| PkiError::Pkcs12(e.to_string());
    let key = PrivateKey::from_der(leaf.key_der.secret_der()).map_err(p12)?;
    let mut certs = Vec::with_capacity(chain.len() + 1);
    for cert in std::iter::once(leaf).chain(chain.iter().copied()) {
        certs.push(Certificate::from_der(&cert.cert_der).map_err(p12)?);
    }
    // The local key id ties the key bag to the leaf's cert bag; the leaf's hash is unique.
    let key_id = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &leaf.cert_der);
    let mut store = KeyStore::new();
    store.add_entry(
        "certgate",
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(key_id.as_ref(), key, certs)),
    );
    // Set explicitly rather than trusting the crate's defaults, which could change.
    store
        .writer(password)
        .encryption_algorithm(EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
        .mac_algorithm(MacAlgorithm::HmacSha256)
        .encryption_iterations(10_000)
        .mac_iterations(10_000)
        .write()
        .map_err(p12)
}

/// Paths written by [`write_demo_set`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoFiles {
    /// Root CA: the listener's `client_ca`, and curl's `--cacert`.
    pub ca_pem: PathBuf,
    /// Server leaf (SANs localhost, 127.0.0.1, ::1) followed by the intermediate.
    pub server_pem: PathBuf,
    pub server_key: PathBuf,
    /// Client leaf followed by the intermediate.
    pub client_pem: PathBuf,
    pub client_key: PathBuf,
    /// Key, client leaf and intermediate; password [`DEMO_P12_PASSWORD`].
    pub client_p12: PathBuf,
}

/// Writes a ready-made set to `dir` (created if missing): a root CA, one intermediate that
/// issues both the server and the client certificate (so the client presents a two-certificate
/// chain and the header's `Chain` shows it), and the client as PKCS#12.
pub fn write_demo_set(dir: &Path) -> Result<DemoFiles, PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let root = Ca::root("certgate demo root CA")?;
    let inter = root.intermediate("certgate demo intermediate CA")?;
    let server = inter.server_cert(&["localhost", "127.0.0.1", "::1"])?;
    let client = inter.client_cert("certgate demo client")?;
    let p12 = pkcs12(&client, &[inter.issued()], DEMO_P12_PASSWORD)?;

    let files = DemoFiles {
        ca_pem: dir.join("ca.pem"),
        server_pem: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_pem: dir.join("client.pem"),
        client_key: dir.join("client.key"),
        client_p12: dir.join("client.p12"),
    };
    let with_chain = |leaf: &Issued| format!("{}{}", leaf.cert_pem, inter.issued().cert_pem);
    write_file(&files.ca_pem, root.issued().cert_pem.as_bytes(), false)?;
    write_file(&files.server_pem, with_chain(&server).as_bytes(), false)?;
    write_file(&files.server_key, server.key_pem.as_bytes(), true)?;
    write_file(&files.client_pem, with_chain(&client).as_bytes(), false)?;
    write_file(&files.client_key, client.key_pem.as_bytes(), true)?;
    write_file(&files.client_p12, &p12, true)?;
    Ok(files)
}

fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(path, contents).map_err(err)?;
    // Private keys readable by the owner only, as ssh and openssl expect.
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    Ok(())
}

fn new_key() -> Result<KeyPair, PkiError> {
    Ok(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?)
}

fn issued(cert_der: CertificateDer<'static>, key: &KeyPair) -> Issued {
    let key_der = key.serialize_der();
    Issued {
        cert_pem: pem("CERTIFICATE", &cert_der),
        cert_der,
        key_pem: key.serialize_pem(),
        key_der: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der)),
    }
}

/// PEM with `\n` line endings on every platform (rcgen uses CRLF on Windows), matching what
/// OpenSSL writes and what `xfcc` encodes.
fn pem(label: &str, der: &[u8]) -> String {
    let mut b64 = vec![0u8; der.len().div_ceil(3) * 4];
    let n = crate::xfcc::base64_encode(der, &mut b64);
    let mut out = String::with_capacity(n + n / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in b64[..n].chunks(64) {
        // base64 output is ASCII.
        out.extend(line.iter().map(|&b| char::from(b)));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

fn base_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = base_params(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn leaf_params(common_name: &str) -> CertificateParams {
    let mut params = base_params(common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Lets verifiers find the issuer by key id, as public CAs' leaves do.
    params.use_authority_key_identifier_extension = true;
    params
}

fn client_params(common_name: &str) -> CertificateParams {
    let mut params = leaf_params(common_name);
    params
        .extended_key_usages
        .push(ExtendedKeyUsagePurpose::ClientAuth);
    params
}

fn san(name: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    // rcgen accepts any ASCII as a DNS SAN; check the syntax a TLS client will match against
    // (a wildcard certificate's `*.` label, then a name).
    let checked = name.strip_prefix("*.").unwrap_or(name);
    rustls_pki_types::DnsName::try_from(checked).map_err(|e| PkiError::InvalidName {
        name: name.to_owned(),
        reason: e.to_string(),
    })?;
    let dns = name
        .try_into()
        .map_err(|e: rcgen::Error| PkiError::InvalidName {
            name: name.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(SanType::DnsName(dns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::UnixTime;

    fn verify_client(
        leaf: &Issued,
        root: &Issued,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), webpki::Error> {
        let anchor = webpki::anchor_from_trusted_cert(&root.cert_der)?;
        let ee = webpki::EndEntityCert::try_from(&leaf.cert_der)?;
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            intermediates,
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map(|_| ())
    }

    fn names(cert: &Issued) -> (String, String) {
        let c = p12_keystore::Certificate::from_der(&cert.cert_der).unwrap();
        (c.subject().to_owned(), c.issuer().to_owned())
    }

    #[test]
    fn client_cert_from_intermediate_verifies_against_root() {
        let root = Ca::root("test root").unwrap();
        let inter = root.intermediate("test intermediate").unwrap();
        let client = inter.client_cert("alice").unwrap();
        let chain = [inter.issued().cert_der.clone()];
        verify_client(&client, root.issued(), &chain).unwrap();
        // Without the intermediate there is no path to the root.
        assert!(verify_client(&client, root.issued(), &[]).is_err());
        let (subject, issuer) = names(&client);
        assert_eq!(subject, "CN=alice");
        assert_eq!(issuer, "CN=test intermediate");
        assert_eq!(inter.chain().len(), 1);
        assert!(root.chain().is_empty());
    }

    #[test]
    fn client_cert_is_accepted_by_rustls_client_verifier() {
        let root = Ca::root("rustls root").unwrap();
        let inter = root.intermediate("rustls intermediate").unwrap();
        let client = inter.client_cert("bob").unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root.issued().cert_der.clone()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider,
        )
        .build()
        .unwrap();
        verifier
            .verify_client_cert(
                &client.cert_der,
                &[inter.issued().cert_der.clone()],
                UnixTime::now(),
            )
            .unwrap();
    }

    #[test]
    fn server_cert_has_ip_and_dns_sans() {
        let root = Ca::root("server root").unwrap();
        let server = root
            .server_cert(&["localhost", "127.0.0.1", "::1"])
            .unwrap();
        let ee = webpki::EndEntityCert::try_from(&server.cert_der).unwrap();
        for name in ["localhost", "127.0.0.1", "::1"] {
            let name = rustls_pki_types::ServerName::try_from(name).unwrap();
            ee.verify_is_valid_for_subject_name(&name).unwrap();
        }
        let other = rustls_pki_types::ServerName::try_from("example.com").unwrap();
        assert!(ee.verify_is_valid_for_subject_name(&other).is_err());
        let anchor = webpki::anchor_from_trusted_cert(&root.issued().cert_der).unwrap();
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .unwrap();
    }

    #[test]
    fn invalid_server_name_is_an_error() {
        let root = Ca::root("bad names").unwrap();
        for bad in ["not a name", "caf\u{e9}.example", ""] {
            let err = root.server_cert(&[bad]).unwrap_err();
            assert!(
                matches!(err, PkiError::InvalidName { .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn expired_client_cert_is_past_not_after() {
        let root = Ca::root("expiry root").unwrap();
        let old = root.expired_client_cert("old").unwrap();
        let err = verify_client(&old, root.issued(), &[]).unwrap_err();
        assert!(matches!(err, webpki::Error::CertExpired { .. }), "{err:?}");
        // And it was otherwise valid: at a time inside its validity it verifies.
        let anchors = [webpki::anchor_from_trusted_cert(&root.issued().cert_der).unwrap()];
        let ee = webpki::EndEntityCert::try_from(&old.cert_der).unwrap();
        let mid_2000 = UnixTime::since_unix_epoch(std::time::Duration::from_secs(962_000_000));
        // webpki does not date-check trust anchors, so only the leaf's own dates matter here.
        let result = ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &[],
            mid_2000,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        );
        assert!(result.is_ok(), "{:?}", result.err());
    }

    #[test]
    fn self_signed_client_has_issuer_equal_to_subject() {
        let me = self_signed_client("selfie").unwrap();
        let (subject, issuer) = names(&me);
        assert_eq!(subject, "CN=selfie");
        assert_eq!(subject, issuer);
        // Signed by its own key: it verifies with itself as the only anchor.
        verify_client(&me, &me, &[]).unwrap();
    }

    #[test]
    fn pem_matches_rcgen_and_key_is_pkcs8() {
        let root = Ca::root("pem root").unwrap();
        let leaf = root.client_cert("pem").unwrap();
        assert!(leaf.cert_pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(leaf.cert_pem.ends_with("-----END CERTIFICATE-----\n"));
        assert!(leaf.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(matches!(leaf.key_der, PrivateKeyDer::Pkcs8(_)));
        let params = CertificateParams::default();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            pem("CERTIFICATE", cert.der()),
            cert.pem().replace("\r\n", "\n")
        );
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("certgate-pki-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn openssl_available() -> bool {
        std::process::Command::new("openssl")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    #[test]
    fn pkcs12_round_trips_and_opens_in_openssl() {
        let root = Ca::root("p12 root").unwrap();
        let inter = root.intermediate("p12 intermediate").unwrap();
        let client = inter.client_cert("p12 client").unwrap();
        let bytes = pkcs12(&client, &[inter.issued()], "s3cret").unwrap();

        let store = p12_keystore::KeyStore::from_pkcs12(
            &bytes,
            "s3cret",
            p12_keystore::Pkcs12ImportPolicy::Strict,
        )
        .unwrap();
        let (_, chain) = store.private_key_chain().unwrap();
        assert_eq!(chain.key().as_der(), client.key_der.secret_der());
        assert_eq!(chain.certs().len(), 2);
        assert_eq!(chain.certs()[0].as_der(), client.cert_der.as_ref());

        if !openssl_available() {
            eprintln!("openssl not on PATH: skipping the OpenSSL check");
            return;
        }
        let dir = temp_dir("p12");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("client.p12");
        std::fs::write(&path, &bytes).unwrap();
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .arg("pkcs12")
                .arg("-in")
                .arg(&path)
                .args(["-passin", "pass:s3cret"])
                .args(args)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(out.status.success(), "openssl {args:?}: {stderr}");
            String::from_utf8(out.stdout).unwrap()
        };
        let certs = run(&["-nokeys"]);
        assert!(certs.contains(client.cert_pem.trim()), "{certs}");
        assert!(certs.contains(inter.issued().cert_pem.trim()), "{certs}");
        let key = run(&["-nocerts", "-nodes"]);
        assert!(key.contains("-----BEGIN PRIVATE KEY-----"), "{key}");
        // A wrong password must fail (the MAC is checked).
        let bad = std::process::Command::new("openssl")
            .arg("pkcs12")
            .arg("-in")
            .arg(&path)
            .args(["-passin", "pass:wrong", "-nokeys"])
            .output()
            .unwrap();
        assert!(!bad.status.success());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn demo_set_is_written_and_consistent() {
        let dir = temp_dir("demo");
        let files = write_demo_set(&dir).unwrap();
        for path in [
            &files.ca_pem,
            &files.server_pem,
            &files.server_key,
            &files.client_pem,
            &files.client_key,
            &files.client_p12,
        ] {
            assert!(path.is_file(), "{}", path.display());
        }
        let server_pem = std::fs::read_to_string(&files.server_pem).unwrap();
        assert_eq!(server_pem.matches("BEGIN CERTIFICATE").count(), 2);
        let client_pem = std::fs::read_to_string(&files.client_pem).unwrap();
        assert_eq!(client_pem.matches("BEGIN CERTIFICATE").count(), 2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&files.client_key)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let p12 = std::fs::read(&files.client_p12).unwrap();
        p12_keystore::KeyStore::from_pkcs12(
            &p12,
            DEMO_P12_PASSWORD,
            p12_keystore::Pkcs12ImportPolicy::Strict,
        )
        .unwrap();
        if openssl_available() {
            let out = std::process::Command::new("openssl")
                .args(["verify", "-CAfile"])
                .arg(&files.ca_pem)
                .arg("-untrusted")
                .arg(&files.client_pem)
                .arg(&files.client_pem)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{text} {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
