//! `playergold devnet` (the README's main command) and the dashboard in headless Chromium.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{RunningNode, http_json, playergold};

/// How long the devnet's nodes may take to find each other.
const MESH_DEADLINE: Duration = Duration::from_secs(60);

/// The Chromium binary `scripts/test` installs.
fn chromium() -> PathBuf {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        })
        .expect("headless Chromium is not installed: run ./scripts/test, which installs it")
}

/// Runs headless Chromium on `url` with the flags every test uses and `extra`; returns stdout.
fn headless(url: &str, profile: &Path, extra: &[&str]) -> String {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Lets the page's fetches and timers run before the DOM is dumped.
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every value of `attr="..."` in `html`.
fn attr_values(html: &str, attr: &str) -> Vec<String> {
    let needle = format!("{attr}=\"");
    html.match_indices(&needle)
        .filter_map(|(i, _)| {
            let rest = html.get(i + needle.len()..)?;
            rest.split('"').next().map(str::to_string)
        })
        .collect()
}

#[test]
fn the_devnet_command_runs_connected_nodes_and_the_dashboard_shows_them() {
    let _turn = crate::many_processes();
    let dir = tempfile::tempdir().expect("temp dir");
    let net_dir = dir.path().join("devnet");
    let devnet = RunningNode::spawn(
        playergold()
            .args(["devnet", "--nodes", "5", "--slot-ms", "1000", "--dir"])
            .arg(&net_dir),
    );
    let dashboard = devnet.next_line_starting("dashboard ").trim().to_string();
    let file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(net_dir.join("devnet.json")).expect("devnet.json"),
    )
    .expect("devnet.json is JSON");
    let nodes = file["nodes"].as_array().expect("nodes").clone();
    assert_eq!(nodes.len(), 5);
    let ids: Vec<String> = nodes
        .iter()
        .map(|n| n["peer_id"].as_str().expect("peer_id").to_string())
        .collect();
    for node in &nodes {
        assert!(node["p2p"].as_str().is_some_and(|a| a.contains("/p2p/")));
        assert!(Path::new(node["data_dir"].as_str().expect("data_dir")).is_dir());
    }

    // Every node reaches the four others (node 0 is the only bootstrap; the rest is discovery).
    let deadline = Instant::now() + MESH_DEADLINE;
    for node in &nodes {
        let api = node["api"].as_str().expect("api");
        loop {
            let (code, status) = http_json(api, "GET", "/api/v1/status", None);
            assert_eq!(code, 200, "{status}");
            if status["peer_count"] == 4 {
                assert!(ids.contains(&status["peer_id"].as_str().unwrap_or_default().to_string()));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {api} has {} peers, not 4",
                status["peer_count"]
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // The dashboard's delay histogram shows blocks node 0 received from the others: wait until
    // it has one (the mesh can form before the first block from a peer arrives).
    let api0 = nodes[0]["api"].as_str().expect("api");
    loop {
        let (_, metrics) = crate::http(api0, "GET", "/metrics", None);
        let received = metrics.lines().any(|l| {
            l.strip_prefix("playergold_propagation_delay_seconds_count{kind=\"block\"} ")
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|n| n >= 1.0)
        });
        if received {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 0 received no block from a peer"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let profile = dir.path().join("chromium-profile");
    let dom = headless(&dashboard, &profile, &["--dump-dom"]);
    let rows = attr_values(&dom, "data-peer-id");
    let self_id = ids.first().expect("node 0");
    for other in ids.iter().skip(1) {
        assert!(
            rows.iter().filter(|r| *r == other).count() >= 2,
            "the peers table and the graph should both show {other}: {rows:?}"
        );
    }
    assert!(rows.contains(self_id), "the graph shows the node itself");
    assert_eq!(attr_values(&dom, "data-nodes"), vec!["5"], "graph nodes");
    assert_eq!(attr_values(&dom, "data-links"), vec!["10"], "graph links");
    assert!(dom.contains(&format!("id=\"peer-id\">{self_id}<")));
    // Bandwidth from the transports' byte counters, and the propagation-delay histogram of the
    // blocks node 0 received from the other validators.
    let bytes_in: Vec<u64> = attr_values(&dom, "data-in")
        .iter()
        .filter_map(|v| v.parse().ok())
        .collect();
    assert!(
        bytes_in.first().is_some_and(|b| *b > 0),
        "bandwidth in: {bytes_in:?}"
    );
    let bars: Vec<(String, u64)> = attr_values(&dom, "data-kind")
        .into_iter()
        .zip(
            attr_values(&dom, "data-count")
                .iter()
                .map(|c| c.parse().unwrap_or(0)),
        )
        .collect();
    assert!(
        bars.iter()
            .any(|(kind, count)| kind == "block" && *count > 0),
        "the propagation-delay histogram shows blocks: {bars:?}"
    );
    let (code, metrics) = crate::http(
        nodes[0]["api"].as_str().expect("api"),
        "GET",
        "/metrics",
        None,
    );
    assert_eq!(code, 200);
    let sample = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing:\n{metrics}"))
    };
    assert!(sample("playergold_propagation_delay_seconds_count{kind=\"block\"}") >= 1.0);
    let blocks_in: f64 = ["compact_block", "block"]
        .iter()
        .map(|k| {
            sample(&format!(
                "playergold_relay_bytes_total{{direction=\"in\",kind=\"{k}\"}}"
            ))
        })
        .sum();
    assert!(blocks_in > 0.0, "no block bytes received by relay");
    assert!(sample("playergold_relay_peers") >= 1.0);
    crate::api::dashboard_uses_only_exported_metrics(&metrics, true);

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    headless(
        &dashboard,
        &profile,
        &[
            "--window-size=1280,900",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "screenshot is a PNG");
    println!("dashboard screenshot: {}", shot.display());

    // A transaction sent to node 0 is included in the chain node 4 holds.
    let api = |i: usize| nodes[i]["api"].as_str().expect("api").to_string();
    let to = "22".repeat(20);
    let sent: serde_json::Value = serde_json::from_str(&crate::run_ok(playergold().args([
        "tx",
        "send",
        "--json",
        "--api",
        &api(0),
        "--to",
        &to,
        "--amount",
        "7",
    ])))
    .expect("tx send JSON");
    let id = sent["id"].as_str().expect("tx id").to_string();
    let deadline = Instant::now() + MESH_DEADLINE;
    loop {
        let (code, tx) = http_json(&api(4), "GET", &format!("/api/v1/transactions/{id}"), None);
        if code == 200 && tx["status"] == "included" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 4 never included {id}: {code} {tx}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every node reports the same best block (blocks come every second: ask again until the
    // five answers agree within one round).
    loop {
        let hashes: Vec<serde_json::Value> = (0..5)
            .map(|i| http_json(&api(i), "GET", "/api/v1/status", None).1["best_hash"].clone())
            .collect();
        if hashes.iter().all(|h| *h == hashes[0]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nodes disagree on the best block: {hashes:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let (status, _, _) = devnet.terminate_with("devnet stopped");
    assert!(status.success(), "devnet exited with {status}");
}
