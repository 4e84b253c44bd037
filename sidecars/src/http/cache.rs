//! The cache tier (the book's Varnish layer). Interface only so far: every request goes
//! to the backend.

use std::future::Future;

use http::Response;
use http::request::Parts;
use rigging_crds::sidecar::http as config;

use super::metrics::Metrics;
use crate::forwarding::ResponseBody;

/// The response cache shared by every route with `cache: true`.
pub struct Cache {
    config: config::Cache,
}

impl Cache {
    /// An empty cache bounded by `config`.
    pub fn new(config: &config::Cache, metrics: &Metrics) -> Self {
        let _ = metrics;
        Self {
            config: config.clone(),
        }
    }

    /// The config it was built from (a reload with the same keeps the cache).
    pub fn config(&self) -> &config::Cache {
        &self.config
    }

    /// Answers a GET or HEAD (`parts`) from the cache, or through `fetch`, which sends the
    /// request it is given to the route's backend (retries, balancing and all) and returns
    /// the response, or the proxy's own error answer (502, 503, 504).
    pub async fn serve<F, Fut>(&self, parts: &Parts, fetch: F) -> Response<ResponseBody>
    where
        F: Fn(Parts) -> Fut,
        Fut: Future<Output = Response<ResponseBody>>,
    {
        fetch(parts.clone()).await
    }
}
