//! The propagation report: JSON (`{"ours": {...}, "gossipsub": {...}, ...}`), the printed
//! table, and the goals checked against it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::KindReport;

/// The run's parameters, echoed in the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunConfig {
    /// Nodes per system.
    pub nodes: usize,
    /// Overlay links.
    pub links: usize,
    /// Mean links per node.
    pub mean_degree: f64,
    /// Regions of the RTT matrix.
    pub regions: usize,
    /// Workload length, seconds.
    pub seconds: f64,
    /// Transactions per second.
    pub tx_rate: f64,
    /// Interval between blocks, ms.
    pub block_interval_ms: u64,
    /// Most transactions per block.
    pub max_block_txs: usize,
    /// Transactions preloaded into every mempool.
    pub backlog: usize,
    /// RNG seed (overlay, regions, workload).
    pub seed: u64,
    /// Our relay's transaction push fanout (`PropagationConfig::gossip_factor`).
    pub tx_fanout: String,
    /// Our relay's announcement yield (`PropagationConfig::announce_yield`), ms.
    pub announce_yield_ms: u64,
    /// Whether gossipsub's nodes did a node's work with what they were delivered (mempool,
    /// import), as ours do ([`crate::chains::NodeWork`]).
    pub gossip_node_work: bool,
    /// CPUs this process may use.
    pub cpus: usize,
    /// The machine's 1-minute load average when the run started and when it ended: above the
    /// CPU count, other processes competed with the nodes for CPU and latencies include it.
    pub load_average: (f64, f64),
}

/// One system's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SystemReport {
    /// Transactions.
    pub tx: KindReport,
    /// Blocks, each counted at a node when it has the whole block (ours: rebuilt, or received
    /// in full, under a valid header; gossipsub: the message delivered).
    pub block: KindReport,
    /// Blocks counted when imported (body checked, committed) instead (our system only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_imported: Option<KindReport>,
    /// Compact block bytes / full block bytes (our system only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compact_block_ratio: Option<f64>,
    /// Every byte written to streams during the workload, all protocols of the system.
    pub stream_bytes: u64,
    /// How the per-kind bytes were attributed.
    pub byte_attribution: String,
    /// Other counters worth a look (compact rebuilds, retries, lagged events, ...).
    pub notes: BTreeMap<String, f64>,
}

/// Ours over gossipsub, for the headline figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Ratios {
    /// Transaction amplification, ours / gossipsub.
    pub tx_amplification: f64,
    /// Transaction p99, ours / gossipsub.
    pub tx_p99: f64,
    /// Block amplification, ours / gossipsub.
    pub block_amplification: f64,
    /// Block p99, ours / gossipsub.
    pub block_p99: f64,
}

/// One goal and whether the run met it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Goal {
    /// What is required.
    pub goal: String,
    /// The measured value.
    pub value: f64,
    /// The limit.
    pub limit: f64,
    /// Whether `value ≤ limit`.
    pub met: bool,
}

impl Goal {
    fn at_most(goal: &str, value: f64, limit: f64) -> Self {
        Self {
            goal: goal.to_owned(),
            value,
            limit,
            met: value.is_finite() && value <= limit,
        }
    }
}

/// The whole report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Parameters.
    pub config: RunConfig,
    /// Our relay.
    pub ours: SystemReport,
    /// rust-libp2p gossipsub, default configuration.
    pub gossipsub: SystemReport,
    /// Ours / gossipsub.
    pub ratios: Ratios,
    /// The goals.
    pub goals: Vec<Goal>,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

impl Report {
    /// Assembles the report and checks the goals.
    pub fn new(config: RunConfig, ours: SystemReport, gossipsub: SystemReport) -> Self {
        let ratios = Ratios {
            tx_amplification: ratio(ours.tx.amplification, gossipsub.tx.amplification),
            tx_p99: ratio(ours.tx.p99_ms, gossipsub.tx.p99_ms),
            block_amplification: ratio(ours.block.amplification, gossipsub.block.amplification),
            block_p99: ratio(ours.block.p99_ms, gossipsub.block.p99_ms),
        };
        let goals = vec![
            Goal::at_most(
                "every item reached every node (items missing somewhere)",
                ((ours.tx.items - ours.tx.complete) + (ours.block.items - ours.block.complete))
                    as f64,
                0.0,
            ),
            Goal::at_most("tx amplification <= 1.3x", ours.tx.amplification, 1.3),
            Goal::at_most(
                "tx amplification <= 1/3 of gossipsub's (ours/gossipsub)",
                ratios.tx_amplification,
                1.0 / 3.0,
            ),
            Goal::at_most(
                "block p99 <= 1.25x the shortest-path bound (p99/bound p99)",
                ours.block.ratio_p99,
                1.25,
            ),
            Goal::at_most(
                "block p99 <= gossipsub's block p99 (ours/gossipsub)",
                ratios.block_p99,
                1.0,
            ),
            Goal::at_most(
                "compact block bytes <= 5% of full block bytes",
                ours.compact_block_ratio.unwrap_or(f64::NAN),
                0.05,
            ),
        ];
        Self {
            config,
            ours,
            gossipsub,
            ratios,
            goals,
        }
    }

    /// The printed table.
    pub fn table(&self) -> String {
        let c = &self.config;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "propagation: {} nodes, {} links (mean degree {:.1}), {} regions, {:.0} s, {} tx/s, \
             a block every {} ms (<= {} txs, backlog {}), seed {}, our tx fanout {}, announce yield {} ms, gossipsub \
             nodes {}; {} CPUs, load average {:.1} -> {:.1}",
            c.nodes,
            c.links,
            c.mean_degree,
            c.regions,
            c.seconds,
            c.tx_rate,
            c.block_interval_ms,
            c.max_block_txs,
            c.backlog,
            c.seed,
            c.tx_fanout,
            c.announce_yield_ms,
            if c.gossip_node_work {
                "import and keep mempools"
            } else {
                "only relay"
            },
            c.cpus,
            c.load_average.0,
            c.load_average.1
        );
        let _ = writeln!(
            out,
            "{:<28}{:>14}{:>14}{:>12}",
            "", "ours", "gossipsub", "ours/gs"
        );
        let (o, g) = (&self.ours, &self.gossipsub);
        for (name, ok, gk) in [("tx", &o.tx, &g.tx), ("block", &o.block, &g.block)] {
            let rows: [(&str, f64, f64, &str); 10] = [
                (
                    "items reaching all",
                    ok.complete as f64,
                    gk.complete as f64,
                    "",
                ),
                ("p50 ms", ok.p50_ms, gk.p50_ms, ""),
                ("p95 ms", ok.p95_ms, gk.p95_ms, ""),
                ("p99 ms", ok.p99_ms, gk.p99_ms, ""),
                ("max ms", ok.max_ms, gk.max_ms, ""),
                ("bound p99 ms", ok.bound_p99_ms, gk.bound_p99_ms, ""),
                ("p99 / bound p99", ok.ratio_p99, gk.ratio_p99, "x"),
                (
                    "median item / its bound",
                    ok.ratio_median_per_item,
                    gk.ratio_median_per_item,
                    "x",
                ),
                (
                    "bytes sent (MB)",
                    ok.bytes_sent as f64 / 1e6,
                    gk.bytes_sent as f64 / 1e6,
                    "",
                ),
                ("amplification", ok.amplification, gk.amplification, "x"),
            ];
            for (label, a, b, unit) in rows {
                let _ = writeln!(
                    out,
                    "{:<28}{:>13.2}{unit:1}{:>13.2}{unit:1}{:>12.3}",
                    format!("{name} {label}"),
                    a,
                    b,
                    ratio(a, b)
                );
            }
        }
        if let Some(imp) = &o.block_imported {
            // Gossipsub's column is its delivery: its nodes import nothing.
            for (label, a, b) in [
                ("p50 ms", imp.p50_ms, g.block.p50_ms),
                ("p99 ms", imp.p99_ms, g.block.p99_ms),
            ] {
                let _ = writeln!(
                    out,
                    "{:<28}{:>13.2} {:>13.2} {:>12.3}",
                    format!("block imported {label}"),
                    a,
                    b,
                    ratio(a, b)
                );
            }
        }
        if let Some(r) = o.compact_block_ratio {
            let _ = writeln!(out, "{:<28}{:>13.4}", "compact block / full block", r);
        }
        let _ = writeln!(
            out,
            "{:<28}{:>13.2} {:>13.2}",
            "stream bytes, all (MB)",
            o.stream_bytes as f64 / 1e6,
            g.stream_bytes as f64 / 1e6
        );
        let _ = writeln!(out, "goals:");
        for goal in &self.goals {
            let _ = writeln!(
                out,
                "  [{}] {}: {:.3} (limit {:.3})",
                if goal.met { "met" } else { "NOT met" },
                goal.goal,
                goal.value,
                goal.limit
            );
        }
        for (system, r) in [("ours", o), ("gossipsub", g)] {
            let notes: Vec<String> = r.notes.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(out, "{system}: {}", notes.join(" "));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_compare_ours_with_limits_and_gossipsub() {
        let mut ours = SystemReport::default();
        ours.tx.amplification = 1.2;
        ours.block.p99_ms = 110.0;
        ours.block.ratio_p99 = 1.1;
        ours.compact_block_ratio = Some(0.04);
        let mut gs = SystemReport::default();
        gs.tx.amplification = 6.0;
        gs.block.p99_ms = 100.0;
        let r = Report::new(RunConfig::default(), ours, gs);
        let met: Vec<bool> = r.goals.iter().map(|g| g.met).collect();
        assert_eq!(met, vec![true, true, true, true, false, true]);
        assert!((r.ratios.tx_amplification - 0.2).abs() < 1e-9);
        let json = serde_json::to_value(&r).expect("serialises");
        assert!(json["ours"]["compact_block_ratio"].is_number());
        assert!(json["gossipsub"].get("compact_block_ratio").is_none());
        assert!(r.table().contains("NOT met"));
    }
}
