//! A server-side TLS stream over a monoio TCP socket, driving a rustls `ServerConnection` directly.
//!
//! Why not `monoio_rustls::TlsAcceptor`: its stream keeps the rustls connection private after the
//! handshake (the peer certificates are out of reach), `into_parts` drops the ciphertext it has
//! read ahead (a TLS 1.3 client's first request often arrives in the same flight as Finished),
//! and it pins two 16 KiB buffers to every connection for its whole life. Here the ciphertext
//! buffers belong to this struct, so nothing read during the handshake can be lost, the peer
//! certificates are readable at any time, and the buffers go back to the worker's pool whenever
//! the connection is idle.

use std::io::{self, BufRead, Write};
use std::rc::Rc;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use rustls::ServerConnection;
use rustls_pki_types::CertificateDer;

use super::buffers::{PooledBuf, Slot, BUF_CAPACITY};
use super::handshake_turns::HandshakeTurns;

pub struct TlsConn {
    tcp: TcpStream,
    tls: ServerConnection,
    /// Ciphertext read from the socket; `rx_pos..` not yet handed to rustls.
    rx: Slot,
    rx_pos: usize,
    /// Ciphertext waiting to be written.
    tx: Slot,
    /// Longest a write to the client may make no progress; `None`: no limit.
    write_stall: Option<Duration>,
    /// A write failed: ciphertext was lost, so the TLS stream is broken for good. Every later
    /// write fails at once instead of sending records the client can no longer decrypt in
    /// sequence.
    dead: bool,
    /// SHA-256 (hex) of the client certificate the verifier refused, for the refusal log line.
    /// Boxed: set only on a refusal, and every idle connection carries this struct.
    refused_leaf: Option<Box<[u8; 64]>>,
}

/// Most bytes read and dropped while lingering before a close.
const LINGER_MAX_BYTES: usize = 1 << 20;

impl TlsConn {
    pub fn new(tcp: TcpStream, tls: ServerConnection) -> Self {
        Self {
            tcp,
            tls,
            rx: Slot::default(),
            rx_pos: 0,
            tx: Slot::default(),
            write_stall: None,
            dead: false,
            refused_leaf: None,
        }
    }

    /// Bounds every socket write: a client that stops reading (slow read) would otherwise hold
    /// the connection, its buffers and an upstream connection forever. A write that times out
    /// fails with `TimedOut`, and the connection must then be dropped.
    pub fn set_write_timeout(&mut self, limit: Duration) {
        self.write_stall = Some(limit);
    }

    /// The client chain as presented (leaf first); restored from the ticket on resumption.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.tls.peer_certificates()
    }

    /// The SHA-256 (hex) of the client certificate refused during the handshake, if any.
    pub fn rejected_leaf(&self) -> Option<[u8; 64]> {
        self.refused_leaf.as_deref().copied()
    }

    /// The local address of the client connection.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp.local_addr().ok()
    }

    /// The negotiated ALPN protocol.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.tls.alpn_protocol()
    }

    /// The SNI the client sent.
    pub fn server_name(&self) -> Option<&str> {
        self.tls.server_name()
    }

    /// The negotiated cipher suite's name (e.g. `TLS13_AES_256_GCM_SHA384`).
    pub fn cipher_suite_name(&self) -> Option<&'static str> {
        self.tls
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
    }

    /// The negotiated TLS version.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.tls.protocol_version()
    }

    /// Full or resumed handshake (for the connection log line).
    pub fn handshake_kind(&self) -> Option<rustls::HandshakeKind> {
        self.tls.handshake_kind()
    }

    /// Runs the handshake to completion. Ciphertext that follows the client's Finished stays
    /// buffered (in rustls or in `rx`) for the first `read_plain`.
    ///
    /// Each step's cryptography waits for a turn of the worker (`turns`), so a flood of
    /// handshakes does not hold up the worker's established connections.
    pub async fn handshake(&mut self, turns: &Rc<HandshakeTurns>) -> io::Result<()> {
        loop {
            if self.tls.wants_write() {
                self.flush().await?;
            }
            if !self.tls.is_handshaking() {
                return Ok(());
            }
            if self.take_in(0).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "client closed during the TLS handshake",
                ));
            }
            turns.take().await;
            self.process().await?;
        }
    }

    /// True when every ciphertext byte read from the socket has been handed to rustls.
    fn rx_drained(&self) -> bool {
        self.rx_pos >= self.rx.get_ref().len()
    }

    /// True when decrypted or undecrypted client bytes are already buffered.
    pub fn has_buffered_input(&mut self) -> bool {
        !self.rx_drained() || matches!(self.tls.reader().fill_buf(), Ok(b) if !b.is_empty())
    }

    /// Takes the connection apart for a poll-driven protocol (HTTP/2): the socket, the rustls
    /// connection (with any plaintext it has decrypted) and the ciphertext read ahead but not
    /// yet handed to rustls, which must be fed before anything new is read from the socket.
    pub fn into_parts(mut self) -> (TcpStream, ServerConnection, Vec<u8>) {
        let ahead = self.rx.get_ref()[self.rx_pos.min(self.rx.get_ref().len())..].to_vec();
        self.rx.release();
        self.tx.release_if_empty();
        (self.tcp, self.tls, ahead)
    }

    /// Waits until the socket is readable without holding a buffer (idle keep-alive). Cancelling
    /// this wait loses nothing: no bytes are taken from the kernel.
    pub async fn readable(&self) -> io::Result<()> {
        self.tcp.readable(false).await
    }

    /// Gives the ciphertext buffers back to the worker's pool if they hold nothing, and makes
    /// rustls shrink its own record buffer.
    ///
    /// rustls grows that buffer (its deframer's) in 4 KiB steps while a record arrives, so a
    /// 16 KiB record of a request body leaves a 32 KiB allocation (the `Vec` doubles), and it
    /// shrinks back to 4 KiB only at the next `read_tls` that finds it empty. A read that
    /// yields nothing is such a call: it shrinks the buffer and changes nothing else (no bytes,
    /// no EOF). The 4 KiB it keeps is the least rustls 0.23 allows.
    pub fn release_buffers(&mut self) {
        if self.rx_drained() {
            self.rx_pos = 0;
            self.rx.release();
        }
        self.tx.release_if_empty();
        let _ = self.tls.read_tls(&mut NothingYet);
    }

    /// Appends up to `max` decrypted bytes to `dst`: all that is already at hand, or, when
    /// nothing is, what the next read from the socket brings. `Ok(0)` means the client closed
    /// the TLS session (close_notify, or a TCP EOF, which for a request stream is just as final).
    pub async fn read_plain(&mut self, dst: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        // A read for more than a record (a long body) may bring as many records at once.
        let room = if max > BUF_CAPACITY { max + 1024 } else { 0 };
        let mut taken = 0;
        loop {
            match self.tls.reader().fill_buf() {
                Ok(chunk) if !chunk.is_empty() => {
                    let n = chunk.len().min(max - taken);
                    dst.extend_from_slice(&chunk[..n]);
                    self.tls.reader().consume(n);
                    taken += n;
                    if taken == max {
                        return Ok(taken);
                    }
                    continue;
                }
                Ok(_) => return Ok(taken),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // More ciphertext at hand is decrypted without waiting; the socket is read
                    // only when nothing was taken.
                    if taken > 0 && self.rx_drained() {
                        return Ok(taken);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(taken),
                Err(_) if taken > 0 => return Ok(taken),
                Err(e) => return Err(e),
            }
            if self.feed(room).await? == 0 {
                // rustls now knows about the EOF; the next fill_buf reports it.
                continue;
            }
            if self.tls.wants_write() {
                // Post-handshake messages (KeyUpdate, tickets) want an answer.
                self.flush().await?;
            }
        }
    }

    /// Hands buffered ciphertext to rustls, reading from the socket first if none is buffered.
    /// Returns the number of ciphertext bytes fed (0 at EOF).
    async fn feed(&mut self, room: usize) -> io::Result<usize> {
        let n = self.take_in(room).await?;
        if n > 0 {
            self.process().await?;
        }
        Ok(n)
    }

    /// Hands buffered ciphertext to rustls without processing it, reading from the socket
    /// first if none is buffered. Returns the number of bytes handed over (0 at EOF).
    async fn take_in(&mut self, room: usize) -> io::Result<usize> {
        if self.rx_drained() {
            self.rx_pos = 0;
            let n = self.rx.refill(&mut self.tcp, room).await?;
            if n == 0 {
                self.tls.read_tls(&mut io::empty())?;
                return Ok(0);
            }
        }
        let mut pending = &self.rx.get_ref()[self.rx_pos..];
        let n = self.tls.read_tls(&mut pending)?;
        self.rx_pos += n;
        Ok(n)
    }

    /// Lets rustls process what it was handed (decryption; in a handshake, its cryptography).
    async fn process(&mut self) -> io::Result<()> {
        if let Err(e) = self.tls.process_new_packets() {
            // Taken synchronously after the verifier ran (a refusal always fails this call):
            // by the first await another connection of this worker could refuse one too.
            self.refused_leaf = crate::tls::verify::take_refused_leaf().map(Box::new);
            // rustls queued the matching alert; try to deliver it before giving up.
            let _ = self.flush().await;
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        Ok(())
    }

    /// Encrypts `data` into rustls' outgoing queue, flushing when the queue is full.
    pub async fn write_plain(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if self.dead {
                return Err(broken());
            }
            let n = self.tls.writer().write(data)?;
            data = &data[n..];
            if n == 0 || !data.is_empty() {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// Writes every queued TLS record to the socket.
    pub async fn flush(&mut self) -> io::Result<()> {
        if self.dead {
            return Err(broken());
        }
        while self.tls.wants_write() {
            let tls = &mut self.tls;
            let tcp = &mut self.tcp;
            let stall = self.write_stall;
            let sent = self
                .tx
                .lend(|mut buf| async move {
                    buf.clear();
                    while tls.wants_write() {
                        if let Err(e) = tls.write_tls(&mut *buf) {
                            return (Err(e), Some(buf));
                        }
                    }
                    let (res, buf) = write_all(tcp, buf, stall).await;
                    // Sent: emptied, so an idle connection gives the buffer back to the pool.
                    (
                        res,
                        buf.map(|mut b| {
                            b.clear();
                            b
                        }),
                    )
                })
                .await;
            if let Err(e) = sent {
                self.dead = true;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Shuts the TCP write side down (FIN), then reads and drops whatever the client still
    /// sends, for at most `limit` or 1 MiB, before the socket closes. Closing with unread input
    /// would make the kernel send a reset, and a client still busy sending (a request body, or
    /// the rest of its handshake flight) would see the reset instead of our last words: the
    /// 400 or 431, or the alert that says why its certificate was refused (nginx calls this
    /// lingering close).
    pub async fn linger(&mut self, limit: Duration) {
        if self.tcp.shutdown().await.is_err() {
            return;
        }
        let tcp = &mut self.tcp;
        let drain = self.rx.lend(|mut buf| async move {
            let mut drained = 0usize;
            while drained < LINGER_MAX_BYTES {
                buf.clear();
                let cap = buf.capacity();
                let (res, slice) = tcp.read(buf.slice_mut(0..cap)).await;
                buf = slice.into_inner();
                match res {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
            buf.clear();
            ((), Some(buf))
        });
        let _ = monoio::time::timeout(limit, drain).await;
        self.rx_pos = 0;
        self.dead = true;
    }

    /// Ends a connection after an error response without losing that response: close_notify,
    /// then [`Self::linger`].
    pub async fn linger_close(&mut self, limit: Duration) {
        self.tls.send_close_notify();
        let _ = self.flush().await;
        self.linger(limit).await;
    }

    /// Queues close_notify (sent by the next flush): this side will send no more. The client
    /// may go on sending (a tunnel's half-close).
    pub fn send_close_notify(&mut self) {
        self.tls.send_close_notify();
    }

    /// A normal close: close_notify, then FIN, so the client reads a clean end of the stream.
    pub async fn close(&mut self) {
        self.tls.send_close_notify();
        if self.flush().await.is_ok() {
            let _ = self.tcp.shutdown().await;
        }
        self.dead = true;
    }
}

/// A reader with no bytes ready: see [`TlsConn::release_buffers`].
struct NothingYet;

impl io::Read for NothingYet {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

fn broken() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "an earlier write to the client failed",
    )
}

/// Writes all of `buf`, one write at a time, so the stall limit bounds each wait for progress,
/// not the whole batch (a slow but steady reader is fine). Hands the buffer back unless a
/// timeout cancelled the write while the kernel held it.
async fn write_all(
    tcp: &mut TcpStream,
    mut buf: PooledBuf,
    stall: Option<Duration>,
) -> (io::Result<()>, Option<PooledBuf>) {
    let mut done = 0;
    while done < buf.len() {
        let write = tcp.write(buf.slice(done..));
        let (res, slice) = match stall {
            None => write.await,
            Some(limit) => match monoio::time::timeout(limit, write).await {
                Ok(r) => r,
                Err(_) => {
                    let e = io::Error::new(io::ErrorKind::TimedOut, "client stopped reading");
                    return (Err(e), None);
                }
            },
        };
        buf = slice.into_inner();
        match res {
            Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), Some(buf)),
            Ok(n) => done += n,
            Err(e) => return (Err(e), Some(buf)),
        }
    }
    (Ok(()), Some(buf))
}

#[cfg(test)]
#[path = "tls_conn_tests.rs"]
mod tests;
