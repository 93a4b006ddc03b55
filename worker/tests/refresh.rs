//! Incremental refresh against real processes: `kim-worker refresh` writes deltas beside the
//! live snapshot, `kim-worker match` applies them without a reload while serving, and
//! `refresh` rebuilds instead when the tail grows past its fraction or the chain is damaged.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kim_client::{Client, Match};
use kim_index::Matrix;

fn ask(descriptor: Vec<u8>, limit: u32) -> Match {
    Match {
        descriptor,
        version: 59,
        label: "faces".into(),
        limit,
        threshold: None,
        luna_request_id: None,
        timeout: Duration::from_secs(10),
    }
}

/// Writes `rows` of `m` plus `extra` as a new source with its ids; returns (source, ids) paths.
fn write_source(
    dir: &Path,
    name: &str,
    m: &Matrix,
    rows: &[usize],
    extra: &[(String, Vec<u8>)],
    ids: &[String],
) -> (PathBuf, PathBuf) {
    let mut data = Vec::new();
    let mut out_ids = Vec::new();
    for &r in rows {
        data.extend_from_slice(m.row(r));
        out_ids.push(ids[r].clone());
    }
    for (id, v) in extra {
        data.extend_from_slice(v);
        out_ids.push(id.clone());
    }
    let src = dir.join(format!("{name}.npy"));
    Matrix { encoding: m.encoding, rows: out_ids.len(), dims: m.dims, data }.write_npy(&src).unwrap();
    let idp = dir.join(format!("{name}.txt"));
    std::fs::write(&idp, out_ids.join("\n") + "\n").unwrap();
    (src, idp)
}

fn refresh_args<'a>(storage: &'a str, source: &'a str, ids: Option<&'a str>, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["refresh", "--label", "faces", "--storage", storage, "--source", source, "--version", "59"];
    if let Some(i) = ids {
        a.extend(["--ids", i]);
    }
    a.extend(["--threads", "2"]);
    a.extend(extra);
    a
}

fn refresh_with(storage: &Path, source: &Path, ids: Option<&Path>, extra: &[&str]) -> serde_json::Value {
    let (st, src) = (storage.to_str().unwrap(), source.to_str().unwrap());
    let out = worker(&refresh_args(st, src, ids.map(|p| p.to_str().unwrap()), extra));
    serde_json::from_str(out.trim()).unwrap()
}

fn refresh(storage: &Path, source: &Path, ids: Option<&Path>) -> serde_json::Value {
    refresh_with(storage, source, ids, &[])
}

/// Top hit of `descriptor`, polled until `want` holds or `limit` passes; returns the time it took.
async fn until_top(c: &Client, descriptor: &[u8], limit: Duration, want: impl Fn(&str, f64) -> bool) -> Duration {
    let t = Instant::now();
    loop {
        let r = c.match_descriptor(ask(descriptor.to_vec(), 1)).await.unwrap();
        assert_eq!(r.status_code, 201, "{r:?}");
        if want(&r.result[0].0, r.result[0].1) {
            return t.elapsed();
        }
        assert!(t.elapsed() < limit, "still {:?} after {limit:?}", r.result);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn live_deltas(info: &[kim_api::LabelInfo]) -> Vec<u64> {
    info.iter().map(|i| i.deltas).collect()
}

/// A bounded load of matches running until `stop` (or its own limits): (answered, failures).
fn load(c: &Client, rows: Vec<Vec<u8>>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    let c = c.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let (mut answered, mut failed) = (0usize, Vec::new());
        while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(120) && answered < 200_000 {
            let batch: Vec<_> =
                (0..4).map(|k| c.match_descriptor(ask(rows[(answered + k) % rows.len()].clone(), 5))).collect();
            for r in futures::future::join_all(batch).await {
                let r = r.unwrap();
                if r.status_code != 201 || r.result.len() != 5 {
                    failed.push(format!("{r:?}"));
                }
                answered += 1;
            }
        }
        (answered, failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_on_a_100k_label_apply_without_reload_under_load() {
    let f = Fixture::new(25_000);
    let redis = Redis::start(f.path());
    let m = Matcher::start("m1", f.path(), &f.storage, &redis, &[]);
    m.wait_ready();
    let client = Client::connect(&redis.url()).await.unwrap();
    let base = f.matrix("base.npy");
    assert_eq!(base.rows, 100_000);
    let ids = f.lines("ids.txt");
    let fresh = f.matrix("nonmated.npy");
    let probes = f.matrix("mated.npy");
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&client, (0..probes.rows).map(|i| probes.row(i).to_vec()).collect(), stop.clone());
    let all: Vec<usize> = (0..base.rows).collect();

    // Enrol one new descriptor: matchable at similarity ~1 within 5 s of the refresh starting.
    let new0 = ("enrolled-0".to_string(), fresh.row(0).to_vec());
    let (src, idp) = write_source(f.path(), "v1", &base, &all, std::slice::from_ref(&new0), &ids);
    let t0 = Instant::now();
    let out = refresh(&f.storage, &src, Some(&idp));
    assert_eq!(
        (out["mode"].as_str(), out["delta"].as_u64(), out["added"].as_u64()),
        (Some("delta"), Some(1), Some(1)),
        "{out}"
    );
    until_top(&client, &new0.1, Duration::from_secs(5), |id, s| id == "enrolled-0" && s > 0.9999).await;
    let took = t0.elapsed();
    eprintln!(
        "enrolled descriptor matchable {took:?} after the refresh started (refresh itself {:.2}s)",
        out["seconds"]
    );
    assert!(took < Duration::from_secs(5), "{took:?}");

    // Remove an id: never returned again, even for its own descriptor.
    let gone = ids[0].clone();
    let (src, idp) = write_source(f.path(), "v2", &base, &all[1..], std::slice::from_ref(&new0), &ids);
    let out = refresh(&f.storage, &src, Some(&idp));
    assert_eq!(
        (out["delta"].as_u64(), out["removed"].as_u64(), out["added"].as_u64()),
        (Some(2), Some(1), Some(0)),
        "{out}"
    );
    until_top(&client, base.row(0), Duration::from_secs(5), |id, _| id != gone).await;
    for _ in 0..20 {
        let r = client.match_descriptor(ask(base.row(0).to_vec(), 20)).await.unwrap();
        assert_eq!(r.result.len(), 20, "limit results still come back");
        assert!(r.result.iter().all(|(id, _)| *id != gone), "{gone} returned after its removal: {r:?}");
    }

    // A refresh that dies half-way through writing (file size limit: EFBIG on vectors.bin)
    // leaves a temp dir that matchers ignore; the next refresh applies.
    let more: Vec<(String, Vec<u8>)> = (1..4).map(|i| (format!("enrolled-{i}"), fresh.row(i).to_vec())).collect();
    let extra: Vec<_> = std::iter::once(new0.clone()).chain(more.iter().cloned()).collect();
    let (src, idp) = write_source(f.path(), "v3", &base, &all[1..], &extra, &ids);
    let st = f.storage.to_str().unwrap().to_string();
    let out = Command::new("bash")
        .args(["-c", "trap '' XFSZ; ulimit -f 1; exec \"$@\"", "bash"])
        .arg(worker_bin())
        .args(refresh_args(&st, src.to_str().unwrap(), Some(idp.to_str().unwrap()), &[]))
        .env("KIM_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("File too large"), "{stderr}");
    let snap = std::fs::read_to_string(f.storage.join("default/faces/CURRENT")).unwrap().trim().to_string();
    let deltas_dir = f.storage.join("default/faces/deltas").join(&snap);
    let names = || -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(&deltas_dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    };
    let left = names();
    assert!(left.len() == 3 && left[0].starts_with(".tmp-00000003-"), "{left:?}");
    tokio::time::sleep(Duration::from_millis(600)).await; // three reload intervals
    assert_eq!(live_deltas(&client.label_info("faces").await.unwrap()), vec![2]);
    let r = client.match_descriptor(ask(more[0].1.clone(), 1)).await.unwrap();
    assert_ne!(r.result[0].0, "enrolled-1", "a half-written delta was applied");
    let out = refresh(&f.storage, &src, Some(&idp));
    assert_eq!((out["delta"].as_u64(), out["added"].as_u64()), (Some(3), Some(3)), "{out}");
    for (id, v) in &more {
        until_top(&client, v, Duration::from_secs(5), |got, s| got == id && s > 0.9999).await;
    }
    assert_eq!(names(), ["00000001", "00000002", "00000003"], "the temp dir was collected");

    stop.store(true, Ordering::SeqCst);
    let (answered, failed) = traffic.await.unwrap();
    eprintln!("{answered} requests under load during the refreshes, {} failed", failed.len());
    assert!(answered > 100, "{answered}");
    assert!(failed.is_empty(), "{} failed, first {:?}", failed.len(), failed.first());

    // What the operator can show: registry value, metrics, readiness.
    let info = client.label_info("faces").await.unwrap();
    assert_eq!(info.len(), 1);
    let i = &info[0];
    assert_eq!((i.snapshot.as_str(), i.deltas, i.tail, i.tombstones, i.vectors), (snap.as_str(), 3, 4, 1, 100_003));
    assert_eq!(m.metric("kim_matcher_deltas_applied{label=\"faces\"}"), 3.0);
    assert_eq!(m.metric("kim_matcher_tail_vectors{label=\"faces\"}"), 4.0);
    assert_eq!(m.metric("kim_matcher_tombstones{label=\"faces\"}"), 1.0);
    assert_eq!(m.metric("kim_matcher_index_vectors{label=\"faces\"}"), 100_003.0);
    let (_, ready) = m.get("/readyz").unwrap();
    assert!(ready.contains(&format!("faces snapshot={snap} deltas=3 tail=4 tombstones=1")), "{ready}");
    let log = m.proc.log_text();
    assert_eq!(log.matches("snapshot loaded").count(), 1, "no reload: {log}");
    assert!(!log.contains("snapshot swapped in") && !log.contains("delta rejected"), "{log}");
    assert_eq!(log.matches("delta applied").count(), 3, "{log}");
}

/// A directory source grows by files; the tail passing its fraction, or a damaged delta in the
/// chain, makes `refresh` rebuild; a matcher started late serves the deltas from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_source_fraction_rebuild_and_damaged_deltas() {
    let f = Fixture::new(500);
    let base = f.matrix("base.npy");
    // 200 rows that are not in the label: the non-mated probes, then the mated ones.
    let fresh = {
        let (a, b) = (f.matrix("nonmated.npy"), f.matrix("mated.npy"));
        Matrix { rows: a.rows + b.rows, data: [a.data, b.data].concat(), ..a }
    };
    let src = f.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::copy(f.data.join("base.npy"), src.join("a.npy")).unwrap();
    std::fs::copy(f.data.join("ids.txt"), src.join("a.ids")).unwrap();
    let part = |name: &str, rows: std::ops::Range<usize>| {
        let data = rows.clone().flat_map(|r| fresh.row(r).to_vec()).collect();
        Matrix { encoding: base.encoding, rows: rows.len(), dims: base.dims, data }.write_npy(&src.join(name)).unwrap();
    };
    let out = refresh(&f.storage, &src, None);
    assert_eq!(out["mode"], "unchanged", "same rows and ids as the fixture's build: {out}");
    let redis = Redis::start(f.path());
    let m = Matcher::start("m1", f.path(), &f.storage, &redis, &[]);
    m.wait_ready();
    let client = Client::connect(&redis.url()).await.unwrap();

    // Append a file: a delta of its rows, ids <stem>-<row>.
    part("b.npy", 0..10);
    let out = refresh(&f.storage, &src, None);
    assert_eq!((out["mode"].as_str(), out["added"].as_u64()), (Some("delta"), Some(10)), "{out}");
    until_top(&client, fresh.row(3), Duration::from_secs(5), |id, _| id == "b-3").await;
    // A matcher started now serves the delta from its first request.
    let mut late = Matcher::start("m2", f.path(), &f.storage, &redis, &[]);
    late.wait_ready();
    assert_eq!(late.metric("kim_matcher_deltas_applied{label=\"faces\"}"), 1.0);
    assert!(late.proc.log_text().contains("deltas=1"), "loaded with its delta: {}", late.proc.log_text());
    late.proc.signal("TERM");
    assert!(late.proc.wait_exit(Duration::from_secs(10)).is_some_and(|s| s.success()));

    // 150 more rows: tail 160 of 2000 passes 5 %, so the label is rebuilt with everything
    // (keeping one snapshot: the old one goes, and its deltas with it).
    part("c.npy", 10..160);
    let snap1 = std::fs::read_to_string(f.storage.join("default/faces/CURRENT")).unwrap();
    assert!(f.storage.join("default/faces/deltas").join(snap1.trim()).join("00000001").is_dir());
    let out = refresh_with(&f.storage, &src, None, &["--keep", "1"]);
    assert_eq!(out["mode"], "rebuild", "{out}");
    assert!(out["reason"].as_str().unwrap().contains("over 0.05"), "{out}");
    assert_eq!(out["vectors"].as_u64(), Some(2160));
    until_top(&client, fresh.row(100), Duration::from_secs(10), |id, _| id == "c-90").await;
    until_top(&client, fresh.row(3), Duration::from_secs(5), |id, _| id == "b-3").await;
    assert!(!f.storage.join("default/faces/snapshots").join(snap1.trim()).exists(), "old snapshot collected");
    assert!(!f.storage.join("default/faces/deltas").join(snap1.trim()).exists(), "old deltas collected");
    assert!(m.proc.log_text().contains("snapshot swapped in"));

    // A delta damaged on storage is rejected (26308), the matcher keeps serving without it,
    // and the next refresh rebuilds rather than extend a broken chain.
    part("d.npy", 160..165);
    let out = refresh(&f.storage, &src, None);
    assert_eq!((out["mode"].as_str(), out["delta"].as_u64()), (Some("delta"), Some(1)), "{out}");
    until_top(&client, fresh.row(162), Duration::from_secs(5), |id, _| id == "d-2").await;
    let snap2 = out["snapshot"].as_str().unwrap().to_string();
    let dd = f.storage.join("default/faces/deltas").join(&snap2);
    let bad = dd.join(".bad");
    std::fs::create_dir(&bad).unwrap();
    for name in ["manifest.json", "added.txt", "vectors.bin", "removed.txt"] {
        std::fs::copy(dd.join("00000001").join(name), bad.join(name)).unwrap();
    }
    let mp = bad.join("manifest.json");
    let mut man: serde_json::Value = serde_json::from_slice(&std::fs::read(&mp).unwrap()).unwrap();
    man["seq"] = 2.into();
    std::fs::write(&mp, serde_json::to_vec(&man).unwrap()).unwrap();
    let mut v = std::fs::read(bad.join("vectors.bin")).unwrap();
    v[7] ^= 0xff;
    std::fs::write(bad.join("vectors.bin"), v).unwrap();
    std::fs::rename(&bad, dd.join("00000002")).unwrap();
    wait_until(Duration::from_secs(5), "the damaged delta to be rejected", || {
        m.metric("kim_matcher_deltas_rejected_total{label=\"faces\"}") == 1.0
    });
    let log = m.proc.log_text();
    assert!(log.contains("delta rejected") && log.contains("error_code=26308"), "{log}");
    assert_eq!(live_deltas(&client.label_info("faces").await.unwrap()), vec![1]);
    until_top(&client, fresh.row(162), Duration::from_secs(1), |id, _| id == "d-2").await;
    part("e.npy", 165..168);
    let out = refresh(&f.storage, &src, None);
    assert_eq!(out["mode"], "rebuild", "{out}");
    assert!(out["reason"].as_str().unwrap().contains("delta chain unusable"), "{out}");
    until_top(&client, fresh.row(166), Duration::from_secs(10), |id, _| id == "e-1").await;
    assert_eq!(live_deltas(&client.label_info("faces").await.unwrap()), vec![0]);
}
