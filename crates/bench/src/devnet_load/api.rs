//! A small HTTP/1.1 client for one node's JSON API (the routes are listed at the top of
//! `crates/node/src/api.rs`), keeping its connections alive: the bench sends hundreds of
//! requests a second, and a new TCP connection for each would leave tens of thousands of
//! sockets in TIME_WAIT over a long run and add connection set-up to the CPU the nodes are
//! measured on.
//!
//! The answer types mirror the node's (which live in its binary crate) with only the fields
//! the bench reads; serde ignores the rest.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use playergold_primitives::{BlockHash, Height, TimestampMs, TxId};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// How long one request may take, connecting included. A node answers in milliseconds unless
/// it is overloaded; past this the bench counts the request as failed rather than hang on it.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read: a full block of `MAX_BLOCK_TXS` (5,000) transactions is about 2.5 MB
/// of JSON; `/metrics` is tens of KB.
const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// Idle connections kept per node: about as many as the bench has requests in flight to one
/// node at a time; more would only hold the node's sockets open.
const MAX_IDLE_CONNECTIONS: usize = 16;
/// Blocks the node lists at most in one `GET /api/v1/chain` (its `MAX_CHAIN_BLOCKS`).
pub(crate) const MAX_CHAIN_BLOCKS: usize = 100;

/// Why a request to a node's API failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// No TCP connection to the API.
    #[error(
        "cannot reach the node's API at {api}: {source} (has the node exited? see its node.log)"
    )]
    Connect {
        /// The API address.
        api: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// The HTTP exchange failed (connection reset, malformed answer).
    #[error("HTTP request to {api}{path} failed: {source}")]
    Http {
        /// The API address.
        api: SocketAddr,
        /// The request path.
        path: String,
        /// hyper's error.
        source: hyper::Error,
    },
    /// No answer within [`REQUEST_TIMEOUT`].
    #[error("{api}{path} did not answer within {}s (is the node overloaded?)", REQUEST_TIMEOUT.as_secs())]
    Timeout {
        /// The API address.
        api: SocketAddr,
        /// The request path.
        path: String,
    },
    /// The node answered with an error status.
    #[error("{api}{path} answered HTTP {status} ({code}): {body}")]
    Status {
        /// The API address.
        api: SocketAddr,
        /// The request path.
        path: String,
        /// The HTTP status.
        status: u16,
        /// The API's machine-readable error code (`mempool_full`, ...), or `http_<status>`.
        code: String,
        /// The answer's body, for a person.
        body: String,
    },
    /// The answer's body could not be read (too large, cut short).
    #[error("reading the answer of {api}{path}: {detail}")]
    Body {
        /// The API address.
        api: SocketAddr,
        /// The request path.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// The answer is not the JSON expected.
    #[error(
        "unexpected answer from {api}{path} (is that a playergold node of this version?): {source}"
    )]
    Decode {
        /// The API address.
        api: SocketAddr,
        /// The request path.
        path: String,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// `GET /api/v1/status`, the fields the bench reads.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Status {
    /// Height of the best tip.
    pub(crate) best_height: Height,
    /// Hash of the best tip.
    pub(crate) best_hash: BlockHash,
    /// Transactions in the mempool.
    pub(crate) mempool_size: usize,
    /// Connected peers.
    pub(crate) peer_count: usize,
    /// `healthy`, `degraded` or `partitioned`.
    pub(crate) network_state: String,
}

/// One entry of `GET /api/v1/bans` (only bans in force are listed).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Ban {
    /// The banned peer.
    pub(crate) peer_id: String,
}

/// `GET /api/v1/chain`, the fields the bench reads.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ChainView {
    /// The newest blocks of the best chain, newest first.
    pub(crate) blocks: Vec<BlockSummary>,
}

/// One block of [`ChainView`].
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct BlockSummary {
    /// Its height.
    pub(crate) height: Height,
    /// Its hash.
    pub(crate) hash: BlockHash,
    /// Its slot's start.
    pub(crate) timestamp_ms: TimestampMs,
    /// Transactions it carries.
    pub(crate) tx_count: usize,
}

/// `GET /api/v1/blocks/{id}`, the fields the bench reads.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct BlockView {
    /// Its hash.
    pub(crate) hash: BlockHash,
    /// Its slot's start.
    pub(crate) timestamp_ms: TimestampMs,
    /// Its transactions.
    pub(crate) txs: Vec<TxRef>,
}

/// A transaction of [`BlockView`]: only its id.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct TxRef {
    /// The transaction's id.
    pub(crate) id: TxId,
}

/// `POST /api/v1/transactions`' answer.
#[derive(Debug, Deserialize)]
struct Submitted {
    id: TxId,
}

/// The API's error body.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: String,
}

/// One node's API.
#[derive(Debug)]
pub(crate) struct NodeApi {
    addr: SocketAddr,
    idle: Mutex<Vec<SendRequest<String>>>,
}

impl NodeApi {
    /// A client of the API at `addr`; connects on the first request.
    pub(crate) fn new(addr: SocketAddr) -> NodeApi {
        NodeApi {
            addr,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// `GET /api/v1/status`.
    pub(crate) async fn status(&self) -> Result<Status, ApiError> {
        self.get_json("/api/v1/status").await
    }

    /// `GET /api/v1/bans`.
    pub(crate) async fn bans(&self) -> Result<Vec<Ban>, ApiError> {
        self.get_json("/api/v1/bans").await
    }

    /// `GET /metrics`: Prometheus text.
    pub(crate) async fn metrics(&self) -> Result<String, ApiError> {
        let bytes = self.call(Method::GET, "/metrics", None).await?;
        String::from_utf8(bytes).map_err(|e| ApiError::Body {
            api: self.addr,
            path: "/metrics".into(),
            detail: e.to_string(),
        })
    }

    /// `GET /api/v1/chain?limit=N`: the newest `limit` (at most [`MAX_CHAIN_BLOCKS`]) blocks.
    pub(crate) async fn chain(&self, limit: usize) -> Result<ChainView, ApiError> {
        self.get_json(&format!("/api/v1/chain?limit={limit}")).await
    }

    /// `GET /api/v1/blocks/{id}`, `id` a best-chain height or a block hash.
    pub(crate) async fn block(&self, id: &str) -> Result<BlockView, ApiError> {
        self.get_json(&format!("/api/v1/blocks/{id}")).await
    }

    /// `POST /api/v1/transactions` with a signed transaction's JSON; its id when accepted.
    pub(crate) async fn submit(&self, tx_json: String) -> Result<TxId, ApiError> {
        const PATH: &str = "/api/v1/transactions";
        let bytes = self.call(Method::POST, PATH, Some(tx_json)).await?;
        self.decode::<Submitted>(PATH, &bytes).map(|s| s.id)
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let bytes = self.call(Method::GET, path, None).await?;
        self.decode(path, &bytes)
    }

    fn decode<T: DeserializeOwned>(&self, path: &str, bytes: &[u8]) -> Result<T, ApiError> {
        serde_json::from_slice(bytes).map_err(|source| ApiError::Decode {
            api: self.addr,
            path: path.into(),
            source,
        })
    }

    /// One request, within [`REQUEST_TIMEOUT`]; the body of a 2xx answer, else
    /// [`ApiError::Status`].
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Vec<u8>, ApiError> {
        let exchange = async {
            // Taken in its own statement: the lock must not live across the awaits below.
            let pooled = self.idle.lock().pop();
            match pooled {
                Some(sender) => {
                    let retry = (method.clone(), body.clone());
                    match self.exchange(sender, method, path, body).await {
                        // The node may close a kept-alive connection just as it is reused
                        // (hyper's idle header timeout): try once more on a fresh one.
                        Err(ApiError::Http { .. }) => {
                            let sender = self.connect(path).await?;
                            self.exchange(sender, retry.0, path, retry.1).await
                        }
                        other => other,
                    }
                }
                None => {
                    let sender = self.connect(path).await?;
                    self.exchange(sender, method, path, body).await
                }
            }
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| ApiError::Timeout {
                api: self.addr,
                path: path.into(),
            })??;
        if status.is_success() {
            return Ok(bytes);
        }
        let code = serde_json::from_slice::<ErrorBody>(&bytes)
            .map_or_else(|_| format!("http_{}", status.as_u16()), |e| e.error);
        Err(ApiError::Status {
            api: self.addr,
            path: path.into(),
            status: status.as_u16(),
            code,
            body: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
        })
    }

    async fn connect(&self, path: &str) -> Result<SendRequest<String>, ApiError> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|source| ApiError::Connect {
                api: self.addr,
                source,
            })?;
        // Requests are small and answered at once: do not let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ApiError::Http {
                api: self.addr,
                path: path.into(),
                source,
            })?;
        // The connection task ends when the sender is dropped or the node closes it.
        tokio::spawn(connection);
        Ok(sender)
    }

    /// Sends one request on `sender`, reads the whole answer and keeps the connection for the
    /// next request.
    async fn exchange(
        &self,
        mut sender: SendRequest<String>,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, Vec<u8>), ApiError> {
        let http = |source| ApiError::Http {
            api: self.addr,
            path: path.into(),
            source,
        };
        sender.ready().await.map_err(http)?;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.addr.to_string());
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(body.unwrap_or_default())
            .map_err(|e| ApiError::Body {
                api: self.addr,
                path: path.into(),
                detail: format!("cannot build the request: {e}"),
            })?;
        let response = sender.send_request(request).await.map_err(http)?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| ApiError::Body {
                api: self.addr,
                path: path.into(),
                detail: e.to_string(),
            })?
            .to_bytes()
            .to_vec();
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE_CONNECTIONS && !sender.is_closed() {
            idle.push(sender);
        }
        Ok((status, bytes))
    }

    /// Closes the idle connections (before the nodes stop, so none waits on them).
    pub(crate) fn close(&self) {
        self.idle.lock().clear();
    }
}
