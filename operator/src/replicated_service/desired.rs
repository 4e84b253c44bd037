//! The pure half of the ReplicatedService controller: the objects a ReplicatedService
//! stands for, computed without IO. `render` prints them; `reconcile` applies them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{PodTemplateSpec, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use rigging_crds::{DisruptionBudget, FieldError, FieldErrors, ReplicatedService};

use super::frontend;
use crate::controller::{Child, MANAGER, RenderConfig, child_meta};
use crate::sidecars;
use crate::sidecars::elect::ElectAccess;

/// The children of one ReplicatedService, in the order they are applied and rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    /// With `sidecars.elect` on Leases: the pods' ServiceAccount (when the template names
    /// none), Role and RoleBinding `<name>-elect`, applied before the pods exist.
    pub elect: Option<ElectAccess>,
    /// Runs the pods.
    pub deployment: Deployment,
    /// Load-balances over the ready pods.
    pub service: Service,
    /// Present when `disruptionBudget` is set.
    pub pdb: Option<PodDisruptionBudget>,
    /// Present when `autoscaling` is set.
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// Present when `frontend` is set.
    pub frontend: Option<frontend::Children>,
}

impl Children {
    /// Every child, in apply order.
    pub fn into_vec(self) -> Vec<Child> {
        let mut out = self
            .elect
            .map(ElectAccess::into_children)
            .unwrap_or_default();
        out.extend([
            Child::Deployment(self.deployment),
            Child::Service(self.service),
        ]);
        out.extend(self.pdb.map(Child::PodDisruptionBudget));
        out.extend(self.hpa.map(Child::HorizontalPodAutoscaler));
        if let Some(f) = self.frontend {
            out.extend([
                Child::ConfigMap(f.config_map),
                Child::Deployment(f.deployment),
                Child::Service(f.service),
            ]);
        }
        out
    }

    /// Every child as JSON, in apply order.
    pub fn to_values(&self) -> Result<Vec<serde_json::Value>, serde_json::Error> {
        self.clone()
            .into_vec()
            .iter()
            .map(Child::to_value)
            .collect()
    }
}

/// The labels that select this ReplicatedService's pods. Deployment selectors are
/// immutable, so this set never grows.
pub fn selector_labels(rs: &ReplicatedService) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), rs.name_any()),
        ("app.kubernetes.io/instance".to_owned(), rs.name_any()),
    ])
}

/// Labels of every child and pod: the selector labels plus who manages them.
pub fn labels(rs: &ReplicatedService) -> BTreeMap<String, String> {
    let mut labels = selector_labels(rs);
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    labels.insert("app.kubernetes.io/part-of".into(), "rigging".into());
    labels
}

/// Computes the children, or every reason the spec is invalid.
pub fn desired(rs: &ReplicatedService, config: &RenderConfig) -> Result<Children, FieldErrors> {
    // The CRD's schema and CEL rules are checked before this (by the API server, and by
    // `render` with the same rules); what is left is what they cannot express: the
    // sidecars' names and ports, checked as they are placed, and the frontend's sizes.
    let elect = ElectAccess::for_pods(
        rs.spec.sidecars.as_ref(),
        &rs.spec.template,
        &rs.name_any(),
        own_meta(rs),
        config.elect_grant.as_ref(),
    );
    let deployment = deployment(rs, config, elect.as_ref());
    let frontend = frontend::children(rs, config);
    let pdb = pdb(rs);
    let (deployment, frontend, pdb) = match (deployment, frontend, pdb) {
        (Ok(d), Ok(f), Ok(p)) => (d, f, p),
        (d, f, p) => {
            let errors = [d.err(), f.err(), p.err()].into_iter().flatten();
            return Err(FieldErrors(errors.flat_map(|e| e.0).collect()));
        }
    };
    Ok(Children {
        elect,
        deployment,
        service: service(rs),
        pdb,
        hpa: hpa(rs),
        frontend,
    })
}

/// The metadata of a child named as `rs` is.
fn own_meta(rs: &ReplicatedService) -> ObjectMeta {
    child_meta(rs, rs.name_any(), labels(rs))
}

fn selector(rs: &ReplicatedService) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(rs)),
        ..LabelSelector::default()
    }
}

/// Whether only the elected leader's pod is ready (`sidecars.elect.activePassive`).
pub fn active_passive(rs: &ReplicatedService) -> bool {
    rs.spec
        .sidecars
        .as_ref()
        .and_then(|s| s.elect.as_ref())
        .is_some_and(|e| e.active_passive)
}

fn deployment(
    rs: &ReplicatedService,
    config: &RenderConfig,
    elect: Option<&ElectAccess>,
) -> Result<Deployment, FieldErrors> {
    let spec = &rs.spec;
    // Active-passive, only the leader's pod is ever available, and a rolling update that
    // must keep one pod available could never replace it: no new pod is ready while the
    // old leader leads. Every old pod may go at once instead; the leader hands over as it
    // stops (the sidecar releases its Lease on SIGTERM), and new pods start meanwhile.
    let strategy = active_passive(rs).then(|| DeploymentStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDeployment {
            max_unavailable: Some(IntOrString::String("100%".into())),
            max_surge: None,
        }),
    });
    Ok(Deployment {
        metadata: own_meta(rs),
        spec: Some(DeploymentSpec {
            // Left out under autoscaling, so that this field manager never owns it and
            // every apply leaves the HPA's choice alone.
            replicas: spec.autoscaling.is_none().then_some(spec.replicas),
            selector: selector(rs),
            template: pod_template(rs, config, elect)?,
            strategy,
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

fn pod_template(
    rs: &ReplicatedService,
    config: &RenderConfig,
    elect: Option<&ElectAccess>,
) -> Result<PodTemplateSpec, FieldErrors> {
    let mut template = rs.spec.template.clone();
    if let Some(access) = elect {
        access.assign(&mut template);
    }
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .extend(labels(rs));
    let tls = rs.spec.tls.as_ref().map(|tls| sidecars::TlsTermination {
        port: tls.port,
        secret_name: tls.secret_name.clone(),
        app_port: rs.spec.port,
        resources: tls.resources.clone(),
    });
    let name = rs.name_any();
    let placement = sidecars::Placement {
        app_port: Some(rs.spec.port),
        tls: tls.as_ref(),
        sidecars: rs.spec.sidecars.as_ref(),
        election: Some(&name),
    };
    sidecars::place(&mut template, &placement, config)?;
    // Clients reach the pods through the Service: a rollout or a scale-down must not
    // refuse the requests sent to a pod before its endpoints are updated. Not so
    // active-passive: the leader's pod is the only one serving, its deletion takes it out
    // of the endpoints at once whatever it does, and every second it then waits is a
    // second before its election sidecar hands the leadership (and the traffic) over.
    if !active_passive(rs) {
        sidecars::delay_shutdown(&mut template);
    }
    Ok(template)
}

fn service(rs: &ReplicatedService) -> Service {
    let spec = &rs.spec;
    Service {
        metadata: own_meta(rs),
        spec: Some(ServiceSpec {
            type_: Some(spec.service.service_type.as_str().into()),
            selector: Some(selector_labels(rs)),
            session_affinity: Some(spec.service.session_affinity.as_str().into()),
            ports: Some(vec![ServicePort {
                name: Some(if spec.tls.is_some() { "https" } else { "http" }.into()),
                port: spec.service_port(),
                target_port: Some(IntOrString::Int(spec.target_port())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn pdb(rs: &ReplicatedService) -> Result<Option<PodDisruptionBudget>, FieldErrors> {
    let Some(budget) = rs.spec.disruption_budget.as_ref() else {
        return Ok(None);
    };
    if let Some(error) = never_disrupts(rs, budget) {
        return Err(FieldErrors(vec![error]));
    }
    Ok(Some(PodDisruptionBudget {
        metadata: own_meta(rs),
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(selector(rs)),
            max_unavailable: budget.max_unavailable.clone(),
            min_available: budget.min_available.clone(),
            // A pod that is not ready serves nothing, so evicting it costs no availability;
            // with the default (`IfHealthyBudget`) a crash-looping pod can block a drain.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
        }),
        status: None,
    }))
}

/// Why `budget` would never let a drain evict a ready pod, if it would not: the kubelet
/// evicts only while the ready pods outnumber what the budget keeps. The most pods that
/// are ever ready is the replica count (the autoscaler's highest), and one for an
/// active-passive service, where only the leader is.
fn never_disrupts(rs: &ReplicatedService, budget: &DisruptionBudget) -> Option<FieldError> {
    let pods = rs
        .spec
        .autoscaling
        .as_ref()
        .map_or(rs.spec.replicas, |a| a.max_replicas);
    if pods <= 0 {
        return None;
    }
    let ready = if active_passive(rs) { 1 } else { pods };
    // The disruption controller scales percentages of the expected pods up (ceiling).
    let scaled = |v: &IntOrString| match v {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(s) => {
            let percent: i64 = s.strip_suffix('%')?.parse().ok()?;
            i32::try_from((percent * i64::from(pods) + 99) / 100).ok()
        }
    };
    let (field, kept) = match (&budget.max_unavailable, &budget.min_available) {
        (Some(max), _) => ("maxUnavailable", pods - scaled(max)?),
        (None, Some(min)) => ("minAvailable", scaled(min)?),
        (None, None) => return None,
    };
    if ready > kept {
        return None;
    }
    let message = if active_passive(rs) {
        format!(
            "this budget keeps {kept} of {pods} pods available, but only the leader's pod is \
             ever ready (sidecars.elect.activePassive), so no drain could evict it; leave the \
             budget out (the leader hands over when its pod stops)"
        )
    } else {
        format!(
            "this budget keeps {kept} of at most {pods} pods available, so no drain could \
             ever evict one; allow at least one pod to be unavailable"
        )
    };
    Some(FieldError::new(
        format!("spec.disruptionBudget.{field}"),
        message,
    ))
}

fn hpa(rs: &ReplicatedService) -> Option<HorizontalPodAutoscaler> {
    let scaling = rs.spec.autoscaling.as_ref()?;
    Some(HorizontalPodAutoscaler {
        metadata: own_meta(rs),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: rs.name_any(),
            },
            min_replicas: Some(scaling.min_replicas),
            max_replicas: scaling.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(scaling.target_cpu_utilization_percentage),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::testing::assert_child_of;

    /// A ReplicatedService from YAML, the way users write it.
    fn rs(yaml: &str) -> ReplicatedService {
        serde_norway::from_str(yaml).expect("test fixture parses")
    }

    fn full() -> ReplicatedService {
        rs(r#"
apiVersion: rigging.dev/v1alpha1
kind: ReplicatedService
metadata: {name: web, namespace: shop, uid: 1234-abcd}
spec:
  port: 8080
  template:
    metadata: {labels: {tier: front, app.kubernetes.io/name: spoofed}}
    spec:
      containers:
        - name: app
          image: app:1
          readinessProbe: {httpGet: {path: /, port: 8080}}
  service: {sessionAffinity: ClientIP}
  autoscaling: {minReplicas: 2, maxReplicas: 5}
  disruptionBudget: {maxUnavailable: "25%"}
  tls: {secretName: web-tls, port: 8443}
"#)
    }

    fn minimal() -> ReplicatedService {
        rs(r#"
apiVersion: rigging.dev/v1alpha1
kind: ReplicatedService
metadata: {name: hello, namespace: default}
spec:
  port: 8080
  template:
    spec:
      containers:
        - name: app
          image: app:1
          readinessProbe: {tcpSocket: {port: 8080}}
"#)
    }

    fn render(rs: &ReplicatedService) -> Children {
        desired(
            rs,
            &RenderConfig {
                sidecar_image: "sidecar:test".into(),
                ..RenderConfig::default()
            },
        )
        .expect("valid fixture")
    }

    fn errors(rs: &ReplicatedService) -> Vec<String> {
        match desired(rs, &RenderConfig::default()) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn every_selector_matches_the_pod_labels() {
        let c = render(&full());
        let pod_labels = c
            .deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .clone()
            .unwrap();
        let matches =
            |sel: &BTreeMap<String, String>| sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v));
        let dep_sel = c
            .deployment
            .spec
            .as_ref()
            .unwrap()
            .selector
            .match_labels
            .clone()
            .unwrap();
        let svc_sel = c.service.spec.as_ref().unwrap().selector.clone().unwrap();
        let pdb_sel = c
            .pdb
            .as_ref()
            .unwrap()
            .spec
            .as_ref()
            .unwrap()
            .selector
            .clone()
            .unwrap()
            .match_labels
            .unwrap();
        assert!(matches(&dep_sel) && matches(&svc_sel) && matches(&pdb_sel));
        assert_eq!(dep_sel, svc_sel);
        // The user's own labels stay; a user label cannot hijack a selector key.
        assert_eq!(pod_labels["tier"], "front");
        assert_eq!(pod_labels["app.kubernetes.io/name"], "web");
    }

    #[test]
    fn the_service_targets_the_tls_port_when_tls_is_on() {
        let c = render(&full());
        let port = &c.service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
        assert_eq!(port.port, 8443, "service.port defaults to tls.port");
        assert_eq!(port.target_port, Some(IntOrString::Int(8443)));
        assert_eq!(port.name.as_deref(), Some("https"));
        assert_eq!(
            c.service.spec.as_ref().unwrap().session_affinity.as_deref(),
            Some("ClientIP")
        );

        let plain = render(&minimal());
        let port = &plain.service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.port, port.target_port.clone()),
            (8080, Some(IntOrString::Int(8080)))
        );
    }

    #[test]
    fn the_hpa_scales_the_deployment_which_then_has_no_replicas_field() {
        let c = render(&full());
        let hpa = c.hpa.as_ref().unwrap().spec.as_ref().unwrap();
        assert_eq!(hpa.scale_target_ref.kind, "Deployment");
        assert_eq!(hpa.scale_target_ref.api_version.as_deref(), Some("apps/v1"));
        assert_eq!(
            Some(hpa.scale_target_ref.name.clone()),
            c.deployment.metadata.name
        );
        assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(2), 5));
        let target = &hpa.metrics.as_ref().unwrap()[0]
            .resource
            .as_ref()
            .unwrap()
            .target;
        assert_eq!(
            target.average_utilization,
            Some(80),
            "the default CPU target"
        );
        assert_eq!(c.deployment.spec.as_ref().unwrap().replicas, None);
        let json = serde_json::to_value(&c.deployment).unwrap();
        assert!(
            json["spec"].get("replicas").is_none(),
            "replicas must not be applied at all"
        );
    }

    /// `minimal` with `replicas` and `budget` (YAML flow), active-passive when asked.
    fn budgeted(replicas: i32, budget: &str, active_passive: bool) -> ReplicatedService {
        let elect = if active_passive {
            "\n  sidecars: {elect: {activePassive: true}}"
        } else {
            ""
        };
        rs(&format!(
            r#"
apiVersion: rigging.dev/v1alpha1
kind: ReplicatedService
metadata: {{name: hello, namespace: default}}
spec:
  port: 8080
  replicas: {replicas}
  disruptionBudget: {budget}{elect}
  template: {{spec: {{containers: [{{name: app, image: app:1}}]}}}}
"#
        ))
    }

    #[test]
    fn a_budget_that_could_never_let_a_drain_evict_a_pod_is_refused_by_field() {
        let cfg = RenderConfig::default();
        for (replicas, budget, active_passive, field) in [
            (1, "{maxUnavailable: 0}", false, "maxUnavailable"),
            (3, "{maxUnavailable: '0%'}", false, "maxUnavailable"),
            (1, "{minAvailable: 1}", false, "minAvailable"),
            (3, "{minAvailable: '100%'}", false, "minAvailable"),
            // Only the leader is ever ready: keeping one available keeps it forever.
            (2, "{maxUnavailable: 1}", true, "maxUnavailable"),
            (2, "{minAvailable: 1}", true, "minAvailable"),
        ] {
            let errors = desired(&budgeted(replicas, budget, active_passive), &cfg)
                .expect_err(budget)
                .0;
            assert_eq!(
                errors[0].field,
                format!("spec.disruptionBudget.{field}"),
                "{replicas} {budget} {active_passive}"
            );
        }
        for (replicas, budget, active_passive) in [
            (1, "{maxUnavailable: 1}", false),
            (3, "{maxUnavailable: '1%'}", false),
            (2, "{minAvailable: 1}", false),
            (3, "{minAvailable: '50%'}", false),
            (2, "{maxUnavailable: 2}", true),
            (2, "{minAvailable: 0}", true),
        ] {
            let children = desired(&budgeted(replicas, budget, active_passive), &cfg)
                .unwrap_or_else(|e| panic!("{replicas} {budget} {active_passive}: {e}"));
            let spec = children.pdb.and_then(|p| p.spec).expect("a budget");
            assert_eq!(
                spec.unhealthy_pod_eviction_policy.as_deref(),
                Some("AlwaysAllow")
            );
        }
    }

    #[test]
    fn without_autoscaling_the_deployment_owns_replicas_and_no_hpa_or_pdb_is_made() {
        let c = render(&minimal());
        assert_eq!(c.deployment.spec.as_ref().unwrap().replicas, Some(1));
        assert!(c.hpa.is_none() && c.pdb.is_none());
    }

    #[test]
    fn the_tls_sidecar_is_a_hardened_native_sidecar_with_the_secret_mounted_read_only() {
        let c = render(&full());
        let pod = c
            .deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .clone()
            .unwrap();
        let sidecar = &pod.init_containers.as_ref().unwrap()[0];
        assert_eq!(sidecar.name, "rigging-tls");
        assert_eq!(sidecar.image.as_deref(), Some("sidecar:test"));
        assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
        assert_eq!(
            sidecar.args.clone().unwrap().join(" "),
            "tls --admin 0.0.0.0:9901 --cert /etc/rigging/tls/tls.crt --connect-timeout 2s --drain-timeout 20s --handshake-timeout 10s --header-timeout 30s --idle-timeout 2m --key /etc/rigging/tls/tls.key --listen 0.0.0.0:8443 --max-connections 4096 --max-idle-upstream 64 --reload-interval 1s --session-cache-size 4096 --upstream 127.0.0.1:8080"
        );
        let sc = sidecar.security_context.clone().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert!(sc.run_as_user.is_some_and(|u| u > 0));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let res = sidecar.resources.clone().unwrap();
        for q in [res.requests.unwrap(), res.limits.unwrap()] {
            assert!(q.contains_key("cpu") && q.contains_key("memory"));
        }
        let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            p.as_ref().unwrap().http_get.as_ref().unwrap().path.clone()
        };
        assert_eq!(
            probe_path(&sidecar.readiness_probe).as_deref(),
            Some("/readyz")
        );
        assert_eq!(
            probe_path(&sidecar.liveness_probe).as_deref(),
            Some("/healthz")
        );
        let mount = &sidecar.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            ("/etc/rigging/tls", Some(true))
        );
        let volume = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == mount.name)
            .unwrap();
        assert_eq!(
            volume.secret.unwrap().secret_name.as_deref(),
            Some("web-tls")
        );
        // The app container itself is untouched.
        assert_eq!(pod.containers.len(), 1);
    }

    #[test]
    fn every_child_is_owned_by_the_replicated_service() {
        let c = render(&full());
        let metas = [
            &c.deployment.metadata,
            &c.service.metadata,
            &c.pdb.as_ref().unwrap().metadata,
            &c.hpa.as_ref().unwrap().metadata,
        ];
        for meta in metas {
            assert_child_of(meta, "shop", ("ReplicatedService", "web", "1234-abcd"));
        }
    }

    #[test]
    fn names_rigging_reserves_are_refused_when_tls_is_on() {
        let mut rs = full();
        rs.spec.template.spec.as_mut().unwrap().containers[0].name = "rigging-tls".into();
        let errors = errors(&rs);
        assert!(
            errors.iter().any(|e| e.starts_with(
                "spec.template.spec.containers: container #0 is named \"rigging-tls\""
            )),
            "{errors:?}"
        );
    }

    #[test]
    fn an_active_passive_service_gets_its_election_access_first_and_a_rollout_that_can_replace_the_leader()
     {
        let mut rs = minimal();
        rs.spec.replicas = 2;
        rs.spec.sidecars = Some(
            serde_json::from_value(serde_json::json!({"elect": {"activePassive": true}})).unwrap(),
        );
        let c = render(&rs);
        let kinds: Vec<&str> = c
            .clone()
            .into_vec()
            .iter()
            .map(|c| match c {
                Child::ServiceAccount(_) => "ServiceAccount",
                Child::Role(_) => "Role",
                Child::RoleBinding(_) => "RoleBinding",
                Child::Deployment(_) => "Deployment",
                Child::Service(_) => "Service",
                _ => "other",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "ServiceAccount",
                "Role",
                "RoleBinding",
                "Deployment",
                "Service"
            ],
            "the pods' access exists before the pods"
        );
        let spec = c.deployment.spec.as_ref().unwrap();
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("hello-elect"));
        let rolling = spec
            .strategy
            .as_ref()
            .unwrap()
            .rolling_update
            .as_ref()
            .unwrap();
        assert_eq!(
            rolling.max_unavailable,
            Some(IntOrString::String("100%".into()))
        );
        let access = c.elect.as_ref().unwrap();
        assert_eq!(access.role.metadata.name.as_deref(), Some("hello-elect"));
        assert_eq!(
            access.role.metadata.owner_references, c.deployment.metadata.owner_references,
            "owned like every other child"
        );
        // Nor does the leader wait out a shutdown delay before it hands over.
        assert!(pod.containers[0].lifecycle.is_none());
        assert!(pod.termination_grace_period_seconds.is_none());
        // Without activePassive, the Deployment keeps Kubernetes' own rollout, and its
        // pods stop only after their endpoints are gone.
        rs.spec.sidecars = Some(serde_json::from_value(serde_json::json!({"elect": {}})).unwrap());
        let c = render(&rs);
        let spec = c.deployment.spec.unwrap();
        assert!(spec.strategy.is_none());
        let pod = spec.template.spec.unwrap();
        assert!(pod.containers[0].lifecycle.is_some());
        assert!(c.elect.is_some());
    }
}
