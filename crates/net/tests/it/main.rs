//! Integration tests of `playergold-net`: real sockets on 127.0.0.0/8, real TLS.

mod chain_store;
mod discovery;
mod eviction;
mod heartbeat;
mod identity;
mod mdns;
mod network;
mod tls;
mod transport;

/// Held by every test that runs a whole network (20 or more nodes, or the namespaced mDNS
/// network), so that at most one of
/// them runs at a time: two at once on a two-core CI machine starve each other's timers and
/// turn their bounded waits into flakes. Hold the guard for the whole test.
pub(crate) static NETWORK_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for the turn of a whole-network test (see [`NETWORK_TESTS`]).
pub(crate) async fn network_test_turn() -> tokio::sync::MutexGuard<'static, ()> {
    NETWORK_TESTS.lock().await
}

/// Logs to the test output when `RUST_LOG` is set.
pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
