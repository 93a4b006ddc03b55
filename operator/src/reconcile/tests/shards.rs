//! A split label over the mocked API: one Indexed build Job, a snapshot per shard in status,
//! one matcher Deployment per shard, the rollback annotation refused with the way out, and a
//! change of the shard count served by the old layout until the new one is ready.

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
    assert_eq!(names(&state, APPS, "deployments"), vec!["a-matcher-0-of-3", "a-matcher-1-of-3", "a-matcher-2-of-3"]);
    for i in 0..3 {
        set_ready(&state, &format!("a-matcher-{i}-of-3"), 2);
    }
    reconcile(&ctx, &state, "a").await;
    let st = status(&state, "a");
    assert_eq!(st.matchers.as_ref().map(|m| (m.desired, m.ready)), Some((6, 6)), "every shard's matchers");
    assert_eq!(st.phase, Some(Phase::Ready));

    // One shard's matchers not ready: the label cannot answer, so it is not Ready, and another
    // shard's surge does not make up for them.
    set_ready(&state, "a-matcher-1-of-3", 0);
    set_ready(&state, "a-matcher-0-of-3", 4);
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

#[tokio::test]
async fn a_changed_shard_count_is_served_by_the_old_layout_until_every_new_matcher_is_ready() {
    let (ctx, state) = setup(2);
    let mut m = mi("a");
    m.spec.shards = 2;
    m.spec.matcher.replicas = 1;
    // A closed port: destroying the retired groups fails at once, as with Redis down.
    m.spec.redis.url = Some("redis://127.0.0.1:1".into());
    add(&state, m);
    reconcile(&ctx, &state, "a").await;
    finish_shards(&state, &build_jobs(&state, "a")[0], 2);
    reconcile(&ctx, &state, "a").await;
    let old = ["a-matcher-0-of-2", "a-matcher-1-of-2"];
    for d in old {
        set_ready(&state, d, 1);
    }
    reconcile(&ctx, &state, "a").await;
    assert_eq!(status(&state, "a").phase, Some(Phase::Ready));

    // 2 → 3: nothing changes while the 3-shard snapshot builds.
    edit(&state, "a", |m| m.spec.shards = 3);
    reconcile(&ctx, &state, "a").await;
    let jobs = build_jobs(&state, "a");
    assert_eq!(jobs.len(), 2);
    assert_eq!(names(&state, APPS, "deployments"), old, "the old layout serves while the new one builds");
    let job =
        jobs.into_iter().find(|j| state.lock().unwrap().get(BATCH, "jobs", j).unwrap()["spec"]["completions"] == 3);
    finish_shards(&state, &job.unwrap(), 3);

    // Built: the 3-shard matchers start beside the 2-shard ones, which keep answering.
    reconcile(&ctx, &state, "a").await;
    let new = ["a-matcher-0-of-3", "a-matcher-1-of-3", "a-matcher-2-of-3"];
    let mut both: Vec<&str> = old.iter().chain(new.iter()).copied().collect();
    both.sort();
    assert_eq!(names(&state, APPS, "deployments"), both);
    set_ready(&state, new[0], 1);
    set_ready(&state, new[1], 1);
    reconcile(&ctx, &state, "a").await;
    assert_eq!(names(&state, APPS, "deployments"), both, "one new shard is not ready yet");
    let st = status(&state, "a");
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!((st.phase, st.reason.as_deref()), (Some(Phase::Deploying), Some("2/3 shards ready")));
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", "SwitchingShards"), "the old layout answers");
    assert!(ready.message.contains("switching from 2 shards to 3 shards"), "{}", ready.message);
    assert_eq!(events(&state, "SwitchingShards"), 2, "one Event per step of the switch");

    // Every new matcher ready: the old layout goes, and its groups wait to be destroyed.
    set_ready(&state, new[2], 1);
    reconcile(&ctx, &state, "a").await;
    assert_eq!(names(&state, APPS, "deployments"), new);
    assert_eq!(events(&state, "ShardsSwitched"), 2, "the switch, and the groups Redis did not let go yet");
    let st = status(&state, "a");
    assert_eq!(st.phase, Some(Phase::Ready));
    assert_eq!(st.retired_groups, vec!["kim-matchers-0-of-2".to_string(), "kim-matchers-1-of-2".to_string()]);
    assert_eq!(st.matchers.map(|m| (m.desired, m.ready)), Some((3, 3)));

    // Back to 1 shard before those groups went: the unsplit layout's group is its own.
    edit(&state, "a", |m| m.spec.shards = 1);
    reconcile(&ctx, &state, "a").await;
    let job = build_jobs(&state, "a")
        .into_iter()
        .find(|j| state.lock().unwrap().get(BATCH, "jobs", j).unwrap()["spec"]["completionMode"].is_null());
    finish(&state, &job.unwrap(), Some(true), 0, BUILT);
    reconcile(&ctx, &state, "a").await;
    let both: Vec<&str> = ["a-matcher"].iter().chain(new.iter()).copied().collect();
    assert_eq!(names(&state, APPS, "deployments"), both);
    set_ready(&state, "a-matcher", 1);
    reconcile(&ctx, &state, "a").await;
    assert_eq!(names(&state, APPS, "deployments"), vec!["a-matcher"]);
    let st = status(&state, "a");
    assert_eq!(st.retired_groups.len(), 5, "both split layouts' groups: {:?}", st.retired_groups);
    assert!(!st.retired_groups.contains(&"kim-matchers".to_string()));
}

#[tokio::test]
async fn keda_scales_each_shard_on_its_own_group() {
    let (ctx, state) = setup(2);
    let mut m = mi("a");
    m.spec.shards = 2;
    m.spec.redis.url = Some("redis://127.0.0.1:1".into());
    m.spec.matcher.autoscaling = Some(crate::crd::AutoscalingSpec {
        min_replicas: 1,
        max_replicas: 6,
        target_backlog: 30,
        cooldown: "1m".into(),
        keda: true,
    });
    add(&state, m);
    reconcile(&ctx, &state, "a").await;
    finish_shards(&state, &build_jobs(&state, "a")[0], 2);
    reconcile(&ctx, &state, "a").await;
    let want = ["a-matcher-0-of-2", "a-matcher-1-of-2"];
    assert_eq!(names(&state, "/apis/keda.sh/v1alpha1", "scaledobjects"), want);
    for (i, name) in want.iter().enumerate() {
        let s = state.lock().unwrap();
        let so = s.get("/apis/keda.sh/v1alpha1", "scaledobjects", name).unwrap();
        assert_eq!(so["spec"]["scaleTargetRef"]["name"], *name);
        assert_eq!(so["spec"]["triggers"][0]["metadata"]["consumerGroup"], format!("kim-matchers-{i}-of-2"));
        let d = s.get(APPS, "deployments", name).unwrap();
        assert!(d["spec"]["replicas"].is_null(), "KEDA owns the replicas of {name}");
    }
    let a = status(&state, "a").autoscaling.unwrap();
    assert_eq!(a.scaled_objects, want);
    assert!(a.message.contains("a-matcher-0-of-2, a-matcher-1-of-2"), "{}", a.message);
}
