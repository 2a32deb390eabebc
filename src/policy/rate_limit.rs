//! `policy.rate_limit`: a token bucket per connection over client→upstream messages.
//! Pure: the caller passes the time, so tests need no clock.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::RateLimit;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_second: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `None` when the limit is off (`messages_per_second = 0`). A `burst` of 0 means one
    /// second's worth of messages.
    pub fn new(limit: RateLimit, now: Instant) -> Option<Self> {
        if limit.messages_per_second == 0 {
            return None;
        }
        let per_second = f64::from(limit.messages_per_second);
        let capacity = if limit.burst == 0 {
            per_second
        } else {
            f64::from(limit.burst)
        };
        Some(Self {
            per_second,
            capacity,
            tokens: capacity,
            last: now,
        })
    }

    /// Takes one token for a message at `now`; `Err(wait)` says when one will be available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let t0 = Instant::now();
        let limit = RateLimit {
            messages_per_second: 10,
            burst: 3,
        };
        let mut bucket = TokenBucket::new(limit, t0).unwrap();
        for _ in 0..3 {
            assert_eq!(bucket.take(t0), Ok(()));
        }
        assert_eq!(bucket.take(t0), Err(Duration::from_millis(100)));
        let later = t0 + Duration::from_millis(50);
        let wait = bucket.take(later).unwrap_err();
        assert!((wait.as_secs_f64() - 0.05).abs() < 1e-9, "{wait:?}");
        assert_eq!(bucket.take(t0 + Duration::from_millis(100)), Ok(()));
        // Long idle refills only up to the burst.
        let idle = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(bucket.take(idle), Ok(()));
        }
        assert!(bucket.take(idle).is_err());
    }

    #[test]
    fn off_when_zero_and_burst_defaults_to_one_second() {
        let t0 = Instant::now();
        assert!(
            TokenBucket::new(
                RateLimit {
                    messages_per_second: 0,
                    burst: 5
                },
                t0
            )
            .is_none()
        );
        let mut b = TokenBucket::new(
            RateLimit {
                messages_per_second: 2,
                burst: 0,
            },
            t0,
        )
        .unwrap();
        assert_eq!((b.take(t0), b.take(t0)), (Ok(()), Ok(())));
        assert_eq!(b.take(t0), Err(Duration::from_millis(500)));
    }
}
