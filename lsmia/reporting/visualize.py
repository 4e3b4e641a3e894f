"""Image grids: prior samples, and real images beside reconstructions with labels (byte-stable PNGs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid, save_image

from lsmia.attack.result import AttackResult
from lsmia.data.base import FaceData
from lsmia.utils import atomic_path


def save_png(images: torch.Tensor, path: Path | str, nrow: int, padding: int = 2) -> None:
    """Save float [0,1] or uint8 images as one PNG grid, atomically."""
    images = images.float().div(255.0) if images.dtype == torch.uint8 else images
    with atomic_path(path) as tmp:
        save_image(images, tmp, nrow=nrow, padding=padding, format="png")


GRID_PADDING = 4  # px between tiles: room for a 2 px frame around each reconstruction
FRAME = 2
HEADER, FOOTER, LABEL_GAP = 18, 16, 6
CORRECT, WRONG, INK = (27, 158, 60), (215, 40, 40), (34, 34, 34)
REAL_TITLE, FAKE_TITLE = "real", "reconstructions (best first)"
LEGEND = "frame: green = the evaluation model classifies it as the target, red = it does not"


@dataclass(frozen=True)
class GridLayout:
    """The tiles of a comparison grid, row by row, and what each tile shows."""

    images: torch.Tensor  # float [N, 3, s, s] in [0, 1]
    nrow: int  # tiles per row: n_real, a blank, n_fake
    n_real: int
    row_labels: list[str]
    sample_index: list[int]  # per tile: its index into result.final_* for a reconstruction, else -1


def comparison_layout(
    data: FaceData, result: AttackResult, n_real: int = 4, n_fake: int = 8, max_targets: int = 10
) -> GridLayout:
    """Per target a row: ``n_real`` training images of the class, a blank, then its best ``n_fake`` reconstructions."""
    size = result.final_images.shape[-1]
    rows, index, labels = [], [], []
    for cls in result.targets[:max_targets]:
        real = data.train.images[data.train.labels == cls][:n_real]
        real = (
            torch.nn.functional.interpolate(real.float(), size=(size, size), mode="bilinear", antialias=True).clamp(
                0, 255
            )
            if real.shape[-1] != size
            else real.float()
        )
        fake_idx = (result.final_targets == cls).nonzero().squeeze(1)
        fake_idx = fake_idx[result.final_scores[fake_idx].argsort(descending=True)][:n_fake]
        fake = result.final_images[fake_idx].float()
        blank = torch.full((1, 3, size, size), 255.0)
        pad_real = torch.full((n_real - len(real), 3, size, size), 255.0)
        pad_fake = torch.full((n_fake - len(fake), 3, size, size), 255.0)
        rows.append(torch.cat([real, pad_real, blank, fake, pad_fake]))
        index += [-1] * (n_real + 1) + fake_idx.tolist() + [-1] * (n_fake - len(fake))
        labels.append(_class_label(data, int(cls)))
    return GridLayout(torch.cat(rows).div(255.0), n_real + 1 + n_fake, n_real, labels, index)


def _class_label(data: FaceData, cls: int) -> str:
    name = data.class_names[cls] if 0 <= cls < len(data.class_names) else str(cls)
    return name if len(name) <= 12 else f"{name[:11]}…"


Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def _font(size: int = 11) -> Font:
    """Pillow's bundled font: the same glyphs on every machine, so the grid's bytes do not depend on fonts installed."""
    return ImageFont.load_default(size=size)


def labelled_grid(layout: GridLayout, correct: torch.Tensor | None = None) -> Image.Image:
    """The tiles with "real" / "reconstructions" over their columns and each row's identity at its left.

    ``correct`` (bool per final sample): a green frame around each reconstruction the evaluation model classifies as
    its target, a red one around the others, and a legend below.
    """
    tiles = make_grid(layout.images, nrow=layout.nrow, padding=GRID_PADDING, pad_value=1.0)
    body = Image.fromarray(tiles.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())
    font = _font()
    left = label_margin(layout)
    width = left + body.width
    if correct is not None:
        width = max(width, _text_width(LEGEND, font) + 2 * LABEL_GAP)
    canvas = Image.new("RGB", (width, HEADER + body.height + (FOOTER if correct is not None else 0)), "white")
    canvas.paste(body, (left, HEADER))
    draw = ImageDraw.Draw(canvas)
    _draw_titles(draw, layout, left, font)
    _draw_row_labels(draw, layout, font)
    if correct is not None:
        _draw_frames(draw, layout, left, correct)
        draw.text((LABEL_GAP, HEADER + body.height + 2), LEGEND, fill=INK, font=font)
    return canvas


def _text_width(text: str, font: Font) -> int:
    return int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=font))


def label_margin(layout: GridLayout) -> int:
    """The width of the band left of the tiles that holds each row's identity."""
    font = _font()
    return max(_text_width(label, font) for label in layout.row_labels) + 2 * LABEL_GAP


def _tile_step(layout: GridLayout) -> int:
    return int(layout.images.shape[-1]) + GRID_PADDING


def _draw_titles(draw: ImageDraw.ImageDraw, layout: GridLayout, left: int, font: Font) -> None:
    step = _tile_step(layout)
    real_centre = left + GRID_PADDING / 2 + layout.n_real * step / 2
    fake_centre = left + GRID_PADDING / 2 + (layout.n_real + 1 + (layout.nrow - layout.n_real - 1) / 2) * step
    for text, centre in ((REAL_TITLE, real_centre), (FAKE_TITLE, fake_centre)):
        draw.text((centre, HEADER / 2), text, fill=INK, font=font, anchor="mm")


def _draw_row_labels(draw: ImageDraw.ImageDraw, layout: GridLayout, font: Font) -> None:
    step = _tile_step(layout)
    for row, label in enumerate(layout.row_labels):
        draw.text(
            (LABEL_GAP, HEADER + GRID_PADDING + row * step + (step - GRID_PADDING) / 2),
            label,
            fill=INK,
            font=font,
            anchor="lm",
        )


def _draw_frames(draw: ImageDraw.ImageDraw, layout: GridLayout, left: int, correct: torch.Tensor) -> None:
    step, size = _tile_step(layout), int(layout.images.shape[-1])
    for tile, sample in enumerate(layout.sample_index):
        if sample < 0:
            continue
        x = left + GRID_PADDING + (tile % layout.nrow) * step
        y = HEADER + GRID_PADDING + (tile // layout.nrow) * step
        colour = CORRECT if bool(correct[sample]) else WRONG
        draw.rectangle((x - FRAME, y - FRAME, x + size + FRAME - 1, y + size + FRAME - 1), outline=colour, width=FRAME)


def save_image_atomic(image: Image.Image, path: Path | str) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def save_attack_grid(data: FaceData, result: AttackResult, path: Path | str, **kwargs) -> None:
    """The labelled real-vs-reconstruction grid of an attack (the attack stage's ``reconstructions.png``)."""
    save_image_atomic(labelled_grid(comparison_layout(data, result, **kwargs)), path)


def save_judged_grid(data: FaceData, result: AttackResult, correct: torch.Tensor, path: Path | str, **kwargs) -> None:
    """The labelled grid with each reconstruction framed by the evaluation model's verdict (``correct`` per sample)."""
    save_image_atomic(labelled_grid(comparison_layout(data, result, **kwargs), correct), path)
