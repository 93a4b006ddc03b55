//! `kim-node`: the node harness as a command, for a local cluster a user can try kim on
//! (`make cluster`). Registers the Node, runs the pods bound to it as local processes, and on
//! SIGTERM or Ctrl-C stops them and removes the Node.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use kim_e2e::node::{Config, Harness, Image};
use kube::config::{KubeConfigOptions, Kubeconfig};

#[derive(Debug, Parser)]
#[command(name = "kim-node", version, about = "Plays the kubelet of one Node: its pods run as local processes")]
struct Args {
    /// Admin kubeconfig of the cluster (e2e/cluster.sh writes one).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Volumes, pod directories and container logs.
    #[arg(long, env = "KIM_NODE_ROOT")]
    root: PathBuf,
    /// Name of the Node.
    #[arg(long, env = "KIM_NODE_NAME", default_value = "kim-harness-0")]
    node: String,
    /// An image the node can run, as NAME=BINARY (e.g. kim-worker=target/release/kim-worker);
    /// repeatable.
    #[arg(long = "image", value_parser = parse_image, required = true)]
    images: Vec<Image>,
    /// How long shutdown may take (processes are killed after it).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "15s")]
    shutdown_timeout: Duration,
}

fn parse_image(s: &str) -> Result<Image, String> {
    let (name, binary) = s.split_once('=').ok_or_else(|| format!("{s:?} is not NAME=BINARY"))?;
    let binary = std::path::absolute(binary).map_err(|e| format!("{binary}: {e}"))?;
    if name.is_empty() {
        return Err(format!("{s:?} has no image name"));
    }
    Ok(Image { name: name.into(), binary })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KIM_LOG").unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kim-node: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let kc = Kubeconfig::read_from(&args.kubeconfig).map_err(|e| format!("{}: {e}", args.kubeconfig.display()))?;
    let cluster = kc.clusters.first().and_then(|c| c.cluster.clone()).ok_or("the kubeconfig names no cluster")?;
    let server = cluster.server.clone().ok_or("the kubeconfig's cluster has no server")?;
    let ca_data = cluster.certificate_authority_data.clone().ok_or("the kubeconfig's cluster has no embedded CA")?;
    let cfg =
        kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.map_err(|e| e.to_string())?;
    let client = kube::Client::try_from(cfg).map_err(|e| e.to_string())?;
    let harness = Harness::start(
        client,
        Config { node: args.node.clone(), root: args.root, images: args.images, server, ca_data },
    )
    .await
    .map_err(|e| e.to_string())?;
    tracing::info!(node = %args.node, "node harness running; SIGTERM or Ctrl-C stops it");
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping pods and removing the node");
    harness.shutdown(args.shutdown_timeout).await;
    Ok(())
}
