//! Source mode: the poller that asks each WorkQueue's source container for its items and
//! persists the new ones, before any Job exists for them.
//!
//! The source serves the book's interface: `GET /api/v1/items` answers the item names,
//! either as a JSON list (`["a", "b"]`) or as the book's `ItemList`
//! (`{"kind": "ItemList", "apiVersion": "v1", "items": ["a", "b"]}`). The poller adds every
//! name it has not seen to the ConfigMap `<queue>-items` under the key
//! `<sequence>.<job>` ([`desired::source_key`]), the sequence number counting on from the
//! highest already there; the reconcile then reads the items from that ConfigMap (through
//! the watch cache) and gives them Jobs in sequence order.
//!
//! Nothing listed is ever lost and nothing is added twice:
//! - the ConfigMap is read live (not from a cache) before each write, and an item whose Job
//!   name is already a key is not added again;
//! - the write is a JSON merge patch that only adds keys, under its own field manager
//!   ([`FIELD_MANAGER`]), with the resourceVersion just read as a precondition: a key is
//!   never removed (the operator's own server-side apply of the ConfigMap carries no data in
//!   source mode, so it owns no key to drop), and a concurrent write makes this one fail
//!   with a conflict instead of racing it; the next poll reads again;
//! - the source's answer is checked whole before anything is written: a bad answer (not
//!   JSON, not a list of names, a 500) is an error that names the URL, and the items
//!   already persisted stay as they are. An item the source stops listing keeps its key:
//!   it was seen, so it is processed.
//!
//! Why a merge patch and not a server-side apply: an apply removes every key its field
//! manager applied before and leaves out now, so each apply would have to repeat every key
//! ever added (up to 1 MiB, on every poll), and one that missed a key would delete an item.
//! A merge patch cannot remove a key it does not name.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use rigging_crds::WorkQueue;
use tokio::time::Instant;

use super::desired::{self, CONFIG_MAP_LIMIT};
use super::naming;
use crate::controller::Context;
use crate::controller::children::controlled_by;

/// The field manager of the poller's writes: it owns the keys it adds, and only those.
pub const FIELD_MANAGER: &str = "rigging-operator-source";
/// Longest wait for the source's answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read from a source: twice what the ConfigMap of items holds, room for
/// every name it can keep and the JSON around them. A longer list could not be persisted
/// whole anyway, and this bounds what a poll holds in memory ([`CONCURRENT_POLLS`] of
/// them at once).
pub const MAX_ANSWER: usize = 2 * CONFIG_MAP_LIMIT;
/// Longest item name, as for `spec.items`.
pub const MAX_ITEM: usize = 4096;
/// The path of the item list in the book's source interface.
pub const ITEMS_PATH: &str = "/api/v1/items";

/// Why a poll added nothing (or not everything).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source could not be reached, or did not answer in time.
    #[error("GET {url}: {error}")]
    Unreachable {
        /// What was asked.
        url: String,
        /// What went wrong.
        error: String,
    },
    /// The source answered with a status other than 200.
    #[error("GET {url}: the source answered {status}: {body}")]
    Status {
        /// What was asked.
        url: String,
        /// The status code.
        status: u16,
        /// The start of its body.
        body: String,
    },
    /// The answer is not a list of item names.
    #[error("GET {url}: {problem}; nothing was added")]
    BadAnswer {
        /// What was asked.
        url: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The ConfigMap of items does not exist yet: the reconcile creates it.
    #[error("ConfigMap {namespace}/{name} does not exist yet; the reconcile creates it")]
    NoConfigMap {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The ConfigMap of items belongs to someone else: nothing is written into it.
    #[error(
        "ConfigMap {namespace}/{name} is not controlled by WorkQueue {queue}; nothing was added"
    )]
    NotOwned {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The WorkQueue.
        queue: String,
    },
    /// The API server refused a read or a write.
    #[error("{action} ConfigMap {namespace}/{name}: {source}")]
    Api {
        /// `reading` or `adding items to`.
        action: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// Some items were not added: the ConfigMap is full, or an item's hash clashes with
    /// another's. Those that fit were added.
    #[error("ConfigMap {namespace}/{name}: {added} items added, {} not: {}", .refused.len(), .refused.join("; "))]
    Refused {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// How many were added.
        added: usize,
        /// Each item not added, and why.
        refused: Vec<String>,
    },
}

/// An HTTP client for sources: plain HTTP (the source is a Service in the cluster), one
/// request at a time per queue, a timeout on each.
#[derive(Clone)]
pub struct SourceClient {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for SourceClient {
    fn default() -> Self {
        Self::new()
    }
}

impl SourceClient {
    /// A client with connect and answer timeouts of [`REQUEST_TIMEOUT`].
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(REQUEST_TIMEOUT));
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// The item names the source at `base` (`http://host:port`) lists now, checked.
    pub async fn list(&self, base: &str) -> Result<Vec<String>, SourceError> {
        let url = format!("{}{ITEMS_PATH}", base.trim_end_matches('/'));
        let unreachable = |error: String| SourceError::Unreachable {
            url: url.clone(),
            error,
        };
        let uri: http::Uri = url.parse().map_err(|e| unreachable(format!("{e}")))?;
        let request = http::Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("rigging-operator/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| unreachable(e.to_string()))?;
        let answer = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| unreachable(error_chain(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(
                    |e| match e.downcast_ref::<http_body_util::LengthLimitError>() {
                        Some(_) => SourceError::BadAnswer {
                            url: url.clone(),
                            problem: format!("the answer is larger than {MAX_ANSWER} bytes"),
                        },
                        None => unreachable(format!("reading the answer: {e}")),
                    },
                )?
                .to_bytes();
            Ok::<_, SourceError>((status, body))
        };
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, answer)
            .await
            .map_err(|_| unreachable(format!("no answer within {REQUEST_TIMEOUT:?}")))??;
        if status != http::StatusCode::OK {
            return Err(SourceError::Status {
                url,
                status: status.as_u16(),
                body: start_of(&body),
            });
        }
        parse_list(&body).map_err(|problem| SourceError::BadAnswer { url, problem })
    }
}

/// The item names of a source's answer: a JSON list of strings, or an object whose
/// `items` is one (the book's `ItemList`). Every name must be a non-empty string of at
/// most [`MAX_ITEM`] bytes; a name listed twice counts once. Any bad element refuses the
/// whole answer: a source that sends one is broken, and guessing would risk a wrong item.
pub fn parse_list(body: &[u8]) -> Result<Vec<String>, String> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("the answer is not JSON ({e}): {}", start_of(body)))?;
    let list = match &value {
        serde_json::Value::Array(list) => list,
        serde_json::Value::Object(o) => match o.get("items") {
            Some(serde_json::Value::Array(list)) => list,
            _ => {
                return Err(
                    "the answer is a JSON object without an `items` list; expected a list of item names or {\"kind\": \"ItemList\", \"items\": [...]}".into(),
                );
            }
        },
        other => {
            return Err(format!(
                "the answer is a JSON {}, not a list of item names",
                kind_of(other)
            ));
        }
    };
    let mut out = Vec::with_capacity(list.len());
    let mut seen = std::collections::HashSet::new();
    for (i, element) in list.iter().enumerate() {
        let Some(name) = element.as_str() else {
            return Err(format!(
                "item #{i} is a JSON {}, not a string",
                kind_of(element)
            ));
        };
        if name.is_empty() {
            return Err(format!("item #{i} is an empty string"));
        }
        if name.len() > MAX_ITEM {
            return Err(format!(
                "item #{i} is {} bytes long, more than {MAX_ITEM}",
                name.len()
            ));
        }
        if seen.insert(name) {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}

fn kind_of(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "list",
        serde_json::Value::Object(_) => "object",
    }
}

/// The first 200 bytes of a body, for an error message.
fn start_of(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    if body.len() > 200 {
        format!("{text}…")
    } else {
        text
    }
}

/// hyper-util's errors say "client error (Connect)" and keep the cause underneath.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What to add to the ConfigMap of `queue`, whose data is `live`, for the `listed` items:
/// every item whose Job is not already a key, numbered on from the highest sequence number
/// there, in the order listed. Also every item that cannot be added, and why (the
/// ConfigMap would exceed [`CONFIG_MAP_LIMIT`], or its hash clashes with another item's).
pub fn additions(
    queue: &str,
    live: &BTreeMap<String, String>,
    listed: &[String],
) -> (BTreeMap<String, String>, Vec<String>) {
    let mut known: HashMap<String, &str> = HashMap::new();
    let mut next = 0;
    let mut size = 0;
    for (key, item) in live {
        size += key.len() + item.len();
        if let Some((sequence, job)) = desired::parse_source_key(key) {
            known.insert(job.to_owned(), item);
            next = next.max(sequence + 1);
        }
    }
    let mut add = BTreeMap::new();
    let mut refused = Vec::new();
    for item in listed {
        let job = naming::job_name(queue, item);
        match known.get(&job) {
            Some(existing) if existing == item => continue,
            Some(existing) => {
                refused.push(format!(
                    "{item:?} has the same hash as {existing:?} (Job {job})"
                ));
                continue;
            }
            None => {}
        }
        let key = desired::source_key(next, &job);
        if size + key.len() + item.len() > CONFIG_MAP_LIMIT {
            refused.push(format!(
                "{item:?} does not fit: the ConfigMap holds at most {CONFIG_MAP_LIMIT} bytes"
            ));
            continue;
        }
        size += key.len() + item.len();
        next += 1;
        known.insert(job, item);
        add.insert(key, item.clone());
    }
    (add, refused)
}

/// Asks the source at `base` for its items once and adds the new ones to the ConfigMap of
/// `wq`, read and written through `api` (in `wq`'s namespace). Returns how many were
/// added. `cached` is the ConfigMap as the watch cache holds it: when it already holds
/// every item listed, which is most polls, nothing is read from the API server.
pub async fn poll_once(
    api: &Api<ConfigMap>,
    client: &SourceClient,
    wq: &WorkQueue,
    base: &str,
    cached: Option<&ConfigMap>,
) -> Result<usize, SourceError> {
    let queue = wq.name_any();
    let namespace = wq.namespace().unwrap_or_default();
    let name = naming::items_config_map(&queue);
    // The list first: if the source fails, nothing is read or written.
    let listed = client.list(base).await?;
    let uid = wq.uid().unwrap_or_default();
    // A cache that lags can only lack keys, never hold one the API server has not: keys
    // are never removed. So a cached ConfigMap that already has every item is the answer.
    if let Some(cm) = cached.filter(|cm| controlled_by(*cm, &namespace, &uid)) {
        let empty = BTreeMap::new();
        let (add, refused) = additions(&queue, cm.data.as_ref().unwrap_or(&empty), &listed);
        if add.is_empty() && refused.is_empty() {
            return Ok(0);
        }
    }
    let api_error = |action, source| SourceError::Api {
        action,
        namespace: namespace.clone(),
        name: name.clone(),
        source,
    };
    let Some(live) = api
        .get_opt(&name)
        .await
        .map_err(|e| api_error("reading", e))?
    else {
        return Err(SourceError::NoConfigMap { namespace, name });
    };
    if !controlled_by(&live, &namespace, &uid) {
        return Err(SourceError::NotOwned {
            namespace,
            name,
            queue,
        });
    }
    let (add, refused) = additions(
        &queue,
        live.data.as_ref().unwrap_or(&BTreeMap::new()),
        &listed,
    );
    if !add.is_empty() {
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": live.resource_version()},
            "data": add,
        });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        api.patch(&name, &params, &Patch::Merge(&patch))
            .await
            .map_err(|e| api_error("adding items to", e))?;
        tracing::info!(%namespace, queue, added = add.len(), "persisted new items of the source");
    }
    if refused.is_empty() {
        Ok(add.len())
    } else {
        Err(SourceError::Refused {
            namespace,
            name,
            added: add.len(),
            refused,
        })
    }
}

/// Where the poller reaches the source of `wq` in the cluster: its Service.
pub fn base_url(wq: &WorkQueue) -> Option<String> {
    let source = wq.spec.source.as_ref()?;
    Some(format!(
        "http://{}.{}.svc:{}",
        naming::source(&wq.name_any()),
        wq.namespace().unwrap_or_default(),
        source.port
    ))
}

/// How often the poller looks for queues whose poll is due.
const TICK: Duration = Duration::from_secs(1);
/// Most sources asked at once.
const CONCURRENT_POLLS: usize = 16;

/// Runs `controller` (the WorkQueue controller) with the poller of every source-mode
/// WorkQueue in `namespace` (every namespace when `None`) beside it, until the controller
/// ends (on a shutdown signal). It runs where the controllers run, so only the leader polls.
pub fn with_poller<F>(
    controller: F,
    ctx: &Context,
    namespace: Option<&str>,
) -> impl Future<Output = ()> + Send + use<F>
where
    F: Future<Output = ()> + Send,
{
    let poller = run(ctx.client.clone(), ctx.stores.configmaps.clone(), namespace);
    async move {
        tokio::select! {
            () = controller => {}
            () = poller => {}
        }
    }
}

/// Polls every source-mode WorkQueue in `namespace` at its `pollInterval`, reading their
/// ConfigMaps of items from `configmaps` (the controller's cache) first; never returns.
pub fn run(
    client: kube::Client,
    configmaps: Store<ConfigMap>,
    namespace: Option<&str>,
) -> impl Future<Output = ()> + Send + use<> {
    let queues: Api<WorkQueue> = crate::controller::children::api(&client, namespace);
    let (store, writer) = reflector::store();
    let watch = watcher(queues, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .for_each(|event| async move {
            if let Err(error) = event {
                tracing::warn!(%error, "WorkQueue watch of the poller failed; retrying");
            }
        });
    async move {
        tokio::select! {
            () = watch => {}
            () = poll_due(client, store, configmaps) => {}
        }
    }
}

/// When each queue was last asked, and which are being asked now.
#[derive(Default)]
struct Schedule {
    last: HashMap<String, Instant>,
    asking: HashSet<String>,
}

impl Schedule {
    /// The queues of `queues` whose poll is due at `now`, marked as being asked: those whose
    /// `pollInterval` has passed since they were last asked, and that are not being asked
    /// still. Forgets the queues that are gone.
    fn due(&mut self, queues: Vec<Arc<WorkQueue>>, now: Instant) -> Vec<Arc<WorkQueue>> {
        let live: HashSet<String> = queues.iter().filter_map(|w| w.uid()).collect();
        self.last.retain(|uid, _| live.contains(uid));
        let due: Vec<_> = queues
            .into_iter()
            .filter(|wq| {
                let (Some(interval), Some(uid)) = (poll_interval(wq), wq.uid()) else {
                    return false;
                };
                !self.asking.contains(&uid)
                    && self
                        .last
                        .get(&uid)
                        .is_none_or(|t| now.duration_since(*t) >= interval)
            })
            .collect();
        for wq in &due {
            let uid = wq.uid().unwrap_or_default();
            self.last.insert(uid.clone(), now);
            self.asking.insert(uid);
        }
        due
    }

    /// The poll of the queue `uid` has ended.
    fn done(&mut self, uid: &str) {
        self.asking.remove(uid);
    }
}

/// Starts each queue's poll when it is due, each on its own: a source that is slow to
/// answer delays only its own queue's next poll, never another's. At most
/// [`CONCURRENT_POLLS`] sources are asked at once.
async fn poll_due(client: kube::Client, store: Store<WorkQueue>, configmaps: Store<ConfigMap>) {
    let source = SourceClient::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_POLLS));
    let mut schedule = Schedule::default();
    // Dropped with the poller (a shutdown, a lost Lease): its polls stop with it.
    let mut polls: tokio::task::JoinSet<String> = tokio::task::JoinSet::new();
    let _ = store.wait_until_ready().await;
    loop {
        while let Some(ended) = polls.try_join_next() {
            if let Ok(uid) = ended {
                schedule.done(&uid);
            }
        }
        for wq in schedule.due(store.state(), Instant::now()) {
            let (client, source, configmaps) = (client.clone(), source.clone(), configmaps.clone());
            let permits = permits.clone();
            polls.spawn(async move {
                let uid = wq.uid().unwrap_or_default();
                let Ok(_permit) = permits.acquire_owned().await else {
                    return uid;
                };
                let Some(base) = base_url(&wq) else { return uid };
                let namespace = wq.namespace().unwrap_or_default();
                let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
                let key = reflector::ObjectRef::new(&naming::items_config_map(&wq.name_any()))
                    .within(&namespace);
                let cached = configmaps.get(&key);
                match poll_once(&api, &source, &wq, &base, cached.as_deref()).await {
                    Ok(added) => tracing::debug!(queue = %wq.name_any(), added, "polled the source"),
                    Err(error @ SourceError::NoConfigMap { .. }) => {
                        tracing::info!(queue = %wq.name_any(), %error, "not polling yet")
                    }
                    Err(error) => tracing::warn!(queue = %wq.name_any(), %error, "polling the source failed; the next poll tries again"),
                }
                uid
            });
        }
        tokio::time::sleep(TICK).await;
    }
}

/// A valid `pollInterval` of a source-mode WorkQueue; `None` otherwise (desired reports
/// an invalid one on the WorkQueue's status).
fn poll_interval(wq: &WorkQueue) -> Option<Duration> {
    let interval = humantime::parse_duration(&wq.spec.source.as_ref()?.poll_interval).ok()?;
    (interval >= desired::MIN_POLL_INTERVAL).then_some(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn queue(name: &str, uid: &str, interval: &str) -> Arc<WorkQueue> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "rigging.dev/v1alpha1",
                "kind": "WorkQueue",
                "metadata": {"name": name, "namespace": "media", "uid": uid},
                "spec": {
                    "source": {"template": {"name": "source", "image": "feed:1"},
                               "port": 8080, "pollInterval": interval},
                    "worker": {"template": {"spec": {"containers": [{"name": "w", "image": "w"}]}}}
                }
            }))
            .unwrap(),
        )
    }

    fn uids(queues: &[Arc<WorkQueue>]) -> Vec<String> {
        queues.iter().filter_map(|w| w.uid()).collect()
    }

    #[test]
    fn a_queue_whose_source_is_slow_holds_up_only_its_own_next_poll() {
        let (slow, fast) = (queue("slow", "s", "5s"), queue("fast", "f", "5s"));
        let mut schedule = Schedule::default();
        let start = Instant::now();
        let both = vec![slow.clone(), fast.clone()];
        assert_eq!(uids(&schedule.due(both.clone(), start)), ["s", "f"]);
        // Not due again within its interval, asked or not.
        assert!(
            schedule
                .due(both.clone(), start + Duration::from_secs(1))
                .is_empty()
        );
        // The fast source answered; the slow one is still being asked a poll later.
        schedule.done("f");
        let later = start + Duration::from_secs(6);
        assert_eq!(uids(&schedule.due(both.clone(), later)), ["f"]);
        schedule.done("f");
        schedule.done("s");
        let later = start + Duration::from_secs(12);
        assert_eq!(uids(&schedule.due(both, later)), ["s", "f"]);
        // A queue that is gone is forgotten.
        schedule.done("s");
        schedule.done("f");
        assert_eq!(uids(&schedule.due(vec![fast], later)), Vec::<String>::new());
        assert_eq!(schedule.last.len(), 1);
    }

    #[test]
    fn a_list_or_the_books_item_list_is_read_and_duplicates_count_once() {
        assert_eq!(parse_list(br#"["a", "b", "a"]"#), Ok(strings(&["a", "b"])));
        assert_eq!(
            parse_list(br#"{"kind": "ItemList", "apiVersion": "v1", "items": ["x"]}"#),
            Ok(strings(&["x"]))
        );
        assert_eq!(parse_list(b"[]"), Ok(vec![]));
    }

    #[test]
    fn a_bad_answer_is_refused_whole_with_what_is_wrong() {
        let e = parse_list(b"<html>oops</html>").unwrap_err();
        assert!(
            e.starts_with("the answer is not JSON (") && e.ends_with("): <html>oops</html>"),
            "{e}"
        );
        assert_eq!(
            parse_list(br#"["a", 7]"#).unwrap_err(),
            "item #1 is a JSON number, not a string"
        );
        assert_eq!(
            parse_list(br#"["a", ""]"#).unwrap_err(),
            "item #1 is an empty string"
        );
        assert_eq!(
            parse_list(br#""a""#).unwrap_err(),
            "the answer is a JSON string, not a list of item names"
        );
        assert!(
            parse_list(br#"{"kind": "Item"}"#)
                .unwrap_err()
                .contains("without an `items` list")
        );
        let long = format!(r#"["{}"]"#, "x".repeat(MAX_ITEM + 1));
        assert_eq!(
            parse_list(long.as_bytes()).unwrap_err(),
            "item #0 is 4097 bytes long, more than 4096"
        );
    }

    #[test]
    fn only_new_items_are_added_numbered_on_from_the_highest_sequence() {
        let live = BTreeMap::from([
            (
                desired::source_key(0, &naming::job_name("q", "a")),
                "a".to_owned(),
            ),
            (
                desired::source_key(7, &naming::job_name("q", "b")),
                "b".to_owned(),
            ),
        ]);
        let (add, refused) = additions("q", &live, &strings(&["b", "z", "a", "c"]));
        assert!(refused.is_empty());
        assert_eq!(
            add,
            BTreeMap::from([
                (
                    desired::source_key(8, &naming::job_name("q", "z")),
                    "z".to_owned()
                ),
                (
                    desired::source_key(9, &naming::job_name("q", "c")),
                    "c".to_owned()
                ),
            ])
        );
        let (again, _) = additions(
            "q",
            &live.into_iter().chain(add).collect(),
            &strings(&["a", "z", "c"]),
        );
        assert!(again.is_empty(), "nothing twice");
    }

    #[test]
    fn what_does_not_fit_is_refused_and_the_rest_added() {
        let big = "x".repeat(400_000);
        let listed = vec![
            format!("1{big}"),
            format!("2{big}"),
            format!("3{big}"),
            "small".into(),
        ];
        let (add, refused) = additions("q", &BTreeMap::new(), &listed);
        assert_eq!(add.len(), 3, "two big ones and the small one");
        assert!(add.values().any(|v| v == "small"));
        assert_eq!(refused.len(), 1);
        assert!(
            refused[0].contains("does not fit: the ConfigMap holds at most 1048576 bytes"),
            "{refused:?}"
        );
    }
}
