"""The PromotionLadder CustomResourceDefinition, generated from the pydantic models.

Pydantic's JSON schema is turned into a structural OpenAPI v3 schema (refs inlined, no
titles, optionals as plain types); rules that span fields become CEL validations, and the
frozen fields get the transition rule `self == oldSelf`.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from .api import (
    GROUP,
    KIND,
    MAX_CHECKS,
    MAX_HOST_BLOCKS,
    MAX_KEEP,
    MAX_STAGES,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    LadderSpec,
)
from .status import LadderStatus

_DROP = {"title", "examples"}


def _structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        ref = schema["$ref"].split("/")[-1]
        merged = {**copy.deepcopy(defs[ref]), **{k: v for k, v in schema.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in schema:  # Optional[X] -> X (an omitted field is the "null")
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        if len(options) == 1:
            return _structural({**options[0], **rest}, defs)
        # a union of scalars (e.g. float | None inside a list) -> number, nullable
        types = {o.get("type") for o in options}
        if types <= {"number", "integer"}:
            return {"type": "number", "nullable": True}
        raise ValueError(f"cannot express union {schema['anyOf']} structurally")
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k in _DROP or (k == "default" and v is None):
            continue
        if k == "properties":
            out[k] = {name: _structural(s, defs) for name, s in v.items()}
        elif k in ("items", "additionalProperties") and isinstance(v, dict):
            out[k] = _structural(v, defs) if v else {"x-kubernetes-preserve-unknown-fields": True}
            if any(o.get("type") == "null" for o in v.get("anyOf", [])):
                out[k]["nullable"] = True  # e.g. a decision's values: null marks a failed cell
        elif k == "const":
            out["enum"] = [v]
        else:
            out[k] = v
    if "properties" in out and out.get("additionalProperties") is False:
        # extra="forbid" in pydantic; the API server forbids it next to properties (a structural
        # schema prunes unknown fields anyway).
        del out["additionalProperties"]
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("additionalProperties", None)
        out.setdefault("type", "object")
    if out.get("type") == "null":
        out = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    if "nullable" in schema:
        out["nullable"] = True
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural({k: v for k, v in raw.items() if k != "$defs"}, raw.get("$defs", {}))


def _list_map(prop: dict[str, Any]) -> None:
    """Names are unique in these lists: let the API server enforce it (listType map)."""
    prop["x-kubernetes-list-type"] = "map"
    prop["x-kubernetes-list-map-keys"] = ["name"]


# Order-sensitive frozen checks (transition rules), one per frozen list-bearing field.
_ORDER_RULES = {
    "candidates": "self.map(c, c.name) == oldSelf.map(c, c.name)",
    "stages": (
        "self.map(s, s.name) == oldSelf.map(s, s.name)"
        " && self.map(s, s.hostBlocks.map(h, h)) == oldSelf.map(s, s.hostBlocks.map(h, h))"
        " && self.map(s, s.seeds.map(x, x)) == oldSelf.map(s, s.seeds.map(x, x))"
    ),
    "verdict": (
        "!has(self.checks) || !has(oldSelf.checks) || self.checks.map(k, k.name) == oldSelf.checks.map(k, k.name)"
    ),
}
_ORDER_WHAT = {
    "candidates": "the order of candidates breaks ranking ties",
    "stages": "the order of stages, and of each stage's hostBlocks and seeds, is the cells' order",
    "verdict": "the order of the checks is the verdict's order",
}


def spec_schema() -> dict[str, Any]:
    s = openapi_schema(LadderSpec)
    props = s["properties"]
    for name in ("hostBlocks", "candidates", "stages"):
        _list_map(props[name])
    _list_map(props["verdict"]["properties"]["checks"])
    for name in ("objective", "candidates", "stages", "verdict", "continuation"):
        props[name].setdefault("x-kubernetes-validations", []).append(
            {
                "rule": "self == oldSelf",
                "message": f"spec.{name} is frozen once the ladder is admitted; create a new ladder instead",
            }
        )
    # `self == oldSelf` compares listType=map and listType=set lists as sets, so it lets a
    # reordering through; the frozen hash (and the ranking's tie-break, and every decision's
    # cell order) depend on order. These rules compare the orders: `map()` yields a plain CEL
    # list, whose equality is positional.
    for name, rule in _ORDER_RULES.items():
        target = props["verdict"] if name == "verdict" else props[name]
        target["x-kubernetes-validations"].append(
            {
                "rule": rule,
                "message": f"spec.{name} is frozen once the ladder is admitted, order included "
                f"({_ORDER_WHAT[name]}); create a new ladder instead",
            }
        )
    props["trainer"].setdefault("x-kubernetes-validations", []).append(
        # gpus always holds its default (1) on a stored ladder; the CRD's own default ({}) is
        # checked against the rule too, hence the has().
        {
            "rule": "(has(self.gpus) ? self.gpus : 1) == (has(oldSelf.gpus) ? oldSelf.gpus : 1)",
            "message": "spec.trainer.gpus is frozen once the ladder is admitted (cells would measure with different "
            "GPUs and the recorded GPU-hours would not compare); create a new ladder instead",
        }
    )
    s["x-kubernetes-validations"] = [
        {
            "rule": "has(self.verdict) == has(oldSelf.verdict)",
            "message": "spec.verdict is frozen once the ladder is admitted; create a new ladder instead",
        },
        # Stage 1's cells save the stable checkpoints stage 2 continues from: continuation cannot
        # be switched on (or off) once cells may have run, let alone after a stage decided.
        {
            "rule": "has(self.continuation) == has(oldSelf.continuation)",
            "message": "spec.continuation is frozen once the ladder is admitted (the first stage's cells save the "
            "checkpoints later stages continue from); create a new ladder instead",
        },
        *cross_field_rules(),
    ]
    checks_items = props["verdict"]["properties"]["checks"]["items"]
    checks_items["x-kubernetes-validations"] = [
        {"rule": "self.type != 'nearEquivalence' || has(self.margin)", "message": "nearEquivalence needs margin"},
        {"rule": "self.type != 'meanGap' || has(self.maxGap)", "message": "meanGap needs maxGap"},
    ]
    props["continuation"]["properties"]["path"]["x-kubernetes-validations"] = [
        {
            "rule": "self.startsWith('/')",
            "message": "spec.continuation.path: give an absolute path (the volume's mountPath or below it)",
        }
    ]
    trainer = props["trainer"]["properties"]
    trainer["nodes"]["x-kubernetes-validations"] = [
        {
            "rule": "self == oldSelf",
            "message": "spec.trainer.nodes is frozen once the ladder is admitted (it changes what "
            "a cell measures); create a new ladder instead",
        }
    ]
    trainer["template"].update(template_schema())
    trainer["template"]["x-kubernetes-validations"] = template_rules()
    stage_items = props["stages"]["items"]["properties"]
    stage_items["seeds"]["x-kubernetes-list-type"] = "set"
    stage_items["hostBlocks"]["x-kubernetes-list-type"] = "set"
    return s


def _indices(n: int) -> str:
    """A CEL list literal [0, ..., n-1], the source of an index in a message: new CRD rules get
    no lists.range() even on Kubernetes 1.34, and two-variable comprehensions need 1.33 where
    the chart supports 1.28."""
    return "[" + ", ".join(str(i) for i in range(n)) + "]"


def _digits(n: int, index: str) -> str:
    """`index` (below n) as a string, from a literal list: the cost estimator knows no bound on
    string(int), and one unbounded string in a message makes its estimated cost unbounded."""
    return "[" + ", ".join(f'"{i}"' for i in range(n)) + f"][{index}]"


def _first(indices: str, size: str, bad: str, message: str) -> str:
    """The message for the first index i in `indices` below `size` where `bad` holds."""
    return f"{indices}.filter(i, i < {size} && {bad}).map(i, {message})[0]"


def cross_field_rules() -> list[dict[str, str]]:
    """Rules that span fields (the part of core.api.semantic_errors the API server can check),
    each with a messageExpression naming the first offending index and value in the words of
    `ladder validate`; `message` is the fallback should the expression fail.

    Cost: a lookup written as `exists` (stages x keep x candidates string compares) was
    estimated at 8.4M of the 10M per-rule limit, and on a schema-valid ladder (1,000 candidates
    of 63-character names, every list full) it ran past the 1M per-call limit, refusing the
    ladder. So each rule builds the list of names once, `[list].all(names, ...)` binding it
    (the CRD's CEL has no cel.bind), and tests membership with `in`. A messageExpression runs
    only on failure, but its estimated cost counts towards the CRD's limits as well."""
    # CEL strings in double quotes, so the values can be quoted 'like this', as `ladder validate` does.
    return [*_promote_rules(), *_name_rules(), *_candidate_rules()]


_CANDIDATE_NAMES = "[self.candidates.map(c, c.name)]"


def _promote_rules() -> list[dict[str, str]]:
    """Every stage but the last promotes; the last does not."""
    stages, last = _indices(MAX_STAGES), _digits(MAX_STAGES, "size(self.stages) - 1")
    stage = _digits(MAX_STAGES, "i")
    return [
        {
            "rule": "!has(self.stages[size(self.stages) - 1].promote)",
            "message": "the last stage cannot promote; remove spec.stages[last].promote",
            "messageExpression": f'"spec.stages[" + {last} + "].promote: the last stage cannot promote; remove it '
            '(the verdict decides after the last stage)"',
            "fieldPath": ".stages",
        },
        {
            "rule": f"{stages}.all(i, i >= size(self.stages) - 1 || has(self.stages[i].promote))",
            "message": "every stage but the last needs promote",
            "messageExpression": _first(
                stages,
                "size(self.stages) - 1",
                "!has(self.stages[i].promote)",
                f'"spec.stages[" + {stage} + "].promote: required on every stage but the last"',
            ),
            "fieldPath": ".stages",
        },
    ]


def _name_rules() -> list[dict[str, str]]:
    """The host blocks and kept candidates a stage names are declared."""
    stages, blocks, keeps = _indices(MAX_STAGES), _indices(MAX_HOST_BLOCKS), _indices(MAX_KEEP)
    stage, block, keep_at = _digits(MAX_STAGES, "i"), _digits(MAX_HOST_BLOCKS, "j"), _digits(MAX_KEEP, "j")
    candidates, declared = _CANDIDATE_NAMES, "[self.hostBlocks.map(b, b.name)]"
    hosts, keep = "self.stages[i].hostBlocks", "self.stages[i].promote.keep"
    return [
        {
            "rule": f"{declared}.all(names, self.stages.all(s, s.hostBlocks.all(h, h in names)))",
            "message": "a stage names a host block that is not declared under spec.hostBlocks",
            "messageExpression": f"{declared}.map(names, "
            + _first(
                stages,
                "size(self.stages)",
                f"{hosts}.exists(h, !(h in names))",
                f"{blocks}.filter(j, j < size({hosts}) && !({hosts}[j] in names)).map(j, "
                f'"spec.stages[" + {stage} + "].hostBlocks[" + {block} + "]: unknown host block \'" + {hosts}[j] + '
                '"\'; declare it under spec.hostBlocks")[0]',
            )
            + ")[0]",
            "fieldPath": ".stages",
        },
        {
            "rule": f"{candidates}.all(names, self.stages.all(s, !has(s.promote) || !has(s.promote.keep) "
            "|| s.promote.keep.all(k, k in names)))",
            "message": "promote.keep names an unknown candidate",
            "messageExpression": f"{candidates}.map(names, "
            + _first(
                stages,
                "size(self.stages)",
                f"has(self.stages[i].promote) && has({keep}) && {keep}.exists(k, !(k in names))",
                f"{keeps}.filter(j, j < size({keep}) && !({keep}[j] in names)).map(j, "
                f'"spec.stages[" + {stage} + "].promote.keep[" + {keep_at} + "]: unknown candidate \'" + {keep}[j] + '
                '"\'")[0]',
            )
            + ")[0]",
            "fieldPath": ".stages",
        },
    ]


def _candidate_rules() -> list[dict[str, str]]:
    """Against the candidates: the first stage's promote.top, the verdict's reference and checks."""
    checks, check = _indices(MAX_CHECKS), _digits(MAX_CHECKS, "i")
    candidates, checked = _CANDIDATE_NAMES, "self.verdict.checks[i].candidate"
    return [
        {
            "rule": "!has(self.stages[0].promote) || self.stages[0].promote.top <= size(self.candidates)",
            "message": "the first stage's promote.top is larger than the number of candidates",
            # Without the two numbers: string(int) has no bound the cost estimator knows.
            "messageExpression": '"spec.stages[0].promote.top: larger than the number of candidates that can enter '
            'stage \'" + self.stages[0].name + "\'"',
            "fieldPath": ".stages",
        },
        {
            "rule": "!has(self.verdict) || self.verdict.reference in self.candidates.map(c, c.name)",
            "message": "verdict.reference is not a candidate",
            "messageExpression": '"spec.verdict.reference: unknown candidate \'" + self.verdict.reference + "\'"',
            "fieldPath": ".verdict.reference",
        },
        {
            "rule": f"!has(self.verdict) || !has(self.verdict.checks) || {candidates}.all(names, "
            "self.verdict.checks.all(k, k.candidate in names))",
            "message": "a verdict check names an unknown candidate",
            "messageExpression": f"{candidates}.map(names, "
            + _first(
                checks,
                "size(self.verdict.checks)",
                f"!({checked} in names)",
                f'"spec.verdict.checks[" + {check} + "].candidate: unknown candidate \'" + {checked} + "\'"',
            )
            + ")[0]",
            "fieldPath": ".verdict.checks",
        },
    ]


def template_schema() -> dict[str, Any]:
    """Free-form, but with the fields the CEL rules read declared (CEL cannot reach fields a
    structural schema does not declare); containers bounded so the rules' cost is too."""
    free = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    container = {
        **free,
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "image": {"type": "string"},
            "command": {"type": "array", "items": {"type": "string"}},
            "args": {"type": "array", "items": {"type": "string"}},
            "resources": dict(free),
        },
    }
    spec = {
        **free,
        "properties": {
            "restartPolicy": {"type": "string"},
            "activeDeadlineSeconds": {"type": "integer"},
            "serviceAccountName": {"type": "string"},
            "nodeName": {"type": "string"},
            "containers": {"type": "array", "maxItems": 8, "items": container},
        },
    }
    return {"properties": {"metadata": dict(free), "spec": spec}}


def template_rules() -> list[dict[str, str]]:
    """The cheap part of core.podtemplate.owned_field_errors as CEL, so `kubectl apply` refuses
    the commonest mistakes at once; the operator checks the rest (condition InvalidSpec)."""
    rules = [
        {
            "rule": f"!has(self.spec) || !has(self.spec.{f})",
            "message": f"spec.trainer.template.spec.{f}: owned by the operator",
        }
        for f in ("restartPolicy", "activeDeadlineSeconds", "serviceAccountName", "nodeName")
    ]
    for f, where in (
        ("image", "spec.trainer.image"),
        ("command", "spec.trainer.command"),
        ("args", "spec.trainer.args"),
        ("resources", "spec.trainer.resources"),
    ):
        rules.append(
            {
                "rule": f"!has(self.spec) || !has(self.spec.containers) || self.spec.containers.all(c, !has(c.{f}))",
                "message": f"spec.trainer.template.spec.containers[trainer].{f}: owned by the operator (set {where})",
            }
        )
    return rules


def crd() -> dict[str, Any]:
    status = openapi_schema(LadderStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["all"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Stage", "type": "string", "jsonPath": ".status.currentStage"},
                        {"name": "Leader", "type": "string", "jsonPath": ".status.leader"},
                        {"name": "GPU-Hours", "type": "number", "jsonPath": ".status.gpuHours.total"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A staged-promotion screen of training configurations.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }
