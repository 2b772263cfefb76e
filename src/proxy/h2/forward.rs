//! One HTTP/2 stream forwarded to an HTTP/1.1 upstream over the listener's keep-alive pool.
//!
//! The request becomes the HTTP/1.1 head it stands for (`http::h2::request_head`), which then
//! passes the same parser, admission (sites, routes) and rewriting as a request that came in
//! over HTTP/1.1. The body is sent as DATA arrives (chunked when no length was declared) while
//! the answer is read at the same time, so an app that answers early is heard; the response
//! is mapped back (`ResponseHead::end_to_end`) and its body de-chunked into DATA frames.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use monoio::io::AsyncWriteRent;
use monoio::time::Instant;
use smallvec::SmallVec;

use super::body::{next_chunk, send_all, RecvFailed, SendFailed};
use super::{Conn, Progress};
use crate::http::chunked::write_chunk_header;
use crate::http::h2::{request_head, Body, Malformed, Request};
use crate::http::request::{parse_request, Inject, RequestBody};
use crate::http::response::{parse_response, ResponseHead};
use crate::http::{BodyFramer, Parse};
use crate::proxy::admit;
use crate::proxy::buffers::PooledBuf;
use crate::proxy::error::{ClientError, ProxyError, UpstreamError};
use crate::proxy::upstream::{read_up, write_up, ConnectError, Parked, Pool, Upstream};

/// After a write to the app failed, how long its answer may still take to arrive (see
/// `session::EARLY_ANSWER_GRACE`).
const EARLY_ANSWER_GRACE: Duration = Duration::from_millis(250);
/// Once the answer is in, how long the rest of the request may take to go out before the
/// client is told to stop sending (RST_STREAM NO_ERROR) and the connection is not reused.
const UPLOAD_SETTLE: Duration = Duration::from_millis(50);

/// An HTTP/2 request as the HTTP/1.1 core sees it: the head it stands for, parsed, and what
/// admission (sites, routes) decided. Both upstream protocols start here, so an h2c upstream
/// gets the same checks.
pub(super) struct Prepared {
    pub(super) synth: Vec<u8>,
    pub(super) head: crate::http::RequestHead,
    pub(super) admitted: admit::Admitted,
}

/// A request's fields as byte pairs, in order, on the stack for ordinary requests (the pure
/// translation walks them more than once).
pub(super) fn field_list(headers: &http::HeaderMap) -> SmallVec<[(&[u8], &[u8]); 24]> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
        .collect()
}

pub(super) fn prepare(
    parts: &http::request::Parts,
    end_stream: bool,
    conn: &Conn,
) -> Result<Prepared, ProxyError> {
    let ctx = &conn.ctx;
    let mut synth = Vec::with_capacity(256);
    let fields = field_list(&parts.headers);
    let request = Request {
        method: parts.method.as_str().as_bytes(),
        path: parts
            .uri
            .path_and_query()
            .map_or(&b""[..], |p| p.as_str().as_bytes()),
        authority: parts.uri.authority().map(|a| a.as_str().as_bytes()),
        fields: fields.iter().copied(),
        body: if end_stream {
            Body::None
        } else {
            Body::Streamed
        },
    };
    request_head(request, &mut synth).map_err(ClientError::Malformed)?;
    let head = match parse_request(&synth, &ctx.limits) {
        Ok(Parse::Complete(head)) if head.head_len() == synth.len() => head,
        // Anything else means a byte ended the head early or began another: smuggling.
        Ok(_) => return Err(ClientError::Malformed(Malformed::RequestLine).into()),
        Err(e) => return Err(ClientError::BadHead(e).into()),
    };
    let admitted = admit::admit(ctx, &head, &synth, conn.route_verdicts.as_deref())?;
    Ok(Prepared {
        synth,
        head,
        admitted,
    })
}

pub(super) async fn forward(
    prepared: Prepared,
    body: &mut RecvStream,
    respond: &mut SendResponse<Bytes>,
    conn: &Conn,
    progress: &mut Progress,
) -> Result<(), ProxyError> {
    let ctx = &conn.ctx;
    let Prepared {
        synth,
        head,
        admitted,
    } = prepared;
    let route = admitted.route.as_deref();
    let mut out = PooledBuf::take();
    let inject = Inject {
        client_addr: &conn.client_addr,
        forwarded: &conn.forwarded,
        xfcc_line: conn.xfcc_line.as_deref(),
        upstream_host: route.map_or(&ctx.upstream_host, |r| &r.host),
        upgrade: false,
        target: admitted.target.as_deref(),
    };
    head.write_upstream(&synth, &inject, &mut out);
    let chunked = *head.body() == RequestBody::Chunked;
    let is_head = head.is_head();
    let pool = route.map(|r| &*r.pool);

    let mut up = acquire(conn, pool, false).await?;
    let sent_at = Instant::now();
    // A pooled connection the app closed while idle fails before it answers: one retry on a
    // fresh one (as on HTTP/1.1: idempotent methods only), only while no body byte was taken
    // from the client (they cannot be resent) and the app sent nothing back.
    let idempotent = matches!(
        head.method(&synth),
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    );
    let answer = loop {
        let mut upload = Upload {
            head: Some(out.to_vec()),
            body_taken: false,
        };
        let result = send_and_answer(&mut up, &mut upload, body, chunked, is_head, conn).await;
        match result {
            Err(ProxyError::Upstream(e))
                if up.reused && idempotent && !upload.body_taken && retryable(&e) =>
            {
                up = acquire(conn, pool, true).await?;
            }
            other => break other?,
        }
    };
    let Answered {
        head: resp,
        mut upbuf,
        upload_done,
    } = answer;
    progress.upstream = Some(sent_at.elapsed());
    progress.status = resp.status();

    let mut response = Response::new(());
    *response.status_mut() = StatusCode::from_u16(resp.status())
        .map_err(|_| UpstreamError::BadHead(crate::http::HttpError::UpstreamMalformed))?;
    for (name, value) in resp.end_to_end(&upbuf) {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        else {
            continue;
        };
        response.headers_mut().append(name, value);
    }
    if let Some(n) = resp.content_length() {
        response
            .headers_mut()
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    let mut framer = BodyFramer::response(*resp.body(), true);
    let head_len = resp.head_len();
    let no_body = framer.is_done() || is_head;
    let mut send = respond
        .send_response(response, no_body)
        .map_err(ClientError::Stream)?;
    progress.responded = true;
    upbuf.drain(..head_len);

    let mut leftover = false;
    if !no_body {
        let stall = ctx.timeouts.keep_alive;
        let mut scratch = Vec::new();
        loop {
            if !upbuf.is_empty() {
                scratch.clear();
                let adv = framer
                    .advance(&upbuf, &mut scratch)
                    .map_err(UpstreamError::BadBody)?;
                let mut chunk = Vec::with_capacity(scratch.len() + adv.forward.len());
                chunk.extend_from_slice(&scratch);
                chunk.extend_from_slice(&upbuf[adv.forward.clone()]);
                upbuf.drain(..adv.consumed);
                progress.bytes_out += chunk.len() as u64;
                if adv.done {
                    leftover = !upbuf.is_empty();
                    deliver(&mut send, Bytes::from(chunk), true, stall).await?;
                    break;
                }
                if !chunk.is_empty() {
                    deliver(&mut send, Bytes::from(chunk), false, stall).await?;
                }
                if !adv.needs_input() {
                    continue;
                }
            }
            let deadline = Instant::now() + ctx.timeouts.upstream_response;
            let (res, buf) = read_up(&mut up.rd, upbuf, Some(deadline)).await;
            let Some(buf) = buf else {
                return Err(UpstreamError::BodyTimeout.into());
            };
            upbuf = buf;
            if res? == 0 {
                framer.eof().map_err(|_| UpstreamError::Truncated)?;
                deliver(&mut send, Bytes::new(), true, stall).await?;
                leftover = true;
                break;
            }
        }
    }
    // `None`: the app answered before the whole body was sent. The connection holds half a
    // request and is not reused, and the client is told to stop sending (RFC 9113 §8.1) by
    // dropping the stream's handles: `h2` then sends RST_STREAM NO_ERROR after the queued
    // response. An explicit `send_reset` would clear that queue, and the client would get the
    // reset without the answer.
    if let Some(bytes_in) = upload_done {
        progress.bytes_in = bytes_in;
        if !leftover && resp.upstream_keep_alive() {
            park(conn, pool, up);
        }
    }
    Ok(())
}

/// A failure of a stale pooled connection: closed or reset before any byte of an answer
/// (the read side reports a partial answer as a bad head instead).
fn retryable(e: &UpstreamError) -> bool {
    matches!(e, UpstreamError::Io(_) | UpstreamError::ClosedEarly)
}

async fn deliver(
    send: &mut h2::SendStream<Bytes>,
    data: Bytes,
    end: bool,
    stall: Duration,
) -> Result<(), ProxyError> {
    send_all(send, data, end, stall).await.map_err(|e| match e {
        SendFailed::Stream(e) => ClientError::Stream(e).into(),
        SendFailed::Stalled => ClientError::BodyTimeout.into(),
    })
}

/// A connection from `pool` (the listener's, or a route's), or this client's own when the
/// listener sends a PROXY header (see `Conn::preface`).
async fn acquire(
    conn: &Conn,
    route: Option<&Pool>,
    fresh: bool,
) -> Result<Upstream, UpstreamError> {
    let ctx = &conn.ctx;
    if route.is_none() && ctx.upstream_proxy_protocol != crate::proxy_header::ProxyVersion::Off {
        if !fresh {
            while let Some(parked) = conn.private_idle.borrow_mut().pop() {
                if let Some(up) = parked.resume() {
                    return Ok(up);
                }
            }
        }
        let Some(preface) = &conn.preface else {
            let e = std::io::Error::other("the PROXY header for this client cannot be encoded");
            return Err(ConnectError::Tcp(e).into());
        };
        return Ok(crate::proxy::connect_upstream(ctx, &ctx.pool, preface).await?);
    }
    let pool = route.unwrap_or(&ctx.pool);
    if !fresh {
        if let Some(up) = pool.take() {
            return Ok(up);
        }
    }
    Ok(crate::proxy::connect_upstream(ctx, pool, &[]).await?)
}

fn park(conn: &Conn, route: Option<&Pool>, up: Upstream) {
    let ctx = &conn.ctx;
    if route.is_none() && ctx.upstream_proxy_protocol != crate::proxy_header::ProxyVersion::Off {
        if let Some(parked) = Parked::park(up) {
            let mut idle = conn.private_idle.borrow_mut();
            // As many as the client has streams at once, at most.
            if idle.len() < ctx.h2.max_concurrent_streams as usize {
                idle.push(parked);
            }
        }
        return;
    }
    route.unwrap_or(&ctx.pool).put(up);
}

/// The request's bytes on their way: the head (until written) and whether any body byte has
/// been taken from the client.
struct Upload {
    head: Option<Vec<u8>>,
    body_taken: bool,
}

struct Answered {
    head: ResponseHead,
    /// The head and what followed it.
    upbuf: PooledBuf,
    /// Request body bytes sent, once the whole request went out; `None` if the app answered
    /// first.
    upload_done: Option<u64>,
}

/// Sends the request while reading the final response head. Returns when the head is in
/// (the body may still be going out, see `Answered::upload_done`).
async fn send_and_answer(
    up: &mut Upstream,
    upload: &mut Upload,
    body: &mut RecvStream,
    chunked: bool,
    is_head: bool,
    conn: &Conn,
) -> Result<Answered, ProxyError> {
    let ctx = &conn.ctx;
    let limits = ctx.limits;
    let Upstream { rd, wr, .. } = up;
    let send = pin!(send_request(wr, upload, body, chunked, conn));
    let mut send: Pin<&mut _> = send;
    let read = pin!(async {
        let deadline = Instant::now() + ctx.timeouts.upstream_response;
        let mut upbuf = PooledBuf::take();
        loop {
            match parse_response(&upbuf, is_head, &limits) {
                Ok(Parse::Complete(head)) if head.is_informational() => {
                    // 1xx (100 Continue, 103): not relayed; the final answer follows.
                    upbuf.drain(..head.head_len());
                    continue;
                }
                Ok(Parse::Complete(head)) => return Ok((head, upbuf)),
                Ok(Parse::Partial) => {}
                Err(e) => return Err(ProxyError::from(UpstreamError::BadHead(e))),
            }
            let (res, buf) = read_up(rd, upbuf, Some(deadline)).await;
            upbuf = buf.ok_or(UpstreamError::Timeout)?;
            let partial = !upbuf.is_empty();
            match res {
                // Part of an answer, then the end: never retried, a 502.
                Ok(0) | Err(_) if partial => {
                    let e = crate::http::HttpError::UpstreamMalformed;
                    return Err(UpstreamError::BadHead(e).into());
                }
                Ok(0) => return Err(UpstreamError::ClosedEarly.into()),
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
        }
    });
    let mut read: Pin<&mut _> = read;
    let mut sent: Option<Result<u64, ProxyError>> = None;
    let mut grace: Option<Pin<Box<monoio::time::Sleep>>> = None;
    let answer = poll_fn(|cx| {
        if sent.is_none() {
            if let Poll::Ready(r) = send.as_mut().poll(cx) {
                sent = Some(r);
            }
        }
        match &sent {
            // The client's side failed: nothing to wait for.
            Some(Err(ProxyError::Client(_))) => return Poll::Ready(None),
            // The app stopped taking the request: its answer may already be on the way.
            Some(Err(ProxyError::Upstream(_))) => {
                let sleep =
                    grace.get_or_insert_with(|| Box::pin(monoio::time::sleep(EARLY_ANSWER_GRACE)));
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
            }
            _ => {}
        }
        read.as_mut().poll(cx).map(Some)
    })
    .await;
    let (head, upbuf) = match answer {
        Some(Ok(answer)) => answer,
        Some(Err(e)) => return Err(e),
        None => match sent {
            Some(Err(e)) => return Err(e),
            _ => return Err(UpstreamError::ClosedEarly.into()),
        },
    };
    // Answered. The client's END_STREAM is usually in already, or a moment away; an app
    // that answered early while the client goes on sending is not waited for.
    if sent.is_none() {
        if let Ok(r) = monoio::time::timeout(UPLOAD_SETTLE, send.as_mut()).await {
            sent = Some(r);
        }
    }
    let upload_done = match sent {
        Some(Ok(n)) => Some(n),
        _ => None,
    };
    Ok(Answered {
        head,
        upbuf,
        upload_done,
    })
}

/// Writes the head, then the body as DATA arrives, chunk-framed when `chunked`. Returns the
/// body bytes sent.
async fn send_request(
    wr: &mut crate::proxy::upstream::UpWrite,
    upload: &mut Upload,
    body: &mut RecvStream,
    chunked: bool,
    conn: &Conn,
) -> Result<u64, ProxyError> {
    let timeouts = conn.ctx.timeouts;
    if let Some(head) = upload.head.take() {
        let (res, _) = write_up(wr, head, timeouts.upstream_response).await;
        res?;
    }
    let mut total = 0u64;
    loop {
        let chunk = match next_chunk(body, timeouts.keep_alive).await {
            Ok(chunk) => chunk,
            Err(RecvFailed::Stalled) => return Err(ClientError::BodyTimeout.into()),
            Err(RecvFailed::Stream(e)) => return Err(ClientError::Stream(e).into()),
        };
        let Some(chunk) = chunk else {
            if chunked {
                let (res, _) = write_up(wr, &b"0\r\n\r\n"[..], timeouts.upstream_response).await;
                res?;
            }
            wr.flush().await.map_err(UpstreamError::Io)?;
            return Ok(total);
        };
        if chunk.is_empty() {
            continue;
        }
        upload.body_taken = true;
        total += chunk.len() as u64;
        let mut framed = Vec::with_capacity(chunk.len() + 20);
        if chunked {
            write_chunk_header(chunk.len(), &mut framed);
        }
        framed.extend_from_slice(&chunk);
        if chunked {
            framed.extend_from_slice(b"\r\n");
        }
        let (res, _) = write_up(wr, framed, timeouts.upstream_response).await;
        res?;
    }
}
