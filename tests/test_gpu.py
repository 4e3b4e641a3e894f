"""The CUDA path of every stage, on the tiny study (marker ``gpu``: skipped without a CUDA device)."""

from __future__ import annotations

import pytest
import torch

from lsmia.config import load_config
from lsmia.experiments.study import run_study
from tests.helpers.paths import TINY

pytestmark = pytest.mark.gpu


def test_the_tiny_study_runs_on_cuda_and_matches_the_cpu_closely(tmp_path):
    cuda = load_config(TINY, {"run.out_dir": str(tmp_path / "cuda"), "run.device": "cuda"})
    cpu = load_config(TINY, {"run.out_dir": str(tmp_path / "cpu")})
    on_gpu = run_study(cuda, torch.device("cuda"), log=lambda line: None).metrics
    on_cpu = run_study(cpu, torch.device("cpu"), log=lambda line: None).metrics
    assert [(m["alpha"], m["seed"]) for m in on_gpu] == [(m["alpha"], m["seed"]) for m in on_cpu]
    for gpu_row, cpu_row in zip(on_gpu, on_cpu, strict=True):
        assert 0.0 <= gpu_row["final_acc1"] <= 1.0
        assert gpu_row["train_acc"] == pytest.approx(cpu_row["train_acc"], abs=0.25)  # other kernels, same model
