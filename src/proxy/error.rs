//! Why an exchange failed, and the one function that decides what the client sees because of it.

use std::io;

use crate::http::HttpError;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("client I/O: {0}")]
    ClientIo(io::Error),
    #[error("client closed in the middle of a request")]
    ClientAborted,
    #[error("client sent no complete request head in time")]
    ClientHeadTimeout,
    #[error("client stalled while sending the body")]
    ClientBodyTimeout,
    #[error("bad request: {0}")]
    BadRequest(HttpError),
    #[error("upstream connect: {0}")]
    UpstreamConnect(io::Error),
    #[error("upstream I/O: {0}")]
    UpstreamIo(io::Error),
    #[error("upstream closed before sending a response")]
    UpstreamClosedEarly,
    #[error("upstream sent no response head in time")]
    UpstreamTimeout,
    #[error("upstream stalled in the middle of a response")]
    UpstreamBodyTimeout,
    #[error("invalid upstream response: {0}")]
    BadResponse(HttpError),
    #[error("upstream closed in the middle of a response")]
    UpstreamTruncated,
}

/// What the client gets when an exchange fails.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send this small, complete HTTP response, then close.
    Respond(u16),
    /// Close the connection without another byte: either nothing useful can be said, or part of
    /// a response was already sent and a clean-looking end would be a lie.
    Close,
}

/// The single place that maps failures onto the wire.
pub fn effect(err: &ProxyError, response_started: bool) -> Effect {
    if response_started {
        return Effect::Close;
    }
    match err {
        ProxyError::ClientIo(_) | ProxyError::ClientAborted | ProxyError::ClientBodyTimeout => {
            Effect::Close
        }
        ProxyError::ClientHeadTimeout => Effect::Respond(408),
        ProxyError::BadRequest(e) => Effect::Respond(e.status()),
        ProxyError::UpstreamConnect(_)
        | ProxyError::UpstreamIo(_)
        | ProxyError::UpstreamClosedEarly
        | ProxyError::BadResponse(_) => Effect::Respond(502),
        ProxyError::UpstreamTimeout => Effect::Respond(504),
        ProxyError::UpstreamBodyTimeout | ProxyError::UpstreamTruncated => Effect::Close,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn started_response_is_never_followed_by_an_error_response() {
        assert_eq!(effect(&ProxyError::UpstreamTimeout, true), Effect::Close);
        assert_eq!(
            effect(&ProxyError::UpstreamTimeout, false),
            Effect::Respond(504)
        );
    }

    #[test]
    fn upstream_failures_before_the_response_are_502() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(
            effect(&ProxyError::UpstreamConnect(refused), false),
            Effect::Respond(502)
        );
        assert_eq!(
            effect(&ProxyError::UpstreamClosedEarly, false),
            Effect::Respond(502)
        );
    }

    #[test]
    fn truncated_upstream_response_closes_the_client() {
        assert_eq!(effect(&ProxyError::UpstreamTruncated, false), Effect::Close);
    }
}
