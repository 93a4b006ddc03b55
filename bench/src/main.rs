//! `kim-bench`: kim's side of `make bench` (see docs/benchmarks.md). Each subcommand prints one
//! JSON object on stdout for the driver (bench/run.py) to merge with the peers' results.

mod index;
mod redis;
mod sharded;
mod sys;
mod tail;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "kim-bench",
    about = "kim benchmarks: index build/search against exact ground truth, and the Redis matcher path"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build an index with kim_index::build::build_graph and write it as a snapshot.
    Build(index::BuildArgs),
    /// Load a snapshot (timed, with its RSS) and sweep ef with one search thread.
    Search(index::SearchArgs),
    /// Serve the snapshot with real matchers behind redis-server and load them with kim-client
    /// (with --shards N, also the snapshot split into N shards beside one unsharded matcher).
    Redis(redis::RedisArgs),
    /// Search cost of a refresh tail (1 % and 5 % of the snapshot) against none, one thread.
    Tail(tail::TailArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let out = match &cli.command {
        Cmd::Build(a) => index::build(a)?,
        Cmd::Search(a) => index::search(a)?,
        Cmd::Redis(a) => redis::run(a)?,
        Cmd::Tail(a) => tail::run(a)?,
    };
    println!("{out}");
    Ok(())
}
