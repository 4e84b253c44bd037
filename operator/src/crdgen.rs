//! The CustomResourceDefinitions of every Rigging kind, as committed under `crds/`.

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use rigging_crds::{ReplicatedService, ShardedService, WorkQueue};

/// Every CRD, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        ReplicatedService::crd(),
        ShardedService::crd(),
        WorkQueue::crd(),
    ]
}

/// The file a CRD is committed as: `<plural>.<group>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// One CRD as YAML, the way it is committed.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_norway::Error> {
    serde_norway::to_string(crd)
}

/// Every CRD as one multi-document YAML stream.
pub fn all_yaml() -> Result<String, serde_norway::Error> {
    let docs = all().iter().map(to_yaml).collect::<Result<Vec<_>, _>>()?;
    Ok(docs.join("---\n"))
}

/// Writes each CRD to its own file in `dir`, returning the paths written.
pub fn write_all(dir: &Path) -> Result<Vec<PathBuf>, CrdgenError> {
    let mut written = Vec::new();
    for crd in all() {
        let path = dir.join(file_name(&crd));
        let yaml = to_yaml(&crd).map_err(CrdgenError::Yaml)?;
        std::fs::write(&path, yaml).map_err(|source| CrdgenError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

/// Why the CRDs could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CrdgenError {
    /// A CRD did not serialise.
    #[error("serialising a CRD to YAML: {0}")]
    Yaml(#[source] serde_norway::Error),
    /// A file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}
