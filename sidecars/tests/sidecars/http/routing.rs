//! Routing, splits, mirrors, retries, limits and reloads.
