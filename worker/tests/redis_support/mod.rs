//! Redis set-ups beyond the plain one of `common`: TLS-only servers with ACL users (certificates
//! made by the `openssl` CLI for each test), Sentinel, kill and restart on the same port, and
//! matchers started against any URL with `KIM_REDIS_*` settings in their environment.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{free_port, wait_until, worker_bin, Matcher, Proc};

pub const USER: &str = "kim";
pub const PASSWORD: &str = "pw-Zq81-never-logged";

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all PEM.
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    pub fn new(dir: &Path) -> Certs {
        let dir = dir.join("certs");
        std::fs::create_dir_all(&dir).unwrap();
        let ossl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl on PATH (scripts/deps.sh installs it)");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        ossl(
            &[
                &["req", "-x509"][..],
                &ec,
                &["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=kim-test-ca"],
            ]
            .concat(),
        );
        std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (name, ext) in [("server", "server.ext"), ("client", "client.ext")] {
            ossl(
                &[
                    &["req"][..],
                    &ec,
                    &[
                        "-keyout",
                        &format!("{name}.key"),
                        "-out",
                        &format!("{name}.csr"),
                        "-subj",
                        &format!("/CN=kim-test-{name}"),
                    ],
                ]
                .concat(),
            );
            ossl(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.crt"),
                "-days",
                "2",
                "-extfile",
                ext,
            ]);
        }
        Certs { dir }
    }
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }
}

/// How a test Redis listens.
#[derive(Clone, Copy, PartialEq)]
pub enum Mode {
    Plain,
    /// TLS only (`--port 0`), ACL user `kim` with [`PASSWORD`], default user disabled.
    TlsAcl {
        mutual: bool,
    },
}

/// A redis-server that can be killed and restarted on the same port.
pub struct Server {
    pub port: u16,
    pub proc: Option<Proc>,
    dir: PathBuf,
    args: Vec<String>,
    restarts: usize,
}

impl Server {
    pub fn start(dir: &Path, mode: Mode, certs: Option<&Certs>, extra: &[&str]) -> Server {
        let port = free_port();
        let mut args: Vec<String> =
            ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir.to_str().unwrap()]
                .iter()
                .map(|s| s.to_string())
                .collect();
        match mode {
            Mode::Plain => args.extend(["--port".into(), port.to_string()]),
            Mode::TlsAcl { mutual } => {
                let c = certs.expect("certificates for a TLS server");
                args.extend(["--port".into(), "0".into(), "--tls-port".into(), port.to_string()]);
                args.extend([
                    "--tls-cert-file".into(),
                    c.path("server.crt"),
                    "--tls-key-file".into(),
                    c.path("server.key"),
                    "--tls-ca-cert-file".into(),
                    c.path("ca.crt"),
                ]);
                args.extend(["--tls-auth-clients".into(), if mutual { "yes" } else { "no" }.into()]);
                args.extend(
                    ["--user", USER, "on", &format!(">{PASSWORD}"), "~*", "&*", "+@all"].iter().map(|s| s.to_string()),
                );
                args.extend(["--user", "default", "off"].iter().map(|s| s.to_string()));
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut s = Server { port, proc: None, dir: dir.to_path_buf(), args, restarts: 0 };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let name = format!("redis-{}-{}", self.port, self.restarts);
        self.proc = Some(Proc::spawn(&name, Command::new("redis-server").args(&self.args), &self.dir));
        let port = self.port;
        wait_until(Duration::from_secs(10), "redis-server to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// SIGKILL: no shutdown, no goodbye to clients.
    pub fn kill(&mut self) {
        let mut p = self.proc.take().expect("running");
        p.signal("KILL");
        p.wait_exit(Duration::from_secs(5)).expect("redis-server exits after SIGKILL");
    }

    /// Starts again on the same port, empty (no persistence).
    pub fn restart(&mut self) {
        self.restarts += 1;
        self.spawn();
    }

    pub fn log_text(&self) -> String {
        self.proc.as_ref().map(|p| p.log_text()).unwrap_or_default()
    }
}

/// A matcher started with `url` and extra environment (TLS files, credentials).
pub fn start_matcher(
    name: &str,
    dir: &Path,
    storage: &Path,
    url: &str,
    env: &[(&str, String)],
    extra: &[&str],
) -> Matcher {
    let http = free_port();
    let mut cmd = Command::new(worker_bin());
    cmd.args(["match", "--storage", storage.to_str().unwrap(), "--redis", url, "--http", &format!("127.0.0.1:{http}")])
        .args(["--claim-idle", "1s", "--claim-interval", "200ms", "--reload-interval", "200ms", "--matcher-id", name])
        .args(extra)
        .env("KIM_LOG", "info,hnsw_rs=warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Matcher { proc: Proc::spawn(name, &mut cmd, dir), http }
}

/// Runs `kim-worker match` expecting it to exit non-zero within 40 s; returns its output.
pub fn matcher_refuses(
    name: &str,
    dir: &Path,
    storage: &Path,
    url: &str,
    env: &[(&str, String)],
    extra: &[&str],
) -> String {
    let mut m = start_matcher(name, dir, storage, url, env, extra);
    let status = m
        .proc
        .wait_exit(Duration::from_secs(40))
        .unwrap_or_else(|| panic!("matcher kept running against {url}; log:\n{}", m.proc.log_text()));
    assert!(!status.success(), "matcher exited 0 against {url}");
    m.proc.log_text()
}

/// One sentinel watching `master_port` as master `kimmaster` (quorum 1, fast fail-over).
pub fn start_sentinel(dir: &Path, master_port: u16) -> (u16, Proc) {
    let port = free_port();
    let conf = dir.join(format!("sentinel-{port}.conf"));
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor kimmaster 127.0.0.1 {master_port} 1\nsentinel down-after-milliseconds kimmaster 1000\nsentinel failover-timeout kimmaster 10000\n",
            dir.display()
        ),
    )
    .unwrap();
    let proc = Proc::spawn(&format!("sentinel-{port}"), Command::new("redis-server").arg(&conf).arg("--sentinel"), dir);
    wait_until(Duration::from_secs(10), "sentinel to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (port, proc)
}

pub fn plain_conn(port: u16) -> redis::Connection {
    try_conn(port).unwrap()
}

/// A connection, or `None` while the server refuses or resets it (a fail-over kills clients).
pub fn try_conn(port: u16) -> Option<redis::Connection> {
    redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?.get_connection().ok()
}

/// The master port a sentinel reports.
pub fn sentinel_master(sentinel: u16) -> Option<u16> {
    let r: Option<(String, u16)> =
        redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg("kimmaster").query(&mut try_conn(sentinel)?).ok()?;
    r.map(|(_, p)| p)
}
