//! Deltas: small, checksummed changes to a label's live snapshot, written beside it so matchers
//! can apply them without reloading the index.
//!
//! `<label dir>/deltas/<snapshot id>/<seq>/{manifest.json, added.txt, vectors.bin, removed.txt}`,
//! `seq` = 1, 2, … as eight decimal digits. Delta `seq` is relative to the snapshot plus deltas
//! `1..seq`. A delta is written into `.tmp-<seq>-<pid>/` beside its final name, every file
//! fsynced, the manifest (with each file's size and xxh3) last, then the directory is renamed
//! to its sequence number and the parent fsynced: a reader sees either a complete delta or
//! nothing, and a rename onto an existing sequence number fails, so no number is used twice.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::descriptor::{DescriptorSpec, Encoding};
use crate::snapshot::{hash_hex, io_err, sync_dir, write_synced, FileSum, SnapshotError};

pub const FORMAT: u32 = 1;
const FILES: [&str; 3] = ["added.txt", "vectors.bin", "removed.txt"];

/// What a reader needs to trust and place a delta.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeltaManifest {
    pub format: u32,
    pub namespace: String,
    pub label: String,
    /// The snapshot this delta applies to.
    pub snapshot: String,
    pub seq: u64,
    pub descriptor: DescriptorSpec,
    /// Rows added (ids in `added.txt`, vectors in `vectors.bin`, same order).
    pub added: usize,
    /// Ids removed (`removed.txt`), applied before the additions.
    pub removed: usize,
    pub source_digest: String,
    pub created_at: String,
    pub files: BTreeMap<String, FileSum>,
}

/// A verified delta in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    pub manifest: DeltaManifest,
    pub added_ids: Vec<String>,
    /// Added rows in serving encoding: one byte per value for u8/i8, f32 LE otherwise.
    pub vectors: Vec<u8>,
    pub removed_ids: Vec<String>,
}

/// Bytes per value of a serving-encoding row (what `vectors.bin` of snapshots and deltas hold).
pub fn stored_width(e: Encoding) -> usize {
    match e {
        Encoding::U8 | Encoding::I8 => 1,
        Encoding::F16 | Encoding::F32 => 4,
    }
}

/// `<label dir>/deltas/<snapshot>`.
pub fn dir(label_dir: &Path, snapshot: &str) -> PathBuf {
    label_dir.join("deltas").join(snapshot)
}

fn seq_name(seq: u64) -> String {
    format!("{seq:08}")
}

fn lines(ids: &[String]) -> Vec<u8> {
    let mut s = String::with_capacity(ids.iter().map(|i| i.len() + 1).sum());
    for id in ids {
        s.push_str(id);
        s.push('\n');
    }
    s.into_bytes()
}

/// Writes delta `manifest.seq` for `manifest.snapshot` and makes it visible atomically. Fails
/// if that sequence number exists already.
pub fn write(
    label_dir: &Path,
    mut manifest: DeltaManifest,
    added_ids: &[String],
    vectors: &[u8],
    removed_ids: &[String],
) -> Result<DeltaManifest, SnapshotError> {
    let parent = dir(label_dir, &manifest.snapshot);
    fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let fin = parent.join(seq_name(manifest.seq));
    if fin.exists() {
        return Err(SnapshotError::Io {
            path: fin,
            err: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "delta exists already"),
        });
    }
    let tmp = parent.join(format!(".tmp-{}-{}", seq_name(manifest.seq), std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    manifest.format = FORMAT;
    manifest.added = added_ids.len();
    manifest.removed = removed_ids.len();
    let contents: [(&str, Vec<u8>); 3] =
        [("added.txt", lines(added_ids)), ("vectors.bin", vectors.to_vec()), ("removed.txt", lines(removed_ids))];
    for (name, bytes) in &contents {
        write_synced(&tmp.join(name), bytes)?;
        manifest.files.insert(name.to_string(), FileSum { bytes: bytes.len() as u64, xxh3: hash_hex(bytes) });
    }
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    write_synced(&tmp.join("manifest.json"), &json)?;
    sync_dir(&tmp)?;
    fs::rename(&tmp, &fin).map_err(io_err(&fin))?;
    sync_dir(&parent)?;
    Ok(manifest)
}

/// Sequence numbers of the complete deltas of `snapshot`, ascending (temp dirs are not listed).
pub fn list(label_dir: &Path, snapshot: &str) -> Result<Vec<u64>, SnapshotError> {
    let d = dir(label_dir, snapshot);
    let rd = match fs::read_dir(&d) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&d)(e)),
    };
    let mut seqs: Vec<u64> = rd
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.parse::<u64>().ok().filter(|&s| seq_name(s) == n))
        .collect();
    seqs.sort_unstable();
    Ok(seqs)
}

/// Loads delta `seq` of `snapshot`: `Ok(None)` when it does not exist (yet), an error when it
/// exists but fails verification (checksums, counts, sizes, duplicate or empty ids, or a
/// manifest that names another snapshot, sequence number or descriptor).
pub fn load(label_dir: &Path, snapshot: &str, seq: u64, spec: &DescriptorSpec) -> Result<Option<Delta>, SnapshotError> {
    let d = dir(label_dir, snapshot).join(seq_name(seq));
    let what = format!("{snapshot} delta {seq}");
    let corrupt = |reason: String| SnapshotError::Corrupt { id: what.clone(), reason };
    let mbytes = match fs::read(d.join("manifest.json")) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !d.exists() => return Ok(None),
        Err(e) => return Err(corrupt(format!("manifest.json: {e}"))),
    };
    let m: DeltaManifest = serde_json::from_slice(&mbytes).map_err(|e| corrupt(format!("manifest.json: {e}")))?;
    if m.format != FORMAT {
        return Err(corrupt(format!("format {} (this build reads {FORMAT})", m.format)));
    }
    if m.snapshot != snapshot || m.seq != seq {
        return Err(corrupt(format!("manifest names {} delta {}", m.snapshot, m.seq)));
    }
    if m.descriptor != *spec {
        return Err(corrupt("descriptor settings differ from the snapshot's".into()));
    }
    let mut data = BTreeMap::new();
    for name in FILES {
        let sum = m.files.get(name).ok_or_else(|| corrupt(format!("manifest lists no {name}")))?;
        let bytes = fs::read(d.join(name)).map_err(|e| corrupt(format!("{name}: {e}")))?;
        if bytes.len() as u64 != sum.bytes || hash_hex(&bytes) != sum.xxh3 {
            return Err(corrupt(format!("{name} does not match its checksum")));
        }
        data.insert(name, bytes);
    }
    let ids = |name: &str, want: usize| -> Result<Vec<String>, SnapshotError> {
        let text = std::str::from_utf8(&data[name]).map_err(|_| corrupt(format!("{name} is not UTF-8")))?;
        let ids: Vec<String> = text.lines().map(str::to_string).collect();
        if ids.len() != want {
            return Err(corrupt(format!("{name} has {} ids, manifest says {want}", ids.len())));
        }
        let mut seen = HashSet::with_capacity(ids.len());
        if let Some(bad) = ids.iter().find(|i| i.is_empty() || !seen.insert(i.as_str())) {
            return Err(corrupt(format!("{name}: empty or repeated id {bad:?}")));
        }
        Ok(ids)
    };
    let added_ids = ids("added.txt", m.added)?;
    let removed_ids = ids("removed.txt", m.removed)?;
    let vectors = data.remove("vectors.bin").expect("read above");
    let row = spec.dimensions * stored_width(spec.encoding);
    if vectors.len() != m.added * row {
        return Err(corrupt(format!("vectors.bin has {} bytes for {} rows of {row}", vectors.len(), m.added)));
    }
    if matches!(spec.encoding, Encoding::F16 | Encoding::F32)
        && vectors.chunks_exact(4).any(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite())
    {
        return Err(corrupt("vectors.bin holds a non-finite value".into()));
    }
    Ok(Some(Delta { manifest: m, added_ids, vectors, removed_ids }))
}

/// The delta to apply after `applied` deltas of `snapshot`: `Ok(None)` when none is written
/// yet, an error when it fails verification ([`load`]) or when it is missing although a later
/// one exists (a chain with a gap never applies past it).
pub fn next(
    label_dir: &Path,
    snapshot: &str,
    applied: u64,
    spec: &DescriptorSpec,
) -> Result<Option<Delta>, SnapshotError> {
    let seq = applied + 1;
    match load(label_dir, snapshot, seq, spec)? {
        Some(d) => Ok(Some(d)),
        None => match list(label_dir, snapshot)?.into_iter().find(|&s| s > seq) {
            Some(later) => Err(SnapshotError::Corrupt {
                id: format!("{snapshot} delta {seq}"),
                reason: format!("missing while delta {later} exists (out of order)"),
            }),
            None => Ok(None),
        },
    }
}

/// Removes the deltas of snapshots that no longer exist and temp dirs of interrupted writes.
/// Run by the label's single writer (`index`, `refresh`), never concurrently with a write.
pub fn gc(label_dir: &Path) -> Result<Vec<PathBuf>, SnapshotError> {
    let root = label_dir.join("deltas");
    let rd = match fs::read_dir(&root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&root)(e)),
    };
    let mut removed = Vec::new();
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        if !label_dir.join("snapshots").join(&name).is_dir() {
            fs::remove_dir_all(&p).map_err(io_err(&p))?;
            removed.push(p);
            continue;
        }
        for t in fs::read_dir(&p).map_err(io_err(&p))?.filter_map(|e| e.ok()) {
            if t.file_name().to_string_lossy().starts_with(".tmp-") {
                let tp = t.path();
                fs::remove_dir_all(&tp).map_err(io_err(&tp))?;
                removed.push(tp);
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::Metric;

    fn spec() -> DescriptorSpec {
        DescriptorSpec::new(59, 4, Encoding::U8, Metric::Cosine)
    }

    fn manifest(seq: u64) -> DeltaManifest {
        DeltaManifest {
            format: FORMAT,
            namespace: "default".into(),
            label: "faces".into(),
            snapshot: "s1".into(),
            seq,
            descriptor: spec(),
            added: 0,
            removed: 0,
            source_digest: "xxh3:0".into(),
            created_at: "now".into(),
            files: Default::default(),
        }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn write_list_load_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        std::fs::create_dir_all(dir.join("snapshots/s1")).unwrap();
        assert_eq!(load(dir, "s1", 1, &spec()).unwrap(), None);
        let m = write(dir, manifest(1), &ids(&["a", "b"]), &[1, 2, 3, 4, 5, 6, 7, 8], &ids(&["x"])).unwrap();
        assert_eq!((m.added, m.removed), (2, 1));
        let d = load(dir, "s1", 1, &spec()).unwrap().unwrap();
        assert_eq!((d.added_ids, d.removed_ids, d.vectors.len()), (ids(&["a", "b"]), ids(&["x"]), 8));
        // A sequence number is used once.
        assert!(write(dir, manifest(1), &[], &[], &ids(&["y"])).is_err());
        write(dir, manifest(2), &[], &[], &ids(&["a"])).unwrap();
        // A half-written delta (a temp dir) is neither listed nor loaded.
        std::fs::create_dir_all(dir.join("deltas/s1/.tmp-00000003-1")).unwrap();
        std::fs::write(dir.join("deltas/s1/.tmp-00000003-1/added.txt"), "c\n").unwrap();
        assert_eq!(list(dir, "s1").unwrap(), vec![1, 2]);
        assert_eq!(load(dir, "s1", 3, &spec()).unwrap(), None);
        // gc drops temp dirs and the deltas of snapshots that are gone.
        std::fs::create_dir_all(dir.join("deltas/gone/00000001")).unwrap();
        let removed = gc(dir).unwrap();
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert_eq!(list(dir, "s1").unwrap(), vec![1, 2]);
        assert!(!dir.join("deltas/gone").exists());
    }

    #[test]
    fn damaged_deltas_are_rejected() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        write(dir, manifest(1), &ids(&["a"]), &[1, 2, 3, 4], &[]).unwrap();
        let d = dir.join("deltas/s1/00000001");
        let vb = d.join("vectors.bin");
        std::fs::write(&vb, [1, 2, 3, 5]).unwrap();
        let e = load(dir, "s1", 1, &spec()).unwrap_err();
        assert!(e.to_string().contains("vectors.bin does not match its checksum"), "{e}");
        std::fs::write(&vb, [1, 2, 3, 4]).unwrap();
        assert!(load(dir, "s1", 1, &spec()).unwrap().is_some());
        // Another descriptor, or a manifest copied under another number, is refused.
        let mut other = spec();
        other.version = 60;
        assert!(load(dir, "s1", 1, &other).unwrap_err().to_string().contains("descriptor"));
        std::fs::rename(&d, dir.join("deltas/s1/00000002")).unwrap();
        assert!(load(dir, "s1", 2, &spec()).unwrap_err().to_string().contains("names s1 delta 1"));
        // A delta dir without its manifest is damaged, not absent.
        std::fs::remove_file(dir.join("deltas/s1/00000002/manifest.json")).unwrap();
        assert!(load(dir, "s1", 2, &spec()).is_err());
        // Wrong sizes and repeated ids.
        write(dir, manifest(3), &ids(&["a"]), &[1, 2, 3], &[]).unwrap();
        assert!(load(dir, "s1", 3, &spec()).unwrap_err().to_string().contains("bytes for 1 rows"));
        write(dir, manifest(4), &ids(&["a", "a"]), &[0; 8], &[]).unwrap();
        assert!(load(dir, "s1", 4, &spec()).unwrap_err().to_string().contains("repeated id"));
    }

    #[test]
    fn truncated_garbage_and_foreign_deltas_get_defined_errors() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        write(dir, manifest(1), &ids(&["a"]), &[1, 2, 3, 4], &ids(&["x"])).unwrap();
        let d = dir.join("deltas/s1/00000001");
        let corrupt = |e: SnapshotError| match e {
            SnapshotError::Corrupt { id, reason } => format!("{id}: {reason}"),
            other => panic!("not a corruption error: {other}"),
        };
        // A truncated data file.
        let full = std::fs::read(d.join("added.txt")).unwrap();
        std::fs::write(d.join("added.txt"), &full[..1]).unwrap();
        let e = corrupt(load(dir, "s1", 1, &spec()).unwrap_err());
        assert!(e.starts_with("s1 delta 1: added.txt does not match"), "{e}");
        std::fs::write(d.join("added.txt"), &full).unwrap();
        // A truncated manifest, then one that is not JSON at all.
        let m = std::fs::read(d.join("manifest.json")).unwrap();
        std::fs::write(d.join("manifest.json"), &m[..m.len() / 2]).unwrap();
        assert!(corrupt(load(dir, "s1", 1, &spec()).unwrap_err()).contains("manifest.json: EOF"));
        std::fs::write(d.join("manifest.json"), [0xff, 0, 7]).unwrap();
        assert!(corrupt(load(dir, "s1", 1, &spec()).unwrap_err()).contains("manifest.json"));
        std::fs::write(d.join("manifest.json"), &m).unwrap();
        // A missing data file.
        std::fs::remove_file(d.join("removed.txt")).unwrap();
        assert!(corrupt(load(dir, "s1", 1, &spec()).unwrap_err()).contains("removed.txt"));
        std::fs::write(d.join("removed.txt"), "x\n").unwrap();
        assert!(load(dir, "s1", 1, &spec()).unwrap().is_some());
        // A delta of snapshot s1 placed under snapshot s2 (the wrong base) is refused.
        std::fs::create_dir_all(dir.join("deltas/s2")).unwrap();
        copy_dir(&d, &dir.join("deltas/s2/00000001"));
        let e = corrupt(load(dir, "s2", 1, &spec()).unwrap_err());
        assert_eq!(e, "s2 delta 1: manifest names s1 delta 1");
        // Non-UTF-8 ids and non-finite floats, with matching checksums.
        let mut m1 = manifest(2);
        m1.descriptor = DescriptorSpec::new(59, 1, Encoding::F32, Metric::Cosine);
        write(dir, m1.clone(), &ids(&["n"]), &f32::NAN.to_le_bytes(), &[]).unwrap();
        let e = corrupt(load(dir, "s1", 2, &m1.descriptor).unwrap_err());
        assert!(e.contains("non-finite"), "{e}");
        let d3 = dir.join("deltas/s1/00000003");
        copy_dir(&d, &d3);
        rewrite(&d3, "added.txt", &[0xc3, 0x28, b'\n'], |m| m.seq = 3);
        assert!(corrupt(load(dir, "s1", 3, &spec()).unwrap_err()).contains("added.txt is not UTF-8"));
        // Format from the future.
        rewrite(&d3, "added.txt", b"a\n", |m| m.format = FORMAT + 1);
        assert!(corrupt(load(dir, "s1", 3, &spec()).unwrap_err()).contains("this build reads"));
    }

    #[test]
    fn a_gap_in_the_chain_is_out_of_order() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        assert_eq!(next(dir, "s1", 0, &spec()).unwrap(), None);
        write(dir, manifest(1), &ids(&["a"]), &[1, 2, 3, 4], &[]).unwrap();
        write(dir, manifest(3), &ids(&["c"]), &[1, 2, 3, 4], &[]).unwrap();
        assert_eq!(next(dir, "s1", 0, &spec()).unwrap().unwrap().manifest.seq, 1);
        let e = next(dir, "s1", 1, &spec()).unwrap_err().to_string();
        assert_eq!(e, "snapshot s1 delta 2 is corrupt: missing while delta 3 exists (out of order)");
        assert_eq!(next(dir, "s1", 3, &spec()).unwrap(), None);
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }

    /// Replaces one data file of a delta and its manifest entry (checksums kept valid).
    fn rewrite(d: &Path, name: &str, bytes: &[u8], edit: impl Fn(&mut DeltaManifest)) {
        std::fs::write(d.join(name), bytes).unwrap();
        let mut m: DeltaManifest = serde_json::from_slice(&std::fs::read(d.join("manifest.json")).unwrap()).unwrap();
        m.files.insert(name.into(), FileSum { bytes: bytes.len() as u64, xxh3: hash_hex(bytes) });
        edit(&mut m);
        std::fs::write(d.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    }
}
