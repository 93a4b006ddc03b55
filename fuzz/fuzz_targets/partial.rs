//! A shard's partial answer (read back from Redis) → the merged result. Input: one byte of
//! `limit`, then the partial's bytes; decoded twice as two shards' answers and merged: the
//! merge must stay sorted, within `limit`, and made of what the shards answered.
#![no_main]

use kim_api::shard::{decode_partial, merge};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&limit, bytes)) = data.split_first() else { return };
    let Some(p) = decode_partial(bytes) else { return };
    let merged = merge(vec![p.clone(), p.clone()], usize::from(limit), Some(0.5));
    assert!(merged.len() <= usize::from(limit));
    let key = |s: f64| if s.is_nan() { f64::NEG_INFINITY } else { s };
    assert!(merged.windows(2).all(|w| key(w[0].1) >= key(w[1].1)), "sorted by similarity");
    assert!(merged.iter().all(|(id, s)| *s >= 0.5 && p.iter().any(|(i, _)| i == id)));
});
