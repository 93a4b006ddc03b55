//! Vectors in their serving encoding, stored contiguously (u8/i8 stay one byte per dimension),
//! and the metric arithmetic that turns kernel output into distances and similarities.

use crate::descriptor::{DescriptorSpec, Encoding, Metric, Query};
use crate::error::Error;
use crate::io::Matrix;
use crate::kernels::{self, Kernels};
use crate::nibbles::Nibbles;

/// Row-major vectors. `Bytes` holds u8 (with the spec's zero point) or i8 values; f16 sources
/// are widened to `F32`.
#[derive(Debug, Clone, PartialEq)]
pub enum Storage {
    Bytes(Vec<u8>),
    F32(Vec<f32>),
}

/// The vectors of one index plus what the metric needs precomputed (inverse norms for cosine).
#[derive(Debug, Clone)]
pub struct VectorStore {
    pub spec: DescriptorSpec,
    pub storage: Storage,
    len: usize,
    /// 1/‖v‖ per row for cosine (0 for a zero vector); empty for other metrics.
    inv_norms: Vec<f32>,
    nibbles: Option<Box<Nibbles>>,
}

impl VectorStore {
    /// Builds the store from source rows, checking they fit the spec.
    pub fn from_matrix(spec: &DescriptorSpec, m: &Matrix) -> Result<Self, Error> {
        spec.validate()?;
        if m.dims != spec.dimensions {
            return Err(Error::WrongDimension { expected: spec.dimensions, got: m.dims });
        }
        let storage = match (m.encoding, spec.encoding) {
            (a, b) if a != b => return Err(Error::WrongEncoding { expected: b, got: a }),
            // Huge pages, as a loaded snapshot's rows have: a build reads rows all over them.
            (Encoding::U8 | Encoding::I8, _) => {
                let mut v = huge_capacity(m.data.len());
                v.extend_from_slice(&m.data);
                Storage::Bytes(v)
            }
            (Encoding::F16 | Encoding::F32, _) => {
                let mut v = huge_capacity(m.rows * m.dims);
                m.extend_f32(&mut v);
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(Error::NonFinite { row: i / m.dims });
                }
                Storage::F32(v)
            }
        };
        Ok(Self::new(*spec, storage))
    }

    pub fn new(spec: DescriptorSpec, storage: Storage) -> Self {
        let len = match &storage {
            Storage::Bytes(b) => b.len() / spec.dimensions,
            Storage::F32(f) => f.len() / spec.dimensions,
        };
        let mut s = VectorStore { spec, storage, len, inv_norms: Vec::new(), nibbles: None };
        if spec.metric == Metric::Cosine {
            s.inv_norms = (0..len).map(|i| inv_norm(s.self_dot(i))).collect();
        }
        s
    }

    /// The store with [`Nibbles`] of its rows added, for serving searches (cosine stores;
    /// others are returned as they are).
    pub fn with_walk_codes(mut self) -> Self {
        self.nibbles = Nibbles::of(&self).map(Box::new);
        self
    }

    /// The 4-bit codes a search walks, where the store has them.
    pub fn nibbles(&self) -> Option<&Nibbles> {
        self.nibbles.as_deref()
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn row_bytes(&self, i: usize) -> &[u8] {
        let d = self.spec.dimensions;
        match &self.storage {
            Storage::Bytes(b) => &b[i * d..(i + 1) * d],
            Storage::F32(_) => panic!("row_bytes on a float store"),
        }
    }
    pub fn row_f32(&self, i: usize) -> &[f32] {
        let d = self.spec.dimensions;
        match &self.storage {
            Storage::F32(f) => &f[i * d..(i + 1) * d],
            Storage::Bytes(_) => panic!("row_f32 on a byte store"),
        }
    }

    /// Raw little-endian bytes, as written to a snapshot.
    pub fn raw_bytes(&self) -> Vec<u8> {
        match &self.storage {
            Storage::Bytes(b) => b.clone(),
            Storage::F32(f) => f.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    /// Bytes held in memory per vector (data plus precomputed norms, and the codes where held).
    pub fn bytes_per_vector(&self) -> usize {
        let data = match &self.storage {
            Storage::Bytes(_) => self.spec.dimensions,
            Storage::F32(_) => 4 * self.spec.dimensions,
        };
        data + if self.inv_norms.is_empty() { 0 } else { 4 } + self.nibbles().map_or(0, Nibbles::bytes_per_vector)
    }

    /// 1/‖v‖ of row `i` (cosine stores only; 0 for a zero vector).
    pub fn inv_norm(&self, i: usize) -> f32 {
        self.inv_norms[i]
    }

    /// Where row `i`'s inverse norm lies, for prefetching beside the row.
    pub(crate) fn inv_norm_ptr(&self, i: usize) -> *const u8 {
        self.inv_norms.as_ptr().wrapping_add(i) as *const u8
    }

    fn self_dot(&self, i: usize) -> f64 {
        raw_dot(kernels::active(), &self.spec, self.row_ref(i), self.row_ref(i))
    }

    fn row_ref(&self, i: usize) -> RowRef<'_> {
        let r = i * self.spec.dimensions..(i + 1) * self.spec.dimensions;
        match &self.storage {
            Storage::Bytes(b) => RowRef::Bytes(&b[r]),
            Storage::F32(f) => RowRef::F32(&f[r]),
        }
    }

    /// Prepares a decoded query for repeated distance evaluation against this store.
    pub fn prepare<'q>(&self, q: &'q Query) -> Prepared<'q> {
        let row = match q {
            Query::Bytes(b) => RowRef::Bytes(b),
            Query::F32(f) => RowRef::F32(f),
        };
        let inv = if self.spec.metric == Metric::Cosine {
            inv_norm(raw_dot(kernels::active(), &self.spec, row, row))
        } else {
            1.0
        };
        Prepared { row, inv_norm: inv, kernels: kernels::active() }
    }

    /// Ordering distance from a prepared query to row `i`: smaller is closer. Cosine: 1 − cos;
    /// dot: 1 − dot; l2: squared euclidean distance (in real units for integer encodings).
    #[inline]
    pub fn distance(&self, q: &Prepared<'_>, i: usize) -> f32 {
        let row = self.row_ref(i);
        match self.spec.metric {
            Metric::Cosine => {
                1.0 - (raw_dot(q.kernels, &self.spec, q.row, row) as f32) * q.inv_norm * self.inv_norms[i]
            }
            Metric::Dot => 1.0 - (raw_dot(q.kernels, &self.spec, q.row, row) * self.real_scale2()) as f32,
            Metric::L2 => (raw_l2(q.kernels, &self.spec, q.row, row) * self.real_scale2()) as f32,
        }
    }

    /// [`Self::distance`] between two stored rows (what the graph build compares).
    pub fn pair_distance(&self, a: usize, b: usize) -> f32 {
        let (ra, rb) = (self.row_ref(a), self.row_ref(b));
        let k = kernels::active();
        match self.spec.metric {
            Metric::Cosine => 1.0 - (raw_dot(k, &self.spec, ra, rb) as f32) * (self.inv_norms[a] * self.inv_norms[b]),
            Metric::Dot => 1.0 - (raw_dot(k, &self.spec, ra, rb) * self.real_scale2()) as f32,
            Metric::L2 => (raw_l2(k, &self.spec, ra, rb) * self.real_scale2()) as f32,
        }
    }

    fn real_scale2(&self) -> f64 {
        match self.storage {
            Storage::Bytes(_) => (self.spec.scale as f64).powi(2),
            Storage::F32(_) => 1.0,
        }
    }
}

/// An empty vector with room for `len` elements whose memory the kernel is asked to back with
/// transparent huge pages (where the system allows them only on request). Searches touch rows
/// all over a large array; 2 MiB pages save most of the TLB misses of 4 KiB ones. Fill it by
/// extending, so pages are first touched after the advice.
pub fn huge_capacity<T>(len: usize) -> Vec<T> {
    let v: Vec<T> = Vec::with_capacity(len);
    let bytes = len * std::mem::size_of::<T>();
    #[cfg(target_os = "linux")]
    if bytes >= 4 << 20 {
        let page = 4096;
        let start = (v.as_ptr() as usize).next_multiple_of(page);
        let end = (v.as_ptr() as usize + bytes) & !(page - 1);
        if end > start {
            // SAFETY: the range lies inside this vector's allocation; MADV_HUGEPAGE is advice
            // and does not change its contents. Failure (e.g. THP disabled) is harmless.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    v
}

/// Similarity in [0, 1] (1 = identical) from an ordering distance.
pub fn similarity(metric: Metric, distance: f32) -> f64 {
    let d = distance as f64;
    if d.is_nan() {
        return 0.0;
    }
    let s = match metric {
        Metric::Cosine | Metric::Dot => 1.0 - d / 2.0, // (1 + cos)/2 with cos = 1 − d
        Metric::L2 => 1.0 / (1.0 + d.max(0.0)),
    };
    s.clamp(0.0, 1.0)
}

/// A borrowed row or query in serving encoding.
#[derive(Clone, Copy)]
pub enum RowRef<'a> {
    Bytes(&'a [u8]),
    F32(&'a [f32]),
}

/// A query ready for distance evaluation.
pub struct Prepared<'q> {
    row: RowRef<'q>,
    inv_norm: f32,
    kernels: &'static Kernels,
}

impl Prepared<'_> {
    /// 1/‖q‖ for cosine (1 otherwise).
    pub fn inv_norm(&self) -> f32 {
        self.inv_norm
    }

    /// The query in serving encoding.
    pub fn row(&self) -> RowRef<'_> {
        self.row
    }
}

fn inv_norm(self_dot: f64) -> f32 {
    if self_dot > 0.0 {
        (1.0 / self_dot.sqrt()) as f32
    } else {
        0.0
    }
}

/// Σ a·b in the spec's signed units (integer-exact for u8/i8).
#[inline]
pub fn raw_dot(k: &Kernels, spec: &DescriptorSpec, a: RowRef<'_>, b: RowRef<'_>) -> f64 {
    match (a, b) {
        (RowRef::Bytes(a), RowRef::Bytes(b)) if spec.encoding == Encoding::I8 => (k.dot_i8)(a, b) as f64,
        (RowRef::Bytes(a), RowRef::Bytes(b)) => (k.dot_u8)(a, b, spec.zero_point) as f64,
        (RowRef::F32(a), RowRef::F32(b)) => (k.dot_f32)(a, b) as f64,
        _ => panic!("query and rows differ in encoding"),
    }
}

/// Σ (a−b)² in the spec's signed units.
#[inline]
pub fn raw_l2(k: &Kernels, spec: &DescriptorSpec, a: RowRef<'_>, b: RowRef<'_>) -> f64 {
    match (a, b) {
        (RowRef::Bytes(a), RowRef::Bytes(b)) if spec.encoding == Encoding::I8 => (k.l2_i8)(a, b) as f64,
        (RowRef::Bytes(a), RowRef::Bytes(b)) => (k.l2_u8)(a, b) as f64,
        (RowRef::F32(a), RowRef::F32(b)) => (k.l2_f32)(a, b) as f64,
        _ => panic!("query and rows differ in encoding"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_mapping_matches_design() {
        assert_eq!(similarity(Metric::Cosine, 0.0), 1.0);
        assert_eq!(similarity(Metric::Cosine, 1.0), 0.5);
        assert_eq!(similarity(Metric::Cosine, 2.0), 0.0);
        assert_eq!(similarity(Metric::Cosine, -1e-7), 1.0); // rounding past identical clamps
        assert_eq!(similarity(Metric::Dot, 3.0), 0.0);
        assert_eq!(similarity(Metric::L2, 1.0), 0.5);
        assert_eq!(similarity(Metric::L2, f32::NAN), 0.0);
    }

    #[test]
    fn u8_cosine_uses_the_zero_point() {
        let spec = DescriptorSpec::new(1, 4, Encoding::U8, Metric::Cosine);
        // (value − 128): row0 = (1,0,0,0)·k, row1 = (−1,0,0,0)·k, row2 = (0,1,0,0)·k
        let rows = vec![228, 128, 128, 128, 28, 128, 128, 128, 128, 178, 128, 128];
        let s = VectorStore::new(spec, Storage::Bytes(rows));
        let q = Query::Bytes(vec![138, 128, 128, 128]);
        let p = s.prepare(&q);
        assert!((s.distance(&p, 0) - 0.0).abs() < 1e-6);
        assert!((s.distance(&p, 1) - 2.0).abs() < 1e-6);
        assert!((s.distance(&p, 2) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn l2_integer_distance_is_scaled() {
        let mut spec = DescriptorSpec::new(1, 2, Encoding::I8, Metric::L2);
        spec.scale = 0.5;
        let s = VectorStore::new(spec, Storage::Bytes(vec![3, 0]));
        let q = Query::Bytes(vec![0, 4]);
        assert_eq!(s.distance(&s.prepare(&q), 0), 25.0 * 0.25);
    }
}
