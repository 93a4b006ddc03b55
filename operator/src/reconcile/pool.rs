//! Matcher pools: an Indexer with `spec.pool` runs one Deployment of matchers that serve every
//! label whose MatchingIndex sets `matcher.pool`. Which labels, the pool's matchers read from a
//! Redis set (`kim_api::pool_key`) that the operator keeps: a label joins once it has a
//! snapshot to serve and leaves when it opts out or its MatchingIndex is deleted.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;

use super::children;
use super::redis::{self as store, Problem};
use super::Result;
use crate::build;
use crate::context::Context;
use crate::crd::{Indexer, MatchingIndex, MatchingIndexStatus, PoolStatus};

/// Applies the Indexer's pool (or deletes it once `spec.pool` is gone); returns its status,
/// `labels` being how many MatchingIndexes opted in.
pub async fn sync(ix: &Indexer, ctx: &Context, ns: &str, labels: i32) -> Result<Option<PoolStatus>> {
    let selector = build::pool_object_selector(ix);
    let (deployments, budgets): (Vec<Deployment>, Vec<PodDisruptionBudget>) =
        build::pool_objects(ix, &ctx.defaults).into_iter().unzip();
    let applied = children::sync(&ctx.client, ns, &selector, &deployments, &[]).await?;
    children::sync(&ctx.client, ns, &selector, &budgets, &[]).await?;
    Ok(applied.applied.first().map(|d| {
        let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let ready = d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0).min(desired);
        PoolStatus { deployment: d.name_any(), ready, desired, labels }
    }))
}

/// Puts the label in its Indexer's pool once it has a snapshot (again every reconcile: the
/// set may have been lost with a Redis restart), or takes it out of the pool it was in when
/// it opted out. `status.pool` records where it is.
pub async fn membership(mi: &MatchingIndex, ix: &Indexer, ctx: &Context, ns: &str, st: &mut MatchingIndexStatus) {
    let want = (mi.spec.matcher.pool && st.current_snapshot.is_some()).then(|| build::pool_id(ix));
    if want.is_none() && st.pool.is_none() {
        return;
    }
    let outcome = match (&want, &st.pool) {
        (Some(pool), _) => edit(mi, ctx, ns, "SADD", pool).await,
        (None, Some(old)) => edit(mi, ctx, ns, "SREM", old).await,
        (None, None) => Ok(()),
    };
    match outcome {
        Ok(()) => {
            if st.pool != want {
                let note = match &want {
                    Some(p) => format!("label {} added to matcher pool {p}", mi.label()),
                    None => format!("label {} left matcher pool {}", mi.label(), st.pool.as_deref().unwrap_or("")),
                };
                ctx.event(mi, false, "PoolMembership", "Pool", note).await;
            }
            st.pool = want;
        }
        // The pool then does not serve the label yet (or still does): status shows it through
        // the matchers count; the next reconcile tries again.
        Err(p) => tracing::warn!(label = %mi.label(), problem = %p, "cannot update the matcher pool's labels"),
    }
}

/// Takes a deleted MatchingIndex's label out of its pool.
pub async fn leave(mi: &MatchingIndex, ctx: &Context, ns: &str, pool: &str) -> std::result::Result<(), Problem> {
    edit(mi, ctx, ns, "SREM", pool).await
}

async fn edit(mi: &MatchingIndex, ctx: &Context, ns: &str, verb: &str, pool: &str) -> std::result::Result<(), Problem> {
    let key = kim_api::pool_key(&mi.spec.redis.key_prefix.clone().unwrap_or_default(), pool);
    let label = mi.label();
    store::run(mi, ctx, ns, store::READ_BOUND, |mut conn| async move {
        redis::cmd(verb).arg(&key).arg(&label).query_async::<i64>(&mut conn).await.map(|_| ())
    })
    .await
}
