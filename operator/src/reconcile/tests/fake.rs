//! An in-memory API server behind kube's `Client`, over a `tower-test` mock service: enough
//! of get, list (label selectors), server-side apply, merge patch, delete (finalizers and
//! collections) and create for the reconcile tests. Every request is logged.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

#[derive(Default)]
pub struct State {
    /// Objects by `<api prefix>/<resource>/<namespace>/<name>`.
    pub objects: BTreeMap<String, Value>,
    /// `METHOD path?query` of every request, in order.
    pub log: Vec<String>,
    rv: u64,
}

pub type Shared = Arc<Mutex<State>>;

/// A client whose requests `State` answers.
pub fn client() -> (Client, Shared) {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let state: Shared = Arc::default();
    let s = state.clone();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let ct = parts.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let (code, v) = s.lock().unwrap().handle(&parts.method, &parts.uri, &ct, &bytes);
            let resp = Response::builder().status(code).body(Body::from(serde_json::to_vec(&v).unwrap())).unwrap();
            send.send_response(resp);
        }
    });
    (Client::new(svc, "default"), state)
}

/// `/apis/apps/v1/namespaces/team/deployments/x/status` → ("/apis/apps/v1", "deployments", "team", Some("x"), Some("status")).
#[allow(clippy::type_complexity)]
fn split(path: &str) -> Option<(String, String, String, Option<String>, Option<String>)> {
    let parts: Vec<&str> = path.split('/').collect();
    let i = parts.iter().position(|p| *p == "namespaces")?;
    let prefix = parts[..i].join("/");
    let ns = parts.get(i + 1)?.to_string();
    let resource = parts.get(i + 2)?.to_string();
    Some((prefix, resource, ns, parts.get(i + 3).map(|s| s.to_string()), parts.get(i + 4).map(|s| s.to_string())))
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn query(uri: &http::Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(decode))
}

/// `a=b,c!=d` against an object's labels.
pub fn selects(selector: &str, obj: &Value) -> bool {
    let labels = &obj["metadata"]["labels"];
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k].as_str() != Some(v)
        } else if let Some((k, v)) = term.split_once('=') {
            labels[k].as_str() == Some(v)
        } else {
            !labels[term].is_null()
        }
    })
}

fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn status(code: u16, reason: &str, message: &str) -> (StatusCode, Value) {
    let v = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "reason": reason, "message": message, "code": code});
    (StatusCode::from_u16(code).unwrap(), v)
}

impl State {
    pub fn key(prefix: &str, resource: &str, ns: &str, name: &str) -> String {
        format!("{prefix}/{resource}/{ns}/{name}")
    }

    fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    /// Stores `obj` as the API server would on create.
    pub fn put(&mut self, prefix: &str, resource: &str, mut obj: Value) {
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or("team").to_string();
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let rv = self.next_rv();
        let m = &mut obj["metadata"];
        m["namespace"] = json!(ns);
        m["resourceVersion"] = json!(rv);
        if m["uid"].is_null() {
            m["uid"] = json!(format!("uid-{name}-{rv}"));
        }
        if m["creationTimestamp"].is_null() {
            m["creationTimestamp"] = json!("2026-11-22T00:00:00Z");
        }
        if m["generation"].is_null() {
            m["generation"] = json!(1);
        }
        self.objects.insert(Self::key(prefix, resource, &ns, &name), obj);
    }

    pub fn get(&self, prefix: &str, resource: &str, name: &str) -> Option<&Value> {
        self.objects.get(&Self::key(prefix, resource, "team", name))
    }

    pub fn get_mut(&mut self, prefix: &str, resource: &str, name: &str) -> Option<&mut Value> {
        self.objects.get_mut(&Self::key(prefix, resource, "team", name))
    }

    /// Names of the stored objects of one resource.
    pub fn names(&self, prefix: &str, resource: &str) -> Vec<String> {
        let start = format!("{prefix}/{resource}/");
        self.objects
            .iter()
            .filter(|(k, _)| k.starts_with(&start))
            .map(|(_, v)| v["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    }

    fn handle(&mut self, method: &Method, uri: &http::Uri, ct: &str, body: &[u8]) -> (StatusCode, Value) {
        self.log.push(format!("{method} {}", uri.path_and_query().map(|p| p.as_str()).unwrap_or("")));
        let Some((prefix, resource, ns, name, sub)) = split(uri.path()) else {
            return status(404, "NotFound", "no such path");
        };
        let body: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(body).unwrap() };
        let key = name.as_ref().map(|n| Self::key(&prefix, &resource, &ns, n));
        match (method.clone(), key) {
            (Method::GET, Some(k)) => match self.objects.get(&k) {
                Some(o) => (StatusCode::OK, o.clone()),
                None => status(404, "NotFound", &format!("{resource} {k} not found")),
            },
            (Method::GET, None) => {
                let sel = query(uri, "labelSelector").unwrap_or_default();
                let start = format!("{prefix}/{resource}/{ns}/");
                let items: Vec<Value> = self
                    .objects
                    .iter()
                    .filter(|(k, v)| k.starts_with(&start) && selects(&sel, v))
                    .map(|(_, v)| v.clone())
                    .collect();
                (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": self.rv.to_string()}, "items": items}),
                )
            }
            (Method::POST, None) => {
                let mut obj = body;
                if obj["metadata"]["name"].is_null() {
                    let n = format!("{}{}", obj["metadata"]["generateName"].as_str().unwrap_or("obj-"), self.rv);
                    obj["metadata"]["name"] = json!(n);
                }
                obj["metadata"]["namespace"] = json!(ns);
                if resource == "events" {
                    // Names of Events made in the same instant may collide; keep every one.
                    let n = format!("{}.{}", obj["metadata"]["name"].as_str().unwrap_or("event"), self.rv);
                    obj["metadata"]["name"] = json!(n);
                }
                self.put(&prefix, &resource, obj.clone());
                (StatusCode::CREATED, obj)
            }
            (Method::PATCH, Some(k)) => {
                let rv = self.next_rv();
                if ct.starts_with("application/apply-patch") {
                    let mut obj = match self.objects.get(&k) {
                        Some(o) => o.clone(),
                        None if sub.is_some() => return status(404, "NotFound", "no object for status"),
                        None => {
                            json!({"metadata": {"uid": format!("uid-{}", name.clone().unwrap()), "creationTimestamp": "2026-11-22T00:00:00Z", "generation": 1}})
                        }
                    };
                    if sub.as_deref() == Some("status") {
                        obj["status"] = body["status"].clone();
                    } else {
                        let keep = obj["metadata"].clone();
                        let st = obj["status"].clone();
                        obj = body;
                        for f in ["uid", "creationTimestamp", "generation", "finalizers", "deletionTimestamp"] {
                            if !keep[f].is_null() {
                                obj["metadata"][f] = keep[f].clone();
                            }
                        }
                        obj["metadata"]["namespace"] = json!(ns);
                        obj["status"] = st;
                    }
                    obj["metadata"]["resourceVersion"] = json!(rv);
                    self.objects.insert(k, obj.clone());
                    return (StatusCode::OK, obj);
                }
                let Some(mut obj) = self.objects.get(&k).cloned() else {
                    return status(404, "NotFound", "not found");
                };
                if let Some(want) = body["metadata"]["resourceVersion"].as_str() {
                    if obj["metadata"]["resourceVersion"].as_str() != Some(want) {
                        return status(409, "Conflict", "the object has been modified");
                    }
                }
                let mut patch = body;
                // `get_mut`, not indexing: indexing would add `"metadata": null`, which merges as a removal.
                if let Some(m) = patch.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                    m.remove("resourceVersion");
                }
                merge(&mut obj, &patch);
                obj["metadata"]["resourceVersion"] = json!(rv);
                let finalizers_empty = obj["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty());
                if !obj["metadata"]["deletionTimestamp"].is_null() && finalizers_empty {
                    self.objects.remove(&k);
                } else {
                    self.objects.insert(k, obj.clone());
                }
                (StatusCode::OK, obj)
            }
            (Method::DELETE, Some(k)) => {
                let Some(mut obj) = self.objects.get(&k).cloned() else {
                    return status(404, "NotFound", "not found");
                };
                if obj["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()) {
                    obj["metadata"]["deletionTimestamp"] = json!("2026-11-22T01:00:00Z");
                    self.objects.insert(k, obj.clone());
                } else {
                    self.objects.remove(&k);
                }
                (StatusCode::OK, obj)
            }
            (Method::DELETE, None) => {
                let sel = query(uri, "labelSelector").unwrap_or_default();
                let start = format!("{prefix}/{resource}/{ns}/");
                let gone: Vec<String> = self
                    .objects
                    .iter()
                    .filter(|(k, v)| k.starts_with(&start) && selects(&sel, v))
                    .map(|(k, _)| k.clone())
                    .collect();
                let items: Vec<Value> = gone.iter().filter_map(|k| self.objects.remove(k)).collect();
                (StatusCode::OK, json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}))
            }
            _ => status(405, "MethodNotAllowed", "not supported by the fake"),
        }
    }
}
