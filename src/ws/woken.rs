//! Gates: polling a branch of the relay loop only once its own waker fired.
//!
//! The relay loop's `select!` polls every branch that is not ready on every wake of the
//! session task. Nearly every wake is one socket becoming readable; the other branches
//! (the other socket, shutdown, keepalive, idle, token expiry) are not ready, yet each poll
//! of them costs a readiness check under a lock, a cooperative-budget update, or
//! timer-state atomics. Behind a `Gate`, such a branch costs one flag check per wake until
//! its own waker fires.
//!
//! A gate lets a poll through when its waker fired since the last poll, when the last poll
//! returned `Ready` (a stream may have more buffered: it registers nothing), or when the
//! task is a different one. It polls the inner future or stream with its own waker, which
//! sets the flag and then wakes the task.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// See the module documentation.
pub struct Gate {
    flag: Arc<Flag>,
    /// The inner poll's waker: sets the flag, then wakes the task.
    waker: Waker,
    /// The task waker last handed to `flag`, to skip re-registering the same one.
    task: Option<Waker>,
    /// The last poll returned `Ready`: the next one goes through whatever the flag says.
    open: bool,
}

struct Flag {
    woken: AtomicBool,
    /// The task to wake. It stays registered across wakes (a task's waker does not change
    /// between polls), so a wake neither takes nor clones it.
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(task) = &*self.task.lock().unwrap_or_else(|e| e.into_inner()) {
            task.wake_by_ref();
        }
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    pub fn new() -> Self {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(false),
            task: Mutex::new(None),
        });
        Self {
            waker: Waker::from(flag.clone()),
            flag,
            task: None,
            // The first poll always goes through, to register the gate's waker.
            open: true,
        }
    }

    /// The next poll goes through (the inner future was changed: a timer reset).
    pub fn open(&mut self) {
        self.open = true;
    }

    /// Runs `poll` with the gate's waker if the gate lets it through, else `Pending`.
    pub fn poll<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let same_task = self.task.as_ref().is_some_and(|t| t.will_wake(cx.waker()));
        if !same_task {
            let task = cx.waker().clone();
            *self.flag.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.clone());
            self.task = Some(task);
        } else if !self.open && !self.flag.woken.load(Ordering::Acquire) {
            // Nothing this branch waits for happened since its last (pending) poll, and
            // when it does, its waker wakes this same task.
            return Poll::Pending;
        }
        // Cleared before the poll: a wake during it sets the flag again.
        self.flag.woken.store(false, Ordering::Release);
        let result = poll(&mut Context::from_waker(&self.waker));
        self.open = result.is_ready();
        result
    }
}

/// A future behind a `Gate`: polled only after it asked to be woken.
pub struct WokenOnly<F> {
    inner: F,
    gate: Gate,
}

impl<F> WokenOnly<F> {
    pub fn new(inner: F) -> Self {
        Self {
            inner,
            gate: Gate::new(),
        }
    }

    /// The inner future, to change it (reset a timer): its next poll goes through, so it
    /// registers again.
    pub fn get_mut(&mut self) -> &mut F {
        self.gate.open();
        &mut self.inner
    }
}

impl<F: Future + Unpin> Future for WokenOnly<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let inner = &mut this.inner;
        this.gate.poll(cx, |cx| Pin::new(inner).poll(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_timer_fires_through_the_wrapper_and_can_be_reset() {
        let mut sleep = WokenOnly::new(Box::pin(tokio::time::sleep(Duration::from_secs(5))));
        let start = tokio::time::Instant::now();
        (&mut sleep).await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        sleep
            .get_mut()
            .as_mut()
            .reset(tokio::time::Instant::now() + Duration::from_secs(3));
        (&mut sleep).await;
        assert_eq!(start.elapsed(), Duration::from_secs(8));
    }

    /// Two gated channels in one select loop, fed from another thread: every message
    /// arrives, in order, including those already buffered when a poll returned one (a
    /// `Ready` leaves the gate open), and the idle branch is polled only when first
    /// registering, not once per message of the busy one.
    #[tokio::test]
    async fn a_gate_polls_only_the_branch_that_was_woken_and_loses_nothing() {
        let (busy_tx, mut busy_rx) = tokio::sync::mpsc::channel::<u32>(64);
        let (_idle_tx, mut idle_rx) = tokio::sync::mpsc::channel::<u32>(1);
        let (mut busy_gate, mut idle_gate) = (Gate::new(), Gate::new());
        let sender = std::thread::spawn(move || {
            for i in 0..10_000 {
                if busy_tx.blocking_send(i).is_err() {
                    break;
                }
            }
        });
        let mut idle_polls = 0;
        let mut next = 0;
        let received = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                tokio::select! {
                    biased;
                    got = std::future::poll_fn(|cx| busy_gate.poll(cx, |cx| busy_rx.poll_recv(cx))) => match got {
                        Some(i) => {
                            assert_eq!(i, next, "in order, none skipped");
                            next += 1;
                        }
                        None => break,
                    },
                    _ = std::future::poll_fn(|cx| idle_gate.poll(cx, |cx| {
                        idle_polls += 1;
                        idle_rx.poll_recv(cx)
                    })) => unreachable!("nothing is sent on the idle channel"),
                }
            }
        })
        .await;
        drop(busy_rx);
        sender.join().expect("sender");
        assert!(received.is_ok(), "a message was never delivered");
        assert_eq!(next, 10_000);
        assert_eq!(idle_polls, 1, "the idle branch is polled once, to register");
    }

    #[tokio::test]
    async fn a_notification_from_another_thread_reaches_a_task_polling_other_things() {
        let token = tokio_util::sync::CancellationToken::new();
        let cancelled = token.clone().cancelled_owned();
        let mut gated = WokenOnly::new(Box::pin(cancelled));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(1);
        let canceller = std::thread::spawn(move || {
            for i in 0..100 {
                tx.blocking_send(i).expect("receiver alive");
            }
            token.cancel();
        });
        let mut received = 0;
        let seen = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                tokio::select! {
                    biased;
                    Some(_) = rx.recv() => received += 1,
                    _ = &mut gated => break,
                }
            }
        })
        .await;
        canceller.join().expect("canceller");
        assert!(seen.is_ok(), "the cancel never woke the task");
        // The sender is still alive when it cancels: the task was parked on both branches.
        assert!(received <= 100);
    }
}
