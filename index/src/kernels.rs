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
    /// Σ a·b with `a` unsigned and `b` signed: the search's u8 kernel, run against a query
    /// shifted once into signed range (see [`shift_query`]).
    pub dot_u8_i8: fn(&[u8], &[i8]) -> i64,
    /// Σ a·b with `a` packed 4-bit unsigned values and `b` signed bytes, in the block layout
    /// of [`crate::nibbles`]: `a` holds whole 32-byte blocks, `b` 64 values per block.
    pub dot_u4_i8: fn(&[u8], &[i8]) -> i64,
    /// Σ (a−b)² over u8 values (the zero point cancels).
    pub l2_u8: fn(&[u8], &[u8]) -> i64,
    /// Σ (a−b)² over i8 values.
    pub l2_i8: fn(&[u8], &[u8]) -> i64,
    pub dot_f32: fn(&[f32], &[f32]) -> f32,
    pub l2_f32: fn(&[f32], &[f32]) -> f32,
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avxvnni;

static ACTIVE: OnceLock<Kernels> = OnceLock::new();

/// The fastest kernel set this CPU supports, chosen once. `KIM_KERNELS=<name>` picks another
/// supported set (e.g. `scalar`, `avx2`) for comparisons; an unknown name is ignored.
pub fn active() -> &'static Kernels {
    ACTIVE.get_or_init(|| {
        let all = available();
        let wanted = std::env::var("KIM_KERNELS").ok();
        wanted.and_then(|w| all.iter().find(|k| k.name == w).copied()).unwrap_or(all[0])
    })
}

/// Every kernel set this CPU can run, fastest first; the scalar reference is always last.
pub fn available() -> Vec<Kernels> {
    let mut sets = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        let has = |f: &str| match f {
            "avx512" => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            "avxvnni" => is_x86_feature_detected!("avxvnni"),
            _ => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        };
        if has("avx512") {
            sets.push(avx512::KERNELS);
        }
        if has("avx2") && has("avxvnni") {
            sets.push(avxvnni::KERNELS);
        }
        if has("avx2") {
            sets.push(avx2::KERNELS);
        }
    }
    sets.push(SCALAR);
    sets
}

/// A u8 query with zero point `z` shifted into i8 (`q − z`), plus Σ(q − z), so that
/// Σ(a−z)(q−z) = `dot_u8_i8(a, shifted) − z·sum`: one multiply-add per byte at search time.
/// `None` when some `q − z` does not fit an i8 (possible only for z ≠ 128).
pub fn shift_query(q: &[u8], z: i32) -> Option<(Vec<i8>, i64)> {
    let shifted: Vec<i8> = q.iter().map(|&x| i8::try_from(x as i32 - z).ok()).collect::<Option<_>>()?;
    let sum = shifted.iter().map(|&x| x as i64).sum();
    Some((shifted, sum))
}

fn as_i8(b: &[u8]) -> &[i8] {
    // SAFETY: u8 and i8 have the same size and alignment; every bit pattern is valid.
    unsafe { std::slice::from_raw_parts(b.as_ptr() as *const i8, b.len()) }
}
fn as_bytes(b: &[i8]) -> &[u8] {
    // SAFETY: as above.
    unsafe { std::slice::from_raw_parts(b.as_ptr() as *const u8, b.len()) }
}

pub const SCALAR: Kernels = Kernels {
    name: "scalar",
    dot_u8: scalar::dot_u8,
    dot_i8: scalar::dot_i8,
    dot_u8_i8: scalar::dot_u8_i8,
    dot_u4_i8: scalar::dot_u4_i8,
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

/// Cache lines of upcoming rows kept loading while one row is scored. A graph walk scores the
/// unvisited neighbours of a node, rows at random places; prefetching all of them at once (26
/// rows of 4 lines on average, face-like data at beam 192) queues the loads behind each other,
/// and prefetching none leaves every row a full miss. About 24 lines in flight scored 4-bit rows
/// 1.4–1.8× faster than the whole list up front on a 2-core Zen 3 VM, and built graphs on 8-bit
/// rows 1.15–1.3× faster.
const LINES_AHEAD: usize = 24;

/// Calls `score` on `rows` in order, and `pre` (which prefetches `bytes` bytes of a row) on each
/// row far enough ahead of its turn to keep about [`LINES_AHEAD`] cache lines in flight.
#[inline]
pub fn score_prefetched(rows: &[u32], bytes: usize, pre: impl Fn(u32), mut score: impl FnMut(u32)) {
    let ahead = (LINES_AHEAD / bytes.div_ceil(64).max(1)).max(1);
    rows.iter().take(ahead).for_each(|&r| pre(r));
    for (j, &r) in rows.iter().enumerate() {
        if let Some(&next) = rows.get(j + ahead) {
            pre(next);
        }
        score(r);
    }
}

pub mod scalar {
    pub fn dot_u8(a: &[u8], b: &[u8], z: i32) -> i64 {
        a.iter().zip(b).map(|(&x, &y)| ((x as i32 - z) * (y as i32 - z)) as i64).sum()
    }
    pub fn dot_i8(a: &[u8], b: &[u8]) -> i64 {
        a.iter().zip(b).map(|(&x, &y)| (x as i8 as i32 * y as i8 as i32) as i64).sum()
    }
    pub fn dot_u8_i8(a: &[u8], b: &[i8]) -> i64 {
        a.iter().zip(b).map(|(&x, &y)| (x as i32 * y as i32) as i64).sum()
    }
    pub fn dot_u4_i8(a: &[u8], b: &[i8]) -> i64 {
        let mut sum = 0i64;
        for (block, bytes) in a.chunks_exact(32).enumerate() {
            let q = &b[64 * block..64 * block + 64];
            for (t, &x) in bytes.iter().enumerate() {
                sum += (x & 15) as i64 * q[t] as i64 + (x >> 4) as i64 * q[32 + t] as i64;
            }
        }
        sum
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Byte vectors that hit the extremes (0, 255, 127/128) often, of any length incl. the
    /// tails that are not multiples of 16/32/64.
    fn bytes(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<(u8, u8)>> {
        let b = prop_oneof![Just(0u8), Just(255u8), Just(127u8), Just(128u8), any::<u8>(), any::<u8>()];
        prop::collection::vec((b.clone(), b), len)
    }

    #[test]
    fn rows_are_scored_in_order_each_prefetched_a_bounded_distance_ahead() {
        for (n, bytes, ahead) in [(26usize, 256usize, 6usize), (3, 256, 6), (10, 2048, 1), (0, 64, 24), (40, 0, 24)] {
            let rows: Vec<u32> = (0..n as u32).map(|r| r * 7 + 1).collect();
            let events = std::cell::RefCell::new(Vec::new());
            score_prefetched(
                &rows,
                bytes,
                |r| events.borrow_mut().push((true, r)),
                |r| events.borrow_mut().push((false, r)),
            );
            let events = events.into_inner();
            let scored: Vec<u32> = events.iter().filter(|e| !e.0).map(|e| e.1).collect();
            let fetched: Vec<u32> = events.iter().filter(|e| e.0).map(|e| e.1).collect();
            assert_eq!((&scored, &fetched), (&rows, &rows), "{n} rows of {bytes} B");
            let mut in_flight = 0usize;
            for (pre, _) in &events {
                in_flight = if *pre { in_flight + 1 } else { in_flight - 1 };
                // `ahead` rows beyond the one about to be scored
                assert!(in_flight <= ahead + 1, "{n} rows of {bytes} B: {in_flight} in flight");
            }
            // Before the first row is scored, `ahead` rows beyond it are already on their way.
            let first_score = events.iter().position(|e| !e.0).unwrap_or(0);
            assert_eq!(first_score, (ahead + 1).min(n), "{n} rows of {bytes} B");
        }
    }

    fn check_integer(k: &Kernels, a: &[u8], b: &[u8], z: i32) -> Result<(), TestCaseError> {
        let name = k.name;
        prop_assert_eq!((k.dot_u8)(a, b, z), scalar::dot_u8(a, b, z), "{} dot_u8", name);
        prop_assert_eq!((k.dot_i8)(a, b), scalar::dot_i8(a, b), "{} dot_i8", name);
        prop_assert_eq!((k.dot_u8_i8)(a, as_i8(b)), scalar::dot_u8_i8(a, as_i8(b)), "{} dot_u8_i8", name);
        prop_assert_eq!((k.l2_u8)(a, b), scalar::l2_u8(a, b), "{} l2_u8", name);
        prop_assert_eq!((k.l2_i8)(a, b), scalar::l2_i8(a, b), "{} l2_i8", name);
        Ok(())
    }

    #[test]
    fn this_cpu_gets_its_fastest_set() {
        let all = available();
        assert_eq!(all.last().unwrap().name, "scalar");
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512bw") {
            assert_eq!(all[0].name, "avx512-vnni");
        }
        if std::env::var("KIM_KERNELS").is_err() {
            assert_eq!(active().name, all[0].name);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn integer_kernels_match_reference_exactly(pairs in bytes(0..700), z in prop_oneof![Just(128i32), Just(0), Just(255), 0i32..=255]) {
            let (a, b): (Vec<u8>, Vec<u8>) = pairs.into_iter().unzip();
            for k in available() {
                check_integer(&k, &a, &b, z)?;
            }
        }

        #[test]
        fn u4_kernel_matches_reference_exactly((a, b) in (0usize..6).prop_flat_map(|blocks| (
            prop::collection::vec(prop_oneof![Just(0u8), Just(255u8), Just(0x0f), Just(0xf0), any::<u8>()], 32 * blocks),
            prop::collection::vec(prop_oneof![Just(-128i8), Just(127i8), any::<i8>()], 64 * blocks),
        ))) {
            for k in available() {
                prop_assert_eq!((k.dot_u4_i8)(&a, &b), scalar::dot_u4_i8(&a, &b), "{}", k.name);
            }
        }

        #[test]
        fn shifted_query_dot_equals_zero_point_dot(pairs in bytes(0..300), z in 0i32..=255) {
            let (a, q): (Vec<u8>, Vec<u8>) = pairs.into_iter().unzip();
            let want = scalar::dot_u8(&a, &q, z);
            match shift_query(&q, z) {
                Some((s, sum)) => {
                    for k in available() {
                        prop_assert_eq!((k.dot_u8_i8)(&a, &s) - z as i64 * sum, want, "{}", k.name);
                    }
                }
                None => prop_assert!(q.iter().any(|&x| !(-128..=127).contains(&(x as i32 - z)))),
            }
        }

        #[test]
        fn f32_kernels_match_reference_closely(
            pairs in prop::collection::vec((-10.0f32..10.0, -10.0f32..10.0), 0..700),
        ) {
            let (a, b): (Vec<f32>, Vec<f32>) = pairs.into_iter().unzip();
            let bound: f32 = a.iter().zip(&b).map(|(x, y)| (x * y).abs() + (x - y).powi(2)).sum::<f32>() * 1e-5 + 1e-4;
            for k in available() {
                prop_assert!(((k.dot_f32)(&a, &b) - scalar::dot_f32(&a, &b)).abs() <= bound, "{} dot_f32", k.name);
                prop_assert!(((k.l2_f32)(&a, &b) - scalar::l2_f32(&a, &b)).abs() <= bound, "{} l2_f32", k.name);
            }
        }
    }

    #[test]
    fn every_length_up_to_200_matches_reference() {
        let mut rng = crate::rng::SeededRng::new(5);
        for n in 0..200 {
            let a: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            let b: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            let fa: Vec<f32> = a.iter().map(|&x| x as f32 / 16.0 - 8.0).collect();
            let fb: Vec<f32> = b.iter().map(|&x| x as f32 / 16.0 - 8.0).collect();
            for k in available() {
                check_integer(&k, &a, &b, 128).unwrap();
                check_integer(&k, &a, &b, 3).unwrap();
                // Values are multiples of 1/16 below 8: products and sums are exact in f32.
                assert_eq!((k.dot_f32)(&fa, &fb), scalar::dot_f32(&fa, &fb), "{} dot_f32 n={n}", k.name);
                assert_eq!((k.l2_f32)(&fa, &fb), scalar::l2_f32(&fa, &fb), "{} l2_f32 n={n}", k.name);
            }
        }
    }

    #[test]
    fn extreme_values_at_max_length_do_not_overflow() {
        let n = crate::descriptor::MAX_DIMENSIONS;
        let (hi, lo0, min) = (vec![255u8; n], vec![0u8; n], vec![0x80u8; n]); // 0x80 = −128 as i8
        let n = n as i64;
        for k in available() {
            let name = k.name;
            assert_eq!((k.dot_u8)(&hi, &lo0, 0), 0, "{name}");
            assert_eq!((k.dot_u8)(&hi, &hi, 0), 255 * 255 * n, "{name}");
            assert_eq!((k.dot_u8)(&hi, &lo0, 128), -127 * 128 * n, "{name}");
            assert_eq!((k.dot_u8)(&lo0, &lo0, 255), 255 * 255 * n, "{name}");
            assert_eq!((k.l2_u8)(&hi, &lo0), 255 * 255 * n, "{name}");
            assert_eq!((k.dot_i8)(&min, &min), 128 * 128 * n, "{name}");
            assert_eq!((k.l2_i8)(&min, &hi), 127 * 127 * n, "{name}"); // −128 − (−1)
            assert_eq!((k.l2_i8)(&min, &vec![0x7f; n as usize]), 255 * 255 * n, "{name}");
            assert_eq!((k.dot_u8_i8)(&hi, as_i8(&min)), -255 * 128 * n, "{name}");
            assert_eq!((k.dot_u8_i8)(&hi, as_i8(&vec![0x7f; n as usize])), 255 * 127 * n, "{name}");
            let (nib, q) = (vec![0xffu8; n as usize / 2], vec![-128i8; n as usize]);
            assert_eq!((k.dot_u4_i8)(&nib, &q), -15 * 128 * n, "{name}");
        }
    }
}
