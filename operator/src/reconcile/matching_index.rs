//! MatchingIndex: dereference → validate → build decision → desired children → apply and
//! prune → status. The decisions that need no I/O (`summarize`) are plain functions.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use std::collections::BTreeMap;

use kim_api::build::{BuildReport, Built};
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::ResourceExt;

use super::jobs::{self, JobState};
use super::{apply, children, write_status, Error, Result};
use crate::build;
use crate::context::Context;
use crate::crd::{
    BuildStatus, Indexer, MatchersStatus, MatchingIndex, MatchingIndexStatus, Phase, ShardSnapshot, SnapshotStatus,
};
use crate::{status, validate};

/// Why nothing can be built or served right now.
#[derive(Debug, Clone, PartialEq)]
pub enum Blocked {
    InvalidSpec(String),
    IndexerNotFound(String),
    IndexerInvalid(String),
}

/// What the build step concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum Build {
    UpToDate,
    Queued { running: usize, max: i32 },
    Running { job: String, attempt: i32, attempts: i32 },
    Failed { job: String, message: String },
}

/// Everything `summarize` decides from.
#[derive(Debug, Clone, PartialEq)]
pub enum Facts {
    Blocked(Blocked),
    /// `switch`: a change of shard layout in progress (the old layout still answers).
    Built {
        build: Build,
        missing_secrets: Vec<String>,
        waiting: Vec<Waiting>,
        switch: Option<super::layout::Switch>,
    },
}

/// A matcher container that does not run, and why (what `kubectl describe pod` would show).
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    pub pod: String,
    /// The kubelet's reason: `CrashLoopBackOff`, `ImagePullBackOff`, `CreateContainerConfigError`…
    pub reason: String,
    pub message: String,
}

pub async fn apply_spec(mi: Arc<MatchingIndex>, ctx: Arc<Context>) -> Result<Action> {
    let ns = mi.namespace().unwrap_or_default();
    let api: Api<MatchingIndex> = Api::namespaced(ctx.client.clone(), &ns);
    let gen = mi.metadata.generation;
    let old = mi.status.clone().unwrap_or_default();
    let mut st = old.clone();
    st.observed_generation = gen;
    st.matcher_selector = Some(mi.matcher_selector());

    // dereference
    let ix_name = &mi.spec.indexer_ref.name;
    let ix = Api::<Indexer>::namespaced(ctx.client.clone(), &ns)
        .get_opt(ix_name)
        .await
        .map_err(Error::reading(format!("Indexer {ns}/{ix_name}")))?;
    let missing_secrets = missing_secrets(&ctx, &ns, &mi, ix.as_ref()).await?;

    // validate
    let checked = validate::matching_index(&mi).map_err(|e| Blocked::InvalidSpec(e.0)).and_then(|intervals| {
        let ix =
            ix.ok_or_else(|| Blocked::IndexerNotFound(format!("Indexer {ix_name:?} not found in namespace {ns:?}")))?;
        let deadline =
            validate::indexer(&ix.spec).map_err(|e| Blocked::IndexerInvalid(format!("Indexer {ix_name:?}: {e}")))?;
        validate::on_indexer(&mi, &ix.spec).map_err(|e| Blocked::InvalidSpec(e.0))?;
        Ok((intervals, ix, deadline))
    });
    let (intervals, ix, deadline) = match checked {
        Ok(v) => v,
        Err(blocked) => {
            let facts = Facts::Blocked(blocked);
            let requeue = summarize(&mut st, &facts, mi.spec.matcher.replicas, gen);
            warn_not_ready(&mi, &ctx, &st).await;
            write_status(&api, mi.as_ref(), &st).await?;
            ctx.metrics.index.observe(&ns, &mi.name_any(), &st);
            return Ok(requeue.map_or_else(Action::await_change, Action::requeue));
        }
    };

    // build
    let (epoch, next_epoch) = interval_epoch(&mi, intervals.rebuild);
    let hash = build::build_hash(&mi, epoch);
    let build = build_step(&mi, &ix, &hash, deadline.as_secs() as i64, &ctx, &mut st).await?;
    super::rollback::step(&mi, &ix, &ctx, &mut st).await?;
    let next_refresh =
        super::refresh::step(&mi, &ix, &ctx, &hash, intervals.refresh, deadline.as_secs() as i64, &mut st).await?;

    // how many matchers: none before a snapshot, the pool's, else the spec's or the autoscaler's
    let matchers = match st.current_snapshot {
        None => build::Matchers::NotYet,
        Some(_) if mi.spec.matcher.pool => build::Matchers::Pool,
        Some(_) => super::autoscale::step(&mi, &ctx, &ns, &mut st).await,
    };
    super::pool::membership(&mi, &ix, &ctx, &ns, &mut st).await;

    // desired children (matchers in the served snapshot's layout; another layout's kept until
    // this one's are ready), applied; the rest of this object's children deleted
    // the online agents the gateways use, through a change of `online.agents`
    let (agents, agents_changing) = super::online::step(&mi, &ix, &ctx, &mut st).await?;

    let shards = st.current_snapshot.as_ref().map_or(1, |s| s.layout());
    let mut want = build::children(&mi, &ix, &ctx.defaults, matchers, shards, agents);
    let switch = match matchers {
        build::Matchers::NotYet | build::Matchers::Pool => None,
        _ => super::layout::step(&mi, &ctx, &ns, shards, &mut want, &mut st).await?,
    };
    let synced = children::sync_all(&ctx.client, &ns, &mi.name_any(), &want).await?;
    report_children(&mi, &ctx, &synced).await;
    let names: Vec<String> = build::Shard::all(shards).map(|s| build::shard_deployment_name(&mi, s)).collect();
    let serving: Vec<_> = synced.deployments.iter().filter(|d| names.contains(&d.name_any())).collect();
    // A shard's extra ready pods (a rollout's surge) do not make up for another shard's missing ones.
    st.matchers = (!serving.is_empty()).then(|| {
        let (mut desired, mut ready) = (0, 0);
        for d in &serving {
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(mi.spec.matcher.replicas);
            desired += want;
            ready += d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0).min(want);
        }
        MatchersStatus { desired, ready, summary: format!("{ready}/{desired}") }
    });
    if let Some(m) = &st.matchers {
        let note = format!("matcher Deployments {} want {} replicas", names.join(", "), m.desired);
        ctx.event(mi.as_ref(), false, "MatchersScaled", "Scale", note).await;
    }

    // what the matchers serve (one of them may have rejected the current snapshot)
    let seen = match matchers {
        build::Matchers::NotYet => super::served::Seen::default(),
        _ => super::served::step(&mi, &ctx, &ns, &mut st).await,
    };
    if matchers == build::Matchers::Pool {
        // The pool's matchers that serve this label, of the pool's size.
        let desired = ix.spec.pool.as_ref().map_or(0, |p| p.replicas);
        let ready = seen.serving.map_or(0, |n| n as i32).min(desired);
        let summary = format!("{ready}/{desired} in pool {}", build::pool_name(&ix));
        st.matchers = Some(MatchersStatus { desired, ready, summary });
    }

    // status
    let desired = st.matchers.as_ref().map_or(0, |m| m.desired);
    let waiting = if matchers != build::Matchers::Pool && st.matchers.as_ref().is_some_and(|m| m.ready < desired) {
        matchers_waiting(&ctx, &ns, &mi).await?
    } else {
        Vec::new()
    };
    let facts = Facts::Built { build, missing_secrets, waiting, switch };
    let wanted = st.matchers.as_ref().map_or(mi.spec.matcher.replicas, |m| m.desired);
    let mut requeue = summarize(&mut st, &facts, wanted, gen).unwrap_or(Duration::from_secs(300));
    if matches!(matchers, build::Matchers::Fixed(_)) && mi.spec.matcher.autoscaling.is_some() {
        requeue = requeue.min(ctx.autoscale_interval);
    }
    if matchers == build::Matchers::Pool && st.matchers.as_ref().is_some_and(|m| m.ready < m.desired) {
        // Nothing of the pool's changes this object: look again until the pool serves it.
        requeue = requeue.min(Duration::from_secs(5));
    }
    for again in [seen.again, next_refresh].into_iter().flatten() {
        requeue = requeue.min(again);
    }
    if agents_changing {
        // Gateway rollouts and agent readiness are watched, but a rebalance Job's pods are not.
        requeue = requeue.min(Duration::from_secs(5));
    }
    if !st.retired_groups.is_empty() {
        // Until the retired layout's pods are gone and its groups destroyed.
        requeue = requeue.min(Duration::from_secs(10));
    }
    warn_not_ready(&mi, &ctx, &st).await;
    write_status(&api, mi.as_ref(), &st).await?;
    ctx.metrics.index.observe(&ns, &mi.name_any(), &st);
    Ok(Action::requeue(next_epoch.map_or(requeue, |n| requeue.min(n))))
}

/// The snapshot a build or refresh Job's reports describe (of a split label, every shard's
/// that reported); `None` when no pod left a report of a snapshot.
pub(super) fn reported_snapshot(mi: &MatchingIndex, reports: &jobs::Reports, hash: &str) -> Option<SnapshotStatus> {
    if mi.spec.shards > 1 {
        return Some(sharded_snapshot(reports.shards(), hash));
    }
    match reports.build() {
        Some(BuildReport::Built(b)) => Some(SnapshotStatus {
            id: b.snapshot,
            vectors: b.vectors as i64,
            built_at: b.created_at,
            build_seconds: b.build_seconds,
            build_hash: hash.into(),
            ..Default::default()
        }),
        _ => None,
    }
}

/// The snapshot of a split label from its shards' reports: shard 0's id, every shard's
/// vectors added up, the slowest shard's build time and the last one's finish.
pub fn sharded_snapshot(shards: BTreeMap<u32, Built>, hash: &str) -> SnapshotStatus {
    let mut snap = SnapshotStatus { build_hash: hash.into(), ..Default::default() };
    snap.id = shards.values().next().map_or_else(|| "unreported".into(), |b| b.snapshot.clone());
    for (shard, b) in shards {
        snap.vectors += b.vectors as i64;
        snap.build_seconds = match (snap.build_seconds, b.build_seconds) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        snap.built_at = snap.built_at.max(b.created_at);
        snap.shards.push(ShardSnapshot { shard: shard as i32, id: b.snapshot, vectors: b.vectors as i64 });
    }
    snap
}

/// Matcher containers the kubelet reports as waiting for a reason other than starting.
async fn matchers_waiting(ctx: &Context, ns: &str, mi: &MatchingIndex) -> Result<Vec<Waiting>> {
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default().labels(&mi.matcher_selector()))
        .await
        .map_err(Error::reading(format!("matcher pods of {ns}/{}", mi.name_any())))?;
    let mut out: Vec<Waiting> = pods
        .items
        .iter()
        .flat_map(|p| {
            let statuses = p.status.as_ref().and_then(|s| s.container_statuses.clone()).unwrap_or_default();
            statuses.into_iter().filter_map(move |c| {
                let w = c.state?.waiting?;
                let reason = w.reason.filter(|r| r != "ContainerCreating" && r != "PodInitializing")?;
                Some(Waiting { pod: p.name_any(), reason, message: w.message.unwrap_or_default() })
            })
        })
        .collect();
    out.sort_by(|a, b| a.pod.cmp(&b.pod));
    Ok(out)
}

/// Secrets the spec (and its Indexer's object storage) names that do not exist (matchers and
/// agents cannot start without them).
async fn missing_secrets(ctx: &Context, ns: &str, mi: &MatchingIndex, ix: Option<&Indexer>) -> Result<Vec<String>> {
    let r = &mi.spec.redis;
    let mut names: Vec<&str> = Vec::new();
    if let Some(s3) = ix.and_then(build::object_storage) {
        names.extend(s3.credentials_secret.as_deref());
        names.extend(s3.ca_secret.as_deref());
    }
    names.extend(r.secret_ref.as_ref().map(|s| s.name.as_str()));
    names.extend(r.auth.as_ref().map(|a| a.secret_name.as_str()));
    names.extend(r.tls.as_ref().map(|t| t.secret_name.as_str()));
    if let Some(t) = mi.spec.online.as_ref().and_then(|o| o.tls.as_ref()) {
        names.push(&t.server_secret_name);
        names.extend(t.client_secret_name.as_deref());
    }
    names.sort();
    names.dedup();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut missing = Vec::new();
    for n in names {
        if api.get_metadata_opt(n).await.map_err(Error::reading(format!("Secret {ns}/{n}")))?.is_none() {
            missing.push(n.to_string());
        }
    }
    Ok(missing)
}

/// Events for the children that appeared or went away.
async fn report_children(mi: &MatchingIndex, ctx: &Context, synced: &children::Outcome) {
    let online = |names: &[String]| {
        names.iter().filter(|n| n.starts_with("StatefulSet/") || n.ends_with("-gateway")).cloned().collect::<Vec<_>>()
    };
    let created = online(&synced.created);
    if !created.is_empty() {
        let o = mi.spec.online.clone().unwrap_or_default();
        let note = format!(
            "created {} agents (replicas {}) and {} gateway replicas: {}",
            o.agents,
            o.replicas,
            o.gateway_replicas,
            created.join(", ")
        );
        ctx.event(mi, false, "OnlineCreated", "Provision", note).await;
    }
    if !synced.removed.is_empty() {
        let note = format!("deleted children no longer in the spec: {}", synced.removed.join(", "));
        ctx.event(mi, false, "ChildrenRemoved", "Prune", note).await;
    }
}

/// A Warning Event for each cause of not being Ready, once per change of its message.
async fn warn_not_ready(mi: &MatchingIndex, ctx: &Context, st: &MatchingIndexStatus) {
    for c in ["Ready", "SecretsFound"].iter().filter_map(|t| status::get(&st.conditions, t)) {
        let cause = matches!(
            c.reason.as_str(),
            "InvalidSpec"
                | "IndexerNotFound"
                | "IndexerInvalid"
                | "SecretNotFound"
                | "MatchersWaiting"
                | "SnapshotRejected"
        );
        if c.status == "False" && cause {
            ctx.event(mi, true, &c.reason, "Reconcile", c.message.clone()).await;
        }
    }
}

/// Epoch of the rebuild interval (0 without one) and the time until the next epoch starts.
pub(super) fn interval_epoch(mi: &MatchingIndex, interval: Option<Duration>) -> (u64, Option<Duration>) {
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
) -> Result<Build> {
    if st.current_snapshot.as_ref().is_some_and(|s| s.build_hash == hash) {
        st.current_build = None;
        return Ok(Build::UpToDate);
    }
    let ns = mi.namespace().unwrap_or_default();
    let job_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let name = build::job_name(mi, hash);
    let Some(job) = job_api.get_opt(&name).await.map_err(Error::reading(format!("Job {ns}/{name}")))? else {
        return admit(mi, ix, hash, deadline_secs, ctx, &job_api, &name, st).await;
    };
    match jobs::state(&job) {
        JobState::Running => {
            let (attempt, attempts) = jobs::attempt(&job);
            let mut progress = format!("attempt {attempt}/{attempts}");
            if attempt > 1 {
                if let Some(BuildReport::Failed { error }) = jobs::Reports::read(&pods, &name).await?.build() {
                    progress = format!("{progress}; the last attempt failed: {error}");
                }
            }
            let started = job.status.as_ref().and_then(|s| s.start_time.as_ref()).map(|t| t.0.to_string());
            st.current_build = Some(BuildStatus {
                job: Some(name.clone()),
                started,
                queued: false,
                build_hash: hash.into(),
                progress: Some(progress),
            });
            Ok(Build::Running { job: name, attempt, attempts })
        }
        JobState::Succeeded => {
            let reports = jobs::Reports::read(&pods, &name).await?;
            let snap = reported_snapshot(mi, &reports, hash).unwrap_or_else(|| SnapshotStatus {
                id: "unreported".into(),
                build_hash: hash.into(),
                ..Default::default()
            });
            if st.current_snapshot.as_ref() != Some(&snap) {
                ctx.metrics.build("succeeded");
            }
            let note = format!("Job {name} built snapshot {} with {} vectors", snap.id, snap.vectors);
            ctx.event(mi, false, "BuildSucceeded", "Build", note).await;
            st.current_snapshot = Some(snap);
            st.current_build = None;
            Ok(Build::UpToDate)
        }
        JobState::Failed(why) => {
            let message = match jobs::Reports::read(&pods, &name).await?.build() {
                Some(BuildReport::Failed { error }) => format!("build Job {name} failed: {error}"),
                _ => format!("build Job {name} failed: {why}"),
            };
            if !status::get(&st.conditions, "BuildFailed").is_some_and(|c| c.status == "True" && c.message == message) {
                ctx.metrics.build("failed");
            }
            ctx.event(mi, true, "BuildFailed", "Build", message.clone()).await;
            st.current_build = Some(BuildStatus {
                job: Some(name.clone()),
                started: None,
                queued: false,
                build_hash: hash.into(),
                progress: Some("failed".into()),
            });
            Ok(Build::Failed { job: name, message })
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
) -> Result<Build> {
    let _slot = ctx.admission.lock().await;
    let failed = |source| Error::Build { job: name.to_string(), source };
    let selector = format!("{}={},{}=build", build::LABEL_INDEXER, ix.name_any(), build::LABEL_COMPONENT);
    let running = job_api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(failed)?
        .items
        .iter()
        .filter(|j| jobs::is_running(j))
        .count();
    let max = ix.spec.max_concurrent_builds;
    if running >= max.max(1) as usize {
        if !st.current_build.as_ref().is_some_and(|b| b.queued && b.build_hash == hash) {
            ctx.metrics.build("queued");
        }
        let note = format!("build {hash} waits for a build slot of Indexer {}", ix.name_any());
        ctx.event(mi, false, "BuildQueued", "Build", note).await;
        st.current_build = Some(BuildStatus {
            job: None,
            started: None,
            queued: true,
            build_hash: hash.into(),
            progress: Some(format!("queued: {running}/{max} builds of Indexer {} running", ix.name_any())),
        });
        return Ok(Build::Queued { running, max });
    }
    let job = build::build_job(mi, ix, hash, deadline_secs, &ctx.defaults);
    apply(job_api, name, &job).await.map_err(failed)?;
    ctx.metrics.build("started");
    let why = if st.current_snapshot.is_some() { "spec, trigger or interval changed" } else { "first build" };
    ctx.event(mi, false, "BuildStarted", "Build", format!("started build Job {name} ({why})")).await;
    let (attempt, attempts) = (1, ix.spec.retry_limit + 1);
    st.current_build = Some(BuildStatus {
        job: Some(name.into()),
        started: Some(status::now_string()),
        queued: false,
        build_hash: hash.into(),
        progress: Some(format!("attempt {attempt}/{attempts}")),
    });
    Ok(Build::Running { job: name.into(), attempt, attempts })
}

/// Sets phase, reason and conditions from the facts; returns when to look again (`None`: only
/// on a change of the object).
pub fn summarize(st: &mut MatchingIndexStatus, facts: &Facts, desired: i32, gen: Option<i64>) -> Option<Duration> {
    let serving = st.current_snapshot.is_some();
    let secs = |s: u64| Some(Duration::from_secs(s));
    let (build, (missing, waiting, switch)) = match facts {
        Facts::Blocked(b) => {
            // Whatever waited in the Indexer's queue leaves it.
            st.current_build = None;
            let (phase, reason, msg, requeue) = match b {
                Blocked::InvalidSpec(m) => {
                    status::set(&mut st.conditions, "SpecValid", false, "InvalidSpec", m.clone(), gen);
                    (Phase::Failed, "InvalidSpec", m, None)
                }
                Blocked::IndexerNotFound(m) => (Phase::Pending, "IndexerNotFound", m, secs(15)),
                Blocked::IndexerInvalid(m) => (Phase::Pending, "IndexerInvalid", m, secs(30)),
            };
            if !matches!(b, Blocked::InvalidSpec(_)) {
                status::set(&mut st.conditions, "SpecValid", true, "Valid", "spec is valid", gen);
            }
            let phase = if serving && phase == Phase::Pending { Phase::Degraded } else { phase };
            status::set(&mut st.conditions, "Ready", false, reason, msg.clone(), gen);
            st.phase = Some(phase);
            st.reason = Some(reason.into());
            return requeue;
        }
        Facts::Built { build, missing_secrets, waiting, switch } => (build, (missing_secrets, waiting, switch)),
    };
    status::set(&mut st.conditions, "SpecValid", true, "Valid", "spec is valid", gen);
    let ready = st.matchers.as_ref().map_or(0, |m| m.ready);
    let all_ready = serving && ready >= desired;
    if missing.is_empty() {
        status::set(&mut st.conditions, "SecretsFound", true, "Found", "every Secret the spec names exists", gen);
    } else {
        let msg = format!("Secret {} not found in the namespace", missing.join(", "));
        status::set(&mut st.conditions, "SecretsFound", false, "SecretNotFound", msg, gen);
    }
    let (phase, reason, short, msg, requeue): (Phase, &str, String, String, u64) = match build {
        Build::UpToDate => {
            status::set(&mut st.conditions, "Building", false, "UpToDate", "snapshot matches the spec", gen);
            status::set(&mut st.conditions, "BuildFailed", false, "UpToDate", "", gen);
            // A switch is decided over the Deployments as listed before this reconcile applied
            // them: the new layout's matchers may look all ready here while the old layout
            // still runs, and Ready then would come before the old layout went.
            if let Some(s) = switch {
                let short = format!("{}/{} shards ready", s.ready, s.to);
                (Phase::Deploying, "SwitchingShards", short, s.message(), 10)
            } else if let (true, Some(r)) = (all_ready, st.rejected_snapshots.first()) {
                let more = st.rejected_snapshots.len() - 1;
                let more = if more > 0 { format!(" (and on {more} more)") } else { String::new() };
                let msg = format!(
                    "snapshot {} failed verification on matcher {}{more}, which serves the older {} instead; \
                     build again (kim.dev/rebuild) or roll back (kim.dev/rollback-to)",
                    r.rejected, r.matcher, r.serving
                );
                (Phase::Degraded, "SnapshotRejected", "SnapshotRejected".into(), msg, 10)
            } else if all_ready {
                (Phase::Ready, "Ready", "Ready".into(), format!("serving with {ready}/{desired} matchers ready"), 300)
            } else {
                let short = format!("{ready}/{desired} matchers ready");
                (Phase::Deploying, "MatchersStarting", short.clone(), short, 10)
            }
        }
        Build::Queued { running, max } => {
            let msg = format!("waiting for a build slot ({running}/{max} running)");
            status::set(&mut st.conditions, "Building", false, "Queued", msg.clone(), gen);
            let phase = if serving { Phase::Rebuilding } else { Phase::Queued };
            (phase, "Queued", "Queued".into(), msg, 5)
        }
        Build::Running { job, attempt, attempts } => {
            let msg = format!("build Job {job} running, attempt {attempt}/{attempts}");
            status::set(&mut st.conditions, "Building", true, "JobRunning", msg.clone(), gen);
            status::set(&mut st.conditions, "BuildFailed", false, "Building", "", gen);
            let phase = if serving { Phase::Rebuilding } else { Phase::Building };
            (phase, "Building", format!("attempt {attempt}/{attempts}"), msg, 10)
        }
        Build::Failed { job, message } => {
            status::set(&mut st.conditions, "Building", false, "JobFailed", format!("Job {job} failed"), gen);
            status::set(&mut st.conditions, "BuildFailed", true, "JobFailed", message.clone(), gen);
            let (phase, msg) = if serving {
                (Phase::Degraded, format!("serving the previous snapshot; {message}"))
            } else {
                (Phase::Failed, message.clone())
            };
            (phase, "BuildFailed", "BuildFailed".into(), msg, 300)
        }
    };
    // Serving the previous snapshot while rebuilding counts as ready once matchers are, and so
    // does a switch of shard layout: the old layout answers until the new one is ready.
    let ok = phase == Phase::Ready
        || (phase == Phase::Rebuilding && (all_ready || switch.is_some()))
        || (phase == Phase::Deploying && switch.is_some());
    let (reason, short, msg, requeue) = if phase == Phase::Deploying && !missing.is_empty() {
        let m = format!("Secret {} not found in the namespace", missing.join(", "));
        ("SecretNotFound", "SecretNotFound".to_string(), m, 15)
    } else if let (Phase::Deploying, Some(w)) = (phase, waiting.first()) {
        // The kubelet's own reason, for the Reason column and a Warning Event.
        let more = if waiting.len() > 1 { format!(" (and {} more)", waiting.len() - 1) } else { String::new() };
        let m = format!("matcher pod {} is waiting: {}: {}{more}", w.pod, w.reason, w.message);
        ("MatchersWaiting", w.reason.clone(), m, 10)
    } else {
        (reason, short, msg, requeue)
    };
    status::set(&mut st.conditions, "Ready", ok, reason, msg, gen);
    st.phase = Some(phase);
    st.reason = Some(short);
    secs(requeue)
}
