//! Test support for kim's test suites and benchmarks (not shipped): free loopback ports, child
//! processes stopped on drop ([`Proc`]), a loopback `redis-server` ([`Redis`]), polling with a
//! bound ([`wait_until`], [`eventually`], [`eventually_async`]), a plain HTTP GET, and the
//! Go-built control plane of e2e/cluster.sh ([`Cluster`]).

mod cluster;
mod proc;
mod redis_server;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use cluster::{run_tool, tool_ok, tools, Cluster, Profile};
pub use proc::Proc;
pub use redis_server::Redis;

/// The repository root (this crate lives one level below it).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("repository root")
}

/// `$KIM_CACHE`, or `~/.cache/kim`: where the scripts keep the tools they build.
pub fn cache() -> PathBuf {
    std::env::var_os("KIM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/kim"))
}

/// A tool the scripts built (`kubectl`, `helm`, `weed`…): `$KIM_BIN/name`, or `$KIM_CACHE/bin/name`.
pub fn tool(name: &str) -> PathBuf {
    std::env::var_os("KIM_BIN").map(PathBuf::from).unwrap_or_else(|| cache().join("bin")).join(name)
}

/// A loopback TCP port nobody listens on right now.
pub fn try_free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// [`try_free_port`], panicking when the OS has no port to give.
pub fn free_port() -> u16 {
    try_free_port().expect("a free loopback port")
}

/// Polls `f` every 25 ms until it is true (returns true) or `limit` passes (returns false).
pub fn poll_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// [`poll_until`] that panics naming `what` when `limit` passes.
pub fn wait_until(limit: Duration, what: &str, f: impl FnMut() -> bool) {
    assert!(poll_until(limit, f), "timed out after {limit:?} waiting for {what}");
}

/// Polls `f` every 200 ms until it returns Some; panics naming `what` after `secs` seconds.
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

/// [`eventually`] for async checks, sleeping on the runtime between tries (150 ms).
pub async fn eventually_async<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let t = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(t.elapsed() < Duration::from_secs(secs), "timed out after {secs}s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Minimal HTTP/1.0 GET on loopback: (status, body), None if the port does not answer.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default();
    Some((status, body))
}

/// stdout then stderr of a finished command, for assertion messages.
pub fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}
