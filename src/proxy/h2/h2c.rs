//! HTTP/2 with prior knowledge to the upstream (`upstream_protocol = "h2c"`): a per-worker
//! pool of multiplexed connections, and one client stream forwarded as one upstream stream,
//! bodies and trailers relayed both ways as they come (gRPC: streaming calls, status in
//! trailers, cancellation as RST_STREAM).
//!
//! The pool belongs to one worker (`Rc`, `RefCell`): no locks of ours. A connection serves
//! streams until the upstream says it is full (then another is opened, up to
//! [`MAX_CONNECTIONS`]) or it fails (then it is dropped from the pool).

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderName, HeaderValue, Request, Response, Uri, Version};
use monoio::net::TcpStream;
use tracing::debug;

use super::body::{next_chunk, send_all, RecvFailed, SendFailed};
use super::{Conn, Progress};
use crate::http::h2::{upstream_fields, Forwarding};
use crate::proxy::error::{ClientError, ProxyError, UpstreamError};
use crate::proxy::upstream::ConnectError;
use crate::proxy::ListenerCtx;

/// Connections per worker to one h2c upstream; each carries as many streams as the upstream
/// allows (gRPC servers allow 100 or more).
const MAX_CONNECTIONS: usize = 8;

pub struct H2cPool {
    addr: SocketAddr,
    conns: RefCell<Vec<SendRequest<Bytes>>>,
}

impl H2cPool {
    pub fn new(addr: SocketAddr) -> Self {
        H2cPool {
            addr,
            conns: RefCell::new(Vec::new()),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A connection ready for one more stream: a pooled one with room, else a new one (while
    /// under the cap), else the first to get room.
    async fn sender(&self, ctx: &ListenerCtx) -> Result<SendRequest<Bytes>, UpstreamError> {
        if let Some(ready) = self.pooled() {
            return ready;
        }
        let limit = ctx.timeouts.upstream_connect;
        let sender = monoio::time::timeout(limit, self.connect(ctx))
            .await
            .map_err(|_| UpstreamError::Connect(ConnectError::Timeout(limit)))??;
        self.conns.borrow_mut().push(sender.clone());
        sender.ready().await.map_err(UpstreamError::H2)
    }

    /// Opens a stream for `request` (`end`: no body follows) on a pooled or new connection.
    pub(in crate::proxy) async fn open(
        &self,
        ctx: &ListenerCtx,
        request: Request<()>,
        end: bool,
    ) -> Result<(h2::client::ResponseFuture, SendStream<Bytes>), UpstreamError> {
        let mut sender = self.sender(ctx).await?;
        sender.send_request(request, end).map_err(UpstreamError::H2)
    }

    /// A pooled connection with room for a stream now; failed ones leave the pool. `None`
    /// when a new connection may be opened.
    fn pooled(&self) -> Option<Result<SendRequest<Bytes>, UpstreamError>> {
        let mut conns = self.conns.borrow_mut();
        let mut i = 0;
        while i < conns.len() {
            let mut candidate = conns[i].clone();
            // A look, not a wait: a full connection is passed over (no wake-up needed).
            let mut look = std::task::Context::from_waker(std::task::Waker::noop());
            match candidate.poll_ready(&mut look) {
                Poll::Ready(Ok(())) => return Some(Ok(candidate)),
                // Closed, or GOAWAY: gone from the pool.
                Poll::Ready(Err(_)) => {
                    conns.swap_remove(i);
                }
                Poll::Pending => i += 1,
            }
        }
        // All full and at the cap: the stream queues on the first (h2 opens it when the
        // upstream's stream limit allows).
        (conns.len() >= MAX_CONNECTIONS).then(|| Ok(conns[0].clone()))
    }

    async fn connect(&self, ctx: &ListenerCtx) -> Result<SendRequest<Bytes>, UpstreamError> {
        let tcp = TcpStream::connect_addr(self.addr)
            .await
            .map_err(|e| UpstreamError::Connect(ConnectError::Tcp(e)))?;
        let _ = tcp.set_nodelay(true);
        let io = tcp
            .try_into_poll_io()
            .map_err(|(e, _)| UpstreamError::Connect(ConnectError::Tcp(e)))?;
        let limits = ctx.h2;
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(limits.initial_window)
            .initial_connection_window_size(limits.connection_window)
            .max_header_list_size(limits.max_header_list_bytes)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(UpstreamError::H2)?;
        let addr = self.addr;
        monoio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(upstream = %addr, "h2c connection ended: {e}");
            }
        });
        Ok(sender)
    }
}

/// Forwards one stream to the h2c upstream and relays the answer. `target` is the normal form
/// of the path when routes normalized it.
pub(super) async fn forward(
    pool: &H2cPool,
    target: Option<&[u8]>,
    parts: &http::request::Parts,
    body: &mut RecvStream,
    respond: &mut SendResponse<Bytes>,
    conn: &Conn,
    progress: &mut Progress,
) -> Result<(), ProxyError> {
    let ctx = &conn.ctx;
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&ctx.upstream_host).into_owned());
    let path = match target {
        Some(t) => String::from_utf8_lossy(t).into_owned(),
        None => parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
    };
    let uri = Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query(path.as_str())
        .build()
        .map_err(|_| ClientError::Malformed(crate::http::h2::Malformed::RequestLine))?;
    let mut request = Request::new(());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_2;
    let headers = request.headers_mut();
    let mut scratch = Vec::new();
    let mut bad = false;
    let fields = super::forward::field_list(&parts.headers);
    upstream_fields(
        parts.uri.authority().map(|a| a.as_str().as_bytes()),
        fields.iter().copied(),
        &Forwarding {
            client_addr: &conn.client_addr,
            forwarded: &conn.forwarded,
        },
        &mut scratch,
        |name, value| match (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => bad = true,
        },
    )
    .map_err(ClientError::Malformed)?;
    if bad {
        return Err(ClientError::Malformed(crate::http::h2::Malformed::Value).into());
    }
    for (name, value) in &conn.identity {
        headers.append(name.clone(), value.clone());
    }

    let end = body.is_end_stream();
    let (response, mut up_send) = pool.open(ctx, request, end).await?;
    let started = monoio::time::Instant::now();
    // Streams may idle as long as a tunnel may (a gRPC stream waits for messages).
    let stall = ctx.timeouts.tunnel_idle;
    let mut bytes_in = 0u64;
    let result = {
        let upload = pin!(async {
            if end {
                return Ok(());
            }
            relay(body, &mut up_send, stall, &mut bytes_in, Side::Client).await
        });
        let download = pin!(async {
            // A client that cancels while the app thinks must cancel the app's stream too.
            let response = monoio::select! {
                r = monoio::time::timeout(ctx.timeouts.upstream_response, response) => r
                    .map_err(|_| UpstreamError::Timeout)?
                    .map_err(UpstreamError::H2)?,
                r = poll_fn(|cx| respond.poll_reset(cx)) => {
                    return Err(ClientError::Stream(reset(r)).into());
                }
            };
            progress.upstream = Some(started.elapsed());
            let (head, mut up_body) = response.into_parts();
            progress.status = head.status.as_u16();
            let mut out = Response::from_parts(head, ());
            // Connection-specific fields cannot be in an HTTP/2 response `h2` accepted.
            out.headers_mut().remove(http::header::CONNECTION);
            let mut send = respond
                .send_response(out, up_body.is_end_stream())
                .map_err(ClientError::Stream)?;
            progress.responded = true;
            if up_body.is_end_stream() {
                return Ok(());
            }
            relay(
                &mut up_body,
                &mut send,
                stall,
                &mut progress.bytes_out,
                Side::Upstream,
            )
            .await
        });
        both(upload, download).await
    };
    progress.bytes_in = bytes_in;
    result
}

/// Which side a relay reads from (for whose fault a failure is).
#[derive(Clone, Copy)]
enum Side {
    Client,
    Upstream,
}

/// Relays a body, then its trailers (or the end of the stream), from `from` to `to`.
async fn relay(
    from: &mut RecvStream,
    to: &mut SendStream<Bytes>,
    stall: Duration,
    count: &mut u64,
    side: Side,
) -> Result<(), ProxyError> {
    let read_failed = |e: RecvFailed| -> ProxyError {
        match (side, e) {
            (Side::Client, RecvFailed::Stream(e)) => ClientError::Stream(e).into(),
            (Side::Client, RecvFailed::Stalled) => ClientError::BodyTimeout.into(),
            (Side::Upstream, RecvFailed::Stream(e)) => UpstreamError::H2(e).into(),
            (Side::Upstream, RecvFailed::Stalled) => UpstreamError::BodyTimeout.into(),
        }
    };
    let write_failed = |e: SendFailed| -> ProxyError {
        match (side, e) {
            (Side::Client, SendFailed::Stream(e)) => UpstreamError::H2(e).into(),
            (Side::Client, SendFailed::Stalled) => UpstreamError::WriteStalled.into(),
            (Side::Upstream, SendFailed::Stream(e)) => ClientError::Stream(e).into(),
            (Side::Upstream, SendFailed::Stalled) => ClientError::BodyTimeout.into(),
        }
    };
    // While waiting on one side, the other may reset its stream (a gRPC client cancels, the
    // app gives up): that ends the relay at once, so the cancel reaches the side still waiting.
    loop {
        let next = monoio::select! {
            r = next_chunk(from, stall) => r.map_err(read_failed)?,
            r = poll_fn(|cx| to.poll_reset(cx)) => {
                return Err(write_failed(SendFailed::Stream(reset(r))));
            }
        };
        let Some(chunk) = next else { break };
        *count += chunk.len() as u64;
        send_all(to, chunk, false, stall)
            .await
            .map_err(write_failed)?;
    }
    let trailers = monoio::select! {
        r = poll_fn(|cx| from.poll_trailers(cx)) => {
            r.map_err(|e| read_failed(RecvFailed::Stream(e)))?
        }
        r = poll_fn(|cx| to.poll_reset(cx)) => {
            return Err(write_failed(SendFailed::Stream(reset(r))));
        }
    };
    match trailers {
        Some(trailers) => to.send_trailers(trailers),
        None => to.send_data(Bytes::new(), true),
    }
    .map_err(|e| write_failed(SendFailed::Stream(e)))
}

/// The error a peer's RST_STREAM stands for.
fn reset(polled: Result<h2::Reason, h2::Error>) -> h2::Error {
    polled.map_or_else(|e| e, h2::Error::from)
}

/// Runs both directions until both are done; the first failure ends both (dropping the
/// streams resets them: the client's cancel reaches the upstream as RST_STREAM).
async fn both<A, B>(a: A, b: B) -> Result<(), ProxyError>
where
    A: Future<Output = Result<(), ProxyError>>,
    B: Future<Output = Result<(), ProxyError>>,
{
    let mut a = pin!(a);
    let mut b = pin!(b);
    let (mut a_done, mut b_done) = (false, false);
    poll_fn(|cx| {
        if !a_done {
            if let Poll::Ready(r) = a.as_mut().poll(cx) {
                r?;
                a_done = true;
            }
        }
        if !b_done {
            if let Poll::Ready(r) = b.as_mut().poll(cx) {
                r?;
                b_done = true;
            }
        }
        if a_done && b_done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
}
