//! The agent's gRPC services: vald.v1 Insert, Update, Upsert, Remove, Search, Object, Index,
//! Flush and core.v1 Agent, all over one [`Engine`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use kim_proto::agent::v1::agent_server::Agent;
use kim_proto::payload::v1::{self as pb, object, search};
use kim_proto::vald::v1::{
    flush_server, index_server, insert_server, object_server, remove_server, search_server, update_server,
    upsert_server,
};
use tonic::{Request, Response, Status, Streaming};

use super::engine::{Engine, Mode, Write, WriteError};
use super::request::Rules;
use crate::online::limits;
use crate::online::metrics::{code_of, Metrics};
use crate::online::{multi_error, now_nanos, per_message, rpc_status, Out};

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
            WriteError::AlreadyExists(_) => Status::already_exists(e.to_string()),
            WriteError::NotFound(_) => Status::not_found(e.to_string()),
            WriteError::NotNewer { .. } => Status::already_exists(e.to_string()),
            WriteError::Durability(_) => Status::internal(e.to_string()),
            WriteError::Closed => Status::unavailable(e.to_string()),
        }
    }
}

/// A write request in engine terms: (vector, timestamp from config, skip check).
type Parts = (Option<pb::object::Vector>, i64, bool);

impl AgentService {
    fn done<T>(&self, rpc: &'static str, t: Instant, r: Result<T, Status>) -> Result<Response<T>, Status> {
        self.metrics.observe(rpc, code_of(&r), t);
        r.map(Response::new)
    }

    fn location(&self, id: String) -> pb::object::Location {
        pb::object::Location { name: self.name.to_string(), uuid: id, ips: vec![self.ip.to_string()] }
    }

    /// Checks a vector write and turns it into an engine write.
    fn to_write(&self, mode: Mode, (vector, cfg_ts, skip): Parts) -> Result<Write, Status> {
        self.rules.put(mode, vector, cfg_ts, skip, now_nanos())
    }

    fn remove_write(&self, r: pb::remove::Request) -> Result<Write, Status> {
        self.rules.remove(r)
    }

    async fn write_one(&self, w: Result<Write, Status>) -> Result<pb::object::Location, Status> {
        let w = w?;
        let id = w.id.clone();
        let r = self.engine.write(vec![w]).await.pop().expect("one result per write");
        tracing::debug!(id = %id, ok = r.is_ok(), "write");
        r.map(|_| self.location(id)).map_err(Status::from)
    }

    async fn write_many(&self, ws: Vec<Result<Write, Status>>) -> Result<pb::object::Locations, Status> {
        let total = ws.len();
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
        if failures.is_empty() {
            Ok(pb::object::Locations { locations })
        } else {
            failures.sort_by_key(|f| f.0);
            Err(multi_error(total, &failures))
        }
    }

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

    async fn search(
        &self,
        vector: Vec<f32>,
        cfg: Option<search::Config>,
        exact: bool,
    ) -> Result<search::Response, Status> {
        let plan = self.rules.plan(&vector, cfg.as_ref())?;
        let (engine, rules) = (self.engine.clone(), self.rules);
        let request_id = cfg.map(|c| c.request_id).unwrap_or_default();
        let results =
            tokio::task::spawn_blocking(move || rules.search(&engine.state.read().unwrap(), &plan, &vector, exact))
                .await
                .map_err(|e| Status::internal(e.to_string()))??;
        tracing::debug!(request_id = %request_id, results = results.len(), "search");
        Ok(search::Response { request_id, results })
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

fn insert_parts(r: pb::insert::Request) -> Parts {
    let c = r.config.unwrap_or_default();
    (r.vector, c.timestamp, c.skip_strict_exist_check)
}
fn update_parts(r: pb::update::Request) -> Parts {
    let c = r.config.unwrap_or_default();
    (r.vector, c.timestamp, c.skip_strict_exist_check)
}
fn upsert_parts(r: pb::upsert::Request) -> Parts {
    let c = r.config.unwrap_or_default();
    (r.vector, c.timestamp, c.skip_strict_exist_check)
}

#[tonic::async_trait]
impl insert_server::Insert for AgentService {
    async fn insert(&self, req: Request<pb::insert::Request>) -> Result<Response<object::Location>, Status> {
        let t = Instant::now();
        let r = self.write_one(self.to_write(Mode::Insert, insert_parts(req.into_inner()))).await;
        self.done("Insert", t, r)
    }
    type StreamInsertStream = Out<object::StreamLocation>;
    async fn stream_insert(
        &self,
        req: Request<Streaming<pb::insert::Request>>,
    ) -> Result<Response<Self::StreamInsertStream>, Status> {
        Ok(Response::new(
            self.stream_writes("StreamInsert", req.into_inner(), |s, r| s.to_write(Mode::Insert, insert_parts(r))),
        ))
    }
    async fn multi_insert(
        &self,
        req: Request<pb::insert::MultiRequest>,
    ) -> Result<Response<object::Locations>, Status> {
        let t = Instant::now();
        let ws = req.into_inner().requests.into_iter().map(|r| self.to_write(Mode::Insert, insert_parts(r))).collect();
        let r = self.write_many(ws).await;
        self.done("MultiInsert", t, r)
    }
}

#[tonic::async_trait]
impl update_server::Update for AgentService {
    async fn update(&self, req: Request<pb::update::Request>) -> Result<Response<object::Location>, Status> {
        let t = Instant::now();
        let r = self.write_one(self.to_write(Mode::Update, update_parts(req.into_inner()))).await;
        self.done("Update", t, r)
    }
    type StreamUpdateStream = Out<object::StreamLocation>;
    async fn stream_update(
        &self,
        req: Request<Streaming<pb::update::Request>>,
    ) -> Result<Response<Self::StreamUpdateStream>, Status> {
        Ok(Response::new(
            self.stream_writes("StreamUpdate", req.into_inner(), |s, r| s.to_write(Mode::Update, update_parts(r))),
        ))
    }
    async fn multi_update(
        &self,
        req: Request<pb::update::MultiRequest>,
    ) -> Result<Response<object::Locations>, Status> {
        let t = Instant::now();
        let ws = req.into_inner().requests.into_iter().map(|r| self.to_write(Mode::Update, update_parts(r))).collect();
        let r = self.write_many(ws).await;
        self.done("MultiUpdate", t, r)
    }
}

#[tonic::async_trait]
impl upsert_server::Upsert for AgentService {
    async fn upsert(&self, req: Request<pb::upsert::Request>) -> Result<Response<object::Location>, Status> {
        let t = Instant::now();
        let r = self.write_one(self.to_write(Mode::Upsert, upsert_parts(req.into_inner()))).await;
        self.done("Upsert", t, r)
    }
    type StreamUpsertStream = Out<object::StreamLocation>;
    async fn stream_upsert(
        &self,
        req: Request<Streaming<pb::upsert::Request>>,
    ) -> Result<Response<Self::StreamUpsertStream>, Status> {
        Ok(Response::new(
            self.stream_writes("StreamUpsert", req.into_inner(), |s, r| s.to_write(Mode::Upsert, upsert_parts(r))),
        ))
    }
    async fn multi_upsert(
        &self,
        req: Request<pb::upsert::MultiRequest>,
    ) -> Result<Response<object::Locations>, Status> {
        let t = Instant::now();
        let ws = req.into_inner().requests.into_iter().map(|r| self.to_write(Mode::Upsert, upsert_parts(r))).collect();
        let r = self.write_many(ws).await;
        self.done("MultiUpsert", t, r)
    }
}

#[tonic::async_trait]
impl remove_server::Remove for AgentService {
    async fn remove(&self, req: Request<pb::remove::Request>) -> Result<Response<object::Location>, Status> {
        let t = Instant::now();
        let r = self.write_one(self.remove_write(req.into_inner())).await;
        self.done("Remove", t, r)
    }
    type StreamRemoveStream = Out<object::StreamLocation>;
    async fn stream_remove(
        &self,
        req: Request<Streaming<pb::remove::Request>>,
    ) -> Result<Response<Self::StreamRemoveStream>, Status> {
        Ok(Response::new(self.stream_writes("StreamRemove", req.into_inner(), |s, r| s.remove_write(r))))
    }
    async fn multi_remove(
        &self,
        req: Request<pb::remove::MultiRequest>,
    ) -> Result<Response<object::Locations>, Status> {
        let t = Instant::now();
        let ws = req.into_inner().requests.into_iter().map(|r| self.remove_write(r)).collect();
        let r = self.write_many(ws).await;
        self.done("MultiRemove", t, r)
    }
}

#[tonic::async_trait]
impl search_server::Search for AgentService {
    async fn search(&self, req: Request<search::Request>) -> Result<Response<search::Response>, Status> {
        let t = Instant::now();
        let r = req.into_inner();
        let r = self.search(r.vector, r.config, false).await;
        self.done("Search", t, r)
    }
    async fn search_by_id(&self, req: Request<search::IdRequest>) -> Result<Response<search::Response>, Status> {
        let t = Instant::now();
        let r = req.into_inner();
        let r = match limits::id(&r.id).map(|_| self.vector_of(&r.id)) {
            Ok(Some(v)) => self.search(v.vector, r.config, false).await,
            Ok(None) => Err(Status::not_found(format!("object {} not found", r.id))),
            Err(s) => Err(s),
        };
        self.done("SearchByID", t, r)
    }
    type StreamSearchStream = Out<search::StreamResponse>;
    async fn stream_search(
        &self,
        req: Request<Streaming<search::Request>>,
    ) -> Result<Response<Self::StreamSearchStream>, Status> {
        let me = self.clone();
        Ok(Response::new(per_message(req.into_inner(), 4, move |r: search::Request| {
            let me = me.clone();
            async move {
                let t = Instant::now();
                let r = me.search(r.vector, r.config, false).await;
                me.metrics.observe("StreamSearch", code_of(&r), t);
                let payload = match r {
                    Ok(resp) => search::stream_response::Payload::Response(resp),
                    Err(s) => search::stream_response::Payload::Status(rpc_status(&s)),
                };
                search::StreamResponse { payload: Some(payload) }
            }
        })))
    }
    async fn multi_search(&self, req: Request<search::MultiRequest>) -> Result<Response<search::Responses>, Status> {
        let t = Instant::now();
        let reqs = req.into_inner().requests;
        let total = reqs.len();
        let mut responses = Vec::with_capacity(total);
        let mut failures = Vec::new();
        for (i, r) in reqs.into_iter().enumerate() {
            let rid = r.config.as_ref().map(|c| c.request_id.clone()).unwrap_or_default();
            match self.search(r.vector, r.config, false).await {
                Ok(resp) => responses.push(resp),
                Err(s) => failures.push((i, rid, s)),
            }
        }
        let r =
            if failures.is_empty() { Ok(search::Responses { responses }) } else { Err(multi_error(total, &failures)) };
        self.done("MultiSearch", t, r)
    }
    async fn linear_search(&self, req: Request<search::Request>) -> Result<Response<search::Response>, Status> {
        let t = Instant::now();
        let r = req.into_inner();
        let r = self.search(r.vector, r.config, true).await;
        self.done("LinearSearch", t, r)
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
                Err(Status::not_found(format!("object {} not found", id.id)))
            }
        });
        self.done("Exists", t, r)
    }
    async fn get_object(&self, req: Request<object::VectorRequest>) -> Result<Response<object::Vector>, Status> {
        let t = Instant::now();
        let id = req.into_inner().id.map(|i| i.id).unwrap_or_default();
        let r = limits::id(&id)
            .and_then(|_| self.vector_of(&id).ok_or_else(|| Status::not_found(format!("object {id} not found"))));
        self.done("GetObject", t, r)
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
}

#[tonic::async_trait]
impl index_server::Index for AgentService {
    async fn index_info(&self, _req: Request<pb::Empty>) -> Result<Response<pb::info::index::Count>, Status> {
        let t = Instant::now();
        let r = Ok(self.count());
        self.done("IndexInfo", t, r)
    }
}

#[tonic::async_trait]
impl flush_server::Flush for AgentService {
    async fn flush(&self, _req: Request<pb::flush::Request>) -> Result<Response<pb::info::index::Count>, Status> {
        let t = Instant::now();
        let r = self.engine.flush().await.map(|_| self.count()).map_err(Status::from);
        self.done("Flush", t, r)
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn create_index(
        &self,
        _req: Request<pb::control::CreateIndexRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
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
        _req: Request<pb::control::CreateIndexRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let t = Instant::now();
        let r = self.engine.create_index(true).await.map(|_| pb::Empty {}).map_err(|e| Status::internal(e.to_string()));
        self.done("CreateAndSaveIndex", t, r)
    }
}
