//! The one renderer of Rigging's sidecar containers, for every kind that owns pods: the
//! contract types of `rigging_crds::sidecar` become native sidecars (init containers that
//! keep running), hardened and with probes on their admin ports, together with the
//! volumes, mounts and annotations they need. The port plan and the names Rigging
//! reserves in a pod are checked here, once. [`elect`] holds what the election sidecar
//! needs besides its container: its flags, checked by the sidecar's own rules, and the
//! Kubernetes access of the pods.

pub mod elect;
pub mod resources;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, ObjectFieldSelector,
    PodTemplateSpec, Probe, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext,
    SleepAction, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rigging_crds::sidecar::SidecarArgs;
use rigging_crds::sidecar::elect::{Backend, ElectArgs};
use rigging_crds::sidecar::gather::GatherArgs;
use rigging_crds::sidecar::health::HealthArgs;
use rigging_crds::sidecar::http::HttpArgs;
use rigging_crds::sidecar::logs::LogsArgs;
use rigging_crds::sidecar::metrics::MetricsArgs;
use rigging_crds::sidecar::ports;
use rigging_crds::sidecar::queue::QueueArgs;
use rigging_crds::sidecar::shard::ShardArgs;
use rigging_crds::sidecar::spec::{QueueSidecar, SecretKey, SidecarResources, Sidecars};
use rigging_crds::sidecar::tls::TlsArgs;
use rigging_crds::{FieldError, FieldErrors};

/// Numeric user every sidecar runs as (the "nonroot" user of distroless images).
pub const SIDECAR_USER: i64 = 65532;
/// Name of the TLS terminator's container, of its Secret volume, and of its port.
pub const TLS: &str = "rigging-tls";
/// Where the TLS Secret is mounted in the terminator.
pub const TLS_MOUNT_PATH: &str = "/etc/rigging/tls";
/// Name of the log adapter's container and of the volume it shares with the app.
pub const LOGS: &str = "rigging-logs";
/// Name of the metrics adapter's container; its port is named `metrics`.
pub const METRICS: &str = "rigging-metrics";
/// Name of the health monitor's container.
pub const HEALTH: &str = "rigging-health";
/// Name of the sharding ambassador's container (in client pods and in a ShardedService's
/// router pods), and of the volume its ring ConfigMap is mounted from.
pub const SHARD: &str = "rigging-shard";
/// Where the ring ConfigMap is mounted in the sharding ambassador: a whole-volume mount,
/// never `subPath`, because only whole-volume mounts see the ConfigMap's updates.
pub const SHARD_MOUNT_PATH: &str = "/etc/rigging/shard";
/// The ring ConfigMap's key: the sharding ambassador's config file (`ShardConfig`).
pub const RING_KEY: &str = "shard.yaml";
/// The label of pods whose ambassador uses a ShardedService (value: its name); that
/// ShardedService's NetworkPolicy lets them reach its shards.
pub const SHARD_CLIENT_LABEL: &str = "rigging.dev/shard-client";

/// Name of the HTTP ambassador's container (in app pods, and in the pods of a
/// ReplicatedService's frontend), and of the volume its config ConfigMap is mounted from.
pub const HTTP: &str = "rigging-http";
/// Where the HTTP ambassador's ConfigMap is mounted: a whole-volume mount, never
/// `subPath`, so that the ConfigMap's updates reach the file, which the ambassador reloads.
pub const HTTP_MOUNT_PATH: &str = "/etc/rigging/http";
/// The key of the HTTP ambassador's ConfigMap that holds its config file (`HttpConfig`).
pub const HTTP_CONFIG_KEY: &str = "http.yaml";

/// Name of the election sidecar's container, and of the volume its leader file is
/// written to (shared with the app, which reads it).
pub const ELECT: &str = "rigging-elect";
/// Name of the volume of the ServiceAccount token the election sidecar reaches the API
/// server with (Lease backend).
pub const ELECT_TOKEN: &str = "rigging-elect-token";
/// Name of the queue sidecar's container; its admin port is named `queue-admin`.
pub const QUEUE: &str = "rigging-queue";
/// The scatter/gather root's container (a ScatterGather's root pods) and its config volume.
pub const GATHER: &str = "rigging-gather";
/// Where the root's config file is mounted: a whole-volume mount, so that a new file is
/// seen and reloaded.
pub const GATHER_MOUNT_PATH: &str = "/etc/rigging/gather";
/// The key of the root's config file in its ConfigMap.
pub const GATHER_CONFIG_KEY: &str = "gather.yaml";

/// The ring ConfigMap of the ShardedService `service`.
pub fn ring_config_map(service: &str) -> String {
    format!("{service}-ring")
}

/// The sharding ambassador's flags, listening on `listen`, with the admin port and the
/// ring file; everything else (protocol, servers, hashing) comes from the file. A router
/// adds its restart-only settings to these.
pub fn shard_args(listen: SocketAddr) -> ShardArgs {
    // Every other flag at its default; the protocol the constructor asks for is dropped
    // again: an ambassador in a client pod learns it from the ring file.
    ShardArgs {
        protocol: None,
        listen,
        admin: any_port(ports::SHARD_ADMIN),
        config: Some(PathBuf::from(SHARD_MOUNT_PATH).join(RING_KEY)),
        ..ShardArgs::new(rigging_crds::sidecar::shard::Protocol::Redis, Vec::new())
    }
}

/// The volume of the ring ConfigMap of `service`, named [`SHARD`].
pub fn ring_volume(service: &str) -> Volume {
    Volume {
        name: SHARD.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: ring_config_map(service),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The read-only mount of [`ring_volume`] at [`SHARD_MOUNT_PATH`].
pub fn ring_mount() -> VolumeMount {
    mount(SHARD, SHARD_MOUNT_PATH, true)
}

/// The HTTP ambassador's flags, listening on `listen`, reading its config file from the
/// ConfigMap mounted at [`HTTP_MOUNT_PATH`]; every other flag at its default.
pub fn http_args(listen: SocketAddr) -> HttpArgs {
    HttpArgs {
        listen,
        ..HttpArgs::new(PathBuf::from(HTTP_MOUNT_PATH).join(HTTP_CONFIG_KEY))
    }
}

/// The volume, named [`HTTP`], of the key [`HTTP_CONFIG_KEY`] of the ConfigMap
/// `config_map`.
pub fn http_config_volume(config_map: &str) -> Volume {
    config_volume(HTTP, config_map, HTTP_CONFIG_KEY)
}

/// The scatter/gather root's flags, listening on `listen`, reading its config file from
/// the ConfigMap mounted at [`GATHER_MOUNT_PATH`]; every other flag at its default.
pub fn gather_args(listen: SocketAddr) -> GatherArgs {
    GatherArgs {
        listen,
        ..GatherArgs::new(PathBuf::from(GATHER_MOUNT_PATH).join(GATHER_CONFIG_KEY))
    }
}

/// The volume, named [`GATHER`], of the key [`GATHER_CONFIG_KEY`] of the ConfigMap
/// `config_map`.
pub fn gather_config_volume(config_map: &str) -> Volume {
    config_volume(GATHER, config_map, GATHER_CONFIG_KEY)
}

/// The read-only mount of [`gather_config_volume`] at [`GATHER_MOUNT_PATH`].
pub fn gather_config_mount() -> VolumeMount {
    mount(GATHER, GATHER_MOUNT_PATH, true)
}

/// The volume `name` of the one key `key` of the ConfigMap `config_map`. Listing the key
/// makes a ConfigMap without it fail the pod's start with a message naming it, rather
/// than start a sidecar with no file.
fn config_volume(name: &str, config_map: &str, key: &str) -> Volume {
    Volume {
        name: name.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.to_owned(),
            items: Some(vec![KeyToPath {
                key: key.into(),
                path: key.into(),
                ..KeyToPath::default()
            }]),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The read-only mount of [`http_config_volume`] at [`HTTP_MOUNT_PATH`].
pub fn http_config_mount() -> VolumeMount {
    mount(HTTP, HTTP_MOUNT_PATH, true)
}

/// The TLS terminator a kind asks for in front of its app.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsTermination {
    /// The port the terminator listens on.
    pub port: i32,
    /// The `kubernetes.io/tls` Secret it serves.
    pub secret_name: String,
    /// The app's port, where it forwards to.
    pub app_port: i32,
    /// `spec.tls.resources`.
    pub resources: Option<SidecarResources>,
}

/// Everything a kind's pods ask of Rigging's sidecars.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    /// The app container's port (`spec.port`), if the app serves one.
    pub app_port: Option<i32>,
    /// `spec.tls`.
    pub tls: Option<&'a TlsTermination>,
    /// `spec.sidecars`.
    pub sidecars: Option<&'a Sidecars>,
    /// The name of the object whose pods these are: the election's name unless
    /// `sidecars.elect.election` gives one. `None` where there is no such object (a pod
    /// the webhook injects), and the election must be named.
    pub election: Option<&'a str>,
}

/// One port in the pod and who holds it, for the port plan.
struct Holder {
    port: i32,
    field: String,
    what: String,
}

/// Places the sidecars of `placement` into `template` (whose first container is the
/// app), as native sidecars or, when `config` says the cluster has none, as plain
/// containers; or says why they cannot go in: a name Rigging reserves taken, or a port two
/// holders want.
pub fn place(
    template: &mut PodTemplateSpec,
    placement: &Placement,
    config: &crate::controller::RenderConfig,
) -> Result<(), FieldErrors> {
    let elect_args = placement
        .sidecars
        .and_then(|s| s.elect.as_ref())
        .map(|e| elect::args(e, placement.election))
        .transpose();
    let elect_args: Option<ElectArgs> = match (check(template, placement), elect_args) {
        (Ok(()), Ok(args)) => args,
        (checked, args) => {
            let errors = [checked.err(), args.err()].into_iter().flatten();
            return Err(FieldErrors(errors.flat_map(|e| e.0).collect()));
        }
    };
    let image = config.sidecar_image.as_str();
    let Some(pod) = template.spec.as_mut() else {
        return Ok(());
    };
    // Each container's CPU and memory: its defaults, with what its block changes.
    let mut refused = Vec::new();
    let mut budget = |container: &str, overrides: Option<&SidecarResources>, field: &str| {
        resources::resolve(container, overrides, field).unwrap_or_else(|errors| {
            refused.extend(errors);
            resources::defaults(container)
        })
    };
    let mut containers = Vec::new();
    let mut volumes = Vec::new();
    let mut annotations = BTreeMap::new();
    let mut labels = BTreeMap::new();
    if let Some(tls) = placement.tls {
        let mut args = TlsArgs::new(
            any(tls.port),
            format!("127.0.0.1:{}", tls.app_port),
            PathBuf::from(TLS_MOUNT_PATH).join("tls.crt"),
            PathBuf::from(TLS_MOUNT_PATH).join("tls.key"),
        );
        args.admin = Some(any_port(ports::TLS_ADMIN));
        let mut c = container(TLS, image, &args, ("tls-admin", ports::TLS_ADMIN));
        c.resources =
            Some(budget(TLS, tls.resources.as_ref(), "spec.tls.resources").requirements());
        c.ports
            .get_or_insert_with(Vec::new)
            .insert(0, port(TLS, tls.port));
        c.volume_mounts = Some(vec![mount(TLS, TLS_MOUNT_PATH, true)]);
        containers.push(c);
        volumes.push(Volume {
            name: TLS.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(tls.secret_name.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    let sidecars = placement.sidecars.cloned().unwrap_or_default();
    if let Some(logs) = &sidecars.logs {
        /// Read bytes of the log file the adapter gives back at a time.
        const RECLAIM_AFTER: u64 = 16 << 20;
        /// The shared volume's bound: the unread part of the log, which the adapter keeps
        /// small, with room for a burst. Past it the kubelet evicts this pod, rather than
        /// the node running out of disk under every pod on it.
        const VOLUME_LIMIT: &str = "256Mi";
        let dir = parent_dir(&logs.file);
        let args = LogsArgs {
            format: logs.format,
            pattern: logs.pattern.clone(),
            multiline_start: logs.multiline_start.clone(),
            input: logs.file.clone(),
            follow: true,
            reclaim_after: rigging_crds::sidecar::http::ByteSize(RECLAIM_AFTER),
            output: "-".into(),
            admin: Some(any_port(ports::LOGS_ADMIN)),
        };
        let mut c = container(LOGS, image, &args, ("logs-admin", ports::LOGS_ADMIN));
        c.resources = Some(
            budget(
                LOGS,
                logs.resources.as_ref(),
                "spec.sidecars.logs.resources",
            )
            .requirements(),
        );
        // Read-write: the adapter gives back the disk space of what it has read.
        c.volume_mounts = Some(vec![mount(LOGS, &dir, false)]);
        containers.push(c);
        volumes.push(Volume {
            name: LOGS.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity(VOLUME_LIMIT.into())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        });
        if let Some(app) = pod.containers.first_mut() {
            app.volume_mounts
                .get_or_insert_with(Vec::new)
                .push(mount(LOGS, &dir, false));
        }
    }
    if let Some(metrics) = &sidecars.metrics {
        let args = MetricsArgs::new(metrics.source.clone());
        // Scraped where it is named: a PodMonitor selects the port `metrics`; annotation
        // based discovery reads the three annotations.
        let mut c = container(METRICS, image, &args, ("metrics", ports::METRICS_ADMIN));
        let field = "spec.sidecars.metrics.resources";
        c.resources = Some(budget(METRICS, metrics.resources.as_ref(), field).requirements());
        containers.push(c);
        annotations.extend([
            ("prometheus.io/scrape".to_owned(), "true".to_owned()),
            (
                "prometheus.io/port".to_owned(),
                ports::METRICS_ADMIN.to_string(),
            ),
            ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
        ]);
    }
    if let Some(health) = &sidecars.health {
        let args = HealthArgs::new(health.checks.clone());
        let mut c = container(HEALTH, image, &args, ("health-admin", ports::HEALTH_ADMIN));
        let field = "spec.sidecars.health.resources";
        c.resources = Some(budget(HEALTH, health.resources.as_ref(), field).requirements());
        // The monitor's /readyz is the app's readiness, and the app starts only after this
        // probe passes: waiting on it would wait forever. Its port being open is enough.
        c.startup_probe = Some(port_probe(ports::HEALTH_ADMIN));
        containers.push(c);
        // The app is ready when the monitor says so, unless it says so itself.
        if let Some(app) = pod.containers.first_mut() {
            app.readiness_probe
                .get_or_insert_with(|| admin_probe("/readyz", ports::HEALTH_ADMIN));
        }
    }
    if let Some(shard) = &sidecars.shard {
        // Only the app reaches the ambassador (on loopback); the kubelet probes its admin
        // port on the pod's address.
        let listen = SocketAddr::from((
            [127, 0, 0, 1],
            u16::try_from(shard.port).unwrap_or_default(),
        ));
        let mut c = container(
            SHARD,
            image,
            &shard_args(listen),
            ("shard-admin", ports::SHARD_ADMIN),
        );
        let field = "spec.sidecars.shard.resources";
        c.resources = Some(budget(SHARD, shard.resources.as_ref(), field).requirements());
        c.volume_mounts = Some(vec![ring_mount()]);
        containers.push(c);
        volumes.push(ring_volume(&shard.service));
        labels.insert(SHARD_CLIENT_LABEL.to_owned(), shard.service.clone());
    }
    if let Some(http) = &sidecars.http {
        // Like the sharding ambassador: the app reaches it on loopback only.
        let listen =
            SocketAddr::from(([127, 0, 0, 1], u16::try_from(http.port).unwrap_or_default()));
        let http_budget = budget(
            HTTP,
            http.resources.as_ref(),
            "spec.sidecars.http.resources",
        );
        // The ambassador refuses a config whose cache would not fit in its memory.
        let args = HttpArgs {
            memory_limit: Some(rigging_crds::sidecar::http::ByteSize(
                http_budget.memory_limit,
            )),
            ..http_args(listen)
        };
        let mut c = container(HTTP, image, &args, ("http-admin", ports::HTTP_ADMIN));
        c.resources = Some(http_budget.requirements());
        c.volume_mounts = Some(vec![http_config_mount()]);
        containers.push(c);
        volumes.push(http_config_volume(&http.config_map));
    }
    if let (Some(block), Some(args)) = (&sidecars.elect, elect_args) {
        // Its port listens on every address: the kubelet probes it on the pod's. The
        // identity and namespace come from the downward API, per pod.
        let mut c = container(ELECT, image, &args, ("elect", ports::ELECT));
        let field = "spec.sidecars.elect.resources";
        c.resources = Some(budget(ELECT, block.resources.as_ref(), field).requirements());
        c.env = Some(elect::downward_env());
        if block.active_passive {
            // A native sidecar's readiness counts for the pod's (and a plain container's
            // always does): only the leader's pod is Ready, so only it gets traffic.
            c.readiness_probe = Some(elect::leader_probe());
        }
        let mut mounts = Vec::new();
        if args.backend == Backend::Lease {
            mounts.push(mount(ELECT_TOKEN, elect::TOKEN_MOUNT_PATH, true));
            volumes.push(elect::token_volume(ELECT_TOKEN));
        }
        if let Some(file) = &block.leader_file {
            // The sidecar writes the file (a new one renamed over it); the app reads it.
            let dir = parent_dir(file);
            mounts.push(mount(ELECT, &dir, false));
            volumes.push(Volume {
                name: ELECT.into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            });
            if let Some(app) = pod.containers.first_mut() {
                app.volume_mounts
                    .get_or_insert_with(Vec::new)
                    .push(mount(ELECT, &dir, true));
            }
        }
        c.volume_mounts = (!mounts.is_empty()).then_some(mounts);
        containers.push(c);
    }
    if let Some(queue) = &sidecars.queue {
        let mut c = container(
            QUEUE,
            image,
            &queue_args(queue),
            (QUEUE_ADMIN_PORT, ports::QUEUE_ADMIN),
        );
        let field = "spec.sidecars.queue.resources";
        c.resources = Some(budget(QUEUE, queue.resources.as_ref(), field).requirements());
        // The pod's name makes the ids of messages published without a key unique.
        c.env = Some(queue_env(queue.url_secret.as_ref()));
        containers.push(c);
    }
    if !refused.is_empty() {
        return Err(FieldErrors(refused));
    }
    if !containers.is_empty() && config.native_sidecars {
        pod.init_containers
            .get_or_insert_with(Vec::new)
            .extend(containers);
    } else if !containers.is_empty() {
        // Before Kubernetes 1.29: plain containers beside the app, which start with it
        // rather than before it (a startup probe orders nothing there), and stop with the
        // pod: each waits out the shutdown delay like the app, so that none stops before
        // the app has been taken out of its Services' endpoints.
        pod.containers
            .extend(containers.into_iter().map(|c| Container {
                restart_policy: None,
                startup_probe: None,
                lifecycle: Some(pre_stop_sleep(SHUTDOWN_DELAY_SECONDS)),
                ..c
            }));
    }
    if !volumes.is_empty() {
        pod.volumes.get_or_insert_with(Vec::new).extend(volumes);
    }
    if !annotations.is_empty() {
        template
            .metadata
            .get_or_insert_with(ObjectMeta::default)
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .extend(annotations);
    }
    if !labels.is_empty() {
        template
            .metadata
            .get_or_insert_with(ObjectMeta::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .extend(labels);
    }
    Ok(())
}

/// The name of the queue sidecar's admin port in a pod, which the operator asks a
/// Pipeline's stage pods on.
pub const QUEUE_ADMIN_PORT: &str = "queue-admin";

/// The queue sidecar's environment: the pod's name (it makes the ids of messages
/// published without a key unique) and, from `url_secret`, the server's URL with its
/// credentials, which so stays out of the pod spec.
pub fn queue_env(url_secret: Option<&SecretKey>) -> Vec<EnvVar> {
    let url = url_secret.map(|secret| EnvVar {
        name: "RIGGING_NATS_URL".into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: None,
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    });
    [field_env("POD_NAME", "metadata.name")]
        .into_iter()
        .chain(url)
        .collect()
}

/// An environment variable set from a field of the pod (the downward API).
pub fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".into()),
                field_path: path.into(),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The queue sidecar's command line for a `sidecars.queue` block: publishing on loopback,
/// and subscribing when the block names topics. The schema's rules have checked every
/// value; a duration that does not parse keeps the sidecar's default.
pub fn queue_args(queue: &QueueSidecar) -> QueueArgs {
    let defaults = QueueArgs::new(queue.url.clone());
    let timeout = queue
        .delivery_timeout
        .as_deref()
        .and_then(|t| rigging_crds::sidecar::duration::parse(t).ok());
    QueueArgs {
        stream: queue.stream.clone().unwrap_or(defaults.stream.clone()),
        subscribe: queue.subscribe.clone(),
        consumer: queue.consumer.clone(),
        deliver_to: queue.deliver_to.clone(),
        outputs: queue.outputs.clone(),
        max_in_flight: queue.max_in_flight.unwrap_or(defaults.max_in_flight),
        max_deliveries: queue.max_deliveries.unwrap_or(defaults.max_deliveries),
        delivery_timeout: timeout.unwrap_or(defaults.delivery_timeout),
        ..defaults
    }
}

/// The names Rigging reserves and the port plan.
fn check(template: &PodTemplateSpec, placement: &Placement) -> Result<(), FieldErrors> {
    let Some(pod) = template.spec.as_ref() else {
        return Ok(());
    };
    let sidecars = placement.sidecars.cloned().unwrap_or_default();
    let mut wanted: Vec<(&str, Holder)> = Vec::new();
    if let Some(tls) = placement.tls {
        wanted.push((
            TLS,
            holder(tls.port, "spec.tls.port", "the TLS terminator's port"),
        ));
        let admin = holder(
            ports::TLS_ADMIN.into(),
            "spec.tls",
            "the TLS terminator's admin port",
        );
        wanted.push((TLS, admin));
    }
    let admins = [
        (
            sidecars.logs.is_some(),
            LOGS,
            ports::LOGS_ADMIN,
            "spec.sidecars.logs",
            "the log adapter's admin port",
        ),
        (
            sidecars.metrics.is_some(),
            METRICS,
            ports::METRICS_ADMIN,
            "spec.sidecars.metrics",
            "the metrics adapter's port",
        ),
        (
            sidecars.health.is_some(),
            HEALTH,
            ports::HEALTH_ADMIN,
            "spec.sidecars.health",
            "the health monitor's admin port",
        ),
        (
            sidecars.shard.is_some(),
            SHARD,
            ports::SHARD_ADMIN,
            "spec.sidecars.shard",
            "the sharding ambassador's admin port",
        ),
        (
            sidecars.http.is_some(),
            HTTP,
            ports::HTTP_ADMIN,
            "spec.sidecars.http",
            "the HTTP ambassador's admin port",
        ),
        (
            sidecars.elect.is_some(),
            ELECT,
            ports::ELECT,
            "spec.sidecars.elect",
            "the election sidecar's port",
        ),
        (
            sidecars.queue.is_some(),
            QUEUE,
            ports::QUEUE_ADMIN,
            "spec.sidecars.queue",
            "the queue sidecar's admin port",
        ),
        (
            sidecars.queue.is_some(),
            QUEUE,
            ports::QUEUE,
            "spec.sidecars.queue",
            "the queue sidecar's publish port",
        ),
    ];
    for (on, name, port, field, what) in admins {
        if on {
            wanted.push((name, holder(port.into(), field, what)));
        }
    }
    if let Some(shard) = &sidecars.shard {
        let listen = holder(
            shard.port,
            "spec.sidecars.shard.port",
            "the sharding ambassador's port",
        );
        wanted.push((SHARD, listen));
    }
    if let Some(http) = &sidecars.http {
        let listen = holder(
            http.port,
            "spec.sidecars.http.port",
            "the HTTP ambassador's port",
        );
        wanted.push((HTTP, listen));
    }
    let mut errors = Vec::new();
    // Names: what Rigging adds must not replace what the user wrote.
    let containers = pod.containers.iter().map(|c| ("containers", &c.name));
    let init = pod
        .init_containers
        .iter()
        .flatten()
        .map(|c| ("initContainers", &c.name));
    for (i, (list, name)) in containers.chain(init).enumerate() {
        if let Some((reserved, _)) = wanted.iter().find(|(n, _)| *n == name.as_str()) {
            errors.push(FieldError::new(
                format!("spec.template.spec.{list}"),
                format!("container #{i} is named \"{reserved}\", a name Rigging reserves for its sidecar"),
            ));
        }
    }
    // Each volume Rigging adds, and the sidecar that adds it.
    let reserved = [
        (TLS, TLS),
        (LOGS, LOGS),
        (SHARD, SHARD),
        (HTTP, HTTP),
        (ELECT, ELECT),
        (ELECT_TOKEN, ELECT),
    ];
    for v in pod.volumes.iter().flatten() {
        let adds = |(volume, sidecar): &(&str, &str)| {
            *volume == v.name && wanted.iter().any(|(n, _)| n == sidecar)
        };
        if reserved.iter().any(adds) {
            errors.push(FieldError::new(
                "spec.template.spec.volumes",
                format!(
                    "volume \"{}\" is reserved for Rigging's sidecar of that name",
                    v.name
                ),
            ));
        }
    }
    // The leader file's directory becomes a volume in the app container: nothing else may
    // be mounted there.
    if let Some(file) = sidecars.elect.as_ref().and_then(|e| e.leader_file.as_ref()) {
        let dir = parent_dir(file);
        let field = "spec.sidecars.elect.leaderFile";
        if sidecars
            .logs
            .as_ref()
            .is_some_and(|l| parent_dir(&l.file) == dir)
        {
            errors.push(FieldError::new(
                field,
                format!("its directory {dir} is also the log file's (spec.sidecars.logs.file): each becomes a volume of its own, so give the leader file another directory"),
            ));
        }
        let app = pod.containers.first();
        let taken = app
            .and_then(|c| c.volume_mounts.as_ref())
            .is_some_and(|mounts| {
                mounts
                    .iter()
                    .any(|m| m.mount_path.trim_end_matches('/') == dir)
            });
        if taken {
            errors.push(FieldError::new(
                field,
                format!(
                    "its directory {dir} becomes a volume the app shares with the election sidecar, but container \"{}\" already mounts a volume there",
                    app.map(|c| c.name.as_str()).unwrap_or_default()
                ),
            ));
        }
    }
    // Ports: the app's, the containers' declared ones, and each sidecar's are distinct.
    let mut held: Vec<Holder> = placement
        .app_port
        .map(|port| holder(port, "spec.port", "the app's port"))
        .into_iter()
        .collect();
    for (i, c) in pod.containers.iter().enumerate() {
        for p in c.ports.iter().flatten() {
            if i == 0 && Some(p.container_port) == placement.app_port {
                continue;
            }
            let field = format!("spec.template.spec.containers[{i}].ports");
            held.push(holder(
                p.container_port,
                &field,
                &format!("a port of container \"{}\"", c.name),
            ));
        }
    }
    for (_, want) in wanted {
        if let Some(other) = held.iter().find(|h| h.port == want.port) {
            errors.push(FieldError::new(
                want.field.clone(),
                format!(
                    "port {} is {} and also {} ({}): containers of a pod share its network, so each port has one holder",
                    want.port, want.what, other.what, other.field
                ),
            ));
        }
        held.push(want);
    }
    FieldErrors::into_result(errors)
}

fn holder(port: i32, field: &str, what: &str) -> Holder {
    Holder {
        port,
        field: field.to_owned(),
        what: what.to_owned(),
    }
}

/// The directory of a file the app shares with a sidecar (its log file, the leader file):
/// the volume they both mount.
fn parent_dir(file: &str) -> String {
    Path::new(file)
        .parent()
        .map_or_else(|| "/".to_owned(), |d| d.display().to_string())
}

fn any(port: i32) -> SocketAddr {
    // Ports are 1..=65535 by the CRD schema.
    any_port(u16::try_from(port).unwrap_or_default())
}

fn any_port(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn mount(volume: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        // A writable mount leaves the field out: the API server drops `readOnly: false`,
        // and a field applied that the live object never shows would count as drift at
        // every reconcile.
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn admin_probe(path: &str, admin: u16) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(admin.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(5),
        ..Probe::default()
    }
}

/// The liveness probe of the admin port: patient, since a restart is the one remedy it
/// has. A proxy busy under load, or throttled at its CPU limit, can take longer than the
/// default second to answer `/healthz`; restarting it then drops every connection it
/// carries. Half a minute without an answer is a hung process.
fn liveness_probe(admin: u16) -> Probe {
    Probe {
        timeout_seconds: Some(5),
        period_seconds: Some(10),
        failure_threshold: Some(3),
        ..admin_probe("/healthz", admin)
    }
}

/// A probe that passes once `port` accepts connections.
fn port_probe(port: u16) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(port.into()),
            ..TCPSocketAction::default()
        }),
        ..startup_timing()
    }
}

/// How a native sidecar's startup probe runs: often, since the app's start waits on it,
/// and for up to a minute before the kubelet restarts the sidecar.
fn startup_timing() -> Probe {
    Probe {
        period_seconds: Some(1),
        failure_threshold: Some(60),
        ..Probe::default()
    }
}

/// How long a container that serves behind a Service keeps serving after its pod is told
/// to stop: the endpoints controller, then every kube-proxy (and the API server, for a
/// webhook), take the pod out of rotation only after the pod's deletion is seen, and a
/// container that stops at once refuses the connections still sent its way meanwhile.
pub const SHUTDOWN_DELAY_SECONDS: i64 = 10;

/// What the pod gives its containers to stop after [`SHUTDOWN_DELAY_SECONDS`]: the
/// Kubernetes default of 30 s, on top of the delay.
pub const TERMINATION_GRACE_SECONDS: i64 = SHUTDOWN_DELAY_SECONDS + 30;

/// A `preStop` hook that sleeps `seconds`; the kubelet sleeps itself (no `sleep` binary
/// in the image needed) and sends SIGTERM after it.
fn pre_stop_sleep(seconds: i64) -> Lifecycle {
    Lifecycle {
        pre_stop: Some(LifecycleHandler {
            sleep: Some(SleepAction { seconds }),
            ..LifecycleHandler::default()
        }),
        ..Lifecycle::default()
    }
}

/// Makes the pods of `template`, which serve behind a Service, stop only once they are out
/// of its endpoints: every main container (the app, and sidecars placed as plain
/// containers) without a `preStop` hook of its own gets one that sleeps out
/// [`SHUTDOWN_DELAY_SECONDS`], and the pod's grace period, unless the template sets one,
/// becomes [`TERMINATION_GRACE_SECONDS`]. Native sidecars need no hook: the kubelet stops
/// them only after every main container has exited, so they serve through the delay.
///
/// A grace period the template sets is the user's, and the API server refuses a sleep
/// that is not shorter than it: the delay then shrinks to a second under it, and a pod
/// given a second or less to stop gets no delay at all.
pub fn delay_shutdown(template: &mut PodTemplateSpec) {
    let Some(pod) = template.spec.as_mut() else {
        return;
    };
    let grace = *pod
        .termination_grace_period_seconds
        .get_or_insert(TERMINATION_GRACE_SECONDS);
    let delay = SHUTDOWN_DELAY_SECONDS.min(grace - 1);
    if delay <= 0 {
        return;
    }
    for c in &mut pod.containers {
        let lifecycle = c.lifecycle.get_or_insert_with(Lifecycle::default);
        if lifecycle.pre_stop.is_none() {
            lifecycle.pre_stop = pre_stop_sleep(delay).pre_stop;
        }
    }
}

/// A sidecar as a native sidecar: an init container that keeps running, so it is up
/// before the app takes traffic and stops after it; its admin port (named, as port names
/// are unique in a pod) probed for readiness and liveness. Its startup probe (`/readyz`:
/// listening and serving) is what orders it before the app: the kubelet starts the next
/// container only once a native sidecar's startup probe has passed, and without one at
/// once, before the sidecar may listen, so that the app's first request through an
/// ambassador would be refused.
pub fn container<A: SidecarArgs>(
    name: &str,
    image: &str,
    args: &A,
    (port_name, admin): (&str, u16),
) -> Container {
    Container {
        name: name.into(),
        image: Some(image.into()),
        args: Some(args.to_args()),
        ports: Some(vec![port(port_name, admin.into())]),
        restart_policy: Some("Always".into()),
        readiness_probe: Some(admin_probe("/readyz", admin)),
        liveness_probe: Some(liveness_probe(admin)),
        startup_probe: Some(Probe {
            http_get: admin_probe("/readyz", admin).http_get,
            ..startup_timing()
        }),
        security_context: Some(hardened_security_context()),
        resources: Some(resources::defaults(name).requirements()),
        ..Container::default()
    }
}

/// A sidecar as the one container of a pod of its own (a ShardedService's router): the
/// same hardened container as [`container`], without the `restartPolicy` that only init
/// containers take, nor the startup probe that only orders a native sidecar before the
/// app.
pub fn main_container<A: SidecarArgs>(
    name: &str,
    image: &str,
    args: &A,
    admin: (&str, u16),
) -> Container {
    Container {
        restart_policy: None,
        startup_probe: None,
        ..container(name, image, args, admin)
    }
}

/// [`main_container`] as the server of a pod of its own behind a Service (a
/// ShardedService's router, a ScatterGather's root): its CPU and memory from `resources`,
/// the block at `field`, and its serving port `(name, port)` first among its ports.
pub fn serving_container<A: SidecarArgs>(
    name: &str,
    image: &str,
    args: &A,
    admin: (&str, u16),
    (resources, field): (Option<&SidecarResources>, &str),
    (port_name, serving): (&str, i32),
) -> Result<Container, FieldErrors> {
    let mut container = main_container(name, image, args, admin);
    let budget = resources::resolve(name, resources, field).map_err(FieldErrors)?;
    container.resources = Some(budget.requirements());
    container
        .ports
        .get_or_insert_with(Vec::new)
        .insert(0, port(port_name, serving));
    Ok(container)
}

/// The security context of every container Rigging adds to a pod.
pub fn hardened_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(SIDECAR_USER),
        run_as_group: Some(SIDECAR_USER),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(yaml: &str) -> PodTemplateSpec {
        serde_norway::from_str(yaml).unwrap()
    }

    fn app() -> PodTemplateSpec {
        template("spec: {containers: [{name: app, image: app:1, ports: [{containerPort: 8080}]}]}")
    }

    fn ambassador(port: i32) -> Sidecars {
        serde_json::from_value(serde_json::json!({"shard": {"service": "cache", "port": port}}))
            .unwrap()
    }

    fn placed(mut t: PodTemplateSpec, sidecars: &Sidecars) -> Result<PodTemplateSpec, String> {
        let placement = Placement {
            app_port: Some(8080),
            tls: None,
            sidecars: Some(sidecars),
            election: Some("web"),
        };
        let config = crate::controller::RenderConfig {
            sidecar_image: "sidecar:test".into(),
            ..crate::controller::RenderConfig::default()
        };
        place(&mut t, &placement, &config).map_err(|e| e.to_string())?;
        Ok(t)
    }

    #[test]
    fn the_ambassador_listens_on_loopback_reads_the_ring_and_labels_the_pod_as_a_client() {
        let t = placed(app(), &ambassador(6379)).unwrap();
        let labels = t.metadata.unwrap().labels.unwrap();
        assert_eq!(labels[SHARD_CLIENT_LABEL], "cache");
        let pod = t.spec.unwrap();
        let c = &pod.init_containers.unwrap()[0];
        assert_eq!(c.name, SHARD);
        assert_eq!(
            c.restart_policy.as_deref(),
            Some("Always"),
            "a native sidecar"
        );
        assert_eq!(
            c.args.clone().unwrap().join(" "),
            "shard --admin 0.0.0.0:9122 --config /etc/rigging/shard/shard.yaml --connect-timeout 500ms --distribution ketama --drain-timeout 10s --hash fnv1a_64 --listen 127.0.0.1:6379 --server-connections 1 --server-failure-limit 2 --server-retry-timeout 30s --timeout 1s",
            "no --protocol: the ring file says which"
        );
        let mount = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (
                mount.mount_path.as_str(),
                mount.read_only,
                mount.sub_path.as_ref()
            ),
            (SHARD_MOUNT_PATH, Some(true), None)
        );
        let volume = &pod.volumes.unwrap()[0];
        assert_eq!(volume.name, mount.name);
        assert_eq!(volume.config_map.as_ref().unwrap().name, "cache-ring");
        assert_eq!(pod.containers.len(), 1, "the app is untouched");
    }

    fn http_ambassador(port: i32) -> Sidecars {
        serde_json::from_value(serde_json::json!({"http": {"configMap": "web-http", "port": port}}))
            .unwrap()
    }

    #[test]
    fn the_http_ambassador_listens_on_loopback_and_reads_the_users_config_map_as_a_directory() {
        let t = placed(app(), &http_ambassador(9080)).unwrap();
        let pod = t.spec.unwrap();
        let c = &pod.init_containers.unwrap()[0];
        assert_eq!(c.name, HTTP);
        assert_eq!(
            c.restart_policy.as_deref(),
            Some("Always"),
            "a native sidecar"
        );
        assert_eq!(
            c.args.clone().unwrap().join(" "),
            "http --admin 0.0.0.0:9124 --config /etc/rigging/http/http.yaml --drain-timeout 20s --header-timeout 30s --idle-timeout 2m --listen 127.0.0.1:9080 --max-connections 4096 --memory-limit 256Mi --reload-interval 1s"
        );
        let probe = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(probe.port, IntOrString::Int(9124));
        let mount = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (
                mount.mount_path.as_str(),
                mount.read_only,
                mount.sub_path.as_ref()
            ),
            (HTTP_MOUNT_PATH, Some(true), None)
        );
        let volume = &pod.volumes.unwrap()[0];
        assert_eq!(volume.name, mount.name);
        let source = volume.config_map.as_ref().unwrap();
        assert_eq!(source.name, "web-http");
        assert_eq!(source.items.as_ref().unwrap()[0].key, HTTP_CONFIG_KEY);
        assert_eq!(pod.containers.len(), 1, "the app is untouched");
        // The default port, when the block names only the ConfigMap.
        let default: Sidecars =
            serde_json::from_value(serde_json::json!({"http": {"configMap": "web-http"}})).unwrap();
        assert_eq!(default.http.unwrap().port, 9080);
    }

    #[test]
    fn the_http_ambassadors_ports_and_names_are_in_the_port_plan() {
        let err = placed(app(), &http_ambassador(8080)).unwrap_err();
        assert!(
            err.starts_with("spec.sidecars.http.port: port 8080 is the HTTP ambassador's port and also the app's port (spec.port)"),
            "{err}"
        );
        let err = placed(app(), &http_ambassador(9124)).unwrap_err();
        assert!(
            err.starts_with("spec.sidecars.http.port: port 9124 is the HTTP ambassador's port and also the HTTP ambassador's admin port"),
            "{err}"
        );
        let admin_taken = template(
            "spec: {containers: [{name: app, image: a, ports: [{containerPort: 8080}, {containerPort: 9124}]}]}",
        );
        let err = placed(admin_taken, &http_ambassador(9080)).unwrap_err();
        assert!(
            err.starts_with("spec.sidecars.http: port 9124 is the HTTP ambassador's admin port and also a port of container \"app\""),
            "{err}"
        );
        let taken = template(
            "spec: {containers: [{name: app, image: a}, {name: rigging-http, image: b}], volumes: [{name: rigging-http, emptyDir: {}}]}",
        );
        let err = placed(taken, &http_ambassador(9080)).unwrap_err();
        assert!(
            err.contains("container #1 is named \"rigging-http\", a name Rigging reserves")
                && err.contains("volume \"rigging-http\" is reserved"),
            "{err}"
        );
    }

    #[test]
    fn the_queue_sidecar_publishes_on_loopback_and_its_ports_are_in_the_port_plan() {
        let queue: Sidecars = serde_json::from_value(serde_json::json!({"queue": {
            "url": "nats://nats:4222", "subscribe": ["orders"], "deliverTo": "http://127.0.0.1:8080/orders"
        }}))
        .unwrap();
        let t = placed(app(), &queue).unwrap();
        let c = t.spec.unwrap().init_containers.unwrap().remove(0);
        assert_eq!(c.name, QUEUE);
        let args = c.args.unwrap().join(" ");
        assert!(
            args.contains("--listen 127.0.0.1:9127") && args.contains("--nats nats://nats:4222"),
            "{args}"
        );
        let env: Vec<String> = c.env.unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(
            env,
            ["POD_NAME"],
            "no URL in the environment without urlSecret"
        );
        for taken in [9126, 9127] {
            let app = template(&format!(
                "spec: {{containers: [{{name: app, image: a, ports: [{{containerPort: 8080}}, {{containerPort: {taken}}}]}}]}}"
            ));
            let err = placed(app, &queue).unwrap_err();
            assert!(
                err.starts_with(&format!(
                    "spec.sidecars.queue: port {taken} is the queue sidecar's"
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn the_ambassadors_ports_and_names_are_in_the_port_plan() {
        let err = placed(app(), &ambassador(8080)).unwrap_err();
        assert_eq!(
            err,
            "spec.sidecars.shard.port: port 8080 is the sharding ambassador's port and also the app's port (spec.port): containers of a pod share its network, so each port has one holder"
        );
        let err = placed(app(), &ambassador(9122)).unwrap_err();
        assert!(
            err.starts_with("spec.sidecars.shard.port: port 9122 is the sharding ambassador's port and also the sharding ambassador's admin port"),
            "{err}"
        );
        let taken = template(
            "spec: {containers: [{name: app, image: a}, {name: rigging-shard, image: b}], volumes: [{name: rigging-shard, emptyDir: {}}]}",
        );
        let err = placed(taken, &ambassador(6379)).unwrap_err();
        assert!(
            err.contains("container #1 is named \"rigging-shard\", a name Rigging reserves")
                && err.contains("volume \"rigging-shard\" is reserved"),
            "{err}"
        );
    }

    fn elect(block: serde_json::Value) -> Sidecars {
        serde_json::from_value(serde_json::json!({ "elect": block })).unwrap()
    }

    #[test]
    fn the_election_sidecar_reads_its_identity_from_the_downward_api_and_mounts_its_token() {
        let t = placed(app(), &elect(serde_json::json!({}))).unwrap();
        let pod = t.spec.unwrap();
        let c = &pod.init_containers.unwrap()[0];
        assert_eq!(c.name, ELECT);
        assert_eq!(
            c.restart_policy.as_deref(),
            Some("Always"),
            "a native sidecar"
        );
        assert_eq!(
            c.args.clone().unwrap().join(" "),
            "elect --admin 0.0.0.0:9125 --backend lease --election web --etcd-prefix /rigging/elect/ --lease-duration 15s --renew-deadline 10s --retry-period 2s",
            "the owner's name and client-go's timings; no --identity: POD_NAME says it"
        );
        let env: Vec<_> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
        assert_eq!(env, ["POD_NAME", "POD_NAMESPACE"]);
        let path = |p: &Option<Probe>| p.as_ref().unwrap().http_get.as_ref().unwrap().path.clone();
        assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
        assert_eq!(path(&c.liveness_probe).as_deref(), Some("/healthz"));
        let liveness = c.liveness_probe.as_ref().unwrap();
        assert_eq!(
            (
                liveness.timeout_seconds,
                liveness.period_seconds,
                liveness.failure_threshold
            ),
            (Some(5), Some(10), Some(3)),
            "a busy or throttled sidecar is not restarted for a slow /healthz"
        );
        let mounts = c.volume_mounts.as_ref().unwrap();
        assert_eq!(mounts.len(), 1);
        assert_eq!(
            (
                mounts[0].name.as_str(),
                mounts[0].mount_path.as_str(),
                mounts[0].read_only
            ),
            (ELECT_TOKEN, elect::TOKEN_MOUNT_PATH, Some(true))
        );
        let volume = &pod.volumes.unwrap()[0];
        let sources = volume.projected.as_ref().unwrap().sources.as_ref().unwrap();
        assert!(sources[0].service_account_token.is_some());
        assert_eq!(
            sources[1].config_map.as_ref().unwrap().name,
            "kube-root-ca.crt"
        );
        assert_eq!(pod.containers.len(), 1, "the app is untouched");
        assert!(pod.containers[0].volume_mounts.is_none());
    }

    #[test]
    fn an_active_passive_pod_is_ready_only_while_it_leads_and_the_app_reads_the_leader_file() {
        let block = serde_json::json!({
            "activePassive": true,
            "backend": "Etcd",
            "etcdEndpoints": ["http://etcd-0:2379"],
            "leaderFile": "/var/run/elect/leader.json",
            "election": "jobs"
        });
        let t = placed(app(), &elect(block)).unwrap();
        let pod = t.spec.unwrap();
        let c = &pod.init_containers.unwrap()[0];
        let probe = c.readiness_probe.as_ref().unwrap();
        assert_eq!(
            probe.http_get.as_ref().unwrap().path.as_deref(),
            Some("/readyz?leader=true")
        );
        assert_eq!(
            (probe.period_seconds, probe.failure_threshold),
            (Some(1), Some(1))
        );
        let args = c.args.clone().unwrap().join(" ");
        assert!(
            args.contains("--backend etcd --election jobs --etcd-endpoint http://etcd-0:2379"),
            "{args}"
        );
        // No token on etcd; the leader file's directory, written by the sidecar alone.
        let mounts = c.volume_mounts.as_ref().unwrap();
        assert_eq!(mounts.len(), 1);
        assert_eq!(
            (
                mounts[0].name.as_str(),
                mounts[0].mount_path.as_str(),
                mounts[0].read_only
            ),
            (ELECT, "/var/run/elect", None)
        );
        let app_mount = &pod.containers[0].volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (
                app_mount.name.as_str(),
                app_mount.mount_path.as_str(),
                app_mount.read_only
            ),
            (ELECT, "/var/run/elect", Some(true))
        );
        let volumes = pod.volumes.unwrap();
        assert_eq!(volumes.len(), 1);
        assert!(volumes[0].empty_dir.is_some());
    }

    #[test]
    fn without_native_sidecars_the_election_sidecar_is_a_plain_container_whose_readiness_counts_too()
     {
        let mut t = app();
        let placement = Placement {
            app_port: Some(8080),
            tls: None,
            sidecars: Some(&elect(serde_json::json!({"activePassive": true}))),
            election: Some("web"),
        };
        let config = crate::controller::RenderConfig {
            native_sidecars: false,
            ..crate::controller::RenderConfig::default()
        };
        place(&mut t, &placement, &config).unwrap();
        let pod = t.spec.unwrap();
        assert!(pod.init_containers.is_none());
        let c = &pod.containers[1];
        assert_eq!((c.name.as_str(), c.restart_policy.as_ref()), (ELECT, None));
        assert!(c.readiness_probe.is_some());
    }

    #[test]
    fn the_election_sidecars_port_names_and_leader_directory_are_checked() {
        let port_taken = template(
            "spec: {containers: [{name: app, image: a, ports: [{containerPort: 8080}, {containerPort: 9125}]}]}",
        );
        let err = placed(port_taken, &elect(serde_json::json!({}))).unwrap_err();
        assert!(
            err.starts_with("spec.sidecars.elect: port 9125 is the election sidecar's port and also a port of container \"app\""),
            "{err}"
        );
        let names_taken = template(
            "spec: {containers: [{name: app, image: a}, {name: rigging-elect, image: b}], volumes: [{name: rigging-elect-token, emptyDir: {}}]}",
        );
        let err = placed(names_taken, &elect(serde_json::json!({}))).unwrap_err();
        assert!(
            err.contains("container #1 is named \"rigging-elect\", a name Rigging reserves")
                && err.contains("volume \"rigging-elect-token\" is reserved"),
            "{err}"
        );
        let mounted = template(
            "spec: {containers: [{name: app, image: a, volumeMounts: [{name: run, mountPath: /var/run/elect/}]}], volumes: [{name: run, emptyDir: {}}]}",
        );
        let err = placed(
            mounted,
            &elect(serde_json::json!({"leaderFile": "/var/run/elect/leader.json"})),
        )
        .unwrap_err();
        assert!(
            err.starts_with("spec.sidecars.elect.leaderFile: its directory /var/run/elect becomes a volume the app shares with the election sidecar, but container \"app\" already mounts a volume there"),
            "{err}"
        );
        let both: Sidecars = serde_json::from_value(serde_json::json!({
            "logs": {"format": "json", "file": "/var/run/app/log.json"},
            "elect": {"leaderFile": "/var/run/app/leader.json"}
        }))
        .unwrap();
        let err = placed(app(), &both).unwrap_err();
        assert!(
            err.contains(
                "spec.sidecars.elect.leaderFile: its directory /var/run/app is also the log file's"
            ),
            "{err}"
        );
        // The sidecar's own rules, with the ports checked at the same time.
        let err = placed(
            port_taken_too(),
            &elect(serde_json::json!({"leaseDuration": "5s", "renewDeadline": "6s"})),
        )
        .unwrap_err();
        assert!(
            err.contains("spec.sidecars.elect: port 9125") && err.contains("spec.sidecars.elect.renewDeadline: renewDeadline 6s must be shorter than leaseDuration 5s"),
            "{err}"
        );
    }

    #[test]
    fn a_native_sidecar_has_a_startup_probe_so_the_app_starts_once_it_listens() {
        let t = placed(app(), &http_ambassador(9080)).unwrap();
        let c = &t.spec.unwrap().init_containers.unwrap()[0];
        let probe = c.startup_probe.as_ref().expect("a startup probe");
        let get = probe.http_get.as_ref().unwrap();
        assert_eq!(
            (get.path.as_deref(), &get.port),
            (Some("/readyz"), &IntOrString::Int(9124))
        );
        assert_eq!(
            (probe.period_seconds, probe.failure_threshold),
            (Some(1), Some(60))
        );
        // The health monitor's /readyz is the app's readiness: its port is checked instead.
        let health: Sidecars = serde_json::from_value(
            serde_json::json!({"health": {"checks": ["tcp://127.0.0.1:8080"]}}),
        )
        .unwrap();
        let t = placed(app(), &health).unwrap();
        let c = &t.spec.unwrap().init_containers.unwrap()[0];
        let probe = c.startup_probe.as_ref().unwrap();
        assert!(probe.http_get.is_none());
        assert_eq!(
            probe.tcp_socket.as_ref().unwrap().port,
            IntOrString::Int(ports::HEALTH_ADMIN.into())
        );
        // A sidecar alone in its pod (a router) orders nothing.
        let router = main_container(SHARD, "i", &shard_args(any_port(6379)), ("a", 9122));
        assert!(router.startup_probe.is_none());
    }

    fn pre_stop_seconds(c: &Container) -> Option<i64> {
        c.lifecycle
            .as_ref()?
            .pre_stop
            .as_ref()?
            .sleep
            .as_ref()
            .map(|s| s.seconds)
    }

    #[test]
    fn a_pod_behind_a_service_stops_only_after_the_shutdown_delay() {
        let mut t = placed(app(), &http_ambassador(9080)).unwrap();
        delay_shutdown(&mut t);
        let pod = t.spec.unwrap();
        assert_eq!(
            pre_stop_seconds(&pod.containers[0]),
            Some(SHUTDOWN_DELAY_SECONDS)
        );
        assert_eq!(
            pod.termination_grace_period_seconds,
            Some(SHUTDOWN_DELAY_SECONDS + 30)
        );
        // Native sidecars outlive the app by themselves.
        assert!(pod.init_containers.unwrap()[0].lifecycle.is_none());

        // The user's own hook and grace period stay as they are.
        let mut own = template(
            "spec: {terminationGracePeriodSeconds: 90, containers: [{name: app, image: a, lifecycle: {preStop: {exec: {command: [drain]}}}}]}",
        );
        delay_shutdown(&mut own);
        let pod = own.spec.unwrap();
        assert_eq!(pod.termination_grace_period_seconds, Some(90));
        let hook = pod.containers[0]
            .lifecycle
            .clone()
            .unwrap()
            .pre_stop
            .unwrap();
        assert!(hook.sleep.is_none() && hook.exec.is_some());

        // A shorter grace period the user set: the API server refuses a sleep that is not
        // shorter, so the delay fits under it, and with a second or less there is none.
        for (grace, delay) in [(5, Some(4)), (1, None), (0, None)] {
            let mut short = template(&format!(
                "spec: {{terminationGracePeriodSeconds: {grace}, containers: [{{name: app, image: a}}]}}"
            ));
            delay_shutdown(&mut short);
            let pod = short.spec.unwrap();
            assert_eq!(pod.termination_grace_period_seconds, Some(grace));
            assert_eq!(pre_stop_seconds(&pod.containers[0]), delay, "grace {grace}");
        }
    }

    #[test]
    fn plain_sidecars_wait_out_the_delay_too_and_have_no_startup_probe() {
        let mut t = app();
        let placement = Placement {
            app_port: Some(8080),
            tls: None,
            sidecars: Some(&http_ambassador(9080)),
            election: Some("web"),
        };
        let config = crate::controller::RenderConfig {
            native_sidecars: false,
            ..crate::controller::RenderConfig::default()
        };
        place(&mut t, &placement, &config).unwrap();
        let c = &t.spec.unwrap().containers[1];
        assert_eq!(c.name, HTTP);
        assert_eq!(pre_stop_seconds(c), Some(SHUTDOWN_DELAY_SECONDS));
        assert!(c.startup_probe.is_none());
    }

    fn port_taken_too() -> PodTemplateSpec {
        template("spec: {containers: [{name: app, image: a, ports: [{containerPort: 9125}]}]}")
    }
}
