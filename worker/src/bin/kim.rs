//! `kim`: a command-line client for kim matchers.
//!
//! `kim match --label L --version V --npy probes.npy --rows 0..10` sends descriptors and prints
//! one JSON response per line, then a latency summary on stderr. `kim labels` lists live labels.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures::stream::{self, StreamExt};
use kim_client::{Client, Match, Options};
use kim_index::Matrix;

#[derive(Parser)]
#[command(name = "kim", version, about = "Match descriptors against kim matchers over Redis")]
struct Cli {
    #[arg(long, env = "KIM_REDIS_URL", default_value = "redis://127.0.0.1:6379", global = true)]
    redis: String,
    #[arg(long, env = "KIM_KEY_PREFIX", default_value = "", global = true)]
    prefix: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Match descriptors from a raw file or from rows of a .npy/.fvecs/.kimv file.
    Match {
        #[arg(long, env = "KIM_LABEL")]
        label: String,
        #[arg(long, env = "KIM_VERSION")]
        version: u32,
        /// A file holding one descriptor's bytes (bare or SDK form).
        #[arg(long, conflicts_with = "npy", env = "KIM_DESCRIPTOR")]
        descriptor: Option<PathBuf>,
        /// A matrix file; each selected row is one request.
        #[arg(long, env = "KIM_NPY")]
        npy: Option<PathBuf>,
        /// Rows to send, as `N` or `A..B`.
        #[arg(long, default_value = "0", env = "KIM_ROWS")]
        rows: String,
        #[arg(long, default_value_t = 5, env = "KIM_LIMIT")]
        limit: u32,
        /// Return only candidates at least this similar (0..=1).
        #[arg(long, env = "KIM_THRESHOLD")]
        threshold: Option<f64>,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5s", env = "KIM_TIMEOUT")]
        timeout: Duration,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 1, env = "KIM_CONCURRENCY")]
        concurrency: usize,
        /// Print only the summary.
        #[arg(long, env = "KIM_QUIET")]
        quiet: bool,
    },
    /// List labels served by live matchers, or check one.
    Labels {
        #[arg(long, env = "KIM_CHECK")]
        check: Option<String>,
    },
}

fn parse_rows(s: &str) -> anyhow::Result<std::ops::Range<usize>> {
    Ok(match s.split_once("..") {
        Some((a, b)) => a.parse()?..b.parse()?,
        None => {
            let n: usize = s.parse()?;
            n..n + 1
        }
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let client = Client::connect_with(&cli.redis, Options { prefix: cli.prefix.clone(), ..Options::default() }).await?;
    match cli.command {
        Cmd::Labels { check: Some(l) } => {
            let live = client.check_matching_label(&l).await?;
            println!("{live}");
            std::process::exit(if live { 0 } else { 1 });
        }
        Cmd::Labels { check: None } => {
            for l in client.read_matching_labels().await? {
                println!("{l}");
            }
        }
        Cmd::Match { label, version, descriptor, npy, rows, limit, threshold, timeout, concurrency, quiet } => {
            let descriptors: Vec<Vec<u8>> = match (descriptor, npy) {
                (Some(p), _) => vec![std::fs::read(&p)?],
                (None, Some(p)) => {
                    let m = Matrix::read(&p)?;
                    let r = parse_rows(&rows)?;
                    anyhow::ensure!(r.end <= m.rows, "rows {rows} out of range: the file has {} rows", m.rows);
                    r.map(|i| m.row(i).to_vec()).collect()
                }
                (None, None) => anyhow::bail!("give --descriptor FILE or --npy FILE"),
            };
            let started = Instant::now();
            let results: Vec<(Duration, kim_api::MatchResponse)> = stream::iter(descriptors)
                .map(|d| {
                    let c = client.clone();
                    let m = Match {
                        descriptor: d,
                        version,
                        label: label.clone(),
                        limit,
                        threshold,
                        luna_request_id: None,
                        timeout,
                    };
                    async move {
                        let t = Instant::now();
                        c.match_descriptor(m).await.map(|r| (t.elapsed(), r))
                    }
                })
                .buffered(concurrency.max(1))
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_, _>>()?;
            let total = started.elapsed();
            let mut lat: Vec<f64> = results.iter().map(|(d, _)| d.as_secs_f64() * 1000.0).collect();
            lat.sort_by(f64::total_cmp);
            let ok = results.iter().filter(|(_, r)| r.error.is_none()).count();
            if !quiet {
                for (_, r) in &results {
                    println!("{}", r.to_json());
                }
            }
            let pct = |p: f64| lat.get(((lat.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0);
            eprintln!(
                "{} requests, {ok} ok, {:.0} req/s, latency ms p50 {:.2} p99 {:.2} max {:.2}",
                results.len(),
                results.len() as f64 / total.as_secs_f64(),
                pct(0.5),
                pct(0.99),
                pct(1.0)
            );
            if ok < results.len() {
                std::process::exit(2);
            }
        }
    }
    Ok(())
}
