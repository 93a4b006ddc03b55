//! What the storage watcher remembers between ticks about the snapshot CURRENT names, per
//! label: one that failed verification is final until CURRENT changes; one that is not
//! readable yet (storage that shows changes late) is tried again with backoff until it loads.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Longest wait between two tries of a snapshot that is not readable yet.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

enum State {
    Rejected,
    Waiting { at: Instant, wait: Duration, tries: u32 },
}

#[derive(Default)]
pub struct Tries {
    by_label: HashMap<String, (String, State)>,
}

impl Tries {
    /// Whether `id` (what CURRENT names for `label`) should be tried now.
    pub fn due(&self, label: &str, id: &str, now: Instant) -> bool {
        match self.by_label.get(label) {
            Some((known, State::Rejected)) => known != id,
            Some((known, State::Waiting { at, .. })) => known != id || now >= *at,
            None => true,
        }
    }

    /// `id` failed verification: do not try it again until CURRENT names another.
    pub fn reject(&mut self, label: &str, id: &str) {
        self.by_label.insert(label.to_string(), (id.to_string(), State::Rejected));
    }

    /// `id` could not be read yet: schedule the next try (the first after `first`, then
    /// doubling up to [`MAX_WAIT`]). Returns how many tries have failed so far.
    pub fn later(&mut self, label: &str, id: &str, first: Duration, now: Instant) -> u32 {
        let (wait, tries) = match self.by_label.get(label) {
            Some((known, State::Waiting { wait, tries, .. })) if known == id => ((*wait * 2).min(MAX_WAIT), tries + 1),
            _ => (first.min(MAX_WAIT), 1),
        };
        self.by_label.insert(label.to_string(), (id.to_string(), State::Waiting { at: now + wait, wait, tries }));
        tries
    }

    /// The label's CURRENT loaded (or is served already): nothing to remember.
    pub fn forget(&mut self, label: &str) {
        self.by_label.remove(label);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_when_current_moves() {
        let mut t = Tries::default();
        let t0 = Instant::now();
        let step = Duration::from_millis(200);
        assert!(t.due("l", "a", t0));
        assert_eq!(t.later("l", "a", step, t0), 1);
        assert!(!t.due("l", "a", t0 + Duration::from_millis(199)));
        assert!(t.due("l", "a", t0 + step));
        assert!(t.due("l", "b", t0), "a new CURRENT is tried at once");
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..7 {
            t.later("l", "a", step, now);
            let next = (1..=10_000).map(|ms| now + Duration::from_millis(ms)).find(|&at| t.due("l", "a", at)).unwrap();
            waits.push((next - now).as_millis());
            now = next;
        }
        assert_eq!(waits, vec![400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(t.later("l", "b", step, now), 1, "another id starts over");
        t.reject("l", "b");
        assert!(!t.due("l", "b", now + Duration::from_secs(3600)), "a rejected id is final");
        assert!(t.due("l", "c", now));
        t.forget("l");
        assert!(t.due("l", "b", now));
    }
}
