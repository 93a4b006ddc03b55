//! AVX2 + FMA kernels: bytes widened to i16 and multiply-added in pairs, f32 by FMA.
use super::{scalar, Kernels};
use std::arch::x86_64::*;

pub const KERNELS: Kernels = Kernels {
    name: "avx2",
    dot_u8: |a, b, z| unsafe { dot_u8(a, b, z) },
    dot_i8: |a, b| unsafe { dot_i8(a, b) },
    dot_u8_i8: |a, b| unsafe { dot_u8_i8(a, b) },
    dot_u4_i8: |a, b| unsafe { dot_u4_i8(a, b) },
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

/// Σ (a−z)(b−z), 16 values a step: widen to i16 (`SA`/`SB`: as signed), subtract z,
/// multiply-add pairs into i32. Per lane the sum stays below 2³¹ for any length up to
/// `MAX_DIMENSIONS`.
#[target_feature(enable = "avx2")]
unsafe fn dot_bytes<const SA: bool, const SB: bool>(a: &[u8], b: &[u8], z: i32) -> i64 {
    let n = a.len().min(b.len());
    let zv = _mm256_set1_epi16(z as i16);
    let (mut acc0, mut acc1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
    let mut i = 0;
    while i + 32 <= n {
        let x0 = _mm256_sub_epi16(widen::<SA>(a.as_ptr().add(i)), zv);
        let y0 = _mm256_sub_epi16(widen::<SB>(b.as_ptr().add(i)), zv);
        let x1 = _mm256_sub_epi16(widen::<SA>(a.as_ptr().add(i + 16)), zv);
        let y1 = _mm256_sub_epi16(widen::<SB>(b.as_ptr().add(i + 16)), zv);
        acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(x0, y0));
        acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(x1, y1));
        i += 32;
    }
    let mut sum = hsum_i32(acc0) + hsum_i32(acc1);
    sum += match (SA, SB) {
        (true, _) => scalar::dot_i8(&a[i..n], &b[i..n]),
        (false, true) => scalar::dot_u8_i8(&a[i..n], super::as_i8(&b[i..n])),
        (false, false) => scalar::dot_u8(&a[i..n], &b[i..n], z),
    };
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
    dot_bytes::<false, false>(a, b, z)
}
#[target_feature(enable = "avx2")]
unsafe fn dot_i8(a: &[u8], b: &[u8]) -> i64 {
    dot_bytes::<true, true>(a, b, 0)
}
#[target_feature(enable = "avx2")]
unsafe fn dot_u8_i8(a: &[u8], b: &[i8]) -> i64 {
    dot_bytes::<false, true>(a, super::as_bytes(b), 0)
}
/// One 32-byte block of 4-bit values times 64 i8 values, as 16 × i16 partial sums.
#[inline(always)]
unsafe fn u4_block(pa: *const u8, pb: *const i8) -> __m256i {
    let mask = _mm256_set1_epi8(0x0f);
    let v = _mm256_loadu_si256(pa as _);
    let lo = _mm256_and_si256(v, mask);
    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
    let qlo = _mm256_loadu_si256(pb as _);
    let qhi = _mm256_loadu_si256(pb.add(32) as _);
    _mm256_add_epi16(_mm256_maddubs_epi16(lo, qlo), _mm256_maddubs_epi16(hi, qhi))
}

/// Σ a·b over packed 4-bit `a` (one 32-byte block = 64 values: low nibbles first, then high)
/// and i8 `b`: unpack by mask and shift, `vpmaddubsw` (u8 × i8 pairs into i16, at most
/// 2·15·128 in magnitude, so two blocks add without saturating), then pairs into i32.
#[target_feature(enable = "avx2")]
unsafe fn dot_u4_i8(a: &[u8], b: &[i8]) -> i64 {
    let blocks = (a.len() / 32).min(b.len() / 64);
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_si256();
    let mut i = 0;
    while i + 2 <= blocks {
        acc = _mm256_add_epi32(
            acc,
            _mm256_madd_epi16(
                _mm256_add_epi16(
                    u4_block(pa.add(32 * i), pb.add(64 * i)),
                    u4_block(pa.add(32 * i + 32), pb.add(64 * i + 64)),
                ),
                ones,
            ),
        );
        i += 2;
    }
    if i < blocks {
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(u4_block(pa.add(32 * i), pb.add(64 * i)), ones));
    }
    hsum_i32(acc)
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
            let d =
                _mm256_sub_ps(_mm256_loadu_ps(a.as_ptr().add(i + 8 * k)), _mm256_loadu_ps(b.as_ptr().add(i + 8 * k)));
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
