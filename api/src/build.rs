//! The contract between `kim-worker index` and whoever runs it (the operator, scripts): the
//! HNSW defaults both sides assume, the rule every label follows, and the one-line report the
//! worker leaves as its result (stdout and the container's termination message).

use serde::{Deserialize, Serialize};

/// Links per node above layer 0 (layer 0 keeps twice as many).
pub const DEFAULT_M: usize = 16;
/// Beam width while building.
pub const DEFAULT_EF_CONSTRUCTION: usize = 200;
/// Beam width while searching, stored with each snapshot.
pub const DEFAULT_EF_SEARCH: usize = 96;

/// What a label (and a namespace, as a directory name) must look like, in words.
pub const LABEL_RULE: &str = "1-253 characters of [A-Za-z0-9._-], starting with a letter or digit";

/// Labels and namespaces become directory names and Redis key parts: 1-253 characters of
/// `[A-Za-z0-9._-]`, the first a letter or digit.
pub fn valid_label(s: &str) -> bool {
    s.len() <= 253
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A snapshot the worker built and made current.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Built {
    /// Snapshot id (a directory under the label's `snapshots/`).
    pub snapshot: String,
    #[serde(default)]
    pub label: String,
    #[serde(default)]
    pub namespace: String,
    pub vectors: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_seconds: Option<f64>,
    /// RFC 3339 time the snapshot was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// The worker's one-line result: `{"snapshot": ..., "vectors": ...}` or `{"error": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BuildReport {
    Built(Built),
    Failed { error: String },
}

impl BuildReport {
    /// Kubernetes keeps at most this many bytes of a termination message.
    pub const MAX_BYTES: usize = 4096;

    /// The JSON line, an error message shortened (at a character boundary) so the whole line
    /// fits in a termination message.
    pub fn to_line(&self) -> String {
        let line = serde_json::to_string(self).unwrap_or_default();
        match self {
            BuildReport::Failed { error } if line.len() > Self::MAX_BYTES => {
                let mut keep = error.len().saturating_sub(line.len() - Self::MAX_BYTES + 3);
                while keep > 0 && !error.is_char_boundary(keep) {
                    keep -= 1;
                }
                let short = BuildReport::Failed { error: format!("{}...", &error[..keep]) };
                serde_json::to_string(&short).unwrap_or_default()
            }
            _ => line,
        }
    }

    /// Reads a report line; anything else (a log line, an empty message) is `None`.
    pub fn parse(s: &str) -> Option<BuildReport> {
        serde_json::from_str(s.trim()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trips_and_reads_minimal_lines() {
        let b = BuildReport::Built(Built {
            snapshot: "s1".into(),
            label: "faces".into(),
            namespace: "team".into(),
            vectors: 7,
            build_seconds: Some(1.5),
            created_at: Some("2026-11-22T00:00:00Z".into()),
        });
        let line = b.to_line();
        assert!(line.contains(r#""buildSeconds":1.5"#) && line.contains(r#""createdAt""#), "{line}");
        assert_eq!(BuildReport::parse(&line), Some(b));
        match BuildReport::parse(r#"{"snapshot":"s","vectors":1}"#) {
            Some(BuildReport::Built(b)) => {
                assert_eq!((b.snapshot.as_str(), b.vectors, b.build_seconds), ("s", 1, None))
            }
            other => panic!("{other:?}"),
        }
        let f = BuildReport::parse(r#"{"error":"source has 128 dimensions"}"#);
        assert_eq!(f, Some(BuildReport::Failed { error: "source has 128 dimensions".into() }));
        assert_eq!(BuildReport::parse(r#"{"level":"INFO","msg":"x"}"#), None);
        assert_eq!(BuildReport::parse(""), None);
    }

    #[test]
    fn long_errors_fit_a_termination_message() {
        let long = BuildReport::Failed { error: "é".repeat(5000) };
        let line = long.to_line();
        assert!(line.len() <= BuildReport::MAX_BYTES, "{}", line.len());
        match BuildReport::parse(&line) {
            Some(BuildReport::Failed { error }) => assert!(error.ends_with("...") && error.starts_with('é')),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn label_rule() {
        for ok in ["faces", "a", "watch-list.v2", "A_b-9", &"x".repeat(253)] {
            assert!(valid_label(ok), "{ok}");
        }
        for bad in ["", ".hidden", "-flag", "_x", "a/b", "a b", "é", &"x".repeat(254)] {
            assert!(!valid_label(bad), "{bad}");
        }
    }
}
