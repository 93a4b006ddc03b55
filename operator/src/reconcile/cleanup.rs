//! Finalizer of a MatchingIndex: delete its children, its Redis keys and its files.
//!
//! Children are deleted explicitly by label (not only left to owner-reference garbage
//! collection) so nothing lingers even where no garbage collector runs. Files are removed by a
//! short Job that mounts the Indexer's claim, because the operator mounts no storage.
//! Annotate `kim.dev/skip-cleanup: "true"` to let a deletion through when Redis or the storage
//! is gone for good.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::ResourceExt;

use super::jobs::{self, JobState};
use super::{apply, Error, Result};
use crate::build::{self, LABEL_MI};
use crate::context::Context;
use crate::crd::{Indexer, MatchingIndex};

pub const FINALIZER: &str = "kim.dev/cleanup";
pub const SKIP_ANNOTATION: &str = "kim.dev/skip-cleanup";

pub async fn cleanup(mi: &MatchingIndex, ctx: &Context) -> Result<Action> {
    let ns = mi.namespace().unwrap_or_default();
    let skip = mi.annotations().get(SKIP_ANNOTATION).is_some_and(|v| v == "true");
    delete_children(mi, ctx, &ns).await?;
    if !skip {
        clean_redis(mi, ctx, &ns).await?;
        clean_files(mi, ctx, &ns).await?;
    }
    ctx.event(mi, false, "CleanedUp", "Delete", format!("removed children{} of label {}", if skip { "" } else { ", Redis keys and files" }, mi.label())).await;
    Ok(Action::await_change())
}

async fn delete_children(mi: &MatchingIndex, ctx: &Context, ns: &str) -> Result<()> {
    let sel = ListParams::default().labels(&format!("{LABEL_MI}={}", mi.name_any()));
    let dp = DeleteParams::background();
    let c = ctx.client.clone();
    Api::<Deployment>::namespaced(c.clone(), ns).delete_collection(&dp, &sel).await?;
    Api::<StatefulSet>::namespaced(c.clone(), ns).delete_collection(&dp, &sel).await?;
    let jobs: Api<Job> = Api::namespaced(c.clone(), ns);
    let not_cleanup = ListParams::default().labels(&format!("{LABEL_MI}={},{}!=cleanup", mi.name_any(), build::LABEL_COMPONENT));
    jobs.delete_collection(&dp, &not_cleanup).await?;
    // Services have no deletecollection in every API version: delete one by one.
    let svcs: Api<Service> = Api::namespaced(c, ns);
    for s in svcs.list(&sel).await?.items {
        svcs.delete(&s.name_any(), &dp).await?;
    }
    Ok(())
}

async fn redis_url(mi: &MatchingIndex, ctx: &Context, ns: &str) -> Result<String> {
    if let Some(u) = &mi.spec.redis.url {
        return Ok(u.clone());
    }
    let r = mi.spec.redis.secret_ref.as_ref().ok_or_else(|| Error::Other("no redis settings".into()))?;
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), ns).get(&r.name).await?;
    let bytes = secret.data.as_ref().and_then(|d| d.get(&r.key)).ok_or_else(|| Error::Other(format!("secret {} has no key {}", r.name, r.key)))?;
    String::from_utf8(bytes.0.clone()).map_err(|_| Error::Other("redis URL in secret is not UTF-8".into()))
}

/// Deletes the label's stream and every registry key of it.
async fn clean_redis(mi: &MatchingIndex, ctx: &Context, ns: &str) -> Result<()> {
    let url = redis_url(mi, ctx, ns).await?;
    let prefix = mi.spec.redis.key_prefix.clone().unwrap_or_default();
    let label = mi.label();
    let work = async {
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let pattern = kim_api::registry_pattern(&prefix, &label);
        let mut keys: Vec<String> = vec![kim_api::stream_key(&prefix, &label)];
        let mut cursor = 0u64;
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).query_async(&mut conn).await?;
            keys.extend(found);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        redis::cmd("DEL").arg(&keys).query_async::<()>(&mut conn).await?;
        Ok::<usize, redis::RedisError>(keys.len())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), work).await {
        Ok(Ok(n)) => {
            tracing::info!(label, keys = n, "removed Redis keys");
            Ok(())
        }
        Ok(Err(e)) => Err(Error::Waiting(format!("Redis cleanup of label {label}: {e}"))),
        Err(_) => Err(Error::Waiting(format!("Redis cleanup of label {label}: timed out"))),
    }
}

/// Runs the cleanup Job to completion, then deletes it.
async fn clean_files(mi: &MatchingIndex, ctx: &Context, ns: &str) -> Result<()> {
    let Some(ix) = Api::<Indexer>::namespaced(ctx.client.clone(), ns).get_opt(&mi.spec.indexer_ref.name).await? else {
        ctx.event(mi, true, "CleanupSkipped", "Delete", format!("Indexer {} is gone; index files of label {} were not removed", mi.spec.indexer_ref.name, mi.label())).await;
        return Ok(());
    };
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let job = build::cleanup_job(mi, &ix, &ctx.defaults);
    let name = job.name_any();
    let current = match jobs_api.get_opt(&name).await? {
        Some(j) => j,
        None => apply(&jobs_api, &name, &job).await?,
    };
    match jobs::state(&current) {
        JobState::Running => Err(Error::Waiting(format!("cleanup Job {name} running"))),
        JobState::Succeeded => {
            jobs_api.delete(&name, &DeleteParams::background()).await?;
            Ok(())
        }
        JobState::Failed(why) => {
            ctx.event(mi, true, "CleanupFailed", "Delete", format!("cleanup Job {name} failed ({why}); files of label {} may remain", mi.label())).await;
            jobs_api.delete(&name, &DeleteParams::background()).await?;
            Ok(())
        }
    }
}
