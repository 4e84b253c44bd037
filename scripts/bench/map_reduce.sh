#!/usr/bin/env bash
# End-to-end time of a MapReduce run on the kit's node (real pods, Rigging's images), beside
# a Kubernetes Indexed Job running the same worker the same number of times:
#
#   scripts/bench/map_reduce.sh                  200 items, parallelism 10 (≈ 5 min with the kit)
#   ITEMS=50 PARALLELISM=5 scripts/bench/map_reduce.sh
#   KIT=/tmp/cp scripts/bench/map_reduce.sh      on a kit already up (its node, images imported)
#   OPERATOR=path/to/rigging-operator scripts/bench/map_reduce.sh   a binary already built
#   API=1 ITEMS=1000 PARALLELISM=200 scripts/bench/map_reduce.sh
#                                                on the API-only kit (no node): the operator's
#                                                part alone (≈ 12 min)
#
# The worker (busybox) writes {"n": 1} to $WORK_OUTPUT_FILE. The MapReduce runs each item as
# a Job whose pod also runs the output sidecar, which stores the output in the MapReduce's
# own NATS JetStream; once every item is done the reduce Job sums the outputs into the
# ConfigMap <name>-result, which must read {"n": ITEMS}. The Indexed Job (completions
# ITEMS, the same parallelism) is what Kubernetes offers alone: the map, with no outputs
# kept, no join and no reduce. Measured, from the apply: the MapReduce's run 1 joined
# (status.runs[0].phase Reducing or later) and succeeded; the Indexed Job Complete. The
# ratio is the MapReduce's total over the Indexed Job's.
#
# The MapReduce starts its broker first (one NATS pod): its first items wait for it, which
# is in the total, as a user's first run would see.
#
# API=1: the kit without its node (e2e/controlplane --no-node), where no pod runs. The
# stand-in kubelet of scripts/bench/kit_api.py marks each pod Succeeded as it appears, the
# MapReduce's and the Indexed Job's alike, so both are timed on the controllers alone:
# Rigging's operator and the Job controller for the one, the Job controller for the other.
# The MapReduce names an existing broker (a URL nothing connects to, as no pod runs), and
# there is no result to check: no reducer runs either.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh

API=${API:-0}
ITEMS=${ITEMS:-200}
PARALLELISM=${PARALLELISM:-10}
TIMEOUT=${TIMEOUT:-1800}
NS=bench-mr

log() { printf 'map_reduce.sh: %s\n' "$*" >&2; }

install_apt curl python3
work=$(mktemp -d)
operator_binary "$work"
op='' standin=''
cleanup() {
  stop_pid "$standin"
  stop_pid "$op"
  stop_kit "$work" "$NS"
}
trap cleanup EXIT

if ((API)); then
  [[ -z ${KIT:-} ]] || { log "API=1 starts a kit of its own: unset KIT"; exit 1; }
  start_kit "$work" --no-node
elif [[ -n ${KIT:-} ]]; then
  export KUBECONFIG=$KIT/kubeconfig
  kubectl=("$KIT/bin/kubectl")
  "${kubectl[@]}" apply -f crds/ >/dev/null
else
  start_kit "$work"
  e2e/images/build.sh --import "$work/cp" >/dev/null
fi
for crd in workqueues mapreduces; do
  wait_condition "crd/$crd.rigging.dev" Established
done
"${kubectl[@]}" create namespace "$NS" >/dev/null
if ((API)); then
  SERVER=$("${kubectl[@]}" config view --minify -o jsonpath='{.clusters[0].cluster.server}')
  WORK=$work NS=$NS SERVER=$SERVER python3 scripts/bench/kit_api.py complete 2>"$work/standin.log" &
  standin=$!
  broker='  broker: {url: "nats://127.0.0.1:4222"}'
else
  broker=''
fi

metrics_port=$(free_port)
"$work/rigging-operator" run --no-leader-election --namespace "$NS" \
  --metrics-addr "127.0.0.1:$metrics_port" 2>"$work/operator.log" &
op=$!

items=$(python3 -c "import json; print(json.dumps([f'item-{i:05d}' for i in range($ITEMS)]))")
# shellcheck disable=SC2016 # expanded by the worker's shell
worker='echo "{\"n\": 1}" > "$WORK_OUTPUT_FILE"'
cat >"$work/mr.yaml" <<YAML
apiVersion: rigging.dev/v1alpha1
kind: MapReduce
metadata: {name: bench, namespace: $NS}
spec:
  runsKept: 1
  map:
    items: $items
    parallelism: $PARALLELISM
    worker:
      template:
        spec:
          containers:
            - name: worker
              image: busybox:1.36
              command: [sh, -c, '$worker']
  reduce: {reducer: sum}
$broker
YAML
cat >"$work/job.yaml" <<YAML
apiVersion: batch/v1
kind: Job
metadata: {name: indexed, namespace: $NS}
spec:
  completionMode: Indexed
  completions: $ITEMS
  parallelism: $PARALLELISM
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: worker
          image: busybox:1.36
          command: [sh, -c, 'echo "{\"n\": 1}" > /tmp/output']
YAML

now() { date +%s.%N; }
phase() {
  "${kubectl[@]}" get -n "$NS" mapreduce/bench -o jsonpath='{.status.runs[0].phase}' 2>/dev/null || true
}

log "MapReduce of $ITEMS items, parallelism $PARALLELISM"
start=$(now)
"${kubectl[@]}" apply --server-side -f "$work/mr.yaml" >/dev/null
joined='' done_at=''
while :; do
  p=$(phase)
  [[ -z $joined && $p =~ ^(Reducing|Succeeded)$ ]] && joined=$(now)
  if [[ $p == Succeeded ]]; then
    done_at=$(now)
    break
  fi
  if [[ $p == Failed ]]; then
    log "run 1 failed: $("${kubectl[@]}" get -n "$NS" mapreduce/bench -o jsonpath='{.status}')"
    exit 1
  fi
  # Parenthesized: a bare > in awk's print writes to a file.
  (($(calc "($(now) - $start > $TIMEOUT)"))) && {
    log "run 1 not done within ${TIMEOUT}s (phase ${p:-none})"
    exit 1
  }
  sleep 0.5
done
if ((API)); then
  result="none: no reducer runs without a node"
else
  result=$("${kubectl[@]}" get -n "$NS" configmap/bench-result -o jsonpath='{.data.result\.json}')
  [[ $(python3 -c "import json,sys; print(json.loads(sys.argv[1]))" "$result") == "{'n': $ITEMS}" ]] || {
    log "the result is $result, not {\"n\": $ITEMS}"
    exit 1
  }
fi
# The MapReduce's pods are done: the Indexed Job has the node to itself.
"${kubectl[@]}" delete -n "$NS" mapreduce/bench --wait=true >/dev/null

log "Indexed Job of $ITEMS completions, parallelism $PARALLELISM"
job_start=$(now)
"${kubectl[@]}" apply -f "$work/job.yaml" >/dev/null
"${kubectl[@]}" wait -n "$NS" --for=condition=Complete --timeout="${TIMEOUT}s" job/indexed >/dev/null
job_done=$(now)

map=$(calc "$joined - $start")
total=$(calc "$done_at - $start")
job=$(calc "$job_done - $job_start")
where="the kit's node, real pods" done_column="→ result stored"
((API)) && where="the API-only kit, a stand-in kubelet completing each pod" done_column="→ reduce Job Complete"
printf '\n%s, %s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')" "$where"
printf '\n| items | parallelism | MapReduce: apply → joined | %s | Indexed Job: apply → Complete | ratio (MapReduce / Indexed Job) |\n' "$done_column"
printf '|---|---|---|---|---|---|\n'
printf '| %s | %s | %.1f s | %.1f s | %.1f s | %.2f |\n' "$ITEMS" "$PARALLELISM" "$map" "$total" "$job" \
  "$(calc "$total / $job")"
printf '\nresult: %s\n' "$result"
