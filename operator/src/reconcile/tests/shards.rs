//! A split label over the mocked API: one Indexed build Job, a snapshot per shard in status,
//! one matcher Deployment per shard, and the rollback annotation refused with the way out.

use serde_json::json;

use super::*;

/// Plays the Job controller for an Indexed Job: one succeeded pod per shard with its report.
fn finish_shards(state: &Shared, job: &str, shards: u32) {
    let mut s = state.lock().unwrap();
    for i in 0..shards {
        let report = json!({"snapshot": format!("snap-{i}"), "label": format!("a@shard-{i}-of-{shards}"),
            "namespace": "team", "vectors": 100 + i, "buildSeconds": 1.0 + f64::from(i),
            "createdAt": format!("2026-11-22T00:00:0{i}Z")});
        s.put(
            CORE,
            "pods",
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("{job}-{i}"), "labels": {"batch.kubernetes.io/job-name": job}},
                "status": {"phase": "Succeeded", "containerStatuses": [{
                    "name": "index", "image": "w", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 0, "message": report.to_string(),
                        "finishedAt": format!("2026-11-22T00:00:0{i}Z")}}}]}}),
        );
    }
    let j = s.get_mut(BATCH, "jobs", job).unwrap();
    j["status"] = json!({"succeeded": shards, "conditions": [{"type": "Complete", "status": "True"}]});
}

#[tokio::test]
async fn a_split_label_builds_every_shard_in_one_indexed_job_and_serves_each_with_its_matchers() {
    let (ctx, state) = setup(2);
    let mut m = mi("a");
    m.spec.shards = 3;
    m.spec.matcher.replicas = 2;
    add(&state, m);
    reconcile(&ctx, &state, "a").await;
    let jobs = build_jobs(&state, "a");
    assert_eq!(jobs.len(), 1, "one Job for every shard");
    let job = state.lock().unwrap().get(BATCH, "jobs", &jobs[0]).unwrap().clone();
    assert_eq!(
        (job["spec"]["completionMode"].as_str(), job["spec"]["completions"].as_i64()),
        (Some("Indexed"), Some(3))
    );
    assert_eq!(job["spec"]["parallelism"], 2, "no more shards at once than the Indexer's maxConcurrentBuilds");

    finish_shards(&state, &jobs[0], 3);
    reconcile(&ctx, &state, "a").await;
    let snap = status(&state, "a").current_snapshot.unwrap();
    assert_eq!((snap.id.as_str(), snap.vectors), ("snap-0", 303), "shard 0's id, every shard's vectors");
    assert_eq!(snap.build_seconds, Some(3.0), "the slowest shard");
    let ids: Vec<(i32, &str, i64)> = snap.shards.iter().map(|s| (s.shard, s.id.as_str(), s.vectors)).collect();
    assert_eq!(ids, vec![(0, "snap-0", 100), (1, "snap-1", 101), (2, "snap-2", 102)]);
    assert_eq!(names(&state, APPS, "deployments"), vec!["a-matcher-0", "a-matcher-1", "a-matcher-2"]);
    for i in 0..3 {
        set_ready(&state, &format!("a-matcher-{i}"), 2);
    }
    reconcile(&ctx, &state, "a").await;
    let st = status(&state, "a");
    assert_eq!(st.matchers.as_ref().map(|m| (m.desired, m.ready)), Some((6, 6)), "every shard's matchers");
    assert_eq!(st.phase, Some(Phase::Ready));

    // One shard's matchers not ready: the label cannot answer, so it is not Ready, and another
    // shard's surge does not make up for them.
    set_ready(&state, "a-matcher-1", 0);
    set_ready(&state, "a-matcher-0", 4);
    reconcile(&ctx, &state, "a").await;
    let st = status(&state, "a");
    assert_eq!((st.phase, st.matchers.map(|m| m.summary)), (Some(Phase::Deploying), Some("4/6".to_string())));

    // A rollback names one snapshot id; a split label has one per shard.
    edit(&state, "a", |m| {
        m.metadata.annotations = Some([(crate::crd::ROLLBACK_ANNOTATION.to_string(), "snap-0".to_string())].into());
    });
    reconcile(&ctx, &state, "a").await;
    let r = status(&state, "a").rollback.unwrap();
    assert_eq!(r.state, "Failed");
    assert!(r.message.unwrap().contains("@shard-<I>-of-3"));
    assert!(jobs_of(&state, "a", "rollback").is_empty());
}
