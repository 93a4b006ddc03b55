//! Indexer: own the storage claim, report build slots in use and who is waiting for one.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::ResourceExt;

use super::{apply, jobs, write_status, Error, Result};
use crate::build;
use crate::context::Context;
use crate::crd::{Indexer, MatchingIndex};
use crate::{status, validate};

pub async fn reconcile(ix: Arc<Indexer>, ctx: Arc<Context>) -> Result<Action> {
    let ns = ix.namespace().unwrap_or_default();
    let gen = ix.metadata.generation;
    let mut st = ix.status.clone().unwrap_or_default();
    let valid = validate::indexer(&ix.spec);
    match &valid {
        Err(e) => {
            if status::get(&st.conditions, "Ready").is_none_or(|c| c.message != e.0) {
                ctx.event(ix.as_ref(), true, "InvalidSpec", "Validate", e.0.clone()).await;
            }
            status::set(&mut st.conditions, "Ready", false, "InvalidSpec", e.0.clone(), gen);
        }
        Ok(_) => {
            if let Some(pvc) = build::indexer_pvc(&ix) {
                let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
                let name = pvc.name_any();
                let existing = api.get_opt(&name).await.map_err(Error::reading(format!("claim {ns}/{name}")))?;
                if existing.is_none() {
                    ctx.event(
                        ix.as_ref(),
                        false,
                        "ClaimCreated",
                        "Provision",
                        format!("creating storage claim {name}"),
                    )
                    .await;
                }
                apply(&api, &name, &pvc).await.map_err(|source| Error::Apply {
                    kind: "PersistentVolumeClaim".into(),
                    name: name.clone(),
                    source,
                })?;
            }
            st.storage_claim = build::storage_claim(&ix);
            let ready = match build::object_storage(&ix) {
                Some(s3) => format!("object storage {}", s3.url),
                None => "storage claim in place".to_string(),
            };
            status::set(&mut st.conditions, "Ready", true, "Ready", ready, gen);
        }
    }
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let sel = format!("{}={},{}=build", build::LABEL_INDEXER, ix.name_any(), build::LABEL_COMPONENT);
    st.active = jobs_api
        .list(&ListParams::default().labels(&sel))
        .await
        .map_err(Error::reading(format!("build Jobs of Indexer {ns}/{}", ix.name_any())))?
        .items
        .iter()
        .filter(|j| jobs::is_running(j))
        .map(|j| j.name_any())
        .collect();
    let mis: Api<MatchingIndex> = Api::namespaced(ctx.client.clone(), &ns);
    let mis = mis.list(&ListParams::default()).await.map_err(Error::reading(format!("MatchingIndexes in {ns}")))?;
    let mine: Vec<&MatchingIndex> = mis
        .items
        .iter()
        .filter(|m| m.spec.indexer_ref.name == ix.name_any() && m.metadata.deletion_timestamp.is_none())
        .collect();
    st.queued = mine
        .iter()
        .filter(|m| m.status.as_ref().and_then(|s| s.current_build.as_ref()).is_some_and(|b| b.queued))
        .map(|m| m.name_any())
        .collect();
    let pooled = mine.iter().filter(|m| m.spec.matcher.pool).count() as i32;
    if valid.is_ok() {
        st.pool = super::pool::sync(&ix, &ctx, &ns, pooled).await?;
    }
    st.active_builds = st.active.len() as i32;
    st.queued_builds = st.queued.len() as i32;
    write_status(&Api::<Indexer>::namespaced(ctx.client.clone(), &ns), ix.as_ref(), &st).await?;
    ctx.metrics.index.observe_queue(&ns, &ix.name_any(), &st.queued);
    Ok(Action::requeue(Duration::from_secs(if st.active.is_empty() && st.queued.is_empty() { 60 } else { 5 })))
}
