//! `kim-bench build` and `kim-bench search`: kim's side of the index benchmark.
//!
//! `build` runs the production build (`kim_index::build::build_graph`) and writes a real
//! snapshot; `search` loads it in a fresh process (timing the load and the RSS it adds) and
//! sweeps the beam width, one search thread, against exact ground truth.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Args;
use kim_index::build::build_graph;
use kim_index::flat::Ids;
use kim_index::{snapshot, DescriptorSpec, FlatIndex, HnswParams, Manifest, Matrix, Metric, Query, VectorStore};
use serde_json::{json, Value};

use crate::sys::{latency_summary, rss_bytes, thread_cpu_seconds};

/// Namespace the benchmark writes snapshots under (matchers default to it too).
pub const NAMESPACE: &str = "default";

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Base vectors: .npy (u8, i8, f16 or f32), .fvecs or .kimv.
    #[arg(long)]
    pub base: PathBuf,
    #[arg(long, default_value = "cosine")]
    pub metric: Metric,
    /// u8 zero point (default 128).
    #[arg(long)]
    pub zero_point: Option<i32>,
    /// Integer encodings: real value = (stored − zero point) · scale.
    #[arg(long)]
    pub scale: Option<f32>,
    #[arg(long, default_value_t = HnswParams::default().m)]
    pub m: usize,
    #[arg(long, default_value_t = HnswParams::default().ef_construction)]
    pub ef_construction: usize,
    /// Beam width stored as the snapshot's default.
    #[arg(long, default_value_t = HnswParams::default().ef_search)]
    pub ef_search: usize,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Storage root; the snapshot goes to <storage>/default/<label>.
    #[arg(long)]
    pub storage: PathBuf,
    #[arg(long)]
    pub label: String,
}

pub fn spec_for(m: &Matrix, metric: Metric, zero_point: Option<i32>, scale: Option<f32>) -> DescriptorSpec {
    let mut spec = DescriptorSpec::new(1, m.dims, m.encoding, metric);
    if let Some(z) = zero_point {
        spec.zero_point = z;
    }
    if let Some(s) = scale {
        spec.scale = s;
    }
    spec
}

pub fn build(a: &BuildArgs) -> anyhow::Result<Value> {
    let m = Matrix::read(&a.base).with_context(|| format!("reading {}", a.base.display()))?;
    let spec = spec_for(&m, a.metric, a.zero_point, a.scale);
    let store = VectorStore::from_matrix(&spec, &m)?;
    drop(m);
    let params = HnswParams { m: a.m, ef_construction: a.ef_construction, ef_search: a.ef_search };
    let n = store.len();
    let cpu0 = crate::sys::self_cpu_seconds();
    let t = Instant::now();
    let graph = build_graph(&store, params, a.threads, &|_, _, _| {})?;
    let build_seconds = t.elapsed().as_secs_f64();
    let build_cpu_seconds = crate::sys::self_cpu_seconds() - cpu0;
    let ids = Ids::from_lines(&(0..n).map(|i| i.to_string()).collect::<Vec<_>>().join("\n"))?;
    let index = FlatIndex { vectors: store, graph, ids, ef_search: a.ef_search };
    let g = &index.graph;
    let degree0 = g.layer0.targets.len() as f64 / n.max(1) as f64;
    let upper = g.upper_nodes.len();
    let dir = snapshot::label_dir(&a.storage, NAMESPACE, &a.label);
    let manifest = write_snapshot(&dir, &a.label, spec, params, build_seconds, &index)?;
    Ok(json!({
        "engine": "kim",
        "encoding": spec.encoding,
        "vectors": n,
        "dimensions": spec.dimensions,
        "build_seconds": build_seconds,
        "build_threads": a.threads,
        "build_cpu_seconds": build_cpu_seconds,
        "m": a.m,
        "ef_construction": a.ef_construction,
        "bytes_per_vector": index.bytes_per_vector(),
        "snapshot_id": manifest.id,
        "snapshot_bytes": manifest.files.values().map(|f| f.bytes).sum::<u64>(),
        "graph": {"max_level": g.max_level, "mean_degree_layer0": degree0, "upper_nodes": upper},
    }))
}

/// Writes `index` as a complete snapshot under `dir` and makes it CURRENT.
pub fn write_snapshot(
    dir: &Path,
    label: &str,
    spec: DescriptorSpec,
    hnsw: HnswParams,
    build_seconds: f64,
    index: &FlatIndex,
) -> anyhow::Result<Manifest> {
    let manifest = Manifest {
        format: snapshot::FORMAT,
        id: snapshot::new_snapshot_id(),
        namespace: NAMESPACE.to_string(),
        label: label.to_string(),
        descriptor: spec,
        hnsw,
        vectors: index.len(),
        source_digest: "kim-bench".to_string(),
        created_at: format!(
            "{}",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs()
        ),
        build_seconds,
        files: Default::default(),
    };
    let written = snapshot::write(dir, manifest, index)?;
    snapshot::publish(dir, &written.id)?;
    Ok(written)
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    #[arg(long)]
    pub storage: PathBuf,
    #[arg(long)]
    pub label: String,
    /// Queries in the index's encoding (.npy).
    #[arg(long)]
    pub queries: PathBuf,
    /// Exact neighbours: one line per query, row numbers separated by spaces, nearest first.
    #[arg(long)]
    pub truth: PathBuf,
    /// Optional second ground truth (e.g. the f32 truth for a u8 index), reported as *_alt.
    #[arg(long)]
    pub truth_alt: Option<PathBuf>,
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Beam widths to sweep.
    #[arg(long, value_delimiter = ',', default_value = "10,16,24,32,48,64,96,128,192,256,384,512")]
    pub efs: Vec<usize>,
    /// Timed passes over all queries per ef continue until this much time was spent...
    #[arg(long, default_value_t = 1.0)]
    pub min_seconds: f64,
    /// ...or this many passes ran (the fastest pass counts).
    #[arg(long, default_value_t = 50)]
    pub max_passes: usize,
    /// Write the result rows of the last ef to this file (one line per query, as `--truth`).
    #[arg(long)]
    pub results: Option<PathBuf>,
}

/// Reads a query file and decodes every row for the index's spec.
pub fn read_queries(path: &Path, spec: &DescriptorSpec) -> anyhow::Result<(Matrix, Vec<Query>)> {
    let m = Matrix::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        m.dims == spec.dimensions && m.encoding == spec.encoding,
        "queries are {}×{} but the index is {}×{}",
        m.dims,
        m.encoding,
        spec.dimensions,
        spec.encoding
    );
    let qs = (0..m.rows)
        .map(|i| spec.decode(m.row(i), spec.version).map_err(|e| anyhow::anyhow!("query {i}: {e}")))
        .collect::<Result<_, _>>()?;
    Ok((m, qs))
}

pub fn read_truth(path: &Path) -> anyhow::Result<Vec<Vec<u32>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(|l| {
            l.split_whitespace()
                .map(|x| x.parse::<u32>().map_err(|e| anyhow::anyhow!("{}: {e}", path.display())))
                .collect()
        })
        .collect()
}

/// (recall@1, recall@k) of result rows against truth rows.
pub fn recalls(results: &[Vec<u32>], truth: &[Vec<u32>], k: usize) -> (f64, f64) {
    let n = results.len().min(truth.len()).max(1) as f64;
    let mut r1 = 0.0;
    let mut rk = 0.0;
    for (got, want) in results.iter().zip(truth) {
        let want = &want[..k.min(want.len())];
        if let (Some(g), Some(w)) = (got.first(), want.first()) {
            r1 += f64::from(u8::from(g == w));
        }
        let hits = want.iter().filter(|w| got.iter().take(k).any(|g| g == *w)).count();
        rk += hits as f64 / want.len().max(1) as f64;
    }
    (r1 / n, rk / n)
}

/// One timed pass over all queries: (wall seconds, thread CPU seconds, per-query latencies in µs).
pub fn timed_pass(index: &FlatIndex, qs: &[Query], k: usize, ef: usize) -> (f64, f64, Vec<f64>) {
    let mut lat = Vec::with_capacity(qs.len());
    let cpu = thread_cpu_seconds();
    let t = Instant::now();
    for q in qs {
        let t0 = Instant::now();
        let hits = index.search(q, k, ef);
        lat.push(t0.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(hits);
    }
    (t.elapsed().as_secs_f64(), thread_cpu_seconds() - cpu, lat)
}

/// Throughput of one search thread over repeated passes.
pub struct Qps {
    /// Queries per wall second of the fastest pass.
    pub qps: f64,
    /// ... of the median pass.
    pub qps_median_pass: f64,
    /// Queries per CPU second of the search thread (least CPU over the passes).
    pub cpu_qps: f64,
    pub passes: usize,
    /// Per-query latencies (µs) of the fastest pass.
    pub latencies_us: Vec<f64>,
}

/// Repeats timed passes until `min_seconds` passed or `max_passes` ran (at least one).
pub fn measure_qps(index: &FlatIndex, qs: &[Query], k: usize, ef: usize, min_seconds: f64, max_passes: usize) -> Qps {
    let start = Instant::now();
    let mut passes: Vec<(f64, f64, Vec<f64>)> = Vec::new();
    while passes.len() < max_passes.max(1)
        && (passes.is_empty() || start.elapsed() < Duration::from_secs_f64(min_seconds))
    {
        passes.push(timed_pass(index, qs, k, ef));
    }
    let nq = qs.len() as f64;
    let mut wall: Vec<f64> = passes.iter().map(|p| p.0).collect();
    wall.sort_by(f64::total_cmp);
    let cpu = passes.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let best = passes.iter().min_by(|a, b| a.0.total_cmp(&b.0)).map(|p| p.2.clone()).unwrap_or_default();
    Qps {
        qps: nq / wall[0],
        qps_median_pass: nq / wall[wall.len() / 2],
        cpu_qps: nq / cpu.max(1e-9),
        passes: passes.len(),
        latencies_us: best,
    }
}

pub fn search(a: &SearchArgs) -> anyhow::Result<Value> {
    let dir = snapshot::label_dir(&a.storage, NAMESPACE, &a.label);
    let rss_before = rss_bytes();
    let t = Instant::now();
    let (manifest, index) = snapshot::load_current(&dir)?;
    let load_seconds = t.elapsed().as_secs_f64();
    let rss_after = rss_bytes();
    let spec = index.vectors.spec;
    let (_, qs) = read_queries(&a.queries, &spec)?;
    let truth = read_truth(&a.truth)?;
    ensure!(truth.len() == qs.len(), "{} truth lines for {} queries", truth.len(), qs.len());
    let alt = a.truth_alt.as_deref().map(read_truth).transpose()?;
    let n = index.len();
    let mut sweep = Vec::new();
    for &ef in &a.efs {
        // Untimed pass: results for recall, and warms caches for the timed passes.
        let results: Vec<Vec<u32>> =
            qs.iter().map(|q| index.search(q, a.k, ef).iter().map(|h| h.row).collect()).collect();
        let (r1, rk) = recalls(&results, &truth, a.k);
        if let Some(path) = a.results.as_deref() {
            let lines: Vec<String> =
                results.iter().map(|r| r.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")).collect();
            std::fs::write(path, lines.join("\n") + "\n").with_context(|| format!("writing {}", path.display()))?;
        }
        let m = measure_qps(&index, &qs, a.k, ef, a.min_seconds, a.max_passes);
        let mut row = json!({
            "ef": ef, "recall1": r1, "recall10": rk, "qps": m.qps, "qps_median_pass": m.qps_median_pass, "cpu_qps": m.cpu_qps,
            "passes": m.passes, "latency": latency_summary(m.latencies_us),
        });
        if let Some(alt) = &alt {
            let (a1, ak) = recalls(&results, alt, a.k);
            row["recall1_alt"] = json!(a1);
            row["recall10_alt"] = json!(ak);
        }
        sweep.push(row);
    }
    Ok(json!({
        "engine": "kim",
        "encoding": spec.encoding,
        "vectors": n,
        "queries": qs.len(),
        "k": a.k,
        "snapshot_id": manifest.id,
        "load_seconds": load_seconds,
        "bytes_per_vector": index.bytes_per_vector(),
        "rss_delta_bytes": rss_after.saturating_sub(rss_before),
        "rss_bytes_per_vector": rss_after.saturating_sub(rss_before) as f64 / n.max(1) as f64,
        "rss_after_load": rss_after,
        "search_threads": 1,
        "kernels": kim_index::kernels::active().name,
        "sweep": sweep,
    }))
}
