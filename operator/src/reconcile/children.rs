//! Apply the desired children of a MatchingIndex and delete, by label, those of its children
//! that are no longer desired (e.g. agents, their Services and the gateway once `spec.online`
//! is removed).

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{apply, not_found, Error, Result};
use crate::build::{children_selector, Children};

/// What syncing one kind did.
#[derive(Debug, Default)]
pub struct Synced<K> {
    /// The objects as the API server returned them after the apply, in the order wanted.
    pub applied: Vec<K>,
    /// Names applied that did not exist before.
    pub created: Vec<String>,
    /// Names deleted because they are no longer wanted.
    pub removed: Vec<String>,
}

/// Applies `want` and deletes the objects of kind `K` that `selector` selects (the children of
/// one owner) whose names are neither in `want` nor in `keep`.
pub async fn sync<K>(client: &Client, ns: &str, selector: &str, want: &[K], keep: &[String]) -> Result<Synced<K>>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let kind = K::kind(&()).to_string();
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let existing: Vec<String> = api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(Error::reading(format!("{kind}s selected by {selector}")))?
        .items
        .iter()
        .map(|o| o.name_any())
        .collect();
    let mut out = Synced { applied: Vec::new(), created: Vec::new(), removed: Vec::new() };
    for o in want {
        let name = o.name_any();
        let applied = apply(&api, &name, o).await.map_err(|source| Error::Apply {
            kind: kind.clone(),
            name: name.clone(),
            source,
        })?;
        if !existing.contains(&name) {
            out.created.push(name);
        }
        out.applied.push(applied);
    }
    for name in existing {
        if want.iter().any(|o| o.name_any() == name) || keep.contains(&name) {
            continue;
        }
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => out.removed.push(name),
            Err(e) if not_found(&e) => {}
            Err(source) => return Err(Error::Prune { kind, name, source }),
        }
    }
    Ok(out)
}

/// What syncing every kind did: the applied Deployments (for matcher readiness) and the names
/// created and removed, as `Kind/name`.
#[derive(Debug, Default)]
pub struct Outcome {
    pub deployments: Vec<k8s_openapi::api::apps::v1::Deployment>,
    pub created: Vec<String>,
    pub removed: Vec<String>,
}

/// Services first (agents find each other through theirs), then workloads, then budgets.
pub async fn sync_all(client: &Client, ns: &str, owner: &str, want: &Children) -> Result<Outcome> {
    let mut out = Outcome::default();
    let mut note = |kind: &str, created: Vec<String>, removed: Vec<String>| {
        out.created.extend(created.into_iter().map(|n| format!("{kind}/{n}")));
        out.removed.extend(removed.into_iter().map(|n| format!("{kind}/{n}")));
    };
    let owner = &children_selector(owner);
    let s = sync(client, ns, owner, &want.services, &[]).await?;
    note("Service", s.created, s.removed);
    let s = sync(client, ns, owner, &want.stateful_sets, &[]).await?;
    note("StatefulSet", s.created, s.removed);
    let d = sync(client, ns, owner, &want.deployments, &want.draining).await?;
    note("Deployment", d.created, d.removed);
    let s = sync(client, ns, owner, &want.disruption_budgets, &[]).await?;
    note("PodDisruptionBudget", s.created, s.removed);
    out.deployments = d.applied;
    Ok(out)
}
