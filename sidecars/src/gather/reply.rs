//! The gather: the shards' results become the client's answer, with its coverage, or a
//! refusal that says which shards did not answer and why.

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use rigging_crds::sidecar::gather::{COVERAGE_FIELD, COVERAGE_HEADER};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::merge::{self, JsonMerge};
use super::metrics::Metrics;
use super::scatter::{self, LeafAnswer, LeafError, ShardResult};
use super::table::{MergerTarget, Plan, Table};

/// Which shards an answer covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Coverage {
    /// Shards whose answers are in it.
    pub answered: usize,
    /// All shards.
    pub total: usize,
    /// The indexes of the others.
    pub missing: Vec<usize>,
}

impl Coverage {
    fn new(total: usize, missing: Vec<usize>) -> Self {
        Self {
            answered: total - missing.len(),
            total,
            missing,
        }
    }

    /// `answered/total`, the value of `Rigging-Coverage`.
    fn header(&self) -> HeaderValue {
        // Digits and a slash: always a valid header value.
        HeaderValue::try_from(format!("{}/{}", self.answered, self.total))
            .unwrap_or_else(|_| HeaderValue::from_static("0/0"))
    }

    fn ratio(&self) -> f64 {
        self.answered as f64 / self.total.max(1) as f64
    }
}

/// The client's answer to `results`, merged as `table` says. `deadline` bounds the
/// merger's work.
pub async fn gather(
    table: &Table,
    metrics: &Metrics,
    results: Vec<ShardResult>,
    deadline: Instant,
) -> Response<Full<Bytes>> {
    match &table.plan {
        Plan::Json(merge) => json_merge(table, metrics, merge, &results),
        Plan::First => first(table, metrics, results),
        Plan::Merger(target) => merger(table, metrics, target, results, deadline).await,
    }
}

/// Why shard `index` has no usable answer, when `result` is not a 2xx one; counted as
/// the shard's failure when it is an answer (a failed request was counted when it failed).
fn unusable(table: &Table, index: usize, result: &ShardResult) -> Option<String> {
    match result {
        ShardResult::Answer(a) if a.status.is_success() => None,
        ShardResult::Answer(a) => {
            count_failure(table, index);
            Some(format!("status {} from {}", a.status.as_u16(), a.address))
        }
        ShardResult::Failed(err) => Some(err.to_string()),
    }
}

fn count_failure(table: &Table, index: usize) {
    if let Some(shard) = table.shards.get(index) {
        shard.stats.metrics.failures.inc();
    }
}

fn json_merge(
    table: &Table,
    metrics: &Metrics,
    merge: &JsonMerge,
    results: &[ShardResult],
) -> Response<Full<Bytes>> {
    let mut reasons = Vec::new();
    let mut bodies: Vec<(usize, &[u8])> = Vec::new();
    for (index, result) in results.iter().enumerate() {
        match (unusable(table, index, result), result) {
            (Some(reason), _) => reasons.push((index, reason)),
            (None, ShardResult::Answer(answer)) => bodies.push((index, &answer.body)),
            // `unusable` gives every failure a reason.
            (None, ShardResult::Failed(_)) => {}
        }
    }
    let merged = merge::merge(merge, &bodies);
    for (index, bad) in merged.bad {
        count_failure(table, index);
        let from = match results.get(index) {
            Some(ShardResult::Answer(a)) => format!(" from {}", a.address),
            _ => String::new(),
        };
        reasons.push((index, format!("bad answer{from}: {bad}")));
    }
    reasons.sort_by_key(|(index, _)| *index);
    let coverage = Coverage::new(results.len(), reasons.iter().map(|(i, _)| *i).collect());
    if coverage.answered < table.min_shards {
        return refuse(table, metrics, &coverage, &reasons);
    }
    count(metrics, &coverage);
    let mut doc = merged.doc;
    doc.insert(COVERAGE_FIELD.to_owned(), json!(coverage));
    json_answer(StatusCode::OK, &Value::Object(doc), &coverage)
}

fn first(table: &Table, metrics: &Metrics, results: Vec<ShardResult>) -> Response<Full<Bytes>> {
    let total = results.len();
    let mut reasons = Vec::new();
    let mut winner = None;
    for (index, result) in results.into_iter().enumerate() {
        match (unusable(table, index, &result), result) {
            (None, ShardResult::Answer(answer)) if winner.is_none() => {
                winner = Some((index, answer));
            }
            (Some(reason), _) => reasons.push((index, reason)),
            // Answers after the first (two shards answering in the same instant) and
            // shards cancelled because one answered are simply not in it.
            _ => {}
        }
    }
    let Some((index, answer)) = winner else {
        let coverage = Coverage::new(total, (0..total).collect());
        return refuse(table, metrics, &coverage, &reasons);
    };
    let coverage = Coverage::new(total, (0..total).filter(|&i| i != index).collect());
    metrics.outcomes.full.inc();
    metrics.coverage.observe(coverage.ratio());
    as_it_came(answer, &coverage)
}

async fn merger(
    table: &Table,
    metrics: &Metrics,
    target: &MergerTarget,
    results: Vec<ShardResult>,
    deadline: Instant,
) -> Response<Full<Bytes>> {
    let total = results.len();
    let mut reasons = Vec::new();
    let mut answers = Vec::new();
    for (index, result) in results.into_iter().enumerate() {
        match result {
            ShardResult::Answer(answer) => answers.push(json!({
                "shard": index,
                "status": answer.status.as_u16(),
                "body": serde_json::from_slice::<Value>(&answer.body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&answer.body).into_owned())),
            })),
            ShardResult::Failed(err) => reasons.push((index, err.to_string())),
        }
    }
    let coverage = Coverage::new(total, reasons.iter().map(|(i, _)| *i).collect());
    if coverage.answered < table.min_shards {
        return refuse(table, metrics, &coverage, &reasons);
    }
    let body = json!({"answers": answers, COVERAGE_FIELD: coverage}).to_string();
    let mut request = Request::new(Either::Right(Full::new(Bytes::from(body))));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = target.target.clone();
    let headers = request.headers_mut();
    headers.insert(header::HOST, target.host.clone());
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let within = deadline.saturating_duration_since(Instant::now());
    let merged = tokio::time::timeout_at(
        deadline,
        scatter::fetch(&target.pool, request, table.max_leaf_body),
    )
    .await
    .unwrap_or_else(|_| {
        Err(LeafError::Timeout {
            address: target.url.clone(),
            after: within,
        })
    });
    match merged {
        Ok(answer) => {
            count(metrics, &coverage);
            as_it_came(answer, &coverage)
        }
        Err(err) => {
            metrics.outcomes.merger_failed.inc();
            tracing::debug!(merger = %target.url, error = %err, "merger failed");
            json_answer(
                StatusCode::BAD_GATEWAY,
                &json!({
                    "error": format!("the merger {} failed: {err}", target.url),
                    COVERAGE_FIELD: coverage,
                }),
                &coverage,
            )
        }
    }
}

/// Counts an answer by its coverage.
fn count(metrics: &Metrics, coverage: &Coverage) {
    if coverage.answered == coverage.total {
        metrics.outcomes.full.inc();
    } else {
        metrics.outcomes.partial.inc();
    }
    metrics.coverage.observe(coverage.ratio());
}

/// 502: fewer shards answered than `minShards`.
fn refuse(
    table: &Table,
    metrics: &Metrics,
    coverage: &Coverage,
    reasons: &[(usize, String)],
) -> Response<Full<Bytes>> {
    metrics.outcomes.refused.inc();
    metrics.coverage.observe(coverage.ratio());
    let why: Vec<String> = reasons
        .iter()
        .map(|(index, reason)| format!("shard {index}: {reason}"))
        .collect();
    let error = format!(
        "{} of {} shards answered and {} are needed; {}",
        coverage.answered,
        coverage.total,
        table.min_shards,
        why.join("; ")
    );
    tracing::debug!(%error, "request refused");
    json_answer(
        StatusCode::BAD_GATEWAY,
        &json!({"error": error, "missing": coverage.missing, COVERAGE_FIELD: coverage}),
        coverage,
    )
}

fn coverage_header() -> HeaderName {
    HeaderName::from_static(COVERAGE_HEADER)
}

fn json_answer(status: StatusCode, doc: &Value, coverage: &Coverage) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(doc.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(coverage_header(), coverage.header());
    response
}

/// A leaf's or the merger's answer as it came: status, content type and body.
fn as_it_came(answer: LeafAnswer, coverage: &Coverage) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(answer.body));
    *response.status_mut() = answer.status;
    let headers = response.headers_mut();
    if let Some(content_type) = answer.content_type {
        headers.insert(header::CONTENT_TYPE, content_type);
    }
    headers.insert(coverage_header(), coverage.header());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_reads_answered_over_total() {
        let coverage = Coverage::new(4, vec![2]);
        assert_eq!(coverage.header(), "3/4");
        assert_eq!(
            json!(coverage),
            json!({"answered": 3, "total": 4, "missing": [2]})
        );
        assert!((coverage.ratio() - 0.75).abs() < 1e-9);
    }
}
