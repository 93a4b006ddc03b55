//! Playing kubelet and the Job controller for the operator's own Jobs and pods: their
//! container arguments run as local processes, with pod paths and cluster addresses mapped to
//! this machine, and a Job completed with the report its worker wrote.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, Pod};
use kim_testkit::{free_port, repo, Cluster, Proc, Profile};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

pub fn worker_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_kim-operator")).with_file_name("kim-worker");
    assert!(p.exists(), "{} missing: cargo build --release -p kim-worker", p.display());
    p
}

/// A container's arguments with the pod's mounts mapped onto `root`, its HTTP port onto
/// `http`, and each cluster address `(from, to)` of `names` replaced.
pub fn local_args(c: &Container, root: &Path, http: u16, names: &[(String, String)]) -> Vec<String> {
    let root = root.to_str().unwrap();
    c.args
        .clone()
        .unwrap()
        .into_iter()
        .map(|a| match a.as_str() {
            "/dev/termination-log" => format!("{root}/termination-{}", free_port()),
            "0.0.0.0:8080" => format!("127.0.0.1:{http}"),
            _ => names.iter().fold(a.replacen("/storage", root, 1), |a, (from, to)| a.replace(from, to)),
        })
        .collect()
}

/// Runs a Job's container arguments to completion, then records its pod (with the report as
/// the termination message) and completes the Job, as kubelet and the Job controller would.
/// Returns the report.
pub async fn run_job(client: &Client, ns: &str, root: &Path, job: &Job, names: &[(String, String)]) -> String {
    let name = job.name_any();
    let c = &job.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
    let args = local_args(c, root, free_port(), names);
    let out = Command::new(worker_bin()).args(&args).env("KIM_LOG", "warn").output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let at = args.iter().position(|a| a == "--termination-message-path").unwrap();
    let report = std::fs::read_to_string(&args[at + 1]).unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let container = c.name.clone();
    let pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{name}-x"), "labels": {"batch.kubernetes.io/job-name": name}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": container, "image": "kim-worker:test"}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let terminated = json!({"exitCode": 0, "message": report, "startedAt": now, "finishedAt": now});
    let st = json!({"status": {"phase": "Succeeded", "containerStatuses": [{"name": container, "image": "kim-worker:test",
        "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": terminated}}]}});
    pods.patch_status(&format!("{name}-x"), &PatchParams::default(), &Patch::Merge(&st)).await.unwrap();
    let cond = |t: &str| json!({"type": t, "status": "True", "reason": "CompletionsReached", "lastProbeTime": now, "lastTransitionTime": now});
    let st = json!({"status": {"startTime": now, "completionTime": now, "succeeded": 1, "active": 0, "ready": 0,
        "terminating": 0, "conditions": [cond("SuccessCriteriaMet"), cond("Complete")]}});
    Api::<Job>::namespaced(client.clone(), ns)
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&st))
        .await
        .unwrap();
    report
}

/// A control plane with kim's CRDs and namespace `ns`, and the operator running against it.
pub async fn cluster_with_operator(ns: &str) -> (Cluster, Client, Proc) {
    let c = Cluster::up(Profile::Core);
    let client = c.client().await;
    c.kubectl(&["apply", "-f", repo().join("crds").to_str().unwrap()]);
    c.wait_crds();
    c.namespace(ns);
    let http = free_port();
    let mut op = Command::new(env!("CARGO_BIN_EXE_kim-operator"));
    op.args(["--http", &format!("127.0.0.1:{http}"), "--identity", "op-1", "--lease-duration", "3s"])
        .env("KUBECONFIG", &c.kubeconfig)
        .env("KIM_WORKER_IMAGE", "kim-worker:test")
        .env("KIM_LOG", "info,kube=warn");
    let op = Proc::spawn("operator", &mut op, c.dir.path());
    (c, client, op)
}
