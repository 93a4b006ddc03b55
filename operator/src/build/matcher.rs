//! The matcher Deployment of a MatchingIndex and its disruption budget.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, ContainerPort, EnvVar, PodTemplateSpec, ResourceRequirements};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::pod::{self, env, env_from_field, env_from_secret, http_probe, mount, secret_volume};
use super::{
    labels, selector_labels, storage_args, storage_parts, worker_image, Defaults, StorageParts, LABEL_SHARD,
    LABEL_SHARDS, MATCHER_PORT,
};
use crate::crd::{Indexer, MatchingIndex, RedisSpec};

/// Where a matcher finds the Redis TLS Secret.
pub const REDIS_TLS_MOUNT: &str = "/etc/kim/redis-tls";

/// The matcher Deployment's name (and its disruption budget's and ScaledObject's).
pub fn matcher_name(mi: &MatchingIndex) -> String {
    format!("{}-matcher", mi.name_any())
}

/// Shard `index` of the `of` a label is served in (`of` 1: the label is not split). The layout
/// is the served snapshot's, not the spec's: a changed `spec.shards` is served once it is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: i32,
    pub of: i32,
}

impl Shard {
    /// The whole of a label that is not split.
    pub const WHOLE: Shard = Shard { index: 0, of: 1 };

    /// Every shard of a split into `of` (one, the whole, for `of` ≤ 1).
    pub fn all(of: i32) -> impl Iterator<Item = Shard> {
        let of = of.max(1);
        (0..of).map(move |index| Shard { index, of })
    }

    /// The consumer group its matchers read the label's stream in.
    pub fn group(&self) -> String {
        kim_api::shard::group(self.index.max(0) as u32, self.of.max(1) as u32)
    }
}

/// The Deployment serving `shard`: the matcher Deployment itself when the label is not split,
/// `<name>-matcher-<I>-of-<N>` otherwise, so two layouts of one label never share a name and
/// the old one can serve while the new one starts.
pub fn shard_deployment_name(mi: &MatchingIndex, shard: Shard) -> String {
    match shard.of {
        n if n > 1 => format!("{}-{}-of-{n}", matcher_name(mi), shard.index),
        _ => matcher_name(mi),
    }
}

/// `kim-worker match` arguments for one shard of a MatchingIndex on its Indexer's storage.
pub fn match_args(mi: &MatchingIndex, ix: &Indexer, shard: Shard) -> Vec<String> {
    let mut a: Vec<String> = [
        "match",
        "--namespace",
        &mi.namespace().unwrap_or_default(),
        "--label",
        &mi.label(),
        "--http",
        &format!("0.0.0.0:{MATCHER_PORT}"),
        "--ef-search",
        &mi.spec.hnsw.ef_search.to_string(),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    a.extend(storage_args(ix));
    if let Some(p) = &mi.spec.redis.key_prefix {
        a.extend(["--prefix".into(), p.clone()]);
    }
    if let Some(t) = mi.spec.matcher.threads {
        a.extend(["--threads".into(), t.to_string()]);
    }
    if shard.of > 1 {
        a.extend(["--shards".into(), shard.of.to_string(), "--shard".into(), shard.index.to_string()]);
    }
    a
}

fn redis_url_env(r: &RedisSpec) -> EnvVar {
    match (&r.url, &r.secret_ref) {
        (_, Some(s)) => env_from_secret("KIM_REDIS_URL", &s.name, &s.key, None),
        (Some(u), None) => env("KIM_REDIS_URL", u.as_str()),
        (None, None) => env("KIM_REDIS_URL", ""),
    }
}

/// Credentials as env from the Secret, TLS files from the mounted Secret: nothing secret in
/// the Pod's arguments or in plain env values.
fn redis_secret_env(r: &RedisSpec) -> Vec<EnvVar> {
    let mut e = Vec::new();
    if let Some(a) = &r.auth {
        e.push(env_from_secret("KIM_REDIS_USERNAME", &a.secret_name, &a.username_key, Some(true)));
        e.push(env_from_secret("KIM_REDIS_PASSWORD", &a.secret_name, &a.password_key, None));
    }
    if let Some(t) = &r.tls {
        e.push(env("KIM_REDIS_CA", format!("{REDIS_TLS_MOUNT}/ca.crt")));
        e.push(env("KIM_REDIS_REQUIRE_TLS", "true"));
        if t.client_certificate {
            e.push(env("KIM_REDIS_CERT", format!("{REDIS_TLS_MOUNT}/tls.crt")));
            e.push(env("KIM_REDIS_KEY", format!("{REDIS_TLS_MOUNT}/tls.key")));
        }
    }
    e
}

/// A matcher pod running `args` over the Indexer's storage (read-only) and `redis`, probes on
/// the HTTP port: a label's own matchers and an Indexer's pool alike.
pub(crate) fn matcher_pod(
    ix: &Indexer,
    d: &Defaults,
    redis: &RedisSpec,
    args: Vec<String>,
    resources: Option<ResourceRequirements>,
    labels: BTreeMap<String, String>,
) -> PodTemplateSpec {
    let mut env_vars =
        vec![redis_url_env(redis), env("KIM_LOG_FORMAT", "json"), env_from_field("KIM_MATCHER_ID", "metadata.name")];
    env_vars.extend(redis_secret_env(redis));
    let StorageParts { mut volumes, mut mounts, env: storage_env } = storage_parts(ix, true);
    env_vars.extend(storage_env);
    if let Some(t) = &redis.tls {
        volumes.push(secret_volume("redis-tls", &t.secret_name));
        mounts.push(mount("redis-tls", REDIS_TLS_MOUNT, true));
    }
    let container = Container {
        name: "matcher".into(),
        image: Some(worker_image(ix, d)),
        image_pull_policy: Some(d.image_pull_policy.clone()),
        args: Some(args),
        env: Some(env_vars),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: MATCHER_PORT,
            ..Default::default()
        }]),
        readiness_probe: Some(http_probe("/readyz", 5, Some(3), None)),
        liveness_probe: Some(http_probe("/healthz", 5, Some(3), Some(10))),
        resources,
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    let mut pod = pod::pod(container, volumes, ix.spec.scheduling.as_ref());
    pod.termination_grace_period_seconds = Some(30);
    let annotations = BTreeMap::from([
        ("prometheus.io/scrape".to_string(), "true".to_string()),
        ("prometheus.io/port".to_string(), MATCHER_PORT.to_string()),
    ]);
    PodTemplateSpec {
        metadata: Some(ObjectMeta { labels: Some(labels), annotations: Some(annotations), ..Default::default() }),
        spec: Some(pod),
    }
}

/// The matcher Deployment of one shard of a label.
/// `replicas` None leaves the field to whoever else scales it (KEDA's autoscaler).
pub fn matcher_deployment(
    mi: &MatchingIndex,
    ix: &Indexer,
    d: &Defaults,
    shard: Shard,
    replicas: Option<i32>,
) -> Deployment {
    let mut lbl = labels(mi, "matcher");
    let mut selector = selector_labels(mi, "matcher");
    if shard.of > 1 {
        for (k, v) in [(LABEL_SHARD, shard.index), (LABEL_SHARDS, shard.of)] {
            lbl.insert(k.into(), v.to_string());
            selector.insert(k.into(), v.to_string());
        }
    }
    let args = match_args(mi, ix, shard);
    let template = matcher_pod(ix, d, &mi.spec.redis, args, mi.spec.matcher.resources.clone(), lbl.clone());
    Deployment {
        metadata: pod::meta(shard_deployment_name(mi, shard), mi.namespace(), &lbl, Some(pod::owner_ref(mi))),
        spec: Some(DeploymentSpec { replicas, selector: pod::selector(selector), template, ..Default::default() }),
        ..Default::default()
    }
}

/// A disruption budget over one component's pods.
pub(crate) fn pdb(mi: &MatchingIndex, name: String, component: &str, max_unavailable: i32) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: pod::meta(name, mi.namespace(), &labels(mi, component), Some(pod::owner_ref(mi))),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(max_unavailable)),
            selector: Some(pod::selector(selector_labels(mi, component))),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Voluntary disruptions (node drains) take one matcher at a time, so the others keep serving.
pub fn matcher_pdb(mi: &MatchingIndex) -> PodDisruptionBudget {
    pdb(mi, matcher_name(mi), "matcher", 1)
}
