//! HNSW construction ([`crate::hnsw`]) over a [`VectorStore`]: picks the distance for the
//! store's encoding and metric once, so the builder's inner loop is one SIMD kernel call.

use std::time::Duration;

use crate::descriptor::{DescriptorSpec, Encoding, Metric};
use crate::error::Error;
use crate::flat::Graph;
use crate::hnsw::{self, Space};
use crate::kernels::{self, prefetch, Kernels};
use crate::vectors::{huge_capacity, Storage, VectorStore};
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
        prefetch(self.rows.as_ptr().wrapping_add(b as usize * d), self.prefetch_bytes());
    }
    fn prefetch_bytes(&self) -> usize {
        self.store.spec.dimensions.min(1024)
    }
}

/// Every other encoding/metric: the store's own pairwise distance.
struct Generic<'a>(&'a VectorStore);

impl Space for Generic<'_> {
    fn dist(&self, a: u32, b: u32) -> f32 {
        self.0.pair_distance(a as usize, b as usize)
    }
    fn prefetch(&self, _: u32) {}
    fn prefetch_bytes(&self) -> usize {
        0
    }
    fn duplicates(&self, d: f32) -> bool {
        self.0.spec.metric != Metric::Dot && d <= hnsw::DUPLICATE
    }
}

fn cosine_u8<'a>(store: &'a VectorStore, rows: &'a [u8], k: &Kernels) -> CosineU8<'a> {
    let shifted: Vec<i8> = rows.iter().map(|&x| (x ^ 0x80) as i8).collect();
    let sums = shifted.chunks_exact(store.spec.dimensions).map(|r| r.iter().map(|&x| x as i64).sum()).collect();
    CosineU8 { rows, shifted, sums, store, dot: k.dot_u8_i8 }
}

/// An f32 cosine store's rows as 8-bit codes, the rows the graph of such a store is built on:
/// each row scaled to unit length, then one scale for all rows so the largest component maps
/// to ±127, held as a u8 cosine store with zero point 128. The order of code distances follows
/// the order of exact distances closely, at a quarter of the bytes per row.
fn byte_codes(store: &VectorStore, rows: &[f32]) -> VectorStore {
    let d = store.spec.dimensions;
    let max = rows
        .chunks_exact(d)
        .enumerate()
        .map(|(i, r)| r.iter().fold(0f32, |m, x| m.max(x.abs())) * store.inv_norm(i))
        .fold(0f32, f32::max);
    let scale = if max > 0.0 { 127.0 / max } else { 0.0 };
    let mut codes = huge_capacity(rows.len());
    for (i, r) in rows.chunks_exact(d).enumerate() {
        let s = scale * store.inv_norm(i);
        codes.extend(r.iter().map(|&x| ((x * s).round().clamp(-127.0, 127.0) as i32 + 128) as u8));
    }
    let spec = DescriptorSpec::new(store.spec.version, d, Encoding::U8, Metric::Cosine);
    VectorStore::new(spec, Storage::Bytes(codes))
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
            let codes = byte_codes(store, rows);
            let Storage::Bytes(b) = &codes.storage else { unreachable!("codes are bytes") };
            Ok(hnsw::build(&cosine_u8(&codes, b, k), n, params, progress))
        }
        _ => Ok(hnsw::build(&Generic(store), n, params, progress)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_codes_scale_rows_to_unit_length() {
        let spec = DescriptorSpec::new(1, 4, Encoding::F32, Metric::Cosine);
        // Row 1 is row 0 scaled by 10, row 2 is zero: codes see only directions.
        let rows = vec![0.8, -0.2, 0.0, 0.0, 8.0, -2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let store = VectorStore::new(spec, Storage::F32(rows.clone()));
        let codes = byte_codes(&store, &rows);
        let Storage::Bytes(b) = &codes.storage else { panic!("codes are bytes") };
        assert_eq!(&b[..4], &[128 + 127, 128 - 32, 128, 128]); // -0.2 / 0.8 · 127 = -31.75
        assert_eq!(&b[..4], &b[4..8]);
        assert_eq!(&b[8..], &[128; 4]);
    }
}
