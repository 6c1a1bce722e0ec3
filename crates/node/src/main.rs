//! `playergold`: the PlayerGold node binary.
//!
//! ```text
//!  playergold init ──► DATA_DIR/{node_key (0600), genesis.toml, chain.redb}
//!  playergold node ──► Blockchain (redb) ◄── producer (own slots) ◄── optional tx load (--tps)
//!                          │
//!                          └──► status line every few seconds
//! ```

mod keyfile;
mod run;

use std::path::PathBuf;

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

/// `playergold init`: key, genesis and database in `data_dir`.
pub(crate) fn init(data_dir: &std::path::Path, network: &str, slot_ms: u64) -> anyhow::Result<()> {
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
    let genesis_path = data_dir.join(GENESIS_FILE);
    if !genesis_path.exists() {
        let mut genesis = Genesis::devnet(network, vec![key.public()], TimestampMs::now())?;
        genesis.slot_duration_ms = slot_ms;
        genesis.validate()?;
        std::fs::write(&genesis_path, toml::to_string_pretty(&genesis)?)?;
    }
    println!("data dir   {}", data_dir.display());
    println!("public key {}", key.public());
    println!("address    {}", key.public().address());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Init {
            data_dir,
            network,
            slot_ms,
        } => init(&data_dir, &network, slot_ms),
        Command::Node(args) => run::run(args),
        Command::Keys { command } => match command {
            KeysCommand::Generate { out } => {
                let key = Keypair::generate();
                keyfile::create(&out, &key)?;
                println!("public key {}", key.public());
                println!("address    {}", key.public().address());
                Ok(())
            }
            KeysCommand::Show { data_dir } => {
                let key = keyfile::load(&data_dir.join(NODE_KEY_FILE))?;
                println!("public key {}", key.public());
                println!("address    {}", key.public().address());
                Ok(())
            }
        },
    }
}
