//! Snapshots in S3-compatible object storage, `s3://bucket/prefix`, through `object_store`.
//!
//! Keys mirror the file layout under the prefix. A build uploads a snapshot's data files, then
//! its manifest, then replaces CURRENT with a conditional put (If-Match on the version it read,
//! If-None-Match for the first one). Matchers download into a local cache directory, verify
//! checksums and load from there; cached files whose checksums still hold are not downloaded
//! again (across restarts too). The cache keeps at most two snapshots per label.

use std::path::{Path as LocalPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kim_index::snapshot::{self, FileSum, Manifest, SnapshotError};
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, RetryConfig, UpdateVersion};
use tokio::io::AsyncWriteExt;

use super::StorageError;
use crate::cli::StorageArgs;
use kim_api::shard::valid_storage_name as valid_name;

pub struct S3 {
    store: Arc<dyn ObjectStore>,
    url: String,
    prefix: Path,
    cache: PathBuf,
}

fn object_err(e: object_store::Error) -> StorageError {
    StorageError::Object(e.to_string())
}

impl S3 {
    /// `url` is `s3://bucket[/prefix]`; endpoint, region, TLS and cache from the flags,
    /// credentials from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`).
    pub fn open(url: &str, a: &StorageArgs) -> Result<S3, StorageError> {
        let rest = url.strip_prefix("s3://").unwrap_or(url);
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StorageError::Config(format!("{url}: no bucket (expected s3://bucket/prefix)")));
        }
        let prefix_text = prefix.trim_matches('/');
        let prefix = Path::parse(prefix_text).map_err(|e| StorageError::Config(format!("{url}: prefix: {e}")))?;
        if let Some(e) = &a.s3_endpoint {
            match e.split_once("://").map(|(scheme, _)| scheme) {
                Some("https") => {}
                Some("http") if a.s3_allow_http => {}
                Some("http") => {
                    return Err(StorageError::Config(format!(
                        "--s3-endpoint {e} is plain http: pass --s3-allow-http to allow it"
                    )))
                }
                _ => return Err(StorageError::Config(format!("--s3-endpoint {e} is not an http(s):// URL"))),
            }
        }
        // reqwest is built without a TLS provider of its own: rustls uses ring, process-wide.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut client = ClientOptions::new().with_allow_http(a.s3_allow_http).with_timeout(Duration::from_secs(300));
        if let Some(ca) = &a.s3_ca {
            let pem = std::fs::read(ca).map_err(|e| StorageError::Config(format!("{}: {e}", ca.display())))?;
            let certs = object_store::Certificate::from_pem_bundle(&pem)
                .map_err(|e| StorageError::Config(format!("{}: {e}", ca.display())))?;
            if certs.is_empty() {
                return Err(StorageError::Config(format!("{}: no PEM certificate", ca.display())));
            }
            for c in certs {
                client = client.with_root_certificate(c);
            }
        }
        let retry = RetryConfig { max_retries: 3, retry_timeout: Duration::from_secs(30), backoff: Default::default() };
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket).with_client_options(client).with_retry(retry);
        if let Some(e) = &a.s3_endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(r) = &a.s3_region {
            b = b.with_region(r);
        }
        let store = b.build().map_err(|e| StorageError::Config(format!("{url}: {e}")))?;
        // Without --cache-dir: one directory per bucket and prefix, so two storages never
        // share cached snapshots.
        let cache = a
            .cache_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("kim-cache").join(bucket).join(prefix_text));
        Ok(S3 { store: Arc::new(store), url: url.to_string(), prefix, cache })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn key(&self, parts: &[&str]) -> Path {
        parts.iter().fold(self.prefix.clone(), |p, part| p.clone().join(*part))
    }

    /// Children one level below `parts` (like directory names).
    async fn children(&self, parts: &[&str]) -> Result<Vec<String>, StorageError> {
        let listed = self.store.list_with_delimiter(Some(&self.key(parts))).await.map_err(object_err)?;
        let mut v: Vec<String> =
            listed.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_string)).collect();
        v.sort();
        Ok(v)
    }

    pub async fn labels(&self, ns: &str) -> Result<Vec<String>, StorageError> {
        let mut out = Vec::new();
        for label in self.children(&[ns]).await?.into_iter().filter(|l| valid_name(l)) {
            match self.store.head(&self.key(&[ns, &label, "CURRENT"])).await {
                Ok(_) => out.push(label),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(object_err(e)),
            }
        }
        Ok(out)
    }

    /// The id in a small object (CURRENT, PINNED) and the version to update it from.
    async fn read_id(&self, key: &Path) -> Result<(Option<String>, Option<UpdateVersion>), StorageError> {
        match self.store.get(key).await {
            Ok(r) => {
                let version = UpdateVersion { e_tag: r.meta.e_tag.clone(), version: r.meta.version.clone() };
                let bytes = r.bytes().await.map_err(object_err)?;
                let id = String::from_utf8_lossy(&bytes).trim().to_string();
                Ok((Some(id).filter(|s| !s.is_empty()), Some(version)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok((None, None)),
            Err(e) => Err(object_err(e)),
        }
    }

    pub async fn current(&self, ns: &str, label: &str) -> Result<Option<String>, StorageError> {
        Ok(self.read_id(&self.key(&[ns, label, "CURRENT"])).await?.0)
    }

    pub async fn pinned(&self, ns: &str, label: &str) -> Result<Option<String>, StorageError> {
        Ok(self.read_id(&self.key(&[ns, label, "PINNED"])).await?.0)
    }

    /// Ids with at least one object under `snapshots/<id>/`, oldest first. Objects, not
    /// common prefixes: some servers keep listing a "directory" after its last object went.
    pub async fn list(&self, ns: &str, label: &str) -> Result<Vec<String>, StorageError> {
        let root = self.key(&[ns, label, "snapshots"]);
        let depth = root.parts().count();
        let keys: Vec<Path> =
            self.store.list(Some(&root)).map_ok(|m| m.location).try_collect().await.map_err(object_err)?;
        let mut ids: Vec<String> = keys
            .iter()
            .filter_map(|k| k.parts().nth(depth).map(|p| p.as_ref().to_string()))
            .filter(|i| snapshot::valid_id(i))
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    pub async fn manifest(&self, ns: &str, label: &str, id: &str) -> Result<Manifest, SnapshotError> {
        let unavailable = |reason: String| SnapshotError::Unavailable { id: id.to_string(), reason };
        if !snapshot::valid_id(id) {
            return Err(SnapshotError::Corrupt { id: id.to_string(), reason: format!("invalid snapshot id {id:?}") });
        }
        let r = self
            .store
            .get(&self.key(&[ns, label, "snapshots", id, "manifest.json"]))
            .await
            .map_err(|e| unavailable(format!("manifest.json: {e}")))?;
        let bytes = r.bytes().await.map_err(|e| unavailable(format!("manifest.json: {e}")))?;
        snapshot::parse_manifest(&bytes, id)
    }

    pub fn staging(&self, ns: &str, label: &str) -> PathBuf {
        snapshot::label_dir(&self.cache, ns, label)
    }

    /// Downloads snapshot `id` into the cache (files whose checksums hold are kept) and
    /// returns its local directory. Missing objects and transfer failures are retryable.
    pub async fn fetch(&self, ns: &str, label: &str, id: &str) -> Result<PathBuf, SnapshotError> {
        let unavailable = |reason: String| SnapshotError::Unavailable { id: id.to_string(), reason };
        if !snapshot::valid_id(id) {
            return Err(SnapshotError::Corrupt { id: id.to_string(), reason: format!("invalid snapshot id {id:?}") });
        }
        let snaps = self.staging(ns, label).join("snapshots");
        let local = snaps.join(id);
        std::fs::create_dir_all(&local).map_err(|e| unavailable(format!("{}: {e}", local.display())))?;
        let started = Instant::now();
        let key = |name: &str| self.key(&[ns, label, "snapshots", id, name]);
        let mbytes = match self.store.get(&key("manifest.json")).await {
            Ok(r) => r.bytes().await.map_err(|e| unavailable(format!("manifest.json: {e}")))?,
            Err(e) => return Err(unavailable(format!("manifest.json: {e}"))),
        };
        write_atomic(&local.join("manifest.json"), &mbytes).await.map_err(unavailable)?;
        let m = snapshot::read_manifest(&local, id)?;
        let (mut fetched, mut reused) = (0u64, 0usize);
        for name in snapshot::file_names().into_iter().filter(|n| *n != "manifest.json") {
            let path = local.join(name);
            let sum = m.files.get(name).cloned().ok_or_else(|| SnapshotError::Corrupt {
                id: id.to_string(),
                reason: format!("manifest lists no {name}"),
            })?;
            let (p, want) = (path.clone(), sum.clone());
            if tokio::task::spawn_blocking(move || holds(&p, &want)).await.unwrap_or(false) {
                reused += 1;
                continue;
            }
            fetched += match self.download(&key(name), &path, sum.bytes).await {
                Ok(n) => n,
                Err(Fetch::TooLong) => {
                    let reason = format!("{name} is longer than the manifest's {} bytes", sum.bytes);
                    return Err(SnapshotError::Corrupt { id: id.to_string(), reason });
                }
                Err(Fetch::Failed(e)) => return Err(unavailable(format!("{name}: {e}"))),
            };
        }
        tracing::info!(
            label,
            snapshot = id,
            bytes = fetched,
            reused,
            secs = started.elapsed().as_secs_f64(),
            "snapshot fetched from object storage"
        );
        prune_cache(&snaps, id);
        Ok(local)
    }

    /// Streams one object into `path` (through a temp file renamed into place), stopping as
    /// soon as it passes `limit` bytes.
    async fn download(&self, key: &Path, path: &LocalPath, limit: u64) -> Result<u64, Fetch> {
        let tmp = part_path(path);
        let result = async {
            let r = self.store.get(key).await.map_err(|e| Fetch::Failed(e.to_string()))?;
            let mut f =
                tokio::fs::File::create(&tmp).await.map_err(|e| Fetch::Failed(format!("{}: {e}", tmp.display())))?;
            let mut stream = r.into_stream();
            let mut n = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| Fetch::Failed(e.to_string()))?;
                n += chunk.len() as u64;
                if n > limit {
                    return Err(Fetch::TooLong);
                }
                f.write_all(&chunk).await.map_err(|e| Fetch::Failed(format!("{}: {e}", tmp.display())))?;
            }
            f.flush().await.map_err(|e| Fetch::Failed(e.to_string()))?;
            Ok(n)
        }
        .await;
        match result {
            Ok(n) => {
                tokio::fs::rename(&tmp, path).await.map_err(|e| Fetch::Failed(format!("{}: {e}", path.display())))?;
                Ok(n)
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }

    /// Uploads the snapshot in `sdir` (data files first, manifest last) unless its manifest is
    /// already stored.
    pub async fn put(&self, ns: &str, label: &str, id: &str, sdir: &LocalPath) -> Result<(), StorageError> {
        let key = |name: &str| self.key(&[ns, label, "snapshots", id, name]);
        match self.store.head(&key("manifest.json")).await {
            Ok(_) => return Ok(()),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(object_err(e)),
        }
        let started = Instant::now();
        for name in snapshot::file_names() {
            let path = sdir.join(name);
            let io = |e: std::io::Error| SnapshotError::Io { path: path.clone(), err: e };
            let mut f = tokio::fs::File::open(&path).await.map_err(io)?;
            let mut w = BufWriter::new(self.store.clone(), key(name));
            tokio::io::copy(&mut f, &mut w)
                .await
                .map_err(|e| StorageError::Object(format!("uploading {name}: {e}")))?;
            w.shutdown().await.map_err(|e| StorageError::Object(format!("uploading {name}: {e}")))?;
        }
        tracing::info!(label, snapshot = id, secs = started.elapsed().as_secs_f64(), "snapshot uploaded");
        prune_cache(&self.staging(ns, label).join("snapshots"), id);
        Ok(())
    }

    /// Replaces the id object `name` conditionally on the version read just before; a
    /// concurrent writer makes it read and try again (three times at most).
    async fn replace_id(&self, ns: &str, label: &str, name: &str, id: &str) -> Result<(), StorageError> {
        let key = self.key(&[ns, label, name]);
        let mut last = None;
        for _ in 0..3 {
            let (_, version) = self.read_id(&key).await?;
            let mode = version.map_or(PutMode::Create, PutMode::Update);
            let opts = PutOptions { mode, ..Default::default() };
            match self.store.put_opts(&key, format!("{id}\n").into(), opts).await {
                Ok(_) => return Ok(()),
                Err(e @ (object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. })) => {
                    tracing::warn!(label, object = name, error = %e, "changed concurrently; trying again");
                    last = Some(e);
                }
                Err(e) => return Err(object_err(e)),
            }
        }
        Err(StorageError::Object(format!("{name} kept changing while being replaced: {}", last.unwrap())))
    }

    pub async fn publish(&self, ns: &str, label: &str, id: &str) -> Result<(), StorageError> {
        self.replace_id(ns, label, "CURRENT", id).await
    }

    pub async fn pin(&self, ns: &str, label: &str, id: &str) -> Result<(), StorageError> {
        self.replace_id(ns, label, "PINNED", id).await
    }

    async fn delete_under(&self, parts: &[&str]) -> Result<usize, StorageError> {
        let prefix = self.key(parts);
        let keys: Vec<Path> =
            self.store.list(Some(&prefix)).map_ok(|m| m.location).try_collect().await.map_err(object_err)?;
        for k in &keys {
            match self.store.delete(k).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(object_err(e)),
            }
        }
        Ok(keys.len())
    }

    pub async fn gc(&self, ns: &str, label: &str, keep: usize) -> Result<Vec<String>, StorageError> {
        let ids = self.list(ns, label).await?;
        let (live, pinned) = (self.current(ns, label).await?, self.pinned(ns, label).await?);
        let mut removed = Vec::new();
        for id in snapshot::doomed(&ids, live.as_deref(), pinned.as_deref(), keep) {
            // Read again right before removing: a rollback may have pinned or published it.
            if self.current(ns, label).await?.as_deref() == Some(&id)
                || self.pinned(ns, label).await?.as_deref() == Some(&id)
            {
                continue;
            }
            self.delete_under(&[ns, label, "snapshots", &id]).await?;
            removed.push(id);
        }
        Ok(removed)
    }

    pub async fn remove_label(&self, ns: &str, label: &str) -> Result<String, StorageError> {
        let n = self.delete_under(&[ns, label]).await?;
        tracing::info!(label, objects = n, "removed label objects");
        Ok(format!("{}/{ns}/{label}", self.url.trim_end_matches('/')))
    }
}

/// Why an object did not arrive.
enum Fetch {
    /// It is longer than the manifest says: corrupt, final.
    TooLong,
    /// Missing, refused or cut off: may succeed later.
    Failed(String),
}

/// A temp name beside `path`, unique per process and call.
fn part_path(path: &LocalPath) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.{n}.part", std::process::id()))
}

/// Whether the cached file at `path` has the size and checksum the manifest records (read in
/// chunks, never whole).
fn holds(path: &LocalPath, want: &FileSum) -> bool {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(path) else { return false };
    if f.metadata().map(|m| m.len()).ok() != Some(want.bytes) {
        return false;
    }
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(_) => return false,
        }
    }
    format!("{:016x}", h.digest()) == want.xxh3
}

async fn write_atomic(path: &LocalPath, bytes: &[u8]) -> Result<(), String> {
    let tmp = part_path(path);
    tokio::fs::write(&tmp, bytes).await.map_err(|e| format!("{}: {e}", tmp.display()))?;
    tokio::fs::rename(&tmp, path).await.map_err(|e| format!("{}: {e}", path.display()))
}

/// Keeps `id` and the newest other snapshot in a label's cache; removes the rest.
fn prune_cache(snaps: &LocalPath, id: &str) {
    let Ok(rd) = std::fs::read_dir(snaps) else { return };
    let mut others: Vec<String> =
        rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n != id).collect();
    others.sort();
    others.pop();
    for o in others {
        if let Err(e) = std::fs::remove_dir_all(snaps.join(&o)) {
            tracing::warn!(dir = %snaps.join(&o).display(), error = %e, "cannot prune the snapshot cache");
        }
    }
}
