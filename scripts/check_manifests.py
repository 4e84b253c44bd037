#!/usr/bin/env python3
"""Checks every Kubernetes artefact Rigging ships, with the real tools.

- The Helm chart: linted and rendered by Helm's own engine (helm-python-sdk) for several
  value sets, with assertions on what a platform team relies on; the chart's CRDs are the
  generated ones.
- The chart's output and the CRDs: strict schema validation with kubernetes-validate
  against the oldest supported Kubernetes (1.29, native sidecars) and the newest, yamllint,
  and checkov for the chart's security posture. (What `rigging-operator render` prints for
  every example is validated the same way by the operator's own tests.)

Run by scripts/test.sh inside the project's venv. Exits non-zero on the first failed group
and says which object and which tool complained.
"""

from __future__ import annotations

import filecmp
import subprocess
import sys
import tempfile
from pathlib import Path

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "rigging"
KUBE_VERSIONS = ["1.29.0", "1.37.0"]
# checkov findings we accept, and why (kept short; each is a deliberate choice).
CHECKOV_SKIPS = {
    "CKV_K8S_43": "image digests are a values choice (image.digest); tags are the default",
    "CKV_K8S_15": "IfNotPresent is right for tagged releases; users set Always for :latest",
    "CKV_K8S_21": "the namespace is the Helm release's, chosen at install time",
    "CKV2_K8S_6": "the operator talks to the API server only; NetworkPolicy is the cluster's",
    "CKV_K8S_38": "the operator needs its service account token to reach the API server",
    "CKV_K8S_155": "the operator patches the caBundle of its own webhook configuration only (resourceNames)",
}

failures: list[str] = []
passed = 0


def check(name: str, ok: bool, detail: str = "") -> None:
    global passed
    if ok:
        passed += 1
        print(f"  ok   {name}")
    else:
        failures.append(f"{name}: {detail}")
        print(f"  FAIL {name}\n{detail}")


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def render_chart(values: dict | None) -> list[dict]:
    chart = helm.Chart.load(CHART)
    rendered = chart.render(values, name="rigging", namespace="rigging-system", is_install=True)
    objects: list[dict] = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".yaml"):
            objects.extend(docs(text))
    return objects


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o.get("kind") == kind]


def chart_checks(out: Path) -> None:
    print("chart: helm lint (strict)")
    for kube in KUBE_VERSIONS:
        report = helm.lint(CHART, strict=True, kube_version=f"v{kube}")
        problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        problems += report.get("errors") or []
        check(f"helm lint --strict (Kubernetes {kube})", not problems, "\n".join(map(str, problems)))

    print("chart: values schema refuses bad values")
    try:
        helm.Chart.load(CHART).validate_schema({"replicaCount": 0})
        check("replicaCount: 0 is refused", False, "values.schema.json accepted replicaCount 0")
    except helm.HelmError as err:
        check("replicaCount: 0 is refused", "replicaCount" in str(err), str(err))

    print("chart: rendered objects")
    default = render_chart(None)
    deploy = by_kind(default, "Deployment")[0]
    pod = deploy["spec"]["template"]
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    check("operator runs with leader election by default", "--leader-election" in container["args"], str(container["args"]))
    check("sidecar image defaults to the app version", env.get("RIGGING_SIDECAR_IMAGE") == "rigging-sidecar:0.1.0", str(env))
    rolling = deploy["spec"]["strategy"]["rollingUpdate"]
    check(
        "a rollout starts a new replica before it stops an old one, and the grace period covers the webhook's shutdown delay and drain",
        rolling == {"maxUnavailable": 0, "maxSurge": 1} and "--shutdown-delay=10s" in container["args"]
        and pod["spec"]["terminationGracePeriodSeconds"] == 30,
        f"{rolling} {container['args']} {pod['spec'].get('terminationGracePeriodSeconds')}",
    )
    check(
        "deployment selector matches its pod labels",
        all(pod["metadata"]["labels"].get(k) == v for k, v in deploy["spec"]["selector"]["matchLabels"].items()),
        str(deploy["spec"]["selector"]),
    )
    sc = container["securityContext"]
    check(
        "operator container is hardened",
        sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
        and pod["spec"]["securityContext"]["runAsNonRoot"],
        str(sc),
    )
    roles = by_kind(default, "Role")
    check("a namespaced Role grants Leases for leader election", any(
        "leases" in r["resources"] for role in roles for r in role["rules"]), str(roles))
    cluster_rules = by_kind(default, "ClusterRole")[0]["rules"]
    check("the ClusterRole never grants Secrets", all("secrets" not in r["resources"] for r in cluster_rules), str(cluster_rules))
    lease_rules = [r for r in cluster_rules if "leases" in r["resources"]]
    check("cluster-wide, the operator holds no Lease verb", not lease_rules, str(lease_rules))
    elect_roles = [r for r in by_kind(default, "ClusterRole") if r["metadata"]["name"].endswith("-elect")]
    elect_name = elect_roles[0]["metadata"]["name"] if elect_roles else None
    check("a ClusterRole holds exactly the Lease verbs the election Roles grant (RBAC escalation prevention)",
          len(elect_roles) == 1 and [sorted(r["verbs"]) for r in elect_roles[0]["rules"]]
          == [["create", "delete", "get", "list", "update"]], str(elect_roles))
    binds = [r for r in cluster_rules if "bind" in r["verbs"]]
    check("the operator may bind that ClusterRole, by name, and nothing else",
          binds == [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
                     "resourceNames": [elect_name], "verbs": ["bind"]}]
          and f"--elect-grant-role={elect_name}" in container["args"], f"{binds} {container['args']}")
    check("a PDB protects 2 operator replicas", len(by_kind(default, "PodDisruptionBudget")) == 1, "")

    single = render_chart({"replicaCount": 1, "leaderElection": {"enabled": False}})
    args = by_kind(single, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    leases = [r for role in by_kind(single, "Role") for r in role["rules"] if "leases" in r["resources"]]
    check("leader election can be turned off", "--no-leader-election" in args and not leases, str(args))
    check("no PDB for a single replica", not by_kind(single, "PodDisruptionBudget"), "")

    digest = "sha256:" + "a" * 64
    pinned = render_chart({"image": {"repository": "r/op", "digest": digest}})
    image = by_kind(pinned, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["image"]
    check("a pinned digest wins over the tag", image == f"r/op@{digest}", image)
    registry = render_chart({"image": {"registry": "ghcr.io/rigging-dev/", "repository": "op", "tag": "1"},
                             "sidecarImage": {"registry": "ghcr.io/rigging-dev", "repository": "sc"}})
    container = by_kind(registry, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    sidecar = {e["name"]: e.get("value") for e in container["env"]}.get("RIGGING_SIDECAR_IMAGE")
    check("images are registry/repository:tag", container["image"] == "ghcr.io/rigging-dev/op:1" and sidecar == "ghcr.io/rigging-dev/sc:0.1.0",
          f"{container['image']} {sidecar}")
    hooks = by_kind(default, "MutatingWebhookConfiguration")
    check("the webhook calls the webhook Service, for labelled pods only, never in kube-system or the release namespace",
          len(hooks) == 1 and hooks[0]["webhooks"][0]["clientConfig"]["service"]["name"] == "rigging-webhook"
          and hooks[0]["webhooks"][0]["objectSelector"] == {"matchLabels": {"rigging.dev/inject": "enabled"}}
          and hooks[0]["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == ["kube-system", "rigging-system"]
          and any(s["metadata"]["name"] == "rigging-webhook" for s in by_kind(default, "Service")), str(hooks))
    secret_rules = [r for role in by_kind(default, "Role") for r in role["rules"] if "secrets" in r["resources"]]
    check("the only Secret the operator may read is its webhook CA",
          all(r.get("resourceNames") == ["rigging-webhook-ca"] for r in secret_rules if "get" in r["verbs"]), str(secret_rules))
    no_hook = render_chart({"webhook": {"enabled": False}})
    check("webhook.enabled=false leaves no webhook, no Secret rights", not by_kind(no_hook, "MutatingWebhookConfiguration")
          and "--webhook-listen=0.0.0.0:9443" not in by_kind(no_hook, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"], "")
    managed = render_chart({"webhook": {"certManager": {"enabled": True}}})
    certs = {o["metadata"]["name"]: o for o in by_kind(managed, "Certificate")}
    pod_spec = by_kind(managed, "Deployment")[0]["spec"]["template"]["spec"]
    hook = by_kind(managed, "MutatingWebhookConfiguration")[0]
    check("with cert-manager: a CA Certificate, the serving one it issues, mounted; cainjector fills the caBundle",
          certs.get("rigging-webhook-ca", {}).get("spec", {}).get("isCA") is True
          and certs.get("rigging-webhook", {}).get("spec", {}).get("issuerRef", {}).get("name") == "rigging-webhook-ca"
          and "--webhook-cert-dir=/etc/rigging/webhook" in pod_spec["containers"][0]["args"]
          and pod_spec["volumes"][0]["secret"]["secretName"] == "rigging-webhook-tls"
          and hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "rigging-system/rigging-webhook"
          and not [r for role in by_kind(managed, "Role") for r in role["rules"] if "secrets" in r["resources"]],
          str(certs))
    check("no ServiceMonitor or NetworkPolicy unless asked", not by_kind(default, "ServiceMonitor") and not by_kind(default, "NetworkPolicy"), "")
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    extras = render_chart({"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                           "networkPolicy": {"enabled": True, "metricsFrom": peers}})
    monitors = by_kind(extras, "ServiceMonitor")
    check("the ServiceMonitor selects the metrics Service's port", len(monitors) == 1
          and monitors[0]["spec"]["endpoints"][0]["port"] == "metrics"
          and monitors[0]["metadata"]["labels"].get("release") == "prom"
          and all(by_kind(extras, "Service")[0]["metadata"]["labels"].get(k) == v
                  for k, v in monitors[0]["spec"]["selector"]["matchLabels"].items()), str(monitors))
    policies = by_kind(extras, "NetworkPolicy")
    check("the NetworkPolicy admits the metrics port from the peers given, and the webhook port", len(policies) == 1
          and policies[0]["spec"]["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}], "from": peers},
                                                  {"ports": [{"port": "webhook", "protocol": "TCP"}]}], str(policies))

    print("chart: CRDs are the generated ones")
    generated = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    shipped = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    check("charts/rigging/crds lists the same files as crds/", generated == shipped and bool(generated), f"{generated} vs {shipped}")
    for name in generated:
        same = (CHART / "crds" / name).exists() and filecmp.cmp(ROOT / "crds" / name, CHART / "crds" / name, shallow=False)
        check(f"charts/rigging/crds/{name} is fresh", same, "regenerate with scripts/generate-crds.sh")

    # The ServiceMonitor is left out of schema validation: its CRD is prometheus-operator's.
    extras = [o for o in extras if o["kind"] != "ServiceMonitor"]
    for i, objects in enumerate([default, single, pinned, extras]):
        path = out / f"chart-{i}.yaml"
        path.write_text(yaml.safe_dump_all(objects, sort_keys=False))


def schema_checks(out: Path) -> None:
    print("schemas: kubernetes-validate --strict")
    files = sorted(str(p) for p in out.glob("*.yaml")) + sorted(str(p) for p in (ROOT / "crds").glob("*.yaml"))
    for kube in KUBE_VERSIONS:
        result = run(["kubernetes-validate", "--strict", "--quiet", "-k", kube, *files])
        # It only WARNs on kinds it does not know (our own CRs never reach it: render
        # output and the chart are built-in kinds); anything else is a failure.
        check(f"strict schema validation, Kubernetes {kube}", result.returncode == 0, result.stdout + result.stderr)

    print("yamllint")
    targets = [str(out), str(ROOT / "crds"), str(ROOT / "examples"), str(CHART / "values.yaml"), str(CHART / "Chart.yaml")]
    result = run(["yamllint", "--strict", "-c", str(ROOT / ".yamllint.yaml"), *targets])
    check("yamllint --strict", result.returncode == 0, result.stdout + result.stderr)

    print("checkov: chart security posture")
    chart_out = out / "chart"
    chart_out.mkdir()
    (chart_out / "chart.yaml").write_text((out / "chart-0.yaml").read_text())
    result = run(["checkov", "--quiet", "--compact", "--skip-download", "--framework", "kubernetes", "-d", str(chart_out),
                  "--skip-check", ",".join(CHECKOV_SKIPS)])
    check("checkov on the rendered chart", result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:])


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="rigging-manifests-") as tmp:
        out = Path(tmp)
        chart_checks(out)
        schema_checks(out)
    print(f"\nmanifests: {passed} passed, {len(failures)} failed")
    for failure in failures:
        print(f"  - {failure.splitlines()[0]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
