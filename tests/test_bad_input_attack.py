"""The bad-input suite at the model and attack load points (issue 23).

Each bad input ends as one line ``error: ...`` on stderr, exit code 2, no traceback, the outputs of an earlier run
byte for byte as they were; a legitimate input gets the right result. The finished tiny study and its helpers come
from tests/test_bad_input.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lsmia.attack.ppa import resolve_classes, resolve_targets
from lsmia.attack.result import AttackResult
from lsmia.attack.shards import parse_classes
from lsmia.config import ClassifierConfig, load_yaml
from lsmia.errors import LsmiaError
from lsmia.experiments.ablation import load_plan
from lsmia.infra.locks import output_lock
from lsmia.models.classifiers import Classifier, load_classifier, save_classifier
from lsmia.models.generator import load_dcgan_prior, save_dcgan_prior
from lsmia.training.classifier import channels_last_is_safe
from lsmia.utils import atomic_path, save_torch
from tests import test_bad_input
from tests.helpers.bad_input import assert_one_line_error, cli, snapshot, working_copy
from tests.helpers.paths import ROOT
from tests.test_bad_input import ALPHA, ATTACK_DIR, TAG, TARGET_DIR

earlier_study = test_bad_input.earlier_study  # the finished tiny study (module scope), and a copy of it per test
study = test_bad_input.study

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def subprocess_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]), "OMP_NUM_THREADS": "1", **extra}


def perturbed_copy_of_target(source: Path, copy: Path) -> None:
    model = load_classifier(source)
    with torch.no_grad():
        model.head.bias.add_(0.01)
    save_classifier(model, copy)


def perturbed_copy_of_prior(source: Path, copy: Path) -> None:
    generator = load_dcgan_prior(source).generator
    with torch.no_grad():
        next(generator.parameters()).add_(0.01)
    save_dcgan_prior(generator, copy)


# --------------------------------------------------------------------------- case 2: channels_last on the CPU


@pytest.mark.parametrize(("arch", "width", "safe"), [("smallresnet", w, w >= 8) for w in (4, 5, 7, 8, 16, 32)])
def test_channels_last_only_where_onednn_trains_safely(arch: str, width: int, safe: bool) -> None:
    # oneDNN's AVX2 weight gradient of a strided 1x1 conv in channels_last crashes below 8 input channels:
    # smallresnet's shortcuts take `width` and 2 * `width` channels
    assert channels_last_is_safe(Classifier(arch, 4, 32, width).backbone) is safe


@pytest.mark.parametrize("arch", ["smallvgg", "resnet18"])
def test_nets_without_narrow_strided_1x1_convs_keep_channels_last(arch: str) -> None:
    assert channels_last_is_safe(Classifier(arch, 4, 32, 4).backbone)


TRAIN_SMALLEST = """
import sys, tempfile
from pathlib import Path
import torch
from lsmia.config import ClassifierConfig
from lsmia.training.classifier import train_classifier
from tests.helpers.data import make_face_data

torch.set_num_threads(1)
cfg = ClassifierConfig(arch="smallresnet", width=int(sys.argv[1]), epochs=1, batch_size=8)
with tempfile.TemporaryDirectory() as out:
    train_classifier(cfg, make_face_data(size=32), Path(out), torch.device("cpu"), show_progress=False)
print("trained")
"""


def test_the_smallest_allowed_width_trains_on_the_cpu() -> None:
    smallest = ClassifierConfig.model_json_schema()["properties"]["width"]["minimum"]
    # AVX2 is where oneDNN's kernel crashed ("double free or corruption", SIGSEGV); the variable only lowers the
    # instruction set oneDNN may use, so on any x86 CPU with AVX2 this runs the kernel that crashed
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_SMALLEST, str(smallest)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=subprocess_env(ONEDNN_MAX_CPU_ISA="AVX2"),
        timeout=300,
    )
    assert done.returncode == 0 and "trained" in done.stdout, (done.returncode, done.stderr[-2000:])


# --------------------------------------------------------------------------- case 5: merging attack shards


SHARD_RUNS = {  # shard folder -> extra options of 'lsmia attack --alpha 0.1'
    "shards/0": ["--classes", "0"],
    "shards/1": ["--classes", "1"],
    "shards/1-other-target": ["--classes", "1", "--target", "other/model.pt"],
    "shards/1-other-prior": ["--classes", "1", "--prior", "other/prior.pt"],
    "shards/1-other-prior-config": ["--classes", "1", "-S", "prior.epochs=3"],
}


@pytest.fixture(scope="module")
def earlier_shards(earlier_study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The earlier study plus shards of its attack: one per class, and class 1 against other inputs."""
    root = tmp_path_factory.mktemp("shards") / "study"
    shutil.copytree(earlier_study, root)
    with contextlib.chdir(root):
        Path("other").mkdir()
        perturbed_copy_of_target(TARGET_DIR / "model.pt", Path("other/model.pt"))
        perturbed_copy_of_prior(Path("out/prior/prior.pt"), Path("other/prior.pt"))
        for folder, options in SHARD_RUNS.items():
            result = cli("attack", "--alpha", ALPHA, *options, "--out-dir", folder)
            assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def shards(earlier_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return working_copy(earlier_shards, tmp_path, monkeypatch)


def test_shards_of_one_attack_merge_into_the_unsharded_attack(shards: Path) -> None:
    result = cli("merge-attack", "shards/1", "shards/0", "--out-dir", "merged")
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    assert Path("merged/attack.pt").read_bytes() == (ATTACK_DIR / "attack.pt").read_bytes()


@pytest.mark.parametrize(
    ("stale", "what"),
    [
        ("shards/1-other-target", "target model"),
        ("shards/1-other-prior", "prior"),
        ("shards/1-other-prior-config", "attack or prior config"),
    ],
    ids=["target", "prior", "prior-config"],
)
def test_shards_of_attacks_on_other_inputs_are_not_merged(shards: Path, stale: str, what: str) -> None:
    before = snapshot(shards / "shards")
    line = assert_one_line_error(
        cli("merge-attack", "shards/0", stale, "--out-dir", "merged"), stale, "shards/0", f"different {what}"
    )
    assert "re-run" in line
    assert not Path("merged").exists()
    assert snapshot(shards / "shards") == before


@pytest.mark.parametrize("out_dir", ["shards/0", "shards/0/merged"], ids=["a-shard", "inside-a-shard"])
def test_the_merged_attack_may_not_overwrite_a_shard(shards: Path, out_dir: str) -> None:
    before = snapshot(shards / "shards")
    assert_one_line_error(
        cli("merge-attack", "shards/0", "shards/1", "--out-dir", out_dir), f"--out-dir {out_dir}", "shard folder"
    )
    assert snapshot(shards / "shards") == before
    assert not Path("shards/0/merged").exists()


def strip_digests(folder: Path) -> None:
    """``folder``'s shard as written before shards carried the digests of their inputs."""
    result = AttackResult.load(folder / "attack.pt")
    del result.meta["shard"]["digests"]
    result.save(folder / "attack.pt")


def test_shards_without_digests_are_merged_with_a_warning(shards: Path) -> None:
    for folder in ("shards/0", "shards/1"):
        strip_digests(Path(folder))
    result = cli("merge-attack", "shards/0", "shards/1", "--out-dir", "merged")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "shards/0, shards/1" in warnings[0] and "re-run" in warnings[0], result.stderr
    assert Path("merged/attack.pt").read_bytes() == (ATTACK_DIR / "attack.pt").read_bytes()


def test_a_shard_whose_meta_lacks_its_classes_is_named(shards: Path) -> None:
    result = AttackResult.load(Path("shards/1/attack.pt"))
    del result.meta["shard"]["classes"]
    result.save(Path("shards/1/attack.pt"))
    before = snapshot(shards / "shards")
    assert_one_line_error(
        cli("merge-attack", "shards/0", "shards/1", "--out-dir", "merged"), "shards/1", "'classes'", "re-run"
    )
    assert snapshot(shards / "shards") == before


def test_a_finished_shard_of_another_target_is_attacked_again(shards: Path) -> None:
    from lsmia.config import load_config
    from lsmia.experiments.graph import _finished_shard
    from lsmia.stages.attack import input_digests

    cfg = load_config("params.yaml", {"target.smoothing.alpha": float(ALPHA)})
    prior = Path("out/prior/prior.pt")
    same = input_digests(cfg, 0, TARGET_DIR / "model.pt", prior)
    other = input_digests(cfg, 0, Path("other/model.pt"), prior)
    assert _finished_shard(Path("shards/1"), [1], cfg, 0, same)
    assert not _finished_shard(Path("shards/1"), [1], cfg, 0, other)


# --------------------------------------------------------------------------- case 14: sizes that hung
# These hung (a quadratic check: hours; a prior that never returns: forever). A timeout turns a hang into a
# failure; it measures no speed (bench/ does that).


@pytest.mark.timeout(300)
def test_classes_beyond_the_attacked_ones_fail_at_once(study: Path) -> None:
    before = snapshot(study / "out")
    assert_one_line_error(
        cli("attack", "--alpha", ALPHA, "--classes", "0-60000"), "--classes '0-60000'", "class 60000", "from 0 to 1"
    )
    assert snapshot(study / "out") == before


def test_a_range_is_bounded_before_it_is_expanded() -> None:
    with pytest.raises(LsmiaError, match="class 1000000000000 is beyond"):  # a list of 10^12 classes: no memory
        parse_classes("0-1000000000000", limit=2)


@pytest.mark.timeout(300)
def test_class_lists_are_checked_in_linear_time() -> None:
    count = 300_000  # a quadratic check takes hours here
    assert parse_classes(f"0-{count - 1}", limit=count) == list(range(count))
    with pytest.raises(LsmiaError, match=f"class {count - 1} more than once"):
        parse_classes(f"0-{count - 1},{count - 1}", limit=count)
    targets = resolve_targets(list(range(count)), count)
    assert resolve_classes(list(range(count - 1, -1, -1)), targets) == targets


class NeverReturns(torch.nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z
        while True:
            x = x + 1.0
        return x


@pytest.mark.timeout(300)
def test_a_torchscript_prior_that_never_returns_stops_the_attack(study: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lsmia.models.generator as generator

    torch.jit.save(torch.jit.script(NeverReturns()), "hang.pt")
    monkeypatch.setattr(generator, "PROBE_SECONDS", 2.0)
    before = snapshot(study / "out")
    sets = ["-S", "prior.kind=torchscript", "-S", "prior.path=hang.pt", "-S", "prior.latent_dim=4"]
    assert_one_line_error(
        cli("attack", "--alpha", ALPHA, *sets), "hang.pt", "within 2 s", "prior.path is code", "trust"
    )
    assert snapshot(study / "out") == before


# --------------------------------------------------------------------------- case 15: temporaries and YAML keys


SLOW_SAVE = """
import sys, time, torch
from lsmia.utils import save_torch

def slow_save(obj, handle):
    handle.write(b"half a checkpoint")
    handle.flush()
    print("writing", flush=True)
    time.sleep(120)

torch.save = slow_save
save_torch({"epoch": 2}, sys.argv[1])
"""


def killed_while_saving(path: Path, how: signal.Signals) -> int:
    """Run save_torch of ``path`` in a process stopped by ``how`` mid-write; its return code."""
    saver = subprocess.Popen(
        [sys.executable, "-c", SLOW_SAVE, str(path)], stdout=subprocess.PIPE, text=True, env=subprocess_env()
    )
    assert saver.stdout is not None and saver.stdout.readline().strip() == "writing"
    assert list(path.parent.glob(f".{path.name}.*.tmp")), "the write in progress has its temporary file"
    saver.send_signal(how)
    return saver.wait(timeout=60)


def test_sigterm_during_a_checkpoint_save_leaves_no_temporary_file(tmp_path: Path) -> None:
    checkpoint = tmp_path / "target" / "checkpoint.pt"
    save_torch({"epoch": 1}, checkpoint)
    before = checkpoint.read_bytes()
    assert killed_while_saving(checkpoint, signal.SIGTERM) == -signal.SIGTERM  # still ended by the signal
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["checkpoint.pt"]
    assert checkpoint.read_bytes() == before


def test_a_temporary_file_left_by_a_kill_is_removed_at_the_next_start(tmp_path: Path) -> None:
    folder = tmp_path / "target"
    checkpoint = folder / "checkpoint.pt"
    save_torch({"epoch": 1}, checkpoint)
    (folder / "notes.tmp").write_text("not lsmia's")
    assert killed_while_saving(checkpoint, signal.SIGKILL) == -signal.SIGKILL
    assert len(list(folder.glob(".checkpoint.pt.*.tmp"))) == 1  # nothing can remove it at a SIGKILL
    with output_lock(folder):  # how every stage starts writing its folder
        assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "notes.tmp"]


def test_an_exception_in_an_atomic_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError), atomic_path(tmp_path / "metrics.json") as tmp:
        tmp.write_text("{")
        raise ValueError("stopped")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        ("attack: {steps: 3}\ntarget: {epochs: 1}\nattack: {steps: 4}\n", "'attack'", "lines 1 and 3"),
        ("attack:\n  steps: 3\n  candidates: 2\n  steps: 4\n", "'steps'", "lines 2 and 4"),
    ],
    ids=["section", "key-in-a-section"],
)
def test_a_key_written_twice_in_a_params_file(study: Path, text: str, key: str, lines: str) -> None:
    Path("twice.yaml").write_text(text)
    before = snapshot(study / "out")
    assert_one_line_error(
        cli("train", "--alpha", ALPHA, "--params", "twice.yaml"), "params file twice.yaml", key, "twice", "keep one"
    )
    assert snapshot(study / "out") == before


PLAN = """
name: twice
variants:
  baseline: {}
  fewer_steps: {attack.steps: 1}
  fewer_steps: {attack.steps: 2}
"""


def test_a_variant_written_twice_in_an_ablation_plan(study: Path) -> None:
    Path("plan.yaml").write_text(PLAN)
    before = snapshot(study / "out")
    assert_one_line_error(cli("ablate", "plan.yaml"), "ablation file plan.yaml", "'fewer_steps'", "lines 5 and 6")
    assert snapshot(study / "out") == before


ANCHORED_PLAN = """
name: anchored
alphas: &alphas [0.0, 0.1]
variants:
  base: &base {attack.steps: 2, attack.candidates: 2}
  longer: {<<: *base, attack.steps: 4}
  merged_twice: {<<: [*base, {attack.steps: 9}], attack.pool_size: 8}
  same_alphas: {study.alphas: *alphas}
"""


def test_anchors_aliases_and_merge_keys_still_load(tmp_path: Path) -> None:
    (tmp_path / "plan.yaml").write_text(ANCHORED_PLAN)
    plan = load_plan(tmp_path / "plan.yaml")
    assert plan.variants == yaml.safe_load(ANCHORED_PLAN)["variants"]  # PyYAML's own merge order
    assert plan.variants["longer"] == {"attack.steps": 4, "attack.candidates": 2}
    assert plan.variants["merged_twice"]["attack.pool_size"] == 8
    assert plan.variants["same_alphas"] == {"study.alphas": [0.0, 0.1]} and plan.alphas == [0.0, 0.1]


@pytest.mark.parametrize("path", [ROOT / "params.yaml", *CONFIGS], ids=lambda p: p.name)
def test_the_committed_yaml_files_load_as_before(path: Path) -> None:
    text = path.read_text()
    assert load_yaml(text, str(path)) == yaml.safe_load(text)


# --------------------------------------------------------------------------- case 12: files of the wrong kind


def write_wrong_kind(study: Path) -> None:
    torch.save([1, 2, 3], study / "list.pt")
    torch.save({"arch": "smallresnet", "state_dict": {}}, study / "no_sizes.pt")
    (study / "list.json").write_text("[1, 2]\n")


WRONG_KIND_CASES = {
    "target-list": (
        ["attack", "--alpha", ALPHA, "--target", "list.pt"],
        ["list.pt", "holds a list", "classifier checkpoint"],
    ),
    "target-without-sizes": (
        ["attack", "--alpha", ALPHA, "--target", "no_sizes.pt"],
        ["no_sizes.pt", "'num_classes': missing, expected a whole number"],
    ),
    "prior-list": (["attack", "--alpha", ALPHA, "--prior", "list.pt"], ["list.pt", "holds a list", "DCGAN prior"]),
    "pretrained-list": (
        ["train", "--alpha", ALPHA, "-S", "target.pretrained_path=list.pt", "--out-dir", "pretrained"],
        ["pretrained weights list.pt", "hold a list", "state dict"],
    ),
    "attack-result-list": (
        ["evaluate", "--alpha", ALPHA, "--attack", "list.pt"],
        ["attack result list.pt", "holds a list", "attack.pt"],
    ),
    "metrics-as-ablation-results": (
        ["verdict", f"out/metrics/{TAG}.json"],
        ["ablation results", f"{TAG}.json", "'variants'", "results.json of 'lsmia ablate'"],
    ),
    "metrics-as-report-ablation": (
        ["report", "--ablation", f"out/metrics/{TAG}.json"],
        ["ablation results", f"{TAG}.json", "'variants'"],
    ),
}


@pytest.mark.parametrize("case", WRONG_KIND_CASES)
def test_a_file_of_the_wrong_kind_is_named_with_what_was_expected(study: Path, case: str) -> None:
    args, needles = WRONG_KIND_CASES[case]
    write_wrong_kind(study)
    before = snapshot(study / "out")
    assert_one_line_error(cli(*args), *needles)
    assert snapshot(study / "out") == before


def test_a_training_checkpoint_of_the_wrong_kind(study: Path) -> None:
    Path("resume").mkdir()
    torch.save([1, 2], "resume/checkpoint.pt")
    before = snapshot(study)
    assert_one_line_error(
        cli("train", "--alpha", ALPHA, "--out-dir", "resume"), "training checkpoint", "holds a list", "delete it"
    )
    assert snapshot(study) == before


def test_target_metrics_of_the_wrong_kind(study: Path) -> None:
    (TARGET_DIR / "metrics.json").write_text("[0.9]\n")
    before = snapshot(study / "out")
    assert_one_line_error(cli("evaluate", "--alpha", ALPHA), "target metrics", "holds a list", "'test_acc'")
    assert snapshot(study / "out") == before
