//! Relay frames (`/playergold/<network>/relay/1`): decode, round trip, item limits, and the AI
//! messages inside (Challenge, Solution, Verdict have no frame of their own: they arrive here).
#![no_main]

use libfuzzer_sys::fuzz_target;
use playergold_primitives::MAX_BLOCK_TXS;
use playergold_protocol::ai::{HashPuzzle, SolutionVerifier};
use playergold_protocol::relay::{MAX_ITEMS_PER_MESSAGE, MAX_RELAY_FRAME_BYTES, RelayMessage};

fuzz_target!(|data: &[u8]| {
    let Some(msg) = playergold_fuzz::round_trip::<RelayMessage>(data) else {
        return;
    };
    assert!(msg.encoded_len() <= MAX_RELAY_FRAME_BYTES);
    let _ = msg.class();
    match &msg {
        RelayMessage::Announce(v) | RelayMessage::Request(v) | RelayMessage::NotFound(v) => {
            assert!(v.len() <= MAX_ITEMS_PER_MESSAGE)
        }
        RelayMessage::AnnounceTxs(v)
        | RelayMessage::RequestTxs(v)
        | RelayMessage::TxsNotFound(v) => {
            assert!(v.len() <= MAX_ITEMS_PER_MESSAGE)
        }
        RelayMessage::Transactions(v) => assert!(v.len() <= MAX_ITEMS_PER_MESSAGE),
        RelayMessage::BlockTxns { txs, .. } => assert!(txs.len() <= MAX_BLOCK_TXS),
        RelayMessage::BlockTxnsRequest { indexes, .. } => assert!(indexes.len() <= MAX_BLOCK_TXS),
        RelayMessage::CompactBlock(c) => assert!(c.short_ids.len() <= MAX_BLOCK_TXS),
        RelayMessage::Block(b) => assert!(b.txs.len() <= MAX_BLOCK_TXS),
        RelayMessage::Challenge(c) => {
            let _ = (c.id(), c.verify());
        }
        RelayMessage::Solution {
            solution,
            challenge,
        } => {
            let _ = (solution.id(), solution.verify());
            if let Some(c) = challenge {
                let _ = c.verify();
                // The devnet verifier must refuse, not panic on, any task and result.
                let _ = HashPuzzle.verify(c, solution);
            }
        }
        // One id: nothing to bound.
        RelayMessage::AnnounceTx(_) | RelayMessage::RequestTx(_) => {}
        RelayMessage::Verdict(v) => {
            let _ = (v.id(), v.verify());
        }
    }
});
