"""Attacks sharded by class: shards merge into exactly the unsharded attack, a killed shard resumes, and the
DVC pipeline runs shards as a matrix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lsmia.attack.ppa import run_attack
from lsmia.attack.result import TENSOR_FIELDS, AttackResult
from lsmia.attack.shards import compact, merge_shards, parse_classes, parse_shard, shard_classes
from lsmia.errors import LsmiaError
from tests.helpers.attack import ColourPrior, MeanColourClassifier, make_cfg
from tests.helpers.cli import invoke_in, succeed_in
from tests.helpers.paths import TINY

CPU = torch.device("cpu")
FIELDS = TENSOR_FIELDS


def assert_same_attack(a: AttackResult, b: AttackResult) -> None:
    assert a.targets == b.targets
    for name in FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert same(
        {k: v for k, v in a.meta.items() if k != "timings"}, {k: v for k, v in b.meta.items() if k != "timings"}
    )


def same(a: object, b: object) -> bool:
    """Equal, tensors in nested dicts and lists included."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def attack(cfg, classes=None, target=None, **kwargs) -> AttackResult:
    return run_attack(
        cfg, target or MeanColourClassifier(), ColourPrior(), list(range(6)), CPU, False, classes=classes, **kwargs
    )


# ------------------------------------------------------------------ class specs


def test_parse_classes_ranges_and_lists() -> None:
    assert parse_classes("0-3") == [0, 1, 2, 3]
    assert parse_classes("0-2, 7,9-10") == [0, 1, 2, 7, 9, 10]
    assert parse_classes("5") == [5]
    assert compact([0, 1, 2, 7, 9, 10]) == "0-2,7,9-10"
    assert parse_shard("1/4") == (1, 4)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [("", "not a class or a range"), ("0-x", "not a class"), ("5-2", "runs backwards"), ("0-3,2", "more than once")],
)
def test_bad_class_specs_are_one_line_errors(spec: str, needle: str) -> None:
    with pytest.raises(LsmiaError, match=needle) as err:
        parse_classes(spec)
    assert "\n" not in str(err.value) and "--classes" in str(err.value)


@pytest.mark.parametrize("spec", ["4/4", "x", "1/0", "-1/2"])
def test_bad_shard_specs_are_one_line_errors(spec: str) -> None:
    with pytest.raises(LsmiaError, match="I/N"):
        parse_shard(spec)


def test_shards_split_the_targets_into_near_equal_consecutive_parts() -> None:
    parts = [shard_classes(list(range(10)), i, 3) for i in range(3)]
    assert parts == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    with pytest.raises(LsmiaError, match="at most 10"):
        shard_classes(list(range(10)), 0, 11)


# ------------------------------------------------------------------ merge = unsharded


@pytest.mark.parametrize("schedule", ["batched", "per_class"])
def test_shards_merge_into_exactly_the_unsharded_attack(schedule: str) -> None:
    # batches of 5 rows and selection chunks of 7 straddle the classes (6 candidates each) and the shard borders
    cfg = make_cfg(targets=6, steps=4, batch_size=5, selection_batch_size=7, final_draws=2)
    whole = attack(cfg, schedule=schedule)
    parts = [attack(cfg, classes, schedule=schedule) for classes in ([4, 5], [0], [1, 2, 3])]
    assert all("shard" in p.meta for p in parts) and "shard" not in whole.meta
    assert parts[2].targets == [1, 2, 3] and len(parts[2].all_latents) == 3 * cfg.candidates
    assert_same_attack(merge_shards(parts), whole)
    assert whole.meta["diagnostics"]["loss"] and whole.meta["final_target_confidence_raw"] > 0


def test_a_shard_is_the_same_whatever_else_is_sharded() -> None:
    cfg = make_cfg(targets=6, steps=3, batch_size=5, selection_batch_size=7, final_draws=2)
    alone, listed_in_another_order = attack(cfg, [2, 3]), attack(cfg, [3, 2])
    assert_same_attack(alone, listed_in_another_order)
    assert alone.targets == [2, 3]


def test_merge_errors_name_the_problem() -> None:
    cfg = make_cfg(targets=6, steps=1, batch_size=5, selection_batch_size=7, final_draws=2)
    low, high = attack(cfg, [0, 1, 2]), attack(cfg, [3, 4])
    with pytest.raises(LsmiaError, match=r"no shard holds class 5 .*--classes 5"):
        merge_shards([low, high])
    with pytest.raises(LsmiaError, match="class 2 is in"):
        merge_shards([low, attack(cfg, [2, 5]), high])
    other = attack(make_cfg(targets=6, steps=2, batch_size=5, selection_batch_size=7, final_draws=2), [5])
    with pytest.raises(LsmiaError, match="another config"):
        merge_shards([low, high, other])
    with pytest.raises(LsmiaError, match="not an attack shard"):
        merge_shards([attack(cfg)])
    with pytest.raises(LsmiaError, match=r"not among attack\.targets"):
        attack(cfg, [7])


# ------------------------------------------------------------------ resume


class DiesAfter(MeanColourClassifier):
    """The real classifier, killed (as by Ctrl-C) at its ``calls``-th forward pass."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.calls = calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls -= 1
        if self.calls < 0:
            raise KeyboardInterrupt
        return super().forward(x)


def test_a_killed_shard_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    cfg = make_cfg(targets=6, steps=4, batch_size=5, selection_batch_size=7, final_draws=2, checkpoint_seconds=0)
    checkpoint = tmp_path / "checkpoint.pt"
    expected = attack(cfg, [1, 2, 3])
    # pool scoring: 64 latents in chunks of 7 (10), twice (mirror); then 4 steps per batch: die in the 3rd batch
    with pytest.raises(KeyboardInterrupt):
        attack(cfg, [1, 2, 3], DiesAfter(20 + 4 * 2 + 1), checkpoint=checkpoint, checkpoint_key="k")
    assert checkpoint.exists()
    lines: list[str] = []
    resumed = attack(cfg, [1, 2, 3], checkpoint=checkpoint, checkpoint_key="k", log=lines.append)
    assert any("resumed at batch" in line for line in lines), lines
    first = int(lines[0].split("resumed at batch ")[1].split()[0])
    assert first >= 2  # batches 0 and 1 (rows 0-9) hold no row of classes 1-3 but were drawn through
    assert_same_attack(resumed, expected)
    lines.clear()
    attack(cfg, [1, 2, 3], checkpoint=checkpoint, checkpoint_key="other", log=lines.append)
    assert not lines  # a checkpoint of another config (key) is not resumed


# ------------------------------------------------------------------ CLI and DVC


def tiny_study(root: Path, **attack: object) -> Path:
    params = yaml.safe_load(TINY.read_text())
    params["attack"].update(attack)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def test_cli_shards_of_the_tiny_study_merge_into_the_unsharded_attack(tmp_path: Path) -> None:
    root = tiny_study(tmp_path, targets=4, batch_size=3, selection_batch_size=5)
    succeed_in(root, "data")
    succeed_in(root, "train-prior")
    succeed_in(root, "train", "--role", "target", "--alpha", "0.0")
    succeed_in(root, "attack", "--alpha", "0.0")
    assert "shard: 4 final samples for 2 targets" in succeed_in(root, "attack", "--alpha", "0.0", "--classes", "0-1")
    succeed_in(root, "attack", "--alpha", "0.0", "--shard", "1/2")  # classes 2-3
    shards = root / "out" / "attack-shards" / "alpha0.0_seed0"
    # --classes names its folder by the classes, --shard I/N by I (DVC's attack-shard stage and `study` alike)
    assert sorted(p.name for p in shards.iterdir()) == ["0-1", "1"]
    assert not list(shards.glob("*/checkpoint.pt"))  # removed once the shard is written
    succeed_in(root, "merge-attack", str(shards / "1"), str(shards / "0-1"), "--out-dir", "merged")
    whole = root / "out" / "attacks" / "alpha0.0_seed0" / "attack.pt"
    assert_same_attack(AttackResult.load(root / "merged" / "attack.pt"), AttackResult.load(whole))
    assert (root / "merged" / "attack.pt").read_bytes() == whole.read_bytes()
    assert (root / "merged" / "reconstructions.png").exists()


def test_cli_rejects_bad_shard_options(tmp_path: Path) -> None:
    root = tiny_study(tmp_path)
    for args, needle in (
        (("--classes", "3-1"), "runs backwards"),
        (("--classes", "0", "--shard", "0/2"), "pass one of them"),
        (("--shard", "2/2"), "I/N"),
    ):
        result = invoke_in(root, "attack", *args)
        assert result.exit_code == 2 and needle in result.output, result.output


def test_dvc_yaml_with_shards_has_a_shard_matrix_and_a_merge(tmp_path: Path) -> None:
    from lsmia.experiments.render import dvc_yaml

    one = yaml.safe_load(dvc_yaml())["stages"]
    assert "attack-shard" not in one
    params = tiny_study(tmp_path, shards=2) / "params.yaml"
    out = tmp_path / "dvc.yaml"
    succeed_in(tmp_path, "dvc-yaml", "--params", str(params), "--path", str(out))
    stages = yaml.safe_load(out.read_text())["stages"]
    at = list(one).index("attack")
    assert list(stages) == [*list(one)[:at], "attack-shard", "attack", *list(one)[at + 1 :]]
    shard, merge = stages["attack-shard"], stages["attack"]
    assert shard["matrix"] == {"alpha": "${study.alphas}", "seed": "${study.seeds}", "shard": [0, 1]}
    assert "--shard ${item.shard}/2" in shard["cmd"] and shard["outs"][0] == {
        "${run.out_dir}/attack-shards/alpha${item.alpha}_seed${item.seed}/${item.shard}": {"persist": True}
    }
    assert shard["deps"] == one["attack"]["deps"] and shard["params"] == one["attack"]["params"]
    dirs = [f"${{run.out_dir}}/attack-shards/alpha${{item.alpha}}_seed${{item.seed}}/{i}" for i in (0, 1)]
    assert merge["cmd"].startswith(f"lsmia merge-attack {' '.join(dirs)} ")
    assert set(dirs) <= set(merge["deps"]) and merge["outs"] == one["attack"]["outs"]
    assert {k: v for k, v in stages.items() if k not in ("attack", "attack-shard")} == {
        k: v for k, v in one.items() if k != "attack"
    }


@pytest.mark.slow
def test_study_with_shards_writes_the_unsharded_attack(tmp_path: Path) -> None:
    from lsmia.config import load_config
    from lsmia.experiments.study import run_study

    tiny_study(tmp_path, targets=4, batch_size=3)
    base = {"run.out_dir": str(tmp_path / "one"), "study.alphas": [0.0]}
    run_study(load_config(tmp_path / "params.yaml", base), CPU, log=lambda line: None)
    sharded = {**base, "run.out_dir": str(tmp_path / "two"), "attack.shards": 2}
    run_study(load_config(tmp_path / "params.yaml", sharded), CPU, log=lambda line: None)
    tag = "alpha0.0_seed0"
    assert (tmp_path / "two" / "attack-shards" / tag / "1" / "attack.pt").exists()
    a, b = (AttackResult.load(tmp_path / run / "attacks" / tag / "attack.pt") for run in ("one", "two"))
    assert_same_attack(a, b)
