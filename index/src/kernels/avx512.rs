//! AVX-512 kernels (F, BW, VNNI): 64 bytes or 16 floats a step, tails by masked loads (masked
//! lanes read as 0), so no scalar loop at the end.
//!
//! Byte dot products use `vpdpbusd` (unsigned × signed bytes, four products summed into each
//! i32 lane). Other signednesses are moved into that form by flipping the top bit
//! (x ^ 0x80 = x ± 128) and correcting with byte sums (`vpsadbw`), so every result is exact.
//! Per i32 lane one step adds at most 4·255·128 < 2¹⁷, so 2¹⁰ steps (65 536 dimensions,
//! `MAX_DIMENSIONS`) stay below 2³¹.

use super::{avx2, Kernels};
use std::arch::x86_64::*;

pub const KERNELS: Kernels = Kernels {
    name: "avx512-vnni",
    dot_u8: |a, b, z| unsafe { dot_u8(a, b, z) },
    dot_i8: |a, b| unsafe { dot_i8(a, b) },
    dot_u8_i8: |a, b| unsafe { dot_u8_i8(a, super::as_bytes(b)) },
    // Every AVX-512 CPU runs AVX2; one 4-bit kernel serves all x86 sets.
    dot_u4_i8: avx2::KERNELS.dot_u4_i8,
    l2_u8: |a, b| unsafe { l2_bytes::<false>(a, b) },
    l2_i8: |a, b| unsafe { l2_bytes::<true>(a, b) },
    dot_f32: |a, b| unsafe { dot_f32(a, b) },
    l2_f32: |a, b| unsafe { l2_f32(a, b) },
};

/// Mask of the first `n` (< 64) byte lanes.
#[inline(always)]
fn tail_mask(n: usize) -> u64 {
    (1u64 << n) - 1
}

/// Sum of the 16 i32 lanes, widened so it cannot overflow.
#[target_feature(enable = "avx512f")]
fn hsum_i32(v: __m512i) -> i64 {
    let lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(v));
    let hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64::<1>(v));
    _mm512_reduce_add_epi64(_mm512_add_epi64(lo, hi))
}

/// Σ a·b with `a` unsigned and `b` signed bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dot_u8_i8(a: &[u8], b: &[u8]) -> i64 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let (mut acc0, mut acc1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
    let mut i = 0;
    while i + 128 <= n {
        acc0 = _mm512_dpbusd_epi32(acc0, _mm512_loadu_si512(pa.add(i) as _), _mm512_loadu_si512(pb.add(i) as _));
        acc1 =
            _mm512_dpbusd_epi32(acc1, _mm512_loadu_si512(pa.add(i + 64) as _), _mm512_loadu_si512(pb.add(i + 64) as _));
        i += 128;
    }
    while i < n {
        let m = if n - i >= 64 { u64::MAX } else { tail_mask(n - i) };
        acc0 = _mm512_dpbusd_epi32(
            acc0,
            _mm512_maskz_loadu_epi8(m, pa.add(i) as _),
            _mm512_maskz_loadu_epi8(m, pb.add(i) as _),
        );
        i += 64;
    }
    hsum_i32(_mm512_add_epi32(acc0, acc1))
}

/// Σ (a−z)(b−z) over u8: Σ a·(b^0x80) = Σab − 128Σa by `vpdpbusd`, Σa and Σb by `vpsadbw`,
/// then Σab − zΣa − zΣb + n·z².
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dot_u8(a: &[u8], b: &[u8], z: i32) -> i64 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let flip = _mm512_set1_epi8(-128);
    let zero = _mm512_setzero_si512();
    let (mut acc, mut sa, mut sb) = (zero, zero, zero);
    let mut i = 0;
    while i < n {
        let m = if n - i >= 64 { u64::MAX } else { tail_mask(n - i) };
        let x = _mm512_maskz_loadu_epi8(m, pa.add(i) as _);
        let y = _mm512_maskz_loadu_epi8(m, pb.add(i) as _);
        // Masked lanes: x = 0, so y^0x80 = −128 there contributes nothing.
        acc = _mm512_dpbusd_epi32(acc, x, _mm512_xor_si512(y, flip));
        sa = _mm512_add_epi64(sa, _mm512_sad_epu8(x, zero));
        sb = _mm512_add_epi64(sb, _mm512_sad_epu8(y, zero));
        i += 64;
    }
    let (sa, sb) = (_mm512_reduce_add_epi64(sa), _mm512_reduce_add_epi64(sb));
    let (z, n) = (z as i64, n as i64);
    let ab = hsum_i32(acc) + 128 * sa;
    ab - z * sa - z * sb + n * z * z
}

/// Σ a·b over i8: (a^0x80) is a + 128 as u8, so Σ (a^0x80)·b = Σab + 128Σb.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dot_i8(a: &[u8], b: &[u8]) -> i64 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let flip = _mm512_set1_epi8(-128);
    let zero = _mm512_setzero_si512();
    let (mut acc, mut sb) = (zero, zero);
    let mut i = 0;
    while i < n {
        let m = if n - i >= 64 { u64::MAX } else { tail_mask(n - i) };
        let x = _mm512_maskz_loadu_epi8(m, pa.add(i) as _);
        let y = _mm512_maskz_loadu_epi8(m, pb.add(i) as _);
        // Masked lanes: y = 0 contributes nothing to either sum (y^0x80 = 128 there is
        // counted below as padding).
        acc = _mm512_dpbusd_epi32(acc, _mm512_xor_si512(x, flip), y);
        sb = _mm512_add_epi64(sb, _mm512_sad_epu8(_mm512_xor_si512(y, flip), zero));
        i += 64;
    }
    // Σ over all processed lanes of (y^0x80) = Σb + 128·lanes.
    let lanes = n.div_ceil(64) as i64 * 64;
    let sum_b = _mm512_reduce_add_epi64(sb) - 128 * lanes;
    hsum_i32(acc) - 128 * sum_b
}

/// Σ (a−b)²: |a−b| as bytes (max − min), widened to i16 and squared by `vpmaddwd`. For i8 both
/// sides are flipped to unsigned first, which keeps every difference.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn l2_bytes<const SIGNED: bool>(a: &[u8], b: &[u8]) -> i64 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let flip = _mm512_set1_epi8(if SIGNED { -128 } else { 0 });
    let zero = _mm512_setzero_si512();
    let mut acc = zero;
    let mut i = 0;
    while i < n {
        let m = if n - i >= 64 { u64::MAX } else { tail_mask(n - i) };
        // Masked lanes are 0 on both sides (flipped alike), so their difference is 0.
        let x = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, pa.add(i) as _), flip);
        let y = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, pb.add(i) as _), flip);
        let d = _mm512_sub_epi8(_mm512_max_epu8(x, y), _mm512_min_epu8(x, y));
        let (lo, hi) = (_mm512_unpacklo_epi8(d, zero), _mm512_unpackhi_epi8(d, zero));
        acc = _mm512_add_epi32(acc, _mm512_add_epi32(_mm512_madd_epi16(lo, lo), _mm512_madd_epi16(hi, hi)));
        i += 64;
    }
    hsum_i32(acc)
}

/// Mask of the first `n` (< 16) float lanes.
#[inline(always)]
fn tail_mask16(n: usize) -> u16 {
    ((1u32 << n) - 1) as u16
}

/// Σ a·b: four 16-wide FMA chains, then 16 a step, then a masked tail.
#[target_feature(enable = "avx512f")]
unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= n {
        for (k, lane) in acc.iter_mut().enumerate() {
            *lane = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i + 16 * k)), _mm512_loadu_ps(pb.add(i + 16 * k)), *lane);
        }
        i += 64;
    }
    while i < n {
        let m = if n - i >= 16 { u16::MAX } else { tail_mask16(n - i) };
        acc[0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, pa.add(i)), _mm512_maskz_loadu_ps(m, pb.add(i)), acc[0]);
        i += 16;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
}

/// Σ (a−b)², laid out like [`dot_f32`].
#[target_feature(enable = "avx512f")]
unsafe fn l2_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= n {
        for (k, lane) in acc.iter_mut().enumerate() {
            let d = _mm512_sub_ps(_mm512_loadu_ps(pa.add(i + 16 * k)), _mm512_loadu_ps(pb.add(i + 16 * k)));
            *lane = _mm512_fmadd_ps(d, d, *lane);
        }
        i += 64;
    }
    while i < n {
        let m = if n - i >= 16 { u16::MAX } else { tail_mask16(n - i) };
        let d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, pa.add(i)), _mm512_maskz_loadu_ps(m, pb.add(i)));
        acc[0] = _mm512_fmadd_ps(d, d, acc[0]);
        i += 16;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
}
