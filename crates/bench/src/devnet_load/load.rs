//! The transaction load: `tps` signed transfers a second for a while, round-robin over the
//! nodes' APIs, one sender key per node with its own nonce sequence (built and signed as
//! `generate_load` in `crates/node/src/run.rs` does). Every id is kept for the inclusion check.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use playergold_primitives::{
    Address, Amount, Keypair, Nonce, TimestampMs, TxId, UnsignedTransaction,
};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use super::api::{ApiError, NodeApi};

/// Submissions in flight at once, all nodes together. At 100 tx/s and a few milliseconds per
/// answer a handful are; the bound caps the bench's sockets and memory when the nodes slow
/// down, and then slows the load instead (the report gives the rate reached).
const MAX_IN_FLIGHT: usize = 64;
/// How often the pacer tops up submissions to `elapsed × tps`: fine enough that 100 tx/s goes
/// out one at a time, not in bursts.
const LOAD_TICK: Duration = Duration::from_millis(10);
/// How long past the planned end the load may go on when the nodes answer too slowly to keep
/// the rate; what is not sent by then is reported as unsent.
pub(crate) const MAX_OVERRUN: Duration = Duration::from_secs(10);
/// Where every transfer goes (the devnet has no balances; any address does).
const RECIPIENT: Address = Address([0x11; 20]);

/// What the load did.
#[derive(Debug, Default)]
pub(crate) struct LoadOutcome {
    /// The id of every transaction sent, accepted or not.
    pub(crate) ids: Vec<TxId>,
    /// Transactions planned but not sent before the overrun deadline.
    pub(crate) unsent: u64,
    /// Accepted (HTTP 200, or 409: the node already had it from an earlier attempt, as every
    /// transaction the bench signs is new).
    pub(crate) accepted: u64,
    /// Refused by the node with an error status, per API error code.
    pub(crate) refused: BTreeMap<String, u64>,
    /// Failed without an answer (connection, timeout).
    pub(crate) failed: u64,
    /// The first errors met (at most two), for a person.
    pub(crate) first_errors: Vec<String>,
    /// From the first submission to the last answer.
    pub(crate) wall: Duration,
}

impl LoadOutcome {
    /// Transactions refused, all codes together.
    pub(crate) fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }

    fn tally(&mut self, result: Result<Result<TxId, ApiError>, tokio::task::JoinError>) {
        let error = match result {
            Ok(Ok(_)) => {
                self.accepted += 1;
                return;
            }
            Ok(Err(ApiError::Status { code, .. })) if code == "duplicate_transaction" => {
                self.accepted += 1;
                return;
            }
            Ok(Err(e)) => {
                match &e {
                    ApiError::Status { code, .. } => {
                        *self.refused.entry(code.clone()).or_default() += 1;
                    }
                    _ => self.failed += 1,
                }
                e.to_string()
            }
            Err(e) => {
                self.failed += 1;
                format!("submission task failed: {e}")
            }
        };
        // One example per class is enough to say what happened.
        if self.first_errors.len() < 2 {
            self.first_errors.push(error);
        }
    }
}

/// Submits `tps` transactions a second for `duration` to `apis` in turn; waits for every
/// answer (each bounded by the API client's timeout).
pub(crate) async fn drive(apis: &[Arc<NodeApi>], tps: u32, duration: Duration) -> LoadOutcome {
    let mut out = LoadOutcome::default();
    if apis.is_empty() || tps == 0 {
        return out;
    }
    let total = (f64::from(tps) * duration.as_secs_f64()).round() as u64;
    out.ids.reserve(usize::try_from(total).unwrap_or_default());
    let mut senders: Vec<(Keypair, u64)> = apis.iter().map(|_| (Keypair::generate(), 0)).collect();
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    let start = Instant::now();
    let deadline = start + duration + MAX_OVERRUN;
    let mut tick = tokio::time::interval(LOAD_TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut sent = 0u64;
    'load: while sent < total {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * f64::from(tps)) as u64).min(total);
        while sent < due {
            let permit =
                match tokio::time::timeout_at(deadline, permits.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    // Past the deadline (or, never, a closed semaphore): stop sending.
                    _ => break 'load,
                };
            let index = usize::try_from(sent).unwrap_or_default() % apis.len();
            let (Some((key, nonce)), Some(api)) = (senders.get_mut(index), apis.get(index)) else {
                break 'load;
            };
            let tx = UnsignedTransaction {
                from: key.public(),
                to: RECIPIENT,
                amount: Amount(1),
                fee: Amount(1),
                nonce: Nonce(*nonce),
                timestamp_ms: TimestampMs::now(),
            }
            .sign(key);
            *nonce += 1;
            sent += 1;
            out.ids.push(tx.id());
            let Ok(body) = serde_json::to_string(&tx) else {
                // Serialising these types cannot fail; count it rather than stop.
                out.failed += 1;
                continue;
            };
            let api = api.clone();
            tasks.spawn(async move {
                let result = api.submit(body).await;
                drop(permit);
                result
            });
            while let Some(done) = tasks.try_join_next() {
                out.tally(done);
            }
        }
    }
    out.unsent = total - sent;
    while let Some(done) = tasks.join_next().await {
        out.tally(done);
    }
    out.wall = start.elapsed();
    out
}
