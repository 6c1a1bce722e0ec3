//! The propagation bench end to end with tiny parameters: both systems run, every item reaches
//! every node, and the report has the shape the issue asks for.

use std::time::Duration;

use playergold_bench::propagation::{self, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_propagation_run_reaches_every_node_and_reports_both_systems() {
    let opts = Options {
        nodes: 6,
        duration: Duration::from_secs(2),
        tx_rate: 20.0,
        block_interval: Duration::from_millis(500),
        max_block_txs: 50,
        backlog: 100,
        drain: Duration::from_secs(10),
        // Six nodes have five peers each: subscriptions alone fill gossipsub's meshes (mesh_n_low
        // is 5), so its first heartbeat need not be awaited.
        gossip_warmup: Duration::from_millis(1_500),
        ..Options::default()
    };
    let report = tokio::time::timeout(Duration::from_secs(60), propagation::run(&opts))
        .await
        .expect("the bench stops by itself")
        .expect("the bench runs");

    for (system, r) in [("ours", &report.ours), ("gossipsub", &report.gossipsub)] {
        assert_eq!(r.tx.items, 40, "{system}: 2 s at 20 tx/s");
        assert_eq!(r.block.items, 3, "{system}: blocks at 0.5, 1 and 1.5 s");
        assert_eq!(r.tx.complete, r.tx.items, "{system}: every tx everywhere");
        assert_eq!(
            r.block.complete, r.block.items,
            "{system}: every block everywhere"
        );
        assert!(
            r.tx.amplification > 0.0 && r.block.amplification > 0.0,
            "{system}"
        );
        assert!(
            r.tx.p99_ms >= r.tx.p50_ms && r.tx.max_ms >= r.tx.p99_ms,
            "{system}"
        );
        assert!(r.block.bound_p99_ms > 0.0, "{system}");
    }
    assert!(report.goals[0].met, "no item missing anywhere");
    // Gossipsub's nodes did what ours do with every item: each of the 6 nodes (the origin
    // included) took each tx into its mempool and imported each block, none refused or dropped.
    assert!(report.config.gossip_node_work);
    let work = |name: &str| report.gossipsub.notes[name];
    assert_eq!(work("node_work_txs_accepted"), 240.0, "40 txs x 6 nodes");
    assert_eq!(
        work("node_work_blocks_imported"),
        18.0,
        "3 blocks x 6 nodes"
    );
    for name in [
        "node_work_txs_refused",
        "node_work_blocks_refused",
        "node_work_dropped",
    ] {
        assert_eq!(work(name), 0.0, "{name}");
    }

    let json = serde_json::to_value(&report).expect("serialises");
    for system in ["ours", "gossipsub"] {
        for kind in ["tx", "block"] {
            for field in [
                "p50_ms",
                "p95_ms",
                "p99_ms",
                "max_ms",
                "bound_p99_ms",
                "amplification",
            ] {
                assert!(
                    json[system][kind][field].is_number(),
                    "{system}.{kind}.{field} in {json}"
                );
            }
        }
    }
    let ratio = json["ours"]["compact_block_ratio"]
        .as_f64()
        .expect("ours has compact_block_ratio");
    assert!(
        ratio > 0.0 && ratio < 1.0,
        "compact block smaller than the block"
    );
}
