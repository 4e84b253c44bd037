//! `--max-rollouts` on a real cluster: an upgrade that changes the sidecar image of every
//! pod template rolls at most that many workloads at once; the others wait, each with a
//! `RolloutQueued` Event, and take a slot when one frees.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams};
use rigging_crds::ReplicatedService;
use rigging_operator::controller::rollouts::Workload;
use serde_json::json;

use crate::node::POD_SETTLE;
use crate::support::{Operator, SETTLE, cluster, create, eventually, replicated_service};

/// A sidecar image no node has, and none can pull: the pods of a template that names it
/// never start, so a rollout to it stays in flight.
const UNPULLABLE: &str = "rigging-sidecar:never-pulled";

#[tokio::test]
async fn an_upgrade_rolls_at_most_max_rollouts_workloads_at_once() {
    let Some(cluster) = cluster("an_upgrade_rolls_at_most_max_rollouts_workloads_at_once").await
    else {
        return;
    };
    let ns = cluster.namespace("rollout-budget").await;
    let budget = ["--no-leader-election", "--max-rollouts", "2"];
    let first = Operator::start_with(&cluster, &ns.name, "before", &budget);
    let services: Api<ReplicatedService> = Api::namespaced(cluster.client.clone(), &ns.name);
    let names = ["r0", "r1", "r2", "r3"];
    for name in names {
        let sidecars =
            json!({"sidecars": {"logs": {"format": "json", "file": "/var/log/app/app.log"}}});
        create(&services, replicated_service(name, &ns.name, sidecars)).await;
    }
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    let log = first.log.display().to_string();
    eventually(
        &format!("four Deployments rolled out (operator log: {log})"),
        POD_SETTLE,
        || async {
            let list = deployments.list(&ListParams::default()).await.ok()?;
            (list.items.len() == names.len() && list.items.iter().all(|d| !d.rolling()))
                .then_some(())
        },
    )
    .await;
    drop(first);

    // The upgrade: a new operator writes another sidecar image into every template.
    let upgrade = [
        &budget[..],
        &["--resync-period", "1s", "--sidecar-image", UNPULLABLE],
    ]
    .concat();
    let second = Operator::start_with(&cluster, &ns.name, "after", &upgrade);
    let upgraded = || async {
        let list = deployments.list(&ListParams::default()).await.ok()?;
        let names: BTreeSet<String> = list
            .items
            .into_iter()
            .filter(|d| {
                let template = d.spec.as_ref().and_then(|s| s.template.spec.as_ref());
                template
                    .and_then(|p| p.init_containers.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.image.as_deref() == Some(UNPULLABLE)))
            })
            .filter_map(|d| d.metadata.name)
            .collect();
        Some(names)
    };
    let log = second.log.display().to_string();
    let rolling = eventually(
        &format!("two rollouts under way (operator log: {log})"),
        SETTLE,
        || async { upgraded().await.filter(|u| u.len() == 2) },
    )
    .await;
    // Resyncs every second, and retries of the held every 5 s, start no third.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        upgraded().await,
        Some(rolling.clone()),
        "at most two at once"
    );
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), &ns.name);
    let queued = eventually("a RolloutQueued Event for each waiting", SETTLE, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        let queued: BTreeSet<String> = list
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("RolloutQueued"))
            .filter_map(|e| e.regarding?.name)
            .collect();
        (queued.len() == 2).then_some(queued)
    })
    .await;
    assert!(queued.is_disjoint(&rolling), "{queued:?} {rolling:?}");

    // One of the two rolling goes: its slot passes to one that waited.
    let gone = rolling.iter().next().expect("a rolling one").clone();
    services
        .delete(&gone, &DeleteParams::foreground())
        .await
        .expect("delete");
    // The deleted one is gone once its pods are (its app's preStop delay, then the
    // garbage collector): the bound of pods finishing on the node.
    let now = eventually("a waiting one takes the free slot", POD_SETTLE, || async {
        upgraded()
            .await
            .filter(|u| u.len() == 2 && !u.contains(&gone))
    })
    .await;
    assert!(now.iter().any(|n| queued.contains(n)), "{now:?} {queued:?}");
}
