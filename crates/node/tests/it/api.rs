//! The HTTP API and the commands that use it, against a running node.

use crate::{RunningNode, http, http_json, init, playergold, run_ok, wait_for};

#[test]
fn a_transaction_sent_with_the_cli_is_included_and_shown_by_the_api() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("node");
    let peer_id = init(&data);
    let node = RunningNode::start(&data);
    let api = node.api.clone();

    assert_eq!(http(&api, "GET", "/health", None).0, 200);
    let status: serde_json::Value = serde_json::from_str(&run_ok(
        playergold().args(["status", "--json", "--api", &api]),
    ))
    .expect("status JSON");
    assert_eq!(status["peer_id"], peer_id.as_str());
    assert_eq!(status["network"], "testnet");
    // A lone node has nobody to sync from.
    assert_eq!(status["sync_state"], "idle");
    assert!(
        ["healthy", "degraded", "partitioned"]
            .contains(&status["network_state"].as_str().unwrap_or_default()),
        "{status}"
    );
    assert_eq!(status["peer_count"], 0);
    assert!(status["best_hash"].as_str().is_some_and(|h| h.len() == 64));
    let human = run_ok(playergold().args(["status", "--api", &api]));
    assert!(
        human.contains("testnet") && human.contains("idle"),
        "{human}"
    );

    let to = "11".repeat(20);
    let sent: serde_json::Value = serde_json::from_str(&run_ok(playergold().args([
        "tx", "send", "--json", "--api", &api, "--to", &to, "--amount", "5", "--fee", "2",
    ])))
    .expect("tx send JSON");
    let id = sent["id"].as_str().expect("tx id").to_string();

    let included = wait_for("the transaction to be included", || {
        let (code, tx) = http_json(&api, "GET", &format!("/api/v1/transactions/{id}"), None);
        assert_eq!(code, 200, "{tx}");
        (tx["status"] == "included").then_some(tx)
    });
    let height = included["block_height"].as_u64().expect("block height");
    let (code, block) = http_json(&api, "GET", &format!("/api/v1/blocks/{height}"), None);
    assert_eq!(code, 200, "{block}");
    assert_eq!(block["hash"], included["block_hash"]);
    let tx = &block["txs"][0];
    assert_eq!(tx["id"], id.as_str());
    assert_eq!(tx["to"], to.as_str());
    assert_eq!(tx["amount"], 5);
    let hash = block["hash"].as_str().expect("block hash");
    let (code, by_hash) = http_json(&api, "GET", &format!("/api/v1/blocks/{hash}"), None);
    assert_eq!((code, &by_hash["height"]), (200, &block["height"]));

    let (code, chain) = http_json(&api, "GET", "/api/v1/chain?limit=2", None);
    assert_eq!(code, 200, "{chain}");
    assert!(chain["tip_height"].as_u64() >= Some(height), "{chain}");
    // The tip is at least at the including block's height (>= 1): two blocks exist.
    assert_eq!(chain["blocks"].as_array().map(Vec::len), Some(2), "{chain}");
    assert_eq!(
        chain["blocks"][0]["hash"], chain["tip_hash"],
        "newest first"
    );

    let (code, metrics) = http(&api, "GET", "/metrics", None);
    assert_eq!(code, 200);
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert_eq!(value("playergold_api_transactions_accepted_total"), 1);
    assert!(value("playergold_transactions_included_total") >= 1);
    assert!(value("playergold_blocks_produced_total") >= 1);
    assert!(value("playergold_chain_height") >= height);
    // The network's peers by direction, and what the services report, read at scrape time.
    assert_eq!(value("playergold_net_peers_inbound"), 0);
    assert_eq!(value("playergold_net_peers_outbound"), 0);
    assert_eq!(value("playergold_bans"), 0);
    assert_eq!(value("playergold_relay_peers"), 0);
    assert_eq!(
        value("playergold_relay_messages_total{direction=\"in\",kind=\"announce\"}"),
        0
    );
    assert_eq!(
        value("playergold_relay_bytes_total{direction=\"out\",kind=\"block\"}"),
        0
    );
    assert_eq!(value("playergold_relay_duplicates_total{kind=\"tx\"}"), 0);
    assert_eq!(value("playergold_sync_bytes_total{direction=\"in\"}"), 0);
    assert_eq!(value("playergold_sync_state{state=\"idle\"}"), 1);
    assert!(value("playergold_sync_target_height") <= value("playergold_chain_height"));
    let states: u64 = ["healthy", "degraded", "partitioned"]
        .iter()
        .map(|s| value(&format!("playergold_network_state{{state=\"{s}\"}}")))
        .sum();
    assert_eq!(states, 1, "exactly one network state is current");
    assert_eq!(
        value("playergold_reputation_peers{score=\"(-10,10)\"}"),
        0,
        "a lone node scores nobody"
    );
    for help in [
        "# HELP playergold_relay_messages",
        "# HELP playergold_propagation_delay_seconds",
        "# HELP playergold_sync_height",
    ] {
        assert!(metrics.contains(help), "{help} missing:\n{metrics}");
    }
    assert!(metrics.ends_with("# EOF\n"));
    dashboard_uses_only_exported_metrics(&metrics, false);

    let (exit, stopped, stderr) = node.terminate();
    assert!(exit.success(), "{stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert!(stopped.contains("1 txs included"), "{stopped}");
}

#[test]
fn api_errors_are_json_with_a_matching_status_code() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("node");
    init(&data);
    let node = RunningNode::start(&data);
    let api = node.api.as_str();

    let unknown_tx = format!("/api/v1/transactions/{}", "ab".repeat(32));
    let oversized = format!("{{\"pad\": \"{}\"}}", "x".repeat(32 * 1024));
    for (method, path, body, code, error) in [
        ("GET", unknown_tx.as_str(), None, 404, "not_found"),
        ("GET", "/api/v1/transactions/xyz", None, 400, "bad_request"),
        ("GET", "/api/v1/blocks/999999", None, 404, "not_found"),
        ("GET", "/api/v1/blocks/tip", None, 400, "bad_request"),
        ("GET", "/api/v1/nothing", None, 404, "not_found"),
        ("DELETE", "/api/v1/status", None, 405, "method_not_allowed"),
        (
            "POST",
            "/api/v1/transactions",
            Some("{"),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/api/v1/transactions",
            Some("{}"),
            422,
            "invalid_body",
        ),
        (
            "POST",
            "/api/v1/transactions",
            Some(oversized.as_str()),
            413,
            "payload_too_large",
        ),
    ] {
        let (got, json) = http_json(api, method, path, body);
        assert_eq!(
            (got, &json["error"]),
            (code, &error.into()),
            "{method} {path}: {json}"
        );
        assert!(
            json["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{json}"
        );
    }

    let out = playergold()
        .args([
            "tx",
            "send",
            "--api",
            "127.0.0.1:1",
            "--to",
            &"22".repeat(20),
            "--amount",
            "1",
        ])
        .output()
        .expect("run tx send");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is `playergold node` running?"), "{stderr}");
}

#[test]
fn a_second_node_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("node");
    init(&data);
    let first = RunningNode::start(&data);
    let second = playergold()
        .args([
            "node",
            "--api",
            "127.0.0.1:0",
            "--seconds",
            "1",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .expect("run the second node");
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("is in use by another playergold node"),
        "unclear error: {stderr}"
    );
    let (exit, _, stderr) = first.terminate();
    assert!(exit.success(), "{stderr}");
}

/// Series that exist only once the node has had a connection: libp2p's per-transport byte
/// counters are labelled by transport, and an empty family is not exported at all.
const AFTER_FIRST_CONNECTION: [&str; 1] = ["playergold_net_libp2p_bandwidth_bytes_total"];

/// Every `playergold_*` series in `etc/grafana-dashboard.json` is one the node exports (those in
/// [`AFTER_FIRST_CONNECTION`] only checked when the node has been `connected`).
pub(crate) fn dashboard_uses_only_exported_metrics(exposition: &str, connected: bool) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../etc/grafana-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read the dashboard"))
            .expect("dashboard JSON");
    let exprs: Vec<&str> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(!exprs.is_empty());
    for expr in exprs {
        for (start, _) in expr.match_indices("playergold_") {
            let name: String = expr[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // Exported: a series of that name, labelled or not, or the family's declaration
            // (a labelled family has no series until something happens, e.g. the transports'
            // byte counters before the first connection). Counters and histograms are queried
            // through their `_total` and `_bucket` series.
            let family = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            if !connected && AFTER_FIRST_CONNECTION.contains(&name.as_str()) {
                continue;
            }
            assert!(
                exposition
                    .lines()
                    .any(|l| l.starts_with(&format!("{name} "))
                        || l.starts_with(&format!("{name}{{"))
                        || l.starts_with(&format!("# TYPE {family} "))),
                "the dashboard queries {name}, which the node does not export"
            );
        }
    }
}

#[test]
fn a_ban_set_through_the_cli_survives_a_restart_and_can_be_lifted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("node");
    init(&data);
    // Any valid PeerId will do: the ban is kept whether or not the peer ever connects.
    let other = tempfile::tempdir().expect("temp dir");
    let victim = init(&other.path().join("victim"));

    let node = RunningNode::start(&data);
    let banned: serde_json::Value = serde_json::from_str(&run_ok(playergold().args([
        "ban",
        "--json",
        "--api",
        &node.api,
        &victim,
        "--duration-secs",
        "3600",
    ])))
    .expect("ban JSON");
    assert_eq!(banned["peer_id"], victim.as_str());
    let (code, bans) = http_json(&node.api, "GET", "/api/v1/bans", None);
    assert_eq!(code, 200);
    assert_eq!(bans[0]["peer_id"], victim.as_str(), "{bans}");
    let (status, _, _) = node.terminate();
    assert!(status.success());

    let node = RunningNode::start(&data);
    let (code, bans) = http_json(&node.api, "GET", "/api/v1/bans", None);
    assert_eq!(code, 200);
    assert_eq!(
        bans.as_array().map(Vec::len),
        Some(1),
        "the ban is still in force after the restart: {bans}"
    );
    assert_eq!(bans[0]["peer_id"], victim.as_str());
    run_ok(playergold().args(["unban", "--api", &node.api, &victim]));
    let (_, bans) = http_json(&node.api, "GET", "/api/v1/bans", None);
    assert_eq!(bans, serde_json::json!([]));
    let (code, err) = http_json(&node.api, "DELETE", &format!("/api/v1/bans/{victim}"), None);
    assert_eq!(code, 404, "{err}");
    let (status, _, _) = node.terminate();
    assert!(status.success());
}

/// `POST /api/v1/peers` dials the address given and answers the new peer's entry; `status`
/// lists the external addresses the operator declared next to the listening ones.
#[test]
fn a_peer_added_through_the_api_is_answered_with_its_entry() {
    let dir = tempfile::tempdir().expect("temp dir");
    let net = dir.path().join("devnet");
    // Two nodes of one devnet (one genesis), each started alone.
    run_ok(
        playergold()
            .args(["devnet", "--init-only", "--nodes", "2", "--dir"])
            .arg(&net),
    );
    let external = "/dns4/node-a.example/tcp/9000";
    let a = RunningNode::start_with(
        &net.join("node-0"),
        &["--no-bootstrap", "--external-addr", external],
    );
    let b = RunningNode::start(&net.join("node-1"));
    let (code, status_a) = http_json(&a.api, "GET", "/api/v1/status", None);
    assert_eq!(code, 200, "{status_a}");
    assert_eq!(status_a["external_addrs"], serde_json::json!([external]));
    let (code, status_b) = http_json(&b.api, "GET", "/api/v1/status", None);
    assert_eq!(code, 200, "{status_b}");
    let b_id = status_b["peer_id"].as_str().expect("peer id").to_string();
    let b_addr = status_b["listen_addrs"]
        .as_array()
        .and_then(|addrs| addrs.iter().find_map(|a| a.as_str()))
        .expect("a listen address")
        .to_string();
    let body = serde_json::json!({ "addr": format!("{b_addr}/p2p/{b_id}") }).to_string();
    let (code, peer) = http_json(&a.api, "POST", "/api/v1/peers", Some(&body));
    assert_eq!(code, 200, "{peer}");
    assert_eq!(peer["peer_id"], b_id.as_str());
    assert!(
        ["inbound", "outbound"].contains(&peer["direction"].as_str().unwrap_or_default()),
        "{peer}"
    );
    assert!(peer["reputation"].is_i64(), "{peer}");
}
