//! The reduce's ConfigMap: the run, its summary and (when small enough) its result, where
//! `kubectl get configmap` and the apps of the cluster find them without a NATS client.
//! Applied server-side under its own field manager, so that running it again (a retried
//! Job re-emitting a stored result) is the same apply, and a key this manager stops
//! writing (`result.json` of a result that has outgrown the limit) is removed.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use rigging_crds::sidecar::batch::REDUCE_FIELD_MANAGER;
use serde_json::json;

/// What the ConfigMap says of the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultData {
    /// The result itself, under this key (`result.json`, `result.jsonl`).
    Inline {
        /// The data key.
        key: &'static str,
        /// The result.
        text: String,
    },
    /// Where the result is, for a result over the inline limit (or not text).
    Elsewhere(String),
}

/// Why the ConfigMap was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ConfigMapError {
    /// No client: neither in-cluster config nor a kubeconfig.
    #[error("cannot reach the API server to apply ConfigMap {namespace}/{name}: {source}")]
    Client {
        /// The ConfigMap.
        name: String,
        /// Its namespace.
        namespace: String,
        /// Why.
        source: kube::Error,
    },
    /// The API server refused the apply.
    #[error("cannot apply ConfigMap {namespace}/{name}: {source}")]
    Apply {
        /// The ConfigMap.
        name: String,
        /// Its namespace.
        namespace: String,
        /// Why.
        source: kube::Error,
    },
}

/// Applies the ConfigMap `namespace/name` with `run`, `summary.json` and the result.
pub async fn apply(
    name: &str,
    namespace: &str,
    run: &str,
    summary: &str,
    result: ResultData,
) -> Result<(), ConfigMapError> {
    let client = kube::Client::try_default()
        .await
        .map_err(|source| ConfigMapError::Client {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            source,
        })?;
    let mut data = serde_json::Map::new();
    data.insert("run".into(), json!(run));
    data.insert("summary.json".into(), json!(summary));
    match result {
        ResultData::Inline { key, text } => data.insert(key.into(), json!(text)),
        ResultData::Elsewhere(place) => data.insert("result".into(), json!(place)),
    };
    let config_map = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    });
    Api::<ConfigMap>::namespaced(client, namespace)
        .patch(
            name,
            &PatchParams::apply(REDUCE_FIELD_MANAGER).force(),
            &Patch::Apply(&config_map),
        )
        .await
        .map(drop)
        .map_err(|source| ConfigMapError::Apply {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            source,
        })
}
