//! Snapshots in S3-compatible object storage, against a real SeaweedFS S3 gateway, a real
//! redis-server and real `kim-worker` processes. Builds and matchers share no directory: each
//! has its own local cache, filled from the bucket.

mod common;
mod s3_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use kim_client::{Client, Match};
use s3_support::*;

const STORAGE: &str = "s3://kim/snaps";

fn ask(descriptor: Vec<u8>) -> Match {
    Match {
        descriptor,
        version: 59,
        label: "faces".into(),
        limit: 3,
        threshold: None,
        luna_request_id: None,
        timeout: Duration::from_secs(10),
    }
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Runs kim-worker on the bucket with `cache` as its cache; returns its JSON line and its log.
fn on_s3(weed: &Weed, cache: &Path, args: &[&str]) -> (serde_json::Value, String) {
    let flags = weed.flags();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(flags.iter().map(String::as_str));
    all.extend(["--cache-dir", cache.to_str().unwrap()]);
    let out = kim(&all, &[]);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "kim-worker {args:?} failed: {log}");
    (json(&String::from_utf8_lossy(&out.stdout)), log)
}

/// The `secs=` of the first log line containing `what`.
fn secs_of(log: &str, what: &str) -> f64 {
    let line = log.lines().find(|l| l.contains(what)).unwrap_or_else(|| panic!("no {what:?} in {log}"));
    let v = line.split_whitespace().find_map(|w| w.strip_prefix("secs=")).unwrap_or_else(|| panic!("{line}"));
    v.parse().unwrap()
}

fn build(f: &Fixture, weed: &Weed, cache: &Path) -> String {
    let (base, ids) = (f.data.join("base.npy"), f.data.join("ids.txt"));
    let (out, log) = on_s3(
        weed,
        cache,
        &[
            "index",
            "--label",
            "faces",
            "--storage",
            STORAGE,
            "--source",
            base.to_str().unwrap(),
            "--ids",
            ids.to_str().unwrap(),
            "--version",
            "59",
            "--threads",
            "2",
        ],
    );
    eprintln!("upload of snapshot {}: {:.3}s", out["snapshot"], secs_of(&log, "snapshot uploaded"));
    out["snapshot"].as_str().unwrap().to_string()
}

fn matcher_on(dir: &Path, weed: &Weed, storage: &str, redis: &Redis, name: &str, cache: &Path) -> Matcher {
    let mut extra = weed.flags();
    extra.extend(["--cache-dir".into(), cache.to_str().unwrap().into(), "--label".into(), "faces".into()]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    Matcher::start(name, dir, Path::new(storage), redis, &extra)
}

async fn served(client: &Client) -> Vec<(String, Option<String>)> {
    client.label_info("faces").await.unwrap().into_iter().map(|i| (i.snapshot, i.rejected)).collect()
}

async fn wait_served(client: &Client, want: (&str, Option<&str>), limit: Duration, what: &str) {
    let want = vec![(want.0.to_string(), want.1.map(str::to_string))];
    let t = Instant::now();
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

/// The `bytes=` and `reused=` of the matcher's log line for fetching `id`.
fn fetch_counts(m: &Matcher, id: &str) -> (u64, u64) {
    let log = m.proc.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("snapshot fetched from object storage") && l.contains(id))
        .unwrap_or_else(|| panic!("no fetch of {id} logged: {log}"));
    let field = |k: &str| -> u64 {
        line.split_whitespace().find_map(|w| w.strip_prefix(k)).and_then(|v| v.parse().ok()).unwrap()
    };
    (field("bytes="), field("reused="))
}

fn snap_dir(cache: &Path, id: &str) -> PathBuf {
    cache.join("default/faces/snapshots").join(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_on_s3_build_serve_reject_roll_back_cache_export_and_clean() {
    set_credentials();
    let f = Fixture::new(300);
    let weed = Weed::start(f.path());
    let redis = Redis::start(f.path());
    let tools = f.path().join("tool-cache");
    let (build_cache, match_cache) = (f.path().join("build-cache"), f.path().join("match-cache"));

    // Wrong credentials are refused by the server, with its reason.
    let out = kim(
        &["snapshot", "list", "--storage", STORAGE, "--label", "faces", "--cache-dir", tools.to_str().unwrap()]
            .into_iter()
            .chain(weed.flags().iter().map(String::as_str))
            .collect::<Vec<_>>(),
        &[("AWS_SECRET_ACCESS_KEY", "wrong-secret-0000000000")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("403") || err.contains("SignatureDoesNotMatch") || err.contains("AccessDenied"), "{err}");

    // A build to S3 is served by a matcher whose only copy is its own cache.
    let first = build(&f, &weed, &build_cache);
    let m = matcher_on(f.path(), &weed, STORAGE, &redis, "m1", &match_cache);
    m.wait_ready();
    let client = Client::connect(&redis.url()).await.unwrap();
    assert_eq!(served(&client).await, vec![(first.clone(), None)]);
    assert!(snap_dir(&match_cache, &first).join("vectors.bin").is_file());
    let (fetched, reused) = fetch_counts(&m, &first);
    assert_eq!(reused, 0);
    assert!(fetched > 1200 * 512, "{fetched} bytes downloaded");
    let line = m.proc.log_text().lines().find(|l| l.contains("snapshot fetched")).unwrap().to_string();
    eprintln!("download of snapshot {first} ({fetched} bytes): {:.3}s", secs_of(&line, "snapshot fetched"));
    let (base, ids) = (f.matrix("base.npy"), f.lines("ids.txt"));
    for i in [0usize, 17, 1199] {
        let r = client.match_descriptor(ask(base.row(i).to_vec())).await.unwrap();
        assert_eq!((r.status_code, r.result[0].0.as_str()), (201, ids[i].as_str()), "{r:?}");
    }

    // The next build is swapped in.
    let second = build(&f, &weed, &build_cache);
    wait_served(&client, (&second, None), Duration::from_secs(15), "the second build").await;

    // A corrupted object is rejected with 26308 and the served snapshot kept. The objects are
    // written straight through the filer, as a broken uploader or a bit flip at rest would.
    let bad = "29991231t000000000z-badbad";
    let src = snap_dir(&build_cache, &second);
    for name in ["ids.txt", "vectors.bin", "graph.bin", "manifest.json"] {
        let mut bytes = std::fs::read(src.join(name)).unwrap();
        if name == "manifest.json" {
            bytes = String::from_utf8(bytes).unwrap().replace(&second, bad).into_bytes();
        }
        if name == "vectors.bin" {
            bytes[777] ^= 0x21;
        }
        weed.filer_put(&format!("/buckets/kim/snaps/default/faces/snapshots/{bad}/{name}"), &bytes);
    }
    weed.filer_put("/buckets/kim/snaps/default/faces/CURRENT", format!("{bad}\n").as_bytes());
    wait_until(Duration::from_secs(15), "rejection of the corrupt object", || {
        m.metric("kim_matcher_snapshots_rejected_total{label=\"faces\"}") == 1.0
    });
    assert!(m.proc.log_text().contains("error_code=26308"));
    wait_served(&client, (&second, Some(bad)), Duration::from_secs(5), "the registry to name the rejected one").await;
    let r = client.match_descriptor(ask(base.row(5).to_vec())).await.unwrap();
    assert_eq!((r.status_code, r.result[0].0.as_str()), (201, ids[5].as_str()), "{r:?}");

    // Rollback on S3 under a bounded load: no request fails.
    let rows: Vec<Vec<u8>> = (0..200).map(|i| base.row(i).to_vec()).collect();
    let load = load_until_serving(&client, rows, ask, ("faces", &first), 200, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (out, _) =
        on_s3(&weed, &tools, &["snapshot", "rollback", "--storage", STORAGE, "--label", "faces", "--to", &first]);
    assert_eq!(out["to"].as_str(), Some(first.as_str()));
    let load = load.await.unwrap();
    load.assert_clean(200);
    eprintln!("rollback on S3 under load: {} requests, 0 failed", load.answered);
    wait_served(&client, (&first, None), Duration::from_secs(5), "the rollback target").await;
    let (list, _) = on_s3(&weed, &tools, &["snapshot", "list", "--storage", STORAGE, "--label", "faces"]);
    assert_eq!((list["current"].as_str(), list["pinned"].as_str()), (Some(first.as_str()), Some(first.as_str())));
    let listed: Vec<&str> = list["snapshots"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(listed, vec![first.as_str(), second.as_str(), bad], "{list}");

    // Restart on the same cache with one cached file damaged: only that file is downloaded again.
    m.proc.signal("TERM");
    let mut m = m;
    m.proc.wait_exit(Duration::from_secs(10)).expect("matcher exits");
    let graph = snap_dir(&match_cache, &first).join("graph.bin");
    let mut g = std::fs::read(&graph).unwrap();
    let last = g.len() - 1;
    g[last] ^= 0x55;
    std::fs::write(&graph, &g).unwrap();
    let m2 = matcher_on(f.path(), &weed, STORAGE, &redis, "m2", &match_cache);
    m2.wait_ready();
    assert_eq!(fetch_counts(&m2, &first), (g.len() as u64, 2), "graph.bin fetched again, the rest reused");
    wait_served(&client, (&first, None), Duration::from_secs(5), "the restarted matcher").await;
    // And when every checksum holds, nothing is downloaded.
    m2.proc.signal("TERM");
    let mut m2 = m2;
    m2.proc.wait_exit(Duration::from_secs(10)).expect("matcher exits");
    let m3 = matcher_on(f.path(), &weed, STORAGE, &redis, "m3", &match_cache);
    m3.wait_ready();
    assert_eq!(fetch_counts(&m3, &first), (0, 3), "every cached file reused");
    wait_served(&client, (&first, None), Duration::from_secs(5), "the matcher on a warm cache").await;

    // Export from S3, import into an empty prefix: the same answers.
    let out_dir = f.path().join("export");
    let (out, _) = on_s3(
        &weed,
        &tools,
        &["snapshot", "export", "--storage", STORAGE, "--label", "faces", "--out", out_dir.to_str().unwrap()],
    );
    assert_eq!(out["snapshot"].as_str(), Some(first.as_str()));
    let other = "s3://kim/imported";
    let (list, _) = on_s3(&weed, &tools, &["snapshot", "list", "--storage", other, "--label", "faces"]);
    assert_eq!((list["current"].is_null(), list["snapshots"].as_array().unwrap().len()), (true, 0), "{list}");
    let (imported, _) = on_s3(
        &weed,
        &f.path().join("import-cache"),
        &["snapshot", "import", "--storage", other, "--label", "faces", "--from", out_dir.to_str().unwrap()],
    );
    assert_eq!(imported["snapshot"].as_str(), Some(first.as_str()));
    let redis2 = Redis::start(&f.data);
    let m4 = matcher_on(&f.data, &weed, other, &redis2, "m4", &f.path().join("other-cache"));
    m4.wait_ready();
    let client2 = Client::connect(&redis2.url()).await.unwrap();
    let probes = f.matrix("mated.npy");
    for i in 0..probes.rows {
        let a = client.match_descriptor(ask(probes.row(i).to_vec())).await.unwrap();
        let b = client2.match_descriptor(ask(probes.row(i).to_vec())).await.unwrap();
        assert_eq!((a.status_code, &a.result), (201, &b.result), "probe {i}");
    }

    // Clean removes every object of the label, and nothing of the other prefix.
    let (out, _) = on_s3(&weed, &tools, &["clean", "--storage", STORAGE, "--label", "faces"]);
    assert!(out["removed"].as_str().unwrap().ends_with("/default/faces"), "{out}");
    let (list, _) = on_s3(&weed, &tools, &["snapshot", "list", "--storage", STORAGE, "--label", "faces"]);
    assert_eq!((list["current"].is_null(), list["snapshots"].as_array().unwrap().len()), (true, 0), "{list}");
    let (list, _) = on_s3(&weed, &tools, &["snapshot", "list", "--storage", other, "--label", "faces"]);
    assert_eq!(list["current"].as_str(), Some(first.as_str()), "{list}");
}

#[test]
fn bad_s3_settings_fail_with_clear_errors() {
    let fails = |code: u8, extra: &[&str]| {
        let mut args = vec!["snapshot", "list", "--label", "faces"];
        args.extend(extra);
        let out = kim(&args, &[]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code.into()), "{args:?}: {err}");
        err
    };
    // Settings: the configuration exit code.
    let list = |extra: &[&str]| fails(kim_api::exit::CONFIG, extra);
    let err = list(&["--storage", "s3://"]);
    assert!(err.contains("no bucket"), "{err}");
    let err =
        list(&["--storage", "s3://kim/x", "--s3-endpoint", "https://127.0.0.1:9", "--s3-ca", "/nonexistent/ca.pem"]);
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    let err = list(&["--storage", "s3://kim/x", "--s3-endpoint", "http://127.0.0.1:9"]);
    assert!(err.contains("plain http: pass --s3-allow-http"), "{err}");
    let err = list(&["--storage", "s3://kim/x", "--s3-endpoint", "127.0.0.1:9"]);
    assert!(err.contains("is not an http(s):// URL"), "{err}");
    // Nothing listens there: a transient failure, reported with the endpoint's error.
    let err = fails(1, &["--storage", "s3://kim/x", "--s3-endpoint", "http://127.0.0.1:9", "--s3-allow-http"]);
    assert!(err.contains("object storage: ") && err.contains("127.0.0.1:9"), "{err}");
}

#[test]
fn a_tls_endpoint_is_trusted_through_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (weed, ca) = Weed::start_tls(dir.path());
    let cache = dir.path().join("cache");
    let mut args = vec!["snapshot", "list", "--storage", STORAGE, "--label", "faces", "--cache-dir"];
    args.push(cache.to_str().unwrap());
    let flags = weed.flags();
    args.extend(flags.iter().map(String::as_str));
    // Not trusted without the CA.
    let out = kim(&args, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // With it: an empty label, listed over TLS.
    args.extend(["--s3-ca", ca.to_str().unwrap()]);
    let out = kim(&args, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!((list["current"].is_null(), list["snapshots"].as_array().unwrap().len()), (true, 0), "{list}");
}
