//! `--uring-copy`: a plain TCP byte relay on io_uring, in its own process
//! (`holdfast-bench uring-copy --listen ADDR --upstream ADDR`): one thread and one ring per
//! core, each keeping an accept in flight on the shared listener.
//!
//! Like the tokio copy relay it does no WebSocket work; unlike it, the ring is the event
//! loop: every completion of one pass is handled, the reads and writes they lead to are
//! queued, and one `io_uring_enter` submits them all and waits for the next completion.
//! With `IORING_SETUP_DEFER_TASKRUN` the kernel finishes socket operations only inside that
//! call, in a batch, instead of interrupting the thread for each. What this column costs
//! per echo against the tokio copy column is what the event-loop model is worth, for any
//! proxy on this kernel.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use io_uring::{IoUring, opcode, squeue, types};

const BUF: usize = 4096;
/// `user_data` of the accept in flight; a relay operation's is its pair and its kind.
const ACCEPT: u64 = u64::MAX;

/// A client connection and its upstream connection. Direction `d` reads `socket[d]` into
/// `buf[d]` and writes it to `socket[1 - d]`; each direction has one operation in flight.
/// Dropping the pair closes both sockets.
struct Pair {
    socket: [TcpStream; 2],
    /// Boxed: an operation in flight points into it, and `Pair`s move inside the slab.
    buf: [Box<[u8; BUF]>; 2],
    filled: [usize; 2],
    sent: [usize; 2],
    in_flight: u32,
    closed: bool,
}

pub fn run(listen: SocketAddr, upstream: SocketAddr) {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    // Before listening: without io_uring (an old kernel, or a seccomp profile such as
    // Docker's default that refuses it) the bench learns it at once, not from a relay
    // that accepts connections and never answers.
    if let Err(e) = ring(8) {
        eprintln!("uring-copy: io_uring with DEFER_TASKRUN is not available here: {e}");
        std::process::exit(1);
    }
    let listener = TcpListener::bind(listen).expect("uring-copy: bind");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let fd = listener.as_raw_fd();
    let threads: Vec<_> = (0..cores)
        .map(|_| std::thread::spawn(move || worker(fd, upstream)))
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
    drop(listener);
}

fn worker(listener: RawFd, upstream: SocketAddr) {
    let mut ring = ring(4096).expect("uring-copy: io_uring");
    let mut pairs: Vec<Option<Pair>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let accept = || {
        opcode::Accept::new(
            types::Fd(listener),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
        .build()
        .user_data(ACCEPT)
    };
    let mut queued: Vec<squeue::Entry> = vec![accept()];
    // Reused every pass: the loop allocates only for connections.
    let mut done: Vec<(u64, i32)> = Vec::new();
    loop {
        {
            let mut sq = ring.submission();
            for entry in queued.drain(..) {
                // SAFETY: every buffer an entry points into is a boxed buffer of a `Pair`
                // that stays in the slab until its last operation has completed.
                unsafe { sq.push(&entry).expect("uring-copy: submission queue full") };
            }
        }
        ring.submit_and_wait(1).expect("uring-copy: io_uring_enter");
        done.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for (data, result) in done.drain(..) {
            if data == ACCEPT {
                queued.push(accept());
                if result >= 0
                    && let Some(pair) = connect(result, upstream)
                {
                    let i = free.pop().unwrap_or_else(|| {
                        pairs.push(None);
                        pairs.len() - 1
                    });
                    let pair = pairs[i].insert(pair);
                    queued.extend((0..2).map(|d| recv(pair, i, d)));
                }
                continue;
            }
            let i = (data >> 2) as usize;
            let (d, was_send) = ((data & 1) as usize, data & 2 != 0);
            let Some(pair) = pairs[i].as_mut() else {
                continue;
            };
            pair.in_flight -= 1;
            if result <= 0 {
                pair.close();
            } else if !pair.closed {
                if was_send {
                    pair.sent[d] += result as usize;
                } else {
                    (pair.filled[d], pair.sent[d]) = (result as usize, 0);
                }
                queued.push(if pair.sent[d] < pair.filled[d] {
                    send(pair, i, d)
                } else {
                    recv(pair, i, d)
                });
            }
            if pair.closed && pair.in_flight == 0 {
                pairs[i] = None;
                free.push(i);
            }
        }
    }
}

/// A ring whose completions are processed only inside `io_uring_enter`, by this thread
/// (Linux 6.1 or later).
fn ring(entries: u32) -> std::io::Result<IoUring> {
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .build(entries)
}

/// The upstream connection for a client just accepted (blocking: loopback, and the bench
/// connects before it measures).
fn connect(client: RawFd, upstream: SocketAddr) -> Option<Pair> {
    // SAFETY: the descriptor the accept returned is a new socket nothing else owns.
    let client = unsafe { TcpStream::from_raw_fd(client) };
    let upstream = TcpStream::connect(upstream).ok()?;
    let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
    Some(Pair {
        socket: [client, upstream],
        buf: [Box::new([0; BUF]), Box::new([0; BUF])],
        filled: [0; 2],
        sent: [0; 2],
        in_flight: 0,
        closed: false,
    })
}

impl Pair {
    /// Ends both connections; the pair is dropped (its sockets closed) once no operation
    /// is in flight.
    fn close(&mut self) {
        self.closed = true;
        for socket in &self.socket {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

fn recv(pair: &mut Pair, i: usize, d: usize) -> squeue::Entry {
    pair.in_flight += 1;
    let from = types::Fd(pair.socket[d].as_raw_fd());
    opcode::Recv::new(from, pair.buf[d].as_mut_ptr(), BUF as u32)
        .build()
        .user_data(((i as u64) << 2) | d as u64)
}

fn send(pair: &mut Pair, i: usize, d: usize) -> squeue::Entry {
    pair.in_flight += 1;
    let rest = &pair.buf[d][pair.sent[d]..pair.filled[d]];
    let to = types::Fd(pair.socket[1 - d].as_raw_fd());
    opcode::Send::new(to, rest.as_ptr(), rest.len() as u32)
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(((i as u64) << 2) | 2 | d as u64)
}
