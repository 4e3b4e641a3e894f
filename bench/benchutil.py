"""Shared pieces of the speed benchmarks: argument defaults, the header, interleaved timing, medians.

Each benchmark runs its cases interleaved (A B A B ...) and reports medians, so a burst of
load from other processes on a shared machine hits every case alike instead of one.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

Timings = dict[str, float]
Case = Callable[[], Timings | None]  # returns extra named timings (e.g. phases), or None
TOTAL = "total_s"


def base_parser(description: str, repeats: int = 3) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny smoke version that runs in seconds")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--repeats", type=int, default=repeats, help=f"interleaved repetitions (default {repeats})")
    return parser


def parse(parser: argparse.ArgumentParser, **quick: Any) -> argparse.Namespace:
    """Parse the command line; with ``--quick``, the options named in ``quick`` take those smoke-test values."""
    args = parser.parse_args()
    if args.quick:
        for name, value in quick.items():
            setattr(args, name, value)
    return args


def setup(threads: int, title: str, device: str = "cpu") -> None:
    """Set the thread count and print the header every benchmark starts with."""
    if threads < 1:
        raise SystemExit(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    print(f"# {title}")
    print(
        f"# torch {torch.__version__} | python {platform.python_version()} | threads {torch.get_num_threads()} "
        f"| device {device_name(device)}"
    )


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(0)})"
    return f"cpu ({platform.processor() or platform.machine()})"


def run_timed(case: Case) -> Timings:
    started = time.perf_counter()
    extra = case() or {}
    return {TOTAL: time.perf_counter() - started, **extra}


def interleaved(cases: Mapping[str, Case], repeats: int, warmup: bool = False) -> dict[str, list[Timings]]:
    """Run every case once per round, ``repeats`` rounds; an untimed warm-up round first if asked."""
    if repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {repeats}")
    if warmup:
        for case in cases.values():
            case()
    runs: dict[str, list[Timings]] = {name: [] for name in cases}
    for round_index in range(repeats):
        for name, case in cases.items():
            runs[name].append(run_timed(case))
            print(f"  round {round_index + 1}/{repeats} {name}: {runs[name][-1][TOTAL]:.3f} s", flush=True)
    return runs


def medians(runs: list[Timings]) -> Timings:
    """Median of each named timing over the runs."""
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def print_table(rows: Mapping[str, Timings], keys: list[str]) -> None:
    """One line per case, one column (median seconds) per key."""
    name_width = max(len(name) for name in rows)
    print(f"{'case':<{name_width}}  " + "  ".join(f"{key:>16}" for key in keys))
    for name, timings in rows.items():
        print(f"{name:<{name_width}}  " + "  ".join(f"{timings.get(key, float('nan')):>16.3f}" for key in keys))


def print_ratio(
    name: str,
    slow_s: float,
    fast_s: float,
    slow_label: str,
    fast_label: str,
    note: str = "medians",
    digits: int = 3,
) -> float:
    """The final line every benchmark prints: ``RATIO <name>: <x.xx>x`` and the raw seconds (``digits`` decimals:
    more for the milliseconds of one step, so the ratio can be checked against them)."""
    ratio = slow_s / fast_s if fast_s > 0 else float("inf")
    print(
        f"RATIO {name}: {ratio:.2f}x ({slow_label} {slow_s:.{digits}f} s / {fast_label} {fast_s:.{digits}f} s, {note})"
    )
    return ratio
