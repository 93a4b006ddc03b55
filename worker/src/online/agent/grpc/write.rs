//! vald.v1 Insert, Update (with UpdateTimestamp), Upsert and Remove (with RemoveByTimestamp).

use std::time::Instant;

use kim_proto::payload::v1::{insert, object, remove, update, upsert};
use kim_proto::vald::v1::{insert_server, remove_server, update_server, upsert_server};
use tonic::{Request, Response, Status, Streaming};

use super::AgentService;
use crate::online::agent::engine::{Mode, Write};
use crate::online::limits;
use crate::online::{multi_error, now_nanos, Out};

/// Vector, config timestamp and skip_strict_exist_check of a write request.
type Parts = (Option<object::Vector>, i64, bool);

fn insert_parts(r: insert::Request) -> Parts {
    let c = r.config.unwrap_or_default();
    (r.vector, c.timestamp, c.skip_strict_exist_check)
}
fn update_parts(r: update::Request) -> Parts {
    let c = r.config.unwrap_or_default();
    (r.vector, c.timestamp, c.skip_strict_exist_check)
}
fn upsert_parts(r: upsert::Request) -> Parts {
    let c = r.config.unwrap_or_default();
    (r.vector, c.timestamp, c.skip_strict_exist_check)
}

impl AgentService {
    fn put(&self, mode: Mode, (vector, ts, skip): Parts) -> Result<Write, Status> {
        self.rules.put(mode, vector, ts, skip, now_nanos())
    }
    fn insert_write(&self, r: insert::Request) -> Result<Write, Status> {
        self.put(Mode::Insert, insert_parts(r))
    }
    fn update_write(&self, r: update::Request) -> Result<Write, Status> {
        self.put(Mode::Update, update_parts(r))
    }
    fn upsert_write(&self, r: upsert::Request) -> Result<Write, Status> {
        self.put(Mode::Upsert, upsert_parts(r))
    }
    fn remove_write(&self, r: remove::Request) -> Result<Write, Status> {
        self.rules.remove(r)
    }

    /// Removes every object whose timestamp meets all conditions. Each removal is
    /// conditional on the timestamp it was selected by, so an object rewritten meanwhile
    /// stays. NOT_FOUND when nothing matched.
    async fn remove_by_timestamp(&self, r: remove::TimestampRequest) -> Result<object::Locations, Status> {
        let conds = limits::timestamp_conditions(&r)?;
        let picked: Vec<Result<Write, Status>> = {
            let st = self.engine.state.read().unwrap();
            st.objects
                .iter()
                .filter(|(_, o)| limits::timestamp_matches(&conds, o.timestamp))
                .map(|(id, o)| {
                    Ok(Write {
                        mode: Mode::Remove,
                        id: id.clone(),
                        vector: Vec::new(),
                        timestamp: o.timestamp,
                        skip_exist_check: false,
                    })
                })
                .collect()
        };
        let total = picked.len();
        let (locations, failures) = self.write_each(picked).await;
        let failures: Vec<_> = failures.into_iter().filter(|f| f.2.code() != tonic::Code::NotFound).collect();
        if !failures.is_empty() {
            return Err(multi_error(total, &failures));
        }
        if locations.is_empty() {
            return Err(Status::not_found("no object matches the timestamp conditions"));
        }
        Ok(object::Locations { locations })
    }
}

#[tonic::async_trait]
impl insert_server::Insert for AgentService {
    async fn insert(&self, req: Request<insert::Request>) -> Result<Response<object::Location>, Status> {
        let t = Instant::now();
        let r = self.write_one(self.insert_write(req.into_inner())).await;
        self.done("Insert", t, r)
    }
    type StreamInsertStream = Out<object::StreamLocation>;
    async fn stream_insert(
        &self,
        req: Request<Streaming<insert::Request>>,
    ) -> Result<Response<Self::StreamInsertStream>, Status> {
        Ok(Response::new(self.stream_writes("StreamInsert", req.into_inner(), Self::insert_write)))
    }
    async fn multi_insert(&self, req: Request<insert::MultiRequest>) -> Result<Response<object::Locations>, Status> {
        let t = Instant::now();
        let ws = req.into_inner().requests.into_iter().map(|r| self.insert_write(r)).collect();
        let r = self.write_many(ws).await;
        self.done("MultiInsert", t, r)
    }
}

#[tonic::async_trait]
impl update_server::Update for AgentService {
    async fn update(&self, req: Request<update::Request>) -> Result<Response<object::Location>, Status> {
        let t = Instant::now();
        let r = self.write_one(self.update_write(req.into_inner())).await;
        self.done("Update", t, r)
    }
    type StreamUpdateStream = Out<object::StreamLocation>;
    async fn stream_update(
        &self,
        req: Request<Streaming<update::Request>>,
    ) -> Result<Response<Self::StreamUpdateStream>, Status> {
        Ok(Response::new(self.stream_writes("StreamUpdate", req.into_inner(), Self::update_write)))
    }
    async fn multi_update(&self, req: Request<update::MultiRequest>) -> Result<Response<object::Locations>, Status> {
        let t = Instant::now();
        let ws = req.into_inner().requests.into_iter().map(|r| self.update_write(r)).collect();
        let r = self.write_many(ws).await;
        self.done("MultiUpdate", t, r)
    }
    async fn update_timestamp(
        &self,
        req: Request<update::TimestampRequest>,
    ) -> Result<Response<object::Location>, Status> {
        let t = Instant::now();
        let r = req.into_inner();
        let r = self.write_one(self.rules.touch(r.id, r.timestamp, r.force)).await;
        self.done("UpdateTimestamp", t, r)
    }
}

#[tonic::async_trait]
impl upsert_server::Upsert for AgentService {
    async fn upsert(&self, req: Request<upsert::Request>) -> Result<Response<object::Location>, Status> {
        let t = Instant::now();
        let r = self.write_one(self.upsert_write(req.into_inner())).await;
        self.done("Upsert", t, r)
    }
    type StreamUpsertStream = Out<object::StreamLocation>;
    async fn stream_upsert(
        &self,
        req: Request<Streaming<upsert::Request>>,
    ) -> Result<Response<Self::StreamUpsertStream>, Status> {
        Ok(Response::new(self.stream_writes("StreamUpsert", req.into_inner(), Self::upsert_write)))
    }
    async fn multi_upsert(&self, req: Request<upsert::MultiRequest>) -> Result<Response<object::Locations>, Status> {
        let t = Instant::now();
        let ws = req.into_inner().requests.into_iter().map(|r| self.upsert_write(r)).collect();
        let r = self.write_many(ws).await;
        self.done("MultiUpsert", t, r)
    }
}

#[tonic::async_trait]
impl remove_server::Remove for AgentService {
    async fn remove(&self, req: Request<remove::Request>) -> Result<Response<object::Location>, Status> {
        let t = Instant::now();
        let r = self.write_one(self.remove_write(req.into_inner())).await;
        self.done("Remove", t, r)
    }
    type StreamRemoveStream = Out<object::StreamLocation>;
    async fn stream_remove(
        &self,
        req: Request<Streaming<remove::Request>>,
    ) -> Result<Response<Self::StreamRemoveStream>, Status> {
        Ok(Response::new(self.stream_writes("StreamRemove", req.into_inner(), Self::remove_write)))
    }
    async fn multi_remove(&self, req: Request<remove::MultiRequest>) -> Result<Response<object::Locations>, Status> {
        let t = Instant::now();
        let ws = req.into_inner().requests.into_iter().map(|r| self.remove_write(r)).collect();
        let r = self.write_many(ws).await;
        self.done("MultiRemove", t, r)
    }
    async fn remove_by_timestamp(
        &self,
        req: Request<remove::TimestampRequest>,
    ) -> Result<Response<object::Locations>, Status> {
        let t = Instant::now();
        let r = self.remove_by_timestamp(req.into_inner()).await;
        self.done("RemoveByTimestamp", t, r)
    }
}
