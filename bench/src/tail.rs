//! `kim-bench tail`: what a refresh tail costs a matcher's search. The snapshot is searched as
//! served with no delta, then with one delta whose tail holds a fraction of the snapshot's
//! vectors, in two shapes:
//!
//! * `append` — the tail rows are copies of every `1/fraction`-th row under new ids (new
//!   enrolments): the exact tail scan is the only extra cost. Recall is not reported (the
//!   copies tie with their originals).
//! * `replace` — those rows are removed (tombstones) and added back as tail rows (changed
//!   vectors): the tail scan plus tombstones walked through in the graph. The live set equals
//!   the snapshot's, so recall is measured against the same ground truth.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::ensure;
use clap::Args;
use kim_index::delta::{Delta, DeltaManifest, FORMAT};
use kim_index::tail::Tail;
use kim_index::{snapshot, FlatIndex, Query};
use serde_json::{json, Value};

use crate::index::{read_queries, read_truth, recalls, NAMESPACE};
use crate::sys::{latency_summary, thread_cpu_seconds};

#[derive(Debug, Args)]
pub struct TailArgs {
    #[arg(long)]
    pub storage: PathBuf,
    #[arg(long)]
    pub label: String,
    /// Queries in the index's encoding (.npy).
    #[arg(long)]
    pub queries: PathBuf,
    /// Exact neighbours of the queries in the snapshot (as for `search`).
    #[arg(long)]
    pub truth: PathBuf,
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Beam width (0 = the snapshot's default, as matchers search).
    #[arg(long, default_value_t = 0)]
    pub ef: usize,
    /// Tail sizes as fractions of the snapshot's vectors.
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.05")]
    pub fractions: Vec<f64>,
    /// Timed passes per setting continue until this much time was spent...
    #[arg(long, default_value_t = 1.0)]
    pub min_seconds: f64,
    /// ...or this many passes ran (the fastest pass counts).
    #[arg(long, default_value_t = 20)]
    pub max_passes: usize,
}

/// One delta that adds (and, replacing, first removes) every `stride`-th row of the snapshot.
fn delta(index: &FlatIndex, stride: usize, replace: bool) -> Delta {
    let rows: Vec<usize> = (0..index.len()).step_by(stride).collect();
    let raw = index.vectors.raw_bytes();
    let width = raw.len() / index.len().max(1);
    let vectors = rows.iter().flat_map(|&r| raw[r * width..(r + 1) * width].iter().copied()).collect();
    let old: Vec<String> = rows.iter().map(|&r| index.ids.get(r).to_string()).collect();
    let (added_ids, removed_ids) =
        if replace { (old.clone(), old) } else { (old.iter().map(|id| format!("{id}+tail")).collect(), Vec::new()) };
    let manifest = DeltaManifest {
        format: FORMAT,
        namespace: NAMESPACE.into(),
        label: String::new(),
        snapshot: String::new(),
        seq: 1,
        descriptor: index.vectors.spec,
        added: added_ids.len(),
        removed: removed_ids.len(),
        source_digest: String::new(),
        created_at: String::new(),
        files: Default::default(),
    };
    Delta { manifest, added_ids, vectors, removed_ids }
}

/// Searches every query through `tail` repeatedly: (queries per second of the fastest pass,
/// per CPU second, latencies of that pass in µs).
fn measure(index: &FlatIndex, tail: &Tail, qs: &[Query], k: usize, ef: usize, a: &TailArgs) -> (f64, f64, Vec<f64>) {
    let start = Instant::now();
    let (mut best, mut best_cpu, mut best_lat) = (f64::INFINITY, f64::INFINITY, Vec::new());
    let mut passes = 0;
    while passes < a.max_passes.max(1) && (passes == 0 || start.elapsed() < Duration::from_secs_f64(a.min_seconds)) {
        let mut lat = Vec::with_capacity(qs.len());
        let (cpu, t) = (thread_cpu_seconds(), Instant::now());
        for q in qs {
            let t0 = Instant::now();
            std::hint::black_box(tail.search(index, q, k, ef));
            lat.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        let (wall, cpu) = (t.elapsed().as_secs_f64(), thread_cpu_seconds() - cpu);
        best_cpu = best_cpu.min(cpu);
        if wall < best {
            (best, best_lat) = (wall, lat);
        }
        passes += 1;
    }
    let nq = qs.len() as f64;
    (nq / best, nq / best_cpu.max(1e-9), best_lat)
}

pub fn run(a: &TailArgs) -> anyhow::Result<Value> {
    ensure!(a.fractions.iter().all(|f| *f > 0.0 && *f <= 1.0), "fractions must be in (0, 1]");
    let dir = snapshot::label_dir(&a.storage, NAMESPACE, &a.label);
    let (manifest, index) = snapshot::load_current(&dir)?;
    let (_, qs) = read_queries(&a.queries, &index.vectors.spec)?;
    let truth = read_truth(&a.truth)?;
    ensure!(truth.len() == qs.len(), "{} truth lines for {} queries", truth.len(), qs.len());
    let n = index.len();
    let mut settings = vec![("none", 0.0, Tail::new(index.vectors.spec))];
    for &f in &a.fractions {
        let stride = (1.0 / f).round().max(1.0) as usize;
        for (shape, replace) in [("append", false), ("replace", true)] {
            let tail = Tail::new(index.vectors.spec).apply(&index, &delta(&index, stride, replace))?;
            settings.push((shape, f, tail));
        }
    }
    let mut rows = Vec::new();
    let mut base_qps = None;
    for (shape, fraction, tail) in &settings {
        // Untimed pass: recall (tail rows map back to the snapshot rows they copy) and warm-up.
        let stride = if *fraction > 0.0 { (1.0 / fraction).round().max(1.0) as usize } else { 1 };
        let results: Vec<Vec<u32>> = qs
            .iter()
            .map(|q| {
                let hits = tail.search(&index, q, a.k, a.ef);
                hits.iter()
                    .map(|h| if (h.row as usize) < n { h.row } else { ((h.row as usize - n) * stride) as u32 })
                    .collect()
            })
            .collect();
        let (qps, cpu_qps, lat) = measure(&index, tail, &qs, a.k, a.ef, a);
        let base = *base_qps.get_or_insert(qps);
        let mut row = json!({
            "tail": shape, "fraction": fraction, "tail_rows": tail.rows(), "tombstones": tail.tombstones(),
            "qps": qps, "cpu_qps": cpu_qps, "qps_vs_no_tail": qps / base, "latency": latency_summary(lat),
        });
        if *shape != "append" {
            let (r1, rk) = recalls(&results, &truth, a.k);
            row["recall1"] = json!(r1);
            row["recall10"] = json!(rk);
        }
        rows.push(row);
    }
    Ok(json!({
        "engine": "kim", "vectors": n, "queries": qs.len(), "k": a.k,
        "ef": if a.ef == 0 { index.ef_search } else { a.ef }, "snapshot_id": manifest.id,
        "search_threads": 1, "kernels": kim_index::kernels::active().name, "settings": rows,
    }))
}
