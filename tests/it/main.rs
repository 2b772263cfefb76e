//! certgate's integration tests: real sockets on 127.0.0.1, real TLS handshakes, real clients
//! (rustls, curl, openssl s_client), the echo app as upstream. One binary to keep links short.

mod certs;
mod cli;
mod faults;
mod h2;
mod hardening;
mod headers;
mod identity;
mod modes;
mod ops_admin;
mod ops_logs;
mod ops_reload;
mod packaging;
mod passthrough;
mod policy;
mod proxy_in;
mod proxying;
mod relay;
mod routes;
mod sites;
mod support;
mod tcp;
mod tickets;
mod tools;
mod upgrade;
mod upstream_tls;
mod websocket;
