//! The custom resources: `Indexer` (a pool that builds indices onto shared storage) and
//! `MatchingIndex` (one label: how to build it and how to serve it). Group `kim.dev`, version
//! `v1alpha1`, namespaced. `crdgen` writes `crds/*.yaml` from these types.
// kube's derive takes one `printcolumn(...)` attribute per column, which clippy reads as duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Annotation whose value change triggers a rebuild of a MatchingIndex.
pub const REBUILD_ANNOTATION: &str = "kim.dev/rebuild";
/// Annotation naming a snapshot id to roll the label back to (see `kim-worker snapshot list`).
pub const ROLLBACK_ANNOTATION: &str = "kim.dev/rollback-to";

/// The API server's answer to a change of the served label.
const LABEL_IMMUTABLE: &str = "spec.label is immutable (it names the Redis stream and the index files): \
     create a new MatchingIndex for the new label and delete this one";

/// Setting or removing `spec.label` is allowed only when the served label stays the same
/// (`spec.label` absent means the object's name); a change of a set label is refused by the
/// field's own `self == oldSelf`.
const LABEL_KEPT_RULE: &str = "has(self.spec.label) == has(oldSelf.spec.label) || \
     (has(self.spec.label) ? self.spec.label : self.metadata.name) == \
     (has(oldSelf.spec.label) ? oldSelf.spec.label : oldSelf.metadata.name)";

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "kim.dev",
    version = "v1alpha1",
    kind = "Indexer",
    doc = "A pool that builds index snapshots onto one storage claim or bucket, for every MatchingIndex that names it.",
    namespaced,
    status = "IndexerStatus",
    shortname = "idx",
    category = "kim",
    printcolumn(name = "Claim", type_ = "string", json_path = ".status.storageClaim"),
    printcolumn(name = "Active", type_ = "integer", json_path = ".status.activeBuilds"),
    printcolumn(name = "Queued", type_ = "integer", json_path = ".status.queuedBuilds"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
/// How the Indexer builds: storage, concurrency, deadlines, resources and placement.
#[serde(rename_all = "camelCase")]
pub struct IndexerSpec {
    /// Worker image for build Jobs (default: the operator's --worker-image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Builds that may run at once across every MatchingIndex using this Indexer.
    #[serde(default = "one")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 64").message("maxConcurrentBuilds must be 1..64"))]
    pub max_concurrent_builds: i32,
    /// Where build Jobs write snapshots and matchers read them from: a storage claim, or
    /// S3-compatible object storage.
    pub storage: StorageSpec,
    /// Resources of each build container (default: none set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_resources: Option<ResourceRequirements>,
    /// Deadline of one build, as a duration ("90m", "2h").
    #[serde(default = "default_timeout")]
    pub build_timeout: String,
    /// Retries of a failed build before it is reported as failed (the Job's backoffLimit).
    #[serde(default = "two")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 10").message("retryLimit must be 0..10"))]
    pub retry_limit: i32,
    /// Snapshots kept per label, the live one included.
    #[serde(default = "three")]
    #[x_kube(validation = Rule::new("self >= 1").message("snapshotsToKeep must be at least 1"))]
    pub snapshots_to_keep: i32,
    /// Node placement of build Jobs, cleanup Jobs and matchers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<Scheduling>,
    /// A pool of matchers (Deployment `<indexer>-pool`) serving every MatchingIndex of this
    /// Indexer that sets `matcher.pool`, loading and dropping labels as they join and leave:
    /// many small labels without a Deployment each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolSpec>,
}

/// The matcher pool of an Indexer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolSpec {
    /// Pool pods; each serves every label in the pool (default 2).
    #[serde(default = "two")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 1000").message("pool.replicas must be 0..1000"))]
    pub replicas: i32,
    /// The Redis the pool's matchers read: a MatchingIndex joins the pool only with this same
    /// `redis` (URL or Secret, key prefix, auth and TLS).
    pub redis: RedisSpec,
    /// Resources of each pool container (default: none set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Search threads per pool matcher (default: the container's cores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<i32>,
}

/// Where index files live: an existing claim, one the operator creates, or object storage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.existingClaim) ? 1 : 0) + (has(self.size) ? 1 : 0) + (has(self.s3) ? 1 : 0) == 1").message("set exactly one of storage.existingClaim, storage.size and storage.s3"))]
pub struct StorageSpec {
    /// A PersistentVolumeClaim in the Indexer's namespace to use as is (set this or size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing_claim: Option<String>,
    /// Size of a claim the operator creates, named `<indexer>-storage`, e.g. "20Gi" (set this or
    /// existingClaim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Storage class of a claim the operator creates (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Access modes of a claim the operator creates (default ["ReadWriteMany"]: builders write
    /// while matchers on other nodes read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<String>,
    /// S3-compatible object storage instead of a claim (set this, existingClaim or size): build
    /// Jobs upload snapshots, matchers download them into an emptyDir cache. No claim is
    /// created or mounted, so no ReadWriteMany volume is needed; a MatchingIndex whose source
    /// is a file then names the claim holding it in source.claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Storage>,
}

/// An S3-compatible bucket and how to reach it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Storage {
    /// Bucket and key prefix, "s3://bucket/prefix"; snapshots live under
    /// <prefix>/<namespace>/<label>/.
    pub url: String,
    /// Endpoint URL of the S3 API, e.g. "https://minio.storage.svc:9000" (default: AWS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region (default: us-east-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Allow a plain http:// endpoint (refused otherwise).
    #[serde(default)]
    pub allow_http: bool,
    /// Secret in the Indexer's namespace with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY
    /// (and optionally AWS_SESSION_TOKEN), passed to build Jobs, cleanup Jobs and matchers as
    /// environment variables. Unset: the pods' own AWS environment (e.g. web identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// Secret in the Indexer's namespace whose key ca.crt holds the PEM CA certificates
    /// trusted for the endpoint, besides the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<String>,
    /// Size limit of each matcher's and build's emptyDir snapshot cache, e.g. "20Gi" (default:
    /// none); a matcher needs room for two snapshots of its label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_size_limit: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scheduling {
    /// Node labels the pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node and pod affinity of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
/// What the Indexer is doing: its claim, and the builds running and waiting.
pub struct IndexerStatus {
    /// `Ready`: the storage claim exists (or object storage is configured).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The claim build Jobs and matchers mount (none on object storage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_claim: Option<String>,
    /// Number of build Jobs running now.
    #[serde(default)]
    pub active_builds: i32,
    /// Number of MatchingIndexes waiting for a build slot.
    #[serde(default)]
    pub queued_builds: i32,
    /// Build Jobs running now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<String>,
    /// MatchingIndexes waiting for a build slot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queued: Vec<String>,
    /// The matcher pool, with `spec.pool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolStatus>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    /// The pool's Deployment.
    pub deployment: String,
    /// Pool pods ready.
    pub ready: i32,
    /// Pool pods wanted (`spec.pool.replicas`).
    pub desired: i32,
    /// MatchingIndexes that set `matcher.pool` (each served once it has a snapshot).
    pub labels: i32,
}

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kim.dev",
    version = "v1alpha1",
    kind = "MatchingIndex",
    doc = "One label (matching list): where its descriptors come from, how its index is built, and the matchers that serve it through Redis.",
    namespaced,
    status = "MatchingIndexStatus",
    shortname = "mi",
    category = "kim",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Ready", type_ = "string", json_path = r#".status.conditions[?(@.type=="Ready")].status"#),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.reason"),
    printcolumn(name = "Vectors", type_ = "integer", json_path = ".status.currentSnapshot.vectors"),
    printcolumn(name = "Snapshot", type_ = "string", json_path = ".status.currentSnapshot.id"),
    printcolumn(name = "Matchers", type_ = "string", json_path = ".status.matchers.summary"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    scale(
        spec_replicas_path = ".spec.matcher.replicas",
        status_replicas_path = ".status.matchers.ready",
        label_selector_path = ".status.matcherSelector"
    ),
    validation = Rule::new(LABEL_KEPT_RULE).message(LABEL_IMMUTABLE)
)]
/// The label, its descriptors and source, how to build its index and how to serve it.
#[serde(rename_all = "camelCase")]
pub struct MatchingIndexSpec {
    /// Label clients match against (default: the object's name). Immutable: the label names the
    /// Redis stream and the files; create a new MatchingIndex to serve another label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$')").message("label must be [A-Za-z0-9._-], starting with a letter or digit"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message(LABEL_IMMUTABLE))]
    pub label: Option<String>,
    /// The Indexer (in the same namespace) that builds this index.
    pub indexer_ref: IndexerRef,
    /// What the descriptors are; requests with another version are refused.
    pub descriptor: DescriptorSpec,
    /// Where the descriptors come from.
    pub source: SourceSpec,
    /// Parameters of the HNSW graph.
    #[serde(default)]
    pub hnsw: HnswSpec,
    /// When to rebuild besides a change of the build-relevant spec.
    #[serde(default)]
    pub rebuild: RebuildSpec,
    /// Partitions of the label by a stable hash of the id (1 = unsharded). Each shard is built
    /// by one index of an Indexed build Job (at most the Indexer's maxConcurrentBuilds at once)
    /// and served by its own matcher Deployment; every shard answers every request and the
    /// matchers merge the answers into one reply. Changing it rebuilds the label.
    #[serde(default = "one")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1024").message("shards must be 1..1024"))]
    pub shards: i32,
    /// The matcher Deployment serving the label from Redis (one per shard).
    #[serde(default)]
    pub matcher: MatcherSpec,
    /// Optional Vald-compatible online path (agents and a gateway) for this index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<OnlineSpec>,
    /// The Redis matchers and clients meet in.
    pub redis: RedisSpec,
    /// What deleting this MatchingIndex removes besides its Deployments, StatefulSets, Jobs and
    /// Services: Delete also removes the label's Redis stream and registry keys, its index files
    /// (a cleanup Job on the Indexer's claim) and the online agents' claims; Retain keeps all
    /// three, e.g. to recreate the MatchingIndex on the same data.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Delete,
    Retain,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
pub struct IndexerRef {
    /// Name of the Indexer.
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    U8,
    I8,
    F16,
    F32,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Cosine,
    Dot,
    L2,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DescriptorSpec {
    /// Descriptor version requests must carry (LUNA face descriptors: 54–65).
    #[x_kube(validation = Rule::new("self >= 0").message("version must not be negative"))]
    pub version: i64,
    /// Values per descriptor (the source file must have exactly this many columns).
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65536").message("dimensions must be 1..65536"))]
    pub dimensions: i32,
    /// How each value is stored: u8 (LUNA descriptors), i8, f16 or f32.
    pub encoding: Encoding,
    /// Metric: cosine, dot (inner product) or l2 (Euclidean); answers carry a similarity in [0, 1],
    /// higher is closer.
    pub metric: Metric,
}

/// Where descriptors come from. Exactly one of `path` (a file in a claim) or `agents`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.path) != (has(self.agents) && self.agents)").message("set source.path or source.agents: true"))]
pub struct SourceSpec {
    /// Claim holding the file (default: the Indexer's storage claim; required when the
    /// Indexer stores snapshots in object storage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// Path inside the claim: .npy, .fvecs or .kimv.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Ids file inside the same claim, one per line (default: row numbers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids_path: Option<String>,
    /// Read vectors from this index's online agents instead of a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<bool>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HnswSpec {
    /// Links per node on the upper layers (twice as many on layer 0); more raise recall and memory.
    #[serde(default = "default_m")]
    #[x_kube(validation = Rule::new("self >= 2 && self <= 128").message("hnsw.m must be 2..128"))]
    pub m: i32,
    /// Beam width while building; higher gives a better graph and a slower build.
    #[serde(default = "default_ef_construction")]
    #[x_kube(validation = Rule::new("self >= 2 && self <= 4096").message("hnsw.efConstruction must be 2..4096"))]
    pub ef_construction: i32,
    /// Beam width of a search (at least the request's limit is used); higher raises recall and
    /// latency. A search-time setting: changing it restarts the matchers, it does not rebuild.
    #[serde(default = "default_ef_search")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 4096").message("hnsw.efSearch must be 1..4096"))]
    pub ef_search: i32,
}

impl Default for HnswSpec {
    fn default() -> Self {
        HnswSpec { m: default_m(), ef_construction: default_ef_construction(), ef_search: default_ef_search() }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebuildSpec {
    /// Rebuild this often, as a duration ("24h"); absent = only on change or annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Between builds, bring the served snapshot up to date with the source in small deltas
    /// (`kim-worker refresh`): ids added to the source become matchable, and ids removed from
    /// it stop being returned, within one interval and without reloading the matchers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshSpec>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefreshSpec {
    /// How often the source is compared with what is served, as a duration ("1m", at least
    /// "10s").
    pub interval: String,
    /// Rebuild instead of writing a delta once the rows added and removed since the last build
    /// would pass this fraction of the snapshot (0.05 = 5 %; 0 < maxTail ≤ 1).
    #[serde(default = "five_percent")]
    pub max_tail: f64,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MatcherSpec {
    /// Matcher pods; each serves every request of the label (they share the stream's consumer
    /// group). Also set by `kubectl scale matchingindex NAME --replicas=N`.
    #[serde(default = "one")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 1000").message("matcher.replicas must be 0..1000"))]
    pub replicas: i32,
    /// Resources of each matcher container (default: none set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Search threads per matcher (default: the container's cores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<i32>,
    /// Scale the matchers on the label's stream backlog instead of a fixed `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// Served by the Indexer's matcher pool (`spec.pool` of the Indexer) instead of a
    /// Deployment of its own; `replicas`, `resources`, `threads` and `autoscaling` are then the
    /// pool's, and the label searches with the efSearch it was built with.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pool: bool,
}

impl Default for MatcherSpec {
    fn default() -> Self {
        MatcherSpec { replicas: 1, resources: None, threads: None, autoscaling: None, pool: false }
    }
}

/// Backlog autoscaling of the matcher Deployment. The backlog is the matchers' consumer group's
/// lag (requests not yet read) plus its pending entries (read, not yet answered); the operator
/// wants `ceil(backlog / targetBacklog)` matchers within `minReplicas..maxReplicas`, scales up at
/// once and down only after `cooldown` without a scale change.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not exceed maxReplicas"))]
pub struct AutoscalingSpec {
    /// Fewest matchers, also with no backlog (default 1).
    #[serde(default = "one")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1000").message("autoscaling.minReplicas must be 1..1000"))]
    pub min_replicas: i32,
    /// Most matchers.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1000").message("autoscaling.maxReplicas must be 1..1000"))]
    pub max_replicas: i32,
    /// Backlog one matcher is expected to carry (default 100 requests).
    #[serde(default = "hundred")]
    #[x_kube(validation = Rule::new("self >= 1").message("autoscaling.targetBacklog must be at least 1"))]
    pub target_backlog: i64,
    /// How long after a scale change the matchers may be scaled down, as a duration (default "5m").
    #[serde(default = "five_minutes")]
    pub cooldown: String,
    /// Emit a KEDA ScaledObject (redis-streams scaler on the group's lag) and let KEDA scale
    /// the Deployment, for clusters that run KEDA; the operator then leaves `replicas` alone.
    #[serde(default)]
    pub keda: bool,
}

/// Optional Vald-style online path: agents + Filter gateway.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OnlineSpec {
    /// Agent pods (StatefulSet `<name>-agent`), each with its own claim.
    #[serde(default = "one")]
    pub agents: i32,
    /// Agents each object is written to (1..agents).
    #[serde(default = "one")]
    pub replicas: i32,
    /// Size of each agent's claim.
    #[serde(default = "default_agent_storage")]
    pub agent_storage: String,
    /// Gateway pods (Deployment `<name>-gateway`).
    #[serde(default = "one")]
    pub gateway_replicas: i32,
    /// Default vectorizer (host:port) for requests that name none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vectorizer: Option<String>,
    /// Ingress filter services (host:port) applied to every request before its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_filters: Vec<String>,
    /// Egress filter services (host:port) applied to every answer before the request's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_filters: Vec<String>,
    /// gRPC TLS of agents and gateway (plaintext when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<OnlineTls>,
    /// Resources of each agent container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_resources: Option<ResourceRequirements>,
    /// Where agents run (default: the Indexer's scheduling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_scheduling: Option<Scheduling>,
    /// Resources of each gateway container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_resources: Option<ResourceRequirements>,
    /// Where gateway replicas run (default: the Indexer's scheduling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_scheduling: Option<Scheduling>,
}

/// TLS of the online path from Secrets in the MatchingIndex's namespace, each with the keys
/// `tls.crt`, `tls.key` and `ca.crt` (as cert-manager writes them).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OnlineTls {
    /// Agents and gateway serve TLS only with this Secret's certificate; its `ca.crt` is what
    /// the gateway and build Jobs trust for agents, and (with `clientSecretName`) what client
    /// certificates must chain to. The agents' certificate must name `agentServerName`.
    pub server_secret_name: String,
    /// Client certificate of the gateway and build Jobs; set, agents and gateway require a
    /// client certificate (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_name: Option<String>,
    /// Name checked in the agents' certificates (default `<name>-agent.<namespace>.svc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_server_name: Option<String>,
}

/// Redis used by matchers: a URL, or a key of a Secret holding it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.url) != has(self.secretRef)").message("set exactly one of redis.url and redis.secretRef"))]
pub struct RedisSpec {
    /// redis://, rediss:// or redis+sentinel:// URL (set this or secretRef).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A key of a Secret in the same namespace holding the URL (set this or url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// Prefix of stream and registry keys (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// ACL user and password from a Secret, handed to matchers as environment variables from
    /// the Secret (never in arguments); the operator's cleanup reads the same Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RedisAuth>,
    /// TLS towards Redis (needs a rediss:// URL): the Secret is mounted into matchers; with it,
    /// matchers refuse plaintext URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RedisTls>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisAuth {
    /// Secret in the same namespace holding the user name and password.
    pub secret_name: String,
    /// Key of the ACL user name (absent in the Secret: the `default` user).
    #[serde(default = "default_username_key")]
    pub username_key: String,
    /// Key of the password.
    #[serde(default = "default_password_key")]
    pub password_key: String,
}

/// A Secret with `ca.crt` (trusted CA) and, for mutual TLS, `tls.crt` and `tls.key`, as
/// cert-manager writes them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisTls {
    /// Secret in the same namespace with `ca.crt` (and `tls.crt`, `tls.key`).
    pub secret_name: String,
    /// Present `tls.crt`/`tls.key` as client certificate (mutual TLS).
    #[serde(default)]
    pub client_certificate: bool,
}

fn default_username_key() -> String {
    "username".into()
}

fn default_password_key() -> String {
    "password".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    pub name: String,
    /// Key in the Secret.
    #[serde(default = "default_secret_key")]
    pub key: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
/// Where the MatchingIndex stands: phase, conditions, the snapshot served, the current build
/// and the matchers.
pub struct MatchingIndexStatus {
    /// Summary of the state: Pending, Queued, Building, Deploying, Rebuilding, Ready, Degraded or
    /// Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Why the phase is what it is, in one word (the Ready condition's reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// SpecValid, SecretsFound, Building, BuildFailed, Ready (and CleanupBlocked while deleting),
    /// each with a reason and a message.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The snapshot matchers serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_snapshot: Option<SnapshotStatus>,
    /// The build queued or running now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_build: Option<BuildStatus>,
    /// Matcher pods wanted and ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matchers: Option<MatchersStatus>,
    /// Label selector of the matcher pods (for the scale subresource, e.g. a
    /// HorizontalPodAutoscaler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matcher_selector: Option<String>,
    /// The rollback the kim.dev/rollback-to annotation asked for, and how it went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackStatus>,
    /// The backlog autoscaler's last reading and decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingStatus>,
    /// Consumer groups of a layout the label no longer serves (after a change of
    /// `spec.shards`), destroyed in Redis once that layout's matchers have stopped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_groups: Vec<String>,
    /// The refresh Job of the current refresh interval and what it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshStatus>,
    /// Matchers that rejected the snapshot CURRENT names (it failed verification on them) and
    /// serve an older intact one instead, as they report it in Redis.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected_snapshots: Vec<RejectedSnapshot>,
    /// The matcher pool (`<namespace>/<indexer>`) the label was added to, so it leaves the
    /// pool when `matcher.pool` is turned off or the MatchingIndex is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The online agents the gateways write to and read, and the rebalance that follows a
    /// change of `online.agents`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<OnlineStatus>,
}

/// Where the online path stands in a change of `online.agents`. A scale-up first lets the
/// gateways read the new agents, then makes them owners, then moves their objects to them; a
/// scale-down first stops writing to the leaving agents (still read), drains them, then stops
/// reading and removes them. Every read covers every agent a write may have reached.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OnlineStatus {
    /// Agents `<name>-agent-0 … agents-1` the gateways write to: the owners of objects.
    pub agents: i32,
    /// Agents the gateways read (at least `agents`): during a change also the ones joining
    /// or being drained. The agent StatefulSet runs this many.
    pub reading: i32,
    /// The rebalance after the last change of the owners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<RebalanceStatus>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebalanceStatus {
    /// The Job running `kim-worker rebalance`.
    pub job: String,
    /// Pending (waiting for the gateways to take the new set), Running, Succeeded or Failed.
    pub state: String,
    /// Owners it puts every object on.
    pub agents: i32,
    /// Agents it drains (read until it has emptied them).
    pub drain: i32,
    /// What it did (objects, copies written and removed) or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefreshStatus {
    /// The Job running `kim-worker refresh`.
    pub job: String,
    /// Running, Succeeded or Failed.
    pub state: String,
    /// What it did: the delta it wrote (rows added and removed, the tail after it), that the
    /// source was unchanged, the rebuild it ran instead and why, or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RejectedSnapshot {
    /// The matcher's id (its pod name, process id and a random suffix).
    pub matcher: String,
    /// The snapshot that failed verification on it.
    pub rejected: String,
    /// The older snapshot it serves instead.
    pub serving: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    /// Matchers the autoscaler wants.
    pub replicas: i32,
    /// Requests the matchers' consumer group has not read yet (its lag), at the last reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Requests read and not yet answered (the group's pending entries), at the last reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<i64>,
    /// When `replicas` last changed (RFC 3339); the cool-down counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// Why `replicas` is what it is, or why the backlog could not be read.
    pub message: String,
    /// The KEDA ScaledObjects the operator manages (with `autoscaling.keda`): one per matcher
    /// Deployment, so one per shard of a split label.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scaled_objects: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackStatus {
    /// The snapshot id the annotation names.
    pub to: String,
    /// The Job running `kim-worker snapshot rollback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Running, Succeeded or Failed.
    pub state: String,
    /// What happened, or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum Phase {
    /// Waiting for something outside this object (its Indexer).
    Pending,
    /// No snapshot yet; the first build waits for a slot of the Indexer.
    Queued,
    /// No snapshot yet; the first build runs.
    Building,
    /// A snapshot exists; matchers are starting.
    Deploying,
    /// Serving the current snapshot while a newer one is queued or building.
    Rebuilding,
    /// Serving a snapshot of the current spec with every matcher ready.
    Ready,
    /// Serving an older snapshot: the latest build failed.
    Degraded,
    /// Invalid spec, or the build failed with no snapshot to serve.
    Failed,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStatus {
    /// Snapshot id (its directory under the label's storage).
    pub id: String,
    /// Descriptors in the snapshot.
    pub vectors: i64,
    /// When the build finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_at: Option<String>,
    /// Seconds the build took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_seconds: Option<f64>,
    /// Digest of the build-relevant spec this snapshot was built from.
    pub build_hash: String,
    /// A sharded label's snapshot per shard (`id` and `vectors` above: shard 0's id and the sum).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardSnapshot>,
    /// Deltas the matchers apply on top of the snapshot (`kim-worker refresh`), as they report it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deltas: Option<i64>,
    /// Rows those deltas added, searched exactly beside the graph until the next build folds
    /// them in (of a split label: the largest shard's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail_rows: Option<i64>,
}

impl SnapshotStatus {
    /// How many shards the snapshot was built in (1: not split): the layout its matchers serve.
    pub fn layout(&self) -> i32 {
        i32::try_from(self.shards.len()).unwrap_or(i32::MAX).max(1)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardSnapshot {
    /// The shard (0-based).
    pub shard: i32,
    /// Its snapshot id, under `<label>@shard-<shard>-of-<shards>` on the storage.
    pub id: String,
    /// Descriptors in the shard.
    pub vectors: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildStatus {
    /// The build Job, once started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// When the build Job was created (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// Waiting for a slot of the Indexer.
    #[serde(default)]
    pub queued: bool,
    /// Digest of the build-relevant spec this build is for.
    pub build_hash: String,
    /// Human-readable state: "queued (2 builds running)", "running", ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MatchersStatus {
    /// Matcher pods wanted (spec.matcher.replicas once a snapshot exists, else 0).
    pub desired: i32,
    /// Matcher pods ready.
    pub ready: i32,
    /// "ready/desired", for `kubectl get mi`.
    pub summary: String,
}

fn one() -> i32 {
    1
}
fn five_percent() -> f64 {
    0.05
}
fn hundred() -> i64 {
    100
}
fn five_minutes() -> String {
    "5m".into()
}
fn two() -> i32 {
    2
}
fn three() -> i32 {
    3
}
fn default_timeout() -> String {
    "2h".into()
}
fn default_m() -> i32 {
    kim_api::build::DEFAULT_M as i32
}
fn default_ef_construction() -> i32 {
    kim_api::build::DEFAULT_EF_CONSTRUCTION as i32
}
fn default_ef_search() -> i32 {
    kim_api::build::DEFAULT_EF_SEARCH as i32
}
fn default_agent_storage() -> String {
    "10Gi".into()
}
fn default_secret_key() -> String {
    "url".into()
}

impl MatchingIndex {
    /// The label served: `spec.label` or the object's name.
    pub fn label(&self) -> String {
        self.spec.label.clone().unwrap_or_else(|| self.metadata.name.clone().unwrap_or_default())
    }

    /// The label selector of this index's matcher pods, as `status.matcherSelector` carries it
    /// for the scale subresource.
    pub fn matcher_selector(&self) -> String {
        format!(
            "{}={},{}=matcher",
            crate::build::LABEL_MI,
            self.metadata.name.as_deref().unwrap_or_default(),
            crate::build::LABEL_COMPONENT
        )
    }
}
