//! `--json` output for scripts: every command that prints prints one JSON document (or one
//! object per line for the long-running `node` and `devnet`), and the text stays the default.

use std::path::Path;

use crate::{RunningNode, playergold, run_ok};

fn json(cmd: &mut std::process::Command) -> serde_json::Value {
    let out = run_ok(cmd);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{cmd:?} printed no JSON: {e}:\n{out}"))
}

#[test]
fn init_and_keys_print_the_identity_as_json() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("node");
    let init = json(
        playergold()
            .args(["init", "--json", "--network", "testnet", "--data-dir"])
            .arg(&data),
    );
    assert_eq!(init["data_dir"], data.display().to_string());
    assert_eq!(
        init["config"],
        data.join("config.toml").display().to_string()
    );
    let peer_id = init["peer_id"].as_str().expect("peer_id");
    assert!(peer_id.starts_with("12D3KooW"), "{init}");
    let address = init["address"].as_str().expect("address");
    assert!(
        address.len() == 40
            && address
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
        "{init}"
    );

    // `--json` is global: it may come before the subcommand too.
    let shown = json(
        playergold()
            .args(["--json", "keys", "show", "--data-dir"])
            .arg(&data),
    );
    assert_eq!(shown["peer_id"], peer_id);
    assert_eq!(shown["address"], address);
    assert_eq!(shown["public_key"], init["public_key"]);
    let text = run_ok(playergold().args(["keys", "show", "--data-dir"]).arg(&data));
    assert!(text.contains(&format!("peer id    {peer_id}")), "{text}");

    let key = dir.path().join("other.key");
    let generated = json(
        playergold()
            .args(["keys", "generate", "--json", "--out"])
            .arg(&key),
    );
    assert_eq!(generated["key_file"], key.display().to_string());
    assert_ne!(generated["peer_id"], peer_id);
    assert!(key.is_file());
}

#[test]
fn a_node_reports_start_listening_and_stop_as_json_lines() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("node");
    crate::init(&data);
    let node = RunningNode::spawn(
        playergold()
            .args(["node", "--json", "--api", "127.0.0.1:0"])
            .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(["--no-mdns", "--no-dht", "--no-bootstrap", "--data-dir"])
            .arg(&data),
    );
    let line = |prefix: &str| -> serde_json::Value {
        let rest = node.next_line_starting(prefix);
        serde_json::from_str(&format!("{prefix}{rest}")).expect("a JSON line")
    };
    let started = line("{\"event\":\"started\"");
    assert_eq!(started["network"], "testnet");
    assert!(started["best_hash"].as_str().is_some_and(|h| h.len() == 64));
    let listening = line("{\"event\":\"listening\"");
    let api = listening["api"].as_str().expect("api address").to_string();
    assert!(api.starts_with("127.0.0.1:"), "{listening}");
    let p2p = listening["p2p"].as_array().expect("p2p addresses");
    assert!(
        p2p.iter()
            .all(|a| a.as_str().is_some_and(|a| a.contains("/p2p/12D3KooW"))),
        "{listening}"
    );

    let status = json(playergold().args(["status", "--json", "--api", &api]));
    assert_eq!(status["peer_id"], listening["peer_id"]);
    let peers = json(playergold().args(["peers", "--json", "--api", &api]));
    assert_eq!(peers, serde_json::json!([]));

    let (exit, stopped, stderr) = node.terminate_with("{\"event\":\"stopped\"");
    assert!(exit.success(), "{stderr}");
    let stopped: serde_json::Value =
        serde_json::from_str(&format!("{{\"event\":\"stopped\"{stopped}")).expect("JSON line");
    assert!(stopped["best_height"].as_u64().is_some(), "{stopped}");
}

#[test]
fn devnet_init_only_prints_the_devnet_as_json() {
    let dir = tempfile::tempdir().expect("temp dir");
    let net = dir.path().join("devnet");
    let devnet = json(
        playergold()
            .args(["devnet", "--json", "--init-only", "--nodes", "3", "--dir"])
            .arg(&net),
    );
    let nodes = devnet["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(node["index"], i);
        assert!(Path::new(node["data_dir"].as_str().expect("data_dir")).is_dir());
        assert!(node["p2p"].as_str().is_some_and(|a| a.contains("/p2p/")));
    }
    assert_eq!(
        devnet["dashboard"],
        format!("http://{}/", nodes[0]["api"].as_str().expect("api"))
    );
    assert!(net.join("devnet.json").is_file());
}
