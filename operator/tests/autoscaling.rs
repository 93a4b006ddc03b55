//! Backlog autoscaling against a real kube-apiserver, a real redis-server and the real operator
//! binary: a backlog queued on the label's stream scales the matcher Deployment from
//! `minReplicas` to `maxReplicas`, and back to the minimum once the backlog is drained and the
//! cool-down has passed, each step with its Event and status; `autoscaling.keda` renders a
//! ScaledObject that the API server, holding KEDA's published CRD, accepts (and says why it
//! cannot while that CRD is missing).

#[allow(dead_code, unused_imports)]
#[path = "chart/support.rs"]
mod support;

use std::process::Command;
use std::time::Instant;

use serde_json::Value;
use support::{eventually, free_port, Cluster, Proc, Profile, Redis};

const NS: &str = "scale";

fn operator(c: &Cluster) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kim-operator"));
    cmd.args(["--http", &format!("127.0.0.1:{}", free_port()), "--identity", "t", "--lease-duration", "3s"])
        .args(["--autoscale-interval", "1s"])
        .env("KUBECONFIG", &c.kubeconfig)
        .env("KIM_WORKER_IMAGE", "kim-worker:test")
        .env("KIM_LOG", "info,kube=warn");
    Proc::spawn("operator", &mut cmd, c.dir.path())
}

fn mi_yaml(port: u16, autoscaling: &str) -> String {
    format!(
        "apiVersion: kim.dev/v1alpha1\nkind: MatchingIndex\nmetadata: {{name: faces, namespace: {NS}}}\nspec:\n  indexerRef: {{name: pool}}\n  descriptor: {{version: 59, dimensions: 8, encoding: u8, metric: cosine}}\n  source: {{path: data/base.npy}}\n  matcher:\n    replicas: 1\n    autoscaling: {autoscaling}\n  redis: {{url: \"redis://127.0.0.1:{port}\"}}\n"
    )
}

/// Plays the Job controller: the build Job completed (the snapshot is "unreported", which is
/// enough for the operator to start matchers).
fn complete_job(c: &Cluster, job: &str) {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let cond = |t: &str| serde_json::json!({"type": t, "status": "True", "reason": "CompletionsReached", "message": "done", "lastProbeTime": now, "lastTransitionTime": now});
    let status = serde_json::json!({"status": {"startTime": now, "completionTime": now, "succeeded": 1, "active": 0, "ready": 0, "terminating": 0,
        "conditions": [cond("SuccessCriteriaMet"), cond("Complete")]}});
    c.kubectl(&["patch", "job", job, "-n", NS, "--subresource=status", "--type=merge", "-p", &status.to_string()]);
}

fn replicas(c: &Cluster) -> Option<i64> {
    c.get(&["deployment", "faces-matcher", "-n", NS])?["spec"]["replicas"].as_i64()
}

fn events(c: &Cluster, reason: &str) -> Vec<String> {
    let all = c.get(&["events", "-n", NS, "--field-selector", &format!("reason={reason}")]).unwrap();
    all["items"].as_array().unwrap().iter().map(|e| e["message"].as_str().unwrap_or("").to_string()).collect()
}

fn autoscaling_status(c: &Cluster) -> Value {
    c.get(&["mi", "faces", "-n", NS]).map(|m| m["status"]["autoscaling"].clone()).unwrap_or(Value::Null)
}

#[test]
fn backlog_scales_matchers_up_and_back_after_the_cool_down_and_keda_gets_a_scaled_object() {
    let c = Cluster::up(Profile::Core);
    c.kubectl(&["apply", "--server-side", "-f", "crds/"]);
    c.wait_crds();
    c.kubectl(&["create", "namespace", NS]);
    let ix = format!(
        "apiVersion: kim.dev/v1alpha1\nkind: Indexer\nmetadata: {{name: pool, namespace: {NS}}}\nspec:\n  storage: {{size: 1Gi}}\n"
    );
    c.ok("kubectl", &["apply", "-f", "-"], Some(&ix));
    let redis = Redis::start(c.dir.path());
    let mut r = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    // The group as the matchers create it (no matcher process runs on this control plane).
    redis::cmd("XGROUP").arg("CREATE").arg("faces").arg("kim-matchers").arg("$").arg("MKSTREAM").exec(&mut r).unwrap();
    let op = operator(&c);

    let scaling = "{minReplicas: 1, maxReplicas: 4, targetBacklog: 10, cooldown: 6s}";
    c.ok("kubectl", &["apply", "-f", "-"], Some(&mi_yaml(redis.port, scaling)));
    let job = eventually(30, "build Job", || {
        let jobs = c.get(&["jobs", "-n", NS, "-l", "kim.dev/matching-index=faces,kim.dev/component=build"])?;
        jobs["items"][0]["metadata"]["name"].as_str().map(str::to_string)
    });
    complete_job(&c, &job);
    let first = eventually(30, "matcher Deployment", || replicas(&c));
    assert_eq!(first, 1, "an empty backlog runs minReplicas");

    // 35 requests nobody reads: ceil(35 / 10) = 4 matchers, the maximum.
    for i in 0..35 {
        redis::cmd("XADD").arg("faces").arg("*").arg("rid").arg(i).exec(&mut r).unwrap();
    }
    let queued = Instant::now();
    eventually(20, "scaled up to 4", || (replicas(&c) == Some(4)).then_some(()));
    eprintln!("backlog of 35 scaled the matchers 1 -> 4 in {:?}", queued.elapsed());
    let up = events(&c, "ScaledUp");
    assert!(up.iter().any(|m| m.contains("from 1 to 4") && m.contains("backlog 35 (lag 35, pending 0)")), "{up:?}");
    let st = autoscaling_status(&c);
    assert_eq!((st["replicas"].as_i64(), st["lag"].as_i64()), (Some(4), Some(35)), "{st}");
    assert_eq!(c.get(&["mi", "faces", "-n", NS]).unwrap()["status"]["matchers"]["desired"], 4);

    // A matcher reads and answers them all: the backlog is gone, the cool-down holds the count.
    let read: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("kim-matchers")
        .arg("m-0")
        .arg("COUNT")
        .arg(100)
        .arg("STREAMS")
        .arg("faces")
        .arg(">")
        .query(&mut r)
        .unwrap();
    assert!(format!("{read:?}").contains("rid"), "{read:?}");
    let ids: Vec<String> = redis::cmd("XRANGE")
        .arg("faces")
        .arg("-")
        .arg("+")
        .query::<Vec<(String, Vec<(String, String)>)>>(&mut r)
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(ids.len(), 35);
    let acked: i64 = redis::cmd("XACK").arg("faces").arg("kim-matchers").arg(&ids).query(&mut r).unwrap();
    assert_eq!(acked, 35);
    let drained = Instant::now();
    let held = eventually(10, "the drained backlog seen", || {
        let st = autoscaling_status(&c);
        (st["lag"].as_i64() == Some(0) && st["pending"].as_i64() == Some(0)).then_some(st)
    });
    assert_eq!(held["replicas"].as_i64(), Some(4), "scaled down inside the cool-down: {held}");
    assert!(held["message"].as_str().unwrap().contains("until the cool-down ends"), "{held}");
    eventually(20, "scaled back to 1", || (replicas(&c) == Some(1)).then_some(()));
    let took = drained.elapsed();
    eprintln!("drained backlog scaled the matchers 4 -> 1 after {took:?} (cool-down 6s)");
    let down = events(&c, "ScaledDown");
    assert!(down.iter().any(|m| m.contains("from 4 to 1") && m.contains("backlog 0")), "{down:?}");

    // KEDA: without its CRD the operator says so and keeps a fixed count...
    let keda = "{minReplicas: 1, maxReplicas: 5, targetBacklog: 20, cooldown: 2m, keda: true}";
    c.ok("kubectl", &["apply", "-f", "-"], Some(&mi_yaml(redis.port, keda)));
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    let blocked = loop {
        let st = autoscaling_status(&c);
        if st["message"].as_str().is_some_and(|m| m.contains("KEDA is not installed")) {
            break st;
        }
        let log = op.log_text();
        assert!(
            Instant::now() < deadline,
            "KEDA missing not reported: {st}\n{}",
            &log[log.len().saturating_sub(3000)..]
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(blocked["scaledObjects"].is_null(), "{blocked}");
    assert!(events(&c, "AutoscalingBlocked").iter().any(|m| m.contains("KEDA is not installed")));

    // ...and with KEDA's published CRD the API server accepts the ScaledObject it renders.
    let crd = kim_testkit::cache().join("keda/keda.sh_scaledobjects.yaml");
    assert!(crd.is_file(), "{} missing: run scripts/keda-crd.sh", crd.display());
    c.kubectl(&["apply", "--server-side", "-f", crd.to_str().unwrap()]);
    c.kubectl(&["wait", "--for=condition=Established", "crd/scaledobjects.keda.sh", "--timeout=30s"]);
    let so = eventually(30, "ScaledObject", || c.get(&["scaledobject", "faces-matcher", "-n", NS]));
    assert_eq!(so["spec"]["scaleTargetRef"]["name"], "faces-matcher");
    assert_eq!((so["spec"]["minReplicaCount"].as_i64(), so["spec"]["maxReplicaCount"].as_i64()), (Some(1), Some(5)));
    assert_eq!(so["spec"]["cooldownPeriod"], 120);
    let trigger = &so["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "redis-streams");
    assert_eq!(trigger["metadata"]["address"], format!("127.0.0.1:{}", redis.port));
    assert_eq!(
        (trigger["metadata"]["stream"].as_str(), trigger["metadata"]["lagCount"].as_str()),
        (Some("faces"), Some("20"))
    );
    assert_eq!(trigger["metadata"]["consumerGroup"], "kim-matchers");
    assert_eq!(so["metadata"]["ownerReferences"][0]["kind"], "MatchingIndex");
    let st = eventually(10, "status names it", || {
        let st = autoscaling_status(&c);
        (st["scaledObjects"] == serde_json::json!(["faces-matcher"])).then_some(st)
    });
    assert!(st["message"].as_str().unwrap().contains("KEDA scales the matchers"), "{st}");
    // Turning KEDA off again deletes it.
    c.ok("kubectl", &["apply", "-f", "-"], Some(&mi_yaml(redis.port, scaling)));
    eventually(20, "ScaledObject removed", || {
        c.get(&["scaledobject", "faces-matcher", "-n", NS]).is_none().then_some(())
    });
    assert!(!events(&c, "ScaledObjectRemoved").is_empty());
}
