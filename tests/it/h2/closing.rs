//! A Rust HTTP/2 client (the `h2` crate over tokio-rustls, as hyper and tonic clients run it)
//! against certgate: the exact identity header, and how HTTP/2 connections end: GOAWAY after
//! `keep_alive` idle, on a reload, and on shutdown, with open streams finishing first.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use http::Request;
use tokio_rustls::TlsConnector;

use super::{expected, front, xfcc_of};
use crate::support::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The test client's TLS config with ALPN `h2` (and the valid client certificate).
fn h2_config(cert: ClientCert) -> Arc<rustls::ClientConfig> {
    let mut config = (*client_config(cert, false)).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// An HTTP/2 connection to `addr`; the second value ends when the connection does.
async fn connect(
    addr: SocketAddr,
    cert: ClientCert,
) -> (
    SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = TlsConnector::from(h2_config(cert))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    (send, tokio::spawn(conn))
}

/// GET `path`; the status and the body.
async fn get(send: &mut SendRequest<Bytes>, path: &str) -> Result<(u16, Vec<u8>), h2::Error> {
    let request = Request::get(format!("https://localhost{path}"))
        .body(())
        .unwrap();
    let (response, _) = send.clone().ready().await?.send_request(request, true)?;
    let response = response.await?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    Ok((status, bytes))
}

#[test]
fn a_rust_h2_client_sees_the_exact_identity_reach_the_app() {
    let running = front("require", "", "");
    runtime().block_on(async {
        let (mut send, _conn) = connect(running.addr, ClientCert::Valid).await;
        let (status, body) = get(&mut send, "/who").await.unwrap();
        assert_eq!(status, 200);
        let text = String::from_utf8_lossy(&body);
        let head = text.split("body-bytes:").next().unwrap();
        assert_eq!(xfcc_of(head), vec![expected()], "{head}");
    });
}

#[test]
fn an_idle_h2_connection_gets_goaway_after_keep_alive() {
    let running = front("ignore", "", "[timeouts]\nkeep_alive = \"1s\"\n");
    runtime().block_on(async {
        let (mut send, conn) = connect(running.addr, ClientCert::None).await;
        assert_eq!(get(&mut send, "/x").await.unwrap().0, 200);
        let idle_from = Instant::now();
        // A graceful GOAWAY ends the client's connection future cleanly; without it the
        // connection would stay open for good.
        let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
        let waited = idle_from.elapsed();
        assert!(
            matches!(ended, Ok(Ok(Ok(())))),
            "{ended:?} after {waited:?}"
        );
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    });
}

/// certgate as its own process (signals) with one HTTP listener in front of a fresh echo app.
fn spawn_binary(extra: &str) -> (Proc, SocketAddr, certgate::demo::echo::EchoApp) {
    let dir = temp_dir("h2-closing");
    write_pki(&dir);
    let echo = echo_app();
    let port = reserve_port();
    let text = format!(
        "{}[[listener]]\nbind = \"127.0.0.1:{port}\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
         upstream = \"{}\"\n",
        server_toml(1, extra),
        echo.addr
    );
    let mut proc = Proc::spawn(&dir, &text, |_| {});
    let addr = proc.wait_tcp(port);
    (proc, addr, echo)
}

/// A large download in flight when the connection is told to go: it must finish, and the
/// connection must end (GOAWAY) rather than wait for another stream.
async fn download_survives(addr: SocketAddr, act: impl FnOnce()) {
    let (send, conn) = connect(addr, ClientCert::None).await;
    let size = 8 * 1024 * 1024;
    let request = Request::get(format!("https://localhost/bytes/{size}"))
        .body(())
        .unwrap();
    let (response, _) = send
        .ready()
        .await
        .unwrap()
        .send_request(request, true)
        .unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = 0usize;
    let mut act = Some(act);
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("the open stream finishes");
        let _ = body.flow_control().release_capacity(chunk.len());
        received += chunk.len();
        if received > 1024 * 1024 {
            if let Some(act) = act.take() {
                act();
                // The stream stays open well after the signal (its GOAWAY is in by then).
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    assert_eq!(received, size);
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
}

#[test]
fn a_reload_sends_goaway_and_the_open_stream_finishes() {
    let (mut proc, addr, _echo) = spawn_binary("");
    runtime().block_on(download_survives(addr, || proc.signal(libc::SIGHUP)));
    assert!(proc.wait_reloads(1).contains("reloaded"));
    // New connections are served by the new generation.
    runtime().block_on(async {
        let (mut send, _conn) = connect(addr, ClientCert::None).await;
        assert_eq!(get(&mut send, "/after").await.unwrap().0, 200);
    });
}

#[test]
fn shutdown_sends_goaway_and_lets_the_open_stream_finish() {
    let (mut proc, addr, _echo) = spawn_binary("[timeouts]\nshutdown_grace = \"20s\"\n");
    runtime().block_on(download_survives(addr, || proc.signal(libc::SIGTERM)));
    let until = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = proc.child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < until, "certgate did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

/// An app that answers as soon as it has the head (a 413 for an upload it will not take),
/// without reading the body, then drops the connection.
fn early_answering_app() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big\n",
                );
                std::thread::sleep(Duration::from_millis(200));
            });
        }
    });
    addr
}

#[test]
fn an_app_that_answers_an_upload_early_gets_its_answer_to_the_client() {
    let running = super::front_to("ignore", Some(early_answering_app()), "", "");
    runtime().block_on(async {
        let (send, _conn) = connect(running.addr, ClientCert::None).await;
        for _ in 0..5 {
            let request = Request::post("https://localhost/upload").body(()).unwrap();
            let (response, mut upload) = send
                .clone()
                .ready()
                .await
                .unwrap()
                .send_request(request, false)
                .unwrap();
            // Send as much of 4 MiB as the windows take; the answer comes regardless.
            let sending = async {
                let mut left = 4usize << 20;
                while left > 0 {
                    upload.reserve_capacity(left.min(64 * 1024));
                    let Some(Ok(n)) = std::future::poll_fn(|cx| upload.poll_capacity(cx)).await
                    else {
                        return;
                    };
                    let n = n.min(left);
                    if upload
                        .send_data(Bytes::from(vec![b'x'; n]), n == left)
                        .is_err()
                    {
                        return;
                    }
                    left -= n;
                }
            };
            let answered = async {
                let response = response.await.expect("the app's answer, not a reset");
                let status = response.status().as_u16();
                let mut body = response.into_body();
                let mut bytes = Vec::new();
                while let Some(Ok(chunk)) = body.data().await {
                    bytes.extend_from_slice(&chunk);
                }
                (status, bytes)
            };
            let ((status, bytes), ()) = tokio::join!(answered, async {
                let _ = tokio::time::timeout(Duration::from_secs(5), sending).await;
            });
            assert_eq!(status, 413);
            assert_eq!(bytes, b"too big\n");
        }
    });
}
