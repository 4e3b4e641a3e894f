"""Figure styling lives in lsmia.reporting.figures: the palettes behave, and the plotting modules spell no style of their own."""

from __future__ import annotations

import re

import pytest

from lsmia.reporting import figures
from tests.helpers.paths import ROOT

PLOTTING_MODULES = (
    "lsmia/reporting/report.py",
    "lsmia/reporting/defense_comparison.py",
    "lsmia/experiments/toy.py",
    "lsmia/reporting/sweep_tables.py",
)
OWN_STYLE = re.compile(r'"#[0-9a-fA-F]{6}"|\b(?:dpi|fontsize|figsize)=[\d(]|set_fontsize\(\d')


def test_alpha_colours_diverge_around_zero() -> None:
    cmap, norm = figures.alpha_colors([-0.1, 0.0, 0.3])
    assert norm(0.0) == 0.5 and norm(-0.1) == 0.0 and norm(0.3) == 1.0
    low, high = cmap(norm(-0.1)), cmap(norm(0.3))
    assert low[2] > low[0] and high[0] > high[2]  # blue for negative alpha, red for positive
    assert figures.alpha_line_colour(cmap, norm, 0.0) == figures.INK  # the grey centre is too faint for a line
    norm = figures.alpha_colors([0.1])[1]
    assert norm(0.0) == 0.5 and norm(-1e-3) == 0.0  # a one-sided study still has its centre at alpha = 0


def test_defense_colours_repeat_after_the_palette() -> None:
    count = len(figures.DEFENSE_PALETTE)
    assert [figures.defense_colour(i) for i in range(count)] == list(figures.DEFENSE_PALETTE)
    assert figures.defense_colour(count + 1) == figures.defense_colour(1)


@pytest.mark.parametrize("module", PLOTTING_MODULES)
def test_plotting_modules_take_their_style_from_figures(module: str) -> None:
    found = [
        line.strip() for line in (ROOT / module).read_text(encoding="utf-8").splitlines() if OWN_STYLE.search(line)
    ]
    assert not found, f"{module} styles a figure itself (move it to lsmia/reporting/figures.py): {found}"
