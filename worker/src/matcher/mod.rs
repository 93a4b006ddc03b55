//! `kim-worker match`: serves labels from snapshots on shared storage to Redis-stream clients.
//!
//! Tasks: a storage watcher (loads new labels, hot-swaps new snapshots, rejects corrupt ones;
//! with `--pool`, drops labels that left the pool's Redis set),
//! a delta watcher (applies the deltas of `kim-worker refresh` to served snapshots),
//! a registry heartbeat (TTL keys clients use to find live labels), the stream reader (batched
//! `XREADGROUP`, search on the rayon pool, pipelined `PUBLISH` + `XACK`), a claimer
//! (`XAUTOCLAIM` of entries abandoned by dead matchers), a backlog reader (the group's lag and
//! pending count as metrics) and the HTTP endpoints. Every reply leaves through the gate of
//! `shards`, which publishes one reply per request whatever answers it (a reclaimed entry, or
//! the matchers of another shard count while a label changes its split); serving one shard of
//! a split label (`--shards`), partial answers meet there too, and its deadline timers are one
//! more task.

mod backlog;
mod deltas;
mod http;
mod labels;
mod metrics;
mod registry;
mod retry;
mod serve;
mod shards;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use kim_redis::Target;
use tokio::sync::watch;

use crate::cli::MatchArgs;
use crate::storage::Store;
pub use labels::{Loaded, Served};
use metrics::Metrics;

/// State shared by the matcher's tasks.
pub struct Matcher {
    pub args: MatchArgs,
    pub store: Store,
    pub id: String,
    pub labels: RwLock<BTreeMap<String, Arc<Served>>>,
    pub metrics: Metrics,
    /// Set once every wanted label has been loaded at least once.
    pub ready: AtomicBool,
    /// Set once the reader has issued its first read over the loaded labels, so `/readyz`
    /// never routes traffic to a matcher that is not consuming yet.
    pub reading: AtomicBool,
    /// Consumer group on every label stream: `kim-matchers`, or the shard's own group.
    pub group: String,
    /// How replies (and a shard's partial answers) become exactly one reply per request.
    gate: shards::Gate,
    shutdown: watch::Receiver<bool>,
}

impl Matcher {
    pub fn served(&self, label: &str) -> Option<Arc<Served>> {
        self.labels.read().unwrap().get(label).cloned()
    }
    pub fn label_names(&self) -> Vec<String> {
        self.labels.read().unwrap().keys().cloned().collect()
    }
    /// Runs `f` (a metrics update of `label`) only while `label` is served, holding the map
    /// meanwhile: a label dropped from a pool had its series cleared after leaving the map, and
    /// a task that looked it up just before must not bring them back.
    pub fn while_served(&self, label: &str, f: impl FnOnce()) {
        let labels = self.labels.read().unwrap();
        if labels.contains_key(label) {
            f();
        }
    }
    /// Where `label`'s snapshots are stored: the label itself, or this matcher's shard of it.
    pub fn storage_name(&self, label: &str) -> String {
        kim_api::shard::storage_name(label, self.args.shard.shard, self.args.shard.shards)
    }
    pub fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }
    /// Sleeps for `d` or until shutdown starts; returns true when shutting down.
    pub async fn pause(&self, d: Duration) -> bool {
        let mut rx = self.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => self.stopping(),
            _ = rx.wait_for(|s| *s) => true,
        }
    }
}

pub fn run(args: MatchArgs) -> anyhow::Result<()> {
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("search-{i}")).build_global().ok();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(serve_until_signal(args))
}

fn default_id() -> String {
    let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "matcher".into());
    format!("{host}-{}-{}", std::process::id(), &kim_api::new_rid()[..8])
}

async fn serve_until_signal(args: MatchArgs) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    kim_api::shard::check(args.shard.shard, args.shard.shards)?;
    let (gate, timers) = shards::Gate::new();
    let timers = args.shard.sharded().then_some(timers);
    let store = Store::open(&args.storage)?;
    let id = args.matcher_id.clone().unwrap_or_else(default_id);
    let target = Arc::new(Target::new(&args.redis)?);
    tracing::info!(redis = %target, tls = target.is_tls(), sentinel = target.is_sentinel(), "connecting to Redis");
    // Startup fails fast on TLS, authentication or plaintext-vs-TLS mistakes; later failures
    // are retried forever with backoff by every task.
    let conn = kim_redis::connect_checked(target.clone(), Duration::from_secs(10), Duration::from_secs(30)).await?;
    let reader =
        kim_redis::connect_checked(target, args.block + Duration::from_secs(10), Duration::from_secs(30)).await?;
    let m = Arc::new(Matcher {
        id,
        labels: Default::default(),
        metrics: Metrics::new(),
        ready: AtomicBool::new(false),
        reading: AtomicBool::new(false),
        group: kim_api::shard::group(args.shard.shard, args.shard.shards),
        gate,
        shutdown: stop_rx,
        store,
        args,
    });
    tracing::info!(matcher = %m.id, storage = %m.store.describe(), namespace = %m.args.namespace, group = %m.group, "matcher starting");
    let listener =
        tokio::net::TcpListener::bind(m.args.http).await.with_context(|| format!("binding {}", m.args.http))?;
    tokio::spawn(http::serve(m.clone(), listener));
    tokio::spawn(async move {
        kim_runtime::shutdown_signal().await;
        tracing::info!("finishing in-flight requests");
        stop_tx.send(true).ok();
    });

    let watcher = tokio::spawn(labels::watch(m.clone(), conn.clone()));
    let delta_watcher = tokio::spawn(deltas::watch(m.clone(), conn.clone()));
    let heartbeat = tokio::spawn(registry::heartbeat(m.clone(), conn.clone()));
    let backlog = tokio::spawn(backlog::watch(m.clone(), conn.clone()));
    let claimer = tokio::spawn(serve::claim_loop(m.clone(), conn.clone()));
    let timers = timers.map(|rx| tokio::spawn(shards::timers(m.clone(), rx, conn.clone())));
    serve::read_loop(m.clone(), reader, conn.clone()).await;
    // The reader has finished its last batch; let the claimer finish its own, then leave.
    claimer.await.ok();
    watcher.abort();
    delta_watcher.abort();
    heartbeat.abort();
    if let Some(t) = timers {
        t.abort();
    }
    backlog.abort();
    registry::unregister(&m, conn).await;
    m.ready.store(false, Ordering::SeqCst);
    tracing::info!(matcher = %m.id, "matcher stopped");
    Ok(())
}
