//! The handover protocol's messages, as bytes. Pure: no socket here, so every message and every
//! way one can be malformed is unit-tested.
//!
//! One `SOCK_SEQPACKET` connection on the control socket, so each message arrives whole and
//! alone, with the descriptors it carries (SCM_RIGHTS) attached to it:
//!
//! ```text
//! new → old   Request{pid}                      asks for the listening sockets
//! old → new   Sockets{role, addr, count} × n    count listening sockets attached to each
//! old → new   Offered{pid}                      that was all of them
//! new → old   Serving{pid}                      the new process serves: stop accepting
//! old → new   Draining                          stopped accepting; the control path is yours
//! ```
//!
//! Every message starts with [`VERSION`] and a tag byte; a peer that speaks another version is
//! refused with an error naming both, and nothing is handed over.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The protocol version both sides must speak.
pub const VERSION: u8 = 1;

/// Most descriptors one message carries; a listener with more sockets (one per worker) is sent
/// in several `Sockets` messages. The kernel's limit (`SCM_MAX_FD`) is 253.
pub const MAX_FDS: usize = 250;

/// What a handed-over listening socket serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A `[[listener]]`, identified by its configured `bind`.
    Listener,
    /// The `[admin]` listener, identified by its configured `bind`.
    Admin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The new process `pid` asks the running one for its listening sockets.
    Request { pid: u32 },
    /// `count` listening sockets, attached, for the `role` configured at `addr`.
    Sockets {
        role: Role,
        addr: SocketAddr,
        count: u16,
    },
    /// Every socket has been sent, by the running process `pid`.
    Offered { pid: u32 },
    /// The new process `pid` serves on what it received: the old one may stop accepting.
    Serving { pid: u32 },
    /// The old process has stopped accepting and drains; the control socket path is the
    /// new process's to take.
    Draining,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("empty message")]
    Empty,
    #[error("protocol version {0}, but this certgate speaks version {VERSION}")]
    Version(u8),
    #[error("unknown message type {0}")]
    Tag(u8),
    #[error("unknown socket role {0}")]
    Role(u8),
    #[error("unknown address family {0}")]
    Family(u8),
    #[error("message ends early")]
    Short,
    #[error("{0} unexpected byte(s) after the message")]
    Trailing(usize),
}

const TAG_REQUEST: u8 = 1;
const TAG_SOCKETS: u8 = 2;
const TAG_OFFERED: u8 = 3;
const TAG_SERVING: u8 = 4;
const TAG_DRAINING: u8 = 5;

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        match self {
            Message::Request { pid } => {
                out.push(TAG_REQUEST);
                out.extend_from_slice(&pid.to_be_bytes());
            }
            Message::Sockets { role, addr, count } => {
                out.push(TAG_SOCKETS);
                out.push(match role {
                    Role::Listener => 1,
                    Role::Admin => 2,
                });
                match addr.ip() {
                    IpAddr::V4(ip) => {
                        out.push(4);
                        out.extend_from_slice(&ip.octets());
                    }
                    IpAddr::V6(ip) => {
                        out.push(6);
                        out.extend_from_slice(&ip.octets());
                    }
                }
                out.extend_from_slice(&addr.port().to_be_bytes());
                out.extend_from_slice(&count.to_be_bytes());
            }
            Message::Offered { pid } => {
                out.push(TAG_OFFERED);
                out.extend_from_slice(&pid.to_be_bytes());
            }
            Message::Serving { pid } => {
                out.push(TAG_SERVING);
                out.extend_from_slice(&pid.to_be_bytes());
            }
            Message::Draining => out.push(TAG_DRAINING),
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Message, MessageError> {
        let mut r = Reader(bytes);
        let version = r.u8().map_err(|_| MessageError::Empty)?;
        if version != VERSION {
            return Err(MessageError::Version(version));
        }
        let message = match r.u8()? {
            TAG_REQUEST => Message::Request {
                pid: u32::from_be_bytes(r.array()?),
            },
            TAG_SOCKETS => {
                let role = match r.u8()? {
                    1 => Role::Listener,
                    2 => Role::Admin,
                    other => return Err(MessageError::Role(other)),
                };
                let ip = match r.u8()? {
                    4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
                    6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
                    other => return Err(MessageError::Family(other)),
                };
                let port = u16::from_be_bytes(r.array()?);
                let count = u16::from_be_bytes(r.array()?);
                Message::Sockets {
                    role,
                    addr: SocketAddr::new(ip, port),
                    count,
                }
            }
            TAG_OFFERED => Message::Offered {
                pid: u32::from_be_bytes(r.array()?),
            },
            TAG_SERVING => Message::Serving {
                pid: u32::from_be_bytes(r.array()?),
            },
            TAG_DRAINING => Message::Draining,
            other => return Err(MessageError::Tag(other)),
        };
        match r.0.len() {
            0 => Ok(message),
            n => Err(MessageError::Trailing(n)),
        }
    }
}

/// A cursor that refuses to read past the end.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> Result<u8, MessageError> {
        Ok(self.array::<1>()?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], MessageError> {
        let (head, rest) = self.0.split_at_checked(N).ok_or(MessageError::Short)?;
        self.0 = rest;
        head.try_into().map_err(|_| MessageError::Short)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Message> {
        vec![
            Message::Request { pid: 1 },
            Message::Sockets {
                role: Role::Listener,
                addr: "127.0.0.1:8443".parse().unwrap(),
                count: 4,
            },
            Message::Sockets {
                role: Role::Admin,
                addr: "[::1]:9901".parse().unwrap(),
                count: 1,
            },
            Message::Offered { pid: 4242 },
            Message::Serving { pid: u32::MAX },
            Message::Draining,
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in all() {
            assert_eq!(Message::decode(&m.encode()), Ok(m.clone()), "{m:?}");
        }
    }

    #[test]
    fn the_layout_is_fixed() {
        let m = Message::Sockets {
            role: Role::Listener,
            addr: "10.1.2.3:443".parse().unwrap(),
            count: 258,
        };
        assert_eq!(m.encode(), [1, 2, 1, 4, 10, 1, 2, 3, 1, 187, 1, 2]);
        assert_eq!(Message::Serving { pid: 7 }.encode(), [1, 4, 0, 0, 0, 7]);
        assert_eq!(Message::Draining.encode(), [1, 5]);
    }

    #[test]
    fn another_version_is_refused_by_name() {
        let mut bytes = Message::Draining.encode();
        bytes[0] = 2;
        let e = Message::decode(&bytes).unwrap_err();
        assert_eq!(e, MessageError::Version(2));
        assert_eq!(
            e.to_string(),
            "protocol version 2, but this certgate speaks version 1"
        );
    }

    #[test]
    fn every_truncation_is_an_error_and_nothing_panics() {
        for m in all() {
            let bytes = m.encode();
            for n in 0..bytes.len() {
                let e = Message::decode(&bytes[..n]).unwrap_err();
                let want = if n == 0 {
                    MessageError::Empty
                } else {
                    MessageError::Short
                };
                assert_eq!(e, want, "{m:?} cut to {n}");
            }
        }
    }

    #[test]
    fn unknown_values_and_trailing_bytes_are_refused() {
        assert_eq!(Message::decode(&[1, 9]), Err(MessageError::Tag(9)));
        assert_eq!(
            Message::decode(&[1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(MessageError::Role(3))
        );
        assert_eq!(
            Message::decode(&[1, 2, 1, 5, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(MessageError::Family(5))
        );
        assert_eq!(Message::decode(&[1, 5, 0]), Err(MessageError::Trailing(1)));
    }
}
