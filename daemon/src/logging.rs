//! Log output: human-readable lines on stderr, filtered by `--log-level`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `level` is etcd's `--log-level` value; `RUST_LOG`, if
/// set, refines it per module (e.g. `RUST_LOG=info,raft=debug`).
pub fn init(level: &str) {
    let level = match level {
        "panic" | "fatal" | "dpanic" => "error",
        other => other,
    };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}
