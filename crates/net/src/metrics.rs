//! Network metrics (Prometheus), in base units, without rates (Prometheus derives them).
//!
//! [`NetworkMetrics`] holds the connection manager's own counters and gauges. When the node
//! passes a registry to [`crate::service::start_with_metrics`], they are registered there
//! together with libp2p's standard swarm, ping and identify metrics and per-transport byte
//! counters (`libp2p_bandwidth`), under the sub-registry `net`.

use libp2p::metrics::Registry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

/// The connection manager's metrics. Clones share the same values.
#[derive(Clone, Debug, Default)]
pub struct NetworkMetrics {
    /// `net_peers_inbound`: connected peers that dialled us.
    pub peers_inbound: Gauge,
    /// `net_peers_outbound`: connected peers we dialled.
    pub peers_outbound: Gauge,
    /// `net_known_peers`: peers in the address book.
    pub known_peers: Gauge,
    /// `net_evictions_total`: inbound peers evicted to make room for a new one.
    pub evictions: Counter,
    /// `net_heartbeat_failures_total`: peers disconnected for missing a heartbeat.
    pub heartbeat_failures: Counter,
    /// `net_inbound_refused_total`: inbound connections refused (limits, lists, full).
    pub inbound_refused: Counter,
    /// `net_dial_failures_total`: outbound dials that failed.
    pub dial_failures: Counter,
    /// `net_dht_routing_table_peers`: peers in the DHT routing table.
    pub dht_routing_table_peers: Gauge,
    /// `net_dht_diversity_refusals_total`: routing-table insertions refused by the IP
    /// diversity filter (or for a local address on a public network).
    pub dht_diversity_refusals: Counter,
    /// `net_mdns_discovered_total`: peers announced by mDNS (one per peer per announcement).
    pub mdns_discovered: Counter,
    /// `net_addr_requests_limited_total`: peer exchange requests answered empty because the
    /// asker's token bucket was empty.
    pub addr_requests_limited: Counter,
}

impl NetworkMetrics {
    /// Metrics registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "peers_inbound",
            "Connected peers that dialled us",
            metrics.peers_inbound.clone(),
        );
        registry.register(
            "peers_outbound",
            "Connected peers we dialled",
            metrics.peers_outbound.clone(),
        );
        registry.register(
            "known_peers",
            "Peers in the address book",
            metrics.known_peers.clone(),
        );
        registry.register(
            "evictions",
            "Inbound peers evicted to make room for a new one",
            metrics.evictions.clone(),
        );
        registry.register(
            "heartbeat_failures",
            "Peers disconnected for missing a heartbeat",
            metrics.heartbeat_failures.clone(),
        );
        registry.register(
            "inbound_refused",
            "Inbound connections refused by limits, access lists or a full node",
            metrics.inbound_refused.clone(),
        );
        registry.register(
            "dial_failures",
            "Outbound dials that failed",
            metrics.dial_failures.clone(),
        );
        registry.register(
            "dht_routing_table_peers",
            "Peers in the DHT routing table",
            metrics.dht_routing_table_peers.clone(),
        );
        registry.register(
            "dht_diversity_refusals",
            "DHT routing-table insertions refused by the IP diversity filter",
            metrics.dht_diversity_refusals.clone(),
        );
        registry.register(
            "mdns_discovered",
            "Peers announced by mDNS",
            metrics.mdns_discovered.clone(),
        );
        registry.register(
            "addr_requests_limited",
            "Peer exchange requests answered empty by the rate limit",
            metrics.addr_requests_limited.clone(),
        );
        metrics
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn metrics_are_exported_with_their_names() {
        let mut registry = Registry::with_prefix("playergold");
        let metrics = NetworkMetrics::register(registry.sub_registry_with_prefix("net"));
        metrics.evictions.inc();
        metrics.peers_outbound.set(8);
        let mut text = String::new();
        encode(&mut text, &registry).expect("encodes");
        assert!(text.contains("playergold_net_evictions_total 1"), "{text}");
        assert!(text.contains("playergold_net_peers_outbound 8"), "{text}");
    }
}
