"""Benchmark of `python -m ladder_trainer.prepare` against the tokenizer's own speed (the ceiling).

    python benchmarks/prepare_bench.py                 # 32 MB of the standard library's sources, BPE 8192
    python benchmarks/prepare_bench.py --mb 8 --repeat 1

The corpus is the running interpreter's standard library (offline, real code and prose),
written as one JSONL document per file. A BPE of --vocab-size tokens is trained on it first
(not timed). Then, each in a fresh process pinned to the cores it may use:
- ceiling: `tokenizers`' own `encode_batch_fast` over all the documents held in memory, on one
  core (TOKENIZERS_PARALLELISM=false) and on every core (its Rayon threads);
- prepare: the whole command (process start, reading, splitting, tokenizing, writing shards,
  meta) with --workers 1 on one core, --workers 1 on every core (the tokenizer's threads), and
  --workers N (one process per core, tokenizer threads off).
It prints a Markdown table: seconds, tokens/s, and prepare's tokens/s as a share of the ceiling
at the same core count. The best of --repeat runs is kept (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "trainer"), str(ROOT / "operator")]

CEILING = """
import json, os, sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
tok.encode_special_tokens = True
texts = [json.loads(line)["text"] for line in open(sys.argv[2], encoding="utf-8")]
t0 = time.perf_counter()
n = 0
for i in range(0, len(texts), 1024):
    n += sum(len(e.ids) for e in tok.encode_batch_fast(texts[i:i + 1024], add_special_tokens=False))
print(json.dumps({"seconds": time.perf_counter() - t0, "tokens": n}))
"""


def pinned(cores: list[int]):
    return lambda: os.sched_setaffinity(0, cores)


def run(cmd: list[str], cores: list[int], env_extra: dict) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "trainer"), str(ROOT / "operator")]), **env_extra}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, preexec_fn=pinned(cores), check=False)
    dt = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return dt, out.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=32, help="corpus size (MB of standard-library sources)")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    from ladder_trainer.data import BPETokenizer, stdlib_files

    cores = sorted(os.sched_getaffinity(0))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="prepare-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.jsonl"
    texts, size = [], 0
    for _, p in stdlib_files():
        try:
            t = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        texts.append(t)
        size += len(t.encode("utf-8"))
        if size >= args.mb * 2**20:
            break
    with open(corpus, "w", encoding="utf-8") as fh:
        for t in texts:
            fh.write(json.dumps({"text": t}) + "\n")
    tok_path = work / "tokenizer.json"
    BPETokenizer.train(iter(texts[: max(1, len(texts) // 4)]), args.vocab_size).tok.save(str(tok_path))
    print(f"corpus: {len(texts)} documents, {size / 2**20:.1f} MB; BPE {args.vocab_size}; cores {len(cores)}; "
          f"load {os.getloadavg()[0]:.1f}", file=sys.stderr)

    one, allc = cores[:1], cores
    serial = {"TOKENIZERS_PARALLELISM": "false"}
    cases = [
        ("ceiling: encode_batch_fast", one, serial, "ceiling", None),
        ("ceiling: encode_batch_fast", allc, {}, "ceiling", None),
        ("prepare --workers 1", one, serial, "prepare", 1),
        ("prepare --workers 1 (tokenizer threads)", allc, {}, "prepare", 1),
        (f"prepare --workers {len(allc)}", allc, {}, "prepare", len(allc)),
    ]
    results = []
    for name, cs, env, kind, workers in cases:
        best = None
        for _ in range(args.repeat):
            if kind == "ceiling":
                _, out = run([sys.executable, "-c", CEILING, str(tok_path), str(corpus)], cs, env)
                doc = json.loads(out)
                secs, tokens = doc["seconds"], doc["tokens"]
            else:
                dest = work / "out"
                shutil.rmtree(dest, ignore_errors=True)
                secs, out = run([sys.executable, "-m", "ladder_trainer.prepare", str(corpus), "--output", str(dest),
                                 "--tokenizer", str(tok_path), "--workers", str(workers), "--shard-mb", "2", "--quiet"],
                                cs, env)
                meta = json.loads(out.strip().splitlines()[-1])
                tokens = meta["train_tokens"] + meta["val_tokens"] - meta["train_docs"] - meta["val_docs"]  # no eot
            if best is None or secs < best[0]:
                best = (secs, tokens)
        results.append((name, len(cs), best[0], best[1]))
        print(f"  {name} on {len(cs)} core(s): {best[1] / best[0]:,.0f} tok/s", file=sys.stderr)

    ceiling = {n: t / s for name, n, s, t in results if name.startswith("ceiling")}
    print(f"\n| Case | Cores | Seconds | Tokens/s | Share of the ceiling at these cores |")
    print("|---|---|---|---|---|")
    for name, n, secs, tokens in results:
        rate = tokens / secs
        share = "-" if name.startswith("ceiling") else f"{rate / ceiling[n]:.0%}"
        print(f"| {name} | {n} | {secs:.2f} | {rate:,.0f} | {share} |")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
