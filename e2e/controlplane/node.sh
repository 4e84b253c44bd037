#!/usr/bin/env bash
# The kit's node: containerd + runc, a CNI bridge, a kubelet and kube-proxy in a network
# namespace of their own, with cluster DNS (CoreDNS) as a pod. up.sh and down.sh call it;
# the facts it is built on are in docs/testing.md ("The node").
#
#   node.sh net DIR     pick the kit's subnets and make the namespace and its veth
#                       (before the API server, which listens on the veth's host end)
#   node.sh up DIR      start the node once the API server is ready; wait until it is Ready
#                       and cluster DNS answers
#   node.sh down DIR    stop it and put back everything it changed on the host
#
# Everything the node makes lives under DIR, in its namespace, or in cgroups named after
# the kit, so that two kits on one machine never meet. What the kubelet changes on the
# host whatever its flags say (three sysctls, /var/log/containers, the device-plugin
# socket) is recorded before and put back by `down`.
set -euo pipefail
shopt -s globstar nullglob
here=$(cd "$(dirname "$0")" && pwd)
action=${1:?usage: node.sh net|up|down DIR}
dir=${2:?usage: node.sh net|up|down DIR}
dir=$(cd "$dir" && pwd)

log() { printf 'node: %s\n' "$*" >&2; }

# shellcheck source=e2e/controlplane/processes.sh
source "$here/processes.sh"
pki=$dir/pki
node=$dir/node
# The binaries up.sh linked kubectl from.
bin=$(dirname "$(readlink -f "$dir/bin/kubectl" 2>/dev/null || echo /nonexistent/kubectl)")

# What the node makes outside DIR whatever its flags say (see up and down).
shared_paths=(/var/log/containers /var/lib/kubelet /run/containerd /tmp/hostpath_pv)
kits_state=/run/rigging-kits

# The kubelet sets these at every start; the host gets its own values back.
kernel_tunables=(vm.overcommit_memory kernel.panic kernel.panic_on_oops)
node_name=rigging-node

# --- net: the namespace, the veth and the subnets ---------------------------------------

# A kit index 0-127 derived from DIR, moved on while another kit holds it: it names the
# host's veth end and numbers the kit's three subnets, which the host routes to. Pods get
# a /16: the CNI's allocator hands out addresses in turn and wraps around at the end of
# the range, and an address given again while a kube-proxy rule still points at its last
# pod misroutes connections; a whole run of the suite stays far below 65,000 pods.
net() {
  local n link
  n=$(($(printf '%s' "$dir" | cksum | cut -d' ' -f1) % 128))
  for _ in $(seq 128); do
    link=rigk$n
    ip link show "$link" >/dev/null 2>&1 || break
    n=$(((n + 1) % 128))
  done
  ip link show "$link" >/dev/null 2>&1 && { log "no free kit index: 128 kits run"; return 1; }
  # The unix sockets under DIR must fit in sun_path (108 bytes) with the kubelet's
  # deepest one appended.
  if ((${#dir} > 60)); then
    log "DIR is ${#dir} characters long; sockets under it need it at most 60 (try /tmp/cp)"
    return 1
  fi
  cat >"$dir/node.env" <<ENV
NODE_INDEX=$n
HOST_LINK=$link
HOST_IP=10.99.$n.1
NODE_IP=10.99.$n.2
SERVICE_CIDR=10.100.$n.0/24
KUBERNETES_SERVICE_IP=10.100.$n.1
DNS_IP=10.100.$n.10
POD_CIDR=10.$((128 + n)).0.0/16
POD_GATEWAY=10.$((128 + n)).0.1
ENV
  # shellcheck source=/dev/null
  source "$dir/node.env"

  mkdir -p "$dir/netns"
  touch "$dir/netns/node"
  # Not `ip netns add`: `ip netns exec` remounts /sys, and the cgroup mounts under it
  # disappear for the kubelet.
  unshare --net="$dir/netns/node" true
  ip link add "$HOST_LINK" type veth peer name eth0 netns "$dir/netns/node"
  ip addr add "$HOST_IP/30" dev "$HOST_LINK"
  ip link set "$HOST_LINK" up
  in_node ip link set lo up
  in_node ip addr add "$NODE_IP/30" dev eth0
  in_node ip link set eth0 up
  # No default route: nothing in the node reaches past the host. Nor a route for the
  # service range: a ClusterIP kube-proxy has no rule for yet is unreachable at once,
  # where a route back to the host would bounce the packet between the two until its TTL
  # runs out. So pods reach Services, and the host does (through the node), but the node's
  # own network namespace (hostNetwork pods) does not.
  in_node sysctl -qw net.ipv4.ip_forward=1
  # The host reaches Services (the API server's webhook calls) and pods through the node.
  ip route add "$SERVICE_CIDR" via "$NODE_IP" dev "$HOST_LINK"
  ip route add "$POD_CIDR" via "$NODE_IP" dev "$HOST_LINK"
}

# nsenter execs the command (no fork for a network namespace), so $! of a command started
# this way is the command's own PID.
in_node() { nsenter --net="$dir/netns/node" "$@"; }

# --- up -------------------------------------------------------------------------------

up() {
  # shellcheck source=/dev/null
  source "$dir/node.env"
  for tool in containerd containerd-shim-runc-v2 runc iptables conntrack; do
    command -v "$tool" >/dev/null || { log "$tool is missing (scripts/test.sh installs it)"; return 1; }
  done
  [[ -x /usr/lib/cni/bridge ]] || { log "the CNI plugins are missing (containernetworking-plugins)"; return 1; }
  mkdir -p "$node"/{containerd,cni/net.d,cni/ipam,kubelet,pod-logs,volume-plugins} "$dir/run"

  # What the kubelet will change on the host, to put back on the way down.
  : >"$node/host-state"
  local t
  for t in "${kernel_tunables[@]}"; do echo "sysctl $t $(sysctl -n "$t")" >>"$node/host-state"; done
  # Paths the kubelet, containerd and the volume provisioner make wherever their flags
  # point, shared by every kit on the machine: the first kit to make one lists it, and the
  # last kit down removes it.
  mkdir -p "$kits_state"
  for path in "${shared_paths[@]}"; do
    [[ -e $path ]] || echo "$path" >>"$kits_state/created"
  done

  node_pki
  node_kubeconfig kubelet "system:node:$node_name"
  node_kubeconfig kube-proxy system:kube-proxy
  node_kubeconfig kube-scheduler system:kube-scheduler

  cat >"$node/cni/net.d/10-rigging.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "rigging",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$node/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON

  local pause_ref
  pause_ref=$(cat "$bin/pause.ref")
  cat >"$node/containerd.toml" <<TOML
version = 2
root = "$node/containerd/root"
state = "$node/containerd/state"
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]
[grpc]
  address = "$dir/run/containerd.sock"
[ttrpc]
  address = "$dir/run/containerd.ttrpc.sock"
[debug]
  level = "warn"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_ref"
  # This machine's root lacks CAP_SYS_RESOURCE: runc could not lower oom_score_adj.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  # As containerd 2 does: a pod's processes may bind ports below 1024 without root.
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$node/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node/cni/net.d"
TOML

  # The kubelet's own resolv.conf: pods get cluster DNS and nothing of the host's.
  echo "nameserver $DNS_IP" >"$node/resolv.conf"

  cat >"$node/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$dir/run/containerd.sock
imageServiceEndpoint: unix://$dir/run/containerd.sock
# cgroup v1 here, and containerd 1.6 has no RuntimeConfig call for systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
# The kit's own cgroup tree, so that two kits on one machine never share kubepods.
cgroupRoot: /rigging-$NODE_INDEX
# The default -999 needs CAP_SYS_RESOURCE, which this machine's root lacks.
oomScoreAdj: 0
failSwapOn: false
protectKernelDefaults: false
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization:
  mode: Webhook
tlsCertFile: $pki/kubelet.crt
tlsPrivateKeyFile: $pki/kubelet.key
clusterDomain: cluster.local
clusterDNS: [$DNS_IP]
resolvConf: $node/resolv.conf
podLogsDir: $node/pod-logs
volumePluginDir: $node/volume-plugins
staticPodPath: ""
# One small node: images are imported, never pulled, and must not be collected.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
evictionPressureTransitionPeriod: 10s
maxPods: 110
serializeImagePulls: false
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusReportFrequency: 10s
YAML

  cat >"$node/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: $node/kube-proxy.kubeconfig
hostnameOverride: $node_name
clusterCIDR: $POD_CIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Zero leaves the host's conntrack table size and timeouts as they are.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
YAML

  kit_start containerd --in-node containerd --config "$node/containerd.toml"
  kit_wait containerd 60 ctr_k8s version

  import_kit_images "$bin" "$pause_ref"

  # The kit's cgroup root, in every v1 hierarchy, for the kubelet to build kubepods under.
  local hierarchy
  for hierarchy in /sys/fs/cgroup/*/; do
    [[ $hierarchy == */unified/ ]] && continue
    mkdir -p "$hierarchy/rigging-$NODE_INDEX"
  done
  if [[ -d /sys/fs/cgroup/cpuset/rigging-$NODE_INDEX ]]; then
    cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/rigging-$NODE_INDEX/cpuset.cpus"
    cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/rigging-$NODE_INDEX/cpuset.mems"
  fi
  kit_start kubelet --in-node "$bin/kubelet" \
    --config "$node/kubelet.yaml" \
    --kubeconfig "$node/kubelet.kubeconfig" \
    --root-dir "$node/kubelet" \
    --cert-dir "$pki" \
    --hostname-override "$node_name" \
    --node-ip "$NODE_IP" \
    --v 1
  kit_start kube-proxy --in-node "$bin/kube-proxy" --config "$node/kube-proxy.yaml" --v 1
  kit_start kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig "$node/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "$node/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig "$node/kube-scheduler.kubeconfig" \
    --secure-port 0 --leader-elect=false

  kit_wait "node $node_name Ready" 120 kubectl wait --for=condition=Ready "node/$node_name" --timeout=1s
  restore_kernel_tunables

  # The default StorageClass, as kind has one: claims get hostPath directories that the
  # controller-manager makes under /tmp/hostpath_pv when a pod first uses them.
  kubectl apply -f - >/dev/null <<YAML
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/host-path
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
YAML

  # Cluster DNS: CoreDNS as the Deployment and Service kube-dns, as clusters run it.
  sed -e "s|@DNS_IP@|$DNS_IP|g" -e "s|@COREDNS_IMAGE@|$coredns_ref|g" "$here/dns/coredns.yaml" |
    kubectl apply -f - >/dev/null
  kit_wait "cluster DNS" 120 kubectl -n kube-system rollout status deployment/coredns --timeout=1s
  log "ready: node $node_name ($NODE_IP), pods $POD_CIDR, services $SERVICE_CIDR, DNS $DNS_IP"
}

kubectl() { "$bin/kubectl" --kubeconfig "$dir/kubeconfig" "$@"; }

ctr_k8s() { ctr --address "$dir/run/containerd.sock" --namespace k8s.io "$@"; }

# The kubelet's serving certificate, and a client certificate per node identity, from the
# kit's CA. The API server's own kubelet client certificate is made by up.sh.
node_pki() {
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$node_name" \
    -keyout "$pki/kubelet.key" -out "$pki/kubelet.csr" 2>/dev/null
  openssl x509 -req -in "$pki/kubelet.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -out "$pki/kubelet.crt" 2>/dev/null \
    -extfile <(printf 'subjectAltName=IP:%s,DNS:%s\nextendedKeyUsage=serverAuth\n' "$NODE_IP" "$node_name")
}

node_kubeconfig() { # name user
  local name=$1 user=$2 org=""
  [[ $user == system:node:* ]] && org=/O=system:nodes
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$org/CN=$user" \
    -keyout "$pki/$name-client.key" -out "$pki/$name-client.csr" 2>/dev/null
  openssl x509 -req -in "$pki/$name-client.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 3650 -out "$pki/$name-client.crt" 2>/dev/null \
    -extfile <(echo extendedKeyUsage=clientAuth)
  local server
  server=$(sed -n 's/^ *server: //p' "$dir/kubeconfig")
  cat >"$node/$name.kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters:
  - name: kit
    cluster: {server: "$server", certificate-authority: $pki/ca.crt}
users:
  - name: $name
    user: {client-certificate: $pki/$name-client.crt, client-key: $pki/$name-client.key}
contexts:
  - name: kit
    context: {cluster: kit, user: $name}
current-context: kit
YAML
}

# The images the kit itself runs: the pause sandbox and CoreDNS, each a single static
# binary, imported straight into the node's containerd.
coredns_ref=""
import_kit_images() { # bin pause_ref
  local bin=$1 pause_ref=$2 version
  version=$("$bin/coredns" -version 2>/dev/null | sed -n 's/^CoreDNS-//p' | head -n1)
  coredns_ref=rigging.local/kit/coredns:${version:-unknown}
  "$here/../images/oci.sh" import "$dir" \
    --ref "$pause_ref" --file "$bin/pause:/pause" --entrypoint /pause --user 65535 \
    --ref "$coredns_ref" --file "$bin/coredns:/coredns" --entrypoint /coredns --user 65532
}

restore_kernel_tunables() {
  local kind name value
  while read -r kind name value; do
    [[ $kind == sysctl ]] || continue
    [[ $(sysctl -n "$name") == "$value" ]] || sysctl -qw "$name=$value"
  done <"$dir/node/host-state"
}

# --- down -----------------------------------------------------------------------------

down() {
  [[ -f $dir/node.env ]] || return 0
  # shellcheck source=/dev/null
  source "$dir/node.env"

  # The provisioned volumes' directories, while the API server can still list them.
  local volumes=()
  if [[ -x $bin/kubectl ]]; then
    mapfile -t volumes < <(kubectl get persistentvolumes --request-timeout=10s \
      -o jsonpath='{range .items[*]}{.spec.hostPath.path}{"\n"}{end}' 2>/dev/null |
      grep '^/tmp/hostpath_pv/[^/]\+$' || true)
  fi

  # The node's processes, by PID, newest first; up.sh's own come after.
  kit_stop kube-scheduler kube-proxy kubelet
  # Every container of the kit's pods, by its cgroup, then containerd and its shims.
  kill_cgroup_tree "rigging-$NODE_INDEX"
  # containerd 1.6's shims keep their sockets in /run/containerd/s, named by a hash of
  # containerd's address, the namespace and the task, and remove them only on a clean exit.
  kit_stop containerd
  local shim id sockets=()
  for shim in $(pgrep -f "containerd-shim-runc-v2 .*-address $dir/run/containerd.sock" || true); do
    id=$(tr '\0' '\n' <"/proc/$shim/cmdline" 2>/dev/null | sed -n '/^-id$/{n;p}')
    [[ -n $id ]] && sockets+=("/run/containerd/s/$(printf '%s' "$dir/run/containerd.sock/k8s.io/$id" |
      sha256sum | cut -d' ' -f1)")
    kill -KILL "$shim" 2>/dev/null || true
  done
  ((${#sockets[@]})) && rm -f "${sockets[@]}"

  # Mounts under DIR (container root filesystems, pod volumes, the kubelet's own root
  # bind-mounted onto itself, the namespace file), deepest first.
  local mount_point tries
  for tries in 1 2 3; do
    mapfile -t mounts < <(awk -v d="$dir/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r)
    ((${#mounts[@]})) || break
    for mount_point in "${mounts[@]}"; do
      umount "$mount_point" 2>/dev/null || { ((tries == 3)) && umount -l "$mount_point" 2>/dev/null; } || true
    done
  done
  remove_cgroup_tree "rigging-$NODE_INDEX"

  ip link del "$HOST_LINK" 2>/dev/null || true
  rm -f "$dir/netns/node"

  local volume
  for volume in "${volumes[@]}"; do rm -rf --one-file-system "$volume"; done

  if [[ -f $node/host-state ]]; then
    restore_kernel_tunables
    # The kubelet's links in /var/log/containers point into DIR.
    local link
    for link in /var/log/containers/*; do
      [[ -L $link && $(readlink "$link") == "$dir/"* ]] && rm -f "$link"
    done
    remove_shared_paths
  fi

  if awk -v d="$dir/" 'index($5, d) == 1 {found = 1} END {exit !found}' /proc/self/mountinfo; then
    log "mounts are left under $dir; not removing it:"
    awk -v d="$dir/" 'index($5, d) == 1 {print "  " $5}' /proc/self/mountinfo >&2
    return 1
  fi
  rm -f "$dir/node.env"
}

# The paths kits made outside their DIRs, once no kit's node runs any more: each only if
# it holds nothing but what a node leaves (empty directories, the kubelet's device-plugin
# socket), so that nothing of anyone else's goes with it.
remove_shared_paths() {
  [[ -f $kits_state/created ]] || return 0
  # Another kit's node still runs (a kubelet and containerd are started with the kit's
  # config files under its DIR).
  pgrep -f "containerd --config .*/node/containerd.toml" >/dev/null && return 0
  local path
  while read -r path; do
    [[ -d $path ]] || continue
    if [[ $path == /var/lib/kubelet ]]; then
      rm -f /var/lib/kubelet/device-plugins/kubelet.sock
    fi
    find "$path" -depth -type d -empty -delete 2>/dev/null || true
  done < <(sort -u "$kits_state/created")
  rm -f "$kits_state/created"
  rmdir "$kits_state" 2>/dev/null || true
}

# SIGKILL to every process in the kit's cgroups, until none is left.
kill_cgroup_tree() { # root
  local root=$1 procs pid _
  for _ in $(seq 50); do
    local files=(/sys/fs/cgroup/*/"$root"/**/cgroup.procs)
    ((${#files[@]})) || return 0
    procs=$(cat "${files[@]}" 2>/dev/null | sort -u || true)
    [[ -n $procs ]] || return 0
    for pid in $procs; do kill -KILL "$pid" 2>/dev/null || true; done
    sleep 0.1
  done
  log "processes are left in the cgroups $root: $procs"
}

remove_cgroup_tree() { # root
  local root=$1 hierarchy
  for hierarchy in /sys/fs/cgroup/*/; do
    [[ -d $hierarchy$root ]] || continue
    find "$hierarchy$root" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

case $action in
net) net ;;
up) up ;;
down) down ;;
*)
  log "unknown action $action"
  exit 2
  ;;
esac
