"""Operator benchmark (not a test): N ladders x M candidates on the local control plane, with a
trainer stub that reports at once (benchmarks/instant_trainer.py).

    ~/.cache/promotion-ladder/venv/bin/python benchmarks/operator_bench.py [--ladders 20] [--candidates 50]

Prints, and with --record appends to benchmarks/operator-results.md:
  * decision latency: from the last cell of a stage seen Succeeded (a watch in this process) to
    the first Job of the next stage seen created (same watch), p50/p99 over all stage transitions;
    and the operator's own ladder_decision_latency_seconds histogram;
  * API requests per cell: the operator's writes (ladder_operator_api_requests_total: Job creates,
    status patches, Events, RBAC) per cell; its watches (3 streams) are not counted;
  * the operator's peak RSS (VmHWM);
  * the wait a user feels, per cell (issue 21): the operator's ladder_cell_pod_creation_seconds
    (Job created -> its Pod created: the Job controller), ladder_cell_scheduling_seconds (Job
    created -> Pod scheduled) and ladder_cell_start_seconds (scheduled -> running) histograms:
    count, mean and the p50/p90/p99 bucket bounds.
Each ladder: s1 1s x a100 x seed 1 (M cells, top 10) -> s2 1s x a100,l40s x seed 1 (top 3) -> s3 1s x
a100,l40s x seeds 1,2.

Restart under load (issue 12, defect 1):

    ... operator_bench.py --restart [--candidates 100]      # CI-affordable: 100 x 2 x 2 (444 cells)
    ... operator_bench.py --restart --candidates 1000       # full size: 4,440 cells

One ladder: s1 (every candidate x a100,l40s x seeds 1,2, top N/10) -> s2 (top N/100, at least 1)
-> s3, each stage 2 host blocks x 2 seeds. Once every s1 Job exists the operator is killed
(SIGKILL), and started again once --down-until (90%) of them completed meanwhile.
Prints: seconds to /healthz after the restart, the reconcile gap
(restart to the first status write of the new operator, and the longest pause between status
writes after it), the restarted operator's peak RSS, and results lost (cells recorded Failed:
the stub never fails, so anything above 0 is a lost result).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from itertools import pairwise
from pathlib import Path

from kubernetes import client, watch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from localcluster.cluster import LocalCluster  # noqa: E402
from localcluster.nodeagent import gpu_node  # noqa: E402
from localcluster.waiting import wait_for  # noqa: E402
from tests.operator.harness import free_port, install_crd  # noqa: E402

LABEL = "ladder.promotion.dev/ladder"
NS = "bench"


def ladder(i: int, candidates: int) -> dict:
    return {
        "apiVersion": "ladder.promotion.dev/v1alpha1",
        "kind": "PromotionLadder",
        "metadata": {"name": f"bench-{i:02d}"},
        "spec": {
            "trainer": {
                "image": "stub",
                "command": [sys.executable, str(ROOT / "benchmarks" / "instant_trainer.py")],
                "gpus": 1,
            },
            "hostBlocks": [
                {"name": h, "nodeSelector": {"ladder.promotion.dev/host-block": h}} for h in ("a100", "l40s")
            ],
            "candidates": [
                {"name": f"c{j:03d}", "config": {"value": 1.0 + ((j * 37 + i) % candidates) / 100}}
                for j in range(candidates)
            ],
            "stages": [
                {"name": "s1", "budget": "1s", "hostBlocks": ["a100"], "seeds": [1], "promote": {"top": 10}},
                {"name": "s2", "budget": "1s", "hostBlocks": ["a100", "l40s"], "seeds": [1], "promote": {"top": 3}},
                {"name": "s3", "budget": "1s", "hostBlocks": ["a100", "l40s"], "seeds": [1, 2]},
            ],
        },
    }


class Recorder:
    """Watches pods and jobs; keeps when each stage's last pod succeeded and its first job appeared."""

    def __init__(self, api: client.ApiClient):
        self.core, self.batch = client.CoreV1Api(api), client.BatchV1Api(api)
        self.last_success: dict[tuple[str, str], float] = {}
        self.first_job: dict[tuple[str, str], float] = {}
        self.succeeded: set[str] = set()
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def _run(self, fn, on_event):
        rv = None
        while not self.stop.is_set():
            try:
                for ev in watch.Watch().stream(fn, NS, label_selector=LABEL, resource_version=rv, timeout_seconds=30):
                    rv = ev["object"].metadata.resource_version
                    on_event(ev["type"], ev["object"], time.monotonic())
                    if self.stop.is_set():
                        return
            except Exception:  # noqa: BLE001 - reconnect from scratch (e.g. 410 Gone)
                rv = None

    def on_pod(self, type_, pod, t):
        if pod.status.phase == "Succeeded" and pod.metadata.uid not in self.succeeded:
            self.succeeded.add(pod.metadata.uid)
            key = (pod.metadata.labels[LABEL], pod.metadata.labels["ladder.promotion.dev/stage"])
            with self.lock:
                self.last_success[key] = max(self.last_success.get(key, 0.0), t)

    def on_job(self, type_, job, t):
        if type_ == "ADDED":
            key = (job.metadata.labels[LABEL], job.metadata.labels["ladder.promotion.dev/stage"])
            with self.lock:
                self.first_job.setdefault(key, t)

    def start(self):
        for fn, cb in ((self.core.list_namespaced_pod, self.on_pod), (self.batch.list_namespaced_job, self.on_job)):
            threading.Thread(target=self._run, args=(fn, cb), daemon=True).start()

    def latencies(self) -> list[float]:
        out = []
        for (lad, stage), t_done in self.last_success.items():
            nxt = {"s1": "s2", "s2": "s3"}.get(stage)
            if nxt and (lad, nxt) in self.first_job:
                out.append(self.first_job[(lad, nxt)] - t_done)
        return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q / 100 * len(xs) + 0.5)) - 1))]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def metric(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def histogram_quantile(text: str, name: str, q: float) -> float | None:
    buckets = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    return next(le for le, n in sorted(buckets) if n >= q * total)


START_HISTOGRAMS = {
    "job_to_pod_created": "ladder_cell_pod_creation_seconds",
    "job_to_scheduled": "ladder_cell_scheduling_seconds",
    "scheduled_to_running": "ladder_cell_start_seconds",
}


def start_waits(text: str) -> dict:
    """The operator's per-cell start histograms: count, mean, and p50/p90/p99 as bucket bounds (s)."""
    out = {}
    for key, name in START_HISTOGRAMS.items():
        count = metric(text, name + "_count")
        out[key] = {
            "cells": int(count),
            "mean_s": round(metric(text, name + "_sum") / count, 2) if count else None,
            **{f"p{q}_s_le": histogram_quantile(text, name, q / 100) for q in (50, 90, 99)},
        }
    return out


def restart_ladder(candidates: int) -> dict:
    blocks, seeds = ["a100", "l40s"], [1, 2]
    top1, top2 = max(2, candidates // 10), max(1, candidates // 100)
    return {
        "apiVersion": "ladder.promotion.dev/v1alpha1",
        "kind": "PromotionLadder",
        "metadata": {"name": "restart"},
        "spec": {
            "trainer": {
                "image": "stub",
                "command": [sys.executable, str(ROOT / "benchmarks" / "instant_trainer.py")],
                "gpus": 1,
            },
            "hostBlocks": [{"name": h, "nodeSelector": {"ladder.promotion.dev/host-block": h}} for h in blocks],
            "candidates": [
                {"name": f"c{j:04d}", "config": {"value": 1.0 + (j * 37 % candidates) / candidates}}
                for j in range(candidates)
            ],
            "stages": [
                {"name": "s1", "budget": "1s", "hostBlocks": blocks, "seeds": seeds, "promote": {"top": top1}},
                {"name": "s2", "budget": "1s", "hostBlocks": blocks, "seeds": seeds, "promote": {"top": top2}},
                {"name": "s3", "budget": "1s", "hostBlocks": blocks, "seeds": seeds},
            ],
        },
    }


def start_operator(cluster: LocalCluster, d: Path, n: int) -> tuple[subprocess.Popen, int, int]:
    mport, hport = free_port(), free_port()
    log = open(d / f"operator-{n}.log", "w")
    op = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "promotion_ladder.cli",
            "operator",
            "-n",
            NS,
            "--metrics-port",
            str(mport),
            "--health-port",
            str(hport),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        start_new_session=True,
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
    )
    return op, mport, hport


def ready(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).status == 200
    except OSError:
        return False


def peak_rss_mb(pid: int) -> float:
    return round(
        next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith("VmHWM")) / 1024, 1
    )


def restart_bench(args: argparse.Namespace, cluster: LocalCluster, d: Path) -> dict:
    api = cluster.api_client()
    custom, batch = client.CustomObjectsApi(api), client.BatchV1Api(api)
    op, _, hport = start_operator(cluster, d, 1)
    try:
        wait_for(lambda: ready(hport), timeout=120, what="operator ready")
        doc = restart_ladder(args.candidates)
        t0 = time.monotonic()
        custom.create_namespaced_custom_object("ladder.promotion.dev", "v1alpha1", NS, "promotionladders", doc)
        s1_jobs = args.candidates * 4

        def s1_created():
            return (
                len(
                    batch.list_namespaced_job(NS, label_selector=f"{LABEL}=restart,ladder.promotion.dev/stage=s1").items
                )
                >= s1_jobs
            )

        wait_for(s1_created, timeout=args.timeout, interval=2, what=f"{s1_jobs} stage-1 Jobs")
        t_jobs = time.monotonic() - t0
    finally:
        os.killpg(op.pid, 9)
        op.wait()
    # While it is down the cells go on: restart once --down-until of the stage-1 Jobs completed,
    # so the new operator must index (and judge) thousands of finished Jobs and Pods at once.
    t_down = time.monotonic()

    def s1_done():
        jobs = batch.list_namespaced_job(NS, label_selector=f"{LABEL}=restart,ladder.promotion.dev/stage=s1").items
        return sum(1 for j in jobs if j.status.succeeded) >= args.down_until * s1_jobs

    wait_for(s1_done, timeout=args.timeout, interval=3, what=f"{args.down_until:.0%} of stage 1 done while down")
    down_s = time.monotonic() - t_down
    # Status writes of the new operator, seen by a watch of this process.
    writes: list[float] = []
    stop = threading.Event()

    def watch_ladder():
        rv = custom.get_namespaced_custom_object("ladder.promotion.dev", "v1alpha1", NS, "promotionladders", "restart")[
            "metadata"
        ]["resourceVersion"]
        while not stop.is_set():
            try:
                for ev in watch.Watch().stream(
                    custom.list_namespaced_custom_object,
                    "ladder.promotion.dev",
                    "v1alpha1",
                    NS,
                    "promotionladders",
                    resource_version=rv,
                    timeout_seconds=20,
                ):
                    rv = ev["object"]["metadata"]["resourceVersion"]
                    writes.append(time.monotonic())
                    if stop.is_set():
                        return
            except Exception:  # noqa: BLE001 - reconnect
                time.sleep(0.5)

    threading.Thread(target=watch_ladder, daemon=True).start()
    time.sleep(1)
    t_restart = time.monotonic()
    op, mport, hport = start_operator(cluster, d, 2)
    try:
        wait_for(lambda: ready(hport), timeout=args.timeout, interval=0.5, what="restarted operator ready")
        t_ready = time.monotonic() - t_restart
        obj = wait_for(
            lambda: (
                (
                    o := custom.get_namespaced_custom_object(
                        "ladder.promotion.dev", "v1alpha1", NS, "promotionladders", "restart"
                    )
                )
                .get("status", {})
                .get("phase")
                in ("Succeeded", "Failed")
                and o
            ),
            timeout=args.timeout,
            interval=2,
            what="ladder finished",
        )
        stop.set()
        rss = peak_rss_mb(op.pid)
        text = scrape(mport)
        selector = f"{LABEL}=restart"
        jobs_created = len(batch.list_namespaced_job(NS, label_selector=selector).items)
        pods_run = len(client.CoreV1Api(api).list_namespaced_pod(NS, label_selector=selector).items)
    finally:
        os.killpg(op.pid, 15)
        op.wait(30)
    st = obj["status"]
    cells = [c for s in st["stages"] for c in s.get("cells") or []]
    after = [t for t in writes if t >= t_restart]
    gaps = [b - a for a, b in pairwise([t_restart, *after])]
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "restart",
        "candidates": args.candidates,
        "cells": len(cells),
        "phase": st["phase"],
        "results_lost": sum(c["state"] == "Failed" for c in cells),
        "jobs_created": jobs_created,
        "pods_run": pods_run,
        "failed_reasons": sorted({c.get("reason", "") for c in cells if c["state"] == "Failed"})[:5],
        "stage1_jobs_created_s": round(t_jobs, 1),
        "down_until_stage1_done": args.down_until,
        "down_s": round(down_s, 1),
        "ready_after_restart_s": round(t_ready, 1),
        "first_status_write_after_restart_s": round(after[0] - t_restart, 1) if after else None,
        "longest_status_gap_after_restart_s": round(max(gaps), 1) if gaps else None,
        "restarted_operator_peak_rss_mb": rss,
        "lookups": metric(text, 'ladder_operator_api_requests_total{operation="list_pods"}'),
        "cell_start_waits": start_waits(text),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ladders", type=int, default=20)
    ap.add_argument("--candidates", type=int, default=50)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--record", action="store_true", help="append the numbers to benchmarks/operator-results.md")
    ap.add_argument(
        "--restart",
        action="store_true",
        help="restart under load: one ladder, operator killed once its stage-1 Jobs exist (default 100 candidates)",
    )
    ap.add_argument(
        "--down-until",
        type=float,
        default=0.9,
        help="--restart: start the operator again once this share of stage-1 Jobs completed (default 0.9)",
    )
    args = ap.parse_args()
    if args.restart and "--candidates" not in sys.argv:
        args.candidates = 100

    d = Path(tempfile.mkdtemp(prefix="operator-bench-"))
    nodes = [gpu_node(f"a100-{i}", "a100", args.gpus_per_node) for i in range(2)] + [
        gpu_node(f"l40s-{i}", "l40s", args.gpus_per_node) for i in range(2)
    ]
    print(f"starting the local control plane in {d} ...", flush=True)
    cluster = LocalCluster.start(d, nodes)
    op = None
    try:
        api = cluster.api_client()
        install_crd(api)
        core = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": NS}})
        wait_for(lambda: core.read_namespaced_service_account("default", NS), timeout=30, what="namespace ready")
        if args.restart:
            result = restart_bench(args, cluster, d)
            print(json.dumps(result, indent=2))
            if args.record:
                with open(ROOT / "benchmarks" / "operator-results.md", "a") as fh:
                    fh.write(
                        f"\n## {result['date']}: restart under load, {args.candidates} candidates x 2 x 2 "
                        f"({result['cells']} cells, {result['cpus']} CPUs)\n\n"
                        f"```json\n{json.dumps(result, indent=2)}\n```\n"
                    )
            return 0 if result["results_lost"] == 0 else 1
        op, mport, hport = start_operator(cluster, d, 0)
        wait_for(lambda: ready(hport), timeout=60, what="operator ready")
        rec = Recorder(api)
        rec.start()
        time.sleep(1)
        custom = client.CustomObjectsApi(api)
        t0 = time.monotonic()
        for i in range(args.ladders):
            custom.create_namespaced_custom_object(
                "ladder.promotion.dev", "v1alpha1", NS, "promotionladders", ladder(i, args.candidates)
            )

        def all_done():
            items = custom.list_namespaced_custom_object("ladder.promotion.dev", "v1alpha1", NS, "promotionladders")[
                "items"
            ]
            phases = [(x.get("status") or {}).get("phase") for x in items]
            return all(p in ("Succeeded", "Failed") for p in phases) and phases

        def progress():
            items = custom.list_namespaced_custom_object("ladder.promotion.dev", "v1alpha1", NS, "promotionladders")[
                "items"
            ]
            return [(x["metadata"]["name"], (x.get("status") or {}).get("currentStage")) for x in items]

        phases = wait_for(all_done, timeout=args.timeout, interval=2, what="all ladders finished", describe=progress)
        wall = time.monotonic() - t0
        text = scrape(mport)
        rss = peak_rss_mb(op.pid)
        rec.stop.set()
        lat = rec.latencies()
        cells = (
            sum(
                len(s["hostBlocks"]) * len(s["seeds"]) * n
                for s, n in zip(ladder(0, args.candidates)["spec"]["stages"], (args.candidates, 10, 3), strict=True)
            )
            * args.ladders
        )
        requests = metric(text, "ladder_operator_api_requests_total")
        result = {
            "date": datetime.date.today().isoformat(),
            "ladders": args.ladders,
            "candidates": args.candidates,
            "cells": cells,
            "succeeded": phases.count("Succeeded"),
            "wall_seconds": round(wall, 1),
            "decision_latency_p50_s": round(pct(lat, 50), 3),
            "decision_latency_p99_s": round(pct(lat, 99), 3),
            "decision_latency_max_s": round(max(lat), 3),
            "transitions": len(lat),
            "operator_histogram_p50_s_le": histogram_quantile(text, "ladder_decision_latency_seconds", 0.5),
            "operator_histogram_p99_s_le": histogram_quantile(text, "ladder_decision_latency_seconds", 0.99),
            "api_requests_per_cell": round(requests / cells, 3),
            "requests_by_operation": {
                line.split('"')[1]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("ladder_operator_api_requests_total{")
            },
            "peak_rss_mb": rss,
            "cell_start_waits": start_waits(text),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        }
        print(json.dumps(result, indent=2))
        if args.record:
            out = ROOT / "benchmarks" / "operator-results.md"
            head = (
                ""
                if out.exists()
                else (
                    "# Operator benchmark results\n\nProduced by `benchmarks/operator_bench.py` "
                    "on the local control plane (see its docstring for what is measured).\n"
                )
            )
            with open(out, "a") as fh:
                fh.write(
                    f"{head}\n## {result['date']}: {args.ladders} ladders x {args.candidates} candidates "
                    f"({cells} cells, {result['cpus']} CPUs)\n\n```json\n{json.dumps(result, indent=2)}\n```\n"
                )
        return 0
    finally:
        if op is not None and op.poll() is None:
            op.terminate()
            try:
                op.wait(15)
            except subprocess.TimeoutExpired:
                op.kill()
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
