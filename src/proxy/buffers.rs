//! Per-worker pool of I/O buffers, so an idle connection holds none and a busy one allocates none.
//!
//! A connection lives on one worker thread from accept to close, so a thread-local free list is
//! enough: no locks, no atomics. Ownership does the bookkeeping:
//! * [`PooledBuf`] goes back to the pool when dropped, wherever that happens: at the end of an
//!   exchange, on an error path, or inside the runtime after a cancelled io_uring call
//!   completes (the kernel may still write into a buffer whose future was dropped, so the
//!   runtime keeps it until then; it comes home afterwards).
//! * [`Slot::lend`] lends a connection's long-lived buffer to one owned-buffer I/O call and
//!   puts back whatever the call hands back, so no code path can forget to.

use std::cell::RefCell;
use std::future::Future;
use std::ops::{Deref, DerefMut};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::AsyncReadRent;

/// Every pooled buffer has this capacity: one TLS record of plaintext plus slack for headers.
pub const BUF_CAPACITY: usize = 16 * 1024 + 1024;
/// How much of a long body one read takes, from the app or from the client: four TLS records.
/// Read 16 KiB at a time, a 128 MiB download cost 8192 reads from the app, 8192 flushes and
/// as many trips through the event loop; at 64 KiB a quarter of each. A buffer grown to this
/// is freed when dropped, not pooled (see `Drop`).
pub const BULK_READ: usize = 64 * 1024;
/// Free buffers kept per worker; beyond that, returned buffers are freed.
const POOL_MAX: usize = 1024;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer from the worker's pool; dropping it gives it back.
#[derive(Debug)]
pub struct PooledBuf(Vec<u8>);

impl PooledBuf {
    /// An empty buffer with at least `BUF_CAPACITY` of room.
    pub fn take() -> Self {
        let buf = FREE
            .try_with(|f| f.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_else(|| Vec::with_capacity(BUF_CAPACITY));
        PooledBuf(buf)
    }
}

/// Bytes the worker's pool keeps in free buffers: the worker's, not any connection's.
#[cfg(all(test, feature = "demo"))]
pub fn pooled_bytes() -> usize {
    FREE.with(|f| f.borrow().iter().map(Vec::capacity).sum())
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        // Grown ones (a large head, a long body's 64 KiB reads) are freed rather than pooled:
        // the pool would hand them out for any use.
        if buf.capacity() < BUF_CAPACITY || buf.capacity() > 2 * BUF_CAPACITY {
            return;
        }
        buf.clear();
        // `try_with`: a buffer released while the thread's locals are torn down is just freed.
        let _ = FREE.try_with(|f| {
            let mut f = f.borrow_mut();
            if f.len() < POOL_MAX {
                f.push(buf);
            }
        });
    }
}

impl Deref for PooledBuf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

// SAFETY: delegates to `Vec<u8>`'s implementations; the heap allocation a `PooledBuf` owns does
// not move when the `PooledBuf` moves, and nothing else can reach it while io_uring holds it.
unsafe impl IoBuf for PooledBuf {
    fn read_ptr(&self) -> *const u8 {
        self.0.read_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.0.bytes_init()
    }
}

// SAFETY: as above; `set_init` is only called by the runtime after the kernel wrote that many
// bytes into the spare capacity.
unsafe impl IoBufMut for PooledBuf {
    fn write_ptr(&mut self) -> *mut u8 {
        self.0.write_ptr()
    }
    fn bytes_total(&mut self) -> usize {
        self.0.bytes_total()
    }
    unsafe fn set_init(&mut self, init_len: usize) {
        self.0.set_init(init_len)
    }
}

/// A connection's buffer slot, empty while the connection is idle.
#[derive(Default)]
pub struct Slot(Option<PooledBuf>);

impl Slot {
    /// The buffer, taken from the pool if the slot was empty.
    pub fn get(&mut self) -> &mut PooledBuf {
        self.0.get_or_insert_with(PooledBuf::take)
    }

    /// The buffer's bytes, empty if the slot holds none.
    pub fn get_ref(&self) -> &[u8] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    /// Lends the buffer to an owned-buffer I/O call. What the call hands back goes back into
    /// the slot; `None` (the call was cancelled while the kernel still held the buffer) leaves
    /// the slot empty, to be refilled from the pool when next used.
    pub async fn lend<T, F, Fut>(&mut self, io: F) -> T
    where
        F: FnOnce(PooledBuf) -> Fut,
        Fut: Future<Output = (T, Option<PooledBuf>)>,
    {
        let buf = self.0.take().unwrap_or_else(PooledBuf::take);
        let (result, buf) = io(buf).await;
        self.0 = buf;
        result
    }

    /// Replaces the buffer's contents with one read from `r` (the ciphertext reads of both TLS
    /// streams). `Ok(0)` at EOF. A cancelled read leaves the slot empty (see [`Slot::lend`]).
    /// `room`: the most to read, when more than a pooled buffer holds (a long body's read).
    pub async fn refill<R: AsyncReadRent>(
        &mut self,
        r: &mut R,
        room: usize,
    ) -> std::io::Result<usize> {
        self.lend(|mut buf| async move {
            buf.clear();
            if buf.capacity() < room {
                // A fresh block, not a grown one: growing copies the old block's every byte,
                // though none of them is wanted. The pooled one goes back to the pool.
                buf = PooledBuf(Vec::with_capacity(room));
            }
            let cap = buf.capacity();
            let (res, slice) = r.read(buf.slice_mut(0..cap)).await;
            (res, Some(slice.into_inner()))
        })
        .await
    }

    /// Returns the buffer to the pool whatever it holds (the caller has consumed it).
    pub fn release(&mut self) {
        self.0 = None;
    }

    /// Returns an empty buffer to the pool.
    pub fn release_if_empty(&mut self) {
        if self.get_ref().is_empty() {
            self.0 = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_buffers_return_to_the_pool() {
        let mut b = PooledBuf::take();
        b.extend_from_slice(b"data");
        let ptr = b.as_ptr();
        drop(b);
        let again = PooledBuf::take();
        assert_eq!(again.as_ptr(), ptr, "the same allocation comes back");
        assert!(again.is_empty(), "and it comes back empty");
    }

    #[test]
    fn lend_puts_back_what_the_call_returns() {
        let mut slot = Slot::default();
        slot.get().extend_from_slice(b"abc");
        let n = futures_lite_block_on(slot.lend(|buf| async move { (buf.len(), Some(buf)) }));
        assert_eq!(n, 3);
        assert_eq!(slot.get_ref(), b"abc");
        // A call that lost its buffer leaves the slot empty, and it refills on demand.
        futures_lite_block_on(slot.lend(|_buf| async move { ((), None) }));
        assert!(slot.get_ref().is_empty());
        assert!(slot.get().capacity() >= BUF_CAPACITY);
    }

    /// Polls a future that never waits (the ones above complete on first poll).
    fn futures_lite_block_on<F: Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the test future waited"),
        }
    }
}
