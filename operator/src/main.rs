//! `rigging-operator`: see `rigging-operator --help`.

use clap::Parser;
use rigging_operator::cli::{Cli, execute};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(error) = execute(cli).await {
        eprintln!("{error:#}");
        std::process::exit(1);
    }
}
