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
Cases run in interleaved rounds (--repeat) and the best round of each is kept. Two rates per
case: tokens per wall-clock second, and tokens per CPU-second (user + system time of every
process and thread of the case). On a shared, busy machine the wall clock mostly measures the
neighbours; CPU time still says how much work prepare adds over the tokenizer, and a
parallel case that keeps the 1-core case's tokens per CPU-second scales linearly with the
cores it gets. The ceiling's CPU time covers its encode calls only (time.process_time);
prepare's covers the whole command, start-up and writing included.
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
t0, c0 = time.perf_counter(), time.process_time()
n = 0
for i in range(0, len(texts), 1024):
    n += sum(len(e.ids) for e in tok.encode_batch_fast(texts[i:i + 1024], add_special_tokens=False))
print(json.dumps({"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0, "tokens": n}))
"""


def pinned(cores: list[int]):
    return lambda: os.sched_setaffinity(0, cores)


def run(cmd: list[str], cores: list[int], env_extra: dict) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the process and its children, stdout)."""
    import resource

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "trainer"), str(ROOT / "operator")]), **env_extra}
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, preexec_fn=pinned(cores), check=False)
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return dt, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), out.stdout


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
    print(
        f"corpus: {len(texts)} documents, {size / 2**20:.1f} MB; BPE {args.vocab_size}; cores {len(cores)}; "
        f"load {os.getloadavg()[0]:.1f}",
        file=sys.stderr,
    )

    one, allc = cores[:1], cores
    serial = {"TOKENIZERS_PARALLELISM": "false"}
    cases = [
        ("ceiling: encode_batch_fast", one, serial, "ceiling", None),
        ("ceiling: encode_batch_fast", allc, {}, "ceiling", None),
        ("prepare --workers 1", one, serial, "prepare", 1),
        ("prepare --workers 1 (tokenizer threads)", allc, {}, "prepare", 1),
        (f"prepare --workers {len(allc)}", allc, {}, "prepare", len(allc)),
    ]
    best: dict[int, tuple[float, float, int]] = {}  # case -> (wall, cpu, tokens), best wall and best cpu
    for round_ in range(args.repeat):
        for i, (name, cs, env, kind, workers) in enumerate(cases):
            if kind == "ceiling":
                _, _, out = run([sys.executable, "-c", CEILING, str(tok_path), str(corpus)], cs, env)
                doc = json.loads(out)
                secs, cpu, tokens = doc["seconds"], doc["cpu"], doc["tokens"]
            else:
                dest = work / "out"
                shutil.rmtree(dest, ignore_errors=True)
                secs, cpu, out = run(
                    [
                        sys.executable,
                        "-m",
                        "ladder_trainer.prepare",
                        str(corpus),
                        "--output",
                        str(dest),
                        "--tokenizer",
                        str(tok_path),
                        "--workers",
                        str(workers),
                        "--shard-mb",
                        "2",
                        "--quiet",
                    ],
                    cs,
                    env,
                )
                meta = json.loads(out.strip().splitlines()[-1])
                tokens = meta["train_tokens"] + meta["val_tokens"] - meta["train_docs"] - meta["val_docs"]  # no eot
            old = best.get(i)
            best[i] = (min(secs, old[0]) if old else secs, min(cpu, old[1]) if old else cpu, tokens)
            print(
                f"  round {round_ + 1}: {name} on {len(cs)} core(s): {tokens / secs:,.0f} tok/s, "
                f"{tokens / cpu:,.0f} tok/CPU-s (load {os.getloadavg()[0]:.1f})",
                file=sys.stderr,
            )

    rows = [(name, len(cs), *best[i]) for i, (name, cs, _, _, _) in enumerate(cases)]
    ceiling = {n: (t / s, t / c) for name, n, s, c, t in rows if name.startswith("ceiling")}
    print(
        "\n| Case | Cores | Wall s | Tokens/s | Share of ceiling (wall) | CPU s | Tokens/CPU-s "
        "| Share of ceiling (CPU) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, n, secs, cpu, tokens in rows:
        wall_rate, cpu_rate = tokens / secs, tokens / cpu
        share_w = "-" if name.startswith("ceiling") else f"{wall_rate / ceiling[n][0]:.0%}"
        share_c = "-" if name.startswith("ceiling") else f"{cpu_rate / ceiling[n][1]:.0%}"
        print(f"| {name} | {n} | {secs:.2f} | {wall_rate:,.0f} | {share_w} | {cpu:.2f} | {cpu_rate:,.0f} | {share_c} |")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
