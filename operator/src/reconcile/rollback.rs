//! `kim.dev/rollback-to: <snapshot id>`: runs one rollback Job per target, reports it in
//! `status.rollback`, the current snapshot and Events. The worker pins the target, so later
//! builds' keep-N never removes it.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::ResourceExt;

use super::jobs::{self, JobState};
use super::{apply, Error, Result};
use crate::build;
use crate::context::Context;
use crate::crd::{Indexer, MatchingIndex, MatchingIndexStatus, RollbackStatus, ROLLBACK_ANNOTATION};

/// The rollback the annotation asks for, driven one step; nothing when there is none or it
/// is finished.
pub async fn step(mi: &MatchingIndex, ix: &Indexer, ctx: &Context, st: &mut MatchingIndexStatus) -> Result<()> {
    let Some(to) = mi.annotations().get(ROLLBACK_ANNOTATION).map(|v| v.trim().to_string()) else {
        return Ok(());
    };
    if st.rollback.as_ref().is_some_and(|r| r.to == to && r.state != "Running") {
        return Ok(());
    }
    let refused = if !valid_id(&to) {
        Some(format!("{ROLLBACK_ANNOTATION}: {to:?} is not a snapshot id"))
    } else if mi.spec.shards > 1 {
        // Each shard has its own snapshots; rolling one label back means one id per shard.
        Some(format!(
            "{ROLLBACK_ANNOTATION} rolls back an unsharded label; this one has {} shards: use `kim-worker snapshot rollback --label {}@shard-<I>-of-{}` per shard",
            mi.spec.shards,
            mi.label(),
            mi.spec.shards
        ))
    } else {
        None
    };
    if let Some(message) = refused {
        ctx.event(mi, true, "RollbackFailed", "Rollback", message.clone()).await;
        st.rollback = Some(RollbackStatus { to, job: None, state: "Failed".into(), message: Some(message) });
        return Ok(());
    }
    let ns = mi.namespace().unwrap_or_default();
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let name = build::rollback_job_name(mi, &to);
    let job = match api.get_opt(&name).await.map_err(Error::reading(format!("Job {ns}/{name}")))? {
        Some(j) => j,
        None => {
            let job = build::rollback_job(mi, ix, &to, &ctx.defaults);
            let created = apply(&api, &name, &job).await.map_err(|source| Error::Apply {
                kind: "Job".into(),
                name: name.clone(),
                source,
            })?;
            let from = st.current_snapshot.as_ref().map_or("none".to_string(), |s| s.id.clone());
            let note = format!("Job {name} rolls label {} back from snapshot {from} to {to}", mi.label());
            ctx.event(mi, false, "RollbackStarted", "Rollback", note).await;
            created
        }
    };
    let mut r = RollbackStatus { to: to.clone(), job: Some(name.clone()), state: "Running".into(), message: None };
    match jobs::state(&job) {
        JobState::Running => {}
        JobState::Succeeded => {
            r.state = "Succeeded".into();
            let note = format!("label {} serves snapshot {to} (pinned: later builds keep it)", mi.label());
            ctx.event(mi, false, "RolledBack", "Rollback", note.clone()).await;
            r.message = Some(note);
            if let Some(s) = st.current_snapshot.as_mut().filter(|s| s.id != to) {
                let done = outcome(ctx, &ns, &name).await?.unwrap_or_default();
                s.id = to.clone();
                s.vectors = done["vectors"].as_i64().unwrap_or(0);
                s.built_at = done["createdAt"].as_str().map(str::to_string);
                s.build_seconds = None;
            }
        }
        JobState::Failed(why) => {
            r.state = "Failed".into();
            let detail =
                outcome(ctx, &ns, &name).await?.and_then(|v| v["error"].as_str().map(str::to_string)).unwrap_or(why);
            let message = format!("rollback Job {name} failed: {detail}");
            ctx.event(mi, true, "RollbackFailed", "Rollback", message.clone()).await;
            r.message = Some(message);
        }
    }
    st.rollback = Some(r);
    Ok(())
}

/// Snapshot ids as the worker accepts them.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 253 && !id.contains(['/', '\\']) && !id.starts_with('.')
}

/// The termination message of the Job's newest terminated container.
async fn last_message(ctx: &Context, ns: &str, job: &str) -> Result<Option<String>> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await
        .map_err(Error::reading(format!("pods of Job {job}")))?;
    let mut found: Vec<(Option<k8s_openapi::jiff::Timestamp>, String)> = list
        .items
        .iter()
        .flat_map(|p| p.status.iter().flat_map(|s| s.container_statuses.iter().flatten()))
        .filter_map(|cs| {
            let t = cs.state.as_ref()?.terminated.as_ref()?;
            Some((t.finished_at.as_ref().map(|f| f.0), t.message.clone()?.trim().to_string()))
        })
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    Ok(found.into_iter().map(|(_, m)| m).find(|m| !m.is_empty()))
}

/// The worker's one-line JSON outcome, when the Job's pod left it.
async fn outcome(ctx: &Context, ns: &str, job: &str) -> Result<Option<serde_json::Value>> {
    Ok(last_message(ctx, ns, job).await?.and_then(|m| serde_json::from_str(&m).ok()))
}
