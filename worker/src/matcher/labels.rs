//! Which labels this matcher serves and which snapshot each one runs, swapped without pauses:
//! a batch holds an `Arc` of the snapshot it started with, so a swap never drops a request.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use kim_api::ErrorCode;
use kim_index::snapshot::{self, Manifest};
use kim_index::FlatIndex;
use kim_redis::Conn;

use super::{registry, Matcher};
use crate::indexer::discover_labels;

/// A snapshot in memory.
pub struct Loaded {
    pub manifest: Manifest,
    pub index: FlatIndex,
}

/// One label being served.
pub struct Served {
    pub label: String,
    pub current: ArcSwap<Loaded>,
}

/// Polls storage until shutdown.
pub async fn watch(m: Arc<Matcher>, mut conn: Conn) {
    // Snapshot ids that failed to load, per label, so a bad one is reported once, not every tick.
    let rejected: Mutex<std::collections::HashMap<String, String>> = Default::default();
    loop {
        refresh(&m, &mut conn, &rejected).await;
        if m.pause(m.args.reload_interval).await {
            return;
        }
    }
}

fn wanted(m: &Matcher) -> Vec<String> {
    if m.args.labels.is_empty() {
        discover_labels(&m.args.storage, &m.args.namespace)
    } else {
        m.args.labels.clone()
    }
}

async fn refresh(m: &Arc<Matcher>, conn: &mut Conn, rejected: &Mutex<std::collections::HashMap<String, String>>) {
    let wanted = wanted(m);
    for label in &wanted {
        let dir = snapshot::label_dir(&m.args.storage, &m.args.namespace, label);
        let id = match snapshot::current(&dir) {
            Ok(Some(id)) => id,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(label, error = %e, "cannot read CURRENT");
                continue;
            }
        };
        let existing = m.served(label);
        if existing.as_ref().is_some_and(|s| s.current.load().manifest.id == id)
            || rejected.lock().unwrap().get(label) == Some(&id)
        {
            continue;
        }
        match load(dir, id.clone(), label.clone()).await {
            Ok(loaded) => {
                rejected.lock().unwrap().remove(label);
                install(m, conn, label, existing, loaded).await;
            }
            Err(e) => {
                let code = ErrorCode::IndexCorrupted.code();
                tracing::error!(label, snapshot = %id, error_code = code, error = %e, kept = existing.map(|s| s.current.load().manifest.id.clone()), "snapshot rejected, previous one kept");
                m.metrics.snapshot_rejected(label);
                rejected.lock().unwrap().insert(label.clone(), id);
            }
        }
    }
    let all_loaded = wanted.iter().all(|l| m.served(l).is_some());
    if all_loaded && !m.ready.swap(true, Ordering::SeqCst) {
        tracing::info!(labels = ?m.label_names(), "ready");
    }
}

async fn load(dir: PathBuf, id: String, label: String) -> anyhow::Result<Loaded> {
    let started = std::time::Instant::now();
    let (manifest, index) = tokio::task::spawn_blocking(move || snapshot::load(&dir, &id)).await??;
    anyhow::ensure!(manifest.label == label, "snapshot belongs to label {:?}", manifest.label);
    tracing::info!(label, snapshot = %manifest.id, vectors = manifest.vectors, secs = started.elapsed().as_secs_f64(), "snapshot loaded");
    Ok(Loaded { manifest, index })
}

async fn install(m: &Arc<Matcher>, conn: &mut Conn, label: &str, existing: Option<Arc<Served>>, loaded: Loaded) {
    m.metrics.set_snapshot(label, &loaded.manifest.id, loaded.index.len());
    match existing {
        Some(s) => {
            let old = s.current.swap(Arc::new(loaded));
            tracing::info!(label, from = %old.manifest.id, to = %s.current.load().manifest.id, "snapshot swapped in");
            m.metrics.clear_snapshot(label, &old.manifest.id);
        }
        None => {
            if let Err(e) = super::serve::ensure_group(conn, &m.args.prefix, label).await {
                tracing::warn!(label, error = %e, "cannot create consumer group yet; will retry on read");
            }
            let s = Arc::new(Served { label: label.to_string(), current: ArcSwap::from_pointee(loaded) });
            m.labels.write().unwrap().insert(label.to_string(), s);
            tracing::info!(label, "serving label");
        }
    }
    registry::register(m, conn).await;
}
