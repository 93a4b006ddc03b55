//! An agent's in-memory state: the live objects, a *segment* (an HNSW graph over every object
//! live at the segment's LSN) and a *tail* of rows written since, searched by brute force.
//!
//! Nothing is ever deleted from a segment or the tail in place: a row is live only while the
//! object map still holds that id at that row's LSN, so an update or removal is a tombstone
//! for free. The periodic rebuild compacts both.

use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use kim_index::flat::Ids;
use kim_index::vectors::Storage;
use kim_index::{DescriptorSpec, Encoding, FlatIndex, Graph, Metric, Query, VectorStore};

use super::wal::Record;

/// Where a live object's vector is held: a row of the current segment, or (written since
/// the segment was built) its own allocation, shared with its tail row. Each vector is held
/// once.
#[derive(Debug, Clone)]
pub enum Held {
    Row(u32),
    Own(Arc<[f32]>),
}

/// One live object.
#[derive(Debug, Clone)]
pub struct Obj {
    pub vector: Held,
    pub timestamp: i64,
    pub lsn: u64,
}

/// The live objects at one LSN, ordered by LSN, with the segment their rows refer to: a
/// consistent view that outlives the lock it was taken under.
pub struct Live {
    pub segment: Arc<Segment>,
    pub rows: Vec<(String, Obj)>,
    pub lsn: u64,
}

impl Live {
    pub fn vector<'a>(&'a self, o: &'a Obj) -> &'a [f32] {
        held(&self.segment, o)
    }
}

fn held<'a>(segment: &'a Segment, o: &'a Obj) -> &'a [f32] {
    match &o.vector {
        Held::Row(r) => segment.index.vectors.row_f32(*r as usize),
        Held::Own(v) => v,
    }
}

/// A graph over the objects live at `lsn`, with each row's id and LSN.
pub struct Segment {
    pub index: FlatIndex,
    pub lsns: Vec<u64>,
    pub timestamps: Vec<i64>,
    pub lsn: u64,
}

impl Segment {
    pub fn empty(spec: DescriptorSpec) -> Segment {
        Segment::from_parts(spec, Vec::new(), Vec::new(), Graph::default(), 0)
    }

    /// The live objects of `live` in its order (the graph's rows).
    pub fn new(spec: DescriptorSpec, live: &Live, graph: Graph, lsn: u64) -> Segment {
        let flat: Vec<f32> = live.rows.iter().flat_map(|(_, o)| live.vector(o).iter().copied()).collect();
        let meta = live.rows.iter().map(|(id, o)| (id.clone(), o.lsn, o.timestamp)).collect();
        Segment::from_parts(spec, meta, flat, graph, lsn)
    }

    /// Rows as `(id, lsn, timestamp)` and their vectors, concatenated, in graph order.
    pub fn from_parts(
        spec: DescriptorSpec,
        meta: Vec<(String, u64, i64)>,
        flat: Vec<f32>,
        graph: Graph,
        lsn: u64,
    ) -> Segment {
        let ids: Vec<String> = meta.iter().map(|(id, ..)| id.clone()).collect();
        let index = FlatIndex {
            // Cosine segments walk 4-bit codes of their rows, as loaded snapshots do.
            vectors: VectorStore::new(spec, Storage::F32(flat)).with_walk_codes(),
            graph,
            ids: Ids::from_vec(&ids),
            ef_search: 0,
        };
        Segment { index, lsns: meta.iter().map(|m| m.1).collect(), timestamps: meta.iter().map(|m| m.2).collect(), lsn }
    }

    pub fn rows(&self) -> usize {
        self.lsns.len()
    }
}

struct TailRow {
    id: String,
    lsn: u64,
    vector: Arc<[f32]>,
    inv_norm: f32,
}

/// A search hit in the agent's ordering distance (see [`Store::vald_distance`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub id: String,
    pub distance: f32,
}

pub struct Store {
    pub spec: DescriptorSpec,
    pub objects: HashMap<String, Obj>,
    pub segment: Arc<Segment>,
    tail: Vec<TailRow>,
    /// Segment rows no longer live; decides how far a graph search must over-fetch.
    segment_dead: usize,
    /// Last applied LSN.
    pub lsn: u64,
    ef_search: usize,
}

impl Store {
    pub fn new(dimensions: usize, metric: Metric, ef_search: usize) -> Store {
        let spec = DescriptorSpec::new(0, dimensions, Encoding::F32, metric);
        Store {
            spec,
            objects: HashMap::new(),
            segment: Arc::new(Segment::empty(spec)),
            tail: Vec::new(),
            segment_dead: 0,
            lsn: 0,
            ef_search,
        }
    }

    /// Objects written since the segment was built (Vald's "uncommitted").
    pub fn uncommitted(&self) -> usize {
        self.objects.values().filter(|o| o.lsn > self.segment.lsn).count()
    }

    /// Rows in the brute-forced tail, dead ones included.
    pub fn tail_len(&self) -> usize {
        self.tail.len()
    }

    /// Changes a rebuild would fold in: tail rows plus retired segment rows.
    pub fn backlog(&self) -> usize {
        self.tail.len() + self.segment_dead
    }

    pub fn apply(&mut self, rec: Record) {
        self.lsn = self.lsn.max(rec.lsn());
        match rec {
            Record::Put { lsn, id, timestamp, vector } => {
                let vector: Arc<[f32]> = vector.into();
                let inv_norm = self.inv_norm(&vector);
                self.tail.push(TailRow { id: id.clone(), lsn, vector: vector.clone(), inv_norm });
                if let Some(old) = self.objects.insert(id, Obj { vector: Held::Own(vector), timestamp, lsn }) {
                    self.retire(old.lsn);
                }
            }
            Record::Remove { id, .. } => {
                if let Some(old) = self.objects.remove(&id) {
                    self.retire(old.lsn);
                }
            }
            Record::Clear { .. } => {
                self.objects.clear();
                self.tail.clear();
                self.segment_dead = self.segment.rows();
            }
        }
    }

    fn retire(&mut self, old_lsn: u64) {
        if old_lsn <= self.segment.lsn {
            self.segment_dead += 1;
        }
    }

    /// The stored vector of a live object.
    pub fn vector_of(&self, id: &str) -> Option<&[f32]> {
        self.objects.get(id).map(|o| held(&self.segment, o))
    }

    /// Every live object at the current LSN (for a rebuild or a listing).
    pub fn live(&self) -> Live {
        let mut rows: Vec<(String, Obj)> = self.objects.iter().map(|(k, o)| (k.clone(), o.clone())).collect();
        rows.sort_by_key(|(_, o)| o.lsn);
        Live { segment: self.segment.clone(), rows, lsn: self.lsn }
    }

    /// Swaps in a segment built from the objects live at `seg.lsn`; the tail keeps only rows
    /// written after it.
    /// Objects it holds point at its rows from then on, and their own copies are dropped.
    pub fn install(&mut self, seg: Segment) {
        let seg_lsn = seg.lsn;
        let mut dead = 0;
        for r in 0..seg.rows() {
            match self.objects.get_mut(seg.index.ids.get(r)) {
                Some(o) if o.lsn == seg.lsns[r] => o.vector = Held::Row(r as u32),
                _ => dead += 1,
            }
        }
        self.segment_dead = dead;
        self.segment = Arc::new(seg);
        let objects = &self.objects;
        self.tail.retain(|t| t.lsn > seg_lsn && objects.get(&t.id).is_some_and(|o| o.lsn == t.lsn));
    }

    fn is_live(&self, id: &str, lsn: u64) -> bool {
        self.objects.get(id).is_some_and(|o| o.lsn == lsn)
    }

    fn inv_norm(&self, v: &[f32]) -> f32 {
        let d = (kim_index::kernels::active().dot_f32)(v, v);
        if d > 0.0 {
            1.0 / d.sqrt()
        } else {
            0.0
        }
    }

    /// The k nearest live objects, closest first. `ef` is the graph's beam width (0: the
    /// agent's --ef-search); `exact` scans the segment too (Vald's LinearSearch). Nothing is
    /// sized from `k` beyond the rows that exist.
    pub fn search(&self, q: &[f32], k: usize, ef: usize, exact: bool) -> Vec<Found> {
        if k == 0 {
            return Vec::new();
        }
        let ef = if ef == 0 { self.ef_search } else { ef };
        let mut out = self.search_segment(q, k, ef, exact);
        out.extend(self.search_tail(q, k));
        out.sort_by(|a, b| a.distance.total_cmp(&b.distance).then_with(|| a.id.cmp(&b.id)));
        out.truncate(k);
        for f in &mut out {
            f.distance = self.vald_distance(f.distance);
        }
        out
    }

    fn search_segment(&self, q: &[f32], k: usize, ef: usize, exact: bool) -> Vec<Found> {
        let seg = &self.segment;
        let live = seg.rows() - self.segment_dead.min(seg.rows());
        if live == 0 {
            return Vec::new();
        }
        let query = Query::F32(q.to_vec());
        // Over-fetch by the dead share; widen until k live rows are found or all rows were seen.
        let mut fetch = (k * seg.rows()).div_ceil(live).max(k) + self.segment_dead.min(64);
        loop {
            let hits = if exact || fetch >= seg.rows() || seg.index.graph.len() != seg.rows() {
                seg.index.exact(&query, fetch.min(seg.rows()))
            } else {
                seg.index.search(&query, fetch, ef.max(fetch))
            };
            let seen = hits.len();
            let found: Vec<Found> = hits
                .into_iter()
                .filter(|h| self.is_live(seg.index.ids.get(h.row as usize), seg.lsns[h.row as usize]))
                .map(|h| Found { id: seg.index.ids.get(h.row as usize).to_string(), distance: h.distance })
                .take(k)
                .collect();
            if found.len() >= k.min(live) || fetch >= seg.rows() || seen < fetch {
                return found;
            }
            fetch = (fetch * 4).min(seg.rows());
        }
    }

    fn search_tail(&self, q: &[f32], k: usize) -> Vec<Found> {
        #[derive(PartialEq)]
        struct C(f32, usize);
        impl Eq for C {}
        impl PartialOrd for C {
            fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(o))
            }
        }
        impl Ord for C {
            fn cmp(&self, o: &Self) -> std::cmp::Ordering {
                self.0.total_cmp(&o.0).then(self.1.cmp(&o.1))
            }
        }
        let kern = kim_index::kernels::active();
        let q_inv = self.inv_norm(q);
        let mut heap = BinaryHeap::with_capacity(k.min(self.tail.len()) + 1);
        for (i, t) in self.tail.iter().enumerate() {
            let d = match self.spec.metric {
                Metric::Cosine => 1.0 - (kern.dot_f32)(q, &t.vector) * q_inv * t.inv_norm,
                Metric::Dot => 1.0 - (kern.dot_f32)(q, &t.vector),
                Metric::L2 => (kern.l2_f32)(q, &t.vector),
            };
            if (heap.len() < k || d < heap.peek().map_or(f32::INFINITY, |c: &C| c.0)) && self.is_live(&t.id, t.lsn) {
                heap.push(C(d, i));
                if heap.len() > k {
                    heap.pop();
                }
            }
        }
        heap.into_sorted_vec().into_iter().map(|C(d, i)| Found { id: self.tail[i].id.clone(), distance: d }).collect()
    }

    /// Distances as Vald reports them: cosine 1 − cos, dot 1 − a·b, l2 the euclidean
    /// distance (not squared). Rounding below zero is clamped for cosine and l2.
    fn vald_distance(&self, d: f32) -> f32 {
        match self.spec.metric {
            Metric::Cosine => d.max(0.0),
            Metric::Dot => d,
            Metric::L2 => d.max(0.0).sqrt(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(s: &mut Store, id: &str, v: &[f32]) {
        let lsn = s.lsn + 1;
        s.apply(Record::Put { lsn, id: id.into(), timestamp: 0, vector: v.to_vec() });
    }

    fn rebuild(s: &mut Store) {
        let seg = Segment::new(s.spec, &s.live(), Graph::default(), s.lsn);
        let store = &seg.index.vectors;
        let graph = kim_index::build::build_graph(
            store,
            kim_index::HnswParams { m: 8, ef_construction: 32, ef_search: 32 },
            1,
            &|_, _, _| {},
        )
        .unwrap();
        let seg = Segment { index: FlatIndex { graph, ..seg.index }, ..seg };
        s.install(seg);
    }

    #[test]
    fn writes_are_searchable_before_and_after_rebuild_and_tombstones_hide_rows() {
        let mut s = Store::new(2, Metric::L2, 16);
        for i in 0..50 {
            put(&mut s, &format!("p{i}"), &[i as f32, 0.0]);
        }
        assert_eq!(s.search(&[10.2, 0.0], 1, 0, false)[0].id, "p10");
        rebuild(&mut s);
        assert_eq!(s.uncommitted(), 0);
        put(&mut s, "p10", &[100.0, 0.0]); // moves p10 away
        s.apply(Record::Remove { lsn: s.lsn + 1, id: "p11".into() });
        let got = s.search(&[10.6, 0.0], 3, 0, false);
        let ids: Vec<&str> = got.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["p12", "p9", "p13"]);
        assert!((got[0].distance - 1.4).abs() < 1e-5, "l2 distances are not squared: {got:?}");
        assert_eq!(s.search(&[100.0, 0.0], 1, 0, true)[0], Found { id: "p10".into(), distance: 0.0 });
        assert_eq!(s.uncommitted(), 1);
        assert!(matches!(s.objects["p10"].vector, Held::Own(_)) && matches!(s.objects["p12"].vector, Held::Row(_)));
        rebuild(&mut s);
        assert_eq!(s.segment.rows(), 49);
        assert!(s.objects.values().all(|o| matches!(o.vector, Held::Row(_))), "one copy per vector, in the segment");
        assert_eq!(s.vector_of("p10"), Some(&[100.0, 0.0][..]));
        assert_eq!(s.vector_of("p12"), Some(&[12.0, 0.0][..]));
        s.apply(Record::Clear { lsn: s.lsn + 1 });
        assert!(s.search(&[1.0, 0.0], 5, 0, false).is_empty());
    }

    #[test]
    fn cosine_distance_of_an_identical_vector_is_zero() {
        let mut s = Store::new(3, Metric::Cosine, 16);
        put(&mut s, "a", &[0.3, 0.1, -0.2]);
        put(&mut s, "b", &[-0.3, 0.1, 0.2]);
        let got = s.search(&[0.6, 0.2, -0.4], 2, 0, false);
        assert_eq!(got[0].id, "a");
        assert!(got[0].distance < 1e-6);
    }
}
