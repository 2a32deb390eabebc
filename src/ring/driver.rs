//! The driver: one per worker thread, owning the ring, the receive pool and every ring
//! socket's state (`Slot`). It queues receives and sends, hands them to the kernel in one
//! `io_uring_enter` per pass, and turns completions into slot state and task wake-ups.
//!
//! Memory the kernel uses — the pool it receives into, the buffers it sends from — lives
//! here, not in the `RingStream`s, and goes only after the kernel is done with it: a slot
//! whose stream is dropped waits for its last completion, and dropping the driver cancels
//! every operation in flight and reaps them before anything is freed.

use std::io;
use std::task::Waker;
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::buf_ring::{BUF_SIZE, BufRing};
pub use super::slot::{Ready, Slot, send_now};

/// The buffer group of the receive pool.
pub const GROUP: u16 = 0;
/// A stream takes this many bytes from writers before the kernel has taken the earlier ones.
pub const OUT_CAP: usize = 256 * 1024;
/// Outgoing buffers larger than this are freed once sent; smaller ones go to the worker's
/// spares, so an idle stream holds none.
const OUT_KEEP: usize = 4 * 1024;
/// Spare outgoing buffers a worker keeps (at most `OUT_KEEP` bytes each).
const SPARES: usize = 128;
/// Passes of submit-and-complete one `flush` makes at most before leaving the rest to the
/// driver task.
const PASSES: usize = 32;
/// `IORING_RECVSEND_POLL_FIRST`.
const RECVSEND_POLL_FIRST: u16 = 1;
/// Below this many buffers left in the pool, received bytes are copied out of it at once: a
/// socket whose task does not read (a relay waiting on a slow peer) then keeps at most one
/// receive's bytes on the heap instead of pinning a pool buffer every other socket needs.
const POOL_LOW: u16 = 64;
/// How long dropping the driver waits for cancelled operations to complete.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);

pub const RECV: u64 = 0;
const SEND: u64 = 1;
/// `user_data` of operations whose completions need no handling (cancellations, the
/// start-up self-check).
pub const CANCEL: u64 = u64::MAX;

/// See the module documentation.
pub struct Driver {
    pub id: u32,
    pub ring: IoUring,
    pub buffers: BufRing,
    /// Size of the ring's file table: slot `key` is file `key`.
    pub files: u32,
    pub slots: Vec<Option<Slot>>,
    pub free: Vec<u32>,
    /// Slots with written bytes to hand to the kernel.
    pub dirty: Vec<u32>,
    /// Slots whose receive found the pool empty; re-armed as buffers come back.
    pub starved: Vec<u32>,
    completions: Vec<(u64, i32, u32)>,
    /// Wakers of tasks whose operations completed, woken after the driver is released.
    pub wake: Vec<Waker>,
    /// The driver is being dropped: completions are recorded, nothing new is started.
    closing: bool,
    /// Outgoing buffers of streams that had nothing more to send, for the next writer: a
    /// buffer per stream would stay with every idle session.
    pub spare: Vec<Vec<u8>>,
    /// Wakes the drive task when a flush stopped with work left (the park hook cannot wait
    /// for it, and queued submissions make the kernel signal nothing).
    pub kick: std::sync::Arc<tokio::sync::Notify>,
}

impl Driver {
    pub fn new(id: u32, ring: IoUring, buffers: BufRing, files: u32) -> Self {
        Self {
            id,
            ring,
            buffers,
            files,
            slots: Vec::new(),
            free: Vec::new(),
            dirty: Vec::new(),
            starved: Vec::new(),
            completions: Vec::new(),
            wake: Vec::new(),
            closing: false,
            spare: Vec::new(),
            kick: std::sync::Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// The slot of a live stream.
    pub fn slot(&mut self, key: u32) -> &mut Slot {
        self.slots[key as usize]
            .as_mut()
            .expect("a live RingStream's slot")
    }

    /// Hands queued sends and receives to the kernel and runs the completions waiting for
    /// this thread, pass after pass. True if it stopped with completions possibly still
    /// waiting.
    pub fn flush(&mut self) -> bool {
        for _ in 0..PASSES {
            self.queue_sends();
            let (queued, taskrun, overflow) = {
                let sq = self.ring.submission();
                (sq.len(), sq.taskrun(), sq.cq_overflow())
            };
            // The kernel runs only so many deferred completions per call and sets the
            // TASKRUN flag again if it left some; completions that did not fit in the
            // completion queue wait in its overflow list, which only an enter flushes (and
            // nothing signals).
            if queued == 0 && !taskrun && !overflow {
                return false;
            }
            // GETEVENTS every time: the kernel runs the deferred completions in this call.
            // SAFETY: every buffer a queued entry points into is owned by a slot (a send's
            // `sending`, untouched while the send is in flight) or the pool (receives), and
            // stays until its completion has been handled: slots are released only after
            // their last completion, and `Drop` reaps everything before freeing.
            let entered = unsafe {
                self.ring
                    .submitter()
                    .enter::<libc::sigset_t>(queued as u32, 0, 1, None)
            };
            if let Err(e) = entered
                && e.raw_os_error() != Some(libc::EINTR)
                && e.raw_os_error() != Some(libc::EBUSY)
            {
                tracing::error!(error = %e, "io_uring_enter failed");
                return false;
            }
            self.reap();
        }
        true
    }

    fn reap(&mut self) {
        let mut done = std::mem::take(&mut self.completions);
        done.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(data, result, flags) in &done {
            self.complete(data, result, flags);
        }
        done.clear();
        self.completions = done;
    }

    /// Queues `entry`. When the submission queue is full its entries go to the kernel
    /// first; a queue that stays full (the kernel refusing submissions) is an error for the
    /// caller, never a spin.
    pub fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        for _ in 0..3 {
            // SAFETY: see `flush`: what the entry points into outlives its completion.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            if let Err(e) = self.ring.submit()
                && e.raw_os_error() != Some(libc::EBUSY)
                && e.raw_os_error() != Some(libc::EINTR)
            {
                return Err(e);
            }
        }
        Err(io::Error::other("the io_uring submission queue stays full"))
    }

    pub fn give_back(&mut self, bid: u16) {
        self.buffers.give_back(bid);
        if !self.closing
            && let Some(key) = self.starved.pop()
        {
            self.arm_recv(key);
        }
    }

    pub fn arm_recv(&mut self, key: u32) {
        let Some(slot) = self.slots[key as usize].as_mut() else {
            return;
        };
        if slot.dropped || slot.recv_in_flight || self.closing {
            return;
        }
        let entry = opcode::Recv::new(types::Fixed(key), std::ptr::null_mut(), BUF_SIZE as u32)
            .buf_group(GROUP)
            // The reader just found the socket drained: wait for data before trying.
            .ioprio(RECVSEND_POLL_FIRST)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(((key as u64) << 1) | RECV);
        match self.push(&entry) {
            Ok(()) => slot_mut(&mut self.slots, key).recv_in_flight = true,
            Err(e) => {
                let slot = slot_mut(&mut self.slots, key);
                slot.read_error = Some(e.raw_os_error().unwrap_or(libc::EAGAIN));
                if let Some(waker) = slot.reader.take() {
                    self.wake.push(waker);
                }
            }
        }
    }

    fn queue_sends(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for key in dirty.drain(..) {
            let Some(slot) = self.slots[key as usize].as_mut() else {
                continue;
            };
            slot.queued = false;
            if slot.send_in_flight || slot.out.is_empty() || slot.write_error.is_some() {
                continue;
            }
            std::mem::swap(&mut slot.out, &mut slot.sending);
            slot.sent = 0;
            self.send(key);
        }
        self.dirty = dirty;
    }

    fn send(&mut self, key: u32) {
        let Some(slot) = self.slots[key as usize].as_mut() else {
            return;
        };
        let rest = &slot.sending[slot.sent..];
        let entry = opcode::Send::new(types::Fixed(key), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(((key as u64) << 1) | SEND);
        match self.push(&entry) {
            Ok(()) => slot_mut(&mut self.slots, key).send_in_flight = true,
            Err(e) => {
                let slot = slot_mut(&mut self.slots, key);
                slot.write_error = Some(e.raw_os_error().unwrap_or(libc::EAGAIN));
                slot.sending.clear();
                slot.out.clear();
                if let Some(waker) = slot.writer.take() {
                    self.wake.push(waker);
                }
            }
        }
    }

    fn complete(&mut self, data: u64, result: i32, flags: u32) {
        if data == CANCEL {
            return;
        }
        let key = (data >> 1) as u32;
        let Some(slot) = self.slots.get_mut(key as usize).and_then(Option::as_mut) else {
            return;
        };
        if data & 1 == RECV {
            slot.recv_in_flight = false;
            let buffer = cqueue::buffer_select(flags);
            if let Some(bid) = buffer {
                self.buffers.take(bid);
            }
            let mut unused = buffer;
            if result == -libc::ENOBUFS {
                if !slot.dropped && !self.closing {
                    self.starved.push(key);
                    #[cfg(test)]
                    super::tests::STARVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            } else {
                if !slot.dropped {
                    if result > 0 {
                        slot.more_waiting = result as usize == BUF_SIZE;
                        if let Some(bid) = buffer {
                            slot.ready = Some(Ready::Pool {
                                bid,
                                start: 0,
                                end: result as u32,
                            });
                            unused = None;
                        }
                    } else if result == 0 {
                        slot.eof = true;
                    } else {
                        slot.read_error = Some(-result);
                    }
                }
                if let Some(waker) = slot.reader.take() {
                    self.wake.push(waker);
                }
            }
            if let Some(bid) = unused {
                self.give_back(bid);
            }
            if result == -libc::ENOBUFS {
                // The pool is empty: take back what unread sockets hold.
                self.spill_all();
            } else if self.buffers.available() < POOL_LOW {
                self.spill(key);
            }
        } else {
            slot.send_in_flight = false;
            if result < 0 {
                slot.write_error = Some(-result);
                slot.sending.clear();
                slot.out.clear();
            } else {
                slot.sent += result as usize;
                if slot.dropped {
                    // The stream is gone: what it wrote still leaves, as far as the socket
                    // takes it at once, the way a closed TcpStream's written bytes do.
                    send_now(&slot.socket, &slot.sending[slot.sent..]);
                    send_now(&slot.socket, &slot.out);
                    slot.sending.clear();
                    slot.out.clear();
                } else if slot.sent < slot.sending.len() && !self.closing {
                    self.send(key);
                    return;
                }
                slot.sending.clear();
                if slot.out.is_empty() {
                    // Nothing more to send: the stream keeps no buffer while it is idle.
                    for buffer in [
                        std::mem::take(&mut slot.sending),
                        std::mem::take(&mut slot.out),
                    ] {
                        let capacity = buffer.capacity();
                        if capacity > 0 && capacity <= OUT_KEEP && self.spare.len() < SPARES {
                            self.spare.push(buffer);
                        }
                    }
                } else if slot.sending.capacity() > OUT_KEEP {
                    slot.sending = Vec::new();
                }
                if !slot.out.is_empty() && !slot.queued && !slot.dropped {
                    slot.queued = true;
                    self.dirty.push(key);
                }
            }
            if let Some(waker) = slot.writer.take() {
                self.wake.push(waker);
            }
        }
        self.release_if_done(key);
    }

    pub fn release_if_done(&mut self, key: u32) {
        if let Some(slot) = &self.slots[key as usize]
            && slot.dropped
            && !slot.in_flight()
        {
            // Shut down first: before Linux 6.13 a file taken out of the ring's table is
            // closed only once every operation submitted before that has completed (on any
            // socket), so one idle receive elsewhere would keep this connection open.
            let _ = slot.socket.shutdown(std::net::Shutdown::Both);
            if let Err(e) = self.ring.submitter().register_files_update(key, &[-1]) {
                tracing::warn!(error = %e, "cannot take a closed socket out of the io_uring file table");
            }
            self.slots[key as usize] = None;
            self.free.push(key);
        }
    }

    /// Copies the bytes slot `key` holds in a pool buffer out to the heap, and gives the
    /// buffer back.
    fn spill(&mut self, key: u32) {
        let Some(slot) = self.slots[key as usize].as_mut() else {
            return;
        };
        let Some(Ready::Pool { bid, start, end }) = slot.ready else {
            return;
        };
        let data = self
            .buffers
            .received(bid, start as usize, end as usize)
            .to_vec();
        slot.ready = Some(Ready::Heap { data, start: 0 });
        #[cfg(test)]
        super::tests::SPILLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.give_back(bid);
    }

    /// `spill` for every socket whose task is not waiting to read (it would read at once).
    fn spill_all(&mut self) {
        let holding: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(key, slot)| {
                let slot = slot.as_ref()?;
                let pinned =
                    matches!(slot.ready, Some(Ready::Pool { .. })) && slot.reader.is_none();
                pinned.then_some(key as u32)
            })
            .collect();
        for key in holding {
            self.spill(key);
        }
    }

    pub fn in_flight(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter(|s| s.in_flight())
            .count()
    }
}

fn slot_mut(slots: &mut [Option<Slot>], key: u32) -> &mut Slot {
    slots[key as usize].as_mut().expect("a slot just seen")
}

impl Driver {
    /// Cancels every operation in flight and reaps until none is left or `DRAIN_LIMIT`
    /// passed; nothing new starts from then on. Returns how many are still in flight.
    pub fn drain(&mut self) -> usize {
        self.closing = true;
        if self.in_flight() == 0 {
            return 0;
        }
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(CANCEL);
        let _ = self.push(&cancel);
        let deadline = Instant::now() + DRAIN_LIMIT;
        let wait = types::Timespec::new().nsec(10_000_000);
        while self.in_flight() > 0 && Instant::now() < deadline {
            let args = types::SubmitArgs::new().timespec(&wait);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                    ) => {}
                Err(e) => {
                    tracing::error!(error = %e, "io_uring_enter failed while draining the ring");
                    break;
                }
            }
            self.reap();
        }
        self.in_flight()
    }
}

impl Drop for Driver {
    /// The kernel writes into the pool and reads the send buffers until each operation's
    /// completion is posted: everything in flight is cancelled and reaped before that memory
    /// goes. Should the kernel not finish within `DRAIN_LIMIT`, the memory is leaked rather
    /// than freed under it.
    fn drop(&mut self) {
        let left = self.drain();
        if left > 0 {
            tracing::error!(
                operations = left,
                "io_uring operations still in flight after a second; their memory is leaked"
            );
            self.buffers.leak();
            std::mem::forget(std::mem::take(&mut self.slots));
        }
        // Woken tasks are gone with the runtime; their wakers just drop.
        self.wake.clear();
    }
}
