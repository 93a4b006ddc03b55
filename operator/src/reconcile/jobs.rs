//! Reading build and refresh Jobs: their state, their attempts, and the report the worker left
//! as the termination message of its container.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeMap;

use kim_api::build::{BuildReport, Built};
use kube::api::{Api, ListParams};

use super::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    Running,
    Succeeded,
    Failed(String),
}

pub fn state(job: &Job) -> JobState {
    let conds = job.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    let has = |t: &str| conds.iter().find(|c| c.type_ == t && c.status == "True");
    if has("Complete").is_some() {
        return JobState::Succeeded;
    }
    if let Some(c) = has("Failed") {
        let why = [c.reason.clone(), c.message.clone()].into_iter().flatten().collect::<Vec<_>>().join(": ");
        return JobState::Failed(why);
    }
    JobState::Running
}

/// Running = not yet Complete or Failed.
pub fn is_running(job: &Job) -> bool {
    state(job) == JobState::Running
}

/// The attempt running now (1-based) and the most the Job makes.
pub fn attempt(job: &Job) -> (i32, i32) {
    let failed = job.status.as_ref().and_then(|s| s.failed).unwrap_or(0);
    let limit = job.spec.as_ref().and_then(|s| s.backoff_limit).unwrap_or(6);
    (failed + 1, limit + 1)
}

/// The worker's report from the newest terminated container of the Job's pods (successful
/// pods first); `None` when no pod left one.
pub async fn report(pods: &Api<Pod>, job: &str) -> Result<Option<BuildReport>> {
    Ok(reports(pods, job).await?.into_iter().find_map(|(_, _, m)| BuildReport::parse(&m)))
}

/// The newest report of the Job's pods as JSON (a refresh says more than a build's
/// [`BuildReport`] holds: what it wrote and why).
pub async fn report_json(pods: &Api<Pod>, job: &str) -> Result<Option<serde_json::Value>> {
    let parse = |m: &str| serde_json::from_str::<serde_json::Value>(m.trim()).ok().filter(|v| v.is_object());
    Ok(reports(pods, job).await?.into_iter().find_map(|(_, _, m)| parse(&m)))
}

/// A sharded build's snapshot per shard: the report of each successful pod, by the shard its
/// storage name says (`<label>@shard-<I>-of-<N>`), the newest when a shard ran twice.
pub async fn shard_reports(pods: &Api<Pod>, job: &str) -> Result<BTreeMap<u32, Built>> {
    let mut out = BTreeMap::new();
    for (ok, _, m) in reports(pods, job).await?.into_iter().rev() {
        if let (true, Some(BuildReport::Built(b))) = (ok, BuildReport::parse(&m)) {
            if let Some((_, shard, _)) = kim_api::shard::parse_storage_name(&b.label) {
                out.insert(shard, b);
            }
        }
    }
    Ok(out)
}

/// Termination messages of the Job's pods, successful first, then the newest.
async fn reports(pods: &Api<Pod>, job: &str) -> Result<Vec<(bool, Option<k8s_openapi::jiff::Timestamp>, String)>> {
    let list = pods
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await
        .map_err(Error::reading(format!("pods of Job {job}")))?;
    let mut found: Vec<(bool, Option<k8s_openapi::jiff::Timestamp>, String)> = list
        .items
        .iter()
        .flat_map(|p| {
            let ok = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded");
            p.status.iter().flat_map(|s| s.container_statuses.iter().flatten()).filter_map(move |cs| {
                let t = cs.state.as_ref()?.terminated.as_ref()?;
                let finished = t.finished_at.as_ref().map(|f| f.0);
                Some((ok || t.exit_code == 0, finished, t.message.clone()?))
            })
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
    Ok(found)
}
