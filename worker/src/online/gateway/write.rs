//! vald.v1 Insert, Update, Upsert (by vector; unary, Multi, Stream; UpdateTimestamp) and
//! Remove (unary, Multi, Stream, RemoveByTimestamp) on the gateway: writes and removes go to
//! the owners of each id.

use std::sync::Arc;
use std::time::Instant;

use kim_proto::payload::v1::{insert, object, remove, update, upsert};
use kim_proto::vald::v1::{insert_server, remove_server, update_server, upsert_server};
use tonic::{Request, Response, Status, Streaming};

use super::ops::{Service, WriteReq};
use super::Gateway;
use crate::online::limits;
use crate::online::metrics::code_of;
use crate::online::Out;

async fn write<R: Into<WriteReq>>(gw: Arc<Gateway>, rpc: &'static str, r: R) -> Result<object::Location, Status> {
    gw.write_logged(rpc, r.into()).await
}

async fn remove(gw: Arc<Gateway>, rpc: &'static str, r: remove::Request) -> Result<object::Location, Status> {
    gw.remove_logged(rpc, r).await
}

fn remove_id(r: &remove::Request) -> String {
    r.id.as_ref().map(|i| i.id.clone()).unwrap_or_default()
}

impl Gateway {
    async fn remove_logged(&self, rpc: &'static str, r: remove::Request) -> Result<object::Location, Status> {
        let t = Instant::now();
        let id = remove_id(&r);
        let res = match limits::id(&id) {
            Ok(()) => self.remove(r).await,
            Err(s) => Err(s),
        };
        self.metrics.observe(rpc, code_of(&res), t);
        if let Err(s) = &res {
            tracing::info!(rpc, id = %id, code = ?s.code(), error = %s.message(), "remove refused");
        }
        res
    }
}

#[tonic::async_trait]
impl insert_server::Insert for Service {
    async fn insert(&self, req: Request<insert::Request>) -> Result<Response<object::Location>, Status> {
        self.0.write_logged("Insert", req.into_inner().into()).await.map(Response::new)
    }
    type StreamInsertStream = Out<object::StreamLocation>;
    async fn stream_insert(
        &self,
        req: Request<Streaming<insert::Request>>,
    ) -> Result<Response<Self::StreamInsertStream>, Status> {
        Ok(Response::new(self.stream_locations("StreamInsert", req.into_inner(), write)))
    }
    async fn multi_insert(&self, req: Request<insert::MultiRequest>) -> Result<Response<object::Locations>, Status> {
        let t = Instant::now();
        let r = self.0.multi_writes("MultiInsert.item", req.into_inner().requests).await;
        self.done("MultiInsert", t, r)
    }
}

#[tonic::async_trait]
impl update_server::Update for Service {
    async fn update(&self, req: Request<update::Request>) -> Result<Response<object::Location>, Status> {
        self.0.write_logged("Update", req.into_inner().into()).await.map(Response::new)
    }
    type StreamUpdateStream = Out<object::StreamLocation>;
    async fn stream_update(
        &self,
        req: Request<Streaming<update::Request>>,
    ) -> Result<Response<Self::StreamUpdateStream>, Status> {
        Ok(Response::new(self.stream_locations("StreamUpdate", req.into_inner(), write)))
    }
    async fn multi_update(&self, req: Request<update::MultiRequest>) -> Result<Response<object::Locations>, Status> {
        let t = Instant::now();
        let r = self.0.multi_writes("MultiUpdate.item", req.into_inner().requests).await;
        self.done("MultiUpdate", t, r)
    }
    async fn update_timestamp(
        &self,
        req: Request<update::TimestampRequest>,
    ) -> Result<Response<object::Location>, Status> {
        let t = Instant::now();
        let r = req.into_inner();
        let r = match limits::id(&r.id) {
            Ok(()) => self.0.update_timestamp(r).await,
            Err(s) => Err(s),
        };
        self.done("UpdateTimestamp", t, r)
    }
}

#[tonic::async_trait]
impl upsert_server::Upsert for Service {
    async fn upsert(&self, req: Request<upsert::Request>) -> Result<Response<object::Location>, Status> {
        self.0.write_logged("Upsert", req.into_inner().into()).await.map(Response::new)
    }
    type StreamUpsertStream = Out<object::StreamLocation>;
    async fn stream_upsert(
        &self,
        req: Request<Streaming<upsert::Request>>,
    ) -> Result<Response<Self::StreamUpsertStream>, Status> {
        Ok(Response::new(self.stream_locations("StreamUpsert", req.into_inner(), write)))
    }
    async fn multi_upsert(&self, req: Request<upsert::MultiRequest>) -> Result<Response<object::Locations>, Status> {
        let t = Instant::now();
        let r = self.0.multi_writes("MultiUpsert.item", req.into_inner().requests).await;
        self.done("MultiUpsert", t, r)
    }
}

#[tonic::async_trait]
impl remove_server::Remove for Service {
    async fn remove(&self, req: Request<remove::Request>) -> Result<Response<object::Location>, Status> {
        self.0.remove_logged("Remove", req.into_inner()).await.map(Response::new)
    }
    type StreamRemoveStream = Out<object::StreamLocation>;
    async fn stream_remove(
        &self,
        req: Request<Streaming<remove::Request>>,
    ) -> Result<Response<Self::StreamRemoveStream>, Status> {
        Ok(Response::new(self.stream_locations("StreamRemove", req.into_inner(), remove)))
    }
    async fn multi_remove(&self, req: Request<remove::MultiRequest>) -> Result<Response<object::Locations>, Status> {
        let t = Instant::now();
        let items = req.into_inner().requests.into_iter().map(|r| (remove_id(&r), r)).collect();
        let r = self.0.multi_locations(items, |r| self.0.remove_logged("MultiRemove.item", r)).await;
        self.done("MultiRemove", t, r)
    }
    async fn remove_by_timestamp(
        &self,
        req: Request<remove::TimestampRequest>,
    ) -> Result<Response<object::Locations>, Status> {
        let t = Instant::now();
        let r = req.into_inner();
        let r = match limits::timestamp_conditions(&r) {
            Ok(_) => self.0.remove_by_timestamp(r).await,
            Err(s) => Err(s),
        };
        self.done("RemoveByTimestamp", t, r)
    }
}
