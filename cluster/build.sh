#!/usr/bin/env bash
# Builds, once, the binaries of the local control plane (cluster/localcluster) into a cache
# outside the clone:
#
#   ${LADDER_CACHE:-~/.cache/promotion-ladder}/bin/
#     etcd                      go.etcd.io/etcd/server/v3            $ETCD_VERSION
#     kube-apiserver            k8s.io/kubernetes/cmd/kube-apiserver $K8S_VERSION
#     kube-controller-manager   k8s.io/kubernetes/cmd/kube-controller-manager
#     kube-scheduler            k8s.io/kubernetes/cmd/kube-scheduler
#     helm                      helm.sh/helm/v3/cmd/helm             $HELM_VERSION
#     prometheus, promtool      github.com/prometheus/prometheus     $PROMETHEUS_VERSION
#                               (module v0.3XX.y for release v3.XX.y)
#     kueue                     sigs.k8s.io/kueue/cmd/kueue          $KUEUE_VERSION
#     kueue-config/             the same module's CRDs (config/components/crd/bases), webhook
#                               configurations and manager ClusterRole and secrets Role, which
#                               `python -m localcluster up --kueue` installs
#     kubelet, kube-proxy,      k8s.io/kubernetes/cmd/{kubelet,kube-proxy,kubectl}  $K8S_VERSION (part node;
#     kubectl                   the end-to-end tests drive the real nodes with kubectl, as a user would)
#     coredns                   github.com/coredns/coredns           $COREDNS_VERSION
#                               (only the plugins a cluster.local resolver needs; see build_coredns)
#
# The real nodes of `python -m localcluster up --kubelet` also need containerd, runc and the
# CNI plugins: those are Debian's packages (docs/localcluster.md, "Real nodes"), not built here.
#
# A second run asks each cached binary for its version and, when all match, exits in
# seconds. Delete the bin folder (or pass --force) to rebuild.
#
#   cluster/build.sh [--force] [PART...]   PART: etcd kube helm prometheus kueue node coredns (default: all)
#
# Prometheus is built without its web UI assets (the HTTP API is all the tests use; the UI
# would need node/npm) and without service discovery other than static/file/http
# (-tags remove_all_sd: the tests scrape static targets on loopback, and the cloud SDKs of
# the other discoverers need not be compiled). Prometheus v3.16 needs Go >= 1.26.7.
#
# Why not `go install mod@version`: k8s.io/kubernetes replaces its staging modules
# (k8s.io/api, k8s.io/client-go, ...) with local paths (./staging/src/k8s.io/X), and etcd's
# server module replaces its sibling modules with ../api etc., and `go install` refuses
# modules with replace directives. So each is built from a throwaway module that requires
# it and replaces every locally-replaced module with the same module at the matching
# release version (k8s.io/X => k8s.io/X v0.34.y), read from the go.mod the proxy serves.
#
# Checksum database: sum.golang.org is not reachable from every machine that reaches the
# module proxy (it is not from the CI machines of this project). The script probes it; when
# it does not answer, it builds with GOSUMDB=off and instead seeds each throwaway module's
# go.sum with the go.sum of the module being built (k8s.io/kubernetes' or etcd server's own
# go.sum), so every transitive dependency is still checked against the hashes its
# maintainers pinned (a mismatch is a hard "SECURITY ERROR"). Only the top modules
# themselves (k8s.io/kubernetes, its k8s.io/X v0.34.y staging modules, etcd, helm,
# prometheus) are then trusted on first use from the proxy. Set GOSUMDB yourself to
# override the probe.
#
# Kueue has no replace directives; its throwaway module only pins the version. Its binary
# prints no version, so the check reads the version of the main package's module that Go
# records in every binary (`go version -m`: "mod sigs.k8s.io/kueue v0.17.0"), plus the
# VERSION file written last into kueue-config/.
#
# Env: LADDER_CACHE, K8S_VERSION, ETCD_VERSION, HELM_VERSION, PROMETHEUS_VERSION,
# KUEUE_VERSION, COREDNS_VERSION, GOFLAGS (we add -mod=mod).
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.34.4}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
HELM_VERSION=${HELM_VERSION:-v3.19.5}
PROMETHEUS_VERSION=${PROMETHEUS_VERSION:-v3.16.0}
KUEUE_VERSION=${KUEUE_VERSION:-v0.17.0}
COREDNS_VERSION=${COREDNS_VERSION:-v1.15.0}

cache=${LADDER_CACHE:-$HOME/.cache/promotion-ladder}
bin=$cache/bin
work=$cache/gobuild
force=0
parts=()
for arg in "$@"; do
  case $arg in
    --force) force=1 ;;
    etcd|kube|helm|prometheus|kueue|node|coredns) parts+=("$arg") ;;
    *) echo "build.sh: unknown argument '$arg' (usage: cluster/build.sh [--force] [etcd|kube|helm|prometheus|kueue|node|coredns]...)" >&2; exit 2 ;;
  esac
done
[ ${#parts[@]} = 0 ] && parts=(etcd kube helm prometheus kueue node coredns)

say() { printf 'build.sh [%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
start=$(date +%s)

# --- what is already cached -------------------------------------------------------------
k8s_minor=${K8S_VERSION#v1.}        # 34.4
staging_version=v0.$k8s_minor      # v0.34.4
# Prometheus v3.X.Y is published as Go module version v0.3XX.Y (v3.16.0 => v0.316.0).
prom_release=${PROMETHEUS_VERSION#v}   # 3.16.0
IFS=. read -r prom_major prom_minor prom_patch <<<"$prom_release"
prom_module_version=$(printf 'v0.%d%02d.%d' "$prom_major" "$prom_minor" "$prom_patch")

# Capture each binary's version before matching: with pipefail, `bin --version | grep -q`
# fails at random when grep exits early and the binary dies of SIGPIPE on its next line.
version_of() { "$@" 2>/dev/null || true; }
have_etcd() { [ -x "$bin/etcd" ] && grep -q "etcd Version: ${ETCD_VERSION#v}$" <<<"$(version_of "$bin/etcd" --version)"; }
have_kube() {
  local b
  for b in kube-apiserver kube-controller-manager kube-scheduler; do
    [ -x "$bin/$b" ] && grep -q "Kubernetes $K8S_VERSION$" <<<"$(version_of "$bin/$b" --version)" || return 1
  done
}
have_helm() { [ -x "$bin/helm" ] && grep -q "^$HELM_VERSION$" <<<"$(version_of "$bin/helm" version --template '{{.Version}}')"; }
have_prometheus() {
  local b
  for b in prometheus promtool; do
    [ -x "$bin/$b" ] && grep -q "^$b, version $prom_release " <<<"$(version_of "$bin/$b" --version)" || return 1
  done
}
have_kueue() {
  [ -x "$bin/kueue" ] && [ "$(cat "$bin/kueue-config/VERSION" 2>/dev/null)" = "$KUEUE_VERSION" ] || return 1
  command -v go >/dev/null || return 0   # no Go to read the binary with: trust VERSION, written after it
  grep -qE "^[[:space:]]+mod[[:space:]]+sigs\.k8s\.io/kueue[[:space:]]+$KUEUE_VERSION([[:space:]]|$)" \
    <<<"$(version_of go version -m "$bin/kueue")"
}
# The real nodes' kubelet and kube-proxy: the same version stamp as the control plane.
have_node() {
  local b
  for b in kubelet kube-proxy kubectl; do
    [ -x "$bin/$b" ] || return 1
    if [ "$b" = kubectl ]; then grep -q "Client Version: $K8S_VERSION$" <<<"$(version_of_kubectl)" || return 1
    else grep -q "Kubernetes $K8S_VERSION$" <<<"$(version_of "$bin/$b" --version)" || return 1; fi
  done
}
version_of_kubectl() { version_of "$bin/kubectl" version --client; }
have_coredns() { [ -x "$bin/coredns" ] && grep -q "^CoreDNS-${COREDNS_VERSION#v}$" <<<"$(version_of "$bin/coredns" -version)"; }
have() { "have_$1"; }
describe() {
  case $1 in
    etcd) echo "etcd $ETCD_VERSION" ;; kube) echo "kubernetes $K8S_VERSION" ;;
    helm) echo "helm $HELM_VERSION" ;; prometheus) echo "prometheus $PROMETHEUS_VERSION" ;;
    kueue) echo "kueue $KUEUE_VERSION" ;;
    node) echo "kubelet/kube-proxy/kubectl $K8S_VERSION" ;; coredns) echo "coredns $COREDNS_VERSION" ;;
  esac
}

need=()
for part in "${parts[@]}"; do
  if [ $force = 1 ] || ! have "$part"; then need+=("$part"); fi
done
if [ ${#need[@]} = 0 ]; then
  cached=$(for part in "${parts[@]}"; do describe "$part"; done | paste -sd, - | sed 's/,/, /g')
  say "all binaries cached in $bin ($cached); nothing to do ($(( $(date +%s) - start ))s)"
  exit 0
fi
say "to build: ${need[*]} (cache: $bin)"

command -v go >/dev/null || { echo "build.sh: needs Go (>= 1.24) on PATH; https://go.dev/dl/" >&2; exit 1; }
mkdir -p "$bin" "$work"

export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -mod=mod"
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}
if [ -z "${GOSUMDB+x}" ]; then
  if timeout 10 bash -c 'exec 3<>/dev/tcp/sum.golang.org/443' 2>/dev/null; then
    say "checksum database sum.golang.org reachable: verifying modules against it"
  else
    say "checksum database sum.golang.org unreachable: GOSUMDB=off, go.sum seeded from the built modules' own go.sum (see header)"
    export GOSUMDB=off
  fi
fi

# Prints the path of a downloaded module's source tree (downloads it through the proxy).
mod_dir() { go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'; }

# Writes go.mod for a throwaway module $1 requiring $2@$3: copies the go and godebug lines of
# the required module's go.mod, and turns each of its local-path replaces into a replace by
# the same module at version $4.
throwaway_module() {
  local dir=$1 mod=$2 ver=$3 replver=$4 src
  src=$(mod_dir "$mod@$ver")
  [ -n "$src" ] || { echo "build.sh: could not download $mod@$ver through $(go env GOPROXY)" >&2; exit 1; }
  rm -rf "$dir"; mkdir -p "$dir"
  {
    echo "module ladder.local/build/$(basename "$dir")"
    echo
    grep -E '^go [0-9]' "$src/go.mod"
    # godebug lines (single or block) keep the runtime behaviour the upstream build has.
    awk '/^godebug \(/{b=1} b{print} b&&/^\)/{b=0} /^godebug [^(]/{print}' "$src/go.mod"
    echo
    echo "require $mod $ver"
    echo
    # "replace X => ./staging/src/X" or "X => ../api" (one per line or in a block)
    # (etcd's "=> ./FORBIDDEN_DEPENDENCY" guards are dropped: nothing may import those.)
    grep -v FORBIDDEN_DEPENDENCY "$src/go.mod" \
      | sed -n -E 's#^(replace[[:space:]]+)?[[:space:]]*([^[:space:]]+)[[:space:]]+=>[[:space:]]+\.{1,2}/.*$#\2#p' \
      | sort -u | while read -r m; do echo "replace $m => $m $replver"; done
  } > "$dir/go.mod"
  cp "$src/go.sum" "$dir/go.sum" 2>/dev/null || true
  chmod u+w "$dir/go.sum" 2>/dev/null || true
  say "$mod@$ver: throwaway module $dir ($(grep -c '^replace' "$dir/go.mod") replaces)"
}

# Kueue's manager, and beside it the manifests the local cluster installs from the same module.
build_kueue() {
  local ld="-s -w" kv src conf="$bin/kueue-config"
  throwaway_module "$work/kueue" sigs.k8s.io/kueue "$KUEUE_VERSION" "$KUEUE_VERSION"
  for kv in "GitVersion=$KUEUE_VERSION" "GitCommit=module-$KUEUE_VERSION" "BuildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"; do
    ld="$ld -X sigs.k8s.io/kueue/pkg/version.$kv"
  done
  say "kueue $KUEUE_VERSION: compiling"
  (cd "$work/kueue" && go get "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION" \
    && go build -trimpath -ldflags "$ld" -o "$bin/kueue" sigs.k8s.io/kueue/cmd/kueue)
  src=$(mod_dir "sigs.k8s.io/kueue@$KUEUE_VERSION")
  rm -rf "$conf"; mkdir -p "$conf/crds"
  cp "$src"/config/components/crd/bases/*.yaml "$conf/crds/"
  cp "$src/config/components/webhook/manifests.yaml" "$conf/webhooks.yaml"
  cp "$src/config/components/rbac/role.yaml" "$conf/role.yaml"
  cp "$src/config/components/rbac/manager_secrets_role.yaml" "$conf/secrets_role.yaml"
  chmod -R u+w "$conf"   # the module cache's files are read-only
  echo "$KUEUE_VERSION" > "$conf/VERSION"   # last: a partial copy never counts as built
}

# The ldflags that stamp a Kubernetes binary's version: component-base is what /version and
# --version read; client-go's copy is what client user agents read.
kube_ldflags() {
  local ld="-s -w" kv
  for kv in "gitVersion=$K8S_VERSION" "gitMajor=1" "gitMinor=${k8s_minor%%.*}" \
            "gitTreeState=clean" "gitCommit=module-$K8S_VERSION" \
            "buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"; do
    ld="$ld -X k8s.io/component-base/version.$kv -X k8s.io/client-go/pkg/version.$kv"
  done
  echo "$ld"
}

# The real nodes' kubelet and kube-proxy (and kubectl), from their own throwaway module (a build of the
# control plane running at the same time is not disturbed); the Go build cache the control
# plane filled makes this a minute or two.
build_node() {
  local pkgs="k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl"
  throwaway_module "$work/kubernetes-node" k8s.io/kubernetes "$K8S_VERSION" "$staging_version"
  say "kubernetes $K8S_VERSION: compiling kubelet, kube-proxy, kubectl"
  (cd "$work/kubernetes-node" && go get $(printf "%s@$K8S_VERSION " $pkgs) \
    && go build -trimpath -ldflags "$(kube_ldflags)" -o "$bin/" $pkgs)
}

# CoreDNS with only the plugins a cluster.local resolver uses: its own main.go imports them
# (CoreDNS's documented way to choose plugins at compile time) instead of core/plugin, which
# pulls in every cloud provider's SDK (route53, azure, clouddns, ...).
COREDNS_PLUGINS="bind cache errors health kubernetes loadbalance log ready"
build_coredns() {
  local dir=$work/coredns p
  throwaway_module "$dir" github.com/coredns/coredns "$COREDNS_VERSION" "$COREDNS_VERSION"
  {
    echo "package main"
    echo
    echo "import ("
    for p in $COREDNS_PLUGINS; do echo "	_ \"github.com/coredns/coredns/plugin/$p\""; done
    echo "	\"github.com/coredns/coredns/coremain\""
    echo ")"
    echo
    echo "func main() { coremain.Run() }"
  } > "$dir/main.go"
  say "coredns $COREDNS_VERSION: compiling (plugins: $COREDNS_PLUGINS)"
  (cd "$dir" && go get "github.com/coredns/coredns@$COREDNS_VERSION" \
    && go build -trimpath -ldflags "-s -w" -o "$bin/coredns" .)
}

# `go get pkg@version` (never bare: that resolves @latest and upgrades the required module).
for what in "${need[@]}"; do
  t0=$(date +%s)
  case $what in
    kube)
      throwaway_module "$work/kubernetes" k8s.io/kubernetes "$K8S_VERSION" "$staging_version"
      pkgs="k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler"
      ld=$(kube_ldflags)
      say "kubernetes $K8S_VERSION: resolving modules"
      (cd "$work/kubernetes" && go get $(printf "%s@$K8S_VERSION " $pkgs))
      say "kubernetes $K8S_VERSION: compiling kube-apiserver, kube-controller-manager, kube-scheduler (the long one: 15-40 min cold on 2 cores)"
      (cd "$work/kubernetes" && go build -trimpath -ldflags "$ld" -o "$bin/" $pkgs)
      ;;
    etcd)
      throwaway_module "$work/etcd" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "$ETCD_VERSION"
      say "etcd $ETCD_VERSION: compiling"
      (cd "$work/etcd" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" \
        && go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3)
      ;;
    helm)
      throwaway_module "$work/helm" helm.sh/helm/v3 "$HELM_VERSION" "$HELM_VERSION"
      say "helm $HELM_VERSION: compiling"
      (cd "$work/helm" && go get "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
        && go build -trimpath -o "$bin/helm" \
             -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
             helm.sh/helm/v3/cmd/helm)
      ;;
    prometheus)
      # No replace directives in its go.mod: the throwaway module only pins the version (and
      # seeds go.sum when the checksum database is unreachable).
      throwaway_module "$work/prometheus" github.com/prometheus/prometheus "$prom_module_version" "$prom_module_version"
      ld="-s -w"
      for kv in "Version=$prom_release" "Revision=module-$prom_module_version" "Branch=HEAD" \
                "BuildUser=promotion-ladder" "BuildDate=$(date -u +%Y%m%d-%H:%M:%S)"; do
        ld="$ld -X github.com/prometheus/common/version.$kv"
      done
      pkgs="github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool"
      say "prometheus $PROMETHEUS_VERSION (module $prom_module_version): compiling prometheus, promtool"
      (cd "$work/prometheus" && go get $(printf "%s@$prom_module_version " $pkgs) \
        && go build -trimpath -tags netgo,remove_all_sd -ldflags "$ld" -o "$bin/" $pkgs)
      ;;
    kueue) build_kueue ;;
    node) build_node ;;
    coredns) build_coredns ;;
  esac
  say "$what done in $(( $(date +%s) - t0 ))s"
done

for part in "${need[@]}"; do
  have "$part" || { echo "build.sh: $part binaries in $bin do not report $(describe "$part")" >&2; exit 1; }
done
say "built ${need[*]} in $(( $(date +%s) - start ))s; binaries in $bin"
