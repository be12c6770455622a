//! Rate limits per sprite: a token bucket per key (a sprite id), so one sprite's burst
//! never spends another's budget.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Up to `burst` actions at once, then `per_second` more each second, per key.
#[derive(Debug)]
pub struct Buckets {
    burst: f64,
    per_second: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Most keys kept: idle full buckets are dropped past this many.
const MAX_KEYS: usize = 4096;

impl Buckets {
    pub fn new(burst: u32, per_second: f64) -> Buckets {
        Buckets {
            burst: f64::from(burst.max(1)),
            per_second: per_second.max(f64::MIN_POSITIVE),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one action's token for `key` at `now`; if the bucket is empty, how long
    /// until it holds one.
    pub fn take_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            let (burst, rate) = (self.burst, self.per_second);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(key.to_string()).or_insert((self.burst, now));
        let refilled = (*tokens
            + now.saturating_duration_since(*at).as_secs_f64() * self.per_second)
            .min(self.burst);
        *at = now;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            Ok(())
        } else {
            *tokens = refilled;
            Err(Duration::from_secs_f64((1.0 - refilled) / self.per_second))
        }
    }

    pub fn take(&self, key: &str) -> Result<(), Duration> {
        self.take_at(key, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_per_key() {
        let buckets = Buckets::new(3, 0.5);
        let start = Instant::now();
        for _ in 0..3 {
            assert!(buckets.take_at("a", start).is_ok());
        }
        let wait = buckets.take_at("a", start).expect_err("empty");
        assert!((1.9..=2.1).contains(&wait.as_secs_f64()), "{wait:?}");
        assert!(
            buckets.take_at("b", start).is_ok(),
            "another key has its own"
        );
        assert!(buckets.take_at("a", start + Duration::from_secs(2)).is_ok());
        assert!(buckets
            .take_at("a", start + Duration::from_secs(2))
            .is_err());
    }
}
