//! Operator metrics: reconciles, errors, durations, builds started and finished, and gauges per
//! MatchingIndex (`index`).

mod index;

pub use index::IndexGauges;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildOutcome {
    pub outcome: String,
}

pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<Kind, Counter>,
    pub errors: Family<Kind, Counter>,
    pub duration: Family<Kind, Histogram>,
    pub builds: Family<BuildOutcome, Counter>,
    /// Phase, vectors, snapshot age, matchers and queue position of each MatchingIndex.
    pub index: IndexGauges,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kim_operator");
        let reconciles = Family::<Kind, Counter>::default();
        let errors = Family::<Kind, Counter>::default();
        let duration =
            Family::<Kind, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 14)));
        let builds = Family::<BuildOutcome, Counter>::default();
        registry.register("reconciles", "Reconciles run, by kind", reconciles.clone());
        registry.register("reconcile_errors", "Reconciles that failed, by kind", errors.clone());
        registry.register("reconcile_duration_seconds", "Reconcile duration, by kind", duration.clone());
        registry.register("builds", "Build Jobs by outcome (started, succeeded, failed, queued)", builds.clone());
        let index = IndexGauges::default();
        index.register(&mut registry);
        Metrics { registry, reconciles, errors, duration, builds, index }
    }
}

impl Metrics {
    pub fn build(&self, outcome: &str) {
        self.builds.get_or_create(&BuildOutcome { outcome: outcome.into() }).inc();
    }
    pub fn encode(&self) -> String {
        self.index.refresh_ages(k8s_openapi::jiff::Timestamp::now().as_second());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encoding to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{MatchersStatus, MatchingIndexStatus, Phase, SnapshotStatus};

    fn status(phase: Phase, vectors: i64, built_at: Option<&str>, ready: i32) -> MatchingIndexStatus {
        MatchingIndexStatus {
            phase: Some(phase),
            current_snapshot: Some(SnapshotStatus {
                id: "s1".into(),
                vectors,
                built_at: built_at.map(String::from),
                build_hash: "h".into(),
                ..Default::default()
            }),
            matchers: Some(MatchersStatus { desired: 3, ready, summary: format!("{ready}/3") }),
            ..Default::default()
        }
    }

    fn lines(m: &Metrics, what: &str) -> Vec<String> {
        m.encode().lines().filter(|l| l.starts_with(what)).map(String::from).collect()
    }

    #[test]
    fn index_gauges_follow_status_queue_and_deletion() {
        let m = Metrics::default();
        m.index.observe("team", "faces", &status(Phase::Building, 0, None, 0));
        m.index.observe("team", "faces", &status(Phase::Ready, 2000, Some("2026-01-01T00:00:00Z"), 2));
        m.index.observe("team", "cars", &status(Phase::Pending, 0, None, 0));
        m.index.observe_queue("team", "pool", &["cars".into(), "faces".into()]);
        m.index.observe_queue("team", "pool", &["cars".into()]);
        let l = |name: &str| format!("{{namespace=\"team\",name=\"{name}\"");
        let mut phases = lines(&m, "kim_operator_matchingindex_phase{");
        phases.sort();
        assert_eq!(
            phases,
            vec![
                format!("kim_operator_matchingindex_phase{},phase=\"Pending\"}} 1", l("cars")),
                format!("kim_operator_matchingindex_phase{},phase=\"Ready\"}} 1", l("faces")),
            ],
            "one series per index, for its current phase"
        );
        let text = m.encode();
        assert!(text.contains(&format!("kim_operator_matchingindex_vectors{}}} 2000", l("faces"))), "{text}");
        assert!(text.contains(&format!("kim_operator_matchingindex_matchers_ready{}}} 2", l("faces"))), "{text}");
        assert!(text.contains(&format!("kim_operator_matchingindex_matchers_desired{}}} 3", l("faces"))), "{text}");
        assert!(text.contains(&format!("kim_operator_matchingindex_queue_position{}}} 1", l("cars"))), "{text}");
        assert!(text.contains(&format!("kim_operator_matchingindex_queue_position{}}} 0", l("faces"))), "{text}");
        let age = lines(&m, &format!("kim_operator_matchingindex_snapshot_age_seconds{}", l("faces")));
        let secs: i64 = age[0].rsplit(' ').next().unwrap().parse().unwrap();
        let since = k8s_openapi::jiff::Timestamp::now().as_second() - 1_767_225_600;
        assert!((since - 2..=since + 2).contains(&secs), "age {secs}, expected about {since}");
        assert!(lines(&m, &format!("kim_operator_matchingindex_snapshot_age_seconds{}", l("cars"))).is_empty());

        let mut changing = status(Phase::Ready, 2000, None, 2);
        changing.online = Some(crate::crd::OnlineStatus { agents: 3, reading: 4, rebalance: None });
        m.index.observe("team", "faces", &changing);
        let text = m.encode();
        assert!(text.contains(&format!("kim_operator_matchingindex_online_agents{}}} 3", l("faces"))), "{text}");
        assert!(text.contains(&format!("kim_operator_matchingindex_online_agents_read{}}} 4", l("faces"))), "{text}");
        assert!(!text.contains(&format!("kim_operator_matchingindex_online_agents{}", l("cars"))), "no online path");

        m.index.forget("team", "faces");
        let text = m.encode();
        assert!(!text.contains("name=\"faces\""), "{text}");
        assert!(text.contains("name=\"cars\""), "{text}");
    }
}
