//! The control socket (`[server] control_socket`): a Unix `SOCK_SEQPACKET` socket, mode 0600,
//! on which a running certgate hands its listening sockets to the process replacing it.
//!
//! The running side ([`ControlSocket::spawn`]) serves one handover at a time on its own thread:
//! it reads the new process's request, sends every socket (SCM_RIGHTS), and waits, for as long
//! as the new process takes to start, for `Serving`. If the new process closes the connection
//! or dies first, nothing happened: the old one keeps serving and waits for the next request.
//! On `Serving` it hands the connection to the main thread ([`Handover`]), which stops
//! accepting, confirms with `Draining`, drains and exits.
//!
//! The path moves without a gap: each process binds its socket at a temporary name beside the
//! path (mode 0600 before it listens) and renames it over the path once it is in charge: at
//! startup, or after the old process confirmed a handover. A stale file left by a crashed
//! process is replaced by that rename only after a connection to it was refused; a running
//! certgate answering there makes a plain start fail (use `--upgrade`). At a normal exit the
//! file is removed only while it is still this process's own (same inode).

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};
use tracing::{debug, info, warn};

use super::message::{Message, MessageError, Role, MAX_FDS};
use super::{fds, Inherited, Origin};

/// How long the running process waits for a connected peer's request, and the new process for
/// each message of the offer and for the confirmation: all are answered at once by a healthy
/// peer. (Waiting for `Serving` has no limit: starting may take long, and a new process that
/// dies closes the connection.)
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A message without its descriptors is a few dozen bytes; anything longer is refused.
const MESSAGE_BUFFER: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "control socket {}: a running certgate answers there; stop it first, or replace it \
         with `certgate --config FILE --upgrade`",
        path.display()
    )]
    InUse { path: PathBuf },
    #[error(
        "control socket {}: the path exists and is not a socket; remove it or name another path",
        path.display()
    )]
    NotASocket { path: PathBuf },
    #[error("handover: {0}")]
    Protocol(#[from] MessageError),
    #[error("handover: {0}")]
    Transfer(#[source] io::Error),
    #[error(
        "handover: the other process closed the connection (is another upgrade under way, or \
         does it speak another protocol version? its log says)"
    )]
    Closed,
    #[error("handover: a message announced {expected} descriptor(s) but {got} came with it")]
    Count { expected: usize, got: usize },
    #[error("handover: unexpected message {0:?}")]
    Unexpected(Message),
}

fn io_at(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> ControlError {
    let path = path.to_path_buf();
    move |source| ControlError::Io { path, what, source }
}

/// Sends one message with descriptors attached.
fn send(
    conn: &Socket,
    message: &Message,
    attached: &[std::os::fd::BorrowedFd<'_>],
) -> Result<(), ControlError> {
    fds::send(conn, &message.encode(), attached).map_err(ControlError::Transfer)
}

/// Receives one message and the descriptors that came with it.
fn recv(conn: &Socket) -> Result<(Message, Vec<std::os::fd::OwnedFd>), ControlError> {
    let mut buf = [0u8; MESSAGE_BUFFER];
    let (n, attached) = fds::recv(conn, &mut buf).map_err(ControlError::Transfer)?;
    if n == 0 {
        return Err(ControlError::Closed);
    }
    Ok((Message::decode(&buf[..n])?, attached))
}

fn seqpacket() -> io::Result<Socket> {
    Socket::new(Domain::UNIX, Type::SEQPACKET, None)
}

/// This process's control socket, bound and listening at a temporary name until published.
pub struct ControlSocket {
    path: PathBuf,
    temp: PathBuf,
    listener: Socket,
}

/// What the running process offers: for each role and configured address, its sockets
/// (this process's own descriptors for them, closed once sent).
pub type Offer = Vec<(Role, SocketAddr, Vec<TcpListener>)>;

impl ControlSocket {
    /// Binds the control socket beside `path`. `fresh` (a plain start): fail if a running
    /// certgate answers at `path`; a stale file is replaced later, by [`ControlSocket::publish`].
    pub fn bind(path: &Path, fresh: bool) -> Result<ControlSocket, ControlError> {
        if fresh {
            check_free(path)?;
        }
        let mut temp = path.as_os_str().to_owned();
        temp.push(format!(".{}.new", std::process::id()));
        let temp = PathBuf::from(temp);
        // A leftover of an earlier process that had our pid: nobody can be using it.
        let _ = std::fs::remove_file(&temp);
        let listener = seqpacket().map_err(io_at(path, "cannot create a Unix socket"))?;
        let addr = SockAddr::unix(&temp).map_err(io_at(path, "unusable path"))?;
        listener.bind(&addr).map_err(io_at(path, "cannot bind"))?;
        // Owner only before anyone can connect: whoever may connect gets the listening sockets.
        let private = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| listener.listen(8));
        if let Err(e) = private {
            let _ = std::fs::remove_file(&temp);
            return Err(io_at(path, "cannot make it private and listen")(e));
        }
        Ok(ControlSocket {
            path: path.to_path_buf(),
            temp,
            listener,
        })
    }

    /// Renames the socket over the configured path: from now on `--upgrade` reaches this
    /// process. Returns what a normal exit needs to remove the file again.
    pub fn publish(&self) -> Result<Published, ControlError> {
        let renamed = std::fs::rename(&self.temp, &self.path);
        if let Err(e) = renamed {
            let _ = std::fs::remove_file(&self.temp);
            return Err(io_at(&self.path, "cannot move the socket into place")(e));
        }
        let meta =
            std::fs::symlink_metadata(&self.path).map_err(io_at(&self.path, "cannot inspect"))?;
        Ok(Published {
            path: self.path.clone(),
            identity: (meta.dev(), meta.ino()),
        })
    }

    /// Serves handovers on a thread of its own, one at a time. `offer` asks the main thread
    /// for the current sockets (`None`: it is stopping, so nothing is handed over);
    /// `handed` gets the connection once the new process serves, and the thread ends.
    pub fn spawn(
        self,
        offer: impl Fn() -> Option<Offer> + Send + 'static,
        handed: impl FnOnce(Handover) + Send + 'static,
    ) -> io::Result<()> {
        std::thread::Builder::new()
            .name("certgate-control".into())
            .spawn(move || self.serve(offer, handed))
            .map(|_| ())
    }

    fn serve(self, offer: impl Fn() -> Option<Offer>, handed: impl FnOnce(Handover)) {
        loop {
            let conn = match self.listener.accept() {
                Ok((conn, _)) => conn,
                Err(e) => {
                    debug!("control socket: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            match serve_one(&conn, &offer) {
                Ok(Some(pid)) => {
                    info!("upgrade: process {pid} serves on the handed-over sockets");
                    handed(Handover { conn, pid });
                    return;
                }
                Ok(None) => {}
                Err(ControlError::Closed) => {
                    warn!(
                        "upgrade: the new process went away before it served; this process \
                         keeps serving"
                    )
                }
                Err(e) => warn!("upgrade failed ({e}); this process keeps serving"),
            }
        }
    }
}

impl Drop for ControlSocket {
    /// A process that fails to start leaves no temporary socket file behind. (Once published,
    /// the temporary name no longer exists.)
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.temp);
    }
}

/// One connection to the running side: `Ok(Some(pid))` once process `pid` serves.
fn serve_one(
    conn: &Socket,
    offer: &impl Fn() -> Option<Offer>,
) -> Result<Option<u32>, ControlError> {
    conn.set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(ControlError::Transfer)?;
    let pid = match recv(conn) {
        Ok((Message::Request { pid }, _)) => pid,
        // A liveness check (a starting certgate making sure nobody runs here) says nothing.
        Err(ControlError::Closed) => return Ok(None),
        Ok((other, _)) => return Err(ControlError::Unexpected(other)),
        Err(e) => return Err(e),
    };
    info!("upgrade: process {pid} asks for the listening sockets");
    let Some(offer) = offer() else {
        return Ok(None);
    };
    for (role, addr, sockets) in &offer {
        for chunk in sockets.chunks(MAX_FDS) {
            let attached: Vec<_> = chunk.iter().map(|s| s.as_fd()).collect();
            let count = u16::try_from(chunk.len()).unwrap_or(u16::MAX);
            send(
                conn,
                &Message::Sockets {
                    role: *role,
                    addr: *addr,
                    count,
                },
                &attached,
            )?;
        }
    }
    send(
        conn,
        &Message::Offered {
            pid: std::process::id(),
        },
        &[],
    )?;
    drop(offer);
    // No limit: the new process loads its config and starts its workers first.
    conn.set_read_timeout(None)
        .map_err(ControlError::Transfer)?;
    match recv(conn)? {
        (Message::Serving { pid }, _) => Ok(Some(pid)),
        (other, _) => Err(ControlError::Unexpected(other)),
    }
}

/// The path of a published control socket and the inode it had, to remove it at exit.
pub struct Published {
    path: PathBuf,
    identity: (u64, u64),
}

impl Published {
    /// Removes the socket file if it is still this process's (not yet replaced by another's).
    pub fn remove(&self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.identity {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// The running side's end of a handover whose new process serves.
pub struct Handover {
    conn: Socket,
    /// The new process.
    pub pid: u32,
}

impl Handover {
    /// Tells the new process this one has stopped accepting: the control path is its to take.
    pub fn confirm(&self) {
        if let Err(e) = send(&self.conn, &Message::Draining, &[]) {
            warn!(
                "upgrade: cannot confirm the handover to process {}: {e}",
                self.pid
            );
        }
    }
}

/// A plain start: nothing may answer at `path`. A socket nobody answers on (a crashed
/// process's) is stale and will be replaced; anything else is an error.
fn check_free(path: &Path) -> Result<(), ControlError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_at(path, "cannot inspect")(e)),
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ControlError::NotASocket {
                path: path.to_path_buf(),
            })
        }
        Ok(_) => {}
    }
    let probe = seqpacket().map_err(io_at(path, "cannot create a Unix socket"))?;
    let addr = SockAddr::unix(path).map_err(io_at(path, "unusable path"))?;
    match probe.connect(&addr) {
        Ok(()) => Err(ControlError::InUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            info!(
                "control socket {}: replacing a stale socket nobody answers on",
                path.display()
            );
            Ok(())
        }
        Err(e) => Err(io_at(
            path,
            "cannot tell whether a running certgate answers",
        )(e)),
    }
}

/// The new side of a handover, between receiving the sockets and the old process's
/// confirmation.
pub struct Takeover {
    conn: Socket,
    /// The process being replaced.
    pub old_pid: u32,
}

/// Connects to the running certgate at `path` and receives its listening sockets.
pub fn take_over(path: &Path) -> Result<(Takeover, Inherited), ControlError> {
    let conn = seqpacket().map_err(io_at(path, "cannot create a Unix socket"))?;
    let addr = SockAddr::unix(path).map_err(io_at(path, "unusable path"))?;
    conn.connect(&addr)
        .map_err(io_at(path, "cannot reach the running certgate"))?;
    conn.set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(ControlError::Transfer)?;
    send(
        &conn,
        &Message::Request {
            pid: std::process::id(),
        },
        &[],
    )?;
    let mut inherited = Inherited::default();
    loop {
        match recv(&conn)? {
            (Message::Sockets { role, addr, count }, attached) => {
                if attached.len() != usize::from(count) {
                    return Err(ControlError::Count {
                        expected: usize::from(count),
                        got: attached.len(),
                    });
                }
                let sockets = attached
                    .into_iter()
                    .map(|fd| {
                        let socket = TcpListener::from(fd);
                        socket.set_nonblocking(true).map(|()| socket)
                    })
                    .collect::<io::Result<Vec<_>>>()
                    .map_err(ControlError::Transfer)?;
                inherited.push(role, addr, sockets, Origin::Handover);
            }
            (Message::Offered { pid }, _) => {
                return Ok((Takeover { conn, old_pid: pid }, inherited));
            }
            (other, _) => return Err(ControlError::Unexpected(other)),
        }
    }
}

impl Takeover {
    /// Tells the old process that this one serves, and waits for it to confirm that it has
    /// stopped accepting.
    pub fn serving(self) -> Result<u32, ControlError> {
        send(
            &self.conn,
            &Message::Serving {
                pid: std::process::id(),
            },
            &[],
        )?;
        match recv(&self.conn)? {
            (Message::Draining, _) => Ok(self.old_pid),
            (other, _) => Err(ControlError::Unexpected(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;
    use std::sync::mpsc;

    fn dir(tag: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("cg-ctl-{}-{tag}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A running side offering one listener socket; handovers arrive on the channel.
    fn running(path: &Path, socket: &TcpListener) -> (Published, mpsc::Receiver<Handover>) {
        let control = ControlSocket::bind(path, true).unwrap();
        let published = control.publish().unwrap();
        let addr = socket.local_addr().unwrap();
        let offered = socket.try_clone().unwrap();
        let (tx, rx) = mpsc::channel();
        control
            .spawn(
                move || {
                    Some(vec![(
                        Role::Listener,
                        addr,
                        vec![offered.try_clone().unwrap()],
                    )])
                },
                move |h| tx.send(h).unwrap(),
            )
            .unwrap();
        (published, rx)
    }

    /// Accepts one connection on a non-blocking listener, waiting up to 5 s.
    fn accept_one(listener: &TcpListener) -> TcpStream {
        let until = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match listener.accept() {
                Ok((s, _)) => return s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < until, "nothing to accept");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn the_same_socket_is_handed_over_and_the_old_side_waits_for_serving() {
        let dir = dir("handover");
        let path = dir.join("control.sock");
        let original = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = original.local_addr().unwrap();
        let (_published, handed) = running(&path, &original);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // A connection queued before the handover is accepted on the received socket: it is
        // the same socket, queue and all.
        let queued = TcpStream::connect(addr).unwrap();
        let (takeover, mut inherited) = take_over(&path).unwrap();
        assert_eq!(takeover.old_pid, std::process::id());
        let received = inherited.take(Role::Listener, addr).unwrap();
        assert_eq!(received.len(), 1);
        assert!(inherited.is_empty());
        let accepted = accept_one(&received[0]);
        assert_eq!(accepted.peer_addr().unwrap(), queued.local_addr().unwrap());

        // Nothing is handed over until the new side says it serves.
        assert!(handed.recv_timeout(Duration::from_millis(200)).is_err());
        let new_side = std::thread::spawn(move || takeover.serving());
        let handover = handed.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(handover.pid, std::process::id());
        handover.confirm();
        assert_eq!(new_side.join().unwrap().unwrap(), std::process::id());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_new_side_that_goes_away_before_serving_changes_nothing() {
        let dir = dir("away");
        let path = dir.join("control.sock");
        let original = TcpListener::bind("127.0.0.1:0").unwrap();
        let (_published, handed) = running(&path, &original);
        let (first, _) = take_over(&path).unwrap();
        drop(first);
        // The running side serves the next request as if nothing had happened.
        let (second, inherited) = take_over(&path).unwrap();
        assert!(!inherited.is_empty());
        assert!(handed.recv_timeout(Duration::from_millis(200)).is_err());
        let new_side = std::thread::spawn(move || second.serving());
        handed
            .recv_timeout(Duration::from_secs(5))
            .unwrap()
            .confirm();
        new_side.join().unwrap().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_plain_start_refuses_a_live_socket_and_replaces_a_stale_one() {
        let dir = dir("stale");
        let path = dir.join("control.sock");
        let original = TcpListener::bind("127.0.0.1:0").unwrap();
        let (_published, _handed) = running(&path, &original);
        let e = ControlSocket::bind(&path, true).err().unwrap();
        assert!(matches!(e, ControlError::InUse { .. }), "{e}");
        assert!(e.to_string().contains("--upgrade"), "{e}");

        // A crashed process's socket file: bound, then closed without removing the file.
        let stale = dir.join("stale.sock");
        drop({
            let s = seqpacket().unwrap();
            s.bind(&SockAddr::unix(&stale).unwrap()).unwrap();
            s
        });
        assert!(stale.exists());
        let control = ControlSocket::bind(&stale, true).unwrap();
        control.publish().unwrap();
        let probe = seqpacket().unwrap();
        probe.connect(&SockAddr::unix(&stale).unwrap()).unwrap();

        let file = dir.join("plain-file");
        std::fs::write(&file, b"not a socket").unwrap();
        let e = ControlSocket::bind(&file, true).err().unwrap();
        assert!(matches!(e, ControlError::NotASocket { .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn exit_removes_the_path_only_while_it_is_still_ours() {
        let dir = dir("remove");
        let path = dir.join("control.sock");
        let first = ControlSocket::bind(&path, true).unwrap();
        let first_published = first.publish().unwrap();
        // The next process renames its own socket over the path.
        let second = ControlSocket::bind(&path, false).unwrap();
        let second_published = second.publish().unwrap();
        first_published.remove();
        assert!(
            path.exists(),
            "the old process removed the new one's socket"
        );
        second_published.remove();
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
