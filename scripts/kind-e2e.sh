#!/usr/bin/env bash
# End-to-end test on kind: a real cluster, the real images, the chart, a real ladder on CPU.
#
#   scripts/kind-e2e.sh            # up + run + down (exit 0 when the ladder Succeeded)
#   scripts/kind-e2e.sh up         # cluster, fake GPUs, images, helm install (idempotent)
#   scripts/kind-e2e.sh run        # apply examples/demo-ladder.yaml, wait for Succeeded, check
#   scripts/kind-e2e.sh down       # delete the cluster
#   LADDER_E2E=kind pytest tests/e2e   # the same, driven by pytest (tests/e2e/test_kind.py)
#
# Needs Docker (running), kind >= 0.22 (its default node image is Kubernetes >= 1.29; the chart
# wants >= 1.28), kubectl >= 1.28, helm >= 3.12 and python3 (the checks) on PATH, and ~10 GB
# of disk for the trainer image. Nothing else: it runs unchanged on a laptop or a CI runner.
#
# The images are built and loaded under the names the chart and the example already use
# (ghcr.io/promotion-ladder/{operator,trainer}:<appVersion>), so `helm install` and
# `kubectl apply -f examples/demo-ladder.yaml` run exactly as documented, with no overrides;
# both pull IfNotPresent, so kind's loaded copies are used.
#
# Fake GPUs: each worker gets the host-block label of the example's nodeSelectors and
# nvidia.com/gpu capacity patched through the node's status subresource (the documented way
# to advertise an extended resource); pods requesting nvidia.com/gpu then schedule there and
# run the trainer on CPU.
#
# Env:
#   CLUSTER=ladder-e2e     kind cluster name
#   KIND_NODE_IMAGE        e.g. kindest/node:v1.31.0 (default: kind's own default)
#   KEEP_CLUSTER=1         `all`: do not delete the cluster at the end (also kept on failure
#                          with KEEP_ON_FAILURE=1)
#   SKIP_BUILD=1           use images already in the local Docker
#   TRAINER_DOCKERFILE=Dockerfile.trainer   e.g. a CPU-only variant, to keep CI images small
#   GPUS_PER_NODE=4        fake nvidia.com/gpu capacity per worker
#   LADDER=examples/demo-ladder.yaml   the ladder to run;  TIMEOUT=1200 seconds to Succeeded
#   ARTIFACTS=out/kind-e2e kubeconfig and, on failure, diagnostics (logs, events, objects)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
CLUSTER=${CLUSTER:-ladder-e2e}
GPUS_PER_NODE=${GPUS_PER_NODE:-4}
LADDER=${LADDER:-examples/demo-ladder.yaml}
TIMEOUT=${TIMEOUT:-1200}
ARTIFACTS=${ARTIFACTS:-$root/out/kind-e2e}
TRAINER_DOCKERFILE=${TRAINER_DOCKERFILE:-Dockerfile.trainer}
RELEASE=ladder
SYSTEM_NS=ladder-system
LADDER_NS=ladder-e2e
HOST_BLOCK_LABEL=ladder.promotion.dev/host-block
HOST_BLOCKS=(a100 l40s)
GPU_PRODUCTS=(NVIDIA-A100-SXM4-80GB NVIDIA-L40S)
export KUBECONFIG=$ARTIFACTS/kubeconfig

version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/promotion-ladder/Chart.yaml)
OPERATOR_IMAGE=ghcr.io/promotion-ladder/operator:$version
TRAINER_IMAGE=ghcr.io/promotion-ladder/trainer:$version

say() { printf '\nkind-e2e [%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'kind-e2e: %s\n' "$*" >&2; exit 1; }

preflight() {
  local t
  for t in docker kind kubectl helm python3; do
    command -v "$t" >/dev/null || die "$t not found on PATH (needs docker, kind, kubectl, helm, python3)"
  done
  docker info >/dev/null 2>&1 || die "docker is installed but its daemon does not answer (docker info)"
  [ -n "${SKIP_BUILD:-}" ] || [ -f "$TRAINER_DOCKERFILE" ] \
    || die "$TRAINER_DOCKERFILE is missing: the trainer image cannot be built (or set SKIP_BUILD=1)"
  mkdir -p "$ARTIFACTS"
}

reached_cluster=  # set once there is a cluster whose state is worth collecting on failure
cluster_up() {
  reached_cluster=1
  if kind get clusters 2>/dev/null | grep -x "$CLUSTER" >/dev/null; then
    say "reusing kind cluster $CLUSTER"
    kind get kubeconfig --name "$CLUSTER" > "$KUBECONFIG"
  else
    say "creating kind cluster $CLUSTER"
    kind create cluster --name "$CLUSTER" --config tests/e2e/kind-config.yaml --kubeconfig "$KUBECONFIG" --wait 180s \
      ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
  fi
}

fake_gpus() {
  local workers i n
  # (no mapfile: macOS still ships bash 3.2)
  workers=( $(kubectl get nodes -l '!node-role.kubernetes.io/control-plane' -o name | sort) )
  [ "${#workers[@]}" -ge "${#HOST_BLOCKS[@]}" ] || die "need ${#HOST_BLOCKS[@]} workers, found ${#workers[@]}"
  for i in "${!HOST_BLOCKS[@]}"; do
    n=${workers[$i]}
    say "$n: host block ${HOST_BLOCKS[$i]}, $GPUS_PER_NODE fake nvidia.com/gpu"
    kubectl label "$n" --overwrite "$HOST_BLOCK_LABEL=${HOST_BLOCKS[$i]}" \
      "nvidia.com/gpu.product=${GPU_PRODUCTS[$i]}" nvidia.com/gpu.present=true
    kubectl patch "$n" --subresource=status --type=json \
      -p "[{\"op\":\"add\",\"path\":\"/status/capacity/nvidia.com~1gpu\",\"value\":\"$GPUS_PER_NODE\"}]"
    # The kubelet copies capacity into allocatable on its next status update.
    kubectl wait "$n" --for="jsonpath={.status.allocatable.nvidia\.com/gpu}=$GPUS_PER_NODE" --timeout=120s
  done
}

images() {
  if [ -z "${SKIP_BUILD:-}" ]; then
    say "building $OPERATOR_IMAGE and $TRAINER_IMAGE"
    docker build -f Dockerfile.operator -t "$OPERATOR_IMAGE" .
    docker build -f "$TRAINER_DOCKERFILE" -t "$TRAINER_IMAGE" .
  fi
  say "loading images into $CLUSTER"
  kind load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$TRAINER_IMAGE"
}

install_chart() {
  say "helm install $RELEASE (trainer identity pre-created in $LADDER_NS)"
  kubectl get namespace "$LADDER_NS" >/dev/null 2>&1 || kubectl create namespace "$LADDER_NS"
  helm upgrade --install "$RELEASE" charts/promotion-ladder --namespace "$SYSTEM_NS" --create-namespace \
    --set "trainer.namespaces={$LADDER_NS}" --wait --timeout 5m
  kubectl -n "$SYSTEM_NS" rollout status "deploy/$RELEASE-promotion-ladder" --timeout=180s
}

diagnostics() {
  local d=$ARTIFACTS/diagnostics
  mkdir -p "$d"
  say "collecting diagnostics into $d"
  kubectl get nodes -o wide --show-labels > "$d/nodes.txt" 2>&1 || true
  kubectl get promotionladders -A -o yaml > "$d/promotionladders.yaml" 2>&1 || true
  kubectl get jobs,pods -A -o wide > "$d/workloads.txt" 2>&1 || true
  kubectl get events -A --sort-by=.lastTimestamp > "$d/events.txt" 2>&1 || true
  kubectl -n "$SYSTEM_NS" logs "deploy/$RELEASE-promotion-ladder" --tail=-1 > "$d/operator.log" 2>&1 || true
  kubectl -n "$LADDER_NS" logs -l ladder.promotion.dev/ladder --tail=200 --prefix > "$d/trainers.log" 2>&1 || true
}

run_ladder() {
  local name phase deadline
  # (no `| head` anywhere: with pipefail, the writer's SIGPIPE would fail the script at random)
  name=$(awk '/^metadata:/ {m=1; next} m && /^  name:/ {print $2; exit} /^[^ #]/ {m=0}' "$LADDER")
  say "kubectl apply -n $LADDER_NS -f $LADDER (ladder $name)"
  kubectl apply -n "$LADDER_NS" -f "$LADDER"
  deadline=$(( $(date +%s) + TIMEOUT ))
  while :; do
    phase=$(kubectl -n "$LADDER_NS" get promotionladder "$name" -o 'jsonpath={.status.phase}' 2>/dev/null || true)
    kubectl -n "$LADDER_NS" get promotionladder "$name" --no-headers 2>/dev/null || true
    case $phase in
      Succeeded) break ;;
      Failed) die "ladder $name Failed: $(kubectl -n "$LADDER_NS" get promotionladder "$name" -o 'jsonpath={.status.conditions}')" ;;
    esac
    [ "$(date +%s)" -lt "$deadline" ] || die "ladder $name not Succeeded after ${TIMEOUT}s (phase ${phase:-none})"
    sleep 10
  done
  say "ladder $name Succeeded"
  kubectl -n "$LADDER_NS" get promotionladders

  # The checks the real-node tests run too (tests/e2e/checks.py: one list for both flows):
  # host blocks, containers, results through the kubelet, /metrics, columns, operator, RBAC.
  python3 tests/e2e/checks.py --namespace "$LADDER_NS" --ladder "$name" --system-namespace "$SYSTEM_NS" \
    --release "$RELEASE" || die "end-to-end checks failed for $name"
  say "ok: $name Succeeded and passed the end-to-end checks"
}

down() {
  say "deleting kind cluster $CLUSTER"
  kind delete cluster --name "$CLUSTER"
}

up() { preflight; cluster_up; fake_gpus; images; install_chart; }

cmd=${1:-all}
on_exit() {
  local rc=$?
  if [ "$rc" -ne 0 ] && [ -n "$reached_cluster" ]; then diagnostics; fi
  if [ "$cmd" = all ] && [ -z "${KEEP_CLUSTER:-}" ] && { [ "$rc" -eq 0 ] || [ -z "${KEEP_ON_FAILURE:-}" ]; }; then
    down || true
  fi
  exit "$rc"
}
case $cmd in
  up|run|all) trap on_exit EXIT ;;
esac
case $cmd in
  up) up ;;
  run) mkdir -p "$ARTIFACTS"; reached_cluster=1; run_ladder ;;
  diagnostics) diagnostics ;;
  down) down ;;
  all) up; run_ladder ;;
  *) die "unknown command $cmd (all, up, run, diagnostics, down)" ;;
esac
