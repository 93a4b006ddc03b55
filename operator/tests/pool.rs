//! Matcher pools on a real control plane (etcd + kube-apiserver from e2e/cluster.sh) with real
//! workers: 50 MatchingIndexes opt into their Indexer's pool; the test plays kubelet by running
//! each build Job's own `kim-worker index` arguments and the pool Deployment's own
//! `kim-worker match` arguments as processes (paths under /storage mapped to a temp dir). The
//! one pool matcher serves all 50 labels, no label has a Deployment of its own, and a deleted
//! MatchingIndex stops being served.

mod support;

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use kim_operator::crd::{Indexer, MatchingIndex, Phase};
use kim_testkit::{eventually_async, free_port, http_get, Proc, Redis};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use redis::Commands;
use support::local_args;

const NS: &str = "pools";
const LABELS: usize = 50;

async fn run_build(client: &Client, root: &Path, job: &Job) {
    support::run_job(client, NS, root, job, &[]).await;
}

fn label(i: usize) -> String {
    format!("list-{i:02}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_labels_in_one_pool_are_served_by_the_pool_alone_and_a_deleted_one_stops() {
    let (c, client, op) = support::cluster_with_operator(NS).await;
    let redis = Redis::start(c.dir.path());
    let root = c.dir.path().join("storage");
    let out = Command::new(support::worker_bin())
        .args(["gen", "--out", root.join("data").to_str().unwrap(), "--identities", "8", "--samples", "2"])
        .args(["--mated-probes", "4", "--nonmated-probes", "4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let url = redis.url();
    let ix = format!(
        "apiVersion: kim.dev/v1alpha1\nkind: Indexer\nmetadata: {{name: pool, namespace: {NS}}}\nspec:\n  maxConcurrentBuilds: 64\n  storage: {{size: 1Gi}}\n  pool: {{replicas: 1, redis: {{url: \"{url}\"}}}}\n"
    );
    let mut yaml = ix;
    for i in 0..LABELS {
        yaml.push_str(&format!(
            "---\napiVersion: kim.dev/v1alpha1\nkind: MatchingIndex\nmetadata: {{name: {}, namespace: {NS}}}\nspec:\n  indexerRef: {{name: pool}}\n  descriptor: {{version: 59, dimensions: 512, encoding: u8, metric: cosine}}\n  source: {{path: data/base.npy, idsPath: data/ids.txt}}\n  matcher: {{pool: true}}\n  redis: {{url: \"{url}\"}}\n  deletionPolicy: Retain\n",
            label(i)
        ));
    }
    let applied = c.run("kubectl", &["apply", "-f", "-"], Some(&yaml));
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));

    // The pool's Deployment: run its matcher as its pod would.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let d = eventually_async(30, "pool Deployment", || async { deployments.get_opt("pool-pool").await.unwrap() }).await;
    let pod = d.spec.unwrap().template.spec.unwrap();
    let container = &pod.containers[0];
    let env_url = container.env.iter().flatten().find(|e| e.name == "KIM_REDIS_URL").unwrap().value.clone();
    assert_eq!(env_url.as_deref(), Some(url.as_str()));
    let matcher_http = free_port();
    let mut m = Command::new(support::worker_bin());
    m.args(local_args(container, &root, matcher_http, &[]))
        .env("KIM_REDIS_URL", &url)
        .env("KIM_MATCHER_ID", "pool-pool-0")
        .env("KIM_LOG", "info");
    let matcher = Proc::spawn("pool-matcher", &mut m, c.dir.path());

    // Every build Job, run as kubelet would.
    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
    let all = eventually_async(60, "50 build Jobs", || async {
        let l = jobs.list(&ListParams::default().labels("kim.dev/component=build")).await.unwrap().items;
        (l.len() == LABELS).then_some(l)
    })
    .await;
    for j in &all {
        run_build(&client, &root, j).await;
    }

    // All 50 served by the one pool matcher; nothing but the pool has a Deployment.
    let mis: Api<MatchingIndex> = Api::namespaced(client.clone(), NS);
    let t = std::time::Instant::now();
    eventually_async(90, "every label Ready in the pool", || async {
        let l = mis.list(&ListParams::default()).await.unwrap().items;
        let ready = l
            .iter()
            .filter(|m| m.status.as_ref().is_some_and(|s| s.phase == Some(Phase::Ready)))
            .filter(|m| {
                m.status
                    .as_ref()
                    .and_then(|s| s.matchers.as_ref())
                    .is_some_and(|x| x.summary == "1/1 in pool pool-pool")
            })
            .count();
        (ready == LABELS).then_some(())
    })
    .await;
    eprintln!("50 pooled labels Ready {:?} after their builds", t.elapsed());
    let names: Vec<String> =
        deployments.list(&ListParams::default()).await.unwrap().items.iter().map(|d| d.name_any()).collect();
    assert_eq!(names, vec!["pool-pool"], "no label has matchers of its own");
    let mut r = redis.conn();
    for i in 0..LABELS {
        let key = kim_api::registry_key("", &label(i), "pool-pool-0");
        assert!(r.exists::<_, bool>(&key).unwrap(), "{key} missing");
    }
    let ix: Indexer = Api::namespaced(client.clone(), NS).get("pool").await.unwrap();
    assert_eq!(ix.status.unwrap().pool.unwrap().labels, LABELS as i32);
    let (code, body) = http_get(matcher_http, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains(&format!("label=\"{}\"", label(7))));

    // A deleted MatchingIndex leaves the pool and is no longer served; the others stay.
    c.kubectl(&["delete", "mi", &label(7), "-n", NS, "--wait=true", "--timeout=30s"]);
    let gone = kim_api::registry_key("", &label(7), "pool-pool-0");
    eventually_async(20, "label 7 no longer served", || async {
        let mut r = redis.conn();
        (!r.exists::<_, bool>(&gone).unwrap()).then_some(())
    })
    .await;
    let members: Vec<String> = r.smembers(kim_api::pool_key("", &format!("{NS}/pool"))).unwrap();
    assert_eq!(members.len(), LABELS - 1);
    assert!(!members.contains(&label(7)));
    assert!(r.exists::<_, bool>(kim_api::registry_key("", &label(8), "pool-pool-0")).unwrap());
    let body = http_get(matcher_http, "/metrics").unwrap().1;
    assert!(!body.contains(&format!("label=\"{}\"", label(7))), "no series of a dropped label");
    assert!(matcher.log_text().contains("left the pool"), "{}", matcher.log_text());
    assert!(!op.log_text().contains("panicked"), "{}", op.log_text());
}
