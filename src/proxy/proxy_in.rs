//! Reading the PROXY header a load balancer sends before the TLS bytes (`proxy_protocol`)
//! without taking one byte of the ClientHello behind it, so that the passthrough peek and the
//! TLS handshake that follow see the stream exactly as if no header had been there.
//!
//! Each round peeks (`MSG_PEEK`) at what has arrived, lets the pure
//! `proxy_header::inbound::parse` decide, then takes off the socket only the bytes that belong
//! to the header: up to its end when it is complete, or all it saw when it is not (every byte of
//! an unfinished header is header). So the next wait for readability finds an empty socket
//! buffer and sleeps until the sender writes again, instead of waking at once for bytes already
//! looked at. The calls are plain non-blocking `recv(2)`s (`MSG_DONTWAIT`: the io_uring driver
//! leaves sockets blocking), with readiness from the runtime awaited only when one would block,
//! as the passthrough splices do. The caller bounds the whole read by the handshake deadline.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use monoio::net::TcpStream;

use crate::proxy_header::inbound::{parse, BadHeader, Parsed, ProxyAccept, Received};

/// Why no header was read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// Closed before sending a byte (a TCP check or a port scanner, not a bad header).
    #[error("closed before sending anything")]
    Closed,
    #[error("closed in the middle of the PROXY header")]
    Truncated,
    #[error(transparent)]
    Bad(#[from] BadHeader),
    #[error("reading the PROXY header: {0}")]
    Io(io::Error),
}

/// Reads the header a connection must start with; returns what it says. Only the header's
/// bytes are consumed.
pub(crate) async fn read(tcp: &TcpStream, accept: ProxyAccept) -> Result<Received, Failure> {
    let max = accept.max_len();
    let mut buf = vec![0u8; max];
    let mut have = 0;
    loop {
        if have >= max {
            // `parse` decides before the limit; this only keeps the loop finite regardless.
            return Err(BadHeader::TooLong(max).into());
        }
        let seen = match recv(tcp.as_raw_fd(), &mut buf[have..], libc::MSG_PEEK) {
            Ok(0) if have == 0 => return Err(Failure::Closed),
            Ok(0) => return Err(Failure::Truncated),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tcp.readable(false).await.map_err(Failure::Io)?;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failure::Io(e)),
        };
        let (take, received) = match parse(accept, &buf[..have + seen]) {
            Parsed::Complete(received, len) => (len - have, Some(received)),
            Parsed::Incomplete => (seen, None),
            Parsed::Invalid(bad) => return Err(bad.into()),
        };
        consume(tcp, &mut buf[have..have + take]).await?;
        have += take;
        if let Some(received) = received {
            return Ok(received);
        }
    }
}

/// Takes exactly `into.len()` bytes that a peek has already seen off the socket.
async fn consume(tcp: &TcpStream, into: &mut [u8]) -> Result<(), Failure> {
    let mut done = 0;
    while done < into.len() {
        match recv(tcp.as_raw_fd(), &mut into[done..], 0) {
            Ok(0) => return Err(Failure::Truncated),
            Ok(n) => done += n,
            // Peeked bytes are there to take; a wait here would be a kernel surprise, not a
            // slow client.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tcp.readable(false).await.map_err(Failure::Io)?
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Failure::Io(e)),
        }
    }
    Ok(())
}

/// One non-blocking `recv(2)` into `buf` with `flags` (plus `MSG_DONTWAIT`).
fn recv(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length; `fd` is this connection's socket.
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            flags | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
