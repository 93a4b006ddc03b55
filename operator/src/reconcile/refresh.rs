//! Refresh between builds (`spec.rebuild.refresh`): once per refresh interval, while the
//! served snapshot matches the spec, a Job runs `kim-worker refresh` over the build's source
//! and settings. It writes the difference by id as a delta beside the snapshot, which the
//! matchers apply without reloading, or rebuilds once the changes would pass `maxTail` of the
//! snapshot. Status says what the last one did; a rebuild it ran becomes the current snapshot.
//! A build (the spec changed, the interval, the annotation) stops a refresh still running: the
//! build folds every change in anyway.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kim_api::build::BuildReport;
use kube::api::{Api, DeleteParams, ListParams};
use kube::ResourceExt;
use serde_json::Value;

use super::jobs::{self, JobState};
use super::{apply, Error, Result};
use crate::build::{self, LABEL_COMPONENT};
use crate::context::Context;
use crate::crd::{Indexer, MatchingIndex, MatchingIndexStatus, RefreshStatus, SnapshotStatus};

/// Runs the refresh of the current interval (or reads how it went); returns when the next
/// interval starts.
pub async fn step(
    mi: &MatchingIndex,
    ix: &Indexer,
    ctx: &Context,
    hash: &str,
    interval: Option<Duration>,
    deadline_secs: i64,
    st: &mut MatchingIndexStatus,
) -> Result<Option<Duration>> {
    let Some(interval) = interval else {
        st.refresh = None;
        return Ok(None);
    };
    let ns = mi.namespace().unwrap_or_default();
    let job_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(current) = st.current_snapshot.clone() else { return Ok(None) };
    if current.build_hash != hash {
        stop_running(mi, &job_api).await?;
        return Ok(None);
    }
    let (epoch, next) = super::matching_index::interval_epoch(mi, Some(interval));
    let name = build::refresh_job_name(mi, hash, epoch);
    let Some(job) = job_api.get_opt(&name).await.map_err(Error::reading(format!("Job {ns}/{name}")))? else {
        let job = build::refresh_job(mi, ix, hash, epoch, deadline_secs, &ctx.defaults);
        apply(&job_api, &name, &job).await.map_err(|source| Error::Build { job: name.clone(), source })?;
        st.refresh = Some(RefreshStatus { job: name, state: "Running".into(), message: None });
        return Ok(next);
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let (state, message) = match jobs::state(&job) {
        JobState::Running => ("Running", None),
        JobState::Succeeded => {
            let reports = jobs::Reports::read(&pods, &name).await?;
            let message = reports.json().as_ref().map_or_else(|| "succeeded without a report".into(), describe);
            // Taken in once, when the Job is first seen finished (a later rollback stands).
            let seen = st.refresh.as_ref().is_some_and(|r| r.job == name && r.state == "Succeeded");
            let after = super::matching_index::reported_snapshot(mi, &reports, hash);
            // Every shard of a split label reported (a partial set would read as a new snapshot).
            let after = after.filter(|a| a.layout() == mi.spec.shards.max(1));
            if let (false, Some(after)) = (seen, after) {
                if same_snapshot(&current, &after) {
                    st.current_snapshot = Some(SnapshotStatus { vectors: after.vectors, ..current });
                } else {
                    ctx.event(mi, false, "RefreshRebuilt", "Refresh", format!("Job {name}: {message}")).await;
                    st.current_snapshot = Some(after);
                }
            }
            ("Succeeded", Some(message))
        }
        JobState::Failed(why) => {
            let message = match jobs::Reports::read(&pods, &name).await?.build() {
                Some(BuildReport::Failed { error }) => error,
                _ => why,
            };
            ctx.event(mi, true, "RefreshFailed", "Refresh", format!("Job {name} failed: {message}")).await;
            ("Failed", Some(message))
        }
    };
    st.refresh = Some(RefreshStatus { job: name, state: state.into(), message });
    Ok(next)
}

/// Shortest refresh interval taken (the schema's description says so; validation refuses less).
pub const MIN_INTERVAL: Duration = Duration::from_secs(10);

fn same_snapshot(a: &SnapshotStatus, b: &SnapshotStatus) -> bool {
    a.id == b.id && a.shards.iter().map(|s| &s.id).eq(b.shards.iter().map(|s| &s.id))
}

/// What a refresh report says, in one line.
fn describe(v: &Value) -> String {
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    match v["mode"].as_str() {
        Some("delta") => format!(
            "wrote delta {}: {} rows added, {} removed; the tail holds {} rows and {} removed ids; {} vectors served",
            n("delta"),
            n("added"),
            n("removed"),
            n("tailRows"),
            n("tombstones"),
            n("vectors")
        ),
        Some("unchanged") => format!("the source is unchanged ({} deltas applied)", n("deltas")),
        Some("rebuild") => format!(
            "rebuilt instead of a delta ({}): snapshot {} with {} vectors",
            v["reason"].as_str().unwrap_or("no reason given"),
            v["snapshot"].as_str().unwrap_or("?"),
            n("vectors")
        ),
        _ => match v["error"].as_str() {
            Some(e) => e.to_string(),
            None => format!("unexpected report {v}"),
        },
    }
}

/// Deletes refresh Jobs still running (a build is due and folds their changes in).
async fn stop_running(mi: &MatchingIndex, job_api: &Api<Job>) -> Result<()> {
    let selector = format!("{},{LABEL_COMPONENT}=refresh", build::children_selector(&mi.name_any()));
    let list = job_api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::reading(format!("refresh Jobs of {}", mi.name_any())))?;
    for j in list.items.iter().filter(|j| jobs::is_running(j)) {
        let name = j.name_any();
        job_api.delete(&name, &DeleteParams::background()).await.map_err(|source| Error::Prune {
            kind: "Job".into(),
            name: name.clone(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::describe;
    use serde_json::json;

    #[test]
    fn reports_read_as_one_line() {
        let delta = json!({"mode": "delta", "delta": 3, "added": 2, "removed": 1, "tailRows": 9, "tombstones": 4, "vectors": 105});
        assert_eq!(
            describe(&delta),
            "wrote delta 3: 2 rows added, 1 removed; the tail holds 9 rows and 4 removed ids; 105 vectors served"
        );
        assert_eq!(describe(&json!({"mode": "unchanged", "deltas": 2})), "the source is unchanged (2 deltas applied)");
        let rebuilt = json!({"mode": "rebuild", "reason": "the tail would pass 5 %", "snapshot": "s2", "vectors": 7});
        assert_eq!(
            describe(&rebuilt),
            "rebuilt instead of a delta (the tail would pass 5 %): snapshot s2 with 7 vectors"
        );
        assert_eq!(describe(&json!({"error": "no source"})), "no source");
    }
}
