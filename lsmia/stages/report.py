"""Stage ``report``: the HTML report and DVC's plot data, from the evaluated cells of the study."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from lsmia.config import Config
from lsmia.paths import StudyPaths


def stage_report(
    cfg: Config,
    paths: StudyPaths,
    out_dir: Path,
    device: torch.device,
    ablation_files: Sequence[Path] = (),
    plots_dir: Path | None = None,
    defenses_file: Path | None = None,
) -> Path:
    """Write ``out_dir/index.html``, ``plots_dir`` (default ``<out>/plots``) and the study's ``<out>/summary.json``
    (DVC's metrics file); returns the index path. The
    defenses section reads ``defenses_file`` (default ``<out>/ablations/defenses/compare.json``) when it exists."""
    from lsmia.reporting.report import write_plot_data, write_report, write_summary

    cells = [(float(a), int(s)) for s in cfg.study.seeds for a in cfg.study.alphas]
    index = write_report(
        paths, out_dir, device, ablation_files=list(ablation_files), cells=cells, defenses_file=defenses_file
    )
    write_plot_data(paths, plots_dir or paths.root / "plots", cells=cells)
    write_summary(paths, cells=cells)
    return index
