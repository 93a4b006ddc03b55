//! Snapshots in a directory (a volume shared by builds and matchers).

use std::fs;
use std::path::{Path, PathBuf};

use kim_index::snapshot::{self, SnapshotError};

use kim_api::shard::valid_storage_name as valid_name;

pub struct Files {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |err| SnapshotError::Io { path: path.to_path_buf(), err }
}

impl Files {
    pub fn new(root: PathBuf) -> Files {
        Files { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn label_dir(&self, ns: &str, label: &str) -> PathBuf {
        snapshot::label_dir(&self.root, ns, label)
    }

    /// Labels with a CURRENT file under `<root>/<namespace>`.
    pub fn labels(&self, ns: &str) -> Vec<String> {
        let Ok(rd) = fs::read_dir(self.root.join(ns)) else { return Vec::new() };
        let mut v: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("CURRENT").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|l| valid_name(l))
            .collect();
        v.sort();
        v
    }

    /// Copies the snapshot in `sdir` into `snapshots/<id>` the way a build writes one (temp
    /// directory, fsync, rename), unless it is already there.
    pub fn put(&self, ns: &str, label: &str, id: &str, sdir: &Path) -> Result<(), SnapshotError> {
        let snaps = self.label_dir(ns, label).join("snapshots");
        let dst = snaps.join(id);
        if dst.exists() {
            return Ok(());
        }
        let tmp = snaps.join(format!(".tmp-{id}"));
        fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        for name in snapshot::file_names() {
            let to = tmp.join(name);
            fs::copy(sdir.join(name), &to).map_err(io(&to))?;
            fs::File::open(&to).and_then(|f| f.sync_all()).map_err(io(&to))?;
        }
        fs::rename(&tmp, &dst).map_err(io(&dst))?;
        fs::File::open(&snaps).and_then(|f| f.sync_all()).map_err(io(&snaps))
    }

    pub fn remove_label(&self, ns: &str, label: &str) -> Result<String, SnapshotError> {
        let dir = self.label_dir(ns, label);
        match fs::remove_dir_all(&dir) {
            Ok(()) => tracing::info!(dir = %dir.display(), "removed label files"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(dir = %dir.display(), "nothing to remove")
            }
            Err(e) => return Err(io(&dir)(e)),
        }
        Ok(dir.display().to_string())
    }
}
