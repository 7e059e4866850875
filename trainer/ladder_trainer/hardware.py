"""Devices and their nominal peak throughput, for MFU.

Peaks are dense bf16 tensor-core FLOP/s from the vendors' data sheets (no sparsity).
Matching is by substring of torch.cuda.get_device_name(), most specific first; override
with LADDER_TRAINER_PEAK_FLOPS for a GPU not in the table.
"""

from __future__ import annotations

import contextlib
import os

import torch

from .config import ConfigError

# (substring of the device name, peak bf16 FLOP/s); first match wins.
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("GB200", 2.5e15),
    ("B200", 2.25e15),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    ("H800", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 6000 Ada", 364e12),
    ("A6000", 155e12),
    ("V100", 125e12),  # fp16: V100 has no bf16 tensor cores
    ("T4", 65e12),
]


def peak_flops(device_name: str | None) -> float | None:
    override = os.environ.get("LADDER_TRAINER_PEAK_FLOPS")
    if override:
        return float(override)
    if not device_name:
        return None
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return flops
    return None


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {requested}: CUDA is not available on this machine")
    return dev


def device_name(device: torch.device) -> str | None:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return None


def peak_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:  # CPU: the process's peak resident set (Linux reports KiB)
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except (ImportError, OSError):  # no resource module (not Unix): the peak is unknown
        return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def attention_backend(choice: str) -> contextlib.AbstractContextManager:
    """scaled_dot_product_attention tries `choice` first, then the others; "auto" keeps torch's order.

    A preference, not a restriction: a shape the chosen kernel cannot serve falls back to
    the next one (flash, cudnn, efficient, math), and a CPU picks its own kernel regardless.
    Held around the whole run, so compilation, backward and checkpoint recompute agree.
    Why it is a setting: on H100/H200 cuDNN's attention is reported 1.7-2.3x faster than
    flash for training shapes, and torch only puts it first by default in recent builds.
    """
    if choice == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    by_name = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }
    if choice not in by_name:
        raise ConfigError(f"attention: {choice!r} is not a backend; use auto, {', '.join(by_name)}")
    order = [by_name[choice]] + [b for name, b in by_name.items() if name != choice]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # sdpa_kernel learnt set_priority in torch 2.6
        raise ConfigError(
            f"attention: {choice!r} needs torch 2.6 or newer; this is {torch.__version__} (use auto)"
        ) from None
