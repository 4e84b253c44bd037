//! Settings from flags and the optional YAML file, resolved once into typed values.
//!
//! The file has the same settings as the flags (snake_case names); a value in the file
//! wins over the flag, because the file is what gets reloaded.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::Error;
use super::backend::{Eject, PoolSettings, Timeouts};
use super::hash::HashKind;
use super::http::ShardKey;
use super::ring::{HashTag, ServerSpec};

/// The wire protocol between clients, the proxy and the servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolKind {
    /// Redis RESP2/RESP3.
    Redis,
    /// memcached text protocol.
    Memcached,
    /// HTTP/1.1 and HTTP/2 (cleartext) to clients, HTTP/1.1 to servers.
    Http,
}

/// The YAML config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// See `--listen`.
    pub listen: Option<SocketAddr>,
    /// See `--protocol`.
    pub protocol: Option<ProtocolKind>,
    /// See `--server`.
    pub servers: Option<Vec<String>>,
    /// See `--hash`.
    pub hash: Option<String>,
    /// See `--distribution`.
    pub distribution: Option<String>,
    /// See `--hash-tag`.
    pub hash_tag: Option<String>,
    /// See `--shard-key`.
    pub shard_key: Option<String>,
    /// See `--timeout-ms`.
    pub timeout_ms: Option<u64>,
    /// See `--connect-timeout-ms`.
    pub connect_timeout_ms: Option<u64>,
    /// See `--auto-eject-hosts`.
    pub auto_eject_hosts: Option<bool>,
    /// See `--server-failure-limit`.
    pub server_failure_limit: Option<u32>,
    /// See `--server-retry-timeout-ms`.
    pub server_retry_timeout_ms: Option<u64>,
    /// See `--redis-auth`.
    pub redis_auth: Option<String>,
    /// See `--server-connections`.
    pub server_connections: Option<usize>,
}

/// Everything the sidecar runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The protocol.
    pub protocol: ProtocolKind,
    /// Servers, ring and health settings.
    pub pool: PoolSettings,
    /// HTTP only: where the key comes from.
    pub shard_key: Option<ShardKey>,
    /// Redis only: the password.
    pub redis_auth: Option<String>,
}

/// Resolves flags and file into settings; `origin` names the source in errors.
pub fn resolve(args: &super::Args, file: File, origin: &Path) -> Result<Settings, Error> {
    let invalid = |field: &'static str, message: String| Error::Invalid {
        origin: origin.to_owned(),
        field,
        message,
    };
    let protocol = file
        .protocol
        .or(args.protocol)
        .ok_or_else(|| invalid("protocol", "missing: redis, memcached or http".into()))?;
    let listen = file
        .listen
        .or(args.listen)
        .unwrap_or(([127, 0, 0, 1], 22121).into());
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
        None if protocol == ProtocolKind::Http => {
            return Err(invalid(
                "shard_key",
                "required for http: header:NAME, path:N or query:NAME".into(),
            ));
        }
        None => None,
    };
    let millis = |v: u64| Duration::from_millis(v.max(1));
    let timeouts = Timeouts {
        request: millis(file.timeout_ms.unwrap_or(args.timeout_ms)),
        connect: millis(file.connect_timeout_ms.unwrap_or(args.connect_timeout_ms)),
    };
    let eject = file
        .auto_eject_hosts
        .unwrap_or(args.auto_eject_hosts)
        .then(|| Eject {
            failure_limit: file
                .server_failure_limit
                .unwrap_or(args.server_failure_limit)
                .max(1),
            retry_after: millis(
                file.server_retry_timeout_ms
                    .unwrap_or(args.server_retry_timeout_ms),
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
    })
}

/// Reads the config file (if any) and resolves it with the flags.
pub fn load(args: &super::Args) -> Result<Settings, Error> {
    match &args.config {
        Some(path) => {
            let file: File = crate::runtime::config::load_yaml(path)?;
            resolve(args, file, path)
        }
        None => resolve(args, File::default(), Path::new("command line")),
    }
}
