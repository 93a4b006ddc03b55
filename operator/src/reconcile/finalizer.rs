//! The finalizer of a MatchingIndex: added before anything is created, removed only once
//! the cleanup is done. A cleanup that waits (a Job running, Redis away) asks to be called
//! again; it is not an error.

use std::sync::Arc;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::ResourceExt;
use serde::Serialize;

use super::cleanup::{self, Progress, FINALIZER};
use super::{matching_index, Error, Result};
use crate::context::Context;
use crate::crd::MatchingIndex;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Finalizers {
    finalizers: Vec<String>,
    /// Makes the patch fail (409) if the object changed since it was read.
    resource_version: Option<String>,
}

#[derive(Debug, Serialize)]
struct MetadataPatch {
    metadata: Finalizers,
}

async fn set_finalizers(
    api: &Api<MatchingIndex>,
    mi: &MatchingIndex,
    finalizers: Vec<String>,
    action: &'static str,
) -> Result<()> {
    let patch =
        MetadataPatch { metadata: Finalizers { finalizers, resource_version: mi.metadata.resource_version.clone() } };
    api.patch(&mi.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| Error::Finalizer { action, name: mi.name_any(), source })?;
    Ok(())
}

/// Routes a MatchingIndex to its cleanup (being deleted) or its reconcile (finalizer first).
pub async fn reconcile(mi: Arc<MatchingIndex>, ctx: Arc<Context>) -> Result<Action> {
    let ns = mi.namespace().unwrap_or_default();
    let api: Api<MatchingIndex> = Api::namespaced(ctx.client.clone(), &ns);
    // The watch cache may not hold this operator's last status write yet, and the status is
    // the memory of every multi-step change (a build, an agent-set change): a decision on a
    // stale copy would redo a step or undo one. So decide on the object as stored now.
    let name = mi.name_any();
    let Some(mi) = api.get_opt(&name).await.map_err(Error::reading(format!("MatchingIndex {ns}/{name}")))? else {
        return Ok(Action::await_change());
    };
    let mi = Arc::new(mi);
    let has = mi.finalizers().iter().any(|f| f == FINALIZER);
    if mi.metadata.deletion_timestamp.is_some() {
        if !has {
            return Ok(Action::await_change());
        }
        return match cleanup::cleanup(&mi, &ctx).await? {
            Progress::Done => {
                let rest = mi.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
                set_finalizers(&api, &mi, rest, "removing").await?;
                ctx.forget(mi.as_ref());
                Ok(Action::await_change())
            }
            Progress::Wait(d) => Ok(Action::requeue(d)),
        };
    }
    if !has {
        let mut all = mi.finalizers().to_vec();
        all.push(FINALIZER.into());
        set_finalizers(&api, &mi, all, "adding").await?;
    }
    matching_index::apply_spec(mi, ctx).await
}
