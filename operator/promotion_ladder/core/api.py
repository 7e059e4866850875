"""The PromotionLadder API (ladder.promotion.dev/v1alpha1): the single source of truth.

The pydantic models here define the spec; the CRD (crds/promotionladders.yaml) is generated
from them by `ladder crd`. Field-level rules live on the models; rules that span fields
(references, stage ordering, promotion bounds) live in `semantic_errors`, and `load_ladder`
reports both as one list of "field.path: message" lines.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .budget import BUDGET_PATTERN, parse_budget
from .model import SpecModel

GROUP = "ladder.promotion.dev"
VERSION = "v1alpha1"
# Final, spelled out: the model's apiVersion and kind fields are these literal types.
API_VERSION: Final = "ladder.promotion.dev/v1alpha1"
assert f"{GROUP}/{VERSION}" == API_VERSION
KIND: Final = "PromotionLadder"
PLURAL = "promotionladders"
SINGULAR = "promotionladder"
SHORT_NAMES = ["ladder", "pl"]

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS1123_RE = re.compile(DNS1123_LABEL)

# Size limits keep the object (and the API server's CEL cost estimates) bounded. core/crd.py
# writes the indices of stages, host blocks, keeps and checks as CEL list literals this long.
MAX_CANDIDATES = 1000
MAX_HOST_BLOCKS = 32
MAX_STAGES = 16
MAX_SEEDS = 32
MAX_KEEP = 16
MAX_CHECKS = 32
MAX_NODES = 64  # pods of one multi-node cell; the Job's pod hostnames are <job>-<index>, index < 64
# A candidate's config reaches the trainer as a file (--config-file); on Kubernetes that file is
# its cell Pod's annotation, and a Pod's annotations are limited to 256 KiB in all, and the whole
# ladder to etcd's ~1.5 MiB object. 32 KiB of compact JSON per config leaves room for both.
MAX_CONFIG_BYTES = 32 * 1024
# How long a cell may wait to start for anything but free capacity (controller/scheduling.py).
DEFAULT_SCHEDULING_TIMEOUT = "15m"
_ZERO_DURATION = re.compile(r"^(0+(\.0+)?(ms|s|m|h|d))+$")


def timeout_seconds(text: str) -> float | None:
    """Seconds of a timeout such as "15m"; None for a zero one ("0s": no timeout)."""
    return None if _ZERO_DURATION.match(text) else parse_budget(text)


Name = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS1123_LABEL)]


class Objective(SpecModel):
    metric: str = Field(
        "val_bpb", min_length=1, max_length=128, description="Metric the trainer reports (result 'metric')."
    )
    direction: Literal["minimize", "maximize"] = "minimize"


class Trainer(SpecModel):
    image: str = Field("ghcr.io/promotion-ladder/trainer:0.1.0", min_length=1, max_length=512)
    command: list[str] = Field(default_factory=lambda: ["python", "-m", "ladder_trainer"], min_length=1, max_length=64)
    args: list[str] = Field(default_factory=list, max_length=256)
    gpus: int = Field(
        1,
        ge=0,
        le=64,
        description="GPUs per cell pod (nvidia.com/gpu limit; the trainer starts one process per GPU); "
        "GPU-hours are counted with it.",
    )
    nodes: int = Field(
        1,
        ge=1,
        le=MAX_NODES,
        description="Pods per cell (multi-node training: an Indexed Job of this many pods with a headless Service for "
        "rendezvous, all in the cell's host block); GPU-hours count nodes x gpus. "
        "Frozen: it changes what a cell measures.",
    )
    env: dict[str, str] = Field(default_factory=dict, max_length=128)
    resources: dict[str, Any] = Field(
        default_factory=dict,
        description="Kubernetes ResourceRequirements for the trainer container (nvidia.com/gpu is set from gpus).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    template: dict[str, Any] = Field(
        default_factory=dict,
        description="A partial PodTemplateSpec (metadata.labels/annotations, spec: volumes, imagePullSecrets, "
        "affinity, "
        "tolerations, priorityClassName, securityContext, ...; a container named trainer with volumeMounts, "
        "env, envFrom, securityContext) merged into every cell's pod. Fields the operator owns (the trainer's "
        "image/command/args/resources, restartPolicy, serviceAccountName, activeDeadlineSeconds, the host "
        "block's nodeSelector keys, the scratch volume, the cell identity env) are refused. Not part of the "
        "frozen hash: it is infrastructure, not protocol.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    @property
    def cell_gpus(self) -> int:
        """GPUs one cell holds: its pods x GPUs per pod (what GPU-hours count)."""
        return self.nodes * self.gpus


class HostBlock(SpecModel):
    name: Name
    node_selector: dict[str, str] = Field(default_factory=dict, max_length=32)
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=32,
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    )


class Candidate(SpecModel):
    name: Name
    config: dict[str, Any] = Field(
        default_factory=dict,
        max_length=256,
        description="Free-form key/values passed to the trainer as a JSON file, --config-file "
        f"(at most {MAX_CONFIG_BYTES // 1024} KiB).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    @field_validator("config")
    @classmethod
    def _config_fits(cls, v: dict[str, Any]) -> dict[str, Any]:
        size = len(json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
        if size > MAX_CONFIG_BYTES:
            raise ValueError(
                f"is {size} bytes of JSON, over the {MAX_CONFIG_BYTES} bytes a candidate "
                "config may have; pass large data by reference (a path or URL in the config)"
            )
        return v


Aggregate = Literal["mean", "median", "worst", "meanRank"]


class Promote(SpecModel):
    top: int = Field(ge=1, le=MAX_CANDIDATES, description="Promote the best `top` complete candidates.")
    keep: list[Name] = Field(default_factory=list, max_length=MAX_KEEP, description="References always promoted.")
    aggregate: Aggregate = "mean"
    within: float | None = Field(
        None,
        ge=0,
        description="Also promote every complete candidate whose aggregate is within this margin of the best.",
    )


class Stage(SpecModel):
    name: Name
    budget: str = Field(
        min_length=1,
        max_length=32,
        pattern=r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$",
        description='Wall-clock training budget per cell, e.g. "90s", "2m", "12h".',
    )
    host_blocks: list[Name] = Field(min_length=1, max_length=MAX_HOST_BLOCKS)
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field(min_length=1, max_length=MAX_SEEDS)
    promote: Promote | None = None

    @field_validator("budget")
    @classmethod
    def _budget_parses(cls, v: str) -> str:
        parse_budget(v)
        return v

    @property
    def budget_seconds(self) -> float:
        return parse_budget(self.budget)

    def cells(self) -> list[tuple[str, int]]:
        """(hostBlock, seed) pairs in their canonical order: host blocks, then seeds."""
        return [(h, s) for h in self.host_blocks for s in self.seeds]


CheckType = Literal["nearEquivalence", "meanGap", "rankFirstAllCells"]


class Check(SpecModel):
    name: Name
    type: CheckType
    candidate: Name
    margin: float | None = Field(None, ge=0, description="nearEquivalence: |mean - reference mean| <= margin.")
    max_gap: float | None = Field(
        None, ge=0, description="meanGap: mean gap to the reference (worse direction) <= maxGap."
    )


class Verdict(SpecModel):
    reference: Name
    checks: list[Check] = Field(default_factory=list, max_length=MAX_CHECKS)


class Continuation(SpecModel):
    from_: Literal["previousStage"] = Field(
        alias="from",
        description="Each cell of a later stage starts from the stable-phase checkpoint of the same (candidate, host "
        "block, seed) in the previous stage and trains on to its own budget (docs/continuation.md).",
    )
    on_mismatch: Literal["fail", "fromScratch"] = Field(
        "fail",
        description="A predecessor checkpoint that is missing or belongs to something else (ladder, candidate, "
        "seed, host block, stage, corpus, content): fail the cell, or train it from scratch.",
    )
    keep: Literal["promoted", "all"] = Field(
        "promoted",
        description="promoted: when a stage decides, the checkpoints of the candidates it eliminated are "
        "deleted (the winner's are kept); all: nothing is deleted.",
    )
    path: str = Field(
        "/checkpoints",
        min_length=2,
        max_length=256,
        description="Where the cells see the checkpoint volume on a cluster: a volumeMount of the trainer container "
        "in spec.trainer.template (a ReadWriteMany claim). `ladder run` keeps checkpoints under its work dir.",
    )

    @field_validator("path")
    @classmethod
    def _plain_path(cls, v: str) -> str:
        if not v.startswith("/") or any(part in (".", "..") for part in v.split("/")):
            raise ValueError(
                f"{v!r}: give an absolute path (the volume's mountPath or below it), without '.' or '..' parts"
            )
        return v.rstrip("/") or v


class LadderSpec(SpecModel):
    # Defaults are materialised by the API server too ({} + field defaults), so the frozen
    # objective exists on every stored ladder and `self == oldSelf` always applies to it.
    objective: Objective = Field(default_factory=Objective, json_schema_extra={"default": {}})
    trainer: Trainer = Field(default_factory=Trainer, json_schema_extra={"default": {}})
    host_blocks: list[HostBlock] = Field(min_length=1, max_length=MAX_HOST_BLOCKS)
    candidates: list[Candidate] = Field(min_length=1, max_length=MAX_CANDIDATES)
    stages: list[Stage] = Field(min_length=1, max_length=MAX_STAGES)
    verdict: Verdict | None = None
    parallelism: int | None = Field(None, ge=1, description="Most cells of this ladder running at once.")
    queue_name: str | None = Field(
        None, min_length=1, max_length=253, description="Kueue LocalQueue (kueue.x-k8s.io/queue-name)."
    )
    continuation: Continuation | None = Field(
        None,
        description="Promoted candidates continue from their previous stage's stable-phase checkpoint instead "
        "of starting over. Frozen: part of the frozen hash.",
    )
    # Not frozen: like parallelism it says how long to wait for the cluster, not what a cell
    # measures; raising it while a ladder waits is the fix for a slow PersistentVolume, say.
    scheduling_timeout: str | None = Field(
        None,
        max_length=32,
        pattern=BUDGET_PATTERN,
        description="How long a cell may wait to start (its Job cannot create its Pod, its Pod cannot be scheduled, "
        "its "
        f"container cannot start) for anything but free capacity before it fails; default "
        f'{DEFAULT_SCHEDULING_TIMEOUT}, "0s" never. A cell that only waits for free capacity waits as '
        "long as that takes. Editable; not part of the frozen hash.",
    )

    @field_validator("scheduling_timeout")
    @classmethod
    def _timeout_parses(cls, v: str | None) -> str | None:
        if v is not None:
            timeout_seconds(v)
        return v

    @property
    def scheduling_timeout_seconds(self) -> float | None:
        """None: cells never fail for waiting."""
        return timeout_seconds(self.scheduling_timeout or DEFAULT_SCHEDULING_TIMEOUT)

    def candidate_names(self) -> list[str]:
        return [c.name for c in self.candidates]

    def candidate(self, name: str) -> Candidate:
        return next(c for c in self.candidates if c.name == name)

    def host_block(self, name: str) -> HostBlock:
        return next(h for h in self.host_blocks if h.name == name)

    def frozen_hash(self) -> str:
        return frozen_hash(self)


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    name: Name
    namespace: str | None = None


class PromotionLadder(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)
    api_version: Literal["ladder.promotion.dev/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["PromotionLadder"] = KIND
    metadata: Metadata
    spec: LadderSpec

    @property
    def name(self) -> str:
        return self.metadata.name


FROZEN_FIELDS = ("objective", "candidates", "stages", "verdict")
# trainer.gpus is frozen too: it is what a cell measures with and what GPU-hours are charged
# at, so an edit would make one ladder's cells incomparable (and rewrite its accounting).
FROZEN_TRAINER_FIELDS = ("gpus",)
# Trainer fields frozen too but hashed only when not at their default, so every ladder admitted
# before the field existed keeps its recorded hash: nodes changes what a cell measures, like gpus.
FROZEN_TRAINER_DEFAULTS = {"nodes": 1}
# Frozen fields hashed only when set, for the same reason: ladders without them keep their hash.
FROZEN_OPTIONAL_FIELDS = ("continuation",)


def _canonical(value: Any) -> Any:
    """Integral floats as ints: the API server stores 1.0 as 1, and the hash must not care."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def frozen_hash(spec: LadderSpec, *, with_trainer: bool = True) -> str:
    """sha256 over the canonical JSON of the frozen fields (defaults filled in, keys sorted,
    integral floats as ints), so a file and the object the API server stored hash the same.
    List order counts (candidate order breaks ranking ties; seeds and host blocks order cells)."""
    wire = _canonical(spec.wire())
    frozen = {k: wire.get(k) for k in FROZEN_FIELDS}
    if with_trainer:
        frozen["trainer"] = {k: wire["trainer"].get(k) for k in FROZEN_TRAINER_FIELDS}
        frozen["trainer"].update(
            {
                k: wire["trainer"].get(k)
                for k, default in FROZEN_TRAINER_DEFAULTS.items()
                if wire["trainer"].get(k, default) != default
            }
        )
    frozen.update({k: wire[k] for k in FROZEN_OPTIONAL_FIELDS if wire.get(k) is not None})
    canonical = json.dumps(frozen, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def frozen_hash_matches(recorded: str | None, spec: LadderSpec) -> bool:
    """Does a recorded frozen hash belong to this spec? Hashes recorded before trainer.gpus was
    frozen (without it) still match, so records written by an older version stay readable."""
    return recorded is None or recorded in (frozen_hash(spec), frozen_hash(spec, with_trainer=False))


class LadderInvalid(ValueError):
    """A ladder that does not validate; `errors` holds one "path: message" line per problem."""

    def __init__(self, errors: list[str], source: str = "ladder"):
        self.errors = errors
        super().__init__(f"{source} is invalid:\n" + "\n".join(f"  {e}" for e in errors))


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def pydantic_errors(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> list[str]:
    lines = []
    for e in exc.errors():
        loc = prefix + tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        elif e["type"] == "string_pattern_mismatch" and "a-z0-9" in str(e.get("ctx", {}).get("pattern", "")):
            msg = (
                f"{e.get('input')!r} is not a DNS-1123 label "
                "(lower-case letters, digits and '-', starting and ending with a letter or digit)"
            )
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        lines.append(f"{_path(loc)}: {msg}")
    return lines


def semantic_errors(spec: LadderSpec) -> list[str]:
    """Rules that span fields. Paths are relative to the document (spec....)."""
    errs: list[str] = []

    def dupes(items: list[str], path: str) -> None:
        seen: set[str] = set()
        for i, n in enumerate(items):
            if n in seen:
                errs.append(f"{path}[{i}].name: duplicate name {n!r}; names must be unique")
            seen.add(n)

    dupes([h.name for h in spec.host_blocks], "spec.hostBlocks")
    # Imported here: podtemplate takes the contract's names, and the contract imports this module.
    from .podtemplate import owned_field_errors

    errs += owned_field_errors(
        spec.trainer.template,
        [(f"spec.hostBlocks[{i}].nodeSelector", k) for i, h in enumerate(spec.host_blocks) for k in h.node_selector],
    )
    dupes([c.name for c in spec.candidates], "spec.candidates")
    dupes([s.name for s in spec.stages], "spec.stages")
    blocks = {h.name for h in spec.host_blocks}
    cands = {c.name for c in spec.candidates}

    max_entering = len(spec.candidates)
    last = len(spec.stages) - 1
    for i, st in enumerate(spec.stages):
        p = f"spec.stages[{i}]"
        for j, h in enumerate(st.host_blocks):
            if h not in blocks:
                errs.append(f"{p}.hostBlocks[{j}]: unknown host block {h!r}; declare it under spec.hostBlocks")
        if len(set(st.host_blocks)) != len(st.host_blocks):
            errs.append(f"{p}.hostBlocks: a host block is listed twice")
        if len(set(st.seeds)) != len(st.seeds):
            errs.append(f"{p}.seeds: a seed is listed twice")
        if i == last:
            if st.promote is not None:
                errs.append(
                    f"{p}.promote: the last stage cannot promote; remove it (the verdict decides after the last stage)"
                )
            continue
        if st.promote is None:
            errs.append(f"{p}.promote: required on every stage but the last")
            continue
        pr = st.promote
        if pr.top > max_entering:
            errs.append(
                f"{p}.promote.top: {pr.top} is larger than the {max_entering} candidates "
                f"that can enter stage {st.name!r}"
            )
        for j, k in enumerate(pr.keep):
            if k not in cands:
                errs.append(f"{p}.promote.keep[{j}]: unknown candidate {k!r}")
        if pr.within is None:
            max_entering = min(max_entering, pr.top + len(pr.keep))
    # Budgets grow: a later stage with a smaller budget is almost surely a typo.
    for i in range(1, len(spec.stages)):
        if spec.stages[i].budget_seconds < spec.stages[i - 1].budget_seconds:
            errs.append(
                f"spec.stages[{i}].budget: {spec.stages[i].budget!r} is shorter than the previous stage's "
                f"{spec.stages[i - 1].budget!r}; budgets must not decrease"
            )
    errs += continuation_errors(spec)
    if spec.verdict is not None:
        if spec.verdict.reference not in cands:
            errs.append(f"spec.verdict.reference: unknown candidate {spec.verdict.reference!r}")
        dupes([c.name for c in spec.verdict.checks], "spec.verdict.checks")
        for j, c in enumerate(spec.verdict.checks):
            p = f"spec.verdict.checks[{j}]"
            if c.candidate not in cands:
                errs.append(f"{p}.candidate: unknown candidate {c.candidate!r}")
            if c.type == "nearEquivalence" and c.margin is None:
                errs.append(f"{p}.margin: required for type nearEquivalence")
            if c.type == "meanGap" and c.max_gap is None:
                errs.append(f"{p}.maxGap: required for type meanGap")
    return errs


def continuation_errors(spec: LadderSpec) -> list[str]:
    """spec.continuation needs a previous stage to continue from."""
    if spec.continuation is not None and len(spec.stages) < 2:
        return ["spec.continuation: a ladder of one stage has nothing to continue; remove it"]
    return []


def load_ladder(data: Any, source: str = "ladder") -> PromotionLadder:
    """Validate a PromotionLadder document (a dict from YAML/JSON); raise LadderInvalid listing every problem."""
    if not isinstance(data, dict):
        raise LadderInvalid(["<root>: expected a PromotionLadder object (apiVersion, kind, metadata, spec)"], source)
    errs: list[str] = []
    if data.get("apiVersion") != API_VERSION:
        errs.append(f"apiVersion: must be {API_VERSION!r}, got {data.get('apiVersion')!r}")
    if data.get("kind") != KIND:
        errs.append(f"kind: must be {KIND!r}, got {data.get('kind')!r}")
    try:
        ladder = PromotionLadder.model_validate(data)
    except ValidationError as exc:
        errs += [e for e in pydantic_errors(exc) if not e.startswith(("apiVersion", "kind"))]
        raise LadderInvalid(errs, source) from None
    errs += semantic_errors(ladder.spec)
    if errs:
        raise LadderInvalid(errs, source)
    return ladder
