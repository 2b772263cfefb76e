//! Keep-alive deadlines of idle connections: one timer per worker instead of one per connection.
//!
//! An idle keep-alive connection waits for its next request until a deadline. A monoio
//! `Sleep` would be that deadline, but it is 640 bytes (its two cells are padded to 128-byte
//! cache lines, for threads monoio does not share it with), and every idle connection's task
//! would carry one: a sixth of what an idle connection holds. Here a deadline is an entry in
//! the worker's ordered map (its key and the waiting task's waker, about 60 bytes with the
//! map's own overhead), and one task per worker sleeps until the earliest and wakes the
//! connections whose time is up. The waiting future holds the key.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use monoio::time::Instant;

/// (deadline, sequence number): unique, and ordered by deadline.
type Key = (Instant, u64);

/// One worker's deadlines (shared by its listeners' contexts; never crosses threads).
#[derive(Default)]
pub struct IdleClock(RefCell<State>);

#[derive(Default)]
struct State {
    /// Each waiting deadline and the waker of the task waiting for it (`None` until polled).
    /// An entry that is gone has expired (the reaper took it) or was dropped.
    waiting: BTreeMap<Key, Option<Waker>>,
    next: u64,
    /// The current reaper task, while it runs.
    reaper: Option<Reaper>,
}

struct Reaper {
    /// Tells it from the reapers it replaced, which end when they next wake.
    generation: u64,
    /// When it next looks: the deadline it sleeps until (when it was started, until it runs).
    wakes: Instant,
}

impl IdleClock {
    /// Resolves once `limit` from now has passed. Dropping it before then removes its entry.
    pub fn deadline(self: &Rc<Self>, limit: Duration) -> Deadline<'_> {
        let mut s = self.0.borrow_mut();
        s.next += 1;
        Deadline {
            clock: self,
            key: (Instant::now() + limit, s.next),
            registered: false,
        }
    }
}

/// See [`IdleClock::deadline`].
pub struct Deadline<'a> {
    clock: &'a Rc<IdleClock>,
    key: Key,
    registered: bool,
}

impl Future for Deadline<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let key = self.key;
        let now = Instant::now();
        if now >= key.0 {
            return Poll::Ready(());
        }
        let mut s = self.clock.0.borrow_mut();
        if let Some(waker) = s.waiting.get_mut(&key) {
            match waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        if self.registered {
            return Poll::Ready(()); // the reaper took it: expired
        }
        s.waiting.insert(key, Some(cx.waker().clone()));
        // A new reaper when there is none, or when this deadline comes before the current one
        // next looks (that one ends when it wakes).
        if s.reaper.as_ref().is_none_or(|r| key.0 < r.wakes) {
            s.next += 1;
            let generation = s.next;
            s.reaper = Some(Reaper {
                generation,
                wakes: now,
            });
            monoio::spawn(reap(self.clock.clone(), generation));
        }
        drop(s);
        self.registered = true;
        Poll::Pending
    }
}

impl Drop for Deadline<'_> {
    fn drop(&mut self) {
        if self.registered {
            self.clock.0.borrow_mut().waiting.remove(&self.key);
        }
    }
}

/// What a reaper does next.
enum Step {
    Wake(Option<Waker>),
    Sleep(Instant),
    /// Nothing waits, or a newer reaper took over.
    End,
}

/// A reaper: wakes every task whose deadline has passed, sleeps until the next one, and ends
/// when none is left (the next deadline starts another) or when a newer one replaced it.
async fn reap(clock: Rc<IdleClock>, generation: u64) {
    loop {
        let now = Instant::now();
        // One step at a time, so no borrow is held while a task is woken.
        let step = {
            let mut s = clock.0.borrow_mut();
            let s = &mut *s;
            match s.reaper.as_mut().filter(|r| r.generation == generation) {
                None => Step::End,
                Some(reaper) => match s.waiting.first_entry() {
                    Some(e) if e.key().0 <= now => Step::Wake(e.remove()),
                    Some(e) => {
                        reaper.wakes = e.key().0;
                        Step::Sleep(reaper.wakes)
                    }
                    None => {
                        s.reaper = None;
                        Step::End
                    }
                },
            }
        };
        match step {
            Step::Wake(waker) => waker.into_iter().for_each(Waker::wake),
            Step::Sleep(until) => monoio::time::sleep_until(until).await,
            Step::End => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn run<F: Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    fn waiting(clock: &IdleClock) -> usize {
        clock.0.borrow().waiting.len()
    }

    #[test]
    fn deadlines_fire_in_order_and_not_early() {
        run(async {
            let clock = Rc::new(IdleClock::default());
            let start = Instant::now();
            let fired = Rc::new(RefCell::new(Vec::new()));
            let mut tasks = Vec::new();
            // A later deadline first, then earlier ones, which must each make the clock wake
            // sooner than its reaper had planned.
            for ms in [120u64, 40, 80, 20] {
                let (clock, fired) = (clock.clone(), fired.clone());
                tasks.push(monoio::spawn(async move {
                    clock.deadline(Duration::from_millis(ms)).await;
                    fired.borrow_mut().push((ms, start.elapsed()));
                }));
                monoio::time::sleep(Duration::from_millis(2)).await;
            }
            for t in tasks {
                t.await;
            }
            let fired = fired.borrow();
            let order: Vec<u64> = fired.iter().map(|f| f.0).collect();
            assert_eq!(order, [20, 40, 80, 120]);
            for &(ms, at) in fired.iter() {
                assert!(at >= Duration::from_millis(ms), "{ms} ms fired at {at:?}");
                assert!(
                    at < Duration::from_millis(ms + 500),
                    "{ms} ms fired at {at:?}"
                );
            }
            assert_eq!(waiting(&clock), 0);
        });
    }

    #[test]
    fn a_dropped_deadline_leaves_nothing_behind() {
        run(async {
            let clock = Rc::new(IdleClock::default());
            let r = monoio::select! {
                _ = clock.deadline(Duration::from_secs(60)) => "deadline",
                _ = monoio::time::sleep(Duration::from_millis(10)) => "other",
            };
            assert_eq!(r, "other");
            assert_eq!(waiting(&clock), 0);
        });
    }

    #[test]
    fn the_clock_keeps_working_after_its_reaper_ran_out_of_deadlines() {
        run(async {
            let clock = Rc::new(IdleClock::default());
            let done = Rc::new(Cell::new(0));
            for round in 1..=3 {
                clock.deadline(Duration::from_millis(10)).await;
                // The reaper ends once nothing waits; the next deadline starts another.
                monoio::time::sleep(Duration::from_millis(10)).await;
                assert!(clock.0.borrow().reaper.is_none(), "round {round}");
                done.set(round);
            }
            assert_eq!(done.get(), 3);
        });
    }
}
