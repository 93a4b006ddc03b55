//! vald.v1 Search: by vector or by the vector of a stored id, approximate (HNSW plus the
//! brute-forced tail) or linear (every row), unary, Multi and Stream.

use std::time::Instant;

use kim_proto::payload::v1::search;
use kim_proto::vald::v1::search_server;
use tonic::{Request, Response, Status, Streaming};

use super::AgentService;
use crate::online::metrics::code_of;
use crate::online::{limits, multi_error, per_message, rpc_status, Out};

/// What a search starts from.
enum Query {
    Vector(Vec<f32>),
    Id(String),
}

/// Search messages answered at once on one stream.
const STREAM_CONCURRENCY: usize = 4;

fn by_vector(r: search::Request) -> (Query, Option<search::Config>) {
    (Query::Vector(r.vector), r.config)
}
fn by_id(r: search::IdRequest) -> (Query, Option<search::Config>) {
    (Query::Id(r.id), r.config)
}

impl AgentService {
    async fn answer(&self, q: Query, cfg: Option<search::Config>, exact: bool) -> Result<search::Response, Status> {
        let vector = match q {
            Query::Vector(v) => v,
            Query::Id(id) => {
                limits::id(&id)?;
                self.vector_of(&id).ok_or_else(|| Status::not_found(format!("object {id} not found")))?.vector
            }
        };
        let plan = self.rules.plan(&vector, cfg.as_ref())?;
        let (engine, rules) = (self.engine.clone(), self.rules);
        let request_id = cfg.map(|c| c.request_id).unwrap_or_default();
        let results =
            tokio::task::spawn_blocking(move || rules.search(&engine.state.read().unwrap(), &plan, &vector, exact))
                .await
                .map_err(|e| Status::internal(e.to_string()))??;
        tracing::debug!(request_id = %request_id, results = results.len(), exact, "search");
        Ok(search::Response { request_id, results })
    }

    async fn unary(
        &self,
        rpc: &'static str,
        (q, cfg): (Query, Option<search::Config>),
        exact: bool,
    ) -> Result<Response<search::Response>, Status> {
        let t = Instant::now();
        let r = self.answer(q, cfg, exact).await;
        self.done(rpc, t, r)
    }

    async fn multi(
        &self,
        rpc: &'static str,
        reqs: Vec<(Query, Option<search::Config>)>,
        exact: bool,
    ) -> Result<Response<search::Responses>, Status> {
        let t = Instant::now();
        let total = reqs.len();
        let mut responses = Vec::with_capacity(total);
        let mut failures = Vec::new();
        for (i, (q, cfg)) in reqs.into_iter().enumerate() {
            let rid = cfg.as_ref().map(|c| c.request_id.clone()).unwrap_or_default();
            match self.answer(q, cfg, exact).await {
                Ok(resp) => responses.push(resp),
                Err(s) => failures.push((i, rid, s)),
            }
        }
        let r =
            if failures.is_empty() { Ok(search::Responses { responses }) } else { Err(multi_error(total, &failures)) };
        self.done(rpc, t, r)
    }

    fn stream<Req: Send + 'static>(
        &self,
        rpc: &'static str,
        input: Streaming<Req>,
        parts: fn(Req) -> (Query, Option<search::Config>),
        exact: bool,
    ) -> Result<Response<Out<search::StreamResponse>>, Status> {
        let me = self.clone();
        Ok(Response::new(per_message(input, STREAM_CONCURRENCY, move |r: Req| {
            let me = me.clone();
            async move {
                let t = Instant::now();
                let (q, cfg) = parts(r);
                let r = me.answer(q, cfg, exact).await;
                me.metrics.observe(rpc, code_of(&r), t);
                let payload = match r {
                    Ok(resp) => search::stream_response::Payload::Response(resp),
                    Err(s) => search::stream_response::Payload::Status(rpc_status(&s)),
                };
                search::StreamResponse { payload: Some(payload) }
            }
        })))
    }
}

#[tonic::async_trait]
impl search_server::Search for AgentService {
    async fn search(&self, req: Request<search::Request>) -> Result<Response<search::Response>, Status> {
        self.unary("Search", by_vector(req.into_inner()), false).await
    }
    async fn search_by_id(&self, req: Request<search::IdRequest>) -> Result<Response<search::Response>, Status> {
        self.unary("SearchByID", by_id(req.into_inner()), false).await
    }
    type StreamSearchStream = Out<search::StreamResponse>;
    async fn stream_search(
        &self,
        req: Request<Streaming<search::Request>>,
    ) -> Result<Response<Self::StreamSearchStream>, Status> {
        self.stream("StreamSearch", req.into_inner(), by_vector, false)
    }
    type StreamSearchByIDStream = Out<search::StreamResponse>;
    async fn stream_search_by_id(
        &self,
        req: Request<Streaming<search::IdRequest>>,
    ) -> Result<Response<Self::StreamSearchByIDStream>, Status> {
        self.stream("StreamSearchByID", req.into_inner(), by_id, false)
    }
    async fn multi_search(&self, req: Request<search::MultiRequest>) -> Result<Response<search::Responses>, Status> {
        self.multi("MultiSearch", req.into_inner().requests.into_iter().map(by_vector).collect(), false).await
    }
    async fn multi_search_by_id(
        &self,
        req: Request<search::MultiIdRequest>,
    ) -> Result<Response<search::Responses>, Status> {
        self.multi("MultiSearchByID", req.into_inner().requests.into_iter().map(by_id).collect(), false).await
    }
    async fn linear_search(&self, req: Request<search::Request>) -> Result<Response<search::Response>, Status> {
        self.unary("LinearSearch", by_vector(req.into_inner()), true).await
    }
    async fn linear_search_by_id(&self, req: Request<search::IdRequest>) -> Result<Response<search::Response>, Status> {
        self.unary("LinearSearchByID", by_id(req.into_inner()), true).await
    }
    type StreamLinearSearchStream = Out<search::StreamResponse>;
    async fn stream_linear_search(
        &self,
        req: Request<Streaming<search::Request>>,
    ) -> Result<Response<Self::StreamLinearSearchStream>, Status> {
        self.stream("StreamLinearSearch", req.into_inner(), by_vector, true)
    }
    type StreamLinearSearchByIDStream = Out<search::StreamResponse>;
    async fn stream_linear_search_by_id(
        &self,
        req: Request<Streaming<search::IdRequest>>,
    ) -> Result<Response<Self::StreamLinearSearchByIDStream>, Status> {
        self.stream("StreamLinearSearchByID", req.into_inner(), by_id, true)
    }
    async fn multi_linear_search(
        &self,
        req: Request<search::MultiRequest>,
    ) -> Result<Response<search::Responses>, Status> {
        self.multi("MultiLinearSearch", req.into_inner().requests.into_iter().map(by_vector).collect(), true).await
    }
    async fn multi_linear_search_by_id(
        &self,
        req: Request<search::MultiIdRequest>,
    ) -> Result<Response<search::Responses>, Status> {
        self.multi("MultiLinearSearchByID", req.into_inner().requests.into_iter().map(by_id).collect(), true).await
    }
}
