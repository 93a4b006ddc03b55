//! The Helm chart (charts/kim), the kustomize base (deploy/base) and the samples
//! (deploy/samples): lint, rendered properties, drift between generated copies (render.rs), and
//! against a real kube-apiserver: server-side dry runs, `helm install`, and the operator running
//! under the chart's RBAC (cluster.rs); the CRDs' documentation, label immutability and scale
//! subresource (crds.rs).

mod cluster;
mod crds;
mod render;
mod support;
