//! vald.v1.Filter: the twelve object RPCs. Objects become vectors on the vectorizer, then
//! follow the same paths as the vector RPCs.

use std::sync::Arc;
use std::time::Instant;

use kim_proto::payload::v1::{insert, object, search, update, upsert};
use kim_proto::vald::v1::filter_server::Filter;
use tonic::{Request, Response, Status, Streaming};

use super::ops::{SearchReq, Service, WriteReq};
use super::Gateway;
use crate::online::Out;

async fn write<R: Into<WriteReq>>(gw: Arc<Gateway>, rpc: &'static str, r: R) -> Result<object::Location, Status> {
    gw.write_logged(rpc, r.into()).await
}

#[tonic::async_trait]
impl Filter for Service {
    async fn search_object(&self, req: Request<search::ObjectRequest>) -> Result<Response<search::Response>, Status> {
        let t = Instant::now();
        let r = self.0.search(SearchReq::object(req.into_inner())).await;
        self.done("SearchObject", t, r)
    }
    async fn multi_search_object(
        &self,
        req: Request<search::MultiObjectRequest>,
    ) -> Result<Response<search::Responses>, Status> {
        let t = Instant::now();
        let r = self.0.multi_search(req.into_inner().requests.into_iter().map(SearchReq::object).collect()).await;
        self.done("MultiSearchObject", t, r)
    }
    type StreamSearchObjectStream = Out<search::StreamResponse>;
    async fn stream_search_object(
        &self,
        req: Request<Streaming<search::ObjectRequest>>,
    ) -> Result<Response<Self::StreamSearchObjectStream>, Status> {
        Ok(Response::new(self.stream_search("StreamSearchObject", req.into_inner(), SearchReq::object)))
    }

    async fn insert_object(&self, req: Request<insert::ObjectRequest>) -> Result<Response<object::Location>, Status> {
        self.0.write_logged("InsertObject", req.into_inner().into()).await.map(Response::new)
    }
    type StreamInsertObjectStream = Out<object::StreamLocation>;
    async fn stream_insert_object(
        &self,
        req: Request<Streaming<insert::ObjectRequest>>,
    ) -> Result<Response<Self::StreamInsertObjectStream>, Status> {
        Ok(Response::new(self.stream_locations("StreamInsertObject", req.into_inner(), write)))
    }
    async fn multi_insert_object(
        &self,
        req: Request<insert::MultiObjectRequest>,
    ) -> Result<Response<object::Locations>, Status> {
        let t = Instant::now();
        let r = self.0.multi_writes("MultiInsertObject.item", req.into_inner().requests).await;
        self.done("MultiInsertObject", t, r)
    }

    async fn update_object(&self, req: Request<update::ObjectRequest>) -> Result<Response<object::Location>, Status> {
        self.0.write_logged("UpdateObject", req.into_inner().into()).await.map(Response::new)
    }
    type StreamUpdateObjectStream = Out<object::StreamLocation>;
    async fn stream_update_object(
        &self,
        req: Request<Streaming<update::ObjectRequest>>,
    ) -> Result<Response<Self::StreamUpdateObjectStream>, Status> {
        Ok(Response::new(self.stream_locations("StreamUpdateObject", req.into_inner(), write)))
    }
    async fn multi_update_object(
        &self,
        req: Request<update::MultiObjectRequest>,
    ) -> Result<Response<object::Locations>, Status> {
        let t = Instant::now();
        let r = self.0.multi_writes("MultiUpdateObject.item", req.into_inner().requests).await;
        self.done("MultiUpdateObject", t, r)
    }

    async fn upsert_object(&self, req: Request<upsert::ObjectRequest>) -> Result<Response<object::Location>, Status> {
        self.0.write_logged("UpsertObject", req.into_inner().into()).await.map(Response::new)
    }
    type StreamUpsertObjectStream = Out<object::StreamLocation>;
    async fn stream_upsert_object(
        &self,
        req: Request<Streaming<upsert::ObjectRequest>>,
    ) -> Result<Response<Self::StreamUpsertObjectStream>, Status> {
        Ok(Response::new(self.stream_locations("StreamUpsertObject", req.into_inner(), write)))
    }
    async fn multi_upsert_object(
        &self,
        req: Request<upsert::MultiObjectRequest>,
    ) -> Result<Response<object::Locations>, Status> {
        let t = Instant::now();
        let r = self.0.multi_writes("MultiUpsertObject.item", req.into_inner().requests).await;
        self.done("MultiUpsertObject", t, r)
    }
}
