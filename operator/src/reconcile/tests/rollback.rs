//! `kim.dev/rollback-to`: one rollback Job per target on the Indexer's storage, its outcome in
//! `status.rollback`, the current snapshot and Events.

use std::collections::BTreeMap;

use super::*;
use crate::crd::ROLLBACK_ANNOTATION;

fn annotate(state: &Shared, name: &str, to: &str) {
    edit(state, name, |m| {
        m.metadata.annotations = Some(BTreeMap::from([(ROLLBACK_ANNOTATION.to_string(), to.to_string())]))
    });
}

#[tokio::test]
async fn rollback_to_runs_one_job_per_target_and_reports_the_outcome() {
    let (ctx, state) = setup(2);
    add(&state, mi("a"));
    reconcile(&ctx, &state, "a").await;
    finish(&state, &build_jobs(&state, "a")[0], Some(true), 0, BUILT);
    reconcile(&ctx, &state, "a").await;
    assert_eq!(status(&state, "a").current_snapshot.unwrap().id, "s1");

    annotate(&state, "a", "s0");
    reconcile(&ctx, &state, "a").await;
    let jobs = jobs_of(&state, "a", "rollback");
    assert_eq!(jobs.len(), 1);
    let job = state.lock().unwrap().get(BATCH, "jobs", &jobs[0]).unwrap().clone();
    let pod = &job["spec"]["template"]["spec"];
    let args: Vec<&str> =
        pod["containers"][0]["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    for pair in [["--to", "s0"], ["--label", "a"], ["--namespace", "team"], ["--storage", "/storage"]] {
        assert!(args.windows(2).any(|w| w == pair), "{pair:?} in {args:?}");
    }
    assert_eq!(&args[..2], ["snapshot", "rollback"]);
    assert_eq!(pod["volumes"][0]["persistentVolumeClaim"]["claimName"], "pool-storage");
    let r = status(&state, "a").rollback.unwrap();
    assert_eq!((r.to.as_str(), r.state.as_str(), r.job.as_deref()), ("s0", "Running", Some(jobs[0].as_str())));
    assert_eq!(events(&state, "RollbackStarted"), 1);

    let done =
        r#"{"namespace":"team","label":"a","from":"s1","to":"s0","vectors":40,"createdAt":"2026-11-21T00:00:00Z"}"#;
    finish(&state, &jobs[0], Some(true), 0, done);
    reconcile(&ctx, &state, "a").await;
    let st = status(&state, "a");
    assert_eq!(st.rollback.as_ref().unwrap().state, "Succeeded");
    let snap = st.current_snapshot.unwrap();
    assert_eq!((snap.id.as_str(), snap.vectors, snap.built_at.as_deref()), ("s0", 40, Some("2026-11-21T00:00:00Z")));
    assert_eq!(events(&state, "RolledBack"), 1);
    // Done is done: no second Job, no rebuild.
    reconcile(&ctx, &state, "a").await;
    assert_eq!(jobs_of(&state, "a", "rollback").len(), 1);
    assert_eq!(build_jobs(&state, "a").len(), 1);

    // A target the worker refuses: its reason in status and a Warning.
    annotate(&state, "a", "s9");
    reconcile(&ctx, &state, "a").await;
    let jobs = jobs_of(&state, "a", "rollback");
    assert_eq!(jobs.len(), 2);
    let second = status(&state, "a").rollback.unwrap().job.unwrap();
    finish(&state, &second, Some(false), 2, r#"{"error":"label a has no snapshot \"s9\""}"#);
    reconcile(&ctx, &state, "a").await;
    let st = status(&state, "a");
    let r = st.rollback.unwrap();
    assert_eq!(r.state, "Failed");
    assert!(r.message.unwrap().contains("has no snapshot \"s9\""));
    assert_eq!(st.current_snapshot.unwrap().id, "s0", "the served snapshot is unchanged");
    assert_eq!(events(&state, "RollbackFailed"), 1);

    // Not a snapshot id: refused without a Job.
    annotate(&state, "a", "../x");
    reconcile(&ctx, &state, "a").await;
    assert_eq!(jobs_of(&state, "a", "rollback").len(), 2);
    let r = status(&state, "a").rollback.unwrap();
    assert_eq!((r.to.as_str(), r.state.as_str()), ("../x", "Failed"));
}
