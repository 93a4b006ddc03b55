//! A real S3-compatible server for tests: SeaweedFS (`weed server -s3`) on loopback ports,
//! built by scripts/seaweedfs.sh into $KIM_CACHE/bin/weed.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{free_port, Proc};

pub const ACCESS_KEY: &str = "kimtest";
pub const SECRET_KEY: &str = "kimtest-secret-0123456789";
pub const BUCKET: &str = "kim";

pub fn weed_bin() -> PathBuf {
    let bin = std::env::var_os("KIM_WEED").map(PathBuf::from).unwrap_or_else(|| kim_testkit::tool("weed"));
    assert!(bin.is_file(), "{} is missing: run scripts/seaweedfs.sh (make test does)", bin.display());
    bin
}

pub struct Weed {
    pub proc: Proc,
    pub s3: u16,
    pub filer: u16,
    pub tls: bool,
    ports: Vec<u16>,
}

impl Weed {
    /// Starts master, volume, filer and S3 gateway in one process with credentials
    /// ACCESS_KEY/SECRET_KEY, and creates BUCKET.
    pub fn start(dir: &Path) -> Weed {
        Weed::start_with(dir, None)
    }

    /// Like [`Weed::start`], the S3 port serving HTTPS with a certificate for 127.0.0.1 from a
    /// fresh CA; returns the CA's PEM file too.
    pub fn start_tls(dir: &Path) -> (Weed, PathBuf) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "kim s3 test CA");
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        leaf.distinguished_name.push(DnType::CommonName, "seaweedfs");
        let cert = leaf.signed_by(&key, &issuer).unwrap().pem();
        let (ca_file, cert_file, key_file) = (dir.join("s3-ca.pem"), dir.join("s3.pem"), dir.join("s3-key.pem"));
        std::fs::write(&ca_file, ca_pem).unwrap();
        std::fs::write(&cert_file, cert).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (Weed::start_with(dir, Some((cert_file, key_file))), ca_file)
    }

    fn start_with(dir: &Path, tls: Option<(PathBuf, PathBuf)>) -> Weed {
        let config = dir.join("weed-s3.json");
        let identities = serde_json::json!({"identities": [{
            "name": "kim",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]});
        std::fs::write(&config, identities.to_string()).unwrap();
        // A start that does not come up (a loopback port taken between choosing and binding
        // it, a master that never wins its one-node election on a starved CI machine) is
        // retried on fresh ports; its log's warnings and errors go to the test's output.
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let mut w = Weed::spawn(dir, &config, tls.as_ref(), attempt);
            match w.ready(Duration::from_secs(60)) {
                Ok(()) => return w,
                Err(what) => {
                    let log = w.proc.log_text();
                    let noteworthy: Vec<&str> = log.lines().filter(|l| !l.starts_with('I')).collect();
                    let tail = noteworthy[noteworthy.len().saturating_sub(20)..].join("\n");
                    eprintln!("SeaweedFS start {attempt}/{ATTEMPTS}: {what}; its log ends:\n{tail}");
                }
            }
        }
        panic!("SeaweedFS did not come up in {ATTEMPTS} starts (logs above)");
    }

    fn spawn(dir: &Path, config: &Path, tls: Option<&(PathBuf, PathBuf)>, attempt: usize) -> Weed {
        let name = if attempt == 1 { "weed".to_string() } else { format!("weed-{attempt}") };
        let data = dir.join(&name);
        std::fs::create_dir_all(&data).unwrap();
        let ports: Vec<u16> = (0..8).map(|_| free_port()).collect();
        let p: Vec<String> = ports.iter().map(u16::to_string).collect();
        let mut cmd = Command::new(weed_bin());
        cmd.arg("server")
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false", "-volume.max=4"])
            .arg(format!("-dir={}", data.display()))
            .args(["-master.volumeSizeLimitMB=64", "-filer", "-s3", "-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-s3.config={}", config.display()))
            .arg(format!("-master.port={}", p[0]))
            .arg(format!("-master.port.grpc={}", p[1]))
            .arg(format!("-volume.port={}", p[2]))
            .arg(format!("-volume.port.grpc={}", p[3]))
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .arg(format!("-s3.port={}", p[6]))
            .arg(format!("-s3.port.grpc={}", p[7]));
        if let Some((cert, key)) = tls {
            cmd.arg(format!("-s3.cert.file={}", cert.display())).arg(format!("-s3.key.file={}", key.display()));
        }
        Weed {
            proc: Proc::spawn(&name, &mut cmd, dir),
            s3: p[6].parse().unwrap(),
            filer: p[4].parse().unwrap(),
            tls: tls.is_some(),
            ports,
        }
    }

    /// Waits until the bucket exists, accepts a write through the filer, and the S3 port
    /// listens; names the step that did not happen within `limit` otherwise.
    fn ready(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        // A bucket is a directory under /buckets; writes work once master and volume agree.
        self.step(deadline, "bucket", |w| w.filer_request("POST", &format!("/buckets/{BUCKET}/"), b"").is_some())?;
        self.step(deadline, "write", |w| {
            matches!(w.filer_request("PUT", &format!("/buckets/{BUCKET}/.ready"), b"ok"), Some(200..=299))
        })?;
        self.step(deadline, "S3 listener", |w| std::net::TcpStream::connect(("127.0.0.1", w.s3)).is_ok())
    }

    fn step(&mut self, deadline: Instant, what: &str, mut f: impl FnMut(&Weed) -> bool) -> Result<(), String> {
        let left = deadline.saturating_duration_since(Instant::now());
        if kim_testkit::poll_until(left, || self.proc.alive() && f(self)) {
            Ok(())
        } else if self.proc.alive() {
            Err(format!("no {what} in time"))
        } else {
            Err(format!("weed exited before {what}"))
        }
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.s3)
    }

    /// Flags every kim-worker command on this storage needs (credentials come from the env;
    /// the CA of a TLS endpoint is the caller's to add).
    pub fn flags(&self) -> Vec<String> {
        let mut f = vec!["--s3-endpoint".into(), self.endpoint(), "--s3-region".into(), "us-east-1".into()];
        if !self.tls {
            f.push("--s3-allow-http".into());
        }
        f
    }

    /// Writes an object's bytes straight through the filer (`/buckets/<bucket>/<key>`),
    /// bypassing S3 and everything kim checks on upload.
    pub fn filer_put(&self, path: &str, body: &[u8]) {
        let status = self.filer_request("PUT", path, body);
        assert!(matches!(status, Some(200..=299)), "filer PUT {path}: {status:?}");
    }

    /// One HTTP/1.0 request to the filer; the status, if any came back.
    fn filer_request(&self, method: &str, path: &str, body: &[u8]) -> Option<u16> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.filer)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(s, "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n", body.len()).ok()?;
        s.write_all(body).ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        buf.split_whitespace().nth(1)?.parse().ok()
    }
}

/// weed keeps a unix socket in /tmp beside most of its ports and removes them only on a
/// graceful exit, which takes it half a minute; the test kills it and removes them.
impl Drop for Weed {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        let ours = |name: &str| {
            name.starts_with("seaweedfs-") && self.ports.iter().any(|p| name.ends_with(&format!("-{p}.sock")))
        };
        for e in std::fs::read_dir("/tmp").into_iter().flatten().flatten() {
            if e.file_name().to_str().is_some_and(ours) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Credentials for child processes that inherit the test's environment (matchers).
pub fn set_credentials() {
    std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
}

/// Runs `kim-worker` to completion with the test credentials (`env` overrides them) and info
/// logs on stderr.
pub fn kim(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(crate::common::worker_bin());
    cmd.args(args).env("AWS_ACCESS_KEY_ID", ACCESS_KEY).env("AWS_SECRET_ACCESS_KEY", SECRET_KEY).env("KIM_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}
