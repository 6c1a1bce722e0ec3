use std::os::unix::fs::PermissionsExt;

use crate::playergold;

fn height_in(line: &str) -> Option<u64> {
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "height" {
            return words.next()?.parse().ok();
        }
    }
    None
}

#[test]
fn a_dev_node_produces_blocks_with_transactions_and_resumes_after_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("node");
    crate::init(&data);
    let mode = std::fs::metadata(data.join("node_key"))
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let run = |secs: &str| {
        let out = playergold()
            .args([
                "node",
                "--tps",
                "50",
                "--api",
                "127.0.0.1:0",
                "--seconds",
                secs,
            ])
            .arg("--data-dir")
            .arg(&data)
            .output()
            .expect("run node");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let last = stdout
            .lines()
            .filter(|l| l.starts_with("node stopped"))
            .find_map(|l| height_in(l.split(',').next()?))
            .expect("final height");
        (stdout, last)
    };
    let (first_out, first) = run("3");
    // 3 s of 200 ms slots: some blocks, allowing for a slow start.
    assert!(first >= 3, "only {first} blocks produced:\n{first_out}");
    let included: u64 = first_out
        .split(", ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("included count");
    assert!(
        included > 0,
        "no load transaction was included:\n{first_out}"
    );
    let (second_out, second) = run("2");
    assert!(
        second > first,
        "restart did not continue the chain ({first} -> {second}):\n{second_out}"
    );
    assert!(
        second_out.contains(&format!("at height {first}")),
        "{second_out}"
    );
}

#[test]
fn a_key_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("node");
    let init = playergold()
        .args(["init", "--data-dir"])
        .arg(&data)
        .output()
        .expect("run init");
    assert!(init.status.success());
    let key = data.join("node_key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = playergold()
        .args([
            "node",
            "--seconds",
            "1",
            "--api",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .expect("run node");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("chmod 600"), "unclear error: {stderr}");
}
