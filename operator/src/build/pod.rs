//! Small typed constructors for the pod parts every child shares: environment, volumes,
//! probes, security settings and scheduling.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, Probe, SeccompProfile, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::Scheduling;

/// The controller reference that ties a child to the object it belongs to.
pub fn owner_ref<K: Resource<DynamicType = ()>>(o: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into(),
        kind: K::kind(&()).into(),
        name: o.name_any(),
        uid: o.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

pub fn meta(
    name: impl Into<String>,
    namespace: Option<String>,
    labels: &BTreeMap<String, String>,
    owner: Option<OwnerReference>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace,
        labels: Some(labels.clone()),
        owner_references: owner.map(|o| vec![o]),
        ..Default::default()
    }
}

pub fn selector(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector { match_labels: Some(labels), ..Default::default() }
}

pub fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

pub fn env_from_secret(name: &str, secret: &str, key: &str, optional: Option<bool>) -> EnvVar {
    let source = EnvVarSource {
        secret_key_ref: Some(SecretKeySelector { name: secret.into(), key: key.into(), optional }),
        ..Default::default()
    };
    EnvVar { name: name.into(), value_from: Some(source), ..Default::default() }
}

pub fn env_from_field(name: &str, field_path: &str) -> EnvVar {
    let source = EnvVarSource {
        field_ref: Some(ObjectFieldSelector { field_path: field_path.into(), api_version: None }),
        ..Default::default()
    };
    EnvVar { name: name.into(), value_from: Some(source), ..Default::default() }
}

pub fn claim_volume(name: &str, claim: &str, read_only: bool) -> Volume {
    Volume {
        name: name.into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.into(),
            read_only: read_only.then_some(true),
        }),
        ..Default::default()
    }
}

/// A Secret as files readable by the owner and group only.
pub fn secret_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode: Some(0o440),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

pub fn http_probe(path: &str, period: i32, failure_threshold: Option<i32>, initial_delay: Option<i32>) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold,
        initial_delay_seconds: initial_delay,
        ..Default::default()
    }
}

/// Security settings every container kim starts runs with.
pub fn container_security() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
        ..Default::default()
    }
}

/// Non-root user 65532 owning mounted volumes.
pub fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        fs_group: Some(65532),
        ..Default::default()
    }
}

/// A pod of one container with kim's security settings, placed by `scheduling`.
pub fn pod(container: Container, volumes: Vec<Volume>, scheduling: Option<&Scheduling>) -> PodSpec {
    let mut p = PodSpec {
        security_context: Some(pod_security()),
        containers: vec![Container { security_context: Some(container_security()), ..container }],
        volumes: (!volumes.is_empty()).then_some(volumes),
        ..Default::default()
    };
    if let Some(s) = scheduling {
        p.node_selector = (!s.node_selector.is_empty()).then(|| s.node_selector.clone());
        p.tolerations = (!s.tolerations.is_empty()).then(|| s.tolerations.clone());
        p.affinity = s.affinity.clone();
    }
    p
}
