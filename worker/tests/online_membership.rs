//! A changed agent set, seen through two gateways over the same real agents: one with the
//! three agents the objects were written under, one with a fourth agent added (the set after
//! a scale-up, when rendezvous hashing gives about a quarter of the ids a new owner). Through
//! the new set, strict inserts still see every id, reads find it, an update leaves no old
//! vector on the agent that lost ownership, and a remove takes the id off every agent.

mod common;
mod online_support;

use kim_proto::payload::v1::{object, remove, update};
use kim_proto::vald::v1::{object_client::ObjectClient, remove_client::RemoveClient, update_client::UpdateClient};
use online_support::*;
use tonic::transport::Channel;
use tonic::Code;

const DIMS: usize = 16;
const IDS: usize = 40;

/// Which agents hold `id`, asked directly.
async fn holders(agents: &[Channel], id: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, ch) in agents.iter().enumerate() {
        if ObjectClient::new(ch.clone()).exists(object::Id { id: id.into() }).await.is_ok() {
            out.push(i);
        }
    }
    out
}

/// Four agents under `dir`, their addresses, and a direct channel to each.
async fn four_agents(dir: &std::path::Path) -> (Vec<Server>, Vec<String>, Vec<Channel>) {
    let agents: Vec<Server> = (1..=4).map(|i| Server::agent(&format!("agent{i}"), dir, DIMS, "cosine", &[])).collect();
    let addrs = agents.iter().map(Server::addr).collect();
    let mut direct = Vec::new();
    for a in &agents {
        direct.push(a.channel().await);
    }
    (agents, addrs, direct)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_agent_neither_duplicates_nor_serves_stale_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let (_agents, addrs, direct) = four_agents(dir.path()).await;
    let gateway = |name: &str, n: usize| {
        Server::start(name, dir.path(), &["filter", "--agents", &addrs[..n].join(","), "--replicas", "1"])
    };
    let (old, new) = (gateway("gw-three", 3), gateway("gw-four", 4));
    let (old_ch, new_ch) = (old.channel().await, new.channel().await);
    let id = |i: usize| format!("id{i}");
    for i in 0..IDS {
        insert(&old_ch, &id(i), vector(i as u64, DIMS)).await.unwrap();
    }
    // Under the new set some ids are owned by the fourth agent but still sit on one of the three.
    for i in 0..IDS {
        let h = holders(&direct, &id(i)).await;
        assert_eq!(h.len(), 1, "{} on {h:?}", id(i));
        assert!(h[0] < 3);
        let loc = ObjectClient::new(new_ch.clone()).exists(object::Id { id: id(i) }).await;
        assert!(loc.is_ok(), "exists through the new set: {loc:?}");
        assert_eq!(get(&new_ch, &id(i)).await, Some(vector(i as u64, DIMS)), "read through the new set");
        // A strict insert sees the id whichever agent holds it.
        let again = insert(&new_ch, &id(i), vector(1000 + i as u64, DIMS)).await.unwrap_err();
        assert_eq!(again.code(), Code::AlreadyExists, "{}: {again:?}", id(i));
    }

    // Updates through the new set: each id ends on its new owner only, with the new vector.
    for i in 0..IDS {
        let req = update::Request {
            vector: Some(object::Vector { id: id(i), vector: vector(5000 + i as u64, DIMS), timestamp: 0 }),
            config: None,
        };
        UpdateClient::new(new_ch.clone()).update(req).await.unwrap();
    }
    let mut on_fourth = 0;
    for i in 0..IDS {
        let h = holders(&direct, &id(i)).await;
        assert_eq!(h.len(), 1, "{} held by {h:?} after the update: a copy was left behind", id(i));
        on_fourth += usize::from(h[0] == 3);
        // Searching the old vector never finds the id at distance 0 (no stale copy answers).
        let hits = search(&new_ch, vector(i as u64, DIMS), 10).await;
        assert!(!hits.iter().any(|d| d.id == id(i) && d.distance < 1e-4), "{} stale: {hits:?}", id(i));
        let hits = search(&new_ch, vector(5000 + i as u64, DIMS), 1).await;
        assert_eq!(hits[0].id, id(i));
    }
    assert!(on_fourth > 0, "no id moved to the fourth agent: the test would prove nothing");
    eprintln!("{on_fourth} of {IDS} ids moved to the fourth agent on update");

    // A remove takes the id off every agent of the set: through the new set any id, through
    // the old one an id that stayed on its three agents.
    let mut stayed = 0;
    while holders(&direct, &id(stayed)).await == [3] {
        stayed += 1;
    }
    let other = (0..IDS).find(|&i| i != stayed).unwrap();
    for (ch, i) in [(&old_ch, stayed), (&new_ch, other)] {
        let req = remove::Request { id: Some(object::Id { id: id(i) }), config: None };
        RemoveClient::new(ch.clone()).remove(req).await.unwrap();
        assert!(holders(&direct, &id(i)).await.is_empty(), "{} still held", id(i));
        assert_eq!(get(&old_ch, &id(i)).await, None);
        assert_eq!(get(&new_ch, &id(i)).await, None);
    }
}

/// `kim-worker rebalance` after 3 → 4 agents, then after one agent is lost (4 → 3): every
/// id ends on exactly `replicas` agents, the owners the gateways of the new set look at, and
/// none is lost or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_moves_ids_to_new_agents_and_remakes_lost_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let (mut agents, addrs, direct) = four_agents(dir.path()).await;
    let three = addrs[..3].join(",");
    let gw = Server::start("gw-three", dir.path(), &["filter", "--agents", &three, "--replicas", "2"]);
    let gw_ch = gw.channel().await;
    let id = |i: usize| format!("id{i}");
    for i in 0..IDS {
        insert(&gw_ch, &id(i), vector(i as u64, DIMS)).await.unwrap();
    }
    let rebalance = |set: &str| -> serde_json::Value {
        serde_json::from_str(common::worker(&["rebalance", "--agents", set, "--replicas", "2"]).trim()).unwrap()
    };

    // 3 → 4: ids whose owners now include the fourth agent move there.
    let r = rebalance(&addrs.join(","));
    assert_eq!(r["objects"], IDS);
    assert!(r["copied"].as_u64().unwrap() > 0 && r["removed"] == r["copied"], "{r}");
    let mut on_fourth = 0;
    for i in 0..IDS {
        let h = holders(&direct, &id(i)).await;
        assert_eq!(h.len(), 2, "{} on {h:?}", id(i));
        on_fourth += usize::from(h.contains(&3));
    }
    assert!(on_fourth > 0, "{r}");
    // A second pass has nothing to do.
    let again = rebalance(&addrs.join(","));
    assert_eq!((again["copied"].as_u64(), again["removed"].as_u64()), (Some(0), Some(0)), "{again}");

    // 4 → 3, the fourth agent lost with its copies: its ids get their second replica back.
    agents[3].kill9();
    let r = rebalance(&three);
    assert!(r["copied"].as_u64().unwrap() >= on_fourth as u64, "{r}");
    for i in 0..IDS {
        let h = holders(&direct[..3], &id(i)).await;
        assert_eq!(h.len(), 2, "{} on {h:?} after losing an agent", id(i));
        assert_eq!(get(&gw_ch, &id(i)).await, Some(vector(i as u64, DIMS)));
        let dup = insert(&gw_ch, &id(i), vector(9 + i as u64, DIMS)).await.unwrap_err();
        assert_eq!(dup.code(), Code::AlreadyExists);
    }
}

/// A planned 4 → 3 with one replica, as the operator runs it: the gateways first write to the
/// three staying agents and read all four (`--read-agents`), then `rebalance --drain` empties
/// the fourth while serving its progress, then the fourth goes. With one replica an id on the
/// fourth agent has no other copy, so any slip loses it: none is lost, duplicated or stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_agent_leaves_without_losing_its_only_copies() {
    let dir = tempfile::tempdir().unwrap();
    let (mut agents, addrs, direct) = four_agents(dir.path()).await;
    let (three, fourth) = (addrs[..3].join(","), addrs[3].clone());
    let gw4 = Server::start("gw-four", dir.path(), &["filter", "--agents", &addrs.join(","), "--replicas", "1"]);
    let gw4_ch = gw4.channel().await;
    let id = |i: usize| format!("id{i}");
    for i in 0..IDS {
        insert(&gw4_ch, &id(i), vector(i as u64, DIMS)).await.unwrap();
    }
    let only_on_fourth: Vec<usize> = {
        let mut v = Vec::new();
        for i in 0..IDS {
            if holders(&direct, &id(i)).await == [3] {
                v.push(i);
            }
        }
        v
    };
    assert!(!only_on_fourth.is_empty(), "no id landed on the fourth agent: the test would prove nothing");

    // The draining gateway: owners are the three, the fourth is read only.
    let args = ["filter", "--agents", &three, "--read-agents", &fourth, "--replicas", "1"];
    let gw = Server::start("gw-draining", dir.path(), &args);
    let gw_ch = gw.channel().await;
    let status = kim_testkit::http_get(gw.http, "/status").expect("gateway /status").1;
    assert!(status.contains(&format!("\"readOnly\":[\"{fourth}\"]")), "{status}");
    for &i in &only_on_fourth {
        assert_eq!(get(&gw_ch, &id(i)).await, Some(vector(i as u64, DIMS)), "{} read through the draining set", id(i));
        let dup = insert(&gw_ch, &id(i), vector(7 + i as u64, DIMS)).await.unwrap_err();
        assert_eq!(dup.code(), Code::AlreadyExists, "{}", id(i));
        let hits = search(&gw_ch, vector(i as u64, DIMS), 5).await;
        assert_eq!(hits.iter().filter(|d| d.id == id(i)).count(), 1, "{hits:?}");
    }
    // New ids go to the staying agents only.
    for i in IDS..IDS + 20 {
        insert(&gw_ch, &id(i), vector(i as u64, DIMS)).await.unwrap();
        assert!(!holders(&direct, &id(i)).await.contains(&3), "{} written to the draining agent", id(i));
    }

    // The rebalance, first held up by a stopped agent so its progress can be read live.
    agents[3].proc.signal("STOP");
    let (http, report) = (common::free_port(), dir.path().join("report.json"));
    let mut job = kim_testkit::Proc::spawn(
        "rebalance",
        std::process::Command::new(common::worker_bin()).args([
            "rebalance",
            "--agents",
            &three,
            "--drain",
            &fourth,
            "--replicas",
            "1",
            "--http",
            &format!("127.0.0.1:{http}"),
            "--termination-message-path",
            report.to_str().unwrap(),
        ]),
        dir.path(),
    );
    let listing = kim_testkit::eventually(20, "rebalance /status", || {
        let (code, body) = kim_testkit::http_get(http, "/status")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (code == 200 && v["phase"] == "listing").then_some(v)
    });
    assert_eq!((listing["agents"].as_u64(), listing["drained"].as_u64()), (Some(4), Some(1)), "{listing}");
    let metrics = kim_testkit::http_get(http, "/metrics").unwrap().1;
    assert!(metrics.contains("kim_rebalance_objects_done 0"), "{metrics}");
    agents[3].proc.signal("CONT");
    let exit = job.wait_exit(std::time::Duration::from_secs(60)).expect("rebalance finished");
    assert!(exit.success(), "{}", job.log_text());
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["objects"], IDS + 20);
    assert_eq!(r["done"], r["objects"]);
    assert_eq!(r["removed"].as_u64(), Some(only_on_fourth.len() as u64), "{r}");
    assert_eq!(r["copied"], r["removed"], "{r}");

    // The fourth agent is empty and goes; the three hold every id exactly once.
    for i in 0..IDS + 20 {
        assert_eq!(holders(&direct, &id(i)).await.len(), 1, "{}", id(i));
    }
    agents[3].kill9();
    let gw3 = Server::start("gw-three", dir.path(), &["filter", "--agents", &three, "--replicas", "1"]);
    let gw3_ch = gw3.channel().await;
    for i in 0..IDS + 20 {
        assert_eq!(get(&gw3_ch, &id(i)).await, Some(vector(i as u64, DIMS)), "{} lost", id(i));
        let dup = insert(&gw3_ch, &id(i), vector(3 + i as u64, DIMS)).await.unwrap_err();
        assert_eq!(dup.code(), Code::AlreadyExists, "{}", id(i));
    }
}
