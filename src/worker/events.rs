//! Single-threaded events a worker's tasks wait on: the shutdown flag, a notify-all event and
//! the open-connection gauge. `Rc` + `Cell`: a worker never shares them with another thread.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A shutdown flag that tasks of one worker can wait on. Single-threaded: `Rc` + `Cell`.
/// A waiting task's waker is removed when its wait ends, so the many short idle waits of a
/// long-lived keep-alive connection leave nothing behind.
#[derive(Default)]
pub struct Shutdown {
    set: Cell<bool>,
    /// Set by [`Shutdown::trigger_patiently`].
    patient: Cell<bool>,
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

    /// Whether idle connections may wait for their next request (see `trigger_patiently`).
    pub fn is_patient(&self) -> bool {
        self.patient.get()
    }

    /// Sets the flag after a handover: another process accepts on the same sockets, so an
    /// idle keep-alive connection is not closed under its client (who may be sending its next
    /// request at that moment) but serves one more request, answered with `Connection: close`.
    pub fn trigger_patiently(&self) {
        self.patient.set(true);
        self.trigger();
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
pub(crate) struct Event {
    generation: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
}

impl Event {
    pub(crate) fn notify(&self) {
        self.generation.set(self.generation.get() + 1);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Resolves at the next `notify` after this call.
    pub(crate) fn wait(&self) -> impl Future<Output = ()> + '_ {
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
pub(crate) struct ConnGauge {
    pub(crate) open: Cell<usize>,
    pub(crate) freed: Event,
}

pub(crate) struct ConnGuard(pub(crate) Rc<ConnGauge>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get() - 1);
        // Wake whoever waits for a slot (accept loop) or for zero (drain).
        self.0.freed.notify();
    }
}
