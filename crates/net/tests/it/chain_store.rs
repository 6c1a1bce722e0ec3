//! The address book persists in the chain database (redb aux table) across a reopen.

use std::sync::Arc;

use playergold_chain::{Blockchain, ChainConfig, ProofOfAuthority};
use playergold_net::addrbook::AddrSource;
use playergold_net::{
    ADDRESS_BOOK_AUX_KEY, AddressBook, AddressBookStore, FnStore, Multiaddr, PeerId,
};
use playergold_primitives::{Genesis, Keypair, TimestampMs};

fn chain_store(chain: Arc<Blockchain>) -> impl AddressBookStore {
    let saver = chain.clone();
    FnStore::new(
        move || chain.store().get_aux(ADDRESS_BOOK_AUX_KEY),
        move |bytes: &[u8]| saver.store().put_aux(ADDRESS_BOOK_AUX_KEY, bytes),
    )
}

#[test]
fn the_address_book_persists_in_the_chain_database() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = Keypair::from_secret(&[5; 32]);
    let genesis =
        Genesis::devnet("addrnet", vec![key.public()], TimestampMs(0)).expect("valid genesis");
    let open = || {
        Arc::new(
            Blockchain::open(
                &dir.path().join("chain.redb"),
                genesis.clone(),
                Arc::new(ProofOfAuthority::from_genesis(&genesis)),
                ChainConfig::default(),
            )
            .expect("open chain"),
        )
    };
    let peer = PeerId::random();
    let addr: Multiaddr = "/ip4/127.0.0.1/tcp/30777".parse().expect("multiaddr");
    {
        let store = chain_store(open());
        let mut book = AddressBook::load(&store).expect("empty book");
        assert!(book.is_empty());
        book.add(peer, [addr.clone()], AddrSource::Manual);
        store.save(&book.encode()).expect("saved");
    }
    let reopened = AddressBook::load(&chain_store(open())).expect("stored book");
    let record = reopened.get(&peer).expect("peer survived the reopen");
    assert!(format!("{record:?}").contains("30777"));
}
