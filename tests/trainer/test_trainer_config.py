"""Candidate config validation: every bad input names its key and exits 2 (no torch needed)."""

from __future__ import annotations

import json

import pytest

from ladder_trainer.cli import main
from ladder_trainer.config import ConfigError, TrainConfig, parse_config
from promotion_ladder.core.contract import EXIT_BAD_CONFIG
from promotion_ladder.core.result import parse_result

BAD = {
    "unknown key": ({"detph": 4}, "detph"),
    "int as string": ({"depth": "4"}, "depth"),
    "bool as int": ({"depth": True}, "depth"),
    "fractional int": ({"seq_len": 12.5}, "seq_len"),
    "number as bool": ({"activation_checkpointing": 1}, "activation_checkpointing"),
    "unknown optimizer": ({"optimizer": "sgd"}, "optimizer"),
    "unknown tokenizer": ({"tokenizer": "wordpiece"}, "tokenizer"),
    "zero depth": ({"depth": 0}, "depth"),
    "negative lr": ({"matrix_lr": -1e-3}, "matrix_lr"),
    "fraction above one": ({"warmdown_frac": 1.5}, "warmdown_frac"),
    "schedule over one": ({"warmup_frac": 0.6, "warmdown_frac": 0.6}, "warmup_frac"),
    "byte vocab": ({"tokenizer": "byte", "vocab_size": 1000}, "vocab_size"),
    "odd head_dim": ({"head_dim": 15}, "head_dim"),
    "growth not smaller": ({"depth": 4, "grow_from_depth": 4}, "grow_from_depth"),
    "not an object": ([1, 2], "JSON object"),
}


@pytest.mark.parametrize("raw,needle", BAD.values(), ids=BAD.keys())
def test_bad_config_names_the_key(raw, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_config(raw)


GOOD = {
    "empty": ({}, TrainConfig()),
    "ints accepted as floats": ({"matrix_lr": 1}, TrainConfig(matrix_lr=1.0)),
    "integral floats accepted as ints": ({"depth": 8.0}, TrainConfig(depth=8)),
    "muon": ({"optimizer": "muon"}, TrainConfig(optimizer="muon")),
}


@pytest.mark.parametrize("raw,want", GOOD.values(), ids=GOOD.keys())
def test_good_config(raw, want):
    assert parse_config(raw) == want


def test_width_rounds_up_to_head_dim():
    cfg = parse_config({"depth": 8, "aspect_ratio": 48, "head_dim": 128})
    assert (cfg.width, cfg.n_head) == (384, 3)
    assert parse_config({"depth": 3, "aspect_ratio": 50, "head_dim": 64}).width == 192


def test_batch_must_split_into_micro_batches():
    with pytest.raises(ConfigError, match="batch"):
        parse_config({"seq_len": 100, "batch": 250}).resolve("cpu")
    cfg = parse_config({"seq_len": 128, "batch": 1024, "device_batch": 2}).resolve("cpu")
    assert cfg.grad_accum == 4


def test_cli_bad_config_exits_2_with_a_result(tmp_path, capsys):
    out = tmp_path / "result.json"
    code = main(["--config", json.dumps({"depth": 2, "widht": 3}), "--budget", "5s", "--result-file", str(out)])
    assert code == EXIT_BAD_CONFIG
    result = parse_result(out.read_text())
    assert result.status == "error" and "widht" in result.message
    assert "widht" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--config", "{not json", "--budget", "5s"], "JSON"),
        (["--config", "{}", "--budget", "five"], "budget"),
    ],
)
def test_cli_bad_json_or_budget_exits_2(args, needle, tmp_path):
    out = tmp_path / "r.json"
    assert main([*args, "--result-file", str(out)]) == EXIT_BAD_CONFIG
    assert needle in parse_result(out.read_text()).message


def test_cli_reads_the_config_file_a_ladder_gives_it(tmp_path):
    """The cell contract passes --config-file (issue 12: a config as one argument hit the kernel's
    argument-length limit); the file's config is the one checked, so its typo fails the cell."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"depth": 2, "widht": 3}))
    out = tmp_path / "r.json"
    assert main(["--config-file", str(cfg), "--budget", "5s", "--result-file", str(out)]) == EXIT_BAD_CONFIG
    assert "widht" in parse_result(out.read_text()).message


def test_cli_missing_config_file_exits_2_naming_it(tmp_path):
    out = tmp_path / "r.json"
    missing = tmp_path / "nope.json"
    assert main(["--config-file", str(missing), "--budget", "5s", "--result-file", str(out)]) == EXIT_BAD_CONFIG
    assert f"--config-file {missing}" in parse_result(out.read_text()).message


def test_bad_setting_env_exits_2(tmp_path, monkeypatch):
    monkeypatch.setenv("LADDER_TRAINER_EVAL_TOKENS", "lots")
    out = tmp_path / "r.json"
    assert main(["--budget", "5s", "--result-file", str(out)]) == EXIT_BAD_CONFIG
    assert "LADDER_TRAINER_EVAL_TOKENS" in parse_result(out.read_text()).message


def test_image_entrypoint_module_starts():
    """Dockerfile.trainer's ENTRYPOINT is `python -m ladder_trainer`; that module must start."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    dockerfile = (Path(__file__).resolve().parents[2] / "Dockerfile.trainer").read_text()
    entry = re.findall(r"^ENTRYPOINT (.+)$", dockerfile, re.M)
    assert entry and json.loads(entry[-1]) == ["python", "-m", "ladder_trainer"]
    proc = subprocess.run(
        [sys.executable, "-m", "ladder_trainer", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "--budget" in proc.stdout


RESOLVE = {
    "cpu default": ({}, "cpu", (4096, 2)),
    "cpu short sequences": ({"seq_len": 128}, "cpu", (512, 4)),
    "cuda default": ({}, "cuda", (2**18, 64)),
    "cuda seq 2048": ({"seq_len": 2048}, "cuda", (2**18, 32)),
    "explicit values win": ({"seq_len": 256, "batch": 2048, "device_batch": 2}, "cuda", (2048, 2)),
}


@pytest.mark.parametrize("raw,device,want", RESOLVE.values(), ids=RESOLVE.keys())
def test_batch_defaults_scale_to_the_device(raw, device, want):
    cfg = parse_config(raw).resolve(device)
    assert (cfg.batch, cfg.device_batch) == want


# (config, device, processes) -> (batch, device_batch, micro-batches per process per step)
RESOLVE_WORLD = {
    "8 gpus keep the global batch": ({"seq_len": 2048}, "cuda", 8, (2**18, 16, 1)),
    "2 gpus accumulate": ({"seq_len": 2048}, "cuda", 2, (2**18, 32, 2)),
    "6 gpus: auto batch rounds down to split evenly": ({"seq_len": 2048}, "cuda", 6, (126 * 2048, 21, 1)),
    "2 cpu processes": ({"seq_len": 32, "batch": 128, "device_batch": 1}, "cpu", 2, (128, 1, 2)),
    "auto micro-batch divides the share": ({"seq_len": 128, "batch": 12 * 128}, "cpu", 2, (12 * 128, 6, 1)),
}


@pytest.mark.parametrize("raw,device,world,want", RESOLVE_WORLD.values(), ids=RESOLVE_WORLD.keys())
def test_batch_is_global_and_split_over_processes(raw, device, world, want):
    cfg = parse_config(raw).resolve(device, world)
    assert (cfg.batch, cfg.device_batch, cfg.grad_accum // world) == want
    assert cfg.grad_accum % world == 0


def test_a_batch_that_does_not_split_over_the_processes_is_refused():
    with pytest.raises(
        ConfigError,
        match=r"batch: 384 tokens per step is not a multiple of device_batch x seq_len x "
        r"processes = 1 x 128 x 2 = 256",
    ):
        parse_config({"seq_len": 128, "batch": 384, "device_batch": 1}).resolve("cpu", 2)
