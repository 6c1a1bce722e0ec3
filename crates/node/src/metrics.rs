//! The node's Prometheus metrics, served as text on `GET /metrics`.
//!
//! Base units only (bytes, seconds) and no rates: Prometheus derives rates from the counters.
//! Everything is named `playergold_*`:
//!
//! ```text
//!  NodeMetrics registry ─┬─ chain gauges (set when scraped), producer and API counters,
//!                        │  the propagation-delay histogram (fed by `observe_propagation`)
//!                        └─ net_*: the network's own metrics, libp2p's swarm/ping/identify
//!                           metrics and bytes per transport (`net_libp2p_bandwidth_bytes_total`)
//!  ServiceSnapshot (read from relay, sync and reputation at scrape time) ──► relay_*, sync_*,
//!                           network_state, reputation_*, bans
//! ```
//!
//! Peers by direction are the network's `playergold_net_peers_inbound` and
//! `playergold_net_peers_outbound`; they are not repeated here.
//!
//! The service metrics are snapshots the services keep themselves (their own counters, read
//! through their handles when scraped), encoded by a collector as constant counters and gauges.
//! A service that does not answer (stopped, or busy beyond [`crate::api`]'s scrape timeout)
//! leaves its families out of that scrape rather than reporting zeros, which would read as a
//! counter reset.
//!
//! The propagation delay is measured when the relay reports a new item from a peer: a block
//! when it was imported (`RelayServiceEvent::NewBlock`), a transaction when it entered the
//! mempool (`NewTransaction`). The delay is that moment minus the item's own timestamp: the
//! header's `timestamp_ms` (its slot start, when the producer built it) for a block, the
//! signer's `timestamp_ms` for a transaction. It therefore includes the producer's build and
//! our validation, and it relies on synchronised clocks (NTP): a negative delay (our clock
//! behind the producer's) counts as zero. Items we made ourselves are not observed.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use playergold_protocol::partition::NetworkState;
use playergold_protocol::sync::{SyncProgress, SyncState};
use playergold_services::relay::MessageKind;
use playergold_services::{RelayServiceMetrics, SyncServiceMetrics};

/// Upper bounds of the propagation-delay buckets, in seconds: from a few milliseconds (a
/// transaction between two nodes on one host) to tens of seconds (a block crossing a
/// partition as it heals). Beyond the last, `+Inf`.
pub(crate) const PROPAGATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The labels of the reputation distribution, in the order of
/// `ReputationHandle::distribution()`'s buckets (scores are in `-100..=100`).
const REPUTATION_RANGES: [&str; 5] = ["[-100,-50]", "(-50,-10]", "(-10,10)", "[10,50)", "[50,100]"];

/// Chain state read at scrape time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChainGauges {
    /// Height of the best tip.
    pub(crate) height: u64,
    /// Transactions waiting in the mempool.
    pub(crate) mempool_transactions: usize,
}

/// What the relay, sync and reputation services report, read at scrape time. `None`: the
/// service did not answer, and its families are left out.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServiceSnapshot {
    /// The relay's counters.
    pub(crate) relay: Option<RelayServiceMetrics>,
    /// Sync's counters.
    pub(crate) sync: Option<SyncServiceMetrics>,
    /// Sync progress (state, height, target); always known (the handle holds it).
    pub(crate) progress: Option<SyncProgress>,
    /// The partition detector's verdict; always known (the handle holds it).
    pub(crate) network_state: Option<NetworkState>,
    /// Peers per reputation score range (see [`REPUTATION_RANGES`]).
    pub(crate) reputation: Option<[usize; 5]>,
    /// Bans in force.
    pub(crate) bans: Option<usize>,
    /// The local-overload guard: on now, and times the lag probe turned it on.
    pub(crate) overload: Option<(bool, u64)>,
}

/// The kind of item a propagation delay was measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ItemKind {
    /// A block.
    Block,
    /// A transaction.
    Tx,
}

impl prometheus_client::encoding::EncodeLabelSet for ItemKind {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        let kind = match self {
            ItemKind::Block => "block",
            ItemKind::Tx => "tx",
        };
        [("kind", kind)].encode(encoder)
    }
}

/// Every metric the node exports, all named `playergold_*`.
#[derive(Debug)]
pub(crate) struct NodeMetrics {
    registry: Registry,
    /// `playergold_chain_height`: height of the best tip.
    chain_height: Gauge,
    /// `playergold_mempool_transactions`: transactions waiting in the mempool.
    mempool_transactions: Gauge,
    /// `playergold_blocks_produced_total`: blocks this node produced and stored since it started.
    pub(crate) blocks_produced: Counter,
    /// `playergold_transactions_included_total`: transactions in the blocks this node produced
    /// since it started.
    pub(crate) transactions_included: Counter,
    /// `playergold_api_transactions_accepted_total`: transactions accepted into the mempool
    /// through `POST /api/v1/transactions`.
    pub(crate) api_transactions_accepted: Counter,
    /// `playergold_propagation_delay_seconds{kind="block"|"tx"}`: from an item's timestamp to
    /// when this node validated it, for items received from peers (see the module doc).
    pub(crate) propagation_delay: Family<ItemKind, Histogram>,
}

impl NodeMetrics {
    /// Creates and registers every metric.
    pub(crate) fn new() -> NodeMetrics {
        let mut registry = Registry::with_prefix("playergold");
        let chain_height = Gauge::default();
        let mempool_transactions = Gauge::default();
        let blocks_produced = Counter::default();
        let transactions_included = Counter::default();
        let api_transactions_accepted = Counter::default();
        let propagation_delay = Family::<ItemKind, Histogram>::new_with_constructor(
            (|| Histogram::new(PROPAGATION_BUCKETS)) as fn() -> Histogram,
        );
        registry.register(
            "chain_height",
            "Height of the best tip",
            chain_height.clone(),
        );
        registry.register(
            "mempool_transactions",
            "Transactions waiting in the mempool",
            mempool_transactions.clone(),
        );
        registry.register(
            "blocks_produced",
            "Blocks this node produced and stored since it started",
            blocks_produced.clone(),
        );
        registry.register(
            "transactions_included",
            "Transactions in the blocks this node produced since it started",
            transactions_included.clone(),
        );
        registry.register(
            "api_transactions_accepted",
            "Transactions accepted into the mempool through the HTTP API",
            api_transactions_accepted.clone(),
        );
        registry.register_with_unit(
            "propagation_delay",
            "From an item's own timestamp (block header, signed transaction) to when this node \
             validated it, for items received from peers",
            Unit::Seconds,
            propagation_delay.clone(),
        );
        // Both series from the start: an empty histogram reads as "nothing arrived yet", not
        // as a metric that does not exist.
        for kind in [ItemKind::Block, ItemKind::Tx] {
            drop(propagation_delay.get_or_create(&kind));
        }
        NodeMetrics {
            registry,
            chain_height,
            mempool_transactions,
            blocks_produced,
            transactions_included,
            api_transactions_accepted,
            propagation_delay,
        }
    }

    /// The registry, for subsystems (the network) to register their metrics under it before
    /// the node starts serving.
    pub(crate) fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Records a propagation delay of `millis` (negative: clock skew, counted as zero).
    pub(crate) fn observe_propagation(&self, kind: ItemKind, millis: i64) {
        self.propagation_delay
            .get_or_create(&kind)
            .observe(millis.max(0) as f64 / 1_000.0);
    }

    /// The OpenMetrics text exposition, with the chain gauges set to `chain` and the services'
    /// families from `services`.
    pub(crate) fn encode(&self, chain: ChainGauges, services: ServiceSnapshot) -> String {
        self.chain_height
            .set(i64::try_from(chain.height).unwrap_or(i64::MAX));
        self.mempool_transactions
            .set(i64::try_from(chain.mempool_transactions).unwrap_or(i64::MAX));
        // The snapshot lives for this one scrape: a throw-away registry encodes it under the
        // same prefix, between the long-lived registry and the end-of-file marker.
        let mut scrape = Registry::with_prefix("playergold");
        scrape.register_collector(Box::new(services));
        let mut out = String::new();
        // Writing to a String cannot fail.
        text::encode_registry(&mut out, &self.registry)
            .and_then(|()| text::encode_registry(&mut out, &scrape))
            .and_then(|()| text::encode_eof(&mut out))
            .expect("writing to a String cannot fail");
        out
    }

    /// Bytes received and sent over every transport since the network started (libp2p's
    /// bandwidth counters, summed over transports), for the status line.
    pub(crate) fn transport_bytes(&self) -> (u64, u64) {
        let mut out = String::new();
        text::encode_registry(&mut out, &self.registry).expect("writing to a String cannot fail");
        transport_bytes(&out)
    }
}

/// Sums `*bandwidth_bytes_total` samples by direction in an exposition: `(inbound, outbound)`.
fn transport_bytes(exposition: &str) -> (u64, u64) {
    let mut totals = (0, 0);
    for line in exposition.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some((name, labels)) = series.split_once('{') else {
            continue;
        };
        if !name.ends_with("bandwidth_bytes_total") {
            continue;
        }
        let Ok(value) = value.parse::<u64>() else {
            continue;
        };
        if labels.contains("direction=\"Inbound\"") {
            totals.0 += value;
        } else if labels.contains("direction=\"Outbound\"") {
            totals.1 += value;
        }
    }
    totals
}

/// One constant sample of a family: its labels and value.
type Sample<'a, V> = (Vec<(&'static str, &'a str)>, V);

/// Encodes a family of constant counters (`unit` appended to the name before `_total`).
fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: &[Sample<'_, u64>],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
    if let [(labels, value)] = samples
        && labels.is_empty()
    {
        return ConstCounter::new(*value).encode(metric);
    }
    for (labels, value) in samples {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// Encodes a family of constant gauges.
fn gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[Sample<'_, i64>],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    if let [(labels, value)] = samples
        && labels.is_empty()
    {
        return ConstGauge::new(*value).encode(metric);
    }
    for (labels, value) in samples {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge_of(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Collector for ServiceSnapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        if let Some(relay) = &self.relay {
            encode_relay(e, relay)?;
        }
        if let Some(sync) = &self.sync {
            encode_sync(e, sync)?;
        }
        if let Some(progress) = &self.progress {
            gauges(
                e,
                "sync_height",
                "Height of our best block as sync sees it",
                &[(vec![], i64::try_from(progress.height.0).unwrap_or(i64::MAX))],
            )?;
            gauges(
                e,
                "sync_target_height",
                "Height sync works toward: the best height a peer claims (ours when not syncing)",
                &[(
                    vec![],
                    i64::try_from(progress.target_height.0).unwrap_or(i64::MAX),
                )],
            )?;
            let states = [
                SyncState::Idle,
                SyncState::Headers,
                SyncState::Blocks,
                SyncState::Synced,
            ];
            gauges(
                e,
                "sync_state",
                "Sync state: 1 for the current one (idle, headers, blocks, synced), 0 for the others",
                &states.map(|s| (vec![("state", s.as_str())], i64::from(s == progress.state))),
            )?;
        }
        if let Some(network) = self.network_state {
            let states = [
                NetworkState::Healthy,
                NetworkState::Degraded,
                NetworkState::Partitioned,
            ];
            gauges(
                e,
                "network_state",
                "Partition detector's verdict: 1 for the current state (healthy, degraded, \
                 partitioned), 0 for the others",
                &states.map(|s| (vec![("state", s.as_str())], i64::from(s == network))),
            )?;
        }
        if let Some(distribution) = &self.reputation {
            let samples: Vec<Sample<'_, i64>> = REPUTATION_RANGES
                .iter()
                .zip(distribution)
                .map(|(range, n)| (vec![("score", *range)], gauge_of(*n)))
                .collect();
            gauges(
                e,
                "reputation_peers",
                "Peers the reputation table knows, per score range (scores are in -100..=100)",
                &samples,
            )?;
        }
        if let Some(bans) = self.bans {
            gauges(e, "bans", "Peer bans in force", &[(vec![], gauge_of(bans))])?;
        }
        if let Some((on, episodes)) = self.overload {
            gauges(
                e,
                "local_overload",
                "1 while this node's event loop runs late and peers are not blamed for slowness",
                &[(vec![], i64::from(on))],
            )?;
            counters(
                e,
                "local_overload_episodes",
                "Times the lag probe found this node overloaded",
                None,
                &[(vec![], episodes)],
            )?;
        }
        Ok(())
    }
}

fn encode_relay(
    e: &mut DescriptorEncoder,
    relay: &RelayServiceMetrics,
) -> Result<(), std::fmt::Error> {
    let per_kind = |f: fn(u64, u64) -> u64| -> Vec<Sample<'static, u64>> {
        [("in", &relay.received), ("out", &relay.sent)]
            .into_iter()
            .flat_map(|(direction, wire)| {
                MessageKind::ALL.map(|kind| {
                    let c = wire.get(kind);
                    (
                        vec![("direction", direction), ("kind", kind.name())],
                        f(c.messages, c.bytes),
                    )
                })
            })
            .collect()
    };
    counters(
        e,
        "relay_messages",
        "Relay protocol frames received (decoded) and sent, per message kind",
        None,
        &per_kind(|messages, _| messages),
    )?;
    // The unit is appended to the name: `relay_bytes_total`.
    counters(
        e,
        "relay",
        "Relay protocol bytes received and sent (varint frame header included), per message kind",
        Some(&Unit::Bytes),
        &per_kind(|_, bytes| bytes),
    )?;
    let items = [("tx", relay.engine.tx), ("block", relay.engine.block)];
    counters(
        e,
        "relay_duplicates",
        "Items (transactions, blocks) received from peers that this node already had",
        None,
        &items.map(|(kind, c)| (vec![("kind", kind)], c.duplicates)),
    )?;
    counters(
        e,
        "relay_items_received",
        "New valid items (transactions, blocks) received from peers",
        None,
        &items.map(|(kind, c)| (vec![("kind", kind)], c.received)),
    )?;
    counters(
        e,
        "relay_items_sent",
        "Items (transactions, blocks) sent in full to peers",
        None,
        &items.map(|(kind, c)| (vec![("kind", kind)], c.sent)),
    )?;
    counters(
        e,
        "relay_compact_blocks",
        "Compact blocks received, by outcome: rebuilt from the mempool, completed with \
         requested transactions, or fallen back to a full block",
        None,
        &[
            (vec![("outcome", "rebuilt")], relay.engine.compact_rebuilt),
            (vec![("outcome", "partial")], relay.engine.compact_partial),
            (vec![("outcome", "fallback")], relay.engine.compact_fallback),
        ],
    )?;
    counters(
        e,
        "relay_retries",
        "Item requests retried from another announcer",
        None,
        &[(vec![], relay.engine.retries)],
    )?;
    counters(
        e,
        "relay_slow_peers",
        "Peers dropped by the relay for not taking their data in time",
        None,
        &[(vec![], relay.engine.slow_peers)],
    )?;
    counters(
        e,
        "relay_malformed_frames",
        "Relay frames that did not decode or exceeded the size limit (each cost the peer its \
         connection)",
        None,
        &[(vec![], relay.malformed_frames)],
    )?;
    gauges(
        e,
        "relay_peers",
        "Peers with relay streams open",
        &[(vec![], gauge_of(relay.peers))],
    )?;
    gauges(
        e,
        "relay_queued_bytes",
        "Bytes queued in the relay toward all peers",
        &[(vec![], gauge_of(relay.queued_bytes))],
    )
}

fn encode_sync(
    e: &mut DescriptorEncoder,
    sync: &SyncServiceMetrics,
) -> Result<(), std::fmt::Error> {
    counters(
        e,
        "sync_requests",
        "Sync protocol requests received (in) and sent (out, handshakes included)",
        None,
        &[
            (vec![("direction", "in")], sync.inbound_requests),
            (vec![("direction", "out")], sync.requests_sent),
        ],
    )?;
    counters(
        e,
        "sync",
        "Sync protocol bytes received and sent (requests and replies, framing included)",
        Some(&Unit::Bytes),
        &[
            (vec![("direction", "in")], sync.bytes_in),
            (vec![("direction", "out")], sync.bytes_out),
        ],
    )?;
    counters(
        e,
        "sync_request_failures",
        "Sync requests sent that got no usable reply",
        None,
        &[(vec![], sync.request_failures)],
    )?;
    counters(
        e,
        "sync_blocks_imported",
        "Blocks stored by sync imports",
        None,
        &[(vec![], sync.blocks_imported)],
    )?;
    counters(
        e,
        "sync_blocks_refused",
        "Downloaded blocks the chain refused through the sender's fault",
        None,
        &[(vec![], sync.blocks_refused)],
    )?;
    counters(
        e,
        "sync_stalls",
        "Sync requests that timed out or failed (the peer stalled)",
        None,
        &[(vec![], sync.scheduler.stalls)],
    )?;
    gauges(
        e,
        "sync_in_flight",
        "Sync requests in flight",
        &[(vec![], gauge_of(sync.in_flight))],
    )
}

#[cfg(test)]
mod tests {
    use playergold_primitives::Height;

    use super::*;

    fn value(text: &str, series: &str) -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} missing in:\n{text}"))
            .to_string()
    }

    #[test]
    fn the_exposition_names_every_metric_with_current_values() {
        let metrics = NodeMetrics::new();
        metrics.blocks_produced.inc();
        metrics.transactions_included.inc_by(7);
        let text = metrics.encode(
            ChainGauges {
                height: 42,
                mempool_transactions: 3,
            },
            ServiceSnapshot::default(),
        );
        for line in [
            "playergold_chain_height 42",
            "playergold_mempool_transactions 3",
            "playergold_blocks_produced_total 1",
            "playergold_transactions_included_total 7",
            "playergold_api_transactions_accepted_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1);
        // Without a snapshot no service family is reported (not even as zeros).
        assert!(!text.contains("playergold_relay_"), "{text}");
    }

    #[test]
    fn service_snapshots_are_exported_per_protocol_kind_and_state() {
        let metrics = NodeMetrics::new();
        // Wire counters only count inside the services crate: they are zero here, and the
        // engine's counters carry the values.
        let mut relay = RelayServiceMetrics {
            peers: 4,
            malformed_frames: 1,
            ..RelayServiceMetrics::default()
        };
        relay.engine.block.duplicates = 5;
        relay.engine.tx.received = 9;
        let sync = SyncServiceMetrics {
            bytes_in: 1_000,
            bytes_out: 200,
            requests_sent: 3,
            ..SyncServiceMetrics::default()
        };
        let progress = SyncProgress {
            state: SyncState::Blocks,
            target_height: Height(120),
            height: Height(100),
            imported: 100,
            blocks_per_sec: 10.0,
            eta_secs: Some(2.0),
        };
        let text = metrics.encode(
            ChainGauges {
                height: 100,
                mempool_transactions: 0,
            },
            ServiceSnapshot {
                relay: Some(relay),
                sync: Some(sync),
                progress: Some(progress),
                network_state: Some(NetworkState::Degraded),
                reputation: Some([0, 1, 2, 3, 4]),
                bans: Some(2),
                overload: Some((true, 3)),
            },
        );
        for (series, want) in [
            (
                "playergold_relay_messages_total{direction=\"in\",kind=\"compact_block\"}",
                "0",
            ),
            (
                "playergold_relay_bytes_total{direction=\"out\",kind=\"transactions\"}",
                "0",
            ),
            ("playergold_relay_duplicates_total{kind=\"block\"}", "5"),
            ("playergold_relay_items_received_total{kind=\"tx\"}", "9"),
            ("playergold_relay_malformed_frames_total", "1"),
            ("playergold_relay_peers", "4"),
            ("playergold_sync_bytes_total{direction=\"in\"}", "1000"),
            ("playergold_sync_bytes_total{direction=\"out\"}", "200"),
            ("playergold_sync_requests_total{direction=\"out\"}", "3"),
            ("playergold_sync_height", "100"),
            ("playergold_sync_target_height", "120"),
            ("playergold_sync_state{state=\"blocks\"}", "1"),
            ("playergold_sync_state{state=\"synced\"}", "0"),
            ("playergold_network_state{state=\"degraded\"}", "1"),
            ("playergold_network_state{state=\"healthy\"}", "0"),
            ("playergold_reputation_peers{score=\"[-100,-50]\"}", "0"),
            ("playergold_reputation_peers{score=\"[50,100]\"}", "4"),
            ("playergold_bans", "2"),
            ("playergold_local_overload", "1"),
            ("playergold_local_overload_episodes_total", "3"),
        ] {
            assert_eq!(value(&text, series), want, "{series}");
        }
        // Every relay message kind, both ways.
        for kind in MessageKind::ALL {
            for direction in ["in", "out"] {
                value(
                    &text,
                    &format!(
                        "playergold_relay_messages_total{{direction=\"{direction}\",kind=\"{}\"}}",
                        kind.name()
                    ),
                );
            }
        }
        // Every family is documented.
        for family in [
            "relay_messages",
            "relay_bytes",
            "relay_duplicates",
            "sync_bytes",
            "sync_state",
            "network_state",
            "reputation_peers",
            "bans",
            "local_overload",
        ] {
            assert!(
                text.contains(&format!("# HELP playergold_{family}")),
                "{family} has no help:\n{text}"
            );
        }
    }

    #[test]
    fn propagation_delays_fill_the_histogram_in_seconds() {
        let metrics = NodeMetrics::new();
        metrics.observe_propagation(ItemKind::Block, 40);
        metrics.observe_propagation(ItemKind::Block, 700);
        // Clock skew: counted as zero, never as a negative delay.
        metrics.observe_propagation(ItemKind::Tx, -30);
        let text = metrics.encode(
            ChainGauges {
                height: 0,
                mempool_transactions: 0,
            },
            ServiceSnapshot::default(),
        );
        let bucket = |kind: &str, le: &str| {
            value(
                &text,
                &format!(
                    "playergold_propagation_delay_seconds_bucket{{le=\"{le}\",kind=\"{kind}\"}}"
                ),
            )
        };
        assert_eq!(bucket("block", "0.025"), "0");
        assert_eq!(bucket("block", "0.05"), "1");
        assert_eq!(bucket("block", "1.0"), "2");
        assert_eq!(bucket("tx", "0.005"), "1");
        assert_eq!(
            value(
                &text,
                "playergold_propagation_delay_seconds_count{kind=\"block\"}"
            ),
            "2"
        );
        assert_eq!(
            value(
                &text,
                "playergold_propagation_delay_seconds_sum{kind=\"block\"}"
            ),
            "0.74"
        );
    }

    #[test]
    fn transport_bytes_sum_every_transport_by_direction() {
        let exposition = "\
# TYPE playergold_net_libp2p_bandwidth_bytes counter
playergold_net_libp2p_bandwidth_bytes_total{protocols=\"/ip4/tcp\",direction=\"Inbound\"} 100
playergold_net_libp2p_bandwidth_bytes_total{protocols=\"/ip4/udp/quic-v1\",direction=\"Inbound\"} 20
playergold_net_libp2p_bandwidth_bytes_total{protocols=\"/ip4/tcp\",direction=\"Outbound\"} 7
playergold_relay_bytes_total{direction=\"in\",kind=\"block\"} 99
# EOF
";
        assert_eq!(transport_bytes(exposition), (120, 7));
        assert_eq!(NodeMetrics::new().transport_bytes(), (0, 0));
    }
}
