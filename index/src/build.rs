//! HNSW construction ([`crate::hnsw`]) over a [`VectorStore`]: picks the distance for the
//! store's encoding and metric once, so the builder's inner loop is one SIMD kernel call.

use std::time::Duration;

use crate::descriptor::{Encoding, Metric};
use crate::flat::Graph;
use crate::hnsw::{self, Space};
use crate::kernels::{self, prefetch};
use crate::vectors::{Storage, VectorStore};
use crate::HnswParams;

/// Progress of a build: rows inserted so far, total rows, time since start.
pub type Progress<'a> = &'a (dyn Fn(usize, usize, Duration) + Sync);

/// u8 cosine: every row is also kept shifted into i8 (x − 128), so a distance is one
/// unsigned×signed multiply-add per byte, exact: Σ(a−z)(b−z) = Σ a·(b−z) − z·Σ(b−z).
struct CosineU8<'a> {
    rows: &'a [u8],
    shifted: Vec<i8>,
    sums: Vec<i64>,
    store: &'a VectorStore,
    dot: fn(&[u8], &[i8]) -> i64,
}

impl Space for CosineU8<'_> {
    #[inline]
    fn dist(&self, a: u32, b: u32) -> f32 {
        let (a, b, d) = (a as usize, b as usize, self.store.spec.dimensions);
        let raw = (self.dot)(&self.rows[b * d..(b + 1) * d], &self.shifted[a * d..(a + 1) * d]) - 128 * self.sums[a];
        1.0 - raw as f32 * (self.store.inv_norm(a) * self.store.inv_norm(b))
    }
    #[inline]
    fn prefetch(&self, b: u32) {
        let d = self.store.spec.dimensions;
        prefetch(self.rows.as_ptr().wrapping_add(b as usize * d), d.min(1024));
    }
}

struct CosineF32<'a> {
    rows: &'a [f32],
    store: &'a VectorStore,
    dot: fn(&[f32], &[f32]) -> f32,
}

impl Space for CosineF32<'_> {
    #[inline]
    fn dist(&self, a: u32, b: u32) -> f32 {
        let (a, b, d) = (a as usize, b as usize, self.store.spec.dimensions);
        1.0 - (self.dot)(&self.rows[a * d..(a + 1) * d], &self.rows[b * d..(b + 1) * d]) * (self.store.inv_norm(a) * self.store.inv_norm(b))
    }
    #[inline]
    fn prefetch(&self, b: u32) {
        let d = self.store.spec.dimensions;
        prefetch(self.rows.as_ptr().wrapping_add(b as usize * d) as *const u8, (4 * d).min(1024));
    }
}

/// Every other encoding/metric: the store's own pairwise distance.
struct Generic<'a>(&'a VectorStore);

impl Space for Generic<'_> {
    fn dist(&self, a: u32, b: u32) -> f32 {
        self.0.pair_distance(a as usize, b as usize)
    }
    fn prefetch(&self, _: u32) {}
}

/// Builds the graph over all rows of `store` with `threads` worker threads.
pub fn build_graph(store: &VectorStore, params: HnswParams, threads: usize, progress: Progress<'_>) -> Result<Graph, String> {
    if params.m < 2 || params.m > 128 {
        return Err(format!("hnsw m must be in 2..=128, got {}", params.m));
    }
    if params.ef_construction < params.m {
        return Err(format!("efConstruction ({}) must be at least m ({})", params.ef_construction, params.m));
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build().map_err(|e| e.to_string())?;
    let n = store.len();
    let k = kernels::active();
    let spec = &store.spec;
    pool.install(|| match &store.storage {
        Storage::Bytes(rows) if spec.metric == Metric::Cosine && spec.encoding == Encoding::U8 && spec.zero_point == 128 => {
            let shifted: Vec<i8> = rows.iter().map(|&x| (x ^ 0x80) as i8).collect();
            let d = spec.dimensions;
            let sums = shifted.chunks_exact(d).map(|r| r.iter().map(|&x| x as i64).sum()).collect();
            let space = CosineU8 { rows, shifted, sums, store, dot: k.dot_u8_i8 };
            Ok(hnsw::build(&space, n, params, progress))
        }
        Storage::F32(rows) if spec.metric == Metric::Cosine => Ok(hnsw::build(&CosineF32 { rows, store, dot: k.dot_f32 }, n, params, progress)),
        _ => Ok(hnsw::build(&Generic(store), n, params, progress)),
    })
}
