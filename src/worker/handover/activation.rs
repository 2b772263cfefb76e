//! systemd socket activation (`sd_listen_fds`): with `LISTEN_PID` equal to our pid, descriptors
//! 3 .. 3+`LISTEN_FDS` are listening sockets systemd bound for us (names, optionally, in
//! `LISTEN_FDNAMES`). Each is matched to the listener whose `bind` equals its local address;
//! certgate binds nothing itself for those listeners. The variables are removed once read, so
//! nothing this process starts inherits them.

use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use super::{Inherited, Origin, Role};

/// The first passed descriptor (`SD_LISTEN_FDS_START`).
pub const FIRST_FD: RawFd = 3;
/// More passed sockets than this is a broken environment, not a unit.
const MAX_PASSED: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivationError {
    #[error("LISTEN_FDS={0:?} is not a count of descriptors")]
    BadCount(String),
    #[error("LISTEN_FDS: descriptor {0} is not open")]
    NotOpen(RawFd),
    #[error("LISTEN_FDS: descriptor {fd}{} is not a listening TCP socket", name_suffix(.name))]
    NotTcpListener { fd: RawFd, name: Option<String> },
    #[error("LISTEN_FDS: descriptor {fd}: {message}")]
    Io { fd: RawFd, message: String },
}

/// A passed descriptor and its name, if it has one.
pub type Passed = (RawFd, Option<String>);

fn name_suffix(name: &Option<String>) -> String {
    name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
}

/// The passed descriptors and their names, from the three variables' values. `None` when the
/// variables are absent or meant for another process (`LISTEN_PID` differs: a parent's).
/// Names are optional: when `LISTEN_FDNAMES` does not have one per descriptor, none is used.
pub fn parse(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    names: Option<&str>,
    pid: u32,
) -> Result<Option<Vec<Passed>>, ActivationError> {
    let (Some(listen_pid), Some(listen_fds)) = (listen_pid, listen_fds) else {
        return Ok(None);
    };
    if listen_pid.trim().parse::<u32>().ok() != Some(pid) {
        return Ok(None);
    }
    let count: usize = listen_fds
        .trim()
        .parse()
        .ok()
        .filter(|n| *n <= MAX_PASSED)
        .ok_or_else(|| ActivationError::BadCount(listen_fds.to_owned()))?;
    let names: Vec<&str> = names.map(|n| n.split(':').collect()).unwrap_or_default();
    let named = names.len() == count;
    Ok(Some(
        (0..count)
            .map(|i| {
                let name = named.then(|| names[i].to_owned()).filter(|n| !n.is_empty());
                (FIRST_FD + i as RawFd, name)
            })
            .collect(),
    ))
}

/// Reads and removes the variables and takes the descriptors they name. Call it before any
/// thread starts: removing environment variables is only safe while single-threaded.
pub fn from_env() -> Result<Inherited, ActivationError> {
    let var = |k: &str| std::env::var(k).ok();
    let parsed = parse(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    );
    for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(k);
    }
    let mut inherited = Inherited::default();
    for (fd, name) in parsed?.unwrap_or_default() {
        let (addr, socket) = take(fd, &name)?;
        inherited.push(
            Role::Listener,
            addr,
            vec![socket],
            Origin::Systemd { fd, name },
        );
    }
    Ok(inherited)
}

/// Takes ownership of passed descriptor `fd`: close-on-exec, non-blocking (the workers'
/// accept loops need that), and it must be a listening TCP socket.
fn take(
    fd: RawFd,
    name: &Option<String>,
) -> Result<(std::net::SocketAddr, TcpListener), ActivationError> {
    // SAFETY: F_GETFD only reads the descriptor's flags; an unopened number fails with EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(ActivationError::NotOpen(fd));
    }
    // SAFETY: systemd passed `fd` to this process for it to own; nothing else in this process
    // uses descriptor numbers from 3 on before this runs, and each is taken once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let socket = socket2::Socket::from(owned);
    let io = |e: std::io::Error| ActivationError::Io {
        fd,
        message: e.to_string(),
    };
    let not_tcp = || ActivationError::NotTcpListener {
        fd,
        name: name.clone(),
    };
    socket.set_cloexec(true).map_err(io)?;
    let listening = socket.is_listener().unwrap_or(false);
    let stream = socket
        .r#type()
        .map(|t| t == socket2::Type::STREAM)
        .unwrap_or(false);
    let addr = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .filter(|_| listening && stream)
        .ok_or_else(not_tcp)?;
    socket.set_nonblocking(true).map_err(io)?;
    Ok((addr, socket.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_pid_and_a_count_give_descriptors_from_three() {
        let got = parse(Some("42"), Some("2"), None, 42).unwrap().unwrap();
        assert_eq!(got, vec![(3, None), (4, None)]);
    }

    #[test]
    fn names_are_used_when_there_is_one_per_descriptor() {
        let got = parse(Some("42"), Some("2"), Some("https:"), 42)
            .unwrap()
            .unwrap();
        assert_eq!(got, vec![(3, Some("https".into())), (4, None)]);
        let got = parse(Some("42"), Some("2"), Some("only-one"), 42)
            .unwrap()
            .unwrap();
        assert_eq!(got, vec![(3, None), (4, None)]);
    }

    #[test]
    fn another_pid_or_missing_variables_mean_not_for_us() {
        assert_eq!(parse(Some("41"), Some("2"), None, 42), Ok(None));
        assert_eq!(parse(None, Some("2"), None, 42), Ok(None));
        assert_eq!(parse(Some("42"), None, None, 42), Ok(None));
        assert_eq!(parse(Some("x"), Some("2"), None, 42), Ok(None));
    }

    #[test]
    fn a_bad_count_is_an_error() {
        for bad in ["", "-1", "two", "100000"] {
            assert_eq!(
                parse(Some("42"), Some(bad), None, 42),
                Err(ActivationError::BadCount(bad.into()))
            );
        }
        assert_eq!(parse(Some("42"), Some("0"), None, 42), Ok(Some(vec![])));
    }
}
