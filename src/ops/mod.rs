//! Operations: what lets a team run certgate in production. Metrics summed at scrape time, the
//! admin listener (`/healthz`, `/readyz`, `/metrics`), the access log, the rate limit on
//! handshake-failure log lines, certgate's own log format, the systemd notify protocol, and the
//! file watcher behind `reload_interval`.
//!
//! Operations observe, they do not steer: nothing here decides what happens to a connection.
//! Workers own their counters and their access-log buffer, and `ops` only reads what they
//! wrote, so the request path takes no lock and no shared read-modify-write atomic (see
//! [`metrics`] for how a scrape reads a worker's counters safely). The admin listener runs on
//! its own plain thread with blocking I/O, away from the workers' event loops.
//!
//! Each piece is a building block with its own tests; `app`, `worker` and `proxy` wire them in.

pub mod access_log;
pub mod admin;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod ratelimit;
pub mod watch;
