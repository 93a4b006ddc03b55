//! Applies the deltas `kim-worker refresh` writes beside a served snapshot, in order and
//! exactly once, without a reload: each verified delta turns the served state into a new one
//! (same graph, longer tail, more tombstones) swapped in like a snapshot. A delta that fails
//! verification is reported once (26308) and retried every tick; nothing after it is applied.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use kim_api::ErrorCode;
use kim_index::delta;
use kim_index::snapshot::Manifest;
use kim_index::tail::Tail;
use kim_index::FlatIndex;
use kim_redis::Conn;

use super::{Loaded, Matcher};

/// A freshly loaded snapshot with the deltas already written for it, so a matcher never serves
/// a snapshot without changes that were published before it loaded. A delta that fails stops
/// the chain here; the delta watcher reports it on its next tick.
pub fn loaded(dir: &Path, manifest: Manifest, index: FlatIndex) -> Loaded {
    let fresh = Loaded { tail: Tail::new(manifest.descriptor), manifest, index: Arc::new(index) };
    catch_up(dir, &fresh).0.unwrap_or(fresh)
}

/// Applies every delta after those `cur` holds. Returns the new state (None if nothing was
/// applied) and the delta that stopped it, if one failed.
fn catch_up(dir: &Path, cur: &Loaded) -> (Option<Loaded>, Option<(u64, String)>) {
    let spec = cur.manifest.descriptor;
    let mut tail: Option<Tail> = None;
    loop {
        let now = tail.as_ref().unwrap_or(&cur.tail);
        let seq = now.deltas() + 1;
        let next = match delta::next(dir, &cur.manifest.id, now.deltas(), &spec) {
            Ok(None) => break,
            Ok(Some(d)) => now.apply(&cur.index, &d).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match next {
            Ok(t) => tail = Some(t),
            Err(e) => return (tail.map(|t| cur.with_tail(t)), Some((seq, e))),
        }
    }
    (tail.map(|t| cur.with_tail(t)), None)
}

impl Loaded {
    /// The same snapshot with other changes applied.
    fn with_tail(&self, tail: Tail) -> Loaded {
        Loaded { manifest: self.manifest.clone(), index: self.index.clone(), tail }
    }
}

fn reject_log(label: &str, snapshot: &str, seq: u64, why: &str) {
    let code = ErrorCode::IndexCorrupted.code();
    tracing::error!(label, snapshot, delta = seq, error_code = code, error = why, "delta rejected, serving without it");
}

/// Polls every served label for new deltas until shutdown.
pub async fn watch(m: Arc<Matcher>, mut conn: Conn) {
    // The delta that failed last, per label, so a bad one is reported once, not every tick.
    let mut rejected: HashMap<String, (String, u64)> = HashMap::new();
    loop {
        let names = m.label_names();
        // A label dropped from a pool and added back reports its bad delta again.
        rejected.retain(|l, _| names.contains(l));
        for label in names {
            let Some(served) = m.served(&label) else { continue };
            let cur = served.current.load_full();
            let dir = m.store.deltas_dir(&m.args.namespace, &m.storage_name(&label));
            let probe = cur.clone();
            let Ok((next, failed)) = tokio::task::spawn_blocking(move || catch_up(&dir, &probe)).await else {
                continue;
            };
            if let Some(next) = next {
                let (seq, tail, gone) = (next.tail.deltas(), next.tail.rows(), next.tail.tombstones());
                let next = Arc::new(next);
                // Only over the state it was computed from: a snapshot swapped in meanwhile wins.
                let prev = served.current.compare_and_swap(&cur, next.clone());
                if Arc::ptr_eq(&*prev, &cur) {
                    tracing::info!(label, snapshot = %cur.manifest.id, delta = seq, tail, tombstones = gone, "delta applied");
                    m.while_served(&label, || m.metrics.set_snapshot(&label, &next));
                    super::registry::register(&m, &mut conn).await;
                }
            }
            match failed {
                Some((seq, why)) => {
                    let key = (cur.manifest.id.clone(), seq);
                    if rejected.get(&label) != Some(&key) {
                        reject_log(&label, &cur.manifest.id, seq, &why);
                        m.while_served(&label, || m.metrics.delta_rejected(&label));
                        rejected.insert(label.clone(), key);
                    }
                }
                None => {
                    rejected.remove(&label);
                }
            }
        }
        if m.pause(m.args.reload_interval).await {
            return;
        }
    }
}
