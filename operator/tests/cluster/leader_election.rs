//! Two `rigging-operator run` replicas on one Lease: one leads, the other only waits, and
//! takes over when the leader dies (once the Lease expires) or stops (on the release: a
//! stopping leader releases the Lease).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use rigging_crds::ReplicatedService;
use serde_json::json;

use crate::support::{Cluster, Operator, SETTLE, cluster, create, eventually, replicated_service};

const RECONCILES: &str = "rigging_operator_reconciliations_total";
/// The operator's lease duration and its renewal grace (manager.rs).
const LEASE: Duration = Duration::from_secs(15);
const RETRY: Duration = Duration::from_secs(5);

fn replica(cluster: &Cluster, namespace: &str, identity: &str) -> Operator {
    Operator::start_with(
        cluster,
        namespace,
        identity,
        &[
            "--lease-namespace",
            namespace,
            "--lease-name",
            "rigging-operator",
        ],
    )
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    let lease = leases.get_opt("rigging-operator").await.ok()??;
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

/// Waits until `identity` holds the Lease; returns how long that took.
async fn until_held_by(leases: &Api<Lease>, identity: &str, within: Duration) -> Duration {
    let started = Instant::now();
    eventually(&format!("{identity} holding the Lease"), within, || async {
        (holder(leases).await.as_deref() == Some(identity)).then_some(())
    })
    .await;
    started.elapsed()
}

async fn reconciles(operator: &Operator) -> f64 {
    eventually("the admin port", SETTLE, || operator.counter(RECONCILES)).await
}

#[tokio::test]
async fn one_replica_leads_and_the_other_takes_over_when_it_dies_or_stops() {
    let Some(cluster) =
        cluster("one_replica_leads_and_the_other_takes_over_when_it_dies_or_stops").await
    else {
        return;
    };
    let ns = cluster.namespace("lease").await;
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), &ns.name);
    let first = replica(&cluster, &ns.name, "replica-a");
    until_held_by(&leases, "replica-a", SETTLE).await;
    let second = replica(&cluster, &ns.name, "replica-b");

    let services: Api<ReplicatedService> = Api::namespaced(cluster.client.clone(), &ns.name);
    let object = replicated_service("web", &ns.name, json!({}));
    create(&services, object).await;
    eventually("the leader reconciling", SETTLE, || async {
        (first.counter(RECONCILES).await? > 0.0).then_some(())
    })
    .await;
    assert_eq!(
        reconciles(&second).await,
        0.0,
        "the follower does not reconcile"
    );

    // The leader dies without a word: the follower waits for the Lease to expire, which is
    // no sooner than LEASE - RETRY after the last renewal. (The upper bound is the wait's:
    // on a loaded machine a takeover can come seconds after the expiry.)
    first.signal("-KILL");
    let took = until_held_by(&leases, "replica-b", LEASE + RETRY + SETTLE).await;
    assert!(
        took >= LEASE - RETRY,
        "a follower took a Lease that had not expired, {took:?} after the leader died"
    );
    eventually("the new leader reconciling", SETTLE, || async {
        (second.counter(RECONCILES).await? > 0.0).then_some(())
    })
    .await;
    drop(first);

    // A restarted replica follows; the leader stops on SIGTERM, releasing the Lease, and
    // the follower takes over at once.
    let third = replica(&cluster, &ns.name, "replica-c");
    eventually("the new replica's admin port", SETTLE, || {
        third.counter(RECONCILES)
    })
    .await;
    assert_eq!(
        reconciles(&third).await,
        0.0,
        "a follower does not reconcile"
    );
    let mut second = second;
    second.signal("-TERM");
    until_held_by(&leases, "replica-c", SETTLE).await;
    assert_eq!(
        second.exit_code(SETTLE).await,
        Some(0),
        "a stopping leader exits 0"
    );
    // Released, not expired: the leader logs it once the API server took the release. (Not
    // a bound on the time: on a loaded machine the leader's drain before it takes seconds.)
    assert!(
        second.log().contains("released the Lease"),
        "a stopping leader releases its Lease; log: {}",
        second.log()
    );
    eventually("the third leader reconciling", SETTLE, || async {
        (third.counter(RECONCILES).await? > 0.0).then_some(())
    })
    .await;
}
