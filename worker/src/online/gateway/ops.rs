//! The gateway's request-level operations, shared by its services: a search (from an object,
//! a vector or a stored id; approximate or linear) within the request's deadline, a write
//! (from an object or a vector) with Vald's existence semantics, and the Multi/Stream
//! wrappers around both.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use kim_proto::payload::v1::{filter, insert, object, search, update, upsert};
use tonic::{Response, Status, Streaming};

use super::Gateway;
use crate::online::limits;
use crate::online::metrics::code_of;
use crate::online::{multi_error, now_nanos, per_message, rpc_status, Out};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Kind {
    Insert,
    Update,
    Upsert,
}

/// What a write carries: an object for the vectorizer, or the vector itself.
pub(super) enum Source {
    Object { blob: Option<object::Blob>, vectorizer: Option<filter::Target> },
    Vector(Option<object::Vector>),
}

/// The parts of an Insert/Update/Upsert request the gateway acts on.
pub(super) struct WriteReq {
    kind: Kind,
    source: Source,
    filters: Option<filter::Config>,
    skip_exist_check: bool,
    timestamp: i64,
}

impl WriteReq {
    fn id(&self) -> String {
        match &self.source {
            Source::Object { blob, .. } => blob.as_ref().map(|b| b.id.clone()),
            Source::Vector(v) => v.as_ref().map(|v| v.id.clone()),
        }
        .unwrap_or_default()
    }
}

macro_rules! write_req {
    ($kind:expr, $object:ty, $vector:ty) => {
        impl From<$object> for WriteReq {
            fn from(r: $object) -> Self {
                let c = r.config.unwrap_or_default();
                WriteReq {
                    kind: $kind,
                    source: Source::Object { blob: r.object, vectorizer: r.vectorizer },
                    filters: c.filters,
                    skip_exist_check: c.skip_strict_exist_check,
                    timestamp: c.timestamp,
                }
            }
        }
        impl From<$vector> for WriteReq {
            fn from(r: $vector) -> Self {
                let c = r.config.unwrap_or_default();
                WriteReq {
                    kind: $kind,
                    source: Source::Vector(r.vector),
                    filters: c.filters,
                    skip_exist_check: c.skip_strict_exist_check,
                    timestamp: c.timestamp,
                }
            }
        }
    };
}
write_req!(Kind::Insert, insert::ObjectRequest, insert::Request);
write_req!(Kind::Update, update::ObjectRequest, update::Request);
write_req!(Kind::Upsert, upsert::ObjectRequest, upsert::Request);

/// What a search starts from.
pub(super) enum Query {
    Object { object: Vec<u8>, vectorizer: Option<filter::Target> },
    Vector(Vec<f32>),
    Id(String),
}

pub(super) struct SearchReq {
    pub query: Query,
    pub config: Option<search::Config>,
    /// LinearSearch: every row on every agent.
    pub exact: bool,
}

impl SearchReq {
    pub fn vector(r: search::Request, exact: bool) -> SearchReq {
        SearchReq { query: Query::Vector(r.vector), config: r.config, exact }
    }
    pub fn id(r: search::IdRequest, exact: bool) -> SearchReq {
        SearchReq { query: Query::Id(r.id), config: r.config, exact }
    }
    pub fn object(r: search::ObjectRequest) -> SearchReq {
        SearchReq {
            query: Query::Object { object: r.object, vectorizer: r.vectorizer },
            config: r.config,
            exact: false,
        }
    }
}

impl Gateway {
    /// Vectorize (or fetch the id's vector from an owner), filter, search all agents, merge,
    /// egress — within the request's deadline.
    pub(super) async fn search(&self, r: SearchReq) -> Result<search::Response, Status> {
        let plan = self.limits.search(r.config.as_ref())?;
        let mut cfg = r.config.unwrap_or_default();
        // Everything a request names is checked before any backend is called.
        let vectorizer = match &r.query {
            Query::Object { vectorizer, .. } => Some(self.vectorizer_for(vectorizer.as_ref())?),
            Query::Vector(v) => limits::vector("query", v, None).map(|_| None)?,
            Query::Id(id) => limits::id(id).map(|_| None)?,
        };
        self.check_egress(cfg.egress_filters.as_ref())?;
        if cfg.request_id.is_empty() {
            cfg.request_id = uuid::Uuid::new_v4().to_string();
        }
        let budget = plan.timeout.unwrap_or(self.search_timeout);
        let start = Instant::now();
        let rid = cfg.request_id.clone();
        let work = async {
            let vector = match r.query {
                Query::Object { object, .. } => {
                    self.vectorize(vectorizer.as_deref().unwrap_or_default(), &rid, object).await?
                }
                Query::Vector(v) => v,
                Query::Id(id) => self.get(&id).await?.vector,
            };
            let v = self
                .ingress(cfg.ingress_filters.as_ref(), object::Vector { id: rid.clone(), vector, timestamp: 0 })
                .await?;
            let results =
                self.search_agents(v.vector, &cfg, &plan, budget.saturating_sub(start.elapsed()), r.exact).await?;
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

    /// Vectorize (objects), filter, check existence as the kind requires, write to the
    /// owners. The timestamp is the config's, else the vector's, else now.
    async fn write(&self, w: WriteReq) -> Result<object::Location, Status> {
        let (id, vector, ts) = match w.source {
            Source::Object { blob, vectorizer } => {
                let blob = blob.ok_or_else(|| Status::invalid_argument("request has no object"))?;
                limits::id(&blob.id)?;
                let addr = self.vectorizer_for(vectorizer.as_ref())?;
                let vector = self.vectorize(&addr, &blob.id, blob.object).await?;
                (blob.id, vector, 0)
            }
            Source::Vector(v) => {
                let v = v.ok_or_else(|| Status::invalid_argument("request has no vector"))?;
                limits::id(&v.id)?;
                limits::vector(&format!("vector {}", v.id), &v.vector, None)?;
                (v.id, v.vector, v.timestamp)
            }
        };
        let timestamp = [w.timestamp, ts].into_iter().find(|&t| t > 0).unwrap_or_else(now_nanos);
        let v = self.ingress(w.filters.as_ref(), object::Vector { id: id.clone(), vector, timestamp }).await?;
        // Every agent holding the id: for the existence check, and to remove copies left on
        // agents that are no longer its owners.
        let holders = match (w.kind, w.skip_exist_check) {
            (Kind::Insert | Kind::Update, false) => self.holders(&id).await?,
            _ => self.holders(&id).await.unwrap_or_default(),
        };
        match (w.kind, w.skip_exist_check) {
            (Kind::Insert, false) if !holders.is_empty() => {
                return Err(Status::already_exists(format!("object {id} already exists")))
            }
            (Kind::Update, false) if holders.is_empty() => {
                return Err(Status::not_found(format!("object {id} not found")))
            }
            _ => {}
        }
        self.put(object::Vector { id, vector: v.vector, timestamp }, &holders).await
    }

    pub(super) async fn write_logged(&self, rpc: &'static str, w: WriteReq) -> Result<object::Location, Status> {
        let t = Instant::now();
        let id = w.id();
        let r = self.write(w).await;
        self.metrics.observe(rpc, code_of(&r), t);
        match &r {
            Ok(l) => tracing::debug!(rpc, id = %id, agents = %l.name, "written"),
            Err(s) => tracing::info!(rpc, id = %id, code = ?s.code(), error = %s.message(), "write refused"),
        }
        r
    }

    /// Runs `f` on every item, concurrently except that the n-th item for an id waits for
    /// the earlier ones (round n), so repeated ids behave as if applied in order. Results in
    /// item order.
    pub(super) async fn in_rounds<T, R, Fut>(
        &self,
        items: Vec<(String, T)>,
        f: impl Fn(T) -> Fut,
    ) -> Vec<Result<R, Status>>
    where
        Fut: Future<Output = Result<R, Status>>,
    {
        let total = items.len();
        let mut rounds: Vec<Vec<(usize, T)>> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, (id, item)) in items.into_iter().enumerate() {
            let n = seen.entry(id).or_insert(0);
            if rounds.len() <= *n {
                rounds.push(Vec::new());
            }
            rounds[*n].push((i, item));
            *n += 1;
        }
        let mut results: Vec<Option<Result<R, Status>>> = (0..total).map(|_| None).collect();
        for round in rounds {
            let done: Vec<(usize, Result<R, Status>)> = futures::stream::iter(round.into_iter().map(|(i, item)| {
                let fut = f(item);
                async move { (i, fut.await) }
            }))
            .buffer_unordered(self.stream_concurrency)
            .collect()
            .await;
            for (i, r) in done {
                results[i] = Some(r);
            }
        }
        results.into_iter().map(|r| r.expect("every item ran in some round")).collect()
    }

    /// A Multi* write or remove: every item applied, the failed ones reported together.
    pub(super) async fn multi_locations<T, Fut>(
        &self,
        items: Vec<(String, T)>,
        f: impl Fn(T) -> Fut,
    ) -> Result<object::Locations, Status>
    where
        Fut: Future<Output = Result<object::Location, Status>>,
    {
        let total = items.len();
        let ids: Vec<String> = items.iter().map(|(id, _)| id.clone()).collect();
        let mut locations = Vec::new();
        let mut failures = Vec::new();
        for (i, r) in self.in_rounds(items, f).await.into_iter().enumerate() {
            match r {
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

    pub(super) async fn multi_writes<R: Into<WriteReq>>(
        &self,
        rpc: &'static str,
        reqs: Vec<R>,
    ) -> Result<object::Locations, Status> {
        let items = reqs.into_iter().map(|r| {
            let w: WriteReq = r.into();
            (w.id(), w)
        });
        self.multi_locations(items.collect(), |w| self.write_logged(rpc, w)).await
    }

    /// A Multi* search: every item answered, the failed ones reported together.
    pub(super) async fn multi_search(&self, reqs: Vec<SearchReq>) -> Result<search::Responses, Status> {
        let total = reqs.len();
        let rids: Vec<String> =
            reqs.iter().map(|r| r.config.as_ref().map(|c| c.request_id.clone()).unwrap_or_default()).collect();
        let results: Vec<_> = futures::stream::iter(reqs.into_iter().map(|r| self.search(r)))
            .buffered(self.stream_concurrency)
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
        if failures.is_empty() {
            Ok(search::Responses { responses })
        } else {
            Err(multi_error(total, &failures))
        }
    }
}

/// The tonic services: a cheap handle on the shared gateway.
#[derive(Clone)]
pub struct Service(pub Arc<Gateway>);

impl Service {
    pub(super) fn done<T>(&self, rpc: &'static str, t: Instant, r: Result<T, Status>) -> Result<Response<T>, Status> {
        self.0.metrics.observe(rpc, code_of(&r), t);
        r.map(Response::new)
    }

    /// Stream writes (or removes) are applied one after another, in order, so a stream that
    /// writes the same id twice sees its own first write. `f` records the metrics.
    pub(super) fn stream_locations<R, Fut>(
        &self,
        rpc: &'static str,
        input: Streaming<R>,
        f: fn(Arc<Gateway>, &'static str, R) -> Fut,
    ) -> Out<object::StreamLocation>
    where
        R: Send + 'static,
        Fut: Future<Output = Result<object::Location, Status>> + Send + 'static,
    {
        let gw = self.0.clone();
        per_message(input, 1, move |req: R| {
            let gw = gw.clone();
            async move {
                let payload = match f(gw, rpc, req).await {
                    Ok(l) => object::stream_location::Payload::Location(l),
                    Err(s) => object::stream_location::Payload::Status(rpc_status(&s)),
                };
                object::StreamLocation { payload: Some(payload) }
            }
        })
    }

    /// A search stream: up to --stream-concurrency messages at once, answered in order.
    pub(super) fn stream_search<R: Send + 'static>(
        &self,
        rpc: &'static str,
        input: Streaming<R>,
        to: fn(R) -> SearchReq,
    ) -> Out<search::StreamResponse> {
        let gw = self.0.clone();
        let concurrency = gw.stream_concurrency;
        per_message(input, concurrency, move |r: R| {
            let gw = gw.clone();
            async move {
                let t = Instant::now();
                let r = gw.search(to(r)).await;
                gw.metrics.observe(rpc, code_of(&r), t);
                let payload = match r {
                    Ok(resp) => search::stream_response::Payload::Response(resp),
                    Err(s) => search::stream_response::Payload::Status(rpc_status(&s)),
                };
                search::StreamResponse { payload: Some(payload) }
            }
        })
    }
}
