//! Relay frames: round trips, limits, hostile bytes.

use playergold_primitives::codec::{self, DecodeError};
use playergold_primitives::{BlockHash, TxId};
use playergold_protocol::relay::{InvItem, MAX_ITEMS_PER_MESSAGE, RelayMessage};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = codec::decode::<RelayMessage>(&bytes);
    }

    #[test]
    fn inventory_messages_round_trip(ids in prop::collection::vec(any::<[u8; 32]>(), 0..50), block in any::<bool>()) {
        let items: Vec<InvItem> = ids
            .iter()
            .map(|b| if block { InvItem::Block(BlockHash(*b)) } else { InvItem::Tx(TxId(*b)) })
            .collect();
        for msg in [RelayMessage::Announce(items.clone()), RelayMessage::Request(items.clone())] {
            let bytes = codec::encode(&msg);
            prop_assert_eq!(codec::decode::<RelayMessage>(&bytes).expect("round trip"), msg);
        }
    }
}

#[test]
fn too_many_items_are_refused() {
    let items = vec![InvItem::Tx(TxId([1; 32])); MAX_ITEMS_PER_MESSAGE + 1];
    let bytes = codec::encode(&RelayMessage::Announce(items));
    assert!(matches!(
        codec::decode::<RelayMessage>(&bytes),
        Err(DecodeError::TooManyItems { .. })
    ));
}
