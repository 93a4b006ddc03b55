//! Finalizer of a MatchingIndex: delete its children, and (with `deletionPolicy: Delete`) its
//! Redis keys, its files and its agents' claims.
//!
//! Children are deleted explicitly by label (not only left to owner-reference garbage
//! collection) so nothing lingers even where no garbage collector runs. Files are removed by a
//! short Job that mounts the Indexer's claim, because the operator mounts no storage. A step
//! that cannot finish (Secret gone, Redis down, the cleanup Job stuck) sets the condition
//! `CleanupBlocked` and emits one Warning Event per cause, both naming the way out; the Redis
//! step is given up `--cleanup-timeout` after the deletion, the files are removed regardless.
//! Annotate `kim.dev/skip-cleanup: "true"` to let a deletion through at once when Redis or the
//! storage is gone for good.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::ResourceExt;

use super::jobs::{self, JobState};
use super::redis;
use super::{apply, not_found, Error, Result};
use crate::build::{self, Children, LABEL_COMPONENT, LABEL_MI};
use crate::context::Context;
use crate::crd::{DeletionPolicy, Indexer, MatchingIndex};

pub const FINALIZER: &str = "kim.dev/cleanup";
pub const SKIP_ANNOTATION: &str = "kim.dev/skip-cleanup";
/// Condition set while a deletion waits for something only the user can fix.
pub const BLOCKED: &str = "CleanupBlocked";

/// Where a cleanup stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Everything is removed (or kept by policy): the finalizer may go.
    Done,
    /// A step waits for something (a Job, Redis); look again after this long.
    Wait(Duration),
}

/// How long a waiting step waits before it looks again.
const RETRY: Duration = Duration::from_secs(2);

pub async fn cleanup(mi: &MatchingIndex, ctx: &Context) -> Result<Progress> {
    let ns = mi.namespace().unwrap_or_default();
    let skip = mi.annotations().get(SKIP_ANNOTATION).is_some_and(|v| v == "true");
    let retain = mi.spec.deletion_policy == DeletionPolicy::Retain;
    delete_children(mi, ctx, &ns).await?;
    let mut done = vec!["removed its Deployments, StatefulSets, Services, disruption budgets and Jobs".to_string()];
    let mut left = Vec::new();
    // Whatever the policy: a deleted label is not served any more.
    if let Some(pool) = mi.status.as_ref().and_then(|s| s.pool.as_deref()) {
        match super::pool::leave(mi, ctx, &ns, pool).await {
            Ok(()) => done.push(format!("took the label out of matcher pool {pool}")),
            Err(p) => left.push(format!("could not take the label out of matcher pool {pool} ({p}): SREM it by hand")),
        }
    }
    let keys = redis::keys_of(mi);
    let (stream, pattern) = (&keys.stream, keys.patterns.join(", "));
    if retain || skip {
        let why = if skip { format!("{SKIP_ANNOTATION}: \"true\"") } else { "deletionPolicy Retain".into() };
        left.push(format!("kept (by {why}) Redis stream {stream} and keys {pattern}"));
        left.push(format!("kept (by {why}) the index files {}", files_place(mi, ctx, &ns).await?));
        delete_cleanup_job(mi, ctx, &ns).await?;
    } else {
        let files = clean_files(mi, ctx, &ns).await?;
        let redis = redis::clean(mi, ctx, &ns).await;
        let (waited, deadline) = waited_secs(mi, ctx);
        let limit = ctx.cleanup_timeout.as_secs() as i64;
        if let Err(p) = &redis {
            if waited < limit {
                // No running numbers in the message: an unchanged condition is not written again.
                let way_out = format!(
                    "{}, or `kubectl annotate matchingindex {} -n {ns} {SKIP_ANNOTATION}=true` to skip the Redis and \
                     file steps; otherwise the Redis step is given up at {deadline} ({limit} s after the deletion), \
                     leaving stream {stream} and keys {pattern}, and the files are removed anyway",
                    p.remedy(),
                    mi.name_any(),
                );
                let message = format!("cannot remove the Redis keys of label {}: {p}. Way out: {way_out}", mi.label());
                block(mi, ctx, p.reason(), &message).await?;
                tracing::info!(name = %mi.name_any(), %message, "cleanup waits");
                return Ok(Progress::Wait(RETRY));
            }
        }
        match files {
            Files::Running(job) => {
                if waited >= limit {
                    let message = format!(
                        "cleanup Job {job} has not finished {limit} s after the deletion (its pod must mount the \
                         Indexer's claim). Way out: make the claim mountable, or `kubectl annotate matchingindex {} \
                         -n {ns} {SKIP_ANNOTATION}=true` to leave the files",
                        mi.name_any()
                    );
                    block(mi, ctx, "CleanupJobPending", &message).await?;
                }
                return Ok(Progress::Wait(RETRY));
            }
            Files::Removed(place) => done.push(format!("removed the index files {place}")),
            Files::NotRemoved(why) => left.push(format!("could not remove the index files: {why}")),
        }
        match redis {
            // Each pass deletes again (idempotent) while the file Job runs, so no count is claimed.
            Ok(_) => done.push(format!("removed Redis stream {stream} and keys {pattern}")),
            Err(p) => left.push(format!(
                "gave up the Redis step after {waited} s ({p}): remove stream {stream} and keys {pattern} by hand"
            )),
        }
        delete_cleanup_job(mi, ctx, &ns).await?;
    }
    agent_claims(mi, ctx, &ns, !retain, &mut done, &mut left).await?;
    ctx.metrics.index.forget(&ns, &mi.name_any());
    let label = mi.label();
    if left.is_empty() {
        ctx.event(mi, false, "CleanedUp", "Delete", format!("label {label}: {}", done.join("; "))).await;
    } else if retain || skip {
        let note = format!("label {label}: {}; {}", done.join("; "), left.join("; "));
        ctx.event(mi, false, "CleanedUp", "Delete", note).await;
    } else {
        let note = format!("label {label}: {}; but {}", done.join("; "), left.join("; "));
        ctx.event(mi, true, "CleanupIncomplete", "Delete", note).await;
    }
    Ok(Progress::Done)
}

/// Seconds since the deletion was requested, and when the Redis step will be given up.
fn waited_secs(mi: &MatchingIndex, ctx: &Context) -> (i64, String) {
    use k8s_openapi::jiff::{SignedDuration, Timestamp};
    let now = Timestamp::now();
    let since = mi.metadata.deletion_timestamp.as_ref().map_or(now, |t| t.0);
    let deadline = since.saturating_add(SignedDuration::try_from(ctx.cleanup_timeout).unwrap_or(SignedDuration::MAX));
    ((now.as_second() - since.as_second()).max(0), deadline.map_or_else(|_| "never".into(), |d| d.to_string()))
}

/// Sets `CleanupBlocked` with the way out, and emits a Warning Event when the cause is new.
async fn block(mi: &MatchingIndex, ctx: &Context, reason: &str, message: &str) -> Result<()> {
    let mut conds = mi.status.clone().unwrap_or_default().conditions;
    let current = crate::status::get(&conds, BLOCKED).filter(|c| c.status == "True" && c.reason == reason);
    if current.is_some_and(|c| c.message == message) {
        return Ok(());
    }
    if current.is_none() {
        ctx.event(mi, true, BLOCKED, "Delete", message.to_string()).await;
    }
    crate::status::set(&mut conds, BLOCKED, true, reason, message, mi.metadata.generation);
    let api: Api<MatchingIndex> = Api::namespaced(ctx.client.clone(), &mi.namespace().unwrap_or_default());
    let patch = serde_json::json!({"status": {"conditions": conds}});
    let params = PatchParams { field_manager: Some(build::MANAGER.into()), ..Default::default() };
    api.patch_status(&mi.name_any(), &params, &Patch::Merge(&patch))
        .await
        .map_err(|source| Error::Status { name: mi.name_any(), source })?;
    Ok(())
}

/// Every child but the cleanup Job: the long-lived ones by wanting none of them, then the
/// build Jobs.
async fn delete_children(mi: &MatchingIndex, ctx: &Context, ns: &str) -> Result<()> {
    super::children::sync_all(&ctx.client, ns, &mi.name_any(), &Children::default()).await?;
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let not_cleanup = ListParams::default().labels(&format!("{LABEL_MI}={},{LABEL_COMPONENT}!=cleanup", mi.name_any()));
    jobs.delete_collection(&DeleteParams::background(), &not_cleanup).await.map_err(|source| Error::Prune {
        kind: "Job".into(),
        name: format!("build Jobs of {}", mi.name_any()),
        source,
    })?;
    Ok(())
}

/// The online agents' claims (from the StatefulSet's volumeClaimTemplates, which nothing else
/// deletes): deleted when `delete`, else listed as kept.
async fn agent_claims(
    mi: &MatchingIndex,
    ctx: &Context,
    ns: &str,
    delete: bool,
    done: &mut Vec<String>,
    left: &mut Vec<String>,
) -> Result<()> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let sel = ListParams::default().labels(&format!("{LABEL_MI}={},{LABEL_COMPONENT}=agent", mi.name_any()));
    let listed = api.list(&sel).await.map_err(Error::reading(format!("agent claims of {ns}/{}", mi.name_any())))?;
    let names: Vec<String> = listed.items.iter().map(|c| c.name_any()).collect();
    if names.is_empty() {
        return Ok(());
    }
    if delete {
        for n in &names {
            match api.delete(n, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(e) if not_found(&e) => {}
                Err(source) => {
                    return Err(Error::Prune { kind: "PersistentVolumeClaim".into(), name: n.clone(), source })
                }
            }
        }
        done.push(format!("deleted the agent claims {}", names.join(", ")));
    } else {
        left.push(format!("kept (by deletionPolicy Retain) the agent claims {}", names.join(", ")));
    }
    Ok(())
}

enum Files {
    /// Where they were: `<namespace>/<label> on claim <claim>` (or `on s3://…`).
    Removed(String),
    Running(String),
    NotRemoved(String),
}

async fn indexer(mi: &MatchingIndex, ctx: &Context, ns: &str) -> Result<Option<Indexer>> {
    let name = &mi.spec.indexer_ref.name;
    Api::<Indexer>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(Error::reading(format!("Indexer {ns}/{name}")))
}

/// Where the label's files are, for the Event.
async fn files_place(mi: &MatchingIndex, ctx: &Context, ns: &str) -> Result<String> {
    let place = indexer(mi, ctx, ns).await?.map_or_else(
        || format!("claim of Indexer {} (gone)", mi.spec.indexer_ref.name),
        |ix| build::storage_place(&ix),
    );
    Ok(format!("{ns}/{} on {place}", mi.label()))
}

/// Runs the cleanup Job; it stays until the whole cleanup is done, so a later pass sees its
/// outcome instead of running it again.
async fn clean_files(mi: &MatchingIndex, ctx: &Context, ns: &str) -> Result<Files> {
    let Some(ix) = indexer(mi, ctx, ns).await? else {
        return Ok(Files::NotRemoved(format!("Indexer {} is gone", mi.spec.indexer_ref.name)));
    };
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let job = build::cleanup_job(mi, &ix, &ctx.defaults);
    let name = job.name_any();
    let current = match jobs_api.get_opt(&name).await.map_err(Error::reading(format!("Job {ns}/{name}")))? {
        Some(j) => j,
        None => match apply(&jobs_api, &name, &job).await {
            Ok(j) => j,
            // A namespace being deleted accepts no new objects; its claims go with it.
            Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains("being terminated") => {
                return Ok(Files::NotRemoved(format!(
                    "namespace {ns} is being deleted, so no cleanup Job can run on {}",
                    build::storage_place(&ix)
                )));
            }
            Err(source) => return Err(Error::Apply { kind: "Job".into(), name, source }),
        },
    };
    Ok(match jobs::state(&current) {
        JobState::Running => Files::Running(name),
        JobState::Succeeded => Files::Removed(format!("{ns}/{} on {}", mi.label(), build::storage_place(&ix))),
        JobState::Failed(why) => Files::NotRemoved(format!("cleanup Job {name} failed ({why})")),
    })
}

async fn delete_cleanup_job(mi: &MatchingIndex, ctx: &Context, ns: &str) -> Result<()> {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let sel = ListParams::default().labels(&format!("{LABEL_MI}={},{LABEL_COMPONENT}=cleanup", mi.name_any()));
    jobs.delete_collection(&DeleteParams::background(), &sel).await.map_err(|source| Error::Prune {
        kind: "Job".into(),
        name: format!("cleanup Job of {}", mi.name_any()),
        source,
    })?;
    Ok(())
}
