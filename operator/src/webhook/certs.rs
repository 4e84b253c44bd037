//! The webhook's certificates when the operator manages them itself: one CA, kept in a
//! Secret of the operator's namespace so that every replica, every restart and every
//! `helm upgrade` shares it, and a serving certificate that each replica issues from it in
//! memory and renews long before it expires. The CA is what the API server trusts (the
//! MutatingWebhookConfiguration's caBundle); since it never changes, renewing a serving
//! certificate can never make the API server refuse a pod.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::server::{Certificate, signed};

/// How long the CA is valid: ten years. Replacing it is a deliberate act (delete the
/// Secret, restart the operator), never a side effect of an upgrade.
const CA_DAYS: i64 = 3650;
/// How long a serving certificate is valid.
const SERVING_DAYS: i64 = 90;
/// A serving certificate is renewed once this much of its life has passed, and the
/// caBundle is checked as often.
const CHECK_EVERY: Duration = Duration::from_secs(600);
const RENEW_AFTER: Duration = Duration::from_secs(60 * 86_400);
/// How soon a caBundle that could not be published is tried again: at first, and at most
/// (doubling in between). Helm creates the MutatingWebhookConfiguration after the
/// Deployment, so a replica can start before it exists, and until it holds the CA every
/// labelled pod is refused.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Keys of the CA Secret.
const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";

/// Why the webhook's certificates could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The CA Secret could not be read or created.
    #[error("webhook CA Secret {namespace}/{name}: {source}")]
    Secret {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The Secret exists but does not hold a CA this operator can use.
    #[error("webhook CA Secret {namespace}/{name}: {message} (delete it to have a new CA made)")]
    BadSecret {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A certificate could not be made.
    #[error("issuing a webhook certificate: {0}")]
    Issue(String),
}

/// Where the operator keeps its CA, and what its serving certificate names.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespace of the CA Secret (the operator's own).
    pub namespace: String,
    /// Name of the CA Secret.
    pub secret: String,
    /// The MutatingWebhookConfiguration whose caBundle the operator keeps current.
    pub configuration: String,
    /// Names (DNS names or IP addresses) the serving certificate is valid for: the
    /// webhook Service's DNS names.
    pub hosts: Vec<String>,
}

/// The CA, as read from or written to its Secret.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    der: CertificateDer<'static>,
}

impl Authority {
    /// The CA certificate, PEM: the caBundle.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    fn generate() -> Result<Self, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(issue)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(DnType::CommonName, "rigging-operator webhook CA");
        params.not_after = time_from_now(CA_DAYS);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(issue)?;
        let made = CertifiedIssuer::self_signed(params, key).map_err(issue)?;
        let (pem, der) = (made.pem(), made.der().clone());
        let issuer = Issuer::from_ca_cert_der(
            &der,
            KeyPair::from_pem(&made.key().serialize_pem()).map_err(issue)?,
        )
        .map_err(issue)?;
        Ok(Self { issuer, pem, der })
    }

    fn from_pem(cert: &str, key: &str) -> Result<Self, String> {
        let key = KeyPair::from_pem(key).map_err(|e| format!("{CA_KEY}: {e}"))?;
        let der = CertificateDer::from_pem_slice(cert.as_bytes())
            .map_err(|e| format!("{CA_CERT}: {e}"))?;
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| format!("{CA_CERT}: {e}"))?;
        Ok(Self {
            issuer,
            pem: cert.to_owned(),
            der,
        })
    }

    /// A serving certificate for `hosts`, signed by this CA.
    pub fn issue(&self, hosts: &[String]) -> Result<rustls::sign::CertifiedKey, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(issue)?;
        params.subject_alt_names = hosts
            .iter()
            .map(|h| match h.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => h.clone().try_into().map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()
            .map_err(issue)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_after = time_from_now(SERVING_DAYS);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(issue)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(issue)?;
        let chain = vec![CertificateDer::from(cert.der().to_vec()), self.der.clone()];
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        signed(chain, der).map_err(CertError::Issue)
    }
}

fn issue(e: impl std::fmt::Display) -> CertError {
    CertError::Issue(e.to_string())
}

fn time_from_now(days: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(days)
}

/// The CA of `settings`: read from its Secret, or made and stored there when there is
/// none. Two replicas starting at once both try to create it; the one that loses reads
/// the winner's.
pub async fn authority(client: &Client, settings: &Settings) -> Result<Authority, CertError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    let failed = |source| CertError::Secret {
        namespace: settings.namespace.clone(),
        name: settings.secret.clone(),
        source,
    };
    if let Some(secret) = secrets.get_opt(&settings.secret).await.map_err(failed)? {
        return from_secret(&secret, settings);
    }
    let made = Authority::generate()?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(settings.secret.clone()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_owned(),
                    crate::controller::MANAGER.to_owned(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            [
                (
                    CA_CERT.to_owned(),
                    ByteString(made.pem.clone().into_bytes()),
                ),
                (
                    CA_KEY.to_owned(),
                    ByteString(made.issuer.key().serialize_pem().into_bytes()),
                ),
            ]
            .into(),
        ),
        ..Secret::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(namespace = %settings.namespace, name = %settings.secret, "made the webhook CA");
            Ok(made)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let secret = secrets.get(&settings.secret).await.map_err(failed)?;
            from_secret(&secret, settings)
        }
        Err(source) => Err(failed(source)),
    }
}

fn from_secret(secret: &Secret, settings: &Settings) -> Result<Authority, CertError> {
    let field = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .ok_or_else(|| format!("no {key}"))
    };
    field(CA_CERT)
        .and_then(|cert| Ok((cert, field(CA_KEY)?)))
        .and_then(|(cert, key)| Authority::from_pem(&cert, &key))
        .map_err(|message| CertError::BadSecret {
            namespace: settings.namespace.clone(),
            name: settings.secret.clone(),
            message,
        })
}

/// Sets the caBundle of every webhook in the configuration to `ca`, where it differs.
/// Returns whether the configuration now holds `ca`: `false` when it does not exist (yet).
pub async fn publish_ca_bundle(
    client: &Client,
    configuration: &str,
    ca: &str,
) -> Result<bool, kube::Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(live) = api.get_opt(configuration).await? else {
        tracing::warn!(%configuration, "MutatingWebhookConfiguration not found; caBundle published once it exists");
        return Ok(false);
    };
    let want = ByteString(ca.as_bytes().to_vec());
    let mut ops = Vec::new();
    for (i, webhook) in live.webhooks.iter().flatten().enumerate() {
        if webhook.client_config.ca_bundle.as_ref() != Some(&want) {
            // Test the name first: the list must not have changed under the patch.
            ops.push(serde_json::json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": webhook.name}));
            ops.push(serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": want}));
        }
    }
    if ops.is_empty() {
        return Ok(true);
    }
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(ops)).map_err(kube::Error::SerdeError)?;
    api.patch(
        configuration,
        &PatchParams::default(),
        &Patch::Json::<()>(patch),
    )
    .await?;
    tracing::info!(%configuration, "published the webhook CA as caBundle");
    Ok(true)
}

/// Issues the serving certificate, then keeps it fresh and the caBundle current until the
/// process ends. Returns the certificate to serve.
pub async fn managed(client: Client, settings: Settings) -> Result<Arc<Certificate>, CertError> {
    let ca = authority(&client, &settings).await?;
    let certificate = Certificate::in_memory(ca.issue(&settings.hosts)?);
    let serving = certificate.clone();
    tokio::spawn(async move {
        let mut issued = std::time::Instant::now();
        let mut retry = RETRY_FIRST;
        loop {
            let published = publish_ca_bundle(&client, &settings.configuration, ca.pem())
                .await
                .unwrap_or_else(|error| {
                    tracing::warn!(%error, configuration = %settings.configuration, "caBundle not published; retrying");
                    false
                });
            if issued.elapsed() >= RENEW_AFTER {
                match ca.issue(&settings.hosts) {
                    Ok(key) => {
                        serving.replace(key);
                        issued = std::time::Instant::now();
                        tracing::info!("renewed the webhook's serving certificate");
                    }
                    Err(error) => {
                        tracing::warn!(%error, "serving certificate not renewed; retrying")
                    }
                }
            }
            let wait = if published {
                retry = RETRY_FIRST;
                CHECK_EVERY
            } else {
                let wait = retry;
                retry = (retry * 2).min(RETRY_MAX);
                wait
            };
            tokio::time::sleep(wait).await;
        }
    });
    Ok(certificate)
}
