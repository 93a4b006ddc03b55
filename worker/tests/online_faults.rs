//! Fault injection on the online path (real processes on loopback): an agent partitioned
//! away by SIGSTOP while the gateway serves searches, and an agent crashed by SIGKILL under
//! concurrent writes with a torn record left at the end of its WAL.

mod common;
mod online_support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::http_get;
use kim_proto::payload::v1::{insert, object, search};
use kim_proto::vald::v1::filter_client::FilterClient;
use online_support::*;
use tonic::transport::Channel;

const DIMS: usize = 64;

fn text(i: usize) -> Vec<u8> {
    format!("record {i} concerning theme {} with token t{}", i % 5, i * 17 % 89).into_bytes()
}

async fn search_text(gw: &Channel, i: usize, timeout: Duration) -> Result<search::Response, tonic::Status> {
    let cfg = search::Config { num: 3, timeout: timeout.as_nanos() as i64, ..Default::default() };
    let req = search::ObjectRequest { object: text(i), config: Some(cfg), vectorizer: None };
    FilterClient::new(gw.clone()).search_object(req).await.map(|r| r.into_inner())
}

fn status(gw: &Server) -> serde_json::Value {
    let (code, body) = http_get(gw.http, "/status").expect("gateway /status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn reachable(st: &serde_json::Value, addr: &str) -> bool {
    st["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["address"] == addr)
        .unwrap_or_else(|| panic!("{addr} not in {st}"))["reachable"]
        .as_bool()
        .unwrap()
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return t.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} within {limit:?}");
}

/// A stopped agent (no RST, no answers: what a network partition looks like) costs a search
/// at most 90 % of its deadline until the probe marks it unreachable, then the probe timeout; results
/// come from the other replicas, and /status and the metrics name the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_agent_degrades_searches_and_shows_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let agents: Vec<Server> =
        (1..=3).map(|i| Server::agent(&format!("agent{i}"), dir.path(), DIMS, "cosine", &[])).collect();
    let vec = Server::start("vectorizer", dir.path(), &["vectorize", "--dimensions", &DIMS.to_string()]);
    let list = agents.iter().map(|a| a.addr()).collect::<Vec<_>>().join(",");
    let gw = Server::start(
        "gateway",
        dir.path(),
        &[
            "filter",
            "--agents",
            &list,
            "--replicas",
            "2",
            "--vectorizer",
            &vec.addr(),
            "--probe-interval",
            "200ms",
            "--probe-timeout",
            "100ms",
        ],
    );
    let ch = gw.channel().await;
    let n = 45;
    for i in 0..n {
        let req = insert::ObjectRequest {
            object: Some(object::Blob { id: format!("r{i}"), object: text(i) }),
            config: None,
            vectorizer: None,
        };
        FilterClient::new(ch.clone()).insert_object(req).await.unwrap();
    }
    let st = status(&gw);
    assert_eq!(st["unreachable"], 0, "{st}");

    let stopped = agents[0].addr();
    agents[0].proc.signal("STOP");
    // Before the probe notices: the search still answers within its deadline, from the rest.
    let deadline = Duration::from_millis(1500);
    let t = Instant::now();
    let r = search_text(&ch, 3, deadline)
        .await
        .unwrap_or_else(|e| panic!("search with a stopped agent: {e:?}\n{}", gw.log()));
    let first = t.elapsed();
    assert!(first < deadline, "answered in {first:?}");
    assert_eq!(r.results[0].id, "r3");

    let noticed = wait_for("the gateway marks the stopped agent unreachable", Duration::from_secs(5), || {
        !reachable(&status(&gw), &stopped)
    });
    let st = status(&gw);
    assert_eq!(st["unreachable"], 1, "{st}");
    assert!(agents[1..].iter().all(|a| reachable(&st, &a.addr())), "{st}");
    let (_, metrics) = http_get(gw.http, "/metrics").unwrap();
    assert!(metrics.contains(&format!("kim_gateway_agent_up{{agent=\"{stopped}\"}} 0")), "{metrics}");
    assert!(metrics.contains("kim_gateway_agents_unreachable 1"), "{metrics}");

    // Every object has a replica on a live agent: all are still found, and each search waits
    // only the probe timeout (100 ms) for the stopped one.
    let t = Instant::now();
    for i in 0..n {
        let r = search_text(&ch, i, deadline).await.unwrap();
        assert_eq!(r.results[0].id, format!("r{i}"), "{r:?}");
    }
    let per_search = t.elapsed() / n as u32;
    assert!(per_search < Duration::from_millis(400), "{per_search:?} per search while partitioned");
    eprintln!(
        "first search with a stopped agent {first:?}, unreachable after {noticed:?}, then {per_search:?} per search"
    );

    agents[0].proc.signal("CONT");
    wait_for("the agent is reachable again after SIGCONT", Duration::from_secs(5), || {
        reachable(&status(&gw), &stopped)
    });
    assert_eq!(status(&gw)["unreachable"], 0);
}

/// SIGKILL while four writers are busy, then a torn record at the WAL's end (a frame header
/// promising more bytes than follow): every acknowledged write comes back, the torn bytes
/// are cut off and counted, and the agent takes writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_under_writes_with_torn_wal_tail_keeps_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Server::agent("a1", dir.path(), DIMS, "l2", &["--index-interval", "1h"]);
    let ch = agent.channel().await;
    let acked: Arc<Mutex<HashMap<String, Vec<f32>>>> = Arc::default();
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (ch, acked) = (ch.clone(), acked.clone());
            tokio::spawn(async move {
                for i in 0..5000u64 {
                    let (id, v) = (format!("w{w}-{i}"), vector(w * 100_000 + i, DIMS));
                    match insert(&ch, &id, v.clone()).await {
                        Ok(_) => drop(acked.lock().unwrap().insert(id, v)),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    wait_for("300 acknowledged writes", Duration::from_secs(30), || acked.lock().unwrap().len() >= 300);
    agent.kill9();
    for w in writers {
        tokio::time::timeout(Duration::from_secs(10), w).await.expect("writers stop once the agent is gone").unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let data = dir.path().join("a1-data");
    let mut wals: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    wals.sort();
    let newest = wals.last().expect("a WAL segment").clone();
    let mut torn = 400u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&[0xab; 8]);
    torn.extend_from_slice(&[7; 37]);
    let mut f = std::fs::OpenOptions::new().append(true).open(&newest).unwrap();
    std::io::Write::write_all(&mut f, &torn).unwrap();
    drop(f);

    agent.restart();
    let ch = agent.channel().await;
    for (id, v) in &acked {
        assert_eq!(get(&ch, id).await.as_ref(), Some(v), "acknowledged write {id} lost or changed");
    }
    assert!(agent.log().contains("discarding torn WAL tail"), "{}", agent.log());
    let (_, metrics) = http_get(agent.http, "/metrics").unwrap();
    let discarded: u64 =
        metrics.lines().find_map(|l| l.strip_prefix("kim_agent_wal_discarded_bytes ")).unwrap().parse().unwrap();
    assert!(discarded >= torn.len() as u64, "{discarded} < {}", torn.len());
    eprintln!("{} acknowledged writes recovered, {discarded} torn bytes discarded", acked.len());
    insert(&ch, "after", vector(1, DIMS)).await.unwrap();
    agent.kill9();
    agent.restart();
    assert_eq!(get(&agent.channel().await, "after").await, Some(vector(1, DIMS)));
}
