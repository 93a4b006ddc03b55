//! Helpers of the chart tests: the shared test kit (Go-built tools from the scripts' cache, the
//! core control plane of e2e/cluster.sh, processes, redis-server) plus multi-document YAML.

use serde::Deserialize;
use serde_json::Value;

pub use kim_testkit::{
    eventually, free_port, repo, run_tool as run, text, tool_ok as ok, Cluster, Proc, Profile, Redis,
};

/// Every non-empty document of a multi-document YAML stream.
pub fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml).map(|d| Value::deserialize(d).unwrap()).filter(|v| !v.is_null()).collect()
}

/// `helm template kim charts/kim -n kim-system` with extra `--set`/`-f` arguments.
pub fn render(extra: &[&str]) -> String {
    let mut args = vec!["template", "kim", "charts/kim", "--namespace", "kim-system"];
    args.extend_from_slice(extra);
    ok("helm", &args)
}

/// The one document of `kind` named `name`.
pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {:?}", kinds(docs)))
}

pub fn kinds(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| format!("{}/{}", d["kind"].as_str().unwrap_or("?"), d["metadata"]["name"].as_str().unwrap_or("?")))
        .collect()
}
