//! `/status` on the admin port: every backend's servers and their state, as JSON (the
//! stats page of an HAProxy setup).

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

use super::backend::BackendStatus;
use super::table::{Destination, Table};
use crate::runtime::admin::JsonPage;

/// `/status`, rendered from the table serving at the time of the request.
pub fn page(table: Arc<ArcSwap<Table>>) -> JsonPage<impl Fn() -> Vec<u8> + Send + Sync + 'static> {
    JsonPage::new("/status", move || render(&table.load()))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    routes: Vec<RouteStatus>,
    backends: Vec<BackendStatus>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RouteStatus {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    arms: Vec<ArmStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mirror: Option<String>,
    cache: bool,
    rate_limited: bool,
}

#[derive(Serialize)]
struct ArmStatus {
    name: String,
    backend: String,
}

/// The status of `table`, as JSON.
pub fn render(table: &Table) -> Vec<u8> {
    let status = Status {
        routes: table
            .routes
            .iter()
            .map(|r| {
                let (backend, arms) = match &r.destination {
                    Destination::Backend(b) => (Some(b.name.clone()), Vec::new()),
                    Destination::Split(_) => (
                        None,
                        r.config()
                            .split
                            .iter()
                            .flat_map(|s| &s.arms)
                            .map(|a| ArmStatus {
                                name: a.name.clone(),
                                backend: a.backend.clone(),
                            })
                            .collect(),
                    ),
                };
                RouteStatus {
                    name: r.name.clone(),
                    backend,
                    arms,
                    mirror: r.mirror.as_ref().map(|m| m.backend.name.clone()),
                    cache: r.cache,
                    rate_limited: r.rate_limit.is_some(),
                }
            })
            .collect(),
        backends: table.backends.values().map(|b| b.status()).collect(),
    };
    serde_json::to_vec_pretty(&status).expect("the status serializes")
}
