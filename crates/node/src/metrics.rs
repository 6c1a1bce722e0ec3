//! The node's Prometheus metrics, served as text on `GET /metrics`.
//!
//! Base units only and no rates: Prometheus derives rates from the counters. Gauges that mirror
//! chain state are refreshed when scraped ([`NodeMetrics::encode`] takes the values), so they are
//! never stale.

use prometheus_client::encoding::text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Chain state read at scrape time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChainGauges {
    /// Height of the best tip.
    pub(crate) height: u64,
    /// Transactions waiting in the mempool.
    pub(crate) mempool_transactions: usize,
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
        NodeMetrics {
            registry,
            chain_height,
            mempool_transactions,
            blocks_produced,
            transactions_included,
            api_transactions_accepted,
        }
    }

    /// The registry, for subsystems (the network) to register their metrics under it before
    /// the node starts serving.
    pub(crate) fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The OpenMetrics text exposition, with the chain gauges set to `chain`.
    pub(crate) fn encode(&self, chain: ChainGauges) -> String {
        self.chain_height
            .set(i64::try_from(chain.height).unwrap_or(i64::MAX));
        self.mempool_transactions
            .set(i64::try_from(chain.mempool_transactions).unwrap_or(i64::MAX));
        let mut out = String::new();
        text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_metric_with_current_values() {
        let metrics = NodeMetrics::new();
        metrics.blocks_produced.inc();
        metrics.transactions_included.inc_by(7);
        let text = metrics.encode(ChainGauges {
            height: 42,
            mempool_transactions: 3,
        });
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
    }
}
