//! Descriptors across a Unix socket (SCM_RIGHTS): `sendmsg` with the descriptors attached to
//! one message, `recvmsg` that takes them as owned descriptors. The receiving process gets new
//! descriptors for the same open sockets, not copies: a listening socket keeps its accept
//! queue, whichever process holds it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::message::MAX_FDS;

/// Sends `bytes` as one message with `fds` attached (at most [`MAX_FDS`]).
pub fn send(socket: impl AsFd, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors for one message",
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let payload = std::mem::size_of_val(raw.as_slice());
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // u64 elements keep the buffer aligned for `cmsghdr`.
    let mut control = vec![0u64; control_words(raw.len())];
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(payload as u32) } as _;
        // SAFETY: msg_control points at a zeroed, aligned buffer of msg_controllen bytes,
        // large enough for one header and `payload` bytes of data (control_words).
        unsafe {
            let header = libc::CMSG_FIRSTHDR(&msg);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(header),
                payload,
            );
        }
    }
    let sent = retry(|| {
        // SAFETY: `msg` is fully initialised; MSG_NOSIGNAL: a vanished peer is an error, not
        // SIGPIPE.
        unsafe { libc::sendmsg(socket.as_fd().as_raw_fd(), &msg, libc::MSG_NOSIGNAL) }
    })?;
    if sent != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "message sent in part",
        ));
    }
    Ok(())
}

/// Runs a system call again when a signal interrupted it (certgate's signal handlers do not
/// ask for restarts).
fn retry(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives one message into `buf`: its length (0: the peer closed) and the descriptors that
/// came with it, close-on-exec. A message or descriptor list cut short is an error (and the
/// descriptors that did arrive are closed).
pub fn recv(socket: impl AsFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = vec![0u64; control_words(MAX_FDS)];
    // SAFETY: as in `send`.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(control.as_slice()) as _;
    let n = retry(|| {
        // SAFETY: every pointer in `msg` is valid for the lengths given, for the whole call.
        // An interrupted call received nothing (no descriptors either): calling again is safe.
        unsafe { libc::recvmsg(socket.as_fd().as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) }
    })?;
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of well-formed headers;
    // CMSG_FIRSTHDR/NXTHDR stay within them. Each SCM_RIGHTS descriptor is new and ours.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&msg);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(header);
                let len = (*header).cmsg_len as usize - (data as usize - header as usize);
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            header = libc::CMSG_NXTHDR(&msg, header);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "descriptors cut short (is the descriptor limit, ulimit -n, too low?)",
        ));
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message longer than expected",
        ));
    }
    Ok((n, fds))
}

/// u64 words of control buffer for one SCM_RIGHTS header carrying `fds` descriptors.
fn control_words(fds: usize) -> usize {
    // SAFETY: CMSG_SPACE only computes a size.
    let bytes = unsafe { libc::CMSG_SPACE((fds * std::mem::size_of::<RawFd>()) as u32) } as usize;
    bytes.div_ceil(8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn seqpacket_pair() -> (socket2::Socket, socket2::Socket) {
        socket2::Socket::pair(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None).unwrap()
    }

    #[test]
    fn descriptors_arrive_as_the_same_open_files() {
        let (a, b) = seqpacket_pair();
        // Two pipes' worth: what is written on our end comes out of the received one.
        let (mut ours1, theirs1) = UnixStream::pair().unwrap();
        let (mut ours2, theirs2) = UnixStream::pair().unwrap();
        send(&a, b"hello", &[theirs1.as_fd(), theirs2.as_fd()]).unwrap();
        drop((theirs1, theirs2));
        let mut buf = [0u8; 64];
        let (n, fds) = recv(&b, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 2);
        let mut got: Vec<UnixStream> = fds.into_iter().map(UnixStream::from).collect();
        ours1.write_all(b"one").unwrap();
        ours2.write_all(b"two").unwrap();
        let mut three = [0u8; 3];
        got[0].read_exact(&mut three).unwrap();
        assert_eq!(&three, b"one");
        got[1].read_exact(&mut three).unwrap();
        assert_eq!(&three, b"two");
    }

    #[test]
    fn messages_keep_their_boundaries_and_eof_reads_zero() {
        let (a, b) = seqpacket_pair();
        send(&a, b"first", &[]).unwrap();
        send(&a, b"second", &[]).unwrap();
        drop(a);
        let mut buf = [0u8; 64];
        let (n, fds) = recv(&b, &mut buf).unwrap();
        assert_eq!((&buf[..n], fds.len()), (&b"first"[..], 0));
        let (n, _) = recv(&b, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"second");
        assert_eq!(recv(&b, &mut buf).unwrap().0, 0);
    }

    #[test]
    fn the_most_descriptors_one_message_may_carry_arrive() {
        let (a, b) = seqpacket_pair();
        let (keep, other) = UnixStream::pair().unwrap();
        let many: Vec<BorrowedFd<'_>> = (0..MAX_FDS).map(|_| other.as_fd()).collect();
        send(&a, b"x", &many).unwrap();
        let (_, fds) = recv(&b, &mut [0u8; 8]).unwrap();
        assert_eq!(fds.len(), MAX_FDS);
        let too_many: Vec<BorrowedFd<'_>> = (0..=MAX_FDS).map(|_| other.as_fd()).collect();
        assert!(send(&a, b"x", &too_many).is_err());
        drop(keep);
    }

    #[test]
    fn a_longer_message_than_the_buffer_is_an_error() {
        let (a, b) = seqpacket_pair();
        send(&a, &[7u8; 32], &[]).unwrap();
        let e = recv(&b, &mut [0u8; 8]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
