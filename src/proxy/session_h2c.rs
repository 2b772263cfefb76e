//! An HTTP/1.1 exchange forwarded to an h2c upstream (`upstream_protocol = "h2c"`): the
//! request head becomes an HTTP/2 header section under the same field rules, the body goes as
//! DATA (de-chunked), and the answer comes back as an HTTP/1.1 response, chunked with its
//! trailers when the app sent no length. Requests are sent whole before the answer is read;
//! streaming both ways at once is what HTTP/2 clients get.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Uri, Version};

use super::{Next, Session};
use crate::http::request::{role, RequestHead, Role};
use crate::http::{push_decimal, BodyFramer, HttpError};
use crate::proxy::error::{ClientError, ProxyError, UpstreamError};
use crate::proxy::h2::{identity_fields, next_chunk, send_all, H2cPool, RecvFailed, SendFailed};

/// Response fields that describe the HTTP/2 connection, not the message.
const CONNECTION_SPECIFIC: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
];

impl Session {
    pub(super) async fn exchange_h2c(
        &mut self,
        pool: &H2cPool,
        head: RequestHead,
        target: Option<Vec<u8>>,
    ) -> Result<Next, ProxyError> {
        let ctx = self.ctx.clone();
        let request = self.h2c_request(&head, target.as_deref())?;
        let mut framer = BodyFramer::request_data(*head.body());
        self.client.consume(head.head_len());
        if head.expect_continue() && !framer.is_done() {
            self.client.continue_100().await?;
        }
        let sent_at = std::time::Instant::now();
        let (response, mut send) = pool.open(&ctx, request, framer.is_done()).await?;
        let stall = ctx.timeouts.keep_alive;
        let upstream_stalled = |e: SendFailed| -> ProxyError {
            match e {
                SendFailed::Stream(e) => UpstreamError::H2(e).into(),
                SendFailed::Stalled => UpstreamError::WriteStalled.into(),
            }
        };
        while !framer.is_done() {
            let pending = self.client.pending();
            let mut unused = Vec::new();
            let adv = framer
                .advance(pending, &mut unused)
                .map_err(ClientError::BadBody)?;
            let data = Bytes::copy_from_slice(&pending[adv.forward.clone()]);
            self.client.consume(adv.consumed);
            if !data.is_empty() || adv.done {
                send_all(&mut send, data, adv.done, stall)
                    .await
                    .map_err(upstream_stalled)?;
            }
            if adv.needs_input() {
                let max = crate::proxy::buffers::BUF_CAPACITY;
                self.client.read_body(max, stall).await?;
            }
        }
        let response = monoio::time::timeout(ctx.timeouts.upstream_response, response)
            .await
            .map_err(|_| UpstreamError::Timeout)?
            .map_err(UpstreamError::H2)?;
        self.tally.upstream = Some(sent_at.elapsed());
        let (parts, mut body) = response.into_parts();
        let status = parts.status.as_u16();
        self.tally.status = status;

        let bodiless = head.is_head() || status == 204 || status == 304 || status < 200;
        let length = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let http10 = head.is_http10();
        // HTTP/1.0 clients cannot take chunks: a body of unknown length ends with the close.
        let chunked = !bodiless && length.is_none() && !http10;
        let keep_alive = head.keep_alive() && (bodiless || length.is_some() || chunked);
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"HTTP/1.1 ");
        push_decimal(u64::from(status), &mut out);
        out.push(b' ');
        out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in &parts.headers {
            if CONNECTION_SPECIFIC.contains(&name.as_str()) {
                continue;
            }
            push_field(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
        if chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if http10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        self.response_started = true;
        self.tally.bytes_out += out.len() as u64;
        let tls = &mut self.client.tls;
        tls.write_plain(&out).await.map_err(ClientError::Io)?;
        if !bodiless {
            let read_stall = ctx.timeouts.upstream_response;
            loop {
                let chunk = match next_chunk(&mut body, read_stall).await {
                    Ok(chunk) => chunk,
                    Err(RecvFailed::Stalled) => return Err(UpstreamError::BodyTimeout.into()),
                    Err(RecvFailed::Stream(e)) => return Err(UpstreamError::H2(e).into()),
                };
                let Some(chunk) = chunk else { break };
                if chunk.is_empty() {
                    continue;
                }
                out.clear();
                if chunked {
                    crate::http::chunked::write_chunk_header(chunk.len(), &mut out);
                }
                out.extend_from_slice(&chunk);
                if chunked {
                    out.extend_from_slice(b"\r\n");
                }
                self.tally.bytes_out += out.len() as u64;
                tls.write_plain(&out).await.map_err(ClientError::Io)?;
            }
            if chunked {
                // The last chunk, with the app's trailers (gRPC status) as the trailer section.
                out.clear();
                out.extend_from_slice(b"0\r\n");
                let trailers = std::future::poll_fn(|cx| body.poll_trailers(cx))
                    .await
                    .map_err(UpstreamError::H2)?;
                for (name, value) in trailers.iter().flatten() {
                    push_field(&mut out, name.as_str().as_bytes(), value.as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                self.tally.bytes_out += out.len() as u64;
                tls.write_plain(&out).await.map_err(ClientError::Io)?;
            }
        }
        tls.flush().await.map_err(ClientError::Io)?;
        Ok(if keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        })
    }

    /// The HTTP/2 request for `head`: `:authority` from Host, the field rules of
    /// `write_upstream` (managed, identity and hop-by-hop names dropped, forwarding merged),
    /// then the connection's identity fields.
    fn h2c_request(
        &self,
        head: &RequestHead,
        target: Option<&[u8]>,
    ) -> Result<Request<()>, ProxyError> {
        let buf = self.client.pending();
        let bad = || ProxyError::from(ClientError::BadHead(HttpError::BadRequestLine));
        let authority = head.host(buf).unwrap_or(&self.ctx.upstream_host);
        let uri = Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(target.unwrap_or(head.target(buf)))
            .build()
            .map_err(|_| bad())?;
        let mut request = Request::new(());
        *request.method_mut() = Method::from_bytes(head.method(buf)).map_err(|_| bad())?;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_2;
        let headers = request.headers_mut();
        let mut forwarded_for = Vec::new();
        let mut forwarded = Vec::new();
        for (name, value) in head.fields(buf) {
            // `te: trailers` says the client takes trailers (it reads chunked ones): an h2c
            // app (gRPC) requires it, and it is the one `te` value HTTP/2 allows.
            if name.eq_ignore_ascii_case(b"te")
                && crate::http::list_items(value).any(|t| t.eq_ignore_ascii_case(b"trailers"))
            {
                headers.append(http::header::TE, HeaderValue::from_static("trailers"));
                continue;
            }
            let merged = match role(name) {
                Role::Keep => {
                    let (Ok(name), Ok(value)) =
                        (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
                    else {
                        return Err(ClientError::BadHead(HttpError::BadHeaderValue).into());
                    };
                    headers.append(name, value);
                    continue;
                }
                Role::ForwardedFor => &mut forwarded_for,
                Role::Forwarded => &mut forwarded,
                Role::Host | Role::Drop => continue,
            };
            if !value.is_empty() {
                merged.extend_from_slice(value);
                merged.extend_from_slice(b", ");
            }
        }
        forwarded_for.extend_from_slice(&self.client_addr);
        forwarded.extend_from_slice(&self.forwarded);
        for (name, value) in [
            (
                http::header::HeaderName::from_static("x-forwarded-for"),
                forwarded_for,
            ),
            (http::header::FORWARDED, forwarded),
            (
                http::header::HeaderName::from_static("x-forwarded-proto"),
                b"https".to_vec(),
            ),
        ] {
            let value = HeaderValue::from_bytes(&value).map_err(|_| bad())?;
            headers.append(name, value);
        }
        if let Some(block) = &self.xfcc_line {
            for (name, value) in identity_fields(block) {
                headers.append(name, value);
            }
        }
        Ok(request)
    }
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}
