//! The API documents itself: `kubectl explain` must show a description for every field of both
//! CRDs (ours and the embedded Kubernetes types), and defaults must be in the schema.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray,
};
use kim_operator::build::{self, Defaults};
use kim_operator::crd::{Indexer, MatchingIndex};
use kube::CustomResourceExt;

/// Paths (`spec.hnsw.m`) of every property below `schema` without a description.
fn undocumented(path: &str, schema: &JSONSchemaProps, out: &mut Vec<String>) {
    for (name, prop) in schema.properties.iter().flatten() {
        let p = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
        if prop.description.as_deref().is_none_or(|d| d.trim().is_empty()) {
            out.push(p.clone());
        }
        undocumented(&p, prop, out);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = &schema.items {
        undocumented(&format!("{path}[]"), items, out);
    }
    if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrBool::Schema(v)) =
        &schema.additional_properties
    {
        undocumented(&format!("{path}{{}}"), v, out);
    }
}

fn root(crd: &CustomResourceDefinition) -> JSONSchemaProps {
    crd.spec.versions[0].schema.clone().unwrap().open_api_v3_schema.unwrap()
}

/// Follows `spec.a.b` through the properties.
fn at(schema: &JSONSchemaProps, path: &str) -> JSONSchemaProps {
    path.split('.').fold(schema.clone(), |s, name| {
        s.properties.and_then(|mut p| p.remove(name)).unwrap_or_else(|| panic!("no field {path}"))
    })
}

#[test]
fn every_field_of_both_crds_has_a_description() {
    for crd in [MatchingIndex::crd(), Indexer::crd()] {
        let schema = root(&crd);
        let kind = &crd.spec.names.kind;
        assert!(
            !schema.description.as_deref().unwrap_or_default().starts_with("Auto-generated"),
            "{kind} has no description of its own"
        );
        let mut missing = Vec::new();
        undocumented("", &schema, &mut missing);
        // apiVersion, kind and metadata are described by the API server itself.
        missing.retain(|p| !matches!(p.as_str(), "apiVersion" | "kind" | "metadata"));
        assert!(missing.is_empty(), "{kind}: {} fields without a description: {missing:?}", missing.len());
    }
}

#[test]
fn the_walk_finds_a_missing_description() {
    let mut schema = root(&MatchingIndex::crd());
    let hnsw = schema.properties.as_mut().unwrap().get_mut("spec").unwrap();
    hnsw.properties
        .as_mut()
        .unwrap()
        .get_mut("hnsw")
        .unwrap()
        .properties
        .as_mut()
        .unwrap()
        .get_mut("m")
        .unwrap()
        .description = None;
    let mut missing = Vec::new();
    undocumented("", &schema, &mut missing);
    assert!(missing.contains(&"spec.hnsw.m".to_string()), "{missing:?}");
}

#[test]
fn static_defaults_are_in_the_schema() {
    let mi = root(&MatchingIndex::crd());
    for (path, want) in [
        ("spec.hnsw.m", "16"),
        ("spec.hnsw.efConstruction", "200"),
        ("spec.hnsw.efSearch", "96"),
        ("spec.matcher.replicas", "1"),
        ("spec.redis.secretRef.key", "\"url\""),
        ("spec.redis.auth.usernameKey", "\"username\""),
        ("spec.redis.auth.passwordKey", "\"password\""),
        ("spec.online.agents", "1"),
        ("spec.online.agentStorage", "\"10Gi\""),
    ] {
        let d = at(&mi, path).default.unwrap_or_else(|| panic!("{path} has no default"));
        assert_eq!(d.0.to_string(), want, "{path}");
    }
    let ix = root(&Indexer::crd());
    for (path, want) in [
        ("spec.maxConcurrentBuilds", "1"),
        ("spec.buildTimeout", "\"2h\""),
        ("spec.retryLimit", "2"),
        ("spec.snapshotsToKeep", "3"),
    ] {
        let d = at(&ix, path).default.unwrap_or_else(|| panic!("{path} has no default"));
        assert_eq!(d.0.to_string(), want, "{path}");
    }
}

#[test]
fn matching_index_has_a_scale_subresource_on_matcher_replicas() {
    let crd = MatchingIndex::crd();
    let sub = crd.spec.versions[0].subresources.clone().unwrap();
    assert!(sub.status.is_some());
    let scale = sub.scale.unwrap();
    assert_eq!(scale.spec_replicas_path, ".spec.matcher.replicas");
    assert_eq!(scale.status_replicas_path, ".status.matchers.ready");
    assert_eq!(scale.label_selector_path.as_deref(), Some(".status.matcherSelector"));
}

#[test]
fn matcher_selector_selects_the_matcher_pods_only() {
    let json = |kind: &str, spec: serde_json::Value| serde_json::json!({"apiVersion": "kim.dev/v1alpha1", "kind": kind, "metadata": {"name": "faces", "namespace": "t"}, "spec": spec});
    let mi: MatchingIndex = serde_json::from_value(json("MatchingIndex", serde_json::json!({
        "indexerRef": {"name": "pool"}, "descriptor": {"version": 59, "dimensions": 8, "encoding": "u8", "metric": "cosine"},
        "source": {"path": "a.npy"}, "redis": {"url": "redis://r"}})))
    .unwrap();
    let ix: Indexer = serde_json::from_value(json("Indexer", serde_json::json!({"storage": {"size": "1Gi"}}))).unwrap();
    let selector = mi.matcher_selector();
    assert_eq!(selector, "kim.dev/matching-index=faces,kim.dev/component=matcher");
    let d = Defaults { worker_image: "kim-worker:t".into(), image_pull_policy: "Never".into() };
    let matches = |labels: std::collections::BTreeMap<String, String>| {
        selector.split(',').all(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            labels.get(k).map(String::as_str) == Some(v)
        })
    };
    let pod_labels =
        |t: Option<k8s_openapi::api::core::v1::PodTemplateSpec>| t.unwrap().metadata.unwrap().labels.unwrap();
    let matcher = build::matcher_deployment(&mi, &ix, &d, build::Shard::WHOLE, Some(1)).spec.unwrap().template;
    assert!(matches(pod_labels(Some(matcher))), "matcher pods not selected by {selector}");
    let builder = build::build_job(&mi, &ix, &build::build_hash(&mi, 0), 60, &d).spec.unwrap().template;
    assert!(!matches(pod_labels(Some(builder))), "build pods selected by {selector}");
}
