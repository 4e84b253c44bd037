#!/usr/bin/env bash
# Starts a real Kubernetes cluster in the background, and returns once it is ready:
#
#   e2e/controlplane/up.sh DIR              the control plane and one node
#   e2e/controlplane/up.sh --no-node DIR    the control plane alone, on 127.0.0.1
#
# DIR/kubeconfig   cluster-admin credentials for the API server
# DIR/bin/         kubectl and helm built from the same versions as the server
# DIR/logs/        one log file per process
#
# etcd, kube-apiserver and kube-controller-manager run, and by default kube-scheduler and
# a node (node.sh: containerd + runc, a CNI bridge, kubelet, kube-proxy and CoreDNS in a
# network namespace of its own), on which pods really run. With --no-node there is no
# scheduler and no kubelet: pods are created (and garbage-collected) but stay Pending.
# Stop everything with e2e/controlplane/down.sh DIR. Binaries come from build.sh (built
# once, cached).
#
# CONTROLPLANE_AUDIT_LOG=1 (off by default) also turns on the API server's audit log:
# every request at level Metadata (who, user agent, verb, object; no bodies), stage
# RequestReceived omitted, one JSON line each in DIR/logs/audit.log, with the policy in
# DIR/audit-policy.yaml. scripts/bench/operator.sh counts the operator's requests with it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
with_node=1
if [[ ${1:-} == --no-node ]]; then
  with_node=0
  shift
fi
dir=${1:?usage: up.sh [--no-node] DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

log() { printf 'controlplane: %s\n' "$*" >&2; }

if [[ -f $dir/pids ]]; then
  log "$dir already holds a control plane; stop it first with down.sh $dir"
  exit 1
fi

# shellcheck source=e2e/controlplane/processes.sh
source "$here/processes.sh"
bin=$("$here/build.sh")
command -v openssl >/dev/null || { log "openssl is needed to generate certificates"; exit 1; }

mkdir -p "$dir/bin" "$dir/logs" "$dir/pki" "$dir/etcd"
ln -sf "$bin/kubectl" "$bin/helm" "$dir/bin/"
: >"$dir/pids"

# If anything below fails, stop what was started so nothing is left running.
trap '"$here/down.sh" "$dir" >/dev/null 2>&1 || true' ERR

# Where the API server listens. With a node it is the host's end of the node's veth, so
# that pods reach it through the `kubernetes` Service like on any cluster, and the host's
# tools reach it as well; without one, loopback.
api_ip=127.0.0.1
service_cidr=10.0.0.0/24
kubernetes_service_ip=10.0.0.1
if ((with_node)); then
  "$here/node.sh" net "$dir"
  # shellcheck source=/dev/null
  source "$dir/node.env"
  # shellcheck disable=SC2153 # node.env sets them
  {
    api_ip=$HOST_IP
    service_cidr=$SERVICE_CIDR
    kubernetes_service_ip=$KUBERNETES_SERVICE_IP
  }
fi

# Free loopback ports, chosen by the kernel, so several control planes can run at once.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
etcd_port=$(free_port)
peer_port=$(free_port)
api_port=$(free_port)

pki=$dir/pki
# One CA signs the serving certificate and the admin's client certificate; a separate key
# pair signs service-account tokens.
gen_pki() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj /CN=rigging-controlplane-ca -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  sign() { # name subject extensions
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$2" \
      -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
    openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
      -days 3650 -extfile <(printf '%s\n' "$3") -out "$pki/$1.crt" 2>/dev/null
  }
  sign apiserver /CN=kube-apiserver \
    "subjectAltName=IP:127.0.0.1,IP:$api_ip,IP:$kubernetes_service_ip,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth"
  sign admin "/O=system:masters/CN=rigging-admin" "extendedKeyUsage=clientAuth"
  # The API server's identity towards kubelets (logs, exec, port-forward).
  sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" \
    "extendedKeyUsage=clientAuth"
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key" 2>/dev/null
  openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
}
gen_pki

cat >"$dir/kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters:
  - name: rigging-controlplane
    cluster:
      server: https://$api_ip:$api_port
      certificate-authority: $pki/ca.crt
users:
  - name: admin
    user:
      client-certificate: $pki/admin.crt
      client-key: $pki/admin.key
contexts:
  - name: rigging-controlplane
    context: {cluster: rigging-controlplane, user: admin, namespace: default}
current-context: rigging-controlplane
YAML
chmod 600 "$dir/kubeconfig"

kit_start etcd "$bin/etcd" --name controlplane --data-dir "$dir/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "controlplane=http://127.0.0.1:$peer_port" \
  --log-level warn --unsafe-no-fsync

audit=()
if [[ ${CONTROLPLANE_AUDIT_LOG:-0} == 1 ]]; then
  cat >"$dir/audit-policy.yaml" <<'YAML'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
YAML
  audit=(--audit-policy-file "$dir/audit-policy.yaml" --audit-log-path "$dir/logs/audit.log")
fi

# OwnerReferencesPermissionEnforcement, as OpenShift and others run it: setting
# blockOwnerDeletion on a child needs the right to update its owner's finalizers.
node_flags=(--endpoint-reconciler-type none --authorization-mode RBAC
  --enable-admission-plugins "OwnerReferencesPermissionEnforcement")
if ((with_node)); then
  # The node's InternalIP, never its name: looking the name up would ask the host's DNS.
  node_flags=(
    --authorization-mode "Node,RBAC"
    --enable-admission-plugins "NodeRestriction,OwnerReferencesPermissionEnforcement"
    --kubelet-preferred-address-types InternalIP
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt"
    --kubelet-client-key "$pki/apiserver-kubelet-client.key"
  )
fi

kit_start kube-apiserver "$bin/kube-apiserver" "${audit[@]}" "${node_flags[@]}" \
  --etcd-servers "http://127.0.0.1:$etcd_port" \
  --bind-address "$api_ip" --advertise-address "$api_ip" --secure-port "$api_port" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range "$service_cidr" \
  --allow-privileged \
  --profiling=false

kubectl=("$bin/kubectl" --kubeconfig "$dir/kubeconfig")
kit_wait kube-apiserver 60 "${kubectl[@]}" get --raw /readyz

# The controllers run with the admin's credentials: one identity keeps the kit small, and
# what the tests check of RBAC is the operator's own ServiceAccount, not these.
# With a node, volume claims are provisioned as hostPath directories under /tmp/hostpath_pv
# (the controller-manager's own provisioner for one-node clusters; node.sh makes it the
# default StorageClass and removes its directories on the way down).
storage=()
((with_node)) && storage=(--enable-hostpath-provisioner)

kit_start kube-controller-manager "$bin/kube-controller-manager" "${storage[@]}" \
  --kubeconfig "$dir/kubeconfig" \
  --authentication-kubeconfig "$dir/kubeconfig" --authorization-kubeconfig "$dir/kubeconfig" \
  --bind-address 127.0.0.1 --secure-port 0 \
  --leader-elect=false \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
  --concurrent-gc-syncs 5

# The controller-manager is working once its service-account controller has given the
# default namespace its ServiceAccount.
kit_wait kube-controller-manager 60 "${kubectl[@]}" -n default get serviceaccount default

if ((with_node)); then
  "$here/node.sh" up "$dir"
fi
trap - ERR
log "ready: KUBECONFIG=$dir/kubeconfig (kubectl and helm in $dir/bin)"
