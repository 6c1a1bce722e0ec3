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

/// Logs to the test output when `RUST_LOG` is set.
pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
