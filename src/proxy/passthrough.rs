//! The ClientHello decides, for listeners with passthrough entries, sites or `strict_sni`: a
//! name a `[[listener.site]]` claims is terminated with that site's rustls config; SNI
//! passthrough: a ClientHello whose server name a `[[listener.passthrough]]` entry claims is
//! not terminated here. certgate connects to that entry's upstream, writes the ClientHello
//! bytes it already read, and from then on moves bytes both ways with `splice(2)` through a
//! pipe (1 MiB), so no payload byte is copied into user space. The splices are plain
//! non-blocking system calls tried first, with readiness from the runtime (io_uring poll or
//! epoll) awaited only when one would block: monoio's own splice ops move at most a default
//! pipe's 64 KiB per io_uring round trip and cannot enlarge the pipe.
//!
//! The hello is read raw and parsed by rustls' `Acceptor` (no parser of our own); only bytes
//! that arrived before the hello was complete are ever read here, and a hello for a name that
//! is terminated continues as an ordinary handshake with everything already read. The
//! listener's handshake timeout bounds the wait for the hello.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::server::Acceptor;
use tracing::debug;

use super::buffers::PooledBuf;
use super::ListenerCtx;

/// Bytes moved per splice at most; the pipe is sized for it.
const SPLICE_CHUNK: usize = 1 << 20;
/// A fatal `unrecognized_name` alert (RFC 6066 §3) as a plaintext TLS record: the answer to a
/// server name no site serves under `strict_sni`, before any handshake message (rustls'
/// `Acceptor` has no way to send an alert of our choosing).
const UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];
/// A ClientHello larger than this is refused (rustls' own limit is lower; this bounds our read).
const MAX_HELLO: usize = 64 * 1024;

/// What the ClientHello decided.
pub(crate) enum Hello {
    /// Terminate here, with the policy of the site the hello named (or the listener's own):
    /// the connection rustls accepted, with every byte it read.
    Terminate(TcpStream, Box<rustls::ServerConnection>, Rc<ListenerCtx>),
    /// Relayed (or refused) already; nothing left to do.
    Done,
}

/// Reads the ClientHello and either relays the connection to a passthrough upstream or hands
/// it back for termination under the site it names.
pub(crate) async fn hello(mut tcp: TcpStream, peer: SocketAddr, ctx: &Rc<ListenerCtx>) -> Hello {
    let mut acceptor = Acceptor::default();
    let mut raw = PooledBuf::take();
    let accepted = loop {
        match acceptor.accept() {
            Ok(Some(accepted)) => break accepted,
            Ok(None) => {}
            Err((e, mut alert)) => {
                debug!(listener = %ctx.name, %peer, "bad ClientHello: {e}");
                let mut out = Vec::new();
                let _ = alert.write_all(&mut out);
                let _ = tcp.write_all(out).await;
                return Hello::Done;
            }
        }
        if raw.len() >= MAX_HELLO {
            debug!(listener = %ctx.name, %peer, "ClientHello too large");
            return Hello::Done;
        }
        let len = raw.len();
        if raw.capacity() - len < 4096 {
            raw.reserve(16 * 1024);
        }
        let cap = raw.capacity();
        let (res, slice) = tcp.read(raw.slice_mut(len..cap)).await;
        raw = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return Hello::Done,
            Ok(_) => {}
        }
        // rustls reads a copy: `raw` keeps every byte for a passthrough upstream.
        let mut fresh = &raw[len..];
        while !fresh.is_empty() {
            if acceptor.read_tls(&mut fresh).is_err() {
                return Hello::Done;
            }
        }
    };
    let name = accepted.client_hello().server_name().map(str::to_owned);
    let upstream = name
        .as_deref()
        .and_then(|name| ctx.passthrough.route(name).copied());
    let Some(upstream) = upstream else {
        let Some(site) = ctx.for_server_name(name.as_deref()) else {
            // strict_sni: no site for this name (or no name at all).
            debug!(listener = %ctx.name, %peer, sni = ?name, "no site for this server name");
            ctx.metrics
                .handshake_failed(ctx.index, crate::ops::metrics::FailReason::Protocol);
            let _ = tcp.write_all(UNRECOGNIZED_NAME.to_vec()).await;
            return Hello::Done;
        };
        // rustls answers the ClientHello here (key exchange and signature): a handshake step.
        ctx.handshake_turns.take().await;
        return match accepted.into_connection(site.tls.clone()) {
            Ok(conn) => Hello::Terminate(tcp, Box::new(conn), site),
            Err((e, mut alert)) => {
                debug!(listener = %ctx.name, %peer, "TLS setup failed: {e}");
                let mut out = Vec::new();
                let _ = alert.write(&mut out);
                let _ = tcp.write_all(out).await;
                Hello::Done
            }
        };
    };
    relay(tcp, raw, upstream, peer, ctx).await;
    Hello::Done
}

/// Connects to `upstream`, sends the hello bytes, then splices both ways until both are done.
async fn relay(
    client: TcpStream,
    hello: PooledBuf,
    upstream: SocketAddr,
    peer: SocketAddr,
    ctx: &ListenerCtx,
) {
    let connect = TcpStream::connect_addr(upstream);
    let mut up = match monoio::time::timeout(ctx.timeouts.upstream_connect, connect).await {
        Ok(Ok(up)) => up,
        _ => {
            debug!(listener = %ctx.name, %peer, %upstream, "passthrough upstream unreachable");
            return;
        }
    };
    let _ = up.set_nodelay(true);
    if up.write_all(hello).await.0.is_err() {
        return;
    }
    // From here on the sockets are driven by readiness and splice(2) directly, which needs
    // them non-blocking (the io_uring driver leaves them blocking).
    for fd in [client.as_raw_fd(), up.as_raw_fd()] {
        // SAFETY: fcntl on descriptors this connection owns.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
    // One timer for the whole relay: the two directions only stamp their activity, and the
    // watchdog looks at the stamp when its deadline comes.
    let activity = Cell::new(Instant::now());
    let both = async {
        monoio::join!(
            splice_one_way(&client, &up, &activity),
            splice_one_way(&up, &client, &activity),
        )
    };
    monoio::select! {
        (to_up, to_client) = both => {
            debug!(listener = %ctx.name, %peer, %upstream, to_up, to_client, "passthrough ended");
        }
        _ = idle_elapsed(&activity, ctx.tunnel_idle) => {
            debug!(listener = %ctx.name, %peer, %upstream, "passthrough idle: closing");
        }
    }
}

/// A pipe of our own, enlarged so that one splice can move up to [`SPLICE_CHUNK`].
struct Pipe {
    rd: OwnedFd,
    wr: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two new descriptors into the array on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by nobody else.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A larger pipe means fewer splices per byte; if the system refuses, the default
        // (64 KiB) still works.
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            libc::fcntl(
                wr.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                SPLICE_CHUNK as libc::c_int,
            )
        };
        Ok(Pipe { rd, wr })
    }
}

/// One non-blocking splice(2); the kernel moves the bytes, none are copied to user space.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain descriptors this connection owns; null offsets (neither is a file).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Moves bytes from `from` to `to` through a pipe until EOF (then shuts `to`'s write side,
/// passing the half-close on) or an error, stamping `activity` as bytes move. Splices are
/// tried first and readiness is awaited only when one would block, so a busy stream costs
/// two system calls per pipe-full and no io_uring round trip.
async fn splice_one_way(from: &TcpStream, to: &TcpStream, activity: &Cell<Instant>) -> u64 {
    let Ok(pipe) = Pipe::new() else {
        return 0;
    };
    let (from_fd, to_fd) = (from.as_raw_fd(), to.as_raw_fd());
    let mut moved = 0u64;
    loop {
        let filled = match splice(from_fd, pipe.wr.as_raw_fd(), SPLICE_CHUNK) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if from.readable(false).await.is_err() {
                    break;
                }
                continue;
            }
            Err(_) => break,
        };
        activity.set(Instant::now());
        moved += filled as u64;
        let mut pending = filled;
        while pending > 0 {
            match splice(pipe.rd.as_raw_fd(), to_fd, pending) {
                Ok(0) => return moved,
                Ok(n) => pending -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if to.writable(false).await.is_err() {
                        return moved;
                    }
                }
                Err(_) => return moved,
            }
        }
        activity.set(Instant::now());
    }
    // SAFETY: shutdown of the write side of a socket this connection owns.
    unsafe { libc::shutdown(to_fd, libc::SHUT_WR) };
    moved
}

/// Resolves once neither direction moved a byte for `idle`.
async fn idle_elapsed(activity: &Cell<Instant>, idle: Duration) {
    loop {
        let deadline = activity.get() + idle;
        if Instant::now() >= deadline {
            return;
        }
        monoio::time::sleep_until(deadline.into()).await;
    }
}
