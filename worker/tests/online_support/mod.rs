//! Online-path harness: real `kim-worker agent|filter|vectorize` processes on loopback and
//! gRPC clients for them. Builds on `common` (process handling, free ports).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kim_proto::payload::v1::{insert, object, search};
use kim_proto::vald::v1::{insert_client::InsertClient, object_client::ObjectClient, search_client::SearchClient};
use tonic::transport::Channel;

use crate::common::{free_port, worker_bin, Proc};

/// A running process with a gRPC port and an HTTP port, restartable with the same command.
pub struct Server {
    pub proc: Proc,
    pub port: u16,
    pub http: u16,
    args: Vec<String>,
    dir: PathBuf,
    name: String,
}

impl Server {
    fn spawn(name: &str, dir: &Path, port: u16, http: u16, args: Vec<String>) -> Server {
        let mut cmd = Command::new(worker_bin());
        cmd.args(&args)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--http", &format!("127.0.0.1:{http}")])
            .env("KIM_LOG", "info,kim_worker=debug,hnsw_rs=warn");
        let proc = Proc::spawn(name, &mut cmd, dir);
        let mut s = Server { proc, port, http, args, dir: dir.to_path_buf(), name: name.to_string() };
        s.wait_listening();
        s
    }

    pub fn start(name: &str, dir: &Path, args: &[&str]) -> Server {
        Server::spawn(name, dir, free_port(), free_port(), args.iter().map(|s| s.to_string()).collect())
    }

    /// An agent with its data under `dir/<name>-data`.
    pub fn agent(name: &str, dir: &Path, dims: usize, metric: &str, extra: &[&str]) -> Server {
        let data = dir.join(format!("{name}-data"));
        let mut args: Vec<String> = [
            "agent",
            "--data",
            data.to_str().unwrap(),
            "--dimensions",
            &dims.to_string(),
            "--metric",
            metric,
            "--name",
            name,
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        Server::spawn(name, dir, free_port(), free_port(), args)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// gRPC accepts connections only after recovery, so a connect means ready.
    fn wait_listening(&mut self) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.proc.child.try_wait() {
                panic!("{} exited with {status}; log:\n{}", self.name, self.proc.log_text());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("{} did not listen; log:\n{}", self.name, self.proc.log_text());
    }

    /// SIGKILL, then wait for the process to be gone.
    pub fn kill9(&mut self) {
        self.proc.signal("KILL");
        assert!(self.proc.wait_exit(Duration::from_secs(10)).is_some(), "{} survived SIGKILL", self.name);
    }

    /// Starts the same command again on the same ports (after [`Server::kill9`]).
    pub fn restart(&mut self) {
        let log = std::fs::read_to_string(&self.proc.log).unwrap_or_default();
        std::fs::write(self.dir.join(format!("{}.previous.log", self.name)), log).unwrap();
        let next = Server::spawn(&self.name, &self.dir, self.port, self.http, self.args.clone());
        *self = next;
    }

    pub fn log(&self) -> String {
        self.proc.log_text()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr())).unwrap().connect().await.unwrap()
    }
}

/// A deterministic pseudo-random vector for `seed`.
pub fn vector(seed: u64, dims: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..dims)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

pub fn insert_req(id: &str, v: Vec<f32>) -> insert::Request {
    insert::Request { vector: Some(object::Vector { id: id.into(), vector: v, timestamp: 0 }), config: None }
}

pub async fn insert(ch: &Channel, id: &str, v: Vec<f32>) -> Result<object::Location, tonic::Status> {
    InsertClient::new(ch.clone()).insert(insert_req(id, v)).await.map(|r| r.into_inner())
}

pub async fn get(ch: &Channel, id: &str) -> Option<Vec<f32>> {
    let req = object::VectorRequest { id: Some(object::Id { id: id.into() }), filters: None };
    ObjectClient::new(ch.clone()).get_object(req).await.ok().map(|r| r.into_inner().vector)
}

pub async fn search(ch: &Channel, v: Vec<f32>, num: u32) -> Vec<object::Distance> {
    let req = search::Request { vector: v, config: Some(search::Config { num, ..Default::default() }) };
    SearchClient::new(ch.clone()).search(req).await.unwrap().into_inner().results
}
