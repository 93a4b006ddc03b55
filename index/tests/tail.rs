//! Recall guard of the refresh tail: the graph search with tombstones filtered inside it,
//! merged with the exact scan of the tail, against exact search over the live rows.

use kim_index::build::build_graph;
use kim_index::delta::{Delta, DeltaManifest, FORMAT};
use kim_index::flat::{Hit, Ids};
use kim_index::synth::{generate, SynthParams};
use kim_index::tail::Tail;
use kim_index::{DescriptorSpec, Encoding, FlatIndex, HnswParams, Metric, Query, VectorStore};

fn delta(spec: DescriptorSpec, seq: u64, added: Vec<(String, Vec<u8>)>, removed: Vec<String>) -> Delta {
    let manifest = DeltaManifest {
        format: FORMAT,
        namespace: "default".into(),
        label: "faces".into(),
        snapshot: "s".into(),
        seq,
        descriptor: spec,
        added: added.len(),
        removed: removed.len(),
        source_digest: String::new(),
        created_at: String::new(),
        files: Default::default(),
    };
    let vectors = added.iter().flat_map(|(_, v)| v.iter().copied()).collect();
    Delta { manifest, added_ids: added.into_iter().map(|(i, _)| i).collect(), vectors, removed_ids: removed }
}

/// Exact k nearest live rows (snapshot rows and tail rows, tombstones left out).
fn exact_live(index: &FlatIndex, tail: &Tail, q: &Query, k: usize) -> Vec<Hit> {
    let (pb, pt) = (index.vectors.prepare(q), tail.store().prepare(q));
    let n = index.len() as u32;
    let mut all: Vec<Hit> = tail
        .live_rows(index)
        .into_iter()
        .map(|r| {
            let distance = if r < n {
                index.vectors.distance(&pb, r as usize)
            } else {
                tail.store().distance(&pt, (r - n) as usize)
            };
            Hit { row: r, distance }
        })
        .collect();
    all.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.row.cmp(&b.row)));
    all.truncate(k);
    all
}

#[test]
fn tail_and_tombstones_keep_recall_against_exact_search() {
    let data = generate(SynthParams { identities: 2_000, samples: 4, ..Default::default() });
    let spec = DescriptorSpec::new(59, 512, Encoding::U8, Metric::Cosine);
    let store = VectorStore::from_matrix(&spec, &data.base).unwrap();
    let graph = build_graph(&store, HnswParams::default(), 2, &|_, _, _| {}).unwrap();
    let index = FlatIndex { vectors: store, graph, ids: Ids::from_vec(&data.ids), ef_search: 96 };
    let n = index.len();
    let k = 10;
    let probes: Vec<Query> = (0..data.mated.rows).map(|i| spec.decode(data.mated.row(i), 59).unwrap()).collect();

    // Delta 1: remove every probe's exact nearest row and every 10th row (~12 %), so the
    // graph search must walk past many tombstones near the answers.
    let mut removed: Vec<usize> = (0..n).step_by(10).collect();
    removed.extend(probes.iter().map(|q| index.exact(q, 1)[0].row as usize));
    removed.sort_unstable();
    removed.dedup();
    let d1 = delta(spec, 1, Vec::new(), removed.iter().map(|&r| data.ids[r].clone()).collect());
    // Delta 2: a tail of about 5 %: the non-mated probes and copies of snapshot rows under new
    // ids. Delta 3 removes some of those tail rows again.
    let mut added: Vec<(String, Vec<u8>)> =
        (0..data.nonmated.rows).map(|i| (format!("new-{i}"), data.nonmated.row(i).to_vec())).collect();
    added.extend((1..n).step_by(37).map(|r| (format!("copy-{r}"), data.base.row(r).to_vec())));
    let d2 = delta(spec, 2, added, Vec::new());
    let d3 = delta(spec, 3, Vec::new(), (0..20).map(|i| format!("new-{i}")).collect());
    let t = Tail::new(spec).apply(&index, &d1).unwrap().apply(&index, &d2).unwrap().apply(&index, &d3).unwrap();
    eprintln!("tail {} rows, {} tombstones over {n}", t.rows(), t.tombstones());
    assert!(t.rows() >= n / 20 && t.tombstones() >= n / 10);

    let live: std::collections::HashSet<u32> = t.live_rows(&index).into_iter().collect();
    let dead: std::collections::HashSet<u32> = (0..(n + t.rows()) as u32).filter(|r| !live.contains(r)).collect();
    let mut found = 0usize;
    let queries: Vec<&Query> = probes.iter().collect();
    let nonmated: Vec<Query> =
        (0..data.nonmated.rows).map(|i| spec.decode(data.nonmated.row(i), 59).unwrap()).collect();
    for q in queries.into_iter().chain(nonmated.iter()) {
        let got = t.search(&index, q, k, 0);
        let want = exact_live(&index, &t, q, k);
        assert_eq!(got.len(), k, "limit results come back despite the tombstones");
        assert!(got.iter().all(|h| !dead.contains(&h.row)), "a removed row was returned");
        assert!(got.windows(2).all(|w| w[0].distance <= w[1].distance));
        found += want.iter().filter(|w| got.iter().any(|g| g.row == w.row)).count();
    }
    let recall = found as f64 / (k * (probes.len() + nonmated.len())) as f64;
    eprintln!("recall@{k} of tail + tombstone search against exact over live rows: {recall:.4}");
    assert!(recall >= 0.95, "recall {recall}");
    // Non-mated probes now in the tail (beyond the 20 removed again) find themselves first.
    for (i, q) in nonmated.iter().enumerate().skip(20) {
        let top = t.search(&index, q, 1, 0)[0];
        assert_eq!(t.id(&index, top.row), format!("new-{i}"));
    }
}
