//! The HTTP/2 exchange loop of one TLS connection, beside the HTTP/1.1 one (`session`): the
//! `h2` crate frames, decodes HPACK and keeps flow control; this loop accepts streams and
//! gives each a task of its own (the worker's, like every task here) that forwards it.
//!
//! Each stream goes to the upstream the listener names, over HTTP/1.1 (`forward`, through the
//! same pool and the same head rules as HTTP/1.1 clients) or h2c (`h2c`, multiplexed). The
//! connection's identity bytes are prepared once, here, and shared by its streams.
//!
//! Abuse is bounded by `h2` and by the limits set here: concurrent streams, the header list
//! size (HPACK bombs and CONTINUATION floods end at it), windows, resets a client may cause
//! (rapid reset, CVE-2023-44487: `h2` answers a client that keeps resetting with GOAWAY
//! ENHANCE_YOUR_CALM), small-DATA-frame budgets; idle connections and shutdowns end with
//! GOAWAY, and open streams get `shutdown_grace` to finish.

mod body;
mod forward;
mod h2c;
mod tls_io;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant as StdInstant, SystemTime};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::Reason;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use monoio::time::Instant;
use tracing::debug;

pub(super) use body::{next_chunk, send_all, RecvFailed, SendFailed};
pub use h2c::H2cPool;

use super::error::{effect, upstream_kind, ClientError, Effect, ProxyError};
use super::tally::ConnInfo;
use super::upstream::Parked;
use super::{admit, ListenerCtx, TlsConn};
use crate::ops::access_log::AccessRecord;
use crate::proxy_header::ProxyVersion;
use crate::tls::cache;

/// `[limits]` for HTTP/2 clients (see `config::Limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Limits {
    pub max_concurrent_streams: u32,
    pub max_header_list_bytes: u32,
    pub initial_window: u32,
    pub connection_window: u32,
}

impl Default for H2Limits {
    fn default() -> Self {
        let l = crate::config::Limits::default();
        H2Limits {
            max_concurrent_streams: l.h2_max_concurrent_streams,
            max_header_list_bytes: l.h2_max_header_list_bytes,
            initial_window: l.h2_initial_window,
            connection_window: l.h2_connection_window,
        }
    }
}

/// How long a closed connection may go on sending before its socket closes (see
/// `tls_io::linger`).
const LINGER: Duration = Duration::from_secs(2);
/// Largest frame payload we accept and send (the protocol's default; larger frames save
/// little and let one frame hold a stream's whole window).
const MAX_FRAME: u32 = 16 * 1024;
/// Locally reset streams a client may cause before GOAWAY (malformed requests, our resets):
/// a client that makes us reset in a loop is cut off like a rapid-reset client.
const MAX_LOCAL_RESETS: usize = 200;
/// Streams the client may cancel before being cut off, beyond one per stream it let finish:
/// gRPC clients cancel calls as a matter of course, but a client that cancels nearly every
/// stream it opens (rapid reset, CVE-2023-44487) makes us start work it never takes. `h2`
/// itself only bounds resets of streams not yet accepted; ours are accepted at once.
const RESET_ALLOWANCE: u32 = 100;

/// What every stream of one connection shares: made once, after the handshake.
pub(super) struct Conn {
    pub(super) ctx: Rc<ListenerCtx>,
    pub(super) peer: SocketAddr,
    pub(super) client_addr: Vec<u8>,
    pub(super) forwarded: Vec<u8>,
    /// The identity header block (`X-Forwarded-Client-Cert: …\r\n`, and the other formats),
    /// as HTTP/1.1 heads carry it.
    pub(super) xfcc_line: Option<Rc<[u8]>>,
    /// The same block as HTTP/2 fields, for h2c upstreams.
    pub(super) identity: Vec<(HeaderName, HeaderValue)>,
    pub(super) route_verdicts: Option<Box<[bool]>>,
    pub(super) info: Option<Box<ConnInfo>>,
    /// With `upstream_proxy_protocol`: this client's PROXY header, and its own idle upstream
    /// connections (never shared with another client, see `session::Private`).
    pub(super) preface: Option<Vec<u8>>,
    pub(super) private_idle: RefCell<Vec<Parked>>,
    /// Streams the client reset (or abandoned) before their end, and streams that ended.
    cancelled: Cell<u32>,
    finished: Cell<u32>,
}

impl Conn {
    fn new(
        tls: &TlsConn,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        ctx: Rc<ListenerCtx>,
    ) -> Self {
        let xfcc_line = tls
            .peer_certificates()
            .and_then(|chain| cache::header_for(&ctx.cache, chain));
        let identity = xfcc_line
            .as_deref()
            .map(identity_fields)
            .unwrap_or_default();
        let route_verdicts =
            admit::route_verdicts(&ctx, tls.peer_certificates().and_then(|c| c.first()));
        let info = ctx
            .access_log
            .is_some()
            .then(|| Box::new(ConnInfo::of(tls)));
        let preface = (ctx.upstream_proxy_protocol != ProxyVersion::Off)
            .then(|| super::tcp::preface(tls, (peer, local), &ctx).ok())
            .flatten();
        Conn {
            client_addr: peer.ip().to_canonical().to_string().into_bytes(),
            forwarded: crate::http::request::forwarded_element(peer.ip()),
            xfcc_line,
            identity,
            route_verdicts,
            info,
            preface,
            private_idle: RefCell::new(Vec::new()),
            cancelled: Cell::new(0),
            finished: Cell::new(0),
            peer,
            ctx,
        }
    }

    /// Whether the client cancels far more streams than it lets finish (rapid reset).
    fn resets_too_often(&self) -> bool {
        self.cancelled.get() > RESET_ALLOWANCE.saturating_add(self.finished.get())
    }

    /// Counts one finished stream and writes its access-log line (as `session` does for an
    /// HTTP/1.1 exchange).
    pub(super) fn finish(&self, done: &Done<'_>) {
        if done.status == 0 {
            return;
        }
        let ctx = &self.ctx;
        let duration = done.started.elapsed();
        ctx.metrics.request_done(ctx.index, done.status, duration);
        if let (Some(log), Some(info)) = (&ctx.access_log, &self.info) {
            let record = AccessRecord {
                ts: SystemTime::now(),
                listener: &ctx.name,
                client: self.peer,
                tls_version: info.tls_version,
                resumed: info.resumed,
                client_cert_sha256: info.sha256.as_deref(),
                client_cert_subject: info.subject.as_deref(),
                method: done.method,
                path: done.path,
                status: done.status,
                bytes_in: done.bytes_in,
                bytes_out: done.bytes_out,
                duration,
                upstream: done.upstream,
            };
            let _ = log.log(&record);
        }
    }
}

/// What the stream did so far.
#[derive(Default)]
pub(super) struct Progress {
    pub(super) status: u16,
    /// A response (head) went to the client: a failure now can only reset the stream.
    pub(super) responded: bool,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    pub(super) upstream: Option<Duration>,
}

/// What one stream did, for the metrics and the access log.
pub(super) struct Done<'a> {
    pub(super) started: StdInstant,
    pub(super) method: &'a [u8],
    pub(super) path: &'a [u8],
    /// The status sent (0: none, the stream was reset).
    pub(super) status: u16,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    pub(super) upstream: Option<Duration>,
}

/// The prebuilt identity block as HTTP/2 fields (names lowercased by `HeaderName`). Made once
/// per connection; a line that is not a valid field (it never is) is left out.
pub(super) fn identity_fields(block: &[u8]) -> Vec<(HeaderName, HeaderValue)> {
    block
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|b| *b == b':')?;
            let name = HeaderName::from_bytes(&line[..colon]).ok()?;
            let value = HeaderValue::from_bytes(crate::http::trim_ows(&line[colon + 1..])).ok()?;
            Some((name, value))
        })
        .collect()
}

/// Serves one connection that negotiated `h2` until it closes.
pub(super) async fn serve(
    tls: TlsConn,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    ctx: Rc<ListenerCtx>,
) {
    ctx.metrics.h2_connection(ctx.index);
    let conn = Rc::new(Conn::new(&tls, peer, local, ctx.clone()));
    let (tcp, rustls, ahead) = tls.into_parts();
    let tcp = match tcp.try_into_poll_io() {
        Ok(tcp) => tcp,
        Err((e, _)) => {
            debug!(listener = %ctx.name, %peer, "cannot switch the socket to poll I/O: {e}");
            return;
        }
    };
    let left = Rc::new(Cell::new(None));
    let io = tls_io::TlsIo::new(tcp, rustls, ahead, left.clone());
    let limits = ctx.h2;
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_list_bytes)
        .initial_window_size(limits.initial_window)
        .initial_connection_window_size(limits.connection_window)
        .max_frame_size(MAX_FRAME)
        .max_local_error_reset_streams(Some(MAX_LOCAL_RESETS))
        // What a slow reader can make us hold per stream beyond its window.
        .max_send_buffer_size(256 * 1024);
    let handshake = builder.handshake::<_, Bytes>(io);
    let mut h2 = match monoio::time::timeout(ctx.timeouts.handshake, handshake).await {
        Ok(Ok(h2)) => h2,
        Ok(Err(e)) => {
            debug!(listener = %ctx.name, %peer, "HTTP/2 preface failed: {e}");
            return;
        }
        Err(_) => {
            debug!(listener = %ctx.name, %peer, "no HTTP/2 preface in time");
            return;
        }
    };
    let open = Rc::new(Cell::new(0usize));
    let shutdown = &ctx.shutdown;
    // Set once GOAWAY went out: by then open streams must have finished.
    let mut closing: Option<Instant> = None;
    let mut idle_since = Instant::now();
    loop {
        let far = Instant::now() + Duration::from_secs(86_400);
        // Armed even while streams are open: their tasks end without waking this loop, so
        // the check happens when it fires (an idle connection lasts at most twice
        // `keep_alive`).
        let idle_at = if closing.is_none() {
            idle_since + ctx.timeouts.keep_alive
        } else {
            far
        };
        let give_up_at = closing.unwrap_or(far);
        let watch_shutdown = closing.is_none();
        let stop = async {
            if watch_shutdown {
                monoio::select! {
                    _ = shutdown.wait() => {},
                    _ = ctx.retired.wait() => {},
                }
            } else {
                std::future::pending::<()>().await
            }
        };
        monoio::select! {
            next = h2.accept() => match next {
                Some(Ok((request, respond))) => {
                    if conn.resets_too_often() {
                        debug!(listener = %ctx.name, %peer, "HTTP/2 client resets streams too often: GOAWAY");
                        ctx.metrics.h2_abuse(ctx.index);
                        h2.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                        let _ = monoio::time::timeout(Duration::from_millis(100), h2.accept()).await;
                        break;
                    }
                    open.set(open.get() + 1);
                    let guard = OpenStream(open.clone());
                    let conn = conn.clone();
                    monoio::spawn(async move {
                        let _guard = guard;
                        stream(request, respond, conn).await;
                    });
                }
                Some(Err(e)) => {
                    debug!(listener = %ctx.name, %peer, "HTTP/2 connection ended: {e}");
                    break;
                }
                None => break,
            },
            _ = stop => {
                h2.graceful_shutdown();
                closing = Some(Instant::now() + ctx.timeouts.shutdown_grace);
            },
            _ = monoio::time::sleep_until(idle_at) => {
                if open.get() == 0 {
                    h2.graceful_shutdown();
                    closing = Some(Instant::now() + ctx.timeouts.shutdown_grace);
                } else {
                    idle_since = Instant::now();
                }
            },
            _ = monoio::time::sleep_until(give_up_at) => {
                h2.abrupt_shutdown(Reason::NO_ERROR);
                // One more turn to write the GOAWAY, bounded.
                let _ = monoio::time::timeout(Duration::from_millis(100), h2.accept()).await;
                break;
            },
        }
        if open.get() == 0 {
            idle_since = Instant::now();
        }
    }
    drop(h2);
    if let Some(tcp) = left.take() {
        tls_io::linger(tcp, LINGER).await;
    }
}

/// Counts a stream open for as long as its task lives.
struct OpenStream(Rc<Cell<usize>>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// One stream: checked like an HTTP/1.1 request, then forwarded to the listener's upstream
/// (a route's own upstream speaks HTTP/1.1) by the protocol it speaks; counted and logged.
async fn stream(
    request: http::Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    conn: Rc<Conn>,
) {
    let started = StdInstant::now();
    let (parts, mut body) = request.into_parts();
    let mut progress = Progress::default();
    // The exchanges are boxed: a task is spawned per stream, and spawning moves the whole
    // future, whose size is that of its largest state (9.5 KiB unboxed, measured).
    let result = match forward::prepare(&parts, body.is_end_stream(), &conn) {
        Ok(prepared) => match &conn.ctx.h2c {
            Some(pool) if prepared.admitted.route.is_none() => {
                let target = prepared.admitted.target.as_deref();
                Box::pin(h2c::forward(
                    pool,
                    target,
                    &parts,
                    &mut body,
                    &mut respond,
                    &conn,
                    &mut progress,
                ))
                .await
            }
            _ => {
                let exchange =
                    forward::forward(prepared, &mut body, &mut respond, &conn, &mut progress);
                Box::pin(exchange).await
            }
        },
        Err(e) => Err(e),
    };
    match &result {
        Err(ProxyError::Client(ClientError::Stream(_))) => {
            conn.cancelled.set(conn.cancelled.get().saturating_add(1));
        }
        _ => conn.finished.set(conn.finished.get().saturating_add(1)),
    }
    if let Err(e) = &result {
        let status = fail(&conn, &mut respond, e, progress.responded);
        if !progress.responded {
            progress.status = status;
        }
    }
    let path = parts.uri.path_and_query().map_or("", |p| p.as_str());
    conn.finish(&Done {
        started,
        method: parts.method.as_str().as_bytes(),
        path: path.as_bytes(),
        status: progress.status,
        bytes_in: progress.bytes_in,
        bytes_out: progress.bytes_out,
        upstream: progress.upstream,
    });
}

/// Tells the client what went wrong on one stream (see `effect`, the one mapping for both
/// protocols); returns the status sent (0: reset instead).
pub(super) fn fail(
    conn: &Conn,
    respond: &mut SendResponse<Bytes>,
    e: &ProxyError,
    started: bool,
) -> u16 {
    debug!(listener = %conn.ctx.name, peer = %conn.peer, "HTTP/2 stream failed: {e}");
    if let Some(kind) = upstream_kind(e) {
        conn.ctx.metrics.upstream_error(conn.ctx.index, kind);
    }
    let (status, body): (u16, &[u8]) = match effect(e, started) {
        Effect::Respond(status) => (status, b""),
        Effect::Forbidden(reason) => (403, reason.as_bytes()),
        Effect::Malformed => {
            respond.send_reset(Reason::PROTOCOL_ERROR);
            return 0;
        }
        Effect::Close => {
            let reason = match e {
                ProxyError::Client(_) => Reason::CANCEL,
                ProxyError::Upstream(_) => Reason::INTERNAL_ERROR,
            };
            respond.send_reset(reason);
            return 0;
        }
    };
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    response.headers_mut().insert(
        http::header::CONTENT_LENGTH,
        HeaderValue::from(body.len() as u64),
    );
    if body.is_empty() {
        let _ = respond.send_response(response, true);
    } else if let Ok(mut send) = respond.send_response(response, false) {
        let _ = send.send_data(Bytes::copy_from_slice(body), true);
    }
    status
}
