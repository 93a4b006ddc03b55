//! 4-bit codes of a cosine store's rows: what the graph search walks before it re-ranks its
//! candidates on the rows themselves.
//!
//! A graph walk reads one row at a random place per distance, and on most machines those reads,
//! not the arithmetic, bound it. A code row is half a byte per dimension (256 bytes for 512
//! dimensions), so a walk touches half the cache lines of one on 8-bit rows, an eighth of one on
//! f32 rows, and none of the per-row norms.
//!
//! Each row is scaled to unit length, centred on the per-dimension mean of the store and
//! quantised per dimension: code = round((x − mean)/step) + 8, clamped to 1..=15, where the
//! step spreads ±2.5 standard deviations of that dimension over ±7. The dot product of a query
//! with a decoded row is then `Σ q·mean + Σ (q·step)(code − 8)`: the query's weights `q·step`
//! are quantised to i8 once, and each row costs one unsigned×signed multiply-add per dimension
//! (`Kernels::dot_u4_i8`). Constant terms per query do not change the order of rows; they are
//! kept so the walk's distances approximate cosine distances.
//!
//! Layout: rows padded with zero-weight dimensions to a multiple of 64; each 32-byte block holds
//! 64 dimensions, dimension `64b + t` in the low nibble of byte `t` and `64b + 32 + t` in its
//! high nibble, so a SIMD kernel unpacks a block with one mask and one shift.

use rayon::prelude::*;

use crate::descriptor::{DescriptorSpec, Encoding, Metric};
use crate::vectors::{huge_capacity, Prepared, RowRef, Storage, VectorStore};

/// Dimensions per 32-byte block of codes.
pub const BLOCK_DIMS: usize = 64;
/// Standard deviations of a dimension that map to the outermost codes (±7).
const SPREAD: f32 = 2.5;
/// Rows sampled (evenly spread) for the per-dimension mean and spread.
const SAMPLE: usize = 65_536;

/// The 4-bit codes of every row of one store.
#[derive(Debug, Clone)]
pub struct Nibbles {
    dims: usize,
    /// Bytes per code row (`padded dims / 2`).
    row_bytes: usize,
    codes: Vec<u8>,
    mean: Vec<f32>,
    /// Value of one code step per dimension (0 for a constant dimension).
    step: Vec<f32>,
}

/// A query prepared against [`Nibbles`]: `distance = offset − raw · unit`.
pub struct NibbleQuery {
    weights: Vec<i8>,
    offset: f32,
    unit: f32,
}

impl Nibbles {
    /// Codes of the rows of `store`, a cosine store (`None` for other metrics).
    pub fn of(store: &VectorStore) -> Option<Nibbles> {
        if store.spec.metric != Metric::Cosine {
            return None;
        }
        let (n, d) = (store.len(), store.spec.dimensions);
        let padded = d.next_multiple_of(BLOCK_DIMS);
        let mut row = vec![0f32; d];
        let (mut sum, mut sq) = (vec![0f64; d], vec![0f64; d]);
        let stride = n.div_ceil(SAMPLE).max(1);
        let mut sampled = 0usize;
        for i in (0..n).step_by(stride) {
            unit_row(store, i, &mut row);
            for ((s, q), &x) in sum.iter_mut().zip(&mut sq).zip(&row) {
                *s += x as f64;
                *q += x as f64 * x as f64;
            }
            sampled += 1;
        }
        let m = sampled.max(1) as f64;
        let mean: Vec<f32> = sum.iter().map(|s| (s / m) as f32).collect();
        let step: Vec<f32> = sum
            .iter()
            .zip(&sq)
            .map(|(s, q)| {
                let var = (q / m - (s / m).powi(2)).max(0.0);
                (SPREAD * var.sqrt() as f32) / 7.0
            })
            .collect();
        let row_bytes = padded / 2;
        let mut codes = huge_capacity(n * row_bytes);
        codes.resize(n * row_bytes, 0);
        codes.par_chunks_mut(row_bytes).enumerate().for_each_init(
            || vec![0f32; d],
            |row, (i, out)| {
                unit_row(store, i, row);
                pack(row, &mean, &step, out);
            },
        );
        Some(Nibbles { dims: d, row_bytes, codes, mean, step })
    }

    /// Bytes per code row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// Code row `i`.
    #[inline]
    pub fn row(&self, i: usize) -> &[u8] {
        &self.codes[i * self.row_bytes..(i + 1) * self.row_bytes]
    }

    /// Where code row `i` starts, for prefetching.
    #[inline]
    pub fn row_ptr(&self, i: usize) -> *const u8 {
        self.codes.as_ptr().wrapping_add(i * self.row_bytes)
    }

    /// Prepares a query, already prepared against `spec`'s store, for [`Nibbles::distance`].
    pub fn prepare(&self, spec: &DescriptorSpec, p: &Prepared<'_>) -> NibbleQuery {
        let mut unit = vec![0f32; self.dims];
        to_unit(spec, p.row(), p.inv_norm(), &mut unit);
        self.query(&unit)
    }

    /// Prepares a query given as a unit vector (the query scaled by its inverse norm).
    pub fn query(&self, unit: &[f32]) -> NibbleQuery {
        let w: Vec<f32> = unit.iter().zip(&self.step).map(|(q, s)| q * s).collect();
        let max = w.iter().fold(0f32, |m, x| m.max(x.abs()));
        let scale = if max > 0.0 { 127.0 / max } else { 0.0 };
        let mut weights = vec![0i8; 2 * self.row_bytes];
        for (o, x) in weights.iter_mut().zip(&w) {
            *o = (x * scale).round().clamp(-127.0, 127.0) as i8;
        }
        let base: f32 = unit.iter().zip(&self.mean).map(|(q, m)| q * m).sum();
        let wsum: i64 = weights.iter().map(|&x| x as i64).sum();
        let unit = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        // dot ≈ base + (raw − 8·wsum)·unit, distance = 1 − dot.
        NibbleQuery { offset: 1.0 - base + 8.0 * wsum as f32 * unit, unit, weights }
    }

    /// Approximate cosine distance from a prepared query to row `i`.
    #[inline]
    pub fn distance(&self, q: &NibbleQuery, dot: fn(&[u8], &[i8]) -> i64, i: usize) -> f32 {
        q.offset - dot(self.row(i), &q.weights) as f32 * q.unit
    }

    /// Bytes held per vector.
    pub fn bytes_per_vector(&self) -> usize {
        self.row_bytes
    }
}

/// Row `i` of a cosine store as a unit vector in real units (zero stays zero).
pub fn unit_row(store: &VectorStore, i: usize, out: &mut [f32]) {
    let row = match &store.storage {
        Storage::F32(_) => RowRef::F32(store.row_f32(i)),
        Storage::Bytes(_) => RowRef::Bytes(store.row_bytes(i)),
    };
    to_unit(&store.spec, row, store.inv_norm(i), out)
}

/// A row or query in the spec's encoding, times `inv` (its 1/‖v‖), as real values.
fn to_unit(spec: &DescriptorSpec, row: RowRef<'_>, inv: f32, out: &mut [f32]) {
    match row {
        RowRef::F32(f) => out.iter_mut().zip(f).for_each(|(o, &x)| *o = x * inv),
        RowRef::Bytes(b) if spec.encoding == Encoding::I8 => {
            out.iter_mut().zip(b).for_each(|(o, &x)| *o = x as i8 as f32 * inv)
        }
        RowRef::Bytes(b) => {
            let z = spec.zero_point as f32;
            out.iter_mut().zip(b).for_each(|(o, &x)| *o = (x as f32 - z) * inv)
        }
    }
}

/// Packs one unit row into the block layout described in the module docs.
fn pack(row: &[f32], mean: &[f32], step: &[f32], out: &mut [u8]) {
    out.fill(0x88); // padding dimensions: code 8 (zero) in both nibbles
    for (j, ((&x, &m), &s)) in row.iter().zip(mean).zip(step).enumerate() {
        let c = if s > 0.0 { ((x - m) / s).round().clamp(-7.0, 7.0) as i32 + 8 } else { 8 } as u8;
        let (block, t) = (j / BLOCK_DIMS, j % BLOCK_DIMS);
        let byte = &mut out[block * 32 + t % 32];
        *byte = if t < 32 { (*byte & 0xf0) | c } else { (*byte & 0x0f) | (c << 4) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels;

    fn store(n: usize, d: usize, seed: u64) -> VectorStore {
        let mut rng = crate::rng::SeededRng::new(seed);
        let rows: Vec<f32> = (0..n * d).map(|_| rng.next_u64() as u32 as f32 / u32::MAX as f32 - 0.3).collect();
        VectorStore::new(DescriptorSpec::new(1, d, Encoding::F32, Metric::Cosine), Storage::F32(rows))
    }

    #[test]
    fn codes_decode_to_within_half_a_step_and_pad_with_zero_weight() {
        let s = store(200, 70, 3);
        let nb = Nibbles::of(&s).unwrap();
        assert_eq!(nb.row_bytes(), 64); // 70 dimensions padded to 128
        let mut row = vec![0f32; 70];
        unit_row(&s, 5, &mut row);
        let code = |j: usize| {
            let (b, t) = (j / 64, j % 64);
            let byte = nb.row(5)[b * 32 + t % 32];
            if t < 32 {
                byte & 15
            } else {
                byte >> 4
            }
        };
        for (j, &x) in row.iter().enumerate() {
            let c = code(j);
            assert!((1..=15).contains(&c));
            let decoded = nb.mean[j] + (c as f32 - 8.0) * nb.step[j];
            if (2..=14).contains(&c) {
                assert!((decoded - x).abs() <= nb.step[j] / 2.0 + 1e-6, "dim {j}");
            }
        }
        assert!((70..128).all(|j| code(j) == 8));
    }

    #[test]
    fn code_distances_follow_exact_ones() {
        let s = store(500, 96, 9);
        let nb = Nibbles::of(&s).unwrap();
        let dot = kernels::active().dot_u4_i8;
        let mut q = vec![0f32; 96];
        unit_row(&s, 17, &mut q);
        let p = nb.query(&q);
        let mut worst = 0f32;
        for i in 0..s.len() {
            let mut r = vec![0f32; 96];
            unit_row(&s, i, &mut r);
            let exact = 1.0 - q.iter().zip(&r).map(|(a, b)| a * b).sum::<f32>();
            worst = worst.max((nb.distance(&p, dot, i) - exact).abs());
        }
        assert!(worst < 0.05, "largest error {worst}");
        // The query's own row is the nearest by its codes too.
        let best = (0..s.len()).min_by(|&a, &b| nb.distance(&p, dot, a).total_cmp(&nb.distance(&p, dot, b)));
        assert_eq!(best, Some(17));
    }

    #[test]
    fn other_metrics_get_no_codes() {
        let l2 = VectorStore::new(DescriptorSpec::new(1, 4, Encoding::F32, Metric::L2), Storage::F32(vec![1.0; 8]));
        assert!(Nibbles::of(&l2).is_none());
    }
}
