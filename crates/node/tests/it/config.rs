//! Config precedence, validation and the example config, through `playergold config show`.

use std::path::Path;

use crate::{init, playergold, run_ok};

fn show(data: &Path, configure: impl FnOnce(&mut std::process::Command)) -> serde_json::Value {
    let mut cmd = playergold();
    cmd.args(["config", "show", "--json", "--data-dir"])
        .arg(data);
    configure(&mut cmd);
    serde_json::from_str(&run_ok(&mut cmd)).expect("config JSON")
}

#[test]
fn settings_come_from_defaults_then_file_then_environment_then_flags() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("node");
    init(&data);
    // `init` writes the example config, which holds the defaults.
    let defaults = show(&data, |_| {});
    assert_eq!(defaults["max_peers"], 50);
    assert_eq!(defaults["bootstrap"], serde_json::json!([]));

    std::fs::write(
        data.join("config.toml"),
        "max_peers = 11\napi = \"127.0.0.1:9001\"\n\
         bootstrap = [\"/ip4/10.0.0.1/tcp/7000\", \"/ip4/10.0.0.2/tcp/7000\"]\n\
         external_addrs = [\"/ip4/203.0.113.7/tcp/7000\", \"/ip4/203.0.113.7/udp/7000/quic-v1\"]\n",
    )
    .expect("write config");
    let file = show(&data, |_| {});
    assert_eq!(file["max_peers"], 11);
    assert_eq!(file["api"], "127.0.0.1:9001");
    assert_eq!(file["bootstrap"].as_array().map(Vec::len), Some(2));
    assert_eq!(file["external_addrs"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        file["min_peers"], 8,
        "keys missing in the file keep their defaults"
    );

    let env = show(&data, |c| {
        c.env("PLAYERGOLD_MAX_PEERS", "22");
    });
    assert_eq!(env["max_peers"], 22);
    assert_eq!(env["api"], "127.0.0.1:9001");
    let env_addrs = show(&data, |c| {
        c.env("PLAYERGOLD_EXTERNAL_ADDRS", "/ip4/203.0.113.8/tcp/7000");
    });
    assert_eq!(
        env_addrs["external_addrs"],
        serde_json::json!(["/ip4/203.0.113.8/tcp/7000"])
    );

    let flags = show(&data, |c| {
        c.env("PLAYERGOLD_MAX_PEERS", "22")
            .env("PLAYERGOLD_MDNS", "true")
            .args([
                "--max-peers",
                "33",
                "--no-mdns",
                "--bootstrap",
                "/ip4/10.0.0.3/tcp/7000",
                "--external-addr",
                "/ip4/203.0.113.9/tcp/7000",
                "--external-addr",
                "/dns4/node.example.org/tcp/7000",
            ]);
    });
    assert_eq!(
        flags["external_addrs"],
        serde_json::json!([
            "/ip4/203.0.113.9/tcp/7000",
            "/dns4/node.example.org/tcp/7000"
        ]),
        "repeated flags replace the file's list"
    );
    assert_eq!(flags["max_peers"], 33);
    assert_eq!(flags["mdns"], false);
    assert_eq!(
        flags["bootstrap"],
        serde_json::json!(["/ip4/10.0.0.3/tcp/7000"])
    );

    let none = show(&data, |c| {
        c.arg("--no-bootstrap");
    });
    assert_eq!(none["bootstrap"], serde_json::json!([]));
}

#[test]
fn unknown_config_keys_and_variables_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("node");
    init(&data);
    std::fs::write(data.join("config.toml"), "max_peer = 3\n").expect("write config");
    for cmd in ["show", "node"] {
        let mut c = playergold();
        if cmd == "show" {
            c.args(["config", "show"]);
        } else {
            c.args(["node", "--seconds", "1", "--api", "127.0.0.1:0"]);
        }
        let out = c.arg("--data-dir").arg(&data).output().expect("run");
        assert!(!out.status.success(), "{cmd} accepted an unknown key");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("max_peer"),
            "{cmd}: error does not name the key: {stderr}"
        );
    }

    std::fs::remove_file(data.join("config.toml")).expect("remove config");
    let out = playergold()
        .args(["config", "show", "--data-dir"])
        .arg(&data)
        .env("PLAYERGOLD_MAXPEERS", "3")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PLAYERGOLD_MAXPEERS"), "{stderr}");
}

#[test]
fn the_example_config_parses_and_holds_the_defaults() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let from_example = run_ok(
        playergold()
            .args(["config", "show", "--json", "--config"])
            .arg(&example),
    );
    let defaults = run_ok(playergold().args(["config", "show", "--json"]));
    assert_eq!(from_example, defaults);
}
