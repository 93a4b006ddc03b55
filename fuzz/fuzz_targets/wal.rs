//! The agent's WAL reader. Input: chunks separated by 0xFE 0xFE; all but the last become
//! frames with a correct length and checksum (so record bodies reach the body decoder), the
//! last is appended raw (torn or garbage tail). The reader must never panic, must report a
//! valid prefix within the input, and re-framing what it returned must parse back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xxhash_rust::xxh3::xxh3_64;

/// The worker's WAL module, compiled in by path: it needs only std, thiserror and xxhash, and
/// depending on kim-worker would instrument its whole server stack in this build.
#[allow(dead_code)]
#[path = "../../worker/src/online/agent/wal.rs"]
mod wal;

fn split<'a>(data: &'a [u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < data.len() {
        if data[i] == 0xfe && data[i + 1] == 0xfe {
            parts.push(&data[start..i]);
            i += 2;
            start = i;
        } else {
            i += 1;
        }
    }
    parts.push(&data[start..]);
    parts
}

fuzz_target!(|data: &[u8]| {
    let parts = split(data);
    let mut log = Vec::new();
    for body in &parts[..parts.len() - 1] {
        log.extend_from_slice(&(body.len() as u32).to_le_bytes());
        log.extend_from_slice(&xxh3_64(body).to_le_bytes());
        log.extend_from_slice(body);
    }
    log.extend_from_slice(parts[parts.len() - 1]);
    let (records, valid, why) = wal::parse(&log);
    assert!(valid <= log.len());
    assert_eq!(why.is_none(), valid == log.len(), "a clean end means the whole log was read");
    let mut again = Vec::new();
    for r in &records {
        wal::frame(r, &mut again);
    }
    let (back, n, err) = wal::parse(&again);
    assert_eq!(n, again.len());
    assert!(err.is_none(), "{err:?}");
    assert_eq!(back.len(), records.len());
});
