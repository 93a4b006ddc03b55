//! Shapes of the typed children, and the validation messages.

use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::crd::*;
use crate::online::AgentSet;
use crate::testing::{d, ix, mi};

#[test]
fn defaults_fill_in() {
    let m = mi("faces");
    assert_eq!((m.spec.hnsw.m, m.spec.hnsw.ef_construction, m.spec.matcher.replicas), (16, 200, 1));
    assert_eq!(ix().spec.retry_limit, 2);
    assert_eq!(m.label(), "faces");
}

#[test]
fn build_job_shape() {
    let (m, i) = (mi("faces"), ix());
    let hash = build_hash(&m, 0);
    let job = build_job(&m, &i, &hash, 7200, &d());
    assert_eq!(job.metadata.name.as_deref(), Some(format!("faces-build-{}", &hash[..10]).as_str()));
    assert_eq!(job.metadata.owner_references.as_ref().unwrap()[0].kind, "MatchingIndex");
    let spec = job.spec.unwrap();
    assert_eq!((spec.backoff_limit, spec.active_deadline_seconds), (Some(2), Some(7200)));
    // A configuration error fails the Job at once: the rule names the container and the code.
    let rules = spec.pod_failure_policy.unwrap().rules;
    let fail = rules.iter().find(|r| r.action == "FailJob").unwrap().on_exit_codes.clone().unwrap();
    assert_eq!((fail.container_name.as_deref(), fail.values.as_slice()), (Some("index"), &[78][..]));
    let pod = spec.template.spec.unwrap();
    let c = &pod.containers[0];
    assert_eq!((c.name.as_str(), pod.restart_policy.as_deref()), ("index", Some("Never")));
    let args = c.args.clone().unwrap();
    assert_eq!(args[0], "index");
    assert!(args.windows(2).any(|w| w == ["--source", "/storage/data/base.npy"]));
    assert!(args.windows(2).any(|w| w == ["--ids", "/storage/data/ids.txt"]));
    assert!(args.windows(2).any(|w| w == ["--namespace", "team"]));
    assert_eq!(pod.volumes.unwrap()[0].persistent_volume_claim.as_ref().unwrap().claim_name, "pool-storage");
    assert_eq!(c.image.as_deref(), Some("kim-worker:test"));
}

#[test]
fn separate_source_claim_is_mounted_read_only() {
    let mut m = mi("faces");
    m.spec.source.claim = Some("uploads".into());
    let job = build_job(&m, &ix(), "0123456789abcdef", 60, &d());
    let pod = job.spec.unwrap().template.spec.unwrap();
    let vols = pod.volumes.unwrap();
    assert_eq!(vols.len(), 2);
    assert_eq!(vols[1].persistent_volume_claim.as_ref().unwrap().read_only, Some(true));
    assert!(pod.containers[0].args.as_ref().unwrap().contains(&"/source/data/base.npy".to_string()));
}

#[test]
fn build_hash_tracks_build_inputs_only() {
    let m = mi("faces");
    let h = build_hash(&m, 0);
    let mut scaled = m.clone();
    scaled.spec.matcher.replicas = 5;
    assert_eq!(build_hash(&scaled, 0), h, "replicas do not rebuild");
    let mut tuned = m.clone();
    tuned.spec.hnsw.m = 24;
    assert_ne!(build_hash(&tuned, 0), h);
    let mut triggered = m.clone();
    triggered.metadata.annotations = Some([(REBUILD_ANNOTATION.to_string(), "1".to_string())].into());
    assert_ne!(build_hash(&triggered, 0), h);
    assert_ne!(build_hash(&m, 1), h, "a new interval epoch rebuilds");
}

#[test]
fn matcher_deployment_shape() {
    let mut m = mi("faces");
    m.spec.matcher.replicas = 3;
    let dep = matcher_deployment(&m, &ix(), &d(), Shard::WHOLE, Some(m.spec.matcher.replicas));
    let spec = dep.spec.unwrap();
    assert_eq!(spec.replicas, Some(3));
    let pod = spec.template.spec.unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.volume_mounts.as_ref().unwrap()[0].read_only, Some(true));
    assert_eq!(c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/readyz"));
    let env = c.env.as_ref().unwrap();
    assert_eq!(env[0].value.as_deref(), Some("redis://redis:6379"));
    m.spec.redis = RedisSpec {
        url: None,
        secret_ref: Some(SecretKeyRef { name: "r".into(), key: "url".into() }),
        key_prefix: Some("p:".into()),
        ..Default::default()
    };
    let dep = matcher_deployment(&m, &ix(), &d(), Shard::WHOLE, Some(1));
    let c = dep.spec.unwrap().template.spec.unwrap().containers[0].clone();
    assert_eq!(c.env.unwrap()[0].value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap().name, "r");
    assert!(c.args.unwrap().windows(2).any(|w| w == ["--prefix", "p:"]));
}

#[test]
fn matcher_redis_secrets() {
    let plain =
        matcher_deployment(&mi("faces"), &ix(), &d(), Shard::WHOLE, Some(1)).spec.unwrap().template.spec.unwrap();
    assert!(plain.containers[0]
        .env
        .as_ref()
        .unwrap()
        .iter()
        .all(|e| !e.name.starts_with("KIM_REDIS_") || e.name == "KIM_REDIS_URL"));
    assert_eq!(plain.volumes.as_ref().unwrap().len(), 1);

    let mut m = mi("faces");
    m.spec.redis.url = Some("rediss://redis:6380".into());
    m.spec.redis.auth = Some(serde_json::from_value(json!({"secretName": "redis-auth"})).unwrap());
    m.spec.redis.tls = Some(RedisTls { secret_name: "redis-tls".into(), client_certificate: true });
    let pod = matcher_deployment(&m, &ix(), &d(), Shard::WHOLE, Some(1)).spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    let env: BTreeMap<&str, &k8s_openapi::api::core::v1::EnvVar> =
        c.env.as_ref().unwrap().iter().map(|e| (e.name.as_str(), e)).collect();
    let from_secret = |name: &str| env[name].value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap().clone();
    assert_eq!(
        (from_secret("KIM_REDIS_USERNAME").name.as_str(), from_secret("KIM_REDIS_USERNAME").key.as_str()),
        ("redis-auth", "username")
    );
    assert_eq!(from_secret("KIM_REDIS_USERNAME").optional, Some(true));
    assert_eq!(
        (from_secret("KIM_REDIS_PASSWORD").name.as_str(), from_secret("KIM_REDIS_PASSWORD").key.as_str()),
        ("redis-auth", "password")
    );
    assert!(env["KIM_REDIS_PASSWORD"].value.is_none(), "password never inline");
    assert_eq!(env["KIM_REDIS_CA"].value.as_deref(), Some("/etc/kim/redis-tls/ca.crt"));
    assert_eq!(env["KIM_REDIS_CERT"].value.as_deref(), Some("/etc/kim/redis-tls/tls.crt"));
    assert_eq!(env["KIM_REDIS_KEY"].value.as_deref(), Some("/etc/kim/redis-tls/tls.key"));
    assert_eq!(env["KIM_REDIS_REQUIRE_TLS"].value.as_deref(), Some("true"));
    let mount = c.volume_mounts.as_ref().unwrap().iter().find(|v| v.name == "redis-tls").unwrap();
    assert_eq!((mount.mount_path.as_str(), mount.read_only), (REDIS_TLS_MOUNT, Some(true)));
    let vol = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == "redis-tls").unwrap();
    assert_eq!(vol.secret.as_ref().unwrap().secret_name.as_deref(), Some("redis-tls"));
    assert!(c.args.as_ref().unwrap().iter().all(|a| !a.contains("redis")), "no Redis settings in arguments");

    assert_eq!(crate::validate::matching_index(&m), Ok(Default::default()));
    m.spec.redis.url = Some("redis://:hunter2@redis:6379".into());
    let e = crate::validate::matching_index(&m).unwrap_err().0;
    assert!(e.contains("redis.tls needs a rediss://") && !e.contains("hunter2"), "{e}");
    m.spec.redis.url = Some("rediss+sentinel://s1:26379,s2:26379/mymaster/0".into());
    assert_eq!(crate::validate::matching_index(&m), Ok(Default::default()));
    m.spec.redis.url = Some("http://u:hunter2@redis".into());
    let e = crate::validate::matching_index(&m).unwrap_err().0;
    assert!(e.contains("redis+sentinel://") && !e.contains("hunter2"), "{e}");
    m.spec.redis.url = Some("rediss://redis:6380".into());

    // Without a client certificate only the CA is mounted and named.
    m.spec.redis.tls.as_mut().unwrap().client_certificate = false;
    let pod = matcher_deployment(&m, &ix(), &d(), Shard::WHOLE, Some(1)).spec.unwrap().template.spec.unwrap();
    assert!(pod.containers[0]
        .env
        .as_ref()
        .unwrap()
        .iter()
        .all(|e| e.name != "KIM_REDIS_CERT" && e.name != "KIM_REDIS_KEY"));
}

#[test]
fn pvc_only_when_sized() {
    let pvc = indexer_pvc(&ix()).unwrap();
    assert_eq!(pvc.metadata.name.as_deref(), Some("pool-storage"));
    assert_eq!(pvc.spec.unwrap().access_modes.unwrap(), vec!["ReadWriteMany"]);
    let mut existing = ix();
    existing.spec.storage = StorageSpec { existing_claim: Some("mine".into()), ..Default::default() };
    assert!(indexer_pvc(&existing).is_none());
    assert_eq!(storage_claim(&existing).as_deref(), Some("mine"));
}

#[test]
fn validation_messages() {
    use crate::validate;
    let mut m = mi("faces");
    assert_eq!(validate::matching_index(&m), Ok(Default::default()));
    m.spec.source.path = Some("../etc/passwd".into());
    assert!(validate::matching_index(&m).unwrap_err().0.contains("'..'"));
    let mut m = mi("faces");
    m.spec.rebuild.interval = Some("soon".into());
    assert!(validate::matching_index(&m).unwrap_err().0.contains("rebuild.interval"));
    m.spec.rebuild.interval = Some("1h".into());
    assert_eq!(validate::matching_index(&m).map(|i| i.rebuild), Ok(Some(std::time::Duration::from_secs(3600))));
    let mut m = mi("faces");
    m.spec.hnsw.ef_construction = 4;
    assert!(validate::matching_index(&m).is_err());
    let mut i = ix();
    i.spec.build_timeout = "0s".into();
    assert!(validate::indexer(&i.spec).is_err());
}

#[test]
fn object_storage_validation_messages() {
    use crate::validate;
    let with = |s3: serde_json::Value| {
        let mut i = ix();
        i.spec.storage = serde_json::from_value(json!({"s3": s3})).unwrap();
        validate::indexer(&i.spec).map(|_| ()).map_err(|e| e.0)
    };
    assert_eq!(with(json!({"url": "s3://b/p", "endpoint": "https://s3:9000"})), Ok(()));
    assert_eq!(with(json!({"url": "s3://b", "endpoint": "http://s3:9000", "allowHttp": true})), Ok(()));
    assert!(with(json!({"url": "b/p"})).unwrap_err().contains("s3://bucket[/prefix]"));
    assert!(with(json!({"url": "s3:///p"})).unwrap_err().contains("s3://bucket[/prefix]"));
    let e = with(json!({"url": "s3://b", "endpoint": "http://s3:9000"})).unwrap_err();
    assert!(e.contains("set storage.s3.allowHttp"), "{e}");
    assert!(with(json!({"url": "s3://b", "endpoint": "s3:9000"})).unwrap_err().contains("http(s)://"));
    let mut both = ix();
    both.spec.storage.s3 = Some(S3Storage { url: "s3://b".into(), ..Default::default() });
    assert!(validate::indexer(&both.spec).unwrap_err().0.contains("exactly one of"));
    // A file source on object storage names its claim.
    let mut i = ix();
    i.spec.storage =
        StorageSpec { s3: Some(S3Storage { url: "s3://b".into(), ..Default::default() }), ..Default::default() };
    let mut m = mi("faces");
    assert!(validate::on_indexer(&m, &i.spec).unwrap_err().0.contains("source.claim"));
    m.spec.source.claim = Some("uploads".into());
    assert_eq!(validate::on_indexer(&m, &i.spec), Ok(()));
    assert_eq!(validate::on_indexer(&mi("faces"), &ix().spec), Ok(()));
}

#[test]
fn build_hash_is_the_digest_of_the_sorted_json_of_build_inputs() {
    // The same digest the operator always computed (default efSearch): existing snapshots are
    // not rebuilt by an upgrade.
    let mut m = mi("faces");
    let s = &m.spec;
    let input = json!([m.label(), s.descriptor, s.source, s.hnsw, "", 0]).to_string();
    let digest = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(input.as_bytes()));
    assert_eq!(build_hash(&m, 0), digest);
    // efSearch is not a build input; m is.
    m.spec.hnsw.ef_search = 300;
    assert_eq!(build_hash(&m, 0), digest);
    m.spec.hnsw.m = 24;
    assert_ne!(build_hash(&m, 0), digest);
}

#[test]
fn online_children_have_their_own_resources_and_scheduling() {
    let mut m = mi("texts");
    m.spec.online = Some(
        serde_json::from_value(json!({
            "agents": 3, "replicas": 3,
            "agentResources": {"requests": {"memory": "8Gi"}},
            "agentScheduling": {"nodeSelector": {"pool": "agents"}},
            "gatewayResources": {"limits": {"cpu": "1"}},
        }))
        .unwrap(),
    );
    let mut i = ix();
    i.spec.scheduling = Some(serde_json::from_value(json!({"nodeSelector": {"pool": "build"}})).unwrap());
    let c = children(&m, &i, &d(), Matchers::Fixed(1), 1, AgentSet::steady(&m));
    let names = |v: Vec<String>| v.join(",");
    assert_eq!(
        names(c.services.iter().map(|s| s.metadata.name.clone().unwrap()).collect()),
        "texts-agent,texts-gateway"
    );
    assert_eq!(
        names(c.deployments.iter().map(|s| s.metadata.name.clone().unwrap()).collect()),
        "texts-gateway,texts-matcher"
    );
    assert_eq!(
        names(c.disruption_budgets.iter().map(|s| s.metadata.name.clone().unwrap()).collect()),
        "texts-agent,texts-matcher"
    );
    let agent = c.stateful_sets[0].spec.clone().unwrap().template.spec.unwrap();
    assert_eq!(agent.node_selector.unwrap()["pool"], "agents");
    let res = agent.containers[0].resources.clone().unwrap();
    assert_eq!(res.requests.unwrap()["memory"].0, "8Gi");
    let gw = c.deployments[0].spec.clone().unwrap().template.spec.unwrap();
    assert_eq!(gw.node_selector.unwrap()["pool"], "build", "gateway falls back to the Indexer's scheduling");
    assert_eq!(gw.containers[0].resources.clone().unwrap().limits.unwrap()["cpu"].0, "1");
    assert_eq!(gw.containers[0].security_context.as_ref().unwrap().read_only_root_filesystem, Some(true));
    let agent_pdb = c.disruption_budgets[0].spec.clone().unwrap();
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!(agent_pdb.max_unavailable, Some(IntOrString::Int(2)), "replicas - 1 agents may go");
    assert_eq!(agent_pdb.selector.unwrap().match_labels.unwrap()[LABEL_COMPONENT], "agent");
    let matcher_pdb = c.disruption_budgets[1].spec.clone().unwrap();
    assert_eq!(matcher_pdb.max_unavailable, Some(IntOrString::Int(1)));

    // Without online and before a snapshot: nothing long-lived is wanted.
    let c = children(&mi("faces"), &i, &d(), Matchers::NotYet, 1, AgentSet::steady(&mi("faces")));
    assert!(c.services.is_empty() && c.stateful_sets.is_empty() && c.deployments.is_empty());
    assert!(c.disruption_budgets.is_empty());
}

#[test]
fn children_serialize_with_kind_and_without_empty_fields() {
    let v = serde_json::to_value(matcher_deployment(&mi("faces"), &ix(), &d(), Shard::WHOLE, Some(1))).unwrap();
    assert_eq!((v["apiVersion"].as_str(), v["kind"].as_str()), (Some("apps/v1"), Some("Deployment")));
    let pod = &v["spec"]["template"]["spec"];
    assert!(pod.get("nodeSelector").is_none() && pod.get("tolerations").is_none());
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    let pvc = serde_json::to_value(indexer_pvc(&ix()).unwrap()).unwrap();
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "5Gi");
    assert_eq!(pvc["metadata"]["ownerReferences"][0]["kind"], "Indexer");
}

#[test]
fn matcher_replicas_come_from_the_decision_and_keda_owns_them_when_external() {
    let count = |m: Matchers| {
        let c = children(&mi("faces"), &ix(), &d(), m, 1, AgentSet::steady(&mi("faces")));
        let v = serde_json::to_value(&c.deployments[0]).unwrap();
        (v["spec"].get("replicas").cloned(), c.disruption_budgets.len())
    };
    assert_eq!(count(Matchers::Fixed(3)), (Some(json!(3)), 1));
    assert_eq!(count(Matchers::External), (None, 1), "the applied Deployment must not claim replicas");
}

#[test]
fn autoscaling_bounds_and_cool_down_are_validated() {
    let with = |a: serde_json::Value| {
        let mut m = mi("faces");
        m.spec.matcher.autoscaling = Some(serde_json::from_value(a).unwrap());
        crate::validate::matching_index(&m).map_err(|e| e.0)
    };
    assert_eq!(with(json!({"maxReplicas": 4})), Ok(Default::default()), "defaults: min 1, target 100, cool-down 5m");
    let e = with(json!({"minReplicas": 5, "maxReplicas": 4})).unwrap_err();
    assert!(e.contains("1 ≤ minReplicas ≤ maxReplicas") && e.contains("5..4"), "{e}");
    let e = with(json!({"maxReplicas": 4, "cooldown": "soon"})).unwrap_err();
    assert!(e.contains("matcher.autoscaling.cooldown"), "{e}");
}

#[test]
fn refresh_interval_and_tail_are_validated() {
    let with = |interval: &str, max_tail: f64| {
        let mut m = mi("faces");
        m.spec.rebuild.refresh = Some(crate::crd::RefreshSpec { interval: interval.into(), max_tail });
        crate::validate::matching_index(&m).map(|i| i.refresh).map_err(|e| e.0)
    };
    assert_eq!(with("30s", 0.05), Ok(Some(std::time::Duration::from_secs(30))));
    assert_eq!(with("10s", 1.0), Ok(Some(std::time::Duration::from_secs(10))), "the bounds are allowed");
    let e = with("9s", 0.05).unwrap_err();
    assert!(e.contains("rebuild.refresh.interval must be at least 10s") && e.contains("9s"), "{e}");
    assert!(with("often", 0.05).unwrap_err().contains("rebuild.refresh.interval: \"often\" is not a duration"));
    for tail in [0.0, -0.1, 1.5, f64::NAN] {
        let e = with("1m", tail).unwrap_err();
        assert!(e.contains("rebuild.refresh.maxTail must be in (0, 1]"), "{tail}: {e}");
    }
    let mut m = mi("faces");
    m.spec.rebuild.interval = Some("1h".into());
    assert_eq!(crate::validate::matching_index(&m).map(|i| i.refresh), Ok(None), "no refresh unless asked");
}

#[test]
fn pool_opt_in_needs_the_indexers_pool_and_its_redis() {
    let mut m = mi("faces");
    m.spec.matcher.pool = true;
    let mut i = ix();
    let e = crate::validate::on_indexer(&m, &i.spec).unwrap_err().0;
    assert!(e.contains("Indexer \"pool\" has no spec.pool"), "{e}");
    i.spec.pool = Some(serde_json::from_value(json!({"redis": {"url": "redis://other:6379"}})).unwrap());
    let e = crate::validate::on_indexer(&m, &i.spec).unwrap_err().0;
    assert!(e.contains("must be the pool's"), "{e}");
    i.spec.pool = Some(serde_json::from_value(json!({"redis": {"url": "redis://redis:6379"}})).unwrap());
    assert_eq!(crate::validate::on_indexer(&m, &i.spec), Ok(()));
    assert_eq!(i.spec.pool.as_ref().unwrap().replicas, 2, "default pool size");
    // Whole labels at the pool's size only.
    m.spec.shards = 2;
    assert!(crate::validate::matching_index(&m).unwrap_err().0.contains("shards > 1 or matcher.autoscaling"));
    m.spec.shards = 1;
    m.spec.matcher.autoscaling = Some(serde_json::from_value(json!({"maxReplicas": 4})).unwrap());
    assert!(crate::validate::matching_index(&m).is_err());
    // A pooled label has no matchers of its own; the pool's Deployment runs `match --pool`.
    let c = children(&m, &i, &d(), Matchers::Pool, 1, AgentSet::steady(&m));
    assert!(c.deployments.is_empty() && c.disruption_budgets.is_empty());
    let (dep, _) = crate::build::pool_objects(&i, &d()).unwrap();
    let spec = dep.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.unwrap();
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap();
    assert_eq!(&args[..5], ["match", "--namespace", "team", "--pool", "team/pool"]);
    let env = c.env.clone().unwrap();
    assert!(env.iter().any(|e| e.name == "KIM_REDIS_URL" && e.value.as_deref() == Some("redis://redis:6379")));
    assert!(pod.volumes.unwrap().iter().any(|v| v.persistent_volume_claim.is_some()), "the Indexer's storage");
}
