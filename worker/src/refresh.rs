//! `kim-worker refresh`: brings a label up to date with its source in seconds. It compares the
//! source with what matchers serve (the CURRENT snapshot plus its deltas) by id and writes the
//! difference as the next delta, which matchers apply without reloading. When the changes would
//! pass `--max-tail` of the snapshot, when the delta chain is unusable, or when the descriptor
//! settings changed, it rebuilds the label instead (the same build as `index`), which folds
//! every change into a fresh snapshot.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use kim_api::build::BuildReport;
use kim_index::delta::{self, Delta, DeltaManifest};
use kim_index::snapshot;
use kim_index::tail::Tail;
use kim_index::{FlatIndex, VectorStore};
use serde_json::json;

use crate::cli::{IndexArgs, RefreshArgs};
use crate::exit::{Class, Classify};
use crate::indexer;
use crate::source::{self, Source};
use crate::storage::Store;

pub fn run(a: &RefreshArgs) -> anyhow::Result<()> {
    let outcome = refresh(a);
    let line = match &outcome {
        Ok(v) => v.to_string(),
        Err(e) => BuildReport::Failed { error: format!("{e:#}") }.to_line(),
    };
    indexer::emit(&line, outcome.is_ok(), a.index.termination_message_path.as_deref());
    outcome.map(|_| ())
}

/// The live state of a label: its snapshot and the deltas applied to it.
struct Live {
    snapshot: String,
    base: FlatIndex,
    tail: Tail,
}

/// The served state, or why the label cannot take a delta (it is rebuilt instead).
fn live_state(ia: &IndexArgs, store: &Store, ddir: &Path) -> Result<Live, String> {
    let (ns, label) = (ia.namespace.as_str(), ia.label.as_str());
    let spec = ia.descriptor.spec();
    let rt = indexer::runtime().map_err(|e| e.to_string())?;
    let snapshot = match rt.block_on(store.current(ns, label)) {
        Ok(Some(id)) => id,
        Ok(None) => return Err("the label has no snapshot yet".into()),
        Err(e) => return Err(format!("cannot read CURRENT: {e}")),
    };
    let sdir = rt.block_on(store.fetch(ns, label, &snapshot)).map_err(|e| format!("current snapshot unusable: {e}"))?;
    let (manifest, base) =
        snapshot::load_from(&sdir, &snapshot).map_err(|e| format!("current snapshot unusable: {e}"))?;
    if manifest.descriptor != spec {
        return Err("descriptor settings differ from the current snapshot's".into());
    }
    let mut tail = Tail::new(spec);
    while let Some(d) =
        delta::next(ddir, &snapshot, tail.deltas(), &spec).map_err(|e| format!("delta chain unusable: {e}"))?
    {
        let seq = d.manifest.seq;
        tail = tail.apply(&base, &d).map_err(|e| format!("delta chain unusable: delta {seq}: {e}"))?;
    }
    Ok(Live { snapshot, base, tail })
}
/// What changed between the live state and the source, by id: rows to add (new ids, and ids
/// whose vector changed) and ids to remove (gone from the source, or changed).
struct Diff {
    added_ids: Vec<String>,
    added: Vec<u8>,
    removed_ids: Vec<String>,
}

fn diff(live: &Live, src: &Source, src_raw: &[u8], width: usize) -> Diff {
    let (base_raw, tail_raw) = (live.base.vectors.raw_bytes(), live.tail.store().raw_bytes());
    let n = live.base.len();
    let row = |r: u32| {
        let r = r as usize;
        if r < n {
            &base_raw[r * width..(r + 1) * width]
        } else {
            &tail_raw[(r - n) * width..(r - n + 1) * width]
        }
    };
    let live_rows = live.tail.live_rows(&live.base);
    let current: HashMap<&str, &[u8]> = live_rows.iter().map(|&r| (live.tail.id(&live.base, r), row(r))).collect();
    let in_source: HashSet<&str> = src.ids.iter().map(String::as_str).collect();
    let mut d = Diff { added_ids: Vec::new(), added: Vec::new(), removed_ids: Vec::new() };
    for &r in &live_rows {
        let id = live.tail.id(&live.base, r);
        if !in_source.contains(id) {
            d.removed_ids.push(id.to_string());
        }
    }
    for (i, id) in src.ids.iter().enumerate() {
        let v = &src_raw[i * width..(i + 1) * width];
        match current.get(id.as_str()) {
            Some(old) if *old == v => continue,
            Some(_) => d.removed_ids.push(id.clone()),
            None => {}
        }
        d.added_ids.push(id.clone());
        d.added.extend_from_slice(v);
    }
    d
}

fn refresh(a: &RefreshArgs) -> anyhow::Result<serde_json::Value> {
    let start = Instant::now();
    let ia = &indexer::check_names(&a.index)?;
    if !(0.0..=1.0).contains(&a.max_tail) {
        return Err(indexer::config(format!("--max-tail must be a fraction in [0, 1], got {}", a.max_tail)).into());
    }
    let spec = ia.descriptor.spec();
    spec.validate().context("descriptor settings").class(Class::Config)?;
    let store = Store::open(&ia.storage).class(Class::Config)?;
    let ddir = store.deltas_dir(&ia.namespace, &ia.label);
    tracing::info!(label = %ia.label, source = %ia.source.display(), "reading source");
    let src = source::read(&ia.source, ia.ids.as_deref(), &ia.agents_tls)?;
    let src = source::keep_shard(src, ia.shard.shard, ia.shard.shards);
    if !store.takes_deltas() {
        return rebuild(ia, src, start, "object storage carries no deltas: every refresh rebuilds");
    }
    let live = match live_state(ia, &store, &ddir) {
        Ok(l) => l,
        Err(why) => return rebuild(ia, src, start, &why),
    };
    let width = spec.dimensions * delta::stored_width(spec.encoding);
    let src_raw = VectorStore::from_matrix(&spec, &src.matrix)
        .with_context(|| format!("source {}", ia.source.display()))
        .class(Class::Config)?
        .raw_bytes();
    let d = diff(&live, &src, &src_raw, width);
    drop(src_raw);
    let (tail, base) = (&live.tail, &live.base);
    if d.added_ids.is_empty() && d.removed_ids.is_empty() {
        tracing::info!(label = %ia.label, snapshot = %live.snapshot, deltas = tail.deltas(), "source unchanged");
        return Ok(json!({
            "mode": "unchanged", "label": ia.label, "namespace": ia.namespace, "snapshot": live.snapshot,
            "deltas": tail.deltas(), "vectors": tail.live(base),
        }));
    }
    let changes = tail.rows() + tail.tombstones() + d.added_ids.len() + d.removed_ids.len();
    if changes as f64 > a.max_tail * base.len() as f64 {
        let why = format!(
            "tail rows plus removed rows would be {changes}, over {} of the snapshot's {} vectors",
            a.max_tail,
            base.len()
        );
        return rebuild(ia, src, start, &why);
    }
    let seq = tail.deltas() + 1;
    let manifest = DeltaManifest {
        format: delta::FORMAT,
        namespace: ia.namespace.clone(),
        label: ia.label.clone(),
        snapshot: live.snapshot.clone(),
        seq,
        descriptor: spec,
        added: d.added_ids.len(),
        removed: d.removed_ids.len(),
        source_digest: src.digest.clone(),
        created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        files: Default::default(),
    };
    let pending = Delta { manifest, added_ids: d.added_ids, vectors: d.added, removed_ids: d.removed_ids };
    // Apply it as a matcher will before anything is written: a delta that cannot apply is
    // never published.
    let next = tail.apply(base, &pending).context("the computed delta does not apply")?;
    let Delta { manifest, added_ids, vectors, removed_ids } = pending;
    let written = delta::write(&ddir, manifest, &added_ids, &vectors, &removed_ids)
        .with_context(|| format!("writing delta {seq} under {}", ddir.display()))
        .class(Class::Transient)?;
    // Read it back: what matchers will load is what was computed.
    let back = delta::load(&ddir, &live.snapshot, seq, &spec)
        .context("reading the written delta back")
        .and_then(|d| d.context("the written delta is not visible"))
        .class(Class::Transient)?;
    anyhow::ensure!(
        back.added_ids == added_ids && back.vectors == vectors && back.removed_ids == removed_ids,
        "delta {seq} reads back different from what was written"
    );
    let cleaned = delta::gc(&ddir).context("collecting old deltas").class(Class::Transient)?;
    tracing::info!(label = %ia.label, snapshot = %live.snapshot, delta = seq, added = written.added, removed = written.removed, tail = next.rows(), tombstones = next.tombstones(), removed_dirs = cleaned.len(), secs = start.elapsed().as_secs_f64(), "delta written");
    Ok(json!({
        "mode": "delta", "label": ia.label, "namespace": ia.namespace, "snapshot": live.snapshot,
        "delta": seq, "added": written.added, "removed": written.removed, "tailRows": next.rows(),
        "tombstones": next.tombstones(), "vectors": next.live(base), "seconds": start.elapsed().as_secs_f64(),
    }))
}

fn rebuild(ia: &IndexArgs, src: Source, start: Instant, why: &str) -> anyhow::Result<serde_json::Value> {
    tracing::info!(label = %ia.label, reason = why, "rebuilding instead of writing a delta");
    let m = indexer::build_from(ia, src, start)?;
    Ok(json!({
        "mode": "rebuild", "reason": why, "label": m.label, "namespace": m.namespace, "snapshot": m.id,
        "vectors": m.vectors, "buildSeconds": m.build_seconds, "createdAt": m.created_at,
    }))
}
