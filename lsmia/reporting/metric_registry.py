"""Every metric lsmia reports, one row each: its label, what a higher value means, where it is shown, its digits.

The report, the ablation and defense tables, the sweep's trial table, the MLflow headline metrics and the study's
console columns select their metrics from :data:`METRICS` (in its order) when they run: a new metric reaches each
of them by one row here. Imports nothing heavy (no torch, no mlflow), so any layer may read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

MORE_LEAKAGE = "more leakage"
LESS_LEAKAGE = "less leakage"


@dataclass(frozen=True)
class Metric:
    name: str  # the key in a metrics file
    label: str = ""  # in the report's tables and figure titles; empty: shown by its name, after the labelled ones
    higher: str = ""  # what a higher value means for privacy: MORE_LEAKAGE, LESS_LEAKAGE or nothing said
    column: str = ""  # its header in an ablation's summary table; empty: not a column there
    digits: int = 3  # decimals in the markdown tables
    headline: bool = False  # MLflow headline (copied to the attack run), the study's console, the sweep's trials
    trials: bool = False  # a column of the sweep's trial table besides the headline metrics
    summarised: bool = False  # kept per alpha (mean ± CI) in an ablation's results.json
    front: bool = False  # per attack in the defense comparison and a sweep's points.json
    dvc_summary: bool = False  # its mean per alpha in summary.json (dvc metrics show)


METRICS: tuple[Metric, ...] = (
    Metric("test_acc", "test accuracy", column="test acc", headline=True, summarised=True, dvc_summary=True),
    Metric("train_acc", "train accuracy"),
    Metric("ece", "expected calibration error", trials=True),
    Metric("mean_confidence", "mean max-softmax confidence (test)"),
    Metric("mean_logit_norm", "mean logit L2 norm (test)", summarised=True),
    Metric(
        "final_acc1",
        "attack acc@1 (final samples)",
        MORE_LEAKAGE,
        column="acc@1",
        headline=True,
        summarised=True,
        front=True,
        dvc_summary=True,
    ),
    Metric("final_acc5", "attack acc@5 (final samples)", MORE_LEAKAGE, headline=True, summarised=True),
    Metric("all_acc1", "attack acc@1 (all samples)", MORE_LEAKAGE, column="acc@1 all samples", summarised=True),
    Metric("all_acc5", "attack acc@5 (all samples)", MORE_LEAKAGE),
    Metric(
        "final_target_confidence",
        "target's confidence in its final samples",
        column="target's confidence",
        summarised=True,
    ),
    Metric("final_target_confidence_raw", "target's confidence in its final samples, no transforms", summarised=True),
    Metric("final_target_acceptance_raw", summarised=True, dvc_summary=True),
    Metric("grad_cosine_mean", "cosine of consecutive attack gradients", column="gradient cosine", summarised=True),
    Metric(
        "delta_eval",
        "δ_eval (eval-feature distance)",
        LESS_LEAKAGE,
        column="δ_eval",
        digits=1,
        headline=True,
        summarised=True,
        front=True,
        dvc_summary=True,
    ),
    Metric("delta_face", "δ_face (FaceNet distance, as PPA)", LESS_LEAKAGE, digits=1),
    Metric("fid_eval_features", "FID (eval-model features)", LESS_LEAKAGE, headline=True, summarised=True),
    Metric("fid_tf_inception", "FID (pytorch-fid's FID Inception, as published)", LESS_LEAKAGE),
    Metric("inception_fid", "FID (torchvision Inception, not comparable)", LESS_LEAKAGE),
    Metric("precision", "precision", MORE_LEAKAGE),
    Metric("recall", "recall", MORE_LEAKAGE),
    Metric("density", "density", MORE_LEAKAGE),
    Metric("coverage", "coverage", MORE_LEAKAGE),
    Metric("xi", "ξ knowledge extraction", MORE_LEAKAGE, column="ξ", headline=True, summarised=True, front=True),
    Metric("attribute_acc", "attribute accuracy of reconstructions", MORE_LEAKAGE, headline=True, summarised=True),
    Metric("attribute_chance", "attribute accuracy by chance (majority)"),
    Metric("attribute_acc_real", "attribute accuracy of real test images"),
    Metric("num_targets", "attacked identities"),
    Metric("num_final_samples", "final samples"),
    Metric("train_seconds", "training time [s]"),
    Metric("evaluate_seconds", "evaluation time [s]"),
)


def metric(name: str) -> Metric | None:
    """The row of ``name``; None for a metric the registry does not know."""
    return next((m for m in METRICS if m.name == name), None)


def select(where: Callable[[Metric], bool]) -> list[Metric]:
    """The metrics that ``where`` keeps, in the registry's order."""
    return [m for m in METRICS if where(m)]


def names(where: Callable[[Metric], bool]) -> tuple[str, ...]:
    return tuple(m.name for m in select(where))


def label(name: str) -> str:
    """The report's label of ``name``; the name itself for a metric without one."""
    found = metric(name)
    return found.label if found and found.label else name


def higher_means(name: str) -> str:
    found = metric(name)
    return found.higher if found else ""


def report_order() -> tuple[str, ...]:
    """The report's display order of the labelled metrics (the others follow by name)."""
    return names(lambda m: bool(m.label))


def headline() -> tuple[str, ...]:
    return names(lambda m: m.headline)


def trial_columns() -> tuple[str, ...]:
    """The sweep's trial table: the headline metrics and those kept for trials."""
    return names(lambda m: m.headline or m.trials)


def summarised() -> tuple[str, ...]:
    return names(lambda m: m.summarised)


def table_columns() -> list[Metric]:
    """The metric columns of an ablation's summary table."""
    return select(lambda m: bool(m.column))


def front() -> tuple[str, ...]:
    return names(lambda m: m.front)


def dvc_summary() -> tuple[str, ...]:
    return names(lambda m: m.dvc_summary)
