//! Pure HTTP/1.1 codec for the proxy: request/response head parsing and rewriting, chunked
//! framing, and the canned error responses. No I/O, no async; callers pass bytes in and get
//! values (or bytes appended to a reusable `Vec<u8>`) back.
//!
//! # Strictness
//!
//! A reverse proxy is only safe if it never frames a message differently from the upstream
//! (request smuggling, response splitting). So the parsers accept a deliberately narrow
//! dialect and reject everything ambiguous instead of "repairing" it:
//!
//! * Lines must end in CRLF. `httparse` accepts a bare LF as a line terminator; we reject it
//!   (and any bare CR) in both request and response heads, because an upstream that does not
//!   treat LF as a terminator would see a different header set than we did.
//! * Obsolete line folding, whitespace before the colon, control characters, empty names are
//!   rejected (`httparse` already does this for requests; tests pin it end to end).
//! * Only `HTTP/1.0` and `HTTP/1.1` are accepted; any other version is a 400 (not 505, so that
//!   every rejection maps onto one of the prebuilt [`error_response`]s).
//! * `Content-Length` must be plain digits; repeated identical values collapse into one;
//!   differing values, or `Content-Length` with `Transfer-Encoding`, are rejected.
//! * Header names spelled with `_` that normalize (lowercase, `_` → `-`) to a name the proxy
//!   interprets or manages (`Host`, `Content-Length`, `Transfer-Encoding`, `Connection`,
//!   `X-Forwarded-*`, hop-by-hop names, ...) are dropped from requests, never forwarded: some
//!   upstream stacks (CGI-style environments) fold `_` and `-` together and would otherwise
//!   see a framing or identity header the proxy never checked.

pub mod body;
pub mod chunked;
pub mod h2;
pub mod path;
pub mod request;
pub mod response;

pub use body::{Advance, BodyFramer, Truncated};
pub use chunked::{ChunkError, ChunkedDecoder, Step};
pub use request::{parse_request, Inject, Limits, RequestBody, RequestHead};
pub use response::{parse_response, ResponseBody, ResponseHead};

/// Outcome of a successful parse attempt: the head is complete, or more bytes are needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse<T> {
    Complete(T),
    Partial,
}

/// Why a request or upstream response head was rejected. [`HttpError::status`] gives the
/// status code the proxy answers the client with.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum HttpError {
    #[error("request head exceeds the size limit")]
    HeadTooLarge,
    #[error("request has too many header fields")]
    TooManyHeaders,
    #[error("malformed request line")]
    BadRequestLine,
    #[error("unsupported HTTP version")]
    BadVersion,
    #[error("invalid header field name")]
    BadHeaderName,
    #[error("invalid header field value")]
    BadHeaderValue,
    #[error("line not terminated by CRLF (bare CR or LF)")]
    BadLineEnding,
    #[error("both Content-Length and Transfer-Encoding present")]
    ContentLengthWithTransferEncoding,
    #[error("invalid Content-Length")]
    InvalidContentLength,
    #[error("conflicting Content-Length values")]
    ConflictingContentLength,
    #[error("invalid Transfer-Encoding")]
    InvalidTransferEncoding,
    #[error("unsupported transfer coding")]
    UnsupportedTransferCoding,
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    TransferEncodingInHttp10,
    #[error("missing Host header")]
    MissingHost,
    #[error("more than one Host header")]
    MultipleHost,
    #[error("unsupported expectation")]
    ExpectationFailed,
    #[error("CONNECT is not supported")]
    ConnectNotSupported,
    #[error("invalid chunked body: {0}")]
    BadChunkedBody(ChunkError),
    #[error("upstream response head exceeds the size limit")]
    UpstreamHeadTooLarge,
    #[error("malformed upstream response head")]
    UpstreamMalformed,
    #[error("upstream answered 101 Switching Protocols")]
    UpstreamSwitchingProtocols,
    #[error("upstream response has invalid message framing")]
    UpstreamBadFraming,
}

impl HttpError {
    /// The status code the proxy sends to the client for this rejection.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::ExpectationFailed => 417,
            HttpError::UnsupportedTransferCoding | HttpError::ConnectNotSupported => 501,
            HttpError::UpstreamHeadTooLarge
            | HttpError::UpstreamMalformed
            | HttpError::UpstreamSwitchingProtocols
            | HttpError::UpstreamBadFraming => 502,
            HttpError::BadRequestLine
            | HttpError::BadVersion
            | HttpError::BadHeaderName
            | HttpError::BadHeaderValue
            | HttpError::BadLineEnding
            | HttpError::ContentLengthWithTransferEncoding
            | HttpError::InvalidContentLength
            | HttpError::ConflictingContentLength
            | HttpError::InvalidTransferEncoding
            | HttpError::TransferEncodingInHttp10
            | HttpError::MissingHost
            | HttpError::MultipleHost
            | HttpError::BadChunkedBody(_) => 400,
        }
    }
}

impl From<ChunkError> for HttpError {
    fn from(e: ChunkError) -> Self {
        HttpError::BadChunkedBody(e)
    }
}

/// The prebuilt HTTP/1.1 error response for `status` (one of 400, 408, 413, 417, 421, 431, 500, 501,
/// 502, 503, 504). Any other status yields the 500 response, so the caller always has
/// something valid to send.
pub fn error_response(status: u16) -> &'static [u8] {
    match status {
        400 => b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nBad Request\n",
        408 => b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\nRequest Timeout\n",
        413 => b"HTTP/1.1 413 Content Too Large\r\nContent-Type: text/plain\r\nContent-Length: 18\r\nConnection: close\r\n\r\nContent Too Large\n",
        417 => b"HTTP/1.1 417 Expectation Failed\r\nContent-Type: text/plain\r\nContent-Length: 19\r\nConnection: close\r\n\r\nExpectation Failed\n",
        421 => b"HTTP/1.1 421 Misdirected Request\r\nContent-Type: text/plain\r\nContent-Length: 20\r\nConnection: close\r\n\r\nMisdirected Request\n",
        431 => b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain\r\nContent-Length: 32\r\nConnection: close\r\n\r\nRequest Header Fields Too Large\n",
        501 => b"HTTP/1.1 501 Not Implemented\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\nNot Implemented\n",
        502 => b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nBad Gateway\n",
        503 => b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 20\r\nConnection: close\r\n\r\nService Unavailable\n",
        504 => b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\nGateway Timeout\n",
        _ => b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 22\r\nConnection: close\r\n\r\nInternal Server Error\n",
    }
}

/// `403 Forbidden` with a one-line reason (a per-path rule's refusal), then close.
pub fn forbidden_response(reason: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{reason}\n",
        reason.len() + 1
    )
    .into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Shared internals: header records as offsets into the caller's buffer.
// ---------------------------------------------------------------------------------------------

/// The ceiling on header fields per head, the one constant for it: the parse uses a stack
/// array of this many `httparse::Header`s and `Limits::max_headers` is clamped to it.
pub const MAX_HEADERS: usize = 128;

/// Header records kept inline in a parsed head; more spill to the heap. Heads move with every
/// exchange, so they stay small (16 × 20 bytes) for the common case of a dozen fields.
const INLINE_FIELDS: usize = 16;

/// A byte range of the caller's buffer. `u32` keeps the per-header record small; heads are
/// limited far below 4 GiB (`Limits::max_head_bytes` is clamped to `u32::MAX`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: u32,
    pub(crate) len: u32,
}

impl Span {
    pub(crate) fn get<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        let start = self.start as usize;
        buf.get(start..start + self.len as usize).unwrap_or(&[])
    }

    /// The span of `part`, which must be a subslice of `base` (as httparse returns them).
    pub(crate) fn of(base: &[u8], part: &[u8]) -> Span {
        let start = (part.as_ptr() as usize).saturating_sub(base.as_ptr() as usize);
        Span {
            start: start as u32,
            len: part.len() as u32,
        }
    }

    /// The span with optional whitespace (SP / HTAB) removed from both ends.
    pub(crate) fn trimmed(self, buf: &[u8]) -> Span {
        let s = self.get(buf);
        let lead = s.iter().take_while(|b| is_ows(**b)).count();
        let trail = s[lead..].iter().rev().take_while(|b| is_ows(**b)).count();
        Span {
            start: self.start + lead as u32,
            len: self.len - (lead + trail) as u32,
        }
    }
}

/// One header field: name and (trimmed) value as offsets, plus a classification byte the
/// request/response modules assign at parse time so rewriting does not compare names again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Field {
    pub(crate) name: Span,
    pub(crate) value: Span,
    pub(crate) kind: u8,
}

/// The header table of a parsed head (at most [`MAX_HEADERS`], since httparse never yields
/// more).
#[derive(Clone, PartialEq, Eq, Default)]
pub(crate) struct Fields(smallvec::SmallVec<[Field; INLINE_FIELDS]>);

impl Fields {
    pub(crate) fn new() -> Self {
        Fields::default()
    }

    /// Records a header httparse found in `buf` (name and trimmed value as offsets, its kind
    /// from `classify`) and returns the kind and the value.
    pub(crate) fn record<'b>(
        &mut self,
        buf: &'b [u8],
        header: &httparse::Header<'_>,
        classify: fn(&[u8]) -> u8,
    ) -> (u8, &'b [u8]) {
        let name = header.name.as_bytes();
        let kind = classify(name);
        let value = Span::of(buf, header.value).trimmed(buf);
        self.0.push(Field {
            name: Span::of(buf, name),
            value,
            kind,
        });
        (kind, value.get(buf))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Field> {
        self.0.iter()
    }
}

impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

pub(crate) fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Trims SP / HTAB from both ends.
pub(crate) fn trim_ows(s: &[u8]) -> &[u8] {
    let lead = s.iter().take_while(|b| is_ows(**b)).count();
    let trail = s[lead..].iter().rev().take_while(|b| is_ows(**b)).count();
    &s[lead..s.len() - trail]
}

/// Compares a raw header name with a lowercase, dash-spelled name after normalizing the raw
/// name (ASCII lowercase, `_` → `-`).
pub(crate) fn norm_eq(raw: &[u8], lower_dashed: &[u8]) -> bool {
    raw.len() == lower_dashed.len()
        && raw.iter().zip(lower_dashed).all(|(r, l)| {
            let r = if *r == b'_' {
                b'-'
            } else {
                r.to_ascii_lowercase()
            };
            r == *l
        })
}

/// Whether a name listed in a `Connection` field may be removed as hop-by-hop.
///
/// Why: `Connection: host, content-length` must not let a client strip the fields the proxy
/// relies on for routing and framing, and listing `x-forwarded-*` must not remove (or
/// prevent) the proxy's own forwarding headers. Names compared after normalization.
pub(crate) fn connection_may_remove(name: &[u8]) -> bool {
    const PROTECTED: [&[u8]; 5] = [
        b"host",
        b"content-length",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-client-cert",
    ];
    !PROTECTED.iter().any(|p| norm_eq(name, p))
}

/// Iterates the comma-separated, OWS-trimmed, non-empty elements of a list-valued field.
pub(crate) fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(trim_ows)
        .filter(|s| !s.is_empty())
}

/// Whether any `Connection` field (fields whose kind is `conn_kind`) lists `name`.
pub(crate) fn listed_in_connection(
    buf: &[u8],
    fields: &Fields,
    conn_kind: u8,
    name: &[u8],
) -> bool {
    fields.iter().filter(|f| f.kind == conn_kind).any(|f| {
        list_items(f.value.get(buf)).any(|tok| {
            tok.len() == name.len()
                && tok.iter().zip(name).all(|(t, n)| {
                    let t = if *t == b'_' {
                        b'-'
                    } else {
                        t.to_ascii_lowercase()
                    };
                    let n = if *n == b'_' {
                        b'-'
                    } else {
                        n.to_ascii_lowercase()
                    };
                    t == n
                })
        })
    })
}

/// Rejects bare CR and bare LF anywhere in a head (see the module docs for why).
///
/// Runs on every request, so it visits line ends only (memchr's SIMD search), not every byte:
/// every LF must follow a CR, and there must be no CR besides those.
pub(crate) fn crlf_only(head: &[u8]) -> bool {
    let mut lines = 0usize;
    for i in memchr::memchr_iter(b'\n', head) {
        if i == 0 || head[i - 1] != b'\r' {
            return false;
        }
        lines += 1;
    }
    memchr::memchr_iter(b'\r', head).count() == lines
}

/// Parses a `Content-Length` value (possibly a list of identical values) into `current`.
/// Returns `Err(true)` for conflicting values, `Err(false)` for an invalid value.
pub(crate) fn merge_content_length(value: &[u8], current: &mut Option<u64>) -> Result<(), bool> {
    // An empty value or an empty list element is not a length; reject rather than guess.
    if value.is_empty() {
        return Err(false);
    }
    for item in value.split(|b| *b == b',').map(trim_ows) {
        let n = parse_decimal(item).ok_or(false)?;
        match *current {
            Some(prev) if prev != n => return Err(true),
            _ => *current = Some(n),
        }
    }
    Ok(())
}

/// Plain ASCII digits only (no sign, no whitespace), no overflow.
pub(crate) fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// Appends the decimal digits of `n` (no `format!`, no allocation beyond `out`).
pub(crate) fn push_decimal(n: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Outcome of checking a `Transfer-Encoding` list (all fields combined, in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TeShape {
    /// Exactly `chunked`.
    Chunked,
    /// Valid codings ending in a single `chunked`, with other codings before it.
    CodingsThenChunked,
    /// Valid codings, `chunked` not present or not final (but not repeated).
    NotChunkedFinal,
    /// Syntax error, empty, or `chunked` applied more than once.
    Invalid,
}

/// Classifies the combined `Transfer-Encoding` values of the fields of kind `te_kind`.
pub(crate) fn te_shape(buf: &[u8], fields: &Fields, te_kind: u8) -> TeShape {
    let mut total = 0usize;
    let mut chunked_at: Option<usize> = None;
    let mut chunked_count = 0usize;
    for f in fields.iter().filter(|f| f.kind == te_kind) {
        let value = f.value.get(buf);
        for item in value.split(|b| *b == b',').map(trim_ows) {
            // Empty elements and parameters are refused: every coding we could legitimately
            // see is a bare token, and tolerance here is exactly what smuggling exploits.
            if item.is_empty() || !item.iter().all(|b| is_tchar(*b)) {
                return TeShape::Invalid;
            }
            if item.eq_ignore_ascii_case(b"chunked") {
                chunked_count += 1;
                chunked_at = Some(total);
            }
            total += 1;
        }
    }
    if total == 0 || chunked_count > 1 {
        return TeShape::Invalid;
    }
    match chunked_at {
        Some(i) if i + 1 == total && total == 1 => TeShape::Chunked,
        Some(i) if i + 1 == total => TeShape::CodingsThenChunked,
        _ => TeShape::NotChunkedFinal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_responses_are_valid_http_with_matching_length() {
        for status in [400u16, 408, 413, 417, 421, 431, 500, 501, 502, 503, 504] {
            let bytes = error_response(status);
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut resp = httparse::Response::new(&mut headers);
            let n = match resp.parse(bytes) {
                Ok(httparse::Status::Complete(n)) => n,
                other => panic!("{status}: {other:?}"),
            };
            assert_eq!(resp.code, Some(status));
            let cl = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| parse_decimal(h.value).unwrap())
                .unwrap();
            assert_eq!(cl as usize, bytes.len() - n, "status {status}");
            assert!(resp
                .headers
                .iter()
                .any(|h| h.name == "Connection" && h.value == b"close"));
        }
    }

    #[test]
    fn unknown_status_gets_500_response() {
        assert!(error_response(418).starts_with(b"HTTP/1.1 500 "));
    }

    #[test]
    fn error_statuses() {
        assert_eq!(HttpError::HeadTooLarge.status(), 431);
        assert_eq!(HttpError::TooManyHeaders.status(), 431);
        assert_eq!(HttpError::ExpectationFailed.status(), 417);
        assert_eq!(HttpError::ConnectNotSupported.status(), 501);
        assert_eq!(HttpError::UnsupportedTransferCoding.status(), 501);
        assert_eq!(HttpError::UpstreamBadFraming.status(), 502);
        assert_eq!(HttpError::from(ChunkError::InvalidSize).status(), 400);
    }

    #[test]
    fn connection_cannot_remove_protected_names() {
        for name in [
            &b"Host"[..],
            b"content-length",
            b"Content_Length",
            b"X-Forwarded-For",
            b"x_forwarded_for",
            b"X-FORWARDED-PROTO",
            b"x-forwarded-client-cert",
        ] {
            assert!(!connection_may_remove(name), "{name:?}");
        }
    }

    #[test]
    fn connection_may_remove_ordinary_names() {
        for name in [
            &b"x-custom"[..],
            b"Cookie",
            b"Authorization",
            b"x-forwarded-host",
        ] {
            assert!(connection_may_remove(name), "{name:?}");
        }
    }

    #[test]
    fn norm_eq_folds_case_and_underscore() {
        assert!(norm_eq(b"X_Forwarded_For", b"x-forwarded-for"));
        assert!(norm_eq(b"X-FORWARDED-FOR", b"x-forwarded-for"));
        assert!(!norm_eq(b"X-Forwarded-Fo", b"x-forwarded-for"));
    }

    #[test]
    fn crlf_only_detects_bare_cr_and_lf() {
        assert!(crlf_only(b"a\r\nb\r\n\r\n"));
        assert!(!crlf_only(b"a\nb\r\n\r\n"));
        assert!(!crlf_only(b"a\rb\r\n\r\n"));
        assert!(!crlf_only(b"a\r"));
    }

    #[test]
    fn decimal_round_trip() {
        let mut out = Vec::new();
        for n in [0u64, 7, 10, 12345, u64::MAX] {
            out.clear();
            push_decimal(n, &mut out);
            assert_eq!(parse_decimal(&out), Some(n));
        }
        assert_eq!(parse_decimal(b"18446744073709551616"), None);
        assert_eq!(parse_decimal(b"+5"), None);
        assert_eq!(parse_decimal(b""), None);
    }
}
