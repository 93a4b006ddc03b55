//! What `index` and `refresh` read: a matrix file (`.npy`, `.fvecs`, `.kimv`) with optional
//! ids, an append-only directory of such files, or `agents://` (the online agents' objects).

use std::path::{Path, PathBuf};

use anyhow::Context;
use kim_index::io::{check_ids, read_ids};
use kim_index::snapshot::hash_hex;
use kim_index::Matrix;

use crate::exit::{Class, Classify, Failure};
use crate::online::source::SourceError;
use crate::online::tls::ClientTls;

const EXTENSIONS: [&str; 3] = ["npy", "fvecs", "kimv"];

/// Rows with their ids, and a digest of what they were read from.
#[derive(Debug)]
pub struct Source {
    pub matrix: Matrix,
    pub ids: Vec<String>,
    /// `xxh3:<hex>` of the source bytes followed by the ids.
    pub digest: String,
}

/// The rows of `src` whose ids belong to shard `shard` of `shards` (`kim_api::shard::shard_of`),
/// in source order; everything when the label is not split. The digest names the shard too.
pub fn keep_shard(src: Source, shard: u32, shards: u32) -> Source {
    if shards <= 1 {
        return src;
    }
    let Source { matrix, ids, digest } = src;
    let row = matrix.data.len().checked_div(matrix.rows).unwrap_or(0);
    let mut data = Vec::new();
    let mut kept = Vec::new();
    for (i, id) in ids.into_iter().enumerate() {
        if kim_api::shard::shard_of(&id, shards) == shard {
            data.extend_from_slice(&matrix.data[i * row..(i + 1) * row]);
            kept.push(id);
        }
    }
    let matrix = Matrix { rows: kept.len(), data, ..matrix };
    Source { matrix, ids: kept, digest: format!("{digest}/shard-{shard}-of-{shards}") }
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

/// Reads `source`. `ids` (one per line, in row order) applies to a single file only; without
/// it a file's ids are its row numbers. In a directory every descriptor file `<stem>.<ext>`
/// takes its ids from `<stem>.ids` beside it, else `<stem>-<row>`; files are read in name
/// order and must agree on encoding and dimensions. Errors carry their exit class: a missing
/// file (or a directory without descriptor files) is `NoInput`, malformed content `Config`,
/// unreachable agents `Transient`.
pub fn read(source: &Path, ids: Option<&Path>, tls: &ClientTls) -> Result<Source, Failure> {
    if let Some(agents) = crate::online::source::agents(source) {
        let dialer = tls.dialer().class(Class::Config)?;
        let (bytes, matrix, ids) = crate::online::source::read(&agents, &dialer)
            .map_err(|e| Failure { class: source_class(&e), error: e.into() })?;
        return Ok(with_digest(bytes, matrix, ids));
    }
    if source.is_dir() {
        if ids.is_some() {
            return Err(crate::indexer::config(
                "--ids applies to a single source file; in a directory, <stem>.ids beside each file holds its ids"
                    .into(),
            ));
        }
        return read_dir(source);
    }
    let bytes = std::fs::read(source).map_err(|e| input_error(e, source, "source"))?;
    // The file was just readable: what fails now is its content.
    let matrix = Matrix::read(source).class(Class::Config)?;
    let ids = match ids {
        Some(p) => {
            std::fs::File::open(p).map_err(|e| input_error(e, p, "ids"))?;
            read_ids(p, matrix.rows).class(Class::Config)?
        }
        None => (0..matrix.rows).map(|i| i.to_string()).collect(),
    };
    Ok(with_digest(bytes, matrix, ids))
}

fn with_digest(mut bytes: Vec<u8>, matrix: Matrix, ids: Vec<String>) -> Source {
    bytes.extend(ids.join("\n").bytes());
    Source { matrix, ids, digest: format!("xxh3:{}", hash_hex(&bytes)) }
}

/// Descriptor files of a directory source, in name order.
fn files(dir: &Path) -> Result<Vec<PathBuf>, Failure> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| input_error(e, dir, "directory"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.contains(&e)))
        .collect();
    files.sort();
    if files.is_empty() {
        let error = anyhow::anyhow!("{} holds no .npy, .fvecs or .kimv files", dir.display());
        return Err(Failure { class: Class::NoInput, error });
    }
    Ok(files)
}

fn read_dir(dir: &Path) -> Result<Source, Failure> {
    let mut bytes = Vec::new();
    let mut all: Option<Matrix> = None;
    let mut ids = Vec::new();
    for f in files(dir)? {
        bytes.extend(std::fs::read(&f).map_err(|e| input_error(e, &f, "source"))?);
        let m = Matrix::read(&f).with_context(|| format!("source {}", f.display())).class(Class::Config)?;
        let stem = f.file_stem().and_then(|s| s.to_str()).context("file name is not UTF-8").class(Class::Config)?;
        let id_file = f.with_extension("ids");
        let file_ids = if id_file.is_file() {
            read_ids(&id_file, m.rows).class(Class::Config)?
        } else {
            (0..m.rows).map(|i| format!("{stem}-{i}")).collect()
        };
        ids.extend(file_ids);
        all = Some(match all {
            None => m,
            Some(mut acc) => {
                if (acc.encoding, acc.dims) != (m.encoding, m.dims) {
                    return Err(crate::indexer::config(format!(
                        "{}: {} × {} differs from the files before it ({} × {})",
                        f.display(),
                        m.dims,
                        m.encoding,
                        acc.dims,
                        acc.encoding
                    )));
                }
                acc.data.extend_from_slice(&m.data);
                acc.rows += m.rows;
                acc
            }
        });
    }
    let Some(matrix) = all else {
        return Err(crate::indexer::config(format!("{} holds no descriptor files", dir.display())));
    };
    check_ids(&ids, matrix.rows).with_context(|| format!("ids of {}", dir.display())).class(Class::Config)?;
    Ok(with_digest(bytes, matrix, ids))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kim_index::Encoding;

    fn npy(path: &Path, rows: usize, fill: u8) {
        Matrix { encoding: Encoding::U8, rows, dims: 4, data: vec![fill; rows * 4] }.write_npy(path).unwrap();
    }

    #[test]
    fn directory_files_in_name_order_with_their_ids() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        npy(&d.join("b.npy"), 2, 2);
        npy(&d.join("a.npy"), 1, 1);
        std::fs::write(d.join("b.ids"), "x\ny\n").unwrap();
        std::fs::write(d.join("notes.txt"), "ignored").unwrap();
        let s = read(d, None, &ClientTls::default()).unwrap();
        assert_eq!(s.ids, ["a-0", "x", "y"]);
        assert_eq!((s.matrix.rows, s.matrix.row(0)[0], s.matrix.row(2)[0]), (3, 1, 2));
        // Appending a file keeps the earlier ids.
        npy(&d.join("c.npy"), 1, 3);
        let s2 = read(d, None, &ClientTls::default()).unwrap();
        assert_eq!(s2.ids, ["a-0", "x", "y", "c-0"]);
        assert_ne!(s.digest, s2.digest);
        assert!(read(d, Some(&d.join("b.ids")), &ClientTls::default()).is_err());
        // Files must agree; ids must stay distinct.
        std::fs::write(d.join("c.ids"), "x\n").unwrap();
        assert!(format!("{:#}", read(d, None, &ClientTls::default()).unwrap_err()).contains("duplicate"));
        std::fs::remove_file(d.join("c.ids")).unwrap();
        Matrix { encoding: Encoding::U8, rows: 1, dims: 8, data: vec![0; 8] }.write_npy(&d.join("d.npy")).unwrap();
        assert!(format!("{:#}", read(d, None, &ClientTls::default()).unwrap_err()).contains("differs"));
        let empty = tempfile::tempdir().unwrap();
        assert!(read(empty.path(), None, &ClientTls::default()).is_err());
    }
}
