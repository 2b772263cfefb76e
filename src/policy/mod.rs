//! Trust and routing policy decisions, as plain functions over values: which client
//! certificates a listener admits beyond "it chains to `client_ca`" (`allow`).
//!
//! The TLS layer (`tls::verify`) and the exchange loops call these; nothing here touches a
//! socket or the runtime.

pub mod allow;
