//! Pure builders for a MatchingIndex's online path: the agent StatefulSet with its headless
//! Service, the Vald Filter gateway Deployment with its Service, and the rebalance Job that
//! follows a change of `online.agents`. Agents are named by their stable per-pod DNS names
//! (`<name>-agent-<i>.<name>-agent.<namespace>.svc`), so an agent restarted with another IP
//! keeps owning the same objects.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodTemplateSpec, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::build::jobs::{worker_job, Run};
use crate::build::pod::{self, env, env_from_field, http_probe, mount, secret_volume};
use crate::build::{labels, metric, selector_labels, worker_image, Defaults};
use crate::crd::{Indexer, MatchingIndex, OnlineSpec};

pub const GRPC_PORT: i32 = 8081;
const HTTP_PORT: i32 = 8080;
const TLS_SERVER: &str = "/etc/kim/tls/server";
const TLS_CLIENT: &str = "/etc/kim/tls/client";

fn online(mi: &MatchingIndex) -> OnlineSpec {
    mi.spec.online.clone().unwrap_or_default()
}

fn agent_name(mi: &MatchingIndex) -> String {
    format!("{}-agent", mi.name_any())
}

/// Which agents the gateways write to (`owners`, the first ones) and read (`reading`, at least
/// `owners`), and how many agent pods run (`running`, at least `reading`; more only until the
/// gateways stopped reading the ones leaving).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentSet {
    pub owners: i32,
    pub reading: i32,
    pub running: i32,
}

impl AgentSet {
    /// Nothing changing: every agent of the spec owns, is read and runs.
    pub fn steady(mi: &MatchingIndex) -> AgentSet {
        let n = online(mi).agents.max(1);
        AgentSet { owners: n, reading: n, running: n }
    }
}

/// The stable addresses (HOST:PORT) of agents `range`.
pub fn agent_addrs(mi: &MatchingIndex, range: std::ops::Range<i32>) -> Vec<String> {
    let (name, ns) = (agent_name(mi), mi.namespace().unwrap_or_default());
    range.map(|i| format!("{name}-{i}.{name}.{ns}.svc:{GRPC_PORT}")).collect()
}

/// `agents://` source naming every agent pod that may hold objects: the spec's, and during a
/// scale-down also those still being drained.
pub fn agents_source(mi: &MatchingIndex) -> String {
    let reading = mi.status.as_ref().and_then(|s| s.online.as_ref()).map_or(0, |o| o.reading);
    format!("agents://{}", agent_addrs(mi, 0..online(mi).agents.max(reading).max(1)).join(","))
}

/// Server flags: TLS only, and client certificates required when a client Secret is named.
fn tls_server_args(mi: &MatchingIndex) -> Vec<String> {
    let Some(t) = online(mi).tls else { return Vec::new() };
    let mut a = vec![
        "--tls-cert".to_string(),
        format!("{TLS_SERVER}/tls.crt"),
        "--tls-key".into(),
        format!("{TLS_SERVER}/tls.key"),
    ];
    if t.client_secret_name.is_some() {
        a.extend(["--tls-client-ca".into(), format!("{TLS_SERVER}/ca.crt")]);
    }
    a
}

/// Client flags towards agents (gateway, build Job): the server Secret's CA, the client
/// certificate if any, and the name agents' certificates carry.
pub fn tls_client_args(mi: &MatchingIndex) -> Vec<String> {
    let Some(t) = online(mi).tls else { return Vec::new() };
    let name = t
        .agent_server_name
        .clone()
        .unwrap_or_else(|| format!("{}.{}.svc", agent_name(mi), mi.namespace().unwrap_or_default()));
    let mut a = vec!["--tls-ca".to_string(), format!("{TLS_SERVER}/ca.crt"), "--tls-server-name".into(), name];
    if t.client_secret_name.is_some() {
        a.extend([
            "--tls-client-cert".into(),
            format!("{TLS_CLIENT}/tls.crt"),
            "--tls-client-key".into(),
            format!("{TLS_CLIENT}/tls.key"),
        ]);
    }
    a
}

/// Volumes and mounts of the TLS Secrets (read-only, owner-readable keys).
pub fn tls_volumes(mi: &MatchingIndex) -> (Vec<Volume>, Vec<VolumeMount>) {
    let Some(t) = online(mi).tls else { return (Vec::new(), Vec::new()) };
    let mut secrets = vec![("tls-server", t.server_secret_name.clone(), TLS_SERVER)];
    if let Some(c) = &t.client_secret_name {
        secrets.push(("tls-client", c.clone(), TLS_CLIENT));
    }
    secrets.into_iter().map(|(vol, secret, path)| (secret_volume(vol, &secret), mount(vol, path, true))).unzip()
}

fn ports() -> Vec<ContainerPort> {
    vec![
        ContainerPort { name: Some("grpc".into()), container_port: GRPC_PORT, ..Default::default() },
        ContainerPort { name: Some("http".into()), container_port: HTTP_PORT, ..Default::default() },
    ]
}

/// A gRPC server container of the online path (agent or gateway) with its probes.
fn server_container(name: &str, image: String, d: &Defaults, args: Vec<String>) -> Container {
    Container {
        name: name.into(),
        image: Some(image),
        image_pull_policy: Some(d.image_pull_policy.clone()),
        args: Some(args),
        ports: Some(ports()),
        readiness_probe: Some(http_probe("/readyz", 5, None, None)),
        liveness_probe: Some(http_probe("/healthz", 10, None, Some(10))),
        ..Default::default()
    }
}

/// `kim-worker agent` arguments.
pub fn agent_args(mi: &MatchingIndex) -> Vec<String> {
    let s = &mi.spec;
    [
        "agent",
        "--data",
        "/data",
        "--listen",
        &format!("0.0.0.0:{GRPC_PORT}"),
        "--http",
        &format!("0.0.0.0:{HTTP_PORT}"),
        "--dimensions",
        &s.descriptor.dimensions.to_string(),
        "--metric",
        metric(s.descriptor.metric),
        "--m",
        &s.hnsw.m.to_string(),
        "--ef-construction",
        &s.hnsw.ef_construction.to_string(),
        "--ef-search",
        &s.hnsw.ef_search.to_string(),
    ]
    .iter()
    .map(|x| x.to_string())
    .chain(tls_server_args(mi))
    .collect()
}

/// `kim-worker filter` arguments: the owners by their stable names, and the agents read but
/// not written while the set changes.
pub fn gateway_args(mi: &MatchingIndex, set: AgentSet) -> Vec<String> {
    let o = online(mi);
    let mut a: Vec<String> = [
        "filter",
        "--listen",
        &format!("0.0.0.0:{GRPC_PORT}"),
        "--http",
        &format!("0.0.0.0:{HTTP_PORT}"),
        "--agents",
        &agent_addrs(mi, 0..set.owners).join(","),
        "--replicas",
        &o.replicas.to_string(),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    if set.reading > set.owners {
        a.extend(["--read-agents".into(), agent_addrs(mi, set.owners..set.reading).join(",")]);
    }
    if let Some(v) = &o.vectorizer {
        a.extend(["--vectorizer".into(), v.clone()]);
    }
    if !o.ingress_filters.is_empty() {
        a.extend(["--ingress-filter".into(), o.ingress_filters.join(",")]);
    }
    if !o.egress_filters.is_empty() {
        a.extend(["--egress-filter".into(), o.egress_filters.join(",")]);
    }
    a.extend(tls_server_args(mi));
    a.extend(tls_client_args(mi));
    a
}

pub fn agent_statefulset(mi: &MatchingIndex, ix: &Indexer, d: &Defaults, set: AgentSet) -> StatefulSet {
    let o = online(mi);
    let lbl = labels(mi, "agent");
    let (tls_vols, tls_mounts) = tls_volumes(mi);
    let mut mounts = vec![mount("data", "/data", false)];
    mounts.extend(tls_mounts);
    let container = Container {
        env: Some(vec![
            env("KIM_LOG_FORMAT", "json"),
            env_from_field("KIM_AGENT_NAME", "metadata.name"),
            env_from_field("KIM_ADVERTISE_IP", "status.podIP"),
        ]),
        volume_mounts: Some(mounts),
        resources: o.agent_resources.clone(),
        ..server_container("agent", worker_image(ix, d), d, agent_args(mi))
    };
    let scheduling = o.agent_scheduling.as_ref().or(ix.spec.scheduling.as_ref());
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta { name: Some("data".into()), labels: Some(lbl.clone()), ..Default::default() },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), Quantity(o.agent_storage.clone()))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    StatefulSet {
        metadata: pod::meta(agent_name(mi), mi.namespace(), &lbl, Some(pod::owner_ref(mi))),
        spec: Some(StatefulSetSpec {
            replicas: Some(set.running),
            service_name: Some(agent_name(mi)),
            pod_management_policy: Some("Parallel".into()),
            selector: pod::selector(selector_labels(mi, "agent")),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(lbl), ..Default::default() }),
                spec: Some(pod::pod(container, tls_vols, scheduling)),
            },
            volume_claim_templates: Some(vec![claim]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn service(mi: &MatchingIndex, name: String, component: &str, headless: bool) -> Service {
    let port = ServicePort {
        name: Some("grpc".into()),
        port: GRPC_PORT,
        target_port: Some(IntOrString::String("grpc".into())),
        ..Default::default()
    };
    Service {
        metadata: pod::meta(name, mi.namespace(), &labels(mi, component), Some(pod::owner_ref(mi))),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(mi, component)),
            ports: Some(vec![port]),
            cluster_ip: headless.then(|| "None".to_string()),
            publish_not_ready_addresses: headless.then_some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn agent_service(mi: &MatchingIndex) -> Service {
    service(mi, agent_name(mi), "agent", true)
}

pub fn gateway_service(mi: &MatchingIndex) -> Service {
    service(mi, format!("{}-gateway", mi.name_any()), "gateway", false)
}

/// Voluntary disruptions take at most `replicas - 1` agents (at least one), so every object
/// keeps a copy on a running agent when it has more than one.
pub fn agent_pdb(mi: &MatchingIndex) -> PodDisruptionBudget {
    crate::build::pdb(mi, agent_name(mi), "agent", (online(mi).replicas - 1).max(1))
}

pub fn gateway_deployment(mi: &MatchingIndex, ix: &Indexer, d: &Defaults, set: AgentSet) -> Deployment {
    let o = online(mi);
    let lbl = labels(mi, "gateway");
    let (tls_vols, tls_mounts) = tls_volumes(mi);
    let container = Container {
        env: Some(vec![env("KIM_LOG_FORMAT", "json")]),
        volume_mounts: (!tls_mounts.is_empty()).then_some(tls_mounts),
        resources: o.gateway_resources.clone(),
        ..server_container("gateway", worker_image(ix, d), d, gateway_args(mi, set))
    };
    let scheduling = o.gateway_scheduling.as_ref().or(ix.spec.scheduling.as_ref());
    Deployment {
        metadata: pod::meta(format!("{}-gateway", mi.name_any()), mi.namespace(), &lbl, Some(pod::owner_ref(mi))),
        spec: Some(DeploymentSpec {
            replicas: Some(o.gateway_replicas),
            selector: pod::selector(selector_labels(mi, "gateway")),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(lbl), ..Default::default() }),
                spec: Some(pod::pod(container, tls_vols, scheduling)),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `kim-worker rebalance` arguments: every object onto its owners among `set.owners`, the
/// agents up to `set.reading` drained; progress on the HTTP port, the report as the
/// termination message.
pub fn rebalance_args(mi: &MatchingIndex, set: AgentSet) -> Vec<String> {
    let mut a: Vec<String> = [
        "rebalance",
        "--agents",
        &agent_addrs(mi, 0..set.owners).join(","),
        "--replicas",
        &online(mi).replicas.to_string(),
        "--http",
        &format!("0.0.0.0:{HTTP_PORT}"),
        "--termination-message-path",
        "/dev/termination-log",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    if set.reading > set.owners {
        a.extend(["--drain".into(), agent_addrs(mi, set.owners..set.reading).join(",")]);
    }
    a.extend(tls_client_args(mi));
    a
}

/// The Job that rebalances the agents after a change of `online.agents` (owned by the
/// MatchingIndex, kept an hour after it finishes).
pub fn rebalance_job(mi: &MatchingIndex, ix: &Indexer, d: &Defaults, name: String, set: AgentSet) -> Job {
    let (volumes, mounts) = tls_volumes(mi);
    let run = Run {
        name,
        container: "rebalance",
        labels: labels(mi, "rebalance"),
        args: rebalance_args(mi, set),
        storage: crate::build::StorageParts { volumes, mounts, env: Vec::new() },
        resources: None,
        owned: true,
        backoff_limit: 3,
        deadline_secs: 6 * 3600,
        ttl_secs: 3600,
    };
    let mut job = worker_job(mi, ix, d, run);
    if let Some(c) = job.spec.as_mut().and_then(|s| s.template.spec.as_mut()).map(|p| &mut p.containers[0]) {
        c.ports =
            Some(vec![ContainerPort { name: Some("http".into()), container_port: HTTP_PORT, ..Default::default() }]);
    }
    job
}
