//! `rigging-sidecar tls`: a TLS terminator in front of a local app port ("adding HTTPS to
//! a legacy service", *Designing Distributed Systems* ch. 2).
//!
//! Clients speak TLS 1.2/1.3 (rustls) and HTTP/1.1 or HTTP/2 (ALPN); the app gets plain
//! HTTP/1.1 over pooled keep-alive connections. Certificates reload when their files
//! change, including the kubelet's `..data` symlink swap, without touching open
//! connections. See `docs/sidecars/tls.md`.

mod certs;
mod metrics;
mod proxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use http::uri::Authority;
use hyper::service::service_fn;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::forwarding::{self, PoolConfig, idle};
use crate::runtime::{self, Lifecycle, admin, reload};

pub use certs::CertError;

/// Command-line arguments of `rigging-sidecar tls`.
///
/// Boxed so that `main`'s subcommand enum stays small whatever each sidecar's flags weigh.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The flags themselves.
    #[command(flatten)]
    pub flags: Box<Flags>,
}

/// The flags of `rigging-sidecar tls`: the contract type the operator renders.
pub use rigging_crds::sidecar::tls::TlsArgs as Flags;

/// Why the terminator could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A certificate, key or CA file is unusable (the message names it).
    #[error(transparent)]
    Cert(#[from] CertError),
    /// A listener could not be bound.
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    /// `--upstream` is not HOST:PORT.
    #[error("--upstream {value:?} is not HOST:PORT: {reason}")]
    Upstream {
        /// What was given.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// A metric could not be registered (a programming error).
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

fn parse_upstream(value: &str) -> Result<Authority, Error> {
    let authority: Authority =
        value
            .parse()
            .map_err(|err: http::uri::InvalidUri| Error::Upstream {
                value: value.to_owned(),
                reason: err.to_string(),
            })?;
    if authority.port_u16().is_none() || authority.host().is_empty() {
        return Err(Error::Upstream {
            value: value.to_owned(),
            reason: "a host and a port are both needed".into(),
        });
    }
    Ok(authority)
}

/// Everything a connection task needs, shared by all of them.
struct Terminator {
    tls: certs::Current,
    upstream: Arc<proxy::Upstream>,
    metrics: metrics::Metrics,
    handshake_timeout: Duration,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// One builder per ALPN outcome, so hyper never sniffs the first bytes. A client that
    /// sent no ALPN speaks HTTP/1.1: HTTP/2 over TLS requires ALPN (RFC 9113 §3.3).
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
}

/// Runs the terminator until SIGTERM/SIGINT, then drains and returns.
pub async fn run(args: Args) -> Result<(), Error> {
    let args = *args.flags;
    let started = std::time::Instant::now();
    let life = Lifecycle::new();
    let registry = prometheus::Registry::new();
    let metrics = metrics::Metrics::register(&registry)?;
    let authority = parse_upstream(&args.upstream)?;

    let provider = certs::provider();
    let resumption = if args.no_session_resumption {
        certs::Resumption::disabled()
    } else {
        certs::Resumption::enabled(args.session_cache_size)?
    };
    let files = certs::TlsFiles {
        cert: args.cert.clone(),
        key: args.key.clone(),
        client_ca: args.client_ca.clone(),
    };
    // Watch before the first load, so a change racing start-up is not missed.
    let changes = reload::watch_files(files.watched(), args.reload_interval, &life);
    let loaded = certs::load(&files, &resumption, &provider)?;
    metrics.cert_expiry.set(loaded.not_after);
    let current: certs::Current = Arc::new(ArcSwap::new(loaded.config));

    let listener = runtime::bind(args.listen).await?;
    if let Some(addr) = args.admin {
        admin::spawn(addr, registry.clone(), life.clone()).await?;
    }
    spawn_reloader(
        changes,
        files,
        resumption,
        provider,
        current.clone(),
        metrics.clone(),
    );

    let terminator = Arc::new(Terminator {
        tls: current,
        upstream: Arc::new(proxy::Upstream::new(
            authority,
            PoolConfig {
                connect_timeout: args.connect_timeout,
                max_idle: args.max_idle_upstream,
                ..PoolConfig::default()
            },
            metrics.clone(),
            life.tracker().clone(),
        )),
        metrics,
        handshake_timeout: args.handshake_timeout,
        header_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
        h1: forwarding::server_builder(args.header_timeout).http1_only(),
        h2: forwarding::server_builder(args.header_timeout).http2_only(),
    });

    life.set_ready(true);
    tracing::info!(
        listen = %args.listen,
        upstream = %args.upstream,
        client_auth = args.client_ca.is_some(),
        session_resumption = !args.no_session_resumption,
        startup_ms = started.elapsed().as_secs_f64() * 1e3,
        "tls terminator ready"
    );

    forwarding::accept_loop(
        &listener,
        args.max_connections as usize,
        &life,
        |tcp, peer, slot| {
            let terminator = terminator.clone();
            let stop = life.token().clone();
            async move {
                let _slot = slot;
                terminator.serve(tcp, peer, stop).await;
            }
        },
    )
    .await;
    drop(listener);
    life.drain(args.drain_timeout).await;
    Ok(())
}

/// Decrements the open-connections gauge however the connection ends.
struct OpenConnection(prometheus::IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Terminator {
    async fn serve(&self, tcp: TcpStream, peer: SocketAddr, stop: CancellationToken) {
        self.metrics.connections.inc();
        self.metrics.connections_open.inc();
        let _open = OpenConnection(self.metrics.connections_open.clone());
        let acceptor = TlsAcceptor::from(self.tls.load_full());
        let handshake = tokio::time::timeout(self.handshake_timeout, acceptor.accept(tcp));
        let tls = tokio::select! {
            _ = stop.cancelled() => return,
            result = handshake => match result {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    self.metrics.handshakes_failed.inc();
                    tracing::debug!(%peer, error = %err, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    self.metrics.handshakes_timed_out.inc();
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            },
        };
        let session = tls.get_ref().1;
        self.metrics.handshake_ok(session.protocol_version());
        if session.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            self.metrics.handshakes_resumed.inc();
        }
        let alpn_h2 = session.alpn_protocol() == Some(b"h2");
        // Wrapped only now, above TLS, so that the header timeout runs from the end of the
        // handshake and no part of the handshake timeout is added to it.
        let in_flight = Arc::new(idle::InFlight::default());
        let tls = idle::IdleIo::new(
            tls,
            self.idle_timeout,
            self.header_timeout,
            in_flight.clone(),
        );
        let builder = if alpn_h2 { &self.h2 } else { &self.h1 };

        let conn = Arc::new(proxy::Conn {
            upstream: self.upstream.clone(),
            peer_ip: HeaderValue::try_from(peer.ip().to_string())
                .expect("an IP address is a valid header value"),
            in_flight,
        });
        let service = service_fn(move |req| {
            let conn = conn.clone();
            async move { conn.handle(req).await }
        });
        if let Err(err) = forwarding::serve_connection(builder, tls, service, &stop).await {
            if let Some(status) = forwarding::answered_by_hyper(&err) {
                self.metrics.request(status);
                self.metrics.client_errors.inc();
            }
            tracing::debug!(%peer, error = %err, "client connection ended with an error");
        }
    }
}

fn spawn_reloader(
    mut changes: tokio::sync::watch::Receiver<u64>,
    files: certs::TlsFiles,
    resumption: certs::Resumption,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: certs::Current,
    metrics: metrics::Metrics,
) {
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            match certs::load(&files, &resumption, &provider) {
                Ok(loaded) => {
                    current.store(loaded.config);
                    metrics.cert_expiry.set(loaded.not_after);
                    metrics.reloads_ok.inc();
                    tracing::info!(
                        cert = %files.cert.display(),
                        not_after = loaded.not_after,
                        "certificate reloaded; new connections use it"
                    );
                }
                Err(err) => {
                    metrics.reloads_failed.inc();
                    tracing::warn!(
                        error = %err,
                        "new certificate files are unusable; still serving the previous certificate"
                    );
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_needs_host_and_port() {
        assert!(parse_upstream("127.0.0.1:8080").is_ok());
        assert!(parse_upstream("app.local:80").is_ok());
        let err = parse_upstream("127.0.0.1").unwrap_err().to_string();
        assert!(err.contains("127.0.0.1") && err.contains("port"), "{err}");
        assert!(parse_upstream("http://x:1/path").is_err());
    }
}
