//! The client's TLS stream in the poll-based shape the `h2` crate drives (tokio's
//! `AsyncRead`/`AsyncWrite` traits, no tokio runtime): the rustls connection the handshake
//! made, over monoio's poll-io view of the same socket.
//!
//! Why not `tokio-rustls`: it can only make its stream by running the handshake itself, and
//! the handshake here already ran on `TlsConn` (io_uring, SNI-chosen sites, the refusal log).
//! So this is the small adapter tokio-rustls also is: rustls reads ciphertext straight from
//! the socket (no intermediate buffer), decrypts in its own buffer, and seals writes into its
//! outgoing queue, which goes to the socket as the socket takes it. Ciphertext `TlsConn` had
//! read ahead of the handshake's end is fed first, so nothing the client sent early is lost.

use std::cell::Cell;
use std::future::Future;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use monoio::io::poll_io::{AsyncRead, AsyncWrite, ReadBuf};
use monoio::net::tcp::stream_poll::TcpStreamPoll;
use rustls::ServerConnection;

/// How long the connection's task may go on reading without the socket running dry before
/// it gives the worker back for a turn. monoio, unlike tokio, has no budget of its own: a
/// client that keeps its socket readable (a PING or SETTINGS flood it reads the answers to:
/// every frame costs a write) would otherwise keep the `h2` connection task, and with it every
/// other connection on the worker, from being polled. Time, not bytes or reads: a flood's
/// small frames cost far more per byte than a bulk upload's DATA.
const BUSY_BUDGET: Duration = Duration::from_millis(1);
/// How the turn is given back: a short sleep (one timer tick, 1 ms), not a self-wake. A task
/// that wakes itself stays in monoio's run queue, and while the queue is not empty the
/// runtime never parks, which is where the io_uring driver re-arms its poll-io readiness:
/// every other HTTP/2 connection of the worker would wait until the flood paused (over a
/// second, measured). A sleeping task lets the runtime park.
const PAUSE: Duration = Duration::from_micros(1);

pub struct TlsIo {
    /// `None` only once dropped (see [`Drop`]).
    tcp: Option<TcpStreamPoll>,
    /// Where the socket goes when `h2` drops this stream: the connection's task closes it
    /// with a lingering close ([`linger`]).
    left: Rc<Cell<Option<TcpStreamPoll>>>,
    tls: ServerConnection,
    /// Ciphertext read before the switch, not yet given to rustls.
    ahead: Vec<u8>,
    ahead_pos: usize,
    /// close_notify queued (by `poll_shutdown`).
    closing: bool,
    /// When the reads began that have found data ever since (see [`BUSY_BUDGET`]).
    busy_since: Option<Instant>,
    /// The turn given back (see [`PAUSE`]); boxed, as only a busy connection ever has one.
    pause: Option<Pin<Box<monoio::time::Sleep>>>,
}

impl TlsIo {
    pub fn new(
        tcp: TcpStreamPoll,
        tls: ServerConnection,
        ahead: Vec<u8>,
        left: Rc<Cell<Option<TcpStreamPoll>>>,
    ) -> Self {
        TlsIo {
            tcp: Some(tcp),
            left,
            tls,
            ahead,
            ahead_pos: 0,
            closing: false,
            busy_since: None,
            pause: None,
        }
    }

    /// Writes queued records until rustls has none left or the socket would block.
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tls.wants_write() {
            let Some(tcp) = self.tcp.as_mut() else {
                return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            };
            let mut sink = PollWriter { tcp, cx };
            match self.tls.write_tls(&mut sink) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Hands rustls more ciphertext: the read-ahead first, then the socket. `Ready(Ok(0))` at
    /// the socket's EOF.
    fn poll_feed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let n = if self.ahead_pos < self.ahead.len() {
            let mut pending = &self.ahead[self.ahead_pos..];
            let n = self.tls.read_tls(&mut pending)?;
            self.ahead_pos += n;
            if self.ahead_pos >= self.ahead.len() {
                self.ahead = Vec::new();
                self.ahead_pos = 0;
            }
            n
        } else {
            let Some(tcp) = self.tcp.as_mut() else {
                return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            };
            let mut source = PollReader { tcp, cx };
            match self.tls.read_tls(&mut source) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        };
        if let Err(e) = self.tls.process_new_packets() {
            // rustls queued the alert that says why; a best effort to send it.
            let _ = self.poll_flush_tls(cx);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pause.is_some() || this.busy_since.is_some_and(|t| t.elapsed() > BUSY_BUDGET) {
            let pause = this
                .pause
                .get_or_insert_with(|| Box::pin(monoio::time::sleep(PAUSE)));
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.pause = None;
            this.busy_since = None;
        }
        loop {
            match this.tls.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    // 0: close_notify received, a clean end of the stream.
                    buf.advance(n);
                    this.busy_since.get_or_insert_with(Instant::now);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // EOF without close_notify: for h2, whose frames say where they end, the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Poll::Ready(Ok(()));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
            match this.poll_feed(cx) {
                Poll::Ready(Ok(0)) => {
                    // rustls learns of the EOF from an empty read; the next read reports it.
                    this.tls.read_tls(&mut io::empty())?;
                }
                Poll::Ready(Ok(_)) => {
                    if this.tls.wants_write() {
                        // Post-handshake answers (KeyUpdate): sent as the socket allows.
                        if let Poll::Ready(Err(e)) = this.poll_flush_tls(cx) {
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    this.busy_since = None;
                    return Poll::Pending;
                }
            }
        }
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(data)])
    }

    /// Seals what `h2` writes into rustls' outgoing queue; the socket gets it on `poll_flush`
    /// (`h2` flushes after every batch of frames), or when the queue is full. Vectored, so a
    /// DATA frame's 9-byte header and its payload share one TLS record: written one by one,
    /// each header became a 31-byte record of its own, and each write a syscall.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        // rustls' outgoing queue is bounded (its buffer limit): what it cannot take waits for
        // the socket, which is the backpressure `h2` sees.
        let n = this.tls.writer().write_vectored(bufs)?;
        if n > 0 {
            return Poll::Ready(Ok(n));
        }
        if this.poll_flush_tls(cx)?.is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(this.tls.writer().write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.tls.writer().flush()?;
        this.poll_flush_tls(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.tls.send_close_notify();
            this.closing = true;
        }
        if this.poll_flush_tls(cx)?.is_pending() {
            return Poll::Pending;
        }
        match this.tcp.as_mut() {
            Some(tcp) => Pin::new(tcp).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Drop for TlsIo {
    fn drop(&mut self) {
        self.left.set(self.tcp.take());
    }
}

/// Most bytes read and dropped while lingering.
const LINGER_MAX_BYTES: usize = 1 << 20;

/// Closes the socket the way `TlsConn::linger` does: our FIN first, then whatever the client
/// still sends is read and dropped (for at most `limit` or 1 MiB) before the socket closes.
/// Closing with unread input makes the kernel send a reset, and a reset can destroy the last
/// response bytes still waiting in the client's receive buffer: a client reading a large
/// response slowly (its WINDOW_UPDATEs keep coming) would see its download cut short when
/// GOAWAY ends the connection.
pub async fn linger(mut tcp: TcpStreamPoll, limit: Duration) {
    let _ = std::future::poll_fn(|cx| Pin::new(&mut tcp).poll_shutdown(cx)).await;
    let drain = async {
        let mut scratch = [0u8; 4096];
        let mut drained = 0usize;
        while drained < LINGER_MAX_BYTES {
            let mut rb = ReadBuf::new(&mut scratch);
            match std::future::poll_fn(|cx| Pin::new(&mut tcp).poll_read(cx, &mut rb)).await {
                Ok(()) if !rb.filled().is_empty() => drained += rb.filled().len(),
                _ => break,
            }
        }
    };
    let _ = monoio::time::timeout(limit, drain).await;
}

/// `io::Read` over the poll-io socket for rustls' `read_tls`: `Pending` becomes `WouldBlock`
/// (the waker is registered by then).
struct PollReader<'a, 'b> {
    tcp: &'a mut TcpStreamPoll,
    cx: &'a mut Context<'b>,
}

impl Read for PollReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *self.tcp).poll_read(self.cx, &mut rb) {
            Poll::Ready(Ok(())) => Ok(rb.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// `io::Write` over the poll-io socket for rustls' `write_tls` (see [`PollReader`]).
struct PollWriter<'a, 'b> {
    tcp: &'a mut TcpStreamPoll,
    cx: &'a mut Context<'b>,
}

impl Write for PollWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
