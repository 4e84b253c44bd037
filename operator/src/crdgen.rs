//! The CustomResourceDefinitions of every Rigging kind, as committed under `crds/`, and
//! their upgrade by `run --upgrade-crds`: Helm installs a chart's `crds/` once and never
//! upgrades them, so without it a release's new fields would be pruned from every object.

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, CustomResourceExt, Resource};
use rigging_crds::{
    MapReduce, Pipeline, ReplicatedService, ScatterGather, ShardedService, WorkQueue,
};

/// The annotation of each CRD that names the Rigging release whose types it carries.
pub const VERSION_ANNOTATION: &str = "rigging.dev/version";

/// This build's release, which its CRDs carry in [`VERSION_ANNOTATION`].
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `each!(f)`: `vec![f::<Kind>(), …]` over every Rigging kind, in a stable order: the one
/// list of kinds [`all`] and [`plurals`] share.
macro_rules! each {
    ($f:ident) => {
        vec![
            $f::<MapReduce>(),
            $f::<Pipeline>(),
            $f::<ReplicatedService>(),
            $f::<ScatterGather>(),
            $f::<ShardedService>(),
            $f::<WorkQueue>(),
        ]
    };
}

fn plural<K: Resource<DynamicType = ()>>() -> String {
    K::plural(&()).into_owned()
}

fn crd<K: CustomResourceExt>() -> CustomResourceDefinition {
    K::crd()
}

/// The resource names (plurals) of Rigging's kinds: what [`all`] defines, without building
/// its schemas, which takes seconds in a debug build and many more on a busy machine.
pub fn plurals() -> Vec<String> {
    each!(plural)
}

/// Every CRD, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    let mut crds = each!(crd);
    for crd in &mut crds {
        crd.metadata
            .annotations
            .get_or_insert_default()
            .insert(VERSION_ANNOTATION.into(), VERSION.into());
    }
    crds
}

/// What [`upgrade`] did with one CRD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upgrade {
    /// Applied: the cluster now serves this build's schema (a no-op when it already did).
    Applied,
    /// Not installed: installing is the chart's job (or `kubectl apply -f crds/`), not the
    /// operator's, which holds no right to create CRDs.
    Missing,
    /// Left alone, because a newer release wrote it (a rollback, or an old replica starting
    /// during an upgrade): applying this build's schema would prune the newer fields from
    /// every object.
    Newer(String),
}

/// Whether this build (`ours`) applies its CRD over one that carries the release
/// `installed` in [`VERSION_ANNOTATION`]. A CRD without the annotation, or with one that is
/// not a version, predates it and is upgraded.
pub fn decide(installed: Option<&str>, ours: &semver::Version) -> Upgrade {
    match installed.map(semver::Version::parse) {
        Some(Ok(theirs)) if theirs > *ours => Upgrade::Newer(theirs.to_string()),
        _ => Upgrade::Applied,
    }
}

/// Brings every installed Rigging CRD to this build's schema by server-side apply, unless a
/// newer release wrote it. Returns each CRD's name and what was done.
pub async fn upgrade(client: &Client) -> Result<Vec<(String, Upgrade)>, UpgradeError> {
    let ours = semver::Version::parse(VERSION).expect("the crate's version is semver");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    // Forced: the fields belong to whoever installed the CRDs (helm, kubectl), and are
    // ours to change from now on.
    let params = PatchParams::apply(crate::controller::MANAGER).force();
    let mut done = Vec::new();
    for crd in all() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let failed = |source| UpgradeError {
            name: name.clone(),
            source,
        };
        let outcome = match api.get_opt(&name).await.map_err(failed)? {
            None => Upgrade::Missing,
            Some(installed) => {
                let theirs = installed
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(VERSION_ANNOTATION));
                let outcome = decide(theirs.map(String::as_str), &ours);
                if outcome == Upgrade::Applied {
                    api.patch(&name, &params, &Patch::Apply(&crd))
                        .await
                        .map_err(failed)?;
                }
                outcome
            }
        };
        done.push((name, outcome));
    }
    Ok(done)
}

/// A CRD could not be read or applied.
#[derive(Debug, thiserror::Error)]
#[error("upgrading the CustomResourceDefinition {name}: {source}")]
pub struct UpgradeError {
    /// The CRD.
    pub name: String,
    /// The API server's answer.
    #[source]
    pub source: kube::Error,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn version(v: &str) -> semver::Version {
        semver::Version::parse(v).unwrap()
    }

    #[test]
    fn the_plurals_are_those_of_every_crd() {
        let defined: Vec<String> = all().into_iter().map(|c| c.spec.names.plural).collect();
        assert_eq!(plurals(), defined);
    }

    #[test]
    fn an_operator_upgrades_older_and_unmarked_crds_and_never_downgrades_newer_ones() {
        let ours = version("0.3.0");
        assert_eq!(decide(None, &ours), Upgrade::Applied);
        assert_eq!(decide(Some("not a version"), &ours), Upgrade::Applied);
        assert_eq!(decide(Some("0.2.9"), &ours), Upgrade::Applied);
        assert_eq!(decide(Some("0.3.0"), &ours), Upgrade::Applied);
        // A release candidate precedes its release.
        assert_eq!(decide(Some("0.3.0-rc.1"), &ours), Upgrade::Applied);
        assert_eq!(decide(Some("0.3.1"), &ours), Upgrade::Newer("0.3.1".into()));
        assert_eq!(
            decide(Some("0.3.0"), &version("0.3.0-rc.2")),
            Upgrade::Newer("0.3.0".into())
        );
    }

    #[test]
    fn every_crd_carries_the_release_it_was_generated_by() {
        for crd in all() {
            let annotations = crd.metadata.annotations.unwrap_or_default();
            assert_eq!(
                annotations.get(VERSION_ANNOTATION).map(String::as_str),
                Some(VERSION)
            );
        }
    }
}
