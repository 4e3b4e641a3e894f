"""The verdict per defense: published and adaptive attackers side by side, the negative control, the worst case."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lsmia.cli import app
from lsmia.reporting import verdict
from lsmia.reporting.stats import strongest_per_seed, worst_case_ratio

TRAINED = {"target.smoothing.schedule": "constant"}
PUBLISHED = {"attack.ranking": "softmax"}
ADAPTIVE = {"attack.temperature": "auto"}
CONTROL = {"attack.target_logit_scale": 26.0, "study.alphas": [0.0]}

# acc@1 per seed (3 seeds); the defended target fools only the published attack, and so does the control
ACC1 = {
    ("ls_published", 0.0): [0.30, 0.32, 0.31],
    ("ls_adaptive", 0.0): [0.33, 0.35, 0.34],
    ("ls_published", -0.05): [0.10, 0.12, 0.11],
    ("ls_adaptive", -0.05): [0.33, 0.36, 0.33],
    ("ls_control_published", 0.0): [0.15, 0.16, 0.17],
    ("ls_control_adaptive", 0.0): [0.33, 0.35, 0.34],
}
ACCEPTED = {"ls_published": 0.2, "ls_adaptive": 0.9, "ls_control_published": 0.3, "ls_control_adaptive": 0.9}


def results() -> dict:
    variants = {
        "ls_published": {**TRAINED, **PUBLISHED},
        "ls_adaptive": {**TRAINED, **ADAPTIVE},
        "ls_control_published": {**TRAINED, **PUBLISHED, **CONTROL},
        "ls_control_adaptive": {**TRAINED, **ADAPTIVE, **CONTROL},
    }
    rows = [
        {
            "variant": name,
            "alpha": alpha,
            "seed": seed,
            "final_acc1": value,
            "test_acc": 0.96 if alpha == 0 else 0.93,
            "final_target_acceptance_raw": ACCEPTED[name]
            if alpha
            else 0.95
            if "control" not in name
            else ACCEPTED[name],
        }
        for (name, alpha), values in ACC1.items()
        for seed, value in enumerate(values)
    ]
    return {"variants": {name: {"overrides": o} for name, o in variants.items()}, "rows": rows}


def test_attackers_are_told_apart_by_their_attack_overrides() -> None:
    assert verdict.attacker_of({"attack.ranking": "softmax", "attack.targets": 50}) == ("published", "PPA as published")
    kind, label = verdict.attacker_of({"attack.temperature": "auto", "attack.loss": "ce"})
    assert kind == "adaptive" and label == "adaptive (temperature=auto, loss=ce)"
    assert verdict.attacker_of({"attack.ranking": "softmax", "attack.loss": "ce"})[0] == "adaptive"  # another loss
    assert verdict.attacker_of({**PUBLISHED, "attack.target_logit_scale": 26})[0] == "control ×26 published"


def test_the_worst_case_is_the_strongest_attack_per_seed() -> None:
    attacks = {"a": {0: 0.3, 1: 0.1}, "b": {0: 0.2, 1: 0.4}}
    assert strongest_per_seed(attacks) == {0: ("a", 0.3), 1: ("b", 0.4)}
    ratio = worst_case_ratio({"a": {0: 0.15, 1: 0.1}, "b": {0: 0.1, 1: 0.2}}, attacks)
    assert ratio["values"] == pytest.approx([0.5, 0.5]) and ratio["attacks"] == ["a", "b"]


def test_published_and_adaptive_side_by_side_with_the_control() -> None:
    rows = verdict.defense_rows(verdict.collect([results()])[0])
    defended, control = rows
    assert defended["defense"] == "ls" and defended["alpha"] == -0.05
    assert defended["ratio_published"]["values"] == pytest.approx([0.10 / 0.30, 0.12 / 0.32, 0.11 / 0.31])
    assert defended["ratio_adaptive"]["values"] == pytest.approx([0.33 / 0.33, 0.36 / 0.35, 0.33 / 0.34])
    # the worst case: the strongest attack at alpha (adaptive) over the strongest at 0 (adaptive), per seed
    assert defended["ratio_worst_case"]["values"] == pytest.approx([1.0, 0.36 / 0.35, 0.33 / 0.34])
    assert defended["cost"]["mean"] == pytest.approx(0.03)
    assert defended["acceptance_published"]["mean"] == pytest.approx(0.2)
    assert defended["acceptance_adaptive"]["mean"] == pytest.approx(0.9)
    assert defended["verdict"] == "no shield: only the published attack is lowered"
    assert control["defense"] == "ls: negative control (×26 head, α = 0)"
    assert control["ratio_published"]["mean"] == pytest.approx((0.5 + 0.5 + 0.17 / 0.31) / 3)
    assert control["ratio_adaptive"]["values"] == pytest.approx([1.0, 1.0, 1.0])
    assert control["verdict"] == "published attack reports protection: arithmetic, not privacy"


def test_a_real_shield_is_one_the_adaptive_attack_cannot_undo() -> None:
    record = results()
    for row in record["rows"]:
        if row["alpha"] == -0.05:
            row["final_acc1"] /= 3  # every attack, adaptive too, keeps a third
    (defended, _) = verdict.defense_rows(verdict.collect([record])[0])
    assert defended["ratio_worst_case"]["mean"] < 0.5
    assert defended["verdict"] == "shield: halves the strongest attack at ≤ 5 points"


def test_a_shield_measured_with_a_capped_attack_is_provisional() -> None:
    """Constant alpha's signature (RESULTS.md): the attack run until the target accepts 90 % hits its step cap on
    the defended target (acceptance 0.5-0.6) while alpha = 0's batches get there: the halving is provisional."""
    record = results()
    record["variants"]["ls_until"] = {"overrides": {**TRAINED, **ADAPTIVE, "attack.until_accept": 0.9}}
    accepted = {0.0: [0.98, 0.99, 0.98], -0.05: [0.50, 0.95, 0.53]}  # seed 1 reached 90 %
    record["rows"] += [
        {
            "variant": "ls_until",
            "alpha": alpha,
            "seed": seed,
            "final_acc1": [0.84, 0.86, 0.80][seed] * (1.0 if alpha == 0 else 0.45),
            "test_acc": 0.96 if alpha == 0 else 0.93,
            "until_accept_accepted": accepted[alpha][seed],
        }
        for alpha in (0.0, -0.05)
        for seed in range(3)
    ]
    for row in record["rows"]:
        if row["alpha"] == -0.05 and row["variant"] != "ls_until":
            row["final_acc1"] /= 3
    (defended, control) = verdict.defense_rows(verdict.collect([record])[0])
    capped = defended["capped_acceptance"]
    assert (capped["n"], capped["mean"]) == (2, pytest.approx((0.50 + 0.53) / 2))
    assert defended["verdict"] == (
        "shield: halves the strongest attack at ≤ 5 points; provisional: run until the target accepts, the attack "
        "stopped at its step cap on 2 of 3 seeds (target acceptance 0.52)"
    )
    assert control["capped_acceptance"]["n"] == 0
    for row in record["rows"]:
        if row["variant"] == "ls_until":
            row["until_accept_accepted"] = 0.95  # every batch got there: a converged attack, no caveat
    assert verdict.defense_rows(verdict.collect([record])[0])[0]["verdict"] == (
        "shield: halves the strongest attack at ≤ 5 points"
    )


def test_a_trained_defense_is_judged_against_the_undefended_targets() -> None:
    record = results()
    mid = {**TRAINED, "target.defense": {"kind": "mid", "mid_beta": 0.01}}
    record["variants"] |= {
        "mid_published": {"overrides": {**mid, **PUBLISHED}},
        "mid_adaptive": {"overrides": {**mid, **ADAPTIVE}},
    }
    for name, values, accepted in (
        ("mid_published", [0.15, 0.16, 0.15], 0.5),
        ("mid_adaptive", [0.30, 0.28, 0.27], 0.8),
    ):
        record["rows"] += [
            {
                "variant": name,
                "alpha": 0.0,
                "seed": s,
                "final_acc1": v,
                "test_acc": 0.90,
                "final_target_acceptance_raw": accepted,
            }
            for s, v in enumerate(values)
        ]
    rows = verdict.build_rows([record])
    (mid_row,) = [r for r in rows if r["defense"] == "mid"]
    assert mid_row["defended"] and mid_row["trained"].endswith("target.smoothing.schedule=constant")
    # against the undefended alpha = 0 targets of the same data and schedule, per seed
    assert mid_row["ratio_published"]["values"] == pytest.approx([0.15 / 0.30, 0.16 / 0.32, 0.15 / 0.31])
    assert mid_row["ratio_adaptive"]["values"] == pytest.approx([0.30 / 0.33, 0.28 / 0.35, 0.27 / 0.34])
    assert mid_row["cost"]["mean"] == pytest.approx(0.06)
    assert mid_row["acceptance_adaptive"]["mean"] == pytest.approx(0.8)
    assert mid_row["verdict"] == "lowers the strongest attack (interval below 1); the published attack overstates it"
    assert "| mid | – |" in verdict.markdown(rows)
    alone = verdict.build_rows(
        [
            {
                "variants": {"mid_published": record["variants"]["mid_published"]},
                "rows": [r for r in record["rows"] if r["variant"] == "mid_published"],
            }
        ]
    )
    assert alone == []  # no undefended targets: nothing to judge against, no row


def test_a_seed_pairs_only_with_a_baseline_judged_alike_and_a_lone_one_is_named() -> None:
    """Rows carry the evaluation model that judged them and the machine that built them: the same seed from another
    code version (another evaluation model) or another kind of machine is a replicate of its own, paired with the
    alpha = 0 target of its own frame; one without such a target is left out, by name."""
    record = results()
    seeds = 3  # the fixture's seeds 0-2 (old rows: no frame recorded)
    new_frame = {"eval_model_key": "e2", "machine": "Xeon, AVX512; torch 2.14.1"}
    for name, alpha, value in (("ls_adaptive", 0.0, 0.50), ("ls_adaptive", -0.05, 0.10)):
        record["rows"].append(
            {"variant": name, "alpha": alpha, "seed": 1, "final_acc1": value, "test_acc": 0.96, **new_frame}
        )
    (shield,) = [r for r in verdict.build_rows([record]) if r["alpha"] == -0.05]
    # seed 1 twice: once as the fixture's (0.36 / 0.35), once in the new frame (0.10 / 0.50), never crossed
    assert shield["ratio_adaptive"]["n"] == seeds + 1
    assert shield["ratio_adaptive"]["values"] == pytest.approx([0.33 / 0.33, 0.36 / 0.35, 0.10 / 0.50, 0.33 / 0.34])
    assert shield["unpaired_seeds"] == [] and "left out" not in shield["verdict"]
    record["rows"] = [r for r in record["rows"] if not (r.get("eval_model_key") and r["alpha"] == 0.0)]
    (lone,) = [r for r in verdict.build_rows([record]) if r["alpha"] == -0.05]
    assert lone["ratio_adaptive"]["n"] == seeds  # the new seed-1 row has no baseline in its frame
    assert lone["unpaired_seeds"] == [1]
    assert lone["verdict"].endswith("; seed(s) 1 left out: no α = 0 target judged alike")


def test_an_attack_run_until_accepted_tells_a_slowed_attack_from_a_stopped_one() -> None:
    """The warm-up's signature (RESULTS.md): with 4x the steps the defended target yields less, but an attack run
    until the target accepts its samples recovers as much as at alpha = 0 (it only needs more steps)."""
    record = results()
    budgets: dict[str, tuple[dict[str, Any], dict[float, list[float]]]] = {
        "ls_x4": ({"attack.steps": 240}, {0.0: [0.68, 0.67, 0.63], -0.05: [0.54, 0.53, 0.48]}),
        "ls_until": (
            {"attack.until_accept": 0.9, "attack.max_steps": 600},
            {0.0: [0.60, 0.54, 0.55], -0.05: [0.61, 0.55, 0.54]},
        ),
    }
    for name, (attack, acc1) in budgets.items():
        record["variants"][name] = {"overrides": {**TRAINED, **ADAPTIVE, **attack}}
        record["rows"] += [
            {"variant": name, "alpha": a, "seed": s, "final_acc1": v, "test_acc": 0.96 if a == 0 else 0.93}
            for a, values in acc1.items()
            for s, v in enumerate(values)
        ]
    (defended, control) = verdict.defense_rows(verdict.collect([record])[0])
    assert defended["ratio_until_accepted"]["values"] == pytest.approx([0.61 / 0.60, 0.55 / 0.54, 0.54 / 0.55])
    # the worst case pairs the strongest at alpha (run until accepted) with the strongest at 0 (4x the steps)
    assert defended["ratio_worst_case"]["values"] == pytest.approx([0.61 / 0.68, 0.55 / 0.67, 0.54 / 0.63])
    assert defended["verdict"] == (
        "lowers the strongest attack (interval below 1); the published attack overstates it; run until the "
        "target accepts, the attack recovers as much: slowed, not stopped"
    )
    assert control["ratio_until_accepted"]["n"] == 0  # the control has no such attack: a dash in the table
    assert "| — |" in verdict.markdown([control])
    del record["variants"]["ls_until"]  # without that attack the verdict says nothing of it
    record["rows"] = [row for row in record["rows"] if row["variant"] != "ls_until"]
    assert "slowed" not in verdict.defense_rows(verdict.collect([record])[0])[0]["verdict"]


def test_cli_writes_the_verdict_beside_the_results(tmp_path: Path) -> None:
    source = tmp_path / "plan" / "results.json"
    source.parent.mkdir()
    source.write_text(json.dumps(results()))
    out = CliRunner().invoke(app, ["verdict", str(source)])
    assert out.exit_code == 0, out.output
    text = (source.parent / "verdict.md").read_text()
    assert "| ls | -0.05 | 3 | 3.0 ± 0.0 |" in text and "negative control" in text
    saved = json.loads((source.parent / "verdict.json").read_text())
    assert len(saved["rows"]) == 2
    assert (source.parent / "verdict.png").stat().st_size > 0
    missing = CliRunner().invoke(app, ["verdict", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_a_verdict_over_several_results_is_not_replaced_by_one_over_fewer(tmp_path: Path) -> None:
    """A verdict judged from a plan and its follow-up plans (the committed ones are) keeps them: a call that leaves
    one out is a one-line error, and the files stay as they were."""
    plan, follow_up = tmp_path / "plan" / "results.json", tmp_path / "more" / "results.json"
    for path in (plan, follow_up):
        path.parent.mkdir()
        path.write_text(json.dumps(results()))
    both = CliRunner().invoke(app, ["verdict", str(plan), str(follow_up)])
    assert both.exit_code == 0, both.output
    before = {p.name: p.read_bytes() for p in plan.parent.glob("verdict.*")}
    fewer = CliRunner().invoke(app, ["verdict", str(plan)])
    assert fewer.exit_code == 2 and f"{follow_up} is not among those given" in fewer.output
    assert "Traceback" not in fewer.output and len(fewer.output.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in plan.parent.glob("verdict.*")} == before
    elsewhere = CliRunner().invoke(app, ["verdict", str(plan), "--out-dir", str(tmp_path / "alone")])
    assert elsewhere.exit_code == 0, elsewhere.output
    again = CliRunner().invoke(app, ["verdict", str(follow_up), str(plan)])  # the same files, any order
    assert again.exit_code == 0, again.output


def test_the_forest_plot_shows_each_measured_ratio_of_each_row(tmp_path: Path) -> None:
    rows = verdict.build_rows([results()])
    entries = verdict.forest_points(rows)
    assert [label for label, _ in entries] == ["ls, α = -0.05\n3 seeds", "ls: control ×26\n3 seeds"]
    (_, defended_points), (_, control_points) = entries
    keys = [key for key, _, _ in defended_points]
    assert keys == ["ratio_published", "ratio_adaptive", "ratio_worst_case"]  # nothing was run until accepted
    published = dict((key, (mean, ci)) for key, mean, ci in defended_points)["ratio_published"]
    assert published[0] == pytest.approx((0.10 / 0.30 + 0.12 / 0.32 + 0.11 / 0.31) / 3)
    assert published[1] == pytest.approx(rows[0]["ratio_published"]["ci95"])
    assert dict((k, m) for k, m, _ in control_points)["ratio_adaptive"] == pytest.approx(1.0)
    one_seed = {**rows[0], "ratio_published": {"mean": 0.4, "ci95": math.nan, "n": 1}, "defended": True}
    assert verdict.forest_points([one_seed])[0][1][0] == ("ratio_published", 0.4, 0.0)  # one seed: no bar
    assert verdict.row_label(one_seed) == "ls, trained (α = 0)\n3 seeds"
    first, second = verdict.plot(rows, tmp_path / "a.png"), verdict.plot(rows, tmp_path / "b.png")
    assert first.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and first.read_bytes() == second.read_bytes()


def test_an_attack_measured_at_one_end_only_does_not_bias_the_worst_case() -> None:
    # a stronger loss measured on alpha = 0 (seed 0) but not yet on the defended target: left out of seed 0's
    # ratio, which would otherwise compare the defended target's weaker attacks with the stronger one
    at_zero = {"poincare": {0: 0.30, 1: 0.30}, "ce": {0: 0.60}}
    at_alpha = {"poincare": {0: 0.27, 1: 0.24}}
    assert worst_case_ratio(at_alpha, at_zero)["values"] == pytest.approx([0.9, 0.8])
    record = results()
    record["variants"]["ls_adaptive_ce"] = {"overrides": {**TRAINED, **ADAPTIVE, "attack.loss": "ce"}}
    record["rows"].append({"variant": "ls_adaptive_ce", "alpha": 0.0, "seed": 0, "final_acc1": 0.9, "test_acc": 0.96})
    (defended, control) = verdict.defense_rows(verdict.collect([record])[0])
    assert defended["ratio_adaptive"]["values"] == pytest.approx([0.33 / 0.33, 0.36 / 0.35, 0.33 / 0.34])
    assert control["ratio_adaptive"]["values"] == pytest.approx([1.0, 1.0, 1.0])  # paired by attack, not label


@pytest.mark.slow
def test_ablate_with_verdict_runs_the_plan_then_judges_it(tmp_path: Path) -> None:
    """The headline's one command: ``lsmia ablate PLAN --verdict`` prints the results, then the verdict table."""
    import shutil

    import yaml

    from tests.helpers.paths import TINY

    shutil.copy(TINY, tmp_path / "params.yaml")
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        yaml.safe_dump(
            {
                "name": "tiny_verdict",
                "alphas": [0.0, -0.05],
                "seeds": [0],
                "variants": {
                    "constant_published": {**TRAINED, **PUBLISHED},
                    "constant_adaptive": {**TRAINED, **ADAPTIVE},
                },
            }
        )
    )
    args = ["ablate", str(plan), "--params", str(tmp_path / "params.yaml"), "--no-track", "--verdict"]
    out = CliRunner().invoke(app, [*args, "-S", f"run.out_dir={tmp_path / 'out'}"])
    assert out.exit_code == 0, out.output
    folder = tmp_path / "out" / "ablations" / "tiny_verdict"
    saved = json.loads((folder / "verdict.json").read_text())
    (row,) = saved["rows"]
    assert row["alpha"] == -0.05 and row["defense"] == "constant" and row["ratio_published"]["n"] == 1
    assert row["verdict"] in out.output and "ratio published" in out.output
    assert out.output.index("results:") < out.output.index("verdict:")  # the results first, then the verdict
