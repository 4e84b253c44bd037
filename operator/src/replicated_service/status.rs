//! The status a ReplicatedService should show, computed without IO from its Deployments
//! (the app's, and the frontend's) as applied.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;
use rigging_crds::{FieldErrors, FrontendStatus, ReplicatedService, ReplicatedServiceStatus};

use super::desired;
use crate::controller::conditions;
use crate::controller::conditions::cond;

/// How far one Deployment is: ready pods, and whether every pod runs the current
/// template.
struct Rollout {
    /// The replicas asked for: what the status reports, so that it moves when the spec or
    /// the autoscaler does, not with every pod the ReplicaSet controller adds or removes.
    want: i32,
    /// Ready pods that make it ready: every pod, or active-passive the leader's alone
    /// (the others are never ready).
    want_ready: i32,
    ready: i32,
    /// The Deployment controller has seen the current generation.
    current: bool,
    rolled_out: bool,
}

impl Rollout {
    /// `floor`: an autoscaler's `minReplicas`, which it scales the Deployment up to at
    /// once, so that a Deployment just created (with the API server's default of one
    /// replica) already counts as asking for them.
    fn of(d: &Deployment, active_passive: bool, floor: Option<i32>) -> Self {
        let asked = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let want = floor.map_or(asked, |floor| asked.max(floor));
        let want_ready = if active_passive { want.min(1) } else { want };
        let st = d.status.clone().unwrap_or_default();
        let ready = st.ready_replicas.unwrap_or(0);
        let current = st.observed_generation >= d.metadata.generation;
        Rollout {
            want,
            want_ready,
            ready,
            current,
            rolled_out: current
                && st.updated_replicas.unwrap_or(0) >= want
                && st.replicas.unwrap_or(0) <= want
                && st.available_replicas.unwrap_or(0) >= want_ready,
        }
    }

    fn ready(&self) -> bool {
        self.ready >= self.want_ready && self.current
    }
}

/// Status of a ReplicatedService whose children are applied, given its Deployment as the
/// apply returned it (`None` if there is none to look at) and, with `spec.frontend`, the
/// frontend's Deployment likewise (`Some(None)` if it is not there to look at).
pub fn observed(
    rs: &ReplicatedService,
    deployment: Option<&Deployment>,
    frontend: Option<Option<&Deployment>>,
    now: Timestamp,
) -> ReplicatedServiceStatus {
    let generation = rs.metadata.generation;
    let floor = rs.spec.autoscaling.as_ref().map(|a| a.min_replicas);
    let app = deployment.map(|d| Rollout::of(d, desired::active_passive(rs), floor));
    let front = frontend.map(|d| d.map(|d| Rollout::of(d, false, None)));
    let summary = |app: &Rollout| {
        let mut summary = format!("{}/{} replicas ready", app.ready, app.want);
        if app.want_ready < app.want {
            summary.push_str(" (active-passive: the leader's)");
        }
        if let Some(Some(f)) = &front {
            summary.push_str(&format!(", frontend {}/{} ready", f.ready, f.want));
        }
        summary
    };
    let ready = match (&app, &front) {
        (None, _) => cond(
            "Ready",
            false,
            "Pending",
            "the Deployment has not been observed yet",
        ),
        (Some(a), _) if !a.ready() => cond("Ready", false, "ReplicasNotReady", &summary(a)),
        (Some(_), Some(None)) => cond(
            "Ready",
            false,
            "Pending",
            "the frontend's Deployment has not been observed yet",
        ),
        (Some(a), Some(Some(f))) if !f.ready() => {
            cond("Ready", false, "FrontendNotReady", &summary(a))
        }
        (Some(a), _) => cond("Ready", true, "ReplicasReady", &summary(a)),
    };
    let progressing = match (&app, &front) {
        (None, _) => cond("Progressing", true, "Creating", "creating the Deployment"),
        (Some(a), _) if !a.rolled_out => cond(
            "Progressing",
            true,
            "RollingOut",
            "the Deployment is rolling out",
        ),
        (Some(_), Some(None)) => cond(
            "Progressing",
            true,
            "Creating",
            "creating the frontend's Deployment",
        ),
        (Some(_), Some(Some(f))) if !f.rolled_out => cond(
            "Progressing",
            true,
            "RollingOut",
            "the frontend's Deployment is rolling out",
        ),
        (Some(_), Some(_)) => cond(
            "Progressing",
            false,
            "RolloutComplete",
            "every replica and frontend replica runs the current template",
        ),
        (Some(_), None) => cond(
            "Progressing",
            false,
            "RolloutComplete",
            "every replica runs the current template",
        ),
    };
    let degraded = cond(
        "Degraded",
        false,
        "Reconciled",
        "the spec is valid and its objects are applied",
    );
    let frontend_status = front.map(|f| FrontendStatus {
        replicas: f.as_ref().map(|f| f.want),
        ready_replicas: f.as_ref().map(|f| f.ready),
    });
    ReplicatedServiceStatus {
        observed_generation: generation,
        replicas: app.as_ref().map(|a| a.want),
        ready_replicas: app.as_ref().map(|a| a.ready),
        frontend: frontend_status,
        conditions: conditions::of(rs, [ready, progressing, degraded], now),
    }
}

/// Status of a ReplicatedService whose spec is invalid: nothing is applied until it is
/// fixed, and the conditions say why.
pub fn invalid(
    rs: &ReplicatedService,
    errors: &FieldErrors,
    now: Timestamp,
) -> ReplicatedServiceStatus {
    let generation = rs.metadata.generation;
    let message = errors.to_string();
    let previous = rs.status.clone().unwrap_or_default();
    ReplicatedServiceStatus {
        observed_generation: generation,
        replicas: previous.replicas,
        ready_replicas: previous.ready_replicas,
        frontend: previous.frontend,
        conditions: conditions::of(rs, conditions::invalid(&message), now),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::DeploymentStatus;

    use super::*;

    fn web(frontend: bool) -> ReplicatedService {
        let frontend = if frontend { "\n  frontend: {}" } else { "" };
        serde_norway::from_str(&format!(
            "apiVersion: rigging.dev/v1alpha1\nkind: ReplicatedService\nmetadata: {{name: web, namespace: shop, generation: 4}}\nspec:\n  port: 8080\n  template: {{spec: {{containers: [{{name: app, image: app:1}}]}}}}{frontend}\n"
        ))
        .unwrap()
    }

    /// A Deployment of `want` replicas, `ready` of them ready, rolled out when all are.
    fn deployment(want: i32, ready: i32) -> Deployment {
        let mut d = Deployment::default();
        d.metadata.generation = Some(1);
        d.spec = Some(k8s_openapi::api::apps::v1::DeploymentSpec {
            replicas: Some(want),
            ..Default::default()
        });
        d.status = Some(DeploymentStatus {
            observed_generation: Some(1),
            replicas: Some(want),
            ready_replicas: Some(ready),
            updated_replicas: Some(want),
            available_replicas: Some(ready),
            ..DeploymentStatus::default()
        });
        d
    }

    fn condition(status: &ReplicatedServiceStatus, type_: &str) -> (String, String, String) {
        let c = status.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    #[test]
    fn the_service_is_ready_only_once_its_frontend_is_too() {
        let rs = web(true);
        let app = deployment(1, 1);
        let waiting = observed(
            &rs,
            Some(&app),
            Some(Some(&deployment(2, 1))),
            Timestamp::now(),
        );
        assert_eq!(
            condition(&waiting, "Ready"),
            (
                "False".into(),
                "FrontendNotReady".into(),
                "1/1 replicas ready, frontend 1/2 ready".into()
            )
        );
        assert_eq!(
            condition(&waiting, "Progressing").1,
            "RollingOut",
            "the frontend is not rolled out"
        );
        assert_eq!(
            waiting.frontend,
            Some(FrontendStatus {
                replicas: Some(2),
                ready_replicas: Some(1)
            })
        );
        let ready = observed(
            &rs,
            Some(&app),
            Some(Some(&deployment(2, 2))),
            Timestamp::now(),
        );
        assert_eq!(
            condition(&ready, "Ready"),
            (
                "True".into(),
                "ReplicasReady".into(),
                "1/1 replicas ready, frontend 2/2 ready".into()
            )
        );
        assert_eq!(condition(&ready, "Progressing").1, "RolloutComplete");
        let unseen = observed(&rs, Some(&app), Some(None), Timestamp::now());
        assert_eq!(condition(&unseen, "Ready").1, "Pending");
        // The app's own readiness comes first: it is what the frontend needs.
        let app_down = observed(
            &rs,
            Some(&deployment(1, 0)),
            Some(Some(&deployment(2, 2))),
            Timestamp::now(),
        );
        assert_eq!(condition(&app_down, "Ready").1, "ReplicasNotReady");
    }

    #[test]
    fn the_status_moves_with_the_replicas_asked_for_not_with_each_pod_made() {
        use crate::controller::conditions::is_current;
        // A Deployment as created (no status yet), as its controller first sees it (no pod
        // yet), with its pod Pending, and, autoscaled, scaled by the autoscaler to its
        // minimum: the status says the same each time, so it is written once.
        let at = |want: Option<i32>, pods: Option<i32>| {
            let mut d = deployment(1, 0);
            d.spec.as_mut().unwrap().replicas = want;
            let st = d.status.as_mut().unwrap();
            (st.replicas, st.updated_replicas) = (pods, pods);
            if pods.is_none() {
                d.status = None;
            }
            d
        };
        let plain = web(false);
        let first = observed(&plain, Some(&at(Some(1), None)), None, Timestamp::now());
        assert_eq!((first.replicas, first.ready_replicas), (Some(1), Some(0)));
        for later in [at(Some(1), Some(0)), at(Some(1), Some(1))] {
            let next = observed(&plain, Some(&later), None, Timestamp::now());
            assert!(is_current(Some(&first), &next), "{next:?}");
        }
        let mut scaled = web(false);
        scaled.spec.autoscaling = Some(
            serde_json::from_value(serde_json::json!({"minReplicas": 2, "maxReplicas": 5}))
                .unwrap(),
        );
        let first = observed(&scaled, Some(&at(None, None)), None, Timestamp::now());
        assert_eq!(first.replicas, Some(2), "the autoscaler's minimum");
        assert_eq!(condition(&first, "Ready").2, "0/2 replicas ready");
        for later in [
            at(None, Some(1)),
            at(Some(2), Some(1)),
            at(Some(2), Some(2)),
        ] {
            let next = observed(&scaled, Some(&later), None, Timestamp::now());
            assert!(is_current(Some(&first), &next), "{next:?}");
        }
        // What the autoscaler does beyond its minimum shows.
        let up = observed(&scaled, Some(&at(Some(4), Some(2))), None, Timestamp::now());
        assert_eq!(up.replicas, Some(4));
    }

    #[test]
    fn without_a_frontend_the_status_has_none() {
        let status = observed(&web(false), Some(&deployment(1, 1)), None, Timestamp::now());
        assert_eq!(status.frontend, None);
        assert_eq!(
            condition(&status, "Ready"),
            (
                "True".into(),
                "ReplicasReady".into(),
                "1/1 replicas ready".into()
            )
        );
    }

    #[test]
    fn an_active_passive_service_is_ready_and_rolled_out_with_its_leader_alone_ready() {
        let mut rs = web(false);
        rs.spec.sidecars = Some(
            serde_json::from_value(serde_json::json!({"elect": {"activePassive": true}})).unwrap(),
        );
        let leader = observed(&rs, Some(&deployment(2, 1)), None, Timestamp::now());
        assert_eq!(
            condition(&leader, "Ready"),
            (
                "True".into(),
                "ReplicasReady".into(),
                "1/2 replicas ready (active-passive: the leader's)".into()
            )
        );
        assert_eq!(condition(&leader, "Progressing").1, "RolloutComplete");
        let nobody = observed(&rs, Some(&deployment(2, 0)), None, Timestamp::now());
        assert_eq!(condition(&nobody, "Ready").1, "ReplicasNotReady");
        // Without it, one ready pod of two is not enough.
        let half = observed(&web(false), Some(&deployment(2, 1)), None, Timestamp::now());
        assert_eq!(condition(&half, "Ready").1, "ReplicasNotReady");
    }
}
