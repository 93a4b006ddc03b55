//! Test infrastructure for kim's end-to-end tier (not shipped, not used in production).
//!
//! [`node::Harness`] plays the kubelet of one extra Node that kwok does not manage: it runs
//! the containers of pods bound to that node as local processes (kim images map to the
//! binaries in `target/release`), maps their volumes to directories on this machine, gives
//! them a kubeconfig with a real ServiceAccount token, and reports their status back through
//! the pods/status subresource. `tests/full.rs` drives `helm install` → samples → match with it.
//! See e2e/README.md ("Node harness").

pub mod node;
