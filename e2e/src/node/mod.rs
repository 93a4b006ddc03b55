//! The node harness: one Node, not managed by kwok, whose pods run as local processes.
//!
//! kwok in e2e/cluster.sh only manages nodes annotated `kwok.x-k8s.io/node=fake`, so it never
//! touches this node or its pods. The harness keeps the Node Ready with a status heartbeat,
//! provisions a hostPath PersistentVolume (a directory) for every pending claim, and runs
//! each pod bound to the node in its own task ([`pod`]). All waits are bounded; every process
//! is killed when the harness shuts down or is dropped.

pub mod launch;
mod pod;
mod process;
mod status;
mod volumes;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use launch::Image;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the harness does not support {0}")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
}

/// What a pod task is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    Run,
    /// The pod is being deleted: stop with its grace period, then remove it (grace 0).
    Delete,
    /// The harness is going away: kill at once, leave the API object alone.
    Shutdown,
}

/// Settings of the harness.
#[derive(Clone, Debug)]
pub struct Config {
    /// Name of the Node the harness plays.
    pub node: String,
    /// Volumes, pod directories and container logs (`logs/<ns>_<pod>_<container>.log`).
    pub root: PathBuf,
    /// Images the harness can run, by name.
    pub images: Vec<Image>,
    /// API server URL and base64 CA bundle written into pods' kubeconfigs.
    pub server: String,
    pub ca_data: String,
}

/// State shared by the harness tasks.
pub(crate) struct Shared {
    client: Client,
    root: PathBuf,
    images: Vec<Image>,
    server: String,
    ca_data: String,
    enforce_read_only: bool,
    /// Process groups alive right now, killed on drop of the harness.
    live: Mutex<BTreeSet<u32>>,
}

impl Shared {
    fn remember(&self, pid: u32) {
        self.live.lock().unwrap().insert(pid);
    }
    fn forget(&self, pid: u32) {
        self.live.lock().unwrap().remove(&pid);
    }
    /// A kubeconfig that authenticates with `token` (a ServiceAccount token).
    fn kubeconfig_for(&self, ns: &str, token: &str) -> String {
        let kc = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "kim", "cluster": {"server": self.server, "certificate-authority-data": self.ca_data}}],
            "users": [{"name": "pod", "user": {"token": token}}],
            "contexts": [{"name": "pod", "context": {"cluster": "kim", "user": "pod", "namespace": ns}}],
            "current-context": "pod",
        });
        serde_yaml::to_string(&kc).expect("kubeconfig serialises")
    }
}

/// Pod tasks by pod uid: how to stop each, and its handle.
type Pods = Arc<Mutex<HashMap<String, (watch::Sender<Stop>, JoinHandle<()>)>>>;

/// A running harness; [`Harness::shutdown`] (or drop) stops everything it started.
pub struct Harness {
    shared: Arc<Shared>,
    node: String,
    tasks: Vec<JoinHandle<()>>,
    pods: Pods,
}

impl Harness {
    /// Registers the Node, waits until the API server shows it Ready, and starts serving pods.
    pub async fn start(client: Client, cfg: Config) -> Result<Harness, Error> {
        for d in ["pods", "logs", "volumes"] {
            std::fs::create_dir_all(cfg.root.join(d))?;
        }
        let enforce_read_only = process::can_enforce_read_only(&cfg.root);
        tracing::info!(node = %cfg.node, enforce_read_only, "node harness starting");
        let shared = Arc::new(Shared {
            client: client.clone(),
            root: cfg.root.clone(),
            images: cfg.images.clone(),
            server: cfg.server.clone(),
            ca_data: cfg.ca_data.clone(),
            enforce_read_only,
            live: Mutex::new(BTreeSet::new()),
        });
        register(&client, &cfg.node).await?;
        let pods = Arc::new(Mutex::new(HashMap::new()));
        let tasks = vec![
            tokio::spawn(heartbeat(client.clone(), cfg.node.clone())),
            tokio::spawn(provision(client.clone(), cfg.node.clone(), cfg.root.join("volumes"))),
            tokio::spawn(release(client.clone(), cfg.node.clone())),
            tokio::spawn(serve_pods(shared.clone(), cfg.node.clone(), pods.clone())),
        ];
        Ok(Harness { shared, node: cfg.node, tasks, pods })
    }

    /// Whether processes see read-only volumes read-only (needs mount namespaces).
    pub fn enforces_read_only(&self) -> bool {
        self.shared.enforce_read_only
    }

    /// Kills every process, stops the tasks and removes the Node. Bounded by `timeout`.
    pub async fn shutdown(mut self, timeout: Duration) {
        for t in &self.tasks {
            t.abort();
        }
        let running: Vec<_> = self.pods.lock().unwrap().drain().map(|(_, v)| v).collect();
        for (tx, _) in &running {
            let _ = tx.send(Stop::Shutdown);
        }
        let joins = futures::future::join_all(running.into_iter().map(|(_, h)| h));
        let _ = tokio::time::timeout(timeout, joins).await;
        let nodes: Api<Node> = Api::all(self.shared.client.clone());
        let _ = tokio::time::timeout(timeout, nodes.delete(&self.node, &DeleteParams::default())).await;
        self.kill_all();
    }

    fn kill_all(&mut self) {
        let pids: Vec<u32> = std::mem::take(&mut *self.shared.live.lock().unwrap()).into_iter().collect();
        for pid in pids {
            process::signal_group(pid, libc::SIGKILL);
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for (_, (tx, h)) in self.pods.lock().unwrap().drain() {
            let _ = tx.send(Stop::Shutdown);
            h.abort();
        }
        self.kill_all();
    }
}

fn node_status() -> serde_json::Value {
    let now = status::now();
    let cond = |t: &str, s: &str, reason: &str| json!({"type": t, "status": s, "reason": reason, "message": reason, "lastHeartbeatTime": now, "lastTransitionTime": now});
    json!({"status": {
        "conditions": [
            cond("Ready", "True", "KubeletReady"),
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID"),
        ],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": "localhost"}],
        "capacity": {"cpu": "64", "memory": "256Gi", "pods": "110"},
        "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110"},
        "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "kim-harness", "kubeProxyVersion": "",
            "containerRuntimeVersion": "kim-harness://processes", "kernelVersion": "", "osImage": "", "machineID": "", "systemUUID": "", "bootID": ""},
    }})
}

async fn register(client: &Client, name: &str) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", "kim.dev/harness": "true"}},
    }))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(&node_status())).await?;
    Ok(())
}

/// Refreshes the Ready condition well within the node monitor's grace period.
async fn heartbeat(client: Client, name: String) {
    let nodes: Api<Node> = Api::all(client);
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        if let Err(e) = nodes.patch_status(&name, &PatchParams::default(), &Patch::Merge(&node_status())).await {
            tracing::warn!(node = %name, error = %e, "node heartbeat failed");
        }
    }
}

/// Creates a PersistentVolume (one directory) for each claim that has none.
async fn provision(client: Client, node: String, root: PathBuf) {
    let pvcs: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let pvs: Api<PersistentVolume> = Api::all(client);
    let mut events = watcher(pvcs, watcher::Config::default()).default_backoff().applied_objects().boxed();
    while let Some(ev) = events.next().await {
        let Ok(pvc) = ev else { continue };
        let Some(pv) = volumes::volume_for(&pvc, &node, &root) else { continue };
        match pvs.create(&PostParams::default(), &pv).await {
            Ok(_) => {
                tracing::info!(claim = %format!("{}/{}", pvc.namespace().unwrap_or_default(), pvc.name_any()), volume = %pv.name_any(), "provisioned")
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => tracing::warn!(error = %e, "provisioning a volume failed"),
        }
    }
}

/// Deletes released harness volumes and their directories (reclaim policy Retain).
async fn release(client: Client, node: String) {
    let pvs: Api<PersistentVolume> = Api::all(client);
    let mut events = watcher(pvs.clone(), watcher::Config::default()).default_backoff().applied_objects().boxed();
    while let Some(ev) = events.next().await {
        let Ok(pv) = ev else { continue };
        let Some(dir) = volumes::released_dir(&pv, &node) else { continue };
        if pvs.delete(&pv.name_any(), &DeleteParams::default()).await.is_ok() {
            let _ = std::fs::remove_dir_all(&dir);
            tracing::info!(volume = %pv.name_any(), "released volume deleted");
        }
    }
}

/// Starts a task per pod bound to the node; tells it when its pod is deleted.
async fn serve_pods(sh: Arc<Shared>, node: String, pods: Pods) {
    let api: Api<Pod> = Api::all(sh.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher(api.clone(), cfg).default_backoff().boxed();
    while let Some(ev) = events.next().await {
        let (pod, gone) = match ev {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => (p, false),
            Ok(watcher::Event::Delete(p)) => (p, true),
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "pod watch interrupted");
                continue;
            }
        };
        let uid = pod.uid().unwrap_or_default();
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let mut map = pods.lock().unwrap();
        map.retain(|_, (_, h)| !h.is_finished());
        if gone || deleting {
            match map.get(&uid) {
                Some((tx, _)) => {
                    let _ = tx.send(if gone { Stop::Shutdown } else { Stop::Delete });
                }
                // Never started (or finished before the harness came up): finish the deletion.
                None if deleting && !gone => {
                    let api = Api::<Pod>::namespaced(sh.client.clone(), &pod.namespace().unwrap_or_default());
                    let name = pod.name_any();
                    tokio::spawn(async move {
                        let _ = api
                            .delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() })
                            .await;
                    });
                }
                None => {}
            }
            continue;
        }
        let terminal = matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
        if map.contains_key(&uid) || terminal {
            continue;
        }
        let (tx, rx) = watch::channel(Stop::Run);
        let h = tokio::spawn(pod::run(sh.clone(), pod, rx));
        map.insert(uid, (tx, h));
    }
}
