//! `kim-worker snapshot list | rollback | export | import` on file storage, against real
//! redis-server and `kim-worker match` processes.

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
        limit: 5,
        luna_request_id: None,
        threshold: None,
        timeout: Duration::from_secs(10),
    }
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn snap(args: &[&str], storage: &Path) -> serde_json::Value {
    let mut all = vec!["snapshot"];
    all.extend_from_slice(args);
    all.extend(["--storage", storage.to_str().unwrap(), "--label", "faces"]);
    json(&worker(&all))
}

fn snap_fails(args: &[&str], storage: &Path) -> String {
    let mut all = vec!["snapshot"];
    all.extend_from_slice(args);
    all.extend(["--storage", storage.to_str().unwrap(), "--label", "faces"]);
    worker_fails(&all)
}

fn build(f: &Fixture, keep: &str) -> String {
    let out = worker(&[
        "index",
        "--label",
        "faces",
        "--storage",
        f.storage.to_str().unwrap(),
        "--source",
        f.data.join("base.npy").to_str().unwrap(),
        "--ids",
        f.data.join("ids.txt").to_str().unwrap(),
        "--version",
        "59",
        "--threads",
        "2",
        "--keep",
        keep,
    ]);
    json(&out)["snapshot"].as_str().unwrap().to_string()
}

fn ids_of(list: &serde_json::Value) -> Vec<String> {
    list["snapshots"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_under_load_fails_no_request_and_gc_keeps_the_target() {
    let f = Fixture::new(500);
    let first = snap(&["list"], &f.storage)["current"].as_str().unwrap().to_string();
    let second = build(&f, "3");
    let list = snap(&["list"], &f.storage);
    assert_eq!(ids_of(&list), vec![first.clone(), second.clone()]);
    assert_eq!(list["current"], second.as_str());
    assert_eq!(list["snapshots"][0]["vectors"], 2000);
    assert_eq!(
        (list["snapshots"][0]["current"].as_bool(), list["snapshots"][1]["current"].as_bool()),
        (Some(false), Some(true))
    );

    let redis = Redis::start(f.path());
    let m = Matcher::start("m", f.path(), &f.storage, &redis, &[]);
    m.wait_ready();
    let client = Client::connect(&redis.url()).await.unwrap();
    assert_eq!(client.label_info("faces").await.unwrap()[0].snapshot, second);

    // Bounded load (count and time) while the label rolls back: every request answered.
    let probes = f.matrix("mated.npy");
    let rows: Vec<Vec<u8>> = (0..probes.rows).map(|i| probes.row(i).to_vec()).collect();
    let load = load_until_serving(&client, rows, ask, ("faces", &first), 400, Duration::from_secs(20));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = snap(&["rollback", "--to", &first], &f.storage);
    assert_eq!((out["from"].as_str(), out["to"].as_str()), (Some(second.as_str()), Some(first.as_str())));
    assert_eq!(out["vectors"].as_u64(), Some(f.lines("ids.txt").len() as u64), "{out}");
    let load = load.await.unwrap();
    load.assert_clean(400);
    eprintln!("rollback under load: {} requests, 0 failed", load.answered);
    assert!(m.proc.log_text().contains("snapshot swapped in"));
    let list = snap(&["list"], &f.storage);
    assert_eq!((list["current"].as_str(), list["pinned"].as_str()), (Some(first.as_str()), Some(first.as_str())));

    // Keep-N never removes the pinned snapshot: two builds with --keep 2 leave the pinned one
    // and the live one, even though the pinned one is the oldest.
    let third = build(&f, "2");
    let fourth = build(&f, "2");
    let list = snap(&["list"], &f.storage);
    assert_eq!(ids_of(&list), vec![first.clone(), fourth.clone()], "{list}");
    assert_ne!(third, fourth);

    // Rollback refuses what it cannot serve, and leaves CURRENT alone.
    let err = snap_fails(&["rollback", "--to", "20200101t000000000z-000000"], &f.storage);
    assert!(err.contains("has no snapshot"), "{err}");
    let err = snap_fails(&["rollback", "--to", "../x"], &f.storage);
    assert!(err.contains("../x"), "{err}");
    let vb = f.storage.join("default/faces/snapshots").join(&first).join("vectors.bin");
    let mut b = std::fs::read(&vb).unwrap();
    b[100] ^= 1;
    std::fs::write(&vb, b).unwrap();
    let report = f.path().join("termination-log");
    let err =
        snap_fails(&["rollback", "--to", &first, "--termination-message-path", report.to_str().unwrap()], &f.storage);
    assert!(err.contains("corrupt") && err.contains("vectors.bin"), "{err}");
    // The operator reads why from the termination message.
    let written = json(&std::fs::read_to_string(&report).unwrap());
    assert!(written["error"].as_str().unwrap().contains("vectors.bin"), "{written}");
    assert_eq!(snap(&["list"], &f.storage)["current"].as_str(), Some(fourth.as_str()));
    let err = worker_fails(&["snapshot", "list", "--storage", f.storage.to_str().unwrap(), "--label", "a/b"]);
    assert!(err.contains("label"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_into_empty_storage_serves_identical_answers() {
    let f = Fixture::new(500);
    let out = f.path().join("export");
    let exported = snap(&["export", "--out", out.to_str().unwrap()], &f.storage);
    let id = exported["snapshot"].as_str().unwrap().to_string();
    assert_eq!(exported["vectors"], 2000);
    let err = snap_fails(&["export", "--out", out.to_str().unwrap()], &f.storage);
    assert!(err.contains("not empty"), "{err}");

    // A tampered copy is refused and nothing is stored.
    let other = f.path().join("other-storage");
    let bad = f.path().join("bad-export");
    std::fs::create_dir_all(&bad).unwrap();
    for e in std::fs::read_dir(&out).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), bad.join(e.file_name())).unwrap();
    }
    let g = bad.join("graph.bin");
    let mut b = std::fs::read(&g).unwrap();
    b[40] ^= 0x10;
    std::fs::write(&g, b).unwrap();
    let err = snap_fails(&["import", "--from", bad.to_str().unwrap()], &other);
    assert!(err.contains("corrupt") && err.contains("graph.bin"), "{err}");
    assert!(!other.join("default/faces/snapshots").join(&id).exists());
    let err = worker_fails(&[
        "snapshot",
        "import",
        "--from",
        out.to_str().unwrap(),
        "--storage",
        other.to_str().unwrap(),
        "--label",
        "hands",
    ]);
    assert!(err.contains("belongs to label \"faces\""), "{err}");

    let imported = snap(&["import", "--from", out.to_str().unwrap()], &other);
    assert_eq!((imported["snapshot"].as_str(), imported["current"].as_bool()), (Some(id.as_str()), Some(true)));
    let list = snap(&["list"], &other);
    assert_eq!((ids_of(&list), list["current"].as_str()), (vec![id.clone()], Some(id.as_str())));

    // The original and the imported copy, each behind its own Redis, answer alike.
    let (r1, r2) = (Redis::start(f.path()), Redis::start(&f.path().join("data")));
    let m1 = Matcher::start("m1", f.path(), &f.storage, &r1, &[]);
    let m2 = Matcher::start("m2", &f.path().join("data"), &other, &r2, &[]);
    m1.wait_ready();
    m2.wait_ready();
    let (c1, c2) = (Client::connect(&r1.url()).await.unwrap(), Client::connect(&r2.url()).await.unwrap());
    assert_eq!(c2.label_info("faces").await.unwrap()[0].snapshot, id);
    for set in ["mated.npy", "nonmated.npy"] {
        let probes = f.matrix(set);
        for i in 0..probes.rows {
            let a = c1.match_descriptor(ask(probes.row(i).to_vec())).await.unwrap();
            let b = c2.match_descriptor(ask(probes.row(i).to_vec())).await.unwrap();
            assert_eq!(a.status_code, 201, "{a:?}");
            assert_eq!(a.result, b.result, "{set} probe {i}");
        }
    }
}
