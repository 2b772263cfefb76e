//! The HTTP/1.1 exchange loop of one TLS connection: read a request head, forward it with the
//! prebuilt identity headers, stream the body, relay the response, repeat.
//!
//! Requests are handled strictly in order (pipelined requests wait in `inbuf`), so a connection
//! needs no locks and no second task. Every timeout here ends the connection it guards, so a
//! cancelled read can never lose bytes of a connection that goes on.

use std::net::SocketAddr;
use std::rc::Rc;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::time::Instant;
use tracing::debug;

use super::buffers::{self, Slot};
use super::error::{effect, Effect, ProxyError};
use super::tls_conn::TlsConn;
use super::upstream::Upstream;
use super::ListenerCtx;
use crate::http::chunked::{self, ChunkedDecoder};
use crate::http::request::{self, Inject, RequestBody, RequestHead};
use crate::http::response::{self, ResponseBody, ResponseHead};
use crate::http::{self, Parse};
use crate::tls::cache;

/// Trailer bytes a chunked request may carry (they are read and dropped).
const MAX_TRAILER_BYTES: usize = 8 * 1024;
const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// Body bytes already buffered with a head, up to this many, leave in the same write (request)
/// or the same TLS record (response) as the head: one syscall or one seal instead of two.
const COALESCE_MAX: usize = 4096;
/// How long a connection that got an error response may keep sending before it is closed.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

pub struct Session {
    tls: TlsConn,
    ctx: Rc<ListenerCtx>,
    /// Client address as written into X-Forwarded-For; formatted once per connection.
    client_addr: Vec<u8>,
    /// The complete `X-Forwarded-Client-Cert` line, built once after the handshake.
    xfcc_line: Option<Rc<[u8]>>,
    /// Decrypted client bytes; `start..` not yet consumed (pipelined requests wait here).
    inbuf: Slot,
    start: usize,
    /// Bytes from the upstream.
    upbuf: Slot,
    /// Heads and re-encoded chunks on their way out.
    out: Slot,
    /// Whether any byte of the current response reached the client.
    response_started: bool,
    /// Whether the upstream sent any byte for the current attempt: it then took the request,
    /// so a failure is not a stale pooled connection and must not be retried.
    upstream_answered: bool,
}

enum Next {
    KeepAlive,
    Close,
}

impl Session {
    pub fn new(tls: TlsConn, peer: SocketAddr, ctx: Rc<ListenerCtx>) -> Self {
        let xfcc_line = tls
            .peer_certificates()
            .and_then(|chain| cache::header_for(&ctx.cache, chain));
        Self {
            tls,
            ctx,
            client_addr: peer.ip().to_canonical().to_string().into_bytes(),
            xfcc_line,
            inbuf: Slot::default(),
            start: 0,
            upbuf: Slot::default(),
            out: Slot::default(),
            response_started: false,
            upstream_answered: false,
        }
    }

    /// Serves requests until the connection ends.
    ///
    /// Only the idle wait lives in this future's own state. Everything else (head parsing,
    /// the exchange with its two parsed heads and relay futures, ~18 KiB) runs in a boxed
    /// future per request: an unboxed await would make every connection carry that state
    /// while idle too. One allocation per request buys an idle connection that small.
    pub async fn run(mut self) {
        loop {
            self.response_started = false;
            if self.pending().is_empty()
                && !self.tls.has_buffered_input()
                && !self.wait_idle().await
            {
                break;
            }
            match Box::pin(self.next_exchange()).await {
                Ok(Next::KeepAlive) => continue,
                Ok(Next::Close) => break,
                Err(e) => {
                    Box::pin(self.fail(e)).await;
                    return;
                }
            }
        }
        Box::pin(self.tls.close()).await;
    }

    /// Reads the next request head and forwards the request.
    async fn next_exchange(&mut self) -> Result<Next, ProxyError> {
        match self.read_head().await? {
            Some(head) => self.exchange(head).await,
            None => Ok(Next::Close),
        }
    }

    /// Tells the client what went wrong (see `effect`) and ends the connection.
    async fn fail(&mut self, e: ProxyError) {
        debug!(listener = %self.ctx.name, "exchange failed: {e}");
        match effect(&e, self.response_started) {
            Effect::Respond(status) => {
                let _ = self.tls.write_plain(http::error_response(status)).await;
                self.tls.linger_close(LINGER).await;
            }
            // Truncated on purpose: no close_notify after a partial response.
            Effect::Close => {}
        }
    }

    /// Waits, holding no buffers, until the client sends more or the connection should end
    /// (keep-alive timeout, shutdown). Waiting for readiness takes no bytes from the kernel,
    /// so ending this wait early loses nothing.
    async fn wait_idle(&mut self) -> bool {
        if self.ctx.shutdown.is_set() {
            return false;
        }
        self.compact();
        self.inbuf.release_if_empty();
        self.upbuf.release_if_empty();
        self.out.release_if_empty();
        self.tls.release_buffers();
        let idle = monoio::time::timeout(self.ctx.timeouts.keep_alive, async {
            monoio::select! {
                r = self.tls.readable() => r.is_ok(),
                _ = self.ctx.shutdown.wait() => false,
            }
        })
        .await;
        matches!(idle, Ok(true))
    }

    fn pending(&self) -> &[u8] {
        self.inbuf.get_ref().get(self.start..).unwrap_or(&[])
    }

    /// Drops consumed bytes so the buffer has room again.
    fn compact(&mut self) {
        let start = self.start;
        let buf = self.inbuf.get();
        if start >= buf.len() {
            buf.clear();
        } else if start > 0 {
            buf.drain(..start);
        }
        self.start = 0;
    }

    /// Reads until a complete request head is buffered, within `request_header` of the first
    /// read. `Ok(None)`: the client went away cleanly before sending a byte of it.
    async fn read_head(&mut self) -> Result<Option<RequestHead>, ProxyError> {
        let mut deadline: Option<Instant> = None;
        loop {
            if !self.pending().is_empty() {
                let limits = self.ctx.limits;
                match request::parse_request(self.pending(), &limits) {
                    Ok(Parse::Complete(head)) => return Ok(Some(head)),
                    Ok(Parse::Partial) => {}
                    Err(e) => return Err(ProxyError::BadRequest(e)),
                }
            }
            let deadline =
                *deadline.get_or_insert_with(|| Instant::now() + self.ctx.timeouts.request_header);
            self.compact();
            let max = self.ctx.limits.max_head_bytes + 1;
            let read = self.tls.read_plain(self.inbuf.get(), max);
            let n = match monoio::time::timeout_at(deadline, read).await {
                Ok(r) => r.map_err(ProxyError::ClientIo)?,
                Err(_) if self.pending().is_empty() => return Ok(None),
                Err(_) => return Err(ProxyError::ClientHeadTimeout),
            };
            if n == 0 {
                return if self.pending().is_empty() {
                    Ok(None)
                } else {
                    Err(ProxyError::ClientAborted)
                };
            }
        }
    }

    /// Forwards one request and relays its response.
    async fn exchange(&mut self, head: RequestHead) -> Result<Next, ProxyError> {
        if head.expect_continue() && !matches!(head.body(), RequestBody::None) {
            self.tls
                .write_plain(CONTINUE_100)
                .await
                .map_err(ProxyError::ClientIo)?;
            self.tls.flush().await.map_err(ProxyError::ClientIo)?;
        }
        let retryable;
        {
            let start = self.start;
            // A pooled connection may have been closed by the app while idle; the request is
            // then retried once on a fresh connection. Only when sending it again is possible
            // (no body consumed from the client) and harmless: the app may have run it before
            // closing, so only idempotent methods (RFC 9110 §9.2.2).
            retryable = matches!(head.body(), RequestBody::None)
                && is_idempotent(head.method(&self.inbuf.get_ref()[start..]));
            let inject = Inject {
                client_addr: &self.client_addr,
                xfcc_line: self.xfcc_line.as_deref(),
                upstream_host: &self.ctx.upstream_host,
            };
            let out = self.out.get();
            out.clear();
            head.write_upstream(&self.inbuf.get_ref()[start..], &inject, out);
        }
        self.start += head.head_len();
        // A small body already buffered goes out with the head (a copy of at most 4 KiB saves
        // a syscall); a body is never retried, so the head-with-body is never sent twice.
        let mut body_sent = 0u64;
        if let RequestBody::Length(len) = *head.body() {
            let avail = (self.pending().len() as u64).min(len) as usize;
            if avail <= COALESCE_MAX {
                let start = self.start;
                let inbuf = self.inbuf.get_ref();
                self.out
                    .get()
                    .extend_from_slice(&inbuf[start..start + avail]);
                self.start += avail;
                body_sent = avail as u64;
            }
        }

        let mut up = self.acquire_upstream(false).await?;
        let (mut up, resp) = loop {
            let attempt = async {
                self.send_head(&mut up).await?;
                self.relay_request_body(&head, body_sent, &mut up.stream)
                    .await?;
                self.read_response_head(&head, &mut up.stream).await
            }
            .await;
            match attempt {
                Ok(resp) => break (up, resp),
                // Also never after a response byte arrived: the app took the request (and a
                // relayed 1xx has reused `out`, which no longer holds the request head).
                Err(ProxyError::UpstreamIo(_) | ProxyError::UpstreamClosedEarly)
                    if up.reused && retryable && !self.upstream_answered =>
                {
                    up = self.acquire_upstream(true).await?;
                }
                Err(e) => return Err(e),
            }
        };

        let client_keep_alive = resp.client_can_keep_alive(
            head.keep_alive() && !self.ctx.shutdown.is_set(),
            head.is_http10(),
        );
        let reusable = self
            .relay_response(&head, &resp, client_keep_alive, &mut up.stream)
            .await?;
        if reusable {
            self.ctx.pool.put(up.stream);
        }
        Ok(if client_keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        })
    }

    async fn acquire_upstream(&mut self, fresh: bool) -> Result<Upstream, ProxyError> {
        if !fresh {
            if let Some(up) = self.ctx.pool.take() {
                return Ok(up);
            }
        }
        self.ctx
            .pool
            .connect(self.ctx.timeouts.upstream_connect)
            .await
            .map_err(ProxyError::UpstreamConnect)
    }

    /// Writes a whole buffer to the upstream. An app that stops reading for `upstream_response`
    /// ends the exchange (504 unless the response already started); the buffer is then lost
    /// with the exchange, and the slot it came from refills from the pool if ever needed.
    async fn upstream_write<B: monoio::buf::IoBuf>(
        &self,
        up: &mut TcpStream,
        buf: B,
    ) -> Result<B, ProxyError> {
        let limit = self.ctx.timeouts.upstream_response;
        match monoio::time::timeout(limit, up.write_all(buf)).await {
            Ok((Ok(_), buf)) => Ok(buf),
            Ok((Err(e), _)) => Err(ProxyError::UpstreamIo(e)),
            Err(_) => Err(ProxyError::UpstreamTimeout),
        }
    }

    async fn send_head(&mut self, up: &mut Upstream) -> Result<(), ProxyError> {
        let out = self.out.take();
        let out = self.upstream_write(&mut up.stream, out).await?;
        self.out.put(out);
        Ok(())
    }

    /// Writes `inbuf[from..to]` to the upstream without copying it.
    async fn write_inbuf(
        &mut self,
        up: &mut TcpStream,
        from: usize,
        to: usize,
    ) -> Result<(), ProxyError> {
        let buf = self.inbuf.take();
        let slice = monoio::buf::IoBuf::slice(buf, from..to);
        let slice = self.upstream_write(up, slice).await?;
        self.inbuf.put(slice.into_inner());
        Ok(())
    }

    /// Reads more of the request body from the client (at most `max` bytes).
    async fn read_body_bytes(&mut self, max: usize) -> Result<(), ProxyError> {
        self.compact();
        let read = self.tls.read_plain(self.inbuf.get(), max);
        match monoio::time::timeout(self.ctx.timeouts.keep_alive, read).await {
            Ok(Ok(0)) => Err(ProxyError::ClientAborted),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(ProxyError::ClientIo(e)),
            Err(_) => Err(ProxyError::ClientBodyTimeout),
        }
    }

    /// Streams the request body to the upstream; `already` bytes of it went with the head.
    async fn relay_request_body(
        &mut self,
        head: &RequestHead,
        already: u64,
        up: &mut TcpStream,
    ) -> Result<(), ProxyError> {
        match *head.body() {
            RequestBody::None => Ok(()),
            RequestBody::Length(len) => {
                let mut remaining = len - already;
                loop {
                    let avail = (self.pending().len() as u64).min(remaining) as usize;
                    if avail > 0 {
                        let from = self.start;
                        self.write_inbuf(up, from, from + avail).await?;
                        self.start += avail;
                        remaining -= avail as u64;
                    }
                    if remaining == 0 {
                        return Ok(());
                    }
                    let want = remaining.min(buffers::BUF_CAPACITY as u64) as usize;
                    self.read_body_bytes(want).await?;
                }
            }
            RequestBody::Chunked => {
                // Decoded and re-encoded: the app sees canonical chunk framing and no trailers.
                let mut decoder = ChunkedDecoder::new(MAX_TRAILER_BYTES);
                loop {
                    let mut out = self.out.take();
                    out.clear();
                    let mut done = false;
                    loop {
                        let start = self.start;
                        let input = &self.inbuf.get_ref()[start..];
                        let step = match decoder.decode(input) {
                            Ok(step) => step,
                            Err(e) => {
                                self.out.put(out);
                                return Err(ProxyError::BadRequest(e.into()));
                            }
                        };
                        if let Some(data) = step.data.clone() {
                            chunked::write_chunk_header(data.len(), &mut out);
                            out.extend_from_slice(&input[data]);
                            out.extend_from_slice(b"\r\n");
                        }
                        self.start += step.consumed;
                        if step.done {
                            out.extend_from_slice(chunked::LAST_CHUNK);
                            done = true;
                            break;
                        }
                        if step.consumed == 0 && step.data.is_none() {
                            break;
                        }
                    }
                    let out = if out.is_empty() {
                        out
                    } else {
                        self.upstream_write(up, out).await?
                    };
                    self.out.put(out);
                    if done {
                        return Ok(());
                    }
                    self.read_body_bytes(buffers::BUF_CAPACITY).await?;
                }
            }
        }
    }

    /// Reads upstream bytes into `upbuf` (appending). `Ok(0)` at EOF.
    async fn read_upstream(&mut self, up: &mut TcpStream) -> std::io::Result<usize> {
        let mut buf = self.upbuf.take();
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(buffers::BUF_CAPACITY);
        }
        let (len, cap) = (buf.len(), buf.capacity());
        let (res, slice) = up.read(buf.slice_mut(len..cap)).await;
        self.upbuf.put(slice.into_inner());
        res
    }

    /// Reads the final response head; 1xx heads are forwarded (or swallowed) on the way.
    async fn read_response_head(
        &mut self,
        head: &RequestHead,
        up: &mut TcpStream,
    ) -> Result<ResponseHead, ProxyError> {
        self.upbuf.get().clear();
        self.upstream_answered = false;
        let deadline = Instant::now() + self.ctx.timeouts.upstream_response;
        loop {
            if !self.upbuf.get_ref().is_empty() {
                let limits = self.ctx.limits;
                match response::parse_response(self.upbuf.get_ref(), head.is_head(), &limits) {
                    Ok(Parse::Complete(resp)) if resp.is_informational() => {
                        // Our own 100 Continue already went out; others (103) go to 1.1 clients.
                        if resp.status() != 100 && !head.is_http10() {
                            let end = resp.head_len();
                            let out = self.out.get();
                            out.clear();
                            resp.write_client(self.upbuf.get_ref(), true, false, out);
                            self.send_out().await?;
                            self.tls.flush().await.map_err(ProxyError::ClientIo)?;
                            self.upbuf.get().drain(..end);
                        } else {
                            self.upbuf.get().drain(..resp.head_len());
                        }
                        continue;
                    }
                    Ok(Parse::Complete(resp)) => return Ok(resp),
                    Ok(Parse::Partial) => {}
                    Err(e) => return Err(ProxyError::BadResponse(e)),
                }
            }
            let read = self.read_upstream(up);
            match monoio::time::timeout_at(deadline, read).await {
                Err(_) => return Err(ProxyError::UpstreamTimeout),
                Ok(Err(e)) => return Err(ProxyError::UpstreamIo(e)),
                Ok(Ok(0)) => return Err(ProxyError::UpstreamClosedEarly),
                Ok(Ok(_)) => self.upstream_answered = true,
            }
        }
    }

    /// Sends the response head and body to the client. Returns whether the upstream connection
    /// ended exactly at the end of the response and may be pooled.
    async fn relay_response(
        &mut self,
        head: &RequestHead,
        resp: &ResponseHead,
        client_keep_alive: bool,
        up: &mut TcpStream,
    ) -> Result<bool, ProxyError> {
        let mut pos = resp.head_len();
        // The first body bytes, when few, share the head's TLS record (one seal, not two).
        let mut first = 0u64;
        {
            let upbuf = self.upbuf.get_ref();
            let out = self.out.get();
            out.clear();
            resp.write_client(upbuf, client_keep_alive, head.is_http10(), out);
            if let ResponseBody::Length(len) = *resp.body() {
                let avail = ((upbuf.len() - pos) as u64).min(len) as usize;
                if avail <= COALESCE_MAX {
                    out.extend_from_slice(&upbuf[pos..pos + avail]);
                    pos += avail;
                    first = avail as u64;
                }
            }
        }
        self.send_out().await?;
        self.response_started = true;

        let clean_end = match *resp.body() {
            ResponseBody::None => true,
            ResponseBody::Length(len) => {
                let mut remaining = len - first;
                loop {
                    let avail = ((self.upbuf.get_ref().len() - pos) as u64).min(remaining) as usize;
                    self.send_upbuf(pos, pos + avail).await?;
                    pos += avail;
                    remaining -= avail as u64;
                    if remaining == 0 {
                        break;
                    }
                    self.refill_upstream(up, pos).await?;
                    pos = 0;
                }
                true
            }
            ResponseBody::Chunked => {
                let dechunk = head.is_http10();
                let mut decoder = ChunkedDecoder::new(MAX_TRAILER_BYTES);
                loop {
                    let from = pos;
                    let mut done = false;
                    loop {
                        let step = decoder
                            .decode(&self.upbuf.get_ref()[pos..])
                            .map_err(|e| ProxyError::BadResponse(e.into()))?;
                        if dechunk {
                            if let Some(data) = step.data.clone() {
                                self.send_upbuf(pos + data.start, pos + data.end).await?;
                            }
                        }
                        pos += step.consumed;
                        if step.done {
                            done = true;
                            break;
                        }
                        if step.consumed == 0 && step.data.is_none() {
                            break;
                        }
                    }
                    if !dechunk {
                        // Verbatim: the framing was validated above, the app is trusted to
                        // mean what it sent.
                        self.send_upbuf(from, pos).await?;
                    }
                    if done {
                        break;
                    }
                    self.refill_upstream(up, pos).await?;
                    pos = 0;
                }
                true
            }
            ResponseBody::UntilClose => {
                loop {
                    let end = self.upbuf.get_ref().len();
                    self.send_upbuf(pos, end).await?;
                    pos = end;
                    match self.refill_upstream(up, pos).await {
                        Ok(()) => pos = 0,
                        Err(ProxyError::UpstreamTruncated) => break,
                        Err(e) => return Err(e),
                    }
                }
                false
            }
        };
        self.tls.flush().await.map_err(ProxyError::ClientIo)?;
        let leftover = self.upbuf.get_ref().len() > pos;
        self.upbuf.get().clear();
        Ok(clean_end && !leftover && resp.upstream_keep_alive())
    }

    /// Encrypts the bytes prepared in `out` for the client.
    async fn send_out(&mut self) -> Result<(), ProxyError> {
        let out = self.out.take();
        let r = self.tls.write_plain(&out).await;
        self.out.put(out);
        r.map_err(ProxyError::ClientIo)
    }

    async fn send_upbuf(&mut self, from: usize, to: usize) -> Result<(), ProxyError> {
        if from == to {
            return Ok(());
        }
        let buf = self.upbuf.take();
        let r = self.tls.write_plain(&buf[from..to]).await;
        self.upbuf.put(buf);
        r.map_err(ProxyError::ClientIo)
    }

    /// Drops the relayed part of `upbuf` (up to `pos`) and reads more; unrelayed bytes move to
    /// the front, so relaying resumes at position 0.
    async fn refill_upstream(&mut self, up: &mut TcpStream, pos: usize) -> Result<(), ProxyError> {
        // What was relayed so far goes out before waiting on the app: rustls holds plaintext
        // until its buffer fills, so a streaming (or stalling, or dying) app would otherwise
        // keep bytes from the client that it could already use.
        self.tls.flush().await.map_err(ProxyError::ClientIo)?;
        let buf = self.upbuf.get();
        if pos >= buf.len() {
            buf.clear();
        } else {
            buf.drain(..pos);
        }
        let limit = self.ctx.timeouts.upstream_response;
        let read = self.read_upstream(up);
        match monoio::time::timeout(limit, read).await {
            Err(_) => Err(ProxyError::UpstreamBodyTimeout),
            Ok(Err(e)) => Err(ProxyError::UpstreamIo(e)),
            Ok(Ok(0)) => Err(ProxyError::UpstreamTruncated),
            Ok(Ok(_)) => Ok(()),
        }
    }
}

/// RFC 9110 §9.2.2: methods whose repetition has the same effect as running them once.
fn is_idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    )
}
