//! The servers of a backend given as `dns: {name, port, refresh}`: every address `name`
//! resolves to (a headless Service gives one per ready pod), each with `port`, looked up
//! again every `refresh`.
//!
//! The set follows the records; a server kept by address keeps its connections, health,
//! ejection and response time. An answer with no address, or a failed lookup, keeps the
//! last set known: a DNS hiccup must not empty a backend that was serving. Until the
//! first answer the backend has no servers, and requests get 503.

use std::net::SocketAddr;
use std::sync::Weak;
use std::time::Duration;

use rigging_crds::sidecar::http::Dns;
use tokio_util::sync::CancellationToken;

use super::Backend;

/// Longest one lookup may take, at most: the system resolver can hang far longer.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves `dns` at once and then every `refresh`, until `stop` or the backend is gone.
pub async fn run(backend: Weak<Backend>, dns: Dns, stop: CancellationToken) {
    let mut failing = false;
    loop {
        let timeout = dns.refresh.clamp(Duration::from_secs(1), LOOKUP_TIMEOUT);
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            result = tokio::time::timeout(timeout, resolve(&dns.name, dns.port)) => result
                .unwrap_or_else(|_| Err(format!("no answer within {}", humantime::format_duration(timeout)))),
        };
        let Some(backend) = backend.upgrade() else {
            return;
        };
        match result {
            Ok(addresses) if !addresses.is_empty() => {
                if failing {
                    tracing::info!(backend = %backend.name, name = %dns.name, servers = addresses.len(), "DNS answers again");
                    failing = false;
                }
                backend.set_servers(&addresses);
            }
            problem => {
                let why = match problem {
                    Ok(_) => "no address records".to_owned(),
                    Err(error) => error,
                };
                let kept = backend.servers.load().len();
                if failing {
                    tracing::debug!(backend = %backend.name, name = %dns.name, error = %why, kept, "DNS lookup failed again");
                } else {
                    tracing::warn!(
                        backend = %backend.name,
                        name = %dns.name,
                        error = %why,
                        kept,
                        "DNS lookup failed: keeping the servers last known"
                    );
                    failing = true;
                }
            }
        }
        drop(backend);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(dns.refresh) => {}
        }
    }
}

/// The addresses of `name` with `port`, as `HOST:PORT` (IPv6 in brackets), sorted and
/// without duplicates.
async fn resolve(name: &str, port: u16) -> Result<Vec<String>, String> {
    let found = tokio::net::lookup_host((name, port))
        .await
        .map_err(|e| e.to_string())?;
    Ok(addresses(found))
}

fn addresses(found: impl IntoIterator<Item = SocketAddr>) -> Vec<String> {
    let mut found: Vec<SocketAddr> = found.into_iter().collect();
    found.sort();
    found.dedup();
    found.iter().map(SocketAddr::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_sorted_deduplicated_and_bracketed() {
        let found: Vec<SocketAddr> = ["10.0.0.2:80", "10.0.0.1:80", "10.0.0.2:80", "[::1]:80"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(addresses(found), ["10.0.0.1:80", "10.0.0.2:80", "[::1]:80"]);
    }

    #[tokio::test]
    async fn localhost_resolves() {
        let found = resolve("localhost", 8080).await.unwrap();
        assert!(
            found
                .iter()
                .any(|a| a == "127.0.0.1:8080" || a == "[::1]:8080"),
            "{found:?}"
        );
    }
}
