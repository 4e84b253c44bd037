//! PLACEHOLDER: the `tls` sidecar is being built; see its issue.

/// Command-line arguments of `rigging-sidecar tls`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the `tls` sidecar until shutdown.
pub async fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("the tls sidecar is not built yet")
}
