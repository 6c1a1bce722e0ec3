//! The local-overload detector: is this node the slow one?
//!
//! A node busy with AI work, or with more peers than its CPU serves, answers late and reads
//! answers late. Its own requests then time out and the answers look late or unrequested,
//! although every peer did its part. While the detector says "overloaded", reputation ignores
//! slowness reports ([`crate::reputation::Reputation::set_local_overload`]), so we never blame
//! peers for our own lag.
//!
//! ```text
//!  probe timer: lag = fired − due ──► observe(now, lag) ──► Some(true)  lag ≥ on_lag
//!                                                      └─► Some(false) lag < off_lag for `hold`
//! ```
//!
//! Time is passed in. The hold keeps the guard on after the lag ends: requests sent (or answers
//! read late) during the overload time out up to a request timeout later, and sync's stall
//! timeouts are longer still.

use std::time::{Duration, Instant};

/// Detector settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverloadConfig {
    /// Lag at or above which we are overloaded.
    pub on_lag: Duration,
    /// Lag below which a sample counts as calm.
    pub off_lag: Duration,
    /// Calm time after which the guard turns off.
    pub hold: Duration,
}

impl Default for OverloadConfig {
    fn default() -> Self {
        OverloadConfig {
            // A fifth of the relay's 1 s request timeout: a loop this late delays our reading
            // of answers enough to make honest peers look slow.
            on_lag: Duration::from_millis(200),
            // Normal scheduling jitter on a busy desktop stays well under this.
            off_lag: Duration::from_millis(50),
            // Longer than any request timeout (relay 1 s) plus sync's first stall timeouts.
            hold: Duration::from_secs(10),
        }
    }
}

/// Decides from lag samples whether we are overloaded, with hysteresis.
#[derive(Debug, Clone)]
pub struct OverloadDetector {
    config: OverloadConfig,
    overloaded: bool,
    /// Since when every sample was calm (while overloaded).
    calm_since: Option<Instant>,
    /// Times the guard turned on.
    episodes: u64,
}

impl OverloadDetector {
    /// A detector that starts calm.
    pub fn new(config: OverloadConfig) -> Self {
        OverloadDetector {
            config,
            overloaded: false,
            calm_since: None,
            episodes: 0,
        }
    }

    /// Whether we are overloaded now.
    pub fn is_overloaded(&self) -> bool {
        self.overloaded
    }

    /// How many times the guard turned on.
    pub fn episodes(&self) -> u64 {
        self.episodes
    }

    /// One lag sample taken at `now`; returns the new state when it changes.
    pub fn observe(&mut self, now: Instant, lag: Duration) -> Option<bool> {
        if lag >= self.config.on_lag {
            self.calm_since = None;
            if !self.overloaded {
                self.overloaded = true;
                self.episodes += 1;
                return Some(true);
            }
            return None;
        }
        if !self.overloaded {
            return None;
        }
        if lag >= self.config.off_lag {
            self.calm_since = None;
            return None;
        }
        let since = *self.calm_since.get_or_insert(now);
        if now.duration_since(since) >= self.config.hold {
            self.overloaded = false;
            self.calm_since = None;
            return Some(false);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn turns_on_at_once_and_off_only_after_a_calm_hold() {
        let mut d = OverloadDetector::new(OverloadConfig::default());
        let t0 = Instant::now();
        assert_eq!(d.observe(t0, 10 * MS), None);
        assert_eq!(d.observe(t0, 199 * MS), None, "just under the threshold");
        assert_eq!(d.observe(t0, 200 * MS), Some(true));
        assert_eq!(d.observe(t0, 900 * MS), None, "already on");
        // Calm samples for 9.9 s, then one middling sample (not calm, not overloaded) restarts
        // the hold.
        for i in 1..=99 {
            assert_eq!(d.observe(t0 + 100 * i * MS, 5 * MS), None);
        }
        assert_eq!(d.observe(t0 + 10_000 * MS, 60 * MS), None);
        assert!(d.is_overloaded());
        assert_eq!(d.observe(t0 + 10_100 * MS, 5 * MS), None);
        assert_eq!(d.observe(t0 + 20_099 * MS, 5 * MS), None);
        assert_eq!(d.observe(t0 + 20_100 * MS, 5 * MS), Some(false));
        assert!(!d.is_overloaded());
        assert_eq!(d.observe(t0 + 20_200 * MS, 300 * MS), Some(true));
        assert_eq!(d.episodes(), 2);
    }
}
