//! End-to-end checks of the index library: build → snapshot → load → search.

use std::path::Path;

use kim_index::build::build_graph;
use kim_index::flat::{exact_search, recall, Ids};
use kim_index::snapshot::{self, Manifest};
use kim_index::synth::{generate, SynthParams};
use kim_index::{DescriptorSpec, Encoding, FlatIndex, HnswParams, Metric, Query, SnapshotError, VectorStore};

fn build(encoding: Encoding, metric: Metric, identities: usize) -> (FlatIndex, kim_index::synth::SynthData) {
    let data = generate(SynthParams { identities, samples: 4, encoding, ..Default::default() });
    let spec = DescriptorSpec::new(59, 512, encoding, metric);
    let store = VectorStore::from_matrix(&spec, &data.base).unwrap();
    let graph = build_graph(&store, HnswParams::default(), 2, &|_, _, _| {}).unwrap();
    let index =
        FlatIndex { vectors: store, graph, ids: Ids::from_vec(&data.ids), ef_search: HnswParams::default().ef_search };
    (index, data)
}

fn mean_recall(index: &FlatIndex, probes: &kim_index::Matrix, k: usize) -> f64 {
    let spec = index.vectors.spec;
    let total: f64 = (0..probes.rows)
        .map(|i| {
            let q = spec.decode(probes.row(i), spec.version).unwrap();
            recall(&index.search(&q, k, 0), &exact_search(&index.vectors, &q, k))
        })
        .sum();
    total / probes.rows as f64
}

#[test]
fn u8_cosine_recall_at_10_on_20k() {
    let (index, data) = build(Encoding::U8, Metric::Cosine, 5_000);
    assert_eq!(index.len(), 20_000);
    let mated = mean_recall(&index, &data.mated, 10);
    let nonmated = mean_recall(&index, &data.nonmated, 10);
    eprintln!("recall@10 mated {mated:.4} non-mated {nonmated:.4}");
    assert!(mated >= 0.95 && nonmated >= 0.95, "mated {mated} non-mated {nonmated}");
    // Mated probes find their own identity first.
    let spec = index.vectors.spec;
    let correct = (0..data.mated.rows)
        .filter(|&i| {
            let q = spec.decode(data.mated.row(i), 59).unwrap();
            let top = index.search(&q, 1, 0)[0].row as usize;
            top / 4 == data.mated_identity[i]
        })
        .count();
    assert!(correct as f64 >= 0.95 * data.mated.rows as f64, "{correct} of {}", data.mated.rows);
}

#[test]
fn f32_l2_and_i8_dot_recall() {
    for (e, m) in [(Encoding::F32, Metric::L2), (Encoding::I8, Metric::Dot), (Encoding::U8, Metric::L2)] {
        let (index, data) = build(e, m, 1_500);
        let r = mean_recall(&index, &data.mated, 10);
        assert!(r >= 0.95, "{e} {m}: recall {r}");
    }
}

fn manifest(index: &FlatIndex) -> Manifest {
    Manifest {
        format: 0,
        id: snapshot::new_snapshot_id(),
        namespace: "default".into(),
        label: "l".into(),
        descriptor: index.vectors.spec,
        hnsw: HnswParams::default(),
        vectors: 0,
        source_digest: "test".into(),
        created_at: "now".into(),
        build_seconds: 0.0,
        files: Default::default(),
    }
}

#[test]
fn snapshot_round_trip_and_corruption() {
    let (index, data) = build(Encoding::U8, Metric::Cosine, 300);
    let root = tempfile::tempdir().unwrap();
    let dir = snapshot::label_dir(root.path(), "default", "l");
    let m1 = snapshot::write(&dir, manifest(&index), &index).unwrap();
    snapshot::publish(&dir, &m1.id).unwrap();
    let (m, loaded) = snapshot::load_current(&dir).unwrap();
    assert_eq!(m, m1);
    assert_eq!(loaded.graph, index.graph);
    assert_eq!(loaded.ids, index.ids);
    let q = Query::Bytes(data.mated.row(0).to_vec());
    assert_eq!(loaded.search(&q, 5, 0), index.search(&q, 5, 0));

    // Flip one byte in each file in turn: every one is detected.
    for name in ["ids.txt", "vectors.bin", "graph.bin", "manifest.json"] {
        let m2 = snapshot::write(&dir, manifest(&index), &index).unwrap();
        let p = dir.join("snapshots").join(&m2.id).join(name);
        let mut b = std::fs::read(&p).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0x5a;
        std::fs::write(&p, b).unwrap();
        match snapshot::load(&dir, &m2.id) {
            Err(SnapshotError::Corrupt { reason, .. }) => eprintln!("{name}: {reason}"),
            other => panic!("{name}: corruption not detected: {:?}", other.map(|x| x.0)),
        }
    }
    // A missing or short file may still arrive (storage that shows changes late): retryable,
    // not corrupt; a longer one is corrupt. CURRENT still loads.
    let m3 = snapshot::write(&dir, manifest(&index), &index).unwrap();
    let g = dir.join("snapshots").join(&m3.id).join("graph.bin");
    let full = std::fs::read(&g).unwrap();
    std::fs::remove_file(&g).unwrap();
    let e = snapshot::load(&dir, &m3.id).map(|x| x.0).unwrap_err();
    assert!(matches!(e, SnapshotError::Unavailable { .. }) && e.is_retryable(), "{e}");
    std::fs::write(&g, &full[..full.len() / 2]).unwrap();
    let e = snapshot::load(&dir, &m3.id).map(|x| x.0).unwrap_err();
    assert!(matches!(e, SnapshotError::Unavailable { .. }), "{e}");
    let mut longer = full.clone();
    longer.push(0);
    std::fs::write(&g, &longer).unwrap();
    let e = snapshot::load(&dir, &m3.id).map(|x| x.0).unwrap_err();
    assert!(matches!(e, SnapshotError::Corrupt { .. }) && !e.is_retryable(), "{e}");
    std::fs::write(&g, &full).unwrap();
    assert_eq!(snapshot::verify_files(&dir.join("snapshots").join(&m3.id), &m3.id).unwrap().id, m3.id);
    assert!(matches!(snapshot::load(&dir, "nope"), Err(SnapshotError::Unavailable { .. })));
    assert!(matches!(snapshot::load(&dir, "../x"), Err(SnapshotError::Corrupt { .. })));
    assert!(snapshot::load_current(&dir).is_ok());

    // Garbage collection keeps the newest N and never the live one's files.
    let removed = snapshot::gc(&dir, 2).unwrap();
    assert_eq!(removed.len(), 4, "{removed:?}");
    let left: Vec<_> = std::fs::read_dir(dir.join("snapshots")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 2);
    assert!(snapshot::load_current(&dir).is_ok(), "live snapshot survived gc");
    assert!(Path::new(&dir.join("snapshots").join(&m1.id)).exists());

    // A pinned snapshot (a rollback's target) survives too, even past `keep`.
    let (m4, m5) = (
        snapshot::write(&dir, manifest(&index), &index).unwrap(),
        snapshot::write(&dir, manifest(&index), &index).unwrap(),
    );
    snapshot::pin(&dir, &m3.id).unwrap();
    assert_eq!(snapshot::pinned(&dir).unwrap().as_deref(), Some(m3.id.as_str()));
    let removed = snapshot::gc(&dir, 2).unwrap();
    assert_eq!(removed, vec![m4.id.clone(), m5.id.clone()]);
    assert_eq!(snapshot::list(&dir).unwrap(), vec![m1.id.clone(), m3.id.clone()]);
}

#[test]
fn empty_and_tiny_indices_do_not_panic() {
    let spec = DescriptorSpec::new(1, 8, Encoding::F32, Metric::Cosine);
    for n in [0usize, 1, 2] {
        let m = kim_index::Matrix::from_f32(n, 8, &vec![0.5; n * 8]);
        let store = VectorStore::from_matrix(&spec, &m).unwrap();
        let graph = build_graph(&store, HnswParams::default(), 1, &|_, _, _| {}).unwrap();
        let ids: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        let index = FlatIndex { vectors: store, graph, ids: Ids::from_vec(&ids), ef_search: 10 };
        let hits = index.search(&Query::F32(vec![0.0; 8]), 3, 0);
        assert_eq!(hits.len(), n.min(3));
    }
}

/// Cosine snapshots (f32 and u8) load with 4-bit codes of their rows: the graph is walked on
/// the codes and the best candidates are re-ranked on the rows. Recall must not drop against
/// the search of the same graph on the rows themselves, and every returned distance must be the
/// store's exact distance.
#[test]
fn cosine_snapshots_walk_4_bit_codes_and_rerank_exactly() {
    for encoding in [Encoding::F32, Encoding::U8] {
        let (index, data) = build(encoding, Metric::Cosine, 2_000);
        let root = tempfile::tempdir().unwrap();
        let dir = snapshot::label_dir(root.path(), "default", "l");
        let written = snapshot::write(&dir, manifest(&index), &index).unwrap();
        let (_, loaded) = snapshot::load(&dir, &written.id).unwrap();
        assert!(loaded.vectors.nibbles().is_some() && index.vectors.nibbles().is_none());
        assert_eq!(loaded.vectors.raw_bytes(), index.vectors.raw_bytes(), "the rows are kept exactly");
        let d = index.vectors.spec.dimensions;
        assert_eq!(loaded.bytes_per_vector(), index.bytes_per_vector() + (d / 2) as f64, "half a byte per value");
        let spec = index.vectors.spec;
        let (mut plain, mut coded, mut kept) = (0.0, 0.0, 0.0);
        for probes in [&data.mated, &data.nonmated] {
            for i in 0..probes.rows {
                let q = spec.decode(probes.row(i), spec.version).unwrap();
                let truth = exact_search(&index.vectors, &q, 10);
                let got = loaded.search(&q, 10, 0);
                plain += recall(&index.search(&q, 10, 0), &truth);
                coded += recall(&got, &truth);
                let prepared = index.vectors.prepare(&q);
                for h in &got {
                    let want = index.vectors.distance(&prepared, h.row as usize);
                    assert_eq!(
                        h.distance.to_bits(),
                        want.to_bits(),
                        "{encoding} row {}: the store's own distance",
                        h.row
                    );
                }
                assert!(got.windows(2).all(|w| w[0].distance <= w[1].distance), "closest first");
                // Rows left out (tombstones of a refresh tail) never come back from the walk on
                // codes either, and what comes back is the exact nearest among the kept rows.
                let even = loaded.search_where(&q, 10, 64, |r| r % 2 == 0);
                assert!(even.iter().all(|h| h.row % 2 == 0), "only kept rows");
                let even_truth = kim_index::flat::scan(&index.vectors, &q, 10, (0..index.len() as u32).step_by(2));
                kept += recall(&even, &even_truth);
            }
        }
        let n = (data.mated.rows + data.nonmated.rows) as f64;
        let (plain, coded, kept) = (plain / n, coded / n, kept / n);
        eprintln!("{encoding}: recall@10 on rows {plain:.4}, on codes {coded:.4}, on codes among kept rows {kept:.4}");
        assert!(kept >= 0.95, "{encoding}: recall@10 among kept rows {kept}");
        assert!(coded >= plain - 0.005, "{encoding}: codes {coded} vs rows {plain}");
        assert!(coded >= 0.95);
    }
}
