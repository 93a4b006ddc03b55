//! Every argument list the operator generates parses with the worker's own command line, and
//! the checked-in CRDs are exactly what the Rust types generate.

use clap::Parser;
use kim_operator::build::{self, Defaults};
use kim_operator::crd::{Indexer, IndexerSpec, MatchingIndex, MatchingIndexSpec};
use kim_worker::cli::{Cli, Command};
use kube::CustomResourceExt;
use serde_json::json;

fn fixtures() -> (MatchingIndex, Indexer) {
    let spec: MatchingIndexSpec = serde_json::from_value(json!({
        "label": "watch-list.v2",
        "indexerRef": {"name": "pool"},
        "descriptor": {"version": 59, "dimensions": 512, "encoding": "u8", "metric": "cosine"},
        "source": {"path": "in/base.npy", "idsPath": "in/ids.txt", "claim": "uploads"},
        "hnsw": {"m": 24, "efConstruction": 300, "efSearch": 128},
        "matcher": {"replicas": 2, "threads": 4},
        "redis": {"url": "redis://redis:6379", "keyPrefix": "kim:"},
    }))
    .unwrap();
    let mut mi = MatchingIndex::new("faces", spec);
    mi.metadata.namespace = Some("team-a".into());
    let mut ix = Indexer::new("pool", serde_json::from_value::<IndexerSpec>(json!({"storage": {"size": "1Gi"}, "snapshotsToKeep": 5})).unwrap());
    ix.metadata.namespace = Some("team-a".into());
    (mi, ix)
}

fn parse(args: &[String]) -> Cli {
    let argv = std::iter::once("kim-worker".to_string()).chain(args.iter().cloned());
    Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("worker rejects {args:?}: {e}"))
}

#[test]
fn index_args_parse_with_the_worker() {
    let (mi, ix) = fixtures();
    let Command::Index(a) = parse(&build::index_args(&mi, &ix)).command else { panic!("not index") };
    assert_eq!(a.label, "watch-list.v2");
    assert_eq!(a.namespace, "team-a");
    assert_eq!(a.source.to_str(), Some("/source/in/base.npy"));
    assert_eq!(a.ids.unwrap().to_str(), Some("/source/in/ids.txt"));
    assert_eq!((a.m, a.ef_construction, a.ef_search, a.keep), (24, 300, 128, 5));
    assert_eq!(a.descriptor.spec(), kim_index::DescriptorSpec::new(59, 512, kim_index::Encoding::U8, kim_index::Metric::Cosine));
    assert_eq!(a.termination_message_path.unwrap().to_str(), Some("/dev/termination-log"));
}

#[test]
fn match_and_clean_args_parse_with_the_worker() {
    let (mi, ix) = fixtures();
    let dep = build::matcher_deployment(&mi, &ix, &Defaults { worker_image: "w".into(), image_pull_policy: "Never".into() });
    let args = dep.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap();
    // The Redis URL comes from the environment in the pod.
    std::env::set_var("KIM_REDIS_URL", "redis://redis:6379");
    let Command::Match(a) = parse(&args).command else { panic!("not match") };
    assert_eq!(a.labels, vec!["watch-list.v2".to_string()]);
    assert_eq!((a.prefix.as_str(), a.threads, a.http.port()), ("kim:", Some(4), 8080));
    let job = build::cleanup_job(&mi, &ix, &Defaults { worker_image: "w".into(), image_pull_policy: "Never".into() });
    let args = job.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap();
    let Command::Clean(c) = parse(&args).command else { panic!("not clean") };
    assert_eq!((c.label.as_str(), c.namespace.as_str()), ("watch-list.v2", "team-a"));
}

#[test]
fn checked_in_crds_match_the_types() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    for (file, crd) in [("indexers.kim.dev.yaml", Indexer::crd()), ("matchingindexes.kim.dev.yaml", MatchingIndex::crd())] {
        let want = serde_yaml::to_string(&crd).unwrap();
        let have = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(have == want, "crds/{file} is stale: run `cargo run --release --bin crdgen -- crds`");
    }
}
