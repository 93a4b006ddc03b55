//! `kim-worker index`: read a source, build the HNSW graph, write a verified snapshot, make it
//! CURRENT, collect old snapshots. The outcome is one JSON line on stdout (and in the
//! termination message file for Kubernetes), so callers never parse logs. Each failing step is
//! classified (`crate::exit`), so the exit code tells a configuration error from a transient one.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use kim_api::build::{valid_label, BuildReport, Built, LABEL_RULE};
use kim_index::build::build_graph;
use kim_index::flat::Ids;
use kim_index::snapshot::{self, Manifest};
use kim_index::{FlatIndex, HnswParams, VectorStore};
use serde_json::json;

use crate::cli::{CleanArgs, IndexArgs};
use crate::exit::{Class, Classify, Failure};
use crate::source::{self, Source};
use crate::storage::Store;

pub fn run(a: &IndexArgs) -> anyhow::Result<()> {
    let outcome = build(a);
    let report = match &outcome {
        Ok(m) => BuildReport::Built(Built {
            snapshot: m.id.clone(),
            label: m.label.clone(),
            namespace: m.namespace.clone(),
            vectors: m.vectors as u64,
            build_seconds: Some(m.build_seconds),
            created_at: Some(m.created_at.clone()),
        }),
        Err(e) => BuildReport::Failed { error: format!("{e:#}") },
    };
    emit(&report.to_line(), outcome.is_ok(), a.termination_message_path.as_deref());
    outcome.map(|_| ()).map_err(anyhow::Error::from)
}

/// Writes a command's one-line outcome to the termination message file (when given) and, on
/// success, to stdout, so callers never parse logs.
pub fn emit(line: &str, ok: bool, termination: Option<&Path>) {
    if let Some(p) = termination {
        // Best effort: the exit code still tells the truth if this write fails.
        if let Err(e) = std::fs::write(p, line) {
            tracing::warn!(path = %p.display(), error = %e, "cannot write termination message");
        }
    }
    if ok {
        println!("{line}");
    }
}

pub fn config(message: String) -> Failure {
    Failure { class: Class::Config, error: anyhow::Error::msg(message) }
}

/// Label and namespace must be safe directory names, and the shard setting valid. Returns the
/// arguments as the build uses them: `label` is where the snapshots go, the label itself or,
/// for a shard, its storage name `<label>@shard-<I>-of-<N>` (also the snapshot's label).
pub fn check_names(a: &IndexArgs) -> Result<IndexArgs, Failure> {
    if !valid_label(&a.label) {
        return Err(config(format!("label {:?} must be {LABEL_RULE}", a.label)));
    }
    if !valid_label(&a.namespace) {
        return Err(config(format!("namespace {:?} is not a valid directory name", a.namespace)));
    }
    let name = kim_api::shard::checked_storage_name(&a.label, a.shard.shard, a.shard.shards)
        .map_err(|e| config(e.to_string()))?;
    Ok(IndexArgs { label: name, ..a.clone() })
}

fn build(a: &IndexArgs) -> Result<Manifest, Failure> {
    let start = Instant::now();
    let a = &check_names(a)?;
    tracing::info!(label = %a.label, source = %a.source.display(), "reading source");
    let src = source::read(&a.source, a.ids.as_deref(), &a.agents_tls)?;
    build_from(a, source::keep_shard(src, a.shard.shard, a.shard.shards), start)
}

/// Builds, verifies and publishes a snapshot of `src` (already read) for the label of `a`,
/// then collects old snapshots and the deltas of snapshots that are gone.
pub fn build_from(a: &IndexArgs, src: Source, start: Instant) -> Result<Manifest, Failure> {
    let spec = a.descriptor.spec();
    spec.validate().context("descriptor settings").class(Class::Config)?;
    let params = HnswParams { m: a.m, ef_construction: a.ef_construction, ef_search: a.ef_search };
    let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let Source { matrix, ids, digest: source_digest } = src;
    let vectors = VectorStore::from_matrix(&spec, &matrix)
        .with_context(|| format!("source {}", a.source.display()))
        .class(Class::Config)?;
    drop(matrix);
    tracing::info!(vectors = vectors.len(), dims = spec.dimensions, encoding = %spec.encoding, metric = %spec.metric, m = params.m, ef_construction = params.ef_construction, threads, "building graph");
    let last_log = std::sync::Mutex::new(Instant::now());
    let progress = |done: usize, total: usize, elapsed: Duration| {
        let mut last = last_log.lock().unwrap();
        if done < total && last.elapsed() < Duration::from_secs(3) {
            return;
        }
        *last = Instant::now();
        let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);
        let eta = (total - done) as f64 / rate.max(1e-9);
        tracing::info!(done, total, rate = format!("{rate:.0}/s"), eta = format!("{eta:.0}s"), "building");
    };
    let graph = build_graph(&vectors, params, threads, &progress).class(Class::Config)?;
    let index = FlatIndex { vectors, graph, ids: Ids::from_vec(&ids), ef_search: params.ef_search };
    let store = Store::open(&a.storage).class(Class::Config)?;
    let dir = store.staging(&a.namespace, &a.label);
    let manifest = Manifest {
        format: snapshot::FORMAT,
        id: snapshot::new_snapshot_id(),
        namespace: a.namespace.clone(),
        label: a.label.clone(),
        descriptor: spec,
        hnsw: params,
        vectors: index.len(),
        source_digest,
        created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        build_seconds: start.elapsed().as_secs_f64(),
        files: Default::default(),
    };
    // Storage from here on: a retry may succeed.
    let written = snapshot::write(&dir, manifest, &index)
        .with_context(|| format!("writing snapshot under {}", dir.display()))
        .class(Class::Transient)?;
    // Read it back before it goes live: CURRENT never names a snapshot that fails to load.
    snapshot::load(&dir, &written.id).context("verifying the written snapshot").class(Class::Transient)?;
    drop(index);
    let (ns, label, id) = (a.namespace.as_str(), a.label.as_str(), written.id.as_str());
    let removed = runtime()
        .class(Class::Transient)?
        .block_on(async {
            store.put(ns, label, id, &dir.join("snapshots").join(id)).await.context("storing the snapshot")?;
            store.publish(ns, label, id).await.context("publishing CURRENT")?;
            anyhow::Ok(store.gc(ns, label, a.keep).await.context("collecting old snapshots")?)
        })
        .class(Class::Transient)?;
    kim_index::delta::gc(&store.deltas_dir(ns, label)).context("collecting old deltas").class(Class::Transient)?;
    tracing::info!(snapshot = %written.id, vectors = written.vectors, secs = start.elapsed().as_secs_f64(), removed = removed.len(), "snapshot is current");
    Ok(written)
}

/// A small runtime for the storage calls of one-shot commands.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// Removes `<storage>/<namespace>/<label>` and the shards of the label found there; a label
/// that is already gone is not an error.
pub fn clean(a: &CleanArgs) -> anyhow::Result<()> {
    if !(valid_label(&a.label) && valid_label(&a.namespace)) {
        return Err(config("invalid label or namespace name".into()).into());
    }
    let store = Store::open(&a.storage).class(Class::Config)?;
    let removed = runtime()
        .class(Class::Transient)?
        .block_on(async {
            let mut removed = vec![store.remove_label(&a.namespace, &a.label).await?];
            for name in store.labels(&a.namespace).await? {
                if kim_api::shard::parse_storage_name(&name).is_some_and(|(l, _, _)| l == a.label) {
                    removed.push(store.remove_label(&a.namespace, &name).await?);
                }
            }
            Ok::<_, crate::storage::StorageError>(removed)
        })
        .class(Class::Transient)?;
    let removed = if removed.len() == 1 { json!(removed[0]) } else { json!(removed) };
    println!("{}", json!({"removed": removed}));
    Ok(())
}
