"""The 2-D toy (lsmia.experiments.toy): the paper's ordering, determinism, output files and the CLI command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lsmia.cli import app
from lsmia.errors import LsmiaError
from lsmia.experiments.toy import ToyResult, mean_consecutive_cosine, run_toy

ALPHAS = (0.05, 0.0, -0.05)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[ToyResult, ToyResult]:
    """Two full runs with the same seed into two folders (each trains three classifiers: computed once per module)."""
    first = run_toy(ALPHAS, seed=0, out_dir=tmp_path_factory.mktemp("toy_a"))
    second = run_toy(ALPHAS, seed=0, out_dir=tmp_path_factory.mktemp("toy_b"))
    return first, second


def _by_alpha(result: ToyResult) -> dict[float, dict[str, float]]:
    return {row["alpha"]: row for row in result.rows}


@pytest.mark.slow  # shares a module fixture that trains six toy classifiers (~5-10 s on one thread)
def test_end_distance_grows_as_alpha_falls(runs: tuple[ToyResult, ToyResult]) -> None:
    rows = _by_alpha(runs[0])
    assert [row["alpha"] for row in runs[0].rows] == list(ALPHAS)
    positive, zero, negative = rows[0.05]["end_distance"], rows[0.0]["end_distance"], rows[-0.05]["end_distance"]
    assert positive < zero < negative
    assert positive < 0.5  # positive smoothing ends on the training data
    assert all(row["train_acc"] == 1.0 for row in runs[0].rows)  # every model separates the blobs


@pytest.mark.slow  # shares a module fixture that trains six toy classifiers (~5-10 s on one thread)
def test_negative_smoothing_saturates_and_the_gradient_vanishes(runs: tuple[ToyResult, ToyResult]) -> None:
    rows = _by_alpha(runs[0])
    assert rows[-0.05]["end_confidence"] == 1.0  # float32 softmax saturated just past the boundary
    assert rows[-0.05]["vanished_steps"] > 0
    assert rows[0.05]["vanished_steps"] == 0 and rows[0.0]["vanished_steps"] == 0
    assert rows[0.05]["end_confidence"] < rows[0.0]["end_confidence"] < 1.0  # the positive cap holds near the data
    assert rows[-0.05]["grad_cosine"] < rows[0.0]["grad_cosine"]  # less consistent gradient directions


@pytest.mark.slow  # shares a module fixture that trains six toy classifiers (~5-10 s on one thread)
def test_two_runs_give_identical_numbers(runs: tuple[ToyResult, ToyResult]) -> None:
    first, second = runs
    assert first.rows == second.rows
    assert first.trajectories == second.trajectories
    steps = len(first.trajectories[0.05]) - 1
    assert steps == 300


@pytest.mark.slow  # shares a module fixture that trains six toy classifiers (~5-10 s on one thread)
def test_figure_and_json_are_written_with_stable_bytes(runs: tuple[ToyResult, ToyResult]) -> None:
    first, second = runs
    assert first.figure is not None and second.figure is not None
    json_a, json_b = first.figure.parent / "toy.json", second.figure.parent / "toy.json"
    assert first.figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert first.figure.read_bytes() == second.figure.read_bytes()
    assert json_a.read_bytes() == json_b.read_bytes()
    record = json.loads(json_a.read_text())
    assert record["rows"] == first.rows
    assert record["settings"]["seed"] == 0 and record["settings"]["attack_loss"] == "ce"


def test_without_out_dir_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_toy((0.0,), seed=1, steps=5)
    assert result.figure is None and list(tmp_path.iterdir()) == []
    assert len(result.rows) == 1 and len(result.trajectories[0.0]) == 6


def test_bad_steps_is_a_clear_error() -> None:
    with pytest.raises(LsmiaError, match="at least 1 step"):
        run_toy(steps=0)


def test_gradient_cosine_ignores_zero_gradients() -> None:
    gradients = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    assert mean_consecutive_cosine(gradients) == pytest.approx(2**-0.5)
    assert torch.isnan(torch.tensor(mean_consecutive_cosine(torch.zeros(4, 2))))


@pytest.mark.slow  # shares a module fixture that trains six toy classifiers (~5-10 s on one thread)
def test_cli_toy_writes_the_same_results(runs: tuple[ToyResult, ToyResult], tmp_path: Path) -> None:
    out_dir = tmp_path / "toy"
    outcome = CliRunner().invoke(app, ["toy", "--out-dir", str(out_dir), "--seed", "0", "--steps", "300"])
    assert outcome.exit_code == 0, outcome.output
    assert f"figure: {out_dir / 'toy.png'}" in outcome.output
    lines = outcome.output.splitlines()
    assert lines[0].split("\t") == ["alpha", "end_distance", "confidence", "grad_cosine"]
    assert [line.split("\t")[0] for line in lines[1:4]] == ["+0.05", "+0", "-0.05"]
    figure = runs[0].figure
    assert figure is not None
    library_json = figure.parent / "toy.json"
    assert (out_dir / "toy.json").read_bytes() == library_json.read_bytes()
    assert (out_dir / "toy.png").read_bytes() == figure.read_bytes()
