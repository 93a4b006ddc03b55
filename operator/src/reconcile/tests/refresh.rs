//! `spec.rebuild.refresh`: one refresh Job per interval while the snapshot matches the spec,
//! its outcome in `status.refresh` (and, for a rebuild, in the current snapshot), Events for a
//! rebuild and a failure, and a build stopping a refresh still running.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::*;
use crate::crd::RefreshSpec;

const DELTA: &str = r#"{"mode":"delta","snapshot":"s1","label":"a","namespace":"team","delta":1,"added":3,"removed":1,"tailRows":3,"tombstones":1,"vectors":52}"#;
const REBUILT: &str = r#"{"mode":"rebuild","reason":"the changes would pass 10 %","snapshot":"s2","label":"a","namespace":"team","vectors":60,"createdAt":"2026-11-30T00:00:00Z"}"#;

/// Moves the MatchingIndex's creation back by `secs`: as if that much time passed.
fn age(state: &Shared, secs: i64) {
    edit(state, "a", |m| {
        let t = m.metadata.creation_timestamp.as_ref().map_or_else(Timestamp::now, |t| t.0);
        m.metadata.creation_timestamp = Some(Time(t - SignedDuration::from_secs(secs)));
    });
}

fn newest(state: &Shared) -> String {
    let s = state.lock().unwrap();
    let mut jobs: Vec<(String, String)> = jobs_of_locked(&s, "refresh");
    jobs.sort();
    jobs.pop().map(|(_, n)| n).unwrap()
}

/// (creation order, name) of `a`'s Jobs of `component` (the fake stamps a counter).
fn jobs_of_locked(s: &fake::State, component: &str) -> Vec<(String, String)> {
    s.objects
        .iter()
        .filter(|(k, v)| {
            k.starts_with(&format!("{BATCH}/jobs/")) && v["metadata"]["labels"]["kim.dev/component"] == component
        })
        .map(|(_, v)| {
            let rv = v["metadata"]["resourceVersion"].as_str().unwrap_or("0");
            (format!("{rv:0>12}"), v["metadata"]["name"].as_str().unwrap().to_string())
        })
        .collect()
}

#[tokio::test]
async fn refresh_runs_once_per_interval_reports_what_it_did_and_stops_for_a_build() {
    let (ctx, state) = setup(1);
    let mut m = mi("a");
    m.spec.rebuild.refresh = Some(RefreshSpec { interval: "10s".into(), max_tail: 0.1 });
    m.spec.redis.url = Some("redis://127.0.0.1:1".into());
    m.metadata.creation_timestamp = Some(Time(Timestamp::now() - SignedDuration::from_secs(25)));
    add(&state, m);
    reconcile(&ctx, &state, "a").await;
    assert!(jobs_of(&state, "a", "refresh").is_empty(), "nothing to refresh before the first build");
    finish(&state, &build_jobs(&state, "a")[0], Some(true), 0, BUILT);
    reconcile(&ctx, &state, "a").await;

    // Served: the interval's refresh Job, with the build's source and settings.
    let jobs = jobs_of(&state, "a", "refresh");
    assert_eq!(jobs.len(), 1);
    let job = state.lock().unwrap().get(BATCH, "jobs", &jobs[0]).unwrap().clone();
    let args: Vec<&str> = job["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "refresh");
    assert!(args.windows(2).any(|w| w == ["--max-tail", "0.1"]), "{args:?}");
    assert!(args.windows(2).any(|w| w[0] == "--source"), "{args:?}");
    assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 600);
    assert_eq!(status(&state, "a").refresh.unwrap().state, "Running");
    assert_eq!(build_jobs(&state, "a").len(), 1, "a refresh is not a build");
    reconcile(&ctx, &state, "a").await;
    assert_eq!(jobs_of(&state, "a", "refresh").len(), 1, "one Job per interval");

    // A delta: status says what it wrote; the snapshot stays, with the live count.
    finish(&state, &jobs[0], Some(true), 0, DELTA);
    reconcile(&ctx, &state, "a").await;
    let st = status(&state, "a");
    let r = st.refresh.unwrap();
    assert_eq!(r.state, "Succeeded");
    assert!(r.message.as_deref().unwrap().starts_with("wrote delta 1: 3 rows added, 1 removed"), "{r:?}");
    let snap = st.current_snapshot.unwrap();
    assert_eq!((snap.id.as_str(), snap.vectors), ("s1", 52));

    // The next interval rebuilds instead: the rebuild becomes the current snapshot, once.
    age(&state, 10);
    reconcile(&ctx, &state, "a").await;
    assert_eq!(jobs_of(&state, "a", "refresh").len(), 2);
    let second = newest(&state);
    finish(&state, &second, Some(true), 0, REBUILT);
    reconcile(&ctx, &state, "a").await;
    reconcile(&ctx, &state, "a").await;
    let st = status(&state, "a");
    let snap = st.current_snapshot.unwrap();
    assert_eq!((snap.id.as_str(), snap.vectors), ("s2", 60));
    assert_eq!(events(&state, "RefreshRebuilt"), 1);
    assert_eq!(build_jobs(&state, "a").len(), 1, "the refresh's rebuild is not another build");

    // A failed refresh: a Warning and the error in status; the label keeps being served.
    age(&state, 10);
    reconcile(&ctx, &state, "a").await;
    let third = newest(&state);
    finish(&state, &third, Some(false), 1, r#"{"error":"source data/base.npy: not found"}"#);
    reconcile(&ctx, &state, "a").await;
    let st = status(&state, "a");
    let r = st.refresh.unwrap();
    assert_eq!((r.state.as_str(), r.message.as_deref()), ("Failed", Some("source data/base.npy: not found")));
    assert_eq!(events(&state, "RefreshFailed"), 1);
    assert_ne!(st.phase, Some(Phase::Failed));

    // A change that rebuilds stops the refresh running meanwhile.
    age(&state, 10);
    reconcile(&ctx, &state, "a").await;
    let fourth = newest(&state);
    edit(&state, "a", |m| m.spec.hnsw.m = 24);
    reconcile(&ctx, &state, "a").await;
    assert_eq!(build_jobs(&state, "a").len(), 2, "the change's build");
    assert!(!jobs_of(&state, "a", "refresh").contains(&fourth), "the running refresh was stopped");
}
