use clap::Parser;
use kim_worker::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        // Help and version print and succeed; bad flags are a configuration error.
        Err(e) => {
            let _ = e.print();
            let code = if e.use_stderr() { kim_api::exit::CONFIG } else { kim_api::exit::OK };
            return code.into();
        }
    };
    kim_runtime::init_logging(cli.log_format, "info");
    let result = match cli.command {
        Command::Gen(a) => kim_worker::gen::run(&a),
        Command::Index(a) => kim_worker::indexer::run(&a),
        Command::Refresh(a) => kim_worker::refresh::run(&a),
        Command::Match(a) => kim_worker::matcher::run(a),
        Command::Clean(a) => kim_worker::indexer::clean(&a),
        Command::Snapshot(c) => kim_worker::snapshots::run(c),
        Command::Agent(a) => kim_worker::online::agent::run(a),
        Command::Filter(a) => kim_worker::online::gateway::run(a),
        Command::Vectorize(a) => kim_worker::online::vectorizer::run(a),
        Command::Rebalance(a) => kim_worker::online::rebalance::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            kim_worker::exit::code_of(&e).into()
        }
    }
}
