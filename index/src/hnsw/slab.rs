//! The build's layer-0 link lists in one flat slab: a row's length and link ids sit side by
//! side at a fixed stride, so a beam step reads a row's links with one dependent load and no
//! lock, where a list per row behind its own mutex costs the lock and a pointer chase.
//!
//! Readers never wait: a reader racing a writer may copy a mix of the old and the new list,
//! but every slot always holds a valid row, so the beam only sees a slightly stale graph (as
//! any concurrent HNSW build does). Writers hold the row's lock.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::flat::Cand;
use crate::kernels::prefetch;

pub(super) struct LinkSlab {
    /// Per row: the list's length, then `room` slots of link ids.
    ids: Vec<AtomicU32>,
    /// Per row: each link's distance to the row (f32 bits), `room` slots.
    dists: Vec<AtomicU32>,
    locks: Vec<Mutex<()>>,
    room: usize,
}

impl LinkSlab {
    /// `n` empty lists of up to `room` links each.
    pub(super) fn new(n: usize, room: usize) -> LinkSlab {
        let zeros = |len: usize| (0..len).map(|_| AtomicU32::new(0)).collect();
        LinkSlab {
            ids: zeros(n * (room + 1)),
            dists: zeros(n * room),
            locks: (0..n).map(|_| Mutex::new(())).collect(),
            room,
        }
    }

    pub(super) fn rows(&self) -> usize {
        self.locks.len()
    }

    /// Copies `row`'s link ids into `out`.
    #[inline]
    pub(super) fn read(&self, row: u32, out: &mut Vec<u32>) {
        let at = row as usize * (self.room + 1);
        // Acquire: the slots a writer filled before publishing this length are visible.
        let len = (self.ids[at].load(Ordering::Acquire) as usize).min(self.room);
        out.clear();
        out.extend(self.ids[at + 1..at + 1 + len].iter().map(|s| s.load(Ordering::Relaxed)));
    }

    /// Cache hint for `row`'s length and first links.
    #[inline]
    pub(super) fn prefetch(&self, row: u32) {
        let at = self.ids[row as usize * (self.room + 1)..].as_ptr() as *const u8;
        prefetch(at, 4 * (self.room + 1).min(32));
    }

    /// Locks `row`'s list for writing.
    pub(super) fn lock(&self, row: u32) -> Links<'_> {
        Links { slab: self, row: row as usize, _guard: self.locks[row as usize].lock().expect("link lock") }
    }
}

/// One row's list, locked.
pub(super) struct Links<'a> {
    slab: &'a LinkSlab,
    row: usize,
    _guard: MutexGuard<'a, ()>,
}

impl Links<'_> {
    fn id_slots(&self) -> &[AtomicU32] {
        let at = self.row * (self.slab.room + 1);
        &self.slab.ids[at + 1..at + 1 + self.slab.room]
    }
    fn dist_slots(&self) -> &[AtomicU32] {
        &self.slab.dists[self.row * self.slab.room..(self.row + 1) * self.slab.room]
    }

    pub(super) fn len(&self) -> usize {
        self.slab.ids[self.row * (self.slab.room + 1)].load(Ordering::Relaxed) as usize
    }

    pub(super) fn contains(&self, id: u32) -> bool {
        self.id_slots()[..self.len()].iter().any(|s| s.load(Ordering::Relaxed) == id)
    }

    /// The links with their distances, in list order.
    pub(super) fn get(&self) -> Vec<Cand> {
        let (ids, dists) = (self.id_slots(), self.dist_slots());
        (0..self.len())
            .map(|i| Cand(f32::from_bits(dists[i].load(Ordering::Relaxed)), ids[i].load(Ordering::Relaxed)))
            .collect()
    }

    /// Appends a link; the caller keeps the list within its room.
    pub(super) fn push(&mut self, c: Cand) {
        let len = self.len();
        self.fits(len + 1);
        self.id_slots()[len].store(c.1, Ordering::Relaxed);
        self.dist_slots()[len].store(c.0.to_bits(), Ordering::Relaxed);
        self.publish(len + 1);
    }

    /// Replaces the list (at most `room` links).
    pub(super) fn set(&mut self, links: &[Cand]) {
        self.fits(links.len());
        let (ids, dists) = (self.id_slots(), self.dist_slots());
        for (i, c) in links.iter().enumerate() {
            ids[i].store(c.1, Ordering::Relaxed);
            dists[i].store(c.0.to_bits(), Ordering::Relaxed);
        }
        self.publish(links.len());
    }

    fn fits(&self, len: usize) {
        assert!(len <= self.slab.room, "a link list outgrew its room ({len} > {})", self.slab.room);
    }

    fn publish(&self, len: usize) {
        self.slab.ids[self.row * (self.slab.room + 1)].store(len as u32, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_keep_their_links_and_distances_apart_from_their_neighbours() {
        let slab = LinkSlab::new(3, 4);
        let mut a = slab.lock(1);
        a.push(Cand(0.5, 7));
        a.push(Cand(0.25, 9));
        assert!(a.contains(9) && !a.contains(0));
        assert_eq!(a.get(), vec![Cand(0.5, 7), Cand(0.25, 9)]);
        a.set(&[Cand(0.125, 2)]);
        drop(a);
        let mut out = vec![42];
        slab.read(1, &mut out);
        assert_eq!(out, vec![2]);
        slab.read(0, &mut out);
        assert!(out.is_empty());
        slab.read(2, &mut out);
        assert!(out.is_empty());
        assert_eq!(slab.lock(1).get(), vec![Cand(0.125, 2)]);
    }

    /// A reader racing a writer copies any mix of the lists written, never a slot no list held.
    #[test]
    fn readers_racing_a_writer_see_only_links_some_list_held() {
        let slab = LinkSlab::new(2, 6);
        let lists: [Vec<Cand>; 3] = [
            (1..=6).map(|i| Cand(i as f32, i)).collect(),
            (7..=9).map(|i| Cand(i as f32, i)).collect(),
            vec![Cand(0.5, 10)],
        ];
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..20_000 {
                    slab.lock(1).set(&lists[i % 3]);
                }
            });
            let mut out = Vec::new();
            for _ in 0..20_000 {
                slab.read(1, &mut out);
                assert!(out.len() <= 6 && out.iter().all(|id| (1..=10).contains(id)), "{out:?}");
            }
        });
        assert_eq!(slab.lock(1).get(), lists[19_999 % 3]);
    }

    #[test]
    #[should_panic(expected = "outgrew its room")]
    fn a_list_past_its_room_is_refused() {
        let slab = LinkSlab::new(1, 1);
        let mut a = slab.lock(0);
        a.push(Cand(0.0, 0));
        a.push(Cand(0.0, 0));
    }
}
