//! Thread-per-core workers: each owns a monoio runtime, its own `SO_REUSEPORT` socket per
//! listener, its upstream pools and every connection it accepts, from accept to close.
//!
//! Sockets are bound on the calling thread before any worker starts, so a bad address fails
//! startup with a clear error, and port 0 resolves to one port shared by all workers.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

use monoio::io::AsyncReadRent;
use monoio::net::{TcpListener, UnixStream};
use rustls::ServerConfig;
use tracing::{debug, info, warn};

use crate::config::{Config, Timeouts};
use crate::http::request::Limits;
use crate::proxy::{self, upstream::Pool, ListenerCtx};
use crate::tls::cache::Stats as CacheStats;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("listener {listener}: cannot listen on {addr}: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start worker thread: {0}")]
    Spawn(std::io::Error),
}

/// A shutdown flag that tasks of one worker can wait on. Single-threaded: `Rc` + `Cell`.
/// A waiting task's waker is removed when its wait ends, so the many short idle waits of a
/// long-lived keep-alive connection leave nothing behind.
#[derive(Default)]
pub struct Shutdown {
    set: Cell<bool>,
    waiters: RefCell<Slab>,
}

#[derive(Default)]
struct Slab {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Shutdown {
    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    pub fn trigger(&self) {
        self.set.set(true);
        for w in self.waiters.borrow_mut().slots.iter_mut() {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
    }

    /// Resolves once `trigger` was called.
    pub fn wait(&self) -> ShutdownWait<'_> {
        ShutdownWait {
            shutdown: self,
            slot: None,
        }
    }
}

pub struct ShutdownWait<'a> {
    shutdown: &'a Shutdown,
    slot: Option<usize>,
}

impl Future for ShutdownWait<'_> {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.shutdown.set.get() {
            return Poll::Ready(());
        }
        let mut slab = this.shutdown.waiters.borrow_mut();
        let waker = Some(cx.waker().clone());
        match this.slot {
            Some(i) => slab.slots[i] = waker,
            None => {
                let i = match slab.free.pop() {
                    Some(i) => {
                        slab.slots[i] = waker;
                        i
                    }
                    None => {
                        slab.slots.push(waker);
                        slab.slots.len() - 1
                    }
                };
                this.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for ShutdownWait<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let mut slab = self.shutdown.waiters.borrow_mut();
            slab.slots[i] = None;
            slab.free.push(i);
        }
    }
}

/// Wakes every task waiting on it, each time it is notified (single-threaded).
#[derive(Default)]
struct Event {
    generation: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
}

impl Event {
    fn notify(&self) {
        self.generation.set(self.generation.get() + 1);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Resolves at the next `notify` after this call.
    fn wait(&self) -> impl Future<Output = ()> + '_ {
        let seen = self.generation.get();
        std::future::poll_fn(move |cx: &mut Context<'_>| {
            if self.generation.get() != seen {
                Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

/// Counts a worker's open connections and lets the accept loop wait for a free slot.
#[derive(Default)]
struct ConnGauge {
    open: Cell<usize>,
    freed: Event,
}

struct ConnGuard(Rc<ConnGauge>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get() - 1);
        // Wake whoever waits for a slot (accept loop) or for zero (drain).
        self.0.freed.notify();
    }
}

/// What every worker gets for one listener.
#[derive(Clone)]
pub struct ListenerPlan {
    pub name: String,
    pub tls: Arc<ServerConfig>,
    pub cache: crate::tls::cache::CacheConfig,
    pub upstream: SocketAddr,
    /// The upstream as written in the config (`host:port`).
    pub upstream_host: String,
}

/// A running server: its bound addresses, and the means to stop it.
pub struct Server {
    addrs: Vec<SocketAddr>,
    stop: Vec<StdUnixStream>,
    threads: Vec<JoinHandle<CacheStats>>,
}

impl Server {
    /// Local address of each listener, in config order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Stops accepting, lets in-flight requests finish (up to `shutdown_grace`), then returns
    /// each worker's verified-chain cache counts.
    pub fn shutdown(mut self) -> Vec<CacheStats> {
        self.stop.clear(); // Closing our ends wakes every worker with EOF.
        self.join()
    }

    /// Blocks until every worker has exited.
    pub fn join(mut self) -> Vec<CacheStats> {
        self.threads
            .drain(..)
            .filter_map(|t| t.join().ok())
            .collect()
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Binds every listener once per worker and starts the workers.
pub fn start(config: &Config, plans: Vec<ListenerPlan>) -> Result<Server, WorkerError> {
    let workers = config.worker_count();
    let uring = monoio::utils::detect_uring() && std::env::var_os("CERTGATE_EPOLL").is_none();
    if !uring {
        warn!("io_uring is unavailable: falling back to the epoll driver");
    }
    // sockets[w][l]: worker w's socket for listener l.
    let mut sockets: Vec<Vec<std::net::TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    let mut addrs = Vec::new();
    for (plan, listener) in plans.iter().zip(&config.listeners) {
        let mut addr = listener.bind;
        for per_worker in sockets.iter_mut() {
            let sock = bind(addr).map_err(|source| WorkerError::Bind {
                listener: plan.name.clone(),
                addr,
                source,
            })?;
            if addr.port() == 0 {
                addr = sock.local_addr().map_err(|source| WorkerError::Bind {
                    listener: plan.name.clone(),
                    addr,
                    source,
                })?;
            }
            per_worker.push(sock);
        }
        addrs.push(addr);
    }

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut stop = Vec::new();
    let mut threads = Vec::new();
    for (index, sockets) in sockets.into_iter().enumerate() {
        let (ours, theirs) = StdUnixStream::pair().map_err(WorkerError::Spawn)?;
        stop.push(ours);
        let plans = plans.clone();
        let settings = WorkerSettings {
            index,
            pin: config.server.pin_workers.then_some(index % cores),
            uring,
            timeouts: config.timeouts,
            limits: Limits {
                max_head_bytes: config.limits.max_request_header_bytes,
                max_headers: config.limits.max_headers,
            },
            max_connections: config.limits.max_connections_per_worker,
        };
        let thread = std::thread::Builder::new()
            .name(format!("certgate-w{index}"))
            .spawn(move || worker_main(settings, plans, sockets, theirs))
            .map_err(WorkerError::Spawn)?;
        threads.push(thread);
    }
    Ok(Server {
        addrs,
        stop,
        threads,
    })
}

struct WorkerSettings {
    index: usize,
    pin: Option<usize>,
    uring: bool,
    timeouts: Timeouts,
    limits: Limits,
    max_connections: usize,
}

fn worker_main(
    settings: WorkerSettings,
    plans: Vec<ListenerPlan>,
    sockets: Vec<std::net::TcpListener>,
    stop: StdUnixStream,
) -> CacheStats {
    let index = settings.index;
    if let Some(cpu) = settings.pin {
        match monoio::utils::bind_to_cpu_set([cpu]) {
            Ok(()) => info!(worker = settings.index, cpu, "worker pinned to CPU {cpu}"),
            Err(e) => warn!(
                worker = settings.index,
                "could not pin worker to CPU {cpu}: {e:?}"
            ),
        }
    }
    let uring = settings.uring;
    let run = worker_loop(settings, plans, sockets, stop);
    // The two drivers are different types; the worker body is the same future.
    if uring {
        // Cooperative task running: the kernel no longer interrupts the worker (an IPI in a
        // VM) each time a completion arrives from another CPU; completions are collected on
        // the worker's next io_uring_enter. Keep-alive TLS on one core: 23 → 13 µs of CPU per
        // request and 38k → 64k req/s in the same A/B run (wrk -c32, loopback upstream).
        // Kernels before 5.19 reject the flag: then a plain ring.
        let mut coop = io_uring::IoUring::builder();
        coop.setup_coop_taskrun().setup_taskrun_flag();
        let built = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(1024)
            .uring_builder(coop)
            .enable_timer()
            .build()
            .or_else(|_| {
                monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                    .with_entries(1024)
                    .enable_timer()
                    .build()
            });
        match built {
            Ok(mut rt) => {
                rt.block_on(run);
                return report(index);
            }
            Err(e) => warn!("io_uring runtime failed ({e}): falling back to the epoll driver"),
        }
    }
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(mut rt) => rt.block_on(run),
        Err(e) => warn!("cannot build a worker runtime: {e}"),
    }
    report(index)
}

/// The worker's closing log line: its verified-chain cache counts (kept thread-local while
/// running, so reading them costs nothing on the handshake path).
fn report(index: usize) -> CacheStats {
    let stats = crate::tls::cache::stats();
    info!(
        worker = index,
        hits = stats.hits,
        misses = stats.misses,
        "worker stopped; verified-chain cache hits={} misses={}",
        stats.hits,
        stats.misses
    );
    stats
}

async fn worker_loop(
    settings: WorkerSettings,
    plans: Vec<ListenerPlan>,
    sockets: Vec<std::net::TcpListener>,
    stop: StdUnixStream,
) {
    let shutdown = Rc::new(Shutdown::default());
    let gauge = Rc::new(ConnGauge::default());
    let mut ctxs = Vec::new();
    for (plan, socket) in plans.into_iter().zip(sockets) {
        let listener = match TcpListener::from_std(socket) {
            Ok(l) => l,
            Err(e) => {
                warn!(listener = %plan.name, "cannot register listening socket: {e}");
                continue;
            }
        };
        let ctx = Rc::new(ListenerCtx {
            name: plan.name,
            tls: plan.tls,
            cache: plan.cache,
            pool: Pool::new(plan.upstream),
            upstream_host: plan.upstream_host.into_bytes(),
            timeouts: settings.timeouts,
            limits: settings.limits,
            shutdown: shutdown.clone(),
        });
        ctxs.push(ctx.clone());
        monoio::spawn(accept_loop(
            listener,
            ctx,
            gauge.clone(),
            settings.max_connections,
        ));
    }
    debug!(worker = settings.index, "worker running");

    // Wait for the stop signal: any byte or EOF on our end of the socket pair.
    match UnixStream::from_std(stop) {
        Ok(mut stop) => {
            let _ = stop.read(vec![0u8; 1]).await;
        }
        // Without its stop signal the worker could never be stopped cleanly: stop it now.
        Err(e) => warn!(
            worker = settings.index,
            "cannot watch the stop signal ({e}): stopping"
        ),
    }
    shutdown.trigger();
    for ctx in &ctxs {
        ctx.pool.clear();
    }
    // Drain: in-flight exchanges finish, idle connections close as they notice the flag.
    let drained = monoio::time::timeout(settings.timeouts.shutdown_grace, async {
        while gauge.open.get() > 0 {
            gauge.freed.wait().await;
        }
    })
    .await;
    if drained.is_err() {
        warn!(
            worker = settings.index,
            open = gauge.open.get(),
            "shutdown grace period over: closing remaining connections"
        );
    }
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Rc<ListenerCtx>,
    gauge: Rc<ConnGauge>,
    max_connections: usize,
) {
    let mut backoff_logged = false;
    loop {
        while gauge.open.get() >= max_connections && !ctx.shutdown.is_set() {
            monoio::select! {
                _ = gauge.freed.wait() => {},
                _ = ctx.shutdown.wait() => {},
            }
        }
        if ctx.shutdown.is_set() {
            return;
        }
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = ctx.shutdown.wait() => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                backoff_logged = false;
                gauge.open.set(gauge.open.get() + 1);
                let guard = ConnGuard(gauge.clone());
                let ctx = ctx.clone();
                monoio::spawn(async move {
                    proxy::serve(tcp, peer, ctx).await;
                    drop(guard);
                });
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off instead of spinning; accept resumes once
                // descriptors are free again.
                if !backoff_logged {
                    warn!(listener = %ctx.name, "accept failed: {e}; retrying");
                    backoff_logged = true;
                }
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
