//! `kim-worker rebalance`: after the agent set changed, puts every object where the gateways
//! now look for it. Lists every agent (Object.StreamListObject), takes each id's newest
//! version, writes it to each of its owners under the given set that lacks it or holds an
//! older one (Upsert with its timestamp), then removes it from agents that are not owners.
//! Run it after adding agents (ids move to the new ones) or after losing one (replicas it
//! held are re-made from the survivors). It holds every object in memory while it runs.

use std::collections::HashMap;

use kim_proto::payload::v1::{object, remove, upsert};
use kim_proto::vald::v1::{object_client::ObjectClient, remove_client::RemoveClient, upsert_client::UpsertClient};
use serde::Serialize;
use tonic::Code;

use super::args::RebalanceArgs;
use super::gateway::placement::owners;

/// What one pass did.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub agents: usize,
    /// Distinct ids found.
    pub objects: usize,
    /// Copies written to owners that lacked the id or held an older version.
    pub copied: usize,
    /// Copies removed from agents that are not owners.
    pub removed: usize,
}

pub fn run(a: RebalanceArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = rt.block_on(rebalance(&a))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

async fn rebalance(a: &RebalanceArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(a.replicas >= 1, "--replicas must be at least 1");
    let dialer = a.tls.dialer()?;
    let mut agents: Vec<String> = a.agents.clone();
    agents.sort();
    agents.dedup();
    let mut channels = HashMap::new();
    for addr in &agents {
        let ch = dialer.agent_endpoint(addr)?.connect().await.map_err(|e| anyhow::anyhow!("agent {addr}: {e}"))?;
        channels.insert(addr.clone(), ch);
    }
    // id → (newest version, the agents holding it with their timestamps)
    let mut held: HashMap<String, (object::Vector, Vec<(String, i64)>)> = HashMap::new();
    for addr in &agents {
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
    }
    let mut report = Report { agents: agents.len(), objects: held.len(), ..Default::default() };
    let total = held.len();
    for (n, (id, (newest, holders))) in held.into_iter().enumerate() {
        let own = owners(&agents, &id, a.replicas);
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
                report.copied += 1;
            }
        }
        for (h, _) in holders.iter().filter(|(h, _)| !own.contains(h)) {
            let req = remove::Request { id: Some(object::Id { id: id.clone() }), config: None };
            match RemoveClient::new(channels[h].clone()).remove(req).await {
                Ok(_) => report.removed += 1,
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => anyhow::bail!("removing {id} from agent {h}: {}", s.message()),
            }
        }
        if (n + 1) % 10_000 == 0 {
            tracing::info!(done = n + 1, total, copied = report.copied, removed = report.removed, "rebalancing");
        }
    }
    tracing::info!(
        agents = report.agents,
        objects = report.objects,
        copied = report.copied,
        removed = report.removed,
        "rebalanced"
    );
    Ok(report)
}
