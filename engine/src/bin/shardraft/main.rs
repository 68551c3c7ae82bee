//! `shardraft`: the server (`shardraft serve --config node.toml`) and the command-line
//! client.
//!
//! Exit status of `serve`: 0 after a clean stop on SIGTERM or SIGINT, 1 when the node
//! fails, 2 for an invalid config or usage.

mod config;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use mimalloc::MiMalloc;
use shardraft::kv::KvStateMachine;
use shardraft::node::{Node, NodeError};
use shardraft::raft::NodeId;
use shardraft::server::client_service::{ClientService, ClientServiceConfig, ClusterInfo};
use shardraft::server::http::{HttpServer, NodeInfo};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// Maximum time a clean stop may take before the process exits anyway.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(
    name = "shardraft",
    version,
    about = "A shard-per-core Raft key-value server and its client"
)]
struct Cli {
    #[command(flatten)]
    client: shardraft::cli::ClientOptions,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node. Every config key can come from the file, from an environment variable
    /// SHARDRAFT_<KEY> or from a flag; a flag wins over the environment, which wins over
    /// the file.
    Serve(Box<ServeArgs>),
    #[command(flatten)]
    Client(shardraft::cli::ClientCommand),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The node's TOML config file; keys as the flags below, with underscores.
    #[arg(long, env = "SHARDRAFT_CONFIG")]
    config: Option<std::path::PathBuf>,

    #[command(flatten)]
    overrides: config::ConfigOverrides,

    #[command(flatten)]
    logging: LogArgs,
}

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
struct LogArgs {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Log filter, such as `info` or `shardraft=debug`; RUST_LOG is used when unset.
    /// [default: info]
    #[arg(long)]
    log_level: Option<String>,
}

fn init_logging(args: &LogArgs) {
    let filter = match &args.log_level {
        Some(level) => tracing_subscriber::EnvFilter::new(level),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Client(command) => shardraft::cli::run(command, cli.client),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    init_logging(&args.logging);
    let merged = config::read_file(args.config.as_deref())
        .and_then(|file| config::merge(file, &args.overrides));
    let config = match merged {
        Ok(config) => config,
        Err(error) => {
            eprintln!("shardraft: {error}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(config = ?config, "effective config");

    let limits = config.kv_limits;
    let node = match Node::start(config.node.clone(), move |_| KvStateMachine::new(limits)) {
        Ok(node) => node,
        Err(NodeError::Config(error)) => {
            eprintln!("shardraft: {error}");
            return ExitCode::from(2);
        }
        Err(error) => {
            eprintln!("shardraft: the node failed to start: {error}");
            return ExitCode::from(1);
        }
    };
    let own = config.own_member().clone();
    for member in &config.members {
        node.handle().learn_service_addresses(
            NodeId(member.id),
            Some(member.client_address),
            member.http_address,
        );
    }
    let client_info = ClusterInfo {
        cluster_id: config.node.cluster_id,
        node_id: NodeId(config.node.node_id),
        client_addresses: config
            .members
            .iter()
            .map(|member| (NodeId(member.id), member.client_address.to_string()))
            .collect(),
    };
    let client_config = ClientServiceConfig::new(config.kv_limits);
    let clients = match ClientService::start(
        node.handle(),
        own.client_address,
        client_info,
        client_config,
    ) {
        Ok(service) => service,
        Err(error) => {
            eprintln!("shardraft: {error}");
            return ExitCode::from(1);
        }
    };
    let http = match own.http_address {
        Some(address) => {
            let info = NodeInfo {
                cluster_id: config.node.cluster_id,
                node_id: config.node.node_id,
                version: env!("CARGO_PKG_VERSION").to_string(),
                members: config.node.members.clone(),
            };
            match HttpServer::start(address, node.handle(), info) {
                Ok(server) => Some(server),
                Err(error) => {
                    eprintln!("shardraft: {error}");
                    return ExitCode::from(1);
                }
            }
        }
        None => None,
    };
    tracing::info!(
        node = config.node.node_id, peer = %own.peer_address, client = %own.client_address,
        http = ?own.http_address, "node started"
    );

    let signal = wait_for_stop_signal();
    tracing::info!(signal, "stopping");
    // Clients first: the service stops accepting and finishes what is in flight while the
    // node still runs; then the node makes its logs durable and closes its connections.
    if let Err(error) = clients.shutdown() {
        tracing::error!(%error, "the client service did not stop cleanly");
    }
    let status = stop_within(node, SHUTDOWN_TIMEOUT);
    if let Some(http) = http {
        http.shutdown();
    }
    status
}

/// Blocks until SIGTERM or SIGINT and returns its name.
fn wait_for_stop_signal() -> &'static str {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(signals) => signals,
        Err(error) => {
            tracing::error!(%error, "installing signal handlers failed; stopping at once");
            return "none";
        }
    };
    match signals.forever().next() {
        Some(SIGINT) => "SIGINT",
        _ => "SIGTERM",
    }
}

/// Shuts the node down cleanly, giving up after `timeout` so that a stuck disk cannot keep
/// the process alive forever.
fn stop_within(node: Node<KvStateMachine>, timeout: Duration) -> ExitCode {
    let (done, finished) = flume::bounded(1);
    std::thread::spawn(move || {
        let _ = done.send(node.shutdown());
    });
    match finished.recv_timeout(timeout) {
        Ok(Ok(())) => {
            tracing::info!("stopped cleanly");
            ExitCode::SUCCESS
        }
        Ok(Err(error)) => {
            tracing::error!(%error, "the node did not stop cleanly");
            ExitCode::from(1)
        }
        Err(_) => {
            tracing::error!(
                timeout_secs = timeout.as_secs(),
                "the node did not stop in time"
            );
            ExitCode::from(1)
        }
    }
}
