//! Reading build Jobs: their state, and the JSON line the worker left as termination message.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    Running,
    Succeeded,
    Failed(String),
}

pub fn state(job: &Job) -> JobState {
    let conds = job.status.as_ref().and_then(|s| s.conditions.as_ref()).cloned().unwrap_or_default();
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

/// The worker's result line, from the newest terminated container of the Job's pods
/// (successful pods first).
pub async fn termination_message(pods: &Api<Pod>, job: &str) -> Option<serde_json::Value> {
    let list = pods.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}"))).await.ok()?;
    let mut found: Vec<(bool, String)> = list
        .items
        .iter()
        .flat_map(|p| {
            let ok = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded");
            p.status.iter().flat_map(|s| s.container_statuses.iter().flatten()).filter_map(move |cs| {
                let t = cs.state.as_ref()?.terminated.as_ref()?;
                Some((ok || t.exit_code == 0, t.message.clone()?))
            })
        })
        .collect();
    found.sort_by_key(|(ok, _)| !*ok);
    found.into_iter().find_map(|(_, m)| serde_json::from_str(m.trim()).ok())
}
