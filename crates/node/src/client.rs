//! The commands that talk to a running node's HTTP API: `playergold status`, `peers`, `ban`,
//! `unban` and `tx send`. Each prints text, or JSON with the global `--json` flag (the API's
//! answer as it came, plus for `tx send` what was signed).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::BodyExt;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use playergold_primitives::{Address, Amount, Keypair, Nonce, TimestampMs, UnsignedTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{BanView, ErrorBody, PeerView, StatusResponse, SubmitResponse};
use crate::config::DEFAULT_API;
use crate::keyfile;

/// How long one API call may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the node's API is.
#[derive(Debug, clap::Args)]
pub(crate) struct ApiArgs {
    /// The node's API address.
    #[arg(long, value_name = "HOST:PORT", env = "PLAYERGOLD_API", default_value_t = DEFAULT_API.to_string())]
    api: String,
}

/// Arguments of `playergold tx send`.
#[derive(Debug, clap::Args)]
pub(crate) struct TxSendArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Recipient address (40 hex chars).
    #[arg(long, value_name = "ADDRESS")]
    to: Address,
    /// Amount in base units.
    #[arg(long, value_name = "N")]
    amount: u64,
    /// Fee in base units; higher fees are included first.
    #[arg(long, value_name = "N", default_value_t = 1)]
    fee: u64,
    /// The sender's sequence number.
    #[arg(long, value_name = "N", default_value_t = 0)]
    nonce: u64,
    /// Sender key file (e.g. from `playergold keys generate`) [default: a throw-away key].
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
}

/// `playergold status`.
pub(crate) fn status(args: ApiArgs, json: bool) -> anyhow::Result<()> {
    let s: StatusResponse = block_on(call(&args.api, Method::GET, "/api/v1/status", None))?;
    if json {
        return print_json(&s);
    }
    println!("peer id        {}", s.peer_id);
    println!("network        {} (genesis {})", s.network, s.genesis_hash);
    println!("best block     {} {}", s.best_height, s.best_hash);
    println!("mempool        {} transactions", s.mempool_size);
    println!("peers          {}", s.peer_count);
    println!("sync           {}", s.sync_state);
    println!("network state  {}", s.network_state);
    println!("listening on   {}", s.listen_addrs.join(", "));
    if !s.external_addrs.is_empty() {
        println!("external       {}", s.external_addrs.join(", "));
    }
    Ok(())
}

/// `playergold peers`.
pub(crate) fn peers(args: ApiArgs, json: bool) -> anyhow::Result<()> {
    let peers: Vec<PeerView> = block_on(call(&args.api, Method::GET, "/api/v1/peers", None))?;
    if json {
        return print_json(&peers);
    }
    if peers.is_empty() {
        println!("no peers connected");
        return Ok(());
    }
    println!(
        "{:<54} {:<9} {:<16} {:>9} {:>6}  capabilities",
        "peer id", "direction", "address", "ping ms", "score"
    );
    for p in peers {
        println!(
            "{:<54} {:<9} {:<16} {:>9} {:>6}  {}",
            p.peer_id,
            p.direction,
            p.addr.unwrap_or_else(|| "-".into()),
            p.latency_ms
                .map_or_else(|| "-".into(), |ms| format!("{ms:.1}")),
            p.reputation,
            p.capabilities.join(",")
        );
    }
    Ok(())
}

/// Arguments of `playergold ban`.
#[derive(Debug, clap::Args)]
pub(crate) struct BanArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The peer to ban (its PeerId).
    peer: String,
    /// How long, in seconds.
    #[arg(long, default_value_t = 24 * 60 * 60)]
    duration_secs: u64,
}

/// Arguments of `playergold unban`.
#[derive(Debug, clap::Args)]
pub(crate) struct UnbanArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The peer whose ban to lift.
    peer: String,
}

/// `playergold ban`: the node disconnects the peer and refuses it until the ban ends, also
/// across restarts.
pub(crate) fn ban(args: BanArgs, json: bool) -> anyhow::Result<()> {
    let body = serde_json::json!({ "peer_id": args.peer, "duration_secs": args.duration_secs });
    let ban: BanView = block_on(call(
        &args.api.api,
        Method::POST,
        "/api/v1/bans",
        Some(body.to_string()),
    ))?;
    if json {
        return print_json(&ban);
    }
    println!(
        "banned {} until {} (ban number {})",
        ban.peer_id, ban.until_ms, ban.count
    );
    Ok(())
}

/// `playergold unban`.
pub(crate) fn unban(args: UnbanArgs, json: bool) -> anyhow::Result<()> {
    let path = format!("/api/v1/bans/{}", args.peer);
    let out: serde_json::Value = block_on(call(&args.api.api, Method::DELETE, &path, None))?;
    if json {
        return print_json(&out);
    }
    println!("unbanned {}", args.peer);
    Ok(())
}

/// `playergold tx send`: signs locally and submits.
pub(crate) fn tx_send(args: TxSendArgs, json: bool) -> anyhow::Result<()> {
    let key = match &args.key {
        Some(path) => keyfile::load(path)?,
        None => Keypair::generate(),
    };
    let tx = UnsignedTransaction {
        from: key.public(),
        to: args.to,
        amount: Amount(args.amount),
        fee: Amount(args.fee),
        nonce: Nonce(args.nonce),
        timestamp_ms: TimestampMs::now(),
    }
    .sign(&key);
    let body = serde_json::to_string(&tx)?;
    let r: SubmitResponse = block_on(call(
        &args.api.api,
        Method::POST,
        "/api/v1/transactions",
        Some(body),
    ))?;
    if json {
        return print_json(&serde_json::json!({
            "id": r.id,
            "from": key.public().address().to_string(),
            "to": args.to.to_string(),
            "amount": args.amount,
            "fee": args.fee,
            "nonce": args.nonce,
        }));
    }
    println!("submitted transaction {}", r.id);
    println!(
        "from {}{} to {}, amount {}, fee {}",
        key.public().address(),
        if args.key.is_none() {
            " (a throw-away key)"
        } else {
            ""
        },
        args.to,
        args.amount,
        args.fee
    );
    println!(
        "follow it with: curl http://{}/api/v1/transactions/{}",
        args.api.api, r.id
    );
    Ok(())
}

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn block_on<T>(f: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// One HTTP/1.1 request to the API, decoding a JSON answer or the API's error body.
pub(crate) async fn call<T: DeserializeOwned>(
    api: &str,
    method: Method,
    path: &str,
    body: Option<String>,
) -> anyhow::Result<T> {
    let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, request(api, method, path, body))
        .await
        .with_context(|| {
            format!(
                "the node's API at {api} did not answer within {}s",
                REQUEST_TIMEOUT.as_secs()
            )
        })??;
    if status.is_success() {
        return serde_json::from_slice(&bytes).with_context(|| {
            format!("unexpected answer from {api}{path}: is that a playergold node?")
        });
    }
    match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(e) => bail!(
            "the node refused: {} ({}, HTTP {status})",
            e.detail,
            e.error
        ),
        Err(_) => bail!("HTTP {status} from {api}{path}: is that a playergold node's API address?"),
    }
}

async fn request(
    api: &str,
    method: Method,
    path: &str,
    body: Option<String>,
) -> anyhow::Result<(StatusCode, Vec<u8>)> {
    let stream = tokio::net::TcpStream::connect(api).await.with_context(|| {
        format!(
            "cannot reach the node's API at {api}: is `playergold node` running? \
             Pass its address with --api HOST:PORT"
        )
    })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP handshake with {api}"))?;
    let connection = tokio::spawn(connection);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, api);
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let response = sender
        .send_request(req.body(body.unwrap_or_default())?)
        .await
        .with_context(|| format!("request to {api}{path}"))?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes().to_vec();
    connection.abort();
    Ok((status, bytes))
}
