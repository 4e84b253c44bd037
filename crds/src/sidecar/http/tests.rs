use super::*;

/// The notes' HAProxy setup, as a person writes it here: path ACLs choosing a backend,
/// round robin, `GET /status` every 5 s.
const NOTES: &str = r#"
routes:
  - name: api
    match: {path: {prefix: /api}}
    backend: api
    retries: {attempts: 2}
  - name: web
    split:
      key: {cookie: session}
      arms:
        - {name: stable, backend: web, weight: 90}
        - {name: canary, backend: web-next, weight: 10}
    mirror: {backend: web-next, percent: 5}
    cache: true
    rateLimit: {requestsPerSecond: 100, key: {header: x-user}}
backends:
  - name: api
    servers: [{address: "10.0.0.1:8080"}, {address: "10.0.0.2:8080", weight: 2}]
    healthCheck: {path: /status, interval: 5s}
    outlier: {consecutive5xx: 3}
  - name: web
    dns: {name: web.shop.svc.cluster.local, port: 80}
    balance: peakEwma
  - name: web-next
    servers: [{address: "10.0.0.9:80"}]
    balance: {hash: {header: x-user}}
cache: {maxSize: 128Mi, defaultTtl: 2m}
"#;

#[test]
fn a_file_as_a_person_writes_it_parses_with_its_defaults() {
    let config: HttpConfig = serde_norway::from_str(NOTES).unwrap();
    config.validate().unwrap();
    let api = &config.routes[0];
    assert_eq!(api.matches.path, Some(PathMatch::Prefix("/api".into())));
    assert_eq!(api.timeout, Duration::from_secs(15));
    assert_eq!(api.retries.as_ref().unwrap().budget_percent, 20.0);
    let web = &config.routes[1];
    let split = web.split.as_ref().unwrap();
    assert_eq!(split.key, StickyKey::Cookie("session".into()));
    assert_eq!(split.arms[1].weight, 10);
    let check = config.backends[0].health_check.as_ref().unwrap();
    assert_eq!((check.healthy_threshold, check.unhealthy_threshold), (2, 3));
    assert_eq!(config.backends[0].servers[0].weight, 1);
    assert_eq!(config.backends[1].balance, Balance::PeakEwma);
    assert_eq!(
        config.backends[2].balance,
        Balance::Hash(HashKey::Header("x-user".into()))
    );
    let cache = config.cache.as_ref().unwrap();
    assert_eq!(cache.max_size, ByteSize(128 << 20));
    assert_eq!(cache.max_object_size, ByteSize(1 << 20));
}

#[test]
fn the_file_round_trips_through_yaml() {
    let config: HttpConfig = serde_norway::from_str(NOTES).unwrap();
    let yaml = serde_norway::to_string(&config).unwrap();
    assert!(yaml.contains("maxSize: 128Mi"), "{yaml}");
    let back: HttpConfig = serde_norway::from_str(&yaml).unwrap();
    assert_eq!(back, config);
}

#[test]
fn an_unknown_key_is_refused_naming_it() {
    let text = NOTES.replace("healthCheck: {path", "healthcheck: {path");
    let err = serde_norway::from_str::<HttpConfig>(&text)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `healthcheck`"), "{err}");
}

fn invalid(edit: impl FnOnce(&mut HttpConfig)) -> String {
    let mut config: HttpConfig = serde_norway::from_str(NOTES).unwrap();
    edit(&mut config);
    config.validate().unwrap_err().to_string()
}

#[test]
fn a_file_that_cannot_work_is_refused_naming_the_field() {
    let err = invalid(|c| c.routes[1].split.as_mut().unwrap().arms[1].backend = "v3".into());
    assert_eq!(
        err,
        "routes[1].split.arms[1].backend: no backend is named \"v3\""
    );
    let err = invalid(|c| c.routes[0].split = c.routes[1].split.clone());
    assert!(err.starts_with("routes[0].split: "), "{err}");
    let err = invalid(|c| c.backends[0].servers[1].address = "10.0.0.2".into());
    assert!(err.starts_with("backends[0].servers[1].address: "), "{err}");
    let err = invalid(|c| c.backends[2].name = "api".into());
    assert!(
        err.starts_with("backends[2].name: another backend"),
        "{err}"
    );
    let err = invalid(|c| c.routes[1].mirror.as_mut().unwrap().percent = 150.0);
    assert!(err.starts_with("routes[1].mirror.percent"), "{err}");
    let err = invalid(|c| {
        for arm in &mut c.routes[1].split.as_mut().unwrap().arms {
            arm.weight = 0;
        }
    });
    assert!(
        err.starts_with("routes[1].split.arms: every weight is 0"),
        "{err}"
    );
    let err = invalid(|c| c.routes[1].split.as_mut().unwrap().arms[0].name = "a b".into());
    assert!(err.starts_with("routes[1].split.arms[0].name"), "{err}");
    let err = invalid(|c| c.backends[2].balance = Balance::Hash(HashKey::Header("x user".into())));
    assert!(err.starts_with("backends[2].balance.hash.header"), "{err}");
    let err = invalid(|c| c.cache = None);
    assert!(err.starts_with("routes[1].cache"), "{err}");
}

#[test]
fn sizes_take_kubernetes_suffixes_and_plain_numbers() {
    for (text, bytes) in [
        ("64Mi", 64 << 20),
        ("1Gi", 1 << 30),
        ("500k", 500_000),
        ("4096", 4096),
    ] {
        assert_eq!(text.parse::<ByteSize>().unwrap(), ByteSize(bytes), "{text}");
    }
    assert_eq!(ByteSize(64 << 20).to_string(), "64Mi");
    assert_eq!(ByteSize(1000).to_string(), "1000");
    let err = "64MB".parse::<ByteSize>().unwrap_err();
    assert!(err.contains("\"64MB\""), "{err}");
    let err = serde_norway::from_str::<Cache>("maxSize: lots\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("maxSize"), "{err}");
}

#[test]
fn the_flags_render_through_the_contract() {
    let args = HttpArgs::new("/etc/rigging/http/http.yaml".into());
    let rendered = args.to_args();
    assert_eq!(rendered[0], "http");
    assert!(
        rendered
            .windows(2)
            .any(|w| w == ["--config", "/etc/rigging/http/http.yaml"])
    );
    assert!(
        rendered
            .windows(2)
            .any(|w| w == ["--admin", "0.0.0.0:9124"])
    );
}
