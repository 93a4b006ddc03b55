//! HNSW construction ([`crate::hnsw`]) over a [`VectorStore`]: picks the distances for the
//! store's encoding and metric once, so the builder's inner loop is one SIMD kernel call.
//! Cosine stores are walked on their 4-bit codes ([`Coded`]) and linked on exact distances.

use std::time::Duration;

use crate::descriptor::{DescriptorSpec, Encoding, Metric};
use crate::error::Error;
use crate::flat::{Cand, Graph};
use crate::hnsw::{self, Space};
use crate::kernels::{self, prefetch, score_prefetched, Kernels};
use crate::nibbles::{unit_row, NibbleQuery, Nibbles};
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
    type Probe = u32;
    fn probe(&self, q: u32) -> u32 {
        q
    }
    #[inline]
    fn walk(&self, &q: &u32, b: u32) -> f32 {
        self.dist(q, b)
    }
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
    #[inline]
    fn prefetch_exact(&self, b: u32) {
        self.prefetch(b);
        let d = self.store.spec.dimensions;
        prefetch(self.shifted.as_ptr().wrapping_add(b as usize * d) as *const u8, self.prefetch_bytes());
    }
}

/// Every other encoding/metric: the store's own pairwise distance.
struct Generic<'a>(&'a VectorStore);

impl Space for Generic<'_> {
    type Probe = u32;
    fn probe(&self, q: u32) -> u32 {
        q
    }
    fn walk(&self, &q: &u32, b: u32) -> f32 {
        self.dist(q, b)
    }
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

/// A cosine space whose beam walks on the 4-bit codes of the rows, as searches do
/// ([`crate::nibbles`]: half the bytes of an 8-bit row per distance), while links are chosen on
/// `exact`'s distances: the candidates a walk finds are re-scored with them first.
struct Coded<'a, S> {
    exact: S,
    codes: Nibbles,
    /// The store the codes are of (for the inserted row as a unit vector).
    store: &'a VectorStore,
    dot: fn(&[u8], &[i8]) -> i64,
}

impl<S: Space> Space for Coded<'_, S> {
    type Probe = NibbleQuery;
    fn probe(&self, q: u32) -> NibbleQuery {
        let mut unit = vec![0f32; self.store.spec.dimensions];
        unit_row(self.store, q as usize, &mut unit);
        self.codes.query(&unit)
    }
    #[inline]
    fn walk(&self, p: &NibbleQuery, b: u32) -> f32 {
        self.codes.distance(p, self.dot, b as usize)
    }
    fn rescore(&self, q: u32, found: &mut [Cand]) {
        let rows: Vec<u32> = found.iter().map(|c| c.1).collect();
        let mut next = found.iter_mut();
        score_prefetched(
            &rows,
            self.exact.prefetch_bytes(),
            |b| self.exact.prefetch(b),
            |b| {
                let c = next.next().expect("one candidate per row");
                *c = Cand(self.exact.dist(q, b), b);
            },
        );
        found.sort_unstable();
    }
    #[inline]
    fn dist(&self, a: u32, b: u32) -> f32 {
        self.exact.dist(a, b)
    }
    #[inline]
    fn prefetch(&self, b: u32) {
        prefetch(self.codes.row_ptr(b as usize), self.codes.row_bytes());
    }
    fn prefetch_bytes(&self) -> usize {
        self.codes.row_bytes()
    }
    fn prefetch_exact(&self, b: u32) {
        self.exact.prefetch_exact(b);
    }
    fn duplicates(&self, d: f32) -> bool {
        self.exact.duplicates(d)
    }
}

fn coded<'a, S: Space>(exact: S, store: &'a VectorStore, k: &Kernels) -> Coded<'a, S> {
    let codes = Nibbles::of(store).expect("cosine stores have codes");
    Coded { exact, codes, store, dot: k.dot_u4_i8 }
}

fn cosine_u8<'a>(store: &'a VectorStore, rows: &'a [u8], k: &Kernels) -> CosineU8<'a> {
    let mut shifted = huge_capacity(rows.len());
    shifted.extend(rows.iter().map(|&x| (x ^ 0x80) as i8));
    let sums = shifted.chunks_exact(store.spec.dimensions).map(|r| r.iter().map(|&x| x as i64).sum()).collect();
    CosineU8 { rows, shifted, sums, store, dot: k.dot_u8_i8 }
}

/// An f32 cosine store's rows as 8-bit codes, the rows the links of such a store are chosen on:
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
            Ok(hnsw::build(&coded(cosine_u8(store, rows, k), store, k), n, params, progress))
        }
        Storage::F32(rows) if spec.metric == Metric::Cosine => {
            // Links need the order of distances, not their last digits: choose them on the codes.
            let codes = byte_codes(store, rows);
            let Storage::Bytes(b) = &codes.storage else { unreachable!("codes are bytes") };
            Ok(hnsw::build(&coded(cosine_u8(&codes, b, k), store, k), n, params, progress))
        }
        _ => Ok(hnsw::build(&Generic(store), n, params, progress)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flat::{exact_search, recall, FlatIndex, Ids};
    use crate::synth::{generate, SynthParams};

    /// Walking on 4-bit codes must cost the graph no recall against walking on the rows, and
    /// the candidates it finds must reach the link choice with their exact distances.
    #[test]
    fn builds_walked_on_codes_link_as_well_as_builds_walked_on_rows() {
        let data = generate(SynthParams {
            identities: 1_000,
            samples: 3,
            dimensions: 64,
            intrinsic: 24,
            mated_probes: 100,
            nonmated_probes: 100,
            encoding: Encoding::U8,
            seed: 5,
        });
        let spec = DescriptorSpec::new(1, 64, Encoding::U8, Metric::Cosine);
        let store = VectorStore::from_matrix(&spec, &data.base).unwrap();
        let Storage::Bytes(rows) = &store.storage else { panic!("u8 rows") };
        let (k, n) = (kernels::active(), store.len());
        let params = HnswParams { m: 8, ef_construction: 48, ef_search: 16 };
        let space = coded(cosine_u8(&store, rows, k), &store, k);

        let mut found: Vec<Cand> = (0..40).map(|b| Cand(space.walk(&space.probe(7), b), b)).collect();
        space.rescore(7, &mut found);
        assert!(found.windows(2).all(|w| w[0] <= w[1]), "closest first");
        assert!(found.iter().all(|c| c.0 == space.exact.dist(7, c.1)), "exact distances");

        let on_codes = hnsw::build(&space, n, params, &|_, _, _| {});
        let on_rows = hnsw::build(&cosine_u8(&store, rows, k), n, params, &|_, _, _| {});
        let recall_of = |graph: Graph| {
            let index = FlatIndex { vectors: store.clone(), graph, ids: Ids::from_vec(&data.ids), ef_search: 16 };
            let probes = (0..data.nonmated.rows).map(|i| spec.decode(data.nonmated.row(i), 1).unwrap());
            probes.map(|q| recall(&index.search(&q, 10, 16), &exact_search(&store, &q, 10))).sum::<f64>()
                / data.nonmated.rows as f64
        };
        let (codes, exact) = (recall_of(on_codes), recall_of(on_rows));
        eprintln!("recall@10 at ef 16: graph walked on codes {codes:.4}, on rows {exact:.4}");
        assert!(exact > 0.8 && codes >= exact - 0.02, "codes {codes}, rows {exact}");
    }

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
