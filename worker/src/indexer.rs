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
use kim_index::{FlatIndex, HnswParams, Matrix, VectorStore};

use crate::cli::{CleanArgs, IndexArgs};
use crate::exit::{Class, Classify, Failure};
use crate::online::source::SourceError;
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
    let line = report.to_line();
    if let Some(p) = &a.termination_message_path {
        // Best effort: the exit code still tells the truth if this write fails.
        if let Err(e) = std::fs::write(p, &line) {
            tracing::warn!(path = %p.display(), error = %e, "cannot write termination message");
        }
    }
    if outcome.is_ok() {
        println!("{line}");
    }
    outcome.map(|_| ()).map_err(anyhow::Error::from)
}

fn config(message: String) -> Failure {
    Failure { class: Class::Config, error: anyhow::Error::msg(message) }
}

/// Agents that cannot be reached may come back; agents holding nothing may be filled later;
/// inconsistent objects stay inconsistent.
fn source_class(e: &SourceError) -> Class {
    match e {
        SourceError::Agent { .. } | SourceError::Runtime(_) => Class::Transient,
        SourceError::Empty => Class::NoInput,
        SourceError::Dimensions { .. } => Class::Config,
    }
}

/// An input file's I/O error, classified by its kind.
fn input_error(e: std::io::Error, path: &Path, what: &str) -> Failure {
    Failure {
        class: Class::of_read(&e),
        error: anyhow::Error::new(e).context(format!("reading {what} {}", path.display())),
    }
}

fn build(a: &IndexArgs) -> Result<Manifest, Failure> {
    let start = Instant::now();
    if !valid_label(&a.label) {
        return Err(config(format!("label {:?} must be {LABEL_RULE}", a.label)));
    }
    if !valid_label(&a.namespace) {
        return Err(config(format!("namespace {:?} is not a valid directory name", a.namespace)));
    }
    let spec = a.descriptor.spec();
    spec.validate().context("descriptor settings").class(Class::Config)?;
    let params = HnswParams { m: a.m, ef_construction: a.ef_construction, ef_search: a.ef_search };
    let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    tracing::info!(label = %a.label, source = %a.source.display(), "reading source");
    // `agents://HOST:PORT,...`: the online agents' objects, ids = object ids.
    let (source_bytes, matrix, agent_ids) = match crate::online::source::agents(&a.source) {
        Some(agents) => {
            let dialer = a.agents_tls.dialer().class(Class::Config)?;
            crate::online::source::read(&agents, &dialer)
                .map_err(|e| Failure { class: source_class(&e), error: e.into() })
                .map(|(b, m, ids)| (b, m, Some(ids)))?
        }
        None => {
            let bytes = std::fs::read(&a.source).map_err(|e| input_error(e, &a.source, "source"))?;
            // The file was just readable: what fails now is its content.
            (bytes, Matrix::read(&a.source).class(Class::Config)?, None)
        }
    };
    let ids = match (&a.ids, agent_ids) {
        (_, Some(ids)) => ids,
        (Some(p), None) => {
            std::fs::File::open(p).map_err(|e| input_error(e, p, "ids"))?;
            kim_index::io::read_ids(p, matrix.rows).class(Class::Config)?
        }
        (None, None) => (0..matrix.rows).map(|i| i.to_string()).collect(),
    };
    let mut digest_input = source_bytes;
    digest_input.extend(ids.join("\n").bytes());
    let source_digest = format!("xxh3:{}", snapshot::hash_hex(&digest_input));
    drop(digest_input);
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
    tracing::info!(snapshot = %written.id, vectors = written.vectors, secs = start.elapsed().as_secs_f64(), removed = removed.len(), "snapshot is current");
    Ok(written)
}

/// A small runtime for the storage calls of one-shot commands.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// Removes `<storage>/<namespace>/<label>`; a label that is already gone is not an error.
pub fn clean(a: &CleanArgs) -> anyhow::Result<()> {
    if !(valid_label(&a.label) && valid_label(&a.namespace)) {
        return Err(config("invalid label or namespace name".into()).into());
    }
    let store = Store::open(&a.storage).class(Class::Config)?;
    let removed = runtime()
        .class(Class::Transient)?
        .block_on(store.remove_label(&a.namespace, &a.label))
        .class(Class::Transient)?;
    println!("{}", serde_json::json!({"removed": removed}));
    Ok(())
}
