//! `kim-bench redis --shards N`: the served label split into `N` shards beside the unsharded
//! label, on the same cores and with the same probes.
//!
//! The snapshot served by `kim-bench redis` is split by `kim_api::shard::shard_of` of each id
//! (as `kim-worker index --shards N --shard I` splits a source), one graph is built per shard
//! with the snapshot's HNSW parameters (timed: build seconds and CPU seconds per vector), and
//! each is written as `<label>@shard-<I>-of-<N>`. Then one matcher with every core serves the
//! unsharded label and `N` matchers (`--shards N --shard I`, `cores / N` search threads each,
//! at least one) serve the shards, each loaded like the other set-ups. A matcher started on an
//! empty storage gives the resident memory of a matcher without a label, so the memory a label
//! adds per vector is measured, not estimated.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use kim_api::shard::{shard_of, storage_name};
use kim_index::build::build_graph;
use kim_index::flat::Ids;
use kim_index::{snapshot, FlatIndex, Matrix, VectorStore};
use kim_testkit::{http_get, poll_until, try_free_port, Proc};
use serde_json::{json, Value};

use crate::index::{write_snapshot, NAMESPACE};
use crate::redis::{path_str, Env, MatcherPlan};
use crate::sys::{rss_of, self_cpu_seconds};

/// Rows of each shard (`0..shards`), in row order: row `r` goes to `shard_of(ids[r], shards)`.
pub fn partition<'a>(ids: impl IntoIterator<Item = &'a str>, shards: u32) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); shards.max(1) as usize];
    for (r, id) in ids.into_iter().enumerate() {
        out[shard_of(id, shards) as usize].push(r);
    }
    out
}

/// `sharded / unsharded` of the numbers at `path` (JSON pointers) in two set-ups' results;
/// null where either is missing or the unsharded one is 0.
pub fn ratios(unsharded: &Value, sharded: &Value, paths: &[(&str, &str)]) -> Value {
    let mut out = serde_json::Map::new();
    for (name, path) in paths {
        let r = match (unsharded.pointer(path).and_then(Value::as_f64), sharded.pointer(path).and_then(Value::as_f64)) {
            (Some(u), Some(s)) if u != 0.0 && u.is_finite() && s.is_finite() => json!(s / u),
            _ => Value::Null,
        };
        out.insert((*name).to_string(), r);
    }
    Value::Object(out)
}

/// The figures compared, as (name, JSON pointer into a set-up's result).
pub const COMPARED: &[(&str, &str)] = &[
    ("recall10", "/batched/recall10"),
    ("agreement_with_unsharded_in_process", "/batched/agreement_with_in_process"),
    ("serial_p50", "/serial/latency/p50_us"),
    ("serial_p99", "/serial/latency/p99_us"),
    ("batched_p50", "/batched/latency/p50_us"),
    ("batched_p99", "/batched/latency/p99_us"),
    ("throughput", "/batched/throughput"),
    ("per_matcher_cpu_second_qps", "/batched/per_matcher_cpu_second_qps"),
];

struct ShardBuild {
    vectors: usize,
    seconds: f64,
    cpu_seconds: f64,
    snapshot_bytes: u64,
}

/// Builds shard `shard` of `shards` from the rows `rows` of `index` and writes it under `storage`.
fn build_shard(
    index: &FlatIndex,
    manifest: &snapshot::Manifest,
    rows: &[usize],
    (shard, shards): (u32, u32),
    storage: &Path,
    threads: usize,
) -> anyhow::Result<ShardBuild> {
    let spec = index.vectors.spec;
    let raw = index.vectors.raw_bytes();
    let width = raw.len() / index.len().max(1);
    let data: Vec<u8> = rows.iter().flat_map(|&r| raw[r * width..(r + 1) * width].iter().copied()).collect();
    drop(raw);
    let m = Matrix { encoding: spec.encoding, rows: rows.len(), dims: spec.dimensions, data };
    let store = VectorStore::from_matrix(&spec, &m)?;
    drop(m);
    let (cpu0, t) = (self_cpu_seconds(), Instant::now());
    let graph = build_graph(&store, manifest.hnsw, threads, &|_, _, _| {})?;
    let (seconds, cpu_seconds) = (t.elapsed().as_secs_f64(), self_cpu_seconds() - cpu0);
    let ids = Ids::from_vec(&rows.iter().map(|&r| index.ids.get(r).to_string()).collect::<Vec<_>>());
    let part = FlatIndex { vectors: store, graph, ids, ef_search: manifest.hnsw.ef_search };
    let name = storage_name(&manifest.label, shard, shards);
    let written =
        write_snapshot(&snapshot::label_dir(storage, NAMESPACE, &name), &name, spec, manifest.hnsw, seconds, &part)?;
    Ok(ShardBuild {
        vectors: rows.len(),
        seconds,
        cpu_seconds,
        snapshot_bytes: written.files.values().map(|f| f.bytes).sum(),
    })
}

/// Resident bytes of a matcher with `threads` search threads and no snapshot to load: started
/// on an empty storage, measured once `/healthz` answers and a second has passed.
fn empty_matcher_rss(env: &Env, threads: usize) -> anyhow::Result<u64> {
    let empty = env.a.work.join("empty-storage");
    let _ = std::fs::remove_dir_all(&empty);
    std::fs::create_dir_all(empty.join(NAMESPACE))?;
    let http = try_free_port()?;
    let mut cmd = std::process::Command::new(env.worker);
    cmd.args(["match", "--storage", path_str(&empty)?, "--redis", env.url, "--label", &env.a.label])
        .args([
            "--threads",
            &threads.to_string(),
            "--http",
            &format!("127.0.0.1:{http}"),
            "--matcher-id",
            "bench-empty",
        ])
        .env("KIM_LOG", "warn");
    let mut p = Proc::try_spawn("matcher-empty", &mut cmd, env.logs)?;
    let up = poll_until(Duration::from_secs(30), || matches!(http_get(http, "/healthz"), Some((200, _))));
    std::thread::sleep(Duration::from_secs(1));
    let rss = rss_of(p.pid());
    p.stop(Duration::from_secs(10));
    ensure!(up, "the empty matcher did not answer /healthz in 30 s (see {})", env.logs.display());
    rss.context("the empty matcher exited before its memory was read")
}

/// Splits the label served from `snap` into `shards` shards and compares their matchers with
/// one unsharded matcher on the same number of search threads.
pub fn run(env: &Env, snap: &Path, shards: u32) -> anyhow::Result<Value> {
    let a = env.a;
    kim_api::shard::check(0, shards)?;
    let cores = if a.shard_cores > 0 {
        a.shard_cores
    } else {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    };
    let per_shard = (cores / shards as usize).max(1);

    let (manifest, index) = snapshot::load_current(snap)?;
    let n = index.len();
    let unsharded_disk: u64 = manifest.files.values().map(|f| f.bytes).sum();
    let rows = partition((0..n).map(|r| index.ids.get(r)), shards);
    let mut builds = Vec::new();
    for (i, part) in rows.iter().enumerate() {
        eprintln!("[kim-bench redis] building shard {i} of {shards}: {} vectors", part.len());
        builds.push(build_shard(&index, &manifest, part, (i as u32, shards), env.storage, a.build_threads)?);
    }
    drop(index);
    let build_seconds: f64 = builds.iter().map(|b| b.seconds).sum();
    let build_cpu: f64 = builds.iter().map(|b| b.cpu_seconds).sum();
    let sharded_disk: u64 = builds.iter().map(|b| b.snapshot_bytes).sum();

    let empty = empty_matcher_rss(env, cores)?;
    let empty_small = empty_matcher_rss(env, per_shard)?;

    eprintln!("[kim-bench redis] unsharded: 1 matcher × {cores} search threads");
    let plan = [MatcherPlan { id: "bench-unsharded".into(), threads: cores, shard: None }];
    let mut matchers = env.start("unsharded", &plan, env.storage, &a.label)?;
    let (unsharded, rss1) = env.measure(&format!("1x{cores}"), &matchers, cores)?;
    for m in &mut matchers {
        m.stop(Duration::from_secs(15));
    }

    eprintln!("[kim-bench redis] sharded: {shards} matchers (one per shard) × {per_shard} search thread(s)");
    let plan: Vec<MatcherPlan> = (0..shards)
        .map(|i| MatcherPlan { id: format!("bench-shard-{i}"), threads: per_shard, shard: Some((i, shards)) })
        .collect();
    let mut matchers = env.start("sharded", &plan, env.storage, &a.label)?;
    let (sharded, rss_n) =
        env.measure(&format!("{shards}shards x{per_shard}"), &matchers, shards as usize * per_shard)?;
    for m in &mut matchers {
        m.stop(Duration::from_secs(15));
    }

    let added =
        |rss: &[u64], base: u64| rss.iter().map(|r| r.saturating_sub(base)).sum::<u64>() as f64 / n.max(1) as f64;
    Ok(json!({
        "shards": shards, "cores": cores, "threads_per_shard_matcher": per_shard, "vectors": n,
        "ef": manifest.hnsw.ef_search,
        "build": {
            "threads": a.build_threads,
            "unsharded_seconds": manifest.build_seconds,
            "shard_vectors": builds.iter().map(|b| b.vectors).collect::<Vec<_>>(),
            "shard_seconds": builds.iter().map(|b| b.seconds).collect::<Vec<_>>(),
            "seconds": build_seconds,
            "cpu_seconds": build_cpu,
            "cpu_seconds_per_vector": build_cpu / n.max(1) as f64,
        },
        "disk": {
            "unsharded_bytes_per_vector": unsharded_disk as f64 / n.max(1) as f64,
            "sharded_bytes_per_vector": sharded_disk as f64 / n.max(1) as f64,
        },
        "memory": {
            "empty_matcher_rss_bytes": empty,
            "empty_shard_matcher_rss_bytes": empty_small,
            "unsharded_rss_ready_bytes": rss1.ready,
            "sharded_rss_ready_bytes": rss_n.ready,
            "unsharded_rss_bytes": rss1.loaded,
            "sharded_rss_bytes": rss_n.loaded,
            "unsharded_rss_ready_added_per_vector": added(&rss1.ready, empty),
            "sharded_rss_ready_added_per_vector": added(&rss_n.ready, empty_small),
            "unsharded_rss_added_per_vector": added(&rss1.loaded, empty),
            "sharded_rss_added_per_vector": added(&rss_n.loaded, empty_small),
        },
        "ratio": ratios(&unsharded, &sharded, COMPARED),
        "unsharded": unsharded,
        "sharded": sharded,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_puts_every_row_in_its_hash_shard_once() {
        let ids: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
        let parts = partition(ids.iter().map(String::as_str), 4);
        assert_eq!(parts.len(), 4);
        let mut all: Vec<usize> = parts.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        for (s, rows) in parts.iter().enumerate() {
            assert!(rows.windows(2).all(|w| w[0] < w[1]), "rows in order");
            assert!(rows.iter().all(|&r| shard_of(&ids[r], 4) == s as u32));
            assert!((150..=350).contains(&rows.len()), "shard {s} has {} rows", rows.len());
        }
        assert_eq!(partition(ids.iter().map(String::as_str), 1), vec![(0..1000).collect::<Vec<_>>()]);
        assert_eq!(partition(std::iter::empty(), 3), vec![Vec::<usize>::new(); 3]);
    }

    #[test]
    fn ratios_divide_sharded_by_unsharded_and_null_what_is_missing() {
        let u = json!({"batched": {"throughput": 200.0, "recall10": 0.9}, "serial": {"latency": {"p50_us": 0.0}}});
        let s = json!({"batched": {"throughput": 100.0, "recall10": 0.99}, "serial": {"latency": {"p50_us": 5.0}}});
        let r = ratios(
            &u,
            &s,
            &[
                ("throughput", "/batched/throughput"),
                ("recall10", "/batched/recall10"),
                ("p50", "/serial/latency/p50_us"),
                ("gone", "/batched/nothing"),
            ],
        );
        assert_eq!(r["throughput"], json!(0.5));
        assert!((r["recall10"].as_f64().unwrap() - 1.1).abs() < 1e-12);
        assert_eq!(r["p50"], Value::Null, "division by a zero unsharded figure");
        assert_eq!(r["gone"], Value::Null);
    }
}
