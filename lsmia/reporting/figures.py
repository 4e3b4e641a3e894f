"""The look of every lsmia figure: palettes (per alpha, per defense, per series), resolution, font sizes and
figure sizes, in one place.

The report (lsmia.reporting.report), the defense fronts (lsmia.reporting.defense_comparison), the toy (lsmia.experiments.toy) and the sweep's Pareto
plot (lsmia.reporting.sweep_tables) take their style from here. No torch, and matplotlib only inside the function that
builds a colormap.

The reconstruction grids keep their frame colours and font in lsmia.reporting.visualize: the attack stage draws them, and a
file added to its imports would change its code digest, re-running every attack under ``dvc repro`` and dropping
every cached attack of the ablations for PNGs that stay the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.colors import Colormap, Normalize

Size = tuple[float, float]  # a figure's (width, height) in inches

# --------------------------------------------------------------------------- resolution (dots per inch)

REPORT_DPI = 110  # the study report's figures
STABLE_DPI = 100  # the byte-stable figures: the defense fronts and the toy
SWEEP_DPI = 120  # the sweep's Pareto plot
STABLE_METADATA: dict[str, Any] = {"Software": None}  # no matplotlib version in the PNG: bytes stable across releases

# --------------------------------------------------------------------------- font sizes (points)

LEGEND_FONT = 8
ANNOTATION_FONT = 8  # a point's label (the trade-off's alphas)
SMALL_ANNOTATION_FONT = 7  # a point's label where many crowd (the sweep's trials)
PANEL_TITLE_FONT = 9  # a title over one of several narrow panels (leakage, toy)
TITLE_FONT = 10  # a title over a wide panel (distributions, diagnostics)

# --------------------------------------------------------------------------- figure sizes (inches)

ACCURACY_SIZE: Size = (6.4, 4.0)
TRADEOFF_SIZE: Size = (6.0, 4.6)
DIAGNOSTICS_SIZE: Size = (11.0, 3.4)
FRONTS_SIZE: Size = (6.4, 4.8)
PARETO_SIZE: Size = (6, 4.5)
LEAKAGE_PANEL = 3.3  # a leakage panel's width and height


def verdict_size(rows: int) -> Size:
    """The verdict's forest plot: a band of height per verdict row, room for the legend below."""
    return (7.0, 0.55 * rows + 1.9)


def leakage_size(panels: int) -> Size:
    """A row of ``panels`` square leakage panels."""
    return (LEAKAGE_PANEL * panels, LEAKAGE_PANEL)


def distributions_size(alphas: int) -> Size:
    """Two rows of violins, one per alpha: wider with more alphas."""
    return (max(6.4, 0.9 * alphas + 1.5), 6.4)


def toy_size(panels: int) -> Size:
    """One square toy panel per alpha, and room for the colour bar."""
    return (4.2 * panels + 1.0, 4.6)


# --------------------------------------------------------------------------- colours

INK = "#333333"  # dark lines and marker edges (test accuracy, violin edges, the alpha = 0 line)
MEDIAN_INK = "#111111"  # a violin's median
GUIDE = "#999999"  # the alpha = 0 guide and the chance level
REAL_IMAGES = "#555555"  # the attribute accuracy on real images
LEAKAGE = "#1b7837"  # the leakage metrics' points
SERIES = {"test_acc": INK, "final_acc1": "#d95f02", "final_acc5": "#7570b3"}  # the accuracy figure's lines
ALPHA_ENDS = ("#2166ac", "#cccccc", "#b2182b")  # the alpha colormap: negative, zero, positive

DEFENSE_PALETTE = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
UNDEFENDED = "black"  # the undefended model's star

TOY_CLASSES = ("#e41a1c", "#ffffff", "#bbbbbb")  # the toy's training points per class (the target first)
TOY_ATTACK = "#ff7f00"  # the toy attack's path and start
TOY_END = "#ffff33"  # the toy attack's end
TOY_CONFIDENCE_MAP = "viridis"  # the target's confidence behind the toy's points
EDGE = "k"  # marker edges on the toy and the sweep's plot

# the verdict's forest plot: one marker per ratio of a row (lsmia.reporting.verdict.FOREST_SERIES)
VERDICT_SERIES = {
    "ratio_published": ("#999999", "o"),
    "ratio_adaptive": ("#2166ac", "s"),
    "ratio_worst_case": ("#b2182b", "D"),
    "ratio_until_accepted": ("#e08214", "^"),
}

SWEEP_TRIALS = "0.6"
SWEEP_FRONT = "tab:red"
SWEEP_RECOMMENDED = "gold"


def defense_colour(index: int) -> str:
    """The colour of the ``index``-th defense of a comparison (the palette repeats after eight)."""
    return DEFENSE_PALETTE[index % len(DEFENSE_PALETTE)]


def alpha_colors(alphas: list[float]) -> tuple[Colormap, Normalize]:
    """A diverging colormap centred on alpha = 0 (blue negative, red positive) and its norm over ``alphas``."""
    from matplotlib import colors

    low, high = min(min(alphas), -1e-3), max(max(alphas), 1e-3)
    return colors.LinearSegmentedColormap.from_list("alpha", list(ALPHA_ENDS)), colors.TwoSlopeNorm(
        vmin=low, vcenter=0.0, vmax=high
    )


def alpha_line_colour(cmap: Colormap, norm: Normalize, alpha: float) -> Any:
    """An alpha's colour for a line: the map's grey centre is too faint for one, so alpha = 0 is drawn in ink."""
    return cmap(norm(alpha)) if alpha != 0 else INK
