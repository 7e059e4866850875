"""The shape of a cell's pods beyond the cell contract: the user's pod template, multi-GPU and
multi-node cells. Pure: `shape_job(job, spec)` takes the Job `jobs.build_job` made and returns
the Job that runs; `rendezvous_service(job)` is the headless Service a multi-node Job needs.

Process layout (the contract with the trainer): every trainer container gets LADDER_GPUS
(processes per pod = trainer.gpus, at least 1) and LADDER_NODES (pods per cell). With
nodes = M > 1 the cell is an Indexed Job of M pods (completions = parallelism = M); the Job
controller gives each pod JOB_COMPLETION_INDEX (its node rank) and the hostname
`<job>-<index>`, and the pods' subdomain is the cell's headless Service, so
`<job>-0.<service>` resolves to the index-0 pod: torchrun's c10d rendezvous
(LADDER_RDZV_ENDPOINT = that name and port 29400, LADDER_RDZV_ID = the Job's name). Only the
index-0 pod (global rank 0) publishes the result (intake reads it from there).

A multi-node cell is one collective: when one pod fails, the others' collectives break, and an
Indexed Job would replace only that pod (it retries per index), which cannot rejoin a running
group. So any failed pod fails the Job at once (podFailurePolicy FailJob on every non-zero
exit, disruptions included); restarting the whole group is what a JobSet does (future work).
"""

from __future__ import annotations

import copy
from typing import Any

from ..core.api import LadderSpec
from ..core.contract import ENV_RDZV_ENDPOINT, ENV_RDZV_ID, LAYOUT_ENV, NON_RETRYABLE_EXIT_CODES, RDZV_PORT, process_env
from ..core.podtemplate import SHM_PATH, SHM_VOLUME, TRAINER_CONTAINER, merge_pod_template, template_mounts

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # the Job controller puts it on the Job's pods


def rendezvous_service_name(job_name: str) -> str:
    """A Service name is a DNS-1035 label (starts with a letter); Job names may start with a digit."""
    return job_name if job_name[:1].isalpha() else "r" + job_name


def _trainer(pod_spec: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod_spec["containers"] if c["name"] == TRAINER_CONTAINER)


def shape_job(job: dict[str, Any], spec: LadderSpec) -> dict[str, Any]:
    """The cell's Job with the pod template merged in and the process layout applied."""
    out = copy.deepcopy(job)
    tpl = out["spec"]["template"]
    trainer = spec.trainer
    pod = tpl["spec"]
    # Several processes per pod share tensors through /dev/shm; a container runtime's default
    # (64 MiB) is far too small for DataLoader workers and NCCL. The template may say otherwise.
    if trainer.gpus > 1 and SHM_PATH not in template_mounts(trainer.template):
        pod.setdefault("volumes", []).append({"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}})
        _trainer(pod).setdefault("volumeMounts", []).append({"name": SHM_VOLUME, "mountPath": SHM_PATH})
    out["spec"]["template"] = tpl = merge_pod_template(tpl, trainer.template)
    layout = process_env(trainer.gpus, trainer.nodes)
    if trainer.nodes > 1:
        name = out["metadata"]["name"]
        service = rendezvous_service_name(name)
        layout.update({ENV_RDZV_ENDPOINT: f"{name}-0.{service}:{RDZV_PORT}", ENV_RDZV_ID: name})
        tpl["spec"]["subdomain"] = service
        out["spec"].update(completionMode="Indexed", completions=trainer.nodes, parallelism=trainer.nodes)
        out["spec"]["podFailurePolicy"] = {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": TRAINER_CONTAINER,
                        "operator": "In",
                        "values": list(NON_RETRYABLE_EXIT_CODES),
                    },
                },
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": TRAINER_CONTAINER, "operator": "NotIn", "values": [0]},
                },
            ]
        }
    # Ours win over a spec.trainer.env entry of the same name (the template cannot set them).
    container = _trainer(tpl["spec"])
    container["env"] = [e for e in container.get("env", []) if e["name"] not in LAYOUT_ENV]
    container["env"] += [{"name": k, "value": v} for k, v in layout.items()]
    return out


def rendezvous_service(job: dict[str, Any]) -> dict[str, Any] | None:
    """The headless Service of a multi-node cell's Job (None for a single-pod cell): it gives the
    Job's pods DNS names (`<hostname>.<service>`) and is owned by the ladder, like the Job."""
    if job["spec"].get("completionMode") != "Indexed":
        return None
    meta = job["metadata"]
    svc_meta: dict[str, Any] = {
        "name": job["spec"]["template"]["spec"]["subdomain"],
        "labels": dict(meta.get("labels") or {}),
        "ownerReferences": copy.deepcopy(meta.get("ownerReferences") or []),
    }
    if meta.get("namespace"):
        svc_meta["namespace"] = meta["namespace"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": svc_meta,
        "spec": {
            "clusterIP": "None",
            "selector": {JOB_NAME_LABEL: meta["name"]},
            # Rendezvous happens while the pods start, before anything would call them Ready.
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rdzv", "port": RDZV_PORT, "targetPort": RDZV_PORT, "protocol": "TCP"}],
        },
    }
