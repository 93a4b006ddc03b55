//! Volumes of a pod as directories on this machine.
//!
//! * persistentVolumeClaim: the hostPath of the PersistentVolume the claim is bound to (the
//!   harness provisions one directory per claim, see [`provision`]), so a build Job and a later
//!   matcher pod see the same files.
//! * emptyDir: a directory per pod.
//! * configMap, secret, downwardAPI and projected volumes: files written before the start.
//! * projected serviceAccountToken: a token from the TokenRequest API for the pod's
//!   ServiceAccount, bound to the pod; the harness also writes a kubeconfig with it, so a
//!   process talks to the API server with exactly that account's RBAC.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    ConfigMap, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Secret, ServiceAccount, Volume,
};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::{Error, Shared};

/// A volume of the pod, prepared on disk.
pub struct Prepared {
    pub path: PathBuf,
    pub read_only: bool,
    /// Set when the volume carries a ServiceAccount token: the kubeconfig made from it.
    pub kubeconfig: Option<PathBuf>,
}

/// Label on the PersistentVolumes the harness creates.
pub const PV_LABEL: &str = "kim.dev/harness-node";

pub async fn prepare(sh: &Shared, pod: &Pod, pod_dir: &Path) -> Result<HashMap<String, Prepared>, Error> {
    let ns = pod.namespace().unwrap_or_default();
    let spec = pod.spec.as_ref().ok_or_else(|| Error::Invalid("pod has no spec".into()))?;
    let mut out = HashMap::new();
    for v in spec.volumes.iter().flatten() {
        let p = volume(sh, pod, &ns, v, &pod_dir.join("volumes").join(&v.name)).await?;
        out.insert(v.name.clone(), p);
    }
    Ok(out)
}

async fn volume(sh: &Shared, pod: &Pod, ns: &str, v: &Volume, dir: &Path) -> Result<Prepared, Error> {
    let plain = |path: PathBuf, read_only| Prepared { path, read_only, kubeconfig: None };
    if let Some(c) = &v.persistent_volume_claim {
        return Ok(plain(claim_dir(&sh.client, ns, &c.claim_name).await?, c.read_only.unwrap_or(false)));
    }
    std::fs::create_dir_all(dir)?;
    if v.empty_dir.is_some() {
        return Ok(plain(dir.to_path_buf(), false));
    }
    if let Some(c) = &v.config_map {
        let data = config_map(&sh.client, ns, &c.name, c.optional.unwrap_or(false)).await?;
        write_items(dir, &data, c.items.as_deref())?;
        return Ok(plain(dir.to_path_buf(), true));
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let data = secret(&sh.client, ns, &name, s.optional.unwrap_or(false)).await?;
        write_items(dir, &data, s.items.as_deref())?;
        return Ok(plain(dir.to_path_buf(), true));
    }
    if let Some(p) = &v.projected {
        let mut kubeconfig = None;
        for src in p.sources.iter().flatten() {
            if let Some(t) = &src.service_account_token {
                let token = token(&sh.client, pod, t.audience.clone(), t.expiration_seconds.unwrap_or(3607)).await?;
                write_file(&dir.join(&t.path), token.as_bytes())?;
                let kc = dir.parent().and_then(Path::parent).unwrap_or(dir).join(format!("kubeconfig-{}", v.name));
                std::fs::write(&kc, sh.kubeconfig_for(ns, &token))?;
                kubeconfig = Some(kc);
            }
            if let Some(c) = &src.config_map {
                let data = config_map(&sh.client, ns, &c.name, c.optional.unwrap_or(false)).await?;
                write_items(dir, &data, c.items.as_deref())?;
            }
            if let Some(s) = &src.secret {
                let data = secret(&sh.client, ns, &s.name, s.optional.unwrap_or(false)).await?;
                write_items(dir, &data, s.items.as_deref())?;
            }
            if let Some(d) = &src.downward_api {
                for item in d.items.iter().flatten() {
                    let value = match &item.field_ref {
                        Some(f) => super::pod::field(pod, &f.field_path)?,
                        None => {
                            return Err(Error::Unsupported(format!("downwardAPI item {} without fieldRef", item.path)))
                        }
                    };
                    write_file(&dir.join(&item.path), value.as_bytes())?;
                }
            }
        }
        return Ok(Prepared { path: dir.to_path_buf(), read_only: true, kubeconfig });
    }
    Err(Error::Unsupported(format!("volume {} has a type the harness does not map (supported: persistentVolumeClaim, emptyDir, configMap, secret, projected)", v.name)))
}

fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, bytes)
}

fn write_items(dir: &Path, data: &BTreeMap<String, Vec<u8>>, items: Option<&[KeyToPath]>) -> Result<(), Error> {
    match items {
        None => data.iter().try_for_each(|(k, v)| write_file(&dir.join(k), v))?,
        Some(items) => {
            for it in items {
                let v = data.get(&it.key).ok_or_else(|| Error::Invalid(format!("key {} missing", it.key)))?;
                write_file(&dir.join(&it.path), v)?;
            }
        }
    }
    Ok(())
}

pub async fn config_map(
    client: &Client,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    match Api::<ConfigMap>::namespaced(client.clone(), ns).get_opt(name).await? {
        Some(cm) => Ok(cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect()),
        None if optional => Ok(BTreeMap::new()),
        None => Err(Error::Invalid(format!("configmap {ns}/{name} not found"))),
    }
}

pub async fn secret(client: &Client, ns: &str, name: &str, optional: bool) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    match Api::<Secret>::namespaced(client.clone(), ns).get_opt(name).await? {
        Some(s) => {
            let mut d: BTreeMap<String, Vec<u8>> =
                s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
            d.extend(s.string_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())));
            Ok(d)
        }
        None if optional => Ok(BTreeMap::new()),
        None => Err(Error::Invalid(format!("secret {ns}/{name} not found"))),
    }
}

/// A token for the pod's ServiceAccount, bound to the pod (invalid once the pod is gone).
async fn token(client: &Client, pod: &Pod, audience: Option<String>, expiration: i64) -> Result<String, Error> {
    let ns = pod.namespace().unwrap_or_default();
    let sa = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
    let req: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": audience.into_iter().collect::<Vec<_>>(), "expirationSeconds": expiration,
                 "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.name_any(), "uid": pod.uid()}},
    }))?;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let got: TokenRequest = sas.create_subresource("token", &sa, &PostParams::default(), &req).await?;
    got.status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::Invalid(format!("TokenRequest for {ns}/{sa} returned no token")))
}

/// The directory behind a claim: the hostPath of its bound PersistentVolume.
async fn claim_dir(client: &Client, ns: &str, claim: &str) -> Result<PathBuf, Error> {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get_opt(claim)
        .await?
        .ok_or_else(|| Error::Invalid(format!("claim {ns}/{claim} not found")))?;
    let pv_name = pvc
        .spec
        .and_then(|s| s.volume_name)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::Invalid(format!("claim {ns}/{claim} is not bound yet")))?;
    let pv = Api::<PersistentVolume>::all(client.clone()).get(&pv_name).await?;
    let path = pv.spec.and_then(|s| s.host_path).map(|h| h.path).ok_or_else(|| {
        Error::Unsupported(format!("volume {pv_name} of claim {ns}/{claim} is not a hostPath volume"))
    })?;
    std::fs::create_dir_all(&path)?;
    Ok(PathBuf::from(path))
}

/// A PersistentVolume for a pending claim: one directory under `root`, pre-bound to the
/// claim (the PV controller completes the binding). Retain, because no deleter runs here;
/// [`release`] removes released ones.
pub fn volume_for(pvc: &PersistentVolumeClaim, node: &str, root: &Path) -> Option<PersistentVolume> {
    let spec = pvc.spec.as_ref()?;
    if spec.volume_name.as_deref().is_some_and(|n| !n.is_empty()) {
        return None;
    }
    let uid = pvc.uid()?;
    let ns = pvc.namespace()?;
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_else(|| "1Gi".into());
    let dir = root.join(&ns).join(format!("{}-{}", pvc.name_any(), &uid[..8.min(uid.len())]));
    let v = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": format!("harness-{uid}"), "labels": {PV_LABEL: node}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.access_modes.clone().unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": spec.storage_class_name.clone().unwrap_or_default(),
            "volumeMode": "Filesystem",
            "hostPath": {"path": dir.display().to_string(), "type": "DirectoryOrCreate"},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": pvc.name_any(), "uid": uid},
        },
    });
    serde_json::from_value(v).ok()
}

/// The directory of a released harness volume, if `pv` is one.
pub fn released_dir(pv: &PersistentVolume, node: &str) -> Option<PathBuf> {
    let ours = pv.labels().get(PV_LABEL).is_some_and(|n| n == node);
    let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
    if !(ours && released) {
        return None;
    }
    pv.spec.as_ref()?.host_path.as_ref().map(|h| PathBuf::from(&h.path))
}
