"""Ablations: stage keys that share exactly what variants have in common, the cache, and the paired effect."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from lsmia.attack.result import AttackResult
from lsmia.cli import app
from lsmia.config import build_config, load_config
from lsmia.errors import LsmiaError
from lsmia.experiments import ablation, graph, stage_cache
from lsmia.experiments import code as stage_code
from lsmia.experiments import keys as cache_keys
from lsmia.infra import machine
from lsmia.reporting.stats import effects
from tests.helpers.paths import ROOT, TINY
from tests.helpers.poll import wait_until

T_975_DF2 = 4.302652729749464


def keys(overrides: dict, alpha: float = -0.05, seed: int = 0) -> dict[str, str]:
    return cache_keys.stage_keys(build_config({}, overrides), graph.Cell(alpha, seed))


def test_an_attack_change_keeps_every_trained_model():
    base, other = keys({}), keys({"attack.loss": "ce"})
    shared = ("data", "prior", "eval-model", "attributes", "target")
    assert [base[s] for s in shared] == [other[s] for s in shared]
    assert base["attack"] != other["attack"] and base["evaluate"] != other["evaluate"]


def test_a_prior_change_keeps_the_targets_but_not_the_attack():
    base, other = keys({}), keys({"prior.epochs": 10})
    assert base["target"] == other["target"] and base["eval-model"] == other["eval-model"]
    assert base["prior"] != other["prior"] and base["attack"] != other["attack"]


def test_a_data_change_invalidates_everything_downstream():
    base, other = keys({}), keys({"data.images_per_identity": 80})
    assert all(base[s] != other[s] for s in ("data", "prior", "eval-model", "target", "attack", "evaluate"))


def test_a_code_edit_changes_the_keys_of_exactly_the_stages_whose_code_reaches_it(monkeypatch):
    """The cache key holds a hash of each stage's code: an edit of the training loss invalidates the stages that
    import it (eval model and targets) and those that read their outputs (the attack, the evaluation)."""
    losses = stage_code.PACKAGE_ROOT / "training" / "smoothing.py"
    before = keys({})
    real_read_bytes = Path.read_bytes
    monkeypatch.setattr(
        Path, "read_bytes", lambda self: real_read_bytes(self) + (b"\nEDITED = 1\n" if self == losses else b"")
    )
    after = keys({})
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"eval-model", "target", "attack", "evaluate"}  # evaluate: its inputs' keys changed


def test_comments_and_docstrings_do_not_enter_the_code_digest(monkeypatch):
    """A cache of hours of trained models must survive an edit of the prose, and only of the prose."""
    losses = stage_code.PACKAGE_ROOT / "training" / "smoothing.py"
    before = keys({})
    real_read_bytes = Path.read_bytes

    def edited(replace: tuple[bytes, bytes]) -> dict[str, str]:
        old, new = replace
        monkeypatch.setattr(
            Path,
            "read_bytes",
            lambda self: real_read_bytes(self).replace(old, new, 1) if self == losses else real_read_bytes(self),
        )
        assert old in real_read_bytes(losses)
        return keys({})

    source = real_read_bytes(losses)
    docstring = source.split(b'"""')[1]
    assert edited((docstring, docstring + b" More prose.")) == before
    assert edited((b"\nimport", b"\n# a new comment\nimport")) == before
    assert edited((b"\nimport", b"\nEDITED = 1\nimport"))["target"] != before["target"]


def test_a_running_ablation_keys_every_cell_with_the_code_it_started_with(monkeypatch, tmp_path):
    """An edit made while a long ablation runs must not give its later cells other keys (they would retrain
    every stage, and file the loaded code's outputs under the edited code's digest)."""
    cache = ablation.StageCache(tmp_path, torch.device("cpu"), print)
    cfg, cell = build_config({}, {}), graph.Cell(-0.05, 0)
    before = cache_keys.stage_keys(cfg, cell, cache.code)
    losses = stage_code.PACKAGE_ROOT / "training" / "smoothing.py"
    real_read_bytes = Path.read_bytes
    monkeypatch.setattr(
        Path, "read_bytes", lambda self: real_read_bytes(self) + (b"\nEDITED = 1\n" if self == losses else b"")
    )
    assert cache_keys.stage_keys(cfg, cell, cache.code) == before
    restarted = ablation.StageCache(tmp_path, torch.device("cpu"), print)  # a new run sees the edit
    assert cache_keys.stage_keys(cfg, cell, restarted.code)["target"] != before["target"]
    assert cache_keys.stage_keys(cfg, cell, restarted.code) == cache_keys.stage_keys(cfg, cell)


def test_the_schedule_enters_only_through_the_alpha_in_force_per_epoch():
    # alpha >= 0 is never warmed up, so the schedule cannot change those models ...
    for alpha in (0.0, 0.1):
        assert keys({}, alpha)["target"] == keys({"target.smoothing.schedule": "constant"}, alpha)["target"]
    # ... while a negative alpha from epoch 0 is another model
    assert keys({}, -0.05)["target"] != keys({"target.smoothing.schedule": "constant"}, -0.05)["target"]
    assert keys({}, -0.05, seed=0)["target"] != keys({}, -0.05, seed=1)["target"]


def rows_from(acc1: dict[float, list[float]], test_acc: dict[float, list[float]]) -> list[dict]:
    return [
        {"alpha": a, "seed": s, "final_acc1": v, "test_acc": test_acc[a][s], "delta_eval": 10.0}
        for a, values in acc1.items()
        for s, v in enumerate(values)
    ]


def test_paired_effects_by_hand():
    rows = rows_from(
        {0.1: [0.7, 0.75, 0.9], 0.0: [0.6, 0.6, 0.8], -0.05: [0.3, 0.2, 0.4]},
        {0.1: [0.9, 0.9, 0.9], 0.0: [0.9, 0.92, 0.88], -0.05: [0.87, 0.9, 0.85]},
    )
    pos, neg = sorted(effects(rows), key=lambda e: -e["alpha"])
    gains = [0.1, 0.15, 0.1]  # paired differences; their sd is sqrt(1/1200)
    assert pos["acc1_gain"]["mean"] == pytest.approx(sum(gains) / 3)
    assert pos["acc1_gain"]["ci95"] == pytest.approx(T_975_DF2 * math.sqrt(1 / 1200) / math.sqrt(3))
    assert pos["raises"] is True  # 0.117 - 0.072 > 0
    assert neg["acc1_ratio"]["values"] == pytest.approx([0.5, 1 / 3, 0.5])
    assert neg["test_acc_cost"]["mean"] == pytest.approx((0.03 + 0.02 + 0.03) / 3)
    assert neg["halves"] is True


def test_a_gain_whose_interval_includes_zero_is_not_a_rise():
    rows = rows_from({0.1: [0.7, 0.5, 0.8], 0.0: [0.6, 0.6, 0.6]}, {0.1: [0.9] * 3, 0.0: [0.9] * 3})
    (pos,) = effects(rows)
    assert pos["acc1_gain"]["mean"] == pytest.approx(0.2 / 3)
    assert pos["raises"] is False


def test_halving_needs_three_seeds_and_an_interval_below_one():
    two_seeds = rows_from({0.0: [0.6, 0.6], -0.05: [0.2, 0.34]}, {0.0: [0.9] * 2, -0.05: [0.89] * 2})
    (neg,) = effects(two_seeds)
    assert neg["acc1_ratio"]["mean"] == pytest.approx(0.45) and neg["halves"] is False  # 0.45 ± 1.5: two seeds
    wide = rows_from({0.0: [0.6, 0.6, 0.6], -0.05: [0.02, 0.04, 0.8]}, {0.0: [0.9] * 3, -0.05: [0.89] * 3})
    (neg,) = effects(wide)
    assert neg["acc1_ratio"]["mean"] <= 0.5 and neg["acc1_ratio"]["mean"] + neg["acc1_ratio"]["ci95"] >= 1.0
    assert neg["halves"] is False  # the mean halves, but the interval reaches past 1
    tight = rows_from({0.0: [0.6, 0.6, 0.6], -0.05: [0.26, 0.27, 0.28]}, {0.0: [0.9] * 3, -0.05: [0.89] * 3})
    assert effects(tight)[0]["halves"] is True


def test_halving_that_costs_too_much_accuracy_does_not_count():
    rows = rows_from({0.0: [0.6, 0.6], -0.3: [0.2, 0.2]}, {0.0: [0.9, 0.9], -0.3: [0.8, 0.8]})
    (neg,) = effects(rows)
    assert neg["acc1_ratio"]["mean"] == pytest.approx(1 / 3) and neg["test_acc_cost"]["mean"] == pytest.approx(0.1)
    assert neg["halves"] is False


def variant_from(rows: list[dict]) -> dict:
    return {"summary": ablation.summarise(rows), "effects": effects(rows)}


def test_claims_across_ablations_name_where_each_holds_and_the_closest_cell():
    from lsmia.reporting.ablation_tables import claim_rows

    strong = rows_from(  # halves at 2 points on 3 seeds; +0.1 rises 0.1 on every seed
        {0.1: [0.7, 0.8, 0.75], 0.0: [0.6, 0.7, 0.65], -0.05: [0.3, 0.3, 0.3]},
        {0.1: [0.9] * 3, 0.0: [0.9] * 3, -0.05: [0.88] * 3},
    )
    for row in strong:
        row["grad_cosine_mean"] = {0.1: 0.9, 0.0: 0.8, -0.05: 0.5}[row["alpha"]]
        row["delta_eval"] = {0.1: 9.0, 0.0: 10.0, -0.05: 12.0 + 0.1 * row["seed"]}[row["alpha"]]
    weak = rows_from({0.0: [0.6, 0.6], -0.1: [0.45, 0.5]}, {0.0: [0.9, 0.9], -0.1: [0.9, 0.9]})
    costly = rows_from({0.0: [0.6, 0.6], -0.3: [0.1, 0.1]}, {0.0: [0.9, 0.9], -0.3: [0.7, 0.7]})
    plans = {"a": {"strong": variant_from(strong)}, "b": {"weak": variant_from(weak), "costly": variant_from(costly)}}
    rises, halves, moves, cosine = claim_rows(plans)
    assert rises[1:4] == ["1", "a/strong α = +0.1", "a/strong α = +0.1"]
    assert rises[4] == "acc@1 − acc@1(α=0) = 0.100 ± 0.000"
    # the costly cell (ratio 1/6 at 20 points) is not counted; of the other two, strong halves (ratio 0.464)
    assert halves[1:4] == ["2", "a/strong α = -0.05", "a/strong α = -0.05"]
    assert halves[4].startswith("ratio 0.46 ± ")
    # δ_eval rises by 2.0, 2.1 and 2.2 on strong's seeds (interval above 0); weak and costly keep 10.0
    assert moves[1:4] == ["3", "a/strong α = -0.05", "a/strong α = -0.05"]
    # only strong logged gradient cosines: the cells without them are not measured for this claim
    assert cosine[1:] == ["1", "a/strong α = -0.05", "a/strong α = -0.05", "cosine 0.80 → 0.50"]
    none_hold = claim_rows({"b": {"weak": variant_from(weak)}})
    assert none_hold[1][1:4] == ["1", "none", "b/weak α = -0.1"] and none_hold[0][1:] == ["0", "—", "—", "—"]


def write_plan(folder: Path, **plan) -> Path:
    path = folder / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def test_plan_errors_name_the_problem(tmp_path):
    with pytest.raises(LsmiaError, match="does not exist"):
        ablation.load_plan(tmp_path / "missing.yaml")
    with pytest.raises(LsmiaError, match="'varaints'"):
        ablation.load_plan(write_plan(tmp_path, varaints={"a": {}}))
    plan = ablation.load_plan(write_plan(tmp_path, variants={"bad": {"attack.stepz": 3}}))
    with pytest.raises(LsmiaError, match=r"'attack.stepz' in ablation variant 'bad'"):
        ablation.variant_configs(build_config(), plan)


def test_finished_only_never_overwrites_results_holding_more_cells(tmp_path):
    cfg = load_config(TINY, {"run.out_dir": str(tmp_path / "out")})
    plan = ablation.AblationPlan(name="t", alphas=[0.0, -0.05], seeds=[0], variants={"base": {}})
    committed = tmp_path / "out" / "ablations" / "t" / "results.json"
    committed.parent.mkdir(parents=True)
    rows = [{"variant": "base", "alpha": a, "seed": 0, "final_acc1": 0.5} for a in (0.0, -0.05)]
    committed.write_text(json.dumps({"rows": rows, "variants": {}}))
    before = committed.read_bytes()
    lines: list[str] = []
    result = ablation.run_ablation(cfg, plan, torch.device("cpu"), log=lines.append, finished_only=True)
    assert committed.read_bytes() == before  # the committed table survives a fresh clone's empty cache
    assert result.md_file == committed.with_name("results.partial.md") and result.md_file.is_file()
    assert lines == [f"kept {committed} (2 of its cells are not in this table); the table is in "
                     f"{result.md_file}: delete results.json to replace it"]  # fmt: skip


def test_finished_only_on_an_empty_cache_runs_nothing_and_lists_every_cell(tmp_path):
    cfg = load_config(TINY, {"run.out_dir": str(tmp_path / "out")})
    plan = ablation.AblationPlan(name="t", alphas=[0.0, -0.05], seeds=[0, 1], variants={"base": {}, "ce": {}})
    lines: list[str] = []
    result = ablation.run_ablation(cfg, plan, torch.device("cpu"), log=lines.append, finished_only=True)
    assert lines == [] and result.rows == [] and not (tmp_path / "out" / "ablations" / "cache" / "data").exists()
    cells = [{"variant": v, "alpha": a, "seed": s} for v in ("base", "ce") for s in (0, 1) for a in (0.0, -0.05)]
    assert result.missing == cells
    assert json.loads((result.out_dir / "results.json").read_text())["missing"] == cells
    assert "Not finished yet (8 cells, left out above): base α=+0 seed 0" in (result.out_dir / "results.md").read_text()


def test_a_variant_may_run_on_its_own_seeds(tmp_path):
    """``study.seeds`` in a variant narrows it to those seeds (the seed one defense still lacks), in the cells built,
    in the cells tabulated and in the cells listed as missing; the other variants keep the plan's seeds."""
    cfg = load_config(TINY, {"run.out_dir": str(tmp_path / "out")})
    plan = ablation.AblationPlan(
        name="t", alphas=[0.0], seeds=[1, 2], variants={"base": {}, "mid": {"study.seeds": [2]}}
    )
    cells = [(name, cell.seed) for name, _, cell in ablation.plan_cells(cfg, plan)]
    assert cells == [("base", 1), ("base", 2), ("mid", 2)]  # seed-major: every variant's seed 1 first
    result = ablation.run_ablation(cfg, plan, torch.device("cpu"), log=lambda _: None, finished_only=True)
    assert [(m["variant"], m["seed"]) for m in result.missing] == [("base", 1), ("base", 2), ("mid", 2)]


@pytest.mark.slow
def test_tiny_ablation_shares_stages_resumes_and_reports(tmp_path):
    cfg = load_config(TINY, {"run.out_dir": str(tmp_path / "out")})
    plan = ablation.AblationPlan(
        name="t",
        alphas=[0.1, 0.0, -0.05],
        seeds=[0, 1],
        variants={"base": {}, "ce": {"attack.loss": "ce"}, "long": {"attack.steps": 3}},
    )
    lines: list[str] = []
    result = ablation.run_ablation(cfg, plan, torch.device("cpu"), log=lines.append)
    cache = tmp_path / "out" / "ablations" / "cache"
    assert len(list((cache / "target").iterdir())) == 6  # 3 alphas x 2 seeds, shared by all three variants
    assert len(list((cache / "attack").iterdir())) == 18
    assert len(list((cache / "prior").iterdir())) == 1 and len(list((cache / "eval-model").iterdir())) == 1
    saved = json.loads((result.out_dir / "results.json").read_text())
    assert len(saved["rows"]) == 18 and set(saved["variants"]) == {"base", "ce", "long"}
    for row in saved["rows"]:  # the target's mean confidence in exactly the final samples the attack kept
        attack = AttackResult.load(
            cache
            / "attack"
            / cache_keys.stage_keys(
                ablation.variant_configs(cfg, plan)[row["variant"]], graph.Cell(row["alpha"], row["seed"])
            )["attack"]
            / "attack.pt"
        )
        assert row["final_target_confidence"] == pytest.approx(attack.final_scores.double().exp().mean().item())
    assert "| ce | +0.1 |" in (result.out_dir / "results.md").read_text()
    # every row names the machine that built its stages, from the markers the stages left
    here = machine.fingerprint(torch.device("cpu"))
    assert {row["machine"] for row in saved["rows"]} == {here}
    assert (cache / "target" / next((cache / "target").iterdir()).name / ".done").read_text() == here + "\n"

    # the logit geometry reads each of the 6 shared targets once, and its accuracy is the target's test accuracy
    geometry = ablation.logit_geometry_rows(cfg, plan)
    assert [(g["alpha"], g["seed"]) for g in geometry] == [(a, s) for s in (0, 1) for a in (0.1, 0.0, -0.05)]
    assert {g["variant"] for g in geometry} == {"base"}
    test_acc = {(r["alpha"], r["seed"]): r["test_acc"] for r in result.rows}
    for g in geometry:
        assert g["accuracy"] == pytest.approx(test_acc[g["alpha"], g["seed"]], abs=1e-6)
        assert g["other_logit_spread"] > 0
    assert "| base | -0.05 | 1 |" in ablation.write_logit_geometry(cfg, plan, geometry).read_text()

    # an interrupted run lost one attack: --finished-only runs nothing and tabulates the other 17 cells
    lost = sorted(p.name for p in (cache / "attack").iterdir())[0]
    shutil.rmtree(cache / "attack" / lost)
    so_far: list[str] = []
    partial = ablation.run_ablation(cfg, plan, torch.device("cpu"), log=so_far.append, finished_only=True)
    assert not [line for line in so_far if line.endswith("running")] and len(partial.rows) == 17
    (missing,) = partial.missing
    configs = ablation.variant_configs(cfg, plan)
    assert (
        cache_keys.stage_keys(configs[missing["variant"]], graph.Cell(missing["alpha"], missing["seed"]))["attack"]
        == lost
    )
    # the fuller results.json stays as it was; the 17 finished cells go beside it
    assert partial.json_file.name == "results.partial.json" and any("kept" in line for line in so_far)
    assert len(json.loads((result.out_dir / "results.json").read_text())["rows"]) == 18
    assert json.loads(partial.json_file.read_text())["missing"] == [missing]
    assert "Not finished yet (1 cells" in partial.md_file.read_text()

    def cell(row):
        return row["variant"], row["alpha"], row["seed"]

    expected = {cell(r): r["final_acc1"] for r in result.rows if cell(r) != cell(missing)}
    assert {cell(r): r["final_acc1"] for r in partial.rows} == expected

    # ... and every evaluation: only those run again, with identical metrics
    shutil.rmtree(cache / "evaluate")
    again: list[str] = []
    rerun = ablation.run_ablation(cfg, plan, torch.device("cpu"), log=again.append)
    running = [line.split()[0] for line in again if line.endswith("running")]
    assert running.count("attack") == 1 and running.count("evaluate") == 18 and len(running) == 19

    def timeless(rows):
        return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in rows]

    assert timeless(rerun.rows) == timeless(result.rows)


PLANS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize(
    "plan_file", [p for p in PLANS if "variants" in yaml.safe_load(p.read_text())], ids=lambda p: p.name
)
def test_every_committed_plan_validates_against_params_yaml(plan_file):
    """A misspelt key or a variant without its alpha-0 reference fails here, not hours into an ablation."""
    plan = ablation.load_plan(plan_file)
    base = load_config(ROOT / "params.yaml")
    configs = ablation.variant_configs(base, plan)
    for name, cfg in configs.items():
        assert 0.0 in ablation.variant_alphas(plan, name, cfg, plan.alphas or base.study.alphas)


def test_logit_geometry_before_any_target_is_trained_is_one_line_exit_2(tmp_path):
    shutil.copy(TINY, tmp_path / "params.yaml")
    plan = write_plan(tmp_path, variants={"base": {}}, alphas=[0.0])
    out = str(tmp_path / "out")
    result = CliRunner().invoke(
        app, ["logit-geometry", str(plan), "--params", str(tmp_path / "params.yaml"), "-S", f"run.out_dir={out}"]
    )
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0
    assert "no target of" in result.output and "current code" in result.output and "lsmia ablate" in result.output


def test_cli_bad_plan_is_one_line_exit_2(tmp_path):
    shutil.copy(TINY, tmp_path / "params.yaml")
    plan = write_plan(tmp_path, variants={"x": {"target.epochz": 1}}, alphas=[0.0])
    result = CliRunner().invoke(app, ["ablate", str(plan), "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "target.epochz" in result.output


def test_a_deleted_cached_output_is_built_again_not_missing_for_good(tmp_path):
    """An error once advised deleting a corrupt cached file, after which its '.done' marker made it missing for
    good; a stage that writes no file stays done."""
    cache = ablation.StageCache(tmp_path, torch.device("cpu"), log=lambda line: None)
    folder = tmp_path / "attack" / "k"
    folder.mkdir(parents=True)
    (folder / ".lock").write_text("")
    (folder / ablation.StageCache.DONE).write_text("")
    assert cache._done(folder, folder / "attack.pt")  # wrote no file: done
    (folder / "attack.pt.timings").write_text("{}")  # it did write files, and attack.pt was deleted since
    assert not cache._done(folder, folder / "attack.pt") and not (folder / ablation.StageCache.DONE).exists()


@pytest.mark.parametrize("name", [".", ".."])
def test_a_plan_may_not_write_into_out_ablations_itself(tmp_path, name):
    with pytest.raises(LsmiaError, match="invalid ablation file"):
        ablation.load_plan(write_plan(tmp_path, name=name, variants={"base": {}}))


@pytest.mark.slow
def test_jobs_build_the_plan_together_with_the_results_of_one_process(tmp_path, capfd):
    """``--jobs 2``: two processes share the cache, no stage is built twice, and the results are those of one
    process (the same thread count in each). How the work divides depends on timing (a spawned job starts seconds
    late, when tiny stages take less than one): test_two_builders_share_the_work checks that."""
    plan = write_plan(
        tmp_path, name="j", alphas=[0.0, -0.05], seeds=[0, 1], variants={"base": {}, "ce": {"attack.loss": "ce"}}
    )
    outputs = {}
    for jobs in (1, 2):
        out = tmp_path / f"out{jobs}"
        args = ["ablate", str(plan), "--params", str(TINY), "--no-track", "--jobs", str(jobs)]
        result = CliRunner().invoke(app, [*args, "-S", f"run.out_dir={out}", "-S", "run.threads=1"])
        assert result.exit_code == 0, result.output
        printed = result.output + capfd.readouterr().err  # the spawned job writes to the process's stderr
        outputs[jobs] = (printed, json.loads((out / "ablations" / "j" / "results.json").read_text()))
    (one_printed, one), (two_printed, two) = outputs[1], outputs[2]
    assert "[job 2]" not in one_printed

    def built(printed):
        return sorted(line.split("]")[-1].strip() for line in printed.splitlines() if line.endswith(": running"))

    assert built(two_printed) == built(one_printed) and len(built(one_printed)) == 24  # no stage built twice

    def timeless(rows):
        return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in rows]

    assert timeless(two["rows"]) == timeless(one["rows"]) and len(one["rows"]) == 8
    bad = CliRunner().invoke(app, ["ablate", str(plan), "--params", str(TINY), "--jobs", "0"])
    assert bad.exit_code == 2 and "--jobs" in bad.output

    # --seed runs fewer seeds than the plan's: its table never replaces the fuller results.json
    out, folder = tmp_path / "out1", tmp_path / "out1" / "ablations" / "j"
    args = ["ablate", str(plan), "--params", str(TINY), "--no-track", "-S", f"run.out_dir={out}", "-S", "run.threads=1"]
    committed = (folder / "results.json").read_bytes()
    seed_one = CliRunner().invoke(app, [*args, "--seed", "1"])
    assert seed_one.exit_code == 0 and "results.partial.md" in seed_one.output, seed_one.output
    assert (folder / "results.json").read_bytes() == committed  # nothing lost
    partial = json.loads((folder / "results.partial.json").read_text())
    assert partial["plan"]["seeds"] == [1] and timeless(partial["rows"]) == [
        row for row in timeless(one["rows"]) if row["seed"] == 1
    ]
    (folder / "results.json").unlink()  # the fuller table, replaced only on purpose
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and not (folder / "results.partial.json").exists()
    assert timeless(json.loads((folder / "results.json").read_text())["rows"]) == timeless(one["rows"])


def test_two_builders_share_the_work_and_wait_for_what_they_read(tmp_path, monkeypatch):
    """Two builders on the same tasks (as two ``--jobs`` processes): each stage built once, by whichever took it
    first, never before the stages it reads were done, and the two at work at the same time."""
    import threading
    import time

    cfg = load_config(TINY, {"run.out_dir": str(tmp_path)})
    runs: list[tuple[str, str, float, float]] = []

    def run_stage(stage, cfg, cell, layout, device, observe):
        start = time.monotonic()
        time.sleep(0.05)
        output = layout.output(stage, cell)
        output.write_text(stage.name)
        runs.append((threading.current_thread().name, str(output.parent), start, time.monotonic()))

    monkeypatch.setattr(stage_cache.graph, "run_stage", run_stage)
    cache = stage_cache.StageCache(tmp_path / "cache", torch.device("cpu"), log=lambda line: None)
    cells = [graph.Cell(alpha, seed) for seed in (0, 1) for alpha in (0.0, -0.05)]
    tasks = stage_cache.plan_tasks(cache, [(cfg, cell) for cell in cells])
    builders = [
        threading.Thread(target=stage_cache.build_plan, args=(cache, tasks, 0.01), name=f"b{i}") for i in (0, 1)
    ]
    for builder in builders:
        builder.start()
    for builder in builders:
        builder.join(timeout=120)
    assert sorted(folder for _, folder, _, _ in runs) == sorted(str(task.output.parent) for task in tasks)
    ended = {folder: end for _, folder, _, end in runs}
    started = {folder: start for _, folder, start, _ in runs}
    for task in tasks:  # every input finished before the stage that reads it started
        assert all(ended[str(need.parent)] <= started[str(task.output.parent)] for need in task.needs)
    assert {name for name, _, _, _ in runs} == {"b0", "b1"}
    assert any(a[2] < b[3] and b[2] < a[3] for a in runs for b in runs if a[0] != b[0])  # at work together


def test_a_builder_takes_the_heaviest_ready_stage_first(tmp_path, monkeypatch):
    """Every target (the longest stage) before the prior and the evaluation model, and those before any attack:
    with two processes, the last target no longer trains alone while the other process has nothing to do."""
    cfg = load_config(TINY, {"run.out_dir": str(tmp_path)})
    built: list[str] = []

    def run_stage(stage, cfg, cell, layout, device, observe):
        layout.output(stage, cell).write_text(stage.name)
        built.append(stage.name)

    monkeypatch.setattr(stage_cache.graph, "run_stage", run_stage)
    cache = stage_cache.StageCache(tmp_path / "cache", torch.device("cpu"), log=lambda line: None)
    cells = [graph.Cell(alpha, seed) for seed in (0, 1) for alpha in (0.0, -0.05)]
    tasks = stage_cache.plan_tasks(cache, [(cfg, cell) for cell in cells])
    assert [task.stage.name for task in tasks][:3] == ["data", "prior", "eval-model"]  # the plan's order ...
    stage_cache.build_plan(cache, tasks, 0.01)
    order = [name for i, name in enumerate(built) if name not in built[:i]]
    assert order == ["data", "target", "prior", "eval-model", "attributes", "attack", "evaluate"]  # ... by weight
    assert built[1:5] == ["target"] * 4 and sorted(built) == sorted(task.stage.name for task in tasks)


def _spawned_jobs(parent: int) -> list[int]:
    """The ``--jobs`` processes ``parent`` spawned (not multiprocessing's resource tracker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if ppid == parent and b"spawn_main" in command:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc (Linux)")
def test_a_killed_ablate_takes_its_jobs_with_it(tmp_path):
    """SIGTERM to ``lsmia ablate --jobs 2`` (which it cannot clean up after) no longer leaves the spawned job
    building alone: it notices its parent is gone and stops."""
    plan = write_plan(tmp_path, name="k", alphas=[0.0, -0.05], seeds=[0, 1], variants={"base": {}})
    args = [sys.executable, "-m", "lsmia", "ablate", str(plan), "--params", str(TINY), "--no-track", "--jobs", "2"]
    # targets of a few minutes each: an orphan would still be building long after the wait below gives up
    args += ["-S", f"run.out_dir={tmp_path / 'out'}", "-S", "run.threads=1", "-S", "target.epochs=5000"]
    ablate = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    jobs: list[int] = []
    try:
        jobs += wait_until(lambda: _spawned_jobs(ablate.pid), 120, "ablate to spawn its second job")
        ablate.send_signal(signal.SIGTERM)
        ablate.wait(timeout=60)
        wait_until(lambda: not _running(jobs[0]), 60, "the orphaned job to stop")
    finally:
        ablate.kill()
        for pid in jobs:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_cell_names_each_machine_that_built_it_and_none_from_old_markers(tmp_path):
    """``cell_machine``: one fingerprint when one machine built every stage, several joined when a stage came from
    elsewhere (a shared remote), and nothing from the empty markers written before the fingerprints."""
    outputs = []
    for stage, mark in (("data", "A"), ("target", "B"), ("attack", "B"), ("old", "")):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / ablation.StageCache.DONE).write_text(mark + "\n" if mark else "")
        outputs.append(tmp_path / stage / "out.pt")
    assert ablation.cell_machine(outputs) == "A + B"
    assert ablation.cell_machine(outputs[1:]) == "B"
    assert ablation.cell_machine(outputs[3:]) == ""
