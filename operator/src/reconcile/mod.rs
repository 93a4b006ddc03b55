//! Controllers. A MatchingIndex reconcile is a pipeline: dereference (its Indexer, Secrets and
//! build Job) → validate → decide the build → build the desired children (pure,
//! `crate::build`) → apply them and delete the ones no longer desired (`children`) → status.
//! Each step that can fail has its own [`Error`] variant; waiting for something is an
//! `Ok(Action::requeue(..))`, never an error.

pub mod autoscale;
pub mod children;
pub mod cleanup;
pub mod finalizer;
pub mod indexer;
pub mod jobs;
pub mod layout;
pub mod matching_index;
pub mod online;
pub mod pool;
pub mod redis;
pub mod refresh;
pub mod rollback;
pub mod served;
#[cfg(test)]
mod tests;

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::build::MANAGER;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading what the object refers to: its Indexer, Secrets, Jobs and their pods.
    #[error("reading {what}: {source}")]
    Dereference {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// Admitting a build: counting the Indexer's running builds or creating the Job.
    #[error("starting build Job {job}: {source}")]
    Build {
        job: String,
        #[source]
        source: kube::Error,
    },
    /// Server-side apply of a desired child.
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// Deleting a child that is no longer desired.
    #[error("deleting {kind} {name}, no longer desired: {source}")]
    Prune {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// Writing the status subresource.
    #[error("writing status of {name}: {source}")]
    Status {
        name: String,
        #[source]
        source: kube::Error,
    },
    /// Adding or removing the finalizer.
    #[error("{action} finalizer of {name}: {source}")]
    Finalizer {
        action: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// Deleting what a MatchingIndex leaves behind (children, Redis keys, files).
    #[error("cleanup: {0}")]
    Cleanup(String),
}

impl Error {
    /// A closure turning a kube error into a dereference error about `what`.
    pub fn reading(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let what = what.into();
        move |source| Error::Dereference { what, source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Server-side apply with the operator's field manager, taking ownership of the fields it sets.
pub async fn apply<K>(api: &Api<K>, name: &str, obj: &K) -> std::result::Result<K, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(obj)).await
}

/// The body of a status apply: the kind, and the status alone.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusPatch<'a, S> {
    api_version: String,
    kind: String,
    status: &'a S,
}

/// Server-side apply of `status` on the status subresource of `obj`.
pub async fn write_status<K, S>(api: &Api<K>, obj: &K, status: &S) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let patch = StatusPatch { api_version: K::api_version(&()).into(), kind: K::kind(&()).into(), status };
    api.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|source| Error::Status { name, source })?;
    Ok(())
}

/// True for a 404 from the API server.
pub fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_not_found())
}

/// Backoff for the n-th consecutive failure of one object: 1 s, 2 s, 4 s, … up to 5 min.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(8)).min(Duration::from_secs(300))
}
