//! `playergold`: the PlayerGold node binary.
//!
//! ```text
//!  playergold init ──► DATA_DIR/{node_key (0600), genesis.toml, config.toml, chain.redb}
//!  playergold node ──► DATA_DIR/node.lock, config (defaults < file < PLAYERGOLD_* < flags)
//!                      Blockchain (redb) ◄── producer (own slots) ◄── optional tx load (--tps)
//!                          │            ◄── HTTP API (axum) ◄── playergold status / tx send
//!                          └──► status line every 10 s, /metrics
//! ```

mod api;
mod client;
mod config;
mod devnet;
mod keyfile;
mod lock;
mod metrics;
mod network;
mod progress;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use playergold_primitives::{Genesis, Keypair, TimestampMs};

/// File names inside a data directory.
pub(crate) const NODE_KEY_FILE: &str = "node_key";
pub(crate) const GENESIS_FILE: &str = "genesis.toml";
pub(crate) const CHAIN_FILE: &str = "chain.redb";

#[derive(Parser)]
#[command(name = "playergold", version, about = "PlayerGold node")]
struct Cli {
    /// Print JSON for scripts instead of text: one document, or one object per line for the
    /// long-running `node` and `devnet`.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a data directory: node key, a genesis naming this node the validator, database.
    Init {
        /// Data directory to create.
        #[arg(long)]
        data_dir: PathBuf,
        /// Network name (a-z, 0-9, '-').
        #[arg(long, default_value = "devnet")]
        network: String,
        /// Slot duration in milliseconds.
        #[arg(long, default_value_t = 1_000)]
        slot_ms: u64,
    },
    /// Run a node on an initialised data directory.
    Node(run::NodeArgs),
    /// Key management.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Run a local network of N nodes, one process each (the quickest way to see PlayerGold work).
    Devnet(devnet::DevnetArgs),
    /// Show a running node's status (through its HTTP API).
    Status(client::ApiArgs),
    /// List a running node's peers (through its HTTP API).
    Peers(client::ApiArgs),
    /// Ban a peer on a running node (persists across restarts).
    Ban(client::BanArgs),
    /// Lift a ban on a running node.
    Unban(client::UnbanArgs),
    /// Transactions.
    Tx {
        #[command(subcommand)]
        command: TxCommand,
    },
    /// Configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum TxCommand {
    /// Sign a transfer locally and submit it to a node.
    Send(client::TxSendArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective config: defaults, config file, PLAYERGOLD_* environment, flags.
    Show {
        /// Data directory whose config.toml to read.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        config: config::ConfigArgs,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Generate a key file and print its public key and address.
    Generate {
        /// Where to write the 32-byte secret (mode 0600).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the public key and address of a data directory's node key.
    Show {
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

/// `playergold init`: key, genesis and database in `data_dir`; prints where they are and the
/// node's identity (as one JSON object with `json`).
pub(crate) fn init(
    data_dir: &std::path::Path,
    network: &str,
    slot_ms: u64,
    print: InitOutput,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let key_path = data_dir.join(NODE_KEY_FILE);
    let key = if key_path.exists() {
        keyfile::load(&key_path)?
    } else {
        let key = Keypair::generate();
        keyfile::create(&key_path, &key)?;
        key
    };
    let config_path = data_dir.join(config::CONFIG_FILE);
    if !config_path.exists() {
        std::fs::write(&config_path, config::EXAMPLE_CONFIG)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
    }
    let genesis_path = data_dir.join(GENESIS_FILE);
    if !genesis_path.exists() {
        let mut genesis = Genesis::devnet(network, vec![key.public()], TimestampMs::now())?;
        genesis.slot_duration_ms = slot_ms;
        genesis.validate()?;
        std::fs::write(&genesis_path, toml::to_string_pretty(&genesis)?)?;
    }
    let paths = [
        ("data dir", "data_dir", data_dir),
        ("config", "config", config_path.as_path()),
    ];
    match print {
        InitOutput::Text => print_identity(&key, &paths, false),
        InitOutput::Json => print_identity(&key, &paths, true),
        InitOutput::Nothing => Ok(()),
    }
}

/// What [`init`] prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InitOutput {
    /// Where things are and the node's identity, as text.
    Text,
    /// The same as one JSON object.
    Json,
    /// Nothing (`node --dev --json`, whose stdout holds only its own JSON lines).
    Nothing,
}

/// Prints `paths` (text label, JSON key, path) and a key's public key, account address and
/// PeerId: aligned lines, or one JSON object with `json`.
fn print_identity(
    key: &Keypair,
    paths: &[(&str, &str, &std::path::Path)],
    json: bool,
) -> anyhow::Result<()> {
    let peer_id = network::peer_id_of(key)?;
    if json {
        let mut out = serde_json::Map::new();
        for (_, name, path) in paths {
            out.insert((*name).into(), path.display().to_string().into());
        }
        out.insert("public_key".into(), key.public().to_string().into());
        out.insert("address".into(), key.public().address().to_string().into());
        out.insert("peer_id".into(), peer_id.to_string().into());
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for (label, _, path) in paths {
        println!("{label:<10} {}", path.display());
    }
    println!("public key {}", key.public());
    println!("address    {}", key.public().address());
    println!("peer id    {peer_id}");
    Ok(())
}

/// Logs to stderr at the level `RUST_LOG` asks for (default `info`).
pub(crate) fn init_logging(format: config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: log files and collectors get plain text.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(|| progress::StderrAroundBar);
    match format {
        config::LogFormat::Text => logs.init(),
        config::LogFormat::Json => logs.json().init(),
    }
}

fn main() -> ExitCode {
    match dispatch(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole context chain on one line, without a backtrace: operators read this.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let json = cli.json;
    if !matches!(cli.command, Command::Node(_)) {
        // The node sets up logging itself once its config (which holds the format) is read.
        init_logging(config::LogFormat::Text);
    }
    match cli.command {
        Command::Init {
            data_dir,
            network,
            slot_ms,
        } => init(
            &data_dir,
            &network,
            slot_ms,
            if json {
                InitOutput::Json
            } else {
                InitOutput::Text
            },
        ),
        Command::Node(args) => run::run(args, json),
        Command::Keys { command } => match command {
            KeysCommand::Generate { out } => {
                let key = Keypair::generate();
                keyfile::create(&out, &key)?;
                print_identity(&key, &[("key file", "key_file", &out)], json)
            }
            KeysCommand::Show { data_dir } => {
                let key = keyfile::load(&data_dir.join(NODE_KEY_FILE))?;
                print_identity(&key, &[], json)
            }
        },
        Command::Status(args) => client::status(args, json),
        Command::Peers(args) => client::peers(args, json),
        Command::Ban(args) => client::ban(args, json),
        Command::Unban(args) => client::unban(args, json),
        Command::Devnet(args) => devnet::run(args, json),
        Command::Tx {
            command: TxCommand::Send(args),
        } => client::tx_send(args, json),
        Command::Config {
            command: ConfigCommand::Show { data_dir, config },
        } => {
            let config = config.load(data_dir.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&config)?);
            } else {
                print!("{}", config.to_toml());
            }
            Ok(())
        }
    }
}
