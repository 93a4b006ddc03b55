//! Per-MatchingIndex gauges: what `kubectl get mi` shows, for dashboards and alerts. The
//! reconciler reports each MatchingIndex's status ([`IndexGauges::observe`]) and each Indexer's
//! queue ([`IndexGauges::observe_queue`]); the finalizer forgets a deleted one.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::crd::MatchingIndexStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Index {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IndexPhase {
    pub namespace: String,
    pub name: String,
    pub phase: String,
}

/// What is remembered per MatchingIndex between reports.
#[derive(Default)]
struct Known {
    /// Phase series currently at 1, removed when the phase changes.
    phase: HashMap<Index, String>,
    /// Unix seconds the current snapshot was built, turned into an age at scrape time.
    built: HashMap<Index, i64>,
    /// Queued MatchingIndexes per (namespace, Indexer), to reset those that left the queue.
    queues: HashMap<(String, String), Vec<String>>,
}

#[derive(Default)]
pub struct IndexGauges {
    phase: Family<IndexPhase, Gauge>,
    vectors: Family<Index, Gauge>,
    snapshot_age: Family<Index, Gauge>,
    matchers_ready: Family<Index, Gauge>,
    matchers_desired: Family<Index, Gauge>,
    queue_position: Family<Index, Gauge>,
    online_agents: Family<Index, Gauge>,
    online_agents_read: Family<Index, Gauge>,
    known: Mutex<Known>,
}

fn index(namespace: &str, name: &str) -> Index {
    Index { namespace: namespace.into(), name: name.into() }
}

impl IndexGauges {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("matchingindex");
        r.register("phase", "1 for the MatchingIndex's current phase (label phase)", self.phase.clone());
        r.register("vectors", "Descriptors in the snapshot being served", self.vectors.clone());
        r.register(
            "snapshot_age_seconds",
            "Seconds since the snapshot being served was built",
            self.snapshot_age.clone(),
        );
        r.register("matchers_ready", "Matcher pods ready", self.matchers_ready.clone());
        r.register("matchers_desired", "Matcher pods wanted", self.matchers_desired.clone());
        r.register(
            "online_agents",
            "Online agents the gateways write to (status.online.agents)",
            self.online_agents.clone(),
        );
        r.register(
            "online_agents_read",
            "Online agents the gateways read: more than online_agents while agents join or drain",
            self.online_agents_read.clone(),
        );
        r.register(
            "queue_position",
            "Position in its Indexer's build queue (1 = next), 0 when not queued",
            self.queue_position.clone(),
        );
    }

    /// Records a MatchingIndex's status as just written.
    pub fn observe(&self, namespace: &str, name: &str, st: &MatchingIndexStatus) {
        let key = index(namespace, name);
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let phase = st.phase.and_then(|p| serde_json::to_value(p).ok()).and_then(|v| v.as_str().map(String::from));
        let old = known.phase.remove(&key);
        if let Some(old) = old.filter(|o| Some(o) != phase.as_ref()) {
            self.phase.remove(&IndexPhase { namespace: namespace.into(), name: name.into(), phase: old });
        }
        if let Some(p) = phase {
            self.phase
                .get_or_create(&IndexPhase { namespace: namespace.into(), name: name.into(), phase: p.clone() })
                .set(1);
            known.phase.insert(key.clone(), p);
        }
        let snap = st.current_snapshot.as_ref();
        self.vectors.get_or_create(&key).set(snap.map_or(0, |s| s.vectors));
        let built =
            snap.and_then(|s| s.built_at.as_deref()).and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok());
        match built {
            Some(t) => {
                known.built.insert(key.clone(), t.as_second());
            }
            None => {
                known.built.remove(&key);
                self.snapshot_age.remove(&key);
            }
        }
        let m = st.matchers.as_ref();
        self.matchers_ready.get_or_create(&key).set(m.map_or(0, |m| m.ready.into()));
        self.matchers_desired.get_or_create(&key).set(m.map_or(0, |m| m.desired.into()));
        match &st.online {
            Some(o) => {
                self.online_agents.get_or_create(&key).set(o.agents.into());
                self.online_agents_read.get_or_create(&key).set(o.reading.into());
            }
            None => {
                self.online_agents.remove(&key);
                self.online_agents_read.remove(&key);
            }
        }
        // Present (0) from the first report; observe_queue sets the position.
        let _ = self.queue_position.get_or_create(&key);
    }

    /// Records an Indexer's queue (MatchingIndex names, next first); those that left it go to 0.
    pub fn observe_queue(&self, namespace: &str, indexer: &str, queued: &[String]) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let before = known.queues.insert((namespace.into(), indexer.into()), queued.to_vec()).unwrap_or_default();
        for name in before.iter().filter(|n| !queued.contains(n)) {
            self.queue_position.get_or_create(&index(namespace, name)).set(0);
        }
        for (i, name) in queued.iter().enumerate() {
            self.queue_position.get_or_create(&index(namespace, name)).set(i as i64 + 1);
        }
    }

    /// Drops every series of a deleted MatchingIndex.
    pub fn forget(&self, namespace: &str, name: &str) {
        let key = index(namespace, name);
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = known.phase.remove(&key) {
            self.phase.remove(&IndexPhase { namespace: namespace.into(), name: name.into(), phase: p });
        }
        known.built.remove(&key);
        for ((ns, _), queue) in known.queues.iter_mut() {
            if ns == namespace {
                queue.retain(|n| n != name);
            }
        }
        for f in [
            &self.vectors,
            &self.snapshot_age,
            &self.matchers_ready,
            &self.matchers_desired,
            &self.queue_position,
            &self.online_agents,
            &self.online_agents_read,
        ] {
            f.remove(&key);
        }
    }

    /// Brings the snapshot ages up to `now` (unix seconds); called before each scrape.
    pub fn refresh_ages(&self, now: i64) {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        for (key, built) in &known.built {
            self.snapshot_age.get_or_create(key).set((now - built).max(0));
        }
    }
}
