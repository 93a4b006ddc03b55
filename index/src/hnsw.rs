//! kim's own HNSW builder (Malkov & Yashunin): parallel insertion over rayon threads (layer-0
//! links in a slab read without locks, see `slab`; one writer lock per node), distances from
//! kim's SIMD kernels (see [`Space`]: the beam may walk cheaper codes than the rows links are
//! chosen on), the neighbour selection heuristic on every layer, and output straight into the
//! flat [`Graph`].
//!
//! Same parameter meaning as other HNSW libraries: up to `m` links per node on upper layers,
//! up to `2·m` on layer 0, `ef_construction` candidates per insertion, level distribution
//! with mean 1/ln(m).

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Mutex, RwLock};
use std::time::Instant;

use rayon::prelude::*;

use crate::build::Progress;
use crate::flat::{Cand, Csr, Graph, Visited};
use crate::kernels::score_prefetched;
use crate::rng::SeededRng;
use crate::HnswParams;

mod slab;
use slab::LinkSlab;

/// Levels are capped here (a level above 15 needs ~m¹⁵ rows).
const MAX_LEVEL: u8 = 15;

/// Rows this close (in ordering distance) count as duplicates when links are chosen: exact
/// copies land here after rounding (cosine of a row with itself is 1 within a few ulp).
pub(crate) const DUPLICATE: f32 = 1e-6;

/// Candidates whose rows [`Builder::select`] keeps loading ahead of the one it compares.
const SELECT_AHEAD: usize = 2;

enum Verdict {
    Diverse,
    Duplicate,
    Pruned,
}

/// The distances a build uses: [`Space::walk`] from the row being inserted, which the beam
/// searches by, and [`Space::dist`] between two rows, which links are chosen by.
pub(crate) trait Space: Sync {
    /// The row being inserted, prepared once for the walk.
    type Probe;
    fn probe(&self, q: u32) -> Self::Probe;
    /// Distance from the probe to row `b` (may approximate [`Space::dist`]).
    fn walk(&self, p: &Self::Probe, b: u32) -> f32;
    /// Replaces the walk's distances of `found` (candidates for row `q`) by [`Space::dist`]'s,
    /// closest first. Nothing to do where the walk is exact.
    fn rescore(&self, _q: u32, _found: &mut [Cand]) {}
    fn dist(&self, a: u32, b: u32) -> f32;
    /// Cache hint for the row [`Space::walk`] reads for `b`.
    fn prefetch(&self, b: u32);
    /// Bytes of a row [`Space::prefetch`] loads.
    fn prefetch_bytes(&self) -> usize;
    /// Cache hint for everything [`Space::dist`] reads of row `b`, on either side.
    fn prefetch_exact(&self, _b: u32) {}
    /// Whether rows at distance `d` are copies of each other. Only where a row's distance to
    /// itself is 0 (cosine, l2); never under the dot metric.
    fn duplicates(&self, d: f32) -> bool {
        d <= DUPLICATE
    }
}

struct Builder<'s, S: Space> {
    space: &'s S,
    levels: Vec<u8>,
    /// Layer-0 links of every row, each with its distance to the row (so a full list can be
    /// updated without recomputing distances).
    layer0: LinkSlab,
    /// Links on layers 1..=level of rows whose level is ≥ 1 (empty for the others).
    upper: Vec<Vec<Mutex<Vec<Cand>>>>,
    /// (entry row, its level).
    entry: RwLock<(u32, u8)>,
    m: usize,
    ef: usize,
}

/// Per-thread search state, reused across insertions.
struct Scratch {
    visited: Visited,
    links: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch { visited: Visited::new(), links: Vec::new() }) };
}

/// Draws every row's level up front (deterministic for a seed): ⌊−ln(U)/ln(m)⌋.
fn draw_levels(n: usize, m: usize, seed: u64) -> Vec<u8> {
    let mut rng = SeededRng::new(seed);
    let ml = 1.0 / (m as f64).ln();
    (0..n).map(|_| ((-(1.0 - rng.uniform()).ln() * ml) as u64).min(MAX_LEVEL as u64) as u8).collect()
}

/// Builds the graph over rows `0..n` with the current rayon pool's threads. With one thread
/// the result is deterministic.
pub(crate) fn build<S: Space>(space: &S, n: usize, params: HnswParams, progress: Progress<'_>) -> Graph {
    if n == 0 {
        return Graph::default();
    }
    let levels = draw_levels(n, params.m, 0x6b69_6d00 ^ n as u64);
    let upper = levels.iter().map(|&l| (0..l).map(|_| Mutex::new(Vec::new())).collect()).collect();
    let room = 2 * params.m + slack(params.m, 0) + 1;
    let b = Builder {
        space,
        layer0: LinkSlab::new(n, room),
        upper,
        entry: RwLock::new((0, levels[0])),
        levels,
        m: params.m,
        ef: params.ef_construction,
    };
    let start = Instant::now();
    let done = AtomicUsize::new(1);
    // Chunks small enough that progress is reported every few seconds on large builds.
    let chunk = (n / 200).clamp(1_000, 20_000);
    for lo in (1..n).step_by(chunk) {
        let hi = (lo + chunk).min(n);
        (lo as u32..hi as u32).into_par_iter().for_each(|q| b.insert(q));
        done.fetch_add(hi - lo, AtomicOrdering::Relaxed);
        progress(done.load(AtomicOrdering::Relaxed), n, start.elapsed());
    }
    b.trim();
    b.into_graph()
}

/// How far past its cap a list may grow before the heuristic re-chooses it. Layer-0 lists
/// grow by `m/2` (the distances to the row are stored, so a re-choice costs only the
/// heuristic's own comparisons, once per `m/2` additions; growing by `m` measured no faster);
/// a full upper list is re-chosen at once. [`Builder::trim`] brings every list back to its cap
/// at the end.
fn slack(m: usize, level: u8) -> usize {
    if level == 0 {
        m / 2
    } else {
        0
    }
}

impl<S: Space> Builder<'_, S> {
    /// Links of a row on an upper layer (`level` ≥ 1).
    fn upper_links(&self, node: u32, level: u8) -> &Mutex<Vec<Cand>> {
        &self.upper[node as usize][level as usize - 1]
    }

    fn cap(&self, level: u8) -> usize {
        if level == 0 {
            2 * self.m
        } else {
            self.m
        }
    }

    fn insert(&self, q: u32) {
        let lq = self.levels[q as usize];
        let (ep, top) = *self.entry.read().expect("entry lock");
        let p = self.space.probe(q);
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            let mut cur = Cand(self.space.walk(&p, ep), ep);
            for level in (lq.saturating_add(1)..=top).rev() {
                cur = self.greedy(s, &p, cur, level);
            }
            let mut eps = vec![cur];
            for level in (0..=lq.min(top)).rev() {
                let found = self.search_layer(s, &p, q, &eps, level);
                let mut exact = found.clone();
                self.space.rescore(q, &mut exact);
                let chosen = self.select(q, &exact, self.cap(level), level);
                // The row's own links first, added as any link is: a row that reached `q` on
                // an upper layer may already have linked to it, and that link is kept.
                for c in &chosen {
                    self.link_back(q, c.1, c.0, level);
                }
                for c in &chosen {
                    self.link_back(c.1, q, c.0, level);
                }
                eps = found;
            }
        });
        if lq > top {
            let mut e = self.entry.write().expect("entry lock");
            if lq > e.1 {
                *e = (q, lq);
            }
        }
    }

    /// Copies a node's links at `level` into `out` (an upper list's lock is held only for the
    /// copy).
    fn read_links(&self, node: u32, level: u8, out: &mut Vec<u32>) {
        if level == 0 {
            return self.layer0.read(node, out);
        }
        out.clear();
        out.extend(self.upper_links(node, level).lock().expect("link lock").iter().map(|c| c.1));
    }

    /// Moves to the closest neighbour until none is closer (upper layers, beam width 1).
    fn greedy(&self, s: &mut Scratch, p: &S::Probe, mut cur: Cand, level: u8) -> Cand {
        loop {
            self.read_links(cur.1, level, &mut s.links);
            let before = cur.1;
            for &nb in &s.links {
                let d = self.space.walk(p, nb);
                if d < cur.0 {
                    cur = Cand(d, nb);
                }
            }
            if cur.1 == before {
                return cur;
            }
        }
    }

    /// Beam search for row `q` (probe `p`) from `eps` on one layer: up to `ef` closest by the
    /// walk's distance, ascending.
    fn search_layer(&self, s: &mut Scratch, p: &S::Probe, q: u32, eps: &[Cand], level: u8) -> Vec<Cand> {
        s.visited.reset(self.levels.len());
        s.visited.insert(q);
        let mut frontier: BinaryHeap<Reverse<Cand>> = BinaryHeap::with_capacity(2 * self.ef);
        let mut found: BinaryHeap<Cand> = BinaryHeap::with_capacity(self.ef + 1);
        for &e in eps {
            if s.visited.insert(e.1) {
                frontier.push(Reverse(e));
                found.push(e);
            }
        }
        while found.len() > self.ef {
            found.pop();
        }
        while let Some(Reverse(c)) = frontier.pop() {
            if found.len() >= self.ef && c.0 > found.peek().map_or(f32::INFINITY, |w| w.0) {
                break;
            }
            // As in a search: the node now on top of the frontier is often the next one out.
            if let (0, Some(Reverse(next))) = (level, frontier.peek()) {
                self.layer0.prefetch(next.1);
            }
            self.read_links(c.1, level, &mut s.links);
            s.links.iter().for_each(|&nb| s.visited.prefetch(nb));
            s.links.retain(|&nb| s.visited.insert(nb));
            score_prefetched(
                &s.links,
                self.space.prefetch_bytes(),
                |nb| self.space.prefetch(nb),
                |nb| {
                    let d = self.space.walk(p, nb);
                    if found.len() < self.ef || d < found.peek().map_or(f32::INFINITY, |w| w.0) {
                        frontier.push(Reverse(Cand(d, nb)));
                        found.push(Cand(d, nb));
                        if found.len() > self.ef {
                            found.pop();
                        }
                    }
                },
            );
        }
        found.into_sorted_vec()
    }

    /// The HNSW heuristic: walking candidates from closest, keep one only if it is closer to
    /// the base than to every one kept so far (spreads links over directions), up to `max`.
    /// On layer 0 the rest of the list is then filled with the closest pruned candidates: the
    /// denser bottom layer gives more recall per beam width (as hnsw_rs's layer 0 does).
    ///
    /// Exact duplicates of a kept link are the exception: the heuristic alone cannot tell them
    /// apart (every test is a tie), so a group of identical vectors larger than the list would
    /// fill every member's list with each other and trap searches inside the group. At most
    /// `max / 4` duplicates are kept and none is used to fill up.
    fn select(&self, base: u32, sorted: &[Cand], max: usize, level: u8) -> Vec<Cand> {
        let mut kept: Vec<Cand> = Vec::with_capacity(max);
        let mut pruned: Vec<Cand> = Vec::new();
        let mut duplicates: Vec<Cand> = Vec::new();
        let budget = max / 4;
        // Layer 0 looks at the closest 2·max only: farther candidates would rarely be kept and
        // each costs a distance to every kept one.
        let scan = &sorted[..sorted.len().min(if level == 0 { 2 * max } else { sorted.len() })];
        // The rows of the candidates a link list is re-chosen from are seldom in cache; each
        // candidate is compared with every kept one, so loading the next one's rows while
        // this one is compared is enough to hide the wait.
        scan.iter().take(SELECT_AHEAD).for_each(|c| self.space.prefetch_exact(c.1));
        for (j, &c) in scan.iter().enumerate() {
            if kept.len() + duplicates.len().min(budget) >= max {
                break;
            }
            if let Some(next) = scan.get(j + SELECT_AHEAD) {
                self.space.prefetch_exact(next.1);
            }
            let mut verdict = Verdict::Diverse;
            for k in &kept {
                let d = self.space.dist(c.1, k.1);
                if self.space.duplicates(d) {
                    verdict = Verdict::Duplicate;
                    break;
                }
                if d < c.0 {
                    verdict = Verdict::Pruned;
                    break;
                }
            }
            match verdict {
                Verdict::Diverse => kept.push(c),
                Verdict::Duplicate => duplicates.push(c),
                Verdict::Pruned if level == 0 => pruned.push(c),
                Verdict::Pruned => {}
            }
        }
        // Duplicates nearest in row number: members of a group then link to each other in a
        // chain, so a search that reaches the group can walk all of it.
        duplicates.sort_unstable_by_key(|c| c.1.abs_diff(base));
        kept.extend(duplicates.into_iter().take(budget));
        let room = max - kept.len();
        kept.extend(pruned.into_iter().take(room));
        kept.sort_unstable();
        kept
    }

    /// Adds `q` (at distance `d`) to `e`'s links, re-choosing them once they pass their cap by
    /// more than [`slack`].
    fn link_back(&self, e: u32, q: u32, d: f32, level: u8) {
        let (cap, slack) = (self.cap(level), slack(self.m, level));
        if level == 0 {
            let mut links = self.layer0.lock(e);
            if links.contains(q) {
                return;
            }
            links.push(Cand(d, q));
            if links.len() > cap + slack {
                let chosen = self.prune(e, links.get(), 0);
                links.set(&chosen);
            }
            return;
        }
        let mut links = self.upper_links(e, level).lock().expect("link lock");
        if links.iter().any(|c| c.1 == q) {
            return;
        }
        links.push(Cand(d, q));
        if links.len() > cap + slack {
            *links = self.prune(e, std::mem::take(&mut *links), level);
        }
    }

    /// `base`'s links at `level` re-chosen down to the level's cap.
    fn prune(&self, base: u32, mut links: Vec<Cand>, level: u8) -> Vec<Cand> {
        links.sort_unstable();
        self.select(base, &links, self.cap(level), level)
    }

    /// Re-chooses the layer-0 lists still above their cap.
    fn trim(&self) {
        let cap = self.cap(0);
        (0..self.layer0.rows() as u32).into_par_iter().for_each(|e| {
            let mut links = self.layer0.lock(e);
            if links.len() > cap {
                let chosen = self.prune(e, links.get(), 0);
                links.set(&chosen);
            }
        });
    }

    fn into_graph(self) -> Graph {
        let (entry, max_level) = self.entry.into_inner().expect("entry lock");
        let ids =
            |l: Mutex<Vec<Cand>>| -> Vec<u32> { l.into_inner().expect("link lock").into_iter().map(|c| c.1).collect() };
        let mut row = Vec::new();
        let layer0 = Csr::from_rows((0..self.layer0.rows() as u32).map(|e| {
            self.layer0.read(e, &mut row);
            row.clone()
        }));
        let upper_nodes: Vec<u32> = (0..self.levels.len() as u32).filter(|&i| self.levels[i as usize] > 0).collect();
        let mut upper_links: Vec<Vec<Vec<u32>>> =
            self.upper.into_iter().map(|ls| ls.into_iter().map(ids).collect()).collect();
        let upper = (1..=max_level as usize)
            .map(|l| {
                Csr::from_rows(
                    upper_nodes
                        .iter()
                        .map(|&u| upper_links[u as usize].get_mut(l - 1).map(std::mem::take).unwrap_or_default()),
                )
            })
            .collect();
        Graph { entry, max_level, levels: self.levels, layer0, upper_nodes, upper }
    }
}

#[cfg(test)]
mod tests {
    use crate::build::build_graph;
    use crate::descriptor::{DescriptorSpec, Encoding, Metric};
    use crate::synth::{generate, SynthParams};
    use crate::{HnswParams, VectorStore};

    #[test]
    fn one_thread_builds_are_deterministic_and_respect_link_caps() {
        let data = generate(SynthParams {
            identities: 300,
            samples: 3,
            dimensions: 40,
            intrinsic: 12,
            mated_probes: 1,
            nonmated_probes: 1,
            encoding: Encoding::U8,
            seed: 3,
        });
        let spec = DescriptorSpec::new(1, 40, Encoding::U8, Metric::Cosine);
        let store = VectorStore::from_matrix(&spec, &data.base).unwrap();
        let params = HnswParams { m: 6, ef_construction: 40, ef_search: 20 };
        let a = build_graph(&store, params, 1, &|_, _, _| {}).unwrap();
        let b = build_graph(&store, params, 1, &|_, _, _| {}).unwrap();
        assert_eq!(a, b);
        a.validate().unwrap();
        assert!(a.max_level >= 1, "900 rows with m 6 reach level 1");
        assert!((0..a.len()).all(|i| a.layer0.row(i).len() <= 12 && !a.layer0.row(i).contains(&(i as u32))));
        assert!(a.upper.iter().all(|l| (0..l.rows()).all(|i| l.row(i).len() <= 6)));
        let parallel = build_graph(&store, params, 2, &|_, _, _| {}).unwrap();
        parallel.validate().unwrap();
        assert_eq!(parallel.levels, a.levels, "levels are drawn before insertion");
    }

    /// A group of identical rows larger than a link list (the same photo enrolled many times,
    /// a sentence repeated in a corpus) must not trap searches that pass by it.
    #[test]
    fn a_large_group_of_duplicates_does_not_trap_searches() {
        use crate::flat::{exact_search, FlatIndex, Ids};
        use crate::vectors::Storage;
        use crate::Query;
        let (d, mut rng) = (16, crate::rng::SeededRng::new(11));
        let mut gauss = move || (rng.uniform() - 0.5) as f32;
        let centre: Vec<f32> = (0..d).map(|_| gauss()).collect();
        // A point at distance `r` from the group, in a random direction.
        let mut around = move |r: f32| -> Vec<f32> {
            let dir: Vec<f32> = (0..d).map(|_| gauss()).collect();
            let len = dir.iter().map(|x| x * x).sum::<f32>().sqrt();
            centre.iter().zip(&dir).map(|(c, x)| c + r * x / len).collect()
        };
        let mut rows: Vec<f32> = Vec::new();
        for _ in 0..300 {
            rows.extend(around(0.0)); // 300 copies of one vector
        }
        for _ in 0..3000 {
            rows.extend(around(0.3)); // a shell around them: every query's true neighbours
        }
        let spec = DescriptorSpec::new(1, d, Encoding::F32, Metric::L2);
        let store = VectorStore::new(spec, Storage::F32(rows));
        let params = HnswParams { m: 8, ef_construction: 64, ef_search: 64 };
        let graph = build_graph(&store, params, 1, &|_, _, _| {}).unwrap();
        let n = store.len();
        let index = FlatIndex {
            vectors: store,
            graph,
            ids: Ids::from_vec(&(0..n).map(|i| i.to_string()).collect::<Vec<_>>()),
            ef_search: 64,
        };
        let mut total = 0.0;
        for _ in 0..100 {
            let q = Query::F32(around(0.3));
            // Ties make row identity ambiguous (which 10 of 300 copies?): a hit counts when it
            // is as close as the 10th true neighbour.
            let worst = exact_search(&index.vectors, &q, 10)[9].distance;
            total += index.search(&q, 10, 64).iter().filter(|h| h.distance <= worst).count() as f64 / 10.0;
        }
        assert!(total / 100.0 >= 0.95, "recall@10 near the group {}", total / 100.0);
    }
}
