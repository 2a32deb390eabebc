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
use super::driver::{CANCEL, Driver, OUT_CAP, RECV, Ready, Slot, send_now};

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
