//! The systemd notify protocol (`sd_notify`), for `Type=notify-reload` units: one datagram per
//! state change to the socket named by `$NOTIFY_SOCKET` (a path, or `@name` for an abstract
//! socket). Without the variable (not started by systemd) every call does nothing.
//!
//! The order systemd expects: `READY=1` once every listener serves; around a reload
//! `RELOADING=1` with `MONOTONIC_USEC` (the time the reload began, so systemd can tell this
//! reload from an older one) and `READY=1` when it is done, failed or not; `STOPPING=1` when
//! draining begins. `STATUS=` is a free-form line that `systemctl status` shows.
//!
//! After `certgate --upgrade`, the new process is not the one systemd started: it says
//! `MAINPID=` with its own pid together with its `READY=1` (the unit needs
//! `NotifyAccess=all` to accept it), and the old one, no longer the main process, sends
//! nothing more (a `STOPPING=1` from it would stop the unit).

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where the notify socket lives, as written in `$NOTIFY_SOCKET`.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET {0:?} is neither an absolute path nor an @abstract name")]
    BadAddress(String),
    #[error("cannot create the notify socket: {0}")]
    Socket(#[source] io::Error),
}

/// Sends state changes to systemd; a no-op when certgate was not started with a notify socket.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; disabled when it is unset or empty.
    pub fn from_env() -> Result<Notifier, NotifyError> {
        match std::env::var("NOTIFY_SOCKET") {
            Ok(addr) if !addr.is_empty() => Notifier::to(&addr),
            _ => Ok(Notifier::disabled()),
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier { target: None }
    }

    /// Sends to `addr`: an absolute path, or `@name` for a Linux abstract socket.
    pub fn to(addr: &str) -> Result<Notifier, NotifyError> {
        let bad = || NotifyError::BadAddress(addr.to_owned());
        let target = if let Some(name) = addr.strip_prefix('@') {
            SocketAddr::from_abstract_name(name.as_bytes()).map_err(|_| bad())?
        } else if addr.starts_with('/') {
            SocketAddr::from_pathname(addr).map_err(|_| bad())?
        } else {
            return Err(bad());
        };
        let socket = UnixDatagram::unbound().map_err(NotifyError::Socket)?;
        Ok(Notifier {
            target: Some((socket, target)),
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one message (newline-separated `KEY=value` assignments).
    pub fn send(&self, message: &str) -> io::Result<()> {
        match &self.target {
            Some((socket, addr)) => socket.send_to_addr(message.as_bytes(), addr).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Every listener is bound and serving (also sent when a reload is done).
    pub fn ready(&self) -> io::Result<()> {
        self.send("READY=1")
    }

    /// Every listener serves, in process `pid`, which is now the service's main process.
    pub fn ready_as_main(&self, pid: u32) -> io::Result<()> {
        self.send(&main_ready_message(pid))
    }

    /// A reload begins now.
    pub fn reloading(&self) -> io::Result<()> {
        self.send(&reloading_message(monotonic_usec()?))
    }

    /// Draining has begun.
    pub fn stopping(&self) -> io::Result<()> {
        self.send("STOPPING=1")
    }

    /// A one-line status for `systemctl status` (newlines are replaced: they would start a
    /// new assignment).
    pub fn status(&self, status: &str) -> io::Result<()> {
        self.send(&status_message(status))
    }
}

/// `RELOADING=1` with the reload's start on CLOCK_MONOTONIC, as `Type=notify-reload` requires.
pub fn reloading_message(monotonic_usec: u64) -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")
}

/// `MAINPID=` and `READY=1` in one message, so systemd never sees one without the other.
pub fn main_ready_message(pid: u32) -> String {
    format!("MAINPID={pid}\nREADY=1")
}

pub fn status_message(status: &str) -> String {
    format!("STATUS={}", status.replace(['\n', '\r'], " "))
}

/// CLOCK_MONOTONIC in microseconds: the clock systemd compares `MONOTONIC_USEC` against
/// (std's `Instant` uses it too, but does not reveal its value).
pub fn monotonic_usec() -> io::Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let micros = u64::try_from(ts.tv_nsec).unwrap_or(0) / 1000;
    Ok(secs.saturating_mul(1_000_000).saturating_add(micros))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Plays systemd: a datagram socket bound at a fresh path.
    fn systemd() -> (UnixDatagram, std::path::PathBuf) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("certgate-notify-{}-{n}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (socket, path)
    }

    fn recv(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn messages_arrive_in_order() {
        let (systemd, path) = systemd();
        let n = Notifier::to(path.to_str().unwrap()).unwrap();
        assert!(n.is_enabled());
        let before = monotonic_usec().unwrap();
        n.ready().unwrap();
        n.reloading().unwrap();
        n.ready().unwrap();
        n.status("serving 2 listeners\nsecond line").unwrap();
        n.stopping().unwrap();
        assert_eq!(recv(&systemd), "READY=1");
        let reloading = recv(&systemd);
        let usec: u64 = reloading
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("{reloading:?}"))
            .parse()
            .unwrap();
        assert!(usec >= before && usec <= monotonic_usec().unwrap());
        assert_eq!(recv(&systemd), "READY=1");
        assert_eq!(recv(&systemd), "STATUS=serving 2 listeners second line");
        assert_eq!(recv(&systemd), "STOPPING=1");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn abstract_socket_names_start_with_at() {
        let name = format!("certgate-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let systemd = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::to(&format!("@{name}")).unwrap().ready().unwrap();
        assert_eq!(recv(&systemd), "READY=1");
    }

    #[test]
    fn disabled_and_bad_addresses() {
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        n.ready().unwrap();
        n.reloading().unwrap();
        assert!(matches!(
            Notifier::to("relative/path"),
            Err(NotifyError::BadAddress(_))
        ));
        // systemd gone: the caller gets the error (and logs it); nothing panics.
        let gone = std::env::temp_dir().join("certgate-notify-nobody-listens");
        let n = Notifier::to(gone.to_str().unwrap()).unwrap();
        assert!(n.ready().is_err());
    }

    #[test]
    fn messages_are_formatted_as_systemd_expects() {
        assert_eq!(reloading_message(42), "RELOADING=1\nMONOTONIC_USEC=42");
        assert_eq!(status_message("a\r\nb"), "STATUS=a  b");
        assert_eq!(main_ready_message(4242), "MAINPID=4242\nREADY=1");
    }
}
