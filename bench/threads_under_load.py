"""Training beside other jobs: torch's default threads (every core, OpenMP spinning) vs ``run.threads: auto``
(the usable cores less the load, idle OpenMP threads sleeping), on a machine kept busy by competing processes.

Each case is a fresh process (OpenMP reads its wait policy once, at start-up) that trains the default target
(smallresnet, 32 px, batch 64, Adam) for ``--steps`` steps while ``--competitors`` processes each keep one core
busy with single-threaded matrix products, as other users' jobs do on a shared machine. The competitors start
before the first case and run until the end, so the load average the ``auto`` case reads is the real one.

    .venv/bin/python bench/threads_under_load.py [--quick] [--competitors 2] [--steps 30]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import benchutil

from lsmia.infra.threads import usable_cores

TRAIN = """
import sys, time, torch
from lsmia.infra.threads import set_threads
from lsmia.models.classifiers import build_classifier
choice = set_threads(sys.argv[1] if sys.argv[1] == "auto" else int(sys.argv[1]))
model = build_classifier("smallresnet", 200, 32)
opt = torch.optim.Adam(model.parameters(), 1e-3)
x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 200, (64,))
started = time.perf_counter()
for _ in range(int(sys.argv[2])):
    opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step()
print(time.perf_counter() - started, torch.get_num_threads())
"""
COMPETE = "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True:\n    a = (a @ a).tanh()\n"
CASES = {"default_all_cores_spinning": ("0", "ACTIVE"), "auto_passive": ("auto", "PASSIVE")}


def train_case(threads: str, policy: str, steps: int) -> benchutil.Case:
    def case() -> benchutil.Timings:
        env = {**os.environ, "OMP_WAIT_POLICY": policy}
        env.pop("OMP_NUM_THREADS", None)
        done = subprocess.run(
            [sys.executable, "-c", TRAIN, threads, str(steps)], env=env, capture_output=True, text=True, check=True
        )
        seconds, used = done.stdout.split()
        return {"train_s": float(seconds), "threads": float(used)}

    return case


def main() -> None:
    parser = benchutil.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--competitors", type=int, default=usable_cores(), help="busy processes (default: cores)")
    parser.add_argument("--steps", type=int, default=30, help="training steps per case (default 30)")
    args = benchutil.parse(parser, competitors=1, steps=2, repeats=1)
    benchutil.setup(args.threads, __doc__.splitlines()[0])
    competitors = [subprocess.Popen([sys.executable, "-c", COMPETE]) for _ in range(args.competitors)]
    try:
        time.sleep(0 if args.quick else 20)  # let the load average see them
        print(
            f"# {args.competitors} competing processes on {usable_cores()} usable cores, load {os.getloadavg()[0]:.1f}"
        )
        cases = {name: train_case(threads, policy, args.steps) for name, (threads, policy) in CASES.items()}
        runs = benchutil.interleaved(cases, args.repeats)
    finally:
        for process in competitors:
            process.kill()
            process.wait()
    result = {name: benchutil.medians(timings) for name, timings in runs.items()}
    for name, timing in result.items():
        print(f"{name}: {timing['train_s']:.2f} s training, {timing['threads']:.0f} threads")
    slow, fast = result["default_all_cores_spinning"]["train_s"], result["auto_passive"]["train_s"]
    print(f"RATIO threads_auto_vs_default_under_load: {slow / fast:.2f}x (default {slow:.2f} s / auto {fast:.2f} s)")


if __name__ == "__main__":
    main()
