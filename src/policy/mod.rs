//! Trust and routing policy decisions, as plain functions over values: which client
//! certificates a listener admits beyond "it chains to `client_ca`" (`allow`), and which
//! route a request path falls under and what that route demands of the certificate (`routes`).
//!
//! The TLS layer (`tls::verify`) and the exchange loops call these; nothing here touches a
//! socket or the runtime.

pub mod allow;
pub mod routes;
