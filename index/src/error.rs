//! The index library's error: what was wrong with a file, a source or a setting, with the numbers.

use std::path::PathBuf;

use crate::descriptor::Encoding;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The OS error is part of the message, not a `source`, so `{:#}` chains print it once.
    #[error("cannot read {path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    /// A problem inside a named file.
    #[error("{path}: {err}")]
    InFile { path: PathBuf, err: Box<Error> },
    /// A data file (`.npy`, `.fvecs`, `.kimv`, graph) that does not parse.
    #[error("{0}")]
    Format(String),
    #[error("payload has {got} bytes, shape ({rows}, {dims}) of {encoding} needs {expected}")]
    PayloadSize { rows: usize, dims: usize, encoding: Encoding, expected: usize, got: usize },
    #[error("source has {got} dimensions, index expects {expected}")]
    WrongDimension { expected: usize, got: usize },
    #[error("source elements are {got}, index encoding is {expected}; convert the source first")]
    WrongEncoding { expected: Encoding, got: Encoding },
    #[error("row {row} has a non-finite value")]
    NonFinite { row: usize },
    #[error("{got} ids for {expected} descriptors")]
    IdCount { expected: usize, got: usize },
    #[error("id on line {line} is empty or has a line break")]
    EmptyId { line: usize },
    #[error("duplicate id {id:?} on line {line}")]
    DuplicateId { id: String, line: usize },
    /// Descriptor settings or HNSW parameters out of range.
    #[error("{0}")]
    Settings(String),
    /// A graph whose structure would let a search read out of bounds.
    #[error("{0}")]
    Graph(String),
    /// A delta that does not fit the state it is applied to (out of order, removes an id that
    /// is not live, adds one that is, or sizes that disagree).
    #[error("{0}")]
    Delta(String),
}

impl Error {
    pub(crate) fn in_file(self, path: &std::path::Path) -> Error {
        Error::InFile { path: path.to_path_buf(), err: Box::new(self) }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
