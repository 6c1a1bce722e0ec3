//! The node's settings: [`NodeConfig`], built from layers in order of precedence.
//!
//! ```text
//!  defaults ◄── DATA_DIR/config.toml (or --config) ◄── PLAYERGOLD_* environment ◄── flags
//! ```
//!
//! Every source is parsed into the same [`ConfigLayer`] (all fields optional) and applied by
//! [`NodeConfig::apply`], so there is one place that merges. Lists replace, never append: a
//! `--listen` on the command line replaces the file's `listen`. Unknown file keys and unknown
//! `PLAYERGOLD_*` variables are errors that name the key.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use multiaddr::Multiaddr;
use serde::{Deserialize, Serialize};

/// File name of the config inside a data directory.
pub(crate) const CONFIG_FILE: &str = "config.toml";
/// The commented example config; `playergold init` writes it as a data directory's config.
pub(crate) const EXAMPLE_CONFIG: &str = include_str!("../config.example.toml");
/// Default peer-to-peer port (TCP and QUIC).
const DEFAULT_P2P_PORT: u16 = 7000;
/// Default HTTP API address: loopback only, the API has no authentication.
pub(crate) const DEFAULT_API: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 7001);
/// Prefix of the environment variables that override the config file.
const ENV_PREFIX: &str = "PLAYERGOLD_";
/// Upper bound on `max_peers`: each peer costs buffers and a connection slot, and a node needs
/// tens of peers, not thousands.
const MAX_PEERS_LIMIT: usize = 1_000;

/// Why the configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source} (check the path and its permissions)")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or holds an unknown key or a bad value.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message; it names the offending key.
        message: String,
    },
    /// A `PLAYERGOLD_*` variable that no setting uses (probably a typo).
    #[error("unknown environment variable {0}: known ones are {known}", known = EnvKey::names())]
    UnknownEnv(String),
    /// A `PLAYERGOLD_*` variable whose value does not parse.
    #[error("environment variable {name}={value:?}: {message}")]
    BadEnv {
        /// The variable.
        name: String,
        /// Its value.
        value: String,
        /// Why it does not parse.
        message: String,
    },
    /// The merged settings contradict each other.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        <LogFormat as clap::ValueEnum>::from_str(s, true)
    }
}

/// The effective settings of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct NodeConfig {
    /// Peer-to-peer listen addresses.
    pub(crate) listen: Vec<Multiaddr>,
    /// Peers to dial at start-up.
    pub(crate) bootstrap: Vec<Multiaddr>,
    /// Addresses other nodes can reach this one on (a public IP, a forwarded port), announced
    /// to peers; declaring one makes the node a DHT server.
    pub(crate) external_addrs: Vec<Multiaddr>,
    /// Below this many peers the node looks for more.
    pub(crate) min_peers: usize,
    /// The node accepts at most this many peers.
    pub(crate) max_peers: usize,
    /// Discover peers on the local network with mDNS.
    pub(crate) mdns: bool,
    /// Discover peers with the Kademlia DHT.
    pub(crate) dht: bool,
    /// Accept loopback and private addresses from peers (devnets and private networks).
    pub(crate) allow_local_addresses: bool,
    /// What this node offers the network: `ai-compute`, `validator`, `archive`.
    pub(crate) capabilities: Vec<String>,
    /// Where the HTTP API listens.
    pub(crate) api: SocketAddr,
    /// Log line format.
    pub(crate) log_format: LogFormat,
}

impl Default for NodeConfig {
    fn default() -> Self {
        let listen = [
            format!("/ip4/0.0.0.0/tcp/{DEFAULT_P2P_PORT}"),
            format!("/ip4/0.0.0.0/udp/{DEFAULT_P2P_PORT}/quic-v1"),
        ]
        .iter()
        .map(|a| {
            a.parse()
                .expect("the default listen addresses are valid multiaddrs")
        })
        .collect();
        NodeConfig {
            listen,
            bootstrap: Vec::new(),
            external_addrs: Vec::new(),
            min_peers: 8,
            max_peers: 50,
            mdns: true,
            dht: true,
            allow_local_addresses: false,
            capabilities: Vec::new(),
            api: DEFAULT_API,
            log_format: LogFormat::Text,
        }
    }
}

/// One source of settings: anything left `None` keeps the value from the layers below.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigLayer {
    listen: Option<Vec<Multiaddr>>,
    bootstrap: Option<Vec<Multiaddr>>,
    external_addrs: Option<Vec<Multiaddr>>,
    min_peers: Option<usize>,
    max_peers: Option<usize>,
    mdns: Option<bool>,
    dht: Option<bool>,
    allow_local_addresses: Option<bool>,
    capabilities: Option<Vec<String>>,
    api: Option<SocketAddr>,
    log_format: Option<LogFormat>,
}

/// The environment variables a [`ConfigLayer`] reads; each maps to the config key of the same
/// name in lowercase.
#[derive(Debug, Clone, Copy)]
enum EnvKey {
    Listen,
    Bootstrap,
    ExternalAddrs,
    MinPeers,
    MaxPeers,
    Mdns,
    Dht,
    AllowLocalAddresses,
    Capabilities,
    Api,
    LogFormat,
}

impl EnvKey {
    const ALL: [EnvKey; 11] = [
        EnvKey::Listen,
        EnvKey::Bootstrap,
        EnvKey::ExternalAddrs,
        EnvKey::MinPeers,
        EnvKey::MaxPeers,
        EnvKey::Mdns,
        EnvKey::Dht,
        EnvKey::AllowLocalAddresses,
        EnvKey::Capabilities,
        EnvKey::Api,
        EnvKey::LogFormat,
    ];

    fn name(self) -> &'static str {
        match self {
            EnvKey::Listen => "PLAYERGOLD_LISTEN",
            EnvKey::Bootstrap => "PLAYERGOLD_BOOTSTRAP",
            EnvKey::ExternalAddrs => "PLAYERGOLD_EXTERNAL_ADDRS",
            EnvKey::MinPeers => "PLAYERGOLD_MIN_PEERS",
            EnvKey::MaxPeers => "PLAYERGOLD_MAX_PEERS",
            EnvKey::Mdns => "PLAYERGOLD_MDNS",
            EnvKey::Dht => "PLAYERGOLD_DHT",
            EnvKey::AllowLocalAddresses => "PLAYERGOLD_ALLOW_LOCAL_ADDRESSES",
            EnvKey::Capabilities => "PLAYERGOLD_CAPABILITIES",
            EnvKey::Api => "PLAYERGOLD_API",
            EnvKey::LogFormat => "PLAYERGOLD_LOG_FORMAT",
        }
    }

    fn names() -> String {
        EnvKey::ALL.map(EnvKey::name).join(", ")
    }
}

fn parse_env<T: FromStr>(name: &str, value: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    value
        .trim()
        .parse()
        .map_err(|e: T::Err| ConfigError::BadEnv {
            name: name.to_string(),
            value: value.to_string(),
            message: e.to_string(),
        })
}

/// A comma-separated list; an empty value is an empty list.
fn parse_env_list<T: FromStr>(name: &str, value: &str) -> Result<Vec<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    value
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| parse_env(name, s))
        .collect()
}

impl ConfigLayer {
    /// Reads a TOML config file.
    fn from_file(path: &Path) -> Result<ConfigLayer, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Reads `PLAYERGOLD_*` variables from `vars` (the process environment in production).
    /// Lists are comma-separated.
    fn from_env(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<ConfigLayer, ConfigError> {
        let mut layer = ConfigLayer::default();
        for (name, value) in vars {
            if !name.starts_with(ENV_PREFIX) {
                continue;
            }
            let key = EnvKey::ALL
                .into_iter()
                .find(|k| k.name() == name)
                .ok_or_else(|| ConfigError::UnknownEnv(name.clone()))?;
            let v = value.as_str();
            match key {
                EnvKey::Listen => layer.listen = Some(parse_env_list(&name, v)?),
                EnvKey::Bootstrap => layer.bootstrap = Some(parse_env_list(&name, v)?),
                EnvKey::ExternalAddrs => layer.external_addrs = Some(parse_env_list(&name, v)?),
                EnvKey::MinPeers => layer.min_peers = Some(parse_env(&name, v)?),
                EnvKey::MaxPeers => layer.max_peers = Some(parse_env(&name, v)?),
                EnvKey::Mdns => layer.mdns = Some(parse_env(&name, v)?),
                EnvKey::Dht => layer.dht = Some(parse_env(&name, v)?),
                EnvKey::AllowLocalAddresses => {
                    layer.allow_local_addresses = Some(parse_env(&name, v)?)
                }
                EnvKey::Capabilities => layer.capabilities = Some(parse_env_list(&name, v)?),
                EnvKey::Api => layer.api = Some(parse_env(&name, v)?),
                EnvKey::LogFormat => layer.log_format = Some(parse_env(&name, v)?),
            }
        }
        Ok(layer)
    }
}

impl NodeConfig {
    /// Overrides every setting the layer holds.
    fn apply(&mut self, layer: ConfigLayer) {
        let ConfigLayer {
            listen,
            bootstrap,
            external_addrs,
            min_peers,
            max_peers,
            mdns,
            dht,
            allow_local_addresses,
            capabilities,
            api,
            log_format,
        } = layer;
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(v) = $field {
                    self.$field = v;
                }
            )*};
        }
        set!(
            listen,
            bootstrap,
            external_addrs,
            min_peers,
            max_peers,
            mdns,
            dht,
            allow_local_addresses,
            capabilities,
            api,
            log_format
        );
    }

    /// Builds the effective config from `layers`, lowest precedence first, and checks it.
    fn from_layers(
        layers: impl IntoIterator<Item = ConfigLayer>,
    ) -> Result<NodeConfig, ConfigError> {
        let mut config = NodeConfig::default();
        for layer in layers {
            config.apply(layer);
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_peers == 0 || self.max_peers > MAX_PEERS_LIMIT {
            return Err(ConfigError::Invalid(format!(
                "max_peers = {} is outside 1..={MAX_PEERS_LIMIT}",
                self.max_peers
            )));
        }
        if let Some(bad) = self
            .capabilities
            .iter()
            .find(|c| playergold_protocol::Capabilities::parse(c).is_none())
        {
            return Err(ConfigError::Invalid(format!(
                "unknown capability {bad:?}: use ai-compute, validator or archive"
            )));
        }
        if self.min_peers > self.max_peers {
            return Err(ConfigError::Invalid(format!(
                "min_peers = {} is above max_peers = {}: lower min_peers or raise max_peers",
                self.min_peers, self.max_peers
            )));
        }
        Ok(())
    }

    /// The config as TOML, the form `playergold config show` prints.
    pub(crate) fn to_toml(&self) -> String {
        toml::to_string(self).expect("every NodeConfig field has a TOML form")
    }
}

/// The flags of `playergold node` and `playergold config show` that override the config.
#[derive(Debug, clap::Args)]
pub(crate) struct ConfigArgs {
    /// Config file [default: DATA_DIR/config.toml when it exists].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Peer-to-peer listen address; repeat for several (replaces the config's list).
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// Peer to dial at start-up; repeat for several (replaces the config's list).
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<Multiaddr>,
    /// Dial no bootstrap peers, whatever the config says.
    #[arg(long, conflicts_with = "bootstrap")]
    no_bootstrap: bool,
    /// Address other nodes can reach this one on (a public IP, a forwarded port), announced to
    /// peers; repeat for several (replaces the config's list).
    #[arg(long, value_name = "MULTIADDR")]
    external_addr: Vec<Multiaddr>,
    /// Look for more peers below this many.
    #[arg(long, value_name = "N")]
    min_peers: Option<usize>,
    /// Accept at most this many peers.
    #[arg(long, value_name = "N")]
    max_peers: Option<usize>,
    /// Do not discover peers with mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// Do not discover peers with the DHT.
    #[arg(long)]
    no_dht: bool,
    /// HTTP API address (port 0 picks a free port).
    #[arg(long, value_name = "HOST:PORT")]
    api: Option<SocketAddr>,
    /// Log line format (the level comes from RUST_LOG, default info).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

impl ConfigArgs {
    fn layer(&self) -> ConfigLayer {
        let list = |v: &Vec<Multiaddr>| (!v.is_empty()).then(|| v.clone());
        ConfigLayer {
            listen: list(&self.listen),
            bootstrap: if self.no_bootstrap {
                Some(Vec::new())
            } else {
                list(&self.bootstrap)
            },
            external_addrs: list(&self.external_addr),
            min_peers: self.min_peers,
            max_peers: self.max_peers,
            mdns: self.no_mdns.then_some(false),
            dht: self.no_dht.then_some(false),
            allow_local_addresses: None,
            capabilities: None,
            api: self.api,
            log_format: self.log_format,
        }
    }

    /// The effective config: defaults, the config file (`--config`, else `DATA_DIR/config.toml`
    /// if there is one), the process environment, then these flags.
    pub(crate) fn load(&self, data_dir: Option<&Path>) -> Result<NodeConfig, ConfigError> {
        let file = match (&self.config, data_dir) {
            (Some(path), _) => ConfigLayer::from_file(path)?,
            (None, Some(dir)) if dir.join(CONFIG_FILE).exists() => {
                ConfigLayer::from_file(&dir.join(CONFIG_FILE))?
            }
            (None, _) => ConfigLayer::default(),
        };
        let env = ConfigLayer::from_env(process_env()?)?;
        NodeConfig::from_layers([file, env, self.layer()])
    }
}

/// The process's `PLAYERGOLD_*` variables.
fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    std::env::vars_os()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            name.starts_with(ENV_PREFIX).then_some((name, value))
        })
        .map(|(name, value)| {
            let value = value.into_string().map_err(|v| ConfigError::BadEnv {
                name: name.clone(),
                value: v.to_string_lossy().into_owned(),
                message: "not valid UTF-8".to_string(),
            })?;
            Ok((name, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_example_config_holds_exactly_the_defaults() {
        let layer: ConfigLayer = toml::from_str(EXAMPLE_CONFIG).expect("example parses");
        let config = NodeConfig::from_layers([layer]).expect("example is valid");
        assert_eq!(config, NodeConfig::default());
    }

    #[test]
    fn env_overrides_the_file_and_lists_replace() {
        let file: ConfigLayer =
            toml::from_str("max_peers = 11\nbootstrap = [\"/ip4/10.0.0.1/tcp/7000\"]\n")
                .expect("parses");
        let env = ConfigLayer::from_env(env(&[
            ("PLAYERGOLD_MAX_PEERS", "22"),
            ("PLAYERGOLD_MDNS", "false"),
            (
                "PLAYERGOLD_LISTEN",
                "/ip4/127.0.0.1/tcp/1, /ip4/127.0.0.1/tcp/2",
            ),
            (
                "PLAYERGOLD_EXTERNAL_ADDRS",
                "/ip4/203.0.113.7/tcp/7000,/ip4/203.0.113.7/udp/7000/quic-v1",
            ),
            ("HOME", "/root"),
        ]))
        .expect("env parses");
        let config = NodeConfig::from_layers([file, env]).expect("valid");
        assert_eq!(config.max_peers, 22);
        assert_eq!(config.external_addrs.len(), 2);
        assert!(!config.mdns);
        assert_eq!(config.listen.len(), 2);
        assert_eq!(config.bootstrap.len(), 1);
    }

    #[test]
    fn an_empty_env_list_empties_the_setting() {
        let env = ConfigLayer::from_env(env(&[("PLAYERGOLD_BOOTSTRAP", "")])).expect("parses");
        assert_eq!(env.bootstrap, Some(Vec::new()));
    }

    #[test]
    fn unknown_or_malformed_env_vars_are_named() {
        let err = ConfigLayer::from_env(env(&[("PLAYERGOLD_MAX_PEER", "3")]))
            .expect_err("unknown variable");
        assert!(err.to_string().contains("PLAYERGOLD_MAX_PEER"), "{err}");
        let err = ConfigLayer::from_env(env(&[("PLAYERGOLD_API", "localhost")]))
            .expect_err("not a socket address");
        assert!(err.to_string().contains("PLAYERGOLD_API"), "{err}");
    }

    #[test]
    fn contradictory_peer_limits_are_refused() {
        let layer = ConfigLayer {
            min_peers: Some(10),
            max_peers: Some(5),
            ..ConfigLayer::default()
        };
        let err = NodeConfig::from_layers([layer]).expect_err("min above max");
        assert!(err.to_string().contains("min_peers"), "{err}");
    }
}
