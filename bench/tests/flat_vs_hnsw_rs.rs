//! Recall guards against hnsw_rs (the library kim built with before it had its own builder),
//! measured against exact ground truth on the same seeded data. Not timing tests.
//!
//! 1. Serving path: on the SAME graph (hnsw_rs's, converted to kim's flat layout),
//!    `FlatIndex::search` finds the true neighbours at least as well as hnsw_rs's own search.
//! 2. Builder: kim's graph (`build_graph`, 1 and 2 threads), searched by kim, has recall at
//!    least that of hnsw_rs's graph searched by hnsw_rs, at the same M, efConstruction and ef.

use anndists::dist::distances::DistCosine;
use hnsw_rs::hnsw::Hnsw;
use kim_index::build::build_graph;
use kim_index::flat::{exact_search, recall, Csr, Ids};
use kim_index::synth::{generate, SynthData, SynthParams};
use kim_index::{DescriptorSpec, Encoding, FlatIndex, Graph, Hit, HnswParams, Matrix, Metric, Query, VectorStore};

const M: usize = 12;
const EF_CONSTRUCTION: usize = 64;
const K: usize = 10;
const EFS: [usize; 3] = [10, 24, 64];

fn rows(m: &Matrix) -> Vec<Vec<f32>> {
    m.to_f32().chunks_exact(m.dims).map(<[f32]>::to_vec).collect()
}

fn data() -> SynthData {
    generate(SynthParams {
        identities: 1500,
        samples: 4,
        dimensions: 64,
        intrinsic: 24,
        mated_probes: 150,
        nonmated_probes: 150,
        encoding: Encoding::F32,
        seed: 11,
    })
}

/// hnsw_rs over the rows, inserted one by one (deterministic).
fn hnsw_rs_index(base: &[Vec<f32>]) -> Hnsw<'_, f32, DistCosine> {
    let hnsw = Hnsw::new(M, base.len(), 16, EF_CONSTRUCTION, DistCosine {});
    for (i, r) in base.iter().enumerate() {
        hnsw.insert_slice((r, i));
    }
    hnsw
}

/// hnsw_rs's neighbour lists as kim's flat graph (origin ids are row numbers).
fn flatten(hnsw: &Hnsw<f32, DistCosine>, n: usize) -> Graph {
    let pi = hnsw.get_point_indexation();
    let max_level = pi.get_max_level_observed();
    let mut levels = vec![0u8; n];
    let mut neighbours: Vec<Vec<Vec<u32>>> = vec![Vec::new(); n];
    let mut entry = None;
    for layer in (0..=max_level as usize).rev() {
        for p in pi.get_layer_iterator(layer) {
            let row = p.get_origin_id();
            levels[row] = p.get_point_id().0;
            entry.get_or_insert(row as u32);
            neighbours[row] = p
                .get_neighborhood_id()
                .into_iter()
                .take(layer + 1)
                .map(|l| l.iter().map(|nb| nb.get_origin_id() as u32).collect())
                .collect();
        }
    }
    let layer0 = Csr::from_rows(neighbours.iter().map(|l| l.first().cloned().unwrap_or_default()));
    let upper_nodes: Vec<u32> = (0..n as u32).filter(|&i| levels[i as usize] > 0).collect();
    let upper = (1..=max_level as usize)
        .map(|l| {
            Csr::from_rows(upper_nodes.iter().map(|&u| neighbours[u as usize].get(l).cloned().unwrap_or_default()))
        })
        .collect();
    Graph { entry: entry.unwrap_or(0), max_level, levels, layer0, upper_nodes, upper }
}

fn flat_index(data: &SynthData, graph: Graph) -> FlatIndex {
    graph.validate().expect("graph is well formed");
    let spec = DescriptorSpec::new(1, 64, Encoding::F32, Metric::Cosine);
    let store = VectorStore::from_matrix(&spec, &data.base).unwrap();
    let ids = Ids::from_vec(&(0..store.len()).map(|i| i.to_string()).collect::<Vec<_>>());
    FlatIndex { vectors: store, graph, ids, ef_search: 32 }
}

fn probes(data: &SynthData) -> Vec<Vec<f32>> {
    let mut p = rows(&data.mated);
    p.extend(rows(&data.nonmated));
    p
}

/// Mean recall@K of kim's search at `ef` against exact truth.
fn kim_recall(index: &FlatIndex, probes: &[Vec<f32>], truth: &[Vec<Hit>], ef: usize) -> f64 {
    probes.iter().zip(truth).map(|(p, t)| recall(&index.search(&Query::F32(p.clone()), K, ef), t)).sum::<f64>()
        / probes.len() as f64
}

fn hnsw_rs_recall(hnsw: &Hnsw<f32, DistCosine>, probes: &[Vec<f32>], truth: &[Vec<Hit>], ef: usize) -> f64 {
    let hits = |p: &Vec<f32>| -> Vec<Hit> {
        hnsw.search(p, K, ef).iter().map(|nb| Hit { row: nb.d_id as u32, distance: nb.distance }).collect()
    };
    probes.iter().zip(truth).map(|(p, t)| recall(&hits(p), t)).sum::<f64>() / probes.len() as f64
}

#[test]
fn flat_search_recall_is_not_below_hnsw_rs_on_the_same_graph() {
    let data = data();
    let base = rows(&data.base);
    let hnsw = hnsw_rs_index(&base);
    let index = flat_index(&data, flatten(&hnsw, base.len()));
    let probes = probes(&data);
    let truth: Vec<_> = probes.iter().map(|p| exact_search(&index.vectors, &Query::F32(p.clone()), K)).collect();
    for ef in EFS {
        let (flat, theirs) = (kim_recall(&index, &probes, &truth, ef), hnsw_rs_recall(&hnsw, &probes, &truth, ef));
        eprintln!("same graph, ef {ef}: recall@{K} flat {flat:.4}, hnsw_rs {theirs:.4}");
        assert!(flat >= theirs - 0.01, "ef {ef}: flat recall {flat:.4} < hnsw_rs recall {theirs:.4} − 0.01");
        assert!(flat > 0.5, "ef {ef}: flat recall {flat:.4} is implausibly low");
    }
}

#[test]
fn kim_graph_recall_is_not_below_hnsw_rs_graph() {
    let data = data();
    let base = rows(&data.base);
    let hnsw = hnsw_rs_index(&base);
    let spec = DescriptorSpec::new(1, 64, Encoding::F32, Metric::Cosine);
    let store = VectorStore::from_matrix(&spec, &data.base).unwrap();
    let params = HnswParams { m: M, ef_construction: EF_CONSTRUCTION, ef_search: 32 };
    let probes = probes(&data);
    let truth: Vec<_> = probes.iter().map(|p| exact_search(&store, &Query::F32(p.clone()), K)).collect();
    for threads in [1, 2] {
        let graph = build_graph(&store, params, threads, &|_, _, _| {}).unwrap();
        let degree = graph.layer0.targets.len() as f64 / base.len() as f64;
        assert!(
            graph.layer0.offsets.windows(2).all(|w| (w[1] - w[0]) as usize <= 2 * M),
            "layer 0 holds at most 2·M links"
        );
        let index = flat_index(&data, graph);
        for ef in EFS {
            let (ours, theirs) = (kim_recall(&index, &probes, &truth, ef), hnsw_rs_recall(&hnsw, &probes, &truth, ef));
            eprintln!("{threads} thread(s), ef {ef}: recall@{K} kim graph {ours:.4} (mean layer-0 degree {degree:.1}), hnsw_rs graph {theirs:.4}");
            assert!(
                ours >= theirs - 0.005,
                "{threads} thread(s), ef {ef}: kim graph recall {ours:.4} < hnsw_rs {theirs:.4}"
            );
        }
        assert!(kim_recall(&index, &probes, &truth, 64) >= 0.97, "ef 64 recall too low");
    }
}
