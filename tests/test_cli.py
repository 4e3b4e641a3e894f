"""The command line: one-line errors with exit code 2, and nothing of an earlier run overwritten."""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner, Result

from lsmia.cli import app
from tests.helpers.cli import invoke_in

runner = CliRunner()


def invoke(*args: str, cwd: Path) -> Result:
    return invoke_in(cwd, *args)


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0]


def test_alpha_out_of_range(tmp_path):
    assert_one_line_error(invoke("train", "--alpha", "1.5", cwd=tmp_path), "alpha")


def test_unknown_config_key(tmp_path):
    (tmp_path / "params.yaml").write_text("target:\n  epochz: 3\n")
    assert_one_line_error(invoke("train", cwd=tmp_path), "target.epochz")


def test_missing_data_file(tmp_path):
    assert_one_line_error(invoke("train", "--role", "eval", cwd=tmp_path), "does not exist", "lsmia data")


def test_unknown_architecture_and_role(tmp_path):
    assert_one_line_error(invoke("train", "--role", "judge", cwd=tmp_path), "--role")


def test_cuda_requested_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert_one_line_error(invoke("train", "--device", "cuda", cwd=tmp_path), "cuda")


def test_config_prints_the_resolved_config(tmp_path):
    result = invoke("config", "-S", "attack.steps=5", cwd=tmp_path)
    assert result.exit_code == 0 and "steps: 5" in result.output


def test_report_with_a_missing_ablation_file(tmp_path):
    result = invoke("report", "--no-track", "--ablation", "out/ablations/nothing/results.md", cwd=tmp_path)
    assert_one_line_error(result, "out/ablations/nothing/results.md", "lsmia ablate")


def test_ablate_with_a_missing_plan(tmp_path):
    assert_one_line_error(invoke("ablate", "plan.yaml", "--no-track", cwd=tmp_path), "plan.yaml", "does not exist")


@pytest.mark.parametrize(
    "flag, needle",
    [
        (["-S", "attack.steps=abc"], "from --set attack.steps=abc"),
        (["-S", "study.alphas=[0.1, 0.0"], "the value of --set study.alphas=[0.1, 0.0 is not valid YAML"),
        (["-S", "attack.steps.x=1"], "from --set attack.steps.x=1"),
        (["-S", "run.tracking=maybe"], "from --set run.tracking=maybe"),
    ],
)
def test_a_bad_set_value_names_the_flag_it_came_from(tmp_path, flag, needle):
    (tmp_path / "params.yaml").write_text("attack: {steps: 5}\n")
    result = invoke("config", *flag, cwd=tmp_path)
    assert_one_line_error(result, needle)
    assert "params.yaml" not in result.output  # the file holds no bad value


@pytest.mark.parametrize(
    "flag, value, needle",
    [
        ("--n-trials", "0", "'sweep.n_trials' from the --n-trials flag"),
        ("--study-name", "a b", "'sweep.study_name' from the --study-name flag"),
        ("--n-workers", "0", "'sweep.n_workers' from the --n-workers flag"),
    ],
)
def test_a_bad_sweep_flag_is_named(tmp_path, flag, value, needle):
    assert_one_line_error(invoke("sweep", flag, value, cwd=tmp_path), needle)


def test_on_off_flags_show_no_value_in_help(tmp_path):
    for command, flags in (("sweep", ("--worker", "--track")), ("train", ("--track",)), ("dvc-yaml", ("--check",))):
        lines = invoke(command, "--help", cwd=tmp_path).output.splitlines()
        for flag in flags:
            (line,) = [line for line in lines if line.startswith(f"│ {flag} ")]
            assert "<bool>" not in line, line  # `--worker true` fails: the help must not suggest a value


def test_train_prior_with_an_exported_generator_records_it_for_the_dvc_graph(tmp_path):
    import json

    (tmp_path / "generator.pt").write_bytes(b"scripted")
    result = invoke(
        "train-prior", "--no-track", "-S", "prior.kind=torchscript", "-S", "prior.path=generator.pt", cwd=tmp_path
    )
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "prior" / "prior.json").read_text())
    assert record["kind"] == "torchscript" and record["path"] == "generator.pt" and len(record["sha256"]) == 64
    missing = invoke(
        "train-prior", "--no-track", "-S", "prior.kind=torchscript", "-S", "prior.path=none.pt", cwd=tmp_path
    )
    assert_one_line_error(missing, "prior.path (none.pt) is not a file")


def test_config_out_writes_atomically_and_needs_no_device(tmp_path, monkeypatch):
    """The README's FaceScrub recipe once emptied params.yaml: `> params.yaml` truncated it before the device
    check failed. --out writes only a complete config, and printing one never asks for the device."""
    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text("attack: {steps: 5}\n")
    before = params.read_bytes()
    gpu = tmp_path / "gpu.yaml"
    gpu.write_text("run: {device: cuda}\nattack: {steps: 7}\n")
    printed = runner.invoke(app, ["config", "--params", str(gpu)])
    assert printed.exit_code == 0 and "device: cuda" in printed.output  # no GPU here, and none needed to print
    failed = runner.invoke(app, ["config", "--params", str(tmp_path / "missing.yaml"), "--out", str(params)])
    assert failed.exit_code == 2 and params.read_bytes() == before  # an error leaves the file as it was
    written = runner.invoke(app, ["config", "--params", str(gpu), "--out", str(params)])
    assert written.exit_code == 0, written.output
    assert yaml.safe_load(params.read_text())["attack"]["steps"] == 7
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") or "tmp" in p.name] == []


def test_version():
    from lsmia import __version__

    out = runner.invoke(app, ["--version"])
    assert out.exit_code == 0 and out.output == f"lsmia {__version__}\n"


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["train", "--seed", "abc"], ["'--seed'", "integer", "(see 'lsmia train --help')"]),
        (["trian"], ["No such command 'trian'", "Did you mean 'train'", "(see 'lsmia --help')"]),
        (["train", "--role", "judge"], ["'--role'", "'judge' is not one of 'target', 'eval'"]),
        (["train", "--device", "gpu"], ["'--device'", "'gpu' is not one of 'auto', 'cpu', 'cuda'"]),
        (["train", "--data"], ["Option '--data' requires an argument"]),
    ],
)
def test_usage_errors_are_one_line_too(tmp_path, args: list[str], needles: list[str]) -> None:
    assert_one_line_error(invoke(*args, cwd=tmp_path), *needles)


def test_help_shows_choices_and_readable_metavars(tmp_path) -> None:
    text = invoke("train", "--help", cwd=tmp_path).output
    assert "<target|eval>" in text and "<auto|cpu|cuda>" in text and "KEY=VALUE" in text
    assert "<bool>" not in text and "<list[str]>" not in text


def test_a_device_choice_reaches_the_config_as_plain_text(tmp_path) -> None:
    from lsmia.cli.common import Device, resolve

    cfg = resolve(tmp_path / "params.yaml", None, device=Device.cpu, runs=False)
    assert cfg.run.device == "cpu" and type(cfg.run.device) is str  # no enum leaks into YAML or MLflow params


def test_help_lists_the_commands_in_three_groups(tmp_path) -> None:
    panels: dict[str, list[str]] = {}
    for line in invoke("--help", cwd=tmp_path).output.splitlines():
        if line.startswith("╭─ "):
            names = panels.setdefault(line.removeprefix("╭─ ").split(" ─")[0], [])
        elif line.startswith("│ ") and not line.startswith("│  ") and panels:
            names.append(line.split()[1])  # a command's name opens its row; its help's continued lines are indented
    assert list(panels) == ["Options", "Stages", "Experiments", "Project and services"]
    assert panels["Stages"][:2] == ["stage", "data"] and "merge-attack" in panels["Stages"]
    assert {"study", "ablate", "sweep", "compare-defenses", "toy", "repro"} <= set(panels["Experiments"])
    assert panels["Project and services"] == ["config", "dvc-yaml", "server", "pull-shared"]
    rows = [row for panel in panels.values() for row in panel]
    assert len(rows) == len(set(rows)) == 2 + 22  # --version, --help and every command, each once


def test_the_command_line_imports_no_torch() -> None:
    """`lsmia --help` and `--version` stay fast: the commands import the science only when they run."""
    import subprocess
    import sys

    code = "import sys, lsmia.cli; assert not [m for m in sys.modules if m.split('.')[0] == 'torch'], 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
