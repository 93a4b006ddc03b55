//! Writes the CRDs generated from the Rust types: `crdgen > crds/kim.dev.yaml`, or
//! `crdgen DIR` to write one file per kind.

use kim_operator::crd::{Indexer, MatchingIndex};
use kube::CustomResourceExt;

fn main() -> anyhow::Result<()> {
    let docs = [("indexers.kim.dev.yaml", Indexer::crd()), ("matchingindexes.kim.dev.yaml", MatchingIndex::crd())];
    match std::env::args().nth(1) {
        Some(dir) => {
            for (name, crd) in docs {
                std::fs::write(std::path::Path::new(&dir).join(name), serde_yaml::to_string(&crd)?)?;
            }
        }
        None => {
            for (_, crd) in docs {
                print!("---\n{}", serde_yaml::to_string(&crd)?);
            }
        }
    }
    Ok(())
}
