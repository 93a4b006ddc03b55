//! Fixtures shared by the unit tests.

use serde_json::json;

use crate::build::Defaults;
use crate::crd::{Indexer, IndexerSpec, MatchingIndex, MatchingIndexSpec};

pub fn mi(name: &str) -> MatchingIndex {
    let spec: MatchingIndexSpec = serde_json::from_value(json!({
        "indexerRef": {"name": "pool"},
        "descriptor": {"version": 59, "dimensions": 512, "encoding": "u8", "metric": "cosine"},
        "source": {"path": "data/base.npy", "idsPath": "data/ids.txt"},
        "redis": {"url": "redis://redis:6379"},
    }))
    .unwrap();
    let mut m = MatchingIndex::new(name, spec);
    m.metadata.namespace = Some("team".into());
    m.metadata.uid = Some("uid-1".into());
    m
}

pub fn ix() -> Indexer {
    let spec: IndexerSpec =
        serde_json::from_value(json!({"storage": {"size": "5Gi"}, "maxConcurrentBuilds": 2})).unwrap();
    let mut i = Indexer::new("pool", spec);
    i.metadata.namespace = Some("team".into());
    i
}

pub fn d() -> Defaults {
    Defaults { worker_image: "kim-worker:test".into(), image_pull_policy: "Never".into() }
}
