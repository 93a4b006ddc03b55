//! vald.v1 Search on the gateway: by vector or by a stored id (the vector is read from an
//! owner), approximate or linear (every agent scans every row), unary, Multi and Stream.
//! Every form fans out to all agents and merges.

use std::time::Instant;

use kim_proto::payload::v1::search;
use kim_proto::vald::v1::search_server;
use tonic::{Request, Response, Status, Streaming};

use super::ops::{SearchReq, Service};
use crate::online::Out;

fn approx(r: search::Request) -> SearchReq {
    SearchReq::vector(r, false)
}
fn approx_id(r: search::IdRequest) -> SearchReq {
    SearchReq::id(r, false)
}
fn linear(r: search::Request) -> SearchReq {
    SearchReq::vector(r, true)
}
fn linear_id(r: search::IdRequest) -> SearchReq {
    SearchReq::id(r, true)
}

impl Service {
    async fn unary(&self, rpc: &'static str, r: SearchReq) -> Result<Response<search::Response>, Status> {
        let t = Instant::now();
        let r = self.0.search(r).await;
        self.done(rpc, t, r)
    }
    async fn multi(&self, rpc: &'static str, reqs: Vec<SearchReq>) -> Result<Response<search::Responses>, Status> {
        let t = Instant::now();
        let r = self.0.multi_search(reqs).await;
        self.done(rpc, t, r)
    }
}

#[tonic::async_trait]
impl search_server::Search for Service {
    async fn search(&self, req: Request<search::Request>) -> Result<Response<search::Response>, Status> {
        self.unary("Search", approx(req.into_inner())).await
    }
    async fn search_by_id(&self, req: Request<search::IdRequest>) -> Result<Response<search::Response>, Status> {
        self.unary("SearchByID", approx_id(req.into_inner())).await
    }
    type StreamSearchStream = Out<search::StreamResponse>;
    async fn stream_search(
        &self,
        req: Request<Streaming<search::Request>>,
    ) -> Result<Response<Self::StreamSearchStream>, Status> {
        Ok(Response::new(self.stream_search("StreamSearch", req.into_inner(), approx)))
    }
    type StreamSearchByIDStream = Out<search::StreamResponse>;
    async fn stream_search_by_id(
        &self,
        req: Request<Streaming<search::IdRequest>>,
    ) -> Result<Response<Self::StreamSearchByIDStream>, Status> {
        Ok(Response::new(self.stream_search("StreamSearchByID", req.into_inner(), approx_id)))
    }
    async fn multi_search(&self, req: Request<search::MultiRequest>) -> Result<Response<search::Responses>, Status> {
        self.multi("MultiSearch", req.into_inner().requests.into_iter().map(approx).collect()).await
    }
    async fn multi_search_by_id(
        &self,
        req: Request<search::MultiIdRequest>,
    ) -> Result<Response<search::Responses>, Status> {
        self.multi("MultiSearchByID", req.into_inner().requests.into_iter().map(approx_id).collect()).await
    }
    async fn linear_search(&self, req: Request<search::Request>) -> Result<Response<search::Response>, Status> {
        self.unary("LinearSearch", linear(req.into_inner())).await
    }
    async fn linear_search_by_id(&self, req: Request<search::IdRequest>) -> Result<Response<search::Response>, Status> {
        self.unary("LinearSearchByID", linear_id(req.into_inner())).await
    }
    type StreamLinearSearchStream = Out<search::StreamResponse>;
    async fn stream_linear_search(
        &self,
        req: Request<Streaming<search::Request>>,
    ) -> Result<Response<Self::StreamLinearSearchStream>, Status> {
        Ok(Response::new(self.stream_search("StreamLinearSearch", req.into_inner(), linear)))
    }
    type StreamLinearSearchByIDStream = Out<search::StreamResponse>;
    async fn stream_linear_search_by_id(
        &self,
        req: Request<Streaming<search::IdRequest>>,
    ) -> Result<Response<Self::StreamLinearSearchByIDStream>, Status> {
        Ok(Response::new(self.stream_search("StreamLinearSearchByID", req.into_inner(), linear_id)))
    }
    async fn multi_linear_search(
        &self,
        req: Request<search::MultiRequest>,
    ) -> Result<Response<search::Responses>, Status> {
        self.multi("MultiLinearSearch", req.into_inner().requests.into_iter().map(linear).collect()).await
    }
    async fn multi_linear_search_by_id(
        &self,
        req: Request<search::MultiIdRequest>,
    ) -> Result<Response<search::Responses>, Status> {
        self.multi("MultiLinearSearchByID", req.into_inner().requests.into_iter().map(linear_id).collect()).await
    }
}
