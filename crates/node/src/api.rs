//! The HTTP JSON API (axum), on loopback by default.
//!
//! ```text
//!  GET  /health                       200 while serving, 503 once shutting down
//!  GET  /api/v1/status                StatusResponse
//!  POST /api/v1/transactions          Transaction (JSON) ──► mempool ──► {"id": TXID}
//!  GET  /api/v1/transactions/{id}     TxStatusResponse, 404 when unknown
//!  GET  /api/v1/blocks/{height|hash}  BlockView
//!  GET  /api/v1/chain?limit=N         ChainView: the tip and the newest blocks
//!  GET  /api/v1/peers                 [PeerView]: connected peers
//!  POST /api/v1/peers {"addr": MA}    dial MA (with /p2p/<id> to authenticate it) ──► PeerView
//!                                     (404 if the peer left at once)
//!  DELETE /api/v1/peers/{peer_id}     disconnect
//!  GET  /api/v1/bans                  [BanView]; POST {"peer_id", "duration_secs"} bans
//!  DELETE /api/v1/bans/{peer_id}      lifts a ban
//!  GET  /api/v1/devnet                the devnet's nodes and links (when run by `devnet`)
//!  GET  /                             the live dashboard (embedded HTML, no CDN)
//!  GET  /metrics                      Prometheus text
//! ```
//!
//! Every chain call runs on the blocking pool: the chain's lock is held across block imports
//! (a durable commit), which must not stall the async workers. Errors are
//! `{"error": CODE, "detail": TEXT}` with a matching status code.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use playergold_chain::{Blockchain, ChainBackend, MempoolError, StoreError, TxStatus};
use playergold_primitives::{
    Block, BlockHash, BlockHeader, Height, PublicKey, Signature, TimestampMs, Transaction, TxId,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

use playergold_net::{Direction, Multiaddr, NetworkError, NetworkHandle, PeerId, PeerInfo};
use playergold_protocol::relay::TxVerdict;
use playergold_services::{RelayError, RelayHandle, ReputationError, ReputationHandle, SyncHandle};

use crate::metrics::{ChainGauges, NodeMetrics, ServiceSnapshot};

/// Largest request body accepted. A signed transaction is a few hundred bytes of JSON; this
/// leaves room for formatting while keeping a flood of large bodies cheap to refuse.
const MAX_BODY_BYTES: usize = 16 * 1024;
/// Blocks `GET /api/v1/chain` returns when no `limit` is given.
const DEFAULT_CHAIN_BLOCKS: usize = 10;
/// Most blocks `GET /api/v1/chain` returns: each is read from the store under the chain lock.
const MAX_CHAIN_BLOCKS: usize = 100;

/// What the handlers share.
#[derive(Debug)]
pub(crate) struct ApiState {
    /// The chain.
    pub(crate) chain: Arc<Blockchain>,
    /// The node's block-signing key (its public half is also its PeerId).
    pub(crate) node_key: PublicKey,
    /// The peer-to-peer network.
    pub(crate) network: NetworkHandle,
    /// Propagation: transactions submitted here are validated and relayed by it.
    pub(crate) relay: RelayHandle,
    /// Sync: progress and the network state.
    pub(crate) sync: SyncHandle,
    /// Peer scores and bans.
    pub(crate) reputation: ReputationHandle,
    /// `devnet.json` of the devnet this node belongs to, if any.
    pub(crate) devnet_file: Option<std::path::PathBuf>,
    /// Addresses the operator declared peers can reach us on (`external_addrs`).
    pub(crate) external_addrs: Vec<Multiaddr>,
    /// The node's metrics.
    pub(crate) metrics: Arc<NodeMetrics>,
    /// Becomes `true` when the node starts shutting down; `/health` then answers 503.
    pub(crate) shutdown: watch::Receiver<bool>,
}

/// Serves the API on `listener` until `shutdown` turns `true`, then finishes the requests in
/// flight.
pub(crate) async fn serve(listener: TcpListener, state: ApiState) -> std::io::Result<()> {
    let mut shutdown = state.shutdown.clone();
    axum::serve(listener, router(Arc::new(state)))
        .with_graceful_shutdown(async move {
            // An error means the sender is gone: the node is stopping either way.
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/api/v1/devnet", get(devnet))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .route(
            "/api/v1/transactions",
            axum::routing::post(submit_transaction),
        )
        .route("/api/v1/transactions/{id}", get(transaction_status))
        .route("/api/v1/blocks/{id}", get(block))
        .route("/api/v1/chain", get(chain))
        .route("/api/v1/peers", get(peers).post(connect_peer))
        .route(
            "/api/v1/peers/{peer_id}",
            axum::routing::delete(disconnect_peer),
        )
        .route("/api/v1/bans", get(bans).post(ban))
        .route("/api/v1/bans/{peer_id}", axum::routing::delete(unban))
        .fallback(|| async { ApiError::NotFound("no such endpoint".to_string()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    /// The path or query is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// Nothing has that id.
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not for this method.
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// The body is not acceptable JSON (syntax, content type, size).
    #[error("{}", .0.body_text())]
    Body(#[from] JsonRejection),
    /// The query string does not parse.
    #[error("{}", .0.body_text())]
    Query(#[from] QueryRejection),
    /// The mempool refused the transaction.
    #[error(transparent)]
    Mempool(#[from] MempoolError),
    /// The chain database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking task panicked or was cancelled.
    #[error("internal error: {0}")]
    Internal(#[from] tokio::task::JoinError),
    /// The network refused or failed the operation.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// The relay refused the transaction or has stopped.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// The reputation service has stopped.
    #[error(transparent)]
    Reputation(#[from] ReputationError),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Body(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::Body(r) => (r.status(), "invalid_body"),
            ApiError::Query(r) => (r.status(), "bad_request"),
            ApiError::Mempool(MempoolError::AlreadyKnown(_) | MempoolError::AlreadyIncluded(_)) => {
                (StatusCode::CONFLICT, "duplicate_transaction")
            }
            ApiError::Mempool(MempoolError::FeeTooLow { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "mempool_full")
            }
            ApiError::Mempool(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_transaction"),
            ApiError::Store(_) | ApiError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
            ApiError::Network(NetworkError::NotConnected(_)) => {
                (StatusCode::NOT_FOUND, "not_connected")
            }
            ApiError::Network(NetworkError::Dial { .. } | NetworkError::ConnectTimeout(_)) => {
                (StatusCode::BAD_GATEWAY, "dial_failed")
            }
            ApiError::Network(_) => (StatusCode::SERVICE_UNAVAILABLE, "network_unavailable"),
            ApiError::Relay(RelayError::TxRejected { verdict, .. }) => match verdict {
                TxVerdict::Known => (StatusCode::CONFLICT, "duplicate_transaction"),
                TxVerdict::Refused => (StatusCode::SERVICE_UNAVAILABLE, "mempool_full"),
                _ => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_transaction"),
            },
            ApiError::Relay(_) => (StatusCode::SERVICE_UNAVAILABLE, "relay_unavailable"),
            ApiError::Reputation(_) => (StatusCode::SERVICE_UNAVAILABLE, "reputation_unavailable"),
        }
    }
}

/// The error body.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ErrorBody {
    /// A stable machine-readable code, e.g. `not_found`.
    pub(crate) error: String,
    /// What went wrong, for a person.
    pub(crate) detail: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::warn!(error = %self, "api request failed");
        }
        let body = ErrorBody {
            error: code.to_string(),
            detail: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}

impl ApiState {
    /// Runs `f` on the chain in the blocking pool.
    async fn with_chain<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Blockchain) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let chain = self.chain.clone();
        Ok(tokio::task::spawn_blocking(move || f(&chain)).await?)
    }
}

async fn health(State(state): State<Arc<ApiState>>) -> Response {
    if *state.shutdown.borrow() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "shutting_down"})),
        )
            .into_response()
    } else {
        Json(serde_json::json!({"status": "ok"})).into_response()
    }
}

async fn metrics(State(state): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let gauges = state
        .with_chain(|chain| ChainGauges {
            height: chain.tip().height.0,
            mempool_transactions: chain.mempool_len(),
        })
        .await?;
    let services = service_snapshot(&state).await;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(gauges, services),
    )
        .into_response())
}

/// How long a scrape waits for each service's counters. They answer from their owning task,
/// which normally takes microseconds; a service stuck longer than this is left out of the
/// scrape (Prometheus' own timeout defaults to 10 s).
const SERVICE_METRICS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The relay's, sync's and reputation's counters now, asked concurrently; a service that is
/// stopped or does not answer within [`SERVICE_METRICS_TIMEOUT`] is `None`.
async fn service_snapshot(state: &ApiState) -> ServiceSnapshot {
    async fn ask<T, E>(f: impl Future<Output = Result<T, E>>) -> Option<T> {
        tokio::time::timeout(SERVICE_METRICS_TIMEOUT, f)
            .await
            .ok()?
            .ok()
    }
    let (relay, sync, reputation, bans) = tokio::join!(
        ask(state.relay.metrics()),
        ask(state.sync.metrics()),
        ask(state.reputation.distribution()),
        ask(state.reputation.bans()),
    );
    let status = state.sync.status();
    ServiceSnapshot {
        relay,
        sync,
        progress: Some(status.progress),
        network_state: Some(status.network),
        reputation,
        bans: bans.map(|b| b.len()),
        overload: Some(state.reputation.overload()),
    }
}

/// `GET /api/v1/status`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StatusResponse {
    /// The node's network identity (libp2p PeerId of the node key).
    pub(crate) peer_id: String,
    /// The node key's account address (40 hex chars).
    pub(crate) address: String,
    /// The network name from the genesis.
    pub(crate) network: String,
    /// The genesis block hash.
    pub(crate) genesis_hash: BlockHash,
    /// Height of the best tip.
    pub(crate) best_height: Height,
    /// Hash of the best tip.
    pub(crate) best_hash: BlockHash,
    /// Timestamp of the best tip.
    pub(crate) best_timestamp_ms: TimestampMs,
    /// Transactions waiting in the mempool.
    pub(crate) mempool_size: usize,
    /// Connected peers.
    pub(crate) peer_count: usize,
    /// `idle`, `headers`, `blocks` or `synced`.
    pub(crate) sync_state: String,
    /// The best height a peer claims (what sync works toward).
    pub(crate) sync_target_height: Height,
    /// `healthy`, `degraded` or `partitioned`.
    pub(crate) network_state: String,
    /// Addresses we listen on.
    pub(crate) listen_addrs: Vec<String>,
    /// Addresses the operator declared peers can reach us on (behind NAT or a proxy); what the
    /// node advertises besides `listen_addrs`.
    pub(crate) external_addrs: Vec<String>,
}

async fn status(State(state): State<Arc<ApiState>>) -> Result<Json<StatusResponse>, ApiError> {
    let peer_id = state.network.local_peer_id().to_string();
    let address = state.node_key.address().to_string();
    let progress = state.sync.progress();
    let network_state = state.sync.network_state();
    let peer_count = state.network.peers().await?.len();
    let listen_addrs = state
        .network
        .listen_addrs()
        .await?
        .iter()
        .map(ToString::to_string)
        .collect();
    let external_addrs = state
        .external_addrs
        .iter()
        .map(ToString::to_string)
        .collect();
    Ok(Json(
        state
            .with_chain(move |chain| {
                let tip = chain.tip();
                StatusResponse {
                    peer_id,
                    address,
                    network: chain.genesis().network.clone(),
                    genesis_hash: chain.genesis_hash(),
                    best_height: tip.height,
                    best_hash: tip.hash,
                    best_timestamp_ms: tip.timestamp_ms,
                    mempool_size: chain.mempool_len(),
                    peer_count,
                    sync_state: progress.state.to_string(),
                    sync_target_height: progress.target_height,
                    network_state: network_state.to_string(),
                    listen_addrs,
                    external_addrs,
                }
            })
            .await?,
    ))
}

/// The dashboard page.
const DASHBOARD: &str = include_str!("dashboard.html");
/// How long `GET /api/v1/devnet` waits for each devnet node's API.
const DEVNET_PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

async fn dashboard() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        DASHBOARD,
    )
        .into_response()
}

/// One node in `GET /api/v1/devnet`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DevnetNodeView {
    /// Its PeerId.
    pub(crate) peer_id: String,
    /// Its API address.
    pub(crate) api: String,
    /// Whether its API answered.
    pub(crate) reachable: bool,
    /// Its best height, when reachable.
    pub(crate) best_height: Option<Height>,
    /// Its best hash, when reachable.
    pub(crate) best_hash: Option<BlockHash>,
    /// The PeerIds it is connected to.
    pub(crate) peers: Vec<String>,
}

/// `GET /api/v1/devnet`: every devnet node's status and peers, asked server-side (so the
/// page needs no cross-origin access). Empty when the node is not part of a devnet.
async fn devnet(State(state): State<Arc<ApiState>>) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(path) = &state.devnet_file else {
        return Ok(Json(serde_json::json!({ "nodes": [] })));
    };
    let file: crate::devnet::DevnetFile = tokio::fs::read_to_string(path)
        .await
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| ApiError::NotFound(format!("{} is unreadable", path.display())))?;
    let asks = file.nodes.iter().map(|node| async move {
        let api = node.api.to_string();
        let ask = async {
            let status: StatusResponse =
                crate::client::call(&api, hyper::Method::GET, "/api/v1/status", None).await?;
            let peers: Vec<PeerView> =
                crate::client::call(&api, hyper::Method::GET, "/api/v1/peers", None).await?;
            anyhow::Ok((status, peers))
        };
        match tokio::time::timeout(DEVNET_PEER_TIMEOUT, ask).await {
            Ok(Ok((status, peers))) => DevnetNodeView {
                peer_id: node.peer_id.clone(),
                api,
                reachable: true,
                best_height: Some(status.best_height),
                best_hash: Some(status.best_hash),
                peers: peers.into_iter().map(|p| p.peer_id).collect(),
            },
            _ => DevnetNodeView {
                peer_id: node.peer_id.clone(),
                api,
                reachable: false,
                best_height: None,
                best_hash: None,
                peers: Vec::new(),
            },
        }
    });
    let nodes = futures::future::join_all(asks).await;
    Ok(Json(
        serde_json::json!({ "network": file.network, "nodes": nodes }),
    ))
}

/// One connected peer in `GET /api/v1/peers`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PeerView {
    /// Its PeerId.
    pub(crate) peer_id: String,
    /// Its address on the connection we keep (IP only when the transport gives no more).
    pub(crate) addr: Option<String>,
    /// `inbound` or `outbound`.
    pub(crate) direction: String,
    /// Last ping round trip, milliseconds.
    pub(crate) latency_ms: Option<f64>,
    /// Reputation score.
    pub(crate) reputation: i64,
    /// Capabilities it declared.
    pub(crate) capabilities: Vec<String>,
}

impl From<PeerInfo> for PeerView {
    fn from(p: PeerInfo) -> Self {
        PeerView {
            peer_id: p.peer.to_string(),
            addr: p.ip.map(|ip| ip.to_string()),
            direction: match p.direction {
                Direction::Inbound => "inbound",
                Direction::Outbound => "outbound",
            }
            .to_string(),
            latency_ms: p.latency.map(|d| d.as_secs_f64() * 1_000.0),
            reputation: i64::from(p.score.0),
            capabilities: p
                .capabilities
                .names()
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }
}

async fn peers(State(state): State<Arc<ApiState>>) -> Result<Json<Vec<PeerView>>, ApiError> {
    let mut peers = state.network.peers().await?;
    peers.sort_by_key(|p| p.peer);
    Ok(Json(peers.into_iter().map(PeerView::from).collect()))
}

/// One ban in `GET /api/v1/bans`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct BanView {
    /// The banned peer.
    pub(crate) peer_id: String,
    /// When the ban ends (Unix milliseconds).
    pub(crate) until_ms: u64,
    /// How many times this peer was banned.
    pub(crate) count: u32,
}

/// `POST /api/v1/bans`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct BanRequest {
    /// The peer to ban.
    pub(crate) peer_id: String,
    /// How long, in seconds (default one day).
    #[serde(default = "default_ban_secs")]
    pub(crate) duration_secs: u64,
}

/// A manual ban lasts a day unless the operator says otherwise.
fn default_ban_secs() -> u64 {
    24 * 60 * 60
}

fn parse_peer(peer_id: &str) -> Result<PeerId, ApiError> {
    peer_id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{peer_id:?} is not a peer id")))
}

async fn bans(State(state): State<Arc<ApiState>>) -> Result<Json<Vec<BanView>>, ApiError> {
    Ok(Json(
        state
            .reputation
            .bans()
            .await?
            .into_iter()
            .map(|b| BanView {
                peer_id: b.peer.to_string(),
                until_ms: b.until.0,
                count: b.count,
            })
            .collect(),
    ))
}

async fn ban(
    State(state): State<Arc<ApiState>>,
    body: Result<Json<BanRequest>, JsonRejection>,
) -> Result<Json<BanView>, ApiError> {
    let Json(req) = body?;
    let peer = parse_peer(&req.peer_id)?;
    let until = state
        .reputation
        .ban(peer, std::time::Duration::from_secs(req.duration_secs))
        .await?;
    let count = state
        .reputation
        .bans()
        .await?
        .into_iter()
        .find(|b| b.peer == peer)
        .map_or(1, |b| b.count);
    Ok(Json(BanView {
        peer_id: peer.to_string(),
        until_ms: until.0,
        count,
    }))
}

async fn unban(
    State(state): State<Arc<ApiState>>,
    Path(peer_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let peer = parse_peer(&peer_id)?;
    if state.reputation.unban(peer).await? {
        Ok(Json(
            serde_json::json!({ "peer_id": peer.to_string(), "unbanned": true }),
        ))
    } else {
        Err(ApiError::NotFound(format!("peer {peer} is not banned")))
    }
}

/// `POST /api/v1/peers`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ConnectRequest {
    /// The multiaddr to dial; end it in `/p2p/<peer-id>` to authenticate the peer.
    pub(crate) addr: String,
}

async fn connect_peer(
    State(state): State<Arc<ApiState>>,
    body: Result<Json<ConnectRequest>, JsonRejection>,
) -> Result<Json<PeerView>, ApiError> {
    let Json(req) = body?;
    let addr: Multiaddr = req.addr.parse().map_err(|e| {
        ApiError::BadRequest(format!("addr {:?} is not a multiaddr: {e}", req.addr))
    })?;
    let peer = state.network.connect(addr).await?;
    state
        .network
        .peers()
        .await?
        .into_iter()
        .find(|p| p.peer == peer)
        .map(|p| Json(PeerView::from(p)))
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "peer {peer} connected but left at once (it may have refused us, or been \
                 evicted); see the node's log"
            ))
        })
}

async fn disconnect_peer(
    State(state): State<Arc<ApiState>>,
    Path(peer_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let peer: PeerId = peer_id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{peer_id:?} is not a peer id")))?;
    state.network.disconnect(peer).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/transactions`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SubmitResponse {
    /// The accepted transaction's id.
    pub(crate) id: TxId,
}

async fn submit_transaction(
    State(state): State<Arc<ApiState>>,
    body: Result<Json<Transaction>, JsonRejection>,
) -> Result<Json<SubmitResponse>, ApiError> {
    let Json(tx) = body?;
    let id = state.relay.submit_transaction(tx).await?;
    state.metrics.api_transactions_accepted.inc();
    tracing::debug!(tx = %id, "transaction accepted through the api");
    Ok(Json(SubmitResponse { id }))
}

/// Where a transaction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TxState {
    /// In the mempool.
    Pending,
    /// In a best-chain block.
    Included,
}

/// `GET /api/v1/transactions/{id}`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TxStatusResponse {
    /// Pending or included.
    pub(crate) status: TxState,
    /// The including block's height, when included.
    pub(crate) block_height: Option<Height>,
    /// The including block's hash, when included.
    pub(crate) block_hash: Option<BlockHash>,
}

async fn transaction_status(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<TxStatusResponse>, ApiError> {
    let id: TxId = id.parse().map_err(|e| {
        ApiError::BadRequest(format!(
            "transaction id {id:?}: {e} (expected 64 hex chars)"
        ))
    })?;
    let response = match state
        .with_chain(move |chain| chain.tx_status(&id))
        .await??
    {
        TxStatus::Pending => TxStatusResponse {
            status: TxState::Pending,
            block_height: None,
            block_hash: None,
        },
        TxStatus::Included { block, height } => TxStatusResponse {
            status: TxState::Included,
            block_height: Some(height),
            block_hash: Some(block),
        },
        TxStatus::Unknown => {
            return Err(ApiError::NotFound(format!(
                "transaction {id} is neither in the mempool nor in the best chain"
            )));
        }
    };
    Ok(Json(response))
}

/// A transaction with its id.
#[derive(Debug, Serialize)]
struct TxView {
    id: TxId,
    #[serde(flatten)]
    tx: Transaction,
}

/// `GET /api/v1/blocks/{id}`: the header's fields, every hash in hex.
#[derive(Debug, Serialize)]
struct BlockView {
    hash: BlockHash,
    height: Height,
    parent: BlockHash,
    timestamp_ms: TimestampMs,
    /// Merkle root of the transaction ids.
    tx_root: String,
    producer: PublicKey,
    signature: Signature,
    txs: Vec<TxView>,
}

impl From<Block> for BlockView {
    fn from(block: Block) -> Self {
        let hash = block.hash();
        let BlockHeader {
            parent,
            height,
            timestamp_ms,
            tx_root,
            producer,
            signature,
        } = block.header;
        BlockView {
            hash,
            height,
            parent,
            timestamp_ms,
            tx_root: hex::encode(tx_root.0),
            producer,
            signature,
            txs: block
                .txs
                .into_iter()
                .map(|tx| TxView { id: tx.id(), tx })
                .collect(),
        }
    }
}

/// A block named by its best-chain height or by its hash.
#[derive(Debug, Clone, Copy)]
enum BlockRef {
    Height(Height),
    Hash(BlockHash),
}

impl std::str::FromStr for BlockRef {
    type Err = ApiError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 2 * std::mem::size_of::<BlockHash>() {
            s.parse()
                .map(BlockRef::Hash)
                .map_err(|e| ApiError::BadRequest(format!("block hash {s:?}: {e}")))
        } else {
            s.parse().map(|h| BlockRef::Height(Height(h))).map_err(|_| {
                ApiError::BadRequest(format!(
                    "{s:?} is neither a height nor a block hash (64 hex chars)"
                ))
            })
        }
    }
}

async fn block(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<BlockView>, ApiError> {
    let block_ref: BlockRef = id.parse()?;
    let found = state
        .with_chain(move |chain| {
            let hash = match block_ref {
                BlockRef::Hash(hash) => hash,
                BlockRef::Height(height) => match chain.hash_at(height) {
                    Some(hash) => hash,
                    None => return Ok(None),
                },
            };
            chain.block(&hash)
        })
        .await??;
    found
        .map(|b| Json(BlockView::from(b)))
        .ok_or_else(|| ApiError::NotFound(format!("no block {id}")))
}

/// `GET /api/v1/chain` query.
#[derive(Debug, Deserialize)]
struct ChainQuery {
    /// How many of the newest blocks to list.
    limit: Option<usize>,
}

/// One line of `GET /api/v1/chain`.
#[derive(Debug, Serialize)]
struct BlockSummary {
    height: Height,
    hash: BlockHash,
    timestamp_ms: TimestampMs,
    producer: PublicKey,
    tx_count: usize,
}

/// `GET /api/v1/chain`.
#[derive(Debug, Serialize)]
struct ChainView {
    network: String,
    genesis_hash: BlockHash,
    tip_height: Height,
    tip_hash: BlockHash,
    /// Newest first.
    blocks: Vec<BlockSummary>,
}

async fn chain(
    State(state): State<Arc<ApiState>>,
    query: Result<Query<ChainQuery>, QueryRejection>,
) -> Result<Json<ChainView>, ApiError> {
    let Query(query) = query?;
    let limit = query
        .limit
        .unwrap_or(DEFAULT_CHAIN_BLOCKS)
        .min(MAX_CHAIN_BLOCKS);
    let view = state
        .with_chain(move |chain| -> Result<ChainView, StoreError> {
            let tip = chain.tip();
            let mut blocks = Vec::with_capacity(limit);
            for height in (0..=tip.height.0).rev().take(limit) {
                // A reorg between reading the tip and here can shorten the chain: list what is
                // there.
                let Some(hash) = chain.hash_at(Height(height)) else {
                    continue;
                };
                let Some(block) = chain.block(&hash)? else {
                    continue;
                };
                blocks.push(BlockSummary {
                    height: block.header.height,
                    hash,
                    timestamp_ms: block.header.timestamp_ms,
                    producer: block.header.producer,
                    tx_count: block.txs.len(),
                });
            }
            Ok(ChainView {
                network: chain.genesis().network.clone(),
                genesis_hash: chain.genesis_hash(),
                tip_height: tip.height,
                tip_hash: tip.hash,
                blocks,
            })
        })
        .await??;
    Ok(Json(view))
}

/// Binds the API address, with a message saying what to do when that fails.
pub(crate) async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on API address {addr}: pick another with --api HOST:PORT")
    })
}
