//! `WokenOnly`: a future that is polled only after it asked to be woken.
//!
//! The relay loop's `select!` polls every branch that is not ready on every wake of the
//! session task, and nearly every wake is a socket becoming readable. The other branches
//! (shutdown, keepalive, idle, token expiry) almost never are, yet each poll of them takes
//! locks or timer-state atomics. Wrapped, such a branch costs one flag check per wake until
//! its own waker fires.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

pub struct WokenOnly<F> {
    inner: F,
    flag: Arc<Flag>,
    /// The inner future's waker: sets the flag, then wakes the task.
    waker: Waker,
    /// The task waker last handed to `flag`, to skip re-registering the same one.
    task: Option<Waker>,
}

struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F> WokenOnly<F> {
    pub fn new(inner: F) -> Self {
        let flag = Arc::new(Flag {
            // The first poll always reaches the inner future, which registers its waker.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            inner,
            waker: Waker::from(flag.clone()),
            flag,
            task: None,
        }
    }

    /// The inner future, to change it (reset a timer): its next poll goes through, so it
    /// registers again.
    pub fn get_mut(&mut self) -> &mut F {
        self.flag.woken.store(true, Ordering::Relaxed);
        &mut self.inner
    }
}

impl<F: Future + Unpin> Future for WokenOnly<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let same_task = this.task.as_ref().is_some_and(|t| t.will_wake(cx.waker()));
        if same_task && !this.flag.woken.load(Ordering::Acquire) {
            // The registered task waker is still in place: a wake takes it only after
            // setting the flag, which this load would have seen.
            return Poll::Pending;
        }
        this.flag.task.register(cx.waker());
        if !same_task {
            this.task = Some(cx.waker().clone());
        }
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll(&mut Context::from_waker(&this.waker))
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
