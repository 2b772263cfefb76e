//! Listening sockets that outlive a process: handed from a running certgate to the one that
//! replaces it (`certgate --upgrade`), or passed by systemd (socket activation).
//!
//! Closing a listening socket resets every connection still in its accept queue, so a restart
//! that closes and binds again loses connections even with `SO_REUSEPORT`. Instead the socket
//! objects themselves move: the new process receives descriptors for the very sockets the old
//! one accepts on (SCM_RIGHTS over the control socket, see [`control`]), starts accepting on
//! them, and only then tells the old process to stop. Connections queued in between are
//! accepted by whichever process asks first; none is dropped, because the socket never closes.
//!
//! Sockets are matched to listeners by the configured `bind` address. A listener bound to port
//! 0 has no fixed address to match: it is never handed over, and the new process binds a fresh
//! port for it. A listener whose `bind` changed is a new listener: the new process binds it,
//! and the old address closes when the old process has drained, as in a reload that moves it.
//!
//! How many sockets a listener has depends on where they came from: the old process's worker
//! count (one `SO_REUSEPORT` socket per worker) or systemd's unit (usually one). The new process
//! keeps every socket it receives, because closing one would drop its queue, and spreads them
//! over its own workers ([`assignment`]): fewer workers than sockets run several accept loops
//! each; more workers than sockets share a socket, each with its own accept loop on its own
//! descriptor for it.

pub mod activation;
pub mod control;
mod fds;
pub mod message;

use std::net::{SocketAddr, TcpListener};

use crate::config::Config;
pub use message::Role;

/// Where inherited sockets came from, for the log and for errors.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// From the process this one replaces.
    Handover,
    /// From systemd: the first descriptor number, and the socket unit's `FileDescriptorName`.
    Systemd { fd: i32, name: Option<String> },
}

struct Entry {
    role: Role,
    /// The configured address (handover) or the socket's own (systemd).
    addr: SocketAddr,
    sockets: Vec<TcpListener>,
    origin: Origin,
}

/// Listening sockets received at startup, waiting to be claimed by the listeners they serve.
#[derive(Default)]
pub struct Inherited {
    entries: Vec<Entry>,
}

/// A socket systemd passed that no listener claims: a startup error, since serving nothing on
/// a socket that clients connect to would leave them hanging in its queue.
#[derive(Debug, thiserror::Error)]
#[error(
    "systemd passed a listening socket on {addr} (fd {fd}{}) but no [[listener]] has bind = \"{addr}\"",
    name.as_ref().map(|n| format!(", name {n:?}")).unwrap_or_default()
)]
pub struct Unclaimed {
    pub addr: SocketAddr,
    pub fd: i32,
    pub name: Option<String>,
}

impl Inherited {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn push(&mut self, role: Role, addr: SocketAddr, sockets: Vec<TcpListener>, origin: Origin) {
        let same = self
            .entries
            .iter_mut()
            .find(|e| e.role == role && e.addr == addr && e.origin == origin);
        match same {
            Some(e) => e.sockets.extend(sockets),
            None => self.entries.push(Entry {
                role,
                addr,
                sockets,
                origin,
            }),
        }
    }

    /// Adds everything in `other`.
    pub fn extend(&mut self, other: Inherited) {
        for e in other.entries {
            self.push(e.role, e.addr, e.sockets, e.origin);
        }
    }

    /// Takes the sockets for the `role` configured at `addr`, if any were received. Port 0 is
    /// never matched (see the module comment).
    pub fn take(&mut self, role: Role, addr: SocketAddr) -> Option<Vec<TcpListener>> {
        if addr.port() == 0 {
            return None;
        }
        let mut found: Option<Vec<TcpListener>> = None;
        let mut i = 0;
        while i < self.entries.len() {
            if self.entries[i].role == role && self.entries[i].addr == addr {
                let e = self.entries.remove(i);
                found.get_or_insert_with(Vec::new).extend(e.sockets);
            } else {
                i += 1;
            }
        }
        found
    }

    /// The addresses of the sockets systemd passed.
    pub fn activated_addrs(&self) -> Vec<SocketAddr> {
        self.entries
            .iter()
            .filter(|e| matches!(e.origin, Origin::Systemd { .. }))
            .map(|e| e.addr)
            .collect()
    }

    /// Every socket systemd passed must be claimed by a listener of `config`.
    pub fn check_activated(&self, config: &Config) -> Result<(), Unclaimed> {
        for e in &self.entries {
            if let Origin::Systemd { fd, name } = &e.origin {
                if !config.listeners.iter().any(|l| l.bind == e.addr) {
                    return Err(Unclaimed {
                        addr: e.addr,
                        fd: *fd,
                        name: name.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// One line per unclaimed socket (which then closes), for the log.
    pub fn describe(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|e| {
                let role = match e.role {
                    Role::Listener => "listener",
                    Role::Admin => "admin",
                };
                format!("{role} socket(s) for {} ({})", e.addr, e.sockets.len())
            })
            .collect()
    }
}

/// Which of `sockets` listening sockets each of `workers` workers accepts on: every socket gets
/// at least one worker and every worker at least one socket, as evenly as the counts allow
/// (slot k of max(sockets, workers) pairs socket k mod sockets with worker k mod workers; no
/// worker gets the same socket twice).
pub fn assignment(sockets: usize, workers: usize) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); workers];
    if sockets == 0 || workers == 0 {
        return out;
    }
    for k in 0..sockets.max(workers) {
        out[k % workers].push(k % sockets);
    }
    out
}

/// Per worker, its own descriptors for the sockets [`assignment`] gives it.
pub fn spread(sockets: &[TcpListener], workers: usize) -> std::io::Result<Vec<Vec<TcpListener>>> {
    assignment(sockets.len(), workers)
        .into_iter()
        .map(|mine| mine.into_iter().map(|i| sockets[i].try_clone()).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_covers_every_socket_and_every_worker() {
        for sockets in 1..=9 {
            for workers in 1..=9 {
                let a = assignment(sockets, workers);
                assert_eq!(a.len(), workers);
                for mine in &a {
                    assert!(!mine.is_empty(), "{sockets}x{workers}: idle worker");
                    let mut sorted = mine.clone();
                    sorted.sort_unstable();
                    sorted.dedup();
                    assert_eq!(sorted.len(), mine.len(), "{sockets}x{workers}: twice");
                }
                for s in 0..sockets {
                    assert!(a.iter().any(|m| m.contains(&s)), "{sockets}x{workers}: {s}");
                }
                let total: usize = a.iter().map(Vec::len).sum();
                assert_eq!(total, sockets.max(workers));
            }
        }
    }

    #[test]
    fn assignment_examples() {
        // Same count: one each, in order (a plain restart with the same worker count).
        assert_eq!(assignment(3, 3), vec![vec![0], vec![1], vec![2]]);
        // Four sockets, two workers: two accept loops each.
        assert_eq!(assignment(4, 2), vec![vec![0, 2], vec![1, 3]]);
        // One systemd socket, three workers: all share it.
        assert_eq!(assignment(1, 3), vec![vec![0], vec![0], vec![0]]);
        assert!(assignment(0, 2).iter().all(Vec::is_empty));
    }

    fn listener() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").unwrap()
    }

    #[test]
    fn take_matches_role_and_address_and_never_port_zero() {
        let a = listener();
        let addr = a.local_addr().unwrap();
        let mut set = Inherited::default();
        set.push(Role::Listener, addr, vec![a], Origin::Handover);
        set.push(Role::Listener, addr, vec![listener()], Origin::Handover);
        set.push(Role::Admin, addr, vec![listener()], Origin::Handover);
        assert!(set
            .take(Role::Listener, "127.0.0.1:0".parse().unwrap())
            .is_none());
        assert_eq!(set.take(Role::Listener, addr).map(|s| s.len()), Some(2));
        assert!(set.take(Role::Listener, addr).is_none());
        assert_eq!(
            set.describe(),
            vec![format!("admin socket(s) for {addr} (1)")]
        );
        assert_eq!(set.take(Role::Admin, addr).map(|s| s.len()), Some(1));
        assert!(set.is_empty());
    }

    #[test]
    fn an_unclaimed_systemd_socket_is_named() {
        let a = listener();
        let addr = a.local_addr().unwrap();
        let mut set = Inherited::default();
        let origin = Origin::Systemd {
            fd: 3,
            name: Some("certgate.socket".into()),
        };
        set.push(Role::Listener, addr, vec![a], origin);
        let config = Config::from_toml(
            "[[listener]]\nbind = \"127.0.0.1:1\"\ncert = \"c\"\nkey = \"k\"\nupstream = \"127.0.0.1:2\"\n",
            std::path::Path::new("/"),
        )
        .unwrap();
        let e = set.check_activated(&config).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "systemd passed a listening socket on {addr} (fd 3, name \"certgate.socket\") \
                 but no [[listener]] has bind = \"{addr}\""
            )
        );
    }
}
