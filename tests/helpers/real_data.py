"""Tiny image files in the real on-disk layouts (FaceScrub, CelebA, image folder)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

# One solid colour per identity, so a label can be read back from the pixels.
COLOURS = [(230, 20, 20), (20, 230, 20), (20, 20, 230), (230, 230, 20), (20, 230, 230), (230, 20, 230)]
SIZES = [(40, 30), (30, 40), (24, 24), (50, 20), (20, 50), (33, 27)]  # (width, height), none square but one


def write_image(path: Path, colour: tuple[int, ...], size: tuple[int, int], fmt: str | None = None) -> None:
    """A solid ``colour`` (one value per channel) image of ``size`` (width, height) at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)


def write_identity(folder: Path, colour: tuple[int, int, int], count: int, ext: str = ".png") -> None:
    """``count`` solid images of ``colour``, each a little brighter (+4 per image) so every file is unique."""
    for i in range(count):
        shaded = tuple(c + 4 * i for c in colour)
        write_image(folder / f"img{i:02d}{ext}", shaded, SIZES[i % len(SIZES)])
