//! One ring socket's state, owned by the driver (`Slot`): what was received and not yet
//! read, what was written and not yet sent, the operations in flight and the tasks waiting.
//! A slot outlives its `RingStream` until the kernel is done with it.

use std::net::TcpStream as StdTcpStream;
use std::os::fd::AsRawFd;
use std::task::Waker;

/// Received bytes not yet read out.
pub enum Ready {
    /// In pool buffer `bid`, from `start` to `end`.
    Pool { bid: u16, start: u32, end: u32 },
    /// Copied out of the pool (it was running low), from `start` on.
    Heap { data: Vec<u8>, start: usize },
}

/// One socket's state, owned by the driver: the kernel may still be using its buffers after
/// the `RingStream` is gone.
pub struct Slot {
    pub socket: StdTcpStream,
    /// A completed receive not yet read out.
    pub ready: Option<Ready>,
    pub eof: bool,
    pub read_error: Option<i32>,
    pub recv_in_flight: bool,
    /// The last receive filled its buffer: more is likely waiting in the socket, and the
    /// next read tries it at once instead of arming a receive.
    pub more_waiting: bool,
    pub reader: Option<Waker>,
    /// Written, not yet handed to the kernel.
    pub out: Vec<u8>,
    /// Handed to the kernel: `sending[sent..]` is still to go.
    pub sending: Vec<u8>,
    pub sent: usize,
    pub send_in_flight: bool,
    /// In `Driver::dirty`.
    pub queued: bool,
    pub write_error: Option<i32>,
    pub writer: Option<Waker>,
    /// The `RingStream` is gone: the slot goes once nothing is in flight.
    pub dropped: bool,
}

impl Slot {
    pub fn new(socket: StdTcpStream) -> Self {
        Self {
            socket,
            ready: None,
            eof: false,
            read_error: None,
            recv_in_flight: false,
            more_waiting: false,
            reader: None,
            out: Vec::new(),
            sending: Vec::new(),
            sent: 0,
            send_in_flight: false,
            queued: false,
            write_error: None,
            writer: None,
            dropped: false,
        }
    }

    pub fn in_flight(&self) -> bool {
        self.recv_in_flight || self.send_in_flight
    }

    /// Everything written has been taken by the kernel (or the socket failed).
    pub fn all_sent(&self) -> bool {
        !self.send_in_flight && self.out.is_empty()
    }
}

/// Sends `bytes` on `socket` as far as it takes them without waiting (best effort: for a
/// stream that is gone).
pub fn send_now(socket: &StdTcpStream, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    // SAFETY: `bytes` is a live buffer of `bytes.len()` bytes that no ring operation uses,
    // and the descriptor is `socket`'s own, open for the call.
    unsafe {
        libc::send(
            socket.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
}
