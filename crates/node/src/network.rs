//! Starting the peer-to-peer side of the node: the network configuration from the node's
//! settings and genesis, the node key as TLS identity, and the address book in the chain
//! database.
//!
//! ```text
//!  NodeConfig + Genesis.network ──► NetworkConfig ──► playergold_net::start_with_metrics
//!  DATA_DIR/node_key (same key that signs blocks) ──► TLS certificate ──► PeerId
//!  chain.redb aux table "net/address_book" ◄──► AddressBookStore
//! ```

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use playergold_chain::Blockchain;
use playergold_net::{
    ADDRESS_BOOK_AUX_KEY, AddressBookStore, FnStore, NetworkConfig, NetworkName, PeerId,
};
use playergold_primitives::Genesis;
use playergold_protocol::Capabilities;

use crate::config::NodeConfig;

/// The network settings of a node with `config` on the network its `genesis` names.
pub(crate) fn network_config(
    config: &NodeConfig,
    genesis: &Genesis,
) -> anyhow::Result<NetworkConfig> {
    let name = NetworkName::new(&genesis.network).with_context(|| {
        format!(
            "the genesis names network {:?}, which cannot be a protocol name",
            genesis.network
        )
    })?;
    let mut net = NetworkConfig::new(name);
    net.listen_addrs = config.listen.clone();
    net.bootstrap = config.bootstrap.clone();
    net.external_addrs = config.external_addrs.clone();
    net.min_peers = config.min_peers;
    net.max_peers = config.max_peers;
    // Outbound slots: the target plus two for manual and persistent peers, within max_peers.
    net.outbound_reserve = (config.min_peers + 2).min(config.max_peers);
    net.allow_local_addresses = config.allow_local_addresses;
    net.mdns = config.mdns;
    net.dht = config.dht;
    if config.allow_local_addresses {
        // A devnet runs every node on 127.0.0.1: the per-IP inbound limit (a defence against
        // one host taking many slots on the public network) would cap it at a handful of nodes.
        net.max_inbound_per_ip = config.max_peers;
        // Devnets and private networks: every node is reachable, so every node serves the DHT
        // (on the public network a node serves once it knows it is reachable).
        net.dht_mode = playergold_net::config::DhtMode::Server;
    }
    net.capabilities = capabilities(config);
    net.validate()
        .context("the network settings in the config are inconsistent")?;
    Ok(net)
}

/// The capabilities named in the config (validated when the config was loaded).
pub(crate) fn capabilities(config: &NodeConfig) -> Capabilities {
    config
        .capabilities
        .iter()
        .filter_map(|c| Capabilities::parse(c))
        .fold(Capabilities::NONE, Capabilities::with)
}

/// The node key as the network identity (the same 32-byte secret that signs blocks, so a
/// validator's PeerId and its block-signing key are one).
pub(crate) fn network_key(data_dir: &Path) -> anyhow::Result<libp2p::identity::Keypair> {
    let path = data_dir.join(crate::NODE_KEY_FILE);
    playergold_net::identity::load_node_key(&path)
        .with_context(|| format!("cannot use {} as the network identity", path.display()))
}

/// The PeerId of a node key.
pub(crate) fn peer_id_of(key: &playergold_primitives::Keypair) -> anyhow::Result<PeerId> {
    let mut secret = key.secret_bytes();
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(&mut secret)
        .context("the node key is not a valid ed25519 secret")?;
    Ok(keypair.public().to_peer_id())
}

/// The address book, kept in the chain database's aux table.
pub(crate) fn address_book_store(chain: Arc<Blockchain>) -> Box<dyn AddressBookStore> {
    let saver = chain.clone();
    Box::new(FnStore::new(
        move || chain.store().get_aux(ADDRESS_BOOK_AUX_KEY),
        move |bytes: &[u8]| saver.store().put_aux(ADDRESS_BOOK_AUX_KEY, bytes),
    ))
}
