//! The I/O shell of one client connection: TLS handshake, then HTTP/1.1 exchanges relayed to the
//! upstream pool. Everything a decision needs comes from the pure modules (`http`, `xfcc`).

mod admit;
mod buffers;
mod client;
pub mod error;
mod h2;
pub mod handshake_turns;
pub mod idle_clock;
mod passthrough;
mod proxy_in;
mod session;
mod tally;
mod tcp;
mod tls_conn;
mod tunnel;
pub mod upstream;
mod upstream_tls;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use monoio::net::TcpStream;
use rustls::ServerConfig;
use tracing::{debug, info, warn};

use crate::config::{ListenerProtocol, Timeouts};
use crate::http::request::Limits;
use crate::ops::access_log::AccessLog;
use crate::ops::metrics::{FailReason, WorkerMetrics};
use crate::ops::ratelimit::{LogLimiter, Verdict};
use crate::policy::routes::Routes;
use crate::proxy_header::inbound::ProxyIn;
use crate::proxy_header::ProxyVersion;
use crate::tls::cache;
use crate::worker::Shutdown;

pub use h2::{H2Limits, H2cPool};
pub use tls_conn::TlsConn;

/// How long a refused handshake may go on sending before its socket closes.
const HANDSHAKE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// What one worker knows about one listener. Built once per worker at startup; connections
/// share it through an `Rc` (never crosses threads).
pub struct ListenerCtx {
    pub name: String,
    /// This listener's position in its config generation: its index in `metrics`.
    pub index: usize,
    pub metrics: Rc<WorkerMetrics>,
    /// The worker's access log, when `[log] access` is on.
    pub access_log: Option<Rc<AccessLog>>,
    /// Bounds the worker's log lines about refused handshakes.
    pub failure_log: Rc<LogLimiter>,
    pub tls: Arc<ServerConfig>,
    /// Verified-chain cache settings; the header bytes of a known chain come from there.
    pub cache: crate::tls::cache::CacheConfig,
    /// Shared with the next generation's context when a reload keeps the upstream.
    pub pool: Rc<upstream::Pool>,
    /// `Host` for HTTP/1.0 requests that carry none: the upstream as configured.
    pub upstream_host: Vec<u8>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// Open connections per worker before accepting waits.
    pub max_connections: usize,
    /// Protocols a client may upgrade to (`Upgrade` tokens, lowercase), e.g. `websocket`.
    pub upgrade: Vec<String>,
    /// A tunnel with no byte in either direction this long is closed.
    pub tunnel_idle: std::time::Duration,
    /// A `client_ca` is set: a presented client certificate was verified against it.
    pub verifies_clients: bool,
    /// HTTP exchanges, or the stream relayed as it is (`tcp`).
    pub protocol: ListenerProtocol,
    /// The PROXY header a `tcp` listener sends first to the upstream.
    pub upstream_proxy_protocol: ProxyVersion,
    /// `upstream_protocol = "h2c"`: this worker's multiplexed connections to the upstream
    /// (every request goes there, whatever protocol the client speaks).
    pub h2c: Option<Rc<H2cPool>>,
    /// HTTP/2 settings for clients that negotiate `h2`.
    pub h2: H2Limits,
    /// Server names relayed to their own upstream without termination (spliced).
    pub passthrough: crate::sni::SniRoutes,
    /// Which sources must start with a PROXY header, and which versions are taken.
    pub proxy_in: ProxyIn,
    pub shutdown: Rc<Shutdown>,
    /// Set when a reload replaces this context (or closes its listener): long-lived HTTP/2
    /// connections then send GOAWAY, so their clients reconnect under the new policy.
    /// HTTP/1.1 connections go on (closing one between requests could race a request).
    pub retired: Rc<Shutdown>,
    /// The worker's keep-alive deadlines (shared by all its listeners).
    pub idle_clock: Rc<idle_clock::IdleClock>,
    /// The worker's turns for handshake cryptography (shared by all its listeners).
    pub handshake_turns: Rc<handshake_turns::HandshakeTurns>,
    /// `[[listener.site]]`s: the context a ClientHello naming one of them continues with.
    pub sites: Vec<Rc<ListenerCtx>>,
    /// For a listener with sites (and each of its sites): the name map, and which site this
    /// context is (0: the listener's own policy, the default site; `i + 1`: `sites[i]`).
    pub hosts: Option<(Rc<Hosts>, usize)>,
    /// A ClientHello without SNI, or naming no site or passthrough entry, is refused.
    pub strict_sni: bool,
    /// Per-path requirements; a route with its own upstream carries this worker's pool for it.
    pub routes: Routes<Option<Rc<RoutePool>>>,
}

/// A route's own upstream in one worker.
pub struct RoutePool {
    pub pool: Rc<upstream::Pool>,
    /// `Host` for HTTP/1.0 requests that carry none: the route's upstream as configured.
    pub host: Vec<u8>,
}

/// A listener's server names, shared by its contexts: which site a name belongs to.
#[derive(Debug)]
pub struct Hosts {
    pub names: crate::sni::SniMap<usize>,
}

impl Hosts {
    /// The site (0: default, `i + 1`: `sites[i]`) that serves `name`.
    pub fn site_of(&self, name: &str) -> usize {
        self.names.route(name).map_or(0, |i| i + 1)
    }
}

impl ListenerCtx {
    /// Whether the ClientHello must be read before choosing a TLS config: for passthrough
    /// names, sites, or strict SNI.
    pub(crate) fn picks_by_sni(&self) -> bool {
        !self.passthrough.is_empty() || !self.sites.is_empty() || self.strict_sni
    }

    /// The context a ClientHello's server name selects; `None` when strict SNI refuses it.
    pub(crate) fn for_server_name(self: &Rc<Self>, name: Option<&str>) -> Option<Rc<ListenerCtx>> {
        let site = name.and_then(|n| self.hosts.as_ref().and_then(|(h, _)| h.names.route(n)));
        match site {
            Some(&i) => self.sites.get(i).cloned(),
            None if self.strict_sni => None,
            None => Some(self.clone()),
        }
    }
}

/// Serves one accepted connection until it closes.
///
/// `socket_peer` is the address that connected. When the listener takes a PROXY header from
/// it, the header's source replaces it from here on, so everything downstream that names the
/// client (forwarding headers, access log, log lines, the PROXY header sent upstream) names
/// the one the load balancer accepted.
pub async fn serve(tcp: TcpStream, socket_peer: SocketAddr, ctx: Rc<ListenerCtx>) {
    let _open = Open::new(ctx.clone());
    // Boxed: the handshake's state (PROXY header, ClientHello, handshake and their timeouts)
    // is freed when the handshake ends, so an idle connection's task holds the exchange loop's
    // state only, not the larger of the two.
    let Some(Established {
        tls,
        h2,
        peer,
        local,
        ctx,
    }) = Box::pin(establish(tcp, socket_peer, ctx)).await
    else {
        return;
    };
    match ctx.protocol {
        // Boxed too (HTTP/2 and `tcp`): their state is larger than an idle HTTP/1.1
        // connection's, and inline it would set the size of every connection's task.
        ListenerProtocol::Http if h2 => serve_h2(tls, peer, local, ctx).await,
        ListenerProtocol::Http => session::Session::new(tls, peer, local, ctx).run().await,
        ListenerProtocol::Tcp => Box::pin(tcp::serve(tls, peer, local, ctx)).await,
    }
}

/// The HTTP/2 loop, boxed: its state is larger than an idle HTTP/1.1 connection's, and inline
/// it would set the size of every connection's task.
fn serve_h2(
    tls: TlsConn,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    ctx: Rc<ListenerCtx>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
    Box::pin(h2::serve(tls, peer, local, ctx))
}

/// A connection whose handshake succeeded, with the addresses that name its client and the
/// context its ClientHello chose.
struct Established {
    tls: TlsConn,
    /// The client negotiated HTTP/2 (ALPN `h2`).
    h2: bool,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    ctx: Rc<ListenerCtx>,
}

/// The PROXY header, the ClientHello and the TLS handshake; `None` when the connection ends
/// there (refused, relayed as it is, or timed out: counted and logged here).
async fn establish(
    tcp: TcpStream,
    socket_peer: SocketAddr,
    ctx: Rc<ListenerCtx>,
) -> Option<Established> {
    let started = std::time::Instant::now();
    let _ = tcp.set_nodelay(true);
    let deadline = monoio::time::Instant::now() + ctx.timeouts.handshake;
    let (peer, local) = if ctx.proxy_in.expected_from(socket_peer.ip()) {
        match monoio::time::timeout_at(deadline, read_proxy_header(&tcp, socket_peer, &ctx)).await {
            Ok(Some(addresses)) => addresses,
            Ok(None) => return None,
            Err(_) => {
                let reason = FailReason::ProxyHeader;
                ctx.metrics.handshake_failed(ctx.index, reason);
                log_refused(
                    &ctx,
                    socket_peer,
                    reason,
                    "no complete PROXY header in time",
                    None,
                );
                return None;
            }
        }
    } else {
        (socket_peer, None)
    };
    let (tcp, conn, ctx) = if !ctx.picks_by_sni() {
        match rustls::ServerConnection::new(ctx.tls.clone()) {
            Ok(c) => (tcp, c, ctx),
            Err(e) => {
                debug!(listener = %ctx.name, %peer, "TLS setup failed: {e}");
                return None;
            }
        }
    } else {
        // The ClientHello decides: relayed as it is (spliced), or terminated here with the
        // policy of the site it names.
        match monoio::time::timeout_at(deadline, passthrough::hello(tcp, peer, &ctx)).await {
            Ok(passthrough::Hello::Terminate(tcp, conn, site)) => (tcp, *conn, site),
            Ok(passthrough::Hello::Done) => return None,
            Err(_) => {
                ctx.metrics.handshake_failed(ctx.index, FailReason::Timeout);
                return None;
            }
        }
    };
    let mut tls = TlsConn::new(tcp, conn);
    // A client that does not take our bytes for as long as it may idle is gone for our purposes
    // (the same bound as a client stalling mid-body).
    tls.set_write_timeout(ctx.timeouts.keep_alive);
    let cache_before = cache::stats();
    let failed = match monoio::time::timeout_at(deadline, tls.handshake(&ctx.handshake_turns)).await
    {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some((FailReason::of_io(&e), e.to_string())),
        Err(_) => Some((
            FailReason::Timeout,
            "no finished handshake in time".to_owned(),
        )),
    };
    // The chain cache is consulted at most once per handshake, inside rustls' call to the
    // verifier; the worker's thread-local counts say whether it was a hit (refused chains
    // count too: they were looked up).
    let cache_after = cache::stats();
    if cache_after.hits > cache_before.hits {
        ctx.metrics.cert_cache(true);
    } else if cache_after.misses > cache_before.misses {
        ctx.metrics.cert_cache(false);
    }
    if let Some((reason, what)) = failed {
        ctx.metrics.handshake_failed(ctx.index, reason);
        log_refused(&ctx, peer, reason, &what, tls.rejected_leaf());
        if reason != FailReason::Timeout {
            // The alert is sent; a client may still be writing the rest of its flight (a
            // TLS 1.2 client writes Certificate, ClientKeyExchange, ChangeCipherSpec and
            // Finished one by one). Closing now would answer those with a reset that destroys
            // the alert before the client reads it, so it would report "broken pipe" instead
            // of why it was refused.
            tls.linger(HANDSHAKE_LINGER).await;
        }
        return None;
    }
    let resumed = tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let client_cert = tls.peer_certificates().is_some();
    ctx.metrics
        .handshake_done(ctx.index, resumed, client_cert, started.elapsed());
    debug!(
        listener = %ctx.name,
        %peer,
        handshake = ?tls.handshake_kind(),
        client_cert,
        "TLS connection established"
    );
    Some(Established {
        // Decided here, not in `serve`'s match: a guard that borrows `tls` there keeps a
        // second copy of it (1.3 KiB) in every connection's task.
        h2: tls.alpn_protocol() == Some(b"h2"),
        tls,
        peer,
        local,
        ctx,
    })
}

/// The client and local addresses a PROXY header names (the socket's own for v2 `LOCAL` and
/// v1 `UNKNOWN`); `None` when the connection is to be closed (counted and logged here).
async fn read_proxy_header(
    tcp: &TcpStream,
    socket_peer: SocketAddr,
    ctx: &ListenerCtx,
) -> Option<(SocketAddr, Option<SocketAddr>)> {
    match proxy_in::read(tcp, ctx.proxy_in.accept).await {
        Ok(received) => Some(match received.addresses() {
            Some((source, destination)) => (source, Some(destination)),
            None => (socket_peer, None),
        }),
        Err(proxy_in::Failure::Closed) => {
            ctx.metrics.handshake_failed(ctx.index, FailReason::Closed);
            None
        }
        Err(e) => {
            // Nothing is answered: whoever sent this does not speak the PROXY protocol, and a
            // TLS alert would mean as little to it as a close.
            let reason = FailReason::ProxyHeader;
            ctx.metrics.handshake_failed(ctx.index, reason);
            log_refused(ctx, socket_peer, reason, &e.to_string(), None);
            None
        }
    }
}

/// A new connection through `pool` (`ctx`'s, or a route's); `preface` goes first, before any
/// TLS. A failed TLS handshake is logged (rate-limited, with the reason): unlike a refused
/// connection, it is a configuration problem someone must fix (trust, name, expiry, client
/// certificate).
pub(crate) async fn connect_upstream(
    ctx: &ListenerCtx,
    pool: &upstream::Pool,
    preface: &[u8],
) -> Result<upstream::Upstream, upstream::ConnectError> {
    let res = pool.connect(ctx.timeouts.upstream_connect, preface).await;
    if let Err(e @ upstream::ConnectError::Tls(_)) = &res {
        if let Verdict::Log { suppressed_before } = ctx.failure_log.check(std::time::Instant::now())
        {
            if suppressed_before > 0 {
                info!("{}", ctx.failure_log.summary(suppressed_before));
            }
            warn!(listener = %ctx.name, upstream = %pool.addr(), "{e}");
        }
    }
    res
}

/// Counts a connection open for as long as it lives.
struct Open(Rc<ListenerCtx>);

impl Open {
    fn new(ctx: Rc<ListenerCtx>) -> Self {
        ctx.metrics.connection_opened(ctx.index);
        Open(ctx)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.metrics.connection_closed(self.0.index);
    }
}

/// One info line per refused handshake, with the reason, the client and the certificate it
/// presented; under a flood, at most a few per second per worker and a count of the rest.
fn log_refused(
    ctx: &ListenerCtx,
    peer: SocketAddr,
    reason: FailReason,
    what: &str,
    leaf: Option<[u8; 64]>,
) {
    let now = std::time::Instant::now();
    match ctx.failure_log.check(now) {
        Verdict::Suppress => {}
        Verdict::Log { suppressed_before } => {
            if suppressed_before > 0 {
                info!("{}", ctx.failure_log.summary(suppressed_before));
            }
            let sha256 = leaf.as_ref().and_then(|h| std::str::from_utf8(h).ok());
            info!(
                listener = %ctx.name,
                client = %peer,
                reason = reason.as_str(),
                client_cert_sha256 = sha256.unwrap_or("-"),
                "TLS handshake refused: {what}"
            );
        }
    }
}

#[cfg(all(test, feature = "demo"))]
#[path = "idle_memory_tests.rs"]
mod idle_memory_tests;

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener context with `tls` and `upstream` and defaults for the rest (also the idle
    /// memory tests').
    pub(super) fn test_context(tls: Arc<ServerConfig>, upstream: SocketAddr) -> Rc<ListenerCtx> {
        Rc::new(ListenerCtx {
            name: "test".into(),
            index: 0,
            metrics: Rc::new(
                crate::ops::metrics::Metrics::new()
                    .generation(&[], 1)
                    .pop()
                    .expect("one worker's metrics"),
            ),
            access_log: None,
            failure_log: Rc::new(LogLimiter::new(1)),
            tls,
            cache: crate::tls::cache::CacheConfig::new(0, std::time::Duration::from_secs(1)),
            pool: Rc::new(upstream::Pool::new(upstream, None)),
            upstream_host: Vec::new(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            max_connections: 1,
            upgrade: Vec::new(),
            tunnel_idle: std::time::Duration::from_secs(1),
            verifies_clients: false,
            protocol: ListenerProtocol::Http,
            upstream_proxy_protocol: ProxyVersion::Off,
            h2c: None,
            h2: H2Limits::default(),
            passthrough: crate::sni::SniRoutes::default(),
            sites: Vec::new(),
            hosts: None,
            strict_sni: false,
            routes: Routes::default(),
            proxy_in: ProxyIn::default(),
            shutdown: Rc::new(Shutdown::default()),
            retired: Rc::new(Shutdown::default()),
            idle_clock: Rc::default(),
            handshake_turns: Rc::default(),
        })
    }

    /// An idle keep-alive connection's whole state is its task's future. The per-request
    /// state (parsed heads, relay futures) is boxed per exchange; if it ever moves back inline,
    /// every idle connection grows by ~16 KiB, and this fails. (It is 1.9 KiB, the `Session`
    /// included; `idle_memory_tests` counts everything an idle connection holds.)
    #[test]
    fn idle_connection_state_stays_small() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let tcp = TcpStream::connect_addr(listener.local_addr().unwrap())
                .await
                .unwrap();
            let root = crate::pki::Ca::root("size test").unwrap();
            let cert = root.server_cert(&["localhost"]).unwrap();
            let config = Arc::new(
                ServerConfig::builder_with_provider(crate::tls::provider())
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_no_client_auth()
                    .with_single_cert(vec![cert.cert_der.clone()], cert.key_der.clone_key())
                    .unwrap(),
            );
            let ctx = test_context(config.clone(), "127.0.0.1:9".parse().unwrap());
            let tcp2 = TcpStream::connect_addr(listener.local_addr().unwrap())
                .await
                .unwrap();
            // The whole task's future too: the HTTP/2 and tcp loops are boxed, and nothing of
            // the handshake or a borrowed TlsConn may stay in it (2088 bytes; a `tls`
            // borrowed in a match guard made it 3424).
            let whole = serve(tcp2, "127.0.0.1:1".parse().unwrap(), ctx.clone());
            let size = std::mem::size_of_val(&whole);
            assert!(size <= 2304, "a connection's task future is {size} bytes");
            drop(whole);
            let tls = TlsConn::new(tcp, rustls::ServerConnection::new(config).unwrap());
            let session = session::Session::new(tls, "127.0.0.1:1".parse().unwrap(), None, ctx);
            let run = session.run();
            let size = std::mem::size_of_val(&run);
            assert!(size <= 2 * 1024, "a connection's future is {size} bytes");
        });
    }
}
