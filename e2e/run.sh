#!/usr/bin/env bash
# End-to-end suite: a real cluster, the cluster suite (operator/tests/cluster) on it, then
# the real images, `helm install`, each example applied, and what a user would see asserted.
#
# Cluster: $RIGGING_E2E_KUBECONFIG if set; otherwise a kind cluster this script creates
# (needs kind, docker and helm). With neither, the suite is skipped — unless
# RIGGING_E2E_REQUIRE=1, when it fails: CI that promises e2e must never pass without it.
#
#   RIGGING_E2E_KUBECONFIG=~/.kube/config e2e/run.sh     an existing cluster (images must be pullable)
#   e2e/run.sh                                          a throwaway kind cluster
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=rigging-e2e
namespace=rigging-system
tag=e2e
created_cluster=0

skip_or_fail() {
  if [[ ${RIGGING_E2E_REQUIRE:-0} == 1 ]]; then
    echo "e2e: FAILED: $1 (RIGGING_E2E_REQUIRE=1)" >&2
    exit 1
  fi
  echo "e2e: skipped: $1"
  exit 0
}

# True when every named command is on PATH.
need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || return 1
  done
}

cleanup() {
  if ((created_cluster)) && [[ ${RIGGING_E2E_KEEP:-0} != 1 ]]; then
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

if [[ -n ${RIGGING_E2E_KUBECONFIG:-} ]]; then
  export KUBECONFIG=$RIGGING_E2E_KUBECONFIG
  need kubectl helm || skip_or_fail "kubectl and helm are needed"
  image_args=()
else
  need kind docker helm kubectl || skip_or_fail "no cluster: set RIGGING_E2E_KUBECONFIG, or install kind, docker and helm"
  docker info >/dev/null 2>&1 || skip_or_fail "no Docker engine running"
  echo "e2e: creating kind cluster $cluster"
  kind create cluster --name "$cluster" --config e2e/kind.yaml --wait 180s
  created_cluster=1
  export KUBECONFIG
  KUBECONFIG=$(mktemp)
  kind get kubeconfig --name "$cluster" >"$KUBECONFIG"
  for target in operator sidecar; do
    docker build --target "$target" -t "rigging-$target:$tag" .
    kind load docker-image --name "$cluster" "rigging-$target:$tag"
  done
  image_args=(--set "image.tag=$tag" --set "sidecarImage.tag=$tag" --set image.pullPolicy=Never)
fi

# The cluster suite first, while no installed operator reconciles the test namespaces:
# each test starts its own operator, scoped to its namespace.
echo "e2e: cluster suite"
RIGGING_KUBECONFIG=$KUBECONFIG RIGGING_CLUSTER_REQUIRE=1 \
  cargo test --workspace --test cluster --locked -- --test-threads 8

echo "e2e: helm install"
helm upgrade --install rigging charts/rigging --namespace "$namespace" --create-namespace \
  --wait --timeout 180s "${image_args[@]}"
kubectl -n "$namespace" rollout status deployment/rigging --timeout=120s

fail() {
  echo "e2e: FAILED: $*" >&2
  kubectl -n "$namespace" logs deployment/rigging --tail=100 >&2 || true
  exit 1
}

# Every example is accepted and reconciled (a status for its generation), in a namespace
# of its own; some need images or Secrets of the user's, so readiness is not awaited here.
echo "e2e: every example is accepted and reconciled"
examples_ns=rigging-e2e-examples
kubectl create namespace "$examples_ns" --dry-run=client -o yaml | kubectl apply -f -
while IFS= read -r example; do
  kubectl -n "$examples_ns" apply -f "$example" >/dev/null || fail "$example was refused"
done < <(find examples -name '*.yaml' | sort)
for kind in replicatedservices shardedservices workqueues; do
  for object in $(kubectl -n "$examples_ns" get "$kind" -o name); do
    for _ in $(seq 60); do
      generation=$(kubectl -n "$examples_ns" get "$object" -o jsonpath='{.metadata.generation}')
      observed=$(kubectl -n "$examples_ns" get "$object" -o jsonpath='{.status.observedGeneration}')
      [[ $observed == "$generation" ]] && break
      sleep 2
    done
    [[ $observed == "$generation" ]] || fail "$object was never reconciled"
  done
done

# A ReplicatedService becomes Ready, its Deployment serves through its Service.
echo "e2e: examples/replicated-service/minimal.yaml"
app_ns=rigging-e2e-app
kubectl create namespace "$app_ns" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$app_ns" apply -f examples/replicated-service/minimal.yaml
name=$(kubectl -n "$app_ns" get replicatedservices -o jsonpath='{.items[0].metadata.name}')
kubectl -n "$app_ns" wait --for=condition=Ready "replicatedservice/$name" --timeout=180s ||
  fail "replicatedservice/$name never became Ready"
kubectl -n "$app_ns" get "deployment/$name" "service/$name" >/dev/null ||
  fail "the Deployment and Service of $name are missing"
kubectl -n "$app_ns" run e2e-curl --rm -i --restart=Never --image=curlimages/curl:8.10.1 -- \
  curl -fsS --max-time 10 "http://$name" >/dev/null || fail "service $name does not answer"

# TLS: the terminator in front of the app answers HTTPS with the Secret's certificate.
echo "e2e: examples/replicated-service/full.yaml through the TLS sidecar"
tls_dir=$(mktemp -d)
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=web" \
  -addext "subjectAltName=DNS:web,DNS:web.$app_ns.svc" \
  -keyout "$tls_dir/tls.key" -out "$tls_dir/tls.crt" 2>/dev/null
kubectl -n "$app_ns" create secret tls web-tls --cert "$tls_dir/tls.crt" --key "$tls_dir/tls.key" \
  --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$app_ns" apply -f examples/replicated-service/full.yaml
kubectl -n "$app_ns" wait --for=condition=Ready replicatedservice/web --timeout=180s ||
  fail "replicatedservice/web never became Ready"
kubectl -n "$app_ns" run e2e-https --rm -i --restart=Never --image=curlimages/curl:8.10.1 -- \
  curl -fsSk --max-time 10 "https://web:8443" >/dev/null || fail "https://web:8443 does not answer"

# The frontend tier: Rigging's HTTP ambassador caches the app's answers in front of it.
echo "e2e: examples/replicated-service/frontend.yaml through the cache tier"
kubectl -n "$app_ns" apply -f examples/replicated-service/frontend.yaml
kubectl -n "$app_ns" wait --for=condition=Ready replicatedservice/products --timeout=180s ||
  fail "replicatedservice/products (with its frontend) never became Ready"
kubectl -n "$app_ns" run e2e-frontend --rm -i --restart=Never --image=curlimages/curl:8.10.1 -- \
  sh -c 'for i in 1 2 3 4 5 6; do curl -fsS -D - -o /dev/null -H "X-Api-Key: e2e" http://products-frontend/ || exit 1; done |
         grep -qi "^age:"' ||
  fail "products-frontend does not answer, or none of its answers came from the cache (two replicas, six requests)"

# Active-passive: two pods elect a leader on a Lease (the operator grants them the Role);
# only the leader's pod is ready, so the Service answers from it alone; when the leader
# goes, the other pod takes over and the Service follows it.
echo "e2e: examples/replicated-service/active-passive.yaml: one leader, and failover"
kubectl -n "$app_ns" apply -f examples/replicated-service/active-passive.yaml
kubectl -n "$app_ns" wait --for=condition=Ready replicatedservice/scheduler --timeout=180s ||
  fail "replicatedservice/scheduler never had a ready leader"
leader_pod() {
  kubectl -n "$app_ns" get pods -l app.kubernetes.io/name=scheduler \
    -o jsonpath='{range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' |
    awk '$2 == "True" {print $1}'
}
leaders=$(leader_pod)
[[ $(wc -w <<<"$leaders") == 1 ]] || fail "scheduler: ready pods '$leaders', expected exactly the leader's"
kubectl -n "$app_ns" run e2e-leader --rm -i --restart=Never --image=curlimages/curl:8.10.1 -- \
  curl -fsS --max-time 10 http://scheduler:8080/ | grep -q "^$leaders leads; its writes carry fencing token" ||
  fail "the scheduler Service does not answer from its leader $leaders"
kubectl -n "$app_ns" delete pod "$leaders" --wait=false
next=
for _ in $(seq 60); do
  next=$(leader_pod)
  [[ -n $next && $next != "$leaders" ]] && break
  sleep 2
done
[[ -n $next && $next != "$leaders" ]] || fail "scheduler: no new leader after deleting $leaders"

# Bad input gets a condition a person can act on, not a crash loop.
echo "e2e: a ReplicatedService without a readiness probe is refused"
if kubectl -n "$app_ns" apply -f - <<'YAML' 2>/tmp/rigging-e2e-refused; then
apiVersion: rigging.dev/v1alpha1
kind: ReplicatedService
metadata:
  name: no-probe
spec:
  port: 8080
  template:
    spec:
      containers:
        - name: app
          image: nginx
YAML
  kubectl -n "$app_ns" wait --for=condition=Degraded replicatedservice/no-probe --timeout=60s ||
    fail "no-probe was accepted and never reported Degraded"
else
  grep -qi readiness /tmp/rigging-e2e-refused || fail "refusal does not mention the readiness probe"
fi

# Sharding: keys written through the router Service come back through it, and each
# lands on one shard.
echo "e2e: examples/sharded-redis/router.yaml"
kubectl -n "$app_ns" apply -f examples/sharded-redis/router.yaml
kubectl -n "$app_ns" wait --for=condition=Ready shardedservice/sessions --timeout=300s ||
  fail "shardedservice/sessions never became Ready"
# shellcheck disable=SC2016 # the loop runs in the pod's shell
kubectl -n "$app_ns" run e2e-redis --rm -i --restart=Never --image=redis:7-alpine -- \
  sh -c 'for k in a b c d e f g h; do redis-cli -h sessions SET "key-$k" "v-$k" >/dev/null; done
         for k in a b c d e f g h; do [ "$(redis-cli -h sessions GET "key-$k")" = "v-$k" ] || exit 1; done' ||
  fail "keys written through the sessions router did not read back"

# Work: every item of the queue is processed by a pod whose native sidecar (the log
# adapter) does not keep its Job from completing.
echo "e2e: a WorkQueue with a native sidecar in its workers"
kubectl -n "$app_ns" apply -f - <<'YAML'
apiVersion: rigging.dev/v1alpha1
kind: WorkQueue
metadata:
  name: e2e-work
spec:
  items: [alpha, Beta, beta, "gamma delta"]
  parallelism: 2
  retries: 1
  worker:
    template:
      spec:
        containers:
          - name: worker
            image: busybox:1.36
            command: [sh, -c, 'echo "{\"message\": \"done $WORK_ITEM\"}" >> /var/log/work/log.json; cat "$WORK_ITEM_FILE"']
  sidecars:
    logs: {format: json, file: /var/log/work/log.json}
YAML
kubectl -n "$app_ns" wait --for=condition=Ready workqueue/e2e-work --timeout=600s ||
  fail "workqueue/e2e-work never reached all-succeeded"
succeeded=$(kubectl -n "$app_ns" get workqueue/e2e-work -o jsonpath='{.status.succeeded}')
[[ $succeeded == 4 ]] || fail "workqueue/e2e-work: $succeeded of 4 items succeeded"

# Injection: a labelled Deployment of the user's own gets the health monitor and the
# metrics adapter as native sidecars, and turns Ready on the monitor's word.
echo "e2e: sidecar injection into a labelled Deployment"
kubectl -n "$app_ns" apply -f - <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: injected-cache
spec:
  selector:
    matchLabels: {app: injected-cache}
  template:
    metadata:
      labels: {app: injected-cache, rigging.dev/inject: enabled}
      annotations:
        rigging.dev/sidecars: health,metrics
        rigging.dev/health-checks: redis://127.0.0.1:6379
        rigging.dev/metrics-source: redis://127.0.0.1:6379
    spec:
      containers:
        - name: redis
          image: redis:7
YAML
kubectl -n "$app_ns" rollout status deployment/injected-cache --timeout=180s ||
  fail "the injected Deployment never became ready"
init=$(kubectl -n "$app_ns" get pods -l app=injected-cache \
  -o jsonpath='{.items[0].spec.initContainers[*].name}')
[[ $init == "rigging-metrics rigging-health" ]] || fail "injected init containers: '$init'"

echo "e2e: all checks passed"
