//! Snapshots on storage that misbehaves, against real redis-server and `kim-worker` processes:
//! CURRENT visible before its files (NFS-like), a matcher starting on a corrupt CURRENT, and a
//! corrupt snapshot arriving while a label is served.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use kim_client::{Client, Match};

fn ask(descriptor: Vec<u8>) -> Match {
    Match {
        descriptor,
        version: 59,
        label: "faces".into(),
        limit: 3,
        luna_request_id: None,
        threshold: None,
        timeout: Duration::from_secs(10),
    }
}

/// Replaces CURRENT the way a build does (temp file, rename).
fn set_current(label_dir: &Path, id: &str) {
    let tmp = label_dir.join(".CURRENT.test");
    std::fs::write(&tmp, format!("{id}\n")).unwrap();
    std::fs::rename(&tmp, label_dir.join("CURRENT")).unwrap();
}

fn flip_byte(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x5a;
    std::fs::write(path, b).unwrap();
}

/// The snapshot ids every live matcher of `faces` reports, with what each says it rejected.
async fn served(client: &Client) -> Vec<(String, Option<String>)> {
    let mut v: Vec<_> =
        client.label_info("faces").await.unwrap().into_iter().map(|i| (i.snapshot, i.rejected)).collect();
    v.sort();
    v
}

/// Waits until every matcher reports `want`, at most `limit`.
async fn wait_served(client: &Client, want: &[(String, Option<String>)], limit: Duration, what: &str) {
    let t = std::time::Instant::now();
    let mut seen = Vec::new();
    while t.elapsed() < limit {
        seen = served(client).await;
        if seen == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {limit:?} waiting for {what}: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_visible_before_its_files_is_served_by_every_matcher_once_they_appear() {
    let f = Fixture::new(300);
    let redis = Redis::start(f.path());
    let a = Matcher::start("a", f.path(), &f.storage, &redis, &[]);
    let b = Matcher::start("b", f.path(), &f.storage, &redis, &[]);
    a.wait_ready();
    b.wait_ready();
    let client = Client::connect(&redis.url()).await.unwrap();
    let old = served(&client).await[0].0.clone();

    // Build the next snapshot elsewhere, then show CURRENT 2 s before the snapshot directory,
    // and the manifest 1 s before the data files.
    let stage = f.path().join("stage");
    let out = worker(&[
        "index",
        "--label",
        "faces",
        "--storage",
        stage.to_str().unwrap(),
        "--source",
        f.data.join("base.npy").to_str().unwrap(),
        "--ids",
        f.data.join("ids.txt").to_str().unwrap(),
        "--version",
        "59",
        "--threads",
        "2",
    ]);
    let new: String = serde_json::from_str::<serde_json::Value>(&out).unwrap()["snapshot"].as_str().unwrap().into();
    let label_dir = f.storage.join("default/faces");
    set_current(&label_dir, &new);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(served(&client).await, vec![(old.clone(), None), (old.clone(), None)], "nothing to load yet");
    let src = stage.join("default/faces/snapshots").join(&new);
    let dst = label_dir.join("snapshots").join(&new);
    let part = label_dir.join("snapshots/.arriving");
    std::fs::create_dir_all(&part).unwrap();
    std::fs::copy(src.join("manifest.json"), part.join("manifest.json")).unwrap();
    std::fs::rename(&part, &dst).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(served(&client).await[0].0, old, "the data files are still missing");
    for name in ["ids.txt", "vectors.bin", "graph.bin"] {
        std::fs::copy(src.join(name), label_dir.join(name)).unwrap();
        std::fs::rename(label_dir.join(name), dst.join(name)).unwrap();
    }
    let want = [(new.clone(), None), (new.clone(), None)];
    wait_served(&client, &want, Duration::from_secs(15), "both matchers to serve the new snapshot").await;
    for m in [&a, &b] {
        let log = m.proc.log_text();
        assert!(log.contains("not readable yet"), "{log}");
        assert!(!log.contains("26308"), "a late snapshot is not corrupt: {log}");
        assert_eq!(m.metric("kim_matcher_snapshots_rejected_total{label=\"faces\"}"), 0.0);
    }
    let probes = f.matrix("mated.npy");
    let r = client.match_descriptor(ask(probes.row(0).to_vec())).await.unwrap();
    assert_eq!(r.status_code, 201, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matcher_started_on_a_corrupt_current_serves_the_previous_snapshot() {
    let f = Fixture::new(300);
    let first = f.index("faces", "base.npy")["snapshot"].as_str().unwrap().to_string();
    let bad = f.index("faces", "base.npy")["snapshot"].as_str().unwrap().to_string();
    let label_dir = f.storage.join("default/faces");
    flip_byte(&label_dir.join("snapshots").join(&bad).join("vectors.bin"));

    let redis = Redis::start(f.path());
    let m = Matcher::start("m", f.path(), &f.storage, &redis, &[]);
    m.wait_ready();
    let client = Client::connect(&redis.url()).await.unwrap();
    assert_eq!(served(&client).await, vec![(first.clone(), Some(bad.clone()))]);
    // The label's served hash says the same, for the operator's status.
    let mut conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let entries: Vec<(String, String)> =
        redis::cmd("HGETALL").arg(kim_api::served_key("", "faces")).query_async(&mut conn).await.unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry: kim_api::Served = serde_json::from_str(&entries[0].1).unwrap();
    assert_eq!((entry.info.snapshot.as_str(), entry.info.rejected.as_deref()), (first.as_str(), Some(bad.as_str())));
    assert!(entry.until > kim_api::unix_ms(), "a live matcher's entry is fresh: {entry:?}");
    let (code, body) = m.get("/readyz").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains(&format!("CURRENT names {bad}")) && body.contains(&format!("serving {first}")), "{body}");
    assert_eq!(m.metric("kim_matcher_snapshot_fallback{label=\"faces\"}"), 1.0);
    assert_eq!(m.metric("kim_matcher_snapshots_rejected_total{label=\"faces\"}"), 1.0);
    assert!(m.proc.log_text().contains("error_code=26308"));
    let ids = f.lines("ids.txt");
    let base = f.matrix("base.npy");
    let r = client.match_descriptor(ask(base.row(11).to_vec())).await.unwrap();
    assert_eq!((r.status_code, r.result[0].0.as_str()), (201, ids[11].as_str()), "{r:?}");

    // A good build replaces the fallback and clears the mark.
    let good = f.index("faces", "base.npy")["snapshot"].as_str().unwrap().to_string();
    wait_served(&client, &[(good.clone(), None)], Duration::from_secs(10), "the good build to be served").await;
    assert_eq!(m.metric("kim_matcher_snapshot_fallback{label=\"faces\"}"), 0.0);
    assert!(!m.get("/readyz").unwrap().1.contains("CURRENT names"));

    // A corrupt snapshot arriving while served: rejected with 26308, the served one kept.
    let worse = "29991231t000000000z-badbad";
    let src = label_dir.join("snapshots").join(&good);
    let dst = label_dir.join("snapshots").join(worse);
    std::fs::create_dir_all(&dst).unwrap();
    for name in ["ids.txt", "vectors.bin", "graph.bin", "manifest.json"] {
        std::fs::copy(src.join(name), dst.join(name)).unwrap();
    }
    let manifest = std::fs::read_to_string(dst.join("manifest.json")).unwrap().replace(&good, worse);
    std::fs::write(dst.join("manifest.json"), manifest).unwrap();
    flip_byte(&dst.join("graph.bin"));
    set_current(&label_dir, worse);
    wait_until(Duration::from_secs(10), "the corrupt snapshot to be rejected", || {
        m.metric("kim_matcher_snapshots_rejected_total{label=\"faces\"}") == 2.0
    });
    let want = [(good.clone(), Some(worse.to_string()))];
    wait_served(&client, &want, Duration::from_secs(5), "the registry to say so").await;
    let r = client.match_descriptor(ask(base.row(11).to_vec())).await.unwrap();
    assert_eq!((r.status_code, r.result[0].0.as_str()), (201, ids[11].as_str()), "{r:?}");
    let log = m.proc.log_text();
    assert_eq!(log.matches("error_code=26308").count(), 2, "each bad snapshot is reported once: {log}");
}
