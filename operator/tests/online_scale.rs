//! `online.agents` scaled 3 → 4 → 3 on a real control plane (etcd + kube-apiserver) with real
//! agents, gateway and rebalance: four `kim-worker agent` processes on loopback stand for the
//! agent pods; the test plays kubelet and the controllers by running the gateway Deployment's
//! own arguments (restarted whenever they change, then marked rolled out), marking the
//! StatefulSet's pods ready, and running each rebalance Job's own arguments — every agent's
//! stable cluster name mapped to its loopback address. With replicas 2, objects inserted before
//! and between the changes: none lost, none duplicated, each on exactly 2 agents once a
//! rebalance reports done, strict re-inserts refused, searches return each id once.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use kim_operator::crd::{MatchingIndex, OnlineStatus};
use kim_proto::payload::v1::{insert, object, search};
use kim_proto::vald::v1::{insert_client::InsertClient, object_client::ObjectClient, search_client::SearchClient};
use kim_testkit::{eventually_async, free_port, Proc};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::{local_args, worker_bin};
use tonic::transport::Channel;
use tonic::Code;

const NS: &str = "online";
const DIMS: usize = 16;

fn vector(seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..DIMS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn id(i: usize) -> String {
    format!("face-{i}")
}

fn wait_listening(port: u16, p: &mut Proc) {
    let ok =
        kim_testkit::poll_until(Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    assert!(ok && p.alive(), "not listening on {port}:\n{}", p.log_text());
}

async fn channel(port: u16) -> Channel {
    Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await.unwrap()
}

/// The agent pods, the gateway pod of the current arguments, and the cluster names mapped.
struct Pods {
    root: std::path::PathBuf,
    agents: Vec<(Proc, u16)>,
    names: Vec<(String, String)>,
    gateway: Option<(Proc, u16, Vec<String>)>,
}

impl Pods {
    fn start(root: &std::path::Path, n: usize) -> Pods {
        let mut agents = Vec::new();
        let mut names = Vec::new();
        for i in 0..n {
            let (port, http) = (free_port(), free_port());
            let data = root.join(format!("agent-{i}"));
            let mut cmd = Command::new(worker_bin());
            cmd.args(["agent", "--data", data.to_str().unwrap(), "--dimensions", &DIMS.to_string()])
                .args(["--listen", &format!("127.0.0.1:{port}"), "--http", &format!("127.0.0.1:{http}")])
                .args(["--name", &format!("texts-agent-{i}")])
                .env("KIM_LOG", "info");
            let mut p = Proc::spawn(&format!("agent-{i}"), &mut cmd, root);
            wait_listening(port, &mut p);
            names.push((format!("texts-agent-{i}.texts-agent.{NS}.svc:8081"), format!("127.0.0.1:{port}")));
            agents.push((p, port));
        }
        Pods { root: root.to_path_buf(), agents, names, gateway: None }
    }

    /// Plays the Deployment controller and kubelet: (re)starts the gateway when its arguments
    /// changed, marks it rolled out and the agents' StatefulSet ready. Returns the arguments.
    async fn roll_out(&mut self, client: &Client) -> Vec<String> {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
        let d = deployments.get("texts-gateway").await.unwrap();
        let container = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].clone();
        let args = container.args.clone().unwrap();
        if self.gateway.as_ref().is_none_or(|g| g.2 != args) {
            if let Some((mut old, ..)) = self.gateway.take() {
                old.stop(Duration::from_secs(5));
            }
            let port = free_port();
            let mut names = self.names.clone();
            names.push(("0.0.0.0:8081".into(), format!("127.0.0.1:{port}")));
            let mut cmd = Command::new(worker_bin());
            cmd.args(local_args(&container, &self.root, free_port(), &names)).env("KIM_LOG", "info");
            let mut p = Proc::spawn("gateway", &mut cmd, &self.root);
            wait_listening(port, &mut p);
            self.gateway = Some((p, port, args.clone()));
        }
        let gen = d.metadata.generation.unwrap();
        let st = json!({"status": {"observedGeneration": gen, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}});
        deployments.patch_status("texts-gateway", &PatchParams::default(), &Patch::Merge(&st)).await.unwrap();
        let sets: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
        let s = sets.get("texts-agent").await.unwrap();
        let n = s.spec.as_ref().unwrap().replicas.unwrap();
        let st = json!({"status": {"observedGeneration": s.metadata.generation.unwrap(), "replicas": n, "readyReplicas": n,
            "availableReplicas": n, "currentReplicas": n, "updatedReplicas": n}});
        sets.patch_status("texts-agent", &PatchParams::default(), &Patch::Merge(&st)).await.unwrap();
        args
    }

    async fn gateway(&self) -> Channel {
        channel(self.gateway.as_ref().unwrap().1).await
    }

    /// Which agents (of the first `n`) hold `id`, asked directly.
    async fn holders(&self, id: &str, n: usize) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, (_, port)) in self.agents.iter().take(n).enumerate() {
            if ObjectClient::new(channel(*port).await).exists(object::Id { id: id.into() }).await.is_ok() {
                out.push(i);
            }
        }
        out
    }
}

async fn insert(ch: &Channel, i: usize) -> Result<(), tonic::Status> {
    let req = insert::Request {
        vector: Some(object::Vector { id: id(i), vector: vector(i as u64), timestamp: 0 }),
        config: None,
    };
    InsertClient::new(ch.clone()).insert(req).await.map(|_| ())
}

async fn online_status(client: &Client) -> Option<OnlineStatus> {
    let mi: MatchingIndex = Api::namespaced(client.clone(), NS).get("texts").await.unwrap();
    mi.status?.online
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone())
}

fn agent_list(n: std::ops::Range<usize>) -> String {
    n.map(|i| format!("texts-agent-{i}.texts-agent.{NS}.svc:8081")).collect::<Vec<_>>().join(",")
}

/// Rolls the gateway out until its arguments are `owners` and `read`.
async fn gateway_becomes(pods: &mut Pods, client: &Client, owners: &str, read: Option<&str>) {
    eventually_async(30, &format!("gateway with agents {owners} reading {read:?}"), || async {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
        let d = deployments.get_opt("texts-gateway").await.unwrap()?;
        let args = d.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap();
        (flag(&args, "--agents").as_deref() == Some(owners) && flag(&args, "--read-agents").as_deref() == read)
            .then_some(())
    })
    .await;
    pods.roll_out(client).await;
}

/// Waits for the rebalance Job not in `done`, checks its flags, runs it.
async fn rebalance(
    pods: &Pods,
    client: &Client,
    done: &mut Vec<String>,
    owners: &str,
    drain: Option<&str>,
) -> serde_json::Value {
    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
    let job = eventually_async(30, "a new rebalance Job", || async {
        let l = jobs.list(&ListParams::default().labels("kim.dev/component=rebalance")).await.unwrap().items;
        l.into_iter().find(|j| !done.contains(&j.name_any()))
    })
    .await;
    let args = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].args.clone().unwrap();
    assert_eq!((flag(&args, "--agents").as_deref(), flag(&args, "--drain").as_deref()), (Some(owners), drain));
    assert_eq!(flag(&args, "--replicas").as_deref(), Some("2"));
    let report = support::run_job(client, NS, &pods.root, &job, &pods.names).await;
    done.push(job.name_any());
    serde_json::from_str(&report).unwrap()
}

async fn rebalanced(client: &Client, agents: i32) -> OnlineStatus {
    eventually_async(30, "the rebalance reported in status", || async {
        let o = online_status(client).await?;
        let r = o.rebalance.as_ref()?;
        (r.state == "Succeeded" && o.agents == agents && o.reading == agents).then_some(o)
    })
    .await
}

/// Every id on exactly two of the first `n` agents; through the gateway readable, found once
/// by its vector at distance 0, and a strict insert of it refused.
async fn every_id_twice(pods: &Pods, n: usize, ids: usize) -> BTreeMap<usize, usize> {
    let gw = pods.gateway().await;
    let mut per_agent = BTreeMap::new();
    for i in 0..ids {
        let h = pods.holders(&id(i), n).await;
        assert_eq!(h.len(), 2, "{} held by {h:?}", id(i));
        for a in h {
            *per_agent.entry(a).or_insert(0) += 1;
        }
        let req = object::VectorRequest { id: Some(object::Id { id: id(i) }), filters: None };
        let got = ObjectClient::new(gw.clone()).get_object(req).await.unwrap().into_inner();
        assert_eq!(got.vector, vector(i as u64), "{}", id(i));
        let req =
            search::Request { vector: vector(i as u64), config: Some(search::Config { num: 5, ..Default::default() }) };
        let hits = SearchClient::new(gw.clone()).search(req).await.unwrap().into_inner().results;
        assert_eq!(hits.iter().filter(|d| d.id == id(i)).count(), 1, "{}: {hits:?}", id(i));
        assert!(hits[0].id == id(i) && hits[0].distance < 1e-4, "{}: {hits:?}", id(i));
        assert_eq!(insert(&gw, i).await.unwrap_err().code(), Code::AlreadyExists, "{}", id(i));
    }
    per_agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_agents_up_and_down_moves_objects_without_loss_or_duplicates() {
    let (c, client, op) = support::cluster_with_operator(NS).await;
    let root = c.dir.path().join("pods");
    std::fs::create_dir_all(&root).unwrap();
    let mut pods = Pods::start(&root, 4);
    let mi = |agents: i32| {
        format!(
            "apiVersion: kim.dev/v1alpha1\nkind: Indexer\nmetadata: {{name: ix, namespace: {NS}}}\nspec:\n  storage: {{size: 1Gi}}\n---\napiVersion: kim.dev/v1alpha1\nkind: MatchingIndex\nmetadata: {{name: texts, namespace: {NS}}}\nspec:\n  indexerRef: {{name: ix}}\n  descriptor: {{version: 1, dimensions: {DIMS}, encoding: f32, metric: cosine}}\n  source: {{agents: true}}\n  redis: {{url: \"redis://127.0.0.1:1\"}}\n  online: {{agents: {agents}, replicas: 2}}\n"
        )
    };
    let apply = |agents: i32| {
        let out = c.run("kubectl", &["apply", "-f", "-"], Some(&mi(agents)));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    apply(3);
    gateway_becomes(&mut pods, &client, &agent_list(0..3), None).await;
    let o = eventually_async(30, "online status", || async { online_status(&client).await }).await;
    assert_eq!((o.agents, o.reading, o.rebalance), (3, 3, None));
    let gw = pods.gateway().await;
    for i in 0..40 {
        insert(&gw, i).await.unwrap();
    }
    let mut done = Vec::new();

    // 3 → 4: read the fourth first, then own it, then move its objects to it.
    apply(4);
    gateway_becomes(&mut pods, &client, &agent_list(0..3), Some(&agent_list(3..4))).await;
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    assert_eq!(sets.get("texts-agent").await.unwrap().spec.unwrap().replicas, Some(4));
    gateway_becomes(&mut pods, &client, &agent_list(0..4), None).await;
    // Written before the rebalance under the four owners: the rebalance finds them in place.
    let gw = pods.gateway().await;
    for i in 40..50 {
        insert(&gw, i).await.unwrap();
    }
    let r = rebalance(&pods, &client, &mut done, &agent_list(0..4), None).await;
    assert_eq!((r["agents"].as_u64(), r["objects"].as_u64()), (Some(4), Some(50)), "{r}");
    assert!(r["copied"].as_u64().unwrap() > 0 && r["copied"] == r["removed"], "{r}");
    let o = rebalanced(&client, 4).await;
    let message = o.rebalance.unwrap().message.unwrap();
    assert!(message.starts_with("50 objects on 4 agents (0 drained)"), "{message}");
    for i in 50..60 {
        insert(&gw, i).await.unwrap();
    }
    let spread = every_id_twice(&pods, 4, 60).await;
    assert!(spread.get(&3).is_some_and(|&n| n > 0), "nothing on the fourth agent: {spread:?}");

    // 4 → 3: stop writing to the fourth, drain it, stop reading it, then remove it.
    apply(3);
    gateway_becomes(&mut pods, &client, &agent_list(0..3), Some(&agent_list(3..4))).await;
    assert_eq!(sets.get("texts-agent").await.unwrap().spec.unwrap().replicas, Some(4), "still read");
    let gw = pods.gateway().await;
    for i in 60..70 {
        insert(&gw, i).await.unwrap();
        assert!(!pods.holders(&id(i), 4).await.contains(&3), "{} written to the leaving agent", id(i));
    }
    let r = rebalance(&pods, &client, &mut done, &agent_list(0..3), Some(&agent_list(3..4))).await;
    assert_eq!((r["drained"].as_u64(), r["objects"].as_u64()), (Some(1), Some(70)), "{r}");
    assert_eq!(r["removed"], spread[&3], "every copy on the fourth agent removed: {r}");
    gateway_becomes(&mut pods, &client, &agent_list(0..3), None).await;
    eventually_async(30, "the StatefulSet shrinks once the gateway stopped reading", || async {
        (sets.get("texts-agent").await.unwrap().spec.unwrap().replicas == Some(3)).then_some(())
    })
    .await;
    pods.agents[3].0.stop(Duration::from_secs(5));
    let o = rebalanced(&client, 3).await;
    assert!(o.rebalance.unwrap().message.unwrap().contains("(1 drained)"));
    every_id_twice(&pods, 3, 70).await;

    let events = c.kubectl(&["get", "events", "-n", NS, "-o", "custom-columns=R:.reason", "--no-headers"]);
    for reason in ["AgentsChanging", "RebalanceStarted", "Rebalanced"] {
        assert!(events.contains(reason), "{reason} missing: {events}");
    }
    assert!(!op.log_text().contains("panicked"), "{}", op.log_text());
}
