//! `rigging-sidecar shard`: the sharding ambassador's command line ([`ShardArgs`]), its
//! reloadable YAML config file ([`ShardConfig`]), and the placement of keys both sides must
//! agree on: twemproxy's hash functions ([`hash`]) and ketama continuum ([`ring`]). They
//! live here, free of Kubernetes types, so that the sidecar routes keys with the same code
//! the operator uses to tell how many keys a new ring moves.

pub mod hash;
pub mod ring;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{SidecarArgs, duration, ports};

/// The wire protocol between clients, the ambassador and the servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[cfg_attr(feature = "api", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Redis RESP2/RESP3.
    Redis,
    /// memcached text protocol.
    Memcached,
    /// HTTP/1.1 and HTTP/2 (cleartext) to clients, HTTP/1.1 to servers.
    Http,
}

/// Where clients connect when neither `--listen` nor the file says.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    22121,
));

/// The flags of `rigging-sidecar shard`.
///
/// `--protocol` and `--server` may be left out when `--config` names a file that has them.
/// The Redis password is never a flag the operator renders ([`SidecarArgs::to_args`] skips
/// it): it comes from the environment, `RIGGING_REDIS_AUTH`, set from a Secret.
#[derive(Debug, Clone, PartialEq, Serialize, clap::Args)]
#[serde(rename_all = "kebab-case")]
pub struct ShardArgs {
    /// Protocol spoken by clients and servers.
    #[arg(long, value_enum)]
    pub protocol: Option<Protocol>,
    /// Address clients connect to.
    #[arg(long, value_name = "ADDR", default_value_t = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// A server in twemproxy syntax, `HOST:PORT:WEIGHT [NAME]`; repeat for each server.
    #[arg(long = "server", value_name = "HOST:PORT:WEIGHT [NAME]")]
    #[serde(rename = "server")]
    pub servers: Vec<String>,
    /// Key hash function, as twemproxy names them.
    #[arg(long, default_value = "fnv1a_64")]
    pub hash: String,
    /// Key distribution; ketama (twemproxy's consistent hashing) is the one supported.
    #[arg(long, default_value = "ketama")]
    pub distribution: String,
    /// Two characters around the part of a key that is hashed, e.g. "{}".
    // A tag may start with `-`: the value is taken whatever it looks like.
    #[arg(long, value_name = "XY", allow_hyphen_values = true)]
    pub hash_tag: Option<String>,
    /// HTTP only: where the key is, `header:NAME`, `path:N` (Nth segment, from 1) or
    /// `query:NAME`.
    #[arg(long)]
    pub shard_key: Option<String>,
    /// Admin address for /healthz, /readyz and /metrics.
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], ports::SHARD_ADMIN)))]
    pub admin: SocketAddr,
    /// YAML file with the same settings (snake_case, see `ShardConfig`); watched and
    /// reloaded on change. A value in the file wins over the flag.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Time for a batch of requests to a server, from write to last reply.
    #[arg(long, default_value = "1s", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Time to connect (and AUTH/HELLO) to a server.
    #[arg(long, default_value = "500ms", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Take a failing server off the ring (twemproxy's auto_eject_hosts).
    #[arg(long)]
    pub auto_eject_hosts: bool,
    /// Consecutive failures before a server is ejected.
    #[arg(long, default_value_t = 2)]
    pub server_failure_limit: u32,
    /// How long an ejected server stays off the ring.
    #[arg(long, default_value = "30s", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub server_retry_timeout: Duration,
    /// Redis password: required from clients (AUTH) and sent to servers. Never rendered:
    /// the operator sets `RIGGING_REDIS_AUTH` from a Secret.
    #[arg(long, env = "RIGGING_REDIS_AUTH", hide_env_values = true)]
    #[serde(skip)]
    pub redis_auth: Option<String>,
    /// Connections per server shared by all clients (twemproxy's server_connections).
    #[arg(long, default_value_t = 1)]
    pub server_connections: usize,
    /// On SIGTERM, how long in-flight requests may take to finish.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
}

impl SidecarArgs for ShardArgs {
    const SUBCOMMAND: &'static str = "shard";
}

impl ShardArgs {
    /// An ambassador speaking `protocol` to `servers` (`HOST:PORT:WEIGHT [NAME]`), with
    /// every other setting at its default.
    pub fn new(protocol: Protocol, servers: Vec<String>) -> Self {
        Self {
            protocol: Some(protocol),
            listen: DEFAULT_LISTEN,
            servers,
            hash: "fnv1a_64".into(),
            distribution: "ketama".into(),
            hash_tag: None,
            shard_key: None,
            admin: SocketAddr::from(([0, 0, 0, 0], ports::SHARD_ADMIN)),
            config: None,
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(500),
            auto_eject_hosts: false,
            server_failure_limit: 2,
            server_retry_timeout: Duration::from_secs(30),
            redis_auth: None,
            server_connections: 1,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// The shard sidecar's YAML config file (`--config`), which the operator writes into the
/// ConfigMap key `shard.yaml` and the sidecar re-reads when it changes.
///
/// The keys are the flags' names in snake_case (`servers` for the repeated `--server`);
/// durations are humantime text (`timeout: 1s`). Every key is optional, and a value in the
/// file wins over the flag, because the file is what gets reloaded. An unknown key is an
/// error.
///
/// On reload a change of `servers`, `hash`, `distribution`, `hash_tag`, `timeout`,
/// `connect_timeout`, `auto_eject_hosts`, `server_failure_limit`, `server_retry_timeout`
/// or `server_connections` builds a new ring; `listen`, `protocol`, `redis_auth` and
/// `shard_key` need a restart (a change to them is logged and ignored).
///
/// `redis_auth` is for a file a person mounts from a Secret: the operator never writes it
/// into a ConfigMap, it passes the password by environment (see [`ShardArgs::redis_auth`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShardConfig {
    /// See `--listen` (restart).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// See `--protocol` (restart).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// See `--server`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub servers: Option<Vec<String>>,
    /// See `--hash`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// See `--distribution`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distribution: Option<String>,
    /// See `--hash-tag`; empty for none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_tag: Option<String>,
    /// See `--shard-key` (restart).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_key: Option<String>,
    /// See `--timeout`.
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// See `--connect-timeout`.
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// See `--auto-eject-hosts`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_eject_hosts: Option<bool>,
    /// See `--server-failure-limit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_failure_limit: Option<u32>,
    /// See `--server-retry-timeout`.
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub server_retry_timeout: Option<Duration>,
    /// See `--redis-auth` (restart).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_auth: Option<String>,
    /// See `--server-connections`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_connections: Option<usize>,
}

/// The path on the sharding ambassador's admin port that answers with the ring it has in
/// service, as a [`RingReport`] in JSON.
pub const RING_PATH: &str = "/ring";

/// The version of a ring file: the first 6 bytes of the MD5 digest of its text, in hex. The
/// operator shows the version of the file it wrote as `status.ringVersion`, and every
/// ambassador reports the version of the file its ring in service came from
/// ([`RingReport`]): equal versions are the same file, byte for byte.
pub fn ring_version(file: &str) -> String {
    hash::md5(file.as_bytes())[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the sharding ambassador answers on [`RING_PATH`]: the ring it routes every new
/// request with. The operator asks every router (or client pod, in mode `Ambassador`) for
/// it before it removes a shard's pods, so that no request goes to a shard once it is gone.
///
/// A new ring is reported only once no request can still be on its way to a server of the
/// previous one: a batch started before the reload ends, with a reply or an error, within
/// the connect and request timeouts, and the report waits that long.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RingReport {
    /// The [`ring_version`] of the config file the ring was loaded from; absent when the
    /// servers come from flags alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The ring's servers in configuration order, each by the name it is hashed as
    /// ([`ring::ServerSpec::ring_name`]).
    pub members: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> ShardConfig {
        ShardConfig {
            listen: Some("127.0.0.1:6379".parse().unwrap()),
            protocol: Some(Protocol::Redis),
            servers: Some(vec![
                "10.0.0.1:6379:1".into(),
                "10.0.0.2:6379:1 shard-b".into(),
            ]),
            hash: Some("fnv1a_64".into()),
            distribution: Some("ketama".into()),
            hash_tag: Some("{}".into()),
            shard_key: Some("query:key".into()),
            timeout: Some(Duration::from_millis(1500)),
            connect_timeout: Some(Duration::from_millis(500)),
            auto_eject_hosts: Some(true),
            server_failure_limit: Some(3),
            server_retry_timeout: Some(Duration::from_secs(30)),
            redis_auth: Some("secret".into()),
            server_connections: Some(2),
        }
    }

    #[test]
    fn the_config_file_round_trips_through_yaml_with_humantime_durations() {
        let yaml = serde_norway::to_string(&full()).unwrap();
        assert!(yaml.contains("timeout: 1s 500ms\n"), "{yaml}");
        assert!(yaml.contains("server_retry_timeout: 30s\n"), "{yaml}");
        let back: ShardConfig = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(back, full());
    }

    #[test]
    fn absent_settings_are_left_out_of_the_file_and_read_as_none() {
        let only = ShardConfig {
            servers: Some(vec!["10.0.0.1:6379:1".into()]),
            ..ShardConfig::default()
        };
        let yaml = serde_norway::to_string(&only).unwrap();
        assert_eq!(yaml, "servers:\n- 10.0.0.1:6379:1\n");
        assert_eq!(serde_norway::from_str::<ShardConfig>(&yaml).unwrap(), only);
        let empty: ShardConfig = serde_norway::from_str("{}").unwrap();
        assert_eq!(empty, ShardConfig::default());
    }

    #[test]
    fn a_file_as_a_person_writes_it_parses() {
        let text = "protocol: memcached\nservers:\n  - 127.0.0.1:11211:1\n\
                    timeout: 2s\nconnect_timeout: 250ms\nserver_retry_timeout: 1m\n";
        let file: ShardConfig = serde_norway::from_str(text).unwrap();
        assert_eq!(file.protocol, Some(Protocol::Memcached));
        assert_eq!(file.timeout, Some(Duration::from_secs(2)));
        assert_eq!(file.connect_timeout, Some(Duration::from_millis(250)));
        assert_eq!(file.server_retry_timeout, Some(Duration::from_secs(60)));
    }

    #[test]
    fn an_unknown_key_is_refused_naming_it() {
        // The key of the old millisecond setting is one of them.
        let err = serde_norway::from_str::<ShardConfig>("timeout_ms: 1000\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `timeout_ms`"), "{err}");
        let err = serde_norway::from_str::<ShardConfig>("servers: []\nhash_tags: \"{}\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`hash_tags`"), "{err}");
    }

    #[test]
    fn a_ring_version_is_twelve_hex_digits_of_the_files_digest() {
        let version = ring_version("servers:\n- a:1:1 a\n");
        assert_eq!(version.len(), 12);
        assert!(version.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(version, ring_version("servers:\n- a:1:1 a\n"), "stable");
        assert_ne!(version, ring_version("servers:\n- a:1:1 b\n"));
        // The digest of the text as written: md5("") starts d41d8cd98f00.
        assert_eq!(ring_version(""), "d41d8cd98f00");
    }

    #[test]
    fn a_ring_report_is_camel_case_json_without_an_absent_version() {
        let report = RingReport {
            version: Some("0123456789ab".into()),
            members: vec!["cache-0".into(), "cache-1".into()],
        };
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(
            json,
            r#"{"version":"0123456789ab","members":["cache-0","cache-1"]}"#
        );
        assert_eq!(serde_json::from_str::<RingReport>(&json).unwrap(), report);
        let flags_only = RingReport {
            version: None,
            members: vec!["10.0.0.1:6379".into()],
        };
        assert_eq!(
            serde_json::to_string(&flags_only).unwrap(),
            r#"{"members":["10.0.0.1:6379"]}"#
        );
    }

    #[test]
    fn a_duration_without_a_unit_is_refused_naming_the_key() {
        let err = serde_norway::from_str::<ShardConfig>("timeout: 1000\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("timeout"), "{err}");
        assert!(err.contains("e.g. 500ms"), "{err}");
    }
}
