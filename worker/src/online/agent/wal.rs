//! The agent's write-ahead log: numbered segment files `wal-<first lsn>.log` of framed records.
//!
//! Frame = `u32 body length | u64 xxh3(body) | body`, little-endian. A crash can leave a torn
//! last frame; replay stops at the first frame whose length or checksum does not hold,
//! truncates the file there and keeps everything before it. A bad frame anywhere but the
//! newest segment is corruption, not a torn tail, and refuses to start.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

const HEADER: usize = 12;
/// Far above any real record (64k dims × 4 bytes + id), so a garbage length is caught early.
const MAX_BODY: usize = 1 << 24;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: io::Error },
    #[error("{path}: corrupt record at byte {offset} in a sealed segment: {reason}")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |err| WalError::Io { path: path.to_path_buf(), err }
}

/// One logged change. `lsn` orders all changes of an agent.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Put {
        lsn: u64,
        id: String,
        timestamp: i64,
        vector: Vec<f32>,
    },
    Remove {
        lsn: u64,
        id: String,
    },
    /// Flush: every object removed.
    Clear {
        lsn: u64,
    },
}

impl Record {
    pub fn lsn(&self) -> u64 {
        match self {
            Record::Put { lsn, .. } | Record::Remove { lsn, .. } | Record::Clear { lsn } => *lsn,
        }
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.lsn().to_le_bytes());
        match self {
            Record::Put { id, timestamp, vector, .. } => {
                out.push(1);
                put_str(out, id);
                out.extend_from_slice(&timestamp.to_le_bytes());
                out.extend_from_slice(&(vector.len() as u32).to_le_bytes());
                vector.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
            }
            Record::Remove { id, .. } => {
                out.push(2);
                put_str(out, id);
            }
            Record::Clear { .. } => out.push(3),
        }
    }

    fn decode_body(b: &[u8]) -> Result<Record, String> {
        let mut r = Cursor { b, at: 0 };
        let lsn = r.u64()?;
        let rec = match r.take(1)?[0] {
            1 => {
                let id = r.string()?;
                let timestamp = r.u64()? as i64;
                let n = r.u32()? as usize;
                let vector = r
                    .take(n.checked_mul(4).ok_or("vector length overflows")?)?
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                Record::Put { lsn, id, timestamp, vector }
            }
            2 => Record::Remove { lsn, id: r.string()? },
            3 => Record::Clear { lsn },
            op => return Err(format!("unknown op {op}")),
        };
        if r.at != b.len() {
            return Err("trailing bytes in record".into());
        }
        Ok(rec)
    }
}

/// Appends a framed record to `out`.
pub fn frame(rec: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    rec.encode_body(out);
    let body_len = out.len() - start - HEADER;
    let sum = xxh3_64(&out[start + HEADER..]);
    out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&sum.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len()).ok_or("record truncated")?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "id is not UTF-8".to_string())
    }
}

/// Parses frames from the start of `b`; returns the records and the length of the valid
/// prefix, plus why parsing stopped early (None = clean end).
pub fn parse(b: &[u8]) -> (Vec<Record>, usize, Option<String>) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let Some(head) = b.get(at..at + HEADER) else { return (out, at, Some("torn frame header".into())) };
        let len = u32::from_le_bytes(head[..4].try_into().unwrap()) as usize;
        let sum = u64::from_le_bytes(head[4..].try_into().unwrap());
        if len > MAX_BODY {
            return (out, at, Some(format!("frame length {len} is implausible")));
        }
        let Some(body) = b.get(at + HEADER..at + HEADER + len) else {
            return (out, at, Some("torn frame body".into()));
        };
        if xxh3_64(body) != sum {
            return (out, at, Some("checksum mismatch".into()));
        }
        match Record::decode_body(body) {
            Ok(r) => out.push(r),
            Err(e) => return (out, at, Some(e)),
        }
        at += HEADER + len;
    }
    (out, at, None)
}

fn segment_name(first_lsn: u64) -> String {
    format!("wal-{first_lsn:020}.log")
}

/// Segment files in `dir`, oldest first, with the first LSN each was opened for.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name();
        let Some(lsn) = name.to_str().and_then(|n| n.strip_prefix("wal-")?.strip_suffix(".log")?.parse().ok()) else {
            continue;
        };
        v.push((lsn, e.path()));
    }
    v.sort();
    Ok(v)
}

/// What replay found: records in LSN order and how many torn bytes were cut off.
pub struct Replay {
    pub records: Vec<Record>,
    pub discarded_bytes: u64,
}

/// Reads every segment; cuts a torn tail off the newest one.
pub fn replay(dir: &Path) -> Result<Replay, WalError> {
    let segs = segments(dir)?;
    let mut records = Vec::new();
    let mut discarded_bytes = 0;
    for (i, (_, path)) in segs.iter().enumerate() {
        let mut bytes = Vec::new();
        File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(io_err(path))?;
        let (recs, valid, stopped) = parse(&bytes);
        records.extend(recs);
        if let Some(reason) = stopped {
            if i + 1 != segs.len() {
                return Err(WalError::Corrupt { path: path.clone(), offset: valid as u64, reason });
            }
            discarded_bytes = (bytes.len() - valid) as u64;
            tracing::warn!(path = %path.display(), offset = valid, bytes = discarded_bytes, %reason, "discarding torn WAL tail");
            let f = OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
            f.set_len(valid as u64).and_then(|_| f.sync_all()).map_err(io_err(path))?;
        }
    }
    Ok(Replay { records, discarded_bytes })
}

/// The open, newest segment. Appends are made durable by [`Wal::append`] before it returns.
pub struct Wal {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    len: u64,
}

impl Wal {
    /// Starts a fresh segment whose first record will be `next_lsn`.
    pub fn create(dir: &Path, next_lsn: u64) -> Result<Wal, WalError> {
        let path = dir.join(segment_name(next_lsn));
        let file = OpenOptions::new().create(true).write(true).truncate(true).open(&path).map_err(io_err(&path))?;
        file.sync_all().map_err(io_err(&path))?;
        sync_dir(dir)?;
        Ok(Wal { dir: dir.to_path_buf(), file, path, len: 0 })
    }

    /// Writes framed bytes and fsyncs. On failure the segment is cut back to its previous
    /// length, so a half-written batch never precedes later records.
    pub fn append(&mut self, framed: &[u8]) -> Result<(), WalError> {
        let r = self
            .file
            .seek(SeekFrom::Start(self.len))
            .and_then(|_| self.file.write_all(framed))
            .and_then(|_| self.file.sync_data());
        if let Err(e) = r {
            let _ = self.file.set_len(self.len);
            return Err(io_err(&self.path)(e));
        }
        self.len += framed.len() as u64;
        Ok(())
    }

    /// Seals this segment and opens the next one at `next_lsn`.
    pub fn rotate(&mut self, next_lsn: u64) -> Result<(), WalError> {
        *self = Wal::create(&self.dir, next_lsn)?;
        Ok(())
    }
}

/// Deletes segments that hold only records at or below `lsn` (covered by a snapshot).
pub fn prune(dir: &Path, lsn: u64) -> Result<usize, WalError> {
    let segs = segments(dir)?;
    let mut removed = 0;
    // Segment i holds LSNs [first_i, first_{i+1}); the newest is never removed.
    for w in segs.windows(2) {
        if w[1].0 <= lsn + 1 {
            fs::remove_file(&w[0].1).map_err(io_err(&w[0].1))?;
            removed += 1;
        }
    }
    Ok(removed)
}

pub fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(lsn: u64, id: &str) -> Record {
        Record::Put { lsn, id: id.into(), timestamp: lsn as i64 * 10, vector: vec![lsn as f32, -1.5, 0.25] }
    }

    #[test]
    fn frames_round_trip() {
        let recs = vec![put(1, "a"), Record::Remove { lsn: 2, id: "a".into() }, Record::Clear { lsn: 3 }, put(4, "ü")];
        let mut b = Vec::new();
        recs.iter().for_each(|r| frame(r, &mut b));
        let (got, valid, stop) = parse(&b);
        assert_eq!((got, valid, stop), (recs, b.len(), None));
    }

    #[test]
    fn torn_or_flipped_tail_is_cut_at_the_last_good_frame() {
        let mut b = Vec::new();
        frame(&put(1, "a"), &mut b);
        let good = b.len();
        frame(&put(2, "b"), &mut b);
        for cut in [good + 1, good + HEADER, b.len() - 1] {
            let (got, valid, stop) = parse(&b[..cut]);
            assert_eq!((got.len(), valid), (1, good));
            assert!(stop.is_some());
        }
        let mut flipped = b.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let (got, valid, stop) = parse(&flipped);
        assert_eq!((got.len(), valid, stop.as_deref()), (1, good, Some("checksum mismatch")));
    }

    #[test]
    fn replay_truncates_newest_segment_and_rejects_damage_in_sealed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::create(dir.path(), 1).unwrap();
        let mut b = Vec::new();
        frame(&put(1, "a"), &mut b);
        w.append(&b).unwrap();
        w.rotate(2).unwrap();
        let mut b = Vec::new();
        frame(&put(2, "b"), &mut b);
        w.append(&b).unwrap();
        w.append(&b[..b.len() - 3]).unwrap(); // a torn write
        let r = replay(dir.path()).unwrap();
        assert_eq!(r.records, vec![put(1, "a"), put(2, "b")]);
        assert_eq!(r.discarded_bytes, b.len() as u64 - 3);
        assert_eq!(replay(dir.path()).unwrap().discarded_bytes, 0, "the cut is persistent");
        assert_eq!(prune(dir.path(), 1).unwrap(), 1);
        assert_eq!(segments(dir.path()).unwrap().len(), 1);

        let segs = segments(dir.path()).unwrap();
        Wal::create(dir.path(), 3).unwrap();
        let mut bytes = fs::read(&segs[0].1).unwrap();
        bytes[HEADER + 2] ^= 0xff;
        fs::write(&segs[0].1, bytes).unwrap();
        assert!(matches!(replay(dir.path()), Err(WalError::Corrupt { .. })));
    }
}
