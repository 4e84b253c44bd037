//! `rigging-sidecar`: one binary, one subcommand per sidecar.

use std::process::ExitCode;

use clap::Parser;
use rigging_sidecar::cli::{Cli, Command};
use rigging_sidecar::{
    batch, elect, gather, health, http, logs, metrics, queue, runtime, shard, tls,
};

/// The image is a static musl build, and musl's allocator maps and unmaps the 8 KiB read
/// buffer hyper takes for each request, a system call and page faults per request; mimalloc
/// keeps freed memory for the next one. The figures are in `docs/benchmarks.md`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc gives memory freed into its arenas back to the system only on a later call into
/// it, once a delay has passed; an idle sidecar makes none, and would keep the peak of a
/// burst of large requests resident. Once a second it is asked to.
async fn give_back_freed_memory() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        // SAFETY: mi_collect takes a flag and frees nothing still in use.
        unsafe { libmimalloc_sys::mi_collect(false) };
    }
}

fn main() -> ExitCode {
    // mimalloc asks for transparent huge pages for its arenas (MADV_HUGEPAGE), and on a
    // node that grants them an idle sidecar's heap grows from 1.4 MiB to 13 MiB. Turned
    // off for this process, for every region, whatever the node's THP mode.
    // SAFETY: prctl(2) with PR_SET_THP_DISABLE takes integers only.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    let cli = Cli::parse();
    runtime::telemetry::init();
    let rt = match runtime::build_tokio() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("rigging-sidecar: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    rt.spawn(give_back_freed_memory());
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
