//! `rigging-operator`: see `rigging-operator --help`.

use clap::Parser;
use rigging_operator::cli::{Cli, execute};

fn main() {
    let cli = Cli::parse();
    // Tokio sizes its pool by the CPU limit, which gives the chart's 500m one worker: a
    // long reconcile would then hold up the Lease renewal, the watches and the webhook
    // that share the process. Two workers at least keep them answering.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    if let Err(error) = runtime.block_on(execute(cli)) {
        eprintln!("{error:#}");
        std::process::exit(1);
    }
}
