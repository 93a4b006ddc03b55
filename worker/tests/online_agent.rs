//! `kim-worker agent` as a real process: Vald agent semantics over gRPC, durability across
//! SIGKILL (WAL replay on top of a saved snapshot), and a torn WAL tail.

mod common;
mod online_support;

use std::collections::HashMap;
use std::time::Instant;

use kim_proto::agent::v1::agent_client::AgentClient;
use kim_proto::payload::v1::{control, flush, insert, object, remove, update, upsert, Empty};
use kim_proto::vald::v1::{
    flush_client::FlushClient, index_client::IndexClient, insert_client::InsertClient, object_client::ObjectClient,
    remove_client::RemoveClient, update_client::UpdateClient, upsert_client::UpsertClient,
};
use online_support::*;
use tonic::Code;

const DIMS: usize = 16;

fn id_req(id: &str) -> remove::Request {
    remove::Request { id: Some(object::Id { id: id.into() }), config: None }
}

async fn count(ch: &tonic::transport::Channel) -> kim_proto::payload::v1::info::index::Count {
    IndexClient::new(ch.clone()).index_info(Empty {}).await.unwrap().into_inner()
}

async fn list(ch: &tonic::transport::Channel) -> HashMap<String, Vec<f32>> {
    let mut s = ObjectClient::new(ch.clone()).stream_list_object(object::list::Request {}).await.unwrap().into_inner();
    let mut out = HashMap::new();
    while let Some(m) = s.message().await.unwrap() {
        if let Some(object::list::response::Payload::Vector(v)) = m.payload {
            out.insert(v.id, v.vector);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vald_agent_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Server::agent("a1", dir.path(), DIMS, "l2", &[]);
    let ch = agent.channel().await;

    let loc = insert(&ch, "x", vector(1, DIMS)).await.unwrap();
    assert_eq!((loc.name.as_str(), loc.uuid.as_str(), loc.ips.as_slice()), ("a1", "x", &["127.0.0.1".to_string()][..]));
    assert_eq!(insert(&ch, "x", vector(2, DIMS)).await.unwrap_err().code(), Code::AlreadyExists);
    // skip_strict_exist_check makes an insert of an existing id overwrite it.
    let mut skip = insert_req("x", vector(2, DIMS));
    skip.config = Some(insert::Config { skip_strict_exist_check: true, ..Default::default() });
    InsertClient::new(ch.clone()).insert(skip).await.unwrap();
    assert_eq!(get(&ch, "x").await.unwrap(), vector(2, DIMS));
    assert_eq!(insert(&ch, "bad", vector(1, DIMS - 1)).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(insert(&ch, "", vector(1, DIMS)).await.unwrap_err().code(), Code::InvalidArgument);

    // Searchable at once, before any index build; exact vector at distance 0.
    let hits = search(&ch, vector(2, DIMS), 3).await;
    assert_eq!((hits[0].id.as_str(), hits[0].distance), ("x", 0.0));

    let upd = |id: &str, seed| update::Request {
        vector: Some(object::Vector { id: id.into(), vector: vector(seed, DIMS), timestamp: 0 }),
        config: None,
    };
    assert_eq!(UpdateClient::new(ch.clone()).update(upd("missing", 3)).await.unwrap_err().code(), Code::NotFound);
    UpdateClient::new(ch.clone()).update(upd("x", 3)).await.unwrap();
    assert_eq!(search(&ch, vector(3, DIMS), 1).await[0].id, "x");
    let ups = |id: &str, seed| upsert::Request {
        vector: Some(object::Vector { id: id.into(), vector: vector(seed, DIMS), timestamp: 0 }),
        config: None,
    };
    UpsertClient::new(ch.clone()).upsert(ups("y", 4)).await.unwrap();
    UpsertClient::new(ch.clone()).upsert(ups("y", 5)).await.unwrap();
    assert_eq!(get(&ch, "y").await.unwrap(), vector(5, DIMS));

    // Multi: per-item failures reported, the rest applied.
    let multi = insert::MultiRequest {
        requests: vec![
            insert_req("m1", vector(10, DIMS)),
            insert_req("x", vector(11, DIMS)),
            insert_req("m2", vector(12, DIMS)),
        ],
    };
    let err = InsertClient::new(ch.clone()).multi_insert(multi).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("1 of 3 items failed") && err.message().contains("#1 \"x\""), "{}", err.message());
    assert!(get(&ch, "m1").await.is_some() && get(&ch, "m2").await.is_some());

    // Stream: in-band status for the bad message, the others succeed.
    let reqs = vec![
        insert_req("s1", vector(20, DIMS)),
        insert_req("s1", vector(21, DIMS)),
        insert_req("s2", vector(22, DIMS)),
    ];
    let mut out = InsertClient::new(ch.clone()).stream_insert(futures::stream::iter(reqs)).await.unwrap().into_inner();
    let mut codes = Vec::new();
    while let Some(m) = out.message().await.unwrap() {
        codes.push(match m.payload.unwrap() {
            object::stream_location::Payload::Location(_) => 0,
            object::stream_location::Payload::Status(s) => s.code,
        });
    }
    assert_eq!(codes, vec![0, Code::AlreadyExists as i32, 0]);

    // Remove, Exists, IndexInfo, CreateIndex, list, Flush.
    RemoveClient::new(ch.clone()).remove(id_req("m2")).await.unwrap();
    assert_eq!(RemoveClient::new(ch.clone()).remove(id_req("m2")).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(
        ObjectClient::new(ch.clone()).exists(object::Id { id: "m2".into() }).await.unwrap_err().code(),
        Code::NotFound
    );
    assert!(ObjectClient::new(ch.clone()).exists(object::Id { id: "m1".into() }).await.is_ok());
    let c = count(&ch).await;
    assert_eq!((c.stored, c.uncommitted), (0, 5), "{c:?}");
    AgentClient::new(ch.clone()).create_index(control::CreateIndexRequest { pool_size: 0 }).await.unwrap();
    let c = count(&ch).await;
    assert_eq!((c.stored, c.uncommitted, c.indexing), (5, 0, false), "{c:?}");
    assert_eq!(search(&ch, vector(3, DIMS), 1).await[0].id, "x", "found through the graph");
    let all = list(&ch).await;
    assert_eq!(all.len(), 5);
    assert_eq!(all["y"], vector(5, DIMS));
    let c = FlushClient::new(ch.clone()).flush(flush::Request {}).await.unwrap().into_inner();
    assert_eq!((c.stored, c.uncommitted), (0, 0));
    assert!(search(&ch, vector(3, DIMS), 5).await.is_empty());

    let (status, metrics) = common::http_get(agent.http, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("kim_agent_grpc_requests_total{rpc=\"Insert\",code=\"AlreadyExists\"}"), "{metrics}");
    assert!(metrics.contains("kim_agent_wal_fsyncs_total"), "{metrics}");
    assert_eq!(common::http_get(agent.http, "/readyz").unwrap().0, 200);
}

/// Writes acknowledged before SIGKILL are all there after restart, whether they were in the
/// saved snapshot or only in the WAL; removals and updates too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Server::agent("a1", dir.path(), DIMS, "cosine", &["--index-interval", "1h"]);
    let ch = agent.channel().await;
    let mut want: HashMap<String, Vec<f32>> = HashMap::new();
    for i in 0..200u64 {
        let id = format!("u{i}");
        insert(&ch, &id, vector(i, DIMS)).await.unwrap();
        want.insert(id, vector(i, DIMS));
    }
    // Half of them in a saved snapshot, the rest only in the WAL.
    AgentClient::new(ch.clone()).create_and_save_index(control::CreateIndexRequest { pool_size: 0 }).await.unwrap();
    let multi = insert::MultiRequest {
        requests: (200..400u64).map(|i| insert_req(&format!("u{i}"), vector(i, DIMS))).collect(),
    };
    InsertClient::new(ch.clone()).multi_insert(multi).await.unwrap();
    (200..400u64).for_each(|i| drop(want.insert(format!("u{i}"), vector(i, DIMS))));
    let reqs: Vec<_> = (400..600u64).map(|i| insert_req(&format!("u{i}"), vector(i, DIMS))).collect();
    let mut out = InsertClient::new(ch.clone()).stream_insert(futures::stream::iter(reqs)).await.unwrap().into_inner();
    let mut acked = 0;
    while let Some(m) = out.message().await.unwrap() {
        assert!(matches!(m.payload, Some(object::stream_location::Payload::Location(_))));
        acked += 1;
    }
    assert_eq!(acked, 200);
    (400..600u64).for_each(|i| drop(want.insert(format!("u{i}"), vector(i, DIMS))));
    for i in (0..600u64).step_by(7) {
        RemoveClient::new(ch.clone()).remove(id_req(&format!("u{i}"))).await.unwrap();
        want.remove(&format!("u{i}"));
    }
    let upd = update::Request {
        vector: Some(object::Vector { id: "u1".into(), vector: vector(9999, DIMS), timestamp: 0 }),
        config: None,
    };
    UpdateClient::new(ch.clone()).update(upd).await.unwrap();
    want.insert("u1".into(), vector(9999, DIMS));

    agent.kill9();
    let t = Instant::now();
    agent.restart();
    let restart = t.elapsed();
    let ch = agent.channel().await;
    let got = list(&ch).await;
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want, "state after SIGKILL differs from acknowledged writes");
    for (id, v) in want.iter().take(50) {
        assert_eq!(&search(&ch, v.clone(), 1).await[0].id, id);
    }
    let c = count(&ch).await;
    assert_eq!((c.stored + c.uncommitted) as usize, want.len());
    eprintln!("restart with {} objects took {restart:?}", want.len());
    assert!(agent.log().contains("agent state recovered"));
}

/// A torn last record (a crash mid-write) is cut off; every record before it is recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_wal_tail_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Server::agent("a1", dir.path(), DIMS, "l2", &["--index-interval", "1h"]);
    let ch = agent.channel().await;
    for i in 0..50u64 {
        insert(&ch, &format!("t{i}"), vector(i, DIMS)).await.unwrap();
    }
    agent.kill9();
    let data = dir.path().join("a1-data");
    let mut wals: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    wals.sort();
    let newest = wals.iter().rev().find(|p| std::fs::metadata(p).unwrap().len() > 0).unwrap().clone();
    let len = std::fs::metadata(&newest).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&newest).unwrap().set_len(len - 5).unwrap();

    agent.restart();
    let ch = agent.channel().await;
    let got = list(&ch).await;
    assert_eq!(got.len(), 49, "only the torn record is lost");
    assert!(!got.contains_key("t49"));
    for i in 0..49u64 {
        assert_eq!(got[&format!("t{i}")], vector(i, DIMS));
    }
    assert!(agent.log().contains("discarding torn WAL tail"), "{}", agent.log());
    let (_, metrics) = common::http_get(agent.http, "/metrics").unwrap();
    let discarded = metrics.lines().find_map(|l| l.strip_prefix("kim_agent_wal_discarded_bytes ")).unwrap();
    assert!(discarded.parse::<u64>().unwrap() > 0, "{metrics}");
    // The cut is durable and the log keeps working after it.
    insert(&ch, "t49", vector(49, DIMS)).await.unwrap();
    agent.kill9();
    agent.restart();
    let ch = agent.channel().await;
    assert_eq!(list(&ch).await.len(), 50);
}
