//! The PROXY protocol header certgate *receives*: a load balancer in front (HAProxy
//! `send-proxy`/`send-proxy-v2`, AWS NLB, ...) writes one before the TLS bytes, naming the client
//! it accepted. Pure: fed the bytes read so far, [`parse`] says complete (with the header's
//! length, so that not one byte of the ClientHello behind it is taken), need more, or invalid.
//! The headers themselves are decoded by the `ppp` crate; this module decides which versions a
//! listener takes, bounds the size, and turns the result into the addresses certgate uses.
//!
//! What the addresses become (HAProxy's own rules when it receives a header):
//! * v1 `TCP4`/`TCP6`, and v2 `PROXY` over TCP (IPv4 or IPv6 stream): the source is the client
//!   address everywhere (X-Forwarded-For, Forwarded, access log, logs, the PROXY
//!   header a `tcp` listener sends on), the destination the local one;
//! * v2 `LOCAL` (the balancer's own health check), v1 `UNKNOWN`, and v2 `PROXY` for another
//!   family or transport: the connection's own addresses stand. v2 TLVs are ignored.

use std::net::SocketAddr;

use ppp::{v1, v2, PartialResult};
use serde::Deserialize;

use crate::cidr::Cidr;

/// Longest v1 header, CRLF included (the spec's 107 bytes).
pub const MAX_V1: usize = 107;
/// Longest v2 header accepted: the 16-byte fixed part and up to 4080 bytes of addresses and
/// TLVs. The spec allows 65535 after the fixed part; balancers send tens of bytes (addresses,
/// a few TLVs), and even a header carrying a client certificate DER in a TLV fits.
pub const MAX_V2: usize = 4096;

/// `listener.proxy_protocol`: which PROXY header a connection must start with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyAccept {
    /// None: the connection starts with TLS (the default).
    #[default]
    Off,
    /// The text header.
    V1,
    /// The binary header.
    V2,
    /// Either, told apart by the first byte.
    Any,
}

impl ProxyAccept {
    /// The most bytes a header of this mode may take.
    pub fn max_len(self) -> usize {
        match self {
            ProxyAccept::Off => 0,
            ProxyAccept::V1 => MAX_V1,
            ProxyAccept::V2 | ProxyAccept::Any => MAX_V2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProxyAccept::Off => "off",
            ProxyAccept::V1 => "v1",
            ProxyAccept::V2 => "v2",
            ProxyAccept::Any => "any",
        }
    }
}

/// `proxy_protocol` and `proxy_protocol_from` of one listener, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyIn {
    pub accept: ProxyAccept,
    /// Sources that must send a header; empty: every source (when `accept` is not `Off`).
    pub from: Vec<Cidr>,
}

impl ProxyIn {
    /// Whether a connection from `peer` must start with a PROXY header. Other sources are
    /// served as if the listener took none (a header from them is then just bad TLS).
    pub fn expected_from(&self, peer: std::net::IpAddr) -> bool {
        self.accept != ProxyAccept::Off
            && (self.from.is_empty() || self.from.iter().any(|net| net.contains(peer)))
    }
}

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// The client connection as the proxy saw it.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// v2 `LOCAL`: the proxy speaks for itself (a health check); the socket's addresses stand.
    Local,
    /// v1 `UNKNOWN`, or a v2 `PROXY` for a family or transport other than TCP over IPv4/IPv6:
    /// the socket's addresses stand.
    Unknown,
}

impl Received {
    /// (source, destination) to use instead of the socket's, if the header names them.
    pub fn addresses(self) -> Option<(SocketAddr, SocketAddr)> {
        match self {
            Received::Proxied {
                source,
                destination,
            } => Some((source, destination)),
            Received::Local | Received::Unknown => None,
        }
    }
}

/// The outcome of [`parse`] on the bytes read so far.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// A whole header: what it says, and how many bytes it took (the rest is TLS).
    Complete(Received, usize),
    /// Every byte so far belongs to a header that is not finished yet.
    Incomplete,
    Invalid(BadHeader),
}

/// Why the bytes are not an acceptable header. Each closes the connection.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum BadHeader {
    #[error("the connection does not start with a PROXY header ({} expected)", expected_name(*.0))]
    Missing(ProxyAccept),
    #[error("PROXY header longer than {0} bytes")]
    TooLong(usize),
    #[error("malformed PROXY v1 header: {0}")]
    V1(#[from] v1::BinaryParseError),
    #[error("malformed PROXY v2 header: {0}")]
    V2(#[from] v2::ParseError),
}

fn expected_name(accept: ProxyAccept) -> &'static str {
    match accept {
        ProxyAccept::V1 => "v1",
        ProxyAccept::V2 => "v2",
        ProxyAccept::Off | ProxyAccept::Any => "v1 or v2",
    }
}

/// Looks at the first bytes of a connection that must start with a header of `accept`'s
/// version. Never asks for more than [`ProxyAccept::max_len`] bytes in all.
pub fn parse(accept: ProxyAccept, bytes: &[u8]) -> Parsed {
    let Some(&first) = bytes.first() else {
        return Parsed::Incomplete;
    };
    // The v2 signature starts with CR, v1 with 'P': one byte tells them apart.
    let is_v2 = first == v2::PROTOCOL_PREFIX[0];
    let is_v1 = first == v1::PROTOCOL_PREFIX.as_bytes()[0];
    match accept {
        ProxyAccept::V2 | ProxyAccept::Any if is_v2 => parse_v2(bytes),
        ProxyAccept::V1 | ProxyAccept::Any if is_v1 => parse_v1(bytes),
        _ => Parsed::Invalid(BadHeader::Missing(accept)),
    }
}

fn parse_v1(bytes: &[u8]) -> Parsed {
    let window = &bytes[..bytes.len().min(MAX_V1)];
    // ppp is given whole lines only: on a partial one it may take a field cut short for a
    // bad one ("... 50000 " reads as an empty port). Until the line ends, only the fixed
    // "PROXY " start is checked, so that other bytes are refused at once.
    let start = window.len().min(V1_START.len());
    if window[..start] != V1_START[..start] {
        return Parsed::Invalid(BadHeader::Missing(ProxyAccept::V1));
    }
    // The line ends with CRLF; a bare LF ends it too, as a malformed one.
    let line_end = window
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .map(|at| at + if window[at] == b'\r' { 2 } else { 1 })
        .filter(|&end| end <= window.len());
    let Some(end) = line_end else {
        // A CR at the very end of a full window would need a 108th byte for its LF.
        return if window.len() >= MAX_V1 {
            Parsed::Invalid(BadHeader::TooLong(MAX_V1))
        } else {
            Parsed::Incomplete
        };
    };
    let result = v1::Header::try_from(&window[..end]);
    match result {
        Ok(header) => {
            let received = match header.addresses {
                v1::Addresses::Tcp4(a) => Received::Proxied {
                    source: (a.source_address, a.source_port).into(),
                    destination: (a.destination_address, a.destination_port).into(),
                },
                v1::Addresses::Tcp6(a) => Received::Proxied {
                    source: (a.source_address, a.source_port).into(),
                    destination: (a.destination_address, a.destination_port).into(),
                },
                v1::Addresses::Unknown => Received::Unknown,
            };
            Parsed::Complete(received, header.header.len())
        }
        Err(v1::BinaryParseError::Parse(v1::ParseError::HeaderTooLong)) => {
            Parsed::Invalid(BadHeader::TooLong(MAX_V1))
        }
        // Any error on a whole line is final, "incomplete" ones included.
        Err(e) => Parsed::Invalid(BadHeader::V1(e)),
    }
}

/// What every v1 line starts with.
const V1_START: &[u8] = b"PROXY ";

fn parse_v2(bytes: &[u8]) -> Parsed {
    match v2::Header::try_from(bytes) {
        Ok(header) if header.len() > MAX_V2 => Parsed::Invalid(BadHeader::TooLong(MAX_V2)),
        Ok(header) => {
            let received = match (header.command, header.protocol, header.addresses) {
                (v2::Command::Local, _, _) => Received::Local,
                (v2::Command::Proxy, v2::Protocol::Stream, v2::Addresses::IPv4(a)) => {
                    Received::Proxied {
                        source: (a.source_address, a.source_port).into(),
                        destination: (a.destination_address, a.destination_port).into(),
                    }
                }
                (v2::Command::Proxy, v2::Protocol::Stream, v2::Addresses::IPv6(a)) => {
                    Received::Proxied {
                        source: (a.source_address, a.source_port).into(),
                        destination: (a.destination_address, a.destination_port).into(),
                    }
                }
                (v2::Command::Proxy, _, _) => Received::Unknown,
            };
            Parsed::Complete(received, header.len())
        }
        // The fixed part is in and announces more than we take: refuse before reading it.
        Err(v2::ParseError::Partial(_, length)) if v2_total(length) > MAX_V2 => {
            Parsed::Invalid(BadHeader::TooLong(MAX_V2))
        }
        Err(e) if e.is_incomplete() => Parsed::Incomplete,
        Err(e) => Parsed::Invalid(BadHeader::V2(e)),
    }
}

/// The whole v2 header for an announced address-and-TLV length.
fn v2_total(length: usize) -> usize {
    v2::PROTOCOL_PREFIX.len() + 4 + length
}

#[cfg(test)]
#[path = "inbound_tests.rs"]
mod tests;
