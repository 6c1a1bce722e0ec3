//! The overlay both systems run on: which node sits in which region, who dials whom, each link's
//! one-way delay, and the shortest-path bound on propagation (Dijkstra over those delays).
//!
//! Built from a seeded RNG, so a seed names one overlay: a random Hamiltonian cycle first (the
//! graph is connected whatever happens next), then random extra links between nodes below the
//! target degree until none can be added.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::rtt::RttMatrix;

/// Random tries per wanted link before giving up on filling every node to the target degree
/// (the last few free slots may only pair nodes that are already linked).
const TRIES_PER_LINK: usize = 50;

/// One link: `dialer` dialled `listener`; both directions carry `delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// The node that dials.
    pub dialer: usize,
    /// The node dialled.
    pub listener: usize,
    /// One-way delay in each direction: half the dialer's measured RTT to the listener's region.
    pub delay: Duration,
}

/// Nodes, their regions and the links between them.
#[derive(Debug, Clone)]
pub struct Overlay {
    regions: Vec<usize>,
    links: Vec<Link>,
    /// Per node: (neighbour, delay).
    adjacency: Vec<Vec<(usize, Duration)>>,
}

impl Overlay {
    /// A random overlay of `nodes` nodes with about `degree` links each, nodes spread evenly over
    /// the regions of `rtt` in random order.
    pub fn random(nodes: usize, degree: usize, rtt: &RttMatrix, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let region_count = rtt.len().max(1);
        let mut regions: Vec<usize> = (0..nodes).map(|i| i % region_count).collect();
        regions.shuffle(&mut rng);

        let mut pairs: Vec<(usize, usize)> = Vec::new();
        let mut linked: HashSet<(usize, usize)> = HashSet::new();
        let mut deg = vec![0usize; nodes];
        let mut add = |a: usize, b: usize, pairs: &mut Vec<(usize, usize)>, deg: &mut [usize]| {
            let key = (a.min(b), a.max(b));
            if a != b && linked.insert(key) {
                pairs.push((a, b));
                deg[a] += 1;
                deg[b] += 1;
                true
            } else {
                false
            }
        };
        let mut order: Vec<usize> = (0..nodes).collect();
        order.shuffle(&mut rng);
        if nodes >= 2 {
            let ring = if nodes == 2 { 1 } else { nodes };
            for k in 0..ring {
                let (a, b) = (order[k], order[(k + 1) % nodes]);
                add(a, b, &mut pairs, &mut deg);
            }
        }
        let target = degree.min(nodes.saturating_sub(1));
        let missing: usize = deg.iter().map(|d| target.saturating_sub(*d)).sum();
        let mut tries = missing * TRIES_PER_LINK;
        while tries > 0 {
            tries -= 1;
            let open: Vec<usize> = (0..nodes).filter(|i| deg[*i] < target).collect();
            if open.len() < 2 {
                break;
            }
            let a = open[rng.gen_range(0..open.len())];
            let b = open[rng.gen_range(0..open.len())];
            add(a, b, &mut pairs, &mut deg);
        }

        let links: Vec<Link> = pairs
            .into_iter()
            .map(|(dialer, listener)| Link {
                dialer,
                listener,
                delay: rtt.one_way(regions[dialer], regions[listener]),
            })
            .collect();
        Self::from_links(regions, links)
    }

    /// An overlay from explicit links (tests and hand-made topologies).
    pub fn from_links(regions: Vec<usize>, links: Vec<Link>) -> Self {
        let mut adjacency = vec![Vec::new(); regions.len()];
        for l in &links {
            if let Some(a) = adjacency.get_mut(l.dialer) {
                a.push((l.listener, l.delay));
            }
            if let Some(a) = adjacency.get_mut(l.listener) {
                a.push((l.dialer, l.delay));
            }
        }
        Self {
            regions,
            links,
            adjacency,
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// The links.
    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// Region index of node `i`.
    pub fn region(&self, i: usize) -> usize {
        self.regions.get(i).copied().unwrap_or(0)
    }

    /// Number of links of node `i`.
    pub fn degree(&self, i: usize) -> usize {
        self.adjacency.get(i).map_or(0, Vec::len)
    }

    /// Node `i`'s neighbours and the one-way delay of each link (empty for an unknown node).
    pub fn neighbours(&self, i: usize) -> &[(usize, Duration)] {
        self.adjacency.get(i).map_or(&[][..], Vec::as_slice)
    }

    /// The one-way delay node `dialer` applies when it dials `listener`: the link's delay, or
    /// zero if they are not linked.
    pub fn dial_delay(&self, dialer: usize, listener: usize) -> Duration {
        self.adjacency
            .get(dialer)
            .and_then(|a| a.iter().find(|(n, _)| *n == listener))
            .map_or(Duration::ZERO, |(_, d)| *d)
    }

    /// Shortest one-way delay from `from` to every node (Dijkstra); `None` for unreachable
    /// nodes.
    pub fn shortest_paths(&self, from: usize) -> Vec<Option<Duration>> {
        let mut dist: Vec<Option<Duration>> = vec![None; self.len()];
        let mut heap = BinaryHeap::new();
        if let Some(d) = dist.get_mut(from) {
            *d = Some(Duration::ZERO);
            heap.push(Reverse((Duration::ZERO, from)));
        }
        while let Some(Reverse((d, node))) = heap.pop() {
            if dist
                .get(node)
                .copied()
                .flatten()
                .is_some_and(|best| d > best)
            {
                continue;
            }
            for &(next, w) in self.adjacency.get(node).map_or(&[][..], Vec::as_slice) {
                let candidate = d + w;
                let slot = &mut dist[next];
                if slot.is_none_or(|old| candidate < old) {
                    *slot = Some(candidate);
                    heap.push(Reverse((candidate, next)));
                }
            }
        }
        dist
    }

    /// The propagation bound of an item injected at `from`: the shortest-path delay to the
    /// farthest node. `None` if some node is unreachable.
    pub fn bound(&self, from: usize) -> Option<Duration> {
        self.shortest_paths(from)
            .into_iter()
            .try_fold(Duration::ZERO, |max, d| d.map(|d| max.max(d)))
    }

    /// Whether every node reaches every other.
    pub fn is_connected(&self) -> bool {
        self.is_empty() || self.bound(0).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    #[test]
    fn dijkstra_takes_the_cheaper_detour() {
        // 0 -100- 1, 0 -10- 2 -10- 1, 1 -5- 3.
        let links = vec![
            Link {
                dialer: 0,
                listener: 1,
                delay: ms(100),
            },
            Link {
                dialer: 0,
                listener: 2,
                delay: ms(10),
            },
            Link {
                dialer: 2,
                listener: 1,
                delay: ms(10),
            },
            Link {
                dialer: 3,
                listener: 1,
                delay: ms(5),
            },
        ];
        let o = Overlay::from_links(vec![0; 4], links);
        let d = o.shortest_paths(0);
        assert_eq!(
            d,
            vec![Some(ms(0)), Some(ms(20)), Some(ms(10)), Some(ms(25))]
        );
        assert_eq!(o.bound(0), Some(ms(25)));
        assert_eq!(o.bound(3), Some(ms(25)));
        assert_eq!(o.dial_delay(2, 1), ms(10));
        assert_eq!(o.dial_delay(1, 2), ms(10));
        assert_eq!(o.dial_delay(0, 3), Duration::ZERO);
    }

    #[test]
    fn unreachable_nodes_have_no_bound() {
        let o = Overlay::from_links(vec![0; 3], vec![]);
        assert_eq!(o.bound(0), None);
        assert!(!o.is_connected());
    }

    #[test]
    fn random_overlays_are_connected_near_the_degree_and_seeded() {
        let rtt = RttMatrix::parse("from,a,b\na,0,100\nb,100,0\n").expect("valid");
        for n in [1, 2, 3, 6, 50, 120] {
            let o = Overlay::random(n, 8, &rtt, 7);
            assert!(o.is_connected(), "n = {n}");
            let target = 8.min(n.saturating_sub(1));
            let low = (0..n).filter(|i| o.degree(*i) < target).count();
            assert!(low <= 2, "n = {n}: {low} nodes below degree {target}");
            assert!((0..n).all(|i| o.degree(i) <= target.max(2)), "n = {n}");
            let same = Overlay::random(n, 8, &rtt, 7);
            assert_eq!(o.links(), same.links());
        }
        let o = Overlay::random(50, 8, &rtt, 7);
        for l in o.links() {
            let expect = if o.region(l.dialer) == o.region(l.listener) {
                Duration::ZERO
            } else {
                ms(50)
            };
            assert_eq!(l.delay, expect);
        }
    }
}
