//! The command line of `kim-worker`. Public so the operator's tests can check that every
//! argument list it generates parses here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use kim_index::{Encoding, Metric};
pub use kim_runtime::LogFormat;

#[derive(Debug, Parser)]
#[command(name = "kim-worker", version, about = "kim data plane: build indices, serve matches, generate data")]
pub struct Cli {
    /// Log line format.
    #[arg(long, env = "KIM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate seeded face-like descriptors with probe sets and ground truth.
    Gen(GenArgs),
    /// Build an index snapshot for one label and make it current.
    Index(IndexArgs),
    /// Bring a label up to date with its source: write the changes since the live snapshot as a
    /// delta matchers apply without reloading, or rebuild once the changes pass --max-tail.
    Refresh(RefreshArgs),
    /// Serve matches for labels from Redis streams.
    Match(MatchArgs),
    /// Remove a label's snapshots from storage (run by the operator when a MatchingIndex goes).
    Clean(CleanArgs),
    /// List, roll back, export or import a label's snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Serve one online shard (Vald agent API) with a WAL on --data.
    Agent(crate::online::args::AgentArgs),
    /// Serve vald.v1.Filter: vectorize, place on agents, fan out searches.
    Filter(crate::online::args::FilterArgs),
    /// After the agent set changed: move every object to its owners under the new set.
    Rebalance(crate::online::args::RebalanceArgs),
    /// Serve filter.ingress.v1.Filter GenVector with a feature-hashing text/bytes embedding.
    Vectorize(crate::online::args::VectorizeArgs),
}

/// What a descriptor looks like; shared by `index` and `gen`.
#[derive(Debug, Clone, Args)]
pub struct DescriptorArgs {
    /// Descriptor version requests must carry.
    #[arg(long, env = "KIM_VERSION")]
    pub version: u32,
    #[arg(long, default_value_t = 512, env = "KIM_DIMENSIONS")]
    pub dimensions: usize,
    #[arg(long, default_value = "u8", env = "KIM_ENCODING")]
    pub encoding: Encoding,
    #[arg(long, default_value = "cosine", env = "KIM_METRIC")]
    pub metric: Metric,
    /// Zero point of u8 values (default 128).
    #[arg(long, env = "KIM_ZERO_POINT")]
    pub zero_point: Option<i32>,
    /// Integer encodings: real value = (stored − zero point) · scale (default 1/127).
    #[arg(long, env = "KIM_SCALE")]
    pub scale: Option<f32>,
}

impl DescriptorArgs {
    pub fn spec(&self) -> kim_index::DescriptorSpec {
        let mut s = kim_index::DescriptorSpec::new(self.version, self.dimensions, self.encoding, self.metric);
        if let Some(z) = self.zero_point {
            s.zero_point = z;
        }
        if let Some(x) = self.scale {
            s.scale = x;
        }
        s
    }
}

#[derive(Debug, Args)]
pub struct GenArgs {
    /// Output directory (created).
    #[arg(long, env = "KIM_OUT")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 10_000, env = "KIM_IDENTITIES")]
    pub identities: usize,
    /// Enrolled samples per identity.
    #[arg(long, default_value_t = 5, env = "KIM_SAMPLES")]
    pub samples: usize,
    #[arg(long, default_value_t = 512, env = "KIM_DIMENSIONS")]
    pub dimensions: usize,
    #[arg(long, default_value = "u8", env = "KIM_ENCODING")]
    pub encoding: Encoding,
    /// Dimension of the subspace identities vary in.
    #[arg(long, default_value_t = 48, env = "KIM_INTRINSIC")]
    pub intrinsic: usize,
    #[arg(long, default_value_t = 200, env = "KIM_MATED_PROBES")]
    pub mated_probes: usize,
    #[arg(long, default_value_t = 200, env = "KIM_NONMATED_PROBES")]
    pub nonmated_probes: usize,
    /// Exact neighbours written per probe (0 skips ground truth).
    #[arg(long, default_value_t = 10, env = "KIM_TRUTH_K")]
    pub truth_k: usize,
    /// Metric used for the ground truth.
    #[arg(long, default_value = "cosine", env = "KIM_METRIC")]
    pub metric: Metric,
    #[arg(long, default_value_t = 42, env = "KIM_SEED")]
    pub seed: u64,
}

#[derive(Debug, Clone, Args)]
pub struct IndexArgs {
    /// Label (matching list) the index serves.
    #[arg(long, env = "KIM_LABEL")]
    pub label: String,
    /// Namespace directory under the storage root.
    #[arg(long, env = "KIM_NAMESPACE", default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Descriptors: .npy (2-D), .fvecs or .kimv; a directory of such files (read in name
    /// order, ids from <stem>.ids beside each, else <stem>-<row>); or agents://HOST:PORT,... to
    /// read every object of the online agents (f32; ids are the object ids).
    #[arg(long, env = "KIM_SOURCE")]
    pub source: PathBuf,
    /// Ids of a single source file, one per line, in row order (default: row numbers).
    #[arg(long, env = "KIM_IDS")]
    pub ids: Option<PathBuf>,
    #[command(flatten)]
    pub descriptor: DescriptorArgs,
    #[command(flatten)]
    pub shard: ShardArgs,
    /// TLS towards the agents of an agents:// source.
    #[command(flatten)]
    pub agents_tls: crate::online::tls::ClientTls,
    #[arg(long, default_value_t = kim_api::build::DEFAULT_M, env = "KIM_M")]
    pub m: usize,
    #[arg(long, default_value_t = kim_api::build::DEFAULT_EF_CONSTRUCTION, env = "KIM_EF_CONSTRUCTION")]
    pub ef_construction: usize,
    /// Default search beam width stored with the snapshot.
    #[arg(long, default_value_t = kim_api::build::DEFAULT_EF_SEARCH, env = "KIM_EF_SEARCH")]
    pub ef_search: usize,
    /// Build threads (default: all cores).
    #[arg(long, env = "KIM_THREADS")]
    pub threads: Option<usize>,
    /// Snapshots to keep, the live one included.
    #[arg(long, default_value_t = 3, env = "KIM_KEEP")]
    pub keep: usize,
    /// Also write the one-line JSON summary (or error) here, for Kubernetes.
    #[arg(long, env = "KIM_TERMINATION_MESSAGE_PATH")]
    pub termination_message_path: Option<PathBuf>,
}

/// Which part of a sharded label a build or a matcher handles. Shard `I` of `N` holds the ids
/// whose xxh3-64 hash modulo `N` is `I`, stored as `<label>@shard-<I>-of-<N>`; `N = 1` is the
/// unsharded label.
#[derive(Debug, Clone, Copy, Args)]
pub struct ShardArgs {
    /// Shards the label is split into (1 = not split).
    #[arg(long, env = "KIM_SHARDS", default_value_t = 1)]
    pub shards: u32,
    /// The shard (0-based, below --shards) this process builds or serves.
    #[arg(long, env = "KIM_SHARD", default_value_t = 0)]
    pub shard: u32,
}

impl ShardArgs {
    pub fn sharded(&self) -> bool {
        self.shards > 1
    }
}

/// Where snapshots live; shared by every command that reads or writes them.
#[derive(Debug, Clone, Args)]
pub struct StorageArgs {
    /// Storage root: a directory shared by builds and matchers, or s3://bucket/prefix
    /// (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN).
    #[arg(long, env = "KIM_STORAGE")]
    pub storage: String,
    /// S3 endpoint URL (default: AWS, or AWS_ENDPOINT).
    #[arg(long, env = "KIM_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION or AWS_DEFAULT_REGION, else us-east-1).
    #[arg(long, env = "KIM_S3_REGION")]
    pub s3_region: Option<String>,
    /// Allow a plain http:// S3 endpoint.
    #[arg(long, env = "KIM_S3_ALLOW_HTTP")]
    pub s3_allow_http: bool,
    /// PEM bundle of CAs trusted for the S3 endpoint, besides the system's.
    #[arg(long, env = "KIM_S3_CA")]
    pub s3_ca: Option<PathBuf>,
    /// Object storage only: the local directory snapshots are downloaded into (matchers,
    /// snapshot commands) or built in before upload (builds); files whose checksums hold are
    /// reused, across restarts too (default: $TMPDIR/kim-cache/<bucket>/<prefix>).
    #[arg(long, env = "KIM_SNAPSHOT_CACHE")]
    pub cache_dir: Option<PathBuf>,
}

/// One label's snapshots on storage.
#[derive(Debug, Clone, Args)]
pub struct LabelArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    #[arg(long, env = "KIM_NAMESPACE", default_value = "default")]
    pub namespace: String,
    #[arg(long, env = "KIM_LABEL")]
    pub label: String,
}

#[derive(Debug, Args)]
pub struct RefreshArgs {
    /// The label, its source and the build settings a rebuild uses (as for `index`).
    #[command(flatten)]
    pub index: IndexArgs,
    /// Rebuild instead of writing a delta once the tail rows plus removed rows would pass this
    /// fraction of the snapshot's vectors (0.05 = 5 %).
    #[arg(long, env = "KIM_MAX_TAIL", default_value_t = 0.05)]
    pub max_tail: f64,
}

#[derive(Debug, Args)]
pub struct CleanArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    #[arg(long, env = "KIM_NAMESPACE", default_value = "default")]
    pub namespace: String,
    #[arg(long, env = "KIM_LABEL")]
    pub label: String,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// The label's snapshots, oldest first, with which is live and which is pinned (one JSON line).
    List(LabelArgs),
    /// Verify snapshot --to, pin it (garbage collection keeps it) and make it CURRENT.
    Rollback(RollbackArgs),
    /// Copy a verified snapshot (default: CURRENT's) into a new directory.
    Export(ExportArgs),
    /// Verify a snapshot directory written by `export`, store it and make it CURRENT.
    Import(ImportArgs),
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub target: LabelArgs,
    /// Snapshot id to make live (see `snapshot list`).
    #[arg(long, env = "KIM_TO")]
    pub to: String,
    /// Also write the one-line JSON outcome (or error) here, for Kubernetes.
    #[arg(long, env = "KIM_TERMINATION_MESSAGE_PATH")]
    pub termination_message_path: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub target: LabelArgs,
    /// Snapshot id (default: the one CURRENT names).
    #[arg(long, env = "KIM_ID")]
    pub id: Option<String>,
    /// Directory to create (must not exist or be empty).
    #[arg(long, env = "KIM_OUT")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Storage and namespace to import into; the label must be the snapshot's own.
    #[command(flatten)]
    pub target: LabelArgs,
    /// Directory written by `snapshot export`.
    #[arg(long, env = "KIM_FROM")]
    pub from: PathBuf,
    /// Store the snapshot without making it CURRENT.
    #[arg(long, env = "KIM_NO_PUBLISH")]
    pub no_publish: bool,
}

#[derive(Debug, Clone, Args)]
pub struct MatchArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    #[arg(long, env = "KIM_NAMESPACE", default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub redis: kim_redis::RedisArgs,
    /// Labels to serve (repeatable); default: every label found under the namespace.
    #[arg(long = "label", env = "KIM_LABEL", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Serve a pool of labels: the members of the Redis set `<prefix>kim:pool:{NAME}`
    /// (`kim_api::pool_key`), re-read every --reload-interval, so one Deployment serves many
    /// small labels the operator adds and removes without restarts. Members are loaded as their
    /// snapshots appear on storage; labels that leave the set are dropped.
    #[arg(long, env = "KIM_POOL", value_name = "NAME", conflicts_with_all = ["labels", "shards", "shard"])]
    pub pool: Option<String>,
    /// Prefix of stream and registry keys.
    #[arg(long, env = "KIM_KEY_PREFIX", default_value = "")]
    pub prefix: String,
    /// Consumer name in the group (default: host name, pid and a random suffix).
    #[arg(long, env = "KIM_MATCHER_ID")]
    pub matcher_id: Option<String>,
    /// Most entries read per batch.
    #[arg(long, default_value_t = 256, env = "KIM_BATCH")]
    pub batch: usize,
    /// How long one blocking read waits for entries.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "500ms", env = "KIM_BLOCK")]
    pub block: Duration,
    /// Entries pending this long with another consumer are taken over.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s", env = "KIM_CLAIM_IDLE")]
    pub claim_idle: Duration,
    /// How often to look for abandoned entries.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s", env = "KIM_CLAIM_INTERVAL")]
    pub claim_interval: Duration,
    /// TTL of label registry keys (refreshed every third of it).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s", env = "KIM_LABEL_TTL")]
    pub label_ttl: Duration,
    /// How often to check storage for new snapshots and labels.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s", env = "KIM_RELOAD_INTERVAL")]
    pub reload_interval: Duration,
    /// Search threads (default: all cores).
    #[arg(long, env = "KIM_THREADS")]
    pub threads: Option<usize>,
    /// HNSW search beam for every label served (default: the efSearch each snapshot was built
    /// with). A search-time setting: changing it needs no rebuild.
    #[arg(long, env = "KIM_EF_SEARCH", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub ef_search: Option<u32>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "KIM_HTTP", default_value = "0.0.0.0:8080")]
    pub http: SocketAddr,
    /// Serve one shard of each label: its snapshot `<label>@shard-<I>-of-<N>`, read in the
    /// consumer group `kim-matchers-<I>-of-<N>`, partial answers merged into one reply.
    #[command(flatten)]
    pub shard: ShardArgs,
    /// Sharded labels only: how long after it was added a request without a `deadline` field
    /// may wait for every shard before it is answered with 26309 (timeout).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s", env = "KIM_SHARD_DEADLINE")]
    pub shard_deadline: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_match(extra: &[&str]) -> Result<Cli, clap::Error> {
        let base = ["kim-worker", "match", "--storage", "/s", "--redis", "redis://127.0.0.1:6379"];
        Cli::try_parse_from(base.iter().chain(extra))
    }

    #[test]
    fn a_pool_excludes_fixed_labels_and_shards() {
        let Command::Match(a) = parse_match(&["--pool", "team/ix"]).unwrap().command else { panic!("not match") };
        assert_eq!((a.pool.as_deref(), a.labels.len()), (Some("team/ix"), 0));
        for extra in [&["--label", "a"][..], &["--shards", "2"], &["--shard", "1"]] {
            let e = parse_match(&[&["--pool", "p"][..], extra].concat()).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict, "{extra:?}");
        }
    }
}
