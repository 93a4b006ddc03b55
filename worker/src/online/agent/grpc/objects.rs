//! vald.v1 Object: Exists, GetObject, StreamGetObject, StreamListObject and GetTimestamp.

use std::time::Instant;

use kim_proto::payload::v1::object;
use kim_proto::vald::v1::object_server;
use tonic::{Request, Response, Status, Streaming};

use super::AgentService;
use crate::online::metrics::code_of;
use crate::online::{limits, per_message, rpc_status, Out};

fn not_found(id: &str) -> Status {
    Status::not_found(format!("object {id} not found"))
}

impl AgentService {
    fn get(&self, r: object::VectorRequest) -> Result<object::Vector, Status> {
        let id = r.id.map(|i| i.id).unwrap_or_default();
        limits::id(&id)?;
        self.vector_of(&id).ok_or_else(|| not_found(&id))
    }
}

#[tonic::async_trait]
impl object_server::Object for AgentService {
    async fn exists(&self, req: Request<object::Id>) -> Result<Response<object::Id>, Status> {
        let t = Instant::now();
        let id = req.into_inner();
        let r = limits::id(&id.id).and_then(|_| {
            if self.engine.state.read().unwrap().objects.contains_key(&id.id) {
                Ok(id)
            } else {
                Err(not_found(&id.id))
            }
        });
        self.done("Exists", t, r)
    }

    async fn get_object(&self, req: Request<object::VectorRequest>) -> Result<Response<object::Vector>, Status> {
        let t = Instant::now();
        let r = self.get(req.into_inner());
        self.done("GetObject", t, r)
    }

    type StreamGetObjectStream = Out<object::StreamVector>;
    async fn stream_get_object(
        &self,
        req: Request<Streaming<object::VectorRequest>>,
    ) -> Result<Response<Self::StreamGetObjectStream>, Status> {
        let me = self.clone();
        Ok(Response::new(per_message(req.into_inner(), 1, move |r: object::VectorRequest| {
            let t = Instant::now();
            let r = me.get(r);
            me.metrics.observe("StreamGetObject", code_of(&r), t);
            let payload = match r {
                Ok(v) => object::stream_vector::Payload::Vector(v),
                Err(s) => object::stream_vector::Payload::Status(rpc_status(&s)),
            };
            futures::future::ready(object::StreamVector { payload: Some(payload) })
        })))
    }

    type StreamListObjectStream = Out<object::list::Response>;
    async fn stream_list_object(
        &self,
        _req: Request<object::list::Request>,
    ) -> Result<Response<Self::StreamListObjectStream>, Status> {
        let t = Instant::now();
        // A consistent point-in-time view (vectors stay where they are held); each message
        // copies one vector.
        let live = self.engine.state.read().unwrap().live();
        self.metrics.observe("StreamListObject", tonic::Code::Ok, t);
        let items = (0..live.rows.len()).map(move |i| {
            let (id, o) = &live.rows[i];
            Ok(object::list::Response {
                payload: Some(object::list::response::Payload::Vector(object::Vector {
                    id: id.clone(),
                    vector: live.vector(o).to_vec(),
                    timestamp: o.timestamp,
                })),
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    async fn get_timestamp(
        &self,
        req: Request<object::TimestampRequest>,
    ) -> Result<Response<object::Timestamp>, Status> {
        let t = Instant::now();
        let id = req.into_inner().id.map(|i| i.id).unwrap_or_default();
        let r = limits::id(&id).and_then(|_| {
            let st = self.engine.state.read().unwrap();
            let ts = st.objects.get(&id).map(|o| o.timestamp);
            ts.map(|timestamp| object::Timestamp { id: id.clone(), timestamp }).ok_or_else(|| not_found(&id))
        });
        self.done("GetTimestamp", t, r)
    }
}
