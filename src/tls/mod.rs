//! TLS policy: one rustls `ServerConfig` per listener, built once at startup from its config.
//!
//! Everything here runs at setup time; the per-connection path only clones the `Arc` it returns.
//! Certificate and key files are read and checked here, and every failure names the file.

pub mod cache;
pub mod certs;
pub mod tickets;
pub mod upstream;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, ProducesTickets, ServerSessionMemoryCache};
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use x509_parser::prelude::FromDer;

use crate::config::{ClientCertMode, Listener};

/// ALPN: certgate speaks HTTP/1.1 to clients only.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Number of TLS 1.2 sessions kept per listener for session-ID resumption.
const SESSION_CACHE_ENTRIES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Pem { path: PathBuf, what: String },
    #[error("{path}: {what}")]
    BadCa { path: PathBuf, what: String },
    #[error("listener {listener}: certificate {cert} and key {key} do not fit together: {what}")]
    KeyMismatch {
        listener: String,
        cert: PathBuf,
        key: PathBuf,
        what: String,
    },
    #[error("listener {listener}: {what}")]
    Setup { listener: String, what: String },
}

/// The crypto provider every certgate config uses: ring, with rustls' default suite order
/// (AEAD suites only: rustls implements no other kind).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads every `CERTIFICATE` block of a PEM file, in file order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: format!("invalid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no CERTIFICATE block found".into(),
        });
    }
    for (i, cert) in certs.iter().enumerate() {
        webpki::EndEntityCert::try_from(cert).map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: format!("certificate #{} is not valid X.509: {e:?}", i + 1),
        })?;
    }
    Ok(certs)
}

/// Reads revocation lists: every `X509 CRL` block of a PEM file, or one DER CRL. Each must
/// parse as a CRL (webpki's parser, the one that will check against it). Also returns a line
/// for each list whose nextUpdate has passed: it is still used (a stale list still names
/// revoked certificates), and the line says to refresh it.
pub fn load_crls(
    paths: &[PathBuf],
) -> Result<(Vec<CertificateRevocationListDer<'static>>, Vec<String>), TlsError> {
    let mut crls = Vec::new();
    let mut stale = Vec::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for path in paths {
        let bytes = read_file(path)?;
        let bad = |what: String| TlsError::Pem {
            path: path.clone(),
            what,
        };
        let found: Vec<CertificateRevocationListDer<'static>> = if bytes.starts_with(b"-----") {
            CertificateRevocationListDer::pem_slice_iter(&bytes)
                .collect::<Result<_, _>>()
                .map_err(|e| bad(format!("invalid PEM: {e}")))?
        } else {
            vec![CertificateRevocationListDer::from(bytes)]
        };
        if found.is_empty() {
            return Err(bad("no X509 CRL block found (PEM or DER expected)".into()));
        }
        for (i, crl) in found.into_iter().enumerate() {
            webpki::OwnedCertRevocationList::from_der(&crl)
                .map_err(|e| bad(format!("CRL #{} does not parse: {e:?}", i + 1)))?;
            let next_update =
                x509_parser::revocation_list::CertificateRevocationList::from_der(&crl)
                    .ok()
                    .and_then(|(_, c)| c.next_update())
                    .map(|t| t.timestamp());
            if let Some(t) = next_update.filter(|t| *t < now) {
                stale.push(format!(
                    "{}: CRL #{} is past its nextUpdate ({}); still used, refresh it",
                    path.display(),
                    i + 1,
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64)
                    )
                ));
            }
            crls.push(crl);
        }
    }
    Ok((crls, stale))
}

/// Reads the first private key of a PEM file: PKCS#8, SEC1 (`EC PRIVATE KEY`) or PKCS#1.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        what: match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no private key found (expected PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY)"
                    .into()
            }
            other => format!("invalid private key PEM: {other}"),
        },
    })
}

/// Loads the trust anchors for client certificates.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::BadCa {
            path: path.to_owned(),
            what: format!("not usable as a trust anchor: {e}"),
        })?;
    }
    Ok(roots)
}

/// What a listener's TLS setup produced; the summary is printed by `certgate check`.
pub struct ListenerTls {
    pub config: Arc<ServerConfig>,
    /// The listener's cache settings and trust generation, shared with its sessions.
    pub cache: cache::CacheConfig,
    /// Unix time of the serving certificate's notAfter, for the expiry metric.
    pub not_after: Option<i64>,
    pub summary: String,
    /// Things to fix that do not stop the listener (a CRL past its nextUpdate), logged once
    /// per load.
    pub warnings: Vec<String>,
}

/// Builds the rustls config for one listener, with a fresh random session-ticket key. Slow and
/// thorough: reads and validates every file.
pub fn server_config(
    listener: &Listener,
    max_client_chain: usize,
    cache: cache::CacheConfig,
) -> Result<ListenerTls, TlsError> {
    server_config_with(listener, max_client_chain, cache, None)
}

/// [`server_config`] with the listener's ticketer given: keys shared through `ticket_keys`
/// ([`tickets::TicketKeys::ticketer`]) or the previous generation's. `None`: a fresh random one.
/// Ignored when the listener does not resume sessions.
pub fn server_config_with(
    listener: &Listener,
    max_client_chain: usize,
    cache: cache::CacheConfig,
    ticketer: Option<Arc<dyn ProducesTickets>>,
) -> Result<ListenerTls, TlsError> {
    let provider = provider();
    let served = certs::certified(&listener.name, &listener.identities, &provider)?;
    let roots = match &listener.client_ca {
        Some(path) => Some((path, load_roots(path)?)),
        None => None,
    };
    let (crls, warnings) = load_crls(&listener.client_crl)?;
    let setup = |what: String| TlsError::Setup {
        listener: listener.name.clone(),
        what,
    };

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| setup(format!("protocol versions: {e}")))?;
    let verifier = match listener.client_certificate_mode {
        ClientCertMode::Ignore => None,
        mode => Some(
            verify::ClientVerifier::new(
                verify::Policy {
                    mandatory: mode == ClientCertMode::Require,
                    roots: roots.as_ref().map(|(_, r)| r.clone()),
                    crls: crls.clone(),
                    deny_unknown_status: listener.crl_deny_unknown,
                    hints: listener.client_ca_hints,
                    allow: listener.allow.clone(),
                    max_chain: max_client_chain,
                },
                &provider,
                cache.clone(),
            )
            .map_err(|e| setup(format!("client_ca: {e}")))?,
        ),
    };
    let builder = match verifier {
        None => builder.with_no_client_auth(),
        Some(v) => builder.with_client_cert_verifier(Arc::new(v)),
    };
    let leaf_count = served.first().map_or(0, |k| k.cert.len());
    // The expiry metric follows the certificate that expires first.
    let not_after = served
        .iter()
        .filter_map(|k| k.end_entity_cert().ok())
        .filter_map(|leaf| crate::ops::metrics::cert_not_after(leaf))
        .min();
    let mut config = builder.with_cert_resolver(Arc::new(certs::ByKeyType(served)));
    // A `tcp` listener relays whatever protocol the client speaks: it offers no ALPN (the
    // list is empty), so a client that offers its own (e.g. `postgresql`) is not refused for
    // a missing overlap.
    config.alpn_protocols = listener.alpn.clone();
    // The server picks the suite (rustls' order: AES-256-GCM, AES-128-GCM, ChaCha20): every
    // suite offered is a strong AEAD, but scanners rightly expect a server-side order.
    config.ignore_client_order = true;
    if listener.session_resumption {
        // One ticketer per listener, shared by every worker of it: a client resumes on any
        // worker, but never across listeners, so a ticket issued under a laxer client-cert
        // policy cannot skip a stricter one (nginx CVE-2025-23419). Keys shared through
        // `ticket_keys` are derived per listener and trust for the same reason.
        config.ticketer = match ticketer {
            Some(ticketer) => ticketer,
            None => rustls::crypto::ring::Ticketer::new()
                .map_err(|e| setup(format!("session ticketer: {e}")))?,
        };
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    } else {
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }

    let summary = format!(
        "listener {name}: bind {bind} -> upstream {up}; client_certificate_mode={mode}; \
         trust={trust}; certificate chain of {leaf_count}; session_resumption={res}",
        name = listener.name,
        bind = listener.bind,
        up = listener.upstream_authority,
        mode = listener.client_certificate_mode,
        trust = match &roots {
            Some((path, r)) => format!("{} ({} anchors)", path.display(), r.len()),
            None => "any certificate (proof of key possession only)".into(),
        },
        res = listener.session_resumption,
    );
    let mut summary = summary;
    if !crls.is_empty() {
        summary.push_str(&format!(
            "; {} CRL(s), unknown status {}",
            crls.len(),
            if listener.crl_deny_unknown {
                "denied"
            } else {
                "allowed"
            }
        ));
    }
    if !listener.allow.is_empty() {
        summary.push_str("; allowlist");
    }
    Ok(ListenerTls {
        config: Arc::new(config),
        cache,
        not_after,
        summary,
        warnings,
    })
}
