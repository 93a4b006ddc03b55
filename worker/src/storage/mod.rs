//! Where snapshots live, behind one interface for builds, matchers and snapshot operations:
//! a directory (shared volume) or S3-compatible object storage.
//!
//! Layout, the same on both: `<root>/<namespace>/<label>/{CURRENT, PINNED, snapshots/<id>/...}`.
//! Matchers and tools read snapshots from a local directory: on files that is the storage
//! itself, on object storage a local cache the objects are downloaded into.

mod files;
mod s3;

use std::path::{Path, PathBuf};

use kim_index::snapshot::{self, Manifest, SnapshotError};

use crate::cli::StorageArgs;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("{0}")]
    Config(String),
    #[error("object storage: {0}")]
    Object(String),
}

/// The storage a command was pointed at.
pub enum Store {
    Files(files::Files),
    S3(s3::S3),
}

impl Store {
    pub fn open(a: &StorageArgs) -> Result<Store, StorageError> {
        if a.storage.is_empty() {
            return Err(StorageError::Config("--storage is empty".into()));
        }
        if a.storage.starts_with("s3://") {
            return Ok(Store::S3(s3::S3::open(&a.storage, a)?));
        }
        Ok(Store::Files(files::Files::new(PathBuf::from(&a.storage))))
    }

    /// How the storage is named in logs.
    pub fn describe(&self) -> String {
        match self {
            Store::Files(f) => f.root().display().to_string(),
            Store::S3(s) => s.url().to_string(),
        }
    }

    /// Labels, and shards of split labels (`<label>@shard-<I>-of-<N>`), with a CURRENT under
    /// the namespace.
    pub async fn labels(&self, namespace: &str) -> Result<Vec<String>, StorageError> {
        match self {
            Store::Files(f) => Ok(f.labels(namespace)),
            Store::S3(s) => s.labels(namespace).await,
        }
    }

    /// The id CURRENT names, if any.
    pub async fn current(&self, ns: &str, label: &str) -> Result<Option<String>, StorageError> {
        match self {
            Store::Files(f) => Ok(snapshot::current(&f.label_dir(ns, label))?),
            Store::S3(s) => s.current(ns, label).await,
        }
    }

    /// The snapshot a rollback pinned, if any.
    pub async fn pinned(&self, ns: &str, label: &str) -> Result<Option<String>, StorageError> {
        match self {
            Store::Files(f) => Ok(snapshot::pinned(&f.label_dir(ns, label))?),
            Store::S3(s) => s.pinned(ns, label).await,
        }
    }

    /// Snapshot ids of a label, oldest first.
    pub async fn list(&self, ns: &str, label: &str) -> Result<Vec<String>, StorageError> {
        match self {
            Store::Files(f) => Ok(snapshot::list(&f.label_dir(ns, label))?),
            Store::S3(s) => s.list(ns, label).await,
        }
    }

    /// Snapshot `id`'s manifest alone (checked as a reader checks it, files not fetched).
    pub async fn manifest(&self, ns: &str, label: &str, id: &str) -> Result<Manifest, SnapshotError> {
        match self {
            Store::Files(f) => snapshot::read_manifest(&f.label_dir(ns, label).join("snapshots").join(id), id),
            Store::S3(s) => s.manifest(ns, label, id).await,
        }
    }

    /// A local directory holding snapshot `id`'s files (on object storage: downloaded into the
    /// cache, files whose checksums already hold are reused). The caller verifies them.
    pub async fn fetch(&self, ns: &str, label: &str, id: &str) -> Result<PathBuf, SnapshotError> {
        match self {
            Store::Files(f) => Ok(f.label_dir(ns, label).join("snapshots").join(id)),
            Store::S3(s) => s.fetch(ns, label, id).await,
        }
    }

    /// Where a build writes a new snapshot before [`Store::put`] (the `snapshots/` parent's
    /// label directory).
    pub fn staging(&self, ns: &str, label: &str) -> PathBuf {
        match self {
            Store::Files(f) => f.label_dir(ns, label),
            Store::S3(s) => s.staging(ns, label),
        }
    }

    /// The local directory whose `deltas/` holds the label's deltas (see `kim_index::delta`):
    /// on files, the label directory itself, read and written by `refresh`, `index` and
    /// matchers alike. Object storage carries no deltas (`refresh` refuses it): the label's
    /// cache directory, where none appear.
    pub fn deltas_dir(&self, ns: &str, label: &str) -> PathBuf {
        match self {
            Store::Files(f) => f.label_dir(ns, label),
            Store::S3(s) => s.staging(ns, label),
        }
    }

    /// Whether `refresh` can write deltas here (only on files).
    pub fn takes_deltas(&self) -> bool {
        matches!(self, Store::Files(_))
    }

    /// Stores the complete, verified snapshot in local directory `sdir` as `id` (data files
    /// first, manifest last). A snapshot already stored under that id is left as it is.
    pub async fn put(&self, ns: &str, label: &str, id: &str, sdir: &Path) -> Result<(), StorageError> {
        match self {
            Store::Files(f) => Ok(f.put(ns, label, id, sdir)?),
            Store::S3(s) => s.put(ns, label, id, sdir).await,
        }
    }

    /// Points CURRENT at `id`.
    pub async fn publish(&self, ns: &str, label: &str, id: &str) -> Result<(), StorageError> {
        match self {
            Store::Files(f) => Ok(snapshot::publish(&f.label_dir(ns, label), id)?),
            Store::S3(s) => s.publish(ns, label, id).await,
        }
    }

    /// Pins `id`: garbage collection keeps it (one pin per label).
    pub async fn pin(&self, ns: &str, label: &str, id: &str) -> Result<(), StorageError> {
        match self {
            Store::Files(f) => Ok(snapshot::pin(&f.label_dir(ns, label), id)?),
            Store::S3(s) => s.pin(ns, label, id).await,
        }
    }

    /// Keeps the live, the pinned and the newest others up to `keep`; returns what went.
    pub async fn gc(&self, ns: &str, label: &str, keep: usize) -> Result<Vec<String>, StorageError> {
        match self {
            Store::Files(f) => Ok(snapshot::gc(&f.label_dir(ns, label), keep)?),
            Store::S3(s) => s.gc(ns, label, keep).await,
        }
    }

    /// Removes everything of a label; a label already gone is not an error. Returns what was
    /// removed, for the caller's summary.
    pub async fn remove_label(&self, ns: &str, label: &str) -> Result<String, StorageError> {
        match self {
            Store::Files(f) => Ok(f.remove_label(ns, label)?),
            Store::S3(s) => s.remove_label(ns, label).await,
        }
    }
}
