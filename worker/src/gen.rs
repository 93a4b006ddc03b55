//! `kim-worker gen`: seeded face-like data sets with probes and exact ground truth.
//!
//! Writes `base.npy` + `ids.txt` (the enrolled descriptors), `mated.npy` (new samples of
//! enrolled identities) with `mated_identity.txt`, `nonmated.npy`, `*_truth.txt` (exact top-k
//! ids per probe, space separated) and `meta.json`.

use std::fs;
use std::time::Instant;

use anyhow::Context;
use kim_index::flat::exact_search;
use kim_index::synth::{generate, quant_scale, SynthParams};
use kim_index::{DescriptorSpec, Encoding, Matrix, VectorStore};
use rayon::prelude::*;

use crate::cli::GenArgs;

pub fn run(a: &GenArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let p = SynthParams {
        identities: a.identities,
        samples: a.samples,
        dimensions: a.dimensions,
        intrinsic: a.intrinsic,
        mated_probes: a.mated_probes,
        nonmated_probes: a.nonmated_probes,
        encoding: a.encoding,
        seed: a.seed,
    };
    anyhow::ensure!(
        a.identities > 0 && a.samples > 0 && a.dimensions > 0,
        "identities, samples and dimensions must be positive"
    );
    fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let d = generate(p);
    tracing::info!(vectors = d.base.rows, dims = a.dimensions, encoding = %a.encoding, secs = start.elapsed().as_secs_f64(), "generated");
    d.base.write_npy(&a.out.join("base.npy"))?;
    d.mated.write_npy(&a.out.join("mated.npy"))?;
    d.nonmated.write_npy(&a.out.join("nonmated.npy"))?;
    fs::write(a.out.join("ids.txt"), d.ids.join("\n") + "\n")?;
    let identity = |i: usize| format!("face-{i:07}");
    fs::write(
        a.out.join("mated_identity.txt"),
        d.mated_identity.iter().map(|&i| identity(i) + "\n").collect::<String>(),
    )?;
    let scale = if matches!(a.encoding, Encoding::U8 | Encoding::I8) { 1.0 / quant_scale(a.dimensions) } else { 1.0 };
    if a.truth_k > 0 {
        let mut spec = DescriptorSpec::new(0, a.dimensions, a.encoding, a.metric);
        spec.scale = scale;
        let store = VectorStore::from_matrix(&spec, &d.base)?;
        for (name, probes) in [("mated", &d.mated), ("nonmated", &d.nonmated)] {
            let lines = truth(&store, probes, a.truth_k, &d.ids);
            fs::write(a.out.join(format!("{name}_truth.txt")), lines)?;
        }
    }
    let meta = serde_json::json!({
        "identities": a.identities, "samples": a.samples, "vectors": d.base.rows, "dimensions": a.dimensions,
        "encoding": a.encoding, "intrinsic": a.intrinsic, "seed": a.seed, "truthK": a.truth_k, "truthMetric": a.metric,
        "scale": scale, "zeroPoint": a.encoding.default_zero_point(),
    });
    fs::write(a.out.join("meta.json"), serde_json::to_string_pretty(&meta)?)?;
    let summary = serde_json::json!({"out": a.out, "vectors": d.base.rows, "seconds": start.elapsed().as_secs_f64()});
    println!("{summary}");
    Ok(())
}

fn truth(store: &VectorStore, probes: &Matrix, k: usize, ids: &[String]) -> String {
    (0..probes.rows)
        .into_par_iter()
        .map(|i| {
            let q = store.spec.decode(probes.row(i), store.spec.version).expect("probe matches spec");
            let row: Vec<&str> = exact_search(store, &q, k).iter().map(|h| ids[h.row as usize].as_str()).collect();
            row.join(" ") + "\n"
        })
        .collect()
}
