//! What one exchange and its connection did, for the metrics and the access log: counted as
//! the exchange goes, written out once when it ends.

use std::time::{Duration, Instant as StdInstant};

use super::tls_conn::TlsConn;
use crate::ops::access_log;

/// One exchange's counts.
#[derive(Default)]
pub(super) struct Tally {
    /// When the first byte of the request head arrived; `None` between exchanges.
    pub(super) started: Option<StdInstant>,
    /// The status sent to the client (the app's or our own); 0 when none was sent.
    pub(super) status: u16,
    /// `client.received` when the exchange began.
    pub(super) received_before: u64,
    /// Bytes of a head that did not parse (never consumed, but received).
    pub(super) unparsed: u64,
    pub(super) bytes_out: u64,
    /// Request sent to the app → its response head received.
    pub(super) upstream: Option<Duration>,
    /// Method and target as received (only kept for the access log).
    pub(super) method: Vec<u8>,
    pub(super) target: Vec<u8>,
}

/// Facts about the connection the access log repeats on every line, made once.
pub(super) struct ConnInfo {
    pub(super) tls_version: &'static str,
    pub(super) resumed: bool,
    pub(super) sha256: Option<String>,
    pub(super) subject: Option<String>,
}

impl ConnInfo {
    pub(super) fn of(tls: &TlsConn) -> Self {
        let leaf = tls.peer_certificates().and_then(|chain| chain.first());
        ConnInfo {
            tls_version: access_log::tls_version(tls.protocol_version()),
            resumed: tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            sha256: leaf
                .map(|der| String::from_utf8_lossy(&crate::xfcc::sha256_hex(der)).into_owned()),
            subject: leaf.and_then(|der| {
                x509_parser::parse_x509_certificate(der)
                    .ok()
                    .map(|(_, c)| c.subject().to_string())
            }),
        }
    }
}
