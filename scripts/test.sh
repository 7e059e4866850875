#!/usr/bin/env bash
# The test command: sets up everything on a fresh machine (cached), then runs ruff, mypy and
# every test.
#   ./scripts/test.sh                 # all tests: unit, trainer, control plane, operator, chart, report
#   ./scripts/test.sh -m 'not integration'   # skip the ones that need the local control plane
# Extra arguments go to pytest. .ci/run calls exactly this.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

venv=$(bash scripts/bootstrap.sh)
# Real nodes (tests marked real_nodes; docs/localcluster.md "Real nodes"): containerd, runc and
# the CNI plugins run them, docker.io builds the images from the Dockerfiles, debootstrap makes
# their base, busybox-static the pod sandbox image. Debian packages; CI installs them.
real_node_packages="containerd runc containernetworking-plugins iptables docker.io debootstrap busybox-static"
if [ -n "${CI:-}" ] && ! dpkg -s $real_node_packages >/dev/null 2>&1; then
  echo "test.sh: installing Debian's $real_node_packages for the real-node tests" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
     $real_node_packages >/dev/null) \
    || echo "test.sh: could not install $real_node_packages; the real-node tests will fail under CI" >&2
fi
# The operator and trainer images (tests marked real_nodes), built from the Dockerfiles into the
# cache in the background, beside the Go builds below and the tests that need no image (the
# image build mostly waits on disk and the package registries; the real-node tests run last and
# wait for it through the build's lock). Seconds when cached. If it fails, the real-node
# fixtures try again and name what is missing.
images_log=${LADDER_CACHE:-$HOME/.cache/promotion-ladder}/images-build.log
images_pid=
if [ "$(id -u)" = 0 ] && command -v dockerd >/dev/null && command -v debootstrap >/dev/null; then
  mkdir -p "$(dirname "$images_log")"
  PYTHONPATH=cluster "$venv/bin/python" -m localcluster images > "$images_log" 2>&1 &
  images_pid=$!
fi
# The Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler), helm,
# prometheus/promtool (tests/monitoring), Kueue (tests/integration/test_kueue.py), and the real
# nodes' kubelet, kube-proxy, kubectl and CoreDNS, built once from Go modules into the cache;
# seconds when cached.
bash cluster/build.sh
# Headless Chromium for the report's browser test (Debian package; CI installs it).
if [ -n "${CI:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  echo "test.sh: installing Debian's chromium for the report's browser test" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "test.sh: could not install chromium; the browser test will fail under CI" >&2
fi

set +e
# Lint and types (seconds): ruff's rules and format, mypy (strict on the core; pyproject.toml).
# A finding fails the run, after the tests have run too, so one run shows everything.
lint_rc=0
"$venv/bin/ruff" check --quiet . || lint_rc=1
"$venv/bin/ruff" format --check --quiet . || lint_rc=1
"$venv/bin/mypy" || lint_rc=1
"$venv/bin/python" -m pytest "$@"
rc=$?
if [ -n "$images_pid" ] && ! wait "$images_pid"; then
  echo "test.sh: the background image build failed (log $images_log):" >&2
  tail -20 "$images_log" >&2
fi
set -e
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests (exit 5) with arguments: $*" >&2
  exit 1
fi
if [ "$lint_rc" -ne 0 ] && [ "$rc" -eq 0 ]; then
  echo "test.sh: the tests passed, but ruff or mypy found problems (above)" >&2
  exit 1
fi
exit "$rc"
