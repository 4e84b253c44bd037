//! PLACEHOLDER: the `health` sidecar is being built; see its issue.

/// Command-line arguments of `rigging-sidecar health`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the `health` sidecar until shutdown.
pub async fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("the health sidecar is not built yet")
}
