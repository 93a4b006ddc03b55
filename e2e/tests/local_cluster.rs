//! `make cluster` (e2e/local.sh): the user-facing local cluster starts, answers `kubectl get
//! nodes` with the harness node Ready, and `make cluster-down` stops every process it started
//! within a bounded time.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use kim_testkit::{repo, text};

/// `target/release`, where kim-node was built and kim-worker and kim-operator must be.
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_kim-node")).parent().unwrap().to_path_buf()
}

fn local(dir: &Path, cmd: &str) -> Output {
    Command::new("bash")
        .arg(repo().join("e2e/local.sh"))
        .arg(cmd)
        .env("KIM_CLUSTER_DIR", dir)
        .env("KIM_LOCAL_BUILD", "0")
        .env("KIM_NODE_BIN", env!("CARGO_BIN_EXE_kim-node"))
        .env("CARGO_TARGET_DIR", bin_dir().parent().unwrap())
        .output()
        .unwrap()
}

/// Stops the cluster if the test fails half way.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = local(&self.0, "down");
        }
    }
}

fn pids(dir: &Path) -> Vec<(String, i32)> {
    std::fs::read_dir(dir.join("run"))
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "pid").then(|| {
                let name = p.file_stem().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&p).unwrap().trim().parse().unwrap())
            })
        })
        .collect()
}

fn running(pid: i32) -> bool {
    // A zombie has been stopped; /proc/PID/stat's third field is its state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(") ").next().is_some_and(|rest| !rest.starts_with('Z')))
}

#[test]
fn local_cluster_starts_answers_kubectl_and_stops_cleanly() {
    for b in ["kim-worker", "kim-operator"] {
        assert!(bin_dir().join(b).exists(), "build it first: cargo build --release -p {b}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("local");
    let _guard = Down(dir.clone());
    let t = Instant::now();
    let up = local(&dir, "up");
    let up_secs = t.elapsed().as_secs_f64();
    assert!(up.status.success(), "local.sh up: {}", text(&up));
    let out = text(&up);
    for want in ["eval \"$(e2e/local.sh env)\"", "helm install kim charts/kim", "make cluster-down"] {
        assert!(out.contains(want), "up does not tell the user {want:?}:\n{out}");
    }

    // What the printed instructions do: env, then kubectl get nodes.
    let env = String::from_utf8(local(&dir, "env").stdout).unwrap();
    let columns = "N:.metadata.name,R:.status.conditions[?(@.type==\"Ready\")].status,U:.spec.unschedulable";
    let script = format!("{env}\nkubectl get nodes -o custom-columns='{columns}' --no-headers");
    let nodes = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert!(nodes.status.success(), "kubectl get nodes: {}", text(&nodes));
    let nodes = String::from_utf8_lossy(&nodes.stdout).into_owned();
    let row = |n: &str| nodes.lines().find(|l| l.starts_with(n)).map(|l| l.split_whitespace().collect::<Vec<_>>());
    assert_eq!(row("kim-harness-0"), Some(vec!["kim-harness-0", "True", "<none>"]), "{nodes}");
    assert_eq!(row("kim-node-0"), Some(vec!["kim-node-0", "True", "true"]), "kwok's node is cordoned: {nodes}");
    let url = std::fs::read_to_string(dir.join("redis.url")).unwrap();
    let port: u16 = url.trim().rsplit(':').next().unwrap().parse().unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(), "redis at {url}");
    let status = local(&dir, "status");
    assert!(status.status.success(), "{}", text(&status));

    let started = pids(&dir);
    let names: Vec<&str> = started.iter().map(|(n, _)| n.as_str()).collect();
    for want in ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kim-node", "redis"] {
        assert!(names.contains(&want), "{want} not started: {names:?}");
    }
    let t = Instant::now();
    let down = local(&dir, "down");
    let down_secs = t.elapsed().as_secs_f64();
    assert!(down.status.success(), "local.sh down: {}", text(&down));
    assert!(down_secs < 60.0, "down took {down_secs:.1}s");
    let left: Vec<_> = started.iter().filter(|(_, pid)| running(*pid)).collect();
    assert!(left.is_empty(), "still running after down: {left:?}");
    assert!(!dir.exists(), "cluster dir left behind");
    let again = local(&dir, "down");
    assert!(again.status.success(), "a second down fails: {}", text(&again));
    eprintln!("local cluster: up {up_secs:.1}s (tools cached), down {down_secs:.1}s");
}
