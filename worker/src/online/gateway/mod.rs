//! `kim-worker filter`: the vald.v1.Filter gateway. An object becomes a vector on the
//! vectorizer (GenVector), passes the ingress FilterVector chain, and is written to the
//! `replicas` agents that own its id; a search fans out to every agent, merges the top k
//! without replica duplicates and passes each result through the egress FilterDistance chain.

pub mod grpc;
pub mod health;
pub mod placement;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::future::join_all;
use kim_proto::filter::egress::v1::filter_client::FilterClient as EgressClient;
use kim_proto::filter::ingress::v1::filter_client::FilterClient as IngressClient;
use kim_proto::payload::v1::{filter, object, search, upsert};
use kim_proto::vald::v1::object_client::ObjectClient;
use kim_proto::vald::v1::search_client::SearchClient;
use kim_proto::vald::v1::upsert_client::UpsertClient;
use tonic::{Code, Request, Status};

use super::args::FilterArgs;
use super::limits::{self, AllowList, Limits, SearchPlan};
use super::metrics::Metrics;
use super::pool::Pool;
use health::{Health, HealthCollector};
use placement::Agents;

pub struct Gateway {
    agents: Arc<Agents>,
    replicas: usize,
    pool: Arc<Pool>,
    health: Arc<Health>,
    probe_timeout: Duration,
    vectorizer: Option<String>,
    ingress: Vec<String>,
    egress: Vec<String>,
    search_timeout: Duration,
    call_timeout: Duration,
    stream_concurrency: usize,
    metrics: Arc<Metrics>,
    limits: Limits,
    /// Request-supplied targets the gateway may call.
    allow: AllowList,
    /// Largest message sent to or accepted from a backend.
    max_message: usize,
}

/// Sets the gateway's message size limits on a generated client.
macro_rules! sized {
    ($client:expr, $max:expr) => {
        $client.max_decoding_message_size($max).max_encoding_message_size($max)
    };
}

/// A backend's failure as the gateway reports it: unreachable stays UNAVAILABLE, a deadline
/// (or a call timeout) is DEADLINE_EXCEEDED, anything else the backend said is INTERNAL.
fn backend_error(what: &str, addr: &str, s: Status) -> Status {
    let msg = format!("{what} {addr}: {}", s.message());
    match s.code() {
        Code::Unavailable => Status::unavailable(msg),
        // A client-side timeout of the call surfaces as Cancelled.
        Code::DeadlineExceeded | Code::Cancelled => Status::deadline_exceeded(msg),
        _ => Status::internal(format!("{msg} ({:?})", s.code())),
    }
}

/// An agent's failure: its verdict on a bad request stays INVALID_ARGUMENT.
fn agent_error(addr: &str, s: Status) -> Status {
    if s.code() == Code::InvalidArgument {
        Status::invalid_argument(format!("agent {addr}: {}", s.message()))
    } else {
        backend_error("agent", addr, s)
    }
}

fn with_timeout<T>(msg: T, t: Duration) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(t);
    r
}

impl Gateway {
    /// HOST:PORT of a request's filter targets, each checked and allowed.
    fn request_targets(&self, cfg: Option<&filter::Config>) -> Result<Vec<String>, Status> {
        let Some(cfg) = cfg else { return Ok(Vec::new()) };
        let addrs = limits::filter_targets(cfg)?;
        addrs.iter().try_for_each(|a| self.allow.check(a))?;
        Ok(addrs)
    }

    /// Object → vector on the request's vectorizer, else the default one.
    async fn vectorize(&self, target: Option<&filter::Target>, id: &str, object: Vec<u8>) -> Result<Vec<f32>, Status> {
        let addr = match target.filter(|t| t.port != 0) {
            Some(t) => {
                let addr = limits::target(t)?;
                self.allow.check(&addr)?;
                addr
            }
            None => self.vectorizer.clone().ok_or_else(|| {
                Status::invalid_argument(
                    "no vectorizer: the request names none (Filter.Target with a port) and the gateway has no default",
                )
            })?,
        };
        let mut c = sized!(IngressClient::new(self.pool.channel(&addr)?), self.max_message);
        let v = c
            .gen_vector(with_timeout(object::Blob { id: id.to_string(), object }, self.call_timeout))
            .await
            .map_err(|s| backend_error("vectorizer", &addr, s))?
            .into_inner();
        limits::vector("the vector", &v.vector, None)
            .map_err(|s| Status::internal(format!("vectorizer {addr}: {}", s.message())))?;
        Ok(v.vector)
    }

    /// The ingress FilterVector chain: the gateway's filters, then the request's.
    async fn ingress(&self, extra: Option<&filter::Config>, mut v: object::Vector) -> Result<object::Vector, Status> {
        for addr in self.ingress.iter().cloned().chain(self.request_targets(extra)?) {
            let mut c = sized!(IngressClient::new(self.pool.channel(&addr)?), self.max_message);
            v = c
                .filter_vector(with_timeout(v, self.call_timeout))
                .await
                .map_err(|s| backend_error("ingress filter", &addr, s))?
                .into_inner();
        }
        Ok(v)
    }

    /// Ok(true) if an owner holds `id`, Ok(false) if the owners that answered do not, an
    /// error if none answered.
    async fn exists(&self, owners: &[String], id: &str) -> Result<bool, Status> {
        let calls = owners.iter().map(|addr| async move {
            let mut c = sized!(ObjectClient::new(self.pool.agent(addr)?), self.max_message);
            let r = c.exists(with_timeout(object::Id { id: id.to_string() }, self.call_timeout)).await;
            self.health.record(addr, r.as_ref().map(|_| ()));
            match r {
                Ok(_) => Ok(true),
                Err(s) if s.code() == Code::NotFound => Ok(false),
                Err(s) => Err(backend_error("agent", addr, s)),
            }
        });
        let answers = join_all(calls).await;
        if answers.iter().any(|a| matches!(a, Ok(true))) {
            return Ok(true);
        }
        answers
            .into_iter()
            .find(|a| a.is_ok())
            .unwrap_or_else(|| Err(Status::unavailable(format!("no owner of {id} answered"))))
    }

    /// Writes the vector to every owner; succeeds when at least one acknowledged (the
    /// others are logged and repaired by the next write of that id).
    async fn put(&self, v: object::Vector, timestamp: i64) -> Result<object::Location, Status> {
        let owners = self.agents.owners(&v.id, self.replicas);
        if owners.is_empty() {
            return Err(Status::unavailable("no agents"));
        }
        let calls = owners.iter().map(|addr| {
            let req = upsert::Request {
                vector: Some(v.clone()),
                config: Some(upsert::Config { timestamp, ..Default::default() }),
            };
            async move {
                let mut c = sized!(UpsertClient::new(self.pool.agent(addr).map_err(|s| (addr, s))?), self.max_message);
                let r = c.upsert(with_timeout(req, self.call_timeout)).await;
                self.health.record(addr, r.as_ref().map(|_| ()));
                r.map(|r| r.into_inner()).map_err(|s| (addr, s))
            }
        });
        let mut names = Vec::new();
        let mut ips = Vec::new();
        let mut first_err = None;
        for r in join_all(calls).await {
            match r {
                Ok(l) => {
                    names.push(l.name);
                    ips.extend(l.ips);
                }
                Err((addr, s)) => {
                    tracing::warn!(agent = %addr, id = %v.id, code = ?s.code(), error = %s.message(), "replica write failed");
                    first_err.get_or_insert((addr.clone(), s));
                }
            }
        }
        match first_err {
            // The agent's own verdict on a bad vector (e.g. wrong dimensions) is the caller's.
            Some((addr, s)) if names.is_empty() => {
                Err(if s.code() == Code::InvalidArgument { s } else { backend_error("agent", &addr, s) })
            }
            _ => Ok(object::Location { name: names.join(","), uuid: v.id, ips }),
        }
    }

    /// Searches every agent and merges: best distance per id, closest first, at most `num`.
    /// Agents get 90 % of `budget`, so one that stops answering costs its results, not the
    /// search; agents last seen unreachable get only the probe timeout, so a partitioned one
    /// costs little per search and one that came back is answered from at once.
    /// Each agent is asked for `plan.per_agent` results (`ratio`), with no minimum: `min_num`
    /// applies to the merged answer.
    async fn search_agents(
        &self,
        vector: Vec<f32>,
        cfg: &search::Config,
        plan: &SearchPlan,
        budget: Duration,
    ) -> Result<Vec<object::Distance>, Status> {
        let agents = self.agents.all();
        if agents.is_empty() {
            return Err(Status::unavailable("no agents"));
        }
        let budget = budget.mul_f64(0.9);
        let agent_cfg = search::Config {
            num: plan.per_agent as u32,
            min_num: 0,
            ratio: None,
            egress_filters: None,
            ingress_filters: None,
            ..cfg.clone()
        };
        let calls = agents.iter().map(|addr| {
            let req = search::Request { vector: vector.clone(), config: Some(agent_cfg.clone()) };
            let budget = if self.health.is_reachable(addr) { budget } else { budget.min(self.probe_timeout) };
            async move {
                let mut c = sized!(SearchClient::new(self.pool.agent(addr)?), self.max_message);
                let r = match tokio::time::timeout(budget, c.search(with_timeout(req, budget))).await {
                    Ok(r) => r,
                    Err(_) => Err(Status::deadline_exceeded(format!("no answer within {budget:?}"))),
                };
                self.health.record(addr, r.as_ref().map(|_| ()));
                r.map(|r| r.into_inner().results).map_err(|s| agent_error(addr, s))
            }
        });
        let mut best: HashMap<String, f32> = HashMap::new();
        let mut failures = Vec::new();
        for r in join_all(calls).await {
            match r {
                Ok(results) => {
                    for d in results {
                        let e = best.entry(d.id).or_insert(d.distance);
                        *e = e.min(d.distance);
                    }
                }
                Err(s) => failures.push(s),
            }
        }
        // A request an agent finds invalid (e.g. a query of the wrong length) is the caller's.
        if let Some(i) = failures.iter().position(|s| s.code() == Code::InvalidArgument) {
            return Err(failures.swap_remove(i));
        }
        if failures.len() == agents.len() {
            return Err(failures.swap_remove(0));
        }
        for f in &failures {
            tracing::warn!(request_id = %cfg.request_id, error = %f.message(), "agent search failed; answering from the others");
        }
        let mut merged: Vec<object::Distance> =
            best.into_iter().map(|(id, distance)| object::Distance { id, distance }).collect();
        sort(&mut merged);
        merged.truncate(plan.num);
        Ok(merged)
    }

    /// The egress FilterDistance chain, run on all results concurrently.
    async fn egress(
        &self,
        extra: Option<&filter::Config>,
        results: Vec<object::Distance>,
    ) -> Result<Vec<object::Distance>, Status> {
        let chain: Vec<String> = self.egress.iter().cloned().chain(self.request_targets(extra)?).collect();
        if chain.is_empty() {
            return Ok(results);
        }
        let chain = &chain;
        let filtered = join_all(results.into_iter().map(|mut d| async move {
            for addr in chain {
                let mut c = sized!(EgressClient::new(self.pool.channel(addr)?), self.max_message);
                d = c
                    .filter_distance(with_timeout(d, self.call_timeout))
                    .await
                    .map_err(|s| backend_error("egress filter", addr, s))?
                    .into_inner();
            }
            Ok::<_, Status>(d)
        }))
        .await;
        let mut out = filtered.into_iter().collect::<Result<Vec<_>, _>>()?;
        sort(&mut out);
        Ok(out)
    }
}

fn sort(v: &mut [object::Distance]) {
    v.sort_by(|a, b| a.distance.total_cmp(&b.distance).then_with(|| a.id.cmp(&b.id)));
}

pub fn run(a: FilterArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.replicas >= 1, "--replicas must be at least 1");
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(serve(a))
}

async fn serve(a: FilterArgs) -> anyhow::Result<()> {
    let agents =
        Arc::new(Agents::fixed(a.agents.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()));
    if let Some(name) = a.agents_dns.clone() {
        tokio::spawn(agents.clone().follow_dns(name, a.dns_refresh));
    }
    let pool = Arc::new(Pool::new(Duration::from_secs(2), a.backend_tls.dialer().context("backend TLS")?));
    let health = Arc::new(Health::default());
    tokio::spawn(health.clone().probe(agents.clone(), pool.clone(), a.probe_interval, a.probe_timeout));
    let mut metrics = Metrics::new("kim_gateway");
    metrics.register_collector(Box::new(HealthCollector { health: health.clone(), agents: agents.clone() }));
    let metrics = Arc::new(metrics);
    let ready = Arc::new(AtomicBool::new(true));
    let http = tokio::net::TcpListener::bind(a.http).await.with_context(|| format!("binding {}", a.http))?;
    let m = metrics.clone();
    let (h, ag) = (health.clone(), agents.clone());
    let status = axum::Router::new().route(
        "/status",
        axum::routing::get(move || {
            let report = h.report(&ag.all());
            let unreachable = report.iter().filter(|a| !a.reachable).count();
            let body = serde_json::json!({ "agents": report, "unreachable": unreachable }).to_string();
            async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], body) }
        }),
    );
    tokio::spawn(super::http::serve_with(http, ready.clone(), Arc::new(move || m.encode()), status));
    let vectorizer = a.vectorizer.clone().filter(|v| !v.is_empty());
    let configured = vectorizer.iter().chain(&a.ingress_filter).chain(&a.egress_filter);
    let allow = AllowList::new(configured.chain(&a.allow_targets).map(String::as_str));
    let max = a.limits.max_message_bytes;
    let gw = Gateway {
        agents,
        replicas: a.replicas,
        pool,
        health,
        probe_timeout: a.probe_timeout,
        vectorizer,
        ingress: a.ingress_filter.clone(),
        egress: a.egress_filter.clone(),
        search_timeout: a.search_timeout,
        call_timeout: a.call_timeout,
        stream_concurrency: a.stream_concurrency.max(1),
        metrics,
        limits: a.limits.limits(),
        allow,
        max_message: max,
    };
    let listener = tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("binding {}", a.listen))?;
    let mut server = a.tls.builder().context("gateway TLS")?;
    tracing::info!(listen = %a.listen, agents = ?gw.agents.all(), dns = ?a.agents_dns, replicas = a.replicas, vectorizer = ?gw.vectorizer, grpc = a.tls.mode(), backends_tls = a.backend_tls.tls_ca.is_some(), "gateway serving");
    server
        .add_service(sized!(
            kim_proto::vald::v1::filter_server::FilterServer::new(grpc::FilterService(Arc::new(gw))),
            max
        ))
        .serve_with_incoming_shutdown(super::incoming(listener), super::shutdown_signal())
        .await?;
    ready.store(false, Ordering::SeqCst);
    Ok(())
}
