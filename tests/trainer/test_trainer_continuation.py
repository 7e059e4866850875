"""Stage checkpoints on CPU (trainer/ladder_trainer/stable.py): a resumed run is the uninterrupted
run, step for step; the stable checkpoint sits where the flat phase ends; every mismatch is
refused (or trained from scratch when the ladder says so) and recorded; the prune tool deletes
only what it is told.

Bit-exact resume needs a deterministic stop: a wall-clock budget stops at a different step on
every run, so those tests put the stable checkpoint at a step count (--stable-steps, a test
aid) and stop at --max-steps, with a budget long enough that the learning rate stays flat."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.torch
pytest.importorskip("torch")

from ladder_trainer.config import ConfigError, Settings, parse_config  # noqa: E402
from ladder_trainer.stable import CheckpointRefused, Continuation  # noqa: E402
from ladder_trainer.train import run  # noqa: E402
from promotion_ladder.core.continuation import MANIFEST_FILE, STABLE_FILE  # noqa: E402
from promotion_ladder.core.contract import ENV_FROZEN_HASH, ENV_PREVIOUS_STAGE, EXIT_CHECKPOINT  # noqa: E402
from promotion_ladder.core.result import parse_result  # noqa: E402

from ..corpus import write_tiny_corpus  # noqa: E402
from .conftest import TINY, run_cli  # noqa: E402

# Two micro-batches a step, so a step boundary is not a micro-batch boundary.
CONFIG = {**TINY, "batch": 128, "device_batch": 2}
LONG = 3600  # seconds: the whole test run stays in the flat phase
# A ladder's identity as the contract's env gives it: stage s2's cell continues s1's.
S1 = {"ladder": "demo", "stage": "s1", "candidate": "c0", "hostBlock": "a100", "seed": 3}
S2 = {**S1, "stage": "s2"}
LADDER_ENV = {ENV_FROZEN_HASH: "sha256:aaa"}


def settings(corpus, **kw) -> Settings:
    return Settings(data=str(corpus), eval_tokens=512, log_interval=60, **kw)


def writes(folder: Path, config=CONFIG, identity=S1, env=LADDER_ENV) -> Continuation:
    return Continuation.of(str(folder), None, "fail", config, identity, env)


def reads(folder: Path, config=CONFIG, identity=S2, env=None, on_mismatch="fail") -> Continuation:
    env = {**LADDER_ENV, ENV_PREVIOUS_STAGE: "s1"} if env is None else env
    return Continuation.of(None, str(folder), on_mismatch, config, identity, env)


def losses(path: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, path.read_text().splitlines())]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_resumed_run_is_the_uninterrupted_run(corpus, tmp_path, optimizer):
    cfg = parse_config({**CONFIG, "optimizer": optimizer})
    whole = run(cfg, 3, LONG, settings(corpus, max_steps=12, step_log=str(tmp_path / "whole.jsonl")))
    run(
        cfg,
        3,
        LONG,
        settings(corpus, max_steps=5, stable_steps=5, step_log=str(tmp_path / "first.jsonl")),
        continuation=writes(tmp_path / "ck", {**CONFIG, "optimizer": optimizer}, identity={}, env={}),
    )
    resumed = run(
        cfg,
        3,
        LONG,
        settings(corpus, max_steps=12, step_log=str(tmp_path / "rest.jsonl")),
        continuation=reads(tmp_path / "ck", {**CONFIG, "optimizer": optimizer}, identity={}, env={}),
    )
    a, first, rest = (losses(tmp_path / f"{n}.jsonl") for n in ("whole", "first", "rest"))
    assert first == a[:5] and [s for s, _ in rest] == list(range(6, 13))
    # the same loss curve: model, optimizer state, data position and RNG all restored
    assert [loss for _, loss in rest] == pytest.approx([loss for _, loss in a[5:]], rel=1e-6, abs=1e-7)
    assert resumed.value == pytest.approx(whole.value, rel=1e-6)
    assert resumed.steps == whole.steps == 12 and resumed.resumed_seconds > 0


def test_the_stable_checkpoint_sits_where_the_flat_phase_ends(corpus, tmp_path):
    budget, warmdown = 3.0, 0.4
    cfg = parse_config({**CONFIG, "warmdown_frac": warmdown})
    first = run(
        cfg, 3, budget, settings(corpus), continuation=writes(tmp_path / "s1", {**CONFIG, "warmdown_frac": warmdown})
    )
    manifest = json.loads((tmp_path / "s1" / MANIFEST_FILE).read_text())
    stable = manifest["stableSeconds"]
    assert (1 - warmdown) * budget <= stable < (1 - warmdown) * budget + 0.5  # the first step boundary past it
    assert {k: manifest[k] for k in ("ladder", "stage", "candidate", "hostBlock", "seed", "frozenHash", "corpus")} == {
        **S1,
        "frozenHash": "sha256:aaa",
        "corpus": first.corpus,
    }
    assert first.resumed_seconds == 0.0 and first.status == "ok"
    # the next stage, twice the budget: its clock starts at the stable time, it trains and decays to its own end
    second = run(
        cfg, 3, 2 * budget, settings(corpus), continuation=reads(tmp_path / "s1", {**CONFIG, "warmdown_frac": warmdown})
    )
    assert second.resumed_seconds == pytest.approx(stable, abs=1e-5)
    assert 2 * budget <= second.train_seconds < 2 * budget + 0.5 and second.steps > first.steps


def test_without_a_decay_the_checkpoint_is_saved_at_the_end(corpus, tmp_path):
    cfg = {**CONFIG, "warmdown_frac": 0.0}
    out = run(parse_config(cfg), 3, 1.0, settings(corpus), continuation=writes(tmp_path / "ck", cfg))
    manifest = json.loads((tmp_path / "ck" / MANIFEST_FILE).read_text())
    assert manifest["stableSeconds"] == pytest.approx(out.train_seconds, abs=1e-3) and manifest["steps"] == out.steps


@pytest.fixture(scope="module")
def saved(tmp_path_factory, corpus) -> Path:
    """One stage-1 cell's stable checkpoint, for the refusals."""
    folder = tmp_path_factory.mktemp("ck") / "s1"
    run(parse_config(CONFIG), 3, LONG, settings(corpus, max_steps=3, stable_steps=3), continuation=writes(folder))
    return folder


@pytest.fixture(scope="module")
def other_corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("other-corpus")
    write_tiny_corpus(folder)
    (folder / "extra.txt").write_text("a document the first corpus does not have\n" * 40)
    return folder


def _damage(folder: Path) -> None:
    data = bytearray((folder / STABLE_FILE).read_bytes())
    data[-100] ^= 0xFF
    (folder / STABLE_FILE).write_bytes(bytes(data))


# name -> (what the continuing cell differs in, the refusal's field)
REFUSALS = {
    "another ladder's frozen hash": ({"env": {ENV_FROZEN_HASH: "sha256:bbb", ENV_PREVIOUS_STAGE: "s1"}}, "frozenHash:"),
    "another previous stage": ({"env": {**LADDER_ENV, ENV_PREVIOUS_STAGE: "s0"}}, "stage:"),
    "another candidate": ({"identity": {**S2, "candidate": "c1"}}, "candidate:"),
    "another host block": ({"identity": {**S2, "hostBlock": "l40s"}}, "hostBlock:"),
    "another seed": ({"seed": 4}, "seed:"),
    "another config": ({"config": {**CONFIG, "matrix_lr": 0.01}}, "configHash:"),
    "another corpus": ({"corpus": "other"}, "corpus:"),
    "damaged content": ({"damage": True}, "sha256:"),
    "no checkpoint there (a lost volume)": ({"folder": "missing"}, "checkpoint missing: no stable.json"),
}


def _continue(name, saved, corpus, other_corpus, tmp_path, on_mismatch):
    change, _ = REFUSALS[name]
    folder = saved
    if change.get("damage") or change.get("folder"):
        folder = tmp_path / "copy"
        if change.get("damage"):
            folder.mkdir()
            for f in saved.iterdir():
                (folder / f.name).write_bytes(f.read_bytes())
            _damage(folder)
    config = change.get("config", CONFIG)
    c = reads(folder, config, change.get("identity", S2), change.get("env"), on_mismatch)
    data = other_corpus if change.get("corpus") else corpus
    return run(parse_config(config), change.get("seed", 3), LONG, settings(data, max_steps=2), continuation=c)


def test_the_matching_checkpoint_is_used(saved, corpus):
    out = run(parse_config(CONFIG), 3, LONG, settings(corpus, max_steps=4), continuation=reads(saved))
    assert out.steps == 4 and out.resumed_seconds > 0 and out.resume_refused is None


@pytest.mark.parametrize("name", list(REFUSALS))
def test_each_mismatch_fails_the_cell_naming_it(name, saved, corpus, other_corpus, tmp_path):
    with pytest.raises(CheckpointRefused) as exc:
        _continue(name, saved, corpus, other_corpus, tmp_path, "fail")
    assert REFUSALS[name][1] in str(exc.value)


@pytest.mark.parametrize("name", ["another corpus", "damaged content", "no checkpoint there (a lost volume)"])
def test_or_trains_from_scratch_and_records_why(name, saved, corpus, other_corpus, tmp_path):
    out = _continue(name, saved, corpus, other_corpus, tmp_path, "fromScratch")
    assert out.status == "ok" and out.steps == 2 and out.resumed_seconds == 0.0
    assert REFUSALS[name][1] in out.resume_refused and len(out.resume_refused) <= 200


def test_the_cli_exits_5_with_the_reason_in_its_result(saved, corpus, tmp_path):
    result = tmp_path / "result.json"
    env = {
        "LADDER_NAME": "demo",
        "LADDER_STAGE": "s2",
        "LADDER_CANDIDATE": "c0",
        "LADDER_HOST_BLOCK": "a100",
        "LADDER_SEED": "3",
        ENV_FROZEN_HASH: "sha256:other",
        ENV_PREVIOUS_STAGE: "s1",
    }
    proc = run_cli(
        [
            "--config",
            json.dumps(CONFIG),
            "--budget",
            "60s",
            "--result-file",
            str(result),
            "--data",
            str(corpus),
            "--max-steps",
            "2",
            "--eval-tokens",
            "512",
            "--resume-from",
            str(saved),
        ],
        env=env,
    )
    assert proc.returncode == EXIT_CHECKPOINT, proc.stderr
    doc = parse_result(result.read_text())
    assert doc.status == "error" and doc.message.startswith("checkpoint refused: frozenHash:")
    assert "Traceback" not in proc.stderr


def test_shapes_a_checkpoint_cannot_carry_are_a_bad_config(corpus, tmp_path):
    grow = {**CONFIG, "depth": 2, "grow_from_depth": 1}
    with pytest.raises(ConfigError, match="grow_from_depth"):
        run(parse_config(grow), 3, LONG, settings(corpus, max_steps=2), continuation=writes(tmp_path / "g", grow))


def test_prune_deletes_only_the_named_candidates_folders(tmp_path):
    from ladder_trainer.prune import main as prune

    root = tmp_path / "demo"
    keep = [root / "s1" / "c0.a100.1", root / "s1" / "c10.a100.1", root / "s2" / "c0.a100.1", root / "s3" / "c1.a100.1"]
    gone = [root / "s1" / "c1.a100.1", root / "s1" / "c1.l40s.2", root / "s2" / "c1.a100.1"]
    for folder in keep + gone:
        folder.mkdir(parents=True)
        (folder / MANIFEST_FILE).write_text("{}")
    assert prune(["--root", str(root), "--stages", "s1", "s2", "--candidates", "c1"]) == 0
    assert all(f.exists() for f in keep) and not any(f.exists() for f in gone)
    assert prune(["--root", str(root), "--stages", "s1", "s2", "--candidates", "c1"]) == 0  # again: nothing left
    with pytest.raises(SystemExit):
        prune(["--root", str(root), "--stages", "../x", "--candidates", "c1"])
    assert os.path.isdir(root / "s1")
