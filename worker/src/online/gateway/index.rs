//! vald.v1 Index and Flush on the gateway, over every agent (each must answer): IndexInfo
//! sums the agents' counts (replicas count once per agent that holds them); the *Detail
//! RPCs report each agent under its address; IndexStatistics combines the agents' graphs;
//! Flush empties every agent.

use std::collections::HashMap;
use std::time::Instant;

use kim_proto::payload::v1::{self as pb, flush, info::index};
use kim_proto::vald::v1::{flush_client::FlushClient, flush_server, index_client::IndexClient, index_server};
use tonic::{Request, Response, Status};

use super::ops::Service;
use super::sized;

fn sum(counts: impl IntoIterator<Item = index::Count>) -> index::Count {
    counts.into_iter().fold(index::Count::default(), |a, c| index::Count {
        stored: a.stored.saturating_add(c.stored),
        uncommitted: a.uncommitted.saturating_add(c.uncommitted),
        indexing: a.indexing || c.indexing,
        saving: a.saving || c.saving,
    })
}

/// The agents' statistics as one graph's: counts add up, extremes are the extremes, medians
/// and the mean are weighted by nodes.
fn combine(all: &[index::Statistics]) -> index::Statistics {
    let nodes: u64 = all.iter().map(|s| s.number_of_nodes).sum();
    let weighted = |f: fn(&index::Statistics) -> f64| {
        if nodes == 0 {
            0.0
        } else {
            all.iter().map(|s| f(s) * s.number_of_nodes as f64).sum::<f64>() / nodes as f64
        }
    };
    let with_nodes = || all.iter().filter(|s| s.number_of_nodes > 0);
    index::Statistics {
        valid: all.iter().all(|s| s.valid),
        median_indegree: weighted(|s| f64::from(s.median_indegree)).round() as i32,
        median_outdegree: weighted(|s| f64::from(s.median_outdegree)).round() as i32,
        max_number_of_indegree: all.iter().map(|s| s.max_number_of_indegree).max().unwrap_or(0),
        max_number_of_outdegree: all.iter().map(|s| s.max_number_of_outdegree).max().unwrap_or(0),
        min_number_of_indegree: with_nodes().map(|s| s.min_number_of_indegree).min().unwrap_or(0),
        min_number_of_outdegree: with_nodes().map(|s| s.min_number_of_outdegree).min().unwrap_or(0),
        number_of_edges: all.iter().map(|s| s.number_of_edges).sum(),
        number_of_indexed_objects: all.iter().map(|s| s.number_of_indexed_objects).sum(),
        number_of_nodes: nodes,
        number_of_nodes_without_edges: all.iter().map(|s| s.number_of_nodes_without_edges).sum(),
        number_of_nodes_without_indegree: all.iter().map(|s| s.number_of_nodes_without_indegree).sum(),
        number_of_objects: all.iter().map(|s| s.number_of_objects).sum(),
        number_of_removed_objects: all.iter().map(|s| s.number_of_removed_objects).sum(),
        size_of_object_repository: all.iter().map(|s| s.size_of_object_repository).sum(),
        mean_number_of_edges_per_node: weighted(|s| s.mean_number_of_edges_per_node),
    }
}

impl Service {
    async fn counts(&self) -> Result<Vec<(String, index::Count)>, Status> {
        let m = self.0.max_message;
        self.0.all_agents(|ch| async move { sized!(IndexClient::new(ch), m).index_info(pb::Empty {}).await }).await
    }
    async fn statistics(&self) -> Result<Vec<(String, index::Statistics)>, Status> {
        let m = self.0.max_message;
        self.0
            .all_agents(|ch| async move { sized!(IndexClient::new(ch), m).index_statistics(pb::Empty {}).await })
            .await
    }
}

#[tonic::async_trait]
impl index_server::Index for Service {
    async fn index_info(&self, _req: Request<pb::Empty>) -> Result<Response<index::Count>, Status> {
        let t = Instant::now();
        let r = self.counts().await.map(|c| sum(c.into_iter().map(|(_, c)| c)));
        self.done("IndexInfo", t, r)
    }
    async fn index_detail(&self, _req: Request<pb::Empty>) -> Result<Response<index::Detail>, Status> {
        let t = Instant::now();
        let r = self.counts().await.map(|c| index::Detail {
            live_agents: c.len() as u32,
            counts: c.into_iter().collect(),
            replica: self.0.replicas as u32,
        });
        self.done("IndexDetail", t, r)
    }
    async fn index_statistics(&self, _req: Request<pb::Empty>) -> Result<Response<index::Statistics>, Status> {
        let t = Instant::now();
        let r = self.statistics().await.map(|s| combine(&s.into_iter().map(|(_, s)| s).collect::<Vec<_>>()));
        self.done("IndexStatistics", t, r)
    }
    async fn index_statistics_detail(
        &self,
        _req: Request<pb::Empty>,
    ) -> Result<Response<index::StatisticsDetail>, Status> {
        let t = Instant::now();
        let r = self.statistics().await.map(|s| index::StatisticsDetail { details: s.into_iter().collect() });
        self.done("IndexStatisticsDetail", t, r)
    }
    async fn index_property(&self, _req: Request<pb::Empty>) -> Result<Response<index::PropertyDetail>, Status> {
        let t = Instant::now();
        let m = self.0.max_message;
        let r = self
            .0
            .all_agents(|ch| async move { sized!(IndexClient::new(ch), m).index_property(pb::Empty {}).await })
            .await
            .map(|per_agent| {
                // Each agent reports itself under its own name; the gateway keys by address.
                let details: HashMap<String, index::Property> = per_agent
                    .into_iter()
                    .filter_map(|(addr, p)| p.details.into_values().next().map(|p| (addr, p)))
                    .collect();
                index::PropertyDetail { details }
            });
        self.done("IndexProperty", t, r)
    }
}

#[tonic::async_trait]
impl flush_server::Flush for Service {
    async fn flush(&self, _req: Request<flush::Request>) -> Result<Response<index::Count>, Status> {
        let t = Instant::now();
        let m = self.0.max_message;
        let r = self
            .0
            .all_agents(|ch| async move { sized!(FlushClient::new(ch), m).flush(flush::Request {}).await })
            .await
            .map(|c| sum(c.into_iter().map(|(_, c)| c)));
        self.done("Flush", t, r)
    }
}
