//! Upstream response heads: parsing with RFC 9112 §6.3 body framing into an offset-based
//! [`ResponseHead`], and rewriting of that head for the client (hop-by-hop removal,
//! connection management). Every defect in an upstream head maps to a 502.

use super::{
    connection_may_remove, crlf_only, list_items, listed_in_connection, merge_content_length,
    push_decimal, te_shape, Fields, HttpError, Limits, Parse, Span, TeShape, MAX_HEADERS,
};

/// How the response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBody {
    None,
    Length(u64),
    Chunked,
    /// Read until the upstream closes; the client connection must close after it too.
    UntilClose,
}

// Header classification, assigned once at parse time (`Field::kind`).
const OTHER: u8 = 0;
const CONTENT_LENGTH: u8 = 1;
const TRANSFER_ENCODING: u8 = 2;
const CONNECTION: u8 = 3;
/// Hop-by-hop fields never forwarded to the client.
const HOP: u8 = 4;
/// `Upgrade`: hop-by-hop, except in the 101 that accepts an upgrade the client asked for.
const UPGRADE: u8 = 5;

fn classify(name: &[u8]) -> u8 {
    // Exact (case-insensitive) names: responses go to clients, which do not fold `_` into `-`
    // for framing, so there is no underscore rule here.
    const NAMES: [(&[u8], u8); 8] = [
        (b"content-length", CONTENT_LENGTH),
        (b"transfer-encoding", TRANSFER_ENCODING),
        (b"connection", CONNECTION),
        (b"keep-alive", HOP),
        (b"proxy-connection", HOP),
        (b"te", HOP),
        (b"trailer", HOP),
        (b"upgrade", UPGRADE),
    ];
    NAMES
        .iter()
        .find(|(n, _)| name.eq_ignore_ascii_case(n))
        .map_or(OTHER, |(_, k)| *k)
}

/// A parsed upstream response head. Holds only offsets into the buffer it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    head_len: usize,
    status: u16,
    reason: Span,
    body: ResponseBody,
    /// Canonical `Content-Length`, when present and valid.
    content_length: Option<u64>,
    upstream_keep_alive: bool,
    connection_lists_names: bool,
    /// A 101 accepting the upgrade the request asked for: the connection becomes a tunnel.
    switching: bool,
    fields: Fields,
}

impl ResponseHead {
    /// Bytes of the buffer taken by the head, through the blank line.
    pub fn head_len(&self) -> usize {
        self.head_len
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// 1xx other than 101: forwarded (to HTTP/1.1 clients only — RFC 9110 §15.2 forbids sending
    /// 1xx to an HTTP/1.0 client, so the caller drops it for those), then another head follows.
    pub fn is_informational(&self) -> bool {
        (100..200).contains(&self.status) && !self.switching
    }

    pub fn body(&self) -> &ResponseBody {
        &self.body
    }

    /// A `101 Switching Protocols` accepting the requested upgrade: after this head both
    /// connections carry the new protocol, relayed as bytes.
    pub fn is_switching(&self) -> bool {
        self.switching
    }

    /// The upstream connection may be reused after the body: HTTP/1.1, no `Connection: close`,
    /// and a body whose end is known (length, chunked or none).
    pub fn upstream_keep_alive(&self) -> bool {
        self.upstream_keep_alive
    }

    /// Whether the client connection can stay open after this response, given the client's
    /// own wish. False when the body is delimited by close, or when a chunked body is sent
    /// de-chunked to an HTTP/1.0 client (the close then marks its end).
    pub fn client_can_keep_alive(&self, client_keep_alive: bool, client_http10: bool) -> bool {
        client_keep_alive
            && self.body != ResponseBody::UntilClose
            && !(client_http10 && self.body == ResponseBody::Chunked)
    }

    /// Appends the head for the client to `out`: `HTTP/1.1 <code> <reason>`, hop-by-hop fields
    /// and the names listed in `Connection` removed, then `Connection: close` when the client
    /// connection will close (see [`Self::client_can_keep_alive`]) or `Connection: keep-alive`
    /// for a persistent HTTP/1.0 client. A chunked body for an HTTP/1.0 client is de-chunked:
    /// `Transfer-Encoding` is dropped and the connection closes after the body.
    pub fn write_client(
        &self,
        buf: &[u8],
        client_keep_alive: bool,
        client_http10: bool,
        out: &mut Vec<u8>,
    ) {
        out.reserve(self.head_len + 64);
        out.extend_from_slice(b"HTTP/1.1 ");
        push_decimal(u64::from(self.status), out);
        out.push(b' ');
        out.extend_from_slice(self.reason.get(buf));
        out.extend_from_slice(b"\r\n");

        let informational = self.is_informational();
        // Transfer codings are not decoded by the proxy (only the chunk framing is
        // re-encoded), so an HTTP/1.1 client must still learn about e.g. `gzip, chunked`.
        let forward_te =
            !client_http10 && matches!(self.body, ResponseBody::Chunked | ResponseBody::UntilClose);
        // RFC 9110 §8.6: no Content-Length in 1xx or 204.
        let allow_length = !informational && self.status != 204;
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
                CONTENT_LENGTH => {
                    if let (Some(n), true, false) =
                        (self.content_length, allow_length, length_written)
                    {
                        out.extend_from_slice(name);
                        out.extend_from_slice(b": ");
                        push_decimal(n, out);
                        out.extend_from_slice(b"\r\n");
                        length_written = true;
                    }
                }
                TRANSFER_ENCODING if forward_te => write_field(out, name, f.value.get(buf)),
                UPGRADE if self.switching => write_field(out, name, f.value.get(buf)),
                // CONNECTION, HOP, and TRANSFER_ENCODING when not forwarded: hop-by-hop.
                _ => {}
            }
        }

        if self.switching {
            out.extend_from_slice(b"Connection: upgrade\r\n");
        } else if !informational {
            if !self.client_can_keep_alive(client_keep_alive, client_http10) {
                out.extend_from_slice(b"Connection: close\r\n");
            } else if client_http10 {
                out.extend_from_slice(b"Connection: keep-alive\r\n");
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

impl ResponseHead {
    /// The fields an HTTP/2 client receives (RFC 9113 §8.2.2): everything `write_client` would
    /// forward except the connection-specific ones (`connection` and what it lists,
    /// `keep-alive`, `transfer-encoding`, `upgrade`, ...) and `content-length`, which the
    /// caller writes from [`Self::content_length`] in canonical form.
    pub fn end_to_end<'b>(&'b self, buf: &'b [u8]) -> impl Iterator<Item = (&'b [u8], &'b [u8])> {
        self.fields.iter().filter_map(move |f| {
            let name = f.name.get(buf);
            let listed = self.connection_lists_names
                && connection_may_remove(name)
                && listed_in_connection(buf, &self.fields, CONNECTION, name);
            (f.kind == OTHER && !listed).then(|| (name, f.value.get(buf)))
        })
    }

    /// The body's length as the client should be told it (none for 1xx and 204).
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
            .filter(|_| !self.is_informational() && self.status != 204)
    }
}

fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Parses an upstream response head from the start of `buf`. `request_was_head` selects the
/// HEAD framing rule (no body whatever the headers say). A 101 is an error: no upgrade was
/// asked for.
pub fn parse_response(
    buf: &[u8],
    request_was_head: bool,
    limits: &Limits,
) -> Result<Parse<ResponseHead>, HttpError> {
    parse(buf, request_was_head, false, limits)
}

/// [`parse_response`] for a request that asked to upgrade: a 101 that names the protocol in
/// `Upgrade` switches the connection ([`ResponseHead::is_switching`]); any other final status
/// is an ordinary response, and the connection stays HTTP.
pub fn parse_upgrade_response(
    buf: &[u8],
    limits: &Limits,
) -> Result<Parse<ResponseHead>, HttpError> {
    parse(buf, false, true, limits)
}

fn parse(
    buf: &[u8],
    request_was_head: bool,
    upgrade_requested: bool,
    limits: &Limits,
) -> Result<Parse<ResponseHead>, HttpError> {
    let max_head = limits.max_head_bytes.min(u32::MAX as usize);
    let max_headers = limits.max_headers.min(MAX_HEADERS);
    let window = &buf[..buf.len().min(max_head)];

    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers[..max_headers]);
    let head_len = match resp.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= max_head {
                Err(HttpError::UpstreamHeadTooLarge)
            } else {
                Ok(Parse::Partial)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::UpstreamHeadTooLarge),
        Err(_) => return Err(HttpError::UpstreamMalformed),
    };

    // Why (response splitting): a bare LF would let the client see header lines we did not.
    if !crlf_only(&buf[..head_len]) {
        return Err(HttpError::UpstreamMalformed);
    }
    let http10 = match resp.version {
        Some(0) => true,
        Some(1) => false,
        _ => return Err(HttpError::UpstreamMalformed),
    };
    let status = resp.code.ok_or(HttpError::UpstreamMalformed)?;
    if !(100..=599).contains(&status) {
        return Err(HttpError::UpstreamMalformed);
    }
    // A switch nobody asked for is a broken upstream.
    let switching = status == 101;
    if switching && !upgrade_requested {
        return Err(HttpError::UpstreamSwitchingProtocols);
    }
    // httparse hands back a static "" for reasons it cannot return as text; keep it empty.
    let reason = match resp.reason {
        Some(r) if !r.is_empty() => Span::of(buf, r.as_bytes()),
        _ => Span::default(),
    };

    let mut fields = Fields::new();
    let mut content_length: Option<u64> = None;
    let mut has_te = false;
    let mut close = false;
    let mut connection_lists_names = false;
    let mut upgrades = 0usize;
    for h in resp.headers.iter() {
        let (kind, v) = fields.record(buf, h, classify);
        match kind {
            CONTENT_LENGTH => merge_content_length(v, &mut content_length)
                .map_err(|_| HttpError::UpstreamBadFraming)?,
            TRANSFER_ENCODING => has_te = true,
            UPGRADE => upgrades += 1,
            CONNECTION => {
                for token in list_items(v) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                        connection_lists_names = true;
                    }
                }
            }
            _ => {}
        }
    }

    // RFC 9110 §15.2.2: the 101 says what it switches to, in exactly one Upgrade field.
    if switching && upgrades != 1 {
        return Err(HttpError::UpstreamSwitchingProtocols);
    }
    // Why: an upstream sending both could be read differently by the client and by us;
    // RFC 9112 §6.3 allows treating it as an error, which a proxy should.
    if has_te && content_length.is_some() {
        return Err(HttpError::UpstreamBadFraming);
    }
    let te = if has_te {
        match te_shape(buf, &fields, TRANSFER_ENCODING) {
            TeShape::Invalid => return Err(HttpError::UpstreamBadFraming),
            shape => Some(shape),
        }
    } else {
        None
    };

    let body = if request_was_head || (100..200).contains(&status) || status == 204 || status == 304
    {
        ResponseBody::None
    } else {
        match (te, content_length) {
            (Some(TeShape::Chunked | TeShape::CodingsThenChunked), _) => ResponseBody::Chunked,
            (Some(_), _) => ResponseBody::UntilClose,
            (None, Some(n)) => ResponseBody::Length(n),
            (None, None) => ResponseBody::UntilClose,
        }
    };

    Ok(Parse::Complete(ResponseHead {
        head_len,
        status,
        reason,
        body,
        content_length,
        upstream_keep_alive: !http10 && !close && body != ResponseBody::UntilClose && !switching,
        connection_lists_names,
        switching,
        fields,
    }))
}

#[cfg(test)]
#[path = "response_tests.rs"]
mod tests;
