"""The bad-input suite (issue 11): operating-system faults and would-be silent wrong results.

Each case asserts the one line ``error: ...`` on stderr (no traceback), exit code 2 and that the
outputs of an earlier run are byte for byte what they were. Operating-system faults are simulated
portably: a read-only folder and a full disk are small tmpfs mounts when the tests run as root (a
read-only folder is a chmod and a full disk a patched write otherwise), a file where a folder should
be and a huge size need nothing special.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

from lsmia.data.base import FaceData, ImageSet
from lsmia.errors import LsmiaError
from lsmia.training.classifier import require_training_steps, steps_per_epoch
from tests.helpers.bad_input import assert_one_line_error, cli, snapshot, working_copy
from tests.helpers.paths import ROOT, TINY
from tests.helpers.poll import kill_once_written

torch.set_num_threads(1)

ALPHA = "0.1"
TAG = "alpha0.1_seed0"
TARGET_DIR = Path("out/models") / f"target_{TAG}"
ATTACK_DIR = Path("out/attacks") / TAG
HOLD_LOCK = (
    "import sys, time\nfrom lsmia.infra.locks import output_lock\nwith output_lock(sys.argv[1]):\n"
    "    print('held', flush=True)\n    time.sleep(300)\n"
)


# --------------------------------------------------------------------------- helpers


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None and sys.platform.startswith("linux")


def run_quiet(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), capture_output=True, text=True)


@contextmanager
def tmpfs_over(folder: Path, size: str, scratch: Path) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``folder`` holding a copy of its files; skips when mounting is refused."""
    saved = scratch / f"saved-{folder.name}"
    shutil.copytree(folder, saved)
    mounted = run_quiet("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): needs root in a mount-capable container")
    try:
        shutil.copytree(saved, folder, dirs_exist_ok=True)
        yield folder
    finally:
        if run_quiet("umount", str(folder)).returncode != 0:
            run_quiet("umount", "-l", str(folder))


@contextmanager
def read_only(folder: Path, scratch: Path) -> Iterator[str]:
    """``folder`` read-only, as a read-only tmpfs (root: chmod does not stop root) or by chmod; yields the reason."""
    if not can_mount():
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")] if p.is_dir()}
        for path in modes:
            path.chmod(0o555)
        try:
            yield "permission denied"
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        return
    with tmpfs_over(folder, "32m", scratch):
        remounted = run_quiet("mount", "-o", "remount,ro", str(folder))
        if remounted.returncode != 0:
            pytest.skip(f"cannot remount a tmpfs read-only here ({remounted.stderr.strip()})")
        yield "read-only"


def fill(folder: Path) -> None:
    """Write a filler file until the file system holding ``folder`` is full."""
    chunk = b"\0" * 4096
    with open(folder / "filler.bin", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(chunk)
        except OSError as err:
            assert err.errno == errno.ENOSPC


@contextmanager
def full_disk(folder: Path, scratch: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The disk holding ``folder`` full: a small filled tmpfs (root) or a patched write that fails with ENOSPC."""
    if can_mount():
        with tmpfs_over(folder, "4m", scratch):
            fill(folder)
            yield
        return
    replace = os.replace

    def no_space(
        src: str | os.PathLike[str],
        dst: str | os.PathLike[str],
        *,
        src_dir_fd: int | None = None,
        dst_dir_fd: int | None = None,
    ) -> None:
        if Path(dst).resolve().is_relative_to(folder.resolve()):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        replace(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    monkeypatch.setattr(os, "replace", no_space)
    yield


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def earlier_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny study for alpha 0.1 (data, prior, target, eval model, attack, metrics), made once."""
    root = tmp_path_factory.mktemp("earlier")
    shutil.copy(TINY, root / "params.yaml")
    old = Path.cwd()
    os.chdir(root)
    try:
        for args in (
            ["data"],
            ["train-prior"],
            ["train", "--alpha", ALPHA],
            ["train", "--role", "eval"],
            ["attack", "--alpha", ALPHA],
            ["evaluate", "--alpha", ALPHA],
        ):
            result = cli(*args)
            assert result.exit_code == 0, result.output
    finally:
        os.chdir(old)
    return root


@pytest.fixture
def study(earlier_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the earlier study as the working directory."""
    return working_copy(earlier_study, tmp_path, monkeypatch)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    folder = tmp_path / "scratch"
    folder.mkdir()
    return folder


# --------------------------------------------------------------------------- the params file


def test_params_file_that_is_not_utf8(study: Path) -> None:
    Path("latin1.yaml").write_bytes("attack: {steps: 3}  # café\n".encode("latin-1"))
    before = snapshot(study / "out")
    assert_one_line_error(cli("train", "--params", "latin1.yaml"), "latin1.yaml", "not UTF-8")
    assert snapshot(study / "out") == before


def test_params_file_that_is_a_folder(study: Path) -> None:
    Path("conf").mkdir()
    before = snapshot(study / "out")
    assert_one_line_error(cli("data", "--params", "conf"), "conf", "is a folder", "--params")
    assert snapshot(study / "out") == before


# --------------------------------------------------------------------------- huge values


@pytest.mark.parametrize(
    "args, needles",
    [
        (["train", "--alpha", ALPHA, "--seed", str(2**70)], ["1180591620717411303424", "the --seed flag"]),
        (["data", "-S", f"run.seed={2**70}"], ["run.seed", f"--set run.seed={2**70}"]),
        (["study", "-S", f"study.seeds=[0, {2**70}]"], ["study.seeds", "--set study.seeds"]),
    ],
    ids=["seed-flag", "run-seed", "study-seeds"],
)
def test_huge_seed_is_rejected_before_any_folder_is_made(study: Path, args: list[str], needles: list[str]) -> None:
    before = snapshot(study / "out")
    folders = sorted(p for p in study.rglob("*") if p.is_dir())
    assert_one_line_error(cli(*args), *needles)
    assert snapshot(study / "out") == before
    assert sorted(p for p in study.rglob("*") if p.is_dir()) == folders


def test_huge_image_size_names_the_size_and_the_memory(study: Path) -> None:
    before = snapshot(study / "out")
    assert_one_line_error(
        cli("data", "-S", "data.image_size=100000"), "data.image_size=100000", "TiB of memory", "available"
    )
    assert snapshot(study / "out") == before


# --------------------------------------------------------------------------- a file where a folder should be


@pytest.mark.parametrize(
    "args, needles",
    [
        (["train", "--alpha", ALPHA, "-S", "run.out_dir=params.yaml"], ["run.out_dir params.yaml", "is a file"]),
        (
            ["train", "--alpha", ALPHA, "--out-dir", "out/data/summary.json/target"],
            ["--out-dir out/data/summary.json/target", "out/data/summary.json is a file"],
        ),
        (["attack", "--alpha", ALPHA, "--out-dir", "out/data/summary.json"], ["--out-dir", "is a file"]),
        (["data", "--out", "out/models"], ["--out out/models is a folder"]),
    ],
    ids=["run-out-dir", "train-out-dir-below-a-file", "attack-out-dir", "data-out-is-a-folder"],
)
def test_output_path_of_the_wrong_kind(study: Path, args: list[str], needles: list[str]) -> None:
    before = snapshot(study)
    assert_one_line_error(cli(*args), *needles)
    assert snapshot(study) == before


def test_corrupt_target_metrics_read_by_evaluate(study: Path) -> None:
    (study / TARGET_DIR / "metrics.json").write_text('{"test_acc": 0.9,')
    before = snapshot(study / "out")
    assert_one_line_error(cli("evaluate", "--alpha", ALPHA), "target metrics", "metrics.json", "cannot be read as JSON")
    assert snapshot(study / "out") == before


# --------------------------------------------------------------------------- read-only folders and a full disk


READ_ONLY_CASES = {  # stage -> (command, folder made read-only)
    "data": (["data"], Path("out/data")),
    "train": (["train", "--alpha", ALPHA], TARGET_DIR),
    "attack": (["attack", "--alpha", ALPHA], ATTACK_DIR),
    "report": (["report"], Path("out")),
}


@pytest.mark.parametrize("stage", READ_ONLY_CASES)
def test_read_only_output_folder(study: Path, scratch: Path, stage: str) -> None:
    args, folder = READ_ONLY_CASES[stage]
    with read_only(study / folder, scratch) as reason:
        before = snapshot(study / folder)
        assert_one_line_error(cli(*args), str(folder), reason, "write elsewhere")
        assert snapshot(study / folder) == before


FULL_DISK_CASES = {
    "data": (["data"], Path("out/data")),
    "train": (["train", "--alpha", ALPHA], TARGET_DIR),
    "attack": (["attack", "--alpha", ALPHA], ATTACK_DIR),
}


@pytest.mark.parametrize("stage", FULL_DISK_CASES)
def test_full_disk_says_so_and_names_the_path(
    study: Path, scratch: Path, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    args, folder = FULL_DISK_CASES[stage]
    with full_disk(study / folder, scratch, monkeypatch):
        before = snapshot(study / folder)
        assert_one_line_error(cli(*args), "the disk is full", str(folder))
        assert snapshot(study / folder) == before  # earlier outputs intact, no temporary file left


# --------------------------------------------------------------------------- configurations that train on nothing


@pytest.mark.parametrize(
    "args, key",
    [
        (["train", "--alpha", ALPHA, "-S", "target.batch_size=1"], "target.batch_size"),
        (["train", "--role", "eval", "-S", "eval_model.batch_size=1"], "eval_model.batch_size"),
        (["study", "-S", "metrics.student.batch_size=1"], "metrics.student.batch_size"),
    ],
    ids=["target", "eval-model", "student"],
)
def test_batch_size_that_would_take_no_step(study: Path, args: list[str], key: str) -> None:
    before = snapshot(study / "out")
    assert_one_line_error(cli(*args), key, f"--set {key}=1")
    assert snapshot(study / "out") == before


def test_training_steps_are_counted_before_training() -> None:
    assert steps_per_epoch(8, 17) == 2  # 8 + 8 + a dropped single image
    assert steps_per_epoch(64, 5) == 1  # one batch of all 5
    assert steps_per_epoch(4, 6, world=2) == 1  # 4 rows = 2 per process; the last 2 would be 1 per process
    with pytest.raises(LsmiaError, match="no step"):
        require_training_steps(4, 3, world=2)
    with pytest.raises(LsmiaError, match="no step"):
        require_training_steps(8, 1)


# --------------------------------------------------------------------------- data the study cannot use


def one_class_data() -> FaceData:
    images = torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8)
    return FaceData(
        train=ImageSet(images[:3], torch.zeros(3)), test=ImageSet(images[3:], torch.zeros(1)), class_names=["only"]
    )


def data_with_an_untested_class() -> FaceData:
    images = torch.randint(0, 255, (6, 3, 16, 16), dtype=torch.uint8)
    return FaceData(
        train=ImageSet(images[:4], torch.tensor([0, 0, 1, 1])),
        test=ImageSet(images[4:], torch.zeros(2)),
        class_names=["a", "b"],
    )


def test_image_folder_with_a_single_identity(study: Path) -> None:
    from PIL import Image

    person = study / "faces" / "someone"
    person.mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (20, 20), (40 * i, 90, 160)).save(person / f"{i}.png")
    before = snapshot(study / "out")
    assert_one_line_error(
        cli("data", "-S", "data.source=imagefolder", "-S", "data.root=faces"), "faces", "1 identity", "at least 2"
    )
    assert snapshot(study / "out") == before


@pytest.mark.parametrize(
    "make, needles",
    [
        (one_class_data, ["holds 1 identity", "at least 2"]),
        (data_with_an_untested_class, ["identity 'b' has no test images"]),
    ],
    ids=["one-identity", "identity-without-test-images"],
)
def test_prepared_data_the_study_cannot_use(study: Path, make, needles: list[str]) -> None:
    make().save(study / "small.pt")
    before = snapshot(study / "out")
    assert_one_line_error(
        cli("train", "--alpha", ALPHA, "--data", "small.pt", "--out-dir", "one"), "small.pt", *needles
    )
    assert not (study / "one").exists()
    assert snapshot(study / "out") == before


@pytest.mark.parametrize(
    "value, needle",
    [
        ("[]", "list at least one alpha"),
        ("[0.1, 0.0, 0.1]", "alpha 0.1 is listed twice"),
        ("[0.1, 1.5]", "alpha must be a finite number <= 1"),
    ],
    ids=["empty", "duplicate", "out-of-range"],
)
def test_study_alphas_are_validated_with_the_config(study: Path, value: str, needle: str) -> None:
    before = snapshot(study / "out")
    assert_one_line_error(cli("study", "-S", f"study.alphas={value}"), "study.alphas", needle)
    assert snapshot(study / "out") == before


def test_duplicate_study_seeds(study: Path) -> None:
    Path("params.yaml").write_text(Path("params.yaml").read_text().replace("seeds: [0]", "seeds: [0, 0]"))
    assert_one_line_error(cli("study"), "study.seeds", "in params.yaml", "seed 0 is listed twice")


# --------------------------------------------------------------------------- one writer per output


def hold_lock(target: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(target)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_second_writer_gets_a_one_line_error_naming_the_holder(study: Path) -> None:
    shared = Path("shared")
    shutil.copytree(TARGET_DIR, shared)  # the first run's result, written with --out-dir shared
    before = snapshot(study)
    holder = hold_lock(shared)
    try:
        result = cli("train", "--alpha", "-0.05", "--out-dir", str(shared))
        assert_one_line_error(
            result, "shared is being written by another lsmia process", f"pid {holder.pid}", "-c shared"
        )
        assert snapshot(study) == before
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_killed_writer_blocks_no_one(study: Path) -> None:
    holder = hold_lock(TARGET_DIR)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (study / "out/models" / f".target_{TAG}.lsmia.lock").exists()  # left behind, but no longer held
    result = cli("train", "--alpha", ALPHA)
    assert result.exit_code == 0, result.output
    assert not (study / "out/models" / f".target_{TAG}.lsmia.lock").exists()


# --------------------------------------------------------------------------- permissions and sources of values


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_keep_the_umask_permissions(study: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        result = cli("data")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    for name in ("dataset.pt", "summary.json"):
        assert stat.S_IMODE((study / "out/data" / name).stat().st_mode) == mode, name


@pytest.mark.parametrize(
    "args, alpha_in_file, needles, absent",
    [
        (["train", "--alpha", "1.5"], False, ["from the --alpha flag", "got 1.5"], ["params.yaml"]),
        (
            ["train", "-S", "target.smoothing.alpha=1.5"],
            False,
            ["from --set target.smoothing.alpha=1.5"],
            ["params.yaml"],
        ),
        (["train", "--role", "eval"], True, ["in params.yaml", "got 1.5"], ["flag", "--set"]),
    ],
    ids=["alpha-flag", "set-option", "params-file"],
)
def test_bad_value_names_its_source(
    study: Path, args: list[str], alpha_in_file: bool, needles: list[str], absent: list[str]
) -> None:
    if alpha_in_file:
        params = yaml.safe_load(Path("params.yaml").read_text())
        params["target"]["smoothing"]["alpha"] = 1.5
        Path("params.yaml").write_text(yaml.safe_dump(params))
    before = snapshot(study / "out")
    assert_one_line_error(cli(*args), "target.smoothing.alpha", *needles, absent=tuple(absent))
    assert snapshot(study / "out") == before


# --------------------------------------------------------------------------- MLflow runs of killed stages


@pytest.fixture
def mlflow_store(study: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{study / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    return uri


def train_runs(uri: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("lsmia")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], "tags.stage = 'train' and tags.role = 'target'")


def start_killed_training(study: Path, args: list[str], env: dict[str, str], how: int = signal.SIGKILL) -> None:
    """Run ``lsmia train`` with tracking and kill it (``how``) as soon as its first checkpoint is written."""
    checkpoint = study / "out/models/target_alpha-0.05_seed0/checkpoint.pt"
    command = [sys.executable, "-c", "from lsmia.cli import main; main()", *args]
    kill_once_written(command, study, env, checkpoint, how, 120)


@pytest.mark.slow
@pytest.mark.parametrize(("how", "left"), [(signal.SIGKILL, "RUNNING"), (signal.SIGINT, "KILLED")])
def test_killed_training_continues_its_mlflow_run(study: Path, mlflow_store: str, how: int, left: str) -> None:
    """A SIGKILL leaves the run RUNNING, Ctrl-C ends it KILLED: either way the resumed stage continues it."""
    from mlflow import MlflowClient

    args = ["train", "--alpha", "-0.05", "--track", "-S", "target.epochs=20"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]),
        "OMP_NUM_THREADS": "1",
    }
    start_killed_training(study, args, env, how)
    (orphan,) = train_runs(mlflow_store)
    assert orphan.info.status == left
    assert (study / "out/models/target_alpha-0.05_seed0/.mlflow-run.json").exists()
    result = cli(*args)
    assert result.exit_code == 0, result.output
    (run,) = train_runs(mlflow_store)  # the same run, continued: no second run
    assert run.info.run_id == orphan.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags.get("lsmia.resumed") == "true"
    steps = {m.step for m in MlflowClient(mlflow_store).get_metric_history(run.info.run_id, "loss")}
    assert steps == set(range(20))  # every epoch, before and after the kill
    assert not (study / "out/models/target_alpha-0.05_seed0/.mlflow-run.json").exists()


@pytest.mark.slow
def test_orphan_run_that_cannot_be_continued_is_failed_and_linked(study: Path, mlflow_store: str) -> None:
    from mlflow import MlflowClient

    from lsmia.tracking.client import remember_run

    client = MlflowClient(mlflow_store)
    experiment_id = client.create_experiment("lsmia")
    orphan = client.create_run(experiment_id, tags={"stage": "attack"}, run_name="killed attack")
    remember_run(study / ATTACK_DIR / ".mlflow-run.json", orphan.info.run_id, {"another": "config"})
    result = cli("attack", "--alpha", ALPHA, "--track")
    assert result.exit_code == 0, result.output
    assert client.get_run(orphan.info.run_id).info.status == "FAILED"
    runs = client.search_runs([experiment_id], f"tags.`lsmia.link.interrupted_run` = '{orphan.info.run_id}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert not (study / ATTACK_DIR / ".mlflow-run.json").exists()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://lsmia:s3cret@db:5432/optuna", "postgresql://lsmia:***@db:5432/optuna"),
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),  # a password-only Redis URL
        ("postgresql://lsmia:p@ss@word@db/optuna", "postgresql://lsmia:***@db/optuna"),  # '@' inside the password
        ("https://ghp_TOKEN@example.org/repo", "https://***@example.org/repo"),  # a token as the user name
        ("sqlite:////tmp/optuna.db", "sqlite:////tmp/optuna.db"),  # nothing to hide
    ],
)
def test_credentials_are_masked_in_every_url(url: str, shown: str) -> None:
    from lsmia.experiments.sweep import redact as redact_storage
    from lsmia.infra.redaction import redact, redact_tree

    assert redact(url) == shown and redact_storage(url) == shown
    assert redact_tree({"sweep": {"storage": url, "n": 3}, "l": [url]}) == {
        "sweep": {"storage": shown, "n": 3},
        "l": [shown],
    }
    assert "s3cret" not in redact(f"could not reach {url} twice") and "ss@word" not in redact(url)


def test_paths_the_system_refuses_are_one_line_errors(tmp_path: Path) -> None:
    too_long = tmp_path / ("a" * 300) / "dataset.pt"
    assert_one_line_error(cli("data", "--out", str(too_long)), "the path is too long", "use a shorter path")
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    looped = assert_one_line_error(cli("data", "--out", str(tmp_path / "loop_a" / "dataset.pt")))
    assert "loop_a" in looped
    assert_one_line_error(cli("data", "--out", "/proc/lsmia-test/dataset.pt"), "/proc/lsmia-test", "another path")


@pytest.mark.parametrize(
    "held", ["out", "out/models/target_alpha0.1_seed0"], ids=["study-holds-out", "train-holds-target"]
)
def test_nested_writers_exclude_each_other(study: Path, held: str) -> None:
    """`lsmia study` (locks out/) and `lsmia train` (locks out/models/target_...) once both wrote the same
    target folder: a model from one config and metrics from the other, both exit 0."""
    before = snapshot(study)
    holder = hold_lock(Path(held))
    try:
        if held == "out":  # a study runs: a training into its tree must wait
            result = cli("train", "--alpha", ALPHA)
            assert_one_line_error(result, f"{TARGET_DIR} is inside", "which another lsmia process is writing")
        else:  # a training runs: a study over the whole tree must wait
            result = cli("study")
            assert_one_line_error(result, f"{TARGET_DIR} inside out is being written", f"pid {holder.pid}")
        assert snapshot(study) == before
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize(
    "damage",
    ["truncated", "empty", "a list", "a tensor"],
)
def test_a_damaged_data_file_is_the_stage_s_one_line_error_with_tracking_on(
    study: Path, mlflow_store: str, damage: str
) -> None:
    """The tracker once read the data file (mmap) before the stage's checked loader: a traceback, tracking on."""
    import torch as _torch

    data = study / "out/data/dataset.pt"
    if damage == "truncated":
        data.write_bytes(data.read_bytes()[:1000])
    elif damage == "empty":
        data.write_bytes(b"")
    else:
        _torch.save([1, 2, 3] if damage == "a list" else _torch.zeros(3), data)
    result = cli("train", "--alpha", ALPHA, "--track", "-S", "target.epochs=1")
    assert_one_line_error(result, "dataset.pt")


def test_a_pipe_or_a_device_as_params_file_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "params.fifo"
    os.mkfifo(fifo)
    assert_one_line_error(cli("config", "--params", str(fifo)), "not a regular file")  # it once waited forever
    assert_one_line_error(cli("config", "--params", "/dev/zero"), "not a regular file")  # and ate memory


@pytest.mark.parametrize("name", [".", ".."])
def test_a_study_name_may_not_write_into_out_itself(tmp_path: Path, name: str) -> None:
    result = cli("sweep", "--params", str(TINY), "--study-name", name, "-S", f"run.out_dir={tmp_path / 'out'}")
    assert_one_line_error(result, f"--study-name (sweep.study_name) '{name}' is not a folder name")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
