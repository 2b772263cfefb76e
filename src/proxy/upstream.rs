//! Per-worker keep-alive pool of connections to one upstream app: plain TCP, or TLS
//! (`upstream = "https://…"`, see `upstream_tls`) resumed across reconnects.
//!
//! Owned by one worker thread (`Rc`, `RefCell`): no locks. A connection goes back to the pool
//! only after a response was read to its exact end, so no byte of one client's exchange can be
//! seen by the next user of the connection.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use std::sync::Arc;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;
use monoio::time::Instant as Deadline;
use monoio::BufResult;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;

use super::buffers::{self, PooledBuf};
use super::error::UpstreamError;
use super::upstream_tls::{self, TlsReadHalf, TlsStream, TlsWriteHalf};

/// An idle upstream connection older than this is probed before reuse: the app may have closed it.
const PROBE_AFTER: Duration = Duration::from_secs(1);
/// Idle connections kept per worker and upstream.
const MAX_IDLE: usize = 256;

pub struct Pool {
    addr: SocketAddr,
    tls: Option<PoolTls>,
    idle: RefCell<Vec<Parked>>,
}

/// How a pool speaks TLS to its app: a worker's own client config (own session store).
pub struct PoolTls {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
    /// Identifies the trust and identity the config was built from (see `UpstreamTlsPlan`).
    pub fingerprint: [u8; 32],
}

/// An idle pooled connection.
enum Idle {
    Plain(TcpStream),
    Tls(TlsStream),
}

impl Idle {
    fn still_open(&self) -> bool {
        match self {
            Idle::Plain(tcp) => still_open(tcp),
            Idle::Tls(tls) => !tls.has_buffered_input() && still_open(tls.tcp()),
        }
    }
}

/// An idle connection between two exchanges: in the pool, or kept by one client (a private
/// connection, see `session`).
pub struct Parked {
    conn: Idle,
    since: Instant,
}

impl Parked {
    /// Puts the halves back together; `None` if they cannot carry another exchange.
    pub fn park(up: Upstream) -> Option<Parked> {
        let conn = match (up.rd, up.wr) {
            (UpRead::Plain(rd), UpWrite::Plain(wr)) => Idle::Plain(rd.reunite(wr).ok()?),
            (UpRead::Tls(rd), UpWrite::Tls(wr)) => Idle::Tls(upstream_tls::reunite(rd, wr)?),
            _ => return None,
        };
        Some(Parked {
            conn,
            since: Instant::now(),
        })
    }

    /// The connection for another exchange, unless the app closed it (or sent something
    /// unasked) while it was idle.
    pub fn resume(self) -> Option<Upstream> {
        (self.since.elapsed() < PROBE_AFTER || self.conn.still_open())
            .then(|| Upstream::new(self.conn, true))
    }
}

/// The read side of an upstream connection, plain or TLS.
pub enum UpRead {
    Plain(OwnedReadHalf<TcpStream>),
    Tls(TlsReadHalf),
}

/// The write side of an upstream connection, plain or TLS.
pub enum UpWrite {
    Plain(OwnedWriteHalf<TcpStream>),
    Tls(TlsWriteHalf),
}

/// A connection borrowed from the pool or freshly made, split so that the exchange can read
/// the app's answer while it is still sending the request body (RFC 9112 §9.6: an app may
/// answer early, and that answer must reach the client).
pub struct Upstream {
    pub rd: UpRead,
    pub wr: UpWrite,
    /// True when it came from the pool: a failure before any byte of the request was taken
    /// by the app may then be retried once on a fresh connection.
    pub reused: bool,
}

impl Upstream {
    fn new(stream: Idle, reused: bool) -> Self {
        let (rd, wr) = match stream {
            Idle::Plain(tcp) => {
                let (rd, wr) = tcp.into_split();
                (UpRead::Plain(rd), UpWrite::Plain(wr))
            }
            Idle::Tls(tls) => {
                let (rd, wr) = tls.split();
                (UpRead::Tls(rd), UpWrite::Tls(wr))
            }
        };
        Upstream { rd, wr, reused }
    }
}

/// Why a new upstream connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Tcp(std::io::Error),
    #[error("TLS handshake with the upstream failed: {0}")]
    Tls(std::io::Error),
    #[error("no connection and TLS handshake within {0:?}")]
    Timeout(Duration),
}

impl Pool {
    pub fn new(addr: SocketAddr, tls: Option<PoolTls>) -> Self {
        Self {
            addr,
            tls,
            idle: RefCell::new(Vec::new()),
        }
    }

    /// The app's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether a reload's upstream is this pool's: the same address, and the same TLS trust
    /// and identity (or plain TCP on both sides).
    pub fn serves(&self, addr: SocketAddr, tls: Option<&[u8; 32]>) -> bool {
        self.addr == addr && self.tls.as_ref().map(|t| &t.fingerprint) == tls
    }

    /// Takes the most recently used idle connection that is still open.
    pub fn take(&self) -> Option<Upstream> {
        let mut idle = self.idle.borrow_mut();
        while let Some(parked) = idle.pop() {
            if let Some(up) = parked.resume() {
                return Some(up);
            }
        }
        None
    }

    /// A new connection within `timeout` (TCP connect and, for a TLS upstream, the handshake).
    /// `preface` goes first on the TCP connection, before any TLS (a PROXY header).
    pub async fn connect(
        &self,
        timeout: Duration,
        preface: &[u8],
    ) -> Result<Upstream, ConnectError> {
        monoio::time::timeout(timeout, self.open(preface))
            .await
            .map_err(|_| ConnectError::Timeout(timeout))?
    }

    async fn open(&self, preface: &[u8]) -> Result<Upstream, ConnectError> {
        let mut tcp = TcpStream::connect_addr(self.addr)
            .await
            .map_err(ConnectError::Tcp)?;
        tcp.set_nodelay(true).map_err(ConnectError::Tcp)?;
        if !preface.is_empty() {
            let (res, _) = tcp.write_all(preface.to_vec()).await;
            res.map_err(ConnectError::Tcp)?;
        }
        let Some(tls) = &self.tls else {
            return Ok(Upstream::new(Idle::Plain(tcp), false));
        };
        let (rd, wr) = upstream_tls::connect(tcp, tls.config.clone(), tls.server_name.clone())
            .await
            .map_err(ConnectError::Tls)?;
        Ok(Upstream {
            rd: UpRead::Tls(rd),
            wr: UpWrite::Tls(wr),
            reused: false,
        })
    }

    /// Keeps a connection whose last response ended exactly at its end.
    pub fn put(&self, up: Upstream) {
        let Some(parked) = Parked::park(up) else {
            return;
        };
        let mut idle = self.idle.borrow_mut();
        if idle.len() < MAX_IDLE {
            idle.push(parked);
        }
    }

    /// Closes every idle connection (shutdown).
    pub fn clear(&self) {
        self.idle.borrow_mut().clear();
    }
}

/// A non-blocking peek: an idle keep-alive connection must have nothing to read. EOF or stray
/// bytes both mean it must not carry another request.
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: recv into one valid byte on a socket this process owns; MSG_DONTWAIT never blocks.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

impl AsyncReadRent for UpRead {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpRead::Plain(rd) => rd.read(buf).await,
            UpRead::Tls(rd) => rd.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpRead::Plain(rd) => rd.readv(buf).await,
            UpRead::Tls(rd) => rd.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for UpWrite {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpWrite::Plain(wr) => wr.write(buf).await,
            UpWrite::Tls(wr) => wr.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpWrite::Plain(wr) => wr.writev(buf).await,
            UpWrite::Tls(wr) => wr.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            UpWrite::Plain(wr) => wr.flush().await,
            UpWrite::Tls(wr) => wr.flush().await,
        }
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            UpWrite::Plain(wr) => wr.shutdown().await,
            UpWrite::Tls(wr) => wr.shutdown().await,
        }
    }
}

/// Writes all of `buf` to the app within `limit`. Hands the buffer back (monoio's
/// `BufResult` shape) unless the timeout cancelled the write while the kernel held it.
pub(super) async fn write_up<W: AsyncWriteRent, B: IoBuf>(
    wr: &mut W,
    buf: B,
    limit: Duration,
) -> (Result<(), UpstreamError>, Option<B>) {
    match monoio::time::timeout(limit, wr.write_all(buf)).await {
        Ok((Ok(_), buf)) => (Ok(()), Some(buf)),
        Ok((Err(e), buf)) => (Err(UpstreamError::Io(e)), Some(buf)),
        Err(_) => (Err(UpstreamError::WriteStalled), None),
    }
}

/// Reads more bytes from the app, appended to `buf`, by `deadline` if one is given. `Ok(0)` at
/// EOF. Hands the buffer back unless the deadline cancelled the read.
pub(super) async fn read_up<R: AsyncReadRent>(
    rd: &mut R,
    mut buf: PooledBuf,
    deadline: Option<Deadline>,
) -> (Result<usize, UpstreamError>, Option<PooledBuf>) {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(buffers::BUF_CAPACITY);
    }
    let (len, cap) = (buf.len(), buf.capacity());
    let read = rd.read(buf.slice_mut(len..cap));
    let (res, slice) = match deadline {
        None => read.await,
        Some(at) => match monoio::time::timeout_at(at, read).await {
            Ok(r) => r,
            Err(_) => return (Err(UpstreamError::Timeout), None),
        },
    };
    (res.map_err(UpstreamError::Io), Some(slice.into_inner()))
}
