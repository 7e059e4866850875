#!/usr/bin/env bash
# The test command: sets up everything on a fresh machine (cached), then runs every test.
#   ./scripts/test.sh                 # all tests: unit, trainer, control plane, operator, chart, report
#   ./scripts/test.sh -m 'not integration'   # skip the ones that need the local control plane
# Extra arguments go to pytest. .ci/run calls exactly this.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

venv=$(bash scripts/bootstrap.sh)
# The Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler), helm,
# prometheus/promtool (tests/monitoring) and Kueue (tests/integration/test_kueue.py), built once
# from Go modules into the cache; seconds when cached.
bash cluster/build.sh
# Headless Chromium for the report's browser test (Debian package; CI installs it).
if [ -n "${CI:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  echo "test.sh: installing Debian's chromium for the report's browser test" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "test.sh: could not install chromium; the browser test will fail under CI" >&2
fi

set +e
"$venv/bin/python" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests (exit 5) with arguments: $*" >&2
  exit 1
fi
exit "$rc"
