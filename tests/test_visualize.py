"""Reconstruction grids: labelled (real vs reconstruction, identity per row), judged by the evaluation model, and
byte-stable (DVC tracks them)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lsmia.reporting.visualize import (
    CORRECT,
    FRAME,
    GRID_PADDING,
    HEADER,
    WRONG,
    comparison_layout,
    label_margin,
    save_attack_grid,
    save_judged_grid,
)
from tests.helpers.data import make_face_data
from tests.helpers.study import TILE, fake_attack


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_attack_grid_is_labelled_and_byte_stable(tmp_path: Path) -> None:
    data, result = make_face_data(size=TILE), fake_attack([0, 2])
    save_attack_grid(data, result, tmp_path / "a.png")
    save_attack_grid(data, result, tmp_path / "b.png")
    assert digest(tmp_path / "a.png") == digest(tmp_path / "b.png")  # DVC sees an unchanged output
    layout = comparison_layout(data, result)
    assert layout.row_labels == ["c0", "c2"] and layout.nrow == 4 + 1 + 8
    image = np.asarray(Image.open(tmp_path / "a.png").convert("RGB")).astype(int)
    step = TILE + GRID_PADDING
    assert image.shape[0] == HEADER + GRID_PADDING + 2 * step  # a header band above two rows of tiles
    assert (image[:HEADER] < 128).any()  # the titles "real" and "reconstructions" are drawn in it
    left = label_margin(layout)
    assert image.shape[1] == left + GRID_PADDING + layout.nrow * step
    assert (image[HEADER:, :left] < 128).any()  # the identity of each row at its left


def test_judged_grid_frames_each_reconstruction_by_the_evaluation_model_s_verdict(tmp_path: Path) -> None:
    data, result = make_face_data(size=TILE), fake_attack([1, 3])
    correct = torch.tensor([True, False, True, False, False, True])
    save_judged_grid(data, result, correct, tmp_path / "judged.png")
    image = np.asarray(Image.open(tmp_path / "judged.png").convert("RGB")).astype(int)
    layout = comparison_layout(data, result)
    left = label_margin(layout)
    for tile, sample in enumerate(layout.sample_index):
        if sample < 0:
            continue
        x = left + GRID_PADDING + (tile % layout.nrow) * (TILE + GRID_PADDING) - FRAME
        y = HEADER + GRID_PADDING + (tile // layout.nrow) * (TILE + GRID_PADDING) - FRAME
        expected = CORRECT if correct[sample] else WRONG
        assert tuple(image[y, x]) == expected and tuple(image[y + TILE + 2 * FRAME - 1, x]) == expected
    # the reconstructions of each row are its target's final samples, best score first
    assert [i for i in layout.sample_index if i >= 0] == [0, 1, 2, 3, 4, 5]
    assert image.shape[0] > HEADER + GRID_PADDING + 2 * (TILE + GRID_PADDING)  # a legend below the tiles
