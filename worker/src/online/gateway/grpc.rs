//! The twelve vald.v1.Filter RPCs. Unary calls return the status; Stream* calls answer every
//! message, failures in-band as google.rpc.Status, and keep going; Multi* calls apply every
//! item they can and report the ones that failed (see [`multi_error`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use kim_proto::payload::v1::{filter, insert, object, search, update, upsert};
use kim_proto::vald::v1::filter_server::Filter;
use tonic::{Request, Response, Status, Streaming};

use super::Gateway;
use crate::online::limits;
use crate::online::metrics::code_of;
use crate::online::{multi_error, now_nanos, per_message, rpc_status, Out};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Insert,
    Update,
    Upsert,
}

/// The parts of an Insert/Update/Upsert ObjectRequest the gateway acts on.
struct ObjectWrite {
    kind: Kind,
    blob: Option<object::Blob>,
    vectorizer: Option<filter::Target>,
    filters: Option<filter::Config>,
    skip_exist_check: bool,
    timestamp: i64,
}

impl From<insert::ObjectRequest> for ObjectWrite {
    fn from(r: insert::ObjectRequest) -> Self {
        let c = r.config.unwrap_or_default();
        ObjectWrite {
            kind: Kind::Insert,
            blob: r.object,
            vectorizer: r.vectorizer,
            filters: c.filters,
            skip_exist_check: c.skip_strict_exist_check,
            timestamp: c.timestamp,
        }
    }
}
impl From<update::ObjectRequest> for ObjectWrite {
    fn from(r: update::ObjectRequest) -> Self {
        let c = r.config.unwrap_or_default();
        ObjectWrite {
            kind: Kind::Update,
            blob: r.object,
            vectorizer: r.vectorizer,
            filters: c.filters,
            skip_exist_check: c.skip_strict_exist_check,
            timestamp: c.timestamp,
        }
    }
}
impl From<upsert::ObjectRequest> for ObjectWrite {
    fn from(r: upsert::ObjectRequest) -> Self {
        let c = r.config.unwrap_or_default();
        ObjectWrite {
            kind: Kind::Upsert,
            blob: r.object,
            vectorizer: r.vectorizer,
            filters: c.filters,
            skip_exist_check: c.skip_strict_exist_check,
            timestamp: c.timestamp,
        }
    }
}

impl Gateway {
    /// Vectorize, filter, search all agents, merge, egress — within the request's deadline.
    async fn search_object(&self, r: search::ObjectRequest) -> Result<search::Response, Status> {
        let plan = self.limits.search(r.config.as_ref())?;
        let mut cfg = r.config.unwrap_or_default();
        if cfg.request_id.is_empty() {
            cfg.request_id = uuid::Uuid::new_v4().to_string();
        }
        let budget = plan.timeout.unwrap_or(self.search_timeout);
        let start = Instant::now();
        let rid = cfg.request_id.clone();
        let work = async {
            let v = self.vectorize(r.vectorizer.as_ref(), &rid, r.object).await?;
            let v = self
                .ingress(cfg.ingress_filters.as_ref(), object::Vector { id: rid.clone(), vector: v, timestamp: 0 })
                .await?;
            let results = self.search_agents(v.vector, &cfg, &plan, budget.saturating_sub(start.elapsed())).await?;
            let results = self.egress(cfg.egress_filters.as_ref(), results).await?;
            plan.check_found(results.len())?;
            Ok(search::Response { request_id: rid.clone(), results })
        };
        let deadline = tokio::time::Instant::from_std(start) + budget;
        let exceeded = || Status::deadline_exceeded(format!("search {rid} exceeded its {budget:?} deadline"));
        // The timer ticks in milliseconds, so a result that arrives after a sub-millisecond
        // deadline is late too.
        let r = match tokio::time::timeout_at(deadline, work).await {
            Ok(r) if start.elapsed() <= budget => r,
            _ => Err(exceeded()),
        };
        tracing::debug!(request_id = %rid, code = ?code_of(&r), results = r.as_ref().map_or(0, |x| x.results.len()), secs = start.elapsed().as_secs_f64(), "search");
        r
    }

    /// Vectorize, filter, check existence as the kind requires, write to the owners.
    async fn write_object(&self, w: ObjectWrite) -> Result<object::Location, Status> {
        let blob = w.blob.ok_or_else(|| Status::invalid_argument("request has no object"))?;
        limits::id(&blob.id)?;
        let id = blob.id;
        let vector = self.vectorize(w.vectorizer.as_ref(), &id, blob.object).await?;
        let timestamp = if w.timestamp > 0 { w.timestamp } else { now_nanos() };
        let v = self.ingress(w.filters.as_ref(), object::Vector { id: id.clone(), vector, timestamp }).await?;
        let owners = self.agents.owners(&id, self.replicas);
        match (w.kind, w.skip_exist_check) {
            (Kind::Insert, false) if self.exists(&owners, &id).await? => {
                return Err(Status::already_exists(format!("object {id} already exists")))
            }
            (Kind::Update, false) if !self.exists(&owners, &id).await? => {
                return Err(Status::not_found(format!("object {id} not found")))
            }
            _ => {}
        }
        self.put(object::Vector { id, vector: v.vector, timestamp }, timestamp).await
    }

    async fn write_logged(&self, rpc: &'static str, w: ObjectWrite) -> Result<object::Location, Status> {
        let t = Instant::now();
        let id = w.blob.as_ref().map(|b| b.id.clone()).unwrap_or_default();
        let r = self.write_object(w).await;
        self.metrics.observe(rpc, code_of(&r), t);
        match &r {
            Ok(l) => tracing::debug!(rpc, id = %id, agents = %l.name, "written"),
            Err(s) => tracing::info!(rpc, id = %id, code = ?s.code(), error = %s.message(), "write refused"),
        }
        r
    }

    /// Stream writes are applied one after another, in order, so a stream that writes the
    /// same id twice sees its own first write.
    fn stream_writes<R: Into<ObjectWrite> + Send + 'static>(
        self: &Arc<Self>,
        rpc: &'static str,
        input: Streaming<R>,
    ) -> Out<object::StreamLocation> {
        let me = self.clone();
        per_message(input, 1, move |req: R| {
            let me = me.clone();
            async move {
                let payload = match me.write_logged(rpc, req.into()).await {
                    Ok(l) => object::stream_location::Payload::Location(l),
                    Err(s) => object::stream_location::Payload::Status(rpc_status(&s)),
                };
                object::StreamLocation { payload: Some(payload) }
            }
        })
    }

    /// Items run concurrently, except that the n-th item for an id waits for the earlier
    /// ones (round n), so repeated ids behave as if written in order.
    async fn multi_writes<R: Into<ObjectWrite>>(
        &self,
        rpc: &'static str,
        reqs: Vec<R>,
    ) -> Result<object::Locations, Status> {
        let total = reqs.len();
        let items: Vec<ObjectWrite> = reqs.into_iter().map(Into::into).collect();
        let ids: Vec<String> =
            items.iter().map(|w| w.blob.as_ref().map(|b| b.id.clone()).unwrap_or_default()).collect();
        let mut rounds: Vec<Vec<(usize, ObjectWrite)>> = Vec::new();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, w) in items.into_iter().enumerate() {
            let n = seen.entry(ids[i].as_str()).or_insert(0);
            if rounds.len() <= *n {
                rounds.push(Vec::new());
            }
            rounds[*n].push((i, w));
            *n += 1;
        }
        let mut results: Vec<Option<Result<object::Location, Status>>> = (0..total).map(|_| None).collect();
        for round in rounds {
            let done: Vec<_> = futures::stream::iter(
                round.into_iter().map(|(i, w)| async move { (i, self.write_logged(rpc, w).await) }),
            )
            .buffer_unordered(self.stream_concurrency)
            .collect()
            .await;
            for (i, r) in done {
                results[i] = Some(r);
            }
        }
        let mut locations = Vec::new();
        let mut failures = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            match r.expect("every item ran in some round") {
                Ok(l) => locations.push(l),
                Err(s) => failures.push((i, ids[i].clone(), s)),
            }
        }
        if failures.is_empty() {
            Ok(object::Locations { locations })
        } else {
            Err(multi_error(total, &failures))
        }
    }
}

/// The tonic service: a cheap handle on the shared gateway.
pub struct FilterService(pub Arc<Gateway>);

impl FilterService {
    fn done<T>(&self, rpc: &'static str, t: Instant, r: Result<T, Status>) -> Result<Response<T>, Status> {
        self.0.metrics.observe(rpc, code_of(&r), t);
        r.map(Response::new)
    }
}

#[tonic::async_trait]
impl Filter for FilterService {
    async fn search_object(&self, req: Request<search::ObjectRequest>) -> Result<Response<search::Response>, Status> {
        let t = Instant::now();
        let r = self.0.search_object(req.into_inner()).await;
        self.done("SearchObject", t, r)
    }

    async fn multi_search_object(
        &self,
        req: Request<search::MultiObjectRequest>,
    ) -> Result<Response<search::Responses>, Status> {
        let t = Instant::now();
        let reqs = req.into_inner().requests;
        let total = reqs.len();
        let rids: Vec<String> =
            reqs.iter().map(|r| r.config.as_ref().map(|c| c.request_id.clone()).unwrap_or_default()).collect();
        let gw = &self.0;
        let results: Vec<_> = futures::stream::iter(reqs.into_iter().map(|r| gw.search_object(r)))
            .buffered(gw.stream_concurrency)
            .collect()
            .await;
        let mut responses = Vec::with_capacity(total);
        let mut failures = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(resp) => responses.push(resp),
                Err(s) => failures.push((i, rids[i].clone(), s)),
            }
        }
        let r =
            if failures.is_empty() { Ok(search::Responses { responses }) } else { Err(multi_error(total, &failures)) };
        self.done("MultiSearchObject", t, r)
    }

    type StreamSearchObjectStream = Out<search::StreamResponse>;
    async fn stream_search_object(
        &self,
        req: Request<Streaming<search::ObjectRequest>>,
    ) -> Result<Response<Self::StreamSearchObjectStream>, Status> {
        let gw = self.0.clone();
        let concurrency = gw.stream_concurrency;
        Ok(Response::new(per_message(req.into_inner(), concurrency, move |r: search::ObjectRequest| {
            let gw = gw.clone();
            async move {
                let t = Instant::now();
                let r = gw.search_object(r).await;
                gw.metrics.observe("StreamSearchObject", code_of(&r), t);
                let payload = match r {
                    Ok(resp) => search::stream_response::Payload::Response(resp),
                    Err(s) => search::stream_response::Payload::Status(rpc_status(&s)),
                };
                search::StreamResponse { payload: Some(payload) }
            }
        })))
    }

    async fn insert_object(&self, req: Request<insert::ObjectRequest>) -> Result<Response<object::Location>, Status> {
        self.0.write_logged("InsertObject", req.into_inner().into()).await.map(Response::new)
    }
    type StreamInsertObjectStream = Out<object::StreamLocation>;
    async fn stream_insert_object(
        &self,
        req: Request<Streaming<insert::ObjectRequest>>,
    ) -> Result<Response<Self::StreamInsertObjectStream>, Status> {
        Ok(Response::new(self.0.stream_writes("StreamInsertObject", req.into_inner())))
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
        Ok(Response::new(self.0.stream_writes("StreamUpdateObject", req.into_inner())))
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
        Ok(Response::new(self.0.stream_writes("StreamUpsertObject", req.into_inner())))
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
