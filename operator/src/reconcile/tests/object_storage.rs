//! An Indexer on object storage: build Jobs, matchers and cleanup Jobs get the bucket's
//! settings, credentials from its Secret and an emptyDir cache, and no storage claim.

use serde_json::{json, Value};

use super::*;
use crate::reconcile::indexer;

fn s3_setup() -> (Arc<Context>, Shared) {
    let (client, state) = fake::client();
    let mut i = ix();
    i.spec.storage = serde_json::from_value(json!({"s3": {
        "url": "s3://snaps/kim", "endpoint": "https://s3.example:9000", "region": "eu-1",
        "credentialsSecret": "s3-creds", "caSecret": "s3-ca", "cacheSizeLimit": "8Gi",
    }}))
    .unwrap();
    state.lock().unwrap().put(KIM, "indexers", serde_json::to_value(i).unwrap());
    for name in ["s3-creds", "s3-ca"] {
        state.lock().unwrap().put(
            CORE,
            "secrets",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}}),
        );
    }
    (Context::new(client, d(), "test", (Duration::from_secs(120), Duration::from_secs(15))), state)
}

fn object(state: &Shared, prefix: &str, resource: &str, name: &str) -> Value {
    state.lock().unwrap().get(prefix, resource, name).unwrap_or_else(|| panic!("no {resource} {name}")).clone()
}

/// Checks a pod template reaches the bucket and mounts no claim but `allowed`.
fn on_bucket(pod: &Value, allowed: &[&str]) {
    let c = &pod["spec"]["containers"][0];
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    for pair in [
        ["--storage", "s3://snaps/kim"],
        ["--cache-dir", "/cache"],
        ["--s3-endpoint", "https://s3.example:9000"],
        ["--s3-region", "eu-1"],
        ["--s3-ca", "/etc/kim/s3-ca/ca.crt"],
    ] {
        assert!(args.windows(2).any(|w| w == pair), "{pair:?} in {args:?}");
    }
    assert!(!args.contains(&"--s3-allow-http"));
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    let claims: Vec<&str> = volumes.iter().filter_map(|v| v["persistentVolumeClaim"]["claimName"].as_str()).collect();
    assert_eq!(claims, allowed, "{volumes:?}");
    let cache = volumes.iter().find(|v| v["name"] == "snapshot-cache").expect("a cache volume");
    assert_eq!(cache["emptyDir"]["sizeLimit"], "8Gi");
    assert!(volumes.iter().any(|v| v["secret"]["secretName"] == "s3-ca"));
    let env = c["env"].as_array().unwrap();
    for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"] {
        let e = env.iter().find(|e| e["name"] == key).unwrap_or_else(|| panic!("no {key} in {env:?}"));
        assert_eq!(e["valueFrom"]["secretKeyRef"]["name"], "s3-creds");
        assert!(e.get("value").is_none_or(Value::is_null), "{e}");
    }
}

#[tokio::test]
async fn an_indexer_on_object_storage_gives_jobs_and_matchers_the_bucket_and_no_claim() {
    let (ctx, state) = s3_setup();
    // No claim is created for the Indexer; its status says where snapshots go.
    let i: crate::crd::Indexer = serde_json::from_value(object(&state, KIM, "indexers", "pool")).unwrap();
    indexer::reconcile(Arc::new(i), ctx.clone()).await.unwrap();
    assert!(names(&state, CORE, "persistentvolumeclaims").is_empty());
    let ist = object(&state, KIM, "indexers", "pool")["status"].clone();
    assert!(ist.get("storageClaim").is_none_or(Value::is_null), "{ist}");
    assert_eq!(ist["conditions"][0]["message"], "object storage s3://snaps/kim");

    // A file source without its own claim has nothing to be read from.
    add(&state, mi("nofile"));
    reconcile(&ctx, &state, "nofile").await;
    let st = status(&state, "nofile");
    assert_eq!((st.phase, st.reason.as_deref()), (Some(Phase::Failed), Some("InvalidSpec")));
    assert!(st.conditions.iter().any(|c| c.message.contains("set source.claim")), "{:?}", st.conditions);
    assert!(build_jobs(&state, "nofile").is_empty());

    let mut m = mi("a");
    m.spec.source.claim = Some("uploads".into());
    add(&state, m);
    reconcile(&ctx, &state, "a").await;
    let jobs = build_jobs(&state, "a");
    assert_eq!(jobs.len(), 1);
    let job = object(&state, BATCH, "jobs", &jobs[0]);
    let pod = &job["spec"]["template"];
    on_bucket(pod, &["uploads"]);
    let args = pod["spec"]["containers"][0]["args"].as_array().unwrap();
    assert!(args.windows(2).any(|w| w[0] == "--source" && w[1] == "/source/data/base.npy"), "{args:?}");

    finish(&state, &jobs[0], Some(true), 0, BUILT);
    reconcile(&ctx, &state, "a").await;
    on_bucket(&object(&state, APPS, "deployments", "a-matcher")["spec"]["template"], &[]);
    set_ready(&state, "a-matcher", 1);
    reconcile(&ctx, &state, "a").await;
    assert_eq!(status(&state, "a").phase, Some(Phase::Ready));
}

#[tokio::test]
async fn a_missing_credentials_secret_is_the_reason_matchers_do_not_start() {
    let (ctx, state) = s3_setup();
    state.lock().unwrap().objects.retain(|k, _| !k.contains("/secrets/") || !k.ends_with("/s3-creds"));
    let mut m = mi("a");
    m.spec.source.claim = Some("uploads".into());
    add(&state, m);
    reconcile(&ctx, &state, "a").await;
    finish(&state, &build_jobs(&state, "a")[0], Some(true), 0, BUILT);
    reconcile(&ctx, &state, "a").await;
    let st = status(&state, "a");
    assert_eq!((st.phase, st.reason.as_deref()), (Some(Phase::Deploying), Some("SecretNotFound")));
    assert!(st.conditions.iter().any(|c| c.message.contains("s3-creds")), "{:?}", st.conditions);
}
