//! Block validation and import paths.

use playergold_chain::{
    ChainBackend, ConsensusError, ImportError, ImportOutcome, MempoolError, TxStatus,
};
use playergold_primitives::{Amount, Block, Height, Keypair, TimestampMs, Transaction, TxId};

use crate::support::{Devnet, SLOT_MS, now, tx};

#[test]
fn valid_blocks_extend_the_chain_and_survive_reopen() {
    let net = Devnet::new(3);
    let chain = net.open("a.redb");
    let genesis = net.genesis.block().header;
    let b1 = net.child(&genesis, 1, vec![tx(1, 0, 5), tx(2, 0, 6)]);
    let b2 = net.child(&b1.header, 1, vec![tx(1, 1, 5)]);
    for b in [&b1, &b2] {
        let out = chain.import_block(b.clone(), now()).expect("valid");
        assert!(matches!(
            out,
            ImportOutcome::Imported {
                tip_change: Some(_),
                ..
            }
        ));
    }
    assert_eq!(chain.tip().height, Height(2));
    assert_eq!(
        chain.import_block(b2.clone(), now()).expect("known"),
        ImportOutcome::AlreadyKnown
    );
    assert_eq!(
        chain.tx_status(&tx(1, 1, 5).id()).expect("store"),
        TxStatus::Included {
            block: b2.hash(),
            height: Height(2)
        }
    );
    drop(chain);
    let reopened = net.open("a.redb");
    assert_eq!(reopened.tip().hash, b2.hash());
    assert_eq!(
        reopened.store().verify_consistency().expect("consistent"),
        Height(2)
    );
    assert_eq!(reopened.block(&b1.hash()).expect("store"), Some(b1));
}

#[test]
fn invalid_blocks_are_refused_with_the_right_reason() {
    let net = Devnet::new(3);
    let chain = net.open("a.redb");
    let g = net.genesis.block().header;
    let good = net.child(&g, 1, vec![tx(1, 0, 5)]);

    // Wrong height.
    let (key, ts) = net.slot_after(&g, 1);
    let bad = Block::build(key, g.hash(), Height(5), ts, vec![]);
    assert!(matches!(
        chain.import_block(bad, now()),
        Err(ImportError::BadHeight { .. })
    ));
    // Wrong producer for the slot.
    let (_, ts) = net.slot_after(&g, 1);
    let wrong_key = &net.keys[(((ts.0 / SLOT_MS) + 1) % 3) as usize];
    let bad = Block::build(wrong_key, g.hash(), Height(1), ts, vec![]);
    assert!(matches!(
        chain.import_block(bad, now()),
        Err(ImportError::Consensus(ConsensusError::WrongProducer { .. }))
    ));
    // Timestamp far in the future.
    let far = net.child(&g, 1_000_000_000, vec![]);
    let err = chain.import_block(far, now()).expect_err("future");
    assert!(matches!(err, ImportError::TimestampInFuture { .. }) && err.is_transient());
    // A tampered transaction: signatures fail (the merkle root is recomputed to match).
    let mut tampered = good.clone();
    tampered.txs[0].amount = Amount(999);
    let (key, ts) = net.slot_after(&g, 1);
    let tampered = Block::build(key, g.hash(), Height(1), ts, tampered.txs);
    assert!(matches!(
        chain.import_block(tampered, now()),
        Err(ImportError::BadSignature)
    ));
    // tx_root that does not match.
    let mut bad_root = good.clone();
    bad_root.txs.push(tx(9, 9, 9));
    assert!(matches!(
        chain.import_block(bad_root, now()),
        Err(ImportError::BadTxRoot)
    ));
    // Duplicate tx inside one block.
    let dup = net.child(&g, 1, vec![tx(1, 0, 5), tx(1, 0, 5)]);
    assert!(matches!(
        chain.import_block(dup, now()),
        Err(ImportError::DuplicateTx(_))
    ));
    // None of these changed anything; the good block still imports.
    assert_eq!(chain.tip().height, Height(0));
    chain.import_block(good.clone(), now()).expect("valid");
    // Same tx again later on the same branch.
    let replay = net.child(&good.header, 1, vec![tx(1, 0, 5)]);
    assert!(matches!(
        chain.import_block(replay, now()),
        Err(ImportError::DuplicateTx(_))
    ));
    // A block in the same slot as its parent, and one not after the median time.
    let same_slot = Block::build(
        &net.keys[((good.header.timestamp_ms.0 / SLOT_MS) % 3) as usize],
        good.hash(),
        Height(2),
        TimestampMs(good.header.timestamp_ms.0 + 1),
        vec![],
    );
    assert!(chain.import_block(same_slot, now()).is_err());
    assert_eq!(chain.tip().hash, good.hash());
    assert!(matches!(
        chain.import_block(net.genesis.block(), now()),
        Ok(ImportOutcome::AlreadyKnown)
    ));
}

#[test]
fn a_tx_on_a_side_branch_may_appear_on_the_other_branch() {
    let net = Devnet::new(3);
    let chain = net.open("a.redb");
    let g = net.genesis.block().header;
    let a1 = net.child(&g, 1, vec![tx(1, 0, 5)]);
    let b1 = net.child(&g, 2, vec![tx(1, 0, 5)]);
    chain.import_block(a1.clone(), now()).expect("a1");
    chain
        .import_block(b1.clone(), now())
        .expect("b1 on a side branch");
    // Extending b with the same tx again is a duplicate on b's branch.
    let b2 = net.child(&b1.header, 1, vec![tx(1, 0, 5)]);
    assert!(matches!(
        chain.import_block(b2, now()),
        Err(ImportError::DuplicateTx(_))
    ));
    // Equal work (1 each): the earlier timestamp, a1, stays best.
    assert_eq!(chain.tip().hash, a1.hash());
}

#[test]
fn orphans_connect_when_their_parent_arrives() {
    let net = Devnet::new(2);
    let chain = net.open("a.redb");
    let g = net.genesis.block().header;
    let b1 = net.child(&g, 1, vec![]);
    let b2 = net.child(&b1.header, 1, vec![]);
    let b3 = net.child(&b2.header, 1, vec![]);
    // b3 alone: its parent b2 is missing. With b2 too, the missing link is b1.
    assert_eq!(
        chain.import_block(b3.clone(), now()).expect("orphan"),
        ImportOutcome::Orphan { missing: b2.hash() }
    );
    assert_eq!(
        chain.import_block(b2.clone(), now()).expect("orphan"),
        ImportOutcome::Orphan { missing: b1.hash() }
    );
    assert_eq!(chain.orphan_count(), 2);
    match chain.import_block(b1.clone(), now()).expect("connects") {
        ImportOutcome::Imported {
            connected,
            tip_change: Some(change),
        } => {
            assert_eq!(connected, vec![b1.hash(), b2.hash(), b3.hash()]);
            assert_eq!(change.added, vec![b1.hash(), b2.hash(), b3.hash()]);
            assert!(!change.is_reorg());
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(chain.tip().hash, b3.hash());
    assert_eq!(chain.orphan_count(), 0);
}

#[test]
fn reorg_returns_transactions_to_the_mempool() {
    let net = Devnet::new(3);
    let chain = net.open("a.redb");
    let g = net.genesis.block().header;
    let t_a = tx(1, 0, 5);
    let t_common = tx(2, 0, 5);
    chain
        .submit_transaction(t_a.clone(), now())
        .expect("mempool");
    chain
        .submit_transaction(t_common.clone(), now())
        .expect("mempool");
    let a1 = net.child(&g, 1, vec![t_a.clone(), t_common.clone()]);
    chain.import_block(a1.clone(), now()).expect("a1");
    assert_eq!(chain.mempool_len(), 0);
    // A heavier branch (2 blocks) that includes only t_common.
    let b1 = net.child(&g, 2, vec![t_common.clone()]);
    let b2 = net.child(&b1.header, 1, vec![]);
    chain.import_block(b1.clone(), now()).expect("b1");
    match chain.import_block(b2.clone(), now()).expect("b2") {
        ImportOutcome::Imported {
            tip_change: Some(change),
            ..
        } => {
            assert_eq!(change.removed, vec![a1.hash()]);
            assert_eq!(change.added, vec![b1.hash(), b2.hash()]);
        }
        other => panic!("expected a reorg, got {other:?}"),
    }
    assert!(chain.mempool_contains(&t_a.id()), "t_a came back");
    assert!(
        !chain.mempool_contains(&t_common.id()),
        "t_common is on the new branch"
    );
    assert_eq!(
        chain.tx_status(&t_a.id()).expect("store"),
        TxStatus::Pending
    );
    assert!(matches!(
        chain.tx_status(&t_common.id()).expect("store"),
        TxStatus::Included { block, .. } if block == b1.hash()
    ));
    assert_eq!(
        chain.store().verify_consistency().expect("consistent"),
        Height(2)
    );
}

#[test]
fn locator_and_headers_after() {
    let net = Devnet::new(1);
    let chain = net.open("a.redb");
    let mut parent = net.genesis.block().header;
    for _ in 0..40 {
        let b = net.child(&parent, 1, vec![]);
        chain.import_block(b.clone(), now()).expect("valid");
        parent = b.header;
    }
    let locator = chain.block_locator();
    assert_eq!(locator[0], chain.tip().hash);
    assert_eq!(*locator.last().expect("non-empty"), chain.genesis_hash());
    assert!(locator.len() < 20);
    let h10 = chain.hash_at(Height(10)).expect("height 10");
    let headers = chain.headers_after(&[h10], 5).expect("store");
    assert_eq!(
        headers.iter().map(|h| h.height.0).collect::<Vec<_>>(),
        vec![11, 12, 13, 14, 15]
    );
}

#[test]
fn a_batch_keeps_the_valid_blocks_before_the_first_invalid_one() {
    let net = Devnet::new(2);
    let chain = net.open("a.redb");
    let g = net.genesis.block().header;
    let b1 = net.child(&g, 1, vec![tx(1, 0, 5)]);
    let b2 = net.child(&b1.header, 1, vec![tx(2, 0, 5)]);
    // b3 repeats b1's transaction: invalid on this branch.
    let b3 = net.child(&b2.header, 1, vec![tx(1, 0, 5)]);
    let b4 = net.child(&b3.header, 1, vec![]);
    let batch = chain.import_blocks(vec![b1.clone(), b2.clone(), b3.clone(), b4], now());
    assert_eq!(batch.outcomes.len(), 2);
    let (failed, error) = batch.error.expect("b3 is invalid");
    assert_eq!(failed, b3.hash());
    assert!(matches!(error, ImportError::DuplicateTx(_)));
    assert_eq!(chain.tip().hash, b2.hash());
    drop(chain);
    // The two valid blocks were committed durably.
    let reopened = net.open("a.redb");
    assert_eq!(reopened.tip().hash, b2.hash());
    assert_eq!(
        reopened.store().verify_consistency().expect("consistent"),
        Height(2)
    );
}

/// A transaction with its signature broken (same id: the id does not cover the signature).
fn forged(t: &Transaction) -> Transaction {
    let mut f = t.clone();
    f.signature.0[0] ^= 1;
    f
}

#[test]
fn a_batch_of_valid_transactions_is_accepted_whole() {
    let net = Devnet::new(1);
    let chain = net.open("a.redb");
    // Enough to be checked on several threads.
    let txs: Vec<Transaction> = (0..100u64).map(|n| tx((n % 7) as u8, n, 5)).collect();
    let ids: Vec<TxId> = txs.iter().map(Transaction::id).collect();
    let results = chain.submit_transactions(txs, now());
    assert_eq!(results, ids.iter().map(|id| Ok(*id)).collect::<Vec<_>>());
    assert_eq!(chain.mempool_len(), 100);
}

#[test]
fn one_bad_signature_in_a_batch_rejects_exactly_that_transaction() {
    let net = Devnet::new(1);
    let chain = net.open("a.redb");
    let mut txs: Vec<Transaction> = (0..64u64).map(|n| tx(3, n, 5)).collect();
    txs[37] = forged(&txs[37]);
    let bad = txs[37].id();
    let results = chain.submit_transactions(txs.clone(), now());
    for (i, (r, t)) in results.iter().zip(&txs).enumerate() {
        if i == 37 {
            assert_eq!(*r, Err(MempoolError::BadSignature(bad)));
        } else {
            assert_eq!(*r, Ok(t.id()), "tx {i}");
        }
    }
    assert_eq!(chain.mempool_len(), 63);
    assert!(!chain.mempool_contains(&bad));
}

/// The batched path gives, transaction by transaction, what one-by-one submission gives:
/// duplicates within and across batches, forged copies before and after the real one, included
/// and future-dated transactions.
#[test]
fn a_batch_gives_the_same_results_as_one_by_one_submission() {
    let net = Devnet::new(1);
    let batched = net.open("batched.redb");
    let single = net.open("single.redb");
    let g = net.genesis.block().header;
    let included = tx(9, 0, 5);
    let block = net.child(&g, 1, vec![included.clone()]);
    for chain in [&batched, &single] {
        chain.import_block(block.clone(), now()).expect("valid");
        chain
            .submit_transaction(tx(8, 0, 5), now())
            .expect("already pooled");
    }
    let a = tx(1, 0, 5);
    let b = tx(2, 0, 5);
    let c = tx(3, 0, 5);
    let mut future = tx(4, 0, 5).unsigned();
    future.timestamp_ms = TimestampMs(now().0 + 3_600_000);
    let future = future.sign(&Keypair::from_secret(&[104; 32]));
    let mut batch = vec![
        a.clone(),
        b.clone(),
        a.clone(),
        forged(&a),
        forged(&c),
        c.clone(),
        forged(&c),
        included.clone(),
        forged(&included),
        tx(8, 0, 5),
        future,
    ];
    // Twice the batch: everything is known the second time round.
    batch.extend(batch.clone());
    // One clock reading for both paths: errors carry `now`, and two readings can differ by a ms.
    let at = now();
    let one_by_one: Vec<_> = batch
        .iter()
        .map(|t| single.submit_transaction(t.clone(), at))
        .collect();
    let results = batched.submit_transactions(batch, at);
    assert_eq!(results, one_by_one);
    assert_eq!(results[0], Ok(a.id()));
    assert_eq!(results[2], Err(MempoolError::AlreadyKnown(a.id())));
    assert_eq!(results[4], Err(MempoolError::BadSignature(c.id())));
    assert_eq!(results[5], Ok(c.id()));
    assert_eq!(
        results[7],
        Err(MempoolError::AlreadyIncluded(included.id()))
    );
    assert!(matches!(
        results[10],
        Err(MempoolError::FromTheFuture { .. })
    ));
    assert_eq!(batched.mempool_len(), single.mempool_len());
}

/// Block import skips the signatures of transactions that entered the mempool as they are; a
/// block carrying a forged copy of a mempool transaction (same id, other signature) is still
/// refused.
#[test]
fn a_forged_copy_of_a_mempool_transaction_in_a_block_is_still_refused() {
    let net = Devnet::new(1);
    let chain = net.open("a.redb");
    let g = net.genesis.block().header;
    let t = tx(1, 0, 5);
    chain.submit_transaction(t.clone(), now()).expect("pooled");
    let bad = net.child(&g, 1, vec![forged(&t)]);
    assert!(matches!(
        chain.import_block(bad, now()),
        Err(ImportError::BadSignature)
    ));
    // The real one, from the mempool, imports (its signature is not checked twice).
    let good = net.child(&g, 1, vec![t.clone()]);
    chain.import_block(good, now()).expect("valid");
    assert!(!chain.mempool_contains(&t.id()));
}

/// Signatures checked ahead by the relay's readers (`preverify`) change no verdict: a forged
/// copy of a checked transaction (same id, another signature) is still refused, a forgery
/// checked ahead is not remembered, and a transaction checked ahead is accepted once.
#[test]
fn signatures_checked_ahead_change_no_verdict() {
    let net = Devnet::new(1);
    let ahead = net.open("ahead.redb");
    let single = net.open("single.redb");
    let a = tx(1, 0, 5);
    let b = tx(2, 0, 5);
    let c = tx(3, 0, 5);
    let seen = vec![a.clone(), forged(&a), forged(&c), c.clone(), b.clone()];
    assert_eq!(ahead.preverify(&seen), 3, "the three valid signatures");
    let batch = vec![
        forged(&a),
        a.clone(),
        forged(&c),
        c.clone(),
        b.clone(),
        a.clone(),
        forged(&b),
    ];
    let at = now();
    let one_by_one: Vec<_> = batch
        .iter()
        .map(|t| single.submit_transaction(t.clone(), at))
        .collect();
    assert_eq!(ahead.submit_transactions(batch, at), one_by_one);
    assert_eq!(one_by_one[0], Err(MempoolError::BadSignature(a.id())));
    assert_eq!(one_by_one[1], Ok(a.id()));
    assert_eq!(one_by_one[5], Err(MempoolError::AlreadyKnown(a.id())));
    // Pooled transactions are not checked ahead again.
    assert_eq!(ahead.preverify(&[a, b, c]), 0);
}
