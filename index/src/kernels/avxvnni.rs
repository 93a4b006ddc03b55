//! AVX-VNNI (256-bit `vpdpbusd`, e.g. CPUs without AVX-512) for the u8 dot products; the other
//! kernels are the AVX2 ones. Same exactness argument as the AVX-512 module.

use super::{avx2, scalar, Kernels};
use std::arch::x86_64::*;

pub const KERNELS: Kernels = Kernels {
    name: "avx-vnni",
    dot_u8: |a, b, z| unsafe { dot_u8(a, b, z) },
    dot_u8_i8: |a, b| unsafe { dot_u8_i8(a, b) },
    ..avx2::KERNELS
};

#[target_feature(enable = "avx2")]
fn hsum_i32(v: __m256i) -> i64 {
    let lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(v));
    let hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256::<1>(v));
    let s = _mm256_add_epi64(lo, hi);
    let mut l = [0i64; 4];
    // SAFETY: `l` holds exactly one 256-bit vector.
    unsafe { _mm256_storeu_si256(l.as_mut_ptr() as *mut __m256i, s) };
    l.iter().sum()
}

#[target_feature(enable = "avx2")]
fn hsum_i64(v: __m256i) -> i64 {
    let mut l = [0i64; 4];
    // SAFETY: `l` holds exactly one 256-bit vector.
    unsafe { _mm256_storeu_si256(l.as_mut_ptr() as *mut __m256i, v) };
    l.iter().sum()
}

#[target_feature(enable = "avx2,avxvnni")]
unsafe fn dot_u8_i8(a: &[u8], b: &[i8]) -> i64 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let (mut acc0, mut acc1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
    let mut i = 0;
    while i + 64 <= n {
        acc0 = _mm256_dpbusd_avx_epi32(acc0, _mm256_loadu_si256(pa.add(i) as _), _mm256_loadu_si256(pb.add(i) as _));
        acc1 = _mm256_dpbusd_avx_epi32(
            acc1,
            _mm256_loadu_si256(pa.add(i + 32) as _),
            _mm256_loadu_si256(pb.add(i + 32) as _),
        );
        i += 64;
    }
    hsum_i32(_mm256_add_epi32(acc0, acc1)) + scalar::dot_u8_i8(&a[i..n], &b[i..n])
}

/// Σ (a−z)(b−z) = Σ a·(b^0x80) + 128Σa − zΣa − zΣb + n·z² (see the AVX-512 module).
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn dot_u8(a: &[u8], b: &[u8], z: i32) -> i64 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let flip = _mm256_set1_epi8(-128);
    let zero = _mm256_setzero_si256();
    let (mut acc, mut sa, mut sb) = (zero, zero, zero);
    let mut i = 0;
    while i + 32 <= n {
        let x = _mm256_loadu_si256(pa.add(i) as _);
        let y = _mm256_loadu_si256(pb.add(i) as _);
        acc = _mm256_dpbusd_avx_epi32(acc, x, _mm256_xor_si256(y, flip));
        sa = _mm256_add_epi64(sa, _mm256_sad_epu8(x, zero));
        sb = _mm256_add_epi64(sb, _mm256_sad_epu8(y, zero));
        i += 32;
    }
    let (sa, sb, z, m) = (hsum_i64(sa), hsum_i64(sb), z as i64, i as i64);
    hsum_i32(acc) + 128 * sa - z * sa - z * sb + m * z * z + scalar::dot_u8(&a[i..n], &b[i..n], z as i32)
}
