"""The study report: one folder with an ``index.html``, its figures as PNG files, and nothing else.

Every figure is written as a PNG beside ``index.html`` and also embedded in it as a base64
data URI (each embedded image links to its file), so the HTML file works on its own when
mailed or uploaded, and the folder serves the PNGs for slides. The folder is built in a
temporary directory beside ``out_dir`` and swapped in at the end: an interrupted run leaves
the previous report untouched.

The markup is in Jinja2 templates (``lsmia/templates/report/``, package data): this module computes the numbers,
tables and figures and hands them to the templates as plain values, which the templates escape; only HTML
rendered here on purpose (a section's body, an image's data URI) is passed as :class:`Markup`.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import torch
from markupsafe import Markup
from matplotlib.figure import Figure  # no pyplot: Agg canvas, no global backend state

from lsmia.attack.result import AttackResult
from lsmia.data.base import FaceData
from lsmia.errors import LsmiaError
from lsmia.models.classifiers import load_classifier
from lsmia.models.inference import predict_logits
from lsmia.paths import StudyPaths, run_tag
from lsmia.reporting import ablation_tables as tables
from lsmia.reporting import defense_comparison, metric_registry
from lsmia.reporting import figures as style
from lsmia.reporting.formatting import is_number, number, stat_text
from lsmia.reporting.stats import effects, per_alpha, verdict
from lsmia.reporting.visualize import save_judged_grid
from lsmia.utils import load_json, new_file_mode, save_json

REPO_ROOT = Path(__file__).resolve().parents[1]

ID_KEYS = ("alpha", "seed")

# --------------------------------------------------------------------------- metrics


Cells = Sequence[tuple[float, int]]  # the (alpha, seed) pairs of the study


def collect_metrics(metrics_dir: Path, cells: Cells | None = None) -> list[dict[str, Any]]:
    """The metrics of exactly ``cells`` (those evaluated; see :func:`missing_cells`), or without ``cells`` every
    ``*.json`` in ``metrics_dir``; each a dict with float ``alpha`` and int ``seed``, sorted by both.

    A study reads its own cells, never whatever files lie in the folder: a row of an alpha that was removed
    from ``study.alphas`` (computed with other settings) must not appear next to the current ones."""
    metrics_dir = Path(metrics_dir)
    if cells is not None:
        files = [metrics_dir / f"{run_tag(a, s)}.json" for a, s in cells]
        files = [f for f in files if f.is_file()]
    else:
        files = sorted(metrics_dir.glob("*.json")) if metrics_dir.is_dir() else []
    if not files:
        raise LsmiaError(f"no metrics files in {metrics_dir}: run 'lsmia evaluate' (or dvc repro) first")
    rows = [_read_metrics_file(path) for path in files]
    return sorted(rows, key=lambda row: (row["alpha"], row["seed"]))


def missing_cells(metrics_dir: Path, cells: Cells | None) -> list[tuple[float, int]]:
    """The cells of the study that have no metrics file yet (the report skips and names them)."""
    return [(a, s) for a, s in cells or [] if not (Path(metrics_dir) / f"{run_tag(a, s)}.json").is_file()]


def _read_metrics_file(path: Path) -> dict[str, Any]:
    try:
        row = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise LsmiaError(
            f"metrics file {path} is not valid JSON ({err.msg}): delete it and re-run 'lsmia evaluate'"
        ) from None
    if not isinstance(row, dict) or not all(is_number(row.get(key)) for key in ID_KEYS):
        raise LsmiaError(f"metrics file {path} has no numeric alpha and seed: delete it and re-run 'lsmia evaluate'")
    return {**row, "alpha": float(row["alpha"]), "seed": int(row["seed"])}


def metric_keys(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Numeric metric names present in any row: known ones in display order, then the rest alphabetically."""
    present = {key for row in rows for key, value in row.items() if is_number(value) and key not in ID_KEYS}
    known = [key for key in metric_registry.report_order() if key in present]
    return known + sorted(present - set(known))


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per alpha (ascending): ``{"alpha", "seeds", "metrics": {name: {"mean", "ci95", "n"}}}`` (lsmia.reporting.stats.per_alpha
    over every metric present)."""
    return per_alpha(rows, metric_keys(rows))


# --------------------------------------------------------------------------- figures


@dataclass
class FigureFile:
    name: str
    title: str
    caption: str = ""


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=style.REPORT_DPI, bbox_inches="tight")


def _series(summaries: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    points = [
        (s["alpha"], s["metrics"][key]["mean"], s["metrics"][key]["ci95"]) for s in summaries if key in s["metrics"]
    ]
    alphas, means, cis = (
        (np.array(col, dtype=float) for col in zip(*points, strict=False)) if points else (np.array([]),) * 3
    )
    return alphas, means, np.nan_to_num(cis, nan=0.0)


def _plot_metric(
    ax, rows: list[dict[str, Any]], summaries: list[dict[str, Any]], key: str, color: str, label: str | None = None
) -> None:
    """Mean over seeds with 95 % CI error bars, and every seed as a faint point."""
    seed_points = [(row["alpha"], row[key]) for row in rows if is_number(row.get(key))]
    if seed_points:
        ax.scatter(*zip(*seed_points, strict=False), color=color, alpha=0.25, s=14, linewidths=0)
    alphas, means, cis = _series(summaries, key)
    ax.errorbar(alphas, means, yerr=cis, color=color, marker="o", ms=5, capsize=3, label=label)


def _present(rows: list[dict[str, Any]], key: str) -> bool:
    return any(is_number(row.get(key)) for row in rows)


def plot_accuracy(rows: list[dict[str, Any]], summaries: list[dict[str, Any]], path: Path) -> bool:
    series = [
        ("test_acc", "test accuracy", style.SERIES["test_acc"]),
        ("final_acc1", "attack acc@1", style.SERIES["final_acc1"]),
        ("final_acc5", "attack acc@5", style.SERIES["final_acc5"]),
    ]
    series = [s for s in series if _present(rows, s[0])]
    if not series:
        return False
    fig = Figure(figsize=style.ACCURACY_SIZE)
    ax = fig.subplots()
    for key, label, color in series:
        _plot_metric(ax, rows, summaries, key, color, label)
    ax.axvline(0.0, color=style.GUIDE, lw=0.8, ls=":")
    ax.set(xlabel="label smoothing alpha", ylabel="accuracy", ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    _save(fig, path)
    return True


def plot_leakage(rows: list[dict[str, Any]], summaries: list[dict[str, Any]], path: Path) -> bool:
    panels = [key for key in ("delta_eval", "fid_eval_features", "xi", "attribute_acc") if _present(rows, key)]
    if not panels:
        return False
    fig = Figure(figsize=style.leakage_size(len(panels)))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, key in zip(axes, panels, strict=False):
        _plot_metric(ax, rows, summaries, key, style.LEAKAGE)
        if key == "attribute_acc":
            _reference_line(ax, summaries, "attribute_chance", "chance", style.GUIDE, "--")
            _reference_line(ax, summaries, "attribute_acc_real", "real images", style.REAL_IMAGES, ":")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(frameon=False, fontsize=style.LEGEND_FONT)
        ax.axvline(0.0, color=style.GUIDE, lw=0.8, ls=":")
        ax.set(title=f"{metric_registry.label(key)}\n(higher = {metric_registry.higher_means(key)})", xlabel="alpha")
        ax.title.set_fontsize(style.PANEL_TITLE_FONT)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return True


def _reference_line(ax, summaries: list[dict[str, Any]], key: str, label: str, color: str, style: str) -> None:
    means = [s["metrics"][key]["mean"] for s in summaries if key in s["metrics"]]
    if means:
        ax.axhline(float(np.nanmean(means)), color=color, ls=style, lw=1.2, label=label)


def plot_tradeoff(rows: list[dict[str, Any]], path: Path) -> bool:
    points = [row for row in rows if _present([row], "test_acc") and _present([row], "final_acc1")]
    if not points:
        return False
    cmap, norm = style.alpha_colors([row["alpha"] for row in rows])
    fig = Figure(figsize=style.TRADEOFF_SIZE)
    ax = fig.subplots()
    x, y = [row["test_acc"] for row in points], [row["final_acc1"] for row in points]
    dots = ax.scatter(
        x, y, c=[row["alpha"] for row in points], cmap=cmap, norm=norm, s=46, edgecolors=style.INK, linewidths=0.6
    )
    for row in points:
        ax.annotate(
            f"{row['alpha']:g}",
            (row["test_acc"], row["final_acc1"]),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=style.ANNOTATION_FONT,
        )
    fig.colorbar(dots, ax=ax, label="alpha")
    ax.set(xlabel="test accuracy (utility)", ylabel="attack acc@1 (leakage)")
    ax.grid(alpha=0.3)
    _save(fig, path)
    return True


def private_test_outputs(
    paths: StudyPaths, rows: list[dict[str, Any]], device: torch.device
) -> dict[float, dict[str, np.ndarray]]:
    """Per alpha, pooled over its seeds' target models: max-softmax confidence and logit L2 norm of the
    private test images (empty without the data file; runs without a model are skipped)."""
    if not paths.data_file.exists():
        return {}
    data = FaceData.load(paths.data_file)
    found: dict[float, dict[str, list[np.ndarray]]] = {}
    for row in rows:
        model_file = paths.target_dir(row["alpha"], row["seed"]) / "model.pt"
        if not model_file.exists():
            continue
        model = load_classifier(model_file, num_classes=data.num_classes, what="target model").to(device)
        logits = predict_logits(model.to(device), data.test.images)
        entry = found.setdefault(row["alpha"], {"confidence": [], "logit_norm": []})
        entry["confidence"].append(logits.softmax(1).max(1).values.numpy())
        entry["logit_norm"].append(logits.norm(dim=1).numpy())
    return {alpha: {k: np.concatenate(v) for k, v in entry.items()} for alpha, entry in sorted(found.items())}


def plot_distributions(outputs: dict[float, dict[str, np.ndarray]], path: Path) -> bool:
    if not outputs:
        return False
    alphas = list(outputs)
    cmap, norm = style.alpha_colors(alphas)
    fig = Figure(figsize=style.distributions_size(len(alphas)))
    axes = fig.subplots(2, 1, sharex=True)
    for ax, key, label in zip(
        axes, ("confidence", "logit_norm"), ("max softmax confidence", "logit L2 norm"), strict=False
    ):
        for position, alpha in enumerate(alphas):
            _violin(ax, outputs[alpha][key], position, cmap(norm(alpha)))
        ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set(ylabel=label, title=f"{label} on the private test images")
        ax.title.set_fontsize(style.TITLE_FONT)
        ax.grid(alpha=0.3, axis="y")
    axes[-1].set_xlabel("alpha")
    fig.tight_layout()
    _save(fig, path)
    return True


def _violin(ax, values: np.ndarray, position: int, color) -> None:
    """A violin with its median; a flat line where a density cannot be estimated (constant values)."""
    if len(values) > 1 and np.ptp(values) > 1e-9:
        parts = ax.violinplot([values], positions=[position], widths=0.8, showmedians=True, showextrema=False)
        for body in parts["bodies"]:
            body.set_facecolor(color)
            body.set_edgecolor(style.INK)
            body.set_alpha(0.75)
        parts["cmedians"].set_color(style.MEDIAN_INK)
    else:
        ax.hlines(float(np.median(values)), position - 0.3, position + 0.3, color=color, lw=3)


DIAGNOSTIC_PANELS = (
    ("loss", "attack loss"),
    ("target_confidence", "target confidence (augmented batch)"),
    ("grad_cosine", "cosine of consecutive latent gradients"),
)
DIAGNOSTICS_CAPTION = (
    "Per attack step, mean over all optimised latents (and over the seeds of each alpha): the attack's loss, "
    "the target's confidence in the attacked class on the step's cropped images, and the cosine similarity "
    "between a latent's gradient and its gradient one step earlier. The paper explains negative label "
    "smoothing's protection by unstable gradient directions during the attack (its Fig. 6b): it predicts a "
    "lower gradient similarity for alpha < 0 than for alpha ≥ 0."
)


def diagnostic_curves(paths: StudyPaths, rows: list[dict[str, Any]]) -> dict[float, dict[str, np.ndarray]]:
    """Per alpha, each diagnostic curve of its runs' ``attack.pt`` averaged over seeds (cut to the shortest).

    Runs without an attack file, or attacks saved without diagnostics, are skipped.
    """
    found: dict[float, dict[str, list[list[float]]]] = {}
    for row in rows:
        attack_file = paths.attack_dir(row["alpha"], row["seed"]) / "attack.pt"
        curves = AttackResult.load(attack_file).meta.get("diagnostics") if attack_file.exists() else None
        if not curves:
            continue
        entry = found.setdefault(row["alpha"], {key: [] for key, _ in DIAGNOSTIC_PANELS})
        for key, _ in DIAGNOSTIC_PANELS:
            entry[key].append(list(curves.get(key, [])))
    return {alpha: {key: _mean_curve(runs) for key, runs in entry.items()} for alpha, entry in sorted(found.items())}


def _mean_curve(runs: list[list[float]]) -> np.ndarray:
    length = min(len(run) for run in runs)
    return np.mean([run[:length] for run in runs], axis=0) if length else np.array([])


def diagnostics_figure(curves: dict[float, dict[str, np.ndarray]], path: Path) -> bool:
    """Three panels against the attack step, one line per alpha; False when no attack recorded diagnostics."""
    if not any(len(values) for entry in curves.values() for values in entry.values()):
        return False
    cmap, norm = style.alpha_colors(list(curves))
    fig = Figure(figsize=style.DIAGNOSTICS_SIZE)
    axes = fig.subplots(1, len(DIAGNOSTIC_PANELS))
    for ax, (key, label) in zip(axes, DIAGNOSTIC_PANELS, strict=False):
        first_step = 1 if key == "grad_cosine" else 0  # the cosine needs a previous step
        for alpha, entry in curves.items():
            values = entry[key]
            color = style.alpha_line_colour(cmap, norm, alpha)
            steps = np.arange(first_step, first_step + len(values))
            ax.plot(steps, values, color=color, lw=1.6, label=f"α = {alpha:g}")
        ax.set(xlabel="attack step", title=label)
        ax.title.set_fontsize(style.TITLE_FONT)
        ax.grid(alpha=0.3)
    axes[0].legend(frameon=False, fontsize=style.LEGEND_FONT)
    fig.tight_layout()
    _save(fig, path)
    return True


# --------------------------------------------------------------------------- html

# Package data the report reads at run time, under lsmia/. lsmia.experiments.graph reads this tuple from the source: the
# templates are the report stage's code (dvc.yaml lists them), so editing one re-runs the report.
PACKAGE_DATA = ("templates/report",)


@cache
def templates() -> jinja2.Environment:
    """The report's Jinja2 templates: every value escaped unless passed as :class:`Markup`, an undefined name an
    error rather than an empty string."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("lsmia", PACKAGE_DATA[0]),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(template: str, **context: Any) -> Markup:
    """``template`` rendered with ``context``: HTML, to be placed into another template as it is."""
    return Markup(templates().get_template(template).render(**context))


def macro(name: str, *args: Any) -> Markup:
    """A macro of ``macros.html.j2`` (a missing note, a figure, a section) called from Python."""
    return Markup(getattr(templates().get_template("macros.html.j2").module, name)(*args))


@dataclass(frozen=True)
class Section:
    """A part of the page: its rendered body and, unless None, the heading it starts with (an ``<h2>`` with the
    anchor that the contents link to)."""

    body: Markup
    heading: str | None = None
    anchor: str = ""


@dataclass(frozen=True)
class Table:
    """A table of strings; each row's first cell is its header."""

    columns: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass(frozen=True)
class Stat:
    """A ``mean ± interval`` cell, with its number of seeds beside it unless ``n`` is None."""

    text: str
    n: int | None = None


@dataclass(frozen=True)
class FigureView:
    """A figure as the page shows it: the PNG as a data URI, linking to its file beside ``index.html``."""

    href: str
    src: Markup  # data:image/png;base64,...: nothing in it to escape, so the long string is not scanned
    alt: str
    caption: str
    width: int | None = None


def missing_section(heading: str | None, what: str) -> Section:
    return Section(macro("missing", what), heading)


def summary_table(summaries: list[dict[str, Any]], keys: list[str]) -> Markup:
    columns = [(f"{s['alpha']:g}", len(s["seeds"])) for s in summaries]
    rows = [
        (key, metric_registry.label(key), metric_registry.higher_means(key), [_summary_cell(s, key) for s in summaries])
        for key in keys
    ]
    return render("summary_table.html.j2", columns=columns, rows=rows)


def _summary_cell(summary: dict[str, Any], key: str) -> Stat | None:
    stat = summary["metrics"].get(key)
    if stat is None:
        return None
    return Stat(stat_text(stat, None), stat["n"] if stat["n"] != len(summary["seeds"]) else None)


def raw_table(rows: list[dict[str, Any]], keys: list[str]) -> Markup:
    """One row per metric, one column per run (alpha, seed): tall rather than wide, so it fits the page."""
    columns = [(f"{row['alpha']:g}", row["seed"]) for row in rows]
    body = [(key, metric_registry.label(key), [number(row.get(key)) for row in rows]) for key in keys]
    return render("raw_table.html.j2", columns=columns, rows=body)


EFFECT_KEYS = ("acc1_gain", "acc1_ratio", "test_acc_cost", "delta_eval_gain")  # the table's columns, in order


def _effect_cell(stat: dict[str, Any]) -> Stat:
    return Stat(stat_text(stat, None), stat["n"] or None)


def effect_table(rows: list[dict[str, Any]]) -> Markup:
    """The paper's claims per alpha, paired by seed against alpha = 0 (lsmia.reporting.stats.effects)."""
    found = effects(rows) if any(row["alpha"] == 0.0 for row in rows) else []
    if not found:
        return macro("missing", "no alpha = 0 run to compare with")
    table = [(f"{e['alpha']:g}", [_effect_cell(e[key]) for key in EFFECT_KEYS], verdict(e)) for e in found]
    return render("effect_table.html.j2", rows=table)


VERDICT_HEADING = "The verdict: PPA as published against an attacker who knows the defense"


def verdict_section(ablation_files: Sequence[Path], folder: Path) -> Section | None:
    """The verdicts (``lsmia verdict``: verdict.json beside an included ablation's results), first in the report,
    each as its forest plot (drawn into ``folder``) and its table; None when no included ablation has one."""
    from lsmia.reporting import verdict as verdicts

    found = []
    for path in ablation_files:
        source = _results_json(path).with_name("verdict.json")
        if source.is_file():
            rows = load_json(source, what="verdict", keys=("rows",), fix="re-run 'lsmia verdict'")["rows"]
            name = source.parent.name
            figure = verdicts.plot(rows, folder / f"verdict_{name}.png")
            view = figure_view(folder, FigureFile(figure.name, name, VERDICT_CAPTION))
            found.append((name, view, Table(verdicts.COLUMNS, verdicts.table_rows(rows))))
    if not found:
        return None
    return Section(render("verdict.html.j2", verdicts=found, note=verdicts.NOTE), VERDICT_HEADING)


VERDICT_CAPTION = (
    "Each row: a defense's attack acc@1 over the undefended target's, per attacker, paired by seed (95 % interval); "
    "left of the dotted line the attack is halved, at the dashed line nothing is protected. A negative control "
    "must sit at 1 for the adaptive attacker."
)


def verdict_html(ablation_files: Sequence[Path], folder: Path) -> Markup:
    """:func:`verdict_section` as HTML; empty without one."""
    section = verdict_section(ablation_files, folder)
    return macro("section", section) if section else Markup("")


def ablations_section(ablation_files: Sequence[Path]) -> Section:
    """The measured ablations (``lsmia ablate``): the paper's claims across them, then each plan's tables, from the
    ``results.json`` beside the ``results.md`` named."""
    body = render(
        "ablations.html.j2", claims=claims_table(ablation_files), plans=[ablation_plan(p) for p in ablation_files]
    )
    return Section(body, "Measured ablations")


RESULTS_KEYS = ("variants", "rows")  # what 'lsmia ablate' writes into results.json
RESULTS_FIX = "pass the results.md or results.json of 'lsmia ablate' (out/ablations/<name>/) or re-run it"


def _results_json(results_file: Path) -> Path:
    return results_file if results_file.suffix == ".json" else results_file.with_name("results.json")


def claims_table(ablation_files: Sequence[Path]) -> Table | None:
    """The paper's claims across all included ablations (lsmia.reporting.ablation_tables.claim_rows); None without any."""
    plans = {
        path.parent.name: load_json(_results_json(path), what="ablation results", keys=RESULTS_KEYS, fix=RESULTS_FIX)[
            "variants"
        ]
        for path in ablation_files
        if _results_json(path).is_file()
    }
    return Table(tables.CLAIM_COLUMNS, tables.claim_rows(plans)) if plans else None


@dataclass(frozen=True)
class AblationPlan:
    """One plan of ``lsmia ablate`` as the report shows it; ``missing`` says why there is nothing else."""

    name: str
    missing: str = ""
    variants: list[tuple[str, str]] = field(default_factory=list)  # (name, its overrides in words)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def ablation_plan(results_file: Path) -> AblationPlan:
    """One plan's paired-effect and per-variant summary tables, with its variants and seeds, from its
    ``results.json`` (``results_file`` itself, or the one beside the ``results.md`` named)."""
    name, results = results_file.parent.name, _results_json(results_file)
    if not results.is_file():
        return AblationPlan(name, f"no {results} beside {results_file.name}: re-run 'lsmia ablate' for plan {name}")
    record = load_json(results, what="ablation results", keys=RESULTS_KEYS, fix=RESULTS_FIX)
    variants = dict(sorted(record["variants"].items(), key=lambda item: item[0] != "baseline"))
    overrides = [(v, _overrides(spec.get("overrides", {}))) for v, spec in variants.items()]
    seeds = sorted({int(row["seed"]) for row in record.get("rows", [])})
    notes = [tables.seeds_note(seeds), tables.missing_note(record.get("missing", []))]
    return AblationPlan(
        name,
        variants=overrides,
        tables=[
            Table(tables.EFFECT_COLUMNS, tables.effect_rows(variants)),
            Table(tables.summary_columns(), tables.summary_rows(variants)),
        ],
        notes=[note for note in notes if note],
    )


def _overrides(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{key} = {value}" for key, value in overrides.items()) or "the default settings"


def ablation_html(results_file: Path) -> Markup:
    """:func:`ablation_plan` as HTML."""
    return render("ablation.html.j2", plan=ablation_plan(results_file))


DEFENSES_HEADING = "Defenses at equal accuracy"
DEFENSES_HOWTO = (
    "no defense comparison at {path}: run 'lsmia ablate configs/defenses.yaml' and "
    "'lsmia compare-defenses out/ablations/defenses/results.json', then 'lsmia report --defenses {path}'"
)
DEFENSES_CAPTION = (
    "Test accuracy against attack acc@1, each model against its strongest attack loss (95 % intervals over seeds); "
    "steps: each defense's Pareto front with the undefended model (black star) as strength 0; hollow: off the front."
)


def defenses_section(source: Path, folder: Path) -> Section:
    """The equal-accuracy comparison of defenses (lsmia.reporting.defense_comparison): the fronts figure and the worst-case
    table, from ``compare.json`` (its ``fronts.png`` beside it) or, without one, computed from the ablation's
    ``results.json`` beside it; absent: how to produce it."""
    source = Path(source)
    compare_file = source if source.name != "results.json" else source.with_name("compare.json")
    results_file = source if source.name == "results.json" else source.with_name("results.json")
    figure = folder / "defenses_fronts.png"
    record = _defense_record(compare_file, results_file, figure)
    if record is None:
        return missing_section(DEFENSES_HEADING, DEFENSES_HOWTO.format(path=source))
    rows = defense_comparison.table_cells(record["table"])
    body = render(
        "defenses.html.j2",
        source=str(compare_file if compare_file.is_file() else results_file),
        compare_file=str(compare_file),
        figure=figure_view(folder, FigureFile(figure.name, DEFENSES_HEADING, DEFENSES_CAPTION))
        if figure.is_file()
        else None,
        table=Table(defense_comparison.TABLE_COLUMNS, rows) if rows else None,
        winners=defense_comparison.winner_lines(record["winners"]),
    )
    return Section(body, DEFENSES_HEADING)


def _defense_record(compare_file: Path, results_file: Path, figure: Path) -> dict[str, Any] | None:
    """The comparison from ``compare_file`` (its fronts.png copied to ``figure``, or drawn from ``results_file``)
    or computed from ``results_file`` (drawn to ``figure``); None without either file."""
    if compare_file.is_file():
        record = load_json(compare_file, what="defense comparison")
        if not isinstance(record, dict) or not {"table", "winners"} <= record.keys():
            raise LsmiaError(f"{compare_file} is not the compare.json of 'lsmia compare-defenses': re-run that command")
        drawn = compare_file.with_name("fronts.png")
        if drawn.is_file():
            shutil.copyfile(drawn, figure)
        elif results_file.is_file():
            comparison = defense_comparison.compare(defense_comparison.load_results(results_file), record.get("levels"))
            defense_comparison.plot_fronts(comparison, figure)
        return record
    if results_file.is_file():
        comparison = defense_comparison.compare(defense_comparison.load_results(results_file))
        defense_comparison.plot_fronts(comparison, figure)
        return defense_comparison.to_json(comparison, str(results_file))
    return None


def defenses_html(source: Path, folder: Path) -> Markup:
    """:func:`defenses_section` as HTML."""
    return macro("section", defenses_section(source, folder))


def _data_uri(path: Path) -> Markup:
    return Markup("data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii"))


def figure_view(folder: Path, figure: FigureFile, width: int | None = None) -> FigureView:
    """The PNG ``figure.name`` in ``folder``, to be embedded as a data URI linking to its file."""
    return FigureView(figure.name, _data_uri(folder / figure.name), figure.title, figure.caption, width)


def figure_section(heading: str, folder: Path, figure: FigureFile) -> Section:
    return Section(macro("figure", figure_view(folder, figure)), heading)


def header_section(rows: list[dict[str, Any]], data_summary: dict[str, Any]) -> Section:
    """The study at a glance, and whether it is a smoke-scale run (fewer than 3 seeds or 200 identities)."""
    alphas = sorted({row["alpha"] for row in rows})
    seeds = sorted({row["seed"] for row in rows})
    targets = sorted({int(row["num_targets"]) for row in rows if is_number(row.get("num_targets"))})
    facts = [
        ("data set", data_summary.get("source") or "unknown"),
        ("identities (classes)", data_summary.get("num_classes", "unknown")),
        ("image size", f"{data_summary['image_size']} px" if "image_size" in data_summary else "unknown"),
        (
            "train / test / public images",
            " / ".join(str(data_summary.get(k, "?")) for k in ("train_images", "test_images", "public_images")),
        ),
        ("attacked identities per run", ", ".join(map(str, targets)) or "unknown"),
        ("alphas", ", ".join(f"{a:g}" for a in alphas)),
        ("seeds", f"{', '.join(map(str, seeds))} ({len(seeds)})"),
        ("runs (alpha × seed)", len(rows)),
    ]
    smoke = len(seeds) < 3 or int(data_summary.get("num_classes", 0) or 0) < 200
    return Section(render("header.html.j2", facts=[(k, str(v)) for k, v in facts], smoke=smoke))


@dataclass(frozen=True)
class Provenance:
    """Where the numbers come from."""

    built: str  # date and time, UTC
    commit: str  # short hash, and whether the working tree had uncommitted changes
    params_digest: str  # sha256 of params.yaml, first 12 hex digits
    machine: str


def provenance() -> Provenance:
    """The commit, params digest, date and machine of this build."""
    import datetime
    import hashlib
    import platform
    import subprocess

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO_ROOT, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = " (uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    params = REPO_ROOT / "params.yaml"
    # SOURCE_DATE_EPOCH (reproducible-builds.org) fixes the build time, so two builds of the same study are the same bytes
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    when = (
        datetime.datetime.fromtimestamp(int(epoch), datetime.UTC)
        if epoch.isdigit()
        else datetime.datetime.now(datetime.UTC)
    )
    return Provenance(
        built=when.strftime("%Y-%m-%d %H:%M UTC"),
        commit=commit + dirty,
        params_digest=hashlib.sha256(params.read_bytes()).hexdigest()[:12] if params.is_file() else "none",
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
    )


def page_html(title: str, sections: list[Section]) -> str:
    """The whole page: each section with a heading gets an anchor (s1, s2, ...) and an entry in the contents,
    which come before the first of them."""
    count = itertools.count(1)
    anchored = [replace(s, anchor=f"s{next(count)}") if s.heading is not None else s for s in sections]
    first = next((i for i, s in enumerate(anchored) if s.heading is not None), len(anchored))
    return render(
        "report.html.j2", title=title, provenance=provenance(), intro=anchored[:first], sections=anchored[first:]
    )


# --------------------------------------------------------------------------- assembly


RECON_WIDTH = 560  # px: small grids are enlarged by a whole factor up to about this width, pixels kept sharp


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of an image, from its header (Pillow reads no pixels for this)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.size


Judge = tuple[FaceData, torch.nn.Module] | None  # the data and evaluation model that judge reconstructions


def judging_inputs(paths: StudyPaths, device: torch.device) -> Judge:
    """The data and the evaluation model that judge each reconstruction; None when either is missing."""
    eval_file = paths.eval_dir / "model.pt"
    if not paths.data_file.is_file() or not eval_file.is_file():
        return None
    data = FaceData.load(paths.data_file)
    return data, load_classifier(eval_file, num_classes=data.num_classes, what="evaluation model").to(device)


def write_judged_grid(judge: tuple[FaceData, torch.nn.Module], attack_file: Path, out: Path) -> None:
    """The attack's labelled grid with each reconstruction framed green (the evaluation model agrees) or red."""
    data, eval_model = judge
    result = AttackResult.load(attack_file)
    correct = predict_logits(eval_model, result.final_images).argmax(1) == result.final_targets.cpu()
    save_judged_grid(data, result, correct, out)


def reconstructions_section(
    paths: StudyPaths, rows: list[dict[str, Any]], folder: Path, device: torch.device | None = None
) -> Section:
    """Per alpha, every seed's reconstruction grid in ``folder``, judged by the evaluation model where it and the
    attack result exist (else the attack stage's grid); a note lists the runs without one."""
    blocks, missing = [], []
    judge = judging_inputs(paths, device or torch.device("cpu"))
    for alpha in sorted({row["alpha"] for row in rows}):
        figures = []
        for seed in (r["seed"] for r in rows if r["alpha"] == alpha):
            figure = reconstruction_figure(paths, judge, alpha, seed, folder)
            if figure is None:
                missing.append(f"alpha {alpha:g}, seed {seed}")
            else:
                figures.append(figure)
        if figures:
            blocks.append((f"{alpha:g}", figures))
    note = "no reconstruction grid for: " + "; ".join(missing) if missing else ""
    return Section(render("reconstructions.html.j2", missing=note, blocks=blocks), "Reconstructions per alpha")


def reconstruction_figure(paths: StudyPaths, judge: Judge, alpha: float, seed: int, folder: Path) -> FigureView | None:
    """One run's grid written into ``folder`` (judged where its attack result exists), shown enlarged by a whole
    factor; None without the attack stage's grid."""
    source = paths.attack_dir(alpha, seed) / "reconstructions.png"
    if not source.exists():
        return None
    name = f"reconstructions_alpha{alpha:g}_seed{seed}.png"
    attack_file = source.with_name("attack.pt")
    if judge is not None and attack_file.is_file():
        write_judged_grid(judge, attack_file, folder / name)
    else:
        shutil.copyfile(source, folder / name)
    width = png_size(folder / name)[0]
    figure = FigureFile(name, f"reconstructions alpha {alpha:g} seed {seed}", f"seed {seed}")
    return figure_view(folder, figure, width=width * max(1, RECON_WIDTH // width))


TOY_COLUMNS = (
    ("end_distance", "end point to nearest training sample"),
    ("end_confidence", "target confidence"),
    ("grad_cosine", "consecutive-gradient cosine"),
    ("vanished_steps", "steps with zero gradient"),
)
TOY_CAPTION = (
    "Three Gaussian blobs, one small MLP per alpha trained with lsmia's smoothing loss, and a gradient "
    "attack on the 2-D input from one fixed start towards the top class."
)


def toy_section(toy_dir: Path, folder: Path) -> Section:
    """The paper's 2-D toy (``lsmia toy``): its figure and, per alpha, where the attack ended."""
    heading = "The paper's 2-D toy"
    record, figure = toy_dir / "toy.json", toy_dir / "toy.png"
    if not record.is_file() or not figure.is_file():
        return missing_section(heading, f"no toy results in {toy_dir}: run 'lsmia toy' (or dvc repro toy)")
    shutil.copyfile(figure, folder / "toy.png")
    rows = load_json(record, what="toy results", keys=("rows",), fix="re-run 'lsmia toy'")["rows"]
    table = Table(
        ("α", *(label for _, label in TOY_COLUMNS)),
        [[f"{row['alpha']:+g}", *(number(row.get(key)) for key, _ in TOY_COLUMNS)] for row in rows],
    )
    view = figure_view(folder, FigureFile("toy.png", heading, TOY_CAPTION))
    return Section(render("toy.html.j2", figure=view, table=table), heading)


def diagnostics_section(paths: StudyPaths, rows: list[dict[str, Any]], folder: Path) -> Section:
    heading = "Attack diagnostics per step"
    if diagnostics_figure(diagnostic_curves(paths, rows), folder / "diagnostics.png"):
        return figure_section(heading, folder, FigureFile("diagnostics.png", heading, DIAGNOSTICS_CAPTION))
    return missing_section(heading, "no attack recorded per-step diagnostics: re-run 'lsmia attack'")


def figure_sections(
    paths: StudyPaths, rows: list[dict[str, Any]], summaries: list[dict[str, Any]], folder: Path, device: torch.device
) -> list[Section]:
    """The figures over alpha, the output distributions and the attack diagnostics; each names what it lacks."""
    plots = [
        (
            "Accuracy and attack accuracy",
            "accuracy.png",
            lambda p: plot_accuracy(rows, summaries, p),
            "Error bars: 95 % t-interval over seeds; faint points: single seeds.",
            "no metrics for this figure",
        ),
        (
            "Leakage metrics",
            "leakage.png",
            lambda p: plot_leakage(rows, summaries, p),
            "Small multiples over alpha; attribute accuracy (built-in data only) with its chance line.",
            "no metrics for this figure",
        ),
        (
            "Accuracy–privacy trade-off",
            "tradeoff.png",
            lambda p: plot_tradeoff(rows, p),
            "One point per (alpha, seed), labelled and coloured by alpha (blue: negative, red: positive).",
            "no metrics for this figure",
        ),
        (
            "Confidence and logit norm on the private test images",
            "distributions.png",
            lambda p: plot_distributions(private_test_outputs(paths, rows, device), p),
            "Pooled over seeds; line in each violin: median.",
            f"no target models or no data file {paths.data_file}",
        ),
    ]
    sections = []
    for heading, name, plot, caption, lacking in plots:
        drawn = plot(folder / name)
        sections.append(
            figure_section(heading, folder, FigureFile(name, heading, caption))
            if drawn
            else missing_section(heading, lacking)
        )
    return [*sections, diagnostics_section(paths, rows, folder)]


def build_report(
    paths: StudyPaths,
    folder: Path,
    device: torch.device,
    title: str,
    ablation_files: Sequence[Path] = (),
    cells: Cells | None = None,
    defenses_file: Path | None = None,
) -> None:
    """Write every figure and ``index.html`` into ``folder`` (an empty directory); the defenses section from
    ``defenses_file`` (default: ``<out>/ablations/defenses/compare.json``)."""
    rows = collect_metrics(paths.metrics_dir, cells)
    summaries, keys = aggregate(rows), metric_keys(rows)
    data_summary = load_json(paths.data_summary, keys=()) if paths.data_summary.exists() else {}
    sections = [header_section(rows, data_summary)]
    sections += [s for s in [verdict_section(ablation_files, folder)] if s is not None]
    skipped = missing_cells(paths.metrics_dir, cells)
    if skipped:
        names = ", ".join(f"α = {a:g} seed {s}" for a, s in skipped)
        sections.append(
            missing_section(
                None, f"not evaluated yet, so not in this report: {names} (run 'dvc repro' or 'lsmia study')"
            )
        )
    sections += figure_sections(paths, rows, summaries, folder, device)
    sections += [
        Section(summary_table(summaries, keys), "Metrics per alpha (mean ± 95 % CI over seeds)"),
        Section(effect_table(rows), "The paper's effect, paired by seed"),
        ablations_section(ablation_files),
        defenses_section(defenses_file or paths.ablation_dir("defenses") / "compare.json", folder),
        toy_section(paths.root / "toy", folder),
        reconstructions_section(paths, rows, folder, device),
        Section(raw_table(rows, keys), "Raw metrics per run"),
    ]
    (folder / "index.html").write_text(page_html(title, sections), encoding="utf-8")


def write_report(
    paths: StudyPaths,
    out_dir: Path,
    device: torch.device,
    title: str = "lsmia study",
    ablation_files: Sequence[Path] = (),
    cells: Cells | None = None,
    defenses_file: Path | None = None,
) -> Path:
    """Build the report of ``cells`` (default: every metrics file) in a temporary folder beside ``out_dir`` and
    swap it in; returns ``out_dir/index.html``."""
    out_dir = Path(out_dir)
    collect_metrics(paths.metrics_dir, cells)  # fail before creating anything
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    staging.chmod(new_file_mode(folder=True))  # mkdtemp makes it private: give it the umask's mode like mkdir
    try:
        build_report(paths, staging, device, title, list(ablation_files), cells, defenses_file)
        _swap_in(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir / "index.html"


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by ``staging`` with renames only (a directory cannot be os.replace'd onto a full one)."""
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
    os.replace(out_dir, old / "report")
    try:
        os.replace(staging, out_dir)
    except OSError:
        os.replace(old / "report", out_dir)  # put the previous report back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


SUMMARY_INTERVAL = "final_acc1"  # the one metric whose interval over seeds gets a column


def summary_key(alpha: float) -> str:
    """``alpha=-0,05``: a decimal comma, because DVC reads a dot in a metric's name as nesting (``alpha=0.1``
    became ``alpha=0`` -> ``1`` and hid the real ``alpha=0``)."""
    return f"alpha={alpha:g}".replace(".", ",")


def summary_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | int]]:
    """Per alpha (:func:`summary_key`, largest first): the seeds ``n``, the mean of each headline metric and the
    95 % interval half-width of acc@1 (from two seeds on)."""
    summary: dict[str, dict[str, float | int]] = {}
    for at in per_alpha(rows, metric_registry.dvc_summary(), descending=True):
        entry: dict[str, float | int] = {"n": len(at["seeds"])}
        for metric, found in at["metrics"].items():
            entry[metric] = round(found["mean"], 4)
            if metric == SUMMARY_INTERVAL and found["n"] >= 2:
                entry[f"{metric}_ci95"] = round(found["ci95"], 4)
        summary[summary_key(at["alpha"])] = entry
    return summary


def write_summary(paths: StudyPaths, cells: Cells | None = None) -> Path:
    """``<out>/summary.json``: :func:`summary_metrics` of the study's evaluated cells."""
    save_json(summary_metrics(collect_metrics(paths.metrics_dir, cells)), paths.summary_file)
    return paths.summary_file


def write_plot_data(paths: StudyPaths, plots_dir: Path, cells: Cells | None = None) -> Path:
    """DVC plot sources: ``study.json`` (one row per run, numeric metrics) and the labelled reconstruction grids,
    framed by the evaluation model's verdict where it and the attack result exist (grids of other runs removed)."""
    rows = collect_metrics(paths.metrics_dir, cells)
    plots_dir = Path(plots_dir)
    grids = plots_dir / "reconstructions"
    grids.mkdir(parents=True, exist_ok=True)
    judge = judging_inputs(paths, torch.device("cpu"))
    wanted = set()
    for row in rows:
        grid = paths.attack_dir(row["alpha"], row["seed"]) / "reconstructions.png"
        out = grids / f"alpha{row['alpha']}_seed{row['seed']}.png"
        if judge is not None and grid.with_name("attack.pt").is_file():
            write_judged_grid(judge, grid.with_name("attack.pt"), out)
        elif grid.exists():
            shutil.copyfile(grid, out)
        wanted.add(out.name)
    for stale in (g for g in grids.glob("*.png") if g.name not in wanted):
        stale.unlink()
    numeric = [{k: v for k, v in row.items() if is_number(v)} for row in rows]
    target = plots_dir / "study.json"
    save_json(numeric, target)
    return target
