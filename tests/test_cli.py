"""The command line: one-line errors with exit code 2, and nothing of an earlier run overwritten."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from lsmia.cli import app

runner = CliRunner()


def invoke(*args: str, cwd: Path):
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return runner.invoke(app, list(args))
    finally:
        os.chdir(old)


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0]


def test_alpha_out_of_range(tmp_path):
    assert_one_line_error(invoke("train", "--alpha", "1.5", cwd=tmp_path), "alpha")


def test_unknown_config_key(tmp_path):
    (tmp_path / "params.yaml").write_text("target:\n  epochz: 3\n")
    assert_one_line_error(invoke("train", cwd=tmp_path), "target.epochz")


def test_missing_data_file(tmp_path):
    assert_one_line_error(invoke("train", "--role", "eval", cwd=tmp_path), "does not exist", "lsmia data")


def test_unknown_architecture_and_role(tmp_path):
    assert_one_line_error(invoke("train", "--role", "judge", cwd=tmp_path), "--role")


def test_cuda_requested_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert_one_line_error(invoke("train", "--device", "cuda", cwd=tmp_path), "cuda")


def test_config_prints_the_resolved_config(tmp_path):
    result = invoke("config", "-S", "attack.steps=5", cwd=tmp_path)
    assert result.exit_code == 0 and "steps: 5" in result.output


def test_report_with_a_missing_ablation_file(tmp_path):
    result = invoke("report", "--no-track", "--ablation", "out/ablations/nothing/results.md", cwd=tmp_path)
    assert_one_line_error(result, "out/ablations/nothing/results.md", "lsmia ablate")


def test_ablate_with_a_missing_plan(tmp_path):
    assert_one_line_error(invoke("ablate", "plan.yaml", "--no-track", cwd=tmp_path), "plan.yaml", "does not exist")
