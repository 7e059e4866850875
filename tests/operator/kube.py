"""Builders for the Kubernetes objects the operator sees: a ladder body, its Jobs and their Pods."""

from __future__ import annotations

import copy
import json
from typing import Any

from promotion_ladder.controller.intake import job_summary, pod_summary
from promotion_ladder.controller.jobs import build_job
from promotion_ladder.core.api import load_ladder
from promotion_ladder.core.cell import Cell
from promotion_ladder.core.contract import RESULT_ANNOTATION

from ..unit.builders import ladder_doc

LADDER_UID = "uid-ladder-1"


def ladder_body(
    doc: dict | None = None,
    *,
    uid: str = LADDER_UID,
    status: dict | None = None,
    generation: int = 1,
    namespace: str = "ns",
) -> dict:
    body = copy.deepcopy(doc if doc is not None else ladder_doc())
    body["metadata"].update(uid=uid, namespace=namespace, generation=generation, resourceVersion="1")
    if status is not None:
        body["status"] = status
    return body


def result_doc(
    cell: Cell,
    value: float | None = 1.5,
    *,
    ladder: str = "test",
    status: str = "ok",
    train_seconds: float = 2.0,
    metric: str = "val_bpb",
    **over: Any,
) -> str:
    d = {
        "apiVersion": "ladder.promotion.dev/v1alpha1",
        "kind": "CellResult",
        "ladder": ladder,
        "stage": cell.stage,
        "candidate": cell.candidate,
        "hostBlock": cell.host_block,
        "seed": cell.seed,
        "status": status,
        "metric": metric,
        "value": value,
        "trainSeconds": train_seconds,
    }
    d.update(over)
    return json.dumps({k: v for k, v in d.items() if v is not None})


class JobB:
    """A Job of a cell, as the API server would show it: `JobB(body, cell).complete().obj()`."""

    def __init__(self, body: dict, cell: Cell, uid: str | None = None):
        self.cell = cell
        self.o = build_job(body, load_ladder(body).spec, cell)
        self.o["metadata"]["uid"] = uid or f"job-{cell.candidate}-{cell.host_block}-{cell.seed}-{cell.stage}"
        self.o["status"] = {}

    def owner(self, uid: str) -> JobB:
        self.o["metadata"]["ownerReferences"][0]["uid"] = uid
        return self

    def cond(self, type_: str, reason: str = "", message: str = "") -> JobB:
        self.o["status"].setdefault("conditions", []).append(
            {"type": type_, "status": "True", "reason": reason, "message": message}
        )
        return self

    def complete(self) -> JobB:
        return self.cond("Complete")

    def failed(self, reason: str = "BackoffLimitExceeded") -> JobB:
        return self.cond("Failed", reason)

    def suspended(self, since: str = "2026-11-29T10:00:00Z") -> JobB:
        """Held by Kueue: spec.suspend and the Job controller's Suspended=True condition."""
        return self._suspension(True, "JobSuspended", since)

    def resumed(self, at: str) -> JobB:
        """Admitted by Kueue: running, Suspended=False since `at`."""
        return self._suspension(False, "JobResumed", at)

    def _suspension(self, suspend: bool, reason: str, at: str) -> JobB:
        self.o["spec"]["suspend"] = suspend
        conds = [c for c in self.o["status"].get("conditions", []) if c["type"] != "Suspended"]
        conds.append({"type": "Suspended", "status": str(suspend), "reason": reason, "lastTransitionTime": at})
        self.o["status"]["conditions"] = conds
        return self

    def active(self, n: int = 1) -> JobB:
        self.o["status"]["active"] = n
        return self

    def created(self, stamp: str) -> JobB:
        self.o["metadata"]["creationTimestamp"] = stamp
        return self

    def obj(self) -> dict:
        return self.o

    def summary(self):
        return job_summary(self.o)


class PodB:
    """A Pod of a Job: `PodB(job).succeeded().result(text).obj()`."""

    n = 0

    def __init__(self, job: JobB, name: str | None = None):
        PodB.n += 1
        jm = job.o["metadata"]
        self.o = {
            "metadata": {
                "name": name or f"{jm['name']}-p{PodB.n}",
                "namespace": jm.get("namespace", "ns"),
                "uid": f"pod-{PodB.n}",
                # the Job controller's selector label, as the API server defaults it into the template
                "labels": {
                    **job.o["spec"]["template"]["metadata"]["labels"],
                    "batch.kubernetes.io/controller-uid": jm["uid"],
                },
                "ownerReferences": [{"kind": "Job", "name": jm["name"], "uid": jm["uid"], "controller": True}],
                "annotations": {},
            },
            "spec": {"nodeName": "node-1"},
            "status": {"phase": "Running"},
        }

    def phase(self, p: str) -> PodB:
        self.o["status"]["phase"] = p
        return self

    def exited(self, code: int, message: str | None = None) -> PodB:
        self.o["status"]["phase"] = "Succeeded" if code == 0 else "Failed"
        term = {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}
        if message is not None:
            term["message"] = message
        self.o["status"]["containerStatuses"] = [{"name": "trainer", "state": {"terminated": term}}]
        return self

    def result(self, text: str) -> PodB:
        self.o["metadata"]["annotations"][RESULT_ANNOTATION] = text
        return self

    def owner(self, uid: str) -> PodB:
        """Re-own the Pod (only its owner reference changes)."""
        self.o["metadata"]["ownerReferences"][0]["uid"] = uid
        return self

    def label(self, key: str, value: str | None) -> PodB:
        """Relabel the Pod (None removes the label)."""
        if value is None:
            self.o["metadata"]["labels"].pop(key, None)
        else:
            self.o["metadata"]["labels"][key] = value
        return self

    def created(self, stamp: str) -> PodB:
        self.o["metadata"]["creationTimestamp"] = stamp
        return self

    def unschedulable(self, message: str, since: str = "2026-11-29T10:00:00Z") -> PodB:
        """The scheduler could not place it: PodScheduled=False, reason Unschedulable."""
        self.o["spec"].pop("nodeName", None)
        self.o["status"] = {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                    "lastTransitionTime": since,
                }
            ],
        }
        return self

    def bound(self, at: str) -> PodB:
        self.o["status"].setdefault("conditions", []).append(
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": at}
        )
        return self

    def waiting(self, reason: str, message: str = "", bound_at: str = "2026-11-29T10:00:00Z") -> PodB:
        """Bound, but its container waits (ImagePullBackOff, CreateContainerConfigError, ...)."""
        self.o["status"] = {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": bound_at}],
            "containerStatuses": [{"name": "trainer", "state": {"waiting": {"reason": reason, "message": message}}}],
        }
        return self

    def running(self, at: str) -> PodB:
        self.o["status"]["phase"] = "Running"
        self.o["status"]["containerStatuses"] = [{"name": "trainer", "state": {"running": {"startedAt": at}}}]
        return self

    def start_error(self, message: str) -> PodB:
        """The container never ran (a missing command): the kubelet's StartError, exit 128."""
        self.o["status"]["phase"] = "Failed"
        self.o["status"]["containerStatuses"] = [
            {
                "name": "trainer",
                "state": {
                    "terminated": {
                        "exitCode": 128,
                        "reason": "StartError",
                        "message": message,
                        "startedAt": "1970-01-01T00:00:00Z",
                        "finishedAt": "2026-11-29T10:00:01Z",
                    }
                },
            }
        ]
        return self

    def index(self, i: int) -> PodB:
        """A pod of an Indexed (multi-node) Job, as the Job controller marks it."""
        self.o["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] = str(i)
        self.o["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] = str(i)
        return self

    def obj(self) -> dict:
        return self.o

    def summary(self):
        return pod_summary(self.o)
