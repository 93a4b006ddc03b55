//! An Indexer's matcher pool: one Deployment whose matchers serve every label that opted in
//! (`kim-worker match --pool`), reading which from a Redis set the operator keeps.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::matcher::matcher_pod;
use super::pod;
use super::{storage_args, Defaults, LABEL_COMPONENT, LABEL_INDEXER, LABEL_MANAGED_BY, MANAGER, MATCHER_PORT};
use crate::crd::{Indexer, PoolSpec};

/// The pool's Deployment (and disruption budget) name.
pub fn pool_name(ix: &Indexer) -> String {
    format!("{}-pool", ix.name_any())
}

/// The pool's name in Redis (`kim_api::pool_key`): namespace and Indexer, so two namespaces
/// sharing one Redis never share a pool.
pub fn pool_id(ix: &Indexer) -> String {
    format!("{}/{}", ix.namespace().unwrap_or_default(), ix.name_any())
}

fn pool_labels(ix: &Indexer) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.into(), MANAGER.into()),
        ("app.kubernetes.io/name".into(), "kim".into()),
        ("app.kubernetes.io/component".into(), "pool".into()),
        (LABEL_INDEXER.into(), ix.name_any()),
        (LABEL_COMPONENT.into(), "pool".into()),
    ])
}

fn pool_selector(ix: &Indexer) -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_INDEXER.into(), ix.name_any()), (LABEL_COMPONENT.into(), "pool".into())])
}

/// Label selector of an Indexer's pool objects (to delete them once `spec.pool` is removed).
pub fn pool_object_selector(ix: &Indexer) -> String {
    format!("{LABEL_INDEXER}={},{LABEL_COMPONENT}=pool,{LABEL_MANAGED_BY}={MANAGER}", ix.name_any())
}

/// `kim-worker match --pool` arguments over the Indexer's storage.
pub fn pool_args(ix: &Indexer, pool: &PoolSpec) -> Vec<String> {
    let ns = ix.namespace().unwrap_or_default();
    let mut a: Vec<String> =
        ["match", "--namespace", &ns, "--pool", &pool_id(ix), "--http"].iter().map(|x| x.to_string()).collect();
    a.push(format!("0.0.0.0:{MATCHER_PORT}"));
    a.extend(storage_args(ix));
    if let Some(p) = &pool.redis.key_prefix {
        a.extend(["--prefix".into(), p.clone()]);
    }
    if let Some(t) = pool.threads {
        a.extend(["--threads".into(), t.to_string()]);
    }
    a
}

/// The pool's Deployment and disruption budget (one pod at a time), owned by the Indexer;
/// none without `spec.pool`.
pub fn pool_objects(ix: &Indexer, d: &Defaults) -> Option<(Deployment, PodDisruptionBudget)> {
    let pool = ix.spec.pool.as_ref()?;
    let lbl = pool_labels(ix);
    let template = matcher_pod(ix, d, &pool.redis, pool_args(ix, pool), pool.resources.clone(), lbl.clone());
    let owner = Some(pod::owner_ref(ix));
    let deployment = Deployment {
        metadata: pod::meta(pool_name(ix), ix.namespace(), &lbl, owner.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(pool.replicas),
            selector: pod::selector(pool_selector(ix)),
            template,
            ..Default::default()
        }),
        ..Default::default()
    };
    let pdb = PodDisruptionBudget {
        metadata: pod::meta(pool_name(ix), ix.namespace(), &lbl, owner),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(pod::selector(pool_selector(ix))),
            ..Default::default()
        }),
        ..Default::default()
    };
    Some((deployment, pdb))
}
