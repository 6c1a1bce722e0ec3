//! The owning task: holds the scheduler, the server, the partition detector and the chain view;
//! drives requests, inbound streams, imports, timers and recovery.

use std::collections::{HashMap, HashSet};
use std::future::pending;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, StreamProtocol};
use libp2p_stream::IncomingStreams;
use playergold_chain::{BatchImport, Blockchain, ChainBackend, ImportOutcome};
use playergold_net::framing::framed_len;
use playergold_net::{NetworkEvent, NetworkHandle, PeerId};
use playergold_primitives::codec;
use playergold_primitives::{Block, BlockHash, TimestampMs};
use playergold_protocol::partition::{
    NetworkState, PartitionDetector, PartitionEvent, RecoveryAction, TipInfo,
};
use playergold_protocol::reputation::Reason;
use playergold_protocol::sync::{
    Status, SyncAction, SyncRequest, SyncResponse, SyncScheduler, SyncServer, SyncState,
};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::host::ChainView;
use super::io::{Inbound, Outcome, RequestFailure, Tag, accept_loop, request as request_task};
use super::{
    Command, INBOUND_CHANNEL_CAPACITY, OUTCOME_CHANNEL_CAPACITY, SyncEvent, SyncServiceConfig,
    SyncServiceMetrics, SyncStatus, peer_of,
};
use crate::relay::RelayServiceEvent;

/// Results of recovery dials waiting for the owner: at most one bootstrap round is running at a
/// time (the detector spaces them by a minute), so a few slots suffice; a full channel only
/// drops a reachability note that the next round repeats.
const RECOVERY_NOTES_CAPACITY: usize = 8;

/// Timer used while neither engine wants a wake-up (the detector always does; kept for safety).
const IDLE_WAKE: Duration = Duration::from_secs(3_600);

/// What the owner is given.
pub(crate) struct OwnerParts {
    pub(crate) network: NetworkHandle,
    pub(crate) chain: Arc<Blockchain>,
    pub(crate) config: SyncServiceConfig,
    pub(crate) protocol: StreamProtocol,
    pub(crate) incoming: IncomingStreams,
    pub(crate) relay_events: Option<broadcast::Receiver<RelayServiceEvent>>,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) events: broadcast::Sender<SyncEvent>,
}

/// A batch being imported on the blocking pool.
struct Import {
    done: oneshot::Receiver<BatchImport>,
    /// Each block's hash and the peer that delivered it, in import order.
    origins: Vec<(BlockHash, PeerId)>,
}

/// Notes from recovery tasks.
#[derive(Debug)]
enum RecoveryNote {
    /// A round of bootstrap dials ended; whether any bootstrap node answered.
    Bootstrap { reached: bool },
}

/// Adapter counters (the engines keep their own).
#[derive(Debug, Default)]
struct Counters {
    blocks_imported: u64,
    import_batches: u64,
    blocks_refused: u64,
    import_failures: u64,
    requests_sent: u64,
    request_failures: u64,
    inbound_requests: u64,
    inbound_refused: u64,
    malformed_frames: u64,
    bytes_in: u64,
    bytes_out: u64,
}

pub(crate) struct Owner {
    scheduler: SyncScheduler<PeerId>,
    server: SyncServer<PeerId>,
    detector: PartitionDetector<PeerId>,
    view: ChainView,
    network: NetworkHandle,
    net_events: broadcast::Receiver<NetworkEvent>,
    relay_events: Option<broadcast::Receiver<RelayServiceEvent>>,
    protocol: StreamProtocol,
    bootstrap: Vec<Multiaddr>,
    bootstrap_ids: HashSet<PeerId>,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<SyncEvent>,
    status: Option<watch::Sender<SyncStatus>>,
    incoming: Option<IncomingStreams>,
    inbound_tx: mpsc::Sender<Inbound>,
    inbound_rx: mpsc::Receiver<Inbound>,
    outcomes_tx: mpsc::Sender<Outcome>,
    outcomes_rx: mpsc::Receiver<Outcome>,
    notes_tx: mpsc::Sender<RecoveryNote>,
    notes_rx: mpsc::Receiver<RecoveryNote>,
    /// The acceptor, request tasks, disconnects and recovery dials; aborted when the owner stops.
    tasks: JoinSet<()>,
    import: Option<Import>,
    /// Statuses peers pushed while an import ran (the latest per connected peer).
    deferred_status: HashMap<PeerId, Status>,
    /// Connected peers (from network events).
    connected: HashSet<PeerId>,
    /// Connected peers that do not speak sync; forgotten when they disconnect.
    not_sync: HashSet<PeerId>,
    local_tip: Option<BlockHash>,
    sync_state: SyncState,
    network_state: NetworkState,
    counters: Counters,
}

fn tip_info(tip: &playergold_chain::ChainTip) -> TipInfo {
    TipInfo {
        hash: tip.hash,
        height: tip.height,
        work: tip.cumulative_work,
    }
}

impl Owner {
    pub(crate) fn new(parts: OwnerParts) -> Owner {
        let now = Instant::now();
        let config = parts.config;
        let capabilities = config.sync.capabilities;
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_CHANNEL_CAPACITY);
        let (outcomes_tx, outcomes_rx) = mpsc::channel(OUTCOME_CHANNEL_CAPACITY);
        let (notes_tx, notes_rx) = mpsc::channel(RECOVERY_NOTES_CAPACITY);
        let mut detector = PartitionDetector::new(config.partition, now);
        let validators = !parts.chain.genesis().validators.is_empty();
        detector.set_producers_expected(now, validators);
        let tip = parts.chain.tip();
        detector.on_local_tip(now, tip_info(&tip));
        let bootstrap_ids = config.bootstrap.iter().filter_map(peer_of).collect();
        Owner {
            scheduler: SyncScheduler::new(config.sync),
            server: SyncServer::with_rate(config.serve_rate_per_sec, config.serve_burst),
            detector,
            view: ChainView::new(parts.chain, capabilities),
            net_events: parts.network.subscribe(),
            network: parts.network,
            relay_events: parts.relay_events,
            protocol: parts.protocol,
            bootstrap: config.bootstrap,
            bootstrap_ids,
            commands: parts.commands,
            events: parts.events,
            status: None,
            incoming: Some(parts.incoming),
            inbound_tx,
            inbound_rx,
            outcomes_tx,
            outcomes_rx,
            notes_tx,
            notes_rx,
            tasks: JoinSet::new(),
            import: None,
            deferred_status: HashMap::new(),
            connected: HashSet::new(),
            not_sync: HashSet::new(),
            local_tip: Some(tip.hash),
            sync_state: SyncState::Idle,
            network_state: NetworkState::Healthy,
            counters: Counters::default(),
        }
    }

    /// The status before the task has run.
    pub(crate) fn initial_status(&self) -> SyncStatus {
        SyncStatus {
            progress: self.scheduler.progress(Instant::now(), &self.view),
            network: self.detector.state(),
            peers: 0,
        }
    }

    pub(crate) fn with_status(mut self, status: watch::Sender<SyncStatus>) -> Owner {
        self.status = Some(status);
        self
    }

    pub(crate) async fn run(mut self) {
        if let Some(incoming) = self.incoming.take() {
            self.tasks
                .spawn(accept_loop(incoming, self.inbound_tx.clone()));
        }
        // Peers that connected before we subscribed.
        self.resync_peers().await;
        loop {
            self.turn().await;
            let importing = self.import.is_some();
            let wake = if importing {
                // Only the detector's clock runs while the scheduler waits for the import.
                self.detector.poll_timeout()
            } else {
                self.scheduler
                    .poll_timeout()
                    .map_or(self.detector.poll_timeout(), |t| {
                        t.min(self.detector.poll_timeout())
                    })
            };
            let wake = wake.min(Instant::now() + IDLE_WAKE);
            tokio::select! {
                // Local work first, then the import (it unblocks the scheduler), then replies to
                // our requests (before the timer, so a reply that arrived is never counted as a
                // stall), then remote work.
                biased;
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown(reply)) => {
                        self.stop().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(command) => self.on_command(command),
                    None => break,
                },
                done = async {
                    match self.import.as_mut() {
                        Some(import) => (&mut import.done).await,
                        None => pending().await,
                    }
                } => self.on_imported(done),
                Some(outcome) = self.outcomes_rx.recv(), if !importing => {
                    self.on_outcome(outcome).await
                }
                Some(inbound) = self.inbound_rx.recv() => self.on_inbound(inbound),
                event = self.net_events.recv(), if !importing => match event {
                    Ok(event) => self.on_network_event(event),
                    Err(RecvError::Lagged(_)) => self.resync_peers().await,
                    Err(RecvError::Closed) => break,
                },
                event = async {
                    match self.relay_events.as_mut() {
                        Some(events) => events.recv().await,
                        None => pending().await,
                    }
                }, if !importing => match event {
                    Ok(event) => self.on_relay_event(event),
                    // Missed orphan triggers are covered by the periodic status poll.
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => self.relay_events = None,
                },
                Some(note) = self.notes_rx.recv() => self.on_recovery_note(note),
                () = tokio::time::sleep_until(wake.into()) => {}
                Some(_) = self.tasks.join_next() => {}
            }
        }
        self.stop().await;
    }

    /// Waits for a running import (so the chain is consistent and released), then stops every
    /// task.
    async fn stop(&mut self) {
        if let Some(import) = self.import.take() {
            let _ = import.done.await;
        }
        self.tasks.shutdown().await;
    }

    fn emit(&self, event: SyncEvent) {
        // No subscriber is fine: events are informational.
        let _ = self.events.send(event);
    }

    /// Bookkeeping after every wake-up: due timers, actions, ready blocks, the published
    /// status, the detector. While an import runs, the scheduler and the chain are left alone
    /// (the import holds the chain's lock); only the detector's clock runs.
    async fn turn(&mut self) {
        if self.import.is_none() {
            // Replies that arrived while an import ran go first: a reply that is here is never
            // counted as a stall.
            while let Ok(outcome) = self.outcomes_rx.try_recv() {
                self.on_outcome(outcome).await;
            }
            let now = Instant::now();
            if self.scheduler.poll_timeout().is_some_and(|t| t <= now) {
                self.scheduler.handle_timeout(now, &self.view);
            }
            self.drain_actions(now);
            let ready = self.scheduler.take_ready(now, &self.view);
            self.drain_actions(now);
            let tip = self.view.chain().tip();
            if self.local_tip != Some(tip.hash) {
                self.local_tip = Some(tip.hash);
                self.detector.on_local_tip(now, tip_info(&tip));
            }
            self.publish(now);
            // Last: from here on the chain is busy with this batch.
            if !ready.is_empty() {
                self.start_import(ready);
            }
        }
        self.partition(Instant::now());
    }

    /// Carries out what the scheduler asked for.
    fn drain_actions(&mut self, now: Instant) {
        while let Some(action) = self.scheduler.poll_action() {
            match action {
                SyncAction::Request { peer, id, request } => {
                    if !self.connected.contains(&peer) || self.not_sync.contains(&peer) {
                        // A peer we only heard of (a relay event) or that does not speak sync:
                        // opening a stream would dial it. Not its fault.
                        self.scheduler.remove_peer(now, &peer, &self.view);
                        continue;
                    }
                    self.send_request(peer, Tag::Scheduler(id), &request);
                }
                SyncAction::Penalize { peer, reason } => self.penalize(peer, reason),
                SyncAction::Disconnect { peer, penalize } => {
                    tracing::info!(%peer, penalized = penalize, "sync disconnects a peer");
                    self.emit(SyncEvent::Disconnected {
                        peer,
                        penalized: penalize,
                    });
                    let network = self.network.clone();
                    self.tasks.spawn(async move {
                        // Fails only if the peer is already gone.
                        let _ = network.disconnect(peer).await;
                    });
                }
            }
        }
    }

    fn penalize(&self, peer: PeerId, reason: Reason) {
        tracing::debug!(%peer, ?reason, "sync penalty");
        self.emit(SyncEvent::Penalty { peer, reason });
    }

    fn send_request(&mut self, peer: PeerId, tag: Tag, request: &SyncRequest) {
        let payload = codec::encode(request);
        self.counters.requests_sent += 1;
        self.counters.bytes_out += framed_len(payload.len()) as u64;
        self.tasks.spawn(request_task(
            self.network.clone(),
            self.protocol.clone(),
            peer,
            tag,
            payload,
            self.outcomes_tx.clone(),
        ));
    }

    fn start_import(&mut self, ready: Vec<(Block, PeerId)>) {
        let origins: Vec<(BlockHash, PeerId)> = ready.iter().map(|(b, p)| (b.hash(), *p)).collect();
        let blocks: Vec<Block> = ready.into_iter().map(|(b, _)| b).collect();
        let chain = self.view.chain().clone();
        let (tx, done) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let result = chain.import_blocks(blocks, TimestampMs::now());
            // Release the chain before reporting: a shutdown that waited for this import must
            // find the chain free to reopen.
            drop(chain);
            // Fails only when the owner is gone.
            let _ = tx.send(result);
        });
        self.import = Some(Import { done, origins });
    }

    fn on_imported(&mut self, done: Result<BatchImport, oneshot::error::RecvError>) {
        let Some(import) = self.import.take() else {
            return;
        };
        let now = Instant::now();
        self.counters.import_batches += 1;
        let Ok(batch) = done else {
            // The import task died (a panic in the chain): nothing can be assumed stored.
            tracing::error!("the sync import task failed; restarting from the stored tip");
            self.counters.import_failures += 1;
            self.scheduler.on_import_failed(now, &self.view);
            self.after_import(now);
            return;
        };
        let mut stored = 0;
        let mut reorg = false;
        for outcome in &batch.outcomes {
            if let ImportOutcome::Imported { tip_change, .. } = outcome {
                stored += 1;
                reorg |= tip_change.as_ref().is_some_and(|c| c.is_reorg());
            }
        }
        self.counters.blocks_imported += stored;
        if stored > 0 {
            let tip = self.view.chain().tip();
            if reorg {
                tracing::info!(height = tip.height.0, tip = %tip.hash, "sync switched to a heavier branch");
            }
            tracing::debug!(
                blocks = stored,
                height = tip.height.0,
                "sync imported a batch"
            );
            self.emit(SyncEvent::Imported {
                blocks: stored as usize,
                hash: tip.hash,
                height: tip.height,
                reorg,
            });
        }
        if let Some((hash, error)) = batch.error {
            let peer = import
                .origins
                .iter()
                .find(|(h, _)| *h == hash)
                .map(|(_, p)| *p);
            match peer {
                Some(peer) if error.is_peer_fault() && !error.is_transient() => {
                    tracing::info!(%peer, block = %hash, %error, "a peer delivered a block the chain refuses");
                    self.counters.blocks_refused += 1;
                    self.scheduler.on_invalid_block(now, peer, &self.view);
                }
                _ => {
                    tracing::warn!(block = %hash, %error, "sync could not store a block (not the peer's fault)");
                    self.counters.import_failures += 1;
                    self.scheduler.on_import_failed(now, &self.view);
                }
            }
        }
        self.after_import(now);
    }

    /// Applies what waited for the import.
    fn after_import(&mut self, now: Instant) {
        for (peer, status) in std::mem::take(&mut self.deferred_status) {
            self.on_peer_status(now, peer, status);
        }
    }

    /// A peer's status (its handshake reply or its own status request): to the scheduler and
    /// the detector.
    fn on_peer_status(&mut self, now: Instant, peer: PeerId, status: Status) {
        if !self.connected.contains(&peer) {
            return;
        }
        if self.import.is_some() {
            self.deferred_status.insert(peer, status);
            return;
        }
        self.observe_tip(now, peer, &status);
        self.scheduler.on_status(now, peer, status, &self.view);
    }

    /// Feeds a peer's tip to the detector.
    fn observe_tip(&mut self, now: Instant, peer: PeerId, status: &Status) {
        if status.genesis != self.view.chain().genesis_hash() {
            return;
        }
        let on_our_chain = self.view.chain().hash_at(status.best_height) == Some(status.best_hash);
        let tip = TipInfo {
            hash: status.best_hash,
            height: status.best_height,
            work: status.cumulative_work,
        };
        self.detector.on_peer_tip(now, peer, tip, on_our_chain);
    }

    async fn on_outcome(&mut self, outcome: Outcome) {
        let now = Instant::now();
        let Outcome { peer, tag, result } = outcome;
        if !self.connected.contains(&peer) {
            // It left meanwhile; `remove_peer` already gave its work to others.
            return;
        }
        match result {
            Ok((response, bytes)) => {
                self.counters.bytes_in += bytes as u64;
                match tag {
                    Tag::Handshake => match response {
                        SyncResponse::Status(status) => self.on_peer_status(now, peer, status),
                        // Busy to a handshake: the periodic status poll asks again.
                        SyncResponse::Busy { .. } => {}
                        _ => self.penalize(
                            peer,
                            Reason::Relay(playergold_protocol::relay::Offence::MalformedReply),
                        ),
                    },
                    Tag::Scheduler(id) => {
                        if let SyncResponse::Status(status) = &response {
                            self.observe_tip(now, peer, status);
                        }
                        self.scheduler
                            .on_response(now, peer, id, response, &self.view);
                    }
                }
            }
            Err(failure) => {
                self.counters.request_failures += 1;
                tracing::debug!(%peer, %failure, "sync request failed");
                match failure {
                    RequestFailure::Unsupported => {
                        self.not_sync.insert(peer);
                        self.scheduler.remove_peer(now, &peer, &self.view);
                    }
                    RequestFailure::Malformed(_) => {
                        self.counters.malformed_frames += 1;
                        self.penalize(peer, Reason::MalformedFrame);
                        if let Tag::Scheduler(id) = tag {
                            self.scheduler.on_request_failed(now, peer, id, &self.view);
                        }
                    }
                    RequestFailure::Stream(_) | RequestFailure::Timeout => {
                        if let Tag::Scheduler(id) = tag {
                            if self.still_connected(peer).await {
                                self.scheduler.on_request_failed(now, peer, id, &self.view);
                            } else {
                                // The connection went down: not a stall. Its disconnect event
                                // follows.
                                self.scheduler.remove_peer(now, &peer, &self.view);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Whether the network still has a connection to `peer` (our view lags its events).
    async fn still_connected(&self, peer: PeerId) -> bool {
        self.network
            .peers()
            .await
            .is_ok_and(|peers| peers.iter().any(|p| p.peer == peer))
    }

    fn on_inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Request {
                peer,
                request,
                bytes,
                reply,
            } => {
                let now = Instant::now();
                self.counters.inbound_requests += 1;
                self.counters.bytes_in += bytes as u64;
                let pushed = match &request {
                    SyncRequest::Status(status) => Some(status.clone()),
                    _ => None,
                };
                let response = self.server.serve(now, peer, request, &self.view);
                let payload = codec::encode(&response);
                self.counters.bytes_out += framed_len(payload.len()) as u64;
                // Fails only if the reader gave up.
                let _ = reply.send(payload);
                if let Some(status) = pushed {
                    self.on_peer_status(now, peer, status);
                }
            }
            Inbound::Malformed { peer, error } => {
                tracing::info!(%peer, %error, "malformed sync request");
                self.counters.malformed_frames += 1;
                self.penalize(peer, Reason::MalformedFrame);
            }
            Inbound::Refused { peer } => {
                tracing::debug!(%peer, "sync stream over the concurrency limits");
                self.counters.inbound_refused += 1;
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Metrics(reply) => {
                let _ = reply.send(self.metrics());
            }
            Command::Report(reply) => {
                let _ = reply.send(self.detector.report(Instant::now()));
            }
            // Handled in `run`.
            Command::Shutdown(reply) => {
                let _ = reply.send(());
            }
        }
    }

    fn metrics(&self) -> SyncServiceMetrics {
        let c = &self.counters;
        SyncServiceMetrics {
            scheduler: self.scheduler.metrics(),
            server: self.server.metrics(),
            blocks_imported: c.blocks_imported,
            import_batches: c.import_batches,
            blocks_refused: c.blocks_refused,
            import_failures: c.import_failures,
            requests_sent: c.requests_sent,
            request_failures: c.request_failures,
            inbound_requests: c.inbound_requests,
            inbound_refused: c.inbound_refused,
            malformed_frames: c.malformed_frames,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            peers: self.connected.len(),
            pending_headers: self.scheduler.pending_headers(),
            in_flight: self.scheduler.in_flight(),
            network_state: self.detector.state(),
        }
    }

    fn on_network_event(&mut self, event: NetworkEvent) {
        let now = Instant::now();
        match event {
            NetworkEvent::PeerConnected { peer, .. } => self.on_connected(now, peer),
            NetworkEvent::PeerDisconnected { peer } => self.on_disconnected(now, peer),
            _ => {}
        }
    }

    /// A new connection: the status handshake.
    fn on_connected(&mut self, now: Instant, peer: PeerId) {
        if !self.connected.insert(peer) {
            return;
        }
        self.detector.on_peer_connected(now, peer);
        if self.bootstrap_ids.contains(&peer) {
            self.detector.set_bootstrap_reachable(true);
        }
        self.scheduler.add_peer(peer);
        let status = SyncScheduler::<PeerId>::status_request(
            &self.view,
            self.scheduler.config().capabilities,
        );
        self.send_request(peer, Tag::Handshake, &SyncRequest::Status(status));
    }

    fn on_disconnected(&mut self, now: Instant, peer: PeerId) {
        if !self.connected.remove(&peer) {
            return;
        }
        self.not_sync.remove(&peer);
        self.deferred_status.remove(&peer);
        self.server.remove_peer(&peer);
        self.detector.on_peer_disconnected(now, &peer);
        self.scheduler.remove_peer(now, &peer, &self.view);
    }

    /// Brings our view of the connected peers in line with the network's.
    async fn resync_peers(&mut self) {
        let Ok(peers) = self.network.peers().await else {
            return;
        };
        let now = Instant::now();
        let live: HashSet<PeerId> = peers.iter().map(|p| p.peer).collect();
        let gone: Vec<PeerId> = self.connected.difference(&live).copied().collect();
        for peer in gone {
            self.on_disconnected(now, peer);
        }
        for peer in live {
            self.on_connected(now, peer);
        }
    }

    fn on_relay_event(&mut self, event: RelayServiceEvent) {
        let now = Instant::now();
        match event {
            RelayServiceEvent::MissingParent { hash, peer, .. }
                if self.connected.contains(&peer) && !self.not_sync.contains(&peer) =>
            {
                tracing::debug!(%peer, block = %hash, "orphan from the relay: sync fetches its ancestors");
                self.scheduler.on_orphan(now, peer, hash, &self.view);
            }
            RelayServiceEvent::NewBlock {
                hash,
                from: Some(peer),
                ..
            } => {
                // The peer has this block: a fresh look at its tip for the detector.
                let chain = self.view.chain();
                let (Some(key), Ok(Some(header))) = (chain.fork_key(&hash), chain.header(&hash))
                else {
                    return;
                };
                let on_our_chain = chain.hash_at(header.height) == Some(hash);
                let tip = TipInfo {
                    hash,
                    height: header.height,
                    work: key.work,
                };
                if self.connected.contains(&peer) {
                    self.detector.on_peer_tip(now, peer, tip, on_our_chain);
                }
            }
            _ => {}
        }
    }

    /// Publishes the status and state changes.
    fn publish(&mut self, now: Instant) {
        let progress = self.scheduler.progress(now, &self.view);
        if progress.state != self.sync_state {
            let from = self.sync_state;
            self.sync_state = progress.state;
            tracing::info!(
                from = %from,
                to = %progress.state,
                height = progress.height.0,
                target = progress.target_height.0,
                "sync state changed"
            );
            self.emit(SyncEvent::StateChanged {
                from,
                to: progress.state,
            });
        }
        let syncing = matches!(progress.state, SyncState::Headers | SyncState::Blocks);
        self.detector.set_syncing(now, syncing);
        let status = SyncStatus {
            progress,
            network: self.detector.state(),
            peers: self.connected.len(),
        };
        if let Some(tx) = &self.status {
            tx.send_if_modified(|old| {
                let changed = *old != status;
                *old = status;
                changed
            });
        }
    }

    /// Runs the detector: recovery actions due, state changes.
    fn partition(&mut self, now: Instant) {
        // Opening and closing the extra outbound slot go to the network in the order the
        // detector asked (a rotation closes the slot, then opens it again), from one task.
        let mut extra = Vec::new();
        while let Some(action) = self.detector.poll_action(now) {
            match action {
                RecoveryAction::AddExtraOutboundPeer => extra.push(true),
                RecoveryAction::RemoveExtraOutboundPeer => extra.push(false),
                _ => {}
            }
            self.recover(action);
        }
        if !extra.is_empty() {
            let network = self.network.clone();
            self.tasks.spawn(async move {
                for open in extra {
                    if let Err(e) = network.set_extra_outbound(open).await {
                        tracing::debug!(open, error = %e, "extra outbound slot not changed");
                    }
                }
            });
        }
        while let Some(PartitionEvent::StateChanged { from, to, report }) =
            self.detector.poll_event()
        {
            self.network_state = to;
            tracing::info!(
                from = %from,
                to = %to,
                peers = report.peers,
                low_peers = report.low_peers,
                stale_tip = report.stale_tip,
                ms_since_new_block = report.ms_since_new_block,
                diverging_peers = report.diverging_peers,
                bootstrap_unreachable = report.bootstrap_unreachable,
                "network state changed"
            );
            self.emit(SyncEvent::NetworkStateChanged { from, to, report });
        }
        if let Some(tx) = &self.status {
            let network = self.network_state;
            tx.send_if_modified(|old| {
                let changed = old.network != network;
                old.network = network;
                changed
            });
        }
    }

    /// Starts a recovery action (the extra outbound slot is changed by the caller, in order).
    fn recover(&mut self, action: RecoveryAction) {
        let carried_out = match action {
            RecoveryAction::RedialBootstrap if !self.bootstrap.is_empty() => {
                let network = self.network.clone();
                let addrs = self.bootstrap.clone();
                let notes = self.notes_tx.clone();
                self.tasks.spawn(async move {
                    let mut reached = false;
                    for addr in addrs {
                        match network.connect(addr.clone()).await {
                            Ok(_) => reached = true,
                            Err(e) => tracing::debug!(%addr, error = %e, "bootstrap redial failed"),
                        }
                    }
                    let _ = notes.try_send(RecoveryNote::Bootstrap { reached });
                });
                true
            }
            RecoveryAction::DhtRandomWalk => {
                let network = self.network.clone();
                self.tasks.spawn(async move {
                    // The peers found go to the address book, which the connection manager
                    // dials from.
                    match network.closest_peers(PeerId::random()).await {
                        Ok(found) => tracing::debug!(found = found.len(), "DHT random walk"),
                        Err(e) => tracing::debug!(error = %e, "DHT random walk failed"),
                    }
                });
                true
            }
            RecoveryAction::RedialAddressBook => {
                let network = self.network.clone();
                self.tasks.spawn(async move {
                    match network.redial_address_book().await {
                        Ok(dials) => tracing::debug!(dials, "address book redialled"),
                        Err(e) => tracing::debug!(error = %e, "address book redial failed"),
                    }
                });
                true
            }
            RecoveryAction::AddExtraOutboundPeer | RecoveryAction::RemoveExtraOutboundPeer => true,
            // No bootstrap nodes configured.
            RecoveryAction::RedialBootstrap => false,
        };
        tracing::debug!(?action, carried_out, "partition recovery");
        self.emit(SyncEvent::Recovery {
            action,
            carried_out,
        });
    }

    fn on_recovery_note(&mut self, note: RecoveryNote) {
        match note {
            RecoveryNote::Bootstrap { reached } => {
                let connected = self
                    .connected
                    .iter()
                    .any(|p| self.bootstrap_ids.contains(p));
                self.detector.set_bootstrap_reachable(reached || connected);
            }
        }
    }
}
