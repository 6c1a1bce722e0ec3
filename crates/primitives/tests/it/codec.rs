use playergold_primitives::codec::{self, DecodeError, WireDecode};
use playergold_primitives::{
    Address, Amount, Block, BlockHash, BlockHeader, Genesis, Height, Keypair, MAX_BLOCK_TXS, Nonce,
    TimestampMs, Transaction, UnsignedTransaction,
};
use proptest::prelude::*;

fn arb_key() -> impl Strategy<Value = Keypair> {
    any::<[u8; 32]>().prop_map(|s| Keypair::from_secret(&s))
}

prop_compose! {
    fn arb_tx()(key in arb_key(), to in any::<[u8; 20]>(), amount in any::<u64>(), fee in any::<u64>(),
                nonce in any::<u64>(), ts in any::<u64>()) -> Transaction {
        UnsignedTransaction {
            from: key.public(),
            to: Address(to),
            amount: Amount(amount),
            fee: Amount(fee),
            nonce: Nonce(nonce),
            timestamp_ms: TimestampMs(ts),
        }
        .sign(&key)
    }
}

prop_compose! {
    fn arb_block()(key in arb_key(), parent in any::<[u8; 32]>(), height in any::<u64>(),
                   ts in any::<u64>(), txs in prop::collection::vec(arb_tx(), 0..8)) -> Block {
        Block::build(&key, BlockHash(parent), Height(height), TimestampMs(ts), txs)
    }
}

fn round_trip<T: WireDecode + serde::Serialize + PartialEq + std::fmt::Debug>(value: &T) {
    let bytes = codec::encode(value);
    assert_eq!(&codec::decode::<T>(&bytes).expect("round trip"), value);
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        codec::decode::<T>(&longer),
        Err(DecodeError::TrailingBytes { .. }) | Err(DecodeError::TooLarge { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn transactions_round_trip_and_verify(tx in arb_tx()) {
        round_trip(&tx);
        prop_assert!(tx.verify().is_ok());
        prop_assert!(tx.encoded_len() <= playergold_primitives::MAX_TX_BYTES);
    }

    #[test]
    fn blocks_and_headers_round_trip(block in arb_block()) {
        round_trip(&block);
        round_trip(&block.header);
        prop_assert!(block.verify_signatures(&block.tx_ids()).is_ok());
        prop_assert!(block.header.verify_signature().is_ok());
    }

    #[test]
    fn a_changed_field_changes_the_id_and_breaks_the_signature(tx in arb_tx(), delta in 1u64..) {
        let mut changed = tx.clone();
        changed.amount = Amount(tx.amount.0.wrapping_add(delta));
        prop_assert_ne!(changed.id(), tx.id());
        prop_assert!(changed.verify().is_err());
    }

    #[test]
    fn genesis_round_trips_through_postcard(keys in prop::collection::vec(arb_key(), 1..5), ts in any::<u64>()) {
        let mut validators: Vec<_> = keys.iter().map(Keypair::public).collect();
        validators.sort();
        validators.dedup();
        let g = Genesis::devnet("devnet", validators, TimestampMs(ts)).expect("valid");
        let back: Genesis = postcard::from_bytes(&codec::encode(&g)).expect("decodes");
        prop_assert_eq!(back.hash(), g.hash());
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = codec::decode::<Transaction>(&bytes);
        let _ = codec::decode::<BlockHeader>(&bytes);
        let _ = codec::decode::<Block>(&bytes);
    }

    #[test]
    fn mutated_encodings_never_panic(block in arb_block(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = codec::encode(&block);
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        if let Ok(decoded) = codec::decode::<Block>(&bytes) {
            // If it still decodes, re-encoding gives the same bytes (the encoding is canonical).
            prop_assert_eq!(codec::encode(&decoded), bytes);
        }
    }
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    let huge = vec![0u8; playergold_primitives::MAX_BLOCK_BYTES + 1];
    assert!(matches!(
        codec::decode::<Block>(&huge),
        Err(DecodeError::TooLarge { .. })
    ));
    let tx_sized = vec![0u8; playergold_primitives::MAX_TX_BYTES + 1];
    assert!(matches!(
        codec::decode::<Transaction>(&tx_sized),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn a_length_prefix_claiming_huge_counts_does_not_allocate_or_pass() {
    // A valid header followed by a varint claiming u32::MAX transactions and nothing else.
    let key = Keypair::from_secret(&[1; 32]);
    let block = Block::build(&key, BlockHash([0; 32]), Height(1), TimestampMs(1), vec![]);
    let mut bytes = codec::encode(&block.header);
    bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(matches!(
        codec::decode::<Block>(&bytes),
        Err(DecodeError::Malformed { .. })
    ));
}

#[test]
fn too_many_transactions_is_refused() {
    let key = Keypair::from_secret(&[1; 32]);
    let tx = UnsignedTransaction {
        from: key.public(),
        to: Address([0; 20]),
        amount: Amount(0),
        fee: Amount(0),
        nonce: Nonce(0),
        timestamp_ms: TimestampMs(0),
    }
    .sign(&key);
    // Identical txs encode small; the count check does not care about duplicates.
    let block = Block {
        header: Block::build(&key, BlockHash([0; 32]), Height(1), TimestampMs(1), vec![]).header,
        txs: vec![tx; MAX_BLOCK_TXS + 1],
    };
    let bytes = codec::encode(&block);
    assert!(matches!(
        codec::decode::<Block>(&bytes),
        Err(DecodeError::TooManyItems { .. }) | Err(DecodeError::TooLarge { .. })
    ));
}
