//! The Filter gateway over three real agents and the kim vectorizer: placement on exactly
//! `replicas` agents, de-duplicated merged searches, and reads that survive a dead agent.

mod common;
mod online_support;

use std::collections::HashSet;
use std::time::Instant;

use kim_proto::payload::v1::{filter, insert, object, search};
use kim_proto::vald::v1::filter_client::FilterClient;
use kim_proto::vald::v1::object_client::ObjectClient;
use online_support::*;
use tonic::transport::Channel;

const DIMS: usize = 128;

fn text(i: usize) -> Vec<u8> {
    format!("object number {i} about topic {} and detail {}", i % 7, i * 31 % 101).into_bytes()
}

async fn search_object(gw: &Channel, object: Vec<u8>, num: u32) -> Result<search::Response, tonic::Status> {
    let req = search::ObjectRequest {
        object,
        config: Some(search::Config { num, request_id: "rq-1".into(), ..Default::default() }),
        vectorizer: None,
    };
    FilterClient::new(gw.clone()).search_object(req).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_writes_survive_one_dead_agent() {
    let dir = tempfile::tempdir().unwrap();
    let mut agents: Vec<Server> =
        (1..=3).map(|i| Server::agent(&format!("agent{i}"), dir.path(), DIMS, "cosine", &[])).collect();
    let vec = Server::start("vectorizer", dir.path(), &["vectorize", "--dimensions", &DIMS.to_string()]);
    let list = agents.iter().map(|a| a.addr()).collect::<Vec<_>>().join(",");
    let gw = Server::start(
        "gateway",
        dir.path(),
        &["filter", "--agents", &list, "--replicas", "2", "--vectorizer", &vec.addr(), "--allow-target", "127.0.0.1:*"],
    );
    let ch = gw.channel().await;

    let n = 60;
    let t = Instant::now();
    for i in 0..n {
        let req = insert::ObjectRequest {
            object: Some(object::Blob { id: format!("id{i}"), object: text(i) }),
            config: None,
            vectorizer: None,
        };
        let loc = FilterClient::new(ch.clone()).insert_object(req).await.unwrap().into_inner();
        assert_eq!(loc.ips.len(), 2, "{loc:?}");
    }
    eprintln!("{n} gateway inserts in {:?}", t.elapsed());

    // Each id on exactly two agents.
    let mut per_agent = Vec::new();
    for a in &agents {
        let c = a.channel().await;
        let mut held = HashSet::new();
        for i in 0..n {
            if ObjectClient::new(c.clone()).exists(object::Id { id: format!("id{i}") }).await.is_ok() {
                held.insert(i);
            }
        }
        per_agent.push(held);
    }
    for i in 0..n {
        assert_eq!(per_agent.iter().filter(|h| h.contains(&i)).count(), 2, "id{i}");
    }
    assert!(
        per_agent.iter().all(|h| h.len() > n / 3),
        "placement is balanced: {:?}",
        per_agent.iter().map(|h| h.len()).collect::<Vec<_>>()
    );

    // Merged results: the object itself first at distance ~0, no id twice.
    let r = search_object(&ch, text(5), 20).await.unwrap();
    assert_eq!(r.request_id, "rq-1");
    assert_eq!(r.results[0].id, "id5");
    assert!(r.results[0].distance.abs() < 1e-5, "{:?}", r.results[0]);
    let ids: HashSet<&str> = r.results.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids.len(), r.results.len(), "replica duplicates in {:?}", r.results);
    assert_eq!(r.results.len(), 20);
    assert!(r.results.windows(2).all(|w| w[0].distance <= w[1].distance));

    // One agent down: every id is still found from its other replica.
    agents[1].kill9();
    let t = Instant::now();
    for i in 0..n {
        let r = search_object(&ch, text(i), 3).await.unwrap();
        assert_eq!(r.results[0].id, format!("id{i}"), "{:?}", r.results);
    }
    eprintln!("{n} searches with one agent down in {:?}", t.elapsed());

    // A write whose owners include the dead agent still lands on the live owner.
    let req = insert::ObjectRequest {
        object: Some(object::Blob { id: "late".into(), object: b"written while an agent is down".to_vec() }),
        config: None,
        vectorizer: None,
    };
    FilterClient::new(ch.clone()).insert_object(req).await.unwrap();
    assert_eq!(search_object(&ch, b"written while an agent is down".to_vec(), 1).await.unwrap().results[0].id, "late");

    // The restarted agent recovers its share, and reads see it again.
    agents[1].restart();
    let c = agents[1].channel().await;
    let back = (0..n).filter(|i| per_agent[1].contains(i)).count();
    let mut found = 0;
    for i in (0..n).filter(|i| per_agent[1].contains(i)) {
        found += ObjectClient::new(c.clone()).exists(object::Id { id: format!("id{i}") }).await.is_ok() as usize;
    }
    assert_eq!(found, back);
    // With another agent down instead, reads need the restarted one: the gateway's pooled
    // channel to it must have reconnected.
    agents[0].kill9();
    for i in 0..n {
        let r = search_object(&ch, text(i), 3).await.unwrap();
        assert_eq!(r.results[0].id, format!("id{i}"), "{:?}", r.results);
    }

    // A request that names an unreachable egress filter fails as UNAVAILABLE.
    let port = common::free_port();
    let cfg = search::Config {
        num: 1,
        egress_filters: Some(filter::Config {
            targets: vec![filter::Target { host: "127.0.0.1".into(), port: port as u32 }],
        }),
        ..Default::default()
    };
    let req = search::ObjectRequest { object: text(1), config: Some(cfg), vectorizer: None };
    assert_eq!(FilterClient::new(ch.clone()).search_object(req).await.unwrap_err().code(), tonic::Code::Unavailable);

    let (_, metrics) = common::http_get(gw.http, "/metrics").unwrap();
    assert!(metrics.contains("kim_gateway_grpc_requests_total{rpc=\"InsertObject\",code=\"Ok\"} 61"), "{metrics}");
}

/// The agent set can come from DNS (here an address literal, as a headless Service would
/// resolve to pod addresses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_from_dns() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Server::agent("agent", dir.path(), DIMS, "cosine", &[]);
    let vec = Server::start("vectorizer", dir.path(), &["vectorize", "--dimensions", &DIMS.to_string()]);
    let gw = Server::start(
        "gateway",
        dir.path(),
        &[
            "filter",
            "--agents-dns",
            &agent.addr(),
            "--replicas",
            "2",
            "--vectorizer",
            &vec.addr(),
            "--dns-refresh",
            "100ms",
        ],
    );
    let ch = gw.channel().await;
    let req = insert::ObjectRequest {
        object: Some(object::Blob { id: "d1".into(), object: b"hello dns".to_vec() }),
        config: None,
        vectorizer: None,
    };
    common::wait_until(std::time::Duration::from_secs(5), "gateway to resolve agents", || {
        gw.log().contains("agent set changed")
    });
    let loc = FilterClient::new(ch.clone()).insert_object(req).await.unwrap().into_inner();
    assert_eq!(loc.ips.len(), 1, "one agent, so one replica");
    assert_eq!(search_object(&ch, b"hello dns".to_vec(), 1).await.unwrap().results[0].id, "d1");
}
