#!/usr/bin/env bash
# Creates (once) the project's Python environment in a cache outside the clone and
# installs the project into it in editable mode. A second run takes seconds.
#
#   LADDER_CACHE  cache root (default ~/.cache/promotion-ladder)
#   LADDER_VENV   the environment (default $LADDER_CACHE/venv); one per clone when several
#                 clones run tests at once, since the editable install points at one clone
#
# torch (the trainer extra) is several GB on Linux; it is installed into the same cached
# venv so tests and the demo can run the real trainer. The operator's own install
# (Dockerfile.operator, `pip install promotion-ladder`) never pulls it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${LADDER_CACHE:-$HOME/.cache/promotion-ladder}
venv=${LADDER_VENV:-$cache/venv}
mkdir -p "$cache"

if [ ! -x "$venv/bin/python" ]; then
  echo "bootstrap: creating $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi

# Re-install the dependencies only when their list changed (hash of pyproject.toml); re-point
# the editable install (seconds, no downloads) when the venv was last used by another clone.
stamp=$venv/.pyproject.sha
want=$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing promotion-ladder[dev,trainer,report,prepare] (first run downloads torch, a few GB)" >&2
  "$venv/bin/python" -m pip install -q --progress-bar off -e "$root[dev,trainer,report,prepare]"
  echo "$want" > "$stamp"
fi
here=$("$venv/bin/python" -c 'import promotion_ladder, os; print(os.path.dirname(promotion_ladder.__file__))' 2>/dev/null || true)
if [ "$here" != "$root/operator/promotion_ladder" ]; then
  echo "bootstrap: pointing the environment at $root" >&2
  "$venv/bin/python" -m pip install -q --progress-bar off --no-deps -e "$root"
fi
echo "$venv"
