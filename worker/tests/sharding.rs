//! Sharded labels against real processes: `kim-worker index --shards N --shard I` builds each
//! shard, one `kim-worker match --shards N --shard I` per shard (or more) reads the label's
//! one stream in its own group, and exactly one merged reply reaches the unchanged clients
//! (the Rust client, raw Redis, and the Python client `kim_client`).

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use kim_api::MatchResponse;
use kim_client::{Client, Match};

const VERSION: &str = "59";

/// Generated data (`gen`) for `identities × 4` descriptors of `dims` dimensions.
fn gen(dir: &Path, identities: usize, dims: usize, probes: usize) -> PathBuf {
    let data = dir.join("data");
    let (ids, dims, probes) = (identities.to_string(), dims.to_string(), probes.to_string());
    worker(&[
        "gen",
        "--out",
        data.to_str().unwrap(),
        "--identities",
        &ids,
        "--samples",
        "4",
        "--dimensions",
        &dims,
        "--intrinsic",
        "32",
        "--mated-probes",
        &probes,
        "--nonmated-probes",
        &probes,
        "--truth-k",
        "0",
    ]);
    data
}

/// Builds `label` (or shard `shard` of `shards` of it) from the generated data, one thread.
fn index(data: &Path, storage: &Path, label: &str, dims: usize, shard: u32, shards: u32) -> serde_json::Value {
    let dims = dims.to_string();
    let out = worker(&[
        "index",
        "--label",
        label,
        "--storage",
        storage.to_str().unwrap(),
        "--source",
        data.join("base.npy").to_str().unwrap(),
        "--ids",
        data.join("ids.txt").to_str().unwrap(),
        "--version",
        VERSION,
        "--dimensions",
        &dims,
        "--threads",
        "1",
        "--shards",
        &shards.to_string(),
        "--shard",
        &shard.to_string(),
    ]);
    serde_json::from_str(out.trim()).unwrap()
}

/// A matcher of shard `shard` of `shards` of `label`.
fn shard_matcher(
    name: &str,
    dir: &Path,
    storage: &Path,
    redis: &Redis,
    label: &str,
    (shard, shards): (u32, u32),
    extra: &[&str],
) -> Matcher {
    let (i, n) = (shard.to_string(), shards.to_string());
    let mut args = vec!["--label", label, "--threads", "1", "--shards", &n, "--shard", &i];
    args.extend_from_slice(extra);
    Matcher::start(name, dir, storage, redis, &args)
}

fn req(descriptor: Vec<u8>, label: &str, limit: u32) -> Match {
    Match {
        descriptor,
        version: 59,
        label: label.into(),
        limit,
        threshold: None,
        luna_request_id: None,
        timeout: Duration::from_secs(20),
    }
}

fn ids(r: &MatchResponse) -> Vec<String> {
    r.result.iter().map(|(id, _)| id.clone()).collect()
}

/// Share of ids two lists of top-k answers have in common.
fn agreement(a: &[Vec<String>], b: &[Vec<String>]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut same, mut total) = (0usize, 0usize);
    for (x, y) in a.iter().zip(b) {
        let y: HashSet<&String> = y.iter().collect();
        same += x.iter().filter(|id| y.contains(id)).count();
        total += x.len().max(y.len());
    }
    same as f64 / total.max(1) as f64
}

/// Runs every probe of `probes` (an .npy file) through the Python client `kim_client` against
/// `label`; returns each reply's ids.
fn python_top10(dir: &Path, redis: &Redis, label: &str, probes: &Path) -> Vec<Vec<String>> {
    let script = dir.join("probe.py");
    std::fs::write(
        &script,
        r#"
import asyncio, json, sys
import numpy as np
from kim_client import MatcherClient, RawDescriptor

async def main(url, label, path):
    probes = np.load(path)
    client = await MatcherClient.create(url)
    out = []
    try:
        for row in probes:
            r = await client.match(RawDescriptor(descriptor=row.tobytes(), version=59), label, limit=10, timeout=20.0)
            assert r["status_code"] == 201, r
            out.append([hit[0] for hit in r["result"]])
    finally:
        await client.close()
    print(json.dumps(out))

asyncio.run(main(*sys.argv[1:]))
"#,
    )
    .unwrap();
    let home = std::env::var("HOME").unwrap();
    let python = Path::new(&home).join(".cache/kim/venv/bin/python");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python/src");
    let out = Command::new(&python)
        .arg(&script)
        .args([redis.url().as_str(), label, probes.to_str().unwrap()])
        .env("PYTHONPATH", &src)
        .output()
        .unwrap_or_else(|e| panic!("running {} (make deps builds it): {e}", python.display()));
    assert!(out.status.success(), "python client failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_shards_answer_as_one_label() {
    let dir = tempfile::tempdir().unwrap();
    let (dims, n) = (64, 4u32);
    let data = gen(dir.path(), 10_000, dims, 150);
    let storage = dir.path().join("storage");
    let t = Instant::now();
    let whole = index(&data, &storage, "whole", dims, 0, 1);
    let one_shard_secs = t.elapsed().as_secs_f64();
    assert_eq!(whole["vectors"], 40_000);
    let t = Instant::now();
    let mut total = 0;
    for i in 0..n {
        let built = index(&data, &storage, "split", dims, i, n);
        assert_eq!(built["label"], format!("split@shard-{i}-of-{n}"));
        let v = built["vectors"].as_u64().unwrap();
        assert!((9_000..=11_000).contains(&v), "shard {i} holds {v} of 40000");
        total += v;
    }
    println!("build: 1 shard {one_shard_secs:.1}s, 4 shards {:.1}s in all", t.elapsed().as_secs_f64());
    assert_eq!(total, 40_000, "every id in exactly one shard");
    assert!(storage.join("default/split@shard-3-of-4/CURRENT").exists());
    assert!(!storage.join("default/split").exists(), "a split label has no unsharded directory");

    let redis = Redis::start(dir.path());
    let ef = ["--ef-search", "96"];
    let w =
        Matcher::start("whole", dir.path(), &storage, &redis, &["--label", "whole", "--threads", "1", ef[0], ef[1]]);
    let shards: Vec<Matcher> =
        (0..n).map(|i| shard_matcher(&format!("s{i}"), dir.path(), &storage, &redis, "split", (i, n), &ef)).collect();
    w.wait_ready();
    shards.iter().for_each(Matcher::wait_ready);
    // The registry value says which shard a matcher serves.
    let info: String = redis::Commands::get(&mut redis.conn(), "matching_label__split__s2").unwrap();
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!((info["shard"].as_u64(), info["shards"].as_u64()), (Some(2), Some(4)), "{info}");
    let info: String = redis::Commands::get(&mut redis.conn(), "matching_label__whole__whole").unwrap();
    assert!(!info.contains("shard"), "an unsharded registry value is unchanged: {info}");

    let client = Client::connect(&redis.url()).await.unwrap();
    let mut probe_sets = Vec::new();
    for set in ["mated", "nonmated"] {
        probe_sets.push(kim_index::Matrix::read(&data.join(format!("{set}.npy"))).unwrap());
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let t = Instant::now();
    for p in &probe_sets {
        for i in 0..p.rows {
            let rw = client.match_descriptor(req(p.row(i).to_vec(), "whole", 10)).await.unwrap();
            let rs = client.match_descriptor(req(p.row(i).to_vec(), "split", 10)).await.unwrap();
            assert_eq!((rw.status_code, rs.status_code), (201, 201), "{rw:?} {rs:?}");
            assert_eq!(rs.result.len(), 10);
            assert!(rs.result.windows(2).all(|w| w[0].1 >= w[1].1), "merged result sorted: {rs:?}");
            a.push(ids(&rw));
            b.push(ids(&rs));
        }
    }
    let probes = a.len();
    assert!(probes >= 300);
    let same = agreement(&a, &b);
    println!(
        "top-10 agreement, 4 shards vs 1 at ef 96: {:.2} % over {probes} probes ({:.1} ms per pair of requests)",
        100.0 * same,
        t.elapsed().as_secs_f64() * 1000.0 / probes as f64
    );
    assert!(same >= 0.99, "sharded top-10 agrees with the unsharded on {:.2} % of ids", 100.0 * same);
    let merges: f64 = shards.iter().map(|m| m.metric("kim_matcher_shard_merges_total{label=\"split\"}")).sum();
    let partials: f64 = shards.iter().map(|m| m.metric("kim_matcher_shard_partials_total{label=\"split\"}")).sum();
    assert_eq!((merges, partials), (probes as f64, 4.0 * probes as f64));

    // The unchanged Python client gets the same merged answers.
    let py = python_top10(dir.path(), &redis, "split", &data.join("mated.npy"));
    assert_eq!(py.len(), probe_sets[0].rows);
    assert_eq!(py, b[..py.len()].to_vec(), "the Python client sees exactly the Rust client's merged answers");
    let py_whole = agreement(&a[..py.len()], &py);
    println!("python client, 4 shards vs 1: {:.2} %", 100.0 * py_whole);
    assert!(py_whole >= 0.99);
}

/// A fixture for the failure scenarios: a small label split into `n` shards.
struct Small {
    dir: tempfile::TempDir,
    data: PathBuf,
    storage: PathBuf,
    redis: Redis,
}

impl Small {
    fn new(n: u32) -> Small {
        let dir = tempfile::tempdir().unwrap();
        let data = gen(dir.path(), 500, 64, 50);
        let storage = dir.path().join("storage");
        for i in 0..n {
            index(&data, &storage, "faces", 64, i, n);
        }
        let redis = Redis::start(dir.path());
        Small { dir, data, storage, redis }
    }
    fn matcher(&self, name: &str, shard: u32, n: u32, extra: &[&str]) -> Matcher {
        shard_matcher(name, self.dir.path(), &self.storage, &self.redis, "faces", (shard, n), extra)
    }
    fn probes(&self) -> kim_index::Matrix {
        kim_index::Matrix::read(&self.data.join("mated.npy")).unwrap()
    }
}

/// Collects every reply published on `channel` until `stop` says so or `limit` passes.
fn collect_replies(
    redis: &Redis,
    channel: &str,
    limit: Duration,
    stop: impl Fn(&HashMap<String, Vec<serde_json::Value>>) -> bool,
) -> HashMap<String, Vec<serde_json::Value>> {
    let mut sub = redis.conn();
    let mut ps = sub.as_pubsub();
    ps.subscribe(channel).unwrap();
    ps.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut got: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
    let t = Instant::now();
    while t.elapsed() < limit && !stop(&got) {
        if let Ok(msg) = ps.get_message() {
            let v: serde_json::Value = serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
            got.entry(v["rid"].as_str().unwrap().to_string()).or_default().push(v);
        }
    }
    got
}

/// Every one of `n` requests got exactly one reply, a complete top 5.
fn answered_once_complete(got: &HashMap<String, Vec<serde_json::Value>>, n: usize) {
    assert_eq!(got.len(), n, "every request answered");
    for (rid, replies) in got {
        assert_eq!(replies.len(), 1, "{rid} answered exactly once: {replies:?}");
        let r = &replies[0];
        assert_eq!(r["status_code"], 201, "{r}");
        assert_eq!(r["result"].as_array().unwrap().len(), 5, "complete: {r}");
    }
}

/// XADDs a request for `faces` with a raw descriptor, replying on `channel`.
fn add(redis: &Redis, d: &[u8], rid: &str, channel: &str, limit: u32, deadline: Option<u64>) {
    let mut cmd = redis::cmd("XADD");
    cmd.arg("faces").arg("*").arg("descriptor").arg(d).arg("version").arg(VERSION).arg("label").arg("faces");
    cmd.arg("limit")
        .arg(limit)
        .arg("response_channel")
        .arg(channel)
        .arg("luna_request_id")
        .arg("1,x")
        .arg("rid")
        .arg(rid);
    if let Some(dl) = deadline {
        cmd.arg("deadline").arg(dl);
    }
    let _: String = cmd.query(&mut redis.conn()).unwrap();
}

#[test]
fn a_dead_shard_turns_every_reply_into_a_timeout_at_the_deadline() {
    let s = Small::new(2);
    let a = s.matcher("a", 0, 2, &["--shard-deadline", "1500ms"]);
    let mut b = s.matcher("b", 1, 2, &[]);
    a.wait_ready();
    b.wait_ready();
    b.proc.signal("KILL");
    b.proc.wait_exit(Duration::from_secs(5)).unwrap();
    let probes = s.probes();
    let n = 20;
    let sent = Instant::now();
    let redis = &s.redis;
    let got = std::thread::scope(|scope| {
        let listener = scope.spawn(|| collect_replies(redis, "ch", Duration::from_secs(15), |g| g.len() >= n));
        std::thread::sleep(Duration::from_millis(200));
        for i in 0..n {
            // Half without a deadline (the shard default applies), half with their own.
            let deadline = (i % 2 == 1).then(|| kim_api::unix_ms() + 1_500);
            add(redis, probes.row(i), &format!("r{i}"), "ch", 5, deadline);
        }
        listener.join().unwrap()
    });
    let waited = sent.elapsed();
    assert_eq!(got.len(), n, "every request answered: {got:?}");
    for (rid, replies) in &got {
        assert_eq!(replies.len(), 1, "{rid}: one reply");
        let r = &replies[0];
        assert_eq!(r["error"]["error_code"], 26309, "{r}");
        assert_eq!(r["status_code"], 504);
        assert!(r["result"].is_null(), "never a partial result: {r}");
    }
    assert!(waited >= Duration::from_millis(1_400), "answered at the deadline, not before: {waited:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(a.metric("kim_matcher_shard_timeouts_total{label=\"faces\"}") >= n as f64);
    // A request already past its deadline goes through the same gate: one 26309, at once.
    let got = std::thread::scope(|scope| {
        let listener = scope.spawn(|| collect_replies(redis, "late", Duration::from_secs(5), |g| !g.is_empty()));
        std::thread::sleep(Duration::from_millis(200));
        add(redis, probes.row(0), "late", "late", 5, Some(1));
        listener.join().unwrap()
    });
    assert_eq!(got["late"][0]["error"]["error_code"], 26309);
}

#[test]
fn a_shard_matcher_killed_mid_load_still_yields_one_complete_reply_per_request() {
    let s = Small::new(2);
    // Matcher a of shard 0 parks a long blocking read and is stopped there: Redis hands it the
    // first entries of the load, and it is SIGKILLed holding them.
    let a = s.matcher("a", 0, 2, &["--block", "30s"]);
    a.wait_ready();
    wait_until(Duration::from_secs(10), "matcher a to park a blocking read", || {
        let info: String = redis::cmd("INFO").arg("clients").query(&mut s.redis.conn()).unwrap();
        info.lines().any(|l| l.strip_prefix("blocked_clients:").is_some_and(|n| n.trim() != "0"))
    });
    a.signal_stop();
    let b = s.matcher("b", 0, 2, &[]);
    let c = s.matcher("c", 1, 2, &[]);
    for m in [&b, &c] {
        m.wait_ready();
    }
    let probes = s.probes();
    let n = 300;
    let redis = &s.redis;
    let mut a = a;
    let got = std::thread::scope(|scope| {
        let listener = scope.spawn(|| {
            let stop_after = std::cell::Cell::new(None::<Instant>);
            collect_replies(redis, "ch", Duration::from_secs(40), |g| {
                // Once all are in, keep listening a little for duplicates.
                if g.len() >= n && stop_after.get().is_none() {
                    stop_after.set(Some(Instant::now()));
                }
                stop_after.get().is_some_and(|t| t.elapsed() > Duration::from_secs(3))
            })
        });
        std::thread::sleep(Duration::from_millis(200));
        let deadline = kim_api::unix_ms() + 30_000;
        for i in 0..n {
            add(redis, probes.row(i % probes.rows), &format!("r{i}"), "ch", 5, Some(deadline));
            if i == n / 3 {
                a.proc.signal("KILL");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        listener.join().unwrap()
    });
    a.proc.wait_exit(Duration::from_secs(5)).unwrap();
    assert!(b.proc.log_text().contains("claimed entries abandoned"), "b took over a's entries");
    answered_once_complete(&got, n);
}

#[test]
fn a_request_answered_twice_by_a_shard_gets_one_reply() {
    let s = Small::new(2);
    let a = s.matcher("a", 0, 2, &[]);
    let b = s.matcher("b", 1, 2, &[]);
    a.wait_ready();
    b.wait_ready();
    let probes = s.probes();
    let redis = &s.redis;
    let n = 10;
    let rewind = || {
        let _: () = redis::cmd("XGROUP")
            .arg("SETID")
            .arg("faces")
            .arg("kim-matchers-0-of-2")
            .arg("0")
            .query(&mut redis.conn())
            .unwrap();
    };
    // Shard 1 stopped: shard 0 answers, then answers again (its group rewound), before
    // shard 1 completes the set.
    b.signal_stop();
    let got = std::thread::scope(|scope| {
        let listener = scope.spawn(|| {
            let stop_after = std::cell::Cell::new(None::<Instant>);
            collect_replies(redis, "ch", Duration::from_secs(20), |g| {
                if g.len() >= n && stop_after.get().is_none() {
                    stop_after.set(Some(Instant::now()));
                }
                stop_after.get().is_some_and(|t| t.elapsed() > Duration::from_secs(2))
            })
        });
        std::thread::sleep(Duration::from_millis(200));
        let deadline = kim_api::unix_ms() + 30_000;
        for i in 0..n {
            add(redis, probes.row(i), &format!("r{i}"), "ch", 4, Some(deadline));
        }
        wait_until(Duration::from_secs(10), "shard 0's partials", || {
            a.metric("kim_matcher_shard_partials_total{label=\"faces\"}") >= n as f64
        });
        rewind();
        wait_until(Duration::from_secs(10), "shard 0 answering every request again", || {
            a.metric("kim_matcher_shard_partials_total{label=\"faces\"}") >= 2.0 * n as f64
        });
        b.proc.signal("CONT");
        listener.join().unwrap()
    });
    assert_eq!(got.len(), n);
    for (rid, replies) in &got {
        assert_eq!(replies.len(), 1, "{rid}: {replies:?}");
        assert_eq!(replies[0]["result"].as_array().unwrap().len(), 4);
    }
    // After the reply: both shards answering again publishes nothing.
    rewind();
    let _: () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg("faces")
        .arg("kim-matchers-1-of-2")
        .arg("0")
        .query(&mut redis.conn())
        .unwrap();
    let again = collect_replies(redis, "ch", Duration::from_secs(3), |_| false);
    assert!(again.is_empty(), "no second reply: {again:?}");
    let merges = a.metric("kim_matcher_shard_merges_total{label=\"faces\"}")
        + b.metric("kim_matcher_shard_merges_total{label=\"faces\"}");
    assert_eq!(merges, n as f64);
    // An error every shard sees alike (a descriptor of the wrong length) is published once.
    let bad = std::thread::scope(|scope| {
        let listener = scope.spawn(|| {
            let stop_after = std::cell::Cell::new(None::<Instant>);
            collect_replies(redis, "bad", Duration::from_secs(10), |g| {
                if g.len() >= 5 && stop_after.get().is_none() {
                    stop_after.set(Some(Instant::now()));
                }
                stop_after.get().is_some_and(|t| t.elapsed() > Duration::from_secs(1))
            })
        });
        std::thread::sleep(Duration::from_millis(200));
        for i in 0..5 {
            add(redis, &[1, 2, 3], &format!("bad{i}"), "bad", 4, None);
        }
        listener.join().unwrap()
    });
    assert_eq!(bad.len(), 5);
    for (rid, replies) in &bad {
        assert_eq!(replies.len(), 1, "{rid}: {replies:?}");
        assert_eq!(replies[0]["error"]["error_code"], 26302, "{}", replies[0]);
        assert!(replies[0]["result"].is_null());
    }
}

/// A label changing its split under load, as the operator switches it: the new layout's
/// matchers start while the old layout serves, the old ones are stopped (SIGTERM) once the new
/// ones are ready and their consumer group is destroyed. 1 → 2 → 1 shards: every request is
/// answered exactly once, complete, though both layouts read the stream for a while and the
/// last layout's new group reads the stream again from its start.
#[test]
fn changing_the_shard_count_under_load_answers_every_request_once() {
    let s = Small::new(2);
    index(&s.data, &s.storage, "faces", 64, 0, 1);
    let whole =
        |name: &str| Matcher::start(name, s.dir.path(), &s.storage, &s.redis, &["--label", "faces", "--threads", "1"]);
    let stop = |mut m: Matcher| {
        m.proc.signal("TERM");
        assert!(m.proc.wait_exit(Duration::from_secs(15)).is_some(), "{} stops", m.proc.name);
    };
    let destroy = |group: &str| {
        let n: i64 = redis::cmd("XGROUP").arg("DESTROY").arg("faces").arg(group).query(&mut s.redis.conn()).unwrap();
        assert_eq!(n, 1, "group {group} existed");
    };
    let one = whole("one");
    one.wait_ready();
    let probes = s.probes();
    let redis = &s.redis;
    let done = std::sync::atomic::AtomicBool::new(false);
    let sent = std::sync::atomic::AtomicUsize::new(0);
    let (got, merged) = std::thread::scope(|scope| {
        let listener = scope.spawn(|| {
            let quiet = std::cell::Cell::new(None::<Instant>);
            collect_replies(redis, "ch", Duration::from_secs(90), |g| {
                // Once the load stopped and all are in, keep listening a little for duplicates.
                let all = done.load(std::sync::atomic::Ordering::SeqCst)
                    && g.len() >= sent.load(std::sync::atomic::Ordering::SeqCst);
                if all && quiet.get().is_none() {
                    quiet.set(Some(Instant::now()));
                }
                quiet.get().is_some_and(|t| t.elapsed() > Duration::from_secs(3))
            })
        });
        std::thread::sleep(Duration::from_millis(200));
        let load = scope.spawn(|| {
            let t = Instant::now();
            let mut i = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) && i < 5_000 && t.elapsed() < Duration::from_secs(60)
            {
                let deadline = kim_api::unix_ms() + 20_000;
                add(redis, probes.row(i % probes.rows), &format!("r{i}"), "ch", 5, Some(deadline));
                i += 1;
                sent.store(i, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let settle = || std::thread::sleep(Duration::from_millis(700));
        settle();
        // 1 → 2: both layouts read the stream until the old one is stopped.
        let (a, b) = (s.matcher("a", 0, 2, &[]), s.matcher("b", 1, 2, &[]));
        a.wait_ready();
        b.wait_ready();
        settle();
        stop(one);
        destroy("kim-matchers");
        settle();
        let merged = a.metric("kim_matcher_shard_merges_total{label=\"faces\"}")
            + b.metric("kim_matcher_shard_merges_total{label=\"faces\"}");
        // 2 → 1: the new unsharded group starts at the stream's beginning.
        let again = whole("again");
        again.wait_ready();
        settle();
        stop(a);
        stop(b);
        destroy("kim-matchers-0-of-2");
        destroy("kim-matchers-1-of-2");
        settle();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        load.join().unwrap();
        (listener.join().unwrap(), merged)
    });
    let n = sent.load(std::sync::atomic::Ordering::SeqCst);
    assert!(n > 300, "a steady load ran through both switches: {n}");
    assert!(merged > 0.0, "the 2-shard layout answered some requests");
    answered_once_complete(&got, n);
}

#[test]
fn shard_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let data = gen(dir.path(), 50, 64, 5);
    let storage = dir.path().join("storage");
    let base = data.join("base.npy");
    let long = "a".repeat(250);
    let args = |label: &str, extra: &[&str]| -> Vec<String> {
        let s = ["index", "--label", label, "--storage", storage.to_str().unwrap(), "--source", base.to_str().unwrap()];
        let v = ["--version", VERSION, "--dimensions", "64"];
        s.iter().chain(v.iter()).chain(extra.iter()).map(|a| a.to_string()).collect()
    };
    let fails = |a: Vec<String>| worker_fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
    for (extra, why) in [
        (&["--shards", "0"][..], "--shards must be in 1..=1024"),
        (&["--shards", "4", "--shard", "4"][..], "--shard must be below --shards (4)"),
        (&["--shards", "2000"][..], "--shards must be in 1..=1024"),
    ] {
        let err = fails(args("faces", extra));
        assert!(err.contains(why), "{extra:?}: {err}");
    }
    let err = fails(args(&long, &["--shards", "2"]));
    assert!(err.contains("longer than 253"), "{err}");
    // Snapshot commands take a shard's storage name; cleaning a label removes its shards.
    for i in 0..2 {
        index(&data, &storage, "faces", 64, i, 2);
    }
    // A shard refreshes on its own: the same source is unchanged for it.
    let ids = data.join("ids.txt");
    let mut refresh = args("faces", &["--shards", "2", "--shard", "1", "--ids", ids.to_str().unwrap()]);
    refresh[0] = "refresh".into();
    let out = worker(&refresh.iter().map(String::as_str).collect::<Vec<_>>());
    let out: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((out["mode"].as_str(), out["label"].as_str()), (Some("unchanged"), Some("faces@shard-1-of-2")), "{out}");
    let listed = worker(&["snapshot", "list", "--storage", storage.to_str().unwrap(), "--label", "faces@shard-1-of-2"]);
    assert!(listed.contains("\"current\":\""), "{listed}");
    let out = worker(&["clean", "--storage", storage.to_str().unwrap(), "--label", "faces"]);
    assert!(out.contains("faces@shard-0-of-2") && out.contains("faces@shard-1-of-2"), "{out}");
    assert!(!storage.join("default/faces@shard-0-of-2").exists());
}
