use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cfg = kim_operator::run::Config::parse();
    kim_runtime::init_logging(cfg.log_format, "info,kube=warn");
    match kim_operator::run::run(cfg).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
