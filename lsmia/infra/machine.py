"""Which kind of machine computed a result: CPU kernels round differently from one processor to another (and CUDA
kernels from one GPU to another), so two runs of the same code and seed agree bit for bit on one kind of machine
only. A paired comparison (a defended target against the undefended one of its seed) is exact when both sides
share this fingerprint; the verdict says so where they do not."""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")


@cache
def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``; elsewhere what :mod:`platform` knows)."""
    try:
        for line in CPUINFO.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def fingerprint(device: torch.device) -> str:
    """What decides the floating-point results of a stage run on ``device``: the processor (or GPU), the kernels
    torch dispatches to on it, and torch's version."""
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = f"{cpu_model()}, {torch.backends.cpu.get_cpu_capability()}"
    return f"{hardware}; torch {torch.__version__}"
