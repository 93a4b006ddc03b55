//! vald.v1 Index (IndexInfo, IndexDetail, IndexStatistics, IndexStatisticsDetail,
//! IndexProperty), vald.v1 Flush and core.v1 Agent (CreateIndex, SaveIndex,
//! CreateAndSaveIndex).

use std::time::Instant;

use kim_proto::agent::v1::agent_server::Agent;
use kim_proto::payload::v1::{self as pb, control, flush, info::index};
use kim_proto::vald::v1::{flush_server, index_server};
use tonic::{Request, Response, Status};

use super::AgentService;

/// Vald's distance names for kim's metrics.
fn distance_type(m: kim_index::Metric) -> &'static str {
    match m {
        kim_index::Metric::Cosine => "Cosine",
        kim_index::Metric::Dot => "InnerProduct",
        kim_index::Metric::L2 => "L2",
    }
}

impl AgentService {
    /// Figures of the current segment's graph (layer 0) and of the live objects.
    fn statistics(&self) -> index::Statistics {
        let st = self.engine.state.read().unwrap();
        let seg = &st.segment;
        let g = &seg.index.graph;
        let n = g.len();
        let out: Vec<u64> = (0..n).map(|i| g.layer0.row(i).len() as u64).collect();
        let mut inc = vec![0u64; n];
        for &t in &g.layer0.targets {
            if let Some(c) = inc.get_mut(t as usize) {
                *c += 1;
            }
        }
        let median = |v: &[u64]| {
            let mut v = v.to_vec();
            v.sort_unstable();
            v.get(v.len() / 2).copied().unwrap_or(0) as i32
        };
        let edges = g.layer0.targets.len() as u64;
        index::Statistics {
            valid: true,
            median_indegree: median(&inc),
            median_outdegree: median(&out),
            max_number_of_indegree: inc.iter().copied().max().unwrap_or(0),
            max_number_of_outdegree: out.iter().copied().max().unwrap_or(0),
            min_number_of_indegree: inc.iter().copied().min().unwrap_or(0),
            min_number_of_outdegree: out.iter().copied().min().unwrap_or(0),
            number_of_edges: edges,
            number_of_indexed_objects: seg.rows() as u64,
            number_of_nodes: n as u64,
            number_of_nodes_without_edges: out.iter().filter(|&&d| d == 0).count() as u64,
            number_of_nodes_without_indegree: inc.iter().filter(|&&d| d == 0).count() as u64,
            number_of_objects: st.objects.len() as u64,
            number_of_removed_objects: (seg.rows() + st.tail_len()).saturating_sub(st.objects.len()) as u64,
            size_of_object_repository: (seg.rows() * self.rules.dimensions * 4) as u64,
            mean_number_of_edges_per_node: if n == 0 { 0.0 } else { edges as f64 / n as f64 },
        }
    }

    fn property(&self) -> index::Property {
        let c = &self.engine.cfg;
        index::Property {
            dimension: c.dimensions as i32,
            thread_pool_size: c.build_threads as i32,
            object_type: "Float".into(),
            distance_type: distance_type(c.metric).into(),
            index_type: "HNSW".into(),
            edge_size_for_creation: c.hnsw.ef_construction as i32,
            edge_size_for_search: c.hnsw.ef_search as i32,
            outgoing_edge: c.hnsw.m as i32,
        }
    }
}

#[tonic::async_trait]
impl index_server::Index for AgentService {
    async fn index_info(&self, _req: Request<pb::Empty>) -> Result<Response<index::Count>, Status> {
        let t = Instant::now();
        let r = Ok(self.count());
        self.done("IndexInfo", t, r)
    }
    async fn index_detail(&self, _req: Request<pb::Empty>) -> Result<Response<index::Detail>, Status> {
        let t = Instant::now();
        let counts = [(self.name.to_string(), self.count())].into();
        self.done("IndexDetail", t, Ok(index::Detail { counts, replica: 1, live_agents: 1 }))
    }
    async fn index_statistics(&self, _req: Request<pb::Empty>) -> Result<Response<index::Statistics>, Status> {
        let t = Instant::now();
        let r = Ok(self.statistics());
        self.done("IndexStatistics", t, r)
    }
    async fn index_statistics_detail(
        &self,
        _req: Request<pb::Empty>,
    ) -> Result<Response<index::StatisticsDetail>, Status> {
        let t = Instant::now();
        let details = [(self.name.to_string(), self.statistics())].into();
        self.done("IndexStatisticsDetail", t, Ok(index::StatisticsDetail { details }))
    }
    async fn index_property(&self, _req: Request<pb::Empty>) -> Result<Response<index::PropertyDetail>, Status> {
        let t = Instant::now();
        let details = [(self.name.to_string(), self.property())].into();
        self.done("IndexProperty", t, Ok(index::PropertyDetail { details }))
    }
}

#[tonic::async_trait]
impl flush_server::Flush for AgentService {
    async fn flush(&self, _req: Request<flush::Request>) -> Result<Response<index::Count>, Status> {
        let t = Instant::now();
        let r = self.engine.flush().await.map(|_| self.count()).map_err(Status::from);
        self.done("Flush", t, r)
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn create_index(&self, _req: Request<control::CreateIndexRequest>) -> Result<Response<pb::Empty>, Status> {
        let t = Instant::now();
        let r =
            self.engine.create_index(false).await.map(|_| pb::Empty {}).map_err(|e| Status::internal(e.to_string()));
        self.done("CreateIndex", t, r)
    }
    async fn save_index(&self, _req: Request<pb::Empty>) -> Result<Response<pb::Empty>, Status> {
        let t = Instant::now();
        let r = self.engine.save().await.map(|_| pb::Empty {}).map_err(|e| Status::internal(e.to_string()));
        self.done("SaveIndex", t, r)
    }
    async fn create_and_save_index(
        &self,
        _req: Request<control::CreateIndexRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let t = Instant::now();
        let r = self.engine.create_index(true).await.map(|_| pb::Empty {}).map_err(|e| Status::internal(e.to_string()));
        self.done("CreateAndSaveIndex", t, r)
    }
}
