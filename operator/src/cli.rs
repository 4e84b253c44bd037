//! The command line: `rigging-operator run | render | crds | webhook`.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::controller::Config;
use crate::controller::{RenderConfig, default_sidecar_image};
use crate::manager::{self, LeaseOptions, RunOptions, WebhookOptions};
use crate::{crdgen, render};

/// Rigging's controller manager.
#[derive(Debug, Parser)]
#[command(name = "rigging-operator", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
// Parsed once per process: boxing `run`'s flags would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controllers against the cluster of the kubeconfig or the pod.
    Run(RunArgs),
    /// Print the Kubernetes objects the operator would apply for Rigging resources, offline.
    Render(RenderArgs),
    /// Print the CustomResourceDefinitions (or write one file each with --out-dir).
    Crds(CrdsArgs),
    /// Serve the sidecar injection webhook (`POST /inject`) with a certificate from files.
    Webhook(WebhookArgs),
}

/// Flags of `webhook`.
#[derive(Debug, clap::Args)]
pub struct WebhookArgs {
    /// Address of the HTTPS endpoint the API server calls.
    #[arg(long, default_value = "0.0.0.0:9443")]
    pub listen: SocketAddr,
    /// PEM certificate chain the webhook serves; re-read when it changes.
    #[arg(long)]
    pub tls_cert: PathBuf,
    /// PEM private key of that certificate; re-read when it changes.
    #[arg(long)]
    pub tls_key: PathBuf,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Image of rigging-sidecar for the sidecars the webhook adds.
    #[arg(long, env = "RIGGING_SIDECAR_IMAGE", default_value_t = default_sidecar_image())]
    pub sidecar_image: String,
    /// Place sidecars as plain containers, for clusters older than Kubernetes 1.29 (which
    /// have no native sidecars).
    #[arg(long)]
    pub plain_sidecars: bool,
    /// After SIGTERM, how long the webhook keeps serving (with `/readyz` answering 503)
    /// before it stops: long enough for its pod to leave the Service's endpoints, and for
    /// the API server to see that.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_delay: std::time::Duration,
}

/// Flags of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Image of rigging-sidecar for the sidecars the operator adds.
    #[arg(long, env = "RIGGING_SIDECAR_IMAGE", default_value_t = default_sidecar_image())]
    pub sidecar_image: String,
    /// Run the controllers only while holding the Lease (the default).
    #[arg(long, overrides_with = "no_leader_election")]
    pub leader_election: bool,
    /// Run the controllers right away (a single replica, or local development).
    #[arg(long)]
    pub no_leader_election: bool,
    /// Name of the Lease replicas compete for.
    #[arg(long, default_value = "rigging-operator")]
    pub lease_name: String,
    /// Namespace of the Lease (default: the pod's own namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// How often a healthy object is reconciled again when nothing changed (e.g. `5m`).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub resync_period: std::time::Duration,
    /// How many objects of each kind are reconciled at once; an object is never reconciled
    /// twice at once. Bounds the operator's CPU and API requests in a burst (an upgrade
    /// touches every object); 0 means no bound.
    #[arg(long, default_value_t = crate::controller::context::DEFAULT_CONCURRENCY)]
    pub concurrency: u16,
    /// How many of the operator's Deployments and StatefulSets may roll at once when it
    /// changes their pod templates (an upgrade's new sidecar image changes them all); the
    /// others wait, and an Event says so. 0 means no bound.
    #[arg(long, default_value_t = crate::controller::rollouts::DEFAULT_MAX_ROLLOUTS)]
    pub max_rollouts: u32,
    /// At start, bring the installed Rigging CRDs to this build's schema (server-side
    /// apply), unless a newer release wrote them. Helm never upgrades a chart's CRDs; the
    /// chart sets this, with `get` and `patch` on the three CRDs by name.
    #[arg(long)]
    pub upgrade_crds: bool,
    /// A ClusterRole of the Lease verbs the election sidecar's Roles grant, which the
    /// operator binds to itself in each namespace with an election on Leases (it needs
    /// `bind` on it), instead of holding them in every namespace. Without it the operator
    /// must hold those verbs itself, or its Roles are refused (docs/operator.md, "RBAC").
    #[arg(long)]
    pub elect_grant_role: Option<String>,
    /// Reconcile only the Rigging resources of this namespace (default: every namespace).
    #[arg(long = "namespace", env = "RIGGING_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Serve the sidecar injection webhook on this address too (every replica serves it).
    #[arg(long)]
    pub webhook_listen: Option<SocketAddr>,
    /// The Secret of the webhook's CA, made when missing, in the operator's namespace.
    #[arg(long, default_value = "rigging-webhook-ca")]
    pub webhook_secret: String,
    /// The MutatingWebhookConfiguration whose caBundle the operator keeps current.
    #[arg(long, default_value = "rigging-operator")]
    pub webhook_configuration: String,
    /// The webhook's Service: its DNS names go in the serving certificate.
    #[arg(long, default_value = "rigging-webhook")]
    pub webhook_service: String,
    /// Another name or IP address for the serving certificate (repeatable).
    #[arg(long = "webhook-host")]
    pub webhook_hosts: Vec<String>,
    /// The operator's namespace, where the webhook CA Secret lives.
    #[arg(long, env = "POD_NAMESPACE", default_value = "rigging-system")]
    pub webhook_namespace: String,
    /// Serve `tls.crt` and `tls.key` of this directory (re-read when they change) instead
    /// of a certificate from the operator's own CA; the caBundle is then the issuer's job
    /// (cert-manager's cainjector).
    #[arg(long)]
    pub webhook_cert_dir: Option<PathBuf>,
    /// After SIGTERM, how long the webhook (with `--webhook-listen`) keeps serving (with `/readyz` answering 503)
    /// before it stops: long enough for its pod to leave the Service's endpoints, and for
    /// the API server to see that.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_delay: std::time::Duration,
}

/// Flags of `render`.
#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// A YAML file of Rigging resources (multi-document; `-` reads stdin). Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
    /// Image of rigging-sidecar for the sidecars the operator adds.
    #[arg(long, env = "RIGGING_SIDECAR_IMAGE", default_value_t = default_sidecar_image())]
    pub sidecar_image: String,
    /// Place sidecars as plain containers, for clusters older than Kubernetes 1.29 (which
    /// have no native sidecars).
    #[arg(long)]
    pub plain_sidecars: bool,
}

/// Flags of `crds`.
#[derive(Debug, clap::Args)]
pub struct CrdsArgs {
    /// Write `<name>.yaml` per CRD into this directory instead of printing them.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

/// Runs the parsed command line.
pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run(args).await,
        Command::Webhook(args) => webhook(args).await,
        Command::Render(args) => {
            let out = render_files(&args)?;
            print!("{out}");
            Ok(())
        }
        Command::Crds(args) => match args.out_dir {
            Some(dir) => {
                for path in crdgen::write_all(&dir)? {
                    eprintln!("wrote {}", path.display());
                }
                Ok(())
            }
            None => {
                print!("{}", crdgen::all_yaml()?);
                Ok(())
            }
        },
    }
}

/// Renders every file of `render`, in order, to one YAML stream.
pub fn render_files(args: &RenderArgs) -> anyhow::Result<String> {
    let config = RenderConfig {
        sidecar_image: args.sidecar_image.clone(),
        native_sidecars: !args.plain_sidecars,
        elect_grant: None,
    };
    let mut values = Vec::new();
    for file in &args.files {
        let (name, input) = if file == "-" {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .context("<stdin>: reading")?;
            ("<stdin>".to_owned(), input)
        } else {
            let input =
                std::fs::read_to_string(file).with_context(|| format!("{file}: reading"))?;
            (file.clone(), input)
        };
        values.extend(render::render_values(&name, &input, &config)?);
    }
    Ok(render::to_yaml_stream("output", &values)?)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_json_logs();
    let identity = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(hostname)
        .unwrap_or_else(|| "rigging-operator".to_owned());
    let leader_election = (!args.no_leader_election).then(|| LeaseOptions {
        name: args.lease_name.clone(),
        namespace: args.lease_namespace.clone(),
    });
    let options = RunOptions {
        metrics_addr: args.metrics_addr,
        config: Config {
            render: RenderConfig {
                sidecar_image: args.sidecar_image,
                // Decided by `run` from the API server's version.
                native_sidecars: true,
                // Made by `run` from who the API server says the operator is.
                elect_grant: None,
            },
            resync: args.resync_period,
            concurrency: args.concurrency,
            max_rollouts: args.max_rollouts,
        },
        leader_election,
        identity,
        watch_namespace: args.watch_namespace,
        upgrade_crds: args.upgrade_crds,
        elect_grant_role: args.elect_grant_role,
        webhook: args.webhook_listen.map(|listen| {
            let (service, namespace) = (&args.webhook_service, &args.webhook_namespace);
            let mut hosts = vec![
                format!("{service}.{namespace}.svc"),
                format!("{service}.{namespace}.svc.cluster.local"),
            ];
            hosts.extend(args.webhook_hosts.iter().cloned());
            WebhookOptions {
                listen,
                shutdown_delay: args.shutdown_delay,
                cert_dir: args.webhook_cert_dir.clone(),
                certs: crate::webhook::certs::Settings {
                    namespace: namespace.clone(),
                    secret: args.webhook_secret.clone(),
                    configuration: args.webhook_configuration.clone(),
                    hosts,
                },
            }
        }),
    };
    manager::run(options).await?;
    Ok(())
}

async fn webhook(args: WebhookArgs) -> anyhow::Result<()> {
    init_json_logs();
    let stop = crate::manager::shutdown_signal();
    let metrics = crate::metrics::Metrics::new();
    let certificate = crate::webhook::server::Certificate::load(&args.tls_cert, &args.tls_key)?;
    let config = RenderConfig {
        sidecar_image: args.sidecar_image,
        native_sidecars: !args.plain_sidecars,
        elect_grant: None,
    };
    let readiness = crate::admin::Readiness::default();
    let signal = crate::manager::ServingAfterSignal::watch(readiness.clone());
    crate::admin::spawn(args.metrics_addr, metrics.clone(), readiness.clone())
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    let serving = crate::webhook::server::spawn(args.listen, certificate, config, metrics).await?;
    readiness.set_ready();
    stop.await;
    signal.serve_out(args.shutdown_delay).await;
    serving.stop(crate::manager::WEBHOOK_DRAIN).await;
    Ok(())
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// JSON logs on stderr, filtered by `RUST_LOG` (default `info`).
fn init_json_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
