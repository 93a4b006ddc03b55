//! Conditions and timestamps, kept in one place so every controller reports the same way.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub fn now() -> Time {
    Time(Timestamp::now())
}

pub fn now_string() -> String {
    Timestamp::now().to_string()
}

/// Sets condition `type_`, keeping its transition time when the status did not change.
pub fn set(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let message = message.into();
    match conds.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now();
            }
            c.status = status;
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conds.push(Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: now(),
        }),
    }
}

pub fn get<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

pub fn is_true(conds: &[Condition], type_: &str) -> bool {
    get(conds, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut c = Vec::new();
        set(&mut c, "Ready", false, "Building", "x", Some(1));
        let t0 = c[0].last_transition_time.clone();
        std::thread::sleep(std::time::Duration::from_millis(5));
        set(&mut c, "Ready", false, "Queued", "y", Some(2));
        assert_eq!(c[0].last_transition_time, t0);
        assert_eq!((c[0].reason.as_str(), c[0].observed_generation), ("Queued", Some(2)));
        set(&mut c, "Ready", true, "Ready", "z", Some(2));
        assert_ne!(c[0].last_transition_time, t0);
        assert!(is_true(&c, "Ready"));
        assert_eq!(c.len(), 1);
    }
}
