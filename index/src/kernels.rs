//! Exact distance kernels. Integer encodings accumulate in integers (no rounding at all);
//! `f32` uses fused multiply-add. Each kernel has a scalar reference in [`scalar`]; the SIMD
//! versions are picked once at run time from the CPU's features and are tested against it.

use std::sync::OnceLock;

/// The kernel set in use on this CPU.
#[derive(Clone, Copy)]
pub struct Kernels {
    pub name: &'static str,
    /// Σ (a−z)(b−z) over u8 values with zero point z.
    pub dot_u8: fn(&[u8], &[u8], i32) -> i64,
    /// Σ a·b over i8 values.
    pub dot_i8: fn(&[u8], &[u8]) -> i64,
    /// Σ (a−b)² over u8 values (the zero point cancels).
    pub l2_u8: fn(&[u8], &[u8]) -> i64,
    /// Σ (a−b)² over i8 values.
    pub l2_i8: fn(&[u8], &[u8]) -> i64,
    pub dot_f32: fn(&[f32], &[f32]) -> f32,
    pub l2_f32: fn(&[f32], &[f32]) -> f32,
}

static ACTIVE: OnceLock<Kernels> = OnceLock::new();

/// The fastest kernel set this CPU supports (`KIM_KERNELS=scalar` forces the reference).
pub fn active() -> &'static Kernels {
    ACTIVE.get_or_init(|| {
        if std::env::var("KIM_KERNELS").as_deref() == Ok("scalar") {
            return SCALAR;
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return avx2::KERNELS;
        }
        SCALAR
    })
}

pub const SCALAR: Kernels = Kernels {
    name: "scalar",
    dot_u8: scalar::dot_u8,
    dot_i8: scalar::dot_i8,
    l2_u8: scalar::l2_u8,
    l2_i8: scalar::l2_i8,
    dot_f32: scalar::dot_f32,
    l2_f32: scalar::l2_f32,
};

/// Asks the CPU to start loading `bytes` bytes at `p` into cache (a hint; never faults).
#[inline(always)]
pub fn prefetch(p: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut off = 0;
        while off < bytes {
            // SAFETY: prefetch is a hint and does not dereference the address.
            unsafe { _mm_prefetch(p.wrapping_add(off) as *const i8, _MM_HINT_T0) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

pub mod scalar {
    pub fn dot_u8(a: &[u8], b: &[u8], z: i32) -> i64 {
        a.iter().zip(b).map(|(&x, &y)| ((x as i32 - z) * (y as i32 - z)) as i64).sum()
    }
    pub fn dot_i8(a: &[u8], b: &[u8]) -> i64 {
        a.iter().zip(b).map(|(&x, &y)| (x as i8 as i32 * y as i8 as i32) as i64).sum()
    }
    pub fn l2_u8(a: &[u8], b: &[u8]) -> i64 {
        a.iter().zip(b).map(|(&x, &y)| (x as i32 - y as i32).pow(2) as i64).sum()
    }
    pub fn l2_i8(a: &[u8], b: &[u8]) -> i64 {
        a.iter().zip(b).map(|(&x, &y)| (x as i8 as i32 - y as i8 as i32).pow(2) as i64).sum()
    }
    pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }
    pub fn l2_f32(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{scalar, Kernels};
    use std::arch::x86_64::*;

    pub const KERNELS: Kernels = Kernels {
        name: "avx2",
        dot_u8: |a, b, z| unsafe { dot_u8(a, b, z) },
        dot_i8: |a, b| unsafe { dot_i8(a, b) },
        l2_u8: |a, b| unsafe { l2_u8(a, b) },
        l2_i8: |a, b| unsafe { l2_i8(a, b) },
        dot_f32: |a, b| unsafe { dot_f32(a, b) },
        l2_f32: |a, b| unsafe { l2_f32(a, b) },
    };

    #[inline(always)]
    unsafe fn hsum_i32(v: __m256i) -> i64 {
        let mut lanes = [0i32; 8];
        _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, v);
        lanes.iter().map(|&x| x as i64).sum()
    }

    #[inline(always)]
    unsafe fn hsum_f32(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Widen 16 bytes to 16 × i16, as unsigned or signed.
    #[inline(always)]
    unsafe fn widen<const SIGNED: bool>(p: *const u8) -> __m256i {
        let v = _mm_loadu_si128(p as *const __m128i);
        if SIGNED {
            _mm256_cvtepi8_epi16(v)
        } else {
            _mm256_cvtepu8_epi16(v)
        }
    }

    /// Σ (a−z)(b−z), 16 values a step: widen to i16, subtract z, multiply-add pairs into i32.
    /// Per lane the sum stays below 2³¹ for any length up to `MAX_DIMENSIONS`.
    #[target_feature(enable = "avx2")]
    unsafe fn dot_bytes<const SIGNED: bool>(a: &[u8], b: &[u8], z: i32) -> i64 {
        let n = a.len().min(b.len());
        let zv = _mm256_set1_epi16(z as i16);
        let (mut acc0, mut acc1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        let mut i = 0;
        while i + 32 <= n {
            let x0 = _mm256_sub_epi16(widen::<SIGNED>(a.as_ptr().add(i)), zv);
            let y0 = _mm256_sub_epi16(widen::<SIGNED>(b.as_ptr().add(i)), zv);
            let x1 = _mm256_sub_epi16(widen::<SIGNED>(a.as_ptr().add(i + 16)), zv);
            let y1 = _mm256_sub_epi16(widen::<SIGNED>(b.as_ptr().add(i + 16)), zv);
            acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(x0, y0));
            acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(x1, y1));
            i += 32;
        }
        let mut sum = hsum_i32(acc0) + hsum_i32(acc1);
        sum += if SIGNED { scalar::dot_i8(&a[i..n], &b[i..n]) } else { scalar::dot_u8(&a[i..n], &b[i..n], z) };
        sum
    }

    #[target_feature(enable = "avx2")]
    unsafe fn l2_bytes<const SIGNED: bool>(a: &[u8], b: &[u8]) -> i64 {
        let n = a.len().min(b.len());
        let (mut acc0, mut acc1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        let mut i = 0;
        while i + 32 <= n {
            let d0 = _mm256_sub_epi16(widen::<SIGNED>(a.as_ptr().add(i)), widen::<SIGNED>(b.as_ptr().add(i)));
            let d1 = _mm256_sub_epi16(widen::<SIGNED>(a.as_ptr().add(i + 16)), widen::<SIGNED>(b.as_ptr().add(i + 16)));
            acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(d0, d0));
            acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(d1, d1));
            i += 32;
        }
        let tail = if SIGNED { scalar::l2_i8(&a[i..n], &b[i..n]) } else { scalar::l2_u8(&a[i..n], &b[i..n]) };
        hsum_i32(acc0) + hsum_i32(acc1) + tail
    }

    #[target_feature(enable = "avx2")]
    unsafe fn dot_u8(a: &[u8], b: &[u8], z: i32) -> i64 {
        dot_bytes::<false>(a, b, z)
    }
    #[target_feature(enable = "avx2")]
    unsafe fn dot_i8(a: &[u8], b: &[u8]) -> i64 {
        dot_bytes::<true>(a, b, 0)
    }
    #[target_feature(enable = "avx2")]
    unsafe fn l2_u8(a: &[u8], b: &[u8]) -> i64 {
        l2_bytes::<false>(a, b)
    }
    #[target_feature(enable = "avx2")]
    unsafe fn l2_i8(a: &[u8], b: &[u8]) -> i64 {
        l2_bytes::<true>(a, b)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, lane) in acc.iter_mut().enumerate() {
                let x = _mm256_loadu_ps(a.as_ptr().add(i + 8 * k));
                let y = _mm256_loadu_ps(b.as_ptr().add(i + 8 * k));
                *lane = _mm256_fmadd_ps(x, y, *lane);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i)), acc[0]);
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        hsum_f32(s) + scalar::dot_f32(&a[i..n], &b[i..n])
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn l2_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, lane) in acc.iter_mut().enumerate() {
                let d = _mm256_sub_ps(_mm256_loadu_ps(a.as_ptr().add(i + 8 * k)), _mm256_loadu_ps(b.as_ptr().add(i + 8 * k)));
                *lane = _mm256_fmadd_ps(d, d, *lane);
            }
            i += 32;
        }
        while i + 8 <= n {
            let d = _mm256_sub_ps(_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i)));
            acc[0] = _mm256_fmadd_ps(d, d, acc[0]);
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        hsum_f32(s) + scalar::l2_f32(&a[i..n], &b[i..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn simd() -> Kernels {
        *active()
    }

    proptest! {
        #[test]
        fn integer_kernels_match_reference_exactly(
            pairs in prop::collection::vec((any::<u8>(), any::<u8>()), 0..700),
            z in 0i32..=255,
        ) {
            let (a, b): (Vec<u8>, Vec<u8>) = pairs.into_iter().unzip();
            let k = simd();
            prop_assert_eq!((k.dot_u8)(&a, &b, z), scalar::dot_u8(&a, &b, z));
            prop_assert_eq!((k.dot_i8)(&a, &b), scalar::dot_i8(&a, &b));
            prop_assert_eq!((k.l2_u8)(&a, &b), scalar::l2_u8(&a, &b));
            prop_assert_eq!((k.l2_i8)(&a, &b), scalar::l2_i8(&a, &b));
        }

        #[test]
        fn f32_kernels_match_reference_closely(
            pairs in prop::collection::vec((-10.0f32..10.0, -10.0f32..10.0), 0..700),
        ) {
            let (a, b): (Vec<f32>, Vec<f32>) = pairs.into_iter().unzip();
            let k = simd();
            let bound: f32 = a.iter().zip(&b).map(|(x, y)| (x * y).abs() + (x - y).powi(2)).sum::<f32>() * 1e-5 + 1e-4;
            prop_assert!(((k.dot_f32)(&a, &b) - scalar::dot_f32(&a, &b)).abs() <= bound);
            prop_assert!(((k.l2_f32)(&a, &b) - scalar::l2_f32(&a, &b)).abs() <= bound);
        }
    }

    #[test]
    fn extreme_values_at_max_length_do_not_overflow() {
        let n = crate::descriptor::MAX_DIMENSIONS;
        let a = vec![255u8; n];
        let b = vec![0u8; n];
        let k = simd();
        assert_eq!((k.dot_u8)(&a, &b, 0), 0);
        assert_eq!((k.dot_u8)(&a, &a, 0), 255 * 255 * n as i64);
        assert_eq!((k.l2_u8)(&a, &b), 255 * 255 * n as i64);
        let lo = vec![0x80u8; n]; // -128 as i8
        assert_eq!((k.dot_i8)(&lo, &lo), 128 * 128 * n as i64);
        assert_eq!((k.l2_i8)(&lo, &a), 127 * 127 * n as i64); // -128 − (−1)
    }
}
