//! The pure half of the ShardedService controller: the objects a ShardedService stands
//! for, computed without IO. `render` prints them; `reconcile` applies them.
//!
//! Every shard has a stable name, `<name>-<shard>`, and the ring is built from those names
//! alone (twemproxy's `HOST:PORT:WEIGHT NAME`: only NAME is hashed). Where a shard's
//! address points may change — a restarted pod, a shard that gains replicas — and no key
//! moves.
//!
//! While the shard count changes, the ring and the shards' pods are sized apart, as
//! [`reshard`](super::reshard) plans them from what the cluster shows; [`desired`] is the
//! settled state, which `render` prints.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, PodTemplateSpec, Service, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use rigging_crds::sharded_service::RouterMode;
use rigging_crds::sidecar::ports;
use rigging_crds::sidecar::shard::{Protocol, ShardArgs, ShardConfig};
use rigging_crds::{FieldError, FieldErrors, ShardedService};

use super::reshard::{self, Plan};
use crate::controller::with_managed;
use crate::controller::{Child, Observed, RenderConfig, owner_references};
use crate::shard_set::{ShardSet, match_labels, service_port};
use crate::sidecars;
use crate::sidecars::elect::ElectAccess;

pub use crate::shard_set::SHARD_LABEL;
/// The label that tells a ShardedService's shard pods from its router pods.
const COMPONENT_LABEL: &str = "app.kubernetes.io/component";

/// What a child is part of, as its `app.kubernetes.io/component` label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The shards: their StatefulSets, Services and NetworkPolicy.
    Shard,
    /// The routers: their Deployment and the Service clients use.
    Router,
    /// The ring ConfigMap.
    Ring,
}

impl Component {
    fn as_str(self) -> &'static str {
        match self {
            Component::Shard => "shard",
            Component::Router => "router",
            Component::Ring => "ring",
        }
    }
}

/// The children of one ShardedService, in the order they are applied and rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    /// With `sidecars.elect` on Leases: the shard pods' ServiceAccount (when the template
    /// names none), Role and RoleBinding `<name>-elect`, applied before the pods exist.
    pub elect: Option<ElectAccess>,
    /// Lets only the routers (or the ambassadors' pods) reach the shards' port: applied
    /// first, so that no shard pod is ever reachable without it.
    pub network_policy: NetworkPolicy,
    /// The ring: the sharding ambassador's config file, reloaded when it changes.
    pub ring: ConfigMap,
    /// The headless Service `<name>-shards` that gives every shard pod its stable DNS
    /// name, and governs the StatefulSets.
    pub headless: Service,
    /// With `replicasPerShard > 1`, one ClusterIP Service `<name>-<shard>` per shard,
    /// which the ring addresses the shard by; empty otherwise.
    pub shard_services: Vec<Service>,
    /// One StatefulSet `<name>` of every shard (`replicasPerShard: 1`), or one
    /// `<name>-<shard>` per shard.
    pub statefulsets: Vec<StatefulSet>,
    /// The router Deployment `<name>-router` (mode `Router`).
    pub router: Option<Deployment>,
    /// The Service `<name>` clients use, in front of the routers (mode `Router`).
    pub service: Option<Service>,
}

impl Children {
    /// Every child, in apply order.
    pub fn into_vec(self) -> Vec<Child> {
        let mut out = self
            .elect
            .map(ElectAccess::into_children)
            .unwrap_or_default();
        out.extend([
            Child::NetworkPolicy(self.network_policy),
            Child::ConfigMap(self.ring),
            Child::Service(self.headless),
        ]);
        out.extend(self.shard_services.into_iter().map(Child::Service));
        out.extend(self.statefulsets.into_iter().map(Child::StatefulSet));
        out.extend(self.router.map(Child::Deployment));
        out.extend(self.service.map(Child::Service));
        out
    }
}

/// The stable name of shard `shard`: what the ring hashes, and the name of its pod
/// (`replicasPerShard: 1`) or of its StatefulSet and Service.
pub fn shard_name(ss: &ShardedService, shard: i32) -> String {
    shard_set(ss).shard_name(shard)
}

/// The shards' pods, as the machinery ShardedService shares with ScatterGather builds them.
fn shard_set(ss: &ShardedService) -> ShardSet<'_> {
    ShardSet {
        name: ss.name_any(),
        meta: ObjectMeta {
            namespace: ss.namespace(),
            owner_references: owner_references(ss),
            ..ObjectMeta::default()
        },
        selector: selector_labels(ss, Component::Shard),
        headless: headless_name(ss),
        port: service_port(&port_name(ss), ss.spec.port),
        template: &ss.spec.template,
        volume_claim_templates: &ss.spec.volume_claim_templates,
        sidecars: ss.spec.sidecars.as_ref(),
        shard_env: None,
    }
}

/// The headless Service that names the shard pods.
pub fn headless_name(ss: &ShardedService) -> String {
    format!("{}-shards", ss.name_any())
}

/// The router Deployment.
pub fn router_name(ss: &ShardedService) -> String {
    format!("{}-router", ss.name_any())
}

/// The names of the StatefulSets, in shard order.
pub fn statefulset_names(ss: &ShardedService) -> Vec<String> {
    if ss.spec.replicas_per_shard == 1 {
        vec![ss.name_any()]
    } else {
        (0..ss.spec.shards).map(|i| shard_name(ss, i)).collect()
    }
}

/// The ring's members, in shard order, once the spec's shard count is in service.
pub fn members(ss: &ShardedService) -> Vec<String> {
    (0..ss.spec.shards).map(|i| shard_name(ss, i)).collect()
}

/// The servers of the ring of the spec's shard count, in twemproxy's syntax.
pub fn servers(ss: &ShardedService) -> Vec<String> {
    ring_servers(ss, ss.spec.shards)
}

/// The servers of a ring of the first `size` shards in twemproxy's syntax, `HOST:PORT:1
/// NAME`: each shard's stable DNS name (its pod's through the headless Service, or its own
/// Service's), weight 1, and its stable name, which alone is hashed.
fn ring_servers(ss: &ShardedService, size: i32) -> Vec<String> {
    let set = shard_set(ss);
    (0..size)
        .map(|i| {
            let name = set.shard_name(i);
            let host = if ss.spec.replicas_per_shard == 1 {
                set.pod_host(&name)
            } else {
                format!("{name}.{}.svc", set.namespace())
            };
            format!("{host}:{}:1 {name}", ss.spec.port)
        })
        .collect()
}

/// The sharding ambassador's config file as the ring ConfigMap holds it. It carries what
/// an ambassador in a client pod cannot know from its own flags (protocol, shard key) and
/// what is reloaded (servers, hashing, ejection); never a password.
pub fn ring_config(ss: &ShardedService) -> ShardConfig {
    sized_ring_config(ss, ss.spec.shards)
}

/// [`ring_config`] with a ring of the first `size` shards.
fn sized_ring_config(ss: &ShardedService, size: i32) -> ShardConfig {
    let spec = &ss.spec;
    ShardConfig {
        protocol: Some(spec.protocol),
        servers: Some(ring_servers(ss, size)),
        hash: Some(spec.hashing.function.as_str().to_owned()),
        hash_tag: spec.hashing.hash_tag.clone(),
        shard_key: shard_key(ss),
        auto_eject_hosts: Some(ejects(ss)),
        ..ShardConfig::default()
    }
}

/// Whether a failing shard is taken off the ring until it recovers (twemproxy's
/// `auto_eject_hosts`). Shards without storage are caches, whose keys may live elsewhere
/// for a while; shards with storage are not, or a key written meanwhile would vanish when
/// its shard came back.
fn ejects(ss: &ShardedService) -> bool {
    ss.spec.volume_claim_templates.is_empty()
}

/// `spec.shardKey` in the sidecar's `--shard-key` syntax.
fn shard_key(ss: &ShardedService) -> Option<String> {
    let key = ss.spec.shard_key.as_ref()?;
    if let Some(header) = &key.header {
        Some(format!("header:{header}"))
    } else if let Some(segment) = key.path_segment {
        Some(format!("path:{segment}"))
    } else {
        key.query.as_ref().map(|q| format!("query:{q}"))
    }
}

/// The ring version: a short digest of the ring file's text, which is exactly what every
/// router and ambassador loads, and what each reports it serves.
pub use rigging_crds::sidecar::shard::ring_version;

/// The ring file of a ring of the first `size` shards, as the ConfigMap holds it.
fn ring_file(ss: &ShardedService, size: i32) -> Result<String, FieldErrors> {
    serde_norway::to_string(&sized_ring_config(ss, size)).map_err(|e| {
        FieldErrors(vec![FieldError::new(
            "spec",
            format!("the ring file cannot be written: {e}"),
        )])
    })
}

/// The labels that select one component's pods. StatefulSet and Deployment selectors are
/// immutable, so these sets never grow.
pub fn selector_labels(ss: &ShardedService, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), ss.name_any()),
        ("app.kubernetes.io/instance".to_owned(), ss.name_any()),
        (COMPONENT_LABEL.to_owned(), component.as_str().to_owned()),
    ])
}

/// The labels that select the pods of shard `shard` alone.
pub fn shard_selector_labels(ss: &ShardedService, shard: i32) -> BTreeMap<String, String> {
    shard_set(ss).shard_selector(shard)
}

/// Labels of every child and pod: the selector labels plus who manages them.
pub fn labels(ss: &ShardedService, component: Component) -> BTreeMap<String, String> {
    with_managed(selector_labels(ss, component))
}

/// Computes the children once the spec's shard count is in service, or every reason the
/// spec is invalid: what `render` prints.
pub fn desired(ss: &ShardedService, config: &RenderConfig) -> Result<Children, FieldErrors> {
    planned(ss, config, Plan::settled(ss))
}

/// Computes the children at this step of a change of the shard count, from the children
/// the cluster has and what the routers answered (see [`reshard`]), or every reason the
/// spec is invalid.
pub fn observed(
    ss: &ShardedService,
    config: &RenderConfig,
    observed: &Observed,
) -> Result<Children, FieldErrors> {
    let seen = reshard::observe(ss, observed);
    let ring = reshard::ring_size(ss, &seen);
    let version = ring_version(&ring_file(ss, ring)?);
    let shards = reshard::shard_count(ss, &seen, observed.answers(), &version);
    planned(ss, config, Plan { ring, shards })
}

/// Computes the children of a ring of `plan.ring` shards and pods for `plan.shards`.
fn planned(
    ss: &ShardedService,
    config: &RenderConfig,
    plan: Plan,
) -> Result<Children, FieldErrors> {
    // The CRD's schema and CEL rules are checked before this (by the API server, and by
    // `render` with the same rules); what is left is what they cannot express: the ports
    // of the pods Rigging fills, checked as the pods are built.
    let spec = &ss.spec;
    let router = spec.router.mode == RouterMode::Router;
    if router && spec.router_port() == i32::from(ports::SHARD_ADMIN) {
        let field = if spec.router.port.is_some() {
            "spec.router.port"
        } else {
            "spec.port"
        };
        return Err(FieldErrors(vec![FieldError::new(
            field,
            format!(
                "port {} is the router's port and also the sharding ambassador's admin port in the router pods: set router.port to another port",
                ports::SHARD_ADMIN
            ),
        )]));
    }
    let ring_file = ring_file(ss, plan.ring)?;
    let elect = ElectAccess::for_pods(
        spec.sidecars.as_ref(),
        &spec.template,
        &ss.name_any(),
        child_meta(ss, ss.name_any(), labels(ss, Component::Shard)),
        config.elect_grant.as_ref(),
    );
    let set = shard_set(ss);
    let statefulsets = if spec.replicas_per_shard == 1 {
        vec![set.statefulset(config, elect.as_ref(), None, plan.shards)?]
    } else {
        (0..plan.shards)
            .map(|i| set.statefulset(config, elect.as_ref(), Some(i), spec.replicas_per_shard))
            .collect::<Result<_, _>>()?
    };
    let shard_services = if spec.replicas_per_shard == 1 {
        Vec::new()
    } else {
        (0..plan.shards).map(|i| set.shard_service(i)).collect()
    };
    Ok(Children {
        elect,
        network_policy: network_policy(ss),
        ring: ring(ss, ring_file),
        headless: set.headless(),
        shard_services,
        statefulsets,
        router: router.then(|| router_deployment(ss, config)).transpose()?,
        service: router.then(|| client_service(ss)),
    })
}

fn child_meta(ss: &ShardedService, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    shard_set(ss).child_meta(name, labels)
}

/// The port name of the protocol.
fn port_name(ss: &ShardedService) -> String {
    match ss.spec.protocol {
        Protocol::Redis => "redis",
        Protocol::Memcached => "memcached",
        Protocol::Http => "http",
    }
    .to_owned()
}

fn ring(ss: &ShardedService, ring_file: String) -> ConfigMap {
    let name = sidecars::ring_config_map(&ss.name_any());
    ConfigMap {
        metadata: child_meta(ss, name, labels(ss, Component::Ring)),
        data: Some(BTreeMap::from([(sidecars::RING_KEY.to_owned(), ring_file)])),
        ..ConfigMap::default()
    }
}

/// The router's flags: the ambassador's, listening on the router port of every address,
/// plus the settings a router only reads at start (protocol, shard key), so that a change
/// of them rolls the routers out. The ring itself is only in the file, which the routers
/// reload: a new ring restarts no router.
pub fn router_args(ss: &ShardedService) -> ShardArgs {
    let spec = &ss.spec;
    // Ports are 1..=65535 by the CRD schema.
    let port = u16::try_from(spec.router_port()).unwrap_or_default();
    let ring = ring_config(ss);
    ShardArgs {
        protocol: ring.protocol,
        shard_key: ring.shard_key,
        hash: spec.hashing.function.as_str().to_owned(),
        hash_tag: ring.hash_tag,
        auto_eject_hosts: ejects(ss),
        ..sidecars::shard_args(SocketAddr::from(([0, 0, 0, 0], port)))
    }
}

fn router_deployment(
    ss: &ShardedService,
    config: &RenderConfig,
) -> Result<Deployment, FieldErrors> {
    let spec = &ss.spec;
    let mut container = sidecars::serving_container(
        sidecars::SHARD,
        &config.sidecar_image,
        &router_args(ss),
        ("shard-admin", ports::SHARD_ADMIN),
        (spec.router.resources.as_ref(), "spec.router.resources"),
        (&port_name(ss), spec.router_port()),
    )?;
    container.volume_mounts = Some(vec![sidecars::ring_mount()]);
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(ss, Component::Router)),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(vec![sidecars::ring_volume(&ss.name_any())]),
            // A router talks to shards, never to the API server.
            automount_service_account_token: Some(false),
            ..PodSpec::default()
        }),
    };
    // Clients reach the routers through a Service: a stopping router serves on until it
    // is out of the Service's endpoints.
    sidecars::delay_shutdown(&mut template);
    Ok(Deployment {
        metadata: child_meta(ss, router_name(ss), labels(ss, Component::Router)),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.router.replicas),
            selector: match_labels(selector_labels(ss, Component::Router)),
            template,
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

fn client_service(ss: &ShardedService) -> Service {
    Service {
        metadata: child_meta(ss, ss.name_any(), labels(ss, Component::Router)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(ss, Component::Router)),
            ports: Some(vec![service_port(&port_name(ss), ss.spec.router_port())]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// Clients cannot bypass the router: the shards' port admits only the routers (mode
/// `Router`) or the pods labelled to use the ambassador (mode `Ambassador`), and the shard
/// pods themselves (replication between a shard's replicas). Every other port of the shard
/// pods stays open — adapters' metrics, probes — as it would be without the policy.
fn network_policy(ss: &ShardedService) -> NetworkPolicy {
    let port = ss.spec.port;
    // From `start` to `end`, both included.
    let tcp = |start: i32, end: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(start)),
        end_port: (end > start).then_some(end),
        protocol: Some("TCP".into()),
    };
    let peer = |labels: BTreeMap<String, String>| NetworkPolicyPeer {
        pod_selector: Some(match_labels(labels)),
        ..NetworkPolicyPeer::default()
    };
    let clients = reshard::clients(ss);
    let mut other_ports = Vec::new();
    if port > 1 {
        other_ports.push(tcp(1, port - 1));
    }
    if port < 65535 {
        other_ports.push(tcp(port + 1, 65535));
    }
    let ingress = vec![
        NetworkPolicyIngressRule {
            from: Some(vec![
                peer(clients),
                peer(selector_labels(ss, Component::Shard)),
            ]),
            ports: Some(vec![tcp(port, port)]),
        },
        // No `from`: any source, on these ports only.
        NetworkPolicyIngressRule {
            from: None,
            ports: Some(other_ports),
        },
    ];
    NetworkPolicy {
        metadata: child_meta(ss, ss.name_any(), labels(ss, Component::Shard)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(match_labels(selector_labels(ss, Component::Shard))),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            ..NetworkPolicySpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rigging_crds::sharded_service::MAX_NAME_LEN;
    use rigging_crds::sidecar::shard::ring::{ServerSpec, moved_share};

    use super::*;

    /// A ShardedService from YAML, the way users write it.
    pub(crate) fn sharded(yaml: &str) -> ShardedService {
        serde_norway::from_str(yaml).expect("test fixture parses")
    }

    const TEMPLATE: &str = r#"
  template:
    metadata: {labels: {tier: cache, app.kubernetes.io/component: spoofed}}
    spec:
      containers:
        - name: redis
          image: redis:7
          readinessProbe: {tcpSocket: {port: 6379}}
"#;

    /// Redis in router mode, one pod per shard.
    pub(crate) fn redis(shards: i32) -> ShardedService {
        sharded(&format!(
            "apiVersion: rigging.dev/v1alpha1\nkind: ShardedService\nmetadata: {{name: cache, namespace: shop, uid: 1234-abcd}}\nspec:\n  shards: {shards}\n  protocol: redis\n  port: 6379\n  hashing: {{hashTag: '{{}}'}}\n{TEMPLATE}"
        ))
    }

    /// HTTP with replicated shards, in `mode`.
    fn http(mode: &str) -> ShardedService {
        sharded(&format!(
            "apiVersion: rigging.dev/v1alpha1\nkind: ShardedService\nmetadata: {{name: cache, namespace: shop, uid: 1234-abcd}}\nspec:\n  shards: 3\n  replicasPerShard: 2\n  protocol: http\n  port: 6379\n  shardKey: {{pathSegment: 2}}\n  router: {{mode: {mode}, replicas: 3, port: 80}}\n{TEMPLATE}"
        ))
    }

    fn config() -> RenderConfig {
        RenderConfig {
            sidecar_image: "sidecar:test".into(),
            ..RenderConfig::default()
        }
    }

    fn render(ss: &ShardedService) -> Children {
        desired(ss, &config()).expect("valid fixture")
    }

    fn pod_labels(template: &PodTemplateSpec) -> BTreeMap<String, String> {
        template.metadata.clone().unwrap().labels.unwrap()
    }

    fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    fn ring_file(c: &Children) -> ShardConfig {
        let text = &c.ring.data.as_ref().unwrap()[sidecars::RING_KEY];
        serde_norway::from_str(text).expect("the sidecar's own type reads the ring file")
    }

    fn ring_servers(c: &Children) -> Vec<ServerSpec> {
        let servers = ring_file(c).servers.unwrap();
        servers.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn every_selector_selects_the_pods_it_is_meant_for_and_no_others() {
        for ss in [redis(3), http("Router")] {
            let c = render(&ss);
            let router = c.router.as_ref().unwrap().spec.as_ref().unwrap();
            let router_pods = pod_labels(&router.template);
            let shard_pods: Vec<_> = c
                .statefulsets
                .iter()
                .map(|s| pod_labels(&s.spec.as_ref().unwrap().template))
                .collect();
            for (sts, pods) in c.statefulsets.iter().zip(&shard_pods) {
                let sel = sts.spec.as_ref().unwrap().selector.match_labels.clone();
                assert!(selects(&sel.unwrap(), pods));
            }
            let router_sel = router.selector.match_labels.clone().unwrap();
            assert!(selects(&router_sel, &router_pods));
            assert!(shard_pods.iter().all(|p| !selects(&router_sel, p)));
            let client_sel = c.service.as_ref().unwrap().spec.clone().unwrap().selector;
            assert_eq!(client_sel.as_ref(), Some(&router_sel));
            let headless_sel = c.headless.spec.clone().unwrap().selector.unwrap();
            assert!(shard_pods.iter().all(|p| selects(&headless_sel, p)));
            assert!(!selects(&headless_sel, &router_pods));
            // A shard's own Service selects its pods only.
            for (i, svc) in c.shard_services.iter().enumerate() {
                let sel = svc.spec.clone().unwrap().selector.unwrap();
                for (j, pods) in shard_pods.iter().enumerate() {
                    assert_eq!(selects(&sel, pods), i == j, "service {i}, shard {j}");
                }
            }
            let np = c.network_policy.spec.clone().unwrap();
            let guarded = np.pod_selector.unwrap().match_labels.unwrap();
            assert!(shard_pods.iter().all(|p| selects(&guarded, p)));
            assert!(!selects(&guarded, &router_pods));
            // The user's labels stay; a user label cannot hijack a selector key.
            assert!(shard_pods.iter().all(|p| p["tier"] == "cache"));
            assert!(shard_pods.iter().all(|p| p[COMPONENT_LABEL] == "shard"));
        }
    }

    #[test]
    fn the_ring_names_every_shard_by_its_stable_name_at_its_stable_address() {
        let one = render(&redis(3));
        assert_eq!(
            ring_file(&one).servers.unwrap(),
            [
                "cache-0.cache-shards.shop.svc:6379:1 cache-0",
                "cache-1.cache-shards.shop.svc:6379:1 cache-1",
                "cache-2.cache-shards.shop.svc:6379:1 cache-2",
            ]
        );
        // Pods of a one-pod-per-shard StatefulSet are named like the ring's members, and
        // the headless Service that governs it gives them the addresses.
        let sts = one.statefulsets[0].spec.as_ref().unwrap();
        assert_eq!(one.statefulsets[0].metadata.name.as_deref(), Some("cache"));
        assert_eq!(sts.service_name, one.headless.metadata.name);
        assert_eq!(one.headless.metadata.name.as_deref(), Some("cache-shards"));
        assert_eq!(sts.replicas, Some(3));
        let headless = one.headless.spec.as_ref().unwrap();
        assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
        assert_eq!(headless.publish_not_ready_addresses, None);

        let replicated = render(&http("Router"));
        assert_eq!(
            ring_file(&replicated).servers.unwrap(),
            [
                "cache-0.shop.svc:6379:1 cache-0",
                "cache-1.shop.svc:6379:1 cache-1",
                "cache-2.shop.svc:6379:1 cache-2",
            ]
        );
        let names = |c: &Children| -> Vec<String> {
            c.shard_services
                .iter()
                .map(|s| s.metadata.name.clone().unwrap())
                .collect()
        };
        assert_eq!(names(&replicated), ["cache-0", "cache-1", "cache-2"]);
        for sts in &replicated.statefulsets {
            assert_eq!(sts.spec.as_ref().unwrap().replicas, Some(2));
        }
        // Same names, other addresses: going from one pod per shard to replicated shards
        // moves no key.
        assert_eq!(
            moved_share(&ring_servers(&one), &ring_servers(&replicated)),
            0.0
        );
    }

    #[test]
    fn the_ring_file_holds_what_an_ambassador_needs_and_no_secret() {
        let c = render(&http("Ambassador"));
        assert_eq!(
            ring_file(&c),
            ShardConfig {
                protocol: Some(Protocol::Http),
                servers: Some(servers(&http("Ambassador"))),
                hash: Some("fnv1a_64".into()),
                shard_key: Some("path:2".into()),
                auto_eject_hosts: Some(true),
                ..ShardConfig::default()
            }
        );
        let file = &c.ring.data.as_ref().unwrap()[sidecars::RING_KEY];
        assert!(
            !file.contains("redis_auth") && !file.contains("listen"),
            "{file}"
        );
        assert_eq!(
            ring_file(&render(&redis(2))).hash_tag.as_deref(),
            Some("{}")
        );
    }

    #[test]
    fn the_router_runs_the_shard_sidecar_on_the_mounted_ring_file() {
        let c = render(&redis(3));
        let router = c.router.unwrap();
        assert_eq!(router.metadata.name.as_deref(), Some("cache-router"));
        let spec = router.spec.unwrap();
        assert_eq!(spec.replicas, Some(2), "the default router count");
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        let [container] = pod.containers.as_slice() else {
            panic!("one container: {:?}", pod.containers);
        };
        assert_eq!(container.name, sidecars::SHARD);
        assert_eq!(container.image.as_deref(), Some("sidecar:test"));
        assert_eq!(
            container.args.clone().unwrap().join(" "),
            "shard --admin 0.0.0.0:9122 --auto-eject-hosts --config /etc/rigging/shard/shard.yaml --connect-timeout 500ms --distribution ketama --drain-timeout 10s --hash fnv1a_64 --hash-tag {} --listen 0.0.0.0:6379 --protocol redis --server-connections 1 --server-failure-limit 2 --server-retry-timeout 30s --timeout 1s"
        );
        assert_eq!(container.restart_policy, None, "a main container");
        let sc = container.security_context.clone().unwrap();
        assert_eq!(sc, sidecars::hardened_security_context());
        for (probe, path) in [
            (&container.readiness_probe, "/readyz"),
            (&container.liveness_probe, "/healthz"),
        ] {
            let get = probe.clone().unwrap().http_get.unwrap();
            assert_eq!(get.path.as_deref(), Some(path));
            assert_eq!(get.port, IntOrString::Int(9122));
        }
        let mount = &container.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(mount.mount_path, "/etc/rigging/shard");
        assert_eq!(mount.sub_path, None, "subPath mounts never see an update");
        let volume = &pod.volumes.unwrap()[0];
        assert_eq!(volume.name, mount.name);
        assert_eq!(
            volume.config_map.as_ref().unwrap().name,
            c.ring.metadata.name.clone().unwrap()
        );
        let service = c.service.unwrap().spec.unwrap();
        let port = &service.ports.unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.port, port.target_port.clone()),
            (Some("redis"), 6379, Some(IntOrString::Int(6379)))
        );
    }

    #[test]
    fn a_new_shard_count_changes_the_ring_and_the_statefulset_and_nothing_the_routers_run() {
        let (three, four) = (render(&redis(3)), render(&redis(4)));
        assert_eq!(
            three.router, four.router,
            "the routers reload the ring: no rollout"
        );
        assert_eq!(three.service, four.service);
        assert_eq!(three.network_policy, four.network_policy);
        assert_ne!(three.ring, four.ring);
        let version =
            |c: &Children| ring_version(&c.ring.data.as_ref().unwrap()[sidecars::RING_KEY]);
        assert_ne!(version(&three), version(&four));
        assert_eq!(version(&three), version(&render(&redis(3))), "stable");
        assert_eq!(version(&three).len(), 12);
        let replicas = |c: &Children| c.statefulsets[0].spec.as_ref().unwrap().replicas;
        assert_eq!((replicas(&three), replicas(&four)), (Some(3), Some(4)));
    }

    #[test]
    fn in_ambassador_mode_only_pods_labelled_as_clients_reach_the_shards_port() {
        let c = render(&http("Ambassador"));
        assert!(c.router.is_none() && c.service.is_none());
        let np = c.network_policy.spec.unwrap();
        assert_eq!(np.policy_types, Some(vec!["Ingress".to_owned()]));
        let rules = np.ingress.unwrap();
        let to_app = &rules[0];
        assert_eq!(
            to_app.ports,
            Some(vec![NetworkPolicyPort {
                port: Some(IntOrString::Int(6379)),
                end_port: None,
                protocol: Some("TCP".into()),
            }])
        );
        let from: Vec<_> = to_app
            .from
            .iter()
            .flatten()
            .map(|p| p.pod_selector.clone().unwrap().match_labels.unwrap())
            .collect();
        assert_eq!(
            from[0],
            BTreeMap::from([(sidecars::SHARD_CLIENT_LABEL.to_owned(), "cache".to_owned())])
        );
        assert_eq!(
            from[1],
            selector_labels(&http("Ambassador"), Component::Shard)
        );
        // Every other port is open to all, as without a policy: the policy only guards the
        // shards' own port.
        let others = rules[1].ports.clone().unwrap();
        let ranges: Vec<_> = others
            .iter()
            .map(|p| (p.port.clone(), p.end_port))
            .collect();
        assert_eq!(
            ranges,
            [
                (Some(IntOrString::Int(1)), Some(6378)),
                (Some(IntOrString::Int(6380)), Some(65535))
            ]
        );
        assert!(rules[1].from.is_none());
    }

    #[test]
    fn stateful_shards_are_never_ejected_from_the_ring() {
        let mut ss = redis(2);
        assert_eq!(ring_file(&render(&ss)).auto_eject_hosts, Some(true));
        ss.spec.volume_claim_templates = vec![serde_json::from_value(serde_json::json!({
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
        }))
        .unwrap()];
        let c = render(&ss);
        assert_eq!(ring_file(&c).auto_eject_hosts, Some(false));
        let args = c
            .router
            .unwrap()
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .containers[0]
            .args
            .clone()
            .unwrap();
        assert!(!args.contains(&"--auto-eject-hosts".to_owned()), "{args:?}");
        let claims = c.statefulsets[0]
            .spec
            .clone()
            .unwrap()
            .volume_claim_templates;
        assert_eq!(claims.unwrap()[0].metadata.name.as_deref(), Some("data"));
    }

    #[test]
    fn every_child_is_owned_by_the_sharded_service() {
        for c in [render(&redis(2)), render(&http("Router"))] {
            for child in c.into_vec() {
                let value = child.to_value().unwrap();
                let owner = &value["metadata"]["ownerReferences"][0];
                assert_eq!(owner["kind"], "ShardedService", "{value}");
                assert_eq!(owner["uid"], "1234-abcd");
                assert_eq!(owner["controller"], true);
                assert_eq!(value["metadata"]["namespace"], "shop");
                assert_eq!(
                    value["metadata"]["labels"]["app.kubernetes.io/managed-by"],
                    "rigging-operator"
                );
            }
        }
    }

    #[test]
    fn the_router_port_may_not_be_the_ambassadors_admin_port() {
        let mut ss = redis(2);
        ss.spec.port = 9122;
        let err = desired(&ss, &config()).unwrap_err().to_string();
        assert!(
            err.starts_with("spec.port: port 9122 is the router's port"),
            "{err}"
        );
        ss.spec.port = 6379;
        ss.spec.router.port = Some(9122);
        let err = desired(&ss, &config()).unwrap_err().to_string();
        assert!(err.starts_with("spec.router.port: port 9122"), "{err}");
        // Without routers the port is free.
        ss.spec.router.mode = RouterMode::Ambassador;
        assert!(desired(&ss, &config()).is_ok());
    }

    #[test]
    fn a_sidecar_port_that_the_shards_app_holds_is_refused_naming_both() {
        let mut ss = redis(2);
        ss.spec.port = 9121;
        ss.spec.sidecars = Some(
            serde_json::from_value(serde_json::json!({
                "metrics": {"source": "redis://127.0.0.1:9121"}
            }))
            .unwrap(),
        );
        ss.spec.router.mode = RouterMode::Ambassador;
        let err = desired(&ss, &config()).unwrap_err().to_string();
        assert!(
            err.starts_with("spec.sidecars.metrics: port 9121 is the metrics adapter's port and also the app's port (spec.port)"),
            "{err}"
        );
    }

    /// Every name and label value of the children, and those Kubernetes derives from
    /// them for the pods (pod names, `statefulset.kubernetes.io/pod-name`, and
    /// `controller-revision-hash`, a StatefulSet's name and a hash of up to 10 characters).
    fn longest_derived(c: &Children) -> (usize, String) {
        let mut all: BTreeSet<String> = BTreeSet::new();
        for child in c.clone().into_vec() {
            let value = child.to_value().unwrap();
            all.insert(value["metadata"]["name"].as_str().unwrap().to_owned());
            for labels in [
                &value["metadata"]["labels"],
                &value["spec"]["template"]["metadata"]["labels"],
            ] {
                for v in labels.as_object().into_iter().flatten().map(|(_, v)| v) {
                    all.insert(v.as_str().unwrap().to_owned());
                }
            }
        }
        for sts in &c.statefulsets {
            let name = sts.metadata.name.clone().unwrap();
            let last = sts.spec.as_ref().unwrap().replicas.unwrap() - 1;
            all.insert(format!("{name}-{last}"));
            all.insert(format!("{name}-{}", "h".repeat(10)));
        }
        let longest = all.into_iter().max_by_key(String::len).unwrap();
        (longest.len(), longest)
    }

    #[test]
    fn the_longest_name_the_crd_allows_fits_every_name_and_label_kubernetes_derives() {
        assert_eq!(MAX_NAME_LEN, 47);
        let named = |name: &str| {
            let mut ss = http("Router");
            ss.metadata.name = Some(name.to_owned());
            ss.spec.shards = rigging_crds::sharded_service::MAX_SHARDS;
            ss.spec.replicas_per_shard = 100;
            ss
        };
        let longest = "a".repeat(MAX_NAME_LEN);
        let (len, what) = longest_derived(&render(&named(&longest)));
        assert_eq!(len, 63, "{what}");
        assert!(
            what.ends_with("-1023-hhhhhhhhhh"),
            "the revision label is the longest: {what}"
        );
        // One character more, and a pod label would not fit: the bound is tight.
        let (len, _) = longest_derived(&render(&named(&format!("{longest}b"))));
        assert_eq!(len, 64);
    }

    /// What `render` says about a ShardedService manifest: the schema and CEL rules of the
    /// CRD, then the desired state.
    fn refusal(yaml: &str) -> Vec<String> {
        match crate::render::render_values("x.yaml", yaml, &config()) {
            Ok(_) => Vec::new(),
            Err(e) => e.to_string().lines().map(str::to_owned).collect(),
        }
    }

    /// A manifest named `name` with `spec` (lines of YAML) over two shards on 6379.
    fn manifest(name: &str, spec: &str) -> String {
        let shards = if spec.contains("shards:") {
            ""
        } else {
            "  shards: 2\n"
        };
        format!(
            "apiVersion: rigging.dev/v1alpha1\nkind: ShardedService\nmetadata: {{name: {name}}}\nspec:\n{shards}  port: 6379\n{spec}{TEMPLATE}"
        )
    }

    #[test]
    fn render_refuses_a_name_one_character_too_long_with_the_derived_length() {
        let fits = "s".repeat(MAX_NAME_LEN);
        assert_eq!(
            refusal(&manifest(&fits, "  protocol: redis\n")),
            Vec::<String>::new()
        );
        let refused = refusal(&manifest(&format!("{fits}s"), "  protocol: redis\n"));
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(
            refused[0].starts_with(
                "x.yaml: document 1: metadata.name must be a DNS-1035 label of at most 47 characters"
            ),
            "{refused:?}"
        );
        assert!(refused[0].contains("up to 1023"), "{refused:?}");
    }

    #[test]
    fn render_refuses_what_the_crds_rules_refuse_naming_the_field() {
        let cases = [
            (
                "  protocol: http\n",
                "spec.shardKey: shardKey is required with protocol http",
            ),
            (
                "  protocol: redis\n  shardKey: {header: X-Key}\n",
                "spec.shardKey: shardKey is required with protocol http",
            ),
            (
                "  protocol: http\n  shardKey: {header: X-Key, query: key}\n",
                "spec.shardKey: set exactly one of header, pathSegment or query",
            ),
            (
                "  protocol: http\n  shardKey: {header: 'X Key'}\n",
                "spec.shardKey.header: header must be an HTTP header name",
            ),
            (
                "  protocol: http\n  shardKey: {query: 'a=b'}\n",
                "spec.shardKey.query: query must be a query parameter name",
            ),
            (
                "  protocol: redis\n  hashing: {hashTag: 'é{'}\n",
                "spec.hashing.hashTag: hashTag must be two printable ASCII characters",
            ),
            (
                "  protocol: redis\n  shards: 0\n",
                "spec.shards: must be >= 1",
            ),
        ];
        for (spec, want) in cases {
            let refused = refusal(&manifest("cache", spec));
            assert!(
                refused
                    .iter()
                    .any(|r| r.starts_with(&format!("x.yaml: document 1: {want}"))),
                "{spec}: {refused:?}"
            );
        }
        let no_probe = manifest("cache", "  protocol: redis\n")
            .replace("          readinessProbe: {tcpSocket: {port: 6379}}\n", "");
        let refused = refusal(&no_probe);
        assert!(
            refused[0].starts_with("x.yaml: document 1: spec.template: container \"redis\" (the app container, template.spec.containers[0]) has no readinessProbe"),
            "{refused:?}"
        );
    }
}
