//! `rigging-operator run`: the controller manager in a cluster — admin endpoints, leader
//! election over a Lease, then every controller.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use kube_lease_manager::LeaseManagerBuilder;

use crate::admin::{self, Readiness};
use crate::controller::{self, ChildWatches, Config, Context};
use crate::metrics::Metrics;
use rigging_crds::{
    MapReduce, Pipeline, ReplicatedService, ScatterGather, ShardedService, WorkQueue,
};
use std::sync::Arc;

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
    /// Reconcile only the resources of this namespace (`None`: every namespace).
    pub watch_namespace: Option<String>,
    /// Serve the injection webhook too, on every replica.
    pub webhook: Option<WebhookOptions>,
    /// Bring the installed CRDs to this build's schema before anything starts
    /// ([`crate::crdgen::upgrade`]).
    pub upgrade_crds: bool,
    /// The ClusterRole the operator binds to itself where an election's Role needs its
    /// Lease rights ([`crate::sidecars::elect::ElectGrant`]).
    pub elect_grant_role: Option<String>,
}

/// The injection webhook inside `run`, with certificates the operator manages.
#[derive(Debug, Clone)]
pub struct WebhookOptions {
    /// Where the API server calls it.
    pub listen: SocketAddr,
    /// The CA Secret, the MutatingWebhookConfiguration and the certificate's names.
    pub certs: crate::webhook::certs::Settings,
    /// A directory with `tls.crt` and `tls.key` someone else issues and renews
    /// (cert-manager): served as they change, and the caBundle left to that issuer.
    pub cert_dir: Option<std::path::PathBuf>,
    /// How long the webhook keeps serving after a shutdown signal (`/readyz` answering
    /// 503 meanwhile), so that it stops only once its pod is out of the Service's
    /// endpoints; see [`ServingAfterSignal`].
    pub shutdown_delay: Duration,
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
    /// The webhook's certificates could not be set up.
    #[error(transparent)]
    WebhookCerts(#[from] crate::webhook::certs::CertError),
    /// The webhook could not be served.
    #[error(transparent)]
    Webhook(#[from] crate::webhook::server::WebhookError),
    /// The API server did not say who the operator is, which `--elect-grant-role` needs.
    #[error(
        "asking the API server who the operator is (a SelfSubjectReview, for --elect-grant-role): {0}"
    )]
    WhoAmI(#[source] kube::Error),
    /// The CRDs could not be upgraded: the process exits (and restarts) rather than run on
    /// a schema that prunes its new fields.
    #[error(transparent)]
    Crds(#[from] crate::crdgen::UpgradeError),
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

/// Whether the API server of `client` runs native sidecars (Kubernetes 1.29 and later).
/// An answer that does not parse counts as yes: every supported release has them.
async fn has_native_sidecars(client: &Client) -> bool {
    match client.apiserver_version().await {
        Ok(info) => native_sidecars_in(&info.major, &info.minor),
        Err(_) => true,
    }
}

/// Whether Kubernetes `major`.`minor` (as `/version` gives them: `"1"`, `"28+"`) has
/// native sidecars.
fn native_sidecars_in(major: &str, minor: &str) -> bool {
    let number = |s: &str| {
        s.trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse::<u32>()
    };
    match (number(major), number(minor)) {
        (Ok(major), Ok(minor)) => (major, minor) >= (1, 29),
        _ => true,
    }
}

/// How long a stopping webhook waits for the reviews in flight on its connections.
pub const WEBHOOK_DRAIN: Duration = Duration::from_secs(10);

/// Runs the controller manager until a shutdown signal or the loss of leadership.
pub async fn run(mut options: RunOptions) -> Result<(), RunError> {
    let metrics = Metrics::new();
    let readiness = Readiness::default();
    let signal = ServingAfterSignal::watch(readiness.clone());
    admin::spawn(options.metrics_addr, metrics.clone(), readiness.clone())
        .await
        .map_err(|source| RunError::Bind {
            addr: options.metrics_addr,
            source,
        })?;
    let client = client().await?;
    if !has_native_sidecars(&client).await {
        tracing::warn!(
            "the API server is older than Kubernetes 1.29: sidecars go in as plain containers, and WorkQueues refuse them"
        );
        options.config.render.native_sidecars = false;
    }
    if let Some(role) = options.elect_grant_role.clone() {
        let username = who_am_i(&client).await.map_err(RunError::WhoAmI)?;
        tracing::info!(%username, %role, "grants itself the Lease rights of elections' namespaces");
        options.config.render.elect_grant =
            Some(crate::sidecars::elect::ElectGrant::new(role, &username));
    }
    // The webhook serves on every replica, leader or not, and whether or not the CRDs are
    // installed: pod creation must never wait on an election.
    let mut webhook = None;
    if let Some(settings) = &options.webhook {
        let certificate = match &settings.cert_dir {
            Some(dir) => crate::webhook::server::Certificate::load(
                &dir.join("tls.crt"),
                &dir.join("tls.key"),
            )?,
            None => crate::webhook::certs::managed(client.clone(), settings.certs.clone()).await?,
        };
        let render = options.config.render.clone();
        let serving =
            crate::webhook::server::spawn(settings.listen, certificate, render, metrics.clone())
                .await?;
        webhook = Some((serving, settings.shutdown_delay));
    }
    // The controllers stop at once on a signal, and a leader releases its Lease, so that
    // another replica takes over; the webhook outlives them by its delay.
    let outcome = manage(client, options, readiness, metrics).await;
    if let Some((serving, delay)) = webhook {
        signal.serve_out(delay).await;
        serving.stop(WEBHOOK_DRAIN).await;
    }
    outcome
}

/// A stopping replica's webhook serving on: the endpoints controller, and then the API
/// server, stop sending a terminating pod reviews only some time after its deletion
/// (kubernetes/kubernetes#127335 is the API server reusing connections to such pods), so
/// a webhook that stopped on SIGTERM would fail the reviews still sent to it — and with
/// `failurePolicy: Fail`, refuse those pods. Kubernetes' own API server waits the same
/// way (`--shutdown-delay-duration`).
pub struct ServingAfterSignal(());

impl ServingAfterSignal {
    /// Turns `/readyz` to 503 from the first SIGTERM or SIGINT on.
    pub fn watch(readiness: Readiness) -> Self {
        let signal = shutdown_signal();
        tokio::spawn(async move {
            signal.await;
            readiness.set_stopping();
        });
        Self(())
    }

    /// Waits until `delay` has passed since the signal; returns at once when the process
    /// stops for another reason (it lost its Lease, say), with no signal seen.
    pub async fn serve_out(&self, delay: Duration) {
        // Read from SIGNALLED, which the caller's own shutdown_signal() set before it
        // resolved: a time another task would note could still be unwritten here, and a
        // replica stopping at once (a follower) would then not serve out its delay.
        if let Some(at) = SIGNALLED.get() {
            let left = delay.saturating_sub(at.elapsed());
            tracing::info!(
                delay_s = delay.as_secs_f64(),
                left_s = left.as_secs_f64(),
                "shutting down: the webhook serves on until its endpoint is gone"
            );
            tokio::time::sleep(left).await;
        }
    }
}

/// Waits for the CRDs, then runs the controllers: at once, or while holding the Lease.
async fn manage(
    client: Client,
    options: RunOptions,
    readiness: Readiness,
    metrics: Metrics,
) -> Result<(), RunError> {
    if options.upgrade_crds {
        let upgraded = tokio::select! {
            upgraded = crate::crdgen::upgrade(&client) => upgraded?,
            () = shutdown_signal() => return Ok(()),
        };
        for (crd, outcome) in upgraded {
            match outcome {
                crate::crdgen::Upgrade::Applied => {
                    tracing::info!(%crd, version = crate::crdgen::VERSION, "CRD at this release's schema");
                }
                crate::crdgen::Upgrade::Missing => {
                    tracing::warn!(%crd, "CRD not installed: the chart installs it, or kubectl apply -f crds/");
                }
                crate::crdgen::Upgrade::Newer(newer) => tracing::warn!(
                    %crd,
                    %newer,
                    version = crate::crdgen::VERSION,
                    "CRD left alone: a newer release of Rigging wrote it, and this older operator would prune its fields"
                ),
            }
        }
    }
    // Until the CRDs are served, `/readyz` stays red and nothing starts: a controller on a
    // missing kind would only log watch errors.
    tokio::select! {
        () = wait_for_crds(&client) => {}
        () = shutdown_signal() => return Ok(()),
    }
    let controllers = controllers(
        client.clone(),
        options.config.clone(),
        metrics,
        Some(options.identity.clone()),
        options.watch_namespace.as_deref(),
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
    let build = || async {
        LeaseManagerBuilder::new(client.clone(), &lease.name)
            .with_namespace(&lease.namespace)
            .with_identity(&options.identity)
            // The default field manager is unique per identity, which is what makes two
            // replicas' server-side applies of the Lease conflict instead of both winning.
            .with_duration(LEASE_DURATION_S)
            .with_grace(LEASE_GRACE_S)
            .build()
            .await
            .map_err(lease_error)
    };
    let mut election = build().await?.watch().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &lease.namespace);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    // A follower is healthy and ready: it only waits for the Lease.
    readiness.set_ready();
    tracing::info!(lease = %lease.name, namespace = %lease.namespace, identity = %options.identity, "waiting for leadership");
    let mut released = Box::pin(released(leases.clone(), &lease.name));
    let outcome = loop {
        let leading = &mut election.0;
        if *leading.borrow_and_update() {
            tracing::info!("leading: starting controllers");
            break tokio::select! {
                () = controllers => Ok(()),
                () = lost(leading) => Err(()),
            };
        }
        tokio::select! {
            changed = leading.changed() => if changed.is_err() {
                break Err(());
            },
            () = &mut released => {
                // A follower's lease manager sleeps until the term it last saw ends; a
                // fresh one takes a released Lease at once. The old one goes first: with
                // the same identity, it would release what the new one takes.
                tracing::info!("the Lease was released: competing for it now");
                let (leading, task) = election;
                drop(leading);
                let _ = task.await;
                election = build().await?.watch().await;
                released = Box::pin(self::released(leases.clone(), &lease.name));
            }
            // The controllers, which handle signals themselves, have not started.
            () = &mut shutdown => break Ok(()),
        }
    };
    // Closing the channel makes the lease manager release the Lease, so that a follower
    // takes over at once instead of waiting for it to expire.
    let (leading, task) = election;
    drop(leading);
    drop(released);
    match tokio::time::timeout(RELEASE_TIMEOUT, task).await {
        Ok(Ok(Ok(_))) => tracing::info!("released the Lease"),
        Ok(Ok(Err(error))) => tracing::warn!(%error, "could not release the Lease"),
        Ok(Err(error)) => tracing::warn!(%error, "lease manager task failed"),
        Err(_) => tracing::warn!("gave up releasing the Lease"),
    }
    outcome.map_err(|()| RunError::LostLease {
        namespace: lease.namespace,
        name: lease.name,
    })
}

/// A client of the cluster in the kubeconfig or the pod's service account, which names
/// itself `rigging-operator/<version>`: that is what the API server's audit log and its
/// `apiserver_request_total` metrics show, and how an administrator tells Rigging's
/// requests from the rest.
async fn client() -> Result<Client, RunError> {
    let infer = |e: kube::config::InferConfigError| RunError::Client(kube::Error::InferConfig(e));
    let mut config = kube::Config::infer().await.map_err(infer)?;
    let agent = concat!("rigging-operator/", env!("CARGO_PKG_VERSION"));
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(agent),
    ));
    Client::try_from(config).map_err(RunError::Client)
}

/// The name the API server knows this client by (the `authentication.k8s.io`
/// SelfSubjectReview every authenticated subject may ask).
async fn who_am_i(client: &Client) -> Result<String, kube::Error> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let reviews: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = reviews
        .create(
            &kube::api::PostParams::default(),
            &SelfSubjectReview::default(),
        )
        .await?;
    Ok(review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .unwrap_or_default())
}

/// How often a missing CRD is looked for again.
const CRD_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits until the API server serves every Rigging kind (its CRD is installed and
/// established), saying what is missing every [`CRD_RETRY`].
async fn wait_for_crds(client: &Client) {
    let kinds = crate::crdgen::plurals();
    let api_version = ReplicatedService::api_version(&());
    loop {
        let missing: Vec<String> = match client.list_api_group_resources(&api_version).await {
            Ok(list) => kinds
                .iter()
                .filter(|k| !list.resources.iter().any(|r| &r.name == *k))
                .map(|k| format!("{k}.{}", ReplicatedService::group(&())))
                .collect(),
            Err(error) => {
                tracing::warn!(%error, %api_version, "cannot read the Rigging API; not ready");
                kinds.iter().map(|k| k.to_string()).collect()
            }
        };
        if missing.is_empty() {
            return;
        }
        tracing::warn!(
            ?missing,
            "CustomResourceDefinitions not installed (kubectl apply -f crds/); not ready"
        );
        tokio::time::sleep(CRD_RETRY).await;
    }
}

/// Every kind's controller, on one set of shared child watches, until a shutdown signal.
fn controllers(
    client: Client,
    config: Config,
    metrics: Metrics,
    instance: Option<String>,
    namespace: Option<&str>,
) -> impl std::future::Future<Output = ()> + use<> {
    let watches = ChildWatches::new(client.clone(), namespace);
    let ctx = Arc::new(Context::new(
        client,
        config,
        metrics,
        watches.stores(),
        instance,
    ));
    let replicated = controller::controller::<ReplicatedService>(ctx.clone(), &watches, namespace);
    let sharded = controller::controller::<ShardedService>(ctx.clone(), &watches, namespace);
    let work_queue = crate::work_queue::source::with_poller(
        controller::controller::<WorkQueue>(ctx.clone(), &watches, namespace),
        &ctx,
        namespace,
    );
    let pipeline = controller::controller::<Pipeline>(ctx.clone(), &watches, namespace);
    let scatter_gather = controller::controller::<ScatterGather>(ctx.clone(), &watches, namespace);
    let map_reduce = controller::controller::<MapReduce>(ctx.clone(), &watches, namespace);
    let watching = watches.run();
    let stores = ctx.stores.clone();
    let stop = shutdown_signal();
    let started = async move {
        // Every cache holds its initial list before the first reconcile. Waiting inside the
        // reconciles instead would make many waiters of one cache, and kube's DelayedInit
        // wakes only the last of them: the rest would wait forever (and hold up shutdown).
        tokio::select! {
            () = stores.wait_until_ready() => {}
            () = stop => return,
        }
        futures::future::join(
            futures::future::join5(replicated, sharded, work_queue, pipeline, scatter_gather),
            map_reduce,
        )
        .await;
    };
    async move {
        // The watches never end; the controllers end on a shutdown signal.
        tokio::select! {
            () = started => {}
            () = watching => {}
        }
    }
}

/// How long a stopping leader tries to release its Lease.
const RELEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

struct ResolvedLease {
    name: String,
    namespace: String,
}

/// When the first SIGTERM or SIGINT arrived: noted by each [`shutdown_signal`] before it
/// resolves, so whoever has seen one resolve finds it set.
static SIGNALLED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not when
/// it is first polled, so a signal that arrives in between is not lost (nor fatal).
#[cfg(unix)]
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    async fn recv(signal: Option<Signal>) {
        match signal {
            Some(mut s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    async move {
        tokio::select! {
            () = recv(term) => {},
            () = recv(int) => {},
        }
        SIGNALLED.get_or_init(Instant::now);
    }
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
        SIGNALLED.get_or_init(Instant::now);
    }
}

/// Resolves when the Lease, seen held by another replica, is released: a leader that
/// stops clears its holder.
async fn released(leases: Api<Lease>, name: &str) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher(leases, config).default_backoff().applied_objects());
    let mut held = false;
    while let Some(event) = events.next().await {
        let Ok(lease) = event else { continue };
        let holder = lease
            .spec
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty());
        if held && holder.is_none() {
            return;
        }
        held = holder.is_some();
    }
    std::future::pending().await
}

/// Resolves when the Lease is no longer held (or its manager stopped).
async fn lost(leading: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if leading.changed().await.is_err() || !*leading.borrow_and_update() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::native_sidecars_in;

    #[test]
    fn native_sidecars_come_with_kubernetes_1_29() {
        assert!(!native_sidecars_in("1", "28+"));
        assert!(!native_sidecars_in("1", "27"));
        assert!(native_sidecars_in("1", "29"));
        assert!(native_sidecars_in("1", "37"));
        assert!(native_sidecars_in("2", "0"));
        assert!(
            native_sidecars_in("", "weird"),
            "unknown: every supported release has them"
        );
    }
}
