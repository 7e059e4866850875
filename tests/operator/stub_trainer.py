"""A stand-in trainer that honours the cell contract and reports at once (or as told).

    python stub_trainer.py --config-file PATH --seed N --budget 2s --result-file PATH

The candidate config steers it (so tests can script faults per candidate):
  value: base metric (default 1.0); the reported val_bpb is value + 0.001 * seed
  raw_value: any JSON written as the result's value, as it is (e.g. "0.25" or true: not numbers)
  sleep: seconds to "train" before reporting (default 0)
  sleep_first_try: seconds to hang on the candidate's first try only (a marker file in $TMPDIR's
              parent tells later tries), e.g. to leave a Pod running past its deadline
  exit: exit code (3 diverged, 4 oom, 1 error; default 0)
  rank_exit: exit code of the other pods of a multi-node cell (JOB_COMPLETION_INDEX > 0), which
             publish nothing, as the contract says (default 0)
  train_seconds: the trainSeconds to report (default: the seconds it slept)
  claim: fields that replace the result's own everywhere it is written (result file, termination
         message, annotation), e.g. {"candidate": "b", "value": 3} to speak for another cell
  annotation: "forge" (annotate a result claiming another candidate, value 0.0),
              "malformed" (annotate text that is not JSON), "none" (no annotation),
              "lie" (annotate its own identity with value lie_value, default 0.1);
              the termination message always carries the true result
It writes the result file, the termination message (LADDER_TERMINATION_LOG or
/dev/termination-log) and, with POD_NAME/POD_NAMESPACE, its Pod's result annotation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ANNOTATION = "ladder.promotion.dev/result"
STATUS_BY_EXIT = {0: "ok", 1: "error", 2: "error", 3: "diverged", 4: "oom"}


def annotate(text: str) -> None:
    name, ns = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
    if not (name and ns):
        return
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    client.CoreV1Api().patch_namespaced_pod(name, ns, {"metadata": {"annotations": {ANNOTATION: text}}})


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config-file", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", required=True)
    p.add_argument("--result-file")
    a, _ = p.parse_known_args()
    cfg = json.loads(open(a.config_file).read())
    layout = {
        k: os.environ.get(k)
        for k in ("JOB_COMPLETION_INDEX", "LADDER_GPUS", "LADDER_NODES", "LADDER_RDZV_ENDPOINT", "LADDER_RDZV_ID")
    }
    print("stub layout " + json.dumps(layout, sort_keys=True), flush=True)
    if int(layout["JOB_COMPLETION_INDEX"] or 0) > 0:  # only global rank 0 publishes
        time.sleep(float(cfg.get("sleep", 0)))
        return int(cfg.get("rank_exit", 0))
    t0 = time.monotonic()
    time.sleep(float(cfg.get("sleep", 0)))
    if cfg.get("sleep_first_try"):
        marker = os.path.join(
            os.path.dirname(os.path.abspath(os.environ.get("TMPDIR", "/tmp"))),
            "stub-tried-"
            + "-".join(
                os.environ.get(k, "") for k in ("POD_NAMESPACE", "LADDER_NAME", "LADDER_CANDIDATE", "LADDER_SEED")
            ),
        )
        if not os.path.exists(marker):
            open(marker, "w").close()
            time.sleep(float(cfg["sleep_first_try"]))
    code = int(cfg.get("exit", 0))
    status = STATUS_BY_EXIT.get(code, "error")
    doc = {
        "apiVersion": "ladder.promotion.dev/v1alpha1",
        "kind": "CellResult",
        "ladder": os.environ.get("LADDER_NAME"),
        "stage": os.environ.get("LADDER_STAGE"),
        "candidate": os.environ.get("LADDER_CANDIDATE"),
        "hostBlock": os.environ.get("LADDER_HOST_BLOCK"),
        "seed": int(os.environ.get("LADDER_SEED", a.seed)),
        "status": status,
        "metric": "val_bpb",
        "value": (cfg["raw_value"] if "raw_value" in cfg else round(float(cfg.get("value", 1.0)) + 0.001 * a.seed, 6))
        if status == "ok"
        else None,
        "trainSeconds": float(cfg.get("train_seconds", round(time.monotonic() - t0, 3))),
        "message": "" if status == "ok" else f"stub exit {code}",
    }
    doc.update(cfg.get("claim") or {})
    text = json.dumps({k: v for k, v in doc.items() if v is not None}, separators=(",", ":"))
    if a.result_file:
        with open(a.result_file, "w") as fh:
            fh.write(text + "\n")
    term = os.environ.get("LADDER_TERMINATION_LOG") or (
        "/dev/termination-log" if os.path.exists("/dev/termination-log") else None
    )
    if term:
        with open(term, "w") as fh:
            fh.write(text)
    mode = cfg.get("annotation", "real")
    if mode == "forge":
        annotate(json.dumps({**doc, "candidate": cfg.get("forge_as", "c0"), "value": 0.0, "status": "ok"}))
    elif mode == "lie":
        annotate(
            json.dumps({k: v for k, v in {**doc, "value": float(cfg.get("lie_value", 0.1))}.items() if v is not None})
        )
    elif mode == "malformed":
        annotate("{this is not json")
    elif mode != "none":
        annotate(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
