//! The owning task: holds the engine and the chain host, drives peers' streams, timers, commands.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use libp2p::StreamProtocol;
use libp2p_stream::{Control, IncomingStreams};
use playergold_chain::Blockchain;
use playergold_net::framing::encode_frame;
use playergold_net::{NetworkEvent, NetworkHandle, PeerId};
use playergold_primitives::BlockHash;
use playergold_primitives::codec;
use playergold_protocol::Capabilities;
use playergold_protocol::relay::{
    BlockVerdict, PropagationConfig, RelayEngine, RelayEvent, RelayMessage,
};
use playergold_protocol::reputation::Reason;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, Semaphore, broadcast, mpsc};
use tokio::task::{AbortHandle, JoinSet};
use tracing::Instrument;

use super::host::ChainHost;
use super::io::{
    Inbound, SharedStream, WriteFailure, Writer, WriterNote, accept_loop, reopen_delay,
};
use super::metrics::{MessageKind, WireCounters};
use super::{
    Command, INBOUND_BATCH, INBOUND_BUFFER_BYTES, INBOUND_CHANNEL_CAPACITY, MAX_FRAME_SIZE,
    MAX_STREAM_OPENS, RelayError, RelayHello, RelayPeer, RelayServiceEvent, RelayServiceMetrics,
    WRITER_QUEUE_FRAMES,
};

/// Writer notes waiting for the owner: at most two per writer session (opened, failed), and
/// writers simply wait when it is full.
const WRITER_NOTES_CAPACITY: usize = 64;

/// Timer used while the engine wants no wake-up.
const IDLE_WAKE: Duration = Duration::from_secs(3_600);

/// What the owner is given.
pub(crate) struct OwnerParts {
    pub(crate) network: NetworkHandle,
    pub(crate) chain: Arc<Blockchain>,
    pub(crate) config: PropagationConfig,
    pub(crate) protocol: StreamProtocol,
    pub(crate) hello: RelayHello,
    pub(crate) incoming: IncomingStreams,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) events: broadcast::Sender<RelayServiceEvent>,
}

/// The owner's side of one peer's writer.
struct WriterSlot {
    frames: mpsc::Sender<Vec<u8>>,
    shared: Arc<SharedStream>,
    wants_room: Arc<AtomicBool>,
    task: AbortHandle,
}

/// A relay peer.
struct PeerSlot {
    /// Identifies the current writer; notes from older ones are ignored.
    session: u64,
    /// `None` until the network reports the connection: libp2p-stream can only open a stream
    /// on a connection it has registered, and would otherwise try to dial the peer.
    writer: Option<WriterSlot>,
    /// Writers started on this connection.
    opens: u8,
    outbound_open: bool,
    inbound_open: bool,
    capabilities: Capabilities,
    ready: bool,
}

pub(crate) struct Owner {
    engine: RelayEngine<PeerId>,
    host: ChainHost,
    network: NetworkHandle,
    net_events: broadcast::Receiver<NetworkEvent>,
    control: Control,
    protocol: StreamProtocol,
    hello: Arc<Vec<u8>>,
    genesis: BlockHash,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<RelayServiceEvent>,
    incoming: Option<IncomingStreams>,
    inbound_tx: mpsc::Sender<Inbound>,
    inbound_rx: mpsc::Receiver<Inbound>,
    inbound_budget: Arc<Semaphore>,
    notes_tx: mpsc::Sender<WriterNote>,
    notes_rx: mpsc::Receiver<WriterNote>,
    room: Arc<Notify>,
    /// The acceptor, writers and disconnect calls; all aborted when the owner stops.
    tasks: JoinSet<()>,
    peers: HashMap<PeerId, PeerSlot>,
    /// Peers we dropped (or that do not speak the relay), ignored until they disconnect.
    /// Bounded by the connected peers: entries leave on disconnect and on every resync.
    dropped: HashSet<PeerId>,
    next_session: u64,
    sent: WireCounters,
    received: WireCounters,
    malformed_frames: u64,
    peak_peer_queue_bytes: usize,
}

impl Owner {
    pub(crate) fn new(parts: OwnerParts) -> Owner {
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_CHANNEL_CAPACITY);
        let (notes_tx, notes_rx) = mpsc::channel(WRITER_NOTES_CAPACITY);
        let engine = RelayEngine::new(parts.config, rand::random());
        let hello = RelayHello {
            tx_salt: Some(engine.tx_salt()),
            ..parts.hello
        };
        Owner {
            engine,
            genesis: parts.hello.genesis,
            host: ChainHost::new(parts.chain),
            net_events: parts.network.subscribe(),
            control: parts.network.streams(),
            network: parts.network,
            protocol: parts.protocol,
            hello: Arc::new(codec::encode(&hello)),
            commands: parts.commands,
            events: parts.events,
            incoming: Some(parts.incoming),
            inbound_tx,
            inbound_rx,
            inbound_budget: Arc::new(Semaphore::new(INBOUND_BUFFER_BYTES)),
            notes_tx,
            notes_rx,
            room: Arc::new(Notify::new()),
            tasks: JoinSet::new(),
            peers: HashMap::new(),
            dropped: HashSet::new(),
            next_session: 0,
            sent: WireCounters::default(),
            received: WireCounters::default(),
            malformed_frames: 0,
            peak_peer_queue_bytes: 0,
        }
    }

    pub(crate) async fn run(mut self) {
        if let Some(incoming) = self.incoming.take() {
            let budget = self.inbound_budget.clone();
            let acceptor = accept_loop(
                incoming,
                self.inbound_tx.clone(),
                budget,
                self.host.chain().clone(),
            );
            self.tasks
                .spawn(acceptor.instrument(tracing::Span::current()));
        }
        // Peers that connected before we subscribed.
        self.resync_peers().await;
        loop {
            self.turn();
            let wake = self
                .engine
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + IDLE_WAKE);
            tokio::select! {
                // Local work before remote work.
                biased;
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown(reply)) => {
                        self.tasks.shutdown().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(command) => self.on_command(command),
                    None => break,
                },
                () = self.room.notified() => {}
                Some(note) = self.notes_rx.recv() => self.on_writer_note(note).await,
                event = self.net_events.recv() => match event {
                    Ok(event) => self.on_network_event(event),
                    Err(RecvError::Lagged(_)) => self.resync_peers().await,
                    Err(RecvError::Closed) => break,
                },
                Some(first) = self.inbound_rx.recv() => {
                    self.on_inbound(first);
                    for _ in 1..INBOUND_BATCH {
                        // A block relayed on its header goes out before anything else is done.
                        if self.engine.has_pending_imports() {
                            break;
                        }
                        match self.inbound_rx.try_recv() {
                            Ok(next) => self.on_inbound(next),
                            Err(_) => break,
                        }
                    }
                }
                () = tokio::time::sleep_until(wake.into()) => {}
                Some(_) = self.tasks.join_next() => {}
            }
        }
        self.tasks.shutdown().await;
    }

    /// Bookkeeping after every wake-up: due timers, engine events, outgoing frames; then the
    /// rebuilds of compact blocks relayed on their header, which report the blocks they complete
    /// as received and send requests for missing transactions; then the imports. Each stage
    /// starts once the frames of the one before are written, so a block relayed on its valid
    /// header leaves before its body is rebuilt, and both before its signatures are checked and
    /// its store commit (the owner runs on its own thread: an import holds up only the owner).
    fn turn(&mut self) {
        let now = Instant::now();
        if self.engine.poll_timeout().is_some_and(|t| t <= now) {
            self.engine.handle_timeout(now);
        }
        self.drain_events();
        self.pump();
        if self.engine.has_pending_imports() {
            self.engine
                .run_pending_rebuilds(Instant::now(), &mut self.host);
            self.drain_events();
            self.pump();
        }
        if self.engine.has_pending_imports() {
            // Outcomes reach the node as engine events; local blocks are imported by their
            // command.
            self.engine
                .run_pending_imports(Instant::now(), &mut self.host);
            self.drain_events();
            self.pump();
        }
    }

    fn emit(&self, event: RelayServiceEvent) {
        // No subscriber is fine: events are informational.
        let _ = self.events.send(event);
    }

    fn drain_events(&mut self) {
        let at = std::time::Instant::now();
        while let Some(event) = self.engine.poll_event() {
            let out = match event {
                RelayEvent::Penalty { peer, offence } => RelayServiceEvent::Offence {
                    peer,
                    reason: Reason::Relay(offence),
                },
                RelayEvent::SlowPeer(peer) => {
                    tracing::info!(%peer, "dropping a relay peer that does not keep up");
                    self.drop_peer(peer);
                    RelayServiceEvent::SlowPeer { peer }
                }
                RelayEvent::UsefulDelivery(peer) => RelayServiceEvent::Delivered { peer },
                RelayEvent::NewTransaction { id, from } => {
                    RelayServiceEvent::NewTransaction { id, from, at }
                }
                RelayEvent::BlockReceived { hash, from } => {
                    RelayServiceEvent::BlockReceived { hash, from, at }
                }
                RelayEvent::NewBlock { hash, from } => {
                    RelayServiceEvent::NewBlock { hash, from, at }
                }
                RelayEvent::MissingParent { hash, parent, peer } => {
                    RelayServiceEvent::MissingParent { hash, parent, peer }
                }
                RelayEvent::ChallengeReceived { challenge, from } => {
                    RelayServiceEvent::ChallengeReceived {
                        challenge: Arc::from(challenge),
                        from,
                    }
                }
                RelayEvent::SolutionToVerify {
                    challenge,
                    solution,
                } => RelayServiceEvent::SolutionToVerify {
                    challenge: Arc::from(challenge),
                    solution: Arc::from(solution),
                },
                RelayEvent::SolutionSettled(settlement) => {
                    RelayServiceEvent::SolutionSettled(Arc::from(settlement))
                }
            };
            self.emit(out);
        }
    }

    /// Moves frames from the engine's queues to the peers' streams: written here when the
    /// stream takes them at once and nothing waits for the peer's writer, else through the
    /// writer while its channel has room. A writer found full is asked to wake us (`room`)
    /// once it has written a frame.
    fn pump(&mut self) {
        for peer in self.engine.peers_with_pending() {
            let queued = self.engine.queued_bytes(&peer);
            self.peak_peer_queue_bytes = self.peak_peer_queue_bytes.max(queued);
            let Some(writer) = self.peers.get(&peer).and_then(|s| s.writer.as_ref()) else {
                continue;
            };
            loop {
                if writer.shared.idle() {
                    // Nothing waits for the writer, so its channel is empty and has room for
                    // whatever of this frame the stream does not take now.
                    let Some(msg) = self.engine.poll_transmit(&peer) else {
                        break;
                    };
                    let Some(frame) = encode(&mut self.sent, &msg) else {
                        continue;
                    };
                    let written = writer.shared.try_write(&frame);
                    let Some(rest) = frame.get(written..).filter(|r| !r.is_empty()) else {
                        continue;
                    };
                    writer.shared.queue_one();
                    if writer.frames.try_send(rest.to_vec()).is_err() {
                        // The writer stopped; its note is on the way.
                        writer.shared.unqueue_one();
                        break;
                    }
                    continue;
                }
                let permit = match writer.frames.try_reserve() {
                    Ok(permit) => permit,
                    Err(TrySendError::Full(())) => {
                        writer.wants_room.store(true, Ordering::SeqCst);
                        // The writer may have emptied the channel between the two calls, and
                        // then it would never see the flag: look once more.
                        match writer.frames.try_reserve() {
                            Ok(permit) => permit,
                            Err(_) => break,
                        }
                    }
                    // The writer stopped; its note is on the way.
                    Err(TrySendError::Closed(())) => break,
                };
                let Some(msg) = self.engine.poll_transmit(&peer) else {
                    break;
                };
                let Some(frame) = encode(&mut self.sent, &msg) else {
                    continue;
                };
                writer.shared.queue_one();
                permit.send(frame);
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::SubmitTransaction(tx, reply) => {
                let result = self
                    .engine
                    .submit_transaction(now, *tx, &mut self.host)
                    .map_err(|verdict| RelayError::TxRejected {
                        verdict,
                        reason: self.host.take_tx_error(),
                    });
                let _ = reply.send(result);
            }
            Command::PropagateBlock(block, reply) => {
                let hash = block.hash();
                // Pushed on its valid header, written, and only then imported: the compact
                // block leaves without waiting for the import's signature checks and commit.
                self.engine.propagate_new_block(now, *block, &mut self.host);
                self.pump();
                let imports = self
                    .engine
                    .run_pending_imports(Instant::now(), &mut self.host);
                // Ours was queued last, so the host's last error is its own.
                let verdict = imports
                    .iter()
                    .rev()
                    .find(|i| i.hash == hash && i.from.is_none())
                    .map(|i| i.verdict);
                let result = match verdict {
                    Some(BlockVerdict::Imported | BlockVerdict::Known) => Ok(hash),
                    Some(verdict) => Err(RelayError::BlockRejected {
                        verdict,
                        reason: self.host.take_block_error(),
                    }),
                    // Cannot happen: `run_pending_imports` reports every import it ran.
                    None => Err(RelayError::BlockRejected {
                        verdict: BlockVerdict::Refused,
                        reason: "the import did not run".to_owned(),
                    }),
                };
                // `NewBlock` (and any other event) before the reply, as callers expect.
                self.drain_events();
                self.pump();
                let _ = reply.send(result);
            }
            Command::BroadcastChallenge(challenge, reply) => {
                let id = challenge.id();
                self.engine.broadcast_challenge(now, *challenge);
                let _ = reply.send(id);
            }
            Command::SubmitSolution(solution, reply) => {
                let id = solution.id();
                self.engine.submit_solution(*solution);
                let _ = reply.send(id);
            }
            Command::SubmitVerdict(verdict, reply) => {
                let id = verdict.id();
                self.engine.submit_verdict(*verdict);
                let _ = reply.send(id);
            }
            Command::SendDirected(peers, msg) => {
                let peers: Vec<PeerId> = peers
                    .into_iter()
                    .filter(|p| self.peers.contains_key(p))
                    .collect();
                self.engine.send_directed(&peers, *msg);
            }
            Command::SetCapabilities(peer, capabilities) => {
                self.set_capabilities(peer, capabilities)
            }
            Command::Metrics(reply) => {
                let _ = reply.send(self.metrics());
            }
            Command::Peers(reply) => {
                let mut peers: Vec<RelayPeer> = self
                    .peers
                    .iter()
                    .map(|(peer, slot)| RelayPeer {
                        peer: *peer,
                        capabilities: slot.capabilities,
                        outbound_open: slot.outbound_open,
                        inbound_open: slot.inbound_open,
                        queued_bytes: self.engine.queued_bytes(peer),
                    })
                    .collect();
                peers.sort_by_key(|p| p.peer);
                let _ = reply.send(peers);
            }
            // Handled in `run`.
            Command::Shutdown(reply) => {
                let _ = reply.send(());
            }
        }
    }

    fn metrics(&self) -> RelayServiceMetrics {
        RelayServiceMetrics {
            engine: self.engine.metrics(),
            sent: self.sent.clone(),
            received: self.received.clone(),
            malformed_frames: self.malformed_frames,
            peers: self.peers.len(),
            queued_bytes: self.peers.keys().map(|p| self.engine.queued_bytes(p)).sum(),
            peak_peer_queue_bytes: self.peak_peer_queue_bytes,
        }
    }

    fn on_network_event(&mut self, event: NetworkEvent) {
        match event {
            NetworkEvent::PeerConnected { peer, .. } => self.add_peer(peer, true),
            NetworkEvent::PeerDisconnected { peer } => {
                self.dropped.remove(&peer);
                self.remove_peer(peer);
            }
            // The relay hello is the relay's own claim and wins; identify fills in until the
            // hello arrives.
            NetworkEvent::PeerIdentified {
                peer, capabilities, ..
            } if self.peers.get(&peer).is_some_and(|slot| !slot.inbound_open) => {
                self.set_capabilities(peer, capabilities)
            }
            _ => {}
        }
    }

    /// Sets a peer's capabilities in our view and the engine's.
    fn set_capabilities(&mut self, peer: PeerId, capabilities: Capabilities) {
        if let Some(slot) = self.peers.get_mut(&peer) {
            slot.capabilities = capabilities;
            self.engine.set_capabilities(peer, capabilities);
        }
    }

    /// Reconciles our peers with the network's after missed events (and at start).
    async fn resync_peers(&mut self) {
        let Ok(connected) = self.network.peers().await else {
            return;
        };
        let connected: HashSet<PeerId> = connected.into_iter().map(|p| p.peer).collect();
        self.dropped.retain(|p| connected.contains(p));
        let gone: Vec<PeerId> = self
            .peers
            .keys()
            .filter(|p| !connected.contains(p))
            .copied()
            .collect();
        for peer in gone {
            self.remove_peer(peer);
        }
        for peer in connected {
            self.add_peer(peer, true);
        }
    }

    /// Takes a peer into the relay (idempotent). Once the network has reported its connection
    /// (`connected`: a `PeerConnected` event or the network's peer list), opens our stream to it;
    /// a peer whose stream reached us first waits for that (its messages are handled meanwhile).
    fn add_peer(&mut self, peer: PeerId, connected: bool) {
        if self.dropped.contains(&peer) {
            return;
        }
        if !self.peers.contains_key(&peer) {
            self.engine.add_peer(peer, Capabilities::NONE);
            self.peers.insert(
                peer,
                PeerSlot {
                    session: 0,
                    writer: None,
                    opens: 0,
                    outbound_open: false,
                    inbound_open: false,
                    capabilities: Capabilities::NONE,
                    ready: false,
                },
            );
        }
        if connected && self.peers.get(&peer).is_some_and(|s| s.writer.is_none()) {
            self.start_writer(peer);
        }
    }

    /// Starts a writer toward `peer`, replacing any previous one; the engine's queue toward the
    /// peer is kept.
    fn start_writer(&mut self, peer: PeerId) {
        if !self.peers.contains_key(&peer) {
            return;
        }
        let opens = self.peers.get(&peer).map_or(0, |slot| slot.opens);
        let (session, writer) = self.spawn_writer(peer, reopen_delay(opens));
        if let Some(slot) = self.peers.get_mut(&peer) {
            if let Some(old) = slot.writer.replace(writer) {
                old.task.abort();
            }
            slot.session = session;
            slot.opens = slot.opens.saturating_add(1);
            slot.outbound_open = false;
        }
    }

    fn spawn_writer(&mut self, peer: PeerId, delay: Duration) -> (u64, WriterSlot) {
        self.next_session += 1;
        let session = self.next_session;
        let (frames_tx, frames_rx) = mpsc::channel(WRITER_QUEUE_FRAMES);
        let wants_room = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(SharedStream::default());
        let writer = Writer {
            peer,
            session,
            control: self.control.clone(),
            protocol: self.protocol.clone(),
            hello: self.hello.clone(),
            frames: frames_rx,
            shared: shared.clone(),
            wants_room: wants_room.clone(),
            room: self.room.clone(),
            notes: self.notes_tx.clone(),
            delay,
        };
        tracing::debug!(%peer, session, ?delay, "opening relay stream");
        let task = self
            .tasks
            .spawn(writer.run().instrument(tracing::Span::current()));
        (
            session,
            WriterSlot {
                frames: frames_tx,
                shared,
                wants_room,
                task,
            },
        )
    }

    /// Forgets a peer's relay state and stops its writer.
    fn remove_peer(&mut self, peer: PeerId) {
        let Some(slot) = self.peers.remove(&peer) else {
            return;
        };
        if let Some(writer) = slot.writer {
            writer.task.abort();
        }
        self.engine.remove_peer(&peer);
        if slot.ready {
            self.emit(RelayServiceEvent::PeerGone { peer });
        }
    }

    /// Removes a peer and closes its connection.
    fn drop_peer(&mut self, peer: PeerId) {
        self.remove_peer(peer);
        if self.dropped.insert(peer) {
            let network = self.network.clone();
            self.tasks.spawn(async move {
                // Fails only if the peer is already gone.
                let _ = network.disconnect(peer).await;
            });
        }
    }

    fn offence(&mut self, peer: PeerId, reason: Reason) {
        self.emit(RelayServiceEvent::Offence { peer, reason });
        self.drop_peer(peer);
    }

    fn maybe_ready(&mut self, peer: PeerId) {
        let Some(slot) = self.peers.get_mut(&peer) else {
            return;
        };
        if slot.outbound_open && slot.inbound_open && !slot.ready {
            slot.ready = true;
            let capabilities = slot.capabilities;
            self.emit(RelayServiceEvent::PeerReady { peer, capabilities });
        }
    }

    async fn on_writer_note(&mut self, note: WriterNote) {
        match note {
            WriterNote::Opened { peer, session } => {
                if let Some(slot) = self.peers.get_mut(&peer)
                    && slot.session == session
                {
                    slot.outbound_open = true;
                    tracing::debug!(%peer, session, "relay stream open");
                    self.maybe_ready(peer);
                }
            }
            WriterNote::Failed {
                peer,
                session,
                failure,
            } => {
                let Some(opens) = self
                    .peers
                    .get(&peer)
                    .filter(|slot| slot.session == session)
                    .map(|slot| slot.opens)
                else {
                    return;
                };
                tracing::debug!(%peer, %failure, "relay stream to peer stopped");
                match failure {
                    WriteFailure::Unsupported => {
                        // Not a relay node: leave the connection to whoever else uses it.
                        self.remove_peer(peer);
                        self.dropped.insert(peer);
                    }
                    WriteFailure::Stalled => {
                        self.emit(RelayServiceEvent::SlowPeer { peer });
                        self.drop_peer(peer);
                    }
                    WriteFailure::Open(_) | WriteFailure::Io(_) => {
                        let retry = opens < MAX_STREAM_OPENS && self.is_connected(peer).await;
                        if retry {
                            self.start_writer(peer);
                        } else if self.peers.contains_key(&peer) {
                            self.drop_peer(peer);
                        }
                    }
                }
            }
        }
    }

    /// Whether the network still has a connection to `peer` (a stream can die with one of two
    /// duplicate connections while the peer stays).
    async fn is_connected(&self, peer: PeerId) -> bool {
        self.network
            .peers()
            .await
            .is_ok_and(|peers| peers.iter().any(|p| p.peer == peer))
    }

    fn on_inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Opened { peer, hello } => {
                if self.dropped.contains(&peer) {
                    return;
                }
                if hello.genesis != self.genesis {
                    // Another network under the same name: not misbehaviour, just not ours.
                    tracing::info!(%peer, theirs = %hello.genesis, "relay peer is on another genesis");
                    self.drop_peer(peer);
                    return;
                }
                tracing::debug!(%peer, capabilities = %hello.capabilities, "peer's relay stream open");
                self.add_peer(peer, false);
                if let Some(salt) = hello.tx_salt {
                    self.engine.set_peer_tx_salt(&peer, salt);
                }
                if let Some(slot) = self.peers.get_mut(&peer) {
                    slot.inbound_open = true;
                }
                self.set_capabilities(peer, hello.capabilities);
                self.maybe_ready(peer);
            }
            Inbound::Message {
                peer,
                msg,
                bytes,
                permit,
            } => {
                self.received.record(MessageKind::of(&msg), bytes);
                if self.peers.contains_key(&peer) {
                    // Imports wait for `turn`, after the frames this queues have left.
                    self.engine
                        .handle_message_deferred(Instant::now(), peer, *msg, &mut self.host);
                    // Replies to this peer grow its queue; `pump` samples the others.
                    let queued = self.engine.queued_bytes(&peer);
                    self.peak_peer_queue_bytes = self.peak_peer_queue_bytes.max(queued);
                }
                drop(permit);
            }
            Inbound::Malformed { peer, error } => {
                tracing::info!(%peer, %error, "malformed relay frame");
                self.malformed_frames += 1;
                if !self.dropped.contains(&peer) {
                    self.offence(peer, Reason::MalformedFrame);
                }
            }
        }
    }
}

/// One message as a whole frame, counted in `sent`; `None` (logged) for one over the frame
/// limit, which the engine's own bounds never let through.
fn encode(sent: &mut WireCounters, msg: &RelayMessage) -> Option<Vec<u8>> {
    let payload = codec::encode(msg);
    match encode_frame(&payload, MAX_FRAME_SIZE) {
        Ok(frame) => {
            sent.record(MessageKind::of(msg), frame.len());
            Some(frame)
        }
        Err(e) => {
            tracing::error!(kind = ?MessageKind::of(msg), %e, "relay message not sent");
            None
        }
    }
}
