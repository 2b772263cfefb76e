//! Metrics: counters that each worker owns, summed only when `/metrics` is scraped.
//!
//! The request path touches no lock and no shared read-modify-write atomic. Each worker writes
//! its own block through a [`WorkerMetrics`] handle, and the admin thread reads every block at
//! scrape time and adds them up (the per-thread stats idea of Envoy, done with plain loads).
//!
//! **Why `AtomicU64` with a relaxed load + store, and never `fetch_add`.** Exactly one thread
//! writes a block (the handle is `Send` but neither `Sync` nor `Clone`, so the type system
//! keeps it on one thread), so `load` then `store` of the sum can never lose an increment and
//! needs no `lock` prefix: on x86-64 and aarch64 it compiles to the same plain `mov`s as a
//! `Cell<u64>` would. But the scraper reads the same memory from another thread while the
//! worker writes, and with a `Cell` that is a data race (undefined behaviour); with relaxed
//! atomics it is defined, and a scrape merely sees a value a few nanoseconds old.
//!
//! **Reloads.** A reload may add, remove or rename listeners, and connections accepted under
//! the old config finish under it. Each config generation therefore gets its own blocks from
//! [`Metrics::generation`], one per worker, sized for that generation's listeners and indexed
//! by a listener's position (the hot path passes a small integer, never a name). At scrape
//! time every block is summed by listener *name*, so a listener that survives a reload keeps
//! counting from its old total. A block that no worker holds any more (the last connection of
//! its generation closed and the worker dropped its handle) has final values: the scrape folds
//! it into a retired total and frees it, so memory does not grow with the number of reloads.
//! Counters therefore never go backwards. A listener removed by a reload keeps its (frozen)
//! series, so that a name that comes back later continues where it stopped.
//!
//! The exposition text is written by `prometheus-client` (the official Rust client): each
//! scrape registers one [`Collector`](prometheus_client::collector::Collector) holding the summed snapshot in a fresh `Registry` and
//! encodes it in the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]).

mod labels;
mod scrape;

pub use labels::{FailReason, IoDriver, UpstreamErrorKind};

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::registry::Registry;

use scrape::Totals;

/// The `Content-Type` of what [`Metrics::encode`] returns (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// TCP accept → finished handshake, in nanoseconds: 100 µs .. 1 s (larger goes to `+Inf`).
const HANDSHAKE_BUCKETS_NS: &[u64] = &[
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// Request head received → response ended, in nanoseconds: 0.5 ms .. 10 s.
const REQUEST_BUCKETS_NS: &[u64] = &[
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Status codes 100..=599 get one slot each; the last slot counts anything else (the response
/// parser rejects other codes, so it should stay zero).
const STATUS_SLOTS: usize = 501;
const STATUS_OTHER: usize = 500;

/// One listener as the metrics know it in a config generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerInfo {
    /// The `listener` label: the listener's configured name.
    pub name: String,
    /// Unix time of the serving certificate's notAfter (`certgate_server_cert_not_after_seconds`).
    pub cert_not_after: Option<i64>,
}

/// Unix time of a DER certificate's notAfter, for [`ListenerInfo::cert_not_after`].
pub fn cert_not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// A counter written by one thread only (see the module docs for why it is atomic).
#[derive(Default)]
struct Slot(AtomicU64);

impl Slot {
    #[inline]
    fn add(&self, n: u64) {
        // Not fetch_add: the single writer makes load + store exact, without a locked RMW.
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

fn slots(n: usize) -> Box<[Slot]> {
    (0..n).map(|_| Slot::default()).collect()
}

/// Bucket counts (not cumulative; the last slot is `+Inf`) and the sum in nanoseconds, so
/// the hot path does integer compares and adds only.
struct Histogram {
    bounds_ns: &'static [u64],
    buckets: Box<[Slot]>,
    sum_ns: Slot,
}

impl Histogram {
    fn new(bounds_ns: &'static [u64]) -> Self {
        Histogram {
            bounds_ns,
            buckets: slots(bounds_ns.len() + 1),
            sum_ns: Slot::default(),
        }
    }

    #[inline]
    fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = self.bounds_ns.partition_point(|&b| b < ns);
        if let Some(bucket) = self.buckets.get(i) {
            bucket.add(1);
        }
        self.sum_ns.add(ns);
    }
}

/// One listener's counters in one worker's block.
struct ListenerBlock {
    opened: Slot,
    closed: Slot,
    /// Indexed by `resumed as usize * 2 + client_cert as usize`.
    handshakes: [Slot; 4],
    failures: [Slot; FailReason::ALL.len()],
    handshake_time: Histogram,
    /// Indexed by status - 100; [`STATUS_OTHER`] for anything outside 100..=599.
    statuses: Box<[Slot]>,
    request_time: Histogram,
    upstream_errors: [Slot; UpstreamErrorKind::ALL.len()],
    /// Client connections that negotiated HTTP/2, and those cut off for abuse.
    h2_connections: Slot,
    h2_abuse: Slot,
}

impl ListenerBlock {
    fn new() -> Self {
        ListenerBlock {
            opened: Slot::default(),
            closed: Slot::default(),
            handshakes: Default::default(),
            failures: Default::default(),
            handshake_time: Histogram::new(HANDSHAKE_BUCKETS_NS),
            statuses: slots(STATUS_SLOTS),
            request_time: Histogram::new(REQUEST_BUCKETS_NS),
            upstream_errors: Default::default(),
            h2_connections: Slot::default(),
            h2_abuse: Slot::default(),
        }
    }
}

/// One worker's counters for one config generation.
struct Block {
    /// The listener names of the generation, by index.
    names: Arc<[String]>,
    listeners: Box<[ListenerBlock]>,
    cache_hits: Slot,
    cache_misses: Slot,
}

/// The writing end of one worker's metrics for one config generation.
///
/// `Send` (it is handed to the worker thread once) but neither `Sync` nor `Clone`, so only one
/// thread ever writes through it; share it among the worker's tasks with `Rc`.
///
/// ```compile_fail
/// fn sync<T: Sync>() {}
/// sync::<certgate::ops::metrics::WorkerMetrics>();
/// ```
pub struct WorkerMetrics {
    block: Arc<Block>,
    _not_sync: PhantomData<Cell<()>>,
}

impl WorkerMetrics {
    #[inline]
    fn listener(&self, l: usize) -> Option<&ListenerBlock> {
        // An index from another generation is a wiring bug; counting nothing beats a panic.
        self.block.listeners.get(l)
    }

    /// A client connection was accepted on listener `l` (index in this generation).
    #[inline]
    pub fn connection_opened(&self, l: usize) {
        if let Some(b) = self.listener(l) {
            b.opened.add(1);
        }
    }

    /// A connection counted by `connection_opened(l)` closed, whatever the reason.
    #[inline]
    pub fn connection_closed(&self, l: usize) {
        if let Some(b) = self.listener(l) {
            b.closed.add(1);
        }
    }

    /// A handshake finished; `dur` is TCP accept → handshake done.
    #[inline]
    pub fn handshake_done(&self, l: usize, resumed: bool, client_cert: bool, dur: Duration) {
        if let Some(b) = self.listener(l) {
            b.handshakes[usize::from(resumed) * 2 + usize::from(client_cert)].add(1);
            b.handshake_time.observe(dur);
        }
    }

    #[inline]
    pub fn handshake_failed(&self, l: usize, reason: FailReason) {
        if let Some(b) = self.listener(l) {
            b.failures[reason as usize].add(1);
        }
    }

    /// A response ended: `status` is what the client got (the app's or certgate's own), `dur`
    /// is request head received → response ended.
    #[inline]
    pub fn request_done(&self, l: usize, status: u16, dur: Duration) {
        if let Some(b) = self.listener(l) {
            let i = match status {
                100..=599 => usize::from(status - 100),
                _ => STATUS_OTHER,
            };
            b.statuses[i].add(1);
            b.request_time.observe(dur);
        }
    }

    #[inline]
    pub fn upstream_error(&self, l: usize, kind: UpstreamErrorKind) {
        if let Some(b) = self.listener(l) {
            b.upstream_errors[kind as usize].add(1);
        }
    }

    /// A client connection negotiated HTTP/2.
    #[inline]
    pub fn h2_connection(&self, l: usize) {
        if let Some(b) = self.listener(l) {
            b.h2_connections.add(1);
        }
    }

    /// An HTTP/2 client was cut off with GOAWAY ENHANCE_YOUR_CALM (it reset too many streams).
    #[inline]
    pub fn h2_abuse(&self, l: usize) {
        if let Some(b) = self.listener(l) {
            b.h2_abuse.add(1);
        }
    }

    /// A lookup in the worker's verified-chain cache.
    #[inline]
    pub fn cert_cache(&self, hit: bool) {
        if hit {
            self.block.cache_hits.add(1);
        } else {
            self.block.cache_misses.add(1);
        }
    }
}

/// Process-wide values, set off the request path (startup, reload, worker start).
#[derive(Default)]
pub struct ProcessMetrics {
    // Reloads may come from the signal thread and the file watcher: a shared RMW is fine here.
    reload_success: AtomicU64,
    reload_failure: AtomicU64,
    last_success_unix: AtomicU64,
    io_uring: AtomicBool,
    epoll: AtomicBool,
}

impl ProcessMetrics {
    /// The config loaded at startup: sets the last-success time without counting a reload.
    pub fn config_loaded(&self, at: SystemTime) {
        self.last_success_unix.store(unix_secs(at), Relaxed);
    }

    pub fn reload_succeeded(&self, at: SystemTime) {
        self.reload_success.fetch_add(1, Relaxed);
        self.last_success_unix.store(unix_secs(at), Relaxed);
    }

    pub fn reload_failed(&self) {
        self.reload_failure.fetch_add(1, Relaxed);
    }

    /// A worker started on `driver` (each worker calls this once; a mix shows both).
    pub fn io_driver(&self, driver: IoDriver) {
        match driver {
            IoDriver::IoUring => self.io_uring.store(true, Relaxed),
            IoDriver::Epoll => self.epoll.store(true, Relaxed),
        }
    }
}

fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// All metrics of the process: the blocks of every worker and generation, and the process
/// values. Shared (`Arc`) between the thread that starts workers and the admin listener.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    process: ProcessMetrics,
}

/// Only scrapes and reloads take this lock; workers never do.
#[derive(Default)]
struct Inner {
    /// The current generation's listeners, in config order.
    current: Vec<ListenerInfo>,
    /// Blocks a worker may still write to.
    live: Vec<Arc<Block>>,
    /// The final values of blocks no worker holds any more.
    retired: Totals,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn process(&self) -> &ProcessMetrics {
        &self.process
    }

    /// New blocks for a config generation: one handle per worker, in worker order. Listener
    /// `i` of `listeners` is index `i` in every `WorkerMetrics` call. Called at startup and on
    /// every successful reload; the previous generation's handles keep working (and counting)
    /// until the connections that hold them close.
    pub fn generation(&self, listeners: &[ListenerInfo], workers: usize) -> Vec<WorkerMetrics> {
        let names: Arc<[String]> = listeners.iter().map(|l| l.name.clone()).collect();
        let handles: Vec<WorkerMetrics> = (0..workers)
            .map(|_| WorkerMetrics {
                block: Arc::new(Block {
                    names: names.clone(),
                    listeners: listeners.iter().map(|_| ListenerBlock::new()).collect(),
                    cache_hits: Slot::default(),
                    cache_misses: Slot::default(),
                }),
                _not_sync: PhantomData,
            })
            .collect();
        let mut inner = self.lock();
        inner.retire_unheld();
        inner.current = listeners.to_vec();
        inner.live.extend(handles.iter().map(|h| h.block.clone()));
        handles
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; if something did, the counts are still sound.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The Prometheus text exposition of every metric, summed over workers and generations.
    pub fn encode(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.snapshot()));
        let mut out = String::new();
        // Writing into a String cannot fail; an Err would mean a bug in the encoder, and a
        // partial exposition is still better for the scraper than none.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests;
