//! Thread-per-core workers: each owns a monoio runtime, its own `SO_REUSEPORT` socket per
//! listener, its upstream pools and every connection it accepts, from accept to close.
//!
//! Sockets are bound on the calling thread before any worker starts (and before a reload
//! changes anything), so a bad address fails with a clear error, and port 0 resolves to one
//! port shared by all workers. The calling thread keeps them (each worker accepts on its own
//! descriptor for its socket), so they can be handed to a process that replaces this one; a
//! listener may also start on sockets received that way or from systemd (see `handover`).
//!
//! Reload is one arrow: the main thread sends every worker a new [`Generation`] over its
//! control channel; the worker swaps its listener table (see `listeners`) and new connections
//! take the new settings, while established ones keep the `ListenerCtx` they started with.

mod events;
pub mod handover;
mod listeners;

pub use events::{Shutdown, ShutdownWait};

use std::io::Write as _;
use std::net::SocketAddr;
use std::net::TcpListener as StdTcpListener;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use monoio::io::AsyncReadRent;
use monoio::net::UnixStream;
use rustls::ServerConfig;
use tracing::{debug, info, warn};

use crate::config::{AccessLogFormat, Config, Timeouts};
use crate::http::request::Limits;
use crate::ops::metrics::{IoDriver, ListenerInfo, Metrics, WorkerMetrics};
use crate::tls::cache::Stats as CacheStats;
use events::ConnGauge;
use listeners::Listeners;

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

/// What every worker gets for one listener.
#[derive(Clone)]
pub struct ListenerPlan {
    pub name: String,
    /// The address as configured (port 0 included): a reload that keeps it keeps the socket.
    pub bind: SocketAddr,
    pub tls: Arc<ServerConfig>,
    pub cache: crate::tls::cache::CacheConfig,
    /// Fingerprint of what decides who is let in (see `app::prepare`).
    pub trust: [u8; 32],
    /// The serving certificate's notAfter (Unix time), for the expiry metric.
    pub not_after: Option<i64>,
    pub upstream: SocketAddr,
    /// The upstream as written in the config (`host:port`).
    pub upstream_host: String,
    /// Protocols a client may upgrade to.
    pub upgrade: Vec<String>,
    /// A `client_ca` is set.
    pub verifies_clients: bool,
    pub protocol: crate::config::ListenerProtocol,
    pub upstream_proxy_protocol: crate::proxy_header::ProxyVersion,
    /// HTTP/1.1 (pooled) or h2c (multiplexed) to the upstream.
    pub upstream_protocol: crate::config::UpstreamProtocol,
    /// Which sources must send a PROXY header first.
    pub proxy_in: crate::proxy_header::inbound::ProxyIn,
    /// Server names relayed without termination.
    pub passthrough: crate::sni::SniRoutes,
    /// TLS to the upstream (`upstream = "https://…"`).
    pub upstream_tls: Option<crate::tls::upstream::UpstreamTlsPlan>,
    /// `[[listener.site]]`s, each a plan of its own (no sites, no socket of its own).
    pub sites: Vec<ListenerPlan>,
    /// Server name → index into `sites`.
    pub site_names: crate::sni::SniMap<usize>,
    /// Unknown or missing SNI fails the handshake instead of getting this plan's own policy.
    pub strict_sni: bool,
    /// Per-path requirements and upstreams.
    pub routes: crate::config::RouteTable,
}

/// Per-worker settings that a reload may change.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub max_connections: usize,
    pub access_log: AccessLogFormat,
    /// HTTP/2 settings offered to clients.
    pub h2: crate::proxy::H2Limits,
}

impl Settings {
    pub fn of(config: &Config) -> Self {
        Settings {
            timeouts: config.timeouts,
            limits: Limits {
                max_head_bytes: config.limits.max_request_header_bytes,
                max_headers: config.limits.max_headers,
            },
            max_connections: config.limits.max_connections_per_worker,
            access_log: config.log.access,
            h2: crate::proxy::H2Limits {
                max_concurrent_streams: config.limits.h2_max_concurrent_streams,
                max_header_list_bytes: config.limits.h2_max_header_list_bytes,
                initial_window: config.limits.h2_initial_window,
                connection_window: config.limits.h2_connection_window,
            },
        }
    }
}

/// One configuration generation as one worker receives it.
pub(crate) struct Generation {
    plans: Vec<ListenerPlan>,
    /// Index-aligned with `plans`: this worker's own descriptors for the sockets of each
    /// listener that is new or moved (an accept loop each); empty keeps the worker's current
    /// accept loops for that listener.
    opened: Vec<Vec<StdTcpListener>>,
    settings: Settings,
    /// This worker's counters for this generation's listeners (index-aligned with `plans`).
    metrics: WorkerMetrics,
}

enum Command {
    Reload(Box<Generation>, mpsc::Sender<()>),
    /// Stop accepting and drain patiently: another process serves the same sockets now.
    Retire,
}

/// The main thread's handle on one worker: commands go through the channel, and a byte on
/// the socket wakes the worker's runtime to read them (its runtime cannot wait on a std
/// channel). Closing the socket stops the worker.
struct Control {
    wake: StdUnixStream,
    commands: mpsc::Sender<Command>,
}

/// A listener as bound.
struct Bound {
    name: String,
    configured: SocketAddr,
    actual: SocketAddr,
    /// Its listening sockets (one per worker when bound here; as received when inherited).
    /// Workers accept on descriptors of their own for these.
    sockets: Sockets,
}

/// One listener's listening sockets, shared by the generations that keep the listener.
type Sockets = Arc<Vec<StdTcpListener>>;

/// A running server: its bound addresses, and the means to reload and stop it.
pub struct Server {
    bound: Vec<Bound>,
    /// Sockets systemd passed, by address, for the process's life: a reload that moves a
    /// listener back onto one (or renames its listener) finds it here, since binding the
    /// address again would fail while systemd holds it.
    activated: Vec<(SocketAddr, Sockets)>,
    addrs: Vec<SocketAddr>,
    controls: Vec<Control>,
    threads: Vec<JoinHandle<CacheStats>>,
    uring: bool,
    metrics: Arc<Metrics>,
}

/// This generation's per-worker counter blocks, one per worker.
fn counters(metrics: &Metrics, plans: &[ListenerPlan], workers: usize) -> Vec<WorkerMetrics> {
    let infos: Vec<ListenerInfo> = plans
        .iter()
        .map(|p| ListenerInfo {
            name: p.name.clone(),
            cert_not_after: p.not_after,
        })
        .collect();
    metrics.generation(&infos, workers)
}

/// How long a reload waits for every worker to take the new generation.
const RELOAD_ACK_TIMEOUT: Duration = Duration::from_secs(10);

impl Server {
    /// Local address of each listener, in config order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Whether the workers run on io_uring (false: the epoll fallback).
    pub fn io_uring(&self) -> bool {
        self.uring
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.controls.len()
    }

    /// Hands every worker a new generation. Sockets for new or moved listeners are bound first:
    /// if any bind fails, nothing changes and the error names the listener. Listeners whose
    /// name and configured address are unchanged keep their sockets (no connection in their
    /// accept queues is lost); removed ones close once every worker has moved on.
    pub fn reload(
        &mut self,
        settings: Settings,
        plans: Vec<ListenerPlan>,
    ) -> Result<(), WorkerError> {
        let workers = self.controls.len();
        let activated = &self.activated;
        let mut spare = |addr: SocketAddr| {
            activated
                .iter()
                .find(|(a, _)| *a == addr && addr.port() != 0)
                .map(|(_, s)| s.clone())
        };
        let (opened, bound) = open(&plans, &self.bound, &mut spare, workers)?;
        let counters = counters(&self.metrics, &plans, workers);
        let (done, acks) = mpsc::channel();
        for ((control, opened), metrics) in self.controls.iter_mut().zip(opened).zip(counters) {
            let generation = Generation {
                plans: plans.clone(),
                opened,
                settings,
                metrics,
            };
            // A worker that is gone cannot take it; the others still must.
            let _ = control
                .commands
                .send(Command::Reload(Box::new(generation), done.clone()));
            let _ = control.wake.write_all(b"r");
        }
        drop(done);
        for _ in 0..workers {
            if acks.recv_timeout(RELOAD_ACK_TIMEOUT).is_err() {
                warn!("a worker did not confirm the reload in time");
                break;
            }
        }
        self.addrs = bound.iter().map(|b| b.actual).collect();
        self.bound = bound;
        Ok(())
    }

    /// Stops accepting, lets in-flight requests finish (up to `shutdown_grace`), then returns
    /// each worker's verified-chain cache counts. Idle keep-alive connections close at once.
    pub fn shutdown(mut self) -> Vec<CacheStats> {
        // Our descriptors first, so that the sockets close (refusing new connections) as soon
        // as the workers' accept loops end.
        self.bound.clear();
        self.activated.clear();
        self.controls.clear(); // Closing our ends wakes every worker with EOF.
        self.join()
    }

    /// After a handover: stops accepting and drains like [`Server::shutdown`], except that an
    /// idle keep-alive connection is not closed under its client's feet but waits for its next
    /// request, which is answered with `Connection: close` (or for its keep-alive timeout, or
    /// the end of `shutdown_grace`). The sockets stay open: the new process accepts on them.
    pub fn retire(mut self) -> Vec<CacheStats> {
        for control in &mut self.controls {
            let _ = control.commands.send(Command::Retire);
            let _ = control.wake.write_all(b"r");
        }
        self.bound.clear();
        self.activated.clear();
        self.controls.clear();
        self.join()
    }

    /// For a handover: this process's own descriptors for every listener's sockets, by
    /// configured address. Listeners on port 0 are left out (the address names no port).
    pub fn listening(&self) -> std::io::Result<Vec<(SocketAddr, Vec<StdTcpListener>)>> {
        self.bound
            .iter()
            .filter(|b| b.configured.port() != 0)
            .map(|b| {
                let dups: std::io::Result<Vec<_>> =
                    b.sockets.iter().map(StdTcpListener::try_clone).collect();
                dups.map(|d| (b.configured, d))
            })
            .collect()
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

/// Per worker, index-aligned with a generation's plans: descriptors for new accept loops, or
/// none to keep the current ones.
type Opened = Vec<Vec<Vec<StdTcpListener>>>;

/// The sockets a generation needs, per worker and index-aligned with `plans`. A listener that
/// `kept` already serves under the same name and configured address keeps its accept loops;
/// any other takes the `spare` sockets for its configured address (inherited ones) or binds
/// new ones. Binds everything before anything changes.
fn open(
    plans: &[ListenerPlan],
    kept: &[Bound],
    spare: &mut dyn FnMut(SocketAddr) -> Option<Sockets>,
    workers: usize,
) -> Result<(Opened, Vec<Bound>), WorkerError> {
    let mut opened: Opened = (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::with_capacity(plans.len());
    for plan in plans {
        let same = kept
            .iter()
            .find(|b| b.name == plan.name && b.configured == plan.bind);
        let (actual, sockets) = match same {
            Some(b) => {
                opened.iter_mut().for_each(|o| o.push(Vec::new()));
                (b.actual, b.sockets.clone())
            }
            None => {
                let err = |addr, source| WorkerError::Bind {
                    listener: plan.name.clone(),
                    addr,
                    source,
                };
                let (actual, sockets) = match spare(plan.bind) {
                    Some(sockets) => (plan.bind, sockets),
                    None => {
                        let (actual, sockets) = bind_all(&plan.name, plan.bind, workers)?;
                        (actual, Arc::new(sockets))
                    }
                };
                let mine = handover::spread(&sockets, workers).map_err(|e| err(actual, e))?;
                for (o, s) in opened.iter_mut().zip(mine) {
                    o.push(s);
                }
                (actual, sockets)
            }
        };
        bound.push(Bound {
            name: plan.name.clone(),
            configured: plan.bind,
            actual,
            sockets,
        });
    }
    Ok((opened, bound))
}

/// One socket per worker for one listener; port 0 resolves to one port shared by all.
fn bind_all(
    name: &str,
    mut addr: SocketAddr,
    workers: usize,
) -> Result<(SocketAddr, Vec<std::net::TcpListener>), WorkerError> {
    let err = |addr, source| WorkerError::Bind {
        listener: name.to_owned(),
        addr,
        source,
    };
    let mut sockets = Vec::with_capacity(workers);
    for _ in 0..workers {
        let sock = bind(addr).map_err(|e| err(addr, e))?;
        if addr.port() == 0 {
            addr = sock.local_addr().map_err(|e| err(addr, e))?;
        }
        sockets.push(sock);
    }
    Ok((addr, sockets))
}

/// Binds every listener once per worker and starts the workers, counting into `metrics`.
pub fn start(
    config: &Config,
    plans: Vec<ListenerPlan>,
    metrics: Arc<Metrics>,
) -> Result<Server, WorkerError> {
    start_inheriting(config, plans, metrics, &mut handover::Inherited::default())
}

/// [`start`], with the listeners whose configured address `inherited` has a socket for serving
/// on those sockets instead of binding; what no listener claims stays in `inherited`.
pub fn start_inheriting(
    config: &Config,
    plans: Vec<ListenerPlan>,
    metrics: Arc<Metrics>,
    inherited: &mut handover::Inherited,
) -> Result<Server, WorkerError> {
    let workers = config.worker_count();
    let uring = monoio::utils::detect_uring() && std::env::var_os("CERTGATE_EPOLL").is_none();
    if !uring {
        warn!("io_uring is unavailable: falling back to the epoll driver");
    }
    let from_systemd = inherited.activated_addrs();
    let mut activated = Vec::new();
    let mut spare = |addr: SocketAddr| {
        let sockets = Arc::new(inherited.take(handover::Role::Listener, addr)?);
        if from_systemd.contains(&addr) {
            activated.push((addr, sockets.clone()));
        }
        Some(sockets)
    };
    let (opened, bound) = open(&plans, &[], &mut spare, workers)?;

    let settings = Settings::of(config);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut controls = Vec::new();
    let mut threads = Vec::new();
    let counters = counters(&metrics, &plans, workers);
    for ((index, opened), counters) in opened.into_iter().enumerate().zip(counters) {
        let (ours, theirs) = StdUnixStream::pair().map_err(WorkerError::Spawn)?;
        let (commands, receiver) = mpsc::channel();
        controls.push(Control {
            wake: ours,
            commands,
        });
        let first = Generation {
            plans: plans.clone(),
            opened,
            settings,
            metrics: counters,
        };
        let pin = config.server.pin_workers.then_some(index % cores);
        let process = metrics.clone();
        let thread = std::thread::Builder::new()
            .name(format!("certgate-w{index}"))
            .spawn(move || worker_main(index, pin, uring, first, theirs, receiver, process))
            .map_err(WorkerError::Spawn)?;
        threads.push(thread);
    }
    Ok(Server {
        addrs: bound.iter().map(|b| b.actual).collect(),
        bound,
        activated,
        controls,
        threads,
        uring,
        metrics,
    })
}

fn worker_main(
    index: usize,
    pin: Option<usize>,
    uring: bool,
    first: Generation,
    wake: StdUnixStream,
    commands: mpsc::Receiver<Command>,
    metrics: Arc<Metrics>,
) -> CacheStats {
    if let Some(cpu) = pin {
        match monoio::utils::bind_to_cpu_set([cpu]) {
            Ok(()) => info!(worker = index, cpu, "worker pinned to CPU {cpu}"),
            Err(e) => warn!(worker = index, "could not pin worker to CPU {cpu}: {e:?}"),
        }
    }
    let run = worker_loop(index, first, wake, commands);
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
                metrics.process().io_driver(IoDriver::IoUring);
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
        Ok(mut rt) => {
            metrics.process().io_driver(IoDriver::Epoll);
            rt.block_on(run)
        }
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
    index: usize,
    first: Generation,
    wake: StdUnixStream,
    commands: mpsc::Receiver<Command>,
) {
    let shutdown = Rc::new(Shutdown::default());
    let gauge = Rc::new(ConnGauge::default());
    let mut retire = false;
    let grace = first.settings.timeouts.shutdown_grace;
    let mut table = Listeners::new(index, shutdown.clone(), gauge.clone());
    table.apply(first);
    monoio::spawn(listeners::flush_access_log(
        table.access_log_cell(),
        shutdown.clone(),
    ));
    debug!(worker = index, "worker running");

    // The epoll driver reads a blocking descriptor with a plain (blocking) recv, which would
    // park the whole worker after the first command; io_uring does not care. Non-blocking
    // suits both.
    let wake = wake.set_nonblocking(true).map(|()| wake);
    match wake.and_then(UnixStream::from_std) {
        Ok(mut wake) => {
            // Any byte: commands are waiting; EOF (or an error): stop.
            let mut buf = vec![0u8; 16];
            loop {
                let (res, back) = wake.read(buf).await;
                buf = back;
                if !matches!(res, Ok(n) if n > 0) {
                    break;
                }
                while let Ok(command) = commands.try_recv() {
                    match command {
                        Command::Reload(generation, done) => {
                            table.apply(*generation);
                            let _ = done.send(());
                        }
                        Command::Retire => retire = true,
                    }
                }
                if retire {
                    break;
                }
            }
        }
        // Without its control channel the worker could never be stopped cleanly: stop it now.
        Err(e) => warn!(
            worker = index,
            "cannot watch the control channel ({e}): stopping"
        ),
    }
    if retire {
        shutdown.trigger_patiently();
    } else {
        shutdown.trigger();
    }
    table.clear_pools();
    table.flush_access_log();
    let grace = table.shutdown_grace().unwrap_or(grace);
    // Drain: in-flight exchanges finish, idle connections close as they notice the flag.
    let drained = monoio::time::timeout(grace, async {
        while gauge.open.get() > 0 {
            gauge.freed.wait().await;
        }
    })
    .await;
    if drained.is_err() {
        warn!(
            worker = index,
            open = gauge.open.get(),
            "shutdown grace period over: closing remaining connections"
        );
    }
}
