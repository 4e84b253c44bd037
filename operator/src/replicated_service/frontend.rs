//! The frontend tier of a ReplicatedService (book ch. 5: a cache such as Varnish in front
//! of a stateless service, and rate limits): Rigging's HTTP ambassador in a Deployment of
//! its own behind the Service `<name>-frontend`, reading a config file generated from
//! `spec.frontend` that sends every request on to the app's Service. Pure, like the rest
//! of the kind's desired state.
//!
//! The ambassador reloads its file when the ConfigMap changes, so a change of the cache or
//! of the rate limit restarts no frontend pod.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ContainerPort, PodSpec, PodTemplateSpec, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use rigging_crds::replicated_service::FRONTEND_SUFFIX;
use rigging_crds::sidecar::duration;
use rigging_crds::sidecar::http::{
    Backend, ByteSize, Cache, HttpConfig, RateLimit, Route, StickyKey,
};
use rigging_crds::sidecar::ports;
use rigging_crds::{
    FieldError, FieldErrors, Frontend, FrontendCache, FrontendRateLimit, RateLimitKey,
    ReplicatedService,
};
use serde_json::json;

use crate::controller::{MANAGER, RenderConfig, child_meta};
use crate::sidecars;

/// The port the frontend pods listen on; the Service `<name>-frontend` targets it.
pub const PORT: u16 = 8080;
/// The one route of the generated config file, which takes every request.
pub const ROUTE: &str = "frontend";
/// The backend of the generated config file: the app's Service.
pub const BACKEND: &str = "app";
/// The namespace of a ReplicatedService rendered without one, as `kubectl apply` would
/// place it: the app's Service is named in it.
const DEFAULT_NAMESPACE: &str = "default";
/// The label that tells the frontend's pods from the app's.
const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
const COMPONENT: &str = "frontend";
/// Memory of the ambassador besides its cache.
const BASE_MEMORY_REQUEST_MI: u64 = 32;
const BASE_MEMORY_LIMIT_MI: u64 = 128;

/// The frontend's children: its config file, its pods, and the Service clients use.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    /// `<name>-frontend`, key `http.yaml`: the ambassador's config file. Applied before the
    /// Deployment, whose pods mount it.
    pub config_map: ConfigMap,
    /// `<name>-frontend`: the ambassador pods.
    pub deployment: Deployment,
    /// `<name>-frontend`: what clients connect to.
    pub service: Service,
}

/// The name of every child of the frontend.
pub fn name(rs: &ReplicatedService) -> String {
    format!("{}{FRONTEND_SUFFIX}", rs.name_any())
}

/// The labels that select the frontend's pods. They differ from the app's selector in
/// `app.kubernetes.io/name`, so that neither the app's Deployment nor its Service (which
/// the frontend sends requests to) ever selects a frontend pod. Immutable, like every
/// Deployment selector.
pub fn selector_labels(rs: &ReplicatedService) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), name(rs)),
        ("app.kubernetes.io/instance".to_owned(), rs.name_any()),
        (COMPONENT_LABEL.to_owned(), COMPONENT.to_owned()),
    ])
}

/// Labels of the frontend's children and pods.
pub fn labels(rs: &ReplicatedService) -> BTreeMap<String, String> {
    let mut labels = selector_labels(rs);
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    labels.insert("app.kubernetes.io/part-of".into(), "rigging".into());
    labels
}

/// The frontend's children when `spec.frontend` is set, or why they cannot be made.
pub fn children(
    rs: &ReplicatedService,
    config: &RenderConfig,
) -> Result<Option<Children>, FieldErrors> {
    let Some(frontend) = rs.spec.frontend.as_ref() else {
        return Ok(None);
    };
    let file = http_config(rs, frontend)?;
    // The operator writes this file; the sidecar would refuse one that does not pass its
    // own checks, and that is a bug here, not in the user's spec.
    file.validate().map_err(|e| {
        FieldErrors(vec![FieldError::new(
            "spec.frontend",
            format!("the operator generated an HTTP ambassador config the ambassador refuses (a bug in rigging-operator, please report it): {e}"),
        )])
    })?;
    let text = serde_norway::to_string(&file).map_err(|e| {
        FieldErrors(vec![FieldError::new(
            "spec.frontend",
            format!("the HTTP ambassador config cannot be written: {e}"),
        )])
    })?;
    let cache_size = file.cache.as_ref().map_or(0, |c| c.max_size.0);
    Ok(Some(Children {
        config_map: config_map(rs, text),
        deployment: deployment(rs, frontend, config, cache_size),
        service: service(rs, frontend),
    }))
}

/// The ambassador's config file: one route that takes every request, cached and
/// rate-limited as the spec says, to the app's Service.
pub fn http_config(rs: &ReplicatedService, frontend: &Frontend) -> Result<HttpConfig, FieldErrors> {
    let mut errors = Vec::new();
    let cache = frontend.cache.as_ref().and_then(|c| cache(c, &mut errors));
    let rate_limit = frontend
        .rate_limit
        .as_ref()
        .and_then(|r| rate_limit(r, &mut errors));
    FieldErrors::into_result(errors)?;
    let namespace = rs
        .namespace()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    let route: Route = minimal(json!({"name": ROUTE, "backend": BACKEND}))?;
    let backend: Backend = minimal(json!({
        "name": BACKEND,
        "dns": {
            "name": format!("{}.{namespace}.svc", rs.name_any()),
            // Ports are 1..=65535 by the CRD schema.
            "port": u16::try_from(rs.spec.service_port()).unwrap_or_default(),
        },
    }))?;
    Ok(HttpConfig {
        routes: vec![Route {
            cache: cache.is_some(),
            rate_limit,
            ..route
        }],
        backends: vec![backend],
        cache,
    })
}

/// The smallest route or backend a user would write, read by the sidecar's own types, so
/// that every setting not named is the sidecar's default.
fn minimal<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, FieldErrors> {
    serde_json::from_value(value).map_err(|e| {
        FieldErrors(vec![FieldError::new(
            "spec.frontend",
            format!("the HTTP ambassador config cannot be built: {e}"),
        )])
    })
}

fn cache(spec: &FrontendCache, errors: &mut Vec<FieldError>) -> Option<Cache> {
    let field = |name: &str| format!("spec.frontend.cache.{name}");
    let size = |text: &str, name: &str, errors: &mut Vec<FieldError>| {
        text.parse::<ByteSize>()
            .map_err(|e| errors.push(FieldError::new(field(name), e)))
            .ok()
    };
    let time = |text: Option<&String>, name: &str, errors: &mut Vec<FieldError>| match text {
        None => Some(Duration::ZERO),
        Some(text) => duration::parse(text)
            .map_err(|e| errors.push(FieldError::new(field(name), e)))
            .ok(),
    };
    let defaults = Cache::default();
    let max_size = size(&spec.max_size, "maxSize", errors);
    let max_object_size = match &spec.max_object_size {
        Some(text) => size(text, "maxObjectSize", errors),
        None => Some(defaults.max_object_size),
    };
    let default_ttl = time(spec.default_ttl.as_ref(), "defaultTtl", errors);
    let stale_if_error = time(spec.stale_if_error.as_ref(), "staleIfError", errors);
    let (max_size, max_object_size) = (max_size?, max_object_size?);
    if max_object_size > max_size {
        errors.push(FieldError::new(
            field("maxObjectSize"),
            format!(
                "{max_object_size} is more than maxSize ({max_size}): no response that large would fit in the cache"
            ),
        ));
        return None;
    }
    Some(Cache {
        max_size,
        max_object_size,
        default_ttl: default_ttl?,
        stale_if_error: stale_if_error?,
    })
}

fn rate_limit(spec: &FrontendRateLimit, errors: &mut Vec<FieldError>) -> Option<RateLimit> {
    let key = match (spec.key, &spec.header) {
        (RateLimitKey::ClientIP, _) => StickyKey::ClientIp,
        (RateLimitKey::Header, Some(header)) => StickyKey::Header(header.clone()),
        // The CRD's rule refuses this; a spec read from elsewhere may not have met it.
        (RateLimitKey::Header, None) => {
            errors.push(FieldError::new(
                "spec.frontend.rateLimit.header",
                "required with key Header",
            ));
            return None;
        }
    };
    Some(RateLimit {
        requests_per_second: f64::from(spec.requests_per_second),
        // At least 1 by the CRD schema.
        burst: spec.burst.map(|b| u32::try_from(b).unwrap_or(1)),
        key,
    })
}

fn meta(rs: &ReplicatedService) -> ObjectMeta {
    child_meta(rs, name(rs), labels(rs))
}

fn config_map(rs: &ReplicatedService, file: String) -> ConfigMap {
    ConfigMap {
        metadata: meta(rs),
        data: Some(BTreeMap::from([(
            sidecars::HTTP_CONFIG_KEY.to_owned(),
            file,
        )])),
        ..ConfigMap::default()
    }
}

/// The frontend's flags: the ambassador listening on every address of the pod, on
/// [`PORT`], for the Service.
pub fn http_args() -> rigging_crds::sidecar::http::HttpArgs {
    sidecars::http_args(SocketAddr::from(([0, 0, 0, 0], PORT)))
}

fn deployment(
    rs: &ReplicatedService,
    frontend: &Frontend,
    config: &RenderConfig,
    cache_size: u64,
) -> Deployment {
    let mut container = sidecars::main_container(
        sidecars::HTTP,
        &config.sidecar_image,
        &http_args(),
        ("http-admin", ports::HTTP_ADMIN),
    );
    container.ports.get_or_insert_with(Vec::new).insert(
        0,
        ContainerPort {
            name: Some("http".into()),
            container_port: PORT.into(),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        },
    );
    container.volume_mounts = Some(vec![sidecars::http_config_mount()]);
    // The cache lives in the ambassador's memory: what it may hold comes on top of what
    // the ambassador needs without it, or a full cache would get the pod OOM-killed. (The
    // sidecar's defaults leave room for a cache; the frontend's is sized here instead.)
    let cache_mi = cache_size.div_ceil(1 << 20);
    let resources = container.resources.get_or_insert_with(Default::default);
    for (list, base) in [
        (&mut resources.requests, BASE_MEMORY_REQUEST_MI),
        (&mut resources.limits, BASE_MEMORY_LIMIT_MI),
    ] {
        list.get_or_insert_with(BTreeMap::new)
            .insert("memory".into(), Quantity(format!("{}Mi", base + cache_mi)));
    }
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(rs)),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(vec![sidecars::http_config_volume(&name(rs))]),
            // The frontend talks to the app's Service, never to the API server.
            automount_service_account_token: Some(false),
            ..PodSpec::default()
        }),
    };
    // Clients reach it through its Service, like the app's pods.
    sidecars::delay_shutdown(&mut template);
    Deployment {
        metadata: meta(rs),
        spec: Some(DeploymentSpec {
            replicas: Some(frontend.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(rs)),
                ..LabelSelector::default()
            },
            template,
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

fn service(rs: &ReplicatedService, frontend: &Frontend) -> Service {
    Service {
        metadata: meta(rs),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(rs)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: frontend.port,
                target_port: Some(IntOrString::Int(PORT.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Container;

    use super::*;
    use crate::replicated_service::desired;

    /// A ReplicatedService `web` in `shop` with `frontend` (YAML flow syntax) as its
    /// frontend block, and `extra` more of the spec.
    fn web(frontend: &str, extra: &str) -> ReplicatedService {
        serde_norway::from_str(&format!(
            r#"
apiVersion: rigging.dev/v1alpha1
kind: ReplicatedService
metadata: {{name: web, namespace: shop, uid: 1234-abcd}}
spec:
  port: 8080
  template:
    spec:
      containers:
        - name: app
          image: app:1
          readinessProbe: {{httpGet: {{path: /, port: 8080}}}}
  frontend: {frontend}
{extra}
"#
        ))
        .expect("test fixture parses")
    }

    fn config() -> RenderConfig {
        RenderConfig {
            sidecar_image: "sidecar:test".into(),
            ..RenderConfig::default()
        }
    }

    fn render(rs: &ReplicatedService) -> Children {
        children(rs, &config())
            .expect("valid fixture")
            .expect("a frontend")
    }

    fn errors(rs: &ReplicatedService) -> Vec<String> {
        match children(rs, &config()) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    /// The config file as the ConfigMap holds it, read by the sidecar's own type.
    fn file(c: &Children) -> HttpConfig {
        let text = &c.config_map.data.as_ref().unwrap()[sidecars::HTTP_CONFIG_KEY];
        serde_norway::from_str(text).expect("the sidecar's type reads the file")
    }

    fn container(c: &Children) -> Container {
        let pod = c.deployment.spec.clone().unwrap().template.spec.unwrap();
        assert_eq!(pod.containers.len(), 1, "the ambassador alone");
        pod.containers[0].clone()
    }

    #[test]
    fn the_config_file_sends_every_request_to_the_apps_service_cached_and_rate_limited() {
        let c = render(&web(
            "{cache: {defaultTtl: 2m, staleIfError: 1h30m}, rateLimit: {requestsPerSecond: 20, burst: 40, key: Header, header: X-Api-Key}}",
            "",
        ));
        let file = file(&c);
        file.validate().expect("the sidecar takes the file");
        assert_eq!(file.routes.len(), 1);
        let route = &file.routes[0];
        assert_eq!(route.name, ROUTE);
        assert_eq!(
            route.matches,
            Default::default(),
            "an empty match takes every request"
        );
        assert_eq!(route.backend.as_deref(), Some(BACKEND));
        assert!(route.cache);
        let limit = route.rate_limit.as_ref().unwrap();
        assert_eq!(
            (limit.requests_per_second, limit.burst, &limit.key),
            (20.0, Some(40), &StickyKey::Header("X-Api-Key".into()))
        );
        let dns = file.backends[0].dns.as_ref().unwrap();
        assert_eq!(file.backends[0].name, BACKEND);
        assert_eq!((dns.name.as_str(), dns.port), ("web.shop.svc", 8080));
        let cache = file.cache.unwrap();
        assert_eq!(cache.max_size, ByteSize(64 << 20), "the default size");
        assert_eq!(
            cache.max_object_size,
            Cache::default().max_object_size,
            "the sidecar's default"
        );
        assert_eq!(cache.default_ttl, Duration::from_secs(120));
        assert_eq!(cache.stale_if_error, Duration::from_secs(5400));
    }

    #[test]
    fn without_cache_or_rate_limit_the_frontend_only_forwards() {
        let c = render(&web("{}", "  service: {port: 9000}"));
        let file = file(&c);
        file.validate().unwrap();
        assert!(file.cache.is_none());
        assert!(!file.routes[0].cache && file.routes[0].rate_limit.is_none());
        assert_eq!(
            file.backends[0].dns.as_ref().unwrap().port,
            9000,
            "the app Service's port, not the pods'"
        );
        let limit = render(&web("{rateLimit: {requestsPerSecond: 5}}", ""));
        let limit = file_route_limit(&limit);
        assert_eq!(
            (limit.burst, limit.key),
            (None, StickyKey::ClientIp),
            "the client's address, and the sidecar's default burst"
        );
    }

    fn file_route_limit(c: &Children) -> RateLimit {
        file(c).routes[0].rate_limit.clone().unwrap()
    }

    #[test]
    fn clients_reach_the_frontend_pods_through_its_service_on_the_frontend_port() {
        let c = render(&web("{port: 8000, replicas: 3}", ""));
        let d = c.deployment.spec.clone().unwrap();
        assert_eq!(d.replicas, Some(3));
        let port = &c.service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.port, port.target_port.clone()),
            (8000, Some(IntOrString::Int(8080)))
        );
        let ambassador = container(&c);
        assert_eq!(ambassador.name, sidecars::HTTP);
        assert_eq!(ambassador.image.as_deref(), Some("sidecar:test"));
        assert_eq!(ambassador.restart_policy, None, "a pod's own container");
        let args = ambassador.args.clone().unwrap().join(" ");
        assert!(args.starts_with("http "), "{args}");
        assert!(args.contains("--listen 0.0.0.0:8080"), "{args}");
        assert!(args.contains("--admin 0.0.0.0:9124"), "{args}");
        assert!(
            args.contains("--config /etc/rigging/http/http.yaml"),
            "{args}"
        );
        let probe = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            let get = p.clone().unwrap().http_get.unwrap();
            (get.path.unwrap(), get.port)
        };
        assert_eq!(
            probe(&ambassador.readiness_probe),
            ("/readyz".into(), IntOrString::Int(9124))
        );
        assert_eq!(
            probe(&ambassador.liveness_probe),
            ("/healthz".into(), IntOrString::Int(9124))
        );
        // The file the flag names is the key of the frontend's own ConfigMap, mounted as a
        // directory (never subPath), so that its updates reach the ambassador.
        let mount = &ambassador.volume_mounts.clone().unwrap()[0];
        assert_eq!(
            (
                mount.mount_path.as_str(),
                mount.read_only,
                mount.sub_path.clone()
            ),
            ("/etc/rigging/http", Some(true), None)
        );
        let pod = d.template.spec.unwrap();
        let volume = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == mount.name)
            .unwrap();
        let source = volume.config_map.unwrap();
        assert_eq!(Some(source.name), c.config_map.metadata.name);
        assert_eq!(source.items.unwrap()[0].key, sidecars::HTTP_CONFIG_KEY);
    }

    #[test]
    fn neither_tier_selects_the_other_tiers_pods() {
        let rs = web("{}", "");
        let all = desired::desired(&rs, &config()).unwrap();
        let f = all.frontend.unwrap();
        let pod_labels = |d: &Deployment| {
            d.spec
                .clone()
                .unwrap()
                .template
                .metadata
                .unwrap()
                .labels
                .unwrap()
        };
        let selects = |sel: &BTreeMap<String, String>, labels: &BTreeMap<String, String>| {
            sel.iter().all(|(k, v)| labels.get(k) == Some(v))
        };
        let (app_pods, front_pods) = (pod_labels(&all.deployment), pod_labels(&f.deployment));
        let app_selectors = [
            all.deployment.spec.clone().unwrap().selector.match_labels,
            all.service.spec.clone().unwrap().selector,
        ];
        let front_selectors = [
            f.deployment.spec.clone().unwrap().selector.match_labels,
            f.service.spec.clone().unwrap().selector,
        ];
        for sel in app_selectors.iter().flatten() {
            assert!(
                selects(sel, &app_pods) && !selects(sel, &front_pods),
                "{sel:?}"
            );
        }
        for sel in front_selectors.iter().flatten() {
            assert!(
                selects(sel, &front_pods) && !selects(sel, &app_pods),
                "{sel:?}"
            );
        }
        for meta in [
            &f.config_map.metadata,
            &f.deployment.metadata,
            &f.service.metadata,
        ] {
            assert_eq!(meta.name.as_deref(), Some("web-frontend"));
            crate::controller::testing::assert_child_of(
                meta,
                "shop",
                ("ReplicatedService", "web", "1234-abcd"),
            );
        }
    }

    #[test]
    fn the_cache_comes_on_top_of_the_ambassadors_memory() {
        let memory = |c: &Children| {
            let r = container(c).resources.unwrap();
            (
                r.requests.unwrap()["memory"].0.clone(),
                r.limits.unwrap()["memory"].0.clone(),
            )
        };
        assert_eq!(
            memory(&render(&web("{cache: {maxSize: 1Gi}}", ""))),
            ("1056Mi".into(), "1152Mi".into())
        );
        assert_eq!(
            memory(&render(&web("{}", ""))),
            ("32Mi".into(), "128Mi".into())
        );
    }

    #[test]
    fn a_change_of_the_rate_limit_or_freshness_reaches_the_file_and_restarts_no_pod() {
        let before = render(&web(
            "{cache: {defaultTtl: 1m}, rateLimit: {requestsPerSecond: 10}}",
            "",
        ));
        let after = render(&web(
            "{cache: {defaultTtl: 5m}, rateLimit: {requestsPerSecond: 99}}",
            "",
        ));
        assert_ne!(before.config_map, after.config_map);
        assert_eq!(
            before.deployment, after.deployment,
            "the ambassador reloads its file: the pod template does not change"
        );
    }

    #[test]
    fn sizes_that_cannot_work_are_refused_naming_the_field() {
        assert_eq!(
            errors(&web("{cache: {maxSize: 1Mi, maxObjectSize: 2Mi}}", "")),
            [
                "spec.frontend.cache.maxObjectSize: 2Mi is more than maxSize (1Mi): no response that large would fit in the cache"
            ]
        );
        let huge = errors(&web("{cache: {maxSize: 99999999999999999999Ti}}", ""));
        assert_eq!(huge.len(), 1, "{huge:?}");
        assert!(
            huge[0].starts_with("spec.frontend.cache.maxSize: "),
            "{huge:?}"
        );
    }

    #[test]
    fn without_a_frontend_there_are_no_frontend_children() {
        let mut rs = web("{}", "");
        rs.spec.frontend = None;
        assert_eq!(children(&rs, &config()), Ok(None));
        let all = desired::desired(&rs, &config()).unwrap().into_vec();
        assert!(
            all.iter()
                .all(|c| c.to_value().unwrap()["metadata"]["name"] == "web"),
            "{all:?}"
        );
    }
}
