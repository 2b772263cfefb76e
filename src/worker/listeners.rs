//! One worker's listener table: an accept loop per listener, and the current `ListenerCtx`
//! each loop hands to the connections it accepts.
//!
//! A reload swaps the context in place (new connections get the new certificate, trust,
//! upstream, timeouts and limits; established ones keep the `Rc` they took at accept), starts
//! loops for new or moved listeners on the sockets the main thread bound for them, and stops
//! the loops of removed ones. An upstream pool survives a reload that keeps its address.
//!
//! A listener has one accept loop per socket the worker was given for it (usually one; more
//! when a handover brought more sockets than there are workers). Stopping a loop cancels its
//! pending accept and waits for the cancellation: an accept the kernel completed meanwhile
//! still yields its connection, which is served, instead of a descriptor nobody reads (under
//! io_uring, dropping the accept would lose that connection).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use monoio::io::Canceller;
use monoio::net::TcpListener;
use tracing::warn;

use super::events::{ConnGauge, ConnGuard, Shutdown};
use super::{Generation, ListenerPlan, Settings};
use crate::config::AccessLogFormat;
use crate::ops::access_log::AccessLog;
use crate::ops::metrics::WorkerMetrics;
use crate::ops::ratelimit::LogLimiter;
use crate::proxy::handshake_turns::HandshakeTurns;
use crate::proxy::idle_clock::IdleClock;
use crate::proxy::upstream::{Pool, PoolTls};
use crate::proxy::{self, Hosts, ListenerCtx, RoutePool};

/// Refused-handshake log lines per second and worker before they are only counted.
const REFUSALS_LOGGED_PER_SECOND: u32 = 20;
/// How often buffered access-log lines are written out when traffic is light.
const ACCESS_LOG_FLUSH: Duration = Duration::from_secs(1);

/// The worker's access log, shared with its flush timer; replaced when a reload changes it.
pub(crate) type AccessLogCell = Rc<RefCell<Option<Rc<AccessLog>>>>;

/// A listener's accept loop, seen from the table.
struct Active {
    name: String,
    /// The context new connections get; replaced by a reload.
    ctx: Rc<RefCell<Rc<ListenerCtx>>>,
    /// Set when the listener is removed or moved: its accept loop ends, its socket closes.
    closed: Rc<Shutdown>,
}

pub(crate) struct Listeners {
    worker: usize,
    shutdown: Rc<Shutdown>,
    /// Keep-alive deadlines of the worker's idle connections, whichever listener they came to.
    idle_clock: Rc<IdleClock>,
    /// Turns for handshake cryptography, whichever listener the handshake came to.
    handshake_turns: Rc<HandshakeTurns>,
    gauge: Rc<ConnGauge>,
    active: Vec<Active>,
    access_log: AccessLogCell,
    failure_log: Rc<LogLimiter>,
}

impl Listeners {
    pub(crate) fn new(worker: usize, shutdown: Rc<Shutdown>, gauge: Rc<ConnGauge>) -> Self {
        Listeners {
            worker,
            shutdown,
            idle_clock: Rc::default(),
            handshake_turns: Rc::default(),
            gauge,
            active: Vec::new(),
            access_log: Rc::new(RefCell::new(None)),
            failure_log: Rc::new(LogLimiter::new(REFUSALS_LOGGED_PER_SECOND)),
        }
    }

    pub(crate) fn access_log_cell(&self) -> AccessLogCell {
        self.access_log.clone()
    }

    /// Writes out buffered access-log lines (shutdown).
    pub(crate) fn flush_access_log(&self) {
        if let Some(log) = self.access_log.borrow().as_ref() {
            let _ = log.flush();
        }
    }

    /// Opens, keeps or closes the access log as `format` says.
    fn set_access_log(&self, format: AccessLogFormat) {
        let mut cell = self.access_log.borrow_mut();
        if cell.as_ref().map(|l| l.format()) == Some(format) {
            return;
        }
        if let Some(old) = cell.take() {
            let _ = old.flush();
        }
        if format == AccessLogFormat::Off {
            return;
        }
        match AccessLog::stdout(format) {
            Ok(log) => *cell = Some(Rc::new(log)),
            Err(e) => warn!(
                worker = self.worker,
                "cannot open the access log on stdout: {e}"
            ),
        }
    }

    /// Makes `generation` the worker's listener set.
    pub(crate) fn apply(&mut self, generation: Generation) {
        let settings = generation.settings;
        self.set_access_log(settings.access_log);
        let metrics = Rc::new(generation.metrics);
        let mut next = Vec::with_capacity(generation.plans.len());
        let planned = generation.plans.into_iter().zip(generation.opened);
        for (index, (plan, opened)) in planned.enumerate() {
            let old = self
                .active
                .iter()
                .position(|a| a.name == plan.name)
                .map(|i| self.active.swap_remove(i));
            let name = plan.name.clone();
            let previous = old.as_ref().map(|a| a.ctx.borrow().clone());
            let ctx = self.context(plan, index, &metrics, previous.as_deref(), &settings, None);
            match (opened.is_empty(), old) {
                (false, old) => {
                    if let Some(old) = old {
                        old.closed.trigger();
                        old.ctx.borrow().retired.trigger();
                    }
                    next.push(self.spawn(name, opened, ctx));
                }
                (true, Some(kept)) => {
                    let replaced = std::mem::replace(&mut *kept.ctx.borrow_mut(), ctx);
                    replaced.retired.trigger();
                    next.push(kept);
                }
                // Not reached: the main thread opens a socket for every listener this worker
                // does not have yet.
                (true, None) => warn!(
                    worker = self.worker,
                    listener = %name,
                    "listener has no socket on this worker"
                ),
            }
        }
        for removed in self.active.drain(..) {
            removed.closed.trigger();
            removed.ctx.borrow().retired.trigger();
        }
        self.active = next;
    }

    /// The context of one listener (and, inside it, of each of its sites; `site_of` is given
    /// for a site). `previous` is
    /// the context this one replaces: its upstream pools are kept where the upstream (address
    /// and TLS) is unchanged. `hosts` is the listener's server-name map and this site's place
    /// in it, for a site's context.
    fn context(
        &self,
        plan: ListenerPlan,
        index: usize,
        metrics: &Rc<WorkerMetrics>,
        previous: Option<&ListenerCtx>,
        settings: &Settings,
        site_of: Option<SiteOf>,
    ) -> Rc<ListenerCtx> {
        // A listener's sites share its name map and its generation's retirement.
        let (hosts, retired) = match site_of {
            Some(SiteOf { hosts, retired }) => (Some(hosts), retired),
            None => (None, Rc::new(Shutdown::default())),
        };
        let tls = plan.upstream_tls.as_ref();
        let pool = previous
            .map(|p| p.pool.clone())
            .filter(|p| p.serves(plan.upstream, tls.map(|t| &t.fingerprint)))
            .unwrap_or_else(|| {
                let tls = tls.map(|t| PoolTls {
                    config: t.for_worker(),
                    server_name: t.server_name.clone(),
                    fingerprint: t.fingerprint,
                });
                Rc::new(Pool::new(plan.upstream, tls))
            });
        // An h2c upstream: one multiplexed pool per worker, kept across a reload like `pool`.
        let h2c = (plan.upstream_protocol == crate::config::UpstreamProtocol::H2c).then(|| {
            previous
                .and_then(|p| p.h2c.clone())
                .filter(|p| p.addr() == plan.upstream)
                .unwrap_or_else(|| Rc::new(crate::proxy::H2cPool::new(plan.upstream)))
        });
        // A listener with sites: every request's Host must belong to the site the handshake
        // chose (the listener's own policy is site 0).
        let hosts = hosts.or_else(|| {
            (!plan.sites.is_empty()).then(|| {
                let hosts = Hosts {
                    names: plan.site_names.clone(),
                };
                (Rc::new(hosts), 0)
            })
        });
        // A route's own upstream keeps its pool across a reload like the main one.
        let routes = plan.routes.map(|target| {
            target.map(|up| {
                let kept = previous.and_then(|p| {
                    p.routes
                        .iter()
                        .filter_map(|r| r.target.as_ref())
                        .find(|r| r.pool.serves(up.addr, None))
                        .map(|r| r.pool.clone())
                });
                Rc::new(RoutePool {
                    pool: kept.unwrap_or_else(|| Rc::new(Pool::new(up.addr, None))),
                    host: up.authority.into_bytes(),
                })
            })
        });
        let sites = plan
            .sites
            .into_iter()
            .enumerate()
            .map(|(i, site)| {
                let before = previous
                    .and_then(|p| p.sites.iter().find(|s| s.name == site.name))
                    .map(|s| &**s);
                let own = hosts.as_ref().map(|(h, _)| SiteOf {
                    hosts: (h.clone(), i + 1),
                    retired: retired.clone(),
                });
                self.context(site, index, metrics, before, settings, own)
            })
            .collect();
        Rc::new(ListenerCtx {
            name: plan.name,
            index,
            metrics: metrics.clone(),
            access_log: self.access_log.borrow().clone(),
            failure_log: self.failure_log.clone(),
            tls: plan.tls,
            cache: plan.cache,
            pool,
            upstream_host: plan.upstream_host.into_bytes(),
            timeouts: settings.timeouts,
            limits: settings.limits,
            max_connections: settings.max_connections,
            upgrade: plan.upgrade,
            verifies_clients: plan.verifies_clients,
            protocol: plan.protocol,
            upstream_proxy_protocol: plan.upstream_proxy_protocol,
            h2c,
            h2: settings.h2,
            proxy_in: plan.proxy_in,
            passthrough: plan.passthrough,
            tunnel_idle: settings.timeouts.tunnel_idle,
            shutdown: self.shutdown.clone(),
            retired,
            idle_clock: self.idle_clock.clone(),
            handshake_turns: self.handshake_turns.clone(),
            sites,
            hosts,
            strict_sni: plan.strict_sni,
            routes,
        })
    }

    /// An accept loop on each of `sockets`, all handing out the same context.
    fn spawn(
        &self,
        name: String,
        sockets: Vec<std::net::TcpListener>,
        ctx: Rc<ListenerCtx>,
    ) -> Active {
        let active = Active {
            name,
            ctx: Rc::new(RefCell::new(ctx)),
            closed: Rc::new(Shutdown::default()),
        };
        for socket in sockets {
            match TcpListener::from_std(socket) {
                Ok(listener) => {
                    monoio::spawn(accept_loop(
                        listener,
                        active.ctx.clone(),
                        active.closed.clone(),
                        self.gauge.clone(),
                    ));
                }
                Err(e) => warn!(
                    worker = self.worker,
                    listener = %active.name,
                    "cannot register listening socket: {e}"
                ),
            }
        }
        active
    }

    /// Closes every idle upstream connection (shutdown).
    pub(crate) fn clear_pools(&self) {
        for a in &self.active {
            let ctx = a.ctx.borrow();
            let contexts = std::iter::once(&**ctx).chain(ctx.sites.iter().map(Rc::as_ref));
            for c in contexts {
                c.pool.clear();
                for r in c.routes.iter().filter_map(|r| r.target.as_ref()) {
                    r.pool.clear();
                }
            }
        }
    }

    /// The grace period of the newest generation.
    pub(crate) fn shutdown_grace(&self) -> Option<Duration> {
        self.active
            .first()
            .map(|a| a.ctx.borrow().timeouts.shutdown_grace)
    }
}

async fn accept_loop(
    listener: TcpListener,
    current: Rc<RefCell<Rc<ListenerCtx>>>,
    closed: Rc<Shutdown>,
    gauge: Rc<ConnGauge>,
) {
    let mut backoff_logged = false;
    let mut canceller = Canceller::new();
    loop {
        let ctx = current.borrow().clone();
        let shutdown = &ctx.shutdown;
        while gauge.open.get() >= ctx.max_connections && !shutdown.is_set() && !closed.is_set() {
            monoio::select! {
                _ = gauge.freed.wait() => {},
                _ = shutdown.wait() => {},
                _ = closed.wait() => {},
            }
        }
        if shutdown.is_set() || closed.is_set() {
            return;
        }
        let accepted = {
            let mut accept = std::pin::pin!(listener.cancelable_accept(canceller.handle()));
            let stopped = async {
                monoio::select! {
                    _ = shutdown.wait() => {},
                    _ = closed.wait() => {},
                }
            };
            let finished = monoio::select! {
                r = &mut accept => Some(r),
                _ = stopped => None,
            };
            match finished {
                Some(r) => r,
                None => {
                    // Stopping: cancel, and take a connection the kernel accepted meanwhile.
                    // The next turn of the loop serves it (if any) and returns.
                    canceller = std::mem::take(&mut canceller).cancel();
                    match accept.await {
                        Ok(conn) => Ok(conn),
                        Err(_) => return,
                    }
                }
            }
        };
        match accepted {
            Ok((tcp, peer)) => {
                backoff_logged = false;
                gauge.open.set(gauge.open.get() + 1);
                let guard = ConnGuard(gauge.clone());
                // The context current at accept time: a reload during this connection's
                // life does not change the rules it was admitted under.
                let ctx = current.borrow().clone();
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

/// Writes the worker's buffered access-log lines out every second, so a quiet listener's lines
/// do not wait for the buffer to fill.
pub(crate) async fn flush_access_log(cell: AccessLogCell, shutdown: Rc<Shutdown>) {
    loop {
        monoio::select! {
            _ = monoio::time::sleep(ACCESS_LOG_FLUSH) => {},
            _ = shutdown.wait() => return,
        }
        let log = cell.borrow().clone();
        if let Some(log) = log {
            let _ = log.flush();
        }
    }
}

/// What a site's context shares with its listener's: the name map (with the site's index in
/// it) and the generation's retirement (see `ListenerCtx::retired`).
struct SiteOf {
    hosts: (Rc<Hosts>, usize),
    retired: Rc<Shutdown>,
}
