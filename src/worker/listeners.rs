//! One worker's listener table: an accept loop per listener, and the current `ListenerCtx`
//! each loop hands to the connections it accepts.
//!
//! A reload swaps the context in place (new connections get the new certificate, trust,
//! upstream, timeouts and limits; established ones keep the `Rc` they took at accept), starts
//! loops for new or moved listeners on the sockets the main thread bound for them, and stops
//! the loops of removed ones. An upstream pool survives a reload that keeps its address.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use monoio::net::TcpListener;
use tracing::warn;

use super::events::{ConnGauge, ConnGuard, Shutdown};
use super::{Generation, ListenerPlan, Settings};
use crate::proxy::{self, upstream::Pool, ListenerCtx};

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
    gauge: Rc<ConnGauge>,
    active: Vec<Active>,
}

impl Listeners {
    pub(crate) fn new(worker: usize, shutdown: Rc<Shutdown>, gauge: Rc<ConnGauge>) -> Self {
        Listeners {
            worker,
            shutdown,
            gauge,
            active: Vec::new(),
        }
    }

    /// Makes `generation` the worker's listener set.
    pub(crate) fn apply(&mut self, generation: Generation) {
        let settings = generation.settings;
        let mut next = Vec::with_capacity(generation.plans.len());
        for (plan, opened) in generation.plans.into_iter().zip(generation.opened) {
            let old = self
                .active
                .iter()
                .position(|a| a.name == plan.name)
                .map(|i| self.active.swap_remove(i));
            let pool = old
                .as_ref()
                .map(|a| a.ctx.borrow().pool.clone())
                .filter(|p| p.addr() == plan.upstream)
                .unwrap_or_else(|| Rc::new(Pool::new(plan.upstream)));
            let name = plan.name.clone();
            let ctx = self.context(plan, pool, &settings);
            match (opened, old) {
                (Some(socket), old) => {
                    if let Some(old) = old {
                        old.closed.trigger();
                    }
                    match TcpListener::from_std(socket) {
                        Ok(listener) => next.push(self.spawn(name, listener, ctx)),
                        Err(e) => warn!(
                            worker = self.worker,
                            listener = %name,
                            "cannot register listening socket: {e}"
                        ),
                    }
                }
                (None, Some(kept)) => {
                    *kept.ctx.borrow_mut() = ctx;
                    next.push(kept);
                }
                // Not reached: the main thread opens a socket for every listener this worker
                // does not have yet.
                (None, None) => warn!(
                    worker = self.worker,
                    listener = %name,
                    "listener has no socket on this worker"
                ),
            }
        }
        for removed in self.active.drain(..) {
            removed.closed.trigger();
        }
        self.active = next;
    }

    fn context(&self, plan: ListenerPlan, pool: Rc<Pool>, settings: &Settings) -> Rc<ListenerCtx> {
        Rc::new(ListenerCtx {
            name: plan.name,
            tls: plan.tls,
            cache: plan.cache,
            pool,
            upstream_host: plan.upstream_host.into_bytes(),
            timeouts: settings.timeouts,
            limits: settings.limits,
            max_connections: settings.max_connections,
            shutdown: self.shutdown.clone(),
        })
    }

    fn spawn(&self, name: String, listener: TcpListener, ctx: Rc<ListenerCtx>) -> Active {
        let active = Active {
            name,
            ctx: Rc::new(RefCell::new(ctx)),
            closed: Rc::new(Shutdown::default()),
        };
        monoio::spawn(accept_loop(
            listener,
            active.ctx.clone(),
            active.closed.clone(),
            self.gauge.clone(),
        ));
        active
    }

    /// Closes every idle upstream connection (shutdown).
    pub(crate) fn clear_pools(&self) {
        for a in &self.active {
            a.ctx.borrow().pool.clear();
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
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait() => return,
            _ = closed.wait() => return,
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
