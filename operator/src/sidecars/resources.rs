//! CPU and memory of Rigging's containers: each one's defaults, what a `resources` block
//! changes of them, and the checks the API server would make of the Deployment (a
//! quantity it cannot read, a request above its limit) made first, naming the field.
//!
//! Quantities are written back in Kubernetes' canonical form (`1536Mi`, not `1.5Gi`), the
//! form the API server stores: a child whose quantities the server respelled would look
//! changed to every reconcile, and be applied again each time.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use rigging_crds::FieldError;
use rigging_crds::sidecar::spec::SidecarResources;

use super::{ELECT, GATHER, HEALTH, HTTP, LOGS, METRICS, QUEUE, SHARD, TLS};

const MI: u64 = 1 << 20;

/// The smallest memory limit a Rigging container is given: the binary's own pages, with
/// nothing buffered, take about 12 MiB.
pub const MIN_MEMORY_LIMIT: u64 = 16 * MI;

/// What one container asks for and may use: millicores and bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// CPU the scheduler sets aside, in millicores.
    pub cpu_request: u64,
    /// Memory the scheduler sets aside, in bytes.
    pub memory_request: u64,
    /// CPU past which the container is throttled, in millicores.
    pub cpu_limit: u64,
    /// Memory past which the container is killed, in bytes.
    pub memory_limit: u64,
}

/// The defaults of the container named `container` (one of the sidecars' names).
///
/// The proxies on the request path (TLS terminator, sharding ambassador and router, HTTP
/// ambassador) may use a whole core, since throttling a proxy adds its wait to every
/// request; the sharding ambassador's memory covers the 256 MiB it may hold of clients'
/// requests (`docs/sidecars/shard.md`), the HTTP ambassador's a 128 MiB cache, and the
/// scatter/gather root's the answers of every leaf of the requests in flight. The
/// adapters, the health monitor and the election sidecar do little and get little. Every
/// container has limits, so that pods with them pass a namespace's ResourceQuota on
/// `limits.cpu` and `limits.memory`.
pub fn defaults(container: &str) -> Budget {
    let budget = |cpu_request, memory_request, cpu_limit, memory_limit| Budget {
        cpu_request,
        memory_request: memory_request * MI,
        cpu_limit,
        memory_limit: memory_limit * MI,
    };
    match container {
        TLS => budget(50, 32, 1000, 128),
        SHARD => budget(50, 64, 1000, 384),
        HTTP => budget(50, 32, 1000, 256),
        LOGS | METRICS | HEALTH | ELECT => budget(10, 16, 200, 64),
        QUEUE => budget(50, 32, 1000, 128),
        GATHER => budget(50, 32, 1000, 256),
        _ => budget(50, 32, 500, 128),
    }
}

/// The budget of `container` with what `overrides` (the block at `field`, such as
/// `spec.sidecars.http.resources`) changes, or every reason it cannot be.
pub fn resolve(
    container: &str,
    overrides: Option<&SidecarResources>,
    field: &str,
) -> Result<Budget, Vec<FieldError>> {
    resolve_named(container, overrides, |list, resource| {
        format!("{field}.{list}.{resource}")
    })
}

/// [`resolve`], with each error named by `name(list, resource)` (`"limits"`,
/// `"memory"`): the webhook names the annotation that set the value.
pub fn resolve_named(
    container: &str,
    overrides: Option<&SidecarResources>,
    name: impl Fn(&str, &str) -> String,
) -> Result<Budget, Vec<FieldError>> {
    let mut budget = defaults(container);
    let Some(overrides) = overrides else {
        return Ok(budget);
    };
    let mut errors = Vec::new();
    let Budget {
        cpu_request,
        memory_request,
        cpu_limit,
        memory_limit,
    } = &mut budget;
    let lists = [
        (
            "requests",
            overrides.requests.as_ref(),
            cpu_request,
            memory_request,
        ),
        ("limits", overrides.limits.as_ref(), cpu_limit, memory_limit),
    ];
    for (list, values, cpu_slot, memory_slot) in lists {
        let Some(values) = values else { continue };
        let parsed = [
            (
                "cpu",
                &values.cpu,
                millicores as fn(&str) -> Option<u64>,
                cpu_slot,
                "is not a CPU quantity: cores, at least 1m, as 250m, 0.5 or 2",
            ),
            (
                "memory",
                &values.memory,
                bytes,
                memory_slot,
                "is not a memory quantity: whole bytes, as 64Mi, 1Gi or 500M",
            ),
        ];
        for (resource, text, parse, slot, what) in parsed {
            let Some(text) = text else { continue };
            match parse(&text.0).filter(|v| *v > 0) {
                Some(value) => *slot = value,
                None => errors.push(FieldError::new(
                    name(list, resource),
                    format!("{:?} {what}", text.0),
                )),
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // The API server refuses a pod template with a request above its limit; say which
    // field, before it does.
    if budget.cpu_request > budget.cpu_limit {
        errors.push(FieldError::new(
            name("requests", "cpu"),
            format!(
                "{} is more than the CPU limit {}: a request may not exceed its limit",
                cpu(budget.cpu_request),
                cpu(budget.cpu_limit)
            ),
        ));
    }
    if budget.memory_request > budget.memory_limit {
        errors.push(FieldError::new(
            name("requests", "memory"),
            format!(
                "{} is more than the memory limit {}: a request may not exceed its limit",
                memory(budget.memory_request),
                memory(budget.memory_limit)
            ),
        ));
    }
    if budget.memory_limit < MIN_MEMORY_LIMIT {
        errors.push(FieldError::new(
            name("limits", "memory"),
            format!(
                "{} is less than {}, which a Rigging container needs idle: it would be OOM-killed as it starts",
                memory(budget.memory_limit),
                memory(MIN_MEMORY_LIMIT)
            ),
        ));
    }
    if errors.is_empty() {
        Ok(budget)
    } else {
        Err(errors)
    }
}

impl Budget {
    /// As a container's `resources`.
    pub fn requirements(&self) -> ResourceRequirements {
        let list = |m: u64, b: u64| {
            BTreeMap::from([
                ("cpu".to_owned(), Quantity(cpu(m))),
                ("memory".to_owned(), Quantity(memory(b))),
            ])
        };
        ResourceRequirements {
            requests: Some(list(self.cpu_request, self.memory_request)),
            limits: Some(list(self.cpu_limit, self.memory_limit)),
            ..ResourceRequirements::default()
        }
    }
}

/// A quantity in thousandths of its unit, exactly (`1.5Gi`, `250m`, `2`, `1e3` is not
/// taken); `None` when it is not one, is negative, or is finer than a thousandth.
fn thousandths(text: &str) -> Option<u128> {
    let text = text.trim();
    let at = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(at);
    let multiplier: u128 = match suffix {
        "m" => 1,
        "" => 1000,
        "k" => 1000u128.pow(2),
        "M" => 1000u128.pow(3),
        "G" => 1000u128.pow(4),
        "T" => 1000u128.pow(5),
        "P" => 1000u128.pow(6),
        "E" => 1000u128.pow(7),
        "Ki" => 1000 << 10,
        "Mi" => 1000 << 20,
        "Gi" => 1000 << 30,
        "Ti" => 1000 << 40,
        "Pi" => 1000 << 50,
        "Ei" => 1000 << 60,
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') || number.len() > 30 {
        return None;
    }
    let digits: u128 = format!("{whole}{fraction}").parse().ok()?;
    let scale = 10u128.pow(u32::try_from(fraction.len()).ok()?);
    let total = digits.checked_mul(multiplier)?;
    total.is_multiple_of(scale).then(|| total / scale)
}

/// A CPU quantity in millicores.
fn millicores(text: &str) -> Option<u64> {
    u64::try_from(thousandths(text)?).ok()
}

/// A memory quantity in bytes; `None` for a fraction of a byte.
fn bytes(text: &str) -> Option<u64> {
    let t = thousandths(text)?;
    t.is_multiple_of(1000)
        .then(|| u64::try_from(t / 1000).ok())?
}

/// `value` (a whole number) in canonical decimal SI: the largest suffix that keeps it whole.
fn decimal(value: u64) -> String {
    const SUFFIXES: [(u32, &str); 6] = [
        (18, "E"),
        (15, "P"),
        (12, "T"),
        (9, "G"),
        (6, "M"),
        (3, "k"),
    ];
    SUFFIXES
        .iter()
        .find(|(e, _)| value > 0 && value.is_multiple_of(10u64.pow(*e)))
        .map_or_else(
            || value.to_string(),
            |(e, s)| format!("{}{s}", value / 10u64.pow(*e)),
        )
}

/// Millicores as Kubernetes writes them: `250m`, `1`, `1500m`.
pub fn cpu(millicores: u64) -> String {
    if millicores.is_multiple_of(1000) {
        decimal(millicores / 1000)
    } else {
        format!("{millicores}m")
    }
}

/// Bytes as Kubernetes writes them: `64Mi`, `1536Mi`, `500M`.
pub fn memory(bytes: u64) -> String {
    const SUFFIXES: [(u32, &str); 6] = [
        (60, "Ei"),
        (50, "Pi"),
        (40, "Ti"),
        (30, "Gi"),
        (20, "Mi"),
        (10, "Ki"),
    ];
    SUFFIXES
        .iter()
        .find(|(shift, _)| bytes > 0 && bytes.is_multiple_of(1u64 << shift))
        .map_or_else(
            || decimal(bytes),
            |(shift, s)| format!("{}{s}", bytes >> shift),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn block(json: serde_json::Value) -> SidecarResources {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn quantities_read_as_kubernetes_reads_them() {
        assert_eq!(millicores("250m"), Some(250));
        assert_eq!(millicores("0.5"), Some(500));
        assert_eq!(millicores("2"), Some(2000));
        assert_eq!(millicores("0.0001"), None, "finer than a millicore");
        assert_eq!(millicores("-1"), None);
        assert_eq!(millicores("1e3"), None);
        assert_eq!(millicores("lots"), None);
        assert_eq!(bytes("64Mi"), Some(64 * MI));
        assert_eq!(bytes("1.5Gi"), Some(1536 * MI));
        assert_eq!(bytes("500M"), Some(500_000_000));
        assert_eq!(bytes("1000"), Some(1000));
        assert_eq!(bytes("100m"), None, "a tenth of a byte");
        assert_eq!(bytes("."), None);
    }

    #[test]
    fn quantities_are_written_in_the_api_servers_canonical_form() {
        assert_eq!(cpu(250), "250m");
        assert_eq!(cpu(1000), "1");
        assert_eq!(cpu(1500), "1500m");
        assert_eq!(memory(1536 * MI), "1536Mi");
        assert_eq!(memory(1 << 30), "1Gi");
        assert_eq!(memory(500_000_000), "500M");
        assert_eq!(memory(1500), "1500");
        assert_eq!(memory(2000), "2k");
    }

    proptest! {
        #[test]
        fn what_is_written_reads_back_the_same(millis in 1u64..10_000_000, b in 1u64..(1 << 40)) {
            prop_assert_eq!(millicores(&cpu(millis)), Some(millis));
            prop_assert_eq!(bytes(&memory(b)), Some(b));
        }
    }

    #[test]
    fn each_value_given_replaces_its_default_and_the_rest_stay() {
        let budget = resolve(
            HTTP,
            Some(&block(serde_json::json!({"limits": {"memory": "1Gi"}}))),
            "spec.sidecars.http.resources",
        )
        .unwrap();
        assert_eq!(
            budget,
            Budget {
                memory_limit: 1 << 30,
                ..defaults(HTTP)
            }
        );
        let r = budget.requirements();
        assert_eq!(r.limits.unwrap()["memory"].0, "1Gi");
        assert_eq!(r.requests.unwrap()["cpu"].0, "50m");
        assert_eq!(resolve(LOGS, None, "x").unwrap(), defaults(LOGS));
    }

    #[test]
    fn what_the_api_server_would_refuse_is_refused_first_naming_the_field() {
        let errors = |json| {
            resolve(SHARD, Some(&block(json)), "spec.router.resources")
                .unwrap_err()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            errors(serde_json::json!({"requests": {"cpu": "2"}})),
            [
                "spec.router.resources.requests.cpu: 2 is more than the CPU limit 1: a request may not exceed its limit"
            ]
        );
        assert_eq!(
            errors(serde_json::json!({"limits": {"memory": "lots"}, "requests": {"cpu": "0"}})),
            [
                "spec.router.resources.requests.cpu: \"0\" is not a CPU quantity: cores, at least 1m, as 250m, 0.5 or 2",
                "spec.router.resources.limits.memory: \"lots\" is not a memory quantity: whole bytes, as 64Mi, 1Gi or 500M"
            ]
        );
        assert_eq!(
            errors(serde_json::json!({"limits": {"memory": "8Mi"}, "requests": {"memory": "8Mi"}})),
            [
                "spec.router.resources.limits.memory: 8Mi is less than 16Mi, which a Rigging container needs idle: it would be OOM-killed as it starts"
            ]
        );
    }
}
