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
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use rustls::ServerConnection;
use rustls_pki_types::CertificateDer;

use super::buffers::Slot;

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
}

impl TlsConn {
    pub fn new(tcp: TcpStream, tls: ServerConnection) -> Self {
        Self {
            tcp,
            tls,
            rx: Slot::default(),
            rx_pos: 0,
            tx: Slot::default(),
            write_stall: None,
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

    /// Full or resumed handshake (for the connection log line).
    pub fn handshake_kind(&self) -> Option<rustls::HandshakeKind> {
        self.tls.handshake_kind()
    }

    /// Runs the handshake to completion. Ciphertext that follows the client's Finished stays
    /// buffered (in rustls or in `rx`) for the first `read_plain`.
    pub async fn handshake(&mut self) -> io::Result<()> {
        loop {
            if self.tls.wants_write() {
                self.flush().await?;
            }
            if !self.tls.is_handshaking() {
                return Ok(());
            }
            if self.feed().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "client closed during the TLS handshake",
                ));
            }
        }
    }

    /// True when decrypted or undecrypted client bytes are already buffered.
    pub fn has_buffered_input(&mut self) -> bool {
        self.rx_pos < self.rx.get_ref().len()
            || matches!(self.tls.reader().fill_buf(), Ok(b) if !b.is_empty())
    }

    /// Waits until the socket is readable without holding a buffer (idle keep-alive). Cancelling
    /// this wait loses nothing: no bytes are taken from the kernel.
    pub async fn readable(&self) -> io::Result<()> {
        self.tcp.readable(false).await
    }

    /// Gives the ciphertext buffers back to the worker's pool if they hold nothing.
    pub fn release_buffers(&mut self) {
        if self.rx_pos >= self.rx.get_ref().len() {
            self.rx_pos = 0;
            self.rx.release();
        }
        self.tx.release_if_empty();
    }

    /// Appends up to `max` decrypted bytes to `dst`. `Ok(0)` means the client closed the TLS
    /// session (close_notify, or a TCP EOF, which for a request stream is just as final).
    pub async fn read_plain(&mut self, dst: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        loop {
            match self.tls.reader().fill_buf() {
                Ok(chunk) if !chunk.is_empty() => {
                    let n = chunk.len().min(max);
                    dst.extend_from_slice(&chunk[..n]);
                    self.tls.reader().consume(n);
                    return Ok(n);
                }
                Ok(_) => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if self.feed().await? == 0 {
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
    async fn feed(&mut self) -> io::Result<usize> {
        let buf = self.rx.get();
        if self.rx_pos >= buf.len() {
            buf.clear();
            self.rx_pos = 0;
            let buf = self.rx.take();
            let cap = buf.capacity();
            let (res, slice) = self.tcp.read(buf.slice_mut(0..cap)).await;
            self.rx.put(slice.into_inner());
            if res? == 0 {
                self.tls.read_tls(&mut io::empty())?;
                return Ok(0);
            }
        }
        let buf = self.rx.get();
        let mut pending = &buf[self.rx_pos..];
        let n = self.tls.read_tls(&mut pending)?;
        self.rx_pos += n;
        if let Err(e) = self.tls.process_new_packets() {
            // rustls queued the matching alert; try to deliver it before giving up.
            let _ = self.flush().await;
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        Ok(n)
    }

    /// Encrypts `data` into rustls' outgoing queue, flushing when the queue is full.
    pub async fn write_plain(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
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
        while self.tls.wants_write() {
            let mut buf = self.tx.take();
            buf.clear();
            while self.tls.wants_write() {
                if let Err(e) = self.tls.write_tls(&mut buf) {
                    self.tx.put(buf);
                    return Err(e);
                }
            }
            // One write at a time, so the stall limit bounds each wait for progress, not the
            // whole batch (a slow but steady reader is fine).
            let mut done = 0;
            while done < buf.len() {
                let write = self.tcp.write(buf.slice(done..));
                let (res, slice) = match self.write_stall {
                    None => write.await,
                    Some(limit) => monoio::time::timeout(limit, write).await.map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "client stopped reading")
                    })?,
                };
                buf = slice.into_inner();
                match res {
                    Ok(0) => {
                        self.tx.put(buf);
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    Ok(n) => done += n,
                    Err(e) => {
                        self.tx.put(buf);
                        return Err(e);
                    }
                }
            }
            // Sent: emptied, so an idle connection gives the buffer back to the pool.
            buf.clear();
            self.tx.put(buf);
        }
        Ok(())
    }

    /// Ends a connection after an error response without losing that response: close_notify,
    /// FIN, then whatever the client still sends is read and dropped (for at most `limit` or
    /// 1 MiB) before the socket closes. Closing with unread input would make the kernel send a
    /// reset, and a client still busy sending its request would see the reset instead of the
    /// 400 or 431 (nginx calls this lingering close).
    pub async fn linger_close(&mut self, limit: std::time::Duration) {
        self.close().await;
        if self.tcp.shutdown().await.is_err() {
            return;
        }
        let drain = async {
            let mut drained = 0usize;
            let mut buf = self.rx.take();
            while drained < 1 << 20 {
                buf.clear();
                let cap = buf.capacity();
                let (res, slice) = self.tcp.read(buf.slice_mut(0..cap)).await;
                buf = slice.into_inner();
                match res {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        };
        let _ = monoio::time::timeout(limit, drain).await;
    }

    /// Sends close_notify (best effort) before the socket is dropped.
    pub async fn close(&mut self) {
        self.tls.send_close_notify();
        let _ = self.flush().await;
    }
}
