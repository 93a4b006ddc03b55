//! Deleting a MatchingIndex against a real kube-apiserver with the real operator binary:
//! `deletionPolicy` Delete and Retain do what the CleanedUp Event says, and a finalizer that
//! cannot reach Redis (its Secret is gone) says so once, names the way out, gives the Redis step
//! up after `--cleanup-timeout` and still removes the files and the agents' claims.

#[allow(dead_code, unused_imports)]
#[path = "chart/support.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{eventually, free_port, Cluster, Proc, Profile, Redis};

fn operator(c: &Cluster, cleanup_timeout: &str) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kim-operator"));
    cmd.args(["--http", &format!("127.0.0.1:{}", free_port()), "--identity", "t", "--lease-duration", "3s"])
        .args(["--cleanup-timeout", cleanup_timeout])
        .env("KUBECONFIG", &c.kubeconfig)
        .env("KIM_WORKER_IMAGE", "kim-worker:test")
        .env("KIM_LOG", "info,kube=warn");
    Proc::spawn("operator", &mut cmd, c.dir.path())
}

fn setup(ns: &str) -> Cluster {
    let c = Cluster::up(Profile::Core);
    c.kubectl(&["apply", "--server-side", "-f", "crds/"]);
    c.wait_crds();
    c.kubectl(&["create", "namespace", ns]);
    let ix = format!(
        "apiVersion: kim.dev/v1alpha1\nkind: Indexer\nmetadata: {{name: pool, namespace: {ns}}}\nspec:\n  storage: {{size: 1Gi}}\n"
    );
    c.ok("kubectl", &["apply", "-f", "-"], Some(&ix));
    c
}

fn apply_mi(c: &Cluster, ns: &str, name: &str, redis: &str, policy: &str) {
    let mi = format!(
        "apiVersion: kim.dev/v1alpha1\nkind: MatchingIndex\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  indexerRef: {{name: pool}}\n  descriptor: {{version: 59, dimensions: 8, encoding: u8, metric: cosine}}\n  source: {{path: data/base.npy}}\n  redis: {redis}\n  deletionPolicy: {policy}\n"
    );
    c.ok("kubectl", &["apply", "-f", "-"], Some(&mi));
    eventually(30, "finalizer added", || {
        let mi = c.get(&["mi", name, "-n", ns])?;
        (mi["metadata"]["finalizers"] == json!(["kim.dev/cleanup"])).then_some(())
    });
}

/// A claim as a StatefulSet's volumeClaimTemplate would create it for agent 0.
fn agent_claim(c: &Cluster, ns: &str, mi: &str) -> String {
    let name = format!("data-{mi}-agent-0");
    let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": ns, "labels": {"kim.dev/matching-index": mi, "kim.dev/component": "agent"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
    c.ok("kubectl", &["apply", "-f", "-"], Some(&pvc.to_string()));
    name
}

/// Plays the Job controller: the cleanup Job completed.
fn complete_job(c: &Cluster, ns: &str, job: &str) {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let cond = |t: &str| json!({"type": t, "status": "True", "reason": "CompletionsReached", "message": "done", "lastProbeTime": now, "lastTransitionTime": now});
    let status = json!({"status": {"startTime": now, "completionTime": now, "succeeded": 1, "active": 0, "ready": 0, "terminating": 0,
        "conditions": [cond("SuccessCriteriaMet"), cond("Complete")]}});
    c.kubectl(&["patch", "job", job, "-n", ns, "--subresource=status", "--type=merge", "-p", &status.to_string()]);
}

fn events(c: &Cluster, ns: &str, reason: &str) -> Vec<Value> {
    let all = c.get(&["events", "-n", ns, "--field-selector", &format!("reason={reason}")]).unwrap();
    all["items"].as_array().unwrap().clone()
}

/// A claim is gone or on its way (no controller-manager here removes its protection finalizer).
fn deleted(c: &Cluster, kind: &str, ns: &str, name: &str) -> bool {
    c.get(&[kind, name, "-n", ns]).is_none_or(|o| !o["metadata"]["deletionTimestamp"].is_null())
}

#[test]
fn a_gone_secret_blocks_once_then_the_redis_step_is_given_up_and_files_still_go() {
    let ns = "del";
    let c = setup(ns);
    let _op = operator(&c, "8s");
    apply_mi(&c, ns, "faces", "{secretRef: {name: gone-redis}}", "Delete");
    let claim = agent_claim(&c, ns, "faces");
    let t = Instant::now();
    c.kubectl(&["delete", "mi", "faces", "-n", ns, "--wait=false"]);

    // The condition says what is wrong and the way out.
    let cond = eventually(30, "CleanupBlocked", || {
        let mi = c.get(&["mi", "faces", "-n", ns])?;
        mi["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "CleanupBlocked").cloned()
    });
    assert_eq!(
        (cond["status"].as_str(), cond["reason"].as_str()),
        (Some("True"), Some("RedisSecretMissing")),
        "{cond}"
    );
    let msg = cond["message"].as_str().unwrap();
    for want in
        ["Secret del/gone-redis is gone", "restore Secret del/gone-redis", "kim.dev/skip-cleanup=true", "given up"]
    {
        assert!(msg.contains(want), "condition message lacks {want:?}: {msg}");
    }
    // The files step runs meanwhile; the test completes its Job as the Job controller would.
    eventually(30, "cleanup Job", || c.get(&["job", "faces-cleanup", "-n", ns]));
    complete_job(&c, ns, "faces-cleanup");
    eventually(40, "MatchingIndex released", || c.get(&["mi", "faces", "-n", ns]).is_none().then_some(()));
    let took = t.elapsed();
    assert!(took >= Duration::from_secs(8), "released before the Redis step was given up: {took:?}");
    assert!(took < Duration::from_secs(30), "give-up took {took:?}");

    let blocked = events(&c, ns, "CleanupBlocked");
    assert_eq!(blocked.len(), 1, "one Warning per cause: {blocked:?}");
    assert_eq!(blocked[0]["type"], "Warning");
    assert!(blocked[0]["count"].as_i64().unwrap_or(1) <= 1, "repeated: {}", blocked[0]);
    let incomplete = events(&c, ns, "CleanupIncomplete");
    assert_eq!(incomplete.len(), 1, "{incomplete:?}");
    let note = incomplete[0]["message"].as_str().unwrap();
    for want in [
        "removed the index files del/faces on claim pool-storage",
        "deleted the agent claims data-faces-agent-0",
        "gave up the Redis step",
        "stream faces",
    ] {
        assert!(note.contains(want), "CleanupIncomplete lacks {want:?}: {note}");
    }
    assert!(events(&c, ns, "CleanedUp").is_empty(), "CleanedUp would claim everything was removed");
    assert!(deleted(&c, "pvc", ns, &claim), "agent claim kept");
    assert!(c.get(&["job", "faces-cleanup", "-n", ns]).is_none(), "cleanup Job left behind");
    eprintln!("deletion with a gone Secret released after {took:?}");
}

#[test]
fn retain_keeps_keys_files_and_claims_and_delete_removes_them() {
    let ns = "keep";
    let c = setup(ns);
    let redis = Redis::start(c.dir.path());
    let port = redis.port;
    let url = format!("{{url: \"redis://127.0.0.1:{port}\"}}");
    let mut r = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap().get_connection().unwrap();
    for label in ["kept", "dropped"] {
        let _: () = redis::cmd("SET").arg(kim_api::registry_key("", label, "m1")).arg("{}").query(&mut r).unwrap();
        let _: String = redis::cmd("XADD").arg(label).arg("*").arg("k").arg("v").query(&mut r).unwrap();
        let _: () = redis::cmd("HSET").arg(kim_api::served_key("", label)).arg("m1").arg("{}").query(&mut r).unwrap();
    }
    let exist = |r: &mut redis::Connection, label: &str| -> i64 {
        let keys = [label.to_string(), kim_api::registry_key("", label, "m1"), kim_api::served_key("", label)];
        redis::cmd("EXISTS").arg(&keys).query(r).unwrap()
    };
    let _op = operator(&c, "2m");
    apply_mi(&c, ns, "kept", &url, "Retain");
    apply_mi(&c, ns, "dropped", &url, "Delete");
    let kept_claim = agent_claim(&c, ns, "kept");
    let dropped_claim = agent_claim(&c, ns, "dropped");

    // Retain: released at once, no cleanup Job, keys and claim stay, the Event says so.
    c.kubectl(&["delete", "mi", "kept", "-n", ns, "--wait=false"]);
    eventually(30, "kept released", || c.get(&["mi", "kept", "-n", ns]).is_none().then_some(()));
    assert!(c.get(&["job", "kept-cleanup", "-n", ns]).is_none(), "Retain ran the cleanup Job");
    assert_eq!(exist(&mut r, "kept"), 3, "Retain removed Redis keys");
    assert!(!deleted(&c, "pvc", ns, &kept_claim), "Retain deleted the agent claim");
    let ev = events(&c, ns, "CleanedUp");
    let note = ev.iter().find_map(|e| e["message"].as_str().filter(|m| m.contains("label kept"))).unwrap();
    for want in [
        "kept (by deletionPolicy Retain) Redis stream kept",
        "the index files keep/kept on claim pool-storage",
        "the agent claims data-kept-agent-0",
    ] {
        assert!(note.contains(want), "CleanedUp lacks {want:?}: {note}");
    }

    // Delete: files (cleanup Job), keys and claim go, and the Event lists each.
    c.kubectl(&["delete", "mi", "dropped", "-n", ns, "--wait=false"]);
    eventually(30, "cleanup Job", || c.get(&["job", "dropped-cleanup", "-n", ns]));
    complete_job(&c, ns, "dropped-cleanup");
    eventually(30, "dropped released", || c.get(&["mi", "dropped", "-n", ns]).is_none().then_some(()));
    assert_eq!(exist(&mut r, "dropped"), 0, "Delete left Redis keys");
    assert!(deleted(&c, "pvc", ns, &dropped_claim), "Delete kept the agent claim");
    let ev = events(&c, ns, "CleanedUp");
    let note = ev.iter().find_map(|e| e["message"].as_str().filter(|m| m.contains("label dropped"))).unwrap();
    for want in [
        "removed Redis stream dropped and keys",
        "removed the index files keep/dropped on claim pool-storage",
        "deleted the agent claims data-dropped-agent-0",
    ] {
        assert!(note.contains(want), "CleanedUp lacks {want:?}: {note}");
    }
    assert!(events(&c, ns, "CleanupIncomplete").is_empty());
}
