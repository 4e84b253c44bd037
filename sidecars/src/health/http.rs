//! `http://` checks: a GET on a fresh connection, the status against the accepted
//! ranges, and the body against a regex when one is given.

use std::ops::RangeInclusive;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use regex::Regex;

use super::CheckError;
use crate::runtime::error_chain;

/// Bodies are read up to this size for the `body=` match; more is an error.
const MAX_BODY: usize = 1 << 20;

/// The client every HTTP check shares. No pooled connections: each check opens its own,
/// as the kubelet does, so a server that stopped accepting is seen at once.
pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A client for HTTP checks.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

/// Runs one HTTP check.
pub async fn check(
    client: &HttpClient,
    uri: &http::Uri,
    status: &[RangeInclusive<u16>],
    body: Option<&Regex>,
) -> Result<(), CheckError> {
    let request = http::Request::get(uri.clone())
        .header(http::header::USER_AGENT, "rigging-sidecar-health")
        .body(Empty::new())
        .map_err(|e| CheckError::Http(e.to_string()))?;
    let response = client
        .request(request)
        .await
        .map_err(|e| CheckError::Http(error_chain(&e)))?;
    let code = response.status().as_u16();
    if !status.iter().any(|range| range.contains(&code)) {
        return Err(CheckError::Status {
            got: code,
            want: status
                .iter()
                .map(|r| match r.start() == r.end() {
                    true => r.start().to_string(),
                    false => format!("{}-{}", r.start(), r.end()),
                })
                .collect::<Vec<_>>()
                .join(","),
        });
    }
    if let Some(pattern) = body {
        let bytes = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| CheckError::Http(format!("reading the body: {e}")))?
            .to_bytes();
        if !pattern.is_match(&String::from_utf8_lossy(&bytes)) {
            return Err(CheckError::Body {
                pattern: pattern.as_str().to_owned(),
            });
        }
    }
    Ok(())
}
