//! Operator metrics: reconciles, errors, durations, builds started and finished.

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
        Metrics { registry, reconciles, errors, duration, builds }
    }
}

impl Metrics {
    pub fn build(&self, outcome: &str) {
        self.builds.get_or_create(&BuildOutcome { outcome: outcome.into() }).inc();
    }
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encoding to a String");
        out
    }
}
