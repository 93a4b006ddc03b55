//! Pure builders: the objects the operator wants to exist, computed from the custom resources
//! alone, as typed Kubernetes objects. No I/O here, so every decision about shape is
//! unit-tested.

pub(crate) mod jobs;
pub mod keda;
mod matcher;
pub mod pod;
mod pool;
mod rollback;
mod storage;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;

pub use self::jobs::{build_job, cleanup_job, index_args, job_name, refresh_job, refresh_job_name};
pub(crate) use self::matcher::pdb;
pub use self::matcher::{
    match_args, matcher_deployment, matcher_name, matcher_pdb, shard_deployment_name, Shard, REDIS_TLS_MOUNT,
};
pub use self::pool::{pool_args, pool_id, pool_name, pool_object_selector, pool_objects};
pub use self::rollback::{rollback_args, rollback_job, rollback_job_name};
pub use self::storage::{
    indexer_pvc, object_storage, storage_args, storage_claim, storage_parts, storage_place, StorageParts, CACHE_MOUNT,
    S3_CA_MOUNT,
};
use crate::crd::{Encoding, HnswSpec, Indexer, MatchingIndex, Metric, REBUILD_ANNOTATION};

pub const MANAGER: &str = "kim-operator";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_MI: &str = "kim.dev/matching-index";
pub const LABEL_INDEXER: &str = "kim.dev/indexer";
pub const LABEL_COMPONENT: &str = "kim.dev/component";
pub const LABEL_HASH: &str = "kim.dev/build-hash";
/// The shard a matcher Deployment of a split label serves.
pub const LABEL_SHARD: &str = "kim.dev/shard";
/// How many shards the layout of a split label's matcher Deployment has.
pub const LABEL_SHARDS: &str = "kim.dev/shards";
pub const STORAGE_MOUNT: &str = "/storage";
pub const SOURCE_MOUNT: &str = "/source";
pub const MATCHER_PORT: i32 = 8080;

/// Settings of the operator that shape children.
#[derive(Clone, Debug)]
pub struct Defaults {
    pub worker_image: String,
    pub image_pull_policy: String,
}

pub fn labels(mi: &MatchingIndex, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.into(), MANAGER.into()),
        ("app.kubernetes.io/name".into(), "kim".into()),
        ("app.kubernetes.io/component".into(), component.into()),
        (LABEL_MI.into(), mi.name_any()),
        (LABEL_INDEXER.into(), mi.spec.indexer_ref.name.clone()),
        (LABEL_COMPONENT.into(), component.into()),
    ])
}

/// The labels a component's pods are selected by (stable across spec changes).
pub fn selector_labels(mi: &MatchingIndex, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_MI.into(), mi.name_any()), (LABEL_COMPONENT.into(), component.into())])
}

/// Label selector of every child the operator made for the MatchingIndex `name`.
pub fn children_selector(name: &str) -> String {
    format!("{LABEL_MI}={name},{LABEL_MANAGED_BY}={MANAGER}")
}

pub(crate) fn enc(e: Encoding) -> &'static str {
    match e {
        Encoding::U8 => "u8",
        Encoding::I8 => "i8",
        Encoding::F16 => "f16",
        Encoding::F32 => "f32",
    }
}

pub(crate) fn metric(m: Metric) -> &'static str {
    match m {
        Metric::Cosine => "cosine",
        Metric::Dot => "dot",
        Metric::L2 => "l2",
    }
}

/// Digest of everything that changes the built index, plus the manual trigger and the interval
/// epoch: a new value means a new build (and a new, deterministic Job name).
pub fn build_hash(mi: &MatchingIndex, interval_epoch: u64) -> String {
    let s = &mi.spec;
    let trigger = mi.annotations().get(REBUILD_ANNOTATION).cloned().unwrap_or_default();
    // efSearch is a search-time setting: the matchers take it from their arguments, so a
    // change rolls them (seconds) instead of rebuilding the graph (hours at scale). It enters
    // the digest as the default, which keeps the digests operators before this one computed
    // for every MatchingIndex with the default efSearch.
    let graph = HnswSpec { ef_search: HnswSpec::default().ef_search, ..s.hnsw.clone() };
    // Through a JSON value (object keys sorted) so the digest does not depend on field order.
    // The shard count enters only when the label is split, which keeps every unsharded digest.
    let parts = (mi.label(), &s.descriptor, &s.source, &graph, trigger, interval_epoch);
    let input = match s.shards {
        1 => serde_json::to_value(parts),
        n => serde_json::to_value((parts, n)),
    }
    .map(|v| v.to_string())
    .unwrap_or_default();
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(input.as_bytes()))
}

pub(crate) fn worker_image(ix: &Indexer, d: &Defaults) -> String {
    ix.spec.image.clone().unwrap_or_else(|| d.worker_image.clone())
}

/// The long-lived children a MatchingIndex wants now; build and cleanup Jobs are decided by
/// the build and cleanup steps.
#[derive(Clone, Debug, Default)]
pub struct Children {
    pub services: Vec<Service>,
    pub stateful_sets: Vec<StatefulSet>,
    pub deployments: Vec<Deployment>,
    pub disruption_budgets: Vec<PodDisruptionBudget>,
    /// Deployments left as they are, neither applied nor deleted: the matchers of the layout
    /// served before a change of `spec.shards`, while the new layout's start.
    pub draining: Vec<String>,
}

/// How many matchers a MatchingIndex runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Matchers {
    /// None before a snapshot exists.
    NotYet,
    /// This many: the spec's count, or the backlog autoscaler's.
    Fixed(i32),
    /// As many as KEDA's autoscaler says: the Deployment's `replicas` is left to it.
    External,
    /// The Indexer's pool serves the label: no matchers of its own.
    Pool,
}

/// Online agents, their Services and gateway with `spec.online`; matchers once a snapshot
/// exists, one Deployment per shard of the layout it was built in (`shards`). Anything of this
/// MatchingIndex not in the result is to be deleted.
/// `agents`: which agents the gateways use and how many run (see [`crate::online::AgentSet`]).
pub fn children(
    mi: &MatchingIndex,
    ix: &Indexer,
    d: &Defaults,
    matchers: Matchers,
    shards: i32,
    agents: crate::online::AgentSet,
) -> Children {
    let mut c = Children::default();
    if mi.spec.online.is_some() {
        c.services = vec![crate::online::agent_service(mi), crate::online::gateway_service(mi)];
        c.stateful_sets.push(crate::online::agent_statefulset(mi, ix, d, agents));
        c.deployments.push(crate::online::gateway_deployment(mi, ix, d, agents));
        c.disruption_budgets.push(crate::online::agent_pdb(mi));
    }
    let replicas = match matchers {
        Matchers::NotYet | Matchers::Pool => return c,
        Matchers::Fixed(n) => Some(n),
        Matchers::External => None,
    };
    c.deployments.extend(Shard::all(shards).map(|shard| matcher_deployment(mi, ix, d, shard, replicas)));
    c.disruption_budgets.push(matcher_pdb(mi));
    c
}
