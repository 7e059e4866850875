#!/usr/bin/env bash
# The demo: sets up the environment (cached) and runs a small ladder end to end on this
# machine with the real trainer: 4 candidates, 2 host blocks, 3 stages of tiny CPU budgets.
# Takes a few minutes on a 2-core machine without a GPU. Re-running resumes (nothing is re-run);
# pass --fresh to start over. Extra arguments go to `ladder run`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=$(bash scripts/bootstrap.sh)
mkdir -p out
"$venv/bin/ladder" run examples/demo-ladder.yaml --output out/demo.status.json --parallel 2 "$@"
echo
"$venv/bin/ladder" report out/demo.status.json -o out/demo-report.html 2>/dev/null \
  && echo "report: out/demo-report.html" || true
