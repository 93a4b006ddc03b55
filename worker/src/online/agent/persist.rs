//! Agent snapshots: one file `segment-<lsn>.bin` holding the segment (every object live at
//! that LSN, with its graph), so a restart loads it and replays only the WAL after it.
//!
//! File = `b"KIMSEG01" | u64 body length | u64 xxh3(body) | body`; body = u64 lsn, u32 dims,
//! u8 metric, u64 rows, per row (u32 id length, id, u64 lsn, i64 timestamp), rows × dims f32,
//! then the graph in kim-index's graph encoding. Written to a temp file, fsynced, renamed.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use kim_index::snapshot::{decode_graph, encode_graph};
use kim_index::{DescriptorSpec, Metric};
use xxhash_rust::xxh3::xxh3_64;

use super::store::Segment;
use super::wal;

const MAGIC: &[u8; 8] = b"KIMSEG01";

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: corrupt snapshot: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(transparent)]
    Wal(#[from] wal::WalError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PersistError + '_ {
    move |err| PersistError::Io { path: path.to_path_buf(), err }
}

fn name(lsn: u64) -> String {
    format!("segment-{lsn:020}.bin")
}

fn metric_code(m: Metric) -> u8 {
    match m {
        Metric::Cosine => 0,
        Metric::Dot => 1,
        Metric::L2 => 2,
    }
}

/// Writes the snapshot durably, then removes older snapshots.
pub fn save(dir: &Path, seg: &Segment) -> Result<PathBuf, PersistError> {
    let spec = seg.index.vectors.spec;
    let mut body = Vec::new();
    body.extend_from_slice(&seg.lsn.to_le_bytes());
    body.extend_from_slice(&(spec.dimensions as u32).to_le_bytes());
    body.push(metric_code(spec.metric));
    body.extend_from_slice(&(seg.rows() as u64).to_le_bytes());
    for r in 0..seg.rows() {
        let id = seg.index.ids.get(r);
        body.extend_from_slice(&(id.len() as u32).to_le_bytes());
        body.extend_from_slice(id.as_bytes());
        body.extend_from_slice(&seg.lsns[r].to_le_bytes());
        body.extend_from_slice(&seg.timestamps[r].to_le_bytes());
    }
    body.extend_from_slice(&seg.index.vectors.raw_bytes());
    body.extend_from_slice(&encode_graph(&seg.index.graph));
    let path = dir.join(name(seg.lsn));
    let tmp = dir.join(".segment.tmp");
    let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(MAGIC)
        .and_then(|_| f.write_all(&(body.len() as u64).to_le_bytes()))
        .and_then(|_| f.write_all(&xxh3_64(&body).to_le_bytes()))
        .and_then(|_| f.write_all(&body))
        .and_then(|_| f.sync_all())
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    wal::sync_dir(dir)?;
    for (lsn, old) in list(dir)? {
        if lsn < seg.lsn {
            fs::remove_file(&old).map_err(io_err(&old))?;
        }
    }
    Ok(path)
}

fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, PersistError> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let n = e.file_name();
        if let Some(lsn) = n.to_str().and_then(|n| n.strip_prefix("segment-")?.strip_suffix(".bin")?.parse().ok()) {
            v.push((lsn, e.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// Loads the newest snapshot, if any. It must match the agent's dimensions and metric.
pub fn load_latest(dir: &Path, spec: DescriptorSpec) -> Result<Option<Segment>, PersistError> {
    let Some((_, path)) = list(dir)?.pop() else { return Ok(None) };
    let bytes = fs::read(&path).map_err(io_err(&path))?;
    let corrupt = |reason: String| PersistError::Corrupt { path: path.clone(), reason };
    decode(&bytes, spec).map(Some).map_err(corrupt)
}

fn decode(b: &[u8], spec: DescriptorSpec) -> Result<Segment, String> {
    if b.len() < 24 || &b[..8] != MAGIC {
        return Err("bad magic".into());
    }
    let len = u64::from_le_bytes(b[8..16].try_into().unwrap()) as usize;
    let sum = u64::from_le_bytes(b[16..24].try_into().unwrap());
    let body = &b[24..];
    if body.len() != len || xxh3_64(body) != sum {
        return Err("length or checksum mismatch".into());
    }
    let mut at: usize = 0;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let s = body.get(at..at.checked_add(n).ok_or("overflow")?).ok_or("truncated")?;
        at += n;
        Ok(s)
    };
    let u64_ = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap());
    let lsn = u64_(take(8)?);
    let dims = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
    let metric = take(1)?[0];
    if dims != spec.dimensions || metric != metric_code(spec.metric) {
        return Err(format!(
            "snapshot has {dims} dimensions and metric code {metric}; the agent runs {} / {}",
            spec.dimensions, spec.metric
        ));
    }
    let n = u64_(take(8)?) as usize;
    let mut meta = Vec::with_capacity(n.min(1 << 20));
    for _ in 0..n {
        let l = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
        let id = String::from_utf8(take(l)?.to_vec()).map_err(|_| "id is not UTF-8")?;
        let row_lsn = u64_(take(8)?);
        let ts = u64_(take(8)?) as i64;
        meta.push((id, row_lsn, ts));
    }
    let floats: Vec<f32> = take(n.checked_mul(dims * 4).ok_or("overflow")?)?
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let graph = decode_graph(&body[at..]).map_err(|e| e.to_string())?;
    if graph.len() != n {
        return Err(format!("graph has {} nodes for {n} rows", graph.len()));
    }
    graph.validate().map_err(|e| e.to_string())?;
    Ok(Segment::from_parts(spec, meta, floats, graph, lsn))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kim_index::Encoding;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let spec = DescriptorSpec::new(0, 2, Encoding::F32, Metric::L2);
        let meta: Vec<(String, u64, i64)> = (0..20).map(|i| (format!("id{i}"), i as u64 + 1, i)).collect();
        let flat: Vec<f32> = (0..20).flat_map(|i| [i as f32, 1.0]).collect();
        let tmp = Segment::from_parts(spec, meta.clone(), flat.clone(), Default::default(), 20);
        let graph = kim_index::build::build_graph(
            &tmp.index.vectors,
            kim_index::HnswParams { m: 4, ef_construction: 8, ef_search: 8 },
            1,
            &|_, _, _| {},
        )
        .unwrap();
        let seg = Segment::from_parts(spec, meta, flat, graph, 20);
        save(dir.path(), &Segment::empty(spec)).unwrap();
        let path = save(dir.path(), &seg).unwrap();
        assert_eq!(list(dir.path()).unwrap().len(), 1, "older snapshot removed");
        let back = load_latest(dir.path(), spec).unwrap().unwrap();
        assert_eq!(
            (back.lsn, back.lsns.clone(), back.timestamps.clone()),
            (seg.lsn, seg.lsns.clone(), seg.timestamps.clone())
        );
        assert_eq!(back.index.graph, seg.index.graph);
        assert_eq!(back.index.vectors.raw_bytes(), seg.index.vectors.raw_bytes());
        assert!(load_latest(dir.path(), DescriptorSpec::new(0, 3, Encoding::F32, Metric::L2)).is_err());
        let mut b = fs::read(&path).unwrap();
        let last = b.len() - 1;
        b[last] ^= 1;
        fs::write(&path, b).unwrap();
        assert!(matches!(load_latest(dir.path(), spec), Err(PersistError::Corrupt { .. })));
    }
}
