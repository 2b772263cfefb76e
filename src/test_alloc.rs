//! The unit-test binary's allocator: the system allocator, counting the heap bytes each thread
//! holds (allocated minus freed on that thread), so a test can say in bytes, not in resident
//! memory, what a connection keeps while it idles (see `proxy/idle_memory_tests.rs`), and the
//! bytes each thread has asked for in all, so a test can say what a request costs the
//! allocator.
//!
//! Only the unit tests get it; the binary's allocator is mimalloc (`main.rs`). Counts are the
//! sizes asked for, before any allocator rounds them up.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    // Const-initialized and without a destructor: reading it never allocates, so the
    // allocator may use it (also while the thread's other locals are being torn down).
    static HELD: Cell<isize> = const { Cell::new(0) };
    static ASKED: Cell<usize> = const { Cell::new(0) };
}

fn add(bytes: isize) {
    let _ = HELD.try_with(|h| h.set(h.get() + bytes));
}

/// Counts a fresh allocation (or a reallocation to a larger size: the allocator may have to
/// move, and so copy, the block) of `bytes`.
fn ask(bytes: usize) {
    let _ = ASKED.try_with(|a| a.set(a.get() + bytes));
}

/// Heap bytes this thread has allocated and not freed, since it started.
pub fn held() -> isize {
    HELD.with(Cell::get)
}

/// Heap bytes this thread has asked for since it started: every allocation's size, and the new
/// size of every reallocation that grew a block. Only ever grows.
pub fn asked() -> usize {
    ASKED.with(Cell::get)
}

struct Counting;

// SAFETY: every call is passed to `System` unchanged; the counter is a plain thread-local.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            add(layout.size() as isize);
            ask(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            add(layout.size() as isize);
            ask(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        add(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            add(new_size as isize - layout.size() as isize);
            if new_size > layout.size() {
                ask(new_size);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[cfg(test)]
mod tests {
    #[test]
    fn counts_what_this_thread_holds() {
        // Made on another thread, freed on this one.
        let theirs = std::thread::spawn(|| vec![0u8; 5000]).join().unwrap();
        let before = super::held();
        let v: Vec<u8> = Vec::with_capacity(1000);
        assert_eq!(super::held() - before, 1000);
        drop(v);
        assert_eq!(super::held() - before, 0);
        drop(theirs);
        assert_eq!(super::held() - before, -5000);
    }

    #[test]
    fn counts_what_this_thread_asked_for() {
        let before = super::asked();
        let mut v: Vec<u8> = Vec::with_capacity(1000);
        v.reserve_exact(3000);
        drop(v);
        // 1000, then a grown block of 3000; freeing takes nothing back.
        assert_eq!(super::asked() - before, 4000);
    }
}
