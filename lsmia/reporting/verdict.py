"""One verdict per defense: PPA as published beside the adaptive attacker, with the target's acceptance.

An ablation plan's variants are grouped by what they train (every override outside ``attack.*`` and
``study.*``: the defense) and told apart by how they attack (``attack.*``). A variant is

- **published** when it ranks with PPA's float32 softmax (``attack.ranking: softmax``), the raw logits
  (no ``attack.temperature``), PPA's Poincaré loss and budget;
- **adaptive** otherwise (exact ranking, a logit temperature or standardisation, another loss, the margin
  score or a larger budget): an attacker who knows the defense;
- a **negative control** when it sets ``attack.target_logit_scale``: the alpha = 0 target with its logits
  multiplied by the defended target's logit-norm ratio, the same decisions, so no privacy by construction.

Per defense and alpha, paired by seed against alpha = 0 of the same group (a trained defense such as MID,
BiDO or TL, set by ``target.defense.*`` at alpha = 0, against the undefended group's alpha = 0): the published
ratio, the
adaptive ratio (strongest adaptive attack at alpha over the strongest at 0) and the worst case over every
attack (lsmia.reporting.stats.worst_case_ratio), the cost in test accuracy, and the target's acceptance of the final
samples (the fraction it classifies as their class): an attack the target itself no longer believes measures
its own arithmetic, not what the target leaks. A control row compares the scaled target with alpha = 0 under
the same attacker.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from lsmia.errors import LsmiaError
from lsmia.reporting import figures as style
from lsmia.reporting.ablation_tables import markdown_table
from lsmia.reporting.defense_comparison import flatten
from lsmia.reporting.formatting import stat_text
from lsmia.reporting.stats import halves, lowers, paired, paired_attacks, stat, strongest_per_seed, worst_case_ratio
from lsmia.utils import atomic_path, load_json, save_json

PUBLISHED_LOSS = "poincare"
Stat = dict[str, Any]


class Replicate(NamedTuple):
    """One seed's measurement: pairs form only between replicates that share the evaluation model that judged them
    and the kind of machine that built them (rows from before these were recorded share the empty ones)."""

    seed: int
    eval_model_key: str = ""
    machine: str = ""

    @classmethod
    def of(cls, row: dict[str, Any]) -> Replicate:
        return cls(int(row["seed"]), str(row.get("eval_model_key", "")), str(row.get("machine", "")))


PerSeed = dict[Replicate, float]


def attacker_of(flat: dict[str, Any]) -> tuple[str, str]:
    """(kind, label) of a variant's attack overrides: kind is published, adaptive or control."""
    attack = {k.removeprefix("attack."): v for k, v in flat.items() if k.startswith("attack.")}
    scale = float(attack.pop("target_logit_scale", 1.0))
    attack.pop("targets", None)  # which classes, not how
    loss = str(attack.get("loss", PUBLISHED_LOSS))
    published = attack.get("ranking") == "softmax" and set(attack) <= {"ranking"}
    words = ["PPA as published" if published else "adaptive"]
    if not published:
        words += [f"{k}={v}" for k, v in sorted(attack.items()) if k not in ("loss",)]
        words += [f"loss={loss}"]
    label = words[0] + (f" ({', '.join(words[1:])})" if len(words) > 1 else "")
    kind = "published" if published else "adaptive"
    return (f"control ×{scale:g} {kind}" if scale != 1.0 else kind), label


def trained_of(flat: dict[str, Any]) -> dict[str, Any]:
    """The overrides that change what is trained (not how it is attacked, not which alphas)."""
    return {k: v for k, v in sorted(flat.items()) if not k.startswith(("attack.", "study."))}


def defense_of(flat: dict[str, Any]) -> str:
    return "; ".join(f"{k}={v}" for k, v in trained_of(flat).items())


@dataclass
class Group:
    """One defense (what is trained): per (alpha, attacker label) the per-seed rows, and who attacked."""

    name: str
    trained: str
    flat: dict[str, Any] = field(default_factory=dict)  # the trained overrides
    cells: dict[tuple[float, str], dict[Replicate, dict[str, Any]]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)  # attacker label -> kind

    def values(self, alpha: float, kind: str, metric: str = "final_acc1") -> dict[str, PerSeed]:
        """Per attacker of ``kind`` at ``alpha``: seed -> metric."""
        out: dict[str, PerSeed] = {}
        for (a, label), rows in self.cells.items():
            if a == alpha and self.kinds[label] == kind:
                out[label] = {seed: float(row[metric]) for seed, row in rows.items() if metric in row}
        return out

    def alphas(self) -> list[float]:
        return sorted({a for a, _ in self.cells if a != 0.0}, reverse=True)

    def defended(self) -> bool:
        """A trained defense other than smoothing (``target.defense.kind`` set, not none)."""
        return self.flat.get("target.defense.kind", "none") != "none"

    def controls(self) -> list[str]:
        return sorted({kind.rsplit(" ", 1)[0] for kind in self.kinds.values() if kind.startswith("control")})


def _group_name(variants: Sequence[str]) -> str:
    """The underscore-separated words all of a group's variant names start with (e.g. ``warmup``)."""
    words = [v.split("_") for v in variants]
    common = []
    for column in zip(*words, strict=False):
        if len(set(column)) != 1:
            break
        common.append(column[0])
    return "_".join(common) or variants[0]


def collect(results: Sequence[dict[str, Any]]) -> list[Group]:
    """The defenses of one or more ablations' ``results.json``."""
    groups: dict[str, Group] = {}
    names: dict[str, list[str]] = {}
    for record in results:
        overrides = {name: flatten(v.get("overrides", {})) for name, v in record["variants"].items()}
        for row in record["rows"]:
            flat = overrides[row["variant"]]
            trained = defense_of(flat)
            group = groups.setdefault(trained, Group(trained, trained, trained_of(flat)))
            kind, label = attacker_of(flat)
            group.kinds[label if not kind.startswith("control") else f"{kind}: {label}"] = kind
            key = label if not kind.startswith("control") else f"{kind}: {label}"
            group.cells.setdefault((float(row["alpha"]), key), {})[Replicate.of(row)] = row
            names.setdefault(trained, [])
            if row["variant"] not in names[trained]:
                names[trained].append(row["variant"])
    for trained, group in groups.items():
        group.name = _group_name(names[trained])
    return list(groups.values())


def _best(per_attack: dict[str, PerSeed]) -> PerSeed:
    return {seed: value for seed, (_, value) in strongest_per_seed(per_attack).items()}


def _stat(values: PerSeed) -> Stat:
    return stat(values.values())


def _ratio_or_cost(at_alpha: PerSeed, at_zero: PerSeed, how: Callable[[float, float], float]) -> Stat:
    """``how(value at alpha, value at 0)`` paired by seed (lsmia.reporting.stats.paired)."""
    rows = [{"alpha": 1.0, "seed": s, "v": v} for s, v in at_alpha.items()]
    rows += [{"alpha": 0.0, "seed": s, "v": v} for s, v in at_zero.items()]
    return paired(rows, 1.0, "v", how)


def _ratio(at_alpha: PerSeed, at_zero: PerSeed) -> Stat:
    return _ratio_or_cost(at_alpha, at_zero, lambda a, z: a / z if z > 0 else math.nan)


def _test_acc(group: Group, alpha: float) -> PerSeed:
    """Per seed, the test accuracy of the group's target at ``alpha`` (every attacker reads the same target)."""
    return {s: float(r["test_acc"]) for (a, _), rows in group.cells.items() if a == alpha for s, r in rows.items()}


def _acceptance(group: Group, alpha: float, kind: str, attacks: dict[str, PerSeed]) -> Stat:
    """The target's acceptance of the final samples of the strongest attack of ``kind``, per seed."""
    strongest = strongest_per_seed(attacks)
    accepted = group.values(alpha, kind, "final_target_acceptance_raw")
    return _stat({s: accepted[label][s] for s, (label, _) in strongest.items() if s in accepted.get(label, {})})


def _side_by_side(group: Group, alpha: float, base: Group, prefix: str = "") -> dict[str, Any]:
    """The attackers on ``group``'s target at ``alpha`` (kinds ``prefix``published/adaptive) against ``base``'s
    alpha = 0 targets: acc@1, acceptance and the three ratios (each attack paired with itself at alpha = 0)."""
    published, adaptive = group.values(alpha, f"{prefix}published"), group.values(alpha, f"{prefix}adaptive")
    row = {
        "acc1_published": _stat(_best(published)),
        "acc1_adaptive": _stat(_best(adaptive)),
        "acceptance_published": _acceptance(group, alpha, f"{prefix}published", published),
        "acceptance_adaptive": _acceptance(group, alpha, f"{prefix}adaptive", adaptive),
    }
    if prefix:  # a control's attack labels carry the control's name: pair them with alpha = 0's by the attack
        published, adaptive = _attack_names(published), _attack_names(adaptive)
    zero_published, zero_adaptive = base.values(0.0, "published"), base.values(0.0, "adaptive")
    return row | {
        "ratio_published": _paired_ratio(published, zero_published),
        "ratio_adaptive": _paired_ratio(adaptive, zero_adaptive),
        "ratio_worst_case": worst_case_ratio({**published, **adaptive}, {**zero_published, **zero_adaptive}),
        "ratio_until_accepted": _paired_ratio(_until_accepted(adaptive), _until_accepted(zero_adaptive)),
        "capped_acceptance": _capped_acceptance(group, alpha, f"{prefix}adaptive", adaptive),
    }


def _capped_acceptance(group: Group, alpha: float, kind: str, attacks: dict[str, PerSeed]) -> Stat:
    """Per seed where the strongest attack run until accepted stopped at its step cap (the target accepted less
    than its ``until_accept`` of the batches): that acceptance. Such an attack is unconverged, so a protection
    measured with it is provisional."""
    strongest = strongest_per_seed(_until_accepted(attacks))
    accepted = group.values(alpha, kind, "until_accept_accepted")
    capped = {
        seed: accepted[label][seed]
        for seed, (label, _) in strongest.items()
        if seed in accepted.get(label, {}) and accepted[label][seed] < _acceptance_goal(label)
    }
    return _stat(capped)


def _acceptance_goal(label: str) -> float:
    """The ``until_accept`` an attack label names (``adaptive (..., until_accept=0.9, ...)``)."""
    found = re.search(r"until_accept=([0-9.]+)", label)
    return float(found.group(1)) if found else 1.0


def _until_accepted(per_attack: dict[str, PerSeed]) -> dict[str, PerSeed]:
    """The attacks run until the target accepts their samples (``attack.until_accept``): compared with themselves,
    they ask whether the defense stops the attack or only slows it."""
    return {label: values for label, values in per_attack.items() if "until_accept=" in label}


def _paired_ratio(at_alpha: dict[str, PerSeed], at_zero: dict[str, PerSeed]) -> Stat:
    """The strongest attack's ratio per seed, over the attacks measured at both ends (lsmia.reporting.stats)."""
    alpha, zero = paired_attacks(at_alpha, at_zero)
    return _ratio(_best(alpha), _best(zero))


def _attack_names(per_attack: dict[str, PerSeed]) -> dict[str, PerSeed]:
    """``control ×26 published: PPA as published`` -> ``PPA as published``."""
    return {label.split(": ", 1)[-1]: values for label, values in per_attack.items()}


def _cost(group: Group, alpha: float, base: Group) -> Stat:
    return _ratio_or_cost(_test_acc(group, alpha), _test_acc(base, 0.0), lambda a, z: z - a)


def _unpaired(group: Group, alpha: float, base: Group) -> list[int]:
    """The seeds of ``group`` at ``alpha`` with no alpha = 0 replicate of ``base`` to pair with (built with another
    evaluation model or on another kind of machine only)."""
    at_zero = {r for (a, _), rows in base.cells.items() if a == 0.0 for r in rows}
    at_alpha = {r for (a, _), rows in group.cells.items() if a == alpha for r in rows}
    return sorted({r.seed for r in at_alpha - at_zero})


def _with_unpaired(row: dict[str, Any], group: Group, alpha: float, base: Group) -> dict[str, Any]:
    """``row``'s verdict, naming the seeds left out for want of a comparable alpha = 0 target."""
    row["unpaired_seeds"] = _unpaired(group, alpha, base)
    if row["unpaired_seeds"]:
        seeds = ", ".join(map(str, row["unpaired_seeds"]))
        row["verdict"] += f"; seed(s) {seeds} left out: no α = 0 target judged alike"
    return row


def undefended(group: Group, groups: Sequence[Group]) -> Group | None:
    """The group that trains the same targets without ``group``'s defense (its alpha = 0 is the baseline)."""
    plain = {k: v for k, v in group.flat.items() if not k.startswith("target.defense.")}
    return next(
        (g for g in groups if g.flat == plain and (g.values(0.0, "published") or g.values(0.0, "adaptive"))), None
    )


def defense_rows(group: Group, groups: Sequence[Group] = ()) -> list[dict[str, Any]]:
    """The verdict rows of one defense: one per alpha < 0 or > 0 (a trained defense: one against the undefended
    alpha = 0 targets of ``groups``), then one per negative control."""
    rows = []
    for alpha in group.alphas():
        row = {"defense": group.name, "trained": group.trained, "alpha": alpha, "defended": False}
        row |= {**_side_by_side(group, alpha, group), "cost": _cost(group, alpha, group)}
        row["verdict"] = verdict_words(row)
        rows.append(_with_unpaired(row, group, alpha, group))
    base = undefended(group, groups) if group.defended() else None
    if base is not None:
        row = {"defense": group.name, "trained": group.trained, "alpha": 0.0, "defended": True}
        row |= {**_side_by_side(group, 0.0, base), "cost": _cost(group, 0.0, base)}
        row["verdict"] = verdict_words(row)
        rows.append(_with_unpaired(row, group, 0.0, base))
    for control in group.controls():
        row = {
            "defense": f"{group.name}: negative control ({control.removeprefix('control ')} head, α = 0)",
            "trained": group.trained,
            "alpha": 0.0,
            "defended": False,
            **_side_by_side(group, 0.0, group, prefix=f"{control} "),
            "cost": {"mean": 0.0, "ci95": 0.0, "n": 0},
        }
        row["verdict"] = control_words(row)
        rows.append(row)
    return rows


def verdict_words(row: dict[str, Any]) -> str:
    """The defense's verdict under the strongest attack (the worst case), judged with intervals."""
    worst = row["ratio_worst_case"]
    if worst["n"] == 0:
        return "not measured"
    until = row.get("ratio_until_accepted", {"n": 0})
    slowed = "; run until the target accepts, the attack recovers as much: slowed, not stopped"
    slowed = slowed if until["n"] >= 3 and not lowers(until) else ""
    capped = row.get("capped_acceptance", {"n": 0})
    provisional = (
        f"; provisional: run until the target accepts, the attack stopped at its step cap on {capped['n']} of "
        f"{worst['n']} seeds (target acceptance {capped['mean']:.2f})"
        if capped["n"] and not slowed
        else ""
    )
    if halves(worst, row["cost"]):
        return "shield: halves the strongest attack at ≤ 5 points" + slowed + provisional
    if lowers(worst):
        published = row["ratio_published"]
        overstated = "; the published attack overstates it" if published["mean"] < worst["mean"] else ""
        return "lowers the strongest attack (interval below 1)" + overstated + slowed + provisional
    if lowers(row["ratio_published"]):
        return "no shield: only the published attack is lowered"
    return "no protection shown (interval reaches 1)" if worst["n"] >= 3 else f"{worst['n']} seed(s): no verdict"


def control_words(row: dict[str, Any]) -> str:
    """A control carries no privacy: an attack that reports protection for it measures its own arithmetic."""
    masked = [who for who in ("published", "adaptive") if lowers(row[f"ratio_{who}"])]
    if not masked:
        return "no attacker reports protection (as it must)"
    return f"{' and '.join(masked)} attack reports protection: arithmetic, not privacy"


COLUMNS = (
    "defense",
    "α",
    "seeds",
    "cost (points)",
    "acc@1 published",
    "acc@1 adaptive",
    "target acceptance published / adaptive",
    "ratio published",
    "ratio adaptive",
    "ratio worst case",
    "ratio run until accepted",
    "verdict",
)


def table_rows(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    out = []
    for row in rows:
        cost = row["cost"]
        points = {**cost, "mean": 100 * cost["mean"], "ci95": 100 * cost["ci95"]} if cost["n"] else None
        out.append(
            [
                row["defense"],
                "–" if row.get("defended") else f"{row['alpha']:+g}",
                str(row["ratio_worst_case"]["n"]),
                stat_text(points, 1),
                stat_text(row["acc1_published"]),
                stat_text(row["acc1_adaptive"]),
                f"{stat_text(row['acceptance_published'], 2)} / {stat_text(row['acceptance_adaptive'], 2)}",
                stat_text(row["ratio_published"], 2),
                stat_text(row["ratio_adaptive"], 2),
                stat_text(row["ratio_worst_case"], 2),
                stat_text(row.get("ratio_until_accepted"), 2),
                row["verdict"],
            ]
        )
    return out


NOTE = (
    "acc@1: the evaluation model's top-1 accuracy on the final samples, the strongest attack of each kind per "
    "seed; target acceptance: the fraction of those samples the target itself classifies as their class. Ratios "
    "are paired by seed against α = 0 of the same defense (a trained defense, α '–', against the undefended "
    "α = 0 targets; 95 % t-intervals over seeds); the worst case is the "
    "strongest of every attack at α over the strongest at α = 0, per seed; 'run until accepted' pairs an attack that "
    "goes on until the target accepts its samples (attack.until_accept, or a step cap) with itself at α = 0: a ratio near 1 "
    "there means the defense slows the attack rather than stops it, and a verdict is 'provisional' where that "
    "attack stopped at its step cap before the target accepted what it asked for (a larger budget may recover "
    "more). A negative control is the α = 0 "
    "target with its logits multiplied by the defended target's logit-norm ratio: the same decisions, so any "
    "protection an attack reports for it is the attack's own arithmetic. 'Halves' needs ≥ 3 seeds, a mean ratio "
    "≤ 0.5 whose interval lies below 1, at ≤ 5 points of test accuracy. Seeds pair only "
    "where both targets were judged by the same evaluation model and built on the same kind of machine (CPU "
    "kernels round differently): results of one seed from two code versions or machines are two replicates."
)


def build(results_files: Sequence[Path]) -> list[dict[str, Any]]:
    return build_rows([load_json(Path(f), what="ablation results", keys=RESULTS_KEYS, fix=FIX) for f in results_files])


RESULTS_KEYS = ("variants", "rows")  # what 'lsmia ablate' writes into results.json
FIX = "pass the results.json of 'lsmia ablate' (out/ablations/<name>/results.json)"


def build_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    groups = collect(results)
    return [row for group in groups for row in defense_rows(group, groups)]


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    return "\n".join([*markdown_table(COLUMNS, table_rows(rows)), "", NOTE]) + "\n"


def check_sources(out_dir: Path, sources: Sequence[Path]) -> None:
    """Refuse to replace a ``verdict.json`` judged from results files that ``sources`` leaves out (a verdict over a
    plan and its follow-ups would silently lose their attacks)."""
    existing = out_dir / "verdict.json"
    if not existing.is_file():
        return
    earlier = load_json(existing, what="verdict", keys=("sources",), fix="delete it or re-run 'lsmia verdict'")
    given = {Path(s).resolve() for s in sources}
    left_out = [str(s) for s in earlier["sources"] if Path(s).resolve() not in given]
    if left_out:
        raise LsmiaError(
            f"{existing} was judged from {len(earlier['sources'])} results files and {', '.join(left_out)} "
            f"is not among those given: pass them all to 'lsmia verdict', or write elsewhere with --out-dir"
        )


def write(rows: Sequence[dict[str, Any]], out_dir: Path, sources: Sequence[Path]) -> Path:
    """``verdict.{json,md,png}`` in ``out_dir``; the markdown's path."""
    save_json({"sources": [str(s) for s in sources], "rows": list(rows)}, out_dir / "verdict.json")
    with atomic_path(out_dir / "verdict.md") as tmp:
        tmp.write_text(markdown(rows))
    plot(rows, out_dir / "verdict.png")
    return out_dir / "verdict.md"


FOREST_SERIES = (  # (row key, legend label): the markers of each row of the forest plot, top to bottom
    ("ratio_published", "PPA as published"),
    ("ratio_adaptive", "adaptive attacker"),
    ("ratio_worst_case", "worst case (strongest attack per seed)"),
    ("ratio_until_accepted", "run until the target accepts"),
)
Point = tuple[str, float, float]  # (series key, mean ratio, half-width of its 95 % interval; 0 for one seed)


def row_label(row: dict[str, Any]) -> str:
    """A verdict row's name on the forest plot: its defense and alpha, or its negative control's scale, over its
    number of seeds."""
    name, seeds = str(row["defense"]), row["ratio_worst_case"]["n"]
    group, control, rest = name.partition(": negative control (")
    if control:
        label = f"{group}: control {rest.split(' head', 1)[0]}"
    else:
        label = f"{name}, trained (α = 0)" if row.get("defended") else f"{name}, α = {row['alpha']:+g}"
    return f"{label}\n{seeds} seed{'s' if seeds != 1 else ''}"


def forest_points(rows: Sequence[dict[str, Any]]) -> list[tuple[str, list[Point]]]:
    """Per verdict row: its label and each ratio measured on at least one seed (FOREST_SERIES order)."""
    entries = []
    for row in rows:
        points = []
        for key, _ in FOREST_SERIES:
            ratio = row.get(key) or {"n": 0}
            if ratio["n"] and math.isfinite(ratio["mean"]):
                points.append((key, float(ratio["mean"]), ratio["ci95"] if math.isfinite(ratio["ci95"]) else 0.0))
        entries.append((row_label(row), points))
    return entries


def plot(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """The verdict as a forest plot: per row, each attacker's ratio to α = 0 with its 95 % interval, beside the
    lines of no protection (1) and of halving (0.5); stable PNG bytes."""
    from matplotlib.figure import Figure  # no pyplot: Agg canvas, no global backend state

    entries = forest_points(rows)
    fig = Figure(figsize=style.verdict_size(len(entries)), layout="constrained")
    ax = fig.subplots()
    step = 0.6 / len(FOREST_SERIES)
    shift = {key: 0.3 - step * (index + 0.5) for index, (key, _) in enumerate(FOREST_SERIES)}
    shown: set[str] = set()  # each series named once in the legend
    for index, (_, points) in enumerate(entries):
        y = len(entries) - 1 - index
        for key, mean, ci95 in points:
            colour, marker = style.VERDICT_SERIES[key]
            label = dict(FOREST_SERIES)[key] if key not in shown else None
            shown.add(key)
            ax.errorbar([mean], [y + shift[key]], xerr=[ci95], fmt=marker, color=colour, capsize=2, label=label)
    ax.axvline(1.0, color=style.INK, linestyle="--", linewidth=1, label="no protection")
    ax.axvline(0.5, color=style.GUIDE, linestyle=":", linewidth=1, label="halved")
    ax.set_yticks(range(len(entries)), [label for label, _ in reversed(entries)])
    ax.set_ylim(-0.6, len(entries) - 0.4)
    ax.set_xlim(left=0.0)
    ax.set_xlabel("attack acc@1 with the defense / without (paired by seed, 95 % interval)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize=style.LEGEND_FONT, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=style.STABLE_DPI, metadata=style.STABLE_METADATA)
    return path
