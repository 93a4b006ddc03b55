//! `kim-operator --release-finalizers`: what the chart's post-delete hook runs after `helm
//! uninstall`. With no operator left, the `kim.dev/cleanup` finalizer of a MatchingIndex would
//! never be removed, and deleting it (or its namespace) would hang. This lets go of every such
//! finalizer once no operator can act any more: it waits until it can take the operator's
//! Lease (the uninstalled replicas released it or let it expire), so no replica still running
//! can add a finalizer back, then removes them and records a Normal Event on each. Files and
//! Redis keys stay, as `deletionPolicy: Retain` would leave them; an operator installed again
//! adds its finalizer back on its first reconcile.

use std::time::Duration;

use anyhow::Context as _;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;

use crate::context::Context;
use crate::crd::MatchingIndex;
use crate::leader::Elector;
use crate::reconcile::cleanup::FINALIZER;

/// Releases every MatchingIndex (in `namespace`, or all) from kim's finalizer; returns how many.
pub async fn run(ctx: &Context, elector: &Elector, namespace: Option<&str>, wait: Duration) -> anyhow::Result<usize> {
    tokio::time::timeout(wait, elector.acquire())
        .await
        .with_context(|| format!("an operator still holds its Lease after {wait:?}; is it still installed?"))??;
    let released = release_all(ctx, namespace).await;
    elector.release().await;
    released
}

async fn release_all(ctx: &Context, namespace: Option<&str>) -> anyhow::Result<usize> {
    let api: Api<MatchingIndex> = match namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let mut released = 0;
    for mi in api.list(&ListParams::default()).await.context("listing MatchingIndexes")? {
        let finalizers = mi.finalizers();
        if !finalizers.iter().any(|f| f == FINALIZER) {
            continue;
        }
        let rest: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
        // resourceVersion makes the patch conditional: a concurrent change fails it loudly.
        let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": mi.resource_version()}});
        let ns = mi.namespace().unwrap_or_default();
        Api::<MatchingIndex>::namespaced(ctx.client.clone(), &ns)
            .patch(&mi.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("removing the finalizer of MatchingIndex {ns}/{}", mi.name_any()))?;
        let note = "kim was uninstalled: its finalizer is released, so deleting this MatchingIndex or its \
                    namespace no longer waits; its snapshot files and Redis keys are kept. Install kim again \
                    to manage it";
        ctx.event(&mi, false, "FinalizerReleased", "Uninstall", note.into()).await;
        tracing::info!(matching_index = %format!("{ns}/{}", mi.name_any()), "finalizer released");
        released += 1;
    }
    Ok(released)
}
