//! The operator's one error type.

use rigging_crds::FieldErrors;

/// Everything a reconcile can fail with. User mistakes ([`Error::InvalidSpec`]) become a
/// condition and an Event; the rest are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec breaks a rule the schema could not express.
    #[error("invalid spec: {0}")]
    InvalidSpec(#[source] FieldErrors),
    /// A namespaced object arrived without a namespace.
    #[error("{kind} {name} has no namespace")]
    MissingNamespace {
        /// Kind of the object.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// Server-side apply of a child failed.
    #[error("applying {kind} {namespace}/{name}: {source}")]
    Apply {
        /// Kind of the child.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// Writing the status subresource failed.
    #[error("patching status of {namespace}/{name}: {source}")]
    StatusPatch {
        /// Namespace of the object.
        namespace: String,
        /// Its name.
        name: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// An object did not serialise (a bug).
    #[error("serialising {what}: {source}")]
    Serialize {
        /// What was being serialised.
        what: &'static str,
        /// The serialiser's error.
        #[source]
        source: serde_json::Error,
    },
}

/// Result of the operator's fallible operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A short, stable label for the `error` label of the error counter.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "invalid_spec",
            Error::MissingNamespace { .. } => "missing_namespace",
            Error::Apply { .. } => "apply",
            Error::StatusPatch { .. } => "status_patch",
            Error::Serialize { .. } => "serialize",
        }
    }
}
