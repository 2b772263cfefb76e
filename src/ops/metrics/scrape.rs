//! The scrape side: sums of every block, by listener name, encoded by prometheus-client.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::{
    Block, FailReason, Histogram, Inner, IoDriver, ListenerBlock, ListenerInfo, Metrics, Slot,
    UpstreamErrorKind, HANDSHAKE_BUCKETS_NS, REQUEST_BUCKETS_NS, STATUS_OTHER, STATUS_SLOTS,
};

impl Metrics {
    /// Sums every block; retires the blocks no worker holds any more.
    pub(super) fn snapshot(&self) -> Snapshot {
        let mut inner = self.lock();
        inner.retire_unheld();
        let Inner {
            current,
            live,
            retired,
        } = &*inner;
        let mut totals = Totals::default();
        // Current listeners first, in config order; then any only older generations knew.
        for l in current.iter() {
            totals.listener(&l.name);
        }
        totals.add_totals(retired);
        for block in live.iter() {
            totals.add_block(block);
        }
        Snapshot {
            totals,
            current: current.clone(),
            reload_success: self.process.reload_success.load(Relaxed),
            reload_failure: self.process.reload_failure.load(Relaxed),
            last_success_unix: self.process.last_success_unix.load(Relaxed),
            io_uring: self.process.io_uring.load(Relaxed),
            epoll: self.process.epoll.load(Relaxed),
        }
    }
}

impl Inner {
    /// Folds the blocks no worker holds any more into `retired` and frees them: their values
    /// are final. Runs at every scrape and every new generation, so that memory stays bounded
    /// across reloads even when nobody scrapes.
    pub(super) fn retire_unheld(&mut self) {
        let retired = &mut self.retired;
        self.live.retain_mut(|block| {
            // get_mut succeeds only when we hold the last reference; its Acquire makes the
            // worker's final stores (released when it dropped its handle) visible.
            if Arc::get_mut(block).is_some() {
                retired.add_block(block);
                false
            } else {
                true
            }
        });
    }
}

/// Plain sums, by listener name in first-seen order.
#[derive(Debug, Default, Clone)]
pub(super) struct Totals {
    listeners: Vec<(String, ListenerTotals)>,
    cache_hits: u64,
    cache_misses: u64,
}

#[derive(Debug, Clone)]
struct ListenerTotals {
    opened: u64,
    closed: u64,
    handshakes: [u64; 4],
    failures: [u64; FailReason::ALL.len()],
    handshake_time: HistogramTotals,
    statuses: Vec<u64>,
    request_time: HistogramTotals,
    upstream_errors: [u64; UpstreamErrorKind::ALL.len()],
    h2_connections: u64,
    h2_abuse: u64,
}

#[derive(Debug, Clone)]
struct HistogramTotals {
    bounds_ns: &'static [u64],
    buckets: Vec<u64>,
    sum_ns: u64,
}

impl HistogramTotals {
    fn new(bounds_ns: &'static [u64]) -> Self {
        HistogramTotals {
            bounds_ns,
            buckets: vec![0; bounds_ns.len() + 1],
            sum_ns: 0,
        }
    }

    fn add_live(&mut self, h: &Histogram) {
        add_slots(&mut self.buckets, &h.buckets);
        self.sum_ns = self.sum_ns.wrapping_add(h.sum_ns.get());
    }

    fn add(&mut self, other: &HistogramTotals) {
        add_all(&mut self.buckets, &other.buckets);
        self.sum_ns = self.sum_ns.wrapping_add(other.sum_ns);
    }
}

fn add_slots(into: &mut [u64], from: &[Slot]) {
    for (t, s) in into.iter_mut().zip(from) {
        *t = t.wrapping_add(s.get());
    }
}

fn add_all(into: &mut [u64], from: &[u64]) {
    for (t, v) in into.iter_mut().zip(from) {
        *t = t.wrapping_add(*v);
    }
}

impl ListenerTotals {
    fn new() -> Self {
        ListenerTotals {
            opened: 0,
            closed: 0,
            handshakes: [0; 4],
            failures: [0; FailReason::ALL.len()],
            handshake_time: HistogramTotals::new(HANDSHAKE_BUCKETS_NS),
            statuses: vec![0; STATUS_SLOTS],
            request_time: HistogramTotals::new(REQUEST_BUCKETS_NS),
            upstream_errors: [0; UpstreamErrorKind::ALL.len()],
            h2_connections: 0,
            h2_abuse: 0,
        }
    }

    fn add_live(&mut self, b: &ListenerBlock) {
        // `closed` before `opened`: both only grow, so active = opened - closed stays >= 0.
        self.closed = self.closed.wrapping_add(b.closed.get());
        self.opened = self.opened.wrapping_add(b.opened.get());
        add_slots(&mut self.handshakes, &b.handshakes);
        add_slots(&mut self.failures, &b.failures);
        self.handshake_time.add_live(&b.handshake_time);
        add_slots(&mut self.statuses, &b.statuses);
        self.request_time.add_live(&b.request_time);
        add_slots(&mut self.upstream_errors, &b.upstream_errors);
        self.h2_connections = self.h2_connections.wrapping_add(b.h2_connections.get());
        self.h2_abuse = self.h2_abuse.wrapping_add(b.h2_abuse.get());
    }

    fn add(&mut self, t: &ListenerTotals) {
        self.closed = self.closed.wrapping_add(t.closed);
        self.opened = self.opened.wrapping_add(t.opened);
        add_all(&mut self.handshakes, &t.handshakes);
        add_all(&mut self.failures, &t.failures);
        self.handshake_time.add(&t.handshake_time);
        add_all(&mut self.statuses, &t.statuses);
        self.request_time.add(&t.request_time);
        add_all(&mut self.upstream_errors, &t.upstream_errors);
        self.h2_connections = self.h2_connections.wrapping_add(t.h2_connections);
        self.h2_abuse = self.h2_abuse.wrapping_add(t.h2_abuse);
    }
}

impl Totals {
    fn listener(&mut self, name: &str) -> &mut ListenerTotals {
        let i = match self.listeners.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                self.listeners
                    .push((name.to_owned(), ListenerTotals::new()));
                self.listeners.len() - 1
            }
        };
        &mut self.listeners[i].1
    }

    fn add_block(&mut self, block: &Block) {
        for (name, b) in block.names.iter().zip(block.listeners.iter()) {
            self.listener(name).add_live(b);
        }
        self.cache_hits = self.cache_hits.wrapping_add(block.cache_hits.get());
        self.cache_misses = self.cache_misses.wrapping_add(block.cache_misses.get());
    }

    fn add_totals(&mut self, other: &Totals) {
        for (name, t) in &other.listeners {
            self.listener(name).add(t);
        }
        self.cache_hits = self.cache_hits.wrapping_add(other.cache_hits);
        self.cache_misses = self.cache_misses.wrapping_add(other.cache_misses);
    }
}

/// One scrape's values, owned, encoded by prometheus-client through the `Collector` trait.
#[derive(Debug)]
pub(super) struct Snapshot {
    totals: Totals,
    current: Vec<ListenerInfo>,
    reload_success: u64,
    reload_failure: u64,
    last_success_unix: u64,
    io_uring: bool,
    epoll: bool,
}

fn bool_str(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

/// Writes one family: its HELP/TYPE lines, then one sample per label set.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, metric) in samples {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn histogram_family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (&'a str, &'a HistogramTotals)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (listener, h) in samples {
        let labels = [("listener", listener)];
        let buckets: Vec<(f64, u64)> = h
            .bounds_ns
            .iter()
            .zip(&h.buckets)
            .map(|(&b, &n)| (b as f64 / 1e9, n))
            .collect();
        // The count is the sum of the bucket counts read in this scrape (not a separate
        // counter read at another instant), so `+Inf` is never below the last bucket.
        let count = h.buckets.iter().fold(0u64, |a, &n| a.wrapping_add(n));
        family
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(h.sum_ns as f64 / 1e9, count, &buckets, None)?;
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let ls = &self.totals.listeners;
        // Counter names go without `_total`: the encoder appends it.
        family(
            &mut e,
            "certgate_connections",
            "Client connections accepted.",
            Counter,
            ls.iter()
                .map(|(n, t)| ([("listener", n.as_str())], ConstCounter::new(t.opened))),
        )?;
        family(
            &mut e,
            "certgate_connections_active",
            "Client connections open now.",
            Gauge,
            ls.iter().map(|(n, t)| {
                let active = t.opened.saturating_sub(t.closed);
                (
                    [("listener", n.as_str())],
                    ConstGauge::new(i64::try_from(active).unwrap_or(i64::MAX)),
                )
            }),
        )?;
        family(
            &mut e,
            "certgate_handshakes",
            "TLS handshakes completed, by resumption and whether a client certificate was presented.",
            Counter,
            ls.iter().flat_map(|(n, t)| {
                (0..4).map(move |i| {
                    (
                        [
                            ("listener", n.as_str()),
                            ("resumed", bool_str(i >= 2)),
                            ("client_cert", bool_str(i % 2 == 1)),
                        ],
                        ConstCounter::new(t.handshakes[i]),
                    )
                })
            }),
        )?;
        family(
            &mut e,
            "certgate_handshake_failures",
            "TLS handshakes that failed, by reason.",
            Counter,
            ls.iter().flat_map(|(n, t)| {
                FailReason::ALL.iter().map(move |r| {
                    (
                        [("listener", n.as_str()), ("reason", r.as_str())],
                        ConstCounter::new(t.failures[*r as usize]),
                    )
                })
            }),
        )?;
        histogram_family(
            &mut e,
            "certgate_handshake_duration_seconds",
            "TCP accept to finished TLS handshake.",
            ls.iter().map(|(n, t)| (n.as_str(), &t.handshake_time)),
        )?;
        type CodeLabels<'a> = ([(&'static str, &'a str); 1], [(&'static str, String); 1]);
        let mut codes: Vec<(CodeLabels, ConstCounter)> = Vec::new();
        for (n, t) in ls {
            for (i, &count) in t.statuses.iter().enumerate() {
                if count == 0 {
                    continue; // Only the codes that occurred: 500 zero series help nobody.
                }
                let code = match i {
                    STATUS_OTHER => "other".to_owned(),
                    _ => (i + 100).to_string(),
                };
                codes.push((
                    ([("listener", n.as_str())], [("code", code)]),
                    ConstCounter::new(count),
                ));
            }
        }
        family(
            &mut e,
            "certgate_requests",
            "Responses sent to clients, by status code (the app's or certgate's own).",
            Counter,
            codes,
        )?;
        histogram_family(
            &mut e,
            "certgate_request_duration_seconds",
            "Request head received to response ended.",
            ls.iter().map(|(n, t)| (n.as_str(), &t.request_time)),
        )?;
        family(
            &mut e,
            "certgate_upstream_errors",
            "Failed exchanges with the upstream app, by kind.",
            Counter,
            ls.iter().flat_map(|(n, t)| {
                UpstreamErrorKind::ALL.iter().map(move |k| {
                    (
                        [("listener", n.as_str()), ("kind", k.as_str())],
                        ConstCounter::new(t.upstream_errors[*k as usize]),
                    )
                })
            }),
        )?;
        family(
            &mut e,
            "certgate_http2_connections",
            "Client connections that negotiated HTTP/2 (ALPN h2).",
            Counter,
            ls.iter().map(|(n, t)| {
                (
                    [("listener", n.as_str())],
                    ConstCounter::new(t.h2_connections),
                )
            }),
        )?;
        family(
            &mut e,
            "certgate_http2_abuse",
            "HTTP/2 client connections cut off with GOAWAY ENHANCE_YOUR_CALM for resetting too many streams (rapid reset).",
            Counter,
            ls.iter()
                .map(|(n, t)| ([("listener", n.as_str())], ConstCounter::new(t.h2_abuse))),
        )?;
        family::<[(&str, &str); 0], _>(
            &mut e,
            "certgate_cert_cache_hits",
            "Client chains found verified in a worker's cache.",
            Counter,
            [([], ConstCounter::new(self.totals.cache_hits))],
        )?;
        family::<[(&str, &str); 0], _>(
            &mut e,
            "certgate_cert_cache_misses",
            "Client chains not in a worker's cache (verified in full).",
            Counter,
            [([], ConstCounter::new(self.totals.cache_misses))],
        )?;
        family(
            &mut e,
            "certgate_server_cert_not_after_seconds",
            "Unix time at which the listener's serving certificate expires.",
            Gauge,
            self.current.iter().filter_map(|l| {
                l.cert_not_after
                    .map(|t| ([("listener", l.name.as_str())], ConstGauge::new(t)))
            }),
        )?;
        family(
            &mut e,
            "certgate_reloads",
            "Configuration reloads, by result.",
            Counter,
            [
                (
                    [("result", "success")],
                    ConstCounter::new(self.reload_success),
                ),
                (
                    [("result", "failure")],
                    ConstCounter::new(self.reload_failure),
                ),
            ],
        )?;
        family::<[(&str, &str); 0], _>(
            &mut e,
            "certgate_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load (startup or reload).",
            Gauge,
            [(
                [],
                ConstGauge::new(i64::try_from(self.last_success_unix).unwrap_or(i64::MAX)),
            )],
        )?;
        let drivers = [
            (IoDriver::IoUring, self.io_uring),
            (IoDriver::Epoll, self.epoll),
        ];
        family(
            &mut e,
            "certgate_io_driver",
            "The I/O driver the workers run on (1 = in use).",
            Gauge,
            drivers
                .into_iter()
                .filter(|(_, used)| *used)
                .map(|(d, _)| ([("driver", d.as_str())], ConstGauge::new(1i64))),
        )?;
        Ok(())
    }
}
