//! The build Job (one snapshot of a MatchingIndex), the cleanup Job (its files, on deletion)
//! and what every `kim-worker` Job shares.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyOnPodConditionsPattern,
    PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{Container, PodTemplateSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use super::pod::{self, claim_volume, env, mount};
use super::{
    enc, labels, metric, storage_args, storage_claim, storage_parts, worker_image, Defaults, StorageParts, LABEL_HASH,
    SOURCE_MOUNT, STORAGE_MOUNT,
};
use crate::crd::{Indexer, MatchingIndex};

pub fn job_name(mi: &MatchingIndex, hash: &str) -> String {
    let base: String = mi.name_any().chars().take(42).collect();
    format!("{}-build-{}", base.trim_end_matches('-'), hash.get(..10).unwrap_or(hash))
}

/// Where the source file is mounted, and the separate claim to mount there, if any (always
/// on object storage, where no storage claim is mounted).
fn source_mount(mi: &MatchingIndex, ix: &Indexer) -> (&'static str, Option<String>) {
    match (&mi.spec.source.claim, storage_claim(ix)) {
        (Some(c), Some(storage)) if *c == storage => (STORAGE_MOUNT, None),
        (Some(c), _) => (SOURCE_MOUNT, Some(c.clone())),
        (None, _) => (STORAGE_MOUNT, None),
    }
}

/// `kim-worker index` arguments for a MatchingIndex (checked against the worker's parser in tests).
pub fn index_args(mi: &MatchingIndex, ix: &Indexer) -> Vec<String> {
    let s = &mi.spec;
    let (src_root, _) = source_mount(mi, ix);
    let source = match &s.source.path {
        Some(p) => format!("{src_root}/{p}"),
        None => crate::online::agents_source(mi),
    };
    let mut a: Vec<String> = [
        "index",
        "--label",
        &mi.label(),
        "--namespace",
        &mi.namespace().unwrap_or_default(),
        "--source",
        &source,
        "--version",
        &s.descriptor.version.to_string(),
        "--dimensions",
        &s.descriptor.dimensions.to_string(),
        "--encoding",
        enc(s.descriptor.encoding),
        "--metric",
        metric(s.descriptor.metric),
        "--m",
        &s.hnsw.m.to_string(),
        "--ef-construction",
        &s.hnsw.ef_construction.to_string(),
        "--ef-search",
        &s.hnsw.ef_search.to_string(),
        "--keep",
        &ix.spec.snapshots_to_keep.to_string(),
        "--termination-message-path",
        "/dev/termination-log",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    a.extend(storage_args(ix));
    if let Some(ids) = &s.source.ids_path {
        a.extend(["--ids".into(), format!("{src_root}/{ids}")]);
    }
    if s.source.path.is_none() {
        a.extend(crate::online::tls_client_args(mi));
    }
    // Each pod of the Indexed Job builds the shard of its completion index (KIM_SHARD).
    if s.shards > 1 {
        a.extend(["--shards".into(), s.shards.to_string()]);
    }
    a
}

/// The annotation the Job controller gives each pod of an Indexed Job: its completion index.
const COMPLETION_INDEX: &str = "metadata.annotations['batch.kubernetes.io/job-completion-index']";

/// The Job that builds one snapshot.
pub fn build_job(mi: &MatchingIndex, ix: &Indexer, hash: &str, deadline_secs: i64, d: &Defaults) -> Job {
    label_job(mi, ix, d, (job_name(mi, hash), "build", hash), index_args(mi, ix), deadline_secs, 3600)
}

/// The name of the refresh Job of `epoch` (the refresh interval's count since the
/// MatchingIndex was created) for the build `hash`.
pub fn refresh_job_name(mi: &MatchingIndex, hash: &str, epoch: u64) -> String {
    let base: String = mi.name_any().chars().take(40).collect();
    let digest = xxhash_rust::xxh3::xxh3_64(format!("{hash}/{epoch}").as_bytes());
    format!("{}-refresh-{:010x}", base.trim_end_matches('-'), digest & 0xff_ffff_ffff)
}

/// `kim-worker refresh` over the build's source and settings: a delta beside the served
/// snapshot, or a rebuild past `maxTail`. Kept ten minutes after it finishes (its outcome is
/// in status by then); every shard of a split label refreshes its own snapshot.
pub fn refresh_job(mi: &MatchingIndex, ix: &Indexer, hash: &str, epoch: u64, deadline_secs: i64, d: &Defaults) -> Job {
    let max_tail = mi.spec.rebuild.refresh.as_ref().map_or(0.05, |r| r.max_tail);
    let mut args = index_args(mi, ix);
    args[0] = "refresh".into();
    args.extend(["--max-tail".into(), max_tail.to_string()]);
    label_job(mi, ix, d, (refresh_job_name(mi, hash, epoch), "refresh", hash), args, deadline_secs, 600)
}

/// A Job that reads the label's source and writes its storage (a build or a refresh): the
/// source and storage mounts, the agents' TLS for an `agents://` source, and one pod per shard
/// of a split label (an Indexed Job; each pod's completion index is its shard).
fn label_job(
    mi: &MatchingIndex,
    ix: &Indexer,
    d: &Defaults,
    (name, component, hash): (String, &'static str, &str),
    args: Vec<String>,
    deadline_secs: i64,
    ttl_secs: i32,
) -> Job {
    let (_, source_claim) = source_mount(mi, ix);
    let StorageParts { mut volumes, mut mounts, env: storage_env } = storage_parts(ix, false);
    if let Some(c) = source_claim {
        volumes.push(claim_volume("source", &c, true));
        mounts.push(mount("source", SOURCE_MOUNT, true));
    }
    if mi.spec.source.path.is_none() {
        let (v, m) = crate::online::tls_volumes(mi);
        volumes.extend(v);
        mounts.extend(m);
    }
    let mut lbl = labels(mi, component);
    lbl.insert(LABEL_HASH.into(), hash.into());
    let run = Run {
        name,
        container: "index",
        labels: lbl,
        args,
        storage: StorageParts { volumes, mounts, env: storage_env },
        resources: ix.spec.build_resources.clone(),
        owned: true,
        backoff_limit: ix.spec.retry_limit,
        deadline_secs,
        ttl_secs,
    };
    let mut job = worker_job(mi, ix, d, run);
    let shards = mi.spec.shards;
    if let (true, Some(spec)) = (shards > 1, job.spec.as_mut()) {
        spec.completion_mode = Some("Indexed".into());
        spec.completions = Some(shards);
        spec.parallelism = Some(shards.min(ix.spec.max_concurrent_builds.max(1)));
        if let Some(c) = spec.template.spec.as_mut().and_then(|p| p.containers.first_mut()) {
            c.env.get_or_insert_with(Vec::new).push(pod::env_from_field("KIM_SHARD", COMPLETION_INDEX));
        }
    }
    job
}

/// One `kim-worker` run as a Job: what the build, cleanup and rollback Jobs differ in.
pub(crate) struct Run {
    pub name: String,
    pub container: &'static str,
    pub labels: BTreeMap<String, String>,
    pub args: Vec<String>,
    pub storage: StorageParts,
    pub resources: Option<ResourceRequirements>,
    /// Owned by the MatchingIndex (garbage-collected with it); the cleanup Job is not, as it
    /// runs while its MatchingIndex is being deleted.
    pub owned: bool,
    pub backoff_limit: i32,
    pub deadline_secs: i64,
    pub ttl_secs: i32,
}

/// The worker's Job: its image and pull policy, JSON logs, the storage's env and mounts, the
/// termination message the operator reads back, no restarts in place, and the fail-fast policy.
pub(crate) fn worker_job(mi: &MatchingIndex, ix: &Indexer, d: &Defaults, run: Run) -> Job {
    let StorageParts { volumes, mounts, env: storage_env } = run.storage;
    let container = Container {
        name: run.container.into(),
        image: Some(worker_image(ix, d)),
        image_pull_policy: Some(d.image_pull_policy.clone()),
        args: Some(run.args),
        env: Some([vec![env("KIM_LOG_FORMAT", "json")], storage_env].concat()),
        resources: run.resources,
        volume_mounts: Some(mounts),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    let mut pod = pod::pod(container, volumes, ix.spec.scheduling.as_ref());
    pod.restart_policy = Some("Never".into());
    let owner = run.owned.then(|| pod::owner_ref(mi));
    Job {
        metadata: pod::meta(run.name, mi.namespace(), &run.labels, owner),
        spec: Some(JobSpec {
            backoff_limit: Some(run.backoff_limit),
            pod_failure_policy: Some(fail_fast(run.container)),
            active_deadline_seconds: Some(run.deadline_secs),
            ttl_seconds_after_finished: Some(run.ttl_secs),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(run.labels), ..Default::default() }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A configuration error (`kim-worker` exits `CONFIG`) fails the Job at once instead of
/// retrying it `retryLimit` times; a pod evicted or preempted is retried without counting.
fn fail_fast(container: &str) -> PodFailurePolicy {
    PodFailurePolicy {
        rules: vec![
            PodFailurePolicyRule {
                action: "FailJob".into(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: Some(container.into()),
                    operator: "In".into(),
                    values: vec![i32::from(kim_api::exit::CONFIG)],
                }),
                ..Default::default()
            },
            PodFailurePolicyRule {
                action: "Ignore".into(),
                on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                    type_: "DisruptionTarget".into(),
                    status: Some("True".into()),
                }]),
                ..Default::default()
            },
        ],
    }
}

/// The Job that removes a label's files from storage when its MatchingIndex is deleted.
pub fn cleanup_job(mi: &MatchingIndex, ix: &Indexer, d: &Defaults) -> Job {
    let mut args: Vec<String> = ["clean", "--namespace", &mi.namespace().unwrap_or_default(), "--label", &mi.label()]
        .iter()
        .map(|x| x.to_string())
        .collect();
    args.extend(storage_args(ix));
    let run = Run {
        name: format!("{}-cleanup", mi.name_any().chars().take(50).collect::<String>()),
        container: "cleanup",
        labels: labels(mi, "cleanup"),
        args,
        storage: storage_parts(ix, false),
        resources: None,
        owned: false,
        backoff_limit: 3,
        deadline_secs: 1800,
        ttl_secs: 600,
    };
    worker_job(mi, ix, d, run)
}
