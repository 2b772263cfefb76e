//! Client request heads: strict parsing (framing, Host, Expect, limits) into an offset-based
//! [`RequestHead`], and rewriting of that head for the upstream with the proxy's own
//! forwarding headers.

use super::{
    connection_may_remove, crlf_only, list_items, listed_in_connection, merge_content_length,
    norm_eq, push_decimal, te_shape, Fields, HttpError, Parse, Span, TeShape, MAX_HEADERS,
};

/// Parser limits for a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest head (request line through the blank line) accepted; clamped to `u32::MAX`.
    pub max_head_bytes: usize,
    /// Most header fields accepted; clamped to [`MAX_HEADERS`] (the fixed stack table size).
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 65536,
            max_headers: 100,
        }
    }
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBody {
    None,
    Length(u64),
    Chunked,
}

/// What the proxy adds to the upstream head.
#[derive(Debug, Clone, Copy)]
pub struct Inject<'a> {
    /// Client IP as text, e.g. `b"203.0.113.7"` (IPv6 without brackets).
    pub client_addr: &'a [u8],
    /// The proxy's own RFC 7239 `Forwarded` element, e.g. `b"for=203.0.113.7;proto=https"`
    /// (see [`forwarded_element`]), formatted once per connection.
    pub forwarded: &'a [u8],
    /// A complete prebuilt `X-Forwarded-Client-Cert: ...\r\n` line, inserted verbatim.
    pub xfcc_line: Option<&'a [u8]>,
    /// `Host` for an HTTP/1.0 request that carried none: the upstream request is HTTP/1.1,
    /// which requires one (RFC 9112 §3.2). The upstream's authority, as configured.
    pub upstream_host: &'a [u8],
    /// Forward the request's upgrade ([`RequestHead::upgrade`]): the listener allows it (see
    /// [`upgrade_permitted`]). Otherwise `Upgrade` is stripped like any hop-by-hop field.
    pub upgrade: bool,
    /// The request-target to send instead of the client's: its normal form when per-path
    /// routes normalized it (`http::path`); `None` forwards the target as sent.
    pub target: Option<&'a [u8]>,
}

// Header classification, assigned once at parse time (`Field::kind`).
const OTHER: u8 = 0;
const HOST: u8 = 1;
const CONTENT_LENGTH: u8 = 2;
const TRANSFER_ENCODING: u8 = 3;
const CONNECTION: u8 = 4;
const EXPECT: u8 = 5;
const X_FORWARDED_FOR: u8 = 6;
const FORWARDED: u8 = 8;
const UPGRADE: u8 = 9;
/// Never forwarded: hop-by-hop, proxy-managed, or an underscore spelling of a name we manage.
const DROP: u8 = 7;

/// Names the proxy interprets or manages, lowercase dash spelling.
const KNOWN: [(&[u8], u8); 18] = [
    (b"host", HOST),
    (b"content-length", CONTENT_LENGTH),
    (b"transfer-encoding", TRANSFER_ENCODING),
    (b"connection", CONNECTION),
    (b"expect", EXPECT),
    (b"x-forwarded-for", X_FORWARDED_FOR),
    (b"forwarded", FORWARDED),
    // Why: the proxy is the only authority for these; a client copy would let it pose as a
    // different client certificate or scheme to the upstream.
    (b"x-forwarded-proto", DROP),
    (b"x-forwarded-client-cert", DROP),
    // The other identity formats (`identity`): dropped whether or not a listener sends them.
    (b"client-cert", DROP),
    (b"client-cert-chain", DROP),
    (b"x-arr-clientcert", DROP),
    // A client-chosen "real IP" that frameworks would believe as readily as the peer address.
    (b"x-real-ip", DROP),
    // Hop-by-hop (RFC 9110 §7.6.1) besides Connection / Transfer-Encoding handled above.
    (b"keep-alive", DROP),
    (b"proxy-connection", DROP),
    (b"te", DROP),
    (b"trailer", DROP),
    (b"upgrade", UPGRADE),
];

/// `host[:port]` → `host`; `[v6]:port` → `[v6]`. A userinfo part (`user@host`) is not valid in
/// `Host` and never names a site, so it is left in place.
pub fn strip_port(authority: &[u8]) -> &[u8] {
    if authority.first() == Some(&b'[') {
        let end = authority
            .iter()
            .position(|&b| b == b']')
            .map_or(authority.len(), |i| i + 1);
        return &authority[..end];
    }
    match authority.iter().rposition(|&b| b == b':') {
        Some(i) if authority[i + 1..].iter().all(u8::is_ascii_digit) => &authority[..i],
        _ => authority,
    }
}

fn classify(name: &[u8]) -> u8 {
    for (known, kind) in KNOWN {
        if norm_eq(name, known) {
            // Why: `Content_Length`, `Transfer_Encoding`, `X_Forwarded_For`... are not the
            // headers we checked, but upstreams that fold `_` into `-` would honour them.
            // Dropping them keeps the upstream's view identical to ours.
            return if name.contains(&b'_') { DROP } else { kind };
        }
    }
    OTHER
}

/// What the proxy does with a request field of this name, for the HTTP/2 → h2c path, which
/// rewrites field lists rather than heads (same table as [`RequestHead::write_upstream`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Forwarded as it is.
    Keep,
    /// `host`: becomes (or must agree with) `:authority`.
    Host,
    /// Merged into the proxy's own `x-forwarded-for`.
    ForwardedFor,
    /// Merged into the proxy's own `forwarded`.
    Forwarded,
    /// Never forwarded: hop-by-hop, proxy-managed, identity, or an `_` spelling of those.
    Drop,
}

pub(crate) fn role(name: &[u8]) -> Role {
    match classify(name) {
        OTHER | CONTENT_LENGTH => Role::Keep,
        HOST => Role::Host,
        X_FORWARDED_FOR => Role::ForwardedFor,
        FORWARDED => Role::Forwarded,
        _ => Role::Drop,
    }
}

/// A parsed request head. Holds only offsets into the buffer it was parsed from; pass the same
/// buffer back to the accessors that take one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    head_len: usize,
    method: Span,
    target: Span,
    http10: bool,
    is_head: bool,
    keep_alive: bool,
    expect_continue: bool,
    /// A `Connection` field lists something besides `close` / `keep-alive`, so the rewrite
    /// must check other fields against it.
    connection_lists_names: bool,
    /// Whether the client sent a `Host` (always, for HTTP/1.1; see `Inject::upstream_host`).
    has_host: bool,
    /// The `Upgrade` value of a request that asks to switch protocols (see `upgrade`).
    upgrade: Option<Span>,
    body: RequestBody,
    fields: Fields,
}

impl RequestHead {
    /// Bytes of the buffer taken by the head, through the blank line.
    pub fn head_len(&self) -> usize {
        self.head_len
    }

    pub fn body(&self) -> &RequestBody {
        &self.body
    }

    /// HTTP/1.1: unless `Connection: close`; HTTP/1.0: only with `Connection: keep-alive`.
    /// The fields as received, name and value.
    pub fn fields<'b>(&'b self, buf: &'b [u8]) -> impl Iterator<Item = (&'b [u8], &'b [u8])> {
        self.fields
            .iter()
            .map(move |f| (f.name.get(buf), f.value.get(buf)))
    }

    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    pub fn is_http10(&self) -> bool {
        self.http10
    }

    /// Method is `HEAD` (the response then has no body whatever its headers say).
    pub fn is_head(&self) -> bool {
        self.is_head
    }

    /// `Expect: 100-continue` on an HTTP/1.1 request: the proxy answers `100 Continue` itself
    /// and never forwards `Expect`. Always false for HTTP/1.0 (RFC 9110 §10.1.1: ignore it).
    pub fn expect_continue(&self) -> bool {
        self.expect_continue
    }

    /// The method token as sent.
    pub fn method<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        self.method.get(buf)
    }

    /// The request-target as sent.
    pub fn target<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        self.target.get(buf)
    }

    /// The protocols a request asks to switch to (`Upgrade`'s value), when it really asks:
    /// HTTP/1.1, `Connection` lists `upgrade`, exactly one `Upgrade` field, and no body (a
    /// body would have to be read before the switch, and no upgrade the proxy relays needs
    /// one).
    pub fn upgrade<'b>(&self, buf: &'b [u8]) -> Option<&'b [u8]> {
        self.upgrade.map(|s| s.get(buf))
    }

    /// The host name the request is for, without a port: the authority of an absolute-form
    /// target (which RFC 9112 §3.2.2 says overrides `Host`), else the `Host` value; empty
    /// when there is neither. An IPv6 literal keeps its brackets (it names no site).
    pub fn host_name<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        let target = self.target(buf);
        let lower_starts =
            |p: &[u8]| target.len() >= p.len() && target[..p.len()].eq_ignore_ascii_case(p);
        let authority = if lower_starts(b"http://") || lower_starts(b"https://") {
            let rest = &target[target.iter().position(|&b| b == b'/').map_or(0, |i| i + 2)..];
            let end = rest
                .iter()
                .position(|&b| matches!(b, b'/' | b'?' | b'#'))
                .unwrap_or(rest.len());
            &rest[..end]
        } else {
            self.host(buf).unwrap_or(&[])
        };
        strip_port(authority)
    }

    /// The `Host` value (trimmed), if present.
    pub fn host<'b>(&self, buf: &'b [u8]) -> Option<&'b [u8]> {
        self.fields
            .iter()
            .find(|f| f.kind == HOST)
            .map(|f| f.value.get(buf))
    }

    /// Appends the head to send upstream to `out` (cleared by the caller).
    ///
    /// Always `HTTP/1.1` upstream; hop-by-hop and proxy-managed client headers removed; one
    /// `X-Forwarded-For` with the client's values plus `client_addr`; then
    /// `X-Forwarded-Proto: https` and the optional XFCC line.
    pub fn write_upstream(&self, buf: &[u8], inject: &Inject<'_>, out: &mut Vec<u8>) {
        // One reservation covers everything: the rewritten head is at most the original head
        // plus the fixed proxy lines, the client address and the XFCC line.
        out.reserve(
            self.head_len
                + 120
                + 2 * inject.client_addr.len()
                + inject.forwarded.len()
                + inject.upstream_host.len()
                + inject.target.map_or(0, <[u8]>::len)
                + inject.xfcc_line.map_or(0, <[u8]>::len),
        );
        out.extend_from_slice(self.method.get(buf));
        out.push(b' ');
        out.extend_from_slice(inject.target.unwrap_or(self.target.get(buf)));
        out.extend_from_slice(b" HTTP/1.1\r\n");
        if !self.has_host {
            write_field(out, b"Host", inject.upstream_host);
        }

        let mut length_written = false;
        for f in self.fields.iter() {
            let name = f.name.get(buf);
            match f.kind {
                OTHER => {
                    if self.connection_lists_names
                        && connection_may_remove(name)
                        && listed_in_connection(buf, &self.fields, CONNECTION, name)
                    {
                        continue;
                    }
                    write_field(out, name, f.value.get(buf));
                }
                HOST => write_field(out, name, f.value.get(buf)),
                CONTENT_LENGTH => {
                    // Collapsed to one canonical value (`5, 5` or repeated fields → `5`).
                    if let (RequestBody::Length(n), false) = (self.body, length_written) {
                        out.extend_from_slice(name);
                        out.extend_from_slice(b": ");
                        push_decimal(n, out);
                        out.extend_from_slice(b"\r\n");
                        length_written = true;
                    }
                }
                // TRANSFER_ENCODING, CONNECTION, EXPECT, DROP: never forwarded;
                // X_FORWARDED_FOR, FORWARDED: merged into the proxy's lines below.
                _ => {}
            }
        }

        if self.body == RequestBody::Chunked {
            // The proxy re-encodes the body with its own chunk framing (see `chunked`).
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        if let (true, Some(protocols)) = (inject.upgrade, self.upgrade) {
            out.extend_from_slice(b"Connection: upgrade\r\n");
            write_field(out, b"Upgrade", protocols.get(buf));
        }

        out.extend_from_slice(b"X-Forwarded-For: ");
        for f in self.fields.iter().filter(|f| f.kind == X_FORWARDED_FOR) {
            let value = f.value.get(buf);
            if !value.is_empty() {
                out.extend_from_slice(value);
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(inject.client_addr);
        // RFC 7239 §4: the proxy appends its element to the list the client sent (the app
        // decides how many hops it trusts, as with X-Forwarded-For).
        out.extend_from_slice(b"\r\nForwarded: ");
        for f in self.fields.iter().filter(|f| f.kind == FORWARDED) {
            let value = f.value.get(buf);
            if !value.is_empty() {
                out.extend_from_slice(value);
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(inject.forwarded);
        out.extend_from_slice(b"\r\nX-Forwarded-Proto: https\r\n");
        if let Some(line) = inject.xfcc_line {
            out.extend_from_slice(line);
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Whether a listener that allows the protocols `allowed` (lowercase names, e.g. `websocket`)
/// may forward an upgrade to `protocols` (an `Upgrade` value): every protocol offered must be
/// allowed, by name, whatever its version (`websocket`, `WebSocket/13`).
pub fn upgrade_permitted(protocols: &[u8], allowed: &[String]) -> bool {
    let mut any = false;
    for offered in list_items(protocols) {
        let name = offered.split(|b| *b == b'/').next().unwrap_or(offered);
        if !allowed
            .iter()
            .any(|a| name.eq_ignore_ascii_case(a.as_bytes()))
        {
            return false;
        }
        any = true;
    }
    any
}

/// The proxy's `Forwarded` element for a client at `ip` (RFC 7239 §6: an IPv6 address is
/// bracketed and, since `[`, `:` are not token characters, quoted).
pub fn forwarded_element(ip: std::net::IpAddr) -> Vec<u8> {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => format!("for={v4};proto=https").into_bytes(),
        std::net::IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto=https").into_bytes(),
    }
}

fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn map_httparse(e: httparse::Error) -> HttpError {
    match e {
        httparse::Error::HeaderName => HttpError::BadHeaderName,
        httparse::Error::HeaderValue => HttpError::BadHeaderValue,
        httparse::Error::NewLine => HttpError::BadLineEnding,
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        httparse::Error::Version => HttpError::BadVersion,
        _ => HttpError::BadRequestLine,
    }
}

/// Parses a client request head from the start of `buf`.
///
/// `Ok(Parse::Partial)` means "read more and call again with the grown buffer"; the size limit
/// is enforced here, so a caller that keeps reading can never buffer more than
/// `limits.max_head_bytes` for a head.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Parse<RequestHead>, HttpError> {
    let max_head = limits.max_head_bytes.min(u32::MAX as usize);
    let max_headers = limits.max_headers.min(MAX_HEADERS);
    // Parsing only the allowed window means an oversized head is never complete, whatever
    // follows in the buffer.
    let window = &buf[..buf.len().min(max_head)];

    // Uninitialized: zeroing 128 header slots (4 KiB) on every request costs more than
    // parsing a small head.
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(window, &mut headers[..max_headers]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= max_head {
                Err(HttpError::HeadTooLarge)
            } else {
                Ok(Parse::Partial)
            };
        }
        Err(e) => return Err(map_httparse(e)),
    };

    // Why: httparse accepts a bare LF as a line end; an upstream that does not would see a
    // different header set (header injection / smuggling). Only CRLF is accepted.
    if !crlf_only(&buf[..head_len]) {
        return Err(HttpError::BadLineEnding);
    }

    let method = req.method.ok_or(HttpError::BadRequestLine)?.as_bytes();
    let target = req.path.ok_or(HttpError::BadRequestLine)?.as_bytes();
    let http10 = match req.version {
        Some(0) => true,
        Some(1) => false,
        _ => return Err(HttpError::BadVersion),
    };
    if method == b"CONNECT" {
        return Err(HttpError::ConnectNotSupported);
    }

    let mut fields = Fields::new();
    let mut hosts = 0usize;
    let mut content_length: Option<u64> = None;
    let mut has_te = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut connection_lists_names = false;
    let mut connection_upgrade = false;
    let mut upgrade_fields = 0usize;
    let mut upgrade = None;
    let mut expect_continue = false;

    for h in req.headers.iter() {
        let (kind, v) = fields.record(buf, h, classify);
        match kind {
            HOST => hosts += 1,
            CONTENT_LENGTH => {
                merge_content_length(v, &mut content_length).map_err(|conflict| {
                    if conflict {
                        HttpError::ConflictingContentLength
                    } else {
                        HttpError::InvalidContentLength
                    }
                })?;
            }
            TRANSFER_ENCODING => has_te = true,
            CONNECTION => {
                for token in list_items(v) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive_token = true;
                    } else {
                        connection_upgrade |= token.eq_ignore_ascii_case(b"upgrade");
                        connection_lists_names = true;
                    }
                }
            }
            UPGRADE => {
                upgrade_fields += 1;
                upgrade = Some(Span::of(buf, v));
            }
            EXPECT => {
                if !v.eq_ignore_ascii_case(b"100-continue") {
                    return Err(HttpError::ExpectationFailed);
                }
                expect_continue = true;
            }
            _ => {}
        }
    }

    // Why (smuggling): framing must be unambiguous. CL+TE is the classic desync; TE in
    // HTTP/1.0 is not understood by 1.0 upstreams; anything but a single final `chunked` cannot
    // be framed by us the same way an upstream would.
    let body = if has_te {
        if http10 {
            return Err(HttpError::TransferEncodingInHttp10);
        }
        if content_length.is_some() {
            return Err(HttpError::ContentLengthWithTransferEncoding);
        }
        match te_shape(buf, &fields, TRANSFER_ENCODING) {
            TeShape::Chunked => RequestBody::Chunked,
            TeShape::CodingsThenChunked => return Err(HttpError::UnsupportedTransferCoding),
            TeShape::NotChunkedFinal | TeShape::Invalid => {
                return Err(HttpError::InvalidTransferEncoding)
            }
        }
    } else {
        match content_length {
            Some(n) => RequestBody::Length(n),
            None => RequestBody::None,
        }
    };

    // Why: with two Host fields the proxy and the upstream may route/authorize on different
    // ones (RFC 9112 §3.2 requires a 400).
    if hosts > 1 {
        return Err(HttpError::MultipleHost);
    }
    if hosts == 0 && !http10 {
        return Err(HttpError::MissingHost);
    }

    Ok(Parse::Complete(RequestHead {
        head_len,
        method: Span::of(buf, method),
        target: Span::of(buf, target),
        http10,
        is_head: method == b"HEAD",
        keep_alive: if http10 {
            keep_alive_token && !close
        } else {
            !close
        },
        expect_continue: expect_continue && !http10,
        connection_lists_names,
        has_host: hosts > 0,
        upgrade: upgrade.filter(|_| {
            connection_upgrade && upgrade_fields == 1 && !http10 && body == RequestBody::None
        }),
        body,
        fields,
    }))
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
