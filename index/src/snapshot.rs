//! Snapshots on shared storage:
//! `<root>/<namespace>/<label>/snapshots/<id>/{manifest.json, ids.txt, vectors.bin, graph.bin}`
//! and `<root>/<namespace>/<label>/CURRENT` naming the live one. A snapshot directory appears
//! under its final name only once complete, and CURRENT is replaced atomically, so a reader
//! never sees a half-written index.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::descriptor::{DescriptorSpec, Encoding};
use crate::error::Error;
use crate::flat::{Csr, FlatIndex, Graph, Ids};
use crate::vectors::{huge_capacity, Storage, VectorStore};
use crate::HnswParams;

pub const FORMAT: u32 = 1;
const GRAPH_MAGIC: &[u8; 4] = b"KIMG";
const FILES: [&str; 3] = ["ids.txt", "vectors.bin", "graph.bin"];

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The OS error is part of the message, not a `source`, so `{:#}` chains print it once.
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("no CURRENT snapshot under {0}")]
    NoCurrent(PathBuf),
    /// A checksum, size or structure failure: final for this snapshot id.
    #[error("snapshot {id} is corrupt: {reason}")]
    Corrupt { id: String, reason: String },
    /// The snapshot (or one of its files) is missing, shorter than its manifest says or cannot
    /// be read: on storage that shows changes late it may still arrive, so readers retry.
    #[error("snapshot {id} is not readable yet: {reason}")]
    Unavailable { id: String, reason: String },
}

impl SnapshotError {
    /// True when trying the same snapshot again later may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, SnapshotError::Corrupt { .. })
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |err| SnapshotError::Io { path: path.to_path_buf(), err }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileSum {
    pub bytes: u64,
    pub xxh3: String,
}

/// Everything a reader needs to trust and interpret a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub namespace: String,
    pub label: String,
    pub descriptor: DescriptorSpec,
    pub hnsw: HnswParams,
    pub vectors: usize,
    pub source_digest: String,
    pub created_at: String,
    pub build_seconds: f64,
    pub files: BTreeMap<String, FileSum>,
}

/// `<root>/<namespace>/<label>`.
pub fn label_dir(root: &Path, namespace: &str, label: &str) -> PathBuf {
    root.join(namespace).join(label)
}

/// A sortable, unique snapshot id: UTC time plus random suffix.
pub fn new_snapshot_id() -> String {
    let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let compact: String = now.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    format!("{}-{:06x}", compact.to_lowercase(), rand_suffix() & 0xff_ffff)
}

fn rand_suffix() -> u64 {
    let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    crate::rng::SeededRng::new(t ^ (std::process::id() as u64) << 32).next_u64()
}

pub fn hash_hex(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

/// Writes a complete snapshot directory (not yet live) and returns its manifest.
pub fn write(dir: &Path, mut manifest: Manifest, index: &FlatIndex) -> Result<Manifest, SnapshotError> {
    let snaps = dir.join("snapshots");
    let tmp = snaps.join(format!(".tmp-{}", manifest.id));
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let contents: [(&str, Vec<u8>); 3] = [
        ("ids.txt", index.ids.to_lines().into_bytes()),
        ("vectors.bin", index.vectors.raw_bytes()),
        ("graph.bin", encode_graph(&index.graph)),
    ];
    manifest.format = FORMAT;
    manifest.vectors = index.len();
    for (name, bytes) in &contents {
        write_synced(&tmp.join(name), bytes)?;
        manifest.files.insert(name.to_string(), FileSum { bytes: bytes.len() as u64, xxh3: hash_hex(bytes) });
    }
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    write_synced(&tmp.join("manifest.json"), &json)?;
    let fin = snaps.join(&manifest.id);
    fs::rename(&tmp, &fin).map_err(io_err(&fin))?;
    sync_dir(&snaps)?;
    Ok(manifest)
}

/// Points CURRENT at `id`: write a temp file, fsync, rename over CURRENT, fsync the directory.
pub fn publish(dir: &Path, id: &str) -> Result<(), SnapshotError> {
    replace_id_file(dir, "CURRENT", id)
}

fn replace_id_file(dir: &Path, name: &str, id: &str) -> Result<(), SnapshotError> {
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    write_synced(&tmp, format!("{id}\n").as_bytes())?;
    let dst = dir.join(name);
    fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
    sync_dir(dir)
}

/// The id CURRENT names, if any.
pub fn current(dir: &Path) -> Result<Option<String>, SnapshotError> {
    read_id_file(&dir.join("CURRENT"))
}

fn read_id_file(p: &Path) -> Result<Option<String>, SnapshotError> {
    match fs::read_to_string(p) {
        Ok(s) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(p)(e)),
    }
}

/// True for names a snapshot id may have (no path separators, no leading dot).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && !id.contains(['/', '\\']) && !id.starts_with('.')
}

/// Reads and checks the manifest of snapshot `id` in `sdir`.
pub fn read_manifest(sdir: &Path, id: &str) -> Result<Manifest, SnapshotError> {
    if !valid_id(id) {
        return Err(SnapshotError::Corrupt { id: id.to_string(), reason: format!("invalid snapshot id {id:?}") });
    }
    let mbytes = fs::read(sdir.join("manifest.json"))
        .map_err(|e| SnapshotError::Unavailable { id: id.to_string(), reason: format!("manifest.json: {e}") })?;
    parse_manifest(&mbytes, id)
}

/// Parses and checks the manifest bytes of snapshot `id`.
pub fn parse_manifest(mbytes: &[u8], id: &str) -> Result<Manifest, SnapshotError> {
    let corrupt = |reason: String| SnapshotError::Corrupt { id: id.to_string(), reason };
    let m: Manifest = serde_json::from_slice(mbytes).map_err(|e| corrupt(format!("manifest.json: {e}")))?;
    if m.format != FORMAT {
        return Err(corrupt(format!("format {} (this build reads {FORMAT})", m.format)));
    }
    if m.id != id {
        return Err(corrupt(format!("manifest names snapshot {:?}", m.id)));
    }
    m.descriptor.validate().map_err(|e| corrupt(e.to_string()))?;
    Ok(m)
}

/// Reads data file `name` of snapshot `m` from `sdir` and checks its size and checksum. A file
/// that is missing, unreadable or still shorter than the manifest says is [`SnapshotError::Unavailable`].
pub fn read_checked(sdir: &Path, m: &Manifest, name: &str) -> Result<Vec<u8>, SnapshotError> {
    let corrupt = |reason: String| SnapshotError::Corrupt { id: m.id.clone(), reason };
    let unavailable = |reason: String| SnapshotError::Unavailable { id: m.id.clone(), reason };
    let sum = m.files.get(name).ok_or_else(|| corrupt(format!("manifest lists no {name}")))?;
    let path = sdir.join(name);
    // The size first, so a file still arriving costs a stat per retry, not a read.
    let len = fs::metadata(&path).map_err(|e| unavailable(format!("{name}: {e}")))?.len();
    if len < sum.bytes {
        return Err(unavailable(format!("{name} has {len} of its {} bytes", sum.bytes)));
    }
    let bytes = fs::read(&path).map_err(|e| unavailable(format!("{name}: {e}")))?;
    if bytes.len() as u64 != sum.bytes || hash_hex(&bytes) != sum.xxh3 {
        return Err(corrupt(format!("{name} does not match its checksum")));
    }
    Ok(bytes)
}

/// Checks every file of snapshot `id` in `sdir` against its manifest without decoding it.
pub fn verify_files(sdir: &Path, id: &str) -> Result<Manifest, SnapshotError> {
    let m = read_manifest(sdir, id)?;
    for name in FILES {
        read_checked(sdir, &m, name)?;
    }
    Ok(m)
}

/// The names of a snapshot's files, manifest last (the order to copy or upload them in).
pub fn file_names() -> [&'static str; 4] {
    [FILES[0], FILES[1], FILES[2], "manifest.json"]
}

/// Loads snapshot `id`, verifying sizes, checksums and graph structure.
pub fn load(dir: &Path, id: &str) -> Result<(Manifest, FlatIndex), SnapshotError> {
    load_from(&dir.join("snapshots").join(id), id)
}

/// Loads snapshot `id` from its own directory `sdir`.
pub fn load_from(sdir: &Path, id: &str) -> Result<(Manifest, FlatIndex), SnapshotError> {
    let corrupt = |reason: String| SnapshotError::Corrupt { id: id.to_string(), reason };
    let m = read_manifest(sdir, id)?;
    let mut data = BTreeMap::new();
    for name in FILES {
        data.insert(name, read_checked(sdir, &m, name)?);
    }
    let spec = m.descriptor;
    let vbytes = &data["vectors.bin"];
    let storage = match spec.encoding {
        Encoding::U8 | Encoding::I8 => {
            let mut v = huge_capacity(vbytes.len());
            v.extend_from_slice(vbytes);
            Storage::Bytes(v)
        }
        Encoding::F16 | Encoding::F32 => {
            let mut v = huge_capacity(vbytes.len() / 4);
            v.extend(vbytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
            Storage::F32(v)
        }
    };
    let width = if matches!(storage, Storage::Bytes(_)) { 1 } else { 4 };
    if vbytes.len() != m.vectors * spec.dimensions * width {
        return Err(corrupt(format!("vectors.bin has {} bytes for {} vectors", vbytes.len(), m.vectors)));
    }
    let ids_text = std::str::from_utf8(&data["ids.txt"]).map_err(|_| corrupt("ids.txt is not UTF-8".into()))?;
    let ids = Ids::from_lines(ids_text).map_err(|e| corrupt(e.to_string()))?;
    let graph = decode_graph(&data["graph.bin"]).map_err(|e| corrupt(e.to_string()))?;
    if ids.len() != m.vectors || graph.len() != m.vectors {
        return Err(corrupt(format!("{} ids and {} graph nodes for {} vectors", ids.len(), graph.len(), m.vectors)));
    }
    graph.validate().map_err(|e| corrupt(e.to_string()))?;
    let vectors = VectorStore::new(spec, storage).with_walk_codes();
    let index = FlatIndex { vectors, graph, ids, ef_search: m.hnsw.ef_search };
    Ok((m, index))
}

/// Loads whatever CURRENT names.
pub fn load_current(dir: &Path) -> Result<(Manifest, FlatIndex), SnapshotError> {
    let id = current(dir)?.ok_or_else(|| SnapshotError::NoCurrent(dir.to_path_buf()))?;
    load(dir, &id)
}

/// The snapshot ids under `dir/snapshots`, oldest first (ids sort by creation time).
pub fn list(dir: &Path) -> Result<Vec<String>, SnapshotError> {
    let mut ids = entries(&dir.join("snapshots"))?;
    ids.retain(|i| valid_id(i));
    ids.sort();
    Ok(ids)
}

fn entries(snaps: &Path) -> Result<Vec<String>, SnapshotError> {
    match fs::read_dir(snaps) {
        Ok(rd) => Ok(rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(snaps)(e)),
    }
}

/// The snapshot a rollback pinned (`PINNED`), which garbage collection never removes.
pub fn pinned(dir: &Path) -> Result<Option<String>, SnapshotError> {
    read_id_file(&dir.join("PINNED"))
}

/// Pins `id` (replacing any earlier pin), atomically like CURRENT.
pub fn pin(dir: &Path, id: &str) -> Result<(), SnapshotError> {
    replace_id_file(dir, "PINNED", id)
}

/// Which snapshots of `ids` (sorted, oldest first) garbage collection removes: all but the live
/// one, the pinned one and the newest others up to `keep` in all.
pub fn doomed(ids: &[String], live: Option<&str>, pinned: Option<&str>, keep: usize) -> Vec<String> {
    let protected = |i: &str| Some(i) == live || Some(i) == pinned;
    let others: Vec<&String> = ids.iter().filter(|i| !protected(i)).collect();
    let kept_protected = ids.iter().filter(|i| protected(i)).count();
    let retained = keep.max(1).saturating_sub(kept_protected);
    others[..others.len().saturating_sub(retained)].iter().map(|i| i.to_string()).collect()
}

/// Keeps `keep` snapshots (the live one, the pinned one and the newest others) and removes the
/// rest and any stale temp dirs left by interrupted builds. CURRENT and PINNED are read again
/// before each removal, so a rollback running meanwhile never loses its target.
pub fn gc(dir: &Path, keep: usize) -> Result<Vec<String>, SnapshotError> {
    let snaps = dir.join("snapshots");
    let temps: Vec<String> = entries(&snaps)?.into_iter().filter(|i| i.starts_with(".tmp-")).collect();
    let ids = list(dir)?;
    let mut removed = Vec::new();
    for id in doomed(&ids, current(dir)?.as_deref(), pinned(dir)?.as_deref(), keep) {
        if current(dir)?.as_deref() == Some(&id) || pinned(dir)?.as_deref() == Some(&id) {
            continue;
        }
        let p = snaps.join(&id);
        fs::remove_dir_all(&p).map_err(io_err(&p))?;
        removed.push(id);
    }
    for t in &temps {
        let p = snaps.join(t);
        fs::remove_dir_all(&p).map_err(io_err(&p))?;
    }
    Ok(removed)
}

pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let mut f = fs::File::create(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    fs::File::open(dir).and_then(|f| f.sync_all()).map_err(io_err(dir))
}

/// graph.bin: magic, u32 n, u32 entry, u8 max level, 3 pad, levels[n], layer-0 CSR,
/// u32 upper count, upper nodes, then one CSR per upper layer. CSR = (rows+1) u32 offsets
/// followed by u32 targets. All little-endian.
pub fn encode_graph(g: &Graph) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(GRAPH_MAGIC);
    out.extend_from_slice(&(g.levels.len() as u32).to_le_bytes());
    out.extend_from_slice(&g.entry.to_le_bytes());
    out.extend_from_slice(&[g.max_level, 0, 0, 0]);
    out.extend_from_slice(&g.levels);
    let put = |out: &mut Vec<u8>, xs: &[u32]| xs.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
    put(&mut out, &g.layer0.offsets);
    put(&mut out, &g.layer0.targets);
    out.extend_from_slice(&(g.upper_nodes.len() as u32).to_le_bytes());
    put(&mut out, &g.upper_nodes);
    for c in &g.upper {
        put(&mut out, &c.offsets);
        put(&mut out, &c.targets);
    }
    out
}

pub fn decode_graph(b: &[u8]) -> Result<Graph, Error> {
    let mut r = Reader { b, at: 0 };
    if r.take(4)? != GRAPH_MAGIC {
        return Err(Error::Graph("graph.bin: bad magic".into()));
    }
    let n = r.u32()? as usize;
    let entry = r.u32()?;
    let max_level = r.take(4)?[0];
    let levels = r.take(n)?.to_vec();
    let layer0 = r.csr(n)?;
    let nu = r.u32()? as usize;
    let upper_nodes = r.u32s(nu)?;
    let upper = (0..max_level).map(|_| r.csr(nu)).collect::<Result<_, _>>()?;
    if r.at != b.len() {
        return Err(Error::Graph("graph.bin: trailing bytes".into()));
    }
    Ok(Graph { entry, max_level, levels, layer0, upper_nodes, upper })
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| Error::Graph("graph.bin: truncated".into()))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u32s(&mut self, n: usize) -> Result<Vec<u32>, Error> {
        let bytes = self.take(n.checked_mul(4).ok_or_else(|| Error::Graph("graph.bin: size overflow".into()))?)?;
        Ok(bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect())
    }
    fn csr(&mut self, rows: usize) -> Result<Csr, Error> {
        let offsets = self.u32s(rows.checked_add(1).ok_or_else(|| Error::Graph("graph.bin: size overflow".into()))?)?;
        let targets = self.u32s(*offsets.last().unwrap() as usize)?;
        Ok(Csr { offsets, targets })
    }
}

#[cfg(test)]
mod tests {
    use super::doomed;

    #[test]
    fn gc_keeps_live_pinned_and_newest() {
        let ids: Vec<String> = ["a", "b", "c", "d", "e"].iter().map(|s| s.to_string()).collect();
        assert_eq!(doomed(&ids, Some("c"), Some("a"), 3), vec!["b", "d"]);
        assert_eq!(doomed(&ids, Some("e"), None, 2), vec!["a", "b", "c"]);
        assert_eq!(doomed(&ids, None, None, 0), vec!["a", "b", "c", "d"]);
        assert_eq!(doomed(&ids, Some("a"), Some("b"), 1), vec!["c", "d", "e"]);
        assert!(doomed(&ids, Some("a"), None, 9).is_empty());
    }
}
