//! Pure builders for a MatchingIndex's online path: the agent StatefulSet with its headless
//! Service, and the Vald Filter gateway Deployment with its Service.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use serde_json::{json, Value};

use crate::build::{
    container_security, labels, merge, metric, owner_ref, scheduling, worker_image, Defaults, LABEL_COMPONENT, LABEL_MI,
};
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

fn selector(mi: &MatchingIndex, component: &str) -> Value {
    json!({LABEL_MI: mi.name_any(), LABEL_COMPONENT: component})
}

/// `agents://` source naming every agent pod through the headless Service.
pub fn agents_source(mi: &MatchingIndex) -> String {
    let (name, ns) = (agent_name(mi), mi.namespace().unwrap_or_default());
    let addrs: Vec<String> =
        (0..online(mi).agents.max(1)).map(|i| format!("{name}-{i}.{name}.{ns}.svc:{GRPC_PORT}")).collect();
    format!("agents://{}", addrs.join(","))
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
pub fn tls_volumes(mi: &MatchingIndex) -> (Vec<Value>, Vec<Value>) {
    let Some(t) = online(mi).tls else { return (Vec::new(), Vec::new()) };
    let mut secrets = vec![("tls-server", t.server_secret_name.clone(), TLS_SERVER)];
    if let Some(c) = &t.client_secret_name {
        secrets.push(("tls-client", c.clone(), TLS_CLIENT));
    }
    secrets
        .into_iter()
        .map(|(vol, secret, path)| {
            (
                json!({"name": vol, "secret": {"secretName": secret, "defaultMode": 0o440}}),
                json!({"name": vol, "mountPath": path, "readOnly": true}),
            )
        })
        .unzip()
}

fn probes() -> Value {
    json!({
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10, "initialDelaySeconds": 10},
    })
}

fn ports() -> Value {
    json!([{"name": "grpc", "containerPort": GRPC_PORT}, {"name": "http", "containerPort": HTTP_PORT}])
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

/// `kim-worker filter` arguments: agents found through the headless Service's DNS name.
pub fn gateway_args(mi: &MatchingIndex) -> Vec<String> {
    let o = online(mi);
    let dns = format!("{}.{}.svc:{GRPC_PORT}", agent_name(mi), mi.namespace().unwrap_or_default());
    let mut a: Vec<String> = [
        "filter",
        "--listen",
        &format!("0.0.0.0:{GRPC_PORT}"),
        "--http",
        &format!("0.0.0.0:{HTTP_PORT}"),
        "--agents-dns",
        &dns,
        "--replicas",
        &o.replicas.to_string(),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
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

fn pod_security() -> Value {
    json!({"runAsNonRoot": true, "runAsUser": 65532, "fsGroup": 65532})
}

pub fn agent_statefulset(mi: &MatchingIndex, ix: &Indexer, d: &Defaults) -> StatefulSet {
    let o = online(mi);
    let lbl = labels(mi, "agent");
    let (tls_vols, tls_mounts) = tls_volumes(mi);
    let mut mounts = vec![json!({"name": "data", "mountPath": "/data"})];
    mounts.extend(tls_mounts);
    let container = merge(
        json!({
            "name": "agent", "image": worker_image(ix, d), "imagePullPolicy": d.image_pull_policy,
            "args": agent_args(mi), "ports": ports(),
            "env": [{"name": "KIM_LOG_FORMAT", "value": "json"},
                    {"name": "KIM_AGENT_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "KIM_ADVERTISE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "volumeMounts": mounts,
            "securityContext": container_security(),
        }),
        probes(),
    );
    let v = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": agent_name(mi), "namespace": mi.namespace(), "labels": lbl, "ownerReferences": [owner_ref(mi)]},
        "spec": {
            "replicas": o.agents, "serviceName": agent_name(mi), "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector(mi, "agent")},
            "template": {"metadata": {"labels": lbl}, "spec": merge(json!({"securityContext": pod_security(), "containers": [container], "volumes": tls_vols}), scheduling(ix))},
            "volumeClaimTemplates": [{
                "metadata": {"name": "data", "labels": lbl},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": o.agent_storage}}},
            }],
        },
    });
    serde_json::from_value(v).expect("valid StatefulSet")
}

fn service(mi: &MatchingIndex, name: String, component: &str, headless: bool) -> Service {
    let mut spec = json!({"selector": selector(mi, component), "ports": [{"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc"}]});
    if headless {
        spec["clusterIP"] = json!("None");
        spec["publishNotReadyAddresses"] = json!(true);
    }
    let v = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": mi.namespace(), "labels": labels(mi, component), "ownerReferences": [owner_ref(mi)]},
        "spec": spec,
    });
    serde_json::from_value(v).expect("valid Service")
}

pub fn agent_service(mi: &MatchingIndex) -> Service {
    service(mi, agent_name(mi), "agent", true)
}

pub fn gateway_service(mi: &MatchingIndex) -> Service {
    service(mi, format!("{}-gateway", mi.name_any()), "gateway", false)
}

pub fn gateway_deployment(mi: &MatchingIndex, ix: &Indexer, d: &Defaults) -> Deployment {
    let lbl = labels(mi, "gateway");
    let (tls_vols, tls_mounts) = tls_volumes(mi);
    let container = merge(
        json!({
            "name": "gateway", "image": worker_image(ix, d), "imagePullPolicy": d.image_pull_policy,
            "args": gateway_args(mi), "ports": ports(),
            "env": [{"name": "KIM_LOG_FORMAT", "value": "json"}],
            "volumeMounts": tls_mounts,
            "securityContext": container_security(),
        }),
        probes(),
    );
    let v = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": format!("{}-gateway", mi.name_any()), "namespace": mi.namespace(), "labels": lbl, "ownerReferences": [owner_ref(mi)]},
        "spec": {
            "replicas": online(mi).gateway_replicas,
            "selector": {"matchLabels": selector(mi, "gateway")},
            "template": {"metadata": {"labels": lbl}, "spec": merge(json!({"securityContext": pod_security(), "containers": [container], "volumes": tls_vols}), scheduling(ix))},
        },
    });
    serde_json::from_value(v).expect("valid Deployment")
}
