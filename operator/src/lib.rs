//! kim-operator: runs kim on Kubernetes from two custom resources, `Indexer` and
//! `MatchingIndex`. Each reconcile is a pipeline validate → build (pure) → apply → status.

pub mod build;
pub mod context;
pub mod crd;
pub mod leader;
pub mod metrics;
pub mod online;
pub mod reconcile;
pub mod run;
pub mod status;
pub mod validate;
