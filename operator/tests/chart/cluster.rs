//! Against etcd + kube-apiserver (core tier): the rendered chart, the kustomize base and the
//! samples pass server-side dry runs; `helm install` works; the operator does a build, a
//! rollout and a full cleanup authenticated as the chart's ServiceAccount, in cluster mode and
//! in namespaced mode.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::support::{docs, eventually, free_port, ok, render, text, Cluster, Proc, Profile, Redis};

/// `kubectl apply --dry-run=server` of a YAML stream; returns how many objects it accepted.
fn dry_run(c: &Cluster, yaml: &str, ns: Option<&str>) -> usize {
    let mut args = vec!["apply", "--dry-run=server", "-f", "-"];
    if let Some(n) = ns {
        args.extend(["-n", n]);
    }
    let out = c.ok("kubectl", &args, Some(yaml));
    out.lines().filter(|l| l.ends_with("(server dry run)")).count()
}

#[test]
fn chart_base_and_samples_pass_server_side_dry_run() {
    let c = Cluster::up(Profile::Core);
    c.kubectl(&["create", "namespace", "kim-system"]);
    c.kubectl(&["create", "namespace", "team"]);

    for set in [
        vec!["--set", "redis.deploy=true"],
        vec!["--set", "watchNamespace=team", "--set", "replicaCount=2", "--set", "redis.url=redis://r:6379"],
    ] {
        let mut args = vec!["--include-crds"];
        args.extend_from_slice(&set);
        let yaml = render(&args);
        assert_eq!(dry_run(&c, &yaml, None), docs(&yaml).len(), "{set:?}");
    }
    let base = ok("kubectl", &["kustomize", "deploy/base"]);
    assert_eq!(dry_run(&c, &base, None), docs(&base).len());

    // A real install: CRDs from crds/, then the templates; NOTES tell what to do next.
    let out = c.ok(
        "helm",
        &["install", "kim", "charts/kim", "-n", "kim-system", "--set", "redis.url=redis://127.0.0.1:6379"],
        None,
    );
    assert!(out.contains("STATUS: deployed"), "{out}");
    assert!(out.contains("kubectl -n kim-system apply -f deploy/samples/"), "NOTES: {out}");
    assert!(out.contains("redis: {secretRef: {name: kim-redis, key: url}}"), "NOTES: {out}");
    c.wait_crds();
    let samples = std::fs::read_dir(crate::support::repo().join("deploy/samples"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "yaml"))
        .count();
    let out = c.ok("kubectl", &["apply", "--dry-run=server", "-n", "kim-system", "-f", "deploy/samples/"], None);
    assert_eq!(out.lines().filter(|l| l.ends_with("(server dry run)")).count(), samples, "{out}");
    // The schema still guards the samples' CRs: a broken copy is refused by the API server.
    let bad = std::fs::read_to_string(crate::support::repo().join("deploy/samples/03-matchingindex.yaml"))
        .unwrap()
        .replace("efSearch: 64", "efSearch: 0");
    let out = c.run("kubectl", &["apply", "--dry-run=server", "-n", "kim-system", "-f", "-"], Some(&bad));
    assert!(!out.status.success() && text(&out).contains("hnsw.efSearch must be 1..4096"), "{}", text(&out));

    // Uninstall removes the release's objects but keeps the CRDs (and so every MatchingIndex).
    // No Job controller runs in this tier, so the post-delete hook Job could never finish: the
    // full e2e tier runs it.
    c.ok("helm", &["uninstall", "kim", "-n", "kim-system", "--wait", "--no-hooks"], None);
    assert!(c.get(&["deployment", "kim-operator", "-n", "kim-system"]).is_none());
    assert!(c.get(&["clusterrole", "kim-operator"]).is_none());
    assert!(c.get(&["crd", "matchingindexes.kim.dev"]).is_some());
}

fn redis_cli(port: u16, args: &[&str]) -> Result<String, String> {
    let out =
        Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(text(&out))
    }
}

/// The real operator binary authenticated only by `kubeconfig`, logging to `dir/operator.log`.
fn operator(kubeconfig: &Path, dir: &Path, watch: Option<&str>) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kim-operator"));
    cmd.args(["--http", &format!("127.0.0.1:{}", free_port()), "--identity", "op-0", "--lease-duration", "3s"])
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAMESPACE", "kim-system")
        .env("KIM_WORKER_IMAGE", "kim-worker:test")
        .env("KIM_LOG", "info,kube=warn")
        .env_remove("KIM_WATCH_NAMESPACE");
    if let Some(ns) = watch {
        cmd.env("KIM_WATCH_NAMESPACE", ns);
    }
    Proc::spawn("operator", &mut cmd, dir)
}

fn can_i(c: &Cluster, verb: &str, what: &str, ns: &str) -> bool {
    let out = c.run(
        "kubectl",
        &["auth", "can-i", verb, what, "-n", ns, "--as", "system:serviceaccount:kim-system:kim-operator"],
        None,
    );
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

fn build_job(c: &Cluster, ns: &str) -> Option<String> {
    let list = c.get(&["jobs", "-n", ns, "-l", "kim.dev/matching-index=faces,kim.dev/component=build"])?;
    list["items"].as_array()?.first().map(|j| j["metadata"]["name"].as_str().unwrap().to_string())
}

/// Plays kubelet and Job controller (none run in the core tier): a terminated pod carrying the
/// worker's result line, then the Job's completion conditions.
fn complete_job(c: &Cluster, ns: &str, job: &str, message: &Value) {
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{job}-p"), "namespace": ns, "labels": {"batch.kubernetes.io/job-name": job}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "w", "image": "kim-worker:test"}]}});
    c.ok("kubectl", &["create", "-f", "-"], Some(&pod.to_string()));
    let now = "2026-01-01T00:00:00Z";
    let st = json!({"status": {"phase": "Succeeded", "containerStatuses": [{"name": "w", "image": "kim-worker:test", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": 0, "message": message.to_string(), "startedAt": now, "finishedAt": now}}}]}});
    c.kubectl(&[
        "patch",
        "pod",
        &format!("{job}-p"),
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        &st.to_string(),
    ]);
    let cond = |t: &str| json!({"type": t, "status": "True", "reason": "CompletionsReached", "message": "done", "lastProbeTime": now, "lastTransitionTime": now});
    let st = json!({"status": {"startTime": now, "completionTime": now, "succeeded": 1, "active": 0, "ready": 0, "terminating": 0,
        "conditions": [cond("SuccessCriteriaMet"), cond("Complete")]}});
    c.kubectl(&["patch", "job", job, "-n", ns, "--subresource=status", "--type=merge", "-p", &st.to_string()]);
}

fn forbidden(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("forbidden") || l.contains("Forbidden"))
        .map(str::to_string)
        .collect()
}

fn events(c: &Cluster, ns: &str) -> Vec<String> {
    let list = c.get(&["events.v1.events.k8s.io", "-n", ns]).unwrap();
    list["items"].as_array().unwrap().iter().map(|e| e["reason"].as_str().unwrap_or("").to_string()).collect()
}

#[test]
fn operator_works_under_the_chart_rbac_in_cluster_mode() {
    let c = Cluster::up(Profile::Core);
    let redis = Redis::start(c.dir.path());
    let port = redis.port;
    c.kubectl(&["create", "namespace", "kim-system"]);
    // No controller-manager in the core tier: the pods this test creates need the default SA.
    c.kubectl(&["create", "serviceaccount", "default", "-n", "kim-system"]);
    let url = format!("redis://127.0.0.1:{port}");
    c.ok("helm", &["install", "kim", "charts/kim", "-n", "kim-system", "--set", &format!("redis.url={url}")], None);
    c.wait_crds();

    // What the ServiceAccount may and may not do.
    for (verb, what, ns, want) in [
        ("create", "jobs.batch", "anywhere", true),
        ("delete", "deployments.apps", "x", true),
        ("deletecollection", "deployments.apps", "x", false),
        ("patch", "matchingindexes.kim.dev/status", "x", true),
        ("get", "secrets", "x", true),
        ("list", "secrets", "x", false),
        ("delete", "pods", "x", false),
        ("create", "pods", "x", false),
        ("update", "leases/kim-operator", "kim-system", true),
        ("update", "leases/other", "kim-system", false),
        ("create", "leases", "x", false),
        ("delete", "matchingindexes.kim.dev", "x", false),
        ("create", "events.events.k8s.io", "x", true),
    ] {
        assert_eq!(can_i(&c, verb, what, ns), want, "can-i {verb} {what} -n {ns}");
    }

    let kc = c.service_account_kubeconfig("kim-system", "kim-operator");
    let _op = operator(&kc, c.dir.path(), None);
    eventually(30, "op-0 holds the Lease", || {
        let l = c.get(&["lease", "kim-operator", "-n", "kim-system"])?;
        (l["spec"]["holderIdentity"] == "op-0").then_some(())
    });

    c.kubectl(&["apply", "-n", "kim-system", "-f", "deploy/samples/"]);
    let job = eventually(60, "the build Job", || build_job(&c, "kim-system"));
    eventually(30, "Indexer status", || {
        let ix = c.get(&["indexer", "kim-sample", "-n", "kim-system"])?;
        (ix["status"]["storageClaim"] == "kim-sample").then_some(())
    });
    complete_job(
        &c,
        "kim-system",
        &job,
        &json!({"snapshot": "s-1", "label": "faces", "namespace": "kim-system", "vectors": 2000, "buildSeconds": 0.5, "createdAt": "2026-01-01T00:00:00Z"}),
    );
    eventually(60, "snapshot in status and matcher Deployment", || {
        let mi = c.get(&["matchingindex", "faces", "-n", "kim-system"])?;
        let d = c.get(&["deployment", "faces-matcher", "-n", "kim-system"])?;
        (mi["status"]["currentSnapshot"]["vectors"] == 2000).then_some(d)
    });
    eventually(30, "Events recorded", || {
        let e = events(&c, "kim-system");
        (e.iter().any(|r| r == "BuildStarted") && e.iter().any(|r| r == "BuildSucceeded")).then_some(())
    });

    // Deletion: children, the Redis keys (URL read from the chart's Secret), the cleanup Job.
    let stream = kim_api::stream_key("", "faces");
    let reg = kim_api::registry_key("", "faces", "m-1");
    redis_cli(port, &["XADD", &stream, "*", "k", "v"]).unwrap();
    redis_cli(port, &["SET", &reg, "1"]).unwrap();
    c.kubectl(&["delete", "matchingindex", "faces", "-n", "kim-system", "--wait=false"]);
    eventually(60, "cleanup Job", || c.get(&["job", "faces-cleanup", "-n", "kim-system"]));
    assert_eq!(redis_cli(port, &["EXISTS", &stream, &reg]).unwrap(), "0", "Redis keys of the label removed");
    complete_job(&c, "kim-system", "faces-cleanup", &json!({}));
    eventually(60, "MatchingIndex released", || {
        c.get(&["matchingindex", "faces", "-n", "kim-system"]).is_none().then_some(())
    });
    assert!(c.get(&["deployment", "faces-matcher", "-n", "kim-system"]).is_none(), "matcher Deployment deleted");
    let jobs = c.get(&["jobs", "-n", "kim-system", "-l", "kim.dev/matching-index=faces"]).unwrap();
    assert_eq!(jobs["items"].as_array().unwrap().len(), 0, "build and cleanup Jobs deleted");
    let denied = forbidden(&c.dir.path().join("operator.log"));
    assert!(denied.is_empty(), "the operator was denied something under the chart's RBAC:\n{}", denied.join("\n"));
}

#[test]
fn operator_works_under_the_chart_rbac_in_namespaced_mode() {
    let c = Cluster::up(Profile::Core);
    for ns in ["kim-system", "team", "other"] {
        c.kubectl(&["create", "namespace", ns]);
    }
    c.ok(
        "helm",
        &[
            "install",
            "kim",
            "charts/kim",
            "-n",
            "kim-system",
            "--set",
            "watchNamespace=team",
            "--set",
            "redis.url=redis://127.0.0.1:1",
        ],
        None,
    );
    c.wait_crds();
    assert!(can_i(&c, "create", "jobs.batch", "team",));
    assert!(!can_i(&c, "list", "jobs.batch", "other"), "nothing outside the watched namespace");
    assert!(!can_i(&c, "list", "matchingindexes.kim.dev", "kim-system"));
    assert!(c.get(&["clusterrole", "kim-operator"]).is_none());

    let kc = c.service_account_kubeconfig("kim-system", "kim-operator");
    let _op = operator(&kc, c.dir.path(), Some("team"));
    c.kubectl(&["apply", "-n", "other", "-f", "deploy/samples/"]);
    c.kubectl(&["apply", "-n", "team", "-f", "deploy/samples/"]);
    eventually(60, "the build Job in team", || build_job(&c, "team"));
    eventually(30, "MatchingIndex status in team", || {
        let mi = c.get(&["matchingindex", "faces", "-n", "team"])?;
        (mi["status"]["phase"] == "Building").then_some(())
    });
    assert_eq!(build_job(&c, "other"), None, "the unwatched namespace is left alone");
    let mi = c.get(&["matchingindex", "faces", "-n", "other"]).unwrap();
    assert!(mi["status"].is_null() && mi["metadata"]["finalizers"].is_null(), "{mi}");

    // Redis is unreachable here: skip-cleanup releases the object after deleting its children.
    c.kubectl(&["annotate", "matchingindex", "faces", "-n", "team", "kim.dev/skip-cleanup=true"]);
    c.kubectl(&["delete", "matchingindex", "faces", "-n", "team", "--wait=false"]);
    eventually(60, "MatchingIndex released", || {
        c.get(&["matchingindex", "faces", "-n", "team"]).is_none().then_some(())
    });
    assert_eq!(build_job(&c, "team"), None);
    let denied = forbidden(&c.dir.path().join("operator.log"));
    assert!(denied.is_empty(), "denied under the namespaced RBAC:\n{}", denied.join("\n"));
}
