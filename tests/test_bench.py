"""Smoke tests of the speed benchmarks under bench/: each runs its --quick version and prints its ratio line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lsmia.utils import save_timings
from tests.helpers.paths import ROOT

BENCH = ROOT / "bench"
RATIO_LINE = re.compile(
    r"^RATIO (?P<name>[\w.-]+): (?P<ratio>\d+\.\d\d)x "
    r"\(.+ (?P<slow>\d+\.\d+) s / .+ (?P<fast>\d+\.\d+) s",
    re.MULTILINE,
)

sys.path.insert(0, str(BENCH))
import benchutil  # noqa: E402  (bench/ is a folder of scripts, not a package)


def run_script(name: str, *args: str, timeout: int = 120) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCH / name), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def last_ratio(stdout: str, name: str) -> float:
    """The script's final line is its ratio line, and the ratio matches the raw seconds it prints."""
    assert stdout.strip().splitlines()[-1].startswith(f"RATIO {name}: ")
    match = list(RATIO_LINE.finditer(stdout))[-1]
    ratio, slow, fast = float(match["ratio"]), float(match["slow"]), float(match["fast"])
    assert fast > 0 and ratio == pytest.approx(slow / fast, rel=0.02, abs=0.01)
    return ratio


def test_attack_benchmark_times_both_schedules_and_phases() -> None:
    stdout = run_script("attack_batched_vs_per_class.py", "--quick", "--threads", "1")
    assert f"torch {torch.__version__}" in stdout and "threads 1" in stdout and "device cpu" in stdout
    for row in ("batched", "per_class", "ppa_style"):
        assert re.search(rf"^{row}\s+(\d+\.\d+\s+){{3}}\d+\.\d+$", stdout, re.MULTILINE), stdout
    assert "phase ratio optimisation" in stdout
    schedule_only = [m for m in RATIO_LINE.finditer(stdout) if m["name"] == "attack_batched_vs_per_class"]
    assert len(schedule_only) == 1 and float(schedule_only[0]["ratio"]) > 0
    assert last_ratio(stdout, "attack_lsmia_vs_ppa_style") > 0


@pytest.mark.slow  # 10 s
def test_training_benchmark_compares_three_loops_and_attributes_extras() -> None:
    stdout = run_script("training_overhead.py", "--quick", "--threads", "1")
    for row in ("bare", "lsmia_epochs", "train_classifier"):
        assert re.search(rf"^{row}\s+\d+\.\d+$", stdout, re.MULTILINE), stdout
    assert "per-epoch checkpoint" in stdout and "final metrics" in stdout
    assert last_ratio(stdout, "training_overhead") > 0


@pytest.mark.slow  # 40 s
def test_threads_benchmark_trains_beside_a_competitor_with_both_settings() -> None:
    stdout = run_script("threads_under_load.py", "--quick", "--threads", "1")
    assert "default_all_cores_spinning:" in stdout and "auto_passive:" in stdout
    assert last_ratio(stdout, "threads_auto_vs_default_under_load") > 0


def test_gpu_benchmark_skips_cleanly_without_a_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: test_gpu_benchmark_runs_on_a_gpu covers it")
    stdout = run_script("gpu_speedups.py", "--quick")
    assert stdout.startswith("SKIP gpu_speedups: no CUDA device")


@pytest.mark.gpu
def test_gpu_benchmark_runs_on_a_gpu() -> None:
    stdout = run_script("gpu_speedups.py", "--quick", "--no-compile", timeout=300)
    assert last_ratio(stdout, "gpu_attack_step_best") > 0


def fake_run(out: Path) -> None:
    """The timing sidecars a finished study writes, with known seconds."""
    save_timings(out / "data" / "dataset.pt", {"data_s": 2.0})
    save_timings(out / "models" / "eval" / "model.pt", {"train_s": 3.0})
    save_timings(out / "models" / "target_alpha0.1_seed0" / "model.pt", {"train_s": 6.0})
    save_timings(out / "metrics" / "alpha0.1_seed0.json", {"evaluate_s": 1.0})
    save_timings(
        out / "attacks" / "alpha0.1_seed0" / "attack.pt",
        {"selection_s": 0.5, "optimisation_s": 1.0, "final_selection_s": 0.5},
    )


def test_study_stages_reads_the_timings_of_an_existing_run(tmp_path: Path) -> None:
    fake_run(tmp_path)
    stdout = run_script("study_stages.py", "--out", str(tmp_path))
    assert re.search(r"^target training\s+6\.00\s+42\.9%$", stdout, re.MULTILINE), stdout  # 6 of 14 s
    assert re.search(r"^attack optimisation\s+1\.00\s+7\.1%$", stdout, re.MULTILINE), stdout
    assert re.search(r"^total\s+14\.00\s+100\.0%$", stdout, re.MULTILINE), stdout
    assert last_ratio(stdout, "study_train_vs_attack") == pytest.approx(3.0)  # 6 s training / 2 s attack


def test_study_stages_without_timings_says_what_to_pass(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "study_stages.py"), "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "no stage timings under" in done.stderr


@pytest.mark.slow
def test_study_stages_quick_runs_the_tiny_study() -> None:
    stdout = run_script("study_stages.py", "--quick", "--threads", "1", timeout=300)
    assert "stage wall times logged by 'lsmia study'" in stdout and "attributes" in stdout and "toy" in stdout
    assert last_ratio(stdout, "study_train_vs_attack") > 0


@pytest.mark.slow
def test_several_machines_quick_measures_both_storages_and_both_stores() -> None:
    stdout = run_script("several_machines.py", "--quick", "--threads", "1", timeout=600)
    assert "| journal |" in stdout and "| postgresql |" in stdout and "| evaluate |" in stdout
    ratios = dict(re.findall(r"^RATIO (\S+): (\d+\.\d\d)x", stdout, re.MULTILINE))
    assert set(ratios) == {
        "sweep_postgresql_vs_journal_1w",
        "sweep_postgresql_vs_journal_2w",
        "tracking_http_vs_sqlite",
    }
    assert last_ratio(stdout, "tracking_http_vs_sqlite") > 0


def test_interleaved_alternates_cases_and_takes_medians() -> None:
    order: list[str] = []
    phase = iter([5.0, 1.0, 3.0])

    def case_a() -> benchutil.Timings:
        order.append("a")
        return {"phase_s": next(phase)}

    def case_b() -> None:
        order.append("b")

    runs = benchutil.interleaved({"a": case_a, "b": case_b}, repeats=3)
    assert order == ["a", "b", "a", "b", "a", "b"]
    assert benchutil.medians(runs["a"])["phase_s"] == 3.0
    assert set(runs["b"][0]) == {benchutil.TOTAL}


def ratio_lines(stdout: str) -> dict[str, re.Match[str]]:
    """Every ratio line by name, each checked against the raw seconds it prints."""
    found = {match["name"]: match for match in RATIO_LINE.finditer(stdout)}
    for match in found.values():
        slow, fast = float(match["slow"]), float(match["fast"])
        assert fast > 0 and float(match["ratio"]) == pytest.approx(slow / fast, rel=0.02, abs=0.01), match[0]
    return found


def test_roofline_quick_compares_the_real_loops_with_the_matmul_peak() -> None:
    stdout = run_script("roofline.py", "--quick", "--threads", "1")
    assert "threads 1" in stdout and "device cpu" in stdout
    peak = re.search(r"^peak 1t\s+(\d+\.\d) GFLOP/s$", stdout, re.MULTILINE)
    assert peak and float(peak[1]) > 0, stdout
    percent = {}
    for workload in ("training", "attack"):
        row = re.search(rf"^{workload}\s+1t" + r"\s+(\d+\.\d+)" * 6 + "%$", stdout, re.MULTILINE)
        assert row, stdout
        step, loop, seconds, achieved, peak_rate, percent[workload] = map(float, row.groups())
        assert step > 0 and loop == pytest.approx(step, rel=0.01)  # the counted step is the real loop's step
        assert achieved == pytest.approx(loop / seconds, rel=0.02, abs=0.01)
        assert peak_rate == pytest.approx(float(peak[1]), abs=0.1)
        assert percent[workload] == pytest.approx(100 * achieved / peak_rate, rel=0.02, abs=0.01)
    ratios = ratio_lines(stdout)
    assert set(ratios) == {"training_vs_peak_1t", "attack_vs_peak_1t"}
    for workload in ("training", "attack"):  # the ratio is the inverse of the fraction of peak
        assert float(ratios[f"{workload}_vs_peak_1t"]["ratio"]) == pytest.approx(100 / percent[workload], rel=0.03)
    assert last_ratio(stdout, "attack_vs_peak_1t") > 0


GPU_CHECK_ROWS = [
    (workload, variant)
    for workload in ("train_resnet152", "train_inception_v3", "attack_stylegan64")
    for variant in ("fp32_eager", "bf16+channels_last")
]


@pytest.mark.slow  # 20 s
def test_gpu_check_quick_runs_every_workload_at_toy_sizes_on_the_cpu() -> None:
    stdout = run_script("gpu_check.py", "--quick", "--device", "cpu", "--threads", "1", "--no-study")
    assert "no torch.compile" in stdout
    for workload, variant in [*GPU_CHECK_ROWS, ("attack_stylegan64", "run_attack_fp32")]:
        # batch, ms/step, images/s, peak MiB (none on the CPU), warm-up s, speed-up, status
        row = rf"^{workload}\s+{re.escape(variant)}\s+2\s+\d+\.\d{{3}}\s+\d+\.\d\s+-\s+\d+\.\d\s+\d+\.\d\dx  ok"
        assert re.search(row, stdout, re.MULTILINE), stdout
    assert "study (tests/tiny_params.yaml, --device cpu): skipped (--no-study)" in stdout
    expected = {f"{workload}_bf16_cl_vs_fp32" for workload, _ in GPU_CHECK_ROWS}
    assert set(ratio_lines(stdout)) == expected
    assert last_ratio(stdout, "attack_stylegan64_bf16_cl_vs_fp32") > 0


@pytest.mark.slow
def test_gpu_check_quick_runs_the_tiny_study_on_the_cpu() -> None:
    stdout = run_script("gpu_check.py", "--quick", "--device", "cpu", "--threads", "1", "--only", "attack", timeout=300)
    assert re.search(r"^study \(tests/tiny_params\.yaml, --device cpu\): ok in \d+\.\d s$", stdout, re.MULTILINE)
    assert last_ratio(stdout, "attack_stylegan64_bf16_cl_vs_fp32") > 0


@pytest.mark.slow  # 10-14 s: two scripts import torch and look for a device
def test_gpu_check_and_cuda_roofline_skip_cleanly_without_a_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: test_gpu_check_and_roofline_run_on_a_gpu covers it")
    assert run_script("gpu_check.py", "--quick").startswith("SKIP gpu_check: no CUDA device")
    assert run_script("roofline.py", "--quick", "--device", "cuda").startswith("SKIP roofline: no CUDA device")


@pytest.mark.gpu
def test_gpu_check_and_roofline_run_on_a_gpu() -> None:
    stdout = run_script("gpu_check.py", "--quick", "--no-study", timeout=300)
    assert re.search(r"^train_resnet152\s+fp32_eager\s+2\s+\d+\.\d{3}\s+\d+\.\d\s+\d+\.\d\s", stdout, re.MULTILINE)
    assert last_ratio(stdout, "attack_stylegan64_bf16_cl_vs_fp32") > 0
    stdout = run_script("roofline.py", "--quick", "--device", "cuda", timeout=300)
    assert set(ratio_lines(stdout)) == {
        f"{w}_vs_peak_{p}" for w in ("training", "attack") for p in ("fp32", "tf32", "bf16")
    }
