//! HNSW construction with `hnsw_rs` (parallel insertion), then conversion of its graph into
//! the flat [`Graph`] that matchers search.

use std::time::{Duration, Instant};

use anndists::dist::Distance;
use hnsw_rs::hnsw::Hnsw;

use crate::descriptor::{DescriptorSpec, Metric};
use crate::flat::{Csr, Graph};
use crate::kernels::{self, Kernels};
use crate::vectors::{raw_dot, raw_l2, RowRef, Storage, VectorStore};
use crate::HnswParams;

/// hnsw_rs caps layers at 16.
const MAX_LAYERS: usize = 16;

/// Build-time distance. hnsw_rs asserts distances are ≥ 0 and never NaN, so rounding is
/// clamped here; ordering among valid inputs is unchanged.
struct BuildDistance {
    spec: DescriptorSpec,
    kernels: &'static Kernels,
    /// `dot` is built as `offset − a·b` with offset = the largest ‖v‖², which is ≥ 0 by
    /// Cauchy–Schwarz and keeps the true order even for vectors that are not unit length.
    dot_offset: f64,
    /// Cosine rows carry their inverse norm after the `dims` values (4 bytes for byte rows,
    /// one element for f32 rows), so a distance costs one dot product instead of three.
    dims: usize,
}

fn tail_f32(b: &[u8]) -> f32 {
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

impl BuildDistance {
    fn eval_rows(&self, a: RowRef<'_>, b: RowRef<'_>) -> f32 {
        let k = self.kernels;
        if self.spec.metric == Metric::Cosine {
            let d = self.dims;
            let cos = match (a, b) {
                (RowRef::Bytes(a), RowRef::Bytes(b)) => {
                    raw_dot(k, &self.spec, RowRef::Bytes(&a[..d]), RowRef::Bytes(&b[..d])) as f32 * tail_f32(&a[d..]) * tail_f32(&b[d..])
                }
                (RowRef::F32(a), RowRef::F32(b)) => (k.dot_f32)(&a[..d], &b[..d]) * a[d] * b[d],
                _ => unreachable!("rows share one encoding"),
            };
            let dist = 1.0 - cos;
            return if dist.is_nan() { 0.0 } else { dist.max(0.0) };
        }
        let s2 = match a {
            RowRef::Bytes(_) => (self.spec.scale as f64).powi(2),
            RowRef::F32(_) => 1.0,
        };
        let d = match self.spec.metric {
            Metric::Cosine => unreachable!("handled above"),
            Metric::Dot => self.dot_offset - raw_dot(k, &self.spec, a, b) * s2,
            Metric::L2 => raw_l2(k, &self.spec, a, b) * s2,
        };
        if d.is_nan() { 0.0 } else { d.max(0.0) as f32 }
    }
}

impl Distance<u8> for BuildDistance {
    fn eval(&self, a: &[u8], b: &[u8]) -> f32 {
        self.eval_rows(RowRef::Bytes(a), RowRef::Bytes(b))
    }
}
impl Distance<f32> for BuildDistance {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        self.eval_rows(RowRef::F32(a), RowRef::F32(b))
    }
}

/// Progress of a build: rows inserted so far, total rows, time since start.
pub type Progress<'a> = &'a (dyn Fn(usize, usize, Duration) + Sync);

/// Builds the graph over all rows of `store` with `threads` worker threads.
pub fn build_graph(store: &VectorStore, params: HnswParams, threads: usize, progress: Progress<'_>) -> Result<Graph, String> {
    if params.m < 2 || params.m > 128 {
        return Err(format!("hnsw m must be in 2..=128, got {}", params.m));
    }
    if params.ef_construction < params.m {
        return Err(format!("efConstruction ({}) must be at least m ({})", params.ef_construction, params.m));
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build().map_err(|e| e.to_string())?;
    let dot_offset = if store.spec.metric == Metric::Dot { store.max_self_dot().max(1.0) } else { 0.0 };
    let n = store.len();
    let d = store.spec.dimensions;
    let dist = BuildDistance { spec: store.spec, kernels: kernels::active(), dot_offset, dims: d };
    let cosine = store.spec.metric == Metric::Cosine;
    pool.install(|| match &store.storage {
        Storage::Bytes(b) if cosine => {
            let rows: Vec<u8> = (0..n).flat_map(|i| b[i * d..(i + 1) * d].iter().copied().chain(store.inv_norm(i).to_le_bytes())).collect();
            Ok(insert_all(rows.chunks_exact(d + 4).collect(), n, params, dist, progress))
        }
        Storage::F32(f) if cosine => {
            let rows: Vec<f32> = (0..n).flat_map(|i| f[i * d..(i + 1) * d].iter().copied().chain([store.inv_norm(i)])).collect();
            Ok(insert_all(rows.chunks_exact(d + 1).collect(), n, params, dist, progress))
        }
        Storage::Bytes(b) => Ok(insert_all(b.chunks_exact(d).collect(), n, params, dist, progress)),
        Storage::F32(f) => Ok(insert_all(f.chunks_exact(d).collect(), n, params, dist, progress)),
    })
}

fn insert_all<T>(rows: Vec<&[T]>, n: usize, params: HnswParams, dist: BuildDistance, progress: Progress<'_>) -> Graph
where
    T: Clone + Copy + Send + Sync + std::fmt::Debug,
    BuildDistance: Distance<T>,
{
    if n == 0 {
        return Graph::default();
    }
    let hnsw: Hnsw<T, BuildDistance> = Hnsw::new(params.m, n, MAX_LAYERS, params.ef_construction, dist);
    let start = Instant::now();
    // Chunks small enough that progress is reported every few seconds on large builds.
    let chunk = (n / 200).clamp(1_000, 20_000);
    let mut done = 0;
    for part in rows.chunks(chunk) {
        let batch: Vec<(&[T], usize)> = part.iter().enumerate().map(|(i, r)| (*r, done + i)).collect();
        hnsw.parallel_insert_slice(&batch);
        done += part.len();
        progress(done, n, start.elapsed());
    }
    flatten(&hnsw, n)
}

/// Copies hnsw_rs's per-point neighbour lists into CSR arrays keyed by row number (origin
/// ids must be row numbers `0..n`). Public so tests can compare searches on one graph.
pub fn flatten<T, D>(hnsw: &Hnsw<T, D>, n: usize) -> Graph
where
    T: Clone + Send + Sync,
    D: Distance<T> + Send + Sync,
{
    let pi = hnsw.get_point_indexation();
    let max_level = pi.get_max_level_observed();
    let mut levels = vec![0u8; n];
    let mut neighbours: Vec<Vec<Vec<u32>>> = vec![Vec::new(); n];
    let mut entry = None;
    for layer in (0..=max_level as usize).rev() {
        for p in pi.get_layer_iterator(layer) {
            let row = p.get_origin_id();
            levels[row] = p.get_point_id().0;
            entry.get_or_insert(row as u32);
            neighbours[row] = p
                .get_neighborhood_id()
                .into_iter()
                .take(layer + 1)
                .map(|l| l.iter().map(|nb| nb.get_origin_id() as u32).collect())
                .collect();
        }
    }
    let layer0 = Csr::from_rows(neighbours.iter().map(|l| l.first().cloned().unwrap_or_default()));
    let upper_nodes: Vec<u32> = (0..n as u32).filter(|&i| levels[i as usize] > 0).collect();
    let upper = (1..=max_level as usize)
        .map(|l| Csr::from_rows(upper_nodes.iter().map(|&u| neighbours[u as usize].get(l).cloned().unwrap_or_default())))
        .collect();
    Graph { entry: entry.unwrap_or(0), max_level, levels, layer0, upper_nodes, upper }
}

