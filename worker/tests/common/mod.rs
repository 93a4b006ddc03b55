//! Test harness: real `redis-server` and real `kim-worker` processes on loopback.
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod load;

pub use kim_testkit::{free_port, http_get, wait_until, Proc, Redis};
pub use load::{load_until_serving, Load};

pub fn worker_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kim-worker"))
}

/// Runs `kim-worker` to completion and returns stdout; panics with stderr on failure.
pub fn worker(args: &[&str]) -> String {
    let out = Command::new(worker_bin()).args(args).env("KIM_LOG", "warn").output().unwrap();
    assert!(out.status.success(), "kim-worker {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Like [`worker`] but expects failure; returns stderr.
pub fn worker_fails(args: &[&str]) -> String {
    let out = Command::new(worker_bin()).args(args).env("KIM_LOG", "warn").output().unwrap();
    assert!(!out.status.success(), "kim-worker {args:?} unexpectedly succeeded");
    String::from_utf8(out.stderr).unwrap()
}

/// A matcher process with its HTTP port.
pub struct Matcher {
    pub proc: Proc,
    pub http: u16,
}

impl Matcher {
    pub fn start(name: &str, dir: &Path, storage: &Path, redis: &Redis, extra: &[&str]) -> Matcher {
        let http = free_port();
        let mut cmd = Command::new(worker_bin());
        cmd.args([
            "match",
            "--storage",
            storage.to_str().unwrap(),
            "--redis",
            &redis.url(),
            "--http",
            &format!("127.0.0.1:{http}"),
        ])
        .args(["--claim-interval", "200ms", "--reload-interval", "200ms", "--matcher-id", name])
        .args(extra)
        .env("KIM_LOG", "info,hnsw_rs=warn");
        // Entries abandoned by a killed matcher are taken over after 1 s unless a test says otherwise.
        if !extra.contains(&"--claim-idle") {
            cmd.args(["--claim-idle", "1s"]);
        }
        Matcher { proc: Proc::spawn(name, &mut cmd, dir), http }
    }
    pub fn signal_stop(&self) {
        self.proc.signal("STOP");
    }
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.http, path)
    }
    pub fn wait_ready(&self) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if matches!(self.get("/readyz"), Some((200, _))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("matcher {} not ready; log:\n{}", self.proc.name, self.proc.log_text());
    }
    /// Value of one metric line (exact series text before the value).
    pub fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.get("/metrics").expect("metrics");
        body.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
    }
}

/// Generated data plus a built index for label `faces` (version 59, u8, cosine).
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub storage: PathBuf,
}

impl Fixture {
    pub fn new(identities: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let storage = dir.path().join("storage");
        worker(&[
            "gen",
            "--out",
            data.to_str().unwrap(),
            "--identities",
            &identities.to_string(),
            "--samples",
            "4",
            "--mated-probes",
            "100",
            "--nonmated-probes",
            "100",
        ]);
        let f = Fixture { dir, data, storage };
        f.index("faces", "base.npy");
        f
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    /// Builds (or rebuilds) an index for `label` from a file in the data dir; returns the summary.
    pub fn index(&self, label: &str, source: &str) -> serde_json::Value {
        let out = worker(&[
            "index",
            "--label",
            label,
            "--storage",
            self.storage.to_str().unwrap(),
            "--source",
            self.data.join(source).to_str().unwrap(),
            "--ids",
            self.data.join("ids.txt").to_str().unwrap(),
            "--version",
            "59",
            "--threads",
            "2",
        ]);
        serde_json::from_str(out.trim()).unwrap()
    }
    pub fn matrix(&self, name: &str) -> kim_index::Matrix {
        kim_index::Matrix::read(&self.data.join(name)).unwrap()
    }
    pub fn lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.data.join(name)).unwrap().lines().map(str::to_string).collect()
    }
}
