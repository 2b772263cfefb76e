//! Client-certificate verification for the `accept` and `require` modes.
//!
//! Without a trust store any certificate is accepted (Azure Container Apps' behaviour: the app
//! judges what it receives), but the client must still prove it holds the key: rustls calls
//! `verify_tls1x_signature` on its CertificateVerify whatever `verify_client_cert` answered.
//! With a trust store, webpki builds the path through the intermediates the client sent.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};

use super::cache::{self, CacheConfig};
use crate::policy::allow::AllowList;

thread_local! {
    /// The SHA-256 (hex) of the last leaf this worker's verifiers refused. rustls' error does
    /// not carry the certificate, and the refusal log line should name it: the TLS stream
    /// takes it right after rustls returns the error, before anything else can run on this
    /// thread (see `take_refused_leaf`).
    static REFUSED: std::cell::Cell<Option<[u8; 64]>> = const { std::cell::Cell::new(None) };
}

/// The hash of the leaf refused by the last failed verification on this thread, if any.
pub fn take_refused_leaf() -> Option<[u8; 64]> {
    REFUSED.with(std::cell::Cell::take)
}

/// Who a listener lets in, as loaded from its config.
pub struct Policy {
    pub mandatory: bool,
    /// `client_ca`: path building against these anchors.
    pub roots: Option<RootCertStore>,
    /// `client_crl`: checked for every certificate of the chain.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// `crl_unknown_status = "deny"`.
    pub deny_unknown_status: bool,
    /// `client_ca_hints`: list the CA names in the CertificateRequest.
    pub hints: bool,
    pub allow: AllowList,
    pub max_chain: usize,
}

#[derive(Debug)]
pub struct ClientVerifier {
    mandatory: bool,
    /// webpki path building against the configured `client_ca`, if any.
    trusted: Option<Arc<dyn ClientCertVerifier>>,
    hints: bool,
    allow: AllowList,
    max_chain: usize,
    algs: WebPkiSupportedAlgorithms,
    cache: CacheConfig,
}

impl ClientVerifier {
    pub fn new(
        policy: Policy,
        provider: &Arc<CryptoProvider>,
        cache: CacheConfig,
    ) -> Result<Self, rustls::server::VerifierBuilderError> {
        let trusted = match policy.roots {
            Some(roots) => {
                let mut builder =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                if !policy.mandatory {
                    builder = builder.allow_unauthenticated();
                }
                if !policy.crls.is_empty() {
                    // Leaf and intermediates alike; a list past its nextUpdate is still used
                    // (rustls' default), and said so at load.
                    builder = builder.with_crls(policy.crls);
                    if !policy.deny_unknown_status {
                        builder = builder.allow_unknown_revocation_status();
                    }
                }
                Some(builder.build()?)
            }
            None => None,
        };
        Ok(Self {
            mandatory: policy.mandatory,
            trusted,
            hints: policy.hints,
            allow: policy.allow,
            max_chain: policy.max_chain.max(1),
            algs: provider.signature_verification_algorithms,
            cache,
        })
    }

    /// The allowlist, after the chain passed: `access_denied` for a certificate it does not
    /// name.
    fn admitted(&self, end_entity: &CertificateDer<'_>) -> Result<(), Error> {
        if self.allow.admits(end_entity) {
            Ok(())
        } else {
            Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    /// Chain length, X.509 well-formedness, then path building (or the cache) when a trust
    /// store is set.
    fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        if intermediates.len() + 1 > self.max_chain {
            // Long chains cost path building and make the forwarded header huge.
            return Err(Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(ChainTooLong(self.max_chain))),
            )));
        }
        match &self.trusted {
            Some(v) => {
                // A chain this worker verified before (same trust generation, not expired)
                // skips path building and the chain's signature checks.
                let ders: Vec<&[u8]> = std::iter::once(end_entity.as_ref())
                    .chain(intermediates.iter().map(|c| c.as_ref()))
                    .collect();
                let key = cache::key(&self.cache, &ders);
                // An entry was made only after the whole policy passed (the allowlist and the
                // CRLs are part of the trust generation in the key).
                if cache::is_verified(&self.cache, &key, now) {
                    return Ok(ClientCertVerified::assertion());
                }
                every_entry_is_a_certificate(end_entity, intermediates)?;
                let verified = v.verify_client_cert(end_entity, intermediates, now)?;
                self.admitted(end_entity)?;
                let chain: Vec<CertificateDer<'_>> =
                    ders.iter().map(|d| CertificateDer::from(*d)).collect();
                cache::insert_verified(&self.cache, key, &chain, now);
                Ok(verified)
            }
            None => {
                every_entry_is_a_certificate(end_entity, intermediates)?;
                self.admitted(end_entity)?;
                Ok(ClientCertVerified::assertion())
            }
        }
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        match &self.trusted {
            Some(v) if self.hints => v.root_hint_subjects(),
            // No hints: clients then offer whatever certificate they have (Azure lists over a
            // hundred issuers, and a client that finds its own missing sends none).
            _ => &[],
        }
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verdict = self.verify_chain(end_entity, intermediates, now);
        if verdict.is_err() {
            REFUSED.with(|r| r.set(Some(crate::xfcc::sha256_hex(end_entity))));
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Every entry the client presented must be X.509, in every mode: the forwarded header
/// carries the whole chain, and path building reads only the entries it needs, so an empty or
/// junk entry after a valid leaf would otherwise reach the app as a "certificate" (OpenSSL
/// and Envoy refuse such a message too). rustls answers `bad_certificate`.
fn every_entry_is_a_certificate(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<(), Error> {
    for cert in std::iter::once(end_entity).chain(intermediates) {
        // webpki's parser, the one path building uses; it reads any X.509 certificate, CA or not.
        webpki::EndEntityCert::try_from(cert)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    }
    Ok(())
}

#[derive(Debug)]
struct ChainTooLong(usize);

impl std::fmt::Display for ChainTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "client certificate chain longer than {} certificates",
            self.0
        )
    }
}

impl std::error::Error for ChainTooLong {}
