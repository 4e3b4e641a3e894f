"""The one stage graph: dvc.yaml generated from it, complete code dependencies, byte-stable outputs."""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from lsmia.config import load_config
from lsmia.experiments import code as stage_code
from lsmia.experiments import graph, render
from lsmia.experiments import keys as cache_keys
from tests.helpers.paths import ROOT, TINY
from tests.helpers.poll import wait_until
from tests.helpers.project import BIN, dvc, temp_dvc_repo

STAGE_NAMES = [s.name for s in graph.STAGES]


def test_the_committed_dvc_yaml_is_the_one_generated_from_the_graph():
    assert (ROOT / "dvc.yaml").read_text(encoding="utf-8") == render.dvc_yaml(), (
        "dvc.yaml differs from lsmia/experiments/graph.py: run 'lsmia dvc-yaml' and commit it"
    )


def test_every_stage_of_dvc_yaml_lists_its_params_and_runs_the_cli():
    stages = yaml.safe_load(render.dvc_yaml())["stages"]
    assert list(stages) == STAGE_NAMES
    for name, entry in stages.items():
        assert entry["cmd"].startswith("lsmia ") and entry.get("params", []) == list(graph.stage(name).params)
    assert set(stages["target"]["matrix"]) == {"alpha", "seed"}


@pytest.mark.parametrize(
    "stage_name, files",
    [
        ("attack", {"attack/losses.py", "data/augment.py", "models/fusion.py", "models/generator.py", "attack/ppa.py"}),
        (
            "target",
            {"training/smoothing.py", "training/schedules.py", "training/classifier.py", "models/classifiers.py"},
        ),
        ("evaluate", {"metrics/evaluate.py", "metrics/knowledge.py", "models/classifiers.py", "attack/result.py"}),
        ("report", {"reporting/report.py", "reporting/stats.py", "paths.py", "models/inference.py"}),
    ],
)
def test_code_deps_reach_every_module_a_stage_imports(stage_name, files):
    """The defects of the hand-written dvc.yaml: the attack missed its losses, fusion and the generator, the
    report missed stats.py."""
    deps = {Path(d).relative_to("lsmia").as_posix() for d in stage_code.code_deps(graph.stage(stage_name))}
    assert files <= deps
    assert not any(d.startswith(("cli/", "tracking/")) for d in deps)  # logging never changes what a stage writes


def test_code_deps_include_package_inits_and_function_level_imports():
    deps = set(stage_code.code_deps(graph.stage("attack")))
    assert "lsmia/attack/__init__.py" in deps and "lsmia/models/__init__.py" in deps
    assert "lsmia/attack/ppa.py" in deps  # imported inside stage_attack, not at module level


def test_the_report_s_templates_are_its_code(monkeypatch):
    """The report's package data (PACKAGE_DATA in lsmia/reporting/report.py): one folder in its dvc.yaml deps, so a template
    edited or added re-runs it, and in its code digest; no other stage reaches it."""
    folder = "lsmia/templates/report"
    assert folder in stage_code.code_deps(graph.stage("report"))
    assert not any(folder in stage_code.code_deps(s) for s in graph.STAGES if s.name != "report")
    template = stage_code.REPO_ROOT / folder / "macros.html.j2"
    before = cache_keys.code_digests()
    real_read_bytes = Path.read_bytes
    monkeypatch.setattr(
        Path, "read_bytes", lambda self: real_read_bytes(self) + (b"<!-- -->" if self == template else b"")
    )
    after = cache_keys.code_digests()
    assert {name for name in before if before[name] != after[name]} == {"report"}


def test_code_deps_leave_out_what_a_stage_never_runs():
    assert "lsmia/training/smoothing.py" not in stage_code.code_deps(graph.stage("data"))
    assert "lsmia/attack/ppa.py" not in stage_code.code_deps(graph.stage("target"))
    assert "lsmia/attack/losses.py" not in stage_code.code_deps(graph.stage("target"))  # the attack's losses
    assert "lsmia/training/smoothing.py" not in stage_code.code_deps(graph.stage("attack"))  # the training loss
    assert "lsmia/attack/losses.py" not in stage_code.code_deps(graph.stage("report"))


def tree_hashes(folder: Path) -> dict[str, str]:
    """md5 of every file under ``folder`` (wall-clock sidecars excluded, as DVC and git exclude them)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".timings")
    }


@pytest.mark.slow
def test_every_stage_writes_the_same_bytes_when_run_twice(tmp_path, monkeypatch):
    """The held-out byte-stability check: the whole tiny study twice from scratch, every output file compared (the
    report's build time fixed by SOURCE_DATE_EPOCH, as a reproducible build sets it)."""
    from lsmia.experiments.study import run_study
    from lsmia.utils import resolve_device

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1796601600")

    cfg = load_config(TINY, {"run.out_dir": str(tmp_path / "out")})
    run_study(cfg, resolve_device("cpu"), log=lambda line: None)
    first = tree_hashes(tmp_path / "out")
    shutil.rmtree(tmp_path / "out")
    run_study(cfg, resolve_device("cpu"), log=lambda line: None)
    second = tree_hashes(tmp_path / "out")
    assert {
        "data/dataset.pt",
        "prior/prior.pt",
        "models/eval/model.pt",
        "attacks/alpha0.1_seed0/attack.pt",
        "metrics/alpha-0.05_seed0.json",
        "report/index.html",
    } <= set(first)
    assert first == second, {k for k in first if first[k] != second.get(k)}


def ran(output: str) -> dict[str, int]:
    """How many stages of each kind ``dvc repro`` ran (``target@0.1-0`` counts as ``target``)."""
    kinds = [name.split("@")[0] for name in re.findall(r"Running stage '([^']+)'", output)]
    return {kind: kinds.count(kind) for kind in kinds}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return temp_dvc_repo(tmp_path_factory.mktemp("graph"), tracking=False)


@pytest.mark.slow
def test_rerunning_a_stage_by_hand_leaves_nothing_stale(repo):
    repo, env = repo
    command = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["attack"]["cmd"]
    command = command.replace("${run.out_dir}", "out").replace("${item.alpha}", "0.1").replace("${item.seed}", "0")
    subprocess.run([str(BIN / "lsmia"), *command.split()[1:]], cwd=repo, env=env, check=True, capture_output=True)
    subprocess.run(
        [str(BIN / "lsmia"), "data", "--out", "out/data/dataset.pt"], cwd=repo, env=env, check=True, capture_output=True
    )
    assert ran(dvc(repo, env, "repro")) == {}


@pytest.mark.slow
def test_editing_the_loss_code_reruns_exactly_the_stages_that_import_it(repo):
    """An edit of lsmia/training/smoothing.py re-runs the eval model and targets (their training loss) and the
    toy; their outputs are byte-identical, so attacks, evaluation and report do not run again."""
    repo, env = repo
    losses = repo / "lsmia" / "training" / "smoothing.py"
    losses.write_text(losses.read_text() + "\n# a comment: the code changed, the results do not\n")
    output = dvc(repo, env, "repro")
    assert ran(output) == {"eval-model": 1, "target": 2, "toy": 1}, output  # the toy trains with it too
    assert ran(dvc(repo, env, "repro")) == {}


@pytest.mark.slow
def test_a_killed_dvc_repro_resumes_training_from_its_checkpoint(tmp_path):
    """DVC keeps training outputs (persist) while a stage re-runs, so a killed `dvc repro` resumes the target
    from its last checkpoint instead of epoch 0; the finished model is the uninterrupted one."""
    import os
    import signal

    import torch

    from lsmia.utils import load_timings

    epochs = 300
    (tmp_path / "repo").mkdir()
    repo, env = temp_dvc_repo(tmp_path / "repo", tracking=False, repro=False)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["target"]["epochs"] = epochs
    params["study"]["alphas"] = [0.1]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    target = repo / "out" / "models" / "target_alpha0.1_seed0"
    proc = subprocess.Popen(
        [str(BIN / "dvc"), "repro"],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def checkpointed_epoch() -> int | None:
        """The epoch of the training's checkpoint once it is 5 or later."""
        assert proc.poll() is None, "training finished before it could be killed: raise the epochs"
        checkpoint = target / "checkpoint.pt"
        epoch = int(torch.load(checkpoint, weights_only=True)["epoch"]) if checkpoint.exists() else -1
        return epoch if epoch >= 5 else None

    try:
        killed_after = wait_until(checkpointed_epoch, 300, "a checkpoint of epoch 5 or later")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert 5 <= killed_after < epochs - 1, "training finished before it could be killed: raise the epochs"
    dvc(repo, env, "repro")
    epochs_run = load_timings(target / "model.pt")["epochs_run"]
    assert 0 < epochs_run <= epochs - killed_after - 1  # resumed after the last checkpoint, not from epoch 0
    resumed = torch.load(target / "model.pt", weights_only=True)
    fresh_dir = tmp_path / "fresh"  # the same command without an interruption (same threads and environment)
    subprocess.run(
        [
            str(BIN / "lsmia"),
            "train",
            "--role",
            "target",
            "--alpha",
            "0.1",
            "--seed",
            "0",
            "--data",
            "out/data/dataset.pt",
            "--out-dir",
            str(fresh_dir),
        ],
        cwd=repo,
        env=env,
        check=True,
        capture_output=True,
    )
    fresh = torch.load(fresh_dir / "model.pt", weights_only=True)
    assert all(torch.equal(resumed["state_dict"][k], fresh["state_dict"][k]) for k in fresh["state_dict"])


@pytest.mark.slow  # 7-12 s per stage: it trains twice
@pytest.mark.parametrize("stage_name", ["eval-model", "prior"])
def test_a_training_stage_rerun_on_its_finished_checkpoint_writes_the_same_bytes(stage_name, tmp_path):
    """DVC keeps training outputs (persist), so `dvc repro -f` of a finished stage resumes its complete checkpoint:
    the outputs must not change by a byte, or every downstream stage would run again."""
    import torch

    from lsmia.stages.data import stage_data
    from lsmia.stages.prior import stage_prior
    from lsmia.stages.train import stage_train

    cfg = load_config(TINY, {"run.out_dir": str(tmp_path)})
    stage_data(cfg, tmp_path / "data.pt")
    out = tmp_path / stage_name

    def run() -> dict[str, str]:
        if stage_name == "prior":
            stage_prior(cfg, tmp_path / "data.pt", out, torch.device("cpu"), code_version="v")
        else:
            stage_train(cfg, "eval", tmp_path / "data.pt", out, torch.device("cpu"), 0, code_version="v")
        return tree_hashes(out)

    assert run() == run()


def test_an_exported_generator_is_a_dependency_of_the_stages_that_read_it(tmp_path: Path) -> None:
    """With prior.path set, `lsmia dvc-yaml` lists the generator file for the prior and attack stages, and DVC
    resolves it to that file: a generator replaced in place re-runs them (the prior stage records its digest)."""
    from dvc.repo import Repo

    without = yaml.safe_load(render.dvc_yaml())["stages"]
    assert all(render.GENERATOR not in entry["deps"] for entry in without.values())
    params = load_config(TINY, {"prior.kind": "torchscript", "prior.path": "weights/generator.pt"}).to_dict()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([str(BIN / "lsmia"), "dvc-yaml"], cwd=tmp_path, check=True, capture_output=True)
    stages = yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]
    readers = {name for name, entry in stages.items() if render.GENERATOR in entry["deps"]}
    assert readers == {"prior", "attack"}
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    with Repo(str(tmp_path)) as repo:
        resolved = {
            stage.name.split("@")[0]
            for stage in repo.index.stages
            if any(dep.def_path == "weights/generator.pt" for dep in stage.deps)
        }
    assert resolved == {"prior", "attack"}
