//! Controllers. Each reconcile is validate → build (pure, `crate::build`) → apply (server-side
//! apply, one field manager) → status.

pub mod cleanup;
pub mod indexer;
pub mod jobs;
pub mod matching_index;

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::build::MANAGER;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Not a failure: a step is waiting for something (a cleanup Job, Redis) and asks to be
    /// called again soon.
    #[error("waiting: {0}")]
    Waiting(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Server-side apply with the operator's field manager, taking ownership of the fields it sets.
pub async fn apply<K>(api: &Api<K>, name: &str, obj: &K) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    Ok(api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(obj)).await?)
}

/// Backoff for the n-th consecutive failure of one object: 1 s, 2 s, 4 s, … up to 5 min.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(8)).min(Duration::from_secs(300))
}
