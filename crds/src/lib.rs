//! Rigging's Kubernetes API, group `rigging.dev`, version `v1alpha1`.
