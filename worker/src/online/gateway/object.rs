//! vald.v1 Object on the gateway: Exists, GetObject, StreamGetObject and GetTimestamp ask the
//! owners of the id (the newest version wins); StreamListObject lists every agent, each id
//! once with its newest version.

use std::time::Instant;

use kim_proto::payload::v1::object;
use kim_proto::vald::v1::object_server;
use tonic::{Request, Response, Status, Streaming};

use super::ops::Service;
use super::Gateway;
use crate::online::metrics::code_of;
use crate::online::{limits, per_message, rpc_status, Out};

impl Gateway {
    async fn get_checked(&self, id: &str) -> Result<object::Vector, Status> {
        limits::id(id)?;
        self.get(id).await
    }
}

fn vector_request_id(r: object::VectorRequest) -> String {
    r.id.map(|i| i.id).unwrap_or_default()
}

#[tonic::async_trait]
impl object_server::Object for Service {
    async fn exists(&self, req: Request<object::Id>) -> Result<Response<object::Id>, Status> {
        let t = Instant::now();
        let id = req.into_inner();
        let r = match limits::id(&id.id) {
            Ok(()) => match self.0.exists(&id.id).await {
                Ok(true) => Ok(id),
                Ok(false) => Err(Status::not_found(format!("object {} not found", id.id))),
                Err(s) => Err(s),
            },
            Err(s) => Err(s),
        };
        self.done("Exists", t, r)
    }

    async fn get_object(&self, req: Request<object::VectorRequest>) -> Result<Response<object::Vector>, Status> {
        let t = Instant::now();
        let r = self.0.get_checked(&vector_request_id(req.into_inner())).await;
        self.done("GetObject", t, r)
    }

    type StreamGetObjectStream = Out<object::StreamVector>;
    async fn stream_get_object(
        &self,
        req: Request<Streaming<object::VectorRequest>>,
    ) -> Result<Response<Self::StreamGetObjectStream>, Status> {
        let gw = self.0.clone();
        let concurrency = gw.stream_concurrency;
        Ok(Response::new(per_message(req.into_inner(), concurrency, move |r: object::VectorRequest| {
            let gw = gw.clone();
            async move {
                let t = Instant::now();
                let r = gw.get_checked(&vector_request_id(r)).await;
                gw.metrics.observe("StreamGetObject", code_of(&r), t);
                let payload = match r {
                    Ok(v) => object::stream_vector::Payload::Vector(v),
                    Err(s) => object::stream_vector::Payload::Status(rpc_status(&s)),
                };
                object::StreamVector { payload: Some(payload) }
            }
        })))
    }

    type StreamListObjectStream = Out<object::list::Response>;
    async fn stream_list_object(
        &self,
        _req: Request<object::list::Request>,
    ) -> Result<Response<Self::StreamListObjectStream>, Status> {
        let t = Instant::now();
        let r = self.0.list().await;
        self.0.metrics.observe("StreamListObject", code_of(&r), t);
        let items = r?
            .into_iter()
            .map(|v| Ok(object::list::Response { payload: Some(object::list::response::Payload::Vector(v)) }));
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    async fn get_timestamp(
        &self,
        req: Request<object::TimestampRequest>,
    ) -> Result<Response<object::Timestamp>, Status> {
        let t = Instant::now();
        let id = req.into_inner().id.map(|i| i.id).unwrap_or_default();
        let r = self.0.get_checked(&id).await.map(|v| object::Timestamp { id: v.id, timestamp: v.timestamp });
        self.done("GetTimestamp", t, r)
    }
}
