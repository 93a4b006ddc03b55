//! Changing a label's split (`spec.shards`) without a failed request. The matchers follow the
//! layout of the *served* snapshot, so nothing changes while the new layout builds. Once it is
//! served, its matcher Deployments (new names: `<name>-matcher-<I>-of-<N>`) start beside the
//! old layout's, which are left as they are and keep answering; both read the label's stream,
//! each layout in its own consumer groups, and the matchers' reply gate lets one reply out per
//! request. When every Deployment of the new layout has all its matchers ready, the old ones
//! are deleted (their pods finish what they hold) and their consumer groups destroyed, so a
//! later return to that layout starts its groups afresh.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::ResourceExt;

use super::{Error, Result};
use crate::build::{self, Children, Shard, LABEL_COMPONENT, LABEL_SHARDS};
use crate::context::Context;
use crate::crd::{MatchingIndex, MatchingIndexStatus};

/// A switch between layouts in progress: the old layout still serves.
#[derive(Debug, Clone, PartialEq)]
pub struct Switch {
    pub from: i32,
    pub to: i32,
    /// Deployments of the new layout with all their matchers ready, of `to`.
    pub ready: usize,
}

impl Switch {
    pub fn message(&self) -> String {
        format!(
            "switching from {} to {}: the {} matchers answer until every one of the {} is ready ({}/{} shard Deployments ready)",
            shards(self.from),
            shards(self.to),
            shards(self.from),
            shards(self.to),
            self.ready,
            self.to
        )
    }
}

fn shards(n: i32) -> String {
    if n > 1 {
        format!("{n} shards")
    } else {
        "1 shard (unsplit)".into()
    }
}

/// The layout a matcher Deployment or pod serves (its `kim.dev/shards` label; none: unsplit).
pub fn layout_of(o: &impl ResourceExt) -> i32 {
    o.labels().get(LABEL_SHARDS).and_then(|v| v.parse().ok()).unwrap_or(1)
}

/// Every replica wanted is ready and up to date.
fn all_ready(d: &Deployment) -> bool {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = d.status.as_ref();
    let ready = st.and_then(|s| s.ready_replicas).unwrap_or(0);
    let updated = st.and_then(|s| s.updated_replicas).unwrap_or(0);
    let current = st.and_then(|s| s.observed_generation) == d.metadata.generation;
    current && ready >= want && updated >= want
}

/// Decides over the MatchingIndex's matcher Deployments as they are (`existing`) whether the
/// other layouts' Deployments stay (`want.draining`, with the switch in progress) or go.
/// Returns the switch while one is in progress, and the layouts to retire (their groups to
/// destroy) once it is over.
pub fn decide(
    mi: &MatchingIndex,
    shards: i32,
    existing: &[Deployment],
    want: &mut Children,
) -> (Option<Switch>, Vec<i32>) {
    let wanted: Vec<String> = Shard::all(shards).map(|s| build::shard_deployment_name(mi, s)).collect();
    let old: Vec<&Deployment> = existing.iter().filter(|d| !wanted.contains(&d.name_any())).collect();
    let Some(first) = old.first() else { return (None, Vec::new()) };
    let ready = wanted.iter().filter(|n| existing.iter().any(|d| d.name_any() == **n && all_ready(d))).count();
    if ready < wanted.len() {
        want.draining = old.iter().map(|d| d.name_any()).collect();
        return (Some(Switch { from: layout_of(*first), to: shards.max(1), ready }), Vec::new());
    }
    let mut retired: Vec<i32> = old.iter().map(|d| layout_of(*d)).collect();
    retired.sort_unstable();
    retired.dedup();
    (None, retired)
}

/// The consumer groups of a layout.
fn groups(shards: i32) -> Vec<String> {
    Shard::all(shards).map(|s| s.group()).collect()
}

/// Lists the matcher Deployments, decides (see [`decide`]) and records the switch's start and
/// end in Events. Once no switch is in progress, the consumer groups on the label's stream
/// that belong to another layout are retired: listed in `status.retiredGroups` and destroyed
/// once none of that layout's matcher pods is left (a matcher still running would create its
/// group again). The stream, not status, says which groups are left, so a status written from
/// a stale copy of the object cannot lose one. A group left behind would only make a later
/// return to that layout replay old entries, which the reply gate keeps from being answered
/// twice.
pub async fn step(
    mi: &MatchingIndex,
    ctx: &Context,
    ns: &str,
    shards: i32,
    want: &mut Children,
    st: &mut MatchingIndexStatus,
) -> Result<Option<Switch>> {
    let selector = format!("{},{LABEL_COMPONENT}=matcher", build::children_selector(&mi.name_any()));
    let listed = ListParams::default().labels(&selector);
    let existing = Api::<Deployment>::namespaced(ctx.client.clone(), ns)
        .list(&listed)
        .await
        .map_err(Error::reading(format!("matcher Deployments of {}", mi.name_any())))?
        .items;
    let (switch, retired) = decide(mi, shards, &existing, want);
    if let Some(s) = &switch {
        ctx.event(mi, false, "SwitchingShards", "Scale", s.message()).await;
        return Ok(switch);
    }
    for from in retired {
        let note = format!(
            "every matcher of the {} is ready; the {} matchers are removed",
            self::shards(shards),
            self::shards(from)
        );
        ctx.event(mi, false, "ShardsSwitched", "Scale", note).await;
        st.retired_groups.extend(groups(from));
    }
    let serving = groups(shards);
    match super::redis::matcher_groups(mi, ctx, ns).await {
        Ok(on_stream) => st.retired_groups = on_stream,
        Err(e) => tracing::warn!(label = %mi.label(), problem = %e, "cannot list the consumer groups of the stream"),
    }
    st.retired_groups.retain(|g| !serving.contains(g));
    st.retired_groups.sort();
    st.retired_groups.dedup();
    if st.retired_groups.is_empty() {
        return Ok(None);
    }
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .list(&listed)
        .await
        .map_err(Error::reading(format!("matcher pods of {}", mi.name_any())))?
        .items;
    if pods.iter().any(|p| layout_of(p) != shards.max(1)) {
        return Ok(None);
    }
    match super::redis::destroy_groups(mi, ctx, ns, &st.retired_groups).await {
        Ok(()) => st.retired_groups.clear(),
        Err(e) => {
            let note = format!(
                "cannot destroy consumer groups {} of the retired layout yet: {e}",
                st.retired_groups.join(", ")
            );
            ctx.event(mi, true, "ShardsSwitched", "Scale", note).await;
        }
    }
    Ok(None)
}
