//! kim's index library: descriptor codecs, exact distance kernels, kim's own parallel HNSW build,
//! the flat read-only search layout used by matchers, and the on-disk snapshot format.
//!
//! Data flows one way: a [`Matrix`] of source rows is checked against a [`DescriptorSpec`],
//! turned into a [`VectorStore`] (the serving encoding), indexed by [`build::build_graph`],
//! written as a snapshot and loaded back as a [`FlatIndex`] that answers searches.

pub mod build;
pub mod delta;
pub mod descriptor;
pub mod error;
pub mod flat;
pub mod hnsw;
pub mod io;
pub mod kernels;
pub mod nibbles;
pub mod rng;
pub mod snapshot;
pub mod synth;
pub mod tail;
pub mod vectors;

pub use descriptor::{DecodeError, DescriptorSpec, Encoding, Metric, Query};
pub use error::Error;
pub use flat::{FlatIndex, Graph, Hit};
pub use io::Matrix;
pub use snapshot::{Manifest, SnapshotError};
pub use vectors::VectorStore;

/// HNSW parameters shared by the builder, the manifest and the CRD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HnswParams {
    /// Links per node on upper layers (layer 0 keeps up to 2·m).
    pub m: usize,
    pub ef_construction: usize,
    /// Default beam width at search time; requests may not go below `k`.
    pub ef_search: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        use kim_api::build::{DEFAULT_EF_CONSTRUCTION, DEFAULT_EF_SEARCH, DEFAULT_M};
        HnswParams { m: DEFAULT_M, ef_construction: DEFAULT_EF_CONSTRUCTION, ef_search: DEFAULT_EF_SEARCH }
    }
}
