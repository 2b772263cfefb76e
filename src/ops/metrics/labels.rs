//! The label values of metrics whose set is fixed, and the maps from errors to them.

use std::io;

/// Why a client's TLS handshake failed: the `reason` label of
/// `certgate_handshake_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// A certificate was required and none was sent.
    NoCertificate,
    /// The certificate does not chain to `client_ca`, has the wrong usage, is malformed, or
    /// its chain is longer than `max_client_cert_chain`.
    Untrusted,
    /// The certificate (or one in its chain) is outside its validity dates.
    Expired,
    /// A signature did not verify (CertificateVerify or a certificate in the chain).
    BadSignature,
    /// A CRL says the certificate is revoked.
    Revoked,
    /// The certificate passed, but the listener's allowlist does not name it.
    Denied,
    /// The client sent something TLS does not allow, or nothing we both support.
    Protocol,
    /// The client aborted with an alert, typically because it rejects our certificate.
    ClientAlert,
    /// No finished handshake within `timeouts.handshake`.
    Timeout,
    /// The client closed or reset the connection mid-handshake (port scanners, TCP checks).
    Closed,
    /// A listener with `proxy_protocol` got no PROXY header, a malformed or oversized one, or
    /// not all of it within `timeouts.handshake`, from a source that must send one.
    ProxyHeader,
    /// Anything else (an internal error).
    Other,
}

impl FailReason {
    pub const ALL: [FailReason; 12] = [
        FailReason::NoCertificate,
        FailReason::Untrusted,
        FailReason::Expired,
        FailReason::BadSignature,
        FailReason::Revoked,
        FailReason::Denied,
        FailReason::Protocol,
        FailReason::ClientAlert,
        FailReason::Timeout,
        FailReason::Closed,
        FailReason::ProxyHeader,
        FailReason::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::NoCertificate => "no_certificate",
            FailReason::Untrusted => "untrusted",
            FailReason::Expired => "expired",
            FailReason::BadSignature => "bad_signature",
            FailReason::Revoked => "revoked",
            FailReason::Denied => "denied",
            FailReason::Protocol => "protocol",
            FailReason::ClientAlert => "client_alert",
            FailReason::Timeout => "timeout",
            FailReason::Closed => "closed",
            FailReason::ProxyHeader => "proxy_header",
            FailReason::Other => "other",
        }
    }

    /// The reason for an error that rustls reported during the handshake.
    pub fn of_tls(e: &rustls::Error) -> FailReason {
        use rustls::{CertificateError as C, Error as E};
        match e {
            E::NoCertificatesPresented => FailReason::NoCertificate,
            E::InvalidCertificate(c) => match c {
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. } => FailReason::Expired,
                C::Revoked => FailReason::Revoked,
                C::ApplicationVerificationFailure => FailReason::Denied,
                C::BadSignature
                | C::UnsupportedSignatureAlgorithmContext { .. }
                | C::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                    FailReason::BadSignature
                }
                // Unknown issuer, wrong usage, bad encoding, chain too long, unknown
                // revocation status, ...: the chain was not accepted.
                _ => FailReason::Untrusted,
            },
            E::AlertReceived(_) => FailReason::ClientAlert,
            E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. }
            | E::InvalidMessage(_)
            | E::InvalidEncryptedClientHello(_)
            | E::PeerIncompatible(_)
            | E::PeerMisbehaved(_)
            | E::PeerSentOversizedRecord
            | E::DecryptError
            | E::NoApplicationProtocol
            | E::UnsupportedNameType
            | E::HandshakeNotComplete => FailReason::Protocol,
            _ => FailReason::Other,
        }
    }

    /// The reason for a failed handshake as the TLS stream reports it: rustls errors arrive
    /// wrapped in an `io::Error` (`InvalidData`), socket errors as themselves.
    pub fn of_io(e: &io::Error) -> FailReason {
        if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return FailReason::of_tls(tls);
        }
        match e.kind() {
            io::ErrorKind::TimedOut => FailReason::Timeout,
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => FailReason::Closed,
            io::ErrorKind::InvalidData => FailReason::Protocol,
            _ => FailReason::Other,
        }
    }
}

/// What went wrong with the upstream: the `kind` label of `certgate_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// Refused or unreachable (502).
    Connect,
    /// No response head in time, or it stopped reading or writing (504 or close).
    Timeout,
    /// A response certgate cannot relay: bad status line, framing, 101 (502).
    Invalid,
    /// Closed before or in the middle of its response.
    Closed,
}

impl UpstreamErrorKind {
    pub const ALL: [UpstreamErrorKind; 4] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Invalid,
        UpstreamErrorKind::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Invalid => "invalid",
            UpstreamErrorKind::Closed => "closed",
        }
    }
}

/// The I/O driver a worker runs on: the `driver` label of `certgate_io_driver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDriver {
    IoUring,
    /// The fallback where io_uring is unavailable (e.g. blocked by a seccomp profile).
    Epoll,
}

impl IoDriver {
    pub fn as_str(self) -> &'static str {
        match self {
            IoDriver::IoUring => "io_uring",
            IoDriver::Epoll => "epoll",
        }
    }
}
