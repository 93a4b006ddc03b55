//! `kim-worker agent`: one shard of the online index. Writes are acknowledged only once in
//! the fsync'd WAL, are searchable at once (brute-forced tail), and are folded into an HNSW
//! segment that is periodically saved so restarts replay little.

pub mod engine;
pub mod grpc;
pub mod persist;
pub mod request;
pub mod store;
pub mod wal;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use kim_index::HnswParams;
use kim_proto::agent::v1::agent_server::AgentServer;
use kim_proto::vald::v1::{
    flush_server::FlushServer, index_server::IndexServer, insert_server::InsertServer, object_server::ObjectServer,
    remove_server::RemoveServer, search_server::SearchServer, update_server::UpdateServer, upsert_server::UpsertServer,
};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::args::AgentArgs;
use super::metrics::Metrics;
use engine::{Config, Engine};

pub fn run(a: AgentArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(serve(a))
}

async fn serve(a: AgentArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.dimensions > 0 && a.dimensions <= kim_index::descriptor::MAX_DIMENSIONS,
        "--dimensions must be in 1..={}",
        kim_index::descriptor::MAX_DIMENSIONS
    );
    let ready = Arc::new(AtomicBool::new(false));
    let http = tokio::net::TcpListener::bind(a.http).await.with_context(|| format!("binding {}", a.http))?;
    let cfg = Config {
        dir: a.data.clone(),
        dimensions: a.dimensions,
        metric: a.metric,
        hnsw: HnswParams { m: a.m, ef_construction: a.ef_construction, ef_search: a.ef_search },
        build_threads: a.build_threads.max(1),
        max_uncommitted: a.max_uncommitted.max(1),
    };
    // /healthz answers during recovery; /readyz and /metrics follow once it is done.
    let served: Arc<OnceLock<Arc<Metrics>>> = Arc::default();
    let m = served.clone();
    tokio::spawn(super::http::serve(
        http,
        ready.clone(),
        Arc::new(move || m.get().map(|m| m.encode()).unwrap_or_default()),
        axum::Router::new(),
    ));
    let engine = tokio::task::spawn_blocking(move || Engine::open(cfg)).await?.context("opening the agent's data")?;
    let mut metrics = Metrics::new("kim_agent");
    metrics.register_collector(Box::new(EngineCollector(engine.clone())));
    let metrics = Arc::new(metrics);
    let _ = served.set(metrics.clone());
    tokio::spawn(engine.clone().maintain(a.index_interval, a.max_index_age));

    let listener = tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("binding {}", a.listen))?;
    let name = a
        .name
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| a.listen.to_string());
    let ip = a.advertise_ip.clone().unwrap_or_else(|| a.listen.ip().to_string());
    let rules = request::Rules { dimensions: a.dimensions, ef_search: a.ef_search, limits: a.limits.limits() };
    let svc = grpc::AgentService { engine: engine.clone(), metrics, name: name.into(), ip: ip.into(), rules };
    let max = a.limits.max_message_bytes;
    ready.store(true, Ordering::SeqCst);
    let mut server = a.tls.builder().context("agent TLS")?;
    tracing::info!(listen = %a.listen, http = %a.http, dimensions = a.dimensions, metric = %a.metric, grpc = a.tls.mode(), "agent serving");
    server
        .add_service(InsertServer::new(svc.clone()).max_decoding_message_size(max).max_encoding_message_size(max))
        .add_service(UpdateServer::new(svc.clone()).max_decoding_message_size(max).max_encoding_message_size(max))
        .add_service(UpsertServer::new(svc.clone()).max_decoding_message_size(max).max_encoding_message_size(max))
        .add_service(RemoveServer::new(svc.clone()).max_decoding_message_size(max).max_encoding_message_size(max))
        .add_service(SearchServer::new(svc.clone()).max_decoding_message_size(max).max_encoding_message_size(max))
        .add_service(ObjectServer::new(svc.clone()).max_decoding_message_size(max).max_encoding_message_size(max))
        .add_service(IndexServer::new(svc.clone()).max_decoding_message_size(max).max_encoding_message_size(max))
        .add_service(FlushServer::new(svc.clone()).max_decoding_message_size(max).max_encoding_message_size(max))
        .add_service(AgentServer::new(svc).max_decoding_message_size(max).max_encoding_message_size(max))
        .serve_with_incoming_shutdown(super::incoming(listener), kim_runtime::shutdown_signal())
        .await?;
    // Every acknowledged write is already in the WAL, and replay is fast: no final build
    // that could outlast the pod's termination grace period.
    ready.store(false, Ordering::SeqCst);
    Ok(())
}

/// Reads the engine's state at scrape time.
struct EngineCollector(Arc<Engine>);

impl std::fmt::Debug for EngineCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineCollector").field("dir", &self.0.cfg.dir).finish()
    }
}

impl Collector for EngineCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &self.0;
        let (objects, uncommitted, tail) = {
            let st = e.state.read().unwrap();
            (st.objects.len(), st.uncommitted(), st.tail_len())
        };
        let s = &e.stats;
        let gauges: [(&str, &str, i64); 5] = [
            ("objects", "Live objects", objects as i64),
            ("uncommitted", "Objects written since the last index build", uncommitted as i64),
            ("tail_rows", "Rows searched by brute force (dead ones included)", tail as i64),
            (
                "last_build_milliseconds",
                "Duration of the last index build",
                s.last_build_millis.load(Ordering::Relaxed) as i64,
            ),
            ("wal_discarded_bytes", "Torn WAL tail bytes cut off at startup", e.discarded_bytes as i64),
        ];
        for (name, help, v) in gauges {
            ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, ConstGauge::new(v).metric_type())?)?;
        }
        let counters: [(&str, &str, u64); 3] = [
            ("wal_fsyncs", "WAL group commits (one fsync each)", s.fsyncs.load(Ordering::Relaxed)),
            (
                "wal_fsync_microseconds",
                "Time spent writing and fsyncing the WAL",
                s.fsync_micros.load(Ordering::Relaxed),
            ),
            ("index_builds", "Index segments built", s.builds.load(Ordering::Relaxed)),
        ];
        for (name, help, v) in counters {
            ConstCounter::new(v).encode(enc.encode_descriptor(
                name,
                help,
                None,
                ConstCounter::new(v).metric_type(),
            )?)?;
        }
        Ok(())
    }
}
