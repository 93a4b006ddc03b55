//! The operator against a real control plane: etcd + kube-apiserver built from their Go modules
//! by e2e/tools.sh and started on loopback by e2e/cluster.sh. No kubelet or controllers run in
//! this tier, so the tests play their part: they complete or fail build Jobs by writing the Job
//! and Pod status a kubelet and the Job controller would write.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kim_operator::crd::{MatchingIndex, Phase};
use kim_testkit::{eventually_async, free_port, http_get, repo, Cluster, Proc, Profile, Redis};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

/// Applies crds/ and waits until both are served.
fn crds_established(c: &Cluster) {
    c.kubectl(&["apply", "-f", repo().join("crds").to_str().unwrap()]);
    c.wait_crds();
}

/// A kim-operator against the cluster, with a short lease so a successor takes over quickly.
fn operator(c: &Cluster, name: &str) -> Operator {
    let http = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kim-operator"));
    cmd.args(["--http", &format!("127.0.0.1:{http}"), "--identity", name, "--lease-duration", "3s"])
        .env("KUBECONFIG", &c.kubeconfig)
        .env("KIM_WORKER_IMAGE", "kim-worker:test")
        .env("KIM_LOG", "info,kube=warn");
    Operator { proc: Proc::spawn(name, &mut cmd, c.dir.path()), http }
}

struct Operator {
    proc: Proc,
    http: u16,
}

impl Operator {
    fn get(&self, path: &str) -> Option<String> {
        http_get(self.http, path).map(|(_, body)| body)
    }
    fn role(&self) -> Option<String> {
        self.get("/leader")
    }
    fn log(&self) -> String {
        self.proc.log_text()
    }
    /// Signals it and waits up to 15 s for it to exit.
    fn stop(&mut self, signal: &str) {
        self.proc.signal(signal);
        self.proc.wait_exit(Duration::from_secs(15));
    }
}

fn indexer_yaml(ns: &str, max: i32) -> String {
    format!("apiVersion: kim.dev/v1alpha1\nkind: Indexer\nmetadata: {{name: pool, namespace: {ns}}}\nspec:\n  maxConcurrentBuilds: {max}\n  storage: {{size: 1Gi}}\n  buildTimeout: 30m\n")
}

fn mi_yaml(ns: &str, name: &str, m: i32, replicas: i32, redis: &str, path: &str) -> String {
    format!(
        "apiVersion: kim.dev/v1alpha1\nkind: MatchingIndex\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  indexerRef: {{name: pool}}\n  descriptor: {{version: 59, dimensions: 512, encoding: u8, metric: cosine}}\n  source: {{path: {path}, idsPath: data/ids.txt}}\n  hnsw: {{m: {m}, efConstruction: 200}}\n  matcher: {{replicas: {replicas}}}\n  redis: {{url: \"{redis}\"}}\n"
    )
}

fn apply_yaml(c: &Cluster, yaml: &str) -> std::process::Output {
    c.run("kubectl", &["apply", "-f", "-"], Some(yaml))
}

/// Plays kubelet + Job controller: a pod with the worker's termination message, then the
/// Job's terminal conditions.
async fn finish_job(client: &Client, ns: &str, job: &str, ok: bool, message: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod_name = format!("{job}-x");
    let pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name, "labels": {"batch.kubernetes.io/job-name": job, "job-name": job}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "index", "image": "kim-worker:test"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let pod_status = json!({"status": {
        "phase": if ok { "Succeeded" } else { "Failed" },
        "containerStatuses": [{"name": "index", "image": "kim-worker:test", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": if ok { 0 } else { 1 }, "message": message, "startedAt": now, "finishedAt": now}}}],
    }});
    pods.patch_status(&pod_name, &PatchParams::default(), &Patch::Merge(&pod_status)).await.unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let cond = |t: &str, reason: &str| json!({"type": t, "status": "True", "reason": reason, "message": reason, "lastProbeTime": now, "lastTransitionTime": now});
    let status = if ok {
        json!({"status": {"startTime": now, "completionTime": now, "succeeded": 1, "active": 0, "ready": 0, "terminating": 0,
            "conditions": [cond("SuccessCriteriaMet", "CompletionsReached"), cond("Complete", "CompletionsReached")]}})
    } else {
        json!({"status": {"startTime": now, "failed": 1, "active": 0, "ready": 0, "terminating": 0,
            "conditions": [cond("FailureTarget", "BackoffLimitExceeded"), cond("Failed", "BackoffLimitExceeded")]}})
    };
    jobs.patch_status(job, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("finishing job {job}: {e}"));
}

async fn build_jobs(client: &Client, ns: &str, mi: &str) -> Vec<Job> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    jobs.list(&ListParams::default().labels(&format!("kim.dev/matching-index={mi},kim.dev/component=build")))
        .await
        .unwrap()
        .items
}

async fn mi_status(client: &Client, ns: &str, name: &str) -> Option<kim_operator::crd::MatchingIndexStatus> {
    Api::<MatchingIndex>::namespaced(client.clone(), ns).get_opt(name).await.unwrap().and_then(|m| m.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_lifecycle_scaling_failure_restart_and_deletion() {
    let c = Cluster::up(Profile::Core);
    let client = c.client().await;
    let ns = "team";
    crds_established(&c);
    // Discovery can lag a moment behind Established.
    let explain = eventually_async(20, "kubectl explain", || async {
        let out = c.run("kubectl", &["explain", "matchingindex.spec"], None);
        out.status.success().then(|| String::from_utf8(out.stdout).unwrap())
    })
    .await;
    for field in ["indexerRef", "descriptor", "source", "hnsw", "rebuild", "matcher", "online", "redis"] {
        assert!(explain.contains(field), "kubectl explain lacks {field}:\n{explain}");
    }
    c.namespace(ns);
    let redis = Redis::start(c.dir.path());
    let redis_url = redis.url();
    let mut op = operator(&c, "op-1");

    // Schema rejects nonsense outright, with the rule's message.
    let bad = apply_yaml(&c, &indexer_yaml(ns, 0));
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("maxConcurrentBuilds must be 1..64"));

    let out =
        apply_yaml(&c, &(indexer_yaml(ns, 2) + "---\n" + &mi_yaml(ns, "faces", 16, 1, &redis_url, "data/base.npy")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The Indexer's claim and the first build Job appear, with the spec we expect.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    eventually_async(20, "storage claim", || async { pvcs.get_opt("pool-storage").await.unwrap() }).await;
    let job =
        eventually_async(20, "first build job", || async { build_jobs(&client, ns, "faces").await.into_iter().next() })
            .await;
    let pod = job.spec.clone().unwrap().template.spec.unwrap();
    let args = pod.containers[0].args.clone().unwrap();
    assert!(args.windows(2).any(|w| w == ["--source", "/storage/data/base.npy"]), "{args:?}");
    assert_eq!(pod.volumes.unwrap()[0].persistent_volume_claim.as_ref().unwrap().claim_name, "pool-storage");
    let st = eventually_async(20, "Building phase", || async {
        mi_status(&client, ns, "faces").await.filter(|s| s.phase == Some(Phase::Building))
    })
    .await;
    assert_eq!(st.current_build.unwrap().job.as_deref(), Some(job.name_any().as_str()));

    // The Job succeeds: status carries the snapshot, the matcher Deployment appears.
    let msg = r#"{"snapshot":"20261122t000000000z-abc123","label":"faces","namespace":"team","vectors":50000,"buildSeconds":12.5,"createdAt":"2026-11-22T00:00:00Z"}"#;
    finish_job(&client, ns, &job.name_any(), true, msg).await;
    let st = eventually_async(20, "snapshot in status", || async {
        mi_status(&client, ns, "faces").await.filter(|s| s.current_snapshot.is_some())
    })
    .await;
    let snap = st.current_snapshot.unwrap();
    assert_eq!((snap.id.as_str(), snap.vectors), ("20261122t000000000z-abc123", 50000));
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let dep =
        eventually_async(20, "matcher deployment", || async { deps.get_opt("faces-matcher").await.unwrap() }).await;
    assert_eq!(dep.spec.unwrap().replicas, Some(1));
    let got = c.kubectl(&["get", "mi", "-n", ns]);
    assert!(got.contains("50000") && got.contains("20261122t000000000z-abc123"), "{got}");
    let header: Vec<&str> = got.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "PHASE", "READY", "REASON", "VECTORS", "SNAPSHOT", "MATCHERS", "AGE"], "{got}");
    // No kubelet in this tier, so the matchers never become ready: the Ready column says so.
    let row: Vec<&str> = got.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..3], ["faces", "Deploying", "False"], "{got}");

    // Scaling changes the Deployment, not the index.
    assert!(apply_yaml(&c, &mi_yaml(ns, "faces", 16, 3, &redis_url, "data/base.npy")).status.success());
    eventually_async(20, "3 replicas", || async {
        deps.get_opt("faces-matcher").await.unwrap().filter(|d| d.spec.as_ref().unwrap().replicas == Some(3))
    })
    .await;
    assert_eq!(build_jobs(&client, ns, "faces").await.len(), 1);

    // New HNSW parameters start a new build; it fails with the worker's message.
    assert!(apply_yaml(&c, &mi_yaml(ns, "faces", 24, 3, &redis_url, "data/base.npy")).status.success());
    let second = eventually_async(20, "second build job", || async {
        build_jobs(&client, ns, "faces").await.into_iter().find(|j| j.name_any() != job.name_any())
    })
    .await;
    finish_job(&client, ns, &second.name_any(), false, r#"{"error":"source has 128 dimensions, index expects 512"}"#)
        .await;
    let st = eventually_async(20, "BuildFailed", || async {
        mi_status(&client, ns, "faces")
            .await
            .filter(|s| s.conditions.iter().any(|c| c.type_ == "BuildFailed" && c.status == "True"))
    })
    .await;
    let failed = st.conditions.iter().find(|c| c.type_ == "BuildFailed").unwrap();
    assert!(failed.message.contains("source has 128 dimensions"), "{}", failed.message);
    assert_eq!(st.phase, Some(Phase::Degraded), "old snapshot keeps serving");

    // The manual trigger annotation starts another build of the same spec.
    c.kubectl(&["annotate", "mi", "faces", "-n", ns, "kim.dev/rebuild=retry-1"]);
    let third = eventually_async(20, "third build job", || async {
        build_jobs(&client, ns, "faces")
            .await
            .into_iter()
            .find(|j| j.name_any() != job.name_any() && j.name_any() != second.name_any())
    })
    .await;
    finish_job(&client, ns, &third.name_any(), true, r#"{"snapshot":"20261122t000000000z-def456","vectors":50001}"#)
        .await;
    eventually_async(20, "rebuilt snapshot", || async {
        mi_status(&client, ns, "faces").await.filter(|s| {
            s.current_snapshot.as_ref().is_some_and(|x| x.id == "20261122t000000000z-def456")
                && s.phase != Some(Phase::Degraded)
        })
    })
    .await;

    // An invalid spec the schema cannot see becomes a condition; the operator keeps running.
    assert!(apply_yaml(&c, &mi_yaml(ns, "broken", 16, 1, &redis_url, "../../etc/passwd")).status.success());
    let st = eventually_async(20, "SpecValid=False", || async {
        mi_status(&client, ns, "broken").await.filter(|s| s.phase == Some(Phase::Failed))
    })
    .await;
    assert!(st.conditions.iter().any(|c| c.type_ == "SpecValid" && c.status == "False" && c.message.contains("'..'")));
    assert!(build_jobs(&client, ns, "broken").await.is_empty());

    // Restarting the operator creates no duplicate Jobs.
    let before: Vec<String> = Api::<Job>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|j| j.name_any())
        .collect();
    op.stop("TERM");
    let op2 = operator(&c, "op-2");
    eventually_async(20, "op-2 leading", || async { op2.role().filter(|r| r == "leader") }).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after: Vec<String> = Api::<Job>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|j| j.name_any())
        .collect();
    assert_eq!(before, after);

    // Deleting the MatchingIndex removes children, Redis keys and (via a cleanup Job) files.
    let mut r = redis::Client::open(redis_url.as_str()).unwrap().get_connection().unwrap();
    let _: () = redis::cmd("SET").arg("matching_label__faces__m1").arg("{}").query(&mut r).unwrap();
    let _: String = redis::cmd("XADD").arg("faces").arg("*").arg("k").arg("v").query(&mut r).unwrap();
    let mis: Api<MatchingIndex> = Api::namespaced(client.clone(), ns);
    mis.delete("faces", &DeleteParams::default()).await.unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    eventually_async(30, "cleanup job", || async { jobs.get_opt("faces-cleanup").await.unwrap() }).await;
    finish_job(&client, ns, "faces-cleanup", true, r#"{"removed":"/storage/team/faces"}"#).await;
    eventually_async(30, "MatchingIndex gone", || async {
        mis.get_opt("faces").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(deps.get_opt("faces-matcher").await.unwrap().is_none());
    assert!(build_jobs(&client, ns, "faces").await.is_empty());
    assert!(jobs.get_opt("faces-cleanup").await.unwrap().is_none());
    let exists: i64 = redis::cmd("EXISTS").arg("matching_label__faces__m1").arg("faces").query(&mut r).unwrap();
    assert_eq!(exists, 0, "redis keys removed");
    let events = c.kubectl(&["get", "events", "-n", ns, "-o", "custom-columns=R:.reason", "--no-headers"]);
    for reason in ["BuildStarted", "BuildSucceeded", "BuildFailed", "InvalidSpec", "CleanedUp"] {
        assert!(events.contains(reason), "no {reason} event in:\n{events}");
    }
    assert!(!op2.log().contains("panicked"));
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_queues_builds() {
    let c = Cluster::up(Profile::Core);
    let client = c.client().await;
    let ns = "q";
    crds_established(&c);
    c.namespace(ns);
    let _op = operator(&c, "op");
    let mut yaml = indexer_yaml(ns, 1);
    for n in ["a", "b", "c"] {
        yaml += &format!("---\n{}", mi_yaml(ns, n, 16, 1, "redis://127.0.0.1:1", "data/base.npy"));
    }
    assert!(apply_yaml(&c, &yaml).status.success());
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let running = || async {
        let all = jobs.list(&ListParams::default().labels("kim.dev/component=build")).await.unwrap().items;
        all.into_iter().filter(|j| j.status.as_ref().and_then(|s| s.conditions.as_ref()).is_none()).collect::<Vec<_>>()
    };
    let mut built = Vec::new();
    for round in 0..3 {
        let r =
            eventually_async(30, "a running build", || async { Some(running().await).filter(|r| !r.is_empty()) }).await;
        // Give a second admission the chance to (wrongly) happen.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let r2 = running().await;
        assert_eq!(r2.len(), 1, "round {round}: {:?}", r2.iter().map(|j| j.name_any()).collect::<Vec<_>>());
        assert_eq!(r[0].name_any(), r2[0].name_any());
        if round < 2 {
            let ixs: Api<kim_operator::crd::Indexer> = Api::namespaced(client.clone(), ns);
            let st = eventually_async(15, "queue visible on the Indexer", || async {
                ixs.get("pool").await.unwrap().status.filter(|s| s.active_builds == 1 && s.queued_builds == 2 - round)
            })
            .await;
            assert_eq!(st.active, vec![r2[0].name_any()]);
        }
        let name = r2[0].name_any();
        built.push(r2[0].labels()["kim.dev/matching-index"].clone());
        finish_job(&client, ns, &name, true, r#"{"snapshot":"s","vectors":1}"#).await;
    }
    built.sort();
    assert_eq!(built, vec!["a", "b", "c"]);
    for n in ["a", "b", "c"] {
        eventually_async(20, "snapshot", || async {
            mi_status(&client, ns, n).await.filter(|s| s.current_snapshot.is_some())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_acts_and_a_standby_takes_over() {
    let c = Cluster::up(Profile::Core);
    let client = c.client().await;
    let ns = "le";
    crds_established(&c);
    c.namespace(ns);
    let mut a = operator(&c, "op-a");
    eventually_async(20, "op-a leading", || async { a.role().filter(|r| r == "leader") }).await;
    let b = operator(&c, "op-b");
    eventually_async(20, "op-b up", || async { b.role() }).await;
    assert_eq!(b.role().as_deref(), Some("standby"));
    assert!(apply_yaml(
        &c,
        &(indexer_yaml(ns, 2) + "---\n" + &mi_yaml(ns, "one", 16, 1, "redis://127.0.0.1:1", "data/base.npy"))
    )
    .status
    .success());
    eventually_async(20, "job of one", || async { build_jobs(&client, ns, "one").await.into_iter().next() }).await;
    assert!(
        !b.get("/metrics").unwrap().contains("kim_operator_reconciles_total{kind=\"MatchingIndex\"}"),
        "standby reconciled"
    );
    a.stop("KILL");
    eventually_async(30, "op-b leading", || async { b.role().filter(|r| r == "leader") }).await;
    assert!(apply_yaml(&c, &mi_yaml(ns, "two", 16, 1, "redis://127.0.0.1:1", "data/base.npy")).status.success());
    eventually_async(20, "job of two", || async { build_jobs(&client, ns, "two").await.into_iter().next() }).await;
    assert!(b.log().contains("became leader"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_section_creates_agents_and_gateway() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let c = Cluster::up(Profile::Core);
    let client = c.client().await;
    let ns = "online";
    crds_established(&c);
    c.namespace(ns);
    let _op = operator(&c, "op");
    let yaml = indexer_yaml(ns, 1)
        + "---\n"
        + &mi_yaml(ns, "texts", 16, 1, "redis://127.0.0.1:1", "data/base.npy").replace("encoding: u8", "encoding: f32")
        + "  online: {agents: 3, replicas: 2, gatewayReplicas: 2, vectorizer: \"vec.on.svc:8081\"}\n";
    let out = apply_yaml(&c, &yaml);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let agents =
        eventually_async(20, "agent statefulset", || async { sts.get_opt("texts-agent").await.unwrap() }).await;
    let spec = agents.spec.unwrap();
    assert_eq!((spec.replicas, spec.service_name.as_deref()), (Some(3), Some("texts-agent")));
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
    let headless = eventually_async(20, "agent service", || async { svcs.get_opt("texts-agent").await.unwrap() }).await;
    assert_eq!(headless.spec.unwrap().cluster_ip.as_deref(), Some("None"));
    eventually_async(20, "gateway service", || async { svcs.get_opt("texts-gateway").await.unwrap() }).await;
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let gw =
        eventually_async(20, "gateway deployment", || async { deps.get_opt("texts-gateway").await.unwrap() }).await;
    let gw_spec = gw.spec.unwrap();
    assert_eq!(gw_spec.replicas, Some(2));
    let args = gw_spec.template.spec.unwrap().containers[0].args.clone().unwrap();
    let agents = (0..3).map(|i| format!("texts-agent-{i}.texts-agent.online.svc:8081")).collect::<Vec<_>>().join(",");
    assert!(args.windows(2).any(|w| w[0] == "--agents" && w[1] == agents), "{args:?}");
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    eventually_async(20, "agent disruption budget", || async { pdbs.get_opt("texts-agent").await.unwrap() }).await;

    // Removing spec.online deletes the agents, their Services, the gateway and the budget;
    // the MatchingIndex itself stays.
    let without =
        yaml.replace("  online: {agents: 3, replicas: 2, gatewayReplicas: 2, vectorizer: \"vec.on.svc:8081\"}\n", "");
    assert_ne!(without, yaml);
    let out = apply_yaml(&c, &without);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually_async(30, "online children removed with spec.online", || async {
        let gone = sts.get_opt("texts-agent").await.unwrap().is_none()
            && svcs.get_opt("texts-agent").await.unwrap().is_none()
            && svcs.get_opt("texts-gateway").await.unwrap().is_none()
            && deps.get_opt("texts-gateway").await.unwrap().is_none()
            && pdbs.get_opt("texts-agent").await.unwrap().is_none();
        gone.then_some(())
    })
    .await;
    let mis: Api<MatchingIndex> = Api::namespaced(client.clone(), ns);
    assert!(mis.get_opt("texts").await.unwrap().is_some());
    let events = c.kubectl(&["get", "events", "-n", ns, "-o", "custom-columns=R:.reason", "--no-headers"]);
    assert!(events.contains("ChildrenRemoved"), "{events}");
    // Back again, for the deletion below.
    assert!(apply_yaml(&c, &yaml).status.success());
    eventually_async(20, "gateway again", || async { deps.get_opt("texts-gateway").await.unwrap() }).await;
    // Deleting the index removes the online children at once; the Redis step cannot reach its
    // (unreachable) Redis, so the object waits until an admin says to skip the cleanup.
    mis.delete("texts", &DeleteParams::default()).await.unwrap();
    eventually_async(30, "online children gone", || async {
        let gone = sts.get_opt("texts-agent").await.unwrap().is_none()
            && svcs.get_opt("texts-agent").await.unwrap().is_none()
            && svcs.get_opt("texts-gateway").await.unwrap().is_none()
            && deps.get_opt("texts-gateway").await.unwrap().is_none();
        gone.then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(mis.get_opt("texts").await.unwrap().is_some(), "finalizer holds while Redis is unreachable");
    c.kubectl(&["annotate", "mi", "texts", "-n", ns, "kim.dev/skip-cleanup=true"]);
    eventually_async(30, "MatchingIndex released", || async {
        mis.get_opt("texts").await.unwrap().is_none().then_some(())
    })
    .await;
}

/// kube-apiserver stopped (SIGTERM) while a build runs and started again with the same
/// command on the same etcd, down longer than the operator's lease: the operator, unable to
/// renew, exits cleanly (by design, so a fresh process competes again) and is restarted as its
/// Deployment would; the new process takes the lease, sees the running build finish, reacts to
/// a spec change made after the restart, and never creates a second Job for the same build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_restart_resumes_reconcile_without_duplicate_jobs() {
    let c = Cluster::up(Profile::Core);
    let client = c.client().await;
    let ns = "restart";
    crds_established(&c);
    c.namespace(ns);
    let mut op = operator(&c, "op");
    let yaml = indexer_yaml(ns, 2) + "---\n" + &mi_yaml(ns, "faces", 16, 1, "redis://127.0.0.1:1", "data/base.npy");
    assert!(apply_yaml(&c, &yaml).status.success());
    let job =
        eventually_async(20, "first build job", || async { build_jobs(&client, ns, "faces").await.into_iter().next() })
            .await;
    eventually_async(20, "op leading", || async { op.role().filter(|r| r == "leader") }).await;

    // Stop the API server the way an upgrade or a crash-looping control plane does.
    let run = c.cluster_dir().join("run");
    let pid = std::fs::read_to_string(run.join("kube-apiserver.pid")).unwrap().trim().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let t = Instant::now();
    while Command::new("kill").args(["-0", &pid]).stderr(Stdio::null()).status().unwrap().success() {
        assert!(t.elapsed() < Duration::from_secs(30), "kube-apiserver did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Down for longer than the operator's lease (3 s): renewals fail meanwhile.
    std::thread::sleep(Duration::from_secs(5));
    let cmd = std::fs::read_to_string(run.join("kube-apiserver.cmd")).unwrap();
    let log = std::fs::OpenOptions::new().append(true).open(c.cluster_dir().join("logs/kube-apiserver.log")).unwrap();
    // Detached on purpose: the restarted API server outlives this step; the cluster stops it.
    #[allow(clippy::zombie_processes)]
    let child = Command::new("setsid")
        .args(["bash", "-c", &format!("exec {}", cmd.trim())])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    std::fs::write(run.join("kube-apiserver.pid"), child.id().to_string()).unwrap();
    let restarted = Instant::now();
    eventually_async(60, "kube-apiserver back", || async {
        c.run("kubectl", &["get", "ns", ns], None).status.success().then_some(())
    })
    .await;
    eprintln!("kube-apiserver down {:?}, back after {:?}", t.elapsed() - restarted.elapsed(), restarted.elapsed());

    // The operator gave up its expired lease with a clear error and no panic; restart it as
    // the Deployment's restart policy would.
    let status = op.proc.child.try_wait().unwrap();
    let log = op.log();
    assert!(!log.contains("panicked"), "{log}");
    if status.is_some() {
        assert!(log.contains("lost leadership") || log.contains("cannot renew lease"), "{log}");
        op = operator(&c, "op-2");
    }
    eprintln!("operator exited during the outage: {}", status.is_some());
    eventually_async(30, "an operator leading again", || async { op.role().filter(|r| r == "leader") }).await;
    // The running build is the same Job, not a second one.
    let jobs = build_jobs(&client, ns, "faces").await;
    assert_eq!(jobs.iter().map(|j| j.name_any()).collect::<Vec<_>>(), vec![job.name_any()]);
    // Reconcile resumes: the build finishing after the restart lands in status...
    finish_job(&client, ns, &job.name_any(), true, r#"{"snapshot":"20261122t000000000z-aaa111","vectors":10}"#).await;
    eventually_async(30, "snapshot in status after the restart", || async {
        mi_status(&client, ns, "faces")
            .await
            .filter(|s| s.current_snapshot.as_ref().is_some_and(|x| x.id == "20261122t000000000z-aaa111"))
    })
    .await;
    // ...and a spec change made after the restart starts exactly one new build.
    assert!(apply_yaml(&c, &mi_yaml(ns, "faces", 24, 1, "redis://127.0.0.1:1", "data/base.npy")).status.success());
    let second = eventually_async(30, "second build job", || async {
        build_jobs(&client, ns, "faces").await.into_iter().find(|j| j.name_any() != job.name_any())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let names: Vec<String> = build_jobs(&client, ns, "faces").await.iter().map(|j| j.name_any()).collect();
    assert_eq!(names.len(), 2, "one Job per build: {names:?}");
    assert!(names.contains(&second.name_any()));
    assert!(!op.log().contains("panicked"), "{}", op.log());
    op.stop("TERM");
}

/// Plays a matcher's heartbeat: its entry in the label's served hash (serving with 2 deltas
/// and a tail of 5 rows, or having rejected a snapshot).
fn serve_entry(r: &mut redis::Connection, label: &str, matcher: &str, snapshot: &str, rejected: Option<&str>) {
    let info = json!({"version": 59, "dimensions": 512, "encoding": "u8", "metric": "cosine", "vectors": 10,
        "snapshot": snapshot, "rejected": rejected, "until": kim_api::unix_ms() + 60_000,
        "deltas": if rejected.is_some() { 0 } else { 2 }, "tail": if rejected.is_some() { 0 } else { 5 }});
    let _: () =
        redis::cmd("HSET").arg(kim_api::served_key("", label)).arg(matcher).arg(info.to_string()).query(r).unwrap();
}

/// The name of the `n`th build Job of `faces`, once it exists.
async fn nth_build(client: &Client, ns: &str, n: usize) -> String {
    eventually_async(30, "build Job", || async {
        let mut jobs = build_jobs(client, ns, "faces").await;
        jobs.sort_by_key(|j| j.metadata.creation_timestamp.clone());
        (jobs.len() == n).then(|| jobs.last().unwrap().name_any())
    })
    .await
}

/// A matcher that finds the new snapshot corrupt keeps serving the old one and says so in
/// Redis; the operator, which looks again while a matcher has not moved to the new snapshot,
/// turns that into status (Degraded, SnapshotRejected, which matcher serves what) and a
/// Warning Event, and back to Ready once the matcher serves a good build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matcher_that_rejects_the_new_snapshot_is_in_status_until_a_good_build_is_served() {
    let c = Cluster::up(Profile::Core);
    let client = c.client().await;
    let ns = "verify";
    crds_established(&c);
    c.namespace(ns);
    let redis = Redis::start(c.dir.path());
    let mut r = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let _op = operator(&c, "op-1");
    assert!(apply_yaml(&c, &indexer_yaml(ns, 1)).status.success());
    assert!(apply_yaml(&c, &mi_yaml(ns, "faces", 16, 1, &redis.url(), "data/base.npy")).status.success());
    let report = |id: &str| {
        let at = k8s_openapi::jiff::Timestamp::now().to_string();
        json!({"snapshot": id, "label": "faces", "namespace": ns, "vectors": 10, "createdAt": at}).to_string()
    };
    let job = nth_build(&client, ns, 1).await;
    finish_job(&client, ns, &job, true, &report("s1")).await;
    // Plays the Deployment controller: the matcher is ready.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let ready = |gen: i64| json!({"status": {"observedGeneration": gen, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "availableReplicas": 1}});
    let d =
        eventually_async(30, "matcher Deployment", || async { deployments.get_opt("faces-matcher").await.unwrap() })
            .await;
    serve_entry(&mut r, "faces", "m-1", "s1", None);
    deployments
        .patch_status("faces-matcher", &PatchParams::default(), &Patch::Merge(&ready(d.metadata.generation.unwrap())))
        .await
        .unwrap();
    let phase = |want: Phase| {
        let client = client.clone();
        async move { mi_status(&client, ns, "faces").await.filter(|s| s.phase == Some(want)) }
    };
    eventually_async(30, "Ready on s1", || phase(Phase::Ready)).await;

    // A rebuild publishes s2; the matcher still serves s1 when the Job completes, then rejects s2.
    c.kubectl(&["annotate", "mi", "faces", "-n", ns, "kim.dev/rebuild=2"]);
    let job = nth_build(&client, ns, 2).await;
    finish_job(&client, ns, &job, true, &report("s2")).await;
    eventually_async(30, "status names s2", || async {
        mi_status(&client, ns, "faces").await.filter(|s| s.current_snapshot.as_ref().is_some_and(|c| c.id == "s2"))
    })
    .await;
    let t = Instant::now();
    serve_entry(&mut r, "faces", "m-1", "s1", Some("s2"));
    let st = eventually_async(30, "SnapshotRejected", || phase(Phase::Degraded)).await;
    eprintln!("the rejection reached status {:?} after the matcher reported it", t.elapsed());
    assert_eq!(st.reason.as_deref(), Some("SnapshotRejected"));
    let rejected = &st.rejected_snapshots;
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(
        (rejected[0].matcher.as_str(), rejected[0].rejected.as_str(), rejected[0].serving.as_str()),
        ("m-1", "s2", "s1")
    );
    let cond = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(cond.status, "False");
    assert!(cond.message.contains("snapshot s2 failed verification on matcher m-1"), "{}", cond.message);
    let events = c.kubectl(&[
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        "reason=SnapshotRejected",
        "-o",
        "jsonpath={.items[*].type}",
    ]);
    assert_eq!(events.trim(), "Warning", "one Warning Event");

    // A good build (s3), served: Ready again, nothing rejected.
    c.kubectl(&["annotate", "mi", "faces", "-n", ns, "--overwrite", "kim.dev/rebuild=3"]);
    let job = nth_build(&client, ns, 3).await;
    finish_job(&client, ns, &job, true, &report("s3")).await;
    serve_entry(&mut r, "faces", "m-1", "s3", None);
    let st = eventually_async(30, "Ready on s3", || phase(Phase::Ready)).await;
    assert!(st.rejected_snapshots.is_empty(), "{:?}", st.rejected_snapshots);
    // What the matcher serves on top of the snapshot (deltas of `kim-worker refresh`).
    let snap = st.current_snapshot.unwrap();
    assert_eq!((snap.id.as_str(), snap.deltas, snap.tail_rows), ("s3", Some(2), Some(5)));
}
