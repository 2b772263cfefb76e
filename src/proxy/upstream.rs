//! Per-worker keep-alive pool of plain TCP connections to one upstream app.
//!
//! Owned by one worker thread (`Rc`, `RefCell`): no locks. A connection goes back to the pool
//! only after a response was read to its exact end, so no byte of one client's exchange can be
//! seen by the next user of the connection.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;
use monoio::time::Instant as Deadline;

use super::buffers::{self, PooledBuf};
use super::error::UpstreamError;

/// An idle upstream connection older than this is probed before reuse: the app may have closed it.
const PROBE_AFTER: Duration = Duration::from_secs(1);
/// Idle connections kept per worker and upstream.
const MAX_IDLE: usize = 256;

pub struct Pool {
    addr: SocketAddr,
    idle: RefCell<Vec<(TcpStream, Instant)>>,
}

/// A connection borrowed from the pool or freshly made, split so that the exchange can read
/// the app's answer while it is still sending the request body (RFC 9112 §9.6: an app may
/// answer early, and that answer must reach the client).
pub struct Upstream {
    pub rd: OwnedReadHalf<TcpStream>,
    pub wr: OwnedWriteHalf<TcpStream>,
    /// True when it came from the pool: a failure before any byte of the request was taken
    /// by the app may then be retried once on a fresh connection.
    pub reused: bool,
}

impl Upstream {
    fn new(stream: TcpStream, reused: bool) -> Self {
        let (rd, wr) = stream.into_split();
        Upstream { rd, wr, reused }
    }
}

impl Pool {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            idle: RefCell::new(Vec::new()),
        }
    }

    /// The app's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Takes the most recently used idle connection that is still open.
    pub fn take(&self) -> Option<Upstream> {
        let mut idle = self.idle.borrow_mut();
        while let Some((stream, since)) = idle.pop() {
            if since.elapsed() < PROBE_AFTER || still_open(&stream) {
                return Some(Upstream::new(stream, true));
            }
        }
        None
    }

    pub async fn connect(&self, timeout: Duration) -> std::io::Result<Upstream> {
        let stream = monoio::time::timeout(timeout, TcpStream::connect_addr(self.addr))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        stream.set_nodelay(true)?;
        Ok(Upstream::new(stream, false))
    }

    /// Keeps a connection whose last response ended exactly at its end.
    pub fn put(&self, up: Upstream) {
        // Halves of one split always reunite; a failure would only mean "do not pool".
        let Ok(stream) = up.rd.reunite(up.wr) else {
            return;
        };
        let mut idle = self.idle.borrow_mut();
        if idle.len() < MAX_IDLE {
            idle.push((stream, Instant::now()));
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
