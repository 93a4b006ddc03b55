//! Matcher pools over a real `redis-server`: a label that opts in gets no Deployment of its
//! own, joins its Indexer's pool set once built, counts the pool's matchers that serve it,
//! and leaves the set when it opts out or is deleted. The Indexer runs the pool's Deployment.

use redis::Commands;

use super::*;
use crate::reconcile::indexer;

/// The pool set's members, sorted.
fn members(redis: &kim_testkit::Redis) -> Vec<String> {
    let mut m: Vec<String> = redis.conn().smembers(kim_api::pool_key("", "team/pool")).unwrap();
    m.sort();
    m
}

/// Plays `n` pool matchers that report serving snapshot `id` of label `a`.
fn serve(redis: &kim_testkit::Redis, n: usize, id: &str) {
    let until = kim_api::unix_ms() + 60_000;
    for i in 0..n {
        let entry = json!({"version": 59, "dimensions": 512, "encoding": "u8", "metric": "cosine",
            "vectors": 50, "snapshot": id, "until": until});
        let _: () = redis.conn().hset(kim_api::served_key("", "a"), format!("pool-{i}"), entry.to_string()).unwrap();
    }
}

async fn reconcile_ix(ctx: &Arc<Context>, state: &Shared) -> crate::crd::IndexerStatus {
    let ix: crate::crd::Indexer =
        serde_json::from_value(state.lock().unwrap().get(KIM, "indexers", "pool").unwrap().clone()).unwrap();
    indexer::reconcile(Arc::new(ix), ctx.clone()).await.unwrap();
    let ix: crate::crd::Indexer =
        serde_json::from_value(state.lock().unwrap().get(KIM, "indexers", "pool").unwrap().clone()).unwrap();
    ix.status.unwrap_or_default()
}

#[tokio::test]
async fn a_pooled_label_is_served_by_the_indexers_pool_and_leaves_it_when_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let redis = kim_testkit::Redis::start(dir.path());
    let (ctx, state) = setup(2);
    {
        let mut s = state.lock().unwrap();
        let ix = s.get_mut(KIM, "indexers", "pool").unwrap();
        ix["spec"]["pool"] = json!({"replicas": 2, "redis": {"url": redis.url()}});
    }
    let st = reconcile_ix(&ctx, &state).await;
    let pool = st.pool.unwrap();
    assert_eq!((pool.deployment.as_str(), pool.desired, pool.labels), ("pool-pool", 2, 0));
    let d = state.lock().unwrap().get(APPS, "deployments", "pool-pool").unwrap().clone();
    let args: Vec<&str> = d["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(args.windows(2).any(|w| w == ["--pool", "team/pool"]), "{args:?}");
    assert!(!args.contains(&"--label"), "a pool serves what its set says: {args:?}");
    assert_eq!(names(&state, POLICY, "poddisruptionbudgets"), vec!["pool-pool"]);

    let mut m = mi("a");
    m.spec.matcher.pool = true;
    m.spec.redis.url = Some(redis.url());
    add(&state, m);
    reconcile(&ctx, &state, "a").await;
    assert!(members(&redis).is_empty(), "nothing to serve before the first build");
    finish(&state, &build_jobs(&state, "a")[0], Some(true), 0, BUILT);
    reconcile(&ctx, &state, "a").await;
    assert_eq!(members(&redis), vec!["a"]);
    assert_eq!(names(&state, APPS, "deployments"), vec!["pool-pool"], "no Deployment of the label's own");
    let st = status(&state, "a");
    assert_eq!(st.pool.as_deref(), Some("team/pool"));
    assert_eq!((st.phase, st.matchers.unwrap().summary.as_str()), (Some(Phase::Deploying), "0/2 in pool pool-pool"));
    assert_eq!(events(&state, "PoolMembership"), 1);
    assert_eq!(reconcile_ix(&ctx, &state).await.pool.unwrap().labels, 1);

    // The pool's matchers load it: Ready, counted from what they report.
    serve(&redis, 2, "s1");
    let action = reconcile(&ctx, &state, "a").await;
    let st = status(&state, "a");
    assert_eq!((st.phase, st.matchers.unwrap().summary.as_str()), (Some(Phase::Ready), "2/2 in pool pool-pool"));
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));

    // Opting out: its own matchers, and the pool drops it.
    edit(&state, "a", |m| m.spec.matcher.pool = false);
    reconcile(&ctx, &state, "a").await;
    assert!(members(&redis).is_empty());
    assert!(names(&state, APPS, "deployments").contains(&"a-matcher".to_string()));
    assert_eq!(status(&state, "a").pool, None);
    // And back: the pool again, its own Deployment gone.
    edit(&state, "a", |m| m.spec.matcher.pool = true);
    reconcile(&ctx, &state, "a").await;
    assert_eq!(members(&redis), vec!["a"]);
    assert_eq!(names(&state, APPS, "deployments"), vec!["pool-pool"]);

    // Deleted (files and stream kept): not served any more.
    edit(&state, "a", |m| m.spec.deletion_policy = crate::crd::DeletionPolicy::Retain);
    delete_at(&state, "a", &now());
    assert_eq!(reconcile(&ctx, &state, "a").await, Action::await_change());
    assert!(members(&redis).is_empty());
    let notes = event_notes(&state, "CleanedUp");
    assert!(notes[0].contains("took the label out of matcher pool team/pool"), "{}", notes[0]);

    // spec.pool removed: the pool's objects go.
    state.lock().unwrap().get_mut(KIM, "indexers", "pool").unwrap()["spec"]["pool"] = serde_json::Value::Null;
    assert_eq!(reconcile_ix(&ctx, &state).await.pool, None);
    assert!(names(&state, APPS, "deployments").is_empty());
    assert!(names(&state, POLICY, "poddisruptionbudgets").is_empty());
}
