//! Settings from flags ([`Args`]) and the optional YAML file ([`ShardConfig`]), resolved
//! once into typed values.
//!
//! The file has the same settings as the flags (snake_case names); a value in the file
//! wins over the flag, because the file is what gets reloaded.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::backend::{Eject, PoolSettings, Timeouts};
use super::hash::HashKind;
use super::http::ShardKey;
use super::ring::{HashTag, ServerSpec};
use super::{Args, Error, Protocol, ShardConfig, ring_version};
use crate::runtime;

/// Everything the sidecar runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The protocol.
    pub protocol: Protocol,
    /// Servers, ring and health settings.
    pub pool: PoolSettings,
    /// HTTP only: where the key comes from.
    pub shard_key: Option<ShardKey>,
    /// Redis only: the password.
    pub redis_auth: Option<String>,
    /// The [`ring_version`] of the config file these settings
    /// came from; `None` when there is no file.
    pub version: Option<String>,
}

/// Resolves flags and file into settings; `origin` names the source in errors.
pub fn resolve(args: &Args, file: ShardConfig, origin: &Path) -> Result<Settings, Error> {
    let invalid = |field: &'static str, message: String| Error::Invalid {
        origin: origin.to_owned(),
        field,
        message,
    };
    let protocol = file
        .protocol
        .or(args.protocol)
        .ok_or_else(|| invalid("protocol", "missing: redis, memcached or http".into()))?;
    let listen = file.listen.unwrap_or(args.listen);
    let server_strings = file.servers.unwrap_or_else(|| args.servers.clone());
    if server_strings.is_empty() {
        return Err(invalid("servers", "at least one server is needed".into()));
    }
    let mut servers = Vec::with_capacity(server_strings.len());
    for s in &server_strings {
        servers.push(
            s.parse::<ServerSpec>()
                .map_err(|e| invalid("servers", e.to_string()))?,
        );
    }
    let hash_name = file.hash.unwrap_or_else(|| args.hash.clone());
    let hash: HashKind = hash_name
        .parse()
        .map_err(|e: super::hash::UnknownHash| invalid("hash", e.to_string()))?;
    let distribution = file
        .distribution
        .unwrap_or_else(|| args.distribution.clone());
    if distribution != "ketama" {
        return Err(invalid(
            "distribution",
            format!(
                "{distribution:?} is not supported; only ketama (twemproxy's consistent hashing) is"
            ),
        ));
    }
    let tag = match file.hash_tag.or_else(|| args.hash_tag.clone()) {
        None => None,
        Some(t) if t.is_empty() => None,
        Some(t) => Some(HashTag::parse(&t).ok_or_else(|| {
            invalid(
                "hash_tag",
                format!("{t:?} must be exactly two characters, e.g. \"{{}}\""),
            )
        })?),
    };
    let shard_key = match file.shard_key.or_else(|| args.shard_key.clone()) {
        Some(k) => Some(k.parse::<ShardKey>().map_err(|e| invalid("shard_key", e))?),
        None if protocol == Protocol::Http => {
            return Err(invalid(
                "shard_key",
                "required for http: header:NAME, path:N or query:NAME".into(),
            ));
        }
        None => None,
    };
    // A zero duration would fail every request: the shortest is 1 ms.
    let at_least_1ms = |d: Duration| d.max(Duration::from_millis(1));
    let timeouts = Timeouts {
        request: at_least_1ms(file.timeout.unwrap_or(args.timeout)),
        connect: at_least_1ms(file.connect_timeout.unwrap_or(args.connect_timeout)),
    };
    let eject = file
        .auto_eject_hosts
        .unwrap_or(args.auto_eject_hosts)
        .then(|| Eject {
            failure_limit: file
                .server_failure_limit
                .unwrap_or(args.server_failure_limit)
                .max(1),
            retry_after: at_least_1ms(
                file.server_retry_timeout
                    .unwrap_or(args.server_retry_timeout),
            ),
        });
    Ok(Settings {
        listen,
        protocol,
        pool: PoolSettings {
            servers,
            hash,
            tag,
            eject,
            timeouts,
            connections: file.server_connections.unwrap_or(args.server_connections),
        },
        shard_key,
        redis_auth: file.redis_auth.or_else(|| args.redis_auth.clone()),
        version: None,
    })
}

/// Reads the config file (if any) and resolves it with the flags, noting the file's
/// version (the digest of the very text read, so that it names what runs).
pub fn load(args: &Args) -> Result<Settings, Error> {
    match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| runtime::Error::Read {
                path: path.clone(),
                source,
            })?;
            let file: ShardConfig = runtime::config::parse_yaml(path, &text)?;
            Ok(Settings {
                version: Some(ring_version(&text)),
                ..resolve(args, file, path)?
            })
        }
        None => resolve(args, ShardConfig::default(), Path::new("command line")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> Args {
        Args::new(Protocol::Redis, vec!["127.0.0.1:6379:1".into()])
    }

    fn resolved(args: &Args, file: ShardConfig) -> Result<Settings, String> {
        resolve(args, file, Path::new("shard.yaml")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_flags_defaults_resolve_to_twemproxys_defaults() {
        let settings = resolved(&args(), ShardConfig::default()).unwrap();
        assert_eq!(settings.listen, SocketAddr::from(([127, 0, 0, 1], 22121)));
        assert_eq!(settings.pool.hash, HashKind::Fnv1a64);
        assert_eq!(
            settings.pool.timeouts,
            Timeouts {
                connect: Duration::from_millis(500),
                request: Duration::from_secs(1),
            }
        );
        assert_eq!(settings.pool.eject, None);
    }

    #[test]
    fn a_value_in_the_file_wins_over_the_flag() {
        let mut flags = args();
        flags.timeout = Duration::from_secs(3);
        flags.auto_eject_hosts = true;
        let file = ShardConfig {
            protocol: Some(Protocol::Memcached),
            timeout: Some(Duration::from_millis(1500)),
            server_retry_timeout: Some(Duration::from_secs(5)),
            ..ShardConfig::default()
        };
        let settings = resolved(&flags, file).unwrap();
        assert_eq!(settings.protocol, Protocol::Memcached);
        assert_eq!(settings.pool.timeouts.request, Duration::from_millis(1500));
        assert_eq!(
            settings.pool.eject,
            Some(Eject {
                failure_limit: 2,
                retry_after: Duration::from_secs(5),
            })
        );
    }

    #[test]
    fn a_zero_duration_is_taken_as_one_millisecond() {
        let mut flags = args();
        flags.connect_timeout = Duration::ZERO;
        let settings = resolved(&flags, ShardConfig::default()).unwrap();
        assert_eq!(settings.pool.timeouts.connect, Duration::from_millis(1));
    }

    #[test]
    fn invalid_settings_are_refused_naming_origin_and_field() {
        let mut flags = args();
        flags.protocol = None;
        let err = resolved(&flags, ShardConfig::default()).unwrap_err();
        assert_eq!(
            err,
            "shard.yaml: invalid protocol: missing: redis, memcached or http"
        );
        let file = ShardConfig {
            hash_tag: Some("{".into()),
            ..ShardConfig::default()
        };
        let err = resolved(&args(), file).unwrap_err();
        assert!(err.starts_with("shard.yaml: invalid hash_tag: "), "{err}");
        let file = ShardConfig {
            protocol: Some(Protocol::Http),
            ..ShardConfig::default()
        };
        let err = resolved(&args(), file).unwrap_err();
        assert!(err.starts_with("shard.yaml: invalid shard_key: "), "{err}");
    }
}
