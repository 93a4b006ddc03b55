//! The rollback Job: `kim-worker snapshot rollback` of one label to the snapshot the
//! `kim.dev/rollback-to` annotation names, on the Indexer's storage.

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use super::pod::{self, env};
use super::{labels, storage_args, storage_parts, worker_image, Defaults, StorageParts};
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
    let lbl = labels(mi, "rollback");
    let StorageParts { volumes, mounts, env: storage_env } = storage_parts(ix, false);
    let container = Container {
        name: "rollback".into(),
        image: Some(worker_image(ix, d)),
        image_pull_policy: Some(d.image_pull_policy.clone()),
        args: Some(rollback_args(mi, ix, to)),
        env: Some([vec![env("KIM_LOG_FORMAT", "json")], storage_env].concat()),
        volume_mounts: Some(mounts),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    let mut pod = pod::pod(container, volumes, ix.spec.scheduling.as_ref());
    pod.restart_policy = Some("Never".into());
    Job {
        metadata: pod::meta(rollback_job_name(mi, to), mi.namespace(), &lbl, Some(pod::owner_ref(mi))),
        spec: Some(JobSpec {
            backoff_limit: Some(1),
            active_deadline_seconds: Some(1800),
            ttl_seconds_after_finished: Some(3600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(lbl), ..Default::default() }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}
