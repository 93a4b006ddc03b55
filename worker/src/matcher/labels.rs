//! Which labels this matcher serves and which snapshot each one runs, swapped without pauses:
//! a batch holds an `Arc` of the snapshot it started with, so a swap never drops a request.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use kim_api::ErrorCode;
use kim_index::snapshot::{self, Manifest, SnapshotError};
use kim_index::tail::Tail;
use kim_index::FlatIndex;
use kim_redis::Conn;

use super::retry::Tries;
use super::{registry, Matcher};

/// A snapshot in memory, with the deltas applied to it so far.
pub struct Loaded {
    pub manifest: Manifest,
    pub index: Arc<FlatIndex>,
    pub tail: Tail,
}

/// One label being served.
pub struct Served {
    pub label: String,
    pub current: ArcSwap<Loaded>,
    /// The snapshot CURRENT names when it failed verification and an older one is served instead.
    pub rejected: Mutex<Option<String>>,
}

impl Served {
    pub fn rejected(&self) -> Option<String> {
        self.rejected.lock().unwrap().clone()
    }
}

/// Polls storage until shutdown.
pub async fn watch(m: Arc<Matcher>, mut conn: Conn) {
    let mut tries = Tries::default();
    loop {
        refresh(&m, &mut conn, &mut tries).await;
        if m.pause(m.args.reload_interval).await {
            return;
        }
    }
}

/// The labels to serve: `--label`, the members of the `--pool` set, or every label stored
/// under the namespace.
async fn wanted(m: &Matcher, conn: &mut Conn) -> Vec<String> {
    if !m.args.labels.is_empty() {
        return m.args.labels.clone();
    }
    if let Some(pool) = &m.args.pool {
        return pool_members(m, conn, pool).await;
    }
    match m.store.labels(&m.args.namespace).await {
        // The labels stored whole, or those this matcher's shard is stored for.
        Ok(names) => names
            .iter()
            .filter_map(|n| match kim_api::shard::parse_storage_name(n) {
                None => (!m.args.shard.sharded()).then(|| n.clone()),
                Some((label, i, s)) => (i == m.args.shard.shard && s == m.args.shard.shards).then(|| label.to_string()),
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list labels");
            // Keep serving what is served; a label is never dropped for a listing failure.
            m.label_names()
        }
    }
}

/// The members of the pool's set, sorted; what is served when the set cannot be read, so a
/// Redis outage never drops a label.
async fn pool_members(m: &Matcher, conn: &mut Conn, pool: &str) -> Vec<String> {
    let key = kim_api::pool_key(&m.args.prefix, pool);
    match redis::cmd("SMEMBERS").arg(&key).query_async::<Vec<String>>(conn).await {
        Ok(mut members) => {
            // Members become storage paths and key names: a malformed one must not reach either.
            members.retain(|l| {
                let ok = kim_api::build::valid_label(l);
                if !ok {
                    tracing::warn!(pool, label = %l, rule = kim_api::build::LABEL_RULE, "pool member is not a valid label; ignored");
                }
                ok
            });
            members.sort();
            members
        }
        Err(e) => {
            tracing::warn!(pool, error = %e, "cannot read the pool's labels");
            m.label_names()
        }
    }
}

async fn refresh(m: &Arc<Matcher>, conn: &mut Conn, tries: &mut Tries) {
    let wanted = wanted(m, conn).await;
    for label in &wanted {
        let id = match m.store.current(&m.args.namespace, &m.storage_name(label)).await {
            Ok(Some(id)) => id,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(label, error = %e, "cannot read CURRENT");
                continue;
            }
        };
        let existing = m.served(label);
        if let Some(s) = existing.as_ref().filter(|s| s.current.load().manifest.id == id) {
            tries.forget(label);
            if s.rejected.lock().unwrap().take().is_some() {
                m.metrics.set_fallback(label, false);
                registry::register(m, conn).await;
            }
            continue;
        }
        if !tries.due(label, &id, Instant::now()) {
            continue;
        }
        match load(m, label, &id).await {
            Ok(loaded) => {
                tries.forget(label);
                install(m, conn, label, existing, loaded, None).await;
            }
            Err(e) if e.is_retryable() => {
                let n = tries.later(label, &id, m.args.reload_interval, Instant::now());
                if n == 1 {
                    tracing::warn!(label, snapshot = %id, error = %e, "snapshot named by CURRENT is not readable yet; retrying with backoff");
                } else {
                    tracing::debug!(label, snapshot = %id, tries = n, error = %e, "snapshot still not readable");
                }
            }
            Err(e) => {
                tries.reject(label, &id);
                reject(m, label, &id, &e, existing.as_deref());
                match existing {
                    Some(s) => {
                        *s.rejected.lock().unwrap() = Some(id);
                        m.metrics.set_fallback(label, true);
                        registry::register(m, conn).await;
                    }
                    None => fall_back(m, conn, label, &id).await,
                }
            }
        }
    }
    if m.args.pool.is_some() {
        drop_left(m, conn, &wanted, tries).await;
    }
    // A pool is ready after one pass over its members: a member whose snapshot cannot be
    // served (missing, corrupt) must not hold back the pool's other labels.
    let all_loaded = m.args.pool.is_some() || wanted.iter().all(|l| m.served(l).is_some());
    if all_loaded && !m.ready.swap(true, Ordering::SeqCst) {
        tracing::info!(labels = ?m.label_names(), "ready");
    }
}

/// Pool mode: stops serving every label that is no longer a member of the pool.
async fn drop_left(m: &Matcher, conn: &mut Conn, wanted: &[String], tries: &mut Tries) {
    let keep: HashSet<&str> = wanted.iter().map(String::as_str).collect();
    for label in m.label_names().into_iter().filter(|l| !keep.contains(l.as_str())) {
        tries.forget(&label);
        drop_label(m, conn, &label).await;
    }
}

/// Takes `label` out of the served map, then out of the registry and the metrics. A batch
/// already searching it holds its own `Arc` and finishes; entries read after this are answered
/// 26304. A heartbeat that listed the label just before it left the map can still write its
/// keys after they are deleted here; those expire after --label-ttl (and the served hash
/// entry's `until` passes then), so a dropped label is never advertised for longer.
async fn drop_label(m: &Matcher, conn: &mut Conn, label: &str) {
    let Some(served) = m.labels.write().unwrap().remove(label) else { return };
    m.metrics.forget_label(label, &served.current.load().manifest.id);
    registry::unregister_labels(m, conn, &[label.to_string()]).await;
    tracing::info!(label, "label left the pool: no longer served");
}

fn reject(m: &Matcher, label: &str, id: &str, e: &SnapshotError, existing: Option<&Served>) {
    let code = ErrorCode::IndexCorrupted.code();
    let kept = existing.map(|s| s.current.load().manifest.id.clone());
    tracing::error!(label, snapshot = %id, error_code = code, error = %e, kept, "snapshot rejected, previous one kept");
    m.metrics.snapshot_rejected(label);
}

/// CURRENT of a label this matcher does not serve yet failed verification: serve the newest
/// intact snapshot older than it, and say so (registry value, /readyz, metrics).
async fn fall_back(m: &Arc<Matcher>, conn: &mut Conn, label: &str, bad: &str) {
    let ids = match m.store.list(&m.args.namespace, &m.storage_name(label)).await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(label, error = %e, "cannot list snapshots to fall back to");
            return;
        }
    };
    for id in ids.iter().rev().filter(|i| i.as_str() < bad) {
        match load(m, label, id).await {
            Ok(loaded) => {
                tracing::warn!(label, snapshot = %id, current = %bad, "CURRENT is corrupt: serving the newest intact older snapshot");
                install(m, conn, label, None, loaded, Some(bad.to_string())).await;
                return;
            }
            Err(e) => tracing::warn!(label, snapshot = %id, error = %e, "older snapshot cannot be served either"),
        }
    }
    tracing::error!(label, current = %bad, "CURRENT is corrupt and no older snapshot is intact: label not served");
}

/// Fetches snapshot `id` of `label` from storage, verifies and loads it.
async fn load(m: &Matcher, label: &str, id: &str) -> Result<Loaded, SnapshotError> {
    let started = Instant::now();
    let name = m.storage_name(label);
    let sdir = m.store.fetch(&m.args.namespace, &name, id).await?;
    let sid = id.to_string();
    let ddir = m.store.deltas_dir(&m.args.namespace, &name);
    let (want, ef_search) = (name, m.args.ef_search);
    let loaded = tokio::task::spawn_blocking(move || {
        let (manifest, mut index) = snapshot::load_from(&sdir, &sid)?;
        if let Some(ef) = ef_search {
            index.ef_search = ef as usize;
        }
        if manifest.label != want {
            let reason = format!("snapshot belongs to label {:?}", manifest.label);
            return Err(SnapshotError::Corrupt { id: sid, reason });
        }
        // The deltas already written for it, so a restart never serves a removed id again.
        Ok(super::deltas::loaded(&ddir, manifest, index))
    })
    .await
    .map_err(|e| SnapshotError::Corrupt { id: id.to_string(), reason: format!("loader failed: {e}") })??;
    let (manifest, tail) = (&loaded.manifest, &loaded.tail);
    tracing::info!(label, snapshot = %manifest.id, vectors = manifest.vectors, deltas = tail.deltas(), tail = tail.rows(), tombstones = tail.tombstones(), secs = started.elapsed().as_secs_f64(), "snapshot loaded");
    Ok(loaded)
}

async fn install(
    m: &Arc<Matcher>,
    conn: &mut Conn,
    label: &str,
    existing: Option<Arc<Served>>,
    loaded: Loaded,
    rejected: Option<String>,
) {
    m.metrics.set_snapshot(label, &loaded);
    m.metrics.set_ef_search(label, loaded.index.ef_search);
    m.metrics.set_fallback(label, rejected.is_some());
    match existing {
        Some(s) => {
            let old = s.current.swap(Arc::new(loaded));
            *s.rejected.lock().unwrap() = rejected;
            tracing::info!(label, from = %old.manifest.id, to = %s.current.load().manifest.id, "snapshot swapped in");
            m.metrics.clear_snapshot(label, &old.manifest.id);
        }
        None => {
            if let Err(e) = super::serve::ensure_group(m, conn, label).await {
                tracing::warn!(label, error = %e, "cannot create consumer group yet; will retry on read");
            }
            let s = Arc::new(Served {
                label: label.to_string(),
                current: ArcSwap::from_pointee(loaded),
                rejected: Mutex::new(rejected),
            });
            m.labels.write().unwrap().insert(label.to_string(), s);
            tracing::info!(label, "serving label");
        }
    }
    registry::register(m, conn).await;
}
