"""Stable-phase checkpoints: what a continuing cell saves, and resumes from (spec.continuation).

A continuing cell trains at the flat learning rate until its stable phase ends ((1 -
warmdown_frac) of its budget), saves a stable checkpoint there, then decays on its own branch
and is evaluated. The next stage's cell of the same candidate, host block and seed resumes
from that checkpoint with everything the loop needs to go on as if it had never stopped: the
model and optimizer state, the sampler's position (its random stream), the RNG states, the
loop's counters and the elapsed stable time, from which its clock starts.

The layout, the manifest and the rules that refuse a checkpoint are the core's
(promotion_ladder.core.continuation); this module is the torch side. `stable.pt` is written
under a temporary name and renamed, then its manifest `stable.json` (with the file's sha256) is
written the same way, last: a folder without a manifest holds no checkpoint. A checkpoint is
read with `torch.load(weights_only=True)`, so a file on a shared volume can hold tensors and
plain data but never code.

Not supported with it: growth (grow_from_depth: the optimizer's parameter groups change
mid-run) and FSDP2 (sharded optimizer state needs torch.distributed.checkpoint); both are a
bad config. DDP is: every rank holds the same state, rank 0 writes it and every rank reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from promotion_ladder.core.continuation import (
    MANIFEST_FILE,
    STABLE_FILE,
    Expected,
    Manifest,
    config_hash,
    mismatches,
    missing,
    refusal,
)
from promotion_ladder.core.contract import ENV_FROZEN_HASH, ENV_PREVIOUS_STAGE

from .config import ConfigError

if TYPE_CHECKING:  # train.py imports this module
    from .train import LoopState, Setup

ON_MISMATCH = ("fail", "fromScratch")


class CheckpointRefused(Exception):
    """The predecessor's checkpoint is missing or not this cell's, and the ladder says fail."""


@dataclass(frozen=True)
class Continuation:
    """A continuing cell's checkpoints (the cell contract's flags) and what they must carry."""

    write: Path | None  # --stable-checkpoint: where this cell saves its stable checkpoint
    read: Path | None  # --resume-from: its predecessor's
    on_mismatch: str  # fail | fromScratch
    config_hash: str
    frozen_hash: str | None
    previous_stage: str | None
    identity: Mapping[str, Any]  # the result's identity fields (ladder, stage, candidate, hostBlock)

    @classmethod
    def of(
        cls,
        write: str | None,
        read: str | None,
        on_mismatch: str,
        config: Mapping[str, Any],
        identity: Mapping[str, Any],
        env: Mapping[str, str],
    ) -> Continuation | None:
        if not write and not read:
            return None
        return cls(
            Path(write) if write else None,
            Path(read) if read else None,
            on_mismatch,
            config_hash(config),
            env.get(ENV_FROZEN_HASH) or None,
            env.get(ENV_PREVIOUS_STAGE) or None,
            dict(identity),
        )


@dataclass(frozen=True)
class Resumed:
    """Where the predecessor's stable phase ended: the loop's counters, and its clock."""

    seconds: float
    steps: int
    micro_batches: int
    flops: float
    first_loss: float | None
    last_loss: float


def check_supported(c: Continuation | None, t: Setup) -> None:
    """The shapes a stable checkpoint cannot carry (this module's docstring says why)."""
    if c is None:
        return
    if t.cfg.grow_from_depth:
        raise ConfigError("grow_from_depth: growth is not supported in a ladder that continues (spec.continuation)")
    if t.net.fsdp:
        raise ConfigError("parallel: fsdp is not supported in a ladder that continues (spec.continuation); use ddp")
    if t.settings.init_from and c.read:
        raise ConfigError("--init-from: not with --resume-from (a continuing cell starts from its predecessor)")


def stable_end(t: Setup) -> float:
    """Training seconds at which the flat phase ends and the decay begins."""
    return (1.0 - t.cfg.warmdown_frac) * t.budget


# -- saving --------------------------------------------------------------------------------------
def save(t: Setup, s: LoopState, seconds: float, data: dict[str, Any]) -> None:
    """Rank 0 writes the checkpoint of the loop as it stands at a step boundary: `seconds` on
    the clock, `data` the sampler's position there. Every rank waits for it, off the clock."""
    c = t.continuation
    assert c is not None and c.write is not None
    t0 = time.perf_counter()
    if t.world.main:
        state = {
            "model": t.model.state_dict(),
            "optimizers": [opt.state_dict() for opt in t.optimizers],
            "data": data,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(t.device) if t.device.type == "cuda" else None,
                "numpy": _numpy_rng(),
            },
            "loop": {
                "seconds": seconds,
                "steps": s.steps,
                "micro_batches": s.micro_batches,
                "flops": s.flops,
                "first_loss": s.first_loss,
                "last_loss": s.last_loss,
            },
        }
        _write(c.write, state, c, t.seed, t.corpus, seconds, s.steps)
    t.world.max(0.0)  # every rank waits for rank 0's write
    s.paused += time.perf_counter() - t0
    t.say(
        f"stable checkpoint saved to {c.write} at {seconds:.2f}s, step {s.steps} "
        f"({time.perf_counter() - t0:.2f}s off the clock)"
    )


def _write(
    folder: Path, state: dict[str, Any], c: Continuation, seed: int, corpus: str, seconds: float, steps: int
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST_FILE).unlink(missing_ok=True)  # no manifest while the file changes
    tmp = folder / (STABLE_FILE + ".tmp")
    torch.save(state, tmp)
    digest = file_sha256(tmp)
    os.replace(tmp, folder / STABLE_FILE)
    manifest = Manifest(
        frozen_hash=c.frozen_hash,
        ladder=c.identity.get("ladder"),
        stage=c.identity.get("stage"),
        candidate=c.identity.get("candidate"),
        host_block=c.identity.get("hostBlock"),
        seed=seed,
        config_hash=c.config_hash,
        corpus=corpus,
        sha256=digest,
        stable_seconds=round(seconds, 6),
        steps=steps,
    )
    tmp_manifest = folder / (MANIFEST_FILE + ".tmp")
    tmp_manifest.write_text(json.dumps(manifest.wire(), indent=2) + "\n")
    os.replace(tmp_manifest, folder / MANIFEST_FILE)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _numpy_rng() -> dict[str, Any]:
    state = np.random.get_state()
    assert isinstance(state, tuple)  # legacy=True, the default, gives the tuple form
    kind, keys, pos, has_gauss, gauss = state
    return {"kind": kind, "keys": keys.tolist(), "pos": pos, "has_gauss": has_gauss, "gauss": gauss}


# -- resuming ------------------------------------------------------------------------------------
def resume(t: Setup) -> tuple[Resumed | None, str | None]:
    """Restore the predecessor's stable checkpoint into the set-up cell: (where it resumes, None),
    or (None, why) when it trains from scratch instead (onMismatch fromScratch). Raises
    CheckpointRefused under onMismatch fail. A cell without a predecessor trains from scratch."""
    c = t.continuation
    if c is None or c.read is None:
        return None, None
    reason, manifest = _check(c, t)
    if reason is not None:
        if c.on_mismatch != "fromScratch":
            raise CheckpointRefused(reason)
        t.say(f"{reason}; training from scratch (onMismatch: fromScratch)")
        return None, reason
    state = torch.load(c.read / STABLE_FILE, map_location=t.device, weights_only=True)
    t.model.load_state_dict(state["model"])
    for opt, saved in zip(t.optimizers, state["optimizers"], strict=True):
        opt.load_state_dict(saved)
    t.batches.restore(state["data"])
    _restore_rng(state["rng"], t.device)
    loop = state["loop"]
    r = Resumed(
        float(loop["seconds"]),
        int(loop["steps"]),
        int(loop["micro_batches"]),
        float(loop["flops"]),
        loop["first_loss"],
        float(loop["last_loss"]),
    )
    t.say(f"resumed from {c.read} (stage {manifest.stage or '-'}): step {r.steps}, {r.seconds:.2f}s of stable phase")
    return r, None


def _check(c: Continuation, t: Setup) -> tuple[str | None, Manifest]:
    """Why the checkpoint at c.read may not be used (None: it may), and its manifest."""
    assert c.read is not None
    folder = c.read
    try:
        text = (folder / MANIFEST_FILE).read_text()
    except FileNotFoundError:
        return missing(str(folder), f"no {MANIFEST_FILE}"), _NONE
    except OSError as exc:
        return missing(str(folder), f"{MANIFEST_FILE} unreadable: {exc}"), _NONE
    try:
        manifest = Manifest.model_validate(json.loads(text))
    except ValueError as exc:
        return refusal(
            str(folder), [f"{MANIFEST_FILE} is not a checkpoint manifest: {str(exc).splitlines()[0]}"]
        ), _NONE
    if not (folder / STABLE_FILE).is_file():
        return missing(str(folder), f"no {STABLE_FILE} beside its manifest"), manifest
    expected = Expected(
        frozen_hash=c.frozen_hash,
        stage=c.previous_stage,
        candidate=c.identity.get("candidate"),
        host_block=c.identity.get("hostBlock"),
        seed=t.seed,
        config_hash=c.config_hash,
        corpus=t.corpus,
    )
    problems = mismatches(manifest, expected, file_sha256(folder / STABLE_FILE))
    return (refusal(str(folder), problems) if problems else None), manifest


_NONE = Manifest(seed=0, config_hash="", sha256="", stable_seconds=0, steps=0)  # stands in when there is none


def _restore_rng(rng: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(rng["torch"].cpu())  # loaded onto the cell's device with the rest
    if rng.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"].cpu(), device)
    n = rng["numpy"]
    np.random.set_state((n["kind"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
