//! The rollback Job: `kim-worker snapshot rollback` of one label to the snapshot the
//! `kim.dev/rollback-to` annotation names, on the Indexer's storage.

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;

use super::jobs::{worker_job, Run};
use super::{labels, storage_args, storage_parts, Defaults};
use crate::crd::{Indexer, MatchingIndex};

/// One Job per MatchingIndex and target (the same target twice is the same Job).
pub fn rollback_job_name(mi: &MatchingIndex, to: &str) -> String {
    let base: String = mi.name_any().chars().take(42).collect();
    let digest = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(to.as_bytes()));
    format!("{}-rollback-{}", base.trim_end_matches('-'), &digest[..10])
}

/// `kim-worker snapshot rollback` arguments (checked against the worker's parser in tests).
pub fn rollback_args(mi: &MatchingIndex, ix: &Indexer, to: &str) -> Vec<String> {
    let mut a: Vec<String> = [
        "snapshot",
        "rollback",
        "--namespace",
        &mi.namespace().unwrap_or_default(),
        "--label",
        &mi.label(),
        "--to",
        to,
        "--termination-message-path",
        "/dev/termination-log",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    a.extend(storage_args(ix));
    a
}

pub fn rollback_job(mi: &MatchingIndex, ix: &Indexer, to: &str, d: &Defaults) -> Job {
    let run = Run {
        name: rollback_job_name(mi, to),
        container: "rollback",
        labels: labels(mi, "rollback"),
        args: rollback_args(mi, ix, to),
        storage: storage_parts(ix, false),
        resources: None,
        owned: true,
        backoff_limit: 1,
        deadline_secs: 1800,
        ttl_secs: 3600,
    };
    worker_job(mi, ix, d, run)
}
