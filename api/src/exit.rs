//! Exit codes of `kim-worker`, shared with the operator, which fails a build Job at once on a
//! configuration error instead of retrying it (a Job's podFailurePolicy matches exit codes).
//! The values follow BSD `sysexits.h`.

/// Success.
pub const OK: u8 = 0;
/// Any other failure (e.g. an unexpected internal error); worth a retry.
pub const FAILURE: u8 = 1;
/// The source or ids file does not exist (yet): a retry helps once whatever writes it is done.
pub const NO_INPUT: u8 = 66;
/// A failure of storage or the network (writing the snapshot, reaching agents); worth a retry.
pub const TRANSIENT: u8 = 75;
/// The configuration cannot work as given: unknown or malformed flags, invalid descriptor or
/// HNSW settings, a source whose shape or encoding does not match the descriptor (dimension
/// mismatch), an unreadable or malformed source or ids file. A retry fails the same way.
pub const CONFIG: u8 = 78;

/// The codes above with their names, as docs/cli.md lists them.
pub const ALL: [(&str, u8); 5] =
    [("OK", OK), ("FAILURE", FAILURE), ("NO_INPUT", NO_INPUT), ("TRANSIENT", TRANSIENT), ("CONFIG", CONFIG)];
