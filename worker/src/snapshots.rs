//! `kim-worker snapshot list | rollback | export | import`: a label's snapshots on storage.
//! Each prints one JSON line on success.

use std::path::Path;

use anyhow::Context;
use kim_index::snapshot::{self, Manifest};
use serde_json::json;

use crate::cli::{ExportArgs, ImportArgs, LabelArgs, RollbackArgs, SnapshotCommand};
use kim_api::build::valid_label as valid_name;

use crate::exit::{Class, Classify};
use crate::indexer::runtime;
use crate::storage::Store;

pub fn run(c: SnapshotCommand) -> anyhow::Result<()> {
    let rt = runtime()?;
    let line = match c {
        SnapshotCommand::List(a) => rt.block_on(list(&a))?,
        SnapshotCommand::Rollback(a) => {
            let outcome = rt.block_on(rollback(&a));
            let line = match &outcome {
                Ok(v) => v.to_string(),
                Err(e) => json!({"error": format!("{e:#}")}).to_string(),
            };
            crate::indexer::emit(&line, outcome.is_ok(), a.termination_message_path.as_deref());
            return outcome.map(|_| ());
        }
        SnapshotCommand::Export(a) => rt.block_on(export(&a))?,
        SnapshotCommand::Import(a) => rt.block_on(import(&a))?,
    };
    println!("{line}");
    Ok(())
}

fn open(a: &LabelArgs) -> anyhow::Result<Store> {
    anyhow::ensure!(
        kim_api::shard::valid_storage_name(&a.label),
        "label {:?} is neither a valid label name nor a shard's <label>@shard-<I>-of-<N>",
        a.label
    );
    anyhow::ensure!(valid_name(&a.namespace), "namespace {:?} is not a valid directory name", a.namespace);
    Ok(Store::open(&a.storage).class(Class::Config)?)
}

/// Fetches snapshot `id` and verifies it completely (checksums, graph structure, label).
async fn verified(store: &Store, a: &LabelArgs, id: &str) -> anyhow::Result<(std::path::PathBuf, Manifest)> {
    anyhow::ensure!(snapshot::valid_id(id), "{id:?} is not a snapshot id");
    let sdir = store.fetch(&a.namespace, &a.label, id).await.with_context(|| format!("fetching snapshot {id}"))?;
    let (dir, sid) = (sdir.clone(), id.to_string());
    let (m, _) = tokio::task::spawn_blocking(move || snapshot::load_from(&dir, &sid))
        .await?
        .with_context(|| format!("verifying snapshot {id}"))?;
    anyhow::ensure!(m.label == a.label, "snapshot {id} belongs to label {:?}", m.label);
    Ok((sdir, m))
}

async fn list(a: &LabelArgs) -> anyhow::Result<serde_json::Value> {
    let store = open(a)?;
    let (ns, label) = (a.namespace.as_str(), a.label.as_str());
    let current = store.current(ns, label).await?;
    let pinned = store.pinned(ns, label).await?;
    let mut out = Vec::new();
    for id in store.list(ns, label).await? {
        let mut entry =
            json!({"id": id, "current": current.as_deref() == Some(&id), "pinned": pinned.as_deref() == Some(&id)});
        match store.manifest(ns, label, &id).await {
            Ok(m) => {
                entry["vectors"] = json!(m.vectors);
                entry["createdAt"] = json!(m.created_at);
                entry["sourceDigest"] = json!(m.source_digest);
            }
            Err(e) => entry["error"] = json!(e.to_string()),
        }
        out.push(entry);
    }
    Ok(json!({"namespace": ns, "label": label, "current": current, "pinned": pinned, "snapshots": out}))
}

/// Verifies the target, pins it (so no build's garbage collection removes it, meanwhile or
/// later), checks it is still there, then makes it CURRENT. Matchers swap to it as to any new
/// snapshot.
async fn rollback(a: &RollbackArgs) -> anyhow::Result<serde_json::Value> {
    let t = &a.target;
    let store = open(t)?;
    let (ns, label) = (t.namespace.as_str(), t.label.as_str());
    let from = store.current(ns, label).await?;
    let listed = |ids: Vec<String>| ids.contains(&a.to);
    anyhow::ensure!(
        listed(store.list(ns, label).await?),
        "label {label} has no snapshot {:?} (see `kim-worker snapshot list`)",
        a.to
    );
    let (_, m) = verified(&store, t, &a.to).await?;
    store.pin(ns, label, &a.to).await?;
    anyhow::ensure!(listed(store.list(ns, label).await?), "snapshot {} was removed while rolling back", a.to);
    store.publish(ns, label, &a.to).await?;
    tracing::info!(label, from = ?from, to = %a.to, "rolled back");
    Ok(
        json!({"namespace": ns, "label": label, "from": from, "to": a.to, "vectors": m.vectors, "createdAt": m.created_at}),
    )
}

async fn export(a: &ExportArgs) -> anyhow::Result<serde_json::Value> {
    let t = &a.target;
    let store = open(t)?;
    let id = match &a.id {
        Some(id) => id.clone(),
        None => store.current(&t.namespace, &t.label).await?.context("the label has no CURRENT snapshot")?,
    };
    let (sdir, m) = verified(&store, t, &id).await?;
    let nonempty = std::fs::read_dir(&a.out).map(|mut d| d.next().is_some()).unwrap_or(false);
    anyhow::ensure!(!nonempty, "{} exists and is not empty", a.out.display());
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    for name in snapshot::file_names() {
        copy_synced(&sdir.join(name), &a.out.join(name))?;
    }
    Ok(json!({"snapshot": id, "label": m.label, "vectors": m.vectors, "out": a.out}))
}

async fn import(a: &ImportArgs) -> anyhow::Result<serde_json::Value> {
    let t = &a.target;
    let store = open(t)?;
    let (ns, label) = (t.namespace.as_str(), t.label.as_str());
    let mbytes = std::fs::read(a.from.join("manifest.json"))
        .with_context(|| format!("reading {}", a.from.join("manifest.json").display()))?;
    let id = serde_json::from_slice::<Manifest>(&mbytes)
        .with_context(|| format!("{}: not a snapshot manifest", a.from.display()))?
        .id;
    let (from, sid) = (a.from.clone(), id.clone());
    let (m, _) = tokio::task::spawn_blocking(move || snapshot::load_from(&from, &sid))
        .await?
        .with_context(|| format!("verifying {}", a.from.display()))?;
    anyhow::ensure!(m.label == label, "the snapshot belongs to label {:?}, not {label:?}", m.label);
    store.put(ns, label, &id, &a.from).await.context("storing the snapshot")?;
    // What landed on storage is checked again before anything points at it.
    verified(&store, t, &id).await?;
    if !a.no_publish {
        store.publish(ns, label, &id).await?;
    }
    Ok(json!({"snapshot": id, "namespace": ns, "label": label, "vectors": m.vectors, "current": !a.no_publish}))
}

fn copy_synced(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    std::fs::File::open(to).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", to.display()))
}
