//! Pure builders for a MatchingIndex's online path: the agent StatefulSet with its headless
//! Service, and the Vald Filter gateway Deployment with its Service.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use serde_json::{json, Value};

use crate::build::{container_security, labels, merge, metric, owner_ref, scheduling, worker_image, Defaults, LABEL_COMPONENT, LABEL_MI};
use crate::crd::{Indexer, MatchingIndex, OnlineSpec};

pub const GRPC_PORT: i32 = 8081;
const HTTP_PORT: i32 = 8080;

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
    let addrs: Vec<String> = (0..online(mi).agents.max(1)).map(|i| format!("{name}-{i}.{name}.{ns}.svc:{GRPC_PORT}")).collect();
    format!("agents://{}", addrs.join(","))
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
        "agent", "--data", "/data", "--listen", &format!("0.0.0.0:{GRPC_PORT}"), "--http", &format!("0.0.0.0:{HTTP_PORT}"),
        "--dimensions", &s.descriptor.dimensions.to_string(), "--metric", metric(s.descriptor.metric),
        "--m", &s.hnsw.m.to_string(), "--ef-construction", &s.hnsw.ef_construction.to_string(), "--ef-search", &s.hnsw.ef_search.to_string(),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}

/// `kim-worker filter` arguments: agents found through the headless Service's DNS name.
pub fn gateway_args(mi: &MatchingIndex) -> Vec<String> {
    let o = online(mi);
    let dns = format!("{}.{}.svc:{GRPC_PORT}", agent_name(mi), mi.namespace().unwrap_or_default());
    let mut a: Vec<String> = ["filter", "--listen", &format!("0.0.0.0:{GRPC_PORT}"), "--http", &format!("0.0.0.0:{HTTP_PORT}"), "--agents-dns", &dns, "--replicas", &o.replicas.to_string()]
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
    a
}

fn pod_security() -> Value {
    json!({"runAsNonRoot": true, "runAsUser": 65532, "fsGroup": 65532})
}

pub fn agent_statefulset(mi: &MatchingIndex, ix: &Indexer, d: &Defaults) -> StatefulSet {
    let o = online(mi);
    let lbl = labels(mi, "agent");
    let container = merge(
        json!({
            "name": "agent", "image": worker_image(ix, d), "imagePullPolicy": d.image_pull_policy,
            "args": agent_args(mi), "ports": ports(),
            "env": [{"name": "KIM_LOG_FORMAT", "value": "json"},
                    {"name": "KIM_AGENT_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "KIM_ADVERTISE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
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
            "template": {"metadata": {"labels": lbl}, "spec": merge(json!({"securityContext": pod_security(), "containers": [container]}), scheduling(ix))},
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
    let container = merge(
        json!({
            "name": "gateway", "image": worker_image(ix, d), "imagePullPolicy": d.image_pull_policy,
            "args": gateway_args(mi), "ports": ports(),
            "env": [{"name": "KIM_LOG_FORMAT", "value": "json"}],
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
            "template": {"metadata": {"labels": lbl}, "spec": merge(json!({"securityContext": pod_security(), "containers": [container]}), scheduling(ix))},
        },
    });
    serde_json::from_value(v).expect("valid Deployment")
}
