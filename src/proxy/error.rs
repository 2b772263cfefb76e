//! Why an exchange failed, split by the side at fault, and the one function that decides what
//! the client sees because of it.
//!
//! The split matters beyond the message: a client's bad framing is a 400 and the client's
//! problem, the app's bad framing is a 502 and the operator's; metrics and logs count them
//! apart, and nobody has to guess from a variant name which side a parse error came from.

use std::io;

use crate::http::{ChunkError, HttpError};
use crate::ops::metrics::UpstreamErrorKind;

/// The client broke the exchange.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("client I/O: {0}")]
    Io(io::Error),
    #[error("client closed in the middle of a request")]
    Aborted,
    #[error("client sent no complete request head in time")]
    HeadTimeout,
    /// The request's Host belongs to another site than the one the TLS handshake chose (or
    /// to none this site serves): answering it would cross a site's policy.
    #[error("Host does not belong to the site the TLS handshake chose")]
    Misdirected,
    /// The request-target cannot be put in normal form for per-path routing.
    #[error("bad request target: {0}")]
    BadPath(crate::http::path::PathError),
    /// A per-path rule refuses the client's certificate (or its absence).
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("client stalled while sending the body")]
    BodyTimeout,
    #[error("bad request: {0}")]
    BadHead(HttpError),
    #[error("bad request body: {0}")]
    BadBody(ChunkError),
    /// An HTTP/2 request that RFC 9113 calls malformed (§8.1.1).
    #[error("malformed HTTP/2 request: {0}")]
    Malformed(crate::http::h2::Malformed),
    /// The client's HTTP/2 stream failed (reset, or its connection went).
    #[error("client HTTP/2 stream: {0}")]
    Stream(h2::Error),
}

/// The app (or the way to it) broke the exchange.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream connect: {0}")]
    Connect(#[from] super::upstream::ConnectError),
    #[error("upstream I/O: {0}")]
    Io(io::Error),
    #[error("upstream closed before sending a response")]
    ClosedEarly,
    #[error("upstream sent no response head in time")]
    Timeout,
    #[error("upstream stopped reading the request")]
    WriteStalled,
    #[error("upstream stalled in the middle of a response")]
    BodyTimeout,
    #[error("invalid upstream response: {0}")]
    BadHead(HttpError),
    #[error("invalid upstream response body: {0}")]
    BadBody(ChunkError),
    #[error("upstream closed in the middle of a response")]
    Truncated,
    /// The h2c upstream's connection or stream failed.
    #[error("upstream HTTP/2: {0}")]
    H2(h2::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// What the client gets when an exchange fails.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send this small, complete HTTP response, then close.
    Respond(u16),
    /// Send `403 Forbidden` with this one-line reason, then close.
    Forbidden(&'static str),
    /// Close the connection without another byte: either nothing useful can be said, or part of
    /// a response was already sent and a clean-looking end would be a lie. On HTTP/2, the
    /// stream is reset (INTERNAL_ERROR, or CANCEL when the client went first).
    Close,
    /// HTTP/2 only: the request was malformed, a stream error of type PROTOCOL_ERROR.
    Malformed,
}

/// The single place that maps failures onto the wire.
pub fn effect(err: &ProxyError, response_started: bool) -> Effect {
    if response_started {
        return Effect::Close;
    }
    match err {
        ProxyError::Client(e) => match e {
            ClientError::Io(_)
            | ClientError::Aborted
            | ClientError::BodyTimeout
            | ClientError::Stream(_) => Effect::Close,
            ClientError::Malformed(_) => Effect::Malformed,
            ClientError::HeadTimeout => Effect::Respond(408),
            ClientError::Misdirected => Effect::Respond(421),
            ClientError::BadPath(_) => Effect::Respond(400),
            ClientError::Forbidden(reason) => Effect::Forbidden(reason),
            ClientError::BadHead(e) => Effect::Respond(e.status()),
            ClientError::BadBody(_) => Effect::Respond(400),
        },
        ProxyError::Upstream(e) => match e {
            UpstreamError::Connect(_)
            | UpstreamError::Io(_)
            | UpstreamError::ClosedEarly
            | UpstreamError::BadHead(_)
            | UpstreamError::H2(_) => Effect::Respond(502),
            UpstreamError::Timeout | UpstreamError::WriteStalled => Effect::Respond(504),
            // Before the response started these cannot happen (they are body errors); a 502
            // is still the truthful answer if they ever do.
            UpstreamError::BadBody(_) => Effect::Respond(502),
            UpstreamError::BodyTimeout | UpstreamError::Truncated => Effect::Close,
        },
    }
}

/// The `kind` label an upstream failure is counted under; `None` for the client's failures.
pub fn upstream_kind(err: &ProxyError) -> Option<UpstreamErrorKind> {
    let ProxyError::Upstream(e) = err else {
        return None;
    };
    Some(match e {
        UpstreamError::Connect(_) => UpstreamErrorKind::Connect,
        UpstreamError::Timeout | UpstreamError::WriteStalled | UpstreamError::BodyTimeout => {
            UpstreamErrorKind::Timeout
        }
        UpstreamError::BadHead(_) | UpstreamError::BadBody(_) => UpstreamErrorKind::Invalid,
        UpstreamError::Io(_)
        | UpstreamError::ClosedEarly
        | UpstreamError::Truncated
        | UpstreamError::H2(_) => UpstreamErrorKind::Closed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::upstream::ConnectError;

    #[test]
    fn started_response_is_never_followed_by_an_error_response() {
        let e = ProxyError::from(UpstreamError::Timeout);
        assert_eq!(effect(&e, true), Effect::Close);
        assert_eq!(effect(&e, false), Effect::Respond(504));
    }

    #[test]
    fn upstream_failures_before_the_response_are_502() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(
            effect(
                &UpstreamError::Connect(ConnectError::Tcp(refused)).into(),
                false
            ),
            Effect::Respond(502)
        );
        assert_eq!(
            effect(&UpstreamError::ClosedEarly.into(), false),
            Effect::Respond(502)
        );
    }

    #[test]
    fn client_framing_errors_are_400_and_upstream_ones_502() {
        let client = ProxyError::from(ClientError::BadBody(ChunkError::InvalidSize));
        let upstream = ProxyError::from(UpstreamError::BadBody(ChunkError::InvalidSize));
        assert_eq!(effect(&client, false), Effect::Respond(400));
        assert_eq!(effect(&upstream, false), Effect::Respond(502));
    }

    #[test]
    fn truncated_upstream_response_closes_the_client() {
        assert_eq!(
            effect(&UpstreamError::Truncated.into(), false),
            Effect::Close
        );
    }
}
