//! Per-worker pool of I/O buffers, so an idle connection holds none and a busy one allocates none.
//!
//! A connection lives on one worker thread from accept to close, so a thread-local free list is
//! enough: no locks, no atomics. Buffers are taken when bytes are about to move and given back
//! as soon as the connection waits for its next request.

use std::cell::RefCell;

/// Every pooled buffer has this capacity: one TLS record of plaintext plus slack for headers.
pub const BUF_CAPACITY: usize = 16 * 1024 + 1024;
/// Free buffers kept per worker; beyond that, returned buffers are freed.
const POOL_MAX: usize = 1024;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with at least `BUF_CAPACITY` of room.
pub fn take() -> Vec<u8> {
    FREE.with(|f| f.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(BUF_CAPACITY))
}

/// Hands a buffer back; oversized ones (grown for a large head) are freed rather than pooled.
pub fn give(mut buf: Vec<u8>) {
    if buf.capacity() < BUF_CAPACITY || buf.capacity() > 4 * BUF_CAPACITY {
        return;
    }
    buf.clear();
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < POOL_MAX {
            f.push(buf);
        }
    });
}

/// A buffer slot that may be empty while the connection is idle.
#[derive(Default)]
pub struct Slot(Option<Vec<u8>>);

impl Slot {
    /// The buffer, taken from the pool if the slot was empty.
    pub fn get(&mut self) -> &mut Vec<u8> {
        self.0.get_or_insert_with(take)
    }

    /// The buffer's bytes, empty if the slot holds none.
    pub fn get_ref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or(&[])
    }

    /// Moves the buffer out (for an owned-buffer io_uring call); put it back with `put`.
    pub fn take(&mut self) -> Vec<u8> {
        self.0.take().unwrap_or_else(take)
    }

    pub fn put(&mut self, buf: Vec<u8>) {
        self.0 = Some(buf);
    }

    /// Returns the buffer to the pool whatever it holds (the caller has consumed it).
    pub fn release(&mut self) {
        if let Some(b) = self.0.take() {
            give(b);
        }
    }

    /// Returns an empty buffer to the pool.
    pub fn release_if_empty(&mut self) {
        if let Some(b) = self.0.take_if(|b| b.is_empty()) {
            give(b);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            give(b);
        }
    }
}
