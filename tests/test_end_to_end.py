"""data -> prior -> eval + targets -> attack -> metrics -> report, through the CLI, on the tiny config."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

from lsmia.attack.result import AttackResult
from lsmia.cli import app
from tests.helpers.cli import invoke_in
from tests.helpers.paths import TINY

runner = CliRunner()


def run(tmp_path: Path, *args: str) -> Result:
    result = invoke_in(tmp_path, *args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def study_dir(tmp_path):
    shutil.copy(TINY, tmp_path / "params.yaml")
    return tmp_path


@pytest.mark.slow
def test_each_stage_through_the_cli(study_dir):
    run(study_dir, "data")
    run(study_dir, "train-prior")
    run(study_dir, "train", "--role", "eval")
    run(study_dir, "train-attributes")
    run(study_dir, "train", "--role", "target", "--alpha", "-0.05")
    run(study_dir, "attack", "--alpha", "-0.05")
    out = run(study_dir, "evaluate", "--alpha", "-0.05")
    metrics = json.loads((study_dir / "out/metrics/alpha-0.05_seed0.json").read_text())
    printed = json.loads(out.stdout)
    assert printed.pop("evaluate_seconds") > 0  # the wall time is printed, never written (byte-stable file)
    assert printed == metrics
    assert metrics["alpha"] == -0.05 and metrics["num_targets"] == 2 and metrics["num_final_samples"] == 4
    for key in (
        "test_acc",
        "final_acc1",
        "final_acc5",
        "delta_eval",
        "fid_eval_features",
        "xi",
        "attribute_acc",
        "precision",
        "recall",
        "density",
        "coverage",
        "ece",
        "mean_logit_norm",
    ):
        assert isinstance(metrics[key], float), key
    assert 0 <= metrics["final_acc1"] <= metrics["final_acc5"] <= 1
    result = AttackResult.load(study_dir / "out/attacks/alpha-0.05_seed0/attack.pt")
    assert result.final_images.shape == (4, 3, 32, 32) and result.final_images.dtype == torch.uint8
    assert sorted(result.final_targets.tolist()) == [0, 0, 1, 1]
    assert (study_dir / "out/attacks/alpha-0.05_seed0/reconstructions.png").stat().st_size > 0
    assert (study_dir / "out/prior/samples.png").exists()
    run(study_dir, "report")
    assert "alpha" in (study_dir / "out/report/index.html").read_text()


@pytest.mark.slow
def test_study_command_runs_every_alpha(study_dir):
    out = run(study_dir, "study")
    for alpha in ("0.1", "-0.05"):
        assert (study_dir / f"out/metrics/alpha{alpha}_seed0.json").exists()
    assert (study_dir / "out/report/index.html").exists()
    assert "final_acc1" in out.stdout


def test_bad_target_class_is_a_one_line_error_and_keeps_earlier_output(study_dir):
    run(study_dir, "data")
    before = (study_dir / "out/data/dataset.pt").read_bytes()
    bad = runner.invoke(
        app,
        [
            "attack",
            "--params",
            str(study_dir / "params.yaml"),
            "-S",
            "attack.targets=[0, 9]",
            "-S",
            f"run.out_dir={study_dir / 'out'}",
        ],
    )
    assert bad.exit_code == 2 and bad.output.startswith("error: ") and "Traceback" not in bad.output
    assert (study_dir / "out/data/dataset.pt").read_bytes() == before
