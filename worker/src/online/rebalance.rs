//! `kim-worker rebalance`: after the agent set changed, puts every object where the gateways
//! now look for it. Lists every agent, owners and draining ones (Object.StreamListObject),
//! takes each id's newest version, writes it to each of its owners that lacks it or holds an
//! older one (Upsert with its timestamp), then removes it from agents that are not owners.
//! Run it after adding agents (ids move to the new ones), before removing some (`--drain`
//! empties them while the gateways still read them) or after losing one (replicas it held
//! are re-made from the survivors). It holds every object in memory while it runs.
//!
//! Progress is served on `--http` (`/status` as JSON, `/metrics`) and the final report is
//! one JSON line on stdout and in `--termination-message-path`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use kim_proto::payload::v1::{object, remove, upsert};
use kim_proto::vald::v1::{object_client::ObjectClient, remove_client::RemoveClient, upsert_client::UpsertClient};
use prometheus_client::metrics::gauge::ConstGauge;
use serde::Serialize;
use tonic::Code;

use super::args::RebalanceArgs;
use super::gateway::placement::owners;

/// What one pass did (the report), and how far it is (the progress while it runs).
#[derive(Debug, Default, Serialize, Clone, PartialEq)]
pub struct Report {
    /// Agents listed: owners and draining ones.
    pub agents: usize,
    /// Agents drained (not owners).
    pub drained: usize,
    /// Distinct ids found.
    pub objects: usize,
    /// Ids whose copies are where they belong.
    pub done: usize,
    /// Copies written to owners that lacked the id or held an older version.
    pub copied: usize,
    /// Copies removed from agents that are not owners.
    pub removed: usize,
}

/// Counters shared with the HTTP endpoints while the pass runs.
#[derive(Debug, Default)]
pub struct Progress {
    listed: AtomicBool,
    agents: AtomicU64,
    drained: AtomicU64,
    objects: AtomicU64,
    done: AtomicU64,
    copied: AtomicU64,
    removed: AtomicU64,
}

impl Progress {
    pub fn report(&self) -> Report {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed) as usize;
        Report {
            agents: n(&self.agents),
            drained: n(&self.drained),
            objects: n(&self.objects),
            done: n(&self.done),
            copied: n(&self.copied),
            removed: n(&self.removed),
        }
    }

    /// `/status`: the report plus the phase (listing, moving, done).
    fn status(&self) -> serde_json::Value {
        let r = self.report();
        let phase = match (self.listed.load(Ordering::Relaxed), r.done == r.objects) {
            (false, _) => "listing",
            (true, false) => "moving",
            (true, true) => "done",
        };
        let mut v = serde_json::to_value(&r).expect("a report serializes");
        v["phase"] = phase.into();
        v
    }
}

/// `kim_rebalance_*` gauges read from [`Progress`] at scrape time.
#[derive(Debug)]
struct Collector(Arc<Progress>);

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut enc: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let r = self.0.report();
        for (name, help, value) in [
            ("objects", "Distinct ids found on the agents", r.objects),
            ("objects_done", "Ids whose copies are where they belong", r.done),
            ("copies_written", "Copies written to owners that lacked the id or held an older version", r.copied),
            ("copies_removed", "Copies removed from agents that are not owners", r.removed),
        ] {
            let g = ConstGauge::new(value as i64);
            g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

pub fn run(a: RebalanceArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let progress = Arc::new(Progress::default());
    let outcome = rt.block_on(async {
        if let Some(addr) = a.http {
            serve_progress(addr, progress.clone()).await?;
        }
        rebalance(&a, &progress).await
    });
    let line = match &outcome {
        Ok(r) => serde_json::to_string(r)?,
        Err(e) => serde_json::json!({ "error": format!("{e:#}"), "progress": progress.report() }).to_string(),
    };
    crate::indexer::emit(&line, outcome.is_ok(), a.termination_message_path.as_deref());
    outcome.map(|_| ())
}

async fn serve_progress(addr: std::net::SocketAddr, progress: Arc<Progress>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
    let mut registry = prometheus_client::registry::Registry::with_prefix("kim_rebalance");
    registry.register_collector(Box::new(Collector(progress.clone())));
    let metrics: kim_runtime::Metrics = Arc::new(move || {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encoding to a String");
        out
    });
    let status = axum::Router::new().route(
        "/status",
        axum::routing::get(move || {
            let body = progress.status().to_string();
            async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], body) }
        }),
    );
    tokio::spawn(super::http::serve(listener, Arc::new(AtomicBool::new(true)), metrics, status));
    Ok(())
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    v.sort();
    v.dedup();
    v
}

async fn rebalance(a: &RebalanceArgs, p: &Progress) -> anyhow::Result<Report> {
    anyhow::ensure!(a.replicas >= 1, "--replicas must be at least 1");
    let dialer = a.tls.dialer()?;
    let owners_set = sorted(&a.agents);
    anyhow::ensure!(!owners_set.is_empty(), "--agents names no agent");
    let drain: Vec<String> = sorted(&a.drain).into_iter().filter(|d| !owners_set.contains(d)).collect();
    let listed: Vec<String> = owners_set.iter().chain(&drain).cloned().collect();
    p.agents.store(listed.len() as u64, Ordering::Relaxed);
    p.drained.store(drain.len() as u64, Ordering::Relaxed);
    let mut channels = HashMap::new();
    for addr in &listed {
        let ch = dialer.agent_endpoint(addr)?.connect().await.map_err(|e| anyhow::anyhow!("agent {addr}: {e}"))?;
        channels.insert(addr.clone(), ch);
    }
    // id → (newest version, the agents holding it with their timestamps)
    let mut held: HashMap<String, (object::Vector, Vec<(String, i64)>)> = HashMap::new();
    for addr in &listed {
        let client = ObjectClient::new(channels[addr].clone()).max_decoding_message_size(64 << 20);
        for v in
            super::list_objects(client).await.map_err(|s| anyhow::anyhow!("listing agent {addr}: {}", s.message()))?
        {
            let e = held.entry(v.id.clone()).or_insert_with(|| (v.clone(), Vec::new()));
            if v.timestamp > e.0.timestamp {
                e.0 = v.clone();
            }
            e.1.push((addr.clone(), v.timestamp));
        }
        p.objects.store(held.len() as u64, Ordering::Relaxed);
    }
    p.listed.store(true, Ordering::Relaxed);
    let total = held.len();
    for (n, (id, (newest, holders))) in held.into_iter().enumerate() {
        let own = owners(&owners_set, &id, a.replicas);
        for o in &own {
            if !holders.iter().any(|(h, t)| h == o && *t >= newest.timestamp) {
                let req = upsert::Request {
                    config: Some(upsert::Config { timestamp: newest.timestamp, ..Default::default() }),
                    vector: Some(newest.clone()),
                };
                UpsertClient::new(channels[o].clone())
                    .upsert(req)
                    .await
                    .map_err(|s| anyhow::anyhow!("writing {id} to agent {o}: {}", s.message()))?;
                p.copied.fetch_add(1, Ordering::Relaxed);
            }
        }
        for (h, _) in holders.iter().filter(|(h, _)| !own.contains(h)) {
            let req = remove::Request { id: Some(object::Id { id: id.clone() }), config: None };
            match RemoveClient::new(channels[h].clone()).remove(req).await {
                Ok(_) => {
                    p.removed.fetch_add(1, Ordering::Relaxed);
                }
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => anyhow::bail!("removing {id} from agent {h}: {}", s.message()),
            }
        }
        p.done.store(n as u64 + 1, Ordering::Relaxed);
        if (n + 1) % 10_000 == 0 {
            let r = p.report();
            tracing::info!(done = n + 1, total, copied = r.copied, removed = r.removed, "rebalancing");
        }
    }
    let r = p.report();
    tracing::info!(
        agents = r.agents,
        drained = r.drained,
        objects = r.objects,
        copied = r.copied,
        removed = r.removed,
        "rebalanced"
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_the_phase() {
        let p = Progress::default();
        assert_eq!(p.status()["phase"], "listing");
        p.listed.store(true, Ordering::Relaxed);
        p.objects.store(3, Ordering::Relaxed);
        p.done.store(1, Ordering::Relaxed);
        assert_eq!(p.status()["phase"], "moving");
        p.done.store(3, Ordering::Relaxed);
        let s = p.status();
        assert_eq!((s["phase"].as_str(), s["objects"].as_u64(), s["done"].as_u64()), (Some("done"), Some(3), Some(3)));
    }
}
