use clap::Parser;
use kim_worker::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    kim_worker::telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Gen(a) => kim_worker::gen::run(&a),
        Command::Index(a) => kim_worker::indexer::run(&a),
        Command::Match(a) => kim_worker::matcher::run(a),
        Command::Clean(a) => kim_worker::indexer::clean(&a),
        Command::Snapshot(c) => kim_worker::snapshots::run(c),
        Command::Agent(a) => kim_worker::online::agent::run(a),
        Command::Filter(a) => kim_worker::online::gateway::run(a),
        Command::Vectorize(a) => kim_worker::online::vectorizer::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
