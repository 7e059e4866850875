"""`ladder`: validate, simulate and run PromotionLadders; print the CRD; run the operator."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TypeAlias

import yaml

from .core.api import LadderInvalid, LadderSpec, load_ladder
from .core.recorded import RecordedResultsInvalid, parse_results
from .files import FileError, read_ladder, read_ladder_document, read_text

# The API server limits an object's annotations to 256 KiB in all, and client-side `kubectl
# apply` keeps the whole manifest in one (kubectl.kubernetes.io/last-applied-configuration).
ANNOTATIONS_LIMIT = 256 * 1024


def _cmd_validate(args: argparse.Namespace) -> int:
    doc = read_ladder_document(args.file)
    ladder = load_ladder(doc, source=str(args.file))
    spec = ladder.spec
    cells = sum(len(s.cells()) for s in spec.stages)
    print(
        f"{args.file}: valid PromotionLadder {ladder.name!r}: {len(spec.candidates)} candidates, "
        f"{len(spec.stages)} stages, {len(spec.host_blocks)} host blocks, {cells} cells per candidate at most; "
        f"frozen hash {spec.frozen_hash()}"
    )
    size = len(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode())
    if size > ANNOTATIONS_LIMIT * 0.9:
        print(
            f"warning: the ladder is {size // 1024} KiB as JSON: `kubectl apply -f` keeps a copy in the "
            f"annotation kubectl.kubernetes.io/last-applied-configuration, and an object's annotations are "
            f"limited to {ANNOTATIONS_LIMIT // 1024} KiB (it fails as `metadata.annotations: Too long`); use "
            f"`kubectl apply --server-side -f {args.file}` or `kubectl create -f {args.file}`"
        )
    for line in _continuation_notes(spec):
        print(line)
    if args.tokens_per_second is not None:
        for line in _repeat_warnings(spec, args):
            print(line)
    for line in _cluster_warnings(ladder, args):
        print(line)
    if args.pod_security is not None:
        return _pod_security(doc, spec, args.pod_security)
    return 0


def _continuation_notes(spec: LadderSpec) -> list[str]:
    """A ladder that continues: where its checkpoints go, and what a cluster needs for them."""
    from .core.continuation import without_predecessor
    from .core.podtemplate import continuation_mount_errors

    c = spec.continuation
    if c is None:
        return []
    out = [
        f"continuation: each later cell resumes from the previous stage's stable checkpoint of the same candidate, "
        f"host block and seed (onMismatch: {c.on_mismatch}, keep: {c.keep}); checkpoints under {c.path} on a "
        "cluster, under the work dir with `ladder run`"
    ]
    for stage, alone, cells in without_predecessor(spec):
        out.append(
            f"continuation: {alone} of the {cells} cells per candidate of stage {stage} have no cell of the same "
            "host block and seed one stage earlier: they train from scratch (for the stage's full budget)"
        )
    out += [
        f"warning: {e} (the operator refuses the ladder without it; `ladder run` does not need it)"
        for e in continuation_mount_errors(c.path, spec.trainer.template)
    ]
    return out


def _pod_security(doc: dict, spec, level: str) -> int:
    """Exit 1 naming each field that breaks the Pod Security Standard `level` in a cell's pod."""
    from .controller.admission import pod_security_problems
    from .controller.manifests import PLACEHOLDER_UID

    body = {**doc, "metadata": {**doc.get("metadata", {}), "uid": PLACEHOLDER_UID}}  # the Jobs' owner reference
    problems = pod_security_problems(level, body, spec)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if problems:
        print(
            f"the namespace's Pod Security Standard {level} would refuse this ladder's cell pods; "
            f'set the fields above in spec.trainer.template (docs/operator.md, "Pod security")',
            file=sys.stderr,
        )
        return 1
    print(f"cell pods meet the Pod Security Standard {level}")
    return 0


CLUSTER_TIMEOUT_SECONDS = 5.0  # `ladder validate` does not hang on a cluster it cannot reach


def _cluster_warnings(ladder, args: argparse.Namespace) -> list[str]:
    """Where a kubeconfig reaches a cluster: host blocks none of whose nodes could hold a cell even
    when empty (trainer.gpus or a request above every matching node's allocatable), as the
    operator's admission says them (controller/admission.py). Nothing without a kubeconfig."""
    import os

    if args.offline:
        return []
    kubeconfig = args.kubeconfig or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    if not args.kubeconfig and not os.environ.get("KUBECONFIG") and not Path(kubeconfig).exists():
        return []
    from kubernetes import client, config

    from .controller.admission import unfit_blocks
    from .controller.kubeapi import node_from
    from .controller.manifests import PLACEHOLDER_UID

    cfg = client.Configuration()
    try:
        config.load_kube_config(
            config_file=kubeconfig.split(os.pathsep)[0], context=args.context, client_configuration=cfg
        )
        cfg.retries = 0  # one try: a cluster that is not there is a note, not a wait
        found = client.CoreV1Api(client.ApiClient(cfg)).list_node(_request_timeout=CLUSTER_TIMEOUT_SECONDS).items
    except Exception as exc:  # noqa: BLE001 - the cluster is a bonus: the file is valid either way
        why = str(getattr(exc, "reason", None) or exc).splitlines()[0][:160]
        return [f"note: the cluster {cfg.host or kubeconfig} was not checked ({why}); --offline skips the look"]
    nodes = [node_from(n) for n in found]
    body = {"metadata": {"name": ladder.name, "uid": PLACEHOLDER_UID}}
    unfit = unfit_blocks(body, ladder.spec, nodes)
    return [f"warning: spec.hostBlocks: {why}" for why in unfit.values()] or [
        f"cluster: every host block has a node that can hold a cell ({len(nodes)} nodes seen)"
    ]


def _cmd_manifests(args: argparse.Namespace) -> int:
    if args.kueue:
        return _kueue_manifests(args)
    kueue_only = [
        o
        for o, v in (
            ("--gpu-quota", args.gpu_quota),
            ("--cpu-quota", args.cpu_quota),
            ("--memory-quota", args.memory_quota),
            ("--cluster-queue", args.cluster_queue),
            ("--preemption", args.preemption),
        )
        if v
    ]
    if kueue_only:
        raise FileError(f"{kueue_only[0]}: only with --kueue")
    from .controller.manifests import render

    sys.stdout.write(render(read_ladder(args.file), args.stage, args.namespace))
    return 0


def _kueue_manifests(args: argparse.Namespace) -> int:
    from .controller.kueue_manifests import QueueOptions, parse_block_values, render

    if args.stage:
        raise FileError("--stage: not used with --kueue (the queue objects are the same for every stage)")
    options = QueueOptions(
        gpu_quota=parse_block_values(args.gpu_quota, "--gpu-quota"),
        cpu_quota=parse_block_values(args.cpu_quota, "--cpu-quota"),
        memory_quota=parse_block_values(args.memory_quota, "--memory-quota"),
        cluster_queue=args.cluster_queue,
        namespace=args.namespace,
        preemption=args.preemption or "Never",
    )
    sys.stdout.write(render(read_ladder(args.file), options))
    return 0


def _repeat_warnings(spec, args: argparse.Namespace) -> list[str]:
    """Before anything runs: which stages would repeat the training data at this throughput."""
    from .core.data_checks import REPEAT_ABOVE, estimated_passes

    if args.tokens_per_second <= 0:
        raise FileError(f"--tokens-per-second: must be positive, got {args.tokens_per_second:g}")
    if args.train_tokens is not None:
        train_tokens, what = args.train_tokens, f"{args.train_tokens:,} training tokens"
    elif args.data:
        meta_path = Path(args.data) / "meta.json"
        try:
            train_tokens = int(json.loads(meta_path.read_text())["train_tokens"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FileError(
                f"--data {args.data}: no prepared corpus there (meta.json with train_tokens): {exc}"
            ) from None
        what = f"the {train_tokens:,} training tokens of {args.data}"
    else:
        raise FileError("--tokens-per-second needs the corpus size: --train-tokens N or --data DIR (a prepared corpus)")
    out = []
    for st in spec.stages:
        passes = estimated_passes(st.budget_seconds, args.tokens_per_second, train_tokens)
        if passes > REPEAT_ABOVE:
            out.append(
                f"warning: stage {st.name} (budget {st.budget}): at {args.tokens_per_second:,.0f} tokens/s a cell "
                f"makes about {passes:.1f} passes over {what}: repeated data (a longer budget can rank by "
                "memorisation); give it a larger corpus"
            )
    if not out:
        out.append(f"data: every stage stays within one pass over {what} at {args.tokens_per_second:,.0f} tokens/s")
    return out


def _cmd_crd(args: argparse.Namespace) -> int:
    from .core.crd import crd

    sys.stdout.write(crd_yaml(crd()))
    return 0


def crd_yaml(doc: dict) -> str:
    return (
        "# Generated by `ladder crd` from the pydantic models in promotion_ladder.core.api; do not edit.\n"
        + yaml.safe_dump(doc, sort_keys=False, width=120)
    )


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .core.accounting import continuation_estimate
    from .core.continuation import ladder_root
    from .core.status import outcomes_from_status, simulate
    from .render import estimate_line, status_table

    ladder = read_ladder(args.file)
    recorded = parse_results(read_text(args.results), source=str(args.results), spec=ladder.spec)
    root = ladder_root(ladder.spec.continuation.path, ladder.name) if ladder.spec.continuation else None
    status, plan = simulate(ladder.spec, recorded, checkpoint_root=root)
    estimate = None
    if ladder.spec.continuation is None and len(ladder.spec.stages) > 1:
        estimate = estimate_line(continuation_estimate(ladder.spec, outcomes_from_status(status), plan.entering))
    if args.output == "json":
        # pydantic's encoder: the same text as json.dumps(status.wire(), indent=2), 7x faster
        print(status.model_dump_json(by_alias=True, exclude_none=True, indent=2))
        if estimate:
            print(estimate, file=sys.stderr)
    else:
        print(status_table(status) + (f"\n\n{estimate}" if estimate else ""))
    return 0 if status.phase == "Succeeded" else 3


def _cmd_run(args: argparse.Namespace) -> int:
    from .local.runner import run_ladder

    ladder = read_ladder(args.file)
    if ladder.spec.trainer.nodes > 1:
        raise FileError(
            f"{args.file}: spec.trainer.nodes: {ladder.spec.trainer.nodes}: `ladder run` runs every cell on this "
            "one machine; a multi-node cell needs the operator (`ladder manifests` shows its Jobs)"
        )
    out = Path(args.output or f"{ladder.name}.status.json")
    status = run_ladder(
        ladder, out, parallel=args.parallel, workdir=Path(args.workdir) if args.workdir else None, fresh=args.fresh
    )
    from .render import continuation_lines, occupancy_table, stability_lines

    if status.gpu_hours is not None:
        print("\n".join(occupancy_table(status.gpu_hours) + continuation_lines(status)), file=sys.stderr)
    for line in stability_lines(status):
        print(line, file=sys.stderr)
    return 0 if status.phase == "Succeeded" else 3


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import run_report

    return run_report(args)


def _cmd_operator(args: argparse.Namespace) -> int:
    try:
        from .controller.main import run_operator
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise FileError(f"the operator is not available in this install: {exc}") from None
    return run_operator(args)


# The subcommands' parsers (argparse names this type only privately).
_Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _add_validate(sub: _Subparsers) -> None:
    """`ladder validate`: check a ladder file, optionally against a corpus and a cluster."""
    s = sub.add_parser("validate", help="check a ladder file; exit 1 listing every problem by field path")
    s.add_argument("file")
    s.add_argument(
        "--tokens-per-second",
        type=float,
        default=None,
        help="a cell's expected training throughput: warn about stages that would repeat the data",
    )
    s.add_argument(
        "--train-tokens", type=int, default=None, help="training tokens of the corpus (with --tokens-per-second)"
    )
    s.add_argument("--data", default=None, help="a prepared corpus directory, for its training token count")
    s.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="look at this cluster's nodes: warn when no node of a host block could hold a cell "
        "(default: KUBECONFIG or ~/.kube/config when present)",
    )
    s.add_argument("--context", help="kubeconfig context (with the cluster look)")
    s.add_argument("--offline", action="store_true", help="do not look at any cluster")
    s.add_argument(
        "--pod-security",
        choices=("baseline", "restricted"),
        default=None,
        help="also check the cell pods against this Pod Security Standard (the namespace's "
        "pod-security.kubernetes.io/enforce level); exit 1 naming each field that breaks it",
    )
    s.set_defaults(func=_cmd_validate)


def _add_manifests(sub: _Subparsers) -> None:
    """`ladder manifests`: the Jobs of a stage's cells, or the Kueue objects of the ladder."""
    s = sub.add_parser(
        "manifests",
        help="print the Jobs (and Services) the operator would create for a stage's cells (YAML, no cluster)",
    )
    s.add_argument("file")
    s.add_argument("--stage", help="the stage (default: the first)")
    s.add_argument(
        "--namespace", "-n", help="the namespace to show (default: the file's metadata.namespace, else none)"
    )
    _add_kueue_options(s)
    s.set_defaults(func=_cmd_manifests)


def _add_kueue_options(s: argparse.ArgumentParser) -> None:
    """`ladder manifests --kueue` and its quotas."""
    k = s.add_argument_group('Kueue (docs/deploy.md, "Quota-gated ladders")')
    k.add_argument(
        "--kueue",
        action="store_true",
        help="print instead a ResourceFlavor per host block, a ClusterQueue and the LocalQueue spec.queueName",
    )
    k.add_argument(
        "--gpu-quota",
        action="append",
        metavar="[HOSTBLOCK=]N",
        help="GPUs of quota per host block (repeatable; without HOSTBLOCK= for every block)",
    )
    k.add_argument(
        "--cpu-quota",
        action="append",
        metavar="[HOSTBLOCK=]Q",
        help="cpu quota, when cells request cpu (default: what the cells that fit the GPU quota request)",
    )
    k.add_argument("--memory-quota", action="append", metavar="[HOSTBLOCK=]Q", help="memory quota, likewise")
    k.add_argument("--cluster-queue", metavar="NAME", help="the ClusterQueue's name (default: spec.queueName)")
    k.add_argument(
        "--preemption",
        choices=["Never", "LowerPriority", "LowerOrNewerEqualPriority", "Any"],
        help="the ClusterQueue's withinClusterQueue preemption (default: Never, Kueue's default)",
    )


def _add_crd(sub: _Subparsers) -> None:
    """`ladder crd`: the CustomResourceDefinition."""
    s = sub.add_parser("crd", help="print the PromotionLadder CustomResourceDefinition (YAML)")
    s.set_defaults(func=_cmd_crd)


def _add_simulate(sub: _Subparsers) -> None:
    """`ladder simulate`: replay recorded results."""
    s = sub.add_parser("simulate", help="replay a ladder against recorded results, without training")
    s.add_argument("file")
    s.add_argument(
        "--results",
        required=True,
        help="JSONL, one cell per line: stage, candidate, hostBlock, seed, value[, trainSeconds]",
    )
    s.add_argument("--output", choices=["json", "table"], default="table")
    s.set_defaults(func=_cmd_simulate)


def _add_run(sub: _Subparsers) -> None:
    """`ladder run`: the whole ladder on this machine."""
    s = sub.add_parser("run", help="run the whole ladder on this machine, no Kubernetes (resumable)")
    s.add_argument("file")
    s.add_argument("--output", help="status file (default: <ladder name>.status.json); re-running resumes from it")
    s.add_argument("--parallel", type=int, default=None, help="cells at once (default: one per GPU, 1 without GPUs)")
    s.add_argument("--workdir", help="where cell results and logs go (default: <status file>.cells/)")
    s.add_argument("--fresh", action="store_true", help="ignore an existing status file and start over")
    s.set_defaults(func=_cmd_run)


def _add_report(sub: _Subparsers) -> None:
    """`ladder report`: the audit report of a status file or a cluster ladder."""
    s = sub.add_parser(
        "report",
        help="write an audit report (HTML or Markdown, plots embedded) of a status file or a ladder on the cluster",
    )
    s.add_argument(
        "source",
        metavar="SOURCE",
        help="status JSON from `ladder run` / `ladder simulate --output json` (- for stdin), "
        "or the name of a PromotionLadder on the cluster",
    )
    s.add_argument(
        "--ladder", metavar="FILE", help="the ladder file, to show the frozen spec when SOURCE is a bare status"
    )
    s.add_argument(
        "-o", "--output", metavar="FILE", help="report file (default: <ladder name>-report.html or .md; - for stdout)"
    )
    s.add_argument("--format", choices=["html", "markdown"], help="default: markdown for a .md output, else html")
    s.add_argument("-n", "--namespace", help="cluster source: namespace (default: the kubeconfig context's)")
    s.add_argument(
        "--kubeconfig", metavar="FILE", help="cluster source: kubeconfig file (default: KUBECONFIG or ~/.kube/config)"
    )
    s.add_argument("--context", help="cluster source: kubeconfig context")
    s.set_defaults(func=_cmd_report)


def _add_operator(sub: _Subparsers) -> None:
    """`ladder operator`: the Kubernetes operator."""
    s = sub.add_parser("operator", help="run the Kubernetes operator (Kopf) against the current kubeconfig")
    s.add_argument("--namespace", "-n", action="append", help="watch only these namespaces (default: all)")
    s.add_argument("--metrics-port", type=int, default=8080)
    s.add_argument("--health-port", type=int, default=8081)
    s.add_argument(
        "--stuck-grace",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="end a cell's Pod still running this long past its deadline (default 120)",
    )
    s.add_argument("--standalone", action="store_true", default=True, help=argparse.SUPPRESS)
    s.set_defaults(func=_cmd_operator)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ladder", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_validate(sub)
    _add_manifests(sub)
    _add_crd(sub)
    _add_simulate(sub)
    _add_run(sub)
    _add_report(sub)
    _add_operator(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LadderInvalid as exc:
        for e in exc.errors:
            print(f"{exc.args[0].splitlines()[0].removesuffix(' is invalid:')}: {e}", file=sys.stderr)
        return 1
    except RecordedResultsInvalid as exc:
        for e in exc.errors:
            print(e, file=sys.stderr)
        return 1
    except (FileError, ValueError) as exc:
        print(f"ladder: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ladder: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # last resort: one line, never a traceback unless asked
        if args.debug:
            raise
        print(
            f"ladder: unexpected error: {type(exc).__name__}: {exc} (re-run with --debug for details)", file=sys.stderr
        )
        return 70


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
