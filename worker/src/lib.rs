//! kim-worker: the data-plane processes kim runs (index builder, Redis matcher) and small tools.
//! `main.rs` only parses the command line; each subcommand lives in its own module.

pub mod cli;
pub mod exit;
pub mod gen;
pub mod indexer;
pub mod matcher;
pub mod online;
pub mod refresh;
pub mod snapshots;
pub mod source;
pub mod storage;
