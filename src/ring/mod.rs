//! `ring`: plain TCP sockets whose reads and writes go through the worker thread's io_uring
//! instead of one `recv`/`send` system call each (docs/EVENT_LOOP.md). All of the crate's
//! unsafe I/O code is in this folder, each block with the reason it is sound.
//!
//! Each worker thread (`workers.rs`) may own one ring, created with
//! `IORING_SETUP_DEFER_TASKRUN`: the kernel finishes socket operations only when this
//! thread enters the ring, as a batch. Tokio stays the event loop. A `RingStream`
//! (`stream.rs`) is an `AsyncRead + AsyncWrite` like the `TcpStream` it was made from:
//!
//! * a read arms a `recv` into a buffer the kernel picks from the worker's pool
//!   (`buf_ring.rs`) when data arrives (an idle socket owns no buffer); the reader copies out
//!   of it and the buffer goes back to the pool. A reader with room for more than a pool
//!   buffer (the rest of a large frame) first takes what the socket has with one `recv`
//!   straight into its own buffer;
//! * a write copies into the stream's outgoing buffer and returns at once; everything the
//!   worker's tasks wrote in one pass goes to the kernel together. A write of a pool
//!   buffer's size or more with nothing queued before it goes out at once with one
//!   `sendmsg`, and only what the socket does not take is copied;
//! * `flush` (the runtime's `on_thread_park` hook, and a task woken through an eventfd the
//!   ring signals) submits what is queued, lets the kernel run the deferred completions and
//!   wakes the tasks whose reads or writes finished (`driver.rs`).
//!
//! A stream must stay on the thread that made it (a current-thread runtime never moves a
//! task); used anywhere else it fails with an error instead of touching another ring.

mod buf_ring;
mod driver;
mod slot;
mod stream;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use io_uring::{IoUring, opcode, types};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use buf_ring::{BUF_COUNT, BufRing};
use driver::{CANCEL, Driver, GROUP};
pub use stream::RingStream;

/// Submission queue entries per ring (the completion queue has twice as many, and the kernel
/// keeps any overflow).
const ENTRIES: u32 = 4096;
/// The most sockets one worker's ring registers.
const MAX_FILES: u32 = 1 << 16;

static NEXT_ID: AtomicU32 = AtomicU32::new(1);

thread_local! {
    static DRIVER: RefCell<Option<Driver>> = const { RefCell::new(None) };
}

/// Sets up this thread's ring, or says why it cannot (an old kernel, a seccomp profile that
/// refuses io_uring, a kernel that does not signal deferred completions). Needs a tokio
/// runtime context (the ring's eventfd joins its poller); spawns the task that reacts to it.
pub fn install() -> io::Result<()> {
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_cqsize(ENTRIES * 2)
        .build(ENTRIES)?;
    // SAFETY: eventfd(2) takes no pointers; the result is checked before use.
    let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor that nothing else owns.
    let eventfd = unsafe { OwnedFd::from_raw_fd(raw) };
    ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
    if !eventfd_signals_deferred_work(&mut ring, &eventfd)? {
        return Err(io::Error::other(
            "the kernel does not signal deferred io_uring completions through the eventfd",
        ));
    }
    // Sockets are registered with the ring, which saves the kernel a descriptor lookup per
    // operation; a worker takes as many as the open-file limit allows.
    let files = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map_or(1024, |(soft, _)| soft)
        .min(MAX_FILES as u64) as u32;
    ring.submitter().register_files_sparse(files)?;
    let buffers = BufRing::new()?;
    // SAFETY: the ring's memory stays allocated for as long as the ring is registered: the
    // driver owns both and frees the buffers only after the kernel is done with them.
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(buffers.ring_addr(), BUF_COUNT, GROUP, 0)?
    };
    let mut driver = Driver::new(
        NEXT_ID.fetch_add(1, Ordering::Relaxed),
        ring,
        buffers,
        files,
    );
    for bid in 0..BUF_COUNT {
        driver.buffers.give_back(bid);
    }
    // SAFETY: the `AsyncFd` takes the `OwnedFd` itself: the descriptor is open, nothing else
    // closes or replaces it, and `as_raw_fd` returns it for as long as the `AsyncFd` lives.
    let eventfd = unsafe { AsyncFd::register_with_interest(eventfd, Interest::READABLE) }
        .map_err(io::Error::from)?;
    let kick = driver.kick.clone();
    DRIVER.with(|d| *d.borrow_mut() = Some(driver));
    tokio::spawn(drive(eventfd, kick));
    Ok(())
}

/// The start-up self-check: the thread sleeps in the runtime's poller, and only the
/// eventfd can tell it that completions wait for it to enter the ring. A timeout of 1 ms is
/// queued without entering the ring; the eventfd must become readable when it fires.
fn eventfd_signals_deferred_work(ring: &mut IoUring, eventfd: &OwnedFd) -> io::Result<bool> {
    let one_ms = types::Timespec::new().nsec(1_000_000);
    let timeout = opcode::Timeout::new(&one_ms).build().user_data(CANCEL);
    // SAFETY: the entry points at `one_ms`, which lives until the completion is reaped
    // below (the kernel copies it at submission anyway).
    unsafe { ring.submission().push(&timeout) }
        .map_err(|_| io::Error::other("a new ring's submission queue is full"))?;
    ring.submit()?;
    let mut poll = libc::pollfd {
        fd: eventfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ready = loop {
        // SAFETY: one valid `pollfd` that lives across the call.
        let ready = unsafe { libc::poll(&mut poll, 1, 1000) };
        // A signal that interrupts the wait is not an answer.
        if ready >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break ready;
        }
    };
    // Whatever the answer, the timeout is reaped before `one_ms` goes.
    ring.submit_and_wait(1)?;
    ring.completion().for_each(drop);
    let mut count = [0u8; 8];
    // SAFETY: reads at most 8 bytes into an 8-byte buffer from a non-blocking descriptor.
    unsafe { libc::read(eventfd.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
    Ok(ready == 1 && poll.revents & libc::POLLIN != 0)
}

/// Whether this thread has a ring.
pub fn installed() -> bool {
    DRIVER.with(|d| d.borrow().is_some())
}

/// Reacts to the ring's eventfd: the kernel signals it when completions wait for this
/// thread while it sleeps in the runtime's poller. `kick` wakes it when a flush left work.
async fn drive(eventfd: AsyncFd<OwnedFd>, kick: std::sync::Arc<tokio::sync::Notify>) {
    loop {
        tokio::select! {
            ready = eventfd.readable() => match ready {
                // The count is never read: the poller is edge-triggered, so every signal
                // wakes this task again, and a read would be one more system call per wake-up.
                Ok(mut ready) => ready.clear_ready(),
                Err(_) => return,
            },
            _ = kick.notified() => {}
        }
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
        if more {
            driver.kick.notify_one();
        }
        Some((more, std::mem::take(&mut driver.wake)))
    }) else {
        return false;
    };
    if wake.is_empty() {
        return more;
    }
    // Woken with the driver released: a woken task may run (and use its stream) at once.
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
