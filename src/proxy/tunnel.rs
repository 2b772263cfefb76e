//! The byte relay between a TLS client and an upstream connection (plain or TLS), for a protocol certgate
//! does not speak: after an HTTP/1.1 upgrade (WebSocket) the two connections carry the new
//! protocol, and each byte is relayed as it is, both ways, until both sides are done.
//!
//! Half-close is honoured: the client's close_notify (or EOF) becomes a FIN to the app, and the
//! app's FIN becomes a close_notify to the client; the other direction keeps flowing until it
//! ends too. A tunnel with no byte in either direction for `idle` is closed.
//!
//! Ownership keeps the relay lossless without a second task: one read from the app stays in
//! flight the whole time (a future that owns the read half and its buffer, so dropping nothing
//! can lose bytes the kernel already delivered), while the client side is waited on by
//! readiness, which takes no bytes, and read only when data is there.

use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use tracing::debug;

use super::buffers::{PooledBuf, BUF_CAPACITY};
use super::tls_conn::TlsConn;
use super::upstream::{UpRead, Upstream};

/// Relays until both directions ended, a side failed, or nothing moved for `idle`. `to_app`
/// and `to_client` are bytes already read that belong to the tunnel (sent first). Returns
/// the plaintext bytes moved (client → app, app → client).
pub(crate) async fn relay(
    tls: &mut TlsConn,
    up: Upstream,
    to_app: &[u8],
    to_client: &[u8],
    idle: Duration,
) -> (u64, u64) {
    let Upstream { rd, mut wr, .. } = up;
    let mut moved = (0u64, 0u64);
    if !to_app.is_empty() {
        let (res, _) = wr.write_all(to_app.to_vec()).await;
        if res.is_err() {
            return moved;
        }
        moved.0 += to_app.len() as u64;
    }
    if !to_client.is_empty() {
        if tls.write_plain(to_client).await.is_err() || tls.flush().await.is_err() {
            return moved;
        }
        moved.1 += to_client.len() as u64;
    }

    let mut from_app = std::pin::pin!(read_app(rd, PooledBuf::take()));
    let mut app_open = true;
    let mut client_open = true;
    let mut plain = PooledBuf::take();
    while app_open || client_open {
        let client_ready = async {
            if tls.has_buffered_input() {
                Ok(())
            } else {
                tls.readable().await
            }
        };
        monoio::select! {
            read = &mut from_app, if app_open => {
                let (res, rd, mut buf) = read;
                match res {
                    Ok(n) if n > 0 => {
                        let sent = match tls.write_plain(&buf[..n]).await {
                            Ok(()) => tls.flush().await,
                            Err(e) => Err(e),
                        };
                        if let Err(e) = sent {
                            debug!("tunnel: client write failed: {e}");
                            break;
                        }
                        moved.1 += n as u64;
                        buf.clear();
                        from_app.set(read_app(rd, buf));
                    }
                    // The app is done sending: so is the client's side of the stream.
                    Ok(_) => {
                        app_open = false;
                        tls.send_close_notify();
                        if tls.flush().await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        debug!("tunnel: app read failed: {e}");
                        break;
                    }
                }
            },
            ready = client_ready, if client_open => {
                if ready.is_err() {
                    break;
                }
                plain.clear();
                match tls.read_plain(&mut plain, BUF_CAPACITY).await {
                    Ok(0) => {
                        // close_notify or EOF: the app gets a FIN and may still answer.
                        client_open = false;
                        let _ = wr.shutdown().await;
                    }
                    Ok(n) => {
                        let (res, back) = wr.write_all(plain).await;
                        plain = back;
                        if let Err(e) = res {
                            debug!("tunnel: app write failed: {e}");
                            break;
                        }
                        moved.0 += n as u64;
                    }
                    Err(e) => {
                        debug!("tunnel: client read failed: {e}");
                        break;
                    }
                }
            },
            _ = monoio::time::sleep(idle) => {
                debug!("tunnel idle for {idle:?}: closing");
                break;
            },
        }
    }
    moved
}

/// One read from the app into `buf`, owning the read half so the future can stay in flight
/// across the relay loop and hand both back.
async fn read_app(
    mut rd: UpRead,
    mut buf: PooledBuf,
) -> (std::io::Result<usize>, UpRead, PooledBuf) {
    buf.clear();
    let cap = buf.capacity();
    let (res, slice) = rd.read(buf.slice_mut(0..cap)).await;
    (res, rd, slice.into_inner())
}
