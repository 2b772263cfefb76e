//! What an idle keep-alive mTLS connection holds, in heap bytes counted on the worker thread by
//! the unit tests' allocator (`crate::test_alloc`), not in resident memory: the real connection
//! task (`serve`) on a listener prepared from TOML as the binary prepares it (client
//! certificates accepted, session resumption on, the loadtest's settings), a blocking rustls
//! client presenting a certificate on its own thread, and the demo echo app as the upstream on
//! threads of its own. Only the worker thread's allocations count.
//!
//! Per-worker state that a first connection creates and later ones reuse (the buffer pool, the
//! parked upstream connection, the chain cache's entry for the client's certificate) is made
//! by a warm-up connection running the same requests before counting starts.

use std::io::Write;
use std::net::{TcpListener as StdListener, TcpStream as StdTcp};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::*;
use crate::demo::echo::EchoApp;
use crate::test_alloc::{asked, held};

/// One request: (request body bytes, response body bytes); no body means a GET.
type Exchange = (usize, usize);

/// One GET with a small answer, as `loadtest/idle_conns.py --requests 1` sends.
const ONE_REQUEST: &[Exchange] = &[(0, 3)];

/// 100 requests of mixed sizes, as `loadtest/idle_conns.py --mixed` sends them: downloads and
/// uploads (with a small answer) in turn, bodies from 1 KiB to 256 KiB, small ones most often,
/// then a 1 MiB download and a 1 MiB upload last, so what a large body leaves behind is still
/// there when the connection idles.
fn mixed_requests() -> Vec<Exchange> {
    const KIB: usize = 1024;
    let sizes = [1, 1, 1, 1, 2, 4, 8, 16, 64, 256].map(|k| k * KIB);
    (0..98)
        .map(|i: usize| {
            let size = sizes[(i / 2 * 3) % sizes.len()];
            if i % 2 == 0 {
                (0, size)
            } else {
                (size, 3)
            }
        })
        .chain([(0, 1024 * KIB), (1024 * KIB, 3)])
        .collect()
}

/// A worker's listener as the binary builds it from this TOML, with the echo app upstream.
struct Bench {
    ctx: Rc<ListenerCtx>,
    /// One runtime for every connection: the upstream pool keeps connections registered with it.
    rt: Runtime,
    client: Arc<ClientConfig>,
    _echo: EchoApp,
    dir: PathBuf,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Bench {
    /// `uring`: the io_uring driver (as the binary uses where the kernel has it), else epoll.
    fn new(uring: bool) -> Bench {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("certgate-idle-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let root = crate::pki::Ca::root("idle memory").expect("root");
        let server = root.server_cert(&["localhost"]).expect("server cert");
        let client = root.client_cert("idle-client").expect("client cert");
        std::fs::write(dir.join("server.pem"), &server.cert_pem).expect("write");
        std::fs::write(dir.join("server.key"), &server.key_pem).expect("write");
        let echo = EchoApp::start("127.0.0.1:0".parse().expect("addr")).expect("echo app");
        let toml = format!(
            r#"
[[listener]]
name = "idle"
bind = "127.0.0.1:0"
cert = "server.pem"
key = "server.key"
client_certificate_mode = "accept"
upstream = "{}"
session_resumption = true
"#,
            echo.addr
        );
        let config = crate::config::Config::from_toml(&toml, &dir).expect("config");
        let timeouts = config.timeouts;
        let plan = crate::app::prepare(config)
            .expect("prepare")
            .plans
            .remove(0);
        let mut ctx = context(plan.tls, plan.upstream);
        let c = Rc::get_mut(&mut ctx).expect("fresh context");
        c.cache = plan.cache;
        c.upstream_host = plan.upstream_host.into_bytes();
        c.timeouts = timeouts;
        let client = root.client_config(Some(&client));
        Bench {
            rt: Runtime::new(uring),
            ctx,
            client: Arc::new(client),
            _echo: echo,
            dir,
        }
    }

    /// What the worker thread spent on one connection that ran `script` and now idles, counted
    /// from before the accept to the idle wait, after a warm-up connection ran the same script
    /// and closed.
    fn run(&mut self, script: &[Exchange]) -> Spent {
        let listener = StdListener::bind("127.0.0.1:0").expect("bind");
        let (ctx, client) = (&self.ctx, &self.client);
        self.rt.block_on(async {
            let warm = Conn::start(&listener, ctx, client, script);
            warm.wait_done().await;
            warm.close().await;
            // The client thread and its channels are the test's, made before counting starts.
            let mut conn = Conn::client(&listener, client, script);
            let (held_before, asked_before) = (connection_bytes(), asked());
            conn.serve(&listener, ctx);
            conn.wait_done().await;
            let spent = Spent {
                idle: settled().await - held_before,
                asked: asked() - asked_before,
            };
            conn.close().await;
            spent
        })
    }
}

/// What a connection cost the worker thread's heap.
struct Spent {
    /// Bytes it holds while it idles.
    idle: isize,
    /// Bytes it asked the allocator for, from its accept until it idled.
    asked: usize,
}

/// The unit tests' runtime: the epoll driver, which every kernel has, or io_uring.
enum Runtime {
    Legacy(monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>>),
    Uring(monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>),
}

impl Runtime {
    fn new(uring: bool) -> Runtime {
        if uring {
            Runtime::Uring(
                monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                    .enable_timer()
                    .build()
                    .expect("io_uring runtime"),
            )
        } else {
            Runtime::Legacy(
                monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                    .enable_timer()
                    .build()
                    .expect("runtime"),
            )
        }
    }

    fn block_on<F: std::future::Future>(&mut self, f: F) -> F::Output {
        match self {
            Runtime::Legacy(rt) => rt.block_on(f),
            Runtime::Uring(rt) => rt.block_on(f),
        }
    }
}

/// A client connection being served, and its client thread.
struct Conn {
    task: Option<monoio::task::JoinHandle<()>>,
    client: thread::JoinHandle<()>,
    done: mpsc::Receiver<()>,
    close: mpsc::Sender<()>,
}

impl Conn {
    /// A client thread that connects and runs `script`, and its connection served.
    fn start(
        listener: &StdListener,
        ctx: &Rc<ListenerCtx>,
        client: &Arc<ClientConfig>,
        script: &[Exchange],
    ) -> Conn {
        let mut conn = Conn::client(listener, client, script);
        conn.serve(listener, ctx);
        conn
    }

    /// A client thread that connects to `listener` and runs `script`, then waits to close.
    fn client(listener: &StdListener, config: &Arc<ClientConfig>, script: &[Exchange]) -> Conn {
        let addr = listener.local_addr().expect("addr");
        let (done_tx, done) = mpsc::channel();
        let (close, close_rx) = mpsc::channel::<()>();
        let config = config.clone();
        let script = script.to_vec();
        let client = thread::spawn(move || {
            let mut c = connect_client(addr, config);
            for &(up, down) in &script {
                crate::demo::echo::request(&mut c, up, down).expect("exchange");
            }
            done_tx.send(()).expect("test alive");
            let _ = close_rx.recv();
            c.conn.send_close_notify();
            let _ = c.flush();
        });
        Conn {
            task: None,
            client,
            done,
            close,
        }
    }

    /// Accepts the client's connection and serves it as a worker does.
    fn serve(&mut self, listener: &StdListener, ctx: &Rc<ListenerCtx>) {
        let (accepted, peer) = listener.accept().expect("accept");
        let tcp = TcpStream::from_std(accepted).expect("monoio stream");
        self.task = Some(monoio::spawn(serve(tcp, peer, ctx.clone())));
    }

    /// Until the client has every response of its script.
    async fn wait_done(&self) {
        loop {
            match self.done.try_recv() {
                Ok(()) => return,
                Err(mpsc::TryRecvError::Empty) => {
                    monoio::time::sleep(Duration::from_millis(1)).await
                }
                Err(mpsc::TryRecvError::Disconnected) => panic!("the client thread failed"),
            }
        }
    }

    /// Lets the client close (after `wait_done`), and waits until the connection's task ends.
    async fn close(self) {
        let _ = self.close.send(());
        if let Some(task) = self.task {
            task.await;
        }
        self.client.join().expect("client thread");
    }
}

/// What this thread holds, less the free buffers in the worker's pool (a busier connection may
/// leave the pool a buffer larger; it is the worker's to lend to the next one).
fn connection_bytes() -> isize {
    held() - super::buffers::pooled_bytes() as isize
}

/// This thread's held bytes once the connection has gone idle: the client has its last
/// response when this is called, so the task is at most finishing its last exchange; wait
/// (running it) until the count stops moving.
async fn settled() -> isize {
    let mut last = connection_bytes();
    let mut same = 0;
    while same < 5 {
        monoio::time::sleep(Duration::from_millis(2)).await;
        let now = connection_bytes();
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

type Client = StreamOwned<ClientConnection, StdTcp>;

fn connect_client(addr: std::net::SocketAddr, config: Arc<ClientConfig>) -> Client {
    let mut tcp = StdTcp::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let name = ServerName::try_from("localhost").expect("name");
    let mut conn = ClientConnection::new(config, name).expect("client");
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).expect("client handshake");
    }
    StreamOwned::new(conn, tcp)
}

/// The binary's driver where the kernel has io_uring (`true`), and the epoll fallback.
fn drivers() -> &'static [bool] {
    if monoio::utils::detect_uring() {
        &[true, false]
    } else {
        &[false]
    }
}

/// A listener context with `tls` and `upstream` and defaults for the rest.
fn context(tls: Arc<ServerConfig>, upstream: SocketAddr) -> Rc<ListenerCtx> {
    super::tests::test_context(tls, upstream)
}

/// Heap bytes an idle keep-alive connection may hold after it served requests: what the
/// connection's task, its rustls state and everything else it keeps add up to (see the README's
/// performance section for the breakdown).
const IDLE_BUDGET: isize = 9 * 1024;

#[test]
fn idle_connection_holds_no_more_than_its_budget() {
    for &uring in drivers() {
        let mut bench = Bench::new(uring);
        let one = bench.run(ONE_REQUEST).idle;
        let mixed = bench.run(&mixed_requests()).idle;
        let driver = if uring { "io_uring" } else { "epoll" };
        eprintln!("{driver}: {one} bytes after one request, {mixed} after 100 mixed");
        assert!(
            one <= IDLE_BUDGET && mixed <= IDLE_BUDGET,
            "{driver}: an idle connection holds {one} bytes after one request and {mixed} \
             after 100 of mixed sizes; the budget is {IDLE_BUDGET}"
        );
    }
}

/// Heap bytes a small keep-alive request may ask the allocator for, once its connection is up:
/// the boxed future of the exchange (`Session::run`; 8.4 KiB, most of it monoio timers) and a
/// few small records, never a buffer grown for a long body's 64 KiB reads (a head read once
/// asked for one, and each request reallocated the ciphertext buffer: 92 KiB asked for).
const SMALL_REQUEST_ASK_BUDGET: usize = 12 * 1024;

#[test]
fn a_small_keep_alive_request_asks_the_allocator_for_little() {
    for &uring in drivers() {
        let mut bench = Bench::new(uring);
        // The difference between two connections cancels the handshake and the first request.
        let few = bench.run(&[(0, 3); 10]).asked;
        let many = bench.run(&[(0, 3); 60]).asked;
        let per_request = many.saturating_sub(few) / 50;
        let driver = if uring { "io_uring" } else { "epoll" };
        eprintln!("{driver}: {per_request} bytes asked for per small keep-alive request");
        assert!(
            per_request <= SMALL_REQUEST_ASK_BUDGET,
            "{driver}: a small keep-alive request asks the allocator for {per_request} bytes; \
             the budget is {SMALL_REQUEST_ASK_BUDGET}"
        );
    }
}
