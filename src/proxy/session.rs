//! The HTTP/1.1 exchange loop of one TLS connection: read a request head, forward it with the
//! prebuilt identity headers, stream the body, relay the response, repeat.
//!
//! This loop moves bytes and asks the pure core what they mean: `http::request` and
//! `http::response` parse and rewrite heads, [`BodyFramer`] frames bodies in both directions,
//! and `error::effect` says what a failure looks like on the wire. It does no framing
//! arithmetic of its own.
//!
//! Requests are handled strictly in order (pipelined requests wait in the client's input
//! buffer), so a connection needs no locks and no second task. While a request body goes out,
//! the app's answer is read at the same time: an app may refuse a body early (RFC 9112 §9.6),
//! and its answer must reach the client rather than a 502 for the write it then breaks.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant as StdInstant, SystemTime};

use monoio::io::AsyncWriteRent;
use monoio::time::Instant;
use tracing::debug;

use super::admit;
use super::buffers::{self, PooledBuf, Slot};
use super::client::Client;
use super::error::{effect, upstream_kind, ClientError, Effect, ProxyError, UpstreamError};
use super::tally::{ConnInfo, Tally};
use super::tls_conn::TlsConn;
use super::tunnel;
use super::upstream::{read_up, write_up, ConnectError, Parked, Pool, Upstream};
use super::ListenerCtx;
use crate::http::request::{self, upgrade_permitted, Inject, RequestHead};
use crate::http::response::{self, ResponseHead};
use crate::http::{self, BodyFramer, Parse};
use crate::ops::access_log::AccessRecord;
use crate::proxy_header::ProxyVersion;
use crate::tls::cache;

/// Body bytes already buffered with a head, up to this many, leave in the same write (request)
/// or the same TLS record (response) as the head: one syscall or one seal instead of two.
const COALESCE_MAX: usize = 4096;
/// How long a connection that got an error response may keep sending before it is closed.
const LINGER: Duration = Duration::from_secs(2);
/// After a write to the app failed, how long its answer may take to show up: an app that
/// refuses a body answers and then closes, and the reset from its close can break our write
/// before the read in flight has handed us the answer that arrived just ahead of it.
const EARLY_ANSWER_GRACE: Duration = Duration::from_millis(250);

pub struct Session {
    client: Client,
    ctx: Rc<ListenerCtx>,
    /// Client address as written into X-Forwarded-For; formatted once per connection.
    client_addr: Vec<u8>,
    /// Our `Forwarded` element (`for=…;proto=https`); formatted once per connection.
    forwarded: Vec<u8>,
    /// The complete `X-Forwarded-Client-Cert` line, built once after the handshake.
    xfcc_line: Option<Rc<[u8]>>,
    /// Whether any byte of the current response reached the client.
    response_started: bool,
    peer: SocketAddr,
    /// What the current exchange did, for the metrics and the access log.
    tally: Tally,
    /// Facts about the connection for the access log, made once (only when it is on).
    info: Option<Box<ConnInfo>>,
    /// With `upstream_proxy_protocol`, this client's own upstream connection (see `Private`).
    private: Option<Box<Private>>,
    /// Each route's verdict on the client certificate (`None`: none presented), made once.
    route_verdicts: Option<Box<[bool]>>,
}

/// An HTTP listener that sends a PROXY header cannot share upstream connections between
/// clients: the header, sent once per connection, names one client. So each client gets its
/// own upstream connection, kept alive between its requests and closed with it (as HAProxy
/// marks `send-proxy` connections private).
struct Private {
    /// The PROXY header, made once per client connection (`None`: it could not be encoded,
    /// and no upstream connection can be made for this client).
    preface: Option<Vec<u8>>,
    idle: Option<Parked>,
}

enum Next {
    KeepAlive,
    Close,
    /// The request body was not read to its end (the app answered early): the client may
    /// still be sending it, so linger before closing, or it would see a reset, not the answer.
    Abandon,
}

/// How one attempt to deliver the request went.
struct Attempt {
    result: Result<Answer, ProxyError>,
    /// Whether the app sent any byte: it then took the request, and a failure is not a stale
    /// pooled connection; the request must not be sent again.
    answered: bool,
    /// The request head (and coalesced body) for a retry: handed back by the write, and only
    /// while no other byte of the request went out.
    resend: Option<PooledBuf>,
}

struct Answer {
    head: ResponseHead,
    /// Bytes read from the app so far: the head, and maybe the start of the body.
    upbuf: PooledBuf,
    /// The app answered before the request body was all sent.
    early: bool,
}

impl Session {
    /// `local` is the local address a received PROXY header named (`None`: the socket's).
    pub fn new(
        tls: TlsConn,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        ctx: Rc<ListenerCtx>,
    ) -> Self {
        let xfcc_line = tls
            .peer_certificates()
            .and_then(|chain| cache::header_for(&ctx.cache, chain));
        let info = ctx
            .access_log
            .is_some()
            .then(|| Box::new(ConnInfo::of(&tls)));
        let route_verdicts =
            admit::route_verdicts(&ctx, tls.peer_certificates().and_then(|c| c.first()));
        let private = (ctx.upstream_proxy_protocol != ProxyVersion::Off).then(|| {
            let preface = super::tcp::preface(&tls, (peer, local), &ctx)
                .inspect_err(|e| debug!(listener = %ctx.name, %peer, "{e}"))
                .ok();
            Box::new(Private {
                preface,
                idle: None,
            })
        });
        Self {
            client: Client {
                tls,
                inbuf: Slot::default(),
                start: 0,
                received: 0,
            },
            ctx,
            client_addr: peer.ip().to_canonical().to_string().into_bytes(),
            forwarded: request::forwarded_element(peer.ip()),
            xfcc_line,
            response_started: false,
            peer,
            tally: Tally::default(),
            info,
            private,
            route_verdicts,
        }
    }

    /// Serves requests until the connection ends.
    ///
    /// Only the idle wait lives in this future's own state. Everything else (head parsing,
    /// the exchange with its two parsed heads and relay futures) runs in a boxed future per
    /// request: an unboxed await would make every connection carry that state while idle
    /// too. One allocation per request buys an idle connection that small.
    ///
    /// Not an `async fn`: one moves its arguments into locals first, so the future would hold
    /// the `Session` twice (the moved-from copy keeps its place); this async block captures it
    /// once and works on it in place (1.6 KiB less per connection).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would hold the Session twice"
    )]
    pub fn run(mut self) -> impl std::future::Future<Output = ()> {
        async move {
            let end = loop {
                self.response_started = false;
                if self.client.pending().is_empty()
                    && !self.client.tls.has_buffered_input()
                    && !self.wait_idle().await
                {
                    break Next::Close;
                }
                let result = Box::pin(self.next_exchange()).await;
                if let Err(e) = &result {
                    self.count_failure(e);
                    if matches!(e, ProxyError::Client(ClientError::BadHead(_))) {
                        self.note_unparsed_head();
                    }
                }
                match result {
                    Ok(next) => {
                        self.finish_exchange();
                        match next {
                            Next::KeepAlive => continue,
                            end => break end,
                        }
                    }
                    Err(e) => {
                        Box::pin(self.fail(e)).await;
                        self.finish_exchange();
                        return;
                    }
                }
            };
            match end {
                Next::Abandon => Box::pin(self.client.tls.linger_close(LINGER)).await,
                _ => Box::pin(self.client.tls.close()).await,
            }
        }
    }

    /// Reads the next request head and forwards the request.
    async fn next_exchange(&mut self) -> Result<Next, ProxyError> {
        self.tally.status = 0;
        self.tally.bytes_out = 0;
        self.tally.upstream = None;
        self.tally.received_before = self.client.received;
        match self.read_head().await? {
            Some(head) => {
                if self.info.is_some() {
                    let buf = self.client.pending();
                    self.tally.method.clear();
                    self.tally.method.extend_from_slice(head.method(buf));
                    self.tally.target.clear();
                    self.tally.target.extend_from_slice(head.target(buf));
                }
                self.exchange(head).await
            }
            None => Ok(Next::Close),
        }
    }

    /// A head that did not parse is still logged as received: its bytes count, and the method
    /// and target are what its first line says (the log escapes whatever they hold).
    fn note_unparsed_head(&mut self) {
        let pending = self.client.pending();
        self.tally.unparsed = pending.len() as u64;
        if self.info.is_none() {
            return;
        }
        let line = pending.split(|b| *b == b'\n').next().unwrap_or(&[]);
        let line = &line[..line.len().min(8 * 1024)];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut parts = line.splitn(3, |b| *b == b' ');
        self.tally.method.clear();
        self.tally
            .method
            .extend_from_slice(parts.next().unwrap_or(&[]));
        self.tally.target.clear();
        self.tally
            .target
            .extend_from_slice(parts.next().unwrap_or(&[]));
    }

    /// Counts a failed exchange's upstream error, if the app (or the way to it) was at fault.
    fn count_failure(&self, e: &ProxyError) {
        if let Some(kind) = upstream_kind(e) {
            self.ctx.metrics.upstream_error(self.ctx.index, kind);
        }
    }

    /// Counts the exchange that just ended and writes its access-log line. Exchanges that sent
    /// no status (the client left first) are not requests anybody was answered.
    fn finish_exchange(&mut self) {
        let Some(started) = self.tally.started.take() else {
            return;
        };
        let status = self.tally.status;
        if status == 0 {
            return;
        }
        let duration = started.elapsed();
        self.ctx
            .metrics
            .request_done(self.ctx.index, status, duration);
        if let (Some(log), Some(info)) = (&self.ctx.access_log, &self.info) {
            let record = AccessRecord {
                ts: SystemTime::now(),
                listener: &self.ctx.name,
                client: self.peer,
                tls_version: info.tls_version,
                resumed: info.resumed,
                client_cert_sha256: info.sha256.as_deref(),
                client_cert_subject: info.subject.as_deref(),
                method: &self.tally.method,
                path: &self.tally.target,
                status,
                bytes_in: self.client.received - self.tally.received_before + self.tally.unparsed,
                bytes_out: self.tally.bytes_out,
                duration,
                upstream: self.tally.upstream,
            };
            let _ = log.log(&record);
        }
        self.tally.method.clear();
        self.tally.target.clear();
        self.tally.unparsed = 0;
    }

    /// Tells the client what went wrong (see `effect`) and ends the connection.
    async fn fail(&mut self, e: ProxyError) {
        debug!(listener = %self.ctx.name, "exchange failed: {e}");
        match effect(&e, self.response_started) {
            Effect::Respond(status) => {
                self.tally.status = status;
                let tls = &mut self.client.tls;
                let response = http::error_response(status);
                self.tally.bytes_out += response.len() as u64;
                let _ = tls.write_plain(response).await;
                tls.linger_close(LINGER).await;
            }
            Effect::Forbidden(reason) => {
                self.tally.status = 403;
                let tls = &mut self.client.tls;
                let response = http::forbidden_response(reason);
                self.tally.bytes_out += response.len() as u64;
                let _ = tls.write_plain(&response).await;
                tls.linger_close(LINGER).await;
            }
            // Truncated on purpose: no close_notify after a partial response.
            Effect::Close | Effect::Malformed => {}
        }
    }

    /// Waits, holding no buffers, until the client sends more or the connection should end
    /// (keep-alive timeout, shutdown). Waiting for readiness takes no bytes from the kernel,
    /// so ending this wait early loses nothing. A patient shutdown (after a handover) keeps
    /// waiting: the next request is answered, with `Connection: close`.
    async fn wait_idle(&mut self) -> bool {
        let shutdown = &self.ctx.shutdown;
        if shutdown.is_set() && !shutdown.is_patient() {
            return false;
        }
        self.client.compact();
        self.client.inbuf.release_if_empty();
        self.client.tls.release_buffers();
        let tls = &self.client.tls;
        // Not monoio's timeout: its timer would add 640 bytes to every idle connection.
        let mut deadline = self.ctx.idle_clock.deadline(self.ctx.timeouts.keep_alive);
        if !shutdown.is_set() {
            monoio::select! {
                r = tls.readable() => return r.is_ok(),
                _ = shutdown.wait() => {},
                _ = &mut deadline => return false,
            }
        }
        shutdown.is_patient()
            && monoio::select! {
                r = tls.readable() => r.is_ok(),
                _ = &mut deadline => false,
            }
    }

    /// Reads until a complete request head is buffered, within `request_header` of the first
    /// read. `Ok(None)`: the client went away cleanly before sending a byte of it.
    async fn read_head(&mut self) -> Result<Option<RequestHead>, ClientError> {
        let mut deadline: Option<Instant> = None;
        loop {
            if !self.client.pending().is_empty() {
                self.tally.started.get_or_insert_with(StdInstant::now);
                match request::parse_request(self.client.pending(), &self.ctx.limits) {
                    Ok(Parse::Complete(head)) => return Ok(Some(head)),
                    Ok(Parse::Partial) => {}
                    Err(e) => return Err(ClientError::BadHead(e)),
                }
            }
            let deadline =
                *deadline.get_or_insert_with(|| Instant::now() + self.ctx.timeouts.request_header);
            // A record's worth at a time, never more than one past the limit: the parser
            // refuses a head that reaches it. Asking for more would make the read size its
            // ciphertext buffer for a long body's reads (`TlsConn::read_plain`).
            let max = (self.ctx.limits.max_head_bytes + 1)
                .saturating_sub(self.client.pending().len())
                .min(buffers::BUF_CAPACITY);
            let n = match monoio::time::timeout_at(deadline, self.client.read(max)).await {
                Ok(r) => r.map_err(ClientError::Io)?,
                Err(_) if self.client.pending().is_empty() => return Ok(None),
                Err(_) => return Err(ClientError::HeadTimeout),
            };
            if n == 0 {
                return if self.client.pending().is_empty() {
                    Ok(None)
                } else {
                    Err(ClientError::Aborted)
                };
            }
        }
    }

    /// Forwards one request and relays its response.
    async fn exchange(&mut self, head: RequestHead) -> Result<Next, ProxyError> {
        let verdicts = self.route_verdicts.as_deref();
        let admitted = admit::admit(&self.ctx, &head, self.client.pending(), verdicts)?;
        let route_pool = admitted.route;
        if let (Some(pool), None) = (self.ctx.h2c.clone(), &route_pool) {
            return Box::pin(self.exchange_h2c(&pool, head, admitted.target)).await;
        }
        let mut framer = BodyFramer::request(*head.body());
        if head.expect_continue() && !framer.is_done() {
            self.client.continue_100().await?;
        }
        let mut out = PooledBuf::take();
        let (idempotent, upgrade) = {
            let buf = self.client.pending();
            let upgrade = head
                .upgrade(buf)
                .is_some_and(|protocols| upgrade_permitted(protocols, &self.ctx.upgrade));
            let inject = Inject {
                client_addr: &self.client_addr,
                forwarded: &self.forwarded,
                xfcc_line: self.xfcc_line.as_deref(),
                upstream_host: route_pool
                    .as_ref()
                    .map_or(&self.ctx.upstream_host, |r| &r.host),
                upgrade,
                target: admitted.target.as_deref(),
            };
            head.write_upstream(buf, &inject, &mut out);
            (is_idempotent(head.method(buf)), upgrade)
        };
        self.client.consume(head.head_len());
        // The first body bytes already buffered ride with the head (a copy of at most 4 KiB
        // saves a syscall).
        if !framer.is_done() {
            let pending = self.client.pending();
            let first = &pending[..pending.len().min(COALESCE_MAX)];
            let adv = framer
                .advance(first, &mut out)
                .map_err(ClientError::BadBody)?;
            out.extend_from_slice(&first[adv.forward]);
            self.client.consume(adv.consumed);
        }
        let route = route_pool.as_ref().map(|r| &*r.pool);
        let mut up = self.acquire_upstream(false, route).await?;
        let answer = loop {
            let attempt = self
                .attempt(&head, upgrade, &mut framer, &mut up, out)
                .await;
            match (attempt.result, attempt.resend) {
                (Ok(answer), _) => break answer,
                // A pooled connection may have been closed (FIN) or reset by the app while
                // idle; the request then goes once more on a fresh connection. Only when that
                // is possible (no request byte beyond `out` went out) and harmless: the app
                // may have run it before closing, so only idempotent methods (RFC 9110 §9.2.2).
                (
                    Err(ProxyError::Upstream(UpstreamError::Io(_) | UpstreamError::ClosedEarly)),
                    Some(again),
                ) if up.reused && idempotent && !attempt.answered => {
                    debug!(listener = %self.ctx.name, "pooled upstream connection was closed; retrying");
                    out = again;
                    up = self.acquire_upstream(true, route).await?;
                }
                (Err(e), _) => return Err(e),
            }
        };

        if answer.head.is_switching() {
            return self.switch(answer, up).await;
        }
        let body_finished = framer.is_done();
        let early = answer.early;
        let client_keep_alive = body_finished
            && answer.head.client_can_keep_alive(
                head.keep_alive() && !self.ctx.shutdown.is_set(),
                head.is_http10(),
            );
        let reusable = self
            .relay_response(&head, answer, client_keep_alive, &mut up)
            .await?;
        if reusable && body_finished && !early {
            match (route, &mut self.private) {
                (Some(pool), _) => pool.put(up),
                (None, Some(private)) => private.idle = Parked::park(up),
                (None, None) => self.ctx.pool.put(up),
            }
        }
        Ok(if client_keep_alive {
            Next::KeepAlive
        } else if body_finished {
            Next::Close
        } else {
            Next::Abandon
        })
    }

    /// A connection to the app: `route`'s pool when the request matched a route with its own
    /// upstream, else the client's private connection (with `upstream_proxy_protocol`) or the
    /// listener's pool. `fresh`: not a pooled one (the retry after a stale connection).
    async fn acquire_upstream(
        &mut self,
        fresh: bool,
        route: Option<&Pool>,
    ) -> Result<Upstream, UpstreamError> {
        let private = match (route, &mut self.private) {
            (None, Some(private)) => private,
            (route, _) => {
                let pool = route.unwrap_or(&self.ctx.pool);
                if !fresh {
                    if let Some(up) = pool.take() {
                        return Ok(up);
                    }
                }
                return Ok(super::connect_upstream(&self.ctx, pool, &[]).await?);
            }
        };
        if let Some(up) = private
            .idle
            .take()
            .filter(|_| !fresh)
            .and_then(Parked::resume)
        {
            return Ok(up);
        }
        let Some(preface) = &private.preface else {
            let e = std::io::Error::other("the PROXY header for this client cannot be encoded");
            return Err(ConnectError::Tcp(e).into());
        };
        Ok(super::connect_upstream(&self.ctx, &self.ctx.pool, preface).await?)
    }

    /// Sends the request (the head in `out`, then the rest of the body) and reads the final
    /// response head, relaying 1xx heads on the way.
    async fn attempt(
        &mut self,
        head: &RequestHead,
        upgrade: bool,
        framer: &mut BodyFramer,
        up: &mut Upstream,
        out: PooledBuf,
    ) -> Attempt {
        let limit = self.ctx.timeouts.upstream_response;
        // Only the access log reports the app's own time: no clock read without it.
        let asked = self.info.is_some().then(StdInstant::now);
        let (sent, out) = write_up(&mut up.wr, out, limit).await;
        if let Err(e) = sent {
            return Attempt {
                result: Err(e.into()),
                answered: false,
                resend: out,
            };
        }
        let mut upbuf = PooledBuf::take();
        let mut early = false;
        let mut resend = out;
        if !framer.is_done() {
            // From here on the app may have taken body bytes that only the client has.
            resend = None;
            match self.send_body_watching(framer, up, upbuf).await {
                Ok((buf, answered_early)) => {
                    upbuf = buf;
                    early = answered_early;
                }
                Err(e) => {
                    return Attempt {
                        result: Err(e),
                        answered: true,
                        resend,
                    }
                }
            }
        }
        let read = self
            .read_response_head(head, upgrade, up, upbuf, limit)
            .await;
        self.tally.upstream = asked.map(|t| t.elapsed());
        match read {
            Ok((resp, upbuf)) => Attempt {
                result: Ok(Answer {
                    head: resp,
                    upbuf,
                    early,
                }),
                answered: true,
                resend,
            },
            Err((e, answered)) => Attempt {
                result: Err(e),
                answered,
                resend,
            },
        }
    }

    /// Streams the rest of the request body to the app while reading from it. Returns the
    /// bytes the app sent (empty when the body went out first; then the response is read
    /// next) and whether they came before the body was all sent.
    async fn send_body_watching(
        &mut self,
        framer: &mut BodyFramer,
        up: &mut Upstream,
        upbuf: PooledBuf,
    ) -> Result<(PooledBuf, bool), ProxyError> {
        let limit = self.ctx.timeouts.upstream_response;
        let idle = self.ctx.timeouts.keep_alive;
        let Upstream { rd, wr, .. } = up;
        // One read stays in flight for the whole body: dropping a read the kernel may already
        // have completed would lose the app's bytes.
        let mut answer = std::pin::pin!(read_up(rd, upbuf, None));
        let mut body = std::pin::pin!(send_body(&mut self.client, framer, wr, limit, idle));
        monoio::select! {
            sent = &mut body => match sent {
                // The body is out; the response head is read next (the read in flight is
                // dropped only here, before any byte of it could matter: see below).
                Ok(()) => {}
                // The app broke our write: an app refusing the body answers, then closes;
                // its answer may be on its way. (An app that merely stopped reading had all
                // of `upstream_response` to answer while the read was in flight.)
                Err(e @ ProxyError::Upstream(UpstreamError::Io(_))) => {
                    return match monoio::time::timeout(EARLY_ANSWER_GRACE, &mut answer).await {
                        Ok((Ok(n), Some(buf))) if n > 0 => Ok((buf, true)),
                        _ => Err(e),
                    };
                }
                Err(e) => return Err(e),
            },
            read = &mut answer => return match read {
                (Ok(n), Some(buf)) if n > 0 => Ok((buf, true)),
                (Ok(_), _) => Err(UpstreamError::ClosedEarly.into()),
                (Err(e), _) => Err(e.into()),
            },
        }
        // The body went out first. The read still in flight is awaited, not dropped: it may
        // already hold the start of the response.
        match monoio::time::timeout(limit, answer).await {
            Ok((Ok(n), Some(buf))) if n > 0 => Ok((buf, false)),
            Ok((Ok(_), _)) => Err(UpstreamError::ClosedEarly.into()),
            Ok((Err(e), _)) => Err(e.into()),
            Err(_) => Err(UpstreamError::Timeout.into()),
        }
    }

    /// Reads the final response head (`upbuf` may already hold its start); 1xx heads are
    /// forwarded (or swallowed) on the way. On failure, says whether any byte was read.
    async fn read_response_head(
        &mut self,
        head: &RequestHead,
        upgrade: bool,
        up: &mut Upstream,
        mut upbuf: PooledBuf,
        limit: Duration,
    ) -> Result<(ResponseHead, PooledBuf), (ProxyError, bool)> {
        let deadline = Instant::now() + limit;
        let mut read_any = !upbuf.is_empty();
        loop {
            if !upbuf.is_empty() {
                let parsed = if upgrade {
                    response::parse_upgrade_response(&upbuf, &self.ctx.limits)
                } else {
                    response::parse_response(&upbuf, head.is_head(), &self.ctx.limits)
                };
                match parsed {
                    Ok(Parse::Complete(resp)) if resp.is_informational() => {
                        // Our own 100 Continue already went out; others (103) go to 1.1 clients.
                        if resp.status() != 100 && !head.is_http10() {
                            let mut out = PooledBuf::take();
                            resp.write_client(&upbuf, true, false, &mut out);
                            let tls = &mut self.client.tls;
                            let sent = match tls.write_plain(&out).await {
                                Ok(()) => tls.flush().await,
                                Err(e) => Err(e),
                            };
                            sent.map_err(|e| (ClientError::Io(e).into(), true))?;
                        }
                        upbuf.drain(..resp.head_len());
                        continue;
                    }
                    Ok(Parse::Complete(resp)) => return Ok((resp, upbuf)),
                    Ok(Parse::Partial) => {}
                    Err(e) => return Err((UpstreamError::BadHead(e).into(), true)),
                }
            }
            let (res, buf) = read_up(&mut up.rd, upbuf, Some(deadline)).await;
            match (res, buf) {
                (Ok(n), Some(buf)) if n > 0 => {
                    upbuf = buf;
                    read_any = true;
                }
                (Ok(_), _) => return Err((UpstreamError::ClosedEarly.into(), read_any)),
                (Err(e), _) => return Err((e.into(), read_any)),
            }
        }
    }

    /// The app accepted the upgrade: its 101 goes to the client, then both connections carry
    /// the new protocol, relayed as bytes until both sides are done (see `tunnel`).
    async fn switch(&mut self, answer: Answer, up: Upstream) -> Result<Next, ProxyError> {
        let Answer {
            head: resp, upbuf, ..
        } = answer;
        let mut out = PooledBuf::take();
        resp.write_client(&upbuf, false, false, &mut out);
        self.tally.status = resp.status();
        self.tally.bytes_out += out.len() as u64;
        let tls = &mut self.client.tls;
        tls.write_plain(&out).await.map_err(ClientError::Io)?;
        tls.flush().await.map_err(ClientError::Io)?;
        self.response_started = true;
        let pending = self.client.pending().len();
        let to_app = &self.client.inbuf.get_ref()[self.client.start..][..pending];
        let (sent, received) = tunnel::relay(
            &mut self.client.tls,
            up,
            to_app,
            &upbuf[resp.head_len()..],
            self.ctx.tunnel_idle,
        )
        .await;
        self.client.received += sent;
        self.tally.bytes_out += received;
        self.client.start += pending;
        // The tunnel ended both directions; only close_notify (if not sent yet) and FIN remain.
        Ok(Next::Close)
    }

    /// Sends the response head and body to the client. Returns whether the upstream connection
    /// ended exactly at the end of the response and may be pooled.
    async fn relay_response(
        &mut self,
        head: &RequestHead,
        answer: Answer,
        client_keep_alive: bool,
        up: &mut Upstream,
    ) -> Result<bool, ProxyError> {
        let Answer {
            head: resp,
            mut upbuf,
            ..
        } = answer;
        let limit = self.ctx.timeouts.upstream_response;
        let mut framer = BodyFramer::response(*resp.body(), head.is_http10());
        let mut out = PooledBuf::take();
        resp.write_client(&upbuf, client_keep_alive, head.is_http10(), &mut out);
        let mut pos = resp.head_len();
        // The first body bytes, when few, share the head's TLS record (one seal, not two).
        if !framer.is_done() {
            let first = &upbuf[pos..upbuf.len().min(pos + COALESCE_MAX)];
            let adv = framer
                .advance(first, &mut out)
                .map_err(UpstreamError::BadBody)?;
            out.extend_from_slice(&first[adv.forward]);
            pos += adv.consumed;
        }
        self.tally.status = resp.status();
        self.tally.bytes_out += out.len() as u64;
        let tls = &mut self.client.tls;
        tls.write_plain(&out).await.map_err(ClientError::Io)?;
        self.response_started = true;

        let mut clean_end = true;
        while !framer.is_done() {
            out.clear();
            let adv = framer
                .advance(&upbuf[pos..], &mut out)
                .map_err(UpstreamError::BadBody)?;
            let forward = &upbuf[pos..][adv.forward.clone()];
            for piece in [&out[..], forward] {
                if !piece.is_empty() {
                    self.tally.bytes_out += piece.len() as u64;
                    tls.write_plain(piece).await.map_err(ClientError::Io)?;
                }
            }
            pos += adv.consumed;
            if !adv.needs_input() {
                continue;
            }
            // What was relayed so far goes out before waiting on the app: rustls holds
            // plaintext until its buffer fills, so a streaming (or stalling, or dying) app
            // would otherwise keep bytes from the client that it could already use.
            tls.flush().await.map_err(ClientError::Io)?;
            upbuf.drain(..pos);
            pos = 0;
            // A long body is read four records at a time; its last bytes, no more than it has.
            let want = framer.read_hint(buffers::BULK_READ).max(1024);
            if upbuf.capacity() - upbuf.len() < want {
                upbuf.reserve(want);
            }
            let (res, buf) = read_up(&mut up.rd, upbuf, Some(Instant::now() + limit)).await;
            match (res, buf) {
                (Ok(n), Some(buf)) if n > 0 => upbuf = buf,
                (Ok(_), Some(buf)) => {
                    framer.eof().map_err(|_| UpstreamError::Truncated)?;
                    upbuf = buf;
                    clean_end = false;
                }
                (Ok(_), None) => return Err(UpstreamError::Truncated.into()),
                (Err(UpstreamError::Timeout), _) => return Err(UpstreamError::BodyTimeout.into()),
                (Err(e), _) => return Err(e.into()),
            }
        }
        tls.flush().await.map_err(ClientError::Io)?;
        let leftover = upbuf.len() > pos;
        Ok(clean_end && !leftover && resp.upstream_keep_alive())
    }
}

/// Streams the rest of a request body from the client to the app: the framer says what to
/// forward; this only moves it.
async fn send_body<W: AsyncWriteRent>(
    client: &mut Client,
    framer: &mut BodyFramer,
    wr: &mut W,
    limit: Duration,
    idle: Duration,
) -> Result<(), ProxyError> {
    let mut out = PooledBuf::take();
    loop {
        out.clear();
        let adv = framer
            .advance(client.pending(), &mut out)
            .map_err(ClientError::BadBody)?;
        if !out.is_empty() {
            let (res, back) = write_up(wr, out, limit).await;
            res?;
            out = back.unwrap_or_else(PooledBuf::take);
        }
        client.forward(wr, adv.forward.clone(), limit).await?;
        client.consume(adv.consumed);
        if adv.done {
            return Ok(());
        }
        if adv.needs_input() {
            let want = framer.read_hint(buffers::BULK_READ);
            client.read_body(want, idle).await?;
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

#[path = "session_h2c.rs"]
mod h2c;
