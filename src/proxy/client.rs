//! The client side of an HTTP/1.1 connection: its TLS stream and the decrypted bytes not yet
//! consumed, with the few moves the exchange loop makes on them.

use std::time::Duration;

use monoio::buf::IoBuf;
use monoio::io::AsyncWriteRent;

use super::buffers::Slot;
use super::error::{ClientError, UpstreamError};
use super::tls_conn::TlsConn;
use super::upstream::write_up;

/// The client side: its TLS stream and the decrypted bytes not yet consumed (pipelined
/// requests wait here between exchanges).
pub(super) struct Client {
    pub(super) tls: TlsConn,
    pub(super) inbuf: Slot,
    /// Start of the unconsumed part of `inbuf`.
    pub(super) start: usize,
    /// Plaintext bytes taken from the client so far (heads and bodies).
    pub(super) received: u64,
}

impl Client {
    pub(super) fn pending(&self) -> &[u8] {
        self.inbuf.get_ref().get(self.start..).unwrap_or(&[])
    }

    pub(super) fn consume(&mut self, n: usize) {
        self.start += n;
        self.received += n as u64;
    }

    /// Drops consumed bytes so the buffer has room again.
    pub(super) fn compact(&mut self) {
        let start = self.start;
        let buf = self.inbuf.get();
        if start >= buf.len() {
            buf.clear();
        } else if start > 0 {
            buf.drain(..start);
        }
        self.start = 0;
    }

    /// Reads up to `max` more decrypted bytes into the buffer.
    pub(super) async fn read(&mut self, max: usize) -> std::io::Result<usize> {
        self.compact();
        let buf: &mut Vec<u8> = self.inbuf.get();
        self.tls.read_plain(buf, max).await
    }

    /// Answers `Expect: 100-continue` (certgate does, and never forwards `Expect`).
    pub(super) async fn continue_100(&mut self) -> Result<(), ClientError> {
        const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
        self.tls
            .write_plain(CONTINUE_100)
            .await
            .map_err(ClientError::Io)?;
        self.tls.flush().await.map_err(ClientError::Io)
    }

    /// Reads more of a request body, within the idle limit.
    pub(super) async fn read_body(
        &mut self,
        max: usize,
        limit: Duration,
    ) -> Result<(), ClientError> {
        match monoio::time::timeout(limit, self.read(max)).await {
            Ok(Ok(0)) => Err(ClientError::Aborted),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(ClientError::Io(e)),
            Err(_) => Err(ClientError::BodyTimeout),
        }
    }

    /// Writes `inbuf[range]` (relative to the unconsumed part) to the app without copying it.
    pub(super) async fn forward<W: AsyncWriteRent>(
        &mut self,
        wr: &mut W,
        range: std::ops::Range<usize>,
        limit: Duration,
    ) -> Result<(), UpstreamError> {
        if range.is_empty() {
            return Ok(());
        }
        let (from, to) = (self.start + range.start, self.start + range.end);
        self.inbuf
            .lend(|buf| async move {
                let (res, slice) = write_up(wr, buf.slice(from..to), limit).await;
                (res, slice.map(|s| s.into_inner()))
            })
            .await
    }
}
