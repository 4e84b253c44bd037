//! `rigging-sidecar`: one binary, one subcommand per sidecar.

use std::process::ExitCode;

use clap::Parser;
use rigging_sidecar::cli::{Cli, Command};
use rigging_sidecar::{
    batch, elect, gather, health, http, logs, metrics, queue, runtime, shard, tls,
};

/// The image is a static musl build, and musl's allocator maps and unmaps the 8 KiB read
/// buffer hyper takes for each request: system calls and page faults per request.
/// jemalloc keeps small blocks for the next request and gives large ones (the sharding
/// ambassador's big requests) back at once, which keeps the memory bounds the docs promise;
/// mimalloc, measured first, did not. The figures are in `docs/benchmarks.md`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    runtime::telemetry::init();
    let rt = match runtime::build_tokio() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("rigging-sidecar: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Each sidecar returns its own typed error; only the binary erases the type.
    let result = rt.block_on(async move {
        match cli.command {
            Command::Tls(args) => tls::run(args).await.map_err(anyhow::Error::from),
            Command::Shard(args) => shard::run(args).await.map_err(anyhow::Error::from),
            Command::Logs(args) => logs::run(args).await.map_err(anyhow::Error::from),
            Command::Metrics(args) => metrics::run(args).await.map_err(anyhow::Error::from),
            Command::Health(args) => health::run(args).await.map_err(anyhow::Error::from),
            Command::Http(args) => http::run(args).await.map_err(anyhow::Error::from),
            Command::Elect(args) => elect::run(args).await.map_err(anyhow::Error::from),
            Command::Queue(args) => queue::run(args).await.map_err(anyhow::Error::from),
            Command::Gather(args) => gather::run(args).await.map_err(anyhow::Error::from),
            Command::Output(args) => batch::output::run(args).await.map_err(anyhow::Error::from),
            Command::Reduce(args) => batch::reduce::run(args).await.map_err(anyhow::Error::from),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Printed as well as logged: a person reading `kubectl logs` of a crash-looping
            // container must see why without parsing JSON.
            let text = runtime::error_chain(err.as_ref());
            tracing::error!(error = %text, "sidecar failed");
            eprintln!("rigging-sidecar: {text}");
            ExitCode::FAILURE
        }
    }
}
