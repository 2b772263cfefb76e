//! The TLS stream over a real socket pair on 127.0.0.1: certgate's side runs on a monoio
//! runtime, the client is a blocking rustls client on a thread. Partial writes, a failed
//! write, close_notify against a bare EOF, and bytes after close_notify.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream as StdTcp};
use std::sync::{Arc, OnceLock};
use std::thread;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig, StreamOwned};

use super::*;

struct Pki {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let root = crate::pki::Ca::root("tls_conn test").expect("root");
        let cert = root.server_cert(&["localhost"]).expect("server cert");
        let server = ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert_der.clone()], cert.key_der.clone_key())
            .expect("server config");
        let client = root.client_config(None);
        Pki {
            server: Arc::new(server),
            client: Arc::new(client),
        }
    })
}

type Client = StreamOwned<ClientConnection, StdTcp>;

/// Runs `server` on a monoio runtime against a client driven by `client` on a thread, over a
/// fresh TCP connection; returns what each side returned.
fn run_pair<S, C, T, U>(server: S, client: C) -> (T, U)
where
    S: AsyncFnOnce(TlsConn) -> T,
    C: FnOnce(Client) -> U + Send + 'static,
    U: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let client = thread::spawn(move || {
        let tcp = StdTcp::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        let name = ServerName::try_from("localhost").expect("name");
        let mut conn = ClientConnection::new(pki().client.clone(), name).expect("client");
        let mut tcp = tcp;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).expect("client handshake");
        }
        client(StreamOwned::new(conn, tcp))
    });
    let (accepted, _) = listener.accept().expect("accept");
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("runtime");
    let out = rt.block_on(async move {
        let tcp = TcpStream::from_std(accepted).expect("monoio stream");
        let mut tls = TlsConn::new(
            tcp,
            rustls::ServerConnection::new(pki().server.clone()).expect("server"),
        );
        tls.handshake(&Default::default()).await.expect("handshake");
        server(tls).await
    });
    (out, client.join().expect("client thread"))
}

#[test]
fn large_writes_arrive_whole_through_partial_socket_writes() {
    // 4 MiB against a client that reads in small, slow bites: the kernel takes each write in
    // pieces, and every piece must go out once, in order.
    const LEN: usize = 4 << 20;
    let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let expected = data.clone();
    let (_, got) = run_pair(
        async move |mut tls: TlsConn| {
            tls.write_plain(&data).await.expect("write");
            tls.close().await;
        },
        |mut c: Client| {
            let mut got = Vec::new();
            let mut bite = [0u8; 777];
            loop {
                match c.read(&mut bite) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&bite[..n]),
                    Err(e) => panic!("client read: {e}"),
                }
            }
            got
        },
    );
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "bytes differ");
}

#[test]
fn a_failed_write_marks_the_stream_dead() {
    let (results, ()) = run_pair(
        async move |mut tls: TlsConn| {
            let mut results = Vec::new();
            // Tell the client the handshake is done here too, so its reset comes after it.
            tls.write_plain(b"go").await.expect("go");
            tls.flush().await.expect("go");
            // Write until the reset client makes a write fail.
            let chunk = vec![7u8; 64 * 1024];
            for _ in 0..1000 {
                let r = tls.write_plain(&chunk).await.and(tls.flush().await);
                if let Err(e) = r {
                    results.push(e.kind());
                    break;
                }
                monoio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            // Later writes fail at once: no record goes out after a lost one.
            results.push(tls.write_plain(b"x").await.unwrap_err().kind());
            results.push(tls.flush().await.unwrap_err().kind());
            results
        },
        |mut c: Client| {
            let mut go = [0u8; 2];
            c.read_exact(&mut go).expect("go");
            let (_, tcp) = c.into_parts();
            // SO_LINGER 0: close with a reset.
            socket2::SockRef::from(&tcp)
                .set_linger(Some(std::time::Duration::ZERO))
                .expect("linger");
            drop(tcp);
        },
    );
    assert_eq!(results.len(), 3, "{results:?}");
    assert_eq!(results[1], std::io::ErrorKind::BrokenPipe);
    assert_eq!(results[2], std::io::ErrorKind::BrokenPipe);
}

#[test]
fn close_notify_and_bare_eof_both_end_the_stream() {
    for clean in [true, false] {
        let (reads, ()) = run_pair(
            async move |mut tls: TlsConn| {
                let mut buf = Vec::new();
                let first = tls.read_plain(&mut buf, 1024).await.expect("data");
                let end = tls.read_plain(&mut buf, 1024).await;
                (first, buf, end.map_err(|e| e.kind()))
            },
            move |mut c: Client| {
                c.write_all(b"hello").expect("write");
                c.flush().expect("flush");
                if clean {
                    c.conn.send_close_notify();
                    c.conn.complete_io(&mut c.sock).expect("close_notify");
                }
                c.sock.shutdown(Shutdown::Write).expect("fin");
                // Wait for the server's side to finish before dropping.
                let _ = c.sock.read(&mut [0u8; 64]);
            },
        );
        assert_eq!(reads, (5, b"hello".to_vec(), Ok(0)), "clean={clean}");
    }
}

#[test]
fn bytes_after_close_notify_are_not_delivered() {
    let (end, ()) = run_pair(
        async move |mut tls: TlsConn| {
            let mut buf = Vec::new();
            let n = tls.read_plain(&mut buf, 1024).await;
            (n.map_err(|e| e.kind()), buf)
        },
        |mut c: Client| {
            c.conn.send_close_notify();
            c.conn.complete_io(&mut c.sock).expect("close_notify");
            // An application-data record header and junk after the close: never plaintext.
            c.sock
                .write_all(b"\x17\x03\x03\x00\x05junk!")
                .expect("junk");
            let _ = c.sock.read(&mut [0u8; 64]);
        },
    );
    let (n, buf) = end;
    assert!(buf.is_empty(), "delivered {buf:?}");
    assert_eq!(n, Ok(0));
}

#[test]
fn close_sends_close_notify_then_fin() {
    let ((), outcome) = run_pair(
        async move |mut tls: TlsConn| {
            tls.write_plain(b"bye").await.expect("write");
            tls.close().await;
            // Still open for reading: the client's own close must not meet a reset.
            let mut buf = Vec::new();
            let _ = tls.read_plain(&mut buf, 64).await;
        },
        |mut c: Client| {
            let mut got = Vec::new();
            // rustls reports a missing close_notify as UnexpectedEof; a clean end is Ok(0).
            let end = c.read_to_end(&mut got).map_err(|e| e.kind());
            (got, end)
        },
    );
    assert_eq!(outcome, (b"bye".to_vec(), Ok(3)));
}
