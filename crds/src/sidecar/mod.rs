//! The contract between the operator and Rigging's sidecars: one typed description of each
//! sidecar's command line. The sidecar parses its arguments into it (the types derive
//! `clap::Args`); the operator builds it and renders it into a container's `args`
//! ([`SidecarArgs::to_args`]). Nothing else writes a sidecar's flags, and a test parses
//! every container the operator renders with the sidecar's own parser.
//!
//! Conventions every sidecar keeps: `--admin ADDR` serves `/healthz`, `/readyz` and
//! `/metrics`; durations are humantime (`500ms`, `10s`, `2m`); flags are the kebab-case
//! field names.

pub mod batch;
pub mod elect;
pub mod gather;
pub mod health;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod queue;
pub mod shard;
#[cfg(feature = "api")]
pub mod spec;
pub mod tls;

use serde::Serialize;
use serde_json::Value;

/// The admin ports of the sidecars in one pod (each sidecar's default too): fixed and
/// distinct, so that any set of sidecars fits in a pod together. The operator refuses an
/// app port that takes one of them.
pub mod ports {
    /// The TLS terminator's admin port.
    pub const TLS_ADMIN: u16 = 9901;
    /// The health monitor's admin port (`/healthz`, `/readyz`: what kubelet probes).
    pub const HEALTH_ADMIN: u16 = 9102;
    /// The metrics adapter's admin port, which is also where Prometheus scrapes
    /// (redis_exporter's port, which dashboards expect).
    pub const METRICS_ADMIN: u16 = 9121;
    /// The log adapter's admin port.
    pub const LOGS_ADMIN: u16 = 9123;
    /// The sharding ambassador's admin port.
    pub const SHARD_ADMIN: u16 = 9122;
    /// The HTTP ambassador's admin port (`/status` as well as the usual three).
    pub const HTTP_ADMIN: u16 = 9124;
    /// The election sidecar's port: its API (`/leader`, `/owned`) and admin endpoints.
    pub const ELECT: u16 = 9125;
    /// The queue sidecar's admin port.
    pub const QUEUE_ADMIN: u16 = 9126;
    /// The queue sidecar's publish API (`POST /publish/{topic}`), on loopback.
    pub const QUEUE: u16 = 9127;
    /// The scatter/gather root's admin port (`/status` as well as the usual three).
    pub const GATHER_ADMIN: u16 = 9128;
    /// The output sidecar's admin port (in a WorkQueue worker pod).
    pub const OUTPUT_ADMIN: u16 = 9129;
    /// The reducer's admin port (the reduce Job's container).
    pub const REDUCE_ADMIN: u16 = 9130;
}

/// A sidecar's typed command line.
pub trait SidecarArgs: Serialize {
    /// The `rigging-sidecar` subcommand that takes these arguments.
    const SUBCOMMAND: &'static str;

    /// The container's `args`: the subcommand, then `--flag value` per field, flags in
    /// alphabetical order (`--flag` alone for a true boolean, once per item for a list,
    /// nothing for an absent option or a false boolean).
    fn to_args(&self) -> Vec<String> {
        let mut args = vec![Self::SUBCOMMAND.to_owned()];
        // The types are structs of strings, numbers, booleans and lists: always an object.
        let Ok(Value::Object(fields)) = serde_json::to_value(self) else {
            return args;
        };
        for (flag, value) in fields {
            let values = match value {
                Value::Array(items) => items,
                other => vec![other],
            };
            for value in values {
                match value {
                    Value::Null | Value::Bool(false) => {}
                    Value::Bool(true) => args.push(format!("--{flag}")),
                    Value::String(s) => args.extend([format!("--{flag}"), s]),
                    other => args.extend([format!("--{flag}"), other.to_string()]),
                }
            }
        }
        args
    }
}

/// Durations as humantime text (`10s`), the syntax every sidecar flag and config file
/// parses: `#[serde(with = "duration")]`, or `duration::option` for an `Option<Duration>`.
pub mod duration {
    use std::fmt;
    use std::time::Duration;

    use serde::{Deserializer, Serializer, de};

    /// Writes `d` as `humantime::format_duration` does.
    pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*d).to_string())
    }

    /// Reads humantime text, as [`parse`] does; a bare number (no unit) is refused.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_str(Humantime)
    }

    /// The flag parser: `500ms`, `10s`, `2m`, `1h 30m`.
    pub fn parse(text: &str) -> Result<Duration, String> {
        humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e} (e.g. 500ms, 10s, 2m)"))
    }

    struct Humantime;

    impl de::Visitor<'_> for Humantime {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration with a unit, e.g. 500ms, 10s, 2m")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            parse(text).map_err(E::custom)
        }
    }

    /// The same for an `Option<Duration>`: `None` is written as null (or, with
    /// `skip_serializing_if = "Option::is_none"`, not at all) and read from null.
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        /// Writes `Some(d)` as [`super::serialize`] does, `None` as null.
        pub fn serialize<S: Serializer>(
            d: &Option<Duration>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => serializer.serialize_some(&humantime::format_duration(*d).to_string()),
                None => serializer.serialize_none(),
            }
        }

        /// Reads null as `None`, humantime text as `Some`.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Duration>, D::Error> {
            struct Text(Duration);
            impl<'de> Deserialize<'de> for Text {
                fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                    super::deserialize(deserializer).map(Text)
                }
            }
            Ok(Option::<Text>::deserialize(deserializer)?.map(|Text(d)| d))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use clap::Parser;

    use super::health::HealthArgs;
    use super::logs::{Format, LogsArgs};
    use super::metrics::MetricsArgs;
    use super::shard::{Protocol, ShardArgs};
    use super::tls::TlsArgs;
    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        sidecar: Sidecar,
    }

    #[derive(Debug, PartialEq, clap::Subcommand)]
    enum Sidecar {
        Tls(TlsArgs),
        Logs(LogsArgs),
        Metrics(MetricsArgs),
        Health(HealthArgs),
        Shard(ShardArgs),
    }

    fn parse(args: Vec<String>) -> Sidecar {
        let argv = std::iter::once("rigging-sidecar".to_owned()).chain(args.iter().cloned());
        Cli::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{args:?} does not parse: {e}"))
            .sidecar
    }

    fn tls() -> TlsArgs {
        TlsArgs::new(
            "0.0.0.0:8443".parse().unwrap(),
            "127.0.0.1:8080".into(),
            "/tls/tls.crt".into(),
            "/tls/tls.key".into(),
        )
    }

    #[test]
    fn every_rendered_command_line_parses_back_to_what_was_rendered() {
        let mut full_tls = tls();
        full_tls.client_ca = Some(PathBuf::from("/tls/ca.crt"));
        full_tls.admin = Some("0.0.0.0:9901".parse().unwrap());
        full_tls.idle_timeout = Duration::from_millis(1500);
        full_tls.no_session_resumption = true;
        let logs = LogsArgs {
            format: Format::Regex,
            pattern: Some("^(?P<level>\\w+) (?P<message>.*)$".into()),
            multiline_start: Some("^\\S".into()),
            input: "/var/log/app/app.log".into(),
            follow: true,
            reclaim_after: http::ByteSize(8 << 20),
            output: "-".into(),
            admin: Some("0.0.0.0:9123".parse().unwrap()),
        };
        let mut health = HealthArgs::new(vec![
            "http://127.0.0.1:8080/healthz#name=app".into(),
            "tcp://127.0.0.1:6379#optional".into(),
        ]);
        health.interval = Duration::from_secs(90);
        let metrics = MetricsArgs::new("redis://127.0.0.1:6379".into());
        let shard = ShardArgs {
            protocol: Some(Protocol::Redis),
            listen: "127.0.0.1:6379".parse().unwrap(),
            servers: vec![
                "10.0.0.1:6379:1 shard-a".into(),
                "10.0.0.2:6379:1 shard-b".into(),
                "10.0.0.3:6379:2 shard-c".into(),
            ],
            hash: "murmur".into(),
            distribution: "ketama".into(),
            hash_tag: Some("{}".into()),
            shard_key: Some("header:X-Key".into()),
            admin: "0.0.0.0:9122".parse().unwrap(),
            config: Some(PathBuf::from("/etc/rigging/shard.yaml")),
            timeout: Duration::from_millis(1500),
            connect_timeout: Duration::from_millis(250),
            auto_eject_hosts: true,
            server_failure_limit: 5,
            server_retry_timeout: Duration::from_secs(90),
            redis_auth: None,
            server_connections: 4,
            drain_timeout: Duration::from_millis(2500),
        };
        let mut memcached = ShardArgs::new(Protocol::Memcached, vec!["127.0.0.1:11211:1".into()]);
        memcached.hash_tag = Some("-|".into());
        let cases = [
            (tls().to_args(), Sidecar::Tls(tls())),
            (full_tls.to_args(), Sidecar::Tls(full_tls)),
            (logs.to_args(), Sidecar::Logs(logs)),
            (health.to_args(), Sidecar::Health(health)),
            (metrics.to_args(), Sidecar::Metrics(metrics)),
            (shard.to_args(), Sidecar::Shard(shard)),
            (memcached.to_args(), Sidecar::Shard(memcached)),
        ];
        for (args, want) in cases {
            assert_eq!(parse(args.clone()), want, "{args:?}");
        }
    }

    #[test]
    fn the_constructors_defaults_are_the_flags_defaults() {
        let required = |sub: &str, rest: &[&str]| {
            let mut args = vec![sub.to_owned()];
            args.extend(rest.iter().map(|s| s.to_string()));
            parse(args)
        };
        assert_eq!(
            required(
                "tls",
                &[
                    "--listen",
                    "0.0.0.0:8443",
                    "--upstream",
                    "127.0.0.1:8080",
                    "--cert",
                    "/tls/tls.crt",
                    "--key",
                    "/tls/tls.key"
                ]
            ),
            Sidecar::Tls(tls())
        );
        assert_eq!(
            required("metrics", &["--source", "redis://127.0.0.1:6379"]),
            Sidecar::Metrics(MetricsArgs::new("redis://127.0.0.1:6379".into()))
        );
        assert_eq!(
            required("health", &["--check", "tcp://127.0.0.1:1"]),
            Sidecar::Health(HealthArgs::new(vec!["tcp://127.0.0.1:1".into()]))
        );
        assert_eq!(
            required(
                "shard",
                &["--protocol", "http", "--server", "127.0.0.1:8080:1"]
            ),
            Sidecar::Shard(ShardArgs::new(
                Protocol::Http,
                vec!["127.0.0.1:8080:1".into()]
            ))
        );
    }

    #[test]
    fn the_redis_password_is_never_rendered() {
        let mut shard = ShardArgs::new(Protocol::Redis, vec!["127.0.0.1:6379:1".into()]);
        shard.redis_auth = Some("hunter2".into());
        let rendered = shard.to_args();
        assert!(
            !rendered
                .iter()
                .any(|a| a.contains("hunter2") || a.contains("redis-auth")),
            "{rendered:?}"
        );
    }

    #[test]
    fn durations_are_written_and_read_as_humantime() {
        let mut args = tls();
        args.drain_timeout = Duration::from_millis(2500);
        let rendered = args.to_args();
        let at = rendered
            .iter()
            .position(|a| a == "--drain-timeout")
            .unwrap();
        assert_eq!(rendered[at + 1], "2s 500ms");
        assert!(duration::parse("10").is_err(), "a unit is required");
    }

    #[test]
    fn the_sidecars_admin_ports_are_distinct() {
        let mut all = [
            ports::TLS_ADMIN,
            ports::HEALTH_ADMIN,
            ports::METRICS_ADMIN,
            ports::LOGS_ADMIN,
            ports::SHARD_ADMIN,
            ports::HTTP_ADMIN,
            ports::ELECT,
            ports::QUEUE_ADMIN,
            ports::QUEUE,
            ports::GATHER_ADMIN,
            ports::OUTPUT_ADMIN,
            ports::REDUCE_ADMIN,
        ];
        all.sort_unstable();
        assert!(all.windows(2).all(|w| w[0] != w[1]), "{all:?}");
    }
}
