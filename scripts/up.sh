#!/usr/bin/env bash
# Rigging on a local cluster, as a user runs it: a real control plane and one node on this
# machine (e2e/controlplane, built from the Kubernetes Go modules and cached), Rigging's
# images imported into the node (e2e/images, no registry), the Helm chart installed with
# its default values, and an example applied and answering through its Service.
#
#   scripts/up.sh     the first run builds everything: about 20 minutes on 2 cores, then
#                     under a minute; needs root (a network namespace, mounts, cgroups)
#   scripts/down.sh   stops it and puts the machine back as it was
#
# The cluster lives in $RIGGING_CLUSTER_DIR (default /tmp/rigging).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${RIGGING_CLUSTER_DIR:-/tmp/rigging}

# shellcheck source=scripts/install.sh
source scripts/install.sh
install_cluster_tools
command -v go >/dev/null || { echo "go is needed to build the cluster" >&2; exit 1; }

if [[ -f $dir/pids ]] && "$dir/bin/kubectl" --kubeconfig "$dir/kubeconfig" get --raw /readyz >/dev/null 2>&1; then
  echo "up: a cluster already runs in $dir"
else
  bash e2e/controlplane/up.sh "$dir"
fi
bash e2e/images/build.sh --import "$dir" >/dev/null

export KUBECONFIG=$dir/kubeconfig PATH=$dir/bin:$PATH
echo "up: helm upgrade --install rigging charts/rigging --namespace rigging-system"
helm upgrade --install rigging charts/rigging --namespace rigging-system --create-namespace \
  --wait --timeout 180s >/dev/null
echo "up: kubectl apply -f examples/replicated-service/minimal.yaml"
kubectl apply -f examples/replicated-service/minimal.yaml
kubectl wait --for=condition=Ready replicatedservice/hello --timeout=180s >/dev/null
ip=$(kubectl get service hello -o jsonpath='{.spec.clusterIP}')
echo
kubectl get replicatedservice hello
echo
echo "up: curl http://$ip:8080/ (the Service hello; this machine routes to the cluster)"
# kube-proxy programs a new Service within a second or so of its endpoints.
curl -fsS --max-time 5 --retry 10 --retry-all-errors --retry-delay 1 "http://$ip:8080/" | head -n 4
cat <<TEXT

Rigging runs. Use the cluster from this shell with:
  export KUBECONFIG=$dir/kubeconfig PATH=$dir/bin:\$PATH
  kubectl get replicatedservices,pods
  kubectl port-forward service/hello 8080:8080     # then http://127.0.0.1:8080/
Try the other examples (examples/*/README.md), or see what the operator would create
offline with: cargo run -p rigging-operator -- render -f examples/replicated-service/full.yaml
Stop it all with: scripts/down.sh
TEXT
