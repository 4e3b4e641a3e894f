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
4. **Matched accuracy.** Each front is interpolated linearly in mean test accuracy at common levels (default:
   5 levels spanning the accuracy range every front covers). At a level between two front points with weights
   (1 - w, w), each seed's values are mixed with the same weights, giving one value per seed: mean and 95 %
   t-interval over seeds (the interval leaves out the seeds' spread in test accuracy). No extrapolation: a
   level outside a front's range is left empty.

Writes ``compare.json``, ``compare.md`` and ``fronts.png`` (byte-stable) into the output folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lsmia.config import DefenseConfig
from lsmia.errors import LsmiaError
from lsmia.stats import mean_ci
from lsmia.utils import atomic_path, load_json, save_json

METRICS = ("final_acc1", "delta_eval", "xi")
BASE_LOSS = "base"  # a variant without attack.loss: the base params' loss
NO_DEFENSE = "none"
UNDEFENDED = "undefended"  # the strength label of the model without any defense
DEFAULT_LEVELS = 5
COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
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
    default = DefenseConfig()

    def value(name: str) -> Any:
        return flat.get(f"target.defense.{name}", getattr(default, name))

    if kind == "mid":
        return f"β={value('mid_beta'):g}"
    if kind == "bido":
        return f"λx={value('bido_lambda_x'):g}, λy={value('bido_lambda_y'):g}"
    if kind == "tl":
        return f"{value('tl_trained_layers')} trained"
    return ""


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

    @property
    def strongest(self) -> str:
        """The attack loss with the highest mean acc@1 (ties: the first by name)."""
        return max(sorted(self.attacks), key=lambda loss: self.mean(loss))

    def worst_case(self, metric: str) -> dict[int, float]:
        """Per seed, ``metric`` of the strongest attack."""
        return {seed: row[metric] for seed, row in self.attacks[self.strongest].items() if metric in row}


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
        point.attacks.setdefault(loss, {})[seed] = {m: float(row[m]) for m in METRICS if m in row}
    return list(points.values())


# --------------------------------------------------------------------------- fronts and interpolation


def pareto_front(points: Iterable[Point]) -> list[Point]:
    """The points no other point dominates (at least its mean test accuracy, at most its mean worst-case acc@1),
    by ascending test accuracy."""
    ordered = sorted(points, key=lambda p: (-p.mean_test_acc(), p.mean(p.strongest)))
    front, best = [], math.inf
    for point in ordered:
        acc1 = point.mean(point.strongest)
        if acc1 < best:
            front.append(point)
            best = acc1
    return front[::-1]


@dataclass
class Matched:
    """A front at one test-accuracy level: per metric the per-seed values, and where on the front it lies."""

    values: dict[str, list[float]]
    between: list[str]
    losses: list[str]

    def stat(self, metric: str) -> Stat:
        mean, ci95, n = mean_ci(self.values.get(metric, []))
        return {"mean": mean, "ci95": ci95, "n": n}


def _mix(a: dict[int, float], b: dict[int, float], w: float) -> list[float]:
    seeds = sorted(a.keys() & b.keys())
    return [(1.0 - w) * a[s] + w * b[s] for s in seeds]


def interpolate(front: Sequence[Point], level: float) -> Matched | None:
    """The front at mean test accuracy ``level`` (None outside its range): per-seed values mixed linearly."""
    xs = [p.mean_test_acc() for p in front]
    if not front or level < xs[0] - 1e-12 or level > xs[-1] + 1e-12:
        return None
    upper = next(i for i, x in enumerate(xs) if x >= level - 1e-12)
    lower = max(upper - 1, 0)
    span = xs[upper] - xs[lower]
    w = 1.0 if span <= 0 else (level - xs[lower]) / span
    a, b = front[lower], front[upper]
    if w >= 1.0 - 1e-12:
        a, w = b, 1.0
    pair = [a] if a is b else [a, b]
    values = {m: _mix(a.worst_case(m), b.worst_case(m), w) for m in METRICS}
    return Matched(values, [p.strength for p in pair], list(dict.fromkeys(p.strongest for p in pair)))


def common_levels(fronts: dict[str, list[Point]], count: int = DEFAULT_LEVELS) -> list[float]:
    """``count`` accuracy levels, evenly spaced over the range that every front covers (empty: none shared)."""
    low = max(front[0].mean_test_acc() for front in fronts.values())
    high = min(front[-1].mean_test_acc() for front in fronts.values())
    if low > high:
        return []
    return [float(v) for v in np.linspace(low, high, count)] if high > low else [low]


# --------------------------------------------------------------------------- the comparison


@dataclass
class Comparison:
    points: list[Point]
    undefended: Point
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


def build_fronts(points: list[Point], undefended: Point) -> dict[str, list[Point]]:
    families = sorted({p.family for p in points} - {NO_DEFENSE})
    if not families:
        raise LsmiaError(
            "the results hold no defended model: add variants with target.defense.kind mid, bido or tl "
            "(or label smoothing through study.alphas) to the plan, e.g. configs/defenses.yaml"
        )
    return {f: pareto_front([undefended, *[p for p in points if p.family == f]]) for f in families}


def matched_table(fronts: dict[str, list[Point]], levels: list[float]) -> list[dict[str, Any]]:
    """Per level and defense: worst-case acc@1, delta_eval and xi at that test accuracy (mean, 95 % CI, n)."""
    table = []
    for level in levels:
        for family, front in fronts.items():
            matched = interpolate(front, level)
            if matched is not None:
                table.append(
                    {
                        "test_acc": level,
                        "defense": family,
                        **{m: matched.stat(m) for m in METRICS},
                        "between": matched.between,
                        "strongest": matched.losses,
                    }
                )
    return table


def compare(results: dict[str, Any], levels: list[float] | None = None) -> Comparison:
    """The fronts and the equal-accuracy table of an ablation's results (see the module docstring)."""
    points = collect_points(results)
    undefended = _undefended(points)
    fronts = build_fronts(points, undefended)
    chosen = common_levels(fronts) if levels is None else sorted(levels)
    return Comparison(points, undefended, fronts, chosen, matched_table(fronts, chosen))


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


def _stat(values: Iterable[float]) -> Stat:
    mean, ci95, n = mean_ci(list(values))
    return {"mean": mean, "ci95": ci95, "n": n}


def point_record(point: Point, fronts: dict[str, list[Point]]) -> dict[str, Any]:
    return {
        "defense": point.family,
        "strength": point.strength,
        "alpha": point.alpha,
        "variants": point.variants,
        "test_acc": _stat(point.test_acc.values()),
        "strongest": point.strongest,
        "attacks": {
            loss: {m: _stat(row[m] for row in seeds.values() if m in row) for m in METRICS}
            for loss, seeds in sorted(point.attacks.items())
        },
        "on_front": [family for family, front in fronts.items() if point in front],
    }


def to_json(comparison: Comparison, source: str) -> dict[str, Any]:
    fronts = comparison.fronts
    lines = {
        family: [
            {"strength": p.strength, "test_acc": p.mean_test_acc(), "final_acc1": p.mean(p.strongest)} for p in front
        ]
        for family, front in fronts.items()
    }
    return {
        "source": source,
        "levels": comparison.levels,
        "table": comparison.table,
        "winners": winners(comparison),
        "undefended": point_record(comparison.undefended, fronts),
        "fronts": lines,
        "points": [point_record(p, fronts) for p in comparison.points],
    }


def winners(comparison: Comparison) -> list[dict[str, Any]]:
    """Per level, the defense with the lowest mean worst-case acc@1, and whether its interval clears the next."""
    out = []
    for level in comparison.levels:
        rows = sorted((r for r in comparison.table if r["test_acc"] == level), key=lambda r: r["final_acc1"]["mean"])
        if len(rows) >= 2:
            best, second = rows[0]["final_acc1"], rows[1]["final_acc1"]
            clear = best["mean"] + best["ci95"] < second["mean"] - second["ci95"]
            out.append(
                {
                    "test_acc": level,
                    "defense": rows[0]["defense"],
                    "runner_up": rows[1]["defense"],
                    "intervals_separate": bool(clear),
                }
            )
    return out


def _cell(stat: Stat, digits: int = 3) -> str:
    if not math.isfinite(stat["mean"]):
        return "—"
    return (
        f"{stat['mean']:.{digits}f}"
        if not math.isfinite(stat["ci95"])
        else f"{stat['mean']:.{digits}f} ± {stat['ci95']:.{digits}f}"
    )


def markdown(comparison: Comparison) -> str:
    lines = [
        "## Defenses at equal test accuracy (worst case over attack losses)",
        "",
        "| test acc | defense | attack acc@1 | δ_eval | ξ | strongest attack | front points |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in sorted(comparison.table, key=lambda r: (-r["test_acc"], r["final_acc1"]["mean"])):
        lines.append(
            f"| {row['test_acc']:.3f} | {row['defense']} | {_cell(row['final_acc1'])} | "
            f"{_cell(row['delta_eval'], 1)} | {_cell(row['xi'])} | {' / '.join(row['strongest'])} | "
            f"{' … '.join(row['between'])} |"
        )
    if not comparison.levels:
        lines.append("| — | no accuracy range is shared by every front: pass --levels | | | | | |")
    lines += [
        "",
        *[
            f"- at test accuracy {w['test_acc']:.3f}: **{w['defense']}** has the lowest attack acc@1 "
            f"(next: {w['runner_up']}; 95 % intervals {'separate' if w['intervals_separate'] else 'overlap'})"
            for w in winners(comparison)
        ],
    ]
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
        accs = [_cell(record["attacks"][loss]["final_acc1"]) if loss in record["attacks"] else "" for loss in losses]
        lines.append(
            f"| {p.family} | {p.strength} | {_cell(record['test_acc'])} | {' | '.join(accs)} | "
            f"{p.strongest} | {', '.join(record['on_front']) or 'no'} |"
        )
    seeds = sorted({s for p in comparison.points for s in p.test_acc})
    lines += [
        "",
        f"Seeds {seeds}; mean ± half-width of the 95 % t-interval over seeds. acc@1 is the evaluation "
        "model's top-1 accuracy on the final samples; each model counts against its strongest attack. "
        "Matched-accuracy rows interpolate each defense's Pareto front (with the undefended model as strength "
        "0) linearly at that mean test accuracy, seed by seed.",
    ]
    return lines


def plot_fronts(comparison: Comparison, path: Path) -> Path:
    """Test accuracy vs worst-case attack acc@1: each defense's points (hollow: off its front) and front line,
    95 % intervals over seeds on both axes, the undefended model as a black star; stable PNG bytes."""
    from matplotlib.figure import Figure  # no pyplot: Agg canvas, no global backend state

    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.subplots()
    for index, (family, front) in enumerate(comparison.fronts.items()):
        colour = COLOURS[index % len(COLOURS)]
        ax.plot(
            [p.mean_test_acc() for p in front], [p.mean(p.strongest) for p in front], "-", color=colour, label=family
        )
        for point in (p for p in comparison.points if p.family == family):
            _errorbar(ax, point, colour, filled=point in front)
    _errorbar(ax, comparison.undefended, "black", filled=True, marker="*", size=12, label="no defense")
    ax.set_ylim(-0.02, 1.02)  # an accuracy; t-intervals of few seeds may reach past [0, 1]
    ax.set_xlabel("test accuracy")
    ax.set_ylabel("attack acc@1 (worst case over attack losses)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    return path


def _errorbar(
    ax: Any, point: Point, colour: str, filled: bool, marker: str = "o", size: int = 6, label: str | None = None
) -> None:
    x, y = _stat(point.test_acc.values()), _stat(point.worst_case("final_acc1").values())
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
    folder.mkdir(parents=True, exist_ok=True)
    save_json(to_json(comparison, str(results_path)), folder / "compare.json")
    with atomic_path(folder / "compare.md") as tmp:
        tmp.write_text(markdown(comparison), encoding="utf-8")
    plot_fronts(comparison, folder / "fronts.png")
    return comparison, folder
