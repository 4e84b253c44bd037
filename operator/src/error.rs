//! The operator's one error type.

/// Everything a reconcile can fail with; each is retried with backoff. (An invalid spec is
/// not an error of the reconcile: it becomes a condition and an Event, and waits for an
/// edit.)
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    /// Listing the pods a kind asks before its desired state failed.
    #[error("listing pods {selector} in {namespace}: {source}")]
    ListPods {
        /// The namespace.
        namespace: String,
        /// The label selector.
        selector: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
}

/// Result of the operator's fallible operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A short, stable label for the `error` label of the error counter.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::MissingNamespace { .. } => "missing_namespace",
            Error::Apply { .. } => "apply",
            Error::StatusPatch { .. } => "status_patch",
            Error::ListPods { .. } => "list_pods",
        }
    }
}
