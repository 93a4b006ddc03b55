//! HNSW construction ([`crate::hnsw`]) over a [`VectorStore`]: picks the distance for the
//! store's encoding and metric once, so the builder's inner loop is one SIMD kernel call.

use std::time::Duration;

use crate::descriptor::{Encoding, Metric};
use crate::error::Error;
use crate::flat::Graph;
use crate::hnsw::{self, Space};
use crate::kernels::{self, prefetch, Kernels};
use crate::vectors::{Codes, Storage, VectorStore};
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

/// Every other encoding/metric: the store's own pairwise distance.
struct Generic<'a>(&'a VectorStore);

impl Space for Generic<'_> {
    fn dist(&self, a: u32, b: u32) -> f32 {
        self.0.pair_distance(a as usize, b as usize)
    }
    fn prefetch(&self, _: u32) {}
    fn duplicates(&self, d: f32) -> bool {
        self.0.spec.metric != Metric::Dot && d <= hnsw::DUPLICATE
    }
}

fn cosine_u8<'a>(store: &'a VectorStore, rows: &'a [u8], k: &Kernels) -> CosineU8<'a> {
    let shifted: Vec<i8> = rows.iter().map(|&x| (x ^ 0x80) as i8).collect();
    let sums = shifted.chunks_exact(store.spec.dimensions).map(|r| r.iter().map(|&x| x as i64).sum()).collect();
    CosineU8 { rows, shifted, sums, store, dot: k.dot_u8_i8 }
}

/// Builds the graph over all rows of `store` with `threads` worker threads.
pub fn build_graph(
    store: &VectorStore,
    params: HnswParams,
    threads: usize,
    progress: Progress<'_>,
) -> Result<Graph, Error> {
    if params.m < 2 || params.m > 128 {
        return Err(Error::Settings(format!("hnsw m must be in 2..=128, got {}", params.m)));
    }
    if params.ef_construction < params.m {
        return Err(Error::Settings(format!(
            "efConstruction ({}) must be at least m ({})",
            params.ef_construction, params.m
        )));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(|e| Error::Settings(format!("cannot start {threads} build threads: {e}")))?;
    let n = store.len();
    let k = kernels::active();
    let spec = &store.spec;
    pool.install(|| match &store.storage {
        Storage::Bytes(rows)
            if spec.metric == Metric::Cosine && spec.encoding == Encoding::U8 && spec.zero_point == 128 =>
        {
            Ok(hnsw::build(&cosine_u8(store, rows, k), n, params, progress))
        }
        Storage::F32(rows) if spec.metric == Metric::Cosine => {
            // The graph needs the order of distances, not their last digits: build on the codes.
            let codes = Codes::of(store, rows);
            let Storage::Bytes(b) = &codes.store.storage else { unreachable!("codes are bytes") };
            Ok(hnsw::build(&cosine_u8(&codes.store, b, k), n, params, progress))
        }
        _ => Ok(hnsw::build(&Generic(store), n, params, progress)),
    })
}
