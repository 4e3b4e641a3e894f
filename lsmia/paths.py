"""Where every output lands: one place for the layout under ``run.out_dir``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lsmia.config import Config


Alpha = (
    float | str
)  # a smoothing factor, or a DVC template such as ``${item.alpha}`` (lsmia.experiments.graph renders dvc.yaml)
Seed = int | str


def run_tag(alpha: Alpha, seed: Seed) -> str:
    """A file-name tag per target model, e.g. ``alpha-0.05_seed0`` (str of the float, as DVC's matrix writes it);
    template strings pass through, so DVC's paths are these paths."""
    return f"alpha{alpha if isinstance(alpha, str) else float(alpha)}_seed{seed}"


@dataclass(frozen=True)
class StudyPaths:
    root: Path

    @property
    def data_file(self) -> Path:
        return self.root / "data" / "dataset.pt"

    @property
    def data_summary(self) -> Path:
        return self.root / "data" / "summary.json"

    @property
    def prior_dir(self) -> Path:
        return self.root / "prior"

    @property
    def eval_dir(self) -> Path:
        return self.root / "models" / "eval"

    @property
    def attribute_dir(self) -> Path:
        return self.root / "models" / "attributes"

    def target_dir(self, alpha: Alpha, seed: Seed) -> Path:
        return self.root / "models" / f"target_{run_tag(alpha, seed)}"

    def curves_dir(self, alpha: Alpha | None, seed: Seed | None) -> Path:
        """A classifier's per-epoch curves (DVCLive): the target's of (alpha, seed), or the evaluation model's."""
        leaf = "eval" if alpha is None or seed is None else f"target_{run_tag(alpha, seed)}"
        return self.root / "curves" / leaf

    def attack_dir(self, alpha: Alpha, seed: Seed) -> Path:
        return self.root / "attacks" / run_tag(alpha, seed)

    def attack_shard_dir(self, alpha: Alpha, seed: Seed, shard: str | int) -> Path:
        """One class shard of a cell's attack: beside, not inside, the merged attack (DVC outputs must not overlap);
        ``shard`` is its index (``--shard I/N``) or its classes (``--classes 0-9``)."""
        return self.root / "attack-shards" / run_tag(alpha, seed) / str(shard)

    def metrics_file(self, alpha: Alpha, seed: Seed) -> Path:
        return self.root / "metrics" / f"{run_tag(alpha, seed)}.json"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    @property
    def summary_file(self) -> Path:
        """The study's metrics per alpha over seeds (DVC's metrics file: a few columns in ``dvc exp show``)."""
        return self.root / "summary.json"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def plots_dir(self) -> Path:
        """DVC's plot data (the report stage writes it; the top-level plots of dvc.yaml draw it)."""
        return self.root / "plots"

    @property
    def toy_dir(self) -> Path:
        return self.root / "toy"

    @property
    def ablation_cache(self) -> Path:
        return self.root / "ablations" / "cache"

    def ablation_dir(self, name: str) -> Path:
        return self.root / "ablations" / _one_folder(name, "an ablation name")

    def sweep_dir(self, study_name: str) -> Path:
        return self.root / "sweep" / _one_folder(study_name, "--study-name (sweep.study_name)")


def _one_folder(name: str, what: str) -> str:
    """``name`` as one folder below its parent: '.' and '..' wrote into out/ (or above) itself."""
    if name in ("", ".", "..") or "/" in name:
        from lsmia.errors import LsmiaError

        raise LsmiaError(f"{what} '{name}' is not a folder name: use letters, digits, '.', '_' or '-', e.g. paper")
    return name


@dataclass(frozen=True)
class SweepPaths:
    root: Path

    @classmethod
    def of(cls, cfg: Config) -> SweepPaths:
        return cls(StudyPaths(Path(cfg.run.out_dir)).sweep_dir(cfg.sweep.study_name))

    @property
    def journal(self) -> Path:
        return self.root / "journal.log"

    @property
    def lock(self) -> Path:
        return self.root / "budget.lock"

    def trial_dir(self, number: int) -> Path:
        return self.root / f"trial_{number}"

    @property
    def trials_csv(self) -> Path:
        return self.root / "trials.csv"

    @property
    def trials_md(self) -> Path:
        return self.root / "trials.md"

    @property
    def pareto_png(self) -> Path:
        return self.root / "pareto.png"

    @property
    def pareto_html(self) -> Path:
        return self.root / "pareto.html"

    @property
    def importance_html(self) -> Path:
        return self.root / "importance.html"

    @property
    def recommendation(self) -> Path:
        return self.root / "recommendation.json"

    @property
    def points_json(self) -> Path:
        return self.root / "points.json"  # the trials as models, read by lsmia compare-defenses

    @property
    def fronts_png(self) -> Path:
        return self.root / "fronts.png"
