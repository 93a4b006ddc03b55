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
}

impl BuildDistance {
    fn eval_rows(&self, a: RowRef<'_>, b: RowRef<'_>) -> f32 {
        let k = self.kernels;
        let s2 = match a {
            RowRef::Bytes(_) => (self.spec.scale as f64).powi(2),
            RowRef::F32(_) => 1.0,
        };
        let d = match self.spec.metric {
            Metric::Cosine => {
                let den = (raw_dot(k, &self.spec, a, a) * raw_dot(k, &self.spec, b, b)).sqrt();
                if den > 0.0 { 1.0 - raw_dot(k, &self.spec, a, b) / den } else { 1.0 }
            }
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
    let dist = BuildDistance { spec: store.spec, kernels: kernels::active(), dot_offset };
    let n = store.len();
    let d = store.spec.dimensions;
    pool.install(|| match &store.storage {
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

/// Copies hnsw_rs's per-point neighbour lists into CSR arrays keyed by row number.
fn flatten<T, D>(hnsw: &Hnsw<T, D>, n: usize) -> Graph
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

