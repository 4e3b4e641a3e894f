"""Progress output of the long stages: epochs or steps done, elapsed time and time left, on stderr."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lsmia.config import PriorConfig, StudentConfig
from lsmia.utils import progress, time_left
from tests.helpers.data import make_face_data

torch.set_num_threads(1)


def test_time_left_extrapolates_the_mean_time_per_item() -> None:
    assert time_left(10.0, 2, 6) == "10 s, about 20 s left"
    assert time_left(120.0, 1, 3) == "2 min, about 4 min left"
    assert time_left(30.0, 6, 6) == "30 s, done"


def test_plain_progress_prints_counts_and_time_left(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(progress(range(20), desc="things")) == list(range(20))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10 and lines[0].startswith("things: 2/20 (") and "left)" in lines[0]
    assert lines[-1].startswith("things: 20/20 (") and lines[-1].endswith(", done)")


def test_prior_training_reports_its_epochs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lsmia.training.prior import train_prior

    data = make_face_data()
    cfg = PriorConfig(width=8, epochs=2, batch_size=8, sample_grid=4, mapping_layers=0)
    assert data.public is not None
    train_prior(cfg, data.public, tmp_path, torch.device("cpu"), seed=0)
    err = capsys.readouterr().err
    assert "prior epochs: 1/2 (" in err and "prior epochs: 2/2 (" in err and "done)" in err


def test_evaluation_reports_the_knowledge_extraction_epochs(capsys: pytest.CaptureFixture[str]) -> None:
    from lsmia.data.base import ImageSet
    from lsmia.metrics.knowledge import knowledge_extraction

    data = make_face_data()
    cfg = StudentConfig(width=4, epochs=3, batch_size=8)
    knowledge_extraction(
        cfg, data.train.images, data.train.labels, ImageSet(data.test.images, data.test.labels), torch.device("cpu")
    )
    err = capsys.readouterr().err
    assert "evaluate: ξ student epochs: 3/3 (" in err
