//! The chart's CRDs on a real kube-apiserver: `kubectl explain` documents the fields, the label
//! cannot be renamed, `kubectl scale` drives the matcher replicas, and an Indexer names exactly
//! one storage.

use serde_json::json;

use crate::support::{text, Cluster, Profile};

const MI: &str = r#"
apiVersion: kim.dev/v1alpha1
kind: MatchingIndex
metadata: {name: NAME, namespace: api}
spec:
  LABEL
  indexerRef: {name: pool}
  descriptor: {version: 59, dimensions: 8, encoding: u8, metric: cosine}
  source: {path: base.npy}
  redis: {url: "redis://127.0.0.1:6379"}
"#;

fn mi(name: &str, label: Option<&str>) -> String {
    MI.replace("NAME", name).replace("LABEL", &label.map(|l| format!("label: {l}")).unwrap_or_default())
}

fn crds_up() -> Cluster {
    let c = Cluster::up(Profile::Core);
    c.kubectl(&["apply", "--server-side", "-f", "charts/kim/crds/"]);
    c.wait_crds();
    c.kubectl(&["create", "namespace", "api"]);
    c
}

/// A merge patch that must be refused with `message`.
fn refused(c: &Cluster, name: &str, patch: serde_json::Value, message: &str) {
    let out = c.run("kubectl", &["patch", "mi", name, "-n", "api", "--type=merge", "-p", &patch.to_string()], None);
    assert!(!out.status.success(), "patch {patch} of {name} was accepted");
    assert!(text(&out).contains(message), "patch {patch} of {name}: {}", text(&out));
}

#[test]
fn explain_documents_fields_and_defaults() {
    let c = crds_up();
    let explain = c.kubectl(&["explain", "matchingindex.spec.hnsw"]);
    for want in
        ["Parameters of the HNSW graph", "Links per node", "Beam width while building", "Beam width of a search"]
    {
        assert!(explain.contains(want), "explain lacks {want:?}:\n{explain}");
    }
    let explain = c.kubectl(&["explain", "matchingindex.spec.descriptor.encoding"]);
    assert!(explain.contains("u8 (LUNA descriptors)"), "{explain}");
    let explain = c.kubectl(&["explain", "matchingindex"]);
    assert!(explain.contains("One label (matching list)"), "{explain}");
    let explain = c.kubectl(&["explain", "indexer.spec.maxConcurrentBuilds"]);
    assert!(explain.contains("Builds that may run at once"), "{explain}");
    // Defaults are applied by the API server: a MatchingIndex without hnsw gets the documented ones.
    c.ok("kubectl", &["apply", "-f", "-"], Some(&mi("plain", None)));
    let hnsw = c.get(&["mi", "plain", "-n", "api"]).unwrap()["spec"]["hnsw"].clone();
    assert_eq!(hnsw, json!({"m": 16, "efConstruction": 200, "efSearch": 96}));
}

#[test]
fn label_cannot_be_renamed() {
    let c = crds_up();
    c.ok("kubectl", &["apply", "-f", "-"], Some(&mi("named", Some("faces"))));
    c.ok("kubectl", &["apply", "-f", "-"], Some(&mi("bare", None)));
    c.ok("kubectl", &["apply", "-f", "-"], Some(&mi("same", Some("same"))));
    let message = "spec.label is immutable";
    refused(&c, "named", json!({"spec": {"label": "faces-2"}}), message);
    refused(&c, "named", json!({"spec": {"label": null}}), message);
    refused(&c, "bare", json!({"spec": {"label": "other"}}), message);
    // Spelling out the label the object already serves (its name) is not a rename.
    c.kubectl(&["patch", "mi", "bare", "-n", "api", "--type=merge", "-p", r#"{"spec":{"label":"bare"}}"#]);
    c.kubectl(&["patch", "mi", "same", "-n", "api", "--type=merge", "-p", r#"{"spec":{"label":null}}"#]);
    // Other fields still change freely, and the message tells the way out.
    c.kubectl(&["patch", "mi", "named", "-n", "api", "--type=merge", "-p", r#"{"spec":{"hnsw":{"efSearch":200}}}"#]);
    let out = c.run(
        "kubectl",
        &["patch", "mi", "named", "-n", "api", "--type=merge", "-p", r#"{"spec":{"label":"x"}}"#],
        None,
    );
    assert!(text(&out).contains("create a new MatchingIndex"), "{}", text(&out));
    let got = c.get(&["mi", "named", "-n", "api"]).unwrap();
    assert_eq!((got["spec"]["label"].as_str(), got["spec"]["hnsw"]["efSearch"].as_i64()), (Some("faces"), Some(200)));
}

#[test]
fn kubectl_scale_sets_matcher_replicas() {
    let c = crds_up();
    c.ok("kubectl", &["apply", "-f", "-"], Some(&mi("faces", None)));
    let out = c.kubectl(&["scale", "mi", "faces", "-n", "api", "--replicas=3"]);
    assert!(out.contains("scaled"), "{out}");
    let got = c.get(&["mi", "faces", "-n", "api"]).unwrap();
    assert_eq!(got["spec"]["matcher"]["replicas"], 3);
    // The scale subresource reads ready matchers and the selector from status.
    let status = json!({"status": {"matchers": {"desired": 3, "ready": 2, "summary": "2/3"},
        "matcherSelector": "kim.dev/matching-index=faces,kim.dev/component=matcher"}});
    c.kubectl(&[
        "patch",
        "mi",
        "faces",
        "-n",
        "api",
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
    let raw = c.kubectl(&["get", "--raw", "/apis/kim.dev/v1alpha1/namespaces/api/matchingindexes/faces/scale"]);
    let scale: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(scale["spec"]["replicas"], 3, "{scale}");
    assert_eq!(scale["status"]["replicas"], 2, "{scale}");
    assert_eq!(scale["status"]["selector"], "kim.dev/matching-index=faces,kim.dev/component=matcher", "{scale}");
    // The field's own rule still holds through the subresource.
    let out = c.run("kubectl", &["scale", "mi", "faces", "-n", "api", "--replicas=1001"], None);
    assert!(!out.status.success() && text(&out).contains("matcher.replicas must be 0..1000"), "{}", text(&out));
    c.kubectl(&["scale", "mi", "faces", "-n", "api", "--replicas=0"]);
    assert_eq!(c.get(&["mi", "faces", "-n", "api"]).unwrap()["spec"]["matcher"]["replicas"], 0);
}

#[test]
fn indexer_storage_is_exactly_one_of_claim_size_and_bucket() {
    let c = crds_up();
    let ix = |name: &str, storage: &str| {
        format!("apiVersion: kim.dev/v1alpha1\nkind: Indexer\nmetadata: {{name: {name}, namespace: api}}\nspec:\n  storage: {storage}\n")
    };
    let bucket = r#"{s3: {url: "s3://snaps/kim", endpoint: "https://s3.example:9000", credentialsSecret: creds}}"#;
    c.ok("kubectl", &["apply", "-f", "-"], Some(&ix("bucket", bucket)));
    let got = c.get(&["idx", "bucket", "-n", "api"]).unwrap();
    assert_eq!(got["spec"]["storage"]["s3"]["allowHttp"], json!(false), "{got}");
    for (name, storage) in [("both", r#"{size: 1Gi, s3: {url: "s3://snaps/kim"}}"#), ("none", "{}")] {
        let out = c.run("kubectl", &["apply", "-f", "-"], Some(&ix(name, storage)));
        assert!(!out.status.success(), "{name} was accepted");
        let t = text(&out);
        assert!(t.contains("set exactly one of storage.existingClaim, storage.size and storage.s3"), "{name}: {t}");
    }
    let explain = c.kubectl(&["explain", "indexer.spec.storage.s3.credentialsSecret"]);
    assert!(explain.contains("AWS_SECRET_ACCESS_KEY"), "{explain}");
}
