//! `ring`: plain TCP sockets whose reads and writes go through the worker thread's io_uring
//! instead of one `recv`/`send` system call each (docs/EVENT_LOOP.md).
//!
//! Each worker thread (`workers.rs`) may own one ring, created with
//! `IORING_SETUP_DEFER_TASKRUN`: the kernel finishes socket operations only when this
//! thread enters the ring, as a batch. Tokio stays the event loop. A `RingStream` is an
//! `AsyncRead + AsyncWrite` like the `TcpStream` it was made from:
//!
//! * a read arms a `recv` into a buffer the kernel picks from the worker's pool when data
//!   arrives (an idle socket owns no buffer); the reader copies out of it and the buffer goes
//!   back to the pool;
//! * a write copies into the stream's outgoing buffer and returns at once; everything the
//!   worker's tasks wrote in one pass goes to the kernel together;
//! * `flush` (the runtime's `on_thread_park` hook, and a task woken through an eventfd the
//!   ring signals) submits what is queued, lets the kernel run the deferred completions and
//!   wakes the tasks whose reads or writes finished.
//!
//! A stream must stay on the thread that made it (a current-thread runtime never moves a
//! task); used anywhere else it fails with an error instead of touching another ring.

use std::cell::RefCell;
use std::io;
use std::net::TcpStream as StdTcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::task::{Context, Poll, Waker};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Submission queue entries per ring (the completion queue has twice as many, and the kernel
/// keeps any overflow).
const ENTRIES: u32 = 4096;
/// The worker's receive pool: this many buffers of `BUF_SIZE` bytes.
const BUF_COUNT: u16 = 256;
const BUF_SIZE: usize = 16 * 1024;
const GROUP: u16 = 0;
/// A stream takes this many bytes from writers before the kernel has taken the earlier ones.
const OUT_CAP: usize = 256 * 1024;
/// Outgoing buffers larger than this are given back once sent (an idle stream keeps little).
const OUT_KEEP: usize = 4 * 1024;
/// Passes of submit-and-complete one `flush` makes at most before leaving the rest to the
/// driver task.
const PASSES: usize = 32;

/// `IORING_RECVSEND_POLL_FIRST`.
const RECVSEND_POLL_FIRST: u16 = 1;

const RECV: u64 = 0;
const SEND: u64 = 1;
/// `user_data` of cancellations, whose completions need no handling.
const CANCEL: u64 = u64::MAX;
/// The most sockets one worker's ring registers.
const MAX_FILES: u32 = 1 << 16;

static NEXT_ID: AtomicU32 = AtomicU32::new(1);

thread_local! {
    static DRIVER: RefCell<Option<Driver>> = const { RefCell::new(None) };
}

/// One socket's state, owned by the driver: the kernel may still be using its buffers after
/// the `RingStream` is gone.
struct Slot {
    socket: StdTcpStream,
    /// A completed receive not yet read out: buffer id, next byte, end.
    ready: Option<(u16, u32, u32)>,
    eof: bool,
    read_error: Option<i32>,
    recv_in_flight: bool,
    reader: Option<Waker>,
    /// Written, not yet handed to the kernel.
    out: Vec<u8>,
    /// Handed to the kernel: `sending[sent..]` is still to go.
    sending: Vec<u8>,
    sent: usize,
    send_in_flight: bool,
    /// In `Driver::dirty`.
    queued: bool,
    write_error: Option<i32>,
    writer: Option<Waker>,
    /// The `RingStream` is gone: the slot goes once nothing is in flight.
    dropped: bool,
}

impl Slot {
    fn in_flight(&self) -> bool {
        self.recv_in_flight || self.send_in_flight
    }
}

struct Driver {
    id: u32,
    // Dropped first: closing the ring cancels whatever still points into `buffers`.
    ring: IoUring,
    buffers: BufRing,
    /// Size of the ring's file table: slot `key` is file `key`.
    files: u32,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    /// Slots with written bytes to hand to the kernel.
    dirty: Vec<u32>,
    /// Slots whose receive found the pool empty; re-armed as buffers come back.
    starved: Vec<u32>,
    completions: Vec<(u64, i32, u32)>,
    wake: Vec<Waker>,
}

/// Why this thread has no ring, or `Ok` once it has one. Needs a tokio runtime context (the
/// ring's eventfd joins its poller); spawns the task that reacts to it.
pub fn install() -> io::Result<()> {
    let ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_cqsize(ENTRIES * 2)
        .build(ENTRIES)?;
    // SAFETY: plain eventfd creation; the descriptor is owned right away.
    let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor nothing else owns.
    let eventfd = unsafe { OwnedFd::from_raw_fd(raw) };
    ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
    // Sockets are registered with the ring, which saves the kernel a descriptor lookup per
    // operation; a worker takes as many as the open-file limit allows.
    let files = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map_or(1024, |(soft, _)| soft)
        .min(MAX_FILES as u64) as u32;
    ring.submitter().register_files_sparse(files)?;
    let mut buffers = BufRing::new()?;
    // SAFETY: `buffers` lives in the driver next to the ring, and is freed after it.
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(buffers.base as u64, BUF_COUNT, GROUP, 0)?
    };
    for bid in 0..BUF_COUNT {
        buffers.add(bid);
    }
    // SAFETY: the `AsyncFd` owns the descriptor; nothing else closes or replaces it.
    let eventfd = unsafe { AsyncFd::register_with_interest(eventfd, Interest::READABLE) }
        .map_err(io::Error::from)?;
    DRIVER.with(|d| {
        *d.borrow_mut() = Some(Driver {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            ring,
            buffers,
            files,
            slots: Vec::new(),
            free: Vec::new(),
            dirty: Vec::new(),
            starved: Vec::new(),
            completions: Vec::new(),
            wake: Vec::new(),
        })
    });
    tokio::spawn(drive(eventfd));
    Ok(())
}

/// Whether this thread has a ring.
pub fn installed() -> bool {
    DRIVER.with(|d| d.borrow().is_some())
}

/// Reacts to the ring's eventfd: the kernel signals it when completions wait for this
/// thread while it sleeps in the runtime's poller.
async fn drive(eventfd: AsyncFd<OwnedFd>) {
    loop {
        let Ok(mut ready) = eventfd.readable().await else {
            return;
        };
        // The count is never read: the poller is edge-triggered, so every signal wakes
        // this task again, and a read would be one more system call per wake-up.
        ready.clear_ready();
        // More may be waiting than one flush runs; come back without a signal.
        while flush() {
            tokio::task::yield_now().await;
        }
    }
}

/// Hands queued writes and receives to the kernel, runs the completions waiting for this
/// thread and wakes their tasks. A no-op on a thread without a ring. True if it stopped
/// with completions possibly still waiting.
pub fn flush() -> bool {
    let Some((more, mut wake)) = DRIVER.with(|d| {
        let mut d = d.borrow_mut();
        let driver = d.as_mut()?;
        let more = driver.flush();
        Some((more, std::mem::take(&mut driver.wake)))
    }) else {
        return false;
    };
    if wake.is_empty() {
        return more;
    }
    for waker in wake.drain(..) {
        waker.wake();
    }
    // The vector's allocation serves the next flush.
    DRIVER.with(|d| {
        if let Some(driver) = d.borrow_mut().as_mut()
            && driver.wake.is_empty()
        {
            driver.wake = wake;
        }
    });
    more
}

impl Driver {
    fn flush(&mut self) -> bool {
        for _ in 0..PASSES {
            self.queue_sends();
            let (queued, taskrun) = {
                let sq = self.ring.submission();
                (sq.len(), sq.taskrun())
            };
            // The kernel runs only so many deferred completions per call and sets the
            // TASKRUN flag again if it left some.
            if queued == 0 && !taskrun {
                return false;
            }
            // GETEVENTS every time: the kernel runs the deferred completions in this call.
            // SAFETY: every buffer a queued entry points into is owned by a slot or the pool
            // and stays until its completion has been handled.
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

    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: see `flush`.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            let _ = self.ring.submit();
        }
    }

    fn give_back(&mut self, bid: u16) {
        self.buffers.add(bid);
        if let Some(key) = self.starved.pop() {
            self.arm_recv(key);
        }
    }

    fn arm_recv(&mut self, key: u32) {
        let Some(slot) = self.slots[key as usize].as_mut() else {
            return;
        };
        if slot.dropped || slot.recv_in_flight {
            return;
        }
        slot.recv_in_flight = true;
        let entry = opcode::Recv::new(types::Fixed(key), std::ptr::null_mut(), BUF_SIZE as u32)
            .buf_group(GROUP)
            // The reader just found the socket drained: wait for data before trying.
            .ioprio(RECVSEND_POLL_FIRST)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(((key as u64) << 1) | RECV);
        self.push(entry);
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
        slot.send_in_flight = true;
        let rest = &slot.sending[slot.sent..];
        let entry = opcode::Send::new(types::Fixed(key), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(((key as u64) << 1) | SEND);
        self.push(entry);
    }

    fn complete(&mut self, data: u64, result: i32, flags: u32) {
        if data == CANCEL {
            return;
        }
        let key = (data >> 1) as u32;
        let Some(slot) = self.slots[key as usize].as_mut() else {
            return;
        };
        if data & 1 == RECV {
            slot.recv_in_flight = false;
            let buffer = cqueue::buffer_select(flags);
            let mut unused = buffer;
            if result == -libc::ENOBUFS {
                if !slot.dropped {
                    self.starved.push(key);
                    #[cfg(test)]
                    tests::STARVED.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                if !slot.dropped {
                    if result > 0 {
                        if let Some(bid) = buffer {
                            slot.ready = Some((bid, 0, result as u32));
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
        } else {
            slot.send_in_flight = false;
            if result < 0 {
                slot.write_error = Some(-result);
                slot.sending.clear();
                slot.out.clear();
            } else {
                slot.sent += result as usize;
                if slot.sent < slot.sending.len() && !slot.dropped {
                    self.send(key);
                    return;
                }
                slot.sending.clear();
                if slot.sending.capacity() > OUT_KEEP {
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

    fn release_if_done(&mut self, key: u32) {
        if let Some(slot) = &self.slots[key as usize]
            && slot.dropped
            && !slot.in_flight()
        {
            // Out of the ring's table, then closed with the slot.
            let _ = self.ring.submitter().register_files_update(key, &[-1]);
            self.slots[key as usize] = None;
            self.free.push(key);
        }
    }
}

/// A plain TCP connection on this worker's ring.
#[derive(Debug)]
pub struct RingStream {
    driver: u32,
    key: u32,
}

fn off_thread() -> io::Error {
    io::Error::other("a ring socket was used off the worker thread that owns it")
}

impl RingStream {
    /// Moves `tcp` onto this thread's ring; gives it back when this thread has none or its
    /// file table is full.
    pub fn adopt(tcp: TcpStream) -> io::Result<Result<RingStream, TcpStream>> {
        if !installed() {
            return Ok(Err(tcp));
        }
        let socket = tcp.into_std()?;
        // A non-blocking socket makes io_uring answer EAGAIN instead of waiting for data.
        socket.set_nonblocking(false)?;
        match Self::register(socket) {
            Ok(ring) => Ok(Ok(ring)),
            Err((e, socket)) => {
                tracing::warn!(error = %e, "socket stays on epoll");
                socket.set_nonblocking(true)?;
                TcpStream::from_std(socket).map(Err)
            }
        }
    }

    fn register(socket: StdTcpStream) -> Result<RingStream, (io::Error, StdTcpStream)> {
        DRIVER.with(|d| {
            let mut d = d.borrow_mut();
            let Some(driver) = d.as_mut() else {
                return Err((off_thread(), socket));
            };
            let slot = Slot {
                socket,
                ready: None,
                eof: false,
                read_error: None,
                recv_in_flight: false,
                reader: None,
                out: Vec::new(),
                sending: Vec::new(),
                sent: 0,
                send_in_flight: false,
                queued: false,
                write_error: None,
                writer: None,
                dropped: false,
            };
            let key = match driver.free.pop() {
                Some(key) => key,
                None if driver.slots.len() < driver.files as usize => {
                    driver.slots.push(None);
                    (driver.slots.len() - 1) as u32
                }
                None => {
                    let full = io::Error::other("the worker's io_uring file table is full");
                    return Err((full, slot.socket));
                }
            };
            if let Err(e) = driver
                .ring
                .submitter()
                .register_files_update(key, &[slot.socket.as_raw_fd()])
            {
                driver.free.push(key);
                return Err((e, slot.socket));
            }
            driver.slots[key as usize] = Some(slot);
            Ok(RingStream {
                driver: driver.id,
                key,
            })
        })
    }

    /// Runs `f` on this stream's driver; `None` off its thread (or once the thread is
    /// tearing down its locals).
    fn with<R>(&self, f: impl FnOnce(&mut Driver, u32) -> R) -> Option<R> {
        DRIVER
            .try_with(|d| {
                let mut d = d.borrow_mut();
                let driver = d.as_mut().filter(|driver| driver.id == self.driver)?;
                Some(f(driver, self.key))
            })
            .ok()
            .flatten()
    }
}

fn slot(slots: &mut [Option<Slot>], key: u32) -> &mut Slot {
    slots[key as usize]
        .as_mut()
        .expect("a live RingStream's slot")
}

/// Keeps the task's waker in `waiting`, cloning it only when it is another task's.
fn wait_with(waiting: &mut Option<Waker>, cx: &Context<'_>) {
    if !waiting.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *waiting = Some(cx.waker().clone());
    }
}

impl AsyncRead for RingStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.with(|driver, key| {
            let Driver { slots, buffers, .. } = &mut *driver;
            let s = slot(slots, key);
            if let Some((bid, start, end)) = s.ready.as_mut() {
                let n = buf.remaining().min((*end - *start) as usize);
                buf.put_slice(&buffers.chunk(*bid)[*start as usize..][..n]);
                *start += n as u32;
                if *start == *end {
                    let bid = *bid;
                    s.ready = None;
                    driver.give_back(bid);
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(errno) = s.read_error.take() {
                return Poll::Ready(Err(io::Error::from_raw_os_error(errno)));
            }
            if s.eof {
                return Poll::Ready(Ok(()));
            }
            wait_with(&mut s.reader, cx);
            if !s.recv_in_flight && !driver.starved.contains(&key) {
                driver.arm_recv(key);
            }
            Poll::Pending
        })
        .unwrap_or_else(|| Poll::Ready(Err(off_thread())))
    }
}

impl RingStream {
    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.with(|driver, key| {
            let s = slot(&mut driver.slots, key);
            if let Some(errno) = s.write_error {
                return Poll::Ready(Err(io::Error::from_raw_os_error(errno)));
            }
            let room = OUT_CAP.saturating_sub(s.out.len());
            if bufs.iter().all(|b| b.is_empty()) {
                return Poll::Ready(Ok(0));
            }
            if room == 0 {
                wait_with(&mut s.writer, cx);
                return Poll::Pending;
            }
            let mut taken = 0;
            for b in bufs {
                let n = b.len().min(room - taken);
                s.out.extend_from_slice(&b[..n]);
                taken += n;
                if taken == room {
                    break;
                }
            }
            if !s.queued {
                s.queued = true;
                driver.dirty.push(key);
            }
            Poll::Ready(Ok(taken))
        })
        .unwrap_or_else(|| Poll::Ready(Err(off_thread())))
    }
}

impl AsyncWrite for RingStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Written bytes go to the kernel when the worker next parks (or sooner): flushing only
    /// reports a send that failed.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(
            |driver, key| match slot(&mut driver.slots, key).write_error {
                Some(errno) => Poll::Ready(Err(io::Error::from_raw_os_error(errno))),
                None => Poll::Ready(Ok(())),
            },
        )
        .unwrap_or_else(|| Poll::Ready(Err(off_thread())))
    }

    /// Waits until every written byte is with the kernel, then shuts the sending side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|driver, key| {
            let s = slot(&mut driver.slots, key);
            if let Some(errno) = s.write_error {
                return Poll::Ready(Err(io::Error::from_raw_os_error(errno)));
            }
            if s.send_in_flight || !s.out.is_empty() {
                wait_with(&mut s.writer, cx);
                return Poll::Pending;
            }
            Poll::Ready(s.socket.shutdown(std::net::Shutdown::Write))
        })
        .unwrap_or_else(|| Poll::Ready(Err(off_thread())))
    }
}

impl Drop for RingStream {
    fn drop(&mut self) {
        self.with(|driver, key| {
            let s = slot(&mut driver.slots, key);
            s.dropped = true;
            s.reader = None;
            s.writer = None;
            let ready = s.ready.take();
            // Bytes written but not yet handed over go now, as far as the socket takes
            // them, the way a closed TcpStream's written bytes still leave.
            if !s.send_in_flight && !s.out.is_empty() {
                // SAFETY: a send from a live buffer on a socket the slot owns.
                unsafe {
                    libc::send(
                        s.socket.as_raw_fd(),
                        s.out.as_ptr().cast(),
                        s.out.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
                s.out.clear();
            }
            let in_flight = s.in_flight();
            driver.starved.retain(|&k| k != key);
            if let Some((bid, _, _)) = ready {
                driver.give_back(bid);
            }
            if in_flight {
                let cancel =
                    opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fixed(key)).all())
                        .build()
                        .user_data(CANCEL);
                driver.push(cancel);
            }
            driver.release_if_done(key);
        });
    }
}

/// The worker's receive pool and the ring the kernel picks buffers of it from
/// (`IORING_REGISTER_PBUF_RING`): entries shared with the kernel, and the tail this thread
/// advances as it hands buffers back.
struct BufRing {
    base: *mut types::BufRingEntry,
    tail: u16,
    pool: Box<[u8]>,
}

impl BufRing {
    fn layout() -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(
            BUF_COUNT as usize * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .expect("a valid buffer ring layout")
    }

    fn new() -> io::Result<BufRing> {
        // SAFETY: a non-zero-sized, page-aligned layout.
        let base = unsafe { std::alloc::alloc_zeroed(Self::layout()) };
        if base.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        Ok(BufRing {
            base: base.cast(),
            tail: 0,
            pool: vec![0u8; BUF_COUNT as usize * BUF_SIZE].into_boxed_slice(),
        })
    }

    /// Buffer `bid` of the pool.
    fn chunk(&self, bid: u16) -> &[u8] {
        &self.pool[bid as usize * BUF_SIZE..][..BUF_SIZE]
    }

    /// Offers buffer `bid` to the kernel (again).
    fn add(&mut self, bid: u16) {
        let addr = self.pool[bid as usize * BUF_SIZE..].as_mut_ptr();
        let index = (self.tail & (BUF_COUNT - 1)) as usize;
        // SAFETY: `index` is inside the ring; the kernel reads an entry only once the tail
        // has passed it, which the release store below publishes.
        unsafe {
            let entry = &mut *self.base.add(index);
            entry.set_addr(addr as u64);
            entry.set_len(BUF_SIZE as u32);
            entry.set_bid(bid);
            self.tail = self.tail.wrapping_add(1);
            let tail = types::BufRingEntry::tail(self.base) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the ring is closed by now.
        unsafe { std::alloc::dealloc(self.base.cast(), Self::layout()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A worker-like runtime: one thread, the ring flushed before it parks.
    fn on_ring<F: std::future::Future>(test: F) -> F::Output {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(|| {
                flush();
            })
            .build()
            .unwrap();
        runtime.block_on(async {
            install().expect("io_uring with DEFER_TASKRUN (Linux 6.1+)");
            tokio::time::timeout(Duration::from_secs(30), test)
                .await
                .expect("the test finishes within 30 s")
        })
    }

    /// A connected pair: our end on the ring, the peer's a plain tokio socket.
    async fn pair() -> (RingStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap());
        let (ours, theirs) = tokio::join!(ours, listener.accept());
        let ours = RingStream::adopt(ours.unwrap())
            .unwrap()
            .expect("on the ring");
        (ours, theirs.unwrap().0)
    }

    /// Receives that found the pool empty, on any thread.
    pub(super) static STARVED: std::sync::atomic::AtomicUsize =
        std::sync::atomic::AtomicUsize::new(0);

    fn live_slots() -> usize {
        DRIVER.with(|d| {
            d.borrow()
                .as_ref()
                .map_or(0, |d| d.slots.iter().flatten().count())
        })
    }

    #[test]
    fn small_and_large_writes_arrive_whole_and_in_order() {
        on_ring(async {
            let (ours, mut theirs) = pair().await;
            // The peer echoes everything back.
            let echo = tokio::spawn(async move {
                let (mut r, mut w) = theirs.split();
                tokio::io::copy(&mut r, &mut w).await.unwrap();
                w.shutdown().await.unwrap();
            });
            let (mut r, mut w) = tokio::io::split(ours);
            w.write_all(b"hello").await.unwrap();
            let mut five = [0u8; 5];
            r.read_exact(&mut five).await.unwrap();
            assert_eq!(&five, b"hello");

            // 3 MiB each way at once: more than the receive pool and the outgoing cap.
            let big: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
            let sent = big.clone();
            let writer = tokio::spawn(async move {
                w.write_all(&sent).await.unwrap();
                w.shutdown().await.unwrap();
            });
            let mut back = Vec::new();
            r.read_to_end(&mut back).await.unwrap();
            assert!(back == big, "the echo differs from what was sent");
            writer.await.unwrap();
            echo.await.unwrap();
        });
    }

    #[test]
    fn more_ready_sockets_than_pool_buffers_all_get_their_bytes() {
        on_ring(async {
            let count = BUF_COUNT as usize + 64;
            let mut peers = Vec::new();
            let mut readers = Vec::new();
            for i in 0..count {
                let (mut ours, theirs) = pair().await;
                peers.push(theirs);
                readers.push(tokio::spawn(async move {
                    let mut got = vec![0u8; BUF_SIZE + 100];
                    ours.read_exact(&mut got).await.unwrap();
                    assert!(
                        got.iter().all(|&b| b == i as u8),
                        "socket {i} got others' bytes"
                    );
                }));
            }
            // Every reader has a receive armed before any byte arrives.
            tokio::task::yield_now().await;
            for (i, peer) in peers.iter_mut().enumerate() {
                peer.write_all(&vec![i as u8; BUF_SIZE + 100])
                    .await
                    .unwrap();
            }
            for reader in readers {
                reader.await.unwrap();
            }
            assert!(
                STARVED.load(Ordering::Relaxed) > 0,
                "the pool never ran out"
            );
        });
    }

    #[test]
    fn a_dropped_stream_closes_its_socket_and_frees_its_slot() {
        on_ring(async {
            let (mut ours, mut theirs) = pair().await;
            ours.write_all(b"last words").await.unwrap();
            // A read waits (a receive is in flight) when the stream goes.
            let mut buf = [0u8; 16];
            let pending = tokio::time::timeout(Duration::from_millis(50), ours.read(&mut buf));
            assert!(pending.await.is_err(), "nothing was sent to read");
            assert_eq!(live_slots(), 1);
            drop(ours);
            let mut got = Vec::new();
            theirs.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"last words");
            // The cancelled receive completes on a later pass.
            while live_slots() > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }

    #[test]
    fn end_of_stream_and_errors_reach_the_reader() {
        on_ring(async {
            let (mut ours, theirs) = pair().await;
            drop(theirs);
            let mut buf = [0u8; 8];
            assert_eq!(ours.read(&mut buf).await.unwrap(), 0);
            // Writing to a closed peer fails (at once or on a later write).
            let mut failed = false;
            for _ in 0..100 {
                if ours.write_all(b"x").await.is_err() {
                    failed = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            assert!(failed, "writes to a closed peer keep succeeding");
        });
    }

    #[test]
    fn a_thread_without_a_ring_keeps_the_tokio_socket() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let tcp = TcpStream::connect(listener.local_addr().unwrap())
                    .await
                    .unwrap();
                assert!(RingStream::adopt(tcp).unwrap().is_err());
            });
    }
}
