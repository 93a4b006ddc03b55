//! How a pod reaches an Indexer's storage: the claim mounted at `/storage`, or object storage
//! (the bucket's settings as worker flags, credentials as env from a Secret, the CA from a
//! mounted Secret, and an emptyDir as the local snapshot cache).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::core::v1::{EmptyDirVolumeSource, EnvVar, Volume, VolumeMount};
use k8s_openapi::api::core::v1::{PersistentVolumeClaimSpec, VolumeResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;

use super::pod::{self, claim_volume, env_from_secret, mount, secret_volume};
use super::{LABEL_INDEXER, LABEL_MANAGED_BY, MANAGER, STORAGE_MOUNT};
use crate::crd::{Indexer, S3Storage};

/// Where pods on object storage keep their snapshot cache (an emptyDir).
pub const CACHE_MOUNT: &str = "/cache";
/// Where pods on object storage find the endpoint's CA Secret.
pub const S3_CA_MOUNT: &str = "/etc/kim/s3-ca";

/// The Indexer's object storage, if it uses one instead of a claim.
pub fn object_storage(ix: &Indexer) -> Option<&S3Storage> {
    ix.spec.storage.s3.as_ref()
}

/// Name of the claim an Indexer stores snapshots on (none on object storage).
pub fn storage_claim(ix: &Indexer) -> Option<String> {
    if object_storage(ix).is_some() {
        return None;
    }
    Some(ix.spec.storage.existing_claim.clone().unwrap_or_else(|| format!("{}-storage", ix.name_any())))
}

/// Where the Indexer's snapshots are, for messages: "claim <name>" or the bucket URL.
pub fn storage_place(ix: &Indexer) -> String {
    match (object_storage(ix), storage_claim(ix)) {
        (Some(s3), _) => s3.url.clone(),
        (None, claim) => format!("claim {}", claim.unwrap_or_default()),
    }
}

/// The claim the operator creates for an Indexer, if it creates one.
pub fn indexer_pvc(ix: &Indexer) -> Option<PersistentVolumeClaim> {
    let s = &ix.spec.storage;
    let size = s.size.as_ref()?;
    let claim = storage_claim(ix)?;
    let modes = if s.access_modes.is_empty() { vec!["ReadWriteMany".to_string()] } else { s.access_modes.clone() };
    let lbl = BTreeMap::from([(LABEL_MANAGED_BY.into(), MANAGER.into()), (LABEL_INDEXER.into(), ix.name_any())]);
    Some(PersistentVolumeClaim {
        metadata: pod::meta(claim, ix.namespace(), &lbl, Some(pod::owner_ref(ix))),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(modes),
            storage_class_name: s.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), Quantity(size.clone()))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// `--storage` and, on object storage, the flags that reach the bucket.
pub fn storage_args(ix: &Indexer) -> Vec<String> {
    let Some(s3) = object_storage(ix) else { return vec!["--storage".into(), STORAGE_MOUNT.into()] };
    let mut a = vec!["--storage".into(), s3.url.clone(), "--cache-dir".into(), CACHE_MOUNT.into()];
    if let Some(e) = &s3.endpoint {
        a.extend(["--s3-endpoint".into(), e.clone()]);
    }
    if let Some(r) = &s3.region {
        a.extend(["--s3-region".into(), r.clone()]);
    }
    if s3.allow_http {
        a.push("--s3-allow-http".into());
    }
    if s3.ca_secret.is_some() {
        a.extend(["--s3-ca".into(), format!("{S3_CA_MOUNT}/ca.crt")]);
    }
    a
}

/// Volumes, mounts and environment a pod needs for the Indexer's storage; `read_only` for
/// the claim of pods that only read it.
pub struct StorageParts {
    pub volumes: Vec<Volume>,
    pub mounts: Vec<VolumeMount>,
    pub env: Vec<EnvVar>,
}

pub fn storage_parts(ix: &Indexer, read_only: bool) -> StorageParts {
    let Some(s3) = object_storage(ix) else {
        let claim = storage_claim(ix).unwrap_or_default();
        return StorageParts {
            volumes: vec![claim_volume("storage", &claim, read_only)],
            mounts: vec![mount("storage", STORAGE_MOUNT, read_only)],
            env: Vec::new(),
        };
    };
    let cache = Volume {
        name: "snapshot-cache".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: s3.cache_size_limit.clone().map(Quantity),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut p = StorageParts {
        volumes: vec![cache],
        mounts: vec![mount("snapshot-cache", CACHE_MOUNT, false)],
        env: Vec::new(),
    };
    if let Some(secret) = &s3.ca_secret {
        p.volumes.push(secret_volume("s3-ca", secret));
        p.mounts.push(mount("s3-ca", S3_CA_MOUNT, true));
    }
    if let Some(secret) = &s3.credentials_secret {
        p.env.push(env_from_secret("AWS_ACCESS_KEY_ID", secret, "AWS_ACCESS_KEY_ID", None));
        p.env.push(env_from_secret("AWS_SECRET_ACCESS_KEY", secret, "AWS_SECRET_ACCESS_KEY", None));
        p.env.push(env_from_secret("AWS_SESSION_TOKEN", secret, "AWS_SESSION_TOKEN", Some(true)));
    }
    p
}
