//! PLACEHOLDER: the `logs` sidecar is being built; see its issue.

/// Command-line arguments of `rigging-sidecar logs`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the `logs` sidecar until shutdown.
pub async fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("the logs sidecar is not built yet")
}
