//! Reconcile decisions against an in-memory API server (kube's client over a `tower-test`
//! mock): admission under the Indexer's concurrency, rebuild triggers, status summarising,
//! the finalizer's cleanup and the sweep of children no longer desired. No cluster needed.

mod fake;
mod object_storage;
mod pool;
mod refresh;
mod rollback;
mod shards;

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use serde_json::{json, Value};

use self::fake::Shared;
use super::matching_index::{summarize, Blocked, Build, Facts};
use super::{cleanup, finalizer};
use crate::context::Context;
use crate::crd::{MatchersStatus, MatchingIndex, MatchingIndexStatus, Phase, SnapshotStatus, REBUILD_ANNOTATION};
use crate::testing::{d, ix, mi};

const KIM: &str = "/apis/kim.dev/v1alpha1";
const BATCH: &str = "/apis/batch/v1";
const APPS: &str = "/apis/apps/v1";
const CORE: &str = "/api/v1";
const POLICY: &str = "/apis/policy/v1";
const EVENTS: &str = "/apis/events.k8s.io/v1";

fn setup(max_builds: i32) -> (Arc<Context>, Shared) {
    let (client, state) = fake::client();
    let mut i = ix();
    i.spec.max_concurrent_builds = max_builds;
    state.lock().unwrap().put(KIM, "indexers", serde_json::to_value(i).unwrap());
    (
        Context::new(client, d(), "test", (std::time::Duration::from_secs(120), std::time::Duration::from_secs(15))),
        state,
    )
}

fn add(state: &Shared, mut m: MatchingIndex) {
    m.metadata.uid = Some(format!("uid-{}", m.metadata.name.clone().unwrap_or_default()));
    state.lock().unwrap().put(KIM, "matchingindexes", serde_json::to_value(m).unwrap());
}

fn get(state: &Shared, name: &str) -> MatchingIndex {
    serde_json::from_value(state.lock().unwrap().get(KIM, "matchingindexes", name).unwrap().clone()).unwrap()
}

fn edit(state: &Shared, name: &str, f: impl FnOnce(&mut MatchingIndex)) {
    let mut m = get(state, name);
    f(&mut m);
    let gen = m.metadata.generation.unwrap_or(1) + 1;
    m.metadata.generation = Some(gen);
    let mut s = state.lock().unwrap();
    *s.get_mut(KIM, "matchingindexes", name).unwrap() = serde_json::to_value(m).unwrap();
}

async fn reconcile(ctx: &Arc<Context>, state: &Shared, name: &str) -> Action {
    finalizer::reconcile(Arc::new(get(state, name)), ctx.clone()).await.unwrap()
}

fn status(state: &Shared, name: &str) -> MatchingIndexStatus {
    get(state, name).status.unwrap_or_default()
}

fn names(state: &Shared, prefix: &str, resource: &str) -> Vec<String> {
    state.lock().unwrap().names(prefix, resource)
}

fn events(state: &Shared, reason: &str) -> usize {
    let s = state.lock().unwrap();
    s.objects.iter().filter(|(k, v)| k.starts_with(EVENTS) && v["reason"] == reason).count()
}

fn build_jobs(state: &Shared, mi: &str) -> Vec<String> {
    jobs_of(state, mi, "build")
}

/// Plays kubelet and Job controller: a pod with the worker's report, then the Job's
/// terminal condition (or, with `failed_attempts`, a retry in progress).
fn finish(state: &Shared, job: &str, outcome: Option<bool>, failed_attempts: i32, report: &str) {
    let mut s = state.lock().unwrap();
    let exit = if outcome == Some(true) { 0 } else { 1 };
    s.put(
        CORE,
        "pods",
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{job}-{failed_attempts}"), "labels": {"batch.kubernetes.io/job-name": job}},
            "status": {"phase": if exit == 0 { "Succeeded" } else { "Failed" }, "containerStatuses": [{
                "name": "index", "image": "w", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": exit, "message": report,
                    "finishedAt": format!("2026-11-22T00:00:{failed_attempts:02}Z")}}}]}}),
    );
    let j = s.get_mut(BATCH, "jobs", job).unwrap();
    let cond = |t: &str| json!([{"type": t, "status": "True", "reason": "BackoffLimitExceeded"}]);
    j["status"] = match outcome {
        Some(true) => json!({"succeeded": 1, "conditions": cond("Complete")}),
        Some(false) => json!({"failed": failed_attempts, "conditions": cond("Failed")}),
        None => json!({"failed": failed_attempts, "active": 1}),
    };
}

fn set_ready(state: &Shared, deployment: &str, ready: i32) {
    let mut s = state.lock().unwrap();
    let d = s.get_mut(APPS, "deployments", deployment).unwrap();
    // As the Deployment controller reports a finished rollout.
    let gen = d["metadata"]["generation"].clone();
    d["status"] = json!({"readyReplicas": ready, "updatedReplicas": ready, "observedGeneration": gen});
}

const BUILT: &str = r#"{"snapshot":"s1","label":"a","namespace":"team","vectors":50,"buildSeconds":1.5}"#;

#[tokio::test]
async fn first_reconcile_adds_the_finalizer_and_starts_a_build() {
    let (ctx, state) = setup(2);
    add(&state, mi("a"));
    let action = reconcile(&ctx, &state, "a").await;
    assert_eq!(action, Action::requeue(Duration::from_secs(10)));
    assert_eq!(get(&state, "a").metadata.finalizers, Some(vec![cleanup::FINALIZER.to_string()]));
    let jobs = build_jobs(&state, "a");
    assert_eq!(jobs.len(), 1);
    let st = status(&state, "a");
    assert_eq!((st.phase, st.reason.as_deref()), (Some(Phase::Building), Some("attempt 1/3")));
    assert_eq!(st.current_build.unwrap().job.as_deref(), Some(jobs[0].as_str()));
    assert!(names(&state, APPS, "deployments").is_empty(), "no matchers before a snapshot");
    assert_eq!(events(&state, "BuildStarted"), 1);
}

#[tokio::test]
async fn a_stale_copy_from_the_watch_cache_is_decided_on_as_stored() {
    let (ctx, state) = setup(2);
    add(&state, mi("a"));
    let stale = get(&state, "a");
    reconcile(&ctx, &state, "a").await;
    let before = status(&state, "a");
    // The cache still holds the object as it was before that reconcile: no finalizer (its
    // patch would conflict on the old resourceVersion) and no status.
    finalizer::reconcile(Arc::new(stale), ctx.clone()).await.unwrap();
    let (was, now) = (before.current_build.unwrap(), status(&state, "a").current_build.unwrap());
    assert_eq!((now.job, now.build_hash), (was.job, was.build_hash));
    assert_eq!(events(&state, "BuildStarted"), 1, "the build is not started twice");
}

#[tokio::test]
async fn admission_holds_the_indexers_concurrency_and_a_finished_build_frees_the_slot() {
    let (ctx, state) = setup(1);
    for n in ["a", "b", "c"] {
        add(&state, mi(n));
    }
    for n in ["a", "b", "c"] {
        reconcile(&ctx, &state, n).await;
    }
    assert_eq!(build_jobs(&state, "a").len(), 1);
    assert!(build_jobs(&state, "b").is_empty() && build_jobs(&state, "c").is_empty());
    for n in ["b", "c"] {
        let st = status(&state, n);
        assert_eq!(st.phase, Some(Phase::Queued), "{n}");
        assert!(st.current_build.as_ref().unwrap().queued);
    }
    // Reconciling the queued ones again starts nothing and repeats no Event.
    reconcile(&ctx, &state, "b").await;
    assert!(build_jobs(&state, "b").is_empty());
    assert_eq!(events(&state, "BuildQueued"), 2);

    // A retrying build keeps its slot and says which attempt runs and why the last failed.
    let ja = build_jobs(&state, "a")[0].clone();
    finish(&state, &ja, None, 1, r#"{"error":"cannot read source"}"#);
    reconcile(&ctx, &state, "a").await;
    let st = status(&state, "a");
    assert_eq!(st.reason.as_deref(), Some("attempt 2/3"));
    assert!(st.current_build.unwrap().progress.unwrap().contains("cannot read source"));
    reconcile(&ctx, &state, "b").await;
    assert!(build_jobs(&state, "b").is_empty());

    // a fails for good: the slot is free at once and b starts.
    finish(&state, &ja, Some(false), 3, r#"{"error":"source has 128 dimensions, index expects 512"}"#);
    reconcile(&ctx, &state, "a").await;
    let st = status(&state, "a");
    assert_eq!((st.phase, st.reason.as_deref()), (Some(Phase::Failed), Some("BuildFailed")));
    assert!(st.conditions.iter().any(|c| c.type_ == "BuildFailed" && c.message.contains("128 dimensions")));
    reconcile(&ctx, &state, "b").await;
    let jb = build_jobs(&state, "b");
    assert_eq!(jb.len(), 1);
    reconcile(&ctx, &state, "c").await;
    assert!(build_jobs(&state, "c").is_empty(), "b holds the only slot");

    // b succeeds: snapshot in status, matchers and their budget appear, c starts.
    finish(&state, &jb[0], Some(true), 0, BUILT);
    reconcile(&ctx, &state, "b").await;
    let st = status(&state, "b");
    let snap = st.current_snapshot.unwrap();
    assert_eq!((snap.id.as_str(), snap.vectors, snap.build_seconds), ("s1", 50, Some(1.5)));
    assert_eq!(st.phase, Some(Phase::Deploying));
    assert_eq!(names(&state, APPS, "deployments"), vec!["b-matcher"]);
    assert_eq!(names(&state, POLICY, "poddisruptionbudgets"), vec!["b-matcher"]);
    reconcile(&ctx, &state, "c").await;
    assert_eq!(build_jobs(&state, "c").len(), 1);
    set_ready(&state, "b-matcher", 1);
    reconcile(&ctx, &state, "b").await;
    let st = status(&state, "b");
    assert_eq!((st.phase, st.matchers.unwrap().summary.as_str()), (Some(Phase::Ready), "1/1"));
    assert_eq!(events(&state, "BuildSucceeded"), 1);
}

#[tokio::test]
async fn rebuilds_follow_build_inputs_only() {
    let (ctx, state) = setup(4);
    add(&state, mi("a"));
    reconcile(&ctx, &state, "a").await;
    let first = build_jobs(&state, "a");
    finish(&state, &first[0], Some(true), 0, BUILT);
    reconcile(&ctx, &state, "a").await;
    set_ready(&state, "a-matcher", 1);

    // Scaling matchers is no rebuild.
    edit(&state, "a", |m| m.spec.matcher.replicas = 3);
    reconcile(&ctx, &state, "a").await;
    assert_eq!(build_jobs(&state, "a").len(), 1);
    let dep = state.lock().unwrap().get(APPS, "deployments", "a-matcher").unwrap().clone();
    assert_eq!(dep["spec"]["replicas"], 3);
    assert_eq!(status(&state, "a").phase, Some(Phase::Deploying), "1/3 ready");

    // efSearch is no rebuild either: it reaches the matchers through their arguments.
    edit(&state, "a", |m| m.spec.hnsw.ef_search = 300);
    reconcile(&ctx, &state, "a").await;
    assert_eq!(build_jobs(&state, "a").len(), 1);
    let dep = state.lock().unwrap().get(APPS, "deployments", "a-matcher").unwrap().clone();
    let args: Vec<String> =
        serde_json::from_value(dep["spec"]["template"]["spec"]["containers"][0]["args"].clone()).unwrap();
    assert!(args.windows(2).any(|w| w == ["--ef-search", "300"]), "{args:?}");

    // New graph parameters rebuild while the old snapshot keeps serving.
    edit(&state, "a", |m| m.spec.hnsw.m = 24);
    set_ready(&state, "a-matcher", 3);
    reconcile(&ctx, &state, "a").await;
    assert_eq!(build_jobs(&state, "a").len(), 2);
    let st = status(&state, "a");
    assert_eq!(st.phase, Some(Phase::Rebuilding));
    assert!(st.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"), "still serving");

    // So does the manual trigger; a repeated reconcile makes no second Job for it.
    edit(&state, "a", |m| {
        m.metadata.annotations = Some([(REBUILD_ANNOTATION.to_string(), "1".to_string())].into());
    });
    reconcile(&ctx, &state, "a").await;
    reconcile(&ctx, &state, "a").await;
    assert_eq!(build_jobs(&state, "a").len(), 3);
}

#[tokio::test]
async fn removing_online_deletes_agents_services_gateway_and_strays() {
    let (ctx, state) = setup(1);
    let mut m = mi("t");
    m.spec.online = Some(serde_json::from_value(json!({"agents": 3, "replicas": 2})).unwrap());
    add(&state, m);
    // Another index's Deployment and a stray child of this one.
    let stray = |name: &str, owner: &str| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": {
            "kim.dev/matching-index": owner, "app.kubernetes.io/managed-by": "kim-operator"}}})
    };
    state.lock().unwrap().put(APPS, "deployments", stray("other-matcher", "other"));
    state.lock().unwrap().put(APPS, "deployments", stray("t-old", "t"));
    reconcile(&ctx, &state, "t").await;
    assert_eq!(names(&state, APPS, "statefulsets"), vec!["t-agent"]);
    assert_eq!(names(&state, CORE, "services"), vec!["t-agent", "t-gateway"]);
    assert_eq!(names(&state, APPS, "deployments"), vec!["other-matcher", "t-gateway"], "stray swept");
    let pdb = state.lock().unwrap().get(POLICY, "poddisruptionbudgets", "t-agent").unwrap().clone();
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(events(&state, "OnlineCreated"), 1);

    edit(&state, "t", |m| m.spec.online = None);
    reconcile(&ctx, &state, "t").await;
    assert!(names(&state, APPS, "statefulsets").is_empty());
    assert!(names(&state, CORE, "services").is_empty());
    assert!(names(&state, POLICY, "poddisruptionbudgets").is_empty());
    assert_eq!(names(&state, APPS, "deployments"), vec!["other-matcher"]);
    assert_eq!(build_jobs(&state, "t").len(), 1, "build Jobs are not swept");
    assert_eq!(events(&state, "ChildrenRemoved"), 2);
}

#[tokio::test]
async fn blocked_indexes_say_why_once_and_leave_the_queue() {
    let (ctx, state) = setup(1);
    add(&state, mi("a"));
    add(&state, mi("b"));
    reconcile(&ctx, &state, "a").await;
    reconcile(&ctx, &state, "b").await;
    assert!(status(&state, "b").current_build.unwrap().queued);

    // b's spec turns invalid: it leaves the queue and waits for a change.
    edit(&state, "b", |m| m.spec.source.path = Some("../x".into()));
    assert_eq!(reconcile(&ctx, &state, "b").await, Action::await_change());
    let st = status(&state, "b");
    assert_eq!((st.phase, st.reason.as_deref(), st.current_build), (Some(Phase::Failed), Some("InvalidSpec"), None));

    // An Indexer that does not exist: Pending, one Warning however many reconciles.
    let mut c = mi("c");
    c.spec.indexer_ref.name = "missing".into();
    add(&state, c);
    for _ in 0..3 {
        assert_eq!(reconcile(&ctx, &state, "c").await, Action::requeue(Duration::from_secs(15)));
    }
    let st = status(&state, "c");
    assert_eq!((st.phase, st.reason.as_deref()), (Some(Phase::Pending), Some("IndexerNotFound")));
    assert_eq!(events(&state, "IndexerNotFound"), 1);
    assert_eq!(events(&state, "InvalidSpec"), 1);
}

#[tokio::test]
async fn a_missing_secret_is_the_reason_matchers_do_not_start() {
    let (ctx, state) = setup(1);
    let mut m = mi("a");
    m.spec.redis.url = None;
    m.spec.redis.secret_ref = Some(crate::crd::SecretKeyRef { name: "redis".into(), key: "url".into() });
    add(&state, m);
    reconcile(&ctx, &state, "a").await;
    finish(&state, &build_jobs(&state, "a")[0], Some(true), 0, BUILT);
    reconcile(&ctx, &state, "a").await;
    let st = status(&state, "a");
    assert_eq!((st.phase, st.reason.as_deref()), (Some(Phase::Deploying), Some("SecretNotFound")));
    assert_eq!(events(&state, "SecretNotFound"), 1);
    state.lock().unwrap().put(
        CORE,
        "secrets",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis"}}),
    );
    set_ready(&state, "a-matcher", 1);
    reconcile(&ctx, &state, "a").await;
    assert_eq!(status(&state, "a").phase, Some(Phase::Ready));
}

fn jobs_of(state: &Shared, mi: &str, component: &str) -> Vec<String> {
    let s = state.lock().unwrap();
    s.objects
        .iter()
        .filter(|(k, v)| {
            k.starts_with(&format!("{BATCH}/jobs/"))
                && v["metadata"]["labels"]["kim.dev/matching-index"] == mi
                && v["metadata"]["labels"]["kim.dev/component"] == component
        })
        .map(|(_, v)| v["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn delete_at(state: &Shared, name: &str, when: &str) {
    state.lock().unwrap().get_mut(KIM, "matchingindexes", name).unwrap()["metadata"]["deletionTimestamp"] = json!(when);
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

fn event_notes(state: &Shared, reason: &str) -> Vec<String> {
    let s = state.lock().unwrap();
    s.objects
        .iter()
        .filter(|(k, v)| k.starts_with(EVENTS) && v["reason"] == reason)
        .map(|(_, v)| v["note"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn a_finalizer_blocked_by_redis_says_why_once_and_waits_without_an_error() {
    let (ctx, state) = setup(1);
    let mut m = mi("a");
    m.spec.redis.url = Some("redis://127.0.0.1:1".into());
    m.spec.online = Some(serde_json::from_value(json!({})).unwrap());
    add(&state, m);
    reconcile(&ctx, &state, "a").await;
    assert!(!names(&state, APPS, "statefulsets").is_empty());
    // kubectl delete: the finalizer holds the object.
    delete_at(&state, "a", &now());
    // Redis is unreachable: children go at once, the object waits (Ok, not an error).
    assert_eq!(reconcile(&ctx, &state, "a").await, Action::requeue(Duration::from_secs(2)));
    assert!(names(&state, APPS, "statefulsets").is_empty() && names(&state, CORE, "services").is_empty());
    assert!(build_jobs(&state, "a").is_empty());
    let cond = status(&state, "a").conditions.into_iter().find(|c| c.type_ == cleanup::BLOCKED).unwrap();
    assert_eq!((cond.status.as_str(), cond.reason.as_str()), ("True", "RedisUnreachable"));
    assert!(cond.message.contains(cleanup::SKIP_ANNOTATION), "{}", cond.message);
    reconcile(&ctx, &state, "a").await;
    assert_eq!(events(&state, cleanup::BLOCKED), 1, "one Warning per cause, not one per pass");
    assert!(state.lock().unwrap().get(KIM, "matchingindexes", "a").is_some());
    // An admin skips the Redis and file steps: the finalizer goes and so does the object, and
    // the Event says what was kept.
    state.lock().unwrap().get_mut(KIM, "matchingindexes", "a").unwrap()["metadata"]["annotations"] =
        json!({cleanup::SKIP_ANNOTATION: "true"});
    assert_eq!(reconcile(&ctx, &state, "a").await, Action::await_change());
    assert!(state.lock().unwrap().get(KIM, "matchingindexes", "a").is_none());
    let notes = event_notes(&state, "CleanedUp");
    assert_eq!(notes.len(), 1);
    assert!(notes[0].contains("kept (by kim.dev/skip-cleanup"), "{}", notes[0]);
}

#[tokio::test]
async fn past_the_cleanup_timeout_the_redis_step_is_given_up_and_the_files_still_go() {
    let (ctx, state) = setup(1);
    let mut m = mi("a");
    m.spec.redis.url = Some("redis://127.0.0.1:1".into());
    add(&state, m);
    reconcile(&ctx, &state, "a").await;
    delete_at(&state, "a", "2026-01-01T00:00:00Z");
    // The Redis step is over its time: the file Job runs, and the object waits for it only.
    assert_eq!(reconcile(&ctx, &state, "a").await, Action::requeue(Duration::from_secs(2)));
    let cleanup_jobs = jobs_of(&state, "a", "cleanup");
    assert_eq!(cleanup_jobs.len(), 1);
    finish(&state, &cleanup_jobs[0], Some(true), 0, "");
    assert_eq!(reconcile(&ctx, &state, "a").await, Action::await_change());
    assert!(state.lock().unwrap().get(KIM, "matchingindexes", "a").is_none());
    assert!(jobs_of(&state, "a", "cleanup").is_empty());
    let notes = event_notes(&state, "CleanupIncomplete");
    assert_eq!(notes.len(), 1);
    assert!(notes[0].contains("removed the index files") && notes[0].contains("by hand"), "{}", notes[0]);
}

#[tokio::test]
async fn retain_keeps_redis_files_and_claims_and_says_so() {
    let (ctx, state) = setup(1);
    let mut m = mi("a");
    m.spec.redis.url = Some("redis://127.0.0.1:1".into());
    m.spec.deletion_policy = crate::crd::DeletionPolicy::Retain;
    add(&state, m);
    reconcile(&ctx, &state, "a").await;
    delete_at(&state, "a", &now());
    // Redis is down, but Retain never talks to it: the object goes at once, no cleanup Job.
    assert_eq!(reconcile(&ctx, &state, "a").await, Action::await_change());
    assert!(state.lock().unwrap().get(KIM, "matchingindexes", "a").is_none());
    assert!(jobs_of(&state, "a", "cleanup").is_empty());
    let notes = event_notes(&state, "CleanedUp");
    assert_eq!(notes.len(), 1);
    assert!(notes[0].contains("kept (by deletionPolicy Retain) Redis stream"), "{}", notes[0]);
    assert_eq!(events(&state, "CleanupIncomplete"), 0);
}

#[tokio::test]
async fn a_matcher_pod_that_cannot_start_says_why_in_the_reason_column_once() {
    let (ctx, state) = setup(1);
    add(&state, mi("a"));
    reconcile(&ctx, &state, "a").await;
    finish(&state, &build_jobs(&state, "a")[0], Some(true), 0, BUILT);
    reconcile(&ctx, &state, "a").await;
    // Starting is no cause; a container the kubelet cannot create is.
    let pod = |reason: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a-matcher-x1", "labels": {"kim.dev/matching-index": "a", "kim.dev/component": "matcher"}},
            "status": {"containerStatuses": [{"name": "matcher", "image": "w", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"waiting": {"reason": reason, "message": "secret \"redis\" not found"}}}]}})
    };
    state.lock().unwrap().put(CORE, "pods", pod("ContainerCreating"));
    reconcile(&ctx, &state, "a").await;
    assert_eq!(status(&state, "a").reason.as_deref(), Some("0/1 matchers ready"));
    state.lock().unwrap().put(CORE, "pods", pod("CreateContainerConfigError"));
    reconcile(&ctx, &state, "a").await;
    reconcile(&ctx, &state, "a").await;
    let st = status(&state, "a");
    assert_eq!((st.phase, st.reason.as_deref()), (Some(Phase::Deploying), Some("CreateContainerConfigError")));
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.reason, "MatchersWaiting");
    assert!(ready.message.contains("a-matcher-x1") && ready.message.contains("not found"), "{}", ready.message);
    assert_eq!(events(&state, "MatchersWaiting"), 1);
    set_ready(&state, "a-matcher", 1);
    reconcile(&ctx, &state, "a").await;
    assert_eq!(status(&state, "a").phase, Some(Phase::Ready));
}

fn served(ready: i32, desired: i32) -> MatchingIndexStatus {
    MatchingIndexStatus {
        current_snapshot: Some(SnapshotStatus { id: "s".into(), build_hash: "h".into(), ..Default::default() }),
        matchers: Some(MatchersStatus { desired, ready, summary: String::new() }),
        ..Default::default()
    }
}

/// Served, with one matcher that rejected snapshot `s` and serves `r` instead.
fn rejecting() -> MatchingIndexStatus {
    let rejected =
        vec![crate::crd::RejectedSnapshot { matcher: "m-1".into(), rejected: "s".into(), serving: "r".into() }];
    MatchingIndexStatus { rejected_snapshots: rejected, ..served(2, 2) }
}

#[test]
fn a_rejected_snapshot_says_where_and_what_to_do() {
    let mut st = rejecting();
    summarize(&mut st, &built(Build::UpToDate), 2, Some(1));
    let ready = crate::status::get(&st.conditions, "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "SnapshotRejected"));
    for part in ["snapshot s failed verification on matcher m-1", "serves the older r", "kim.dev/rollback-to"] {
        assert!(ready.message.contains(part), "{part:?} in {:?}", ready.message);
    }
    // A rejection found while the matchers are still starting does not hide why they are not ready.
    let mut st = MatchingIndexStatus { rejected_snapshots: rejecting().rejected_snapshots, ..served(1, 2) };
    summarize(&mut st, &built(Build::UpToDate), 2, Some(1));
    assert_eq!(st.reason.as_deref(), Some("1/2 matchers ready"));
}

#[test]
fn served_entries_report_rejections_and_matchers_still_moving() {
    use crate::reconcile::served::report;
    let entry = |snapshot: &str, rejected: Option<&str>, until: u64| kim_api::Served {
        info: kim_api::LabelInfo {
            version: 59,
            dimensions: 8,
            encoding: "u8".into(),
            metric: "cosine".into(),
            vectors: 1,
            snapshot: snapshot.into(),
            rejected: rejected.map(str::to_string),
            deltas: 0,
            tail: 0,
            tombstones: 0,
            shard: None,
            shards: None,
        },
        until,
    };
    let current = SnapshotStatus { id: "new".into(), ..Default::default() };
    let mut entries = vec![
        ("b".to_string(), entry("old", Some("new"), 100)),
        ("a".to_string(), entry("new", None, 100)),
        ("c".to_string(), entry("old", None, 100)),
        ("dead".to_string(), entry("old", Some("new"), 99)),
    ];
    (entries[1].1.info.deltas, entries[1].1.info.tail) = (2, 7);
    let r = report(&current, &entries, 100);
    assert_eq!(r.behind, 1, "c still serves old without having rejected new");
    assert_eq!(r.current, 1, "only a serves new (dead's entry is stale)");
    assert_eq!(r.deltas, Some((2, 7)), "what a matcher serving the current snapshot applied");
    assert_eq!(report(&current, &entries[..1], 100).deltas, None, "nobody serves it");
    assert_eq!(r.rejected.len(), 1, "{:?}", r.rejected);
    assert_eq!((r.rejected[0].matcher.as_str(), r.rejected[0].serving.as_str()), ("b", "old"));
    // A split label's shards each have their own id.
    let split = SnapshotStatus {
        id: "s0".into(),
        shards: vec![crate::crd::ShardSnapshot { shard: 1, id: "s1".into(), vectors: 1 }],
        ..Default::default()
    };
    let r = report(&split, &[("a".into(), entry("s1", None, 5))], 5);
    assert_eq!((r.behind, r.rejected.len()), (0, 0));
}

fn built(build: Build) -> Facts {
    Facts::Built { build, missing_secrets: Vec::new(), waiting: Vec::new(), switch: None }
}

#[test]
#[allow(clippy::type_complexity)]
fn summaries() {
    let cases: Vec<(MatchingIndexStatus, Facts, Phase, &str, bool, Option<u64>)> = vec![
        (served(2, 2), built(Build::UpToDate), Phase::Ready, "Ready", true, Some(300)),
        (rejecting(), built(Build::UpToDate), Phase::Degraded, "SnapshotRejected", false, Some(10)),
        // The switch's decision saw a new shard not ready; the applied Deployments (read later)
        // are all ready: still switching until a reconcile removes the old layout.
        (
            served(3, 3),
            Facts::Built {
                build: Build::UpToDate,
                missing_secrets: Vec::new(),
                waiting: Vec::new(),
                switch: Some(crate::reconcile::layout::Switch { from: 2, to: 3, ready: 2 }),
            },
            Phase::Deploying,
            "2/3 shards ready",
            true,
            Some(10),
        ),
        (served(1, 2), built(Build::UpToDate), Phase::Deploying, "1/2 matchers ready", false, Some(10)),
        // A rebuild starting while the layout switches: the old layout still answers.
        (
            served(1, 3),
            Facts::Built {
                build: Build::Running { job: "j".into(), attempt: 1, attempts: 3 },
                missing_secrets: Vec::new(),
                waiting: Vec::new(),
                switch: Some(crate::reconcile::layout::Switch { from: 2, to: 3, ready: 1 }),
            },
            Phase::Rebuilding,
            "attempt 1/3",
            true,
            Some(10),
        ),
        (Default::default(), built(Build::Queued { running: 1, max: 1 }), Phase::Queued, "Queued", false, Some(5)),
        (served(2, 2), built(Build::Queued { running: 1, max: 1 }), Phase::Rebuilding, "Queued", true, Some(5)),
        (
            Default::default(),
            built(Build::Running { job: "j".into(), attempt: 2, attempts: 3 }),
            Phase::Building,
            "attempt 2/3",
            false,
            Some(10),
        ),
        (
            served(2, 2),
            built(Build::Failed { job: "j".into(), message: "m".into() }),
            Phase::Degraded,
            "BuildFailed",
            false,
            Some(300),
        ),
        (
            Default::default(),
            built(Build::Failed { job: "j".into(), message: "m".into() }),
            Phase::Failed,
            "BuildFailed",
            false,
            Some(300),
        ),
        (
            Default::default(),
            Facts::Blocked(Blocked::InvalidSpec("bad".into())),
            Phase::Failed,
            "InvalidSpec",
            false,
            None,
        ),
        (
            served(2, 2),
            Facts::Blocked(Blocked::IndexerNotFound("x".into())),
            Phase::Degraded,
            "IndexerNotFound",
            false,
            Some(15),
        ),
        (
            Default::default(),
            Facts::Blocked(Blocked::IndexerInvalid("x".into())),
            Phase::Pending,
            "IndexerInvalid",
            false,
            Some(30),
        ),
    ];
    for (i, (mut st, facts, phase, reason, ready, requeue)) in cases.into_iter().enumerate() {
        let desired = st.matchers.as_ref().map_or(1, |m| m.desired);
        let got = summarize(&mut st, &facts, desired, Some(1));
        assert_eq!((st.phase, st.reason.as_deref()), (Some(phase), Some(reason)), "case {i}");
        assert_eq!(crate::status::is_true(&st.conditions, "Ready"), ready, "case {i}");
        assert_eq!(got, requeue.map(Duration::from_secs), "case {i}");
    }
}

#[test]
fn selector_of_the_fake_matches_like_the_api_server() {
    let v: Value = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
    assert!(fake::selects("a=1,b!=3", &v) && !fake::selects("a=1,b!=2", &v) && fake::selects("", &v));
}
