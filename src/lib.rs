//! certgate: an io_uring TLS terminator that puts mutual TLS in front of any HTTP/1.1 app.
//!
//! Pure modules (`config`, `http`, `xfcc`, `tls`, `pki`) take bytes and values and never touch
//! the runtime; `proxy` and `worker` are the thin I/O shell around them.

pub mod app;
pub mod config;
pub mod demo;
pub mod http;
pub mod pki;
pub mod proxy;
pub mod tls;
pub mod worker;
pub mod xfcc;
