//! A client of etcd's v3 JSON gateway (`POST /v3/...` on every member's client port):
//! the handful of calls an election needs, over plain HTTP/1.1 with hyper, so that the
//! sidecar carries no gRPC stack. Keys and values travel base64-encoded; 64-bit numbers
//! arrive as JSON strings.
//!
//! Requests go to one member; a member that does not answer in time, cannot be reached,
//! or answers "unavailable" (no quorum, no leader, a leader change) is left for the next,
//! and the member that answered is tried first next time.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// Answers larger than this are refused (a range over many items stays far below).
const MAX_ANSWER: usize = 16 << 20;

/// gRPC codes that say "try another member": Canceled, DeadlineExceeded, Unavailable.
const RETRY_CODES: [i64; 3] = [1, 4, 14];
/// gRPC NotFound (an unknown or expired lease).
const NOT_FOUND: i64 = 5;

/// What can go wrong with etcd.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No member answered.
    #[error("no etcd member answered {path}: {}", tried.join("; "))]
    Unreachable {
        /// The call.
        path: &'static str,
        /// Each member tried, with why it failed.
        tried: Vec<String>,
    },
    /// A member answered with an error that another member would give too.
    #[error("{endpoint}{path}: etcd refused: {message} (gRPC code {code})")]
    Refused {
        /// The member.
        endpoint: String,
        /// The call.
        path: &'static str,
        /// The gRPC status code.
        code: i64,
        /// etcd's message.
        message: String,
    },
    /// A member answered something that is not what the gateway answers.
    #[error("{endpoint}{path}: unexpected answer: {message}")]
    Malformed {
        /// The member.
        endpoint: String,
        /// The call.
        path: &'static str,
        /// What was wrong.
        message: String,
    },
}

/// One key as etcd stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// The revision of the transaction that created the key: the fencing token.
    pub create_revision: u64,
    /// The lease the key is attached to (0: none).
    pub lease: i64,
}

/// What a create-if-absent transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The key was created at this revision.
    At(u64),
    /// The key exists (as read in the same transaction); `None` if it vanished between.
    Exists(Option<Kv>),
}

/// A client of the gateways of an etcd cluster.
pub struct Gateway {
    endpoints: Vec<String>,
    current: usize,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

/// Why one attempt on one member failed.
enum Attempt {
    /// Try the next member.
    Next(String),
    /// Stop: the answer would be the same elsewhere.
    Stop(GatewayError),
}

/// A JSON number or a string holding one (the gateway writes 64-bit numbers as strings).
fn int(value: &Value) -> i64 {
    match value {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

fn b64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// The end of the range of keys starting with `prefix`: the prefix with its last byte
/// raised by one (etcd's `WithPrefix`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: every key after the prefix ("\0" means "to the end").
    vec![0]
}

impl Gateway {
    /// A client of `endpoints` (`http://HOST:PORT`), each attempt bounded by `timeout`.
    pub fn new(endpoints: &[String], timeout: Duration) -> Gateway {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Gateway {
            endpoints: endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_owned())
                .collect(),
            current: 0,
            client,
            timeout,
        }
    }

    /// Sends `body` to `path` on the members in turn, from the last one that answered.
    async fn call(&mut self, path: &'static str, body: Value) -> Result<Value, GatewayError> {
        let body = Bytes::from(serde_json::to_vec(&body).expect("requests serialize"));
        let mut tried = Vec::new();
        for step in 0..self.endpoints.len() {
            let at = (self.current + step) % self.endpoints.len();
            match self.attempt(at, path, body.clone()).await {
                Ok(answer) => {
                    if at != self.current {
                        tracing::info!(endpoint = %self.endpoints[at], "etcd: now using this member");
                    }
                    self.current = at;
                    return Ok(answer);
                }
                Err(Attempt::Next(why)) => tried.push(format!("{}: {why}", self.endpoints[at])),
                Err(Attempt::Stop(err)) => return Err(err),
            }
        }
        Err(GatewayError::Unreachable { path, tried })
    }

    async fn attempt(&self, at: usize, path: &'static str, body: Bytes) -> Result<Value, Attempt> {
        let endpoint = &self.endpoints[at];
        let request = Request::post(format!("{endpoint}{path}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| {
                Attempt::Stop(GatewayError::Malformed {
                    endpoint: endpoint.clone(),
                    path,
                    message: format!("cannot build the request: {e}"),
                })
            })?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| crate::runtime::error_chain(&e))?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, bytes))
        };
        let (status, bytes) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(why)) => return Err(Attempt::Next(why)),
            Err(_) => {
                return Err(Attempt::Next(format!(
                    "no answer within {:?}",
                    self.timeout
                )));
            }
        };
        let value: Value = match serde_json::from_slice(&bytes) {
            Ok(value) => value,
            // A proxy's error page, or a member starting up.
            Err(_) if status.is_server_error() => {
                return Err(Attempt::Next(format!("HTTP {status}")));
            }
            Err(e) => {
                return Err(Attempt::Stop(GatewayError::Malformed {
                    endpoint: endpoint.clone(),
                    path,
                    message: format!("HTTP {status}, not JSON: {e}"),
                }));
            }
        };
        if status == StatusCode::OK {
            return Ok(value);
        }
        let code = int(&value["code"]);
        let message = value["message"]
            .as_str()
            .or_else(|| value["error"].as_str())
            .unwrap_or("")
            .to_owned();
        if RETRY_CODES.contains(&code) || (code == 0 && status.is_server_error()) {
            return Err(Attempt::Next(format!("{message} (gRPC code {code})")));
        }
        Err(Attempt::Stop(GatewayError::Refused {
            endpoint: endpoint.clone(),
            path,
            code,
            message,
        }))
    }

    /// Grants a lease of `ttl` seconds; returns its ID and the TTL granted.
    pub async fn grant(&mut self, ttl: i64) -> Result<(i64, i64), GatewayError> {
        let answer = self
            .call("/v3/lease/grant", json!({ "TTL": ttl.to_string() }))
            .await?;
        let id = int(&answer["ID"]);
        if id == 0 {
            return Err(GatewayError::Malformed {
                endpoint: self.endpoints[self.current].clone(),
                path: "/v3/lease/grant",
                message: format!("no lease ID in {answer}"),
            });
        }
        Ok((id, int(&answer["TTL"])))
    }

    /// Renews lease `id`; returns the TTL it has again, 0 when the lease is gone.
    pub async fn keep_alive(&mut self, id: i64) -> Result<i64, GatewayError> {
        let answer = self
            .call("/v3/lease/keepalive", json!({ "ID": id.to_string() }))
            .await?;
        Ok(int(&answer["result"]["TTL"]))
    }

    /// Revokes lease `id`, deleting every key attached to it. `Ok(false)`: it was gone.
    pub async fn revoke(&mut self, id: i64) -> Result<bool, GatewayError> {
        match self
            .call("/v3/lease/revoke", json!({ "ID": id.to_string() }))
            .await
        {
            Ok(_) => Ok(true),
            Err(GatewayError::Refused {
                code: NOT_FOUND, ..
            }) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Creates `key` = `value` attached to `lease` if the key does not exist (its create
    /// revision is 0), in one transaction that reads the key otherwise.
    pub async fn create(
        &mut self,
        key: &[u8],
        value: &[u8],
        lease: i64,
    ) -> Result<Created, GatewayError> {
        let key = b64(key);
        let answer = self
            .call(
                "/v3/kv/txn",
                json!({
                    "compare": [{
                        "target": "CREATE",
                        "result": "EQUAL",
                        "key": key,
                        "create_revision": "0",
                    }],
                    "success": [{ "request_put": {
                        "key": key,
                        "value": b64(value),
                        "lease": lease.to_string(),
                    }}],
                    "failure": [{ "request_range": { "key": key } }],
                }),
            )
            .await?;
        if answer["succeeded"].as_bool() == Some(true) {
            return Ok(Created::At(int(&answer["header"]["revision"]) as u64));
        }
        let kvs = &answer["responses"][0]["response_range"]["kvs"];
        Ok(Created::Exists(
            self.kvs(kvs, "/v3/kv/txn")?.into_iter().next(),
        ))
    }

    /// Deletes `key` if it is still the key created at `create_revision` (a term's key,
    /// not a later one). `Ok(false)`: it was not.
    pub async fn delete_if(
        &mut self,
        key: &[u8],
        create_revision: u64,
    ) -> Result<bool, GatewayError> {
        let key = b64(key);
        let answer = self
            .call(
                "/v3/kv/txn",
                json!({
                    "compare": [{
                        "target": "CREATE",
                        "result": "EQUAL",
                        "key": key,
                        "create_revision": create_revision.to_string(),
                    }],
                    "success": [{ "request_delete_range": { "key": key } }],
                }),
            )
            .await?;
        Ok(answer["succeeded"].as_bool() == Some(true))
    }

    /// Writes `key` = `value` attached to `lease`.
    pub async fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<(), GatewayError> {
        self.call(
            "/v3/kv/put",
            json!({ "key": b64(key), "value": b64(value), "lease": lease.to_string() }),
        )
        .await
        .map(drop)
    }

    /// Every key starting with `prefix` (a linearizable read: it needs a quorum).
    pub async fn range_prefix(&mut self, prefix: &[u8]) -> Result<Vec<Kv>, GatewayError> {
        let answer = self
            .call(
                "/v3/kv/range",
                json!({ "key": b64(prefix), "range_end": b64(&prefix_end(prefix)) }),
            )
            .await?;
        self.kvs(&answer["kvs"], "/v3/kv/range")
    }

    fn kvs(&self, kvs: &Value, path: &'static str) -> Result<Vec<Kv>, GatewayError> {
        let malformed = |message: String| GatewayError::Malformed {
            endpoint: self.endpoints[self.current].clone(),
            path,
            message,
        };
        let Some(list) = kvs.as_array() else {
            // No keys: the gateway leaves the field out.
            return Ok(Vec::new());
        };
        list.iter()
            .map(|kv| {
                let decode = |field: &str| {
                    BASE64
                        .decode(kv[field].as_str().unwrap_or(""))
                        .map_err(|e| malformed(format!("{field} is not base64: {e}")))
                };
                Ok(Kv {
                    key: decode("key")?,
                    value: decode("value")?,
                    create_revision: int(&kv["create_revision"]).max(0) as u64,
                    lease: int(&kv["lease"]),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_after_the_last_key_with_the_prefix() {
        assert_eq!(prefix_end(b"/rigging/elect/jobs/"), b"/rigging/elect/jobs0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    #[test]
    fn numbers_come_as_strings_or_numbers() {
        assert_eq!(int(&json!("7587")), 7587);
        assert_eq!(int(&json!(12)), 12);
        assert_eq!(int(&Value::Null), 0);
    }
}
