//! The mocked API server the reconcile tests of every kind run against (controller-rs's
//! `ApiServerVerifier` style): a scenario lists the exact requests expected — method,
//! path and body — and answers them; any other request stalls the reconcile and fails
//! the test.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::{Client, Resource, ResourceExt};
use rigging_operator::controller::{Child, Kind, RenderConfig, reconcile};
use rigging_operator::metrics::Metrics;
use rigging_operator::{ChildStores, Config, Context};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

/// The query of every server-side apply the operator makes as itself.
pub const APPLY_QUERY: &str = "?&force=true&fieldManager=rigging-operator";

/// Far longer than any reconcile step takes: past it, the reconcile is stuck on a
/// request the scenario will never answer (or the scenario on one never made).
const STALL: Duration = Duration::from_secs(30);

/// How long the API server must stay unasked for a test to believe nothing more comes.
const QUIET: Duration = Duration::from_millis(200);

/// The operator's settings in every scenario: a fixed sidecar image, so that the
/// children the tests expect render the same as those the reconcile applies.
pub fn config() -> Config {
    Config {
        render: RenderConfig {
            sidecar_image: "rigging-sidecar:test".into(),
            ..RenderConfig::default()
        },
        ..Config::default()
    }
}

/// The controllers' context on `client`, with `stores` as the watch caches.
pub fn context(client: Client, stores: ChildStores) -> Arc<Context> {
    Arc::new(Context::new(
        client,
        config(),
        Metrics::new(),
        stores,
        Some("test-pod".into()),
    ))
}

/// A `K` as the API server hands it to the controller: `metadata`, and `spec` with the
/// fields of `extra_spec` laid over it (so that each test states only what it varies).
pub fn served<K: Resource<DynamicType = ()> + DeserializeOwned>(
    metadata: Value,
    mut spec: Value,
    extra_spec: Value,
) -> K {
    spec.as_object_mut()
        .unwrap()
        .extend(extra_spec.as_object().unwrap().clone());
    serde_json::from_value(json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": metadata,
        "spec": spec,
    }))
    .unwrap()
}

/// A client whose every request goes to the returned [`Verifier`]; `namespace` is where
/// the Events it expects are posted.
pub fn pair(namespace: &str) -> (Client, Verifier) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let verifier = Verifier {
        handle,
        namespace: namespace.to_owned(),
    };
    (Client::new(service, "default"), verifier)
}

/// The API server's side of a mocked client: answers requests in order and fails on any
/// it did not expect.
pub struct Verifier {
    handle: Handle<Request<Body>, Response<Body>>,
    namespace: String,
}

impl Verifier {
    /// Expects the next request to be `method` on `path` (with its query); returns its
    /// JSON body (`Null` when empty) and where to send the answer.
    pub async fn expect(
        &mut self,
        method: Method,
        path: &str,
    ) -> (Value, SendResponse<Response<Body>>) {
        let (request, send) = tokio::time::timeout(STALL, self.handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {method} {path}"))
            .unwrap_or_else(|| panic!("the client stopped before {method} {path}"));
        assert_eq!(request.method(), method, "method of {path}");
        assert_eq!(request.uri().to_string(), path);
        let bytes = request.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (body, send)
    }

    /// Expects `method` on `path`, answers `status` with `answer`; returns the request's
    /// body.
    pub async fn answer(
        &mut self,
        method: Method,
        path: &str,
        status: StatusCode,
        answer: impl Serialize,
    ) -> Value {
        let (body, send) = self.expect(method, path).await;
        send.send_response(json_response(
            status,
            &serde_json::to_value(answer).unwrap(),
        ));
        body
    }

    /// Expects a server-side apply of `expected` at `path` and echoes it back.
    pub async fn apply(&mut self, path: &str, expected: impl Serialize) {
        let expected = serde_json::to_value(expected).unwrap();
        let (body, send) = self
            .expect(Method::PATCH, &format!("{path}{APPLY_QUERY}"))
            .await;
        assert_eq!(body, expected, "body of the apply to {path}");
        send.send_response(json_response(StatusCode::OK, &body));
    }

    /// Expects the create of `expected` in `collection` and answers `status`: 201 echoes
    /// it, 409 refuses it as existing (what a stale cache earns).
    pub async fn create<K: Resource<DynamicType = ()> + Serialize>(
        &mut self,
        collection: &str,
        expected: &K,
        status: StatusCode,
    ) {
        let (body, send) = self
            .expect(
                Method::POST,
                &format!("{collection}?&fieldManager=rigging-operator"),
            )
            .await;
        assert_eq!(
            body,
            serde_json::to_value(expected).unwrap(),
            "body of the create in {collection}"
        );
        let answer = if status == StatusCode::CONFLICT {
            // Named as the API server names it: `jobs.batch`, or the plural alone in the
            // core group.
            let group = K::group(&());
            let resource = [K::plural(&()), group]
                .into_iter()
                .filter(|part| !part.is_empty())
                .collect::<Vec<_>>()
                .join(".");
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409,
                   "message": format!("{resource} {:?} already exists", expected.meta().name)})
        } else {
            body
        };
        send.send_response(json_response(status, &answer));
    }

    /// Expects a background delete of `path` (what the object owns goes after it).
    pub async fn delete(&mut self, path: &str) {
        let (body, send) = self.expect(Method::DELETE, &format!("{path}?")).await;
        assert_eq!(body["propagationPolicy"], "Background", "{body}");
        let done = json!({"kind": "Status", "apiVersion": "v1", "status": "Success"});
        send.send_response(json_response(StatusCode::OK, &done));
    }

    /// Expects an Event and returns its body.
    pub async fn event(&mut self) -> Value {
        let path = format!(
            "/apis/events.k8s.io/v1/namespaces/{}/events?",
            self.namespace
        );
        let (body, send) = self.expect(Method::POST, &path).await;
        send.send_response(json_response(StatusCode::CREATED, &body));
        body
    }

    /// Expects a status apply to `obj`, answers with `obj` carrying that status, and
    /// returns the status sent.
    pub async fn status<K: Resource<DynamicType = ()> + Serialize>(&mut self, obj: &K) -> Value {
        let path = format!(
            "{}/{}/status{APPLY_QUERY}",
            K::url_path(&(), obj.namespace().as_deref()),
            obj.name_any()
        );
        let (body, send) = self.expect(Method::PATCH, &path).await;
        assert_eq!(body["apiVersion"], K::api_version(&()).as_ref());
        assert_eq!(body["kind"], K::kind(&()).as_ref());
        let mut echoed = serde_json::to_value(obj).unwrap();
        echoed["status"] = body["status"].clone();
        // A write gives the object a new resourceVersion.
        let version = &mut echoed["metadata"]["resourceVersion"];
        if let Some(n) = version.as_str().and_then(|v| v.parse::<u64>().ok()) {
            *version = json!((n + 1).to_string());
        }
        send.send_response(json_response(StatusCode::OK, &echoed));
        body["status"].clone()
    }

    /// Fails, saying `why`, if any request arrives within a short while.
    pub async fn expect_no_request(&mut self, why: &str) {
        let asked = tokio::time::timeout(QUIET, self.handle.next_request()).await;
        assert!(asked.is_err(), "{why}");
    }
}

/// The condition of type `type_` in a status the reconcile sent.
pub fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

/// An answer of the API server: `status` with `body` as JSON.
pub fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// Runs one reconcile of `obj`, with watch caches holding `cached`, against `scenario`,
/// which gets the API server and hands it back once it saw every request it expects;
/// returns the reconcile's result and its context (for the metrics and the backoff).
pub async fn run_scenario<K, F, Fut>(
    obj: K,
    cached: impl IntoIterator<Item = Child>,
    scenario: F,
) -> (rigging_operator::Result<Action>, Arc<Context>)
where
    K: Kind,
    F: FnOnce(Verifier) -> Fut,
    Fut: Future<Output = Verifier> + Send + 'static,
{
    run_scenario_with(obj, ChildStores::prefilled(cached), scenario).await
}

/// [`run_scenario`] with the watch caches `stores` (which may hold the Jobs' pods too).
pub async fn run_scenario_with<K, F, Fut>(
    obj: K,
    stores: ChildStores,
    scenario: F,
) -> (rigging_operator::Result<Action>, Arc<Context>)
where
    K: Kind,
    F: FnOnce(Verifier) -> Fut,
    Fut: Future<Output = Verifier> + Send + 'static,
{
    let (client, api) = pair(&obj.namespace().expect("a namespaced object"));
    let ctx = context(client, stores);
    let scenario = tokio::spawn(scenario(api));
    // An unexpected request is never answered, so the reconcile stalls and this fails.
    let result = tokio::time::timeout(STALL, reconcile(Arc::new(obj), ctx.clone()))
        .await
        .expect("reconcile stalled: it made a request the scenario did not expect");
    let mut api = scenario.await.expect("scenario assertions hold");
    // One the reconcile did not wait for would go unanswered without stalling it.
    api.expect_no_request("an unexpected request after the scenario")
        .await;
    (result, ctx)
}
