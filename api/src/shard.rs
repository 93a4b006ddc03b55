//! Sharded labels: which shard an id belongs to, where a shard's snapshots are stored, which
//! consumer group its matchers read in, the Redis keys partial answers are merged under, and
//! the merge itself. Shared by builds, matchers and the operator so all agree.
//!
//! A label split into `N` shards (`N ≥ 2`) keeps one stream; shard `I` is built from the ids
//! with [`shard_of`]`(id, N) == I`, stored under [`storage_name`] (`<label>@shard-<I>-of-<N>`;
//! `@` never appears in a label, so no label can collide with a shard) and served by matchers
//! reading the label's stream in group [`group`] (`kim-matchers-<I>-of-<N>`). `N = 1` is the
//! unsharded layout: the label's own directory and the group `kim-matchers`.

use crate::build::valid_label;

/// Most shards a label can be split into.
pub const MAX_SHARDS: u32 = 1024;

/// What separates a label from its shard suffix in a storage name.
const SHARD_MARK: &str = "@shard-";

/// The shard (`0..shards`) of `id`: xxh3-64 (seed 0) of the id's UTF-8 bytes, modulo
/// `shards`. Fixed forever: changing it would move ids between the shards of built snapshots.
/// `shards` of 0 or 1 is the unsharded label: always 0.
pub fn shard_of(id: &str, shards: u32) -> u32 {
    if shards <= 1 {
        return 0;
    }
    (xxhash_rust::xxh3::xxh3_64(id.as_bytes()) % u64::from(shards)) as u32
}

/// Why a shard setting is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("--shards must be in 1..={MAX_SHARDS}, got {0}")]
    Count(u32),
    #[error("--shard must be below --shards ({shards}), got {shard}")]
    Index { shard: u32, shards: u32 },
    #[error("storage name {0:?} of the shard is longer than 253 characters: use a shorter label")]
    TooLong(String),
}

/// Checks a (shard, shards) setting.
pub fn check(shard: u32, shards: u32) -> Result<(), ShardError> {
    if !(1..=MAX_SHARDS).contains(&shards) {
        return Err(ShardError::Count(shards));
    }
    if shard >= shards {
        return Err(ShardError::Index { shard, shards });
    }
    Ok(())
}

/// The name a shard's snapshots are stored under (a directory or object prefix beside the
/// labels of the namespace): the label itself when unsharded, else `<label>@shard-<I>-of-<N>`.
pub fn storage_name(label: &str, shard: u32, shards: u32) -> String {
    if shards <= 1 {
        return label.to_string();
    }
    format!("{label}{SHARD_MARK}{shard}-of-{shards}")
}

/// [`storage_name`] after checking the setting and the length of the result.
pub fn checked_storage_name(label: &str, shard: u32, shards: u32) -> Result<String, ShardError> {
    check(shard, shards)?;
    let name = storage_name(label, shard, shards);
    if name.len() > 253 {
        return Err(ShardError::TooLong(name));
    }
    Ok(name)
}

/// The (label, shard, shards) a shard's storage name stands for; `None` for anything else,
/// including plain labels and non-canonical numbers (`01`, `+1`).
pub fn parse_storage_name(name: &str) -> Option<(&str, u32, u32)> {
    let (label, rest) = name.split_once(SHARD_MARK)?;
    let (i, n) = rest.split_once("-of-")?;
    let number = |s: &str| -> Option<u32> {
        let canonical = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
        canonical.then(|| s.parse().ok()).flatten()
    };
    let (shard, shards) = (number(i)?, number(n)?);
    (valid_label(label) && shards >= 2 && check(shard, shards).is_ok() && name.len() <= 253)
        .then_some((label, shard, shards))
}

/// Names that may appear beside labels on storage: a label, or a shard's storage name.
pub fn valid_storage_name(name: &str) -> bool {
    valid_label(name) || parse_storage_name(name).is_some()
}

/// Consumer group of a shard's matchers on the label's stream: `kim-matchers` unsharded,
/// `kim-matchers-<I>-of-<N>` otherwise (a new shard count reads in new groups).
pub fn group(shard: u32, shards: u32) -> String {
    if shards <= 1 {
        return crate::GROUP.to_string();
    }
    format!("{}-{shard}-of-{shards}", crate::GROUP)
}

/// Hash holding the partial answers (field = shard number) of stream entry `entry` of `label`
/// for a split into `shards`. The braces keep both keys of a request in one cluster slot.
pub fn partials_key(prefix: &str, label: &str, entry: &str, shards: u32) -> String {
    format!("{prefix}kim:partials:{{{label}:{entry}}}:{shards}")
}

/// Set once a request has been answered, whatever the shard count (1 included): the gate
/// that lets exactly one reply out.
pub fn done_key(prefix: &str, label: &str, entry: &str) -> String {
    format!("{prefix}kim:done:{{{label}:{entry}}}")
}

/// SCAN patterns of every done key and partials hash of `label` (what the gate leaves behind
/// for up to two minutes after each request), for removing a label's keys.
pub fn gate_patterns(prefix: &str, label: &str) -> [String; 2] {
    let (p, l) = (crate::glob_escape(prefix), crate::glob_escape(label));
    // Entry ids start with a digit: `{<label>:[0-9]*` does not reach into a label `<label>:x`.
    [format!("{p}kim:done:{{{l}:[0-9]*"), format!("{p}kim:partials:{{{l}:[0-9]*")]
}

/// A shard's partial answer as stored for the merge: the reply's `result` shape,
/// `[[id, similarity], ...]` in JSON. `None` for anything else.
pub fn decode_partial(bytes: &[u8]) -> Option<Vec<(String, f64)>> {
    serde_json::from_slice(bytes).ok()
}

/// Merges the partial answers of every shard into the reply's result: the `limit` most
/// similar, most similar first, equal similarities in id order, none below `threshold`.
pub fn merge(partials: Vec<Vec<(String, f64)>>, limit: usize, threshold: Option<f64>) -> Vec<(String, f64)> {
    let mut all: Vec<(String, f64)> = partials.into_iter().flatten().collect();
    if let Some(t) = threshold {
        all.retain(|(_, s)| *s >= t);
    }
    let key = |s: f64| if s.is_nan() { f64::NEG_INFINITY } else { s };
    all.sort_by(|a, b| key(b.1).total_cmp(&key(a.1)).then_with(|| a.0.cmp(&b.0)));
    all.truncate(limit);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_of_is_pinned() {
        // Values computed once; they must never change (built shards depend on them).
        let got: Vec<u32> =
            ["face-0000000-0", "face-0000001-3", "", "ü", "42"].iter().map(|id| shard_of(id, 4)).collect();
        assert_eq!(got, vec![PINNED_4[0], PINNED_4[1], PINNED_4[2], PINNED_4[3], PINNED_4[4]]);
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(shard_of("anything", 1), 0);
        assert_eq!(shard_of("anything", 0), 0);
        let n = 7;
        for i in 0..1000 {
            let id = format!("id-{i}");
            assert!(shard_of(&id, n) < n);
            assert_eq!(shard_of(&id, n), shard_of(&id, n));
        }
    }

    const PINNED_4: [u32; 5] = [3, 2, 2, 2, 1];

    #[test]
    fn shards_are_balanced() {
        let mut counts = [0u32; 4];
        for i in 0..40_000 {
            counts[shard_of(&format!("face-{i:07}-0"), 4) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (9_500..=10_500).contains(&c)), "{counts:?}");
    }

    #[test]
    fn storage_names_round_trip_and_never_collide_with_labels() {
        assert_eq!(storage_name("faces", 0, 1), "faces");
        assert_eq!(storage_name("faces", 2, 4), "faces@shard-2-of-4");
        assert_eq!(parse_storage_name("faces@shard-2-of-4"), Some(("faces", 2, 4)));
        assert!(!valid_label("faces@shard-2-of-4"));
        assert!(valid_storage_name("faces@shard-2-of-4") && valid_storage_name("faces"));
        for bad in [
            "faces",
            "faces@shard-4-of-4",
            "faces@shard-0-of-1",
            "faces@shard-01-of-4",
            "faces@shard-1-of-04",
            "faces@shard--1-of-4",
            "faces@shard-1-of-",
            "@shard-0-of-2",
            "fa/ces@shard-0-of-2",
            "faces@shard-0-of-2@shard-0-of-2",
            "faces@shard-0-of-99999999999",
        ] {
            assert_eq!(parse_storage_name(bad), None, "{bad}");
        }
        assert_eq!(check(0, 0), Err(ShardError::Count(0)));
        assert_eq!(check(4, 4), Err(ShardError::Index { shard: 4, shards: 4 }));
        assert_eq!(check(0, MAX_SHARDS + 1), Err(ShardError::Count(MAX_SHARDS + 1)));
        let long = "a".repeat(250);
        assert_eq!(checked_storage_name(&long, 0, 1).unwrap(), long);
        assert!(matches!(checked_storage_name(&long, 0, 2), Err(ShardError::TooLong(_))));
    }

    #[test]
    fn groups_and_keys() {
        assert_eq!(group(0, 1), "kim-matchers");
        assert_eq!(group(3, 4), "kim-matchers-3-of-4");
        assert_eq!(partials_key("p:", "faces", "1-0", 4), "p:kim:partials:{faces:1-0}:4");
        assert_eq!(done_key("p:", "faces", "1-0"), "p:kim:done:{faces:1-0}");
    }

    #[test]
    fn partials_decode_only_in_the_result_shape() {
        assert_eq!(decode_partial(br#"[["a",0.5],["b",1]]"#), Some(vec![("a".into(), 0.5), ("b".into(), 1.0)]));
        assert_eq!(decode_partial(b"[]"), Some(vec![]));
        for bad in [&b""[..], b"{", b"null", br#"[["a"]]"#, br#"[["a","x"]]"#, br#"[[1,0.5]]"#, b"\xff"] {
            assert_eq!(decode_partial(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn merge_orders_breaks_ties_by_id_and_respects_limit_and_threshold() {
        let p = |v: &[(&str, f64)]| v.iter().map(|(i, s)| (i.to_string(), *s)).collect::<Vec<_>>();
        let parts = vec![p(&[("b", 0.9), ("d", 0.5)]), p(&[]), p(&[("a", 0.9), ("c", 0.7), ("e", 0.2)])];
        assert_eq!(merge(parts.clone(), 10, None), p(&[("a", 0.9), ("b", 0.9), ("c", 0.7), ("d", 0.5), ("e", 0.2)]));
        assert_eq!(merge(parts.clone(), 2, None), p(&[("a", 0.9), ("b", 0.9)]));
        assert_eq!(merge(parts.clone(), 10, Some(0.5)), p(&[("a", 0.9), ("b", 0.9), ("c", 0.7), ("d", 0.5)]));
        assert_eq!(merge(parts, 0, None), p(&[]));
        let nan = merge(vec![p(&[("x", f64::NAN), ("y", 0.1)])], 2, None);
        assert_eq!(nan[0], ("y".to_string(), 0.1), "a similarity that is not a number sorts last");
        assert!(nan[1].1.is_nan());
    }
}
