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

/// The termination messages the worker left in a Job's pods, successful pods first, then
/// the newest: read once per reconcile and asked several questions.
pub struct Reports(Vec<(bool, Option<k8s_openapi::jiff::Timestamp>, String)>);

impl Reports {
    pub async fn read(pods: &Api<Pod>, job: &str) -> Result<Reports> {
        let list = pods
            .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
            .await
            .map_err(Error::reading(format!("pods of Job {job}")))?;
        let mut found: Vec<_> = list
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
        Ok(Reports(found))
    }

    /// The first report that parses as a build's; `None` when no pod left one.
    pub fn build(&self) -> Option<BuildReport> {
        self.0.iter().find_map(|(_, _, m)| BuildReport::parse(m))
    }

    /// The first report as JSON (a refresh says more than a build's [`BuildReport`] holds:
    /// what it wrote and why).
    pub fn json(&self) -> Option<serde_json::Value> {
        self.0
            .iter()
            .find_map(|(_, _, m)| serde_json::from_str::<serde_json::Value>(m.trim()).ok().filter(|v| v.is_object()))
    }

    /// A sharded build's snapshot per shard: the report of each successful pod, by the shard
    /// its storage name says (`<label>@shard-<I>-of-<N>`), the newest when a shard ran twice.
    pub fn shards(&self) -> BTreeMap<u32, Built> {
        let mut out = BTreeMap::new();
        for (ok, _, m) in self.0.iter().rev() {
            if let (true, Some(BuildReport::Built(b))) = (ok, BuildReport::parse(m)) {
                if let Some((_, shard, _)) = kim_api::shard::parse_storage_name(&b.label) {
                    out.insert(shard, b);
                }
            }
        }
        out
    }
}
