//! The devnet-load report: what a test asserts on, the JSON written, the table printed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::prom;

/// Nodes named on the table's line of nodes short of transactions (the JSON has them all).
const MAX_NODES_LISTED: usize = 10;

/// What the bench was doing when a sample was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Waiting for the nodes to connect, before any load.
    Warmup,
    /// Submitting transactions (or, at `--tps 0`, only watching).
    Load,
    /// After the load, waiting for the last transactions to be included.
    Drain,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Warmup => "warmup",
            Phase::Load => "load",
            Phase::Drain => "drain",
        }
    }
}

/// Every node, seen at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since every node served its API.
    pub t_s: f64,
    /// What the bench was doing.
    pub phase: Phase,
    /// Nodes whose `/api/v1/status` answered.
    pub nodes_answering: usize,
    /// Fewest peers of a node (over the nodes that answered).
    pub peers_min: usize,
    /// Median peers per node (over the nodes that answered).
    pub peers_median: f64,
    /// Nodes below the devnet's `min_peers` (min(8, N−1)), those that did not answer included.
    pub nodes_below_min_peers: usize,
    /// Bans in force, summed over the nodes (`GET /api/v1/bans`).
    pub bans_in_force: usize,
    /// Nodes whose partition detector does not say `healthy`.
    pub nodes_not_healthy: usize,
    /// Lowest best height.
    pub height_min: u64,
    /// Highest best height.
    pub height_max: u64,
    /// Largest mempool.
    pub mempool_max: usize,
    /// CPU cores the nodes used together since the previous sample (CPU seconds / wall
    /// seconds).
    pub cpu_cores: f64,
    /// Median resident memory of a node, MiB.
    pub rss_median_mib: f64,
    /// Largest resident memory of a node, MiB.
    pub rss_max_mib: f64,
}

/// One node at the end of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSummary {
    /// Its index in the devnet.
    pub index: usize,
    /// Its PeerId.
    pub peer_id: String,
    /// Its log file.
    pub log: String,
    /// Submitted transactions in its best chain (`None`: it did not answer).
    pub included: Option<u64>,
    /// Its best height at the end (`None`: it did not answer).
    pub final_height: Option<u64>,
    /// Its peers at the end (`None`: it did not answer).
    pub final_peers: Option<usize>,
    /// CPU seconds it used during the load.
    pub cpu_seconds: f64,
    /// Its resident memory at the end of the load, MiB.
    pub rss_mib: f64,
}

/// The whole run, in plain numbers. Rates per transaction are `None` when no transaction was
/// sent (`--tps 0`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Nodes in the devnet.
    pub nodes: usize,
    /// Transactions per second asked for.
    pub tps: u32,
    /// Length of the load, seconds.
    pub seconds: f64,
    /// Slot duration, ms.
    pub slot_ms: u64,
    /// The peer count every node should keep: the devnet's `min_peers`, min(8, N−1).
    pub min_peers: usize,
    /// CPUs of this machine (the nodes and the bench share them).
    pub cpus: usize,
    /// The `playergold` binary run.
    pub playergold: String,
    /// The devnet's directory, when it is kept (`--dir`); a temporary one is removed.
    pub dir: Option<String>,

    /// How long the warm-up took, seconds.
    pub warmup_seconds: f64,
    /// Whether every node had `min_peers` peers (and the heights agreed within one) when the
    /// warm-up ended; `false`: it ran into its bound.
    pub warmup_mesh_formed: bool,
    /// Every node every `--sample-seconds`, warm-up, load and drain.
    pub samples: Vec<Sample>,
    /// Most bans in force at one sample, summed over the nodes.
    pub max_bans_in_force: usize,
    /// Distinct peers seen banned by some node at some sample.
    pub banned_peers: usize,
    /// Samples after the warm-up with a node below `min_peers` (or not answering).
    pub samples_below_min_peers: usize,

    /// Transactions sent.
    pub submitted: u64,
    /// Transactions planned but not sent: the nodes answered too slowly to keep the rate.
    pub unsent: u64,
    /// Transactions the nodes accepted.
    pub accepted: u64,
    /// Transactions the nodes refused with an error status.
    pub refused: u64,
    /// Refusals per API error code (`mempool_full`, ...).
    pub refused_by_error: BTreeMap<String, u64>,
    /// Submissions that got no answer (connection, timeout).
    pub failed: u64,
    /// The first errors met submitting (at most two), for a person.
    pub first_errors: Vec<String>,
    /// Transactions sent per second of load, as reached.
    pub submit_rate: f64,
    /// Submitted transactions in the best chain of the node that has fewest.
    pub included_min: u64,
    /// Median over nodes of submitted transactions in their best chain.
    pub included_median: f64,
    /// Submitted transactions in the best chain of the node that has most.
    pub included_max: u64,
    /// `included_min` as % of `submitted`.
    pub included_min_pct: Option<f64>,
    /// `included_median` as % of `submitted`.
    pub included_median_pct: Option<f64>,
    /// `included_max` as % of `submitted`.
    pub included_max_pct: Option<f64>,
    /// Submitted transactions in at least one node's best chain.
    pub included_on_any_node: u64,
    /// Nodes that did not answer the inclusion check (counted as including nothing).
    pub inclusion_unanswered_nodes: usize,
    /// Distinct blocks made during the run, over all nodes' best chains.
    pub inclusion_blocks: usize,
    /// API requests the inclusion check made.
    pub inclusion_requests: usize,

    /// How long the drain took, seconds.
    pub drain_seconds: f64,
    /// Nodes whose status answered at the end.
    pub final_nodes_answering: usize,
    /// Lowest best height at the end.
    pub final_height_min: u64,
    /// Highest best height at the end.
    pub final_height_max: u64,
    /// `final_height_max − final_height_min`.
    pub final_heights_spread: u64,
    /// Whether every node answered with the same best hash at the end.
    pub final_best_hashes_agree: bool,

    /// Median delay for a transaction to reach a node (the nodes' own histogram
    /// `playergold_propagation_delay_seconds{kind="tx"}`, merged over nodes, during the load),
    /// ms.
    pub tx_propagation_p50_ms: Option<f64>,
    /// 99th percentile of the same, ms.
    pub tx_propagation_p99_ms: Option<f64>,
    /// Observations behind the transaction percentiles.
    pub tx_propagation_observations: u64,
    /// Median delay for a block to reach a node (`kind="block"`), ms.
    pub block_propagation_p50_ms: Option<f64>,
    /// 99th percentile of the same, ms.
    pub block_propagation_p99_ms: Option<f64>,
    /// Observations behind the block percentiles.
    pub block_propagation_observations: u64,
    /// Nodes whose `/metrics` answered at both ends of the load (the byte and delay figures
    /// cover these).
    pub metrics_nodes: usize,

    /// Wall time between the CPU readings at both ends of the load, seconds.
    pub load_wall_seconds: f64,
    /// CPU seconds the nodes used during the load, together.
    pub cpu_seconds_nodes: f64,
    /// `cpu_seconds_nodes / (submitted × nodes) × 1e6`: CPU per transaction per node, µs.
    pub cpu_us_per_tx_per_node: Option<f64>,
    /// CPU cores the nodes used together during the load.
    pub cpu_cores_nodes: f64,
    /// CPU cores the bench itself used during the load (it shares the machine).
    pub cpu_cores_bench: f64,
    /// Clock ticks per second of `/proc`'s CPU times.
    pub clock_ticks_per_sec: u64,
    /// Whether `clock_ticks_per_sec` was assumed (100) because `getconf CLK_TCK` failed.
    pub clock_ticks_assumed: bool,
    /// Median resident memory of a node at the end of the load, MiB.
    pub rss_median_mib: f64,
    /// Largest resident memory of a node at the end of the load, MiB.
    pub rss_max_mib: f64,
    /// Relay bytes sent during the load, all nodes (`playergold_relay_bytes_total`,
    /// `direction="out"`).
    pub relay_bytes_out: u64,
    /// The same per relay message kind.
    pub relay_bytes_out_by_kind: BTreeMap<String, u64>,
    /// `relay_bytes_out / (submitted × nodes)`.
    pub relay_bytes_per_tx_per_node: Option<f64>,
    /// All bytes sent during the load over every transport (libp2p's bandwidth counters:
    /// relay, sync, identify, ping, DHT, TLS and yamux framing).
    pub transport_bytes_out: u64,
    /// `transport_bytes_out / (submitted × nodes)`.
    pub transport_bytes_per_tx_per_node: Option<f64>,
    /// Peers the relays dropped for not taking their data in time, during the load.
    pub relay_slow_peers: u64,
    /// Relay frames that did not decode, during the load (each cost a peer its connection).
    pub relay_malformed_frames: u64,
    /// Connections the nodes established during the load, summed over nodes (libp2p's
    /// `connections_established`; both ends count one): in a settled mesh, reconnections.
    pub connections_established: u64,
    /// Each node, in index order.
    pub per_node: Vec<NodeSummary>,
}

impl Report {
    /// The samples taken after the warm-up.
    pub fn samples_after_warmup(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(|s| s.phase != Phase::Warmup)
    }

    /// The printed table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "devnet-load: {} nodes, {} tx/s for {:.0} s, {} ms slots, min peers {}, {} CPUs; \
             warm-up {:.1} s ({})",
            self.nodes,
            self.tps,
            self.seconds,
            self.slot_ms,
            self.min_peers,
            self.cpus,
            self.warmup_seconds,
            if self.warmup_mesh_formed {
                "mesh formed"
            } else {
                "bound reached before the mesh formed"
            }
        );
        let _ = writeln!(
            out,
            "{:>7} {:<7}{:>6}{:>8}{:>7}{:>6}{:>9}{:>16}{:>9}{:>7}{:>17}",
            "t s",
            "phase",
            "peers",
            "median",
            "below",
            "bans",
            "!healthy",
            "height min-max",
            "mempool",
            "cores",
            "rss MiB med/max"
        );
        for s in &self.samples {
            let _ = writeln!(
                out,
                "{:>7.1} {:<7}{:>6}{:>8.1}{:>7}{:>6}{:>9}{:>16}{:>9}{:>7.2}{:>17}",
                s.t_s,
                s.phase.name(),
                s.peers_min,
                s.peers_median,
                s.nodes_below_min_peers,
                s.bans_in_force,
                s.nodes_not_healthy,
                format!("{}-{}", s.height_min, s.height_max),
                s.mempool_max,
                s.cpu_cores,
                format!("{:.1}/{:.1}", s.rss_median_mib, s.rss_max_mib),
            );
        }
        let pct = |p: Option<f64>| p.map_or_else(|| "-".into(), |p| format!("{p:.1}%"));
        let ms = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.1} ms"));
        let per_tx =
            |v: Option<f64>, unit: &str| v.map_or_else(|| "-".into(), |v| format!("{v:.1} {unit}"));
        let _ = writeln!(
            out,
            "bans         most in force at a sample {}, distinct peers banned {}; samples after \
             warm-up with a node below min peers: {}; connections established during the load \
             {}",
            self.max_bans_in_force,
            self.banned_peers,
            self.samples_below_min_peers,
            self.connections_established
        );
        let refused: Vec<String> = self
            .refused_by_error
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "transactions submitted {} ({:.1}/s), accepted {}, refused {}{}, failed {}, unsent {}",
            self.submitted,
            self.submit_rate,
            self.accepted,
            self.refused,
            if refused.is_empty() {
                String::new()
            } else {
                format!(" ({})", refused.join(", "))
            },
            self.failed,
            self.unsent
        );
        for e in &self.first_errors {
            let _ = writeln!(out, "             e.g. {e}");
        }
        let _ = writeln!(
            out,
            "included     per node min {} ({}), median {:.0} ({}), max {} ({}); on any node {}; \
             {} blocks, {} requests{}",
            self.included_min,
            pct(self.included_min_pct),
            self.included_median,
            pct(self.included_median_pct),
            self.included_max,
            pct(self.included_max_pct),
            self.included_on_any_node,
            self.inclusion_blocks,
            self.inclusion_requests,
            if self.inclusion_unanswered_nodes > 0 {
                format!(", {} nodes did not answer", self.inclusion_unanswered_nodes)
            } else {
                String::new()
            }
        );
        let short: Vec<String> = self
            .per_node
            .iter()
            .filter(|n| n.included.is_none_or(|c| c < self.submitted))
            .take(MAX_NODES_LISTED)
            .map(|n| {
                let count = n
                    .included
                    .map_or_else(|| "no answer".into(), |c| c.to_string());
                format!("node-{} {count}", n.index)
            })
            .collect();
        if !short.is_empty() {
            let _ = writeln!(out, "             short: {}", short.join(", "));
        }
        let _ = writeln!(
            out,
            "end          after {:.1} s of drain: heights {}-{} (spread {}), best hashes {}, {} of \
             {} nodes answering",
            self.drain_seconds,
            self.final_height_min,
            self.final_height_max,
            self.final_heights_spread,
            if self.final_best_hashes_agree {
                "agree"
            } else {
                "DIFFER"
            },
            self.final_nodes_answering,
            self.nodes
        );
        let _ = writeln!(
            out,
            "propagation  tx p50 {} p99 {} ({} obs.); block p50 {} p99 {} ({} obs.); {} nodes",
            ms(self.tx_propagation_p50_ms),
            ms(self.tx_propagation_p99_ms),
            self.tx_propagation_observations,
            ms(self.block_propagation_p50_ms),
            ms(self.block_propagation_p99_ms),
            self.block_propagation_observations,
            self.metrics_nodes
        );
        let _ = writeln!(
            out,
            "cpu          {} per tx per node; nodes {:.2} cores, bench {:.2} cores, over {:.1} s \
             (CLK_TCK {}{})",
            per_tx(self.cpu_us_per_tx_per_node, "µs"),
            self.cpu_cores_nodes,
            self.cpu_cores_bench,
            self.load_wall_seconds,
            self.clock_ticks_per_sec,
            if self.clock_ticks_assumed {
                ", assumed"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "memory       rss per node median {:.1} MiB, max {:.1} MiB",
            self.rss_median_mib, self.rss_max_mib
        );
        let kinds: Vec<String> = self
            .relay_bytes_out_by_kind
            .iter()
            .filter(|(_, b)| **b > 0)
            .map(|(kind, b)| format!("{kind} {b}"))
            .collect();
        let _ = writeln!(
            out,
            "relay        {} out per tx per node ({} bytes: {}); all transports {} per tx per \
             node; slow peers dropped {}, malformed frames {}",
            per_tx(self.relay_bytes_per_tx_per_node, "B"),
            self.relay_bytes_out,
            kinds.join(", "),
            per_tx(self.transport_bytes_per_tx_per_node, "B"),
            self.relay_slow_peers,
            self.relay_malformed_frames
        );
        out
    }
}

/// The median of `values` (the mean of the middle two for an even count); 0 for none.
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The nodes' counters and histograms, from `/metrics` at both ends of the load.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct MetricsDelta {
    /// Nodes scraped at both ends.
    pub(crate) nodes: usize,
    /// Relay bytes sent, per message kind.
    pub(crate) relay_out_by_kind: BTreeMap<String, u64>,
    /// Bytes sent over every transport.
    pub(crate) transport_out: u64,
    /// Peers dropped as slow.
    pub(crate) slow_peers: u64,
    /// Malformed relay frames.
    pub(crate) malformed_frames: u64,
    /// Connections established (either way): in a settled mesh, each one is a reconnection.
    pub(crate) connections_established: u64,
    /// Cumulative propagation-delay buckets `(le seconds, count)` of transactions, merged.
    pub(crate) tx_delay: Vec<(f64, f64)>,
    /// The same for blocks.
    pub(crate) block_delay: Vec<(f64, f64)>,
}

/// The node's propagation-delay histogram (`crates/node/src/metrics.rs`).
const DELAY_HISTOGRAM: &str = "playergold_propagation_delay_seconds";

impl MetricsDelta {
    /// End minus start, summed over the nodes scraped at both ends.
    pub(crate) fn between(start: &[Option<String>], end: &[Option<String>]) -> MetricsDelta {
        let mut out = MetricsDelta::default();
        for (a, b) in start.iter().zip(end) {
            let (Some(a), Some(b)) = (a, b) else {
                continue;
            };
            out.nodes += 1;
            for (kind, bytes) in relay_out_by_kind(b) {
                let before = relay_out_by_kind(a).get(&kind).copied().unwrap_or_default();
                *out.relay_out_by_kind.entry(kind).or_default() += bytes.saturating_sub(before);
            }
            let diff = |name: &str, labels: &[(&str, &str)]| {
                let d = prom::sum_text(b, name, labels) - prom::sum_text(a, name, labels);
                d.max(0.0) as u64
            };
            out.transport_out += diff(
                "playergold_net_libp2p_bandwidth_bytes_total",
                &[("direction", "Outbound")],
            );
            out.slow_peers += diff("playergold_relay_slow_peers_total", &[]);
            out.malformed_frames += diff("playergold_relay_malformed_frames_total", &[]);
            out.connections_established += diff(
                "playergold_net_libp2p_swarm_connections_established_total",
                &[],
            );
            merge_delta(&mut out.tx_delay, a, b, "tx");
            merge_delta(&mut out.block_delay, a, b, "block");
        }
        out
    }

    /// Relay bytes sent, all kinds.
    pub(crate) fn relay_out(&self) -> u64 {
        self.relay_out_by_kind.values().sum()
    }
}

/// `playergold_relay_bytes_total{direction="out"}` per `kind` label.
fn relay_out_by_kind(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (labels, value) in prom::samples(text, "playergold_relay_bytes_total") {
        let label = |k: &str| labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if label("direction") == Some("out")
            && let Some(kind) = label("kind")
        {
            *out.entry(kind.to_string()).or_default() += value as u64;
        }
    }
    out
}

/// Adds one node's delay buckets of `kind`, at the end minus at the start, into `merged`.
fn merge_delta(merged: &mut Vec<(f64, f64)>, start: &str, end: &str, kind: &str) {
    let before = prom::histogram_buckets(start, DELAY_HISTOGRAM, &[("kind", kind)]);
    for (le, count) in prom::histogram_buckets(end, DELAY_HISTOGRAM, &[("kind", kind)]) {
        let was = before
            .iter()
            .find(|(b, _)| *b == le)
            .map_or(0.0, |(_, c)| *c);
        let delta = (count - was).max(0.0);
        match merged.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += delta,
            None => merged.push((le, delta)),
        }
    }
    merged.sort_by(|a, b| a.0.total_cmp(&b.0));
}

/// The `q`-quantile of merged delay buckets, in ms (`None`: no observation).
pub(crate) fn delay_quantile_ms(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    prom::histogram_quantile(q, buckets).map(|s| s * 1_000.0)
}

/// Observations in merged cumulative buckets (the `+Inf` bucket's count).
pub(crate) fn observations(buckets: &[(f64, f64)]) -> u64 {
    buckets.last().map_or(0, |(_, c)| *c as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(relay_out: u64, tx_fast: u64, tx_all: u64) -> String {
        format!(
            "playergold_relay_bytes_total{{direction=\"out\",kind=\"transactions\"}} {relay_out}\n\
             playergold_relay_bytes_total{{direction=\"in\",kind=\"transactions\"}} 999\n\
             playergold_relay_bytes_total{{direction=\"out\",kind=\"announce\"}} 10\n\
             playergold_net_libp2p_bandwidth_bytes_total{{protocols=\"/ip4/tcp\",direction=\"Outbound\"}} {}\n\
             playergold_propagation_delay_seconds_bucket{{le=\"0.05\",kind=\"tx\"}} {tx_fast}\n\
             playergold_propagation_delay_seconds_bucket{{le=\"+Inf\",kind=\"tx\"}} {tx_all}\n\
             playergold_propagation_delay_seconds_bucket{{le=\"+Inf\",kind=\"block\"}} 0\n\
             # EOF\n",
            relay_out * 2
        )
    }

    #[test]
    fn metric_deltas_are_summed_over_nodes_scraped_at_both_ends() {
        let start = vec![Some(scrape(100, 1, 1)), Some(scrape(0, 0, 0)), None];
        let end = vec![
            Some(scrape(300, 11, 12)),
            Some(scrape(50, 5, 5)),
            Some(scrape(7_000, 0, 0)),
        ];
        let d = MetricsDelta::between(&start, &end);
        assert_eq!(d.nodes, 2);
        assert_eq!(d.relay_out_by_kind.get("transactions"), Some(&250));
        assert_eq!(d.relay_out_by_kind.get("announce"), Some(&0));
        assert_eq!(d.relay_out(), 250);
        assert_eq!(d.transport_out, 500);
        assert_eq!(d.tx_delay, vec![(0.05, 15.0), (f64::INFINITY, 16.0)]);
        assert_eq!(observations(&d.tx_delay), 16);
        assert_eq!(observations(&d.block_delay), 0);
        assert_eq!(delay_quantile_ms(&d.block_delay, 0.5), None);
        let p50 = delay_quantile_ms(&d.tx_delay, 0.5).unwrap_or_default();
        assert!((p50 - 26.666).abs() < 0.01, "{p50}");
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
