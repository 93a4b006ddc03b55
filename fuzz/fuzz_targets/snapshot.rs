//! Snapshot manifest + loader (graph decode and structural validation), then a search on
//! whatever loads. Input: `u16 manifest len | manifest | u32 ids len | ids.txt | u32 vectors
//! len | vectors.bin | graph.bin`. The harness writes the files and, when the manifest is a
//! JSON object, fills in its id (`s1`, the directory it lies in) and the true sizes and xxh3 sums
//! of the three files, so mutations get
//! past the checksum gate into the decoders; other manifests are written as they are.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use kim_index::snapshot::{hash_hex, load};
use kim_index::vectors::Storage;
use kim_index::Query;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fn dir() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let base =
            if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let d = base.join(format!("kim-fuzz-snapshot-{}", std::process::id()));
        std::fs::create_dir_all(d.join("snapshots/s1")).unwrap();
        d
    })
}

fn take<'a>(b: &mut &'a [u8], width: usize) -> Option<&'a [u8]> {
    let len = match width {
        2 => u16::from_le_bytes(b.get(..2)?.try_into().ok()?) as usize,
        _ => u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize,
    };
    let part = b.get(width..width + len)?;
    *b = &b[width + len..];
    Some(part)
}

fuzz_target!(|data: &[u8]| {
    let mut b = data;
    let (Some(manifest), Some(ids), Some(vectors)) = (take(&mut b, 2), take(&mut b, 4), take(&mut b, 4)) else {
        return;
    };
    let graph = b;
    let sdir = dir().join("snapshots/s1");
    let mut manifest = manifest.to_vec();
    if let Ok(Value::Object(mut m)) = serde_json::from_slice::<Value>(&manifest) {
        let sum = |x: &[u8]| json!({"bytes": x.len(), "xxh3": hash_hex(x)});
        m.insert("id".into(), json!("s1"));
        m.insert("files".into(), json!({"ids.txt": sum(ids), "vectors.bin": sum(vectors), "graph.bin": sum(graph)}));
        manifest = serde_json::to_vec(&m).unwrap();
    }
    for (name, bytes) in
        [("manifest.json", &manifest[..]), ("ids.txt", ids), ("vectors.bin", vectors), ("graph.bin", graph)]
    {
        std::fs::write(sdir.join(name), bytes).unwrap();
    }
    if let Ok((m, index)) = load(dir(), "s1") {
        assert_eq!(index.len(), m.vectors);
        let d = m.descriptor.dimensions;
        let q = match index.vectors.storage {
            Storage::Bytes(_) => Query::Bytes(vec![3; d]),
            Storage::F32(_) => Query::F32(vec![0.5; d]),
        };
        let hits = index.search(&q, 3, 8);
        assert!(hits.len() <= 3.min(index.len()));
    }
});
