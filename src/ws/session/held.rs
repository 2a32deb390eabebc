//! What a hold keeps and decides, as pure parts: the reconnect backoff schedule, the
//! bounded buffer of the client's messages, and the outcomes a hold is counted by. The
//! `Holding` state that uses them is `hold.rs`.

use std::collections::VecDeque;
use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;

/// Reconnect delay before try `attempt` (0-based): uniform in
/// `[initial, min(max, initial · 2^(attempt+1))]` — full jitter over a doubling ceiling, so a
/// crowd of held sessions spreads out instead of arriving at the new instance together.
/// `unit` is a random number in `[0, 1]`.
pub fn backoff_delay(attempt: u32, initial: Duration, max: Duration, unit: f64) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_add(1))
        .unwrap_or(u32::MAX);
    let ceiling = initial.saturating_mul(factor).min(max).max(initial);
    initial + (ceiling - initial).mul_f64(unit.clamp(0.0, 1.0))
}

/// How long an address that failed is tried only after every other member.
pub fn failure_window(restart: &crate::config::Restart) -> Duration {
    restart.backoff_max.max(Duration::from_secs(1))
}

/// How a hold ended; `as_str` is the `outcome` label of `holdfast_holds_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldOutcome {
    Resumed,
    Timeout,
    Overflow,
    ClientClosed,
    Refused,
    /// The proxy itself began shutting down while the client was held.
    Shutdown,
    /// One of holdfast's own policies (rate limit, token expiry) closed the held session.
    Policy,
}

impl crate::metrics::LabelValue for HoldOutcome {
    fn label(self) -> &'static str {
        self.as_str()
    }
}

impl HoldOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldOutcome::Resumed => "resumed",
            HoldOutcome::Timeout => "timeout",
            HoldOutcome::Overflow => "overflow",
            HoldOutcome::ClientClosed => "client_closed",
            HoldOutcome::Refused => "refused",
            HoldOutcome::Shutdown => "shutdown",
            HoldOutcome::Policy => "policy",
        }
    }
}

/// Client messages read while holding, each with its sequence number (its index among all
/// the client's data messages), bounded by `buffer_messages` and `buffer_bytes`.
#[derive(Debug)]
pub struct HoldBuffer {
    messages: VecDeque<(u64, Message)>,
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
}

/// The buffer would exceed a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

impl HoldBuffer {
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        Self {
            messages: VecDeque::new(),
            bytes: 0,
            max_messages,
            max_bytes,
        }
    }

    pub fn push(&mut self, seq: u64, message: Message) -> Result<(), Overflow> {
        let len = message.len();
        if self.messages.len() >= self.max_messages || self.bytes + len > self.max_bytes {
            return Err(Overflow);
        }
        self.bytes += len;
        self.messages.push_back((seq, message));
        Ok(())
    }

    pub fn front(&self) -> Option<&(u64, Message)> {
        self.messages.front()
    }

    /// The held messages in order, each with its sequence number.
    pub fn iter(&self) -> impl Iterator<Item = &(u64, Message)> {
        self.messages.iter()
    }

    /// Removes the front message once it has been delivered.
    pub fn pop_delivered(&mut self) {
        if let Some((_, m)) = self.messages.pop_front() {
            self.bytes -= m.len();
        }
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_full_jitter_and_is_capped() {
        let (initial, max) = (Duration::from_secs(1), Duration::from_secs(5));
        let table = [
            (0, 0.0, 1000),
            (0, 1.0, 2000),
            (0, 0.5, 1500),
            (1, 1.0, 4000),
            (2, 1.0, 5000),
            (2, 0.0, 1000),
            (40, 1.0, 5000),
            (u32::MAX, 1.0, 5000),
        ];
        for (attempt, unit, want_ms) in table {
            assert_eq!(
                backoff_delay(attempt, initial, max, unit),
                Duration::from_millis(want_ms),
                "attempt {attempt}, unit {unit}"
            );
        }
        // Equal bounds: no jitter range, never below initial.
        let d = Duration::from_millis(250);
        assert_eq!(backoff_delay(3, d, d, 0.7), d);
    }

    #[test]
    fn buffer_bounds_are_enforced_on_count_and_bytes() {
        let mut b = HoldBuffer::new(2, 10);
        assert_eq!(b.push(0, Message::text("12345")), Ok(()));
        assert_eq!(b.push(1, Message::text("123456")), Err(Overflow), "bytes");
        assert_eq!(b.push(1, Message::text("12345")), Ok(()));
        assert_eq!(b.push(2, Message::text("")), Err(Overflow), "count");
        b.pop_delivered();
        assert_eq!(b.len(), 1);
        assert_eq!(b.push(2, Message::text("1")), Ok(()));
        assert_eq!(b.front().map(|(seq, _)| *seq), Some(1));
        let mut none = HoldBuffer::new(0, 10);
        assert_eq!(none.push(0, Message::text("x")), Err(Overflow));
    }

    #[test]
    fn outcome_labels_are_the_specs() {
        let labels: Vec<_> = [
            HoldOutcome::Resumed,
            HoldOutcome::Timeout,
            HoldOutcome::Overflow,
            HoldOutcome::ClientClosed,
            HoldOutcome::Refused,
        ]
        .iter()
        .map(|o| o.as_str())
        .collect();
        assert_eq!(
            labels,
            ["resumed", "timeout", "overflow", "client_closed", "refused"]
        );
    }
}
