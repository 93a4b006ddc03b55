//! Command-line arguments of `agent`, `filter` and `vectorize` (kept here; `cli.rs` only
//! names the subcommands).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use kim_index::Metric;

use super::limits;
use super::tls::{ClientTls, ServerTls};

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// Directory for the WAL and index snapshots (the agent's volume).
    #[arg(long, env = "KIM_AGENT_DATA")]
    pub data: PathBuf,
    /// gRPC address (vald.v1 Insert/Search/Update/Upsert/Remove/Object/Index/Flush, core.v1.Agent).
    #[arg(long, env = "KIM_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "KIM_HTTP", default_value = "0.0.0.0:8080")]
    pub http: SocketAddr,
    /// Length every vector must have.
    #[arg(long, env = "KIM_DIMENSIONS")]
    pub dimensions: usize,
    /// cosine (distance 1 − cos), dot (1 − a·b) or l2 (euclidean distance).
    #[arg(long, env = "KIM_METRIC", default_value = "cosine")]
    pub metric: Metric,
    /// Name reported in Object.Location (default: $HOSTNAME, else the listen address).
    #[arg(long, env = "KIM_AGENT_NAME")]
    pub name: Option<String>,
    /// Address reported in Object.Location.ips (default: the listen address's IP; set it to
    /// the pod IP when listening on 0.0.0.0).
    #[arg(long, env = "KIM_ADVERTISE_IP")]
    pub advertise_ip: Option<String>,
    /// HNSW links per node.
    #[arg(long, env = "KIM_HNSW_M", default_value_t = kim_api::build::DEFAULT_M)]
    pub m: usize,
    /// HNSW build beam width.
    #[arg(long, env = "KIM_HNSW_EF_CONSTRUCTION", default_value_t = kim_api::build::DEFAULT_EF_CONSTRUCTION)]
    pub ef_construction: usize,
    /// HNSW search beam width (at least the number of results asked for).
    #[arg(long, env = "KIM_HNSW_EF_SEARCH", default_value_t = kim_api::build::DEFAULT_EF_SEARCH)]
    pub ef_search: usize,
    /// How often to consider folding uncommitted writes into the graph and saving a
    /// snapshot (done when they are ≥ 5 % of the indexed rows).
    #[arg(long, env = "KIM_INDEX_INTERVAL", value_parser = humantime::parse_duration, default_value = "30s")]
    pub index_interval: Duration,
    /// Fold and save anyway once the last build is this old (bounds WAL replay).
    #[arg(long, env = "KIM_MAX_INDEX_AGE", value_parser = humantime::parse_duration, default_value = "10m")]
    pub max_index_age: Duration,
    /// Build at once when this many writes and removals wait (bounds brute-force search).
    #[arg(long, env = "KIM_MAX_UNCOMMITTED", default_value_t = 20_000)]
    pub max_uncommitted: usize,
    /// Threads of one index build (searches and writes keep running beside it).
    #[arg(long, env = "KIM_BUILD_THREADS", default_value_t = 1)]
    pub build_threads: usize,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub tls: ServerTls,
}

/// Request limits of `agent` and `filter` (see docs/online.md, "Limits").
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Most results one search may ask for (Search.Config.num); more is INVALID_ARGUMENT.
    #[arg(long, env = "KIM_MAX_NUM", default_value_t = limits::DEFAULT_MAX_NUM, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_num: u32,
    /// Largest gRPC message received or sent, in bytes (and asked of backends).
    #[arg(long, env = "KIM_MAX_MESSAGE_BYTES", default_value_t = limits::DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
}

impl LimitArgs {
    pub fn limits(&self) -> limits::Limits {
        limits::Limits { max_num: self.max_num }
    }
}

#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// gRPC address of vald.v1.Filter.
    #[arg(long, env = "KIM_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "KIM_HTTP", default_value = "0.0.0.0:8080")]
    pub http: SocketAddr,
    /// Agents as HOST:PORT,HOST:PORT,...
    #[arg(
        long,
        env = "KIM_AGENTS",
        value_delimiter = ',',
        required_unless_present = "agents_dns",
        conflicts_with = "agents_dns"
    )]
    pub agents: Vec<String>,
    /// Agents searched and asked for ids but never written (HOST:PORT, comma-separated):
    /// ones joining the set before a rebalance makes them owners, or leaving it until a
    /// rebalance has drained them. Only with --agents.
    #[arg(long, env = "KIM_READ_AGENTS", value_delimiter = ',', conflicts_with = "agents_dns")]
    pub read_agents: Vec<String>,
    /// A DNS name (HOST:PORT) whose addresses are the agents, re-resolved periodically
    /// (a headless Service). Ownership follows the addresses, so an agent that comes back
    /// with a new address owns other ids: run `kim-worker rebalance` after such changes.
    #[arg(long, env = "KIM_AGENTS_DNS")]
    pub agents_dns: Option<String>,
    /// How often --agents-dns is resolved again.
    #[arg(long, env = "KIM_DNS_REFRESH", value_parser = humantime::parse_duration, default_value = "5s")]
    pub dns_refresh: Duration,
    /// Agents each object is written to.
    #[arg(long, env = "KIM_REPLICAS", default_value_t = 2)]
    pub replicas: usize,
    /// Default vectorizer (HOST:PORT) for requests that name none.
    #[arg(long, env = "KIM_VECTORIZER")]
    pub vectorizer: Option<String>,
    /// Ingress FilterVector targets (HOST:PORT), applied before a request's own.
    #[arg(long, env = "KIM_INGRESS_FILTERS", value_delimiter = ',')]
    pub ingress_filter: Vec<String>,
    /// Egress FilterDistance targets (HOST:PORT), applied before a request's own.
    #[arg(long, env = "KIM_EGRESS_FILTERS", value_delimiter = ',')]
    pub egress_filter: Vec<String>,
    /// Search deadline when a request gives none.
    #[arg(long, env = "KIM_SEARCH_TIMEOUT", value_parser = humantime::parse_duration, default_value = "5s")]
    pub search_timeout: Duration,
    /// Deadline of one write, existence check or filter call to a backend.
    #[arg(long, env = "KIM_CALL_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s")]
    pub call_timeout: Duration,
    /// Search-stream messages and Multi* items handled at once (write streams apply their
    /// messages in order).
    #[arg(long, env = "KIM_STREAM_CONCURRENCY", default_value_t = 16)]
    pub stream_concurrency: usize,
    /// How often every agent is probed (vald.v1.Index/IndexInfo) for /status and the
    /// search deadline of agents found unreachable.
    #[arg(long, env = "KIM_PROBE_INTERVAL", value_parser = humantime::parse_duration, default_value = "2s")]
    pub probe_interval: Duration,
    /// Deadline of one probe, and of a search on an agent last seen unreachable: an agent
    /// slower than this counts as unreachable.
    #[arg(long, env = "KIM_PROBE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "1s")]
    pub probe_timeout: Duration,
    /// A filter or vectorizer target requests may name, HOST:PORT or HOST:* (any port);
    /// repeatable. --vectorizer, --ingress-filter and --egress-filter are always allowed;
    /// any other target a request names is PERMISSION_DENIED.
    #[arg(long = "allow-target", env = "KIM_ALLOW_TARGETS", value_delimiter = ',')]
    pub allow_targets: Vec<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub tls: ServerTls,
    /// TLS towards agents, vectorizers and filters.
    #[command(flatten)]
    pub backend_tls: ClientTls,
}

#[derive(Debug, Clone, Args)]
pub struct RebalanceArgs {
    /// Every agent of the new set (HOST:PORT, comma-separated or repeated), as the gateways'
    /// --agents lists them: the owners.
    #[arg(long, env = "KIM_AGENTS", value_delimiter = ',', required = true)]
    pub agents: Vec<String>,
    /// Agents leaving the set: their objects are copied to their owners, then removed from
    /// them (the gateways' --read-agents while they drain).
    #[arg(long, env = "KIM_DRAIN", value_delimiter = ',')]
    pub drain: Vec<String>,
    /// Address of /healthz, /readyz, /metrics and /status (progress) while it runs.
    #[arg(long, env = "KIM_HTTP")]
    pub http: Option<SocketAddr>,
    /// File the final report (one JSON line) is written to: Kubernetes' termination message.
    #[arg(long, env = "KIM_TERMINATION_MESSAGE_PATH")]
    pub termination_message_path: Option<PathBuf>,
    /// Agents each object is written to, as the gateways' --replicas.
    #[arg(long, env = "KIM_REPLICAS", default_value_t = 1)]
    pub replicas: usize,
    /// TLS towards the agents.
    #[command(flatten)]
    pub tls: ClientTls,
}

#[derive(Debug, Clone, Args)]
pub struct VectorizeArgs {
    /// gRPC address of filter.ingress.v1.Filter.
    #[arg(long, env = "KIM_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "KIM_HTTP", default_value = "0.0.0.0:8080")]
    pub http: SocketAddr,
    /// Length of the vectors produced (the agents' --dimensions).
    #[arg(long, env = "KIM_DIMENSIONS", default_value_t = 256)]
    pub dimensions: usize,
    #[command(flatten)]
    pub tls: ServerTls,
}
