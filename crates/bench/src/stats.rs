//! Percentiles, bandwidth amplification and the per-kind summary the report prints.

use std::time::Duration;

use serde::Serialize;

/// The `p`-th percentile (0 < p ≤ 100) of `values` by the nearest-rank method: the smallest
/// value with at least `p`% of the values at or below it. `None` for no values.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Bandwidth amplification: bytes sent for a kind over the least that delivering its items to
/// every other node needs, `item_bytes × (nodes − 1)`, where `item_bytes` is the sum of the
/// items' encoded sizes. 1.0 means every node received each item exactly once and nothing else.
pub fn amplification(bytes_sent: u64, item_bytes: u64, nodes: usize) -> f64 {
    let floor = item_bytes as f64 * nodes.saturating_sub(1) as f64;
    if floor > 0.0 {
        bytes_sent as f64 / floor
    } else {
        0.0
    }
}

/// Milliseconds of a duration, as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// Figures for one item kind in one system, as written to the JSON report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KindReport {
    /// Items injected.
    pub items: usize,
    /// Items that reached every node before the drain deadline (the percentiles cover these).
    pub complete: usize,
    /// Median time for an item to reach all nodes, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest item, ms.
    pub max_ms: f64,
    /// Median of the items' shortest-path bounds, ms.
    pub bound_p50_ms: f64,
    /// 99th percentile of the items' shortest-path bounds, ms.
    pub bound_p99_ms: f64,
    /// `p99_ms / bound_p99_ms`.
    pub ratio_p99: f64,
    /// Median over items of (time to all nodes / that item's own bound).
    pub ratio_median_per_item: f64,
    /// Bytes sent for this kind, all nodes together.
    pub bytes_sent: u64,
    /// Encoded bytes of the items themselves (sum over items).
    pub item_bytes: u64,
    /// `bytes_sent / (item_bytes × (nodes − 1))`.
    pub amplification: f64,
}

impl KindReport {
    /// Summarises items: each `(time to all nodes or None if it never got there, its bound, its
    /// encoded size)`, with `bytes_sent` for the kind across `nodes` nodes.
    pub fn summarise(
        items: &[(Option<Duration>, Duration, usize)],
        bytes_sent: u64,
        nodes: usize,
    ) -> Self {
        let done: Vec<f64> = items.iter().filter_map(|(t, _, _)| t.map(ms)).collect();
        let bounds: Vec<f64> = items.iter().map(|(_, b, _)| ms(*b)).collect();
        let per_item: Vec<f64> = items
            .iter()
            .filter_map(|(t, b, _)| match t {
                Some(t) if !b.is_zero() => Some(ms(*t) / ms(*b)),
                _ => None,
            })
            .collect();
        let item_bytes: u64 = items.iter().map(|(_, _, s)| *s as u64).sum();
        let p = |v: &[f64], q: f64| percentile(v, q).unwrap_or(0.0);
        let p99 = p(&done, 99.0);
        let bound_p99 = p(&bounds, 99.0);
        Self {
            items: items.len(),
            complete: done.len(),
            p50_ms: p(&done, 50.0),
            p95_ms: p(&done, 95.0),
            p99_ms: p99,
            max_ms: p(&done, 100.0),
            bound_p50_ms: p(&bounds, 50.0),
            bound_p99_ms: bound_p99,
            ratio_p99: if bound_p99 > 0.0 {
                p99 / bound_p99
            } else {
                0.0
            },
            ratio_median_per_item: p(&per_item, 50.0),
            bytes_sent,
            item_bytes,
            amplification: amplification(bytes_sent, item_bytes, nodes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).rev().collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.1), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn amplification_is_bytes_over_the_delivery_floor() {
        // 2 items of 100 bytes to 9 other nodes: the floor is 1,800 bytes.
        assert_eq!(amplification(1_800, 200, 10), 1.0);
        assert_eq!(amplification(5_400, 200, 10), 3.0);
        assert_eq!(amplification(100, 0, 10), 0.0);
        assert_eq!(amplification(100, 100, 1), 0.0);
    }

    #[test]
    fn summary_covers_complete_items_and_all_bounds() {
        let ms = Duration::from_millis;
        let items = vec![
            (Some(ms(100)), ms(50), 10),
            (Some(ms(300)), ms(100), 10),
            (None, ms(200), 10),
        ];
        let r = KindReport::summarise(&items, 120, 3);
        assert_eq!((r.items, r.complete), (3, 2));
        assert_eq!((r.p50_ms, r.max_ms), (100.0, 300.0));
        assert_eq!(r.bound_p99_ms, 200.0);
        assert_eq!(r.ratio_p99, 1.5);
        assert_eq!(r.ratio_median_per_item, 2.0);
        assert_eq!(r.amplification, 2.0);
    }
}
