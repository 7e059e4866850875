"""Spike (not a test): today's operator, unchanged, under Kueue on the local control plane.

    $PY benchmarks/kueue_spike.py [SCENARIO ...] [--out DIR]

Starts a local cluster (simulated nodes a100-0, a100-1, l40s-0, 4 GPUs each) with Kueue
(`cluster/build.sh kueue`), the PromotionLadder CRD and the operator's identity, then per
scenario a namespace, the queue objects of `ladder manifests --kueue` and `ladder operator -n NS`,
and records what Kueue, the Jobs, the Pods and the operator show, sampled every 0.5 s. Trainers
are tests/operator/stub_trainer.py. Writes DIR/<scenario>.json (the samples and final objects)
and prints a summary per scenario. The write-up is benchmarks/kueue-spike.md.

Scenarios: quota, preempt, missing-queue, orphan-queue, multinode, restart, webhook-down, tas
(default: all).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from localcluster.apply import apply_objects  # noqa: E402
from localcluster.cluster import LocalCluster  # noqa: E402
from localcluster.kueue import LocalKueue  # noqa: E402
from localcluster.nodeagent import default_nodes  # noqa: E402
from localcluster.waiting import wait_for  # noqa: E402
from promotion_ladder.controller.kueue_manifests import QueueOptions, kueue_objects  # noqa: E402
from promotion_ladder.core.api import GROUP, PLURAL, VERSION, load_ladder  # noqa: E402
from tests.operator.harness import STUB, Operator, install_crd, operator_kubeconfig  # noqa: E402

KUEUE = ("kueue.x-k8s.io", "v1beta2")


def ladder_doc(
    name: str, candidates: dict[str, dict], stages: list[dict], blocks=("a100",), trainer=None, **spec: Any
) -> dict:
    return {
        "apiVersion": "ladder.promotion.dev/v1alpha1",
        "kind": "PromotionLadder",
        "metadata": {"name": name},
        "spec": {
            "trainer": {"image": "stub:0", "command": [sys.executable, STUB], "gpus": 1, **(trainer or {})},
            "hostBlocks": [{"name": b, "nodeSelector": {"ladder.promotion.dev/host-block": b}} for b in blocks],
            "candidates": [{"name": n, "config": c} for n, c in candidates.items()],
            "stages": stages,
            **spec,
        },
    }


def stage(name: str, budget: str = "60s", blocks=("a100",), seeds=(1,), top: int | None = None) -> dict:
    s: dict = {"name": name, "budget": budget, "hostBlocks": list(blocks), "seeds": list(seeds)}
    if top:
        s["promote"] = {"top": top}
    return s


# --- what is recorded ---------------------------------------------------------------------------


def _conds(obj: dict) -> list[dict]:
    return [
        {k: c.get(k) for k in ("type", "status", "reason", "message")}
        for c in (obj.get("status") or {}).get("conditions", [])
    ]


class Observer:
    """Reads the namespace's Jobs, Pods, Workloads, ladder and Events; samples them in a thread."""

    def __init__(self, api: client.ApiClient, ns: str, operator: Operator | None = None):
        self.ns, self.operator = ns, operator
        self.core, self.batch = client.CoreV1Api(api), client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.samples: list[dict] = []
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def jobs(self) -> list[dict]:
        out = []
        for j in self.batch.list_namespaced_job(self.ns).items:
            out.append(
                {
                    "name": j.metadata.name,
                    "suspend": j.spec.suspend,
                    "active": j.status.active,
                    "ready": j.status.ready,
                    "succeeded": j.status.succeeded,
                    "failed": j.status.failed,
                    "priorityClass": j.spec.template.spec.priority_class_name,
                    "kueueLabels": {k: v for k, v in (j.metadata.labels or {}).items() if "kueue" in k},
                    "kueueAnnotations": {k: v for k, v in (j.metadata.annotations or {}).items() if "kueue" in k},
                    "nodeSelector": j.spec.template.spec.node_selector,
                    "conditions": [(c.type, c.status, c.reason) for c in j.status.conditions or []],
                }
            )
        return out

    def pods(self) -> list[dict]:
        out = []
        for p in self.core.list_namespaced_pod(self.ns).items:
            term = None
            for cs in p.status.container_statuses or []:
                t = cs.state.terminated or (cs.last_state.terminated if cs.last_state else None)
                if t:
                    term = {"exitCode": t.exit_code, "reason": t.reason}
            out.append(
                {
                    "name": p.metadata.name,
                    "job": (p.metadata.labels or {}).get("batch.kubernetes.io/job-name"),
                    "phase": p.status.phase,
                    "node": p.spec.node_name,
                    "deleting": p.metadata.deletion_timestamp is not None,
                    "terminated": term,
                    "gpus": sum(int((c.resources.limits or {}).get("nvidia.com/gpu", 0)) for c in p.spec.containers),
                    "schedulingGates": [g.name for g in p.spec.scheduling_gates or []],
                    "kueueLabels": {k: v for k, v in (p.metadata.labels or {}).items() if "kueue" in k},
                    "kueueAnnotations": {k: v for k, v in (p.metadata.annotations or {}).items() if "kueue" in k},
                    "nodeSelector": p.spec.node_selector,
                    "conditions": [
                        (c.type, c.status, c.reason)
                        for c in p.status.conditions or []
                        if c.type in ("DisruptionTarget", "PodScheduled")
                    ],
                }
            )
        return out

    def workloads(self) -> list[dict]:
        items = self.custom.list_namespaced_custom_object(*KUEUE, self.ns, "workloads")["items"]
        out = []
        for w in items:
            owner = next((r["name"] for r in w["metadata"].get("ownerReferences", []) if r["kind"] == "Job"), None)
            adm = (w.get("status") or {}).get("admission") or {}
            out.append(
                {
                    "name": w["metadata"]["name"],
                    "job": owner,
                    "queue": w["spec"].get("queueName"),
                    "priority": w["spec"].get("priority"),
                    "active": w["spec"].get("active"),
                    "podSets": [(p["name"], p["count"]) for p in w["spec"]["podSets"]],
                    "conditions": _conds(w),
                    "admission": {
                        "clusterQueue": adm.get("clusterQueue"),
                        "podSetAssignments": adm.get("podSetAssignments"),
                    }
                    if adm
                    else None,
                    "requeueState": (w.get("status") or {}).get("requeueState"),
                    "schedulingStats": (w.get("status") or {}).get("schedulingStats"),
                    "labels": {k: v for k, v in (w["metadata"].get("labels") or {}).items() if "kueue" in k},
                    "annotations": w["metadata"].get("annotations") or {},
                }
            )
        return out

    def ladder(self, name: str) -> dict:
        obj = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)
        st = obj.get("status") or {}
        cells = {
            f"{s['name']}/{c['candidate']}/{c['hostBlock']}/{c['seed']}": (
                c["state"],
                c.get("reason"),
                c.get("trainSeconds"),
                c.get("occupiedSeconds"),
            )
            for s in st.get("stages", [])
            for c in s.get("cells", [])
        }
        return {
            "phase": st.get("phase"),
            "message": st.get("message"),
            "conditions": _conds(obj),
            "cells": cells,
            "gpuHours": st.get("gpuHours"),
            "decisions": [s.get("decision") for s in st.get("stages", [])],
            "verdict": st.get("verdict"),
        }

    def events(self) -> list[tuple]:
        return [
            (e.involved_object.kind, e.involved_object.name, e.type, e.reason, e.message, e.count)
            for e in self.core.list_namespaced_event(self.ns).items
        ]

    def metric(self, name: str) -> float | None:
        if self.operator is None:
            return None
        total, seen = 0.0, False
        for line in self.operator.metrics().splitlines():
            if line.startswith((name + "{", name + " ")):
                total, seen = total + float(line.rsplit(" ", 1)[1]), True
        return total if seen else None

    def sample(self, ladder: str | None) -> dict:
        pods = self.pods()
        s = {
            "t": round(time.monotonic() - self.t0, 2),
            "gpusRunning": sum(p["gpus"] for p in pods if p["phase"] == "Running" and not p["deleting"]),
            "podsRunning": sorted(p["name"] for p in pods if p["phase"] == "Running"),
            "pods": {
                p["name"]: (
                    p["phase"],
                    p["node"],
                    (p["terminated"] or {}).get("exitCode"),
                    p["deleting"],
                    p["schedulingGates"],
                )
                for p in pods
            },
            "jobsSuspended": sum(bool(j["suspend"]) for j in self.jobs()),
            "workloads": {
                w["job"]: [c["type"] for c in w["conditions"] if c["status"] == "True"] for w in self.workloads()
            },
        }
        if ladder:
            lad = self.ladder(ladder)
            s["ladderPhase"] = lad["phase"]
            s["cellStates"] = sorted({v[0] for v in lad["cells"].values()})
            s["ladderCells"] = lad["cells"]
            s["gpusInUse"] = self.metric("ladder_gpus_in_use")
        return s

    def start(self, ladder: str | None, every: float = 0.5) -> Observer:
        def loop() -> None:
            while not self._stop.wait(every):
                try:
                    self.samples.append(self.sample(ladder))
                except Exception as exc:  # noqa: BLE001 - a spike records what it can
                    self.samples.append({"t": round(time.monotonic() - self.t0, 2), "error": repr(exc)})

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def final(self, ladder: str | None) -> dict:
        out = {"jobs": self.jobs(), "pods": self.pods(), "workloads": self.workloads(), "events": self.events()}
        if ladder:
            out["ladder"] = self.ladder(ladder)
        return out


# --- the scenarios ------------------------------------------------------------------------------


class Spike:
    def __init__(self, cluster: LocalCluster, kueue: LocalKueue, identity: Path, out: Path):
        self.cluster, self.kueue, self.identity, self.out = cluster, kueue, identity, out
        self.api = cluster.api_client()
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def namespace(self, name: str) -> str:
        self.core.create_namespace({"metadata": {"name": name}})
        wait_for(lambda: self.core.read_namespaced_service_account("default", name), timeout=30, what="default SA")
        return name

    def queues(self, doc: dict, ns: str, **options: Any) -> list[dict]:
        objs = kueue_objects(load_ladder(doc), QueueOptions(namespace=ns, cluster_queue=f"cq-{ns}", **options))
        apply_objects(self.api, objs)
        return objs

    def operator(self, ns: str) -> Operator:
        return Operator(self.identity, ns, self.out).start()

    def create(self, ns: str, doc: dict) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, doc)

    def run_ladder(
        self,
        ns: str,
        doc: dict,
        *,
        timeout: float,
        during: Callable[[Observer], None] | None = None,
        queues: dict | None = None,
    ) -> dict:
        """Queue objects (unless queues is None), an operator, the ladder; samples until it ends."""
        if queues is not None:
            self.queues(doc, ns, **queues)
        op = self.operator(ns)
        obs = Observer(self.api, ns, op)
        try:
            self.create(ns, doc)
            obs.start(doc["metadata"]["name"])
            if during:
                during(obs)
            try:
                wait_for(
                    lambda: obs.ladder(doc["metadata"]["name"])["phase"] in ("Succeeded", "Failed"),
                    timeout=timeout,
                    what="ladder ends",
                )
                ended = True
            except AssertionError:
                ended = False
            obs.stop()
            return {
                "ended": ended,
                "seconds": round(time.monotonic() - obs.t0, 1),
                "samples": obs.samples,
                "final": obs.final(doc["metadata"]["name"]),
                "metrics": op.metrics(),
            }
        finally:
            obs.stop()
            op.stop()

    def watch(self, ns: str, doc: dict, seconds: float) -> dict:
        """An operator and the ladder, watched for `seconds` (a ladder not expected to end)."""
        op = self.operator(ns)
        obs = Observer(self.api, ns, op)
        try:
            self.create(ns, doc)
            obs.start(doc["metadata"]["name"])
            time.sleep(seconds)
            obs.stop()
            return {"samples": obs.samples[::10], "final": obs.final(doc["metadata"]["name"])}
        finally:
            obs.stop()
            op.stop()


def quota(sp: Spike) -> dict:
    """6 one-GPU cells at once against 2 GPUs of quota; the same ladder without Kueue to compare."""
    cands = {f"c{i}": {"value": 1.0 + 0.1 * i, "sleep": 3, "train_seconds": 3} for i in range(6)}
    stages = [stage("s1", top=2), stage("s2", seeds=(1, 2))]
    queued = ladder_doc("quota", cands, stages, queueName="gpus")
    plain = ladder_doc("quota", cands, stages)
    moments: dict[str, Any] = {}

    def during(obs: Observer) -> None:
        wait_for(lambda: any(p["phase"] == "Running" for p in obs.pods()), timeout=60, what="a cell running")
        moments["waiting"] = obs.final("quota")  # 2 admitted and running, 4 suspended

    with_kueue = sp.run_ladder(
        sp.namespace("spike-quota"), queued, timeout=300, during=during, queues={"gpu_quota": {"": "2"}}
    )
    with_kueue["moments"] = moments
    without = sp.run_ladder(sp.namespace("spike-quota-plain"), plain, timeout=300)
    return {"withKueue": with_kueue, "withoutKueue": without}


def preempt(sp: Spike) -> dict:
    """A running cell (1 GPU, quota 1) and then a higher-priority Job in the same queue."""
    ns = sp.namespace("spike-preempt")
    doc = ladder_doc(
        "preempt", {"c0": {"value": 1.0, "sleep": 25, "train_seconds": 25}}, [stage("s1", "120s")], queueName="gpus"
    )
    sched = client.SchedulingV1Api(sp.api)
    sched.create_priority_class({"metadata": {"name": "spike-urgent"}, "value": 1000})
    urgent = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "urgent", "labels": {"kueue.x-k8s.io/queue-name": "gpus"}},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "priorityClassName": "spike-urgent",
                    "nodeSelector": {"ladder.promotion.dev/host-block": "a100"},
                    "containers": [
                        {
                            "name": "main",
                            "image": "x",
                            "command": [sys.executable, "-c", "import time; time.sleep(8)"],
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                }
            },
        },
    }
    moments: dict[str, Any] = {}

    def during(obs: Observer) -> None:
        wait_for(lambda: any(p["phase"] == "Running" for p in obs.pods()), timeout=60, what="the cell's pod running")
        time.sleep(3)
        moments["before"] = obs.final("preempt")
        client.BatchV1Api(sp.api).create_namespaced_job(ns, urgent)
        wait_for(
            lambda: any(
                w["job"] == "urgent" and any(c["type"] == "Admitted" and c["status"] == "True" for c in w["conditions"])
                for w in obs.workloads()
            ),
            timeout=60,
            what="urgent admitted",
        )
        time.sleep(2)
        moments["preempted"] = obs.final("preempt")

    result = sp.run_ladder(
        ns, doc, timeout=180, during=during, queues={"gpu_quota": {"": "1"}, "preemption": "LowerPriority"}
    )
    result["moments"] = moments
    return result


def missing_queue(sp: Spike) -> dict:
    """queueName names a LocalQueue that does not exist; watched for 40 s."""
    ns = sp.namespace("spike-missing")
    doc = ladder_doc("missing", {"c0": {"value": 1.0}}, [stage("s1")], queueName="nope")
    return sp.watch(ns, doc, 40)


def orphan_queue(sp: Spike) -> dict:
    """The LocalQueue exists but names a ClusterQueue that does not; watched for 30 s."""
    ns = sp.namespace("spike-orphan")
    doc = ladder_doc("orphan", {"c0": {"value": 1.0}}, [stage("s1")], queueName="orphan")
    lq = {
        "apiVersion": "/".join(KUEUE),
        "kind": "LocalQueue",
        "metadata": {"name": "orphan", "namespace": ns},
        "spec": {"clusterQueue": "no-such-cluster-queue"},
    }
    apply_objects(sp.api, [lq])
    result = sp.watch(ns, doc, 30)
    result["localQueue"] = sp.custom.get_namespaced_custom_object(*KUEUE, ns, "localqueues", "orphan").get("status")
    return result


def multinode(sp: Spike) -> dict:
    """2-node cells (2 pods x 4 GPUs) under exactly 8 GPUs of a100 quota; then a quota of 4."""
    trainer = {"gpus": 4, "nodes": 2}
    cands = {"c0": {"value": 1.0, "sleep": 4, "train_seconds": 4}, "c1": {"value": 1.1, "sleep": 4, "train_seconds": 4}}
    doc = ladder_doc("multi", cands, [stage("s1")], trainer=trainer, queueName="gpus")
    whole = sp.run_ladder(sp.namespace("spike-multinode"), doc, timeout=240, queues={"gpu_quota": {"": "8"}})
    # A ClusterQueue that cannot hold one cell (the builder refuses it, so written by hand).
    ns = sp.namespace("spike-multinode-small")
    objs = sp.queues(doc, ns, gpu_quota={"": "8"})
    cq = next(o for o in objs if o["kind"] == "ClusterQueue")
    for f in cq["spec"]["resourceGroups"][0]["flavors"]:
        f["resources"][0]["nominalQuota"] = "4"
    apply_objects(sp.api, [cq])
    return {"quotaOfOneCell": whole, "quotaBelowOneCell": sp.watch(ns, doc, 30)}


def restart(sp: Spike) -> dict:
    """8 one-GPU cells, parallelism 3, quota 2: Kueue stopped for 15 s mid-stage, then started."""
    cands = {f"c{i}": {"value": 1.0 + 0.1 * i, "sleep": 3, "train_seconds": 3} for i in range(8)}
    doc = ladder_doc("restart", cands, [stage("s1")], queueName="gpus", parallelism=3)
    moments: dict[str, Any] = {}

    def during(obs: Observer) -> None:
        wait_for(lambda: sum(p["phase"] == "Succeeded" for p in obs.pods()) >= 2, timeout=60, what="2 cells done")
        t = time.monotonic()
        sp.kueue.stop()
        moments["stoppedAt"] = round(t - obs.t0, 2)
        time.sleep(15)
        moments["whileDown"] = obs.final("restart")
        sp.kueue.start()
        moments["startedAt"] = round(time.monotonic() - obs.t0, 2)

    result = sp.run_ladder(
        sp.namespace("spike-restart"), doc, timeout=300, during=during, queues={"gpu_quota": {"": "2"}}
    )
    result["moments"] = moments
    return result


def webhook_down(sp: Spike) -> dict:
    """Kueue stopped while stage s1's last cells run, so the operator creates stage s2's Jobs while
    Kueue's webhook (failurePolicy: Fail) cannot answer; started again 20 s later."""
    cands = {f"c{i}": {"value": 1.0 + 0.1 * i, "sleep": 6, "train_seconds": 6} for i in range(2)}
    doc = ladder_doc("down", cands, [stage("s1", top=2), stage("s2", seeds=(1, 2))], queueName="gpus")
    moments: dict[str, Any] = {}

    def during(obs: Observer) -> None:
        wait_for(lambda: sum(p["phase"] == "Running" for p in obs.pods()) == 2, timeout=60, what="s1 running")
        sp.kueue.stop()
        moments["stoppedAt"] = round(time.monotonic() - obs.t0, 2)
        wait_for(lambda: obs.ladder("down")["decisions"][0] is not None, timeout=60, what="s1 decided")
        time.sleep(20)
        moments["whileDown"] = obs.final("down")
        sp.kueue.start()
        moments["startedAt"] = round(time.monotonic() - obs.t0, 2)

    result = sp.run_ladder(
        sp.namespace("spike-webhook-down"), doc, timeout=300, during=during, queues={"gpu_quota": {"": "2"}}
    )
    result["moments"] = moments
    return result


def tas(sp: Spike) -> dict:
    """Topology-aware scheduling: a Topology over the simulated nodes' labels, a flavor naming it,
    and a 2-node cell (2 pods x 2 GPUs) asking through the pod template to stay on one host."""
    ns = sp.namespace("spike-tas")
    levels = ["ladder.promotion.dev/host-block", "kubernetes.io/hostname"]
    topology = {
        "apiVersion": "/".join(KUEUE),
        "kind": "Topology",
        "metadata": {"name": "spike-topology"},
        "spec": {"levels": [{"nodeLabel": lv} for lv in levels]},
    }
    template = {"metadata": {"annotations": {"kueue.x-k8s.io/podset-required-topology": "kubernetes.io/hostname"}}}
    doc = ladder_doc(
        "tas",
        {"c0": {"value": 1.0, "sleep": 4, "train_seconds": 4}},
        [stage("s1")],
        trainer={"gpus": 2, "nodes": 2, "template": template},
        queueName="gpus",
    )
    objs = kueue_objects(load_ladder(doc), QueueOptions(namespace=ns, cluster_queue=f"cq-{ns}", gpu_quota={"": "8"}))
    for o in objs:
        if o["kind"] == "ResourceFlavor":
            o["metadata"]["name"] = "a100-tas"
            o["spec"]["topologyName"] = "spike-topology"
        if o["kind"] == "ClusterQueue":
            o["spec"]["resourceGroups"][0]["flavors"][0]["name"] = "a100-tas"
    apply_objects(sp.api, [topology, *objs])
    result = sp.run_ladder(ns, doc, timeout=180, queues=None)
    result["topology"] = sp.custom.get_cluster_custom_object(*KUEUE, "topologies", "spike-topology")
    return result


SCENARIOS: dict[str, Callable[[Spike], dict]] = {
    "quota": quota,
    "preempt": preempt,
    "missing-queue": missing_queue,
    "orphan-queue": orphan_queue,
    "multinode": multinode,
    "restart": restart,
    "webhook-down": webhook_down,
    "tas": tas,
}


def summary(name: str, result: dict) -> str:
    def peak(samples: list[dict]) -> int:
        return max((s.get("gpusRunning", 0) for s in samples), default=0)

    if name == "quota":
        k, p = result["withKueue"], result["withoutKueue"]
        return (
            f"quota: with Kueue {k['seconds']} s, peak GPUs running {peak(k['samples'])}, decisions "
            f"{'same' if k['final']['ladder']['decisions'] == p['final']['ladder']['decisions'] else 'DIFFER'}; "
            f"without {p['seconds']} s, peak {peak(p['samples'])}"
        )
    body = result.get("quotaOfOneCell", result)
    lad = (body.get("final") or {}).get("ladder") or {}
    return (
        f"{name}: phase {lad.get('phase')}, cells {lad.get('cells')}, peak GPUs running {peak(body.get('samples', []))}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"some of: {', '.join(SCENARIOS)} (default: all)")
    p.add_argument("--out", default=None, help="where the JSON records go (default: a new temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the cluster directory (component and pod logs)")
    args = p.parse_args()
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    out = Path(args.out or tempfile.mkdtemp(prefix="kueue-spike-"))
    out.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="localcluster-spike-"))
    cluster = LocalCluster.start(directory, default_nodes())
    kueue = LocalKueue(cluster.control_plane)
    try:
        t0 = time.monotonic()
        kueue.start()
        print(f"kueue up in {time.monotonic() - t0:.1f}s; logs in {cluster.dir / 'logs'}", flush=True)
        api = cluster.api_client()
        install_crd(api)
        identity = operator_kubeconfig(api, cluster.kubeconfig, out / "operator.kubeconfig")
        spike = Spike(cluster, kueue, identity, out)
        for name in args.scenarios or list(SCENARIOS):
            result = SCENARIOS[name](spike)
            (out / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))
            print(summary(name, result), flush=True)
        print(f"records in {out}")
    finally:
        kueue.stop()
        cluster.stop()
        if args.keep:
            print(f"cluster directory kept: {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
