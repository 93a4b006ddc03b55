//! kim-operator: runs kim on Kubernetes from two custom resources, `Indexer` and
//! `MatchingIndex`. Each reconcile is a pipeline validate → build (pure) → apply → status.

pub mod crd;
