//! Guards the recall of kim's flat serving path: on the SAME graph, `FlatIndex::search` must
//! find the true neighbours at least as well as hnsw_rs's own search (within 0.01).
//!
//! The test builds the hnsw_rs index itself (sequential inserts: deterministic) and converts
//! it with `kim_index::build::flatten`, the same conversion the indexer uses. Not a timing test.

use anndists::dist::distances::DistCosine;
use hnsw_rs::hnsw::Hnsw;
use kim_index::build::flatten;
use kim_index::flat::{exact_search, recall, Ids};
use kim_index::synth::{generate, SynthParams};
use kim_index::{DescriptorSpec, Encoding, FlatIndex, Matrix, Metric, Query, VectorStore};

fn rows(m: &Matrix) -> Vec<Vec<f32>> {
    let v = m.to_f32();
    v.chunks_exact(m.dims).map(<[f32]>::to_vec).collect()
}

#[test]
fn flat_search_recall_is_not_below_hnsw_rs_on_the_same_graph() {
    let (m, ef_construction, k) = (12, 64, 10);
    let data = generate(SynthParams {
        identities: 1500,
        samples: 4,
        dimensions: 64,
        intrinsic: 24,
        mated_probes: 150,
        nonmated_probes: 150,
        encoding: Encoding::F32,
        seed: 11,
    });
    let base = rows(&data.base);
    let n = base.len();
    let hnsw: Hnsw<f32, DistCosine> = Hnsw::new(m, n, 16, ef_construction, DistCosine {});
    for (i, r) in base.iter().enumerate() {
        hnsw.insert_slice((r, i));
    }
    let graph = flatten(&hnsw, n);
    graph.validate().expect("flattened graph is well formed");

    let spec = DescriptorSpec::new(1, 64, Encoding::F32, Metric::Cosine);
    let store = VectorStore::from_matrix(&spec, &data.base).unwrap();
    let ids = Ids::from_vec(&(0..n).map(|i| i.to_string()).collect::<Vec<_>>());
    let index = FlatIndex { vectors: store, graph, ids, ef_search: 32 };

    let mut probes = rows(&data.mated);
    probes.extend(rows(&data.nonmated));
    let truth: Vec<_> = probes.iter().map(|p| exact_search(&index.vectors, &Query::F32(p.clone()), k)).collect();
    for ef in [10, 24, 64] {
        let (mut flat, mut theirs) = (0.0, 0.0);
        for (p, t) in probes.iter().zip(&truth) {
            flat += recall(&index.search(&Query::F32(p.clone()), k, ef), t);
            let got: Vec<kim_index::Hit> = hnsw.search(p, k, ef).iter().map(|nb| kim_index::Hit { row: nb.d_id as u32, distance: nb.distance }).collect();
            theirs += recall(&got, t);
        }
        let (flat, theirs) = (flat / probes.len() as f64, theirs / probes.len() as f64);
        eprintln!("ef {ef}: recall@{k} flat {flat:.4}, hnsw_rs {theirs:.4}");
        assert!(flat >= theirs - 0.01, "ef {ef}: flat recall {flat:.4} < hnsw_rs recall {theirs:.4} − 0.01");
        assert!(flat > 0.5, "ef {ef}: flat recall {flat:.4} is implausibly low");
    }
}
