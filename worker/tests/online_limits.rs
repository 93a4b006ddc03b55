//! Request limits over real gRPC on loopback: hostile or mistaken requests to the gateway and
//! straight to agents get their status (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED,
//! OUT_OF_RANGE for an oversized message) and every process stays up.

mod common;
mod online_support;

use kim_proto::payload::v1::{filter, insert, object, search, Empty};
use kim_proto::vald::v1::filter_client::FilterClient;
use kim_proto::vald::v1::index_client::IndexClient;
use kim_proto::vald::v1::insert_client::InsertClient;
use kim_proto::vald::v1::object_client::ObjectClient;
use kim_proto::vald::v1::search_client::SearchClient;
use online_support::*;
use tonic::transport::Channel;
use tonic::Code;

const DIMS: usize = 16;

fn text(i: usize) -> Vec<u8> {
    format!("limits object {i} on subject {}", i % 5).into_bytes()
}

fn target(addr: &str) -> filter::Target {
    let (host, port) = addr.rsplit_once(':').unwrap();
    filter::Target { host: host.into(), port: port.parse().unwrap() }
}

async fn search_object(gw: &Channel, cfg: search::Config, vectorizer: Option<filter::Target>) -> Result<usize, Code> {
    let req = search::ObjectRequest { object: text(3), config: Some(cfg), vectorizer };
    FilterClient::new(gw.clone()).search_object(req).await.map(|r| r.into_inner().results.len()).map_err(|s| s.code())
}

async fn agent_search(ch: &Channel, vector: Vec<f32>, cfg: search::Config) -> Result<usize, Code> {
    let req = search::Request { vector, config: Some(cfg) };
    SearchClient::new(ch.clone()).search(req).await.map(|r| r.into_inner().results.len()).map_err(|s| s.code())
}

fn num(n: u32) -> search::Config {
    search::Config { num: n, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_their_status_and_nothing_dies() {
    let dir = tempfile::tempdir().unwrap();
    let mut agents: Vec<Server> =
        (1..=3).map(|i| Server::agent(&format!("agent{i}"), dir.path(), DIMS, "cosine", &[])).collect();
    let vec = Server::start("vectorizer", dir.path(), &["vectorize", "--dimensions", &DIMS.to_string()]);
    let narrow = Server::start("vectorizer-8", dir.path(), &["vectorize", "--dimensions", "8"]);
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
            "--allow-target",
            &narrow.addr(),
            "--max-message-bytes",
            "1048576",
        ],
    );
    let ch = gw.channel().await;
    for i in 0..20 {
        let req = insert::ObjectRequest {
            object: Some(object::Blob { id: format!("o{i}"), object: text(i) }),
            config: None,
            vectorizer: None,
        };
        FilterClient::new(ch.clone()).insert_object(req).await.unwrap();
    }
    let direct = agents[0].channel().await;
    let q = vector(7, DIMS);

    // num: 2^32 − 1 and one past the cap are refused at both doors; the cap itself works.
    for n in [u32::MAX, 16_385] {
        assert_eq!(search_object(&ch, num(n), None).await, Err(Code::InvalidArgument), "num {n}");
        for a in &agents {
            assert_eq!(agent_search(&a.channel().await, q.clone(), num(n)).await, Err(Code::InvalidArgument));
        }
    }
    assert_eq!(search_object(&ch, num(16_384), None).await, Ok(20));
    assert!(agent_search(&direct, q.clone(), num(16_384)).await.unwrap() > 0);

    // min_num not reached → NOT_FOUND; reached → the results.
    let min = |n, m| search::Config { num: n, min_num: m, ..Default::default() };
    assert_eq!(search_object(&ch, min(30, 25), None).await, Err(Code::NotFound));
    assert_eq!(search_object(&ch, min(10, 5), None).await, Ok(10));
    assert_eq!(search_object(&ch, min(5, 6), None).await, Err(Code::InvalidArgument), "min_num above num");
    assert_eq!(agent_search(&direct, q.clone(), min(100, 21)).await, Err(Code::NotFound));

    // ratio, epsilon and every aggregation algorithm are accepted; bad values are not.
    for alg in 0..=4 {
        let cfg =
            search::Config { num: 5, ratio: Some(0.5), epsilon: 0.3, aggregation_algorithm: alg, ..Default::default() };
        assert_eq!(search_object(&ch, cfg.clone(), None).await, Ok(5), "algorithm {alg}");
        assert_eq!(agent_search(&direct, q.clone(), cfg).await.map(|n| n > 0), Ok(true));
    }
    for bad in [
        search::Config { ratio: Some(f32::NAN), ..Default::default() },
        search::Config { epsilon: f32::INFINITY, ..Default::default() },
        search::Config { aggregation_algorithm: 7, ..Default::default() },
        search::Config { request_id: "r".repeat(600), ..Default::default() },
    ] {
        assert_eq!(search_object(&ch, bad.clone(), None).await, Err(Code::InvalidArgument), "{bad:?}");
        assert_eq!(agent_search(&direct, q.clone(), bad).await, Err(Code::InvalidArgument));
    }

    // Vectors: wrong length, NaN, infinity → INVALID_ARGUMENT at the agent, and through the
    // gateway (a request-named vectorizer of another dimension).
    assert_eq!(agent_search(&direct, vector(1, DIMS + 1), num(3)).await, Err(Code::InvalidArgument));
    let mut nan = q.clone();
    nan[3] = f32::NAN;
    assert_eq!(agent_search(&direct, nan.clone(), num(3)).await, Err(Code::InvalidArgument));
    let mut inf = q.clone();
    inf[0] = f32::NEG_INFINITY;
    for v in [nan, inf, vector(2, DIMS - 1)] {
        let r = InsertClient::new(direct.clone()).insert(insert_req("bad", v)).await;
        assert_eq!(r.unwrap_err().code(), Code::InvalidArgument);
    }
    assert_eq!(search_object(&ch, num(3), Some(target(&narrow.addr()))).await, Err(Code::InvalidArgument));

    // Ids over 512 bytes, at both doors.
    let long = "x".repeat(513);
    let ok_len = "y".repeat(512);
    assert!(insert(&direct, &ok_len, q.clone()).await.is_ok());
    assert_eq!(insert(&direct, &long, q.clone()).await.unwrap_err().code(), Code::InvalidArgument);
    let exists = ObjectClient::new(direct.clone()).exists(object::Id { id: long.clone() }).await;
    assert_eq!(exists.unwrap_err().code(), Code::InvalidArgument);
    let req = insert::ObjectRequest {
        object: Some(object::Blob { id: long.clone(), object: b"long id".to_vec() }),
        config: None,
        vectorizer: None,
    };
    assert_eq!(FilterClient::new(ch.clone()).insert_object(req).await.unwrap_err().code(), Code::InvalidArgument);

    // Targets: ports past 65535 are invalid, hosts not allowed are refused (no open relay).
    let port_70000 = filter::Target { host: "127.0.0.1".into(), port: 70_000 };
    assert_eq!(search_object(&ch, num(3), Some(port_70000.clone())).await, Err(Code::InvalidArgument));
    let egress = |t: filter::Target| search::Config {
        num: 3,
        egress_filters: Some(filter::Config { targets: vec![t] }),
        ..Default::default()
    };
    assert_eq!(search_object(&ch, egress(port_70000), None).await, Err(Code::InvalidArgument));
    let metadata = filter::Target { host: "169.254.169.254".into(), port: 80 };
    assert_eq!(search_object(&ch, num(3), Some(metadata.clone())).await, Err(Code::PermissionDenied));
    assert_eq!(search_object(&ch, egress(metadata), None).await, Err(Code::PermissionDenied));
    let unlisted = target(&format!("127.0.0.1:{}", common::free_port()));
    assert_eq!(search_object(&ch, num(3), Some(unlisted)).await, Err(Code::PermissionDenied));
    // The configured vectorizer named in a request is allowed.
    assert_eq!(search_object(&ch, num(3), Some(target(&vec.addr()))).await, Ok(3));

    // A message over --max-message-bytes is refused before it is decoded.
    let big = search::ObjectRequest { object: vec![b'a'; 2 << 20], config: None, vectorizer: None };
    let r = FilterClient::new(ch.clone()).search_object(big).await;
    assert_eq!(r.unwrap_err().code(), Code::OutOfRange);

    // Everything is still up and answering.
    for a in &mut agents {
        assert!(a.proc.child.try_wait().unwrap().is_none(), "{} died:\n{}", a.proc.name, a.log());
        IndexClient::new(a.channel().await).index_info(Empty {}).await.unwrap();
    }
    assert_eq!(search_object(&ch, num(3), None).await, Ok(3));
}
