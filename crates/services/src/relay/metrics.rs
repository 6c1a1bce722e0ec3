//! Wire counters: messages and bytes per relay message kind.

use playergold_protocol::relay::RelayMessage;

/// The kinds of relay messages, for per-kind counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// `Announce`.
    Announce,
    /// `Request`.
    Request,
    /// `NotFound`.
    NotFound,
    /// `Transactions`.
    Transactions,
    /// `CompactBlock`.
    CompactBlock,
    /// `BlockTxnsRequest`.
    BlockTxnsRequest,
    /// `BlockTxns`.
    BlockTxns,
    /// `Block` (a full block transfer).
    Block,
    /// `Challenge`.
    Challenge,
    /// `Solution`.
    Solution,
    /// `Verdict`.
    Verdict,
    /// `AnnounceTxs` (short ids).
    AnnounceTxs,
    /// `RequestTxs` (short ids).
    RequestTxs,
    /// `TxsNotFound` (short ids).
    TxsNotFound,
}

impl MessageKind {
    /// Every kind, in declaration order.
    pub const ALL: [MessageKind; 14] = [
        MessageKind::Announce,
        MessageKind::Request,
        MessageKind::NotFound,
        MessageKind::Transactions,
        MessageKind::CompactBlock,
        MessageKind::BlockTxnsRequest,
        MessageKind::BlockTxns,
        MessageKind::Block,
        MessageKind::Challenge,
        MessageKind::Solution,
        MessageKind::Verdict,
        MessageKind::AnnounceTxs,
        MessageKind::RequestTxs,
        MessageKind::TxsNotFound,
    ];

    /// The kind of `msg`.
    pub fn of(msg: &RelayMessage) -> MessageKind {
        match msg {
            RelayMessage::Announce(_) => MessageKind::Announce,
            RelayMessage::Request(_) => MessageKind::Request,
            RelayMessage::NotFound(_) => MessageKind::NotFound,
            RelayMessage::Transactions(_) => MessageKind::Transactions,
            RelayMessage::CompactBlock(_) => MessageKind::CompactBlock,
            RelayMessage::BlockTxnsRequest { .. } => MessageKind::BlockTxnsRequest,
            RelayMessage::BlockTxns { .. } => MessageKind::BlockTxns,
            RelayMessage::Block(_) => MessageKind::Block,
            RelayMessage::Challenge(_) => MessageKind::Challenge,
            RelayMessage::Solution { .. } => MessageKind::Solution,
            RelayMessage::Verdict(_) => MessageKind::Verdict,
            RelayMessage::AnnounceTxs(_) | RelayMessage::AnnounceTx(_) => MessageKind::AnnounceTxs,
            RelayMessage::RequestTxs(_) | RelayMessage::RequestTx(_) => MessageKind::RequestTxs,
            RelayMessage::TxsNotFound(_) => MessageKind::TxsNotFound,
        }
    }

    /// A short lowercase name (for metric labels).
    pub fn name(self) -> &'static str {
        match self {
            MessageKind::Announce => "announce",
            MessageKind::Request => "request",
            MessageKind::NotFound => "not_found",
            MessageKind::Transactions => "transactions",
            MessageKind::CompactBlock => "compact_block",
            MessageKind::BlockTxnsRequest => "block_txns_request",
            MessageKind::BlockTxns => "block_txns",
            MessageKind::Block => "block",
            MessageKind::Challenge => "challenge",
            MessageKind::Solution => "solution",
            MessageKind::Verdict => "verdict",
            MessageKind::AnnounceTxs => "announce_txs",
            MessageKind::RequestTxs => "request_txs",
            MessageKind::TxsNotFound => "txs_not_found",
        }
    }
}

/// Messages and bytes of one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageCounter {
    /// Messages.
    pub messages: u64,
    /// Bytes, including the varint frame header.
    pub bytes: u64,
}

/// Counters for every message kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WireCounters {
    counts: [MessageCounter; MessageKind::ALL.len()],
}

impl WireCounters {
    /// The counter of `kind`.
    pub fn get(&self, kind: MessageKind) -> MessageCounter {
        self.counts[kind as usize]
    }

    /// All kinds together.
    pub fn total(&self) -> MessageCounter {
        self.counts
            .iter()
            .fold(MessageCounter::default(), |acc, c| MessageCounter {
                messages: acc.messages + c.messages,
                bytes: acc.bytes + c.bytes,
            })
    }

    /// Counts one frame of `kind` carrying `bytes` (framing included).
    pub(crate) fn record(&mut self, kind: MessageKind, bytes: usize) {
        let c = &mut self.counts[kind as usize];
        c.messages += 1;
        c.bytes += bytes as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_index_their_own_counter() {
        let mut w = WireCounters::default();
        for (i, kind) in MessageKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, i, "ALL is in declaration order");
            w.record(*kind, i + 1);
        }
        assert_eq!(
            w.get(MessageKind::Block),
            MessageCounter {
                messages: 1,
                bytes: 8
            }
        );
        let n = MessageKind::ALL.len();
        assert_eq!(w.total().messages, n as u64);
        assert_eq!(w.total().bytes, (1..=n as u64).sum::<u64>());
        let msg = RelayMessage::Announce(Vec::new());
        assert_eq!(MessageKind::of(&msg), MessageKind::Announce);
    }
}
