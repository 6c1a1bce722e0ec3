//! The partition detector through a scripted 6/4 split, seen from a node on the smaller side:
//! what the adapter would feed it second by second, and what it must answer.

use std::time::{Duration, Instant};

use playergold_primitives::{BlockHash, Height, Work};
use playergold_protocol::partition::{
    DHT_RANDOM_WALK_INTERVAL, NetworkState, PartitionConfig, PartitionDetector, PartitionEvent,
    REDIAL_ADDRESS_BOOK_INTERVAL, RecoveryAction, TipInfo,
};

const S: Duration = Duration::from_secs(1);

/// Ten validators produce in turn, one per 1 s slot. We are validator 0; 7, 8, 9 stay on our
/// side of the split, 1..=6 are on the other.
fn ours(slot: u64) -> bool {
    matches!(slot % 10, 0 | 7 | 8 | 9)
}

/// A tip on branch `branch` (0: shared history and ours, 1: the other side's) at `height`.
fn tip(branch: u8, height: u64) -> TipInfo {
    let mut hash = [branch; 32];
    hash[..8].copy_from_slice(&height.to_le_bytes());
    TipInfo {
        hash: BlockHash(hash),
        height: Height(height),
        work: Work(height.into()),
    }
}

struct Script {
    d: PartitionDetector<u8>,
    start: Instant,
    height: u64,
    actions: Vec<(u64, RecoveryAction)>,
    events: Vec<(u64, NetworkState)>,
}

impl Script {
    fn new() -> Script {
        let start = Instant::now();
        let config = PartitionConfig {
            min_peers: 5,
            low_peers_grace: Duration::from_secs(10),
            stale_tip_slots: 6,
            ..PartitionConfig::default()
        };
        let mut d = PartitionDetector::new(config, start);
        d.on_local_tip(start, tip(0, 0));
        for p in 1..=9 {
            d.on_peer_connected(start, p);
        }
        Script {
            d,
            start,
            height: 0,
            actions: Vec::new(),
            events: Vec::new(),
        }
    }

    fn at(&self, t: u64) -> Instant {
        self.start + S * t as u32
    }

    /// Our side makes a block at `t`; every connected peer of `peers` follows us.
    fn our_block(&mut self, t: u64, peers: &[u8]) {
        self.height += 1;
        let now = self.at(t);
        let tip = tip(0, self.height);
        self.d.on_local_tip(now, tip);
        for p in peers {
            self.d.on_peer_tip(now, *p, tip, true);
        }
    }

    /// The adapter's timer at `t`.
    fn tick(&mut self, t: u64) {
        let now = self.at(t);
        while let Some(a) = self.d.poll_action(now) {
            self.actions.push((t, a));
        }
        while let Some(PartitionEvent::StateChanged { to, report, .. }) = self.d.poll_event() {
            assert_eq!(report.state, to);
            self.events.push((t, to));
        }
    }

    fn count(&self, action: RecoveryAction, from: u64, to: u64) -> usize {
        self.actions
            .iter()
            .filter(|(t, a)| *a == action && (from..to).contains(t))
            .count()
    }
}

#[test]
fn a_6_4_split_is_detected_on_the_smaller_side_and_heals_without_flapping() {
    let mut s = Script::new();
    let all: Vec<u8> = (1..=9).collect();
    let same_side = [7u8, 8, 9];
    // 0..30 s: one network, a block every slot, including one missed slot at 20.
    for t in 1..30 {
        if t != 20 {
            s.our_block(t, &all);
        }
        s.tick(t);
    }
    assert_eq!(s.d.state(), NetworkState::Healthy);
    assert!(
        s.events.is_empty(),
        "no flapping on a missed slot: {:?}",
        s.events
    );
    assert!(s.actions.is_empty(), "{:?}", s.actions);

    // 30..42 s: the links across are failing. The other side's peers still reach us with their
    // own branch at heights like ours. Our tip goes stale first (degraded at 36: six slots
    // without a block), then two thirds of the peers have diverged for the hold (partitioned).
    let mut theirs = s.height;
    for t in 30..42 {
        if ours(t) {
            s.our_block(t, &same_side);
        } else {
            theirs += 1;
            for p in 1..=6 {
                s.d.on_peer_tip(s.at(t), p, tip(1, theirs), false);
            }
        }
        s.tick(t);
    }
    assert_eq!(s.d.report(s.at(41)).diverging_peers, 6);
    // 42 s: they vanish. Few peers and a recurring stale tip keep us partitioned.
    for p in 1..=6 {
        s.d.on_peer_disconnected(s.at(42), &p);
    }
    for t in 42..100 {
        if ours(t) {
            s.our_block(t, &same_side);
        } else {
            theirs += 1;
        }
        s.tick(t);
    }
    assert_eq!(s.d.state(), NetworkState::Partitioned);
    assert_eq!(
        s.events,
        vec![
            (36, NetworkState::Degraded),
            (41, NetworkState::Partitioned)
        ]
    );
    let report = s.d.report(s.at(99));
    assert!(report.low_peers && report.peers == 3, "{report:?}");
    // Recovery from 36 s on, each action at most once per its interval: walks at 36, 66, 96;
    // address-book redials every 10 s from 36 to 96; bootstrap redials at 36, 96; one extra
    // outbound peer.
    assert_eq!(DHT_RANDOM_WALK_INTERVAL, Duration::from_secs(30));
    assert_eq!(REDIAL_ADDRESS_BOOK_INTERVAL, Duration::from_secs(10));
    assert_eq!(s.count(RecoveryAction::DhtRandomWalk, 0, 100), 3);
    assert_eq!(s.count(RecoveryAction::RedialAddressBook, 0, 100), 7);
    assert_eq!(s.count(RecoveryAction::RedialBootstrap, 0, 100), 2);
    assert_eq!(s.count(RecoveryAction::AddExtraOutboundPeer, 0, 100), 1);

    // 100 s: the split heals. The other side comes back with much more work; we sync to its
    // tip within two seconds (sync masks the divergence) and produce on it with everyone.
    // Raw signals: at most degraded since our block at 97 ended the stale tip, healthy since
    // the peers came back at 100; each state is taken once it held for the 20 s heal hold.
    for p in 1..=6 {
        s.d.on_peer_connected(s.at(100), p);
        s.d.on_peer_tip(s.at(100), p, tip(1, theirs), false);
    }
    s.d.set_syncing(s.at(100), true);
    s.tick(100);
    s.tick(101);
    s.height = theirs;
    s.d.on_local_tip(s.at(102), tip(1, theirs));
    s.d.set_syncing(s.at(102), false);
    for p in &all {
        s.d.on_peer_tip(s.at(102), *p, tip(1, theirs), true);
    }
    s.tick(102);
    for t in 103..160 {
        s.our_block(t, &all);
        s.tick(t);
    }
    assert_eq!(s.d.state(), NetworkState::Healthy);
    assert_eq!(
        s.events,
        vec![
            (36, NetworkState::Degraded),
            (41, NetworkState::Partitioned),
            (117, NetworkState::Degraded),
            (120, NetworkState::Healthy)
        ],
        "down, then up, no flapping"
    );
    assert_eq!(
        s.count(RecoveryAction::RemoveExtraOutboundPeer, 100, 160),
        1
    );
    assert_eq!(s.count(RecoveryAction::DhtRandomWalk, 100, 160), 0);
}
