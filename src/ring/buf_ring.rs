//! The worker's receive pool and the ring of entries the kernel picks its buffers from
//! (`IORING_REGISTER_PBUF_RING`). Both are shared with the kernel, so neither is ever
//! behind a Rust reference while the kernel may use it: the memory is held as raw
//! pointers, entries are written field by field, and a buffer is read only while this
//! side owns it (the kernel completed a receive into it and it has not been given back),
//! which `owned` records and every read checks.

use std::alloc::Layout;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

/// Buffers in the pool (a power of two: the ring's index mask).
pub const BUF_COUNT: u16 = 256;
/// Bytes per buffer.
pub const BUF_SIZE: usize = 16 * 1024;

/// `struct io_uring_buf`: one entry of the ring. The `resv` field of entry 0 is the ring's
/// tail, which the kernel reads.
#[repr(C)]
struct Entry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

/// See the module documentation.
pub struct BufRing {
    entries: NonNull<Entry>,
    pool: NonNull<u8>,
    /// The next tail to publish.
    tail: u16,
    /// `owned[bid]`: buffer `bid` is on this side (received into, not yet given back).
    owned: Box<[bool]>,
    /// How many buffers are offered to the kernel right now.
    available: u16,
    /// Set when the kernel may still use the memory: it is leaked instead of freed.
    leak: bool,
}

fn entries_layout() -> Layout {
    // Page-aligned, as the kernel requires of a registered buffer ring.
    Layout::from_size_align(BUF_COUNT as usize * std::mem::size_of::<Entry>(), 4096)
        .expect("a valid buffer ring layout")
}

fn pool_layout() -> Layout {
    // No more alignment than the allocator's own: a zeroed block that large then comes from
    // calloc's fresh mapping, whose pages become resident only as receives use them (an
    // over-aligned block is zeroed by hand, 4 MiB resident per worker from the start).
    Layout::from_size_align(BUF_COUNT as usize * BUF_SIZE, 16).expect("a valid pool layout")
}

impl BufRing {
    /// An empty ring (no buffer offered yet) and its pool.
    pub fn new() -> io::Result<BufRing> {
        // SAFETY: both layouts have a non-zero size.
        let (entries, pool) = unsafe {
            (
                std::alloc::alloc_zeroed(entries_layout()),
                std::alloc::alloc_zeroed(pool_layout()),
            )
        };
        let (Some(entries), Some(pool)) = (NonNull::new(entries), NonNull::new(pool)) else {
            // SAFETY: whichever allocation succeeded was made just above with its layout.
            unsafe {
                if !entries.is_null() {
                    std::alloc::dealloc(entries, entries_layout());
                }
                if !pool.is_null() {
                    std::alloc::dealloc(pool, pool_layout());
                }
            }
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        };
        Ok(BufRing {
            entries: entries.cast(),
            pool,
            tail: 0,
            owned: vec![true; BUF_COUNT as usize].into_boxed_slice(),
            available: 0,
            leak: false,
        })
    }

    /// The address to register the ring at.
    pub fn ring_addr(&self) -> u64 {
        self.entries.as_ptr() as u64
    }

    /// Buffer `bid` was picked by the kernel for a receive that completed: it is this side's
    /// until `give_back`.
    pub fn take(&mut self, bid: u16) {
        if let Some(owned @ false) = self.owned.get_mut(bid as usize) {
            *owned = true;
            self.available -= 1;
        }
    }

    /// How many buffers the kernel can pick from right now.
    pub fn available(&self) -> u16 {
        self.available
    }

    /// The first `len` bytes of buffer `bid`, from `start`. Panics unless this side owns
    /// the buffer (a receive completed into it) and the range is inside it.
    pub fn received(&self, bid: u16, start: usize, end: usize) -> &[u8] {
        assert!(
            self.owned.get(bid as usize) == Some(&true) && start <= end && end <= BUF_SIZE,
            "reading a pool buffer the kernel may be writing"
        );
        // SAFETY: `bid < BUF_COUNT` (it is an index of `owned`) and `start..end` lies inside
        // the buffer, so the range is inside the pool's allocation. The kernel writes a
        // buffer only while it is offered in the ring; an owned buffer is not (it was taken
        // off the ring by the receive that completed into it and is offered again only by
        // `give_back`, which needs `&mut self` and so cannot overlap this borrow).
        unsafe {
            let first = self.pool.as_ptr().add(bid as usize * BUF_SIZE + start);
            std::slice::from_raw_parts(first, end - start)
        }
    }

    /// Offers buffer `bid` to the kernel (again). Giving back a buffer the kernel already
    /// has is ignored.
    pub fn give_back(&mut self, bid: u16) {
        match self.owned.get_mut(bid as usize) {
            Some(owned @ true) => *owned = false,
            _ => return,
        }
        let index = (self.tail & (BUF_COUNT - 1)) as usize;
        let addr = self.pool.as_ptr() as u64 + (bid as usize * BUF_SIZE) as u64;
        // SAFETY: `index < BUF_COUNT`, inside the entries' allocation. The kernel reads an
        // entry only once the published tail has passed it, and the entry at the unpublished
        // tail is free (the ring never holds more than BUF_COUNT buffers: each bid is offered
        // at most once, checked above). Entry 0's `resv` is the tail the kernel reads: only
        // the other fields are written here, through raw pointers, never a reference.
        unsafe {
            let entry = self.entries.as_ptr().add(index);
            std::ptr::addr_of_mut!((*entry).addr).write(addr);
            std::ptr::addr_of_mut!((*entry).len).write(BUF_SIZE as u32);
            std::ptr::addr_of_mut!((*entry).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        self.available += 1;
        // SAFETY: the tail is entry 0's `resv`, a u16 inside the allocation and aligned for
        // an `AtomicU16` (offset 14 of a page-aligned block). The kernel reads it
        // concurrently, which is what atomics are for; the release store publishes the entry
        // written above before the new tail.
        let tail =
            unsafe { &*std::ptr::addr_of!((*self.entries.as_ptr()).resv).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    /// The kernel may still use this memory (its ring could not be drained): never free it.
    pub fn leak(&mut self) {
        self.leak = true;
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.leak {
            return;
        }
        // SAFETY: both blocks were allocated in `new` with these layouts. The driver drops
        // the ring only after the kernel is done with it: every receive reaped (or the ring
        // never registered), else `leak` was set.
        unsafe {
            std::alloc::dealloc(self.entries.as_ptr().cast(), entries_layout());
            std::alloc::dealloc(self.pool.as_ptr(), pool_layout());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_offered_once_and_read_only_while_owned() {
        let mut ring = BufRing::new().unwrap();
        // A new pool is all on this side: giving a buffer back offers it.
        ring.give_back(3);
        assert_eq!((ring.tail, ring.available()), (1, 1));
        // Offering it again is ignored: the ring never holds a bid twice.
        ring.give_back(3);
        assert_eq!((ring.tail, ring.available()), (1, 1));
        // The kernel received into it: readable until given back.
        ring.take(3);
        assert_eq!(ring.available(), 0);
        assert_eq!(ring.received(3, 0, 4), &[0, 0, 0, 0]);
        ring.give_back(3);
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ring.received(3, 0, 4).len()
        }));
        assert!(read.is_err(), "a buffer the kernel has is not readable");
        let out_of_range = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ring.take(4);
            ring.received(4, 0, BUF_SIZE + 1).len()
        }));
        assert!(out_of_range.is_err());
    }
}
