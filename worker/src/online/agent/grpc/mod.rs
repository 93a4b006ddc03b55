//! The agent's gRPC services, all over one [`Engine`]: vald.v1 Insert, Update, Upsert, Remove
//! (`write`), Search (`search`), Object (`objects`), Index, Flush and core.v1 Agent (`index`).

mod index;
mod objects;
mod search;
mod write;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use kim_proto::payload::v1::{self as pb, object};
use tonic::{Response, Status, Streaming};

use super::engine::{Engine, Write, WriteError};
use super::request::Rules;
use crate::online::metrics::{code_of, Metrics};
use crate::online::{multi_error, per_message, rpc_status, Out};

#[derive(Clone)]
pub struct AgentService {
    pub engine: Arc<Engine>,
    pub metrics: Arc<Metrics>,
    /// Object.Location name and address.
    pub name: Arc<str>,
    pub ip: Arc<str>,
    pub rules: Rules,
}

impl From<WriteError> for Status {
    fn from(e: WriteError) -> Status {
        match e {
            WriteError::AlreadyExists(_) | WriteError::NotNewer { .. } => Status::already_exists(e.to_string()),
            WriteError::NotFound(_) => Status::not_found(e.to_string()),
            WriteError::Durability(_) => Status::internal(e.to_string()),
            WriteError::Closed => Status::unavailable(e.to_string()),
        }
    }
}

impl AgentService {
    fn done<T>(&self, rpc: &'static str, t: Instant, r: Result<T, Status>) -> Result<Response<T>, Status> {
        self.metrics.observe(rpc, code_of(&r), t);
        r.map(Response::new)
    }

    fn location(&self, id: String) -> object::Location {
        object::Location { name: self.name.to_string(), uuid: id, ips: vec![self.ip.to_string()] }
    }

    async fn write_one(&self, w: Result<Write, Status>) -> Result<object::Location, Status> {
        let w = w?;
        let id = w.id.clone();
        let r = self.engine.write(vec![w]).await.pop().expect("one result per write");
        tracing::debug!(id = %id, ok = r.is_ok(), "write");
        r.map(|_| self.location(id)).map_err(Status::from)
    }

    /// Applies every valid write; Ok(locations) or the Multi* error naming the failed items.
    async fn write_many(&self, ws: Vec<Result<Write, Status>>) -> Result<object::Locations, Status> {
        let total = ws.len();
        let (locations, failures) = self.write_each(ws).await;
        if failures.is_empty() {
            Ok(object::Locations { locations })
        } else {
            Err(multi_error(total, &failures))
        }
    }

    /// Applies every valid write: the locations written and the failures (index, id, status).
    async fn write_each(
        &self,
        ws: Vec<Result<Write, Status>>,
    ) -> (Vec<object::Location>, Vec<(usize, String, Status)>) {
        let mut failures = Vec::new();
        let mut valid = Vec::new();
        for (i, w) in ws.into_iter().enumerate() {
            match w {
                Ok(w) => valid.push((i, w)),
                Err(s) => failures.push((i, String::new(), s)),
            }
        }
        let ids: Vec<(usize, String)> = valid.iter().map(|(i, w)| (*i, w.id.clone())).collect();
        let results = self.engine.write(valid.into_iter().map(|(_, w)| w).collect()).await;
        let mut locations = Vec::new();
        for ((i, id), r) in ids.into_iter().zip(results) {
            match r {
                Ok(()) => locations.push(self.location(id)),
                Err(e) => failures.push((i, id, e.into())),
            }
        }
        failures.sort_by_key(|f| f.0);
        (locations, failures)
    }

    /// A write stream: messages applied in order, each answered, failures in-band.
    fn stream_writes<Req: Send + 'static>(
        &self,
        rpc: &'static str,
        input: Streaming<Req>,
        to: fn(&AgentService, Req) -> Result<Write, Status>,
    ) -> Out<object::StreamLocation> {
        let me = self.clone();
        per_message(input, 1, move |req| {
            let me = me.clone();
            async move {
                let t = Instant::now();
                let r = me.write_one(to(&me, req)).await;
                me.metrics.observe(rpc, code_of(&r), t);
                let payload = match r {
                    Ok(l) => object::stream_location::Payload::Location(l),
                    Err(s) => object::stream_location::Payload::Status(rpc_status(&s)),
                };
                object::StreamLocation { payload: Some(payload) }
            }
        })
    }

    fn count(&self) -> pb::info::index::Count {
        let st = self.engine.state.read().unwrap();
        let uncommitted = st.uncommitted();
        pb::info::index::Count {
            stored: (st.objects.len() - uncommitted) as u32,
            uncommitted: uncommitted as u32,
            indexing: self.engine.indexing.load(Ordering::SeqCst),
            saving: self.engine.saving.load(Ordering::SeqCst),
        }
    }

    fn vector_of(&self, id: &str) -> Option<object::Vector> {
        let st = self.engine.state.read().unwrap();
        let timestamp = st.objects.get(id)?.timestamp;
        st.vector_of(id).map(|v| object::Vector { id: id.to_string(), vector: v.to_vec(), timestamp })
    }
}
