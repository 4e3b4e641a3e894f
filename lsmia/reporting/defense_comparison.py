"""Defenses compared at equal test accuracy, each against its strongest attack (``lsmia compare-defenses``).

Input: the ``results.json`` of an ablation (``lsmia ablate configs/defenses.yaml``) whose variants set a defense
and its strength (``target.defense.*``; label smoothing through the variant's ``study.alphas``) and an attack loss
(``attack.loss``; a variant without it uses the base params' loss, shown as ``base``).

1. **Models.** A variant's overrides without ``attack.*`` and ``study.*``, at one alpha, are one trained model
   (the ablation cache trains it once for all attack losses). Its defense is ``target.defense.kind``; ``ls`` for
   no defense at alpha != 0; ``none`` (the undefended model) at alpha 0.
2. **Worst case over attacks.** Per model, the attack loss with the highest mean acc@1 over seeds is its
   strongest attack; that attack's per-seed acc@1, delta_eval and xi stand for the model.
3. **Fronts.** Per defense, the points (mean test accuracy, mean worst-case acc@1) of its strengths and of the
   undefended model (every defense at strength 0), reduced to the Pareto front: a point stays unless another
   one has at least its accuracy and at most its acc@1.
4. **Matched accuracy.** At each level of test accuracy, each defense is represented by its best model that keeps
   at least that mean test accuracy: the front point of lowest worst-case acc@1 at or above the level (the
   undefended model counts for every defense), with that model's per-seed values: mean and 95 % t-interval over
   seeds. No interpolation: a defender deploys one model, not a mix of two, and a line across a wide gap in a
   front (MID between a collapsed and a barely regularised model) would promise what no model delivers. Default
   levels: the undefended model's test accuracy less 0, 1, 2, 5, 10 and 20 points (the accuracy a defender
   gives up), each kept where at least two defenses have a model; a defense that only raises accuracy, as TL-DMI
   can, meets the others at the undefended level.

Writes ``compare.json``, ``compare.md`` and ``fronts.png`` (byte-stable) into the output folder.

Sweeps (``lsmia sweep --defense mid|bido|tl|ls|none``) are read too: each writes ``points.json`` (one record per
completed trial: its defense settings, alpha, seed, test accuracy and metrics under ``attack.loss``, and the
undefended reference it found) into ``out/sweep/<study>/``; its trials are models like an ablation's, at one seed.
Several sources (ablations and sweeps) are overlaid on one figure: the first undefended model among them stands
for every defense at strength 0, and a defense found in two sources keeps both fronts (the later one named after
its source).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lsmia.config import defense_settings
from lsmia.defenses.registry import DEFENSES
from lsmia.errors import LsmiaError
from lsmia.reporting import figures as style
from lsmia.reporting import metric_registry
from lsmia.reporting.formatting import number, stat_text
from lsmia.reporting.stats import stat, strongest_per_seed
from lsmia.utils import atomic_path, load_json, save_json

BASE_LOSS = "base"  # a variant without attack.loss: the base params' loss
NO_DEFENSE = "none"
UNDEFENDED = "undefended"  # the strength label of the model without any defense
COSTS = (0.0, 0.01, 0.02, 0.05, 0.10, 0.20)  # default levels: the undefended test accuracy less these
Stat = dict[str, float]


# --------------------------------------------------------------------------- models and their attacks


def flatten(overrides: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys for nested override values: ``{"target.defense": {"kind": "mid"}}`` -> ``target.defense.kind``."""
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        flat.update(flatten(value, f"{dotted}.") if isinstance(value, dict) else {dotted: value})
    return flat


def _strength(kind: str, flat: dict[str, Any]) -> str:
    """The defense's settings in a table's words (its spec's ``strength``), defaults for what ``flat`` leaves out."""
    if kind not in DEFENSES:
        return ""
    prefix = "target.defense."
    given = {key.removeprefix(prefix): value for key, value in flat.items() if key.startswith(prefix)}
    return DEFENSES[kind].strength.format(**defense_settings({**given, "kind": kind}).model_dump())


def describe(flat: dict[str, Any], alpha: float) -> tuple[str, str]:
    """(defense family, strength label) of a model: its defense kind, 'ls' or 'none', and the settings in words."""
    kind = str(flat.get("target.defense.kind", NO_DEFENSE))
    extra = [f"{k}={v}" for k, v in sorted(flat.items()) if not k.startswith("target.defense.")]
    parts = [_strength(kind, flat), f"α={alpha:+g}" if alpha != 0 else "", *extra]
    family = kind if alpha == 0 else ("ls" if kind == NO_DEFENSE else f"{kind}+ls")
    return family, ", ".join(p for p in parts if p) or UNDEFENDED


@dataclass(eq=False)  # identity: a point is on a front when it is one of the front's objects
class Point:
    """One trained model: its test accuracy and each attack's metrics, per seed."""

    family: str
    strength: str
    alpha: float
    variants: list[str] = field(default_factory=list)
    test_acc: dict[int, float] = field(default_factory=dict)
    attacks: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)  # loss -> seed -> metric -> value

    @property
    def undefended(self) -> bool:
        return self.family == NO_DEFENSE and self.strength == UNDEFENDED

    def mean_test_acc(self) -> float:
        return float(np.mean(list(self.test_acc.values())))

    def mean(self, loss: str, metric: str = "final_acc1") -> float:
        return float(np.mean([row[metric] for row in self.attacks[loss].values()]))

    def _strongest(self) -> dict[int, tuple[str, float]]:
        acc1 = {loss: {s: row["final_acc1"] for s, row in rows.items()} for loss, rows in self.attacks.items()}
        return strongest_per_seed(acc1)

    @property
    def strongest(self) -> str:
        """The attack loss strongest on each seed (lsmia.reporting.stats.strongest_per_seed), names joined by '/'."""
        return "/".join(sorted({loss for loss, _ in self._strongest().values()}))

    def worst_case(self, metric: str) -> dict[int, float]:
        """Per seed, ``metric`` of that seed's strongest attack: the one worst-case definition of lsmia."""
        rows = {seed: self.attacks[loss][seed] for seed, (loss, _) in self._strongest().items()}
        return {seed: row[metric] for seed, row in rows.items() if metric in row}

    def worst_mean(self, metric: str = "final_acc1") -> float:
        return float(np.mean(list(self.worst_case(metric).values())))


def _model_key(flat: dict[str, Any], alpha: float) -> str:
    trained = {k: v for k, v in flat.items() if not k.startswith(("attack.", "study."))}
    return json.dumps([sorted(trained.items()), alpha], default=str)


def collect_points(results: dict[str, Any]) -> list[Point]:
    """The models of an ablation's ``results.json``, with every attack loss's rows."""
    overrides = {name: flatten(v.get("overrides", {})) for name, v in results["variants"].items()}
    points: dict[str, Point] = {}
    for row in results["rows"]:
        flat, alpha, seed = overrides[row["variant"]], float(row["alpha"]), int(row["seed"])
        key = _model_key(flat, alpha)
        if key not in points:
            points[key] = Point(
                *describe({k: v for k, v in flat.items() if not k.startswith(("attack.", "study."))}, alpha), alpha
            )
        point = points[key]
        point.variants += [] if row["variant"] in point.variants else [row["variant"]]
        point.test_acc[seed] = float(row["test_acc"])
        loss = str(flat.get("attack.loss", BASE_LOSS))
        point.attacks.setdefault(loss, {})[seed] = {m: float(row[m]) for m in metric_registry.front() if m in row}
    return list(points.values())


# --------------------------------------------------------------------------- fronts and matched accuracy


def pareto_front(points: Iterable[Point]) -> list[Point]:
    """The points no other point dominates (at least its mean test accuracy, at most its mean worst-case acc@1),
    by ascending test accuracy."""
    ordered = sorted(points, key=lambda p: (-p.mean_test_acc(), p.worst_mean()))
    front, best = [], math.inf
    for point in ordered:
        acc1 = point.worst_mean()
        if acc1 < best:
            front.append(point)
            best = acc1
    return front[::-1]


@dataclass
class Matched:
    """A defense at one test-accuracy level: per metric the per-seed values of its model there, and which model."""

    values: dict[str, list[float]]
    model: str  # the defense's strength at that level
    loss: str  # its strongest attack

    def stat(self, metric: str) -> Stat:
        return stat(self.values.get(metric, []))


def at_level(front: Sequence[Point], level: float) -> Matched | None:
    """The defense at test accuracy ``level``: its front point of lowest acc@1 with at least that mean test
    accuracy (the first one, since acc@1 rises along a front), or None when no model keeps that accuracy."""
    point = next((p for p in front if p.mean_test_acc() >= level - 1e-12), None)
    if point is None:
        return None
    values = {m: [value for _, value in sorted(point.worst_case(m).items())] for m in metric_registry.front()}
    return Matched(values, point.strength, point.strongest)


def default_levels(fronts: dict[str, list[Point]], undefended: Point) -> list[float]:
    """The undefended model's mean test accuracy less each of ``COSTS``, kept where at least two fronts (the only
    one, for a single defense) reach it without extrapolation; ascending."""
    needed = min(2, len(fronts))
    base = undefended.mean_test_acc()

    def reach(level: float) -> int:
        return sum(at_level(front, level) is not None for front in fronts.values())

    return sorted(level for level in (base - cost for cost in COSTS) if level > 0 and reach(level) >= needed)


# --------------------------------------------------------------------------- the comparison


@dataclass
class Comparison:
    points: list[Point]
    undefended: Point | None  # None only for a sweep's own figure, before any undefended model exists
    fronts: dict[str, list[Point]]
    levels: list[float]
    table: list[dict[str, Any]]


def _undefended(points: list[Point]) -> Point:
    plain = [p for p in points if p.undefended]
    if not plain:
        raise LsmiaError(
            "the results hold no undefended model (a variant without target.defense at alpha 0): "
            "add the variant 'none: {}' to the plan and re-run 'lsmia ablate'"
        )
    return plain[0]


def fronts_of(points: list[Point], undefended: Point | None) -> dict[str, list[Point]]:
    """Per defense family, the Pareto front of its points and the undefended model (when there is one)."""
    families = sorted({p.family for p in points} - {NO_DEFENSE})
    plain = [] if undefended is None else [undefended]
    return {f: pareto_front([*plain, *[p for p in points if p.family == f]]) for f in families}


def build_fronts(points: list[Point], undefended: Point | None) -> dict[str, list[Point]]:
    fronts = fronts_of(points, undefended)
    if not fronts:
        raise LsmiaError(
            "the results hold no defended model: add variants with target.defense.kind mid, bido or tl "
            "(or label smoothing through study.alphas) to the plan, e.g. configs/defenses.yaml"
        )
    return fronts


def matched_table(fronts: dict[str, list[Point]], levels: list[float]) -> list[dict[str, Any]]:
    """Per level and defense: worst-case acc@1, delta_eval and xi at that test accuracy (mean, 95 % CI, n)."""
    table = []
    for level in levels:
        for family, front in fronts.items():
            matched = at_level(front, level)
            if matched is not None:
                table.append(
                    {
                        "test_acc": level,
                        "defense": family,
                        **{m: matched.stat(m) for m in metric_registry.front()},
                        "model": matched.model,
                        "strongest": matched.loss,
                    }
                )
    return table


def compare(results: dict[str, Any], levels: list[float] | None = None) -> Comparison:
    """The fronts and the equal-accuracy table of an ablation's results (see the module docstring)."""
    points = collect_points(results)
    return compare_points(points, _undefended(points), levels)


def compare_points(points: list[Point], undefended: Point, levels: list[float] | None = None) -> Comparison:
    """The fronts and the equal-accuracy table of models (``points``, the undefended one among them)."""
    fronts = build_fronts(points, undefended)
    chosen = default_levels(fronts, undefended) if levels is None else sorted(levels)
    return Comparison(points, undefended, fronts, chosen, matched_table(fronts, chosen))


# --------------------------------------------------------------------------- sweeps as sources

SWEEP_POINTS = "points.json"  # written by lsmia.reporting.sweep_tables (lsmia sweep) into out/sweep/<study>/


def _add_row(
    points: dict[str, Point], flat: dict[str, Any], alpha: float, seed: int, label: str, row: dict[str, Any]
) -> None:
    """One model's row (test accuracy, metrics under ``row['attack_loss']``) into ``points``, keyed by the model."""
    key = _model_key(flat, alpha)
    point = points.setdefault(key, Point(*describe(flat, alpha), alpha))
    point.variants += [] if label in point.variants else [label]
    point.test_acc[seed] = float(row["test_acc"])
    point.attacks.setdefault(str(row.get("attack_loss", BASE_LOSS)), {})[seed] = {
        m: float(row[m]) for m in metric_registry.front() if isinstance(row.get(m), (int, float))
    }


def sweep_points(record: dict[str, Any]) -> list[Point]:
    """The models of a sweep's ``points.json``: one per distinct defense setting and alpha (trials that repeat a
    setting are one model), plus the undefended reference the sweep recorded (when it found one)."""
    points: dict[str, Point] = {}
    for trial in record.get("trials", []):
        label = f"{record.get('study', 'sweep')} trial {trial['trial']}"
        _add_row(points, trial.get("defense", {}), float(trial["alpha"]), int(trial["seed"]), label, trial)
    reference = record.get("undefended")
    if reference:
        _add_row(points, {}, 0.0, int(reference["seed"]), str(reference.get("source", "study")), reference)
    return list(points.values())


def load_source(path: Path) -> tuple[str, list[Point]]:
    """(name, models) of one input of ``lsmia compare-defenses``: an ablation's results.json, or a sweep's folder
    (or its points.json)."""
    path = Path(path)
    if path.is_dir():
        for name in (SWEEP_POINTS, "results.json"):
            if (path / name).is_file():
                return load_source(path / name)
        raise LsmiaError(
            f"{path} holds neither a sweep's {SWEEP_POINTS} nor an ablation's results.json: pass "
            "out/sweep/<study> after 'lsmia sweep --defense ...' or out/ablations/<name>/results.json"
        )
    if path.name == SWEEP_POINTS:
        record = load_json(path, what="sweep points", fix="run 'lsmia sweep --defense ...' for that study first")
        if not isinstance(record, dict) or "trials" not in record:
            raise LsmiaError(f"{path} is not the {SWEEP_POINTS} of 'lsmia sweep': pass out/sweep/<study>")
        return str(record.get("study", path.parent.name)), sweep_points(record)
    results = load_results(path)
    return str(results.get("plan", {}).get("name", path.parent.name)), collect_points(results)


def combine(sources: Sequence[tuple[str, list[Point]]]) -> tuple[list[Point], Point | None]:
    """The models of several sources on one figure: the first undefended model stands for all (the others are
    left out); a defense family seen in an earlier source is renamed ``family (source)``."""
    undefended = next((p for _, points in sources for p in points if p.undefended), None)
    combined: list[Point] = [] if undefended is None else [undefended]
    seen: set[str] = set()
    for name, points in sources:
        families = {p.family for p in points if not p.undefended}
        for point in (p for p in points if not p.undefended):
            if point.family in seen:
                point.family = f"{point.family} ({name})"
            combined.append(point)
        seen |= families
    return combined, undefended


def compare_sources(sources: Sequence[Path], levels: list[float] | None = None) -> Comparison:
    """The comparison of ablations' results.json and sweeps' folders together (see the module docstring)."""
    points, undefended = combine([load_source(path) for path in sources])
    if undefended is None:
        raise LsmiaError(
            "no undefended model among the inputs: add an ablation with the variant 'none: {}', the folder of "
            "an 'lsmia sweep --defense none' study, or evaluate the study's alpha 0 target before the sweep"
        )
    return compare_points(points, undefended, levels)


def load_results(path: Path) -> dict[str, Any]:
    results = load_json(path, what="ablation results", fix="run 'lsmia ablate configs/defenses.yaml' first")
    if not isinstance(results, dict) or not {"variants", "rows"} <= results.keys():
        raise LsmiaError(f"{path} is not the results.json of 'lsmia ablate': pass out/ablations/<name>/results.json")
    return results


def parse_levels(text: str | None) -> list[float] | None:
    """``--levels 0.6,0.7``: test accuracies in [0, 1]; None: the default levels."""
    if text is None:
        return None
    try:
        levels = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise LsmiaError(f"--levels '{text}' is not a comma-separated list of numbers: write e.g. 0.6,0.7") from None
    if not levels or not all(0.0 <= level <= 1.0 for level in levels):
        raise LsmiaError(f"--levels '{text}' must list test accuracies from 0 to 1: write e.g. 0.6,0.7")
    return levels


# --------------------------------------------------------------------------- writing


def point_record(point: Point, fronts: dict[str, list[Point]]) -> dict[str, Any]:
    return {
        "defense": point.family,
        "strength": point.strength,
        "alpha": point.alpha,
        "variants": point.variants,
        "test_acc": stat(point.test_acc.values()),
        "strongest": point.strongest,
        "attacks": {
            loss: {m: stat(row[m] for row in seeds.values() if m in row) for m in metric_registry.front()}
            for loss, seeds in sorted(point.attacks.items())
        },
        "on_front": [family for family, front in fronts.items() if point in front],
    }


def to_json(comparison: Comparison, source: str) -> dict[str, Any]:
    fronts = comparison.fronts
    lines = {
        family: [{"strength": p.strength, "test_acc": p.mean_test_acc(), "final_acc1": p.worst_mean()} for p in front]
        for family, front in fronts.items()
    }
    plain = comparison.undefended
    return {
        "source": source,
        "levels": comparison.levels,
        "table": comparison.table,
        "winners": winners(comparison),
        "undefended": None if plain is None else point_record(plain, fronts),
        "fronts": lines,
        "points": [point_record(p, fronts) for p in comparison.points],
    }


def winners(comparison: Comparison) -> list[dict[str, Any]]:
    """Per level, the defense with the lowest mean worst-case acc@1 (``none`` when no defense's model there beats
    the undefended one; tied defenses joined by ``=``), and whether its interval clears the next."""
    out = []
    for level in comparison.levels:
        rows = sorted((r for r in comparison.table if r["test_acc"] == level), key=lambda r: r["final_acc1"]["mean"])
        if len(rows) < 2:
            continue
        lowest = rows[0]["final_acc1"]["mean"]
        tied = [r for r in rows if r["final_acc1"]["mean"] <= lowest + 1e-12]
        rest = rows[len(tied) :]
        best, second = rows[0]["final_acc1"], (rest[0] if rest else rows[1])["final_acc1"]
        undefended = rows[0]["model"] == UNDEFENDED
        out.append(
            {
                "test_acc": level,
                "defense": NO_DEFENSE if undefended else " = ".join(sorted(r["defense"] for r in tied)),
                "runner_up": rest[0]["defense"] if rest else None,
                "intervals_separate": bool(rest) and best["mean"] + best["ci95"] < second["mean"] - second["ci95"],
            }
        )
    return out


TABLE_COLUMNS = ("test acc", "defense", "attack acc@1", "δ_eval", "ξ", "strongest attack", "model")


def table_cells(table: Sequence[dict[str, Any]]) -> list[list[str]]:
    """The equal-accuracy table (``Comparison.table`` or compare.json's ``table``) as text cells, by falling test
    accuracy, then rising attack acc@1 (TABLE_COLUMNS)."""
    return [
        [
            number(row["test_acc"], 3),
            str(row["defense"]),
            stat_text(row["final_acc1"]),
            stat_text(row["delta_eval"], 1),
            stat_text(row["xi"]),
            row["strongest"],
            row["model"],
        ]
        for row in sorted(table, key=lambda r: (-r["test_acc"], r["final_acc1"]["mean"]))
    ]


def winner_lines(found: Sequence[dict[str, Any]]) -> list[str]:
    """Per level, which defense has the lowest attack acc@1 (``winners`` or compare.json's), in words."""
    lines = []
    for w in found:
        at = f"at test accuracy {number(w['test_acc'], 3)}: "
        if w["defense"] == NO_DEFENSE:
            lines.append(at + "no defense has a model there with lower attack acc@1 than the undefended model")
            continue
        spread = "separate" if w["intervals_separate"] else "overlap"
        lines.append(
            at + f"{w['defense']} {'tie for' if ' = ' in w['defense'] else 'has'} the lowest attack acc@1 "
            f"(next: {w['runner_up']}; 95 % intervals {spread})"
        )
    return lines


def markdown(comparison: Comparison) -> str:
    lines = [
        "## Defenses at equal test accuracy (worst case over attack losses)",
        "",
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|---|---|---|---|---|---|---|",
        *["| " + " | ".join(cells) + " |" for cells in table_cells(comparison.table)],
    ]
    if not comparison.levels:
        lines.append("| — | no test accuracy that two defenses keep: pass --levels | | | | | |")
    bold = [w if w["defense"] == NO_DEFENSE else w | {"defense": f"**{w['defense']}**"} for w in winners(comparison)]
    lines += ["", *[f"- {line}" for line in winner_lines(bold)]]
    lines += ["", *model_lines(comparison)]
    return "\n".join(lines) + "\n"


def model_lines(comparison: Comparison) -> list[str]:
    losses = sorted({loss for p in comparison.points for loss in p.attacks})
    heads = " | ".join(f"acc@1 {loss}" for loss in losses)
    lines = [
        "## Every model",
        "",
        f"| defense | strength | test acc | {heads} | strongest | on front |",
        "|---|---|---|" + "---|" * len(losses) + "---|---|",
    ]
    for p in sorted(comparison.points, key=lambda p: (p.family, -p.mean_test_acc())):
        record = point_record(p, comparison.fronts)
        accs = [
            stat_text(record["attacks"][loss]["final_acc1"]) if loss in record["attacks"] else "" for loss in losses
        ]
        lines.append(
            f"| {p.family} | {p.strength} | {stat_text(record['test_acc'])} | {' | '.join(accs)} | "
            f"{p.strongest} | {', '.join(record['on_front']) or 'no'} |"
        )
    seeds = sorted({s for p in comparison.points for s in p.test_acc})
    lines += [
        "",
        f"Seeds {seeds}; mean ± half-width of the 95 % t-interval over seeds. acc@1 is the evaluation "
        "model's top-1 accuracy on the final samples; each model counts against its strongest attack. "
        "At each test accuracy, each defense's model of lowest attack acc@1 among those that keep at least that "
        "mean test accuracy (the undefended model counts for every defense); no interpolation between models.",
    ]
    return lines


def plot_fronts(comparison: Comparison, path: Path) -> Path:
    """Test accuracy vs worst-case attack acc@1: each defense's points (hollow: off its front) and its front as the
    step the matched table reads (the best acc@1 that keeps at least that accuracy),
    95 % intervals over seeds on both axes, the undefended model as a black star; stable PNG bytes."""
    from matplotlib.figure import Figure  # no pyplot: Agg canvas, no global backend state

    fig = Figure(figsize=style.FRONTS_SIZE, layout="constrained")
    ax = fig.subplots()
    for index, (family, front) in enumerate(comparison.fronts.items()):
        colour = style.defense_colour(index)
        ax.plot(
            [p.mean_test_acc() for p in front],
            [p.worst_mean() for p in front],
            "-",
            drawstyle="steps-pre",
            color=colour,
            label=family,
        )
        for point in (p for p in comparison.points if p.family == family):
            _errorbar(ax, point, colour, filled=point in front)
    if comparison.undefended is not None:
        _errorbar(ax, comparison.undefended, style.UNDEFENDED, filled=True, marker="*", size=12, label="no defense")
    ax.set_ylim(-0.02, 1.02)  # an accuracy; t-intervals of few seeds may reach past [0, 1]
    ax.set_xlabel("test accuracy")
    ax.set_ylabel("attack acc@1 (worst case over attack losses)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=style.LEGEND_FONT)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=style.STABLE_DPI, metadata=style.STABLE_METADATA)
    return path


def _errorbar(
    ax: Any, point: Point, colour: str, filled: bool, marker: str = "o", size: int = 6, label: str | None = None
) -> None:
    x, y = stat(point.test_acc.values()), stat(point.worst_case("final_acc1").values())
    xerr = x["ci95"] if math.isfinite(x["ci95"]) else 0.0
    yerr = y["ci95"] if math.isfinite(y["ci95"]) else 0.0
    ax.errorbar(
        [x["mean"]],
        [y["mean"]],
        xerr=[xerr],
        yerr=[yerr],
        fmt=marker,
        color=colour,
        markersize=size,
        markerfacecolor=colour if filled else "white",
        capsize=2,
        label=label,
    )


def compare_defenses(
    results_path: Path, out_dir: Path | None = None, levels: list[float] | None = None
) -> tuple[Comparison, Path]:
    """Read an ablation's results.json, write compare.json, compare.md and fronts.png; (comparison, folder)."""
    results_path = Path(results_path)
    comparison = compare(load_results(results_path), levels)
    folder = Path(out_dir) if out_dir is not None else results_path.parent
    write_comparison(comparison, folder, str(results_path))
    return comparison, folder


def write_comparison(comparison: Comparison, folder: Path, source: str) -> None:
    """compare.json, compare.md and fronts.png of ``comparison`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    save_json(to_json(comparison, source), folder / "compare.json")
    with atomic_path(folder / "compare.md") as tmp:
        tmp.write_text(markdown(comparison), encoding="utf-8")
    plot_fronts(comparison, folder / "fronts.png")


def compare_many(
    sources: Sequence[Path], out_dir: Path | None = None, levels: list[float] | None = None
) -> tuple[Comparison, Path]:
    """``lsmia compare-defenses`` on one or more sources: one ablation's results.json alone as before; sweeps'
    folders and several sources overlaid (--out-dir needed for several). (comparison, folder)."""
    paths = [Path(p) for p in sources]
    if not paths:
        raise LsmiaError("no input: pass an ablation's results.json or sweep folders (out/sweep/<study>)")
    if len(paths) == 1 and not paths[0].is_dir() and paths[0].name != SWEEP_POINTS:
        return compare_defenses(paths[0], out_dir, levels)
    if out_dir is None and len(paths) > 1:
        raise LsmiaError("several inputs: pass --out-dir, the folder for compare.{md,json} and fronts.png")
    folder = Path(out_dir) if out_dir is not None else (paths[0] if paths[0].is_dir() else paths[0].parent)
    comparison = compare_sources(paths, levels)
    write_comparison(comparison, folder, ", ".join(str(p) for p in paths))
    return comparison, folder


def sweep_figure(record: dict[str, Any], path: Path) -> Path:
    """A sweep's own front figure (the undefended model marked when the sweep found one)."""
    points = sweep_points(record)
    undefended = next((p for p in points if p.undefended), None)
    return plot_fronts(Comparison(points, undefended, fronts_of(points, undefended), [], []), path)
