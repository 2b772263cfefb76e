//! Moving body bytes over HTTP/2 streams with flow control honoured both ways: a chunk is
//! sent only once the peer's window has room for it, and a received chunk's window goes back
//! to the peer only once the chunk has been passed on, so a slow side slows the other instead
//! of filling memory. Every wait is bounded by a stall limit.

use std::future::poll_fn;
use std::time::Duration;

use bytes::Bytes;
use h2::{RecvStream, SendStream};

/// Why a send did not complete.
#[derive(Debug)]
pub(in crate::proxy) enum SendFailed {
    /// The stream or connection failed (the peer reset it, or went away).
    Stream(h2::Error),
    /// The peer's window stayed closed for the whole stall limit (a reader that never reads).
    Stalled,
}

/// Sends `data` (then END_STREAM if `end`) as the peer's window allows.
pub(in crate::proxy) async fn send_all(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
    stall: Duration,
) -> Result<(), SendFailed> {
    if data.is_empty() {
        return send.send_data(data, end).map_err(SendFailed::Stream);
    }
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = monoio::time::timeout(stall, poll_fn(|cx| send.poll_capacity(cx))).await;
        let n = match granted {
            Err(_) => return Err(SendFailed::Stalled),
            Ok(None) => return Err(SendFailed::Stream(closed())),
            Ok(Some(Err(e))) => return Err(SendFailed::Stream(e)),
            Ok(Some(Ok(n))) => n,
        };
        if n == 0 {
            continue;
        }
        let chunk = data.split_to(n.min(data.len()));
        send.send_data(chunk, end && data.is_empty())
            .map_err(SendFailed::Stream)?;
    }
    Ok(())
}

/// The next chunk of a received body (`None` at its end), its window released as it is
/// taken: the caller passes it on before asking for the next.
pub(in crate::proxy) async fn next_chunk(
    body: &mut RecvStream,
    stall: Duration,
) -> Result<Option<Bytes>, RecvFailed> {
    match monoio::time::timeout(stall, body.data()).await {
        Err(_) => Err(RecvFailed::Stalled),
        Ok(None) => Ok(None),
        Ok(Some(Err(e))) => Err(RecvFailed::Stream(e)),
        Ok(Some(Ok(chunk))) => {
            let _ = body.flow_control().release_capacity(chunk.len());
            Ok(Some(chunk))
        }
    }
}

/// Why a receive did not complete.
#[derive(Debug)]
pub(in crate::proxy) enum RecvFailed {
    Stream(h2::Error),
    Stalled,
}

/// What `poll_capacity` ending means: the stream can carry no more.
fn closed() -> h2::Error {
    h2::Error::from(h2::Reason::STREAM_CLOSED)
}
