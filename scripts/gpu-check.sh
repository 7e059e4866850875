#!/usr/bin/env bash
# The trainer's GPU checks (issue 3), for a machine with a CUDA GPU: the device tool's H100, or yours.
#   bash scripts/gpu-check.sh [PART...]     parts: env tests bench12 bench8 budgets ddp overhead continuation (default: all)
#     env      GPU, driver, torch, CUDA and cuDNN versions
#     tests    tests/trainer/test_trainer_gpu.py (bf16, compile, fused AdamW, attention kernels, real OOM, MFU)
#     bench12  python -m ladder_trainer.bench at d12, seq 2048 (all cases)
#     bench8   the same at d8
#     budgets  the default config on the default corpus at three budgets: val_bpb should fall
#     ddp      a cell on every GPU here through torch.distributed.run with DDP and with FSDP2 (NCCL;
#              world size 1 on a one-GPU machine, launched anyway) against one process, same shape: tokens/s
#     overhead benchmarks/overhead_bench.py: 2 cells of d12 at 2m through `ladder run`, set-up,
#              compile, eval and occupied seconds per cell (issue 15's goals)
#     continuation benchmarks/continuation_bench.py: one ladder (4 candidates of d8, 10s/20s/40s)
#              from scratch and continuing: Kendall tau between the final rankings, the winner's
#              val_bpb and the GPU-hours of each (issue 25; about 8 minutes)
# Every bench row and budget cell also prints its set-up seconds and compile seconds.
# Needs python3 (or $PYTHON) with torch, numpy, tokenizers and pydantic; no install of the project.
# Where pydantic is missing, the wheels in .whl/ are installed first (scripts/gpu-wheels.sh
# fetches them). Logs and JSON go to $OUT when set (the device tool brings that folder
# back, at most 8 files: all parts together write 13, so name the parts of one call; bench12
# alone outlasts half of its 10-minute limit anyway, and overhead takes 5-6 minutes), else to
# out/gpu-check/.
# GPU_CHECK_SMOKE=1 shrinks every part to seconds on a CPU; a test runs it that way.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${OUT:-$root/out/gpu-check}
mkdir -p "$out"
python=${PYTHON:-python3}
smoke=${GPU_CHECK_SMOKE:-}

if ! "$python" -c "import pydantic" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  site=${TMPDIR:-/tmp}/ladder-gpu-site
  for wheel in .whl/*.whl; do  # a wheel is a zip of importable files: no pip needed
    "$python" -m zipfile -e "$wheel" "$site" || exit 1
  done
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$root/operator:$root/trainer:$root/cluster${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

if [ -z "$smoke" ] && ! "$python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu-check: torch sees no CUDA GPU here (set GPU_CHECK_SMOKE=1 to try the script on a CPU)" >&2
  exit 2
fi

status=0
step() {  # NAME COMMAND...: run it, keep its output in $out/NAME.log, remember a failure
  local name=$1 t0=$SECONDS
  shift
  echo "== $name: $* ($(date -u +%H:%M:%S) UTC)"
  "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
  [ "$rc" -eq 0 ] || status=1
}

env_report() {
  command -v nvidia-smi >/dev/null && nvidia-smi
  "$python" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, "| capability", f"{p.major}.{p.minor}", "| SMs", p.multi_processor_count,
          "| memory", f"{p.total_memory / 2**30:.1f} GiB")
EOF
}

bench() {  # DEPTH
  if [ -n "$smoke" ]; then
    "$python" -m ladder_trainer.bench --tiny --cases 1,2 --json "$out/bench-d$1.json"
  else
    "$python" -m ladder_trainer.bench --depths "$1" --json "$out/bench-d$1.json"
  fi
}

overhead() {
  if [ -n "$smoke" ]; then
    "$python" benchmarks/overhead_bench.py --cells 2 --budget 2s --compile off --json "$out/overhead.json"
  else
    "$python" benchmarks/overhead_bench.py --json "$out/overhead.json"
  fi
}

continuation() {
  if [ -n "$smoke" ]; then
    "$python" benchmarks/continuation_bench.py --candidates 3 --budgets 1s,2s --json "$out/continuation.json"
  else
    "$python" benchmarks/continuation_bench.py --json "$out/continuation.json"
  fi
}

budgets() {
  local config='{}' list=(10s 30s 90s) extra=()
  if [ -n "$smoke" ]; then
    config='{"depth": 1, "aspect_ratio": 32, "head_dim": 16, "seq_len": 64, "tokenizer": "byte"}'
    list=(1s 4s)
    extra=(--device cpu --eval-tokens 4096)
  fi
  local tmp
  tmp=$(mktemp -d)
  : >"$out/budgets.jsonl"
  for b in "${list[@]}"; do
    "$python" -m ladder_trainer --config "$config" --seed 0 --budget "$b" --result-file "$tmp/$b.json" "${extra[@]}" \
      || return 1
    cat "$tmp/$b.json" >>"$out/budgets.jsonl"
    echo >>"$out/budgets.jsonl"
  done
  "$python" - "$out/budgets.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print("| budget (s) | steps | tokens | val_bpb | MFU | set-up s | eval s |")
print("|---|---|---|---|---|---|---|")
f = lambda v: "n/a" if v is None else f"{v:.1f}"
for r in rows:
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
    print(f"| {r['trainSeconds']:.1f} | {r['steps']} | {r['tokens']:,} | {r['value']:.4f} | {mfu} | "
          f"{f(r.get('setupSeconds'))} | {f(r.get('evalSeconds'))} |")
values = [r["value"] for r in rows]
falls = all(b < a for a, b in zip(values, values[1:]))
print("val_bpb falls with budget:", "yes" if falls else "NO")
sys.exit(0 if falls else 1)
EOF
}

ddp() {  # one process against the launcher + DDP path on every GPU here, the same cell shape
  local config extra=() n max_steps=20
  if [ -n "$smoke" ]; then  # 2 gloo processes on the CPU: the same code path, tiny shapes
    config='{"depth": 1, "aspect_ratio": 32, "head_dim": 16, "seq_len": 64, "tokenizer": "byte", "batch": 512, "device_batch": 2}'
    extra=(--device cpu --eval-tokens 4096)
    n=2 max_steps=5
  else  # the benchmark's d12 shape: seq 2048, 2^18 tokens per step, the default corpus
    config='{"depth": 12, "aspect_ratio": 64, "head_dim": 128, "seq_len": 2048}'
    extra=(--eval-tokens 65536)
    n=$("$python" -c "import torch; print(torch.cuda.device_count())")
  fi
  local tmp
  tmp=$(mktemp -d)
  echo "-- one process"
  "$python" -m ladder_trainer --config "$config" --seed 0 --budget 30m --max-steps "$max_steps" \
    --result-file "$tmp/single.json" "${extra[@]}" || return 1
  local parallel
  for parallel in ddp fsdp; do
    echo "-- $n process(es) through torch.distributed.run, $parallel (LADDER_GPUS=$n, launched even for one)"
    LADDER_GPUS=$n LADDER_TRAINER_LAUNCH=always LADDER_TRAINER_PARALLEL=$parallel "$python" -m ladder_trainer \
      --config "$config" --seed 0 --budget 30m --max-steps "$max_steps" --result-file "$tmp/$parallel.json" "${extra[@]}" \
      || return 1
  done
  "$python" - "$tmp/single.json" "$tmp/ddp.json" "$tmp/fsdp.json" <<'EOF'
import json, sys
rows = [json.load(open(p)) for p in sys.argv[1:]]
print("| path | processes | steps | tokens/s | tokens/s per process | MFU | peak memory | val_bpb |")
print("|---|---|---|---|---|---|---|---|")
for label, r in zip(("one process", "torch.distributed.run + DDP", "torch.distributed.run + FSDP2"), rows):
    n = r.get("worldSize", 1)
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
    mem = f"{r['peakMemoryBytes'] / 2**30:.2f} GiB" if r.get("peakMemoryBytes") else "n/a"
    print(f"| {label} | {n} | {r['steps']} | {r['tokensPerSecond']:,.0f} | {r['tokensPerSecond'] / n:,.0f} | {mfu} | {mem} | {r['value']:.4f} |")
one = rows[0]
for label, r in zip(("DDP", "FSDP2"), rows[1:]):
    n = r.get("worldSize", 1)
    print(f"scaling, {label}: {r['tokensPerSecond'] / (n * one['tokensPerSecond']):.3f} of {n} x one process's tokens/s")
for r in rows:
    print("result:", json.dumps(r))
ok = all(r["status"] == "ok" and r["steps"] == one["steps"] for r in rows)
sys.exit(0 if ok else 1)
EOF
}

parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(env tests bench12 bench8 budgets ddp overhead continuation)
for part in "${parts[@]}"; do
  case $part in
    env) step env env_report ;;
    tests) step tests "$python" -m pytest --noconftest -p no:cacheprovider -q -rs tests/trainer/test_trainer_gpu.py ;;
    bench12) step bench12 bench 12 ;;
    bench8) step bench8 bench 8 ;;
    budgets) step budgets budgets ;;
    ddp) step ddp ddp ;;
    overhead) step overhead overhead ;;
    continuation) step continuation continuation ;;
    *) echo "gpu-check: unknown part '$part' (env tests bench12 bench8 budgets ddp overhead continuation)" >&2; exit 2 ;;
  esac
done
exit "$status"
