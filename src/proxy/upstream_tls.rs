//! A client-side TLS stream to the upstream, in two halves that can work at once: the exchange
//! keeps one read in flight while the request body goes out (an app may answer early), and a
//! tunnel reads and writes both ways.
//!
//! The halves share the rustls `ClientConnection` through an `Rc<RefCell<…>>` (one worker
//! thread, so no lock), and never hold the borrow across an await: each call takes what it
//! needs (plaintext to encrypt, ciphertext to decrypt) and then waits on its own socket half.
//! Only the write half writes ciphertext, so records leave in the order rustls made them.
//! Messages rustls wants to send after a read (a KeyUpdate answer, an alert) go out with the
//! next write or shutdown.
//!
//! A read or write cancelled mid-way (a timeout) loses the bytes the kernel held for it; the
//! callers never reuse a connection after a timeout, so that only ends a connection that was
//! ending anyway. A later call on such a half fails rather than misread the stream.

use std::cell::RefCell;
use std::io::{self, BufRead, Write};
use std::rc::Rc;
use std::sync::Arc;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut, RawBuf};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;
use monoio::BufResult;
use rustls::{ClientConfig, ClientConnection};
use rustls_pki_types::ServerName;

use super::buffers::{PooledBuf, Slot};

type Shared = Rc<RefCell<ClientConnection>>;

pub struct TlsReadHalf {
    tcp: OwnedReadHalf<TcpStream>,
    tls: Shared,
    /// Ciphertext read from the socket; `rx_pos..` not yet handed to rustls.
    rx: Slot,
    rx_pos: usize,
    /// A read was cancelled while the kernel held its buffer: the stream has a hole.
    broken: bool,
}

pub struct TlsWriteHalf {
    tcp: OwnedWriteHalf<TcpStream>,
    tls: Shared,
    tx: Slot,
    broken: bool,
}

/// Runs a client handshake on `tcp` and splits the stream. Ciphertext the app sent right after
/// its Finished (TLS 1.3 tickets, an early response) stays buffered for the first read.
pub async fn connect(
    mut tcp: TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> io::Result<(TlsReadHalf, TlsWriteHalf)> {
    let mut tls = ClientConnection::new(config, name).map_err(io::Error::other)?;
    let mut rx = PooledBuf::take();
    let mut tx = PooledBuf::take();
    let mut rx_pos = 0;
    loop {
        if tls.wants_write() {
            tx.clear();
            while tls.wants_write() {
                tls.write_tls(&mut *tx)?;
            }
            let (res, back) = tcp.write_all(tx).await;
            tx = back;
            res?;
        }
        if !tls.is_handshaking() {
            break;
        }
        if rx_pos == rx.len() {
            rx.clear();
            rx_pos = 0;
            let cap = rx.capacity();
            let (res, slice) = tcp.read(rx.slice_mut(0..cap)).await;
            rx = slice.into_inner();
            if res? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the upstream closed during the TLS handshake",
                ));
            }
        }
        rx_pos += tls.read_tls(&mut &rx[rx_pos..])?;
        if let Err(e) = tls.process_new_packets() {
            // rustls queued the alert that says why; the app deserves to see it.
            tx.clear();
            while tls.wants_write() && tls.write_tls(&mut *tx).is_ok() {}
            let _ = tcp.write_all(tx).await;
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
    }
    rx.drain(..rx_pos);
    let mut rx_slot = Slot::default();
    if !rx.is_empty() {
        rx_slot.get().extend_from_slice(&rx);
    }
    let tls = Rc::new(RefCell::new(tls));
    let (rd, wr) = tcp.into_split();
    Ok((
        TlsReadHalf {
            tcp: rd,
            tls: tls.clone(),
            rx: rx_slot,
            rx_pos: 0,
            broken: false,
        },
        TlsWriteHalf {
            tcp: wr,
            tls,
            tx: Slot::default(),
            broken: false,
        },
    ))
}

/// Puts the halves back together for the pool; `None` if they are not two halves of one
/// stream or a half is broken.
pub fn reunite(rd: TlsReadHalf, wr: TlsWriteHalf) -> Option<TlsStream> {
    if rd.broken || wr.broken || !Rc::ptr_eq(&rd.tls, &wr.tls) {
        return None;
    }
    let tcp = rd.tcp.reunite(wr.tcp).ok()?;
    drop(wr.tls);
    let mut rx = rd.rx;
    // An idle pooled connection holds no buffer: whatever was read was also consumed, since
    // a connection is pooled only when its response ended exactly at the end of the bytes
    // read.
    if rd.rx_pos >= rx.get_ref().len() {
        rx.release();
    }
    Some(TlsStream {
        tcp,
        tls: rd.tls,
        rx,
        rx_pos: rd.rx_pos,
    })
}

/// An idle TLS connection in the pool.
pub struct TlsStream {
    tcp: TcpStream,
    tls: Shared,
    rx: Slot,
    rx_pos: usize,
}

impl TlsStream {
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Split again for the next exchange.
    pub fn split(self) -> (TlsReadHalf, TlsWriteHalf) {
        let (rd, wr) = self.tcp.into_split();
        (
            TlsReadHalf {
                tcp: rd,
                tls: self.tls.clone(),
                rx: self.rx,
                rx_pos: self.rx_pos,
                broken: false,
            },
            TlsWriteHalf {
                tcp: wr,
                tls: self.tls,
                tx: Slot::default(),
                broken: false,
            },
        )
    }

    /// Plaintext or ciphertext is buffered: the app sent something nobody asked for, so the
    /// connection must not carry another request.
    pub fn has_buffered_input(&self) -> bool {
        let mut tls = self.tls.borrow_mut();
        self.rx_pos < self.rx.get_ref().len()
            || matches!(tls.reader().fill_buf(), Ok(b) if !b.is_empty())
    }
}

impl TlsReadHalf {
    /// Copies decrypted bytes into `dst` (at most `cap` of them); `Ok(None)` when rustls has
    /// none and wants more ciphertext.
    fn take_plain(&self, dst: *mut u8, cap: usize) -> io::Result<Option<usize>> {
        let mut tls = self.tls.borrow_mut();
        match tls.reader().fill_buf() {
            Ok(chunk) => {
                let n = chunk.len().min(cap);
                // SAFETY: `dst` points at `cap` writable bytes of the caller's buffer, which
                // the caller owns and does not touch during this call; `chunk` is rustls'
                // own memory, so the two do not overlap.
                unsafe { std::ptr::copy_nonoverlapping(chunk.as_ptr(), dst, n) };
                tls.reader().consume(n);
                // An empty chunk: close_notify was received, the stream ended cleanly.
                Ok(Some(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Hands buffered ciphertext to rustls, reading from the socket first if none is buffered.
    async fn feed(&mut self) -> io::Result<()> {
        if self.rx_pos >= self.rx.get_ref().len() {
            self.rx_pos = 0;
            self.broken = true;
            let n = self.rx.refill(&mut self.tcp, 0).await?;
            self.broken = false;
            if n == 0 {
                // rustls learns of the EOF: its reader then says whether close_notify came
                // first (a clean end) or not (UnexpectedEof: a truncation).
                self.tls.borrow_mut().read_tls(&mut io::empty())?;
                return Ok(());
            }
        }
        let mut tls = self.tls.borrow_mut();
        let mut pending = &self.rx.get_ref()[self.rx_pos..];
        self.rx_pos += tls.read_tls(&mut pending)?;
        tls.process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if self.rx_pos >= self.rx.get_ref().len() {
            // All handed to rustls: the buffer goes back to the worker's pool until the next
            // read, so an idle pooled connection holds none.
            self.rx.release();
            self.rx_pos = 0;
        }
        Ok(())
    }

    async fn read_into(&mut self, dst: *mut u8, cap: usize) -> io::Result<usize> {
        if self.broken {
            return Err(cancelled());
        }
        loop {
            if let Some(n) = self.take_plain(dst, cap)? {
                return Ok(n);
            }
            self.feed().await?;
        }
    }
}

impl AsyncReadRent for TlsReadHalf {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let (dst, cap) = (buf.write_ptr(), buf.bytes_total());
        let res = self.read_into(dst, cap).await;
        if let Ok(n) = res {
            // SAFETY: `read_into` wrote exactly `n` bytes at the start of the spare room.
            unsafe { buf.set_init(n) };
        }
        (res, buf)
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // SAFETY: the raw view borrows the first iovec of `buf`, which outlives this call.
        let Some(raw) = (unsafe { RawBuf::new_from_iovec_mut(&mut buf) }) else {
            return (Ok(0), buf);
        };
        let (res, _) = self.read(raw).await;
        if let Ok(n) = res {
            // SAFETY: `n` bytes were written at the start of the first iovec.
            unsafe { buf.set_init(n) };
        }
        (res, buf)
    }
}

impl TlsWriteHalf {
    /// Writes everything rustls has queued to the socket. Until that succeeds the half counts
    /// as broken: a cancelled write leaves a hole in the record sequence.
    async fn send_queued(&mut self) -> io::Result<()> {
        if self.broken {
            return Err(cancelled());
        }
        self.broken = true;
        loop {
            let tls = &self.tls;
            let tcp = &mut self.tcp;
            let sent = self
                .tx
                .lend(|mut buf| async move {
                    buf.clear();
                    {
                        let mut tls = tls.borrow_mut();
                        while tls.wants_write() {
                            if let Err(e) = tls.write_tls(&mut *buf) {
                                return (Err(e), Some(buf));
                            }
                        }
                    }
                    if buf.is_empty() {
                        return (Ok(false), Some(buf));
                    }
                    let (res, mut buf) = tcp.write_all(buf).await;
                    buf.clear();
                    (res.map(|_| true), Some(buf))
                })
                .await;
            match sent {
                Ok(true) => {}
                Ok(false) => {
                    self.tx.release_if_empty();
                    self.broken = false;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn write_slice(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.broken {
            return Err(cancelled());
        }
        // rustls takes as much as its outgoing buffer limit allows; the caller's write_all
        // comes back for the rest.
        let n = self.tls.borrow_mut().writer().write(data)?;
        self.send_queued().await?;
        Ok(n)
    }
}

impl AsyncWriteRent for TlsWriteHalf {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: `read_ptr`/`bytes_init` describe the initialised bytes of `buf`, which this
        // call owns until it returns.
        let data = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let res = self.write_slice(data).await;
        (res, buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: the raw view borrows the first iovec of `buf`, which outlives this call.
        let Some(raw) = (unsafe { RawBuf::new_from_iovec(&buf) }) else {
            return (Ok(0), buf);
        };
        let (res, _) = self.write(raw).await;
        (res, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.send_queued().await
    }

    /// close_notify, then FIN: the app reads a clean end of the stream.
    async fn shutdown(&mut self) -> io::Result<()> {
        self.tls.borrow_mut().send_close_notify();
        self.send_queued().await?;
        self.tcp.shutdown().await
    }
}

fn cancelled() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "an earlier upstream TLS read or write was cancelled",
    )
}
