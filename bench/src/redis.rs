//! `kim-bench redis`: the Redis matcher path under load, against the same searches in process.
//!
//! Starts `redis-server` (loopback, no persistence) and real `kim-worker match` processes on a
//! snapshot of the benchmarked index, then drives them with `kim-client`: first one request
//! in flight (latency added over an in-process search), then many in flight (throughput per
//! matcher core, against single-thread in-process QPS). Every loop is bounded by a request
//! count and a time limit, and every address is 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Args;
use kim_client::{Client, Match};
use kim_index::{snapshot, HnswParams};
use serde_json::{json, Value};

use crate::index::{measure_qps, read_queries, read_truth, recalls, write_snapshot, NAMESPACE};
use crate::sys::{cpu_seconds, latency_summary, rss_of, self_cpu_seconds};
use kim_testkit::{http_get, poll_until, try_free_port, Proc};

#[derive(Debug, Args)]
pub struct RedisArgs {
    /// Storage root and label of the snapshot to serve (as written by `kim-bench build`).
    #[arg(long)]
    pub storage: PathBuf,
    #[arg(long)]
    pub label: String,
    /// Queries in the index's encoding (.npy); sent as bare payloads.
    #[arg(long)]
    pub queries: PathBuf,
    /// Exact neighbours (as for `search`), to check the answers' recall.
    #[arg(long)]
    pub truth: Option<PathBuf>,
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Beam width the matchers use (written as the served snapshot's default).
    #[arg(long, default_value_t = 96)]
    pub ef: usize,
    /// kim-worker binary (default: next to this executable).
    #[arg(long)]
    pub worker: Option<PathBuf>,
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// Scratch directory for the served snapshot and the processes' logs.
    #[arg(long)]
    pub work: PathBuf,
    /// Matcher set-ups, MATCHERSxTHREADS (search threads per matcher), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1x1,2x1,4x1")]
    pub configs: Vec<String>,
    /// Requests in flight for the batched phase.
    #[arg(long, default_value_t = 64)]
    pub inflight: usize,
    /// Request budget of the one-in-flight phase.
    #[arg(long, default_value_t = 2000)]
    pub serial_requests: usize,
    /// Request budget of the batched phase.
    #[arg(long, default_value_t = 20000)]
    pub batched_requests: usize,
    /// Time limit of each phase, seconds.
    #[arg(long, default_value_t = 20.0)]
    pub max_seconds: f64,
    /// Requests sent (and not measured) before each phase.
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    /// Also split the label into this many shards (2 or more; 0 = off) and compare N matchers,
    /// one per shard, with one unsharded matcher on the same cores.
    #[arg(long, default_value_t = 0)]
    pub shards: u32,
    /// Search threads in all for the sharded comparison (0 = this machine's cores).
    #[arg(long, default_value_t = 0)]
    pub shard_cores: usize,
    /// Threads building the shards' graphs.
    #[arg(long, default_value_t = 2)]
    pub build_threads: usize,
}

struct Setup {
    matchers: usize,
    threads: usize,
}

fn parse_config(s: &str) -> anyhow::Result<Setup> {
    let (m, t) = s.split_once('x').with_context(|| format!("config {s:?} is not MATCHERSxTHREADS"))?;
    let setup = Setup { matchers: m.trim().parse()?, threads: t.trim().parse()? };
    ensure!(
        setup.matchers >= 1 && setup.matchers <= 16 && setup.threads >= 1 && setup.threads <= 16,
        "config {s:?} out of range"
    );
    Ok(setup)
}

/// What one phase measured.
#[derive(Default)]
struct Phase {
    ok: usize,
    failed: usize,
    seconds: f64,
    latencies_us: Vec<f64>,
    /// When each answered request was sent, seconds after the phase began (same order).
    sent_at: Vec<f64>,
    rows: Vec<(usize, Vec<u32>)>,
}

pub fn run(a: &RedisArgs) -> anyhow::Result<Value> {
    let setups = a.configs.iter().map(|c| parse_config(c)).collect::<anyhow::Result<Vec<_>>>()?;
    let worker = match &a.worker {
        Some(w) => w.clone(),
        None => std::env::current_exe()?.with_file_name("kim-worker"),
    };
    ensure!(worker.exists(), "kim-worker not found at {} (build it, or pass --worker)", worker.display());
    std::fs::create_dir_all(&a.work)?;

    // The index, in process: the baseline every Redis number is compared with.
    let (manifest, mut index) = snapshot::load_current(&snapshot::label_dir(&a.storage, NAMESPACE, &a.label))?;
    index.ef_search = a.ef;
    let spec = index.vectors.spec;
    let (qm, qs) = read_queries(&a.queries, &spec)?;
    let truth = a.truth.as_deref().map(read_truth).transpose()?;
    let m = measure_qps(&index, &qs, a.k, a.ef, 1.0, 50);
    let (qps, cpu_qps) = (m.qps, m.cpu_qps);
    let local: Vec<Vec<u32>> = qs.iter().map(|q| index.search(q, a.k, a.ef).iter().map(|h| h.row).collect()).collect();
    let local_recall = truth.as_ref().map(|t| recalls(&local, t, a.k).1);
    let in_process = json!({
        "ef": a.ef, "qps": qps, "qps_median_pass": m.qps_median_pass, "cpu_qps": cpu_qps, "passes": m.passes, "threads": 1,
        "latency": latency_summary(m.latencies_us), "recall10": local_recall,
    });
    eprintln!("[kim-bench redis] in process: {qps:.0} QPS ({cpu_qps:.0} per CPU-second) at ef {}", a.ef);

    // The served copy: same vectors and graph, default beam = the benchmarked ef.
    let storage = a.work.join("storage");
    let _ = std::fs::remove_dir_all(&storage);
    let hnsw = HnswParams { ef_search: a.ef, ..manifest.hnsw };
    write_snapshot(
        &snapshot::label_dir(&storage, NAMESPACE, &a.label),
        &a.label,
        spec,
        hnsw,
        manifest.build_seconds,
        &index,
    )?;
    drop(index);

    let logs = a.work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let port = try_free_port()?;
    let mut redis = Proc::try_spawn(
        "redis",
        Command::new(&a.redis_server).args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ]),
        &logs,
    )?;
    ensure!(
        poll_until(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "redis-server did not start (see {})",
        logs.display()
    );
    let url = format!("redis://127.0.0.1:{port}");
    let payloads: Vec<Vec<u8>> = (0..qm.rows).map(|i| qm.row(i).to_vec()).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;

    let env = Env {
        a,
        worker: &worker,
        storage: &storage,
        url: &url,
        logs: &logs,
        rt: &rt,
        payloads: Arc::new(payloads),
        local: &local,
        truth: truth.as_ref(),
        version: spec.version,
        redis_pid: redis.pid(),
        qps,
        cpu_qps,
        local_p50: in_process["latency"]["p50_us"].as_f64().unwrap_or(f64::NAN),
    };
    let mut results = Vec::new();
    for (n, s) in setups.iter().enumerate() {
        let name = format!("{}x{}", s.matchers, s.threads);
        eprintln!("[kim-bench redis] {name}: {} matcher(s) × {} search thread(s)", s.matchers, s.threads);
        let plan: Vec<MatcherPlan> = (0..s.matchers)
            .map(|i| MatcherPlan { id: format!("bench-{n}-{i}"), threads: s.threads, shard: None })
            .collect();
        let mut matchers = env.start(&name, &plan, &storage, &a.label)?;
        let (v, _) = env.measure(&name, &matchers, s.matchers * s.threads)?;
        results.push(v);
        for m in &mut matchers {
            m.stop(Duration::from_secs(15));
        }
    }
    let sharded = if a.shards >= 2 {
        let snap = snapshot::label_dir(&storage, NAMESPACE, &a.label);
        Some(crate::sharded::run(&env, &snap, a.shards)?)
    } else {
        None
    };
    redis.stop(Duration::from_secs(5));
    Ok(json!({
        "engine": "kim", "path": "redis", "encoding": spec.encoding, "vectors": manifest.vectors, "queries": qs.len(), "k": a.k,
        "in_process": in_process, "configs": results, "sharded": sharded,
        "redis_server": redis_version(&a.redis_server),
    }))
}

/// What every matcher set-up of one run shares: the served storage, redis-server, the probes
/// and the in-process answers they are compared with.
pub(crate) struct Env<'a> {
    pub a: &'a RedisArgs,
    pub worker: &'a Path,
    pub storage: &'a Path,
    pub url: &'a str,
    pub logs: &'a Path,
    pub rt: &'a tokio::runtime::Runtime,
    pub payloads: Arc<Vec<Vec<u8>>>,
    pub local: &'a [Vec<u32>],
    pub truth: Option<&'a Vec<Vec<u32>>>,
    pub version: u32,
    pub redis_pid: u32,
    pub qps: f64,
    pub cpu_qps: f64,
    pub local_p50: f64,
}

/// Resident bytes of each matcher of a set-up: once ready, and after the load.
pub(crate) struct Rss {
    pub ready: Vec<u64>,
    pub loaded: Vec<u64>,
}

/// One matcher process to start: its id, search threads and (shard, shards) if it serves one.
pub(crate) struct MatcherPlan {
    pub id: String,
    pub threads: usize,
    pub shard: Option<(u32, u32)>,
}

impl Env<'_> {
    /// Starts the planned `kim-worker match` processes on `storage` and waits until all are
    /// ready (60 s at most each).
    pub fn start(&self, name: &str, plan: &[MatcherPlan], storage: &Path, label: &str) -> anyhow::Result<Vec<Proc>> {
        let mut matchers = Vec::new();
        let mut ports = Vec::new();
        for (i, p) in plan.iter().enumerate() {
            let http = try_free_port()?;
            let mut cmd = Command::new(self.worker);
            cmd.args(["match", "--storage", path_str(storage)?, "--redis", self.url, "--label", label])
                .args([
                    "--threads",
                    &p.threads.to_string(),
                    "--http",
                    &format!("127.0.0.1:{http}"),
                    "--matcher-id",
                    &p.id,
                ])
                .env("KIM_LOG", "warn");
            if let Some((shard, shards)) = p.shard {
                cmd.args(["--shards", &shards.to_string(), "--shard", &shard.to_string()]);
            }
            matchers.push(Proc::try_spawn(&format!("matcher-{name}-{i}"), &mut cmd, self.logs)?);
            ports.push(http);
        }
        for (m, p) in matchers.iter_mut().zip(&ports) {
            let ready = poll_until(Duration::from_secs(60), || matches!(http_get(*p, "/readyz"), Some((200, _))));
            if !ready {
                let alive = m.alive();
                bail!("matcher {} not ready after 60 s (alive: {alive}; see {})", m.name, self.logs.display());
            }
        }
        Ok(matchers)
    }

    /// One in flight, then `inflight` in flight, against `matchers` (using `cores` search
    /// threads in all). Returns the set-up's JSON and the matchers' resident bytes when ready
    /// (before any request) and after the load.
    pub fn measure(&self, name: &str, matchers: &[Proc], cores: usize) -> anyhow::Result<(Value, Rss)> {
        let a = self.a;
        let ready_rss: Vec<u64> = matchers.iter().map(|m| rss_of(m.pid()).unwrap_or(0)).collect();
        let client = self.rt.block_on(Client::connect(self.url))?;
        let ctx =
            Ctx { client, label: a.label.clone(), version: self.version, k: a.k, payloads: self.payloads.clone() };

        self.rt.block_on(drive(&ctx, 1, a.warmup, 30.0));
        let serial = self.rt.block_on(drive(&ctx, 1, a.serial_requests, a.max_seconds));

        self.rt.block_on(drive(&ctx, a.inflight, a.warmup.max(a.inflight * 2), 30.0));
        let pids: Vec<u32> = matchers.iter().map(Proc::pid).collect();
        let cpu0: f64 = pids.iter().filter_map(|p| cpu_seconds(*p)).sum();
        let redis_cpu0 = cpu_seconds(self.redis_pid).unwrap_or(0.0);
        let self_cpu0 = self_cpu_seconds();
        let batched = self.rt.block_on(drive(&ctx, a.inflight, a.batched_requests, a.max_seconds));
        let matcher_cpu = pids.iter().filter_map(|p| cpu_seconds(*p)).sum::<f64>() - cpu0;
        let redis_cpu = cpu_seconds(self.redis_pid).unwrap_or(0.0) - redis_cpu0;
        let client_cpu = self_cpu_seconds() - self_cpu0;
        let rss: Vec<u64> = pids.iter().map(|p| rss_of(*p).unwrap_or(0)).collect();

        let agree = |p: &Phase| agreement(&p.rows, self.local);
        let recall = |p: &Phase| self.truth.map(|t| phase_recall(&p.rows, t, a.k));
        let serial_p50 = crate::sys::percentile(&sorted(&serial.latencies_us), 50.0);
        let throughput = batched.ok as f64 / batched.seconds.max(1e-9);
        let per_core_wall = throughput / cores as f64;
        let per_cpu_second = batched.ok as f64 / matcher_cpu.max(1e-9);
        let v = json!({
            "config": name, "matchers": matchers.len(), "threads_per_matcher": cores / matchers.len().max(1),
            "serial": {
                "inflight": 1, "ok": serial.ok, "failed": serial.failed, "seconds": serial.seconds,
                "throughput": serial.ok as f64 / serial.seconds.max(1e-9),
                "latency": latency_summary(serial.latencies_us.clone()),
                "added_p50_us": serial_p50 - self.local_p50,
                "agreement_with_in_process": agree(&serial), "recall10": recall(&serial),
            },
            "batched": {
                "inflight": a.inflight, "ok": batched.ok, "failed": batched.failed, "seconds": batched.seconds,
                "throughput": throughput,
                "latency": latency_summary(batched.latencies_us.clone()),
                "slowest": slowest(&batched.sent_at, &batched.latencies_us, 5),
                "per_matcher_core_qps": per_core_wall,
                "per_matcher_core_vs_in_process": per_core_wall / self.qps,
                "matcher_cpu_seconds": matcher_cpu,
                "per_matcher_cpu_second_qps": per_cpu_second,
                "per_matcher_cpu_second_vs_in_process": per_cpu_second / self.cpu_qps,
                "redis_cpu_seconds": redis_cpu,
                "client_cpu_seconds": client_cpu,
                "agreement_with_in_process": agree(&batched), "recall10": recall(&batched),
            },
            "matcher_rss_bytes": rss,
            "matcher_rss_ready_bytes": ready_rss.clone(),
        });
        eprintln!(
            "[kim-bench redis] {name}: 1 in flight p50 {:.0} µs (+{:.0} µs over in-process); {} in flight {:.0} req/s = {:.0}/matcher core ({:.0} per matcher CPU-second)",
            serial_p50, serial_p50 - self.local_p50, a.inflight, throughput, per_core_wall, per_cpu_second
        );
        Ok((v, Rss { ready: ready_rss, loaded: rss }))
    }
}

pub(crate) fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().with_context(|| format!("{} is not UTF-8", p.display()))
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

fn redis_version(bin: &str) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

struct Ctx {
    client: Client,
    label: String,
    version: u32,
    k: usize,
    payloads: Arc<Vec<Vec<u8>>>,
}

/// Closed loop: `inflight` tasks each send one request at a time until `requests` were
/// started or `max_seconds` passed. Queries are taken round-robin.
async fn drive(ctx: &Ctx, inflight: usize, requests: usize, max_seconds: f64) -> Phase {
    let next = Arc::new(AtomicUsize::new(0));
    let out = Arc::new(Mutex::new(Phase::default()));
    let deadline = Instant::now() + Duration::from_secs_f64(max_seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..inflight.max(1) {
        let (client, next, out, payloads) = (ctx.client.clone(), next.clone(), out.clone(), ctx.payloads.clone());
        let (label, version, k) = (ctx.label.clone(), ctx.version, ctx.k);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests || Instant::now() >= deadline {
                    break;
                }
                let q = i % payloads.len();
                let m = Match {
                    descriptor: payloads[q].clone(),
                    version,
                    label: label.clone(),
                    limit: k as u32,
                    threshold: None,
                    luna_request_id: None,
                    timeout: Duration::from_secs(10),
                };
                let t = Instant::now();
                let r = client.match_descriptor(m).await;
                let us = t.elapsed().as_secs_f64() * 1e6;
                let mut o = out.lock().unwrap();
                match r {
                    Ok(resp) if resp.error.is_none() => {
                        o.ok += 1;
                        o.latencies_us.push(us);
                        o.sent_at.push((t - start).as_secs_f64());
                        o.rows.push((q, resp.result.iter().filter_map(|(id, _)| id.parse().ok()).collect()));
                    }
                    _ => o.failed += 1,
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut p = std::mem::take(&mut *out.lock().unwrap());
    p.seconds = start.elapsed().as_secs_f64();
    p
}

/// The `n` slowest requests as `[sent at (s into the phase), latency (µs)]`, slowest first:
/// whether a tail is one stall (sent together) or spread over the phase.
pub(crate) fn slowest(sent_at: &[f64], latencies_us: &[f64], n: usize) -> Vec<[f64; 2]> {
    let mut v: Vec<[f64; 2]> = sent_at.iter().zip(latencies_us).map(|(s, l)| [*s, *l]).collect();
    v.sort_by(|a, b| b[1].total_cmp(&a[1]));
    v.truncate(n);
    v
}

/// Fraction of answers whose rows equal the in-process result for the same query.
fn agreement(rows: &[(usize, Vec<u32>)], local: &[Vec<u32>]) -> f64 {
    if rows.is_empty() {
        return f64::NAN;
    }
    rows.iter().filter(|(q, r)| *r == local[*q]).count() as f64 / rows.len() as f64
}

fn phase_recall(rows: &[(usize, Vec<u32>)], truth: &[Vec<u32>], k: usize) -> f64 {
    let got: Vec<Vec<u32>> = rows.iter().map(|(_, r)| r.clone()).collect();
    let want: Vec<Vec<u32>> = rows.iter().map(|(q, _)| truth[*q].clone()).collect();
    recalls(&got, &want, k).1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slowest_keeps_the_n_longest_with_when_they_were_sent() {
        let sent = [0.0, 0.5, 1.0, 1.5];
        let lat = [10.0, 500_000.0, 20.0, 400_000.0];
        assert_eq!(slowest(&sent, &lat, 2), vec![[0.5, 500_000.0], [1.5, 400_000.0]]);
        assert_eq!(slowest(&sent, &lat, 9).len(), 4);
        assert!(slowest(&[], &[], 3).is_empty());
    }
}
