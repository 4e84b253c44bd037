//! PLACEHOLDER: the `metrics` sidecar is being built; see its issue.

/// Command-line arguments of `rigging-sidecar metrics`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the `metrics` sidecar until shutdown.
pub async fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("the metrics sidecar is not built yet")
}
