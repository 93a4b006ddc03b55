//! Capped, jittered exponential backoff for reconnect loops, so a fleet of matchers and clients
//! does not reconnect in lock-step after a Redis restart.

use std::hash::BuildHasher;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff { base, cap, next: base }
    }

    /// The delay before the next attempt: uniform in [d/2, d], d doubling up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.cap);
        d / 2 + d.mul_f64(unit_random() / 2.0)
    }

    /// Back to the base delay after a success.
    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

/// A number in [0, 1) from the std hasher's random keys: jitter needs no crypto-grade source.
fn unit_random() -> f64 {
    let h = std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_jittered_and_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut ceiling = Duration::from_millis(100);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d >= ceiling / 2 && d <= ceiling, "{d:?} outside [{:?}, {ceiling:?}]", ceiling / 2);
            seen.insert(d);
            ceiling = (ceiling * 2).min(Duration::from_secs(2));
        }
        assert!(seen.len() > 10, "jitter varies the delays: {seen:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
