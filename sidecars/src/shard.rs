//! PLACEHOLDER: the `shard` sidecar is being built; see its issue.

/// Command-line arguments of `rigging-sidecar shard`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the `shard` sidecar until shutdown.
pub async fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("the shard sidecar is not built yet")
}
