"""Optimizers and the schedule: the CPU AdamW equals torch's, the lr follows the budget."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")

from ladder_trainer.config import parse_config  # noqa: E402
from ladder_trainer.optim import Muon, PlainAdamW, lr_multiplier  # noqa: E402


def test_plain_adamw_matches_torch_adamw():
    torch.manual_seed(0)
    ours = [torch.randn(5, 3, dtype=torch.float64), torch.randn(7, dtype=torch.float64)]
    theirs = [p.clone() for p in ours]
    kw = dict(betas=(0.9, 0.95), eps=1e-10)
    a = PlainAdamW(
        [
            {"params": [ours[0]], "lr": 0.01, "weight_decay": 0.1},
            {"params": [ours[1]], "lr": 0.003, "weight_decay": 0.0},
        ],
        **kw,
    )
    b = torch.optim.AdamW(
        [
            {"params": [theirs[0]], "lr": 0.01, "weight_decay": 0.1},
            {"params": [theirs[1]], "lr": 0.003, "weight_decay": 0.0},
        ],
        **kw,
    )
    for _step in range(6):
        for p, q in zip(ours, theirs, strict=True):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        for opt in (a, b):  # the schedule changes lr between steps
            for group in opt.param_groups:
                group["lr"] *= 0.8
        a.step()
        b.step()
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "make", [lambda ps: PlainAdamW(ps, lr=0.1), lambda ps: Muon(ps, lr=0.1)], ids=["adamw", "muon"]
)
def test_state_dict_round_trip_restores_the_optimizer(make):
    p = torch.nn.Parameter(torch.randn(4, 4))
    opt = make([p])
    saved_p, saved = p.detach().clone(), opt.state_dict()
    for _ in range(2):
        p.grad = torch.randn(4, 4)
        opt.step()
    p.data.copy_(saved_p)
    opt.load_state_dict(saved)
    assert opt.state == {}
    p.grad = torch.ones(4, 4)
    opt.step()
    fresh_p = torch.nn.Parameter(saved_p.clone())
    fresh = make([fresh_p])
    fresh_p.grad = torch.ones(4, 4)
    fresh.step()
    torch.testing.assert_close(p.detach(), fresh_p.detach())


SCHEDULE = {
    "start, no warmup": ({}, 0.0, 1.0),
    "flat middle": ({}, 0.5, 1.0),
    "warmdown halfway": ({"warmdown_frac": 0.4}, 0.8, 0.5),
    "end": ({"warmdown_frac": 0.4}, 1.0, 0.0),
    "end with final_lr_frac": ({"warmdown_frac": 0.4, "final_lr_frac": 0.1}, 1.0, 0.1),
    "warmup halfway": ({"warmup_frac": 0.2}, 0.1, 0.5),
    "past the budget": ({}, 1.3, 0.0),
}


@pytest.mark.parametrize("cfg,progress,want", SCHEDULE.values(), ids=SCHEDULE.keys())
def test_lr_multiplier_follows_the_budget(cfg, progress, want):
    assert lr_multiplier(progress, parse_config(cfg)) == pytest.approx(want)
