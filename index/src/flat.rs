//! The read-only search layout: contiguous vectors, neighbour lists in flat arrays, and a
//! visited set reused across queries. Matchers only ever search this layout.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use crate::descriptor::{Encoding, Metric, Query};
use crate::error::Error;
use crate::kernels::{prefetch, score_prefetched};
use crate::vectors::{Prepared, Storage, VectorStore};

/// Compressed rows: row `i`'s targets are `targets[offsets[i]..offsets[i+1]]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Csr {
    pub offsets: Vec<u32>,
    pub targets: Vec<u32>,
}

impl Csr {
    pub fn from_rows(rows: impl IntoIterator<Item = Vec<u32>>) -> Csr {
        let mut c = Csr { offsets: vec![0], targets: Vec::new() };
        for r in rows {
            c.targets.extend_from_slice(&r);
            c.offsets.push(c.targets.len() as u32);
        }
        c
    }
    #[inline]
    pub fn row(&self, i: usize) -> &[u32] {
        &self.targets[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
    pub fn rows(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }
}

/// A layered proximity graph over rows `0..n`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    pub entry: u32,
    pub max_level: u8,
    /// Top layer of each row.
    pub levels: Vec<u8>,
    /// Layer 0 neighbours, one row per vector.
    pub layer0: Csr,
    /// Rows whose top layer is ≥ 1, ascending.
    pub upper_nodes: Vec<u32>,
    /// `upper[l-1]` holds layer `l`, one row per entry of `upper_nodes`.
    pub upper: Vec<Csr>,
}

impl Graph {
    pub fn len(&self) -> usize {
        self.levels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    fn upper_row(&self, level: usize, node: u32) -> &[u32] {
        match self.upper_nodes.binary_search(&node) {
            Ok(i) => self.upper[level - 1].row(i),
            Err(_) => &[],
        }
    }

    /// Structural checks so a damaged file cannot cause out-of-bounds access.
    pub fn validate(&self) -> Result<(), Error> {
        let n = self.levels.len();
        if n == 0 {
            return if self.layer0.targets.is_empty() && self.upper_nodes.is_empty() {
                Ok(())
            } else {
                Err(Error::Graph("empty graph with edges".into()))
            };
        }
        if self.entry as usize >= n || self.levels[self.entry as usize] != self.max_level {
            return Err(Error::Graph("entry point is not a top-layer node".into()));
        }
        if self.levels.iter().any(|&l| l > self.max_level) {
            return Err(Error::Graph("node level above max level".into()));
        }
        if self.upper.len() != self.max_level as usize {
            return Err(Error::Graph("upper layer count differs from max level".into()));
        }
        let expect: Vec<u32> = (0..n as u32).filter(|&i| self.levels[i as usize] > 0).collect();
        if expect != self.upper_nodes {
            return Err(Error::Graph("upper node list does not match levels".into()));
        }
        check_csr(&self.layer0, n, n)?;
        for l in &self.upper {
            check_csr(l, self.upper_nodes.len(), n)?;
        }
        Ok(())
    }
}

fn check_csr(c: &Csr, rows: usize, n: usize) -> Result<(), Error> {
    if c.offsets.len() != rows + 1 || c.offsets[0] != 0 {
        return Err(Error::Graph("neighbour offsets have the wrong length".into()));
    }
    if c.offsets.windows(2).any(|w| w[0] > w[1]) || *c.offsets.last().unwrap() as usize != c.targets.len() {
        return Err(Error::Graph("neighbour offsets are not monotonic".into()));
    }
    if c.targets.iter().any(|&t| t as usize >= n) {
        return Err(Error::Graph("neighbour id out of range".into()));
    }
    Ok(())
}

/// Ids of rows, packed: one blob plus end offsets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ids {
    blob: String,
    ends: Vec<u32>,
}

impl Ids {
    pub fn from_lines(text: &str) -> Result<Ids, Error> {
        if text.len() > u32::MAX as usize {
            return Err(Error::Format("id list over 4 GiB".into()));
        }
        let mut ids = Ids { blob: String::with_capacity(text.len()), ends: Vec::new() };
        for l in text.lines() {
            ids.blob.push_str(l);
            ids.ends.push(ids.blob.len() as u32);
        }
        Ok(ids)
    }
    pub fn from_vec(v: &[String]) -> Ids {
        Ids::from_lines(&v.join("\n")).expect("ids fit")
    }
    pub fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.blob[start..self.ends[i] as usize]
    }
    pub fn len(&self) -> usize {
        self.ends.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
    pub fn to_lines(&self) -> String {
        let mut s = String::with_capacity(self.blob.len() + self.len());
        for i in 0..self.len() {
            s.push_str(self.get(i));
            s.push('\n');
        }
        s
    }
    pub fn heap_bytes(&self) -> usize {
        self.blob.len() + 4 * self.ends.len()
    }
}

/// A search result: row number and ordering distance (smaller is closer).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub row: u32,
    pub distance: f32,
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) struct Cand(pub f32, pub u32);
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0).then(self.1.cmp(&o.1))
    }
}

/// Visited marks by generation, so clearing is O(1) per query.
pub(crate) struct Visited {
    marks: Vec<u16>,
    generation: u16,
}

impl Visited {
    pub(crate) const fn new() -> Visited {
        Visited { marks: Vec::new(), generation: 0 }
    }
    pub(crate) fn reset(&mut self, n: usize) {
        if self.marks.len() < n {
            self.marks.resize(n, 0);
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.marks.iter_mut().for_each(|m| *m = 0);
            self.generation = 1;
        }
    }
    #[inline]
    pub(crate) fn prefetch(&self, i: u32) {
        prefetch(self.marks.as_ptr().wrapping_add(i as usize) as *const u8, 2);
    }
    #[inline]
    pub(crate) fn insert(&mut self, i: u32) -> bool {
        let m = &mut self.marks[i as usize];
        let fresh = *m != self.generation;
        *m = self.generation;
        fresh
    }
}

/// Per-thread search state reused by every query on that thread (no allocation per query).
struct Scratch {
    visited: Visited,
    frontier: BinaryHeap<Reverse<Cand>>,
    found: BinaryHeap<Cand>,
    fresh: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch { visited: Visited::new(), frontier: BinaryHeap::new(), found: BinaryHeap::new(), fresh: Vec::new() })
    };
}

/// A loaded, searchable index.
#[derive(Debug, Clone)]
pub struct FlatIndex {
    pub vectors: VectorStore,
    pub graph: Graph,
    pub ids: Ids,
    pub ef_search: usize,
}

impl FlatIndex {
    pub fn len(&self) -> usize {
        self.vectors.len()
    }
    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// Approximate k nearest rows, closest first. `ef` = beam width (0 = index default).
    pub fn search(&self, q: &Query, k: usize, ef: usize) -> Vec<Hit> {
        self.search_where(q, k, ef, |_| true)
    }

    /// [`FlatIndex::search`] returning only rows for which `keep` holds. Rows left out still
    /// carry the walk through the graph (they are visited, not returned), so up to `k` kept
    /// rows come back even when many of the nearest are left out.
    pub fn search_where(&self, q: &Query, k: usize, ef: usize, keep: impl Fn(u32) -> bool) -> Vec<Hit> {
        if self.is_empty() || k == 0 {
            return Vec::new();
        }
        let ef = if ef == 0 { self.ef_search } else { ef }.max(k);
        let v = &self.vectors;
        let p = v.prepare(q);
        let d = v.spec.dimensions;
        if let Some(nb) = v.nibbles() {
            // Walk on the 4-bit codes, then re-rank the best candidates the walk found with the
            // store's own (exact) distance.
            let (nq, dot, rb) = (nb.prepare(&v.spec, &p), crate::kernels::active().dot_u4_i8, nb.row_bytes());
            let walk = |i: u32| nb.distance(&nq, dot, i as usize);
            let rows = RowPrefetch { base: nb.row_ptr(0), stride: rb, bytes: rb, norms: None };
            let mut hits = self.search_with(walk, rows, &keep, ef, ef);
            hits.truncate(rerank(k));
            self.rerank_exact(&p, &mut hits);
            hits.truncate(k);
            return hits;
        }
        // The common cases get a distance chosen once per query (no per-call dispatch);
        // the rest go through the general `VectorStore::distance`.
        match (&v.storage, q, v.spec.metric, v.spec.encoding) {
            (Storage::Bytes(b), Query::Bytes(qb), Metric::Cosine, Encoding::U8) => {
                let rows = RowPrefetch { base: b.as_ptr(), stride: d, bytes: d.min(1024), norms: Some(v) };
                if let Some(dist) = cosine_u8_shifted(v, b, qb, p.inv_norm()) {
                    return self.search_with(dist, rows, &keep, k, ef);
                }
                let (z, qinv, dot) = (v.spec.zero_point, p.inv_norm(), crate::kernels::active().dot_u8);
                let dist = |i: u32| {
                    let i = i as usize;
                    1.0 - dot(&b[i * d..(i + 1) * d], qb, z) as f32 * qinv * v.inv_norm(i)
                };
                self.search_with(dist, rows, &keep, k, ef)
            }
            (Storage::F32(f), Query::F32(qf), Metric::Cosine, _) => {
                let rows = RowPrefetch {
                    base: f.as_ptr() as *const u8,
                    stride: 4 * d,
                    bytes: (4 * d).min(512),
                    norms: Some(v),
                };
                self.search_with(cosine_f32(v, f, qf, p.inv_norm()), rows, &keep, k, ef)
            }
            (storage, ..) => {
                let (base, width) = match storage {
                    Storage::Bytes(b) => (b.as_ptr(), 1),
                    Storage::F32(f) => (f.as_ptr() as *const u8, 4),
                };
                let rows = RowPrefetch { base, stride: width * d, bytes: (width * d).min(512), norms: None };
                self.search_with(|i| v.distance(&p, i as usize), rows, &keep, k, ef)
            }
        }
    }

    /// Replaces the walk's distances of `hits` by the exact ones and sorts them, closest first.
    fn rerank_exact(&self, p: &Prepared<'_>, hits: &mut [Hit]) {
        let v = &self.vectors;
        let (base, width) = match &v.storage {
            Storage::Bytes(b) => (b.as_ptr(), v.spec.dimensions),
            Storage::F32(f) => (f.as_ptr() as *const u8, 4 * v.spec.dimensions),
        };
        hits.iter().for_each(|h| prefetch(base.wrapping_add(h.row as usize * width), width));
        for h in hits.iter_mut() {
            h.distance = v.distance(p, h.row as usize);
        }
        sort_hits(hits);
    }

    fn search_with(
        &self,
        dist: impl Fn(u32) -> f32,
        rows: RowPrefetch<'_>,
        keep: &impl Fn(u32) -> bool,
        k: usize,
        ef: usize,
    ) -> Vec<Hit> {
        let g = &self.graph;
        let mut cur = g.entry;
        let mut cur_d = dist(cur);
        for level in (1..=g.max_level as usize).rev() {
            loop {
                let mut moved = false;
                for &nb in g.upper_row(level, cur) {
                    let d = dist(nb);
                    if d < cur_d {
                        (cur, cur_d, moved) = (nb, d, true);
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        SCRATCH.with(|s| self.beam(&mut s.borrow_mut(), &dist, rows, keep, Cand(cur_d, cur), ef, k))
    }

    /// Layer-0 beam search from `start`, returning the `k` best of the `ef` kept rows found,
    /// closest first. The unvisited neighbours of a node are collected first and scored with
    /// the next few rows' loads in flight (see [`RowPrefetch`]), so the loads
    /// overlap instead of stalling one distance at a time. A row `keep` rejects is walked
    /// through but never enters the results.
    #[allow(clippy::too_many_arguments)]
    fn beam(
        &self,
        s: &mut Scratch,
        dist: &impl Fn(u32) -> f32,
        rows: RowPrefetch<'_>,
        keep: &impl Fn(u32) -> bool,
        start: Cand,
        ef: usize,
        k: usize,
    ) -> Vec<Hit> {
        let Scratch { visited, frontier, found, fresh } = s;
        visited.reset(self.len());
        visited.insert(start.1);
        frontier.clear();
        found.clear();
        frontier.push(Reverse(start));
        if keep(start.1) {
            found.push(start);
        }
        while let Some(Reverse(c)) = frontier.pop() {
            if found.len() >= ef && c.0 > found.peek().map_or(f32::INFINITY, |w: &Cand| w.0) {
                break;
            }
            // The next node out of the frontier is often the one now on top: its links load
            // while this node's neighbours are scored.
            if let Some(Reverse(next)) = frontier.peek() {
                let links = self.graph.layer0.row(next.1 as usize);
                prefetch(links.as_ptr() as *const u8, 4 * links.len());
            }
            let links = self.graph.layer0.row(c.1 as usize);
            links.iter().for_each(|&nb| visited.prefetch(nb));
            fresh.clear();
            fresh.extend(links.iter().copied().filter(|&nb| visited.insert(nb)));
            score_prefetched(
                fresh,
                rows.bytes_per_row(),
                |nb| rows.load(nb),
                |nb| {
                    let d = dist(nb);
                    if found.len() < ef || found.peek().is_none_or(|w| d < w.0) {
                        frontier.push(Reverse(Cand(d, nb)));
                        if keep(nb) {
                            found.push(Cand(d, nb));
                            if found.len() > ef {
                                found.pop();
                            }
                        }
                    }
                },
            );
        }
        while found.len() > k {
            found.pop();
        }
        let mut hits: Vec<Hit> = found.drain().map(|c| Hit { row: c.1, distance: c.0 }).collect();
        sort_hits(&mut hits);
        hits
    }

    /// Exact k nearest rows by scanning everything (ground truth, tests, tiny indices).
    pub fn exact(&self, q: &Query, k: usize) -> Vec<Hit> {
        exact_search(&self.vectors, q, k)
    }

    /// Bytes held per vector while serving (vectors, norms, graph, ids).
    pub fn bytes_per_vector(&self) -> f64 {
        let n = self.len().max(1) as f64;
        let g = &self.graph;
        let graph = g.levels.len()
            + 4 * (g.layer0.offsets.len() + g.layer0.targets.len() + g.upper_nodes.len())
            + g.upper.iter().map(|c| 4 * (c.offsets.len() + c.targets.len())).sum::<usize>();
        self.vectors.bytes_per_vector() as f64 + (graph + self.ids.heap_bytes()) as f64 / n
    }
}

/// Closest first; ties by row.
fn sort_hits(hits: &mut [Hit]) {
    hits.sort_unstable_by(|a, b| a.distance.total_cmp(&b.distance).then(a.row.cmp(&b.row)));
}

/// Brute-force k nearest rows of a store.
pub fn exact_search(store: &VectorStore, q: &Query, k: usize) -> Vec<Hit> {
    scan(store, q, k, 0..store.len() as u32)
}

/// Cosine over u8 rows with the query shifted into i8 once, so each row costs one multiply-add
/// per byte: the distance the graph search and the exact scans use. `None` when the query
/// cannot be shifted (a zero point outside the kernel's range).
fn cosine_u8_shifted<'a>(v: &'a VectorStore, b: &'a [u8], qb: &[u8], qinv: f32) -> Option<impl Fn(u32) -> f32 + 'a> {
    let (d, z) = (v.spec.dimensions, v.spec.zero_point);
    let (qs, qsum) = crate::kernels::shift_query(qb, z)?;
    let (dot, corr) = (crate::kernels::active().dot_u8_i8, z as i64 * qsum);
    Some(move |i: u32| {
        let i = i as usize;
        1.0 - (dot(&b[i * d..(i + 1) * d], &qs) - corr) as f32 * qinv * v.inv_norm(i)
    })
}

/// How many of the candidates a walk on codes found are re-ranked on the exact rows for `k`
/// results: the code distances order the candidates almost as the exact ones do, so the true
/// top `k` lie within the first few beyond `k` (re-ranking 36, 64 or 128 of the walk's
/// candidates gave the same recall@10 to four digits on MiniLM embeddings, and 20 or all `ef`
/// the same on face-like 100k data).
fn rerank(k: usize) -> usize {
    2 * k + 16
}

/// Where the rows a search scores lie, for prefetching them: row `i` starts at
/// `base + i·stride`, its first `bytes` are loaded, and with `norms` its inverse norm too (a
/// cache miss of its own on large stores).
#[derive(Clone, Copy)]
struct RowPrefetch<'a> {
    base: *const u8,
    stride: usize,
    bytes: usize,
    norms: Option<&'a VectorStore>,
}

impl RowPrefetch<'_> {
    #[inline]
    fn load(&self, i: u32) {
        prefetch(self.base.wrapping_add(i as usize * self.stride), self.bytes);
        if let Some(v) = self.norms {
            prefetch(v.inv_norm_ptr(i as usize), 4);
        }
    }

    /// Bytes [`RowPrefetch::load`] asks for per row (a norm counts as a cache line).
    fn bytes_per_row(&self) -> usize {
        self.bytes + if self.norms.is_some() { 64 } else { 0 }
    }
}

/// Cosine over f32 rows, the kernel chosen once per query.
fn cosine_f32<'a>(v: &'a VectorStore, f: &'a [f32], qf: &'a [f32], qinv: f32) -> impl Fn(u32) -> f32 + 'a {
    let (d, dot) = (v.spec.dimensions, crate::kernels::active().dot_f32);
    move |i: u32| {
        let i = i as usize;
        1.0 - dot(&f[i * d..(i + 1) * d], qf) * qinv * v.inv_norm(i)
    }
}

/// Exact k nearest among `rows` of a store, closest first (ties by row), scored as the graph
/// search scores: ground truth, and the refresh tail every matcher search scans.
pub fn scan(store: &VectorStore, q: &Query, k: usize, rows: impl Iterator<Item = u32>) -> Vec<Hit> {
    let p = store.prepare(q);
    match (&store.storage, q, store.spec.metric, store.spec.encoding) {
        (Storage::Bytes(b), Query::Bytes(qb), Metric::Cosine, Encoding::U8) => {
            if let Some(dist) = cosine_u8_shifted(store, b, qb, p.inv_norm()) {
                return top_k(dist, rows, k);
            }
        }
        (Storage::F32(f), Query::F32(qf), Metric::Cosine, _) => {
            return top_k(cosine_f32(store, f, qf, p.inv_norm()), rows, k)
        }
        _ => {}
    }
    top_k(|i| store.distance(&p, i as usize), rows, k)
}

fn top_k(dist: impl Fn(u32) -> f32, rows: impl Iterator<Item = u32>, k: usize) -> Vec<Hit> {
    let mut heap = BinaryHeap::with_capacity(k + 1);
    for i in rows {
        let d = dist(i);
        if heap.len() < k || d < heap.peek().map_or(f32::INFINITY, |c: &Cand| c.0) {
            heap.push(Cand(d, i));
            if heap.len() > k {
                heap.pop();
            }
        }
    }
    heap.into_sorted_vec().into_iter().map(|c| Hit { row: c.1, distance: c.0 }).collect()
}

/// Fraction of `truth` rows present in `got` (recall@|truth|).
pub fn recall(got: &[Hit], truth: &[Hit]) -> f64 {
    if truth.is_empty() {
        return 1.0;
    }
    let hits = truth.iter().filter(|t| got.iter().any(|g| g.row == t.row)).count();
    hits as f64 / truth.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_pack_and_unpack() {
        let ids = Ids::from_lines("a\nbb\n\nccc\n").unwrap();
        assert_eq!(ids.len(), 4);
        assert_eq!((ids.get(0), ids.get(1), ids.get(2), ids.get(3)), ("a", "bb", "", "ccc"));
        assert_eq!(Ids::from_lines(&ids.to_lines()).unwrap(), ids);
    }

    #[test]
    fn validate_catches_bad_graphs() {
        let good = Graph {
            entry: 0,
            max_level: 0,
            levels: vec![0, 0],
            layer0: Csr::from_rows([vec![1], vec![0]]),
            ..Default::default()
        };
        assert!(good.validate().is_ok());
        let mut bad = good.clone();
        bad.layer0.targets[0] = 7;
        assert!(bad.validate().unwrap_err().to_string().contains("out of range"));
        let mut bad = good.clone();
        bad.entry = 5;
        assert!(bad.validate().is_err());
        let mut bad = good;
        bad.layer0.offsets = vec![0, 2, 1];
        assert!(bad.validate().is_err());
    }
}

#[cfg(test)]
mod scan_tests {
    use super::*;
    use crate::descriptor::DescriptorSpec;

    /// The per-query scorers of `scan` (shifted u8, f32 kernel) give exactly what the general
    /// `VectorStore::distance` gives, so scanned tail rows and graph hits compare fairly.
    #[test]
    fn scan_scores_as_the_general_distance_does() {
        let (n, d) = (300usize, 37usize);
        let mut x = 12345u64;
        let mut next = || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) as u32
        };
        let bytes: Vec<u8> = (0..n * d).map(|_| next() as u8).collect();
        let floats: Vec<f32> = (0..n * d).map(|_| next() as f32 / u32::MAX as f32 - 0.25).collect();
        let u8s = VectorStore::new(DescriptorSpec::new(1, d, Encoding::U8, Metric::Cosine), Storage::Bytes(bytes));
        let f32s = VectorStore::new(DescriptorSpec::new(1, d, Encoding::F32, Metric::Cosine), Storage::F32(floats));
        let qb: Vec<u8> = (0..d).map(|_| next() as u8).collect();
        let qf: Vec<f32> = (0..d).map(|_| next() as f32 / u32::MAX as f32).collect();
        for (store, q) in [(&u8s, Query::Bytes(qb)), (&f32s, Query::F32(qf))] {
            let p = store.prepare(&q);
            let mut want: Vec<Hit> =
                (0..n as u32).map(|i| Hit { row: i, distance: store.distance(&p, i as usize) }).collect();
            sort_hits(&mut want);
            want.truncate(10);
            assert_eq!(scan(store, &q, 10, 0..n as u32), want);
            // A subset of rows: only those come back.
            let odd = scan(store, &q, 5, (0..n as u32).filter(|i| i % 2 == 1));
            assert_eq!(odd.len(), 5);
            assert!(odd.iter().all(|h| h.row % 2 == 1));
        }
    }
}
