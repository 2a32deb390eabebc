//! The ring against real sockets on a worker-like runtime: whole and in-order bytes both
//! ways, a pool smaller than the ready sockets, dropped streams, errors, and a driver
//! dropped with operations in flight.

use super::*;
use crate::ring::buf_ring::{BUF_COUNT, BUF_SIZE};
use crate::ring::stream::RingStream;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::net::TcpStream;

/// A worker-like runtime: one thread, the ring flushed before it parks. Where the kernel
/// refuses the ring the test says so and skips — unless `TEST_REQUIRE_ALL` is set (CI),
/// which makes it a failure.
fn on_ring<F: std::future::Future>(test: F) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(|| {
            flush();
        })
        .build()
        .unwrap();
    runtime.block_on(async {
        if let Err(e) = install() {
            let why = format!("io_uring with DEFER_TASKRUN (Linux 6.1+): {e}");
            assert!(
                std::env::var_os("TEST_REQUIRE_ALL").is_none(),
                "{why} is required (TEST_REQUIRE_ALL) but refused here"
            );
            eprintln!("skipped: {why} is refused on this machine");
            return;
        }
        tokio::time::timeout(Duration::from_secs(30), test)
            .await
            .expect("the test finishes within 30 s");
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

/// Received bytes copied out of a pool running low, on any thread.
pub(super) static SPILLED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Receives that found the pool empty, on any thread.
pub(super) static STARVED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Reads that took the socket's bytes at once because the last receive filled its buffer,
/// on any thread.
pub(super) static READ_ON: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The peer echoes everything back, then shuts its side down.
fn echoing(mut theirs: TcpStream) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (mut r, mut w) = theirs.split();
        tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
    })
}

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
        let (ours, theirs) = pair().await;
        let echo = echoing(theirs);
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
fn small_queued_and_large_direct_writes_keep_their_order() {
    on_ring(async {
        let (ours, theirs) = pair().await;
        let echo = echoing(theirs);
        let (mut r, mut w) = tokio::io::split(ours);
        // Small writes queue for the ring; large ones go out at once when nothing is queued
        // before them, and otherwise queue behind it. Vectored writes split at odd places
        // test the skip over what the socket took.
        let mut expected = Vec::new();
        let writes: Vec<Vec<Vec<u8>>> = (0..200u32)
            .map(|i| {
                let sizes: &[usize] = match i % 4 {
                    0 => &[7],
                    1 => &[3, 20_000, 11],
                    2 => &[70_001],
                    _ => &[1, 1, 40_000],
                };
                sizes
                    .iter()
                    .map(|&n| {
                        (0..n)
                            .map(|j| ((i as usize * 31 + j) % 253) as u8)
                            .collect()
                    })
                    .collect()
            })
            .collect();
        for parts in &writes {
            for p in parts {
                expected.extend_from_slice(p);
            }
        }
        let writer = tokio::spawn(async move {
            for parts in writes {
                let mut slices: Vec<std::io::IoSlice<'_>> =
                    parts.iter().map(|p| std::io::IoSlice::new(p)).collect();
                let mut slices = &mut slices[..];
                while !slices.is_empty() {
                    let n = w.write_vectored(slices).await.unwrap();
                    assert!(n > 0);
                    std::io::IoSlice::advance_slices(&mut slices, n);
                }
            }
            w.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        assert_eq!(back.len(), expected.len());
        assert!(back == expected, "the echo differs from what was sent");
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
        // The pool came under pressure: it ran out (receives re-armed as buffers came back)
        // or ran low (received bytes copied out of it).
        assert!(
            STARVED.load(Ordering::Relaxed) + SPILLED.load(Ordering::Relaxed) > 0,
            "the pool never ran low"
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

/// Sockets whose tasks stop reading (a relay waiting on a slow peer) must not pin the pool:
/// once it runs low, received bytes are copied out of it, so every socket still gets its
/// bytes — here more sockets than the pool has buffers, none of them read until the end.
#[test]
fn sockets_that_stop_reading_do_not_pin_the_pool() {
    use std::pin::Pin;
    use std::task::Context;
    use tokio::io::{AsyncRead, ReadBuf};
    on_ring(async {
        let count = BUF_COUNT as usize + 64;
        let (mut ours, mut peers) = (Vec::new(), Vec::new());
        for _ in 0..count {
            let (o, t) = pair().await;
            ours.push(o);
            peers.push(t);
        }
        // One receive armed per socket, whose task then never asks again.
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for stream in &mut ours {
            let mut byte = [0u8; 1];
            let mut buf = ReadBuf::new(&mut byte);
            assert!(Pin::new(stream).poll_read(&mut cx, &mut buf).is_pending());
        }
        for (i, peer) in peers.iter_mut().enumerate() {
            peer.write_all(&[i as u8; 1000]).await.unwrap();
        }
        let (mut ready, mut copied) = (0, 0);
        while ready < count {
            tokio::time::sleep(Duration::from_millis(5)).await;
            (ready, copied) = DRIVER.with(|d| {
                let d = d.borrow();
                let slots = d.as_ref().unwrap().slots.iter().flatten();
                slots.fold((0, 0), |(ready, copied), s| match &s.ready {
                    Some(driver::Ready::Heap { .. }) => (ready + 1, copied + 1),
                    Some(driver::Ready::Pool { .. }) => (ready + 1, copied),
                    None => (ready, copied),
                })
            });
        }
        assert!(
            copied >= 64,
            "{copied} sockets' bytes copied out of the pool"
        );
        for (i, stream) in ours.iter_mut().enumerate() {
            let mut got = [0u8; 1000];
            stream.read_exact(&mut got).await.unwrap();
            assert!(
                got.iter().all(|&b| b == i as u8),
                "socket {i} got others' bytes"
            );
        }
    });
}

/// A write only copies into the outgoing buffer; `poll_written` waits for the kernel to take
/// it, and is where a send to a peer that reset the connection fails.
#[test]
fn written_waits_for_the_send_and_reports_its_failure() {
    on_ring(async {
        let (mut ours, mut theirs) = pair().await;
        ours.write_all(b"hello").await.unwrap();
        std::future::poll_fn(|cx| ours.poll_written(cx))
            .await
            .unwrap();
        let mut five = [0u8; 5];
        theirs.read_exact(&mut five).await.unwrap();
        assert_eq!(&five, b"hello");
        theirs.set_zero_linger().unwrap();
        drop(theirs);
        let mut failed = false;
        for _ in 0..100 {
            let wrote = ours.write_all(b"x").await;
            let written = std::future::poll_fn(|cx| ours.poll_written(cx)).await;
            if wrote.is_err() || written.is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "sends to a reset peer keep succeeding");
    });
}

/// A stream whose writes have all been sent holds no outgoing buffer (an idle session's
/// memory); its buffers go to the worker's spares and the next write takes one back.
#[test]
fn an_idle_stream_holds_no_outgoing_buffer() {
    on_ring(async {
        let (mut ours, mut theirs) = pair().await;
        let buffers = |d: &mut driver::Driver| {
            let key = d.slots.iter().position(Option::is_some).expect("our slot") as u32;
            let slot = d.slot(key);
            (slot.out.capacity() + slot.sending.capacity(), d.spare.len())
        };
        let mut got = [0u8; 5];
        for round in 0..3 {
            ours.write_all(b"hello").await.unwrap();
            std::future::poll_fn(|cx| ours.poll_written(cx))
                .await
                .unwrap();
            theirs.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"hello");
            let (held, spares) =
                DRIVER.with(|d| buffers(d.borrow_mut().as_mut().expect("a driver")));
            assert_eq!(
                held, 0,
                "round {round}: the stream keeps {held} bytes of buffer"
            );
            assert_eq!(
                spares, 1,
                "round {round}: one buffer, reused, among the spares"
            );
        }
    });
}

/// The driver goes with its thread, perhaps with receives still armed: dropping it cancels
/// them and waits for their completions before the pool they would write into is freed.
#[test]
fn a_driver_drained_with_operations_in_flight_reaps_them_first() {
    on_ring(async {
        let mut pairs = Vec::new();
        for _ in 0..8 {
            let (mut ours, theirs) = pair().await;
            // Arms a receive that never completes on its own (nothing is sent).
            let mut buf = [0u8; 8];
            let pending = tokio::time::timeout(Duration::from_millis(20), ours.read(&mut buf));
            assert!(pending.await.is_err());
            pairs.push((ours, theirs));
        }
        let mut driver = DRIVER.with(|d| d.borrow_mut().take()).expect("a driver");
        assert_eq!(
            driver.in_flight(),
            8,
            "every stream has a receive in flight"
        );
        assert_eq!(driver.drain(), 0, "cancelled and reaped");
        assert!(driver.slots.iter().flatten().all(|s| !s.in_flight()));
        // The streams outlive their driver here: off it, they fail instead of touching
        // another ring.
        let (mut ours, _) = pairs.pop().unwrap();
        drop(driver);
        assert!(ours.write_all(b"x").await.is_err());
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

#[test]
fn a_small_reader_behind_a_full_receive_reads_on_without_the_ring() {
    on_ring(async {
        let (mut ours, mut theirs) = pair().await;
        // 1 MiB in one go: the first receive fills a pool buffer, so the reader's next
        // 4 KiB reads take what the socket holds at once, until one comes back short.
        let sent: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                theirs.write_all(&sent).await.unwrap();
                theirs.shutdown().await.unwrap();
            })
        };
        let before = READ_ON.load(Ordering::Relaxed);
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = ours.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        writer.await.unwrap();
        assert!(got == sent, "the bytes arrive whole and in order");
        assert!(
            READ_ON.load(Ordering::Relaxed) > before,
            "no read went straight to the socket after a full receive"
        );
    });
}
