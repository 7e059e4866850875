"""A trainer stub that reports at once, standard library only (fast to start: the benchmark runs
over a thousand of them on two cores). Honours the cell contract: --config-file/--seed/--budget/
--result-file, LADDER_* env; annotates its Pod through the JSON kubeconfig the local simulated
kubelet writes ($KUBECONFIG) or the in-cluster service account; writes the termination message.
val_bpb = config.value + 0.001 * seed."""

from __future__ import annotations

import base64
import json
import os
import ssl
import sys
import urllib.request


def api() -> tuple[str, str, ssl.SSLContext]:
    path = os.environ.get("KUBECONFIG")
    if path:
        cfg = json.load(open(path))
        cluster, user = cfg["clusters"][0]["cluster"], cfg["users"][0]["user"]
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        return cluster["server"], user["token"], ssl.create_default_context(cadata=ca)
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    server = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}"
    return server, open(f"{sa}/token").read(), ssl.create_default_context(cafile=f"{sa}/ca.crt")


def main(argv: list[str]) -> int:
    args = dict(zip(argv[::2], argv[1::2], strict=False))
    cfg = json.loads(open(args["--config-file"]).read())
    seed = int(args.get("--seed", "0"))
    doc = {
        "apiVersion": "ladder.promotion.dev/v1alpha1",
        "kind": "CellResult",
        "ladder": os.environ["LADDER_NAME"],
        "stage": os.environ["LADDER_STAGE"],
        "candidate": os.environ["LADDER_CANDIDATE"],
        "hostBlock": os.environ["LADDER_HOST_BLOCK"],
        "seed": seed,
        "status": "ok",
        "metric": "val_bpb",
        "value": round(float(cfg.get("value", 1.0)) + 0.001 * seed, 6),
        "trainSeconds": 0.01,
    }
    text = json.dumps(doc, separators=(",", ":"))
    if "--result-file" in args:
        with open(args["--result-file"], "w") as fh:
            fh.write(text)
    term = os.environ.get("LADDER_TERMINATION_LOG", "/dev/termination-log")
    if os.path.exists(os.path.dirname(term) or "."):
        try:
            with open(term, "w") as fh:
                fh.write(text)
        except OSError:
            pass
    name, ns = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
    if name and ns:
        server, token, ctx = api()
        body = json.dumps({"metadata": {"annotations": {"ladder.promotion.dev/result": text}}}).encode()
        req = urllib.request.Request(
            f"{server}/api/v1/namespaces/{ns}/pods/{name}",
            data=body,
            method="PATCH",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json"},
        )
        urllib.request.urlopen(req, context=ctx, timeout=30).read()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
