"""The study's stages as library functions: config in, files and results out, no tracking.

config -> data -> models (prior, eval model, targets) -> attack -> metrics. The CLI, DVC and
sweeps call these; the tracking layer wraps them through ``on_epoch`` callbacks and results.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from lsmia import distributed
from lsmia.attack.result import AttackResult
from lsmia.config import Config, build_config
from lsmia.data.base import FaceData
from lsmia.errors import LsmiaError
from lsmia.models.classifiers import Classifier, load_classifier
from lsmia.paths import StudyPaths
from lsmia.training.classifier import TrainResult, train_classifier
from lsmia.utils import load_json, save_json, seed_everything
from lsmia.visualize import save_attack_grid

EpochCallback = Callable[[int, dict[str, float]], None]


def prepare_data(cfg: Config) -> FaceData:
    """Render the built-in identities or load a real data set, as configured."""
    if cfg.data.source == "builtin":
        from lsmia.data.synthetic import render_builtin

        return render_builtin(cfg.data)
    from lsmia.data.real import load_real

    return load_real(cfg.data)


def data_summary(data: FaceData) -> dict[str, Any]:
    return {"num_classes": data.num_classes, "image_size": data.image_size, "train_images": len(data.train),
            "test_images": len(data.test), "public_images": len(data.public) if data.public is not None else 0,
            "attributes": sorted(data.attributes) if data.attributes else [], "source": data.meta.get("source", "")}


def stage_data(cfg: Config, out_file: Path, summary_file: Path | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    data = prepare_data(cfg)
    data.save(out_file)
    summary = {**data_summary(data), "seconds": time.perf_counter() - started}
    save_json(summary, summary_file or out_file.with_name("summary.json"))
    return summary


def stage_prior(cfg: Config, data_file: Path, out_dir: Path, device: torch.device,
                on_epoch: EpochCallback | None = None):
    from lsmia.training.prior import train_prior

    data = FaceData.load(data_file)
    if data.public is None or len(data.public) == 0:
        raise LsmiaError("the prepared data has no public images for the prior: set data.public_root "
                         "or use prior.kind=torchscript with prior.path")
    return train_prior(cfg.prior, data.public, out_dir, device, seed=cfg.run.seed, on_epoch=on_epoch)


def with_alpha(cfg: Config, alpha: float) -> Config:
    """The same config with another smoothing factor (validated like any config value)."""
    return build_config(cfg.to_dict(), {"target.smoothing.alpha": alpha})


def stage_train(cfg: Config, role: str, data_file: Path, out_dir: Path, device: torch.device,
                seed: int | None = None, on_epoch: EpochCallback | None = None) -> TrainResult:
    """Train the target (label smoothing ``cfg.target.smoothing``) or the evaluation model (hard labels)."""
    data = FaceData.load(data_file)
    seed = cfg.run.seed if seed is None else seed
    if role == "target":
        return train_classifier(cfg.target, data, out_dir, device, seed=seed, smoothing=cfg.target.smoothing,
                                on_epoch=on_epoch)
    if role == "eval":
        return train_classifier(cfg.eval_model, data, out_dir, device, seed=seed + 1000, on_epoch=on_epoch)
    raise LsmiaError(f"unknown role '{role}': use --role target or --role eval")


def load_target(path: Path, data: FaceData, what: str = "target model") -> Classifier:
    return load_classifier(path, num_classes=data.num_classes, what=what)


def stage_attack(cfg: Config, data_file: Path, target_file: Path, prior_file: Path | None, out_dir: Path,
                 device: torch.device, seed: int = 0) -> AttackResult:
    """Invert the target; ``seed`` (the study seed) offsets ``attack.seed`` so replicates are independent."""
    from lsmia.attack.ppa import resolve_targets, run_attack
    from lsmia.models.generator import load_prior

    data = FaceData.load(data_file)
    targets = resolve_targets(cfg.attack.targets, data.num_classes)
    target = load_target(target_file, data).to(device)
    prior = load_prior(cfg.prior, prior_file).to(device)
    attack_cfg = cfg.attack.model_copy(update={"seed": cfg.attack.seed + seed})
    seed_everything(attack_cfg.seed)
    result = run_attack(attack_cfg, target, prior, targets, device)
    if distributed.is_main():  # under torchrun every rank holds the whole result; rank 0 writes it
        result.save(out_dir / "attack.pt")
        save_attack_grid(data, result, out_dir / "reconstructions.png")
    distributed.barrier()
    return result


def stage_attribute_predictor(cfg: Config, data_file: Path, out_file: Path, device: torch.device) -> bool:
    """Train the attribute predictor on the public identities (built-in data only); False when not applicable."""
    from lsmia.metrics.attributes import save_attribute_predictor, train_attribute_predictor

    data = FaceData.load(data_file)
    if not data.public_attributes:
        return False
    predictor = train_attribute_predictor(data, device, epochs=cfg.metrics.attribute_epochs, seed=cfg.run.seed)
    save_attribute_predictor(predictor, out_file)
    return True


def stage_evaluate(cfg: Config, data_file: Path, attack_file: Path, eval_file: Path, target_dir: Path,
                   out_file: Path, device: torch.device, alpha: float, seed: int,
                   attribute_file: Path | None = None) -> dict[str, Any]:
    """Leakage metrics of one attack, merged with its target's accuracy and calibration."""
    from lsmia.metrics.attributes import load_attribute_predictor
    from lsmia.metrics.evaluate import evaluate_attack

    data = FaceData.load(data_file)
    result = AttackResult.load(attack_file)
    eval_model = load_classifier(eval_file, num_classes=data.num_classes, what="evaluation model").to(device)
    predictor = None
    if attribute_file is not None and attribute_file.exists():
        predictor = load_attribute_predictor(attribute_file).to(device)
    started = time.perf_counter()
    leakage = evaluate_attack(cfg.metrics, result, eval_model, data, device, seed=seed, attribute_predictor=predictor)
    target_metrics = load_json(target_dir / "metrics.json", what="target metrics")
    metrics = {"alpha": alpha, "seed": seed, **{k: v for k, v in target_metrics.items()}, **leakage,
               "evaluate_seconds": time.perf_counter() - started}
    save_json(metrics, out_file)
    return metrics


@dataclass
class StudyResult:
    metrics: list[dict[str, Any]]
    seconds: dict[str, float]


class QuietStage:
    """The stage observer used without tracking: every hook is a no-op."""

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None: ...
    def epoch_logger(self) -> EpochCallback | None: return None
    def log_prior(self, result: Any) -> None: ...
    def log_classifier(self, result: Any, role: str, alpha: float, seed: int) -> None: ...
    def log_attack(self, result: Any, out_dir: Path, alpha: float, seed: int) -> None: ...
    def log_report(self, report_dir: Path) -> None: ...


@contextmanager
def quiet_stage(cfg: Config, stage: str, run_name: str, **tags: Any) -> Iterator[QuietStage]:
    yield QuietStage()


@contextmanager
def launched_stage(cfg: Config, device: torch.device, observe: Callable[..., Any], stage: str, run_name: str,
                   **tags: Any) -> Iterator[tuple[Any, torch.device]]:
    """A stage alone or under torchrun: (observer, this rank's device).

    Under torchrun the process group lives for the block (nccl for CUDA, gloo for the CPU),
    ``observe`` (e.g. MLflow tracking) runs on rank 0 only and the other ranks get ``quiet_stage``.
    Alone it is ``observe`` with ``device``.
    """
    with distributed.process_group(use_cuda=device.type == "cuda"):
        observer = observe if distributed.is_main() else quiet_stage
        with observer(cfg, stage, run_name, **tags) as obs:
            yield obs, distributed.rank_device(device)


def run_study(cfg: Config, device: torch.device, log: Callable[[str], None] = print,
              observe: Callable[..., Any] = quiet_stage) -> StudyResult:
    """The whole study in one process: data, prior, eval model, then per (alpha, seed) train, attack, evaluate.

    ``observe(cfg, stage, run_name, role=, alpha=, seed=, system_metrics=)`` is a context manager yielding a
    stage observer (lsmia.tracked.tracked_stage logs to MLflow; the default does nothing).
    """
    paths = StudyPaths(cfg.run.out_dir)
    seconds: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        out = fn()
        seconds[name] = time.perf_counter() - started
        log(f"{name}: {seconds[name]:.1f} s")
        return out

    def data_stage() -> None:
        with observe(cfg, "data", "data") as obs:
            obs.log_metrics(stage_data(cfg, paths.data_file, paths.data_summary))

    def prior_stage() -> None:
        with observe(cfg, "prior", "prior", role="prior", system_metrics=True) as obs:
            obs.log_prior(stage_prior(cfg, paths.data_file, paths.prior_dir, device, on_epoch=obs.epoch_logger()))

    def train_stage(run_cfg: Config, role: str, out_dir: Path, alpha: float, seed: int) -> None:
        with observe(run_cfg, "train", f"train-{role}", role=role, alpha=alpha if role == "target" else None,
                     seed=seed, system_metrics=True) as obs:
            result = stage_train(run_cfg, role, paths.data_file, out_dir, device, seed, on_epoch=obs.epoch_logger())
            obs.log_classifier(result, role, alpha, seed)

    def attack_stage(run_cfg: Config, alpha: float, seed: int) -> None:
        out_dir = paths.attack_dir(alpha, seed)
        with observe(run_cfg, "attack", "attack", role="target", alpha=alpha, seed=seed, system_metrics=True) as obs:
            result = stage_attack(run_cfg, paths.data_file, paths.target_dir(alpha, seed) / "model.pt", prior_file,
                                  out_dir, device, seed)
            obs.log_attack(result, out_dir, alpha, seed)

    def evaluate_stage(run_cfg: Config, alpha: float, seed: int) -> dict[str, Any]:
        with observe(run_cfg, "evaluate", "evaluate", role="target", alpha=alpha, seed=seed) as obs:
            metrics = stage_evaluate(run_cfg, paths.data_file, paths.attack_dir(alpha, seed) / "attack.pt",
                                     paths.eval_dir / "model.pt", paths.target_dir(alpha, seed),
                                     paths.metrics_file(alpha, seed), device, alpha, seed, attribute_file)
            obs.log_metrics(metrics)
        return metrics

    def attribute_stage() -> None:
        with observe(cfg, "attributes", "train-attributes", role="attributes"):
            stage_attribute_predictor(cfg, paths.data_file, attribute_file, device)

    def report_stage() -> None:
        from lsmia.report import write_plot_data, write_report

        with observe(cfg, "report", "report", role="report") as obs:
            index = write_report(paths, paths.report_dir, device)
            write_plot_data(paths, paths.root / "plots")
            obs.log_report(index.parent)

    prior_file = paths.prior_dir / "prior.pt" if cfg.prior.kind == "dcgan" else None
    attribute_file = paths.attribute_dir / "predictor.pt"
    timed("data", data_stage)
    if prior_file is not None:
        timed("prior", prior_stage)
    timed("eval_model", lambda: train_stage(cfg, "eval", paths.eval_dir, 0.0, cfg.run.seed))
    timed("attribute_predictor", attribute_stage)
    results = []
    for seed in cfg.study.seeds:
        for alpha in cfg.study.alphas:
            tag = f"alpha={alpha} seed={seed}"
            alpha_cfg = with_alpha(cfg, alpha)
            timed(f"train {tag}", lambda: train_stage(alpha_cfg, "target", paths.target_dir(alpha, seed), alpha, seed))
            timed(f"attack {tag}", lambda: attack_stage(alpha_cfg, alpha, seed))
            results.append(timed(f"evaluate {tag}", lambda: evaluate_stage(alpha_cfg, alpha, seed)))
    timed("report", report_stage)
    return StudyResult(results, seconds)
