//! certgate: an io_uring TLS terminator that puts mutual TLS in front of any HTTP/1.1 app.
//!
//! Pure modules (`config`, `http`, `xfcc`, `tls`, `pki`) take bytes and values and never touch
//! the runtime; `proxy` and `worker` are the thin I/O shell around them.
//!
//! The `demo` cargo feature (on by default) adds `demo` and `pki`, the certificate generator that
//! the demo, the integration tests and the benches use; a production build
//! (`--no-default-features`) has neither. Unit tests always have `pki`.

pub mod app;
pub mod cidr;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod http;
pub mod identity;
pub mod ops;
#[cfg(any(test, feature = "demo"))]
pub mod pki;
pub mod policy;
pub mod proxy;
pub mod proxy_header;
pub mod sni;
pub mod tls;
pub mod worker;
pub mod xfcc;

#[cfg(test)]
mod test_alloc;
