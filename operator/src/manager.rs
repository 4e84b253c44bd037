//! `rigging-operator run`: the controller manager in a cluster — admin endpoints, leader
//! election over a Lease, then every controller.

use std::net::SocketAddr;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;

use crate::admin::{self, Readiness};
use crate::context::Config;
use crate::metrics::Metrics;
use crate::replicated_service;

/// Settings of `run`, from flags and environment.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_addr: SocketAddr,
    /// Settings the reconciles read.
    pub config: Config,
    /// `Some` to run only while holding this Lease.
    pub leader_election: Option<LeaseOptions>,
    /// This replica's identity (pod name or hostname), for the Lease and Events.
    pub identity: String,
}

/// The Lease replicas compete for.
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    /// Lease name.
    pub name: String,
    /// Lease namespace; `None` means the client's default (in a pod, its own namespace).
    pub namespace: Option<String>,
}

/// Why `run` stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No kubeconfig or in-cluster configuration was usable.
    #[error("connecting to the Kubernetes API: {0}")]
    Client(#[source] kube::Error),
    /// The admin port could not be bound.
    #[error("binding the metrics address {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The Lease could not be read or created.
    #[error("leader election on Lease {namespace}/{name}: {source}")]
    Lease {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// The lease manager's error.
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    /// Leadership was lost: the process exits so that it restarts as a follower and never
    /// runs two leaders at once.
    #[error("lost the leadership of Lease {namespace}/{name}")]
    LostLease {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
    },
}

/// Lease duration and renewal grace, in seconds (client-go's defaults are 15 and 10/2).
const LEASE_DURATION_S: u64 = 15;
const LEASE_GRACE_S: u64 = 5;

/// Runs the controller manager until a shutdown signal or the loss of leadership.
pub async fn run(options: RunOptions) -> Result<(), RunError> {
    let metrics = Metrics::new();
    let readiness = Readiness::default();
    admin::spawn(options.metrics_addr, metrics.clone(), readiness.clone())
        .await
        .map_err(|source| RunError::Bind {
            addr: options.metrics_addr,
            source,
        })?;
    let client = Client::try_default().await.map_err(RunError::Client)?;
    let controllers = replicated_service::run(
        client.clone(),
        options.config.clone(),
        metrics,
        Some(options.identity.clone()),
    );

    let Some(lease) = options.leader_election else {
        readiness.set_ready();
        tracing::info!("leader election disabled: starting controllers");
        controllers.await;
        return Ok(());
    };
    let lease = ResolvedLease {
        namespace: lease
            .namespace
            .unwrap_or_else(|| client.default_namespace().to_owned()),
        name: lease.name,
    };
    let lease_error = |source| RunError::Lease {
        namespace: lease.namespace.clone(),
        name: lease.name.clone(),
        source,
    };
    let manager = LeaseManagerBuilder::new(client, &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&options.identity)
        .with_field_manager(replicated_service::desired::MANAGER)
        .with_duration(LEASE_DURATION_S)
        .with_grace(LEASE_GRACE_S)
        .build()
        .await
        .map_err(lease_error)?;
    let (mut leading, _task) = manager.watch().await;
    // A follower is healthy and ready: it only waits for the Lease.
    readiness.set_ready();
    tracing::info!(lease = %lease.name, namespace = %lease.namespace, identity = %options.identity, "waiting for leadership");
    while !*leading.borrow_and_update() {
        if leading.changed().await.is_err() {
            return Err(RunError::LostLease {
                namespace: lease.namespace,
                name: lease.name,
            });
        }
    }
    tracing::info!("leading: starting controllers");
    tokio::select! {
        () = controllers => Ok(()),
        () = lost(&mut leading) => Err(RunError::LostLease { namespace: lease.namespace, name: lease.name }),
    }
}

struct ResolvedLease {
    name: String,
    namespace: String,
}

/// Resolves when the Lease is no longer held (or its manager stopped).
async fn lost(leading: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if leading.changed().await.is_err() || !*leading.borrow_and_update() {
            return;
        }
    }
}
