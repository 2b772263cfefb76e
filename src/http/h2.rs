//! HTTP/2 messages in terms of the HTTP/1.1 core: no framing, HPACK or flow control here (the
//! `h2` crate does those), only what a request and a response *mean* on the other side.
//!
//! * Toward an HTTP/1.1 upstream, an HTTP/2 request's header section is written out as the
//!   HTTP/1.1 head it stands for ([`request_head`]), and that head then goes through the same
//!   strict parser and the same rewriting ([`super::request::parse_request`],
//!   [`super::RequestHead::write_upstream`]) as a request that arrived in HTTP/1.1. One rule
//!   set for both protocols, so a client cannot pick the protocol whose rules suit it. The
//!   written head must parse back as exactly one head of exactly its own length: a byte a
//!   client could use to end that head early or smuggle a second one (h2 → h1 smuggling)
//!   makes it malformed instead.
//! * Toward an h2c upstream, the request's fields are rewritten in place ([`upstream_fields`])
//!   with the same classification of names as HTTP/1.1 (`request::role`).
//! * An HTTP/1.1 response head is turned into the fields an HTTP/2 response carries
//!   ([`super::ResponseHead::end_to_end`]).

use super::request::{role, Role};
use super::{is_tchar, push_decimal};

/// Why an HTTP/2 request is malformed (RFC 9113 §8.1.1): the stream is reset with
/// PROTOCOL_ERROR and nothing reaches the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("a field name is not a lowercase token")]
    Name,
    #[error("a field value holds CR, LF, NUL or another control byte")]
    Value,
    #[error("the method or path holds a byte not allowed in a request line")]
    RequestLine,
    #[error(":authority and host disagree")]
    AuthorityMismatch,
    #[error("a connection-specific field (connection, keep-alive, transfer-encoding, upgrade, te other than trailers)")]
    ConnectionSpecific,
    #[error("content-length on a request that ends with its headers")]
    LengthWithoutBody,
}

/// Whether DATA frames may follow the request's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// The HEADERS frame carried END_STREAM.
    None,
    /// A body follows; without `content-length` it is sent chunked.
    Streamed,
}

/// The parts of an HTTP/2 request head the translation needs (the `h2` crate's `Request`
/// borrowed, so that this module stays free of it and is fuzzed on plain bytes).
pub struct Request<'a, I> {
    pub method: &'a [u8],
    /// `:path` (with the query); for CONNECT, empty.
    pub path: &'a [u8],
    pub authority: Option<&'a [u8]>,
    /// Regular fields in order, names as received (HTTP/2 names are lowercase).
    pub fields: I,
    pub body: Body,
}

/// Appends the HTTP/1.1 head equivalent to `req` to `out`. `cookie` fields are joined with
/// `; ` (RFC 9113 §8.2.3); `:authority` becomes `host`; a streamed body without
/// `content-length` is declared chunked. The caller parses the result with `parse_request`
/// and must refuse it unless it is one complete head of `out.len()` bytes.
pub fn request_head<'a, I>(req: Request<'a, I>, out: &mut Vec<u8>) -> Result<(), Malformed>
where
    I: Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
{
    if req.method.is_empty() || !req.method.iter().all(|&b| is_tchar(b)) {
        return Err(Malformed::RequestLine);
    }
    // A request-target is visible ASCII without spaces (RFC 9112 §3.2); `h2` already parsed
    // it as a URI, so this only guards what the line is made of.
    if !req.path.iter().all(|&b| b.is_ascii_graphic()) {
        return Err(Malformed::RequestLine);
    }
    if let Some(authority) = req.authority {
        check_value(authority)?;
    }
    out.extend_from_slice(req.method);
    out.push(b' ');
    match (req.path.is_empty(), req.authority) {
        // CONNECT's target is the authority (the parser decides what becomes of CONNECT).
        (true, Some(authority)) => out.extend_from_slice(authority),
        _ => out.extend_from_slice(req.path),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(authority) = req.authority {
        push_field(out, b"host", authority);
    }
    let mut length: Option<&[u8]> = None;
    let mut cookies = false;
    for (name, value) in req.fields.clone() {
        check_field(name, value)?;
        match name {
            b"host" => match req.authority {
                // RFC 9113 §8.3.1: both present and different is malformed; the same name
                // twice is written once (above).
                Some(authority) if !authority.eq_ignore_ascii_case(value) => {
                    return Err(Malformed::AuthorityMismatch)
                }
                Some(_) => continue,
                None => {}
            },
            b"content-length" => length = Some(value),
            b"cookie" => {
                cookies = true;
                continue;
            }
            _ => {}
        }
        push_field(out, name, value);
    }
    if cookies {
        out.extend_from_slice(b"cookie: ");
        let values = req.fields.filter(|(n, _)| *n == b"cookie").map(|(_, v)| v);
        for (i, value) in values.enumerate() {
            if i > 0 {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(value);
        }
        out.extend_from_slice(b"\r\n");
    }
    match (req.body, length) {
        // `h2` checks DATA against content-length, but with END_STREAM on the headers there
        // is no DATA to check, and an upstream would wait for bytes that never come.
        (Body::None, Some(n)) if n != b"0" => return Err(Malformed::LengthWithoutBody),
        (Body::Streamed, None) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// What the proxy adds to a request toward an h2c upstream, besides the identity fields the
/// connection prepared once.
pub struct Forwarding<'a> {
    /// The client's address as text (see `request::Inject::client_addr`).
    pub client_addr: &'a [u8],
    /// Our RFC 7239 element (see `request::forwarded_element`).
    pub forwarded: &'a [u8],
}

/// The regular fields of a request toward an h2c upstream, passed to `emit` in order: the
/// client's fields under the HTTP/1.1 rules (identity and proxy-managed names dropped, `_`
/// spellings of managed names dropped, `host` folded into `:authority`), `te: trailers` kept
/// (gRPC needs it end to end), then one `x-forwarded-for`, one `forwarded` (the client's
/// values with ours appended) and `x-forwarded-proto: https`. The caller appends the
/// connection's identity fields. `scratch` is reused for the merged values.
pub fn upstream_fields<'a, I>(
    authority: Option<&[u8]>,
    fields: I,
    fwd: &Forwarding<'_>,
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8], &[u8]),
) -> Result<(), Malformed>
where
    I: Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
{
    for (name, value) in fields.clone() {
        check_field(name, value)?;
        if name == b"te" {
            emit(name, value);
            continue;
        }
        match role(name) {
            Role::Keep => emit(name, value),
            Role::Host => {
                if authority.is_some_and(|a| !a.eq_ignore_ascii_case(value)) {
                    return Err(Malformed::AuthorityMismatch);
                }
            }
            Role::ForwardedFor | Role::Forwarded | Role::Drop => {}
        }
    }
    for (role_wanted, name, ours) in [
        (Role::ForwardedFor, &b"x-forwarded-for"[..], fwd.client_addr),
        (Role::Forwarded, &b"forwarded"[..], fwd.forwarded),
    ] {
        scratch.clear();
        for (_, value) in fields.clone().filter(|(n, _)| role(n) == role_wanted) {
            if !value.is_empty() {
                scratch.extend_from_slice(value);
                scratch.extend_from_slice(b", ");
            }
        }
        scratch.extend_from_slice(ours);
        emit(name, scratch);
    }
    emit(b"x-forwarded-proto", b"https");
    Ok(())
}

/// RFC 9113 §8.2: names are lowercase tokens; values hold no CR, LF or NUL (and, as in
/// HTTP/1.1 here, no other control byte but HTAB), no leading or trailing whitespace.
/// Connection-specific fields are malformed (§8.2.2), `te` only as `trailers`.
fn check_field(name: &[u8], value: &[u8]) -> Result<(), Malformed> {
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b) && !b.is_ascii_uppercase()) {
        return Err(Malformed::Name);
    }
    check_value(value)?;
    match name {
        b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding" | b"upgrade" => {
            Err(Malformed::ConnectionSpecific)
        }
        b"te" if value != b"trailers" => Err(Malformed::ConnectionSpecific),
        _ => Ok(()),
    }
}

fn check_value(value: &[u8]) -> Result<(), Malformed> {
    let bad = |b: &u8| (*b < 0x20 && *b != b'\t') || *b == 0x7f;
    let padded =
        matches!(value.first(), Some(b' ' | b'\t')) || matches!(value.last(), Some(b' ' | b'\t'));
    if value.iter().any(bad) || padded {
        return Err(Malformed::Value);
    }
    Ok(())
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes `n` as a `content-length` value (the canonical form an HTTP/2 response carries).
pub fn content_length_value(n: u64, out: &mut Vec<u8>) {
    out.clear();
    push_decimal(n, out);
}

#[cfg(test)]
#[path = "h2_tests.rs"]
mod tests;
