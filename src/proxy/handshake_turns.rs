//! How a worker shares its time between handshakes and established connections.
//!
//! A full mTLS handshake costs about 150 µs of CPU in two steps (the server's flight: key
//! exchange and signature; the client's certificate: its signature checked), each run to the
//! end once started. A keep-alive request costs about 15 µs. When a flood of handshakes wakes
//! together (64 clients connecting in a loop), monoio runs every ready task in turn before it
//! looks at the ring again, so a request that arrived meanwhile waits for all of their steps:
//! milliseconds, on a worker whose established clients did nothing wrong.
//!
//! Here each handshake step first takes a turn. A worker hands out [`PER_TICK`] turns per turn
//! of its event loop (a tick: the loop reaps the ring's completions), in the order they were
//! asked for; the rest wait for the next tick. In between, everything the tick woke runs, so an
//! established connection's request waits behind at most one handshake step, not all of them.
//! Handshakes still get the whole CPU when nothing else is ready: a tick then takes a few
//! microseconds.
//!
//! The tick is seen through the ring: a task (running only while steps wait) polls a socket that
//! is always writable, and io_uring completes that poll at once, so the task wakes at the next
//! reaping. With the epoll driver the poll answers at once and there is no tick to see: turns
//! are then not limited (every step runs when it asks, as without turns).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Handshake steps a worker starts per tick when steps are waiting. One: each tick serves
/// what it woke, then at most one handshake step (see the README's handshake-flood figures).
pub const PER_TICK: u32 = 1;

/// One worker's turns (shared by its listeners' contexts; never crosses threads).
#[derive(Default)]
pub struct HandshakeTurns(RefCell<State>);

#[derive(Default)]
struct State {
    /// Turns left in this tick.
    available: u32,
    /// Steps waiting for a turn, oldest first: (ticket, waker).
    queue: VecDeque<(u64, Option<Waker>)>,
    /// Tickets given a turn whose step has not yet taken it.
    granted: Vec<u64>,
    next_ticket: u64,
    ticker_running: bool,
    /// The always-writable socket the ticker polls; `None` until first needed.
    beacon: Option<Rc<monoio::net::udp::UdpSocket>>,
    /// Set when the loop's turns cannot be seen (the epoll driver, or no socket for the
    /// beacon): then no step waits, as before turns.
    unlimited: bool,
}

impl HandshakeTurns {
    /// Resolves when this worker lets one more handshake step run.
    pub fn take(self: &Rc<Self>) -> Take {
        Take {
            turns: self.clone(),
            ticket: None,
        }
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.0.borrow().queue.len()
    }

    fn start_ticker(self: &Rc<Self>) {
        let mut s = self.0.borrow_mut();
        if s.ticker_running {
            return;
        }
        s.ticker_running = true;
        if s.beacon.is_none() {
            // Without one (out of descriptors in a flood, say) the ticker finds no beacon and
            // lifts the limit for good.
            s.beacon = beacon().ok().map(Rc::new);
        }
        drop(s);
        monoio::spawn(ticker(self.clone()));
    }

    /// A new tick: hands its turns to the oldest waiting steps.
    fn tick(&self) {
        let mut s = self.0.borrow_mut();
        s.available = if s.unlimited { u32::MAX } else { PER_TICK };
        while s.available > 0 {
            let Some((ticket, waker)) = s.queue.pop_front() else {
                break;
            };
            s.available -= 1;
            s.granted.push(ticket);
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

fn beacon() -> std::io::Result<monoio::net::udp::UdpSocket> {
    let std = std::net::UdpSocket::bind(("127.0.0.1", 0))?;
    monoio::net::udp::UdpSocket::from_std(std)
}

/// Runs while steps wait: one tick per reaping of the ring.
async fn ticker(turns: Rc<HandshakeTurns>) {
    loop {
        let beacon = {
            let mut s = turns.0.borrow_mut();
            if s.queue.is_empty() {
                s.ticker_running = false;
                return;
            }
            s.beacon.clone()
        };
        let ticked = match beacon {
            Some(b) => next_tick(&b).await,
            None => false,
        };
        if !ticked {
            // No way to see the loop's turns (epoll driver, or no socket): every step runs
            // when it asks, as it did without turns.
            turns.0.borrow_mut().unlimited = true;
        }
        turns.tick();
    }
}

/// Waits for the ring's next reaping; false when the poll answered at once (the epoll driver
/// polls inline, and its readiness is cached), so there is no tick to wait for.
async fn next_tick(beacon: &monoio::net::udp::UdpSocket) -> bool {
    let mut poll = std::pin::pin!(beacon.writable(false));
    let mut waited = false;
    let done = std::future::poll_fn(|cx| {
        let p = poll.as_mut().poll(cx);
        waited |= p.is_pending();
        p
    })
    .await;
    done.is_ok() && waited
}

/// See [`HandshakeTurns::take`]. Dropped while waiting, it gives its place (or its turn) up.
pub struct Take {
    turns: Rc<HandshakeTurns>,
    ticket: Option<u64>,
}

impl Future for Take {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let turns = self.turns.clone();
        let mut s = turns.0.borrow_mut();
        match self.ticket {
            None => {
                if s.queue.is_empty() && (s.available > 0 || s.unlimited) {
                    s.available = s.available.saturating_sub(1);
                    return Poll::Ready(());
                }
                let ticket = s.next_ticket;
                s.next_ticket += 1;
                s.queue.push_back((ticket, Some(cx.waker().clone())));
                self.ticket = Some(ticket);
                drop(s);
                turns.start_ticker();
                Poll::Pending
            }
            Some(ticket) => {
                if let Some(i) = s.granted.iter().position(|&t| t == ticket) {
                    s.granted.swap_remove(i);
                    self.ticket = None;
                    return Poll::Ready(());
                }
                if let Some(entry) = s.queue.iter_mut().find(|(t, _)| *t == ticket) {
                    match &entry.1 {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => entry.1 = Some(cx.waker().clone()),
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Take {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket else { return };
        let mut s = self.turns.0.borrow_mut();
        if let Some(i) = s.granted.iter().position(|&t| t == ticket) {
            // Granted but never taken (the handshake timed out or the client left): the turn
            // goes to the next step in line.
            s.granted.swap_remove(i);
            if let Some((next, waker)) = s.queue.pop_front() {
                s.granted.push(next);
                if let Some(w) = waker {
                    w.wake();
                }
            } else {
                s.available += 1;
            }
        } else if let Some(i) = s.queue.iter().position(|(t, _)| *t == ticket) {
            s.queue.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn uring() -> Option<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>> {
        if !monoio::utils::detect_uring() {
            eprintln!("io_uring unavailable: turns are not limited, nothing to test");
            return None;
        }
        Some(
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .enable_timer()
                .build()
                .expect("runtime"),
        )
    }

    /// Five handshake steps wake at once beside a connection that does I/O on every tick: the
    /// steps run one per tick, in order, and the connection's work runs between any two.
    #[test]
    fn waiting_steps_take_turns_in_order_with_other_work_between() {
        let Some(mut rt) = uring() else { return };
        rt.block_on(async {
            let turns = Rc::new(HandshakeTurns::default());
            let log = Rc::new(RefCell::new(Vec::new()));
            let busy = Rc::new(Cell::new(true));
            let other = {
                let (log, busy) = (log.clone(), busy.clone());
                monoio::spawn(async move {
                    let sock = beacon().expect("socket");
                    while busy.get() {
                        log.borrow_mut().push("r".to_owned());
                        sock.writable(false).await.expect("poll");
                    }
                })
            };
            let mut steps = Vec::new();
            for i in 0..5 {
                let (turns, log) = (turns.clone(), log.clone());
                steps.push(monoio::spawn(async move {
                    turns.take().await;
                    log.borrow_mut().push(format!("h{i}"));
                }));
            }
            for t in steps {
                t.await;
            }
            busy.set(false);
            other.await;
            let log = log.borrow();
            let order: Vec<_> = log.iter().filter(|s| s.starts_with('h')).collect();
            assert_eq!(order, ["h0", "h1", "h2", "h3", "h4"]);
            for pair in log.windows(2) {
                assert!(
                    !(pair[0].starts_with('h') && pair[1].starts_with('h')),
                    "two handshake steps in one tick: {log:?}"
                );
            }
            assert_eq!(turns.waiting(), 0);
        });
    }

    /// A step that gives up (its handshake timed out) leaves the line, and a turn granted to
    /// it goes to the next step.
    #[test]
    fn a_dropped_step_gives_its_place_and_turn_up() {
        let Some(mut rt) = uring() else { return };
        rt.block_on(async {
            let turns = Rc::new(HandshakeTurns::default());
            let mut cx = Context::from_waker(Waker::noop());
            let mut first = Box::pin(turns.take());
            assert!(first.as_mut().poll(&mut cx).is_pending());
            let mut second = Box::pin(turns.take());
            assert!(second.as_mut().poll(&mut cx).is_pending());
            let mut third = Box::pin(turns.take());
            assert!(third.as_mut().poll(&mut cx).is_pending());
            assert_eq!(turns.waiting(), 3);
            turns.tick(); // the first's turn
            drop(first); // passes it on to the second
            assert!(second.as_mut().poll(&mut cx).is_ready());
            drop(third); // leaves the line
            assert_eq!(turns.waiting(), 0);
            assert!(turns.0.borrow().granted.is_empty());
        });
    }

    /// Without a tick to see (epoll), no step waits.
    #[test]
    fn with_the_epoll_driver_steps_do_not_wait() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let turns = Rc::new(HandshakeTurns::default());
            for _ in 0..3 {
                turns.take().await;
            }
            assert!(turns.0.borrow().unlimited);
        });
    }
}
