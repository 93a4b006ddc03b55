//! Wiring: flags, leader election, the two controllers, and the HTTP endpoints.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::get;
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use crate::build::Defaults;
use crate::context::Context;
use crate::crd::{Indexer, MatchingIndex};
use crate::leader::Elector;
use crate::metrics::Kind;
use crate::reconcile::{self, Error};

#[derive(Debug, Parser)]
#[command(name = "kim-operator", version, about = "Runs kim MatchingIndexes and Indexers on Kubernetes")]
pub struct Config {
    /// Worker image used when an Indexer names none.
    #[arg(long, env = "KIM_WORKER_IMAGE", default_value = "kim-worker:0.1.0")]
    pub worker_image: String,
    #[arg(long, env = "KIM_IMAGE_PULL_POLICY", default_value = "IfNotPresent")]
    pub image_pull_policy: String,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "KIM_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "KIM_HTTP", default_value = "0.0.0.0:8080")]
    pub http: SocketAddr,
    /// Log lines as `text` or `json`.
    #[arg(long, env = "KIM_LOG_FORMAT", value_enum, default_value_t = kim_runtime::LogFormat::Text)]
    pub log_format: kim_runtime::LogFormat,
    /// Lease used for leader election.
    #[arg(long, env = "KIM_LEASE_NAME", default_value = "kim-operator")]
    pub lease_name: String,
    /// Namespace of the lease (default: the pod's namespace, else "default").
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// This replica's identity in the lease (default: pod name or host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "15s", env = "KIM_LEASE_DURATION")]
    pub lease_duration: Duration,
    /// How long after a MatchingIndex's deletion its finalizer keeps trying to remove the
    /// label's Redis keys before it gives that step up (files are removed regardless).
    #[arg(long, env = "KIM_CLEANUP_TIMEOUT", value_parser = humantime::parse_duration, default_value = "2m")]
    pub cleanup_timeout: Duration,
    /// How often a MatchingIndex with `matcher.autoscaling` (without KEDA) reads its matchers'
    /// backlog from Redis and rescales.
    #[arg(long, env = "KIM_AUTOSCALE_INTERVAL", value_parser = humantime::parse_duration, default_value = "15s")]
    pub autoscale_interval: Duration,
    /// Run once instead of operating: wait until the operator's Lease can be taken (no operator
    /// left), remove kim's finalizer from every MatchingIndex, and exit. The chart's post-delete
    /// hook runs this after `helm uninstall`, so leftover MatchingIndexes never block a deletion.
    #[arg(long, env = "KIM_RELEASE_FINALIZERS")]
    pub release_finalizers: bool,
    /// How long --release-finalizers waits for the Lease.
    #[arg(long, env = "KIM_RELEASE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "2m")]
    pub release_timeout: Duration,
}

/// Consecutive failures per object, for exponential backoff.
type Failures = Mutex<HashMap<String, u32>>;

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let identity = cfg.identity.clone().unwrap_or_else(|| {
        format!("{}-{}", std::env::var("HOSTNAME").unwrap_or_else(|_| "kim-operator".into()), std::process::id())
    });
    let defaults =
        Defaults { worker_image: cfg.worker_image.clone(), image_pull_policy: cfg.image_pull_policy.clone() };
    let ctx = Context::new(client.clone(), defaults, &identity, (cfg.cleanup_timeout, cfg.autoscale_interval));
    let elector = Elector::new(client.clone(), &cfg.lease_namespace, &cfg.lease_name, &identity, cfg.lease_duration);
    if cfg.release_finalizers {
        let n = crate::release::run(&ctx, &elector, cfg.namespace.as_deref(), cfg.release_timeout).await?;
        tracing::info!(released = n, "finalizers released; MatchingIndexes keep their files and Redis keys");
        return Ok(());
    }
    let leading = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(cfg.http).await?;
    tokio::spawn(serve_http(listener, ctx.clone(), leading.clone()));

    tokio::select! {
        r = elector.acquire() => r?,
        _ = kim_runtime::shutdown_signal() => return Ok(()),
    }
    leading.store(true, Ordering::SeqCst);
    let controllers = controllers(client, cfg.namespace.clone(), ctx);
    let outcome = tokio::select! {
        _ = controllers => Ok(()),
        _ = elector.hold() => Err(anyhow::anyhow!("lost leadership; exiting so a fresh process can compete again")),
        _ = kim_runtime::shutdown_signal() => Ok(()),
    };
    leading.store(false, Ordering::SeqCst);
    elector.release().await;
    outcome
}

fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    match ns {
        Some(n) => Api::namespaced(client.clone(), n),
        None => Api::all(client.clone()),
    }
}

async fn controllers(client: Client, ns: Option<String>, ctx: Arc<Context>) {
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=kim-operator");
    let failures: Arc<Failures> = Arc::default();
    let mi = Controller::new(api::<MatchingIndex>(&client, &ns), watcher::Config::default())
        .owns(api::<Job>(&client, &ns), owned.clone())
        .owns(api::<Deployment>(&client, &ns), owned.clone())
        .owns(api::<StatefulSet>(&client, &ns), owned.clone())
        .owns(api::<Service>(&client, &ns), owned.clone())
        .owns(api::<PodDisruptionBudget>(&client, &ns), owned.clone())
        .shutdown_on_signal()
        .run(
            {
                let failures = failures.clone();
                move |obj, ctx| reconcile_mi(obj, ctx, failures.clone())
            },
            {
                let failures = failures.clone();
                move |obj: Arc<MatchingIndex>, err: &Error, ctx: Arc<Context>| {
                    error_policy("MatchingIndex", obj.as_ref(), err, &ctx, &failures)
                }
            },
            ctx.clone(),
        )
        .for_each(|_| async {});
    let ix_jobs = api::<Job>(&client, &ns);
    let ix = Controller::new(api::<Indexer>(&client, &ns), watcher::Config::default())
        .owns(api::<PersistentVolumeClaim>(&client, &ns), owned.clone())
        // The matcher pool's readiness goes into the Indexer's status.
        .owns(api::<Deployment>(&client, &ns), owned.clone())
        .watches(ix_jobs, owned, |job: Job| {
            let ix = job.labels().get(crate::build::LABEL_INDEXER)?.clone();
            Some(ObjectRef::<Indexer>::new(&ix).within(&job.namespace()?))
        })
        // A MatchingIndex joining or leaving the queue changes its Indexer's status.
        .watches(api::<MatchingIndex>(&client, &ns), watcher::Config::default(), |mi: MatchingIndex| {
            Some(ObjectRef::<Indexer>::new(&mi.spec.indexer_ref.name).within(&mi.namespace()?))
        })
        .shutdown_on_signal()
        .run(
            {
                let failures = failures.clone();
                move |obj, ctx| {
                    let failures = failures.clone();
                    async move {
                        timed(
                            "Indexer",
                            &key(obj.as_ref()),
                            &ctx,
                            &failures,
                            reconcile::indexer::reconcile(obj.clone(), ctx.clone()),
                        )
                        .await
                    }
                }
            },
            {
                let failures = failures.clone();
                move |obj: Arc<Indexer>, err: &Error, ctx: Arc<Context>| {
                    error_policy("Indexer", obj.as_ref(), err, &ctx, &failures)
                }
            },
            ctx,
        )
        .for_each(|_| async {});
    tokio::join!(mi, ix);
}

async fn reconcile_mi(obj: Arc<MatchingIndex>, ctx: Arc<Context>, failures: Arc<Failures>) -> Result<Action, Error> {
    let k = key(obj.as_ref());
    timed("MatchingIndex", &k, &ctx, &failures, reconcile::finalizer::reconcile(obj, ctx.clone())).await
}

/// `namespace/name`: objects of the same name in two namespaces back off independently.
fn key<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

async fn timed<F: std::future::Future<Output = Result<Action, Error>>>(
    kind: &str,
    name: &str,
    ctx: &Context,
    failures: &Failures,
    f: F,
) -> Result<Action, Error> {
    let k = Kind { kind: kind.into() };
    let t = Instant::now();
    let r = f.await;
    ctx.metrics.reconciles.get_or_create(&k).inc();
    ctx.metrics.duration.get_or_create(&k).observe(t.elapsed().as_secs_f64());
    if r.is_ok() {
        failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&format!("{kind}/{name}"));
    }
    r
}

fn error_policy<K: Resource<DynamicType = ()>>(
    kind: &str,
    obj: &K,
    err: &Error,
    ctx: &Context,
    failures: &Failures,
) -> Action {
    let key = format!("{kind}/{}", key(obj));
    ctx.metrics.errors.get_or_create(&Kind { kind: kind.into() }).inc();
    let n = {
        let mut f = failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(key.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let wait = reconcile::backoff(n - 1);
    tracing::warn!(object = %key, error = %err, failures = n, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

async fn serve_http(listener: tokio::net::TcpListener, ctx: Arc<Context>, leading: Arc<AtomicBool>) {
    let leader = get(move || {
        let role = if leading.load(Ordering::SeqCst) { "leader" } else { "standby" };
        async move { role }
    });
    let probes = kim_runtime::probes(Arc::new(|| Some("ok".into())), Arc::new(move || ctx.metrics.encode()));
    kim_runtime::serve_http(listener, probes.route("/leader", leader)).await
}
