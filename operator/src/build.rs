//! Pure builders: the objects the operator wants to exist, computed from the custom resources
//! alone. No I/O here, so every decision about shape is unit-tested.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};

use crate::crd::{Encoding, Indexer, MatchingIndex, Metric, REBUILD_ANNOTATION};

pub const MANAGER: &str = "kim-operator";
pub const LABEL_MI: &str = "kim.dev/matching-index";
pub const LABEL_INDEXER: &str = "kim.dev/indexer";
pub const LABEL_COMPONENT: &str = "kim.dev/component";
pub const LABEL_HASH: &str = "kim.dev/build-hash";
pub const STORAGE_MOUNT: &str = "/storage";
pub const SOURCE_MOUNT: &str = "/source";
pub const MATCHER_PORT: i32 = 8080;

/// Settings of the operator that shape children.
#[derive(Clone, Debug)]
pub struct Defaults {
    pub worker_image: String,
    pub image_pull_policy: String,
}

pub(crate) fn owner_ref<K: Resource<DynamicType = ()>>(o: &K) -> Value {
    json!({
        "apiVersion": K::api_version(&()), "kind": K::kind(&()), "name": o.name_any(),
        "uid": o.meta().uid.clone().unwrap_or_default(), "controller": true, "blockOwnerDeletion": true,
    })
}

pub fn labels(mi: &MatchingIndex, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/managed-by".into(), MANAGER.into()),
        ("app.kubernetes.io/name".into(), "kim".into()),
        ("app.kubernetes.io/component".into(), component.into()),
        (LABEL_MI.into(), mi.name_any()),
        (LABEL_INDEXER.into(), mi.spec.indexer_ref.name.clone()),
        (LABEL_COMPONENT.into(), component.into()),
    ])
}

/// Name of the claim an Indexer stores snapshots on.
pub fn storage_claim(ix: &Indexer) -> String {
    ix.spec.storage.existing_claim.clone().unwrap_or_else(|| format!("{}-storage", ix.name_any()))
}

/// The claim the operator creates for an Indexer, if it creates one.
pub fn indexer_pvc(ix: &Indexer) -> Option<PersistentVolumeClaim> {
    let s = &ix.spec.storage;
    let size = s.size.as_ref()?;
    let modes = if s.access_modes.is_empty() { vec!["ReadWriteMany".to_string()] } else { s.access_modes.clone() };
    let v = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": storage_claim(ix), "namespace": ix.namespace(),
            "labels": {"app.kubernetes.io/managed-by": MANAGER, LABEL_INDEXER: ix.name_any()},
            "ownerReferences": [owner_ref(ix)],
        },
        "spec": {"accessModes": modes, "storageClassName": s.storage_class_name, "resources": {"requests": {"storage": size}}},
    });
    Some(serde_json::from_value(v).expect("valid PVC"))
}

pub(crate) fn enc(e: Encoding) -> &'static str {
    match e {
        Encoding::U8 => "u8",
        Encoding::I8 => "i8",
        Encoding::F16 => "f16",
        Encoding::F32 => "f32",
    }
}
pub(crate) fn metric(m: Metric) -> &'static str {
    match m {
        Metric::Cosine => "cosine",
        Metric::Dot => "dot",
        Metric::L2 => "l2",
    }
}

/// Digest of everything that changes the built index, plus the manual trigger and the interval
/// epoch: a new value means a new build (and a new, deterministic Job name).
pub fn build_hash(mi: &MatchingIndex, interval_epoch: u64) -> String {
    let s = &mi.spec;
    let trigger = mi.annotations().get(REBUILD_ANNOTATION).cloned().unwrap_or_default();
    let input = json!([mi.label(), s.descriptor, s.source, s.hnsw, trigger, interval_epoch]);
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(input.to_string().as_bytes()))
}

pub fn job_name(mi: &MatchingIndex, hash: &str) -> String {
    let base: String = mi.name_any().chars().take(42).collect();
    format!("{}-build-{}", base.trim_end_matches('-'), &hash[..10])
}

/// Where the source file is mounted, and the volumes that make it so.
fn source_mount(mi: &MatchingIndex, storage_claim: &str) -> (String, Option<String>) {
    match &mi.spec.source.claim {
        Some(c) if c != storage_claim => (SOURCE_MOUNT.into(), Some(c.clone())),
        _ => (STORAGE_MOUNT.into(), None),
    }
}

/// `kim-worker index` arguments for a MatchingIndex (checked against the worker's parser in tests).
pub fn index_args(mi: &MatchingIndex, ix: &Indexer) -> Vec<String> {
    let s = &mi.spec;
    let (src_root, _) = source_mount(mi, &storage_claim(ix));
    let mut a: Vec<String> = vec![
        "index".into(),
        "--label".into(),
        mi.label(),
        "--namespace".into(),
        mi.namespace().unwrap_or_default(),
        "--storage".into(),
        STORAGE_MOUNT.into(),
        "--source".into(),
        match &s.source.path {
            Some(p) => format!("{src_root}/{p}"),
            None => crate::online::agents_source(mi),
        },
        "--version".into(),
        s.descriptor.version.to_string(),
        "--dimensions".into(),
        s.descriptor.dimensions.to_string(),
        "--encoding".into(),
        enc(s.descriptor.encoding).into(),
        "--metric".into(),
        metric(s.descriptor.metric).into(),
        "--m".into(),
        s.hnsw.m.to_string(),
        "--ef-construction".into(),
        s.hnsw.ef_construction.to_string(),
        "--ef-search".into(),
        s.hnsw.ef_search.to_string(),
        "--keep".into(),
        ix.spec.snapshots_to_keep.to_string(),
        "--termination-message-path".into(),
        "/dev/termination-log".into(),
    ];
    if let Some(ids) = &s.source.ids_path {
        a.extend(["--ids".into(), format!("{src_root}/{ids}")]);
    }
    if s.source.path.is_none() {
        a.extend(crate::online::tls_client_args(mi));
    }
    a
}

pub(crate) fn worker_image(ix: &Indexer, d: &Defaults) -> String {
    ix.spec.image.clone().unwrap_or_else(|| d.worker_image.clone())
}

pub(crate) fn scheduling(ix: &Indexer) -> Value {
    match &ix.spec.scheduling {
        Some(s) => json!({"nodeSelector": s.node_selector, "tolerations": s.tolerations, "affinity": s.affinity}),
        None => json!({}),
    }
}

pub(crate) fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        for (k, v) in b {
            if !v.is_null() {
                a.insert(k, v);
            }
        }
    }
    a
}

/// Security settings every container kim starts runs with.
pub(crate) fn container_security() -> Value {
    json!({"runAsNonRoot": true, "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
           "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}})
}

/// The Job that builds one snapshot.
pub fn build_job(mi: &MatchingIndex, ix: &Indexer, hash: &str, deadline_secs: i64, d: &Defaults) -> Job {
    let claim = storage_claim(ix);
    let (_, source_claim) = source_mount(mi, &claim);
    let mut volumes = vec![json!({"name": "storage", "persistentVolumeClaim": {"claimName": claim}})];
    let mut mounts = vec![json!({"name": "storage", "mountPath": STORAGE_MOUNT})];
    if let Some(c) = source_claim {
        volumes.push(json!({"name": "source", "persistentVolumeClaim": {"claimName": c, "readOnly": true}}));
        mounts.push(json!({"name": "source", "mountPath": SOURCE_MOUNT, "readOnly": true}));
    }
    if mi.spec.source.path.is_none() {
        let (v, m) = crate::online::tls_volumes(mi);
        volumes.extend(v);
        mounts.extend(m);
    }
    let mut lbl = labels(mi, "build");
    lbl.insert(LABEL_HASH.into(), hash.into());
    let pod_spec = merge(
        json!({
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "fsGroup": 65532},
            "containers": [{
                "name": "index", "image": worker_image(ix, d), "imagePullPolicy": d.image_pull_policy,
                "args": index_args(mi, ix),
                "env": [{"name": "KIM_LOG_FORMAT", "value": "json"}],
                "resources": ix.spec.build_resources,
                "volumeMounts": mounts,
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "securityContext": container_security(),
            }],
            "volumes": volumes,
        }),
        scheduling(ix),
    );
    let v = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job_name(mi, hash), "namespace": mi.namespace(), "labels": lbl, "ownerReferences": [owner_ref(mi)]},
        "spec": {
            "backoffLimit": ix.spec.retry_limit,
            "activeDeadlineSeconds": deadline_secs,
            "ttlSecondsAfterFinished": 3600,
            "template": {"metadata": {"labels": lbl}, "spec": pod_spec},
        },
    });
    serde_json::from_value(v).expect("valid Job")
}

/// `kim-worker match` arguments for a MatchingIndex.
pub fn match_args(mi: &MatchingIndex) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "match".into(),
        "--storage".into(),
        STORAGE_MOUNT.into(),
        "--namespace".into(),
        mi.namespace().unwrap_or_default(),
        "--label".into(),
        mi.label(),
        "--http".into(),
        format!("0.0.0.0:{MATCHER_PORT}"),
    ];
    if let Some(p) = &mi.spec.redis.key_prefix {
        a.extend(["--prefix".into(), p.clone()]);
    }
    if let Some(t) = mi.spec.matcher.threads {
        a.extend(["--threads".into(), t.to_string()]);
    }
    a
}

fn redis_env(mi: &MatchingIndex) -> Value {
    match (&mi.spec.redis.url, &mi.spec.redis.secret_ref) {
        (_, Some(s)) => json!({"name": "KIM_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": s.name, "key": s.key}}}),
        (Some(u), None) => json!({"name": "KIM_REDIS_URL", "value": u}),
        (None, None) => json!({"name": "KIM_REDIS_URL", "value": ""}),
    }
}

/// Where a matcher finds the Redis TLS Secret.
pub const REDIS_TLS_MOUNT: &str = "/etc/kim/redis-tls";

/// Credentials as env from the Secret, TLS files from the mounted Secret: nothing secret in
/// the Pod's arguments or in plain env values.
fn redis_secret_env(mi: &MatchingIndex) -> Vec<Value> {
    let mut env = Vec::new();
    if let Some(a) = &mi.spec.redis.auth {
        env.push(json!({"name": "KIM_REDIS_USERNAME", "valueFrom": {"secretKeyRef": {"name": a.secret_name, "key": a.username_key, "optional": true}}}));
        env.push(json!({"name": "KIM_REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": a.secret_name, "key": a.password_key}}}));
    }
    if let Some(t) = &mi.spec.redis.tls {
        env.push(json!({"name": "KIM_REDIS_CA", "value": format!("{REDIS_TLS_MOUNT}/ca.crt")}));
        env.push(json!({"name": "KIM_REDIS_REQUIRE_TLS", "value": "true"}));
        if t.client_certificate {
            env.push(json!({"name": "KIM_REDIS_CERT", "value": format!("{REDIS_TLS_MOUNT}/tls.crt")}));
            env.push(json!({"name": "KIM_REDIS_KEY", "value": format!("{REDIS_TLS_MOUNT}/tls.key")}));
        }
    }
    env
}

/// Adds the Redis env, and the TLS Secret volume if any, to the matcher pod spec.
fn with_redis_secrets(mi: &MatchingIndex, mut pod: Value) -> Value {
    let c = &mut pod["containers"][0];
    c["env"].as_array_mut().expect("env list").extend(redis_secret_env(mi));
    if let Some(t) = &mi.spec.redis.tls {
        c["volumeMounts"]
            .as_array_mut()
            .expect("mount list")
            .push(json!({"name": "redis-tls", "mountPath": REDIS_TLS_MOUNT, "readOnly": true}));
        pod["volumes"]
            .as_array_mut()
            .expect("volume list")
            .push(json!({"name": "redis-tls", "secret": {"secretName": t.secret_name, "defaultMode": 0o440}}));
    }
    pod
}

/// The matcher Deployment: storage read-only, Redis from the spec, probes on the HTTP port.
pub fn matcher_deployment(mi: &MatchingIndex, ix: &Indexer, d: &Defaults) -> Deployment {
    let lbl = labels(mi, "matcher");
    let selector: BTreeMap<&str, String> =
        BTreeMap::from([(LABEL_MI, mi.name_any()), (LABEL_COMPONENT, "matcher".into())]);
    let probe =
        |path: &str| json!({"httpGet": {"path": path, "port": "http"}, "periodSeconds": 5, "failureThreshold": 3});
    let pod_spec = merge(
        with_redis_secrets(
            mi,
            json!({
                "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "fsGroup": 65532},
                "terminationGracePeriodSeconds": 30,
                "containers": [{
                    "name": "matcher", "image": worker_image(ix, d), "imagePullPolicy": d.image_pull_policy,
                    "args": match_args(mi),
                    "env": [redis_env(mi), {"name": "KIM_LOG_FORMAT", "value": "json"},
                            {"name": "KIM_MATCHER_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "ports": [{"name": "http", "containerPort": MATCHER_PORT}],
                    "readinessProbe": probe("/readyz"),
                    "livenessProbe": merge(probe("/healthz"), json!({"initialDelaySeconds": 10})),
                    "resources": mi.spec.matcher.resources,
                    "volumeMounts": [{"name": "storage", "mountPath": STORAGE_MOUNT, "readOnly": true}],
                    "securityContext": container_security(),
                }],
                "volumes": [{"name": "storage", "persistentVolumeClaim": {"claimName": storage_claim(ix), "readOnly": true}}],
            }),
        ),
        scheduling(ix),
    );
    let v = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": format!("{}-matcher", mi.name_any()), "namespace": mi.namespace(), "labels": lbl, "ownerReferences": [owner_ref(mi)]},
        "spec": {
            "replicas": mi.spec.matcher.replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": lbl, "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": MATCHER_PORT.to_string()}},
                "spec": pod_spec,
            },
        },
    });
    serde_json::from_value(v).expect("valid Deployment")
}

/// The Job that removes a label's files from storage when its MatchingIndex is deleted.
pub fn cleanup_job(mi: &MatchingIndex, ix: &Indexer, d: &Defaults) -> Job {
    let lbl = labels(mi, "cleanup");
    let name: String = format!("{}-cleanup", mi.name_any().chars().take(50).collect::<String>());
    let v = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": mi.namespace(), "labels": lbl},
        "spec": {
            "backoffLimit": 3, "ttlSecondsAfterFinished": 600,
            "template": {"metadata": {"labels": lbl}, "spec": merge(json!({
                "restartPolicy": "Never",
                "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "fsGroup": 65532},
                "containers": [{
                    "name": "cleanup", "image": worker_image(ix, d), "imagePullPolicy": d.image_pull_policy,
                    "args": ["clean", "--storage", STORAGE_MOUNT, "--namespace", mi.namespace().unwrap_or_default(), "--label", mi.label()],
                    "volumeMounts": [{"name": "storage", "mountPath": STORAGE_MOUNT}],
                    "securityContext": container_security(),
                }],
                "volumes": [{"name": "storage", "persistentVolumeClaim": {"claimName": storage_claim(ix)}}],
            }), scheduling(ix))},
        },
    });
    serde_json::from_value(v).expect("valid Job")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::*;

    pub fn mi(name: &str) -> MatchingIndex {
        let spec: MatchingIndexSpec = serde_json::from_value(json!({
            "indexerRef": {"name": "pool"},
            "descriptor": {"version": 59, "dimensions": 512, "encoding": "u8", "metric": "cosine"},
            "source": {"path": "data/base.npy", "idsPath": "data/ids.txt"},
            "redis": {"url": "redis://redis:6379"},
        }))
        .unwrap();
        let mut m = MatchingIndex::new(name, spec);
        m.metadata.namespace = Some("team".into());
        m.metadata.uid = Some("uid-1".into());
        m
    }

    pub fn ix() -> Indexer {
        let spec: IndexerSpec =
            serde_json::from_value(json!({"storage": {"size": "5Gi"}, "maxConcurrentBuilds": 2})).unwrap();
        let mut i = Indexer::new("pool", spec);
        i.metadata.namespace = Some("team".into());
        i
    }

    fn d() -> Defaults {
        Defaults { worker_image: "kim-worker:test".into(), image_pull_policy: "Never".into() }
    }

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
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
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
        let dep = matcher_deployment(&m, &ix(), &d());
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
        let dep = matcher_deployment(&m, &ix(), &d());
        let c = dep.spec.unwrap().template.spec.unwrap().containers[0].clone();
        assert_eq!(c.env.unwrap()[0].value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap().name, "r");
        assert!(c.args.unwrap().windows(2).any(|w| w == ["--prefix", "p:"]));
    }

    #[test]
    fn matcher_redis_secrets() {
        let plain = matcher_deployment(&mi("faces"), &ix(), &d()).spec.unwrap().template.spec.unwrap();
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
        let pod = matcher_deployment(&m, &ix(), &d()).spec.unwrap().template.spec.unwrap();
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

        assert_eq!(crate::validate::matching_index(&m), Ok(None));
        m.spec.redis.url = Some("redis://:hunter2@redis:6379".into());
        let e = crate::validate::matching_index(&m).unwrap_err().0;
        assert!(e.contains("redis.tls needs a rediss://") && !e.contains("hunter2"), "{e}");
        m.spec.redis.url = Some("rediss+sentinel://s1:26379,s2:26379/mymaster/0".into());
        assert_eq!(crate::validate::matching_index(&m), Ok(None));
        m.spec.redis.url = Some("http://u:hunter2@redis".into());
        let e = crate::validate::matching_index(&m).unwrap_err().0;
        assert!(e.contains("redis+sentinel://") && !e.contains("hunter2"), "{e}");
        m.spec.redis.url = Some("rediss://redis:6380".into());

        // Without a client certificate only the CA is mounted and named.
        m.spec.redis.tls.as_mut().unwrap().client_certificate = false;
        let pod = matcher_deployment(&m, &ix(), &d()).spec.unwrap().template.spec.unwrap();
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
        assert_eq!(storage_claim(&existing), "mine");
    }

    #[test]
    fn validation_messages() {
        use crate::validate;
        let mut m = mi("faces");
        assert_eq!(validate::matching_index(&m), Ok(None));
        m.spec.source.path = Some("../etc/passwd".into());
        assert!(validate::matching_index(&m).unwrap_err().0.contains("'..'"));
        let mut m = mi("faces");
        m.spec.rebuild.interval = Some("soon".into());
        assert!(validate::matching_index(&m).unwrap_err().0.contains("rebuild.interval"));
        m.spec.rebuild.interval = Some("1h".into());
        assert_eq!(validate::matching_index(&m), Ok(Some(std::time::Duration::from_secs(3600))));
        let mut m = mi("faces");
        m.spec.hnsw.ef_construction = 4;
        assert!(validate::matching_index(&m).is_err());
        let mut i = ix();
        i.spec.build_timeout = "0s".into();
        assert!(validate::indexer(&i.spec).is_err());
    }
}
