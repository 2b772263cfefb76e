//! The certificates a listener serves: PEM files, PKCS#12 files (the chain and the key in one,
//! as Azure custom domains take them), and several side by side, chosen per handshake by what
//! the client can verify (an ECDSA certificate for everyone who can, RSA for the rest), as
//! nginx does with two `ssl_certificate` lines.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureAlgorithm;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{load_certs, load_key, read_file, TlsError};
use crate::config::Identity;

/// Reads one identity's chain (leaf first) and key; every failure names its file.
pub fn load(
    identity: &Identity,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    match &identity.key {
        Some(key) => Ok((load_certs(&identity.cert)?, load_key(key)?)),
        None => load_pkcs12(identity),
    }
}

fn load_pkcs12(
    identity: &Identity,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let path = &identity.cert;
    let bad = |what: String| TlsError::Pem {
        path: path.clone(),
        what,
    };
    let password = match &identity.password_file {
        Some(file) => {
            let bytes = read_file(file)?;
            let text = String::from_utf8(bytes).map_err(|_| TlsError::Pem {
                path: file.clone(),
                what: "the PKCS#12 password is not UTF-8".into(),
            })?;
            // A password file written by `echo` ends in a newline that is not part of it.
            text.trim_end_matches(['\n', '\r']).to_owned()
        }
        None => String::new(),
    };
    let data = read_file(path)?;
    let store = p12_keystore::KeyStore::from_pkcs12(
        &data,
        &password,
        p12_keystore::Pkcs12ImportPolicy::Strict,
    )
    .map_err(|e| {
        bad(format!(
            "cannot open PKCS#12 (wrong password, or not PKCS#12?): {e}"
        ))
    })?;
    let (_, chain) = store
        .private_key_chain()
        .ok_or_else(|| bad("the PKCS#12 file holds no private key with its certificate".into()))?;
    let certs: Vec<CertificateDer<'static>> = chain
        .certs()
        .iter()
        .map(|c| CertificateDer::from(c.as_der().to_vec()))
        .collect();
    if certs.is_empty() {
        return Err(bad("the PKCS#12 key has no certificate".into()));
    }
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(chain.key().as_der().to_vec()));
    Ok((certs, key))
}

/// Every identity's chain with its signing key, the key checked against the leaf.
pub fn certified(
    listener: &str,
    identities: &[Identity],
    provider: &CryptoProvider,
) -> Result<Vec<Arc<CertifiedKey>>, TlsError> {
    let mut keys = Vec::with_capacity(identities.len());
    for identity in identities {
        let (chain, key) = load(identity)?;
        let mismatch = |what: String| TlsError::KeyMismatch {
            listener: listener.to_owned(),
            cert: identity.cert.clone(),
            key: identity
                .key
                .clone()
                .unwrap_or_else(|| identity.cert.clone()),
            what,
        };
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| mismatch(e.to_string()))?;
        let certified = CertifiedKey::new(chain, signing);
        certified
            .keys_match()
            .map_err(|e| mismatch(e.to_string()))?;
        keys.push(Arc::new(certified));
    }
    // Cheaper handshakes first: ECDSA and Ed25519 before RSA.
    keys.sort_by_key(|k| matches!(k.key.algorithm(), SignatureAlgorithm::RSA));
    Ok(keys)
}

/// Picks, per handshake, the first certificate (ECDSA before RSA) whose key can sign with a
/// scheme the client offered.
#[derive(Debug)]
pub struct ByKeyType(pub Vec<Arc<CertifiedKey>>);

impl ResolvesServerCert for ByKeyType {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let offered = hello.signature_schemes();
        self.0
            .iter()
            .find(|k| k.key.choose_scheme(offered).is_some())
            // No overlap: the first one, so the client gets a handshake failure it can
            // explain (rustls then reports the missing scheme).
            .or_else(|| self.0.first())
            .cloned()
    }
}
