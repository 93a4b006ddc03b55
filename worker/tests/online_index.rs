//! `kim-worker index --source agents://...`: vectors written online become a batch snapshot
//! that `kim-worker match` serves over Redis (real agents, redis-server and matcher).

mod common;
mod online_support;

use std::time::Duration;

use common::*;
use kim_client::{Client, Match};
use kim_proto::payload::v1::{object, upsert};
use kim_proto::vald::v1::upsert_client::UpsertClient;
use online_support::{insert, vector, Server};

const DIMS: usize = 32;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_source_builds_a_snapshot_the_matcher_serves() {
    let dir = tempfile::tempdir().unwrap();
    let a1 = Server::agent("a1", dir.path(), DIMS, "cosine", &[]);
    let a2 = Server::agent("a2", dir.path(), DIMS, "cosine", &[]);
    let (c1, c2) = (a1.channel().await, a2.channel().await);
    // Ids 0..300 on a1, 200..400 on a2: 200..300 are replicas on both.
    for i in 0..300u64 {
        insert(&c1, &format!("o{i}"), vector(i, DIMS)).await.unwrap();
    }
    for i in 200..400u64 {
        insert(&c2, &format!("o{i}"), vector(i, DIMS)).await.unwrap();
    }
    // A replica that diverged: the newer timestamp wins.
    let newer = upsert::Request {
        vector: Some(object::Vector { id: "o250".into(), vector: vector(77_777, DIMS), timestamp: i64::MAX / 2 }),
        config: None,
    };
    UpsertClient::new(c2.clone()).upsert(newer).await.unwrap();

    let storage = dir.path().join("storage");
    let source = format!("agents://{},{}", a1.addr(), a2.addr());
    let out = worker(&[
        "index",
        "--label",
        "online",
        "--storage",
        storage.to_str().unwrap(),
        "--source",
        &source,
        "--version",
        "1",
        "--dimensions",
        &DIMS.to_string(),
        "--encoding",
        "f32",
        "--metric",
        "cosine",
        "--threads",
        "1",
    ]);
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["vectors"], 400, "replicas merged by id: {summary}");

    let redis = Redis::start(dir.path());
    let m = Matcher::start("m1", dir.path(), &storage, &redis, &[]);
    m.wait_ready();
    let client = Client::connect(&redis.url()).await.unwrap();
    let ask = |v: Vec<f32>| Match {
        descriptor: f32_bytes(&v),
        version: 1,
        label: "online".into(),
        limit: 3,
        threshold: None,
        luna_request_id: None,
        timeout: Duration::from_secs(10),
    };
    for i in (0..400u64).step_by(13).filter(|&i| i != 250) {
        let r = client.match_descriptor(ask(vector(i, DIMS))).await.unwrap();
        assert_eq!(r.status_code, 201, "{r:?}");
        assert_eq!(r.result[0].0, format!("o{i}"));
        assert!(r.result[0].1 > 0.9999, "{r:?}");
    }
    let r = client.match_descriptor(ask(vector(77_777, DIMS))).await.unwrap();
    assert_eq!(r.result[0].0, "o250", "the newer replica's vector is the one indexed");

    // An unreachable agent fails the build instead of producing a partial snapshot.
    let dead = format!("agents://{},127.0.0.1:{}", a1.addr(), free_port());
    let err = worker_fails(&[
        "index",
        "--label",
        "online2",
        "--storage",
        storage.to_str().unwrap(),
        "--source",
        &dead,
        "--version",
        "1",
        "--dimensions",
        &DIMS.to_string(),
        "--encoding",
        "f32",
    ]);
    assert!(err.contains("agent 127.0.0.1:"), "{err}");
}
