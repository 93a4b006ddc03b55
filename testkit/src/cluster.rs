//! The Go-built control plane of e2e/cluster.sh on loopback, with kubectl and helm from the
//! scripts' cache, stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{cache, repo, text, tool};

/// What `e2e/cluster.sh up` starts.
#[derive(Clone, Copy, Debug)]
pub enum Profile {
    /// etcd and kube-apiserver: no kubelet, no controllers.
    Core,
    /// Core plus kube-controller-manager, kube-scheduler and kwok.
    Full,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Profile::Core => "core",
            Profile::Full => "full",
        }
    }
}

/// Builds (or finds cached) the tools of `profile` and helm, once per test process.
pub fn tools(profile: Profile) {
    static CORE: Once = Once::new();
    static FULL: Once = Once::new();
    let once = match profile {
        Profile::Core => &CORE,
        Profile::Full => &FULL,
    };
    once.call_once(|| {
        let out = Command::new("bash").arg(repo().join("e2e/tools.sh")).args([profile.name(), "helm"]).output();
        let out = out.expect("bash e2e/tools.sh");
        assert!(out.status.success(), "e2e/tools.sh {} helm: {}", profile.name(), text(&out));
    });
}

/// Runs a cached tool in the repository root with extra environment and `stdin` piped in if
/// given. helm keeps its config, cache and data under the cache, not in the user's home.
pub fn run_tool(name: &str, args: &[&str], env: &[(&str, &Path)], stdin: Option<&str>) -> Output {
    tools(Profile::Core);
    let helm = cache().join("helm-test");
    let mut cmd = Command::new(tool(name));
    cmd.args(args)
        .current_dir(repo())
        .env("HELM_CONFIG_HOME", helm.join("config"))
        .env("HELM_CACHE_HOME", helm.join("cache"))
        .env("HELM_DATA_HOME", helm.join("data"))
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{name}: {e}"));
    if let Some(s) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// [`run_tool`] that must succeed; returns stdout.
pub fn tool_ok(name: &str, args: &[&str]) -> String {
    let out = run_tool(name, args, &[], None);
    assert!(out.status.success(), "{name} {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// A running control plane. `dir` is the test's scratch directory; the cluster's own files
/// (kubeconfig, pki, logs) are under [`Cluster::cluster_dir`].
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

impl Cluster {
    pub fn up(profile: Profile) -> Cluster {
        Cluster::up_with(profile, tempfile::tempdir().unwrap(), &[])
    }

    /// Starts in `dir` with extra environment for e2e/cluster.sh (e.g. `KIM_AUDIT_POLICY`).
    pub fn up_with(profile: Profile, dir: tempfile::TempDir, env: &[(&str, &Path)]) -> Cluster {
        tools(profile);
        let cluster_dir = dir.path().join("cluster");
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("e2e/cluster.sh")).args(["up", profile.name()]).env("KIM_CLUSTER_DIR", &cluster_dir);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("bash e2e/cluster.sh");
        assert!(out.status.success(), "cluster up {}: {}", profile.name(), text(&out));
        Cluster { kubeconfig: cluster_dir.join("kubeconfig"), dir }
    }

    pub fn cluster_dir(&self) -> PathBuf {
        self.dir.path().join("cluster")
    }

    /// kubectl or helm with this cluster's admin kubeconfig.
    pub fn run(&self, tool: &str, args: &[&str], stdin: Option<&str>) -> Output {
        run_tool(tool, args, &[("KUBECONFIG", &self.kubeconfig)], stdin)
    }

    pub fn ok(&self, tool: &str, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(tool, args, stdin);
        assert!(out.status.success(), "{tool} {args:?}: {}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        self.ok("kubectl", args, None)
    }

    /// `kubectl apply -f -` of `yaml`, which must succeed.
    pub fn apply(&self, yaml: &str) -> String {
        self.ok("kubectl", &["apply", "-f", "-"], Some(yaml))
    }

    /// `kubectl get -o json` of one object, None if it does not exist.
    pub fn get(&self, args: &[&str]) -> Option<Value> {
        let mut a = vec!["get", "-o", "json"];
        a.extend_from_slice(args);
        let out = self.run("kubectl", &a, None);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// A namespace with its `default` ServiceAccount (the core profile runs no controller that
    /// would create it).
    pub fn namespace(&self, ns: &str) {
        self.kubectl(&["create", "namespace", ns]);
        self.kubectl(&["create", "serviceaccount", "default", "-n", ns]);
    }

    /// Waits until kim's CRDs are served and their schemas published. `kubectl wait` fails at
    /// once (not after its timeout) while a just-created CRD has no status yet, and the OpenAPI
    /// document `kubectl explain` reads is published a moment after Established, so each is
    /// asked again for up to 30 s.
    pub fn wait_crds(&self) {
        let args = ["wait", "--for", "condition=Established", "crd/matchingindexes.kim.dev", "crd/indexers.kim.dev"];
        let waits: [&[&str]; 3] =
            [&[&args[..], &["--timeout=5s"]].concat(), &["explain", "matchingindex"], &["explain", "indexer"]];
        let t = Instant::now();
        for w in waits {
            loop {
                let out = self.run("kubectl", w, None);
                if out.status.success() {
                    break;
                }
                assert!(t.elapsed() < Duration::from_secs(30), "kubectl {w:?}: {}", text(&out));
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    /// A kubeconfig that authenticates as a ServiceAccount with a fresh token.
    pub fn service_account_kubeconfig(&self, ns: &str, sa: &str) -> PathBuf {
        let token = self.kubectl(&["create", "token", sa, "-n", ns, "--duration=1h"]);
        let server = self.kubectl(&["config", "view", "-o", "jsonpath={.clusters[0].cluster.server}"]);
        let path = self.dir.path().join(format!("{sa}.kubeconfig"));
        let p = path.to_str().unwrap();
        let ca = self.cluster_dir().join("pki/ca.crt");
        let cluster = ["set-cluster", "kim", "--server", &server, "--embed-certs", "--certificate-authority"];
        for args in [
            [&["config", "--kubeconfig", p][..], &cluster[..], &[ca.to_str().unwrap()]].concat(),
            vec!["config", "--kubeconfig", p, "set-credentials", sa, "--token", token.trim()],
            vec!["config", "--kubeconfig", p, "set-context", "kim", "--cluster", "kim", "--user", sa],
            vec!["config", "--kubeconfig", p, "use-context", "kim"],
        ] {
            tool_ok("kubectl", &args);
        }
        path
    }

    /// A kube client with the admin kubeconfig.
    #[cfg(feature = "kube")]
    pub async fn client(&self) -> kube::Client {
        use kube::config::{KubeConfigOptions, Kubeconfig};
        let kc = Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.unwrap();
        kube::Client::try_from(cfg).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("e2e/cluster.sh"))
            .arg("down")
            .env("KIM_CLUSTER_DIR", self.cluster_dir())
            .output();
    }
}
