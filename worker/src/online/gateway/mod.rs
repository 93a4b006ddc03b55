//! `kim-worker filter`: the gateway. It serves vald.v1.Filter (objects vectorised on the
//! vectorizer) and, as Vald's own gateway does beside it, vald.v1 Insert, Update, Upsert,
//! Search, Remove, Object, Index and Flush. Writes, removes and reads by id go to the
//! `replicas` agents that own the id; searches fan out to every agent and merge the top k
//! without replica duplicates; the ingress FilterVector and egress FilterDistance chains
//! apply to every write and search.

mod agents;
mod filter;
mod filters;
pub mod health;
mod index;
mod object;
mod ops;
pub mod placement;
mod search;
mod write;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kim_proto::payload::v1::object as pb_object;
use kim_proto::vald::v1::{
    filter_server::FilterServer, flush_server::FlushServer, index_server::IndexServer, insert_server::InsertServer,
    object_server::ObjectServer, remove_server::RemoveServer, search_server::SearchServer, update_server::UpdateServer,
    upsert_server::UpsertServer,
};
use tonic::{Code, Request, Status};

use super::args::FilterArgs;
use super::limits::{AllowList, Limits};
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

/// Sets the gateway's message size limits on a generated client or server.
macro_rules! sized {
    ($client:expr, $max:expr) => {
        $client.max_decoding_message_size($max).max_encoding_message_size($max)
    };
}
use sized;

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

/// Closest first; ties by id.
fn sort(v: &mut [pb_object::Distance]) {
    v.sort_by(|a, b| a.distance.total_cmp(&b.distance).then_with(|| a.id.cmp(&b.id)));
}

pub fn run(a: FilterArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.replicas >= 1, "--replicas must be at least 1");
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(serve(a))
}

async fn serve(a: FilterArgs) -> anyhow::Result<()> {
    let trimmed = |v: &[String]| v.iter().map(|s| s.trim().to_string()).collect::<Vec<_>>();
    let agents = Arc::new(Agents::with_read_only(trimmed(&a.agents), trimmed(&a.read_agents)));
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
            let body = serde_json::json!({ "agents": report, "unreachable": unreachable, "readOnly": ag.read_only() })
                .to_string();
            async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], body) }
        }),
    );
    tokio::spawn(super::http::serve(http, ready.clone(), Arc::new(move || m.encode()), status));
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
    tracing::info!(listen = %a.listen, agents = ?gw.agents.all(), read_only = ?gw.agents.read_only(), dns = ?a.agents_dns, replicas = a.replicas, vectorizer = ?gw.vectorizer, grpc = a.tls.mode(), backends_tls = a.backend_tls.tls_ca.is_some(), "gateway serving");
    let svc = ops::Service(Arc::new(gw));
    server
        .add_service(sized!(FilterServer::new(svc.clone()), max))
        .add_service(sized!(InsertServer::new(svc.clone()), max))
        .add_service(sized!(UpdateServer::new(svc.clone()), max))
        .add_service(sized!(UpsertServer::new(svc.clone()), max))
        .add_service(sized!(SearchServer::new(svc.clone()), max))
        .add_service(sized!(RemoveServer::new(svc.clone()), max))
        .add_service(sized!(ObjectServer::new(svc.clone()), max))
        .add_service(sized!(IndexServer::new(svc.clone()), max))
        .add_service(sized!(FlushServer::new(svc), max))
        .serve_with_incoming_shutdown(super::incoming(listener), kim_runtime::shutdown_signal())
        .await?;
    ready.store(false, Ordering::SeqCst);
    Ok(())
}
