//! The reputation table, scripted: events at fixed fake times give exactly the scores the
//! documented grading and half-lives predict (computed here, independently of the code under
//! test: a conduct part and a slowness part, each decaying on its own), and the disconnects and
//! bans that follow from the thresholds. Then the guards: slowness alone never bans, local
//! faults and exempt peers cost nothing, the reason log is capped, an IP with too many banned
//! peers is banned, bans survive a restart, and reorgs and late blocks never cost an honest peer.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use playergold_primitives::{Block, Height, Keypair, TimestampMs};
use playergold_protocol::Capabilities;
use playergold_protocol::relay::{
    BlockVerdict, CompactBlock, InvItem, Offence, PropagationConfig, RelayEngine, RelayEvent,
    RelayHost, RelayMessage,
};
use playergold_protocol::reputation::{
    Action, MAX_SCORE, MIN_SCORE, REASON_LOG_LEN, Reason, Reputation, ReputationConfig,
};
use playergold_protocol::sync::{RequestId, SyncAction, SyncConfig, SyncRequest, SyncScheduler};

use crate::hostile::TestChain;
use crate::sim::{FakeHost, Sim};

const HALF_LIFE_MS: u64 = 60_000;
const SLOW_HALF_LIFE_MS: u64 = 15_000;
const SLOW_FLOOR: f64 = -30.0;
const HOUR: u64 = 3_600_000;

// The documented grading (reputation module docs, issue 8), restated here on purpose.
const HIGH: f64 = -25.0;
const MEDIUM: f64 = -10.0;
const LOW: f64 = -2.0;
const DELIVERED: f64 = 1.0;
const ANSWERED: f64 = 0.25;

fn config() -> ReputationConfig {
    ReputationConfig {
        half_life_ms: HALF_LIFE_MS,
        slowness_half_life_ms: SLOW_HALF_LIFE_MS,
        slowness_floor: SLOW_FLOOR,
        disconnect_below: -50.0,
        ban_below: -90.0,
        base_ban_ms: HOUR,
        max_ban_ms: 4 * HOUR,
        max_banned_per_ip: 2,
    }
}

/// Fixed fake times, in ms after an arbitrary epoch.
fn at(ms: u64) -> TimestampMs {
    TimestampMs(1_700_000_000_000 + ms)
}

/// Exponential decay toward 0: half of the conduct part is gone after each half-life.
fn decayed(score: f64, dt_ms: u64) -> f64 {
    score * 0.5f64.powf(dt_ms as f64 / HALF_LIFE_MS as f64)
}

/// The same for the slowness part, with its own (shorter) half-life.
fn slow_decayed(score: f64, dt_ms: u64) -> f64 {
    score * 0.5f64.powf(dt_ms as f64 / SLOW_HALF_LIFE_MS as f64)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn a_scripted_sequence_gives_exactly_the_expected_scores_disconnects_and_bans() {
    use Action::{Disconnect, None as Nothing};
    let mut rep: Reputation<u32> = Reputation::new(config());
    let ban_at = |ms: u64, ms_long: u64| Action::Ban {
        until: TimestampMs(at(ms).0 + ms_long),
    };
    // (time ms, reason, its grade, expected score after it (by hand), expected action).
    // LOW grades move the slowness part (half-life 15 s), the others the conduct part (60 s).
    let script: Vec<(u64, Reason, f64, f64, Action)> = vec![
        (0, Reason::InvalidHeaders, HIGH, -25.0, Nothing),
        (0, Reason::Relay(Offence::Unrequested), LOW, -27.0, Nothing),
        // One conduct half-life later: -25 -> -12.5; four slowness ones: -2 -> -0.125.
        (60_000, Reason::Delivered, DELIVERED, -11.625, Nothing),
        (60_000, Reason::Stalled, LOW, -13.625, Nothing),
        (60_000, Reason::InvalidHeaders, HIGH, -38.625, Nothing),
        (60_000, Reason::RateLimited, LOW, -40.625, Nothing),
        // Below -50: disconnect.
        (
            60_000,
            Reason::AiVerdict(false),
            MEDIUM,
            -50.625,
            Disconnect,
        ),
        // Conduct -46.5 -> -23.25 (+0.25); slowness -4.125 -> -0.2578125.
        (120_000, Reason::Answered, ANSWERED, -23.257_812_5, Nothing),
        (
            120_000,
            Reason::AiSolution(false),
            HIGH,
            -48.257_812_5,
            Nothing,
        ),
        (
            120_000,
            Reason::Relay(Offence::MalformedReply),
            MEDIUM,
            -58.257_812_5,
            Disconnect,
        ),
        // Half a conduct half-life: -58 / √2 = -41.012193...; slowness -0.064453125.
        (
            150_000,
            Reason::InvalidHeaders,
            HIGH,
            -66.076_646_433_819_75,
            Disconnect,
        ),
        (
            150_000,
            Reason::Relay(Offence::RequestTimeout),
            LOW,
            -68.076_646_433_819_75,
            Disconnect,
        ),
        // Conduct -91.01 is below -90: banned for the base duration.
        (
            150_000,
            Reason::InvalidHeaders,
            HIGH,
            -93.076_646_433_819_75,
            ban_at(150_000, HOUR),
        ),
        // A report racing the disconnect asks for nothing more and does not extend the ban.
        (
            150_000,
            Reason::Relay(Offence::RequestTimeout),
            LOW,
            -95.076_646_433_819_75,
            Nothing,
        ),
    ];
    let (mut conduct, mut slow) = (0.0, 0.0);
    let mut last = 0;
    for (i, (ms, reason, grade, by_hand, action)) in script.iter().copied().enumerate() {
        conduct = decayed(conduct, ms - last);
        slow = slow_decayed(slow, ms - last);
        if grade == LOW {
            slow = (slow + grade).clamp(SLOW_FLOOR, 0.0);
        } else {
            conduct = (conduct + grade).clamp(-100.0, 100.0);
        }
        last = ms;
        let model = (conduct + slow).clamp(-100.0, 100.0);
        assert!(
            close(model, by_hand),
            "step {i}: model {model} vs table {by_hand}"
        );
        assert_eq!(
            rep.report(1, reason, at(ms)),
            action,
            "step {i}: {reason:?}"
        );
        let score = rep.score(&1, at(ms));
        assert!(
            close(score, by_hand),
            "step {i}: score {score}, expected {by_hand}"
        );
    }
    // Decay toward 0: three half-lives take the conduct part to an eighth, and ten to within 0.1
    // of 0.
    assert!(close(
        rep.conduct(&1, at(150_000 + 3 * HALF_LIFE_MS)),
        conduct / 8.0
    ));
    assert!(rep.score(&1, at(150_000 + 10 * HALF_LIFE_MS)).abs() < 0.1);
    // Banned for exactly one hour.
    assert!(rep.is_banned(&1, at(150_000 + HOUR - 1)));
    assert!(!rep.is_banned(&1, at(150_000 + HOUR)));

    // Repeat offences: a fatal event bans at once, whatever the score; each ban doubles, up to
    // max_ban_ms (4 h: the fourth would be 8 h).
    let mut t = 150_000 + HOUR;
    for (reason, long) in [
        (Reason::InvalidBlock, 2 * HOUR),
        (Reason::WrongGenesis, 4 * HOUR),
        (Reason::MalformedFrame, 4 * HOUR),
        (Reason::Relay(Offence::InvalidHeader), 4 * HOUR),
    ] {
        t += 10 * HALF_LIFE_MS;
        // The score has decayed close to 0: the ban comes from the grade alone.
        assert!(rep.score(&1, at(t)) > -1.0);
        assert_eq!(rep.report(1, reason, at(t)), ban_at(t, long), "{reason:?}");
        t += long;
    }
    assert_eq!(rep.bans(at(0)).len(), 1);
    assert_eq!(rep.bans(at(0))[0].1.count, 5);

    // Scores are bounded above too.
    for _ in 0..150 {
        assert_eq!(rep.report(2, Reason::Delivered, at(0)), Nothing);
    }
    assert_eq!(rep.score(&2, at(0)), MAX_SCORE);
}

#[test]
fn slowness_is_floored_and_never_bans_even_on_top_of_misbehaviour() {
    let mut rep: Reputation<u32> = Reputation::new(config());
    // Conduct -75: one more HIGH would ban; a thousand timeouts must not.
    for _ in 0..3 {
        rep.report(4, Reason::InvalidHeaders, at(0));
    }
    for i in 0..1_000 {
        let action = rep.report(4, Reason::Relay(Offence::RequestTimeout), at(i));
        assert!(
            matches!(action, Action::Disconnect),
            "report {i}: {action:?}"
        );
    }
    assert!(!rep.is_banned(&4, at(1_000)));
    let score = rep.score(&4, at(1_000));
    let expected = (decayed(-75.0, 1_000) + SLOW_FLOOR).max(MIN_SCORE);
    assert!(close(score, expected), "{score} vs {expected}");
    assert!(close(rep.conduct(&4, at(1_000)), decayed(-75.0, 1_000)));
    // Proof of misbehaviour still bans: an invalid signature at once, from any score.
    rep.report(5, Reason::Delivered, at(0));
    assert!(matches!(
        rep.report(5, Reason::Relay(Offence::InvalidTransaction), at(0)),
        Action::Ban { .. }
    ));
}

#[test]
fn local_faults_cost_nothing_but_real_offences_still_count() {
    let mut rep: Reputation<u32> = Reputation::new(config());
    rep.set_local_overload(true);
    for i in 0..100 {
        assert_eq!(
            rep.report(3, Reason::Relay(Offence::RequestTimeout), at(i)),
            Action::None
        );
        assert_eq!(rep.report(3, Reason::Stalled, at(i)), Action::None);
        assert_eq!(
            rep.report(3, Reason::Relay(Offence::Unrequested), at(i)),
            Action::None
        );
    }
    assert_eq!(rep.score(&3, at(100)), 0.0);
    assert!(rep.log(&3).is_empty(), "ignored reports leave no trace");
    // Overload excuses slowness only: bad headers are never our fault.
    assert_eq!(rep.report(3, Reason::InvalidHeaders, at(100)), Action::None);
    assert!(close(rep.score(&3, at(100)), HIGH));
    rep.set_local_overload(false);
    rep.report(3, Reason::Relay(Offence::RequestTimeout), at(100));
    assert!(close(rep.score(&3, at(100)), HIGH + LOW));
}

#[test]
fn trusted_peers_are_scored_but_never_disconnected_or_banned_automatically() {
    let mut rep: Reputation<u32> = Reputation::new(config());
    rep.set_exempt(7, true);
    assert_eq!(rep.report(7, Reason::InvalidBlock, at(0)), Action::None);
    for _ in 0..10 {
        assert_eq!(
            rep.report(7, Reason::Relay(Offence::InvalidTransaction), at(0)),
            Action::None
        );
    }
    assert!(!rep.is_banned(&7, at(0)));
    assert_eq!(rep.score(&7, at(0)), MIN_SCORE, "still scored");
    assert_eq!(rep.log(&7).len(), 11);
    // The operator can still ban a trusted peer.
    assert!(matches!(
        rep.report(7, Reason::Manual, at(0)),
        Action::Ban { .. }
    ));
    assert!(rep.unban(&7));
    // No longer trusted: the next offence at -100 bans; slowness would not.
    rep.set_exempt(7, false);
    assert_eq!(
        rep.report(7, Reason::Relay(Offence::Unrequested), at(0)),
        Action::Disconnect
    );
    assert!(matches!(
        rep.report(7, Reason::InvalidHeaders, at(0)),
        Action::Ban { .. }
    ));
}

#[test]
fn the_reason_log_keeps_the_last_events_with_time_reason_and_score() {
    let mut rep: Reputation<u32> = Reputation::new(config());
    let reasons = [
        Reason::Delivered,
        Reason::Answered,
        Reason::Relay(Offence::Unrequested),
        Reason::RateLimited,
    ];
    let n = REASON_LOG_LEN + 5;
    let (mut conduct, mut slow) = (0.0, 0.0);
    let mut expected = Vec::new();
    for i in 0..n {
        let reason = reasons[i % reasons.len()];
        // One event every 6 s: a tenth of a conduct half-life.
        let ms = i as u64 * 6_000;
        let dt = if i == 0 { 0 } else { 6_000 };
        conduct = decayed(conduct, dt);
        slow = slow_decayed(slow, dt);
        match reason {
            Reason::Delivered => conduct += DELIVERED,
            Reason::Answered => conduct += ANSWERED,
            _ => slow += LOW,
        }
        rep.report(9, reason, at(ms));
        expected.push((at(ms), reason, conduct + slow));
    }
    let log = rep.log(&9);
    assert_eq!(log.len(), REASON_LOG_LEN);
    for (entry, (when, reason, score)) in log.iter().zip(&expected[n - REASON_LOG_LEN..]) {
        assert_eq!((entry.at, entry.reason), (*when, *reason));
        assert!(close(entry.score_after, *score), "{entry:?} vs {score}");
    }
}

#[test]
fn an_ip_is_banned_when_more_than_max_banned_per_ip_of_its_peers_are() {
    let mut rep: Reputation<u32> = Reputation::new(config());
    let ip: IpAddr = "198.51.100.7".parse().expect("ip");
    let other: IpAddr = "2001:db8::1".parse().expect("ip");
    for p in 20..23 {
        rep.note_ip(p, ip, at(0));
    }
    rep.note_ip(23, other, at(0));
    let ban = Action::Ban { until: at(HOUR) };
    assert_eq!(rep.report(20, Reason::MalformedFrame, at(0)), ban);
    // A banned peer from another IP does not count toward this one.
    assert_eq!(rep.report(23, Reason::MalformedFrame, at(0)), ban);
    assert_eq!(rep.report(21, Reason::MalformedFrame, at(0)), ban);
    assert!(
        !rep.is_ip_banned(&ip, at(0)),
        "2 banned peers: not more than 2"
    );
    assert_eq!(
        rep.report(22, Reason::MalformedFrame, at(0)),
        Action::BanWithIp {
            until: at(HOUR),
            ip
        }
    );
    assert!(rep.is_ip_banned(&ip, at(HOUR - 1)));
    assert!(!rep.is_ip_banned(&ip, at(HOUR)));
    assert!(!rep.is_ip_banned(&other, at(0)));
}

#[test]
fn bans_and_their_repeat_counts_survive_a_restart() {
    let mut rep: Reputation<u32> = Reputation::new(config());
    rep.report(5, Reason::InvalidBlock, at(0));
    let saved = rep.bans(at(1));
    assert_eq!(saved.len(), 1);
    let mut restarted: Reputation<u32> = Reputation::new(config());
    restarted.restore_bans(saved);
    assert!(restarted.is_banned(&5, at(HOUR - 1)));
    // After it expires, the next offence is a second ban: twice as long.
    assert_eq!(
        restarted.report(5, Reason::InvalidBlock, at(2 * HOUR)),
        Action::Ban {
            until: at(4 * HOUR)
        }
    );
}

/// Feeds every relay penalty and reward into `rep`.
fn settle(
    engine: &mut RelayEngine<usize>,
    rep: &mut Reputation<usize>,
    now: TimestampMs,
) -> Vec<RelayEvent<usize>> {
    let mut events = Vec::new();
    while let Some(e) = engine.poll_event() {
        match &e {
            RelayEvent::Penalty { peer, offence } => {
                rep.report(*peer, Reason::Relay(*offence), now);
            }
            RelayEvent::UsefulDelivery(peer) => {
                rep.report(*peer, Reason::Delivered, now);
            }
            _ => {}
        }
        events.push(e);
    }
    events
}

#[test]
fn late_blocks_and_forks_relayed_by_honest_peers_cost_them_nothing() {
    let sim = Sim::new(1, PropagationConfig::default());
    let mut host = FakeHost::for_tests(&sim);
    let mut engine: RelayEngine<usize> = RelayEngine::new(PropagationConfig::default(), 1);
    let mut rep: Reputation<usize> = Reputation::new(ReputationConfig::default());
    engine.add_peer(1, Capabilities::NONE);
    engine.add_peer(2, Capabilities::NONE);
    let key = &sim.producer;
    let build = |parent: &Block, ts: u64| {
        Block::build(
            key,
            parent.hash(),
            Height(parent.header.height.0 + 1),
            TimestampMs(ts),
            vec![],
        )
    };
    let b1 = build(&sim.genesis, 1_000);
    let f1 = build(&sim.genesis, 2_000);
    let f2 = build(&f1, 3_000);
    let f3 = build(&f2, 4_000);
    let f4 = build(&f3, 5_000);
    assert_eq!(host.submit_block(b1.clone()), BlockVerdict::Imported);
    let now = sim.now;
    let ts = TimestampMs(0);
    let send = |engine: &mut RelayEngine<usize>, host: &mut FakeHost, peer, msg| {
        engine.handle_message(now, peer, msg, host);
    };
    // Late: the block we already have, every way it can come.
    send(
        &mut engine,
        &mut host,
        1,
        RelayMessage::CompactBlock(CompactBlock::of(&b1)),
    );
    send(&mut engine, &mut host, 1, RelayMessage::Block(b1.clone()));
    send(
        &mut engine,
        &mut host,
        1,
        RelayMessage::Announce(vec![InvItem::Block(b1.hash())]),
    );
    // A competing fork at the same height, then its child (a reorg in the making).
    send(
        &mut engine,
        &mut host,
        1,
        RelayMessage::CompactBlock(CompactBlock::of(&f1)),
    );
    send(
        &mut engine,
        &mut host,
        2,
        RelayMessage::CompactBlock(CompactBlock::of(&f2)),
    );
    // A block whose parent we lack yet (the fork is deeper than what reached us).
    send(
        &mut engine,
        &mut host,
        2,
        RelayMessage::CompactBlock(CompactBlock::of(&f4)),
    );
    send(
        &mut engine,
        &mut host,
        1,
        RelayMessage::CompactBlock(CompactBlock::of(&f3)),
    );
    // And the fork again, late, from the other peer.
    send(&mut engine, &mut host, 2, RelayMessage::Block(f2.clone()));
    send(
        &mut engine,
        &mut host,
        1,
        RelayMessage::CompactBlock(CompactBlock::of(&f1)),
    );
    let events = settle(&mut engine, &mut rep, ts);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, RelayEvent::Penalty { .. })),
        "{events:?}"
    );
    assert!(events.contains(&RelayEvent::MissingParent {
        hash: f4.hash(),
        parent: f3.hash(),
        peer: 2
    }));
    for b in [&f1, &f2, &f3] {
        assert!(host.has_block(&b.hash()));
    }
    assert!(rep.score(&1, ts) > 0.0 && rep.score(&2, ts) >= 0.0);
}

#[test]
fn blocks_in_flight_when_sync_moves_on_cost_the_honest_peer_nothing() {
    let key = Keypair::from_secret(&[43; 32]);
    let mut remote = TestChain::new(&key);
    for b in TestChain::build_on(&remote.genesis_header(), &key, 64, 1_000) {
        assert!(remote.import(&b));
    }
    let client = TestChain::new(&key);
    let config = SyncConfig {
        blocks_per_request: 8,
        ..SyncConfig::default()
    };
    let mut sched: SyncScheduler<u8> = SyncScheduler::new(config);
    let mut rep: Reputation<u8> = Reputation::new(ReputationConfig::default());
    let now = Instant::now();
    // Peer 1 is the header source; peer 2 also serves bodies.
    sched.on_status(now, 1, remote.status(), &client);
    sched.on_status(now, 2, remote.status(), &client);
    let mut in_flight: Vec<(u8, RequestId, SyncRequest)> = Vec::new();
    let mut penalties = Vec::new();
    let mut pump = |sched: &mut SyncScheduler<u8>, in_flight: &mut Vec<_>| {
        while let Some(a) = sched.poll_action() {
            match a {
                SyncAction::Request { peer, id, request } => in_flight.push((peer, id, request)),
                SyncAction::Penalize { peer, reason } => penalties.push((peer, reason)),
                SyncAction::Disconnect { .. } => {}
            }
        }
    };
    // Answer every request but the bodies (headers, witness checks, statuses), until the
    // scheduler has body requests out to peer 2.
    for _ in 0..10 {
        pump(&mut sched, &mut in_flight);
        let (held, answer): (Vec<_>, Vec<_>) = in_flight
            .drain(..)
            .partition(|(_, _, r)| matches!(r, SyncRequest::GetBlocks(_)));
        in_flight = held;
        if answer.is_empty() {
            break;
        }
        for (peer, id, request) in answer {
            sched.on_response(now, peer, id, remote.answer(&request), &client);
        }
    }
    let to_2: Vec<(RequestId, SyncRequest)> = in_flight
        .iter()
        .filter(|(p, _, _)| *p == 2)
        .map(|(_, id, r)| (*id, r.clone()))
        .collect();
    assert!(!to_2.is_empty(), "peer 2 was asked for bodies");
    // The header source leaves: the sync chain is dropped and started again from peer 2, while
    // peer 2's body replies for the old chain are still on the wire. They arrive now.
    sched.remove_peer(now + Duration::from_millis(5), &1, &client);
    for (id, request) in to_2 {
        let reply = remote.answer(&request);
        sched.on_response(now + Duration::from_millis(10), 2, id, reply, &client);
    }
    pump(&mut sched, &mut in_flight);
    for (peer, reason) in &penalties {
        rep.report(*peer, *reason, TimestampMs(0));
    }
    assert!(penalties.is_empty(), "{penalties:?}");
    assert_eq!(rep.score(&2, TimestampMs(0)), 0.0);
    // Sync goes on from peer 2.
    assert!(
        in_flight
            .iter()
            .any(|(p, _, r)| *p == 2 && matches!(r, SyncRequest::GetHeaders { .. }))
    );
}
