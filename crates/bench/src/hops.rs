//! Where an item's time above the shortest-path bound goes: the hops' own overhead, or the path.
//!
//! Every node `v` but the origin got the item over some link. Its *feeder* is the neighbour `u`,
//! among those that had the item before `v`, that minimises `arrival(u) + delay(u, v)`: the
//! earliest the item could have crossed a link to `v`. The *hop excess* of `v` is its arrival
//! minus that moment: what relaying, scheduling and the arrival stamp cost on that hop beyond
//! the link itself (it can be negative when `u` stamps its arrival after it relays, as our relay
//! does for a compact block it rebuilds after forwarding). Feeders traced back from the last
//! node give the item's critical path: its link delays beyond the bound are what the path cost
//! (a system that pushes along fewer links may take a longer one), its hop excesses what the
//! hops cost.
//!
//! ```text
//!  arrivals ─► feeder and hop excess per node ──────────────► excess percentiles
//!                      └─► last node's path to the origin ──► hops, detour, Σ excess
//! ```

use std::time::Duration;

use crate::overlay::Overlay;
use crate::recorder::Outcome;
use crate::stats::{ms, percentile};

/// One item's breakdown.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemHops {
    /// Hop excess of each node that has a feeder, in milliseconds.
    pub excess_ms: Vec<f64>,
    /// Links on the critical path (origin to the last node).
    pub path_hops: usize,
    /// Link delays on the critical path minus the shortest-path delay to the last node (ms).
    pub detour_ms: f64,
    /// Sum of the hop excesses on the critical path (ms).
    pub path_excess_ms: f64,
}

/// The breakdown of one item that reached every node; `None` if some node lacks an arrival or
/// the last node's path cannot be traced back to the origin.
pub fn item_hops(
    overlay: &Overlay,
    origin: usize,
    arrivals: &[Option<Duration>],
) -> Option<ItemHops> {
    let arrivals: Vec<Duration> = arrivals.iter().copied().collect::<Option<_>>()?;
    let feeders: Vec<Option<(usize, Duration)>> = (0..arrivals.len())
        .map(|v| {
            if v == origin {
                return None;
            }
            overlay
                .neighbours(v)
                .iter()
                .filter(|(u, _)| *u == origin || arrivals[*u] < arrivals[v])
                .map(|&(u, d)| (u, arrivals[u] + d))
                .min_by_key(|&(_, at)| at)
        })
        .collect();
    let excess = |v: usize| -> Option<f64> { feeders[v].map(|(_, at)| ms(arrivals[v]) - ms(at)) };
    let excess_ms: Vec<f64> = (0..arrivals.len()).filter_map(excess).collect();
    let last = (0..arrivals.len()).max_by_key(|&v| arrivals[v])?;
    let (mut hops, mut links, mut path_excess) = (0, Duration::ZERO, 0.0);
    let mut v = last;
    // Feeders had the item strictly earlier, so the walk cannot cycle; the bound is a guard.
    while v != origin && hops < arrivals.len() {
        let (u, _) = feeders[v]?;
        let delay = overlay
            .neighbours(v)
            .iter()
            .find(|(n, _)| *n == u)
            .map(|(_, d)| *d)?;
        links += delay;
        path_excess += excess(v)?;
        hops += 1;
        v = u;
    }
    if v != origin {
        return None;
    }
    let shortest = overlay
        .shortest_paths(origin)
        .get(last)
        .copied()
        .flatten()?;
    Some(ItemHops {
        excess_ms,
        path_hops: hops,
        detour_ms: ms(links) - ms(shortest),
        path_excess_ms: path_excess,
    })
}

/// Report notes for the items of `outcomes` that `keep` selects, each name prefixed by `prefix`:
/// hop excess percentiles over every hop, and the critical paths' mean hops, detour and excess.
pub fn notes(
    overlay: &Overlay,
    outcomes: &[Outcome],
    keep: impl Fn(&Outcome) -> bool,
    prefix: &str,
) -> Vec<(String, f64)> {
    let items: Vec<ItemHops> = outcomes
        .iter()
        .filter(|o| keep(o))
        .filter_map(|o| item_hops(overlay, o.origin, &o.arrivals))
        .collect();
    if items.is_empty() {
        return Vec::new();
    }
    let all: Vec<f64> = items
        .iter()
        .flat_map(|i| i.excess_ms.iter().copied())
        .collect();
    let n = items.len() as f64;
    let mean = |f: fn(&ItemHops) -> f64| items.iter().map(f).sum::<f64>() / n;
    let mut out: Vec<(String, f64)> = [50.0, 90.0, 99.0]
        .into_iter()
        .filter_map(|p| percentile(&all, p).map(|v| (format!("hop_excess_p{p}_ms"), v)))
        .collect();
    out.push(("path_hops_mean".into(), mean(|i| i.path_hops as f64)));
    out.push(("path_detour_ms_mean".into(), mean(|i| i.detour_ms)));
    out.push(("path_excess_ms_mean".into(), mean(|i| i.path_excess_ms)));
    out.into_iter()
        .map(|(k, v)| (format!("{prefix}_{k}"), v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::Link;

    fn line() -> Overlay {
        // 0 ─10ms─ 1 ─10ms─ 2, and a slow direct link 0 ─30ms─ 2.
        let link = |dialer, listener, ms| Link {
            dialer,
            listener,
            delay: Duration::from_millis(ms),
        };
        Overlay::from_links(
            vec![0, 0, 0],
            vec![link(0, 1, 10), link(1, 2, 10), link(0, 2, 30)],
        )
    }

    fn at(ms: &[u64]) -> Vec<Option<Duration>> {
        ms.iter().map(|m| Some(Duration::from_millis(*m))).collect()
    }

    #[test]
    fn hop_excess_is_the_time_beyond_the_best_feeding_link() {
        // Node 1 at 12 ms (2 ms over its link), node 2 at 25 ms: fed by 1 at 22 ms, 3 ms over.
        let hops = item_hops(&line(), 0, &at(&[0, 12, 25])).expect("complete item");
        assert_eq!(hops.excess_ms.len(), 2);
        assert!((hops.excess_ms[0] - 2.0).abs() < 1e-9);
        assert!((hops.excess_ms[1] - 3.0).abs() < 1e-9);
        assert_eq!(hops.path_hops, 2);
        assert!(hops.detour_ms.abs() < 1e-9);
        assert!((hops.path_excess_ms - 5.0).abs() < 1e-9);
    }

    #[test]
    fn a_longer_path_shows_as_detour_not_excess() {
        // Node 2 took the direct 30 ms link: node 1 had it too late to have fed it.
        let hops = item_hops(&line(), 0, &at(&[0, 29, 31])).expect("complete item");
        assert_eq!(hops.path_hops, 1);
        assert!((hops.detour_ms - 10.0).abs() < 1e-9);
        assert!((hops.path_excess_ms - 1.0).abs() < 1e-9);
    }

    #[test]
    fn an_incomplete_item_has_no_breakdown() {
        let mut arrivals = at(&[0, 12, 25]);
        arrivals[2] = None;
        assert_eq!(item_hops(&line(), 0, &arrivals), None);
    }
}
