//! Helpers of the chart tests: the Go-built tools (helm, kubectl) from $KIM_CACHE/bin, a core
//! control plane from e2e/cluster.sh, and multi-document YAML parsing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

fn cache() -> PathBuf {
    std::env::var("KIM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/kim"))
}

fn bin(name: &str) -> PathBuf {
    cache().join("bin").join(name)
}

/// Builds (or finds cached) etcd, kube-apiserver, kubectl and helm once per test process.
pub fn tools() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let out = Command::new("bash").arg(repo().join("e2e/tools.sh")).args(["core", "helm"]).output().unwrap();
        assert!(out.status.success(), "e2e/tools.sh core helm: {}", String::from_utf8_lossy(&out.stderr));
    });
}

pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs a tool from the cache in the repository root, with `stdin` piped in if given.
pub fn run(tool: &str, args: &[&str], env: &[(&str, &Path)], stdin: Option<&str>) -> Output {
    tools();
    let mut cmd = Command::new(bin(tool));
    cmd.args(args)
        .current_dir(repo())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // helm keeps its own config, cache and data under $KIM_CACHE, not in the user's home.
    let helm = cache().join("helm-test");
    cmd.env("HELM_CONFIG_HOME", helm.join("config"))
        .env("HELM_CACHE_HOME", helm.join("cache"))
        .env("HELM_DATA_HOME", helm.join("data"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(s) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

pub fn ok(tool: &str, args: &[&str]) -> String {
    let out = run(tool, args, &[], None);
    assert!(out.status.success(), "{tool} {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

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

/// Polls `f` every 200 ms until it returns Some, at most `secs` seconds.
pub fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() < Duration::from_secs(secs), "timed out after {secs}s waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A process killed and reaped on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A redis-server on a free loopback port, accepting connections when this returns; its output
/// goes to `log`.
pub fn redis_server(log: Stdio) -> (Proc, u16) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(log)
        .spawn()
        .expect("redis-server (scripts/deps.sh installs it)");
    let p = Proc(child);
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "redis did not start");
        std::thread::sleep(Duration::from_millis(25));
    }
    (p, port)
}

/// etcd + kube-apiserver on loopback (e2e/cluster.sh up core), stopped on drop.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

impl Cluster {
    pub fn up() -> Cluster {
        tools();
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("bash")
            .arg(repo().join("e2e/cluster.sh"))
            .args(["up", "core"])
            .env("KIM_CLUSTER_DIR", dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "cluster up: {}", text(&out));
        let kubeconfig = dir.path().join("kubeconfig");
        Cluster { dir, kubeconfig }
    }

    /// kubectl or helm with this cluster's admin kubeconfig.
    pub fn run(&self, tool: &str, args: &[&str], stdin: Option<&str>) -> Output {
        run(tool, args, &[("KUBECONFIG", &self.kubeconfig)], stdin)
    }

    pub fn ok(&self, tool: &str, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(tool, args, stdin);
        assert!(out.status.success(), "{tool} {args:?}: {}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        self.ok("kubectl", args, None)
    }

    /// Waits until kim's CRDs are served and their schemas published. `kubectl wait` fails at
    /// once (not after its timeout) while a just-created CRD has no status yet, and the OpenAPI
    /// document `kubectl explain` reads is published a moment after Established, so each is
    /// asked again for up to 30 s.
    pub fn wait_crds(&self) {
        let args = ["wait", "--for", "condition=Established", "crd/matchingindexes.kim.dev", "crd/indexers.kim.dev"];
        let waits: [&[&str]; 3] =
            [&[&args[..], &["--timeout=5s"]].concat(), &["explain", "matchingindex"], &["explain", "indexer"]];
        let t = std::time::Instant::now();
        for w in waits {
            loop {
                let out = self.run("kubectl", w, None);
                if out.status.success() {
                    break;
                }
                assert!(t.elapsed() < std::time::Duration::from_secs(30), "kubectl {w:?}: {}", text(&out));
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }

    /// `kubectl get -o json` of one object, None if it does not exist.
    pub fn get(&self, args: &[&str]) -> Option<Value> {
        let mut a = vec!["get", "-o", "json"];
        a.extend_from_slice(args);
        let out = self.run("kubectl", &a, None);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// A kubeconfig that authenticates as a ServiceAccount with a fresh token.
    pub fn service_account_kubeconfig(&self, ns: &str, sa: &str) -> PathBuf {
        let token = self.kubectl(&["create", "token", sa, "-n", ns, "--duration=1h"]);
        let server = self.kubectl(&["config", "view", "-o", "jsonpath={.clusters[0].cluster.server}"]);
        let path = self.dir.path().join(format!("{sa}.kubeconfig"));
        let p = path.to_str().unwrap();
        let ca = self.dir.path().join("pki/ca.crt");
        for args in [
            vec![
                "config",
                "--kubeconfig",
                p,
                "set-cluster",
                "kim",
                "--server",
                &server,
                "--embed-certs",
                "--certificate-authority",
                ca.to_str().unwrap(),
            ],
            vec!["config", "--kubeconfig", p, "set-credentials", sa, "--token", token.trim()],
            vec!["config", "--kubeconfig", p, "set-context", "kim", "--cluster", "kim", "--user", sa],
            vec!["config", "--kubeconfig", p, "use-context", "kim"],
        ] {
            ok("kubectl", &args);
        }
        path
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("e2e/cluster.sh"))
            .arg("down")
            .env("KIM_CLUSTER_DIR", self.dir.path())
            .output();
    }
}
