//! The exchange loop of a `protocol = "tcp"` listener: after the handshake (with the same
//! client-certificate modes and trust as HTTP listeners), the decrypted stream is relayed to
//! the upstream as it is, both ways, with half-close honoured (see `tunnel`). The app learns who
//! connected from the PROXY header sent first on the upstream connection (`proxy_header`).
//!
//! Each client gets its own upstream connection: a stream has no message boundaries at which
//! one could be shared.

use std::net::SocketAddr;
use std::rc::Rc;

use tracing::debug;

use super::tls_conn::TlsConn;
use super::{tunnel, ListenerCtx};
use crate::ops::access_log;
use crate::ops::metrics::UpstreamErrorKind;
use crate::proxy_header::{self, ClientFacts};

/// `peer` and `local` are the client and local addresses a received PROXY header named
/// (`local` is `None` without one: the socket's own is used).
pub(crate) async fn serve(
    mut tls: TlsConn,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    ctx: Rc<ListenerCtx>,
) {
    let header = match preface(&tls, (peer, local), &ctx) {
        Ok(h) => h,
        Err(e) => {
            debug!(listener = %ctx.name, %peer, "{e}");
            tls.close().await;
            return;
        }
    };
    // The PROXY header goes first on the TCP connection, before any TLS to the app.
    let up = match super::connect_upstream(&ctx, &ctx.pool, &header).await {
        Ok(up) => up,
        Err(e) => {
            debug!(listener = %ctx.name, %peer, "upstream connect: {e}");
            ctx.metrics
                .upstream_error(ctx.index, UpstreamErrorKind::Connect);
            // No HTTP to answer in: the client sees its stream end at once.
            tls.close().await;
            return;
        }
    };
    let (sent, received) = tunnel::relay(&mut tls, up, &[], &[], ctx.tunnel_idle).await;
    debug!(listener = %ctx.name, %peer, sent, received, "tcp stream ended");
    tls.close().await;
}

/// The PROXY header (`upstream_proxy_protocol`) that names this client to the app; empty when
/// the listener sends none.
pub(super) fn preface(
    tls: &TlsConn,
    addrs: (SocketAddr, Option<SocketAddr>),
    ctx: &ListenerCtx,
) -> Result<Vec<u8>, proxy_header::EncodeError> {
    let cn = tls
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|der| common_name(der));
    let facts = facts(tls, addrs, cn.as_deref(), ctx.verifies_clients);
    proxy_header::encode(ctx.upstream_proxy_protocol, &facts)
}

/// The subject CN of a certificate, if it has one.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// What the PROXY header tells the app about this client connection.
fn facts<'a>(
    tls: &'a TlsConn,
    (peer, local): (SocketAddr, Option<SocketAddr>),
    cn: Option<&'a str>,
    verifies: bool,
) -> ClientFacts<'a> {
    let leaf = tls.peer_certificates().and_then(|c| c.first());
    ClientFacts {
        client: Some(peer),
        // A header passed on names the connection the balancer accepted, both ends of it.
        local: local.or_else(|| tls.local_addr()),
        alpn: tls.alpn_protocol(),
        sni: tls.server_name(),
        tls_version: access_log::tls_version(tls.protocol_version()),
        cipher: tls.cipher_suite_name().unwrap_or(""),
        leaf: leaf.map(|d| d.as_ref()),
        cn,
        // With a trust store, a presented certificate passed path building.
        verified: verifies,
    }
}
