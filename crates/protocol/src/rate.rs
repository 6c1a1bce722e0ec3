//! Per-peer token buckets: how many requests a peer may make per second, with a burst.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

/// Keys tracked at once; beyond it the fullest (least recently used) bucket is forgotten, which
/// only ever gives that key a fresh burst.
pub const MAX_BUCKETS: usize = 4_096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// A token bucket per key: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: f64,
    burst: f64,
    buckets: HashMap<K, Bucket>,
}

impl<K: Copy + Eq + Hash> RateLimiter<K> {
    /// `rate` per second, bursts of `burst`.
    pub fn new(rate: f64, burst: f64) -> Self {
        RateLimiter {
            rate: rate.max(0.0),
            burst: burst.max(1.0),
            buckets: HashMap::new(),
        }
    }

    /// Takes `cost` tokens for `key` if it has them.
    pub fn allow(&mut self, key: K, cost: f64, now: Instant) -> bool {
        if !self.buckets.contains_key(&key)
            && self.buckets.len() >= MAX_BUCKETS
            && let Some(oldest) = self
                .buckets
                .iter()
                .min_by_key(|(_, b)| b.updated)
                .map(|(k, _)| *k)
        {
            self.buckets.remove(&oldest);
        }
        let (rate, burst) = (self.rate, self.burst);
        let b = self.buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.updated = now;
        if b.tokens >= cost {
            b.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// Forgets `key` (peer disconnected).
    pub fn remove(&mut self, key: &K) {
        self.buckets.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_flood_gets_the_configured_rate_only() {
        let mut rl = RateLimiter::new(10.0, 5.0);
        let start = Instant::now();
        // 1,000 requests a second for 2 seconds.
        let allowed = (0..2_000)
            .filter(|i| rl.allow(1u8, 1.0, start + Duration::from_millis(*i)))
            .count();
        // Burst of 5 plus 10/s for 2 s.
        assert!((24..=26).contains(&allowed), "{allowed}");
        // Another key is unaffected.
        assert!(rl.allow(2u8, 1.0, start + Duration::from_secs(2)));
    }
}
