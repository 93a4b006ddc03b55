//! A snapshot's changes since it was built, applied from deltas without touching the graph:
//! added rows form a tail that every query scans exactly, removed rows become tombstones that
//! the graph search walks through but never returns. Row numbers: `0..base.len()` are the
//! snapshot's rows, `base.len() + i` is tail row `i`.

use std::collections::HashSet;

use crate::delta::Delta;
use crate::descriptor::{DescriptorSpec, Encoding, Query};
use crate::error::Error;
use crate::flat::{FlatIndex, Hit};
use crate::vectors::{Storage, VectorStore};

/// A set of row numbers.
#[derive(Debug, Clone, Default)]
struct Rows {
    words: Vec<u64>,
    count: usize,
}

impl Rows {
    #[inline]
    fn has(&self, i: usize) -> bool {
        self.words.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    fn insert(&mut self, i: usize) {
        if self.words.len() <= i / 64 {
            self.words.resize(i / 64 + 1, 0);
        }
        if !self.has(i) {
            self.words[i / 64] |= 1 << (i % 64);
            self.count += 1;
        }
    }
}

/// The deltas applied on top of one snapshot.
#[derive(Debug, Clone)]
pub struct Tail {
    deltas: u64,
    store: VectorStore,
    ids: Vec<String>,
    dead_base: Rows,
    dead_tail: Rows,
}

/// Rows in serving encoding (as in `vectors.bin`) as a store the tail scan reads.
fn store_from_raw(spec: DescriptorSpec, raw: &[u8]) -> VectorStore {
    let storage = match spec.encoding {
        Encoding::U8 | Encoding::I8 => Storage::Bytes(raw.to_vec()),
        Encoding::F16 | Encoding::F32 => {
            Storage::F32(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        }
    };
    VectorStore::new(spec, storage)
}

impl Tail {
    /// No changes: the snapshot as built.
    pub fn new(spec: DescriptorSpec) -> Tail {
        Tail {
            deltas: 0,
            store: store_from_raw(spec, &[]),
            ids: Vec::new(),
            dead_base: Rows::default(),
            dead_tail: Rows::default(),
        }
    }

    /// Deltas applied so far (the sequence number of the last one).
    pub fn deltas(&self) -> u64 {
        self.deltas
    }
    /// Rows in the tail (every query scans them).
    pub fn rows(&self) -> usize {
        self.store.len()
    }
    /// Removed rows, of the snapshot and of the tail.
    pub fn tombstones(&self) -> usize {
        self.dead_base.count + self.dead_tail.count
    }
    /// Rows a search can return.
    pub fn live(&self, base: &FlatIndex) -> usize {
        base.len() + self.rows() - self.tombstones()
    }
    /// The tail's vectors (row `i` of this store is row `base.len() + i`).
    pub fn store(&self) -> &VectorStore {
        &self.store
    }

    /// The id of row `row` (a snapshot row or a tail row).
    pub fn id<'a>(&'a self, base: &'a FlatIndex, row: u32) -> &'a str {
        let n = base.len();
        match (row as usize).checked_sub(n) {
            None => base.ids.get(row as usize),
            Some(i) => &self.ids[i],
        }
    }

    /// Every row a search can return, ascending.
    pub fn live_rows(&self, base: &FlatIndex) -> Vec<u32> {
        let n = base.len();
        let base_rows = (0..n).filter(|&i| !self.dead_base.has(i));
        let tail_rows = (0..self.rows()).filter(|&i| !self.dead_tail.has(i)).map(|i| n + i);
        base_rows.chain(tail_rows).map(|r| r as u32).collect()
    }

    /// The state after `delta`, which must be the next one: its removed ids must all be live,
    /// its added ids must not be (after the removals). `self` is left as it was.
    pub fn apply(&self, base: &FlatIndex, delta: &Delta) -> Result<Tail, Error> {
        if delta.manifest.seq != self.deltas + 1 {
            return Err(Error::Delta(format!("delta {} does not follow delta {}", delta.manifest.seq, self.deltas)));
        }
        let spec = self.store.spec;
        let width = spec.dimensions * crate::delta::stored_width(spec.encoding);
        if delta.vectors.len() != delta.added_ids.len() * width {
            let (ids, bytes) = (delta.added_ids.len(), delta.vectors.len());
            return Err(Error::Delta(format!("{ids} added ids for {bytes} bytes of vectors")));
        }
        let removed: HashSet<&str> = delta.removed_ids.iter().map(String::as_str).collect();
        let added: HashSet<&str> = delta.added_ids.iter().map(String::as_str).collect();
        let mut next = self.clone();
        let mut found = 0usize;
        let mut visit = |id: &str, dead: &mut Rows, i: usize| -> Result<(), Error> {
            if removed.contains(id) {
                dead.insert(i);
                found += 1;
            } else if added.contains(id) {
                return Err(Error::Delta(format!("adds id {id:?}, which is already live")));
            }
            Ok(())
        };
        for i in (0..base.len()).filter(|&i| !self.dead_base.has(i)) {
            visit(base.ids.get(i), &mut next.dead_base, i)?;
        }
        for i in (0..self.rows()).filter(|&i| !self.dead_tail.has(i)) {
            visit(&self.ids[i], &mut next.dead_tail, i)?;
        }
        if found != removed.len() {
            let live: HashSet<&str> = self.live_rows(base).into_iter().map(|r| self.id(base, r)).collect();
            let missing = removed.iter().find(|id| !live.contains(**id)).copied().unwrap_or_default();
            return Err(Error::Delta(format!("removes id {missing:?}, which is not live")));
        }
        if !delta.added_ids.is_empty() {
            let mut raw = self.store.raw_bytes();
            raw.extend_from_slice(&delta.vectors);
            next.store = store_from_raw(spec, &raw);
            next.ids.extend(delta.added_ids.iter().cloned());
        }
        next.deltas = delta.manifest.seq;
        Ok(next)
    }

    /// The `k` nearest live rows, closest first: the graph search with tombstones filtered
    /// inside it, merged with an exact scan of the tail.
    pub fn search(&self, base: &FlatIndex, q: &Query, k: usize, ef: usize) -> Vec<Hit> {
        let mut hits = if self.dead_base.count == 0 {
            base.search(q, k, ef)
        } else {
            base.search_where(q, k, ef, |r| !self.dead_base.has(r as usize))
        };
        if self.rows() == self.dead_tail.count || k == 0 {
            return hits;
        }
        let n = base.len() as u32;
        let live = (0..self.rows() as u32).filter(|&i| !self.dead_tail.has(i as usize));
        hits.extend(crate::flat::scan(&self.store, q, k, live).into_iter().map(|h| Hit { row: n + h.row, ..h }));
        hits.sort_unstable_by(|a, b| a.distance.total_cmp(&b.distance).then(a.row.cmp(&b.row)));
        hits.truncate(k);
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::{DeltaManifest, FORMAT};
    use crate::descriptor::Metric;
    use crate::flat::{Csr, Graph, Ids};

    /// Four 2-d rows on a line graph: a, b, c, d.
    fn base() -> FlatIndex {
        let spec = DescriptorSpec::new(1, 2, Encoding::F32, Metric::L2);
        let v = [0.0f32, 0.0, 1.0, 0.0, 2.0, 0.0, 3.0, 0.0];
        let graph = Graph {
            entry: 0,
            max_level: 0,
            levels: vec![0; 4],
            layer0: Csr::from_rows([vec![1], vec![0, 2], vec![1, 3], vec![2]]),
            ..Default::default()
        };
        let ids = Ids::from_vec(&["a", "b", "c", "d"].map(String::from));
        FlatIndex { vectors: VectorStore::new(spec, Storage::F32(v.to_vec())), graph, ids, ef_search: 8 }
    }

    fn delta(seq: u64, added: &[(&str, [f32; 2])], removed: &[&str]) -> Delta {
        Delta {
            manifest: DeltaManifest {
                format: FORMAT,
                namespace: "default".into(),
                label: "l".into(),
                snapshot: "s".into(),
                seq,
                descriptor: DescriptorSpec::new(1, 2, Encoding::F32, Metric::L2),
                added: added.len(),
                removed: removed.len(),
                source_digest: String::new(),
                created_at: String::new(),
                files: Default::default(),
            },
            added_ids: added.iter().map(|(i, _)| i.to_string()).collect(),
            vectors: added.iter().flat_map(|(_, v)| v.iter().flat_map(|x| x.to_le_bytes())).collect(),
            removed_ids: removed.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn ids(t: &Tail, b: &FlatIndex, q: [f32; 2], k: usize) -> Vec<String> {
        t.search(b, &Query::F32(q.to_vec()), k, 0).iter().map(|h| t.id(b, h.row).to_string()).collect()
    }

    #[test]
    fn tail_rows_and_tombstones_change_what_is_found() {
        let b = base();
        let t0 = Tail::new(b.vectors.spec);
        assert_eq!(ids(&t0, &b, [0.1, 0.0], 2), ["a", "b"]);
        let t1 = t0.apply(&b, &delta(1, &[("e", [0.0, 0.1]), ("f", [9.0, 9.0])], &["a"])).unwrap();
        assert_eq!((t1.deltas(), t1.rows(), t1.tombstones(), t1.live(&b)), (1, 2, 1, 5));
        assert_eq!(ids(&t1, &b, [0.1, 0.0], 2), ["e", "b"]);
        // Limit results still come back with the nearest rows removed.
        let t2 = t1.apply(&b, &delta(2, &[], &["b", "e"])).unwrap();
        assert_eq!(ids(&t2, &b, [0.0, 0.0], 3), ["c", "d", "f"]);
        assert_eq!(t2.live_rows(&b), vec![2, 3, 5]);
        // A removed id can come back with a new vector.
        let t3 = t2.apply(&b, &delta(3, &[("a", [0.0, 0.0])], &[])).unwrap();
        assert_eq!(ids(&t3, &b, [0.0, 0.0], 1), ["a"]);
        assert_eq!(ids(&t0, &b, [0.1, 0.0], 2), ["a", "b"], "applying leaves the old state as it was");
    }

    #[test]
    fn inconsistent_deltas_are_refused() {
        let b = base();
        let t = Tail::new(b.vectors.spec);
        assert!(t.apply(&b, &delta(2, &[], &[])).unwrap_err().to_string().contains("does not follow"));
        assert!(t.apply(&b, &delta(1, &[], &["zz"])).unwrap_err().to_string().contains("\"zz\", which is not live"));
        assert!(t.apply(&b, &delta(1, &[("a", [1.0, 1.0])], &[])).unwrap_err().to_string().contains("already live"));
        // Removing and re-adding in one delta replaces the row.
        let t1 = t.apply(&b, &delta(1, &[("a", [5.0, 5.0])], &["a"])).unwrap();
        assert_eq!(ids(&t1, &b, [5.0, 5.0], 1), ["a"]);
        assert_eq!(t1.id(&b, t1.search(&b, &Query::F32(vec![5.0, 5.0]), 1, 0)[0].row), "a");
        let mut bad = delta(2, &[("g", [1.0, 1.0])], &[]);
        bad.vectors.pop();
        assert!(t1.apply(&b, &bad).unwrap_err().to_string().contains("bytes of vectors"));
    }
}
