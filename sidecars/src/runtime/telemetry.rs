//! JSON logs on stderr. Stdout stays free for sidecars whose output *is* data (the log
//! adapter writes its records there).

use tracing_subscriber::EnvFilter;

/// Installs the global JSON subscriber. The level comes from `RUST_LOG` (default `info`,
/// with rustls at `error`). Calling it twice is harmless.
pub fn init() {
    // rustls warns about peer misbehaviour it then tolerates (an IP address sent as SNI,
    // which wrk and some clients do on every connection): at `warn`, any client could
    // make a sidecar write a log line per connection.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rustls=error"));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
