//! A per-worker limit on log lines (handshake failures): at most N lines in each one-second
//! window; what is held back is counted and reported in one line when the next window opens.
//!
//! A flood of failing handshakes (a scanner, a misconfigured client fleet) would otherwise
//! write one line each and fill the disk. The limiter is single-threaded (`Cell`): each worker
//! has its own, so it costs no lock or atomic. The caller passes the time in, which keeps it
//! pure and testable.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Lines per second per worker when nothing else is configured.
pub const DEFAULT_PER_SECOND: u32 = 20;
const WINDOW: Duration = Duration::from_secs(1);

/// What to do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; first log [`LogLimiter::summary`] of `suppressed_before` when that is nonzero.
    Log { suppressed_before: u64 },
    /// Drop it (it has been counted).
    Suppress,
}

#[derive(Debug)]
pub struct LogLimiter {
    per_second: u32,
    window_start: Cell<Option<Instant>>,
    logged: Cell<u32>,
    suppressed: Cell<u64>,
}

impl LogLimiter {
    pub fn new(per_second: u32) -> Self {
        LogLimiter {
            per_second,
            window_start: Cell::new(None),
            logged: Cell::new(0),
            suppressed: Cell::new(0),
        }
    }

    /// Decides about one line at `now`.
    pub fn check(&self, now: Instant) -> Verdict {
        let expired = self
            .window_start
            .get()
            .is_none_or(|start| now.saturating_duration_since(start) >= WINDOW);
        if expired {
            self.window_start.set(Some(now));
            self.logged.set(0);
        }
        if self.logged.get() < self.per_second {
            self.logged.set(self.logged.get() + 1);
            Verdict::Log {
                suppressed_before: self.suppressed.replace(0),
            }
        } else {
            self.suppressed.set(self.suppressed.get() + 1);
            Verdict::Suppress
        }
    }

    /// For a timer: once the window is over, the count of lines it held back (to report with
    /// [`LogLimiter::summary`]) when no new line would report it.
    pub fn take_suppressed(&self, now: Instant) -> Option<u64> {
        let over = self
            .window_start
            .get()
            .is_some_and(|start| now.saturating_duration_since(start) >= WINDOW);
        if over && self.suppressed.get() > 0 {
            Some(self.suppressed.replace(0))
        } else {
            None
        }
    }

    /// The line that stands for `n` suppressed lines.
    pub fn summary(&self, n: u64) -> String {
        format!(
            "{n} more handshake failures suppressed in the last second \
             (at most {} lines per second per worker)",
            self.per_second
        )
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new(DEFAULT_PER_SECOND)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_n_lines_per_second_then_one_summary() {
        let limiter = LogLimiter::new(3);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        for ms in [0, 10, 20] {
            assert_eq!(
                limiter.check(at(ms)),
                Verdict::Log {
                    suppressed_before: 0
                }
            );
        }
        for ms in [30, 500, 999] {
            assert_eq!(limiter.check(at(ms)), Verdict::Suppress);
        }
        assert_eq!(limiter.take_suppressed(at(999)), None, "window still open");
        // The next window's first line carries the count of the previous one.
        assert_eq!(
            limiter.check(at(1000)),
            Verdict::Log {
                suppressed_before: 3
            }
        );
        assert_eq!(
            limiter.check(at(1001)),
            Verdict::Log {
                suppressed_before: 0
            }
        );
    }

    #[test]
    fn a_timer_reports_what_no_later_line_would() {
        let limiter = LogLimiter::new(1);
        let t0 = Instant::now();
        limiter.check(t0);
        limiter.check(t0);
        limiter.check(t0);
        assert_eq!(limiter.take_suppressed(t0 + WINDOW), Some(2));
        assert_eq!(
            limiter.take_suppressed(t0 + WINDOW * 2),
            None,
            "reported once"
        );
        assert_eq!(
            limiter.check(t0 + WINDOW * 3),
            Verdict::Log {
                suppressed_before: 0
            }
        );
        let line = limiter.summary(2);
        assert!(
            line.starts_with("2 more handshake failures suppressed"),
            "{line}"
        );
    }

    #[test]
    fn zero_suppresses_everything_but_still_counts() {
        let limiter = LogLimiter::new(0);
        let t0 = Instant::now();
        assert_eq!(limiter.check(t0), Verdict::Suppress);
        assert_eq!(limiter.take_suppressed(t0 + WINDOW), Some(1));
    }
}
