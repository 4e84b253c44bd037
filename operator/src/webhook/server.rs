//! The webhook's HTTPS server: `POST /inject` answers pods' AdmissionReviews,
//! `POST /validate/pipeline` Pipelines' (refusing what their CRD's rules cannot check, a
//! stage's CEL predicate), `GET /healthz` says it is up. Its certificate is re-read when the files change (cert-manager and
//! kubelet Secret updates replace them in place), so a rotation needs no restart and
//! never refuses a pod: connections in flight keep the certificate they started with.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::Value;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::patch::{self, Outcome};
use crate::controller::RenderConfig;
use crate::metrics::Metrics;

/// How often the certificate files are looked at for a change.
const RELOAD_EVERY: Duration = Duration::from_secs(5);
/// Largest AdmissionReview accepted: a pod is far smaller (the API server caps objects at
/// 1.5 MiB, and a review carries the object twice at most).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Why the webhook could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A certificate or key file is unreadable or not PEM.
    #[error("{path}: {message}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The listen address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The serving certificate, swapped in place: when its files change (certificates from
/// files), or when the operator issues a new one (certificates it issues itself).
#[derive(Debug)]
pub struct Certificate {
    files: Option<(PathBuf, PathBuf)>,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>)>,
}

impl Certificate {
    /// Loads the PEM certificate chain at `cert` and the private key at `key`.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, WebhookError> {
        let loaded = certified_key(cert, key)?;
        Ok(Arc::new(Self {
            files: Some((cert.to_owned(), key.to_owned())),
            current: RwLock::new((Arc::new(loaded), modified(cert, key))),
        }))
    }

    /// A certificate held in memory only, replaced with [`Certificate::replace`].
    pub fn in_memory(key: CertifiedKey) -> Arc<Self> {
        Arc::new(Self {
            files: None,
            current: RwLock::new((Arc::new(key), None)),
        })
    }

    /// Serves `key` from the next handshake on.
    pub fn replace(&self, key: CertifiedKey) {
        if let Ok(mut current) = self.current.write() {
            *current = (Arc::new(key), None);
        }
    }

    /// Re-reads the files if they changed since the last load. A pair that does not load
    /// (a half-written update) is logged and the current certificate kept.
    pub fn reload_if_changed(&self) {
        let Some((cert, key)) = &self.files else {
            return;
        };
        let stamp = modified(cert, key);
        let unchanged = self.current.read().map(|c| c.1 == stamp).unwrap_or(false);
        if unchanged {
            return;
        }
        match certified_key(cert, key) {
            Ok(loaded) => {
                if let Ok(mut current) = self.current.write() {
                    *current = (Arc::new(loaded), stamp);
                }
                tracing::info!(cert = %cert.display(), "webhook certificate reloaded");
            }
            Err(error) => tracing::warn!(
                %error,
                "webhook certificate not reloaded; keeping the current one"
            ),
        }
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.0.clone())
    }
}

/// The later of the two files' modification times: what a change is judged by.
fn modified(cert: &Path, key: &Path) -> Option<SystemTime> {
    let time = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    time(cert).max(time(key))
}

fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, WebhookError> {
    let bad = |path: &Path, message: String| WebhookError::Certificate {
        path: path.to_owned(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| bad(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(cert, "no certificate in the file".into()));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
    signed(chain, der).map_err(|message| bad(key, message))
}

/// A certificate chain and its private key, ready to serve.
pub fn signed(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, String> {
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(chain, signing))
}

/// The webhook being served, until [`Serving::stop`].
#[derive(Debug)]
pub struct Serving {
    /// The bound address.
    pub local: SocketAddr,
    stop: CancellationToken,
    connections: TaskTracker,
}

impl Serving {
    /// Stops gracefully: no new connection is accepted, every open one is asked to close
    /// once the reviews in flight on it are answered (HTTP/2 GOAWAY, HTTP/1.1 `Connection:
    /// close`), and those are waited for, at most `deadline`. The API server keeps its
    /// connections to a webhook open and reuses them even after the pod left the Service's
    /// endpoints; a GOAWAY makes it send the next review over a new connection, to a
    /// replica that serves, where a closed socket would fail the review in flight.
    /// Returns whether every connection closed in time.
    pub async fn stop(self, deadline: Duration) -> bool {
        self.stop.cancel();
        self.connections.close();
        let drained = tokio::time::timeout(deadline, self.connections.wait())
            .await
            .is_ok();
        if drained {
            tracing::info!("injection webhook stopped");
        } else {
            tracing::warn!(
                open = self.connections.len(),
                "injection webhook stopped with connections still open"
            );
        }
        drained
    }
}

/// Serves the webhook on `addr` until [`Serving::stop`]; returns once listening.
pub async fn spawn(
    addr: SocketAddr,
    certificate: Arc<Certificate>,
    config: RenderConfig,
    metrics: Metrics,
) -> Result<Serving, WebhookError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| WebhookError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| WebhookError::Bind { addr, source })?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| WebhookError::Certificate {
        path: PathBuf::from("(TLS configuration)"),
        message: e.to_string(),
    })?
    .with_no_client_auth()
    .with_cert_resolver(certificate.clone());
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let reloading = certificate.clone();
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stopped.cancelled() => return,
                () = tokio::time::sleep(RELOAD_EVERY) => reloading.reload_if_changed(),
            }
        }
    });
    // From the shutdown signal on, each HTTP/1.1 reply closes its connection. The API
    // server calls webhooks over HTTP/1.1 (kubernetes#82090) and keeps idle connections
    // to reuse, even to a pod that is stopping (kubernetes#127335); a connection still
    // idle when this process closes it at the end of its delay can meet a review the API
    // server has just written, which fails that review ("broken pipe"), and with
    // `failurePolicy: Fail` refuses its pod. A reply that says `Connection: close` leaves
    // the API server nothing to reuse.
    let closing = Arc::new(AtomicBool::new(false));
    let (flag, signal) = (closing.clone(), crate::manager::shutdown_signal());
    tokio::spawn(async move {
        signal.await;
        flag.store(true, Ordering::Relaxed);
    });
    let config = Arc::new(config);
    tracing::info!(%local, "injection webhook listening");
    let (accepting, tracker) = (stop.clone(), connections.clone());
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = accepting.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    // Out of file descriptors, mostly: back off instead of spinning.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let (acceptor, config, metrics) = (acceptor.clone(), config.clone(), metrics.clone());
            let (stop, closing) = (accepting.clone(), closing.clone());
            tracker.spawn(async move {
                let handshake =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                let Ok(Ok(stream)) = handshake.await else {
                    return;
                };
                let service = service_fn(move |req: Request<Incoming>| {
                    let (config, metrics) = (config.clone(), metrics.clone());
                    // `Connection` has no place in HTTP/2, whose connections GOAWAY ends.
                    let close = req.version() < Version::HTTP_2 && closing.load(Ordering::Relaxed);
                    async move {
                        let mut response = respond(req, &config, &metrics).await;
                        if close {
                            response
                                .headers_mut()
                                .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10));
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                tokio::pin!(connection);
                tokio::select! {
                    _ = connection.as_mut() => {}
                    () = stop.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                }
            });
        }
    });
    Ok(Serving {
        local,
        stop,
        connections,
    })
}

async fn respond(
    req: Request<Incoming>,
    config: &RenderConfig,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
        (&Method::POST, path @ ("/inject" | "/validate/pipeline")) => {
            let pipeline = path == "/validate/pipeline";
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(body) => body.to_bytes(),
                Err(e) => {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        format!("reading the body: {e}\n").into_bytes(),
                    );
                }
            };
            let review = match pipeline {
                true => review_pipeline(&body, metrics),
                false => review(&body, config, metrics),
            };
            let json = serde_json::to_vec(&review).unwrap_or_default();
            reply(StatusCode::OK, "application/json", json)
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            b"not found: POST /inject, POST /validate/pipeline, GET /healthz\n".to_vec(),
        ),
    }
}

/// The AdmissionReview that answers `body`: a patch, an untouched pass, or a denial
/// whose message names what is wrong. Never an error status, which the API server would
/// treat by `failurePolicy` instead of showing the user the reason.
pub fn review(
    body: &[u8],
    config: &RenderConfig,
    metrics: &Metrics,
) -> AdmissionReview<DynamicObject> {
    let count = |outcome: &str| metrics.admissions.with_label_values(&[outcome]).inc();
    let (raw, request) = match parse(body, metrics) {
        Ok(parsed) => parsed,
        Err(refusal) => return refusal,
    };
    let response = AdmissionResponse::from(&request);
    let Some(pod) = raw.pointer("/request/object") else {
        count("untouched");
        return response.into_review();
    };
    match patch::inject(pod, config) {
        Outcome::Untouched(why) => {
            tracing::debug!(uid = %request.uid, why, "pod passed untouched");
            count("untouched");
            response.into_review()
        }
        Outcome::Deny(message) => {
            tracing::info!(uid = %request.uid, %message, "pod refused");
            count("denied");
            response.deny(message).into_review()
        }
        Outcome::Inject { patch, injected } => match response.clone().with_patch(patch) {
            Ok(with_patch) => {
                tracing::info!(uid = %request.uid, %injected, "sidecars injected");
                count("injected");
                with_patch.into_review()
            }
            Err(e) => {
                count("denied");
                response
                    .deny(format!("cannot serialise the patch: {e}"))
                    .into_review()
            }
        },
    }
}

/// The review as JSON and as kube reads it, or the answer that it is not one (counted
/// as `invalid`).
#[allow(clippy::result_large_err)]
fn parse(
    body: &[u8],
    metrics: &Metrics,
) -> Result<(Value, AdmissionRequest<DynamicObject>), AdmissionReview<DynamicObject>> {
    let not_a_review = |e: String| {
        metrics.admissions.with_label_values(&["invalid"]).inc();
        AdmissionResponse::invalid(format!("not an AdmissionReview: {e}")).into_review()
    };
    let raw: Value = serde_json::from_slice(body).map_err(|e| not_a_review(e.to_string()))?;
    let parsed: AdmissionReview<DynamicObject> =
        serde_json::from_value(raw.clone()).map_err(|e| not_a_review(e.to_string()))?;
    let request: AdmissionRequest<DynamicObject> =
        parsed
            .try_into()
            .map_err(|e: kube::core::admission::ConvertAdmissionReviewError| {
                not_a_review(e.to_string())
            })?;
    Ok((raw, request))
}

/// The AdmissionReview that answers a Pipeline's `body`: allowed, or denied naming each
/// stage and field that cannot run (a predicate that is not CEL over `message`). A
/// Pipeline that does not even parse is allowed here: the API server's schema refuses
/// it, with its own message.
pub fn review_pipeline(body: &[u8], metrics: &Metrics) -> AdmissionReview<DynamicObject> {
    let count = |outcome: &str| metrics.admissions.with_label_values(&[outcome]).inc();
    let (raw, request) = match parse(body, metrics) {
        Ok(parsed) => parsed,
        Err(refusal) => return refusal,
    };
    let response = AdmissionResponse::from(&request);
    let pipeline = raw
        .pointer("/request/object")
        .cloned()
        .and_then(|o| serde_json::from_value::<rigging_crds::Pipeline>(o).ok());
    match pipeline.map(|p| crate::pipeline::desired::validate(&p)) {
        Some(Err(errors)) => {
            tracing::info!(uid = %request.uid, %errors, "pipeline refused");
            count("denied");
            response.deny(errors.to_string()).into_review()
        }
        _ => {
            count("untouched");
            response.into_review()
        }
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&k, key.serialize_pem()).unwrap();
        std::fs::write(&c, cert.pem()).unwrap();
        (c, k)
    }

    fn served(certificate: &Certificate) -> Vec<u8> {
        certificate.current.read().unwrap().0.cert[0].to_vec()
    }

    #[test]
    fn a_replaced_certificate_is_served_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "first.example");
        let certificate = Certificate::load(&cert, &key).unwrap();
        let first = served(&certificate);
        certificate.reload_if_changed();
        assert_eq!(
            served(&certificate),
            first,
            "unchanged files, same certificate"
        );

        // File times have a coarse grain on some filesystems: make the change visible.
        std::thread::sleep(Duration::from_millis(20));
        write_pair(dir.path(), "second.example");
        let later = SystemTime::now() + Duration::from_secs(1);
        for path in [&cert, &key] {
            let file = std::fs::File::options().write(true).open(path).unwrap();
            file.set_modified(later).unwrap();
        }
        certificate.reload_if_changed();
        let second = served(&certificate);
        assert_ne!(second, first, "the new certificate is served");

        std::fs::write(&key, "not a key").unwrap();
        let file = std::fs::File::options().write(true).open(&key).unwrap();
        file.set_modified(later + Duration::from_secs(1)).unwrap();
        certificate.reload_if_changed();
        assert_eq!(
            served(&certificate),
            second,
            "a broken pair keeps the current one"
        );
        assert!(
            Certificate::load(&cert, &key)
                .unwrap_err()
                .to_string()
                .contains("tls.key")
        );
    }
}
