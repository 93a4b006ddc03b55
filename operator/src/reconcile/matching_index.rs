//! MatchingIndex: decide whether a build is due, admit it against the Indexer's concurrency,
//! read the result back from the Job, run matchers once a snapshot exists, report status.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::ResourceExt;
use serde_json::json;

use super::jobs::{self, JobState};
use super::{apply, Result};
use crate::build::{self, MANAGER};
use crate::context::Context;
use crate::crd::{BuildStatus, Indexer, MatchersStatus, MatchingIndex, MatchingIndexStatus, Phase, SnapshotStatus};
use crate::{status, validate};

/// What the build step concluded.
enum Build {
    UpToDate,
    Queued { running: usize, max: i32 },
    Running(BuildStatus),
    Failed { job: String, hash: String, message: String },
}

pub async fn apply_spec(mi: Arc<MatchingIndex>, ctx: Arc<Context>) -> Result<Action> {
    let ns = mi.namespace().unwrap_or_default();
    let client = ctx.client.clone();
    let gen = mi.metadata.generation;
    let old = mi.status.clone().unwrap_or_default();
    let mut st = old.clone();
    st.observed_generation = gen;

    // validate
    let interval = match validate::matching_index(&mi) {
        Ok(i) => i,
        Err(e) => {
            if !status::get(&old.conditions, "SpecValid").is_some_and(|c| c.status == "False" && c.message == e.0) {
                ctx.event(mi.as_ref(), true, "InvalidSpec", "Validate", e.0.clone()).await;
            }
            status::set(&mut st.conditions, "SpecValid", false, "InvalidSpec", e.0.clone(), gen);
            status::set(&mut st.conditions, "Ready", false, "InvalidSpec", e.0, gen);
            st.phase = Some(Phase::Failed);
            write_status(&mi, &ctx, &st).await?;
            return Ok(Action::await_change());
        }
    };
    status::set(&mut st.conditions, "SpecValid", true, "Valid", "spec is valid", gen);

    let ixs: Api<Indexer> = Api::namespaced(client.clone(), &ns);
    let ix_name = &mi.spec.indexer_ref.name;
    let ix = match ixs.get_opt(ix_name).await? {
        Some(ix) => ix,
        None => {
            let msg = format!("Indexer {ix_name:?} not found in namespace {ns:?}");
            status::set(&mut st.conditions, "Ready", false, "IndexerNotFound", msg, gen);
            st.phase = Some(if st.current_snapshot.is_some() { Phase::Degraded } else { Phase::Pending });
            write_status(&mi, &ctx, &st).await?;
            return Ok(Action::requeue(Duration::from_secs(15)));
        }
    };
    let deadline = match validate::indexer(&ix.spec) {
        Ok(d) => d,
        Err(e) => {
            status::set(&mut st.conditions, "Ready", false, "IndexerInvalid", format!("Indexer {ix_name:?}: {e}"), gen);
            st.phase = Some(Phase::Pending);
            write_status(&mi, &ctx, &st).await?;
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
    };

    // online path: agents and gateway run independently of snapshots
    if mi.spec.online.is_some() {
        apply_online(&mi, &ix, &ctx).await?;
    }

    // build
    let (epoch, next_epoch) = interval_epoch(&mi, interval);
    let hash = build::build_hash(&mi, epoch);
    let outcome = build_step(&mi, &ix, &hash, deadline.as_secs() as i64, &ctx, &mut st, &old).await?;

    // matchers, once a snapshot exists
    if st.current_snapshot.is_some() {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let d = build::matcher_deployment(&mi, &ix, &ctx.defaults);
        let name = d.name_any();
        let applied = apply(&deployments, &name, &d).await?;
        let desired = mi.spec.matcher.replicas;
        let ready = applied.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
        if old.matchers.as_ref().map(|m| m.desired) != Some(desired) {
            ctx.event(
                mi.as_ref(),
                false,
                "MatchersScaled",
                "Scale",
                format!("matcher Deployment {name} wants {desired} replicas"),
            )
            .await;
        }
        st.matchers = Some(MatchersStatus { desired, ready, summary: format!("{ready}/{desired}") });
    }

    // status
    let requeue = summarize(&mut st, &outcome, gen);
    write_status(&mi, &ctx, &st).await?;
    Ok(Action::requeue(match next_epoch {
        Some(n) => requeue.min(n),
        None => requeue,
    }))
}

async fn apply_online(mi: &MatchingIndex, ix: &Indexer, ctx: &Context) -> Result<()> {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::Service;
    let ns = mi.namespace().unwrap_or_default();
    let c = ctx.client.clone();
    let sts: Api<StatefulSet> = Api::namespaced(c.clone(), &ns);
    let svc: Api<Service> = Api::namespaced(c.clone(), &ns);
    let dep: Api<Deployment> = Api::namespaced(c, &ns);
    let agents = crate::online::agent_statefulset(mi, ix, &ctx.defaults);
    let created = sts.get_opt(&agents.name_any()).await?.is_none();
    for s in [crate::online::agent_service(mi), crate::online::gateway_service(mi)] {
        apply(&svc, &s.name_any(), &s).await?;
    }
    apply(&sts, &agents.name_any(), &agents).await?;
    let gw = crate::online::gateway_deployment(mi, ix, &ctx.defaults);
    apply(&dep, &gw.name_any(), &gw).await?;
    if created {
        let o = mi.spec.online.clone().unwrap_or_default();
        ctx.event(
            mi,
            false,
            "OnlineCreated",
            "Provision",
            format!(
                "created {} agents (replicas {}) and {} gateway replicas",
                o.agents, o.replicas, o.gateway_replicas
            ),
        )
        .await;
    }
    Ok(())
}

/// Epoch of the rebuild interval (0 without one) and the time until the next epoch starts.
fn interval_epoch(mi: &MatchingIndex, interval: Option<Duration>) -> (u64, Option<Duration>) {
    let Some(iv) = interval else { return (0, None) };
    let created = mi.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or(0);
    let age = (k8s_openapi::jiff::Timestamp::now().as_second() - created).max(0) as u64;
    let iv_s = iv.as_secs().max(1);
    (age / iv_s, Some(Duration::from_secs(iv_s - age % iv_s)))
}

async fn build_step(
    mi: &MatchingIndex,
    ix: &Indexer,
    hash: &str,
    deadline_secs: i64,
    ctx: &Context,
    st: &mut MatchingIndexStatus,
    old: &MatchingIndexStatus,
) -> Result<Build> {
    if st.current_snapshot.as_ref().is_some_and(|s| s.build_hash == hash) {
        st.current_build = None;
        return Ok(Build::UpToDate);
    }
    let ns = mi.namespace().unwrap_or_default();
    let job_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let name = build::job_name(mi, hash);
    let Some(job) = job_api.get_opt(&name).await? else {
        return admit(mi, ix, hash, deadline_secs, ctx, &job_api, &name, st, old).await;
    };
    match jobs::state(&job) {
        JobState::Running => {
            let started = job.status.as_ref().and_then(|s| s.start_time.as_ref()).map(|t| t.0.to_string());
            let b = BuildStatus {
                job: Some(name),
                started,
                queued: false,
                build_hash: hash.into(),
                progress: Some("running".into()),
            };
            st.current_build = Some(b.clone());
            Ok(Build::Running(b))
        }
        JobState::Succeeded => {
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
            let msg = jobs::termination_message(&pods, &name).await.unwrap_or_default();
            let snap = SnapshotStatus {
                id: msg["snapshot"].as_str().unwrap_or("unreported").to_string(),
                vectors: msg["vectors"].as_i64().unwrap_or(0),
                built_at: msg["createdAt"].as_str().map(str::to_string),
                build_seconds: msg["buildSeconds"].as_f64(),
                build_hash: hash.into(),
            };
            if old.current_snapshot.as_ref() != Some(&snap) {
                ctx.metrics.build("succeeded");
                ctx.event(
                    mi,
                    false,
                    "BuildSucceeded",
                    "Build",
                    format!("Job {name} built snapshot {} with {} vectors", snap.id, snap.vectors),
                )
                .await;
            }
            st.current_snapshot = Some(snap);
            st.current_build = None;
            Ok(Build::UpToDate)
        }
        JobState::Failed(why) => {
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
            let worker =
                jobs::termination_message(&pods, &name).await.and_then(|m| m["error"].as_str().map(str::to_string));
            let message = match worker {
                Some(w) => format!("build Job {name} failed: {w}"),
                None => format!("build Job {name} failed: {why}"),
            };
            if !status::get(&old.conditions, "BuildFailed").is_some_and(|c| c.status == "True" && c.message == message)
            {
                ctx.metrics.build("failed");
                ctx.event(mi, true, "BuildFailed", "Build", message.clone()).await;
            }
            st.current_build = Some(BuildStatus {
                job: Some(name.clone()),
                started: None,
                queued: false,
                build_hash: hash.into(),
                progress: Some("failed".into()),
            });
            Ok(Build::Failed { job: name, hash: hash.into(), message })
        }
    }
}

/// Starts the build if the Indexer has a free slot, else queues it. Holding the admission lock
/// makes "count running, then create" atomic among this leader's reconciles.
#[allow(clippy::too_many_arguments)]
async fn admit(
    mi: &MatchingIndex,
    ix: &Indexer,
    hash: &str,
    deadline_secs: i64,
    ctx: &Context,
    job_api: &Api<Job>,
    name: &str,
    st: &mut MatchingIndexStatus,
    old: &MatchingIndexStatus,
) -> Result<Build> {
    let _slot = ctx.admission.lock().await;
    let selector = format!("{}={},{}=build", build::LABEL_INDEXER, ix.name_any(), build::LABEL_COMPONENT);
    let running = job_api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .filter(|j| jobs::is_running(j))
        .count();
    let max = ix.spec.max_concurrent_builds;
    if running >= max as usize {
        let was_queued = old.current_build.as_ref().is_some_and(|b| b.queued && b.build_hash == hash);
        if !was_queued {
            ctx.metrics.build("queued");
            ctx.event(
                mi,
                false,
                "BuildQueued",
                "Build",
                format!("waiting for a build slot of Indexer {}: {running}/{max} running", ix.name_any()),
            )
            .await;
        }
        let progress = format!("queued: {running}/{max} builds of Indexer {} running", ix.name_any());
        st.current_build = Some(BuildStatus {
            job: None,
            started: None,
            queued: true,
            build_hash: hash.into(),
            progress: Some(progress),
        });
        return Ok(Build::Queued { running, max });
    }
    let job = build::build_job(mi, ix, hash, deadline_secs, &ctx.defaults);
    apply(job_api, name, &job).await?;
    ctx.metrics.build("started");
    let why = if mi.status.as_ref().and_then(|s| s.current_snapshot.as_ref()).is_some() {
        "spec, trigger or interval changed"
    } else {
        "first build"
    };
    ctx.event(mi, false, "BuildStarted", "Build", format!("started build Job {name} ({why})")).await;
    let b = BuildStatus {
        job: Some(name.into()),
        started: Some(status::now_string()),
        queued: false,
        build_hash: hash.into(),
        progress: Some("running".into()),
    };
    st.current_build = Some(b.clone());
    Ok(Build::Running(b))
}

/// Sets phase and conditions from the build outcome and matchers; returns when to look again.
fn summarize(st: &mut MatchingIndexStatus, outcome: &Build, gen: Option<i64>) -> Duration {
    let has_snapshot = st.current_snapshot.is_some();
    let (desired, ready) = st.matchers.as_ref().map_or((0, 0), |m| (m.desired, m.ready));
    let (requeue, phase) = match outcome {
        Build::UpToDate => {
            status::set(&mut st.conditions, "Building", false, "UpToDate", "snapshot matches the spec", gen);
            status::set(&mut st.conditions, "BuildFailed", false, "UpToDate", "", gen);
            (
                Duration::from_secs(if ready < desired { 10 } else { 300 }),
                if ready >= desired { Phase::Ready } else { Phase::Pending },
            )
        }
        Build::Queued { running, max } => {
            status::set(
                &mut st.conditions,
                "Building",
                false,
                "Queued",
                format!("waiting for a build slot ({running}/{max} running)"),
                gen,
            );
            (Duration::from_secs(5), if has_snapshot { Phase::Ready } else { Phase::Pending })
        }
        Build::Running(b) => {
            status::set(
                &mut st.conditions,
                "Building",
                true,
                "JobRunning",
                format!("build Job {} running", b.job.clone().unwrap_or_default()),
                gen,
            );
            status::set(&mut st.conditions, "BuildFailed", false, "Building", "", gen);
            (Duration::from_secs(10), if has_snapshot { Phase::Ready } else { Phase::Building })
        }
        Build::Failed { job, hash, message } => {
            status::set(
                &mut st.conditions,
                "Building",
                false,
                "JobFailed",
                format!("build {hash} (Job {job}) failed"),
                gen,
            );
            status::set(&mut st.conditions, "BuildFailed", true, "JobFailed", message.clone(), gen);
            (Duration::from_secs(300), if has_snapshot { Phase::Degraded } else { Phase::Failed })
        }
    };
    let phase = if phase == Phase::Ready && has_snapshot && ready < desired { Phase::Pending } else { phase };
    let (ok, reason, msg) = match phase {
        Phase::Ready => (true, "Ready", format!("serving snapshot with {ready}/{desired} matchers ready")),
        Phase::Building => (false, "Building", "first build running".to_string()),
        Phase::Pending if has_snapshot => (false, "MatchersStarting", format!("{ready}/{desired} matchers ready")),
        Phase::Pending => (false, "Pending", "waiting for a build slot".to_string()),
        Phase::Degraded => (false, "BuildFailed", "latest build failed; serving the previous snapshot".to_string()),
        Phase::Failed => (false, "BuildFailed", "build failed and no snapshot exists".to_string()),
    };
    status::set(&mut st.conditions, "Ready", ok, reason, msg, gen);
    st.phase = Some(phase);
    requeue
}

pub async fn write_status(mi: &MatchingIndex, ctx: &Context, st: &MatchingIndexStatus) -> Result<()> {
    let api: Api<MatchingIndex> = Api::namespaced(ctx.client.clone(), &mi.namespace().unwrap_or_default());
    let patch = json!({"apiVersion": "kim.dev/v1alpha1", "kind": "MatchingIndex", "status": st});
    api.patch_status(&mi.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}
