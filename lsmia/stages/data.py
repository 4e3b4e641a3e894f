"""Stage ``data``: render the built-in identities or load a real data set, and split it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lsmia.config import Config
from lsmia.data.base import FaceData
from lsmia.utils import save_json, save_timings


def prepare_data(cfg: Config) -> FaceData:
    """Render the built-in identities or load a real data set, as configured."""
    if cfg.data.source == "builtin":
        from lsmia.data.synthetic import render_builtin

        return render_builtin(cfg.data)
    from lsmia.data.real import load_real

    return load_real(cfg.data)


def data_summary(data: FaceData) -> dict[str, Any]:
    return {
        "num_classes": data.num_classes,
        "image_size": data.image_size,
        "train_images": len(data.train),
        "test_images": len(data.test),
        "public_images": len(data.public) if data.public is not None else 0,
        "attributes": sorted(data.attributes) if data.attributes else [],
        "source": data.meta.get("source", ""),
    }


def stage_data(cfg: Config, out_file: Path, summary_file: Path | None = None) -> dict[str, Any]:
    """Write the prepared data and its summary; returns the summary with the wall time (not written)."""
    started = time.perf_counter()
    data = prepare_data(cfg)
    data.save(out_file)
    summary = data_summary(data)
    save_json(summary, summary_file or Path(out_file).with_name("summary.json"))
    seconds = time.perf_counter() - started
    save_timings(out_file, {"data_s": seconds})
    return {**summary, "seconds": seconds}
