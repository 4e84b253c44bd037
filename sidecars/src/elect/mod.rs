//! `rigging-sidecar elect`: ownership election on Kubernetes Leases or etcd, with fencing
//! tokens, served on the sidecar's port (book ch. 9: an app asks a sidecar on localhost who
//! leads, instead of linking an election library).
//!
//! - One leader per election, and with `--items N` an owner per item, each replica holding
//!   at most its fair share ([`share`]).
//! - Every term has a fencing token that only grows: the Lease's `leaseTransitions`
//!   ([`lease`]) or the etcd key's create revision ([`etcd`]).
//! - A leader that cannot renew stops claiming at its renew deadline, before its lease can
//!   expire for the others; every answer of the API checks that deadline when it is sent
//!   ([`api`]), so a process resumed from a pause never reports its old term as current.
//! - On SIGTERM it stops claiming, then releases, so the next leader starts at once.
//!
//! `docs/sidecars/elect.md` states the guarantees and their limits.

mod api;
mod elector;
mod etcd;
mod leader_file;
pub mod lease;
mod lock;
mod share;

use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use rigging_crds::sidecar::elect::{Backend, ElectArgsError};
use tokio::sync::watch;

use crate::runtime::{self, Lifecycle};

/// Command-line arguments of `rigging-sidecar elect`: the contract type the operator
/// renders.
pub use rigging_crds::sidecar::elect::ElectArgs as Args;

/// Why the election sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The flags are inconsistent.
    #[error(transparent)]
    Args(#[from] ElectArgsError),
    /// No identity was given and none could be found.
    #[error(
        "no identity: give --identity, or set POD_NAME (the operator sets it from the pod's \
         name); the host name was not readable either"
    )]
    NoIdentity,
    /// The identity is unusable.
    #[error("--identity {0:?}: must be 1 to 253 printable characters without whitespace")]
    Identity(String),
    /// The Kubernetes client could not be set up.
    #[error(transparent)]
    Lease(Box<lease::LeaseError>),
    /// The API port or the metrics could not be set up.
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
}

/// The identity: `--identity` (or `POD_NAME`), else the host name (a pod's name is its
/// host name).
fn identity(args: &Args) -> Result<String, Error> {
    let id = match &args.identity {
        Some(id) => id.clone(),
        None => std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
            })
            .filter(|h| !h.is_empty())
            .ok_or(Error::NoIdentity)?,
    };
    let printable = id.chars().all(|c| !c.is_whitespace() && !c.is_control());
    if id.is_empty() || id.len() > 253 || !printable {
        return Err(Error::Identity(id));
    }
    Ok(id)
}

/// One request's deadline: a retry period, within bounds that keep a slow backend from
/// stalling a round and a loaded one from failing every request.
fn attempt_timeout(retry_period: Duration) -> Duration {
    retry_period.clamp(Duration::from_millis(250), Duration::from_secs(5))
}

/// Runs the election sidecar until SIGTERM, then hands over and returns.
pub async fn run(args: Args) -> Result<(), Error> {
    args.check()?;
    let me = identity(&args)?;
    let items = args.items.unwrap_or(0);
    let life = Lifecycle::new();
    let registry = Registry::new();
    let metrics = elector::Metrics::register(&registry).map_err(runtime::Error::from)?;
    let (status, watched) = watch::channel(Arc::new(elector::Status::initial(me.clone(), items)));
    let settings = elector::Settings {
        retry_period: args.retry_period,
        items,
        leader_file: args.leader_file.clone(),
        shutdown_timeout: args.renew_deadline,
    };
    let timeout = attempt_timeout(args.retry_period);
    // The backend before the port: a sidecar that cannot reach its configuration fails at
    // once, with the reason.
    enum Chosen {
        Lease(lease::LeaseBackend),
        Etcd(etcd::EtcdBackend),
    }
    let chosen = match args.backend {
        Backend::Lease => Chosen::Lease(
            lease::LeaseBackend::connect(
                args.namespace.clone(),
                me.clone(),
                args.election.clone(),
                items,
                lease::Timing {
                    lease_duration: args.lease_duration,
                    renew_deadline: args.renew_deadline,
                    attempt_timeout: timeout,
                },
            )
            .await
            .map_err(|e| Error::Lease(Box::new(e)))?,
        ),
        Backend::Etcd => Chosen::Etcd(etcd::EtcdBackend::new(
            &args.etcd_endpoints,
            &args.etcd_prefix,
            &args.election,
            me.clone(),
            items,
            etcd::Timing {
                lease_duration: args.lease_duration,
                renew_deadline: args.renew_deadline,
                attempt_timeout: timeout,
            },
        )),
    };
    let addr = api::spawn(args.admin, registry, life.clone(), watched).await?;
    tracing::info!(
        %addr,
        identity = %me,
        election = %args.election,
        items,
        lease_duration = ?args.lease_duration,
        renew_deadline = ?args.renew_deadline,
        retry_period = ?args.retry_period,
        "election sidecar serving /leader"
    );
    life.set_ready(true);
    match chosen {
        Chosen::Lease(backend) => elector::run(backend, settings, status, metrics, life).await,
        Chosen::Etcd(backend) => elector::run(backend, settings, status, metrics, life).await,
    }
    Ok(())
}
