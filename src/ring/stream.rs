//! `RingStream`: a plain TCP connection on this worker's ring, an `AsyncRead + AsyncWrite`
//! like the `TcpStream` it was made from. It is a key into the driver's slots: its state
//! and buffers live in the driver (`driver.rs`), so dropping the stream never frees memory
//! the kernel is still using.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, types};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::DRIVER;
use super::buf_ring::BUF_SIZE;
use super::driver::{CANCEL, Driver, OUT_CAP, RECV, Ready, Slot, send_now};

/// A read with room for more than a pool buffer holds (the rest of a large frame) first
/// takes what the socket has straight into the reader's buffer, with one `recv`: a pool
/// buffer at a time would cost a copy and a wake-up per 16 KiB. So does any read after a
/// receive that filled its buffer (`Slot::more_waiting`), until one comes back short: a
/// message cut into many small frames (Go's and browsers' clients send 4 KiB frames) is
/// then read the way epoll reads it, instead of a receive armed and completed per frame
/// (64 KiB echoes with k6: 115 → 108 µs of CPU each).
const DIRECT_READ: usize = BUF_SIZE;
/// A write this large, with nothing queued before it, goes to the socket at once with one
/// `sendmsg`; only what the socket does not take is copied into the outgoing buffer.
const DIRECT_WRITE: usize = BUF_SIZE;

/// A plain TCP connection on this worker's ring.
#[derive(Debug)]
pub struct RingStream {
    driver: u32,
    key: u32,
}

fn off_thread() -> io::Error {
    io::Error::other("a ring socket was used off the worker thread that owns it")
}

/// Keeps the task's waker in `waiting`, cloning it only when it is another task's.
fn wait_with(waiting: &mut Option<Waker>, cx: &Context<'_>) {
    if !waiting.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *waiting = Some(cx.waker().clone());
    }
}

/// One `recv` without waiting, into `buf`'s unfilled part.
fn recv_now(socket: &std::net::TcpStream, buf: &mut ReadBuf<'_>) -> io::Result<usize> {
    // SAFETY: the kernel only writes into `room` (it never de-initialises bytes), which is
    // the caller's buffer, live and writable for the whole call; the descriptor is
    // `socket`'s own, open for the call. No ring receive is in flight on this socket
    // (checked by the caller), so none races this one for the stream's bytes.
    let n = unsafe {
        let room = buf.unfilled_mut();
        libc::recv(
            socket.as_raw_fd(),
            room.as_mut_ptr().cast(),
            room.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the kernel wrote the first `n` bytes of `room`.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Ok(n)
}

/// One `sendmsg` of `bufs` without waiting; how many bytes the socket took.
fn send_vectored_now(socket: &std::net::TcpStream, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    let count = bufs.len().min(libc::UIO_MAXIOV as usize);
    // SAFETY: an all-zero `msghdr` is a valid empty one (no address, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // `IoSlice` is ABI-compatible with `iovec` on Unix; the kernel only reads through it.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = count as _;
    // SAFETY: `msg` points at `count` live `iovec`s over the caller's buffers, valid for
    // the call; the descriptor is `socket`'s own. The socket has no ring send in flight and
    // nothing queued (checked by the caller), so these bytes are the next on the stream.
    let n = unsafe {
        libc::sendmsg(
            socket.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl RingStream {
    /// Moves `tcp` onto this thread's ring; gives it back when this thread has none or its
    /// file table is full.
    pub fn adopt(tcp: TcpStream) -> io::Result<Result<RingStream, TcpStream>> {
        if !super::installed() {
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

    fn register(
        socket: std::net::TcpStream,
    ) -> Result<RingStream, (io::Error, std::net::TcpStream)> {
        DRIVER.with(|d| {
            let mut d = d.borrow_mut();
            let Some(driver) = d.as_mut() else {
                return Err((off_thread(), socket));
            };
            let key = match driver.free.pop() {
                Some(key) => key,
                None if driver.slots.len() < driver.files as usize => {
                    driver.slots.push(None);
                    (driver.slots.len() - 1) as u32
                }
                None => {
                    let full = io::Error::other("the worker's io_uring file table is full");
                    return Err((full, socket));
                }
            };
            if let Err(e) = driver
                .ring
                .submitter()
                .register_files_update(key, &[socket.as_raw_fd()])
            {
                driver.free.push(key);
                return Err((e, socket));
            }
            driver.slots[key as usize] = Some(Slot::new(socket));
            Ok(RingStream {
                driver: driver.id,
                key,
            })
        })
    }

    /// Runs `f` on this stream's driver; `None` off its thread, once the thread is tearing
    /// down its locals, or (never expected) while the driver is borrowed already.
    fn with<R>(&self, f: impl FnOnce(&mut Driver, u32) -> R) -> Option<R> {
        DRIVER
            .try_with(|d| {
                let mut d = d.try_borrow_mut().ok()?;
                let driver = d.as_mut().filter(|driver| driver.id == self.driver)?;
                Some(f(driver, self.key))
            })
            .ok()
            .flatten()
    }

    /// Ready once every byte written so far has been taken by the kernel (its send
    /// completed), or with the error a send failed with. A write only copies into the
    /// stream's outgoing buffer: this is what a plain socket's `write` returning means.
    pub fn poll_written(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|driver, key| {
            let s = driver.slot(key);
            if let Some(code) = s.write_error {
                return Poll::Ready(Err(errno(code)));
            }
            if s.all_sent() {
                return Poll::Ready(Ok(()));
            }
            wait_with(&mut s.writer, cx);
            Poll::Pending
        })
        .unwrap_or_else(|| Poll::Ready(Err(off_thread())))
    }

    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.with(|driver, key| {
            let s = driver.slot(key);
            if let Some(code) = s.write_error {
                return Poll::Ready(Err(errno(code)));
            }
            let room = OUT_CAP.saturating_sub(s.out.len());
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            if total == 0 {
                return Poll::Ready(Ok(0));
            }
            if room == 0 {
                wait_with(&mut s.writer, cx);
                return Poll::Pending;
            }
            let mut sent = 0;
            if total >= DIRECT_WRITE && s.all_sent() {
                match send_vectored_now(&s.socket, bufs) {
                    Ok(n) if n == total => return Poll::Ready(Ok(n)),
                    Ok(n) => sent = n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        s.write_error = e.raw_os_error();
                        return Poll::Ready(Err(e));
                    }
                }
            }
            // An idle stream holds no outgoing buffer: it takes one of the worker's spares.
            if s.out.capacity() == 0
                && let Some(spare) = driver.spare.pop()
            {
                driver.slot(key).out = spare;
            }
            let s = driver.slot(key);
            // What the socket did not take, as far as there is room.
            let mut skip = sent;
            let mut taken = 0;
            for b in bufs {
                if skip >= b.len() {
                    skip -= b.len();
                    continue;
                }
                let b = &b[std::mem::take(&mut skip)..];
                let n = b.len().min(room - taken);
                s.out.extend_from_slice(&b[..n]);
                taken += n;
                if taken == room {
                    break;
                }
            }
            let taken = sent + taken;
            if !s.queued {
                s.queued = true;
                driver.dirty.push(key);
            }
            Poll::Ready(Ok(taken))
        })
        .unwrap_or_else(|| Poll::Ready(Err(off_thread())))
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
            let s = slots[key as usize]
                .as_mut()
                .expect("a live RingStream's slot");
            match s.ready.as_mut() {
                Some(Ready::Pool { bid, start, end }) => {
                    let n = buf.remaining().min((*end - *start) as usize);
                    let from = *start as usize;
                    buf.put_slice(buffers.received(*bid, from, from + n));
                    *start += n as u32;
                    if *start == *end {
                        let bid = *bid;
                        s.ready = None;
                        driver.give_back(bid);
                    }
                    return Poll::Ready(Ok(()));
                }
                Some(Ready::Heap { data, start }) => {
                    let n = buf.remaining().min(data.len() - *start);
                    buf.put_slice(&data[*start..*start + n]);
                    *start += n;
                    if *start == data.len() {
                        s.ready = None;
                    }
                    return Poll::Ready(Ok(()));
                }
                None => {}
            }
            if let Some(code) = s.read_error.take() {
                return Poll::Ready(Err(errno(code)));
            }
            if s.eof {
                return Poll::Ready(Ok(()));
            }
            if (buf.remaining() >= DIRECT_READ || s.more_waiting) && !s.recv_in_flight {
                let room = buf.remaining();
                match recv_now(&s.socket, buf) {
                    Ok(0) => {
                        s.eof = true;
                        return Poll::Ready(Ok(()));
                    }
                    Ok(n) => {
                        #[cfg(test)]
                        if room < DIRECT_READ {
                            super::tests::READ_ON
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        s.more_waiting = n == room;
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => s.more_waiting = false,
                    Err(e) => return Poll::Ready(Err(e)),
                }
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
    /// reports a send that failed (`poll_written` waits for the kernel to take them).
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|driver, key| match driver.slot(key).write_error {
            Some(code) => Poll::Ready(Err(errno(code))),
            None => Poll::Ready(Ok(())),
        })
        .unwrap_or_else(|| Poll::Ready(Err(off_thread())))
    }

    /// Waits until every written byte is with the kernel, then shuts the sending side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_written(cx))?;
        self.with(|driver, key| {
            Poll::Ready(driver.slot(key).socket.shutdown(std::net::Shutdown::Write))
        })
        .unwrap_or_else(|| Poll::Ready(Err(off_thread())))
    }
}

impl Drop for RingStream {
    fn drop(&mut self) {
        self.with(|driver, key| {
            let s = driver.slot(key);
            s.dropped = true;
            s.reader = None;
            s.writer = None;
            let ready = s.ready.take();
            // Bytes written but not yet handed over go now, as far as the socket takes
            // them, the way a closed TcpStream's written bytes still leave. With a send in
            // flight they follow it when it completes (`Driver::complete`).
            if !s.send_in_flight {
                send_now(&s.socket, &s.out);
                s.out.clear();
            }
            let receiving = s.recv_in_flight;
            driver.starved.retain(|&k| k != key);
            if let Some(Ready::Pool { bid, .. }) = ready {
                driver.give_back(bid);
            }
            if receiving {
                // Only the receive is cancelled: a send in flight finishes.
                let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::user_data(
                    ((key as u64) << 1) | RECV,
                ))
                .build()
                .user_data(CANCEL);
                if driver.push(&cancel).is_err() {
                    // No cancel: ending the reading side completes the receive with EOF.
                    let _ = driver.slot(key).socket.shutdown(std::net::Shutdown::Read);
                }
            }
            driver.release_if_done(key);
        });
    }
}
