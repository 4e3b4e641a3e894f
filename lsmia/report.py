"""The study report: one folder with an ``index.html``, its figures as PNG files, and nothing else.

Every figure is written as a PNG beside ``index.html`` and also embedded in it as a base64
data URI (each embedded image links to its file), so the HTML file works on its own when
mailed or uploaded, and the folder serves the PNGs for slides. The folder is built in a
temporary directory beside ``out_dir`` and swapped in at the end: an interrupted run leaves
the previous report untouched.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colors as mcolors
from matplotlib.figure import Figure  # no pyplot: Agg canvas, no global backend state

from lsmia import ablation_tables as tables
from lsmia.attack.result import AttackResult
from lsmia.data.base import FaceData
from lsmia.defenses import compare as defense_comparison
from lsmia.errors import LsmiaError
from lsmia.models.classifiers import load_classifier
from lsmia.models.inference import predict_logits
from lsmia.paths import StudyPaths, run_tag
from lsmia.stats import effects, mean_ci, verdict
from lsmia.utils import load_json, new_file_mode, save_json
from lsmia.visualize import save_judged_grid

REPO_ROOT = Path(__file__).resolve().parents[1]

ID_KEYS = ("alpha", "seed")

# Known metrics in display order: (label, what a higher value means for privacy).
METRICS: dict[str, tuple[str, str]] = {
    "test_acc": ("test accuracy", ""),
    "train_acc": ("train accuracy", ""),
    "ece": ("expected calibration error", ""),
    "mean_confidence": ("mean max-softmax confidence (test)", ""),
    "mean_logit_norm": ("mean logit L2 norm (test)", ""),
    "final_acc1": ("attack acc@1 (final samples)", "more leakage"),
    "final_acc5": ("attack acc@5 (final samples)", "more leakage"),
    "all_acc1": ("attack acc@1 (all samples)", "more leakage"),
    "all_acc5": ("attack acc@5 (all samples)", "more leakage"),
    "final_target_confidence": ("target's confidence in its final samples", ""),
    "final_target_confidence_raw": ("target's confidence in its final samples, no transforms", ""),
    "grad_cosine_mean": ("cosine of consecutive attack gradients", ""),
    "delta_eval": ("δ_eval (eval-feature distance)", "less leakage"),
    "delta_face": ("δ_face (FaceNet distance, as PPA)", "less leakage"),
    "fid_eval_features": ("FID (eval-model features)", "less leakage"),
    "fid_tf_inception": ("FID (pytorch-fid's FID Inception, as published)", "less leakage"),
    "inception_fid": ("FID (torchvision Inception, not comparable)", "less leakage"),
    "precision": ("precision", "more leakage"),
    "recall": ("recall", "more leakage"),
    "density": ("density", "more leakage"),
    "coverage": ("coverage", "more leakage"),
    "xi": ("ξ knowledge extraction", "more leakage"),
    "attribute_acc": ("attribute accuracy of reconstructions", "more leakage"),
    "attribute_chance": ("attribute accuracy by chance (majority)", ""),
    "attribute_acc_real": ("attribute accuracy of real test images", ""),
    "num_targets": ("attacked identities", ""),
    "num_final_samples": ("final samples", ""),
    "train_seconds": ("training time [s]", ""),
    "evaluate_seconds": ("evaluation time [s]", ""),
}

EFFECT_NOTE = (
    "Paired by seed: each seed's smoothed target shares data, initialisation seed and attack randomness with the "
    "hard-label target of the same seed. Mean over seeds ± half-width of the 95 % t-interval. The paper's claims: "
    "alpha > 0 raises attack acc@1; negative alpha cuts it to at most half at a test-accuracy cost of at most "
    "5 points."
)

READING_NOTE = (
    "Each row of a table is one metric; each alpha column gives the mean over seeds ± the half-width of "
    "the 95 % t-interval (— with a single seed). Higher attack acc@1/@5, ξ, precision/density/coverage and "
    "attribute accuracy mean <b>more</b> leakage of the private identities; higher δ_eval and FID mean "
    "<b>less</b> (the reconstructions lie farther from the real training images). Positive alpha is label "
    "smoothing, negative alpha negative label smoothing, alpha = 0 hard labels."
)


# --------------------------------------------------------------------------- metrics


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
    if not isinstance(row, dict) or not all(_is_number(row.get(key)) for key in ID_KEYS):
        raise LsmiaError(f"metrics file {path} has no numeric alpha and seed: delete it and re-run 'lsmia evaluate'")
    return {**row, "alpha": float(row["alpha"]), "seed": int(row["seed"])}


def metric_keys(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Numeric metric names present in any row: known ones in display order, then the rest alphabetically."""
    present = {key for row in rows for key, value in row.items() if _is_number(value) and key not in ID_KEYS}
    known = [key for key in METRICS if key in present]
    return known + sorted(present - set(known))


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per alpha (ascending): ``{"alpha", "seeds", "metrics": {name: {"mean", "ci95", "n"}}}``.

    ``ci95`` is the half-width of the 95 % Student-t interval over seeds; ``n`` counts the seeds
    that reported the metric (a key missing from a file, or NaN, is left out, not counted as 0).
    """
    keys = metric_keys(rows)
    summaries = []
    for alpha in sorted({row["alpha"] for row in rows}):
        group = [row for row in rows if row["alpha"] == alpha]
        metrics = {}
        for key in keys:
            values = [float(row[key]) for row in group if _is_number(row.get(key))]
            if values:
                mean, ci95, n = mean_ci(values)
                metrics[key] = {"mean": mean, "ci95": ci95, "n": n}
        summaries.append({"alpha": alpha, "seeds": sorted(row["seed"] for row in group), "metrics": metrics})
    return summaries


# --------------------------------------------------------------------------- figures


@dataclass
class FigureFile:
    name: str
    title: str
    caption: str = ""


def alpha_colors(alphas: list[float]) -> tuple[mcolors.Colormap, mcolors.Normalize]:
    """A diverging colormap centred on alpha = 0 (blue negative, red positive)."""
    low, high = min(min(alphas), -1e-3), max(max(alphas), 1e-3)
    return mcolors.LinearSegmentedColormap.from_list("alpha", ["#2166ac", "#cccccc", "#b2182b"]), mcolors.TwoSlopeNorm(
        vmin=low, vcenter=0.0, vmax=high
    )


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=110, bbox_inches="tight")


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
    seed_points = [(row["alpha"], row[key]) for row in rows if _is_number(row.get(key))]
    if seed_points:
        ax.scatter(*zip(*seed_points, strict=False), color=color, alpha=0.25, s=14, linewidths=0)
    alphas, means, cis = _series(summaries, key)
    ax.errorbar(alphas, means, yerr=cis, color=color, marker="o", ms=5, capsize=3, label=label)


def _present(rows: list[dict[str, Any]], key: str) -> bool:
    return any(_is_number(row.get(key)) for row in rows)


def plot_accuracy(rows: list[dict[str, Any]], summaries: list[dict[str, Any]], path: Path) -> bool:
    series = [
        ("test_acc", "test accuracy", "#333333"),
        ("final_acc1", "attack acc@1", "#d95f02"),
        ("final_acc5", "attack acc@5", "#7570b3"),
    ]
    series = [s for s in series if _present(rows, s[0])]
    if not series:
        return False
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    for key, label, color in series:
        _plot_metric(ax, rows, summaries, key, color, label)
    ax.axvline(0.0, color="#999999", lw=0.8, ls=":")
    ax.set(xlabel="label smoothing alpha", ylabel="accuracy", ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    _save(fig, path)
    return True


def plot_leakage(rows: list[dict[str, Any]], summaries: list[dict[str, Any]], path: Path) -> bool:
    panels = [key for key in ("delta_eval", "fid_eval_features", "xi", "attribute_acc") if _present(rows, key)]
    if not panels:
        return False
    fig = Figure(figsize=(3.3 * len(panels), 3.3))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, key in zip(axes, panels, strict=False):
        _plot_metric(ax, rows, summaries, key, "#1b7837")
        if key == "attribute_acc":
            _reference_line(ax, summaries, "attribute_chance", "chance", "#999999", "--")
            _reference_line(ax, summaries, "attribute_acc_real", "real images", "#555555", ":")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(frameon=False, fontsize=8)
        ax.axvline(0.0, color="#999999", lw=0.8, ls=":")
        ax.set(title=f"{METRICS[key][0]}\n(higher = {METRICS[key][1]})", xlabel="alpha")
        ax.title.set_fontsize(9)
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
    cmap, norm = alpha_colors([row["alpha"] for row in rows])
    fig = Figure(figsize=(6.0, 4.6))
    ax = fig.subplots()
    x, y = [row["test_acc"] for row in points], [row["final_acc1"] for row in points]
    dots = ax.scatter(
        x, y, c=[row["alpha"] for row in points], cmap=cmap, norm=norm, s=46, edgecolors="#333333", linewidths=0.6
    )
    for row in points:
        ax.annotate(
            f"{row['alpha']:g}",
            (row["test_acc"], row["final_acc1"]),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=8,
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
    cmap, norm = alpha_colors(alphas)
    fig = Figure(figsize=(max(6.4, 0.9 * len(alphas) + 1.5), 6.4))
    axes = fig.subplots(2, 1, sharex=True)
    for ax, key, label in zip(
        axes, ("confidence", "logit_norm"), ("max softmax confidence", "logit L2 norm"), strict=False
    ):
        for position, alpha in enumerate(alphas):
            _violin(ax, outputs[alpha][key], position, cmap(norm(alpha)))
        ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set(ylabel=label, title=f"{label} on the private test images")
        ax.title.set_fontsize(10)
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
            body.set_edgecolor("#333333")
            body.set_alpha(0.75)
        parts["cmedians"].set_color("#111111")
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
    "lower gradient similarity for alpha &lt; 0 than for alpha ≥ 0."
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
    cmap, norm = alpha_colors(list(curves))
    fig = Figure(figsize=(11.0, 3.4))
    axes = fig.subplots(1, len(DIAGNOSTIC_PANELS))
    for ax, (key, label) in zip(axes, DIAGNOSTIC_PANELS, strict=False):
        first_step = 1 if key == "grad_cosine" else 0  # the cosine needs a previous step
        for alpha, entry in curves.items():
            values = entry[key]
            color = cmap(norm(alpha)) if alpha != 0 else "#333333"  # the map's grey centre is too faint for a line
            steps = np.arange(first_step, first_step + len(values))
            ax.plot(steps, values, color=color, lw=1.6, label=f"α = {alpha:g}")
        ax.set(xlabel="attack step", title=label)
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3)
    axes[0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return True


# --------------------------------------------------------------------------- html


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return "—"
    return f"{value:.4g}"


def format_mean_ci(mean: float, ci: float) -> str:
    """``mean ± ci`` with the interval to two significant digits and the mean to the same decimal place."""
    if not math.isfinite(mean) or not math.isfinite(ci):
        return _fmt(mean)
    if ci == 0.0:
        return f"{_fmt(mean)} ± 0"
    decimals = min(8, max(0, 1 - math.floor(math.log10(ci))))
    return f"{mean:.{decimals}f} ± {ci:.{decimals}f}"


def _label(key: str) -> str:
    return METRICS[key][0] if key in METRICS else key


def summary_table(summaries: list[dict[str, Any]], keys: list[str]) -> str:
    head = "".join(f"<th>α = {s['alpha']:g}<br><small>n = {len(s['seeds'])}</small></th>" for s in summaries)
    body = []
    for key in keys:
        cells = "".join(f"<td>{_summary_cell(s, key)}</td>" for s in summaries)
        direction = METRICS.get(key, ("", ""))[1]
        body.append(
            f"<tr><th title='{html.escape(key)}'>{html.escape(_label(key))}<br><code>{html.escape(key)}</code>"
            f"</th><td class='dir'>{direction}</td>{cells}</tr>"
        )
    return (
        f"<div class='scroll'><table class='summary'><thead><tr><th>metric</th><th>higher =</th>{head}</tr>"
        f"</thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _summary_cell(summary: dict[str, Any], key: str) -> str:
    stat = summary["metrics"].get(key)
    if stat is None:
        return "<span class='na'>n/a</span>"
    n = f" <small>(n = {stat['n']})</small>" if stat["n"] != len(summary["seeds"]) else ""
    return f"{format_mean_ci(stat['mean'], stat['ci95'])}{n}"


def raw_table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    """One row per metric, one column per run (alpha, seed): tall rather than wide, so it fits the page."""
    head = "".join(f"<th>α = {row['alpha']:g}<br><small>seed {row['seed']}</small></th>" for row in rows)
    body = []
    for key in keys:
        cells = "".join(f"<td>{_fmt(float(row[key])) if _is_number(row.get(key)) else '—'}</td>" for row in rows)
        body.append(f"<tr><th title='{html.escape(_label(key))}'>{html.escape(key)}</th>{cells}</tr>")
    return (
        f"<div class='scroll'><table class='raw'><thead><tr><th>metric</th>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _effect_cell(stat: dict[str, Any]) -> str:
    return format_mean_ci(stat["mean"], stat["ci95"]) + (f" <small>(n = {stat['n']})</small>" if stat["n"] else "")


def effect_table(rows: list[dict[str, Any]]) -> str:
    """The paper's claims per alpha, paired by seed against alpha = 0 (lsmia.stats.effects)."""
    found = effects(rows) if any(row["alpha"] == 0.0 for row in rows) else []
    if not found:
        return _missing("no alpha = 0 run to compare with")
    body = "".join(
        f"<tr><th>α = {e['alpha']:g}</th><td>{_effect_cell(e['acc1_gain'])}</td><td>{_effect_cell(e['acc1_ratio'])}</td>"
        f"<td>{_effect_cell(e['test_acc_cost'])}</td><td>{_effect_cell(e['delta_eval_gain'])}</td>"
        f"<td>{verdict(e)}</td></tr>"
        for e in found
    )
    return (
        "<div class='scroll'><table class='summary'><thead><tr><th></th><th>acc@1 − acc@1(α=0)</th>"
        "<th>acc@1 / acc@1(α=0)</th><th>test-accuracy cost</th><th>δ_eval − δ_eval(α=0)</th><th>paper's claim</th>"
        f"</tr></thead><tbody>{body}</tbody></table></div><p class='caption'>{EFFECT_NOTE}</p>"
    )


VERDICT_HEADING = "The verdict: PPA as published against an attacker who knows the defense"


def verdict_html(ablation_files: Sequence[Path]) -> str:
    """The verdict tables (``lsmia verdict``: verdict.json beside an included ablation's results), first in the
    report; empty when no included ablation has one."""
    from lsmia import verdict as verdicts

    blocks = []
    for path in ablation_files:
        source = _results_json(path).with_name("verdict.json")
        if source.is_file():
            rows = load_json(source, what="verdict", keys=("rows",), fix="re-run 'lsmia verdict'")["rows"]
            blocks.append(
                f"<h3>{html.escape(source.parent.name)}</h3>" + html_table(verdicts.COLUMNS, verdicts.table_rows(rows))
            )
    if not blocks:
        return ""
    return f"<h2>{VERDICT_HEADING}</h2>" + "".join(blocks) + f"<p class='caption'>{html.escape(verdicts.NOTE)}</p>"


def ablations_html(ablation_files: Sequence[Path]) -> str:
    """The measured ablations (``lsmia ablate``): each plan's tables as HTML, from the ``results.json`` beside the
    ``results.md`` named."""
    blocks = [ablation_html(path) for path in ablation_files]
    return (
        "<h2>Measured ablations</h2>"
        + claims_html(ablation_files)
        + (
            "".join(blocks)
            or _missing(
                "none included: run 'lsmia ablate configs/ablations.yaml', then 'lsmia report --ablation out/ablations/factors/results.md'"
            )
        )
    )


CLAIMS_NOTE = (
    "Every cell of the ablations below (plan/variant at one α, paired by seed against α = 0 of the same "
    "variant), checked against the paper's claims: how many were measured, where a claim holds, and the cell "
    "that comes closest. A cell measured on one seed has no interval, so it cannot hold an interval claim."
)


RESULTS_KEYS = ("variants", "rows")  # what 'lsmia ablate' writes into results.json
RESULTS_FIX = "pass the results.md or results.json of 'lsmia ablate' (out/ablations/<name>/) or re-run it"


def _results_json(results_file: Path) -> Path:
    return results_file if results_file.suffix == ".json" else results_file.with_name("results.json")


def claims_html(ablation_files: Sequence[Path]) -> str:
    """The paper's claims across all included ablations (lsmia.ablation_tables.claim_rows); empty without any."""
    plans = {
        path.parent.name: load_json(_results_json(path), what="ablation results", keys=RESULTS_KEYS, fix=RESULTS_FIX)[
            "variants"
        ]
        for path in ablation_files
        if _results_json(path).is_file()
    }
    if not plans:
        return ""
    return (
        "<h3>Does the paper's effect appear anywhere?</h3>"
        + html_table(tables.CLAIM_COLUMNS, tables.claim_rows(plans))
        + f"<p class='caption'>{html.escape(CLAIMS_NOTE)}</p>"
    )


def ablation_html(results_file: Path) -> str:
    """One plan's paired-effect table and per-variant summary table, with its variants and seeds, from its
    ``results.json`` (``results_file`` itself, or the one beside the ``results.md`` named)."""
    name = results_file.parent.name
    heading = f"<h3>{html.escape(name)}</h3>"
    results = _results_json(results_file)
    if not results.is_file():
        return heading + _missing(f"no {results} beside {results_file.name}: re-run 'lsmia ablate' for plan {name}")
    record = load_json(results, what="ablation results", keys=RESULTS_KEYS, fix=RESULTS_FIX)
    variants = dict(sorted(record["variants"].items(), key=lambda item: item[0] != "baseline"))
    overrides = "; ".join(
        f"<b>{html.escape(v)}</b>: "
        + (
            html.escape(", ".join(f"{key} = {value}" for key, value in spec.get("overrides", {}).items()))
            or "the default settings"
        )
        for v, spec in variants.items()
    )
    seeds = sorted({int(row["seed"]) for row in record.get("rows", [])})
    return (
        heading
        + f"<p class='caption'>Variants — {overrides}.</p>"
        + html_table(tables.EFFECT_COLUMNS, tables.effect_rows(variants))
        + html_table(tables.SUMMARY_COLUMNS, tables.summary_rows(variants))
        + f"<p class='caption'>{html.escape(tables.seeds_note(seeds))}</p>"
        + (
            f"<p class='caption'>{html.escape(note)}</p>"
            if (note := tables.missing_note(record.get("missing", [])))
            else ""
        )
    )


DEFENSES_HEADING = "Defenses at equal accuracy"
DEFENSES_HOWTO = (
    "no defense comparison at {path}: run 'lsmia ablate configs/defenses.yaml' and "
    "'lsmia compare-defenses out/ablations/defenses/results.json', then 'lsmia report --defenses {path}'"
)
DEFENSES_CAPTION = (
    "Test accuracy against attack acc@1, each model against its strongest attack loss (95 % intervals over seeds); "
    "steps: each defense's Pareto front with the undefended model (black star) as strength 0; hollow: off the front."
)
DEFENSES_NOTE = (
    "At each test accuracy, each defense's model of lowest attack acc@1 among those that keep at least that "
    "accuracy (no interpolation between models): attack acc@1, δ_eval and ξ under its strongest attack, mean ± "
    "half-width of the 95 % t-interval over seeds."
)


def defenses_html(source: Path, folder: Path) -> str:
    """The equal-accuracy comparison of defenses (lsmia.defenses.compare): the fronts figure and the worst-case
    table, from ``compare.json`` (its ``fronts.png`` beside it) or, without one, computed from the ablation's
    ``results.json`` beside it; absent: how to produce it."""
    heading = f"<h2>{DEFENSES_HEADING}</h2>"
    source = Path(source)
    compare_file = source if source.name != "results.json" else source.with_name("compare.json")
    results_file = source if source.name == "results.json" else source.with_name("results.json")
    figure = folder / "defenses_fronts.png"
    if compare_file.is_file():
        record = load_json(compare_file, what="defense comparison")
        if not isinstance(record, dict) or not {"table", "winners"} <= record.keys():
            raise LsmiaError(f"{compare_file} is not the compare.json of 'lsmia compare-defenses': re-run that command")
        drawn = compare_file.with_name("fronts.png")
        if drawn.is_file():
            shutil.copyfile(drawn, figure)
        elif results_file.is_file():
            levels = record.get("levels")
            defense_comparison.plot_fronts(
                defense_comparison.compare(defense_comparison.load_results(results_file), levels), figure
            )
    elif results_file.is_file():
        comparison = defense_comparison.compare(defense_comparison.load_results(results_file))
        record = defense_comparison.to_json(comparison, str(results_file))
        defense_comparison.plot_fronts(comparison, figure)
    else:
        return heading + _missing(DEFENSES_HOWTO.format(path=source))
    read = compare_file if compare_file.is_file() else results_file
    parts = [heading, f"<p class='caption'>From {html.escape(str(read))}.</p>"]
    if figure.is_file():
        parts.append(figure_html(folder, FigureFile(figure.name, DEFENSES_HEADING, DEFENSES_CAPTION)))
    else:
        parts.append(_missing(f"no fronts.png beside {compare_file}: re-run 'lsmia compare-defenses'"))
    rows = defense_comparison.table_cells(record["table"])
    parts.append(
        html_table(defense_comparison.TABLE_COLUMNS, rows)
        if rows
        else _missing("no test accuracy that two defenses keep: re-run 'lsmia compare-defenses' with --levels")
    )
    parts.append(f"<p class='caption'>{html.escape(DEFENSES_NOTE)}</p>")
    winners = defense_comparison.winner_lines(record["winners"])
    if winners:
        parts.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in winners) + "</ul>")
    return "".join(parts)


def html_table(columns: Sequence[str], rows: list[list[str]]) -> str:
    """A table in a horizontally scrolling box: the page never grows wider than its text."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(_row_html(row) for row in rows)
    return (
        f"<div class='scroll'><table class='summary'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _row_html(cells: list[str]) -> str:
    """The first cell as the row's header, the rest as data."""
    first, *rest = cells
    return f"<tr><th>{html.escape(first)}</th>" + "".join(f"<td>{html.escape(c)}</td>" for c in rest) + "</tr>"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def figure_html(folder: Path, figure: FigureFile, width: int | None = None) -> str:
    """The PNG embedded as a data URI, linking to its file in the report folder."""
    name = html.escape(figure.name)
    caption = f"<figcaption>{figure.caption}</figcaption>" if figure.caption else ""
    size = f" style='width:{width}px;max-width:100%'" if width else ""
    return (
        f"<figure><a href='{name}'><img src='{_data_uri(folder / figure.name)}' alt='{html.escape(figure.title)}'"
        f"{size}></a>{caption}</figure>"
    )


def header_html(rows: list[dict[str, Any]], data_summary: dict[str, Any]) -> str:
    alphas = sorted({row["alpha"] for row in rows})
    seeds = sorted({row["seed"] for row in rows})
    targets = sorted({int(row["num_targets"]) for row in rows if _is_number(row.get("num_targets"))})
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
    items = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts)
    scale = ""
    if len(seeds) < 3 or int(data_summary.get("num_classes", 0) or 0) < 200:
        scale = (
            "<p class='note'><b>This study is a smoke-scale run</b> (its identities, seeds and epochs are chosen to "
            "finish in minutes on a CPU): it shows that the pipeline works, not the paper's effect. The verdict on "
            "the paper's claims is the verdict table and the measured ablations below.</p>"
        )
    return f"{scale}<table class='facts'>{items}</table><p class='note'>{READING_NOTE}</p>"


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1180px;color:#222;
line-height:1.45;padding:0 1em}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f6f6f6}table.facts th,table.summary tbody th,table.summary thead th:nth-child(-n+2){text-align:left}
table.summary td,table.raw td{white-space:nowrap}
table.summary code{color:#888;font-size:11px}td.dir{color:#666;font-size:12px;text-align:left}
.na{color:#aaa}.scroll{overflow-x:auto;margin:.6em 0}table.raw tbody th,table.raw thead th:first-child{text-align:left}
.note{background:#f4f8fb;border-left:4px solid #4a90c2;padding:.6em 1em}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:13px}
.missing{color:#a33}.caption{color:#555;font-size:13px;margin-top:0}
.recon{display:flex;flex-wrap:wrap;gap:0 18px}.recon figure{margin:.4em 0}
.recon img{image-rendering:pixelated}h3{margin-bottom:.3em}
.toc{background:#fafafa;border:1px solid #eee;padding:.4em 1em;font-size:14px}.toc ol{margin:.3em 0;columns:2}
"""


def with_contents(body: str) -> str:
    """``body`` with an id on every section heading (h2) and a table of contents before the first."""
    headings: list[str] = []

    def anchor(match: re.Match[str]) -> str:
        headings.append(match[1])
        return f"<a id='s{len(headings)}'></a>{match[0]}"

    body = re.sub(r"<h2>(.*?)</h2>", anchor, body)
    if not headings:
        return body
    items = "".join(f"<li><a href='#s{i}'>{text}</a></li>" for i, text in enumerate(headings, 1))
    toc = f"<nav class='toc'><b>Contents</b><ol>{items}</ol></nav>"
    first = body.index("<a id='s1'></a>")
    return body[:first] + toc + body[first:]


def provenance_html() -> str:
    """Where the numbers come from: commit, params digest, date, machine."""
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
    digest = hashlib.sha256(params.read_bytes()).hexdigest()[:12] if params.is_file() else "none"
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    built = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"<p class='caption'>Built {html.escape(built)} from commit {html.escape(commit + dirty)}, params.yaml "
        f"sha256 {html.escape(digest)}, on {html.escape(machine)}.</p>"
    )


def page_html(title: str, parts: list[str]) -> str:
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{provenance_html()}{with_contents(''.join(parts))}</body></html>\n"
    )


# --------------------------------------------------------------------------- assembly


RECON_CAPTION = (
    "left: real training images, right: reconstructions, best first (one row per attacked identity); "
    "a green frame: the evaluation model classifies the reconstruction as its identity, red: it does not"
)
RECON_WIDTH = 560  # px: small grids are enlarged by a whole factor up to about this width, pixels kept sharp


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of an image, from its header (Pillow reads no pixels for this)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def judging_inputs(paths: StudyPaths, device: torch.device) -> tuple[FaceData, torch.nn.Module] | None:
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


def reconstructions_html(
    paths: StudyPaths, rows: list[dict[str, Any]], folder: Path, device: torch.device | None = None
) -> str:
    """Per alpha, every seed's reconstruction grid in ``folder``, judged by the evaluation model where it and the
    attack result exist (else the attack stage's grid); a note lists the runs without one."""
    blocks, missing = [], []
    judge = judging_inputs(paths, device or torch.device("cpu"))
    for alpha in sorted({row["alpha"] for row in rows}):
        figures = []
        for row in (r for r in rows if r["alpha"] == alpha):
            source = paths.attack_dir(alpha, row["seed"]) / "reconstructions.png"
            if not source.exists():
                missing.append(f"alpha {alpha:g}, seed {row['seed']}")
                continue
            name = f"reconstructions_alpha{alpha:g}_seed{row['seed']}.png"
            attack_file = source.with_name("attack.pt")
            if judge is not None and attack_file.is_file():
                write_judged_grid(judge, attack_file, folder / name)
            else:
                shutil.copyfile(source, folder / name)
            width = png_size(folder / name)[0]
            figures.append(
                figure_html(
                    folder,
                    FigureFile(name, f"reconstructions alpha {alpha:g} seed {row['seed']}", f"seed {row['seed']}"),
                    width=width * max(1, RECON_WIDTH // width),
                )
            )
        if figures:
            blocks.append(
                f"<h3>α = {alpha:g}</h3><div class='recon'>{''.join(figures)}</div>"
                f"<p class='caption'>α = {alpha:g}: {RECON_CAPTION}</p>"
            )
    note = _missing("no reconstruction grid for: " + "; ".join(missing)) if missing else ""
    return "<h2>Reconstructions per alpha</h2>" + note + "".join(blocks)


TOY_COLUMNS = (
    ("end_distance", "end point to nearest training sample"),
    ("end_confidence", "target confidence"),
    ("grad_cosine", "consecutive-gradient cosine"),
    ("vanished_steps", "steps with zero gradient"),
)


def toy_html(toy_dir: Path, folder: Path) -> str:
    """The paper's 2-D toy (``lsmia toy``): its figure and, per alpha, where the attack ended."""
    heading = "The paper's 2-D toy"
    record, figure = toy_dir / "toy.json", toy_dir / "toy.png"
    if not record.is_file() or not figure.is_file():
        return f"<h2>{heading}</h2>" + _missing(f"no toy results in {toy_dir}: run 'lsmia toy' (or dvc repro toy)")
    shutil.copyfile(figure, folder / "toy.png")
    rows = load_json(record, what="toy results", keys=("rows",), fix="re-run 'lsmia toy'")["rows"]
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in TOY_COLUMNS)
    body = "".join(
        f"<tr><th>{row['alpha']:+g}</th>"
        + "".join(f"<td>{_fmt(float(row[key])) if _is_number(row.get(key)) else '—'}</td>" for key, _ in TOY_COLUMNS)
        + "</tr>"
        for row in rows
    )
    caption = (
        "Three Gaussian blobs, one small MLP per alpha trained with lsmia's smoothing loss, and a gradient "
        "attack on the 2-D input from one fixed start towards the top class."
    )
    return (
        _section(heading, folder, [FigureFile("toy.png", heading, caption)])
        + f"<table><thead><tr><th>α</th>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _section(title: str, folder: Path, figures: list[FigureFile]) -> str:
    return f"<h2>{html.escape(title)}</h2>" + "".join(figure_html(folder, fig) for fig in figures)


def diagnostics_html(paths: StudyPaths, rows: list[dict[str, Any]], folder: Path) -> str:
    heading = "Attack diagnostics per step"
    if diagnostics_figure(diagnostic_curves(paths, rows), folder / "diagnostics.png"):
        return _section(heading, folder, [FigureFile("diagnostics.png", heading, DIAGNOSTICS_CAPTION)])
    return f"<h2>{heading}</h2>" + _missing("no attack recorded per-step diagnostics: re-run 'lsmia attack'")


def _missing(what: str) -> str:
    return f"<p class='missing'>{html.escape(what)}</p>"


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
    summaries = aggregate(rows)
    keys = metric_keys(rows)
    data_summary = load_json(paths.data_summary, keys=()) if paths.data_summary.exists() else {}
    parts = [header_html(rows, data_summary), verdict_html(ablation_files)]
    skipped = missing_cells(paths.metrics_dir, cells)
    if skipped:
        names = ", ".join(f"α = {a:g} seed {s}" for a, s in skipped)
        parts.append(_missing(f"not evaluated yet, so not in this report: {names} (run 'dvc repro' or 'lsmia study')"))

    plots = [
        (
            "Accuracy and attack accuracy",
            "accuracy.png",
            lambda p: plot_accuracy(rows, summaries, p),
            "Error bars: 95 % t-interval over seeds; faint points: single seeds.",
        ),
        (
            "Leakage metrics",
            "leakage.png",
            lambda p: plot_leakage(rows, summaries, p),
            "Small multiples over alpha; attribute accuracy (built-in data only) with its chance line.",
        ),
        (
            "Accuracy–privacy trade-off",
            "tradeoff.png",
            lambda p: plot_tradeoff(rows, p),
            "One point per (alpha, seed), labelled and coloured by alpha (blue: negative, red: positive).",
        ),
    ]
    for heading, name, plot, caption in plots:
        if plot(folder / name):
            parts.append(_section(heading, folder, [FigureFile(name, heading, caption)]))
        else:
            parts.append(f"<h2>{html.escape(heading)}</h2>" + _missing("no metrics for this figure"))

    outputs = private_test_outputs(paths, rows, device)
    heading = "Confidence and logit norm on the private test images"
    if plot_distributions(outputs, folder / "distributions.png"):
        parts.append(
            _section(
                heading,
                folder,
                [FigureFile("distributions.png", heading, "Pooled over seeds; line in each violin: median.")],
            )
        )
    else:
        parts.append(f"<h2>{heading}</h2>" + _missing(f"no target models or no data file {paths.data_file}"))
    parts.append(diagnostics_html(paths, rows, folder))

    parts.append(f"<h2>Metrics per alpha (mean ± 95 % CI over seeds)</h2>{summary_table(summaries, keys)}")
    parts.append(f"<h2>The paper's effect, paired by seed</h2>{effect_table(rows)}")
    parts.append(ablations_html(ablation_files))
    parts.append(defenses_html(defenses_file or paths.ablation_dir("defenses") / "compare.json", folder))
    parts.append(toy_html(paths.root / "toy", folder))
    parts.append(reconstructions_html(paths, rows, folder, device))
    parts.append(f"<h2>Raw metrics per run</h2>{raw_table(rows, keys)}")
    (folder / "index.html").write_text(page_html(title, parts), encoding="utf-8")


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


SUMMARY_METRICS = ("final_acc1", "test_acc", "delta_eval", "final_target_acceptance_raw")
SUMMARY_INTERVAL = "final_acc1"  # the one metric whose interval over seeds gets a column


def summary_key(alpha: float) -> str:
    """``alpha=-0,05``: a decimal comma, because DVC reads a dot in a metric's name as nesting (``alpha=0.1``
    became ``alpha=0`` -> ``1`` and hid the real ``alpha=0``)."""
    return f"alpha={alpha:g}".replace(".", ",")


def summary_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | int]]:
    """Per alpha (:func:`summary_key`, largest first): the seeds ``n``, the mean of each headline metric and the
    95 % interval half-width of acc@1 (from two seeds on)."""
    summary: dict[str, dict[str, float | int]] = {}
    for alpha in sorted({float(r["alpha"]) for r in rows}, reverse=True):
        at = [r for r in rows if float(r["alpha"]) == alpha]
        entry: dict[str, float | int] = {"n": len(at)}
        for metric in SUMMARY_METRICS:
            mean, ci95, n = mean_ci([float(r[metric]) for r in at if _is_number(r.get(metric))])
            if n:
                entry[metric] = round(mean, 4)
            if metric == SUMMARY_INTERVAL and n >= 2:
                entry[f"{metric}_ci95"] = round(ci95, 4)
        summary[summary_key(alpha)] = entry
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
    numeric = [{k: v for k, v in row.items() if _is_number(v)} for row in rows]
    target = plots_dir / "study.json"
    save_json(numeric, target)
    return target
