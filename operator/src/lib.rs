//! kim-operator: runs kim on Kubernetes from two custom resources, `Indexer` and
//! `MatchingIndex`. Each reconcile is a pipeline dereference → validate → build the desired
//! children (pure) → apply them and delete the undesired → status.

pub mod build;
pub mod context;
pub mod crd;
pub mod leader;
pub mod metrics;
pub mod online;
pub mod reconcile;
pub mod release;
pub mod run;
pub mod status;
#[cfg(test)]
mod testing;
pub mod validate;
