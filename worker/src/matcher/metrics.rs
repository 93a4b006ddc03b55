//! Prometheus metrics of a matcher.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use kim_api::ErrorCode;

use super::Loaded;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    label: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LabelOnly {
    label: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SnapshotLabels {
    label: String,
    snapshot: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Histogram,
    batch: Histogram,
    vectors: Family<LabelOnly, Gauge>,
    snapshot: Family<SnapshotLabels, Gauge>,
    rejected: Family<LabelOnly, Counter>,
    fallback: Family<LabelOnly, Gauge>,
    ef_search: Family<LabelOnly, Gauge>,
    deltas: Family<LabelOnly, Gauge>,
    tail: Family<LabelOnly, Gauge>,
    tombstones: Family<LabelOnly, Gauge>,
    deltas_rejected: Family<LabelOnly, Counter>,
    shard_partials: Family<LabelOnly, Counter>,
    shard_merges: Family<LabelOnly, Counter>,
    shard_timeouts: Family<LabelOnly, Counter>,
    lag: Family<LabelOnly, Gauge>,
    pending: Family<LabelOnly, Gauge>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kim_matcher");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let batch = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        let vectors = Family::<LabelOnly, Gauge>::default();
        let snapshot = Family::<SnapshotLabels, Gauge>::default();
        let rejected = Family::<LabelOnly, Counter>::default();
        let fallback = Family::<LabelOnly, Gauge>::default();
        let ef_search = Family::<LabelOnly, Gauge>::default();
        registry.register("requests", "Requests answered, by label and status code", requests.clone());
        registry.register("request_latency_seconds", "Time from XADD to reply", latency.clone());
        registry.register("batch_size", "Entries handled per batch", batch.clone());
        registry.register("index_vectors", "Vectors in the served snapshot", vectors.clone());
        registry.register("snapshot_info", "Served snapshot id (value 1)", snapshot.clone());
        registry.register("snapshots_rejected", "Snapshots that failed verification", rejected.clone());
        registry.register(
            "snapshot_fallback",
            "1 while CURRENT failed verification and an older snapshot is served",
            fallback.clone(),
        );
        registry.register("ef_search", "HNSW search beam (efSearch) searches of the label use", ef_search.clone());
        let (deltas, tail, tombstones) = (Family::default(), Family::default(), Family::default());
        let deltas_rejected = Family::<LabelOnly, Counter>::default();
        registry.register("deltas_applied", "Deltas applied on top of the served snapshot", deltas.clone());
        registry.register("tail_vectors", "Rows added by deltas, scanned exactly beside the graph", tail.clone());
        registry.register("tombstones", "Rows removed by deltas, filtered out of searches", tombstones.clone());
        registry.register("deltas_rejected", "Deltas that failed verification", deltas_rejected.clone());
        let (shard_partials, shard_merges, shard_timeouts) = (Family::default(), Family::default(), Family::default());
        registry.register("shard_partials", "Partial answers this shard stored for merging", shard_partials.clone());
        registry.register("shard_merges", "Merged replies of every shard this matcher published", shard_merges.clone());
        registry.register(
            "shard_timeouts",
            "Requests of a split label this matcher answered 26309 because a shard missed the deadline",
            shard_timeouts.clone(),
        );
        let (lag, pending) = (Family::default(), Family::default());
        registry.register("stream_lag", "Requests on the label's stream its consumer group has not read", lag.clone());
        registry.register("stream_pending", "Requests the consumer group read and has not answered", pending.clone());
        Metrics {
            registry,
            requests,
            latency,
            batch,
            vectors,
            snapshot,
            rejected,
            fallback,
            ef_search,
            deltas,
            tail,
            tombstones,
            deltas_rejected,
            shard_partials,
            shard_merges,
            shard_timeouts,
            lag,
            pending,
        }
    }

    /// `n` requests of `label` answered with `status`.
    pub fn requests(&self, label: &str, status: u16, n: u64) {
        self.requests.get_or_create(&RequestLabels { label: label.to_string(), status }).inc_by(n);
    }
    /// One request's time from XADD to reply, when known.
    pub fn latency(&self, waited_secs: Option<f64>) {
        if let Some(s) = waited_secs {
            self.latency.observe(s);
        }
    }
    pub fn batch(&self, n: usize) {
        self.batch.observe(n as f64);
    }
    /// What `label` serves now: its snapshot and the deltas applied to it.
    pub fn set_snapshot(&self, label: &str, l: &Loaded) {
        let key = LabelOnly { label: label.into() };
        self.vectors.get_or_create(&key).set(l.tail.live(&l.index) as i64);
        self.snapshot.get_or_create(&SnapshotLabels { label: label.into(), snapshot: l.manifest.id.clone() }).set(1);
        self.deltas.get_or_create(&key).set(l.tail.deltas() as i64);
        self.tail.get_or_create(&key).set(l.tail.rows() as i64);
        self.tombstones.get_or_create(&key).set(l.tail.tombstones() as i64);
    }
    pub fn delta_rejected(&self, label: &str) {
        self.deltas_rejected.get_or_create(&LabelOnly { label: label.into() }).inc();
    }
    pub fn set_ef_search(&self, label: &str, ef: usize) {
        self.ef_search.get_or_create(&LabelOnly { label: label.into() }).set(ef as i64);
    }
    pub fn clear_snapshot(&self, label: &str, id: &str) {
        self.snapshot.remove(&SnapshotLabels { label: label.into(), snapshot: id.into() });
    }
    pub fn snapshot_rejected(&self, label: &str) {
        self.rejected.get_or_create(&LabelOnly { label: label.into() }).inc();
    }
    pub fn set_fallback(&self, label: &str, on: bool) {
        self.fallback.get_or_create(&LabelOnly { label: label.into() }).set(i64::from(on));
    }
    pub fn shard_partial(&self, label: &str) {
        self.shard_partials.get_or_create(&LabelOnly { label: label.into() }).inc();
    }
    pub fn shard_merge(&self, label: &str) {
        self.shard_merges.get_or_create(&LabelOnly { label: label.into() }).inc();
    }
    pub fn shard_timeout(&self, label: &str) {
        self.shard_timeouts.get_or_create(&LabelOnly { label: label.into() }).inc();
    }
    /// The label's consumer group backlog, as last read.
    pub fn set_backlog(&self, label: &str, lag: i64, pending: i64) {
        let key = LabelOnly { label: label.into() };
        self.lag.get_or_create(&key).set(lag);
        self.pending.get_or_create(&key).set(pending);
    }
    /// Removes every series of `label` (serving snapshot `snapshot`), so a label dropped from a
    /// pool leaves nothing stale behind. Callers that may race with the drop update a label's
    /// series through `Matcher::while_served`.
    pub fn forget_label(&self, label: &str, snapshot: &str) {
        let key = LabelOnly { label: label.into() };
        let statuses = ErrorCode::all().map(ErrorCode::status);
        for status in statuses.into_iter().chain([kim_api::STATUS_OK]) {
            self.requests.remove(&RequestLabels { label: label.into(), status });
        }
        self.clear_snapshot(label, snapshot);
        let gauges = [
            &self.vectors,
            &self.fallback,
            &self.ef_search,
            &self.deltas,
            &self.tail,
            &self.tombstones,
            &self.lag,
            &self.pending,
        ];
        for gauge in gauges {
            gauge.remove(&key);
        }
        let counters =
            [&self.rejected, &self.deltas_rejected, &self.shard_partials, &self.shard_merges, &self.shard_timeouts];
        for counter in counters {
            counter.remove(&key);
        }
    }
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encoding to a String");
        out
    }
}
